//! The offload tax: a physics tick sent to a peer and awaited, beside the same tick
//! stepped in the gamer's own process, with packed payloads on binary frames and with
//! JSON.
//!
//! Run: `cargo bench -p p2c2r_client --bench offload_tax` (a body count as argument runs
//! that scene alone, e.g. `-- 1000`).
//!
//! A coordinator and one in-process peer (`Isolation::InProcess`) run on loopback, each
//! on its own one-worker tokio runtime (as if in their own processes), and a
//! [`GamerClient`] on a third (the plugin's transport thread). The scene: N boxes in zero
//! gravity, inside a closed box of six fixed walls, with random velocities and full
//! restitution, so they stay awake and collide moderately; 1 % of them get a small
//! impulse each tick (the game's input). It is sent as a snapshot, then the ticks one at a
//! time: encode the request (`packed::encode_request`, or JSON), submit it and await the
//! result, decode it (`ResultDecoder::decode`, or JSON) — what the plugin does. Each
//! offloaded tick is interleaved with the same tick stepped locally
//! (`PhysicsWorld::step` of an identical world), so both see the same machine load.
//!
//! The breakdown (medians of per-tick values, µs) splits an offloaded tick into: the
//! gamer's encode and decode; the peer's task as the peer reports it (its
//! `p2c2r_peer_task_duration_seconds` histogram, read after each tick: payload decode +
//! step + result encode); of that, the step (estimated by the local step of the identical
//! world) and the rest, the peer's codec; the wire, the relay and the peer's dispatch (the
//! client's measured round trip, from writing the request to reading the result, minus
//! the peer's task); the client's handoffs (the `submit` call minus its round trip: the
//! command and result channels between the caller's thread and the client's task, and
//! their wake-ups).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use p2c2r_client::{ClientConfig, GamerClient, TaskReply};
use p2c2r_protocol::packed::{ResultDecoder, encode_request};
use p2c2r_protocol::physics::{ApplyImpulse, BodyDesc, BodyType, PhysicsStepRequest, PhysicsStepResult, Shape};
use p2c2r_protocol::quantize::snap_request;
use p2c2r_protocol::{Encoding, Payload, TaskRequest, to_payload};
use p2c2r_sim::physics::PhysicsWorld;

const DT: f32 = 1.0 / 60.0;
const HALF: f32 = 0.25;
/// Share of the box's volume the bodies fill.
const FILL: f32 = 0.04;
const WARMUP_TICKS: u64 = 20;
const SESSION: &str = "tax";
const DURATION_SUM: &str = r#"p2c2r_peer_task_duration_seconds_sum{task_type="physics_step"}"#;

/// The snapshot: six walls (ids 1–6) around a cube of side `side`, then N boxes on a
/// jittered grid with random velocities.
fn snapshot(n: usize, seed: u64) -> PhysicsStepRequest {
    let mut rng = fastrand::Rng::with_seed(seed);
    let volume = n as f32 * (2.0 * HALF).powi(3) / FILL;
    let side = volume.cbrt();
    let h = side / 2.0;
    let t = 0.5;
    let wall = |id, half_extents, position| {
        let mut d = BodyDesc::new(id, Shape::Box { half_extents }, position).with_body_type(BodyType::Fixed);
        d.friction = 0.0;
        d.restitution = 1.0;
        d
    };
    let mut add = vec![
        wall(1, [h + t, t, h + t], [0.0, -h - t, 0.0]),
        wall(2, [h + t, t, h + t], [0.0, h + t, 0.0]),
        wall(3, [t, h, h], [-h - t, 0.0, 0.0]),
        wall(4, [t, h, h], [h + t, 0.0, 0.0]),
        wall(5, [h, h, t], [0.0, 0.0, -h - t]),
        wall(6, [h, h, t], [0.0, 0.0, h + t]),
    ];
    let per_side = (n as f32).cbrt().ceil() as usize;
    let cell = side / per_side as f32;
    let mut uniform = |scale: f32| (rng.f32() * 2.0 - 1.0) * scale;
    for i in 0..n {
        let (x, y, z) = (i % per_side, i / per_side % per_side, i / (per_side * per_side));
        let at = |k: usize, j: f32| -h + (k as f32 + 0.5) * cell + j;
        let jitter = (cell / 2.0 - HALF).max(0.0) * 0.8;
        let mut body = BodyDesc::new(
            7 + i as u64,
            Shape::Box { half_extents: [HALF; 3] },
            [at(x, uniform(jitter)), at(y, uniform(jitter)), at(z, uniform(jitter))],
        );
        body.linvel = [uniform(3.0), uniform(3.0), uniform(3.0)];
        body.angvel = [uniform(2.0), uniform(2.0), uniform(2.0)];
        body.friction = 0.0;
        body.restitution = 1.0;
        add.push(body);
    }
    PhysicsStepRequest { tick: 0, snapshot: true, gravity: Some([0.0; 3]), dt: DT, steps: 1, add, ..Default::default() }
}

