//! The async gamer client: one WebSocket connection to a coordinator, usable without Bevy.
//!
//! [`GamerClient`] connects, registers with `register_gamer`, sends `task_request`s and
//! hands back every `task_result` (and `error`) it receives, and every `session_status`
//! (how the coordinator replicates one of the gamer's sessions). A background task owns the
//! socket; it sends heartbeats, measures each task's round-trip time and, when the
//! connection drops, reconnects with capped, jittered exponential backoff.
//!
//! It connects through [`p2c2r_net::connect`]: `ws://` or `wss://` (rustls, trusting the
//! public roots or [`ClientConfig::ca_file`]), presenting [`ClientConfig::token`] as a
//! bearer token; over TCP, or through [`ClientConfig::dialer`] to a coordinator in the
//! same process, with no socket (each reconnection asks the dialer for a new stream). Every `registration_ack` carries a `resume_secret`; the client keeps the
//! latest (in memory) and presents it when it registers again after a reconnection, so
//! the coordinator gives it back its id, its sessions and the results that arrived while
//! it was away, even before it has noticed that the old connection is dead.
//!
//! Two ways to get results:
//!
//! - [`GamerClient::submit`] sends a task and awaits its [`TaskOutcome`];
//! - [`GamerClient::send`] sends without waiting; the outcome arrives on the
//!   [`ClientEvents`] stream, together with connection changes.
//!
//! ```no_run
//! use p2c2r_client::{ClientConfig, GamerClient};
//! use p2c2r_protocol::{TaskRequest, to_payload};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, _events) = GamerClient::connect(ClientConfig::new("ws://127.0.0.1:8765", "gamer-1")).await?;
//! let outcome = client
//!     .submit(TaskRequest {
//!         task_id: "t1".into(),
//!         task_type: "physics".into(),
//!         task_data: to_payload(&serde_json::json!({"num_objects": 10}))?,
//!         session_id: None,
//!         deadline_ms: Some(2_000),
//!     })
//!     .await?;
//! println!("{} answered in {:?}", outcome.peer_id.as_deref().unwrap_or("?"), outcome.rtt);
//! client.close().await;
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use p2c2r_protocol::binary::{self, Frame};
use p2c2r_protocol::{
    Encoding, ErrorMessage, Heartbeat, Message, Payload, RegisterGamer, SessionStatus, TaskError, TaskRequest,
    TaskStatus, codec, limits,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use p2c2r_net::{Credential, Dialer};

/// A `Result` whose error is a [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What can go wrong talking to the coordinator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection, the TLS handshake or the WebSocket handshake failed, or the
    /// client's own settings (URL, token file, CA file) are unusable.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The coordinator's URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The coordinator answered the WebSocket upgrade with an HTTP error: 401 or 403 when
    /// it does not accept the client's credential ([`ClientConfig::token`]).
    #[error("the coordinator at {url} refused the connection: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Refused {
        /// The coordinator's URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The response body's text, e.g. `token expired`.
        body: String,
    },
    /// The coordinator did not acknowledge the registration.
    #[error("registration failed: {0}")]
    Registration(String),
    /// The coordinator answered the registration with an `error`, e.g. `id_in_use`
    /// (another connection holds the gamer id and this client could not prove it is the
    /// same client) or `unauthorized` (the credential does not allow this gamer id).
    #[error("registration refused: {}: {}", .0.code, .0.message)]
    RegistrationRefused(ErrorMessage),
    /// There is no connection right now (the client is reconnecting or closed).
    #[error("not connected to the coordinator")]
    NotConnected,
    /// The connection dropped before the task's result arrived. The coordinator keeps a
    /// disconnected gamer's tasks for a grace period: when the client resumes in time,
    /// their results arrive as [`ClientEvent::Result`]s.
    #[error("connection lost before the result arrived")]
    Disconnected,
    /// The outgoing queue is full; the task was not sent.
    #[error("outgoing queue full")]
    QueueFull,
    /// The coordinator refused the request with an `error` message.
    #[error("coordinator refused the task: {}: {}", .0.code, .0.message)]
    Rejected(ErrorMessage),
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

