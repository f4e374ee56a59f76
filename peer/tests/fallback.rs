//! A peer given other coordinators of its fleet (`--fallback-coordinator`) moves to the
//! next one when its coordinator goes away, and keeps serving there.

use std::time::Duration;

use peer::PeerConfig;

#[tokio::test]
async fn a_peer_moves_to_the_next_coordinator_of_its_list_when_its_own_goes_away() {
    let first = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let second = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let second_url = second.url();
    let peer = peer::spawn(PeerConfig {
        coordinator_url: first.url(),
        fallback_coordinators: vec![second_url],
        peer_id: Some("wanderer".into()),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let within = Duration::from_secs(30);
    tokio::time::timeout(within, peer.wait_for(|s| s.connected && s.registrations == 1))
        .await
        .expect("the first registration");
    assert_eq!(first.stats().peers, 1);
    first.shutdown().await;
    tokio::time::timeout(within, peer.wait_for(|s| s.connected && s.registrations == 2)).await.expect("the move");
    assert_eq!(second.stats().peers, 1, "registered on the next coordinator of its list");
    peer.shutdown().await;
    second.shutdown().await;
}
