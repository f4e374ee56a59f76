//! What running `physics_step` ticks in a worker process costs, beside running them in
//! process.
//!
//! Run: `cargo bench -p peer --bench worker_overhead`.
//!
//! For 10, 1,000 and 5,000 boxes falling onto a ground, the same ticks go through
//! [`peer::run_task_payload`] in this process and through a worker of the `peer` binary
//! (the frames of [`peer::worker`]: encode the task spec, write it to the worker's stdin,
//! the worker runs the same function, read its answer from stdout), interleaved so both
//! see the same machine load. Times are means and 99th percentiles in microseconds per
//! tick; "overhead" is the worker's mean minus the in-process mean.
//!
//! Then what the work budget's checks cost: refusing a snapshot of 1,000 spheres piled at
//! one point (which would take gigabytes and seconds to step), and checking honest
//! snapshots of 1,000 and 10,000 boxes before stepping them (best of 20, microseconds).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use p2c2r_protocol::physics::{BodyDesc, BodyType, PhysicsStepRequest, Shape};
use p2c2r_protocol::{TaskSpec, to_payload};
use peer::SessionStore;

const DT: f32 = 1.0 / 60.0;
const TICKS: u64 = 200;

fn snapshot(n: usize) -> PhysicsStepRequest {
    let side = (n as f32).sqrt().ceil() as usize;
    let extent = side as f32 * 0.6 + 20.0;
    let mut add = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [extent, 0.5, extent] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..n {
        let (col, row) = (i % side, i / side);
        add.push(BodyDesc::new(
            i as u64 + 1,
            Shape::Box { half_extents: [0.25; 3] },
            [col as f32 * 0.6, 1.0, row as f32 * 0.6],
        ));
    }
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

fn spec(session: &str, request: &PhysicsStepRequest) -> TaskSpec {
    TaskSpec {
        task_id: "bench".into(),
        task_type: "physics_step".into(),
        session_id: Some(session.into()),
        gamer_id: Some("bench".into()),
        task_data: to_payload(request).unwrap(),
    }
}

struct Worker {
    child: std::process::Child,
}

impl Worker {
    fn start() -> Worker {
        let settings = serde_json::json!({
            "memory_limit_bytes": 1u64 << 30,
            "idle_timeout_ms": 600_000,
            "max_sessions": 256,
            "memory_budget": 512u64 << 20,
            "gamer_memory_budget": 128u64 << 20,
            "budgets": peer::Budgets::default(),
        });
        let child = Command::new(env!("CARGO_BIN_EXE_peer"))
            .arg(peer::worker::WORKER_ARG)
            .env(peer::worker::SETTINGS_ENV, settings.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a worker");
        Worker { child }
    }

    fn run(&mut self, spec: &TaskSpec) -> Vec<u8> {
        // The worker protocol's JSON form: a `J`, then the task spec.
        let mut request = vec![b'J'];
        serde_json::to_writer(&mut request, spec).unwrap();
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(&(request.len() as u32).to_le_bytes()).unwrap();
        stdin.write_all(&request).unwrap();
        stdin.flush().unwrap();
        let stdout = self.child.stdout.as_mut().unwrap();
        let mut len = [0u8; 4];
        stdout.read_exact(&mut len).unwrap();
        let mut answer = vec![0u8; u32::from_le_bytes(len) as usize];
        stdout.read_exact(&mut answer).unwrap();
        assert_eq!(answer.pop(), Some(b'J'), "a JSON answer (its tag is last)");
        answer
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn budget_checks() {
    use p2c2r_sim::physics::PhysicsWorld;
    let best = |f: &mut dyn FnMut()| {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                f();
                micros(t.elapsed())
            })
            .min()
            .unwrap()
    };
    let pile: Vec<BodyDesc> = (0..1000).map(|id| BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [0.0; 3])).collect();
    let pile = PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add: pile, ..Default::default() };
    let refuse = best(&mut || {
        let e = PhysicsWorld::new().step_limited(&pile, &peer::Budgets::default()).unwrap_err();
        assert_eq!(e.code, p2c2r_protocol::ErrorCode::LimitExceeded);
    });
    println!("\nrefusing the 1,000-sphere pile: {refuse} µs");
    for n in [1_000usize, 10_000] {
        let request = snapshot(n);
        let boxes: Vec<_> = request
            .add
            .iter()
            .map(|d| {
                p2c2r_sim::physics::BoundingBox::of(&d.shape, d.position, d.rotation, d.body_type == BodyType::Dynamic)
            })
            .collect();
        let mut pairs = p2c2r_sim::physics::PairEstimate::Within(0);
        let check = best(&mut || pairs = p2c2r_sim::physics::estimate_overlapping_pairs(&boxes, 50_000));
        println!("pair estimate of a {n}-box snapshot: {check} µs ({pairs:?})");
    }
}

