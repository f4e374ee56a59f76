//! The operator's endpoints on the coordinator's own port: `/metrics` counts exactly what
//! happened, the event stream feeds the dashboard, and bad HTTP gets a status without
//! disturbing WebSocket clients.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, WAIT};
use coordinator::{Config, CoordinatorHandle};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(config: Config) -> CoordinatorHandle {
    coordinator::spawn("127.0.0.1:0", config).await.unwrap()
}

/// Sends `request` as is and reads the whole answer (the server closes after it).
async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await.expect("response in time").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    raw_http(addr, format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await
}

fn status(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {response:?}"))
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Every sample of a scrape, by its name with labels (`p2c2r_tasks_total{outcome="completed"}`).
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let response = get(addr, "/metrics").await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(response.contains("Content-Type: text/plain; version=0.0.4"), "{response}");
    body(&response)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (name.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, name: &str) -> f64 {
    let a = after.get(name).unwrap_or_else(|| panic!("{name} missing from the scrape"));
    a - before.get(name).copied().unwrap_or(0.0)
}

/// Runs one task from `gamer` through `peer` and back.
async fn round_trip(gamer: &mut Client, peer: &mut Client, task_id: &str) {
    gamer.submit(task_id, "physics_step", r#"{"n":1}"#, Some("s")).await;
    let a = peer.recv_assignment().await;
    peer.answer(&a, r#"{"ok":true}"#).await;
    let r = gamer.recv_result().await;
    assert_eq!(r.task_id, task_id);
}

#[tokio::test]
async fn metrics_move_by_exactly_the_tasks_run() {
    let coord = start(Config::default()).await;
    let addr = coord.local_addr();
    let mut peer = Client::peer(&coord.url(), "p1", 4).await;
    let mut gamer = Client::gamer(&coord.url(), "g1").await;
    let before = scrape(addr).await;
    assert_eq!(before["p2c2r_peers_connected"], 1.0);
    assert_eq!(before["p2c2r_gamers_connected"], 1.0);

    const TASKS: usize = 7;
    for i in 0..TASKS {
        round_trip(&mut gamer, &mut peer, &format!("t{i}")).await;
    }
    // And two errors of known codes.
    gamer.submit("t0", "physics_step", "{}", None).await;
    gamer.submit("t0", "physics_step", "{}", None).await;
    let dup = gamer.recv_error().await;
    assert_eq!(dup.code, p2c2r_protocol::ErrorCode::DuplicateTask);
    let eighth = peer.recv_assignment().await;
    assert_eq!(eighth.task_data.task_id, "t0");
    peer.send_text("{not json").await;
    peer.recv_error().await;

    let after = scrape(addr).await;
    let n = TASKS as f64;
    assert_eq!(delta(&before, &after, "p2c2r_tasks_submitted_total"), n + 1.0, "the 8th is still queued");
    assert_eq!(delta(&before, &after, r#"p2c2r_tasks_total{outcome="completed"}"#), n);
    assert_eq!(delta(&before, &after, r#"p2c2r_tasks_total{outcome="failed"}"#), 0.0);
    assert_eq!(delta(&before, &after, "p2c2r_task_latency_seconds_count"), n);
    assert_eq!(delta(&before, &after, "p2c2r_peer_task_duration_seconds_count"), n);
    assert_eq!(delta(&before, &after, r#"p2c2r_task_latency_seconds_bucket{le="+Inf"}"#), n);
    assert_eq!(delta(&before, &after, r#"p2c2r_errors_sent_total{code="duplicate_task"}"#), 1.0);
    assert_eq!(delta(&before, &after, r#"p2c2r_errors_sent_total{code="bad_json"}"#), 1.0);
    assert!(delta(&before, &after, "p2c2r_received_bytes_total") > 0.0);
    assert!(delta(&before, &after, "p2c2r_sent_bytes_total") > 0.0);
    // 9 submissions, 7 answers, a bad frame: every frame handled is counted, and held the
    // lock for some time.
    assert!(delta(&before, &after, "p2c2r_frames_handled_total") >= n + 10.0);
    assert!(delta(&before, &after, "p2c2r_frame_lock_held_seconds_total") > 0.0);
    // Every hold is counted, frames and the rest (deadlines, views, this scrape's own).
    assert!(
        delta(&before, &after, "p2c2r_state_lock_holds_total") > delta(&before, &after, "p2c2r_frames_handled_total")
    );
    assert!(
        delta(&before, &after, "p2c2r_state_lock_held_seconds_total")
            >= delta(&before, &after, "p2c2r_frame_lock_held_seconds_total")
    );
    assert!(after["p2c2r_state_lock_longest_hold_seconds"] > 0.0);
    assert_eq!(after["p2c2r_sessions"], 1.0);
    // The eighth task went to the peer (assigned) and waits there.
    assert_eq!(after["p2c2r_tasks_in_flight"], 1.0);
    assert_eq!(delta(&before, &after, "p2c2r_task_assignments_total"), n + 1.0);
    // The same numbers a stats request reports: one source.
    let stats = gamer.stats().await;
    assert_eq!(stats.tasks_completed as f64, after[r#"p2c2r_tasks_total{outcome="completed"}"#]);
    // Scrapes change nothing but the lock's own accounting, which counts their holds too.
    let without_lock_accounting =
        |text: String| text.lines().filter(|l| !l.contains("p2c2r_state_lock")).collect::<Vec<_>>().join("\n");
    assert_eq!(
        without_lock_accounting(coord.metrics_text()),
        without_lock_accounting(coord.metrics_text()),
        "scrapes change nothing"
    );
    coord.shutdown().await;
}

#[tokio::test]
async fn ping_round_trips_are_measured_per_role() {
    let config = Config {
        connections: coordinator::Connections { heartbeat_interval: Duration::from_millis(50), ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let addr = coord.local_addr();
    let peer = Client::peer(&coord.url(), "p1", 4).await;
    // Reading the socket is what makes tungstenite answer pings.
    let reader = tokio::spawn(async move {
        let mut ws = peer.ws;
        while ws.next().await.is_some() {}
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = scrape(addr).await;
        if m.get("p2c2r_peer_round_trip_seconds_count").copied().unwrap_or(0.0) >= 2.0 {
            assert_eq!(m["p2c2r_gamer_round_trip_seconds_count"], 0.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no round trip measured");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The dashboard's view has it too, once a sample has been taken since.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let fleet = get(addr, "/api/fleet").await;
        if status(&fleet) == 200 {
            let v = common::json(body(&fleet));
            if v["peers"][0]["rtt_ms"].is_number() {
                assert_eq!(v["peers"][0]["id"], "p1");
                assert!(v["peers"][0]["address"].as_str().unwrap().starts_with("127.0.0.1:"));
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no round trip in the fleet view: {fleet}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.abort();
    coord.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_and_its_event_stream_are_served() {
    let coord = start(Config::default()).await;
    let addr = coord.local_addr();
    let page = get(addr, "/").await;
    assert_eq!(status(&page), 200);
    assert!(page.contains("Content-Type: text/html"));
    assert!(page.contains("Content-Security-Policy: default-src 'none'"));
    assert!(body(&page).contains(r#"id="tasks-completed""#));
    assert!(!body(&page).contains("http://") && !body(&page).contains("https://"), "self-contained: no external URL");
    let head = raw_http(addr, b"HEAD / HTTP/1.1\r\n\r\n").await;
    assert_eq!(status(&head), 200);
    assert!(body(&head).is_empty());

    let _gamer = Client::gamer(&coord.url(), "g-events").await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    let mut events = EventReader { stream, buf: Vec::new() };
    let head = events.until(b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("text/event-stream"), "{head}");
    let first = events.next_event().await;
    assert!(first["history"].is_array(), "the first event carries the history: {first}");
    let mut later = events.next_event().await;
    assert!(later.get("history").is_none(), "later events carry only the new sample");
    assert!(later["time_ms"].as_u64() > first["time_ms"].as_u64());
    // A sample taken after the gamer registered lists it.
    for _ in 0..10 {
        if later["gamers"][0]["id"] == "g-events" {
            break;
        }
        later = events.next_event().await;
    }
    assert_eq!(later["gamers"][0]["id"], "g-events", "{later}");
    assert_eq!(later["totals"]["gamers"], 1);
    coord.shutdown().await;
}

/// Reads a server-sent event stream from a raw socket.
struct EventReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl EventReader {
    async fn until(&mut self, end: &[u8]) -> String {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                let chunk: Vec<u8> = self.buf.drain(..at + end.len()).collect();
                return String::from_utf8(chunk).unwrap();
            }
            let mut more = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut more)).await.expect("event in time").unwrap();
            assert!(n > 0, "stream ended");
            self.buf.extend_from_slice(&more[..n]);
        }
    }

    async fn next_event(&mut self) -> serde_json::Value {
        loop {
            let event = self.until(b"\n\n").await;
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                assert!(event.contains("event: snapshot\n"), "{event}");
                return common::json(data);
            }
        }
    }
}

/// A raw connection from the loopback address `from` that asked for the event stream.
async fn events_stream_from(from: &str, addr: SocketAddr) -> EventReader {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = tokio::time::timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap();
    stream.write_all(b"GET /events HTTP/1.1\r\n\r\n").await.unwrap();
    EventReader { stream, buf: Vec::new() }
}

/// An event stream from `from`, served (200).
async fn events_from(from: &str, addr: SocketAddr) -> EventReader {
    let mut events = events_stream_from(from, addr).await;
    let head = events.until(b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{from}: {head}");
    events
}

#[tokio::test]
async fn dashboards_beyond_the_limit_are_told_to_come_back() {
    let coord = start(Config::default()).await;
    let addr = coord.local_addr();
    // One address gets its share and no more (a stream it never reads included).
    let per_address = coordinator::http::MAX_EVENT_STREAMS_PER_ADDRESS;
    let mut open = Vec::new();
    for _ in 0..per_address {
        open.push(events_from("127.0.0.9", addr).await);
    }
    let mut one_more = events_stream_from("127.0.0.9", addr).await;
    let answer = one_more.until(b"\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    // Other addresses share the rest, up to the limit.
    let addresses = (coordinator::http::MAX_EVENT_STREAMS - per_address).div_ceil(per_address);
    for i in 0..coordinator::http::MAX_EVENT_STREAMS - per_address {
        open.push(events_from(&format!("127.0.0.{}", 1 + i % addresses), addr).await);
    }
    let refused = get(addr, "/events").await;
    assert_eq!(status(&refused), 503, "{refused}");
    assert!(refused.contains("Retry-After: "));
    // The page and the metrics are still served, and a place frees when one leaves.
    assert_eq!(status(&get(addr, "/metrics").await), 200);
    drop(open.remove(0));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut events = events_stream_from("127.0.0.9", addr).await;
        // The freed place is noticed when the next snapshot fails to reach the closed socket.
        if events.until(b"\r\n\r\n").await.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the place never freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    coord.shutdown().await;
}

#[tokio::test]
async fn other_web_sites_are_refused_in_open_mode() {
    let coord = start(Config::default()).await;
    let addr = coord.local_addr();
    let port = addr.port();
    // A page of another site (its script opening our WebSocket or reading the fleet).
    let cross = format!("GET /api/fleet HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\n\r\n");
    assert_eq!(status(&raw_http(addr, cross.as_bytes()).await), 403);
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    assert_eq!(status(&raw_http(addr, upgrade.as_bytes()).await), 403);
    // DNS rebinding: another site's name resolving to 127.0.0.1.
    let rebound = format!("GET /api/fleet HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n");
    assert_eq!(status(&raw_http(addr, rebound.as_bytes()).await), 403);
    // The dashboard's own requests, and native clients, are served.
    let same = format!("GET /metrics HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://localhost:{port}\r\n\r\n");
    assert_eq!(status(&raw_http(addr, same.as_bytes()).await), 200);
    assert_eq!(status(&raw_http(addr, format!("GET / HTTP/1.1\r\nHost: [::1]:{port}\r\n\r\n").as_bytes()).await), 200);
    Client::gamer(&coord.url(), "native").await;
    coord.shutdown().await;
}

#[tokio::test]
async fn bad_http_gets_a_status_and_never_disturbs_websocket_clients() {
    let config = Config {
        connections: coordinator::Connections { handshake_timeout: Duration::from_millis(300), ..Default::default() },
        ..Config::default()
    };
    let coord = start(config).await;
    let addr = coord.local_addr();
    let mut peer = Client::peer(&coord.url(), "p1", 4).await;
    let mut gamer = Client::gamer(&coord.url(), "g1").await;
    round_trip(&mut gamer, &mut peer, "before").await;

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unknown path", b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 404),
        ("unknown method", b"DELETE / HTTP/1.1\r\n\r\n".to_vec(), 405),
        ("post", b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec(), 405),
        ("huge header", format!("GET / HTTP/1.1\r\nX-Huge: {}\r\n\r\n", "a".repeat(40_000)).into_bytes(), 431),
        ("too many headers", format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(100)).into_bytes(), 431),
        ("not http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), 400),
        ("slow head", b"GET /metrics HTTP/1.1\r\nHost: x".to_vec(), 408),
    ];
    for (what, request, expected) in cases {
        let response = raw_http(addr, &request).await;
        assert_eq!(status(&response), expected, "{what}: {response}");
        assert!(response.contains("Connection: close\r\n"), "{what}");
    }
    // A client that sends a request and never reads a long answer is dropped, not waited on.
    let mut lazy = TcpStream::connect(addr).await.unwrap();
    lazy.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();

    // Meanwhile the WebSocket clients were served as if nothing happened.
    for i in 0..5 {
        round_trip(&mut gamer, &mut peer, &format!("after{i}")).await;
    }
    let stats = gamer.stats().await;
    assert_eq!(stats.tasks_completed, 6);
    assert_eq!(stats.errors_sent, 0, "no WebSocket client saw an error");
    drop(lazy);
    coord.shutdown().await;
}

/// A dashboard that stops reading loses its place within seconds (a small send buffer
/// fills, and a short stall ends the stream), so an address's share of streams held by
/// unread ones comes back to it, and streams elsewhere are unaffected.
#[tokio::test]
async fn streams_that_are_not_read_are_dropped() {
    let coord = start(Config::default()).await;
    let addr = coord.local_addr();
    // Forty peers make each snapshot several kilobytes, so buffers fill within seconds.
    let mut peers = Vec::new();
    for i in 0..40 {
        peers.push(Client::peer(&coord.url(), &format!("peer-with-a-long-enough-name-{i:03}"), 4).await);
    }
    common::eventually("the peers in the snapshot", || coord.fleet().peers.len() == 40).await;
    // A reading dashboard elsewhere.
    let mut reader = events_from("127.0.0.1", addr).await;
    // Its whole share of streams from 127.0.0.8, none of them read, with small receive
    // buffers (as an attacker would choose, to be cheap).
    let per_address = coordinator::http::MAX_EVENT_STREAMS_PER_ADDRESS;
    let mut unread = Vec::new();
    for _ in 0..per_address {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.8:0".parse().unwrap()).unwrap();
        let mut stream = tokio::time::timeout(WAIT, socket.connect(addr)).await.unwrap().unwrap();
        stream.write_all(b"GET /events HTTP/1.1\r\n\r\n").await.unwrap();
        unread.push(stream);
    }
    // Each is dropped once its buffers fill and a write stalls: the address gets a place
    // again, though it never closed one.
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    loop {
        let mut events = events_stream_from("127.0.0.8", addr).await;
        if events.until(b"\r\n\r\n").await.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "unread streams kept their places");
        // The reading dashboard keeps getting its events meanwhile.
        reader.until(b"\n\n").await;
    }
    drop(unread);
    coord.shutdown().await;
}
