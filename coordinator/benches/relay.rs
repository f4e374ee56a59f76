//! What the coordinator adds to a task's round trip, JSON frames beside binary frames.
//!
//! Run: `cargo bench -p coordinator --bench relay` (an argument such as `small/binary` runs
//! the scenarios whose label contains it).
//!
//! Two payload sizes, each as JSON (text frames) and binary (`p2c2r.bin.v1` frames with
//! `Payload::Binary` payloads): small frames (a tick request and an empty result) and a
//! 1,000-body physics result, built from one `PhysicsStepResult` of 1,000 moving bodies
//! with the real encoders (`serde_json` for JSON, a packed delta from `ResultEncoder` for
//! binary).
//!
//! Latency. The gamer and an echo peer (which answers every assignment with the result)
//! are protocol clients of the testkit, on TCP_NODELAY sockets as the real clients use.
//! Each round trip through the coordinator (gamer → coordinator → peer → coordinator →
//! gamer) is interleaved, in blocks of 50, with a direct round trip between the same two
//! kinds of clients (the gamer's frame to a server that decodes it and answers with the
//! same result frame as the peer, no coordinator), so both see the same machine load.
//! The coordinator puts two relays (hops) in the path, each adding one loopback leg and
//! its own work; the latency it adds per hop is `(through the coordinator − direct) / 2`,
//! on the percentiles of each. The three parts run on their own threads, as they would
//! in their own processes: the coordinator on a one-worker runtime, the echo peer and the
//! direct server on another, the gamer on the main thread.
//!
//! On a small VM the round trips depend on where the scheduler puts the three threads (a
//! wake-up of an idle vCPU costs tens of µs): running it under `taskset -c 0` (all on one
//! core) gives figures that vary much less from run to run.
//!
//! Throughput. 64 tasks in flight at a time (pipelined); besides tasks per second of wall
//! time, the CPU time of the coordinator's thread (from `/proc/self/task/*/stat`: the
//! process's CPU time would include the gamer's and the peer's) gives frames forwarded
//! per second per core: each task is two forwarded frames (request → assignment, result
//! → result).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use p2c2r_protocol::binary::{self, Frame};
use p2c2r_protocol::packed::{ResultEncoder, encode_request};
use p2c2r_protocol::physics::{BodyState, PhysicsStepRequest, PhysicsStepResult};
use p2c2r_protocol::{Encoding, Message, Payload, TaskResult, codec, raw_payload};
use p2c2r_testkit::client::{Client, capacity, register_gamer, register_peer, task_request};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;

const DT: f32 = 1.0 / 60.0;
const BLOCK: usize = 50;
const WARMUP: usize = 200;
const IN_FLIGHT: usize = 64;
/// The coordinator's threads are named so, to find their CPU time.
const COORD_THREAD: &str = "relay-coord";

/// One payload size in both encodings.
struct Payloads {
    name: &'static str,
    json_request: Payload,
    json_result: Payload,
    binary_request: Payload,
    binary_result: Payload,
    latency_rounds: usize,
    /// Tasks pipelined: JSON, binary.
    pipelined_tasks: (usize, usize),
}

impl Payloads {
    fn get(&self, encoding: Encoding) -> (Payload, Payload) {
        match encoding {
            Encoding::Json => (self.json_request.clone(), self.json_result.clone()),
            Encoding::Binary => (self.binary_request.clone(), self.binary_result.clone()),
        }
    }
}

/// The tick request: `{"tick":1,"dt":…}`, or its packed form.
fn tick_request(tick: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() }
}

fn packed_request(request: &PhysicsStepRequest) -> Payload {
    let mut out = Vec::new();
    encode_request(request, &mut out);
    Payload::binary(out)
}

