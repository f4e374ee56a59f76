//! Replicated and audited sessions, the router's side (see [`crate::replication`] for the
//! pure bookkeeping): which sessions are replicated, the copies of each tick, and the
//! replicas that start (from a snapshot or by replaying the log), are relinked and retire.
//! What becomes of each copy's answer is [`super::verdicts`].
//!
//! Invariants: `log_bytes` is the sum of every group's log bytes, and never more than
//! `max_log_bytes` once a change is accounted (the largest log goes first); a gamer has
//! at most `max_groups_per_gamer` groups.
//!
//! A replica started by replaying the log gets its copies [`REPLAY_BATCH`] at a time: the
//! first batch at once, the rest in lock holds of their own ([`State::continue_replays`],
//! run by the coordinator's replay worker), so a replay of a long log never holds the lock
//! for its whole length, nor delays the frame that started it. While a replica has copies waiting, the live ticks'
//! copies for it wait behind them (its backlog), so it sees every request in order.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use p2c2r_protocol::{Payload, SessionStatus, TaskRequest};

use super::State;
use crate::Config;
use crate::config::Replication;
use crate::copy_id::CopyId;
use crate::replication::{self, Group, Logged};
use crate::scheduler::{Submission, SubmitError};

/// What a peer must run to hold a replica: the correction step as well (P2C2R peers run
/// both; a peer restricted to `physics_step` alone would lose its replica at the first
/// correction).
pub(super) const REPLICA_TASK_TYPE: &str = p2c2r_protocol::task_types::PHYSICS_STEP_FULL;

/// Copies a replica gets per lock hold while it replays the log.
pub(super) const REPLAY_BATCH: usize = 64;

/// A replicated session and what its gamer was last told about it.
pub(super) struct GroupEntry {
    pub(super) group: Group,
    pub(super) told: Option<SessionStatus>,
    /// Per replica replaying the log: the ticks whose copies it still waits for, in order
    /// (each counted as owed from the moment it waits: a logged tick's in `replay_into`, a
    /// live tick's when the tick is submitted).
    backlogs: HashMap<u32, VecDeque<Logged>>,
}

impl GroupEntry {
    /// The task ids a replica still waits for, in order.
    #[cfg(test)]
    pub(super) fn backlog(&self, generation: u32) -> Vec<String> {
        self.backlogs.get(&generation).map_or_else(Vec::new, |q| q.iter().map(|t| t.task_id.clone()).collect())
    }
}

/// Counters since start, for `stats_report` and the metrics.
#[derive(Default)]
pub(super) struct ReplicaCounters {
    pub(super) ticks_compared: u64,
    pub(super) disagreements: u64,
    pub(super) liars: u64,
    pub(super) corrections: u64,
    pub(super) started: u64,
    pub(super) unsettled: u64,
    pub(super) dispute_quarantines: u64,
    /// Unreplicated physics sessions started, and of those the audited ones.
    pub(super) unreplicated_started: u64,
    pub(super) audited: u64,
}

/// Every replicated or audited session, by gamer and session.
pub(super) struct Replicas {
    groups: HashMap<String, HashMap<String, GroupEntry>>,
    pub(super) config: Replication,
    /// Payload bytes all groups' logs hold, and the most allowed.
    log_bytes: usize,
    max_log_bytes: usize,
    /// Drawn at start: which sessions are audited cannot be predicted from their ids.
    audit_salt: u64,
    pub(super) counters: ReplicaCounters,
    /// Groups one gamer may have (its `max_sessions_per_gamer`).
    max_groups_per_gamer: usize,
    /// Groups with a replica replaying (a backlog), oldest first; some may be done or gone.
    replaying: VecDeque<(String, String)>,
}

impl Replicas {
    pub(super) fn new(config: &Config) -> Self {
        Replicas {
            groups: HashMap::new(),
            config: config.replication.clone(),
            log_bytes: 0,
            max_log_bytes: config.replication.max_replica_log_bytes,
            audit_salt: fastrand::u64(..),
            counters: ReplicaCounters::default(),
            // Each group takes a scheduler session per replica (and one while a
            // replacement or tie-breaker starts).
            replaying: VecDeque::new(),
            max_groups_per_gamer: (config.scheduling.max_sessions_per_gamer
                / (usize::from(config.replication.replicas.max(2)) + 1))
                .max(1),
        }
    }

