//! The one bridge between Bevy and the network: the Bevy-facing [`P2c2rClient`] resource.
//!
//! A thread of its own runs a [`GamerClient`] on a current-thread tokio runtime, and that
//! is all it does. Bevy's systems use the client's own bounded queues directly: requests
//! go out with [`GamerClient::send`] (never blocks: a full queue is an error the plugin
//! handles), events come back with [`ClientEvents::try_recv`]. Physics and AI results are
//! decoded on the client's runtime by a [`Decoder`], so no frame time is spent parsing.
//!
//! Every request the plugin sends is recorded in a typed map ([`SentTasks`]) when it is
//! sent: what kind of task it is and which tick it carries. Results and failures are
//! matched through it; task ids are opaque and never parsed back.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bevy::prelude::Resource;
use p2c2r_client::{
    ClientConfig, ClientError, ClientEvent, ClientEvents, ClientStats, Decoder, GamerClient, TaskOutcome, TaskReply,
};
use p2c2r_protocol::ai::AiNavigateResult;
use p2c2r_protocol::packed::ResultDecoder;
use p2c2r_protocol::physics::PhysicsStepResult;
use p2c2r_protocol::{ErrorCode, Payload, TaskError, TaskRequest, task_types};

use crate::components::check_body_state;
use crate::messages::{ConnectionState, TaskKind};

/// A successful physics or AI result, decoded on the transport thread.
pub(crate) enum Parsed {
    Physics(Result<PhysicsStepResult, TaskError>),
    Ai(Result<AiNavigateResult, TaskError>),
}

/// The decoders of packed physics results, one per session: each keeps the previous
/// result's bodies, the baseline of the next delta. Used on the transport thread only
/// (the mutex is never contended); at most [`PhysicsDecoders::MAX_SESSIONS`] sessions.
#[derive(Default)]
pub(crate) struct PhysicsDecoders {
    by_session: HashMap<String, ResultDecoder>,
}

impl PhysicsDecoders {
    /// Sessions decoded at most: the plugin has one physics session (probes use it too);
    /// custom tasks may add others. When full, another session's decoder is forgotten
    /// (its next result fails to decode and is resynced), never the one decoding.
    pub const MAX_SESSIONS: usize = 8;

    /// Decodes a packed result of `session`, against its previous result.
    pub fn decode(&mut self, session: &str, bytes: &[u8]) -> Result<PhysicsStepResult, TaskError> {
        if !self.by_session.contains_key(session) && self.by_session.len() >= Self::MAX_SESSIONS {
            let other = self.by_session.keys().next().cloned();
            if let Some(other) = other {
                self.by_session.remove(&other);
            }
        }
        let decoder = self.by_session.entry(session.to_owned()).or_default();
        decoder.decode(bytes).map_err(|e| {
            TaskError::new(ErrorCode::InvalidPayload, format!("bad packed physics result: {e}")).with_resync()
        })
    }
}

fn decode(outcome: &TaskOutcome, physics: &Mutex<PhysicsDecoders>) -> Option<Box<dyn std::any::Any + Send>> {
    let parsed = match outcome.task_type.as_deref()? {
        task_types::PHYSICS_STEP => Parsed::Physics(match packed_bytes(outcome) {
            Some(bytes) => {
                let session = outcome.session_id.as_deref().unwrap_or_default();
                let decoded = physics.lock().unwrap_or_else(PoisonError::into_inner).decode(session, &bytes);
                decoded.and_then(checked_physics)
            }
            None => parse_physics(outcome),
        }),
        task_types::AI_NAVIGATE => Parsed::Ai(outcome.parse()),
        _ => return None,
    };
    Some(Box::new(parsed))
}

