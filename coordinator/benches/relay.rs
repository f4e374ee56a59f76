//! Round trip through the coordinator: gamer → coordinator → peer → coordinator → gamer,
//! over loopback, with a peer that answers at once. Prints latency percentiles for small
//! frames and for a 1,000-body physics result, and pipelined throughput.
//!
//! Run: `cargo bench -p coordinator --bench relay`

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use p2c2r_protocol::physics::{BodyState, PhysicsStepResult};
use p2c2r_protocol::{Message, raw_payload};
use p2c2r_testkit::client::{Client, result_for, task_request};

/// A peer that answers every assignment with `result`.
async fn echo_peer(url: String, result: String) {
    let mut ws = Client::peer(&url, "echo", 256).await;
    loop {
        if let Message::TaskAssignment(a) = ws.recv().await {
            ws.send(&result_for(&a, &result)).await;
        }
    }
}

fn request(i: usize, payload: &str) -> Message {
    task_request(&format!("t{i}"), "physics_step", raw_payload(payload.to_owned()).unwrap(), Some("bench".into()), None)
}

async fn scenario(name: &str, request_payload: &str, result_payload: &str, rounds: usize) {
    // Pipelined throughput passes the default per-gamer rate limit by design.
    let config = coordinator::Config { max_tasks_per_second: None, ..coordinator::Config::default() };
    let coord = coordinator::spawn("127.0.0.1:0", config).await.unwrap();
    let url = coord.url();
    let peer = tokio::spawn(echo_peer(url.clone(), result_payload.to_owned()));
    let mut gamer = Client::gamer(&url, "bench").await;
    while coord.stats().peers == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for i in 0..rounds + 200 {
        let start = Instant::now();
        gamer.send(&request(i, request_payload)).await;
        let Message::TaskResult(_) = gamer.recv().await else { panic!("expected a result") };
        if i >= 200 {
            hist.record(start.elapsed().as_micros().max(1) as u64).unwrap();
        }
    }
    // Pipelined: 64 requests in flight at a time.
    let total = rounds;
    let start = Instant::now();
    let mut sent = 0;
    let mut received = 0;
    while received < total {
        while sent < total && sent - received < 64 {
            gamer.send(&request(1_000_000 + sent, request_payload)).await;
            sent += 1;
        }
        if let Message::TaskResult(_) = gamer.recv().await {
            received += 1;
        }
    }
    let per_sec = total as f64 / start.elapsed().as_secs_f64();
    println!(
        "{name:<28} {:>7} B {:>7} B {:>9} {:>9} {:>9} {:>9} {:>12.0}",
        request_payload.len(),
        result_payload.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        format!("{:.0}", hist.mean()),
        per_sec
    );
    peer.abort();
    coord.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let small_request = r#"{"tick":1,"dt":0.016666668,"steps":1}"#;
    let small_result = r#"{"status":"success","tick":1,"bodies":[]}"#;
    let bodies: Vec<BodyState> = (0..1000)
        .map(|i| BodyState {
            id: i,
            position: [i as f32 * 0.37, 1.234_567, -2.5],
            rotation: [0.012_345, 0.690_2, -0.000_123, 0.723_6],
            linvel: [0.5, -9.81, 0.001],
            angvel: [0.0, 0.25, -0.125],
            sleeping: false,
        })
        .collect();
    let big_result = serde_json::to_string(&PhysicsStepResult {
        status: Default::default(),
        tick: 1,
        bodies,
        removed: Vec::new(),
        digest: None,
    })
    .unwrap();
    println!("relay round trip over loopback (gamer -> coordinator -> peer -> coordinator -> gamer)");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "scenario", "request", "result", "p50 µs", "p99 µs", "max µs", "mean µs", "pipelined/s"
    );
    rt.block_on(scenario("small frames", small_request, small_result, 5_000));
    rt.block_on(scenario("1,000-body result", small_request, &big_result, 2_000));
}
