//! What the plugin costs the game's main thread per frame: 4,096 bodies offloaded (steady
//! state) beside the same scene stepped locally.
//!
//! Run: `cargo bench -p bevy_p2c2r --bench main_thread`.
//!
//! A headless app (`MinimalPlugins`, manual time: every `update` advances the clock by one
//! fixed tick of 1/60 s, paced at 60 frames per second of real time) holds 4,096 boxes in
//! zero gravity inside a closed box of six fixed walls, with random velocities and full
//! restitution, so they stay awake and collide moderately. With
//! `P2c2rPlugin::embedded()` (an in-process coordinator and one peer over loopback, on
//! their own threads), once the peer serves and a few seconds have passed, the wall time
//! of each `app.update()` is measured: what the plugin's systems cost the main thread
//! (gather, build, encode, send, receive, apply, interpolate; results are decoded on the
//! transport thread). Then the same app with `P2c2rPlugin::local_only()` (rapier on the
//! main thread).
//!
//! The breakdown comes from timestamp systems ordered around the plugin's system sets
//! (`Instant::now()` before and after Receive, Apply, Send and Interpolate; the executor
//! is single-threaded, so they bracket the sets exactly): "other" is the rest of the
//! frame (Bevy's schedules and MinimalPlugins' systems). For a split by function, sample
//! the offloaded phase (it starts a few seconds in and lasts 13 s):
//! `perf record -F 4000 -p <pid> -- sleep 8`, then
//! `perf report --comm <the bench binary's name, 15 chars> --sort sym`.

use std::time::{Duration, Instant};

use bevy::app::RunFixedMainLoopSystems;
use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_p2c2r::prelude::*;
use hdrhistogram::Histogram;

const BODIES: usize = 4_096;
const HZ: f64 = 60.0;
const HALF: f32 = 0.25;
/// Share of the box's volume the bodies fill.
const FILL: f32 = 0.04;
/// Frames measured per mode (10 s at 60 Hz).
const FRAMES: usize = 600;
/// Offloaded frames run before measuring, once the peer serves.
const SETTLE_FRAMES: usize = 180;
/// Longest wait for the peer to serve.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Stages of the frame: when each bracket began and ended in this frame.
#[derive(Resource, Default)]
struct Stamps {
    marks: [Option<Instant>; 7],
}

#[derive(Clone, Copy)]
enum Mark {
    ReceiveStart,
    ReceiveEnd,
    ApplyEnd,
    SendStart,
    SendEnd,
    InterpolateStart,
    InterpolateEnd,
}

fn stamp(mark: Mark) -> impl FnMut(ResMut<Stamps>) {
    move |mut stamps: ResMut<Stamps>| stamps.marks[mark as usize] = Some(Instant::now())
}

fn app(plugin: P2c2rPlugin) -> App {
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins(
            plugin
                .gamer_id("main-thread-bench")
                .tick_rate(HZ)
                .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        )
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_secs_f64(1.0 / HZ)))
        .init_resource::<Stamps>()
        .add_systems(FixedPreUpdate, stamp(Mark::ReceiveStart).before(P2c2rSystems::Receive))
        .add_systems(FixedPreUpdate, stamp(Mark::ReceiveEnd).after(P2c2rSystems::Receive).before(P2c2rSystems::Apply))
        .add_systems(FixedPreUpdate, stamp(Mark::ApplyEnd).after(P2c2rSystems::Apply))
        .add_systems(FixedPostUpdate, stamp(Mark::SendStart).before(P2c2rSystems::Send))
        .add_systems(FixedPostUpdate, stamp(Mark::SendEnd).after(P2c2rSystems::Send))
        .add_systems(
            RunFixedMainLoop,
            (
                stamp(Mark::InterpolateStart).before(P2c2rSystems::Interpolate),
                stamp(Mark::InterpolateEnd).after(P2c2rSystems::Interpolate),
            )
                .in_set(RunFixedMainLoopSystems::AfterFixedMainLoop),
        );
    spawn_scene(app.world_mut());
    app
}

