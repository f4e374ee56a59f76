//! A fuzzer for every binary decoder that runs on stable Rust, as a plain test.
//!
//! A seeded mutator (bit flips, bytes set to interesting values, truncation, extension,
//! splicing two seeds, inserted absurd varints, chunks repeated or cut) works over a corpus
//! of valid encodings, and purely random inputs are mixed in. Each input goes to:
//!
//! - `decode_request`;
//! - a fresh `ResultDecoder` (keyframes only get far);
//! - a `ResultDecoder` primed with a session's previous result, so that mutated deltas
//!   reach the delta decoding. After a failed decode it must be unchanged (the gamer can
//!   resync); after a successful one it is primed again;
//! - `binary::decode`, the frame decoder (every header variant, packed payloads).
//!
//! A panic fails the test; every error must display a non-empty message. Iterations per
//! decoder come from `P2C2R_FUZZ_ITERATIONS` (the default keeps the debug test short; CI
//! runs it, and a release run takes ten million per decoder:
//! `P2C2R_FUZZ_ITERATIONS=10000000 cargo test --release -p p2c2r_protocol --test fuzz -- --nocapture`).
//! `P2C2R_FUZZ_SEED` changes the seed. To fuzz another decoder, give [`fuzz`] its corpus
//! and a closure.

use std::time::Instant;

use bytes::Bytes;
use p2c2r_protocol::binary::{self, FrameHeader};
use p2c2r_protocol::packed::{PackedError, ResultDecoder, ResultEncoder, decode_request, encode_request};
use p2c2r_protocol::physics::{
    ApplyForce, ApplyImpulse, BodyDesc, BodyState, BodyType, KinematicTarget, PhysicsStepRequest, PhysicsStepResult,
    SetPose, SetVelocity, Shape,
};
use p2c2r_protocol::quantize::snap;

const DEFAULT_ITERATIONS: u64 = 50_000;

/// Interesting bytes: the edges of varints, signs and flags.
const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x50, 0x51];

/// Varints that no honest frame holds.
const ABSURD_VARINTS: [&[u8]; 6] = [
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
    &[0x80, 0x00],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xd0, 0x86, 0x03],
];

struct Mutator {
    rng: fastrand::Rng,
}

impl Mutator {
    /// The next input: purely random bytes (one in sixteen), or a corpus seed mutated one
    /// to four times.
    fn next(&mut self, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        let rng = &mut self.rng;
        if corpus.is_empty() || rng.u8(..16) == 0 {
            let len = if rng.bool() { rng.usize(..32) } else { rng.usize(..2048) };
            out.extend((0..len).map(|_| rng.u8(..)));
            // Often with a real header, to get past the first checks.
            if len >= 2 && rng.bool() {
                out[0] = if rng.bool() { 0x50 } else { 0x51 };
                out[1] = 1;
            }
            return;
        }
        out.extend_from_slice(&corpus[rng.usize(..corpus.len())]);
        for _ in 0..1 + rng.usize(..4) {
            let len = out.len();
            match rng.u8(..10) {
                0 if len > 0 => {
                    let i = rng.usize(..len);
                    out[i] ^= 1 << rng.u8(..8);
                }
                1 if len > 0 => {
                    let i = rng.usize(..len);
                    out[i] = INTERESTING[rng.usize(..INTERESTING.len())];
                }
                2 if len > 0 => {
                    let i = rng.usize(..len);
                    out[i] = rng.u8(..);
                }
                3 => out.truncate(rng.usize(..=len)),
                4 => {
                    let extra = rng.usize(..64);
                    out.extend((0..extra).map(|_| rng.u8(..)));
                }
                5 => {
                    // Splice: this seed's head, another seed's tail.
                    let other = &corpus[rng.usize(..corpus.len())];
                    out.truncate(rng.usize(..=len));
                    out.extend_from_slice(&other[rng.usize(..=other.len())..]);
                }
                6 => {
                    let varint = ABSURD_VARINTS[rng.usize(..ABSURD_VARINTS.len())];
                    let at = rng.usize(..=len);
                    if rng.bool() {
                        out.splice(at..at, varint.iter().copied());
                    } else {
                        let end = (at + varint.len()).min(len);
                        out.splice(at..end, varint.iter().copied());
                    }
                }
                7 if len > 0 => {
                    // Repeat a chunk.
                    let start = rng.usize(..len);
                    let end = (start + 1 + rng.usize(..16)).min(len);
                    let chunk = out[start..end].to_vec();
                    out.splice(start..start, chunk);
                }
                8 if len > 0 => {
                    let start = rng.usize(..len);
                    let end = (start + 1 + rng.usize(..16)).min(len);
                    out.drain(start..end);
                }
                _ if len > 2 => {
                    // A flag or count byte near the front, where the structure is decided.
                    let i = 2 + rng.usize(..(len - 2).min(12));
                    out[i] = rng.u8(..);
                }
                _ => {}
            }
        }
    }
}

