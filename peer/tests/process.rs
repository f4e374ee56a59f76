//! The peer process against a scripted coordinator on a loopback port: registration,
//! heartbeats, answers, bad frames, ordering, reconnection, crash and graceful shutdown.
//! Every wait is for an event, under a generous timeout.

use std::time::Duration;

use futures_util::StreamExt;
use p2c2r_protocol::{Message, TaskAssignment, TaskSpec, codec, raw_payload, task_types};
use peer::{Isolation, PeerConfig, PeerHandle};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

mod common;

use common::{Conn, listener, within};

fn assignment(id: &str, attempt: u32, task_type: &str, session: Option<&str>, data: &str) -> Message {
    Message::TaskAssignment(TaskAssignment {
        task_id: id.into(),
        attempt,
        deadline_ms: Some(2000),
        task_data: TaskSpec {
            task_id: format!("gamer-{id}"),
            task_type: task_type.into(),
            session_id: session.map(str::to_owned),
            gamer_id: None,
            task_data: raw_payload(data.to_owned()).unwrap(),
        },
    })
}

async fn start(listener: &TcpListener, tweak: impl FnOnce(&mut PeerConfig)) -> (PeerHandle, Conn) {
    let mut config = PeerConfig {
        coordinator_url: format!("ws://{}", listener.local_addr().unwrap()),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        ..Default::default()
    };
    tweak(&mut config);
    let peer = peer::spawn(config).await;
    let conn = Conn::accept(listener).await;
    (peer, conn)
}

const SNAPSHOT: &str = r#"{"tick":0,"snapshot":true,"dt":0.016666668,"add":[{"id":1,"shape":{"kind":"sphere","radius":0.5},"position":[0,10,0]}]}"#;

#[tokio::test]
async fn registers_with_detected_capabilities_and_heartbeats() {
    let l = listener().await;
    let (peer, mut conn) = start(&l, |c| {
        c.peer_id = Some("p-caps".into());
        c.max_concurrent_tasks = Some(3);
        c.heartbeat_interval = Duration::from_millis(50);
    })
    .await;
    let r = conn.register().await;
    assert_eq!(r.peer_id, "p-caps");
    assert_eq!(peer.peer_id(), "p-caps");
    let caps = r.capabilities;
    assert!(caps.cpu_cores.unwrap() >= 1);
    assert!(caps.ram_gb.unwrap() >= 0.0);
    assert!(caps.gpu.is_some());
    assert_eq!(caps.max_concurrent_tasks, Some(3));
    assert_eq!(caps.task_types.unwrap(), task_types::ALL.map(String::from).to_vec());
    within("connected", peer.wait_for(|s| s.connected)).await;
    for _ in 0..3 {
        let Some(Message::Heartbeat(h)) = conn.next().await else { panic!("expected a heartbeat") };
        assert_eq!(h.peer_id.as_deref(), Some("p-caps"));
    }
    peer.shutdown().await;
}

#[tokio::test]
async fn a_generated_peer_id_is_used_when_none_is_given() {
    let l = listener().await;
    let (peer, mut conn) = start(&l, |_| {}).await;
    let r = conn.register().await;
    assert!(r.peer_id.starts_with("peer-"));
    assert_eq!(r.peer_id, peer.peer_id());
    peer.shutdown().await;
}

