//! What each message does: a thin dispatcher over owned sub-states.
//!
//! The router owns the shared state behind one std `Mutex` that is never held across an
//! `.await`. It never writes to a socket: it pushes frames into each connection's bounded
//! outbound queue with `try_send`, and disconnects a client whose queue is full rather than
//! buffering for it without limit. Decoding a frame, reading a result's status and hashing
//! a replicated answer happen before the lock is taken.
//!
//! The state is made of parts, each with its own invariants, in a module of its own:
//!
//! - `registry`: connections, and which holds which id (`registration` binds them,
//!   `departures` unbinds them);
//! - `delivery`: what waits for gamers that may resume;
//! - `limits`: each gamer's rate limits;
//! - `standing`: quarantines and departed peers' standings;
//! - `replicas` and `verdicts`: replicated and audited sessions;
//! - `federated`: what the federation of coordinators asks of the router;
//! - the [`crate::scheduler`], which decides where tasks go.
//!
//! One handler per message kind: `registration` (`register_peer`, `register_gamer`),
//! `tasks` (`task_request`, `task_result`, deadlines), `view` (`stats`, and the
//! operator's view). `frames` and `answers` need no state.

mod answers;
mod delivery;
mod departures;
mod federated;
mod frames;
mod limits;
mod registration;
mod registry;
mod replicas;
mod standing;
mod tasks;
#[cfg(test)]
mod tests;
mod verdicts;
mod view;

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use p2c2r_protocol::{ErrorCode, Message, Payload};
use tokio::sync::Notify;
use tracing::debug;

pub use self::frames::{Decoded, decode_binary, decode_text};
pub use self::registry::{CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, ConnHandle, ConnId, ConnInfo, Departure};
pub use self::standing::MAX_QUARANTINED;
pub use self::view::RouterSnapshot;
use crate::Config;
use crate::auth::Role as CredentialRole;
use crate::fleet::LatencyWindow;
use crate::ids::IdBook;
use crate::metrics::Metrics;
pub use crate::outbound::Outbound;
use crate::scheduler::{Scheduler, SchedulerConfig};
use registry::{Registry, Role};

/// How long a connection whose credential was revoked has to receive its error and close
/// frame before it is dropped.
pub const REVOKED_FLUSH: Duration = Duration::from_secs(1);

/// Ids starting with this are the fleet's stand-ins ([`Router::connect_internal`]); no
/// client may register one.
pub const FLEET_ID_PREFIX: char = '~';

/// Passed deadlines handled per lock hold (see [`Router::expire_due`]).
pub const EXPIRE_BATCH: usize = 1024;

/// What was read of a frame before the lock was taken (see [`Decoded`]).
struct Read {
    /// A task result's status.
    kind: Option<p2c2r_protocol::inspect::ResultKind>,
    /// Whether a physics tick is a snapshot.
    snapshot: bool,
    /// A successful answer to a replicated copy: its digest.
    digest: Option<crate::replication::AnswerDigest>,
}

/// Everything the router knows, in one place, behind its one lock.
struct State {
    /// Tasks with their payloads, shared (by reference count) with the frames that
    /// carry them.
    sched: Scheduler<Payload>,
    registry: Registry,
    delivery: delivery::Delivery,
    limits: limits::Limits,
    standing: standing::Standing,
    replicas: replicas::Replicas,
    /// Shared with the router (read without the lock).
    metrics: Arc<Metrics>,
    /// End-to-end latencies since the operator's view last took them.
    latencies: LatencyWindow,
    /// The deadline the timer sleeps until, as it last read it ([`Router::next_deadline`]):
    /// a hold that leaves an earlier one wakes it ([`Router::release`]).
    timer_at: Option<std::time::Instant>,
}

/// A hold of the state lock: the guard, and when it began; its end is recorded in
/// [`Router::lock_held`] when it is dropped.
struct Held<'a> {
    guard: MutexGuard<'a, State>,
    since: std::time::Instant,
    /// It handles a frame.
    frame: bool,
    lock_held: &'a crate::metrics::LockHeld,
}

impl Deref for Held<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.guard
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Read before the guard goes (the fields drop after this): the hold is still on.
        self.lock_held.record(self.since, self.frame);
    }
}

