//! Measures how much memory a physics session holds per body, to check
//! [`peer::session::BYTES_PER_BODY`].
//!
//! Run: `cargo run --release -p peer --example session_bytes` (Linux: reads the resident
//! set size from `/proc/self/statm`).
//!
//! Builds worlds of 10,000 boxes falling onto a ground, steps each 60 times, and divides
//! the growth of the process's resident memory per world by the number of bodies.

use p2c2r_protocol::physics::{BodyDesc, BodyType, PhysicsStepRequest, Shape};
use p2c2r_sim::physics::PhysicsWorld;

const BODIES: usize = 10_000;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm's resident field");
    pages * 4096
}

fn main() {
    let side = (BODIES as f32).sqrt().ceil() as usize;
    let mut add = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [side as f32, 0.5, side as f32] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..BODIES {
        let (col, row) = ((i % side) as f32, (i / side) as f32);
        add.push(BodyDesc::new(
            i as u64 + 1,
            Shape::Box { half_extents: [0.25; 3] },
            [col * 0.6, 1.0 + (i % 3) as f32 * 0.6, row * 0.6],
        ));
    }
    let snapshot = PhysicsStepRequest { tick: 0, snapshot: true, dt: 1.0 / 60.0, steps: 1, add, ..Default::default() };
    // The first world also pays for the allocator's and rapier's scratch memory, which
    // later worlds reuse: the later ones show what one more session costs.
    let mut worlds = Vec::new();
    for round in 0..4 {
        let before = resident_bytes();
        let mut world = PhysicsWorld::new();
        world.step(&snapshot).unwrap();
        for tick in 1..60 {
            world.step(&PhysicsStepRequest { tick, dt: 1.0 / 60.0, steps: 1, ..Default::default() }).unwrap();
        }
        let after = resident_bytes();
        worlds.push(world);
        let per_body = after.saturating_sub(before) as f64 / BODIES as f64;
        println!(
            "world {round}: {BODIES} bodies, resident memory grew by {:.1} MiB, {per_body:.0} bytes per body (BYTES_PER_BODY = {})",
            after.saturating_sub(before) as f64 / (1024.0 * 1024.0),
            peer::session::BYTES_PER_BODY
        );
    }
    std::hint::black_box(&worlds);
}
