//! Counters for HUDs, examples and tests ([`P2c2rStats`]) and the Bevy diagnostics the
//! plugin publishes ([`diagnostics`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bevy::prelude::Resource;
use hdrhistogram::Histogram;
use p2c2r_protocol::SessionStatus;

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
    /// ([`NetworkStats::bytes_sent_per_body_tick`](super::NetworkStats::bytes_sent_per_body_tick)).
    pub const BYTES_SENT_PER_BODY_TICK: DiagnosticPath = DiagnosticPath::const_new("p2c2r/bytes_sent_per_body_tick");
    /// Bytes received per offloaded body per offloaded tick, over about a second.
    pub const BYTES_RECEIVED_PER_BODY_TICK: DiagnosticPath =
        DiagnosticPath::const_new("p2c2r/bytes_received_per_body_tick");
    /// Smoothed round trip of physics results from peers, ms (the fallback timeout's
    /// measure, [`NetworkStats::round_trip_ms`](super::NetworkStats::round_trip_ms)); none
    /// before the first.
    pub const ROUND_TRIP_MS: DiagnosticPath = DiagnosticPath::const_new("p2c2r/round_trip_ms");
    /// Its smoothed variation, ms.
    pub const ROUND_TRIP_VARIATION_MS: DiagnosticPath = DiagnosticPath::const_new("p2c2r/round_trip_variation_ms");
    /// The playout buffer's target depth, ticks
    /// ([`PlayoutStats::target_ticks`](super::PlayoutStats::target_ticks)).
    pub const PLAYOUT_TARGET_TICKS: DiagnosticPath = DiagnosticPath::const_new("p2c2r/playout_target_ticks");
    /// The measured jitter of physics results from peers, ticks.
    pub const PLAYOUT_JITTER_TICKS: DiagnosticPath = DiagnosticPath::const_new("p2c2r/playout_jitter_ticks");
    /// Replicas the coordinator wants for the physics session; none before its first
    /// `session_status`.
    pub const REPLICAS_WANTED: DiagnosticPath = DiagnosticPath::const_new("p2c2r/replicas_wanted");
    /// Replicas in step with the physics session.
    pub const REPLICAS_LIVE: DiagnosticPath = DiagnosticPath::const_new("p2c2r/replicas_live");
    /// Ticks of the physics session on which replicas disagreed.
    pub const REPLICA_DISAGREEMENTS: DiagnosticPath = DiagnosticPath::const_new("p2c2r/replica_disagreements");
    /// Corrections of the physics session (full states sent after a liar served it).
    pub const REPLICA_CORRECTIONS: DiagnosticPath = DiagnosticPath::const_new("p2c2r/replica_corrections");

    /// Every path above.
    pub const ALL: [DiagnosticPath; 17] = [
        RTT_MS,
        TASKS_IN_FLIGHT,
        TICKS_OFFLOADED,
        TICKS_FALLBACK,
        BYTES_SENT,
        BYTES_RECEIVED,
        FALLBACK,
        BYTES_SENT_PER_BODY_TICK,
        BYTES_RECEIVED_PER_BODY_TICK,
        ROUND_TRIP_MS,
        ROUND_TRIP_VARIATION_MS,
        PLAYOUT_TARGET_TICKS,
        PLAYOUT_JITTER_TICKS,
        REPLICAS_WANTED,
        REPLICAS_LIVE,
        REPLICA_DISAGREEMENTS,
        REPLICA_CORRECTIONS,
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
    /// Offloaded bodies now.
    pub bodies: usize,
    /// Offloaded agents now.
    pub agents: usize,
    /// Physics ticks applied per second (from any source), averaged over about a second.
    pub ticks_per_sec: f64,
    /// The peer that answered the latest physics result.
    pub serving_peer: Option<String>,
    /// Every peer that has answered a task.
    pub peers_seen: HashSet<String>,
    /// The latest physics tick applied.
    pub last_applied_tick: Option<u64>,
    /// Round-trip times of peer results, in µs.
    pub rtt_us: Histogram<u64>,
    /// What the link to the coordinator carries and how fast peers answer.
    pub network: NetworkStats,
    /// The playout buffer that paces peers' results.
    pub playout: PlayoutStats,
    /// How the coordinator replicates the physics session.
    pub replication: ReplicationStats,
    /// Collision and contact-force events delivered.
    pub events: EventStats,
    /// What character controllers pushed and corrected.
    pub characters: CharacterStats,
    /// The latest `session_status` of each session reported, at most
    /// [`P2c2rStats::MAX_SESSION_STATUSES`].
    session_statuses: HashMap<String, SessionStatus>,
    /// Where the current rate window started: when, bytes sent and received, ticks
    /// applied and offloaded, and offloaded body-ticks.
    rate_window: Option<RateWindow>,
    /// Offloaded ticks × bodies, summed over the offloaded ticks.
    body_ticks_offloaded: u64,
    applied: u64,
}

