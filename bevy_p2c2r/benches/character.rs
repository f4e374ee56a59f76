//! The player's character over an internet-like path: the latency-injecting proxy between
//! the game and a coordinator with one peer, at 0, 60 ± 15 and 150 ms round trips, printed
//! side by side (figures, not assertions: shared machines are noisy).
//!
//! Run: `cargo bench -p bevy_p2c2r --bench character`.
//!
//! A headless app at 60 Hz, paced in real time, holds a ground, a 40 kg crate, a sliding
//! door (a velocity-based kinematic body the game sends back and forth every 2 s, along
//! the line the character walks) and the character. Per path it prints:
//! - **input → motion**: ticks from the tick the input is given until the character's
//!   state moves, and until its drawn `Transform` moves (interpolation draws the last
//!   two ticks, so one tick later);
//! - **push → crate moves**: from the first impulse sent to the crate until its applied
//!   state moves, in ms and ticks (the round trip plus the playout buffer);
//! - **crate speed**: its speed while pushed at 2 m/s (a push sent once per round trip,
//!   not once per tick, keeps it near the character's);
//! - **corrections**: while the character walks back and forth along the door's line for
//!   20 s, how many ticks began by pushing it out of something the world put where it
//!   stood, and how far (mean and largest per tick, and in all).

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_p2c2r::prelude::*;
use p2c2r_testkit::proxy::{self, Conditions};

const HZ: f64 = 60.0;
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Resource, Default)]
struct Walk {
    velocity: Vec3,
    falling: f32,
}

fn walk(
    time: Res<Time<Fixed>>,
    mut walk: ResMut<Walk>,
    mut characters: Query<(&mut KinematicCharacterController, &KinematicCharacterControllerOutput)>,
) {
    let dt = time.timestep().as_secs_f32();
    for (mut controller, output) in &mut characters {
        walk.falling = if output.grounded { 0.0 } else { walk.falling - 9.81 * dt };
        controller.translation = Some((walk.velocity + Vec3::Y * walk.falling) * dt);
    }
}

#[derive(Component)]
struct SlidingDoor;

/// The door slides along x at 1.5 m/s, turning every 2 s.
fn slide_door(time: Res<Time<Fixed>>, mut doors: Query<&mut Velocity, With<SlidingDoor>>) {
    let turn = ((time.elapsed_secs() / 2.0) as u64).is_multiple_of(2);
    for mut v in &mut doors {
        let want = Vec3::X * if turn { 1.5 } else { -1.5 };
        if v.linvel != want {
            v.linvel = want;
        }
    }
}

struct Scene {
    character: Entity,
    crate_: Entity,
    door: Entity,
}

fn spawn(app: &mut App) -> Scene {
    let world = app.world_mut();
    world.spawn(((RigidBody::Fixed, Collider::cuboid(30.0, 0.5, 30.0)), Transform::from_xyz(0.0, -0.5, 0.0)));
    let crate_ = world
        .spawn((
            RigidBody::Dynamic,
            Collider::cuboid(0.5, 0.5, 0.5),
            ColliderMassProperties::Mass(40.0),
            Transform::from_xyz(0.0, 0.5, -2.0),
        ))
        .id();
    // The sliding door, put in the character's way later.
    let door = world
        .spawn((
            SlidingDoor,
            RigidBody::KinematicVelocityBased,
            Velocity::linear(Vec3::X * 1.5),
            Collider::cuboid(1.0, 1.5, 0.1),
            Transform::from_xyz(10.0, 1.5, 10.0),
        ))
        .id();
    let character = world
        .spawn((
            KinematicCharacterController::default(),
            Collider::capsule_y(0.5, 0.3),
            Transform::from_xyz(0.0, 0.82, 0.0),
        ))
        .id();
    Scene { character, crate_, door }
}

fn state(app: &App, e: Entity) -> PhysicsState {
    *app.world().get::<PhysicsState>(e).unwrap()
}

fn stats(app: &App) -> P2c2rStats {
    app.world().resource::<P2c2rStats>().clone()
}

/// One update, then sleep until the next tick is due in real time.
fn tick(app: &mut App, next: &mut Instant) {
    app.update();
    *next += Duration::from_secs_f64(1.0 / HZ);
    if let Some(rest) = next.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
}

fn run_until(app: &mut App, next: &mut Instant, what: &str, mut done: impl FnMut(&App) -> bool) -> u64 {
    let start = Instant::now();
    let mut ticks = 0;
    while !done(app) {
        assert!(start.elapsed() < LIMIT, "character bench: gave up waiting for {what}: {:?}", stats(app));
        tick(app, next);
        ticks += 1;
    }
    ticks
}

struct Row {
    name: &'static str,
    state_ticks: u64,
    drawn_ticks: u64,
    push_ms: f64,
    push_ticks: u64,
    crate_speed: f32,
    corrections: u64,
    mean_cm: f64,
    max_cm: f64,
    total_cm: f64,
    fallbacks: u64,
}

