//! The router driven directly (no sockets): what needs a look inside one lock hold.

use std::time::Instant;

use super::replicas::REPLAY_BATCH;
use super::*;
use crate::outbound::{Outbound, OutboundRx, channel};
use tokio_util::sync::CancellationToken;

struct Conn {
    id: ConnId,
    rx: OutboundRx,
}

fn connect(router: &Router) -> Conn {
    let (tx, rx) = channel(1 << 16, 1 << 30);
    let id = router.connect(ConnHandle { tx, kill: CancellationToken::new(), chunked: None }, None);
    Conn { id, rx }
}

/// The assignments waiting for a peer: (assignment id, the gamer's task id).
fn assignments(conn: &mut Conn) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Ok((frame, _)) = conn.rx.try_recv_weighed() {
        if let Outbound::Assignment(a) = frame {
            out.push((a.assignment_id, a.task_id));
        }
    }
    out
}

fn tick(n: u64) -> String {
    let data = if n == 0 { r#"{"tick":0,"snapshot":true}"#.to_owned() } else { format!(r#"{{"tick":{n}}}"#) };
    format!(
        r#"{{"msg_type":"task_request","task_id":"t{n}","task_type":"physics_step","session_id":"w","task_data":{data}}}"#
    )
}

fn answer(assignment: &str, n: u64, digest: &str) -> String {
    format!(
        r#"{{"msg_type":"task_result","task_id":"{assignment}","result":{{"status":"success","tick":{n},"digest":"{digest}"}}}}"#
    )
}

/// [`Router::handle_decoded`] without the replays it leaves for later lock holds: the
/// state as the frame's own hold left it.
fn handle_one_hold(router: &Router, conn: ConnId, frame: &str) {
    let Decoded { message, kind, snapshot } = decode_text(frame);
    let digest = message.as_ref().ok().and_then(|m| router.answer_digest(conn, m, kind));
    let mut state = router.lock();
    router.dispatch_message(&mut state, conn, message, Read { kind, snapshot, digest });
}

fn backlog_of(router: &Router, generation: u32) -> (usize, usize) {
    let mut state = router.lock();
    let entry = state.replicas.group_mut("g", "w").expect("the session is replicated");
    entry.backlog(generation)
}

#[test]
fn a_long_replay_is_submitted_a_batch_per_lock_hold_and_live_ticks_wait_behind_it() {
    let config = Config {
        replication: crate::config::Replication {
            replicas: 2,
            replicas_on_distinct_hosts: false,
            audit_fraction: 0.0,
            ..Default::default()
        },
        reputation: crate::config::Reputation { established_after_answers: 0, ..Default::default() },
        rate_limits: crate::config::RateLimits {
            max_tasks_per_second: None,
            max_task_bytes_per_second: None,
            max_new_sessions_per_second: None,
            max_connection_attempts_per_second: None,
        },
        ..Config::default()
    };
    let router = Router::new(config);
    let setup = r#"{"engine":"rapier3d 0.0.0","features":["enhanced-determinism"],"sim":"t","arch":"t"}"#;
    let mut peers: Vec<Conn> = (0..3).map(|_| connect(&router)).collect();
    for (i, peer) in peers.iter_mut().enumerate() {
        let caps = format!(r#"{{"max_concurrent_tasks":4,"determinism":{setup}}}"#);
        router.handle_frame(
            peer.id,
            &format!(r#"{{"msg_type":"register_peer","peer_id":"p{i}","capabilities":{caps}}}"#),
        );
        assignments(peer);
    }
    let gamer = connect(&router);
    router.handle_frame(gamer.id, r#"{"msg_type":"register_gamer","gamer_id":"g"}"#);
    // 200 ticks the two replicas agree on, then one they answer differently.
    const LOGGED: u64 = 201;
    let mut replicas = Vec::new();
    for n in 0..LOGGED {
        router.handle_frame(gamer.id, &tick(n));
        for (i, peer) in peers.iter_mut().enumerate() {
            for (assignment, _) in assignments(peer) {
                if !replicas.contains(&i) {
                    replicas.push(i);
                }
                let digest = if n + 1 == LOGGED { format!("{i}") } else { "same".to_owned() };
                if n + 1 == LOGGED && i == replicas[1] {
                    // The second answer of the disputed tick: a tie, settled by a third
                    // replica replaying the 201 logged ticks.
                    handle_one_hold(&router, peer.id, &answer(&assignment, n, &digest));
                } else {
                    router.handle_frame(peer.id, &answer(&assignment, n, &digest));
                }
            }
        }
    }
    assert_eq!(replicas.len(), 2, "two replicas served the session");
    let judge = (0..3).find(|i| !replicas.contains(i)).unwrap();
    let generation = 2;
    // The disputed tick's own hold submitted one batch of the replay; the rest waits.
    assert_eq!(backlog_of(&router, generation), (LOGGED as usize - REPLAY_BATCH, 0));
    // A live tick meanwhile waits behind the replay, for the replica that replays.
    handle_one_hold(&router, gamer.id, &tick(LOGGED));
    assert_eq!(backlog_of(&router, generation), (LOGGED as usize - REPLAY_BATCH, 1));
    // Each further hold submits one more batch, until nothing waits.
    let mut holds = 1;
    loop {
        let mut state = router.lock();
        let more = state.continue_replays(REPLAY_BATCH, Instant::now());
        state.dispatch(Instant::now());
        drop(state);
        holds += 1;
        if !more {
            break;
        }
    }
    assert_eq!(holds, (LOGGED as usize + 1).div_ceil(REPLAY_BATCH));
    assert_eq!(backlog_of(&router, generation), (0, 0));
    // The judge gets every logged tick, then the live one, in order (answering as it goes:
    // a session's ticks are pipelined a few at a time).
    let mut seen = Vec::new();
    while seen.len() <= LOGGED as usize {
        let waiting = assignments(&mut peers[judge]);
        assert!(!waiting.is_empty(), "the judge was left waiting after {} ticks", seen.len());
        for (assignment, task_id) in waiting {
            let n: u64 = task_id[1..].parse().unwrap();
            router.handle_frame(peers[judge].id, &answer(&assignment, n, "same"));
            seen.push(n);
        }
    }
    assert_eq!(seen, (0..=LOGGED).collect::<Vec<_>>());
}
