//! The offload controller: the state machine that decides who steps the world this tick
//! (peers or the local fallback), when to send a snapshot, which results to apply, and
//! why the mode changed. Pure logic on plain data, unit-tested without sockets or Bevy.
//! (Not called a "link": in networking crates such as lightyear a link is the transport.)
//!
//! Every kind of offloaded task (physics, AI) is a [`Stream`] of ticks: what is in flight,
//! the tick the peer's state started from (its epoch), whether the peer must be sent a
//! fresh start (a physics snapshot, a navigation grid), the latest tick applied. The
//! controller keeps one per [`StreamKind`], and plans each tick as one [`StreamPlan`]
//! per kind; for the controller, a new kind of task is one more entry in
//! [`StreamKind::ALL`] with its flags ([`StreamKind::leads`],
//! [`StreamKind::keeps_local_state`]), not new code paths.
//!
//! The rule that keeps the worlds in sync: a world only ever receives a contiguous stream
//! of requests that starts with a snapshot of the authoritative state. The peer's world
//! gets a snapshot whenever it starts, resyncs or takes over from the fallback; the local
//! world gets one when the fallback starts after peers stopped answering. While handing
//! back, the peer and the local world get the *same* requests, so (rapier being
//! deterministic) they compute the same states and the hand-over is seamless.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::messages::ModeChanged;

/// Who is stepping the game's physics and AI right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OffloadMode {
    /// Peers step the world; results come over the network.
    #[default]
    Offloaded,
    /// No peer answers (or no coordinator): the plugin steps the world in-process with
    /// the engine the peers run, `p2c2r_sim` (or, with fallback disabled, waits).
    Fallback,
    /// A peer is back: it has been sent a snapshot and gets the same requests as the
    /// local world, until its first answer arrives.
    HandingBack,
}

impl OffloadMode {
    /// `"offloaded"`, `"fallback"` or `"handing_back"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadMode::Offloaded => "offloaded",
            OffloadMode::Fallback => "fallback",
            OffloadMode::HandingBack => "handing_back",
        }
    }
}

impl std::fmt::Display for OffloadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one stream does at one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StreamPlan {
    /// Send this tick's request to the peer.
    pub to_peer: bool,
    /// Compute it locally.
    pub local: bool,
    /// The request starts the state afresh: a physics snapshot (for the peer, the local
    /// world, or both: they get the same request), the AI's grid.
    pub reset: bool,
}

/// What to do at one tick: one [`StreamPlan`] per [`StreamKind`] (index it by kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TickPlan {
    streams: [StreamPlan; StreamKind::ALL.len()],
    /// Send a probe (an empty snapshot) to see whether a peer answers.
    pub probe: bool,
}

impl std::ops::Index<StreamKind> for TickPlan {
    type Output = StreamPlan;
    fn index(&self, kind: StreamKind) -> &StreamPlan {
        &self.streams[kind.index()]
    }
}

impl std::ops::IndexMut<StreamKind> for TickPlan {
    fn index_mut(&mut self, kind: StreamKind) -> &mut StreamPlan {
        &mut self.streams[kind.index()]
    }
}

/// Why the mode changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Entered fallback.
    Fallback(String),
    /// Started handing back to a peer.
    HandingBack,
    /// A peer serves the session again.
    Offloaded,
}

/// What to do with a physics result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Apply it.
    Apply,
    /// Already applied a later or equal tick (late, duplicate or out of order).
    Stale,
    /// From a peer world that has since been abandoned.
    OldEpoch,
}

/// How long the oldest unanswered request may wait before the fallback takes over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FallbackTimeout {
    /// Always this long.
    Fixed(Duration),
    /// From the measured round trip, as TCP's retransmission timeout (RFC 6298): smoothed
    /// round trip plus four times its variation, never below `min` nor above `max`; three
    /// times `min` (at most `max`) until the first result arrives: nothing is known of the
    /// path yet, and a first result 150 ms away must not look like a dead peer, while a
    /// game with no peer at all should not wait long either. A slow but steady peer is kept; a
    /// dead one is noticed within a few of its round trips.
    Adaptive {
        /// The floor (and the timeout before any result).
        min: Duration,
        /// The ceiling.
        max: Duration,
    },
}

impl FallbackTimeout {
    /// The timeout given what `rtt` has measured.
    pub fn current(&self, rtt: &RttEstimator) -> Duration {
        match *self {
            FallbackTimeout::Fixed(d) => d,
            FallbackTimeout::Adaptive { min, max } => match rtt.smoothed() {
                None => (min * 3).min(max.max(min)),
                Some(srtt) => (srtt + rtt.variation() * 4).clamp(min, max.max(min)),
            },
        }
    }
}

/// Smoothed round trip and its variation (RFC 6298), from request sent to result back.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    /// Adds one measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let deviation = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar * 3 / 4 + deviation / 4;
                self.srtt = Some(srtt * 7 / 8 + rtt / 8);
            }
        }
    }

    /// The smoothed round trip, once measured.
    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }

    /// Its smoothed variation.
    pub fn variation(&self) -> Duration {
        self.rttvar
    }
}

