//! What a game's world uses, through the plugin's bevy_rapier3d-shaped face: collision and
//! contact-force events as messages (exactly once, through fallback and hand-back),
//! sensors, joints created, changed and removed from components, the world's settings
//! changed while playing, and large shapes sent once.

mod common;

use std::time::Duration;

use bevy::prelude::*;
use bevy_p2c2r::prelude::*;
use common::*;

const PACE: Duration = Duration::from_millis(3);
const TIMEOUT: Duration = Duration::from_secs(60);

/// Every collision and contact-force event the app saw, in order.
#[derive(Resource, Default)]
struct Seen {
    collisions: Vec<CollisionEvent>,
    forces: Vec<ContactForceEvent>,
}

fn collect(
    mut collisions: MessageReader<CollisionEvent>,
    mut forces: MessageReader<ContactForceEvent>,
    mut seen: ResMut<Seen>,
) {
    seen.collisions.extend(collisions.read().copied());
    seen.forces.extend(forces.read().copied());
}

fn listening(app: &mut App) {
    app.init_resource::<Seen>().add_systems(FixedUpdate, collect);
}

fn seen(app: &App) -> &Seen {
    app.world().resource::<Seen>()
}

fn starts(app: &App, a: Entity, b: Entity) -> usize {
    seen(app)
        .collisions
        .iter()
        .filter(|e| matches!(e, CollisionEvent::Started(x, y, _) if (*x, *y) == (a, b) || (*x, *y) == (b, a)))
        .count()
}

fn stops(app: &App, a: Entity, b: Entity) -> usize {
    seen(app)
        .collisions
        .iter()
        .filter(|e| matches!(e, CollisionEvent::Stopped(x, y, _) if (*x, *y) == (a, b) || (*x, *y) == (b, a)))
        .count()
}

#[test]
fn a_ball_through_a_trigger_zone_onto_the_ground_raises_each_event_once() {
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    listening(&mut app);
    let ground = spawn_ground(&mut app);
    let zone = app
        .world_mut()
        .spawn((
            Collider::cuboid(1.0, 0.5, 1.0),
            Sensor,
            ActiveEvents::COLLISION_EVENTS,
            Transform::from_xyz(0.0, 3.0, 0.0),
        ))
        .id();
    let ball = app
        .world_mut()
        .spawn((
            RigidBody::Dynamic,
            Collider::ball(0.3),
            ColliderMassProperties::Mass(2.0),
            ActiveEvents::COLLISION_EVENTS | ActiveEvents::CONTACT_FORCE_EVENTS,
            ContactForceEventThreshold(200.0),
            Transform::from_xyz(0.0, 6.0, 0.0),
        ))
        .id();
    for _ in 0..200 {
        app.update();
    }
    assert_eq!((starts(&app, zone, ball), stops(&app, zone, ball)), (1, 1), "{:?}", seen(&app).collisions);
    let entered = seen(&app).collisions.iter().find(|e| matches!(e, CollisionEvent::Started(..))).unwrap();
    let CollisionEvent::Started(_, _, flags) = entered else { unreachable!() };
    assert!(flags.contains(CollisionEventFlags::SENSOR));
    assert_eq!((starts(&app, ground, ball), stops(&app, ground, ball)), (1, 0), "landed and stays");
    let forces = &seen(&app).forces;
    let landing = forces
        .iter()
        .find(|f| [f.collider1, f.collider2] == [ground, ball] || [f.collider1, f.collider2] == [ball, ground])
        .unwrap_or_else(|| panic!("a hard landing: {forces:?}, ground {ground}, zone {zone}, ball {ball}"));
    // The force is the one `collider2` receives: the ground pushes the ball up.
    let on_ball = if landing.collider2 == ball { landing.total_force } else { -landing.total_force };
    assert!(landing.total_force_magnitude > 200.0 && on_ball.y > 0.0, "{landing:?}");
    // Despawning the ball stops its contact, as removed.
    app.world_mut().despawn(ball);
    for _ in 0..3 {
        app.update();
    }
    let last = seen(&app).collisions.last().copied().unwrap();
    let CollisionEvent::Stopped(a, b, flags) = last else { panic!("{last:?}") };
    assert!([a, b] == [ground, ball] || [a, b] == [ball, ground], "{last:?}");
    assert_eq!(flags, CollisionEventFlags::REMOVED);
}