/// Feeds `iterations` inputs (mutated from `corpus`, or random) to `decode`, which returns
/// `Err(message)` for an input it refuses. Panics propagate (the test fails); an empty
/// message fails it too. Prints the count run and how many decoded.
fn fuzz(name: &str, corpus: &[Vec<u8>], iterations: u64, mut decode: impl FnMut(&[u8]) -> Result<(), String>) {
    let seed = std::env::var("P2C2R_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f022);
    let mut mutator = Mutator { rng: fastrand::Rng::with_seed(seed) };
    let (mut ok, mut refused) = (0u64, 0u64);
    let mut input = Vec::new();
    let start = Instant::now();
    for _ in 0..iterations {
        mutator.next(corpus, &mut input);
        match decode(&input) {
            Ok(()) => ok += 1,
            Err(message) => {
                assert!(!message.is_empty(), "{name}: an error without a message for {input:02x?}");
                refused += 1;
            }
        }
    }
    println!(
        "{name}: {iterations} inputs in {:.1} s: {ok} decoded, {refused} refused, 0 panics",
        start.elapsed().as_secs_f64()
    );
}

fn iterations() -> u64 {
    std::env::var("P2C2R_FUZZ_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_ITERATIONS)
}

fn message(e: PackedError) -> String {
    e.to_string()
}

fn request_corpus() -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(1);
    let mut f = |scale: f32| (rng.f32() - 0.5) * scale;
    let bodies: Vec<BodyDesc> = (0..24u64)
        .map(|i| {
            let shape = match i % 3 {
                0 => Shape::Box { half_extents: [0.5, 0.25, 1.0] },
                1 => Shape::Sphere { radius: 0.3 },
                _ => Shape::Capsule { half_height: 0.4, radius: 0.2 },
            };
            let body_type = [BodyType::Dynamic, BodyType::Kinematic, BodyType::Fixed][(i % 5 % 3) as usize];
            BodyDesc {
                body_type,
                rotation: if i % 4 == 0 { [0.0, 0.0, 0.0, 1.0] } else { [f(2.0), f(2.0), f(2.0), 1.0] },
                linvel: if i % 2 == 0 { [f(10.0), f(10.0), f(10.0)] } else { [0.0; 3] },
                angvel: if i % 3 == 0 { [f(4.0), 0.0, f(4.0)] } else { [0.0; 3] },
                mass: (i % 5 == 1).then_some(3.5),
                density: (i % 7 == 2).then_some(250.0),
                friction: if i % 2 == 0 { 0.5 } else { 0.8 },
                restitution: if i % 3 == 1 { 0.4 } else { 0.0 },
                linear_damping: if i % 4 == 1 { 0.1 } else { 0.0 },
                angular_damping: if i % 5 == 3 { 0.2 } else { 0.0 },
                ccd: i % 6 == 0,
                sleeping: i % 8 == 5,
                ..BodyDesc::new(if i == 23 { u64::MAX } else { i * 7 }, shape, [f(200.0), f(20.0) + 10.0, f(200.0)])
            }
        })
        .collect();
    let requests = [
        PhysicsStepRequest { tick: 1, dt: 1.0 / 60.0, steps: 1, ..Default::default() },
        PhysicsStepRequest {
            tick: 0,
            snapshot: true,
            gravity: Some([0.0, -9.81, 0.0]),
            dt: 1.0 / 60.0,
            steps: 1,
            add: bodies.clone(),
            ..Default::default()
        },
        PhysicsStepRequest {
            tick: 1 << 40,
            dt: 1.0 / 240.0,
            steps: 4,
            add: bodies[..3].to_vec(),
            remove: vec![0, 14, u64::MAX, 3],
            set_pose: vec![
                SetPose { id: 7, position: [1.0, 2.0, 3.0], rotation: [0.0, 0.6, 0.0, 0.8] },
                SetPose { id: 21, position: [0.0; 3], rotation: [0.0, 0.0, 0.0, 1.0] },
            ],
            set_velocity: vec![SetVelocity { id: 7, linvel: [0.0, 1.0, 0.0], angvel: [0.5, 0.0, -0.25] }],
            forces: vec![ApplyForce { id: 7, force: [0.0, 100.0, -0.0], torque: [1.0, 2.0, 3.0] }],
            impulses: vec![ApplyImpulse { id: 14, impulse: [5.0, 0.0, 0.0], torque_impulse: [0.0; 3] }],
            kinematic_targets: vec![
                KinematicTarget { id: 7, position: [4.0, 1.0, -2.0], rotation: [0.0, 0.0, 0.38268343, 0.9238795] },
                KinematicTarget { id: 35, position: [-4.0, 1.0, 2.0], rotation: [0.0, 0.0, 0.0, 1.0] },
            ],
            ..Default::default()
        },
        // Every tagged shape and extra property, and the second list mask.
        PhysicsStepRequest {
            tick: 3,
            dt: 1.0 / 60.0,
            steps: 1,
            add: new_shapes_and_properties(),
            wake: vec![7, 14],
            sleep: vec![21],
            add_joints: joints(),
            remove_joints: vec![2, 9],
            touching: vec![[7, 14], [7, 99], [21, 100]],
            ..Default::default()
        },
        PhysicsStepRequest {
            tick: 77,
            dt: 0.5,
            steps: 0,
            kinematic_targets: (0..30)
                .map(|i| KinematicTarget { id: i * 3, position: [i as f32, 0.5, 0.0], rotation: [0.0, 0.0, 0.0, 1.0] })
                .collect(),
            ..Default::default()
        },
    ];
    requests
        .iter()
        .map(|r| {
            let mut bytes = Vec::new();
            encode_request(r, &mut bytes);
            decode_request(&bytes).expect("a seed decodes");
            bytes
        })
        .collect()
}

/// A body of each shape past box, ball and y capsule, and bodies with the extra
/// properties set.
fn new_shapes_and_properties() -> Vec<BodyDesc> {
    use p2c2r_protocol::physics::{CombineRule, CompoundPart, MassProperties, Offset};
    let hull =
        Shape::ConvexHull { points: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5; 3]] };
    let part = |shape, position| CompoundPart { shape, position, rotation: [0.0, 0.6, 0.0, 0.8] };
    let shapes = [
        Shape::CapsuleX { half_height: 0.4, radius: 0.2 },
        Shape::CapsuleZ { half_height: 0.4, radius: 0.2 },
        Shape::Cylinder { half_height: 0.5, radius: 0.25 },
        Shape::Cone { half_height: 0.5, radius: 0.25 },
        hull.clone(),
        Shape::TriMesh {
            vertices: vec![[0.0; 3], [4.0, 0.0, 0.0], [0.0, 0.0, 4.0], [4.0, 1.0, 4.0], [2.0, 3.0, 2.0]],
            indices: vec![[0, 2, 1], [1, 2, 3], [0, 4, 1], [300, 1, 2]],
        },
        Shape::Heightfield {
            rows: 3,
            columns: 2,
            heights: vec![0.0, 1.0, 0.5, -0.5, 2.0, 0.25],
            scale: [8.0, 1.5, 8.0],
        },
        Shape::Compound {
            parts: vec![
                part(Shape::Box { half_extents: [0.5, 0.1, 0.5] }, [0.0; 3]),
                part(Shape::Cylinder { half_height: 0.2, radius: 0.1 }, [0.0, 0.3, 0.0]),
                part(hull, [1.0, 0.0, 0.0]),
            ],
        },
    ];
    let mut bodies: Vec<BodyDesc> =
        shapes.into_iter().zip(0..).map(|(shape, i)| BodyDesc::new(i * 7 + 1, shape, [i as f32, 1.0, 0.0])).collect();
    bodies.push(BodyDesc {
        collider_offset: Some(Offset { position: [0.0, 0.5, 0.0], rotation: [0.0, 0.0, 0.6, 0.8] }),
        gravity_scale: -0.5,
        locked_axes: 0b10_1010,
        dominance: -7,
        additional_mass: 1.5,
        mass_properties: Some(MassProperties {
            mass: 2.0,
            center_of_mass: [0.1, 0.0, 0.0],
            principal_inertia: [0.5, 0.5, 0.25],
            principal_inertia_frame: [0.0, 0.0, 0.0, 1.0],
        }),
        friction_combine: CombineRule::Multiply,
        restitution_combine: CombineRule::Max,
        ..BodyDesc::new(99, Shape::Box { half_extents: [0.3; 3] }, [0.0, 2.0, 0.0])
            .with_body_type(BodyType::KinematicVelocity)
    });
    bodies.push(BodyDesc { dominance: 127, ..BodyDesc::new(100, Shape::Sphere { radius: 0.3 }, [1.0, 2.0, 0.0]) });
    bodies.push(BodyDesc::new(
        102,
        Shape::Cached { sha256: p2c2r_protocol::physics::ShapeHash([0xab; 32]), elements: 1_000 },
        [0.0; 3],
    ));
    bodies.push(BodyDesc {
        active_events: p2c2r_protocol::physics::active_events::ALL,
        contact_force_threshold: 10.0,
        ..BodyDesc::new(101, Shape::Sphere { radius: 0.3 }, [2.0, 2.0, 0.0])
    });
    bodies
}

