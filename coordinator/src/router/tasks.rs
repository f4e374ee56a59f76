//! Tasks: a gamer's request checked and queued (or copied to a replicated session's
//! replicas), a peer's answer delivered (or handed to the replicas' vote), assignments
//! sent, deadlines passed, and tasks given up answered.
//!
//! A replicated answer's digest is computed before the state lock is taken
//! ([`Router::answer_digest`]): the lock is held only to look the assignment up.

use std::time::{Duration, Instant};

use p2c2r_protocol::{ErrorCode, Message, TaskError, TaskRequest, TaskResult, inspect::ResultKind, limits, to_payload};
use tracing::debug;

use super::answers::{failure_message, send_answers};
use super::frames::{check_id, too_large_for_json};
use super::limits::Cost;
use super::registry::Role;
use super::standing::MISSED_DEADLINES;
use super::{ConnId, EXPIRE_BATCH, Router, State};
use crate::copy_id::CopyId;
use crate::outbound::{AssignmentFrame, Outbound, OutboundTx};
use crate::replication::{self, AnswerDigest, CopyOutcome};
use crate::scheduler::{Answer, CompleteError, Completion, Dispatch, Expired, Failure, Submission, SubmitError};

impl Router {
    /// `snapshot`: the request is a physics snapshot (read before the lock).
    pub(super) fn submit(&self, state: &mut State, conn: ConnId, gamer_id: &str, mut m: TaskRequest, snapshot: bool) {
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
            return state.registry.send_error(conn, ErrorCode::InvalidMessage, reason, Some(m.task_id));
        }
        if let Some(reason) = too_large_for_json(&m.task_data, self.config.connections.max_frame_bytes) {
            return state.registry.send_error(conn, ErrorCode::LimitExceeded, reason, Some(m.task_id));
        }
        // The scheduler's name for it (moved, not copied: this runs for every tick).
        let session = m.session_id.take().map(CopyId::plain);
        // A replicated session stays known while its replicas change.
        let new_session = session
            .as_ref()
            .is_some_and(|s| !state.sched.has_session(gamer_id, s) && !state.replicas.is_replicated(gamer_id, &s.id));
        let cost = Cost { bytes: m.task_data.len(), new_session };
        if let Some(reason) = state.limits.charge(gamer_id, cost, Instant::now()) {
            return state.registry.send_error(conn, ErrorCode::RateLimited, reason, Some(m.task_id));
        }
        let deadline = m.deadline_ms.map_or(self.config.scheduling.default_task_deadline, Duration::from_millis);
        let task_id = m.task_id.clone();
        if m.task_type == p2c2r_protocol::task_types::PHYSICS_STEP_FULL {
            let reason = "physics_step_full is sent by the coordinator only (to correct a replicated session)";
            return state.registry.send_error(conn, ErrorCode::InvalidMessage, reason, Some(m.task_id));
        }
        if let Some(session) = &session
            && m.task_type != p2c2r_protocol::task_types::PHYSICS_STEP
            && state.replicas.is_replicated(gamer_id, &session.id)
        {
            // It would reach one replica's world only, and set it apart from the others.
            let reason = format!("session {:?} is a replicated physics session: only physics_step tasks", session.id);
            return state.registry.send_error(conn, ErrorCode::InvalidMessage, reason, Some(m.task_id));
        }
        if let Some(session) = &session
            && m.task_type == p2c2r_protocol::task_types::PHYSICS_STEP
            && state.replicated(gamer_id, session)
        {
            let result = state.submit_replicated(gamer_id, &session.id, m, deadline, snapshot);
            return self.submitted(state, conn, gamer_id, task_id, result);
        }
        let submission = Submission {
            task_id: CopyId::plain(m.task_id),
            task_type: m.task_type,
            session_id: session,
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
                state.registry.send_error(conn, code, e.to_string(), Some(task_id));
            }
        }
    }

    /// The digest of a successful answer from a peer to a copy of a replicated tick,
    /// computed with no lock held (hashing a large answer must not stall everyone else);
    /// `None` for any other frame. The lock is held only to look the assignment up: what
    /// changes before the answer is handled (the copy expired, the session ended) is
    /// judged then, as for any answer.
    pub(super) fn answer_digest(
        &self,
        conn: ConnId,
        message: &Message,
        kind: Option<ResultKind>,
    ) -> Option<AnswerDigest> {
        let Message::TaskResult(m) = message else { return None };
        if kind != Some(ResultKind::Success) || !self.replicated.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let replicated = {
            let state = self.lock();
            let peer = match state.registry.role(conn) {
                Some(Role::Peer(peer)) => peer,
                _ => return None,
            };
            let task = state.sched.assigned_to(peer, &m.task_id);
            task.is_some_and(|t| t.session_id.as_ref().is_some_and(|s| state.replicas.is_replicated(&t.gamer, &s.id)))
        };
        replicated.then(|| replication::answer_digest(&m.result))
    }

    pub(super) fn complete(
        &self,
        state: &mut State,
        conn: ConnId,
        peer_id: &str,
        mut m: TaskResult,
        mut kind: ResultKind,
        mut digest: Option<AnswerDigest>,
    ) {
        let refused_here = too_large_for_json(&m.result, self.config.connections.max_frame_bytes).map(|reason| {
            // The gamer may speak JSON: answer with the error instead (its decoder did not
            // see this result, so it resyncs).
            let error = TaskError::new(ErrorCode::LimitExceeded, format!("the peer's result was refused: {reason}"));
            m.result = to_payload(&error.with_resync()).expect("task errors always serialize");
            kind = ResultKind::Error { resync: true, over_budget: true };
            digest = None;
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
                if session_id.as_ref().is_some_and(|s| state.replicas.is_replicated(&gamer, &s.id)) =>
            {
                let now = Instant::now();
                state.metrics.peer_task_duration.observe(now.saturating_duration_since(assigned_at).as_secs_f64());
                let session = session_id.expect("checked above");
                // Normally hashed before the lock; a session that became replicated in
                // between is hashed here (it cannot be: a session is replicated from its
                // first tick, but a missing digest must never read as an agreement).
                let digest = match (kind == ResultKind::Success, digest) {
                    (true, Some(digest)) => Some(digest),
                    (true, None) => Some(replication::answer_digest(&m.result)),
                    (false, _) => None,
                };
                // Where replicas must be on distinct hosts, a host is one vote however many
                // peers it runs.
                let voter = match self.config.replication.replicas_on_distinct_hosts {
                    true => state
                        .registry
                        .addr(conn)
                        .map_or_else(|| peer_id.to_owned(), |addr| self.network_of(addr.ip()).to_string()),
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
                        replication::vote_weight(&standing, established, agreed, crate::reputation::now_ms())
                    }),
                };
                state.copy_outcome(&gamer, &session.id, &task_id, outcome, Some(submitted_at));
                state.take_quarantined_liars(self.config.reputation.quarantine_duration);
            }
            Ok(Completion::Deliver { gamer, task_id, attempt, submitted_at, assigned_at, .. }) => {
                debug!(peer_id, gamer_id = gamer, %task_id, attempt, "result delivered");
                let task_id = task_id.id;
                let now = Instant::now();
                state.metrics.peer_task_duration.observe(now.saturating_duration_since(assigned_at).as_secs_f64());
                let latency = now.saturating_duration_since(submitted_at);
                state.metrics.task_latency.observe(latency.as_secs_f64());
                state.latencies.record(latency);
                let forward =
                    TaskResult { task_id, result: m.result, attempt: Some(attempt), peer_id: Some(peer_id.to_owned()) };
                match state.registry.gamers.get(&gamer).copied() {
                    Some(gamer_conn) => state.registry.send(gamer_conn, Message::TaskResult(forward)),
                    None => {
                        let task_id = forward.task_id.clone();
                        state.delivery.keep(&gamer, &task_id, Outbound::message(Message::TaskResult(forward)));
                    }
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
                        state.registry.send_error(conn, ErrorCode::UnknownTask, e.to_string(), refers_to)
                    }
                }
            }
        }
        // This answer may have confirmed a miss that completes another peer's streak: that
        // peer is quarantined now, not at the next passed deadline (there may be none).
        state.quarantine_missers(self.config.reputation.quarantine_duration, Instant::now());
        state.dispatch(Instant::now());
    }

    /// When the next task deadline passes: what the deadline timer sleeps until (a lock
    /// hold that leaves an earlier one wakes it).
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut state = self.lock();
        state.timer_at = state.sched.next_deadline();
        state.timer_at
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
                    debug!(%task_id, peer_id = peer, attempt, "task deadline passed; re-dispatching");
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
            state.quarantine_peer(&peer_id, now + self.config.reputation.quarantine_duration, MISSED_DEADLINES);
        }
        state.take_quarantined_liars(self.config.reputation.quarantine_duration);
        let answers = state.answers_for(failures);
        state.dispatch(now);
        let more = state.sched.next_deadline().is_some_and(|at| at <= now);
        self.release(state);
        // The answers are built and queued outside the lock.
        send_answers(answers);
        more
    }
}