    /// The group of a gamer's session (the gamer's id for it).
    pub(super) fn group_mut(&mut self, gamer: &str, session: &str) -> Option<&mut GroupEntry> {
        self.groups.get_mut(gamer)?.get_mut(session)
    }

    /// Whether a gamer's session (the gamer's id for it) is replicated.
    pub(super) fn is_replicated(&self, gamer: &str, session: &str) -> bool {
        self.groups.get(gamer).is_some_and(|g| g.contains_key(session))
    }

    /// Whether any session is replicated or audited now.
    pub(super) fn any(&self) -> bool {
        !self.groups.is_empty()
    }

    /// Whether some replica may still have copies waiting ([`State::continue_replays`]).
    pub(super) fn replays_pending(&self) -> bool {
        !self.replaying.is_empty()
    }

    fn has_backlog(&mut self, gamer: &str, session: &str) -> bool {
        self.group_mut(gamer, session).is_some_and(|e| e.backlogs.values().any(|q| !q.is_empty()))
    }

    /// Forgets a gamer's groups and their logs.
    pub(super) fn forget_gamer(&mut self, gamer: &str) {
        if let Some(groups) = self.groups.remove(gamer) {
            let freed: usize = groups.values().map(|e| e.group.log_bytes()).sum();
            self.log_bytes = self.log_bytes.saturating_sub(freed);
        }
    }

    /// The audit fraction configured, and the one achieved since start (audited over
    /// unreplicated physics sessions started; 0 before any started).
    pub(super) fn audit_fractions(&self) -> (f64, f64) {
        let c = &self.counters;
        let achieved = if c.unreplicated_started == 0 { 0.0 } else { c.audited as f64 / c.unreplicated_started as f64 };
        (self.config.audit_fraction, achieved)
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
}

impl State {
    /// Whether a gamer's physics session is replicated or audited: decided when its first
    /// physics tick arrives (a session already running on one peer stays so).
    /// `copy`: the session as the scheduler names it (replica 0).
    pub(super) fn replicated(&mut self, gamer: &str, copy: &CopyId) -> bool {
        let session = copy.id.as_str();
        if self.replicas.is_replicated(gamer, session) {
            return true;
        }
        // A session already running on one peer stays so (and its ticks cost no draw).
        if self.sched.has_session(gamer, copy) {
            return false;
        }
        let class = self.sched.largest_setup_class(REPLICA_TASK_TYPE);
        let replicas = &mut self.replicas;
        let c = &replicas.config;
        let (wanted, audited) = if c.strict_replication {
            (c.replicas.max(2), false)
        } else if c.replicas > 1 {
            (c.replicas, false)
        } else {
            replicas.counters.unreplicated_started += 1;
            // Audited only where a second compatible peer is there to audit (the achieved
            // fraction is reported beside the configured one).
            if replication::audited(gamer, session, c.audit_fraction, replicas.audit_salt)
                && class.is_some_and(|(_, capacity)| capacity >= 2)
            {
                (2, true)
            } else {
                return false;
            }
        };
        let strict = c.strict_replication;
        let max_groups = replicas.max_groups_per_gamer;
        let groups = replicas.groups.entry(gamer.to_owned()).or_default();
        if groups.len() >= max_groups {
            // Groups whose sessions the scheduler forgot (idle, evicted) go first.
            let sched = &self.sched;
            let mut freed = 0;
            groups.retain(|s, e| {
                let alive = e.group.live().iter().any(|g| sched.has_session(gamer, &CopyId::replica(s.as_str(), *g)));
                if !alive {
                    freed += e.group.log_bytes();
                }
                alive
            });
            replicas.log_bytes = replicas.log_bytes.saturating_sub(freed);
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
            replicas.counters.audited += 1;
        }
        let group = Group::new(wanted, audited, strict, class.map(|(setup, _)| setup));
        groups.insert(session.to_owned(), GroupEntry { group, told: None, backlogs: HashMap::new() });
        true
    }