#[test]
fn joints_are_created_changed_and_removed_from_components() {
    let mut app = app_with(P2c2rPlugin::local_only(), tick_duration());
    // A ball on a 2 m rope from the world, hanging; a plank hinged to a post.
    let ball = app
        .world_mut()
        .spawn((
            RigidBody::Dynamic,
            Collider::ball(0.2),
            ImpulseJoint::to_world(JointData::rope(2.0).local_anchor1(Vec3::new(0.0, 5.0, 0.0))),
            Transform::from_xyz(1.5, 5.0, 0.0),
        ))
        .id();
    let post = app.world_mut().spawn((Collider::cuboid(0.1, 1.0, 0.1), Transform::from_xyz(5.0, 1.0, 0.0))).id();
    let door = app
        .world_mut()
        .spawn((
            RigidBody::Dynamic,
            Collider::cuboid(0.5, 0.9, 0.05),
            GravityScale(0.0),
            ImpulseJoint::new(
                post,
                JointData::revolute(Vec3::Y)
                    .local_anchor1(Vec3::new(0.15, 0.0, 0.0))
                    .local_anchor2(Vec3::new(-0.55, 0.0, 0.0))
                    .motor_velocity(2.0, 50.0),
            ),
            Transform::from_xyz(5.7, 1.0, 0.0),
        ))
        .id();
    // Joints a world would refuse are left out (with a warning), and cost no tick: a
    // body joined to itself, a hinge without an axis.
    let lone =
        app.world_mut().spawn((RigidBody::Dynamic, Collider::ball(0.2), Transform::from_xyz(-5.0, 1.0, 0.0))).id();
    app.world_mut().entity_mut(lone).insert(ImpulseJoint::new(lone, JointData::spherical()));
    app.world_mut().spawn((
        RigidBody::Dynamic,
        Collider::ball(0.2),
        ImpulseJoint::to_world(JointData::revolute(Vec3::ZERO)),
        Transform::from_xyz(-7.0, 1.0, 0.0),
    ));
    for _ in 0..120 {
        app.update();
    }
    let distance =
        |app: &App| app.world().get::<PhysicsState>(ball).unwrap().position.distance(Vec3::new(0.0, 5.0, 0.0));
    assert!(distance(&app) <= 2.05, "the rope holds: {}", distance(&app));
    let turned = app.world().get::<PhysicsState>(door).unwrap().rotation;
    assert!(turned.to_axis_angle().1 > 1.0, "the motor turned the door: {turned:?}");
    // Changed: the door's motor stops; its limit holds it at 0.
    app.world_mut().get_mut::<ImpulseJoint>(door).unwrap().data = JointData::revolute(Vec3::Y)
        .local_anchor1(Vec3::new(0.15, 0.0, 0.0))
        .local_anchor2(Vec3::new(-0.55, 0.0, 0.0))
        .motor_position(0.0, 200.0, 40.0);
    for _ in 0..180 {
        app.update();
    }
    let back = app.world().get::<PhysicsState>(door).unwrap().rotation;
    assert!(back.to_axis_angle().1 < 0.1, "the new motor brought it back: {back:?}");
    // Removed: the ball falls freely.
    app.world_mut().entity_mut(ball).remove::<ImpulseJoint>();
    for _ in 0..60 {
        app.update();
    }
    assert!(app.world().get::<PhysicsState>(ball).unwrap().position.y < 1.0, "the ball fell");
    assert_eq!(stats(&app).task_failures, 0, "no request was refused: {:?}", stats(&app));
}