impl State {
    /// Assigns what can be assigned now and sends the assignments; answers the tasks the
    /// scheduler gave up.
    pub(super) fn dispatch(&mut self, now: Instant) -> Vec<Dispatch> {
        let dispatches = self.sched.dispatch(now);
        for d in &dispatches {
            let Some(task) = self.sched.task(d.key) else { continue };
            debug!(
                peer_id = d.peer,
                gamer_id = task.gamer,
                task_id = %task.task_id,
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
                task_id: task.task_id.id.clone(),
                task_type: task.task_type.clone(),
                session_id: task.session_id.as_ref().map(|s| s.id.clone()),
                // Peers see an opaque alias: a gamer id would let a peer's owner learn
                // whom it serves.
                gamer_id: self.registry.ids.alias(&task.gamer),
                payload: task.payload.clone(),
            }));
            // Exempt from the queue's bounds: the scheduler keeps what is in flight at a
            // peer within half of them, in tasks and in bytes, so assignments can never
            // make an honest peer look like a slow reader (the write-stall timeout still
            // catches one that stops reading).
            if let Some(&conn) = self.registry.peers.get(&d.peer) {
                self.registry.send_exempt(conn, frame);
            }
        }
        let failures = self.sched.take_failures();
        send_answers(self.answers_for(failures));
        dispatches
    }

    /// Pairs each failure with its gamer's outbound queue; a gamer that may resume gets
    /// its answers kept, one that left gets none; a replicated copy's goes to the vote.
    pub(super) fn answers_for(&mut self, failures: Vec<Failure>) -> Vec<(OutboundTx, Failure)> {
        let mut live = Vec::new();
        for f in failures {
            if f.session_id.as_ref().is_some_and(|s| self.replicas.is_replicated(&f.gamer, &s.id)) {
                self.replicated_failure(f);
                continue;
            }
            match self.registry.gamer_tx(&f.gamer) {
                Some(tx) => live.push((tx.clone(), f)),
                None if self.delivery.contains(&f.gamer) => {
                    let (gamer, task_id) = (f.gamer.clone(), f.task_id.id.clone());
                    self.delivery.keep(&gamer, &task_id, Outbound::message(failure_message(f)));
                }
                None => {}
            }
        }
        live
    }
}
