//! One WebSocket connection: handshake, framing, liveness, and the bounded writer.
//!
//! The reader loop hands text frames to the [`Router`]; a separate writer task drains the
//! connection's bounded outbound queue into the socket, so a slow client never blocks
//! anyone else. Liveness is local to the connection: it pings every heartbeat interval
//! and any inbound frame (message, heartbeat, pong) counts as a sign of life.
//!
//! Limits enforced here, each bounding what one hostile client can cost:
//!
//! - **Frame size** (`max_frame_bytes`): tungstenite refuses a larger frame or message;
//!   the client gets `frame_too_large` and close 1009.
//! - **Handshake and registration time** (`handshake_timeout`, `register_timeout`).
//! - **Liveness** (`heartbeat_timeout`): a connection silent that long is evicted, but only
//!   after whatever it has already sent is read. The reader loop prefers reading to its
//!   timers (`biased` select), and before evicting it drains every frame that is readable
//!   without waiting, so a stall of the coordinator's own runtime does not evict clients
//!   whose heartbeats sit unread in their sockets.
//! - **Write stalls** (`write_stall_timeout`): a write that moves no bytes into the socket
//!   for that long (the client has stopped reading and the kernel buffers are full)
//!   disconnects the client. Memory towards one client is bounded by the outbound queue
//!   (`send_queue_bytes`, see [`crate::outbound`]) plus the frame being written:
//!   tungstenite's write buffer is capped by [`ws_config`] at one largest frame plus
//!   2 × [`WRITE_BUFFER_BYTES`].
//! - **Message assembly time** (`message_assembly_timeout`): a data message whose first
//!   frame arrived that long ago and which is still unfinished (fragments dribbled in,
//!   or a large frame's payload sent slowly, with pongs keeping the connection "alive")
//!   closes the connection with `frame_too_large` and close 1008, freeing the up to
//!   `max_frame_bytes` tungstenite was holding for it. See [`crate::observe`].
//! - **Memory for unfinished messages, all connections together**
//!   ([`inbound_budget_bytes`]): a frame header that would take the bytes pinned by
//!   unfinished inbound messages past the cap fails the read before tungstenite reserves
//!   anything; that client gets `frame_too_large` and close 1013 (try again later).
//! - **Registration** is reported to the connection's admission [`Ticket`], so that it
//!   stops counting against `max_unregistered_connections` (see [`crate::admission`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::admission::Ticket;
use crate::auth::Credential;
use crate::observe::{InboundBudget, ObservedStream, StreamWatch};
use crate::outbound::{self, Frame, Outbound, OutboundTx};
use crate::router::{CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, ConnHandle, ConnId, ConnInfo, Departure, Router};
use crate::tls::Transport;
use crate::writer::ChunkFlowTx;
use crate::{Config, Shared};
use crate::{info_limited, warn_limited};
use p2c2r_ops::http::Rewind;
use p2c2r_protocol::chunk::{self, Reassembler};
use p2c2r_protocol::pacing;
use p2c2r_protocol::{Encoding, ErrorCode, binary};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// tungstenite's write buffer target: frames are written once this much is buffered, or
/// at every flush (the writer flushes after each frame).
pub const WRITE_BUFFER_BYTES: usize = 128 * 1024;

/// tungstenite's read buffer: allocated (and zero-filled on the first read) for every
/// connection, idle or not, and the most read from the socket in one call. tungstenite's
/// default of 128 KiB made it most of an idle connection's cost; a large frame still gets
/// a buffer of its own size, read in pieces of this size.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// How many largest frames all connections' unfinished inbound messages may pin at once.
pub const INBOUND_BUDGET_FRAMES: usize = 64;

/// WebSocket close code for "try again later" (a server-wide limit, not this client's
/// fault).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// The bytes all connections' unfinished inbound messages may pin together:
/// [`INBOUND_BUDGET_FRAMES`] × `max_frame_bytes` (1 GiB by default). Without it, every
/// admitted connection could pin a largest frame's worth at once.
pub fn inbound_budget_bytes(config: &Config) -> usize {
    config.connections.max_frame_bytes.saturating_mul(INBOUND_BUDGET_FRAMES)
}

