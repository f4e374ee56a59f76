//! An honest gamer's round trip while one attacker does its worst, beside the same round
//! trip with no attack, in one run. Each scenario starts a fresh in-process coordinator
//! (on its own runtime thread) with an honest echo peer that runs `physics_step` only,
//! starts the attack, then times the honest gamer's sequential round trips.
//!
//! Run: `cargo bench -p coordinator --bench attacks` (release). Prints one line per
//! scenario: p50, p99 and max in µs, the p99 as a multiple of the baseline's, and the
//! resident memory of this whole process (coordinator and clients; it only grows across
//! scenarios, as the allocator keeps what earlier ones freed) when the scenario ends.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use p2c2r_protocol::{Capabilities, Message, raw_payload};
use p2c2r_testkit::client::{Client, capacity, result_for, task_request};
use tokio::task::JoinHandle;

const HONEST_ROUNDS: usize = 2_000;

async fn peer(url: &str, id: &str, slots: u32, types: Option<Vec<String>>) -> Client {
    Client::peer_with(url, id, Capabilities { task_types: types, ..capacity(slots) }).await
}

fn request(task_id: String, task_type: &str, payload: &str, session: Option<String>) -> Message {
    task_request(&task_id, task_type, raw_payload(payload.to_owned()).unwrap(), session, None)
}

/// Answers every assignment at once; a peer that "dies" (drops its connection) on an
/// assignment whose payload contains `"kill"`, when `fragile`.
async fn answer_forever(mut ws: Client, fragile: bool) {
    while let Some(m) = ws.try_recv().await {
        if let Message::TaskAssignment(a) = m {
            if fragile && a.task_data.task_data.json().unwrap().contains("kill") {
                return;
            }
            if !ws.try_send(&result_for(&a, r#"{"status":"success"}"#)).await {
                return;
            }
        }
    }
}

/// Reads and drops everything (an attacker that keeps its own connection healthy).
async fn drain(mut ws: Client) {
    while ws.try_recv().await.is_some() {}
}

async fn honest_round_trips(url: &str) -> Histogram<u64> {
    let mut ws = Client::gamer(url, "honest").await;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap();
    for i in 0..HONEST_ROUNDS + 100 {
        let start = Instant::now();
        ws.try_send(&request(format!("h{i}"), "physics_step", r#"{"tick":1}"#, Some("main".into()))).await;
        loop {
            match ws.try_recv().await {
                Some(Message::TaskResult(_)) => break,
                Some(_) => continue,
                None => panic!("the honest gamer was disconnected"),
            }
        }
        if i >= 100 {
            hist.record(start.elapsed().as_micros().max(1) as u64).unwrap();
        }
    }
    hist
}

fn resident_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

type Attack = fn(String) -> Vec<JoinHandle<()>>;

fn no_attack(_: String) -> Vec<JoinHandle<()>> {
    Vec::new()
}

/// 200 gamers with 256 tasks no peer runs, across sessions and types, plus 200 more
/// unrunnable submissions per second.
fn unrunnable_flood(url: String) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for g in 0..200 {
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            let mut ws = Client::gamer(&url, &format!("flood-{g}")).await;
            for t in 0..256 {
                let session = (t % 2 == 0).then(|| format!("s{}", t % 32));
                ws.try_send(&request(format!("t{t}"), &format!("nobody-{}", t % 8), "{}", session)).await;
            }
            if g == 0 {
                let mut n = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    n += 1;
                    ws.try_send(&request(format!("spam{n}"), "nobody-0", "{}", None)).await;
                }
            }
            drain(ws).await;
        }));
    }
    handles
}

/// 30 gamers with 10,000 queued tasks each, expiring together (the scenario's coordinator
/// has a 3 s queue wait limit).
fn expiry_storm(url: String) -> Vec<JoinHandle<()>> {
    (0..30)
        .map(|g| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut ws = Client::gamer(&url, &format!("storm-{g}")).await;
                for t in 0..10_000 {
                    ws.try_send(&request(format!("t{t}"), "nobody", "{}", Some(format!("s{}", t % 64)))).await;
                }
                drain(ws).await;
            })
        })
        .collect()
}