#[test]
fn gravity_changes_while_playing() {
    let mut app = app_with(
        P2c2rPlugin::local_only().with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    let ball =
        app.world_mut().spawn((RigidBody::Dynamic, Collider::ball(0.5), Transform::from_xyz(0.0, 10.0, 0.0))).id();
    for _ in 0..30 {
        app.update();
    }
    assert_eq!(y(&app, ball), 10.0, "no gravity, no fall");
    app.world_mut().resource_mut::<P2c2rConfiguration>().gravity = Vec3::new(0.0, -9.81, 0.0);
    for _ in 0..30 {
        app.update();
    }
    assert!(y(&app, ball) < 9.0, "it falls once gravity is set: {}", y(&app, ball));
    // And velocities written by the game are sent.
    app.world_mut().resource_mut::<P2c2rConfiguration>().gravity = Vec3::ZERO;
    app.world_mut().get_mut::<Velocity>(ball).map(|mut v| *v = Velocity::linear(Vec3::X * 4.0)).unwrap_or_else(|| {
        app.world_mut().entity_mut(ball).insert(Velocity::linear(Vec3::X * 4.0));
    });
    for _ in 0..30 {
        app.update();
    }
    let state = app.world().get::<PhysicsState>(ball).unwrap();
    assert!((state.linvel.x - 4.0).abs() < 1e-3 && state.linvel.y.abs() < 1e-3, "{state:?}");
}

#[test]
fn a_resting_contact_is_started_once_through_fallback_and_hand_back() {
    let mut app = app_with(
        P2c2rPlugin::embedded_in_memory()
            .gamer_id("events-handover")
            .with_fallback(FallbackSettings { timeout: Duration::from_millis(100), ..default() }),
        tick_duration(),
    );
    listening(&mut app);
    let ground = spawn_ground(&mut app);
    let crate_ = app
        .world_mut()
        .spawn((
            RigidBody::Dynamic,
            Collider::cuboid(0.5, 0.5, 0.5),
            ActiveEvents::COLLISION_EVENTS,
            Transform::from_xyz(0.0, 2.0, 0.0),
        ))
        .id();
    let cluster = |app: &App| app.world().resource::<EmbeddedCluster>().peers().to_vec();
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| starts(app, ground, crate_) == 1 && stats(app).physics_results_from_peers >= 60,
        "the crate to land, stepped by the peer",
    );
    // The peer dies: the local fallback takes the world over, with the touching pair.
    let first = cluster(&app)[0].clone();
    assert!(app.world().resource::<EmbeddedCluster>().kill_peer(Some(&first)));
    let entry = stats(&app).fallback_ticks;
    run_until(&mut app, TIMEOUT, PACE, |_| {}, |app| stats(app).fallback_ticks >= entry + 30, "30 ticks in fallback");
    // A new peer: the session is handed back to it, with the touching pair again.
    assert!(app.world().resource::<EmbeddedCluster>().add_peer());
    let from_peers = stats(&app).physics_results_from_peers;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).mode == OffloadMode::Offloaded && stats(app).physics_results_from_peers >= from_peers + 30,
        "the new peer to serve",
    );
    assert_eq!((starts(&app, ground, crate_), stops(&app, ground, crate_)), (1, 0), "{:?}", seen(&app).collisions);
    assert!(stats(&app).handbacks >= 1);
}

/// Every task failure's code, in order.
#[derive(Resource, Default)]
struct Failures(Vec<p2c2r_protocol::ErrorCode>);

#[test]
fn a_level_mesh_is_sent_once_and_again_only_to_a_peer_that_lacks_it() {
    let mut app = app_with(
        P2c2rPlugin::embedded_in_memory()
            .gamer_id("level-once")
            .with_fallback(FallbackSettings { timeout: Duration::from_millis(100), ..default() }),
        tick_duration(),
    );
    app.init_resource::<Failures>().add_systems(
        FixedUpdate,
        |mut failed: MessageReader<TaskFailed>, mut seen: ResMut<Failures>| {
            seen.0.extend(failed.read().map(|f| f.code));
        },
    );
    let n = 60u32;
    let vertices =
        (0..=n).flat_map(|z| (0..=n).map(move |x| Vec3::new(x as f32 - 30.0, 0.0, z as f32 - 30.0))).collect();
    let at = |x: u32, z: u32| z * (n + 1) + x;
    let indices = (0..n)
        .flat_map(|z| {
            (0..n).flat_map(move |x| {
                [[at(x, z), at(x, z + 1), at(x + 1, z)], [at(x + 1, z), at(x, z + 1), at(x + 1, z + 1)]]
            })
        })
        .collect();
    app.world_mut().spawn((Collider::trimesh(vertices, indices), Transform::default()));
    let ball =
        app.world_mut().spawn((RigidBody::Dynamic, Collider::ball(0.5), Transform::from_xyz(0.0, 3.0, 0.0))).id();
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).physics_results_from_peers >= 90,
        "the peer to step the level",
    );
    assert!((y(&app, ball) - 0.5).abs() < 0.05, "the ball rests on the mesh: {}", y(&app, ball));
    // A new peer takes over (from the fallback): it lacks the mesh, asks for it once,
    // and gets it.
    let first = app.world().resource::<EmbeddedCluster>().peers()[0].clone();
    assert!(app.world().resource::<EmbeddedCluster>().kill_peer(Some(&first)));
    let entry = stats(&app).fallback_ticks;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).fallback_ticks >= entry + 10,
        "the fallback to step the level",
    );
    assert!(app.world().resource::<EmbeddedCluster>().add_peer());
    let from_peers = stats(&app).physics_results_from_peers;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).mode == OffloadMode::Offloaded && stats(app).physics_results_from_peers >= from_peers + 30,
        "the new peer to serve the level",
    );
    let missing =
        app.world().resource::<Failures>().0.iter().filter(|c| **c == p2c2r_protocol::ErrorCode::MissingShape).count();
    assert_eq!(missing, 1, "the new peer asked for the mesh once: {:?}", app.world().resource::<Failures>().0);
    assert!((y(&app, ball) - 0.5).abs() < 0.05, "the ball still rests on the mesh: {}", y(&app, ball));
}

