//! The plugin against a scripted coordinator that misbehaves on purpose: it answers out
//! of order, twice, late, not at all, and asks for resyncs. The plugin must keep the
//! bodies' states moving forward by tick and resync with a snapshot when told to.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2c2r::prelude::*;
use common::*;
use p2c2r_protocol::{ErrorCode, Message, TaskError, TaskResult, task_types};
use tokio_tungstenite::tungstenite;

/// What the fake coordinator saw, for the test to check.
#[derive(Default)]
struct Seen {
    /// (tick, snapshot) of every physics request.
    physics: Vec<(u64, bool)>,
}

/// How the fake answers the physics request of a given tick.
fn script(tick: u64) -> &'static str {
    match tick % 12 {
        3 => "hold",  // answered together with the next one, after it (out of order)
        5 => "twice", // answered twice (duplicate)
        8 => "drop",  // never answered (lost)
        _ if tick == 40 => "resync",
        _ => "answer",
    }
}

async fn serve(listener: tokio::net::TcpListener, seen: Arc<Mutex<Seen>>) {
    let mut ws = Conn::accept(&listener).await;
    let mut world = p2c2r_sim::physics::PhysicsWorld::new();
    let mut held: Option<tungstenite::Message> = None;
    let mut resynced = false;
    let mut wire = PeerWire::default();
    while let Some(request) = ws.next_task_request().await {
        let result = |task_id: &str, result: p2c2r_protocol::Payload| {
            Message::TaskResult(TaskResult {
                task_id: task_id.to_owned(),
                result,
                attempt: Some(1),
                peer_id: Some("fake-peer".into()),
            })
        };
        if request.task_type != task_types::PHYSICS_STEP {
            continue;
        }
        let (step, packed) = PeerWire::read(&request);
        seen.lock().unwrap().physics.push((step.tick, step.snapshot));
        let mode = if request.task_id.contains(":probe:") { "answer" } else { script(step.tick) };
        if mode == "resync" && !resynced {
            resynced = true;
            // Pretend the session moved to a peer that lacks it.
            world = p2c2r_sim::physics::PhysicsWorld::new();
            let error = TaskError::new(ErrorCode::UnknownSession, "no such session").with_resync().with_tick(step.tick);
            ws.send(&result(&request.task_id, p2c2r_protocol::to_payload(&error).unwrap())).await;
            continue;
        }
        let answer = wire.answer(&step, packed, world.step(&step));
        let reply = ws.frame(&result(&request.task_id, answer));
        match mode {
            "hold" => held = Some(reply),
            "twice" => {
                ws.send_raw(reply.clone()).await;
                ws.send_raw(reply).await;
            }
            "drop" => {}
            _ => {
                ws.send_raw(reply).await;
                if let Some(h) = held.take() {
                    ws.send_raw(h).await;
                }
            }
        }
    }
}

#[test]
fn late_duplicate_lost_and_out_of_order_results_are_handled_by_tick() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let script = seen.clone();
    let (_rt, url) = scripted_server(move |listener| serve(listener, script));

    // Long fallback timeout: this test is about the offloaded path.
    let mut app = app_with(
        P2c2rPlugin::new(url)
            .gamer_id("fake")
            .with_fallback(FallbackSettings { timeout: Duration::from_secs(10), ..default() })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    let body = spawn_sinking_ball(&mut app);
    let mut last_tick = 0;
    let mut last_y = f32::INFINITY;
    run_until(
        &mut app,
        Duration::from_secs(60),
        Duration::from_millis(2),
        |app| {
            if let Some(state) = app.world().get::<PhysicsState>(body) {
                assert!(state.tick >= last_tick, "state went back from tick {last_tick} to {}", state.tick);
                last_tick = state.tick;
            }
            let y = y(app, body);
            assert!(y <= last_y + 1e-4, "moved up: {last_y} -> {y}");
            last_y = y;
        },
        |app| stats(app).physics_results_from_peers >= 80 && stats(app).ticks >= 60,
        "80 results from the fake peer",
    );
    let s = stats(&app);
    assert!(s.stale_results >= 3, "duplicates and late results were dropped: {s:?}");
    let seen = seen.lock().unwrap();
    let resync_snapshot = seen.physics.iter().find(|(tick, snapshot)| *tick > 40 && *snapshot);
    assert!(resync_snapshot.is_some(), "a snapshot followed the resync error: {:?}", seen.physics);
    let ticks: Vec<u64> = seen.physics.iter().map(|(t, _)| *t).collect();
    assert!(ticks.windows(2).all(|w| w[1] >= w[0]), "one request per tick, in order: {ticks:?}");
    // The body kept moving at 3 m/s: y ≈ -3 · t at the last applied tick.
    let state = *app.world().get::<PhysicsState>(body).unwrap();
    assert!((state.linvel.y + 3.0).abs() < 1e-3, "{state:?}");
}

