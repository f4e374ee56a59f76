//! End-to-end tests: headless Bevy apps with the plugin, an in-process coordinator and
//! peers, connected in memory (`Cluster`: the same WebSocket protocol with no socket)
//! except where sockets are the point (a coordinator restarted on its address, one that
//! is unreachable: `TokioCluster`, loopback port 0). Every wait is on a condition with a
//! generous timeout; updates are paced a few ms apart so the network keeps up with the
//! game clock.

mod common;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_p2c2r::prelude::*;
use common::*;

const PACE: Duration = Duration::from_millis(3);
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn bodies_follow_peer_physics() {
    let mut cluster = Cluster::new();
    let peer = cluster.peer();
    // Two frames per tick: the Transforms are interpolated between peer results.
    let mut app = app_with(cluster.plugin().gamer_id("follow"), tick_duration() / 2);
    spawn_ground(&mut app);
    let boxes: Vec<Entity> = (0..10)
        .map(|i| {
            app.world_mut()
                .spawn((
                    (RigidBody::Dynamic, Collider::cuboid(0.5, 0.5, 0.5)),
                    Transform::from_xyz(i as f32 * 2.0 - 10.0, 2.0 + i as f32, 0.0),
                ))
                .id()
        })
        .collect();
    let mut last_y: Vec<f32> = boxes.iter().map(|_| f32::INFINITY).collect();
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| {
            // Falling boxes never move up before they land, whoever steps them.
            for (i, e) in boxes.iter().enumerate() {
                let y = y(app, *e);
                if y > 0.6 {
                    assert!(y <= last_y[i] + 1e-4, "box {i} moved up: {} -> {y}", last_y[i]);
                }
                last_y[i] = y;
            }
        },
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 240
        },
        "240 physics results from the peer",
    );
    let s = stats(&app);
    assert_eq!(s.serving_peer.as_deref(), Some(peer.peer_id()));
    assert!(s.rtt_ms_p50().is_some());
    assert!(s.network.bytes_sent > 0 && s.network.bytes_received > 0);
    assert_eq!(s.bodies, 11);
    // After 4 s of game time every box rests on the ground (half height 0.5).
    for e in &boxes {
        let state = app.world().get::<PhysicsState>(*e).unwrap();
        assert!((state.position.y - 0.5).abs() < 0.05, "box at {:?}", state.position);
        assert!(state.tick > 0);
    }
}

/// A body moving down at constant speed (no gravity, nothing to hit): its height must
/// fall steadily through every hand-over, without stalls, jumps or rewinds.
///
/// Stalls are counted in updates (each one a tick of game time), not in wall-clock
/// time: the longest real-time stall is only printed, as a figure.
struct Probe {
    body: Entity,
    last_y: f32,
    /// The last physics tick applied, from any source.
    last_tick: Option<u64>,
    /// The largest difference between two consecutive applied ticks (1: none skipped).
    max_tick_gap: u64,
    /// Updates since a tick was last applied, and the most seen in a row.
    updates_without_progress: u32,
    max_updates_without_progress: u32,
    last_progress: Instant,
    /// Printed, never asserted: wall-clock time depends on the machine.
    max_stall: Duration,
    max_step: f32,
}

/// The most updates (ticks of game time) the game may go without an applied physics
/// tick, and so the most ticks it may skip: one second of game time. A dead peer is
/// noticed after the fallback timeout (about 100 ms on loopback, 30-odd updates at the
/// test's pace; the ticks sent to it meanwhile are skipped, the fallback steps the
/// current one); a machine slower than the pace runs fewer updates in that time, never
/// more.
const MAX_UPDATES_WITHOUT_PROGRESS: u32 = 60;

impl Probe {
    fn new(app: &mut App) -> Self {
        let body = spawn_sinking_ball(app);
        Probe {
            body,
            last_y: 0.0,
            last_tick: None,
            max_tick_gap: 0,
            updates_without_progress: 0,
            max_updates_without_progress: 0,
            last_progress: Instant::now(),
            max_stall: Duration::ZERO,
            max_step: 0.0,
        }
    }