/// 1,000 bodies flying in a box: each tick every body moves and turns by its
/// velocities, and a tenth of them change velocity (collisions), so the packed delta
/// carries residuals for them and small rounding residuals for the rest.
fn moving_bodies(n: u64, ticks: u64) -> Vec<PhysicsStepResult> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut uniform = |scale: f32| (rng.f32() * 2.0 - 1.0) * scale;
    let mut bodies: Vec<BodyState> = (0..n)
        .map(|i| BodyState {
            id: i + 1,
            position: [uniform(20.0), uniform(20.0), uniform(20.0)],
            rotation: normalize([uniform(1.0), uniform(1.0), uniform(1.0), uniform(1.0)]),
            linvel: [uniform(3.0), uniform(3.0), uniform(3.0)],
            angvel: [uniform(2.0), uniform(2.0), uniform(2.0)],
            sleeping: false,
        })
        .collect();
    let mut results = Vec::new();
    for tick in 0..ticks {
        for b in &mut bodies {
            if tick > 0 && uniform(1.0) > 0.8 {
                b.linvel = [uniform(3.0), uniform(3.0), uniform(3.0)];
                b.angvel = [uniform(2.0), uniform(2.0), uniform(2.0)];
            }
            for k in 0..3 {
                b.position[k] += b.linvel[k] * DT;
            }
            let [wx, wy, wz] = b.angvel.map(|w| w * DT / 2.0);
            let [x, y, z, w] = b.rotation;
            // q + (ω·dt/2, 0) ⊗ q
            b.rotation = normalize([
                x + wx * w + wy * z - wz * y,
                y - wx * z + wy * w + wz * x,
                z + wx * y - wy * x + wz * w,
                w - wx * x - wy * y - wz * z,
            ]);
        }
        results.push(PhysicsStepResult {
            tick,
            bodies: bodies.clone(),
            digest: Some("0123456789abcdef".into()),
            ..Default::default()
        });
    }
    results
}

fn normalize(q: [f32; 4]) -> [f32; 4] {
    let n = q.iter().map(|c| c * c).sum::<f32>().sqrt();
    q.map(|c| c / n)
}

fn payloads() -> Vec<Payloads> {
    let small_result = PhysicsStepResult { tick: 1, digest: Some("0123456789abcdef".into()), ..Default::default() };
    let mut small_packed = Vec::new();
    ResultEncoder::new().encode(&small_result, true, DT, &mut small_packed).unwrap();
    let small = Payloads {
        name: "small",
        json_request: raw_payload(serde_json::to_string(&tick_request(1)).unwrap()).unwrap(),
        json_result: raw_payload(serde_json::to_string(&small_result).unwrap()).unwrap(),
        binary_request: packed_request(&tick_request(1)),
        binary_result: Payload::binary(small_packed),
        latency_rounds: 10_000,
        pipelined_tasks: (20_000, 20_000),
    };
    // The steady state: a delta against the previous tick.
    let ticks = moving_bodies(1_000, 3);
    let mut encoder = ResultEncoder::new();
    let mut delta = Vec::new();
    for (i, result) in ticks.iter().enumerate() {
        delta.clear();
        encoder.encode(result, i == 0, DT, &mut delta).unwrap();
    }
    let last = ticks.last().unwrap();
    let big = Payloads {
        name: "1,000-body result",
        json_request: raw_payload(serde_json::to_string(&tick_request(2)).unwrap()).unwrap(),
        json_result: raw_payload(serde_json::to_string(last).unwrap()).unwrap(),
        binary_request: packed_request(&tick_request(2)),
        binary_result: Payload::binary(delta),
        latency_rounds: 2_000,
        pipelined_tasks: (2_000, 20_000),
    };
    vec![small, big]
}

/// A client socket with TCP_NODELAY (as `p2c2r_net` connects), offering binary frames
/// when `encoding` is binary.
async fn connect(url: &str, encoding: Encoding, offer: bool) -> Client {
    let mut request = url.into_client_request().unwrap();
    if offer && encoding == Encoding::Binary {
        request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(binary::SUBPROTOCOL));
    }
    let (ws, response) = tokio_tungstenite::connect_async_with_config(request, None, true).await.unwrap();
    if offer {
        let answer = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
        assert_eq!(Encoding::from_answer(answer), encoding, "the coordinator took the encoding");
    }
    let mut client = Client::from_ws(ws);
    client.encoding = encoding;
    client
}

