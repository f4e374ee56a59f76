//! Rate limits: a token bucket (pure: it is given the time), and the per-address limit on
//! connection attempts built from it.
//!
//! A bucket holds up to `burst` tokens and gains `rate` per second; an action that costs
//! `n` goes through only if `n` tokens are there. Per gamer the router keeps three
//! (tasks per second, payload bytes per second, new sessions per second); per address the
//! accept loop keeps one for connection attempts. Refusals are answered `rate_limited`
//! (an `error` for a task, `429 Too Many Requests` for a connection) and cost the honest
//! clients of others nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::admission::address_key;

/// A limit: tokens gained per second, and how many may be saved up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens per second.
    pub per_second: f64,
    /// Most tokens held at once (the largest burst).
    pub burst: f64,
}

impl Rate {
    /// `per_second`, with bursts of `burst_seconds` worth.
    pub fn per_second(per_second: f64, burst_seconds: f64) -> Rate {
        Rate { per_second, burst: (per_second * burst_seconds).max(1.0) }
    }
}

/// A token bucket; see the module docs.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        TokenBucket { rate, tokens: rate.burst, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.at = now;
    }

    /// Takes `cost` tokens if they are there. A cost larger than the burst goes through
    /// when the bucket is full (and empties it), so a single large action is slowed, never
    /// refused for ever.
    pub fn try_take(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        let cost = cost.min(self.rate.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now` (nothing to remember about its owner).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate.burst
    }
}

/// Most addresses tracked before idle ones are forgotten.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Connection attempts per address (IPv6: per /64), one bucket each.
#[derive(Debug)]
pub struct AttemptLimiter {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl AttemptLimiter {
    /// A limiter; `None` lets every attempt through.
    pub fn new(rate: Option<Rate>) -> Self {
        AttemptLimiter { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Whether an attempt from `ip` at `now` goes through.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let Some(rate) = self.rate else { return true };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            // Forget addresses whose buckets have refilled: they owe nothing.
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= MAX_TRACKED_ADDRESSES {
                // Every tracked address is mid-burst (a spoofed-source flood, say): refuse
                // new ones rather than grow without bound.
                return buckets.get_mut(&address_key(ip)).is_some_and(|b| b.try_take(1.0, now));
            }
        }
        buckets.entry(address_key(ip)).or_insert_with(|| TokenBucket::new(rate, now)).try_take(1.0, now)
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate { per_second: 10.0, burst: 5.0 }, t0);
        assert_eq!((0..8).filter(|_| b.try_take(1.0, t0)).count(), 5);
        assert!(!b.try_take(1.0, t0 + Duration::from_millis(50)));
        assert!(b.try_take(1.0, t0 + Duration::from_millis(100)));
        assert!(b.is_full(t0 + Duration::from_secs(10)));
        // A cost beyond the burst waits for a full bucket, then passes.
        assert!(b.try_take(50.0, t0 + Duration::from_secs(10)));
        assert!(!b.try_take(50.0, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn attempts_are_limited_per_address_and_the_table_is_bounded() {
        let limiter = AttemptLimiter::new(Some(Rate { per_second: 1.0, burst: 2.0 }));
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limiter.allow(a, t0) && limiter.allow(a, t0));
        assert!(!limiter.allow(a, t0), "a's burst is spent");
        assert!(limiter.allow(b, t0), "b is unaffected");
        // One IPv6 /64 is one address.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!(limiter.allow(v6a, t0) && limiter.allow(v6b, t0));
        assert!(!limiter.allow(v6a, t0));
        assert!(AttemptLimiter::new(None).allow(a, t0));
    }
}
