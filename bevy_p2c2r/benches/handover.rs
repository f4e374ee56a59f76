//! What the game sees when its peer dies and when a new one arrives, in wall-clock time:
//! the figures the end-to-end tests print but must not assert (shared machines are noisy).
//!
//! Run: `cargo bench -p bevy_p2c2r --bench handover`.
//!
//! A headless app at 60 Hz (`P2c2rPlugin::embedded()`: an in-process coordinator and one
//! peer, over loopback) steps a pile of 50 boxes. Each round kills the serving peer, then
//! starts a new one. Per round it prints: how long the takeover by the local fallback took
//! (kill → `ModeChanged` to fallback), the longest wall-clock gap between two applied
//! physics ticks around the kill (what a player could notice as a stall), the ticks never
//! applied across the kill, and how long the hand-back took (new peer started →
//! `ModeChanged` to offloaded). Each new peer serves 6 s before the next kill, longer than
//! the 5 s after which a hand-back counts as stable (failed hand-backs back the probe
//! off).

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_p2c2r::prelude::*;

const ROUNDS: usize = 5;
/// The game loop's pace: about 250 frames per second.
const FRAME: Duration = Duration::from_millis(4);
/// Longest any phase may take before the round is abandoned.
const PHASE_LIMIT: Duration = Duration::from_secs(20);

/// Wall-clock tracking of the applied ticks.
#[derive(Resource, Default)]
struct Ticks {
    last: Option<(u64, Instant)>,
    max_gap: Duration,
    skipped: u64,
}

fn track(mut stepped: MessageReader<PhysicsStepped>, mut ticks: ResMut<Ticks>) {
    let now = Instant::now();
    for s in stepped.read() {
        if let Some((tick, at)) = ticks.last {
            ticks.max_gap = ticks.max_gap.max(now - at);
            ticks.skipped += s.tick.saturating_sub(tick + 1);
        }
        ticks.last = Some((s.tick, now));
    }
}

fn run_until(app: &mut App, what: &str, mut done: impl FnMut(&mut App) -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < PHASE_LIMIT {
        app.update();
        if done(app) {
            return Some(start.elapsed());
        }
        std::thread::sleep(FRAME);
    }
    eprintln!("handover: gave up waiting for {what}");
    None
}

fn mode(app: &App) -> OffloadMode {
    app.world().resource::<P2c2rStats>().mode
}

fn main() {
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins(P2c2rPlugin::embedded().gamer_id("handover-bench").tick_rate(60.0))
        .init_resource::<Ticks>()
        .add_systems(FixedUpdate, track.after(P2c2rSystems::Apply));
    let world = app.world_mut();
    world.spawn(((RigidBody::Fixed, Collider::cuboid(10.0, 0.5, 10.0)), Transform::from_xyz(0.0, -0.5, 0.0)));
    for i in 0..50 {
        let (x, z) = ((i % 5) as f32 - 2.0, (i / 5 % 5) as f32 - 2.0);
        let y = 1.0 + (i / 25) as f32 * 1.1;
        world.spawn(((RigidBody::Dynamic, Collider::cuboid(0.2, 0.2, 0.2)), Transform::from_xyz(x, y, z)));
    }
    if run_until(&mut app, "the first peer to serve", |app| {
        let s = app.world().resource::<P2c2rStats>();
        s.mode == OffloadMode::Offloaded && s.physics_results_from_peers > 120
    })
    .is_none()
    {
        return;
    }
    println!("handover: kill the serving peer, then start a new one ({ROUNDS} rounds, 60 Hz, loopback)");
    println!(
        "{:>5} {:>14} {:>16} {:>14} {:>14}",
        "round", "takeover ms", "longest gap ms", "ticks lost", "hand-back ms"
    );
    let mut takeovers = Vec::new();
    let mut gaps = Vec::new();
    let mut handbacks = Vec::new();
    for round in 1..=ROUNDS {
        let serving = app.world().resource::<P2c2rStats>().serving_peer.clone();
        *app.world_mut().resource_mut::<Ticks>() = Ticks::default();
        let cluster = app.world().resource::<EmbeddedCluster>();
        assert!(cluster.kill_peer(serving.as_deref()), "the cluster takes the command");
        let Some(takeover) = run_until(&mut app, "the fallback", |app| mode(app) == OffloadMode::Fallback) else {
            return;
        };
        // A second of local play, then a new peer.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            app.update();
            std::thread::sleep(FRAME);
        }
        let ticks = app.world().resource::<Ticks>();
        let (gap, lost) = (ticks.max_gap, ticks.skipped);
        assert!(app.world().resource::<EmbeddedCluster>().add_peer(), "the cluster takes the command");
        let Some(handback) = run_until(&mut app, "the hand-back", |app| {
            let s = app.world().resource::<P2c2rStats>();
            s.mode == OffloadMode::Offloaded && s.serving_peer.is_some() && s.serving_peer != serving
        }) else {
            return;
        };
        println!("{round:>5} {:>14.1} {:>16.1} {lost:>14} {:>14.1}", ms(takeover), ms(gap), ms(handback));
        takeovers.push(takeover);
        gaps.push(gap);
        handbacks.push(handback);
        // Let the new peer serve long enough that the next kill is not a failed hand-back
        // (those back the probe off, so that a peer too slow for the game cannot make it
        // flap).
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(6) {
            app.update();
            std::thread::sleep(FRAME);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        ms(v[v.len() / 2])
    };
    println!(
        "median {:>13.1} {:>16.1} {:>14} {:>14.1}",
        median(&mut takeovers),
        median(&mut gaps),
        "",
        median(&mut handbacks)
    );
    println!(
        "(the takeover is the adaptive fallback timeout: the round trip + 4 × its variation, at least 100 ms; \
         the hand-back waits for the next probe, every 500 ms in fallback)"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
