//! What each message does: registration, task routing, results, errors, stats.
//!
//! The router owns the shared state behind one std `Mutex` that is never held across an
//! `.await`. It never writes to a socket: it pushes frames into each connection's bounded
//! outbound queue with `try_send`, and disconnects a client whose queue is full rather than
//! buffering for it without limit.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2c2r_protocol::{
    ErrorCode, Message, RegisterGamer, RegisterPeer, RegistrationAck, StatsReport, TaskError, TaskRequest, TaskResult,
    codec, limits, to_payload,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Config;
use crate::fleet::{ConnSample, FleetState, LatencyWindow};
use crate::metrics::Metrics;
use crate::observe::StreamWatch;
pub use crate::outbound::Outbound;
use crate::outbound::{AssignmentFrame, OutboundTx, SendError, SharedPayload};
use crate::scheduler::{
    CompleteError, Completion, Dispatch, Expired, FailReason, Failure, PeerSpec, Scheduler, SchedulerConfig,
    Submission, SubmitError,
};

/// A connection's number, unique for the coordinator's lifetime.
pub type ConnId = u64;

/// WebSocket close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code for a policy violation (replaced, never registered, ...).
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for a server going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// How the router reaches a connection.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    /// The bounded outbound queue.
    pub tx: OutboundTx,
    /// Cancelled to drop the connection at once (slow reader, replaced, evicted).
    pub kill: CancellationToken,
}

/// The outcome of binding a registration to a connection.
enum Binding {
    /// The id is now this connection's.
    New,
    /// This connection had already registered with this id and role.
    Again,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Unregistered,
    Peer(String),
    Gamer(String),
}

/// Who is at the other end of a connection, for the operator's view.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// What its socket has seen (bytes moved, ping round trip).
    pub watch: Arc<StreamWatch>,
}

struct Conn {
    handle: ConnHandle,
    role: Role,
    info: Option<ConnInfo>,
    /// When it registered its current role (or connected).
    since: Instant,
}

/// Why a connection ended, for the logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The client closed it or the socket failed.
    Closed,
    /// It was silent past the heartbeat timeout.
    Evicted,
}

struct State {
    sched: Scheduler<SharedPayload>,
    conns: HashMap<ConnId, Conn>,
    peers: HashMap<String, ConnId>,
    gamers: HashMap<String, ConnId>,
    next_conn: ConnId,
    peers_evicted: u64,
    gamers_evicted: u64,
    errors_sent: u64,
    metrics: Arc<Metrics>,
    /// End-to-end latencies since the operator's view last took them.
    latencies: LatencyWindow,
}

/// The coordinator's shared state and message handling.
pub struct Router {
    state: Mutex<State>,
    config: Config,
    /// Shared with the state (which records under the lock); read without it.
    metrics: Arc<Metrics>,
    /// Woken whenever a dispatch may have set an earlier deadline.
    pub deadlines_changed: Notify,
}

