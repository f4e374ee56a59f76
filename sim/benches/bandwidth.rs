//! Bytes on the wire per body per frame for `physics_step`, packed
//! (`p2c2r_protocol::packed`) beside JSON (what the wire carries today). A printed table,
//! not a timed test.
//!
//! Run: `cargo bench -p p2c2r_sim --bench bandwidth`.
//!
//! Scenes, 600 ticks at 60 Hz each, driven through `PhysicsWorld` exactly as a session
//! is: every request is packed and unpacked before the world steps it, and every result is
//! packed by a `ResultEncoder` and unpacked by a `ResultDecoder`; the gamer's copy built
//! from the decoded results is checked against the world's own state after every tick, bit
//! for bit (the bench panics otherwise).
//!
//! - `cubes`: 900 cubes dropped in a 30 × 30 grid onto a ground, settling, then pushed
//!   around from tick 150 by a kinematic box driven by a target every tick (Glenn
//!   Fiedler's snapshot compression demo; his best was 0.58 bytes per cube per frame).
//!   Broken into phases: falling (ticks 0-59), settling (60-149), pushing (150-599).
//! - `awake`: 1,000 cubes and balls in zero gravity with random velocities and spins,
//!   never asleep, bumping into each other now and then.
//! - `jointed`: 20 rope bridges of 20 planks each (400 bodies, 420 ball joints and ropes,
//!   sent once in the snapshot), 40 balls dropped on them: swinging, then settling.
//! - `events`: 1,000 bouncy balls (with continuous collision detection) that report their collisions, in a closed 10 m box
//!   without gravity: about a hundred collision events a tick (started and stopped; the
//!   events column says how many); `events: unheard` is the same scene with no body
//!   asking for events, to show what they cost.
//!
//! Then a level: a 100,000-triangle mesh and 50 balls, its snapshot's bytes on a first
//! connection (the mesh itself) and on a failover to a peer that holds the mesh (its name,
//! [`Shape::Cached`]), side by side.
//!
//! Columns: bytes per body per frame of results, of requests and of both (the snapshot
//! that starts the scene and its keyframe result included); bytes per reported body of the
//! results; the same for JSON; the bodies asleep at the end; the mean time to pack and
//! unpack a result, and to step the world (for scale).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use p2c2r_protocol::packed::{ResultDecoder, ResultEncoder, decode_request, encode_request};
use p2c2r_protocol::physics::{BodyDesc, BodyId, BodyState, BodyType, KinematicTarget, PhysicsStepRequest, Shape};
use p2c2r_sim::physics::PhysicsWorld;

mod scenes;

const DT: f32 = 1.0 / 60.0;
const TICKS: u64 = 600;

#[derive(Clone, Copy, Default)]
struct Tally {
    ticks: u64,
    result_bytes: usize,
    request_bytes: usize,
    json_result_bytes: usize,
    json_request_bytes: usize,
    reported: usize,
    events: usize,
    step: Duration,
    encode: Duration,
    decode: Duration,
}

/// One session: the peer's world and encoder, the gamer's decoder and copy of the state.
struct Session {
    world: PhysicsWorld,
    encoder: ResultEncoder,
    decoder: ResultDecoder,
    gamer: BTreeMap<BodyId, BodyState>,
    request_bytes: Vec<u8>,
    result_bytes: Vec<u8>,
}

fn bits(s: &BodyState) -> [u32; 13] {
    let mut all = [0; 13];
    for (slot, v) in all.iter_mut().zip(s.position.iter().chain(&s.rotation).chain(&s.linvel).chain(&s.angvel)) {
        *slot = v.to_bits();
    }
    all
}

impl Session {
    fn new() -> Self {
        Session {
            world: PhysicsWorld::new(),
            encoder: ResultEncoder::new(),
            decoder: ResultDecoder::new(),
            gamer: BTreeMap::new(),
            request_bytes: Vec::new(),
            result_bytes: Vec::new(),
        }
    }

