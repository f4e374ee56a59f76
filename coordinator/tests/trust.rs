//! Attacks that turn the coordinator's defences against honest peers (issue: "Trust that
//! cannot be turned against the honest"), run end to end against the real coordinator
//! with scripted peers: the attacker's traffic comes from 127.0.0.2, the honest clients'
//! from 127.0.0.1 (and 127.0.0.3 for a second honest network), with
//! `host_prefix_v4: 32` so that loopback addresses stand for different networks.
//!
//! Each test also runs the attack where the defence is switched off, so it shows the
//! attack would work and that the defence is what stops it.

mod common;

use common::{Client, eventually};
use coordinator::{Config, spawn};
use p2c2r_protocol::{Capabilities, TaskStatus, task::result_status};

const SUCCESS: &str = r#"{"status":"success"}"#;
const UNKNOWN_SESSION: &str =
    r#"{"status":"error","code":"unknown_session","message":"no such session","resync":true}"#;
const INTERNAL: &str = r#"{"status":"error","code":"internal","message":"it broke","resync":true}"#;
const OVER_BUDGET: &str = r#"{"status":"error","code":"limit_exceeded","message":"too much work"}"#;

async fn start(config: Config) -> coordinator::CoordinatorHandle {
    spawn("127.0.0.1:0", config).await.expect("bind loopback")
}

fn caps(slots: u32) -> Capabilities {
    Capabilities { max_concurrent_tasks: Some(slots), ..Default::default() }
}

/// What a scripted peer does with each assignment.
#[derive(Clone, Copy)]
enum Script {
    /// Answers `{}` tasks at once; swallows the attacker's (`{"attack":…}`) ones, as an
    /// honest peer too slow for the attacker's deliberately heavy ticks would.
    Honest,
    /// Answers everything at once with success (the attacker's own volunteer peer).
    YesMan,
    /// Answers everything at once with an `internal` error and resync.
    Broken,
    /// Answers everything at once with `limit_exceeded` (as if every request were over
    /// the work budgets).
    Refuser,
    /// Answers everything at once with `unknown_session` and resync.
    Amnesiac,
    /// Reads everything (so it stays connected) and answers nothing.
    BlackHole,
}

/// Runs `peer` by `script` until the test ends; returns its task.
fn serve(mut peer: Client, script: Script) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = peer.try_recv().await {
            let p2c2r_protocol::Message::TaskAssignment(a) = message else { continue };
            let attack = a.task_data.task_data.json().is_some_and(|t| t.contains("attack"));
            let answer = match script {
                Script::Honest if attack => continue,
                Script::BlackHole => continue,
                Script::Honest | Script::YesMan => SUCCESS,
                Script::Broken => INTERNAL,
                Script::Refuser => OVER_BUDGET,
                Script::Amnesiac => UNKNOWN_SESSION,
            };
            if !peer.try_send(&p2c2r_testkit::client::result_for(&a, answer)).await {
                return;
            }
        }
    })
}

/// Runs `count` sessionless tasks of `gamer` at once and waits for them all; returns how
/// many succeeded.
async fn run_batch(gamer: &mut Client, prefix: &str, count: usize, deadline_ms: u64) -> usize {
    for i in 0..count {
        gamer.submit_with_deadline(&format!("{prefix}{i}"), "physics", "{}", None, Some(deadline_ms)).await;
    }
    let mut ok = 0;
    for _ in 0..count {
        let r = gamer.recv_result().await;
        if result_status(r.result.json().unwrap()) == Some(TaskStatus::Success) {
            ok += 1;
        }
    }
    ok
}