fn spawn_scene(world: &mut World) {
    let mut rng = fastrand::Rng::with_seed(4096);
    let side = (BODIES as f32 * (2.0 * HALF).powi(3) / FILL).cbrt();
    let (h, t) = (side / 2.0, 0.5);
    let walls = [
        (Vec3::new(h + t, t, h + t), Vec3::new(0.0, -h - t, 0.0)),
        (Vec3::new(h + t, t, h + t), Vec3::new(0.0, h + t, 0.0)),
        (Vec3::new(t, h, h), Vec3::new(-h - t, 0.0, 0.0)),
        (Vec3::new(t, h, h), Vec3::new(h + t, 0.0, 0.0)),
        (Vec3::new(h, h, t), Vec3::new(0.0, 0.0, -h - t)),
        (Vec3::new(h, h, t), Vec3::new(0.0, 0.0, h + t)),
    ];
    for (half_extents, at) in walls {
        world.spawn((
            (
                RigidBody::Fixed,
                Collider::cuboid(half_extents.x, half_extents.y, half_extents.z),
                Friction::coefficient(0.0),
                Restitution::coefficient(1.0),
            ),
            Transform::from_translation(at),
        ));
    }
    let per_side = (BODIES as f32).cbrt().ceil() as usize;
    let cell = side / per_side as f32;
    let jitter = (cell / 2.0 - HALF).max(0.0) * 0.8;
    let mut uniform = |scale: f32| (rng.f32() * 2.0 - 1.0) * scale;
    for i in 0..BODIES {
        let (x, y, z) = (i % per_side, i / per_side % per_side, i / (per_side * per_side));
        let mut at = |k: usize| -h + (k as f32 + 0.5) * cell + uniform(jitter);
        let position = Vec3::new(at(x), at(y), at(z));
        let velocity = Velocity {
            linvel: Vec3::new(uniform(3.0), uniform(3.0), uniform(3.0)),
            angvel: Vec3::new(uniform(2.0), uniform(2.0), uniform(2.0)),
        };
        world.spawn((
            RigidBody::Dynamic,
            Collider::cuboid(HALF, HALF, HALF),
            Friction::coefficient(0.0),
            Restitution::coefficient(1.0),
            velocity,
            Transform::from_translation(position),
        ));
    }
}

fn stats(app: &App) -> &P2c2rStats {
    app.world().resource::<P2c2rStats>()
}

/// Runs one frame paced at 60 Hz; returns its `update` time.
fn frame(app: &mut App) -> Duration {
    let start = Instant::now();
    app.world_mut().resource_mut::<Stamps>().marks = Default::default();
    let t = Instant::now();
    app.update();
    let took = t.elapsed();
    if let Some(rest) = Duration::from_secs_f64(1.0 / HZ).checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
    took
}

#[derive(Default)]
struct Stages {
    receive: Duration,
    apply: Duration,
    send: Duration,
    interpolate: Duration,
    total: Duration,
    frames: u32,
    slowest_send: Duration,
}

impl Stages {
    fn add(&mut self, stamps: &Stamps, total: Duration) {
        let m = |mark: Mark| stamps.marks[mark as usize];
        let between = |a: Mark, b: Mark| match (m(a), m(b)) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        };
        self.receive += between(Mark::ReceiveStart, Mark::ReceiveEnd);
        self.apply += between(Mark::ReceiveEnd, Mark::ApplyEnd);
        let send = between(Mark::SendStart, Mark::SendEnd);
        self.send += send;
        self.slowest_send = self.slowest_send.max(send);
        self.interpolate += between(Mark::InterpolateStart, Mark::InterpolateEnd);
        self.total += total;
        self.frames += 1;
    }
}

