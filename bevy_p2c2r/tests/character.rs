//! The player's character through the plugin, offloaded and local alike: it moves at the
//! tick its input is given (no round trip), walks up a 30° ramp and a 0.3 m step, lands on
//! a platform after a jump, stops at walls, pushes a crate that the world then moves, is
//! pushed out of a door the world closed on it a little per tick, and walks without a
//! hitch through a fallback and a hand-back to a new peer.

mod common;

use std::time::Duration;

use bevy::prelude::*;
use bevy_p2c2r::prelude::*;
use common::*;

const PACE: Duration = Duration::from_millis(3);
const TIMEOUT: Duration = Duration::from_secs(60);

/// Capsule: 0.5 m half height, 0.3 m radius: its centre stands 0.8 m (plus the 2 cm gap)
/// above the ground.
const STANDING: f32 = 0.82;

/// How the test walks the character: a velocity, with gravity, as a game's input system.
#[derive(Resource, Default)]
struct Walk {
    velocity: Vec3,
    falling: f32,
    /// Jump at the next tick on the ground.
    jump: bool,
}

fn walk(
    time: Res<Time<Fixed>>,
    mut walk: ResMut<Walk>,
    mut characters: Query<(&mut KinematicCharacterController, &KinematicCharacterControllerOutput)>,
) {
    let dt = time.timestep().as_secs_f32();
    for (mut controller, output) in &mut characters {
        walk.falling = match (output.grounded, std::mem::take(&mut walk.jump)) {
            (true, true) => 5.5,
            (true, false) => 0.0,
            (false, jump) => {
                walk.jump = jump;
                walk.falling - 9.81 * dt
            }
        };
        controller.translation = Some((walk.velocity + Vec3::Y * walk.falling) * dt);
    }
}

fn spawn_character(app: &mut App, at: Vec3) -> Entity {
    app.init_resource::<Walk>().add_systems(FixedUpdate, walk);
    app.world_mut()
        .spawn((
            KinematicCharacterController::default(),
            Collider::capsule_y(0.5, 0.3),
            Transform::from_translation(at),
        ))
        .id()
}

/// A 1 m crate of `mass` kg at `at`.
fn spawn_crate(app: &mut App, mass: f32, at: Vec3) -> Entity {
    app.world_mut()
        .spawn((
            RigidBody::Dynamic,
            Collider::cuboid(0.5, 0.5, 0.5),
            ColliderMassProperties::Mass(mass),
            Transform::from_translation(at),
        ))
        .id()
}

fn state(app: &App, e: Entity) -> PhysicsState {
    *app.world().get::<PhysicsState>(e).unwrap()
}

fn output(app: &App, e: Entity) -> KinematicCharacterControllerOutput {
    app.world().get::<KinematicCharacterControllerOutput>(e).unwrap().clone()
}

fn set_walk(app: &mut App, velocity: Vec3) {
    app.world_mut().resource_mut::<Walk>().velocity = velocity;
}

/// Runs until the plugin is `ready` (offloaded, or at once locally) and the character has
/// its first applied state.
fn settle(app: &mut App, character: Entity, ready: &impl Fn(&App) -> bool) {
    run_until(
        app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| ready(app) && app.world().get::<PhysicsState>(character).is_some_and(|s| s.tick > 0),
        "the character registered",
    );
}

/// Returns the fallback ticks counted before the walk began.
fn walks_pushes_and_stops(app: &mut App, ready: impl Fn(&App) -> bool) -> u64 {
    spawn_ground(app);
    let character = spawn_character(app, Vec3::new(0.0, STANDING, 0.0));
    let crate_ = spawn_crate(app, 40.0, Vec3::new(0.0, 0.5, -2.0));
    app.world_mut().spawn((Collider::cuboid(0.25, 2.0, 5.0), Transform::from_xyz(3.0, 2.0, -2.0)));
    settle(app, character, &ready);
    let fallback_ticks = stats(app).fallback_ticks;

    // Input moves the character at the very next tick, whatever the round trip.
    let before = state(app, character).position;
    set_walk(app, Vec3::new(0.0, 0.0, -2.0));
    app.update();
    let moved = before.z - state(app, character).position.z;
    assert!((moved - 2.0 / 60.0).abs() < 1e-3, "moved {moved} m in the tick of its input");

    // Into the crate: the character stops against it, the world moves it, the character
    // follows. It never sinks into the crate as the game sees it.
    let mut deepest = f32::INFINITY;
    run_until(
        app,
        TIMEOUT,
        PACE,
        |app| {
            let gap = state(app, character).position.z - (state(app, crate_).position.z + 0.5) - 0.3;
            deepest = deepest.min(gap);
        },
        |app| state(app, crate_).position.z < -4.0,
        "the crate pushed 2 m",
    );
    assert!(deepest > -0.06, "the character stayed out of the crate: {deepest} m");
    assert!(state(app, character).position.z < -2.0, "and followed it: {:?}", state(app, character));
    assert!(stats(app).characters.pushes > 0, "{:?}", stats(app).characters);
    let crate_state = state(app, crate_);
    assert!(
        crate_state.linvel.z < -0.5 && crate_state.linvel.z > -4.0,
        "pushed at about walking speed: {crate_state:?}"
    );

    // Sideways into the wall (face at x = 2.75): it stops there.
    set_walk(app, Vec3::new(3.0, 0.0, 0.0));
    let wall_hit = |app: &mut App| output(app, character).collisions.iter().any(|c| c.normal.x > 0.9);
    run_until(app, TIMEOUT, PACE, |_| {}, wall_hit, "the character at the wall");
    for _ in 0..10 {
        app.update();
        let x = state(app, character).position.x;
        assert!(x < 2.75 - 0.3 + 0.01, "stopped at the wall: {x}");
    }
    assert!(state(app, character).position.x > 2.3, "{:?}", state(app, character));
    fallback_ticks
}

