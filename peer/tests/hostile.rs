//! End to end against hostile tasks (issue 8): the real coordinator in process, a peer
//! running its tasks in worker processes of the real `peer` binary, and gamers over
//! loopback sockets: honest ones through the real gamer client, attackers through the
//! testkit's raw protocol client (their requests are hostile).
//!
//! - one `physics_step` snapshot of 1,000 spheres at the same point is refused at once,
//!   and an honest gamer's session on the same peer keeps getting every tick;
//! - a task that exhausts a worker's memory costs that worker only: it is answered
//!   `limit_exceeded`, the peer stays registered and keeps serving;
//! - a gamer whose tasks keep exhausting workers is refused after three deaths, while an
//!   honest session on the same peer never loses its worker (sessionless tasks keep away
//!   from it);
//! - a task still running past its deadline is cancelled (its worker killed and
//!   restarted) and the next task runs;
//! - a result too large for the coordinator's frame limit is answered `limit_exceeded`
//!   and the peer stays connected;
//! - losing the coordinator cancels the running task (its worker is killed), and the
//!   reconnected peer runs the next one;
//! - the `peer` binary itself (workers by default) refuses the pile, and its workers die
//!   with it when it is killed.

mod common;

use std::time::Duration;

use common::{Client, Conn, eventually, gamer, listener, success_json, within};
use p2c2r_client::TaskOutcome;
use p2c2r_protocol::physics::{BodyDesc, BodyType, PhysicsStepRequest, Shape};
use p2c2r_protocol::{ErrorCode, Message, TaskAssignment, TaskError, TaskSpec, raw_payload, task_types, to_payload};
use peer::worker::{TEST_ALLOC_TASK, TEST_SLEEP_TASK, TEST_TASKS_ENV};
use peer::{Isolation, PeerConfig, PeerHandle};

const DT: f32 = 1.0 / 60.0;

/// A peer whose tasks run in `workers` worker processes of the `peer` binary, capped at
/// `memory_mb` each, with the test-only task types enabled.
async fn worker_peer(url: &str, id: &str, workers: u32, memory_mb: u64) -> PeerHandle {
    let peer = peer::spawn(worker_config(url, id, workers, memory_mb)).await;
    within("the peer to register", peer.wait_for(|s| s.connected)).await;
    peer
}

fn worker_config(url: &str, id: &str, workers: u32, memory_mb: u64) -> PeerConfig {
    let mut task_types: Vec<String> = task_types::ALL.iter().map(|t| t.to_string()).collect();
    task_types.extend([TEST_ALLOC_TASK.to_owned(), TEST_SLEEP_TASK.to_owned()]);
    PeerConfig {
        coordinator_url: url.to_owned(),
        peer_id: Some(id.into()),
        max_concurrent_tasks: Some(workers),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        task_types,
        isolation: Isolation::Workers {
            exe: env!("CARGO_BIN_EXE_peer").into(),
            memory_limit_bytes: memory_mb * 1024 * 1024,
            env: vec![(TEST_TASKS_ENV.into(), "1".into())],
        },
        ..Default::default()
    }
}

fn tick(t: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick: t, dt: DT, steps: 1, ..Default::default() }
}