/// The kinds of offloaded task streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum StreamKind {
    /// `physics_step`: a peer session holding the rapier world.
    Physics,
    /// `ai_navigate`: a peer session holding the navigation grid.
    Ai,
}

impl StreamKind {
    /// Every stream, in the order the controller keeps them.
    pub const ALL: [StreamKind; 2] = [StreamKind::Physics, StreamKind::Ai];

    fn index(self) -> usize {
        match self {
            StreamKind::Physics => 0,
            StreamKind::Ai => 1,
        }
    }

    /// Whether the local fallback keeps state for this stream between ticks (the physics
    /// world, which must restart from a snapshot whenever it missed a request), as
    /// opposed to computing each tick from the game's own state (the AI, from the grid
    /// resource and the agents).
    pub fn keeps_local_state(self) -> bool {
        matches!(self, StreamKind::Physics)
    }

    /// Whether this stream leads: its answers decide the hand-back to peers and measure
    /// the round trip that sizes the fallback timeout, and any failure of its current
    /// state counts (a resync while handing back falls back). The physics world is the
    /// state both sides must agree on. A following stream (AI) only counts failures of a
    /// tick still in flight, and a resync of it just re-sends its fresh start (the grid).
    pub fn leads(self) -> bool {
        matches!(self, StreamKind::Physics)
    }
}

/// One kind of task, tick by tick.
#[derive(Debug, Default)]
struct Stream {
    /// Ticks sent to peers and not answered, with when they were sent.
    in_flight: BTreeMap<u64, Instant>,
    /// The tick of the request that started the peer's current state.
    epoch: Option<u64>,
    /// The next request must start the peer's state afresh (snapshot, grid).
    needs_reset: bool,
    /// The fresh start is only re-sent (a changed grid): the peer's state is still
    /// current, so the epoch and what is in flight stay.
    refresh_only: bool,
    /// The latest tick applied, from any source.
    last_applied: Option<u64>,
}

impl Stream {
    fn fresh() -> Self {
        Stream { needs_reset: true, ..Default::default() }
    }

    /// Forgets the peer's state: the next request starts it afresh.
    fn reset(&mut self) {
        self.needs_reset = true;
        self.refresh_only = false;
        self.epoch = None;
        self.in_flight.clear();
    }

    /// The next request re-sends the fresh start (a changed grid), without invalidating
    /// what the peer holds (a stream with no current state is reset instead).
    fn refresh(&mut self) {
        if !self.needs_reset {
            self.refresh_only = self.epoch.is_some();
        }
        self.needs_reset = true;
    }

    fn sent(&mut self, tick: u64, now: Instant, reset: bool) {
        if reset && !self.refresh_only {
            self.epoch = Some(tick);
            self.in_flight.clear();
        }
        if reset {
            self.refresh_only = false;
        }
        self.needs_reset = false;
        self.in_flight.insert(tick, now);
    }

    /// A result for `tick` came: it answers for every earlier tick too. Returns when it
    /// was sent.
    fn answered(&mut self, tick: u64) -> Option<Instant> {
        let sent = self.in_flight.get(&tick).copied();
        self.in_flight.retain(|t, _| *t > tick);
        sent
    }

    /// Whether an answer about `tick` concerns the peer's current state.
    fn is_current(&self, tick: Option<u64>) -> bool {
        match (self.epoch, tick) {
            (Some(epoch), Some(t)) => t >= epoch,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn verdict(&mut self, tick: u64) -> Verdict {
        newer_than(&mut self.last_applied, tick)
    }
}

/// Counters the controller keeps of its own decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ControllerCounters {
    /// Times the fallback took over.
    pub fallbacks_entered: u64,
    /// Times peers took over again.
    pub handbacks: u64,
}

/// The offload controller. Its state is private: it changes only through the events it
/// is told about (a tick planned and sent, a result, a failure, a disconnection), and it
/// reports its own mode changes ([`OffloadController::take_mode_changes`]).
#[derive(Debug)]
pub(crate) struct OffloadController {
    mode: OffloadMode,
    /// The mode last reported in a [`ModeChanged`].
    reported_mode: OffloadMode,
    mode_changes: Vec<ModeChanged>,
    counters: ControllerCounters,
    /// Step locally when peers do not answer.
    fallback_enabled: bool,
    /// A coordinator is configured at all.
    remote: bool,
    /// How long the oldest request may wait before the fallback takes over.
    timeout: FallbackTimeout,
    /// Round trips of the leading stream's results from peers.
    rtt: RttEstimator,
    /// How often to probe for peers while in fallback.
    probe_interval: Duration,
    streams: [Stream; StreamKind::ALL.len()],
    /// The local world mirrors the authoritative state (got a snapshot and every request
    /// since).
    local_synced: bool,
    /// The outstanding probe's task id.
    probe: Option<String>,
    last_probe: Option<Instant>,
    probe_answered: bool,
    /// Hand-backs that failed soon after (peer too slow for the timeout); each doubles
    /// the probe interval, up to 8×, so a slow peer does not make the game flap.
    flaps: u32,
    /// When the peers last took over.
    offloaded_since: Option<Instant>,
}

/// How long peers must serve before a hand-back counts as successful.
const STABLE_AFTER: Duration = Duration::from_secs(5);

impl OffloadController {
    pub fn new(remote: bool, fallback_enabled: bool, timeout: FallbackTimeout, probe_interval: Duration) -> Self {
        let mode = if remote { OffloadMode::Offloaded } else { OffloadMode::Fallback };
        OffloadController {
            mode,
            reported_mode: mode,
            mode_changes: Vec::new(),
            counters: ControllerCounters::default(),
            fallback_enabled,
            remote,
            timeout,
            rtt: RttEstimator::default(),
            probe_interval,
            streams: [Stream::fresh(), Stream::fresh()],
            local_synced: false,
            probe: None,
            last_probe: None,
            probe_answered: false,
            flaps: 0,
            offloaded_since: None,
        }
    }

