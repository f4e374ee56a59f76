//! End to end: the real coordinator, real peers and a gamer (the real gamer client) over
//! loopback sockets.
//!
//! - a ball falls as physics says and a stack settles, through the coordinator;
//! - the peer holding a session is killed mid-run: the gamer gets one resync error,
//!   sends a snapshot, and receives every later tick;
//! - a session with a joint, a trigger zone and listening bodies fails over the same way,
//!   its snapshot carrying the touching pairs: every event is raised exactly once;
//! - a level mesh is sent once per peer: a resync names it by its content hash, and a
//!   peer that lacks it asks for it (`missing_shape`) once;
//! - two peers fed the same ticks return identical bytes;
//! - peers reconnect when the coordinator restarts on the same address.

use std::collections::BTreeMap;

use p2c2r_protocol::physics::{BodyDesc, BodyState, BodyType, PhysicsStepRequest, Shape};
use p2c2r_protocol::{ErrorCode, to_payload};
use peer::PeerConfig;

mod common;

use common::{gamer, start_peer, success_json, within};

const DT: f32 = 1.0 / 60.0;

fn ground() -> BodyDesc {
    BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0]).with_body_type(BodyType::Fixed)
}

const BALL: u64 = 100;
const BALL_Y0: f32 = 20.0;

/// A ball high up, away from a stack of five boxes.
fn scene() -> Vec<BodyDesc> {
    let mut bodies = vec![ground(), BodyDesc::new(BALL, Shape::Sphere { radius: 0.5 }, [8.0, BALL_Y0, 0.0])];
    for i in 0..5u64 {
        bodies.push(BodyDesc::new(i + 1, Shape::Box { half_extents: [0.5; 3] }, [0.0, 0.5 + i as f32, 0.0]));
    }
    bodies
}

fn tick(t: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick: t, dt: DT, steps: 1, ..Default::default() }
}