/// A joint of each kind, with and without a second body, limits, motors and contacts.
fn joints() -> Vec<p2c2r_protocol::physics::JointDesc> {
    use p2c2r_protocol::physics::{JointDesc, JointKind, JointMotor};
    let motor =
        JointMotor { target_position: 0.5, target_velocity: -1.0, stiffness: 3.0, damping: 0.5, max_force: Some(9.0) };
    let kinds = [
        JointKind::Fixed,
        JointKind::Revolute { axis: [0.0, 1.0, 0.0], limits: Some([-0.5, 0.5]), motor: Some(motor) },
        JointKind::Prismatic {
            axis: [1.0, 0.0, 0.0],
            limits: None,
            motor: Some(JointMotor { max_force: None, ..motor }),
        },
        JointKind::Spherical,
        JointKind::Rope { max_distance: 3.0 },
        JointKind::Spring { rest_length: 1.0, stiffness: 20.0, damping: 0.5 },
    ];
    kinds
        .into_iter()
        .zip(0u64..)
        .map(|(kind, i)| JointDesc {
            id: i * 5,
            body1: i,
            body2: (i % 2 == 0).then_some(i + 100),
            kind,
            anchor1: [0.0, 0.5, 0.0],
            anchor2: [0.25, 0.0, -0.0],
            contacts_enabled: i % 3 != 0,
        })
        .collect()
}