/// How a [`GamerClient`] connects and behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The coordinator's WebSocket URL, e.g. `ws://127.0.0.1:8765`, or `wss://` for TLS.
    pub url: String,
    /// Other coordinators of the same fleet (README, "Many coordinators, one fleet"): when
    /// a connection fails or drops, the next attempt goes to the next URL of `url` and
    /// these, in turn, and registers there with the resume secret, which every coordinator
    /// of a fleet honours. Empty (the default): `url` only.
    pub fallback_urls: Vec<String>,
    /// The id to register with; unique among connected gamers.
    pub gamer_id: String,
    /// The credential presented to the coordinator (`Authorization: Bearer <token>`);
    /// none by default. A [`Credential::File`] is read again on every reconnection.
    pub token: Option<Credential>,
    /// For a `wss://` coordinator: trust the certificates of this PEM file instead of the
    /// public web PKI roots (default: `None`).
    pub ca_file: Option<PathBuf>,
    /// Time allowed for TCP connect plus WebSocket handshake.
    pub connect_timeout: Duration,
    /// Time allowed between `register_gamer` and `registration_ack`.
    pub register_timeout: Duration,
    /// Reconnect after the connection drops (and keep retrying a failed first connect
    /// when started with [`GamerClient::start`]).
    pub reconnect: bool,
    /// First reconnect delay; doubles after each failure.
    pub backoff_initial: Duration,
    /// Largest reconnect delay. Each delay is jittered to 50–100 % of its value.
    pub backoff_max: Duration,
    /// How often to send an application heartbeat. The coordinator's
    /// `heartbeat_interval_ms` from the registration ack wins when it is shorter.
    pub heartbeat_interval: Duration,
    /// Largest incoming frame accepted.
    pub max_frame_bytes: usize,
    /// Capacity of the outgoing queue and of the event stream.
    pub queue_capacity: usize,
    /// Decodes successful results on the client's own task, before they reach the event
    /// stream (see [`Decoder`]); none by default.
    pub decoder: Option<Decoder>,
    /// The frames to ask for: [`Encoding::Binary`] (the default) offers binary frames,
    /// which a coordinator that does not know them declines (the client then speaks
    /// JSON, and binary payloads travel base64-wrapped); [`Encoding::Json`] offers none.
    pub encoding: Encoding,
    /// Connect through this [`Dialer`] (an in-memory stream to a coordinator in this
    /// process, e.g. `coordinator::CoordinatorHandle::dialer`) instead of TCP to `url`'s
    /// host; `url` still names the host and path of the upgrade request. `None` (the
    /// default): TCP.
    pub dialer: Option<Dialer>,
}

/// Turns a successful [`TaskOutcome`] into a typed value ([`TaskOutcome::decoded`]) on the
/// client's runtime, so that whoever reads the [`ClientEvents`] (a game's frame, in the
/// Bevy plugin) does not spend its time parsing. It sees the outcome with its
/// [`TaskOutcome::task_type`]; `None` leaves it undecoded.
#[derive(Clone)]
pub struct Decoder(Arc<DecodeFn>);

/// What a [`Decoder`] runs.
pub type DecodeFn = dyn Fn(&TaskOutcome) -> Option<Box<dyn Any + Send>> + Send + Sync;

impl Decoder {
    /// A decoder running `decode` on every successful outcome.
    pub fn new(decode: impl Fn(&TaskOutcome) -> Option<Box<dyn Any + Send>> + Send + Sync + 'static) -> Self {
        Decoder(Arc::new(decode))
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl ClientConfig {
    /// A configuration with default timeouts for this URL and gamer id.
    pub fn new(url: impl Into<String>, gamer_id: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            fallback_urls: Vec::new(),
            gamer_id: gamer_id.into(),
            token: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            register_timeout: Duration::from_secs(5),
            reconnect: true,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            max_frame_bytes: limits::DEFAULT_MAX_FRAME_BYTES,
            queue_capacity: 4096,
            decoder: None,
            encoding: Encoding::Binary,
            dialer: None,
        }
    }
}

/// A task's answer as the coordinator delivered it.
#[derive(Debug)]
pub struct TaskOutcome {
    /// The gamer's task id.
    pub task_id: String,
    /// The request's `task_type`, when this client sent it (on this connection or one
    /// before it: what was sent is remembered across reconnections).
    pub task_type: Option<String>,
    /// The request's `session_id`, when this client sent it with one.
    pub session_id: Option<String>,
    /// What [`ClientConfig::decoder`] made of a successful result.
    pub decoded: Option<Box<dyn Any + Send>>,
    /// The peer that ran it; `None` when the coordinator gave up on the task.
    pub peer_id: Option<String>,
    /// The attempt that produced the answer.
    pub attempt: Option<u32>,
    /// Time from writing the request to reading the result, when this client sent it.
    pub rtt: Option<Duration>,
    /// The result itself.
    pub reply: TaskReply,
}

/// A result's payload: success (raw JSON, parse it with [`TaskOutcome::parse`]) or a
/// [`TaskError`].
#[derive(Debug)]
pub enum TaskReply {
    /// `"status": "success"` (or a seed result without `status`): the payload as received
    /// (JSON text, or binary bytes for a binary request).
    Success(Payload),
    /// `"status": "error"`.
    Failed(TaskError),
}

impl TaskOutcome {
    /// Parses a successful result into `T`. A failed result returns its [`TaskError`].
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> std::result::Result<T, TaskError> {
        match &self.reply {
            TaskReply::Success(payload) => match payload.json() {
                Some(json) => serde_json::from_str(json)
                    .map_err(|e| TaskError::new(p2c2r_protocol::ErrorCode::InvalidPayload, format!("bad result: {e}"))),
                None => Err(TaskError::new(
                    p2c2r_protocol::ErrorCode::InvalidPayload,
                    "a binary result: read it with its task type's decoder, not as JSON",
                )),
            },
            TaskReply::Failed(err) => Err(err.clone()),
        }
    }