/// Frames handled, at most, when draining what is readable before an eviction.
const DRAIN_MAX_FRAMES: usize = 4096;

/// Registrations one connection may have claimed across the fleet (when federated): a
/// client needs one, or a few after `id_in_use`; each costs the fleet key-value
/// operations, so a connection past this is closed.
pub const MAX_FLEET_CLAIMS: u32 = 4;

type Ws = WebSocketStream<ObservedStream<Rewind<Transport>>>;
pub(crate) type Sink = SplitSink<Ws, WsMessage>;
type Frames = SplitStream<Ws>;

/// The WebSocket settings that enforce the frame limit and bound the buffers.
pub fn ws_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(config.connections.max_frame_bytes))
        .max_frame_size(Some(config.connections.max_frame_bytes))
        // Room for one largest frame (plus its envelope) on top of the normal write
        // buffer, and no more, for a client that does not read (tungstenite requires it
        // to exceed write_buffer_size). The writer sends one frame at a time and flushes
        // it, so this never refuses a frame it is asked to send.
        .max_write_buffer_size(config.connections.max_frame_bytes.saturating_add(WRITE_BUFFER_BYTES * 2))
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
}

/// Serves one accepted connection, TCP or in memory (its upgrade request already read by
/// [`crate::http`] and replayed by `stream`) until it closes, is evicted, or `shutdown`
/// fires. `ticket` is its place in the admission counts, released when this returns.
pub async fn serve(
    shared: Arc<Shared>,
    stream: Rewind<Transport>,
    head_len: usize,
    addr: SocketAddr,
    credential: Option<Credential>,
    mut ticket: Ticket,
    shutdown: CancellationToken,
) {
    let (router, config) = (&shared.router, &shared.config);
    // Frames start right after the head its parser measured (not where a `\r\n\r\n`
    // happens to be: see `FrameObserver::after_head`).
    let stream =
        ObservedStream::with_budget(stream, shared.inbound.clone()).counting(shared.bytes.clone()).after_head(head_len);
    let watch = stream.watch();
    // The client offers subprotocols; binary frames are used when it offers ours and we
    // name it in the answer (RFC 6455 §4.2.2). Otherwise the connection is JSON only.
    let mut encoding = Encoding::Json;
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let negotiate = |request: &Request, mut response: Response| {
        encoding = p2c2r_net::accept_encoding(request, &mut response);
        Ok(response)
    };
    let ws = match timeout(
        config.connections.handshake_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(ws_config(config))),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            debug!("websocket handshake timed out");
            return;
        }
    };
    let (sink, mut frames) = ws.split();
    let (tx, rx) = outbound::channel(config.connections.send_queue_frames, config.connections.send_queue_bytes);
    let kill = CancellationToken::new();
    // Chunked frames are possible only on a binary connection, and on only once a peer asks.
    let chunked = (encoding == Encoding::Binary).then(|| Arc::new(AtomicBool::new(false)));
    let (flow, chunking) = chunked.clone().map(crate::writer::chunk_flow).unzip();
    // Kept for the fleet's claims: a credential for an id proves ownership of it.
    let identity = credential.as_ref().map(|c| c.identity.clone());
    let conn = router.connect(
        ConnHandle { tx: tx.clone(), kill: kill.clone(), chunked: chunked.clone() },
        Some(ConnInfo { addr, watch: watch.clone(), credential }),
    );
    debug!(conn, encoding = encoding.as_str(), "connection open");

    let writer = tokio::spawn(crate::writer::write_loop(
        conn,
        sink,
        rx,
        encoding,
        kill.clone(),
        watch.clone(),
        config.connections.write_stall_timeout,
        chunking,
        router.metrics().clone(),
    ));

    let start = Instant::now();
    let evicted = ticket.evicted();
    let mut reader = Reader {
        router,
        config,
        conn,
        encoding,
        tx: &tx,
        ticket: &mut ticket,
        watch: &watch,
        last_seen: start,
        identity,
        #[cfg(feature = "nats")]
        federation: shared.federation.as_ref(),
        #[cfg(feature = "nats")]
        fleet_claims: 0,
        chunks: Chunks { on: chunked, flow, reassembler: None, charged: 0, budget: shared.inbound.clone() },
    };
    let mut pings = interval_at(start + config.connections.heartbeat_interval, config.connections.heartbeat_interval);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let register_by = start + config.connections.register_timeout;

    let departure = loop {
        // Biased: what the client has sent is read before any timer is judged, so the
        // timers never act on stale knowledge. tokio's cooperative budget still makes the
        // frames branch yield now and then under a flood, so the others get their turn.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = tx.send_exempt(Outbound::Close(CLOSE_GOING_AWAY, "coordinator shutting down".into()));
                break Departure::Closed;
            }
            _ = kill.cancelled() => break Departure::Closed,
            _ = evicted.cancelled(), if reader.ticket.is_unregistered() => {
                // Registered just as it was picked: not a squatter any more, it stays.
                if reader.observe_registration() {
                    continue;
                }
                info_limited!(
                    "connection: unregistered, evicted",
                    conn,
                    "unregistered connection closed to make room for a newcomer (its address held the most)"
                );
                let _ = tx.send_exempt(Outbound::Close(CLOSE_POLICY, "unregistered connections of this address are over their share".into()));
                break Departure::Closed;
            }
            frame = frames.next() => {
                if let Some(departure) = reader.frame(frame).await {
                    break departure;
                }
                if let Some(departure) = reader.check_assembly() {
                    break departure;
                }
                // Also here: under a flood of frames the timer branches below may not get
                // a turn, and a busy squatter must not outstay the registration timeout.
                if Instant::now() >= register_by
                    && let Some(departure) = reader.check_registration()
                {
                    break departure;
                }
            }
            _ = pings.tick() => {
                if reader.silent_for() > config.connections.heartbeat_timeout {
                    // Read what has already arrived before judging: after a stall of this
                    // runtime the proof of life may be sitting in the socket.
                    if let Some(departure) = reader.drain(&mut frames).await {
                        break departure;
                    }
                }
                if reader.silent_for() > config.connections.heartbeat_timeout {
                    info_limited!(
                        "connection: silent; evicting",
                        conn,
                        silent_ms = reader.silent_for().as_millis() as u64,
                        "connection silent; evicting"
                    );
                    let _ = tx.send_exempt(Outbound::Close(CLOSE_POLICY, "heartbeat timeout".into()));
                    break Departure::Evicted;
                }
                if let Some(departure) = reader.check_assembly() {
                    break departure;
                }
                if tx.try_send(Outbound::Ping).is_err() {
                    // The queue is full of unsent frames: the client has stopped reading.
                    info_limited!("connection: outbound queue full", conn, "outbound queue full; disconnecting");
                    break Departure::Closed;
                }
            }
            _ = sleep_until(register_by), if reader.ticket.is_unregistered() => {
                if let Some(departure) = reader.check_registration() {
                    break departure;
                }
            }
        }
    };
    router.disconnect(conn, departure);
    drop(tx);
    // The writer ends once the queue is drained (or at once when killed).
    if timeout(Duration::from_secs(2), writer).await.is_err() {
        kill.cancel();
    }
    debug!(conn, ?departure, "connection closed");
}

