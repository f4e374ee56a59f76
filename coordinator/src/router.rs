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
    codec, inspect::ResultKind, limits, to_payload,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Config;
use crate::auth::{Credential, Credentials, Role as CredentialRole};
use crate::disputes::Party;
use crate::fleet::{ConnSample, FleetState, LatencyWindow};
use crate::ids::{Claim, IdBook, Kind};
use crate::metrics::Metrics;
use crate::observe::StreamWatch;
pub use crate::outbound::Outbound;
use crate::outbound::{AssignmentFrame, OutboundTx, SendError};
use crate::ratelimit::{Rate, TokenBucket};
use crate::replication::{self, CopyOutcome, Decision, Delivery, Group, Logged, ReplicationConfig};
use crate::scheduler::{
    Answer, CompleteError, Completion, Dispatch, Expired, FailReason, Failure, PeerSpec, Scheduler, SchedulerConfig,
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
    /// On a binary connection: set when a peer registers asking for chunked frames
    /// ([`p2c2r_protocol::chunk`]); its writer and reader then chunk and reassemble.
    pub chunked: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The outcome of binding a registration to a connection.
enum Binding {
    /// The id is now this connection's: a new registration, or the same client taking
    /// its id back (`resumed`).
    New {
        /// The id was held or reserved and the registration proved it owns it.
        resumed: bool,
    },
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
    /// The credential it presented, verified (`None` in open mode).
    pub credential: Option<Credential>,
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
    /// The client closed it with a close frame: a clean goodbye. A gamer with nothing
    /// pending releases its id at once instead of reserving it for the resume grace (a
    /// gamer run again under a fixed id gets it back).
    Farewell,
    /// The socket failed or ended without a goodbye, or the coordinator closed it.
    Closed,
    /// It was silent past the heartbeat timeout.
    Evicted,
}

struct State {
    /// Tasks with their payloads, shared (by reference count) with the frames that
    /// carry them.
    sched: Scheduler<p2c2r_protocol::Payload>,
    conns: HashMap<ConnId, Conn>,
    peers: HashMap<String, ConnId>,
    gamers: HashMap<String, ConnId>,
    next_conn: ConnId,
    peers_evicted: u64,
    gamers_evicted: u64,
    /// Absent gamers whose slot went to a newcomer ([`State::evict_absent_squatter`]).
    absent_evicted: u64,
    errors_sent: u64,
    metrics: Arc<Metrics>,
    /// End-to-end latencies since the operator's view last took them.
    latencies: LatencyWindow,
    /// Who owns which id: resume secrets, reservations, aliases.
    ids: IdBook,
    /// Gamers whose connection closed within the resume grace: the results and answers
    /// that arrived for them meanwhile.
    detached: HashMap<String, Detached>,
    /// Each registered (or detached) gamer's rate limits.
    limits: HashMap<String, GamerLimits>,
    /// Peer ids quarantined, and until when (see `Config::quarantine_after_misses`).
    quarantine: HashMap<String, Instant>,
    peers_quarantined: u64,
    /// Where quarantines outlive the process, when configured.
    reputation: Option<crate::reputation::ReputationDb>,
    /// What departed peers had earned (see [`State::remember_standing`]).
    standings: crate::reputation::Standings,
    /// Bytes kept at most for one detached gamer (its pending-bytes budget).
    resume_budget: usize,
    /// Bytes kept for all detached gamers together, and the most allowed (a quarter of
    /// `max_pending_bytes`): gamers that leave one after another cannot make the results
    /// of their tasks pile up.
    kept_bytes: usize,
    max_kept_bytes: usize,
    /// Replicated and audited physics sessions, by gamer and session.
    groups: HashMap<String, HashMap<String, GroupEntry>>,
    /// Peers proven to lie, to quarantine once the decision that found them is done.
    /// Peers to quarantine once the current frame is handled, with why: outvoted, or in
    /// unsettled disputes with several partners.
    liars: Vec<(String, &'static str)>,
    replication: ReplicationConfig,
    /// Payload bytes all groups' logs hold, and the most allowed.
    log_bytes: usize,
    max_log_bytes: usize,
    /// Drawn at start: which sessions are audited cannot be predicted from their ids.
    audit_salt: u64,
    replica_counters: ReplicaCounters,
    /// Groups one gamer may have (its `max_sessions_per_gamer`).
    max_groups_per_gamer: usize,
}

/// A replicated session and what its gamer was last told about it.
struct GroupEntry {
    group: Group,
    told: Option<p2c2r_protocol::SessionStatus>,
}

#[derive(Default)]
struct ReplicaCounters {
    ticks_compared: u64,
    disagreements: u64,
    liars: u64,
    corrections: u64,
    started: u64,
    unsettled: u64,
    dispute_quarantines: u64,
    /// Unreplicated physics sessions started, and of those the audited ones.
    unreplicated_started: u64,
    audited: u64,
}

/// What waits for a gamer that may resume.
#[derive(Default)]
struct Detached {
    /// The address (IPv6: /64) it left from: the address its slot is charged to.
    address: Option<std::net::IpAddr>,
    /// When it left.
    since: Option<Instant>,
    frames: Vec<Outbound>,
    bytes: usize,
    /// Tasks whose result or answer did not fit the budgets and was dropped: on resume
    /// each gets an error instead (never silence).
    lost: Vec<String>,
}

/// A gamer's rate limits (see [`crate::ratelimit`]).
struct GamerLimits {
    tasks: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    sessions: Option<TokenBucket>,
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
            quarantine_after_misses: config.quarantine_after_misses,
            replicas_on_distinct_hosts: config.replicas_on_distinct_hosts,
            quarantine_min_gamers: config.quarantine_min_gamers,
            established_after_answers: config.established_after_answers,
            max_resyncs_in_a_row: config.max_resyncs_in_a_row,
            disputes: crate::disputes::DisputeConfig {
                partners_to_quarantine: config.dispute_partners_to_quarantine,
                memory: config.quarantine_duration,
                ..Default::default()
            },
            // With credentials on (an internet deployment), a peer no audit can check
            // serves no session unless the operator allows it.
            sessions_need_auditable_peers: config.auth_file.is_some() && !config.allow_unauditable_peers,
            ..SchedulerConfig::default()
        });
        let replication = ReplicationConfig {
            replicas: config.replicas.clamp(1, replication::MAX_REPLICAS),
            audit_fraction: config.audit_fraction.clamp(0.0, 1.0),
            strict: config.strict_replication,
            log_ticks: config.replica_log_ticks,
            log_bytes: config.replica_log_bytes,
        };
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
                ids: IdBook::new(config.resume_grace),
                detached: HashMap::new(),
                absent_evicted: 0,
                limits: HashMap::new(),
                resume_budget: config.max_pending_bytes_per_gamer,
                kept_bytes: 0,
                quarantine: HashMap::new(),
                peers_quarantined: 0,
                reputation: None,
                standings: crate::reputation::Standings::new(MAX_QUARANTINED),
                max_kept_bytes: (config.max_pending_bytes / 4).max(1),
                groups: HashMap::new(),
                liars: Vec::new(),
                replication,
                log_bytes: 0,
                max_log_bytes: config.max_replica_log_bytes,
                audit_salt: fastrand::u64(..),
                replica_counters: ReplicaCounters::default(),
                // Each group takes a scheduler session per replica (and one while a
                // replacement or tie-breaker starts).
                max_groups_per_gamer: (config.max_sessions_per_gamer / (usize::from(config.replicas.max(2)) + 1))
                    .max(1),
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

    /// After the credentials changed: closes every connection whose credential they no
    /// longer accept (its id is freed at once: the credential that could resume it is
    /// gone). Returns how many were closed.
    pub fn revalidate(&self, credentials: &Credentials) -> usize {
        let mut state = self.lock();
        let refused: Vec<ConnId> = state
            .conns
            .iter()
            .filter(|(_, c)| {
                c.info.as_ref().and_then(|i| i.credential.as_ref()).is_some_and(|cr| !credentials.still_valid(cr))
            })
            .map(|(id, _)| *id)
            .collect();
        let now = Instant::now();
        for &conn in &refused {
            state.send_error(conn, ErrorCode::Unauthorized, "credential revoked", None);
            let Some(c) = state.conns.get_mut(&conn) else { continue };
            // It loses its role at once (no more tasks, results or registrations), not
            // when its close frame gets through: it may be reading slowly on purpose.
            let role = std::mem::replace(&mut c.role, Role::Unregistered);
            let kill = c.handle.kill.clone();
            if c.handle.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "credential revoked".into())).is_err() {
                kill.cancel();
            } else {
                // The error and the close get a moment to be written; then it goes anyway.
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            tokio::time::sleep(REVOKED_FLUSH).await;
                            kill.cancel();
                        });
                    }
                    Err(_) => kill.cancel(),
                }
            }
            match role {
                Role::Peer(id) => {
                    if state.peers.get(&id) == Some(&conn) {
                        state.peers.remove(&id);
                        state.retire_replicas_on(&id);
                        state.remember_standing(&id);
                        state.sched.remove_peer(&id);
                    }
                    state.ids.forget(Kind::Peer, &id);
                }
                Role::Gamer(id) => {
                    if state.gamers.get(&id) == Some(&conn) {
                        state.gamers.remove(&id);
                        state.forget_gamer(&id);
                    }
                    // Its record too: nothing could resume it, and no sweep would find it.
                    state.ids.forget(Kind::Gamer, &id);
                }
                Role::Unregistered => {}
            }
        }
        if !refused.is_empty() {
            state.dispatch(now);
            self.deadlines_changed.notify_one();
        }
        if !refused.is_empty() {
            crate::info_limited!(
                "router: credentials revoked",
                closed = refused.len(),
                "closed connections whose credential was revoked"
            );
        }
        refused.len()
    }

    /// Frees the ids whose resume grace passed by `now`; a gamer's tasks and kept results
    /// are dropped with it.
    pub fn sweep(&self, now: Instant) {
        let mut state = self.lock();
        state.quarantine.retain(|_, until| *until > now);
        state.sched.disputes_mut().sweep(now);
        for (kind, id) in state.ids.sweep(now) {
            if kind == Kind::Gamer && !state.gamers.contains_key(&id) {
                let dropped = state.forget_gamer(&id);
                crate::info_limited!(
                    "router: gamer gone",
                    gamer_id = id,
                    dropped,
                    "gamer did not resume in time; its tasks are dropped"
                );
            }
        }
    }

    /// Bytes of results and answers kept now for gamers that may resume.
    pub fn kept_bytes(&self) -> usize {
        self.lock().kept_bytes
    }

    /// Ids held or reserved now.
    pub fn ids_known(&self) -> usize {
        self.lock().ids.len()
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

    /// The audit fraction configured, and the one achieved since start (audited over
    /// unreplicated physics sessions started; 0 before any started).
    pub fn audit_fractions(&self) -> (f64, f64) {
        let state = self.lock();
        let c = &state.replica_counters;
        let achieved = if c.unreplicated_started == 0 { 0.0 } else { c.audited as f64 / c.unreplicated_started as f64 };
        (state.replication.audit_fraction, achieved)
    }

    /// Absent gamers now holding a slot (work pending), and absent gamers whose slot went
    /// to a newcomer since start.
    pub fn absent_gamers(&self) -> (usize, u64) {
        let state = self.lock();
        (state.detached.len(), state.absent_evicted)
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
        let address = entry.info.as_ref().map(|i| crate::admission::address_key(i.addr.ip()));
        match entry.role {
            Role::Unregistered => {}
            Role::Peer(peer_id) => {
                if why == Departure::Evicted {
                    state.peers_evicted += 1;
                }
                // A replaced registration already moved on; only the current one counts.
                if state.peers.get(&peer_id) == Some(&conn) {
                    state.peers.remove(&peer_id);
                    // Even after a goodbye a peer's id stays reserved for the grace: the
                    // standing it earned goes back only to a registration proving the id is
                    // its own, and a restarting peer proves it with the secret its state file
                    // kept (so it is never refused its own id).
                    state.ids.release(Kind::Peer, &peer_id, Instant::now());
                    state.retire_replicas_on(&peer_id);
                    state.remember_standing(&peer_id);
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
                    let idle = state.sched.gamer_view(&gamer_id).is_none_or(|g| g.pending == 0);
                    if why == Departure::Farewell && idle {
                        // A clean goodbye with nothing pending: the id is free at once.
                        state.ids.forget(Kind::Gamer, &gamer_id);
                        let dropped = state.forget_gamer(&gamer_id);
                        crate::info_limited!("router: gamer left", gamer_id, dropped, ?why, "gamer left");
                    } else if state.ids.release(Kind::Gamer, &gamer_id, Instant::now()) {
                        // Its id is reserved for it either way. With work pending, its tasks
                        // keep running, their results wait for it, and it holds its gamer
                        // slot (charged to the address it left from); with nothing pending
                        // it holds no slot: it may resume, but keeps nobody out meanwhile.
                        if !idle {
                            let since = Some(Instant::now());
                            state.detached.insert(gamer_id.clone(), Detached { address, since, ..Detached::default() });
                        }
                        crate::info_limited!("router: gamer detached", gamer_id, ?why, idle, "gamer left; may resume");
                    } else {
                        let dropped = state.forget_gamer(&gamer_id);
                        crate::info_limited!("router: gamer left", gamer_id, dropped, ?why, "gamer left");
                    }
                }
            }
        }
    }

    /// Takes the reputation database and what it kept from before a restart: quarantines,
    /// and departed peers' standings (read once at start, before any connection).
    pub fn restore_reputation(&self, db: crate::reputation::ReputationDb, kept: crate::reputation::Kept) {
        let mut state = self.lock();
        let now = Instant::now();
        for q in kept.quarantined {
            insert_bounded(&mut state.quarantine, &q.peer_id, now + q.left, MAX_QUARANTINED);
        }
        // The least recently written first, so the table forgets them in the same order.
        for s in kept.standings {
            state.standings.remember(&s.peer_id, s.standing, now.checked_sub(s.age).unwrap_or(now));
        }
        state.reputation = Some(db);
    }

    /// Writes what the reputation database has queued and closes it (at shutdown), with
    /// the standings of the peers still connected (they leave with the coordinator);
    /// quarantines and standings from now on are kept in memory only.
    pub fn close_reputation(&self) {
        let db = {
            let mut state = self.lock();
            let live: Vec<String> = state.peers.keys().cloned().collect();
            for peer_id in &live {
                state.remember_standing(peer_id);
            }
            state.reputation.take()
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

    /// Handles one binary frame from a connection that negotiated binary frames. Its
    /// payload is never parsed or re-encoded: it is copied once into a buffer of its own
    /// size (as a slice of the connection's read buffer it would keep that whole buffer
    /// alive while queued: a few bytes of task could hold megabytes), then shared by the
    /// scheduler and every frame that carries it.
    pub fn handle_binary_frame(&self, conn: ConnId, frame: bytes::Bytes) {
        self.handle_decoded(conn, decode_binary(frame));
    }

    /// Handles a frame decoded by [`decode_text`] (or a binary frame's decoding).
    pub fn handle_decoded(&self, conn: ConnId, decoded: Decoded) {
        let Decoded { message: decoded, kind } = decoded;
        let mut state = self.lock();
        let message = match decoded {
            Ok(message) => message,
            Err((code, message, refers_to)) => {
                debug!(conn, error = %message, "bad frame");
                state.send_error(conn, code, message, refers_to);
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
                Role::Peer(peer_id) => {
                    let kind = kind
                        .unwrap_or(p2c2r_protocol::inspect::ResultKind::Error { resync: false, over_budget: false });
                    self.complete(&mut state, conn, &peer_id, m, kind)
                }
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
                if self.config.auth_file.is_some()
                    && state.credential(conn).map(|c| c.identity.role) != Some(CredentialRole::Operator)
                {
                    return state.send_error(
                        conn,
                        ErrorCode::Unauthorized,
                        "stats need an operator credential",
                        Some("stats".into()),
                    );
                }
                let report = state.stats();
                state.send(conn, Message::StatsReport(report));
            }
            Message::Error(e) => debug!(conn, code = %e.code, message = e.message, "client reported an error"),
            other @ (Message::RegistrationAck(_)
            | Message::TaskAssignment(_)
            | Message::StatsReport(_)
            | Message::SessionStatus(_)) => {
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

    /// Binds a registering id to `conn`. The id must be the connection's credential's
    /// (with credentials); one held by a live connection, or reserved after one closed, is
    /// taken over only by a registration that proves it is the same client (see
    /// [`crate::ids`]). Returns `None` when the registration is refused (an error has been
    /// sent), and whether this connection had already registered exactly so.
    fn bind(
        &self,
        state: &mut State,
        conn: ConnId,
        role: &Role,
        wanted: Role,
        secret: Option<&str>,
    ) -> Option<Binding> {
        let (field, msg_type, id, kind, needed) = match &wanted {
            Role::Peer(id) => ("peer_id", "register_peer", id, Kind::Peer, CredentialRole::Peer),
            Role::Gamer(id) => ("gamer_id", "register_gamer", id, Kind::Gamer, CredentialRole::Gamer),
            Role::Unregistered => return None,
        };
        if let Err(reason) = check_id(field, id) {
            state.send_error(conn, ErrorCode::InvalidMessage, reason, Some(msg_type.into()));
            return None;
        }
        let same_credential = if self.config.auth_file.is_some() {
            let refusal = match state.credential(conn).map(|c| &c.identity) {
                Some(identity) if identity.role == needed && identity.id == *id => None,
                Some(identity) => Some(format!(
                    "this connection's credential is for {} {:?}; it cannot register as {needed} {id:?}",
                    identity.role, identity.id
                )),
                None => Some("credentials required".to_owned()),
            };
            if let Some(reason) = refusal {
                state.send_error(conn, ErrorCode::Unauthorized, reason, Some(msg_type.into()));
                return None;
            }
            true
        } else {
            false
        };
        if *role == wanted {
            return Some(Binding::Again);
        }
        if *role != Role::Unregistered {
            let reason = "this connection is already registered; open a new one";
            state.send_error(conn, ErrorCode::AlreadyRegistered, reason, Some(msg_type.into()));
            return None;
        }
        let live = if kind == Kind::Peer { state.peers.get(id) } else { state.gamers.get(id) }.copied();
        let resumed = match state.ids.claim(kind, id, live.is_some(), secret, same_credential, Instant::now()) {
            Claim::Refused => {
                crate::info_limited!("router: id in use", conn, id, msg_type, "registration of an id in use refused");
                let reason = format!(
                    "{field} {id:?} is in use: taking it over needs the resume_secret of its last registration"
                );
                state.send_error(conn, ErrorCode::IdInUse, reason, Some(msg_type.into()));
                return None;
            }
            Claim::Proven => true,
            Claim::Free => {
                // An expired reservation not swept yet: what it held goes now, not to
                // whoever registers the id next.
                if kind == Kind::Gamer && state.detached.contains_key(id) {
                    state.forget_gamer(id);
                }
                false
            }
        };
        let ids = if kind == Kind::Peer { &mut state.peers } else { &mut state.gamers };
        if let Some(old) = ids.insert(id.clone(), conn) {
            crate::info_limited!(
                "router: id resumed",
                conn,
                id,
                msg_type,
                "id taken back by its owner; closing its old connection"
            );
            state.replace(old, &format!("this {field} registered again from another connection"));
        }
        if let Some(c) = state.conns.get_mut(&conn) {
            c.role = wanted;
            c.since = Instant::now();
        }
        Some(Binding::New { resumed })
    }

    fn register_peer(&self, state: &mut State, conn: ConnId, role: &Role, m: RegisterPeer) {
        if let Some(until) = state.quarantine.get(&m.peer_id)
            && *until > Instant::now()
        {
            let left = until.saturating_duration_since(Instant::now()).as_secs();
            let reason = format!("peer {:?} is quarantined ({left} s left)", m.peer_id);
            state.send_error(conn, ErrorCode::Quarantined, reason, Some("register_peer".into()));
            if let Some(entry) = state.conns.get(&conn) {
                let _ = entry.handle.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "quarantined".into()));
            }
            return;
        }
        // Capabilities are copied into the scheduler and the operator's view: bounded.
        if let Some(types) = &m.capabilities.task_types {
            let bad = types.len() > limits::MAX_TASK_TYPES_PER_PEER
                || types.iter().any(|t| t.is_empty() || t.len() > limits::MAX_ID_BYTES);
            if bad {
                let reason = format!(
                    "capabilities.task_types must hold at most {} non-empty names of at most {} bytes",
                    limits::MAX_TASK_TYPES_PER_PEER,
                    limits::MAX_ID_BYTES
                );
                return state.send_error(conn, ErrorCode::InvalidMessage, reason, Some("register_peer".into()));
            }
        }
        if let Some(d) = &m.capabilities.determinism
            && !d.is_within_limits()
        {
            let reason = format!(
                "capabilities.determinism must hold non-empty strings of at most {} bytes and at most {} features",
                limits::MAX_ID_BYTES,
                limits::MAX_DETERMINISM_FEATURES
            );
            return state.send_error(conn, ErrorCode::InvalidMessage, reason, Some("register_peer".into()));
        }
        // Whether the registration proved it owns the id: a credential naming it, or the
        // resume secret of its last registration (see the standing restored below).
        let owner = match self.bind(state, conn, role, Role::Peer(m.peer_id.clone()), m.resume_secret.as_deref()) {
            None => return,
            Some(Binding::Again) => {
                let secret = state.ids.bind(Kind::Peer, &m.peer_id);
                let chunked = state.take_chunks(conn, m.capabilities.chunked_frames && self.config.chunked_frames);
                return state.send(conn, self.ack(Some(m.peer_id), None, secret, chunked));
            }
            Some(Binding::New { resumed }) => resumed || self.config.auth_file.is_some(),
        };
        let caps = &m.capabilities;
        let capacity = caps.max_concurrent_tasks.or(caps.cpu_cores).unwrap_or(1).max(1);
        let task_types =
            caps.task_types.as_ref().filter(|t| !t.is_empty()).map(|t| t.iter().cloned().collect::<HashSet<_>>());
        crate::info_limited!("router: peer registered", peer_id = m.peer_id, capacity, task_types = ?caps.task_types, "peer registered");
        // A setup the operator does not vouch for is never compared, so never a replica.
        let accepted = |d: &&p2c2r_protocol::Determinism| {
            let ok = self.config.accepted_setups.is_empty() || self.config.accepted_setups.contains(&d.label());
            if !ok {
                crate::info_limited!(
                    "router: setup not accepted",
                    peer_id = m.peer_id,
                    setup = d.label(),
                    "peer's determinism setup is not an accepted one: it serves no replicated session"
                );
            }
            ok
        };
        let setup = caps.determinism.as_ref().filter(accepted).map(PeerSpec::setup_of);
        // A host is a network (IPv4 /24, IPv6 /48 by default): one network's peers are one
        // vote and never two replicas of one session.
        let host = state.conns.get(&conn).and_then(|c| c.info.as_ref()).map(|i| self.network_of(i.addr.ip()));
        // add_peer re-queues the work of a same-id registration it replaces.
        state.retire_replicas_on(&m.peer_id);
        state.remember_standing(&m.peer_id);
        state.sched.add_peer(m.peer_id.clone(), PeerSpec { task_types, capacity, setup, host });
        if self.config.auth_file.is_some()
            && !self.config.allow_unauditable_peers
            && !state.sched.is_auditable(&m.peer_id)
        {
            crate::info_limited!(
                "router: peer not auditable",
                peer_id = m.peer_id,
                "no peer of another network shares its determinism setup (or it declares none): it serves no \
                 session until one does (--allow-unauditable-peers lets it); sessionless tasks it runs"
            );
        }
        // The id starts where it left off, not afresh (see State::remember_standing). What
        // it lost (a streak of misses) sticks to the id whoever registers it; what it gained
        // (a window grown past a new peer's, and the successful answers that make it
        // established) goes back only to a registration that proves it owns the id: in open
        // mode anyone may take a free id, and must not inherit capacity or trust it has not
        // earned.
        // Its age counts from its first registration (kept with its standing).
        let now_ms = crate::reputation::now_ms();
        let fresh = crate::scheduler::Standing { since_ms: now_ms, ..state.sched.fresh_standing() };
        let standing = match state.standings.recall(&m.peer_id, Instant::now()) {
            Some(mut standing) => {
                if !owner {
                    standing.window = standing.window.min(fresh.window);
                    standing.verified = 0;
                    standing.agreements = 0;
                    standing.since_ms = now_ms;
                }
                if standing.since_ms == 0 {
                    standing.since_ms = now_ms;
                }
                debug!(peer_id = m.peer_id, ?standing, owner, "peer's standing restored");
                standing
            }
            None => fresh,
        };
        state.sched.restore_standing(&m.peer_id, standing);
        let secret = state.ids.bind(Kind::Peer, &m.peer_id);
        let chunked = state.take_chunks(conn, m.capabilities.chunked_frames && self.config.chunked_frames);
        state.send(conn, self.ack(Some(m.peer_id), None, secret, chunked));
        state.dispatch(Instant::now());
        self.deadlines_changed.notify_one();
    }

    fn register_gamer(&self, state: &mut State, conn: ConnId, role: &Role, m: RegisterGamer) {
        // Gamers never take the slots kept for peers (a re-registration of a live id
        // replaces a slot rather than taking one).
        let gamer_slots = self.config.max_connections.saturating_sub(self.config.reserved_peer_slots).max(1);
        // Gamers away within their resume grace with work pending still hold slots.
        let holding = state.gamers.len() + state.detached.len();
        let newcomer = *role == Role::Unregistered
            && !state.gamers.contains_key(&m.gamer_id)
            && !state.detached.contains_key(&m.gamer_id);
        if newcomer && holding >= gamer_slots && state.evict_absent_squatter() {
            // A place was freed: the newcomer is served, not refused.
        } else if newcomer && holding >= gamer_slots {
            let reason = format!("the coordinator serves its most gamers ({gamer_slots}); try again later");
            state.send_error(conn, ErrorCode::LimitExceeded, reason, Some("register_gamer".into()));
            if let Some(entry) = state.conns.get(&conn) {
                let _ = entry.handle.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "gamer slots full".into()));
            }
            return;
        }
        let resumed = match self.bind(state, conn, role, Role::Gamer(m.gamer_id.clone()), m.resume_secret.as_deref()) {
            None => return,
            Some(Binding::Again) => true,
            Some(Binding::New { resumed }) => resumed,
        };
        // A gamer taking its id back keeps its pending tasks and sessions; their results
        // come here, after the ones that arrived while it was away.
        state.sched.add_gamer(m.gamer_id.clone());
        if let Some(info) = state.conns.get(&conn).and_then(|c| c.info.as_ref()) {
            let network = self.network_of(info.addr.ip());
            state.sched.set_gamer_origin(&m.gamer_id, network.to_string());
        }
        if !resumed || !state.limits.contains_key(&m.gamer_id) {
            let limits = self.gamer_limits(Instant::now());
            state.limits.insert(m.gamer_id.clone(), limits);
        }
        crate::info_limited!("router: gamer registered", gamer_id = m.gamer_id, resumed, "gamer registered");
        let secret = state.ids.bind(Kind::Gamer, &m.gamer_id);
        state.send(conn, self.ack(None, Some(m.gamer_id.clone()), secret, false));
        if let Some(waiting) = state.take_detached(&m.gamer_id) {
            if !waiting.lost.is_empty() {
                crate::warn_limited!(
                    "router: resume lost results",
                    gamer_id = m.gamer_id,
                    lost = waiting.lost.len(),
                    "results that arrived while the gamer was away did not fit the byte budget"
                );
            }
            let lost = waiting.lost.into_iter().map(|task_id| Outbound::message(lost_result(task_id)));
            for frame in waiting.frames.into_iter().chain(lost) {
                let _ = state.conns.get(&conn).map(|c| c.handle.tx.send_exempt(frame));
            }
        }
    }

    /// The network an address belongs to (`host_prefix_v4`, `host_prefix_v6`): one origin
    /// for quarantine, one host for replicas and their votes.
    fn network_of(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        crate::admission::network_of(ip, self.config.host_prefix_v4, self.config.host_prefix_v6)
    }

    fn gamer_limits(&self, now: Instant) -> GamerLimits {
        let c = &self.config;
        GamerLimits {
            tasks: c.max_tasks_per_second.map(|n| TokenBucket::new(Rate::per_second(f64::from(n), 2.0), now)),
            bytes: c.max_task_bytes_per_second.map(|n| TokenBucket::new(Rate::per_second(n as f64, 2.0), now)),
            sessions: c.max_new_sessions_per_second.map(|n| {
                let rate = Rate { per_second: f64::from(n), burst: (c.max_sessions_per_gamer.max(1)) as f64 };
                TokenBucket::new(rate, now)
            }),
        }
    }

    fn ack(&self, peer_id: Option<String>, gamer_id: Option<String>, resume_secret: String, chunked: bool) -> Message {
        Message::RegistrationAck(RegistrationAck {
            peer_id,
            gamer_id,
            status: "registered".into(),
            heartbeat_interval_ms: Some(self.config.heartbeat_interval.as_millis() as u64),
            max_frame_bytes: Some(self.config.max_frame_bytes),
            resume_secret: Some(resume_secret),
            chunked_frames: chunked,
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
        if let Some(reason) = self.too_large_for_json(&m.task_data) {
            return state.send_error(conn, ErrorCode::LimitExceeded, reason, Some(m.task_id));
        }
        if let Some(reason) = state.over_rate(gamer_id, &m, Instant::now()) {
            return state.send_error(conn, ErrorCode::RateLimited, reason, Some(m.task_id));
        }
        let deadline = m.deadline_ms.map_or(self.config.default_task_deadline, Duration::from_millis);
        let task_id = m.task_id.clone();
        if m.task_type == p2c2r_protocol::task_types::PHYSICS_STEP_FULL {
            let reason = "physics_step_full is sent by the coordinator only (to correct a replicated session)";
            return state.send_error(conn, ErrorCode::InvalidMessage, reason, Some(m.task_id));
        }
        if let Some(session) = m.session_id.as_deref()
            && m.task_type != p2c2r_protocol::task_types::PHYSICS_STEP
            && state.group_mut(gamer_id, session).is_some()
        {
            // It would reach one replica's world only, and set it apart from the others.
            let reason = format!("session {session:?} is a replicated physics session: only physics_step tasks");
            return state.send_error(conn, ErrorCode::InvalidMessage, reason, Some(m.task_id));
        }
        if let Some(session) = m.session_id.as_deref()
            && m.task_type == p2c2r_protocol::task_types::PHYSICS_STEP
            && state.replicated(gamer_id, session)
        {
            let session = session.to_owned();
            let result = state.submit_replicated(gamer_id, &session, m, deadline);
            return self.submitted(state, conn, gamer_id, task_id, result);
        }
        let submission = Submission {
            task_id: m.task_id,
            task_type: m.task_type,
            session_id: m.session_id,
            deadline,
            bytes: m.task_data.len(),
            payload: m.task_data,
            siblings: Vec::new(),
            setup: None,
        };
        let result = state.sched.submit(gamer_id, submission, Instant::now()).map(|_| ());
        self.submitted(state, conn, gamer_id, task_id, result);
    }

    /// Dispatches after a submission, or tells the gamer why it was refused.
    fn submitted(
        &self,
        state: &mut State,
        conn: ConnId,
        gamer_id: &str,
        task_id: String,
        result: Result<(), SubmitError>,
    ) {
        match result {
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

    /// Why a binary payload cannot travel to a JSON connection (base64 makes it a third
    /// larger, and a frame over the limit would cost that connection), if it cannot.
    fn too_large_for_json(&self, payload: &p2c2r_protocol::Payload) -> Option<String> {
        let max = self.config.max_frame_bytes;
        let wrapped = payload.json_len().saturating_add(FRAME_ENVELOPE_BYTES);
        (payload.is_binary() && wrapped > max).then(|| {
            format!(
                "a binary payload of {} bytes takes {wrapped} bytes base64-wrapped for a JSON connection, more than the {max}-byte frame limit; at most {} bytes",
                payload.len(),
                max_binary_for_json(max)
            )
        })
    }

    fn complete(&self, state: &mut State, conn: ConnId, peer_id: &str, mut m: TaskResult, mut kind: ResultKind) {
        let refused_here = self.too_large_for_json(&m.result).map(|reason| {
            // The gamer may speak JSON: answer with the error instead (its decoder did not
            // see this result, so it resyncs).
            let error = TaskError::new(ErrorCode::LimitExceeded, format!("the peer's result was refused: {reason}"));
            m.result = to_payload(&error.with_resync()).expect("task errors always serialize");
            kind = ResultKind::Error { resync: true, over_budget: true };
        });
        let answer = match kind {
            ResultKind::Success => Answer::Success,
            // Any error a peer gives is worth one try elsewhere, `limit_exceeded` included:
            // a request truly over the work budgets costs one more refusal, and a peer
            // answering everything `limit_exceeded` is found out by the success elsewhere.
            // A result the coordinator refused itself would only be refused again.
            ResultKind::Error { resync, .. } => Answer::Error { retry_elsewhere: refused_here.is_none(), resync },
        };
        match state.sched.complete(peer_id, &m.task_id, answer, Instant::now()) {
            Ok(Completion::Deliver { gamer, task_id, attempt, submitted_at, assigned_at, session_id })
                if session_id.as_deref().is_some_and(|s| state.group_mut(&gamer, s).is_some()) =>
            {
                let now = Instant::now();
                state.metrics.peer_task_duration.observe(now.saturating_duration_since(assigned_at).as_secs_f64());
                let session = session_id.expect("checked above");
                let digest = (kind == p2c2r_protocol::inspect::ResultKind::Success)
                    .then(|| replication::answer_digest(&m.result));
                // Where replicas must be on distinct hosts, a host is one vote however many
                // peers it runs.
                let voter = match self.config.replicas_on_distinct_hosts {
                    true => state
                        .conns
                        .get(&conn)
                        .and_then(|c| c.info.as_ref())
                        .map_or_else(|| peer_id.to_owned(), |i| self.network_of(i.addr.ip()).to_string()),
                    false => peer_id.to_owned(),
                };
                let outcome = CopyOutcome::Answer {
                    peer: peer_id.to_owned(),
                    voter,
                    payload: m.result,
                    kind,
                    digest,
                    attempt,
                    // Weight needs verified work, not only claimed: established (its
                    // successes) and seen agreeing with another network's peer on a
                    // compared tick within the dispute memory; then it grows with the
                    // compared ticks it agreed on and its age.
                    weight: state.sched.standing(peer_id).map_or(0, |standing| {
                        let established = state.sched.is_established(peer_id);
                        let agreed = state.sched.disputes().has_agreed(peer_id);
                        crate::replication::vote_weight(&standing, established, agreed, crate::reputation::now_ms())
                    }),
                };
                state.copy_outcome(&gamer, &session, &task_id, outcome, Some(submitted_at));
                if state.take_quarantined_liars(self.config.quarantine_duration) {
                    self.deadlines_changed.notify_one();
                }
            }
            Ok(Completion::Deliver { gamer, task_id, attempt, submitted_at, assigned_at, .. }) => {
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
                } else {
                    let task_id = match &forward {
                        Message::TaskResult(r) => r.task_id.clone(),
                        _ => String::new(),
                    };
                    state.keep_for_resume(&gamer, &task_id, Outbound::message(forward));
                }
            }
            Ok(Completion::Orphaned) => debug!(peer_id, assignment = m.task_id, "result for a departed gamer dropped"),
            Ok(Completion::Retried) => {
                debug!(peer_id, assignment = m.task_id, "error answer; the task gets one try on another peer")
            }
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
        // This answer may have confirmed a miss that completes another peer's streak: that
        // peer is quarantined now, not at the next passed deadline (there may be none).
        let now = Instant::now();
        for missed in state.sched.take_quarantined() {
            // Unless this same answer already had it quarantined (outvoted by replicas).
            if state.quarantine.get(&missed).is_none_or(|until| *until <= now) {
                state.quarantine_peer(&missed, now + self.config.quarantine_duration, MISSED_DEADLINES);
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
        for peer_id in state.sched.take_quarantined() {
            state.quarantine_peer(&peer_id, now + self.config.quarantine_duration, MISSED_DEADLINES);
        }
        state.take_quarantined_liars(self.config.quarantine_duration);
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
    /// Turns chunked frames on for a peer's connection that asked for them, where the
    /// connection is binary; returns whether they are on.
    fn take_chunks(&mut self, conn: ConnId, asked: bool) -> bool {
        let switch = self.conns.get(&conn).and_then(|c| c.handle.chunked.as_ref());
        match switch {
            Some(switch) if asked => {
                switch.store(true, std::sync::atomic::Ordering::Release);
                true
            }
            _ => false,
        }
    }

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
                // A replica's copy carries the gamer's own ids: every replica sees the
                // same task, and replicas of one session never share a peer.
                task_id: replication::split(&task.task_id).0.to_owned(),
                task_type: task.task_type.clone(),
                session_id: task.session_id.as_deref().map(|s| replication::split(s).0.to_owned()),
                // Peers see an opaque alias: a gamer id would let a peer's owner learn
                // whom it serves.
                gamer_id: self.ids.alias(&task.gamer),
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

    /// Pairs each failure with its gamer's outbound queue; a gamer that may resume gets
    /// its answers kept, one that left gets none.
    fn answers_for(&mut self, failures: Vec<Failure>) -> Vec<(OutboundTx, Failure)> {
        let mut live = Vec::new();
        for f in failures {
            if f.session_id.as_deref().is_some_and(|s| self.group_mut(&f.gamer, s).is_some()) {
                self.replicated_failure(f);
                continue;
            }
            match self.gamers.get(&f.gamer).and_then(|c| self.conns.get(c)) {
                Some(c) => live.push((c.handle.tx.clone(), f)),
                None if self.detached.contains_key(&f.gamer) => {
                    let (gamer, task_id) = (f.gamer.clone(), f.task_id.clone());
                    self.keep_for_resume(&gamer, &task_id, Outbound::message(failure_message(f)));
                }
                None => {}
            }
        }
        live
    }

    /// Quarantines a peer (it kept missing deadlines, or was outvoted by replicas: `why`):
    /// closes it (its tasks are re-queued, its replicas retired) and refuses its id until
    /// `until`.
    fn quarantine_peer(&mut self, peer_id: &str, until: Instant, why: &str) {
        crate::warn_limited!("router: peer quarantined", peer_id, why, "peer quarantined");
        self.retire_replicas_on(peer_id);
        insert_bounded(&mut self.quarantine, peer_id, until, MAX_QUARANTINED);
        if let Some(db) = &self.reputation {
            db.quarantined(peer_id, until.saturating_duration_since(Instant::now()));
        }
        self.sched.forfeit_trust(peer_id);
        self.remember_standing(peer_id);
        self.peers_quarantined += 1;
        self.ids.forget(Kind::Peer, peer_id);
        let Some(conn) = self.peers.remove(peer_id) else {
            self.sched.remove_peer(peer_id);
            return;
        };
        self.sched.remove_peer(peer_id);
        self.send_error(conn, ErrorCode::Quarantined, format!("quarantined: {why}"), None);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.role = Role::Unregistered;
            if c.handle.tx.send_exempt(Outbound::Close(CLOSE_POLICY, "quarantined".into())).is_err() {
                c.handle.kill.cancel();
            }
        }
    }

    /// Remembers a peer's standing as it leaves (closed, evicted, replaced, quarantined,
    /// its credential revoked; call it before the scheduler forgets the peer): the capacity
    /// it has shown and its streak of missed deadlines, in memory (at most
    /// [`MAX_QUARANTINED`] ids, the least recently updated forgotten first) and in the
    /// reputation database. `register_peer` gives it back to the same id (the window grown
    /// past a new peer's only to a registration proving it owns the id). Otherwise a peer
    /// demoted for missing deadlines, or a few misses from quarantine, would only have to
    /// reconnect (or wait for a restart) to start again with a clean streak: with its
    /// standing kept, it gains nothing by leaving. A standing no different from a new
    /// peer's is forgotten instead of kept.
    fn remember_standing(&mut self, peer_id: &str) {
        let Some(standing) = self.sched.standing(peer_id) else { return };
        if standing.same_as_fresh(&self.sched.fresh_standing()) {
            if self.standings.forget(peer_id)
                && let Some(db) = &self.reputation
            {
                db.forget_standing(peer_id);
            }
            return;
        }
        self.standings.remember(peer_id, standing, Instant::now());
        if let Some(db) = &self.reputation {
            db.standing(peer_id, standing);
        }
    }

    /// With every gamer slot taken, frees one held by an absent gamer: the one that left
    /// longest ago from the address holding the most absent slots (absent gamers are
    /// charged to the address they left from), when that address holds two or more, so
    /// one address resuming absent ids cannot hold every slot against newcomers, while an
    /// address's one absent gamer keeps its slot for its grace. Its pending tasks are
    /// dropped and its id freed, as when its resume grace passes. Returns whether one was
    /// freed.
    fn evict_absent_squatter(&mut self) -> bool {
        let mut by_address: HashMap<Option<std::net::IpAddr>, usize> = HashMap::new();
        for d in self.detached.values() {
            *by_address.entry(d.address).or_default() += 1;
        }
        let Some((&address, _)) = by_address.iter().filter(|&(_, n)| *n >= 2).max_by_key(|&(a, n)| (*n, *a)) else {
            return false;
        };
        let victim = self
            .detached
            .iter()
            .filter(|(_, d)| d.address == address)
            .min_by_key(|(id, d)| (d.since, (*id).clone()))
            .map(|(id, _)| id.clone());
        let Some(victim) = victim else { return false };
        let dropped = self.forget_gamer(&victim);
        self.absent_evicted += 1;
        crate::warn_limited!(
            "router: absent gamer evicted",
            gamer_id = victim,
            ?address,
            dropped,
            "gamer slots full: the absent gamer whose address holds the most absent slots made room"
        );
        true
    }

    /// Removes what was kept for a detached gamer (to deliver or drop).
    fn take_detached(&mut self, gamer: &str) -> Option<Detached> {
        let waiting = self.detached.remove(gamer)?;
        self.kept_bytes = self.kept_bytes.saturating_sub(waiting.bytes);
        Some(waiting)
    }

    /// Keeps a frame for a gamer that may resume, within its pending-bytes budget and the
    /// coordinator-wide one.
    fn keep_for_resume(&mut self, gamer: &str, task_id: &str, frame: Outbound) {
        // One gamer may hold at most an eighth of the shared pool: a few leavers with
        // large results cannot take every other leaver's share.
        let budget = self.resume_budget.min(self.max_kept_bytes / 8).max(1);
        let Some(waiting) = self.detached.get_mut(gamer) else { return };
        let bytes = frame.weight();
        if waiting.bytes.saturating_add(bytes) > budget || self.kept_bytes.saturating_add(bytes) > self.max_kept_bytes {
            waiting.lost.push(task_id.to_owned());
            return;
        }
        waiting.bytes += bytes;
        self.kept_bytes += bytes;
        waiting.frames.push(frame);
    }

    /// Drops everything of a gamer that left for good: its tasks (returned: how many),
    /// sessions, kept results and limits.
    fn forget_gamer(&mut self, gamer: &str) -> usize {
        self.take_detached(gamer);
        if let Some(groups) = self.groups.remove(gamer) {
            let freed: usize = groups.values().map(|e| e.group.log_bytes()).sum();
            self.log_bytes = self.log_bytes.saturating_sub(freed);
        }
        self.limits.remove(gamer);
        self.ids.forget(Kind::Gamer, gamer);
        self.sched.remove_gamer(gamer)
    }

    /// The verified credential of a connection, if it presented one.
    fn credential(&self, conn: ConnId) -> Option<&Credential> {
        self.conns.get(&conn)?.info.as_ref()?.credential.as_ref()
    }

    /// Why a task request is over its gamer's rate limits, if it is.
    fn over_rate(&mut self, gamer: &str, m: &TaskRequest, now: Instant) -> Option<String> {
        // A replicated session stays known while its replicas change.
        let new_session = m.session_id.as_deref().is_some_and(|s| {
            !self.sched.has_session(gamer, s) && self.groups.get(gamer).is_none_or(|g| !g.contains_key(s))
        });
        let limits = self.limits.get_mut(gamer)?;
        if let Some(b) = &mut limits.tasks
            && !b.try_take(1.0, now)
        {
            return Some("over this gamer's tasks per second; slow down".into());
        }
        if let Some(b) = &mut limits.bytes
            && !b.try_take(m.task_data.len() as f64, now)
        {
            return Some("over this gamer's task bytes per second; slow down".into());
        }
        if new_session
            && let Some(b) = &mut limits.sessions
            && !b.try_take(1.0, now)
        {
            return Some("over this gamer's new sessions per second; reuse a session or slow down".into());
        }
        None
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
            peers_quarantined: self.peers_quarantined,
            peers_evicted: self.peers_evicted,
            errors_sent: self.errors_sent,
            ticks_compared: self.replica_counters.ticks_compared,
            replica_disagreements: self.replica_counters.disagreements,
            peers_caught_lying: self.replica_counters.liars,
            sessions_corrected: self.replica_counters.corrections,
            replicas_started: self.replica_counters.started,
            disputes_unsettled: self.replica_counters.unsettled,
            peers_quarantined_for_disputes: self.replica_counters.dispute_quarantines,
            sessions_unreplicated_started: self.replica_counters.unreplicated_started,
            sessions_audited: self.replica_counters.audited,
        }
    }
}

/// Why a peer that kept missing deadlines was quarantined.
const MISSED_DEADLINES: &str = "missed task deadlines in a row";
/// Why a peer outvoted by replicas was quarantined.
const OUTVOTED: &str = "its result differed from what two or more replicas of the session agreed on";
/// Why a peer in unsettled disputes with several partners is quarantined.
const DISPUTED: &str = "its results differed from those of established peers of several networks, in disputes \
                        nothing could settle";

/// Peer ids remembered as quarantined at most (each costs about a hundred bytes): beyond,
/// the one whose quarantine ends soonest is forgotten first. In open mode anyone can make
/// up peer ids, so the table must not grow with them.
pub const MAX_QUARANTINED: usize = 65_536;

/// Inserts `key` until `until` into a table of at most `max` entries, forgetting the entry
/// that ends soonest when it is full.
fn insert_bounded(table: &mut HashMap<String, Instant>, key: &str, until: Instant, max: usize) {
    if table.len() >= max.max(1)
        && !table.contains_key(key)
        && let Some(soonest) = table.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone())
    {
        table.remove(&soonest);
    }
    table.insert(key.to_owned(), until);
}

/// How long a connection whose credential was revoked has to receive its error and close
/// frame before it is dropped.
pub const REVOKED_FLUSH: Duration = Duration::from_secs(1);

/// Passed deadlines handled per lock hold (see [`Router::expire_due`]).
pub const EXPIRE_BATCH: usize = 1024;

/// Sends each gamer the `task_result` error for a task that was given up, exempt from the
/// outbound bounds (these answers are bounded by the gamer's pending tasks). Needs no lock.
fn send_answers(answers: Vec<(OutboundTx, Failure)>) {
    for (tx, failure) in answers {
        let _ = tx.send_exempt(Outbound::message(failure_message(failure)));
    }
}

/// The message with its task payload in a buffer of its own
/// ([`p2c2r_protocol::Payload::detached`]).
fn detach_payload(message: Message) -> Message {
    match message {
        Message::TaskRequest(mut r) => {
            r.task_data = r.task_data.detached();
            Message::TaskRequest(r)
        }
        Message::TaskResult(mut r) => {
            r.result = r.result.detached();
            Message::TaskResult(r)
        }
        Message::TaskAssignment(mut a) => {
            a.task_data.task_data = a.task_data.task_data.detached();
            Message::TaskAssignment(a)
        }
        other => other,
    }
}

/// The `task_result` error for a task whose result arrived while its gamer was away and
/// could not be kept.
/// Bytes a task frame takes beyond its payload, at most (ids of at most 256 bytes each,
/// field names, numbers).
const FRAME_ENVELOPE_BYTES: usize = 2048;

/// A frame decoded without the router's state: the message (or why it is refused), and
/// for a task result its status, read here because it may mean parsing a large payload.
#[derive(Debug)]
pub struct Decoded {
    message: Result<Message, (ErrorCode, String, Option<String>)>,
    kind: Option<ResultKind>,
}

impl From<Result<Message, (ErrorCode, String, Option<String>)>> for Decoded {
    fn from(message: Result<Message, (ErrorCode, String, Option<String>)>) -> Self {
        let kind = match &message {
            Ok(Message::TaskResult(m)) => Some(p2c2r_protocol::inspect::result_kind(&m.result)),
            _ => None,
        };
        Decoded { message, kind }
    }
}

/// Decodes a text frame (JSON) with no lock held: pure CPU, so the connection can run it
/// off the runtime's threads when the frame is large.
pub fn decode_text(frame: &str) -> Decoded {
    Decoded::from(codec::decode(frame).map_err(|e| (e.code(), e.to_string(), e.refers_to())))
}

/// Decodes a binary frame with no lock held, its payload copied into a buffer of its own
/// (see [`Router::handle_binary_frame`]).
pub fn decode_binary(frame: bytes::Bytes) -> Decoded {
    Decoded::from(
        p2c2r_protocol::binary::decode(frame).map(detach_payload).map_err(|e| (e.code(), e.to_string(), None)),
    )
}

/// The largest binary payload that fits a JSON frame of `max` bytes base64-wrapped
/// (`{"p2c2r_binary":"…"}`, see [`p2c2r_protocol::Payload::json_len`]) with the envelope.
fn max_binary_for_json(max: usize) -> usize {
    let wrapper = r#"{"p2c2r_binary":""}"#.len();
    max.saturating_sub(FRAME_ENVELOPE_BYTES + wrapper) / 4 * 3
}

fn lost_result(task_id: String) -> Message {
    let error = TaskError::new(
        ErrorCode::LimitExceeded,
        format!("the result of task {task_id:?} arrived while you were away and did not fit the bytes kept for you"),
    );
    let result = to_payload(&error).expect("TaskError serializes");
    Message::TaskResult(TaskResult { task_id, result, attempt: None, peer_id: None })
}

/// The `task_result` error that tells a gamer its task was given up.
fn failure_message(Failure { gamer, task_id, attempts, reason, .. }: Failure) -> Message {
    debug!(gamer_id = gamer, task_id, attempts, ?reason, "task given up");
    {
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
        Message::TaskResult(TaskResult { task_id, result, attempt: Some(attempts), peer_id: None })
    }
}

fn check_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{field} must not be empty"))
    } else if value.len() > limits::MAX_ID_BYTES {
        Err(format!("{field} is longer than {} bytes", limits::MAX_ID_BYTES))
    } else if value.chars().any(char::is_control) {
        Err(format!("{field} must not contain control characters"))
    } else {
        Ok(())
    }
}

/// Replicated and audited sessions (see [`crate::replication`]): the router's side.
impl State {
    /// The group of a gamer's session (`session` may be a replica's scheduler session).
    fn group_mut(&mut self, gamer: &str, session: &str) -> Option<&mut GroupEntry> {
        self.groups.get_mut(gamer)?.get_mut(replication::split(session).0)
    }

    /// Whether a gamer's physics session is replicated or audited: decided when its first
    /// physics tick arrives (a session already running on one peer stays so).
    fn replicated(&mut self, gamer: &str, session: &str) -> bool {
        if self.group_mut(gamer, session).is_some() {
            return true;
        }
        // A session already running on one peer stays so (and its ticks cost no draw).
        if self.sched.has_session(gamer, session) {
            return false;
        }
        let class = self.sched.largest_setup_class(REPLICA_TASK_TYPE);
        let c = &self.replication;
        let (wanted, audited) = if c.strict {
            (c.replicas.max(2), false)
        } else if c.replicas > 1 {
            (c.replicas, false)
        } else {
            self.replica_counters.unreplicated_started += 1;
            // Audited only where a second compatible peer is there to audit (the achieved
            // fraction is reported beside the configured one).
            if replication::audited(gamer, session, c.audit_fraction, self.audit_salt)
                && class.is_some_and(|(_, capacity)| capacity >= 2)
            {
                (2, true)
            } else {
                return false;
            }
        };
        let strict = c.strict;
        let max_groups = self.max_groups_per_gamer;
        let groups = self.groups.entry(gamer.to_owned()).or_default();
        if groups.len() >= max_groups {
            // Groups whose sessions the scheduler forgot (idle, evicted) go first.
            let sched = &self.sched;
            let mut freed = 0;
            groups.retain(|s, e| {
                let alive =
                    e.group.live().iter().any(|g| sched.has_session(gamer, &replication::replica_session(s, *g)));
                if !alive {
                    freed += e.group.log_bytes();
                }
                alive
            });
            self.log_bytes = self.log_bytes.saturating_sub(freed);
            if groups.len() >= max_groups {
                // Said, not silent: the operator sees it in the metrics and the log.
                self.metrics.sessions_unreplicated.inc();
                crate::warn_limited!(
                    "router: session not replicated",
                    gamer_id = gamer,
                    max_groups,
                    "the gamer has its most replicated sessions; this physics session runs on one peer"
                );
                return false;
            }
        }
        // Its replicas all have the setup most connected peers share: a peer declaring a
        // setup of its own is never one, so it cannot escape comparison.
        if audited {
            self.replica_counters.audited += 1;
        }
        let group = Group::new(wanted, audited, strict, class.map(|(setup, _)| setup));
        groups.insert(session.to_owned(), GroupEntry { group, told: None });
        true
    }

    /// Submits one copy of a physics tick per live replica, starting replicas first
    /// where some are missing, and logs the tick.
    fn submit_replicated(
        &mut self,
        gamer: &str,
        session: &str,
        m: TaskRequest,
        deadline: Duration,
    ) -> Result<(), SubmitError> {
        let now = Instant::now();
        if self.group_mut(gamer, session).is_some_and(|e| e.group.tracks(&m.task_id)) {
            // Its answers are still compared with the first request's under this id.
            return Err(SubmitError::DuplicateTask(m.task_id));
        }
        let snapshot = p2c2r_protocol::inspect::is_snapshot_request(&m.task_data);
        self.fill_replicas(gamer, session, snapshot, now);
        let Some(entry) = self.group_mut(gamer, session) else { return Err(SubmitError::UnknownGamer) };
        let full = !snapshot && entry.group.take_correction();
        let task_type = if full { p2c2r_protocol::task_types::PHYSICS_STEP_FULL.to_owned() } else { m.task_type };
        let live = entry.group.live().to_vec();
        let setup = entry.group.setup();
        let mut submitted = 0;
        let mut refused = Vec::new();
        let mut first_error = None;
        for &generation in &live {
            let submission = Submission {
                task_id: replication::replica_task(&m.task_id, generation),
                task_type: task_type.clone(),
                session_id: Some(replication::replica_session(session, generation)),
                deadline,
                bytes: m.task_data.len(),
                payload: m.task_data.clone(),
                siblings: siblings(session, &live, generation),
                setup,
            };
            match self.sched.submit(gamer, submission, now) {
                Ok(_) => submitted += 1,
                Err(e) => {
                    refused.push(generation);
                    first_error.get_or_insert(e);
                }
            }
        }
        if submitted == 0 {
            return Err(first_error.unwrap_or(SubmitError::UnknownGamer));
        }
        if full {
            self.replica_counters.corrections += 1;
            crate::info_limited!("router: session corrected", gamer_id = gamer, session, "full-state tick sent");
        }
        let logged = Logged { task_id: m.task_id, task_type, deadline, payload: m.task_data };
        let config = self.replication.clone();
        let entry = self.group_mut(gamer, session).expect("looked up above");
        let change = entry.group.submitted(logged, snapshot, submitted, &config);
        self.account_log(change);
        for generation in refused {
            self.retire_generation(gamer, session, generation);
        }
        self.tell_status(gamer, session);
        Ok(())
    }

    /// Starts the replicas a group lacks: at a snapshot as many as there are compatible
    /// peers for (they start with it); between snapshots one at a time, replaying the
    /// log, with a backoff (see [`Group::take_replay_slot`]); with no replica left and no
    /// log to replay, a bare one (its peer asks the gamer for a snapshot).
    fn fill_replicas(&mut self, gamer: &str, session: &str, snapshot: bool, now: Instant) {
        loop {
            let Some(entry) = self.group_mut(gamer, session) else { return };
            if !entry.group.short() {
                return;
            }
            let empty = entry.group.live().is_empty();
            let live = entry.group.live().len();
            if entry.group.setup().is_none() {
                // Its first tick came before any peer declaring a setup: take the largest
                // class now there is one.
                let class = self.sched.largest_setup_class(REPLICA_TASK_TYPE);
                let Some(entry) = self.group_mut(gamer, session) else { return };
                entry.group.settle_setup(class.map(|(setup, _)| setup));
            }
            let Some(entry) = self.group_mut(gamer, session) else { return };
            let setup = entry.group.setup();
            let capacity = match setup {
                Some(setup) => self.sched.replica_capacity_of(REPLICA_TASK_TYPE, setup),
                None => usize::from(empty),
            };
            let Some(entry) = self.group_mut(gamer, session) else { return };
            if capacity <= live && !empty {
                return;
            }
            if snapshot {
                entry.group.start_generation();
                self.relink(gamer, session);
                continue;
            }
            if entry.group.take_replay_slot() {
                let generation = entry.group.start_generation();
                self.replica_counters.started += 1;
                self.relink(gamer, session);
                self.replay_into(gamer, session, generation, now);
                return;
            }
            if empty {
                entry.group.start_generation();
            }
            return;
        }
    }

    /// Tells the scheduler each live replica's siblings, after the set changed (copies
    /// already queued must avoid a new replica's peer too).
    fn relink(&mut self, gamer: &str, session: &str) {
        let Some(entry) = self.group_mut(gamer, session) else { return };
        let live = entry.group.live().to_vec();
        for &generation in &live {
            let key = replication::replica_session(session, generation);
            self.sched.set_siblings(gamer, &key, siblings(session, &live, generation));
        }
    }

    /// Submits the group's log to a new generation (its copies go before any live tick's).
    fn replay_into(&mut self, gamer: &str, session: &str, generation: u32, now: Instant) {
        let Some(entry) = self.group_mut(gamer, session) else { return };
        let log = entry.group.log();
        let live = entry.group.live().to_vec();
        let setup = entry.group.setup();
        crate::info_limited!(
            "router: replica started",
            gamer_id = gamer,
            session,
            generation,
            ticks = log.len(),
            "replica started from the session's log"
        );
        for logged in log {
            let submission = Submission {
                task_id: replication::replica_task(&logged.task_id, generation),
                task_type: logged.task_type,
                session_id: Some(replication::replica_session(session, generation)),
                deadline: logged.deadline,
                bytes: logged.payload.len(),
                payload: logged.payload,
                siblings: siblings(session, &live, generation),
                setup,
            };
            if self.sched.submit(gamer, submission, now).is_err() {
                // No room for the replay: give the replica up (a later tick tries again).
                return self.retire_generation(gamer, session, generation);
            }
            if let Some(entry) = self.group_mut(gamer, session) {
                entry.group.replaying(&logged.task_id, 1);
            }
        }
    }

    /// Counts a change of a group's log bytes. Past the coordinator-wide bound, the
    /// largest log goes (whoever it belongs to), so one gamer's sessions cannot take every
    /// other session's logs.
    fn account_log(&mut self, change: isize) {
        self.log_bytes = self.log_bytes.saturating_add_signed(change);
        while self.log_bytes > self.max_log_bytes {
            let largest = self
                .groups
                .iter_mut()
                .flat_map(|(_, sessions)| sessions.values_mut())
                .max_by_key(|e| e.group.log_bytes());
            let Some(entry) = largest else { return };
            let freed = entry.group.drop_log();
            if freed == 0 {
                return;
            }
            self.log_bytes = self.log_bytes.saturating_sub(freed);
        }
    }

    /// Retires a replica: its copies are dropped (each counted as cancelled for its tick).
    fn retire_generation(&mut self, gamer: &str, session: &str, generation: u32) {
        let Some(entry) = self.group_mut(gamer, session) else { return };
        if !entry.group.live().contains(&generation) {
            return;
        }
        entry.group.retire(generation);
        self.relink(gamer, session);
        let dropped = self.sched.cancel_session(gamer, &replication::replica_session(session, generation));
        for task_id in dropped {
            self.copy_outcome(gamer, session, &task_id, CopyOutcome::Cancelled, None);
        }
        self.tell_status(gamer, session);
    }

    /// Retires every replica a peer holds (it is leaving or quarantined): the other
    /// replicas go on, and the next tick starts a replacement.
    fn retire_replicas_on(&mut self, peer: &str) {
        for (gamer, scheduler_session) in self.sched.sessions_on(peer) {
            let (session, generation) = replication::split(&scheduler_session);
            let session = session.to_owned();
            let live = self.group_mut(&gamer, &session).is_some_and(|e| e.group.live().contains(&generation));
            if live {
                self.retire_generation(&gamer, &session, generation);
            }
        }
    }

    /// A replicated copy given up by the scheduler.
    fn replicated_failure(&mut self, failure: Failure) {
        let session = failure.session_id.clone().unwrap_or_default();
        let (gamer, task_id) = (failure.gamer.clone(), failure.task_id.clone());
        let Some(entry) = self.group_mut(&gamer, &session) else { return };
        let (base, generation) = replication::split(&task_id);
        let decision = entry.group.outcome(base, generation, CopyOutcome::GivenUp);
        let session = replication::split(&session).0.to_owned();
        let base = base.to_owned();
        self.apply_decision(&gamer, &session, &base, decision, None, Some(failure));
    }

    /// What became of one copy (`session` and `task_id` are scheduler ids).
    fn copy_outcome(
        &mut self,
        gamer: &str,
        session: &str,
        task_id: &str,
        outcome: CopyOutcome,
        submitted_at: Option<Instant>,
    ) {
        let Some(entry) = self.group_mut(gamer, session) else { return };
        let (base, generation) = replication::split(task_id);
        let answered = matches!(outcome, CopyOutcome::Answer { .. });
        let decision = entry.group.outcome(base, generation, outcome);
        if answered && decision.deliver.is_none() {
            // The scheduler counted the answer as delivered; only one copy per tick is.
            self.sched.uncount_completion(gamer);
        }
        let session = replication::split(session).0.to_owned();
        let base = base.to_owned();
        self.apply_decision(gamer, &session, &base, decision, submitted_at, None);
    }

    fn apply_decision(
        &mut self,
        gamer: &str,
        session: &str,
        task_id: &str,
        decision: Decision,
        submitted_at: Option<Instant>,
        failure: Option<Failure>,
    ) {
        if decision.compared {
            self.replica_counters.ticks_compared += 1;
        }
        if decision.disagreement {
            self.replica_counters.disagreements += 1;
            crate::warn_limited!(
                "router: replicas disagree",
                gamer_id = gamer,
                session,
                task_id,
                "replicas of a session answered a tick differently"
            );
        }
        match decision.deliver {
            Some(Delivery::Answer { payload, peer, attempt }) => {
                if let Some(at) = submitted_at {
                    let latency = Instant::now().saturating_duration_since(at);
                    self.metrics.task_latency.observe(latency.as_secs_f64());
                    self.latencies.record(latency);
                }
                let message = Message::TaskResult(TaskResult {
                    task_id: task_id.to_owned(),
                    result: payload,
                    attempt: Some(attempt),
                    peer_id: Some(peer),
                });
                self.deliver(gamer, task_id, Outbound::message(message));
            }
            Some(Delivery::Failure) => {
                let message = match failure {
                    Some(f) => failure_message(Failure { task_id: task_id.to_owned(), ..f }),
                    None => replica_error(
                        task_id,
                        ErrorCode::UnknownSession,
                        "every replica of the session was lost; send a snapshot",
                    ),
                };
                self.deliver(gamer, task_id, Outbound::message(message));
            }
            Some(Delivery::Unverified) => {
                let message = replica_error(
                    task_id,
                    ErrorCode::Unverified,
                    "the session's replicas did not agree on this tick (strict replication); send a snapshot",
                );
                self.deliver(gamer, task_id, Outbound::message(message));
            }
            None => {}
        }
        self.liars.extend(decision.liars.into_iter().map(|peer| (peer, OUTVOTED)));
        if !decision.agreed.is_empty() {
            self.sched.disputes_mut().agreed(&decision.agreed, Instant::now());
        }
        // Verified work, counted per tick: an agreement with a peer of another network.
        for party in &decision.agreed_tick {
            if decision.agreed_tick.iter().any(|other| other.voter != party.voter) {
                self.sched.agreed(&party.peer);
            }
        }
        for generation in decision.retire {
            self.retire_generation(gamer, session, generation);
        }
        if decision.unsettled {
            self.record_unsettled(gamer, session, &decision.disputants);
        }
        if decision.tie_break || decision.confirm {
            self.start_tie_breaker(gamer, session, &decision.disputants);
        }
        self.tell_status(gamer, session);
    }

    /// Starts a replica that replays the log to settle a tie or confirm a majority, where
    /// a compatible peer beside the others exists; otherwise nothing can say who lied: the
    /// dispute is unsettled, and every replica is retired (the session restarts at the
    /// gamer's next snapshot, its delivery held).
    fn start_tie_breaker(&mut self, gamer: &str, session: &str, disputants: &[Vec<Party>]) {
        let Some(entry) = self.group_mut(gamer, session) else { return };
        let (setup, live) = (entry.group.setup(), entry.group.live().to_vec());
        let capacity = setup.map_or(0, |s| self.sched.replica_capacity_of(REPLICA_TASK_TYPE, s));
        if capacity > live.len()
            && let Some(generation) = self.group_mut(gamer, session).and_then(|e| e.group.start_tie_breaker())
        {
            self.replica_counters.started += 1;
            self.relink(gamer, session);
            self.replay_into(gamer, session, generation, Instant::now());
            return;
        }
        let Some(entry) = self.group_mut(gamer, session) else { return };
        let retire = entry.group.unsettle();
        self.record_unsettled(gamer, session, disputants);
        for generation in retire {
            self.retire_generation(gamer, session, generation);
        }
    }

    /// Records a dispute nothing settled: its peers are kept apart from now on, and a
    /// peer in such disputes with several partners is quarantined (see
    /// [`crate::disputes`]).
    fn record_unsettled(&mut self, gamer: &str, session: &str, disputants: &[Vec<Party>]) {
        self.replica_counters.unsettled += 1;
        crate::warn_limited!(
            "router: dispute unsettled",
            gamer_id = gamer,
            session,
            "replicas disagree and nothing can settle it: the disputing peers are kept apart, the session restarts \
             at its next snapshot and only answers two replicas agree on are delivered until they agree again"
        );
        let quarantine = self.sched.disputes_mut().unsettled(disputants, Instant::now());
        self.replica_counters.dispute_quarantines += quarantine.len() as u64;
        self.liars.extend(quarantine.into_iter().map(|peer| (peer, DISPUTED)));
    }

    /// Sends a frame for a gamer's task: to its connection, or kept while it may resume.
    fn deliver(&mut self, gamer: &str, task_id: &str, frame: Outbound) {
        match self.gamers.get(gamer).copied() {
            Some(conn) => self.send_frame(conn, frame),
            None => self.keep_for_resume(gamer, task_id, frame),
        }
    }

    /// Quarantines the peers found lying since the last call. Returns whether any was.
    fn take_quarantined_liars(&mut self, duration: Duration) -> bool {
        let liars = std::mem::take(&mut self.liars);
        let any = !liars.is_empty();
        let now = Instant::now();
        for (liar, why) in liars {
            if self.quarantine.get(&liar).is_some_and(|until| *until > now) {
                continue;
            }
            if why == OUTVOTED {
                self.replica_counters.liars += 1;
            }
            self.quarantine_peer(&liar, Instant::now() + duration, why);
        }
        if any {
            self.dispatch(Instant::now());
        }
        any
    }

    /// Tells the gamer how its session is replicated, when that changed.
    fn tell_status(&mut self, gamer: &str, session: &str) {
        let strict = self.replication.strict;
        let conn = self.gamers.get(gamer).copied();
        let Some(entry) = self.group_mut(gamer, session) else { return };
        // Built for every tick and copy: the session id (an allocation) is added only
        // when it is sent.
        let status = p2c2r_protocol::SessionStatus {
            session_id: String::new(),
            replicas_wanted: entry.group.wanted(),
            replicas_live: entry.group.live().len().min(usize::from(u8::MAX)) as u8,
            audited: entry.group.audited(),
            strict,
            disagreements: entry.group.disagreements(),
            corrections: entry.group.corrections(),
        };
        if entry.told.as_ref() == Some(&status) {
            return;
        }
        // Only what was sent counts as told: a gamer away now hears of it at the next
        // change after it resumes.
        if let Some(conn) = conn {
            entry.told = Some(status.clone());
            let status = p2c2r_protocol::SessionStatus { session_id: session.to_owned(), ..status };
            self.send(conn, Message::SessionStatus(status));
        }
    }
}

/// What a peer must run to hold a replica: the correction step as well (P2C2R peers run
/// both; a peer restricted to `physics_step` alone would lose its replica at the first
/// correction).
const REPLICA_TASK_TYPE: &str = p2c2r_protocol::task_types::PHYSICS_STEP_FULL;

/// The scheduler sessions of a replica's siblings.
fn siblings(session: &str, live: &[u32], generation: u32) -> Vec<String> {
    live.iter().filter(|g| **g != generation).map(|g| replication::replica_session(session, *g)).collect()
}

/// A `task_result` error the coordinator answers a replicated tick with (resync).
fn replica_error(task_id: &str, code: ErrorCode, message: &str) -> Message {
    let error = TaskError::new(code, message).with_resync();
    let result = to_payload(&error).expect("TaskError serializes");
    Message::TaskResult(TaskResult { task_id: task_id.to_owned(), result, attempt: None, peer_id: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_binary_payload_named_for_json_connections_fits_and_one_more_byte_does_not() {
        use p2c2r_protocol::Payload;
        for max in [4096, 65_536, 16 * 1024 * 1024 + 7] {
            let at_most = max_binary_for_json(max);
            let fits = |n: usize| Payload::binary(vec![0u8; n]).json_len() + FRAME_ENVELOPE_BYTES <= max;
            assert!(fits(at_most), "{max}: {at_most} must fit");
            assert!(!fits(at_most + 3), "{max}: the next base64 group must not");
        }
    }

    #[test]
    fn the_quarantine_table_is_bounded_and_forgets_the_soonest_first() {
        let t0 = Instant::now();
        let mut table = HashMap::new();
        for i in 0..10u64 {
            insert_bounded(&mut table, &format!("p{i}"), t0 + Duration::from_secs(100 + i), 4);
        }
        assert_eq!(table.len(), 4);
        let mut kept: Vec<&String> = table.keys().collect();
        kept.sort();
        assert_eq!(kept, ["p6", "p7", "p8", "p9"], "the latest to end are kept");
        // Renewing a present id does not evict anyone.
        insert_bounded(&mut table, "p6", t0 + Duration::from_secs(500), 4);
        assert_eq!(table.len(), 4);
        assert!(table.contains_key("p7"));
    }
}