    fn tick(&mut self, request: &PhysicsStepRequest, tally: &mut Tally) {
        self.request_bytes.clear();
        encode_request(request, &mut self.request_bytes);
        let unpacked = decode_request(&self.request_bytes).expect("a request we packed decodes");
        let stepping = Instant::now();
        let result = self.world.step(&unpacked).expect("the scene is valid");
        tally.step += stepping.elapsed();

        self.result_bytes.clear();
        let start = Instant::now();
        let elapsed = request.dt * request.steps as f32;
        self.encoder.encode(&result, request.snapshot, elapsed, &mut self.result_bytes).expect("a result packs");
        let encoded = Instant::now();
        let decoded = self.decoder.decode(&self.result_bytes).expect("a result we packed decodes");
        tally.encode += encoded - start;
        tally.decode += encoded.elapsed();

        assert_eq!(decoded.bodies.len(), result.bodies.len());
        for (a, b) in decoded.bodies.iter().zip(&result.bodies) {
            assert_eq!((a.id, bits(a), a.sleeping), (b.id, bits(b), b.sleeping), "tick {}", request.tick);
        }
        if request.snapshot {
            self.gamer.clear();
        }
        for id in &decoded.removed {
            self.gamer.remove(id);
        }
        for b in &decoded.bodies {
            self.gamer.insert(b.id, *b);
        }
        // Fidelity: the gamer's copy is the world, bit for bit.
        for (id, mine) in &self.gamer {
            let world = self.world.state(*id).expect("the body exists");
            assert_eq!((bits(mine), mine.sleeping), (bits(&world), world.sleeping), "body {id}, tick {}", request.tick);
        }

        tally.ticks += 1;
        tally.request_bytes += self.request_bytes.len();
        tally.result_bytes += self.result_bytes.len();
        tally.json_request_bytes += serde_json::to_vec(request).expect("serializable").len();
        tally.json_result_bytes += serde_json::to_vec(&result).expect("serializable").len();
        tally.reported += result.bodies.len();
        tally.events += result.events.len();
        assert_eq!(decoded.events, result.events, "the events travel bit for bit");
    }

    fn asleep(&self) -> usize {
        self.gamer.values().filter(|b| b.sleeping).count()
    }
}

fn print_header() {
    println!(
        "{:<20} {:>5} {:>6} {:>9} | {:>8} {:>8} {:>8} {:>9} | {:>8} {:>8} {:>8} {:>9} | {:>6} {:>7} {:>7} {:>8} {:>7}",
        "scene",
        "ticks",
        "bodies",
        "reported",
        "results",
        "requests",
        "total",
        "B/changed",
        "JSON res",
        "JSON req",
        "JSON tot",
        "B/changed",
        "asleep",
        "enc µs",
        "dec µs",
        "step µs",
        "events"
    );
}

fn print_row(name: &str, bodies: usize, t: &Tally, asleep: Option<usize>) {
    let frames = (t.ticks as usize * bodies) as f64;
    let per = |bytes: usize| bytes as f64 / frames;
    let per_changed = |bytes: usize| if t.reported == 0 { 0.0 } else { bytes as f64 / t.reported as f64 };
    let micros = |d: Duration| d.as_secs_f64() * 1e6 / t.ticks as f64;
    println!(
        "{:<20} {:>5} {:>6} {:>9.1} | {:>8.3} {:>8.3} {:>8.3} {:>9.2} | {:>8.1} {:>8.2} {:>8.1} {:>9.1} | {:>6} {:>7.1} {:>7.1} {:>8.0} {:>7.1}",
        name,
        t.ticks,
        bodies,
        t.reported as f64 / t.ticks as f64,
        per(t.result_bytes),
        per(t.request_bytes),
        per(t.result_bytes + t.request_bytes),
        per_changed(t.result_bytes),
        per(t.json_result_bytes),
        per(t.json_request_bytes),
        per(t.json_result_bytes + t.json_request_bytes),
        per_changed(t.json_result_bytes),
        asleep.map_or("".to_owned(), |n| n.to_string()),
        micros(t.encode),
        micros(t.decode),
        micros(t.step),
        t.events as f64 / t.ticks as f64,
    );
}

fn add(a: &mut Tally, b: &Tally) {
    a.ticks += b.ticks;
    a.result_bytes += b.result_bytes;
    a.request_bytes += b.request_bytes;
    a.json_result_bytes += b.json_result_bytes;
    a.json_request_bytes += b.json_request_bytes;
    a.reported += b.reported;
    a.events += b.events;
    a.step += b.step;
    a.encode += b.encode;
    a.decode += b.decode;
}

