//! End to end over `wss://` with credentials: the real coordinator serving TLS with a
//! certificate made at test time and an auth file; a peer presenting its token from a
//! file (refused while the file holds a wrong one, registered once it is fixed, without
//! a restart) runs a task for a gamer (the real gamer client, with its token).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{gamer, within};
use peer::{Credential, PeerConfig};

const PEER_SECRET: &str = "peer-secret-0123456789";
const GAMER_SECRET: &str = "gamer-secret-0123456789";

/// A temp dir with `cert.pem` and `key.pem` (a self-signed certificate for 127.0.0.1 and
/// localhost) and `auth` (one peer and one gamer token).
fn secrets() -> PathBuf {
    let dir = p2c2r_testkit::tls::self_signed_dir("p2c2r-peer-tls");
    let auth = format!("# test credentials\ntoken peer peer-tls {PEER_SECRET}\ntoken gamer gamer-tls {GAMER_SECRET}\n");
    std::fs::write(dir.join("auth"), auth).unwrap();
    dir
}

fn config(dir: &Path) -> coordinator::Config {
    coordinator::Config {
        identity: coordinator::Identity {
            tls: Some(coordinator::TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") }),
            auth_file: Some(dir.join("auth")),
            ..Default::default()
        },
        replication: coordinator::Replication {
            // One peer: no other could audit it, and it must serve the session.
            allow_unauditable_peers: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_token_file_serves_a_gamer_over_wss() {
    let dir = secrets();
    let coordinator = coordinator::spawn("127.0.0.1:0", config(&dir)).await.unwrap();
    let url = coordinator.url();
    assert!(url.starts_with("wss://"), "{url}");

    let token_file = dir.join("peer.token");
    std::fs::write(&token_file, "peer-secret-but-not-this-one\n").unwrap();
    let peer = peer::spawn(PeerConfig {
        coordinator_url: url.clone(),
        peer_id: Some("peer-tls".into()),
        token: Some(Credential::File(token_file.clone())),
        ca_file: Some(dir.join("cert.pem")),
        max_concurrent_tasks: Some(1),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    // Refused twice (a second attempt after the backoff): a wrong token never registers.
    within("the peer refused twice", peer.wait_for(|s| s.refusals >= 2)).await;
    assert_eq!(peer.status().borrow().registrations, 0, "a wrong token is refused");
    // Fixed on disk: the peer picks it up at its next attempt.
    std::fs::write(&token_file, format!("{PEER_SECRET}\n")).unwrap();
    within("the peer to register", peer.wait_for(|s| s.connected)).await;

    // A gamer, also over wss:// with its token, gets a task run by that peer.
    let gamer = gamer::connect_with(p2c2r_client::ClientConfig {
        token: Some(Credential::Token(GAMER_SECRET.into())),
        ca_file: Some(dir.join("cert.pem")),
        reconnect: false,
        ..p2c2r_client::ClientConfig::new(&url, "gamer-tls")
    })
    .await;
    let request =
        gamer::request("t1", "physics", &serde_json::json!({"num_objects": 3}).to_string(), None, Some(5_000));
    let result = gamer.submit(request).await;
    assert_eq!(result.task_id, "t1");
    assert_eq!(result.peer_id.as_deref(), Some("peer-tls"));

    // Without a token, nothing gets in.
    let anonymous =
        p2c2r_net::ConnectOptions { token: None, ca_file: Some(dir.join("cert.pem")), ..Default::default() };
    let refused = p2c2r_net::connect(&url, &anonymous).await.unwrap_err();
    assert!(refused.is_auth_refusal(), "{refused:?}");

    peer.shutdown().await;
    coordinator.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