    /// The error, when the task failed.
    pub fn error(&self) -> Option<&TaskError> {
        match &self.reply {
            TaskReply::Failed(e) => Some(e),
            TaskReply::Success(_) => None,
        }
    }

    fn from_result(r: p2c2r_protocol::TaskResult, sent: Option<Sent>, decoder: Option<&Decoder>) -> Self {
        let (rtt, task_type, session_id) = match sent {
            Some(sent) => (Some(sent.at.elapsed()), Some(sent.task_type), sent.session_id),
            None => (None, None, None),
        };
        // Failures are always JSON; a binary result is a success.
        let status = r.result.json().and_then(p2c2r_protocol::task::result_status);
        let reply = match (status, r.result.json()) {
            (Some(TaskStatus::Error), Some(json)) => match serde_json::from_str::<TaskError>(json) {
                Ok(e) => TaskReply::Failed(e),
                Err(e) => TaskReply::Failed(TaskError::new(
                    p2c2r_protocol::ErrorCode::Other,
                    format!("unreadable error result: {e}"),
                )),
            },
            _ => TaskReply::Success(r.result),
        };
        let mut outcome = TaskOutcome {
            task_id: r.task_id,
            task_type,
            session_id,
            decoded: None,
            peer_id: r.peer_id,
            attempt: r.attempt,
            rtt,
            reply,
        };
        if let (Some(decoder), TaskReply::Success(_)) = (decoder, &outcome.reply) {
            outcome.decoded = (decoder.0)(&outcome);
        }
        outcome
    }
}

/// What the connection remembers of a request it wrote: when, and its type.
struct Sent {
    at: Instant,
    task_type: String,
    session_id: Option<String>,
    /// Its place in the order of writing, to forget the oldest first.
    seq: u64,
}

/// Requests remembered at most ([`SentLog`]): past it, the older half is forgotten (their
/// answers still arrive, without a round trip or decoding).
const MAX_REMEMBERED: usize = 65_536;

/// The requests a client wrote and has not seen answered, by task id; bounded.
#[derive(Default)]
struct SentLog {
    by_id: HashMap<String, Sent>,
    next_seq: u64,
}

impl SentLog {
    /// Remembers a request just written; forgets the older half when full (amortised
    /// constant time, whatever the answers do).
    fn remember(&mut self, task_id: String, task_type: String, session_id: Option<String>) {
        if self.by_id.len() >= MAX_REMEMBERED {
            let keep_from = self.next_seq.saturating_sub(MAX_REMEMBERED as u64 / 2);
            self.by_id.retain(|_, sent| sent.seq >= keep_from);
        }
        self.by_id.insert(task_id, Sent { at: Instant::now(), task_type, session_id, seq: self.next_seq });
        self.next_seq += 1;
    }

    /// What was sent as `task_id`, forgetting it.
    fn take(&mut self, task_id: &str) -> Option<Sent> {
        self.by_id.remove(task_id)
    }
}

impl TaskOutcome {
    /// Takes the value [`ClientConfig::decoder`] produced, if it is a `T`.
    pub fn take_decoded<T: 'static>(&mut self) -> Option<T> {
        match self.decoded.take()?.downcast::<T>() {
            Ok(value) => Some(*value),
            Err(other) => {
                self.decoded = Some(other);
                None
            }
        }
    }
}

/// Something the connection reports: results, errors and connection changes.
#[derive(Debug)]
pub enum ClientEvent {
    /// Registered (again) with the coordinator.
    Connected {
        /// The id the coordinator acknowledged.
        gamer_id: String,
    },
    /// The connection dropped or a connection attempt failed. The client reconnects when
    /// configured to, and resumes its registration: results of tasks sent before the drop
    /// may still arrive (as [`ClientEvent::Result`]) if it is back within the
    /// coordinator's grace period; otherwise they are lost.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A task result for a task sent with [`GamerClient::send`].
    Result(TaskOutcome),
    /// An `error` message from the coordinator not claimed by a [`GamerClient::submit`].
    Error(ErrorMessage),
    /// A task sent with [`GamerClient::send`] could not be delivered (no connection).
    Undelivered {
        /// The task's id.
        task_id: String,
        /// Why.
        error: ClientError,
    },
    /// A `session_status` from the coordinator: how one of the gamer's sessions is
    /// replicated now (replicas wanted and live, audited, strict, disagreements and
    /// corrections so far). Sent when it changes; informational, it changes nothing in the
    /// client. The values are the coordinator's, passed on as they came (a session this
    /// client never used, or odd numbers, are not checked). One that arrives before the
    /// `registration_ack` is delivered right after that connection's
    /// [`ClientEvent::Connected`] (at most [`MAX_EARLY_STATUSES`] of them).
    SessionStatus(SessionStatus),
}