    fn stream(&mut self, kind: StreamKind) -> &mut Stream {
        &mut self.streams[kind.index()]
    }

    /// Who steps the world now.
    pub fn mode(&self) -> OffloadMode {
        self.mode
    }

    /// The mode changes since the last call, oldest first, each with its reason.
    pub fn take_mode_changes(&mut self) -> Vec<ModeChanged> {
        std::mem::take(&mut self.mode_changes)
    }

    /// Fallbacks entered and hand-backs completed so far.
    pub fn counters(&self) -> ControllerCounters {
        self.counters
    }

    /// How long the oldest request may wait now (see [`FallbackTimeout`]).
    pub fn current_timeout(&self) -> Duration {
        self.timeout.current(&self.rtt)
    }

    /// The round trip of the leading stream's peer results, as measured so far.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Requests sent to peers and not answered.
    pub fn tasks_in_flight(&self) -> usize {
        self.streams.iter().map(|s| s.in_flight.len()).sum::<usize>() + usize::from(self.probe.is_some())
    }

    /// Ticks of stream `kind` in flight.
    pub fn in_flight(&self, kind: StreamKind) -> usize {
        self.streams[kind.index()].in_flight.len()
    }

    /// Whether the local world mirrors the authoritative state.
    #[cfg(test)]
    fn local_synced(&self) -> bool {
        self.local_synced
    }

    /// Records `transition` as a [`ModeChanged`] (when the mode did change) and counts it.
    fn note(&mut self, transition: Option<Transition>) -> Option<Transition> {
        let t = transition.as_ref()?;
        let reason = match t {
            Transition::Fallback(reason) => {
                self.counters.fallbacks_entered += 1;
                tracing::info!(%reason, "p2c2r: stepping locally (fallback)");
                reason.clone()
            }
            Transition::HandingBack => {
                tracing::info!("p2c2r: a peer answers again; handing back");
                "a peer answered the probe".to_owned()
            }
            Transition::Offloaded => {
                self.counters.handbacks += 1;
                tracing::info!("p2c2r: peers step the world again");
                "a peer serves the session".to_owned()
            }
        };
        if self.reported_mode != self.mode {
            self.mode_changes.push(ModeChanged { mode: self.mode, previous: self.reported_mode, reason });
            self.reported_mode = self.mode;
        }
        transition
    }

    /// `probe_soon`: probe as soon as connected (the link dropped) instead of after an
    /// interval (a peer stopped answering).
    fn enter_fallback(&mut self, now: Instant, reason: String, probe_soon: bool) -> Transition {
        let recent_handback = self.offloaded_since.is_some_and(|t| now.duration_since(t) < STABLE_AFTER);
        if !probe_soon && (self.mode == OffloadMode::HandingBack || recent_handback) {
            self.flaps = (self.flaps + 1).min(3);
        }
        self.offloaded_since = None;
        if self.mode == OffloadMode::Offloaded {
            // The local world has not been fed: it starts from a snapshot.
            self.local_synced = false;
        }
        self.mode = OffloadMode::Fallback;
        for stream in &mut self.streams {
            stream.reset();
        }
        self.probe = None;
        self.probe_answered = false;
        self.last_probe = if probe_soon { None } else { Some(now) };
        Transition::Fallback(reason)
    }

