//! What `GET /metrics` reports, in the Prometheus text format (through
//! `prometheus-client`).
//!
//! Two kinds of metric, so that every number has one source:
//! - **Instruments** ([`Metrics`]) record events as they happen: latency and round-trip
//!   histograms, errors sent by code, connections refused at accept.
//! - **State** is read at scrape time from where it already lives ([`StateCollector`]):
//!   the router's counters and gauges (the same ones a `stats_report` carries), the
//!   admission counts, the byte totals. Nothing is counted twice.
//!
//! Every name has the `p2c2r_` prefix, counters end in `_total`, durations are in seconds
//! and sizes in bytes. README.md lists them all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::admission::Admission;
use crate::observe::ByteTotals;
use crate::router::Router;

/// The metric name prefix.
pub const PREFIX: &str = "p2c2r";

/// An `error` message's code, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code (`queue_full`, `frame_too_large`, ...).
    pub code: String,
}

/// Why a connection was refused at accept, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `per_address`, `unregistered` or `connections`.
    pub reason: &'static str,
}

/// The instruments that record events as they happen; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    /// From a task's submission to its result being queued for the gamer, in seconds.
    pub task_latency: Histogram,
    /// From an assignment being sent to the peer to its result arriving, in seconds.
    pub peer_task_duration: Histogram,
    /// Ping round trips to peers, in seconds.
    pub peer_round_trip: Histogram,
    /// Ping round trips to gamers, in seconds.
    pub gamer_round_trip: Histogram,
    /// `error` messages sent, by code.
    pub errors_sent: Family<CodeLabel, Counter>,
    /// Connections refused before the handshake, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Frames large enough to be decoded off the runtime's threads.
    pub large_frames: Counter,
    /// Frames sent to peers in chunks, and received from them so.
    pub chunked_frames_sent: Counter,
    /// See `chunked_frames_sent`.
    pub chunked_frames_received: Counter,
    /// Physics sessions that should have been replicated or audited but run on one peer,
    /// because their gamer already had its most replicated sessions.
    pub sessions_unreplicated: Counter,
}

/// Histogram buckets from 0.5 ms to about 16 s, doubling: the range of a tick's round
/// trip on a LAN up to a task that used every attempt.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            task_latency: Histogram::new(latency_buckets()),
            peer_task_duration: Histogram::new(latency_buckets()),
            peer_round_trip: Histogram::new(latency_buckets()),
            gamer_round_trip: Histogram::new(latency_buckets()),
            errors_sent: Family::default(),
            connections_refused: Family::default(),
            sessions_unreplicated: Counter::default(),
            large_frames: Counter::default(),
            chunked_frames_sent: Counter::default(),
            chunked_frames_received: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts one `error` message sent.
    pub fn error_sent(&self, code: &str) {
        self.errors_sent.get_or_create(&CodeLabel { code: code.to_owned() }).inc();
    }

    /// Counts one connection refused at accept.
    pub fn refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// How long the router's state lock was held: every hold (frames, deadlines, departures,
/// sweeps, the operator's views, replay batches), its total and the longest, and of those
/// the holds that handled a frame. The time spent waiting for the lock is not counted.
/// Everything a frame needs that does not need the state (decoding, hashing an answer) is
/// done before the lock, so a frame's hold is what it costs every other connection.
#[derive(Debug, Default)]
pub struct LockHeld {
    holds: AtomicU64,
    held_ns: AtomicU64,
    longest_ns: AtomicU64,
    frames: AtomicU64,
    frame_ns: AtomicU64,
}

