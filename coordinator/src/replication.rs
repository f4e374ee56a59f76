//! Replicated and audited sessions: what the router does with the copies of a tick.
//!
//! A replicated physics session runs on several peers at once (its *replicas*; see
//! `Replication::replicas`), and a sampled fraction of the others (`Replication::audit_fraction`)
//! runs on a second, hidden one. Every replica gets the same requests in the same
//! order, so honest replicas with the same determinism setup answer with the same
//! bytes. This module is the pure bookkeeping: which copies of a tick are out, which
//! answer to deliver, whose answers disagree, who is outvoted, when a replica must be
//! replaced and what it must replay. The router turns its decisions into scheduler
//! calls and frames.
//!
//! - **Copies.** Replica `gen` of session `s` is the scheduler session
//!   `CopyId::replica(s, gen)` and its copy of task `t` is `CopyId::replica(t, gen)` (see
//!   [`crate::copy_id`]); replica 0 is the plain ids, so an unreplicated session is
//!   untouched.
//! - **Delivery.** The gamer gets the first successful answer at once; in strict mode
//!   only an answer two replicas agree on. An error is delivered only when no copy
//!   succeeded (a dead replica's `resync` is not the session's).
//! - **Votes.** Answers are compared by the SHA-256 of their bytes (which hold the
//!   state digest, so the whole world is compared, not only what moved). An answer
//!   outvoted by at least two replicas that agree, with more weighted voters, and
//!   confirmed by a replica that re-ran the tick (a new one replaying the session's log)
//!   is a lie: its peer is quarantined and the gamer's copy is corrected (the next tick
//!   runs as `physics_step_full` on every replica). A tie (one against one) is settled
//!   the same way, by a new replica replaying the log.
//! - **Disputes that end.** When nothing can settle a dispute (no re-run possible, or
//!   the re-run agreed with neither side), nobody is quarantined for it: every replica
//!   is retired, the disputing peers are kept apart from then on (see
//!   [`crate::disputes`]), and the session *holds delivery*: only answers two replicas
//!   agree on reach the gamer (others are answered `unverified`, with resync) until a
//!   tick is agreed again.
//! - **The log.** The session's requests since its last snapshot request, bounded in
//!   ticks and bytes. A replica started later replays it (a snapshot alone would not
//!   carry the engine's contact and sleep state, and its answers would drift from the
//!   others'). Past the bounds the log is dropped until the next snapshot: replicas are
//!   then started only at a snapshot.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::config::Replication;
use crate::disputes::Party;
use p2c2r_protocol::Payload;
use p2c2r_protocol::inspect::ResultKind;
use sha2::{Digest as _, Sha256};

/// Most replicas a session may be configured with.
pub const MAX_REPLICAS: u8 = 5;

/// The SHA-256 of an answer's bytes (a binary payload's own bytes, whatever the
/// connection it came on).
pub type AnswerDigest = [u8; 32];

/// The digest replicas' answers are compared by.
pub fn answer_digest(payload: &Payload) -> AnswerDigest {
    let mut hasher = Sha256::new();
    match payload.binary_bytes() {
        Some(bytes) => hasher.update(&bytes),
        None => hasher.update(payload.json().unwrap_or_default().as_bytes()),
    }
    hasher.finalize().into()
}

/// Agreements on compared ticks (with another network's peer) at which a vote's weight
/// for verified work steps up: to 2, 3 and 4. At 60 ticks a second, about 17 s, 3 min and
/// 28 min of one session compared.
pub const WEIGHT_AGREEMENTS: [u64; 3] = [1_000, 10_000, 100_000];

/// Ages of a peer id's standing at which its vote's weight for age steps up: an hour, a
/// day, a week (kept across restarts and departures of up to a day, see
/// `reputation::MAX_STANDING_AGE`).
pub const WEIGHT_AGES: [Duration; 3] =
    [Duration::from_secs(3600), Duration::from_secs(24 * 3600), Duration::from_secs(7 * 24 * 3600)];

/// A voter's weight: 0 unless `established` (enough successful answers) and `agreed_lately`
/// (its answers matched another network's on a compared tick within the dispute memory);
/// then 1, plus a step for each of [`WEIGHT_AGREEMENTS`] and [`WEIGHT_AGES`] it has passed
/// *both* of: weight takes verified work and time together, so neither a burst of work by
/// a new peer nor an old idle id buys it. At most 4: one old, busy honest peer outweighs
/// three colluders fresh from establishing themselves.
pub fn vote_weight(standing: &crate::scheduler::Standing, established: bool, agreed_lately: bool, now_ms: u64) -> u32 {
    if !established || !agreed_lately {
        return 0;
    }
    let work = WEIGHT_AGREEMENTS.iter().filter(|&&a| standing.agreements >= a).count();
    let age_ms = if standing.since_ms == 0 { 0 } else { now_ms.saturating_sub(standing.since_ms) };
    let age = WEIGHT_AGES.iter().filter(|a| u128::from(age_ms) >= a.as_millis()).count();
    1 + work.min(age) as u32
}

/// What became of one copy.
#[derive(Debug)]
pub enum CopyOutcome {
    /// The peer answered (its digest computed by the caller for successes).
    Answer {
        /// The peer that answered.
        peer: String,
        /// Who its vote counts as: its host (see `admission::address_key`) where replicas
        /// must be on distinct hosts, so many peers on one machine are one vote; else the
        /// peer.
        voter: String,
        /// The answer.
        payload: Payload,
        /// Its status.
        kind: ResultKind,
        /// Its digest (successes only).
        digest: Option<AnswerDigest>,
        /// The attempt that answered.
        attempt: u32,
        /// The peer's vote weight ([`vote_weight`]): 0 unless established (see
        /// `Reputation::established_after_answers`) and its work verified lately (it agreed
        /// with another network's peer on a compared tick, see
        /// [`crate::disputes::Disputes::has_agreed`]), then growing with its verified work
        /// and its age. Only weighted voters outvote anyone, so peers fresh from
        /// registering, or whose successes nobody checked, cannot buy a majority, and
        /// young ones need several times their number against an old one.
        weight: u32,
    },
    /// The scheduler gave it up (the caller holds the failure to deliver if needed).
    GivenUp,
    /// The replica was retired and its copies dropped.
    Cancelled,
}