/// A ground, a crate on it, a ball sinking towards the crate at a steady 0.5 m/s (the
/// tests run without gravity, so the ball moves, and is reported, every tick), and a
/// trigger zone around them.
fn query_scene(app: &mut App) -> (Entity, Entity, Entity, Entity) {
    let ground = spawn_ground(app);
    let crate_ = app
        .world_mut()
        .spawn((
            RigidBody::Dynamic,
            Collider::cuboid(0.5, 0.5, 0.5),
            CollisionGroups::new(0b10, u32::MAX),
            Transform::from_xyz(0.0, 0.5, 0.0),
        ))
        .id();
    let ball = app
        .world_mut()
        .spawn((
            RigidBody::Dynamic,
            Collider::ball(0.3),
            Velocity::linear(Vec3::NEG_Y * 0.5),
            Transform::from_xyz(0.0, 4.0, 0.0),
        ))
        .id();
    let zone =
        app.world_mut().spawn((Collider::cuboid(3.0, 3.0, 3.0), Sensor, Transform::from_xyz(0.0, 2.0, 0.0))).id();
    (ground, crate_, ball, zone)
}

/// Casts straight down at x = z = 0 from 20 m up.
fn down(app: &App, filter: QueryFilter) -> Option<RayHit> {
    app.world().resource::<PhysicsQueries>().cast_ray(Vec3::new(0.0, 20.0, 0.0), Vec3::NEG_Y, 100.0, true, filter)
}

fn rays_see_the_last_applied_tick(app: &mut App, until: impl Fn(&App) -> bool) {
    let (ground, crate_, ball, zone) = query_scene(app);
    assert_eq!(app.world().resource::<PhysicsQueries>().tick(), 0, "no tick applied yet");
    run_until(
        app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| until(app) && app.world().resource::<PhysicsQueries>().tick() > 5,
        "ticks applied",
    );
    // The ball, sinking: the hit is where its applied state is, not its drawn Transform.
    let hit = down(app, QueryFilter::default()).expect("a hit");
    assert_eq!(hit.entity, ball);
    let state = *app.world().get::<PhysicsState>(ball).unwrap();
    assert_eq!(app.world().resource::<PhysicsQueries>().tick(), state.tick, "the queries see the applied tick");
    assert!((hit.point.y - (state.position.y + 0.3)).abs() < 1e-3, "{hit:?} {state:?}");
    // The excluded body, group filters, sensors.
    assert_eq!(down(app, QueryFilter::default().exclude_rigid_body(ball)).unwrap().entity, crate_);
    let not_crates = QueryFilter::default().exclude_rigid_body(ball).groups(CollisionGroups::new(u32::MAX, !0b10));
    assert_eq!(down(app, not_crates).unwrap().entity, ground);
    assert_eq!(down(app, QueryFilter::default().include_sensors()).unwrap().entity, zone);
    let queries = app.world().resource::<PhysicsQueries>();
    let inside = queries.intersections_with_point(Vec3::new(0.0, 0.5, 0.0), QueryFilter::default().include_sensors());
    assert!(inside.contains(&crate_) && inside.contains(&zone), "{inside:?}");
    let probe = Collider::ball(0.2);
    let swept =
        queries.cast_shape(&probe, Vec3::new(-5.0, 0.5, 0.0), Quat::IDENTITY, Vec3::X, 10.0, QueryFilter::default());
    assert_eq!(swept.map(|h| h.entity), Some(crate_));
}

#[test]
fn scene_queries_see_the_last_applied_tick_locally() {
    let plugin = P2c2rPlugin::local_only().with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() });
    let mut app = app_with(plugin, tick_duration());
    rays_see_the_last_applied_tick(&mut app, |_| true);
}

#[test]
fn scene_queries_see_the_last_applied_tick_offloaded() {
    let plugin = P2c2rPlugin::embedded_in_memory()
        .gamer_id("queries")
        .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() });
    let mut app = app_with(plugin, tick_duration());
    rays_see_the_last_applied_tick(&mut app, |app| {
        let s = stats(app);
        s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 10
    });
}
