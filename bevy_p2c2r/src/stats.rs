//! Counters for HUDs, examples and tests ([`P2c2rStats`]) and the Bevy diagnostics the
//! plugin publishes ([`diagnostics`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bevy::prelude::Resource;
use hdrhistogram::Histogram;

use crate::OffloadMode;
use crate::messages::ConnectionState;

/// Paths of the Bevy diagnostics the plugin publishes (read them from
/// `DiagnosticsStore`, or log them with `LogDiagnosticsPlugin`).
pub mod diagnostics {
    use bevy::diagnostic::DiagnosticPath;

    /// Round-trip time of the latest peer result, ms.
    pub const RTT_MS: DiagnosticPath = DiagnosticPath::const_new("p2c2r/rtt_ms");
    /// Tasks sent to peers and not yet answered.
    pub const TASKS_IN_FLIGHT: DiagnosticPath = DiagnosticPath::const_new("p2c2r/tasks_in_flight");
    /// Ticks stepped by peers so far.
    pub const TICKS_OFFLOADED: DiagnosticPath = DiagnosticPath::const_new("p2c2r/ticks_offloaded");
    /// Ticks stepped by the local fallback so far.
    pub const TICKS_FALLBACK: DiagnosticPath = DiagnosticPath::const_new("p2c2r/ticks_fallback");
    /// Bytes sent to the coordinator so far.
    pub const BYTES_SENT: DiagnosticPath = DiagnosticPath::const_new("p2c2r/bytes_sent");
    /// Bytes received from the coordinator so far.
    pub const BYTES_RECEIVED: DiagnosticPath = DiagnosticPath::const_new("p2c2r/bytes_received");
    /// 1 while in fallback (or handing back), 0 while offloaded.
    pub const FALLBACK: DiagnosticPath = DiagnosticPath::const_new("p2c2r/fallback");
    /// Bytes sent per offloaded body per offloaded tick, over about a second
    /// ([`P2c2rStats::bytes_sent_per_body_tick`](super::P2c2rStats::bytes_sent_per_body_tick)).
    pub const BYTES_SENT_PER_BODY_TICK: DiagnosticPath = DiagnosticPath::const_new("p2c2r/bytes_sent_per_body_tick");
    /// Bytes received per offloaded body per offloaded tick, over about a second.
    pub const BYTES_RECEIVED_PER_BODY_TICK: DiagnosticPath =
        DiagnosticPath::const_new("p2c2r/bytes_received_per_body_tick");

    /// Every path above.
    pub const ALL: [DiagnosticPath; 9] = [
        RTT_MS,
        TASKS_IN_FLIGHT,
        TICKS_OFFLOADED,
        TICKS_FALLBACK,
        BYTES_SENT,
        BYTES_RECEIVED,
        FALLBACK,
        BYTES_SENT_PER_BODY_TICK,
        BYTES_RECEIVED_PER_BODY_TICK,
    ];
}