/// What the router must do after a copy's outcome.
#[derive(Debug, Default)]
pub struct Decision {
    /// Deliver this answer to the gamer now.
    pub deliver: Option<Delivery>,
    /// Peers proven to have answered wrongly: quarantine them.
    pub liars: Vec<String>,
    /// Generations to retire (cancel their copies) and replace.
    pub retire: Vec<u32>,
    /// Start a replica replaying the log to settle a tie.
    pub tie_break: bool,
    /// The replicas' answers to this tick differed (first time noticed).
    pub disagreement: bool,
    /// This tick now has two successful answers to compare (first time).
    pub compared: bool,
    /// Replicas disagreed and nothing can settle it (no log to replay): every replica
    /// was retired, so the session restarts from the gamer's next snapshot.
    pub unsettled: bool,
    /// A majority formed that no re-run has confirmed: start a replica replaying the log
    /// (a tie-breaker); where none can start, the dispute is unsettled
    /// ([`Group::unsettle`]).
    pub confirm: bool,
    /// The parties of each answer, where the tick is disputed and the router may need to
    /// record it as unsettled (`unsettled`, `tie_break`, `confirm`).
    pub disputants: Vec<Vec<Party>>,
    /// Replicas agreed on a tick (noted once per set of replicas, for the disputes
    /// record): their parties.
    pub agreed: Vec<Party>,
    /// Every copy of this tick agreed, from two or more voters: the parties, whose
    /// verified work this is (counted per tick, see [`vote_weight`]).
    pub agreed_tick: Vec<Party>,
}

/// An answer for the gamer.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A peer's answer.
    Answer {
        /// The answer.
        payload: Payload,
        /// The peer it came from.
        peer: String,
        /// Its attempt.
        attempt: u32,
    },
    /// No copy succeeded and the scheduler gave the last one up: deliver its failure.
    Failure,
    /// Strict mode: the replicas' answers did not agree; tell the gamer to resync.
    Unverified,
}

/// One tick of a replicated session, while its copies are out or it is in the log.
#[derive(Debug, Default)]
struct Tick {
    /// Copies neither answered, given up nor cancelled.
    out: u32,
    delivered: bool,
    /// Distinct answers with the peers that gave each, and the first payload of each.
    votes: Vec<Vote>,
    /// The first error answer, delivered if no copy succeeds.
    first_error: Option<(Payload, String, u32)>,
    disputed: bool,
    settled: bool,
    /// In the session's log (kept until the log moves on).
    logged: bool,
    /// Generations whose copy succeeded, and those whose copy failed (an error, or given
    /// up): once every copy is in, a generation that failed while another succeeded has a
    /// world a tick behind the others and is retired.
    succeeded: Vec<u32>,
    failed: Vec<u32>,
}

#[derive(Debug)]
struct Vote {
    digest: AnswerDigest,
    /// The peers that gave this answer.
    parties: Vec<Party>,
    /// Distinct voters (hosts, or peers) that gave this answer: a majority is counted in
    /// voters.
    voters: Vec<String>,
    /// Of those, the weighted ones, each with its weight (the most any of its peers had):
    /// their sum is the answer's weight.
    weighted: Vec<(String, u32)>,
    /// The generations that gave it.
    generations: Vec<u32>,
    /// The first answer with this digest, until the tick is delivered (then only the
    /// digest is kept: a logged tick must not hold its answers' bytes).
    payload: Option<Payload>,
    attempt: u32,
}

/// A logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The gamer's task id.
    pub task_id: String,
    /// Its type.
    pub task_type: String,
    /// Its deadline per attempt.
    pub deadline: Duration,
    /// Its payload (shared).
    pub payload: Payload,
}

/// One session's replicas.
#[derive(Debug)]
pub struct Group {
    wanted: u8,
    audited: bool,
    strict: bool,
    /// Live generations, oldest first.
    live: Vec<u32>,
    /// A generation started to settle a tie, until it has voted.
    tie_breaker: Option<u32>,
    /// Live generations started to re-run a disputed tick (tie-breakers, past and
    /// present): a verdict needs one of them on the winning side.
    judges: Vec<u32>,
    next_generation: u32,
    ticks: HashMap<String, Tick>,
    /// The requests since the last snapshot, oldest first (`None`: no usable log).
    log: Option<VecDeque<Logged>>,
    log_bytes: usize,
    correction_due: bool,
    disagreements: u64,
    corrections: u64,
    /// Ticks submitted since the group started, and the first at which a replica may
    /// again be started by replaying the log (doubling after each such start, back to
    /// the minimum at a snapshot): a peer that fails every replay cannot make peers
    /// replay the log every tick.
    ticks_seen: u64,
    next_replay_at: u64,
    replay_backoff: u64,
    /// The determinism setup its replicas must have (the largest class of connected
    /// peers when it started); `None` where no peer declared one.
    setup: Option<u64>,
    /// A dispute went unsettled: only answers two replicas agree on are delivered until
    /// a tick is agreed again.
    held: bool,
    /// Ticks disputed and not yet settled: while any is, only answers two replicas agree
    /// on are delivered (a liar waiting for its verdict serves the gamer nothing).
    open_disputes: usize,
    /// Agreement was noted for the current set of replicas.
    agreement_noted: bool,
}

