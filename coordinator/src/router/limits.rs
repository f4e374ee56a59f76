//! Each gamer's rate limits: tasks, task bytes and new sessions per second (see
//! [`crate::ratelimit`]). Kept while the gamer is registered or may resume, so leaving and
//! coming back does not refill its buckets.

use std::collections::HashMap;
use std::time::Instant;

use crate::Config;
use crate::ratelimit::{Rate, TokenBucket};

/// One gamer's buckets (`None`: that limit is off).
struct GamerLimits {
    tasks: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    sessions: Option<TokenBucket>,
}

/// What a task request costs against its gamer's limits.
pub(super) struct Cost {
    /// Its payload's bytes.
    pub(super) bytes: usize,
    /// Whether it opens a session the gamer does not have yet.
    pub(super) new_session: bool,
}

/// Every gamer's rate limits.
#[derive(Default)]
pub(super) struct Limits {
    gamers: HashMap<String, GamerLimits>,
}

impl Limits {
    /// Gives a gamer full buckets, unless it has some already and `keep` (it resumed).
    pub(super) fn start(&mut self, gamer: &str, config: &Config, keep: bool, now: Instant) {
        if keep && self.gamers.contains_key(gamer) {
            return;
        }
        let c = config;
        let limits = GamerLimits {
            tasks: c
                .rate_limits
                .max_tasks_per_second
                .map(|n| TokenBucket::new(Rate::per_second(f64::from(n), 2.0), now)),
            bytes: c
                .rate_limits
                .max_task_bytes_per_second
                .map(|n| TokenBucket::new(Rate::per_second(n as f64, 2.0), now)),
            sessions: c.rate_limits.max_new_sessions_per_second.map(|n| {
                let rate =
                    Rate { per_second: f64::from(n), burst: (c.scheduling.max_sessions_per_gamer.max(1)) as f64 };
                TokenBucket::new(rate, now)
            }),
        };
        self.gamers.insert(gamer.to_owned(), limits);
    }

    pub(super) fn forget(&mut self, gamer: &str) {
        self.gamers.remove(gamer);
    }

    /// Takes a request's cost from its gamer's buckets; says why it is over them, if it
    /// is (then nothing more is taken).
    pub(super) fn charge(&mut self, gamer: &str, cost: Cost, now: Instant) -> Option<&'static str> {
        let limits = self.gamers.get_mut(gamer)?;
        if let Some(b) = &mut limits.tasks
            && !b.try_take(1.0, now)
        {
            return Some("over this gamer's tasks per second; slow down");
        }
        if let Some(b) = &mut limits.bytes
            && !b.try_take(cost.bytes as f64, now)
        {
            return Some("over this gamer's task bytes per second; slow down");
        }
        if cost.new_session
            && let Some(b) = &mut limits.sessions
            && !b.try_take(1.0, now)
        {
            return Some("over this gamer's new sessions per second; reuse a session or slow down");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sessions_are_limited_apart_from_tasks_and_a_resume_keeps_the_buckets() {
        let config = Config {
            rate_limits: crate::config::RateLimits {
                max_tasks_per_second: Some(1000),
                max_new_sessions_per_second: Some(1),
                ..Default::default()
            },
            scheduling: crate::config::Scheduling { max_sessions_per_gamer: 2, ..Default::default() },
            ..Config::default()
        };
        let now = Instant::now();
        let mut limits = Limits::default();
        limits.start("g", &config, false, now);
        let new = || Cost { bytes: 10, new_session: true };
        assert_eq!(limits.charge("g", new(), now), None);
        assert_eq!(limits.charge("g", new(), now), None, "a burst of max_sessions_per_gamer");
        assert!(limits.charge("g", new(), now).unwrap().contains("new sessions"));
        assert_eq!(limits.charge("g", Cost { bytes: 10, new_session: false }, now), None);
        limits.start("g", &config, true, now);
        assert!(limits.charge("g", new(), now).is_some(), "resuming does not refill");
        assert_eq!(limits.charge("unknown", new(), now), None, "a gamer without limits is not limited here");
    }
}