/// What the plugin has done so far; updated every fixed tick. Read it as a resource.
#[derive(Resource, Clone)]
pub struct P2c2rStats {
    /// Who steps the world now.
    pub mode: OffloadMode,
    /// The connection to the coordinator.
    pub connection: ConnectionState,
    /// The physics session id.
    pub session_id: String,
    /// Fixed ticks run by the plugin.
    pub ticks: u64,
    /// Ticks whose physics request went to a peer.
    pub ticks_offloaded: u64,
    /// Ticks stepped by the local fallback (including while handing back).
    pub fallback_ticks: u64,
    /// Physics results from peers that were applied.
    pub physics_results_from_peers: u64,
    /// AI results from peers that were applied.
    pub ai_results_from_peers: u64,
    /// Physics results computed locally that were applied.
    pub physics_results_local: u64,
    /// AI results computed locally that were applied.
    pub ai_results_local: u64,
    /// Results dropped as late, duplicate or out of order (or from an abandoned world).
    pub stale_results: u64,
    /// Task failures (error results, `error` messages, undeliverable requests).
    pub task_failures: u64,
    /// Physics results from peers rejected as broken (non-finite numbers, a rotation
    /// that is not a unit quaternion); each is also a task failure and asks for a resync.
    pub rejected_results: u64,
    /// Full snapshots sent to peers.
    pub snapshots_sent: u64,
    /// Times the plugin entered fallback.
    pub fallbacks_entered: u64,
    /// Times a peer took over again after fallback.
    pub handbacks: u64,
    /// Requests sent to peers and not answered.
    pub tasks_in_flight: usize,
    /// How long the oldest unanswered request may wait now before the fallback takes over
    /// (adapts to the round trip; see `P2c2rPlugin::adaptive_fallback`), in milliseconds.
    pub fallback_timeout_ms: f64,
    /// Offloaded bodies now.
    pub bodies: usize,
    /// Offloaded agents now.
    pub agents: usize,
    /// Bytes sent to the coordinator.
    pub bytes_sent: u64,
    /// Bytes received from the coordinator.
    pub bytes_received: u64,
    /// Bytes per second sent, averaged over about a second.
    pub bytes_sent_per_sec: f64,
    /// Bytes per second received, averaged over about a second.
    pub bytes_received_per_sec: f64,
    /// Physics ticks applied per second (from any source), averaged over about a second.
    pub ticks_per_sec: f64,
    /// Bytes sent per offloaded body per offloaded tick, over about a second: what the
    /// game costs its uplink per body (every byte counted: physics, AI, heartbeats and
    /// frame headers; 0 while nothing is offloaded).
    pub bytes_sent_per_body_tick: f64,
    /// Bytes received per offloaded body per offloaded tick, over about a second (the
    /// downlink, counted like [`bytes_sent_per_body_tick`](Self::bytes_sent_per_body_tick)).
    pub bytes_received_per_body_tick: f64,
    /// The peer that answered the latest physics result.
    pub serving_peer: Option<String>,
    /// Every peer that has answered a task.
    pub peers_seen: HashSet<String>,
    /// The latest physics tick applied.
    pub last_applied_tick: Option<u64>,
    /// Round-trip times of peer results, in µs.
    pub rtt_us: Histogram<u64>,
    /// Where the current rate window started: when, bytes sent and received, ticks
    /// applied and offloaded, and offloaded body-ticks.
    rate_window: Option<RateWindow>,
    /// Offloaded ticks × bodies, summed over the offloaded ticks.
    body_ticks_offloaded: u64,
    applied: u64,
}

/// The counters at the start of a rate window ([`P2c2rStats::update_rates`]).
#[derive(Clone, Copy, Debug)]
struct RateWindow {
    at: Instant,
    sent: u64,
    received: u64,
    applied: u64,
    body_ticks: u64,
}

impl Default for P2c2rStats {
    fn default() -> Self {
        P2c2rStats {
            mode: OffloadMode::Offloaded,
            connection: ConnectionState::Connecting,
            session_id: String::new(),
            ticks: 0,
            ticks_offloaded: 0,
            fallback_ticks: 0,
            physics_results_from_peers: 0,
            ai_results_from_peers: 0,
            physics_results_local: 0,
            ai_results_local: 0,
            stale_results: 0,
            task_failures: 0,
            rejected_results: 0,
            snapshots_sent: 0,
            fallbacks_entered: 0,
            handbacks: 0,
            tasks_in_flight: 0,
            fallback_timeout_ms: 0.0,
            bodies: 0,
            agents: 0,
            bytes_sent: 0,
            bytes_received: 0,
            bytes_sent_per_sec: 0.0,
            bytes_received_per_sec: 0.0,
            ticks_per_sec: 0.0,
            bytes_sent_per_body_tick: 0.0,
            bytes_received_per_body_tick: 0.0,
            serving_peer: None,
            peers_seen: HashSet::new(),
            last_applied_tick: None,
            rtt_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            rate_window: None,
            body_ticks_offloaded: 0,
            applied: 0,
        }
    }
}

impl std::fmt::Debug for P2c2rStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2c2rStats")
            .field("mode", &self.mode)
            .field("connection", &self.connection)
            .field("session_id", &self.session_id)
            .field("ticks", &self.ticks)
            .field("ticks_offloaded", &self.ticks_offloaded)
            .field("fallback_ticks", &self.fallback_ticks)
            .field("physics_results_from_peers", &self.physics_results_from_peers)
            .field("ai_results_from_peers", &self.ai_results_from_peers)
            .field("physics_results_local", &self.physics_results_local)
            .field("ai_results_local", &self.ai_results_local)
            .field("stale_results", &self.stale_results)
            .field("task_failures", &self.task_failures)
            .field("rejected_results", &self.rejected_results)
            .field("snapshots_sent", &self.snapshots_sent)
            .field("fallbacks_entered", &self.fallbacks_entered)
            .field("handbacks", &self.handbacks)
            .field("tasks_in_flight", &self.tasks_in_flight)
            .field("bodies", &self.bodies)
            .field("agents", &self.agents)
            .field("bytes_sent", &self.bytes_sent)
            .field("bytes_received", &self.bytes_received)
            .field("bytes_sent_per_body_tick", &self.bytes_sent_per_body_tick)
            .field("bytes_received_per_body_tick", &self.bytes_received_per_body_tick)
            .field("serving_peer", &self.serving_peer)
            .field("peers_seen", &self.peers_seen)
            .field("last_applied_tick", &self.last_applied_tick)
            .field("rtt_ms_p50", &self.rtt_ms_p50())
            .field("rtt_ms_p99", &self.rtt_ms_p99())
            .finish_non_exhaustive()
    }
}