/// Ticks a group waits after starting a replica by replay before it may start another,
/// at first; doubled after each, up to [`MAX_REPLAY_BACKOFF`].
pub const MIN_REPLAY_BACKOFF: u64 = 60;
/// The longest wait between replays of one group's log, in ticks.
pub const MAX_REPLAY_BACKOFF: u64 = 3600;

impl Group {
    /// A group wanting `wanted` replicas; no replica is live yet.
    pub fn new(wanted: u8, audited: bool, strict: bool, setup: Option<u64>) -> Self {
        Group {
            ticks_seen: 0,
            next_replay_at: 0,
            replay_backoff: MIN_REPLAY_BACKOFF,
            setup,
            wanted: wanted.clamp(1, MAX_REPLICAS),
            audited,
            strict,
            live: Vec::new(),
            tie_breaker: None,
            judges: Vec::new(),
            next_generation: 0,
            ticks: HashMap::new(),
            log: None,
            log_bytes: 0,
            correction_due: false,
            disagreements: 0,
            corrections: 0,
            held: false,
            open_disputes: 0,
            agreement_noted: false,
        }
    }

    /// Whether delivery is held: a dispute is open, or went unsettled and replicas have
    /// not agreed since (see [`Group::unsettle`]).
    pub fn held(&self) -> bool {
        self.held || self.open_disputes > 0
    }

    /// Gives up on settling a dispute: delivery is held until replicas agree again, the
    /// gamer's next tick is a full state (it may hold the lie), and every live replica
    /// must be retired (returned).
    pub fn unsettle(&mut self) -> Vec<u32> {
        self.held = true;
        self.correction_due = !self.strict;
        self.live.clone()
    }

    /// Replicas wanted.
    pub fn wanted(&self) -> u8 {
        self.wanted
    }

    /// Live generations.
    pub fn live(&self) -> &[u32] {
        &self.live
    }

    /// Whether it is an audited (not a replicated) session.
    pub fn audited(&self) -> bool {
        self.audited
    }

    /// Ticks on which replicas disagreed.
    pub fn disagreements(&self) -> u64 {
        self.disagreements
    }

    /// Corrections sent.
    pub fn corrections(&self) -> u64 {
        self.corrections
    }

    /// Payload bytes its log holds.
    pub fn log_bytes(&self) -> usize {
        self.log_bytes
    }

    /// Ticks tracked (out or logged).
    pub fn ticks_tracked(&self) -> usize {
        self.ticks.len()
    }

    /// Whether a replica could be started now by replaying the log.
    pub fn has_log(&self) -> bool {
        self.log.as_ref().is_some_and(|l| !l.is_empty())
    }

    /// Whether fewer replicas than wanted are live.
    pub fn short(&self) -> bool {
        self.live.len() < usize::from(self.wanted)
    }

