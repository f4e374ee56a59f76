//! The transport thread and the Bevy-facing [`P2c2rClient`] resource.
//!
//! The thread runs a [`GamerClient`] on its own tokio runtime. Bevy talks to it through
//! two bounded crossbeam channels: requests go out through one, events come back through
//! the other. [`P2c2rClient`] only buffers: the plugin's receive system drains the
//! incoming channel into it, the send system flushes its outbox into the outgoing one.
//! Neither ever blocks.

use std::sync::Arc;
use std::thread::JoinHandle;

use bevy::prelude::Resource;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use p2c2r_protocol::{RawPayload, TaskRequest};

use p2c2r_protocol::ai::AiNavigateResult;
use p2c2r_protocol::physics::PhysicsStepResult;
use p2c2r_protocol::{ErrorCode, TaskError};

use crate::client::{ClientConfig, ClientEvent, ClientStats, GamerClient, TaskOutcome, TaskReply};
use crate::components::check_body_state;
use crate::messages::ConnectionState;
use crate::tasks::{Tag, classify, custom_id};

/// A successful physics or AI result, parsed on the transport thread so that Bevy's
/// systems do not spend frame time decoding JSON.
pub(crate) enum Parsed {
    Physics(Result<PhysicsStepResult, TaskError>),
    Ai(Result<AiNavigateResult, TaskError>),
}

impl Parsed {
    pub fn physics(self) -> Option<Result<PhysicsStepResult, TaskError>> {
        match self {
            Parsed::Physics(r) => Some(r),
            Parsed::Ai(_) => None,
        }
    }

    pub fn ai(self) -> Option<Result<AiNavigateResult, TaskError>> {
        match self {
            Parsed::Ai(r) => Some(r),
            Parsed::Physics(_) => None,
        }
    }

    fn of(session: &str, event: &ClientEvent) -> Option<Parsed> {
        let ClientEvent::Result(outcome) = event else { return None };
        if !matches!(outcome.reply, TaskReply::Success(_)) {
            return None;
        }
        match classify(session, &outcome.task_id) {
            Tag::Physics(_) => Some(Parsed::Physics(parse_physics(outcome))),
            Tag::Ai(_) => Some(Parsed::Ai(outcome.parse())),
            _ => None,
        }
    }
}

/// Parses a physics result and checks every body state in it (finite numbers, unit
/// rotations: [`check_body_state`]). A result that does not parse (NaN travels as
/// `null`) or fails the check is an `invalid_payload` error that asks for a resync:
/// the peer's world is broken, and applying it would poison every later snapshot.
pub(crate) fn parse_physics(outcome: &TaskOutcome) -> Result<PhysicsStepResult, TaskError> {
    let result: PhysicsStepResult =
        outcome.parse().map_err(|e| if outcome.error().is_some() { e } else { e.with_resync() })?;
    for body in &result.bodies {
        if let Err(why) = check_body_state(body) {
            return Err(TaskError::new(ErrorCode::InvalidPayload, format!("bad physics result: {why}"))
                .with_tick(result.tick)
                .with_resync());
        }
    }
    Ok(result)
}

/// One event from the transport thread, with its result already parsed when it is a
/// physics or AI result.
pub(crate) struct Incoming {
    pub event: ClientEvent,
    pub parsed: Option<Parsed>,
}

/// Capacity of each channel between Bevy and the transport thread.
pub const CHANNEL_CAPACITY: usize = 4096;

