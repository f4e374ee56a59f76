//! Hostile connections (issue 8): clients that stop reading, fragmented messages that
//! never finish, floods of silent sockets and unregistered squatters, and a stall of the
//! coordinator's own runtime. Each test shows the coordinator bounds the damage and keeps
//! serving honest clients. Raw TCP and hand-written WebSocket frames where the attack
//! needs them; every wait is on an event, bounded by a generous timeout.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, WAIT, eventually};
use coordinator::{Config, CoordinatorHandle, spawn};
use futures_util::{SinkExt, StreamExt};
use p2c2r_protocol::{Capabilities, ErrorCode, Heartbeat, Message, codec};
use p2c2r_testkit::client::{capacity, register_gamer, register_peer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, client_async_with_config};

async fn start(config: Config) -> CoordinatorHandle {
    spawn("127.0.0.1:0", config).await.expect("bind loopback")
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all local
/// on Linux, so each test "machine" gets its own source address).
async fn tcp_from(from: &str, addr: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).unwrap();
    }
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(WAIT, socket.connect(addr)).await.expect("connect timed out").expect("connect")
}

/// A WebSocket client from the loopback address `from`.
async fn ws_from(from: &str, coord: &CoordinatorHandle) -> Result<Client, String> {
    let stream = tcp_from(from, coord.local_addr(), None).await;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    match tokio::time::timeout(WAIT, client_async_with_config(coord.url(), MaybeTlsStream::Plain(stream), Some(config)))
        .await
        .expect("handshake timed out")
    {
        Ok((ws, _)) => Ok(Client::from_ws(ws)),
        Err(e) => Err(e.to_string()),
    }
}

/// A full task round trip between this peer and gamer.
async fn round_trip(peer: &mut Client, gamer: &mut Client, task_id: &str) {
    gamer.submit(task_id, "check_type", "{}", None).await;
    let a = peer.recv_assignment().await;
    peer.answer(&a, r#"{"status":"success"}"#).await;
    assert_eq!(gamer.recv_result().await.task_id, task_id);
}

// ---- write stalls ---------------------------------------------------------------------

#[tokio::test]
async fn a_peer_that_stops_reading_is_disconnected_by_the_write_stall_timeout() {
    let stall = Duration::from_millis(800);
    let coord = start(Config {
        connections: coordinator::Connections {
            write_stall_timeout: stall,
            // Long enough that only the stall timeout can act.
            heartbeat_timeout: Duration::from_secs(600),
            send_queue_bytes: 1 << 30,
            ..Default::default()
        },
        scheduling: coordinator::Scheduling {
            max_pending_bytes_per_gamer: 1 << 30,
            max_pending_bytes: 1 << 30,
            initial_peer_capacity: 64,
            max_peer_capacity: 64,
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    // The peer's socket takes almost nothing into its kernel buffer.
    let stream = tcp_from("127.0.0.1", coord.local_addr(), Some(4096)).await;
    let (ws, _) = client_async_with_config(coord.url(), MaybeTlsStream::Plain(stream), None).await.unwrap();
    let mut deaf = Client::from_ws(ws);
    deaf.register(&register_peer("deaf-peer", capacity(64), None)).await;
    let mut gamer = Client::gamer(&coord.url(), "gamer").await;
    // 12 × 4 MiB of assignments: far more than loopback's kernel buffers hold.
    let payload = format!(r#"{{"blob":"{}"}}"#, "x".repeat(4 << 20));
    let sent_at = tokio::time::Instant::now();
    for i in 0..12 {
        gamer.submit(&format!("big-{i}"), "blob", &payload, None).await;
    }
    eventually("the deaf peer is disconnected", || coord.stats().peers == 0).await;
    println!("deaf peer disconnected {:?} after the first submission (stall timeout {stall:?})", sent_at.elapsed());
    let stats = coord.stats();
    assert_eq!(stats.peers_evicted, 0, "it was the write stall, not the heartbeat timeout: {stats:?}");
    eventually("its connection is released", || coord.admission().connections == 1).await;
    // Its tasks go to a peer that reads.
    let mut peer = Client::peer(&coord.url(), "reading-peer", 64).await;
    let a = peer.recv_assignment().await;
    assert!(a.task_data.task_id.starts_with("big-"), "{}", a.task_data.task_id);
    drop(deaf);
    coord.shutdown().await;
}

// ---- liveness after a runtime stall -------------------------------------------------------

/// A client on the test's runtime that heartbeats every 100 ms, answers pings, and asks
/// for stats when told to.
struct LiveClient {
    ask: mpsc::Sender<()>,
    answers: mpsc::Receiver<Result<p2c2r_protocol::StatsReport, String>>,
}

impl LiveClient {
    async fn start(url: &str, peer_id: &str) -> LiveClient {
        let mut c = Client::peer(url, peer_id, 1).await;
        let (ask, mut asks) = mpsc::channel::<()>(4);
        let (answer, answers) = mpsc::channel(4);
        let peer_id = peer_id.to_owned();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_millis(100));
            let heartbeat = codec::encode(&Message::Heartbeat(Heartbeat { peer_id: Some(peer_id), gamer_id: None }));
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        if c.ws.send(WsMessage::text(heartbeat.clone())).await.is_err() {
                            let _ = answer.send(Err("send failed".into())).await;
                            return;
                        }
                    }
                    Some(()) = asks.recv() => {
                        let _ = c.ws.send(WsMessage::text(codec::encode(&Message::Stats(Default::default())))).await;
                    }
                    frame = c.ws.next() => match frame {
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Ok(Message::StatsReport(r)) = codec::decode(text.as_str()) {
                                let _ = answer.send(Ok(r)).await;
                            }
                        }
                        Some(Ok(WsMessage::Close(f))) => {
                            let _ = answer.send(Err(format!("closed: {f:?}"))).await;
                            return;
                        }
                        Some(Ok(_)) => {}
                        None | Some(Err(_)) => {
                            let _ = answer.send(Err("connection ended".into())).await;
                            return;
                        }
                    },
                }
            }
        });
        LiveClient { ask, answers }
    }

    async fn stats(&mut self) -> Result<p2c2r_protocol::StatsReport, String> {
        self.ask.send(()).await.map_err(|_| "client task ended".to_owned())?;
        tokio::time::timeout(WAIT, self.answers.recv()).await.expect("no answer").expect("client task ended")
    }
}

