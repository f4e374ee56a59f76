//! End to end over `wss://` with credentials: the real coordinator serving TLS (a
//! certificate made at test time) with an auth file, a peer and the plugin each
//! presenting its token and trusting the certificate through `ca_file`. The plugin gets
//! its physics from the peer; a gamer without a valid token is refused with HTTP 401.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2c2r::client::{ClientConfig, ClientError, Credential, GamerClient};
use bevy_p2c2r::prelude::*;
use common::*;

const PEER_SECRET: &str = "peer-secret-0123456789";
const GAMER_SECRET: &str = "gamer-secret-0123456789";

/// A temp dir with `cert.pem` and `key.pem` (a self-signed certificate for 127.0.0.1 and
/// localhost), `auth` (one peer and one gamer token) and `gamer.token`.
fn secrets() -> PathBuf {
    let dir = p2c2r_testkit::tls::self_signed_dir("p2c2r-plugin-tls");
    let auth = format!("token peer peer-tls {PEER_SECRET}\ntoken gamer gamer-tls {GAMER_SECRET}\n");
    std::fs::write(dir.join("auth"), auth).unwrap();
    std::fs::write(dir.join("gamer.token"), format!("{GAMER_SECRET}\n")).unwrap();
    dir
}

#[test]
fn the_plugin_gets_physics_from_a_peer_over_wss_with_tokens() {
    let dir = secrets();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = coordinator::Config {
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
    };
    let coordinator = rt.block_on(coordinator::spawn("127.0.0.1:0", config)).expect("coordinator starts");
    let url = coordinator.url();
    assert!(url.starts_with("wss://"), "{url}");
    let peer = rt.block_on(async {
        let peer = peer::spawn(peer::PeerConfig {
            coordinator_url: url.clone(),
            peer_id: Some("peer-tls".into()),
            token: Some(Credential::Token(PEER_SECRET.into())),
            ca_file: Some(dir.join("cert.pem")),
            ..Default::default()
        })
        .await;
        tokio::time::timeout(Duration::from_secs(10), peer.wait_for(|s| s.connected))
            .await
            .expect("the peer registers over wss:// within 10 s");
        peer
    });

    // A gamer without a valid token is turned away at the upgrade.
    rt.block_on(async {
        let mut config = ClientConfig::new(url.clone(), "gamer-tls");
        config.ca_file = Some(dir.join("cert.pem"));
        config.token = Some(Credential::Token("not-the-gamer-secret".into()));
        match GamerClient::connect(config).await {
            Err(e @ ClientError::Refused { status: 401, .. }) => assert!(e.is_refusal()),
            other => panic!("expected HTTP 401, got {other:?}"),
        }
    });

    let plugin = P2c2rPlugin::new(url)
        .gamer_id("gamer-tls")
        .with_connection(ConnectionSettings {
            token: Some(Credential::File(dir.join("gamer.token"))),
            ca_file: Some(dir.join("cert.pem")),
            ..default()
        })
        .with_fallback(FallbackSettings { timeout: Duration::from_secs(5), ..default() })
        .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() });
    let mut app = app_with(plugin, tick_duration());
    spawn_sinking_ball(&mut app);
    run_until(
        &mut app,
        Duration::from_secs(60),
        Duration::from_millis(5),
        |_| {},
        |app| stats(app).physics_results_from_peers >= 30,
        "30 physics results from the peer over wss://",
    );
    let s = stats(&app);
    assert_eq!(s.serving_peer.as_deref(), Some("peer-tls"), "{s:?}");
    assert!(s.connection.is_connected());
    drop(app);
    rt.block_on(async {
        peer.shutdown().await;
        coordinator.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