    /// Starts a new generation and returns it (the caller submits its copies: the log
    /// first when it joins between snapshots).
    pub fn start_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.live.push(generation);
        self.agreement_noted = false;
        generation
    }

    /// Starts a generation to settle a tie; `None` when one is already at work or there
    /// is no log to replay.
    pub fn start_tie_breaker(&mut self) -> Option<u32> {
        if self.tie_breaker.is_some() || !self.has_log() {
            return None;
        }
        let generation = self.start_generation();
        self.tie_breaker = Some(generation);
        self.judges.push(generation);
        Some(generation)
    }

    /// Whether a replica may be started now by replaying the log (a log, and the replay
    /// backoff passed); when so, the backoff is taken.
    pub fn take_replay_slot(&mut self) -> bool {
        if !self.has_log() || self.ticks_seen < self.next_replay_at {
            return false;
        }
        self.next_replay_at = self.ticks_seen + self.replay_backoff;
        self.replay_backoff = (self.replay_backoff * 2).min(MAX_REPLAY_BACKOFF);
        true
    }

    /// The determinism setup its replicas must have.
    pub fn setup(&self) -> Option<u64> {
        self.setup
    }

    /// Sets the setup its replicas must have, if it has none yet.
    pub fn settle_setup(&mut self, setup: Option<u64>) {
        if self.setup.is_none() {
            self.setup = setup;
        }
    }

    /// Whether a copy of this task is out or logged: a gamer may not reuse its id (a
    /// second request under a tracked id would be compared with the first one's answers).
    pub fn tracks(&self, task_id: &str) -> bool {
        self.ticks.contains_key(task_id)
    }

    /// Retires a generation: no more copies go to it.
    pub fn retire(&mut self, generation: u32) {
        self.live.retain(|g| *g != generation);
        self.judges.retain(|g| *g != generation);
        self.agreement_noted = false;
        if self.tie_breaker == Some(generation) {
            self.tie_breaker = None;
        }
    }

    /// The requests a generation started now must replay, oldest first.
    pub fn log(&self) -> Vec<Logged> {
        self.log.as_ref().map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }

    /// Whether the next physics tick must run as `physics_step_full` (a liar served the
    /// gamer); taking it clears it and counts a correction.
    pub fn take_correction(&mut self) -> bool {
        let due = std::mem::take(&mut self.correction_due);
        if due {
            self.corrections += 1;
        }
        due
    }

    /// Records a tick submitted to `copies` live generations. A snapshot request starts
    /// a new log; anything else is appended to the log there is (dropped past the
    /// bounds). Returns the payload bytes the log gained (negative: freed).
    pub fn submitted(&mut self, logged: Logged, snapshot: bool, copies: u32, config: &Replication) -> isize {
        let before = self.log_bytes as isize;
        self.ticks_seen += 1;
        self.ticks.entry(logged.task_id.clone()).or_default().out += copies;
        if snapshot {
            self.drop_log();
            self.log = Some(VecDeque::new());
            self.replay_backoff = MIN_REPLAY_BACKOFF;
            self.next_replay_at = 0;
        }
        if let Some(log) = &mut self.log {
            if log.len() >= config.replica_log_ticks
                || self.log_bytes.saturating_add(logged.payload.len()) > config.replica_log_bytes
            {
                self.drop_log();
            } else {
                self.log_bytes += logged.payload.len();
                if let Some(tick) = self.ticks.get_mut(&logged.task_id) {
                    tick.logged = true;
                }
                log.push_back(logged);
            }
        }
        self.log_bytes as isize - before
    }

    /// Records that `copies` more copies of a logged tick went out (a replica replaying
    /// it).
    pub fn replaying(&mut self, task_id: &str, copies: u32) {
        self.ticks.entry(task_id.to_owned()).or_default().out += copies;
    }

    /// Forgets the log (its ticks stay while copies are out). Returns the bytes freed.
    pub fn drop_log(&mut self) -> usize {
        let freed = std::mem::take(&mut self.log_bytes);
        if let Some(log) = self.log.take() {
            for logged in log {
                if let Some(tick) = self.ticks.get_mut(&logged.task_id) {
                    tick.logged = false;
                    if tick.out == 0 {
                        if tick.disputed && !tick.settled {
                            // Its re-run can no longer come: the dispute closes unsettled
                            // (the hold ends with it; nothing was concluded).
                            self.open_disputes = self.open_disputes.saturating_sub(1);
                        }
                        self.ticks.remove(&logged.task_id);
                    }
                }
            }
        }
        freed
    }

    /// Handles what became of generation `generation`'s copy of `task_id`.
    pub fn outcome(&mut self, task_id: &str, generation: u32, outcome: CopyOutcome) -> Decision {
        let mut decision = Decision::default();
        // Held delivery (an unsettled dispute) is strict delivery until replicas agree.
        let strict = self.strict || self.held();
        let has_log = self.has_log();
        let Some(tick) = self.ticks.get_mut(task_id) else { return decision };
        tick.out = tick.out.saturating_sub(1);
        match outcome {
            CopyOutcome::Answer {
                peer,
                voter,
                payload,
                kind: ResultKind::Success,
                digest: Some(digest),
                attempt,
                weight,
            } => {
                tick.succeeded.push(generation);
                let party = Party { peer: peer.clone(), voter: voter.clone(), weight };
                match tick.votes.iter_mut().find(|v| v.digest == digest) {
                    Some(vote) => {
                        if !vote.parties.iter().any(|p| p.peer == peer) {
                            vote.parties.push(party);
                        }
                        if weight > 0 {
                            match vote.weighted.iter_mut().find(|(v, _)| *v == voter) {
                                Some((_, w)) => *w = (*w).max(weight),
                                None => vote.weighted.push((voter.clone(), weight)),
                            }
                        }
                        if !vote.voters.contains(&voter) {
                            vote.voters.push(voter);
                        }
                        vote.generations.push(generation);
                    }
                    None => {
                        let kept = (!tick.delivered).then(|| payload.clone());
                        let weighted = if weight > 0 { vec![(voter.clone(), weight)] } else { Vec::new() };
                        tick.votes.push(Vote {
                            digest,
                            parties: vec![party],
                            voters: vec![voter],
                            weighted,
                            generations: vec![generation],
                            payload: kept,
                            attempt,
                        });
                    }
                }
                decision.compared = tick.votes.iter().map(|v| v.parties.len()).sum::<usize>() == 2;
                if !tick.delivered && !strict {
                    tick.delivered = true;
                    decision.deliver = Some(Delivery::Answer { payload, peer, attempt });
                }
            }
            CopyOutcome::Answer { peer, payload, attempt, .. } => {
                tick.failed.push(generation);
                if tick.first_error.is_none() {
                    tick.first_error = Some((payload, peer, attempt));
                }
            }
            CopyOutcome::GivenUp => tick.failed.push(generation),
            CopyOutcome::Cancelled => {}
        }
        let was_open = tick.disputed && !tick.settled;
        if tick.votes.len() > 1 && !tick.disputed {
            tick.disputed = true;
            decision.disagreement = true;
            self.disagreements += 1;
            // The gamer may hold a lie (the first answer went at once): its next tick is a
            // full state, whatever the verdict.
            self.correction_due |= !self.strict;
        }
        let mut unsettled = false;
        if tick.disputed && !tick.settled {
            // An answer is outvoted when two or more voters (networks) agree on another,
            // and that other weighs more (its voters' weights summed, see
            // [`vote_weight`]) than any other answer: fresh peers colluding never outvote
            // an established one, young ones need several times an old one's weight.
            let weight = |i: usize| tick.votes[i].weighted.iter().map(|(_, w)| u64::from(*w)).sum::<u64>();
            let majorities: Vec<usize> = (0..tick.votes.len())
                .filter(|&i| tick.votes[i].voters.len() >= 2)
                .filter(|&i| weight(i) > 0 && (0..tick.votes.len()).all(|j| j == i || weight(j) < weight(i)))
                .collect();
            // Replicas started after a dispute (replaying the log) that answered this tick:
            // the re-run a verdict needs.
            let judges = &self.judges;
            let re_run = tick.succeeded.iter().any(|g| judges.contains(g));
            match majorities[..] {
                [winner] if tick.votes[winner].generations.iter().any(|g| judges.contains(g)) => {
                    tick.settled = true;
                    for (i, vote) in tick.votes.iter().enumerate() {
                        if i != winner {
                            decision.liars.extend(vote.parties.iter().map(|p| p.peer.clone()));
                        }
                    }
                    // The tie-breaker stays as a replica; another dispute may start another.
                    self.tie_breaker = None;
                }
                // The re-run did not confirm a majority: nobody can be called a liar.
                _ if re_run && tick.out == 0 => unsettled = true,
                [_] if re_run => unsettled = true,
                // Before a verdict, the tick is re-run on another replica; without a
                // majority, the re-run is the tie-break.
                [_] if tick.out == 0 => decision.confirm = true,
                [] if tick.out == 0 => decision.tie_break = true,
                _ => {}
            }
            if (decision.confirm || decision.tie_break) && (self.tie_breaker.is_some() || !has_log) {
                // A tie-breaker at work that has not answered this tick will (its copies of
                // ticks since it started are out); with no log, none can be started.
                decision.confirm = false;
                decision.tie_break = false;
                if self.tie_breaker.is_none() {
                    unsettled = true;
                }
            }
        }
        if unsettled {
            // Nothing can say who lied: trust neither. Every replica is retired, the
            // session restarts on fresh replicas (the disputing peers kept apart), and
            // delivery is held until replicas agree again.
            tick.settled = true;
            decision.unsettled = true;
            self.tie_breaker = None;
        }
        if decision.unsettled || decision.confirm || decision.tie_break {
            decision.disputants = tick.votes.iter().map(|v| v.parties.clone()).collect();
        }
        if strict
            && !tick.delivered
            && let Some(agreed) = tick.votes.iter_mut().find(|v| v.voters.len() >= 2)
            && let Some(payload) = agreed.payload.take()
        {
            tick.delivered = true;
            decision.deliver =
                Some(Delivery::Answer { payload, peer: agreed.parties[0].peer.clone(), attempt: agreed.attempt });
        }
        if !tick.delivered && tick.out == 0 {
            tick.delivered = true;
            decision.deliver = Some(if strict && !tick.votes.is_empty() {
                Delivery::Unverified
            } else if let Some((payload, peer, attempt)) = tick.first_error.clone() {
                Delivery::Answer { payload, peer, attempt }
            } else {
                Delivery::Failure
            });
        }
        if tick.delivered {
            for vote in &mut tick.votes {
                vote.payload = None;
            }
            tick.first_error = None;
        }
        let agreed = tick.out == 0 && tick.votes.len() == 1 && tick.votes[0].voters.len() >= 2;
        if agreed {
            decision.agreed_tick = tick.votes[0].parties.clone();
            if !self.agreement_noted {
                self.agreement_noted = true;
                decision.agreed = decision.agreed_tick.clone();
            }
        }
        if agreed && !unsettled {
            // Replicas agree again: delivery is no longer held.
            self.held = false;
        }
        if tick.out == 0 && !tick.succeeded.is_empty() {
            // Every copy is in and some succeeded: a replica whose copy failed is a tick
            // behind the others. (When every copy failed alike, the request was at fault
            // and every world is where it was: nobody is retired.)
            for generation in std::mem::take(&mut tick.failed) {
                if self.live.contains(&generation) && !decision.retire.contains(&generation) {
                    decision.retire.push(generation);
                }
            }
        }
        let forget = tick.out == 0 && !tick.logged;
        let open = tick.disputed && !tick.settled && !forget;
        if unsettled {
            decision.retire = self.unsettle();
        }
        match (was_open, open) {
            (false, true) => self.open_disputes += 1,
            (true, false) => self.open_disputes = self.open_disputes.saturating_sub(1),
            _ => {}
        }
        if forget {
            self.ticks.remove(task_id);
        }
        decision
    }
}

