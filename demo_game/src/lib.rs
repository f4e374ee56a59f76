//! The P2C2R demo game: a lit 3D arena whose physics and NPC AI run on peers.
//!
//! `cargo run -p demo_game` starts a coordinator and a peer in this process (the plugin's
//! `P2c2rPlugin::embedded()`) and opens a window; `--coordinator ws://HOST:PORT` joins a
//! running deployment instead. The binary is a thin wrapper over [`run`]; tests build the
//! same app headless with [`build_app`].
//!
//! Modules:
//! - [`level`]: the level file (static geometry, stacks, NPCs, navigation grid);
//! - [`game`]: spawning, firing balls, NPC targets: the same with or without a window;
//! - [`playground`]: the physics playground beside the arena (terrain, level mesh, door,
//!   rope bridge, seesaw, trigger zone, hit effects from collision events);
//! - [`offload`]: the one place that sets up the `bevy_p2c2r` plugin (and with it the
//!   in-process coordinator and peers, `bevy_p2c2r::embedded`);
//! - [`render`]: meshes, lights, camera, HUD and screenshots (windowed only);
//! - [`keys`]: the keys that add and kill peers;
//! - [`hud`], [`report`]: the numbers the HUD shows and the JSON line `--frames` prints.

pub mod cli;
pub mod game;
pub mod hud;
pub mod keys;
pub mod level;
pub mod offload;
pub mod player;
pub mod playground;
pub mod render;
pub mod report;
pub mod screenshot_check;

use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy::window::{PresentMode, WindowResolution};

use bevy_p2c2r::embedded::{ClusterEvent, EmbeddedCluster};
use cli::Args;
use game::{DemoCounters, DemoSettings, GamePlugin};
use hud::HudData;
use level::Level;

/// What the HUD shows, refreshed a few times a second.
#[derive(Resource, Clone, Debug, Default)]
pub struct HudState(pub HudData);

/// A short message for the HUD (peer added, killed, ...), shown for a few seconds.
#[derive(Resource, Clone, Debug, Default)]
pub struct Notice {
    text: Option<String>,
    fresh: bool,
}

impl Notice {
    /// Shows `text` on the HUD.
    pub fn set(&mut self, text: impl Into<String>) {
        let text = text.into();
        info!("{text}");
        self.text = Some(text);
        self.fresh = true;
    }
}

/// How often the HUD numbers are recomputed.
const HUD_PERIOD: f32 = 0.25;
/// How long a notice stays on the HUD.
const NOTICE_SECS: f32 = 5.0;

/// Runs the demo as the command line asks: builds the app (windowed, or headless with
/// `--headless`; building it starts the in-process cluster) and runs it to the end.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.check().map_err(anyhow::Error::msg)?;
    let level_path = level::resolve_level_path(&args.level);
    let level = Level::load(&level_path)?;
    let mut app = build_app(&args, level, !args.headless);
    if args.headless {
        // Logs on stderr (DefaultPlugins has this already); stdout carries only the report.
        app.add_plugins(bevy::log::LogPlugin::default());
    }
    match app.run() {
        AppExit::Success => Ok(()),
        AppExit::Error(code) => anyhow::bail!("the game exited with code {code}"),
    }
}

