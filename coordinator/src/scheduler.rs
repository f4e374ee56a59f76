//! Which task runs where: the coordinator's routing decisions as a pure data structure.
//!
//! No sockets, no clocks of its own: the caller passes `now` and turns the returned
//! [`Dispatch`]es and [`Failure`]s into frames. Everything here is unit-tested.
//!
//! Rules (see ARCHITECTURE.md for why):
//! - Each gamer's queued tasks sit in lanes: one per session, and one per task type for
//!   tasks without a session. Each lane is in submission order and only its head can be
//!   placed, so a session's later task never overtakes an earlier one. Across lanes a
//!   gamer's oldest placeable task goes first.
//! - Gamers are served round-robin, one placement at a time, so one gamer flooding tasks
//!   cannot starve another. A gamer none of whose lane heads can be placed is parked, and
//!   woken only by an event that can change that: a new task of its own, or room on a
//!   peer that can serve its lanes, which wakes the longest-parked gamers one at a time
//!   while the room lasts. Dispatch costs what it places, not gamers × queue depth.
//! - A task goes to a live peer that runs its type and has a free slot, least loaded first
//!   (in-flight / capacity), preferring peers that have not already tried it.
//! - A peer's capacity is what it has shown, in slots: it starts at
//!   `initial_peer_capacity`, grows by one per completed task up to what it declared
//!   (itself capped), and halves when an attempt on it misses its deadline (never below
//!   where it started). A sessionless task holds a slot; a session holds one slot for all
//!   its tasks in flight at the peer (the peer runs them one after another), with up to
//!   `max_session_pipeline` of them pipelined. A peer holds at most `max_tasks_per_peer`
//!   tasks whatever its slots.
//! - Tasks with a session id go to the session's peer while it lives, in submission order.
//! - A task re-queued (its peer died, or its deadline passed) goes back to its place in
//!   submission order, ahead of everything submitted after it.
//! - Every dispatch is an attempt, whatever ended the previous one. After `max_attempts`
//!   the task fails: with [`FailReason::Poison`] when its last peer disconnected while
//!   holding it (it is quarantined, never dispatched again), with
//!   [`FailReason::MaxAttempts`] when its last attempt missed its deadline.
//! - A task still queued when its queue wait limit passes fails, also when the limit is
//!   found passed at dispatch time.
//! - Pending payload bytes are bounded per gamer and in total.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

pub use crate::config::{Replication, Reputation, Scheduling};
pub use crate::copy_id::CopyId;
use crate::disputes::{DisputeConfig, Disputes};

/// A peer's id as it registered.
pub type PeerId = String;
/// A gamer's id as it registered.
pub type GamerId = String;

/// The scheduler's settings: the coordinator's own sections, taken as they are (one
/// source for every setting, see [`crate::config`]), and what the router derives from the
/// others.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// What it holds for each gamer and asks of each peer. A task still waiting in a
    /// queue `max_queue_wait` after it was submitted fails with
    /// [`FailReason::QueueTimeout`].
    pub scheduling: Scheduling,
    /// What gets a peer reported for quarantine ([`Scheduler::take_quarantined`]):
    /// `quarantine_after_misses` confirmed misses in a row, on work of
    /// `quarantine_min_gamers` gamer origins ([`Scheduler::set_gamer_origin`]), confirmed
    /// by peers that gave `established_after_answers` successful answers. A task nobody
    /// runs in time says nothing about the peers it missed on, so a gamer cannot get
    /// honest peers quarantined.
    pub reputation: Reputation,
    /// Where replicas may go: `replicas_on_distinct_hosts` (one machine running many
    /// peers cannot outvote the others).
    pub replication: Replication,
    /// Most distinct task types a gamer may have queued without a session (each is a
    /// lane that dispatch looks at).
    pub max_task_types_per_gamer: usize,
    /// Most tasks in flight at one peer, all sessions together (the router sets it to
    /// what the peer's outbound queue holds, so a peer is never flooded off).
    pub max_tasks_per_peer: u32,
    /// Most payload bytes in flight at one peer (one task larger than this still goes to
    /// an idle peer). The router sets it to half the peer's outbound queue bytes, so
    /// assignments alone never fill that queue.
    pub max_bytes_per_peer: usize,
    /// How unsettled disputes keep peers apart and count against them (see
    /// [`crate::disputes`]).
    pub disputes: DisputeConfig,
    /// Sessions go only to peers an audit could check: their determinism setup declared
    /// and shared by a peer of another host. Sessionless tasks go anywhere.
    pub sessions_need_auditable_peers: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            scheduling: Scheduling::default(),
            reputation: Reputation::default(),
            replication: Replication::default(),
            max_task_types_per_gamer: 16,
            max_tasks_per_peer: 512,
            max_bytes_per_peer: 16 * 1024 * 1024,
            disputes: DisputeConfig::default(),
            sessions_need_auditable_peers: false,
        }
    }
}

/// What a peer declared it can do.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// Task types it runs; `None` means any.
    pub task_types: Option<HashSet<String>>,
    /// Tasks it runs at once (at least 1).
    pub capacity: u32,
    /// Its determinism setup, as a fingerprint ([`PeerSpec::setup_of`]): replicas of a
    /// session only go to peers with the same one (their answers are compared bit for
    /// bit). `None`: it declared none, and never hosts a replica beside another.
    pub setup: Option<u64>,
    /// The host it connects from: replicas of a session go to different hosts when
    /// [`Replication::replicas_on_distinct_hosts`] is set.
    pub host: Option<std::net::IpAddr>,
    /// It stands for peers of other coordinators of the fleet (the federation's borrower):
    /// a task goes to it only when no local peer can take it.
    pub remote: bool,
}

impl PeerSpec {
    /// The fingerprint of a declared determinism setup (equal setups, equal prints).
    pub fn setup_of(setup: &p2c2r_protocol::Determinism) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(setup).unwrap_or_default().hash(&mut h);
        h.finish()
    }
}

/// A task as a gamer submitted it.
#[derive(Debug)]
pub struct Submission<P> {
    /// The gamer's id for it.
    pub task_id: CopyId,
    /// What to run.
    pub task_type: String,
    /// Its session, if any.
    pub session_id: Option<CopyId>,
    /// Per-attempt deadline.
    pub deadline: Duration,
    /// The opaque input.
    pub payload: P,
    /// The payload's size, counted against the byte budgets.
    pub bytes: usize,
    /// The other replicas of its session (their scheduler session ids): this session is
    /// never placed on a peer one of them is pinned to, only beside peers of the same
    /// determinism setup, and (see [`Replication::replicas_on_distinct_hosts`]) on
    /// another host. Empty for a session that is not replicated.
    pub siblings: Vec<CopyId>,
    /// The determinism setup its session's peer must have (a replicated session's), so
    /// that a peer declaring a setup nobody else has is never its first replica either.
    pub setup: Option<u64>,
}

/// Why a submission was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The gamer is not registered with the scheduler.
    #[error("gamer is not registered")]
    UnknownGamer,
    /// The gamer already has a pending task with this id.
    #[error("a task with id {:?} is already pending", .0.id)]
    DuplicateTask(CopyId),
    /// The gamer's pending tasks reached the limit.
    #[error("too many pending tasks (limit {0})")]
    QueueFull(usize),
    /// The gamer's sessions reached the limit and none is idle.
    #[error("too many active sessions (limit {0})")]
    SessionLimit(usize),
    /// The gamer's queued task types without a session reached the limit.
    #[error("too many different task types waiting (limit {0})")]
    TaskTypeLimit(usize),
    /// The gamer's pending payload bytes would pass the limit.
    #[error("the payloads of your pending tasks would exceed {0} bytes")]
    GamerBytes(usize),
    /// All gamers' pending payload bytes would pass the limit.
    #[error("the coordinator holds its most task bytes ({0}); try again later")]
    TotalBytes(usize),
}

/// Why a peer's answer was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompleteError {
    /// The id is not one this coordinator issued.
    #[error("{0:?} is not an assignment id")]
    Malformed(String),
    /// The task is not (or no longer) assigned to this peer under this attempt.
    #[error("task {0:?} is not assigned to this peer (unknown, already answered, or superseded)")]
    NotAssigned(String),
}

/// An assignment to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// The task's internal key; look its data up with [`Scheduler::task`].
    pub key: TaskKey,
    /// Where it goes.
    pub peer: PeerId,
    /// The id the peer must answer with.
    pub assignment_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// How long the peer has for it from now: the task's deadline, counted from when the
    /// session's earlier ticks on that peer are due when it is pipelined behind them.
    pub deadline: Duration,
}

/// What a peer's answer says about the work, as far as the peer's standing goes (the
/// router reads it from the result's status before calling [`Scheduler::complete`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The work was done: the peer's window grows, its streak of misses ends, and the
    /// misses of the peers that let this task down before may be confirmed.
    Success,
    /// The peer did not do the work. Errors are not completions: no window growth, no
    /// confirmation of anyone's miss, the peer's streak goes on.
    Error {
        /// Worth one try on another peer (every error a peer gives; not the coordinator's
        /// own refusal of a result): a sessionless task gets one more try elsewhere, and a
        /// success there counts against this peer like a confirmed miss (an error another
        /// peer does not reproduce).
        retry_elsewhere: bool,
        /// The peer lost (or never had) the session's world.
        resync: bool,
    },
}

/// A task's answer accepted from its peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    /// Forward the result to this gamer under its own task id.
    Deliver {
        /// The gamer that submitted the task.
        gamer: GamerId,
        /// The gamer's task id.
        task_id: CopyId,
        /// The attempt that answered.
        attempt: u32,
        /// When the gamer submitted it (for end-to-end latency).
        submitted_at: Instant,
        /// When the answering attempt was sent to the peer (for the peer's round trip).
        assigned_at: Instant,
        /// The task's session, if any.
        session_id: Option<CopyId>,
    },
    /// The gamer has left; drop the result.
    Orphaned,
    /// The peer's error is not passed on: the task went back to the queue for one try on
    /// another peer (call [`Scheduler::dispatch`]).
    Retried,
}

/// What a passed deadline led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    /// The task went back to the queue for another attempt.
    Requeued {
        /// The gamer's task id.
        task_id: CopyId,
        /// The peer that missed the deadline.
        peer: PeerId,
        /// The attempt that timed out.
        attempt: u32,
    },
    /// The task is given up; tell the gamer.
    Failed(Failure),
}

/// A task given up: its gamer must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The gamer.
    pub gamer: GamerId,
    /// The gamer's task id.
    pub task_id: CopyId,
    /// Attempts made.
    pub attempts: u32,
    /// Why.
    pub reason: FailReason,
    /// The task's session, if any.
    pub session_id: Option<CopyId>,
}

/// Why a task was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Every attempt missed its deadline.
    MaxAttempts,
    /// No peer could take it within the queue wait limit.
    QueueTimeout,
    /// Its peers kept disconnecting while they held it: quarantined as poison.
    Poison,
}

/// The scheduler's counters since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Tasks accepted.
    pub queued: u64,
    /// Dispatches (every attempt).
    pub assigned: u64,
    /// Answers accepted for delivery.
    pub completed: u64,
    /// Dispatches that were repeats.
    pub redispatched: u64,
    /// Tasks given up (any reason).
    pub failed: u64,
    /// Of those, tasks quarantined as poison.
    pub poisoned: u64,
    /// Tasks dropped because their gamer left.
    pub dropped: u64,
}

/// A peer as the operator sees it ([`Scheduler::peer_view`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// The task types it runs, sorted (`None`: every type).
    pub task_types: Option<Vec<String>>,
    /// What it declared, capped.
    pub declared_capacity: u32,
    /// What it may hold now (learned, see the module docs).
    pub capacity: u32,
    /// Tasks in flight at it.
    pub in_flight: u32,
    /// Sessions pinned to it.
    pub sessions: usize,
    /// Answers accepted from it since it registered.
    pub completed: u64,
}

/// A gamer as the operator sees it ([`Scheduler::gamer_view`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GamerView {
    /// Its sessions.
    pub sessions: usize,
    /// Its tasks queued or in flight.
    pub pending: usize,
    /// Results delivered to it since it registered.
    pub completed: u64,
}

/// What a peer has earned, good or bad, that outlives its connection
/// ([`Scheduler::standing`], [`Scheduler::restore_standing`]): the router keeps it when the
/// peer leaves and gives it back when the same id registers again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// What it has shown it can take (see the module docs).
    pub window: u32,
    /// Confirmed missed deadlines since its last accepted answer.
    pub misses_in_a_row: u32,
    /// Successful answers it has given, ever (see
    /// [`Reputation::established_after_answers`]).
    pub verified: u64,
    /// Compared ticks on which it agreed with a peer of another network, ever: work that
    /// replication verified (a vote's weight grows with it, see
    /// `replication::vote_weight`).
    pub agreements: u64,
    /// When the id first registered with this standing (Unix milliseconds; 0 unknown): its
    /// age weighs its vote too.
    pub since_ms: u64,
}

impl Standing {
    /// Whether it records nothing `fresh` does not (its registration time aside): such a
    /// standing need not be kept.
    pub fn same_as_fresh(&self, fresh: &Standing) -> bool {
        Standing { since_ms: fresh.since_ms, ..*self } == *fresh
    }
}

/// A task's internal key, unique for the scheduler's lifetime.
pub type TaskKey = u64;

/// A task held by the scheduler.
#[derive(Debug)]
pub struct Task<P> {
    /// The submitting gamer.
    pub gamer: GamerId,
    /// The gamer's id for it.
    pub task_id: CopyId,
    /// What to run.
    pub task_type: String,
    /// Its session, if any.
    pub session_id: Option<CopyId>,
    /// Per-attempt deadline.
    pub deadline: Duration,
    /// The opaque input.
    pub payload: P,
    bytes: usize,
    attempts: u32,
    tried: Vec<PeerId>,
    /// Peers whose attempt at it (or at a tick ahead of it) missed its deadline: never
    /// tried again.
    timed_out_on: Vec<PeerId>,
    /// Peers whose own attempt at it missed its deadline, on a deadline such work fits
    /// there: each such miss counts towards the peer's quarantine once an established peer
    /// answers the task in time.
    missed_on: Vec<PeerId>,
    /// Peers whose error on it was retried elsewhere: a success elsewhere
    /// counts against them.
    erred_on: Vec<PeerId>,
    state: TaskState,
    /// When the task stops waiting for a peer, if there is a queue wait limit.
    give_up_at: Option<Instant>,
    /// When it was submitted.
    submitted_at: Instant,
    /// When its latest attempt was assigned.
    assigned_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskState {
    Queued,
    Assigned {
        peer: PeerId,
        attempt: u32,
        due: Instant,
    },
    /// Assigned, but its gamer left: the slot stays taken until the peer answers or the
    /// deadline passes, then the task vanishes.
    Orphaned {
        peer: PeerId,
        attempt: u32,
        due: Instant,
    },
}

#[derive(Debug)]
struct Peer {
    task_types: Option<HashSet<String>>,
    /// What it declared, capped.
    declared: u32,
    /// What it has shown it can take (see the module docs).
    window: u32,
    /// Tasks in flight, pipelined ones included.
    in_flight: u32,
    /// Tasks in flight per session (gamer, then session), and the latest deadline among
    /// them: each session with any holds one slot.
    running: HashMap<GamerId, HashMap<CopyId, Running>>,
    /// Slots held: sessions with tasks in flight, plus sessionless tasks in flight.
    slots_used: u32,
    /// Most tasks in flight at once (see [`SchedulerConfig::max_tasks_per_peer`]).
    max_tasks: u32,
    /// Payload bytes in flight, and the most allowed (see
    /// [`SchedulerConfig::max_bytes_per_peer`]).
    bytes_in_flight: usize,
    max_bytes: usize,
    joined: u64,
    /// Tasks assigned to it (orphans included), so leaving costs its own work only.
    assigned: HashSet<TaskKey>,
    /// Sessions pinned to it.
    sessions: HashSet<(GamerId, CopyId)>,
    /// Answers accepted from it, errors included.
    completed: u64,
    /// Successful answers, ever (restored with its standing).
    verified: u64,
    /// Compared ticks agreed with another network's peer, ever (restored with its standing).
    agreements: u64,
    /// When its id first registered (restored with its standing; Unix ms, 0 unknown).
    since_ms: u64,
    /// Confirmed misses since its last successful answer.
    misses_in_a_row: u32,
    /// The gamer origins whose work those misses were on (at most
    /// `quarantine_min_gamers` kept: enough to decide).
    miss_origins: Vec<String>,
    /// Whether this streak was reported for quarantine already.
    reported: bool,
    /// How long work of each task type has shown it needs here: the slowest recent
    /// successful run, decaying by an eighth per faster one (at most
    /// [`MAX_SHOWN_TYPES`] types). A miss on a deadline shorter than this is never held
    /// against the peer: the gamer asked for less time than such work takes here.
    shown: HashMap<String, Duration>,
    /// See [`PeerSpec::remote`].
    remote: bool,
    /// See [`PeerSpec::setup`] and [`PeerSpec::host`].
    setup: Option<u64>,
    host: Option<std::net::IpAddr>,
}

/// A session's tasks in flight at one peer.
#[derive(Debug, Clone, Copy)]
struct Running {
    tasks: u32,
    /// The latest deadline among them: the next tick runs after them on the peer, so its
    /// own deadline starts there (a deep pipeline on a busy peer must not expire its tail
    /// while the head is still running in time).
    last_due: Instant,
}

impl Peer {
    fn runs(&self, task_type: &str) -> bool {
        self.task_types.as_ref().is_none_or(|t| t.is_empty() || t.contains(task_type))
    }

    fn capacity(&self) -> u32 {
        self.window.min(self.declared)
    }