/// A peer that answers every assignment with `result`.
async fn echo_peer(mut ws: Client, result: Payload) {
    while let Some(message) = ws.try_recv().await {
        if let Message::TaskAssignment(a) = message {
            let answer =
                TaskResult { task_id: a.task_id, result: result.clone(), attempt: Some(a.attempt), peer_id: None };
            if !ws.try_send(&Message::TaskResult(answer)).await {
                return;
            }
        }
    }
}

/// A server answering each `task_request` straight away with `result`, in `encoding`:
/// what a peer does, without the coordinator in between.
async fn direct_server(listener: TcpListener, encoding: Encoding, result: Payload) {
    use futures_util::{SinkExt, StreamExt};
    let Ok((stream, _)) = listener.accept().await else { return };
    stream.set_nodelay(true).unwrap();
    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
    while let Some(Ok(frame)) = ws.next().await {
        let message = match frame {
            WsMessage::Text(text) => codec::decode(text.as_str()).ok(),
            WsMessage::Binary(bytes) => binary::decode(bytes).ok(),
            _ => continue,
        };
        let Some(Message::TaskRequest(request)) = message else { continue };
        let answer = Message::TaskResult(TaskResult {
            task_id: request.task_id,
            result: result.clone(),
            attempt: Some(1),
            peer_id: None,
        });
        let frame = match binary::encode_for(&answer, encoding) {
            Frame::Text(text) => WsMessage::text(text),
            Frame::Binary(bytes) => WsMessage::binary(bytes),
        };
        if ws.send(frame).await.is_err() {
            return;
        }
    }
}

fn request(i: usize, payload: &Payload) -> Message {
    task_request(&format!("t{i}"), "physics_step", payload.clone(), Some("bench".into()), None)
}

async fn round_trip(gamer: &mut Client, i: usize, payload: &Payload) -> Duration {
    let start = Instant::now();
    gamer.send(&request(i, payload)).await;
    let Message::TaskResult(_) = gamer.recv().await else { panic!("expected a result") };
    start.elapsed()
}

/// CPU time of some threads or of the whole process, split into user and system time.
#[derive(Clone, Copy, Default)]
struct Cpu {
    user: Duration,
    system: Duration,
}

impl Cpu {
    fn total(self) -> Duration {
        self.user + self.system
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu { user: self.user.saturating_sub(before.user), system: self.system.saturating_sub(before.system) }
    }
}

/// CPU time (user, system) of this process's threads whose name starts with `prefix`,
/// and of the whole process; from `/proc` (Linux only: `None` elsewhere), in clock ticks
/// of 10 ms (sampled by the kernel: sums over many frames are unbiased).
fn cpu_time(prefix: &str) -> Option<(Cpu, Cpu)> {
    const TICK: f64 = 0.01; // USER_HZ is 100 on Linux
    let read = |stat: &str| -> Option<Cpu> {
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |i: usize| -> Option<Duration> {
            Some(Duration::from_secs_f64(fields.get(i)?.parse::<u64>().ok()? as f64 * TICK))
        };
        Some(Cpu { user: ticks(11)?, system: ticks(12)? })
    };
    let mut threads = Cpu::default();
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path();
        let comm = std::fs::read_to_string(path.join("comm")).ok()?;
        if comm.trim_end().starts_with(prefix) {
            let t = read(&std::fs::read_to_string(path.join("stat")).ok()?)?;
            threads.user += t.user;
            threads.system += t.system;
        }
    }
    let process = read(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some((threads, process))
}

