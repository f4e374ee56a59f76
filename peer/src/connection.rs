//! The peer's life on the network: connect, register, serve, and reconnect with backoff.
//!
//! One connection at a time. While connected, a single loop reads frames (tungstenite
//! answers pings as it reads), writes finished results, and sends a heartbeat every
//! `heartbeat_interval`; tasks themselves run in the [`Pool`], never on this loop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use p2c2r_protocol::binary::Frame;
use p2c2r_protocol::{Capabilities, Encoding, ErrorCode, Heartbeat, Message, RegisterPeer, codec};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig};
use tokio_util::sync::CancellationToken;

use crate::pool::{Job, Pool, Reply};
use crate::session::SessionStore;
use crate::{PeerConfig, PeerStatus};
use p2c2r_net::Backoff;
use p2c2r_protocol::chunk::{self, Interleave, Next, Reassembler};
use p2c2r_protocol::pacing::{self, Pacer};

type Ws = p2c2r_net::WsStream;

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
///
/// The `resume_secret` of the latest `registration_ack` is kept (in memory, and in the
/// state file when one is configured: [`crate::state`]) and presented by the next
/// registration, so that after a reconnection, or a restart, this peer takes its id back
/// even while the coordinator still holds (or reserves) it for the old connection.
pub(crate) async fn run(peer: Peer, cancel: CancellationToken) {
    let mut backoff = Backoff::new(peer.config.reconnect_backoff_min, peer.config.reconnect_backoff_max);
    let sweep = sweep_idle_sessions(&peer.store);
    let state_file = peer.config.state_file.clone();
    let mut resume_secret: Option<String> =
        state_file.as_deref().and_then(|path| crate::state::load(path, &peer.peer_id));
    // Which of the coordinator and its fallbacks the next attempt goes to: the next one
    // after each failed attempt or lost connection.
    let urls: Vec<&str> = std::iter::once(peer.config.coordinator_url.as_str())
        .chain(peer.config.fallback_coordinators.iter().map(String::as_str))
        .collect();
    let mut next_url = 0usize;
    let connections = async {
        while !cancel.is_cancelled() {
            let url = urls[next_url % urls.len()];
            let attempt = tokio::select! {
                r = connect_and_register(&peer, url, resume_secret.as_deref()) => r,
                () = cancel.cancelled() => break,
            };
            let mut refused = false;
            match attempt {
                Ok(Registered { ws, encoding, max_frame_bytes, resume_secret: secret, chunked }) => {
                    backoff.reset();
                    if let (Some(path), Some(secret)) = (&state_file, &secret)
                        && resume_secret.as_ref() != Some(secret)
                        && let Err(e) = crate::state::save(path, &peer.peer_id, secret)
                    {
                        tracing::warn!(path = %path.display(), "cannot keep the resume secret in the state file: {e}");
                    }
                    resume_secret = secret;
                    tracing::info!(peer_id = %peer.peer_id, url, "registered");
                    peer.status.send_modify(|s| {
                        s.connected = true;
                        s.registrations += 1;
                    });
                    let reason = serve(&peer, ws, encoding, max_frame_bytes, chunked, &cancel).await;
                    peer.status.send_modify(|s| s.connected = false);
                    if cancel.is_cancelled() {
                        break;
                    }
                    tracing::warn!(peer_id = %peer.peer_id, "disconnected from the coordinator: {reason}");
                    next_url = next_url.wrapping_add(1);
                }
                Err(e) => {
                    refused = e.is_refusal();
                    if refused {
                        peer.status.send_modify(|s| s.refusals += 1);
                    }
                    log_failure(&peer, &e);
                    next_url = next_url.wrapping_add(1);
                }
            }
            let mut delay = backoff.next_delay();
            if refused {
                // Refused credentials and ids in use are not fixed in milliseconds.
                delay = delay.max(MIN_REFUSED_DELAY.min(peer.config.reconnect_backoff_max));
            }
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

/// The shortest pause after the coordinator refused this peer's credential or id
/// (unless `reconnect_backoff_max` is shorter).
const MIN_REFUSED_DELAY: Duration = Duration::from_secs(1);

/// Logs a failed connection attempt; refusals say what to fix.
fn log_failure(peer: &Peer, e: &ConnectError) {
    let (peer_id, url) = (&peer.peer_id, &peer.config.coordinator_url);
    match e {
        ConnectError::Connect(net) if net.is_auth_refusal() => tracing::warn!(
            %peer_id, %url, status = net.status(),
            "the coordinator refused this peer's credential ({net}); check --token / --token-file (a token file \
             is read again on every attempt); retrying with backoff"
        ),
        ConnectError::Connect(net) if net.is_config_problem() => {
            tracing::warn!(%peer_id, %url, "cannot connect: {net}; retrying with backoff")
        }
        ConnectError::Refused { code: ErrorCode::IdInUse, message } => tracing::warn!(
            %peer_id, %url,
            "the peer id is in use by another connection, and this peer could not prove it is the same client (no \
             resume secret, or a stale one): {message}; retrying later"
        ),
        ConnectError::Refused { code: ErrorCode::Unauthorized, message } => tracing::warn!(
            %peer_id, %url,
            "the coordinator does not allow this registration with this credential ({message}); check the token and \
             --peer-id; retrying with backoff"
        ),
        _ => tracing::warn!(%peer_id, %url, "cannot register: {e}"),
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
    Connect(#[from] p2c2r_net::ConnectError),
    #[error("{0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the coordinator refused the registration: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the connection closed during registration")]
    Closed,
}

impl ConnectError {
    /// Whether the coordinator refused this peer's credential or id (as opposed to a
    /// network failure).
    fn is_refusal(&self) -> bool {
        match self {
            ConnectError::Connect(e) => e.is_auth_refusal(),
            ConnectError::Refused { code, .. } => matches!(code, ErrorCode::IdInUse | ErrorCode::Unauthorized),
            _ => false,
        }
    }
}

/// A registered connection.
struct Registered {
    ws: Ws,
    /// What the coordinator agreed to when connecting.
    encoding: Encoding,
    /// The largest frame the coordinator accepts (its `registration_ack`'s
    /// `max_frame_bytes`, the protocol default without one).
    max_frame_bytes: usize,
    /// The ack's `resume_secret`, to present at the next registration.
    resume_secret: Option<String>,
    /// The coordinator takes this peer's large frames in chunks.
    chunked: bool,
}

/// The connection options of this peer's configuration.
fn connect_options(config: &PeerConfig) -> p2c2r_net::ConnectOptions {
    p2c2r_net::ConnectOptions {
        token: config.token.clone(),
        ca_file: config.ca_file.clone(),
        ws_config: Some(
            WebSocketConfig::default()
                .max_message_size(Some(config.max_frame_bytes))
                .max_frame_size(Some(config.max_frame_bytes)),
        ),
        timeout: config.connect_timeout,
        encoding: config.wire,
        dialer: config.dialer.clone(),
    }
}

/// Connects and registers, presenting `resume_secret` when there is one.
async fn connect_and_register(peer: &Peer, url: &str, resume_secret: Option<&str>) -> Result<Registered, ConnectError> {
    let limit = peer.config.connect_timeout;
    tokio::time::timeout(limit, async {
        let (mut ws, encoding) = p2c2r_net::connect_negotiated(url, &connect_options(&peer.config)).await?;
        let register = Message::RegisterPeer(RegisterPeer {
            peer_id: peer.peer_id.clone(),
            capabilities: peer.capabilities.clone(),
            resume_secret: resume_secret.map(str::to_owned),
        });
        ws.send(tungstenite::Message::text(codec::encode(&register))).await?;
        loop {
            match ws.next().await {
                None => return Err(ConnectError::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(tungstenite::Message::Text(text))) => match codec::decode(text.as_str()) {
                    Ok(Message::RegistrationAck(ack)) => {
                        let max_frame_bytes =
                            ack.max_frame_bytes.unwrap_or(p2c2r_protocol::limits::DEFAULT_MAX_FRAME_BYTES);
                        let chunked = ack.chunked_frames && encoding == Encoding::Binary;
                        return Ok(Registered {
                            ws,
                            encoding,
                            max_frame_bytes,
                            resume_secret: ack.resume_secret,
                            chunked,
                        });
                    }
                    Ok(Message::Error(e)) => return Err(ConnectError::Refused { code: e.code, message: e.message }),
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
/// instead (see [`crate::pool`]). Where the coordinator takes chunked frames
/// (`chunked`, from its `registration_ack`), a large result goes in chunks between the
/// other frames, so it holds up the other sessions' results by one chunk, not by itself.
async fn serve(
    peer: &Peer,
    mut ws: Ws,
    encoding: Encoding,
    max_frame_bytes: usize,
    chunked: bool,
    cancel: &CancellationToken,
) -> String {
    let (results_tx, mut results_rx) = mpsc::channel::<Reply>(RESULT_BUFFER);
    let handler = Handler { peer, results: &results_tx, encoding, max_frame_bytes };
    let mut out = Outgoing { kept: Interleave::default(), chunked, pacer: Pacer::default() };
    // The coordinator chunks its large frames only on a binary connection that asked; each
    // chunk taken is acknowledged at once, so that its sender can pace them.
    let mut chunks = Reassembler::new(max_frame_bytes);
    let (mut chunk_bytes_taken, acks_origin) = (0u64, std::time::Instant::now());
    let period = peer.config.heartbeat_interval.max(Duration::from_millis(10));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let heartbeat_frame =
        codec::encode(&Message::Heartbeat(Heartbeat { peer_id: Some(peer.peer_id.clone()), gamer_id: None }));
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                drain_and_close(peer, ws, results_rx, out).await;
                return "shutting down".into();
            }
            Some(reply) = results_rx.recv() => {
                if let Err(e) = out.send(&mut ws, reply).await {
                    return format!("write failed: {e}");
                }
            }
            _ = heartbeat.tick() => {
                if let Err(e) = ws.send(tungstenite::Message::text(heartbeat_frame.clone())).await {
                    return format!("heartbeat failed: {e}");
                }
            }
            frame = ws.next() => {
                let decoded = match frame {
                    None => return "the coordinator closed the connection".into(),
                    Some(Err(e)) => return format!("read failed: {e}"),
                    Some(Ok(tungstenite::Message::Text(text))) => {
                        Some(codec::decode(text.as_str()).map_err(|e| e.to_string()))
                    }
                    Some(Ok(tungstenite::Message::Binary(bytes)))
                        if encoding == Encoding::Binary && chunk::is_chunk(&bytes) =>
                    {
                        let now = std::time::Instant::now();
                        let pushed = chunks.push(&bytes, now);
                        if pushed.is_ok() {
                            chunk_bytes_taken += bytes.len() as u64;
                            let taken_at_us = pacing::micros_since(acks_origin, now);
                            let ack = pacing::Ack { received: chunk_bytes_taken, taken_at_us };
                            let ack = tungstenite::Message::binary(pacing::ack_frame(ack));
                            if let Err(e) = ws.send(ack).await {
                                return format!("write failed: {e}");
                            }
                        }
                        match pushed {
                            Ok(None) => None,
                            Ok(Some(Frame::Text(text))) => Some(codec::decode(&text).map_err(|e| e.to_string())),
                            Ok(Some(Frame::Binary(whole))) if !chunk::is_chunk(&whole) => {
                                Some(p2c2r_protocol::binary::decode(whole.into()).map_err(|e| e.to_string()))
                            }
                            Ok(Some(Frame::Binary(_))) => return "a chunked frame from the coordinator holds a chunk".into(),
                            Err(e) => return format!("bad chunk from the coordinator: {e}"),
                        }
                    }
                    Some(Ok(tungstenite::Message::Binary(bytes)))
                        if encoding == Encoding::Binary && pacing::is_ack(&bytes) =>
                    {
                        match pacing::parse_ack(&bytes) {
                            Ok(ack) => out.pacer.acked(ack, std::time::Instant::now()),
                            Err(e) => return format!("bad chunk acknowledgement from the coordinator: {e}"),
                        }
                        None
                    }
                    Some(Ok(tungstenite::Message::Binary(bytes))) if encoding == Encoding::Binary => {
                        Some(p2c2r_protocol::binary::decode(bytes).map_err(|e| e.to_string()))
                    }
                    Some(Ok(tungstenite::Message::Binary(_))) => {
                        tracing::debug!("ignored a binary frame on a JSON connection");
                        None
                    }
                    // Pings are answered by tungstenite; a close is answered too, and the
                    // stream then ends.
                    Some(Ok(_)) => None,
                };
                if let Some(reply) = decoded.and_then(|d| handler.message(d))
                    && let Err(e) = out.send(&mut ws, reply).await
                {
                    return format!("write failed: {e}");
                }
                // Reads never starve writes: a frame read, a kept chunk written (when the
                // coordinator streams chunks, this branch is always ready).
                if let Err(e) = out.write_next(&mut ws).await {
                    return format!("write failed: {e}");
                }
            }
            // Last: the next chunk of a large result, when nothing else is ready and the
            // coordinator's acknowledgements let it go.
            () = std::future::ready(()), if out.may_write() => {
                if let Err(e) = out.write_next(&mut ws).await {
                    return format!("write failed: {e}");
                }
            }
        }
    }
}

/// What this peer sends: at once, or (large results, and a session's results behind
/// one) in chunks between the rest, paced by the coordinator's acknowledgements.
struct Outgoing {
    kept: Interleave<(String, String)>,
    chunked: bool,
    pacer: Pacer,
}

impl Outgoing {
    /// Sends a reply now, or keeps it to go in chunks.
    async fn send(&mut self, ws: &mut Ws, reply: Reply) -> Result<(), tungstenite::Error> {
        let frame = if self.chunked {
            match self.kept.offer(reply.lane, reply.frame, 0) {
                Some(frame) => frame,
                None => return Ok(()),
            }
        } else {
            reply.frame
        };
        ws.send(ws_message(frame)).await
    }

    /// Sends the next chunk (or the next frame that waited behind one) if the pacing
    /// allows; `false` when nothing went.
    async fn write_next(&mut self, ws: &mut Ws) -> Result<bool, tungstenite::Error> {
        if !self.may_write() {
            return Ok(false);
        }
        self.write_next_unpaced(ws).await
    }

    /// Sends the next chunk or kept frame whatever the pacing says (the connection is
    /// closing); `false` when nothing is kept.
    async fn write_next_unpaced(&mut self, ws: &mut Ws) -> Result<bool, tungstenite::Error> {
        let Some((next, _)) = self.kept.next_to_write() else { return Ok(false) };
        let message = match next {
            Next::Chunk(chunk) => {
                self.pacer.sent(chunk.len(), std::time::Instant::now());
                tungstenite::Message::binary(chunk)
            }
            Next::Frame(frame) => ws_message(frame),
        };
        ws.send(message).await.map(|()| true)
    }

    /// Whether something kept may go now.
    fn may_write(&mut self) -> bool {
        !self.kept.is_empty() && self.pacer.may_send()
    }

    fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

/// The WebSocket message carrying `frame`.
fn ws_message(frame: Frame) -> tungstenite::Message {
    match frame {
        Frame::Text(text) => tungstenite::Message::text(text),
        Frame::Binary(bytes) => tungstenite::Message::binary(bytes),
    }
}

/// What one connection's frames are handled with.
struct Handler<'a> {
    peer: &'a Peer,
    results: &'a mpsc::Sender<Reply>,
    encoding: Encoding,
    max_frame_bytes: usize,
}

impl Handler<'_> {
    /// Handles one decoded frame; returns a reply to send at once (a rejection), if any.
    fn message(&self, decoded: Result<Message, String>) -> Option<Reply> {
        let peer = self.peer;
        match decoded {
            Ok(Message::TaskAssignment(mut assignment)) => {
                // A binary payload is a slice of the read buffer; queued, it would keep
                // that whole buffer alive (a few bytes of task could hold megabytes).
                assignment.task_data.task_data = std::mem::take(&mut assignment.task_data.task_data).detached();
                tracing::debug!(
                    task_id = %assignment.task_id,
                    attempt = assignment.attempt,
                    task_type = %assignment.task_data.task_type,
                    session_id = ?assignment.task_data.session_id,
                    "task assigned"
                );
                let lane = Reply::lane_of(&assignment);
                let job = Job::new(assignment, self.results.clone())
                    .with_encoding(self.encoding)
                    .with_max_frame_bytes(self.max_frame_bytes);
                peer.pool.submit(job).err().map(|frame| Reply { frame, lane })
            }
            Ok(Message::Error(e)) if e.code == ErrorCode::Replaced => {
                tracing::warn!(peer_id = %peer.peer_id, "another connection took this peer id over: {}", e.message);
                None
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
}

/// Graceful end: let running tasks finish (up to the grace period), send their results,
/// then close the WebSocket properly.
async fn drain_and_close(peer: &Peer, mut ws: Ws, mut results: mpsc::Receiver<Reply>, mut out: Outgoing) {
    let deadline = tokio::time::sleep(peer.config.shutdown_grace);
    tokio::pin!(deadline);
    let idle = peer.pool.wait_idle();
    tokio::pin!(idle);
    let mut finished = false;
    while !finished {
        tokio::select! {
            biased;
            Some(reply) = results.recv() => {
                if out.send(&mut ws, reply).await.is_err() {
                    return;
                }
            }
            () = &mut idle => finished = true,
            () = &mut deadline => {
                tracing::warn!(pending = peer.pool.pending(), "shutdown grace period over; abandoning running tasks");
                finished = true;
            }
            () = std::future::ready(()), if !out.is_empty() => {
                if out.write_next_unpaced(&mut ws).await.is_err() {
                    return;
                }
            }
        }
    }
    while let Ok(reply) = results.try_recv() {
        if out.send(&mut ws, reply).await.is_err() {
            return;
        }
    }
    while let Ok(true) = out.write_next_unpaced(&mut ws).await {}
    let _ = ws.close(None).await;
    // Wait briefly for the coordinator's close reply so the handshake completes.
    let _ = tokio::time::timeout(Duration::from_millis(500), async { while ws.next().await.is_some() {} }).await;
}