/// Bodies moving for a few ticks: falling, spinning, sleeping, appearing and leaving.
fn session(ticks: u64, bodies: u64, seed: u64) -> Vec<PhysicsStepResult> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dt = 1.0f32 / 60.0;
    let mut states: Vec<BodyState> = (0..bodies)
        .map(|i| BodyState {
            id: i * 5 + (i % 4),
            position: [rng.f32() * 40.0 - 20.0, 5.0 + rng.f32() * 10.0, rng.f32() * 40.0 - 20.0],
            rotation: [rng.f32() - 0.5, rng.f32() - 0.5, rng.f32() - 0.5, rng.f32() - 0.5],
            linvel: [rng.f32() - 0.5, 0.0, rng.f32() - 0.5],
            angvel: if i % 3 == 0 { [0.0; 3] } else { [rng.f32(), rng.f32() - 0.5, 0.2] },
            sleeping: false,
        })
        .collect();
    let mut results = Vec::new();
    for tick in 0..ticks {
        for (i, s) in states.iter_mut().enumerate() {
            if s.sleeping {
                continue;
            }
            s.linvel[1] -= 9.81 * dt;
            if i % 5 == 0 {
                // A collision now and then.
                s.linvel[0] = -s.linvel[0] + rng.f32();
                s.angvel[2] += rng.f32() - 0.5;
            }
            for k in 0..3 {
                s.position[k] += s.linvel[k] * dt;
            }
            let [x, y, z, w] = s.rotation;
            let h = s.angvel.map(|a| a * dt * 0.5);
            s.rotation = [
                x + w * h[0] + h[1] * z - h[2] * y,
                y + w * h[1] + h[2] * x - h[0] * z,
                z + w * h[2] + h[0] * y - h[1] * x,
                w - h[0] * x - h[1] * y - h[2] * z,
            ];
            if rng.u8(..40) == 0 {
                s.sleeping = true;
                s.linvel = [0.0; 3];
                s.angvel = [0.0; 3];
            }
            *s = snap(s);
        }
        let mut reported: Vec<BodyState> = states.iter().filter(|s| !s.sleeping || rng.u8(..4) == 0).copied().collect();
        reported.retain(|_| rng.u8(..10) != 0);
        let removed = if tick % 3 == 2 { vec![1_000 + tick, u64::MAX - tick] } else { vec![] };
        let digest = (tick % 2 == 0).then(|| format!("{:016x}", rng.u64(..)));
        let events = events(&mut rng, tick);
        results.push(PhysicsStepResult { tick, bodies: reported, removed, digest, events, ..Default::default() });
    }
    results
}