/// A snapshot rebuilding the scene from the latest states the gamer holds.
fn resync_snapshot(t: u64, latest: &BTreeMap<u64, BodyState>) -> PhysicsStepRequest {
    let mut add = vec![ground()];
    for desc in scene().into_iter().skip(1) {
        let s = latest[&desc.id];
        add.push(BodyDesc {
            position: s.position,
            rotation: s.rotation,
            linvel: s.linvel,
            angvel: s.angvel,
            sleeping: s.sleeping,
            ..desc
        });
    }
    PhysicsStepRequest { tick: t, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

fn check_settled(latest: &BTreeMap<u64, BodyState>) {
    for i in 0..5u64 {
        let b = latest[&(i + 1)];
        assert!((b.position[1] - (0.5 + i as f32)).abs() < 0.05, "box {i} at {:?}", b.position);
        assert!(b.position[0].abs() < 0.05 && b.position[2].abs() < 0.05, "box {i} slid: {:?}", b.position);
    }
    let ball = latest[&BALL];
    assert!((ball.position[1] - 0.5).abs() < 0.05, "the ball rests on the ground: {:?}", ball.position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sessions_peer_costs_one_resync() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peers = [start_peer(&url, "peer-a").await, start_peer(&url, "peer-b").await];
    let mut gamer = gamer::connect(&url, "gamer-1").await;

    let mut latest = BTreeMap::new();
    let (first, _) = gamer.physics("s", &PhysicsStepRequest { add: scene(), snapshot: true, ..tick(0) }).await.unwrap();
    latest.extend(first.bodies.iter().map(|b| (b.id, *b)));
    for t in 1..=60u64 {
        let (r, _) = gamer.physics("s", &tick(t)).await.unwrap();
        assert_eq!(r.tick, t);
        latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
        // Free fall until it nears the ground: y = y0 − ½g(t·dt)², within the integrator's lead.
        let time = (t + 1) as f32 * DT; // the snapshot tick stepped once too
        let expected = BALL_Y0 - 0.5 * 9.81 * time * time;
        let y = latest[&BALL].position[1];
        assert!((y - expected).abs() <= 9.81 * DT * time / 2.0 + 1e-3, "tick {t}: ball at {y}, expected {expected}");
    }

    // Kill the peer that holds the session.
    // Peers key sessions by gamer and session id together; the coordinator names the
    // gamer to peers by an opaque alias, not by its id.
    let holder = peers
        .iter()
        .position(|p| p.session_keys().iter().any(|k| k.ends_with("/s")))
        .expect("one peer holds the session");
    let keys = peers[holder].session_keys();
    assert!(keys.iter().all(|k| !k.contains("gamer-1")), "peers never see the gamer's id: {keys:?}");
    let key = &keys[0];
    let survivor = 1 - holder;
    assert!(!peers[survivor].sessions().contains(key));
    peers[holder].kill();

    let mut resyncs = 0;
    let mut t = 61u64;
    while t <= 360 {
        match gamer.physics("s", &tick(t)).await {
            Ok((r, raw)) => {
                assert_eq!(r.tick, t);
                assert_eq!(raw.peer_id.as_deref(), Some(peers[survivor].peer_id()));
                latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
                t += 1;
            }
            Err(e) => {
                assert!(e.resync, "only resync errors are expected: {e:?}");
                assert!(matches!(e.code, ErrorCode::UnknownSession | ErrorCode::OutOfOrder), "{e:?}");
                resyncs += 1;
                assert_eq!(resyncs, 1, "one resync is enough");
                let (r, _) = gamer.physics("s", &resync_snapshot(t, &latest)).await.unwrap();
                assert_eq!(r.tick, t);
                latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
                t += 1;
            }
        }
    }
    assert_eq!(resyncs, 1, "losing the session's peer must cost exactly one resync");
    assert!(peers[survivor].sessions().contains(key));
    check_settled(&latest);

    for p in peers {
        p.shutdown().await;
    }
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_fed_the_same_ticks_return_identical_bytes() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let mut gamer = gamer::connect(&url, "gamer-det").await;
    let requests: Vec<PhysicsStepRequest> =
        std::iter::once(PhysicsStepRequest { add: scene(), snapshot: true, ..tick(0) })
            .chain((1..=240).map(tick))
            .collect();

    // Only one peer is connected at a time, so each session surely runs on its own peer.
    let mut outputs = Vec::new();
    for (peer_id, session) in [("det-a", "run-a"), ("det-b", "run-b")] {
        let peer = start_peer(&url, peer_id).await;
        let mut bytes = Vec::new();
        for request in &requests {
            let r = gamer.run("physics_step", Some(session), to_payload(request).unwrap()).await;
            assert_eq!(r.peer_id.as_deref(), Some(peer_id));
            let json = success_json(&r);
            assert!(json.starts_with(r#"{"status":"success""#), "{json}");
            bytes.push(json.to_owned());
        }
        outputs.push(bytes);
        peer.shutdown().await;
    }
    assert_eq!(outputs[0].len(), requests.len());
    for (t, (a, b)) in outputs[0].iter().zip(&outputs[1]).enumerate() {
        assert_eq!(a, b, "tick {t} differs between the two peers");
    }
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_reconnect_after_the_coordinator_restarts() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let addr = coord.local_addr();
    let url = coord.url();
    let peer = start_peer(&url, "peer-restart").await;
    {
        let mut gamer = gamer::connect(&url, "gamer-before").await;
        let r = gamer.run("physics", None, to_payload(&serde_json::json!({"num_objects": 10})).unwrap()).await;
        assert!(success_json(&r).contains("physics_processed"));
    }

    coord.shutdown().await;
    within("the peer to notice", peer.wait_for(|s| !s.connected)).await;

    // The coordinator comes back on the same address; the peer finds it on its own.
    let coord = coordinator::spawn(addr, coordinator::Config::default()).await.unwrap();
    within("the peer to register again", peer.wait_for(|s| s.connected && s.registrations >= 2)).await;
    let mut gamer = gamer::connect(&coord.url(), "gamer-after").await;
    let r = gamer.run("physics", None, to_payload(&serde_json::json!({"num_objects": 10})).unwrap()).await;
    assert_eq!(r.peer_id.as_deref(), Some("peer-restart"));
    assert!(success_json(&r).contains("physics_processed"));

    peer.shutdown().await;
    coord.shutdown().await;
}

/// Packed physics: the same ticks through a peer on binary frames and a peer on JSON
/// frames (the packed payloads then travel base64-wrapped) give byte-identical packed
/// results, and those decode to exactly the JSON results a third peer returns for the
/// same requests sent as JSON (snapped to the lattice, as packing does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_results_are_the_same_bytes_on_either_wire_and_decode_to_the_json_results() {
    use p2c2r_protocol::packed::{ResultDecoder, encode_request};
    use p2c2r_protocol::physics::PhysicsStepResult;
    use p2c2r_protocol::{Encoding, Payload, quantize::snap_request};

    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let mut gamer = gamer::connect(&url, "gamer-packed").await;
    let requests: Vec<PhysicsStepRequest> =
        std::iter::once(PhysicsStepRequest { add: scene(), snapshot: true, ..tick(0) })
            .chain((1..=180).map(tick))
            .collect();

    let mut packed_runs: Vec<Vec<Vec<u8>>> = Vec::new();
    for (peer_id, wire) in [("packed-bin", Encoding::Binary), ("packed-json", Encoding::Json)] {
        let peer = peer::spawn(PeerConfig {
            coordinator_url: url.clone(),
            peer_id: Some(peer_id.into()),
            wire,
            ..Default::default()
        })
        .await;
        within("the peer to register", peer.wait_for(|s| s.connected)).await;
        let mut frames = Vec::new();
        for request in &requests {
            let mut bytes = Vec::new();
            encode_request(request, &mut bytes);
            let r = gamer.run("physics_step", Some(peer_id), Payload::binary(bytes)).await;
            assert_eq!(r.peer_id.as_deref(), Some(peer_id));
            let p2c2r_client::TaskReply::Success(payload) = &r.reply else { panic!("{:?}", r.reply) };
            frames.push(payload.binary_bytes().expect("a packed answer").into_owned());
        }
        packed_runs.push(frames);
        peer.shutdown().await;
    }
    assert_eq!(packed_runs[0], packed_runs[1], "the same bytes whichever frames carried them");

    let peer = start_peer(&url, "json-run").await;
    let mut decoder = ResultDecoder::new();
    for (t, (request, packed)) in requests.iter().zip(&packed_runs[0]).enumerate() {
        let r = gamer.run("physics_step", Some("json-run"), to_payload(&snap_request(request)).unwrap()).await;
        let json: PhysicsStepResult = serde_json::from_str(success_json(&r)).unwrap();
        let decoded = decoder.decode(packed).unwrap_or_else(|e| panic!("tick {t}: {e}"));
        assert_eq!(decoded, json, "tick {t}: the packed result is the JSON result");
    }
    peer.shutdown().await;
    let total: usize = packed_runs[0].iter().map(Vec::len).sum();
    println!("{} packed ticks: {total} bytes", requests.len());
    coord.shutdown().await;
}

/// A world too large for one chunk (1,500 bodies: the snapshot and every answer are well
/// over 64 KiB) travels in chunks both ways, coordinator to peer and back, and comes back
/// byte for byte as a local world steps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_world_larger_than_a_chunk_travels_in_chunks_and_comes_back_byte_for_byte() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peer = start_peer(&url, "chunky").await;
    let mut gamer = gamer::connect(&url, "gamer-big").await;
    let mut add = vec![ground()];
    for i in 0..1500u64 {
        let position = [(i % 40) as f32 - 20.0, 2.0 + (i / 40) as f32, 0.0];
        add.push(BodyDesc::new(1000 + i, Shape::Sphere { radius: 0.25 }, position));
    }
    let mut reference = p2c2r_sim::physics::PhysicsWorld::new();
    for t in 0..20 {
        let request = if t == 0 { PhysicsStepRequest { add: add.clone(), snapshot: true, ..tick(0) } } else { tick(t) };
        let expected = serde_json::to_string(&reference.step(&request).unwrap()).unwrap();
        let r = gamer.run("physics_step", Some("big"), to_payload(&request).unwrap()).await;
        assert!(expected.len() > p2c2r_protocol::chunk::CHUNK_BYTES, "tick {t}: {} bytes", expected.len());
        assert_eq!(success_json(&r), expected, "tick {t}");
    }
    let metrics = coord.metrics_text();
    let count = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok());
    assert!(count("p2c2r_chunked_frames_sent_total ").is_some_and(|n| n >= 1), "{metrics}");
    assert!(count("p2c2r_chunked_frames_received_total ").is_some_and(|n| n >= 20), "{metrics}");
    peer.shutdown().await;
    coord.shutdown().await;
}

/// Every shape and body property beyond boxes, balls and y capsules, through a worker
/// peer, as JSON: each tick comes back byte for byte as a local world steps it (the local
/// fallback's engine), so a session with them can move between peers and the gamer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_shapes_and_body_properties_come_back_from_a_peer_byte_for_byte() {
    use p2c2r_protocol::physics::{CompoundPart, MassProperties, Offset, locked_axes};
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peer = start_peer(&url, "shapely").await;
    let mut gamer = gamer::connect(&url, "gamer-shapes").await;
    let hull = Shape::ConvexHull { points: vec![[0.0; 3], [0.6, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.6]] };
    let part = |shape, position| CompoundPart { shape, position, rotation: [0.0, 0.0, 0.0, 1.0] };
    let fixed = |id, shape, position| BodyDesc::new(id, shape, position).with_body_type(BodyType::Fixed);
    let add = vec![
        fixed(
            1,
            Shape::Heightfield {
                rows: 3,
                columns: 3,
                heights: vec![0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.0, 0.5, 1.0],
                scale: [30.0, 1.0, 30.0],
            },
            [0.0; 3],
        ),
        fixed(
            2,
            Shape::TriMesh { vertices: vec![[0.0; 3], [4.0, 1.0, 0.0], [0.0, 0.0, 4.0]], indices: vec![[0, 2, 1]] },
            [-8.0, 0.2, 0.0],
        ),
        BodyDesc::new(10, Shape::Cylinder { half_height: 0.4, radius: 0.3 }, [-6.0, 3.0, 0.0]),
        BodyDesc::new(11, Shape::Cone { half_height: 0.4, radius: 0.3 }, [-3.0, 3.0, 0.0]),
        BodyDesc::new(12, Shape::CapsuleX { half_height: 0.4, radius: 0.2 }, [0.0, 3.0, 0.0]),
        BodyDesc::new(13, Shape::CapsuleZ { half_height: 0.4, radius: 0.2 }, [3.0, 3.0, 0.0]),
        BodyDesc::new(14, hull.clone(), [6.0, 3.0, 0.0]),
        BodyDesc::new(
            15,
            Shape::Compound {
                parts: vec![part(Shape::Box { half_extents: [0.5, 0.1, 0.5] }, [0.0; 3]), part(hull, [0.2, 0.1, 0.0])],
            },
            [9.0, 3.0, 0.0],
        ),
        BodyDesc {
            collider_offset: Some(Offset { position: [0.0, 0.3, 0.0], rotation: [0.0, 0.0, 0.0, 1.0] }),
            gravity_scale: 0.5,
            locked_axes: locked_axes::ROTATION_Y,
            dominance: 1,
            additional_mass: 2.0,
            mass_properties: Some(MassProperties {
                mass: 3.0,
                center_of_mass: [0.0, -0.1, 0.0],
                principal_inertia: [0.1, 0.2, 0.3],
                principal_inertia_frame: [0.0, 0.0, 0.0, 1.0],
            }),
            friction_combine: p2c2r_protocol::physics::CombineRule::Multiply,
            ..BodyDesc::new(16, Shape::Box { half_extents: [0.3; 3] }, [-1.0, 5.0, 3.0])
        },
        BodyDesc {
            linvel: [0.0, 0.0, -1.0],
            ..BodyDesc::new(17, Shape::Box { half_extents: [1.0, 0.2, 1.0] }, [0.0, 2.0, 6.0])
                .with_body_type(BodyType::KinematicVelocity)
        },
    ];
    let mut reference = p2c2r_sim::physics::PhysicsWorld::new();
    for t in 0..60 {
        let mut request =
            if t == 0 { PhysicsStepRequest { add: add.clone(), snapshot: true, ..tick(0) } } else { tick(t) };
        if t == 20 {
            request.sleep = vec![10];
        }
        if t == 40 {
            request.wake = vec![10];
        }
        let expected = serde_json::to_string(&reference.step(&request).unwrap()).unwrap();
        let r = gamer.run("physics_step", Some("shapes"), to_payload(&request).unwrap()).await;
        assert_eq!(success_json(&r), expected, "tick {t}");
    }
    // A degenerate shape on the same peer: a clear error, and the session goes on.
    let flat = Shape::ConvexHull { points: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]] };
    let bad = PhysicsStepRequest { add: vec![BodyDesc::new(99, flat, [0.0; 3])], ..tick(60) };
    let r = gamer.run("physics_step", Some("shapes"), to_payload(&bad).unwrap()).await;
    assert!(format!("{r:?}").contains("code: InvalidPayload"), "{r:?}");
    let expected = serde_json::to_string(&reference.step(&tick(60)).unwrap()).unwrap();
    let r = gamer.run("physics_step", Some("shapes"), to_payload(&tick(60)).unwrap()).await;
    assert_eq!(success_json(&r), expected, "the session goes on");
    peer.shutdown().await;
    coord.shutdown().await;
}