    /// Decides what this tick does. `connected`: the transport is registered now.
    pub fn plan(&mut self, now: Instant, connected: bool) -> (TickPlan, Option<Transition>) {
        let mut transition = None;
        if self.mode == OffloadMode::Offloaded
            && self.offloaded_since.is_some_and(|t| now.duration_since(t) >= STABLE_AFTER)
        {
            self.flaps = 0;
        }
        if self.mode != OffloadMode::Fallback {
            let oldest = self.streams.iter().flat_map(|s| s.in_flight.values()).min().copied();
            if !connected {
                transition = Some(self.enter_fallback(now, "not connected to the coordinator".into(), true));
            } else if let Some(sent) = oldest.filter(|t| now.duration_since(*t) > self.current_timeout()) {
                let waited = now.duration_since(sent);
                transition = Some(self.enter_fallback(now, format!("no result for {} ms", waited.as_millis()), false));
            }
        } else if !connected {
            self.probe = None;
            self.probe_answered = false;
        }

        let mut plan = TickPlan::default();
        if self.mode == OffloadMode::Fallback && self.probe_answered && connected {
            self.probe_answered = false;
            if self.fallback_enabled {
                self.mode = OffloadMode::HandingBack;
                // Same snapshot to both worlds, then the same deltas.
                self.local_synced = false;
                transition = Some(Transition::HandingBack);
            } else {
                self.mode = OffloadMode::Offloaded;
                self.offloaded_since = Some(now);
                transition = Some(Transition::Offloaded);
            }
            for stream in &mut self.streams {
                stream.reset();
            }
        }

        // Every stream follows the mode: peers, peers and the local fallback, or the
        // local fallback alone.
        let (to_peer, local) = match self.mode {
            OffloadMode::Offloaded => (true, false),
            OffloadMode::HandingBack => (true, true),
            OffloadMode::Fallback => (false, self.fallback_enabled),
        };
        for kind in StreamKind::ALL {
            let stream = &self.streams[kind.index()];
            let local_reset = local && kind.keeps_local_state() && !self.local_synced;
            plan[kind] = StreamPlan { to_peer, local, reset: (to_peer && stream.needs_reset) || local_reset };
        }
        if self.mode == OffloadMode::Fallback {
            let due = self.last_probe.is_none_or(|t| now.duration_since(t) >= self.current_probe_interval());
            if self.remote && connected && self.probe.is_none() && due {
                plan.probe = true;
                self.last_probe = Some(now);
            }
        }
        let transition = self.note(transition);
        (plan, transition)
    }

    /// The probe interval after backing off for failed hand-backs.
    pub fn current_probe_interval(&self) -> Duration {
        self.probe_interval * (1 << self.flaps)
    }

    /// Records what was done at `tick` (call after [`OffloadController::plan`], with
    /// the plan's `to_peer` cleared for what could not be sent).
    pub fn sent(&mut self, tick: u64, now: Instant, plan: &TickPlan) {
        for kind in StreamKind::ALL {
            let p = plan[kind];
            if p.to_peer {
                self.stream(kind).sent(tick, now, p.reset);
            }
            if p.local && kind.keeps_local_state() {
                self.local_synced = true;
            }
        }
    }

    /// The id the next probe should carry.
    pub fn probe_sent(&mut self, task_id: String) {
        self.probe = Some(task_id);
    }

    /// A probe answered successfully.
    pub fn probe_succeeded(&mut self, task_id: &str) -> bool {
        if self.probe.as_deref() == Some(task_id) {
            self.probe = None;
            self.probe_answered = self.mode == OffloadMode::Fallback;
            true
        } else {
            false
        }
    }

    /// A probe failed.
    pub fn probe_failed(&mut self, task_id: &str) {
        if self.probe.as_deref() == Some(task_id) {
            self.probe = None;
        }
    }

    /// A successful result from a peer for `tick` of stream `kind`.
    pub fn peer_result(&mut self, kind: StreamKind, tick: u64, now: Instant) -> (Verdict, Option<Transition>) {
        let stream = &mut self.streams[kind.index()];
        if self.mode == OffloadMode::Fallback || !stream.is_current(Some(tick)) {
            return (Verdict::OldEpoch, None);
        }
        let sent = stream.answered(tick);
        let verdict = stream.verdict(tick);
        let mut transition = None;
        if kind.leads() {
            if let Some(sent) = sent {
                self.rtt.sample(now.saturating_duration_since(sent));
            }
            if self.mode == OffloadMode::HandingBack {
                self.mode = OffloadMode::Offloaded;
                self.offloaded_since = Some(now);
                // The local world stops being fed: it is stale from now on.
                self.local_synced = false;
                transition = Some(Transition::Offloaded);
            }
        }
        (verdict, self.note(transition))
    }

    /// A result for `tick` of stream `kind` computed locally.
    pub fn local_result(&mut self, kind: StreamKind, tick: u64) -> Verdict {
        self.stream(kind).verdict(tick)
    }

    /// The local world failed a step: whatever state it is in, it no longer mirrors the
    /// authoritative one, and gets a snapshot next.
    pub fn local_failed(&mut self) {
        self.local_synced = false;
    }

    /// The peers' physics world was corrected after a replica lied: the next request is
    /// a snapshot (what the gamer learnt from the lie's events, the touching pairs, is set
    /// right by the honest world's answer to it). Only while peers serve: in fallback
    /// the hand-back sends one anyway.
    pub fn resync_physics(&mut self) {
        if self.mode == OffloadMode::Offloaded {
            self.stream(StreamKind::Physics).reset();
        }
    }

    /// The navigation grid changed: the peer's AI session needs it again.
    pub fn grid_changed(&mut self) {
        self.stream(StreamKind::Ai).refresh();
    }