/// A tick's worth of events of every kind, in the order a world reports them.
fn events(rng: &mut fastrand::Rng, tick: u64) -> Vec<p2c2r_protocol::physics::PhysicsEvent> {
    use p2c2r_protocol::physics::{EventKind, PhysicsEvent};
    let mut events = Vec::new();
    for step in 0..(tick % 3) as u32 {
        for body1 in 0..rng.u64(0..4) {
            let body2 = body1 + 1 + rng.u64(0..1000);
            let kind = match rng.u8(..3) {
                0 => EventKind::Stopped { sensor: rng.bool(), removed: rng.bool() },
                1 => EventKind::Started { sensor: rng.bool() },
                _ => EventKind::ContactForce {
                    total_force: [rng.f32(), 0.0, -rng.f32()],
                    total_force_magnitude: rng.f32() * 1e3,
                    max_force_direction: [0.0, 1.0, 0.0],
                    max_force_magnitude: rng.f32() * 1e3,
                },
            };
            events.push(PhysicsEvent { step, body1, body2, kind });
        }
    }
    events.sort_by_key(|e| (e.step, e.kind.rank(), e.body1, e.body2));
    events
}

/// Packed results of a few sessions (keyframes and deltas), and a decoder primed with the
/// second-to-last result of the first session together with several deltas valid against
/// it.
fn result_corpus() -> (Vec<Vec<u8>>, ResultDecoder, Vec<Vec<u8>>) {
    let mut corpus = Vec::new();
    let mut primed = ResultDecoder::new();
    let mut deltas = Vec::new();
    for (n, (ticks, bodies)) in [(8, 40), (5, 3), (4, 120)].into_iter().enumerate() {
        let results = session(ticks, bodies, n as u64 + 10);
        let mut encoder = ResultEncoder::new();
        let mut decoder = ResultDecoder::new();
        for (i, result) in results.iter().enumerate() {
            let mut bytes = Vec::new();
            if n == 0 && i + 1 == results.len() {
                // Several different deltas against the same baseline.
                primed = decoder.clone();
                for variant in 0..6usize {
                    let mut other = result.clone();
                    other.bodies.retain(|b| !(b.id as usize + variant).is_multiple_of(3));
                    let mut bytes = Vec::new();
                    encoder.clone().encode(&other, false, 1.0 / 60.0, &mut bytes).unwrap();
                    primed.clone().decode(&bytes).expect("a seed decodes");
                    deltas.push(bytes);
                }
            }
            encoder.encode(result, i == 0, 1.0 / 60.0, &mut bytes).unwrap();
            decoder.decode(&bytes).unwrap();
            corpus.push(bytes);
        }
    }
    (corpus, primed, deltas)
}

