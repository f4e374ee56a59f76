//! The operator's view of the router: the `stats_report` counters, the fleet (every
//! peer and gamer with its connection), and the metrics collector's snapshot, each read
//! in one lock hold so its figures agree with one another.

use std::time::Instant;

use p2c2r_protocol::StatsReport;

use super::{ConnId, Router, State};
use crate::fleet::{ConnSample, FleetState, LatencyWindow};

/// What the metrics collector reads of the router, in one lock hold.
#[derive(Debug, Clone)]
pub struct RouterSnapshot {
    /// The `stats_report` counters.
    pub stats: StatsReport,
    /// Sessions known now, all gamers together.
    pub sessions: usize,
    /// The audit fraction configured, and the one achieved since start.
    pub audit_fractions: (f64, f64),
    /// Registered connections evicted for silence since start: peers, gamers.
    pub evictions: (u64, u64),
    /// Absent gamers holding a slot now (work pending), and absent gamers whose slot went
    /// to a newcomer since start.
    pub absent_gamers: (usize, u64),
}

impl Router {
    /// The counters, as a `stats_report` carries them.
    pub fn stats(&self) -> StatsReport {
        self.lock().stats()
    }

    /// What the metrics collector shows, read in one lock hold.
    pub fn snapshot(&self) -> RouterSnapshot {
        let state = self.lock();
        RouterSnapshot {
            stats: state.stats(),
            sessions: state.sched.sessions_len(),
            audit_fractions: state.replicas.audit_fractions(),
            evictions: (state.registry.peers_evicted, state.registry.gamers_evicted),
            absent_gamers: (state.delivery.len(), state.delivery.absent_evicted),
        }
    }

    /// Bytes of results and answers kept now for gamers that may resume.
    pub fn kept_bytes(&self) -> usize {
        self.lock().delivery.kept_bytes()
    }

    /// Ids held or reserved now.
    pub fn ids_known(&self) -> usize {
        self.lock().registry.ids.len()
    }

    /// The end-to-end latencies recorded since the last call (a bounded sample).
    pub fn take_latencies(&self) -> LatencyWindow {
        std::mem::take(&mut self.lock().latencies)
    }

    /// Everything the operator's view shows, read in one lock hold (see [`crate::fleet`]).
    pub fn fleet(&self) -> FleetState {
        let state = self.lock();
        let now = Instant::now();
        let registry = &state.registry;
        let sample = |id: &String, conn: &ConnId| {
            let c = registry.conns.get(conn)?;
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
            peers: registry
                .peers
                .iter()
                .filter_map(|(id, conn)| Some((sample(id, conn)?, state.sched.peer_view(id)?)))
                .collect(),
            gamers: registry
                .gamers
                .iter()
                .filter_map(|(id, conn)| Some((sample(id, conn)?, state.sched.gamer_view(id)?)))
                .collect(),
        }
    }
}

impl State {
    pub(super) fn stats(&self) -> StatsReport {
        let c = self.sched.counters();
        let r = &self.replicas.counters;
        StatsReport {
            peers: self.registry.peers.len() as u64,
            gamers: self.registry.gamers.len() as u64,
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
            peers_quarantined: self.standing.peers_quarantined,
            peers_evicted: self.registry.peers_evicted,
            errors_sent: self.registry.errors_sent,
            ticks_compared: r.ticks_compared,
            replica_disagreements: r.disagreements,
            peers_caught_lying: r.liars,
            sessions_corrected: r.corrections,
            replicas_started: r.started,
            disputes_unsettled: r.unsettled,
            peers_quarantined_for_disputes: r.dispute_quarantines,
            sessions_unreplicated_started: r.unreplicated_started,
            sessions_audited: r.audited,
        }
    }
}
