//! An honest gamer's physics round trip while one attacker sends hostile tasks to the same
//! peer, beside the same round trip with no attack, in one run.
//!
//! Run: `cargo bench -p peer --bench attacks` (release).
//!
//! Each scenario starts a fresh in-process coordinator (its own runtime thread) and one
//! peer (its own runtime thread) whose tasks run in two worker processes of the real
//! `peer` binary (`max_concurrent_tasks: 2`). The honest gamer (its own connection, on
//! the main thread) sends a snapshot of 100 boxes in session `honest`, the attack starts
//! (its own connection and runtime thread), and the honest gamer runs sequential ticks:
//! tick n+1 is sent once tick n is answered. Each tick's time counts from sending it until
//! its successful answer, so a tick answered with an error (a lost worker: `resync`)
//! includes the snapshot the gamer then sends to restore its session.
//!
//! Each scenario measures 1,000 ticks after 50 warm-up ticks, or what fits in 30 s after at
//! most 3 s of warm-up (the `ticks` column says how many), and every wait of the honest
//! gamer is bounded, so the run ends by itself.
//!
//! Prints one line per scenario over the measured ticks: p50, p99 and max in µs, the p99 as
//! a multiple of the baseline's, the ticks answered with an error (and among them, those
//! asking for a resync), the peer's workers lost (died or killed) during the scenario, and
//! the attacker's tasks sent and answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use p2c2r_protocol::physics::{ApplyImpulse, BodyDesc, BodyType, PhysicsStepRequest, Shape};
use p2c2r_protocol::{ErrorCode, Message, Payload, codec, raw_payload, to_payload};
use p2c2r_testkit::client::{Client, task_request};
use peer::worker::{TEST_ALLOC_TASK, TEST_SLEEP_TASK, TEST_TASKS_ENV};
use peer::{Isolation, PeerConfig};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const DT: f32 = 1.0 / 60.0;
const WARMUP_TICKS: usize = 50;
const MEASURED_TICKS: usize = 1_000;
const HONEST_BOXES: u64 = 100;
/// No single wait of the honest gamer lasts longer.
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(10);
/// The warm-up ends after [`WARMUP_TICKS`] or this long, whichever comes first.
const WARMUP_LIMIT: Duration = Duration::from_secs(3);
/// The measurement ends after [`MEASURED_TICKS`] or this long, whichever comes first.
const MEASURE_LIMIT: Duration = Duration::from_secs(30);
/// Snapshots tried after an errored tick before moving on to the next tick.
const SNAPSHOT_TRIES: usize = 3;
/// The expensive tick: this many spread-out boxes resting on a ground, stepped this many
/// times (with the ground, bodies × steps is exactly the default budget of 400,000).
const EXPENSIVE_BOXES: usize = 7_999;
const EXPENSIVE_STEPS: u32 = 50;