/// `count` physics ticks too heavy for their 60 ms deadline, each on a session of its
/// own, one after another; returns how many succeeded.
async fn heavy_ticks(attacker: &mut Client, count: usize) -> usize {
    let mut ok = 0;
    for i in 0..count {
        let session = format!("heavy-{i}");
        attacker
            .submit_with_deadline(&format!("h{i}"), "physics_step", r#"{"attack":1}"#, Some(&session), Some(60))
            .await;
        let r = attacker.recv_result().await;
        assert_eq!(r.task_id, format!("h{i}"));
        if result_status(r.result.json().unwrap()) == Some(TaskStatus::Success) {
            ok += 1;
        }
    }
    ok
}

fn connected(coord: &coordinator::CoordinatorHandle, peer_id: &str) -> bool {
    coord.fleet().peers.iter().any(|(conn, _)| conn.id == peer_id)
}

fn capacity_of(coord: &coordinator::CoordinatorHandle, peer_id: &str) -> Option<u32> {
    coord.fleet().peers.into_iter().find(|(conn, _)| conn.id == peer_id).map(|(_, view)| view.capacity)
}

/// Attack 1 of the issue: a gamer sends physics ticks too heavy for their deadline; the
/// honest peers miss them, and the gamer's own volunteer peer (established by answering
/// the gamer's own cheap tasks first) answers the last attempt at once, "confirming" every
/// miss. Returns how many of the two honest peers were quarantined.
async fn heavy_ticks_confirmed_by_a_volunteer(quarantine_min_gamers: u32) -> u64 {
    let coord = start(Config {
        reputation: coordinator::Reputation {
            established_after_answers: 4,
            quarantine_min_gamers,
            ..Default::default()
        },
        connections: coordinator::Connections { host_prefix_v4: 32, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let honest_x = serve(Client::peer_with(&url, "x", caps(8)).await, Script::Honest);
    let honest_y = serve(Client::peer_with(&url, "y", caps(8)).await, Script::Honest);
    let volunteer = serve(Client::peer_from(&url, "127.0.0.2", "volunteer", caps(8)).await, Script::YesMan);
    // Everybody gets established on ordinary work (the attacker's own, too).
    let mut honest = Client::gamer(&url, "honest").await;
    let mut attacker = Client::gamer_from(&url, "127.0.0.2", "attacker").await;
    for round in 0..4 {
        assert_eq!(run_batch(&mut honest, &format!("warm{round}-"), 12, 2_000).await, 12);
        assert_eq!(run_batch(&mut attacker, &format!("own{round}-"), 12, 2_000).await, 12);
    }
    // Twelve heavy ticks: x and y let each one pass its deadline, and the volunteer
    // answers the third attempt at once.
    heavy_ticks(&mut attacker, 12).await;
    let quarantined = coord.stats().peers_quarantined;
    if quarantined == 0 {
        // The honest peers still serve the honest gamer.
        assert_eq!(run_batch(&mut honest, "after-", 12, 2_000).await, 12);
        assert!(connected(&coord, "x") && connected(&coord, "y"));
    }
    for task in [honest_x, honest_y, volunteer] {
        task.abort();
    }
    coord.shutdown().await;
    quarantined
}

#[tokio::test]
async fn a_gamer_alone_cannot_get_honest_peers_quarantined() {
    // With one gamer's work enough to quarantine, the attack works: both honest peers go.
    assert_eq!(heavy_ticks_confirmed_by_a_volunteer(1).await, 2, "the attack is real");
    // By default misses on one network's work are never enough.
    assert_eq!(heavy_ticks_confirmed_by_a_volunteer(Config::default().reputation.quarantine_min_gamers).await, 0);
}

/// The same gamer without a volunteer of its own: the heavy tick's retry reaches the other
/// honest peer, which does not hold the session and answers `unknown_session` at once.
/// That error confirms nothing, even where one gamer's work would be enough.
#[tokio::test]
async fn an_error_from_the_next_peer_confirms_no_miss() {
    let coord = start(Config {
        reputation: coordinator::Reputation {
            established_after_answers: 0,
            quarantine_min_gamers: 1,
            ..Default::default()
        },
        connections: coordinator::Connections { host_prefix_v4: 32, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let honest_x = serve(Client::peer_with(&url, "x", caps(8)).await, Script::Honest);
    let amnesiac = serve(Client::peer_with(&url, "y", caps(8)).await, Script::Amnesiac);
    let mut attacker = Client::gamer_from(&url, "127.0.0.2", "attacker").await;
    assert_eq!(heavy_ticks(&mut attacker, 12).await, 0, "nobody did the heavy ticks");
    assert_eq!(coord.stats().peers_quarantined, 0);
    assert!(connected(&coord, "x"));
    honest_x.abort();
    amnesiac.abort();
    coord.shutdown().await;
}

/// Attack 5: a peer that declares 64 slots and answers every task at once with an
/// `internal` error. Each such task gets one more try on another peer, so honest gamers
/// keep a 100 % success rate; its errors grow no window; and a success elsewhere counts
/// against it, so it is quarantined once established peers have done the work of gamers
/// from two networks that it failed.
#[tokio::test]
async fn a_peer_failing_every_task_at_once_is_retried_around_and_quarantined() {
    failing_peer_retried_around_and_quarantined(Script::Broken).await;
}

/// The same with a peer answering every task `limit_exceeded` (the error honest peers give
/// a request over the work budgets): it is retried elsewhere too, and found out.
#[tokio::test]
async fn a_peer_refusing_every_task_as_over_budget_is_retried_around_and_quarantined() {
    failing_peer_retried_around_and_quarantined(Script::Refuser).await;
}

async fn failing_peer_retried_around_and_quarantined(script: Script) {
    let coord = start(Config {
        reputation: coordinator::Reputation { established_after_answers: 4, ..Default::default() },
        connections: coordinator::Connections { host_prefix_v4: 32, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let broken = serve(Client::peer_from(&url, "127.0.0.2", "broken", caps(64)).await, script);
    let honest_peer = serve(Client::peer_with(&url, "honest", caps(8)).await, Script::Honest);
    let initial = capacity_of(&coord, "broken").expect("connected");
    let mut here = Client::gamer(&url, "g1").await;
    let mut elsewhere = Client::gamer_from(&url, "127.0.0.3", "g3").await;
    let mut ok = 0;
    for round in 0..6 {
        ok += run_batch(&mut here, &format!("a{round}-"), 8, 2_000).await;
        if round == 0 {
            assert_eq!(capacity_of(&coord, "broken"), Some(initial), "errors grow no window");
        }
        ok += run_batch(&mut elsewhere, &format!("b{round}-"), 8, 2_000).await;
    }
    assert_eq!(ok, 96, "every honest task succeeds");
    eventually("the broken peer is quarantined", || !connected(&coord, "broken")).await;
    assert_eq!(coord.stats().peers_quarantined, 1);
    assert!(connected(&coord, "honest"));
    broken.abort();
    honest_peer.abort();
    coord.shutdown().await;
}

/// A physics session whose peer answers every tick with a resync error leaves it after
/// `max_resyncs_in_a_row` (3) and goes to another peer, instead of resyncing to it for ever.
#[tokio::test]
async fn a_session_leaves_a_peer_that_answers_resync_in_a_row() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let amnesiac = serve(Client::peer_from(&url, "127.0.0.2", "amnesiac", caps(8)).await, Script::Amnesiac);
    let mut gamer = Client::gamer(&url, "g").await;
    // The session starts on the only peer there is.
    gamer.submit("t0", "physics_step", r#"{"tick":0}"#, Some("world")).await;
    assert_eq!(gamer.recv_result().await.task_id, "t0");
    let mut honest = Client::peer(&url, "honest", 8).await;
    // Two more resyncs from its peer: the session stays (it may have been the gamer's
    // fault); the third in a row moves it.
    for tick in 1..3 {
        gamer.submit(&format!("t{tick}"), "physics_step", &format!(r#"{{"tick":{tick}}}"#), Some("world")).await;
        let r = gamer.recv_result().await;
        assert_eq!(result_status(r.result.json().unwrap()), Some(TaskStatus::Error));
    }
    gamer.submit("t3", "physics_step", r#"{"tick":3,"snapshot":true}"#, Some("world")).await;
    let a = honest.recv_assignment().await;
    assert_eq!(a.task_data.task_id, "t3", "the session moved to the other peer");
    honest.answer(&a, SUCCESS).await;
    let r = gamer.recv_result().await;
    assert_eq!(result_status(r.result.json().unwrap()), Some(TaskStatus::Success));
    assert_eq!(coord.stats().peers_quarantined, 0, "resyncs alone quarantine nobody");
    amnesiac.abort();
    coord.shutdown().await;
}

/// A gamer that says goodbye (a close frame) with nothing pending releases its id at
/// once: the seed's test gamer, which registers a fixed id, can be run again and again. A
/// connection that just drops keeps its id reserved for the resume grace (it may be a
/// network failure, and the gamer will resume).
#[tokio::test]
async fn a_clean_goodbye_releases_the_id_and_a_dropped_connection_keeps_it() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let peer = serve(Client::peer_with(&url, "p", caps(4)).await, Script::Honest);
    for run in 0..3 {
        let mut gamer = Client::gamer(&url, "fixed").await;
        gamer.submit(&format!("t{run}"), "physics", "{}", None).await;
        assert_eq!(gamer.recv_result().await.task_id, format!("t{run}"));
        gamer.ws.close(None).await.unwrap();
        eventually("the goodbye is handled", || coord.fleet().gamers.is_empty()).await;
    }
    // Dropped without a goodbye: reserved.
    let gamer = Client::gamer(&url, "fixed").await;
    drop(gamer);
    eventually("the drop is noticed", || coord.fleet().gamers.is_empty()).await;
    let mut other = Client::connect(&url).await;
    other.send(&p2c2r_testkit::client::register_gamer("fixed", None)).await;
    assert_eq!(other.recv_error().await.code, p2c2r_protocol::ErrorCode::IdInUse);
    peer.abort();
    coord.shutdown().await;
}

/// Large frames (a gamer relaying megabytes of JSON through a peer) are decoded on the
/// blocking pool, not on the threads that serve everyone else, and still delivered; an
/// honest gamer elsewhere is served meanwhile. (What this does to the honest gamer's
/// latency is a figure for a benchmark, not an assertion here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_are_decoded_off_the_runtime_and_delivered() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let peer = serve(Client::peer_with(&url, "p", caps(8)).await, Script::YesMan);
    let mut relay = Client::gamer_from(&url, "127.0.0.2", "relay").await;
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    for i in 0..4 {
        relay.submit(&format!("big{i}"), "physics", &big, None).await;
    }
    let mut honest = Client::gamer(&url, "honest").await;
    assert_eq!(run_batch(&mut honest, "h", 20, 5_000).await, 20);
    for _ in 0..4 {
        let r = relay.recv_result().await;
        assert_eq!(result_status(r.result.json().unwrap()), Some(TaskStatus::Success));
    }
    let metrics = coord.metrics_text();
    let large: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("p2c2r_large_frames_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter is exported");
    assert!(large >= 4.0, "{large}");
    peer.abort();
    coord.shutdown().await;
}

/// Three sybil black holes on three addresses, declaring 64 slots each and taking every
/// new task first: a task one of them swallows is retried on the established honest peer,
/// not on the next black hole, so no honest task runs out of attempts. (The honest peer
/// earned its standing before, under its id; it comes back proving the id is its own.)
#[tokio::test]
async fn sybil_black_holes_cannot_use_up_a_tasks_attempts() {
    let coord = start(Config {
        reputation: coordinator::Reputation { established_after_answers: 2, ..Default::default() },
        connections: coordinator::Connections { host_prefix_v4: 32, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let mut gamer = Client::gamer(&url, "g").await;
    let mut honest = Client::peer(&url, "honest", 8).await;
    for i in 0..2 {
        gamer.submit(&format!("w{i}"), "physics", "{}", None).await;
        let a = honest.recv_assignment().await;
        honest.answer(&a, SUCCESS).await;
        gamer.recv_result().await;
    }
    let secret = honest.secret.clone();
    honest.ws.close(None).await.unwrap();
    eventually("the honest peer left", || !connected(&coord, "honest")).await;
    let mut holes = Vec::new();
    for (i, from) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"].into_iter().enumerate() {
        holes.push(serve(Client::peer_from(&url, from, &format!("hole{i}"), caps(64)).await, Script::BlackHole));
    }
    let honest = Client::peer_resuming(&url, "honest", p2c2r_testkit::client::capacity(8), secret).await;
    let honest = serve(honest, Script::Honest);
    let mut ok = 0;
    for i in 0..10 {
        gamer.submit_with_deadline(&format!("t{i}"), "physics", "{}", None, Some(100)).await;
        let r = gamer.recv_result().await;
        if result_status(r.result.json().unwrap()) == Some(TaskStatus::Success) {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "every task succeeded within its attempts");
    for task in holes.into_iter().chain([honest]) {
        task.abort();
    }
    coord.shutdown().await;
}

/// One address fills every gamer slot with ids it registers, gives each a task nobody runs
/// (so each holds its slot while absent), and drops them all. A newcomer from elsewhere is
/// served, not refused: the absent gamer that left longest ago, from the address holding
/// the most absent slots, makes room. Gamers absent with nothing pending hold no slot.
#[tokio::test]
async fn absent_squatters_make_room_for_newcomers() {
    // 12 gamer slots (16 connections, 4 kept for peers).
    let config = Config {
        connections: coordinator::Connections { max_connections: 16, reserved_peer_slots: 4, ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    // Idle leavers first: they hold nothing once gone.
    for i in 0..12 {
        let gamer = Client::gamer_from(&url, "127.0.0.2", &format!("idle{i}")).await;
        drop(gamer);
    }
    eventually("the idle leavers are gone", || coord.fleet().gamers.is_empty()).await;
    // Squatters with work pending fill every slot, then drop.
    for i in 0..12 {
        let mut gamer = Client::gamer_from(&url, "127.0.0.2", &format!("squat{i}")).await;
        gamer.submit("stuck", "nobody-runs-this", "{}", None).await;
        gamer.stats().await;
        drop(gamer);
    }
    eventually("the squatters are absent", || coord.fleet().gamers.is_empty()).await;
    assert!(coord.metrics_text().contains("p2c2r_gamers_absent 12"), "{}", coord.metrics_text());
    // Newcomers elsewhere get in, each taking an absent squatter's slot.
    let mut newcomers = Vec::new();
    for i in 0..3 {
        newcomers.push(Client::gamer(&url, &format!("newcomer{i}")).await);
    }
    assert!(coord.metrics_text().contains("p2c2r_absent_gamers_evicted_total 3"), "{}", coord.metrics_text());
    // The oldest squatter's id is free now (its reservation went with its slot).
    Client::gamer_from(&url, "127.0.0.2", "squat0").await;
    coord.shutdown().await;
}

/// Eight addresses hold every unregistered place (two each, never registering). Honest
/// newcomers from elsewhere (eight gamers and a peer) still get in: each closes the oldest
/// unregistered connection of an address holding the most. Where no address holds more
/// than its share, the cap still refuses (the control).
#[tokio::test]
async fn unregistered_squatters_make_room_for_newcomers() {
    let config = Config {
        connections: coordinator::Connections { max_unregistered_connections: 16, ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut squatters = Vec::new();
    for address in 2..=9 {
        for _ in 0..2 {
            squatters.push(Client::connect_from(&url, &format!("127.0.0.{address}")).await);
        }
    }
    eventually("every unregistered place held", || coord.admission().unregistered == 16).await;
    // Each newcomer takes a squatter's place; the attacker refills it at once, and the next
    // newcomer takes another.
    for i in 0..8 {
        Client::gamer(&url, &format!("honest{i}")).await;
        squatters.push(Client::connect_from(&url, "127.0.0.2").await);
        eventually("the place refilled", || coord.admission().unregistered == 16).await;
    }
    let mut peer = Client::peer_with(&url, "newcomer-peer", caps(4)).await;
    peer.stats().await;
    let metrics = coord.metrics_text();
    assert!(metrics.contains("p2c2r_unregistered_evicted_total 9"), "{metrics}");
    assert_eq!(coord.admission().unregistered, 15, "the peer's place is its own now");
    drop(squatters);
    coord.shutdown().await;

    // The control: one unregistered connection per address, the cap reached: nobody holds
    // more than a newcomer would, so the newcomer is refused (the cap is still a cap).
    let coord = start(Config {
        connections: coordinator::Connections { max_unregistered_connections: 8, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let mut held = Vec::new();
    for address in 2..=9 {
        held.push(Client::connect_from(&url, &format!("127.0.0.{address}")).await);
    }
    eventually("every unregistered place held", || coord.admission().unregistered == 8).await;
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(refused.is_err(), "refused before the handshake");
    assert!(coord.metrics_text().contains("p2c2r_unregistered_evicted_total 0"));
    coord.shutdown().await;
}

/// What the peer in [`a_tick_behind_a_large_payload`] saw.
struct BehindBulk {
    /// Chunks of the large assignment that came before the other session's tick.
    chunks_before_tick: usize,
    /// Chunks it came in (0: whole).
    chunks: usize,
    /// The tick came before the whole large assignment had.
    tick_first: bool,
}

/// Attack 9's second half: one gamer relays a 4 MiB payload through the peer that also
/// serves another gamer's session; that gamer's tick is queued right after it. The peer
/// reads nothing until both are queued, so the coordinator's writer is held mid-frame, as
/// on a slow link. With chunked frames the tick comes after the few chunks the socket took,
/// long before the large frame's last; the large result goes back in chunks too, and both
/// gamers get their results whole. Without (the control), the tick waits for the whole
/// frame.
async fn a_tick_behind_a_large_payload(chunked: bool) -> BehindBulk {
    use p2c2r_protocol::chunk::{Chunker, Reassembler, is_chunk};
    use p2c2r_protocol::{Payload, binary, binary::Frame, codec};
    use tokio_tungstenite::tungstenite::Message as Ws;

    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::connect_binary(&url).await;
    let capabilities = Capabilities { max_concurrent_tasks: Some(8), chunked_frames: chunked, ..Default::default() };
    peer.register(&p2c2r_testkit::client::register_peer("bulk-peer", capabilities, None)).await;
    let mut relay = Client::connect_binary(&url).await;
    relay.register(&p2c2r_testkit::client::register_gamer("relay", None)).await;
    let mut player = Client::gamer(&url, "player").await;
    let big = vec![0x50; 4 << 20];
    let request = p2c2r_testkit::client::task_request(
        "big",
        "relay",
        Payload::binary(big.clone()),
        Some("bulk".into()),
        Some(30_000),
    );
    relay.send(&request).await;
    relay.stats().await;
    player.submit_with_deadline("tick", "physics_step", "{}", Some("world"), Some(30_000)).await;
    player.stats().await;
    // Both are queued at the peer now: read what arrives, in order.
    let (mut reassembler, mut chunks, mut chunks_before_tick) = (Reassembler::new(16 << 20), 0, None);
    let mut taken = 0u64;
    let (mut big_assignment, mut tick_assignment, mut tick_first) = (None, None, false);
    while big_assignment.is_none() || tick_assignment.is_none() {
        let frame = tokio::time::timeout(common::WAIT, futures_util::StreamExt::next(&mut peer.ws))
            .await
            .expect("a frame in time")
            .expect("connected")
            .expect("a frame");
        let message = match frame {
            Ws::Binary(bytes) if is_chunk(&bytes) => {
                chunks += 1;
                // Acknowledged as a peer does: the coordinator paces its chunks by these.
                taken += bytes.len() as u64;
                let ack = p2c2r_protocol::pacing::Ack { received: taken, taken_at_us: 0 };
                peer.send_binary(p2c2r_protocol::pacing::ack_frame(ack)).await;
                match reassembler.push(&bytes, std::time::Instant::now()).expect("a well-formed chunk") {
                    Some(Frame::Binary(whole)) => binary::decode(whole.into()).expect("an assignment"),
                    Some(Frame::Text(text)) => codec::decode(&text).expect("an assignment"),
                    None => continue,
                }
            }
            Ws::Binary(bytes) => binary::decode(bytes).expect("an assignment"),
            Ws::Text(text) => codec::decode(text.as_str()).expect("a message"),
            _ => continue,
        };
        let p2c2r_protocol::Message::TaskAssignment(a) = message else { continue };
        if a.task_data.task_id == "tick" {
            tick_first = big_assignment.is_none();
            chunks_before_tick = Some(chunks);
            tick_assignment = Some(a);
        } else {
            assert_eq!(a.task_data.task_data.binary_bytes().map(|b| b.len()), Some(big.len()), "whole");
            big_assignment = Some(a);
        }
    }
    // The answers: the large one in chunks where the coordinator takes them.
    let (big_assignment, tick_assignment) = (big_assignment.unwrap(), tick_assignment.unwrap());
    let result = p2c2r_protocol::Message::TaskResult(p2c2r_protocol::TaskResult {
        task_id: big_assignment.task_id.clone(),
        result: Payload::binary(big.clone()),
        attempt: Some(big_assignment.attempt),
        peer_id: None,
    });
    let frame = binary::encode(&result).expect("a binary frame");
    if chunked {
        let mut chunker = Chunker::new(Frame::Binary(frame), 7);
        while let Some(chunk) = chunker.next_chunk() {
            peer.send_binary(chunk).await;
        }
    } else {
        peer.send_binary(frame).await;
    }
    peer.answer(&tick_assignment, SUCCESS).await;
    let back = relay.recv_result().await;
    assert_eq!(back.result.binary_bytes().map(|b| b.len()), Some(big.len()), "the large result whole");
    assert_eq!(player.recv_result().await.task_id, "tick");
    if chunked {
        let metrics = coord.metrics_text();
        assert!(metrics.contains("p2c2r_chunked_frames_sent_total 1"), "{metrics}");
        assert!(metrics.contains("p2c2r_chunked_frames_received_total 1"), "{metrics}");
    }
    coord.shutdown().await;
    BehindBulk { chunks_before_tick: chunks_before_tick.expect("the tick came"), chunks, tick_first }
}

#[tokio::test]
async fn a_large_payload_does_not_hold_up_another_sessions_tick_on_its_peer() {
    let chunked = a_tick_behind_a_large_payload(true).await;
    eprintln!("the tick came after {} of {} chunks", chunked.chunks_before_tick, chunked.chunks);
    assert!(chunked.tick_first);
    assert_eq!(chunked.chunks, (4 << 20) / p2c2r_protocol::chunk::CHUNK_BYTES + 1);
    assert!(
        chunked.chunks_before_tick < chunked.chunks / 4,
        "the tick came after {} of {} chunks",
        chunked.chunks_before_tick,
        chunked.chunks
    );
    // The control: whole frames, the tick after all 4 MiB.
    let whole = a_tick_behind_a_large_payload(false).await;
    assert_eq!(whole.chunks, 0);
    assert!(!whole.tick_first, "whole frames: the tick only after all 4 MiB");
}

/// The coordinator sends a peer no more chunk bytes than its window ahead of the peer's
/// acknowledgements (PROTOCOL.md, "Chunked frames"): bulk never fills the path's queues,
/// while small frames still pass. The peer here acknowledges nothing at first: the chunks
/// stop at the initial window, a tick submitted after them still arrives, and one
/// acknowledgement lets the rest of the frame come.
#[tokio::test]
async fn chunks_wait_for_acknowledgements_and_small_frames_do_not() {
    use p2c2r_protocol::chunk::{Reassembler, is_chunk};
    use p2c2r_protocol::pacing::{Ack, INITIAL_WINDOW, ack_frame};
    use p2c2r_protocol::{Payload, binary, binary::Frame};
    use tokio_tungstenite::tungstenite::Message as Ws;

    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::connect_binary(&url).await;
    let capabilities = Capabilities { max_concurrent_tasks: Some(8), chunked_frames: true, ..Default::default() };
    peer.register(&p2c2r_testkit::client::register_peer("slow-acker", capabilities, None)).await;
    let mut relay = Client::connect_binary(&url).await;
    relay.register(&p2c2r_testkit::client::register_gamer("relay", None)).await;
    let big = vec![0x50; 1 << 20];
    let request =
        p2c2r_testkit::client::task_request("big", "relay", Payload::binary(big.clone()), Some("bulk".into()), None);
    relay.send(&request).await;
    async fn next_frame(peer: &mut Client) -> Ws {
        tokio::time::timeout(common::WAIT, futures_util::StreamExt::next(&mut peer.ws))
            .await
            .expect("a frame in time")
            .expect("connected")
            .expect("a frame")
    }
    // The initial window's worth of chunks, and not one more before the tick.
    let (mut reassembler, mut taken, mut chunks) = (Reassembler::new(4 << 20), 0u64, 0);
    while taken < INITIAL_WINDOW {
        if let Ws::Binary(bytes) = next_frame(&mut peer).await
            && is_chunk(&bytes)
        {
            assert!(reassembler.push(&bytes, std::time::Instant::now()).expect("a chunk").is_none());
            taken += bytes.len() as u64;
            chunks += 1;
        }
    }
    assert_eq!(taken, INITIAL_WINDOW, "{chunks} chunks fill the window exactly");
    let mut player = Client::gamer(&url, "player").await;
    player.submit("tick", "physics_step", "{}", Some("world")).await;
    let tick = loop {
        match next_frame(&mut peer).await {
            Ws::Binary(bytes) if is_chunk(&bytes) => panic!("a chunk past the window before any acknowledgement"),
            Ws::Binary(bytes) if p2c2r_protocol::pacing::is_ack(&bytes) => continue,
            // A JSON task goes as a text frame on a binary connection.
            Ws::Text(text) => match p2c2r_protocol::codec::decode(text.as_str()).expect("a message") {
                p2c2r_protocol::Message::TaskAssignment(a) => break a,
                _ => continue,
            },
            _ => continue,
        }
    };
    assert_eq!(tick.task_data.task_id, "tick", "a small frame passes the held chunks");
    // Acknowledged: the rest of the frame comes, whole.
    let ack = |received| Ws::binary(ack_frame(Ack { received, taken_at_us: 0 }));
    futures_util::SinkExt::send(&mut peer.ws, ack(taken)).await.expect("sent");
    let assignment = loop {
        if let Ws::Binary(bytes) = next_frame(&mut peer).await
            && is_chunk(&bytes)
        {
            taken += bytes.len() as u64;
            futures_util::SinkExt::send(&mut peer.ws, ack(taken)).await.expect("sent");
            if let Some(Frame::Binary(whole)) = reassembler.push(&bytes, std::time::Instant::now()).expect("a chunk") {
                break binary::decode(whole.into()).expect("an assignment");
            }
        }
    };
    let p2c2r_protocol::Message::TaskAssignment(assignment) = assignment else { panic!("{assignment:?}") };
    assert_eq!(assignment.task_data.task_data.binary_bytes().map(|b| b.len()), Some(big.len()));
    coord.shutdown().await;
}

/// A peer that takes chunks and never acknowledges them is stalled like one that stops
/// reading: after the first window, nothing more for it, and once the write stall timeout
/// passes with chunks unacknowledged its connection ends (instead of holding its chunks,
/// and the queue they count against, for ever).
#[tokio::test]
async fn a_peer_that_never_acknowledges_is_disconnected_after_the_stall_timeout() {
    use p2c2r_protocol::Payload;
    use p2c2r_protocol::chunk::is_chunk;
    use p2c2r_protocol::pacing::INITIAL_WINDOW;
    use tokio_tungstenite::tungstenite::Message as Ws;

    let config = Config {
        connections: coordinator::Connections {
            write_stall_timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut peer = Client::connect_binary(&url).await;
    let capabilities = Capabilities { max_concurrent_tasks: Some(8), chunked_frames: true, ..Default::default() };
    peer.register(&p2c2r_testkit::client::register_peer("mute", capabilities, None)).await;
    let mut relay = Client::connect_binary(&url).await;
    relay.register(&p2c2r_testkit::client::register_gamer("relay", None)).await;
    let request = p2c2r_testkit::client::task_request(
        "big",
        "relay",
        Payload::binary(vec![7; 1 << 20]),
        Some("bulk".into()),
        None,
    );
    relay.send(&request).await;
    let mut taken = 0u64;
    let closed = tokio::time::timeout(common::WAIT, async {
        loop {
            match futures_util::StreamExt::next(&mut peer.ws).await {
                Some(Ok(Ws::Binary(bytes))) if is_chunk(&bytes) => taken += bytes.len() as u64,
                Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection ended within {:?}", common::WAIT);
    assert_eq!(taken, INITIAL_WINDOW, "the first window, no more");
    coord.shutdown().await;
}

/// Hostile chunks from a peer get clear errors within bounds: a chunk where none were
/// agreed is refused and the connection stays; chunked frames past the frame limit (one,
/// or several unfinished together) and a chunk inside a chunked frame close it.
#[tokio::test]
async fn hostile_chunks_get_clear_errors_within_bounds() {
    use p2c2r_protocol::ErrorCode;
    use p2c2r_protocol::binary::Frame;
    use p2c2r_protocol::chunk::{CHUNK_VERSION, Chunker};
    let chunk = |stream: u32, last: bool, data: &[u8]| {
        let mut c = vec![CHUNK_VERSION, u8::from(last)];
        c.extend_from_slice(&stream.to_le_bytes());
        c.extend_from_slice(data);
        c
    };
    let coord = start(Config {
        connections: coordinator::Connections { max_frame_bytes: 64 * 1024, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let registered = |id: &'static str, chunked: bool| {
        let url = url.clone();
        async move {
            let mut peer = Client::connect_binary(&url).await;
            let capabilities = Capabilities { chunked_frames: chunked, ..caps(4) };
            peer.register(&p2c2r_testkit::client::register_peer(id, capabilities, None)).await;
            peer
        }
    };
    // Not agreed: refused, the connection stays; acknowledgements likewise.
    let mut plain = registered("plain", false).await;
    plain.send_binary(chunk(1, true, b"{}")).await;
    assert_eq!(plain.recv_error().await.code, ErrorCode::BadFrame);
    let ack = p2c2r_protocol::pacing::ack_frame(p2c2r_protocol::pacing::Ack { received: 1, taken_at_us: 0 });
    plain.send_binary(ack.clone()).await;
    assert_eq!(plain.recv_error().await.code, ErrorCode::BadFrame);
    plain.stats().await;
    drop(plain);
    // Past the frame limit, over two unfinished streams: refused and closed.
    let mut greedy = registered("greedy", true).await;
    greedy.send_binary(chunk(1, false, &[b' '; 40 * 1024])).await;
    greedy.send_binary(chunk(2, false, &[b' '; 40 * 1024])).await;
    assert_eq!(greedy.recv_error().await.code, ErrorCode::FrameTooLarge);
    assert!(greedy.expect_closed().await.is_some());
    // A chunk inside a chunked frame: refused and closed.
    let mut nested = registered("nested", true).await;
    let mut outer = Chunker::new(Frame::Binary(chunk(9, true, b"{}")), 3);
    while let Some(c) = outer.next_chunk() {
        nested.send_binary(c).await;
    }
    assert_eq!(nested.recv_error().await.code, ErrorCode::BadFrame);
    assert!(nested.expect_closed().await.is_some());
    // An acknowledgement of the wrong length: refused and closed. One that acknowledges
    // chunks never sent changes nothing (the sender ignores it) and the connection stays.
    let mut acker = registered("acker", true).await;
    acker.send_binary(ack).await;
    acker.stats().await;
    acker.send_binary(vec![p2c2r_protocol::pacing::ACK_VERSION, 1, 2]).await;
    assert_eq!(acker.recv_error().await.code, ErrorCode::BadFrame);
    assert!(acker.expect_closed().await.is_some());
    coord.shutdown().await;
}