/// The reader loop's state, and what it does with each frame.
struct Reader<'a> {
    router: &'a Router,
    config: &'a Config,
    conn: ConnId,
    encoding: Encoding,
    tx: &'a OutboundTx,
    ticket: &'a mut Ticket,
    watch: &'a StreamWatch,
    last_seen: Instant,
    /// Who the connection's credential says it is (with credentials).
    identity: Option<crate::auth::Identity>,
    /// The fleet, which must agree to a registration first (when federated).
    #[cfg(feature = "nats")]
    federation: Option<&'a Arc<crate::federation::Federation>>,
    /// Registrations claimed across the fleet so far.
    #[cfg(feature = "nats")]
    fleet_claims: u32,
    chunks: Chunks,
}

/// Chunked frames from a peer being put back together ([`chunk::Reassembler`]), their
/// bytes charged to the inbound budget like an unfinished WebSocket message's.
struct Chunks {
    /// Set when the peer took chunked frames (binary connections only).
    on: Option<Arc<AtomicBool>>,
    /// Chunks taken and acknowledgements received, for the writer (binary connections only).
    flow: Option<ChunkFlowTx>,
    reassembler: Option<Reassembler>,
    charged: u64,
    budget: Arc<InboundBudget>,
}

impl Chunks {
    fn enabled(&self) -> bool {
        self.on.as_ref().is_some_and(|on| on.load(Ordering::Acquire))
    }