/// 900 cubes dropped in a grid, settling, then pushed by a kinematic box.
fn cubes() {
    const PUSHER: BodyId = 10_000;
    const PUSH_FROM: u64 = 150;
    let mut rng = fastrand::Rng::with_seed(900);
    let mut add_bodies = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [40.0, 0.5, 40.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..900u64 {
        let (row, col) = ((i / 30) as f32, (i % 30) as f32);
        // Dropped from 1 to 3 m, each turned a little so they land on an edge and tumble.
        let (angle, tilt) = (rng.f32() * 1.5, (rng.f32() - 0.5) * 0.3);
        let (s, c) = ((angle / 2.0).sin(), (angle / 2.0).cos());
        add_bodies.push(BodyDesc {
            rotation: [tilt * c, s, tilt * s, c],
            ..BodyDesc::new(
                i + 1,
                Shape::Box { half_extents: [0.5; 3] },
                [col * 1.5 - 21.75, 1.5 + rng.f32() * 2.0, row * 1.5 - 21.75],
            )
        });
    }
    let pusher_at = |tick: u64| {
        let t = tick.saturating_sub(PUSH_FROM) as f32 * DT;
        // Through the grid at 4 m/s, weaving.
        [-26.0 + 4.0 * t, 1.0, -6.0 + 4.0 * (t * 0.5).sin()]
    };
    add_bodies.push(
        BodyDesc::new(PUSHER, Shape::Box { half_extents: [1.0; 3] }, pusher_at(0)).with_body_type(BodyType::Kinematic),
    );
    let dynamic = 900;

    let mut session = Session::new();
    let phases = [("cubes: falling", 0..60), ("cubes: settling", 60..PUSH_FROM), ("cubes: pushing", PUSH_FROM..TICKS)];
    let mut tallies = [Tally::default(); 3];
    for tick in 0..TICKS {
        let mut request = PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() };
        if tick == 0 {
            request.snapshot = true;
            request.add = add_bodies.clone();
        } else if tick >= PUSH_FROM {
            request.kinematic_targets =
                vec![KinematicTarget { id: PUSHER, position: pusher_at(tick), rotation: [0.0, 0.0, 0.0, 1.0] }];
        }
        let phase = phases.iter().position(|(_, range)| range.contains(&tick)).expect("a phase");
        session.tick(&request, &mut tallies[phase]);
        if tick == PUSH_FROM - 1 {
            println!("cubes asleep before the push: {}/{dynamic}", session.asleep());
        }
    }
    let mut total = Tally::default();
    for ((name, _), tally) in phases.iter().zip(&tallies) {
        print_row(name, dynamic, tally, None);
        add(&mut total, tally);
    }
    print_row("cubes: all", dynamic, &total, Some(session.asleep() - usize::from(session.gamer[&PUSHER].sleeping)));
}

/// 1,000 bodies in zero gravity, always awake.
fn awake() {
    let mut rng = fastrand::Rng::with_seed(1000);
    let mut range = |half: f32| (rng.f32() * 2.0 - 1.0) * half;
    let mut add_bodies = Vec::new();
    for i in 0..1000u64 {
        let (x, y, z) = ((i % 10) as f32, ((i / 10) % 10) as f32, (i / 100) as f32);
        let shape = if i % 2 == 0 { Shape::Box { half_extents: [0.4; 3] } } else { Shape::Sphere { radius: 0.4 } };
        add_bodies.push(BodyDesc {
            linvel: [range(1.5), range(1.5), range(1.5)],
            angvel: [range(2.0), range(2.0), range(2.0)],
            ..BodyDesc::new(i, shape, [x * 3.0, y * 3.0, z * 3.0])
        });
    }
    let snapshot = PhysicsStepRequest { gravity: Some([0.0; 3]), add: add_bodies, ..Default::default() };
    run_quiet_scene("awake: all", snapshot);
}

fn jointed() {
    let (add, joints) = scenes::rope_bridges();
    run_quiet_scene("jointed: all", PhysicsStepRequest { add, add_joints: joints, ..Default::default() });
}

