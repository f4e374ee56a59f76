//! Which task runs where: the coordinator's routing decisions as a pure data structure.
//!
//! No sockets, no clocks of its own: the caller passes `now` and turns the returned
//! [`Dispatch`]es and [`Expired`] outcomes into frames. Everything here is unit-tested.
//!
//! Rules (see ARCHITECTURE.md for why):
//! - Each gamer has a FIFO queue, kept in submission order. Gamers are served round-robin,
//!   one placement at a time, so one gamer flooding tasks cannot starve another.
//! - A task goes to a live peer that runs its type and has a free slot, least loaded first
//!   (in-flight / capacity), preferring peers that have not already tried it.
//! - Tasks with a session id go to the session's peer while it lives, in submission order;
//!   a session's later task never overtakes an earlier one.
//! - A task re-queued (its peer died, or its deadline passed) goes back to its place in
//!   submission order, ahead of everything submitted after it.
//! - Every dispatch is an attempt; after `max_attempts` the task fails.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// A peer's id as it registered.
pub type PeerId = String;
/// A gamer's id as it registered.
pub type GamerId = String;

/// Scheduler limits.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Dispatches per task before it fails.
    pub max_attempts: u32,
    /// Most tasks a gamer may have pending (queued or in flight).
    pub max_pending_per_gamer: usize,
    /// Most sessions a gamer may keep; idle ones are forgotten first.
    pub max_sessions_per_gamer: usize,
    /// How many queued tasks of one gamer are looked at when searching for one to place.
    pub scan_depth: usize,
    /// A task still waiting in a queue this long after it was submitted fails with
    /// [`FailReason::QueueTimeout`]. `None`: tasks wait for a peer forever.
    pub max_queue_wait: Option<Duration>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_attempts: 3,
            max_pending_per_gamer: 10_000,
            max_sessions_per_gamer: 64,
            scan_depth: 256,
            max_queue_wait: None,
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
}

/// A task as a gamer submitted it.
#[derive(Debug)]
pub struct Submission<P> {
    /// The gamer's id for it.
    pub task_id: String,
    /// What to run.
    pub task_type: String,
    /// Its session, if any.
    pub session_id: Option<String>,
    /// Per-attempt deadline.
    pub deadline: Duration,
    /// The opaque input.
    pub payload: P,
}

/// Why a submission was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The gamer is not registered with the scheduler.
    #[error("gamer is not registered")]
    UnknownGamer,
    /// The gamer already has a pending task with this id.
    #[error("a task with id {0:?} is already pending")]
    DuplicateTask(String),
    /// The gamer's pending tasks reached the limit.
    #[error("too many pending tasks (limit {0})")]
    QueueFull(usize),
    /// The gamer's sessions reached the limit and none is idle.
    #[error("too many active sessions (limit {0})")]
    SessionLimit(usize),
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
}

/// A task's answer accepted from its peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    /// Forward the result to this gamer under its own task id.
    Deliver {
        /// The gamer that submitted the task.
        gamer: GamerId,
        /// The gamer's task id.
        task_id: String,
        /// The attempt that answered.
        attempt: u32,
    },
    /// The gamer has left; drop the result.
    Orphaned,
}

/// What a passed deadline led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    /// The task went back to the queue for another attempt.
    Requeued {
        /// The gamer's task id.
        task_id: String,
        /// The peer that missed the deadline.
        peer: PeerId,
        /// The attempt that timed out.
        attempt: u32,
    },
    /// The task is given up; tell the gamer.
    Failed {
        /// The gamer.
        gamer: GamerId,
        /// The gamer's task id.
        task_id: String,
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: FailReason,
    },
}

/// Why a task was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Every attempt missed its deadline.
    MaxAttempts,
    /// No peer could take it within the queue wait limit.
    QueueTimeout,
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
    /// Tasks given up.
    pub failed: u64,
    /// Tasks dropped because their gamer left.
    pub dropped: u64,
}

/// A task's internal key, unique for the scheduler's lifetime.
pub type TaskKey = u64;