/// The cost of the budget checks on every tick: the same ticks on two identical worlds,
/// one stepped without budgets, one within the default budgets, interleaved.
fn budget_overhead() {
    use p2c2r_sim::physics::PhysicsWorld;
    println!("\n{:>6} {:>14} {:>14} {:>10}", "bodies", "step mean", "limited mean", "overhead");
    for n in [1_000usize, 5_000, 10_000] {
        let (mut plain, mut limited) = (PhysicsWorld::new(), PhysicsWorld::new());
        let first = snapshot(n);
        plain.step(&first).unwrap();
        limited.step_limited(&first, &peer::Budgets::default()).unwrap();
        let (mut a, mut b) = (Histogram::<u64>::new(3).unwrap(), Histogram::<u64>::new(3).unwrap());
        for t in 1..=60 {
            let request = PhysicsStepRequest { tick: t, dt: DT, steps: 1, ..Default::default() };
            let t0 = Instant::now();
            plain.step(&request).unwrap();
            let t1 = Instant::now();
            limited.step_limited(&request, &peer::Budgets::default()).unwrap();
            let t2 = Instant::now();
            a.record(micros(t1 - t0)).unwrap();
            b.record(micros(t2 - t1)).unwrap();
        }
        println!("{n:>6} {:>14.0} {:>14.0} {:>9.0}%", a.mean(), b.mean(), 100.0 * (b.mean() - a.mean()) / a.mean());
    }
}

fn main() {
    budget_checks();
    budget_overhead();
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>14} {:>12}",
        "bodies", "in-proc mean", "in-proc p99", "worker mean", "worker p99", "overhead"
    );
    let mut worker = Worker::start();
    for n in [10usize, 1_000, 5_000] {
        let store = SessionStore::new(Duration::from_secs(600));
        let session = format!("s{n}");
        let first = spec(&session, &snapshot(n));
        let local = peer::run_task_payload(&store, &first);
        let remote = worker.run(&first);
        assert_eq!(local.json().unwrap().as_bytes(), remote.as_slice(), "the worker answers the same bytes");
        let (mut inproc, mut remote_h) = (Histogram::<u64>::new(3).unwrap(), Histogram::<u64>::new(3).unwrap());
        for t in 1..=TICKS {
            let s = spec(&session, &PhysicsStepRequest { tick: t, dt: DT, steps: 1, ..Default::default() });
            let t0 = Instant::now();
            let a = peer::run_task_payload(&store, &s);
            let t1 = Instant::now();
            let b = worker.run(&s);
            let t2 = Instant::now();
            assert_eq!(a.json().unwrap().as_bytes(), b.as_slice());
            inproc.record(micros(t1 - t0)).unwrap();
            remote_h.record(micros(t2 - t1)).unwrap();
        }
        println!(
            "{n:>6} {:>14.0} {:>14} {:>14.0} {:>14} {:>12.0}",
            inproc.mean(),
            inproc.value_at_quantile(0.99),
            remote_h.mean(),
            remote_h.value_at_quantile(0.99),
            remote_h.mean() - inproc.mean()
        );
    }
}