impl LockHeld {
    /// Records a hold that began at `since` and just ended; `frame`: it handled a frame.
    pub(crate) fn record(&self, since: Instant, frame: bool) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.holds.fetch_add(1, Ordering::Relaxed);
        self.held_ns.fetch_add(ns, Ordering::Relaxed);
        self.longest_ns.fetch_max(ns, Ordering::Relaxed);
        if frame {
            self.frames.fetch_add(1, Ordering::Relaxed);
            self.frame_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Holds since start.
    pub fn holds(&self) -> u64 {
        self.holds.load(Ordering::Relaxed)
    }

    /// The lock held for all holds together.
    pub fn held(&self) -> Duration {
        Duration::from_nanos(self.held_ns.load(Ordering::Relaxed))
    }

    /// The longest one hold lasted.
    pub fn longest(&self) -> Duration {
        Duration::from_nanos(self.longest_ns.load(Ordering::Relaxed))
    }

    /// Frames handled since start.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// The lock held for handling frames, all together.
    pub fn frames_held(&self) -> Duration {
        Duration::from_nanos(self.frame_ns.load(Ordering::Relaxed))
    }
}

/// The registry `GET /metrics` encodes: the router's instruments and its state.
pub fn registry(router: Arc<Router>, admission: Arc<Admission>, bytes: Arc<ByteTotals>) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    let m = router.metrics().clone();
    registry.register_with_unit(
        "task_latency",
        "Time from a task's submission to its result being sent to the gamer",
        Unit::Seconds,
        m.task_latency.clone(),
    );
    registry.register_with_unit(
        "peer_task_duration",
        "Time from an assignment being sent to a peer to its result arriving",
        Unit::Seconds,
        m.peer_task_duration.clone(),
    );
    registry.register_with_unit(
        "peer_round_trip",
        "WebSocket ping round trips to peers",
        Unit::Seconds,
        m.peer_round_trip.clone(),
    );
    registry.register_with_unit(
        "gamer_round_trip",
        "WebSocket ping round trips to gamers",
        Unit::Seconds,
        m.gamer_round_trip.clone(),
    );
    registry.register("errors_sent", "Error messages sent to clients, by code", m.errors_sent.clone());
    registry.register(
        "connections_refused",
        "Connections refused before the WebSocket handshake, by reason",
        m.connections_refused.clone(),
    );
    registry.register(
        "sessions_unreplicated",
        "Physics sessions run on one peer although replication or an audit was due: their gamer had its most replicated sessions",
        m.sessions_unreplicated.clone(),
    );
    registry.register(
        "large_frames",
        "Frames of --off-runtime-frame-bytes or more, decoded on the blocking pool instead of the threads serving every connection",
        m.large_frames.clone(),
    );
    registry.register(
        "chunked_frames_sent",
        "Frames sent to peers in chunks, interleaved with the other frames on the connection",
        m.chunked_frames_sent.clone(),
    );
    registry.register(
        "chunked_frames_received",
        "Frames received from peers in chunks and put back together",
        m.chunked_frames_received.clone(),
    );
    registry.register_collector(Box::new(StateCollector { router, admission, bytes }));
    registry
}

/// Reads the state-held metrics at scrape time; see the module docs.
#[derive(Debug)]
pub struct StateCollector {
    router: Arc<Router>,
    admission: Arc<Admission>,
    bytes: Arc<ByteTotals>,
}

/// A label set of one `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// A label set of one `role`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// A label set of one `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

fn labelled_gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(L, f64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, value: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, unit, c.metric_type())?)
}