#[tokio::test]
async fn answers_with_the_assignment_id_and_attempt() {
    let l = listener().await;
    let (peer, mut conn) = start(&l, |_| {}).await;
    conn.register().await;
    conn.send(&assignment("17:3", 3, "physics_step", Some("s"), SNAPSHOT)).await;
    let r = conn.result().await;
    assert_eq!(r.task_id, "17:3", "the answer carries the coordinator's assignment id");
    assert_eq!(r.attempt, Some(3));
    assert!(
        r.result.json().unwrap().starts_with(r#"{"status":"success","tick":0,"bodies":[{"id":1"#),
        "{}",
        r.result.json().unwrap()
    );
    peer.shutdown().await;
}

/// `physics_step_full` runs alike in process and in worker processes (the binary's
/// default), JSON and packed: the same answer bytes, listing every body (the fixed ground
/// and the sleeping cube too), a packed one a keyframe that a fresh decoder reads, and the
/// next plain tick a delta against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_step_is_answered_alike_in_process_and_in_workers() {
    use p2c2r_protocol::packed::{ResultDecoder, encode_request};
    use p2c2r_protocol::physics::{BodyDesc, BodyType, PhysicsStepRequest, PhysicsStepResult, Shape};
    use p2c2r_protocol::{Payload, to_payload};

    const DT: f32 = 1.0 / 60.0;
    let snapshot = PhysicsStepRequest {
        tick: 0,
        snapshot: true,
        dt: DT,
        steps: 1,
        add: vec![
            BodyDesc::new(0, Shape::Box { half_extents: [10.0, 0.5, 10.0] }, [0.0, -0.5, 0.0])
                .with_body_type(BodyType::Fixed),
            BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 10.0, 0.0]),
            BodyDesc { sleeping: true, ..BodyDesc::new(2, Shape::Box { half_extents: [0.5; 3] }, [3.0, 5.0, 0.0]) },
        ],
        ..Default::default()
    };
    let plain = |tick| PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() };
    let mut script: Vec<(&str, PhysicsStepRequest)> = vec![(task_types::PHYSICS_STEP, snapshot)];
    script.extend((1..5).map(|t| (task_types::PHYSICS_STEP, plain(t))));
    script.push((task_types::PHYSICS_STEP_FULL, plain(5)));
    script.push((task_types::PHYSICS_STEP, plain(6)));
    let workers = Isolation::Workers { exe: env!("CARGO_BIN_EXE_peer").into(), memory_limit_bytes: 0, env: vec![] };

    let mut answers = Vec::new();
    for isolation in [Isolation::InProcess, workers] {
        let in_workers = matches!(isolation, Isolation::Workers { .. });
        let l = listener().await;
        let (peer, mut conn) = start(&l, |c| c.isolation = isolation).await;
        conn.register().await;
        let mut got = Vec::new();
        for packed in [false, true] {
            let session = if packed { "p" } else { "j" };
            for (n, (task_type, request)) in script.iter().enumerate() {
                let task_data = if packed {
                    let mut bytes = Vec::new();
                    encode_request(request, &mut bytes);
                    Payload::binary(bytes)
                } else {
                    to_payload(request).unwrap()
                };
                let id = format!("{session}-{n}");
                conn.send(&Message::TaskAssignment(TaskAssignment {
                    task_id: id.clone(),
                    attempt: 1,
                    deadline_ms: Some(10_000),
                    task_data: TaskSpec {
                        task_id: id.clone(),
                        task_type: (*task_type).into(),
                        session_id: Some(session.into()),
                        gamer_id: None,
                        task_data,
                    },
                }))
                .await;
                let r = conn.result().await;
                assert_eq!(r.task_id, id);
                got.push(r.result);
            }
        }
        assert_eq!(peer.workers_lost(), 0);
        assert_eq!(peer.session_keys(), ["j", "p"]);
        assert_eq!(peer.sessions().is_empty(), in_workers, "the sessions live where the tasks ran");
        peer.shutdown().await;
        answers.push(got);
    }
    assert_eq!(answers[0], answers[1], "the same bytes in process and in workers");

    let answers = &answers[0];
    let (json, packed) = answers.split_at(script.len());
    let full: PhysicsStepResult = serde_json::from_str(json[5].json().unwrap()).unwrap();
    assert_eq!(full.tick, 5);
    assert_eq!(full.bodies.iter().map(|b| b.id).collect::<Vec<_>>(), [0, 1, 2], "every body");
    assert!(full.bodies[2].sleeping);
    let plain_before: PhysicsStepResult = serde_json::from_str(json[4].json().unwrap()).unwrap();
    assert_eq!(plain_before.bodies.iter().map(|b| b.id).collect::<Vec<_>>(), [1], "a plain tick: what moved");
    let mut fresh = ResultDecoder::new();
    let bytes = |p: &Payload| p.binary_bytes().expect("a packed answer").into_owned();
    assert_eq!(fresh.decode(&bytes(&packed[5])).expect("a keyframe"), full, "packed and JSON agree");
    let next: PhysicsStepResult = serde_json::from_str(json[6].json().unwrap()).unwrap();
    assert_eq!(fresh.decode(&bytes(&packed[6])).expect("a delta against the keyframe"), next);
}