/// Parses a physics result and checks every body state in it (finite numbers, unit
/// rotations: [`check_body_state`]). A result that does not parse (NaN travels as
/// `null`) or fails the check is an `invalid_payload` error that asks for a resync:
/// the peer's world is broken, and applying it would poison every later snapshot.
pub(crate) fn parse_physics(outcome: &TaskOutcome) -> Result<PhysicsStepResult, TaskError> {
    if packed_bytes(outcome).is_some() {
        // Decoding a delta needs the session's previous result, which the transport's
        // decoder holds: this one reached the plugin undecoded (its request forgotten).
        return Err(
            TaskError::new(ErrorCode::InvalidPayload, "a packed physics result arrived undecoded").with_resync()
        );
    }
    let result: PhysicsStepResult =
        outcome.parse().map_err(|e| if outcome.error().is_some() { e } else { e.with_resync() })?;
    checked_physics(result)
}

/// The bytes of a packed (binary) physics result, if it is one.
fn packed_bytes(outcome: &TaskOutcome) -> Option<std::borrow::Cow<'_, [u8]>> {
    match &outcome.reply {
        TaskReply::Success(payload) => payload.binary_bytes(),
        TaskReply::Failed(_) => None,
    }
}

/// Checks every body state of a result ([`check_body_state`]) and its events (sorted,
/// bounded, finite: what a world reports; a packed result was checked as it was decoded).
fn checked_physics(result: PhysicsStepResult) -> Result<PhysicsStepResult, TaskError> {
    let bad = |why: String| {
        TaskError::new(ErrorCode::InvalidPayload, format!("bad physics result: {why}"))
            .with_tick(result.tick)
            .with_resync()
    };
    for body in &result.bodies {
        check_body_state(body).map_err(bad)?;
    }
    p2c2r_protocol::packed::check_events(&result.events).map_err(|e| bad(format!("events: {e}")))?;
    Ok(result)
}

/// What the plugin sent: recorded when a request is sent, looked up when its answer comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sent {
    /// What the task is.
    pub kind: TaskKind,
    /// The tick it carries (physics and AI).
    pub tick: Option<u64>,
}

/// Requests sent and not answered yet, by task id. Bounded: past [`SentTasks::CAPACITY`]
/// entries the oldest half is forgotten (their answers, should they still come, are
/// counted as stale), so tasks whose answers never come cannot grow it. A forgotten
/// custom task is handed back to be reported as failed: the game is never left waiting.
#[derive(Debug, Default)]
pub(crate) struct SentTasks {
    by_id: HashMap<String, (u64, Sent)>,
    next: u64,
}

impl SentTasks {
    /// The most entries kept.
    pub const CAPACITY: usize = 16_384;

    /// A fresh task id for `session`, recorded as `sent`; with the ids of the custom
    /// tasks forgotten to make room.
    fn record(&mut self, session: &str, sent: Sent) -> (String, Vec<String>) {
        self.next += 1;
        let task_id = format!("{session}:{}", self.next);
        let mut forgotten = Vec::new();
        if self.by_id.len() >= Self::CAPACITY {
            let keep_from = self.next.saturating_sub(Self::CAPACITY as u64 / 2);
            self.by_id.retain(|id, (n, sent)| {
                let keep = *n >= keep_from;
                if !keep && sent.kind == TaskKind::Custom {
                    forgotten.push(id.clone());
                }
                keep
            });
        }
        self.by_id.insert(task_id.clone(), (self.next, sent));
        (task_id, forgotten)
    }

    /// What `task_id` was, forgetting it (its answer has come).
    pub fn take(&mut self, task_id: &str) -> Option<Sent> {
        self.by_id.remove(task_id).map(|(_, sent)| sent)
    }

