//! Attacks on the coordinator's scheduling, as an attacker would run them: poison tasks
//! that kill every peer they reach, a peer that declares thousands of slots, floods of
//! unrunnable and expiring tasks, and payload bytes. Each asserts behaviour (answered
//! with an error within N attempts, no eviction of the honest client, memory held below
//! its budget); `cargo bench -p coordinator --bench attacks` prints the honest client's
//! latency under each attack beside its baseline.

mod common;

use std::time::Duration;

use common::{Client, eventually, gamer, request, success_json};
use coordinator::{Config, spawn};
use p2c2r_protocol::{Capabilities, ErrorCode, TaskError, TaskStatus, task::result_status};

async fn start(config: Config) -> coordinator::CoordinatorHandle {
    spawn("127.0.0.1:0", config).await.expect("bind loopback")
}

fn error_of(result: &p2c2r_protocol::TaskResult) -> TaskError {
    serde_json::from_str(result.result.json().unwrap()).expect("an error result")
}

/// A task whose execution kills its peer is retried at most `max_attempts` times, then
/// answered `poison_task`; the peers that come back never see it again.
#[tokio::test]
async fn a_task_that_kills_every_peer_is_quarantined_as_poison() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut gamer = Client::gamer(&url, "attacker").await;
    gamer.submit("killer", "physics_step", r#"{"tick":0,"snapshot":true,"dt":0.016}"#, Some("s")).await;
    for crash in 1..=3u32 {
        // Each peer "dies" on receiving it: it drops the connection without answering.
        let mut victim = Client::peer(&url, &format!("victim-{crash}"), 4).await;
        let assignment = victim.recv_assignment().await;
        assert_eq!(assignment.attempt, crash, "every dispatch is an attempt, re-queues after a crash included");
        drop(victim);
    }
    let answer = gamer.recv_result().await;
    assert_eq!(answer.task_id, "killer");
    assert_eq!(result_status(answer.result.json().unwrap()), Some(TaskStatus::Error));
    let error = error_of(&answer);
    assert_eq!(error.code, ErrorCode::PoisonTask, "{error:?}");
    // A fresh peer gets nothing: the task is quarantined.
    let mut survivor = Client::peer(&url, "survivor", 4).await;
    gamer.submit("honest", "physics_step", r#"{"tick":0,"snapshot":true,"dt":0.016}"#, Some("other")).await;
    let next = survivor.recv_assignment().await;
    assert_eq!(next.task_data.task_id, "honest", "the poison task came back");
    let stats = coord.stats();
    assert_eq!((stats.tasks_poisoned, stats.tasks_assigned), (1, 4));
    coord.shutdown().await;
}

/// A peer that declares 4,096 slots joining a backlog of 3,000 tasks is given what it has
/// shown it can take, not what it declared: it is never flooded past its outbound queue,
/// never dropped as a slow reader, and the backlog drains with no re-dispatch.
#[tokio::test]
async fn a_peer_declaring_thousands_of_slots_is_not_flooded_into_a_livelock() {
    let config = Config {
        connections: coordinator::Connections { send_queue_frames: 64, ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut gamer = Client::gamer(&url, "backlog").await;
    for i in 0..3_000 {
        gamer.submit(&format!("t{i}"), "physics", "{}", None).await;
    }
    eventually("the backlog is queued", || coord.stats().queued_now == 3_000).await;
    let caps = Capabilities { max_concurrent_tasks: Some(4_096), ..Default::default() };
    let mut boaster = Client::peer_with(&url, "boaster", caps).await;
    let answering = tokio::spawn(async move {
        for _ in 0..3_000 {
            let a = boaster.recv_assignment().await;
            boaster.answer(&a, r#"{"status":"success"}"#).await;
        }
        boaster
    });
    for _ in 0..3_000 {
        let r = gamer.recv_result().await;
        assert_eq!(result_status(r.result.json().unwrap()), Some(TaskStatus::Success), "{}", r.result.json().unwrap());
    }
    let _boaster = answering.await.unwrap();
    let stats = coord.stats();
    assert_eq!((stats.tasks_completed, stats.tasks_redispatched, stats.peers), (3_000, 0, 1));
    coord.shutdown().await;
}

/// Hundreds of gamers with tasks no peer runs do not slow an honest gamer down (they are
/// parked, not rescanned on every dispatch) and still get their queue_timeout answers.
#[tokio::test]
async fn unrunnable_floods_leave_an_honest_gamer_served() {
    let config = Config {
        scheduling: coordinator::Scheduling { max_queue_wait: Some(Duration::from_secs(2)), ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut peer = Client::peer_with(
        &url,
        "physics-peer",
        Capabilities { max_concurrent_tasks: Some(4), task_types: Some(vec!["physics".into()]), ..Default::default() },
    )
    .await;
    let mut attackers = Vec::new();
    for g in 0..50 {
        let mut a = Client::gamer(&url, &format!("attacker-{g}")).await;
        for t in 0..64 {
            a.submit(&format!("t{t}"), "nobody-runs-this", "{}", Some(&format!("s{}", t % 8))).await;
        }
        attackers.push(a);
    }
    // The honest gamer is the real gamer client; the attackers are raw.
    let mut honest = gamer::connect(&url, "honest").await;
    for i in 0..200 {
        honest.send(request(&format!("h{i}"), "physics", "{}", None, None));
        let a = peer.recv_assignment().await;
        peer.answer(&a, r#"{"status":"success"}"#).await;
        let r = honest.next_outcome().await;
        assert_eq!(r.task_id, format!("h{i}"));
    }
    // Every attacker task is answered with queue_timeout, none is lost.
    for a in &mut attackers {
        for _ in 0..64 {
            let r = a.recv_result().await;
            assert_eq!(error_of(&r).code, ErrorCode::QueueTimeout);
        }
    }
    coord.shutdown().await;
}

/// A gamer whose 10,000 queued tasks time out at once gets all 10,000 answers: the
/// coordinator's own answers are exempt from the slow-reader rule.
#[tokio::test]
async fn ten_thousand_timeouts_at_once_do_not_disconnect_their_gamer() {
    let config = Config {
        scheduling: coordinator::Scheduling { max_queue_wait: Some(Duration::from_secs(1)), ..Default::default() },
        connections: coordinator::Connections { send_queue_frames: 256, ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut gamer = Client::gamer(&url, "patient").await;
    for i in 0..10_000 {
        gamer.submit(&format!("t{i}"), "nobody-runs-this", "{}", None).await;
    }
    let mut answered = 0;
    while answered < 10_000 {
        let r = gamer.recv_result().await;
        assert_eq!(error_of(&r).code, ErrorCode::QueueTimeout);
        answered += 1;
    }
    let stats = gamer.stats().await;
    assert_eq!((stats.gamers, stats.tasks_failed, stats.queued_now), (1, 10_000, 0));
    coord.shutdown().await;
}

/// Payload bytes are bounded per gamer and in total; refused tasks get `queue_full`
/// with the reason, and answered tasks give their bytes back.
#[tokio::test]
async fn queued_payload_bytes_are_bounded() {
    let config = Config {
        scheduling: coordinator::Scheduling {
            max_pending_bytes_per_gamer: 4 * 1024 * 1024,
            max_pending_bytes: 6 * 1024 * 1024,
            ..Default::default()
        },
        identity: coordinator::Identity {
            // A short resume grace: a departed gamer's bytes go once it has passed.
            resume_grace: Duration::from_millis(200),
            ..Default::default()
        },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let megabyte = format!("\"{}\"", "x".repeat(1024 * 1024 - 2));
    let mut greedy = Client::gamer(&url, "greedy").await;
    let mut refused = 0;
    for i in 0..40 {
        greedy.submit(&format!("t{i}"), "nobody-runs-this", &megabyte, None).await;
    }
    // 4 fit the gamer's budget; the other 36 are refused.
    for _ in 0..36 {
        let e = greedy.recv_error().await;
        assert_eq!(e.code, ErrorCode::QueueFull);
        assert!(e.message.contains("bytes"), "{}", e.message);
        refused += 1;
    }
    assert_eq!(refused, 36);
    let stats = greedy.stats().await;
    assert_eq!(stats.queued_now, 4);
    assert!(stats.pending_bytes_now <= 4 * 1024 * 1024, "{}", stats.pending_bytes_now);
    // The global budget: a second gamer fits 2 MiB more, then is refused.
    let mut second = Client::gamer(&url, "second").await;
    for i in 0..3 {
        second.submit(&format!("t{i}"), "nobody-runs-this", &megabyte, None).await;
    }
    let e = second.recv_error().await;
    assert_eq!((e.code, e.refers_to.as_deref()), (ErrorCode::QueueFull, Some("t2")));
    assert!(coord.stats().pending_bytes_now <= 6 * 1024 * 1024);
    // Leaving releases the bytes once the resume grace has passed.
    drop(greedy);
    eventually("the departed gamer's bytes are released", || coord.stats().pending_bytes_now <= 2 * 1024 * 1024).await;
    coord.shutdown().await;
}

/// A result forwarded to a gamer who stopped reading is not buffered without limit: the
/// gamer is disconnected once its outbound bytes pass the budget (or its writes stall),
/// and the peer is not.
#[tokio::test]
async fn a_gamer_that_stops_reading_is_cut_off_by_bytes() {
    let config = Config {
        connections: coordinator::Connections { send_queue_bytes: 2 * 1024 * 1024, ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 64).await;
    let mut sink = Client::gamer(&url, "sink").await;
    // The gamer keeps submitting but never reads; each answer is 512 KiB. Its own sends
    // may block once the coordinator stops reading it: that ends its loop.
    let submitting = tokio::spawn(async move {
        for i in 0..400 {
            let task_id = format!("t{i}");
            let submit = sink.submit(&task_id, "physics", "{}", None);
            if tokio::time::timeout(Duration::from_secs(2), submit).await.is_err() {
                break;
            }
        }
        sink
    });
    let big = format!("{{\"status\":\"success\",\"blob\":\"{}\"}}", "y".repeat(512 * 1024));
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while coord.stats().gamers > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the non-reading gamer was never disconnected");
        if let Ok(a) = tokio::time::timeout(Duration::from_millis(100), peer.recv_assignment()).await {
            peer.answer(&a, &big).await;
            answered += 1;
        }
    }
    assert!(answered < 400, "a gamer that never reads was buffered for {answered} results of 512 KiB");
    assert_eq!(coord.stats().peers, 1, "the peer is unaffected");
    submitting.abort();
    coord.shutdown().await;
}

/// Gamers never take the connection slots kept for peers: past `max_connections -
/// reserved_peer_slots` gamers, `register_gamer` is refused with `limit_exceeded` and the
/// connection closed, while a peer still registers and serves.
#[tokio::test]
async fn gamers_cannot_take_the_slots_kept_for_peers() {
    let config = Config {
        connections: coordinator::Connections { max_connections: 6, reserved_peer_slots: 2, ..Default::default() },
        identity: coordinator::Identity { resume_grace: Duration::from_millis(300), ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut gamers = Vec::new();
    for g in 0..4 {
        gamers.push(Client::gamer(&url, &format!("g{g}")).await);
    }
    let mut fifth = Client::connect(&url).await;
    fifth.send_text(r#"{"msg_type":"register_gamer","gamer_id":"g4"}"#).await;
    let refused = fifth.recv_error().await;
    assert_eq!(refused.code, ErrorCode::LimitExceeded, "{refused:?}");
    assert_eq!(fifth.expect_closed().await, Some(1008));
    // A peer still gets in, and serves the gamers already there.
    let mut peer = Client::peer(&url, "p", 2).await;
    gamers[0].submit("t", "physics", "{}", None).await;
    let a = peer.recv_assignment().await;
    peer.answer(&a, r#"{"status":"success"}"#).await;
    assert_eq!(gamers[0].recv_result().await.task_id, "t");
    // A gamer that leaves with work pending keeps its slot while it may resume (the only
    // absent gamer of its address), then frees it for another.
    let mut leaving = gamers.pop().unwrap();
    leaving.submit("pending", "physics", "{}", None).await;
    peer.recv_assignment().await;
    drop(leaving);
    eventually("the departed gamer is gone", || coord.stats().gamers == 3).await;
    let mut early = Client::connect(&url).await;
    early.send_text(r#"{"msg_type":"register_gamer","gamer_id":"g5"}"#).await;
    assert_eq!(early.recv_error().await.code, ErrorCode::LimitExceeded, "its slot is held during the grace");
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let mut late = Client::connect(&url).await;
        late.send_text(r#"{"msg_type":"register_gamer","gamer_id":"g5"}"#).await;
        if matches!(late.recv().await, p2c2r_protocol::Message::RegistrationAck(_)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    coord.shutdown().await;
}

/// A black hole: a peer that registers with plenty of room, answers pings (so it looks
/// alive) and never answers a task. Its retries never go back to it, and after a few
/// missed deadlines in a row, confirmed by an established peer on the work of gamers from
/// two networks, it is quarantined: every honest task succeeds; and it stays quarantined
/// across a coordinator restart (the reputation database).
#[tokio::test]
async fn a_black_hole_peer_is_quarantined_and_honest_success_stays_at_100_percent() {
    use futures_util::StreamExt;
    let db = std::env::temp_dir().join(format!("p2c2r-black-hole-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let config = Config {
        reputation: coordinator::Reputation {
            quarantine_after_misses: 3,
            // The honest peer's first answers establish it (its later ones confirm misses).
            established_after_answers: 4,
            reputation_db: Some(db.clone()),
            ..Default::default()
        },
        connections: coordinator::Connections {
            // 127.0.0.1 and 127.0.0.3 stand for two networks.
            host_prefix_v4: 32,
            ..Default::default()
        },
        ..Config::default()
    };
    let coord = start(config.clone()).await;
    let url = coord.url();
    let caps = Capabilities { max_concurrent_tasks: Some(64), ..Default::default() };
    let hole = Client::peer_from(&url, "127.0.0.2", "hole", caps.clone()).await;
    // Reading keeps it alive (pongs); it drops every assignment and reports what it hears.
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let hole_reader = tokio::spawn(async move {
        let mut ws = hole.ws;
        while let Some(Ok(frame)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = frame
                && t.as_str().contains("quarantined")
            {
                let _ = heard_tx.send(t.as_str().to_owned());
            }
        }
    });
    let mut honest = Client::peer_with(&url, "honest", caps.clone()).await;
    // The victims: the real gamer client, and a gamer on another network.
    let mut gamer = gamer::connect(&url, "g").await;
    let mut elsewhere = Client::gamer_from(&url, "127.0.0.3", "g2").await;
    let mut successes = 0;
    for i in 0..40 {
        let task_id = format!("t{i}");
        if i % 2 == 0 {
            gamer.send(request(&task_id, "physics", "{}", None, Some(200)));
        } else {
            elsewhere.submit_with_deadline(&task_id, "physics", "{}", None, Some(200)).await;
        }
        // The honest peer answers whatever reaches it, until this task's result arrives.
        loop {
            tokio::select! {
                a = honest.recv_assignment() => honest.answer(&a, r#"{"status":"success"}"#).await,
                r = gamer.next_outcome(), if i % 2 == 0 => {
                    assert_eq!(r.task_id, task_id);
                    assert_eq!(result_status(success_json(&r)), Some(TaskStatus::Success), "{r:?}");
                    successes += 1;
                    break;
                }
                r = elsewhere.recv_result(), if i % 2 == 1 => {
                    assert_eq!(r.task_id, task_id);
                    assert_eq!(result_status(r.result.json().unwrap()), Some(TaskStatus::Success), "{r:?}");
                    successes += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(successes, 40, "honest success stays at 100 %");
    let stats = coord.stats();
    assert_eq!(stats.peers_quarantined, 1);
    assert_eq!(stats.tasks_failed, 0);
    let told = tokio::time::timeout(common::WAIT, heard.recv()).await.expect("told").unwrap();
    assert!(told.contains("\"code\":\"quarantined\""), "{told}");
    hole_reader.abort();
    // Its id is refused while the quarantine lasts.
    let mut again = Client::connect(&url).await;
    again.send(&p2c2r_testkit::client::register_peer("hole", caps.clone(), None)).await;
    assert_eq!(again.recv_error().await.code, ErrorCode::Quarantined);
    assert!(coord.metrics_text().contains("p2c2r_peers_quarantined_total 1"));
    coord.shutdown().await;

    // It cannot wait out a restart: the reputation database remembers it.
    let coord = start(config).await;
    let mut after_restart = Client::connect(&coord.url()).await;
    after_restart.send(&p2c2r_testkit::client::register_peer("hole", caps.clone(), None)).await;
    let refusal = after_restart.recv_error().await;
    assert_eq!(refusal.code, ErrorCode::Quarantined, "{}", refusal.message);
    // An honest peer registers as ever.
    Client::peer_with(&coord.url(), "honest", caps).await;
    coord.shutdown().await;
    let _ = std::fs::remove_file(&db);
}

/// The capacity the coordinator gives `peer_id` now, if it is connected.
fn capacity_of(coord: &coordinator::CoordinatorHandle, peer_id: &str) -> Option<u32> {
    coord.fleet().peers.into_iter().find(|(conn, _)| conn.id == peer_id).map(|(_, view)| view.capacity)
}

/// One confirmed miss of `flaky`, the only peer connected when the task arrives: it takes
/// the task and drops it, and a peer that joins meanwhile answers the retry in time.
async fn confirmed_miss(coord: &coordinator::CoordinatorHandle, gamer: &mut Client, flaky: &mut Client, n: u32) {
    let task_id = format!("late-{n}");
    let helper = format!("helper-{n}");
    gamer.submit_with_deadline(&task_id, "physics", "{}", None, Some(500)).await;
    assert_eq!(flaky.recv_assignment().await.task_data.task_id, task_id);
    let mut honest = Client::peer(&coord.url(), &helper, 8).await;
    assert_eq!(capacity_of(coord, &helper), Some(1), "a new peer starts at the initial capacity");
    let retry = honest.recv_assignment().await;
    assert_eq!((retry.task_data.task_id.as_str(), retry.attempt), (task_id.as_str(), 2));
    honest.answer(&retry, r#"{"status":"success"}"#).await;
    let result = gamer.recv_result().await;
    assert_eq!(result.task_id, task_id);
    assert_eq!(result_status(result.result.json().unwrap()), Some(TaskStatus::Success));
    drop(honest);
    eventually("the helper is gone", || capacity_of(coord, &helper).is_none()).await;
}

/// A peer's standing (the capacity it has shown, its streak of missed deadlines) outlives
/// its connection and the coordinator: a peer that reconnects, or waits for a restart,
/// starts where it left off, and its quarantine comes after the misses its streak still
/// lacked, not after a fresh streak. (In open mode the capacity it had grown goes back
/// only to a registration proving it owns the id: here its resume secret.)
#[tokio::test]
async fn a_demoted_peer_keeps_its_standing_across_reconnects_and_restarts() {
    let db = std::env::temp_dir().join(format!("p2c2r-standing-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let config = Config {
        reputation: coordinator::Reputation {
            quarantine_after_misses: 3,
            // What is tested here is memory, not what confirms a miss (`trust.rs`): any
            // peer's answer confirms, and one gamer's work counts.
            established_after_answers: 0,
            quarantine_min_gamers: 1,
            reputation_db: Some(db.clone()),
            ..Default::default()
        },
        scheduling: coordinator::Scheduling { initial_peer_capacity: 1, max_peer_capacity: 8, ..Default::default() },
        connections: coordinator::Connections {
            // The flaky peer reads nothing while it sits on a task: it must not be evicted.
            heartbeat_timeout: Duration::from_secs(120),
            ..Default::default()
        },
        ..Config::default()
    };
    let coord = start(config.clone()).await;
    let url = coord.url();
    let mut gamer = Client::gamer(&url, "g").await;
    let mut flaky = Client::peer(&url, "flaky", 8).await;
    // It shows it can take 8 at once: seven answers, one at a time (1 → 8).
    for i in 0..7 {
        gamer.submit(&format!("t{i}"), "physics", "{}", None).await;
        let a = flaky.recv_assignment().await;
        flaky.answer(&a, r#"{"status":"success"}"#).await;
        assert_eq!(gamer.recv_result().await.task_id, format!("t{i}"));
    }
    assert_eq!(capacity_of(&coord, "flaky"), Some(8));
    // A confirmed miss: its window halves, its streak is 1.
    confirmed_miss(&coord, &mut gamer, &mut flaky, 1).await;
    assert_eq!(capacity_of(&coord, "flaky"), Some(4));
    // It reconnects: the same standing, not a new peer's capacity of 1.
    let secret = flaky.secret.clone();
    drop(flaky);
    eventually("flaky is gone", || capacity_of(&coord, "flaky").is_none()).await;
    let mut flaky = Client::peer_resuming(&url, "flaky", p2c2r_testkit::client::capacity(8), secret).await;
    assert_eq!(capacity_of(&coord, "flaky"), Some(4), "its standing came back with it");
    // A second miss: streak 2, still short of the limit of 3.
    confirmed_miss(&coord, &mut gamer, &mut flaky, 2).await;
    assert_eq!(capacity_of(&coord, "flaky"), Some(2));
    assert_eq!(coord.stats().peers_quarantined, 0);
    // The coordinator restarts while it is connected.
    coord.shutdown().await;
    drop(flaky);

    let coord = start(config).await;
    let url = coord.url();
    let mut gamer = Client::gamer(&url, "g").await;
    // A restarted coordinator knows no resume secret: in open mode this could be anyone
    // taking the id, so it gets no more than a new peer's capacity, and the streak.
    let mut flaky = Client::peer(&url, "flaky", 8).await;
    assert_eq!(capacity_of(&coord, "flaky"), Some(1));
    // One more miss completes the streak it had before the restart: quarantined, once.
    confirmed_miss(&coord, &mut gamer, &mut flaky, 3).await;
    assert_eq!(coord.stats().peers_quarantined, 1);
    assert_eq!(flaky.recv_error().await.code, ErrorCode::Quarantined);
    coord.shutdown().await;
    let _ = std::fs::remove_file(&db);
}

/// A gamer whose tasks no peer finishes by their deadline (an expensive task with a tight
/// deadline, on purpose or not) fails its own tasks; the peers it missed on are not
/// quarantined, since no other peer did better, and keep serving everyone else.
#[tokio::test]
async fn tasks_no_peer_runs_in_time_get_no_peer_quarantined() {
    let coord = start(Config {
        reputation: coordinator::Reputation { quarantine_after_misses: 3, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let caps = Capabilities { max_concurrent_tasks: Some(64), ..Default::default() };
    // Two peers that never finish the attacker's tasks in time and answer anything else.
    let mut serving = Vec::new();
    for id in ["a", "b"] {
        let mut peer = Client::peer_with(&url, id, caps.clone()).await;
        serving.push(tokio::spawn(async move {
            loop {
                let a = peer.recv_assignment().await;
                if !a.task_data.task_data.json().unwrap().contains("expensive") {
                    peer.answer(&a, r#"{"status":"success"}"#).await;
                }
            }
        }));
    }
    let mut attacker = gamer::connect(&url, "attacker").await;
    for i in 0..9 {
        attacker.send(request(&format!("x{i}"), "physics", r#"{"expensive":true}"#, None, Some(100)));
    }
    for _ in 0..9 {
        let outcome = attacker.next_outcome().await;
        let error = outcome.error().expect("a task no peer finishes in time fails");
        assert_eq!(error.code, ErrorCode::MaxAttemptsExceeded, "{error:?}");
    }
    // Each peer missed at least 3 deadlines in a row, but nobody did better.
    assert_eq!(coord.stats().peers_quarantined, 0);
    let honest = gamer::connect(&url, "honest").await;
    for i in 0..4 {
        let outcome = honest.client.submit(request(&format!("h{i}"), "physics", "{}", None, Some(2_000))).await;
        let outcome = outcome.expect("the honest gamer is served");
        assert_eq!(result_status(success_json(&outcome)), Some(TaskStatus::Success));
    }
    assert_eq!(coord.stats().peers_quarantined, 0);
    for task in serving {
        task.abort();
    }
    coord.shutdown().await;
}
