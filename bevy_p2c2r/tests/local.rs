//! Interpolation, local stepping and the ECS surface, without any network (`P2c2rPlugin::local_only`).

mod common;

use std::time::Duration;

use bevy::prelude::*;
use bevy_p2c2r::prelude::*;
use common::*;

#[test]
fn interpolation_gives_monotone_motion_between_ticks() {
    // 3.3 frames per fixed tick.
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration().mul_f64(1.0 / 3.3));
    let ball =
        app.world_mut().spawn(((RigidBody::Dynamic, Collider::ball(0.5)), Transform::from_xyz(0.0, 100.0, 0.0))).id();
    let mut ys = Vec::new();
    for _ in 0..400 {
        app.update();
        ys.push(y(&app, ball));
    }
    let ticks = stats(&app).ticks;
    assert!(ticks > 100, "{ticks} ticks");
    assert!(ys.windows(2).all(|w| w[1] <= w[0]), "not monotone: {ys:?}");
    // Frames between ticks show positions between them, not repeats of the last tick.
    let moving = ys.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(moving as f64 > ticks as f64 * 2.5, "only {moving} of {} frames moved over {ticks} ticks", ys.len());
    // And the steps are smooth: no frame moves much more than an even share of a tick.
    let steps: Vec<f32> = ys.windows(2).map(|w| w[0] - w[1]).collect();
    let last = &steps[steps.len() - 50..];
    let mean = last.iter().sum::<f32>() / last.len() as f32;
    assert!(last.iter().all(|s| *s < mean * 2.5), "uneven steps {last:?}");
}

#[test]
fn without_interpolation_transforms_jump_to_each_tick() {
    let mut app = app_with(
        P2c2rPlugin::local_only().with_configuration(P2c2rConfiguration { interpolation: false, ..default() }),
        tick_duration().mul_f64(1.0 / 3.0),
    );
    let ball =
        app.world_mut().spawn(((RigidBody::Dynamic, Collider::ball(0.5)), Transform::from_xyz(0.0, 100.0, 0.0))).id();
    for _ in 0..60 {
        app.update();
        let t = app.world().get::<Transform>(ball).unwrap().translation;
        let s = app.world().get::<PhysicsState>(ball).map(|s| s.position);
        if let Some(s) = s {
            assert_eq!(t, s);
        }
    }
}

#[test]
fn local_only_steps_physics_and_ai() {
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    spawn_ground(&mut app);
    app.insert_resource(NavigationGrid::new(1.0, Vec2::new(-5.0, -5.0), vec!["..........".to_string(); 10]));
    let ball =
        app.world_mut().spawn(((RigidBody::Dynamic, Collider::ball(0.5)), Transform::from_xyz(0.0, 5.0, 0.0))).id();
    let agent = app
        .world_mut()
        .spawn((OffloadedAgent::new(Vec3::new(3.5, 0.0, 3.5), 3.0), Transform::from_xyz(-3.5, 0.0, -3.5)))
        .id();
    for _ in 0..300 {
        app.update();
    }
    let s = stats(&app);
    assert_eq!(s.mode, OffloadMode::Fallback);
    assert_eq!(s.connection, ConnectionState::Offline);
    assert!(s.physics_results_local > 250 && s.ai_results_local > 250, "{s:?}");
    assert!((y(&app, ball) - 0.5).abs() < 0.05, "ball rests on the ground: {}", y(&app, ball));
    let st = app.world().get::<AgentState>(agent).unwrap();
    assert!(st.position.xz().distance(Vec2::new(3.5, 3.5)) < 0.5, "agent at {}", st.position);
    let _ = Duration::ZERO;
}

