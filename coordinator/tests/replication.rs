//! Replicated and audited sessions against the real coordinator, with scripted peers (so
//! each test chooses exactly who answers what, and when): the first answer goes to the
//! gamer once, answers are compared, a peer outvoted by two replicas is quarantined and
//! the gamer corrected, a tie is settled by a replica replaying the session's log, a dead
//! replica costs the session nothing and is replaced from the log, strict mode delivers
//! only what two replicas agree on. The same with real peers and real physics is in
//! `peer/tests/replication.rs`.

mod common;

use common::Client;
use coordinator::{Config, CoordinatorHandle, spawn};
use p2c2r_protocol::{
    Capabilities, Determinism, ErrorCode, Message, SessionStatus, TaskAssignment, TaskError, TaskResult, task_types,
};

fn replicated(replicas: u8) -> Config {
    // Every peer of these tests is on loopback: one address. Every peer's vote counts from
    // its first answer (what votes weigh is tested on its own, below).
    Config {
        replication: coordinator::Replication {
            replicas,
            replicas_on_distinct_hosts: false,
            audit_fraction: 0.0,
            ..Default::default()
        },
        reputation: coordinator::Reputation { established_after_answers: 0, ..Default::default() },
        ..Config::default()
    }
}

async fn start(config: Config) -> CoordinatorHandle {
    spawn("127.0.0.1:0", config).await.expect("bind loopback")
}

fn setup() -> Determinism {
    Determinism {
        engine: "rapier3d 0.0.0".into(),
        features: vec!["enhanced-determinism".into()],
        sim: "scripted".into(),
        arch: "test".into(),
    }
}

async fn peer(url: &str, id: &str) -> Client {
    let caps = Capabilities { max_concurrent_tasks: Some(4), determinism: Some(setup()), ..Default::default() };
    Client::peer_with(url, id, caps).await
}

