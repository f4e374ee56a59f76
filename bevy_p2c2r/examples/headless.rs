//! A headless Bevy app (no window, `MinimalPlugins`) whose physics and NPC navigation run
//! on P2C2R peers: a ground, a few dozen falling bodies and two agents walking around a
//! wall on a small grid.
//!
//! ```text
//! # Everything in one process (`P2c2rPlugin::embedded()`: an in-process coordinator and peer):
//! cargo run -p bevy_p2c2r --example headless
//! # Two replicas of the session; the serving peer killed at frame 150 (no fallback tick):
//! cargo run -p bevy_p2c2r --example headless -- --replicas 2 --kill-serving-at 150
//! # Against a running deployment (`cargo run -p coordinator`, `cargo run -p peer`):
//! cargo run -p bevy_p2c2r --example headless -- --coordinator ws://127.0.0.1:8765 --frames 600
//! ```
//!
//! With a coordinator but no peer, the bodies still fall: the plugin steps them locally.
//! At exit it prints one JSON line: frames, physics_results_from_peers,
//! ai_results_from_peers, fallback_ticks, bodies, lowest_body_y_start, lowest_body_y_end,
//! rtt_ms_p50, rtt_ms_p99, largest_tick_gap (1: no tick skipped), and more.

use std::time::Duration;

use bevy::app::{AppExit, ScheduleRunnerPlugin};
use bevy::prelude::*;
use bevy_p2c2r::prelude::*;
use clap::Parser;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(about = "Headless Bevy app with physics and AI offloaded to P2C2R peers")]
struct Args {
    /// Coordinator URL (ws://HOST:PORT). Without it, an in-process coordinator and peer start.
    #[arg(long)]
    coordinator: Option<String>,
    /// Frames to run before exiting.
    #[arg(long, default_value_t = 300)]
    frames: u32,
    /// Frames per second (the fixed tick rate is 60 Hz).
    #[arg(long, default_value_t = 60.0)]
    fps: f64,
    /// Number of falling bodies.
    #[arg(long, default_value_t = 36)]
    bodies: u32,
    /// In-process only: peers each physics session runs on (as many peers start).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// In-process only: kill the peer serving the session at this frame.
    #[arg(long)]
    kill_serving_at: Option<u32>,
}

/// The dynamic bodies, to measure how far they fell.
#[derive(Component)]
struct Falling;

/// Lowest body height at the first frame.
#[derive(Resource, Default)]
struct Report {
    lowest_start: Option<f32>,
    frames: u32,
    max_frames: u32,
    kill_at: Option<u32>,
    last_tick: Option<u64>,
    largest_tick_gap: u64,
}

/// Records the largest gap between consecutive applied physics ticks.
fn track_ticks(mut report: ResMut<Report>, mut stepped: MessageReader<PhysicsStepped>) {
    for tick in stepped.read().map(|m| m.tick) {
        if let Some(last) = report.last_tick {
            report.largest_tick_gap = report.largest_tick_gap.max(tick.saturating_sub(last));
        }
        report.last_tick = Some(tick);
    }
}

/// At `--kill-serving-at`, kills the in-process peer that serves the session.
fn kill_serving(report: Res<Report>, stats: Res<P2c2rStats>, cluster: Option<Res<EmbeddedCluster>>) {
    if report.kill_at == Some(report.frames)
        && let Some(cluster) = cluster
    {
        let killed = cluster.kill_peer(stats.serving_peer.as_deref());
        eprintln!("frame {}: killing the serving peer {:?}: {killed}", report.frames, stats.serving_peer);
    }
}

fn main() {
    let args = Args::parse();
    // Without --coordinator: an in-process coordinator and peer, shut down when the app
    // is dropped.
    let plugin = match args.coordinator.clone() {
        Some(url) => P2c2rPlugin::new(url),
        None => P2c2rPlugin::embedded().embedded_peers(u32::from(args.replicas)).embedded_replicas(args.replicas),
    };

    let mut app = App::new();
    app.add_plugins(MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / args.fps))))
        .add_plugins(plugin.gamer_id(format!("headless-{}", std::process::id())).tick_rate(60.0))
        .insert_resource(NavigationGrid::new(
            1.0,
            Vec2::new(-10.0, -10.0),
            (0..20).map(|row| if row == 10 { "##############......" } else { "...................." }),
        ))
        .insert_resource(Report { max_frames: args.frames, kill_at: args.kill_serving_at, ..default() })
        .insert_resource(BodyCount(args.bodies))
        .add_systems(Startup, setup)
        .add_systems(Update, (track_ticks, kill_serving, count_frames).chain());
    app.run();
}

#[derive(Resource)]
struct BodyCount(u32);

fn setup(mut commands: Commands, count: Res<BodyCount>) {
    commands.spawn(((RigidBody::Fixed, Collider::cuboid(10.0, 0.5, 10.0)), Transform::from_xyz(0.0, -0.5, 0.0)));
    for i in 0..count.0 {
        let (x, z) = ((i % 6) as f32 * 1.5 - 4.0, (i / 6 % 6) as f32 * 1.5 - 4.0);
        let y = 3.0 + (i / 36) as f32 * 1.5 + (i % 3) as f32 * 0.7;
        let collider = if i % 2 == 0 { Collider::cuboid(0.4, 0.4, 0.4) } else { Collider::ball(0.4) };
        commands.spawn((
            RigidBody::Dynamic,
            collider,
            Restitution::coefficient(0.2),
            Transform::from_xyz(x, y, z),
            Falling,
        ));
    }
    // Two agents that must walk around the wall at row 10 (z = 0) through its gap (x > 4).
    commands.spawn((OffloadedAgent::new(Vec3::new(-8.5, 0.0, 8.5), 3.0), Transform::from_xyz(-8.5, 0.0, -8.5)));
    commands.spawn((OffloadedAgent::new(Vec3::new(-6.5, 0.0, -8.5), 3.0), Transform::from_xyz(-6.5, 0.0, 8.5)));
}

/// Counts frames; at the last one prints the JSON report and exits.
fn count_frames(
    mut report: ResMut<Report>,
    stats: Res<P2c2rStats>,
    bodies: Query<&Transform, With<Falling>>,
    mut exit: MessageWriter<AppExit>,
) {
    let lowest = bodies.iter().map(|t| t.translation.y).reduce(f32::min);
    if report.lowest_start.is_none() {
        report.lowest_start = lowest;
    }
    report.frames += 1;
    if report.frames < report.max_frames {
        return;
    }
    let json = serde_json::json!({
        "frames": report.frames,
        "physics_results_from_peers": stats.physics_results_from_peers,
        "ai_results_from_peers": stats.ai_results_from_peers,
        "fallback_ticks": stats.fallback_ticks,
        "ticks": stats.ticks,
        "mode": stats.mode.as_str(),
        "bodies": stats.bodies,
        "agents": stats.agents,
        "lowest_body_y_start": report.lowest_start,
        "lowest_body_y_end": lowest,
        "rtt_ms_p50": stats.rtt_ms_p50(),
        "rtt_ms_p99": stats.rtt_ms_p99(),
        "bytes_sent": stats.network.bytes_sent,
        "bytes_received": stats.network.bytes_received,
        "distinct_peers": stats.distinct_peers(),
        "serving_peer": stats.serving_peer,
        "largest_tick_gap": report.largest_tick_gap,
        "fallbacks_entered": stats.fallbacks_entered,
    });
    println!("{json}");
    exit.write(AppExit::Success);
}