/// Joints of every kind through a worker peer: a rope bridge of ball-jointed planks hung
/// from the world by a ball joint and a rope, a door on a motorised hinge with limits, a
/// box on a spring, a slider; changed (removed and added in one tick) and removed with a
/// body on the way; byte for byte against a local world every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joints_come_back_from_a_peer_byte_for_byte() {
    use p2c2r_protocol::physics::{JointDesc, JointKind, JointMotor};
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peer = start_peer(&url, "jointed").await;
    let mut gamer = gamer::connect(&url, "gamer-joints").await;
    let plank = |id, x: f32| BodyDesc::new(id, Shape::Box { half_extents: [0.45, 0.05, 0.5] }, [x, 5.0, 0.0]);
    let mut add: Vec<BodyDesc> = (0..6).map(|i| plank(10 + i, i as f32)).collect();
    add.push(ground());
    add.push(BodyDesc::new(30, Shape::Box { half_extents: [0.5, 1.0, 0.05] }, [-4.0, 1.0, 0.0]));
    add.push(BodyDesc::new(31, Shape::Box { half_extents: [0.3; 3] }, [8.0, 3.0, 3.0]));
    add.push(BodyDesc {
        gravity_scale: 0.0,
        ..BodyDesc::new(32, Shape::Box { half_extents: [0.2; 3] }, [0.0, 2.0, 5.0])
    });
    let joint = |id, body1, body2, kind, anchor1, anchor2| JointDesc {
        id,
        body1,
        body2,
        kind,
        anchor1,
        anchor2,
        contacts_enabled: false,
    };
    let mut joints: Vec<JointDesc> = (0..5)
        .map(|i| joint(100 + i, 10 + i, Some(11 + i), JointKind::Spherical, [0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]))
        .collect();
    joints.push(joint(110, 10, None, JointKind::Spherical, [-0.5, 0.0, 0.0], [-0.5, 5.0, 0.0]));
    joints.push(joint(111, 15, None, JointKind::Rope { max_distance: 0.1 }, [0.5, 0.0, 0.0], [5.5, 5.0, 0.0]));
    let motor =
        JointMotor { target_position: 0.0, target_velocity: 1.0, stiffness: 0.0, damping: 5.0, max_force: Some(20.0) };
    let door = JointKind::Revolute { axis: [0.0, 1.0, 0.0], limits: Some([-1.5, 1.5]), motor: Some(motor) };
    joints.push(joint(112, 30, None, door, [-0.5, 0.0, 0.0], [-4.5, 1.0, 0.0]));
    joints.push(joint(
        113,
        31,
        None,
        JointKind::Spring { rest_length: 2.0, stiffness: 80.0, damping: 2.0 },
        [0.0; 3],
        [8.0, 6.0, 3.0],
    ));
    let slide =
        JointMotor { target_position: 1.5, target_velocity: 0.0, stiffness: 100.0, damping: 20.0, max_force: None };
    let slider = JointKind::Prismatic { axis: [1.0, 0.0, 0.0], limits: Some([-2.0, 2.0]), motor: Some(slide) };
    joints.push(joint(114, 32, None, slider, [0.0; 3], [0.0, 2.0, 5.0]));
    let mut reference = p2c2r_sim::physics::PhysicsWorld::new();
    for t in 0..90 {
        let mut request = if t == 0 {
            PhysicsStepRequest { add: add.clone(), add_joints: joints.clone(), snapshot: true, ..tick(0) }
        } else {
            tick(t)
        };
        if t == 30 {
            // The door's motor turned round: the joint changed in one tick.
            let back = JointMotor { target_velocity: -1.0, ..motor };
            let door = JointKind::Revolute { axis: [0.0, 1.0, 0.0], limits: Some([-1.5, 1.5]), motor: Some(back) };
            request.remove_joints = vec![112];
            request.add_joints = vec![joint(112, 30, None, door, [-0.5, 0.0, 0.0], [-4.5, 1.0, 0.0])];
        }
        if t == 60 {
            // The box on the spring goes, and its joint with it.
            request.remove = vec![31];
        }
        let expected = serde_json::to_string(&reference.step(&request).unwrap()).unwrap();
        let r = gamer.run("physics_step", Some("joints"), to_payload(&request).unwrap()).await;
        assert_eq!(success_json(&r), expected, "tick {t}");
    }
    assert_eq!(reference.joint_count(), joints.len() - 1);
    peer.shutdown().await;
    coord.shutdown().await;
}

