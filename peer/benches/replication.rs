//! What replication and auditing cost, and what a failover does to motion.
//!
//! `cargo bench -p peer --bench replication`: the real coordinator, three in-process
//! peers and a gamer on loopback run the same physics session (a pile of boxes settling
//! on a ground) under four settings, one after another, and print side by side:
//! - peer steps per tick (the CPU bought on peers, in units of one unreplicated step),
//! - bytes through the coordinator per tick (both directions, framing included),
//! - the gamer's round trip (p50, p99),
//! - this process's CPU per tick (coordinator, peers and gamer together);
//!
//! then kills the serving peer halfway through a run at R = 1 and at R = 2 and prints the
//! largest frame-to-frame move of any body in the ticks around the failover, beside the
//! largest move the local simulation itself makes over the same ticks (fed the same
//! requests, uninterrupted), and whether every state matched the local run bit for bit.
//! Figures are for comparison within one run on one machine, not absolutes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use p2c2r_protocol::physics::{BodyDesc, BodyState, BodyType, PhysicsStepRequest, Shape};
use p2c2r_sim::physics::PhysicsWorld;
use p2c2r_testkit::gamer;
use peer::{PeerConfig, PeerHandle};

const DT: f32 = 1.0 / 60.0;
const TICKS: u64 = 600;
const BOXES: u64 = 120;
/// When the failover runs kill the serving peer: while the boxes still fall and collide.
const KILL_AT: u64 = 45;