/// The coordinator's shared state and message handling.
pub struct Router {
    state: Mutex<State>,
    config: Config,
    /// Shared with the state (which records under the lock); read without it.
    metrics: Arc<Metrics>,
    /// Woken whenever a lock hold left a deadline earlier than the timer's.
    pub deadlines_changed: Notify,
    /// Woken when a replica replaying a session's log waits for copies
    /// ([`Router::continue_replays`]).
    pub replays_waiting: Notify,
    /// Whether any session is replicated, as the last lock hold left it: an answer is
    /// hashed before the lock only then (a stale `false` costs only the hashing under the
    /// lock, never a wrong vote).
    replicated: std::sync::atomic::AtomicBool,
    /// How long the state lock was held (see [`Router::lock_held`]).
    lock_held: crate::metrics::LockHeld,
}

impl Router {
    /// A router with no connections.
    pub fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        let sched = Scheduler::new(scheduler_config(&config));
        Router {
            state: Mutex::new(State {
                sched,
                registry: Registry::new(IdBook::new(config.identity.resume_grace), metrics.clone()),
                delivery: delivery::Delivery::new(
                    config.scheduling.max_pending_bytes_per_gamer,
                    config.scheduling.max_pending_bytes / 4,
                ),
                limits: limits::Limits::default(),
                standing: standing::Standing::new(),
                replicas: replicas::Replicas::new(&config),
                metrics: metrics.clone(),
                latencies: LatencyWindow::default(),
                timer_at: None,
            }),
            config,
            metrics,
            deadlines_changed: Notify::new(),
            replays_waiting: Notify::new(),
            replicated: std::sync::atomic::AtomicBool::new(false),
            lock_held: crate::metrics::LockHeld::default(),
        }
    }

    fn lock(&self) -> Held<'_> {
        // A panic while holding the lock would be a bug; keep serving rather than cascade.
        let guard = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Held { guard, since: std::time::Instant::now(), frame: false, lock_held: &self.lock_held }
    }

    /// Records a new connection; `info` says who it is, for the operator's view.
    pub fn connect(&self, handle: ConnHandle, info: Option<ConnInfo>) -> ConnId {
        self.lock().registry.connect(handle, info, false)
    }

    /// Records one of the coordinator's own connections: the federation's stand-ins for
    /// peers and gamers of other coordinators. It has no socket and no credential, and it
    /// alone may register an id starting with [`FLEET_ID_PREFIX`].
    pub fn connect_internal(&self, handle: ConnHandle) -> ConnId {
        self.lock().registry.connect(handle, None, true)
    }

    /// The instruments that record events as they happen (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// How long the state lock was held, since start: every hold, and those that handled
    /// a frame.
    pub fn lock_held(&self) -> &crate::metrics::LockHeld {
        &self.lock_held
    }

    /// A connection answered a ping after `rtt`: recorded under its role.
    pub fn round_trip(&self, conn: ConnId, rtt: Duration) {
        let state = self.lock();
        match state.registry.role(conn) {
            Some(Role::Peer(_)) => state.metrics.peer_round_trip.observe(rtt.as_secs_f64()),
            Some(Role::Gamer(_)) => state.metrics.gamer_round_trip.observe(rtt.as_secs_f64()),
            _ => {}
        }
    }

    /// Whether the connection has registered as a peer or gamer.
    pub fn is_registered(&self, conn: ConnId) -> bool {
        self.lock().registry.role(conn).is_some_and(|r| *r != Role::Unregistered)
    }

    /// Takes the reputation database and what it kept from before a restart: quarantines,
    /// and departed peers' standings (read once at start, before any connection).
    pub fn restore_reputation(&self, db: crate::reputation::ReputationDb, kept: crate::reputation::Kept) {
        self.lock().standing.restore(db, kept, std::time::Instant::now());
    }

    /// Writes what the reputation database has queued and closes it (at shutdown), with
    /// the standings of the peers still connected (they leave with the coordinator);
    /// quarantines and standings from now on are kept in memory only.
    pub fn close_reputation(&self) {
        let db = {
            let mut state = self.lock();
            let live: Vec<String> = state.registry.peers.keys().cloned().collect();
            for peer_id in &live {
                state.remember_standing(peer_id);
            }
            state.standing.take_db()
        };
        if let Some(db) = db {
            db.close();
        }
    }

    /// Handles one text frame from a connection.
    pub fn handle_frame(&self, conn: ConnId, frame: &str) {
        // Parse before taking the lock: a large frame must not stall everyone else.
        self.handle_decoded(conn, decode_text(frame));
    }

    /// Handles one binary frame from a connection that negotiated binary frames (see
    /// [`decode_binary`]).
    pub fn handle_binary_frame(&self, conn: ConnId, frame: bytes::Bytes) {
        self.handle_decoded(conn, decode_binary(frame));
    }

    /// Handles a frame decoded by [`decode_text`] (or [`decode_binary`]).
    pub fn handle_decoded(&self, conn: ConnId, decoded: Decoded) {
        let Decoded { message: decoded, kind, snapshot } = decoded;
        let digest = decoded.as_ref().ok().and_then(|m| self.answer_digest(conn, m, kind));
        let mut state = self.lock();
        state.frame = true;
        self.dispatch_message(&mut state, conn, decoded, Read { kind, snapshot, digest });
        self.release(state);
    }

    /// Ends a lock hold: the one place that wakes the deadline timer (when the hold left a
    /// deadline earlier than the one it sleeps until: a task assigned, queued or
    /// re-queued) and the replay worker (when a replica replaying a session's log still
    /// waits for copies).
    fn release(&self, mut state: Held<'_>) {
        let next = state.sched.next_deadline();
        let wake = match (next, state.timer_at) {
            (Some(next), Some(sleeping_until)) => next < sleeping_until,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if wake {
            // Told once: it reads the deadline again when it wakes.
            state.timer_at = next;
        }
        let replays = state.replicas.replays_pending();
        self.replicated.store(state.replicas.any(), std::sync::atomic::Ordering::Relaxed);
        drop(state);
        if wake {
            self.deadlines_changed.notify_one();
        }
        if replays {
            self.replays_waiting.notify_one();
        }
    }

    /// Submits the copies replicas replaying a session's log still wait for, a batch per
    /// lock hold (`REPLAY_BATCH`, 64), so other frames are handled in between;
    /// returns whether some still wait (call again after letting others run). Run by the
    /// coordinator's replay worker (`timers.rs`), woken by [`Router::replays_waiting`].
    pub fn continue_replays(&self) -> bool {
        let mut state = self.lock();
        let now = std::time::Instant::now();
        state.continue_replays(replicas::REPLAY_BATCH, now);
        state.dispatch(now);
        let more = state.replicas.replays_pending();
        self.release(state);
        more
    }

    /// [`Router::handle_decoded`] as it was before answers were hashed outside the lock:
    /// a replicated answer's digest is computed while the lock is held. Only for the
    /// benchmark that compares the two (`cargo bench -p coordinator --bench lock`).
    #[doc(hidden)]
    pub fn handle_decoded_hashing_under_lock(&self, conn: ConnId, decoded: Decoded) {
        let Decoded { message: decoded, kind, snapshot } = decoded;
        let mut state = self.lock();
        state.frame = true;
        self.dispatch_message(&mut state, conn, decoded, Read { kind, snapshot, digest: None });
        self.release(state);
    }

    /// One handler per message kind.
    fn dispatch_message(
        &self,
        state: &mut State,
        conn: ConnId,
        decoded: Result<Message, (ErrorCode, String, Option<String>)>,
        read: Read,
    ) {
        let message = match decoded {
            Ok(message) => message,
            Err((code, message, refers_to)) => {
                debug!(conn, error = %message, "bad frame");
                return state.registry.send_error(conn, code, message, refers_to);
            }
        };
        let Some(role) = state.registry.role(conn).cloned() else { return };
        match message {
            Message::RegisterPeer(m) => self.register_peer(state, conn, &role, m),
            Message::RegisterGamer(m) => self.register_gamer(state, conn, &role, m),
            Message::Heartbeat(_) => {}
            Message::TaskRequest(m) => match role {
                Role::Gamer(gamer_id) => self.submit(state, conn, &gamer_id, m, read.snapshot),
                Role::Peer(_) => {
                    state.registry.send_error(conn, ErrorCode::WrongRole, "peers cannot submit tasks", Some(m.task_id))
                }
                Role::Unregistered => state.registry.send_error(
                    conn,
                    ErrorCode::NotRegistered,
                    "register_gamer before sending task_request",
                    Some(m.task_id),
                ),
            },
            Message::TaskResult(m) => match role {
                Role::Peer(peer_id) => {
                    let kind = read
                        .kind
                        .unwrap_or(p2c2r_protocol::inspect::ResultKind::Error { resync: false, over_budget: false });
                    self.complete(state, conn, &peer_id, m, kind, read.digest)
                }
                Role::Gamer(_) => state.registry.send_error(
                    conn,
                    ErrorCode::WrongRole,
                    "gamers cannot send task results",
                    Some(m.task_id),
                ),
                Role::Unregistered => state.registry.send_error(
                    conn,
                    ErrorCode::NotRegistered,
                    "register_peer before sending task_result",
                    Some(m.task_id),
                ),
            },
            Message::Stats(_) => {
                if self.config.identity.auth_file.is_some()
                    && state.registry.credential(conn).map(|c| c.identity.role) != Some(CredentialRole::Operator)
                {
                    return state.registry.send_error(
                        conn,
                        ErrorCode::Unauthorized,
                        "stats need an operator credential",
                        Some("stats".into()),
                    );
                }
                let report = state.stats();
                state.registry.send(conn, Message::StatsReport(report));
            }
            Message::Error(e) => debug!(conn, code = %e.code, message = e.message, "client reported an error"),
            other @ (Message::RegistrationAck(_)
            | Message::TaskAssignment(_)
            | Message::StatsReport(_)
            | Message::SessionStatus(_)) => {
                let msg_type = other.msg_type();
                state.registry.send_error(
                    conn,
                    ErrorCode::WrongRole,
                    format!("{msg_type} is sent by the coordinator, not to it"),
                    Some(msg_type.to_owned()),
                )
            }
        }
    }

    /// Sends a `shutting_down` error to every connection.
    pub fn announce_shutdown(&self) {
        let mut state = self.lock();
        let conns: Vec<ConnId> = state.registry.conns.keys().copied().collect();
        for conn in conns {
            state.registry.send_error(conn, ErrorCode::ShuttingDown, "the coordinator is shutting down", None);
        }
    }

    /// Refuses a message of `conn` (`refers_to` names it) with an error (used by the
    /// connection layer, for a registration the fleet refused).
    pub fn refuse(&self, conn: ConnId, code: ErrorCode, message: impl Into<String>, refers_to: &str) {
        self.lock().registry.send_error(conn, code, message, Some(refers_to.to_owned()));
    }

    /// Queues an error for a connection (used by the connection layer).
    pub fn send_error(&self, conn: ConnId, code: ErrorCode, message: impl Into<String>) {
        self.lock().registry.send_error(conn, code, message, None);
    }
}

/// The scheduler's settings: the coordinator's sections as they are, and what follows from
/// the others.
fn scheduler_config(config: &Config) -> SchedulerConfig {
    SchedulerConfig {
        scheduling: config.scheduling.clone(),
        reputation: config.reputation.clone(),
        replication: config.replication.clone(),
        // Never more assignments in flight than a peer's outbound queue holds (half of
        // it, leaving room for pings and errors), whatever the peer declares.
        max_tasks_per_peer: (config.connections.send_queue_frames / 2).clamp(1, u32::MAX as usize) as u32,
        max_bytes_per_peer: (config.connections.send_queue_bytes / 2).max(1),
        disputes: crate::disputes::DisputeConfig {
            partners_to_quarantine: config.reputation.dispute_partners_to_quarantine,
            memory: config.reputation.quarantine_duration,
            ..Default::default()
        },
        // With credentials on (an internet deployment), a peer no audit can check
        // serves no session unless the operator allows it.
        sessions_need_auditable_peers: config.identity.auth_file.is_some()
            && !config.replication.allow_unauditable_peers,
        ..SchedulerConfig::default()
    }
}