    /// Takes one chunk; the frame it completes, if any.
    fn push(&mut self, chunk: &[u8], max_frame_bytes: usize) -> Result<Option<Frame>, ChunkRefusal> {
        if !self.budget.try_charge(chunk.len() as u64) {
            return Err(ChunkRefusal::OverBudget);
        }
        self.charged += chunk.len() as u64;
        let reassembler = self.reassembler.get_or_insert_with(|| Reassembler::new(max_frame_bytes));
        let pushed = reassembler.push(chunk, std::time::Instant::now());
        // What the reassembler no longer holds (a finished or refused frame) is given back.
        let held = reassembler.buffered() as u64;
        self.budget.release(self.charged - held);
        self.charged = held;
        if pushed.is_ok()
            && let Some(flow) = &self.flow
        {
            flow.took(chunk.len());
        }
        pushed.map_err(ChunkRefusal::Chunk)
    }

    /// How long the oldest unfinished chunked frame has been coming.
    fn unfinished_for(&self, now: std::time::Instant) -> Option<Duration> {
        self.reassembler.as_ref()?.oldest().map(|since| now.saturating_duration_since(since))
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

/// Why a chunk ended its connection.
enum ChunkRefusal {
    OverBudget,
    Chunk(chunk::ChunkError),
}

impl Reader<'_> {
    fn silent_for(&self) -> Duration {
        self.last_seen.elapsed()
    }

    /// Handles one item from the frame stream; `Some` when the connection must end.
    async fn frame(&mut self, frame: Option<Result<WsMessage, tungstenite::Error>>) -> Option<Departure> {
        self.last_seen = Instant::now();
        let conn = self.conn;
        match frame {
            Some(Ok(WsMessage::Binary(frame))) if self.encoding == Encoding::Binary && chunk::is_chunk(&frame) => {
                return self.chunk(&frame).await;
            }
            Some(Ok(WsMessage::Binary(frame))) if self.encoding == Encoding::Binary && pacing::is_ack(&frame) => {
                return self.chunk_ack(&frame);
            }
            Some(Ok(WsMessage::Text(text))) if text.len() >= self.config.connections.off_runtime_frame_bytes => {
                // A large frame is parsed on the blocking pool, never on the threads that
                // serve every other connection (`Connections::off_runtime_frame_bytes`); this
                // connection alone waits for it.
                self.router.metrics().large_frames.inc();
                let decoded = tokio::task::spawn_blocking(move || crate::router::decode_text(text.as_str())).await;
                return self.decoded(decoded).await;
            }
            Some(Ok(WsMessage::Binary(frame)))
                if self.encoding == Encoding::Binary
                    && frame.len() >= self.config.connections.off_runtime_frame_bytes =>
            {
                // Its payload is copied into a buffer of its own: off the runtime too.
                self.router.metrics().large_frames.inc();
                let decoded = tokio::task::spawn_blocking(move || crate::router::decode_binary(frame)).await;
                return self.decoded(decoded).await;
            }
            Some(Ok(WsMessage::Text(text))) => return self.handle(crate::router::decode_text(text.as_str())).await,
            Some(Ok(WsMessage::Binary(frame))) if self.encoding == Encoding::Binary => {
                return self.handle(crate::router::decode_binary(frame)).await;
            }
            Some(Ok(WsMessage::Binary(_))) => self.router.send_error(
                conn,
                ErrorCode::BadFrame,
                format!(
                    "binary frames need the {} subprotocol, offered when connecting; this connection is JSON",
                    binary::SUBPROTOCOL
                ),
            ),
            Some(Ok(WsMessage::Pong(payload))) => {
                if let Some(rtt) = self.watch.pong(&payload, std::time::Instant::now()) {
                    self.router.round_trip(conn, rtt);
                }
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Frame(_))) => {}
            Some(Ok(WsMessage::Close(_))) => return Some(Departure::Farewell),
            None => return Some(Departure::Closed),
            Some(Err(tungstenite::Error::Capacity(e))) => {
                info_limited!("connection: frame too large", conn, error = %e, "frame over the size limit; closing");
                self.router.send_error(conn, ErrorCode::FrameTooLarge, e.to_string());
                let _ = self.tx.send_exempt(Outbound::Close(CLOSE_TOO_BIG, "frame too large".into()));
                return Some(Departure::Closed);
            }
            Some(Err(_)) if self.watch.unregistered_too_large() => {
                info_limited!("connection: large message before registering", conn, "closing");
                self.router.send_error(
                    conn,
                    ErrorCode::FrameTooLarge,
                    format!(
                        "register first: before registering a message may be at most {} bytes",
                        crate::observe::UNREGISTERED_MESSAGE_BYTES
                    ),
                );
                let _ = self.tx.send_exempt(Outbound::Close(CLOSE_TOO_BIG, "register first".into()));
                return Some(Departure::Closed);
            }
            Some(Err(_)) if self.watch.over_budget() => {
                warn_limited!(
                    "connection: inbound budget spent",
                    conn,
                    "memory for unfinished incoming messages is exhausted; closing"
                );
                return self.refuse_over_budget();
            }
            Some(Err(e)) => {
                debug!(conn, error = %e, "connection error");
                return Some(Departure::Closed);
            }
        }
        None
    }