fn scene() -> Vec<BodyDesc> {
    let mut bodies = vec![
        BodyDesc::new(0, Shape::Box { half_extents: [30.0, 0.5, 30.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    ];
    for i in 0..BOXES {
        let (x, z) = ((i % 6) as f32 * 1.2 - 3.0, (i / 6 % 5) as f32 * 1.2 - 2.4);
        let y = 1.0 + (i / 30) as f32 * 1.3;
        bodies.push(BodyDesc::new(i + 1, Shape::Box { half_extents: [0.5; 3] }, [x, y, z]));
    }
    bodies
}

fn tick(t: u64) -> PhysicsStepRequest {
    if t == 0 {
        return PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add: scene(), ..Default::default() };
    }
    PhysicsStepRequest { tick: t, dt: DT, steps: 1, ..Default::default() }
}

fn config(replicas: u8, audit_fraction: f64) -> coordinator::Config {
    coordinator::Config {
        replication: coordinator::Replication {
            replicas,
            audit_fraction,
            // All peers are in this process, on one address.
            replicas_on_distinct_hosts: false,
            ..Default::default()
        },
        ..coordinator::Config::default()
    }
}

async fn start_peer(url: &str, id: &str) -> PeerHandle {
    let peer = peer::spawn(PeerConfig {
        coordinator_url: url.to_owned(),
        peer_id: Some(id.into()),
        max_concurrent_tasks: Some(2),
        ..Default::default()
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), peer.wait_for(|s| s.connected)).await.expect("the peer registers");
    peer
}

fn cpu_time() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}

fn coordinator_bytes(coord: &coordinator::CoordinatorHandle) -> u64 {
    let text = coord.metrics_text();
    ["p2c2r_received_bytes_total ", "p2c2r_sent_bytes_total "]
        .iter()
        .filter_map(|name| text.lines().find_map(|l| l.strip_prefix(name)))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Cost {
    label: &'static str,
    steps_per_tick: f64,
    bytes_per_tick: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_tick: Duration,
}

async fn cost(label: &'static str, config: coordinator::Config) -> Cost {
    let coord = coordinator::spawn("127.0.0.1:0", config).await.expect("bind loopback");
    let url = coord.url();
    let peers = [start_peer(&url, "a").await, start_peer(&url, "b").await, start_peer(&url, "c").await];
    let mut gamer = gamer::connect(&url, "bench").await;
    let (bytes0, cpu0) = (coordinator_bytes(&coord), cpu_time());
    let mut rtts = Vec::with_capacity(TICKS as usize);
    for t in 0..TICKS {
        let start = Instant::now();
        gamer.physics("pile", &tick(t)).await.unwrap_or_else(|e| panic!("{label}: tick {t}: {e:?}"));
        rtts.push(start.elapsed());
    }
    // The copies after the first answer are still running: wait until every one is in.
    let deadline = Instant::now() + Duration::from_secs(30);
    while coord.stats().in_flight_now > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = coord.stats();
    let (bytes, cpu) = (coordinator_bytes(&coord) - bytes0, cpu_time() - cpu0);
    assert_eq!(stats.replica_disagreements, 0, "{label}: honest peers disagreed");
    rtts.sort();
    for p in peers {
        p.shutdown().await;
    }
    coord.shutdown().await;
    Cost {
        label,
        steps_per_tick: stats.tasks_assigned as f64 / TICKS as f64,
        bytes_per_tick: bytes as f64 / TICKS as f64,
        p50: rtts[rtts.len() / 2],
        p99: rtts[rtts.len() * 99 / 100],
        cpu_per_tick: cpu / TICKS as u32,
    }
}

/// The largest move of any body from one tick to the next over `ticks`, in metres.
fn largest_move(states: &BTreeMap<u64, BTreeMap<u64, BodyState>>, ticks: std::ops::RangeInclusive<u64>) -> f32 {
    let mut largest = 0.0f32;
    for t in ticks {
        let (Some(before), Some(after)) = (states.get(&(t - 1)), states.get(&t)) else { continue };
        for (id, b) in after {
            if let Some(a) = before.get(id) {
                let d: f32 = (0..3).map(|i| (b.position[i] - a.position[i]).powi(2)).sum::<f32>().sqrt();
                largest = largest.max(d);
            }
        }
    }
    largest
}

/// Every body's state after each tick, as the gamer holds them (the last state reported).
type Timeline = BTreeMap<u64, BTreeMap<u64, BodyState>>;

async fn failover(replicas: u8) -> (Timeline, u32) {
    let coord = coordinator::spawn("127.0.0.1:0", config(replicas, 0.0)).await.expect("bind loopback");
    let url = coord.url();
    let peers = [start_peer(&url, "a").await, start_peer(&url, "b").await];
    let mut gamer = gamer::connect(&url, "bench").await;
    let mut latest: BTreeMap<u64, BodyState> = BTreeMap::new();
    let mut timeline = Timeline::new();
    let mut resyncs = 0;
    let kill_at = KILL_AT;
    let mut t = 0;
    while t < TICKS {
        if t == kill_at {
            let holder = peers.iter().find(|p| !p.session_keys().is_empty()).expect("a peer holds the session");
            holder.kill();
        }
        match gamer.physics("pile", &tick(t)).await {
            Ok((r, _)) => {
                latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
                timeline.insert(t, latest.clone());
                t += 1;
            }
            Err(e) => {
                assert!(e.resync, "{e:?}");
                resyncs += 1;
                // The gamer's snapshot of its latest states, as the plugin sends one.
                let mut add = vec![scene()[0].clone()];
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
                let snapshot =
                    PhysicsStepRequest { tick: t, snapshot: true, dt: DT, steps: 1, add, ..Default::default() };
                let (r, _) = gamer.physics("pile", &snapshot).await.expect("the snapshot runs");
                latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
                timeline.insert(t, latest.clone());
                t += 1;
            }
        }
    }
    for p in peers {
        p.shutdown().await;
    }
    coord.shutdown().await;
    (timeline, resyncs)
}

fn local_timeline() -> Timeline {
    let mut world = PhysicsWorld::new();
    let mut latest: BTreeMap<u64, BodyState> = BTreeMap::new();
    let mut timeline = Timeline::new();
    for t in 0..TICKS {
        let r = world.step(&tick(t)).expect("the scene steps");
        latest.extend(r.bodies.iter().map(|b| (b.id, *b)));
        timeline.insert(t, latest.clone());
    }
    timeline
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        println!("replication cost: {BOXES} boxes settling, {TICKS} ticks, 3 peers connected, loopback");
        let runs = [
            cost("R=1", config(1, 0.0)).await,
            cost("R=1, audited", config(1, 1.0)).await,
            cost("R=2", config(2, 0.0)).await,
            cost("R=3", config(3, 0.0)).await,
        ];
        let base = &runs[0];
        println!(
            "{:<14} {:>11} {:>15} {:>10} {:>10} {:>14}",
            "setting", "peer steps", "coord bytes", "rtt p50", "rtt p99", "cpu per tick"
        );
        for r in &runs {
            println!(
                "{:<14} {:>5.2} ({:.1}×) {:>8.0} ({:.1}×) {:>8.2?} {:>10.2?} {:>8.2?} ({:.1}×)",
                r.label,
                r.steps_per_tick,
                r.steps_per_tick / base.steps_per_tick,
                r.bytes_per_tick,
                r.bytes_per_tick / base.bytes_per_tick,
                r.p50,
                r.p99,
                r.cpu_per_tick,
                r.cpu_per_tick.as_secs_f64() / base.cpu_per_tick.as_secs_f64()
            );
        }
        println!("(audited: with --audit-fraction 1.0 every session is audited; at the default 0.1 a tenth are)");

        let local = local_timeline();
        let window = (KILL_AT - 5)..=(KILL_AT + 30);
        println!("\nfailover: the serving peer killed at tick {KILL_AT} (the pile still settling); largest frame-to-frame move of any body, ticks {window:?}");
        println!("{:<22} {:>12} {:>9} {:>20}", "", "largest move", "resyncs", "states = local run");
        println!("{:<22} {:>10.4} m {:>9} {:>20}", "local simulation", largest_move(&local, window.clone()), "-", "-");
        for replicas in [1, 2] {
            let (timeline, resyncs) = failover(replicas).await;
            let same = window.clone().all(|t| timeline.get(&t) == local.get(&t));
            println!(
                "{:<22} {:>10.4} m {:>9} {:>20}",
                format!("R={replicas}, peer killed"),
                largest_move(&timeline, window.clone()),
                resyncs,
                if same { "bit for bit" } else { "differ" }
            );
        }
    });
}