    /// What `task_id` is, keeping it.
    #[cfg(test)]
    fn get(&self, task_id: &str) -> Option<Sent> {
        self.by_id.get(task_id).map(|(_, sent)| *sent)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Capacity of the client's outgoing queue and of its event stream.
pub const CHANNEL_CAPACITY: usize = 4096;

struct Transport {
    client: GamerClient,
    events: ClientEvents,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Transport {
    fn spawn(mut config: ClientConfig) -> std::io::Result<Transport> {
        config.queue_capacity = CHANNEL_CAPACITY;
        let physics = Mutex::new(PhysicsDecoders::default());
        config.decoder = Some(Decoder::new(move |outcome| decode(outcome, &physics)));
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("p2c2r-transport".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "p2c2r: cannot start the transport runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let (client, events) = GamerClient::start(config);
                if started_tx.send((client.clone(), events)).is_err() {
                    return;
                }
                let _ = shutdown_rx.await;
                client.close().await;
            });
            runtime.shutdown_background();
        })?;
        let (client, events) = started_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| std::io::Error::other(format!("the transport thread did not start: {e}")))?;
        Ok(Transport { client, events, shutdown: Some(shutdown_tx), thread: Some(thread) })
    }

    fn stats(&self) -> &ClientStats {
        self.client.stats()
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Detach: the thread ends on its own once the client has closed.
        self.thread.take();
    }
}

/// Why a request could not be handed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// No coordinator is configured.
    #[error("no coordinator configured")]
    Offline,
    /// The client's outgoing queue is full.
    #[error("transport queue full")]
    Full,
    /// The transport has stopped.
    #[error("transport stopped")]
    Stopped,
}

/// A custom task the game will get no answer for.
pub(crate) struct Unanswered {
    pub task_id: String,
    pub why: String,
}

/// One event from the network, with its request as the plugin recorded it.
pub(crate) struct Incoming {
    pub event: ClientEvent,
    /// What the task it is about was (`None`: not sent by this plugin, or forgotten).
    pub sent: Option<Sent>,
}

/// The Bevy-facing side of the gamer client. It does no I/O itself: it hands requests to
/// the client's bounded queue and takes events from its bounded stream, never blocking.
///
/// Game code uses it to read the connection state and to submit its own tasks (any
/// `task_type` a peer runs); their results arrive as
/// [`crate::TaskResultReceived`] messages.
#[derive(Resource)]
pub struct P2c2rClient {
    transport: Option<Transport>,
    gamer_id: String,
    session_id: String,
    ai_session_id: String,
    deadline_ms: Option<u64>,
    connection: ConnectionState,
    sent: SentTasks,
    /// Custom tasks that could not be handed over or were forgotten unanswered, reported
    /// in the next Send stage.
    unanswered: Vec<Unanswered>,
}

impl std::fmt::Debug for P2c2rClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2c2rClient")
            .field("gamer_id", &self.gamer_id)
            .field("connection", &self.connection)
            .field("awaiting", &self.sent.len())
            .finish_non_exhaustive()
    }
}