impl Router {
    /// A router with no connections.
    pub fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        let sched = Scheduler::new(SchedulerConfig {
            max_attempts: config.max_attempts.max(1),
            max_pending_per_gamer: config.max_pending_per_gamer,
            max_sessions_per_gamer: config.max_sessions_per_gamer,
            max_queue_wait: config.max_queue_wait,
            max_pending_bytes_per_gamer: config.max_pending_bytes_per_gamer,
            max_pending_bytes: config.max_pending_bytes,
            max_peer_capacity: config.max_peer_capacity.max(1),
            initial_peer_capacity: config.initial_peer_capacity,
            max_session_pipeline: config.max_session_pipeline.max(1),
            // Never more assignments in flight than a peer's outbound queue holds (half of
            // it, leaving room for pings and errors), whatever the peer declares.
            max_tasks_per_peer: (config.send_queue_frames / 2).clamp(1, u32::MAX as usize) as u32,
            max_bytes_per_peer: (config.send_queue_bytes / 2).max(1),
            ..SchedulerConfig::default()
        });
        Router {
            state: Mutex::new(State {
                sched,
                conns: HashMap::new(),
                peers: HashMap::new(),
                gamers: HashMap::new(),
                next_conn: 1,
                peers_evicted: 0,
                gamers_evicted: 0,
                errors_sent: 0,
                metrics: metrics.clone(),
                latencies: LatencyWindow::default(),
            }),
            config,
            metrics,
            deadlines_changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than cascade.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a new connection; `info` says who it is, for the operator's view.
    pub fn connect(&self, handle: ConnHandle, info: Option<ConnInfo>) -> ConnId {
        let mut state = self.lock();
        let id = state.next_conn;
        state.next_conn += 1;
        state.conns.insert(id, Conn { handle, role: Role::Unregistered, info, since: Instant::now() });
        id
    }

    /// The instruments that record events as they happen (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A connection answered a ping after `rtt`: recorded under its role.
    pub fn round_trip(&self, conn: ConnId, rtt: Duration) {
        let state = self.lock();
        match state.conns.get(&conn).map(|c| &c.role) {
            Some(Role::Peer(_)) => state.metrics.peer_round_trip.observe(rtt.as_secs_f64()),
            Some(Role::Gamer(_)) => state.metrics.gamer_round_trip.observe(rtt.as_secs_f64()),
            _ => {}
        }
    }

    /// The end-to-end latencies recorded since the last call (a bounded sample).
    pub fn take_latencies(&self) -> LatencyWindow {
        std::mem::take(&mut self.lock().latencies)
    }

    /// Sessions known now, all gamers together.
    pub fn sessions(&self) -> usize {
        self.lock().sched.sessions_len()
    }

    /// Registered connections evicted for silence since start: (peers, gamers).
    pub fn evictions(&self) -> (u64, u64) {
        let state = self.lock();
        (state.peers_evicted, state.gamers_evicted)
    }

    /// Everything the operator's view shows, read in one lock hold (see [`crate::fleet`]).
    pub fn fleet(&self) -> FleetState {
        let state = self.lock();
        let now = Instant::now();
        let sample = |id: &String, conn: &ConnId| {
            let c = state.conns.get(conn)?;
            Some(ConnSample {
                id: id.clone(),
                addr: c.info.as_ref().map(|i| i.addr),
                connected_for: now.saturating_duration_since(c.since),
                bytes_read: c.info.as_ref().map_or(0, |i| i.watch.bytes_read()),
                bytes_written: c.info.as_ref().map_or(0, |i| i.watch.bytes_written()),
                round_trip: c.info.as_ref().and_then(|i| i.watch.round_trip()),
            })
        };
        FleetState {
            stats: state.stats(),
            sessions: state.sched.sessions_len(),
            peers: state
                .peers
                .iter()
                .filter_map(|(id, conn)| Some((sample(id, conn)?, state.sched.peer_view(id)?)))
                .collect(),
            gamers: state
                .gamers
                .iter()
                .filter_map(|(id, conn)| Some((sample(id, conn)?, state.sched.gamer_view(id)?)))
                .collect(),
        }
    }

    /// Whether the connection has registered as a peer or gamer.
    pub fn is_registered(&self, conn: ConnId) -> bool {
        self.lock().conns.get(&conn).is_some_and(|c| c.role != Role::Unregistered)
    }

    /// Forgets a connection: a peer's tasks are re-queued, a gamer's dropped.
    pub fn disconnect(&self, conn: ConnId, why: Departure) {
        let mut state = self.lock();
        let Some(entry) = state.conns.remove(&conn) else { return };
        match entry.role {
            Role::Unregistered => {}
            Role::Peer(peer_id) => {
                if why == Departure::Evicted {
                    state.peers_evicted += 1;
                }
                // A replaced registration already moved on; only the current one counts.
                if state.peers.get(&peer_id) == Some(&conn) {
                    state.peers.remove(&peer_id);
                    let requeued = state.sched.remove_peer(&peer_id);
                    crate::info_limited!("router: peer left", peer_id, requeued, ?why, "peer left");
                    state.dispatch(Instant::now());
                    self.deadlines_changed.notify_one();
                }
            }
            Role::Gamer(gamer_id) => {
                if why == Departure::Evicted {
                    state.gamers_evicted += 1;
                }
                if state.gamers.get(&gamer_id) == Some(&conn) {
                    state.gamers.remove(&gamer_id);
                    let dropped = state.sched.remove_gamer(&gamer_id);
                    crate::info_limited!("router: gamer left", gamer_id, dropped, ?why, "gamer left");
                }
            }
        }
    }

    /// Handles one text frame from a connection.
    pub fn handle_frame(&self, conn: ConnId, frame: &str) {
        // Parse before taking the lock: a large frame must not stall everyone else.
        let decoded = codec::decode(frame);
        let mut state = self.lock();
        let message = match decoded {
            Ok(message) => message,
            Err(e) => {
                debug!(conn, error = %e, "bad frame");
                state.send_error(conn, e.code(), e.to_string(), e.refers_to());
                return;
            }
        };
        let role = match state.conns.get(&conn) {
            Some(c) => c.role.clone(),
            None => return,
        };
        match message {
            Message::RegisterPeer(m) => self.register_peer(&mut state, conn, &role, m),
            Message::RegisterGamer(m) => self.register_gamer(&mut state, conn, &role, m),
            Message::Heartbeat(_) => {}
            Message::TaskRequest(m) => match role {
                Role::Gamer(gamer_id) => self.submit(&mut state, conn, &gamer_id, m),
                Role::Peer(_) => {
                    state.send_error(conn, ErrorCode::WrongRole, "peers cannot submit tasks", Some(m.task_id))
                }
                Role::Unregistered => state.send_error(
                    conn,
                    ErrorCode::NotRegistered,
                    "register_gamer before sending task_request",
                    Some(m.task_id),
                ),
            },
            Message::TaskResult(m) => match role {
                Role::Peer(peer_id) => self.complete(&mut state, conn, &peer_id, m),
                Role::Gamer(_) => {
                    state.send_error(conn, ErrorCode::WrongRole, "gamers cannot send task results", Some(m.task_id))
                }
                Role::Unregistered => state.send_error(
                    conn,
                    ErrorCode::NotRegistered,
                    "register_peer before sending task_result",
                    Some(m.task_id),
                ),
            },
            Message::Stats(_) => {
                let report = state.stats();
                state.send(conn, Message::StatsReport(report));
            }
            Message::Error(e) => debug!(conn, code = %e.code, message = e.message, "client reported an error"),
            other @ (Message::RegistrationAck(_) | Message::TaskAssignment(_) | Message::StatsReport(_)) => {
                let msg_type = other.msg_type();
                state.send_error(
                    conn,
                    ErrorCode::WrongRole,
                    format!("{msg_type} is sent by the coordinator, not to it"),
                    Some(msg_type.to_owned()),
                )
            }
        }
    }

    /// Binds a registering id to `conn`, replacing an older connection that holds it.
    /// Returns `None` when the registration is refused (an error has been sent), and
    /// whether this connection had already registered exactly so.
    fn bind(&self, state: &mut State, conn: ConnId, role: &Role, wanted: Role) -> Option<Binding> {
        let (field, msg_type, id) = match &wanted {
            Role::Peer(id) => ("peer_id", "register_peer", id),
            Role::Gamer(id) => ("gamer_id", "register_gamer", id),
            Role::Unregistered => return None,
        };
        if let Err(reason) = check_id(field, id) {
            state.send_error(conn, ErrorCode::InvalidMessage, reason, Some(msg_type.into()));
            return None;
        }
        if *role == wanted {
            return Some(Binding::Again);
        }
        if *role != Role::Unregistered {
            let reason = "this connection is already registered; open a new one";
            state.send_error(conn, ErrorCode::AlreadyRegistered, reason, Some(msg_type.into()));
            return None;
        }
        let ids = if matches!(wanted, Role::Peer(_)) { &mut state.peers } else { &mut state.gamers };
        if let Some(old) = ids.insert(id.clone(), conn) {
            crate::info_limited!(
                "router: id replaced",
                conn,
                id,
                msg_type,
                "id registered again; replacing its old connection"
            );
            state.replace(old, &format!("another connection registered this {field}"));
        }
        if let Some(c) = state.conns.get_mut(&conn) {
            c.role = wanted;
            c.since = Instant::now();
        }
        Some(Binding::New)
    }

    fn register_peer(&self, state: &mut State, conn: ConnId, role: &Role, m: RegisterPeer) {
        match self.bind(state, conn, role, Role::Peer(m.peer_id.clone())) {
            None => return,
            Some(Binding::Again) => return state.send(conn, self.ack(Some(m.peer_id), None)),
            Some(Binding::New) => {}
        }
        let caps = &m.capabilities;
        let capacity = caps.max_concurrent_tasks.or(caps.cpu_cores).unwrap_or(1).max(1);
        let task_types =
            caps.task_types.as_ref().filter(|t| !t.is_empty()).map(|t| t.iter().cloned().collect::<HashSet<_>>());
        crate::info_limited!("router: peer registered", peer_id = m.peer_id, capacity, task_types = ?caps.task_types, "peer registered");
        // add_peer re-queues the work of a same-id registration it replaces.
        state.sched.add_peer(m.peer_id.clone(), PeerSpec { task_types, capacity });
        state.send(conn, self.ack(Some(m.peer_id), None));
        state.dispatch(Instant::now());
        self.deadlines_changed.notify_one();
    }

    fn register_gamer(&self, state: &mut State, conn: ConnId, role: &Role, m: RegisterGamer) {
        // Gamers never take the slots kept for peers (a re-registration of a live id
        // replaces a slot rather than taking one).
        let gamer_slots = self.config.max_connections.saturating_sub(self.config.reserved_peer_slots).max(1);
        if *role == Role::Unregistered && !state.gamers.contains_key(&m.gamer_id) && state.gamers.len() >= gamer_slots {
            let reason = format!("the coordinator serves its most gamers ({gamer_slots}); try again later");
            state.send_error(conn, ErrorCode::LimitExceeded, reason, Some("register_gamer".into()));
            if let Some(entry) = state.conns.get(&conn) {
                let _ = entry.handle.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "gamer slots full".into()));
            }
            return;
        }
        if self.bind(state, conn, role, Role::Gamer(m.gamer_id.clone())).is_none() {
            return;
        }
        // A known gamer (reconnecting) keeps its pending tasks; their results come here.
        state.sched.add_gamer(m.gamer_id.clone());
        crate::info_limited!("router: gamer registered", gamer_id = m.gamer_id, "gamer registered");
        state.send(conn, self.ack(None, Some(m.gamer_id)));
    }

    fn ack(&self, peer_id: Option<String>, gamer_id: Option<String>) -> Message {
        Message::RegistrationAck(RegistrationAck {
            peer_id,
            gamer_id,
            status: "registered".into(),
            heartbeat_interval_ms: Some(self.config.heartbeat_interval.as_millis() as u64),
            max_frame_bytes: Some(self.config.max_frame_bytes),
        })
    }

    fn submit(&self, state: &mut State, conn: ConnId, gamer_id: &str, m: TaskRequest) {
        let checks = check_id("task_id", &m.task_id)
            .and_then(|_| check_id("task_type", &m.task_type))
            .and_then(|_| m.session_id.as_deref().map_or(Ok(()), |s| check_id("session_id", s)))
            .and_then(|_| match m.deadline_ms {
                Some(0) => Err("deadline_ms must be positive".to_owned()),
                Some(ms) if ms > limits::MAX_TASK_DEADLINE_MS => {
                    Err(format!("deadline_ms must be at most {}", limits::MAX_TASK_DEADLINE_MS))
                }
                _ => Ok(()),
            });
        if let Err(reason) = checks {
            return state.send_error(conn, ErrorCode::InvalidMessage, reason, Some(m.task_id));
        }
        let deadline = m.deadline_ms.map_or(self.config.default_task_deadline, Duration::from_millis);
        let task_id = m.task_id.clone();
        let submission = Submission {
            task_id: m.task_id,
            task_type: m.task_type,
            session_id: m.session_id,
            deadline,
            bytes: m.task_data.get().len(),
            payload: SharedPayload::from(m.task_data),
        };
        match state.sched.submit(gamer_id, submission, Instant::now()) {
            Ok(_) => {
                debug!(gamer_id, task_id, "task queued");
                state.dispatch(Instant::now());
                // Either an attempt deadline or the task's queue wait limit is new.
                self.deadlines_changed.notify_one();
            }
            Err(e) => {
                let code = match e {
                    SubmitError::DuplicateTask(_) => ErrorCode::DuplicateTask,
                    SubmitError::QueueFull(_)
                    | SubmitError::TaskTypeLimit(_)
                    | SubmitError::GamerBytes(_)
                    | SubmitError::TotalBytes(_) => ErrorCode::QueueFull,
                    SubmitError::SessionLimit(_) => ErrorCode::SessionLimit,
                    SubmitError::UnknownGamer => ErrorCode::NotRegistered,
                };
                state.send_error(conn, code, e.to_string(), Some(task_id));
            }
        }
    }

    fn complete(&self, state: &mut State, conn: ConnId, peer_id: &str, m: TaskResult) {
        match state.sched.complete(peer_id, &m.task_id) {
            Ok(Completion::Deliver { gamer, task_id, attempt, submitted_at, assigned_at }) => {
                debug!(peer_id, gamer_id = gamer, task_id, attempt, "result delivered");
                let now = Instant::now();
                state.metrics.peer_task_duration.observe(now.saturating_duration_since(assigned_at).as_secs_f64());
                let latency = now.saturating_duration_since(submitted_at);
                state.metrics.task_latency.observe(latency.as_secs_f64());
                state.latencies.record(latency);
                let forward = Message::TaskResult(TaskResult {
                    task_id,
                    result: m.result,
                    attempt: Some(attempt),
                    peer_id: Some(peer_id.to_owned()),
                });
                if let Some(&gamer_conn) = state.gamers.get(&gamer) {
                    state.send(gamer_conn, forward);
                }
            }
            Ok(Completion::Orphaned) => debug!(peer_id, assignment = m.task_id, "result for a departed gamer dropped"),
            Err(e) => {
                debug!(peer_id, error = %e, "result refused");
                let refers_to = Some(m.task_id);
                match e {
                    CompleteError::Malformed(_) | CompleteError::NotAssigned(_) => {
                        state.send_error(conn, ErrorCode::UnknownTask, e.to_string(), refers_to)
                    }
                }
            }
        }
        if !state.dispatch(Instant::now()).is_empty() {
            self.deadlines_changed.notify_one();
        }
    }

    /// When the next task deadline passes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lock().sched.next_deadline()
    }

    /// Re-dispatches or fails the tasks whose deadline passed by `now`, at most
    /// [`EXPIRE_BATCH`] of them, so the state lock is released between batches however
    /// many expire at once. Returns whether more remain (call again at once).
    pub fn expire_due(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let mut requeued = 0usize;
        let mut failures = Vec::new();
        for outcome in state.sched.expire_some(now, EXPIRE_BATCH) {
            match outcome {
                Expired::Requeued { task_id, peer, attempt } => {
                    requeued += 1;
                    debug!(task_id, peer_id = peer, attempt, "task deadline passed; re-dispatching");
                }
                Expired::Failed(failure) => failures.push(failure),
            }
        }
        // One line per batch, not per task: a long queue expiring must not flood the log.
        if requeued > 0 || !failures.is_empty() {
            crate::info_limited!(
                "router: deadlines passed",
                requeued,
                failed = failures.len(),
                "task deadlines passed"
            );
        }
        let answers = state.answers_for(failures);
        state.dispatch(now);
        let more = state.sched.next_deadline().is_some_and(|at| at <= now);
        drop(state);
        // The answers are built and queued outside the lock.
        send_answers(answers);
        more
    }

    /// The counters, as a `stats_report` carries them.
    pub fn stats(&self) -> StatsReport {
        self.lock().stats()
    }

    /// Sends a `shutting_down` error to every connection.
    pub fn announce_shutdown(&self) {
        let mut state = self.lock();
        let conns: Vec<ConnId> = state.conns.keys().copied().collect();
        for conn in conns {
            state.send_error(conn, ErrorCode::ShuttingDown, "the coordinator is shutting down", None);
        }
    }

    /// Queues an error for a connection (used by the connection layer).
    pub fn send_error(&self, conn: ConnId, code: ErrorCode, message: impl Into<String>) {
        self.lock().send_error(conn, code, message, None);
    }
}