#[test]
fn a_character_walks_pushes_a_crate_and_stops_at_a_wall_locally() {
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    walks_pushes_and_stops(&mut app, |_| true);
}

#[test]
fn a_character_walks_pushes_a_crate_and_stops_at_a_wall_offloaded() {
    let mut app = app_with(P2c2rPlugin::embedded_in_memory().gamer_id("character"), tick_duration());
    let fallback_ticks = walks_pushes_and_stops(&mut app, |app| {
        let s = stats(app);
        s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 10
    });
    assert_eq!(stats(&app).fallback_ticks, fallback_ticks, "the crate was moved by a peer all along");
}

fn pushed_out_of_a_closed_door(app: &mut App, ready: impl Fn(&App) -> bool) {
    spawn_ground(app);
    let character = spawn_character(app, Vec3::new(0.0, STANDING, 0.0));
    // A sliding door, open (2 m away); the world will close it 0.2 m into where the
    // character stands: the overlap reaches the game through an applied tick.
    let door = app
        .world_mut()
        .spawn((
            RigidBody::KinematicPositionBased,
            Collider::cuboid(2.0, 2.0, 0.1),
            Transform::from_xyz(0.0, 2.0, -2.0),
        ))
        .id();
    settle(app, character, &ready);
    app.world_mut().entity_mut(door).insert(KinematicTarget::at(Vec3::new(0.0, 2.0, -0.2)));
    let max = KinematicCharacterController::default().max_correction;
    let (mut steps, mut corrections) = (Vec::new(), 0);
    let mut last = state(app, character).position;
    run_until(
        app,
        TIMEOUT,
        PACE,
        |app| {
            let at = state(app, character).position;
            steps.push(at.distance(last));
            last = at;
            corrections += u64::from(output(app, character).correction != Vec3::ZERO);
        },
        |app| state(app, character).position.z >= -0.2 + 0.1 + 0.3 - 1e-3,
        "the character out of the door",
    );
    assert!(state(app, door).position.z > -0.21, "the world closed the door: {:?}", state(app, door));
    let largest = steps.iter().copied().fold(0.0, f32::max);
    assert!(largest <= max + 1e-4, "the character never moved more than {max} m a tick: {steps:?}");
    assert!(corrections >= 4, "a glide over several ticks, not a snap: {corrections} corrections, {steps:?}");
    assert_eq!(stats(app).characters.corrections, corrections);
}

#[test]
fn a_door_closed_on_the_character_pushes_it_out_gently_locally() {
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    pushed_out_of_a_closed_door(&mut app, |_| true);
}

#[test]
fn a_door_closed_on_the_character_pushes_it_out_gently_offloaded() {
    let mut app = app_with(P2c2rPlugin::embedded_in_memory().gamer_id("door"), tick_duration());
    pushed_out_of_a_closed_door(&mut app, |app| stats(app).mode == OffloadMode::Offloaded);
}