fn measure(name: &'static str, conditions: Conditions) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let coordinator =
        rt.block_on(coordinator::spawn("127.0.0.1:0", coordinator::Config::default())).expect("coordinator starts");
    let peer = rt.block_on(async {
        let handle = peer::spawn(peer::PeerConfig { coordinator_url: coordinator.url(), ..Default::default() }).await;
        tokio::time::timeout(Duration::from_secs(10), handle.wait_for(|s| s.connected)).await.expect("peer registers");
        handle
    });
    let proxy = rt.block_on(proxy::start(coordinator.local_addr(), conditions)).expect("proxy starts");

    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins(P2c2rPlugin::new(proxy.url()).gamer_id(name).tick_rate(HZ))
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_secs_f64(1.0 / HZ)))
        .init_resource::<Walk>()
        .add_systems(FixedUpdate, (walk, slide_door));
    let scene = spawn(&mut app);
    let mut next = Instant::now();
    run_until(&mut app, &mut next, "offloaded", |app| {
        let s = stats(app);
        s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 60
    });
    let fallbacks = stats(&app).fallbacks_entered;

    // Input → motion.
    let (at, drawn) =
        (state(&app, scene.character).position, app.world().get::<Transform>(scene.character).unwrap().translation);
    app.world_mut().resource_mut::<Walk>().velocity = Vec3::new(0.0, 0.0, -2.0);
    let mut state_ticks = None;
    let mut drawn_ticks = 0;
    for i in 1..=10 {
        tick(&mut app, &mut next);
        if state_ticks.is_none() && state(&app, scene.character).position != at {
            state_ticks = Some(i - 1);
        }
        if app.world().get::<Transform>(scene.character).unwrap().translation != drawn {
            drawn_ticks = i - 1;
            break;
        }
    }

    // Push → the crate moves (its applied state).
    run_until(&mut app, &mut next, "the first push", |app| stats(app).characters.pushes > 0);
    let pushed = Instant::now();
    let rest = state(&app, scene.crate_).position;
    let push_ticks = run_until(&mut app, &mut next, "the crate to move", |app| {
        state(app, scene.crate_).position.distance(rest) > 1e-3
    });
    let push_ms = pushed.elapsed().as_secs_f64() * 1000.0;
    for _ in 0..60 {
        tick(&mut app, &mut next);
    }
    let crate_speed = state(&app, scene.crate_).linvel.length();

    // The door slides along the line the character walks back and forth on (1 s each way
    // at 3 m/s), for 20 s: each time the world moves it into the character, or the
    // character walks where the door is on the peer but not yet in the copy, a correction.
    let at = state(&app, scene.character).position;
    app.world_mut().write_message(PhysicsCommand::Teleport {
        entity: scene.door,
        position: Vec3::new(at.x - 2.0, 1.5, at.z),
        rotation: Quat::IDENTITY,
    });
    let before = stats(&app).characters;
    let (mut max_cm, mut corrections) = (0.0f64, 0);
    for i in 0..1200 {
        let x = if (i / 60u32).is_multiple_of(2) { -3.0 } else { 3.0 };
        app.world_mut().resource_mut::<Walk>().velocity = Vec3::new(x, 0.0, 0.0);
        tick(&mut app, &mut next);
        let c = app.world().get::<KinematicCharacterControllerOutput>(scene.character).unwrap().correction.length();
        if c > 0.0 {
            corrections += 1;
            max_cm = max_cm.max(c as f64 * 100.0);
        }
    }
    let after = stats(&app).characters;
    let total_cm = (after.corrected_m - before.corrected_m) * 100.0;
    assert_eq!(after.corrections - before.corrections, corrections);
    let row = Row {
        name,
        state_ticks: state_ticks.unwrap_or(u64::MAX),
        drawn_ticks,
        push_ms,
        push_ticks,
        crate_speed,
        corrections,
        mean_cm: if corrections > 0 { total_cm / corrections as f64 } else { 0.0 },
        max_cm,
        total_cm,
        fallbacks: stats(&app).fallbacks_entered - fallbacks,
    };
    drop(app);
    rt.block_on(async {
        peer.shutdown().await;
        proxy.shutdown().await;
        coordinator.shutdown().await;
    });
    row
}

fn main() {
    let paths = [
        ("0 ms", Conditions::round_trip(Duration::ZERO, Duration::ZERO)),
        ("60 ± 15 ms", Conditions::round_trip(Duration::from_millis(60), Duration::from_millis(15))),
        ("150 ms", Conditions::round_trip(Duration::from_millis(150), Duration::ZERO)),
    ];
    let rows: Vec<Row> = paths.into_iter().map(|(name, c)| measure(name, c)).collect();
    println!("\nThe player's character through the latency proxy (60 Hz, one peer)\n");
    println!(
        "| round trip | input → state (ticks) | input → drawn (ticks) | push → crate moves | crate speed at 2 m/s \
         | corrections in 20 s | mean / largest per tick | in all | fallbacks |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} ms ({} ticks) | {:.2} m/s | {} | {:.1} / {:.1} cm | {:.0} cm | {} |",
            r.name,
            r.state_ticks,
            r.drawn_ticks,
            r.push_ms,
            r.push_ticks,
            r.crate_speed,
            r.corrections,
            r.mean_cm,
            r.max_cm,
            r.total_cm,
            r.fallbacks
        );
    }
}