impl State {
    fn send(&mut self, conn: ConnId, message: Message) {
        self.send_frame(conn, Outbound::message(message));
    }

    fn send_frame(&mut self, conn: ConnId, frame: Outbound) {
        let Some(entry) = self.conns.get(&conn) else { return };
        match entry.handle.tx.try_send(frame) {
            Ok(()) => {}
            Err(SendError::Full) => {
                // Once per connection: later frames to it find it already cancelled.
                if !entry.handle.kill.is_cancelled() {
                    crate::warn_limited!(
                        "router: slow reader",
                        conn,
                        "client is not reading fast enough; disconnecting it"
                    );
                    entry.handle.kill.cancel();
                }
            }
            Err(SendError::Closed) => {}
        }
    }

    fn send_error(&mut self, conn: ConnId, code: ErrorCode, message: impl Into<String>, refers_to: Option<String>) {
        self.errors_sent += 1;
        self.metrics.error_sent(code.as_str());
        self.send(conn, Message::error(code, message, refers_to));
    }

    /// Tells a connection it was replaced and drops it.
    fn replace(&mut self, old: ConnId, reason: &str) {
        self.send_error(old, ErrorCode::Replaced, reason, None);
        if let Some(entry) = self.conns.get_mut(&old) {
            // The writer sends the error, then the close frame, then ends the connection.
            if entry.handle.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "replaced".into())).is_err() {
                entry.handle.kill.cancel();
            }
            // Its later departure must not undo the new registration.
            entry.role = Role::Unregistered;
        }
    }

    fn dispatch(&mut self, now: Instant) -> Vec<Dispatch> {
        let dispatches = self.sched.dispatch(now);
        for d in &dispatches {
            let Some(task) = self.sched.task(d.key) else { continue };
            debug!(
                peer_id = d.peer,
                gamer_id = task.gamer,
                task_id = task.task_id,
                attempt = d.attempt,
                "task assigned"
            );
            // The payload is shared, not copied, and the writer encodes the frame
            // outside this lock; the queue keeps a session's assignments in order.
            let frame = Outbound::Assignment(Box::new(AssignmentFrame {
                assignment_id: d.assignment_id.clone(),
                attempt: d.attempt,
                deadline_ms: d.deadline.as_millis() as u64,
                task_id: task.task_id.clone(),
                task_type: task.task_type.clone(),
                session_id: task.session_id.clone(),
                gamer_id: task.gamer.clone(),
                payload: task.payload.clone(),
            }));
            // Exempt from the queue's bounds: the scheduler keeps what is in flight at a
            // peer within half of them, in tasks and in bytes, so assignments can never
            // make an honest peer look like a slow reader (the write-stall timeout still
            // catches one that stops reading).
            if let Some(conn) = self.peers.get(&d.peer).and_then(|c| self.conns.get(c)) {
                let _ = conn.handle.tx.send_exempt(frame);
            }
        }
        let failures = self.sched.take_failures();
        self.answer_failures(failures);
        dispatches
    }

    /// Tells each gamer about its tasks that were given up (see [`send_answers`]).
    fn answer_failures(&mut self, failures: Vec<Failure>) {
        send_answers(self.answers_for(failures));
    }

    /// Pairs each failure with its gamer's outbound queue (a gamer that left gets none).
    fn answers_for(&self, failures: Vec<Failure>) -> Vec<(OutboundTx, Failure)> {
        failures
            .into_iter()
            .filter_map(|f| {
                let tx = self.gamers.get(&f.gamer).and_then(|c| self.conns.get(c)).map(|c| c.handle.tx.clone())?;
                Some((tx, f))
            })
            .collect()
    }

    fn stats(&self) -> StatsReport {
        let c = self.sched.counters();
        StatsReport {
            peers: self.peers.len() as u64,
            gamers: self.gamers.len() as u64,
            queued_now: self.sched.queued_len() as u64,
            in_flight_now: self.sched.in_flight_len() as u64,
            tasks_queued: c.queued,
            tasks_assigned: c.assigned,
            tasks_completed: c.completed,
            tasks_redispatched: c.redispatched,
            tasks_failed: c.failed,
            tasks_poisoned: c.poisoned,
            pending_bytes_now: self.sched.pending_bytes() as u64,
            tasks_dropped: c.dropped,
            peers_evicted: self.peers_evicted,
            errors_sent: self.errors_sent,
        }
    }
}