/// A task held by the scheduler.
#[derive(Debug)]
pub struct Task<P> {
    /// The submitting gamer.
    pub gamer: GamerId,
    /// The gamer's id for it.
    pub task_id: String,
    /// What to run.
    pub task_type: String,
    /// Its session, if any.
    pub session_id: Option<String>,
    /// Per-attempt deadline.
    pub deadline: Duration,
    /// The opaque input.
    pub payload: P,
    attempts: u32,
    tried: Vec<PeerId>,
    state: TaskState,
    /// When the task stops waiting for a peer, if there is a queue wait limit.
    give_up_at: Option<Instant>,
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
    spec: PeerSpec,
    in_flight: u32,
    joined: u64,
}

impl Peer {
    fn runs(&self, task_type: &str) -> bool {
        self.spec.task_types.as_ref().is_none_or(|t| t.is_empty() || t.contains(task_type))
    }

    fn has_room(&self) -> bool {
        self.in_flight < self.spec.capacity
    }
}

#[derive(Debug, Default)]
struct Gamer {
    queue: VecDeque<TaskKey>,
    tasks: HashMap<String, TaskKey>,
    sessions: HashMap<String, Session>,
}

#[derive(Debug, Default)]
struct Session {
    peer: Option<PeerId>,
    pending: u32,
    last_used: u64,
}

/// The scheduler. `P` is the task payload, opaque to it.
#[derive(Debug)]
pub struct Scheduler<P> {
    config: SchedulerConfig,
    peers: HashMap<PeerId, Peer>,
    gamers: HashMap<GamerId, Gamer>,
    /// Gamers in round-robin order; the front is served first.
    ring: VecDeque<GamerId>,
    tasks: HashMap<TaskKey, Task<P>>,
    deadlines: BTreeSet<(Instant, TaskKey, u32)>,
    /// Queue wait limits of the tasks waiting in queues.
    queue_limits: BTreeSet<(Instant, TaskKey)>,
    next_key: TaskKey,
    next_join: u64,
    counters: Counters,
}