fn labelled_counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(L, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // One lock hold: the figures agree with one another.
        let snapshot = self.router.snapshot();
        let s = &snapshot.stats;
        let sessions = snapshot.sessions;
        let conns = self.admission.counts();
        let bytes = Some(&Unit::Bytes);
        gauge(&mut e, "peers_connected", "Peers registered now", None, s.peers)?;
        gauge(&mut e, "gamers_connected", "Gamers registered now", None, s.gamers)?;
        gauge(&mut e, "connections_open", "Connections open now, registered or not", None, conns.connections as u64)?;
        gauge(
            &mut e,
            "connections_unregistered",
            "Connections open now that have not registered",
            None,
            conns.unregistered as u64,
        )?;
        counter(
            &mut e,
            "unregistered_evicted",
            "Unregistered connections closed at the unregistered cap to make room for a newcomer (the oldest of \
             the address holding the most)",
            None,
            self.admission.evicted(),
        )?;
        gauge(&mut e, "sessions", "Sessions known now, all gamers together", None, sessions as u64)?;
        gauge(&mut e, "queue_depth", "Tasks waiting for a peer now", None, s.queued_now)?;
        gauge(&mut e, "tasks_in_flight", "Tasks assigned to peers and not yet answered now", None, s.in_flight_now)?;
        gauge(&mut e, "pending_payload", "Payload bytes of the tasks held now", bytes, s.pending_bytes_now)?;
        counter(&mut e, "tasks_submitted", "Tasks accepted from gamers", None, s.tasks_queued)?;
        counter(
            &mut e,
            "task_assignments",
            "Assignments sent to peers, first attempts and repeats",
            None,
            s.tasks_assigned,
        )?;
        counter(
            &mut e,
            "task_redispatches",
            "Assignments repeated after a missed deadline or a lost peer",
            None,
            s.tasks_redispatched,
        )?;
        labelled_counter(
            &mut e,
            "tasks",
            "Tasks ended, by outcome: completed (result delivered), failed (given up), dropped (gamer left)",
            &[
                (OutcomeLabel { outcome: "completed" }, s.tasks_completed),
                (OutcomeLabel { outcome: "failed" }, s.tasks_failed),
                (OutcomeLabel { outcome: "dropped" }, s.tasks_dropped),
            ],
        )?;
        counter(
            &mut e,
            "tasks_poisoned",
            "Of the failed tasks, those quarantined as poison (their peers kept disconnecting)",
            None,
            s.tasks_poisoned,
        )?;
        counter(
            &mut e,
            "peers_quarantined",
            "Peers quarantined: for missing task deadlines in a row, or outvoted by replicas",
            None,
            s.peers_quarantined,
        )?;
        counter(
            &mut e,
            "ticks_compared",
            "Ticks of replicated or audited sessions answered by two or more replicas",
            None,
            s.ticks_compared,
        )?;
        counter(
            &mut e,
            "replica_disagreements",
            "Ticks on which a session's replicas answered differently",
            None,
            s.replica_disagreements,
        )?;
        counter(
            &mut e,
            "peers_caught_lying",
            "Peers outvoted by two or more agreeing replicas, and quarantined",
            None,
            s.peers_caught_lying,
        )?;
        counter(
            &mut e,
            "sessions_corrected",
            "Full-state ticks sent to correct a session a liar had served",
            None,
            s.sessions_corrected,
        )?;
        counter(
            &mut e,
            "replicas_started",
            "Replicas started by replaying a session's log (replacements, tie-breakers)",
            None,
            s.replicas_started,
        )?;
        counter(
            &mut e,
            "disputes_unsettled",
            "Disputes between replicas nothing could settle (their peers kept apart since)",
            None,
            s.disputes_unsettled,
        )?;
        counter(
            &mut e,
            "peers_quarantined_for_disputes",
            "Peers quarantined for unsettled disputes with established peers of several networks",
            None,
            s.peers_quarantined_for_disputes,
        )?;
        counter(
            &mut e,
            "sessions_unreplicated_started",
            "Unreplicated physics sessions started (the sessions audits are drawn from)",
            None,
            s.sessions_unreplicated_started,
        )?;
        counter(&mut e, "sessions_audited", "Unreplicated physics sessions audited", None, s.sessions_audited)?;
        let (configured, achieved) = snapshot.audit_fractions;
        labelled_gauge(
            &mut e,
            "audit_fraction",
            "Fraction of unreplicated physics sessions audited: configured, and achieved since start",
            &[(KindLabel { kind: "configured" }, configured), (KindLabel { kind: "achieved" }, achieved)],
        )?;
        let (peers_evicted, gamers_evicted) = snapshot.evictions;
        labelled_counter(
            &mut e,
            "evictions",
            "Registered connections evicted for silence, by role",
            &[(RoleLabel { role: "peer" }, peers_evicted), (RoleLabel { role: "gamer" }, gamers_evicted)],
        )?;
        let (absent, absent_evicted) = snapshot.absent_gamers;
        gauge(
            &mut e,
            "gamers_absent",
            "Gamers away within their resume grace holding a slot (work pending)",
            None,
            absent as u64,
        )?;
        counter(
            &mut e,
            "absent_gamers_evicted",
            "Absent gamers whose slot went to a newcomer (the address holding the most absent slots first)",
            None,
            absent_evicted,
        )?;
        let held = self.router.lock_held();
        counter(&mut e, "frames_handled", "Frames the router handled", None, held.frames())?;
        let seconds = |e: &mut DescriptorEncoder, name: &str, help: &str, value: Duration| {
            let c = ConstCounter::new(value.as_secs_f64());
            c.encode(e.encode_descriptor(name, help, Some(&Unit::Seconds), c.metric_type())?)
        };
        seconds(&mut e, "frame_lock_held", "Time handling frames held the router's state lock", held.frames_held())?;
        counter(
            &mut e,
            "state_lock_holds",
            "Holds of the router's state lock, frames and all else",
            None,
            held.holds(),
        )?;
        seconds(&mut e, "state_lock_held", "Time the router's state lock was held, all holds together", held.held())?;
        let longest = ConstGauge::new(held.longest().as_secs_f64());
        longest.encode(e.encode_descriptor(
            "state_lock_longest_hold",
            "The longest one hold of the router's state lock lasted since start",
            Some(&Unit::Seconds),
            longest.metric_type(),
        )?)?;
        counter(&mut e, "received", "Bytes received on WebSocket connections", bytes, self.bytes.read())?;
        counter(&mut e, "sent", "Bytes sent on WebSocket connections", bytes, self.bytes.written())?;
        Ok(())
    }
}
