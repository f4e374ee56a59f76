//! The Receive stage: everything the network delivered since the last tick, matched with
//! what was sent, handed to the offload controller, and queued for the Apply stage.

use std::time::Instant;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use p2c2r_client::{ClientEvent, TaskOutcome, TaskReply};
use p2c2r_protocol::{ErrorCode, TaskError, to_payload};

use crate::apply::Results;
use crate::bridge::{Incoming, P2c2rClient, Parsed, Sent, parse_physics, take_parsed};
use crate::messages::*;
use crate::offload::{StreamKind, Verdict};
use crate::plugin::Offload;
use crate::shape_names::ShapeNames;
use crate::stats::P2c2rStats;

/// The messages the Receive stage writes.
#[derive(SystemParam)]
pub(crate) struct ReceiveMessages<'w> {
    failed: MessageWriter<'w, TaskFailed>,
    connection: MessageWriter<'w, ConnectionChanged>,
    mode: MessageWriter<'w, ModeChanged>,
    custom: MessageWriter<'w, TaskResultReceived>,
}

/// Which controller stream a task kind belongs to.
pub(crate) fn stream_of(kind: TaskKind) -> Option<StreamKind> {
    match kind {
        TaskKind::Physics => Some(StreamKind::Physics),
        TaskKind::Ai => Some(StreamKind::Ai),
        _ => None,
    }
}

/// Writes the controller's mode changes as [`ModeChanged`] messages.
pub(crate) fn publish_mode_changes(
    offload: &mut Offload,
    stats: &mut P2c2rStats,
    mode: &mut MessageWriter<ModeChanged>,
) {
    for change in offload.controller.take_mode_changes() {
        mode.write(change);
    }
    stats.mode = offload.controller.mode();
    let counters = offload.controller.counters();
    stats.fallbacks_entered = counters.fallbacks_entered;
    stats.handbacks = counters.handbacks;
}

pub(crate) fn receive(
    mut client: ResMut<P2c2rClient>,
    mut offload: ResMut<Offload>,
    mut results: ResMut<Results>,
    mut stats: ResMut<P2c2rStats>,
    mut names: ResMut<ShapeNames>,
    mut out: ReceiveMessages,
) {
    let now = Instant::now();
    let mut r = Receiver {
        offload: &mut offload,
        results: &mut results,
        stats: &mut stats,
        names: &mut names,
        out: &mut out,
        now,
    };
    for Incoming { event, sent } in client.receive() {
        match event {
            ClientEvent::Connected { gamer_id } => r.connection(ConnectionState::Connected { gamer_id }),
            ClientEvent::Disconnected { reason } => r.connection(ConnectionState::Disconnected { reason }),
            ClientEvent::Result(outcome) => r.outcome(outcome, sent),
            ClientEvent::Error(error) => {
                let task_id = error.refers_to.clone().unwrap_or_default();
                let why = format!("{}: {}", error.code, error.message);
                r.fail(&task_id, sent, TaskError::new(error.code, why));
            }
            ClientEvent::Undelivered { task_id, error } => {
                r.fail(&task_id, sent, TaskError::new(ErrorCode::Other, error.to_string()))
            }
            // How the coordinator replicates a session: published in the stats.
            ClientEvent::SessionStatus(status) => {
                let corrected =
                    status.session_id == r.stats.session_id && status.corrections > r.stats.replication.corrections;
                r.stats.record_session_status(status);
                if corrected {
                    // A liar's events may have reached the game: resync what it learnt.
                    r.offload.controller.resync_physics();
                }
            }
        }
    }
    publish_mode_changes(r.offload, r.stats, &mut r.out.mode);
}

/// A result must be for the tick its request carried: a peer that answers another tick
/// (say `u64::MAX`, which would make every later result look stale) is lying or broken.
fn answers(sent: Option<Sent>, tick: u64) -> Result<(), TaskError> {
    match sent.and_then(|s| s.tick) {
        Some(expected) if expected != tick => Err(TaskError::new(
            ErrorCode::InvalidPayload,
            format!("a result for tick {tick} answers the request for tick {expected}"),
        )
        .with_tick(expected)),
        _ => Ok(()),
    }
}

struct Receiver<'a, 'w> {
    offload: &'a mut Offload,
    results: &'a mut Results,
    stats: &'a mut P2c2rStats,
    names: &'a mut ShapeNames,
    out: &'a mut ReceiveMessages<'w>,
    now: Instant,
}

impl Receiver<'_, '_> {
    fn connection(&mut self, state: ConnectionState) {
        self.stats.connection = state.clone();
        if !state.is_connected() {
            self.offload.controller.disconnected(self.now);
        }
        self.out.connection.write(ConnectionChanged { state });
    }