struct Transport {
    to_net: Option<Sender<TaskRequest>>,
    from_net: Receiver<Incoming>,
    stats: Arc<ClientStats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Transport {
    fn spawn(config: ClientConfig, session: String) -> std::io::Result<Transport> {
        let (to_net, outgoing) = crossbeam_channel::bounded::<TaskRequest>(CHANNEL_CAPACITY);
        let (incoming, from_net) = crossbeam_channel::bounded::<Incoming>(CHANNEL_CAPACITY);
        let (stats_tx, stats_rx) = std::sync::mpsc::sync_channel(1);
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
                let (client, mut events) = GamerClient::start(config);
                let _ = stats_tx.send(client.stats().clone());
                // Bevy → network: blocking receive on a blocking-pool thread.
                let sender = client.clone();
                tokio::task::spawn_blocking(move || {
                    for request in outgoing.iter() {
                        if sender.blocking_send(request).is_err() {
                            break;
                        }
                    }
                });
                // Network → Bevy: a full channel applies backpressure to the socket.
                tokio::task::spawn_blocking(move || {
                    while let Some(event) = events.blocking_recv() {
                        let parsed = Parsed::of(&session, &event);
                        if incoming.send(Incoming { event, parsed }).is_err() {
                            break;
                        }
                    }
                });
                let _ = shutdown_rx.await;
                client.close().await;
            });
            runtime.shutdown_background();
        })?;
        let stats = stats_rx.recv().unwrap_or_default();
        Ok(Transport { to_net: Some(to_net), from_net, stats, shutdown: Some(shutdown_tx), thread: Some(thread) })
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.to_net.take();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Detach: the thread ends on its own once the client has closed.
        self.thread.take();
    }
}

/// Why a request could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// No coordinator is configured.
    #[error("no coordinator configured")]
    Offline,
    /// The channel to the transport thread is full.
    #[error("transport queue full")]
    Full,
    /// The transport thread has stopped.
    #[error("transport stopped")]
    Stopped,
}

/// The Bevy-facing side of the gamer client. It does no I/O: it buffers outgoing
/// requests and incoming events, which the plugin's systems move across the channels to
/// the transport thread ([`crate::P2c2rSystems::Receive`] and
/// [`crate::P2c2rSystems::Send`]).
///
/// Game code uses it to read the connection state and to submit its own tasks (any
/// `task_type` a peer runs); their results arrive as
/// [`crate::TaskResultReceived`] messages.
#[derive(Resource)]
pub struct P2c2rClient {
    transport: Option<Transport>,
    gamer_id: String,
    session_id: String,
    connection: ConnectionState,
    outbox: Vec<TaskRequest>,
    pub(crate) inbox: Vec<Incoming>,
    next_custom: u64,
    deadline_ms: Option<u64>,
}