/// Steps physics honestly. With `drop_after`, the first connection hands out the
/// `resume_secret` `fake-secret-1` and is dropped after that many physics answers; later
/// connections hand out `fake-secret-2`. Ticks in `rate_limited` (not probes) are
/// refused with `rate_limited`. Every registration is kept in `registrations`.
async fn serve_honestly(
    listener: tokio::net::TcpListener,
    drop_after: Option<usize>,
    rate_limited: std::ops::Range<u64>,
    registrations: Arc<Mutex<Vec<p2c2r_protocol::RegisterGamer>>>,
) {
    for connection in 0.. {
        let Some(mut ws) = Conn::accept_next(&listener).await else { return };
        let mut world = p2c2r_sim::physics::PhysicsWorld::new();
        let mut wire = PeerWire::default();
        let secret = if connection == 0 { "fake-secret-1" } else { "fake-secret-2" };
        let mut answered = 0;
        let mut seen = Vec::new();
        while let Some(request) = ws.next_task_request_acking(Some(secret), &mut seen).await {
            registrations.lock().unwrap().append(&mut seen);
            if request.task_type != task_types::PHYSICS_STEP {
                continue;
            }
            let (step, packed) = PeerWire::read(&request);
            if !request.task_id.contains(":probe:") && rate_limited.contains(&step.tick) {
                let refusal = Message::error(ErrorCode::RateLimited, "over 30 tasks/s", Some(request.task_id.clone()));
                ws.send(&refusal).await;
                continue;
            }
            let answer = wire.answer(&step, packed, world.step(&step));
            let result = Message::TaskResult(TaskResult {
                task_id: request.task_id,
                result: answer,
                attempt: Some(1),
                peer_id: Some("fake-peer".into()),
            });
            ws.send(&result).await;
            answered += 1;
            if connection == 0 && drop_after.is_some_and(|n| answered >= n) {
                break;
            }
        }
    }
}

/// Asserts the ball never goes back in time or up.
fn monotonic(body: Entity) -> impl FnMut(&mut App) {
    let mut last_tick = 0;
    let mut last_y = f32::INFINITY;
    move |app| {
        if let Some(state) = app.world().get::<PhysicsState>(body) {
            assert!(state.tick >= last_tick, "state went back from tick {last_tick} to {}", state.tick);
            last_tick = state.tick;
        }
        let y = y(app, body);
        assert!(y <= last_y + 1e-4, "moved up: {last_y} -> {y}");
        last_y = y;
    }
}