impl P2c2rClient {
    /// A client that connects to `config.url` on its own transport thread.
    pub(crate) fn connect(config: ClientConfig, session_id: String, deadline_ms: Option<u64>) -> Self {
        let gamer_id = config.gamer_id.clone();
        let transport = match Transport::spawn(config) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "p2c2r: cannot start the transport thread; running locally");
                None
            }
        };
        let connection = if transport.is_some() { ConnectionState::Connecting } else { ConnectionState::Offline };
        Self::with(transport, gamer_id, session_id, deadline_ms, connection)
    }

    /// A client with no coordinator: everything runs locally.
    pub(crate) fn offline(gamer_id: String, session_id: String) -> Self {
        Self::with(None, gamer_id, session_id, None, ConnectionState::Offline)
    }

    fn with(
        transport: Option<Transport>,
        gamer_id: String,
        session_id: String,
        deadline_ms: Option<u64>,
        connection: ConnectionState,
    ) -> Self {
        P2c2rClient {
            transport,
            gamer_id,
            ai_session_id: format!("{session_id}:ai"),
            session_id,
            deadline_ms,
            connection,
            sent: SentTasks::default(),
            unanswered: Vec::new(),
        }
    }

    /// The gamer id this client registers with.
    pub fn gamer_id(&self) -> &str {
        &self.gamer_id
    }

    /// The physics session id (the AI session is this with `:ai` appended).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The connection state as of the latest receive.
    pub fn connection(&self) -> &ConnectionState {
        &self.connection
    }

    /// Whether the client is registered with a coordinator.
    pub fn is_connected(&self) -> bool {
        self.connection.is_connected()
    }

    /// Whether the connection to the coordinator negotiated binary frames (then packed
    /// payloads are sent; a coordinator without them gets JSON).
    pub fn binary_frames(&self) -> bool {
        self.transport.as_ref().is_some_and(|t| t.stats().binary())
    }

    /// Bytes sent to the coordinator so far.
    pub fn bytes_sent(&self) -> u64 {
        self.transport.as_ref().map_or(0, |t| t.stats().bytes_sent())
    }

    /// Bytes received from the coordinator so far.
    pub fn bytes_received(&self) -> u64 {
        self.transport.as_ref().map_or(0, |t| t.stats().bytes_received())
    }

    /// Sends a task of your own at once. Returns its task id; the result arrives as a
    /// [`crate::TaskResultReceived`] message, a failure as [`crate::TaskFailed`] with kind
    /// [`crate::TaskKind::Custom`], in the next [`crate::P2c2rSystems::Send`] stage when it
    /// could not even be handed to the network (no coordinator, queue full) or when no
    /// answer came before 8,192 newer requests were sent.
    pub fn submit(&mut self, task_type: impl Into<String>, task_data: Payload, session_id: Option<String>) -> String {
        let sent = Sent { kind: TaskKind::Custom, tick: None };
        let (task_id, result) = self.send_task(task_type.into(), task_data, session_id, sent);
        if let Err(e) = result {
            self.unanswered.push(Unanswered { task_id: task_id.clone(), why: e.to_string() });
        }
        task_id
    }

    /// Sends one of the plugin's own requests (`kind` physics, AI or probe) to the
    /// session it belongs to. Returns its task id and whether it was handed over.
    pub(crate) fn send(&mut self, task_type: &str, task_data: Payload, sent: Sent) -> (String, Result<(), QueueError>) {
        let session = if sent.kind == TaskKind::Ai { self.ai_session_id.clone() } else { self.session_id.clone() };
        self.send_task(task_type.to_owned(), task_data, Some(session), sent)
    }

    fn send_task(
        &mut self,
        task_type: String,
        task_data: Payload,
        session_id: Option<String>,
        sent: Sent,
    ) -> (String, Result<(), QueueError>) {
        let (task_id, forgotten) = self.sent.record(&self.session_id, sent);
        self.unanswered.extend(forgotten.into_iter().map(|task_id| Unanswered {
            task_id,
            why: format!("no answer before {} newer requests were sent; forgotten", SentTasks::CAPACITY / 2),
        }));
        let Some(transport) = &self.transport else {
            self.sent.take(&task_id);
            return (task_id, Err(QueueError::Offline));
        };
        let request =
            TaskRequest { task_id: task_id.clone(), task_type, task_data, session_id, deadline_ms: self.deadline_ms };
        let result = transport.client.send(request).map_err(|e| match e {
            ClientError::QueueFull => QueueError::Full,
            _ => QueueError::Stopped,
        });
        if result.is_err() {
            self.sent.take(&task_id);
        }
        (task_id, result)
    }

    /// Custom tasks that could not be handed over, or were forgotten unanswered, since
    /// the last call.
    pub(crate) fn take_unanswered(&mut self) -> Vec<Unanswered> {
        std::mem::take(&mut self.unanswered)
    }

    /// Takes every event the network has delivered, each matched with what was sent;
    /// updates the connection state. Never blocks.
    pub(crate) fn receive(&mut self) -> Vec<Incoming> {
        let mut incoming = Vec::new();
        let Some(t) = &mut self.transport else { return incoming };
        while let Some(event) = t.events.try_recv() {
            let sent = match &event {
                ClientEvent::Connected { gamer_id } => {
                    self.connection = ConnectionState::Connected { gamer_id: gamer_id.clone() };
                    None
                }
                ClientEvent::Disconnected { reason } => {
                    self.connection = ConnectionState::Disconnected { reason: reason.clone() };
                    None
                }
                // An error result ends the task; a successful one too.
                ClientEvent::Result(outcome) => self.sent.take(&outcome.task_id),
                ClientEvent::Undelivered { task_id, .. } => self.sent.take(task_id),
                // The coordinator refused the request: it will not be answered.
                ClientEvent::Error(error) => error.refers_to.as_deref().and_then(|id| self.sent.take(id)),
                ClientEvent::SessionStatus(_) => None,
            };
            incoming.push(Incoming { event, sent });
        }
        incoming
    }

    /// Whether there is a transport at all.
    pub(crate) fn has_transport(&self) -> bool {
        self.transport.is_some()
    }
}