    /// Whether it can take a task that needs a slot of its own (a sessionless task, or
    /// the first of a session).
    fn has_room(&self) -> bool {
        self.in_flight < self.max_tasks && self.slots_used < self.capacity()
    }

    /// Whether it could take any task now (one needing a slot, or one more tick of a
    /// session it runs).
    fn can_take_something(&self) -> bool {
        self.has_room() || (self.in_flight < self.max_tasks && !self.running.is_empty())
    }

    /// Whether it has tasks of this session in flight.
    fn is_running(&self, gamer: &str, session: &CopyId) -> bool {
        self.running.get(gamer).and_then(|s| s.get(session)).is_some_and(|r| r.tasks > 0)
    }

    /// When this session's last task in flight here is due, if it has any.
    fn session_due(&self, gamer: &str, session: &CopyId) -> Option<Instant> {
        self.running.get(gamer).and_then(|s| s.get(session)).map(|r| r.last_due)
    }

    /// Whether it can take one more task of a session it may already be running.
    fn has_room_for_session(&self, gamer: &str, session: &CopyId, pipeline: u32) -> bool {
        match self.running.get(gamer).and_then(|s| s.get(session)) {
            Some(r) if r.tasks > 0 => self.in_flight < self.max_tasks && r.tasks < pipeline,
            _ => self.has_room(),
        }
    }

    /// Whether `bytes` more payload fit what is in flight (an idle peer takes any task).
    fn fits(&self, bytes: usize) -> bool {
        self.bytes_in_flight == 0 || self.bytes_in_flight.saturating_add(bytes) <= self.max_bytes
    }

    /// Counts a task in flight.
    fn hold(&mut self, session: Option<(&str, &CopyId)>, bytes: usize, due: Instant) {
        self.in_flight += 1;
        self.bytes_in_flight += bytes;
        match session {
            Some((gamer, session)) => {
                let r = self
                    .running
                    .entry(gamer.to_owned())
                    .or_default()
                    .entry(session.clone())
                    .or_insert(Running { tasks: 0, last_due: due });
                if r.tasks == 0 {
                    self.slots_used += 1;
                }
                r.tasks += 1;
                r.last_due = r.last_due.max(due);
            }
            None => self.slots_used += 1,
        }
    }

    /// Notes how long a successful run of `task_type` took here (see [`Peer::shown`]).
    fn record_shown(&mut self, task_type: &str, took: Duration) {
        if let Some(shown) = self.shown.get_mut(task_type) {
            *shown = took.max(*shown - *shown / 8);
        } else if self.shown.len() < MAX_SHOWN_TYPES {
            self.shown.insert(task_type.to_owned(), took);
        }
    }

    /// Stops counting a task in flight.
    fn unhold(&mut self, session: Option<(&str, &CopyId)>, bytes: usize) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(bytes);
        match session {
            Some((gamer, session)) => {
                let Some(sessions) = self.running.get_mut(gamer) else { return };
                let Some(r) = sessions.get_mut(session) else { return };
                r.tasks -= 1;
                if r.tasks == 0 {
                    sessions.remove(session);
                    if sessions.is_empty() {
                        self.running.remove(gamer);
                    }
                    self.slots_used = self.slots_used.saturating_sub(1);
                }
            }
            None => self.slots_used = self.slots_used.saturating_sub(1),
        }
    }
}

#[derive(Debug, Default)]
struct Gamer {
    tasks: HashMap<CopyId, TaskKey>,
    sessions: HashMap<CopyId, Session>,
    /// Queued tasks without a session, one lane per task type.
    free: HashMap<String, BTreeSet<TaskKey>>,
    queued: usize,
    bytes: usize,
    /// In the round-robin ring now.
    in_ring: bool,
    /// Nothing of it could be placed; waits for a wake-up.
    parked: bool,
    /// When it was parked (a sequence number): gamers are woken in the order they were
    /// parked, so waking keeps the round-robin fair.
    parked_at: u64,
    /// The waker sets it is in (so leaving or waking takes it out of all of them, and the
    /// sets never outgrow the gamers and lanes there are).
    parked_under: Vec<WakeKey>,
    /// Results delivered to it.
    completed: u64,
    /// Where it connects from (a network prefix), for
    /// [`Reputation::quarantine_min_gamers`]; its id when unknown.
    origin: Option<String>,
}

#[derive(Debug, Default)]
struct Session {
    peer: Option<PeerId>,
    /// The other replicas of its session ([`Submission::siblings`]).
    siblings: Vec<CopyId>,
    /// The setup its peer must have ([`Submission::setup`]).
    setup: Option<u64>,
    /// Queued tasks of the session, in submission order.
    lane: BTreeSet<TaskKey>,
    pending: u32,
    last_used: u64,
    /// Resync errors in a row from its peer (see
    /// [`Scheduling::max_resyncs_in_a_row`]), counted once per lost world: answers to
    /// tasks submitted before `resync_barrier` (in flight when the last one was counted)
    /// are not counted again. Reset when the session moves.
    resyncs_in_a_row: u32,
    resync_barrier: TaskKey,
    /// Peers that missed a tick of it (on a deadline such work fits there), not yet
    /// confirmed (at most [`MAX_AVOIDED`]): the session's next success from an established
    /// peer confirms them.
    unconfirmed: Vec<PeerId>,
    /// Peers it moved away from after resyncs in a row: tried last (at most
    /// [`MAX_AVOIDED`], the oldest forgotten first).
    avoid: Vec<PeerId>,
}

/// Task types whose shown duration a peer keeps.
const MAX_SHOWN_TYPES: usize = 32;
/// Peers a session remembers avoiding.
const MAX_AVOIDED: usize = 4;

/// Where a replica of a session may go: beside the peers its siblings are pinned to (see
/// [`Scheduler::may_host_beside`]), on a peer of the given setup.
#[derive(Clone, Copy)]
struct Replica<'a> {
    beside: &'a [(&'a PeerId, &'a Peer)],
    setup: Option<u64>,
    /// Only a peer an audit could check may take it (a session, where
    /// [`SchedulerConfig::sessions_need_auditable_peers`] is set).
    auditable: bool,
    /// For a replica (a session with a setup): a key of its gamer and session that orders
    /// the candidate peers unpredictably (see [`Scheduler::best_peer`]).
    draw: Option<u64>,
}

impl Replica<'_> {
    /// No constraint: a task without a session.
    const NONE: Replica<'static> = Replica { beside: &[], setup: None, auditable: false, draw: None };
}

/// A waker set's key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WakeKey {
    Peer(PeerId),
    Type(String),
}

/// Who to wake when something changes, filled when gamers are parked.
#[derive(Debug, Default)]
struct Wakers {
    /// Gamers waiting for room on a peer their session is pinned to, in parking order.
    by_peer: HashMap<PeerId, BTreeSet<(u64, GamerId)>>,
    /// Gamers waiting for room on any peer that runs a task type, in parking order.
    by_type: HashMap<String, BTreeSet<(u64, GamerId)>>,
}

/// The scheduler. `P` is the task payload, opaque to it.
#[derive(Debug)]
pub struct Scheduler<P> {
    config: SchedulerConfig,
    /// Unsettled disputes: peers kept apart when replicas are placed.
    disputes: Disputes,
    peers: HashMap<PeerId, Peer>,
    gamers: HashMap<GamerId, Gamer>,
    /// Gamers with queued tasks that are not parked, in round-robin order.
    ring: VecDeque<GamerId>,
    wakers: Wakers,
    /// Peers that gained room since they were last found full or without waiting gamers:
    /// dispatch wakes their longest-parked gamers one at a time, only as long as they
    /// still have room, so a freed slot costs the gamers it takes to fill it, not every
    /// gamer waiting.
    roomy: BTreeSet<PeerId>,
    tasks: HashMap<TaskKey, Task<P>>,
    deadlines: BTreeSet<(Instant, TaskKey, u32)>,
    /// Queue wait limits of the tasks waiting in queues.
    queue_limits: BTreeSet<(Instant, TaskKey)>,
    failures: Vec<Failure>,
    /// Peers that reached `quarantine_after_misses`, to be taken by the router.
    quarantined: Vec<PeerId>,
    queued: usize,
    bytes: usize,
    next_key: TaskKey,
    next_join: u64,
    next_park: u64,
    counters: Counters,
    /// Gamers looked at by dispatch, ever (what dispatch costs).
    examined: u64,
    /// The secret key of the setup classes' tie-break (see
    /// [`Scheduler::largest_setup_class`]).
    tie_break: std::hash::RandomState,
}