/// The coordinator on its own current-thread runtime, in its own OS thread, so the test
/// can stall that runtime without stalling the clients.
struct ForeignCoordinator {
    url: String,
    runtime: tokio::runtime::Handle,
    handle: std::sync::Arc<std::sync::Mutex<Option<CoordinatorHandle>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ForeignCoordinator {
    fn start(config: Config) -> ForeignCoordinator {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = std::sync::Arc::new(std::sync::Mutex::new(None));
        let shared = handle.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let coord = spawn("127.0.0.1:0", config).await.unwrap();
                let url = coord.url();
                *shared.lock().unwrap() = Some(coord);
                ready_tx.send((url, tokio::runtime::Handle::current())).unwrap();
                let _ = stopped.await;
                let coord = shared.lock().unwrap().take();
                if let Some(coord) = coord {
                    coord.shutdown().await;
                }
            });
        });
        let (url, runtime) = ready_rx.recv_timeout(WAIT).expect("coordinator thread started");
        ForeignCoordinator { url, runtime, handle, stop: Some(stop), thread: Some(thread) }
    }

    fn stats(&self) -> p2c2r_protocol::StatsReport {
        self.handle.lock().unwrap().as_ref().unwrap().stats()
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_of_the_coordinators_runtime_evicts_nobody_whose_heartbeats_arrived() {
    let heartbeat_timeout = Duration::from_secs(1);
    let coord = ForeignCoordinator::start(Config {
        connections: coordinator::Connections {
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout,
            ..Default::default()
        },
        ..Config::default()
    });
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(LiveClient::start(&coord.url, &format!("live-{i}")).await);
    }
    for c in &mut clients {
        c.stats().await.expect("answers before the stall");
    }
    // Block the coordinator's only thread for well over the heartbeat timeout while the
    // clients keep heartbeating into their sockets.
    for round in 0..3 {
        let stall = coord.runtime.spawn(async move { std::thread::sleep(heartbeat_timeout * 5 / 2) });
        stall.await.unwrap();
        for (i, c) in clients.iter_mut().enumerate() {
            let report = c.stats().await.unwrap_or_else(|e| panic!("client {i} after stall {round}: {e}"));
            assert_eq!(report.peers, 8);
        }
    }
    let stats = coord.stats();
    assert_eq!((stats.peers, stats.peers_evicted), (8, 0), "{stats:?}");
    coord.stop();
}

// ---- unfinished messages ---------------------------------------------------------------------