    /// Tells the client the coordinator's memory for unfinished messages is spent (try
    /// again later), and ends the connection.
    fn refuse_over_budget(&self) -> Option<Departure> {
        self.router.send_error(
            self.conn,
            ErrorCode::FrameTooLarge,
            "the coordinator has no memory left for incoming messages now; retry later",
        );
        let _ = self.tx.send_exempt(Outbound::Close(CLOSE_TRY_AGAIN_LATER, "busy".into()));
        Some(Departure::Closed)
    }

    /// Takes the peer's acknowledgement of the chunks sent to it (see
    /// [`p2c2r_protocol::pacing`]); `Some` when the connection must end.
    fn chunk_ack(&mut self, frame: &[u8]) -> Option<Departure> {
        let conn = self.conn;
        let flow = self.chunks.flow.as_ref().filter(|_| self.chunks.enabled());
        let Some(flow) = flow else {
            self.router.send_error(
                conn,
                ErrorCode::BadFrame,
                "chunk acknowledgements need chunked_frames in a peer's registration on a binary connection",
            );
            return None;
        };
        match pacing::parse_ack(frame) {
            Ok(ack) => {
                flow.peer_acked(ack);
                None
            }
            Err(e) => {
                info_limited!("connection: bad chunk acknowledgement", conn, error = %e, "closing");
                self.router.send_error(conn, ErrorCode::BadFrame, e.to_string());
                let _ = self.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "bad chunk acknowledgement".into()));
                Some(Departure::Closed)
            }
        }
    }

    /// Handles one chunk of a chunked frame, and the frame once it is whole; `Some` when
    /// the connection must end.
    async fn chunk(&mut self, chunk: &[u8]) -> Option<Departure> {
        let conn = self.conn;
        if !self.chunks.enabled() {
            self.router.send_error(
                conn,
                ErrorCode::BadFrame,
                "chunked frames need chunked_frames in a peer's registration on a binary connection",
            );
            return None;
        }
        let frame = match self.chunks.push(chunk, self.config.connections.max_frame_bytes) {
            Ok(Some(frame)) => {
                self.router.metrics().chunked_frames_received.inc();
                frame
            }
            Ok(None) => return None,
            Err(ChunkRefusal::OverBudget) => {
                warn_limited!("connection: inbound budget spent", conn, "no memory left for chunked frames; closing");
                return self.refuse_over_budget();
            }
            Err(ChunkRefusal::Chunk(e)) => {
                info_limited!("connection: bad chunk", conn, error = %e, "closing");
                let code = match e {
                    chunk::ChunkError::TooLarge(_) => ErrorCode::FrameTooLarge,
                    _ => ErrorCode::BadFrame,
                };
                self.router.send_error(conn, code, e.to_string());
                let _ = self.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "bad chunk".into()));
                return Some(Departure::Closed);
            }
        };
        // The whole frame, handled as if it had come in one piece (never a chunk itself:
        // chunks nested in chunks would recurse as deep as the frame is long).
        let whole = match frame {
            Frame::Text(text) => WsMessage::text(text),
            Frame::Binary(bytes) if chunk::is_chunk(&bytes) => {
                self.router.send_error(conn, ErrorCode::BadFrame, "a chunked frame holds a chunk");
                let _ = self.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "bad chunk".into()));
                return Some(Departure::Closed);
            }
            Frame::Binary(bytes) => WsMessage::binary(bytes),
        };
        Box::pin(self.frame(Some(Ok(whole)))).await
    }

    /// Handles every frame that is readable without waiting (at most
    /// [`DRAIN_MAX_FRAMES`]); `Some` when one of them ends the connection.
    async fn drain(&mut self, frames: &mut Frames) -> Option<Departure> {
        for _ in 0..DRAIN_MAX_FRAMES {
            match frames.next().now_or_never() {
                Some(frame) => {
                    if let Some(departure) = self.frame(frame).await {
                        return Some(departure);
                    }
                }
                None => break,
            }
        }
        None
    }

    /// Handles a frame decoded on the blocking pool.
    async fn decoded(&mut self, decoded: Result<crate::router::Decoded, tokio::task::JoinError>) -> Option<Departure> {
        match decoded {
            Ok(decoded) => self.handle(decoded).await,
            Err(e) => {
                self.router.send_error(self.conn, ErrorCode::Internal, format!("frame not decoded: {e}"));
                self.observe_registration();
                None
            }
        }
    }

    /// Hands a decoded frame to the router. When federated, a registration is first
    /// claimed across the fleet (this connection alone waits for it, within the fleet's
    /// `kv_timeout`), and its resume secret recorded there once acknowledged. A connection
    /// gets [`MAX_FLEET_CLAIMS`] tries: each costs the fleet key-value operations.
    async fn handle(&mut self, decoded: crate::router::Decoded) -> Option<Departure> {
        #[cfg(feature = "nats")]
        if let Some(federation) = self.federation
            && self.ticket.is_unregistered()
            && let Some((kind, id, secret)) = decoded.registration()
        {
            self.fleet_claims += 1;
            if self.fleet_claims > MAX_FLEET_CLAIMS {
                info_limited!("connection: registration attempts spent", self.conn, "closing");
                let reason = format!("at most {MAX_FLEET_CLAIMS} registration attempts per connection");
                self.router.send_error(self.conn, ErrorCode::RateLimited, reason);
                let _ = self.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "registration attempts spent".into()));
                return Some(Departure::Closed);
            }
            let (kind, id) = (kind, id.to_owned());
            let secret_digest =
                secret.map(|s| crate::ids::digest(s).iter().map(|b| format!("{b:02x}")).collect::<String>());
            let role = match kind {
                crate::ids::Kind::Gamer => crate::auth::Role::Gamer,
                crate::ids::Kind::Peer => crate::auth::Role::Peer,
            };
            let same_credential = self.identity.as_ref().is_some_and(|i| i.role == role && i.id == id);
            let proof = crate::federation::claims::Proof { secret_digest, same_credential };
            if let Err(refusal) = federation.admit(kind, &id, proof).await {
                let msg_type = if kind == crate::ids::Kind::Gamer { "register_gamer" } else { "register_peer" };
                self.router.refuse(self.conn, refusal.code, refusal.reason, msg_type);
                return None;
            }
            self.router.handle_decoded(self.conn, decoded);
            if self.observe_registration()
                && let Some(digest) = self.router.secret_digest(kind, &id)
            {
                federation.acknowledged(kind, &id, digest).await;
            } else {
                // Refused by the router after all (bad capabilities, the id reserved
                // here): the claim goes now, not at the next round of releases.
                federation.abandon(kind, &id, self.router.holds(kind, &id)).await;
            }
            return None;
        }
        self.router.handle_decoded(self.conn, decoded);
        self.observe_registration();
        None
    }

    /// Once the connection registers, tells its admission ticket (until then, one cheap
    /// look at the router per text frame). Returns whether it is registered.
    fn observe_registration(&mut self) -> bool {
        if !self.ticket.is_unregistered() {
            return true;
        }
        if self.router.is_registered(self.conn) {
            self.ticket.registered();
            self.watch.mark_registered();
            return true;
        }
        false
    }

    /// At the registration deadline: closes the connection unless it has registered.
    fn check_registration(&mut self) -> Option<Departure> {
        if self.observe_registration() {
            return None;
        }
        info_limited!("connection: registration timeout", conn = self.conn, "no registration in time; closing");
        self.router.send_error(self.conn, ErrorCode::NotRegistered, "no registration within the time allowed");
        let _ = self.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "registration timeout".into()));
        Some(Departure::Closed)
    }

    /// Closes the connection when its current message has been unfinished too long.
    fn check_assembly(&mut self) -> Option<Departure> {
        let limit = self.config.connections.message_assembly_timeout;
        let now = std::time::Instant::now();
        let unfinished = match (self.watch.message_unfinished_for(now), self.chunks.unfinished_for(now)) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        if unfinished <= limit {
            return None;
        }
        let conn = self.conn;
        info_limited!(
            "connection: message assembly timeout",
            conn,
            unfinished_ms = unfinished.as_millis() as u64,
            "message unfinished past the assembly timeout; closing"
        );
        self.router.send_error(
            conn,
            ErrorCode::FrameTooLarge,
            format!(
                "message not completed within {} ms of its first frame (too large for this link, or stalled); \
                 closing the connection",
                limit.as_millis()
            ),
        );
        let _ = self.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "message assembly timeout".into()));
        Some(Departure::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one client that does not read can make us hold: the outbound queue
    /// (`send_queue_bytes`) plus tungstenite's write buffer, which must take one largest
    /// frame with its envelope (or the writer would fail honest sends) and no more.
    #[test]
    fn the_write_buffer_takes_one_largest_frame_and_no_more() {
        for max_frame_bytes in [64 * 1024, p2c2r_protocol::limits::DEFAULT_MAX_FRAME_BYTES] {
            let config = Config {
                connections: crate::config::Connections { max_frame_bytes, ..Default::default() },
                ..Config::default()
            };
            let ws = ws_config(&config);
            // An envelope of ids and field names around a largest payload, plus the
            // frame header, fits beside a full normal write buffer.
            let envelope = 4 * p2c2r_protocol::limits::MAX_ID_BYTES + 1024;
            assert!(ws.max_write_buffer_size >= ws.write_buffer_size + max_frame_bytes + envelope);
            assert!(ws.max_write_buffer_size <= max_frame_bytes + 2 * WRITE_BUFFER_BYTES);
            assert_eq!(ws.read_buffer_size, READ_BUFFER_BYTES);
            assert_eq!(ws.max_message_size, Some(max_frame_bytes));
        }
        assert!(inbound_budget_bytes(&Config::default()) >= 64 * Config::default().connections.max_frame_bytes);
    }
}