/// An honest scene: a ground and a few boxes.
fn honest_snapshot(t: u64) -> PhysicsStepRequest {
    let mut add = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..5u64 {
        add.push(BodyDesc::new(i + 1, Shape::Box { half_extents: [0.5; 3] }, [2.0 * i as f32, 3.0, 0.0]));
    }
    PhysicsStepRequest { tick: t, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

/// Runs one honest tick, re-sending a snapshot when asked to (a lost worker); returns
/// whether a resync was needed.
async fn honest_tick(gamer: &mut gamer::Gamer, session: &str, t: u64) -> bool {
    match gamer.physics(session, &tick(t)).await {
        Ok((r, _)) => {
            assert_eq!(r.tick, t);
            false
        }
        Err(e) => {
            assert!(e.resync, "an honest tick failed without resync: {e:?}");
            let (r, _) = gamer.physics(session, &honest_snapshot(t)).await.expect("the snapshot is accepted");
            assert_eq!(r.tick, t);
            true
        }
    }
}

fn error_of(result: &str) -> TaskError {
    serde_json::from_str(result).unwrap_or_else(|e| panic!("not a task error: {e}: {result}"))
}

/// The task error an honest gamer's task was answered with.
fn failure(outcome: &TaskOutcome) -> TaskError {
    outcome.error().cloned().unwrap_or_else(|| panic!("not a task error: {outcome:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_spheres_at_one_point_are_refused_and_the_honest_gamer_keeps_every_tick() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peer = worker_peer(&url, "peer-pile", 2, 1024).await;
    let mut honest = gamer::connect(&url, "honest").await;
    let mut attacker = Client::gamer(&url, "attacker").await;

    let (first, _) = honest.physics("s", &honest_snapshot(0)).await.unwrap();
    assert_eq!(first.tick, 0);
    let pile: Vec<BodyDesc> =
        (0..1000u64).map(|id| BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [0.0, 0.0, 0.0])).collect();
    let attack = PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add: pile, ..Default::default() };
    let payload = to_payload(&attack).unwrap();
    assert!(payload.json().unwrap().len() > 50_000, "the attack is a real 1,000-body snapshot");

    for t in 1..=60u64 {
        if t % 10 == 1 {
            let r = attacker.run("physics_step", Some("pile"), payload.clone()).await;
            let e = error_of(r.result.json().unwrap());
            assert_eq!(e.code, ErrorCode::LimitExceeded, "{e:?}");
            assert_eq!(e.tick, Some(0));
            assert_eq!(r.attempt, Some(1), "answered by the first attempt");
            assert_eq!(r.peer_id.as_deref(), Some("peer-pile"));
        }
        // Every honest tick succeeds: no resync, no lost worker.
        let (r, _) = honest.physics("s", &tick(t)).await.unwrap_or_else(|e| panic!("tick {t}: {e:?}"));
        assert_eq!(r.tick, t);
    }
    assert_eq!(peer.workers_lost(), 0);
    assert_eq!(peer.status().borrow().registrations, 1, "the peer never lost its connection");
    // The sessions live in the workers; the handle still lists them (keyed by the alias
    // the coordinator gives each gamer, never its id).
    assert!(peer.sessions().is_empty());
    let keys = peer.session_keys();
    assert!(keys.iter().any(|k| k.ends_with("/s")), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains("honest")), "{keys:?}");
    peer.shutdown().await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_exhausting_its_workers_memory_costs_one_worker_not_the_peer() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peer = worker_peer(&url, "peer-oom", 2, 256).await;
    let mut honest = gamer::connect(&url, "honest").await;
    let mut attacker = Client::gamer(&url, "attacker").await;
    honest.physics("s", &honest_snapshot(0)).await.unwrap();

    let mut resyncs = 0;
    let mut t = 1;
    for round in 1..=2u64 {
        let r = attacker.run(TEST_ALLOC_TASK, None, to_payload(&serde_json::json!({})).unwrap()).await;
        let e = error_of(r.result.json().unwrap());
        assert_eq!(e.code, ErrorCode::LimitExceeded, "{e:?}");
        assert!(e.resync);
        assert!(e.message.contains("memory"), "{}", e.message);
        assert_eq!(peer.workers_lost(), round, "exactly the worker running it died");
        // The peer is still registered (never reconnected) and serves the honest gamer.
        assert!(peer.is_connected());
        assert_eq!(peer.status().borrow().registrations, 1);
        for _ in 0..10 {
            resyncs += usize::from(honest_tick(&mut honest, "s", t).await);
            t += 1;
        }
    }
    // The honest session resyncs only when its own worker was the one lost.
    assert!(resyncs <= 2, "{resyncs} resyncs");
    let r = attacker.run("physics", None, to_payload(&serde_json::json!({"num_objects": 10})).unwrap()).await;
    assert!(r.result.json().unwrap().contains("physics_processed"), "{}", r.result.json().unwrap());
    peer.shutdown().await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gamer_killing_workers_is_refused_after_three_and_the_honest_session_never_resyncs() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    // Default containment: 3 worker deaths per gamer within 60 s.
    let peer = std::sync::Arc::new(worker_peer(&url, "peer-contain", 2, 256).await);
    let mut honest = gamer::connect(&url, "honest").await;
    let mut attacker = Client::gamer(&url, "attacker").await;
    honest.physics("s", &honest_snapshot(0)).await.unwrap();

    // The attacker sends killer tasks one after another while the honest gamer ticks.
    let watcher = peer.clone();
    let attack = tokio::spawn(async move {
        let mut answers = Vec::new();
        for _ in 0..8 {
            let r = attacker.run(TEST_ALLOC_TASK, None, to_payload(&serde_json::json!({})).unwrap()).await;
            answers.push((error_of(r.result.json().unwrap()), r.peer_id, watcher.workers_lost()));
        }
        // Refused for every task type, not only the killer one.
        let r = attacker.run("physics", None, to_payload(&serde_json::json!({"num_objects": 10})).unwrap()).await;
        answers.push((error_of(r.result.json().unwrap()), r.peer_id, watcher.workers_lost()));
        answers
    });
    let mut resyncs = 0;
    let mut t = 1;
    while !attack.is_finished() || t <= 20 {
        resyncs += usize::from(honest_tick(&mut honest, "s", t).await);
        t += 1;
    }
    let answers = within("the attacker's answers", attack).await.unwrap();
    for (i, (e, peer_id, lost)) in answers.iter().enumerate() {
        assert_eq!(e.code, ErrorCode::LimitExceeded, "task {i}: {e:?}");
        assert_eq!(peer_id.as_deref(), Some("peer-contain"), "task {i}: answered by the peer itself");
        if i < 3 {
            assert!(e.message.contains("memory"), "task {i}: {}", e.message);
            assert_eq!(*lost, i as u64 + 1, "task {i}: exactly the worker running it died");
        } else {
            assert!(e.message.contains("exhausted 3") && e.message.contains("refused"), "task {i}: {}", e.message);
            assert_eq!(*lost, 3, "task {i}: refused without running: no more workers lost");
        }
    }
    assert_eq!(peer.workers_lost(), 3);
    // The killer tasks never ran in the worker holding the honest session.
    assert_eq!(resyncs, 0, "the honest session resynced {resyncs} times over {t} ticks");
    // Other gamers are still served, sessionless tasks included.
    let mut other = gamer::connect(&url, "other").await;
    let r = other.run("physics", None, to_payload(&serde_json::json!({"num_objects": 10})).unwrap()).await;
    assert!(success_json(&r).contains("physics_processed"));
    assert!(peer.is_connected());
    assert_eq!(peer.status().borrow().registrations, 1);
    let peer = std::sync::Arc::into_inner(peer).expect("the attacker's task ended");
    peer.shutdown().await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_past_its_deadline_is_cancelled_and_the_next_task_runs() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    // One worker: the next task can only run once the sleeping one is cancelled, since
    // the sleep lasts far longer than any wait in this test.
    let peer = worker_peer(&url, "peer-slow", 1, 1024).await;
    let mut gamer = gamer::connect(&url, "gamer").await;

    let sleep = to_payload(&serde_json::json!({"ms": 600_000})).unwrap();
    let r = gamer.run_with_deadline(TEST_SLEEP_TASK, None, sleep, Some(300)).await;
    // Every attempt was cancelled on the peer, so the coordinator gave up on the task.
    let e = failure(&r);
    assert_ne!(r.peer_id.as_deref(), Some("peer-slow"), "the peer never answers a cancelled task: {e:?}");
    // The coordinator answered at once (this peer let the task down, and no other runs
    // it); the peer kills the worker when the attempt's deadline plus the grace passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while peer.workers_lost() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the worker running it was never killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every cancelled attempt is charged to the gamer (its tasks may be refused now);
    // another gamer's task runs.
    let mut other = gamer::connect(&url, "other").await;
    let r = other.run("physics", None, to_payload(&serde_json::json!({"num_objects": 10})).unwrap()).await;
    assert!(success_json(&r).contains("physics_processed"));
    assert_eq!(r.peer_id.as_deref(), Some("peer-slow"));
    assert!(peer.is_connected());
    peer.shutdown().await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_large_for_the_coordinator_is_refused_and_the_peer_stays_connected() {
    let config = coordinator::Config {
        connections: coordinator::Connections { max_frame_bytes: 128 * 1024, ..Default::default() },
        ..Default::default()
    };
    let coord = coordinator::spawn("127.0.0.1:0", config).await.unwrap();
    let url = coord.url();
    let peer = worker_peer(&url, "peer-big", 2, 1024).await;
    let mut gamer = gamer::connect(&url, "gamer").await;

    // 1,000 spheres well apart: a ~70 KB request whose answer (every body's state) is
    // about twice as large, over the coordinator's 128 KiB frame limit.
    let spread: Vec<String> = (0..1000u64)
        .map(|id| {
            let (x, z) = ((id % 32) * 3, (id / 32) * 3);
            format!(r#"{{"id":{id},"shape":{{"kind":"sphere","radius":0.5}},"position":[{x},5,{z}]}}"#)
        })
        .collect();
    let json = format!(r#"{{"tick":7,"snapshot":true,"dt":0.016666668,"add":[{}]}}"#, spread.join(","));
    let payload = p2c2r_protocol::raw_payload(json).unwrap();
    assert!(payload.json().unwrap().len() < 120 * 1024, "the request itself fits: {}", payload.json().unwrap().len());
    let r = gamer.run("physics_step", Some("big"), payload).await;
    let e = failure(&r);
    assert_eq!(e.code, ErrorCode::LimitExceeded, "{e:?}");
    assert!(e.resync);
    assert_eq!(e.tick, Some(7));
    assert_eq!(r.attempt, Some(1));
    assert_eq!(r.peer_id.as_deref(), Some("peer-big"));

    // Still the same registration, and still serving.
    let (ok, raw) = gamer.physics("small", &honest_snapshot(0)).await.unwrap();
    assert_eq!(ok.tick, 0);
    assert_eq!(raw.peer_id.as_deref(), Some("peer-big"));
    assert!(peer.is_connected());
    assert_eq!(peer.status().borrow().registrations, 1, "the coordinator never dropped the peer");
    peer.shutdown().await;
    coord.shutdown().await;
}

fn assignment(id: &str, task_type: &str, data: &str) -> Message {
    Message::TaskAssignment(TaskAssignment {
        task_id: id.into(),
        attempt: 1,
        deadline_ms: None,
        task_data: TaskSpec {
            task_id: format!("gamer-{id}"),
            task_type: task_type.into(),
            session_id: None,
            gamer_id: None,
            task_data: raw_payload(data.to_owned()).unwrap(),
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_coordinator_cancels_the_running_task() {
    let l = listener().await;
    let url = format!("ws://{}", l.local_addr().unwrap());
    let peer = peer::spawn(worker_config(&url, "peer-lost", 1, 1024)).await;
    let mut conn = Conn::accept(&l).await;
    conn.register().await;
    within("registered", peer.wait_for(|s| s.connected)).await;
    // No deadline: only the lost connection can stop it.
    conn.send(&assignment("sleep:1", TEST_SLEEP_TASK, r#"{"ms":600000}"#)).await;
    eventually("the task to run", || peer.running_tasks() == 1).await;
    drop(conn);

    // The peer reconnects; its only worker must have been freed to run the next task.
    let mut conn = Conn::accept(&l).await;
    conn.register().await;
    conn.send(&assignment("quick:1", "physics", r#"{"num_objects":5}"#)).await;
    let r = conn.result().await;
    assert_eq!(r.task_id, "quick:1", "the cancelled task is never answered");
    assert!(r.result.json().unwrap().contains("physics_processed"), "{}", r.result.json().unwrap());
    assert_eq!(peer.workers_lost(), 1);
    peer.shutdown().await;
}

/// The pids whose parent is `parent` (Linux `/proc`).
#[cfg(target_os = "linux")]
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some((_, state, ppid)) = proc_stat(pid)
            && ppid == parent
            && state != 'Z'
        {
            children.push(pid);
        }
    }
    children
}

/// A process's name, state and parent from `/proc/PID/stat`, if it still exists.
#[cfg(target_os = "linux")]
fn proc_stat(pid: u32) -> Option<(String, char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((name.to_owned(), state, ppid))
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_binary_refuses_the_pile_and_its_workers_die_with_it() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let mut binary = tokio::process::Command::new(env!("CARGO_BIN_EXE_peer"))
        .args([
            "--coordinator",
            &url,
            "--peer-id",
            "bin-peer",
            "--max-concurrent-tasks",
            "2",
            "--worker-memory-mb",
            "512",
        ])
        .args(["--log", "warn"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = binary.id().unwrap();
    let mut honest = gamer::connect(&url, "honest").await;
    let mut attacker = Client::gamer(&url, "attacker").await;
    // Queued by the coordinator until the peer has registered.
    let (_, raw) = honest.physics("s", &honest_snapshot(0)).await.unwrap();
    assert_eq!(raw.peer_id.as_deref(), Some("bin-peer"));

    let pile: Vec<BodyDesc> =
        (0..1000u64).map(|id| BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [0.0, 0.0, 0.0])).collect();
    let attack = PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add: pile, ..Default::default() };
    let r = attacker.run("physics_step", Some("pile"), to_payload(&attack).unwrap()).await;
    assert_eq!(error_of(r.result.json().unwrap()).code, ErrorCode::LimitExceeded);
    assert_eq!((r.attempt, r.peer_id.as_deref()), (Some(1), Some("bin-peer")));
    for t in 1..=20 {
        let (r, _) = honest.physics("s", &tick(t)).await.unwrap_or_else(|e| panic!("tick {t}: {e:?}"));
        assert_eq!(r.tick, t);
    }

    // Its workers are its children; killing the peer (no chance to clean up) ends them.
    let workers = children_of(pid);
    assert_eq!(workers.len(), 2, "two worker processes: {workers:?}");
    for &w in &workers {
        assert_eq!(proc_stat(w).map(|(name, _, _)| name), Some("peer".to_owned()));
    }
    binary.start_kill().unwrap();
    binary.wait().await.unwrap();
    eventually("the workers to exit", || {
        workers.iter().all(|&w| proc_stat(w).is_none_or(|(_, state, _)| state == 'Z'))
    })
    .await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packed_payloads_are_refused_and_the_honest_gamer_keeps_every_tick() {
    use p2c2r_protocol::{Payload, packed};
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peer = worker_peer(&url, "peer-packed", 2, 1024).await;
    let mut honest = gamer::connect(&url, "honest").await;
    let mut attacker = Client::connect_binary(&url).await;
    attacker.register(&p2c2r_testkit::client::register_gamer("attacker", None)).await;

    let mut valid = Vec::new();
    packed::encode_request(&honest_snapshot(0), &mut valid);
    let pile: Vec<BodyDesc> =
        (0..1000u64).map(|id| BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [0.0, 0.0, 0.0])).collect();
    let mut packed_pile = Vec::new();
    packed::encode_request(
        &PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add: pile, ..Default::default() },
        &mut packed_pile,
    );
    let mut absurd = vec![packed::REQUEST_FORMAT, packed::VERSION, 0, 1, 0];
    absurd.extend_from_slice(&(1.0f32 / 60.0).to_le_bytes());
    absurd.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]); // 2^56 bodies
    let attacks: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("truncated", valid[..valid.len() / 2].to_vec(), ErrorCode::InvalidPayload),
        ("another version", [&[packed::REQUEST_FORMAT, 9][..], &valid[2..]].concat(), ErrorCode::InvalidPayload),
        ("an absurd count", absurd, ErrorCode::InvalidPayload),
        ("empty", Vec::new(), ErrorCode::InvalidPayload),
        (
            "noise",
            (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
            ErrorCode::InvalidPayload,
        ),
        ("a packed 1,000-sphere pile", packed_pile, ErrorCode::LimitExceeded),
    ];

    let (first, _) = honest.physics("s", &honest_snapshot(0)).await.unwrap();
    assert_eq!(first.tick, 0);
    for (t, (what, bytes, code)) in (1..).zip(attacks) {
        let r = attacker.run("physics_step", Some("attack"), Payload::binary(bytes)).await;
        let e = error_of(r.result.json().unwrap_or_else(|| panic!("{what}: a binary answer to garbage")));
        assert_eq!(e.code, code, "{what}: {e:?}");
        assert!(!e.message.is_empty());
        let (r, _) = honest.physics("s", &tick(t)).await.unwrap_or_else(|e| panic!("{what}: tick {t}: {e:?}"));
        assert_eq!(r.tick, t);
    }
    assert_eq!(peer.workers_lost(), 0);
    assert_eq!(peer.status().borrow().registrations, 1, "the peer never lost its connection");
    peer.shutdown().await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_touching_pairs_and_cached_shapes_get_clear_errors_and_the_honest_gamer_keeps_every_tick() {
    use p2c2r_protocol::physics::active_events;
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peer = worker_peer(&url, "peer-events", 2, 1024).await;
    let mut honest = gamer::connect(&url, "honest").await;
    let mut attacker = gamer::connect(&url, "attacker").await;
    let listening = |id: u64| BodyDesc {
        active_events: active_events::ALL,
        ..BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [id as f32 * 2.0, 1.0, 0.0])
    };
    let snapshot = |add: Vec<BodyDesc>, touching: Vec<[u64; 2]>| PhysicsStepRequest {
        tick: 0,
        snapshot: true,
        dt: DT,
        steps: 1,
        add,
        touching,
        ..Default::default()
    };
    let mesh = |n: u32| {
        let vertices = (0..n).flat_map(|i| [[i as f32, 0.0, 0.0], [i as f32, 0.0, 1.0]]).collect();
        let indices =
            (0..n - 1).flat_map(|i| [[2 * i, 2 * i + 1, 2 * i + 2], [2 * i + 1, 2 * i + 3, 2 * i + 2]]).collect();
        Shape::TriMesh { vertices, indices }
    };
    let Some(Shape::Cached { sha256, elements }) = mesh(300).to_cached() else { unreachable!("a large mesh") };
    let fixed = |shape| BodyDesc::new(9, shape, [0.0; 3]).with_body_type(BodyType::Fixed);
    let mut bad_bits = listening(1);
    bad_bits.active_events = 0xf0;
    let mut bad_threshold = listening(1);
    bad_threshold.contact_force_threshold = -1.0;
    let attacks: Vec<(&str, PhysicsStepRequest, ErrorCode)> = vec![
        (
            "touching outside a snapshot",
            PhysicsStepRequest { touching: vec![[1, 2]], ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        ("an unsorted pair", snapshot(vec![listening(1), listening(2)], vec![[2, 1]]), ErrorCode::InvalidPayload),
        ("a pair of unknown bodies", snapshot(vec![listening(1)], vec![[1, u64::MAX]]), ErrorCode::InvalidPayload),
        ("unknown event bits", snapshot(vec![bad_bits], vec![]), ErrorCode::InvalidPayload),
        ("a negative threshold", snapshot(vec![bad_threshold], vec![]), ErrorCode::InvalidPayload),
        (
            "too many touching pairs",
            snapshot(vec![listening(1)], (0..=200_000u64).map(|i| [i, i + 1]).collect()),
            ErrorCode::LimitExceeded,
        ),
        (
            "a name the peer never saw",
            snapshot(vec![fixed(Shape::Cached { sha256, elements })], vec![]),
            ErrorCode::MissingShape,
        ),
        (
            "a name under a cached part",
            snapshot(
                vec![fixed(Shape::Compound {
                    parts: vec![p2c2r_protocol::physics::CompoundPart {
                        shape: Shape::Cached { sha256, elements },
                        position: [0.0; 3],
                        rotation: [0.0, 0.0, 0.0, 1.0],
                    }],
                })],
                vec![],
            ),
            ErrorCode::InvalidPayload,
        ),
    ];
    let (first, _) = honest.physics("s", &honest_snapshot(0)).await.unwrap();
    assert_eq!(first.tick, 0);
    // The attacker's own session exists (at tick 0): a refused request leaves it there.
    attacker.physics("attack", &snapshot(vec![listening(1), listening(2)], vec![])).await.expect("a valid world");
    for (t, (what, request, code)) in (1..).zip(attacks) {
        let e = attacker.physics("attack", &request).await.expect_err(what);
        assert_eq!(e.code, code, "{what}: {e:?}");
        assert!(!e.message.is_empty(), "{what}");
        let (r, _) = honest.physics("s", &tick(t)).await.unwrap_or_else(|e| panic!("{what}: tick {t}: {e:?}"));
        assert_eq!(r.tick, t);
    }
    // Sent itself, the mesh is kept; named afterwards, it is found; a wrong count is not.
    attacker.physics("level", &snapshot(vec![fixed(mesh(300))], vec![])).await.expect("the mesh itself");
    attacker
        .physics("level", &snapshot(vec![fixed(Shape::Cached { sha256, elements })], vec![]))
        .await
        .expect("by name");
    let wrong = snapshot(vec![fixed(Shape::Cached { sha256, elements: elements + 7 })], vec![]);
    assert_eq!(attacker.physics("level", &wrong).await.expect_err("a wrong count").code, ErrorCode::InvalidPayload);
    assert_eq!(peer.workers_lost(), 0);
    peer.shutdown().await;
    coord.shutdown().await;
}
