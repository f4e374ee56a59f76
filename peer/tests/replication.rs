//! Replicated sessions end to end: the real coordinator running each physics session on
//! several real peers, a gamer (the real gamer client), and real physics.
//!
//! - with two replicas, killing either peer costs the gamer nothing (no error, no resync),
//!   and a new peer becomes a replica by replaying the session's log;
//! - a peer that runs the physics honestly but corrupts 1 % of its answers, among two
//!   honest peers, is caught on its first lie, quarantined, and the gamer's copy of the
//!   world is corrected to the honest state (every body, bit for bit) within a few ticks;
//! - a peer that drops or invents a collision event is caught the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use p2c2r_protocol::physics::{
    BodyDesc, BodyState, BodyType, EventKind, JointDesc, JointKind, PhysicsEvent, PhysicsStepRequest,
    PhysicsStepResult, Shape,
};
use p2c2r_protocol::{Capabilities, ErrorCode, Message, Payload};
use p2c2r_sim::physics::PhysicsWorld;
use peer::{PeerHandle, SessionStore, run_task_payload};

mod common;

use common::{Client, eventually, gamer, start_peer};

const DT: f32 = 1.0 / 60.0;

fn replicated(replicas: u8) -> coordinator::Config {
    coordinator::Config {
        replication: coordinator::Replication {
            replicas,
            replicas_on_distinct_hosts: false,
            audit_fraction: 0.0,
            ..Default::default()
        },
        reputation: coordinator::Reputation {
            // Votes count from a peer's first answer (coordinator/tests/replication.rs tests
            // what votes weigh).
            established_after_answers: 0,
            ..Default::default()
        },
        ..coordinator::Config::default()
    }
}

/// A ground and a pile of boxes dropped onto it (contacts, sleep: the state replicas
/// must agree on bit for bit), and beside it a cylinder, a convex hull and a chain of two
/// capsules swinging from the world on a hinge and a ball joint (see [`joints`]).
fn scene() -> Vec<BodyDesc> {
    let mut bodies = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..24u64 {
        let (x, z) = ((i % 4) as f32 * 1.1 - 1.65, (i / 4 % 3) as f32 * 1.1 - 1.1);
        let mut crate_ =
            BodyDesc::new(i + 1, Shape::Box { half_extents: [0.5; 3] }, [x, 1.0 + (i / 12) as f32 * 1.2, z]);
        // Landing crates raise collision and contact-force events.
        crate_.active_events = p2c2r_protocol::physics::active_events::ALL;
        crate_.contact_force_threshold = 2_000.0;
        bodies.push(crate_);
    }
    // A trigger zone the hull falls through.
    let mut zone = BodyDesc::new(44, Shape::Box { half_extents: [1.0, 0.5, 1.0] }, [6.0, 2.5, 2.0])
        .with_body_type(BodyType::Fixed);
    (zone.sensor, zone.active_events) = (true, p2c2r_protocol::physics::active_events::COLLISION_EVENTS);
    bodies.push(zone);
    bodies.push(BodyDesc::new(40, Shape::Cylinder { half_height: 0.5, radius: 0.3 }, [6.0, 2.0, 0.0]));
    let hull = Shape::ConvexHull { points: vec![[0.0; 3], [0.8, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 0.8]] };
    bodies.push(BodyDesc::new(41, hull, [6.0, 4.0, 2.0]));
    bodies.push(BodyDesc::new(42, Shape::CapsuleX { half_height: 0.5, radius: 0.1 }, [-6.6, 5.0, 0.0]));
    bodies.push(BodyDesc::new(43, Shape::CapsuleX { half_height: 0.5, radius: 0.1 }, [-5.4, 5.0, 0.0]));
    bodies
}

/// The chain's joints: a hinge to the world, a ball joint between its links.
fn joints() -> Vec<JointDesc> {
    let hinge = JointKind::Revolute { axis: [0.0, 0.0, 1.0], limits: None, motor: None };
    vec![
        JointDesc {
            id: 1,
            body1: 42,
            body2: None,
            kind: hinge,
            anchor1: [-0.6, 0.0, 0.0],
            anchor2: [-7.2, 5.0, 0.0],
            contacts_enabled: true,
        },
        JointDesc {
            id: 2,
            body1: 42,
            body2: Some(43),
            kind: JointKind::Spherical,
            anchor1: [0.6, 0.0, 0.0],
            anchor2: [-0.6, 0.0, 0.0],
            contacts_enabled: false,
        },
    ]
}

fn tick(t: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick: t, dt: DT, steps: 1, ..Default::default() }
}