/// What happened to a resource between two readings of [`cpu_time`].
fn cpu_between(before: Option<(Cpu, Cpu)>, after: Option<(Cpu, Cpu)>) -> Option<(Cpu, Cpu)> {
    let ((c0, p0), (c1, p1)) = (before?, after?);
    Some((c1.since(c0), p1.since(p0)))
}

struct Row {
    direct: Histogram<u64>,
    coordinator: Histogram<u64>,
    /// The coordinator's CPU time over the sequential round trips.
    sequential_cpu: Option<Cpu>,
    tasks_per_sec: f64,
    /// The coordinator's and the process's CPU time over the pipelined tasks.
    pipelined_cpu: Option<(Cpu, Cpu)>,
    tasks: usize,
}

fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.record((d.as_nanos() as u64 / 1_000).max(1)).unwrap();
}

fn scenario(
    coord_rt: &tokio::runtime::Runtime,
    peer_rt: &tokio::runtime::Runtime,
    gamer_rt: &tokio::runtime::Runtime,
    run: usize,
    p: &Payloads,
    encoding: Encoding,
) -> Row {
    // Pipelined throughput passes the default per-gamer rate limits by design.
    let config = coordinator::Config {
        rate_limits: coordinator::RateLimits {
            max_tasks_per_second: None,
            max_task_bytes_per_second: None,
            ..Default::default()
        },
        summary_interval: None,
        ..coordinator::Config::default()
    };
    let coord = coord_rt.block_on(coordinator::spawn("127.0.0.1:0", config)).unwrap();
    let url = coord.url();
    let (request_payload, result_payload) = p.get(encoding);

    // Each part's sockets are driven by its own runtime.
    let peer = peer_rt.spawn({
        let (url, result) = (url.clone(), result_payload.clone());
        async move {
            let mut ws = connect(&url, encoding, true).await;
            ws.register(&register_peer(&format!("echo-{run}"), capacity(256), None)).await;
            echo_peer(ws, result).await
        }
    });
    let listener = peer_rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let direct_url = format!("ws://{}", listener.local_addr().unwrap());
    let server = peer_rt.spawn(direct_server(listener, encoding, result_payload.clone()));

    let row = gamer_rt.block_on(async {
        let mut gamer = connect(&url, encoding, true).await;
        gamer.register(&register_gamer(&format!("bench-{run}"), None)).await;
        let mut direct = connect(&direct_url, encoding, false).await;
        while coord.stats().peers == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (mut via, mut straight) = (micros_histogram(), micros_histogram());
        let mut i = 0;
        for _ in 0..WARMUP {
            round_trip(&mut gamer, i, &request_payload).await;
            round_trip(&mut direct, i, &request_payload).await;
            i += 1;
        }
        // The coordinator only works in the blocks through it: its CPU time over the loop
        // is the cost of those round trips (heartbeats aside).
        let cpu_before = cpu_time(COORD_THREAD);
        while via.len() < p.latency_rounds as u64 {
            for _ in 0..BLOCK {
                record(&mut via, round_trip(&mut gamer, i, &request_payload).await);
                i += 1;
            }
            for _ in 0..BLOCK {
                record(&mut straight, round_trip(&mut direct, i, &request_payload).await);
                i += 1;
            }
        }
        let sequential_cpu = cpu_between(cpu_before, cpu_time(COORD_THREAD)).map(|(coord, _)| coord);
        // Pipelined through the coordinator.
        let total = match encoding {
            Encoding::Json => p.pipelined_tasks.0,
            Encoding::Binary => p.pipelined_tasks.1,
        };
        let cpu_before = cpu_time(COORD_THREAD);
        let start = Instant::now();
        let (mut sent, mut received) = (0, 0);
        while received < total {
            while sent < total && sent - received < IN_FLIGHT {
                gamer.send(&request(1_000_000 + sent, &request_payload)).await;
                sent += 1;
            }
            if let Message::TaskResult(_) = gamer.recv().await {
                received += 1;
            }
        }
        let elapsed = start.elapsed();
        let pipelined_cpu = cpu_between(cpu_before, cpu_time(COORD_THREAD));
        Row {
            direct: straight,
            coordinator: via,
            sequential_cpu,
            tasks_per_sec: total as f64 / elapsed.as_secs_f64(),
            pipelined_cpu,
            tasks: total,
        }
    });
    peer.abort();
    server.abort();
    coord_rt.block_on(coord.shutdown());
    row
}