/// The honest scene: a ground and 100 boxes in a 10 × 10 grid, falling from 2 m.
fn honest_snapshot(tick: u64) -> PhysicsStepRequest {
    let mut add = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..HONEST_BOXES {
        let (col, row) = ((i % 10) as f32, (i / 10) as f32);
        add.push(BodyDesc::new(i + 1, Shape::Box { half_extents: [0.25; 3] }, [col * 1.5 - 7.0, 2.0, row * 1.5 - 7.0]));
    }
    PhysicsStepRequest { tick, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

/// One honest tick: an impulse on one box, a different one each tick, so the scene never
/// sleeps entirely.
fn honest_tick(tick: u64) -> PhysicsStepRequest {
    let impulse = ApplyImpulse { id: tick % HONEST_BOXES + 1, impulse: [0.0, 1.0, 0.2], torque_impulse: [0.0; 3] };
    PhysicsStepRequest { tick, dt: DT, steps: 1, impulses: vec![impulse], ..Default::default() }
}

/// 1,000 spheres of radius 0.5 at one point (refused by the pair budget).
fn pile() -> PhysicsStepRequest {
    let add = (0..1000u64).map(|id| BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [0.0; 3])).collect();
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

/// Within every budget but slow: 7,999 boxes 2 m apart resting on a ground, 50 steps.
fn expensive() -> PhysicsStepRequest {
    let side = (EXPENSIVE_BOXES as f32).sqrt().ceil() as usize;
    let extent = side as f32 + 10.0;
    let mut add = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [extent, 0.5, extent] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..EXPENSIVE_BOXES {
        let (col, row) = ((i % side) as f32, (i / side) as f32);
        let position = [col * 2.0 - side as f32, 0.25, row * 2.0 - side as f32];
        add.push(BodyDesc::new(i as u64 + 1, Shape::Box { half_extents: [0.25; 3] }, position));
    }
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: EXPENSIVE_STEPS, add, ..Default::default() }
}

/// A small scene for the session flood.
fn small_snapshot() -> PhysicsStepRequest {
    let add = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [5.0, 0.5, 5.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
        BodyDesc::new(1, Shape::Box { half_extents: [0.25; 3] }, [0.0, 1.0, 0.0]),
        BodyDesc::new(2, Shape::Sphere { radius: 0.25 }, [1.0, 1.0, 0.0]),
    ];
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

#[derive(Clone, Copy)]
enum Attack {
    None,
    Pile,
    Expensive,
    SessionFlood,
    Alloc,
}

#[derive(Default)]
struct AttackCounters {
    sent: AtomicU64,
    answered: AtomicU64,
}

/// The attacker: sends `make(n)` every `period` on its own connection while reading (and
/// dropping) everything it is sent. One task: aborting it ends both halves.
fn attacker(
    rt: &Runtime,
    url: String,
    period: Duration,
    counters: Arc<AttackCounters>,
    mut make: impl FnMut(u64) -> Message + Send + 'static,
) -> JoinHandle<()> {
    rt.spawn(async move {
        let (mut sink, mut stream) = Client::gamer(&url, "attacker").await.ws.split();
        let reads = async {
            while let Some(Ok(frame)) = stream.next().await {
                if let WsMessage::Text(t) = frame
                    && let Ok(Message::TaskResult(_)) = codec::decode(t.as_str())
                {
                    counters.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let sends = async {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                every.tick().await;
                if sink.send(WsMessage::text(codec::encode(&make(n)))).await.is_err() {
                    return;
                }
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
        };
        tokio::select! {
            () = reads => {}
            () = sends => {}
        }
    })
}

fn start_attack(attack: Attack, rt: &Runtime, url: &str, counters: &Arc<AttackCounters>) -> Vec<JoinHandle<()>> {
    let (url, counters) = (url.to_owned(), counters.clone());
    let step = |n: u64, payload: &Payload, session: String, deadline_ms: Option<u64>| {
        task_request(&format!("a{n}"), "physics_step", payload.clone(), Some(session), deadline_ms)
    };
    match attack {
        Attack::None => Vec::new(),
        Attack::Pile => {
            let payload = to_payload(&pile()).unwrap();
            vec![attacker(rt, url, Duration::from_millis(20), counters, move |n| {
                step(n, &payload, "pile".into(), None)
            })]
        }
        Attack::Expensive => {
            let payload = to_payload(&expensive()).unwrap();
            vec![attacker(rt, url, Duration::from_millis(50), counters, move |n| {
                step(n, &payload, "slow".into(), Some(50))
            })]
        }
        Attack::SessionFlood => {
            let payload = to_payload(&small_snapshot()).unwrap();
            vec![attacker(rt, url, Duration::from_millis(1), counters, move |n| {
                step(n, &payload, format!("s{n}"), None)
            })]
        }
        Attack::Alloc => {
            let payload = raw_payload("{}".into()).unwrap();
            vec![attacker(rt, url, Duration::from_millis(100), counters, move |n| {
                task_request(&format!("a{n}"), TEST_ALLOC_TASK, payload.clone(), None, None)
            })]
        }
    }
}

/// How one honest request ended.
enum Answer {
    Ok,
    /// A task error (from the peer, or the coordinator giving up), or a coordinator error.
    Failed {
        resync: bool,
    },
    /// No answer within [`ROUND_TRIP_LIMIT`], or the connection closed.
    Lost,
}

/// Just what tells a result from an error; the rest of the result is skipped.
#[derive(serde::Deserialize)]
struct Status {
    status: String,
    #[serde(default)]
    code: Option<ErrorCode>,
    #[serde(default)]
    resync: bool,
}

async fn round_trip(ws: &mut Client, task_id: String, request_body: &PhysicsStepRequest) -> Answer {
    let m = task_request(&task_id, "physics_step", to_payload(request_body).unwrap(), Some("honest".into()), None);
    if !ws.try_send(&m).await {
        return Answer::Lost;
    }
    let wait = async {
        loop {
            match ws.try_recv().await {
                Some(Message::TaskResult(r)) if r.task_id == task_id => {
                    return match serde_json::from_str::<Status>(r.result.json().unwrap()) {
                        Ok(s) if s.status == "success" => Answer::Ok,
                        Ok(s) => Answer::Failed { resync: s.resync || s.code == Some(ErrorCode::UnknownSession) },
                        Err(_) => Answer::Failed { resync: false },
                    };
                }
                Some(Message::Error(e)) if e.refers_to.as_deref() == Some(task_id.as_str()) => {
                    return Answer::Failed { resync: false };
                }
                Some(_) => continue,
                None => return Answer::Lost,
            }
        }
    };
    tokio::time::timeout(ROUND_TRIP_LIMIT, wait).await.unwrap_or(Answer::Lost)
}

struct HonestRun {
    hist: Histogram<u64>,
    /// Measured ticks whose first answer was an error.
    errored: u64,
    /// Of those, the ones asking for a resync (a lost worker, `unknown_session`).
    resyncs: u64,
    /// Measured ticks never answered successfully, even after the snapshots.
    failed: u64,
    note: Option<&'static str>,
}

/// The honest gamer's ticks after its first snapshot (already answered).
async fn honest_ticks(ws: &mut Client) -> HonestRun {
    let mut run = HonestRun {
        hist: Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap(),
        errored: 0,
        resyncs: 0,
        failed: 0,
        note: None,
    };
    let mut id = 0u64;
    let mut tick = 0u64;
    let warmup = Instant::now();
    let mut measuring: Option<Instant> = None;
    loop {
        match measuring {
            None if tick as usize >= WARMUP_TICKS || warmup.elapsed() > WARMUP_LIMIT => {
                measuring = Some(Instant::now());
            }
            Some(_) if run.hist.len() as usize >= MEASURED_TICKS => break,
            Some(since) if since.elapsed() > MEASURE_LIMIT => {
                run.note = Some("measurement stopped at its time limit");
                break;
            }
            _ => {}
        }
        tick += 1;
        let measured = measuring.is_some();
        let start = Instant::now();
        id += 1;
        let mut ok = match round_trip(ws, format!("h{id}"), &honest_tick(tick)).await {
            Answer::Ok => true,
            Answer::Failed { resync } => {
                if measured {
                    run.errored += 1;
                    run.resyncs += u64::from(resync);
                }
                false
            }
            Answer::Lost => {
                run.note = Some("the honest gamer lost its connection or an answer");
                break;
            }
        };
        // Restore the session with a snapshot at this tick, as a game does.
        let mut tries = 0;
        while !ok && tries < SNAPSHOT_TRIES && run.note.is_none() {
            tries += 1;
            id += 1;
            match round_trip(ws, format!("h{id}"), &honest_snapshot(tick)).await {
                Answer::Ok => ok = true,
                Answer::Failed { .. } => {}
                Answer::Lost => run.note = Some("the honest gamer lost its connection or an answer"),
            }
        }
        if measured {
            run.hist.record(start.elapsed().as_micros().max(1) as u64).unwrap();
            run.failed += u64::from(!ok);
        }
        if run.note.is_some() {
            break;
        }
    }
    run
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name(name).enable_all().build().unwrap()
}

fn peer_config(url: String, memory_limit_bytes: u64, test_tasks: bool) -> PeerConfig {
    let mut task_types = peer::capabilities::all_task_types();
    let mut env = Vec::new();
    if test_tasks {
        task_types.extend([TEST_ALLOC_TASK.to_owned(), TEST_SLEEP_TASK.to_owned()]);
        env.push((TEST_TASKS_ENV.into(), "1".into()));
    }
    PeerConfig {
        coordinator_url: url,
        peer_id: Some("bench-peer".into()),
        max_concurrent_tasks: Some(2),
        task_types,
        isolation: Isolation::Workers { exe: env!("CARGO_BIN_EXE_peer").into(), memory_limit_bytes, env },
        ..Default::default()
    }
}

/// Runs one scenario: the attack starts `ramp` before the honest gamer's warm-up ticks.
fn scenario(
    name: &str,
    attack: Attack,
    ramp: Duration,
    memory_limit_bytes: u64,
    test_tasks: bool,
    baseline_p99: Option<u64>,
) -> u64 {
    let server = runtime("coordinator");
    let coord = server.block_on(coordinator::spawn("127.0.0.1:0", coordinator::Config::default())).unwrap();
    let url = coord.url();
    let peer_rt = runtime("peer");
    let peer = peer_rt.block_on(async {
        let peer = peer::spawn(peer_config(url.clone(), memory_limit_bytes, test_tasks)).await;
        tokio::time::timeout(ROUND_TRIP_LIMIT, peer.wait_for(|s| s.connected)).await.expect("the peer registers");
        peer
    });
    let attack_rt = runtime("attacker");
    let counters = Arc::new(AttackCounters::default());
    let honest_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let run = honest_rt.block_on(async {
        let mut ws = Client::gamer(&url, "honest").await;
        // The honest session exists (in a worker) before the attack starts.
        match round_trip(&mut ws, "h0".into(), &honest_snapshot(0)).await {
            Answer::Ok => {}
            _ => panic!("{name}: the honest snapshot was not accepted"),
        }
        let attackers = start_attack(attack, &attack_rt, &url, &counters);
        tokio::time::sleep(ramp).await;
        let run = honest_ticks(&mut ws).await;
        for a in &attackers {
            a.abort();
        }
        run
    });
    let lost = peer.workers_lost();
    drop(attack_rt);
    drop(honest_rt);
    let hist = &run.hist;
    let p99 = hist.value_at_quantile(0.99);
    let ratio = baseline_p99.map_or("1.00×".to_owned(), |b| format!("{:.2}×", p99 as f64 / b.max(1) as f64));
    println!(
        "{name:<32} {:>6} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>6} {:>11}",
        hist.len(),
        hist.value_at_quantile(0.5),
        p99,
        hist.max(),
        ratio,
        run.errored,
        run.resyncs,
        lost,
        format!("{}/{}", counters.sent.load(Ordering::Relaxed), counters.answered.load(Ordering::Relaxed)),
    );
    if run.failed > 0 {
        println!("  {} measured ticks never succeeded (even after {SNAPSHOT_TRIES} snapshots)", run.failed);
    }
    if let Some(note) = run.note {
        println!("  note: {note}");
    }
    peer_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), peer.shutdown()).await;
    });
    drop(peer_rt);
    server.block_on(coord.shutdown());
    p99
}

/// What one expensive tick costs in process, to show the attack is real on this machine.
fn expensive_tick_cost() {
    let request = expensive();
    let start = Instant::now();
    let result = p2c2r_sim::physics::PhysicsWorld::new().step_limited(&request, &peer::Budgets::default());
    let elapsed = start.elapsed();
    match result {
        Ok(_) => println!(
            "expensive tick ({EXPENSIVE_BOXES} boxes x {EXPENSIVE_STEPS} steps, within budget): {} ms in process",
            elapsed.as_millis()
        ),
        Err(e) => println!(
            "expensive tick REFUSED by the budgets ({:?}: {}): the scenario measures nothing",
            e.code, e.message
        ),
    }
}

fn main() {
    println!(
        "honest gamer physics_step round trips ({MEASURED_TICKS} sequential ticks of a {HONEST_BOXES}-box session after \
         {WARMUP_TICKS} warm-up) through an in-process coordinator and one peer with 2 worker processes, under attack"
    );
    println!(
        "each tick counted from sending it to its successful answer (a resync's snapshot included); at most \
         {}s per scenario; run: cargo bench -p peer --bench attacks",
        (WARMUP_LIMIT + MEASURE_LIMIT).as_secs()
    );
    expensive_tick_cost();
    println!(
        "{:<32} {:>6} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>6} {:>11}",
        "scenario", "ticks", "p50 µs", "p99 µs", "max µs", "p99/base", "errored", "resyncs", "lost", "atk sent/ans"
    );
    let gib = 1 << 30;
    let ms = Duration::from_millis;
    let baseline = scenario("no attack (baseline)", Attack::None, ms(500), gib, false, None);
    let b = Some(baseline);
    scenario("1,000-sphere pile every 20 ms", Attack::Pile, ms(500), gib, false, b);
    scenario("expensive tick, 50 ms deadline", Attack::Expensive, ms(1_000), gib, false, b);
    // Long enough for the workers' session stores and the peer's routes to be full.
    scenario("new session every ms", Attack::SessionFlood, ms(2_000), gib, false, b);
    scenario("alloc past 256 MiB every 100 ms", Attack::Alloc, ms(1_000), 256 << 20, true, b);
}