/// When a task's reply is a decoded physics or AI result, takes it out.
pub(crate) fn take_parsed(outcome: &mut TaskOutcome) -> Option<Parsed> {
    if !matches!(outcome.reply, TaskReply::Success(_)) {
        return None;
    }
    outcome.take_decoded::<Parsed>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(json: &str) -> TaskOutcome {
        let mut outcome = TaskOutcome {
            task_id: "s:3".into(),
            task_type: Some(task_types::PHYSICS_STEP.into()),
            session_id: None,
            decoded: None,
            peer_id: Some("p".into()),
            attempt: Some(1),
            rtt: None,
            reply: TaskReply::Success(p2c2r_protocol::raw_payload(json.to_owned()).unwrap()),
        };
        outcome.decoded = decode(&outcome, &Mutex::default());
        outcome
    }

    fn body(rotation: &str, linvel: &str) -> String {
        format!(
            r#"{{"status":"success","tick":3,"bodies":[{{"id":1,"position":[0,-3e6,0],"rotation":{rotation},"linvel":{linvel},"angvel":[0,0,0],"sleeping":false}}]}}"#
        )
    }

    fn physics(mut outcome: TaskOutcome) -> Result<PhysicsStepResult, TaskError> {
        match take_parsed(&mut outcome) {
            Some(Parsed::Physics(r)) => r,
            _ => panic!("a physics_step result is decoded as physics"),
        }
    }

    #[test]
    fn broken_physics_results_are_rejected_with_a_resync() {
        let ok = physics(outcome(&body("[0,0,0,1]", "[0,-2e5,0]"))).expect("far off but finite: accepted");
        assert_eq!(ok.bodies.len(), 1);
        for (rotation, linvel) in [("[0,0,0,0]", "[0,0,0]"), ("[0,0,0,3]", "[0,0,0]"), ("[0,0,0,1]", "[0,null,0]")] {
            let e = physics(outcome(&body(rotation, linvel))).expect_err(rotation);
            assert_eq!(e.code, ErrorCode::InvalidPayload);
            assert!(e.resync, "{e:?}");
        }
    }

    #[test]
    fn answers_are_matched_through_the_typed_map_and_it_stays_bounded() {
        let mut sent = SentTasks::default();
        let physics = Sent { kind: TaskKind::Physics, tick: Some(7) };
        let (id, _) = sent.record("s-1", physics);
        assert_eq!(sent.get(&id), Some(physics));
        assert_eq!(sent.take(&id), Some(physics));
        assert_eq!(sent.take(&id), None, "an answer is matched once");
        assert_eq!(sent.take("s-1:p:7"), None, "ids are opaque: nothing is parsed back");
        let (first, _) = sent.record("s-1", Sent { kind: TaskKind::Ai, tick: Some(1) });
        let (custom, _) = sent.record("s-1", Sent { kind: TaskKind::Custom, tick: None });
        let mut forgotten = Vec::new();
        for tick in 0..(SentTasks::CAPACITY as u64 * 3) {
            forgotten.extend(sent.record("s-1", Sent { kind: TaskKind::Physics, tick: Some(tick) }).1);
            assert!(sent.len() <= SentTasks::CAPACITY);
        }
        assert_eq!(sent.get(&first), None, "the oldest are forgotten");
        assert_eq!(forgotten, [custom], "a forgotten custom task is handed back, to be reported");
    }
}