    /// A task failed: tells the controller (which may resync or fall back) and writes a
    /// [`TaskFailed`].
    fn fail(&mut self, task_id: &str, sent: Option<Sent>, error: TaskError) {
        self.stats.task_failures += 1;
        let TaskError { code, message, resync, tick, .. } = error;
        if matches!(code, ErrorCode::MissingShape | ErrorCode::Unverified) {
            // A peer lacks a large shape sent by name (or, in a strict replicated session,
            // a replica that lacks one keeps two replicas from agreeing): the resync's
            // snapshot sends the shapes themselves.
            self.names.forget_sent();
        }
        let kind = sent.map_or(TaskKind::Other, |s| s.kind);
        let tick = tick.or(sent.and_then(|s| s.tick));
        match kind {
            TaskKind::Probe => self.offload.controller.probe_failed(task_id),
            kind => {
                if let Some(stream) = stream_of(kind) {
                    self.offload.controller.peer_failed(stream, tick, resync, self.now, &message);
                }
            }
        }
        tracing::debug!(task_id, %code, %message, "p2c2r task failed");
        self.out.failed.write(TaskFailed { task_id: task_id.to_owned(), kind, code, message, tick, resync });
    }

    fn outcome(&mut self, mut outcome: TaskOutcome, sent: Option<Sent>) {
        if let Some(peer) = &outcome.peer_id
            && !self.stats.peers_seen.contains(peer)
        {
            self.stats.peers_seen.insert(peer.clone());
        }
        let kind = sent.map(|s| s.kind);
        if let TaskReply::Failed(error) = &outcome.reply {
            self.fail(&outcome.task_id, sent, error.clone());
            if kind == Some(TaskKind::Custom) {
                self.emit_custom(outcome);
            }
            return;
        }
        if let Some(rtt) = outcome.rtt
            && matches!(kind, Some(TaskKind::Physics | TaskKind::Ai))
        {
            self.stats.record_rtt(rtt);
        }
        let parsed = take_parsed(&mut outcome);
        let source = ResultSource::Peer(outcome.peer_id.clone().unwrap_or_default());
        match kind {
            Some(TaskKind::Physics) => {
                let parsed = match parsed {
                    Some(Parsed::Physics(r)) => r,
                    _ => parse_physics(&outcome),
                }
                .and_then(|r| answers(sent, r.tick).map(|()| r).map_err(TaskError::with_resync));
                match parsed {
                    Ok(result) => {
                        let (verdict, _) =
                            self.offload.controller.peer_result(StreamKind::Physics, result.tick, self.now);
                        if verdict == Verdict::Apply {
                            self.stats.serving_peer = outcome.peer_id.clone();
                            self.results.playout.arrived(self.offload.tick, result.tick);
                            self.results.physics.push((result, source, outcome.rtt));
                        } else {
                            if verdict == Verdict::Stale {
                                // The peer is in sync (the same state was shown locally).
                                self.stats.serving_peer = outcome.peer_id.clone();
                            }
                            self.stats.stale_results += 1;
                        }
                    }
                    Err(e) => {
                        // A broken result (non-finite numbers, a rotation that is not a
                        // unit quaternion) asks for a resync; it is counted in
                        // `rejected_results`.
                        if e.resync {
                            self.stats.rejected_results += 1;
                        }
                        self.fail(&outcome.task_id, sent, e);
                    }
                }
            }
            Some(TaskKind::Ai) => {
                let parsed = match parsed {
                    Some(Parsed::Ai(r)) => r,
                    _ => outcome.parse(),
                }
                .and_then(|r| answers(sent, r.tick).map(|()| r));
                match parsed {
                    Ok(result) => {
                        let (verdict, _) = self.offload.controller.peer_result(StreamKind::Ai, result.tick, self.now);
                        if verdict == Verdict::Apply {
                            self.results.ai.push((result, source));
                        } else {
                            self.stats.stale_results += 1;
                        }
                    }
                    Err(e) => self.fail(&outcome.task_id, sent, TaskError { tick: None, resync: false, ..e }),
                }
            }
            Some(TaskKind::Probe) => {
                self.offload.controller.probe_succeeded(&outcome.task_id);
            }
            Some(TaskKind::Custom) => self.emit_custom(outcome),
            // Not ours, or sent so long ago that it was forgotten.
            Some(TaskKind::Local | TaskKind::Other) | None => self.stats.stale_results += 1,
        }
    }

    fn emit_custom(&mut self, outcome: TaskOutcome) {
        let result = match outcome.reply {
            TaskReply::Success(raw) => raw,
            TaskReply::Failed(e) => to_payload(&e).unwrap_or_else(|_| p2c2r_protocol::null_payload()),
        };
        self.out.custom.write(TaskResultReceived {
            task_id: outcome.task_id,
            peer_id: outcome.peer_id,
            result: std::sync::Arc::new(result),
            rtt: outcome.rtt,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_must_answer_the_tick_its_request_carried() {
        let physics = Some(Sent { kind: TaskKind::Physics, tick: Some(7) });
        assert!(answers(physics, 7).is_ok());
        let e = answers(physics, u64::MAX).expect_err("a lying peer's tick");
        assert_eq!((e.code, e.tick), (ErrorCode::InvalidPayload, Some(7)));
        assert!(answers(Some(Sent { kind: TaskKind::Custom, tick: None }), 3).is_ok(), "custom tasks carry no tick");
    }
}
