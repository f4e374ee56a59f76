//! The operator's live view of the fleet: once a second the [`Sampler`] reads the
//! router's state ([`crate::Router::fleet`]) in one lock hold, turns counters into rates
//! against the previous second, and publishes a [`Snapshot`] as JSON for the dashboard's
//! event stream (see [`crate::http`]). It keeps the last [`HISTORY_LEN`] seconds for the
//! charts, and every `summary_interval` logs one line at `info` so that a terminal user
//! sees the coordinator work.
//!
//! Everything here is pure but [`run`]: the sampler is given the time, so its arithmetic
//! is unit-tested.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Router;
use crate::observe::ByteTotals;
use crate::scheduler::{GamerView, PeerView};
use p2c2r_protocol::StatsReport;

/// How often the view is sampled and published.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Samples kept for the charts: five minutes at one a second.
pub const HISTORY_LEN: usize = 300;

/// Most peers, and most gamers, listed in one snapshot (the busiest, by tasks per
/// second); the totals still count all of them.
pub const MAX_LISTED: usize = 200;

/// Latencies kept per window: beyond this, a uniform sample of them (reservoir sampling).
pub const LATENCY_SAMPLES: usize = 4096;

/// One registered connection as the router sees it.
#[derive(Clone, Debug)]
pub struct ConnSample {
    /// Its peer or gamer id.
    pub id: String,
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// How long it has been registered.
    pub connected_for: Duration,
    /// Bytes read from it so far.
    pub bytes_read: u64,
    /// Bytes written to it so far.
    pub bytes_written: u64,
    /// Its last ping round trip.
    pub round_trip: Option<Duration>,
}

/// Everything the view needs, read from the router at once.
#[derive(Clone, Debug)]
pub struct FleetState {
    /// The counters a `stats_report` carries.
    pub stats: StatsReport,
    /// Sessions known.
    pub sessions: usize,
    /// Registered peers.
    pub peers: Vec<(ConnSample, PeerView)>,
    /// Registered gamers.
    pub gamers: Vec<(ConnSample, GamerView)>,
}

/// End-to-end latencies recorded over a window, at most [`LATENCY_SAMPLES`] of them
/// (a uniform sample of all that were recorded), for percentiles.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    micros: Vec<u32>,
    seen: u64,
}

impl LatencyWindow {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.seen += 1;
        if self.micros.len() < LATENCY_SAMPLES {
            self.micros.push(us);
        } else {
            // Reservoir sampling: every latency seen has the same chance to be kept.
            let slot = fastrand::u64(..self.seen);
            if let Some(kept) = self.micros.get_mut(slot as usize) {
                *kept = us;
            }
        }
    }

    /// Latencies recorded.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The `q`-quantile (0..=1) of the latencies kept; `None` when there are none.
    pub fn quantiles(&mut self, qs: &[f64]) -> Vec<Option<Duration>> {
        self.micros.sort_unstable();
        qs.iter()
            .map(|q| {
                if self.micros.is_empty() {
                    return None;
                }
                let rank = ((self.micros.len() as f64 * q).ceil() as usize).clamp(1, self.micros.len());
                Some(Duration::from_micros(u64::from(self.micros[rank - 1])))
            })
            .collect()
    }

    /// Adds another window's kept latencies to this one.
    pub fn absorb(&mut self, other: &LatencyWindow) {
        for &us in &other.micros {
            self.record(Duration::from_micros(u64::from(us)));
        }
    }
}

/// What the dashboard receives every second (JSON). README.md documents the fields.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// The coordinator's version.
    pub version: &'static str,
    /// Seconds since the coordinator started.
    pub uptime_s: f64,
    /// Wall-clock time of the sample, in Unix milliseconds.
    pub time_ms: u64,
    /// Counts now and since start.
    pub totals: Totals,
    /// Rates over the last second.
    pub rates: Rates,
    /// End-to-end task latency percentiles over the last second.
    pub latency_ms: Percentiles,
    /// Peers, sorted by id (at most [`MAX_LISTED`]).
    pub peers: Vec<PeerRow>,
    /// Gamers, sorted by id (at most [`MAX_LISTED`]).
    pub gamers: Vec<GamerRow>,
    /// This second's point on the charts.
    pub sample: Sample,
    /// The charts' points, oldest first; only in the first event a client receives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Sample>>,
}