    /// A task of stream `kind` failed. `resync`: the peer lacks the session or got a tick
    /// out of order. Returns a transition when the failure sends the game to fallback.
    pub fn peer_failed(
        &mut self,
        kind: StreamKind,
        tick: Option<u64>,
        resync: bool,
        now: Instant,
        why: &str,
    ) -> Option<Transition> {
        if self.mode == OffloadMode::Fallback {
            return None;
        }
        if !kind.leads() {
            // A following stream: only a tick still in flight counts, and a resync just
            // re-sends the fresh start.
            let stream = self.stream(kind);
            if let Some(t) = tick
                && stream.in_flight.remove(&t).is_none()
            {
                return None;
            }
            let transition = if !resync && self.fallback_enabled {
                Some(self.enter_fallback(now, why.to_owned(), false))
            } else {
                self.stream(kind).refresh();
                None
            };
            return self.note(transition);
        }
        if !self.streams[kind.index()].is_current(tick) {
            return None;
        }
        let transition = if resync && self.mode == OffloadMode::Offloaded {
            self.stream(kind).reset();
            None
        } else if self.fallback_enabled || self.mode == OffloadMode::HandingBack {
            Some(self.enter_fallback(now, why.to_owned(), false))
        } else {
            self.stream(kind).reset();
            None
        };
        self.note(transition)
    }

    /// A request could not be handed to the transport (queue full, not connected).
    pub fn send_failed(&mut self, kind: StreamKind, now: Instant, why: &str) -> Option<Transition> {
        if self.mode == OffloadMode::Fallback {
            return None;
        }
        let transition = if self.fallback_enabled || self.mode == OffloadMode::HandingBack {
            Some(self.enter_fallback(now, why.to_owned(), false))
        } else {
            self.stream(kind).reset();
            None
        };
        self.note(transition)
    }

