//! In-memory connections: clients in this process (the gamer client, peers, the Bevy
//! plugin's tests) reach the coordinator through a [`Dialer`] instead of a TCP socket.
//!
//! A dialer makes a [`tokio::io::duplex`] pair, keeps the client's end and hands the
//! other to the accept loop through a bounded queue (the backlog,
//! [`MEMORY_BACKLOG`]). The accept loop treats it as it treats an accepted TCP connection
//! from the dialer's address (`127.0.0.1` unless [`CoordinatorHandle::dialer_from`] says
//! otherwise): the per-address attempt rate, then admission (per-address, per-network
//! and unregistered caps), then `max_connections`, then [`crate::http::serve`]: the
//! TLS handshake when TLS is configured, the request head within its byte and time
//! limits, the bearer token, and the WebSocket with every limit of
//! [`crate::connection`]. A refused connection is closed before the handshake, as over
//! TCP.
//!
//! Each direction of a pair buffers at most [`MEMORY_BUFFER_BYTES`]; a writer waits for
//! the reader beyond that, so a client that stops reading stalls the coordinator's writer
//! as a full socket would (and is dropped after `write_stall_timeout`).
//!
//! [`CoordinatorHandle::dialer_from`]: crate::CoordinatorHandle::dialer_from

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use p2c2r_net::Dialer;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Bytes each direction of an in-memory connection holds before its writer waits: a few
/// ticks' frames, like a socket's buffers held small (`p2c2r_net::socket::limit_unsent`).
pub const MEMORY_BUFFER_BYTES: usize = 64 * 1024;

/// In-memory connections dialed and not yet taken by the accept loop; a dial beyond it
/// fails (`ConnectionRefused`), as a connect to a full listen backlog would.
pub const MEMORY_BACKLOG: usize = 128;

/// The address in-memory connections come from unless told otherwise.
pub const MEMORY_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A dialed connection: the coordinator's end and the address it is counted under.
#[derive(Debug)]
pub(crate) struct MemoryConn {
    pub stream: DuplexStream,
    pub addr: SocketAddr,
}

/// The sending side of the backlog, shared by every dialer of one coordinator.
#[derive(Clone, Debug)]
pub(crate) struct Backlog {
    tx: mpsc::Sender<MemoryConn>,
    /// Gives each connection a port of its own, so log lines tell them apart.
    ports: Arc<AtomicU16>,
}

/// The backlog and the accept loop's end of it.
pub(crate) fn backlog() -> (Backlog, mpsc::Receiver<MemoryConn>) {
    let (tx, rx) = mpsc::channel(MEMORY_BACKLOG);
    (Backlog { tx, ports: Arc::new(AtomicU16::new(1)) }, rx)
}

impl Backlog {
    /// A dialer whose connections come from `ip`; `name` is the coordinator's URL.
    pub fn dialer(&self, ip: IpAddr, name: &str) -> Dialer {
        let backlog = self.clone();
        Dialer::new(format!("in-memory {name} from {ip}"), move || backlog.dial(ip))
    }

    fn dial(&self, ip: IpAddr) -> io::Result<DuplexStream> {
        // Port 0 is "no port": skipped when the counter wraps.
        let port = match self.ports.fetch_add(1, Ordering::Relaxed) {
            0 => self.ports.fetch_add(1, Ordering::Relaxed),
            port => port,
        };
        let (client, server) = tokio::io::duplex(MEMORY_BUFFER_BYTES);
        let conn = MemoryConn { stream: server, addr: SocketAddr::new(ip, port) };
        self.tx.try_send(conn).map_err(|e| {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the coordinator's in-memory backlog is full",
                mpsc::error::TrySendError::Closed(_) => "the coordinator has stopped",
            };
            io::Error::new(io::ErrorKind::ConnectionRefused, why)
        })?;
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use futures_util::{SinkExt, StreamExt};
    use p2c2r_net::{ConnectError, ConnectOptions, Credential};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    fn through(dialer: Dialer) -> ConnectOptions {
        ConnectOptions { dialer: Some(dialer), ..ConnectOptions::default() }
    }