/// `session_status` messages kept when they arrive before the `registration_ack` (a
/// coordinator sends them after it, so this only bounds what a misbehaving one can make
/// the client hold); past it they are dropped, with a debug log line.
pub const MAX_EARLY_STATUSES: usize = 16;

/// Byte and frame counters of one client, shared with whoever holds
/// [`GamerClient::stats`].
#[derive(Debug, Default)]
pub struct ClientStats {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    connects: AtomicU64,
    connected: AtomicBool,
    binary: AtomicBool,
}

impl ClientStats {
    /// Whether the current (or last) connection negotiated binary frames.
    pub fn binary(&self) -> bool {
        self.binary.load(Ordering::Relaxed)
    }
    /// Payload bytes written to the socket (text and binary frames).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
    /// Payload bytes read from the socket (text and binary frames).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }
    /// Frames written.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(Ordering::Relaxed)
    }
    /// Frames read.
    pub fn frames_received(&self) -> u64 {
        self.frames_received.load(Ordering::Relaxed)
    }
    /// Successful registrations so far (1 + reconnects).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
    /// Whether the client is registered right now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

enum Command {
    Send { request: TaskRequest, reply: Option<oneshot::Sender<Result<TaskOutcome>>> },
    Close { done: oneshot::Sender<()> },
}

/// A handle to the connection. Cheap to clone; the connection closes when
/// [`GamerClient::close`] is called or every handle and the [`ClientEvents`] are dropped.
#[derive(Clone)]
pub struct GamerClient {
    commands: mpsc::Sender<Command>,
    stats: Arc<ClientStats>,
    connected: watch::Receiver<bool>,
    gamer_id: Arc<str>,
}

impl std::fmt::Debug for GamerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GamerClient").field("gamer_id", &self.gamer_id).finish_non_exhaustive()
    }
}

/// The stream of [`ClientEvent`]s of one client. Read it, or drop it: the stream is
/// bounded ([`ClientConfig::queue_capacity`]), and a full stream holds the connection's
/// reads back.
#[derive(Debug)]
pub struct ClientEvents {
    rx: mpsc::Receiver<ClientEvent>,
}

impl ClientEvents {
    /// The next event; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// The next event, blocking the thread; for use outside async code only.
    pub fn blocking_recv(&mut self) -> Option<ClientEvent> {
        self.rx.blocking_recv()
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }
}

impl GamerClient {
    /// Starts the client in the background and returns at once; it connects (and keeps
    /// reconnecting, when `config.reconnect`) on its own, reporting
    /// [`ClientEvent::Connected`] / [`ClientEvent::Disconnected`] on the event stream.
    /// Must be called within a tokio runtime.
    pub fn start(config: ClientConfig) -> (GamerClient, ClientEvents) {
        let (client, events, _first) = Self::spawn(config, true);
        (client, events)
    }