fn holds(peer: &PeerHandle) -> bool {
    peer.session_keys().iter().any(|k| k.ends_with("/s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_killing_a_peer_costs_the_gamer_nothing() {
    let coord = coordinator::spawn("127.0.0.1:0", replicated(2)).await.unwrap();
    let url = coord.url();
    let peers = [start_peer(&url, "peer-a").await, start_peer(&url, "peer-b").await];
    let mut gamer = gamer::connect(&url, "gamer-1").await;
    let snapshot = PhysicsStepRequest { add: scene(), add_joints: joints(), snapshot: true, ..tick(0) };
    gamer.physics("s", &snapshot).await.unwrap();
    for t in 1..=60u64 {
        let (r, _) = gamer.physics("s", &tick(t)).await.unwrap();
        assert_eq!(r.tick, t);
    }
    assert!(peers.iter().all(holds), "both peers run the session");
    // The slower replica's answers to the last ticks may still be on their way.
    common::eventually("the slower replica's answers are compared", || coord.stats().ticks_compared >= 60).await;
    let stats = coord.stats();
    assert_eq!(stats.replica_disagreements, 0, "honest peers agree bit for bit: {stats:?}");

    peers[0].kill();
    let newcomer = start_peer(&url, "peer-c").await;
    for t in 61..=240u64 {
        let (r, raw) = gamer.physics("s", &tick(t)).await.unwrap_or_else(|e| panic!("tick {t}: {e:?}"));
        assert_eq!(r.tick, t);
        assert_ne!(raw.peer_id.as_deref(), Some("peer-a"));
    }
    eventually("the newcomer to replay the log and run the session", || holds(&newcomer)).await;
    let stats = coord.stats();
    assert_eq!(stats.replicas_started, 1, "{stats:?}");
    assert_eq!(stats.replica_disagreements, 0, "the replayed replica agrees bit for bit: {stats:?}");
    assert_eq!(stats.peers_caught_lying, 0);

    let [_, b] = peers;
    b.shutdown().await;
    newcomer.shutdown().await;
    coord.shutdown().await;
}

/// Ticks on which the liar corrupts its answer: 1 % of them.
fn lies_on(tick: u64) -> bool {
    tick % 100 == 37
}

/// What a liar changes in its answer.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Moves one body by half a metre, on 1 % of ticks ([`lies_on`]).
    MovesABody,
    /// Leaves out the first event of a tick that has events.
    DropsAnEvent,
    /// Adds a contact-force event that did not happen.
    InventsAnEvent,
}

impl Lie {
    /// Changes `result` if this liar lies on it; whether it did.
    fn tell(self, result: &mut PhysicsStepResult) -> bool {
        match self {
            Lie::MovesABody if lies_on(result.tick) && !result.bodies.is_empty() => {
                result.bodies[0].position[0] += 0.5;
                true
            }
            Lie::DropsAnEvent if result.tick >= 3 && !result.events.is_empty() => {
                result.events.remove(0);
                true
            }
            Lie::InventsAnEvent if result.tick >= 3 => {
                result.events.push(PhysicsEvent {
                    step: 0,
                    body1: u64::MAX - 1,
                    body2: u64::MAX,
                    kind: EventKind::ContactForce {
                        total_force: [0.0, 1.0e4, 0.0],
                        total_force_magnitude: 1.0e4,
                        max_force_direction: [0.0, 1.0, 0.0],
                        max_force_magnitude: 1.0e4,
                    },
                });
                true
            }
            _ => false,
        }
    }
}

/// A peer that runs every task honestly (the real peer's task code) and then tells its
/// lie ([`Lie`]) in the answer. It answers as fast as it can, so its lie is often the
/// first answer the gamer gets.
async fn liar(url: String, lie: Lie) -> tokio::task::JoinHandle<(u32, Option<ErrorCode>)> {
    let caps = Capabilities {
        max_concurrent_tasks: Some(4),
        determinism: Some(p2c2r_sim::determinism()),
        task_types: Some(p2c2r_protocol::task_types::ALL.iter().map(|t| (*t).to_owned()).collect()),
        ..Default::default()
    };
    let mut client = Client::peer_with(&url, "liar", caps).await;
    tokio::spawn(async move {
        let store = SessionStore::new(Duration::from_secs(60));
        let mut lies = 0;
        loop {
            let Some(message) = client.try_recv().await else { return (lies, None) };
            let assignment = match message {
                Message::TaskAssignment(a) => a,
                Message::Error(e) => return (lies, Some(e.code)),
                _ => continue,
            };
            let mut answer = run_task_payload(&store, &assignment.task_data);
            let mut result: PhysicsStepResult = serde_json::from_str(answer.json().unwrap()).unwrap();
            // One lie is enough to be caught (and quarantined before the next one).
            if lies == 0 && lie.tell(&mut result) {
                answer = Payload::to_json(&result).unwrap();
                lies += 1;
            }
            let reply = p2c2r_protocol::TaskResult {
                task_id: assignment.task_id.clone(),
                result: answer,
                attempt: Some(assignment.attempt),
                peer_id: None,
            };
            if !client.try_send(&Message::TaskResult(reply)).await {
                // Closed while it was answering a tick queued before its quarantine: the
                // error that said why may still be waiting to be read.
                while let Some(message) = client.try_recv().await {
                    if let Message::Error(e) = message {
                        return (lies, Some(e.code));
                    }
                }
                return (lies, None);
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_lying_on_one_percent_of_ticks_is_caught_and_the_gamer_corrected() {
    let coord = coordinator::spawn("127.0.0.1:0", replicated(3)).await.unwrap();
    let url = coord.url();
    let honest = [start_peer(&url, "peer-a").await, start_peer(&url, "peer-b").await];
    let liar = liar(url.clone(), Lie::MovesABody).await;
    let mut gamer = gamer::connect(&url, "gamer-1").await;
    // A fourth peer, connected after the session's replicas are placed: the verdict on a
    // lie waits for a re-run, and this is where it runs (replaying the session's log).
    let mut judge = None;
    // What the gamer should hold: the same requests stepped by an honest world here.
    let mut reference = PhysicsWorld::new();
    let mut truth: BTreeMap<u64, BodyState> = BTreeMap::new();
    let mut held: BTreeMap<u64, BodyState> = BTreeMap::new();
    let mut lie_delivered = false;
    let mut corrected_at = None;
    for t in 0..=240u64 {
        let request = if t == 0 {
            PhysicsStepRequest { add: scene(), add_joints: joints(), snapshot: true, ..tick(0) }
        } else {
            tick(t)
        };
        let expected = reference.step(&request).unwrap();
        truth.extend(expected.bodies.iter().map(|b| (b.id, *b)));
        let (r, raw) = gamer.physics("s", &request).await.unwrap_or_else(|e| panic!("tick {t}: {e:?}"));
        if judge.is_none() {
            judge = Some(start_peer(&url, "peer-c").await);
        }
        // Only full-state answers list the fixed ground and zone: compare the moving bodies.
        held.extend(r.bodies.iter().filter(|b| ![0, 44].contains(&b.id)).map(|b| (b.id, *b)));
        if lies_on(t) && held != truth {
            assert_eq!(raw.peer_id.as_deref(), Some("liar"));
            lie_delivered = true;
        }
        if corrected_at.is_none() && r.bodies.len() == scene().len() && t > 37 {
            corrected_at = Some(t);
        }
        if corrected_at.is_some() || !lie_delivered {
            assert!(held == truth, "tick {t}: the gamer holds another world than the honest one");
        }
    }
    let stats = coord.stats();
    eprintln!("lie delivered first: {lie_delivered}; corrected at tick {corrected_at:?}; {stats:?}");
    // Caught on its first lie (every tick is replicated), never again: it is gone.
    assert_eq!((stats.replica_disagreements, stats.peers_caught_lying), (1, 1), "{stats:?}");
    let (lies, farewell) = tokio::time::timeout(Duration::from_secs(30), liar).await.unwrap().unwrap();
    assert_eq!(lies, 1, "quarantined after its first lie");
    assert_eq!(farewell, Some(ErrorCode::Quarantined));
    // The gamer was corrected within a few ticks of the lie, with every body's state.
    let corrected_at = corrected_at.expect("a full-state tick reached the gamer");
    assert!(corrected_at <= 37 + 5, "corrected at tick {corrected_at}");
    assert_eq!(stats.sessions_corrected, 1);
    for p in honest.into_iter().chain(judge) {
        p.shutdown().await;
    }
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_dropping_or_inventing_an_event_is_caught_like_one_moving_a_body() {
    for lie in [Lie::DropsAnEvent, Lie::InventsAnEvent] {
        let coord = coordinator::spawn("127.0.0.1:0", replicated(3)).await.unwrap();
        let url = coord.url();
        let honest = [start_peer(&url, "peer-a").await, start_peer(&url, "peer-b").await];
        let liar = liar(url.clone(), lie).await;
        let mut gamer = gamer::connect(&url, "gamer-1").await;
        let mut judge = None;
        let mut reference = PhysicsWorld::new();
        let mut honest_events = 0;
        for t in 0..=60u64 {
            let request = if t == 0 {
                PhysicsStepRequest { add: scene(), add_joints: joints(), snapshot: true, ..tick(0) }
            } else {
                tick(t)
            };
            honest_events += reference.step(&request).unwrap().events.len();
            gamer.physics("s", &request).await.unwrap_or_else(|e| panic!("{lie:?}, tick {t}: {e:?}"));
            if judge.is_none() {
                judge = Some(start_peer(&url, "peer-c").await);
            }
        }
        assert!(honest_events > 10, "the scene raises events: {honest_events}");
        let (lies, farewell) = tokio::time::timeout(Duration::from_secs(30), liar).await.unwrap().unwrap();
        let stats = coord.stats();
        assert_eq!((stats.replica_disagreements, stats.peers_caught_lying), (1, 1), "{lie:?}: {stats:?}");
        assert_eq!((lies, farewell), (1, Some(ErrorCode::Quarantined)), "{lie:?}: quarantined after its first lie");
        for p in honest.into_iter().chain(judge) {
            p.shutdown().await;
        }
        coord.shutdown().await;
    }
}
