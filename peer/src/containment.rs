//! Per-gamer containment of worker deaths (with [`Isolation::Workers`](crate::Isolation)).
//!
//! Every worker that a task kills (it exhausted the worker's memory or CPU, crashed it,
//! or ran past its deadline and was cancelled) is charged to the gamer that sent the task
//! ([`TaskSpec::gamer_id`](p2c2r_protocol::TaskSpec), set by the coordinator; tasks
//! without one share a single *anonymous* account). Once a gamer has killed
//! `max_deaths` workers within `window`, its further tasks on this peer are refused
//! without running (`limit_exceeded`) until the oldest of those deaths leaves the window,
//! so an attacker costs at most `max_deaths` worker restarts per window instead of one per
//! task. Workers killed because the connection to the coordinator was lost are nobody's
//! fault and are not charged.
//!
//! The keys come from the network, so the map is bounded: at most [`MAX_TRACKED_GAMERS`]
//! gamers, each with at most `max_deaths` timestamps; past the bound, gamers whose deaths
//! all left the window are dropped first, then the one whose last death is the oldest.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Default [`PeerConfig::max_worker_deaths_per_gamer`](crate::PeerConfig).
pub const DEFAULT_MAX_WORKER_DEATHS_PER_GAMER: u32 = 3;
/// Default [`PeerConfig::worker_death_window`](crate::PeerConfig): 60 s.
pub const DEFAULT_WORKER_DEATH_WINDOW: Duration = Duration::from_secs(60);
/// Most gamers whose worker deaths a peer remembers at once.
pub const MAX_TRACKED_GAMERS: usize = 4096;

/// Why a gamer's task is refused: how many workers its tasks killed, and for how long
/// more it is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub deaths: usize,
    pub window: Duration,
    pub remaining: Duration,
}

impl Refusal {
    /// The error message answering a refused task.
    pub fn message(&self) -> String {
        format!(
            "this gamer's tasks exhausted {} of this peer's workers within {} s; its tasks are refused on this peer for \
             the rest of the window ({} s more)",
            self.deaths,
            self.window.as_secs(),
            self.remaining.as_secs().max(1)
        )
    }
}

/// The worker deaths each gamer caused recently, in a sliding window.
#[derive(Debug)]
pub(crate) struct DeathCounter {
    max_deaths: usize,
    window: Duration,
    capacity: usize,
    gamers: HashMap<String, VecDeque<Instant>>,
    anonymous: VecDeque<Instant>,
}

impl DeathCounter {
    /// Refuses a gamer after `max_deaths` deaths within `window` (0: never refuses, and
    /// remembers nothing).
    pub fn new(max_deaths: u32, window: Duration) -> Self {
        Self::with_capacity(max_deaths, window, MAX_TRACKED_GAMERS)
    }

    /// [`new`](Self::new), remembering at most `capacity` named gamers.
    pub fn with_capacity(max_deaths: u32, window: Duration, capacity: usize) -> Self {
        DeathCounter {
            max_deaths: max_deaths as usize,
            window,
            capacity: capacity.max(1),
            gamers: HashMap::new(),
            anonymous: VecDeque::new(),
        }
    }