impl P2c2rStats {
    /// Records a peer result's round-trip time.
    pub fn record_rtt(&mut self, rtt: Duration) {
        let us = (rtt.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.rtt_us.record(us);
    }

    /// The round-trip time at quantile `q` (0..1), in ms; `None` before any peer result.
    pub fn rtt_ms_quantile(&self, q: f64) -> Option<f64> {
        (!self.rtt_us.is_empty()).then(|| self.rtt_us.value_at_quantile(q) as f64 / 1000.0)
    }

    /// Median round-trip time, ms.
    pub fn rtt_ms_p50(&self) -> Option<f64> {
        self.rtt_ms_quantile(0.5)
    }

    /// 99th-percentile round-trip time, ms.
    pub fn rtt_ms_p99(&self) -> Option<f64> {
        self.rtt_ms_quantile(0.99)
    }

    /// Whether the local fallback steps the world now.
    pub fn in_fallback(&self) -> bool {
        self.mode != OffloadMode::Offloaded
    }

    /// How many distinct peers have served this game.
    pub fn distinct_peers(&self) -> usize {
        self.peers_seen.len()
    }

    pub(crate) fn count_applied(&mut self) {
        self.applied += 1;
    }

    /// Counts one tick sent to peers with `bodies` offloaded bodies.
    pub(crate) fn count_offloaded_tick(&mut self, bodies: usize) {
        self.ticks_offloaded += 1;
        self.body_ticks_offloaded += bodies as u64;
    }

    /// Updates the per-second rates; call once per tick.
    pub(crate) fn update_rates(&mut self, now: Instant) {
        let here = RateWindow {
            at: now,
            sent: self.bytes_sent,
            received: self.bytes_received,
            applied: self.applied,
            body_ticks: self.body_ticks_offloaded,
        };
        let Some(start) = self.rate_window else {
            self.rate_window = Some(here);
            return;
        };
        let dt = now.duration_since(start.at).as_secs_f64();
        if dt < 1.0 {
            return;
        }
        let (sent, received) = (self.bytes_sent - start.sent, self.bytes_received - start.received);
        self.bytes_sent_per_sec = sent as f64 / dt;
        self.bytes_received_per_sec = received as f64 / dt;
        self.ticks_per_sec = (self.applied - start.applied) as f64 / dt;
        let body_ticks = (self.body_ticks_offloaded - start.body_ticks) as f64;
        (self.bytes_sent_per_body_tick, self.bytes_received_per_body_tick) =
            if body_ticks > 0.0 { (sent as f64 / body_ticks, received as f64 / body_ticks) } else { (0.0, 0.0) };
        self.rate_window = Some(here);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_quantiles() {
        let mut s = P2c2rStats::default();
        assert_eq!(s.rtt_ms_p50(), None);
        for ms in 1..=100 {
            s.record_rtt(Duration::from_millis(ms));
        }
        let p50 = s.rtt_ms_p50().unwrap();
        let p99 = s.rtt_ms_p99().unwrap();
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        assert!((98.0..=100.5).contains(&p99), "{p99}");
    }

    #[test]
    fn rates_need_a_second() {
        let mut s = P2c2rStats::default();
        let t0 = Instant::now();
        s.update_rates(t0);
        s.bytes_sent = 1000;
        s.update_rates(t0 + Duration::from_millis(500));
        assert_eq!(s.bytes_sent_per_sec, 0.0);
        s.update_rates(t0 + Duration::from_secs(2));
        assert_eq!(s.bytes_sent_per_sec, 500.0);
    }

    #[test]
    fn bytes_per_body_tick_divide_by_offloaded_body_ticks() {
        let mut s = P2c2rStats::default();
        let t0 = Instant::now();
        s.update_rates(t0);
        for _ in 0..60 {
            s.count_offloaded_tick(100);
        }
        (s.bytes_sent, s.bytes_received) = (6_000, 12_000);
        s.update_rates(t0 + Duration::from_secs(1));
        assert_eq!((s.bytes_sent_per_body_tick, s.bytes_received_per_body_tick), (1.0, 2.0));
        // Nothing offloaded in the next window: no figure rather than a division by zero.
        s.bytes_sent += 500;
        s.update_rates(t0 + Duration::from_secs(2));
        assert_eq!(s.bytes_sent_per_body_tick, 0.0);
        assert_eq!(s.ticks_offloaded, 60);
    }
}
