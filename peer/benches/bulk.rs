//! An honest gamer's ticks through a peer that is also carrying another gamer's bulk,
//! on a 100 Mbit/s link: whole frames beside chunked ones, in one run.
//!
//! Run: `cargo bench -p peer --bench bulk` (release).
//!
//! One in-process coordinator, one in-process peer reaching it through the test kit's
//! proxy (10 ms each way, 12.5 MB/s each way, a 128 KiB queue each way plus the proxy's
//! 256 KiB socket buffers: a 100 Mbit/s link whose buffers hold about 31 ms). The honest
//! gamer, on its own connection straight to the coordinator, runs sequential ticks of a
//! 100-box scene; the bulk gamer meanwhile
//! sends, one after another, snapshots of 8,000 static boxes (about 1.5 MB of JSON each
//! way: the request, and the full-state answer) on its own session, on the same peer.
//! Prints p50, p99 and max of the honest round trip with no bulk, with bulk in whole
//! frames (`chunked_frames: false`), and with bulk in chunks (the default), and the bulk
//! gamer's snapshots answered meanwhile; then bulk in chunks on the same round trip with
//! no bandwidth limit or queue, which leaves only what the bulk costs in CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use p2c2r_protocol::physics::{ApplyImpulse, BodyDesc, BodyType, PhysicsStepRequest, Shape};
use p2c2r_testkit::gamer;
use p2c2r_testkit::proxy::{self, Conditions};
use peer::PeerConfig;

const DT: f32 = 1.0 / 60.0;
const HONEST_BOXES: u64 = 100;
const BULK_BOXES: u64 = 8_000;
const MEASURED_TICKS: u64 = 300;

fn ground() -> BodyDesc {
    BodyDesc::new(0, Shape::Box { half_extents: [50.0, 0.5, 50.0] }, [0.0, -0.5, 0.0]).with_body_type(BodyType::Fixed)
}

fn honest_snapshot() -> PhysicsStepRequest {
    let mut add = vec![ground()];
    for i in 0..HONEST_BOXES {
        let (col, row) = ((i % 10) as f32, (i / 10) as f32);
        add.push(BodyDesc::new(i + 1, Shape::Box { half_extents: [0.25; 3] }, [col * 1.5 - 7.0, 2.0, row * 1.5 - 7.0]));
    }
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

fn honest_tick(tick: u64) -> PhysicsStepRequest {
    let impulse = ApplyImpulse { id: tick % HONEST_BOXES + 1, impulse: [0.0, 1.0, 0.2], torque_impulse: [0.0; 3] };
    PhysicsStepRequest { tick, dt: DT, steps: 1, impulses: vec![impulse], ..Default::default() }
}

/// 8,000 static boxes in a grid: cheap to step, large to send and to answer in full.
fn bulk_snapshot(tick: u64) -> PhysicsStepRequest {
    let add = (0..BULK_BOXES)
        .map(|i| {
            let (x, z) = ((i % 100) as f32, (i / 100) as f32);
            BodyDesc::new(i + 1, Shape::Box { half_extents: [0.2; 3] }, [x - 50.0, 0.2, z - 40.0])
                .with_body_type(BodyType::Fixed)
        })
        .collect();
    PhysicsStepRequest { tick, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

struct Measured {
    hist: Histogram<u64>,
    bulk_answered: u64,
    chunked_sent: u64,
}

async fn run(bulk: bool, chunked_frames: bool, link_limited: bool) -> Measured {
    let config = coordinator::Config {
        connections: coordinator::Connections { chunked_frames, ..Default::default() },
        ..coordinator::Config::default()
    };
    let coord = coordinator::spawn("127.0.0.1:0", config).await.expect("bind loopback");
    let link = Conditions::round_trip(Duration::from_millis(20), Duration::ZERO);
    let link = if link_limited { link.with_bandwidth(12_500_000).with_queue(128 * 1024) } else { link };
    let path = proxy::start(coord.local_addr(), link).await.expect("the proxy starts");
    let peer = peer::spawn(PeerConfig {
        coordinator_url: path.url(),
        peer_id: Some("carrier".into()),
        max_concurrent_tasks: Some(2),
        ..Default::default()
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), peer.wait_for(|s| s.connected)).await.expect("the peer registers");
    let url = coord.url();
    let mut honest = gamer::connect(&url, "honest").await;
    honest.physics("honest", &honest_snapshot()).await.expect("the honest snapshot");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let bulk_task = bulk.then(|| {
        let (url, stop, answered) = (url.clone(), stop.clone(), answered.clone());
        tokio::spawn(async move {
            let mut bulk = gamer::connect(&url, "bulk").await;
            let mut t = 0;
            while !stop.load(Ordering::Relaxed) {
                if bulk.physics("bulk", &bulk_snapshot(t)).await.is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                t += 1;
            }
        })
    });
    if bulk {
        // The bulk is flowing before the measurement starts.
        let deadline = Instant::now() + Duration::from_secs(20);
        while answered.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in 1..=MEASURED_TICKS {
        let start = Instant::now();
        honest.physics("honest", &honest_tick(t)).await.expect("an honest tick");
        hist.record(start.elapsed().as_micros() as u64).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let chunked_sent = coord
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("p2c2r_chunked_frames_sent_total ")?.trim().parse().ok())
        .unwrap_or(0);
    if let Some(task) = bulk_task {
        task.abort();
    }
    peer.shutdown().await;
    path.shutdown().await;
    coord.shutdown().await;
    Measured { hist, bulk_answered: answered.load(Ordering::Relaxed), chunked_sent }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "honest ticks ({MEASURED_TICKS} sequential) through a peer on a 100 Mbit/s link, 20 ms round trip, \
         128 KiB queues"
    );
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>10} {:>14} {:>14}",
        "scenario", "p50 ms", "p99 ms", "max ms", "p99/base", "bulk answered", "chunked frames"
    );
    let mut baseline = None;
    // The last scenario takes the link's limits away: what remains is what the bulk's
    // decoding, stepping and encoding cost the ticks on these cores, not the network.
    for (label, bulk, chunked, limited) in [
        ("no bulk (baseline)", false, true, true),
        ("bulk, whole frames", true, false, true),
        ("bulk, chunked frames", true, true, true),
        ("bulk, chunked, link unlimited", true, true, false),
    ] {
        let m = run(bulk, chunked, limited).await;
        let ms = |us: u64| us as f64 / 1000.0;
        let p99 = m.hist.value_at_quantile(0.99);
        let base = *baseline.get_or_insert(p99);
        println!(
            "{label:<30} {:>9.1} {:>9.1} {:>9.1} {:>9.2}× {:>14} {:>14}",
            ms(m.hist.value_at_quantile(0.5)),
            ms(p99),
            ms(m.hist.max()),
            p99 as f64 / base.max(1) as f64,
            m.bulk_answered,
            m.chunked_sent
        );
    }
}