    /// The connection dropped.
    pub fn disconnected(&mut self, now: Instant) -> Option<Transition> {
        self.probe = None;
        self.probe_answered = false;
        let transition = if self.mode == OffloadMode::Fallback {
            None
        } else {
            Some(self.enter_fallback(now, "connection to the coordinator lost".into(), true))
        };
        self.note(transition)
    }
}

fn newer_than(last_applied: &mut Option<u64>, tick: u64) -> Verdict {
    if last_applied.is_some_and(|last| tick <= last) {
        Verdict::Stale
    } else {
        *last_applied = Some(tick);
        Verdict::Apply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StreamKind::{Ai, Physics};

    /// Records `p` as sent, the AI request only when `ai` (as `send.rs` does).
    fn sent(l: &mut OffloadController, tick: u64, at: Instant, p: &TickPlan, ai: bool) {
        let mut p = *p;
        p[Ai].to_peer &= ai;
        l.sent(tick, at, &p);
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_adaptive_timeout_follows_the_round_trip_within_its_bounds() {
        let policy = FallbackTimeout::Adaptive { min: MS(100), max: MS(1000) };
        let mut rtt = RttEstimator::default();
        assert_eq!(policy.current(&rtt), MS(300), "three times the floor before any sample");
        // A LAN: 5 ms round trips keep the floor.
        for _ in 0..50 {
            rtt.sample(MS(5));
        }
        assert_eq!(policy.current(&rtt), MS(100));
        // The internet: 150 ms steady -> a bit above 150 ms, not 100.
        let mut wan = RttEstimator::default();
        for _ in 0..200 {
            wan.sample(MS(150));
        }
        let t = policy.current(&wan);
        assert!(t >= MS(150) && t < MS(170), "{t:?}");
        // 120 ms with +-15 ms of jitter -> above the slowest round trip seen.
        let mut jittery = RttEstimator::default();
        for i in 0..200u64 {
            jittery.sample(MS(105 + (i * 37 % 31)));
        }
        let t = policy.current(&jittery);
        assert!(t > MS(135) && t < MS(180), "{t:?}");
        // Never above the ceiling, whatever is measured.
        let mut awful = RttEstimator::default();
        awful.sample(MS(5000));
        assert_eq!(policy.current(&awful), MS(1000));
        assert_eq!(FallbackTimeout::Fixed(MS(70)).current(&awful), MS(70));
    }

    #[test]
    fn a_slow_steady_peer_is_kept_and_a_dead_one_noticed_within_a_few_round_trips() {
        let t0 = Instant::now();
        let mut l =
            OffloadController::new(true, true, FallbackTimeout::Adaptive { min: MS(100), max: MS(1000) }, MS(500));
        // Ticks every 16 ms, each answered 150 ms later: a fixed 100 ms would fall back.
        let mut tick = 0u64;
        let mut at = t0;
        let mut answered = 0u64;
        while at < t0 + Duration::from_secs(10) {
            let (plan, transition) = l.plan(at, true);
            assert!(transition.is_none(), "spurious fallback at tick {tick}: {transition:?}");
            sent(&mut l, tick, at, &plan, false);
            while answered + 9 < tick {
                let (_, transition) = l.peer_result(StreamKind::Physics, answered, at);
                assert!(transition.is_none());
                answered += 1;
            }
            tick += 1;
            at += MS(16);
        }
        // The peer dies: no answer any more. The fallback comes within a few round trips.
        let died = at;
        loop {
            let (plan, transition) = l.plan(at, true);
            if let Some(Transition::Fallback(_)) = transition {
                break;
            }
            sent(&mut l, tick, at, &plan, false);
            tick += 1;
            at += MS(16);
            assert!(at - died < MS(600), "still waiting after {:?}", at - died);
        }
        assert!(at - died <= MS(200), "{:?}", at - died);
    }

    fn link() -> OffloadController {
        OffloadController::new(
            true,
            true,
            FallbackTimeout::Fixed(Duration::from_millis(100)),
            Duration::from_millis(200),
        )
    }

    #[test]
    fn starts_with_a_snapshot_then_deltas() {
        let mut l = link();
        let t0 = Instant::now();
        let (p, tr) = l.plan(t0, true);
        assert!(tr.is_none());
        assert!(p[Physics].to_peer && p[Physics].reset && !p[Physics].local && p[Ai].reset);
        sent(&mut l, 1, t0, &p, true);
        let (p, _) = l.plan(t0, true);
        assert!(p[Physics].to_peer && !p[Physics].reset && !p[Ai].reset);
        sent(&mut l, 2, t0, &p, true);
        assert_eq!(l.peer_result(StreamKind::Physics, 1, t0), (Verdict::Apply, None));
        assert_eq!(l.peer_result(StreamKind::Physics, 1, t0).0, Verdict::Stale, "duplicate");
        assert_eq!(l.peer_result(StreamKind::Physics, 2, t0).0, Verdict::Apply);
        assert!(l.in_flight(StreamKind::Physics) == 0);
    }

    #[test]
    fn out_of_order_results_are_dropped_by_tick() {
        let mut l = link();
        let t0 = Instant::now();
        for tick in 1..=3 {
            let (p, _) = l.plan(t0, true);
            sent(&mut l, tick, t0, &p, false);
        }
        assert_eq!(l.peer_result(StreamKind::Physics, 3, t0).0, Verdict::Apply);
        assert_eq!(l.peer_result(StreamKind::Physics, 2, t0).0, Verdict::Stale);
        assert!(l.in_flight(StreamKind::Physics) == 0, "tick 3 answers for the lost ticks before it");
    }

    #[test]
    fn timeout_enters_fallback_with_a_local_snapshot() {
        let mut l = link();
        let t0 = Instant::now();
        let (p, _) = l.plan(t0, true);
        sent(&mut l, 1, t0, &p, false);
        let (p, tr) = l.plan(t0 + Duration::from_millis(150), true);
        assert!(matches!(tr, Some(Transition::Fallback(_))));
        assert_eq!(l.mode(), OffloadMode::Fallback);
        assert!(p[Physics].local && p[Physics].reset && !p[Physics].to_peer && !p.probe, "probe waits an interval");
        sent(&mut l, 2, t0, &p, false);
        let (p, _) = l.plan(t0 + Duration::from_millis(160), true);
        assert!(p[Physics].local && !p[Physics].reset);
        // A late peer result from the abandoned world is ignored.
        assert_eq!(l.peer_result(StreamKind::Physics, 1, t0).0, Verdict::OldEpoch);
    }

    #[test]
    fn probe_then_hand_back_with_the_same_snapshot_to_both_worlds() {
        let mut l = link();
        let t0 = Instant::now();
        l.disconnected(t0);
        let (p, _) = l.plan(t0, false);
        assert!(!p.probe && p[Physics].local && p[Physics].reset, "no probe while disconnected");
        sent(&mut l, 1, t0, &p, false);
        assert_eq!(l.local_result(StreamKind::Physics, 1), Verdict::Apply);
        let later = t0 + Duration::from_millis(5);
        let (p, _) = l.plan(later, true);
        assert!(p.probe && p[Physics].local && !p[Physics].to_peer, "probe as soon as connected again");
        l.probe_sent("probe-1".into());
        sent(&mut l, 2, later, &p, false);
        assert_eq!(l.local_result(StreamKind::Physics, 2), Verdict::Apply);
        // No second probe while one is outstanding.
        let (p, _) = l.plan(later + Duration::from_secs(1), true);
        assert!(!p.probe);
        sent(&mut l, 3, later, &p, false);
        assert_eq!(l.local_result(StreamKind::Physics, 3), Verdict::Apply);
        assert!(l.probe_succeeded("probe-1"));
        let (p, tr) = l.plan(later, true);
        assert_eq!(tr, Some(Transition::HandingBack));
        assert!(p[Physics].to_peer && p[Physics].local && p[Physics].reset && p[Ai].reset);
        sent(&mut l, 4, later, &p, true);
        assert_eq!(l.local_result(StreamKind::Physics, 4), Verdict::Apply);
        let (p, _) = l.plan(later, true);
        assert!(p[Physics].to_peer && p[Physics].local && !p[Physics].reset);
        sent(&mut l, 5, later, &p, true);
        assert_eq!(l.local_result(StreamKind::Physics, 5), Verdict::Apply);
        // The peer's answer for tick 4 hands back; the state was already shown locally.
        assert_eq!(l.peer_result(StreamKind::Physics, 4, t0), (Verdict::Stale, Some(Transition::Offloaded)));
        assert_eq!(l.mode(), OffloadMode::Offloaded);
        assert!(!l.local_synced());
        let (p, _) = l.plan(later, true);
        assert!(p[Physics].to_peer && !p[Physics].local && !p[Physics].reset);
        sent(&mut l, 6, later, &p, true);
        assert_eq!(l.peer_result(StreamKind::Physics, 5, t0).0, Verdict::Stale);
        assert_eq!(l.peer_result(StreamKind::Physics, 6, t0).0, Verdict::Apply);
    }

    #[test]
    fn resync_error_sends_a_new_snapshot() {
        let mut l = link();
        let t0 = Instant::now();
        for tick in 1..=3 {
            let (p, _) = l.plan(t0, true);
            sent(&mut l, tick, t0, &p, false);
        }
        assert!(l.peer_failed(StreamKind::Physics, Some(2), true, t0, "unknown_session").is_none());
        let (p, _) = l.plan(t0, true);
        assert!(p[Physics].to_peer && p[Physics].reset);
        sent(&mut l, 4, t0, &p, false);
        // Errors for ticks of the old world are ignored.
        assert!(l.peer_failed(StreamKind::Physics, Some(3), true, t0, "unknown_session").is_none());
        let (p, _) = l.plan(t0, true);
        assert!(!p[Physics].reset);
        assert_eq!(l.peer_result(StreamKind::Physics, 3, t0).0, Verdict::OldEpoch);
        assert_eq!(l.peer_result(StreamKind::Physics, 4, t0).0, Verdict::Apply);
    }

    #[test]
    fn gave_up_error_enters_fallback() {
        let mut l = link();
        let t0 = Instant::now();
        let (p, _) = l.plan(t0, true);
        sent(&mut l, 1, t0, &p, false);
        let tr = l.peer_failed(StreamKind::Physics, Some(1), false, t0, "max_attempts_exceeded");
        assert!(matches!(tr, Some(Transition::Fallback(_))));
    }

    #[test]
    fn without_fallback_the_world_waits_and_probes() {
        let mut l = OffloadController::new(
            true,
            false,
            FallbackTimeout::Fixed(Duration::from_millis(100)),
            Duration::from_millis(100),
        );
        let t0 = Instant::now();
        let (p, _) = l.plan(t0, false);
        assert_eq!(l.mode(), OffloadMode::Fallback);
        assert!(!p[Physics].local && !p[Physics].to_peer && !p.probe);
        let (p, _) = l.plan(t0 + Duration::from_millis(150), true);
        assert!(p.probe && !p[Physics].local);
        l.probe_sent("p".into());
        assert!(l.probe_succeeded("p"));
        let (p, tr) = l.plan(t0 + Duration::from_millis(150), true);
        assert_eq!(tr, Some(Transition::Offloaded));
        assert!(p[Physics].to_peer && p[Physics].reset && !p[Physics].local);
    }

    #[test]
    fn local_only_never_probes() {
        let mut l = OffloadController::new(
            false,
            true,
            FallbackTimeout::Fixed(Duration::from_millis(100)),
            Duration::from_millis(1),
        );
        let t0 = Instant::now();
        let (p, _) = l.plan(t0, false);
        assert!(p[Physics].local && p[Physics].reset && !p.probe);
        sent(&mut l, 1, t0, &p, false);
        let (p, _) = l.plan(t0 + Duration::from_secs(1), false);
        assert!(p[Physics].local && !p[Physics].reset && !p.probe);
    }

    #[test]
    fn failed_hand_backs_back_off_the_probe() {
        let mut l = link();
        let mut now = Instant::now();
        l.disconnected(now);
        for round in 0..5 {
            // Probe, hand back, get one answer, then time out again.
            let (p, _) = l.plan(now, true);
            assert!(p.probe, "round {round}");
            l.probe_sent(format!("p{round}"));
            assert!(l.probe_succeeded(&format!("p{round}")));
            let (p, _) = l.plan(now, true);
            sent(&mut l, 1, now, &p, false);
            assert_eq!(l.peer_result(StreamKind::Physics, 1, now).1, Some(Transition::Offloaded));
            let (p, _) = l.plan(now, true);
            sent(&mut l, 2, now, &p, false);
            now += Duration::from_millis(150);
            let (_, tr) = l.plan(now, true);
            assert!(matches!(tr, Some(Transition::Fallback(_))));
            let expected = Duration::from_millis(200) * (1 << (round + 1).min(3));
            assert_eq!(l.current_probe_interval(), expected, "round {round}");
            let (p, _) = l.plan(now + expected - Duration::from_millis(1), true);
            assert!(!p.probe);
            now += expected;
        }
        // A peer that serves for a while resets the back-off.
        let (p, _) = l.plan(now, true);
        assert!(p.probe);
        l.probe_sent("ok".into());
        l.probe_succeeded("ok");
        let (p, _) = l.plan(now, true);
        sent(&mut l, 100, now, &p, false);
        l.peer_result(StreamKind::Physics, 100, now);
        let later = now + Duration::from_secs(6);
        let (p, _) = l.plan(later, true);
        sent(&mut l, 101, later, &p, false);
        assert_eq!(l.current_probe_interval(), Duration::from_millis(200));
    }

    #[test]
    fn ai_timeouts_also_trigger_fallback() {
        let mut l = link();
        let t0 = Instant::now();
        let (p, _) = l.plan(t0, true);
        sent(
            &mut l,
            1,
            t0,
            &{
                let mut p = p;
                p[Physics].to_peer = false;
                p
            },
            true,
        );
        let (_, tr) = l.plan(t0 + Duration::from_millis(101), true);
        assert!(matches!(tr, Some(Transition::Fallback(_))));
        assert_eq!(l.peer_result(StreamKind::Ai, 1, t0).0, Verdict::OldEpoch);
        let (p, _) = l.plan(t0 + Duration::from_millis(102), true);
        assert!(p[Ai].local && !p[Ai].to_peer);
        assert_eq!(l.local_result(StreamKind::Ai, 3), Verdict::Apply);
        assert_eq!(l.local_result(StreamKind::Ai, 3), Verdict::Stale);
    }

    #[test]
    fn the_controller_reports_its_own_mode_changes_with_their_reasons() {
        let mut l = link();
        let t0 = Instant::now();
        let (p, _) = l.plan(t0, true);
        sent(&mut l, 1, t0, &p, false);
        assert!(l.take_mode_changes().is_empty(), "offloaded from the start: no change");
        l.plan(t0 + Duration::from_millis(150), true);
        let changes = l.take_mode_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].previous, changes[0].mode), (OffloadMode::Offloaded, OffloadMode::Fallback));
        assert!(changes[0].reason.starts_with("no result for 150 ms"), "{}", changes[0].reason);
        assert_eq!(l.counters().fallbacks_entered, 1);
        // A disconnection while already in fallback changes nothing.
        l.disconnected(t0);
        assert!(l.take_mode_changes().is_empty());
    }