#[tokio::test]
async fn bad_frames_and_bad_tasks_never_stop_the_peer() {
    let l = listener().await;
    let (peer, mut conn) = start(&l, |_| {}).await;
    conn.register().await;
    for frame in [
        "not json",
        "[1,2]",
        r#"{"msg_type":"dance"}"#,
        r#"{"msg_type":"task_assignment","task_id":"1:1"}"#,
        r#"{"msg_type":"task_assignment","task_id":"1:1","task_data":{"task_id":"t","task_type":"physics_step","task_data":{"tick":1,"dt":NaN}}}"#,
        r#"{"msg_type":"error","code":"unknown_task","message":"late result dropped","refers_to":"9:1"}"#,
        r#"{"msg_type":"register_gamer","gamer_id":"confused"}"#,
    ] {
        conn.send_raw(WsMessage::text(frame)).await;
    }
    conn.send_raw(WsMessage::binary(vec![0u8, 1, 2])).await;
    conn.send_raw(WsMessage::Ping(vec![1, 2, 3].into())).await;
    let tasks = [
        ("unknown_task_type", "render", None, "{}"),
        ("invalid_payload", "physics_step", Some("s"), r#"{"tick":0,"snapshot":true,"dt":-1}"#),
        ("invalid_payload", "physics_step", None, SNAPSHOT),
        ("limit_exceeded", "physics", None, r#"{"num_objects":1000000}"#),
        ("unknown_session", "physics_step", Some("nope"), r#"{"tick":5,"dt":0.016}"#),
        ("invalid_payload", "ai_navigate", Some("s"), r#"{"tick":1,"grid":{"cell_size":0,"rows":["."]}}"#),
    ];
    for (i, (code, task_type, session, data)) in tasks.iter().enumerate() {
        conn.send(&assignment(&format!("{i}:1"), 1, task_type, *session, data)).await;
        let r = conn.result().await;
        assert_eq!(r.task_id, format!("{i}:1"));
        assert!(
            r.result.json().unwrap().contains(&format!(r#""code":"{code}""#)),
            "{code}: {}",
            r.result.json().unwrap()
        );
        assert!(r.result.json().unwrap().contains(r#""status":"error""#));
    }
    // Still working.
    conn.send(&assignment("ok:1", 1, "physics", None, r#"{"num_objects":5}"#)).await;
    assert!(conn.result().await.result.json().unwrap().contains("physics_processed"));
    assert!(peer.is_connected());
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_of_a_session_are_answered_in_order_under_a_pool() {
    let l = listener().await;
    let (peer, mut conn) = start(&l, |c| c.max_concurrent_tasks = Some(4)).await;
    conn.register().await;
    let sessions = ["a", "b"];
    for s in sessions {
        conn.send(&assignment(&format!("{s}-0"), 1, "physics_step", Some(s), SNAPSHOT)).await;
    }
    for t in 1..=60 {
        for s in sessions {
            conn.send(&assignment(
                &format!("{s}-{t}"),
                1,
                "physics_step",
                Some(s),
                &format!(r#"{{"tick":{t},"dt":0.016666668}}"#),
            ))
            .await;
        }
    }
    let mut next = std::collections::HashMap::from([("a", 0u64), ("b", 0u64)]);
    for _ in 0..122 {
        let r = conn.result().await;
        let (s, t) = r.task_id.split_once('-').unwrap();
        let expected = next.get_mut(s).unwrap();
        assert_eq!(t.parse::<u64>().unwrap(), *expected, "session {s}");
        assert!(r.result.json().unwrap().contains(r#""status":"success""#), "{}", r.result.json().unwrap());
        *expected += 1;
    }
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_flowing_during_a_long_task() {
    let l = listener().await;
    let interval = Duration::from_millis(20);
    let (peer, mut conn) = start(&l, |c| c.heartbeat_interval = interval).await;
    conn.register().await;
    let started = std::time::Instant::now();
    conn.send(&assignment("long:1", 1, "physics", None, r#"{"num_objects":50000}"#)).await;
    let mut heartbeats = 0;
    let took = loop {
        match conn.next().await.unwrap() {
            Message::Heartbeat(_) => heartbeats += 1,
            Message::TaskResult(r) => {
                assert_eq!(r.task_id, "long:1");
                break started.elapsed();
            }
            other => panic!("unexpected {}", other.msg_type()),
        }
    };
    if took > interval * 10 {
        assert!(heartbeats >= 1, "no heartbeat during a task of {took:?}");
    }
    peer.shutdown().await;
}

#[tokio::test]
async fn reconnects_and_registers_again_after_the_coordinator_restarts() {
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    let (peer, mut conn) = start(&l, |c| c.peer_id = Some("p-re".into())).await;
    conn.register().await;
    within("first registration", peer.wait_for(|s| s.connected && s.registrations == 1)).await;
    // The coordinator goes away: listener and connection dropped.
    drop(conn);
    drop(l);
    within("the peer noticing", peer.wait_for(|s| !s.connected)).await;
    // It comes back on the same address.
    let l = TcpListener::bind(addr).await.unwrap();
    let mut conn = Conn::accept(&l).await;
    let r = conn.register().await;
    assert_eq!(r.peer_id, "p-re");
    let status = within("second registration", peer.wait_for(|s| s.connected && s.registrations == 2)).await;
    assert_eq!(status.registrations, 2);
    // And serves again; the sessions it held survive the reconnection.
    conn.send(&assignment("1:1", 1, "physics_step", Some("s"), SNAPSHOT)).await;
    assert!(conn.result().await.result.json().unwrap().contains("success"));
    peer.shutdown().await;
}

#[tokio::test]
async fn keeps_retrying_while_the_coordinator_is_down() {
    // Reserve a port, then close it: nothing listens there yet.
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    drop(l);
    let config = PeerConfig {
        coordinator_url: format!("ws://{addr}"),
        reconnect_backoff_min: Duration::from_millis(10),
        reconnect_backoff_max: Duration::from_millis(50),
        ..Default::default()
    };
    let peer = peer::spawn(config).await;
    let l = TcpListener::bind(addr).await.unwrap();
    let mut conn = Conn::accept(&l).await;
    conn.register().await;
    within("registration", peer.wait_for(|s| s.connected)).await;
    peer.shutdown().await;
}

#[tokio::test]
async fn kill_drops_the_connection_without_a_close_handshake() {
    let l = listener().await;
    let (peer, mut conn) = start(&l, |_| {}).await;
    conn.register().await;
    within("connected", peer.wait_for(|s| s.connected)).await;
    peer.kill();
    assert!(!peer.is_connected());
    let end = loop {
        match within("the connection to drop", conn.0.next()).await {
            Some(Ok(WsMessage::Text(_))) => {}
            other => break other,
        }
    };
    match end {
        None
        | Some(Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake))) => {}
        Some(Err(tungstenite::Error::Io(_))) => {}
        other => panic!("expected an abrupt end, got {other:?}"),
    }
    // No reconnection follows: the peer is dead.
    let again = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
    assert!(again.is_err(), "a killed peer must not reconnect");
}

#[tokio::test]
async fn shutdown_finishes_running_tasks_and_closes_properly() {
    let l = listener().await;
    let (peer, mut conn) = start(&l, |_| {}).await;
    conn.register().await;
    conn.send(&assignment("last:1", 1, "physics", None, r#"{"num_objects":2000}"#)).await;
    // The peer reads frames in order: once it answers this ping, it has the task.
    conn.send_raw(WsMessage::Ping(vec![7].into())).await;
    let mut got_result = false;
    loop {
        match within("the pong", conn.0.next()).await {
            Some(Ok(WsMessage::Pong(_))) => break,
            Some(Ok(WsMessage::Text(t))) => {
                if let Ok(Message::TaskResult(r)) = codec::decode(t.as_str()) {
                    assert_eq!(r.task_id, "last:1");
                    got_result = true;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let stop = tokio::spawn(peer.shutdown());
    loop {
        match within("frames", conn.0.next()).await {
            Some(Ok(WsMessage::Text(t))) => {
                if let Ok(Message::TaskResult(r)) = codec::decode(t.as_str()) {
                    assert_eq!(r.task_id, "last:1");
                    got_result = true;
                }
            }
            Some(Ok(WsMessage::Close(_))) => break,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    assert!(got_result, "the running task was answered before closing");
    within("shutdown", stop).await.unwrap();
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    let bad_url = PeerConfig { coordinator_url: "http://example.invalid".into(), ..Default::default() };
    assert!(matches!(peer::try_spawn(bad_url).await, Err(peer::PeerError::InvalidUrl { .. })));
    let bad_id = PeerConfig { peer_id: Some(String::new()), ..Default::default() };
    assert!(matches!(peer::try_spawn(bad_id).await, Err(peer::PeerError::InvalidPeerId(_))));
    let run =
        peer::run(PeerConfig { coordinator_url: "nonsense".into(), ..Default::default() }, std::future::pending());
    assert!(run.await.is_err());
}