/// Counts now and since start.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Peers registered now.
    pub peers: u64,
    /// Gamers registered now.
    pub gamers: u64,
    /// Sessions known now.
    pub sessions: u64,
    /// Tasks waiting for a peer now.
    pub queued: u64,
    /// Tasks at peers now.
    pub in_flight: u64,
    /// Payload bytes held now.
    pub pending_bytes: u64,
    /// Tasks accepted since start.
    pub tasks_submitted: u64,
    /// Results delivered since start.
    pub tasks_completed: u64,
    /// Tasks given up since start.
    pub tasks_failed: u64,
    /// Repeated assignments since start.
    pub tasks_redispatched: u64,
    /// Tasks dropped (gamer left) since start.
    pub tasks_dropped: u64,
    /// `error` messages sent since start.
    pub errors_sent: u64,
    /// Bytes received since start.
    pub bytes_in: u64,
    /// Bytes sent since start.
    pub bytes_out: u64,
}

/// Rates over the last second.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rates {
    /// Results delivered per second.
    pub tasks_per_s: f64,
    /// Tasks given up per second.
    pub failed_per_s: f64,
    /// Bytes received per second.
    pub bytes_in_per_s: f64,
    /// Bytes sent per second.
    pub bytes_out_per_s: f64,
}

/// Latency percentiles in milliseconds (`null` without tasks).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// One point on the charts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Unix milliseconds.
    pub t: u64,
    /// Results delivered per second.
    pub tasks_per_s: f64,
    /// Tasks given up per second.
    pub failed_per_s: f64,
    /// Median latency (ms).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency (ms).
    pub p99_ms: Option<f64>,
    /// Bytes received per second.
    pub bytes_in_per_s: f64,
    /// Bytes sent per second.
    pub bytes_out_per_s: f64,
}

/// A peer's row.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    /// Its id.
    pub id: String,
    /// Its address.
    pub address: Option<String>,
    /// The task types it runs (`null`: all).
    pub task_types: Option<Vec<String>>,
    /// What it declared (capped).
    pub declared_capacity: u32,
    /// What it may hold now (learned).
    pub capacity: u32,
    /// Tasks at it now.
    pub in_flight: u32,
    /// Sessions pinned to it.
    pub sessions: usize,
    /// Answers per second over the last second.
    pub tasks_per_s: f64,
    /// Answers since it registered.
    pub tasks_completed: u64,
    /// Its last ping round trip (ms).
    pub rtt_ms: Option<f64>,
    /// Seconds since it registered.
    pub connected_s: f64,
}

/// A gamer's row.
#[derive(Clone, Debug, Serialize)]
pub struct GamerRow {
    /// Its id.
    pub id: String,
    /// Its address.
    pub address: Option<String>,
    /// Its sessions.
    pub sessions: usize,
    /// Its tasks queued or in flight.
    pub pending: usize,
    /// Results delivered to it per second.
    pub tasks_per_s: f64,
    /// Bytes received from it per second.
    pub bytes_in_per_s: f64,
    /// Bytes sent to it per second.
    pub bytes_out_per_s: f64,
    /// Seconds since it registered.
    pub connected_s: f64,
}

/// What the previous sample saw, for rates.
#[derive(Debug, Default)]
struct Previous {
    at: Option<Instant>,
    completed: u64,
    failed: u64,
    bytes_in: u64,
    bytes_out: u64,
    peers: HashMap<String, u64>,
    gamers: HashMap<String, (u64, u64, u64)>,
}