/// Passed deadlines handled per lock hold (see [`Router::expire_due`]).
pub const EXPIRE_BATCH: usize = 1024;

/// Sends each gamer the `task_result` error for a task that was given up, exempt from the
/// outbound bounds (these answers are bounded by the gamer's pending tasks). Needs no lock.
fn send_answers(answers: Vec<(OutboundTx, Failure)>) {
    for (tx, Failure { gamer, task_id, attempts, reason }) in answers {
        debug!(gamer_id = gamer, task_id, attempts, ?reason, "task given up");
        let error = match reason {
            FailReason::MaxAttempts => TaskError::new(
                ErrorCode::MaxAttemptsExceeded,
                format!("no peer answered task {task_id:?} in {attempts} attempts"),
            ),
            FailReason::QueueTimeout => TaskError::new(
                ErrorCode::QueueTimeout,
                format!("no peer that runs this task type could take task {task_id:?} within the queue wait limit"),
            ),
            FailReason::Poison => TaskError::new(
                ErrorCode::PoisonTask,
                format!(
                    "task {task_id:?} was quarantined: the peer running it disconnected on each of {attempts} attempts"
                ),
            ),
        };
        let result = to_payload(&error).expect("TaskError serializes");
        let message = Message::TaskResult(TaskResult { task_id, result, attempt: Some(attempts), peer_id: None });
        let _ = tx.send_exempt(Outbound::message(message));
    }
}

fn check_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{field} must not be empty"))
    } else if value.len() > limits::MAX_ID_BYTES {
        Err(format!("{field} is longer than {} bytes", limits::MAX_ID_BYTES))
    } else {
        Ok(())
    }
}