/// Four fragile peers that die on a poison task and come back under a new id, and an
/// attacker that submits a poison task every 50 ms.
fn poison(url: String) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for p in 0..4 {
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            for life in 0.. {
                let ws = peer(&url, &format!("fragile-{p}-{life}"), 4, None).await;
                answer_forever(ws, true).await;
            }
        }));
    }
    handles.push(tokio::spawn(async move {
        let mut ws = Client::gamer(&url, "poisoner").await;
        for n in 0.. {
            ws.try_send(&request(format!("kill{n}"), "physics_step", r#"{"kill":true}"#, None)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }));
    handles
}

/// A backlog of 3,000 tasks, then a peer that declares 4,096 slots.
fn boaster(url: String) -> Vec<JoinHandle<()>> {
    vec![tokio::spawn(async move {
        let mut ws = Client::gamer(&url, "backlog").await;
        for t in 0..3_000 {
            ws.try_send(&request(format!("t{t}"), "physics_step", "{}", None)).await;
        }
        let boaster = peer(&url, "boaster", 4_096, None).await;
        tokio::spawn(answer_forever(boaster, false));
        drain(ws).await;
    })]
}

/// A gamer relaying 15 MiB JSON payloads through a peer that answers each with 15 MiB of
/// JSON, one at a time, for ever.
fn large_relay(url: String) -> Vec<JoinHandle<()>> {
    vec![tokio::spawn(async move {
        let mut relay_peer = peer(&url, "relay-peer", 4, Some(vec!["bulk".into()])).await;
        let mut relay = Client::gamer(&url, "relay").await;
        let blob = format!(r#"{{"status":"success","blob":"{}"}}"#, "r".repeat(15 * 1024 * 1024));
        let mut n = 0;
        loop {
            n += 1;
            if !relay.try_send(&request(format!("r{n}"), "bulk", &blob, None)).await {
                return;
            }
            loop {
                match relay_peer.try_recv().await {
                    Some(Message::TaskAssignment(a)) => {
                        if !relay_peer.try_send(&result_for(&a, &blob)).await {
                            return;
                        }
                        break;
                    }
                    Some(_) => continue,
                    None => return,
                }
            }
            loop {
                match relay.try_recv().await {
                    Some(Message::TaskResult(_)) => break,
                    Some(_) => continue,
                    None => return,
                }
            }
        }
    })]
}

/// A peer that heartbeats but never reads, and a gamer that floods it with 256 KiB tasks.
fn never_reads(url: String) -> Vec<JoinHandle<()>> {
    vec![tokio::spawn(async move {
        let mut deaf = peer(&url, "deaf", 64, None).await;
        let mut flooder = Client::gamer(&url, "flooder").await;
        let blob = format!("\"{}\"", "z".repeat(256 * 1024));
        let mut n = 0;
        loop {
            n += 1;
            flooder.try_send(&request(format!("b{n}"), "bulk", &blob, None)).await;
            let heartbeat = Message::Heartbeat(Default::default());
            if !deaf.try_send(&heartbeat).await {
                deaf = peer(&url, &format!("deaf-{n}"), 64, None).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })]
}

fn scenario(
    name: &str,
    config: coordinator::Config,
    attack: Attack,
    warmup: Duration,
    baseline_p99: Option<u64>,
) -> u64 {
    let server = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let coord = server.block_on(coordinator::spawn("127.0.0.1:0", config)).unwrap();
    let url = coord.url();
    let clients = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let hist = clients.block_on(async {
        let honest_peer = peer(&url, "honest-peer", 8, Some(vec!["physics_step".into()])).await;
        let echo = tokio::spawn(answer_forever(honest_peer, false));
        let attackers = attack(url.clone());
        tokio::time::sleep(warmup).await;
        let hist = honest_round_trips(&url).await;
        echo.abort();
        for a in attackers {
            a.abort();
        }
        hist
    });
    let rss = resident_mib();
    let p99 = hist.value_at_quantile(0.99);
    let ratio = baseline_p99.map_or("1.00×".to_owned(), |b| format!("{:.2}×", p99 as f64 / b.max(1) as f64));
    println!("{name:<34} {:>9} {:>9} {:>9} {:>10} {:>10.0}", hist.value_at_quantile(0.5), p99, hist.max(), ratio, rss);
    drop(clients);
    server.block_on(coord.shutdown());
    p99
}

fn main() {
    println!("honest gamer round trips ({HONEST_ROUNDS} sequential, physics_step, echo peer) under attack");
    println!("{:<34} {:>9} {:>9} {:>9} {:>10} {:>10}", "scenario", "p50 µs", "p99 µs", "max µs", "p99/base", "RSS MiB");
    // Every client here comes from 127.0.0.1: lift the per-address limit, which would
    // otherwise refuse the flood's connections before they could attack anything.
    // The attacks measured here are about queues and sockets; the per-gamer and
    // per-address rate limits (tests/identity.rs) would refuse most of them at the door.
    let base = coordinator::Config {
        connections: coordinator::Connections { max_connections_per_address: 100_000, ..Default::default() },
        rate_limits: coordinator::RateLimits {
            max_tasks_per_second: None,
            max_task_bytes_per_second: None,
            max_new_sessions_per_second: None,
            max_connection_attempts_per_second: None,
        },
        ..coordinator::Config::default()
    };
    let baseline = scenario("no attack (baseline)", base.clone(), no_attack, Duration::from_millis(200), None);
    let b = Some(baseline);
    scenario("200 gamers x 256 unrunnable + spam", base.clone(), unrunnable_flood, Duration::from_secs(3), b);
    let storm = coordinator::Config {
        scheduling: coordinator::Scheduling {
            max_queue_wait: Some(Duration::from_secs(3)),
            ..(base.clone()).scheduling
        },
        ..base.clone()
    };
    scenario("30 gamers x 10,000 expiring", storm, expiry_storm, Duration::from_secs(2), b);
    scenario("poison task every 50 ms", base.clone(), poison, Duration::from_secs(1), b);
    scenario("3,000 backlog + 4,096-slot peer", base.clone(), boaster, Duration::from_millis(500), b);
    scenario("peer that never reads", base.clone(), never_reads, Duration::from_secs(1), b);
    let inline = coordinator::Config {
        connections: coordinator::Connections { off_runtime_frame_bytes: usize::MAX, ..(base.clone()).connections },
        ..base.clone()
    };
    scenario("15 MiB JSON relay, parsed inline", inline, large_relay, Duration::from_secs(1), b);
    scenario("15 MiB JSON relay, off the runtime", base, large_relay, Duration::from_secs(1), b);
}