/// Whether a new session is audited: a deterministic draw from its key, so the same
/// session keeps its fate, and `fraction` of sessions are.
pub fn audited(gamer: &str, session: &str, fraction: f64, salt: u64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    if fraction >= 1.0 {
        return true;
    }
    let mut hasher = Sha256::new();
    hasher.update(salt.to_le_bytes());
    hasher.update(gamer.as_bytes());
    hasher.update([0]);
    hasher.update(session.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let draw = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    draw < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Replication {
        Replication {
            replicas: 2,
            audit_fraction: 0.0,
            strict_replication: false,
            replica_log_ticks: 100,
            replica_log_bytes: 1 << 20,
            ..Replication::default()
        }
    }

    fn json(text: &str) -> Payload {
        Payload::from_json_text(text.to_owned()).unwrap()
    }

    fn logged(task: &str) -> Logged {
        Logged {
            task_id: task.into(),
            task_type: "physics_step".into(),
            deadline: Duration::from_secs(1),
            payload: json(r#"{"tick":1}"#),
        }
    }

    fn answer(peer: &str, text: &str) -> CopyOutcome {
        let payload = json(text);
        let kind = p2c2r_protocol::inspect::result_kind(&payload);
        let digest = (kind == ResultKind::Success).then(|| answer_digest(&payload));
        CopyOutcome::Answer { peer: peer.into(), voter: peer.into(), payload, kind, digest, attempt: 1, weight: 1 }
    }

    /// An answer from `peer` on `host`.
    fn answer_from(peer: &str, host: &str, text: &str) -> CopyOutcome {
        match answer(peer, text) {
            CopyOutcome::Answer { peer, payload, kind, digest, attempt, weight, .. } => {
                CopyOutcome::Answer { peer, voter: host.into(), payload, kind, digest, attempt, weight }
            }
            other => other,
        }
    }

    fn group(wanted: u8, strict: bool) -> Group {
        let mut g = Group::new(wanted, false, strict, Some(1));
        for _ in 0..wanted {
            g.start_generation();
        }
        g
    }

    const OK_A: &str = r#"{"status":"success","digest":"a"}"#;
    const OK_B: &str = r#"{"status":"success","digest":"b"}"#;

    #[test]
    fn the_first_success_is_delivered_at_once_and_agreement_settles_nothing() {
        let mut g = group(2, false);
        g.submitted(logged("t1"), true, 2, &config());
        let d = g.outcome("t1", 0, answer("p1", OK_A));
        assert!(matches!(d.deliver, Some(Delivery::Answer { ref peer, .. }) if peer == "p1"));
        let d = g.outcome("t1", 1, answer("p2", OK_A));
        assert!(d.deliver.is_none() && d.liars.is_empty() && !d.disagreement);
    }

    #[test]
    fn a_dead_replicas_resync_is_not_delivered_when_another_succeeded() {
        let mut g = group(2, false);
        g.submitted(logged("t1"), false, 2, &config());
        let d = g.outcome("t1", 1, answer("p2", r#"{"status":"error","resync":true}"#));
        assert!(d.deliver.is_none() && d.retire.is_empty());
        let d = g.outcome("t1", 0, answer("p1", OK_A));
        assert!(matches!(d.deliver, Some(Delivery::Answer { .. })));
        assert_eq!(d.retire, [1], "a tick behind the other: retired once every copy is in");
    }

    #[test]
    fn when_every_replica_fails_alike_nobody_is_retired() {
        let mut g = group(2, false);
        g.submitted(logged("t1"), false, 2, &config());
        let bad = r#"{"status":"error","code":"out_of_order","resync":true}"#;
        assert!(g.outcome("t1", 0, answer("p1", bad)).retire.is_empty());
        let d = g.outcome("t1", 1, answer("p2", bad));
        assert!(d.retire.is_empty(), "the request was at fault, not the replicas");
        assert!(matches!(d.deliver, Some(Delivery::Answer { ref peer, .. }) if peer == "p1"));
    }

    #[test]
    fn peers_on_one_host_are_one_vote() {
        let mut g = group(3, false);
        g.submitted(logged("t1"), true, 3, &config());
        g.outcome("t1", 0, answer_from("sybil-1", "10.0.0.66", OK_B));
        g.outcome("t1", 1, answer_from("sybil-2", "10.0.0.66", OK_B));
        let d = g.outcome("t1", 2, answer_from("honest", "10.0.0.1", OK_A));
        assert!(d.liars.is_empty(), "two peers of one host outvoted an honest one: {d:?}");
        assert!(d.disagreement && d.tie_break);
    }

    #[test]
    fn a_tie_nothing_can_settle_retires_every_replica() {
        let mut g = group(2, false);
        let c = config();
        g.submitted(logged("t1"), false, 2, &c);
        assert!(!g.has_log(), "no snapshot: no log to replay");
        g.outcome("t1", 0, answer("p1", OK_A));
        let d = g.outcome("t1", 1, answer("p2", OK_B));
        assert!(d.unsettled && !d.tie_break);
        assert_eq!(d.retire, [0, 1]);
        assert!(d.liars.is_empty());
        assert!(g.take_correction(), "the gamer may hold the lie: the next tick is a full state");
    }

    #[test]
    fn three_different_answers_settle_nothing() {
        let mut g = group(2, false);
        g.submitted(logged("t1"), true, 2, &config());
        g.outcome("t1", 0, answer("p1", OK_A));
        assert!(g.outcome("t1", 1, answer("p2", OK_B)).tie_break);
        let tb = g.start_tie_breaker().unwrap();
        g.replaying("t1", 1);
        let d = g.outcome("t1", tb, answer("p3", r#"{"status":"success","digest":"c"}"#));
        assert!(d.unsettled && d.liars.is_empty(), "{d:?}");
        assert_eq!(d.retire.len(), 3, "every replica, the tie-breaker too");
    }

    #[test]
    fn replays_back_off_until_the_next_snapshot() {
        let mut g = group(2, false);
        let c = Replication { replica_log_ticks: 1000, ..config() };
        g.submitted(logged("t0"), true, 2, &c);
        assert!(g.take_replay_slot());
        assert!(!g.take_replay_slot(), "the next waits");
        for i in 1..=MIN_REPLAY_BACKOFF {
            g.submitted(logged(&format!("t{i}")), false, 2, &c);
        }
        assert!(g.take_replay_slot(), "after the backoff");
        for i in 0..MIN_REPLAY_BACKOFF {
            g.submitted(logged(&format!("u{i}")), false, 2, &c);
        }
        assert!(!g.take_replay_slot(), "the backoff doubled");
        g.submitted(logged("s"), true, 2, &c);
        assert!(g.take_replay_slot(), "a snapshot resets it");
        assert!(g.tracks("s") && !g.tracks("never"));
    }

    #[test]
    fn an_error_is_delivered_when_no_copy_succeeded() {
        let mut g = group(2, false);
        g.submitted(logged("t1"), false, 2, &config());
        assert!(g.outcome("t1", 0, CopyOutcome::GivenUp).deliver.is_none());
        let d = g.outcome("t1", 1, answer("p2", r#"{"status":"error","code":"invalid_payload"}"#));
        assert!(matches!(d.deliver, Some(Delivery::Answer { ref peer, .. }) if peer == "p2"));
        let mut g = group(2, false);
        g.submitted(logged("t2"), false, 2, &config());
        g.outcome("t2", 0, CopyOutcome::Cancelled);
        assert!(matches!(g.outcome("t2", 1, CopyOutcome::GivenUp).deliver, Some(Delivery::Failure)));
    }

    #[test]
    fn one_against_two_is_a_liar_once_a_re_run_confirms_it_and_the_gamer_is_corrected() {
        let mut g = group(3, false);
        g.submitted(logged("t1"), true, 3, &config());
        let d = g.outcome("t1", 0, answer("liar", OK_B));
        assert!(d.deliver.is_some(), "the first answer goes at once (non-strict)");
        let d = g.outcome("t1", 1, answer("p2", OK_A));
        assert!(d.disagreement && d.liars.is_empty());
        let d = g.outcome("t1", 2, answer("p3", OK_A));
        assert!(d.liars.is_empty() && d.confirm, "no verdict before a re-run: {d:?}");
        assert_eq!(d.disputants.len(), 2);
        let tb = g.start_tie_breaker().expect("a log to replay");
        g.replaying("t1", 1);
        let d = g.outcome("t1", tb, answer("p4", OK_A));
        assert_eq!(d.liars, ["liar"]);
        assert_eq!(g.disagreements(), 1);
        assert!(g.take_correction());
        assert!(!g.take_correction(), "once");
        assert_eq!(g.corrections(), 1);
    }

    /// An answer from `peer` (its own voter) whose vote weighs `weight`.
    fn weighing(peer: &str, text: &str, weight: u32) -> CopyOutcome {
        match answer(peer, text) {
            CopyOutcome::Answer { peer, voter, payload, kind, digest, attempt, .. } => {
                CopyOutcome::Answer { peer, voter, payload, kind, digest, attempt, weight }
            }
            other => other,
        }
    }

    /// Four colluders fresh from establishing themselves (weight 1 each), the re-run one
    /// of them too, against one old, busy honest peer (weight 4): counting heads, the
    /// honest peer is the liar; weighed, nobody is (the dispute is unsettled, delivery
    /// held, the pairs kept apart).
    fn young_colluders_against_an_old_peer(honest_weight: u32) -> Decision {
        let mut g = group(4, false);
        g.submitted(logged("t1"), true, 4, &config());
        for (generation, colluder) in ["c1", "c2", "c3"].into_iter().enumerate() {
            g.outcome("t1", generation as u32, weighing(colluder, OK_B, 1));
        }
        let d = g.outcome("t1", 3, weighing("honest", OK_A, honest_weight));
        assert!(d.confirm || d.tie_break, "a re-run before any verdict: {d:?}");
        let tb = g.start_tie_breaker().unwrap();
        g.replaying("t1", 1);
        g.outcome("t1", tb, weighing("c4", OK_B, 1))
    }

    #[test]
    fn an_old_peer_outweighs_colluders_fresh_from_establishing_themselves() {
        assert_eq!(young_colluders_against_an_old_peer(1).liars, ["honest"], "counting heads");
        let d = young_colluders_against_an_old_peer(4);
        assert!(d.liars.is_empty() && d.unsettled, "weighed: {d:?}");
    }

    #[test]
    fn a_vote_weighs_verified_work_and_age_together() {
        use crate::scheduler::Standing;
        let day_ms = 24 * 3600 * 1000;
        let now = 100 * day_ms;
        let standing =
            |agreements: u64, age_ms: u64| Standing { agreements, since_ms: now - age_ms, ..Default::default() };
        let veteran = standing(250_000, 30 * day_ms);
        assert_eq!(vote_weight(&veteran, true, true, now), 4);
        assert_eq!(vote_weight(&veteran, false, true, now), 0, "not established: no weight");
        assert_eq!(vote_weight(&veteran, true, false, now), 0, "not verified lately: no weight");
        assert_eq!(vote_weight(&standing(250_000, 60_000), true, true, now), 1, "a burst of work, a minute old");
        assert_eq!(vote_weight(&standing(0, 30 * day_ms), true, true, now), 1, "an old id that did nothing");
        assert_eq!(vote_weight(&standing(20_000, 2 * day_ms), true, true, now), 3);
        assert_eq!(vote_weight(&standing(5_000, 2 * day_ms), true, true, now), 2);
        let unknown_age = Standing { agreements: 250_000, since_ms: 0, ..Default::default() };
        assert_eq!(vote_weight(&unknown_age, true, true, now), 1, "an unknown age counts as none");
    }

    #[test]
    fn a_re_run_that_sides_with_the_minority_quarantines_nobody_and_holds_delivery() {
        // Two colluders agree on a lie against one honest replica; the re-run is honest.
        let mut g = group(3, false);
        g.submitted(logged("t1"), true, 3, &config());
        g.outcome("t1", 0, answer("colluder-1", OK_B));
        g.outcome("t1", 1, answer("colluder-2", OK_B));
        assert!(g.outcome("t1", 2, answer("honest", OK_A)).confirm);
        let tb = g.start_tie_breaker().unwrap();
        g.replaying("t1", 1);
        let d = g.outcome("t1", tb, answer("re-run", OK_A));
        assert!(d.unsettled && d.liars.is_empty(), "{d:?}");
        assert_eq!(d.retire.len(), 4, "every replica retired");
        assert_eq!(d.disputants.len(), 2);
        assert!(g.held() && g.take_correction());
        // Held: a lone answer is not delivered; at the end of the tick it is unverified.
        for generation in d.retire {
            g.retire(generation);
        }
        let (a, b) = (g.start_generation(), g.start_generation());
        g.submitted(logged("t2"), true, 2, &config());
        assert!(g.outcome("t2", a, answer("honest", OK_A)).deliver.is_none(), "held");
        let d = g.outcome("t2", b, answer("other", OK_A));
        assert!(matches!(d.deliver, Some(Delivery::Answer { .. })), "two agree: delivered");
        assert!(!g.held(), "agreement ends the hold");
        assert_eq!(d.agreed.len(), 2, "the agreement is noted for the disputes record");
        g.submitted(logged("t3"), false, 2, &config());
        g.outcome("t3", a, answer("honest", OK_A));
        let d = g.outcome("t3", b, answer("other", OK_A));
        assert!(d.agreed.is_empty(), "noted once per set of replicas");
        assert_eq!(d.agreed_tick.len(), 2, "but every agreed tick is verified work");
    }

    #[test]
    fn while_a_dispute_waits_for_its_re_run_only_agreed_answers_are_delivered() {
        let mut g = group(3, false);
        let c = config();
        g.submitted(logged("t1"), true, 3, &c);
        g.outcome("t1", 0, answer("liar", OK_B));
        g.outcome("t1", 1, answer("p2", OK_A));
        assert!(g.outcome("t1", 2, answer("p3", OK_A)).confirm);
        assert!(g.held(), "open dispute");
        g.submitted(logged("t2"), false, 3, &c);
        assert!(g.outcome("t2", 0, answer("liar", OK_B)).deliver.is_none(), "the liar's first answer waits");
        assert!(g.outcome("t2", 1, answer("p2", OK_A)).deliver.is_none());
        let d = g.outcome("t2", 2, answer("p3", OK_A));
        assert!(matches!(d.deliver, Some(Delivery::Answer { ref peer, .. }) if peer == "p2"), "{d:?}");
        let tb = g.start_tie_breaker().unwrap();
        g.replaying("t1", 1);
        g.replaying("t2", 1);
        assert_eq!(g.outcome("t1", tb, answer("p4", OK_A)).liars, ["liar"]);
        assert!(g.held(), "t1 settled; t2 (the liar lied again) waits for its own re-run");
        assert_eq!(g.outcome("t2", tb, answer("p4", OK_A)).liars, ["liar"]);
        assert!(!g.held(), "every dispute settled");
    }

    #[test]
    fn a_held_session_with_one_replica_answers_unverified() {
        let mut g = group(2, false);
        g.submitted(logged("t1"), false, 2, &config());
        g.outcome("t1", 0, answer("p1", OK_A));
        let d = g.outcome("t1", 1, answer("p2", OK_B));
        assert!(d.unsettled && g.held());
        for generation in d.retire {
            g.retire(generation);
        }
        let only = g.start_generation();
        g.submitted(logged("t2"), true, 1, &config());
        let d = g.outcome("t2", only, answer("p1", OK_A));
        assert!(matches!(d.deliver, Some(Delivery::Unverified)), "{d:?}");
    }

    #[test]
    fn a_tie_is_settled_by_a_replica_replaying_the_log() {
        let mut g = group(2, false);
        let c = config();
        g.submitted(logged("t1"), true, 2, &c);
        g.submitted(logged("t2"), false, 2, &c);
        g.outcome("t1", 0, answer("p1", OK_A));
        g.outcome("t1", 1, answer("p2", OK_A));
        g.outcome("t2", 0, answer("liar", OK_B));
        let d = g.outcome("t2", 1, answer("p2", OK_A));
        assert!(d.disagreement && d.tie_break && d.liars.is_empty());
        let tb = g.start_tie_breaker().expect("a log to replay");
        assert!(g.start_tie_breaker().is_none(), "one at a time");
        let replay = g.log();
        assert_eq!(replay.iter().map(|l| l.task_id.as_str()).collect::<Vec<_>>(), ["t1", "t2"]);
        for l in &replay {
            g.replaying(&l.task_id, 1);
        }
        assert!(g.outcome("t1", tb, answer("p3", OK_A)).liars.is_empty());
        let d = g.outcome("t2", tb, answer("p3", OK_A));
        assert!(d.deliver.is_none(), "delivered long ago");
        assert_eq!(d.liars, ["liar"]);
    }

    #[test]
    fn a_replica_outvoted_while_replaying_is_re_run_before_it_is_called_a_liar() {
        let mut g = group(2, false);
        g.submitted(logged("t1"), true, 2, &config());
        g.outcome("t1", 0, answer("p1", OK_A));
        g.outcome("t1", 1, answer("p2", OK_A));
        let new = g.start_generation();
        g.replaying("t1", 1);
        let d = g.outcome("t1", new, answer("newcomer", OK_B));
        assert!(d.confirm && d.liars.is_empty());
        let tb = g.start_tie_breaker().unwrap();
        g.replaying("t1", 1);
        assert_eq!(g.outcome("t1", tb, answer("p4", OK_A)).liars, ["newcomer"]);
    }

    #[test]
    fn strict_mode_delivers_only_what_two_agree_on() {
        let mut g = group(2, true);
        g.submitted(logged("t1"), true, 2, &config());
        assert!(g.outcome("t1", 0, answer("p1", OK_A)).deliver.is_none());
        assert!(matches!(g.outcome("t1", 1, answer("p2", OK_A)).deliver, Some(Delivery::Answer { .. })));
        g.submitted(logged("t2"), false, 2, &config());
        assert!(g.outcome("t2", 0, answer("p1", OK_A)).deliver.is_none());
        let d = g.outcome("t2", 1, answer("liar", OK_B));
        assert!(matches!(d.deliver, Some(Delivery::Unverified)));
        assert!(!g.take_correction(), "strict: the gamer never saw a lie");
    }

    #[test]
    fn the_log_starts_at_a_snapshot_and_is_dropped_past_its_bounds() {
        let mut g = group(2, false);
        let c = Replication { replica_log_ticks: 3, ..config() };
        g.submitted(logged("t0"), false, 2, &c);
        assert!(!g.has_log(), "no snapshot yet");
        g.submitted(logged("t1"), true, 2, &c);
        g.submitted(logged("t2"), false, 2, &c);
        g.submitted(logged("t3"), false, 2, &c);
        assert_eq!(g.log().len(), 3);
        assert!(g.log_bytes() > 0);
        g.submitted(logged("t4"), false, 2, &c);
        assert!(!g.has_log(), "past its bound");
        assert_eq!(g.log_bytes(), 0);
        g.submitted(logged("t5"), true, 2, &c);
        assert_eq!(g.log().len(), 1);
        // Ticks answered and out of the log are forgotten: the map stays bounded.
        for t in ["t0", "t1", "t2", "t3", "t4"] {
            g.outcome(t, 0, answer("p1", OK_A));
            g.outcome(t, 1, answer("p2", OK_A));
        }
        assert_eq!(g.ticks_tracked(), 1, "only the logged t5");
    }

    #[test]
    fn about_the_audit_fraction_of_sessions_is_audited() {
        let n = 10_000;
        let hits = (0..n).filter(|i| audited("g", &format!("s{i}"), 0.1, 7)).count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert!(!audited("g", "s", 0.0, 7));
        assert!(audited("g", "s", 1.0, 7));
        assert_eq!(audited("g", "s1", 0.5, 7), audited("g", "s1", 0.5, 7));
    }
}