impl std::fmt::Debug for P2c2rClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2c2rClient")
            .field("gamer_id", &self.gamer_id)
            .field("connection", &self.connection)
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl P2c2rClient {
    /// A client that connects to `config.url` on its own transport thread.
    pub(crate) fn connect(config: ClientConfig, session_id: String, deadline_ms: Option<u64>) -> Self {
        let gamer_id = config.gamer_id.clone();
        let transport = match Transport::spawn(config, session_id.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "p2c2r: cannot spawn the transport thread; running locally");
                None
            }
        };
        let connection = if transport.is_some() { ConnectionState::Connecting } else { ConnectionState::Offline };
        P2c2rClient {
            transport,
            gamer_id,
            session_id,
            connection,
            outbox: Vec::new(),
            inbox: Vec::new(),
            next_custom: 0,
            deadline_ms,
        }
    }

    /// A client with no coordinator: everything runs locally.
    pub(crate) fn offline(gamer_id: String, session_id: String) -> Self {
        P2c2rClient {
            transport: None,
            gamer_id,
            session_id,
            connection: ConnectionState::Offline,
            outbox: Vec::new(),
            inbox: Vec::new(),
            next_custom: 0,
            deadline_ms: None,
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

    /// Bytes sent to the coordinator so far.
    pub fn bytes_sent(&self) -> u64 {
        self.transport.as_ref().map_or(0, |t| t.stats.bytes_sent())
    }

    /// Bytes received from the coordinator so far.
    pub fn bytes_received(&self) -> u64 {
        self.transport.as_ref().map_or(0, |t| t.stats.bytes_received())
    }

    /// Queues a task of your own (sent in this frame's [`crate::P2c2rSystems::Send`]).
    /// Returns its task id; the result arrives as a [`crate::TaskResultReceived`]
    /// message, a failure as [`crate::TaskFailed`] with kind
    /// [`crate::TaskKind::Custom`].
    pub fn submit(
        &mut self,
        task_type: impl Into<String>,
        task_data: RawPayload,
        session_id: Option<String>,
    ) -> String {
        self.next_custom += 1;
        let task_id = custom_id(&self.session_id, self.next_custom);
        self.outbox.push(TaskRequest {
            task_id: task_id.clone(),
            task_type: task_type.into(),
            task_data,
            session_id,
            deadline_ms: self.deadline_ms,
        });
        task_id
    }

    /// Queues a request for the next flush.
    pub(crate) fn queue(&mut self, request: TaskRequest) {
        self.outbox.push(request);
    }

    /// Moves every event from the transport into the inbox; updates the connection
    /// state. Returns the connection changes seen.
    pub(crate) fn receive(&mut self) -> Vec<ConnectionState> {
        let mut changes = Vec::new();
        let Some(t) = &self.transport else { return changes };
        while let Ok(incoming) = t.from_net.try_recv() {
            match &incoming.event {
                ClientEvent::Connected { gamer_id } => {
                    self.connection = ConnectionState::Connected { gamer_id: gamer_id.clone() };
                    changes.push(self.connection.clone());
                }
                ClientEvent::Disconnected { reason } => {
                    self.connection = ConnectionState::Disconnected { reason: reason.clone() };
                    changes.push(self.connection.clone());
                }
                _ => {}
            }
            self.inbox.push(incoming);
        }
        changes
    }

    /// Hands every queued request to the transport. Returns the requests that could not
    /// be handed over, with why.
    pub(crate) fn flush(&mut self) -> Vec<(TaskRequest, QueueError)> {
        let mut failed = Vec::new();
        let sender = self.transport.as_ref().and_then(|t| t.to_net.as_ref());
        for request in self.outbox.drain(..) {
            let Some(sender) = sender else {
                failed.push((request, QueueError::Offline));
                continue;
            };
            match sender.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(r)) => failed.push((r, QueueError::Full)),
                Err(TrySendError::Disconnected(r)) => failed.push((r, QueueError::Stopped)),
            }
        }
        failed
    }

    /// Whether there is a transport at all.
    pub(crate) fn has_transport(&self) -> bool {
        self.transport.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(json: &str) -> TaskOutcome {
        TaskOutcome {
            task_id: "s:physics:3".into(),
            peer_id: Some("p".into()),
            attempt: Some(1),
            rtt: None,
            reply: TaskReply::Success(p2c2r_protocol::raw_payload(json.to_owned()).unwrap()),
        }
    }

    fn body(rotation: &str, linvel: &str) -> String {
        format!(
            r#"{{"status":"success","tick":3,"bodies":[{{"id":1,"position":[0,-3e6,0],"rotation":{rotation},"linvel":{linvel},"angvel":[0,0,0],"sleeping":false}}]}}"#
        )
    }

    #[test]
    fn broken_physics_results_are_rejected_with_a_resync() {
        let ok = parse_physics(&outcome(&body("[0,0,0,1]", "[0,-2e5,0]"))).expect("far off but finite: accepted");
        assert_eq!(ok.bodies.len(), 1);
        for (rotation, linvel) in [("[0,0,0,0]", "[0,0,0]"), ("[0,0,0,3]", "[0,0,0]"), ("[0,0,0,1]", "[0,null,0]")] {
            let e = parse_physics(&outcome(&body(rotation, linvel))).expect_err(rotation);
            assert_eq!(e.code, ErrorCode::InvalidPayload);
            assert!(e.resync, "{e:?}");
        }
    }
}
