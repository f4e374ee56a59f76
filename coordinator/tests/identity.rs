//! Identity and access, attacked end to end: nobody can take a live id, ids are bound to
//! credentials, peers see aliases, a reconnecting client gets its work back, rate limits
//! throttle the flooder only, and TLS works.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Client, WAIT, eventually, json};
use coordinator::auth::Role;
use coordinator::{Config, CoordinatorHandle};
use futures_util::StreamExt;
use p2c2r_protocol::{Capabilities, ErrorCode, Message};
use p2c2r_testkit::client::{capacity, register_gamer, register_peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

async fn start(config: Config) -> CoordinatorHandle {
    coordinator::spawn("127.0.0.1:0", config).await.expect("start")
}

/// A fresh directory under the target's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("identity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const JWT_KEY: &str = "test-jwt-key-0123456789abcdef0123456789";
const PEER_TOKEN: &str = "peer-rack-1-secret-0123456789";
const OPERATOR_TOKEN: &str = "operator-secret-0123456789";

/// An auth file: a JWT key for gamers, a peer and an operator enrolled.
fn auth_file(dir: &std::path::Path, extra: &str) -> PathBuf {
    let path = dir.join("auth");
    std::fs::write(
        &path,
        format!("jwt-hs256 {JWT_KEY}\ntoken peer rack-1 {PEER_TOKEN}\ntoken operator ops {OPERATOR_TOKEN}\n{extra}"),
    )
    .unwrap();
    path
}

/// A gamer JWT signed with the test key (as a game backend would mint it).
fn gamer_jwt(id: &str, ttl: Duration) -> String {
    let creds = coordinator::auth::Credentials::parse(&format!("jwt-hs256 {JWT_KEY}")).unwrap();
    creds.mint(Role::Gamer, id, ttl, coordinator::auth::unix_now()).unwrap()
}

/// Connects with a bearer token; the HTTP status when the upgrade is refused.
async fn connect_with(url: &str, token: Option<&str>) -> Result<Client, (u16, String)> {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await.expect("connect in time") {
        Ok((ws, _)) => Ok(Client::from_ws(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected connect error {e}"),
    }
}

/// A full task round trip.
async fn round_trip(gamer: &mut Client, peer: &mut Client, task_id: &str) {
    gamer.submit(task_id, "physics_step", r#"{"n":1}"#, Some("s")).await;
    let a = peer.recv_assignment().await;
    peer.answer(&a, r#"{"status":"success"}"#).await;
    assert_eq!(gamer.recv_result().await.task_id, task_id);
}

// ---- ids are bound, open mode included ---------------------------------------------------

#[tokio::test]
async fn a_stranger_cannot_take_a_live_gamer_id_and_the_gamer_is_still_served() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 4).await;
    let mut victim = Client::gamer(&url, "victim").await;
    round_trip(&mut victim, &mut peer, "t0").await;

    // The id is known (to a peer's owner, say); the secret is not.
    let mut thief = Client::connect(&url).await;
    thief.send(&register_gamer("victim", None)).await;
    assert_eq!(thief.recv_error().await.code, ErrorCode::IdInUse);
    thief.send(&register_gamer("victim", Some("0".repeat(64)))).await;
    assert_eq!(thief.recv_error().await.code, ErrorCode::IdInUse);
    // Its task requests are refused: it is not registered.
    thief.submit("stolen", "physics_step", "{}", Some("s")).await;
    assert_eq!(thief.recv_error().await.code, ErrorCode::NotRegistered);

    // The victim's next five results all reach it.
    for i in 1..=5 {
        round_trip(&mut victim, &mut peer, &format!("t{i}")).await;
    }
    assert_eq!(coord.stats().gamers, 1);
    coord.shutdown().await;
}

#[tokio::test]
async fn a_stranger_cannot_take_a_live_peer_id_nor_forge_its_results() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 4).await;
    let mut gamer = Client::gamer(&url, "g").await;
    for attempt in 0..20 {
        let mut impostor = Client::connect(&url).await;
        impostor.send(&register_peer("p", capacity(4), None)).await;
        assert_eq!(impostor.recv_error().await.code, ErrorCode::IdInUse, "attempt {attempt}");
        // A result it makes up is refused: it holds no assignment and no role.
        impostor
            .send_text(r#"{"msg_type":"task_result","task_id":"1.1","result":{"status":"success","forged":true}}"#)
            .await;
        assert_eq!(impostor.recv_error().await.code, ErrorCode::NotRegistered);
    }
    // Every task still goes to the real peer, and every result is its own.
    for i in 0..10 {
        gamer.submit(&format!("t{i}"), "physics_step", "{}", Some("s")).await;
        let a = peer.recv_assignment().await;
        peer.answer(&a, r#"{"status":"success","honest":true}"#).await;
        let r = gamer.recv_result().await;
        assert_eq!(json(r.result.json().unwrap())["honest"], true);
        assert_eq!(r.peer_id.as_deref(), Some("p"));
    }
    assert_eq!(coord.stats().peers, 1);
    coord.shutdown().await;
}

#[tokio::test]
async fn peers_see_an_opaque_alias_not_the_gamer_id() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 4).await;
    let mut alice = Client::gamer(&url, "alice").await;
    let mut bob = Client::gamer(&url, "bob").await;
    let mut aliases = Vec::new();
    for (gamer, id) in [(&mut alice, "a1"), (&mut bob, "b1")] {
        gamer.submit(id, "physics", "{}", None).await;
        let a = peer.recv_assignment().await;
        let alias = a.task_data.gamer_id.clone().unwrap();
        assert!(alias.starts_with("g-") && !alias.contains("alice") && !alias.contains("bob"), "{alias}");
        aliases.push(alias);
        peer.answer(&a, "{}").await;
        gamer.recv_result().await;
    }
    assert_ne!(aliases[0], aliases[1]);
    alice.submit("a2", "physics", "{}", None).await;
    let a = peer.recv_assignment().await;
    assert_eq!(a.task_data.gamer_id.as_ref(), Some(&aliases[0]), "stable per gamer");
    // The alias cannot be registered as the gamer either.
    let mut thief = Client::connect(&url).await;
    thief.send(&register_gamer(&aliases[0], None)).await;
    assert!(matches!(thief.recv().await, Message::RegistrationAck(_)), "an alias is just another free id");
    thief.submit("x", "physics", "{}", None).await;
    let next = peer.recv_assignment().await;
    assert_ne!(next.task_data.gamer_id.as_ref(), Some(&aliases[0]), "and its own tasks get another alias");
    coord.shutdown().await;
}

#[tokio::test]
async fn a_gamer_that_reconnects_with_its_secret_gets_its_id_session_and_results_back() {
    let coord = start(Config {
        identity: coordinator::Identity { resume_grace: Duration::from_secs(30), ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 4).await;
    let mut gamer = Client::gamer(&url, "g").await;
    round_trip(&mut gamer, &mut peer, "t0").await;
    let secret = gamer.secret.clone().expect("a resume secret in the ack");
    // Two ticks in flight when the network drops.
    gamer.submit("t1", "physics_step", "{}", Some("s")).await;
    gamer.submit("t2", "physics_step", "{}", Some("s")).await;
    let a1 = peer.recv_assignment().await;
    let a2 = peer.recv_assignment().await;
    drop(gamer);
    eventually("the coordinator noticed", || coord.stats().gamers == 0).await;
    // The peer answers while the gamer is away; nothing is dropped.
    peer.answer(&a1, r#"{"status":"success","tick":1}"#).await;
    peer.answer(&a2, r#"{"status":"success","tick":2}"#).await;
    assert_eq!(coord.stats().tasks_dropped, 0);
    // Someone else cannot have the reserved id meanwhile.
    let mut thief = Client::connect(&url).await;
    thief.send(&register_gamer("g", None)).await;
    assert_eq!(thief.recv_error().await.code, ErrorCode::IdInUse);
    assert!(coord.kept_bytes() > 0);
    // The gamer comes back with its secret: both results arrive, in order.
    let mut back = Client::gamer_resuming(&url, "g", Some(secret.clone())).await;
    assert_ne!(back.secret.as_deref(), Some(secret.as_str()), "a fresh secret per registration");
    assert_eq!(back.recv_result().await.task_id, "t1");
    assert_eq!(back.recv_result().await.task_id, "t2");
    // Its session stayed on its peer: the next tick goes there, no resync needed.
    back.submit("t3", "physics_step", "{}", Some("s")).await;
    let a3 = peer.recv_assignment().await;
    assert_eq!(a3.task_data.task_id, "t3");
    assert_eq!(coord.kept_bytes(), 0);
    coord.shutdown().await;
}

#[tokio::test]
async fn results_kept_for_departed_gamers_are_bounded_in_bytes() {
    // 256 KiB of pending payload in all: a quarter of it (64 KiB) may be kept for gamers
    // that left, and one gamer may hold an eighth of that (8 KiB).
    let config = Config {
        scheduling: coordinator::Scheduling { max_pending_bytes: 256 * 1024, ..Default::default() },
        identity: coordinator::Identity { resume_grace: Duration::from_secs(30), ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 4).await;
    let result = format!(r#"{{"status":"success","blob":"{}"}}"#, "r".repeat(6 * 1024));
    let mut secrets = Vec::new();
    for g in 0..12u64 {
        let mut gamer = Client::gamer(&url, &format!("leaver-{g}")).await;
        gamer.submit("t", "physics", "{}", None).await;
        let a = peer.recv_assignment().await;
        secrets.push(gamer.secret.clone());
        drop(gamer);
        eventually("gone", || coord.stats().gamers == 0).await;
        peer.answer(&a, &result).await;
        eventually("answered", || coord.stats().tasks_completed == g + 1).await;
    }
    // Ten 6 KiB results fill the 64 KiB; the last two are not kept.
    assert!(coord.kept_bytes() <= 64 * 1024, "{}", coord.kept_bytes());
    let mut first = Client::gamer_resuming(&url, "leaver-0", secrets[0].clone()).await;
    assert_eq!(json(first.recv_result().await.result.json().unwrap())["status"], "success");
    // What could not be kept is not lost in silence: the task is answered with an error.
    let mut last = Client::gamer_resuming(&url, "leaver-11", secrets[11].clone()).await;
    let r = last.recv_result().await;
    assert_eq!(r.task_id, "t");
    assert_eq!(json(r.result.json().unwrap())["code"], "limit_exceeded");

    // One gamer cannot hold more than its share: two results, the second over 8 KiB.
    let mut greedy = Client::gamer(&url, "greedy").await;
    greedy.submit("a", "physics", "{}", None).await;
    greedy.submit("b", "physics", "{}", None).await;
    let (a, b) = (peer.recv_assignment().await, peer.recv_assignment().await);
    let secret = greedy.secret.clone();
    drop(greedy);
    eventually("gone", || coord.stats().gamers == 2).await;
    peer.answer(&a, &result).await;
    peer.answer(&b, &result).await;
    eventually("answered", || coord.stats().tasks_completed == 14).await;
    let mut back = Client::gamer_resuming(&url, "greedy", secret).await;
    assert_eq!(json(back.recv_result().await.result.json().unwrap())["status"], "success");
    assert_eq!(json(back.recv_result().await.result.json().unwrap())["code"], "limit_exceeded");
    coord.shutdown().await;
}

#[tokio::test]
async fn a_gamer_that_does_not_come_back_in_time_loses_its_id_and_tasks() {
    let coord = start(Config {
        identity: coordinator::Identity { resume_grace: Duration::from_millis(300), ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let mut gamer = Client::gamer(&url, "g").await;
    gamer.submit("queued", "nobody-runs-this", "{}", None).await;
    eventually("queued", || coord.stats().queued_now == 1).await;
    let secret = gamer.secret.clone();
    drop(gamer);
    eventually("dropped after the grace", || coord.stats().tasks_dropped == 1).await;
    // The id is free again; the old secret means nothing now.
    let fresh = Client::gamer(&url, "g").await;
    assert_ne!(fresh.secret, secret);
    assert_eq!(coord.stats().queued_now, 0);
    coord.shutdown().await;
}

// ---- credentials -------------------------------------------------------------------------

#[tokio::test]
async fn without_a_valid_token_nobody_gets_past_the_handshake() {
    let dir = temp_dir("tokens");
    let coord = start(Config {
        identity: coordinator::Identity {
            auth_file: Some(auth_file(&dir, "revoke gamer mallory\n")),
            ..Default::default()
        },
        replication: coordinator::Replication { allow_unauditable_peers: true, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let (status, body) = connect_with(&url, None).await.err().expect("no token: refused");
    assert_eq!(status, 401);
    assert!(body.contains("credentials required"), "{body}");
    let expired = {
        let creds = coordinator::auth::Credentials::parse(&format!("jwt-hs256 {JWT_KEY}")).unwrap();
        creds.mint(Role::Gamer, "alice", Duration::from_secs(1), coordinator::auth::unix_now() - 3600).unwrap()
    };
    let (status, body) = connect_with(&url, Some(&expired)).await.err().expect("expired: refused");
    assert_eq!((status, body.trim()), (401, "token expired"));
    let forged = coordinator::auth::Credentials::parse(&format!("jwt-hs256 {} operator", "k".repeat(40)))
        .unwrap()
        .mint(Role::Operator, "alice", Duration::from_secs(60), coordinator::auth::unix_now())
        .unwrap();
    let (status, body) = connect_with(&url, Some(&forged)).await.err().expect("forged: refused");
    assert_eq!((status, body.trim()), (401, "token signature is not valid"));
    // The game backend's key signs gamer tokens only: a peer claim made with it is refused.
    let as_peer = coordinator::auth::Credentials::parse(&format!("jwt-hs256 {JWT_KEY} peer"))
        .unwrap()
        .mint(Role::Peer, "rack-1", Duration::from_secs(60), coordinator::auth::unix_now())
        .unwrap();
    let (status, body) = connect_with(&url, Some(&as_peer)).await.err().expect("role not allowed: refused");
    assert_eq!((status, body.trim()), (401, "this token's signing key may not grant the peer role"));
    let (status, _) = connect_with(&url, Some("a-guess-0123456789")).await.err().expect("unknown: refused");
    assert_eq!(status, 401);
    let revoked = gamer_jwt("mallory", Duration::from_secs(60));
    let (status, body) = connect_with(&url, Some(&revoked)).await.err().expect("revoked: refused");
    assert_eq!((status, body.trim()), (401, "credential revoked"));
    assert_eq!(coord.admission().connections, 0, "none of them holds a connection");
    coord.shutdown().await;
}

#[tokio::test]
async fn a_token_binds_the_role_and_id_a_connection_may_register() {
    let dir = temp_dir("binding");
    let coord = start(Config {
        identity: coordinator::Identity { auth_file: Some(auth_file(&dir, "")), ..Default::default() },
        replication: coordinator::Replication { allow_unauditable_peers: true, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let alice_token = gamer_jwt("alice", Duration::from_secs(600));

    let mut alice = connect_with(&url, Some(&alice_token)).await.unwrap();
    // Not as someone else, not as a peer.
    alice.send(&register_gamer("bob", None)).await;
    assert_eq!(alice.recv_error().await.code, ErrorCode::Unauthorized);
    alice.send(&register_peer("alice", capacity(4), None)).await;
    assert_eq!(alice.recv_error().await.code, ErrorCode::Unauthorized);
    alice.send(&register_gamer("alice", None)).await;
    alice.expect_ack().await;
    // A gamer token cannot read stats.
    alice.send(&Message::Stats(Default::default())).await;
    assert_eq!(alice.recv_error().await.code, ErrorCode::Unauthorized);

    // The enrolled peer registers with its own id only.
    let mut peer = connect_with(&url, Some(PEER_TOKEN)).await.unwrap();
    peer.send(&register_peer("rack-2", capacity(4), None)).await;
    assert_eq!(peer.recv_error().await.code, ErrorCode::Unauthorized);
    peer.send(&register_peer("rack-1", capacity(4), None)).await;
    peer.expect_ack().await;
    round_trip(&mut alice, &mut peer, "t1").await;

    // Another valid credential cannot take alice's id...
    let mut mallory = connect_with(&url, Some(&gamer_jwt("mallory", Duration::from_secs(60)))).await.unwrap();
    mallory.send(&register_gamer("alice", None)).await;
    assert_eq!(mallory.recv_error().await.code, ErrorCode::Unauthorized);
    round_trip(&mut alice, &mut peer, "t2").await;
    // ...but alice's own credential can (her game restarted on another device).
    let mut alice_again = connect_with(&url, Some(&alice_token)).await.unwrap();
    alice_again.send(&register_gamer("alice", None)).await;
    alice_again.expect_ack().await;
    assert_eq!(alice.recv_error().await.code, ErrorCode::Replaced);

    // The operator reads stats, over the WebSocket and over HTTP.
    let mut ops = connect_with(&url, Some(OPERATOR_TOKEN)).await.unwrap();
    assert_eq!(ops.stats().await.tasks_completed, 2);
    coord.shutdown().await;
}

/// `GET path` with an optional `Authorization` header; the status line's code and body.
async fn http_get(coord: &CoordinatorHandle, path_and_query: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(coord.local_addr()).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    stream.write_all(format!("GET {path_and_query} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut out)).await.unwrap().unwrap();
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test]
async fn metrics_and_the_dashboard_need_the_operator_role() {
    let dir = temp_dir("operator");
    let coord = start(Config {
        identity: coordinator::Identity { auth_file: Some(auth_file(&dir, "")), ..Default::default() },
        replication: coordinator::Replication { allow_unauditable_peers: true, ..Default::default() },
        ..Config::default()
    })
    .await;
    assert_eq!(http_get(&coord, "/metrics", None).await.0, 401);
    assert_eq!(http_get(&coord, "/metrics", Some(&gamer_jwt("alice", Duration::from_secs(60)))).await.0, 403);
    assert_eq!(http_get(&coord, "/metrics", Some(PEER_TOKEN)).await.0, 403);
    let (status, body) = http_get(&coord, "/metrics", Some(OPERATOR_TOKEN)).await;
    assert_eq!(status, 200);
    assert!(body.contains("p2c2r_peers_connected"));
    // A browser passes the token in the URL; the page passes it on to its event stream.
    assert_eq!(http_get(&coord, &format!("/?token={OPERATOR_TOKEN}"), None).await.0, 200);
    assert_eq!(http_get(&coord, "/", None).await.0, 401);
    assert_eq!(http_get(&coord, "/api/fleet", Some(PEER_TOKEN)).await.0, 403);
    coord.shutdown().await;
}

#[tokio::test]
async fn revoking_a_credential_closes_its_connections_without_a_restart() {
    let dir = temp_dir("revoke");
    let path = auth_file(&dir, "");
    let coord = start(Config {
        identity: coordinator::Identity { auth_file: Some(path.clone()), ..Default::default() },
        replication: coordinator::Replication { allow_unauditable_peers: true, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let token = gamer_jwt("alice", Duration::from_secs(600));
    let mut alice = connect_with(&url, Some(&token)).await.unwrap();
    alice.send(&register_gamer("alice", None)).await;
    alice.expect_ack().await;
    let mut peer = connect_with(&url, Some(PEER_TOKEN)).await.unwrap();
    peer.send(&register_peer("rack-1", capacity(4), None)).await;
    peer.expect_ack().await;

    // The operator edits the file: the coordinator notices by itself (no SIGHUP needed).
    std::fs::write(
        &path,
        format!("jwt-hs256 {JWT_KEY}\ntoken peer rack-1 {PEER_TOKEN}\ntoken operator ops {OPERATOR_TOKEN}\nrevoke gamer alice\n"),
    )
    .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), alice.recv_error()).await.expect("closed within seconds");
    assert_eq!(e.code, ErrorCode::Unauthorized);
    alice.expect_closed().await;
    assert_eq!(connect_with(&url, Some(&token)).await.err().unwrap().0, 401);
    assert_eq!(coord.ids_known(), 1, "the revoked gamer's id record went with it (the peer's stays)");
    // The peer, whose line stayed, is untouched.
    peer.send(&Message::Heartbeat(Default::default())).await;
    assert_eq!(coord.stats().peers, 1);

    // Removing the peer's line takes it out too (here through the handle, as SIGHUP does).
    std::fs::write(&path, format!("jwt-hs256 {JWT_KEY}\n")).unwrap();
    coord.reload_credentials().unwrap();
    assert_eq!(peer.recv_error().await.code, ErrorCode::Unauthorized);
    peer.expect_closed().await;
    // A broken file keeps the last good credentials in force.
    std::fs::write(&path, "jwt-hs256 short\n").unwrap();
    assert!(coord.reload_credentials().unwrap_err().contains("line 1"));
    let mut bob = connect_with(&url, Some(&gamer_jwt("bob", Duration::from_secs(60)))).await.unwrap();
    bob.send(&register_gamer("bob", None)).await;
    bob.expect_ack().await;
    coord.shutdown().await;
}

// ---- rate limits -------------------------------------------------------------------------

#[tokio::test]
async fn a_flooding_gamer_is_throttled_and_others_are_not() {
    let config = Config {
        rate_limits: coordinator::RateLimits { max_tasks_per_second: Some(100), ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let url = coord.url();
    let caps = Capabilities {
        task_types: Some(vec!["physics_step".into()]),
        max_concurrent_tasks: Some(64),
        ..Default::default()
    };
    let mut peer = Client::peer_with(&url, "p", caps).await;
    let mut flood = Client::gamer(&url, "flood").await;
    let mut honest = Client::gamer(&url, "honest").await;
    // 1,000 tasks at once: the burst (200) goes through, the rest is refused at once.
    for i in 0..1000 {
        flood.submit(&format!("f{i}"), "nobody-runs-this", "{}", None).await;
    }
    let mut limited = 0;
    while limited < 700 {
        let e = flood.recv_error().await;
        assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
        limited += 1;
    }
    // The honest gamer is served as before, every time.
    for i in 0..20 {
        round_trip(&mut honest, &mut peer, &format!("h{i}")).await;
    }
    // The flooder got its burst and what refilled meanwhile (100 a second), no more.
    let flooder_accepted = coord.stats().tasks_queued - 20;
    assert!((200..300).contains(&flooder_accepted), "{flooder_accepted}");
    coord.shutdown().await;
}

#[tokio::test]
async fn new_sessions_and_bytes_are_rate_limited_per_gamer() {
    let config = Config {
        rate_limits: coordinator::RateLimits {
            max_new_sessions_per_second: Some(1),
            max_task_bytes_per_second: Some(100_000),
            ..Default::default()
        },
        scheduling: coordinator::Scheduling { max_sessions_per_gamer: 4, ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let mut gamer = Client::gamer(&coord.url(), "g").await;
    for i in 0..4 {
        gamer.submit(&format!("s{i}"), "nobody-runs-this", "{}", Some(&format!("session-{i}"))).await;
    }
    gamer.submit("s4", "nobody-runs-this", "{}", Some("session-4")).await;
    let e = gamer.recv_error().await;
    assert_eq!((e.code, e.refers_to.as_deref()), (ErrorCode::RateLimited, Some("s4")));
    assert!(e.message.contains("sessions"), "{}", e.message);
    // An existing session is not a new one.
    gamer.submit("s0b", "nobody-runs-this", "{}", Some("session-0")).await;
    // Bytes: 2 s worth (200 KB) fits, then refused.
    let blob = format!("\"{}\"", "x".repeat(90_000));
    for i in 0..3 {
        gamer.submit(&format!("b{i}"), "nobody-runs-this", &blob, None).await;
    }
    let e = gamer.recv_error().await;
    assert_eq!((e.code, e.refers_to.as_deref()), (ErrorCode::RateLimited, Some("b2")));
    assert!(e.message.contains("bytes"), "{}", e.message);
    assert_eq!(coord.stats().tasks_queued, 4 + 1 + 2);
    coord.shutdown().await;
}

#[tokio::test]
async fn connection_attempts_are_limited_per_address() {
    // The admitted attempts say nothing and are answered 408 after 50 ms.
    let config = Config {
        rate_limits: coordinator::RateLimits { max_connection_attempts_per_second: Some(5), ..Default::default() },
        connections: coordinator::Connections { handshake_timeout: Duration::from_millis(50), ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    // 5/s with bursts of 20: of 60 attempts in a row from one address, about 40 get 429
    // at once (the refusal is one write, never a wait: a client that had already sent a
    // request may see its connection reset instead).
    let (mut refused, mut admitted) = (0, 0);
    for _ in 0..60 {
        let mut s = TcpStream::connect(coord.local_addr()).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await;
        if out.starts_with("HTTP/1.1 429 ") {
            refused += 1;
        } else if out.starts_with("HTTP/1.1 408 ") {
            admitted += 1;
        }
    }
    assert_eq!(refused + admitted, 60);
    assert!((25..=41).contains(&refused), "{refused}");
    // Another address is served at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(coord.local_addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 "));
    coord.shutdown().await;
}

// ---- safe by default ---------------------------------------------------------------------

#[tokio::test]
async fn open_mode_is_refused_off_loopback_unless_insecure() {
    let error = coordinator::spawn("0.0.0.0:0", Config::default()).await.expect_err("refused");
    assert!(error.to_string().contains("without credentials"), "{error}");
    let insecure = coordinator::spawn(
        "0.0.0.0:0",
        Config { identity: coordinator::Identity { insecure: true, ..Default::default() }, ..Config::default() },
    )
    .await
    .unwrap();
    insecure.shutdown().await;
    // Credentials off loopback need TLS too: tokens must not cross the network in clear.
    let dir = temp_dir("exposed");
    let with_auth = Config {
        identity: coordinator::Identity { auth_file: Some(auth_file(&dir, "")), ..Default::default() },
        replication: coordinator::Replication { allow_unauditable_peers: true, ..Default::default() },
        ..Config::default()
    };
    let error = coordinator::spawn("0.0.0.0:0", with_auth.clone()).await.expect_err("refused");
    assert!(error.to_string().contains("without TLS"), "{error}");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let tls = Some(coordinator::TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") });
    coordinator::spawn(
        "0.0.0.0:0",
        Config { identity: coordinator::Identity { tls, ..with_auth.identity }, ..with_auth },
    )
    .await
    .unwrap()
    .shutdown()
    .await;
}

// ---- TLS ---------------------------------------------------------------------------------

#[tokio::test]
async fn wss_end_to_end_with_a_certificate_made_at_test_time() {
    let dir = temp_dir("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let config = Config {
        identity: coordinator::Identity {
            tls: Some(coordinator::TlsFiles { cert: cert_path, key: key_path }),
            auth_file: Some(auth_file(&dir, "")),
            ..Default::default()
        },
        replication: coordinator::Replication { allow_unauditable_peers: true, ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    assert!(coord.url().starts_with("wss://"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(tls));
    let connect = |token: String| {
        let connector = connector.clone();
        let url = coord.url().replace("127.0.0.1", "localhost");
        async move {
            let mut request = url.into_client_request().unwrap();
            request.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
            let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
                .await
                .expect("wss connect");
            Client::from_ws(ws)
        }
    };
    let mut peer = connect(PEER_TOKEN.into()).await;
    peer.send(&register_peer("rack-1", capacity(4), None)).await;
    peer.expect_ack().await;
    let mut gamer = connect(gamer_jwt("alice", Duration::from_secs(60))).await;
    gamer.send(&register_gamer("alice", None)).await;
    gamer.expect_ack().await;
    round_trip(&mut gamer, &mut peer, "over-tls").await;

    // Plain text to the TLS port gets nowhere (no HTTP answer in clear).
    let mut plain = TcpStream::connect(coord.local_addr()).await.unwrap();
    plain.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("p2c2r_"), "no metrics in clear");
    drop(peer.ws.next());
    coord.shutdown().await;
}

/// With credentials, the capacity a peer has shown outlives a coordinator restart (the
/// reputation database keeps its standing; the credential proves the id is its own).
#[tokio::test]
async fn a_peer_keeps_the_capacity_it_has_shown_across_a_restart() {
    let dir = temp_dir("standing");
    let config = Config {
        identity: coordinator::Identity { auth_file: Some(auth_file(&dir, "")), ..Default::default() },
        replication: coordinator::Replication { allow_unauditable_peers: true, ..Default::default() },
        reputation: coordinator::Reputation { reputation_db: Some(dir.join("reputation.redb")), ..Default::default() },
        scheduling: coordinator::Scheduling { initial_peer_capacity: 1, max_peer_capacity: 8, ..Default::default() },
        ..Config::default()
    };
    let capacity_of = |coord: &CoordinatorHandle| {
        coord.fleet().peers.into_iter().find(|(conn, _)| conn.id == "rack-1").map(|(_, view)| view.capacity)
    };
    let coord = start(config.clone()).await;
    let mut gamer = connect_with(&coord.url(), Some(&gamer_jwt("g", Duration::from_secs(600)))).await.unwrap();
    gamer.register(&register_gamer("g", None)).await;
    let mut peer = connect_with(&coord.url(), Some(PEER_TOKEN)).await.unwrap();
    peer.register(&register_peer("rack-1", capacity(8), None)).await;
    assert_eq!(capacity_of(&coord), Some(1));
    for i in 0..3 {
        round_trip(&mut gamer, &mut peer, &format!("t{i}")).await;
    }
    assert_eq!(capacity_of(&coord), Some(4), "three answers shown");
    coord.shutdown().await;
    drop((gamer, peer));

    let coord = start(config).await;
    let mut peer = connect_with(&coord.url(), Some(PEER_TOKEN)).await.unwrap();
    peer.register(&register_peer("rack-1", capacity(8), None)).await;
    assert_eq!(capacity_of(&coord), Some(4), "what it had shown outlived the coordinator");
    coord.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