    /// Connects and registers, returning once the coordinator acknowledged, or the error
    /// of that first attempt. Later drops are handled by reconnecting (when
    /// `config.reconnect`).
    pub async fn connect(config: ClientConfig) -> Result<(GamerClient, ClientEvents)> {
        let (client, events, first) = Self::spawn(config, false);
        match first.await {
            Ok(Ok(())) => Ok((client, events)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    fn spawn(config: ClientConfig, retry_first: bool) -> (GamerClient, ClientEvents, oneshot::Receiver<Result<()>>) {
        let (cmd_tx, cmd_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (conn_tx, conn_rx) = watch::channel(false);
        let (first_tx, first_rx) = oneshot::channel();
        let stats = Arc::new(ClientStats::default());
        let gamer_id: Arc<str> = config.gamer_id.clone().into();
        let driver = Driver {
            config,
            commands: cmd_rx,
            events: ev_tx,
            connected: conn_tx,
            stats: stats.clone(),
            first: Some(first_tx),
            retry_first,
            resume_secret: None,
            last_refusal: None,
            sent: SentLog::default(),
            encoding: Encoding::Json,
            next_url: 0,
        };
        tokio::spawn(driver.run());
        (GamerClient { commands: cmd_tx, stats, connected: conn_rx, gamer_id }, ClientEvents { rx: ev_rx }, first_rx)
    }

    /// The gamer id this client registers with.
    pub fn gamer_id(&self) -> &str {
        &self.gamer_id
    }

    /// Whether the client is registered with the coordinator right now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the client is registered, up to `timeout`. Returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok())
    }

    /// The client's byte and frame counters.
    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    /// Sends a task without waiting. Its outcome arrives as [`ClientEvent::Result`] (or
    /// [`ClientEvent::Undelivered`], or [`ClientEvent::Error`] when the coordinator
    /// refuses it). Never blocks: a full queue returns [`ClientError::QueueFull`].
    pub fn send(&self, request: TaskRequest) -> Result<()> {
        self.commands.try_send(Command::Send { request, reply: None }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => ClientError::Closed,
        })
    }

    /// Like [`GamerClient::send`], but waits for room in the queue instead of failing.
    /// Blocks the thread: for use outside async code only.
    pub fn blocking_send(&self, request: TaskRequest) -> Result<()> {
        self.commands.blocking_send(Command::Send { request, reply: None }).map_err(|_| ClientError::Closed)
    }

    /// Sends a task and waits for its outcome. A task-level failure (such as
    /// `max_attempts_exceeded`) is an `Ok` outcome holding [`TaskReply::Failed`]; an
    /// `error` message about the task is [`ClientError::Rejected`].
    pub async fn submit(&self, request: TaskRequest) -> Result<TaskOutcome> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Send { request, reply: Some(tx) }).await.map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Closes the connection and stops reconnecting. Pending [`GamerClient::submit`]s
    /// fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close { done: tx }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The capped, jittered exponential backoff used between reconnect attempts, the same
/// as the peer's (saturating, so any `initial`/`max`, even `Duration::MAX`, is safe).
pub use p2c2r_net::Backoff;

/// The shortest reconnect delay, so that a zero `backoff_initial` does not spin.
const MIN_BACKOFF: Duration = Duration::from_millis(1);

type Socket = p2c2r_net::WsStream;

/// The shortest pause after the coordinator refused this client's credential or gamer id
/// (unless [`ClientConfig::backoff_max`] is shorter).
const MIN_REFUSED_DELAY: Duration = Duration::from_secs(1);

impl ClientError {
    /// Whether the coordinator refused this client's credential or gamer id, as opposed to
    /// a network failure: waiting a few milliseconds will not fix it.
    pub fn is_refusal(&self) -> bool {
        match self {
            ClientError::Refused { status, .. } => matches!(status, 401 | 403),
            ClientError::RegistrationRefused(e) => {
                matches!(e.code, p2c2r_protocol::ErrorCode::IdInUse | p2c2r_protocol::ErrorCode::Unauthorized)
            }
            _ => false,
        }
    }

    fn connect(url: &str, e: p2c2r_net::ConnectError) -> Self {
        match e {
            p2c2r_net::ConnectError::Refused { status, body } => {
                ClientError::Refused { url: url.to_owned(), status, body }
            }
            other => ClientError::Connect { url: url.to_owned(), reason: other.to_string() },
        }
    }
}

struct Driver {
    config: ClientConfig,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<ClientEvent>,
    connected: watch::Sender<bool>,
    stats: Arc<ClientStats>,
    first: Option<oneshot::Sender<Result<()>>>,
    retry_first: bool,
    /// The latest `registration_ack`'s `resume_secret`, presented by the next registration.
    resume_secret: Option<String>,
    /// The refusal last logged at `warn`, so that a retried refusal is not logged again.
    last_refusal: Option<String>,
    /// Requests written and not answered, across reconnections: a result delivered after
    /// a resume still gets its type (and decoding) and round trip. Bounded
    /// ([`MAX_REMEMBERED`]).
    sent: SentLog,
    /// What the current connection negotiated.
    encoding: Encoding,
    /// Which of `url` and `fallback_urls` the next attempt goes to.
    next_url: usize,
}

enum SessionEnd {
    Lost(String),
    Closed(Option<oneshot::Sender<()>>),
}

impl Driver {
    /// The URL the next attempt goes to.
    fn current_url(&self) -> &str {
        match self.next_url % (1 + self.config.fallback_urls.len()) {
            0 => &self.config.url,
            n => &self.config.fallback_urls[n - 1],
        }
    }

    /// After a failed attempt or a lost connection: the next attempt goes to the next
    /// coordinator of the fleet (the same one when there is no other).
    fn rotate(&mut self) {
        self.next_url = self.next_url.wrapping_add(1);
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff_initial.max(MIN_BACKOFF), self.config.backoff_max);
        let mut reported_down = false;
        loop {
            let mut refused = false;
            match self.connect().await {
                Ok((socket, heartbeat, early_statuses)) => {
                    backoff.reset();
                    self.last_refusal = None;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    self.set_connected(true);
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Ok(()));
                    }
                    let gamer_id = self.config.gamer_id.clone();
                    if !self.emit(ClientEvent::Connected { gamer_id }).await {
                        return;
                    }
                    for status in early_statuses {
                        if !self.emit(ClientEvent::SessionStatus(status)).await {
                            return;
                        }
                    }
                    let end = self.session(socket, heartbeat).await;
                    self.set_connected(false);
                    match end {
                        SessionEnd::Closed(done) => {
                            if let Some(done) = done {
                                let _ = done.send(());
                            }
                            return;
                        }
                        SessionEnd::Lost(reason) => {
                            tracing::debug!(%reason, "p2c2r connection lost");
                            reported_down = true;
                            self.rotate();
                            if !self.emit(ClientEvent::Disconnected { reason }).await {
                                return;
                            }
                            if !self.config.reconnect {
                                self.drain_closed().await;
                                return;
                            }
                        }
                    }
                }
                Err(error) => {
                    refused = error.is_refusal();
                    self.log_failure(&error);
                    self.rotate();
                    if let Some(first) = self.first.take() {
                        if !self.retry_first {
                            let _ = first.send(Err(error));
                            return;
                        }
                        self.first = Some(first);
                    }
                    if !reported_down {
                        reported_down = true;
                        if !self.emit(ClientEvent::Disconnected { reason: error.to_string() }).await {
                            return;
                        }
                    }
                    if !self.config.reconnect && !self.retry_first {
                        return;
                    }
                }
            }
            // Wait before the next attempt, still answering commands.
            let mut delay = backoff.next_delay();
            if refused {
                delay = delay.max(MIN_REFUSED_DELAY.min(self.config.backoff_max));
            }
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    cmd = self.commands.recv() => match cmd {
                        None => return,
                        Some(Command::Close { done }) => { let _ = done.send(()); return; }
                        Some(Command::Send { request, reply }) => {
                            self.undelivered(request.task_id, reply, ClientError::NotConnected).await;
                        }
                    },
                }
            }
        }
    }

    /// Logs a failed attempt: a refusal at `warn` (once until it changes or the client
    /// registers), anything else at `debug`.
    fn log_failure(&mut self, error: &ClientError) {
        if !error.is_refusal() {
            tracing::debug!(%error, "p2c2r connect failed");
            return;
        }
        let text = error.to_string();
        if self.last_refusal.as_deref() == Some(text.as_str()) {
            tracing::debug!(%error, "p2c2r: still refused; retrying with backoff");
            return;
        }
        let gamer_id = &self.config.gamer_id;
        match error {
            ClientError::RegistrationRefused(e) if e.code == p2c2r_protocol::ErrorCode::IdInUse => tracing::warn!(
                %gamer_id,
                "p2c2r: the gamer id is in use by another connection, and this client could not prove it is the \
                 same client ({}); retrying later",
                e.message
            ),
            _ => tracing::warn!(
                %gamer_id,
                "p2c2r: {error}; check the plugin's token / token_file (a token file is read again on every \
                 attempt); retrying with backoff"
            ),
        }
        self.last_refusal = Some(text);
    }

    async fn drain_closed(&mut self) {
        while let Some(cmd) = self.commands.recv().await {
            match cmd {
                Command::Close { done } => {
                    let _ = done.send(());
                    return;
                }
                Command::Send { request, reply } => {
                    self.undelivered(request.task_id, reply, ClientError::NotConnected).await;
                }
            }
        }
    }

    fn set_connected(&self, up: bool) {
        self.stats.connected.store(up, Ordering::Relaxed);
        let _ = self.connected.send(up);
    }

    async fn emit(&self, event: ClientEvent) -> bool {
        self.events.send(event).await.is_ok() || !self.commands.is_closed()
    }

    async fn undelivered(
        &self,
        task_id: String,
        reply: Option<oneshot::Sender<Result<TaskOutcome>>>,
        error: ClientError,
    ) {
        match reply {
            Some(reply) => {
                let _ = reply.send(Err(error));
            }
            None => {
                let _ = self.events.send(ClientEvent::Undelivered { task_id, error }).await;
            }
        }
    }

    /// Connects and registers; returns the socket, the heartbeat period to use and the
    /// `session_status` messages that came before the acknowledgement (at most
    /// [`MAX_EARLY_STATUSES`]), to be reported once connected.
    async fn connect(&mut self) -> Result<(Socket, Duration, Vec<SessionStatus>)> {
        let url = self.current_url().to_owned();
        let options = p2c2r_net::ConnectOptions {
            token: self.config.token.clone(),
            ca_file: self.config.ca_file.clone(),
            ws_config: Some(
                WebSocketConfig::default()
                    .max_message_size(Some(self.config.max_frame_bytes))
                    .max_frame_size(Some(self.config.max_frame_bytes)),
            ),
            timeout: self.config.connect_timeout,
            encoding: self.config.encoding,
            dialer: self.config.dialer.clone(),
        };
        let (mut socket, encoding) =
            p2c2r_net::connect_negotiated(&url, &options).await.map_err(|e| ClientError::connect(&url, e))?;
        self.encoding = encoding;
        self.stats.binary.store(encoding == Encoding::Binary, Ordering::Relaxed);
        let register = codec::encode(&Message::RegisterGamer(RegisterGamer {
            gamer_id: self.config.gamer_id.clone(),
            resume_secret: self.resume_secret.clone(),
        }));
        self.count_sent(register.len());
        socket
            .send(tungstenite::Message::Text(register.into()))
            .await
            .map_err(|e| ClientError::Connect { url: url.clone(), reason: e.to_string() })?;
        let deadline = tokio::time::Instant::now() + self.config.register_timeout;
        let mut early = Vec::new();
        loop {
            let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
                Err(_) => return Err(ClientError::Registration("no registration_ack in time".into())),
                Ok(None) => return Err(ClientError::Registration("connection closed".into())),
                Ok(Some(Err(e))) => return Err(ClientError::Registration(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let tungstenite::Message::Text(text) = frame else { continue };
            self.count_received(text.len());
            match codec::decode(text.as_str()) {
                Ok(Message::RegistrationAck(ack)) => {
                    self.resume_secret = ack.resume_secret;
                    let mut heartbeat = self.config.heartbeat_interval;
                    if let Some(ms) = ack.heartbeat_interval_ms.filter(|ms| *ms > 0) {
                        heartbeat = heartbeat.min(Duration::from_millis(ms));
                    }
                    return Ok((socket, heartbeat.max(Duration::from_millis(10)), early));
                }
                Ok(Message::Error(e)) => return Err(ClientError::RegistrationRefused(e)),
                Ok(Message::SessionStatus(status)) if early.len() < MAX_EARLY_STATUSES => early.push(status),
                Ok(Message::SessionStatus(status)) => {
                    tracing::debug!(session_id = %status.session_id, "session_status before registration: dropped")
                }
                Ok(_) | Err(_) => continue,
            }
        }
    }

    fn count_sent(&self, bytes: usize) {
        self.stats.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
    }

    fn count_received(&self, bytes: usize) {
        self.stats.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats.frames_received.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs one registered connection until it drops or the client closes.
    async fn session(&mut self, socket: Socket, heartbeat: Duration) -> SessionEnd {
        let (mut sink, mut stream) = socket.split();
        let mut waiters: HashMap<String, oneshot::Sender<Result<TaskOutcome>>> = HashMap::new();
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let heartbeat_frame = codec::encode(&Message::Heartbeat(Heartbeat {
            peer_id: None,
            gamer_id: Some(self.config.gamer_id.clone()),
        }));
        let end = loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None => {
                        let _ = sink.close().await;
                        break SessionEnd::Closed(None);
                    }
                    Some(Command::Close { done }) => {
                        let _ = sink.close().await;
                        break SessionEnd::Closed(Some(done));
                    }
                    Some(Command::Send { request, reply }) => {
                        let task_id = request.task_id.clone();
                        let task_type = request.task_type.clone();
                        let session_id = request.session_id.clone();
                        let frame = match binary::encode_for(&Message::TaskRequest(request), self.encoding) {
                            Frame::Text(text) => tungstenite::Message::text(text),
                            Frame::Binary(bytes) => tungstenite::Message::binary(bytes),
                        };
                        self.count_sent(frame.len());
                        if let Err(e) = sink.send(frame).await {
                            self.undelivered(task_id, reply, ClientError::Disconnected).await;
                            break SessionEnd::Lost(e.to_string());
                        }
                        self.sent.remember(task_id.clone(), task_type, session_id);
                        if let Some(reply) = reply {
                            waiters.insert(task_id, reply);
                        }
                    }
                },
                frame = stream.next() => match frame {
                    None => break SessionEnd::Lost("connection closed by the coordinator".into()),
                    Some(Err(e)) => break SessionEnd::Lost(e.to_string()),
                    Some(Ok(frame @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_)))) => {
                        self.count_received(frame.len());
                        let decoded = match frame {
                            tungstenite::Message::Text(text) => codec::decode(text.as_str()).map_err(|e| e.to_string()),
                            tungstenite::Message::Binary(bytes) => binary::decode(bytes).map_err(|e| e.to_string()),
                            _ => unreachable!("matched above"),
                        };
                        match decoded {
                            Ok(Message::TaskResult(result)) => {
                                let sent = self.sent.take(&result.task_id);
                                let outcome = TaskOutcome::from_result(result, sent, self.config.decoder.as_ref());
                                if let Some(waiter) = waiters.remove(&outcome.task_id) {
                                    let _ = waiter.send(Ok(outcome));
                                } else if self.events.send(ClientEvent::Result(outcome)).await.is_err()
                                    && self.commands.is_closed()
                                {
                                    break SessionEnd::Closed(None);
                                }
                            }
                            Ok(Message::Error(error)) => {
                                if error.code == p2c2r_protocol::ErrorCode::Replaced {
                                    tracing::warn!(
                                        gamer_id = %self.config.gamer_id,
                                        "p2c2r: another connection took this gamer id over: {}", error.message
                                    );
                                }
                                let waiter = error.refers_to.as_ref().and_then(|id| waiters.remove(id));
                                if let Some(id) = &error.refers_to {
                                    self.sent.take(id);
                                }
                                match waiter {
                                    Some(w) => { let _ = w.send(Err(ClientError::Rejected(error))); }
                                    None => { let _ = self.events.send(ClientEvent::Error(error)).await; }
                                }
                            }
                            Ok(Message::SessionStatus(status)) => {
                                if self.events.send(ClientEvent::SessionStatus(status)).await.is_err()
                                    && self.commands.is_closed()
                                {
                                    break SessionEnd::Closed(None);
                                }
                            }
                            Ok(other) => tracing::trace!(msg_type = other.msg_type(), "ignored frame"),
                            Err(e) => tracing::debug!(error = %e, "undecodable frame from coordinator"),
                        }
                    }
                    Some(Ok(tungstenite::Message::Close(_))) => {
                        break SessionEnd::Lost("coordinator closed the connection".into());
                    }
                    Some(Ok(_)) => {}
                },
                _ = ticker.tick() => {
                    self.count_sent(heartbeat_frame.len());
                    if let Err(e) = sink.send(tungstenite::Message::Text(heartbeat_frame.clone().into())).await {
                        break SessionEnd::Lost(e.to_string());
                    }
                }
            }
        };
        for (_, waiter) in waiters.drain() {
            let error = match end {
                SessionEnd::Closed(_) => ClientError::Closed,
                SessionEnd::Lost(_) => ClientError::Disconnected,
            };
            let _ = waiter.send(Err(error));
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = Duration::from_millis(100 * (1 << i.min(3)));
            assert!(*d >= step / 2 && *d <= step, "delay {i} = {d:?}, step {step:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::MAX, 1);
        let mut last = Duration::ZERO;
        for _ in 0..200 {
            last = b.next_delay();
        }
        assert!(last >= Duration::from_secs(1_000_000), "keeps growing: {last:?}");
        let mut b = Backoff::with_seed(Duration::MAX, Duration::MAX, 2);
        for _ in 0..10 {
            assert!(b.next_delay() >= Duration::MAX / 2);
        }
    }

    #[test]
    fn what_was_sent_is_bounded_and_forgets_the_oldest() {
        let mut log = SentLog::default();
        log.remember("first".into(), "physics_step".into(), None);
        for i in 0..(MAX_REMEMBERED * 3) {
            log.remember(format!("t{i}"), "ai_navigate".into(), None);
            assert!(log.by_id.len() <= MAX_REMEMBERED);
        }
        assert!(log.take("first").is_none(), "the oldest is forgotten");
        let last = format!("t{}", MAX_REMEMBERED * 3 - 1);
        assert_eq!(log.take(&last).map(|s| s.task_type), Some("ai_navigate".to_owned()));
        assert!(log.take(&last).is_none(), "an answer is matched once");
    }

    #[test]
    fn outcome_classifies_success_and_error() {
        let ok = TaskOutcome::from_result(
            p2c2r_protocol::TaskResult {
                task_id: "t".into(),
                result: p2c2r_protocol::raw_payload(r#"{"status":"success","tick":3,"bodies":[]}"#.into()).unwrap(),
                attempt: Some(1),
                peer_id: Some("p".into()),
            },
            None,
            None,
        );
        let parsed: p2c2r_protocol::physics::PhysicsStepResult = ok.parse().unwrap();
        assert_eq!(parsed.tick, 3);
        let err = TaskOutcome::from_result(
            p2c2r_protocol::TaskResult {
                task_id: "t".into(),
                result: p2c2r_protocol::raw_payload(
                    r#"{"status":"error","code":"unknown_session","message":"x","resync":true,"tick":4}"#.into(),
                )
                .unwrap(),
                attempt: None,
                peer_id: None,
            },
            None,
            None,
        );
        let e = err.error().unwrap();
        assert!(e.resync);
        assert_eq!(e.tick, Some(4));
        assert_eq!(e.code, p2c2r_protocol::ErrorCode::UnknownSession);
    }
}
