//! `P2c2rPlugin::embedded()`: the whole system (a coordinator and a peer) inside the app.
//! Physics comes from the in-process peer; peers are added and killed through the
//! `EmbeddedCluster` resource; a cluster that cannot start leaves the game stepping
//! locally.

mod common;

use std::time::Duration;

use bevy::prelude::*;
use bevy_p2c2r::embedded::PeerAccess;
use bevy_p2c2r::prelude::*;
use common::*;

const PACE: Duration = Duration::from_millis(3);
const TIMEOUT: Duration = Duration::from_secs(60);

/// The falling ball.
#[derive(Component)]
struct Ball;

/// The README's quick start: a fixed ground and a falling ball.
fn setup(mut commands: Commands) {
    commands.spawn(((RigidBody::Fixed, Collider::cuboid(8.0, 0.5, 8.0)), Transform::from_xyz(0.0, -0.5, 0.0)));
    commands.spawn((
        (RigidBody::Dynamic, Collider::ball(0.5), Restitution::coefficient(0.3)),
        Transform::from_xyz(0.0, 5.0, 0.0),
        Ball,
    ));
}

/// Adds the scene and runs the first update (`Startup`); returns the ball.
fn spawn_scene(app: &mut App) -> Entity {
    app.add_systems(Startup, setup);
    app.update();
    let mut balls = app.world_mut().query_filtered::<Entity, With<Ball>>();
    balls.single(app.world()).expect("one ball")
}

fn cluster(app: &App) -> &EmbeddedCluster {
    app.world().resource::<EmbeddedCluster>()
}

/// Every cluster event the app saw, in order.
#[derive(Resource, Default)]
struct Events(Vec<ClusterEvent>);

fn collect_events(mut events: MessageReader<ClusterEvent>, mut seen: ResMut<Events>) {
    seen.0.extend(events.read().cloned());
}

#[test]
fn an_embedded_peer_steps_the_falling_ball() {
    let mut app = app_with(P2c2rPlugin::embedded().gamer_id("embedded"), tick_duration());
    let ball = spawn_scene(&mut app);
    assert!(cluster(&app).embedded_coordinator());
    assert!(cluster(&app).url().starts_with("ws://127.0.0.1:"), "{}", cluster(&app).url());
    assert_eq!(cluster(&app).peers().len(), 1, "one peer to start with");
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 60 && y(app, ball) < 2.0
        },
        "the in-process peer to step the falling ball",
    );
    let s = stats(&app);
    assert_eq!(s.serving_peer.as_deref(), Some(cluster(&app).peers()[0].as_str()), "{s:?}");
    assert!(y(&app, ball) > 0.0, "the ball stays above the ground: {}", y(&app, ball));
}

#[test]
fn peers_are_added_and_killed_through_the_resource() {
    let mut app = app_with(
        P2c2rPlugin::embedded()
            .gamer_id("embedded-kill")
            .with_fallback(FallbackSettings { timeout: Duration::from_millis(100), ..default() }),
        tick_duration(),
    );
    app.init_resource::<Events>().add_systems(Update, collect_events);
    spawn_scene(&mut app);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 30
        },
        "the first peer to serve",
    );
    let first = cluster(&app).peers()[0].clone();
    assert_eq!(stats(&app).serving_peer.as_deref(), Some(first.as_str()));

    // Kill it: the game goes on locally, and the resource forgets it.
    assert!(cluster(&app).kill_peer(Some(&first)));
    let entry = stats(&app).fallback_ticks;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| cluster(app).peers().is_empty() && stats(app).fallback_ticks >= entry + 30,
        "30 ticks in fallback with no peer left",
    );
    assert_eq!(app.world().resource::<Events>().0, [ClusterEvent::PeerKilled(first.clone())]);

    // Add one: it takes the session over.
    assert!(cluster(&app).add_peer());
    let from_peers = stats(&app).physics_results_from_peers;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| {
            let s = stats(app);
            let peers = cluster(app).peers();
            peers.len() == 1
                && s.serving_peer.as_deref() == Some(peers[0].as_str())
                && s.mode == OffloadMode::Offloaded
                && s.physics_results_from_peers >= from_peers + 30
        },
        "the new peer to serve",
    );
    let second = cluster(&app).peers()[0].clone();
    assert_ne!(second, first);
    assert_eq!(
        app.world().resource::<Events>().0,
        [ClusterEvent::PeerKilled(first), ClusterEvent::PeerStarted(second)]
    );
}

#[test]
fn a_cluster_that_cannot_start_leaves_the_game_stepping_locally() {
    // An empty peer id is refused: the cluster does not start.
    let access = PeerAccess { peer_id: Some(String::new()), ..Default::default() };
    let mut app =
        app_with(P2c2rPlugin::embedded().embedded_peer_access(access).gamer_id("no-cluster"), tick_duration());
    let ball = spawn_scene(&mut app);
    assert!(app.world().get_resource::<EmbeddedCluster>().is_none());
    run_until(&mut app, TIMEOUT, PACE, |_| {}, |app| y(app, ball) < 2.0, "the local simulation to drop the ball");
    let s = stats(&app);
    assert_eq!(s.mode, OffloadMode::Fallback, "{s:?}");
    assert_eq!(s.physics_results_from_peers, 0, "{s:?}");
}