    /// Submits one copy of a physics tick per live replica, starting replicas first
    /// where some are missing, and logs the tick.
    pub(super) fn submit_replicated(
        &mut self,
        gamer: &str,
        session: &str,
        m: TaskRequest,
        deadline: Duration,
        snapshot: bool,
    ) -> Result<(), SubmitError> {
        let now = Instant::now();
        if self.replicas.group_mut(gamer, session).is_some_and(|e| e.group.tracks(&m.task_id)) {
            // Its answers are still compared with the first request's under this id.
            return Err(SubmitError::DuplicateTask(CopyId::plain(m.task_id)));
        }
        self.fill_replicas(gamer, session, snapshot, now);
        let Some(entry) = self.replicas.group_mut(gamer, session) else { return Err(SubmitError::UnknownGamer) };
        let full = !snapshot && entry.group.take_correction();
        let task_type = if full { p2c2r_protocol::task_types::PHYSICS_STEP_FULL.to_owned() } else { m.task_type };
        let live = entry.group.live().to_vec();
        let setup = entry.group.setup();
        let mut submitted = 0;
        let mut refused = Vec::new();
        let mut first_error = None;
        let tick = Logged { task_id: m.task_id, task_type, deadline, payload: m.task_data };
        for &generation in &live {
            // A replica still replaying gets it after the log.
            if let Some(backlog) = entry.backlogs.get_mut(&generation).filter(|q| !q.is_empty()) {
                backlog.push_back(tick.clone());
                submitted += 1;
                continue;
            }
            let copy = copy_of(session, &live, generation, &tick, setup);
            match self.sched.submit(gamer, copy, now) {
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
            self.replicas.counters.corrections += 1;
            crate::info_limited!("router: session corrected", gamer_id = gamer, session, "full-state tick sent");
        }
        let replicas = &mut self.replicas;
        let config = replicas.config.clone();
        let entry = replicas.group_mut(gamer, session).expect("looked up above");
        let change = entry.group.submitted(tick, snapshot, submitted, &config);
        replicas.account_log(change);
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
            let Some(entry) = self.replicas.group_mut(gamer, session) else { return };
            if !entry.group.short() {
                return;
            }
            let empty = entry.group.live().is_empty();
            let live = entry.group.live().len();
            if entry.group.setup().is_none() {
                // Its first tick came before any peer declaring a setup: take the largest
                // class now there is one.
                entry.group.settle_setup(self.sched.largest_setup_class(REPLICA_TASK_TYPE).map(|(setup, _)| setup));
            }
            let capacity = match entry.group.setup() {
                Some(setup) => self.sched.replica_capacity_of(REPLICA_TASK_TYPE, setup),
                None => usize::from(empty),
            };
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
                self.replicas.counters.started += 1;
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
    pub(super) fn relink(&mut self, gamer: &str, session: &str) {
        let Some(entry) = self.replicas.group_mut(gamer, session) else { return };
        let live = entry.group.live().to_vec();
        for &generation in &live {
            let key = CopyId::replica(session, generation);
            self.sched.set_siblings(gamer, &key, siblings(session, &live, generation));
        }
    }

    /// Gives a new generation the group's log to replay (its copies go before any live
    /// tick's): the first [`REPLAY_BATCH`] now, the rest in later lock holds.
    pub(super) fn replay_into(&mut self, gamer: &str, session: &str, generation: u32, now: Instant) {
        let Some(entry) = self.replicas.group_mut(gamer, session) else { return };
        let log = entry.group.log();
        crate::info_limited!(
            "router: replica started",
            gamer_id = gamer,
            session,
            generation,
            ticks = log.len(),
            "replica started from the session's log"
        );
        // Each copy is owed from now on, submitted or waiting: its tick stays tracked (and
        // logged) until the copy's outcome, however the log changes meanwhile.
        for tick in &log {
            entry.group.replaying(&tick.task_id, 1);
        }
        let backlog = entry.backlogs.entry(generation).or_default();
        backlog.extend(log);
        self.replicas.replaying.push_back((gamer.to_owned(), session.to_owned()));
        self.submit_backlog(gamer, session, REPLAY_BATCH, now);
    }

    /// Submits up to `budget` copies waiting in a group's backlogs, lowest replica first.
    /// Returns how many were submitted or given up.
    fn submit_backlog(&mut self, gamer: &str, session: &str, budget: usize, now: Instant) -> usize {
        let mut done = 0;
        while done < budget {
            let Some(entry) = self.replicas.group_mut(gamer, session) else { return done };
            let (live, setup) = (entry.group.live().to_vec(), entry.group.setup());
            let waiting = entry.backlogs.iter_mut().filter(|(_, q)| !q.is_empty()).min_by_key(|(g, _)| **g);
            let Some((&generation, queue)) = waiting else {
                entry.backlogs.clear();
                return done;
            };
            let next = queue.pop_front().expect("not empty");
            done += 1;
            let copy = copy_of(session, &live, generation, &next, setup);
            if self.sched.submit(gamer, copy, now).is_err() {
                // No room for the replay: give the replica up (a later tick tries again).
                // The copy taken out above is cancelled with the others still waiting.
                if let Some(entry) = self.replicas.group_mut(gamer, session) {
                    entry.backlogs.entry(generation).or_default().push_front(next);
                }
                self.retire_generation(gamer, session, generation);
                continue;
            }
        }
        done
    }

    /// Submits up to `budget` more waiting copies of replicas replaying the log, oldest
    /// replay first. Returns whether any may still wait (call again, in a new lock hold).
    pub(super) fn continue_replays(&mut self, budget: usize, now: Instant) -> bool {
        let mut left = budget;
        while left > 0 {
            let Some((gamer, session)) = self.replicas.replaying.front().cloned() else { return false };
            if self.replicas.has_backlog(&gamer, &session) {
                left = left.saturating_sub(self.submit_backlog(&gamer, &session, left, now));
            }
            if !self.replicas.has_backlog(&gamer, &session) {
                self.replicas.replaying.retain(|(g, s)| (g, s) != (&gamer, &session));
            }
        }
        self.replicas.replays_pending()
    }

    /// Retires a replica: its copies are dropped (each counted as cancelled for its tick).
    pub(super) fn retire_generation(&mut self, gamer: &str, session: &str, generation: u32) {
        let Some(entry) = self.replicas.group_mut(gamer, session) else { return };
        if !entry.group.live().contains(&generation) {
            return;
        }
        entry.group.retire(generation);
        let backlog = entry.backlogs.remove(&generation).unwrap_or_default();
        self.relink(gamer, session);
        let dropped = self.sched.cancel_session(gamer, &CopyId::replica(session, generation));
        // Copies still waiting in its backlog were counted out: cancelled too.
        let waiting = backlog.into_iter().map(|tick| CopyId::replica(tick.task_id, generation));
        for copy in dropped.into_iter().chain(waiting.collect::<Vec<_>>()) {
            self.copy_outcome(gamer, session, &copy, replication::CopyOutcome::Cancelled, None);
        }
        self.tell_status(gamer, session);
    }

    /// Retires every replica a peer holds (it is leaving or quarantined): the other
    /// replicas go on, and the next tick starts a replacement.
    pub(super) fn retire_replicas_on(&mut self, peer: &str) {
        for (gamer, copy) in self.sched.sessions_on(peer) {
            let live =
                self.replicas.group_mut(&gamer, &copy.id).is_some_and(|e| e.group.live().contains(&copy.replica));
            if live {
                self.retire_generation(&gamer, &copy.id, copy.replica);
            }
        }
    }
}

/// Replica `generation`'s copy of a tick.
fn copy_of(session: &str, live: &[u32], generation: u32, tick: &Logged, setup: Option<u64>) -> Submission<Payload> {
    Submission {
        task_id: CopyId::replica(tick.task_id.as_str(), generation),
        task_type: tick.task_type.clone(),
        session_id: Some(CopyId::replica(session, generation)),
        deadline: tick.deadline,
        bytes: tick.payload.len(),
        payload: tick.payload.clone(),
        siblings: siblings(session, live, generation),
        setup,
    }
}

/// The scheduler sessions of a replica's siblings.
fn siblings(session: &str, live: &[u32], generation: u32) -> Vec<CopyId> {
    live.iter().filter(|g| **g != generation).map(|g| CopyId::replica(session, *g)).collect()
}
