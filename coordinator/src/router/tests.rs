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
    tick_with(n, n == 0)
}

fn tick_with(n: u64, snapshot: bool) -> String {
    let data = if snapshot { format!(r#"{{"tick":{n},"snapshot":true}}"#) } else { format!(r#"{{"tick":{n}}}"#) };
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

fn backlog_of(router: &Router, generation: u32) -> Vec<String> {
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
    let mut gamer = connect(&router);
    router.handle_frame(gamer.id, r#"{"msg_type":"register_gamer","gamer_id":"g"}"#);
    // 200 ticks the two replicas agree on, then one they answer differently.
    const LOGGED: u64 = 201;
    let mut replicas = Vec::new();
    // What the third peer (the judge, once the tie-breaker starts) was sent meanwhile.
    let mut early = Vec::new();
    for n in 0..LOGGED {
        router.handle_frame(gamer.id, &tick(n));
        for (i, peer) in peers.iter_mut().enumerate() {
            for (assignment, task_id) in assignments(peer) {
                if !replicas.contains(&i) && replicas.len() == 2 {
                    early.push((assignment, task_id));
                    continue;
                }
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
    let waiting = backlog_of(&router, generation);
    assert_eq!(waiting.len(), LOGGED as usize - REPLAY_BATCH);
    assert_eq!(waiting.first().map(String::as_str), Some(format!("t{REPLAY_BATCH}").as_str()));
    // A live tick meanwhile waits behind the replay, for the replica that replays.
    handle_one_hold(&router, gamer.id, &tick(LOGGED));
    let waiting = backlog_of(&router, generation);
    assert_eq!(waiting.len(), LOGGED as usize - REPLAY_BATCH + 1);
    assert_eq!(waiting.last().map(String::as_str), Some(format!("t{LOGGED}").as_str()));
    // A snapshot drops the session's log between two batches: the ticks the replay still
    // owes stay tracked, so their answers are compared, never delivered a second time.
    handle_one_hold(&router, gamer.id, &tick_with(LOGGED + 1, true));
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
    assert!(backlog_of(&router, generation).is_empty());
    // The judge gets every logged tick, then the live one, in order (answering as it goes:
    // a session's ticks are pipelined a few at a time).
    let mut seen = Vec::new();
    while seen.len() <= LOGGED as usize + 1 {
        let mut waiting = std::mem::take(&mut early);
        waiting.extend(assignments(&mut peers[judge]));
        assert!(!waiting.is_empty(), "the judge was left waiting after {} ticks", seen.len());
        for (assignment, task_id) in waiting {
            let n: u64 = task_id[1..].parse().unwrap();
            router.handle_frame(peers[judge].id, &answer(&assignment, n, "same"));
            seen.push(n);
        }
    }
    assert_eq!(seen, (0..=LOGGED + 1).collect::<Vec<_>>());
    let mut delivered = Vec::new();
    while let Ok((frame, _)) = gamer.rx.try_recv_weighed() {
        if let Outbound::Message(message) = frame
            && let p2c2r_protocol::Message::TaskResult(result) = *message
        {
            delivered.push(result.task_id);
        }
    }
    let before = delivered.len();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), before, "a tick's result was delivered twice");
}

#[test]
fn a_task_requeued_when_its_peer_leaves_wakes_the_deadline_timer_for_its_queue_wait() {
    use futures_util::FutureExt;
    let router = Router::new(Config::default());
    let mut peer = connect(&router);
    router.handle_frame(
        peer.id,
        r#"{"msg_type":"register_peer","peer_id":"p","capabilities":{"max_concurrent_tasks":1}}"#,
    );
    let gamer = connect(&router);
    router.handle_frame(gamer.id, r#"{"msg_type":"register_gamer","gamer_id":"g"}"#);
    // An attempt deadline of ten minutes: far beyond the 30 s queue wait limit.
    router.handle_frame(
        gamer.id,
        r#"{"msg_type":"task_request","task_id":"t","task_type":"ai_navigate","task_data":{},"deadline_ms":600000}"#,
    );
    assert_eq!(assignments(&mut peer).len(), 1);
    let sleeping_until = router.next_deadline().expect("the attempt's deadline");
    // What earlier holds rang is taken: the timer has read the deadline since.
    let _ = router.deadlines_changed.notified().now_or_never();
    router.disconnect(peer.id, Departure::Closed);
    assert!(
        router.deadlines_changed.notified().now_or_never().is_some(),
        "the re-queued task gives up at its queue wait limit, before the timer's deadline: it must be woken"
    );
    assert!(router.next_deadline().expect("the queue wait limit") < sleeping_until);
    // A hold that leaves no earlier deadline does not wake it.
    router.handle_frame(gamer.id, r#"{"msg_type":"heartbeat"}"#);
    assert!(router.deadlines_changed.notified().now_or_never().is_none());
}