fn main() {
    let coord_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(COORD_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let peer_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("relay-peer")
        .enable_all()
        .build()
        .unwrap();
    let gamer_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    println!("relay: what the coordinator adds, over loopback (coordinator, peer and gamer on their own threads)");
    println!();
    println!("latency of one task's round trip, µs; per hop = (through the coordinator - direct) / 2, per percentile;");
    println!("coordinator CPU = its thread's user + system time per forwarded frame over those round trips");
    println!();
    println!(
        "| payload | frames | request B | result B | direct p50 | p99 | via coordinator p50 | p99 | per hop p50 | p99 | coordinator CPU µs/frame (user + sys) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    // `cargo bench` passes `--bench`; any other argument picks scenarios whose label
    // (`small/json`, `1,000-body result/binary`, ...) contains it.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mut run = 0;
    let mut throughput = Vec::new();
    for p in payloads() {
        for encoding in [Encoding::Json, Encoding::Binary] {
            let label = format!("{}/{}", p.name, encoding.as_str());
            if !only.is_empty() && !only.iter().any(|o| label.contains(o.as_str())) {
                continue;
            }
            run += 1;
            let (request, result) = p.get(encoding);
            let row = scenario(&coord_rt, &peer_rt, &gamer_rt, run, &p, encoding);
            let hop =
                |q: f64| (row.coordinator.value_at_quantile(q) as f64 - row.direct.value_at_quantile(q) as f64) / 2.0;
            let frames = 2.0 * row.coordinator.len() as f64;
            let us = |d: Duration, per: f64| d.as_secs_f64() * 1e6 / per;
            let sequential = row.sequential_cpu.map_or("n/a".to_owned(), |c| {
                format!("{:.1} ({:.1} + {:.1})", us(c.total(), frames), us(c.user, frames), us(c.system, frames))
            });
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {sequential} |",
                p.name,
                encoding.as_str(),
                request.len(),
                result.len(),
                row.direct.value_at_quantile(0.5),
                row.direct.value_at_quantile(0.99),
                row.coordinator.value_at_quantile(0.5),
                row.coordinator.value_at_quantile(0.99),
                hop(0.5),
                hop(0.99),
            );
            let tasks = row.tasks as f64;
            let (coord, process) = match row.pipelined_cpu {
                Some((c, p)) if !c.total().is_zero() => (
                    format!(
                        "{:.1} ({:.1} + {:.1}) | {:.0}",
                        us(c.total(), 2.0 * tasks),
                        us(c.user, 2.0 * tasks),
                        us(c.system, 2.0 * tasks),
                        2.0 * tasks / c.total().as_secs_f64()
                    ),
                    format!("{:.1}", us(p.total(), tasks)),
                ),
                _ => ("n/a | n/a".to_owned(), "n/a".to_owned()),
            };
            throughput.push(format!(
                "| {} | {} | {:.0} | {coord} | {process} |",
                p.name,
                encoding.as_str(),
                row.tasks_per_sec
            ));
        }
    }
    println!();
    println!("pipelined ({IN_FLIGHT} tasks in flight); each task is 2 forwarded frames (request, result)");
    println!();
    println!(
        "| payload | frames | tasks/s | coordinator CPU µs/frame (user + sys) | frames/s per coordinator core | process CPU µs/task |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for line in throughput {
        println!("{line}");
    }
    println!();
    println!(
        "goal: <= 10 µs per hop for small frames. frames/s per core = forwarded frames / the coordinator thread's CPU \
         time; process CPU = gamer + peer + coordinator"
    );
}
