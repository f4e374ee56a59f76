//! How long one frame holds the router's state lock: every other connection waits that
//! long. Drives the router directly (no sockets, so only the router's own work is timed)
//! with two replicas of one physics session answering each tick with the same bytes, and
//! prints, for answers of several sizes, the lock held per answer frame when the answer is
//! hashed before the lock (as the router does) beside hashing it under the lock (as it
//! did before), and their ratio.
//!
//! Run: `cargo bench -p coordinator --bench lock`.

use std::time::Duration;

use coordinator::Config;
use coordinator::outbound::{Outbound, OutboundRx, channel};
use coordinator::router::{ConnHandle, ConnId, Router, decode_text};
use tokio_util::sync::CancellationToken;

const TICKS: u64 = 400;

struct Conn {
    id: ConnId,
    rx: OutboundRx,
}

fn connect(router: &Router) -> Conn {
    let (tx, rx) = channel(1 << 20, 1 << 34);
    let id = router.connect(ConnHandle { tx, kill: CancellationToken::new(), chunked: None }, None);
    Conn { id, rx }
}

/// Assignment ids waiting for a peer.
fn assignments(conn: &mut Conn) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok((frame, _)) = conn.rx.try_recv_weighed() {
        if let Outbound::Assignment(a) = frame {
            ids.push(a.assignment_id);
        }
    }
    ids
}

fn drain(conn: &mut Conn) {
    while conn.rx.try_recv_weighed().is_ok() {}
}

/// Per answer frame: the mean and the longest lock hold, over `TICKS` ticks of two replicas.
fn held_per_answer(answer_bytes: usize, under_lock: bool) -> (Duration, Duration) {
    let config = Config {
        replication: coordinator::Replication {
            replicas: 2,
            replicas_on_distinct_hosts: false,
            audit_fraction: 0.0,
            ..Default::default()
        },
        reputation: coordinator::Reputation { established_after_answers: 0, ..Default::default() },
        rate_limits: coordinator::RateLimits {
            max_tasks_per_second: None,
            max_task_bytes_per_second: None,
            ..Default::default()
        },
        ..Config::default()
    };
    let router = Router::new(config);
    let setup = r#"{"engine":"rapier3d 0.0.0","features":["enhanced-determinism"],"sim":"bench","arch":"bench"}"#;
    let mut peers: Vec<Conn> = (0..2).map(|_| connect(&router)).collect();
    for (i, peer) in peers.iter_mut().enumerate() {
        router.handle_frame(
            peer.id,
            &format!(
                r#"{{"msg_type":"register_peer","peer_id":"p{i}","capabilities":{{"max_concurrent_tasks":4,"determinism":{setup}}}}}"#
            ),
        );
        drain(peer);
    }
    let mut gamer = connect(&router);
    router.handle_frame(gamer.id, r#"{"msg_type":"register_gamer","gamer_id":"g"}"#);
    let blob = "x".repeat(answer_bytes);
    let (mut total, mut longest, mut frames) = (Duration::ZERO, Duration::ZERO, 0u32);
    for n in 0..TICKS {
        let data = if n == 0 { r#"{"tick":0,"snapshot":true}"#.to_owned() } else { format!(r#"{{"tick":{n}}}"#) };
        router.handle_frame(
            gamer.id,
            &format!(
                r#"{{"msg_type":"task_request","task_id":"t{n}","task_type":"physics_step","session_id":"w","task_data":{data}}}"#
            ),
        );
        for peer in &mut peers {
            for assignment in assignments(peer) {
                let answer = format!(
                    r#"{{"msg_type":"task_result","task_id":"{assignment}","result":{{"status":"success","tick":{n},"blob":"{blob}"}}}}"#
                );
                // Decoded first, as the connection does, off the lock.
                let decoded = decode_text(&answer);
                let before = router.lock_held().frames_held();
                if under_lock {
                    router.handle_decoded_hashing_under_lock(peer.id, decoded);
                } else {
                    router.handle_decoded(peer.id, decoded);
                }
                let held = router.lock_held().frames_held() - before;
                total += held;
                longest = longest.max(held);
                frames += 1;
            }
        }
        drain(&mut gamer);
    }
    let stats = router.stats();
    assert_eq!(stats.ticks_compared, TICKS, "every tick compared: {stats:?}");
    assert_eq!(stats.replica_disagreements, 0);
    (total / frames.max(1), longest)
}

fn main() {
    println!("Lock held per replicated answer frame, {TICKS} ticks, 2 replicas (mean / longest, µs)");
    println!("{:>12} {:>24} {:>24} {:>8}", "answer", "hashed under the lock", "hashed before the lock", "ratio");
    for bytes in [1024usize, 16 * 1024, 256 * 1024, 1024 * 1024] {
        // One warm-up pass, then the two ways in turn.
        held_per_answer(bytes, false);
        let (under_mean, under_max) = held_per_answer(bytes, true);
        let (before_mean, before_max) = held_per_answer(bytes, false);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{:>10} B {:>11.1} / {:>10.1} {:>11.1} / {:>10.1} {:>7.1}×",
            bytes,
            us(under_mean),
            us(under_max),
            us(before_mean),
            us(before_max),
            us(under_mean) / us(before_mean).max(1e-3)
        );
    }
}