/// What the link to the coordinator carries and how fast peers answer
/// ([`P2c2rStats::network`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkStats {
    /// Bytes sent to the coordinator.
    pub bytes_sent: u64,
    /// Bytes received from the coordinator.
    pub bytes_received: u64,
    /// Bytes per second sent, averaged over about a second.
    pub bytes_sent_per_sec: f64,
    /// Bytes per second received, averaged over about a second.
    pub bytes_received_per_sec: f64,
    /// Bytes sent per offloaded body per offloaded tick, over about a second: what the
    /// game costs its uplink per body (every byte counted: physics, AI, heartbeats and
    /// frame headers; 0 while nothing is offloaded).
    pub bytes_sent_per_body_tick: f64,
    /// Bytes received per offloaded body per offloaded tick, over about a second.
    pub bytes_received_per_body_tick: f64,
    /// The smoothed round trip of physics results from peers (RFC 6298, from the tick's
    /// send to its result's arrival, as the Bevy systems see them), in ms: what the
    /// adaptive fallback timeout is made of; `None` before the first result.
    pub round_trip_ms: Option<f64>,
    /// Its smoothed variation (mean deviation), in ms: the round trip's jitter.
    pub round_trip_variation_ms: f64,
    /// How long the oldest unanswered request may wait now before the fallback takes over
    /// (adapts to the round trip, see [`crate::FallbackSettings::adaptive`]), in ms.
    pub fallback_timeout_ms: f64,
    /// Requests sent to peers and not answered.
    pub tasks_in_flight: usize,
}

/// The playout buffer that paces peers' physics results ([`P2c2rStats::playout`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlayoutStats {
    /// Its target depth now, in ticks: physics results from peers kept in reserve to
    /// absorb their jitter, `ceil(3 × jitter_ticks − 1/4)` within 0..=6 (0 while not
    /// offloaded: local results come one per tick).
    pub target_ticks: usize,
    /// The measured jitter of physics results from peers, in ticks: the mean deviation of
    /// how many ticks after its own each result arrived.
    pub jitter_ticks: f64,
    /// Physics results waiting after this tick's were applied.
    pub queued: usize,
    /// Ticks on which no result was applied on purpose, to deepen the buffer (one at a
    /// time, at least 16 ticks apart).
    pub holds: u64,
    /// Ticks on which a physics result was expected from peers and none was there to
    /// apply (once results flowed): each is a tick on which offloaded bodies did not move.
    pub starved_ticks: u64,
}

/// How the coordinator replicates the physics session, from its latest `session_status`,
/// as received (a disconnection does not clear it; [`P2c2rStats::session_status`] has
/// every session's) ([`P2c2rStats::replication`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// Replicas the coordinator wants: 1 when not replicated, 2 or more when replicated
    /// (2 for an audited session); 0 until the coordinator sent a status (a coordinator
    /// that does not replicate sends none).
    pub wanted: u8,
    /// Replicas in step with the session now (answering its ticks).
    pub live: u8,
    /// A hidden second replica's answers are compared, never delivered.
    pub audited: bool,
    /// Only answers two replicas agree on are delivered.
    pub strict: bool,
    /// Ticks on which the replicas disagreed.
    pub disagreements: u64,
    /// Full-state answers the coordinator sent to correct the session.
    pub corrections: u64,
}