#[test]
fn every_binary_decoder_survives_mutated_and_random_input() {
    let iterations = iterations();
    let requests = request_corpus();
    fuzz("decode_request", &requests, iterations, |bytes| decode_request(bytes).map(drop).map_err(message));

    let (results, primed, deltas) = result_corpus();
    fuzz("ResultDecoder (fresh)", &results, iterations, |bytes| {
        ResultDecoder::new().decode(bytes).map(drop).map_err(message)
    });

    let mut corpus = deltas.clone();
    corpus.extend_from_slice(&results);
    let mut decoder = primed.clone();
    fuzz("ResultDecoder (primed with a baseline)", &corpus, iterations, |bytes| match decoder.decode(bytes) {
        Ok(_) => {
            decoder = primed.clone();
            Ok(())
        }
        Err(e) => {
            assert_eq!(decoder, primed, "a failed decode changed the decoder: {e}");
            Err(message(e))
        }
    });

    // Binary frames (the coordinator decodes these from anyone who negotiated them):
    // every header variant, with payloads from the corpora above.
    let frames = frame_corpus(&requests, &results);
    fuzz("binary::decode (frames)", &frames, iterations, |bytes| {
        binary::decode(Bytes::copy_from_slice(bytes)).map(drop).map_err(|e| e.to_string())
    });
}

/// Valid binary frames of every kind, carrying packed payloads.
fn frame_corpus(requests: &[Vec<u8>], results: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let long = "s".repeat(200);
    let headers = [
        FrameHeader::TaskRequest {
            task_id: "p:1",
            task_type: "physics_step",
            session_id: Some("s"),
            deadline_ms: Some(250),
        },
        FrameHeader::TaskRequest { task_id: "t", task_type: "x", session_id: None, deadline_ms: None },
        FrameHeader::TaskAssignment {
            assignment_id: "98.1",
            attempt: 3,
            deadline_ms: Some(u64::MAX),
            task_id: "p:1",
            task_type: "physics_step",
            session_id: Some(&long),
            gamer_id: Some("g"),
        },
        FrameHeader::TaskResult { task_id: "98.1", attempt: Some(1), peer_id: None },
        FrameHeader::TaskResult { task_id: "t", attempt: None, peer_id: Some("peer") },
    ];
    let payloads = requests.iter().chain(results).take(8).map(Vec::as_slice).chain([&[][..]]);
    payloads.zip(headers.iter().cycle()).map(|(payload, header)| binary::encode_parts(header, payload)).collect()
}