/// Turns successive [`FleetState`]s into [`Snapshot`]s; see the module docs.
#[derive(Debug)]
pub struct Sampler {
    started: Instant,
    previous: Previous,
    history: VecDeque<Sample>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `now - before` per second of `dt` (0 when the counter went back, as after a
/// re-registration).
fn rate(now: u64, before: u64, dt: f64) -> f64 {
    if dt <= 0.0 { 0.0 } else { now.saturating_sub(before) as f64 / dt }
}

impl Sampler {
    /// A sampler for a coordinator that started at `started`.
    pub fn new(started: Instant) -> Self {
        Sampler { started, previous: Previous::default(), history: VecDeque::with_capacity(HISTORY_LEN) }
    }

    /// The history so far, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history.iter().cloned().collect()
    }

    /// Samples `state` at `now` (`wall_ms`: the same moment in Unix milliseconds), with
    /// the latencies recorded since the last sample and the byte totals.
    pub fn sample(
        &mut self,
        state: FleetState,
        latencies: &mut LatencyWindow,
        bytes: (u64, u64),
        now: Instant,
        wall_ms: u64,
    ) -> Snapshot {
        let prev = std::mem::take(&mut self.previous);
        // The first sample has nothing before it: its rates cover the coordinator's life.
        let dt = now.saturating_duration_since(prev.at.unwrap_or(self.started)).as_secs_f64();
        let s = &state.stats;
        let [p50, p99] = latencies.quantiles(&[0.5, 0.99])[..] else { unreachable!("two quantiles asked") };
        let (p50, p99) = (p50.map(ms), p99.map(ms));
        let rates = Rates {
            tasks_per_s: rate(s.tasks_completed, prev.completed, dt),
            failed_per_s: rate(s.tasks_failed, prev.failed, dt),
            bytes_in_per_s: rate(bytes.0, prev.bytes_in, dt),
            bytes_out_per_s: rate(bytes.1, prev.bytes_out, dt),
        };
        let mut next = Previous {
            at: Some(now),
            completed: s.tasks_completed,
            failed: s.tasks_failed,
            bytes_in: bytes.0,
            bytes_out: bytes.1,
            ..Previous::default()
        };
        // A connection new since the last sample: its counters started at zero when it
        // registered.
        let since = |c: &ConnSample| dt.min(c.connected_for.as_secs_f64());
        let mut peers: Vec<PeerRow> = state
            .peers
            .into_iter()
            .map(|(c, v)| {
                let before = prev.peers.get(&c.id).copied();
                let tasks_per_s = rate(v.completed, before.unwrap_or(0), before.map_or_else(|| since(&c), |_| dt));
                next.peers.insert(c.id.clone(), v.completed);
                PeerRow {
                    address: c.addr.map(|a| a.to_string()),
                    task_types: v.task_types,
                    declared_capacity: v.declared_capacity,
                    capacity: v.capacity,
                    in_flight: v.in_flight,
                    sessions: v.sessions,
                    tasks_per_s,
                    tasks_completed: v.completed,
                    rtt_ms: c.round_trip.map(ms),
                    connected_s: c.connected_for.as_secs_f64(),
                    id: c.id,
                }
            })
            .collect();
        let mut gamers: Vec<GamerRow> = state
            .gamers
            .into_iter()
            .map(|(c, v)| {
                let before = prev.gamers.get(&c.id).copied();
                let (done0, in0, out0) = before.unwrap_or((0, 0, 0));
                let dt = before.map_or_else(|| since(&c), |_| dt);
                next.gamers.insert(c.id.clone(), (v.completed, c.bytes_read, c.bytes_written));
                GamerRow {
                    address: c.addr.map(|a| a.to_string()),
                    sessions: v.sessions,
                    pending: v.pending,
                    tasks_per_s: rate(v.completed, done0, dt),
                    bytes_in_per_s: rate(c.bytes_read, in0, dt),
                    bytes_out_per_s: rate(c.bytes_written, out0, dt),
                    connected_s: c.connected_for.as_secs_f64(),
                    id: c.id,
                }
            })
            .collect();
        self.previous = next;
        keep_busiest(&mut peers, |p| p.tasks_per_s, |p| &p.id);
        keep_busiest(&mut gamers, |g| g.tasks_per_s, |g| &g.id);

        let sample = Sample {
            t: wall_ms,
            tasks_per_s: rates.tasks_per_s,
            failed_per_s: rates.failed_per_s,
            p50_ms: p50,
            p99_ms: p99,
            bytes_in_per_s: rates.bytes_in_per_s,
            bytes_out_per_s: rates.bytes_out_per_s,
        };
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(sample.clone());
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: now.saturating_duration_since(self.started).as_secs_f64(),
            time_ms: wall_ms,
            totals: Totals {
                peers: s.peers,
                gamers: s.gamers,
                sessions: state.sessions as u64,
                queued: s.queued_now,
                in_flight: s.in_flight_now,
                pending_bytes: s.pending_bytes_now,
                tasks_submitted: s.tasks_queued,
                tasks_completed: s.tasks_completed,
                tasks_failed: s.tasks_failed,
                tasks_redispatched: s.tasks_redispatched,
                tasks_dropped: s.tasks_dropped,
                errors_sent: s.errors_sent,
                bytes_in: bytes.0,
                bytes_out: bytes.1,
            },
            rates,
            latency_ms: Percentiles { p50, p99 },
            peers,
            gamers,
            sample,
            history: None,
        }
    }
}