/// Builds the game app. Windowed: `DefaultPlugins` and [`render::RenderPlugin`]. Headless:
/// `MinimalPlugins` ticking at 60 Hz and the very same game systems. Adding the plugin
/// starts the in-process coordinator (without `--coordinator`) and `--peers` peers, the
/// app's [`EmbeddedCluster`] resource, which shuts them down when the app is dropped.
pub fn build_app(args: &Args, level: Level, windowed: bool) -> App {
    let mut app = App::new();
    if windowed {
        let (w, h) = args.window_size;
        app.add_plugins(DefaultPlugins.set(WindowPlugin {
            primary_window: Some(Window {
                title: format!("P2C2R demo: {}", level.name),
                resolution: WindowResolution::new(w, h),
                present_mode: PresentMode::AutoNoVsync,
                ..default()
            }),
            ..default()
        }));
        app.add_plugins(render::RenderPlugin { screenshot: args.screenshot.clone() });
    } else {
        app.add_plugins(MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / 60.0))));
        app.add_plugins(TransformPlugin);
    }
    offload::add_plugin(&mut app, args, &level);
    app.insert_resource(DemoSettings {
        autofire: args.autofire || args.headless,
        frames: args.frames,
        headless: !windowed,
    });
    if args.autoplay || !windowed {
        app.insert_resource(player::Autopilot::default());
    }
    app.insert_resource(level)
        .init_resource::<HudState>()
        .init_resource::<Notice>()
        .add_plugins((GamePlugin, playground::PlaygroundPlugin, player::PlayerPlugin, keys::KeysPlugin))
        .add_systems(Update, (poll_cluster, update_hud_state, stop_after_frames).chain());
    app
}

/// Shows what happened in the cluster (the plugin polls it in `First`).
fn poll_cluster(mut events: MessageReader<ClusterEvent>, mut notice: ResMut<Notice>) {
    for event in events.read().cloned() {
        match event {
            ClusterEvent::PeerStarted(id) => notice.set(format!("peer {id} started")),
            ClusterEvent::PeerKilled(id) => notice.set(format!("peer {id} killed")),
            ClusterEvent::Failed(why) => notice.set(why),
        }
    }
}

fn update_hud_state(world: &mut World, mut since: Local<f32>, mut notice_age: Local<f32>) {
    let dt = world.resource::<Time>().delta_secs();
    {
        let mut notice = world.resource_mut::<Notice>();
        if notice.fresh {
            notice.fresh = false;
            *notice_age = 0.0;
        } else {
            *notice_age += dt;
            if *notice_age > NOTICE_SECS && notice.text.is_some() {
                notice.text = None;
            }
        }
    }
    *since += dt;
    if *since < HUD_PERIOD {
        return;
    }
    *since = 0.0;
    let report = report::collect(world);
    let stats = offload::stats(world);
    // No cluster if it could not start: the game then steps locally.
    let cluster = world.get_resource::<EmbeddedCluster>();
    let data = HudData {
        mode: stats.mode,
        peers: stats.peers,
        serving_peer: stats.serving_peer.clone(),
        rtt_ms_p50: stats.rtt_ms_p50,
        rtt_ms_p99: stats.rtt_ms_p99,
        network: stats.network,
        playout: stats.playout,
        replication: stats.replication,
        events: stats.events,
        player: world.get_resource::<player::PlayerCounters>().copied().unwrap_or_default(),
        ticks_per_s: stats.ticks_per_s,
        bodies: report.bodies,
        agents: report.agents,
        joints: report.joints,
        zone_entries: report.zone_entries,
        local_peers: cluster.map_or(0, |c| c.peers().len()),
        coordinator: cluster.map_or_else(|| "none (local simulation)".to_owned(), |c| c.url().to_owned()),
        embedded_coordinator: cluster.is_some_and(EmbeddedCluster::embedded_coordinator),
        notice: world.resource::<Notice>().text.clone(),
    };

    world.resource_mut::<HudState>().0 = data;
}

/// With `--frames N`: at frame N print the report line and exit (a `--screenshot` run exits
/// once the screenshot is saved instead).
fn stop_after_frames(world: &mut World, mut printed: Local<bool>) {
    let Some(frames) = world.resource::<DemoSettings>().frames else { return };
    if *printed || world.resource::<DemoCounters>().frames < frames {
        return;
    }
    *printed = true;
    let report = report::collect(world);
    println!("{}", serde_json::to_string(&report).expect("the report serializes"));
    let screenshot_pending = world.get_resource::<render::ScreenshotRequest>().is_some_and(|r| r.0.is_some());
    if !screenshot_pending {
        world.write_message(AppExit::Success);
    }
}