    fn observe(&mut self, app: &App) {
        let y = y(app, self.body);
        assert!(y <= self.last_y + 1e-4, "the body moved up: {} -> {y}", self.last_y);
        self.max_step = self.max_step.max(self.last_y - y);
        self.last_y = y;
        let applied: Vec<u64> =
            app.world().resource::<Messages<PhysicsStepped>>().iter_current_update_messages().map(|m| m.tick).collect();
        if applied.is_empty() {
            self.updates_without_progress += 1;
            self.max_updates_without_progress = self.max_updates_without_progress.max(self.updates_without_progress);
            return;
        }
        for tick in applied {
            if let Some(last) = self.last_tick {
                assert!(tick > last, "tick {tick} applied after tick {last}");
                self.max_tick_gap = self.max_tick_gap.max(tick - last);
            }
            self.last_tick = Some(tick);
        }
        self.updates_without_progress = 0;
        self.max_stall = self.max_stall.max(self.last_progress.elapsed());
        self.last_progress = Instant::now();
    }

    /// The behaviour: ticks were applied in order, and the game never went a second of
    /// game time without one. Prints the longest wall-clock stall.
    fn assert_no_stall(&self, phase: &str) {
        eprintln!(
            "{phase}: longest stall {:?} wall-clock, {} updates; largest tick gap {}",
            self.max_stall, self.max_updates_without_progress, self.max_tick_gap
        );
        assert!(
            self.max_tick_gap <= u64::from(MAX_UPDATES_WITHOUT_PROGRESS),
            "{phase}: {} ticks skipped at once",
            self.max_tick_gap - 1
        );
        assert!(
            self.max_updates_without_progress <= MAX_UPDATES_WITHOUT_PROGRESS,
            "{phase}: {} updates in a row without a physics tick",
            self.max_updates_without_progress
        );
    }

    /// Starts measuring stalls afresh (the tick and height checks go on).
    fn reset_stalls(&mut self) {
        self.max_stall = Duration::ZERO;
        self.max_updates_without_progress = 0;
    }
}

#[test]
fn killing_the_peer_falls_back_without_a_stall_and_hands_back() {
    let mut cluster = Cluster::new();
    let first = cluster.peer();
    let mut app = app_with(
        cluster
            .plugin()
            .gamer_id("failover")
            .with_fallback(FallbackSettings { timeout: Duration::from_millis(100), ..default() })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    app.init_resource::<Modes>().add_systems(Update, collect_modes);
    let mut probe = Probe::new(&mut app);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 60
        },
        "the peer to serve",
    );
    let before = stats(&app);
    assert_eq!(before.serving_peer.as_deref(), Some(first.peer_id()));

    // Crash the peer: the game must go on locally.
    cluster.kill(&first);
    probe.reset_stalls();
    let mut fallback_ticks_at_entry = None;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| {
            let s = stats(app);
            if s.mode == OffloadMode::Fallback && fallback_ticks_at_entry.is_none() {
                fallback_ticks_at_entry = Some(s.fallback_ticks);
            }
            fallback_ticks_at_entry.is_some_and(|n| s.fallback_ticks >= n + 60)
        },
        "60 ticks in fallback",
    );
    probe.assert_no_stall("after the crash");
    assert!(stats(&app).fallbacks_entered >= 1);

    // A new peer arrives: a snapshot goes out and the peer serves again.
    let second = cluster.peer();
    let from_peers = stats(&app).physics_results_from_peers;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded
                && s.serving_peer.as_deref() == Some(second.peer_id())
                && s.physics_results_from_peers >= from_peers + 60
        },
        "the new peer to serve",
    );
    let s = stats(&app);
    assert!(s.handbacks >= 1 && s.snapshots_sent >= 2, "{s:?}");
    probe.assert_no_stall("through the hand-back");
    // 3 m/s at 60 Hz is 5 cm a tick; a jump would show as a much bigger step.
    assert!(probe.max_step < 0.05 * 4.0, "largest step {} m", probe.max_step);
    assert_eq!(s.distinct_peers(), 2);
    // Mode changes came as messages: fallback, then handing back, then offloaded.
    let modes = &app.world().resource::<Modes>().0;
    let tail: Vec<_> = modes.iter().rev().take(3).rev().copied().collect();
    assert_eq!(tail, [OffloadMode::Fallback, OffloadMode::HandingBack, OffloadMode::Offloaded], "{modes:?}");
}