/// Keeps the [`MAX_LISTED`] busiest rows, sorted by id.
fn keep_busiest<T>(rows: &mut Vec<T>, busy: impl Fn(&T) -> f64, id: impl Fn(&T) -> &String) {
    if rows.len() > MAX_LISTED {
        rows.sort_by(|a, b| busy(b).total_cmp(&busy(a)));
        rows.truncate(MAX_LISTED);
    }
    rows.sort_by(|a, b| id(a).cmp(id(b)));
}

/// The latest snapshot as the event stream sends it: JSON without the history, and
/// JSON with it (for a client's first event).
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// The snapshot, `history` left out.
    pub event: Arc<str>,
    /// The snapshot with `history`.
    pub with_history: Arc<str>,
}

/// Samples the router every [`SAMPLE_PERIOD`] and publishes to `feed` until `cancel`;
/// logs a summary every `summary_interval` (if set).
pub async fn run(
    router: Arc<Router>,
    bytes: Arc<ByteTotals>,
    summary_interval: Option<Duration>,
    feed: watch::Sender<Published>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let mut sampler = Sampler::new(started);
    let mut summary = Summary::new(started);
    let mut ticks = tokio::time::interval(SAMPLE_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let state = router.fleet();
        let mut latencies = router.take_latencies();
        let now = Instant::now();
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut snapshot = sampler.sample(state, &mut latencies, (bytes.read(), bytes.written()), now, wall_ms);
        summary.absorb(&latencies);
        if let Some(every) = summary_interval
            && now.saturating_duration_since(summary.since) >= every
        {
            summary.log(&snapshot, now);
        }
        // Serialization outside any lock; a failure would be a bug in these types.
        let event = serde_json::to_string(&snapshot).unwrap_or_default();
        snapshot.history = Some(sampler.history());
        let with_history = serde_json::to_string(&snapshot).unwrap_or_default();
        feed.send_replace(Published { event: event.into(), with_history: with_history.into() });
    }
}

/// The periodic one-line summary.
struct Summary {
    since: Instant,
    completed: u64,
    latencies: LatencyWindow,
}

impl Summary {
    fn new(started: Instant) -> Self {
        Summary { since: started, completed: 0, latencies: LatencyWindow::default() }
    }

    fn absorb(&mut self, window: &LatencyWindow) {
        self.latencies.absorb(window);
    }