    #[test]
    fn a_changed_grid_is_re_sent_without_dropping_the_ai_results_in_flight() {
        let mut l = link();
        let t0 = Instant::now();
        for tick in 1..=3 {
            let (p, _) = l.plan(t0, true);
            assert_eq!(p[Ai].reset, tick == 1, "tick {tick}");
            sent(&mut l, tick, t0, &p, true);
        }
        // The game edits the grid every tick (moving obstacles): each request carries it
        // again, and the answers to the earlier ones still count.
        for tick in 4..=6 {
            l.grid_changed();
            let (p, _) = l.plan(t0, true);
            assert!(p[Ai].reset, "tick {tick}");
            sent(&mut l, tick, t0, &p, true);
        }
        assert_eq!(l.peer_result(StreamKind::Ai, 2, t0).0, Verdict::Apply);
        assert_eq!(l.peer_result(StreamKind::Ai, 5, t0).0, Verdict::Apply);
        assert_eq!(l.in_flight(StreamKind::Ai), 1);
    }

    #[test]
    fn the_ai_stream_follows_only_failures_of_ticks_in_flight_and_resyncs_by_resending_the_grid() {
        let mut l = link();
        let t0 = Instant::now();
        for tick in 1..=3 {
            let (p, _) = l.plan(t0, true);
            sent(&mut l, tick, t0, &p, true);
        }
        assert_eq!(l.peer_result(StreamKind::Ai, 2, t0).0, Verdict::Apply);
        // A failure of a tick already answered for, or never sent, is ignored.
        assert!(l.peer_failed(StreamKind::Ai, Some(1), false, t0, "late").is_none());
        assert!(l.peer_failed(StreamKind::Ai, Some(99), false, t0, "made up").is_none());
        assert_eq!(l.mode(), OffloadMode::Offloaded);
        // A resync of a tick in flight re-sends the grid, keeping the results coming.
        assert!(l.peer_failed(StreamKind::Ai, Some(3), true, t0, "unknown_session").is_none());
        let (p, _) = l.plan(t0, true);
        assert!(p[Ai].reset && !p[Physics].reset);
        sent(&mut l, 4, t0, &p, true);
        assert_eq!(l.peer_result(StreamKind::Ai, 4, t0).0, Verdict::Apply);
        // Any other failure of a tick in flight falls back.
        let (p, _) = l.plan(t0, true);
        sent(&mut l, 5, t0, &p, true);
        assert!(matches!(l.peer_failed(StreamKind::Ai, Some(5), false, t0, "gave up"), Some(Transition::Fallback(_))));
    }
}