fn tick(n: u64) -> String {
    if n == 0 { r#"{"tick":0,"snapshot":true,"dt":0.016}"#.to_owned() } else { format!(r#"{{"tick":{n},"dt":0.016}}"#) }
}

/// What an honest replica answers tick `n` (the same bytes on every honest replica).
fn honest(n: u64) -> String {
    format!(r#"{{"status":"success","tick":{n},"digest":"{:016x}"}}"#, n * 7919)
}

fn lie(n: u64) -> String {
    format!(r#"{{"status":"success","tick":{n},"digest":"{:016x}"}}"#, n * 7919 + 1)
}

async fn submit(gamer: &mut Client, n: u64) {
    gamer.submit(&format!("t{n}"), task_types::PHYSICS_STEP, &tick(n), Some("world")).await;
}

/// The gamer's next task result, remembering the session statuses that came before it.
async fn next_result(gamer: &mut Client, statuses: &mut Vec<SessionStatus>) -> TaskResult {
    loop {
        match gamer.recv().await {
            Message::TaskResult(r) => return r,
            Message::SessionStatus(s) => statuses.push(s),
            other => panic!("expected a task_result, got {other:?}"),
        }
    }
}

/// The peer's next assignment, which must be tick `n` of the session.
async fn assignment(peer: &mut Client, n: u64) -> TaskAssignment {
    let a = peer.recv_assignment().await;
    assert_eq!(a.task_data.task_id, format!("t{n}"), "replicas get the gamer's own ids");
    assert_eq!(a.task_data.session_id.as_deref(), Some("world"));
    a
}

/// Tick `n`, submitted: both replicas get it; `first` answers honestly and its answer
/// reaches the gamer, then `second` answers, with a lie when `lies`.
async fn answer_tick(
    gamer: &mut Client,
    (first, second): (&mut Client, &mut Client),
    n: u64,
    lies: bool,
    statuses: &mut Vec<SessionStatus>,
) {
    let (t1, t2) = (assignment(first, n).await, assignment(second, n).await);
    first.answer(&t1, &honest(n)).await;
    assert_eq!(next_result(gamer, statuses).await.result.json(), Some(honest(n).as_str()));
    second.answer(&t2, &if lies { lie(n) } else { honest(n) }).await;
}

/// A session on two replicas, `a` and `liar`, with a third peer (`judge`) connected and
/// idle, after the judge settled a tie.
struct Tie {
    coord: CoordinatorHandle,
    gamer: Client,
    a: Client,
    judge: Client,
    statuses: Vec<SessionStatus>,
}

/// Plays ticks `0..ticks` on `a` and `liar` (the liar lying on the last, after `a`'s
/// answer reached the gamer), then lets the judge replay the log and checks the liar is
/// quarantined.
async fn tie_settled_by_a_judge(config: Config, ticks: u64) -> Tie {
    let coord = start(config).await;
    let url = coord.url();
    let (mut a, mut liar) = (peer(&url, "a").await, peer(&url, "liar").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    submit(&mut gamer, 0).await;
    common::eventually("tick 0 at both replicas", || coord.stats().in_flight_now == 2).await;
    // Two replicas are wanted: the third peer stays idle until there is a tie to settle.
    let mut judge = peer(&url, "judge").await;
    for n in 0..ticks {
        if n > 0 {
            submit(&mut gamer, n).await;
        }
        answer_tick(&mut gamer, (&mut a, &mut liar), n, n == ticks - 1, &mut statuses).await;
    }
    // One against one: the judge replays the log, snapshot first, and settles it.
    for n in 0..ticks {
        let tj = assignment(&mut judge, n).await;
        judge.answer(&tj, &honest(n)).await;
    }
    assert_eq!(next_error(&mut liar).await.code, ErrorCode::Quarantined);
    Tie { coord, gamer, a, judge, statuses }
}

/// A peer's next error, skipping the assignments before it.
async fn next_error(peer: &mut Client) -> p2c2r_protocol::ErrorMessage {
    loop {
        match peer.recv().await {
            Message::Error(e) => return e,
            Message::TaskAssignment(_) => continue,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

fn error_of(result: &TaskResult) -> TaskError {
    serde_json::from_str(result.result.json().unwrap()).expect("an error result")
}

#[tokio::test]
async fn every_replica_runs_every_tick_and_the_gamer_gets_the_first_answer_once() {
    let coord = start(replicated(2)).await;
    let url = coord.url();
    let (mut a, mut b) = (peer(&url, "a").await, peer(&url, "b").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    for n in 0..5 {
        submit(&mut gamer, n).await;
        let (ta, tb) = (assignment(&mut a, n).await, assignment(&mut b, n).await);
        assert_eq!(ta.task_data.task_type, task_types::PHYSICS_STEP);
        // The first answer goes to the gamer at once.
        let (first, second, first_id) = if n % 2 == 0 { (&mut a, &mut b, "a") } else { (&mut b, &mut a, "b") };
        first.answer(if n % 2 == 0 { &ta } else { &tb }, &honest(n)).await;
        let result = next_result(&mut gamer, &mut statuses).await;
        assert_eq!(result.task_id, format!("t{n}"));
        assert_eq!(result.peer_id.as_deref(), Some(first_id));
        assert_eq!(result.result.json(), Some(honest(n).as_str()));
        second.answer(if n % 2 == 0 { &tb } else { &ta }, &honest(n)).await;
    }
    // The second answers were compared, never delivered.
    common::eventually("every tick compared", || coord.stats().ticks_compared == 5).await;
    let stats = gamer.stats().await;
    assert_eq!(stats.replica_disagreements, 0);
    assert_eq!(stats.tasks_completed, 5, "one delivery per tick: {stats:?}");
    assert_eq!(stats.tasks_assigned, 10);
    let last = statuses.last().expect("the gamer is told how its session is replicated");
    assert_eq!((last.session_id.as_str(), last.replicas_wanted, last.replicas_live), ("world", 2, 2));
    coord.shutdown().await;
}

#[tokio::test]
async fn a_peer_outvoted_by_two_replicas_is_quarantined_and_the_gamer_corrected() {
    let coord = start(replicated(3)).await;
    let url = coord.url();
    let (mut a, mut b, mut liar) = (peer(&url, "a").await, peer(&url, "b").await, peer(&url, "liar").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    let mut judge = None;
    for n in 0..3 {
        submit(&mut gamer, n).await;
        let (ta, tb, tl) = (assignment(&mut a, n).await, assignment(&mut b, n).await, assignment(&mut liar, n).await);
        // A fourth peer, idle until a verdict needs a re-run.
        if judge.is_none() {
            judge = Some(peer(&url, "judge").await);
        }
        // The liar answers first, and lies on tick 2: the gamer gets the lie at once.
        liar.answer(&tl, &if n == 2 { lie(n) } else { honest(n) }).await;
        let result = next_result(&mut gamer, &mut statuses).await;
        assert_eq!(result.peer_id.as_deref(), Some("liar"));
        a.answer(&ta, &honest(n)).await;
        b.answer(&tb, &honest(n)).await;
    }
    // Outvoted two to one: before the verdict, the judge re-runs the session from its log.
    let mut judge = judge.unwrap();
    for n in 0..3 {
        let tj = assignment(&mut judge, n).await;
        judge.answer(&tj, &honest(n)).await;
    }
    // Confirmed: quarantined and closed.
    let refusal = liar.recv_error().await;
    assert_eq!(refusal.code, ErrorCode::Quarantined, "{refusal:?}");
    assert!(liar.expect_closed().await.is_some());
    // The next tick corrects the gamer: every replica (the judge stays one) runs it as a
    // full-state step.
    submit(&mut gamer, 3).await;
    let (ta, tb, tj) = (assignment(&mut a, 3).await, assignment(&mut b, 3).await, assignment(&mut judge, 3).await);
    for t in [&ta, &tb, &tj] {
        assert_eq!(t.task_data.task_type, task_types::PHYSICS_STEP_FULL);
    }
    a.answer(&ta, &honest(3)).await;
    assert_eq!(next_result(&mut gamer, &mut statuses).await.peer_id.as_deref(), Some("a"));
    b.answer(&tb, &honest(3)).await;
    judge.answer(&tj, &honest(3)).await;
    // And the ticks after it are ordinary ones again.
    submit(&mut gamer, 4).await;
    assert_eq!(assignment(&mut a, 4).await.task_data.task_type, task_types::PHYSICS_STEP);
    let stats = gamer.stats().await;
    assert_eq!((stats.replica_disagreements, stats.peers_caught_lying, stats.sessions_corrected), (1, 1, 1));
    assert_eq!(stats.peers_quarantined, 1);
    assert!(coord.metrics_text().contains("p2c2r_peers_caught_lying_total 1"));
    let last = statuses.last().unwrap();
    assert_eq!((last.disagreements, last.corrections), (1, 1), "{statuses:?}");
    // Its id stays refused.
    let mut again = Client::connect(&url).await;
    let caps = Capabilities { determinism: Some(setup()), ..Default::default() };
    again.send(&p2c2r_testkit::client::register_peer("liar", caps, None)).await;
    assert_eq!(again.recv_error().await.code, ErrorCode::Quarantined);
    coord.shutdown().await;
}

#[tokio::test]
async fn a_tie_is_settled_by_a_third_peer_replaying_the_log_from_the_snapshot() {
    let Tie { coord, mut gamer, mut a, mut judge, mut statuses } = tie_settled_by_a_judge(replicated(2), 3).await;
    // The judge stays as the second replica, and the next tick corrects the gamer.
    submit(&mut gamer, 3).await;
    let (ta, tj) = (assignment(&mut a, 3).await, assignment(&mut judge, 3).await);
    assert_eq!(ta.task_data.task_type, task_types::PHYSICS_STEP_FULL);
    a.answer(&ta, &honest(3)).await;
    judge.answer(&tj, &honest(3)).await;
    next_result(&mut gamer, &mut statuses).await;
    let stats = gamer.stats().await;
    assert_eq!((stats.replica_disagreements, stats.peers_caught_lying, stats.replicas_started), (1, 1, 1));
    coord.shutdown().await;
}

#[tokio::test]
async fn a_tie_nothing_can_settle_restarts_the_session_on_fresh_replicas() {
    let coord = start(replicated(2)).await;
    let url = coord.url();
    let (mut a, mut b) = (peer(&url, "a").await, peer(&url, "b").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    for n in 0..2 {
        submit(&mut gamer, n).await;
        answer_tick(&mut gamer, (&mut a, &mut b), n, n == 1, &mut statuses).await;
    }
    // No third peer: who lied cannot be told. Neither is trusted (both replicas are
    // dropped: the gamer is told), nobody is quarantined.
    loop {
        match gamer.recv().await {
            Message::SessionStatus(s) if s.replicas_live == 0 => break,
            Message::SessionStatus(_) => continue,
            other => panic!("expected the session's status, got {other:?}"),
        }
    }
    let stats = gamer.stats().await;
    assert_eq!((stats.replica_disagreements, stats.peers_caught_lying), (1, 0), "{stats:?}");
    // The next tick starts a replica again, replaying the log from the snapshot.
    submit(&mut gamer, 2).await;
    let replayed = tokio::select! {
        first = a.recv_assignment() => first,
        first = b.recv_assignment() => first,
    };
    assert_eq!(replayed.task_data.task_id, "t0", "the log's snapshot first");
    coord.shutdown().await;
}

#[tokio::test]
async fn a_dead_replica_costs_the_session_nothing_and_is_replaced_from_the_log() {
    let coord = start(replicated(2)).await;
    let url = coord.url();
    let (mut a, mut b) = (peer(&url, "a").await, peer(&url, "b").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    for n in 0..2 {
        submit(&mut gamer, n).await;
        let (ta, tb) = (assignment(&mut a, n).await, assignment(&mut b, n).await);
        a.answer(&ta, &honest(n)).await;
        b.answer(&tb, &honest(n)).await;
        assert_eq!(next_result(&mut gamer, &mut statuses).await.result.json(), Some(honest(n).as_str()));
    }
    // Tick 2 is out at both when the serving replica dies: the other's answer is the
    // session's, with no error, no resync.
    submit(&mut gamer, 2).await;
    let _lost = assignment(&mut a, 2).await;
    let tb = assignment(&mut b, 2).await;
    drop(a);
    b.answer(&tb, &honest(2)).await;
    let result = next_result(&mut gamer, &mut statuses).await;
    assert_eq!((result.task_id.as_str(), result.peer_id.as_deref()), ("t2", Some("b")));
    assert_eq!(result.result.json(), Some(honest(2).as_str()));
    // A new peer becomes the second replica: it replays the log (from the snapshot),
    // then runs the live ticks.
    let mut c = peer(&url, "c").await;
    common::eventually("the coordinator sees the new peer", || coord.stats().peers == 2).await;
    submit(&mut gamer, 3).await;
    for n in 0..=3 {
        let tc = assignment(&mut c, n).await;
        c.answer(&tc, &honest(n)).await;
    }
    let tb = assignment(&mut b, 3).await;
    b.answer(&tb, &honest(3)).await;
    assert_eq!(next_result(&mut gamer, &mut statuses).await.task_id, "t3");
    let stats = gamer.stats().await;
    assert_eq!((stats.replicas_started, stats.replica_disagreements, stats.peers_caught_lying), (1, 0, 0));
    assert!(statuses.iter().any(|s| s.replicas_live == 1), "the gamer was told: {statuses:?}");
    assert_eq!(statuses.last().unwrap().replicas_live, 2);
    coord.shutdown().await;
}

#[tokio::test]
async fn strict_mode_delivers_only_what_two_replicas_agree_on() {
    let coord = start(Config {
        replication: coordinator::Replication { strict_replication: true, ..(replicated(1)).replication },
        ..replicated(1)
    })
    .await;
    let url = coord.url();
    let (mut a, mut b) = (peer(&url, "a").await, peer(&url, "b").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    submit(&mut gamer, 0).await;
    let (ta, tb) = (assignment(&mut a, 0).await, assignment(&mut b, 0).await);
    a.answer(&ta, &honest(0)).await;
    // Nothing yet: one answer is not an agreement. The gamer's next frame is the answer
    // both gave, delivered when the second arrives.
    b.answer(&tb, &honest(0)).await;
    let result = next_result(&mut gamer, &mut statuses).await;
    assert_eq!(result.result.json(), Some(honest(0).as_str()));
    assert!(statuses.last().unwrap().strict);
    // A disagreement is never delivered: the gamer is told to resync.
    submit(&mut gamer, 1).await;
    let (ta, tb) = (assignment(&mut a, 1).await, assignment(&mut b, 1).await);
    a.answer(&ta, &honest(1)).await;
    b.answer(&tb, &lie(1)).await;
    let result = next_result(&mut gamer, &mut statuses).await;
    let error = error_of(&result);
    assert_eq!((error.code, error.resync), (ErrorCode::Unverified, true), "{error:?}");
    coord.shutdown().await;
}

#[tokio::test]
async fn ids_with_control_characters_are_refused() {
    let coord = start(replicated(2)).await;
    let mut gamer = Client::gamer(&coord.url(), "g").await;
    gamer.submit("t\u{0}1", task_types::PHYSICS_STEP, &tick(0), Some("world")).await;
    let error = gamer.recv_error().await;
    assert_eq!(error.code, ErrorCode::InvalidMessage, "{error:?}");
    gamer.submit("t1", task_types::PHYSICS_STEP, &tick(0), Some("world\u{0}1")).await;
    assert_eq!(gamer.recv_error().await.code, ErrorCode::InvalidMessage);
    coord.shutdown().await;
}

#[tokio::test]
async fn an_audited_session_runs_on_a_hidden_second_replica_and_a_lie_is_settled_by_a_third() {
    let Tie { coord, mut gamer, statuses, .. } = tie_settled_by_a_judge(
        Config {
            replication: coordinator::Replication { audit_fraction: 1.0, ..(replicated(1)).replication },
            ..replicated(1)
        },
        2,
    )
    .await;
    let status = statuses.last().unwrap();
    assert!(status.audited && status.replicas_wanted == 2, "{statuses:?}");
    let stats = gamer.stats().await;
    assert_eq!((stats.replica_disagreements, stats.peers_caught_lying), (1, 1), "{stats:?}");
    coord.shutdown().await;
}

/// An attack on the comparison itself: a gamer reusing a task id its replicas already
/// answered (with another request under it) would make an honest answer look outvoted.
/// The id is refused while the coordinator holds answers under it; nobody is quarantined.
#[tokio::test]
async fn a_gamer_cannot_reuse_a_task_id_to_get_honest_peers_quarantined() {
    let coord = start(replicated(2)).await;
    let url = coord.url();
    let (mut a, mut b) = (peer(&url, "a").await, peer(&url, "b").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    submit(&mut gamer, 0).await;
    answer_tick(&mut gamer, (&mut a, &mut b), 0, false, &mut statuses).await;
    // The same id again, with another request: refused.
    gamer.submit("t0", task_types::PHYSICS_STEP, &tick(1), Some("world")).await;
    let refusal = loop {
        match gamer.recv().await {
            Message::Error(e) => break e,
            Message::SessionStatus(_) => continue,
            other => panic!("expected an error, got {other:?}"),
        }
    };
    assert_eq!(refusal.code, ErrorCode::DuplicateTask, "{refusal:?}");
    // A coordinator-only task type is refused too.
    gamer.submit("t9", task_types::PHYSICS_STEP_FULL, &tick(1), Some("world")).await;
    assert_eq!(gamer.recv_error().await.code, ErrorCode::InvalidMessage);
    // And so is another task type on the replicated session.
    gamer.submit("t10", task_types::AI_NAVIGATE, "{}", Some("world")).await;
    assert_eq!(gamer.recv_error().await.code, ErrorCode::InvalidMessage);
    let stats = gamer.stats().await;
    assert_eq!((stats.peers_quarantined, stats.replica_disagreements), (0, 0), "{stats:?}");
    coord.shutdown().await;
}

/// A gamer past its share of replicated sessions gets its next physics session on one peer
/// (its budgets bound what replication costs): said in the metrics and the log, not silent.
#[tokio::test]
async fn a_session_past_the_gamers_share_runs_unreplicated_and_the_operator_is_told() {
    // 6 sessions per gamer, 3 per replicated session (2 replicas and a spare): 2 groups.
    let coord = start(Config {
        scheduling: coordinator::Scheduling { max_sessions_per_gamer: 6, ..(replicated(2)).scheduling },
        ..replicated(2)
    })
    .await;
    let url = coord.url();
    let (mut a, mut b) = (peer(&url, "a").await, peer(&url, "b").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    for (n, session) in ["s1", "s2", "s3"].into_iter().enumerate() {
        gamer.submit(&format!("t{n}"), task_types::PHYSICS_STEP, &tick(0), Some(session)).await;
        let copies = if n < 2 { 2 } else { 1 };
        for _ in 0..copies {
            tokio::select! {
                x = a.recv_assignment() => a.answer(&x, &honest(0)).await,
                x = b.recv_assignment() => b.answer(&x, &honest(0)).await,
            }
        }
        assert_eq!(next_result(&mut gamer, &mut statuses).await.task_id, format!("t{n}"));
    }
    assert!(coord.metrics_text().contains("p2c2r_sessions_unreplicated_total 1"), "{}", coord.metrics_text());
    coord.shutdown().await;
}

/// Three fresh peers declaring a made-up setup (from other addresses) do not capture
/// replicated sessions from two established honest peers: the class with the most
/// established peers serves them, whatever the setup strings say.
#[tokio::test]
async fn fresh_peers_of_a_made_up_setup_do_not_capture_replicated_sessions() {
    let coord = start(Config {
        reputation: coordinator::Reputation { established_after_answers: 2, ..(replicated(2)).reputation },
        connections: coordinator::Connections { host_prefix_v4: 32, ..(replicated(2)).connections },
        ..replicated(2)
    })
    .await;
    let url = coord.url();
    let (mut a, mut b) = (peer(&url, "a").await, peer(&url, "b").await);
    // The honest peers earn their standing on ordinary work.
    let mut gamer = Client::gamer(&url, "g").await;
    for i in 0..6 {
        gamer.submit(&format!("w{i}"), "physics", "{}", None).await;
        tokio::select! {
            x = a.recv_assignment() => a.answer(&x, r#"{"status":"success"}"#).await,
            x = b.recv_assignment() => b.answer(&x, r#"{"status":"success"}"#).await,
        }
        gamer.recv_result().await;
    }
    let made_up = Determinism { arch: "x86_64-v9".into(), ..setup() };
    let mut liars = Vec::new();
    for (i, from) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"].into_iter().enumerate() {
        let caps =
            Capabilities { max_concurrent_tasks: Some(4), determinism: Some(made_up.clone()), ..Default::default() };
        liars.push(Client::peer_from(&url, from, &format!("liar{i}"), caps).await);
    }
    submit(&mut gamer, 0).await;
    let (ta, tb) = (assignment(&mut a, 0).await, assignment(&mut b, 0).await);
    a.answer(&ta, &honest(0)).await;
    b.answer(&tb, &honest(0)).await;
    let mut statuses = Vec::new();
    assert_eq!(next_result(&mut gamer, &mut statuses).await.result.json(), Some(honest(0).as_str()));
    // Both replicas are the honest peers (each got the tick above), with the liars still
    // connected.
    assert!(statuses.iter().any(|s| s.replicas_live == 2), "{statuses:?}");
    assert_eq!(coord.stats().peers, 5);
    drop(liars);
    coord.shutdown().await;
}

/// With `accepted_setups`, a peer declaring any other setup is never a replica.
#[tokio::test]
async fn a_setup_the_operator_does_not_accept_serves_no_replicated_session() {
    let coord = start(Config {
        replication: coordinator::Replication {
            accepted_setups: vec!["something else".into()],
            ..(replicated(2)).replication
        },
        ..replicated(2)
    })
    .await;
    let url = coord.url();
    let (mut a, mut b) = (peer(&url, "a").await, peer(&url, "b").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    submit(&mut gamer, 0).await;
    // One copy, on one peer: nobody to compare it with.
    tokio::select! {
        x = a.recv_assignment() => a.answer(&x, &honest(0)).await,
        x = b.recv_assignment() => b.answer(&x, &honest(0)).await,
    }
    assert_eq!(next_result(&mut gamer, &mut statuses).await.task_id, "t0");
    assert!(statuses.iter().all(|s| s.replicas_live <= 1), "{statuses:?}");
    coord.shutdown().await;
}

/// Attack 2 of the trust issue: two fresh colluding peers (other addresses) agree with an
/// established honest replica on one tick, then answer the next identically wrong, and a
/// third fresh colluder is the peer the re-run lands on. With votes weighed by standing
/// (established, and verified by agreeing with another network) they outvote nobody;
/// counting heads (`established_after_answers` 0), the honest peer would be quarantined.
/// Returns how many peers were quarantined.
async fn fresh_colluders_against_an_established_replica(established_after_answers: u64) -> u64 {
    let coord = start(Config {
        reputation: coordinator::Reputation { established_after_answers, ..(replicated(3)).reputation },
        connections: coordinator::Connections { host_prefix_v4: 32, ..(replicated(3)).connections },
        ..replicated(3)
    })
    .await;
    let url = coord.url();
    let mut honest_peer = peer(&url, "honest").await;
    let mut gamer = Client::gamer(&url, "g").await;
    for i in 0..4 {
        gamer.submit(&format!("w{i}"), "physics", "{}", None).await;
        let a = honest_peer.recv_assignment().await;
        honest_peer.answer(&a, r#"{"status":"success"}"#).await;
        gamer.recv_result().await;
    }
    let caps = Capabilities { max_concurrent_tasks: Some(4), determinism: Some(setup()), ..Default::default() };
    let mut l1 = Client::peer_from(&url, "127.0.0.2", "liar1", caps.clone()).await;
    let mut l2 = Client::peer_from(&url, "127.0.0.3", "liar2", caps.clone()).await;
    let mut statuses = Vec::new();
    // Tick 0 agreed by all three (each one's work verified), tick 1 the lie.
    submit(&mut gamer, 0).await;
    let (h, x, y) = (assignment(&mut honest_peer, 0).await, assignment(&mut l1, 0).await, assignment(&mut l2, 0).await);
    for (p, a) in [(&mut honest_peer, h), (&mut l1, x), (&mut l2, y)] {
        p.answer(&a, &honest(0)).await;
    }
    next_result(&mut gamer, &mut statuses).await;
    submit(&mut gamer, 1).await;
    let (h, x, y) = (assignment(&mut honest_peer, 1).await, assignment(&mut l1, 1).await, assignment(&mut l2, 1).await);
    let mut l3 = Client::peer_from(&url, "127.0.0.4", "liar3", caps).await;
    honest_peer.answer(&h, &honest(1)).await;
    assert_eq!(next_result(&mut gamer, &mut statuses).await.result.json(), Some(honest(1).as_str()));
    l1.answer(&x, &lie(1)).await;
    l2.answer(&y, &lie(1)).await;
    // The re-run (a confirmation, or a tie-break) lands on the third colluder, replaying
    // the log: it agrees on tick 0 and lies on tick 1.
    let z = assignment(&mut l3, 0).await;
    l3.answer(&z, &honest(0)).await;
    let z = assignment(&mut l3, 1).await;
    l3.answer(&z, &lie(1)).await;
    // A connection's frames are handled in order: once its next request is answered, the
    // re-run's answer was handled, and the dispute decided with it.
    l3.stats().await;
    assert_eq!(coord.stats().replica_disagreements, 1);
    let quarantined = coord.stats().peers_quarantined;
    coord.shutdown().await;
    quarantined
}

#[tokio::test]
async fn fresh_colluders_cannot_outvote_an_established_replica() {
    assert_eq!(fresh_colluders_against_an_established_replica(0).await, 1, "counting heads, the honest peer goes");
    assert_eq!(fresh_colluders_against_an_established_replica(4).await, 0);
}

/// Attack 2 again, with established colluders: two peers that answer honestly long enough
/// to be established, then agree on a lie against an honest replica. The verdict waits for
/// a re-run on a fourth peer; when it sides with the honest one, nobody is quarantined, the
/// four are kept apart pairwise across the dispute, and the session's delivery is held.
/// Without the re-run (no fourth peer: `confirm` is `false`), the dispute is unsettled too:
/// a majority alone quarantines no one. Returns (quarantined, unsettled disputes).
async fn established_colluders_against_an_honest_replica(fourth_peer: bool) -> (u64, u64) {
    let coord = start(Config {
        reputation: coordinator::Reputation { established_after_answers: 0, ..(replicated(3)).reputation },
        connections: coordinator::Connections { host_prefix_v4: 32, ..(replicated(3)).connections },
        ..replicated(3)
    })
    .await;
    let url = coord.url();
    let caps = Capabilities { max_concurrent_tasks: Some(4), determinism: Some(setup()), ..Default::default() };
    let mut honest_peer = peer(&url, "honest").await;
    let mut l1 = Client::peer_from(&url, "127.0.0.2", "liar1", caps.clone()).await;
    let mut l2 = Client::peer_from(&url, "127.0.0.3", "liar2", caps.clone()).await;
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    submit(&mut gamer, 0).await;
    let (h, x, y) = (assignment(&mut honest_peer, 0).await, assignment(&mut l1, 0).await, assignment(&mut l2, 0).await);
    let judge = if fourth_peer { Some(Client::peer_from(&url, "127.0.0.4", "judge", caps).await) } else { None };
    l1.answer(&x, &lie(0)).await;
    // The first answer reaches the gamer at once (non-strict): here the lie.
    assert_eq!(next_result(&mut gamer, &mut statuses).await.result.json(), Some(lie(0).as_str()));
    l2.answer(&y, &lie(0)).await;
    honest_peer.answer(&h, &honest(0)).await;
    if let Some(mut judge) = judge {
        let z = assignment(&mut judge, 0).await;
        judge.answer(&z, &honest(0)).await;
        judge.stats().await;
    } else {
        honest_peer.stats().await;
    }
    let stats = coord.stats();
    assert_eq!(stats.replica_disagreements, 1);
    // Held: the next tick's answers reach the gamer only where two replicas agree, and the
    // colluders never again share a session with the peers they disputed.
    common::eventually("every replica retired", || coord.stats().in_flight_now == 0).await;
    let result = (stats.peers_quarantined, stats.disputes_unsettled);
    coord.shutdown().await;
    result
}

#[tokio::test]
async fn established_colluders_outvote_nobody_without_a_re_run_that_confirms_them() {
    assert_eq!(established_colluders_against_an_honest_replica(true).await, (0, 1));
    assert_eq!(established_colluders_against_an_honest_replica(false).await, (0, 1));
}

/// Attack 3 of the trust issue: `--replicas 2`, one honest peer, one liar that answers
/// first, no third peer. The dispute cannot be settled: the two are kept apart from then
/// on, the session runs on one replica with its delivery held (`unverified`: the gamer
/// steps locally), so the liar's answers never reach the gamer again; once two honest peers
/// hold it, they agree and delivery resumes.
#[tokio::test]
async fn one_liar_with_no_third_peer_is_kept_apart_and_its_answers_held() {
    let coord = start(replicated(2)).await;
    let url = coord.url();
    let (mut honest_peer, mut liar) = (peer(&url, "honest").await, peer(&url, "liar").await);
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    submit(&mut gamer, 0).await;
    let (h, l) = (assignment(&mut honest_peer, 0).await, assignment(&mut liar, 0).await);
    liar.answer(&l, &lie(0)).await;
    assert_eq!(next_result(&mut gamer, &mut statuses).await.peer_id.as_deref(), Some("liar"));
    honest_peer.answer(&h, &honest(0)).await;
    common::eventually("the dispute unsettled", || coord.stats().disputes_unsettled == 1).await;
    // The gamer resyncs (a snapshot); the session now runs on one of the two only (never
    // both: they are kept apart), and every tick is answered unverified.
    let mut wrong = 0;
    for n in 1..=4 {
        gamer.submit(&format!("t{n}"), task_types::PHYSICS_STEP, &tick(0), Some("world")).await;
        let (tx, who) = tokio::select! {
            a = honest_peer.recv_assignment() => (a, 0),
            a = liar.recv_assignment() => (a, 1),
        };
        let stats = coord.stats();
        assert_eq!((stats.in_flight_now, stats.queued_now), (1, 0), "one replica only");
        let answer = if who == 1 { lie(n) } else { honest(n) };
        if who == 0 {
            honest_peer.answer(&tx, &answer).await
        } else {
            liar.answer(&tx, &answer).await
        }
        let result = next_result(&mut gamer, &mut statuses).await;
        if result.result.json() == Some(lie(n).as_str()) {
            wrong += 1;
        }
        assert_eq!(error_of(&result).code, ErrorCode::Unverified, "held: {result:?}");
    }
    assert_eq!(wrong, 0, "no lie reaches the gamer after the dispute");
    assert_eq!(coord.stats().peers_quarantined, 0, "nobody can be called a liar");
    // The liar leaves and a second honest peer joins: two agreeing replicas, and delivery
    // resumes.
    drop(liar);
    common::eventually("the liar gone", || coord.fleet().peers.iter().all(|(c, _)| c.id != "liar")).await;
    let mut other = peer(&url, "other").await;
    gamer.submit("t9", task_types::PHYSICS_STEP, &tick(0), Some("world")).await;
    let (a, b) = (honest_peer.recv_assignment().await, other.recv_assignment().await);
    assert_eq!((a.task_data.task_id.as_str(), b.task_data.task_id.as_str()), ("t9", "t9"));
    honest_peer.answer(&a, &honest(9)).await;
    other.answer(&b, &honest(9)).await;
    let result = next_result(&mut gamer, &mut statuses).await;
    assert_eq!(result.result.json(), Some(honest(9).as_str()), "two agree: delivered");
    coord.shutdown().await;
}

/// A liar in disputes nothing can settle (no log to replay: `replica_log_ticks` 0) with
/// verified peers of three networks, one after another, is quarantined; the honest peers,
/// each in one dispute, are not. (A partner counts only once its work was verified: each
/// honest peer first agrees with a witness on a replicated tick, before the liar is there.)
#[tokio::test]
async fn a_liar_in_unsettled_disputes_with_three_networks_is_quarantined() {
    let config = Config {
        replication: coordinator::Replication {
            replicas_on_distinct_hosts: true,
            replica_log_ticks: 0,
            ..(replicated(2)).replication
        },
        connections: coordinator::Connections { host_prefix_v4: 32, ..(replicated(2)).connections },
        ..replicated(2)
    };
    let coord = start(config).await;
    let url = coord.url();
    let caps = Capabilities { max_concurrent_tasks: Some(4), determinism: Some(setup()), ..Default::default() };
    let mut gamer = Client::gamer(&url, "g").await;
    let mut statuses = Vec::new();
    let gone = |id: String| {
        let coord = &coord;
        async move { common::eventually("the peer gone", || coord.fleet().peers.iter().all(|(c, _)| c.id != id)).await }
    };
    // Each honest peer's work verified: one replicated tick beside a witness.
    let honest_peers = [("127.0.0.1", "honest0"), ("127.0.0.3", "honest1"), ("127.0.0.4", "honest2")];
    let mut witness = Client::peer_from(&url, "127.0.0.5", "witness", caps.clone()).await;
    let mut secrets = Vec::new();
    for (i, (address, id)) in honest_peers.into_iter().enumerate() {
        let mut honest_peer = Client::peer_from(&url, address, id, caps.clone()).await;
        gamer.submit(&format!("w{i}"), task_types::PHYSICS_STEP, &tick(0), Some(&format!("warm{i}"))).await;
        let (h, w) = (honest_peer.recv_assignment().await, witness.recv_assignment().await);
        honest_peer.answer(&h, &honest(0)).await;
        witness.answer(&w, &honest(0)).await;
        next_result(&mut gamer, &mut statuses).await;
        honest_peer.stats().await;
        witness.stats().await;
        secrets.push(honest_peer.secret.clone());
        drop(honest_peer);
        gone(id.to_owned()).await;
    }
    drop(witness);
    gone("witness".to_owned()).await;
    // The liar disputes each of them in turn.
    let mut liar = Client::peer_from(&url, "127.0.0.2", "liar", caps.clone()).await;
    for (i, ((address, id), secret)) in honest_peers.into_iter().zip(secrets).enumerate() {
        let mut honest_peer = Client::connect_from(&url, address).await;
        honest_peer.register(&p2c2r_testkit::client::register_peer(id, caps.clone(), secret)).await;
        let (session, task) = (format!("world{i}"), format!("s{i}"));
        gamer.submit(&task, task_types::PHYSICS_STEP, &tick(0), Some(&session)).await;
        let (h, l) = (honest_peer.recv_assignment().await, liar.recv_assignment().await);
        honest_peer.answer(&h, &honest(0)).await;
        liar.answer(&l, &lie(0)).await;
        let result = next_result(&mut gamer, &mut statuses).await;
        assert_eq!(result.task_id, task);
        common::eventually("the dispute unsettled", || coord.stats().disputes_unsettled == i as u64 + 1).await;
        drop(honest_peer);
        gone(id.to_owned()).await;
    }
    assert_eq!(liar.recv_error().await.code, ErrorCode::Quarantined);
    let stats = coord.stats();
    assert_eq!((stats.peers_quarantined, stats.peers_quarantined_for_disputes), (1, 1));
    assert!(coord.metrics_text().contains("p2c2r_peers_quarantined_for_disputes_total 1"));
    coord.shutdown().await;
}
