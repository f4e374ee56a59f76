//! End-to-end flows through an in-process coordinator on a loopback port.
//!
//! Peers are the testkit's raw protocol client (the tests script what they answer, and
//! when). A gamer that only submits well-formed tasks and reads their results is the real
//! gamer client (`p2c2r_testkit::gamer`); one whose test looks at exact frames, error
//! codes, stats replies or its registration stays raw.

mod common;

use std::time::Duration;

use common::{Client, WAIT, eventually, gamer, json, request, success_json};
use coordinator::{Config, spawn};
use p2c2r_protocol::{ErrorCode, Message, TaskStatus, task::result_status};

async fn start(config: Config) -> coordinator::CoordinatorHandle {
    spawn("127.0.0.1:0", config).await.expect("bind loopback")
}

/// The seed's fields byte for byte, then the resume secret (64 hex digits), which a seed
/// client ignores.
fn assert_ack(text: &str, seed_fields: &str) {
    let secret = text
        .strip_prefix(seed_fields)
        .and_then(|rest| rest.strip_prefix(r#","resume_secret":""#))
        .and_then(|rest| rest.strip_suffix(r#""}"#))
        .unwrap_or_else(|| panic!("unexpected ack {text}"));
    assert!(secret.len() == 64 && secret.chars().all(|c| c.is_ascii_hexdigit()), "{secret}");
}

#[tokio::test]
async fn seed_message_flow_byte_for_byte() {
    let coord = start(Config::default()).await;
    let url = coord.url();

    // The exact frames the seed's test_peer.py and test_gamer.py send (Python's json.dumps).
    let mut peer = Client::connect(&url).await;
    peer.send_text(
        r#"{"msg_type": "register_peer", "peer_id": "test_peer_1", "capabilities": {"cpu_cores": 4, "ram_gb": 8}}"#,
    )
    .await;
    assert_ack(
        &peer.recv_text().await,
        r#"{"msg_type":"registration_ack","peer_id":"test_peer_1","status":"registered","heartbeat_interval_ms":1000,"max_frame_bytes":16777216"#,
    );
    let mut gamer = Client::connect(&url).await;
    gamer.send_text(r#"{"msg_type": "register_gamer", "gamer_id": "test_gamer_1"}"#).await;
    gamer.send_text(r#"{"msg_type": "task_request", "task_id": "5d1c7c1e-aaaa", "task_type": "physics", "data": {"objects": []}}"#)
        .await;
    assert_ack(
        &gamer.recv_text().await,
        r#"{"msg_type":"registration_ack","gamer_id":"test_gamer_1","status":"registered","heartbeat_interval_ms":1000,"max_frame_bytes":16777216"#,
    );

    let assignment = peer.recv_text().await;
    let a = json(&assignment);
    assert_eq!(a["msg_type"], "task_assignment");
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["task_data"]["task_type"], "physics", "peer_node.py reads task_type here");
    assert_eq!(a["task_data"]["task_id"], "5d1c7c1e-aaaa");
    assert!(assignment.contains(r#""task_data":{"objects": []}"#), "payload bytes forwarded as sent: {assignment}");
    let assignment_id = a["task_id"].as_str().unwrap();

    peer.send_text(&format!(
        r#"{{"msg_type": "task_result", "task_id": "{assignment_id}", "result": {{"status": "success", "data": "processed"}}}}"#
    ))
    .await;
    assert_eq!(
        gamer.recv_text().await,
        r#"{"msg_type":"task_result","task_id":"5d1c7c1e-aaaa","result":{"status": "success", "data": "processed"},"attempt":1,"peer_id":"test_peer_1"}"#
    );
    // Seed peers heartbeat; nothing comes back for it.
    peer.send_text(r#"{"msg_type": "heartbeat", "peer_id": "test_peer_1"}"#).await;
    let stats = gamer.stats().await;
    assert_eq!((stats.peers, stats.gamers, stats.tasks_completed), (1, 1, 1));
    coord.shutdown().await;
}

#[tokio::test]
async fn result_goes_only_to_the_submitting_gamer() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 4).await;
    let mut alice = gamer::connect(&url, "alice").await;
    let mut bob = gamer::connect(&url, "bob").await;
    // Same task id from two gamers: two different tasks.
    alice.send(request("t1", "physics", r#"{"who":"alice"}"#, None, None));
    bob.send(request("t1", "physics", r#"{"who":"bob"}"#, None, None));
    for _ in 0..2 {
        let a = peer.recv_assignment().await;
        let who = json(a.task_data.task_data.json().unwrap())["who"].as_str().unwrap().to_owned();
        peer.answer(&a, &format!(r#"{{"status":"success","for":"{who}"}}"#)).await;
    }
    let r = alice.next_outcome().await;
    assert_eq!(json(success_json(&r))["for"], "alice");
    let r = bob.next_outcome().await;
    assert_eq!(json(success_json(&r))["for"], "bob");
    coord.shutdown().await;
}

#[tokio::test]
async fn peer_crash_mid_task_requeues_it_at_once() {
    // A long deadline proves the re-dispatch came from the closed connection, not a timer.
    let coord = start(Config {
        scheduling: coordinator::Scheduling { default_task_deadline: Duration::from_secs(60), ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let mut doomed = Client::peer(&url, "doomed", 1).await;
    let mut gamer = gamer::connect(&url, "g").await;
    gamer.send(request("t", "physics", r#"{"keep": ["these", "bytes"]}"#, None, None));
    let first = doomed.recv_assignment().await;
    assert_eq!(first.attempt, 1);
    let mut survivor = Client::peer(&url, "survivor", 1).await;
    drop(doomed); // the socket closes without a goodbye
    let second = survivor.recv_assignment().await;
    assert_eq!(second.attempt, 2);
    assert_eq!(second.task_data.task_id, "t");
    assert_eq!(
        second.task_data.task_data.json().unwrap(),
        r#"{"keep": ["these", "bytes"]}"#,
        "the payload survives re-dispatch"
    );
    survivor.answer(&second, r#"{"status":"success"}"#).await;
    let result = gamer.next_outcome().await;
    assert_eq!((result.task_id.as_str(), result.peer_id.as_deref()), ("t", Some("survivor")));
    coord.shutdown().await;
}

#[tokio::test]
async fn straggler_is_superseded_and_its_late_answer_dropped() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut slow = Client::peer(&url, "slow", 1).await;
    let mut gamer = Client::gamer(&url, "g").await;
    gamer.submit_with_deadline("t", "physics", "{}", None, Some(150)).await;
    let first = slow.recv_assignment().await;
    let mut fast = Client::peer(&url, "fast", 1).await;
    // After the deadline the task goes to the other peer.
    let second = fast.recv_assignment().await;
    assert_eq!(second.attempt, 2);
    // The straggler answers late: refused, and the gamer hears nothing of it.
    slow.answer(&first, r#"{"status":"success","from":"slow"}"#).await;
    let refused = slow.recv_error().await;
    assert_eq!(refused.code, ErrorCode::UnknownTask);
    assert_eq!(refused.refers_to.as_deref(), Some(first.task_id.as_str()));
    fast.answer(&second, r#"{"status":"success","from":"fast"}"#).await;
    // A duplicate answer from the right peer is refused too.
    fast.answer(&second, r#"{"status":"success","from":"fast-again"}"#).await;
    assert_eq!(fast.recv_error().await.code, ErrorCode::UnknownTask);
    let result = gamer.recv_result().await;
    assert_eq!(json(result.result.json().unwrap())["from"], "fast");
    // Nothing else is on its way: the next frame is the answer to a later marker task.
    gamer.submit("marker", "physics", "{}", None).await;
    let marker = fast.recv_assignment().await;
    fast.answer(&marker, r#"{"status":"success"}"#).await;
    assert_eq!(gamer.recv_result().await.task_id, "marker");
    coord.shutdown().await;
}

#[tokio::test]
async fn task_fails_with_an_error_after_max_attempts() {
    let coord = start(Config {
        scheduling: coordinator::Scheduling { max_attempts: 2, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    // Two peers that never answer: one attempt each (a task never goes back to a peer
    // that missed its deadline), then the gamer is told.
    let mut mute = Client::peer(&url, "mute", 1).await;
    let mut deaf = Client::peer(&url, "deaf", 1).await;
    let mut gamer = Client::gamer(&url, "g").await;
    gamer.submit_with_deadline("t", "physics", "{}", None, Some(50)).await;
    let mut attempts = Vec::new();
    for _ in 0..2 {
        tokio::select! {
            a = mute.recv_assignment() => attempts.push(("mute", a.attempt)),
            a = deaf.recv_assignment() => attempts.push(("deaf", a.attempt)),
        }
    }
    attempts.sort_by_key(|(_, attempt)| *attempt);
    assert_eq!(attempts.iter().map(|(_, a)| *a).collect::<Vec<_>>(), [1, 2]);
    assert_ne!(attempts[0].0, attempts[1].0, "the retry went to the other peer");
    let result = gamer.recv_result().await;
    assert_eq!(result.task_id, "t");
    assert_eq!(result.peer_id, None);
    assert_eq!(result_status(result.result.json().unwrap()), Some(TaskStatus::Error));
    assert_eq!(json(result.result.json().unwrap())["code"], "max_attempts_exceeded");
    let stats = gamer.stats().await;
    assert_eq!(stats.tasks_failed, 1);
    coord.shutdown().await;
}

#[tokio::test]
async fn a_task_whose_only_peer_missed_it_is_answered_at_once() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut mute = Client::peer(&url, "mute", 1).await;
    let mut gamer = gamer::connect(&url, "g").await;
    gamer.send(request("t", "physics", "{}", None, Some(50)));
    assert_eq!(mute.recv_assignment().await.attempt, 1);
    let result = gamer.next_outcome().await;
    assert_eq!(result.error().map(|e| e.code), Some(ErrorCode::MaxAttemptsExceeded), "{result:?}");
    assert_eq!(result.attempt, Some(1), "not sent back to the peer that let it down");
    coord.shutdown().await;
}

// Paused clock: the heartbeat timeout (tokio timers in the connection) passes at once;
// the task deadline (a std clock in the scheduler) is never reached.
#[tokio::test(start_paused = true)]
async fn silent_peer_is_evicted_and_its_task_moves() {
    let config = Config {
        connections: coordinator::Connections {
            heartbeat_interval: Duration::from_millis(50),
            heartbeat_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        scheduling: coordinator::Scheduling { default_task_deadline: Duration::from_secs(60), ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut silent = Client::peer(&url, "silent", 1).await;
    let mut gamer = gamer::connect(&url, "g").await;
    gamer.send(request("t", "physics", "{}", None, None));
    // The gamer client keeps reading (and so answering pings) and heartbeating.
    let result = tokio::spawn(async move { gamer.next_outcome().await });
    let _ = silent.recv_assignment().await;
    // From here on `silent` is never polled: it neither reads nor answers pings.
    let mut healthy = Client::peer(&url, "healthy", 1).await;
    let moved = tokio::spawn(async move {
        let moved = healthy.recv_assignment().await;
        healthy.answer(&moved, r#"{"status":"success"}"#).await;
        (healthy, moved)
    });
    let (_healthy, moved) = moved.await.unwrap();
    assert_eq!(moved.attempt, 2);
    assert_eq!(coord.stats().peers_evicted, 1);
    assert_eq!(result.await.unwrap().peer_id.as_deref(), Some("healthy"));
    drop(silent);
    coord.shutdown().await;
}

// Paused clock: the pings and the heartbeat timeout are the connection's tokio timers.
#[tokio::test(start_paused = true)]
async fn responsive_idle_peer_is_not_evicted() {
    let config = Config {
        connections: coordinator::Connections {
            heartbeat_interval: Duration::from_millis(20),
            heartbeat_timeout: Duration::from_millis(100),
            ..Default::default()
        },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut idle = Client::peer(&url, "idle", 1).await;
    // Reading lets the client library answer pings; wait through 20 of them (four times
    // the eviction timeout) without sending anything else.
    let mut pings = 0;
    while pings < 20 {
        let frame = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut idle.ws)).await.unwrap();
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) = frame {
            pings += 1;
        } else {
            panic!("unexpected {frame:?}");
        }
    }
    let stats = coord.stats();
    assert_eq!((stats.peers, stats.peers_evicted), (1, 0));
    coord.shutdown().await;
}

#[tokio::test]
async fn session_tasks_stay_on_one_peer_in_order_then_move_when_it_dies() {
    // Both peers may hold all six ticks at once from the start (no capacity to learn).
    let coord = start(Config {
        scheduling: coordinator::Scheduling { initial_peer_capacity: 8, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let mut a = Client::peer(&url, "a", 8).await;
    let mut b = Client::peer(&url, "b", 8).await;
    let mut gamer = gamer::connect(&url, "g").await;
    for tick in 0..6 {
        gamer.send(request(
            &format!("tick{tick}"),
            "physics_step",
            &format!(r#"{{"tick":{tick}}}"#),
            Some("world"),
            None,
        ));
    }
    // Whichever peer got tick0 gets all six, in order.
    let (holder, other) = tokio::select! {
        first = a.recv_assignment() => (("a", first), "b"),
        first = b.recv_assignment() => (("b", first), "a"),
    };
    let (holder_name, first) = holder;
    let (mut holder, mut other_peer) = if holder_name == "a" { (a, b) } else { (b, a) };
    assert_eq!(first.task_data.task_id, "tick0");
    let mut got = vec![first];
    for _ in 1..6 {
        got.push(holder.recv_assignment().await);
    }
    let ids: Vec<&str> = got.iter().map(|a| a.task_data.task_id.as_str()).collect();
    assert_eq!(ids, ["tick0", "tick1", "tick2", "tick3", "tick4", "tick5"]);
    for a in &got[..3] {
        holder.answer(a, r#"{"status":"success"}"#).await;
    }
    for _ in 0..3 {
        gamer.next_outcome().await;
    }
    // The holder dies with ticks 3..5 in flight: they move to the other peer, in order.
    drop(holder);
    let moved: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(other_peer.recv_assignment().await.task_data.task_id);
        }
        v
    };
    assert_eq!(moved, ["tick3", "tick4", "tick5"], "{other} took over");
    coord.shutdown().await;
}

#[tokio::test]
async fn leaving_gamer_has_its_queue_dropped_and_late_results_discarded() {
    // No resume grace: the queue goes as the connection closes.
    let coord = start(Config {
        identity: coordinator::Identity { resume_grace: Duration::ZERO, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 1).await;
    let gamer = gamer::connect(&url, "g").await;
    gamer.send(request("running", "physics", "{}", None, None));
    gamer.send(request("waiting", "physics", "{}", None, None));
    let running = peer.recv_assignment().await;
    eventually("both tasks accepted", || coord.stats().tasks_queued == 2).await;
    drop(gamer);
    eventually("gamer gone", || coord.stats().gamers == 0).await;
    assert_eq!(coord.stats().tasks_dropped, 2);
    // The peer's answer is accepted silently (no error), and the slot frees up.
    peer.answer(&running, r#"{"status":"success"}"#).await;
    let other = gamer::connect(&url, "other").await;
    other.send(request("next", "physics", "{}", None, None));
    let next = peer.recv_assignment().await;
    assert_eq!(next.task_data.task_id, "next", "the dropped task was never dispatched");
    coord.shutdown().await;
}

#[tokio::test]
async fn reconnecting_gamer_replaces_its_old_connection_and_keeps_its_tasks() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 1).await;
    let mut old = Client::gamer(&url, "g").await;
    old.submit("t", "physics", "{}", None).await;
    let a = peer.recv_assignment().await;
    // Proving it is the same client (the secret of its registration) takes the id back.
    let mut new = Client::gamer_resuming(&url, "g", old.secret.clone()).await;
    assert_eq!(old.recv_error().await.code, ErrorCode::Replaced);
    old.expect_closed().await;
    peer.answer(&a, r#"{"status":"success"}"#).await;
    assert_eq!(new.recv_result().await.task_id, "t");
    coord.shutdown().await;
}

#[tokio::test]
async fn registering_again_on_the_same_connection_is_only_acknowledged() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 1).await;
    let mut gamer = gamer::connect(&url, "g").await;
    gamer.send(request("t", "physics", "{}", None, None));
    let a = peer.recv_assignment().await;
    peer.send_text(r#"{"msg_type":"register_peer","peer_id":"p"}"#).await;
    assert!(matches!(peer.recv().await, Message::RegistrationAck(_)));
    // The task in flight was not re-dispatched: the original attempt still answers.
    peer.answer(&a, r#"{"status":"success"}"#).await;
    assert_eq!(gamer.next_outcome().await.attempt, Some(1));
    assert_eq!(coord.stats().tasks_redispatched, 0);
    coord.shutdown().await;
}

#[tokio::test]
async fn duplicate_peer_id_replaces_the_stale_connection() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut stale = Client::peer(&url, "p", 1).await;
    let mut gamer = gamer::connect(&url, "g").await;
    gamer.send(request("t", "physics", "{}", None, None));
    let _ = stale.recv_assignment().await;
    let caps = p2c2r_protocol::Capabilities { max_concurrent_tasks: Some(1), ..Default::default() };
    let mut fresh = Client::peer_resuming(&url, "p", caps, stale.secret.clone()).await;
    assert_eq!(stale.recv_error().await.code, ErrorCode::Replaced);
    stale.expect_closed().await;
    // The stale connection's work is re-dispatched to the fresh one.
    let again = fresh.recv_assignment().await;
    assert_eq!(again.attempt, 2);
    fresh.answer(&again, r#"{"status":"success"}"#).await;
    gamer.next_outcome().await;
    assert_eq!(coord.stats().peers, 1);
    coord.shutdown().await;
}

#[tokio::test]
async fn peers_only_get_task_types_they_declared() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let caps = p2c2r_protocol::Capabilities {
        task_types: Some(vec!["ai_navigate".into()]),
        max_concurrent_tasks: Some(4),
        ..Default::default()
    };
    let mut ai_peer = Client::peer_with(&url, "ai", caps).await;
    let gamer = gamer::connect(&url, "g").await;
    gamer.send(request("phys", "physics_step", "{}", Some("s"), None));
    gamer.send(request("nav", "ai_navigate", "{}", None, None));
    assert_eq!(ai_peer.recv_assignment().await.task_data.task_id, "nav");
    let mut any_peer = Client::peer(&url, "any", 1).await;
    assert_eq!(any_peer.recv_assignment().await.task_data.task_id, "phys");
    coord.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_clients_and_closes_them() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut gamer = Client::gamer(&url, "g").await;
    let shutdown = tokio::spawn(coord.shutdown());
    match gamer.recv().await {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::ShuttingDown),
        other => panic!("{other:?}"),
    }
    assert_eq!(gamer.expect_closed().await, Some(1001));
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown finished").unwrap();
}
