//! A headless Bevy app (no window, `MinimalPlugins`) whose physics and NPC navigation run
//! on P2C2R peers: a ground, a few dozen falling bodies and two agents walking around a
//! wall on a small grid.
//!
//! ```text
//! # Everything in one process (`P2c2rPlugin::embedded()`: an in-process coordinator and peer):
//! cargo run -p bevy_p2c2r --example headless
//! # Against a running deployment (`cargo run -p coordinator`, `cargo run -p peer`):
//! cargo run -p bevy_p2c2r --example headless -- --coordinator ws://127.0.0.1:8765 --frames 600
//! ```
//!
//! With a coordinator but no peer, the bodies still fall: the plugin steps them locally.
//! At exit it prints one JSON line: frames, physics_results_from_peers,
//! ai_results_from_peers, fallback_ticks, bodies, lowest_body_y_start, lowest_body_y_end,
//! rtt_ms_p50, rtt_ms_p99, and more.

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
}

fn main() {
    let args = Args::parse();
    // Without --coordinator: an in-process coordinator and peer, shut down when the app
    // is dropped.
    let plugin = match args.coordinator.clone() {
        Some(url) => P2c2rPlugin::new(url),
        None => P2c2rPlugin::embedded(),
    };

    let mut app = App::new();
    app.add_plugins(MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(1.0 / args.fps))))
        .add_plugins(plugin.gamer_id(format!("headless-{}", std::process::id())).tick_rate(60.0))
        .insert_resource(NavigationGrid::new(
            1.0,
            Vec2::new(-10.0, -10.0),
            (0..20).map(|row| if row == 10 { "##############......" } else { "...................." }),
        ))
        .insert_resource(Report { max_frames: args.frames, ..default() })
        .insert_resource(BodyCount(args.bodies))
        .add_systems(Startup, setup)
        .add_systems(Update, count_frames);
    app.run();
}

#[derive(Resource)]
struct BodyCount(u32);

fn setup(mut commands: Commands, count: Res<BodyCount>) {
    commands.spawn((
        OffloadedBody::fixed(BodyShape::cuboid(Vec3::new(20.0, 1.0, 20.0))),
        Transform::from_xyz(0.0, -0.5, 0.0),
    ));
    for i in 0..count.0 {
        let (x, z) = ((i % 6) as f32 * 1.5 - 4.0, (i / 6 % 6) as f32 * 1.5 - 4.0);
        let y = 3.0 + (i / 36) as f32 * 1.5 + (i % 3) as f32 * 0.7;
        let shape = if i % 2 == 0 { BodyShape::cuboid(Vec3::splat(0.8)) } else { BodyShape::ball(0.4) };
        commands.spawn((OffloadedBody::dynamic(shape).with_restitution(0.2), Transform::from_xyz(x, y, z), Falling));
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
        "bytes_sent": stats.bytes_sent,
        "bytes_received": stats.bytes_received,
        "distinct_peers": stats.distinct_peers(),
        "serving_peer": stats.serving_peer,
    });
    println!("{json}");
    exit.write(AppExit::Success);
}