#[test]
fn a_character_walks_without_a_hitch_and_pushes_through_fallback_and_hand_back() {
    let mut app = app_with(
        P2c2rPlugin::embedded_in_memory()
            .gamer_id("character-handover")
            .with_fallback(FallbackSettings { timeout: Duration::from_millis(100), ..default() }),
        tick_duration(),
    );
    spawn_ground(&mut app);
    let character = spawn_character(&mut app, Vec3::new(0.0, STANDING, 0.0));
    let crate_ = spawn_crate(&mut app, 40.0, Vec3::new(0.0, 0.5, -12.0));
    settle(&mut app, character, &|app| stats(app).mode == OffloadMode::Offloaded);
    // Walks towards the crate at 1 m/s: every tick moves it exactly 1/60 m, whoever
    // steps the world.
    set_walk(&mut app, Vec3::new(0.0, 0.0, -1.0));
    let mut last = state(&app, character).position.z;
    let mut steady = |app: &mut App| {
        let z = state(app, character).position.z;
        let step = last - z;
        assert!((step - 1.0 / 60.0).abs() < 1e-3 || step.abs() < 1e-6 && z < -10.0, "a hitch: moved {step} m");
        last = z;
    };
    let peer = app.world().resource::<EmbeddedCluster>().peers()[0].clone();
    assert!(app.world_mut().resource_mut::<EmbeddedCluster>().kill_peer(Some(&peer)));
    let entry = stats(&app).fallback_ticks;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        &mut steady,
        |app| stats(app).fallback_ticks >= entry + 60,
        "a second of fallback",
    );
    assert!(app.world_mut().resource_mut::<EmbeddedCluster>().add_peer());
    let from_peers = stats(&app).physics_results_from_peers;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        &mut steady,
        |app| stats(app).mode == OffloadMode::Offloaded && stats(app).physics_results_from_peers >= from_peers + 30,
        "the new peer to serve",
    );
    // On to the crate, which the new peer moves.
    set_walk(&mut app, Vec3::new(0.0, 0.0, -2.0));
    run_until(&mut app, TIMEOUT, PACE, |_| {}, |app| state(app, crate_).position.z < -13.0, "the crate pushed 1 m");
    assert!(stats(&app).handbacks >= 1 && stats(&app).characters.pushes > 0, "{:?}", stats(&app));
}

/// A 30° ramp rising towards +x from x = 3, a 0.3 m step at x < −2 and a platform 1 m
/// high behind it (−z); the character walks up the ramp, back onto the step, and jumps
/// onto the platform.
fn climbs_steps_and_jumps(app: &mut App, ready: impl Fn(&App) -> bool) {
    spawn_ground(app);
    let tilt = 30f32.to_radians();
    app.world_mut().spawn((
        Collider::cuboid(5.0, 0.1, 2.0),
        Transform::from_xyz(3.0 + 5.0 * tilt.cos(), 5.0 * tilt.sin() - 0.1, 0.0)
            .with_rotation(Quat::from_rotation_z(tilt)),
    ));
    app.world_mut().spawn((Collider::cuboid(2.0, 0.15, 2.0), Transform::from_xyz(-4.0, 0.15, 0.0)));
    app.world_mut().spawn((Collider::cuboid(1.5, 0.5, 1.0), Transform::from_xyz(-4.0, 0.5, -4.0)));
    let character = spawn_character(app, Vec3::new(0.0, STANDING, 0.0));
    settle(app, character, &ready);

    set_walk(app, Vec3::new(3.0, 0.0, 0.0));
    run_until(app, TIMEOUT, PACE, |_| {}, |app| state(app, character).position.x > 7.0, "up the ramp");
    let at = state(app, character).position;
    let ramp = (at.x - 3.0) * tilt.tan();
    assert!(at.y > ramp + 0.5 && at.y < ramp + 1.3, "on the 30° ramp: {at:?}, its surface at {ramp}");

    set_walk(app, Vec3::new(-3.0, 0.0, 0.0));
    run_until(app, TIMEOUT, PACE, |_| {}, |app| state(app, character).position.x < -4.0, "onto the step");
    set_walk(app, Vec3::ZERO);
    run_until(app, TIMEOUT, PACE, |_| {}, |app| output(app, character).grounded, "standing");
    let at = state(app, character).position;
    assert!((at.y - (0.3 + STANDING)).abs() < 0.1, "up the 0.3 m step: {at:?}");

    set_walk(app, Vec3::new(0.0, 0.0, -2.5));
    run_until(app, TIMEOUT, PACE, |_| {}, |app| state(app, character).position.z < -1.8, "near the platform");
    app.world_mut().resource_mut::<Walk>().jump = true;
    run_until(
        app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| state(app, character).position.z < -3.5 && output(app, character).grounded,
        "landed",
    );
    set_walk(app, Vec3::ZERO);
    let at = state(app, character).position;
    assert!((at.y - (1.0 + STANDING)).abs() < 0.1, "on the 1 m platform: {at:?}");
}

#[test]
fn a_character_climbs_a_ramp_and_a_step_and_jumps_onto_a_platform_locally() {
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    climbs_steps_and_jumps(&mut app, |_| true);
}

#[test]
fn a_character_climbs_a_ramp_and_a_step_and_jumps_onto_a_platform_offloaded() {
    let mut app = app_with(P2c2rPlugin::embedded_in_memory().gamer_id("climber"), tick_duration());
    climbs_steps_and_jumps(&mut app, |app| stats(app).mode == OffloadMode::Offloaded);
}