impl<P> Scheduler<P> {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            peers: HashMap::new(),
            gamers: HashMap::new(),
            ring: VecDeque::new(),
            tasks: HashMap::new(),
            deadlines: BTreeSet::new(),
            queue_limits: BTreeSet::new(),
            next_key: 1,
            next_join: 0,
            counters: Counters::default(),
        }
    }

    /// Counters since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Tasks waiting in queues.
    pub fn queued_len(&self) -> usize {
        self.gamers.values().map(|g| g.queue.len()).sum()
    }

    /// Tasks assigned and not yet answered (including orphaned ones).
    pub fn in_flight_len(&self) -> usize {
        self.peers.values().map(|p| p.in_flight as usize).sum()
    }

    /// Tasks currently assigned to `peer`.
    pub fn peer_load(&self, peer: &str) -> Option<u32> {
        self.peers.get(peer).map(|p| p.in_flight)
    }

    /// The peer holding a gamer's session, if any.
    pub fn session_peer(&self, gamer: &str, session: &str) -> Option<&str> {
        self.gamers.get(gamer)?.sessions.get(session)?.peer.as_deref()
    }

    /// A task's data, for building its assignment.
    pub fn task(&self, key: TaskKey) -> Option<&Task<P>> {
        self.tasks.get(&key)
    }

    /// A task's data, mutably (to lend its payload to an assignment frame).
    pub fn task_mut(&mut self, key: TaskKey) -> Option<&mut Task<P>> {
        self.tasks.get_mut(&key)
    }

    /// Adds a peer. A peer already known under this id is replaced (its work re-queued).
    pub fn add_peer(&mut self, id: PeerId, mut spec: PeerSpec) {
        self.remove_peer(&id);
        spec.capacity = spec.capacity.max(1);
        self.next_join += 1;
        self.peers.insert(id, Peer { spec, in_flight: 0, joined: self.next_join });
    }

    /// Removes a peer and re-queues its tasks. Returns how many were re-queued.
    pub fn remove_peer(&mut self, id: &str) -> usize {
        if self.peers.remove(id).is_none() {
            return 0;
        }
        let mut requeue = Vec::new();
        let mut orphans = Vec::new();
        for (key, task) in &self.tasks {
            match &task.state {
                TaskState::Assigned { peer, attempt, due } if peer == id => requeue.push((*key, *attempt, *due)),
                TaskState::Orphaned { peer, attempt, due } if peer == id => orphans.push((*key, *attempt, *due)),
                _ => {}
            }
        }
        for (key, attempt, due) in orphans {
            self.deadlines.remove(&(due, key, attempt));
            self.tasks.remove(&key);
        }
        for gamer in self.gamers.values_mut() {
            for session in gamer.sessions.values_mut() {
                if session.peer.as_deref() == Some(id) {
                    session.peer = None;
                }
            }
        }
        let count = requeue.len();
        for (key, attempt, due) in requeue {
            self.deadlines.remove(&(due, key, attempt));
            self.requeue(key);
        }
        count
    }

    /// Adds a gamer (no-op if it is known: a reconnecting gamer keeps its tasks).
    pub fn add_gamer(&mut self, id: GamerId) {
        if !self.gamers.contains_key(&id) {
            self.gamers.insert(id.clone(), Gamer::default());
            self.ring.push_back(id);
        }
    }

    /// Removes a gamer: its queued tasks are dropped, its in-flight ones are orphaned.
    /// Returns how many tasks were dropped or orphaned.
    pub fn remove_gamer(&mut self, id: &str) -> usize {
        let Some(gamer) = self.gamers.remove(id) else { return 0 };
        self.ring.retain(|g| g != id);
        let mut dropped = 0;
        for key in gamer.tasks.into_values() {
            let Some(task) = self.tasks.get_mut(&key) else { continue };
            dropped += 1;
            match std::mem::replace(&mut task.state, TaskState::Queued) {
                TaskState::Queued => {
                    if let Some(at) = task.give_up_at {
                        self.queue_limits.remove(&(at, key));
                    }
                    self.tasks.remove(&key);
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
        let limits = (self.config.max_pending_per_gamer, self.config.max_sessions_per_gamer);
        let key = self.next_key;
        let gamer = self.gamers.get_mut(gamer_id).ok_or(SubmitError::UnknownGamer)?;
        if gamer.tasks.contains_key(&submission.task_id) {
            return Err(SubmitError::DuplicateTask(submission.task_id));
        }
        if gamer.tasks.len() >= limits.0 {
            return Err(SubmitError::QueueFull(limits.0));
        }
        if let Some(session_id) = &submission.session_id {
            if !gamer.sessions.contains_key(session_id) {
                if gamer.sessions.len() >= limits.1 {
                    let idle = gamer
                        .sessions
                        .iter()
                        .filter(|(_, s)| s.pending == 0)
                        .min_by_key(|(_, s)| s.last_used)
                        .map(|(id, _)| id.clone());
                    match idle {
                        Some(idle) => {
                            gamer.sessions.remove(&idle);
                        }
                        None => return Err(SubmitError::SessionLimit(limits.1)),
                    }
                }
                gamer.sessions.insert(session_id.clone(), Session::default());
            }
            let session = gamer.sessions.get_mut(session_id).expect("inserted above");
            session.pending += 1;
            session.last_used = key;
        }
        self.next_key += 1;
        gamer.tasks.insert(submission.task_id.clone(), key);
        // Keys grow with submission, so pushing at the back keeps the queue sorted.
        gamer.queue.push_back(key);
        let give_up_at = self.config.max_queue_wait.map(|wait| now + wait);
        if let Some(at) = give_up_at {
            self.queue_limits.insert((at, key));
        }
        self.tasks.insert(
            key,
            Task {
                gamer: gamer_id.to_owned(),
                task_id: submission.task_id,
                task_type: submission.task_type,
                session_id: submission.session_id,
                deadline: submission.deadline,
                payload: submission.payload,
                attempts: 0,
                tried: Vec::new(),
                state: TaskState::Queued,
                give_up_at,
            },
        );
        self.counters.queued += 1;
        Ok(key)
    }

    /// Places as many queued tasks as free capacity allows, round-robin across gamers.
    pub fn dispatch(&mut self, now: Instant) -> Vec<Dispatch> {
        let mut out = Vec::new();
        'rounds: loop {
            if !self.peers.values().any(Peer::has_room) {
                break;
            }
            for position in 0..self.ring.len() {
                let gamer_id = &self.ring[position];
                if let Some((index, peer)) = self.find_placement(gamer_id) {
                    let gamer_id = gamer_id.clone();
                    let gamer = self.gamers.get_mut(&gamer_id).expect("ring lists known gamers");
                    let key = gamer.queue.remove(index).expect("index came from the queue");
                    out.push(self.assign(key, peer, now));
                    // The next gamer in the ring goes first next time.
                    self.ring.rotate_left(position + 1);
                    continue 'rounds;
                }
            }
            break;
        }
        out
    }

    /// The first task of this gamer's queue that can run now, and where.
    fn find_placement(&self, gamer_id: &str) -> Option<(usize, PeerId)> {
        let gamer = self.gamers.get(gamer_id)?;
        let mut blocked_sessions: Vec<&str> = Vec::new();
        let mut blocked_types: Vec<&str> = Vec::new();
        for (index, key) in gamer.queue.iter().enumerate().take(self.config.scan_depth) {
            let task = &self.tasks[key];
            match &task.session_id {
                Some(session_id) => {
                    if blocked_sessions.contains(&session_id.as_str()) {
                        continue;
                    }
                    let held_by = gamer.sessions.get(session_id).and_then(|s| s.peer.as_ref());
                    let target = match held_by {
                        Some(peer_id) => self
                            .peers
                            .get(peer_id)
                            .filter(|p| p.has_room() && p.runs(&task.task_type))
                            .map(|_| peer_id.clone()),
                        None => self.best_peer(&task.task_type, &task.tried),
                    };
                    match target {
                        Some(peer) => return Some((index, peer)),
                        // Later ticks of this session must wait behind this one.
                        None => blocked_sessions.push(session_id),
                    }
                }
                None => {
                    if blocked_types.contains(&task.task_type.as_str()) {
                        continue;
                    }
                    match self.best_peer(&task.task_type, &task.tried) {
                        Some(peer) => return Some((index, peer)),
                        None => blocked_types.push(&task.task_type),
                    }
                }
            }
        }
        None
    }

    /// The least-loaded peer with room that runs `task_type`, preferring untried ones.
    fn best_peer(&self, task_type: &str, tried: &[PeerId]) -> Option<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.has_room() && p.runs(task_type))
            .min_by(|(a_id, a), (b_id, b)| {
                let a_tried = tried.contains(a_id);
                let b_tried = tried.contains(b_id);
                // Compare load ratios without floats: a.in/a.cap vs b.in/b.cap.
                let a_load = u64::from(a.in_flight) * u64::from(b.spec.capacity);
                let b_load = u64::from(b.in_flight) * u64::from(a.spec.capacity);
                a_tried
                    .cmp(&b_tried)
                    .then(a_load.cmp(&b_load))
                    .then(a.in_flight.cmp(&b.in_flight))
                    .then(a.joined.cmp(&b.joined))
            })
            .map(|(id, _)| id.clone())
    }

    fn assign(&mut self, key: TaskKey, peer_id: PeerId, now: Instant) -> Dispatch {
        let task = self.tasks.get_mut(&key).expect("queued tasks exist");
        task.attempts += 1;
        if task.attempts > 1 {
            self.counters.redispatched += 1;
        }
        self.counters.assigned += 1;
        let attempt = task.attempts;
        let due = now + task.deadline;
        if let Some(at) = task.give_up_at {
            self.queue_limits.remove(&(at, key));
        }
        task.state = TaskState::Assigned { peer: peer_id.clone(), attempt, due };
        if let Some(session_id) = &task.session_id {
            let gamer = self.gamers.get_mut(&task.gamer).expect("tasks belong to known gamers");
            if let Some(session) = gamer.sessions.get_mut(session_id) {
                session.peer = Some(peer_id.clone());
            }
        }
        self.peers.get_mut(&peer_id).expect("placement picked a live peer").in_flight += 1;
        self.deadlines.insert((due, key, attempt));
        Dispatch { key, assignment_id: assignment_id(key, attempt), peer: peer_id, attempt }
    }

    /// Puts a task back in its gamer's queue, in submission order.
    fn requeue(&mut self, key: TaskKey) {
        let task = self.tasks.get_mut(&key).expect("requeued tasks exist");
        if let TaskState::Assigned { peer, .. } = &task.state {
            if let Some(p) = self.peers.get_mut(peer) {
                p.in_flight -= 1;
            }
            if !task.tried.contains(peer) {
                task.tried.push(peer.clone());
            }
        }
        task.state = TaskState::Queued;
        // Back in a queue: its wait limit applies again (at once if it has passed).
        if let Some(at) = task.give_up_at {
            self.queue_limits.insert((at, key));
        }
        let gamer = self.gamers.get_mut(&task.gamer).expect("tasks belong to known gamers");
        let position = gamer.queue.binary_search(&key).unwrap_or_else(|p| p);
        gamer.queue.insert(position, key);
    }

    /// Accepts a peer's answer to `assignment_id`, freeing its slot.
    pub fn complete(&mut self, peer_id: &str, assignment_id: &str) -> Result<Completion, CompleteError> {
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
        if let Some(p) = self.peers.get_mut(peer_id) {
            p.in_flight -= 1;
        }
        let task = self.tasks.remove(&key).expect("looked up above");
        if orphaned {
            return Ok(Completion::Orphaned);
        }
        self.forget(&task);
        self.counters.completed += 1;
        Ok(Completion::Deliver { gamer: task.gamer, task_id: task.task_id, attempt })
    }

    /// Removes a finished task from its gamer's books.
    fn forget(&mut self, task: &Task<P>) {
        let Some(gamer) = self.gamers.get_mut(&task.gamer) else { return };
        gamer.tasks.remove(&task.task_id);
        if let Some(session) = task.session_id.as_ref().and_then(|id| gamer.sessions.get_mut(id)) {
            session.pending = session.pending.saturating_sub(1);
        }
    }

    /// When the next deadline passes, if any task is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        let attempt = self.deadlines.first().map(|(due, _, _)| *due);
        let queue = self.queue_limits.first().map(|(at, _)| *at);
        attempt.into_iter().chain(queue).min()
    }

    /// Handles every deadline that has passed by `now`: re-queues or fails the tasks.
    /// Call [`Scheduler::dispatch`] afterwards.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let mut out = Vec::new();
        while let Some(&(due, key, attempt)) = self.deadlines.first() {
            if due > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(task) = self.tasks.get(&key) else { continue };
            match &task.state {
                TaskState::Orphaned { peer, .. } => {
                    if let Some(p) = self.peers.get_mut(peer) {
                        p.in_flight -= 1;
                    }
                    self.tasks.remove(&key);
                }
                TaskState::Assigned { peer, .. } => {
                    let peer = peer.clone();
                    if task.attempts >= self.config.max_attempts {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.in_flight -= 1;
                        }
                        let task = self.tasks.remove(&key).expect("looked up above");
                        self.forget(&task);
                        self.counters.failed += 1;
                        out.push(Expired::Failed {
                            gamer: task.gamer,
                            task_id: task.task_id,
                            attempts: attempt,
                            reason: FailReason::MaxAttempts,
                        });
                    } else {
                        // A straggling session peer loses the session if another peer can
                        // take it: the next attempt goes elsewhere and the gamer resyncs.
                        if let Some(session_id) = &task.session_id {
                            let session = self.gamers.get_mut(&task.gamer).and_then(|g| g.sessions.get_mut(session_id));
                            if let Some(session) = session {
                                session.peer = None;
                            }
                        }
                        out.push(Expired::Requeued { task_id: task.task_id.clone(), peer, attempt });
                        self.requeue(key);
                    }
                }
                TaskState::Queued => {}
            }
        }
        while let Some(&(at, key)) = self.queue_limits.first() {
            if at > now {
                break;
            }
            self.queue_limits.pop_first();
            if self.tasks.get(&key).is_none_or(|t| t.state != TaskState::Queued) {
                continue;
            }
            let task = self.tasks.remove(&key).expect("looked up above");
            if let Some(gamer) = self.gamers.get_mut(&task.gamer) {
                gamer.queue.retain(|k| *k != key);
            }
            self.forget(&task);
            self.counters.failed += 1;
            out.push(Expired::Failed {
                gamer: task.gamer,
                task_id: task.task_id,
                attempts: task.attempts,
                reason: FailReason::QueueTimeout,
            });
        }
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

    fn sched() -> Scheduler<()> {
        Scheduler::new(SchedulerConfig::default())
    }

    fn any_peer(capacity: u32) -> PeerSpec {
        PeerSpec { task_types: None, capacity }
    }

    fn typed_peer(capacity: u32, types: &[&str]) -> PeerSpec {
        PeerSpec { task_types: Some(types.iter().map(|t| t.to_string()).collect()), capacity }
    }

    fn task(id: &str) -> Submission<()> {
        Submission {
            task_id: id.into(),
            task_type: "physics".into(),
            session_id: None,
            deadline: Duration::from_secs(2),
            payload: (),
        }
    }

    fn session_task(id: &str, session: &str) -> Submission<()> {
        Submission { session_id: Some(session.into()), ..task(id) }
    }

    fn dispatch_ids(s: &mut Scheduler<()>, now: Instant) -> Vec<String> {
        let d = s.dispatch(now);
        task_ids(s, &d)
    }

    fn task_ids(s: &Scheduler<()>, dispatches: &[Dispatch]) -> Vec<String> {
        dispatches.iter().map(|d| s.task(d.key).unwrap().task_id.clone()).collect()
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
        let done = s.complete("p", &d[0].assignment_id).unwrap();
        assert_eq!(done, Completion::Deliver { gamer: "g".into(), task_id: "t0".into(), attempt: 1 });
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
            s.complete("p", &d[0].assignment_id).unwrap();
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
        assert_eq!(s.session_peer("g", "world"), Some(holder.as_str()));
        for i in 2..6 {
            s.submit("g", session_task(&format!("tick{i}"), "world"), Instant::now()).unwrap();
        }
        let more = s.dispatch(now);
        assert!(more.iter().all(|d| d.peer == holder), "{more:?}");
        // "a" has one slot: if it holds the session the rest wait; never spill to "b".
        if holder == "a" {
            assert!(more.is_empty());
            let d = s.complete("a", &first[0].assignment_id);
            assert!(d.is_ok());
            assert_eq!(dispatch_ids(&mut s, now), ["tick2"]);
        } else {
            assert_eq!(task_ids(&s, &more), ["tick2", "tick3", "tick4", "tick5"]);
        }
    }

    #[test]
    fn blocked_session_does_not_block_other_work_but_keeps_its_order() {
        let mut s = sched();
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
        s.complete("a", &d[0].assignment_id).unwrap();
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
        assert_eq!(s.session_peer("g", "world"), None);
        assert_eq!(s.queued_len(), 5);
        s.add_peer("b".into(), any_peer(8));
        let d = s.dispatch(now);
        assert_eq!(task_ids(&s, &d), ["tick0", "tick1", "tick2", "tick3", "tick4"]);
        assert!(d.iter().all(|d| d.peer == "b" && d.attempt == 2));
        assert_eq!(s.session_peer("g", "world"), Some("b"));
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
        assert!(matches!(s.complete("slow", &first[0].assignment_id), Err(CompleteError::NotAssigned(_))));
        let t2 = t1 + Duration::from_secs(2);
        s.expire(t2);
        let third = s.dispatch(t2);
        assert_eq!(third[0].attempt, 3);
        let t3 = t2 + Duration::from_secs(2);
        assert_eq!(
            s.expire(t3),
            [Expired::Failed { gamer: "g".into(), task_id: "t".into(), attempts: 3, reason: FailReason::MaxAttempts }]
        );
        assert_eq!(s.in_flight_len(), 0);
        assert_eq!(s.counters().failed, 1);
        // The id is free again.
        s.submit("g", task("t"), Instant::now()).unwrap();
    }

    #[test]
    fn same_peer_retry_still_rejects_the_superseded_attempt() {
        let mut s = sched();
        let t0 = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("only".into(), any_peer(1));
        s.submit("g", task("t"), Instant::now()).unwrap();
        let first = s.dispatch(t0);
        let t1 = t0 + Duration::from_secs(3);
        s.expire(t1);
        let second = s.dispatch(t1);
        assert_eq!(second[0].peer, "only");
        assert!(s.complete("only", &first[0].assignment_id).is_err());
        assert!(s.complete("only", &second[0].assignment_id).is_ok());
        assert!(s.complete("only", &second[0].assignment_id).is_err(), "answered once only");
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
        assert_eq!(s.session_peer("g", "w"), Some("b"));
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
        assert!(matches!(s.complete(other, &d[0].assignment_id), Err(CompleteError::NotAssigned(_))));
        assert!(matches!(s.complete(&d[0].peer, "garbage"), Err(CompleteError::Malformed(_))));
        assert!(matches!(s.complete(&d[0].peer, "99.1"), Err(CompleteError::NotAssigned(_))));
        assert!(s.complete(&d[0].peer, &d[0].assignment_id).is_ok());
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
        assert_eq!(s.complete("p", &d[0].assignment_id), Ok(Completion::Orphaned));
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
            max_pending_per_gamer: 2,
            max_sessions_per_gamer: 1,
            ..SchedulerConfig::default()
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
        let mut s: Scheduler<()> =
            Scheduler::new(SchedulerConfig { max_sessions_per_gamer: 1, ..SchedulerConfig::default() });
        let now = Instant::now();
        s.add_gamer("g".into());
        s.add_peer("p".into(), any_peer(1));
        s.submit("g", session_task("a", "s1"), Instant::now()).unwrap();
        let d = s.dispatch(now);
        s.complete("p", &d[0].assignment_id).unwrap();
        s.submit("g", session_task("b", "s2"), Instant::now()).unwrap();
        assert_eq!(s.session_peer("g", "s1"), None);
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
        assert!(s.complete("p", &d[0].assignment_id).is_err());
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
            match s.complete(&d.peer, &d.assignment_id).unwrap() {
                Completion::Deliver { gamer, task_id, .. } => assert!(delivered.insert((gamer, task_id))),
                Completion::Orphaned => panic!(),
            }
            pending.extend(s.dispatch(now));
        }
        assert_eq!(delivered.len(), 350);
        assert_eq!(s.queued_len() + s.in_flight_len(), 0);
    }

    #[test]
    fn queued_task_gives_up_after_the_queue_wait_limit() {
        let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
            max_queue_wait: Some(Duration::from_secs(5)),
            ..SchedulerConfig::default()
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
            [Expired::Failed {
                gamer: "g".into(),
                task_id: "lonely".into(),
                attempts: 0,
                reason: FailReason::QueueTimeout
            }]
        );
        // A dispatched task is governed by its attempt deadline instead.
        s.add_peer("p".into(), any_peer(1));
        let d = s.dispatch(t0 + Duration::from_secs(5));
        assert_eq!(task_ids(&s, &d), ["served"]);
        assert!(s.expire(t0 + Duration::from_secs(6)).is_empty());
        // Its peer dies after its wait limit: re-queued, it gives up at once.
        s.remove_peer("p");
        let expired = s.expire(t0 + Duration::from_secs(6));
        assert!(matches!(&expired[..], [Expired::Failed { reason: FailReason::QueueTimeout, attempts: 1, .. }]));
        assert_eq!(s.queued_len(), 0);
        assert_eq!(s.counters().failed, 2);
        // The ids are free again.
        s.submit("g", task("lonely"), t0).unwrap();
    }
}