struct Measured {
    hist: Histogram<u64>,
    stages: Stages,
    frames_offloaded: u64,
    fallback_ticks: u64,
    peer_results: u64,
    snapshots: u64,
    /// The slowest Send stage, ms.
    slowest_send: f64,
}

fn measure(app: &mut App) -> Measured {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut stages = Stages::default();
    let before = stats(app).clone();
    for _ in 0..FRAMES {
        let took = frame(app);
        hist.record((took.as_nanos() as u64 / 1_000).max(1)).unwrap();
        stages.add(app.world().resource::<Stamps>(), took);
    }
    let after = stats(app);
    let slowest_send = stages.slowest_send;
    Measured {
        hist,
        stages,
        frames_offloaded: after.ticks_offloaded - before.ticks_offloaded,
        fallback_ticks: after.fallback_ticks - before.fallback_ticks,
        peer_results: after.physics_results_from_peers - before.physics_results_from_peers,
        snapshots: after.snapshots_sent - before.snapshots_sent,
        slowest_send: slowest_send.as_secs_f64() * 1e3,
    }
}

fn row(name: &str, m: &Measured) {
    let mean = |d: Duration| d.as_secs_f64() * 1e3 / m.stages.frames as f64;
    let s = &m.stages;
    let other = s.total.saturating_sub(s.receive + s.apply + s.send + s.interpolate);
    println!(
        "| {name:<9} | {:>6.3} | {:>6.3} | {:>6.3} | {:>7.3} | {:>7.3} | {:>6.3} | {:>6.3} | {:>6.3} | {:>6.3} | {:>4}/{:<4} | {:>8} | {:>3} | {:>6.3} |",
        m.hist.value_at_quantile(0.5) as f64 / 1e3,
        m.hist.value_at_quantile(0.99) as f64 / 1e3,
        m.hist.max() as f64 / 1e3,
        mean(s.total),
        mean(s.receive),
        mean(s.apply),
        mean(s.send),
        mean(s.interpolate),
        mean(other),
        m.frames_offloaded,
        m.peer_results,
        m.fallback_ticks,
        m.snapshots,
        m.slowest_send,
    );
}

fn main() {
    println!(
        "main thread per frame: {BODIES} awake boxes, 60 Hz (one fixed tick per frame), ms of app.update() wall time"
    );
    println!();
    println!(
        "| plugin | p50 | p99 | max | mean | receive | apply | send | interp | other | offloaded/peer results | fallback ticks | snapshots | slowest send |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");

    let mut offloaded = app(P2c2rPlugin::embedded());
    let start = Instant::now();
    loop {
        frame(&mut offloaded);
        let s = stats(&offloaded);
        if s.mode == OffloadMode::Offloaded && s.physics_results_from_peers > 60 {
            break;
        }
        if start.elapsed() > START_LIMIT {
            let s = stats(&offloaded);
            eprintln!(
                "main_thread: the peer never served ({:?}, {} peer results, {} fallback ticks)",
                s.mode, s.physics_results_from_peers, s.fallback_ticks
            );
            return;
        }
    }
    for _ in 0..SETTLE_FRAMES {
        frame(&mut offloaded);
    }
    let m = measure(&mut offloaded);
    let rtt = stats(&offloaded).rtt_us.value_at_quantile(0.5);
    row("offloaded", &m);
    drop(offloaded);

    let mut local = app(P2c2rPlugin::local_only());
    for _ in 0..60 {
        frame(&mut local);
    }
    let l = measure(&mut local);
    row("local", &l);
    println!();
    println!(
        "offloaded/local p50: {:.3}; peer round trip p50 {:.1} ms. goal: <= 0.3 ms per frame on the main thread when \
         offloaded. stages are means; receive/apply (FixedPreUpdate), send = gather + build + encode + send + stats \
         (FixedPostUpdate), interp (RunFixedMainLoop), other = the rest of the frame",
        m.hist.value_at_quantile(0.5) as f64 / l.hist.value_at_quantile(0.5) as f64,
        rtt as f64 / 1e3
    );
}
