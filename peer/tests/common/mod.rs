//! Helpers shared by the peer's end-to-end tests: the testkit's honest gamer (the real
//! gamer client) and raw protocol client, scripted coordinator and bounded waits, and a metrics scraper.

#![allow(dead_code, unused_imports)]

use tokio::net::TcpStream;

pub use p2c2r_testkit::client::Client;
pub use p2c2r_testkit::gamer::{self, success_json};
pub use p2c2r_testkit::server::{Conn, listener};
pub use p2c2r_testkit::wait::{WAIT, eventually, within};

/// Starts an in-process peer of `url` named `id` (two tasks at once, quick reconnects)
/// and waits until it is registered.
pub async fn start_peer(url: &str, id: &str) -> peer::PeerHandle {
    let peer = peer::spawn(peer::PeerConfig {
        coordinator_url: url.to_owned(),
        peer_id: Some(id.into()),
        max_concurrent_tasks: Some(2),
        reconnect_backoff_min: std::time::Duration::from_millis(20),
        reconnect_backoff_max: std::time::Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    within("the peer to register", peer.wait_for(|s| s.connected)).await;
    peer
}

/// `GET path` over a plain TCP connection; returns the whole response (head and body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("an HTTP response", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    })
    .await
}

/// Scrapes `http://addr/metrics` and returns its samples: `name{labels}` → value.
pub async fn scrape(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let response = http_get(addr, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {response}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
            (name.to_owned(), value.parse().unwrap_or_else(|e| panic!("{e}: {line:?}")))
        })
        .collect()
}
