//! What the plugin costs the game's main thread per frame: 1,024 and 4,096 bodies
//! offloaded (steady state), bare and with everything a game adds (scene queries kept, a
//! controlled character, collision events on every body, 64 ray casts a frame), beside the
//! same scenes stepped locally.
//!
//! Run: `cargo bench -p bevy_p2c2r --bench main_thread`.
//!
//! A headless app (`MinimalPlugins`, manual time: every `update` advances the clock by one
//! fixed tick of 1/60 s, paced at 60 frames per second of real time) holds 4,096 boxes in
//! zero gravity inside a closed box of six fixed walls, with random velocities and full
//! restitution, so they stay awake and collide moderately. "Full" adds collision events
//! on every body, a character walking a circle among them and 64 ray casts a frame across
//! the box (their mean cost is printed); "queries" is full without the events; "bare"
//! turns the query copy off (`P2c2rConfiguration::scene_queries`) and has none of them.
//! The events column is the collision events delivered per frame. With
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

const SIZES: [usize; 2] = [1_024, 4_096];
/// Ray casts a frame in the full scene.
const RAYS: usize = 64;
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
    marks: [Option<Instant>; 9],
}

/// Ray casts made and their time.
#[derive(Resource, Default)]
struct Rays {
    casts: u64,
    hits: u64,
    took: Duration,
}

/// What the scene holds besides the boxes.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    /// A character and ray casts (and the query copy kept).
    queries: bool,
    /// Collision events on every body.
    events: bool,
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
    CharactersStart,
    CharactersEnd,
}

fn stamp(mark: Mark) -> impl FnMut(ResMut<Stamps>) {
    move |mut stamps: ResMut<Stamps>| stamps.marks[mark as usize] = Some(Instant::now())
}

/// The character walks a circle of 3 m at 2 m/s.
fn walk(time: Res<Time<Fixed>>, mut characters: Query<&mut KinematicCharacterController>) {
    let (t, dt) = (time.elapsed_secs(), time.timestep().as_secs_f32());
    for mut c in &mut characters {
        c.translation = Some(Vec3::new(-(t / 1.5).sin(), 0.0, (t / 1.5).cos()) * 2.0 * dt);
    }
}

/// Casts [`RAYS`] rays a frame across the box, from random points in random directions.
fn cast_rays(queries: Res<PhysicsQueries>, mut rays: ResMut<Rays>, mut rng: Local<Option<fastrand::Rng>>) {
    let rng = rng.get_or_insert_with(|| fastrand::Rng::with_seed(64));
    let mut unit = || Vec3::new(rng.f32() * 2.0 - 1.0, rng.f32() * 2.0 - 1.0, rng.f32() * 2.0 - 1.0);
    let casts: Vec<(Vec3, Vec3)> = (0..RAYS).map(|_| (unit() * 5.0, unit().normalize_or(Vec3::X))).collect();
    let start = Instant::now();
    for (origin, direction) in casts {
        rays.hits += queries.cast_ray(origin, direction, 100.0, true, QueryFilter::default()).is_some() as u64;
    }
    rays.took += start.elapsed();
    rays.casts += RAYS as u64;
}

