//! What becomes of each copy of a replicated tick (see [`crate::replication`]): the
//! answer delivered, disagreements counted, liars found, ties and confirmations sent to a
//! replica that replays the log, disputes nothing can settle recorded, and the gamer told
//! how its session is replicated.

use std::time::Instant;

use p2c2r_protocol::{ErrorCode, Message, SessionStatus, TaskResult};

use super::State;
use super::answers::{failure_message, replica_error};
use super::replicas::REPLICA_TASK_TYPE;
use super::standing::{DISPUTED, OUTVOTED};
use crate::copy_id::CopyId;
use crate::disputes::Party;
use crate::outbound::Outbound;
use crate::replication::{CopyOutcome, Decision, Delivery};
use crate::scheduler::Failure;

impl State {
    /// A replicated copy given up by the scheduler.
    pub(super) fn replicated_failure(&mut self, failure: Failure) {
        let Some(session) = failure.session_id.clone() else { return };
        let (gamer, copy) = (failure.gamer.clone(), failure.task_id.clone());
        let Some(entry) = self.replicas.group_mut(&gamer, &session.id) else { return };
        let decision = entry.group.outcome(&copy.id, copy.replica, CopyOutcome::GivenUp);
        self.apply_decision(&gamer, &session.id, &copy.id, decision, None, Some(failure));
    }

    /// What became of one copy of a tick of the gamer's session `session`.
    pub(super) fn copy_outcome(
        &mut self,
        gamer: &str,
        session: &str,
        copy: &CopyId,
        outcome: CopyOutcome,
        submitted_at: Option<Instant>,
    ) {
        let Some(entry) = self.replicas.group_mut(gamer, session) else { return };
        let answered = matches!(outcome, CopyOutcome::Answer { .. });
        let decision = entry.group.outcome(&copy.id, copy.replica, outcome);
        if answered && decision.deliver.is_none() {
            // The scheduler counted the answer as delivered; only one copy per tick is.
            self.sched.uncount_completion(gamer);
        }
        self.apply_decision(gamer, session, &copy.id, decision, submitted_at, None);
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
        let counters = &mut self.replicas.counters;
        if decision.compared {
            counters.ticks_compared += 1;
        }
        if decision.disagreement {
            counters.disagreements += 1;
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
                    Some(f) => failure_message(Failure { task_id: CopyId::plain(task_id), ..f }),
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
        self.standing.liars.extend(decision.liars.into_iter().map(|peer| (peer, OUTVOTED)));
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
        let Some(entry) = self.replicas.group_mut(gamer, session) else { return };
        let (setup, live) = (entry.group.setup(), entry.group.live().len());
        let capacity = setup.map_or(0, |s| self.sched.replica_capacity_of(REPLICA_TASK_TYPE, s));
        if capacity > live
            && let Some(generation) = entry.group.start_tie_breaker()
        {
            self.replicas.counters.started += 1;
            self.relink(gamer, session);
            self.replay_into(gamer, session, generation, Instant::now());
            return;
        }
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
        self.replicas.counters.unsettled += 1;
        crate::warn_limited!(
            "router: dispute unsettled",
            gamer_id = gamer,
            session,
            "replicas disagree and nothing can settle it: the disputing peers are kept apart, the session restarts \
             at its next snapshot and only answers two replicas agree on are delivered until they agree again"
        );
        let quarantine = self.sched.disputes_mut().unsettled(disputants, Instant::now());
        self.replicas.counters.dispute_quarantines += quarantine.len() as u64;
        self.standing.liars.extend(quarantine.into_iter().map(|peer| (peer, DISPUTED)));
    }

    /// Sends a frame for a gamer's task: to its connection, or kept while it may resume.
    fn deliver(&mut self, gamer: &str, task_id: &str, frame: Outbound) {
        match self.registry.gamers.get(gamer).copied() {
            Some(conn) => self.registry.send_frame(conn, frame),
            None => self.delivery.keep(gamer, task_id, frame),
        }
    }

    /// Tells the gamer how its session is replicated, when that changed.
    pub(super) fn tell_status(&mut self, gamer: &str, session: &str) {
        let strict = self.replicas.config.strict_replication;
        let conn = self.registry.gamers.get(gamer).copied();
        let Some(entry) = self.replicas.group_mut(gamer, session) else { return };
        // Built for every tick and copy: the session id (an allocation) is added only
        // when it is sent.
        let status = SessionStatus {
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
            let status = SessionStatus { session_id: session.to_owned(), ..status };
            self.registry.send(conn, Message::SessionStatus(status));
        }
    }
}
