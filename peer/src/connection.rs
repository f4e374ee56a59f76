//! The peer's life on the network: connect, register, serve, and reconnect with backoff.
//!
//! One connection at a time. While connected, a single loop reads frames (tungstenite
//! answers pings as it reads), writes finished results, and sends a heartbeat every
//! `heartbeat_interval`; tasks themselves run in the [`Pool`], never on this loop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use p2c2r_protocol::{Capabilities, Heartbeat, Message, RegisterPeer, codec};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::pool::{Job, Pool};
use crate::session::SessionStore;
use crate::{PeerConfig, PeerStatus};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Results waiting to be written, per connection.
const RESULT_BUFFER: usize = 256;

/// Everything one peer process shares across its connections.
pub(crate) struct Peer {
    pub config: PeerConfig,
    pub peer_id: String,
    pub capabilities: Capabilities,
    pub store: Arc<SessionStore>,
    pub pool: Pool,
    pub status: Arc<watch::Sender<PeerStatus>>,
    /// The worker processes, with [`crate::Isolation::Workers`]; dropping them kills them.
    pub workers: Option<Arc<crate::worker::Workers>>,
}

/// Connects, serves and reconnects until `cancel` fires.
pub(crate) async fn run(peer: Peer, cancel: CancellationToken) {
    let mut backoff = Backoff::new(peer.config.reconnect_backoff_min, peer.config.reconnect_backoff_max);
    let sweep = sweep_idle_sessions(&peer.store);
    let connections = async {
        while !cancel.is_cancelled() {
            let attempt = tokio::select! {
                r = connect_and_register(&peer) => r,
                () = cancel.cancelled() => break,
            };
            match attempt {
                Ok((ws, max_frame_bytes)) => {
                    backoff.reset();
                    tracing::info!(peer_id = %peer.peer_id, url = %peer.config.coordinator_url, "registered");
                    peer.status.send_modify(|s| {
                        s.connected = true;
                        s.registrations += 1;
                    });
                    let reason = serve(&peer, ws, max_frame_bytes, &cancel).await;
                    peer.status.send_modify(|s| s.connected = false);
                    if cancel.is_cancelled() {
                        break;
                    }
                    tracing::warn!(peer_id = %peer.peer_id, "disconnected from the coordinator: {reason}");
                }
                Err(e) => {
                    tracing::warn!(peer_id = %peer.peer_id, url = %peer.config.coordinator_url, "cannot register: {e}")
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(?delay, "reconnecting after a pause");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => break,
            }
        }
    };
    tokio::select! {
        () = connections => {}
        () = sweep => {}
    }
}

/// Drops idle sessions every so often; never ends (it is dropped with the peer).
async fn sweep_idle_sessions(store: &SessionStore) {
    let period = (store.idle_timeout() / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dropped = store.evict_idle();
        if dropped > 0 {
            tracing::info!(dropped, "dropped idle sessions");
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the coordinator refused the registration: {0}")]
    Refused(String),
    #[error("the connection closed during registration")]
    Closed,
}

/// Connects and registers; returns the socket and the largest frame the coordinator
/// accepts (its `registration_ack`'s `max_frame_bytes`, the protocol default without one).
async fn connect_and_register(peer: &Peer) -> Result<(Ws, usize), ConnectError> {
    let limit = peer.config.connect_timeout;
    tokio::time::timeout(limit, async {
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(peer.config.max_frame_bytes))
            .max_frame_size(Some(peer.config.max_frame_bytes));
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(peer.config.coordinator_url.as_str(), Some(ws_config), true)
                .await?;
        let register = Message::RegisterPeer(RegisterPeer {
            peer_id: peer.peer_id.clone(),
            capabilities: peer.capabilities.clone(),
        });
        ws.send(tungstenite::Message::text(codec::encode(&register))).await?;
        loop {
            match ws.next().await {
                None => return Err(ConnectError::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(tungstenite::Message::Text(text))) => match codec::decode(text.as_str()) {
                    Ok(Message::RegistrationAck(ack)) => {
                        let max = ack.max_frame_bytes.unwrap_or(p2c2r_protocol::limits::DEFAULT_MAX_FRAME_BYTES);
                        return Ok((ws, max));
                    }
                    Ok(Message::Error(e)) => return Err(ConnectError::Refused(format!("{}: {}", e.code, e.message))),
                    Ok(other) => tracing::debug!(msg_type = other.msg_type(), "ignored before registration"),
                    Err(e) => tracing::debug!("undecodable frame before registration: {e}"),
                },
                Some(Ok(tungstenite::Message::Close(_))) => return Err(ConnectError::Closed),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(Err(ConnectError::Timeout(limit)))
}

/// Serves one registered connection until it fails or `cancel` fires; returns why it ended.
///
/// Results whose frame would exceed `max_frame_bytes` are answered with `limit_exceeded`
/// instead (see [`crate::pool`]).
async fn serve(peer: &Peer, mut ws: Ws, max_frame_bytes: usize, cancel: &CancellationToken) -> String {
    let (results_tx, mut results_rx) = mpsc::channel::<String>(RESULT_BUFFER);
    let period = peer.config.heartbeat_interval.max(Duration::from_millis(10));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let heartbeat_frame =
        codec::encode(&Message::Heartbeat(Heartbeat { peer_id: Some(peer.peer_id.clone()), gamer_id: None }));
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                drain_and_close(peer, ws, results_rx).await;
                return "shutting down".into();
            }
            Some(frame) = results_rx.recv() => {
                if let Err(e) = ws.send(tungstenite::Message::text(frame)).await {
                    return format!("write failed: {e}");
                }
            }
            _ = heartbeat.tick() => {
                if let Err(e) = ws.send(tungstenite::Message::text(heartbeat_frame.clone())).await {
                    return format!("heartbeat failed: {e}");
                }
            }
            frame = ws.next() => match frame {
                None => return "the coordinator closed the connection".into(),
                Some(Err(e)) => return format!("read failed: {e}"),
                Some(Ok(tungstenite::Message::Text(text))) => {
                    if let Some(frame) = handle_frame(peer, text.as_str(), &results_tx, max_frame_bytes)
                        && let Err(e) = ws.send(tungstenite::Message::text(frame)).await
                    {
                        return format!("write failed: {e}");
                    }
                }
                Some(Ok(tungstenite::Message::Binary(_))) => tracing::debug!("ignored a binary frame"),
                // Pings are answered by tungstenite; a close is answered too, and the
                // stream then ends.
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Handles one text frame; returns a frame to send at once (a rejection), if any.
fn handle_frame(peer: &Peer, text: &str, results: &mpsc::Sender<String>, max_frame_bytes: usize) -> Option<String> {
    match codec::decode(text) {
        Ok(Message::TaskAssignment(assignment)) => {
            tracing::debug!(
                task_id = %assignment.task_id,
                attempt = assignment.attempt,
                task_type = %assignment.task_data.task_type,
                session_id = ?assignment.task_data.session_id,
                "task assigned"
            );
            peer.pool.submit(Job::new(assignment, results.clone()).with_max_frame_bytes(max_frame_bytes)).err()
        }
        Ok(Message::Error(e)) => {
            tracing::debug!(code = %e.code, refers_to = ?e.refers_to, "coordinator error: {}", e.message);
            None
        }
        Ok(Message::RegistrationAck(_)) => None,
        Ok(other) => {
            tracing::debug!(msg_type = other.msg_type(), "ignored a message not meant for peers");
            None
        }
        Err(e) => {
            tracing::debug!("undecodable frame from the coordinator: {e}");
            None
        }
    }
}

/// Graceful end: let running tasks finish (up to the grace period), send their results,
/// then close the WebSocket properly.
async fn drain_and_close(peer: &Peer, mut ws: Ws, mut results: mpsc::Receiver<String>) {
    let deadline = tokio::time::sleep(peer.config.shutdown_grace);
    tokio::pin!(deadline);
    let idle = peer.pool.wait_idle();
    tokio::pin!(idle);
    let mut finished = false;
    while !finished {
        tokio::select! {
            Some(frame) = results.recv() => {
                if ws.send(tungstenite::Message::text(frame)).await.is_err() {
                    return;
                }
            }
            () = &mut idle => finished = true,
            () = &mut deadline => {
                tracing::warn!(pending = peer.pool.pending(), "shutdown grace period over; abandoning running tasks");
                finished = true;
            }
        }
    }
    while let Ok(frame) = results.try_recv() {
        if ws.send(tungstenite::Message::text(frame)).await.is_err() {
            return;
        }
    }
    let _ = ws.close(None).await;
    // Wait briefly for the coordinator's close reply so the handshake completes.
    let _ = tokio::time::timeout(Duration::from_millis(500), async { while ws.next().await.is_some() {} }).await;
}