/// With two replicas, the death of the serving peer costs no frame: the other replica's
/// results continue the session (no fallback tick, no tick skipped, no resync), while a
/// third peer joins (as a replacement replaying the session's log: asserted with the
/// coordinator's counters in `peer/tests/replication.rs`).
#[test]
fn with_two_replicas_killing_the_serving_peer_costs_no_frame() {
    let mut cluster = Cluster::replicated(2);
    let (first, second) = (cluster.peer(), cluster.peer());
    let mut app = app_with(
        cluster
            .plugin()
            .gamer_id("replicated")
            .with_fallback(FallbackSettings { timeout: Duration::from_millis(100), ..default() })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    app.init_resource::<Modes>().add_systems(Update, collect_modes);
    let mut probe = Probe::new(&mut app);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 60
        },
        "two replicas to serve",
    );
    let before = stats(&app);
    let serving = before.serving_peer.clone().expect("a peer serves");
    let (victim, survivor) = if serving == first.peer_id() { (&first, &second) } else { (&second, &first) };
    let modes_before = app.world().resource::<Modes>().0.len();

    cluster.kill(victim);
    probe.reset_stalls();
    probe.max_tick_gap = 0;
    let third = cluster.peer();
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| stats(app).physics_results_from_peers >= before.physics_results_from_peers + 180,
        "180 more results from the replicas",
    );
    let after = stats(&app);
    eprintln!("before {before:?}\nafter {after:?}");
    probe.assert_no_stall("through the serving replica's death");
    assert_eq!(probe.max_tick_gap, 1, "a tick was skipped");
    assert_eq!(after.fallback_ticks, before.fallback_ticks, "a tick was stepped locally: {after:?}");
    assert_eq!(after.fallbacks_entered, before.fallbacks_entered);
    assert_eq!(after.snapshots_sent, before.snapshots_sent, "a resync: {after:?}");
    assert_eq!(app.world().resource::<Modes>().0.len(), modes_before, "the mode changed");
    let now_serving = after.serving_peer.as_deref().expect("a peer serves");
    assert!(now_serving == survivor.peer_id() || now_serving == third.peer_id(), "{now_serving}");
}

#[derive(Resource, Default)]
struct Modes(Vec<OffloadMode>);

fn collect_modes(mut changes: MessageReader<ModeChanged>, mut modes: ResMut<Modes>) {
    modes.0.extend(changes.read().map(|c| c.mode));
}

#[derive(Resource, Default)]
struct Custom(Vec<(String, String)>);

fn collect_custom(mut results: MessageReader<bevy_p2c2r::TaskResultReceived>, mut seen: ResMut<Custom>) {
    seen.0.extend(results.read().map(|r| (r.task_id.clone(), r.result.json().unwrap().to_owned())));
}

#[test]
fn custom_tasks_can_be_submitted_through_the_client_resource() {
    let mut cluster = Cluster::new();
    let _peer = cluster.peer();
    let mut app = app_with(cluster.plugin().gamer_id("custom"), tick_duration());
    app.init_resource::<Custom>().add_systems(Update, collect_custom);
    run_until(&mut app, TIMEOUT, PACE, |_| {}, |app| stats(app).connection.is_connected(), "connected");
    let payload = bevy_p2c2r::p2c2r_protocol::to_payload(&serde_json::json!({"num_objects": 5})).unwrap();
    let task_id = app.world_mut().resource_mut::<P2c2rClient>().submit("physics", payload, None);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| app.world().resource::<Custom>().0.iter().any(|(id, _)| *id == task_id),
        "the custom task's result",
    );
    let results = &app.world().resource::<Custom>().0;
    let (_, json) = results.iter().find(|(id, _)| *id == task_id).unwrap();
    assert!(json.contains("\"status\":\"success\"") || json.contains("\"status\": \"success\""), "{json}");
}

#[test]
fn the_session_moves_to_another_peer_with_a_snapshot() {
    let mut cluster = Cluster::new();
    let a = cluster.peer();
    let b = cluster.peer();
    // A long fallback timeout: the coordinator's re-dispatch and the resync do the work.
    let mut app = app_with(
        cluster
            .plugin()
            .gamer_id("move")
            .with_fallback(FallbackSettings { timeout: Duration::from_secs(5), ..default() })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    let mut probe = Probe::new(&mut app);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 30
        },
        "a peer to serve",
    );
    let serving = stats(&app).serving_peer.unwrap();
    let (dead, alive) = if serving == a.peer_id() { (&a, &b) } else { (&b, &a) };
    let snapshots = stats(&app).snapshots_sent;
    // A tenth of the sessions (the default audit fraction, drawn at random) run on a hidden
    // second replica, here the other peer: such a session carries on there with no resync.
    let audited = stats(&app).replication.audited;
    cluster.kill(dead);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| {
            let s = stats(app);
            s.serving_peer.as_deref() == Some(alive.peer_id()) && s.mode == OffloadMode::Offloaded
        },
        "the other peer to take the session",
    );
    if audited {
        assert_eq!(stats(&app).fallback_ticks, 0, "the audit replica carried on: {:?}", stats(&app));
    } else {
        assert!(stats(&app).snapshots_sent > snapshots, "the new peer got a snapshot: {:?}", stats(&app));
    }
    assert!(probe.max_step < 0.05 * 4.0, "largest step {} m", probe.max_step);
}

