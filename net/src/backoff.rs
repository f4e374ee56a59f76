//! Reconnection delays: exponential, capped, with jitter so that many peers cut off by
//! the same coordinator restart do not reconnect in lockstep.

use std::time::Duration;

/// Delays between reconnection attempts.
///
/// Attempt `n` (from 0) waits a random time in `[d/2, d]` where
/// `d = min(max, min · 2ⁿ)` ("equal jitter"). [`reset`](Self::reset) after a successful
/// registration starts over from `min`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Delays from `min` doubling up to `max` (`max` is raised to `min` if lower).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), attempt: 0, rng: fastrand::Rng::new() }
    }

    /// The same, with a seeded random generator (for tests).
    pub fn with_seed(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff { rng: fastrand::Rng::with_seed(seed), ..Self::new(min, max) }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        let cap = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        let jitter_nanos = self.rng.u64(0..=u64::try_from((cap - half).as_nanos()).unwrap_or(u64::MAX));
        half + Duration::from_nanos(jitter_nanos)
    }

    /// Starts over from the shortest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::with_seed(min, max, 7);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let cap = (min * 2u32.pow(n as u32)).min(max);
            assert!(*d >= cap / 2 && *d <= cap, "attempt {n}: {d:?} not in [{:?}, {cap:?}]", cap / 2);
        }
        assert!(delays[11] >= max / 2);
        b.reset();
        assert!(b.next_delay() <= min);
        // Two peers seeded differently do not retry in lockstep.
        let mut other = Backoff::with_seed(min, max, 8);
        let mut b = Backoff::with_seed(min, max, 7);
        let same = (0..8).filter(|_| b.next_delay() == other.next_delay()).count();
        assert!(same < 8);
    }
}