/// A masked client frame, written by hand.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key = [0xa1, 0xb2, 0xc3, 0xd4];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Opens a raw connection, completes the WebSocket handshake by hand, then writes `first`
/// (tungstenite refuses bytes that arrive with the request, so they follow the response).
async fn raw_ws(coord: &CoordinatorHandle, first: &[u8]) -> TcpStream {
    raw_ws_styled(coord, "", "\r\n", first).await
}

/// [`raw_ws`] with the request's lines ended by `eol`, after `before` (e.g. blank lines,
/// which HTTP parsers skip).
async fn raw_ws_styled(coord: &CoordinatorHandle, before: &str, eol: &str, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(coord.local_addr()).await.unwrap();
    let request = format!(
        "{before}GET / HTTP/1.1{eol}Host: {}{eol}Upgrade: websocket{eol}Connection: Upgrade{eol}\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=={eol}Sec-WebSocket-Version: 13{eol}{eol}",
        coord.local_addr()
    )
    .into_bytes();
    s.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        let n = tokio::time::timeout(WAIT, s.read(&mut byte)).await.expect("handshake response").unwrap();
        assert_eq!(n, 1, "closed during the handshake: {}", String::from_utf8_lossy(&response));
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&response));
    s.write_all(first).await.unwrap();
    s
}

/// Reads one (unmasked) server frame: opcode and payload; `None` at the end of the stream.
/// Reads server frames until the close frame: the last `error` message before it (if
/// any) and the close code.
async fn error_then_close(rd: &mut (impl AsyncRead + Unpin)) -> (Option<Message>, u16) {
    let mut error = None;
    loop {
        let (opcode, payload) = tokio::time::timeout(WAIT, read_server_frame(rd))
            .await
            .expect("the coordinator neither answered nor closed")
            .expect("a close frame before the end of the stream");
        match opcode {
            1 => error = Some(codec::decode(std::str::from_utf8(&payload).unwrap()).unwrap()),
            8 => return (error, u16::from_be_bytes([payload[0], payload[1]])),
            _ => {}
        }
    }
}

async fn read_server_frame(s: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0f, payload))
}