fn app(plugin: P2c2rPlugin, bodies: usize, variant: Variant) -> App {
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins(plugin.gamer_id("main-thread-bench").tick_rate(HZ).with_configuration(P2c2rConfiguration {
            gravity: Vec3::ZERO,
            scene_queries: variant.queries,
            ..default()
        }))
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_secs_f64(1.0 / HZ)))
        .init_resource::<Stamps>()
        .add_systems(FixedPreUpdate, stamp(Mark::ReceiveStart).before(P2c2rSystems::Receive))
        .add_systems(FixedPreUpdate, stamp(Mark::ReceiveEnd).after(P2c2rSystems::Receive).before(P2c2rSystems::Apply))
        .add_systems(FixedPreUpdate, stamp(Mark::ApplyEnd).after(P2c2rSystems::Apply))
        .add_systems(FixedPostUpdate, stamp(Mark::SendStart).before(P2c2rSystems::Send))
        .add_systems(FixedPostUpdate, stamp(Mark::SendEnd).after(P2c2rSystems::Send))
        .add_systems(FixedPostUpdate, stamp(Mark::CharactersStart).before(P2c2rSystems::Characters))
        .add_systems(
            FixedPostUpdate,
            stamp(Mark::CharactersEnd).after(P2c2rSystems::Characters).before(P2c2rSystems::Send),
        )
        .add_systems(
            RunFixedMainLoop,
            (
                stamp(Mark::InterpolateStart).before(P2c2rSystems::Interpolate),
                stamp(Mark::InterpolateEnd).after(P2c2rSystems::Interpolate),
            )
                .in_set(RunFixedMainLoopSystems::AfterFixedMainLoop),
        );
    app.init_resource::<Rays>();
    if variant.queries {
        app.add_systems(FixedUpdate, walk).add_systems(Update, cast_rays);
    }
    spawn_scene(app.world_mut(), bodies, variant);
    app
}

