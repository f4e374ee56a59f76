//! Replicated sessions end to end: the real coordinator running each physics session on
//! several real peers, a gamer (the real gamer client), and real physics.
//!
//! - with two replicas, killing either peer costs the gamer nothing (no error, no resync),
//!   and a new peer becomes a replica by replaying the session's log;

use std::time::Duration;

use p2c2r_protocol::physics::{BodyDesc, BodyType, PhysicsStepRequest, Shape};
use peer::{PeerConfig, PeerHandle};

mod common;

use common::{eventually, gamer, within};

const DT: f32 = 1.0 / 60.0;

async fn start_peer(url: &str, id: &str) -> PeerHandle {
    let peer = peer::spawn(PeerConfig {
        coordinator_url: url.to_owned(),
        peer_id: Some(id.into()),
        max_concurrent_tasks: Some(2),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    within("the peer to register", peer.wait_for(|s| s.connected)).await;
    peer
}

fn replicated(replicas: u8) -> coordinator::Config {
    coordinator::Config {
        replicas,
        replicas_on_distinct_hosts: false,
        audit_fraction: 0.0,
        ..coordinator::Config::default()
    }
}

/// A ground and a pile of boxes dropped onto it (contacts, sleep: the state replicas
/// must agree on bit for bit).
fn scene() -> Vec<BodyDesc> {
    let mut bodies = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..24u64 {
        let (x, z) = ((i % 4) as f32 * 1.1 - 1.65, (i / 4 % 3) as f32 * 1.1 - 1.1);
        bodies.push(BodyDesc::new(i + 1, Shape::Box { half_extents: [0.5; 3] }, [x, 1.0 + (i / 12) as f32 * 1.2, z]));
    }
    bodies
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
    gamer.physics("s", &PhysicsStepRequest { add: scene(), snapshot: true, ..tick(0) }).await.unwrap();
    for t in 1..=60u64 {
        let (r, _) = gamer.physics("s", &tick(t)).await.unwrap();
        assert_eq!(r.tick, t);
    }
    assert!(peers.iter().all(holds), "both peers run the session");
    let stats = coord.stats();
    assert!(stats.ticks_compared >= 60, "{stats:?}");
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