#[test]
fn changing_a_body_recreates_it_in_place() {
    let mut app = app_with(
        P2c2rPlugin::local_only().with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    let e = app
        .world_mut()
        .spawn(((RigidBody::Dynamic, Collider::ball(0.5), Velocity::linear(Vec3::X)), Transform::default()))
        .id();
    for _ in 0..30 {
        app.update();
    }
    let before = *app.world().get::<PhysicsState>(e).unwrap();
    app.world_mut().entity_mut(e).insert(Collider::ball(1.0));
    for _ in 0..30 {
        app.update();
    }
    let after = *app.world().get::<PhysicsState>(e).unwrap();
    assert_ne!(before.id, after.id, "a new body id");
    assert!(after.position.x > before.position.x, "kept moving from where it was: {before:?} -> {after:?}");
    assert!((after.linvel.x - 1.0).abs() < 1e-3);
    assert_eq!(stats(&app).bodies, 1);
    app.world_mut().entity_mut(e).remove::<Collider>();
    app.update();
    assert!(app.world().get::<PhysicsState>(e).is_none());
    assert_eq!(stats(&app).bodies, 0);
}

#[test]
fn forces_kinematic_targets_and_agents_with_bodies() {
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    spawn_ground(&mut app);
    app.insert_resource(NavigationGrid::new(
        1.0,
        Vec2::new(-10.0, -10.0),
        vec!["....................".to_string(); 20],
    ));
    // A ball lifted by a force stronger than its weight.
    let lifted = app
        .world_mut()
        .spawn((
            (RigidBody::Dynamic, Collider::ball(0.5), ColliderMassProperties::Mass(1.0)),
            ExternalForce { force: Vec3::new(0.0, 20.0, 0.0), ..default() },
            Transform::from_xyz(-5.0, 1.0, 0.0),
        ))
        .id();
    // A kinematic platform moved by targets.
    let platform = app
        .world_mut()
        .spawn((
            (RigidBody::KinematicPositionBased, Collider::cuboid(1.0, 0.1, 1.0)),
            KinematicTarget::at(Vec3::new(5.0, 3.0, 5.0)),
            Transform::from_xyz(5.0, 3.0, 0.0),
        ))
        .id();
    // A capsule NPC that is also a dynamic body.
    let walker = app
        .world_mut()
        .spawn((
            (RigidBody::Dynamic, Collider::capsule_y(0.5, 0.3), Damping { linear_damping: 0.0, angular_damping: 10.0 }),
            OffloadedAgent::new(Vec3::new(-6.0, 0.0, 6.0), 3.0),
            Transform::from_xyz(-6.0, 0.85, -6.0),
        ))
        .id();
    // A kinematic NPC.
    let glider = app
        .world_mut()
        .spawn((
            (RigidBody::KinematicPositionBased, Collider::ball(0.4)),
            OffloadedAgent::new(Vec3::new(6.0, 0.4, -6.0), 3.0),
            Transform::from_xyz(0.0, 0.4, -6.0),
        ))
        .id();
    let mut messages = Vec::new();
    for _ in 0..240 {
        app.update();
        let stepped = app.world().resource::<Messages<PhysicsStepped>>();
        messages.extend(stepped.iter_current_update_messages().map(|m| m.tick));
    }
    assert!(y(&app, lifted) > 3.0, "the force lifted the ball: {}", y(&app, lifted));
    let p = app.world().get::<PhysicsState>(platform).unwrap().position;
    assert!(p.distance(Vec3::new(5.0, 3.0, 5.0)) < 0.01, "the platform reached its target: {p}");
    let w = app.world().get::<PhysicsState>(walker).unwrap().position;
    assert!(w.xz().distance(Vec2::new(-6.0, 6.0)) < 1.0, "the walker reached its goal: {w}");
    let g = app.world().get::<PhysicsState>(glider).unwrap().position;
    assert!(g.xz().distance(Vec2::new(6.0, -6.0)) < 0.6, "the kinematic NPC reached its goal: {g}");
    assert!(messages.windows(2).all(|m| m[1] > m[0]) && messages.len() > 200, "one PhysicsStepped per tick");
}

#[test]
fn diagnostics_are_published() {
    use bevy::diagnostic::DiagnosticsStore;
    use bevy_p2c2r::stats::diagnostics;
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    app.world_mut().spawn(((RigidBody::Dynamic, Collider::ball(0.5)), Transform::default()));
    for _ in 0..10 {
        app.update();
    }
    let store = app.world().resource::<DiagnosticsStore>();
    for path in diagnostics::ALL {
        assert!(store.get(&path).is_some(), "{} registered", path.as_str());
    }
    let fallback_ticks = store.get_measurement(&diagnostics::TICKS_FALLBACK).unwrap().value;
    assert!(fallback_ticks >= 8.0, "{fallback_ticks}");
    assert_eq!(store.get_measurement(&diagnostics::FALLBACK).unwrap().value, 1.0);
    assert_eq!(store.get_measurement(&diagnostics::TICKS_OFFLOADED).unwrap().value, 0.0);
}

/// Moves the kinematic NPC's `KinematicTarget` every tick, so that it changes in the same
/// tick as the agent step sends its own target.
fn nudge_targets(mut q: Query<&mut KinematicTarget>, mut x: Local<f32>) {
    *x += 0.01;
    for mut t in &mut q {
        t.position = Vec3::new(*x, 0.4, 0.0);
    }
}

#[test]
fn a_kinematic_agent_with_a_kinematic_target_sends_one_target_per_tick() {
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    app.add_systems(FixedUpdate, nudge_targets);
    spawn_ground(&mut app);
    app.insert_resource(NavigationGrid::new(
        1.0,
        Vec2::new(-10.0, -10.0),
        vec!["....................".to_string(); 20],
    ));
    let glider = app
        .world_mut()
        .spawn((
            (RigidBody::KinematicPositionBased, Collider::ball(0.4)),
            OffloadedAgent::new(Vec3::new(6.0, 0.4, -6.0), 3.0),
            KinematicTarget::at(Vec3::new(0.0, 0.4, 0.0)),
            Transform::from_xyz(0.0, 0.4, -6.0),
        ))
        .id();
    for _ in 0..240 {
        app.update();
    }
    let s = stats(&app);
    assert_eq!(s.task_failures, 0, "no tick was rejected for listing the body twice: {s:?}");
    // The agent's target wins: it walks to its goal.
    let g = app.world().get::<PhysicsState>(glider).unwrap().position;
    assert!(g.xz().distance(Vec2::new(6.0, -6.0)) < 0.6, "the kinematic NPC reached its goal: {g}");
}

#[test]
fn a_body_that_leaves_the_world_is_reported_and_no_longer_simulated() {
    let mut app = app_with(
        P2c2rPlugin::local_only().with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    // 5 m from the world's edge (±1,000,000 m), flying outwards at 300 m/s.
    let runaway = app
        .world_mut()
        .spawn((
            (RigidBody::Dynamic, Collider::ball(0.5), Velocity::linear(Vec3::new(300.0, 0.0, 0.0))),
            Transform::from_xyz(999_995.0, 0.0, 0.0),
        ))
        .id();
    let stayer = app
        .world_mut()
        .spawn((
            (RigidBody::Dynamic, Collider::ball(0.5), Velocity::linear(Vec3::new(1.0, 0.0, 0.0))),
            Transform::from_xyz(0.0, 0.0, 0.0),
        ))
        .id();
    let mut left = Vec::new();
    for _ in 0..30 {
        app.update();
        let messages = app.world().resource::<Messages<BodyLeftWorld>>();
        left.extend(messages.iter_current_update_messages().cloned());
    }
    assert_eq!(left.len(), 1, "reported once: {left:?}");
    assert_eq!(left[0].entity, runaway);
    assert!(app.world().get::<Collider>(runaway).is_none(), "the plugin stopped simulating it");
    assert!(app.world().get::<PhysicsState>(runaway).is_none());
    // The rest of the world goes on.
    let before = app.world().get::<PhysicsState>(stayer).unwrap().position.x;
    for _ in 0..10 {
        app.update();
    }
    assert!(app.world().get::<PhysicsState>(stayer).unwrap().position.x > before);
    assert_eq!(stats(&app).mode, OffloadMode::Fallback);
}