impl<P> Scheduler<P> {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            disputes: Disputes::new(config.disputes.clone()),
            config,
            peers: HashMap::new(),
            gamers: HashMap::new(),
            ring: VecDeque::new(),
            wakers: Wakers::default(),
            roomy: BTreeSet::new(),
            tasks: HashMap::new(),
            deadlines: BTreeSet::new(),
            queue_limits: BTreeSet::new(),
            failures: Vec::new(),
            quarantined: Vec::new(),
            queued: 0,
            bytes: 0,
            next_key: 1,
            next_join: 0,
            next_park: 0,
            counters: Counters::default(),
            examined: 0,
            tie_break: std::hash::RandomState::new(),
        }
    }

    /// Counters since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Tasks waiting in queues.
    pub fn queued_len(&self) -> usize {
        self.queued
    }

    /// Payload bytes of every task held (queued, in flight or orphaned).
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Tasks assigned and not yet answered (including orphaned ones).
    pub fn in_flight_len(&self) -> usize {
        self.peers.values().map(|p| p.in_flight as usize).sum()
    }

    /// Tasks currently assigned to `peer`.
    pub fn peer_load(&self, peer: &str) -> Option<u32> {
        self.peers.get(peer).map(|p| p.in_flight)
    }

    /// How many tasks `peer` may hold at once now (what it has shown, capped by what it
    /// declared).
    pub fn peer_capacity(&self, peer: &str) -> Option<u32> {
        self.peers.get(peer).map(Peer::capacity)
    }

    /// Whether a gamer has this session (queued, running or idle).
    pub fn has_session(&self, gamer: &str, session: &CopyId) -> bool {
        self.gamers.get(gamer).is_some_and(|g| g.sessions.contains_key(session))
    }

    /// Peers that missed `quarantine_after_misses` deadlines in a row since the last call
    /// (each reported once per streak): the router quarantines them.
    pub fn take_quarantined(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.quarantined)
    }

    /// The peer holding a gamer's session, if any.
    pub fn session_peer(&self, gamer: &str, session: &CopyId) -> Option<&str> {
        self.gamers.get(gamer)?.sessions.get(session)?.peer.as_deref()
    }

    /// Sessions known now, all gamers together.
    pub fn sessions_len(&self) -> usize {
        self.gamers.values().map(|g| g.sessions.len()).sum()
    }

    /// What the operator's view shows of a peer.
    pub fn peer_view(&self, peer: &str) -> Option<PeerView> {
        let p = self.peers.get(peer)?;
        let mut task_types: Option<Vec<String>> = p.task_types.as_ref().map(|t| t.iter().cloned().collect());
        if let Some(t) = &mut task_types {
            t.sort();
        }
        Some(PeerView {
            task_types,
            declared_capacity: p.declared,
            capacity: p.capacity(),
            in_flight: p.in_flight,
            sessions: p.sessions.len(),
            completed: p.completed,
        })
    }

    /// What the operator's view shows of a gamer.
    pub fn gamer_view(&self, gamer: &str) -> Option<GamerView> {
        let g = self.gamers.get(gamer)?;
        Some(GamerView { sessions: g.sessions.len(), pending: g.tasks.len(), completed: g.completed })
    }

    /// How many times dispatch has looked at a gamer's lanes since start: what dispatch
    /// has cost, to compare with the placements it made.
    pub fn gamers_examined(&self) -> u64 {
        self.examined
    }

    /// Entries in the waker sets (what parking costs in memory).
    pub fn waker_entries(&self) -> usize {
        self.wakers.by_peer.values().chain(self.wakers.by_type.values()).map(BTreeSet::len).sum()
    }

    /// Gamers parked now (nothing of theirs could be placed).
    pub fn parked_len(&self) -> usize {
        self.gamers.values().filter(|g| g.parked).count()
    }

    /// The task an assignment id names, while that attempt is out at `peer_id` (what
    /// [`Scheduler::complete`] would accept an answer for now).
    pub fn assigned_to(&self, peer_id: &str, assignment_id: &str) -> Option<&Task<P>> {
        let (key, attempt) = parse_assignment_id(assignment_id)?;
        let task = self.tasks.get(&key)?;
        match &task.state {
            TaskState::Assigned { peer, attempt: a, .. } | TaskState::Orphaned { peer, attempt: a, .. }
                if peer == peer_id && *a == attempt =>
            {
                Some(task)
            }
            _ => None,
        }
    }

    /// A task's data, for building its assignment.
    pub fn task(&self, key: TaskKey) -> Option<&Task<P>> {
        self.tasks.get(&key)
    }

    /// Tasks given up since the last call, for their gamers to be told. Filled by
    /// [`Scheduler::dispatch`], [`Scheduler::remove_peer`] and [`Scheduler::expire`]
    /// (which also returns its own).
    pub fn take_failures(&mut self) -> Vec<Failure> {
        std::mem::take(&mut self.failures)
    }

    /// Adds a peer. A peer already known under this id is replaced (its work re-queued).
    pub fn add_peer(&mut self, id: PeerId, spec: PeerSpec) {
        self.remove_peer(&id);
        let declared = spec.capacity.clamp(1, self.config.scheduling.max_peer_capacity.max(1));
        self.next_join += 1;
        let peer = Peer {
            task_types: spec.task_types,
            declared,
            window: self.config.scheduling.initial_peer_capacity.max(1),
            in_flight: 0,
            running: HashMap::new(),
            slots_used: 0,
            max_tasks: self.config.max_tasks_per_peer.max(1),
            bytes_in_flight: 0,
            max_bytes: self.config.max_bytes_per_peer.max(1),
            joined: self.next_join,
            assigned: HashSet::new(),
            sessions: HashSet::new(),
            completed: 0,
            verified: 0,
            agreements: 0,
            since_ms: 0,
            misses_in_a_row: 0,
            miss_origins: Vec::new(),
            reported: false,
            shown: HashMap::new(),
            setup: spec.setup,
            host: spec.host,
            remote: spec.remote,
        };
        self.peers.insert(id.clone(), peer);
        self.wake_for_room(&id);
    }

    /// A live peer's standing: what it has shown it can take, and its streak of confirmed
    /// misses.
    pub fn standing(&self, peer: &str) -> Option<Standing> {
        self.peers.get(peer).map(|p| Standing {
            window: p.window,
            misses_in_a_row: p.misses_in_a_row,
            verified: p.verified,
            agreements: p.agreements,
            since_ms: p.since_ms,
        })
    }

    /// A quarantined peer loses what its votes weighed (successful answers, agreements,
    /// age): back from quarantine, it starts over as a newcomer would.
    pub fn forfeit_trust(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.verified = 0;
            p.agreements = 0;
            p.since_ms = 0;
        }
    }

    /// Records that a live peer agreed with another network's peer on a compared tick.
    pub fn agreed(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.agreements += 1;
        }
    }

    /// Whether a live peer is established: it has given
    /// [`Reputation::established_after_answers`] successful answers.
    pub fn is_established(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.verified >= self.config.reputation.established_after_answers)
    }

    /// The standing a peer has when it registers with nothing remembered: a standing equal
    /// to it need not be kept.
    pub fn fresh_standing(&self) -> Standing {
        Standing {
            window: self.config.scheduling.initial_peer_capacity.max(1),
            misses_in_a_row: 0,
            verified: 0,
            agreements: 0,
            since_ms: 0,
        }
    }

    /// Gives a peer just added ([`Scheduler::add_peer`]) the standing it had when it last
    /// left. The window is held within what it declares now (at least 1). The streak goes
    /// on from where it was: the next confirmed misses add to it, and reaching
    /// `quarantine_after_misses` reports the peer once. A streak already at or past the
    /// limit (a peer back from its quarantine, or a limit lowered since) is held just
    /// below it: the peer's next confirmed miss before an accepted answer reports it again.
    /// The gamers behind the remembered misses are not remembered: the misses that
    /// complete the streak must come from `quarantine_min_gamers` origins themselves.
    pub fn restore_standing(&mut self, peer: &str, standing: Standing) {
        let limit = self.config.reputation.quarantine_after_misses;
        let Some(p) = self.peers.get_mut(peer) else { return };
        p.window = standing.window.clamp(1, p.declared);
        p.misses_in_a_row = if limit > 0 { standing.misses_in_a_row.min(limit - 1) } else { standing.misses_in_a_row };
        // The gamers behind the remembered misses are not remembered: the misses that
        // complete the streak must come from enough origins on their own.
        p.miss_origins.clear();
        p.reported = false;
        p.verified = standing.verified;
        p.agreements = standing.agreements;
        p.since_ms = standing.since_ms;
    }

    /// Records where a gamer connects from (a network prefix): confirmed misses on work
    /// of one origin only never get a peer quarantined (see
    /// [`Reputation::quarantine_min_gamers`]).
    pub fn set_gamer_origin(&mut self, gamer: &str, origin: String) {
        if let Some(g) = self.gamers.get_mut(gamer) {
            g.origin = Some(origin);
        }
    }

    /// Removes a peer and re-queues its tasks; a task that has used its attempts fails
    /// as poison. Returns how many were re-queued or failed.
    pub fn remove_peer(&mut self, id: &str) -> usize {
        let Some(peer) = self.peers.remove(id) else { return 0 };
        for (gamer_id, session_id) in &peer.sessions {
            if let Some(session) = self.gamers.get_mut(gamer_id).and_then(|g| g.sessions.get_mut(session_id))
                && session.peer.as_deref() == Some(id)
            {
                session.peer = None;
            }
        }
        let mut keys: Vec<TaskKey> = peer.assigned.into_iter().collect();
        // Re-queue in submission order, so failures and logs come out in a stable order.
        keys.sort_unstable();
        let mut count = 0;
        for key in keys {
            let Some(task) = self.tasks.get_mut(&key) else { continue };
            match task.state.clone() {
                TaskState::Orphaned { attempt, due, .. } => {
                    self.deadlines.remove(&(due, key, attempt));
                    self.remove_task(key);
                }
                TaskState::Assigned { attempt, due, .. } => {
                    count += 1;
                    self.deadlines.remove(&(due, key, attempt));
                    if !task.tried.iter().any(|p| p == id) {
                        task.tried.push(id.to_owned());
                    }
                    task.state = TaskState::Queued;
                    if task.attempts >= self.config.scheduling.max_attempts {
                        self.fail(key, FailReason::Poison);
                    } else {
                        self.enqueue(key);
                    }
                }
                TaskState::Queued => {}
            }
        }
        // Its pinned sessions are free to go anywhere now: wake all who waited for it.
        self.roomy.remove(id);
        if let Some(gamers) = self.wakers.by_peer.remove(id) {
            for (_, gamer) in gamers {
                self.unpark(&gamer);
            }
        }
        count
    }

    /// Adds a gamer (no-op if it is known: a reconnecting gamer keeps its tasks).
    pub fn add_gamer(&mut self, id: GamerId) {
        self.gamers.entry(id).or_default();
    }

    /// Removes a gamer: its queued tasks are dropped, its in-flight ones are orphaned.
    /// Returns how many tasks were dropped or orphaned.
    pub fn remove_gamer(&mut self, id: &str) -> usize {
        let Some(mut gamer) = self.gamers.remove(id) else { return 0 };
        if gamer.in_ring {
            self.ring.retain(|g| g != id);
        }
        self.forget_wakers(id, gamer.parked_at, std::mem::take(&mut gamer.parked_under));
        for (session_id, session) in &gamer.sessions {
            if let Some(peer) = session.peer.as_ref().and_then(|p| self.peers.get_mut(p)) {
                peer.sessions.remove(&(id.to_owned(), session_id.clone()));
            }
        }
        self.queued -= gamer.queued;
        let mut dropped = 0;
        for key in gamer.tasks.into_values() {
            let Some(task) = self.tasks.get_mut(&key) else { continue };
            dropped += 1;
            match std::mem::replace(&mut task.state, TaskState::Queued) {
                TaskState::Queued => {
                    if let Some(at) = task.give_up_at {
                        self.queue_limits.remove(&(at, key));
                    }
                    self.remove_task(key);
                }
                TaskState::Assigned { peer, attempt, due } | TaskState::Orphaned { peer, attempt, due } => {
                    task.state = TaskState::Orphaned { peer, attempt, due };
                }
            }
        }
        self.counters.dropped += dropped as u64;
        dropped
    }

    /// Accepts a task into its gamer's queue. Call [`Scheduler::dispatch`] afterwards.
    pub fn submit(&mut self, gamer_id: &str, submission: Submission<P>, now: Instant) -> Result<TaskKey, SubmitError> {
        let config = &self.config;
        let key = self.next_key;
        let gamer = self.gamers.get_mut(gamer_id).ok_or(SubmitError::UnknownGamer)?;
        if gamer.tasks.contains_key(&submission.task_id) {
            return Err(SubmitError::DuplicateTask(submission.task_id));
        }
        if gamer.tasks.len() >= config.scheduling.max_pending_per_gamer {
            return Err(SubmitError::QueueFull(config.scheduling.max_pending_per_gamer));
        }
        if gamer.bytes.saturating_add(submission.bytes) > config.scheduling.max_pending_bytes_per_gamer {
            return Err(SubmitError::GamerBytes(config.scheduling.max_pending_bytes_per_gamer));
        }
        if self.bytes.saturating_add(submission.bytes) > config.scheduling.max_pending_bytes {
            return Err(SubmitError::TotalBytes(config.scheduling.max_pending_bytes));
        }
        match &submission.session_id {
            Some(session_id) => {
                if !gamer.sessions.contains_key(session_id) {
                    if gamer.sessions.len() >= config.scheduling.max_sessions_per_gamer {
                        let idle = gamer
                            .sessions
                            .iter()
                            .filter(|(_, s)| s.pending == 0)
                            .min_by_key(|(_, s)| s.last_used)
                            .map(|(id, _)| id.clone());
                        let Some(idle) = idle else {
                            return Err(SubmitError::SessionLimit(config.scheduling.max_sessions_per_gamer));
                        };
                        let forgotten = gamer.sessions.remove(&idle).expect("found above");
                        if let Some(peer) = forgotten.peer.and_then(|p| self.peers.get_mut(&p)) {
                            peer.sessions.remove(&(gamer_id.to_owned(), idle));
                        }
                    }
                    gamer.sessions.insert(session_id.clone(), Session::default());
                }
                let session = gamer.sessions.get_mut(session_id).expect("inserted above");
                session.pending += 1;
                session.last_used = key;
                if session.siblings != submission.siblings {
                    session.siblings = submission.siblings;
                }
                session.setup = submission.setup;
            }
            None => {
                if !gamer.free.contains_key(&submission.task_type)
                    && gamer.free.len() >= config.max_task_types_per_gamer
                {
                    return Err(SubmitError::TaskTypeLimit(config.max_task_types_per_gamer));
                }
            }
        }
        self.next_key += 1;
        gamer.tasks.insert(submission.task_id.clone(), key);
        gamer.bytes += submission.bytes;
        self.bytes += submission.bytes;
        let give_up_at = self.config.scheduling.max_queue_wait.map(|wait| now + wait);
        self.tasks.insert(
            key,
            Task {
                gamer: gamer_id.to_owned(),
                task_id: submission.task_id,
                task_type: submission.task_type,
                session_id: submission.session_id,
                deadline: submission.deadline,
                payload: submission.payload,
                bytes: submission.bytes,
                attempts: 0,
                tried: Vec::new(),
                timed_out_on: Vec::new(),
                missed_on: Vec::new(),
                erred_on: Vec::new(),
                state: TaskState::Queued,
                give_up_at,
                submitted_at: now,
                assigned_at: now,
            },
        );
        self.counters.queued += 1;
        self.enqueue(key);
        Ok(key)
    }

    /// Places as many queued tasks as free capacity allows, round-robin across gamers.
    /// Tasks found past their queue wait limit fail instead (see
    /// [`Scheduler::take_failures`]).
    pub fn dispatch(&mut self, now: Instant) -> Vec<Dispatch> {
        let mut out = Vec::new();
        // Task types no peer with room runs: nothing placed in this call can change that.
        let mut full_types: HashSet<String> = HashSet::new();
        let parked_before = self.next_park;
        // While some peer could take something: a task needing a slot, or one more tick of
        // a session it runs.
        while self.peers.values().any(Peer::can_take_something) {
            let Some(gamer_id) = self.ring.pop_front() else {
                // The ring is empty: wake the next parked gamer a peer with room could
                // serve, if any is left.
                if self.wake_one(parked_before) {
                    continue;
                }
                break;
            };
            let Some(gamer) = self.gamers.get_mut(&gamer_id) else { continue };
            gamer.in_ring = false;
            self.examined += 1;
            match self.find_placement(&gamer_id, &mut full_types) {
                Some((key, _)) if self.tasks[&key].give_up_at.is_some_and(|at| at <= now) => {
                    self.take_from_lane(key);
                    self.fail(key, FailReason::QueueTimeout);
                }
                Some((key, peer)) => {
                    self.take_from_lane(key);
                    out.push(self.assign(key, peer, now));
                }
                None => {
                    self.park(&gamer_id);
                    continue;
                }
            }
            self.activate(&gamer_id);
        }
        out
    }

    /// This gamer's oldest queued task that can be placed now, and where.
    fn find_placement(&self, gamer_id: &str, full_types: &mut HashSet<String>) -> Option<(TaskKey, PeerId)> {
        let gamer = self.gamers.get(gamer_id)?;
        let mut best: Option<(TaskKey, PeerId)> = None;
        let mut consider = |key: TaskKey, target: Option<PeerId>| {
            if let Some(peer) = target
                && best.as_ref().is_none_or(|(k, _)| key < *k)
            {
                best = Some((key, peer));
            }
        };
        let pipeline = self.config.scheduling.max_session_pipeline.max(1);
        for (session_id, session) in &gamer.sessions {
            let Some(&key) = session.lane.first() else { continue };
            let task = &self.tasks[&key];
            let pinned = session.peer.as_ref().and_then(|id| self.peers.get(id).map(|p| (id, p)));
            let beside = self.pinned_siblings(gamer, &session.siblings);
            let auditable = self.config.sessions_need_auditable_peers;
            // Replicas of one session share the draw: their scheduler sessions differ only
            // by the replica.
            let draw = session.setup.map(|_| self.tie_break.hash_one((gamer_id, session_id.id.as_str())));
            let replica = Replica { beside: &beside, setup: session.setup, auditable, draw };
            // Peers the session moved away from are tried last, as if they had tried it.
            let tried: std::borrow::Cow<'_, [PeerId]> = if session.avoid.is_empty() {
                std::borrow::Cow::Borrowed(&task.tried)
            } else {
                std::borrow::Cow::Owned(task.tried.iter().chain(&session.avoid).cloned().collect())
            };
            let best = |full_types: &mut HashSet<String>| {
                self.best_peer(&task.task_type, &tried, &task.timed_out_on, task.bytes, &replica, full_types)
            };
            let target = match pinned {
                // The session's peer does not run this tick's type and runs nothing of the
                // session now: the session may move (assign re-pins it).
                Some((_, p)) if !p.runs(&task.task_type) && !p.is_running(gamer_id, session_id) => best(full_types),
                Some((peer_id, p)) => (p.has_room_for_session(gamer_id, session_id, pipeline)
                    && p.runs(&task.task_type)
                    && p.fits(task.bytes))
                .then(|| peer_id.clone()),
                None => best(full_types),
            };
            consider(key, target);
        }
        for (task_type, lane) in &gamer.free {
            let Some(&key) = lane.first() else { continue };
            let task = &self.tasks[&key];
            let target =
                self.best_peer(task_type, &task.tried, &task.timed_out_on, task.bytes, &Replica::NONE, full_types);
            consider(key, target);
        }
        best
    }

    /// The peers the given sibling replica sessions are pinned to.
    fn pinned_siblings<'a>(&'a self, gamer: &'a Gamer, siblings: &[CopyId]) -> Vec<(&'a PeerId, &'a Peer)> {
        siblings
            .iter()
            .filter_map(|s| gamer.sessions.get(s)?.peer.as_ref())
            .filter_map(|id| self.peers.get_key_value(id))
            .collect()
    }

    /// Whether `candidate` may host a replica beside the peers its siblings are pinned to:
    /// not one of them, the same determinism setup (declared), another host when the
    /// configuration asks for it.
    fn may_host_beside(&self, candidate: (&PeerId, &Peer), beside: &[(&PeerId, &Peer)]) -> bool {
        let (id, peer) = candidate;
        beside.iter().all(|(other_id, other)| {
            *other_id != id
                && peer.setup.is_some()
                && peer.setup == other.setup
                && !(self.config.replication.replicas_on_distinct_hosts
                    && peer.host.is_some()
                    && peer.host == other.host)
                && !self.disputes.apart(id, other_id)
        })
    }

    /// Unsettled disputes (see [`crate::disputes`]).
    pub fn disputes(&self) -> &Disputes {
        &self.disputes
    }

    /// Unsettled disputes, to record them.
    pub fn disputes_mut(&mut self) -> &mut Disputes {
        &mut self.disputes
    }

    /// Whether some peer that runs `task_type` could host one more replica of a session
    /// whose replicas are the sessions `siblings` (room aside).
    pub fn can_host_replica(&self, gamer: &str, siblings: &[CopyId], task_type: &str) -> bool {
        let Some(g) = self.gamers.get(gamer) else { return false };
        let beside = self.pinned_siblings(g, siblings);
        self.peers.iter().any(|candidate| candidate.1.runs(task_type) && self.may_host_beside(candidate, &beside))
    }

    /// How many replicas of one session the connected peers of determinism setup `setup`
    /// that run `task_type` could hold (one per host when replicas must be on distinct
    /// hosts).
    ///
    /// Peers kept apart by an unsettled dispute never share a session, so where any are,
    /// the count is of a set of peers pairwise not kept apart, found greedily (oldest
    /// ids first, so it is stable): a liar kept apart from the one honest peer leaves
    /// room for one replica, not two whose second could never be placed.
    pub fn replica_capacity_of(&self, task_type: &str, setup: u64) -> usize {
        let peers = self.peers.iter().filter(|(_, p)| p.setup == Some(setup) && p.runs(task_type));
        if self.disputes.any_apart() {
            let mut candidates: Vec<(&PeerId, &Peer)> = peers.collect();
            candidates.sort_by(|a, b| a.0.cmp(b.0));
            let mut chosen: Vec<(&PeerId, &Peer)> = Vec::new();
            for (id, peer) in candidates {
                let clash = chosen.iter().any(|(other_id, other)| {
                    (self.config.replication.replicas_on_distinct_hosts && peer.host == other.host)
                        || self.disputes.apart(id, other_id)
                });
                if !clash {
                    chosen.push((id, peer));
                }
            }
            return chosen.len();
        }
        if self.config.replication.replicas_on_distinct_hosts {
            peers.map(|(_, p)| p.host).collect::<HashSet<_>>().len()
        } else {
            peers.count()
        }
    }

    /// The setup class a replicated session's replicas come from, and how many replicas of
    /// one session it could hold: the class with the most *established* peers (see
    /// [`Reputation::established_after_answers`]; one per host where replicas must be
    /// on distinct hosts), then the most peers, then a tie-break keyed by a secret drawn
    /// when the scheduler starts. So fresh peers declaring a setup of their own never
    /// outnumber established ones, and no setup string can be chosen to win ties.
    pub fn largest_setup_class(&self, task_type: &str) -> Option<(u64, usize)> {
        let setups: HashSet<u64> = self.peers.values().filter(|p| p.runs(task_type)).filter_map(|p| p.setup).collect();
        setups
            .into_iter()
            .map(|s| (s, self.established_in(task_type, s), self.replica_capacity_of(task_type, s)))
            .max_by_key(|&(s, established, n)| (established, n, self.tie_break.hash_one(s)))
            .map(|(s, _, n)| (s, n))
    }

    /// How many established peers of setup `setup` run `task_type` (one per host where
    /// replicas must be on distinct hosts).
    fn established_in(&self, task_type: &str, setup: u64) -> usize {
        let established = self.config.reputation.established_after_answers;
        let peers =
            self.peers.values().filter(|p| p.setup == Some(setup) && p.runs(task_type) && p.verified >= established);
        if self.config.replication.replicas_on_distinct_hosts {
            peers.map(|p| p.host).collect::<HashSet<_>>().len()
        } else {
            peers.count()
        }
    }

    /// The determinism setups an audit can check: declared by peers of two or more hosts
    /// (two or more peers where replicas need not be on distinct hosts).
    fn auditable_setups(&self) -> HashSet<u64> {
        let mut hosts: HashMap<u64, HashSet<Option<std::net::IpAddr>>> = HashMap::new();
        let mut peers: HashMap<u64, usize> = HashMap::new();
        for p in self.peers.values() {
            let Some(setup) = p.setup else { continue };
            hosts.entry(setup).or_default().insert(p.host);
            *peers.entry(setup).or_default() += 1;
        }
        if self.config.replication.replicas_on_distinct_hosts {
            hosts.into_iter().filter(|(_, h)| h.len() >= 2).map(|(s, _)| s).collect()
        } else {
            peers.into_iter().filter(|(_, n)| *n >= 2).map(|(s, _)| s).collect()
        }
    }

    /// Whether a live peer could be audited: its setup is declared and shared by a peer of
    /// another host.
    pub fn is_auditable(&self, peer: &str) -> bool {
        self.peers.get(peer).and_then(|p| p.setup).is_some_and(|s| self.auditable_setups().contains(&s))
    }

    /// Replaces the sibling list of a gamer's session (a replica started or retired: the
    /// copies already queued must avoid the new one's peer too).
    pub fn set_siblings(&mut self, gamer: &str, session: &CopyId, siblings: Vec<CopyId>) {
        if let Some(s) = self.gamers.get_mut(gamer).and_then(|g| g.sessions.get_mut(session)) {
            s.siblings = siblings;
        }
    }

    /// How many replicas of one session the connected peers that run `task_type` could
    /// hold: the most peers sharing one declared determinism setup, counting one per host
    /// when replicas must be on distinct hosts.
    pub fn replica_capacity(&self, task_type: &str) -> usize {
        let mut classes: HashMap<u64, HashSet<Option<std::net::IpAddr>>> = HashMap::new();
        let mut peers: HashMap<u64, usize> = HashMap::new();
        for p in self.peers.values().filter(|p| p.runs(task_type)) {
            let Some(setup) = p.setup else { continue };
            classes.entry(setup).or_default().insert(p.host);
            *peers.entry(setup).or_default() += 1;
        }
        if self.config.replication.replicas_on_distinct_hosts {
            classes.values().map(HashSet::len).max().unwrap_or(0)
        } else {
            peers.values().copied().max().unwrap_or(0)
        }
    }

    /// Takes back the count of a completion that was not delivered to the gamer (a
    /// replica's answer after the first).
    pub fn uncount_completion(&mut self, gamer: &str) {
        self.counters.completed = self.counters.completed.saturating_sub(1);
        if let Some(g) = self.gamers.get_mut(gamer) {
            g.completed = g.completed.saturating_sub(1);
        }
    }

    /// The sessions pinned to a peer now: (gamer, session).
    pub fn sessions_on(&self, peer: &str) -> Vec<(GamerId, CopyId)> {
        self.peers.get(peer).map(|p| p.sessions.iter().cloned().collect()).unwrap_or_default()
    }

    /// The peer a gamer's session is pinned to, if any.
    pub fn pinned_peer(&self, gamer: &str, session: &CopyId) -> Option<&PeerId> {
        self.gamers.get(gamer)?.sessions.get(session)?.peer.as_ref()
    }

    /// Drops every task of a gamer's session, queued or in flight (a late answer to one
    /// is refused as unknown), and the session itself. Returns the dropped tasks' ids.
    /// No failure is reported for them: the caller (replication) accounts for them.
    pub fn cancel_session(&mut self, gamer_id: &str, session_id: &CopyId) -> Vec<CopyId> {
        let Some(gamer) = self.gamers.get(gamer_id) else { return Vec::new() };
        let mut keys: Vec<TaskKey> = gamer
            .tasks
            .values()
            .copied()
            .filter(|k| self.tasks.get(k).is_some_and(|t| t.session_id.as_ref() == Some(session_id)))
            .collect();
        keys.sort_unstable();
        let mut dropped = Vec::with_capacity(keys.len());
        for key in keys {
            let state = self.tasks[&key].state.clone();
            match state {
                TaskState::Queued => self.take_from_lane(key),
                TaskState::Assigned { peer, attempt, due } | TaskState::Orphaned { peer, attempt, due } => {
                    self.deadlines.remove(&(due, key, attempt));
                    self.release(&peer, key);
                }
            }
            if let Some(task) = self.remove_task(key) {
                dropped.push(task.task_id);
            }
        }
        if let Some(session) = self.gamers.get_mut(gamer_id).and_then(|g| g.sessions.remove(session_id))
            && let Some(peer) = session.peer.and_then(|p| self.peers.get_mut(&p))
        {
            peer.sessions.remove(&(gamer_id.to_owned(), session_id.to_owned()));
        }
        dropped
    }

    /// The least-loaded peer with room that runs `task_type`, preferring untried ones (and,
    /// for a task that was tried before, established ones: a retry must not land on the
    /// next of a row of fresh black holes) and never one in `excluded` (it missed this
    /// task's deadline before), nor one that may not host a replica `beside` its session's
    /// other replicas' peers.
    fn best_peer(
        &self,
        task_type: &str,
        tried: &[PeerId],
        excluded: &[PeerId],
        bytes: usize,
        replica: &Replica<'_>,
        full_types: &mut HashSet<String>,
    ) -> Option<PeerId> {
        let Replica { beside, setup, auditable, draw } = *replica;
        if full_types.contains(task_type) {
            return None;
        }
        let auditable_setups = auditable.then(|| self.auditable_setups());
        let best = self
            .peers
            .iter()
            .filter(|(id, p)| p.has_room() && p.runs(task_type) && p.fits(bytes) && !excluded.contains(id))
            .filter(|candidate| beside.is_empty() || self.may_host_beside(*candidate, beside))
            .filter(|(_, p)| setup.is_none() || p.setup == setup)
            .filter(|(_, p)| auditable_setups.as_ref().is_none_or(|a| p.setup.is_some_and(|s| a.contains(&s))))
            .min_by(|(a_id, a), (b_id, b)| {
                let a_tried = tried.contains(a_id);
                let b_tried = tried.contains(b_id);
                let unproven = |p: &Peer| {
                    (!tried.is_empty() || draw.is_some())
                        && p.verified < self.config.reputation.established_after_answers
                };
                if let Some(draw) = draw {
                    // A replica goes to an established peer first, then to the peer a keyed
                    // draw of the session picks, not to the least loaded: an attacker's
                    // idle peers cannot steer themselves into a session's replicas; they
                    // get about their share of them.
                    let rank = |id: &PeerId| self.tie_break.hash_one((draw, id));
                    return a
                        .remote
                        .cmp(&b.remote)
                        .then(a_tried.cmp(&b_tried))
                        .then(unproven(a).cmp(&unproven(b)))
                        .then(rank(a_id).cmp(&rank(b_id)));
                }
                // Compare load ratios without floats: a.in/a.cap vs b.in/b.cap.
                let a_load = u64::from(a.in_flight) * u64::from(b.capacity());
                let b_load = u64::from(b.in_flight) * u64::from(a.capacity());
                // Local peers first: another coordinator's only when none here can.
                a.remote
                    .cmp(&b.remote)
                    .then(a_tried.cmp(&b_tried))
                    .then(unproven(a).cmp(&unproven(b)))
                    .then(a_load.cmp(&b_load))
                    .then(a.in_flight.cmp(&b.in_flight))
                    .then(a.joined.cmp(&b.joined))
            })
            .map(|(id, _)| id.clone());
        // Remembered only when no peer has a slot for the type at all: a smaller task of
        // it may still fit where this one's bytes did not.
        if best.is_none() && !self.peers.values().any(|p| p.has_room() && p.runs(task_type)) {
            full_types.insert(task_type.to_owned());
        }
        best
    }

    /// Slots free now on this coordinator's own peers (not the fleet's stand-in): what it
    /// could lend other coordinators of the fleet.
    pub fn free_local_slots(&self) -> u64 {
        self.peers.values().filter(|p| !p.remote).map(|p| u64::from(p.capacity().saturating_sub(p.slots_used))).sum()
    }

    fn assign(&mut self, key: TaskKey, peer_id: PeerId, now: Instant) -> Dispatch {
        let task = self.tasks.get_mut(&key).expect("queued tasks exist");
        task.attempts += 1;
        if task.attempts > 1 {
            self.counters.redispatched += 1;
        }
        self.counters.assigned += 1;
        let attempt = task.attempts;
        let (gamer_id, session_id, bytes) = (task.gamer.clone(), task.session_id.clone(), task.bytes);
        let peer = self.peers.get_mut(&peer_id).expect("placement picked a live peer");
        // A pipelined tick runs after the session's ticks already there: its deadline
        // counts from theirs. If the head stalls, its own deadline catches it and takes
        // the rest along (see `expire_some`).
        let start = session_id.as_ref().and_then(|s| peer.session_due(&gamer_id, s)).map_or(now, |d| d.max(now));
        let due = start + task.deadline;
        task.state = TaskState::Assigned { peer: peer_id.clone(), attempt, due };
        task.assigned_at = now;
        peer.hold(session_id.as_ref().map(|s| (gamer_id.as_str(), s)), bytes, due);
        peer.assigned.insert(key);
        if let Some(session_id) = session_id {
            let session = self.gamers.get_mut(&gamer_id).and_then(|g| g.sessions.get_mut(&session_id));
            if let Some(session) = session
                && session.peer.as_ref() != Some(&peer_id)
            {
                session.resyncs_in_a_row = 0;
                if let Some(old) = session.peer.replace(peer_id.clone())
                    && let Some(old) = self.peers.get_mut(&old)
                {
                    old.sessions.remove(&(gamer_id.clone(), session_id.clone()));
                }
                let peer = self.peers.get_mut(&peer_id).expect("placement picked a live peer");
                peer.sessions.insert((gamer_id, session_id));
            }
        }
        self.deadlines.insert((due, key, attempt));
        Dispatch { key, assignment_id: assignment_id(key, attempt), peer: peer_id, attempt, deadline: due - now }
    }

    /// Puts a queued task into its lane (in submission order) and its gamer in the ring.
    fn enqueue(&mut self, key: TaskKey) {
        let task = self.tasks.get(&key).expect("enqueued tasks exist");
        if let Some(at) = task.give_up_at {
            // Back in a queue: its wait limit applies again (at once if it has passed).
            self.queue_limits.insert((at, key));
        }
        let gamer_id = task.gamer.clone();
        let gamer = self.gamers.get_mut(&gamer_id).expect("tasks belong to known gamers");
        match &task.session_id {
            Some(session_id) => {
                gamer.sessions.entry(session_id.clone()).or_default().lane.insert(key);
            }
            None => {
                gamer.free.entry(task.task_type.clone()).or_default().insert(key);
            }
        }
        gamer.queued += 1;
        self.queued += 1;
        self.unpark(&gamer_id);
    }

    /// Takes a queued task out of its lane (it is being placed or given up).
    fn take_from_lane(&mut self, key: TaskKey) {
        let task = self.tasks.get(&key).expect("queued tasks exist");
        if let Some(at) = task.give_up_at {
            self.queue_limits.remove(&(at, key));
        }
        let Some(gamer) = self.gamers.get_mut(&task.gamer) else { return };
        let removed = match &task.session_id {
            Some(session_id) => gamer.sessions.get_mut(session_id).is_some_and(|s| s.lane.remove(&key)),
            None => match gamer.free.get_mut(&task.task_type) {
                Some(lane) => {
                    let removed = lane.remove(&key);
                    if lane.is_empty() {
                        gamer.free.remove(&task.task_type);
                    }
                    removed
                }
                None => false,
            },
        };
        if removed {
            gamer.queued -= 1;
            self.queued -= 1;
        }
    }

    /// Puts a gamer with queued tasks in the ring, unless it is parked or already there.
    fn activate(&mut self, gamer_id: &str) {
        if let Some(gamer) = self.gamers.get_mut(gamer_id)
            && gamer.queued > 0
            && !gamer.in_ring
            && !gamer.parked
        {
            gamer.in_ring = true;
            self.ring.push_back(gamer_id.to_owned());
        }
    }

    /// Takes a gamer out of rotation until one of its lanes may be placeable.
    fn park(&mut self, gamer_id: &str) {
        let Some(gamer) = self.gamers.get_mut(gamer_id) else { return };
        gamer.parked = true;
        self.next_park += 1;
        gamer.parked_at = self.next_park;
        let mut keys = Vec::new();
        for session in gamer.sessions.values() {
            let Some(key) = session.lane.first() else { continue };
            keys.push(match &session.peer {
                Some(peer) => WakeKey::Peer(peer.clone()),
                None => WakeKey::Type(self.tasks[key].task_type.clone()),
            });
        }
        keys.extend(gamer.free.keys().map(|t| WakeKey::Type(t.clone())));
        keys.dedup();
        for key in &keys {
            let set = match key {
                WakeKey::Peer(p) => self.wakers.by_peer.entry(p.clone()).or_default(),
                WakeKey::Type(t) => self.wakers.by_type.entry(t.clone()).or_default(),
            };
            set.insert((gamer.parked_at, gamer_id.to_owned()));
        }
        gamer.parked_under = keys;
    }

    /// Takes a gamer out of every waker set it is in.
    fn forget_wakers(&mut self, gamer_id: &str, parked_at: u64, keys: Vec<WakeKey>) {
        let entry = (parked_at, gamer_id.to_owned());
        for key in keys {
            let (sets, name) = match &key {
                WakeKey::Peer(p) => (&mut self.wakers.by_peer, p),
                WakeKey::Type(t) => (&mut self.wakers.by_type, t),
            };
            if let Some(set) = sets.get_mut(name) {
                set.remove(&entry);
                if set.is_empty() {
                    sets.remove(name);
                }
            }
        }
    }

    fn unpark(&mut self, gamer_id: &str) {
        let Some(gamer) = self.gamers.get_mut(gamer_id) else { return };
        if !gamer.parked {
            return self.activate(gamer_id);
        }
        gamer.parked = false;
        let keys = std::mem::take(&mut gamer.parked_under);
        let parked_at = gamer.parked_at;
        self.forget_wakers(gamer_id, parked_at, keys);
        self.activate(gamer_id);
    }

    /// A peer has room now: dispatch will wake, one at a time, the gamers that wait for it
    /// or for a type it runs (see [`Scheduler::wake_one`]).
    fn wake_for_room(&mut self, peer_id: &str) {
        if self.peers.contains_key(peer_id) {
            self.roomy.insert(peer_id.to_owned());
        }
    }

    /// Wakes the longest-parked gamer that a peer with room could serve and that was
    /// parked before this dispatch began (`parked_before`); forgets peers that have no
    /// room or nobody left to wake. Returns whether it woke someone.
    fn wake_one(&mut self, parked_before: u64) -> bool {
        while let Some(peer_id) = self.roomy.first().cloned() {
            let Some(peer) = self.peers.get(&peer_id) else {
                self.roomy.remove(&peer_id);
                continue;
            };
            if !peer.can_take_something() {
                self.roomy.remove(&peer_id);
                continue;
            }
            let type_sets: Vec<&BTreeSet<(u64, GamerId)>> = match &peer.task_types {
                Some(types) if !types.is_empty() => types.iter().filter_map(|t| self.wakers.by_type.get(t)).collect(),
                _ => self.wakers.by_type.values().collect(),
            };
            let oldest =
                self.wakers.by_peer.get(&peer_id).into_iter().chain(type_sets).filter_map(BTreeSet::first).min();
            match oldest {
                Some((at, gamer)) if *at <= parked_before => {
                    let gamer = gamer.clone();
                    self.unpark(&gamer);
                    return true;
                }
                // Everyone left for it was parked during this dispatch: they could not
                // use its room.
                _ => {
                    self.roomy.remove(&peer_id);
                }
            }
        }
        false
    }

    /// Frees what `key` held on its peer (the task is still in `tasks`).
    fn release(&mut self, peer_id: &str, key: TaskKey) {
        let Some(task) = self.tasks.get(&key) else { return };
        if let Some(p) = self.peers.get_mut(peer_id) {
            p.unhold(task.session_id.as_ref().map(|s| (task.gamer.as_str(), s)), task.bytes);
            p.assigned.remove(&key);
            self.wake_for_room(peer_id);
        }
    }

    /// Removes a task from the scheduler's books (its payload bytes with it).
    fn remove_task(&mut self, key: TaskKey) -> Option<Task<P>> {
        let task = self.tasks.remove(&key)?;
        self.bytes -= task.bytes;
        if let Some(gamer) = self.gamers.get_mut(&task.gamer)
            && gamer.tasks.get(&task.task_id) == Some(&key)
        {
            gamer.tasks.remove(&task.task_id);
            gamer.bytes -= task.bytes;
            if let Some(session) = task.session_id.as_ref().and_then(|id| gamer.sessions.get_mut(id)) {
                session.pending = session.pending.saturating_sub(1);
            }
        }
        Some(task)
    }

    /// Gives a task up (it is in no lane and holds no slot) and records the failure.
    fn fail(&mut self, key: TaskKey, reason: FailReason) {
        let Some(task) = self.remove_task(key) else { return };
        self.counters.failed += 1;
        if reason == FailReason::Poison {
            self.counters.poisoned += 1;
        }
        self.failures.push(Failure {
            gamer: task.gamer,
            task_id: task.task_id,
            attempts: task.attempts,
            reason,
            session_id: task.session_id,
        });
    }

    /// Accepts a peer's answer to `assignment_id` given at `now`, freeing its slot. What
    /// the answer does to the peer's standing depends on `answer` (see [`Answer`]); an
    /// error on a sessionless task (see [`Answer::Error`]) is not delivered but tried once
    /// on another peer ([`Completion::Retried`]).
    pub fn complete(
        &mut self,
        peer_id: &str,
        assignment_id: &str,
        answer: Answer,
        now: Instant,
    ) -> Result<Completion, CompleteError> {
        let (key, attempt) =
            parse_assignment_id(assignment_id).ok_or_else(|| CompleteError::Malformed(assignment_id.to_owned()))?;
        let not_assigned = || CompleteError::NotAssigned(assignment_id.to_owned());
        let task = self.tasks.get(&key).ok_or_else(not_assigned)?;
        let (peer, task_attempt, due, orphaned) = match &task.state {
            TaskState::Assigned { peer, attempt, due } => (peer, *attempt, *due, false),
            TaskState::Orphaned { peer, attempt, due } => (peer, *attempt, *due, true),
            TaskState::Queued => return Err(not_assigned()),
        };
        if peer != peer_id || task_attempt != attempt {
            return Err(not_assigned());
        }
        self.deadlines.remove(&(due, key, attempt));
        // From when the attempt's own time started (a pipelined tick waits behind the
        // ticks ahead of it first), and never more than its deadline: a peer cannot inflate
        // what such work "needs" on it by answering late or behind a deep pipeline.
        let started = due.checked_sub(task.deadline).unwrap_or(task.assigned_at).max(task.assigned_at);
        let took = now.saturating_duration_since(started).min(task.deadline);
        let task_type = task.task_type.clone();
        let session = task.session_id.clone().map(|s| (task.gamer.clone(), s));
        let established = self.config.reputation.established_after_answers;
        // Whether this peer's success may confirm others' misses: it had earned its
        // standing before this answer, and is not in a streak of misses itself.
        let mut confirms = false;
        if let Some(p) = self.peers.get_mut(peer_id) {
            p.completed += 1;
            if answer == Answer::Success {
                confirms = p.verified >= established && p.misses_in_a_row == 0;
                // It has shown it can take one more, and how long such work takes here.
                p.window = p.window.saturating_add(1).min(p.declared);
                p.verified += 1;
                p.misses_in_a_row = 0;
                p.miss_origins.clear();
                p.reported = false;
                p.record_shown(&task_type, took);
            }
        }
        if let Some((gamer, session)) = &session {
            self.count_resync(gamer, session, key, peer_id, answer);
        }
        if let Answer::Error { retry_elsewhere: true, .. } = answer
            && !orphaned
            && self.retry_elsewhere(key, peer_id, now)
        {
            return Ok(Completion::Retried);
        }
        self.release(peer_id, key);
        let task = self.remove_task(key).expect("looked up above");
        if orphaned {
            return Ok(Completion::Orphaned);
        }
        if confirms {
            // Answered in time here by a peer in good standing: the peers that missed it
            // before, on a deadline such work fits there, were at fault; so were the
            // peers whose error on it another peer did not reproduce.
            let origin =
                self.gamers.get(&task.gamer).and_then(|g| g.origin.clone()).unwrap_or_else(|| task.gamer.clone());
            for missed in &task.missed_on {
                self.count_miss(missed, &origin);
            }
            for erred in &task.erred_on {
                self.count_miss(erred, &origin);
            }
            // A session's missed tick is retried on a peer that does not hold its world (it
            // answers with a resync, which confirms nothing): the session's next success
            // confirms it instead.
            let missed = task
                .session_id
                .as_ref()
                .and_then(|s| self.gamers.get_mut(&task.gamer)?.sessions.get_mut(s))
                .map(|s| std::mem::take(&mut s.unconfirmed))
                .unwrap_or_default();
            for missed in missed {
                if missed != peer_id {
                    self.count_miss(&missed, &origin);
                }
            }
        }
        self.counters.completed += 1;
        if let Some(g) = self.gamers.get_mut(&task.gamer) {
            g.completed += 1;
        }
        Ok(Completion::Deliver {
            gamer: task.gamer,
            task_id: task.task_id,
            attempt,
            submitted_at: task.submitted_at,
            assigned_at: task.assigned_at,
            session_id: task.session_id,
        })
    }

    /// Puts a sessionless task its peer answered with an error back in the queue for one
    /// try on another peer that runs it, if there is one, the task has attempts left and
    /// its queue wait limit has not passed. Returns whether it did.
    fn retry_elsewhere(&mut self, key: TaskKey, peer_id: &str, now: Instant) -> bool {
        let Some(task) = self.tasks.get(&key) else { return false };
        // Past its queue wait limit it would only fail as a timeout: the error is the answer.
        if task.give_up_at.is_some_and(|at| at <= now) {
            return false;
        }
        let other = self.peers.iter().any(|(id, p)| {
            id != peer_id && p.runs(&task.task_type) && !task.timed_out_on.contains(id) && !task.erred_on.contains(id)
        });
        if task.session_id.is_some()
            || !task.erred_on.is_empty()
            || task.attempts >= self.config.scheduling.max_attempts
            || !other
        {
            return false;
        }
        self.release(peer_id, key);
        let task = self.tasks.get_mut(&key).expect("looked up above");
        task.erred_on.push(peer_id.to_owned());
        task.timed_out_on.push(peer_id.to_owned());
        if !task.tried.iter().any(|p| p == peer_id) {
            task.tried.push(peer_id.to_owned());
        }
        task.state = TaskState::Queued;
        self.enqueue(key);
        true
    }

    /// Counts a session's resync errors in a row from its peer; at
    /// `max_resyncs_in_a_row` the session leaves the peer (it is avoided for the session
    /// from then on) so that its snapshot goes elsewhere.
    fn count_resync(&mut self, gamer: &str, session: &CopyId, key: TaskKey, peer_id: &str, answer: Answer) {
        let limit = self.config.scheduling.max_resyncs_in_a_row;
        let Some(s) = self.gamers.get_mut(gamer).and_then(|g| g.sessions.get_mut(session)) else { return };
        if s.peer.as_deref() != Some(peer_id) {
            return;
        }
        match answer {
            // The ticks already in flight when a resync was counted answer resync too:
            // one lost world counts once.
            Answer::Error { resync: true, .. } if key >= s.resync_barrier => {
                s.resyncs_in_a_row += 1;
                s.resync_barrier = self.next_key;
            }
            Answer::Error { resync: true, .. } => {}
            _ => s.resyncs_in_a_row = 0,
        }
        if limit == 0 || s.resyncs_in_a_row < limit {
            return;
        }
        s.resyncs_in_a_row = 0;
        s.peer = None;
        s.avoid.retain(|p| p != peer_id);
        if s.avoid.len() >= MAX_AVOIDED {
            s.avoid.remove(0);
        }
        s.avoid.push(peer_id.to_owned());
        if let Some(p) = self.peers.get_mut(peer_id) {
            p.sessions.remove(&(gamer.to_owned(), session.clone()));
        }
    }

    /// A confirmed miss of `peer_id` on work of a gamer from `origin`: one more in its
    /// streak, reported for quarantine (once a streak) when the streak reaches the limit
    /// with misses on work of enough different origins.
    fn count_miss(&mut self, peer_id: &str, origin: &str) {
        let config = &self.config;
        let Some(p) = self.peers.get_mut(peer_id) else { return };
        p.misses_in_a_row = p.misses_in_a_row.saturating_add(1);
        let enough = config.reputation.quarantine_min_gamers.max(1) as usize;
        if p.miss_origins.len() < enough && !p.miss_origins.iter().any(|o| o == origin) {
            p.miss_origins.push(origin.to_owned());
        }
        let limit = config.reputation.quarantine_after_misses;
        if limit > 0 && p.misses_in_a_row >= limit && p.miss_origins.len() >= enough && !p.reported {
            p.reported = true;
            self.quarantined.push(peer_id.to_owned());
        }
    }

    /// When the next deadline passes, if any task is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        let attempt = self.deadlines.first().map(|(due, _, _)| *due);
        let queue = self.queue_limits.first().map(|(at, _)| *at);
        attempt.into_iter().chain(queue).min()
    }

    /// Handles every deadline that has passed by `now`: re-queues or fails the tasks.
    /// Returns them together with every other failure not yet taken. Call
    /// [`Scheduler::dispatch`] afterwards.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        self.expire_some(now, usize::MAX)
    }

    /// [`Scheduler::expire`], handling at most `max` passed deadlines (attempt deadlines
    /// and queue wait limits together), so that a caller holding a lock can release it
    /// between batches. More remain when [`Scheduler::next_deadline`] is still `<= now`.
    pub fn expire_some(&mut self, now: Instant, max: usize) -> Vec<Expired> {
        let mut out = Vec::new();
        let mut budget = max;
        while let Some(&(due, key, _)) = self.deadlines.first() {
            if due > now || budget == 0 {
                break;
            }
            budget -= 1;
            self.deadlines.pop_first();
            let Some(task) = self.tasks.get_mut(&key) else { continue };
            match task.state.clone() {
                TaskState::Orphaned { peer, .. } => {
                    self.release(&peer, key);
                    self.remove_task(key);
                }
                TaskState::Assigned { peer, .. } => {
                    let (gamer_id, session_id) = (task.gamer.clone(), task.session_id.clone());
                    if let Some(p) = self.peers.get_mut(&peer) {
                        // It missed a deadline: fewer tasks at once, but never fewer than a
                        // new peer gets (an honest peer that is briefly slow keeps its
                        // sessions' ticks pipelined; demoting liars is reputation's job).
                        let floor = self.config.scheduling.initial_peer_capacity.clamp(1, p.declared);
                        p.window = (p.window / 2).max(floor);
                    }
                    // A miss on a deadline shorter than such work has shown it needs there is
                    // the gamer's doing: never held against the peer. What such work "needs"
                    // then fades with each miss, so a peer that stops answering cannot live
                    // off one slow success.
                    let deadline = task.deadline;
                    let shown = self.peers.get_mut(&peer).and_then(|p| p.shown.get_mut(&task.task_type));
                    let held_against = shown.as_ref().is_none_or(|needs| deadline >= **needs);
                    if let Some(shown) = shown {
                        *shown /= 2;
                    }
                    if held_against && !task.missed_on.contains(&peer) {
                        task.missed_on.push(peer.clone());
                    }
                    if held_against
                        && let Some(session) =
                            session_id.as_ref().and_then(|s| self.gamers.get_mut(&gamer_id)?.sessions.get_mut(s))
                        && !session.unconfirmed.contains(&peer)
                    {
                        if session.unconfirmed.len() >= MAX_AVOIDED {
                            session.unconfirmed.remove(0);
                        }
                        session.unconfirmed.push(peer.clone());
                    }
                    // The session's later ticks on this peer wait behind the late one there:
                    // take them back too, so the session moves whole and in order, and no
                    // later tick of it is answered before this one.
                    let mut keys = vec![key];
                    if let (Some(session_id), Some(p)) = (&session_id, self.peers.get(&peer)) {
                        let mut later: Vec<TaskKey> = p
                            .assigned
                            .iter()
                            .copied()
                            .filter(|k| {
                                *k != key
                                    && self.tasks.get(k).is_some_and(|t| {
                                        t.gamer == gamer_id
                                            && t.session_id.as_ref() == Some(session_id)
                                            && matches!(t.state, TaskState::Assigned { .. })
                                    })
                            })
                            .collect();
                        later.sort_unstable();
                        keys.extend(later);
                    }
                    // A straggling session peer loses the session (only if it holds it): the
                    // next attempt goes to another peer when one can take it, and the gamer
                    // resyncs.
                    if let Some(session_id) = &session_id
                        && let Some(session) =
                            self.gamers.get_mut(&gamer_id).and_then(|g| g.sessions.get_mut(session_id))
                        && session.peer.as_deref() == Some(peer.as_str())
                    {
                        session.peer = None;
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.sessions.remove(&(gamer_id.clone(), session_id.clone()));
                        }
                    }
                    for k in keys {
                        let Some(t) = self.tasks.get_mut(&k) else { continue };
                        let TaskState::Assigned { attempt: a, due: d, .. } = t.state.clone() else { continue };
                        self.deadlines.remove(&(d, k, a));
                        if !t.tried.contains(&peer) {
                            t.tried.push(peer.clone());
                        }
                        // Never again on the peer that let it (or the tick ahead of it)
                        // miss its deadline: a black hole must not get its retries.
                        if !t.timed_out_on.contains(&peer) {
                            t.timed_out_on.push(peer.clone());
                        }
                        t.state = TaskState::Queued;
                        // No peer left that has not let it down: answer the gamer now (it
                        // resyncs) rather than block its lane until the queue wait ends.
                        let task_type = t.task_type.clone();
                        let timed_out_on = t.timed_out_on.clone();
                        let exhausted = t.attempts >= self.config.scheduling.max_attempts
                            || !self.peers.iter().any(|(id, p)| p.runs(&task_type) && !timed_out_on.contains(id));
                        let Some(t) = self.tasks.get_mut(&k) else { continue };
                        let task_id = t.task_id.clone();
                        self.release(&peer, k);
                        if exhausted {
                            self.fail(k, FailReason::MaxAttempts);
                        } else {
                            out.push(Expired::Requeued { task_id, peer: peer.clone(), attempt: a });
                            self.enqueue(k);
                        }
                    }
                }
                TaskState::Queued => {}
            }
        }
        while let Some(&(at, key)) = self.queue_limits.first() {
            if at > now || budget == 0 {
                break;
            }
            budget -= 1;
            self.queue_limits.pop_first();
            if self.tasks.get(&key).is_none_or(|t| t.state != TaskState::Queued) {
                continue;
            }
            let gamer_id = self.tasks[&key].gamer.clone();
            self.take_from_lane(key);
            self.fail(key, FailReason::QueueTimeout);
            // Its lane has a new head, which may go somewhere the old one could not.
            self.unpark(&gamer_id);
        }
        out.extend(self.take_failures().into_iter().map(Expired::Failed));
        out
    }
}

