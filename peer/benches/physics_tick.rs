//! A peer's cost per `physics_step` tick, beside plain rapier stepping the same scene.
//!
//! Run: `cargo bench -p peer --bench physics_tick` (plain `cargo bench -p peer` runs it too).
//!
//! For 100, 1,000 and 5,000 awake boxes falling onto a ground and piling up, each tick is
//! timed through the peer's whole path, split into phases:
//!
//! - decode: `codec::decode` of the `task_assignment` frame plus parsing the payload;
//! - apply: validating the request and applying its changes (impulses on 1% of the bodies);
//! - step: rapier's step;
//! - extract: reading the body states out, sorted by id;
//! - encode: serializing the result and the `task_result` frame.
//!
//! In the same run, a plain rapier world with the same scene and the same impulses is
//! stepped tick by tick, interleaved with the peer's ticks so both see the same machine
//! load. Times are means in microseconds; "p99" is the 99th percentile of the peer total.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use p2c2r_protocol::physics::{ApplyImpulse, BodyDesc, BodyType, PhysicsStepRequest, Shape};
use p2c2r_protocol::{Message, TaskAssignment, TaskResult, TaskSpec, codec, to_payload};
use p2c2r_sim::physics::PhysicsWorld;
use rapier3d::prelude::{ColliderBuilder, RigidBodyBuilder, RigidBodyHandle, Vector};

const DT: f32 = 1.0 / 60.0;
const HALF: f32 = 0.25;
const WARMUP_TICKS: u64 = 10;

fn positions(n: usize) -> Vec<[f32; 3]> {
    let layers = if n >= 1000 { 10 } else { 4 };
    let side = ((n as f32 / layers as f32).sqrt().ceil() as usize).max(1);
    (0..n)
        .map(|i| {
            let (layer, rest) = (i / (side * side), i % (side * side));
            let (col, row) = (rest % side, rest / side);
            let jitter = 0.05 * (layer % 3) as f32;
            [col as f32 * 0.6 + jitter, 1.0 + layer as f32 * 0.8, row as f32 * 0.6 - jitter]
        })
        .collect()
}

fn ground_extent(n: usize) -> f32 {
    (n as f32).sqrt() * 0.6 + 20.0
}