#[tokio::test]
async fn a_message_left_unfinished_is_closed_after_the_assembly_timeout_despite_pongs() {
    let coord = start(Config {
        connections: coordinator::Connections {
            message_assembly_timeout: Duration::from_millis(1500),
            heartbeat_interval: Duration::from_millis(200),
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    // The first fragment of a message.
    let first = client_frame(false, 1, br#"{"msg_type":"register_gamer","gamer_id":"#);
    let s = raw_ws(&coord, &first).await;
    let (mut rd, mut wr) = s.into_split();
    // Keep the connection alive with pongs and dribble one-byte continuation fragments,
    // never finishing, until the coordinator closes it.
    let dribbler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let mut bytes = client_frame(true, 10, b"");
            bytes.extend(client_frame(false, 0, b" "));
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let (error, close_code) = error_then_close(&mut rd).await;
    dribbler.abort();
    assert_eq!(close_code, 1008);
    match error {
        Some(Message::Error(e)) => {
            assert_eq!(e.code, ErrorCode::FrameTooLarge);
            assert!(e.message.contains("not completed within 1500 ms"), "{}", e.message);
        }
        other => panic!("expected an error before the close, got {other:?}"),
    }
    coord.shutdown().await;
}

#[tokio::test]
async fn a_fragmented_message_finished_in_time_with_control_frames_between_is_served() {
    let coord = start(Config {
        connections: coordinator::Connections {
            message_assembly_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    let text = br#"{"msg_type":"register_gamer","gamer_id":"fragmented"}"#;
    let mut frames = client_frame(false, 1, &text[..10]);
    frames.extend(client_frame(true, 9, b"ping"));
    frames.extend(client_frame(false, 0, &text[10..30]));
    frames.extend(client_frame(true, 10, b""));
    frames.extend(client_frame(true, 0, &text[30..]));
    // Split the frames across four writes, mid-header.
    let s = raw_ws(&coord, &frames[..3]).await;
    let (mut rd, mut wr) = s.into_split();
    for piece in [&frames[3..7], &frames[7..40], &frames[40..]] {
        wr.write_all(piece).await.unwrap();
        wr.flush().await.unwrap();
    }
    let ack = loop {
        let (opcode, payload) = tokio::time::timeout(WAIT, read_server_frame(&mut rd)).await.unwrap().unwrap();
        if opcode == 1 {
            break codec::decode(std::str::from_utf8(&payload).unwrap()).unwrap();
        }
    };
    assert!(matches!(ack, Message::RegistrationAck(_)), "{ack:?}");
    eventually("the gamer is registered", || coord.stats().gamers == 1).await;
    assert_eq!(coord.admission().unregistered, 0);
    coord.shutdown().await;
}

#[tokio::test]
async fn unfinished_messages_together_cannot_pin_more_than_the_inbound_budget() {
    let frame_limit = 64 * 1024;
    let coord = start(Config {
        connections: coordinator::Connections {
            max_frame_bytes: frame_limit,
            max_connections_per_address: 1000,
            max_unregistered_connections: 1000,
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    let fit = coordinator::connection::INBOUND_BUDGET_FRAMES;
    // Each announces a largest frame and sends 10 bytes of it.
    let announce = client_frame(true, 1, &vec![b' '; frame_limit]);
    let mut pinning = Vec::new();
    for _ in 0..fit {
        pinning.push(raw_ws(&coord, &announce[..24]).await);
    }
    let full = (fit * frame_limit) as u64;
    eventually("the budget is spent", || coord.inbound_bytes() == full).await;
    // One more is refused before tungstenite reserves anything.
    let s = raw_ws(&coord, &announce[..24]).await;
    let (mut rd, _wr) = s.into_split();
    let (error, close_code) = error_then_close(&mut rd).await;
    assert_eq!(close_code, 1013);
    assert!(matches!(error, Some(Message::Error(ref e)) if e.code == ErrorCode::FrameTooLarge), "{error:?}");
    assert_eq!(coord.inbound_bytes(), full);
    // Messages that arrive whole are not charged: honest clients keep working.
    let mut peer = Client::peer(&coord.url(), "peer", 1).await;
    let mut gamer = Client::gamer(&coord.url(), "gamer").await;
    round_trip(&mut peer, &mut gamer, "t1").await;
    // The pinning connections' charges go when they do.
    drop(pinning);
    eventually("the budget is released", || coord.inbound_bytes() == 0).await;
    coord.shutdown().await;
}

// ---- admission --------------------------------------------------------------------------

#[tokio::test]
async fn three_hundred_silent_sockets_from_one_address_cannot_lock_out_a_gamer_and_a_peer() {
    let per_address = 8;
    let coord = start(Config {
        connections: coordinator::Connections {
            max_connections: 64,
            max_connections_per_address: per_address,
            // The squatters keep their slots for the whole test unless refused.
            handshake_timeout: Duration::from_secs(120),
            register_timeout: Duration::from_secs(120),
            ..Default::default()
        },
        rate_limits: coordinator::RateLimits {
            // This test is about holding slots, not about the attempt rate (tests/identity.rs).
            max_connection_attempts_per_second: None,
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    let mut squatters = Vec::new();
    for _ in 0..300 {
        squatters.push(tcp_from("127.0.0.1", coord.local_addr(), None).await);
    }
    // The refused ones are closed at once: read their end of stream.
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for mut s in squatters {
        let closed_tx = closed_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut byte = [0u8];
            let ended = matches!(s.read(&mut byte).await, Ok(0) | Err(_));
            let _ = closed_tx.send(ended);
            // Keep the admitted ones open until the test ends.
            std::future::pending::<()>().await;
        }));
    }
    for _ in 0..(300 - per_address) {
        let ended = tokio::time::timeout(WAIT, closed_rx.recv()).await.expect("a refused socket stayed open").unwrap();
        assert!(ended);
    }
    assert_eq!(coord.admission().connections, per_address);
    // An honest peer and gamer on other machines get in and work.
    let mut peer = ws_from("127.0.0.2", &coord).await.expect("the peer is admitted");
    peer.register(&register_peer("honest-peer", capacity(1), None)).await;
    let mut gamer = ws_from("127.0.0.3", &coord).await.expect("the gamer is admitted");
    gamer.register(&register_gamer("honest-gamer", None)).await;
    round_trip(&mut peer, &mut gamer, "t1").await;
    let counts = coord.admission();
    assert_eq!((counts.connections, counts.unregistered, counts.addresses), (per_address + 2, per_address, 3));
    // No more than the limit ever got in from the squatters' address.
    assert!(closed_rx.try_recv().is_err(), "an admitted squatter was closed");
    for r in readers {
        r.abort();
    }
    coord.shutdown().await;
}

#[tokio::test]
async fn unregistered_squatters_beyond_the_cap_are_refused_while_registered_clients_work() {
    let cap = 4;
    let coord = start(Config {
        connections: coordinator::Connections {
            max_unregistered_connections: cap,
            max_connections_per_address: 1000,
            register_timeout: Duration::from_secs(120),
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    let mut peer = ws_from("127.0.0.1", &coord).await.unwrap();
    peer.register(&register_peer("registered-peer", capacity(1), None)).await;
    let mut gamer = ws_from("127.0.0.1", &coord).await.unwrap();
    gamer.register(&register_gamer("registered-gamer", None)).await;
    let mut squatters = Vec::new();
    for _ in 0..cap {
        squatters.push(ws_from("127.0.0.1", &coord).await.expect("within the cap"));
    }
    eventually("the squatters are counted", || coord.admission().unregistered == cap).await;
    // One more is refused: its handshake fails.
    let refused = ws_from("127.0.0.1", &coord).await;
    assert!(refused.is_err(), "a connection beyond the unregistered cap was admitted");
    // The registered clients are unaffected.
    round_trip(&mut peer, &mut gamer, "t1").await;
    // A squatter that registers frees its unregistered slot for a newcomer.
    squatters[0].register(&register_gamer("late-gamer", None)).await;
    assert_eq!(coord.admission().unregistered, cap - 1);
    let mut newcomer = ws_from("127.0.0.1", &coord).await.expect("a slot was freed");
    newcomer.register(&register_gamer("newcomer", None)).await;
    // And a squatter that leaves frees its slot too.
    squatters.pop();
    eventually("the leaving squatter's slot is released", || coord.admission().unregistered == cap - 2).await;
    round_trip(&mut peer, &mut gamer, "t2").await;
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_client_flooding_heartbeats_still_meets_the_registration_timeout() {
    let coord = start(Config {
        connections: coordinator::Connections { register_timeout: Duration::from_millis(500), ..Default::default() },
        ..Config::default()
    })
    .await;
    let (ws, _) = tokio_tungstenite::connect_async(coord.url()).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let flood = tokio::spawn(async move {
        let heartbeat = codec::encode(&Message::Heartbeat(Heartbeat::default()));
        loop {
            for _ in 0..100 {
                if tx.feed(WsMessage::text(heartbeat.clone())).await.is_err() {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
        }
    });
    let code = loop {
        match tokio::time::timeout(WAIT, rx.next()).await.expect("still open past the registration timeout") {
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => break None,
        }
    };
    flood.abort();
    assert_eq!(code, Some(1008));
    eventually("its slot is released", || coord.admission().connections == 0).await;
    coord.shutdown().await;
}

// ---- idle memory (a printout, not a test of speed or size) ------------------------------------

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Prints the coordinator binary's resident memory per idle connection (WebSocket open,
/// unregistered, one stats exchange). Run with
/// `cargo test -p coordinator --test hostile_connections -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement to read, not a check"]
async fn measure_idle_connection_memory() {
    use std::io::{BufRead, BufReader};
    let n = 1000;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--listen", "127.0.0.1:0", "--register-timeout-ms", "600000"])
        .args(["--max-connections-per-address", "100000", "--max-unregistered-connections", "100000"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "the coordinator exited");
        if let Some(at) = line.find("addr=") {
            let rest = &line[at + 5..];
            break rest.split_whitespace().next().unwrap().trim_matches('"').to_owned();
        }
    };
    std::thread::spawn(move || for _ in log.lines() {});
    let url = format!("ws://{addr}");
    let pid = child.id();
    let mut clients = Vec::new();
    // Warm up allocator arenas and the runtime first.
    for _ in 0..50 {
        clients.push(Client::connect(&url).await);
    }
    for c in &mut clients {
        c.stats().await;
    }
    let before = rss_kib(pid);
    for _ in 0..n {
        let mut c = Client::connect(&url).await;
        c.stats().await;
        clients.push(c);
    }
    let after = rss_kib(pid);
    println!(
        "idle connections: RSS {before} KiB -> {after} KiB for {n} connections: {:.1} KiB each",
        (after - before) as f64 / n as f64
    );
    drop(clients);
    let _ = child.kill();
    let _ = child.wait();
}

/// Before registering, a client may not announce a message larger than a registration
/// needs: 64 unregistered sockets from one address could otherwise pin the whole inbound
/// budget with 16 MiB announcements and starve every honest client's large messages.
#[tokio::test]
async fn a_peer_cannot_declare_an_unbounded_list_of_task_types() {
    let coord = start(Config::default()).await;
    let mut c = Client::connect(&coord.url()).await;
    let task_types: Vec<String> =
        (0..=p2c2r_protocol::limits::MAX_TASK_TYPES_PER_PEER).map(|i| format!("t{i}")).collect();
    let capabilities = Capabilities { task_types: Some(task_types), ..Default::default() };
    c.send(&register_peer("greedy", capabilities, None)).await;
    let e = c.recv_error().await;
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert!(e.message.contains("task_types"), "{}", e.message);
    assert_eq!(coord.stats().peers, 0);
    coord.shutdown().await;
}

#[tokio::test]
async fn a_peer_cannot_declare_an_unbounded_determinism_setup() {
    let coord = start(Config::default()).await;
    let huge = p2c2r_protocol::Determinism {
        engine: "rapier3d 0.36.1".into(),
        features: (0..=p2c2r_protocol::limits::MAX_DETERMINISM_FEATURES).map(|i| format!("f{i}")).collect(),
        sim: "x".repeat(p2c2r_protocol::limits::MAX_ID_BYTES + 1),
        arch: "x86_64".into(),
    };
    let mut c = Client::connect(&coord.url()).await;
    c.send(&register_peer("odd", Capabilities { determinism: Some(huge), ..Default::default() }, None)).await;
    let e = c.recv_error().await;
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert!(e.message.contains("determinism"), "{}", e.message);
    assert_eq!(coord.stats().peers, 0);
    // A real peer's setup is accepted.
    let mut ok = Client::connect(&coord.url()).await;
    let caps = Capabilities {
        determinism: Some(p2c2r_protocol::Determinism {
            engine: "rapier3d 0.36.1".into(),
            features: vec!["enhanced-determinism".into()],
            sim: "p2c2r_sim 0.1.0".into(),
            arch: "x86_64".into(),
        }),
        ..Default::default()
    };
    ok.send(&register_peer("fine", caps, None)).await;
    ok.expect_ack().await;
    coord.shutdown().await;
}

#[tokio::test]
async fn frames_are_watched_whatever_the_upgrade_requests_line_ends() {
    // HTTP parsers accept bare LF line ends and blank lines before the request line; the
    // frame watcher must start at the first frame all the same, or its limits (here: 1 MiB
    // before registering) would not apply.
    let coord = start(Config::default()).await;
    let announce = client_frame(true, 1, &vec![b' '; 2 * 1024 * 1024]);
    for (before, eol) in [("", "\n"), ("\r\n\r\n", "\r\n"), ("\n\n", "\n")] {
        let s = raw_ws_styled(&coord, before, eol, &announce[..24]).await;
        let (mut rd, _wr) = s.into_split();
        let (error, close_code) = error_then_close(&mut rd).await;
        assert_eq!(close_code, 1009, "{before:?} {eol:?}");
        assert!(
            matches!(error, Some(Message::Error(ref e)) if e.message.contains("register first")),
            "{before:?} {eol:?}: {error:?}"
        );
    }
    assert_eq!(coord.inbound_bytes(), 0);
    coord.shutdown().await;
}

#[tokio::test]
async fn an_unregistered_client_cannot_pin_a_large_message() {
    let coord = start(Config::default()).await;
    let announce = client_frame(true, 1, &vec![b' '; 2 * 1024 * 1024]);
    let s = raw_ws(&coord, &announce[..24]).await;
    let (mut rd, _wr) = s.into_split();
    let (error, close_code) = error_then_close(&mut rd).await;
    assert_eq!(close_code, 1009);
    assert!(
        matches!(error, Some(Message::Error(ref e)) if e.code == ErrorCode::FrameTooLarge && e.message.contains("register first")),
        "{error:?}"
    );
    assert_eq!(coord.inbound_bytes(), 0, "nothing stays charged");
    // Registered clients keep working, large messages included.
    let mut peer = Client::peer(&coord.url(), "peer", 1).await;
    let mut gamer = Client::gamer(&coord.url(), "gamer").await;
    round_trip(&mut peer, &mut gamer, "t1").await;
    gamer.submit("big", "physics", &format!("\"{}\"", "x".repeat(200_000)), None).await;
    assert_eq!(peer.recv_assignment().await.task_data.task_id, "big");
    coord.shutdown().await;
}