/// The id a peer answers with: the task's key and the attempt, so that an answer to a
/// superseded attempt is recognised even when it comes from the same peer.
pub fn assignment_id(key: TaskKey, attempt: u32) -> String {
    format!("{key}.{attempt}")
}

fn parse_assignment_id(id: &str) -> Option<(TaskKey, u32)> {
    let (key, attempt) = id.split_once('.')?;
    Some((key.parse().ok()?, attempt.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Capacity learning off (peers get what they declare at once), except in the tests
    /// of learning itself.
    fn test_config() -> SchedulerConfig {
        SchedulerConfig {
            scheduling: crate::config::Scheduling {
                initial_peer_capacity: 1000,
                max_peer_capacity: 1000,
                // Tasks wait for a peer as long as a test needs, except in the tests of
                // the queue wait limit.
                max_queue_wait: None,
                ..Default::default()
            },
            reputation: crate::config::Reputation {
                // Any gamer's work and any peer's answer count, except in the tests of those
                // rules.
                quarantine_min_gamers: 1,
                established_after_answers: 0,
                ..Default::default()
            },
            max_tasks_per_peer: 100_000,
            ..SchedulerConfig::default()
        }
    }

    impl<P> Scheduler<P> {
        /// A successful answer, given now.
        fn succeed(&mut self, peer: &str, assignment: &str) -> Result<Completion, CompleteError> {
            self.complete(peer, assignment, Answer::Success, Instant::now())
        }
    }

    fn sched() -> Scheduler<()> {
        Scheduler::new(test_config())
    }

    fn any_peer(capacity: u32) -> PeerSpec {
        PeerSpec { task_types: None, capacity, setup: Some(1), host: None, remote: false }
    }

    fn peer_at(setup: Option<u64>, host: [u8; 4]) -> PeerSpec {
        PeerSpec { task_types: None, capacity: 4, setup, host: Some(std::net::IpAddr::from(host)), remote: false }
    }

    /// A scheduler id written as the logs show it: `w` or `w#1` (replica 1's copy).
    fn copy(s: &str) -> CopyId {
        match s.split_once('#') {
            Some((id, replica)) => CopyId::replica(id, replica.parse().unwrap()),
            None => CopyId::plain(s),
        }
    }

    fn replica_task(id: &str, session: &str, siblings: &[&str]) -> Submission<()> {
        Submission { siblings: siblings.iter().map(|s| copy(s)).collect(), ..session_task(id, session) }
    }

    #[test]
    fn peers_kept_apart_by_an_unsettled_dispute_are_never_replicas_of_one_session() {
        use crate::disputes::Party;
        let party = |p: &str, n: &str| Party { peer: p.into(), voter: n.into(), weight: 1 };
        let mut s: Scheduler<()> = Scheduler::new(test_config());
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("honest".into(), peer_at(Some(7), [10, 0, 1, 1]));
        s.add_peer("liar".into(), peer_at(Some(7), [10, 0, 2, 1]));
        assert_eq!(s.replica_capacity_of("physics", 7), 2);
        s.disputes_mut().unsettled(&[vec![party("honest", "n1")], vec![party("liar", "n2")]], t0);
        assert_eq!(s.replica_capacity_of("physics", 7), 1, "room for one replica, not two");
        s.submit("g", replica_task("t0", "w", &["w#1"]), t0).unwrap();
        assert_eq!(s.dispatch(t0).len(), 1);
        s.submit("g", replica_task("t0#1", "w#1", &["w"]), t0).unwrap();
        assert!(s.dispatch(t0).is_empty(), "never beside the peer it disputed");
        s.add_peer("third".into(), peer_at(Some(7), [10, 0, 3, 1]));
        assert_eq!(s.replica_capacity_of("physics", 7), 2);
        let placed = s.dispatch(t0);
        assert_eq!(placed.iter().map(|d| d.peer.as_str()).collect::<Vec<_>>(), ["third"]);
    }

    #[test]
    fn the_fleets_stand_in_gets_only_what_no_local_peer_can_take_and_keeps_its_sessions() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("~fleet".into(), PeerSpec { remote: true, ..any_peer(8) });
        s.add_peer("local".into(), any_peer(2));
        assert_eq!(s.free_local_slots(), 2, "the stand-in lends nothing");
        for n in 0..3 {
            s.submit("g", session_task(&format!("t{n}"), &format!("s{n}")), t0).unwrap();
        }
        let d = s.dispatch(t0);
        let placed: Vec<(String, String)> =
            d.iter().map(|d| (s.task(d.key).unwrap().task_id.to_string(), d.peer.clone())).collect();
        assert_eq!(placed.iter().filter(|(_, p)| p == "local").count(), 2, "local first: {placed:?}");
        let remote: Vec<_> = placed.iter().filter(|(_, p)| p == "~fleet").collect();
        assert_eq!(remote.len(), 1, "only the overflow goes to the fleet: {placed:?}");
        assert_eq!(s.free_local_slots(), 0);
        // Its session stays there once the local peer has room again.
        let session = format!("s{}", &remote[0].0[1..]);
        for d in &d {
            s.succeed(&d.peer, &d.assignment_id).unwrap();
        }
        s.submit("g", session_task("again", &session), t0).unwrap();
        let d = s.dispatch(t0);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].peer, "~fleet", "a session placed on the fleet stays there");
    }

    #[test]
    fn sessions_need_a_peer_an_audit_could_check_where_configured() {
        let config = SchedulerConfig { sessions_need_auditable_peers: true, ..test_config() };
        let mut s: Scheduler<()> = Scheduler::new(config);
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("lone".into(), peer_at(Some(9), [10, 0, 1, 1]));
        s.add_peer("undeclared".into(), peer_at(None, [10, 0, 2, 1]));
        assert!(!s.is_auditable("lone") && !s.is_auditable("undeclared"));
        s.submit("g", session_task("t0", "w"), t0).unwrap();
        assert!(s.dispatch(t0).is_empty(), "no peer an audit could check");
        s.submit("g", task("free"), t0).unwrap();
        assert_eq!(s.dispatch(t0).len(), 1, "sessionless work runs anywhere");
        // A second host with the same setup makes both auditable.
        s.add_peer("twin".into(), peer_at(Some(9), [10, 0, 3, 1]));
        assert!(s.is_auditable("lone") && s.is_auditable("twin"));
        let placed = s.dispatch(t0);
        assert_eq!(placed.len(), 1);
        assert_ne!(placed[0].peer, "undeclared");
    }

    #[test]
    fn idle_colluders_cannot_steer_themselves_into_a_sessions_replicas() {
        // Colluders join first and stay idle: least-loaded placement (ties to the earliest)
        // would give them every replica; the keyed draw gives them about their share.
        let mut s: Scheduler<()> = Scheduler::new(test_config());
        let t0 = Instant::now();
        let colluders = ["c0", "c1", "c2"];
        for (i, id) in colluders.iter().enumerate() {
            s.add_peer((*id).into(), peer_at(Some(7), [10, 9, i as u8, 1]));
        }
        for i in 0..7u8 {
            s.add_peer(format!("h{i}"), peer_at(Some(7), [10, 1, i, 1]));
        }
        let (mut captured, mut colluder_replicas) = (0, 0);
        let groups = 300;
        for g in 0..groups {
            let gamer = format!("g{g}");
            s.add_gamer(gamer.clone());
            let sessions = ["w", "w#1", "w#2"];
            for (r, session) in sessions.iter().enumerate() {
                let siblings: Vec<&str> = sessions.iter().filter(|x| *x != session).copied().collect();
                s.submit(
                    &gamer,
                    Submission { setup: Some(7), ..replica_task(&format!("t{r}"), session, &siblings) },
                    t0,
                )
                .unwrap();
            }
            let placed = s.dispatch(t0);
            assert_eq!(placed.len(), 3, "group {g}");
            let on_colluders = placed.iter().filter(|d| colluders.contains(&d.peer.as_str())).count();
            colluder_replicas += on_colluders;
            captured += usize::from(on_colluders == 3);
            for d in placed {
                s.succeed(&d.peer, &d.assignment_id).unwrap();
            }
        }
        // Their share of peers is 3 in 10; all three replicas of a group on them, by chance,
        // 1 in 120 (C(3,3)/C(10,3)).
        let share = colluder_replicas as f64 / (3 * groups) as f64;
        assert!((0.15..0.45).contains(&share), "colluders' share of replicas {share}");
        assert!(captured <= groups / 20, "{captured} of {groups} groups entirely on colluders");
    }

    #[test]
    fn replicas_go_to_other_peers_with_the_same_setup_on_other_hosts() {
        let mut s: Scheduler<()> = Scheduler::new(test_config());
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("first".into(), peer_at(Some(7), [10, 0, 0, 1]));
        s.add_peer("same-host".into(), peer_at(Some(7), [10, 0, 0, 1]));
        s.add_peer("other-setup".into(), peer_at(Some(8), [10, 0, 0, 2]));
        s.add_peer("undeclared".into(), peer_at(None, [10, 0, 0, 3]));
        assert_eq!(s.replica_capacity("physics"), 1, "one host per setup so far");
        s.submit("g", replica_task("t0", "w", &["w#1"]), t0).unwrap();
        let first = s.dispatch(t0);
        assert_eq!(first.len(), 1);
        let pinned = first[0].peer.clone();
        // The sibling may go nowhere yet: every other peer shares a host or differs in setup.
        s.submit("g", replica_task("t0#1", "w#1", &["w"]), t0).unwrap();
        let blocked = s.dispatch(t0);
        assert!(blocked.is_empty(), "placed beside {pinned}: {blocked:?}");
        // A compatible peer on another host takes it.
        s.add_peer("good".into(), peer_at(Some(7), [10, 0, 0, 9]));
        assert_eq!(s.replica_capacity("physics"), 2);
        let placed = s.dispatch(t0);
        assert_eq!(placed.iter().map(|d| d.peer.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(s.pinned_peer("g", &copy("w#1")).map(String::as_str), Some("good"));
        assert!(!s.can_host_replica("g", &[copy("w"), copy("w#1")], "physics"), "no third host");
        // Without the host rule, a second peer on the same host would do.
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            replication: crate::config::Replication {
                replicas_on_distinct_hosts: false,
                ..(test_config()).replication
            },
            ..test_config()
        });
        s.add_gamer("g".into());
        s.add_peer("a".into(), peer_at(Some(7), [127, 0, 0, 1]));
        s.add_peer("b".into(), peer_at(Some(7), [127, 0, 0, 1]));
        assert_eq!(s.replica_capacity("physics"), 2);
        s.submit("g", replica_task("t0", "w", &["w#1"]), t0).unwrap();
        s.submit("g", replica_task("t0#1", "w#1", &["w"]), t0).unwrap();
        let mut peers: Vec<String> = s.dispatch(t0).into_iter().map(|d| d.peer).collect();
        peers.sort();
        assert_eq!(peers, ["a", "b"], "never both on one peer");
    }

    #[test]
    fn cancelling_a_session_drops_its_queued_and_running_tasks_and_frees_the_peer() {
        let mut s: Scheduler<()> = Scheduler::new(test_config());
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(1));
        s.submit("g", session_task("a", "w"), t0).unwrap();
        s.submit("g", session_task("b", "w"), t0).unwrap();
        s.submit("g", session_task("c", "other"), t0).unwrap();
        assert_eq!(s.dispatch(t0).len(), 2, "two ticks of w pipelined on the one slot");
        let mut dropped = s.cancel_session("g", &copy("w"));
        dropped.sort();
        assert_eq!(dropped, ["a", "b"]);
        assert!(!s.has_session("g", &copy("w")));
        assert_eq!(s.peer_load("p"), Some(0));
        assert_eq!(dispatch_ids(&mut s, t0), ["c"], "the slot is free for the other session");
        assert!(matches!(s.succeed("p", &assignment_id(0, 1)), Err(CompleteError::NotAssigned(_))));
    }

    fn typed_peer(capacity: u32, types: &[&str]) -> PeerSpec {
        PeerSpec {
            task_types: Some(types.iter().map(|t| t.to_string()).collect()),
            capacity,
            setup: Some(1),
            host: None,
            remote: false,
        }
    }

    fn task(id: &str) -> Submission<()> {
        Submission {
            task_id: copy(id),
            task_type: "physics".into(),
            session_id: None,
            deadline: Duration::from_secs(2),
            payload: (),
            bytes: 0,
            siblings: Vec::new(),
            setup: None,
        }
    }

    fn session_task(id: &str, session: &str) -> Submission<()> {
        Submission { session_id: Some(copy(session)), ..task(id) }
    }

    fn dispatch_ids(s: &mut Scheduler<()>, now: Instant) -> Vec<String> {
        let d = s.dispatch(now);
        task_ids(s, &d)
    }

    fn task_ids(s: &Scheduler<()>, dispatches: &[Dispatch]) -> Vec<String> {
        dispatches.iter().map(|d| s.task(d.key).unwrap().task_id.to_string()).collect()
    }

    #[test]
    fn queued_task_waits_for_a_peer_then_goes_to_it() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.submit("g", task("t1"), Instant::now()).unwrap();
        assert!(s.dispatch(now).is_empty());
        assert_eq!(s.queued_len(), 1);
        s.add_peer("p".into(), any_peer(1));
        let d = s.dispatch(now);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].peer, "p");
        assert_eq!(d[0].attempt, 1);
        assert_eq!(d[0].assignment_id, assignment_id(d[0].key, 1));
        assert_eq!(s.queued_len(), 0);
        assert_eq!(s.in_flight_len(), 1);
    }

    #[test]
    fn capacity_is_respected_and_freed_by_completion() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(2));
        for i in 0..5 {
            s.submit("g", task(&format!("t{i}")), Instant::now()).unwrap();
        }
        let d = s.dispatch(now);
        assert_eq!(task_ids(&s, &d), ["t0", "t1"]);
        assert!(s.dispatch(now).is_empty());
        let done = s.succeed("p", &d[0].assignment_id).unwrap();
        assert!(
            matches!(&done, Completion::Deliver { gamer, task_id, attempt: 1, .. } if gamer == "g" && task_id == "t0"),
            "{done:?}"
        );
        assert_eq!(dispatch_ids(&mut s, now), ["t2"]);
    }

    #[test]
    fn least_loaded_peer_first() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("big".into(), any_peer(4));
        s.add_peer("small".into(), any_peer(1));
        for i in 0..5 {
            s.submit("g", task(&format!("t{i}")), Instant::now()).unwrap();
        }
        let d = s.dispatch(now);
        let peers: Vec<&str> = d.iter().map(|d| d.peer.as_str()).collect();
        // Both empty: the older peer first; then "small" (0/1) beats "big" (1/4); then big.
        assert_eq!(peers, ["big", "small", "big", "big", "big"]);
        assert_eq!(s.peer_load("big"), Some(4));
        assert_eq!(s.peer_load("small"), Some(1));
    }

    #[test]
    fn task_types_are_matched() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("ai-only".into(), typed_peer(4, &["ai_navigate"]));
        s.submit("g", task("phys"), Instant::now()).unwrap();
        s.submit("g", Submission { task_type: "ai_navigate".into(), ..task("nav") }, Instant::now()).unwrap();
        let d = s.dispatch(now);
        assert_eq!(task_ids(&s, &d), ["nav"]);
        assert_eq!(s.queued_len(), 1, "the physics task waits for a capable peer");
        s.add_peer("phys".into(), typed_peer(1, &["physics"]));
        let d = s.dispatch(now);
        assert_eq!(d[0].peer, "phys");
    }

    #[test]
    fn empty_task_type_list_accepts_anything() {
        let mut s = sched();
        s.add_gamer("g".into());
        s.add_peer("p".into(), typed_peer(1, &[]));
        s.submit("g", task("t"), Instant::now()).unwrap();
        assert_eq!(s.dispatch(Instant::now()).len(), 1);
    }

    #[test]
    fn a_flooding_gamer_does_not_starve_another() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("flood".into());
        s.add_gamer("quiet".into());
        s.add_peer("p".into(), any_peer(1));
        for i in 0..100 {
            s.submit("flood", task(&format!("f{i}")), Instant::now()).unwrap();
        }
        s.submit("quiet", task("q0"), Instant::now()).unwrap();
        s.submit("quiet", task("q1"), Instant::now()).unwrap();
        let mut order = Vec::new();
        for _ in 0..6 {
            let d = s.dispatch(now);
            assert_eq!(d.len(), 1);
            let t = s.task(d[0].key).unwrap();
            order.push(format!("{}:{}", t.gamer, t.task_id));
            s.succeed("p", &d[0].assignment_id).unwrap();
        }
        assert_eq!(order, ["flood:f0", "quiet:q0", "flood:f1", "quiet:q1", "flood:f2", "flood:f3"]);
    }

    #[test]
    fn fifo_within_a_gamer() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        for i in 0..10 {
            s.submit("g", task(&format!("t{i}")), Instant::now()).unwrap();
        }
        s.add_peer("p".into(), any_peer(10));
        let ids = dispatch_ids(&mut s, now);
        let expected: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn session_sticks_to_its_peer_in_order() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("a".into(), any_peer(1));
        s.add_peer("b".into(), any_peer(8));
        s.submit("g", session_task("tick1", "world"), Instant::now()).unwrap();
        let first = s.dispatch(now);
        let holder = first[0].peer.clone();
        assert_eq!(s.session_peer("g", &copy("world")), Some(holder.as_str()));
        for i in 2..6 {
            s.submit("g", session_task(&format!("tick{i}"), "world"), Instant::now()).unwrap();
        }
        let more = s.dispatch(now);
        // Never spill to the other peer; the ticks pipeline on the holder's one slot.
        assert!(more.iter().all(|d| d.peer == holder), "{more:?}");
        assert_eq!(task_ids(&s, &more), ["tick2", "tick3", "tick4", "tick5"]);
    }

    #[test]
    fn a_session_pipelines_on_one_slot_and_leaves_the_others_to_other_sessions() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling { max_session_pipeline: 3, ..(test_config()).scheduling },
            ..test_config()
        });
        let now = Instant::now();
        s.add_peer("p".into(), any_peer(2));
        s.add_gamer("slow".into());
        s.add_gamer("honest".into());
        for i in 0..5 {
            s.submit("slow", session_task(&format!("s{i}"), "heavy"), now).unwrap();
        }
        // Three of the slow session's ticks in flight (its pipeline), on one slot.
        assert_eq!(dispatch_ids(&mut s, now), ["s0", "s1", "s2"]);
        // The other slot is free for another session at once.
        s.submit("honest", session_task("h0", "main"), now).unwrap();
        assert_eq!(dispatch_ids(&mut s, now), ["h0"]);
        // A third session finds both slots held.
        s.submit("honest", session_task("x0", "other"), now).unwrap();
        assert!(s.dispatch(now).is_empty());
        assert_eq!(s.peer_load("p"), Some(4));
    }

    #[test]
    fn blocked_session_does_not_block_other_work_but_keeps_its_order() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling { max_session_pipeline: 1, ..(test_config()).scheduling },
            ..test_config()
        });
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("a".into(), any_peer(1));
        s.submit("g", session_task("s1", "world"), Instant::now()).unwrap();
        let d = s.dispatch(now);
        assert_eq!(d[0].peer, "a");
        s.submit("g", session_task("s2", "world"), Instant::now()).unwrap();
        s.submit("g", task("free"), Instant::now()).unwrap();
        s.add_peer("b".into(), any_peer(1));
        // s2 must wait for "a"; "free" goes to "b".
        assert_eq!(dispatch_ids(&mut s, now), ["free"]);
        s.succeed("a", &d[0].assignment_id).unwrap();
        let next = s.dispatch(now);
        assert_eq!(task_ids(&s, &next), ["s2"]);
        assert_eq!(next[0].peer, "a");
    }

    #[test]
    fn dead_peer_requeues_its_tasks_in_order_and_the_session_moves() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("a".into(), any_peer(8));
        for i in 0..3 {
            s.submit("g", session_task(&format!("tick{i}"), "world"), Instant::now()).unwrap();
        }
        s.submit("g", session_task("tick3", "world"), Instant::now()).unwrap();
        assert_eq!(s.dispatch(now).len(), 4);
        s.submit("g", session_task("tick4", "world"), Instant::now()).unwrap();
        assert_eq!(s.dispatch(now).len(), 1);
        assert_eq!(s.remove_peer("a"), 5);
        assert_eq!(s.session_peer("g", &copy("world")), None);
        assert_eq!(s.queued_len(), 5);
        s.add_peer("b".into(), any_peer(8));
        let d = s.dispatch(now);
        assert_eq!(task_ids(&s, &d), ["tick0", "tick1", "tick2", "tick3", "tick4"]);
        assert!(d.iter().all(|d| d.peer == "b" && d.attempt == 2));
        assert_eq!(s.session_peer("g", &copy("world")), Some("b"));
        assert_eq!(s.counters().redispatched, 5);
    }

    #[test]
    fn requeued_tasks_go_ahead_of_later_ones() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("a".into(), any_peer(1));
        s.submit("g", task("early"), Instant::now()).unwrap();
        s.dispatch(now);
        s.submit("g", task("late"), Instant::now()).unwrap();
        s.remove_peer("a");
        s.add_peer("b".into(), any_peer(1));
        assert_eq!(dispatch_ids(&mut s, now), ["early"]);
    }

    #[test]
    fn deadline_redispatches_to_a_different_peer_then_fails() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("slow".into(), any_peer(1));
        s.submit("g", task("t"), Instant::now()).unwrap();
        let first = s.dispatch(t0);
        assert_eq!(first[0].peer, "slow");
        s.add_peer("fast".into(), any_peer(1));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(s.expire(t0 + Duration::from_millis(1999)).is_empty());
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(s.expire(t1), [Expired::Requeued { task_id: "t".into(), peer: "slow".into(), attempt: 1 }]);
        let second = s.dispatch(t1);
        assert_eq!(second[0].peer, "fast", "an untried peer is preferred");
        assert_eq!(second[0].attempt, 2);
        // The straggler's late answer is refused; the task is still pending.
        assert!(matches!(s.succeed("slow", &first[0].assignment_id), Err(CompleteError::NotAssigned(_))));
        s.add_peer("third".into(), any_peer(1));
        let t2 = t1 + Duration::from_secs(2);
        s.expire(t2);
        let third = s.dispatch(t2);
        assert_eq!((third[0].peer.as_str(), third[0].attempt), ("third", 3));
        let t3 = t2 + Duration::from_secs(2);
        assert_eq!(
            s.expire(t3),
            [Expired::Failed(Failure {
                gamer: "g".into(),
                task_id: "t".into(),
                attempts: 3,
                reason: FailReason::MaxAttempts,
                session_id: None,
            })]
        );
        assert_eq!(s.in_flight_len(), 0);
        assert_eq!(s.counters().failed, 1);
        // The id is free again.
        s.submit("g", task("t"), Instant::now()).unwrap();
    }

    #[test]
    fn a_task_never_goes_back_to_the_peer_that_missed_its_deadline() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("only".into(), any_peer(1));
        s.submit("g", task("t"), Instant::now()).unwrap();
        let first = s.dispatch(t0);
        s.add_peer("next".into(), any_peer(1));
        s.submit("g", task("busy"), t0).unwrap();
        let busy = s.dispatch(t0);
        assert_eq!(busy[0].peer, "next");
        let t1 = t0 + Duration::from_secs(3);
        s.succeed("next", &busy[0].assignment_id).unwrap();
        // "only" missed the deadline: the retry goes to "next", never back to "only".
        s.expire(t1);
        let second = s.dispatch(t1);
        assert_eq!((second[0].peer.as_str(), second[0].attempt), ("next", 2));
        assert!(s.succeed("only", &first[0].assignment_id).is_err(), "the late answer is refused");
        assert!(s.succeed("next", &second[0].assignment_id).is_ok());
        assert!(s.succeed("next", &second[0].assignment_id).is_err(), "answered once only");
    }

    #[test]
    fn a_task_whose_every_peer_missed_it_is_answered_at_once() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("only".into(), any_peer(1));
        s.submit("g", task("t"), t0).unwrap();
        s.submit("g", task("behind"), t0).unwrap();
        s.dispatch(t0);
        let t1 = t0 + Duration::from_secs(3);
        // The only peer let it down: the gamer hears now (and resyncs), and the tasks
        // behind it in its lane go on, to the same peer.
        assert!(matches!(&s.expire(t1)[..], [Expired::Failed(Failure { task_id, .. })] if task_id == "t"));
        assert_eq!(s.dispatch(t1)[0].peer, "only");
    }

    #[test]
    fn a_peer_that_misses_deadlines_in_a_row_is_reported_once_for_quarantine() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            reputation: crate::config::Reputation { quarantine_after_misses: 3, ..(test_config()).reputation },
            ..test_config()
        });
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("hole".into(), any_peer(8));
        s.add_peer("honest".into(), any_peer(8));
        let mut now = t0;
        // The black hole answers nothing; the honest peer answers everything.
        for round in 0..6 {
            s.submit("g", task(&format!("t{round}")), now).unwrap();
            for d in s.dispatch(now) {
                if d.peer == "honest" {
                    s.succeed("honest", &d.assignment_id).unwrap();
                }
            }
            now += Duration::from_secs(3);
            s.expire(now);
            for d in s.dispatch(now) {
                assert_eq!(d.peer, "honest", "a retry never goes back to the black hole");
                s.succeed("honest", &d.assignment_id).unwrap();
            }
        }
        assert_eq!(s.take_quarantined(), vec!["hole".to_owned()]);
        assert!(s.take_quarantined().is_empty(), "reported once");
        assert_eq!(s.counters().failed, 0, "every task succeeded");
    }

    #[test]
    fn a_restored_standing_is_held_within_what_is_declared_and_its_streak_goes_on() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            reputation: crate::config::Reputation { quarantine_after_misses: 3, ..(test_config()).reputation },
            scheduling: crate::config::Scheduling {
                initial_peer_capacity: 2,
                max_peer_capacity: 8,
                ..(test_config()).scheduling
            },
            ..test_config()
        });
        s.add_peer("new".into(), any_peer(8));
        assert_eq!(s.standing("new"), Some(s.fresh_standing()));
        assert_eq!(s.fresh_standing(), Standing { window: 2, ..Standing::default() });
        assert_eq!(s.standing("gone"), None);
        // The window stays within 1..=declared.
        s.add_peer("small".into(), any_peer(4));
        s.restore_standing("small", Standing { window: 7, misses_in_a_row: 0, ..Standing::default() });
        assert_eq!((s.standing("small").unwrap().window, s.peer_capacity("small")), (4, Some(4)));
        s.restore_standing("small", Standing { window: 0, misses_in_a_row: 0, ..Standing::default() });
        assert_eq!(s.peer_capacity("small"), Some(1));
        // A streak at or past the limit is held just below it.
        s.restore_standing("small", Standing { window: 1, misses_in_a_row: 9, ..Standing::default() });
        assert_eq!(s.standing("small").unwrap().misses_in_a_row, 2);
        s.remove_peer("small");
        s.remove_peer("new");

        // A peer that left two confirmed misses into its streak comes back: its next one
        // reports it, once.
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("hole".into(), any_peer(8));
        s.restore_standing("hole", Standing { window: 8, misses_in_a_row: 2, ..Standing::default() });
        s.add_peer("honest".into(), any_peer(8));
        let mut now = t0;
        for round in 0..3 {
            s.submit("g", task(&format!("t{round}")), now).unwrap();
            // Both idle: the earlier joined (the hole) takes it.
            let first = s.dispatch(now);
            assert_eq!(first.len(), 1);
            assert_eq!(first[0].peer, "hole");
            now += Duration::from_secs(3);
            s.expire(now);
            for d in s.dispatch(now) {
                assert_eq!(d.peer, "honest");
                s.succeed("honest", &d.assignment_id).unwrap();
            }
            if round == 0 {
                assert_eq!(s.take_quarantined(), vec!["hole".to_owned()], "the remembered streak went on");
                assert_eq!(s.standing("hole"), Some(Standing { window: 4, misses_in_a_row: 3, ..Standing::default() }));
            }
        }
        assert!(s.take_quarantined().is_empty(), "reported once");
    }

    /// One task of `gamer` that `first` takes and lets pass its deadline, then `second`
    /// answers with `answer`; returns the time after it.
    fn missed_then_answered(
        s: &mut Scheduler<()>,
        gamer: &str,
        id: &str,
        (first, second): (&str, &str),
        answer: Answer,
        now: Instant,
    ) -> Instant {
        s.submit(gamer, task(id), now).unwrap();
        let d = s.dispatch(now);
        assert_eq!(d[0].peer, first);
        let now = now + Duration::from_secs(3);
        s.expire(now);
        let d = s.dispatch(now);
        assert_eq!(d[0].peer, second);
        s.complete(second, &d[0].assignment_id, answer, now).unwrap();
        now
    }

    #[test]
    fn only_successes_from_established_peers_on_work_of_several_origins_confirm_misses() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            reputation: crate::config::Reputation {
                quarantine_after_misses: 2,
                quarantine_min_gamers: 2,
                established_after_answers: 2,
                ..(test_config()).reputation
            },
            ..test_config()
        });
        for (g, origin) in [("a", "net-a"), ("a2", "net-a"), ("b", "net-b")] {
            s.add_gamer(g.into());
            s.set_gamer_origin(g, origin.into());
        }
        s.add_peer("hole".into(), any_peer(8));
        s.add_peer("next".into(), any_peer(8));
        let mut now = Instant::now();
        // Errors confirm nothing, and a peer with fewer than 2 successes confirms nothing.
        let error = Answer::Error { retry_elsewhere: false, resync: true };
        now = missed_then_answered(&mut s, "a", "e1", ("hole", "next"), error, now);
        now = missed_then_answered(&mut s, "a", "s1", ("hole", "next"), Answer::Success, now);
        now = missed_then_answered(&mut s, "a", "s2", ("hole", "next"), Answer::Success, now);
        assert_eq!(s.standing("hole").unwrap().misses_in_a_row, 0, "nothing confirmed yet");
        assert_eq!(s.standing("next").unwrap().verified, 2, "errors are not verified work");
        // Established now: its successes confirm; two misses, but on one network's work.
        now = missed_then_answered(&mut s, "a", "s3", ("hole", "next"), Answer::Success, now);
        now = missed_then_answered(&mut s, "a2", "s4", ("hole", "next"), Answer::Success, now);
        assert_eq!(s.standing("hole").unwrap().misses_in_a_row, 2);
        assert!(s.take_quarantined().is_empty(), "one network's gamers are not enough");
        // A miss on another network's work completes it.
        missed_then_answered(&mut s, "b", "s5", ("hole", "next"), Answer::Success, now);
        assert_eq!(s.take_quarantined(), vec!["hole".to_owned()]);
    }

    #[test]
    fn a_miss_on_a_deadline_shorter_than_such_work_has_shown_it_needs_is_not_held_against_it() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            reputation: crate::config::Reputation { quarantine_after_misses: 1, ..(test_config()).reputation },
            ..test_config()
        });
        s.add_gamer("g".into());
        s.add_peer("slow".into(), any_peer(8));
        let t0 = Instant::now();
        // Such work has taken it 2 s (its deadline was 5 s).
        s.submit("g", task("big"), t0).unwrap();
        let d = s.dispatch(t0);
        s.complete("slow", &d[0].assignment_id, Answer::Success, t0 + Duration::from_secs(2)).unwrap();
        s.add_peer("fast".into(), any_peer(8));
        // A task of the same type with a 1 s deadline: it misses, another peer makes it.
        let mut short = task("short");
        short.deadline = Duration::from_secs(1);
        let now = t0 + Duration::from_secs(10);
        s.submit("g", short, now).unwrap();
        assert_eq!(s.dispatch(now)[0].peer, "slow");
        let now = now + Duration::from_secs(2);
        s.expire(now);
        let d = s.dispatch(now);
        assert_eq!(d[0].peer, "fast");
        s.complete("fast", &d[0].assignment_id, Answer::Success, now).unwrap();
        assert!(s.take_quarantined().is_empty());
        assert_eq!(s.standing("slow").unwrap().misses_in_a_row, 0);
    }

    #[test]
    fn an_internal_error_is_retried_once_elsewhere_and_a_success_there_counts_against_it() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            reputation: crate::config::Reputation { quarantine_after_misses: 1, ..(test_config()).reputation },
            ..test_config()
        });
        s.add_gamer("g".into());
        s.add_peer("broken".into(), any_peer(8));
        s.add_peer("ok".into(), any_peer(8));
        let now = Instant::now();
        let internal = Answer::Error { retry_elsewhere: true, resync: true };
        s.submit("g", task("t"), now).unwrap();
        let d = s.dispatch(now);
        assert_eq!(d[0].peer, "broken");
        assert_eq!(s.complete("broken", &d[0].assignment_id, internal, now), Ok(Completion::Retried));
        assert_eq!(s.standing("broken").unwrap().window, 1000, "errors grow no window");
        let d = s.dispatch(now);
        assert_eq!(d[0].peer, "ok");
        assert!(matches!(s.succeed("ok", &d[0].assignment_id), Ok(Completion::Deliver { .. })));
        assert_eq!(s.take_quarantined(), vec!["broken".to_owned()]);
        // Once only: a second internal error is the gamer's answer.
        s.submit("g", task("u"), now).unwrap();
        let d = s.dispatch(now);
        assert_eq!(s.complete(&d[0].peer.clone(), &d[0].assignment_id, internal, now), Ok(Completion::Retried));
        let d = s.dispatch(now);
        assert!(matches!(
            s.complete(&d[0].peer.clone(), &d[0].assignment_id, internal, now),
            Ok(Completion::Deliver { .. })
        ));
    }

    #[test]
    fn a_session_moves_after_resyncs_in_a_row_and_avoids_the_peer() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling { max_resyncs_in_a_row: 2, ..(test_config()).scheduling },
            ..test_config()
        });
        s.add_gamer("g".into());
        s.add_peer("amnesiac".into(), any_peer(8));
        s.add_peer("other".into(), any_peer(8));
        let now = Instant::now();
        let resync = Answer::Error { retry_elsewhere: false, resync: true };
        for tick in 0..2 {
            s.submit("g", session_task(&format!("t{tick}"), "w"), now).unwrap();
            let d = s.dispatch(now);
            assert_eq!(d[0].peer, "amnesiac");
            s.complete("amnesiac", &d[0].assignment_id, resync, now).unwrap();
        }
        assert_eq!(s.session_peer("g", &copy("w")), None, "the session left its peer");
        s.submit("g", session_task("t2", "w"), now).unwrap();
        assert_eq!(s.dispatch(now)[0].peer, "other");
    }

    #[test]
    fn a_retry_prefers_an_established_peer_to_a_fresh_one() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            reputation: crate::config::Reputation { established_after_answers: 1, ..(test_config()).reputation },
            ..test_config()
        });
        s.add_gamer("g".into());
        s.add_peer("proven".into(), any_peer(8));
        let now = Instant::now();
        s.submit("g", task("warm"), now).unwrap();
        let d = s.dispatch(now);
        s.succeed("proven", &d[0].assignment_id).unwrap();
        // It is busier than the fresh peers that join now.
        let mut hold = task("hold");
        hold.deadline = Duration::from_secs(60);
        s.submit("g", hold, now).unwrap();
        assert_eq!(s.dispatch(now)[0].peer, "proven");
        s.add_peer("hole".into(), any_peer(8));
        s.add_peer("fresh".into(), any_peer(8));
        s.submit("g", task("t"), now).unwrap();
        assert_eq!(s.dispatch(now)[0].peer, "hole", "a new task goes to the least loaded, fresh or not");
        let now = now + Duration::from_secs(3);
        s.expire(now);
        assert_eq!(s.dispatch(now)[0].peer, "proven", "its retry goes to the established peer, busier as it is");
    }

    #[test]
    fn tasks_nobody_runs_in_time_never_get_a_peer_quarantined() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            reputation: crate::config::Reputation { quarantine_after_misses: 3, ..(test_config()).reputation },
            ..test_config()
        });
        let mut now = Instant::now();
        s.add_gamer("attacker".into());
        s.add_gamer("g".into());
        s.add_peer("a".into(), any_peer(8));
        s.add_peer("b".into(), any_peer(8));
        // Expensive tasks with a deadline no peer meets: they miss on both peers, then fail.
        for round in 0..10 {
            s.submit("attacker", task(&format!("x{round}")), now).unwrap();
            for _ in 0..2 {
                s.dispatch(now);
                now += Duration::from_secs(3);
                s.expire(now);
            }
        }
        assert!(s.take_quarantined().is_empty(), "the misses were the tasks' fault, not the peers'");
        // The peers still serve an honest gamer.
        s.submit("g", task("honest"), now).unwrap();
        let d = s.dispatch(now);
        assert_eq!(d.len(), 1);
        assert!(s.succeed(&d[0].peer, &d[0].assignment_id).is_ok());
    }

    #[test]
    fn straggling_session_peer_loses_the_session_when_another_can_take_it() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("a".into(), any_peer(4));
        s.submit("g", session_task("tick1", "w"), Instant::now()).unwrap();
        s.dispatch(t0);
        s.add_peer("b".into(), any_peer(4));
        let t1 = t0 + Duration::from_secs(2);
        s.expire(t1);
        let d = s.dispatch(t1);
        assert_eq!(d[0].peer, "b");
        assert_eq!(s.session_peer("g", &copy("w")), Some("b"));
    }

    #[test]
    fn only_the_assigned_peer_may_answer() {
        let mut s = sched();
        s.add_gamer("g".into());
        s.add_peer("a".into(), any_peer(1));
        s.add_peer("b".into(), any_peer(1));
        s.submit("g", task("t"), Instant::now()).unwrap();
        let d = s.dispatch(Instant::now());
        let other = if d[0].peer == "a" { "b" } else { "a" };
        assert!(matches!(s.succeed(other, &d[0].assignment_id), Err(CompleteError::NotAssigned(_))));
        assert!(matches!(s.succeed(&d[0].peer, "garbage"), Err(CompleteError::Malformed(_))));
        assert!(matches!(s.succeed(&d[0].peer, "99.1"), Err(CompleteError::NotAssigned(_))));
        assert!(s.succeed(&d[0].peer, &d[0].assignment_id).is_ok());
    }

    #[test]
    fn leaving_gamer_drops_queued_and_orphans_in_flight() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(1));
        s.submit("g", task("running"), Instant::now()).unwrap();
        s.submit("g", task("waiting"), Instant::now()).unwrap();
        let d = s.dispatch(now);
        assert_eq!(s.remove_gamer("g"), 2);
        assert_eq!(s.queued_len(), 0);
        assert_eq!(s.in_flight_len(), 1, "the peer is still busy with it");
        assert_eq!(s.succeed("p", &d[0].assignment_id), Ok(Completion::Orphaned));
        assert_eq!(s.in_flight_len(), 0);
        assert_eq!(s.counters().dropped, 2);
    }

    #[test]
    fn orphan_deadline_frees_the_slot_silently() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(1));
        s.submit("g", task("t"), Instant::now()).unwrap();
        s.dispatch(now);
        s.remove_gamer("g");
        assert!(s.expire(now + Duration::from_secs(5)).is_empty());
        assert_eq!(s.in_flight_len(), 0);
    }

    #[test]
    fn reconnecting_gamer_keeps_its_tasks() {
        let mut s = sched();
        s.add_gamer("g".into());
        s.submit("g", task("t"), Instant::now()).unwrap();
        s.add_gamer("g".into());
        assert_eq!(s.queued_len(), 1);
        assert_eq!(s.submit("g", task("t"), Instant::now()), Err(SubmitError::DuplicateTask("t".into())));
    }

    #[test]
    fn limits_are_enforced() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling {
                max_pending_per_gamer: 2,
                max_sessions_per_gamer: 1,
                ..(test_config()).scheduling
            },
            ..test_config()
        });
        assert_eq!(s.submit("nobody", task("t"), Instant::now()), Err(SubmitError::UnknownGamer));
        s.add_gamer("g".into());
        s.submit("g", session_task("a", "s1"), Instant::now()).unwrap();
        assert_eq!(s.submit("g", session_task("b", "s2"), Instant::now()), Err(SubmitError::SessionLimit(1)));
        s.submit("g", task("b"), Instant::now()).unwrap();
        assert_eq!(s.submit("g", task("c"), Instant::now()), Err(SubmitError::QueueFull(2)));
    }

    #[test]
    fn idle_sessions_make_room_for_new_ones() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling { max_sessions_per_gamer: 1, ..(test_config()).scheduling },
            ..test_config()
        });
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(1));
        s.submit("g", session_task("a", "s1"), Instant::now()).unwrap();
        let d = s.dispatch(now);
        s.succeed("p", &d[0].assignment_id).unwrap();
        s.submit("g", session_task("b", "s2"), Instant::now()).unwrap();
        assert_eq!(s.session_peer("g", &copy("s1")), None);
    }

    #[test]
    fn replacing_a_peer_requeues_its_work() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(1));
        s.submit("g", task("t"), Instant::now()).unwrap();
        let d = s.dispatch(now);
        s.add_peer("p".into(), any_peer(1));
        assert!(s.succeed("p", &d[0].assignment_id).is_err());
        let again = s.dispatch(now);
        assert_eq!(again[0].attempt, 2);
    }

    #[test]
    fn many_gamers_many_peers_each_task_assigned_once() {
        let mut s = sched();
        let now = Instant::now();
        for p in 0..5 {
            s.add_peer(format!("p{p}"), any_peer(3));
        }
        for g in 0..7 {
            s.add_gamer(format!("g{g}"));
            for t in 0..50 {
                s.submit(&format!("g{g}"), task(&format!("t{t}")), Instant::now()).unwrap();
            }
        }
        let mut delivered = HashSet::new();
        let mut pending: Vec<Dispatch> = s.dispatch(now);
        while let Some(d) = pending.pop() {
            match s.succeed(&d.peer, &d.assignment_id).unwrap() {
                Completion::Deliver { gamer, task_id, .. } => assert!(delivered.insert((gamer, task_id))),
                other => panic!("{other:?}"),
            }
            pending.extend(s.dispatch(now));
        }
        assert_eq!(delivered.len(), 350);
        assert_eq!(s.queued_len() + s.in_flight_len(), 0);
    }

    #[test]
    fn queued_task_gives_up_after_the_queue_wait_limit() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling {
                max_queue_wait: Some(Duration::from_secs(5)),
                ..(test_config()).scheduling
            },
            ..test_config()
        });
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.submit("g", task("lonely"), t0).unwrap();
        s.submit("g", task("served"), t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(s.expire(t0 + Duration::from_millis(4999)).is_empty());
        let expired = s.expire(t0 + Duration::from_secs(5));
        assert_eq!(
            expired,
            [Expired::Failed(Failure {
                gamer: "g".into(),
                task_id: "lonely".into(),
                attempts: 0,
                reason: FailReason::QueueTimeout,
                session_id: None,
            })]
        );
        // A dispatched task is governed by its attempt deadline instead.
        s.add_peer("p".into(), any_peer(1));
        let d = s.dispatch(t0 + Duration::from_secs(5));
        assert_eq!(task_ids(&s, &d), ["served"]);
        assert!(s.expire(t0 + Duration::from_secs(6)).is_empty());
        // Its peer dies after its wait limit: re-queued, it gives up at once.
        s.remove_peer("p");
        let expired = s.expire(t0 + Duration::from_secs(6));
        assert!(matches!(
            &expired[..],
            [Expired::Failed(Failure { reason: FailReason::QueueTimeout, attempts: 1, .. })]
        ));
        assert_eq!(s.queued_len(), 0);
        assert_eq!(s.counters().failed, 2);
        // The ids are free again.
        s.submit("g", task("lonely"), t0).unwrap();
    }
    #[test]
    fn a_task_whose_peers_keep_dying_is_quarantined_as_poison() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.submit("g", task("killer"), now).unwrap();
        for crash in 1..=3 {
            s.add_peer(format!("p{crash}"), any_peer(1));
            let d = s.dispatch(now);
            assert_eq!(d.len(), 1, "attempt {crash} is dispatched");
            assert_eq!(d[0].attempt, crash);
            s.remove_peer(&format!("p{crash}"));
        }
        let failures = s.take_failures();
        assert_eq!(
            failures,
            [Failure {
                gamer: "g".into(),
                task_id: "killer".into(),
                attempts: 3,
                reason: FailReason::Poison,
                session_id: None
            }]
        );
        s.add_peer("fresh".into(), any_peer(1));
        assert!(s.dispatch(now).is_empty(), "a quarantined task is never dispatched again");
        assert_eq!((s.counters().failed, s.counters().poisoned), (1, 1));
        assert_eq!(s.queued_len() + s.in_flight_len(), 0);
    }

    #[test]
    fn a_crash_after_a_timeout_still_counts_towards_the_attempts() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.submit("g", task("t"), t0).unwrap();
        s.add_peer("a".into(), any_peer(1));
        s.dispatch(t0);
        s.add_peer("b".into(), any_peer(1));
        let t1 = t0 + Duration::from_secs(2);
        s.expire(t1);
        assert_eq!(s.dispatch(t1)[0].attempt, 2);
        s.remove_peer("b");
        s.add_peer("c".into(), any_peer(1));
        assert_eq!(s.dispatch(t1)[0].attempt, 3);
        s.remove_peer("c");
        assert_eq!(s.take_failures()[0].reason, FailReason::Poison);
    }

    #[test]
    fn the_queue_wait_limit_applies_at_dispatch_time() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling {
                max_queue_wait: Some(Duration::from_secs(5)),
                ..(test_config()).scheduling
            },
            ..test_config()
        });
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.submit("g", task("stale"), t0).unwrap();
        s.submit("g", task("fresh"), t0 + Duration::from_secs(3)).unwrap();
        // The timer has not run yet when a peer arrives after the limit.
        s.add_peer("p".into(), any_peer(4));
        let d = s.dispatch(t0 + Duration::from_secs(6));
        assert_eq!(task_ids(&s, &d), ["fresh"]);
        let failures = s.take_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!((failures[0].task_id.id.as_str(), failures[0].reason), ("stale", FailReason::QueueTimeout));
    }

    #[test]
    fn declared_capacity_is_capped_and_real_capacity_is_learned() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling {
                initial_peer_capacity: 2,
                max_peer_capacity: 8,
                ..Default::default()
            },
            ..SchedulerConfig::default()
        });
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("boaster".into(), any_peer(4096));
        for i in 0..20 {
            s.submit("g", task(&format!("t{i}")), t0).unwrap();
        }
        let mut in_flight = s.dispatch(t0);
        assert_eq!(in_flight.len(), 2, "a new peer gets the initial capacity, not what it declared");
        // Each completion shows one more slot.
        let done = in_flight.remove(0);
        s.succeed("boaster", &done.assignment_id).unwrap();
        assert_eq!(s.peer_capacity("boaster"), Some(3));
        let more = s.dispatch(t0);
        assert_eq!(more.len(), 2);
        in_flight.extend(more);
        for _ in 0..10 {
            let d = in_flight.remove(0);
            s.succeed("boaster", &d.assignment_id).unwrap();
            in_flight.extend(s.dispatch(t0));
            assert!(s.peer_load("boaster").unwrap() <= 8);
        }
        assert_eq!(s.peer_capacity("boaster"), Some(8), "never past the cap on what it declared");
        // A missed deadline halves it, down to where it started at the least.
        let later = t0 + Duration::from_secs(60);
        s.expire(later);
        assert_eq!(s.peer_capacity("boaster"), Some(2), "8 in flight missed: 8 → 4 → 2 → 2 ...");
    }

    #[test]
    fn pending_bytes_are_bounded_per_gamer_and_in_total() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling {
                max_pending_bytes_per_gamer: 1_000,
                max_pending_bytes: 1_500,
                ..(test_config()).scheduling
            },
            ..test_config()
        });
        let now = Instant::now();
        let sized = |id: &str, bytes: usize| Submission { bytes, ..task(id) };
        s.add_gamer("a".into());
        s.add_gamer("b".into());
        s.submit("a", sized("a1", 600), now).unwrap();
        assert_eq!(s.submit("a", sized("a2", 600), now), Err(SubmitError::GamerBytes(1_000)));
        s.submit("b", sized("b1", 800), now).unwrap();
        assert_eq!(s.submit("b", sized("b2", 200), now), Err(SubmitError::TotalBytes(1_500)));
        assert_eq!(s.pending_bytes(), 1_400);
        // Answered tasks give their bytes back.
        s.add_peer("p".into(), any_peer(4));
        for d in s.dispatch(now) {
            s.succeed("p", &d.assignment_id).unwrap();
        }
        assert_eq!(s.pending_bytes(), 0);
        s.submit("a", sized("a2", 1_000), now).unwrap();
        // A departed gamer's queued bytes are released at once.
        s.remove_gamer("a");
        assert_eq!(s.pending_bytes(), 0);
    }

    #[test]
    fn task_types_without_a_session_are_bounded_per_gamer() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig { max_task_types_per_gamer: 2, ..test_config() });
        let now = Instant::now();
        s.add_gamer("g".into());
        let typed = |id: &str, t: &str| Submission { task_type: t.into(), ..task(id) };
        s.submit("g", typed("1", "a"), now).unwrap();
        s.submit("g", typed("2", "b"), now).unwrap();
        s.submit("g", typed("3", "a"), now).unwrap();
        assert_eq!(s.submit("g", typed("4", "c"), now), Err(SubmitError::TaskTypeLimit(2)));
    }

    #[test]
    fn dispatch_cost_follows_placements_not_waiting_gamers() {
        let mut s = sched();
        let now = Instant::now();
        s.add_peer("p".into(), typed_peer(1, &["physics"]));
        // 200 gamers with 256 tasks no peer runs, across sessions and types.
        for g in 0..200 {
            let gamer = format!("attacker{g}");
            s.add_gamer(gamer.clone());
            for t in 0..256 {
                let submission = Submission {
                    task_type: format!("nobody-runs-{}", t % 8),
                    session_id: (t % 2 == 0).then(|| format!("s{}", t % 16).into()),
                    ..task(&format!("t{t}"))
                };
                s.submit(&gamer, submission, now).unwrap();
            }
        }
        s.dispatch(now);
        assert_eq!(s.parked_len(), 200);
        let before = s.gamers_examined();
        // An honest gamer's 1,000 ticks, each dispatched and answered.
        s.add_gamer("honest".into());
        for i in 0..1_000 {
            s.submit("honest", task(&format!("h{i}")), now).unwrap();
            let d = s.dispatch(now);
            assert_eq!(d.len(), 1);
            s.succeed("p", &d[0].assignment_id).unwrap();
            assert!(s.dispatch(now).is_empty());
        }
        let examined = s.gamers_examined() - before;
        assert!(examined <= 2_000, "dispatch looked at {examined} gamers for 1,000 placements");
        // A peer that runs their tasks wakes them.
        s.add_peer("any".into(), any_peer(1000));
        assert!(s.dispatch(now).len() >= 1000);
    }

    #[test]
    fn a_parked_session_wakes_when_its_peer_has_room() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling { max_session_pipeline: 1, ..(test_config()).scheduling },
            ..test_config()
        });
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("a".into(), any_peer(1));
        s.submit("g", session_task("tick0", "w"), now).unwrap();
        let first = s.dispatch(now);
        s.submit("g", session_task("tick1", "w"), now).unwrap();
        assert!(s.dispatch(now).is_empty(), "tick1 waits for the session's peer");
        s.succeed("a", &first[0].assignment_id).unwrap();
        assert_eq!(dispatch_ids(&mut s, now), ["tick1"]);
    }

    #[test]
    fn ten_thousand_queued_tasks_expire_together() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling {
                max_queue_wait: Some(Duration::from_secs(1)),
                ..(test_config()).scheduling
            },
            ..test_config()
        });
        let t0 = Instant::now();
        s.add_gamer("g".into());
        for i in 0..10_000 {
            s.submit("g", session_task(&format!("t{i}"), &format!("s{}", i % 50)), t0).unwrap();
        }
        let now = t0 + Duration::from_secs(1);
        let mut expired = 0;
        while s.next_deadline().is_some_and(|at| at <= now) {
            let batch = s.expire_some(now, 1_000);
            assert!(batch.len() <= 1_000);
            expired += batch.len();
        }
        assert_eq!(expired, 10_000);
        assert_eq!(s.queued_len(), 0);
        assert_eq!(s.counters().failed, 10_000);
    }
    #[test]
    fn a_late_session_tick_takes_its_pipelined_successors_along_in_order() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("slow".into(), any_peer(4));
        for i in 0..3 {
            s.submit("g", session_task(&format!("t{i}"), "w"), t0).unwrap();
        }
        let first = s.dispatch(t0);
        assert_eq!(first.len(), 3, "pipelined on the slow peer");
        s.add_peer("fast".into(), any_peer(4));
        // t0's deadline passes (the others are due at the same time here, but only one
        // deadline is handled: the batch limit of 1).
        let expired = s.expire_some(t0 + Duration::from_secs(2), 1);
        assert_eq!(expired.len(), 3, "{expired:?}");
        // Nothing of the session is left on the slow peer: its late answers are refused.
        assert_eq!(s.peer_load("slow"), Some(0));
        assert!(s.succeed("slow", &first[1].assignment_id).is_err());
        let moved = s.dispatch(t0 + Duration::from_secs(2));
        assert_eq!(task_ids(&s, &moved), ["t0", "t1", "t2"]);
        assert!(moved.iter().all(|d| d.peer == "fast"));
        assert_eq!(s.session_peer("g", &copy("w")), Some("fast"));
    }

    #[test]
    fn bytes_in_flight_at_a_peer_are_bounded_but_an_idle_peer_takes_any_task() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig { max_bytes_per_peer: 1_000, ..test_config() });
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(8));
        let sized = |id: &str, bytes: usize| Submission { bytes, ..task(id) };
        s.submit("g", sized("huge", 5_000), now).unwrap();
        s.submit("g", sized("small", 10), now).unwrap();
        let d = s.dispatch(now);
        assert_eq!(task_ids(&s, &d), ["huge"], "the small one waits: the peer holds its most bytes");
        s.succeed("p", &d[0].assignment_id).unwrap();
        assert_eq!(dispatch_ids(&mut s, now), ["small"]);
    }

    #[test]
    fn departed_and_woken_gamers_leave_no_waker_entries_behind() {
        let mut s = sched();
        let now = Instant::now();
        s.add_peer("p".into(), typed_peer(1, &["physics"]));
        for g in 0..100 {
            let gamer = format!("g{g}");
            s.add_gamer(gamer.clone());
            let t = Submission { task_type: format!("made-up-{g}"), ..task("t") };
            s.submit(&gamer, t, now).unwrap();
            s.dispatch(now);
        }
        assert_eq!(s.parked_len(), 100);
        assert!(s.waker_entries() >= 100);
        for g in 0..100 {
            s.remove_gamer(&format!("g{g}"));
        }
        assert_eq!(s.waker_entries(), 0);
    }

    #[test]
    fn a_session_pinned_to_a_peer_that_cannot_run_its_next_tick_moves() {
        let mut s = sched();
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("phys".into(), typed_peer(2, &["physics"]));
        s.add_peer("ai".into(), typed_peer(2, &["ai"]));
        s.submit("g", session_task("p0", "w"), now).unwrap();
        let d = s.dispatch(now);
        assert_eq!(d[0].peer, "phys");
        s.succeed("phys", &d[0].assignment_id).unwrap();
        s.submit("g", Submission { task_type: "ai".into(), ..session_task("a1", "w") }, now).unwrap();
        let d = s.dispatch(now);
        assert_eq!((task_ids(&s, &d), d[0].peer.as_str()), (vec!["a1".to_owned()], "ai"));
        assert_eq!(s.session_peer("g", &copy("w")), Some("ai"));
    }

    #[test]
    fn a_timed_out_session_head_wakes_its_gamer_for_the_next_tick() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            scheduling: crate::config::Scheduling {
                max_queue_wait: Some(Duration::from_secs(1)),
                ..(test_config()).scheduling
            },
            ..test_config()
        });
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("ai".into(), typed_peer(1, &["ai"]));
        s.submit("g", Submission { task_type: "nobody".into(), ..session_task("stuck", "w") }, t0).unwrap();
        s.submit(
            "g",
            Submission { task_type: "ai".into(), ..session_task("next", "w") },
            t0 + Duration::from_millis(500),
        )
        .unwrap();
        assert!(s.dispatch(t0).is_empty());
        assert_eq!(s.parked_len(), 1);
        s.expire(t0 + Duration::from_secs(1));
        assert_eq!(dispatch_ids(&mut s, t0 + Duration::from_secs(1)), ["next"]);
    }
    #[test]
    fn a_freed_slot_wakes_the_longest_waiting_gamer_not_every_waiting_one() {
        let mut s = sched();
        let now = Instant::now();
        s.add_peer("physics".into(), typed_peer(1, &["physics"]));
        // A peer with room for another type keeps dispatch looking, so the physics gamers park.
        s.add_peer("ai".into(), typed_peer(100, &["ai"]));
        for g in 0..100 {
            s.add_gamer(format!("g{g}"));
            s.submit(&format!("g{g}"), task("t"), now).unwrap();
        }
        let mut d = s.dispatch(now);
        assert_eq!(d.len(), 1);
        assert_eq!(s.parked_len(), 99);
        let mut order = vec![s.task(d[0].key).unwrap().gamer.clone()];
        let before = s.gamers_examined();
        for _ in 0..99 {
            s.succeed("physics", &d[0].assignment_id).unwrap();
            d = s.dispatch(now);
            assert_eq!(d.len(), 1);
            order.push(s.task(d[0].key).unwrap().gamer.clone());
        }
        let examined = s.gamers_examined() - before;
        assert!(examined <= 2 * 99, "{examined} gamers looked at for 99 placements");
        let expected: Vec<String> = (0..100).map(|g| format!("g{g}")).collect();
        assert_eq!(order, expected, "woken in the order they waited");
    }
    #[test]
    fn pipelined_ticks_get_deadlines_that_follow_the_ticks_ahead_of_them() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(2));
        for i in 0..3 {
            s.submit("g", session_task(&format!("t{i}"), "w"), t0).unwrap();
        }
        let d = s.dispatch(t0);
        let deadlines: Vec<u64> = d.iter().map(|d| d.deadline.as_secs()).collect();
        assert_eq!(deadlines, [2, 4, 6], "each runs after the one before it on the peer");
        // The head answers in time; the tail's deadlines are untouched by the busy queue.
        s.succeed("p", &d[0].assignment_id).unwrap();
        assert!(s.expire(t0 + Duration::from_millis(3_999)).is_empty());
        // A tick sent after the pipeline drained starts its own deadline from now.
        s.succeed("p", &d[1].assignment_id).unwrap();
        s.succeed("p", &d[2].assignment_id).unwrap();
        s.submit("g", session_task("t3", "w"), t0).unwrap();
        assert_eq!(s.dispatch(t0 + Duration::from_secs(1))[0].deadline, Duration::from_secs(2));
    }
}