fn snapshot(n: usize) -> PhysicsStepRequest {
    let mut add = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [ground_extent(n), 0.5, ground_extent(n)] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for (i, p) in positions(n).into_iter().enumerate() {
        add.push(BodyDesc::new(i as u64 + 1, Shape::Box { half_extents: [HALF; 3] }, p));
    }
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

/// Impulses on 1% of the bodies, different ones each tick.
fn impulses(n: usize, tick: u64) -> Vec<ApplyImpulse> {
    let count = (n / 100).max(1);
    (0..count)
        .map(|k| {
            let id = (tick as usize * 7 + k * 97) % n + 1;
            ApplyImpulse { id: id as u64, impulse: [0.0, 2.0, 0.5], torque_impulse: [0.0, 0.05, 0.0] }
        })
        .collect()
}

fn assignment_frame(request: &PhysicsStepRequest) -> String {
    codec::encode(&Message::TaskAssignment(TaskAssignment {
        task_id: format!("{}:1", request.tick),
        attempt: 1,
        deadline_ms: Some(2000),
        task_data: TaskSpec {
            task_id: format!("tick-{}", request.tick),
            task_type: "physics_step".into(),
            session_id: Some("bench".into()),
            gamer_id: None,
            task_data: to_payload(request).unwrap(),
        },
    }))
}

/// The same scene, in rapier directly.
struct Plain {
    world: rapier3d::prelude::PhysicsWorld,
    handles: Vec<RigidBodyHandle>,
}

impl Plain {
    fn new(n: usize) -> Self {
        let mut world = rapier3d::prelude::PhysicsWorld::new();
        world.integration_parameters.dt = DT;
        let e = ground_extent(n);
        world.insert(
            RigidBodyBuilder::fixed().translation(Vector::new(0.0, -0.5, 0.0)),
            ColliderBuilder::cuboid(e, 0.5, e).friction(0.5).density(1000.0),
        );
        let handles = positions(n)
            .into_iter()
            .map(|p| {
                world
                    .insert(
                        RigidBodyBuilder::dynamic().translation(Vector::from_array(p)),
                        ColliderBuilder::cuboid(HALF, HALF, HALF).friction(0.5).density(1000.0),
                    )
                    .0
            })
            .collect();
        Plain { world, handles }
    }

    fn tick(&mut self, impulses: &[ApplyImpulse]) -> Duration {
        let t0 = Instant::now();
        for i in impulses {
            let rb = &mut self.world.bodies[self.handles[i.id as usize - 1]];
            rb.apply_impulse(Vector::from_array(i.impulse), true);
            rb.apply_torque_impulse(Vector::from_array(i.torque_impulse), true);
        }
        self.world.step();
        t0.elapsed()
    }
}

#[derive(Default)]
struct Totals {
    decode: Duration,
    apply: Duration,
    step: Duration,
    extract: Duration,
    encode: Duration,
    plain: Duration,
    awake: usize,
    result_bytes: usize,
}

fn micros(d: Duration, ticks: u64) -> f64 {
    d.as_secs_f64() * 1e6 / ticks as f64
}

fn bench(n: usize, ticks: u64) {
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(n)).unwrap();
    let mut plain = Plain::new(n);
    plain.tick(&[]);
    let mut totals = Totals::default();
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for tick in 1..=WARMUP_TICKS + ticks {
        let impulses = impulses(n, tick);
        let request = PhysicsStepRequest { tick, dt: DT, steps: 1, impulses: impulses.clone(), ..Default::default() };
        let frame = assignment_frame(&request);

        let t0 = Instant::now();
        let Ok(Message::TaskAssignment(assignment)) = codec::decode(black_box(&frame)) else { unreachable!() };
        let request: PhysicsStepRequest = serde_json::from_str(assignment.task_data.task_data.json().unwrap()).unwrap();
        let decode = t0.elapsed();

        let (result, timings) = world.step_timed(&request).unwrap();

        let t1 = Instant::now();
        let out = codec::encode(&Message::TaskResult(TaskResult {
            task_id: assignment.task_id.clone(),
            result: to_payload(&result).unwrap(),
            attempt: Some(assignment.attempt),
            peer_id: None,
        }));
        let encode = t1.elapsed();
        black_box(&out);

        let plain_step = plain.tick(&impulses);

        if tick > WARMUP_TICKS {
            totals.decode += decode;
            totals.apply += timings.apply;
            totals.step += timings.step;
            totals.extract += timings.extract;
            totals.encode += encode;
            totals.plain += plain_step;
            totals.awake += result.bodies.iter().filter(|b| !b.sleeping).count();
            totals.result_bytes += out.len();
            let total = decode + timings.apply + timings.step + timings.extract + encode;
            histogram.record(total.as_micros() as u64).unwrap();
        }
    }
    let us = |d| micros(d, ticks);
    let total = us(totals.decode) + us(totals.apply) + us(totals.step) + us(totals.extract) + us(totals.encode);
    println!(
        "| {n:>5} | {:>5} | {:>7.0} | {:>7.0} | {:>8.0} | {:>7.0} | {:>7.0} | {:>8.0} | {:>7} | {:>8.0} | {:>5.2}× | {:>6.0} KB |",
        totals.awake as u64 / ticks,
        us(totals.decode),
        us(totals.apply),
        us(totals.step),
        us(totals.extract),
        us(totals.encode),
        total,
        histogram.value_at_quantile(0.99),
        us(totals.plain),
        total / us(totals.plain),
        totals.result_bytes as f64 / ticks as f64 / 1024.0,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a body count to run alone.
    let only: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    println!("peer cost per physics_step tick (µs, mean over the measured ticks; 1 step of 1/60 s)");
    println!();
    println!(
        "| bodies | awake | decode | apply |   step | extract | encode | peer total | p99 | plain rapier | peer/plain | result |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, ticks) in [(100, 300), (1_000, 200), (5_000, 100)] {
        if only.is_empty() || only.contains(&n) {
            bench(n, ticks);
        }
    }
}