fn spawn_scene(world: &mut World, bodies: usize, variant: Variant) {
    let mut rng = fastrand::Rng::with_seed(4096);
    let side = (bodies as f32 * (2.0 * HALF).powi(3) / FILL).cbrt();
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
    let per_side = (bodies as f32).cbrt().ceil() as usize;
    let cell = side / per_side as f32;
    let jitter = (cell / 2.0 - HALF).max(0.0) * 0.8;
    let mut uniform = |scale: f32| (rng.f32() * 2.0 - 1.0) * scale;
    for i in 0..bodies {
        let (x, y, z) = (i % per_side, i / per_side % per_side, i / (per_side * per_side));
        let mut at = |k: usize| -h + (k as f32 + 0.5) * cell + uniform(jitter);
        let position = Vec3::new(at(x), at(y), at(z));
        let velocity = Velocity {
            linvel: Vec3::new(uniform(3.0), uniform(3.0), uniform(3.0)),
            angvel: Vec3::new(uniform(2.0), uniform(2.0), uniform(2.0)),
        };
        let mut body = world.spawn((
            RigidBody::Dynamic,
            Collider::cuboid(HALF, HALF, HALF),
            Friction::coefficient(0.0),
            Restitution::coefficient(1.0),
            velocity,
            Transform::from_translation(position),
        ));
        if variant.events {
            body.insert(ActiveEvents::COLLISION_EVENTS);
        }
    }
    if variant.queries {
        world.spawn((
            KinematicCharacterController::default(),
            Collider::capsule_y(0.5, 0.3),
            Transform::from_xyz(0.0, 0.0, 0.0),
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
    characters: Duration,
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
        self.characters += between(Mark::CharactersStart, Mark::CharactersEnd);
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
    /// Collision events delivered per frame.
    events: f64,
    /// The slowest Send stage, ms.
    slowest_send: f64,
    /// Mean time of a ray cast, µs (0 when none was cast).
    ray_us: f64,
}

fn measure(app: &mut App) -> Measured {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut stages = Stages::default();
    let before = stats(app).clone();
    *app.world_mut().resource_mut::<Rays>() = Rays::default();
    for _ in 0..FRAMES {
        let took = frame(app);
        hist.record((took.as_nanos() as u64 / 1_000).max(1)).unwrap();
        stages.add(app.world().resource::<Stamps>(), took);
    }
    let slowest_send = stages.slowest_send;
    let rays = app.world().resource::<Rays>();
    let ray_us = if rays.casts > 0 { rays.took.as_secs_f64() * 1e6 / rays.casts as f64 } else { 0.0 };
    let after = stats(app);
    Measured {
        ray_us,
        hist,
        stages,
        frames_offloaded: after.ticks_offloaded - before.ticks_offloaded,
        fallback_ticks: after.fallback_ticks - before.fallback_ticks,
        peer_results: after.physics_results_from_peers - before.physics_results_from_peers,
        snapshots: after.snapshots_sent - before.snapshots_sent,
        events: (after.events.collisions - before.events.collisions) as f64 / FRAMES as f64,
        slowest_send: slowest_send.as_secs_f64() * 1e3,
    }
}

fn row(name: &str, m: &Measured) {
    let mean = |d: Duration| d.as_secs_f64() * 1e3 / m.stages.frames as f64;
    let s = &m.stages;
    let other = s.total.saturating_sub(s.receive + s.apply + s.characters + s.send + s.interpolate);
    println!(
        "| {name:<18} | {:>6.3} | {:>6.3} | {:>6.3} | {:>7.3} | {:>7.3} | {:>6.3} | {:>6.3} | {:>6.3} | {:>6.3} | {:>6.3} | {:>5.2} | {:>6.1} | {:>4}/{:<4} | {:>8} | {:>3} | {:>6.3} |",
        m.hist.value_at_quantile(0.5) as f64 / 1e3,
        m.hist.value_at_quantile(0.99) as f64 / 1e3,
        m.hist.max() as f64 / 1e3,
        mean(s.total),
        mean(s.receive),
        mean(s.apply),
        mean(s.characters),
        mean(s.send),
        mean(s.interpolate),
        mean(other),
        m.ray_us,
        m.events,
        m.frames_offloaded,
        m.peer_results,
        m.fallback_ticks,
        m.snapshots,
        m.slowest_send,
    );
}

/// Measures one scene offloaded (after the peer serves and a settling time); `None` when
/// the peer never served.
fn offloaded(bodies: usize, variant: Variant) -> Option<(Measured, u64)> {
    let mut offloaded = app(P2c2rPlugin::embedded(), bodies, variant);
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
            return None;
        }
    }
    for _ in 0..SETTLE_FRAMES {
        frame(&mut offloaded);
    }
    let m = measure(&mut offloaded);
    Some((m, stats(&offloaded).rtt_us.value_at_quantile(0.5)))
}

fn local(bodies: usize, variant: Variant) -> Measured {
    let mut local = app(P2c2rPlugin::local_only(), bodies, variant);
    for _ in 0..60 {
        frame(&mut local);
    }
    measure(&mut local)
}

fn main() {
    println!("main thread per frame: awake boxes, 60 Hz (one fixed tick per frame), ms of app.update() wall time");
    println!();
    println!(
        "| bodies, plugin | p50 | p99 | max | mean | receive | apply | chars | send | interp | other | ray µs | events | offloaded/peer results | fallback ticks | snapshots | slowest send |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let bare = Variant { name: "bare", queries: false, events: false };
    let queries = Variant { name: "queries", queries: true, events: false };
    let full = Variant { name: "full", queries: true, events: true };
    let mut ratios = Vec::new();
    for bodies in SIZES {
        let mut p50 = Vec::new();
        for variant in [bare, queries, full] {
            let Some((m, rtt)) = offloaded(bodies, variant) else { return };
            row(&format!("{bodies} offloaded {}", variant.name), &m);
            p50.push((variant.name, m.hist.value_at_quantile(0.5), rtt));
        }
        let l = local(bodies, full);
        row(&format!("{bodies} local full"), &l);
        ratios.push((bodies, p50, l.hist.value_at_quantile(0.5)));
    }
    println!();
    for (bodies, p50, local) in ratios {
        for (name, p, rtt) in p50 {
            println!(
                "{bodies} bodies, offloaded {name} / local full p50: {:.3} (peer round trip p50 {:.1} ms)",
                p as f64 / local as f64,
                rtt as f64 / 1e3
            );
        }
    }
    println!(
        "goal: <= 0.3 ms per frame on the main thread at 4096 offloaded bodies, queries, events and a character \
         included. stages are means; receive/apply (FixedPreUpdate), chars = the character controller, send = gather \
         + build + encode + send + stats (FixedPostUpdate), interp (RunFixedMainLoop), other = the rest of the frame \
         (the ray casts, in Update, included)"
    );
}