    /// How many named gamers are remembered.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.gamers.len()
    }

    fn expire(deaths: &mut VecDeque<Instant>, window: Duration, now: Instant) {
        while deaths.front().is_some_and(|&t| now.saturating_duration_since(t) >= window) {
            deaths.pop_front();
        }
    }

    /// Charges a worker death to `gamer` (`None`: the anonymous account) at `now`.
    pub fn record(&mut self, gamer: Option<&str>, now: Instant) {
        if self.max_deaths == 0 {
            return;
        }
        let window = self.window;
        let deaths = match gamer {
            None => &mut self.anonymous,
            Some(id) => {
                if !self.gamers.contains_key(id) && self.gamers.len() >= self.capacity {
                    self.make_room(now);
                }
                self.gamers.entry(id.to_owned()).or_default()
            }
        };
        Self::expire(deaths, window, now);
        deaths.push_back(now);
        // Only the newest `max_deaths` matter.
        while deaths.len() > self.max_deaths {
            deaths.pop_front();
        }
    }

    /// Drops the gamers whose deaths all left the window; if none did, the one whose last
    /// death is the oldest.
    fn make_room(&mut self, now: Instant) {
        let window = self.window;
        self.gamers.retain(|_, d| d.back().is_some_and(|&t| now.saturating_duration_since(t) < window));
        if self.gamers.len() >= self.capacity
            && let Some(oldest) = self.gamers.iter().min_by_key(|(_, d)| d.back().copied()).map(|(k, _)| k.clone())
        {
            self.gamers.remove(&oldest);
        }
    }

    /// Whether `gamer`'s tasks are refused at `now`, and why.
    pub fn refusal(&mut self, gamer: Option<&str>, now: Instant) -> Option<Refusal> {
        if self.max_deaths == 0 {
            return None;
        }
        let window = self.window;
        let deaths = match gamer {
            None => &mut self.anonymous,
            Some(id) => {
                let deaths = self.gamers.get_mut(id)?;
                Self::expire(deaths, window, now);
                if deaths.is_empty() {
                    self.gamers.remove(id);
                    return None;
                }
                self.gamers.get_mut(id).expect("just checked")
            }
        };
        Self::expire(deaths, window, now);
        if deaths.len() < self.max_deaths {
            return None;
        }
        let oldest = *deaths.front().expect("at least max_deaths > 0 deaths");
        let remaining = window.saturating_sub(now.saturating_duration_since(oldest));
        Some(Refusal { deaths: deaths.len(), window, remaining })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_gamer_is_refused_after_max_deaths_in_the_window_until_it_passes() {
        let t0 = Instant::now();
        let mut c = DeathCounter::new(3, secs(60));
        assert_eq!(c.refusal(Some("a"), t0), None);
        c.record(Some("a"), t0);
        c.record(Some("a"), t0 + secs(10));
        assert_eq!(c.refusal(Some("a"), t0 + secs(11)), None, "two deaths are not enough");
        c.record(Some("a"), t0 + secs(20));
        let r = c.refusal(Some("a"), t0 + secs(21)).expect("refused after three");
        assert_eq!(r, Refusal { deaths: 3, window: secs(60), remaining: secs(39) });
        assert!(r.message().contains("exhausted 3"), "{}", r.message());
        // Other gamers and the anonymous account are not affected.
        assert_eq!(c.refusal(Some("b"), t0 + secs(21)), None);
        assert_eq!(c.refusal(None, t0 + secs(21)), None);
        // Still refused just before the first death leaves the window...
        assert!(c.refusal(Some("a"), t0 + secs(59)).is_some());
        // ...and served again once it has left: two deaths remain in the window.
        assert_eq!(c.refusal(Some("a"), t0 + secs(60)), None);
        c.record(Some("a"), t0 + secs(61));
        assert!(c.refusal(Some("a"), t0 + secs(61)).is_some(), "a third death within the window refuses again");
        // Long after, everything is forgotten.
        assert_eq!(c.refusal(Some("a"), t0 + secs(200)), None);
        assert_eq!(c.tracked(), 0, "a gamer whose deaths all expired is dropped");
    }

    #[test]
    fn deaths_spread_wider_than_the_window_never_refuse() {
        let t0 = Instant::now();
        let mut c = DeathCounter::new(3, secs(60));
        for i in 0..20 {
            c.record(Some("slow"), t0 + secs(31 * i));
            assert_eq!(c.refusal(Some("slow"), t0 + secs(31 * i)), None, "death {i}");
        }
    }

    #[test]
    fn tasks_without_a_gamer_share_one_anonymous_account() {
        let t0 = Instant::now();
        let mut c = DeathCounter::new(2, secs(60));
        c.record(None, t0);
        assert_eq!(c.refusal(None, t0), None);
        c.record(None, t0 + secs(1));
        assert_eq!(c.refusal(None, t0 + secs(1)).map(|r| r.deaths), Some(2));
        assert_eq!(c.refusal(Some("named"), t0 + secs(1)), None);
        assert_eq!(c.tracked(), 0, "the anonymous account is not a named gamer");
    }

    #[test]
    fn zero_disables_containment() {
        let t0 = Instant::now();
        let mut c = DeathCounter::new(0, secs(60));
        for _ in 0..10 {
            c.record(Some("a"), t0);
        }
        assert_eq!(c.refusal(Some("a"), t0), None);
        assert_eq!(c.tracked(), 0);
    }

    #[test]
    fn the_map_is_bounded_and_drops_expired_then_oldest_gamers() {
        let t0 = Instant::now();
        let mut c = DeathCounter::with_capacity(2, secs(60), 3);
        // Each death list holds at most max_deaths entries.
        for _ in 0..100 {
            c.record(Some("attacker"), t0);
        }
        assert_eq!(c.gamers["attacker"].len(), 2);
        c.record(Some("old"), t0 + secs(1));
        c.record(Some("new"), t0 + secs(2));
        assert_eq!(c.tracked(), 3);
        // Full: a fourth gamer evicts the one whose last death is oldest ("attacker", t0).
        c.record(Some("fourth"), t0 + secs(3));
        assert_eq!(c.tracked(), 3);
        assert!(!c.gamers.contains_key("attacker"));
        // Once the window has passed for some, they are dropped before anyone else.
        c.record(Some("fresh"), t0 + secs(62));
        assert_eq!(c.tracked(), 2, "old and new expired; fourth and fresh remain");
        assert!(c.gamers.contains_key("fourth") && c.gamers.contains_key("fresh"));
        // Many distinct gamers never grow the map past its capacity.
        for i in 0..1000 {
            c.record(Some(&format!("g{i}")), t0 + secs(100));
        }
        assert_eq!(c.tracked(), 3);
    }
}