/// The gamer's side of events: the touching pairs it holds, kept by applying each
/// result's events; a pair started twice or stopped unstarted fails the test.
fn apply_events(touching: &mut std::collections::BTreeSet<[u64; 2]>, events: &[p2c2r_protocol::physics::PhysicsEvent]) {
    use p2c2r_protocol::physics::EventKind;
    for e in events {
        match e.kind {
            EventKind::Started { .. } => assert!(touching.insert([e.body1, e.body2]), "started twice: {e:?}"),
            EventKind::Stopped { .. } => assert!(touching.remove(&[e.body1, e.body2]), "stopped unstarted: {e:?}"),
            EventKind::ContactForce { .. } => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_joints_sensors_and_events_fails_over_with_one_resync_and_raises_each_event_once() {
    use p2c2r_protocol::physics::{EventKind, JointDesc, JointKind, active_events};
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let peers = [start_peer(&url, "peer-a").await, start_peer(&url, "peer-b").await];
    let mut gamer = gamer::connect(&url, "gamer-events").await;
    // A ball swinging on a hinge through a trigger zone at the bottom of its arc, and a
    // crate resting on the ground (touching it when the peer dies).
    let mut ball = BodyDesc::new(1, Shape::Sphere { radius: 0.2 }, [2.0, 3.0, 0.0]);
    ball.active_events = active_events::COLLISION_EVENTS;
    let mut zone =
        BodyDesc::new(2, Shape::Box { half_extents: [0.3, 0.5, 0.5] }, [0.0, 1.0, 0.0]).with_body_type(BodyType::Fixed);
    (zone.sensor, zone.active_events) = (true, active_events::COLLISION_EVENTS);
    let mut crate_ = BodyDesc::new(3, Shape::Box { half_extents: [0.5; 3] }, [5.0, 0.5, 3.0]);
    crate_.active_events = active_events::ALL;
    crate_.contact_force_threshold = 1.0e4;
    let scene = vec![ground(), ball, zone, crate_];
    let hinge = JointKind::Revolute { axis: [0.0, 0.0, 1.0], limits: None, motor: None };
    let joints = vec![JointDesc {
        id: 1,
        body1: 1,
        body2: None,
        kind: hinge,
        anchor1: [-2.0, 0.0, 0.0],
        anchor2: [0.0, 3.0, 0.0],
        contacts_enabled: true,
    }];
    let mut latest = BTreeMap::new();
    let mut touching = std::collections::BTreeSet::new();
    let mut entries = [0u32; 2];
    let mut count = |events: &[p2c2r_protocol::physics::PhysicsEvent], after_failover: bool| {
        let zone_starts = events.iter().filter(|e| e.body2 == 2 && matches!(e.kind, EventKind::Started { .. }));
        entries[usize::from(after_failover)] += zone_starts.count() as u32;
    };
    let snapshot = PhysicsStepRequest { add: scene.clone(), add_joints: joints.clone(), snapshot: true, ..tick(0) };
    let (first, _) = gamer.physics("s", &snapshot).await.unwrap();
    latest.extend(first.bodies.iter().map(|b| (b.id, *b)));
    apply_events(&mut touching, &first.events);
    for t in 1..=150u64 {
        let (r, _) = gamer.physics("s", &tick(t)).await.unwrap();
        latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
        apply_events(&mut touching, &r.events);
        count(&r.events, false);
    }
    assert!(touching.contains(&[0, 3]), "the crate rests on the ground at the hand-over: {touching:?}");
    let holder = peers.iter().position(|p| p.session_keys().iter().any(|k| k.ends_with("/s"))).unwrap();
    peers[holder].kill();
    let mut resyncs = 0;
    let mut t = 151u64;
    while t <= 450 {
        match gamer.physics("s", &tick(t)).await {
            Ok((r, _)) => {
                latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
                apply_events(&mut touching, &r.events);
                count(&r.events, true);
                t += 1;
            }
            Err(e) => {
                assert!(e.resync, "only resync errors are expected: {e:?}");
                resyncs += 1;
                assert_eq!(resyncs, 1, "one resync is enough");
                // The snapshot carries the bodies, the joints and the touching pairs the
                // gamer holds.
                let add = scene
                    .iter()
                    .map(|d| match latest.get(&d.id) {
                        Some(s) => BodyDesc {
                            position: s.position,
                            rotation: s.rotation,
                            linvel: s.linvel,
                            angvel: s.angvel,
                            sleeping: s.sleeping,
                            ..d.clone()
                        },
                        None => d.clone(),
                    })
                    .collect();
                let resync = PhysicsStepRequest {
                    add,
                    add_joints: joints.clone(),
                    touching: touching.iter().copied().collect(),
                    snapshot: true,
                    ..tick(t)
                };
                let (r, _) = gamer.physics("s", &resync).await.unwrap();
                assert!(
                    !r.events.iter().any(|e| matches!(e.kind, EventKind::Started { .. }) && e.body1 == 0),
                    "the resting crate is not started again: {:?}",
                    r.events
                );
                latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
                apply_events(&mut touching, &r.events);
                count(&r.events, true);
                t += 1;
            }
        }
    }
    assert_eq!(resyncs, 1);
    assert!(entries[0] >= 1 && entries[1] >= 2, "the ball swings through the zone on both peers: {entries:?}");
    assert!(touching.contains(&[0, 3]), "the crate still rests, started once: {touching:?}");
    for p in peers {
        p.shutdown().await;
    }
    coord.shutdown().await;
}

/// A level floor of `n × n` quads, the kind of static geometry that is sent once.
fn level_mesh(n: u32) -> Shape {
    let vertices = (0..=n)
        .flat_map(|z| (0..=n).map(move |x| [x as f32 - n as f32 / 2.0, 0.0, z as f32 - n as f32 / 2.0]))
        .collect();
    let at = |x: u32, z: u32| z * (n + 1) + x;
    let indices = (0..n)
        .flat_map(|z| {
            (0..n).flat_map(move |x| {
                [[at(x, z), at(x, z + 1), at(x + 1, z)], [at(x + 1, z), at(x, z + 1), at(x + 1, z + 1)]]
            })
        })
        .collect();
    Shape::TriMesh { vertices, indices }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_mesh_is_sent_once_per_peer_and_named_on_resync_and_failover() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let url = coord.url();
    let first = start_peer(&url, "peer-a").await;
    let mut gamer = gamer::connect(&url, "gamer-level").await;
    let floor = level_mesh(60);
    let scene = |floor: Shape, t: u64| PhysicsStepRequest {
        add: vec![
            BodyDesc::new(0, floor, [0.0; 3]).with_body_type(BodyType::Fixed),
            BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 3.0 - t as f32 * 0.01, 0.0]),
        ],
        snapshot: true,
        ..tick(t)
    };
    let named = floor.to_cached().unwrap();
    // The first connection carries the mesh; the peer keeps it.
    gamer.physics("level", &scene(floor.clone(), 0)).await.unwrap();
    // A resync names it: the same peer answers from its cache.
    let (r, raw) = gamer.physics("level", &scene(named.clone(), 1)).await.unwrap();
    assert_eq!((r.tick, raw.peer_id.as_deref()), (1, Some("peer-a")));
    // A failover to a peer that never saw it: it asks for the mesh, once.
    let second = start_peer(&url, "peer-b").await;
    first.kill();
    let mut missing = 0;
    let mut t = 2;
    while t < 6 {
        let request = if t == 2 { scene(named.clone(), t) } else { tick(t) };
        match gamer.physics("level", &request).await {
            Ok((r, raw)) => {
                assert_eq!((r.tick, raw.peer_id.as_deref()), (t, Some("peer-b")));
                t += 1;
            }
            Err(e) if e.code == ErrorCode::MissingShape => {
                assert!(e.resync, "{e:?}");
                missing += 1;
                let (r, _) = gamer.physics("level", &scene(floor.clone(), t)).await.unwrap();
                assert_eq!(r.tick, t);
                t += 1;
            }
            Err(e) => assert!(e.resync, "only the lost session's resync: {e:?}"),
        }
    }
    assert_eq!(missing, 1, "the new peer asked for the mesh once");
    // Now it holds it too.
    let (r, _) = gamer.physics("level", &scene(named, 6)).await.unwrap();
    assert_eq!(r.tick, 6);
    second.shutdown().await;
    coord.shutdown().await;
}