    #[tokio::test]
    async fn in_memory_connections_count_against_the_per_address_cap() {
        let config = Config {
            connections: crate::config::Connections { max_connections_per_address: 2, ..Default::default() },
            ..Config::default()
        };
        let coordinator = crate::spawn_in_memory(config).await.unwrap();
        assert!(!coordinator.has_listener());
        let url = coordinator.url();
        assert_eq!(url, "ws://127.0.0.1:0");
        let local = through(coordinator.dialer());
        let _first = p2c2r_net::connect(&url, &local).await.expect("the first connection from 127.0.0.1");
        let _second = p2c2r_net::connect(&url, &local).await.expect("the second connection from 127.0.0.1");
        // Dropped before the handshake, as over TCP: the client sees its stream closed.
        let refused = p2c2r_net::connect(&url, &local).await.expect_err("a third from 127.0.0.1 is over the cap");
        assert!(matches!(refused, ConnectError::Io(_)), "{refused:?}");
        let elsewhere = through(coordinator.dialer_from("10.1.2.3".parse().unwrap()));
        let _other = p2c2r_net::connect(&url, &elsewhere).await.expect("another address has room");
        let counts = coordinator.admission();
        assert_eq!((counts.connections, counts.addresses), (3, 2));
        assert!(coordinator.metrics_text().contains(r#"reason="per_address"} 1"#), "{}", coordinator.metrics_text());
        let dialer = coordinator.dialer();
        coordinator.shutdown().await;
        assert_eq!(dialer.dial().unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn in_memory_attempts_over_the_rate_are_answered_429() {
        // One a second, bursts of four.
        let config = Config {
            rate_limits: crate::config::RateLimits {
                max_connection_attempts_per_second: Some(1),
                ..Default::default()
            },
            ..Config::default()
        };
        let coordinator = crate::spawn_in_memory(config).await.unwrap();
        let dialer = coordinator.dialer();
        let mut attempts: Vec<DuplexStream> = (0..8).map(|_| dialer.dial().unwrap()).collect();
        let mut last = attempts.pop().unwrap();
        let mut answer = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(&mut last, &mut answer);
        tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("closed at once").unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 429 "), "{}", String::from_utf8_lossy(&answer));
        coordinator.shutdown().await;
    }

    #[tokio::test]
    async fn in_memory_connections_need_a_credential_when_credentials_are_on() {
        let dir = std::env::temp_dir().join(format!("p2c2r-memory-auth-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("auth");
        std::fs::write(&file, "token peer rack-1 rack-1-secret-0123456789\n").unwrap();
        let config = Config {
            identity: crate::config::Identity { auth_file: Some(file), ..Default::default() },
            ..Config::default()
        };
        let coordinator = crate::spawn_in_memory(config).await.unwrap();
        let url = coordinator.url();
        let anonymous = p2c2r_net::connect(&url, &through(coordinator.dialer())).await.unwrap_err();
        assert_eq!(anonymous.status(), Some(401), "{anonymous:?}");
        let with_token = ConnectOptions {
            token: Some(Credential::token("rack-1-secret-0123456789")),
            ..through(coordinator.dialer())
        };
        p2c2r_net::connect(&url, &with_token).await.expect("the listed secret is accepted");
        coordinator.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn in_memory_connections_get_tls_when_it_is_configured() {
        let dir = p2c2r_testkit::tls::self_signed_dir("p2c2r-memory-tls");
        let tls = crate::TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        let coordinator = crate::spawn_in_memory(Config {
            identity: crate::config::Identity { tls: Some(tls), ..Default::default() },
            ..Config::default()
        })
        .await
        .unwrap();
        let url = coordinator.url();
        assert_eq!(url, "wss://127.0.0.1:0");
        let trusting = ConnectOptions { ca_file: Some(dir.join("cert.pem")), ..through(coordinator.dialer()) };
        p2c2r_net::connect(&url, &trusting).await.expect("TLS over the in-memory stream");
        // Clear text where TLS is expected is no WebSocket.
        let plain = url.replacen("wss://", "ws://", 1);
        assert!(p2c2r_net::connect(&plain, &through(coordinator.dialer())).await.is_err());
        coordinator.shutdown().await;
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_closes_an_in_memory_connection() {
        let config = Config {
            connections: crate::config::Connections { max_frame_bytes: 1024, ..Default::default() },
            ..Config::default()
        };
        let coordinator = crate::spawn_in_memory(config).await.unwrap();
        let mut ws = p2c2r_net::connect(&coordinator.url(), &through(coordinator.dialer())).await.unwrap();
        ws.send(Message::text("x".repeat(2048))).await.unwrap();
        let mut told = false;
        let close = loop {
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await;
            match next.expect("an answer within 10 s") {
                Some(Ok(Message::Text(text))) => told |= text.contains("frame_too_large"),
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("closed without a close frame: {other:?}"),
            }
        };
        assert!(told, "the client is told why");
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
        coordinator.shutdown().await;
    }

    #[test]
    fn a_full_backlog_or_a_stopped_coordinator_refuses_the_dial() {
        let (backlog, rx) = backlog();
        let dialer = backlog.dialer(MEMORY_ADDRESS, "ws://127.0.0.1:0");
        let open: Vec<_> = (0..MEMORY_BACKLOG).map(|_| dialer.dial().expect("room in the backlog")).collect();
        assert_eq!(dialer.dial().unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        drop(rx);
        assert_eq!(dialer.dial().unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        drop(open);
    }
}
