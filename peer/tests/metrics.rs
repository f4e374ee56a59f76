//! The peer's Prometheus endpoint (`--metrics-listen`): a peer in process, fed tasks by
//! a scripted coordinator, is scraped over a plain TCP socket before and after, and its
//! counters and histogram move by exactly the tasks it ran.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Conn, http_get, listener, scrape, within};
use p2c2r_protocol::{Message, TaskAssignment, TaskSpec, raw_payload, task_types};
use peer::worker::TEST_TASKS_ENV;
use peer::{Isolation, PeerConfig, PeerError, PeerHandle};

const SNAPSHOT: &str = r#"{"tick":0,"snapshot":true,"dt":0.016666668,"add":[{"id":1,"shape":{"kind":"sphere","radius":0.5},"position":[0,10,0]}]}"#;

fn tick(t: u64) -> String {
    format!(r#"{{"tick":{t},"dt":0.016666668}}"#)
}

fn assignment(id: &str, task_type: &str, session: Option<&str>, data: &str) -> Message {
    Message::TaskAssignment(TaskAssignment {
        task_id: id.into(),
        attempt: 1,
        deadline_ms: Some(10_000),
        task_data: TaskSpec {
            task_id: format!("gamer-{id}"),
            task_type: task_type.into(),
            session_id: session.map(str::to_owned),
            gamer_id: Some("g".into()),
            task_data: raw_payload(data.to_owned()).unwrap(),
        },
    })
}

/// A registered peer serving metrics on a free loopback port, and its coordinator.
async fn start(tweak: impl FnOnce(&mut PeerConfig)) -> (PeerHandle, Conn, SocketAddr) {
    let l = listener().await;
    let mut config = PeerConfig {
        coordinator_url: format!("ws://{}", l.local_addr().unwrap()),
        max_concurrent_tasks: Some(2),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    tweak(&mut config);
    let peer = peer::spawn(config).await;
    let mut conn = Conn::accept(&l).await;
    conn.register().await;
    within("registered", peer.wait_for(|s| s.connected)).await;
    let addr = peer.metrics_addr().expect("metrics are served");
    assert_ne!(addr.port(), 0, "the chosen port is reported");
    (peer, conn, addr)
}

/// Sends a task and returns its answer's result JSON.
async fn run(conn: &mut Conn, id: &str, task_type: &str, session: Option<&str>, data: &str) -> String {
    conn.send(&assignment(id, task_type, session, data)).await;
    let r = conn.result().await;
    assert_eq!(r.task_id, id);
    r.result.json().unwrap().to_owned()
}

fn tasks(task_type: &str, outcome: &str) -> String {
    format!(r#"p2c2r_peer_tasks_total{{task_type="{task_type}",outcome="{outcome}"}}"#)
}

fn durations(task_type: &str) -> String {
    format!(r#"p2c2r_peer_task_duration_seconds_count{{task_type="{task_type}"}}"#)
}

/// How much a sample grew between two scrapes (absent counts as 0).
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

/// Scrapes until `f` holds (the queue gauge drops just after an answer is sent).
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    f: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    within(what, async {
        loop {
            let samples = scrape(addr).await;
            if f(&samples) {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_counted_by_type_and_outcome_and_timed() {
    let (peer, mut conn, addr) = start(|_| {}).await;
    let before = scrape(addr).await;
    assert_eq!(before["p2c2r_peer_connected"], 1.0);
    assert_eq!(before["p2c2r_peer_registrations_total"], 1.0);
    assert_eq!(before["p2c2r_peer_sessions"], 0.0);
    assert_eq!(before["p2c2r_peer_queue_length"], 0.0);
    assert_eq!(before["p2c2r_peer_workers_lost_total"], 0.0);
    assert_eq!(before[&tasks("physics_step", "ok")], 0.0, "known series exist from the start");

    // Five ticks of one session, three seed physics tasks, one over the work budget, and
    // one of a type this peer does not run.
    assert!(run(&mut conn, "t0", "physics_step", Some("s"), SNAPSHOT).await.contains(r#""status":"success""#));
    for t in 1..5 {
        let answer = run(&mut conn, &format!("t{t}"), "physics_step", Some("s"), &tick(t)).await;
        assert!(answer.contains(r#""status":"success""#), "{answer}");
    }
    for i in 0..3 {
        let answer = run(&mut conn, &format!("p{i}"), "physics", None, r#"{"num_objects":10}"#).await;
        assert!(answer.contains("physics_processed"), "{answer}");
    }
    let answer = run(&mut conn, "big", "physics", None, r#"{"num_objects":1000000}"#).await;
    assert!(answer.contains("limit_exceeded"), "{answer}");
    let answer = run(&mut conn, "r", "render", None, "{}").await;
    assert!(answer.contains("unknown_task_type"), "{answer}");

    let after = scrape_until(addr, "an empty queue", |s| s["p2c2r_peer_queue_length"] == 0.0).await;
    assert_eq!(delta(&before, &after, &tasks("physics_step", "ok")), 5.0);
    assert_eq!(delta(&before, &after, &tasks("physics", "ok")), 3.0);
    assert_eq!(delta(&before, &after, &tasks("physics", "refused")), 1.0);
    assert_eq!(delta(&before, &after, &tasks("other", "error")), 1.0);
    assert!(!after.keys().any(|k| k.contains("render")), "task types from the network are bounded");
    let all: f64 =
        after.keys().filter(|k| k.starts_with("p2c2r_peer_tasks_total{")).map(|k| delta(&before, &after, k)).sum();
    assert_eq!(all, 10.0, "nothing else was counted");
    // Every task that ran is timed, the refused one too (it ran to find it was over budget).
    assert_eq!(delta(&before, &after, &durations("physics_step")), 5.0);
    assert_eq!(delta(&before, &after, &durations("physics")), 4.0);
    assert_eq!(delta(&before, &after, &durations("other")), 1.0);
    let buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(r#"p2c2r_peer_task_duration_seconds_bucket{task_type="physics_step",le=""#)?;
            let le = le.strip_suffix(r#""}"#)?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
        })
        .collect();
    let bounds: Vec<f64> = buckets.iter().map(|b| b.0).filter(|b| b.is_finite()).collect();
    assert_eq!(bounds.len(), 16, "{buckets:?}");
    assert!(bounds.iter().any(|&b| (b - 0.00025).abs() < 1e-9), "the first bucket is 0.25 ms: {bounds:?}");
    assert!(bounds.iter().all(|&b| b < 8.5) && bounds.iter().any(|&b| b > 8.0), "the last is about 8 s: {bounds:?}");
    assert_eq!(buckets.iter().find(|b| b.0.is_infinite()).map(|b| b.1), Some(5.0));
    assert!(after[r#"p2c2r_peer_task_duration_seconds_sum{task_type="physics_step"}"#] > 0.0);
    assert_eq!(after["p2c2r_peer_sessions"], 1.0);
    assert_eq!(after["p2c2r_peer_tasks_running"], 0.0);
    // Every series exists from the start: each task type this peer runs, and `other`, by
    // each of the five outcomes.
    let series = (task_types::ALL.len() + 1) * 5;
    assert_eq!(peer.metrics_text().lines().filter(|l| l.starts_with("p2c2r_peer_tasks_total{")).count(), series);

    // Only /metrics is served.
    let missing = http_get(addr, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");

    // The endpoint stops with the peer.
    peer.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "metrics still served after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_workers_counts_and_times_the_tasks_its_workers_run() {
    let (peer, mut conn, addr) = start(|c| {
        c.max_concurrent_tasks = Some(1);
        c.isolation = Isolation::Workers {
            exe: env!("CARGO_BIN_EXE_peer").into(),
            memory_limit_bytes: 1024 * 1024 * 1024,
            env: vec![(TEST_TASKS_ENV.into(), "1".into())],
        };
    })
    .await;
    let before = scrape(addr).await;
    assert!(run(&mut conn, "t0", "physics_step", Some("s"), SNAPSHOT).await.contains(r#""status":"success""#));
    assert!(run(&mut conn, "t1", "physics_step", Some("s"), &tick(1)).await.contains(r#""status":"success""#));
    // A test-only task type: counted as "other".
    let answer = run(&mut conn, "sleep", peer::worker::TEST_SLEEP_TASK, None, r#"{"ms":1}"#).await;
    assert!(answer.contains("slept"), "{answer}");
    let after = scrape_until(addr, "an empty queue", |s| s["p2c2r_peer_queue_length"] == 0.0).await;
    assert_eq!(delta(&before, &after, &tasks("physics_step", "ok")), 2.0);
    assert_eq!(delta(&before, &after, &durations("physics_step")), 2.0);
    assert_eq!(delta(&before, &after, &tasks("other", "ok")), 1.0);
    assert_eq!(delta(&before, &after, &durations("other")), 1.0);
    assert_eq!(after["p2c2r_peer_sessions"], 1.0, "the session its worker holds");
    assert_eq!(after["p2c2r_peer_workers_lost_total"], 0.0);
    peer.shutdown().await;
}

#[tokio::test]
async fn a_busy_metrics_address_fails_the_start_and_none_serves_nothing() {
    let taken = listener().await;
    let addr = taken.local_addr().unwrap();
    let config = PeerConfig { metrics_listen: Some(addr), ..Default::default() };
    match peer::try_spawn(config).await {
        Err(e @ PeerError::MetricsListen { .. }) => assert!(e.to_string().contains(&addr.to_string()), "{e}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("started on a busy metrics address"),
    }

    // Without an address nothing is served, but the metrics are kept for library users.
    let peer = peer::spawn(PeerConfig { coordinator_url: "ws://127.0.0.1:1".into(), ..Default::default() }).await;
    assert_eq!(peer.metrics_addr(), None);
    let text = peer.metrics_text();
    assert!(text.contains("# TYPE p2c2r_peer_tasks_total counter\n"), "{text}");
    assert!(!text.contains("p2c2r_peer_task_duration_seconds"), "a type's histogram appears with its first task");
    assert!(text.contains("\np2c2r_peer_connected 0\n"), "{text}");
    assert_eq!(p2c2r_ops::scrape::encode(&peer.registry()), text);
    peer.shutdown().await;
}