/// Every task failure the plugin reported.
#[derive(Resource, Default)]
struct Failures(Vec<String>);

fn record_failures(mut failed: MessageReader<TaskFailed>, mut failures: ResMut<Failures>) {
    failures.0.extend(failed.read().map(|f| format!("{:?}: {}", f.code, f.message)));
}

#[test]
fn a_teleported_character_is_not_dragged_back_by_its_own_target() {
    let mut app = app_with(P2c2rPlugin::embedded_in_memory().gamer_id("teleport"), tick_duration());
    app.init_resource::<Failures>().add_systems(FixedUpdate, record_failures);
    spawn_ground(&mut app);
    let character = spawn_character(&mut app, Vec3::new(0.0, STANDING, 0.0));
    settle(&mut app, character, &|app| stats(app).mode == OffloadMode::Offloaded);
    set_walk(&mut app, Vec3::new(1.0, 0.0, 0.0));
    app.update();
    // Walking (its target changes every tick) and teleported 10 m in the same tick: the
    // world must put it there and keep it there, not step it back to this tick's target
    // and then forward again (600 m/s each way).
    app.world_mut().write_message(PhysicsCommand::Teleport {
        entity: character,
        position: Vec3::new(10.0, STANDING, 0.0),
        rotation: Quat::IDENTITY,
    });
    let sent = stats(&app).ticks;
    let mut fastest = 0.0f32;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| fastest = fastest.max(state(app, character).linvel.length()),
        |app| state(app, character).tick > sent + 10,
        "ten ticks stepped by the world after the teleport",
    );
    assert!(fastest < 5.0, "the world moved the character at {fastest} m/s");
    assert!(state(&app, character).position.x > 10.0, "{:?}", state(&app, character));
    assert!(app.world().resource::<Failures>().0.is_empty(), "{:?}", app.world().resource::<Failures>().0);
}

#[test]
fn pushing_a_body_that_is_re_created_in_the_same_tick_costs_no_tick() {
    let mut app = app_with(P2c2rPlugin::embedded_in_memory().gamer_id("recreated"), tick_duration());
    app.init_resource::<Failures>().add_systems(FixedUpdate, record_failures);
    spawn_ground(&mut app);
    let character = spawn_character(&mut app, Vec3::new(0.0, STANDING, 0.0));
    let crate_ = spawn_crate(&mut app, 400.0, Vec3::new(0.0, 0.5, -1.0));
    settle(&mut app, character, &|app| stats(app).mode == OffloadMode::Offloaded);
    set_walk(&mut app, Vec3::new(0.0, 0.0, -2.0));
    // Leaning on a heavy crate (pushed every tick) whose friction the game changes every
    // tenth tick: each change re-creates it under a new id in the very tick of a push.
    let before = stats(&app).characters.pushes;
    let mut frame = 0u32;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| {
            frame += 1;
            if frame.is_multiple_of(10) {
                let friction = if frame.is_multiple_of(20) { 0.6 } else { 0.5 };
                app.world_mut().entity_mut(crate_).insert(Friction::coefficient(friction));
            }
        },
        |app| stats(app).characters.pushes >= before + 60,
        "60 pushes",
    );
    assert!(app.world().resource::<Failures>().0.is_empty(), "{:?}", app.world().resource::<Failures>().0);
    assert!(state(&app, crate_).position.z < -1.05, "the crate was pushed: {:?}", state(&app, crate_));
}

#[test]
fn a_character_on_a_dynamic_body_is_left_alone_without_breaking_the_world() {
    let mut app = app_with(P2c2rPlugin::embedded_in_memory().gamer_id("misconfigured"), tick_duration());
    app.init_resource::<Failures>().add_systems(FixedUpdate, record_failures);
    spawn_ground(&mut app);
    app.init_resource::<Walk>().add_systems(FixedUpdate, walk);
    let character = app
        .world_mut()
        .spawn((
            KinematicCharacterController::default(),
            RigidBody::Dynamic,
            Collider::capsule_y(0.5, 0.3),
            Transform::from_xyz(0.0, 3.0, 0.0),
        ))
        .id();
    set_walk(&mut app, Vec3::new(2.0, 0.0, 0.0));
    // The world drops it onto the ground as the dynamic body it is; the controller never
    // moves it, and no tick is refused for a kinematic target on a dynamic body.
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).physics_results_from_peers >= 90 && state(app, character).position.y < 1.0,
        "the body fallen, stepped by the peer",
    );
    assert!(state(&app, character).position.x.abs() < 0.05, "not walked: {:?}", state(&app, character));
    assert!(app.world().resource::<Failures>().0.is_empty(), "{:?}", app.world().resource::<Failures>().0);
    assert_eq!(output(&app, character), KinematicCharacterControllerOutput::default());
}