    fn log(&mut self, s: &Snapshot, now: Instant) {
        let secs = now.saturating_duration_since(self.since).as_secs_f64();
        let tasks_per_s = rate(s.totals.tasks_completed, self.completed, secs);
        let [p99] = self.latencies.quantiles(&[0.99])[..] else { unreachable!("one quantile asked") };
        let p99_ms = p99.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", ms(d)));
        info!(
            peers = s.totals.peers,
            gamers = s.totals.gamers,
            sessions = s.totals.sessions,
            tasks_per_s = format!("{tasks_per_s:.1}"),
            p99_ms,
            queued = s.totals.queued,
            failed = s.totals.tasks_failed,
            "fleet"
        );
        *self = Summary { since: now, completed: s.totals.tasks_completed, latencies: LatencyWindow::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str, connected_for: Duration, bytes: (u64, u64)) -> ConnSample {
        ConnSample {
            id: id.into(),
            addr: Some("127.0.0.1:4000".parse().unwrap()),
            connected_for,
            bytes_read: bytes.0,
            bytes_written: bytes.1,
            round_trip: Some(Duration::from_micros(1500)),
        }
    }

    fn peer(completed: u64) -> PeerView {
        PeerView {
            task_types: Some(vec!["physics_step".into()]),
            declared_capacity: 8,
            capacity: 4,
            in_flight: 2,
            sessions: 1,
            completed,
        }
    }

    fn state(completed: u64, peers: Vec<(ConnSample, PeerView)>) -> FleetState {
        FleetState {
            stats: StatsReport { peers: peers.len() as u64, tasks_completed: completed, ..StatsReport::default() },
            sessions: 1,
            peers,
            gamers: vec![(
                conn("g", Duration::from_secs(100), (completed * 10, completed * 20)),
                GamerView { sessions: 1, pending: 3, completed },
            )],
        }
    }

    #[test]
    fn rates_are_per_second_since_the_last_sample() {
        let t0 = Instant::now();
        let mut sampler = Sampler::new(t0);
        let mut none = LatencyWindow::default();
        let first = sampler.sample(state(0, vec![]), &mut none, (0, 0), t0 + Duration::from_secs(1), 1000);
        assert_eq!(first.rates.tasks_per_s, 0.0);
        assert_eq!(first.latency_ms.p99, None);

        let mut window = LatencyWindow::default();
        for ms in 1..=100 {
            window.record(Duration::from_millis(ms));
        }
        // A peer that registered half a second ago and already answered 10.
        let peers = vec![(conn("p", Duration::from_millis(500), (0, 0)), peer(10))];
        let snap = sampler.sample(state(60, peers), &mut window, (600, 1200), t0 + Duration::from_secs(3), 3000);
        assert_eq!(snap.rates.tasks_per_s, 30.0);
        assert_eq!(snap.rates.bytes_in_per_s, 300.0);
        assert_eq!(snap.latency_ms.p50, Some(50.0));
        assert_eq!(snap.latency_ms.p99, Some(99.0));
        assert_eq!(snap.peers[0].tasks_per_s, 20.0, "over its half second, not the two");
        assert_eq!(snap.peers[0].rtt_ms, Some(1.5));
        assert_eq!(snap.gamers[0].tasks_per_s, 30.0);
        assert_eq!(snap.gamers[0].bytes_out_per_s, 600.0);

        // The peer re-registered: its counter restarted; the rate is not negative.
        let peers = vec![(conn("p", Duration::from_millis(100), (0, 0)), peer(2))];
        let snap = sampler.sample(state(61, peers), &mut none, (600, 1200), t0 + Duration::from_secs(4), 4000);
        assert_eq!(snap.peers[0].tasks_per_s, 0.0);
        assert_eq!(sampler.history().len(), 3);
        assert_eq!(sampler.history()[1].p99_ms, Some(99.0));
    }

    #[test]
    fn history_and_lists_are_bounded() {
        let t0 = Instant::now();
        let mut sampler = Sampler::new(t0);
        let many: Vec<_> = (0..MAX_LISTED + 50)
            .map(|i| (conn(&format!("peer-{i:04}"), Duration::from_secs(9), (0, 0)), peer(i as u64)))
            .collect();
        let mut none = LatencyWindow::default();
        let snap = sampler.sample(state(0, many), &mut none, (0, 0), t0 + Duration::from_secs(1), 0);
        assert_eq!(snap.peers.len(), MAX_LISTED);
        assert_eq!(snap.peers[0].id, "peer-0050", "the busiest are kept, sorted by id");
        for i in 0..HISTORY_LEN + 10 {
            sampler.sample(state(0, vec![]), &mut none, (0, 0), t0 + Duration::from_secs(2 + i as u64), 0);
        }
        assert_eq!(sampler.history().len(), HISTORY_LEN);
    }

    #[test]
    fn a_latency_window_keeps_a_bounded_uniform_sample() {
        let mut window = LatencyWindow::default();
        for i in 0..(LATENCY_SAMPLES as u64 * 4) {
            window.record(Duration::from_micros(i % 1000));
        }
        assert_eq!(window.seen(), LATENCY_SAMPLES as u64 * 4);
        assert_eq!(window.micros.len(), LATENCY_SAMPLES);
        let [p50] = window.quantiles(&[0.5])[..] else { unreachable!() };
        let p50 = p50.unwrap().as_micros();
        assert!((400..600).contains(&p50), "{p50}");
    }
}