/// Collision and contact-force events delivered as messages ([`P2c2rStats::events`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EventStats {
    /// [`crate::CollisionEvent`]s written.
    pub collisions: u64,
    /// [`crate::ContactForceEvent`]s written.
    pub contact_forces: u64,
    /// Pairs of bodies touching now (started, not stopped).
    pub touching_pairs: usize,
    /// Both kinds, per second, averaged over about a second.
    pub per_sec: f64,
}

/// What [`crate::KinematicCharacterController`]s did ([`P2c2rStats::characters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CharacterStats {
    /// Impulses sent to bodies a character pushed.
    pub pushes: u64,
    /// Moves that began by pushing a character out of something the world put where it
    /// stood (the local move and the world disagreed).
    pub corrections: u64,
    /// How far, in metres, in all.
    pub corrected_m: f64,
}

/// The counters at the start of a rate window ([`P2c2rStats::update_rates`]).
#[derive(Clone, Copy, Debug)]
struct RateWindow {
    at: Instant,
    sent: u64,
    received: u64,
    applied: u64,
    body_ticks: u64,
    events: u64,
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
            bodies: 0,
            agents: 0,
            ticks_per_sec: 0.0,
            serving_peer: None,
            peers_seen: HashSet::new(),
            last_applied_tick: None,
            rtt_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            network: NetworkStats::default(),
            playout: PlayoutStats::default(),
            replication: ReplicationStats::default(),
            events: EventStats::default(),
            characters: CharacterStats::default(),
            session_statuses: HashMap::new(),
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
            .field("bodies", &self.bodies)
            .field("agents", &self.agents)
            .field("serving_peer", &self.serving_peer)
            .field("peers_seen", &self.peers_seen)
            .field("last_applied_tick", &self.last_applied_tick)
            .field("rtt_ms_p50", &self.rtt_ms_p50())
            .field("rtt_ms_p99", &self.rtt_ms_p99())
            .field("network", &self.network)
            .field("playout", &self.playout)
            .field("replication", &self.replication)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl P2c2rStats {
    /// Sessions whose latest `session_status` is kept (the plugin's physics and AI
    /// sessions, and custom tasks' sessions); when full, another session's is forgotten
    /// for a new one, never the physics session's.
    pub const MAX_SESSION_STATUSES: usize = 16;

    /// The latest `session_status` the coordinator sent for `session_id` (the physics
    /// session is [`session_id`](Self::session_id), the AI session that id with `:ai`).
    pub fn session_status(&self, session_id: &str) -> Option<&SessionStatus> {
        self.session_statuses.get(session_id)
    }

    /// Whether the coordinator runs the physics session on more than one replica
    /// (replicated or audited), as of its latest `session_status`.
    pub fn replicated(&self) -> bool {
        self.replication.wanted > 1 || self.replication.audited
    }

    /// Keeps a `session_status`: the latest for its session, and the physics session's
    /// figures. Any session id and any numbers are taken as they are (the map is bounded).
    pub(crate) fn record_session_status(&mut self, status: SessionStatus) {
        if status.session_id == self.session_id {
            self.replication.wanted = status.replicas_wanted;
            self.replication.live = status.replicas_live;
            self.replication.audited = status.audited;
            self.replication.strict = status.strict;
            self.replication.disagreements = status.disagreements;
            self.replication.corrections = status.corrections;
        }
        if !self.session_statuses.contains_key(&status.session_id)
            && self.session_statuses.len() >= Self::MAX_SESSION_STATUSES
        {
            let other = self.session_statuses.keys().find(|id| **id != self.session_id).cloned();
            if let Some(other) = other {
                self.session_statuses.remove(&other);
            }
        }
        self.session_statuses.insert(status.session_id.clone(), status);
    }

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
            sent: self.network.bytes_sent,
            received: self.network.bytes_received,
            applied: self.applied,
            body_ticks: self.body_ticks_offloaded,
            events: self.events.collisions + self.events.contact_forces,
        };
        let Some(start) = self.rate_window else {
            self.rate_window = Some(here);
            return;
        };
        let dt = now.duration_since(start.at).as_secs_f64();
        if dt < 1.0 {
            return;
        }
        let (sent, received) = (self.network.bytes_sent - start.sent, self.network.bytes_received - start.received);
        self.network.bytes_sent_per_sec = sent as f64 / dt;
        self.network.bytes_received_per_sec = received as f64 / dt;
        self.ticks_per_sec = (self.applied - start.applied) as f64 / dt;
        self.events.per_sec = (here.events - start.events) as f64 / dt;
        let body_ticks = (self.body_ticks_offloaded - start.body_ticks) as f64;
        let network = &mut self.network;
        (network.bytes_sent_per_body_tick, network.bytes_received_per_body_tick) =
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
        s.network.bytes_sent = 1000;
        s.update_rates(t0 + Duration::from_millis(500));
        assert_eq!(s.network.bytes_sent_per_sec, 0.0);
        s.update_rates(t0 + Duration::from_secs(2));
        assert_eq!(s.network.bytes_sent_per_sec, 500.0);
    }

    fn status(session_id: &str, wanted: u8, live: u8) -> SessionStatus {
        SessionStatus {
            session_id: session_id.into(),
            replicas_wanted: wanted,
            replicas_live: live,
            ..Default::default()
        }
    }

    #[test]
    fn the_physics_sessions_status_is_published_and_every_sessions_kept_bounded() {
        let mut s = P2c2rStats { session_id: "s-1".into(), ..Default::default() };
        assert!(!s.replicated() && s.replication.wanted == 0, "nothing before the first status");
        s.record_session_status(SessionStatus {
            strict: true,
            disagreements: 2,
            corrections: 1,
            ..status("s-1", 2, 2)
        });
        assert_eq!(
            (s.replication.wanted, s.replication.live, s.replication.disagreements, s.replication.corrections),
            (2, 2, 2, 1)
        );
        assert!(s.replicated() && s.replication.strict && !s.replication.audited);
        // Another session (the AI's, a custom one, or one the plugin never used) is kept
        // apart; absurd numbers are taken as they come.
        s.record_session_status(SessionStatus { disagreements: u64::MAX, ..status("s-1:ai", 0, 255) });
        assert_eq!(s.replication.live, 2);
        assert_eq!(s.session_status("s-1:ai").map(|st| st.disagreements), Some(u64::MAX));
        for i in 0..100 {
            s.record_session_status(status(&format!("unknown-{i}"), u8::MAX, u8::MAX));
            assert!(s.session_statuses.len() <= P2c2rStats::MAX_SESSION_STATUSES);
        }
        assert_eq!(s.session_status("s-1").map(|st| st.replicas_wanted), Some(2), "the physics session's stays");
        assert_eq!(s.session_status("unknown-99").map(|st| st.replicas_live), Some(u8::MAX));
        // Audited, then back to one replica.
        s.record_session_status(SessionStatus { audited: true, ..status("s-1", 2, 1) });
        assert!(s.replicated() && s.replication.audited && !s.replication.strict);
        s.record_session_status(status("s-1", 1, 1));
        assert!(!s.replicated());
    }

    #[test]
    fn bytes_per_body_tick_divide_by_offloaded_body_ticks() {
        let mut s = P2c2rStats::default();
        let t0 = Instant::now();
        s.update_rates(t0);
        for _ in 0..60 {
            s.count_offloaded_tick(100);
        }
        (s.network.bytes_sent, s.network.bytes_received) = (6_000, 12_000);
        s.update_rates(t0 + Duration::from_secs(1));
        assert_eq!((s.network.bytes_sent_per_body_tick, s.network.bytes_received_per_body_tick), (1.0, 2.0));
        // Nothing offloaded in the next window: no figure rather than a division by zero.
        s.network.bytes_sent += 500;
        s.update_rates(t0 + Duration::from_secs(2));
        assert_eq!(s.network.bytes_sent_per_body_tick, 0.0);
        assert_eq!(s.ticks_offloaded, 60);
    }
}