/// Tick `tick`'s request: small impulses on 1 % of the bodies.
fn tick_request(n: usize, tick: u64, rng: &mut fastrand::Rng) -> PhysicsStepRequest {
    let impulses = (0..(n / 100).max(1))
        .map(|_| {
            let id = 7 + rng.u64(0..n as u64);
            let mut u = || (rng.f32() * 2.0 - 1.0) * 0.05;
            ApplyImpulse { id, impulse: [u(), u(), u()], torque_impulse: [0.0; 3] }
        })
        .collect();
    PhysicsStepRequest { tick, dt: DT, steps: 1, impulses, ..Default::default() }
}

/// The peer's total `physics_step` task time so far.
fn peer_task_seconds(peer: &peer::PeerHandle) -> f64 {
    peer.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(DURATION_SUM).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The gamer's side of one tick, with what each part took.
struct Offloaded {
    encode: Duration,
    submit: Duration,
    rtt: Duration,
    decode: Duration,
    request_bytes: usize,
    result_bytes: usize,
    result: PhysicsStepResult,
}

fn offload(
    rt: &tokio::runtime::Runtime,
    client: &GamerClient,
    encoding: Encoding,
    decoder: &mut ResultDecoder,
    request: &PhysicsStepRequest,
) -> Offloaded {
    let t0 = Instant::now();
    let payload = match encoding {
        Encoding::Binary => {
            let mut bytes = Vec::with_capacity(64);
            encode_request(request, &mut bytes);
            Payload::binary(bytes)
        }
        Encoding::Json => to_payload(request).unwrap(),
    };
    let encode = t0.elapsed();
    let request_bytes = payload.len();
    let task = TaskRequest {
        task_id: format!("tick-{}", request.tick),
        task_type: "physics_step".into(),
        task_data: payload,
        session_id: Some(SESSION.into()),
        deadline_ms: Some(2_000),
    };
    let t1 = Instant::now();
    let outcome = rt.block_on(client.submit(task)).expect("the task is answered");
    let submit = t1.elapsed();
    let t2 = Instant::now();
    let (result, result_bytes) = match (&outcome.reply, encoding) {
        (TaskReply::Success(payload), Encoding::Binary) => {
            let bytes = payload.binary_bytes().expect("a packed result");
            (decoder.decode(&bytes).expect("a decodable result"), payload.len())
        }
        (TaskReply::Success(payload), Encoding::Json) => {
            (outcome.parse::<PhysicsStepResult>().expect("a JSON result"), payload.len())
        }
        (TaskReply::Failed(e), _) => panic!("tick {} failed: {e:?}", request.tick),
    };
    let decode = t2.elapsed();
    Offloaded { encode, submit, rtt: outcome.rtt.unwrap_or(submit), decode, request_bytes, result_bytes, result }
}

/// Each part of the measured ticks, in µs, one value per tick; reported as medians
/// (robust against the spikes of a shared machine; they add up only roughly).
#[derive(Default)]
struct Parts {
    encode: Vec<f64>,
    decode: Vec<f64>,
    peer_task: Vec<f64>,
    local: Vec<f64>,
    /// Peer task - local step, per tick.
    peer_codec: Vec<f64>,
    /// Round trip - peer task, per tick.
    path: Vec<f64>,
    /// submit() - round trip, per tick.
    handoffs: Vec<f64>,
    request_bytes: usize,
    result_bytes: usize,
    awake: usize,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Cluster {
    coord_rt: tokio::runtime::Runtime,
    peer_rt: tokio::runtime::Runtime,
    gamer_rt: tokio::runtime::Runtime,
    coordinator: coordinator::CoordinatorHandle,
    peer: peer::PeerHandle,
}

impl Cluster {
    fn start() -> Self {
        let runtime = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
                .unwrap()
        };
        let (coord_rt, peer_rt, gamer_rt) = (runtime("tax-coord"), runtime("tax-peer"), runtime("tax-gamer"));
        let config = coordinator::Config {
            rate_limits: coordinator::RateLimits {
                max_tasks_per_second: None,
                max_task_bytes_per_second: None,
                max_new_sessions_per_second: None,
                ..Default::default()
            },
            summary_interval: None,
            ..coordinator::Config::default()
        };
        let coordinator = coord_rt.block_on(coordinator::spawn("127.0.0.1:0", config)).unwrap();
        let config = peer::PeerConfig {
            coordinator_url: coordinator.url(),
            peer_id: Some("tax-peer".into()),
            isolation: peer::Isolation::InProcess,
            ..Default::default()
        };
        let peer = peer_rt.block_on(async {
            let peer = peer::spawn(config).await;
            tokio::time::timeout(Duration::from_secs(10), peer.wait_for(|s| s.connected))
                .await
                .expect("peer registers");
            peer
        });
        Cluster { coord_rt, peer_rt, gamer_rt, coordinator, peer }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_nanos() as u64 / 1_000).max(1)
}

fn bench(cluster: &Cluster, n: usize, ticks: u64, encoding: Encoding) {
    let mut config = ClientConfig::new(cluster.coordinator.url(), format!("tax-{n}-{}", encoding.as_str()));
    config.encoding = encoding;
    let (client, _events) = cluster.gamer_rt.block_on(GamerClient::connect(config)).expect("the gamer connects");
    assert_eq!(client.stats().binary(), encoding == Encoding::Binary, "the wire negotiated");

    let snapshot = snapshot(n, n as u64);
    let mut local = PhysicsWorld::new();
    // The peer's world gets the request snapped to the lattice (see `snap_request`).
    local.step(&snap_request(&snapshot)).unwrap();
    let mut decoder = ResultDecoder::new();
    let first = offload(&cluster.gamer_rt, &client, encoding, &mut decoder, &snapshot);
    let snapshot_line = format!(
        "snapshot {} B, its result {} B, {:.1} ms",
        first.request_bytes,
        first.result_bytes,
        (first.encode + first.submit + first.decode).as_secs_f64() * 1e3
    );

    let mut rng = fastrand::Rng::with_seed(42);
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut local_hist, mut offload_hist) = (hist(), hist());
    let mut parts = Parts::default();
    let mut peer_before = peer_task_seconds(&cluster.peer);
    for tick in 1..=WARMUP_TICKS + ticks {
        let request = tick_request(n, tick, &mut rng);
        let local_first = tick % 2 == 0;
        let mut local_time = Duration::ZERO;
        let mut step_locally = |local: &mut PhysicsWorld| {
            let t = Instant::now();
            let result = local.step(&request).unwrap();
            local_time = t.elapsed();
            std::hint::black_box(result);
        };
        if local_first {
            step_locally(&mut local);
        }
        let o = offload(&cluster.gamer_rt, &client, encoding, &mut decoder, &request);
        if !local_first {
            step_locally(&mut local);
        }
        let peer_now = peer_task_seconds(&cluster.peer);
        let peer_task = peer_now - peer_before;
        peer_before = peer_now;
        if tick <= WARMUP_TICKS {
            continue;
        }
        let total = o.encode + o.submit + o.decode;
        local_hist.record(micros(local_time)).unwrap();
        offload_hist.record(micros(total)).unwrap();
        let peer_task = peer_task * 1e6;
        parts.encode.push(us(o.encode));
        parts.decode.push(us(o.decode));
        parts.peer_task.push(peer_task);
        parts.local.push(us(local_time));
        parts.peer_codec.push(peer_task - us(local_time));
        parts.path.push(us(o.rtt) - peer_task);
        parts.handoffs.push(us(o.submit) - us(o.rtt));
        parts.request_bytes += o.request_bytes;
        parts.result_bytes += o.result_bytes;
        parts.awake += o.result.bodies.iter().filter(|b| !b.sleeping).count();
    }
    cluster.gamer_rt.block_on(client.close());

    let (lp50, lp99) = (local_hist.value_at_quantile(0.5), local_hist.value_at_quantile(0.99));
    let (op50, op99) = (offload_hist.value_at_quantile(0.5), offload_hist.value_at_quantile(0.99));
    println!(
        "| {n:>5} | {:<6} | {:>5} | {lp50:>6} | {lp99:>6} | {op50:>6} | {op99:>6} | {:>5.2}× | {:>5.2}× | {:>5.0} | {:>5.0} | {:>6.0} | {:>6.0} | {:>6.0} | {:>6.0} | {:>5.0} | {:>6} | {:>7} |",
        encoding.as_str(),
        parts.awake as u64 / ticks,
        op50 as f64 / lp50 as f64,
        op99 as f64 / lp99 as f64,
        median(&mut parts.encode),
        median(&mut parts.decode),
        median(&mut parts.peer_task),
        median(&mut parts.local),
        median(&mut parts.peer_codec),
        median(&mut parts.path),
        median(&mut parts.handoffs),
        parts.request_bytes / ticks as usize,
        parts.result_bytes / ticks as usize,
    );
    eprintln!("  ({n} bodies, {}: {snapshot_line})", encoding.as_str());
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a body count to run alone.
    let only: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let cluster = Cluster::start();
    println!("offload tax: one physics tick offloaded (encode + submit/await + decode) vs stepped locally");
    println!("(µs; p50/p99 per tick; breakdown: the median of each part of the offloaded tick, per tick)");
    println!();
    println!(
        "| bodies | wire | awake | local p50 | p99 | offload p50 | p99 | ratio p50 | p99 | gamer enc | gamer dec | peer task | peer step≈local | peer codec | wire+relay+peer dispatch | client handoffs | req B | res B |"
    );
    println!(
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (n, ticks) in [(100, 2_000), (1_000, 1_000), (4_096, 200)] {
        if only.is_empty() || only.contains(&n) {
            for encoding in [Encoding::Binary, Encoding::Json] {
                bench(&cluster, n, ticks, encoding);
            }
        }
    }
    println!();
    println!(
        "goal at 1,000 bodies: offload p50 <= 1.10× and p99 <= 1.35× local. peer task = the peer's reported task time \
         (decode + step + encode); peer codec = peer task - the local step; wire+relay+peer dispatch = the client's \
         round trip - peer task; client handoffs = submit() - its round trip"
    );
    let Cluster { coord_rt, peer_rt, coordinator, peer, .. } = cluster;
    peer_rt.block_on(peer.shutdown());
    coord_rt.block_on(coordinator.shutdown());
}