#[test]
fn with_a_coordinator_but_no_peer_bodies_fall_by_fallback() {
    let cluster = Cluster::new();
    let mut app = app_with(cluster.plugin().gamer_id("lonely"), tick_duration());
    spawn_ground(&mut app);
    let ball =
        app.world_mut().spawn(((RigidBody::Dynamic, Collider::ball(0.5)), Transform::from_xyz(0.0, 10.0, 0.0))).id();
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| {
            let s = stats(app);
            s.connection.is_connected() && s.fallback_ticks >= 120
        },
        "120 fallback ticks while connected",
    );
    let s = stats(&app);
    assert_eq!(s.mode, OffloadMode::Fallback);
    assert_eq!(s.physics_results_from_peers, 0);
    assert!(y(&app, ball) < 9.0, "the ball fell: {}", y(&app, ball));
    assert!(s.network.tasks_in_flight <= 1, "only one probe waits in the queue: {s:?}");
}

#[test]
fn an_unreachable_coordinator_still_runs_the_game() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut app = app_with(P2c2rPlugin::new(format!("ws://127.0.0.1:{port}")).gamer_id("alone"), tick_duration());
    spawn_ground(&mut app);
    let ball =
        app.world_mut().spawn(((RigidBody::Dynamic, Collider::ball(0.5)), Transform::from_xyz(0.0, 10.0, 0.0))).id();
    for _ in 0..120 {
        app.update();
    }
    let s = stats(&app);
    assert_eq!(s.mode, OffloadMode::Fallback);
    assert!(!s.connection.is_connected());
    assert!(y(&app, ball) < 5.0, "the ball fell: {}", y(&app, ball));
}

#[test]
fn agents_reach_goals_around_obstacles() {
    let mut cluster = Cluster::new();
    let _peer = cluster.peer();
    let mut app = app_with(cluster.plugin().gamer_id("walkers"), tick_duration());
    // A wall across the middle with a gap on the right.
    let mut rows = vec!["..........".to_string(); 10];
    rows[5] = "########..".to_string();
    let grid = NavigationGrid::new(1.0, Vec2::ZERO, rows);
    app.insert_resource(grid.clone());
    let goals = [Vec3::new(1.5, 0.0, 8.5), Vec3::new(3.5, 0.0, 9.5)];
    let agents: Vec<Entity> = [Vec3::new(1.5, 0.0, 1.5), Vec3::new(4.5, 0.0, 0.5)]
        .iter()
        .zip(goals)
        .map(|(start, goal)| {
            app.world_mut()
                .spawn((OffloadedAgent::new(goal, 4.0).with_radius(0.3), Transform::from_translation(*start)))
                .id()
        })
        .collect();
    let mut went_around = [false; 2];
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| {
            for (i, e) in agents.iter().enumerate() {
                let Some(st) = app.world().get::<AgentState>(*e) else { continue };
                assert!(grid.is_walkable(st.position), "agent {i} walked into a wall at {}", st.position);
                went_around[i] |= st.position.x > 7.5;
            }
        },
        |app| {
            agents.iter().zip(goals).all(|(e, goal)| {
                app.world().get::<AgentState>(*e).is_some_and(|st| st.position.xz().distance(goal.xz()) < 0.5)
            }) && stats(app).ai_results_from_peers > 0
        },
        "both agents at their goals",
    );
    assert_eq!(went_around, [true, true], "both went through the gap");
    let s = stats(&app);
    assert!(s.ai_results_from_peers > 0, "{s:?}");
    assert_eq!(s.agents, 2);
}