#[test]
fn the_plugin_presents_its_resume_secret_when_it_registers_again() {
    let registrations = Arc::new(Mutex::new(Vec::new()));
    let seen = registrations.clone();
    let (_rt, url) = scripted_server(move |listener| serve_honestly(listener, Some(20), 0..0, seen));
    let mut app = app_with(
        P2c2rPlugin::new(url)
            .gamer_id("resumer")
            .with_connection(ConnectionSettings {
                reconnect_backoff: (Duration::from_millis(20), Duration::from_millis(200)),
                ..default()
            })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    let body = spawn_sinking_ball(&mut app);
    run_until(
        &mut app,
        Duration::from_secs(60),
        Duration::from_millis(2),
        monotonic(body),
        |app| {
            let s = stats(app);
            registrations.lock().unwrap().len() >= 2 && s.physics_results_from_peers >= 40 && !s.in_fallback()
        },
        "40 results over two connections",
    );
    let registrations = registrations.lock().unwrap();
    assert_eq!(registrations[0].gamer_id, "resumer");
    assert_eq!(registrations[0].resume_secret, None, "nothing to present the first time");
    assert_eq!(registrations[1].gamer_id, "resumer");
    assert_eq!(registrations[1].resume_secret.as_deref(), Some("fake-secret-1"), "the first ack's secret");
    assert!(stats(&app).connection.is_connected());
}

/// Collects the codes of every `TaskFailed`.
#[derive(Resource, Default)]
struct Failures(Vec<ErrorCode>);

fn collect_failures(mut failed: MessageReader<TaskFailed>, mut failures: ResMut<Failures>) {
    failures.0.extend(failed.read().map(|f| f.code));
}

#[test]
fn a_rate_limited_tick_is_stepped_locally_and_peers_take_over_again() {
    let (_rt, url) =
        scripted_server(move |listener| serve_honestly(listener, None, 30..36, Arc::new(Mutex::new(Vec::new()))));
    let mut app = app_with(
        P2c2rPlugin::new(url)
            .gamer_id("limited")
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    app.init_resource::<Failures>().add_systems(FixedUpdate, collect_failures);
    let body = spawn_sinking_ball(&mut app);
    run_until(
        &mut app,
        Duration::from_secs(60),
        Duration::from_millis(2),
        monotonic(body),
        |app| {
            let s = stats(app);
            s.handbacks >= 1 && !s.in_fallback() && s.physics_results_from_peers >= 60
        },
        "peers stepping the world again after the refusals",
    );
    let failures = &app.world().resource::<Failures>().0;
    assert!(failures.contains(&ErrorCode::RateLimited), "{failures:?}");
    let s = stats(&app);
    assert!(s.fallbacks_entered >= 1 && s.physics_results_local >= 1, "the refused ticks ran locally: {s:?}");
    let state = *app.world().get::<PhysicsState>(body).unwrap();
    assert!((state.linvel.y + 3.0).abs() < 1e-3, "{state:?}");
}

/// Steps physics honestly and reports how the session is replicated: after 5 answers a
/// `session_status` for a session the plugin never used and one for its own, both with
/// absurd numbers; after 10, a strict replicated status with a disagreement and a
/// correction.
async fn serve_reporting_replication(listener: tokio::net::TcpListener) {
    use p2c2r_protocol::SessionStatus;
    let mut ws = Conn::accept(&listener).await;
    let mut world = p2c2r_sim::physics::PhysicsWorld::new();
    let mut wire = PeerWire::default();
    let mut answered = 0u64;
    while let Some(request) = ws.next_task_request().await {
        if request.task_type != task_types::PHYSICS_STEP {
            continue;
        }
        let session_id = request.session_id.clone().unwrap_or_default();
        let statuses = match answered {
            5 => vec![
                SessionStatus {
                    session_id: "never-used".into(),
                    replicas_wanted: u8::MAX,
                    replicas_live: u8::MAX,
                    audited: true,
                    strict: true,
                    disagreements: u64::MAX,
                    corrections: u64::MAX,
                },
                SessionStatus {
                    session_id: session_id.clone(),
                    replicas_wanted: 0,
                    replicas_live: u8::MAX,
                    disagreements: u64::MAX,
                    ..Default::default()
                },
            ],
            10 => vec![SessionStatus {
                session_id,
                replicas_wanted: 2,
                replicas_live: 2,
                strict: true,
                disagreements: 1,
                corrections: 1,
                ..Default::default()
            }],
            _ => vec![],
        };
        for status in statuses {
            ws.send(&Message::SessionStatus(status)).await;
        }
        let (step, packed) = PeerWire::read(&request);
        let answer = wire.answer(&step, packed, world.step(&step));
        let result = Message::TaskResult(TaskResult {
            task_id: request.task_id,
            result: answer,
            attempt: Some(1),
            peer_id: Some("fake-peer".into()),
        });
        ws.send(&result).await;
        answered += 1;
    }
}

#[test]
fn session_statuses_reach_the_stats_and_diagnostics_and_odd_ones_harm_nothing() {
    use bevy::diagnostic::DiagnosticsStore;
    use bevy_p2c2r::stats::diagnostics;
    let (_rt, url) = scripted_server(serve_reporting_replication);
    let plugin = P2c2rPlugin::new(url)
        .gamer_id("replicated")
        .with_connection(ConnectionSettings { session_id: Some("phys".into()), ..default() })
        .with_fallback(FallbackSettings { timeout: Duration::from_secs(10), ..default() })
        .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() });
    let mut app = app_with(plugin, tick_duration());
    let body = spawn_sinking_ball(&mut app);
    run_until(
        &mut app,
        Duration::from_secs(60),
        Duration::from_millis(2),
        monotonic(body),
        |app| {
            let s = stats(app);
            s.replication.corrections == 1 && s.physics_results_from_peers >= 20
        },
        "the replicated status and 20 results",
    );
    let s = stats(&app);
    assert_eq!(
        (s.replication.wanted, s.replication.live, s.replication.disagreements, s.replication.corrections),
        (2, 2, 1, 1)
    );
    assert!(s.replicated() && s.replication.strict && !s.replication.audited, "{s:?}");
    assert_eq!(s.session_status("phys").map(|st| st.replicas_wanted), Some(2));
    assert_eq!(s.session_status("never-used").map(|st| st.disagreements), Some(u64::MAX));
    assert!(s.network.round_trip_ms.is_some(), "the smoothed round trip is published: {s:?}");
    // The correction sent the world again: what a liar's events left is set right.
    assert_eq!(s.snapshots_sent, 2, "the first snapshot and one after the correction: {s:?}");
    let store = app.world().resource::<DiagnosticsStore>();
    let value = |path| store.get_measurement(&path).map(|m| m.value);
    assert_eq!(value(diagnostics::REPLICAS_WANTED), Some(2.0));
    assert_eq!(value(diagnostics::REPLICAS_LIVE), Some(2.0));
    assert_eq!(value(diagnostics::REPLICA_CORRECTIONS), Some(1.0));
    assert!(value(diagnostics::ROUND_TRIP_MS).is_some());
    assert!(value(diagnostics::PLAYOUT_TARGET_TICKS).is_some());
}