/// Runs a scene that is only its snapshot (`snapshot`'s tick, dt and steps are set here)
/// and plain ticks after it, and prints its row.
fn run_quiet_scene(name: &str, snapshot: PhysicsStepRequest) {
    let bodies = snapshot.add.len();
    let mut session = Session::new();
    let mut tally = Tally::default();
    session.tick(&PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, ..snapshot }, &mut tally);
    for tick in 1..TICKS {
        session.tick(&PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() }, &mut tally);
    }
    print_row(name, bodies, &tally, Some(session.asleep()));
}

/// 1,000 bouncy balls that report their collisions (when `listening`).
fn events(listening: bool) {
    let snapshot =
        PhysicsStepRequest { gravity: Some([0.0; 3]), add: scenes::bouncing_balls(listening), ..Default::default() };
    run_quiet_scene(if listening { "events: all" } else { "events: unheard" }, snapshot);
}

/// A level's snapshot with a 100,000-triangle mesh: on a first connection, and on a
/// failover to a peer whose cache holds the mesh.
fn level() {
    let n = 224u32; // 224² × 2 = 100,352 triangles
    let vertices = (0..=n)
        .flat_map(|z| (0..=n).map(move |x| [x as f32 - 112.0, ((x * 13 + z * 7) % 17) as f32 * 0.02, z as f32 - 112.0]))
        .collect();
    let at = |x: u32, z: u32| z * (n + 1) + x;
    let indices: Vec<[u32; 3]> = (0..n)
        .flat_map(|z| {
            (0..n).flat_map(move |x| {
                [[at(x, z), at(x, z + 1), at(x + 1, z)], [at(x + 1, z), at(x, z + 1), at(x + 1, z + 1)]]
            })
        })
        .collect();
    let triangles = indices.len();
    let mesh = Shape::TriMesh { vertices, indices };
    let named = mesh.to_cached().expect("a level mesh is cached");
    let scene = |floor: Shape| {
        let mut add = vec![BodyDesc::new(0, floor, [0.0; 3]).with_body_type(BodyType::Fixed)];
        add.extend(
            (0..50u64).map(|i| BodyDesc::new(i + 1, Shape::Sphere { radius: 0.5 }, [i as f32 * 2.0 - 50.0, 3.0, 0.0])),
        );
        PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
    };
    let (first, failover) = (scene(mesh), scene(named));
    let packed = |r: &PhysicsStepRequest| {
        let mut bytes = Vec::new();
        encode_request(r, &mut bytes);
        bytes.len()
    };
    let json = |r: &PhysicsStepRequest| serde_json::to_vec(r).expect("serializable").len();
    // Both are accepted: the first fills a peer's cache, the second is answered from it.
    let mut cache = p2c2r_sim::shape_cache::ShapeCache::default();
    let budgets = p2c2r_sim::Budgets::default();
    let started = Instant::now();
    PhysicsWorld::new().step_cached(&first, &budgets, &mut cache).expect("the level is valid");
    let built = started.elapsed();
    let started = Instant::now();
    PhysicsWorld::new().step_cached(&failover, &budgets, &mut cache).expect("the cache holds the mesh");
    let named_step = started.elapsed();
    println!();
    println!("level with a {triangles}-triangle mesh and 50 balls, its snapshot:");
    println!("{:<28} {:>12} {:>12} {:>14}", "", "packed B", "JSON B", "first tick ms");
    println!(
        "{:<28} {:>12} {:>12} {:>14.1}",
        "first connection (mesh)",
        packed(&first),
        json(&first),
        built.as_secs_f64() * 1e3
    );
    println!(
        "{:<28} {:>12} {:>12} {:>14.1}",
        "failover (mesh by name)",
        packed(&failover),
        json(&failover),
        named_step.as_secs_f64() * 1e3
    );
    println!(
        "ratio (first / failover)     {:>12.0} {:>12.0}",
        packed(&first) as f64 / packed(&failover) as f64,
        json(&first) as f64 / json(&failover) as f64
    );
}

fn main() {
    print_header();
    cubes();
    awake();
    jointed();
    events(true);
    events(false);
    level();
}