#[test]
fn bodies_can_be_pushed_shot_and_removed() {
    let mut cluster = Cluster::new();
    let _peer = cluster.peer();
    let mut app = app_with(
        cluster
            .plugin()
            .gamer_id("shooter")
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    run_until(&mut app, TIMEOUT, PACE, |_| {}, |app| stats(app).mode == OffloadMode::Offloaded, "offloaded");
    let shot = app
        .world_mut()
        .spawn((
            (RigidBody::Dynamic, Collider::ball(0.1), Velocity::linear(Vec3::new(10.0, 0.0, 0.0)), Ccd::enabled()),
            Transform::from_xyz(0.0, 1.0, 0.0),
        ))
        .id();
    let pushed = app
        .world_mut()
        .spawn((
            (RigidBody::Dynamic, Collider::ball(0.5), ColliderMassProperties::Mass(1.0)),
            ExternalImpulse { impulse: Vec3::new(0.0, 0.0, 2.0), ..default() },
            Transform::from_xyz(0.0, 1.0, 5.0),
        ))
        .id();
    let start = stats(&app).physics_results_from_peers;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).physics_results_from_peers >= start + 30,
        "30 more peer ticks",
    );
    let shot_state = *app.world().get::<PhysicsState>(shot).unwrap();
    assert!(shot_state.position.x > 3.0 && (shot_state.linvel.x - 10.0).abs() < 0.01, "{shot_state:?}");
    let pushed_state = *app.world().get::<PhysicsState>(pushed).unwrap();
    assert!((pushed_state.linvel.z - 2.0).abs() < 0.01, "impulse applied once: {pushed_state:?}");
    assert_eq!(app.world().get::<ExternalImpulse>(pushed).unwrap().impulse, Vec3::ZERO);
    // Teleport and removal.
    app.world_mut().write_message(PhysicsCommand::Teleport {
        entity: pushed,
        position: Vec3::new(-5.0, 1.0, 0.0),
        rotation: Quat::IDENTITY,
    });
    app.world_mut().despawn(shot);
    let start = stats(&app).physics_results_from_peers;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).physics_results_from_peers >= start + 10,
        "10 more peer ticks",
    );
    let pushed_state = *app.world().get::<PhysicsState>(pushed).unwrap();
    assert!((pushed_state.position.x + 5.0).abs() < 0.01, "teleported: {pushed_state:?}");
    assert_eq!(stats(&app).bodies, 1);
}

#[test]
fn a_restarted_coordinator_is_rejoined() {
    let mut cluster = TokioCluster::new();
    let addr = cluster.coordinator.as_ref().unwrap().local_addr();
    let _first = cluster.peer();
    let mut app = app_with(
        P2c2rPlugin::new(&cluster.url)
            .gamer_id("rejoin")
            .with_connection(ConnectionSettings {
                reconnect_backoff: (Duration::from_millis(20), Duration::from_millis(200)),
                ..default()
            })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    let mut probe = Probe::new(&mut app);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| stats(app).mode == OffloadMode::Offloaded && stats(app).physics_results_from_peers >= 30,
        "offloaded",
    );
    // The coordinator goes away: the game goes on locally at once.
    let coordinator = cluster.coordinator.take().unwrap();
    cluster.rt.block_on(coordinator.shutdown());
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| !stats(app).connection.is_connected() && stats(app).mode == OffloadMode::Fallback,
        "fallback after the coordinator left",
    );
    // It comes back on the same address, and a peer with it.
    let coordinator = cluster.rt.block_on(coordinator::spawn(addr, coordinator::Config::default())).unwrap();
    cluster.coordinator = Some(coordinator);
    let second = cluster.peer();
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |app| probe.observe(app),
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.serving_peer.as_deref() == Some(second.peer_id())
        },
        "offloaded to the new coordinator's peer",
    );
    probe.assert_no_stall("through the restart");
    assert!(probe.max_step < 0.05 * 4.0, "largest step {} m", probe.max_step);
}

#[test]
fn with_fallback_disabled_bodies_wait_for_a_peer() {
    let mut cluster = Cluster::new();
    let mut app = app_with(
        cluster
            .plugin()
            .gamer_id("patient")
            .with_fallback(FallbackSettings { policy: FallbackPolicy::Disabled, ..default() })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    let body = spawn_sinking_ball(&mut app);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).connection.is_connected() && stats(app).ticks >= 60,
        "60 ticks",
    );
    let s = stats(&app);
    assert_eq!(s.fallback_ticks, 0);
    assert_eq!(y(&app, body), 0.0, "nobody steps the body");
    let _peer = cluster.peer();
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).mode == OffloadMode::Offloaded && y(app, body) < -0.5,
        "the peer to move the body",
    );
    assert_eq!(stats(&app).fallback_ticks, 0);
}
