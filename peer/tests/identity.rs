//! Identity against a scripted coordinator: the peer presents the latest
//! `resume_secret` when it registers again, backs off when its id is in use, and keeps
//! retrying a refused token, picking up a fixed token file.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Conn, listener, within};
use p2c2r_protocol::{ErrorCode, Message};
use p2c2r_testkit::gate::{SeenTokens, accept_checking_bearer};
use peer::{Credential, PeerConfig, PeerHandle};
use tokio::net::TcpListener;

async fn start(url: String, tweak: impl FnOnce(&mut PeerConfig)) -> PeerHandle {
    let mut config = PeerConfig {
        coordinator_url: url,
        peer_id: Some("peer-identity".into()),
        max_concurrent_tasks: Some(1),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(300),
        ..Default::default()
    };
    tweak(&mut config);
    peer::spawn(config).await
}

#[tokio::test]
async fn the_latest_resume_secret_is_presented_after_every_reconnect() {
    let listener = listener().await;
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let peer = start(url, |_| {}).await;

    let mut conn = Conn::accept(&listener).await;
    let first = conn.register_handing_out(Some("secret-1")).await;
    assert_eq!(first.resume_secret, None, "nothing to present the first time");
    within("registered", peer.wait_for(|s| s.registrations == 1)).await;
    drop(conn);

    let mut conn = Conn::accept(&listener).await;
    let second = conn.register_handing_out(Some("secret-2")).await;
    assert_eq!(second.resume_secret.as_deref(), Some("secret-1"));
    within("registered again", peer.wait_for(|s| s.registrations == 2)).await;
    drop(conn);

    // The id is still held (say, an impostor got it): id_in_use, then a pause.
    let mut conn = Conn::accept(&listener).await;
    let Some(Message::RegisterPeer(third)) = conn.next().await else { panic!("expected register_peer") };
    assert_eq!(third.resume_secret.as_deref(), Some("secret-2"), "the latest secret, not the first");
    conn.send(&Message::error(ErrorCode::IdInUse, "peer-identity is registered", Some("peer-identity".into()))).await;
    let refused_at = Instant::now();
    drop(conn);

    let mut conn = Conn::accept(&listener).await;
    let waited = refused_at.elapsed();
    // Refusals wait at least a second, or the whole backoff cap when it is shorter.
    assert!(waited >= Duration::from_millis(290), "retried after only {waited:?}");
    let fourth = conn.register_handing_out(Some("secret-4")).await;
    assert_eq!(fourth.resume_secret.as_deref(), Some("secret-2"), "a refusal does not lose the secret");
    within("registered a third time", peer.wait_for(|s| s.registrations == 3 && s.connected)).await;
    peer.kill();
}

/// Accepts one connection, upgraded only with `Bearer good`.
async fn accept_checking_token(listener: &TcpListener, seen: &SeenTokens) -> Option<Conn> {
    accept_checking_bearer(listener, "good", seen).await.map(|ws| Conn(ws, p2c2r_protocol::Encoding::Json))
}

#[tokio::test]
async fn a_refused_token_is_retried_and_a_fixed_token_file_is_picked_up() {
    let dir = std::env::temp_dir().join(format!("p2c2r-peer-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file: PathBuf = dir.join("token");
    std::fs::write(&token_file, "stale\n").unwrap();

    let listener = listener().await;
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let file = token_file.clone();
    let peer = start(url, move |c| c.token = Some(Credential::File(file))).await;
    let seen: SeenTokens = Default::default();
    for _ in 0..2 {
        assert!(accept_checking_token(&listener, &seen).await.is_none(), "the stale token is refused");
    }
    assert!(!peer.is_connected());
    std::fs::write(&token_file, "good\n").unwrap();
    let mut conn = loop {
        // An attempt may already be under way with the stale token.
        if let Some(conn) = accept_checking_token(&listener, &seen).await {
            break conn;
        }
    };
    conn.register().await;
    within("registered with the fixed token", peer.wait_for(|s| s.connected)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen[..seen.len() - 1].iter().all(|h| h.as_deref() == Some("Bearer stale")), "{seen:?}");
    assert_eq!(seen.last().unwrap().as_deref(), Some("Bearer good"));
    peer.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A peer killed and started again under its own id (a reboot, a service manager
/// restarting it) takes the id back at once: its resume secret outlived the process in
/// its state file. Without one, the coordinator reserves the id for the dead process and
/// refuses the new one (`id_in_use`) until the resume grace passes.
#[tokio::test]
async fn a_peer_restarted_with_its_state_file_takes_its_id_back_at_once() {
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("p2c2r-peer-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = dir.join("peer.json");
    let refusals = |coord: &coordinator::CoordinatorHandle| {
        coord.metrics_text().lines().filter(|l| l.contains("id_in_use") && !l.starts_with('#')).count()
    };
    let with_state = |c: &mut PeerConfig| c.state_file = Some(state.clone());
    let first = start(coord.url(), with_state).await;
    within("registered", first.wait_for(|s| s.connected)).await;
    first.kill();
    let again = start(coord.url(), with_state).await;
    within("registered again", again.wait_for(|s| s.connected)).await;
    assert_eq!(refusals(&coord), 0, "the restarted peer was refused its own id");
    again.kill();

    // The same without a state file: refused while the id is reserved for the dead one.
    let amnesiac = start(coord.url(), |_| {}).await;
    common::eventually("the id is refused", || refusals(&coord) > 0).await;
    assert!(!amnesiac.is_connected());
    amnesiac.kill();
    coord.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
