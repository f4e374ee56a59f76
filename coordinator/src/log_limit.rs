//! Rate-limited logging of repeated events, so that an attack cannot fill the disk.
//!
//! One hostile client can make the coordinator refuse thousands of frames or connections
//! a second; one log line each once produced hundreds of megabytes of log. A
//! [`LogLimiter`] lets at most `max_per_window` lines per event key through in each
//! window, counts the rest, and reports them in one summary line
//! (`suppressed K similar events`) when the window is over: either lazily, at the next
//! event of that key, or from [`LogLimiter::flush`], which the coordinator calls once per
//! window so that a burst that simply stops is still summarised.
//!
//! Keys are `&'static str` on purpose: they name a kind of event in the code ("connection
//! refused", "outbound queue full"), never a value from the network, so the limiter's map
//! is bounded by the number of call sites.
//!
//! Most code uses the process-wide limiter through the macros:
//!
//! ```
//! coordinator::warn_limited!("example: queue full", conn = 7, "outbound queue full; disconnecting");
//! coordinator::info_limited!("example: frame too large", "frame over the size limit; closing");
//! ```
//!
//! The pure core ([`LogLimiter::allow_at`], [`LogLimiter::take_summaries_at`]) takes the
//! time as an argument and is unit-tested with an injected clock.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Lines per key per window that the process-wide limiter lets through.
pub const DEFAULT_MAX_PER_WINDOW: u32 = 10;
/// The process-wide limiter's window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

/// At most `max_per_window` log lines per event key per window; see the module docs.
#[derive(Debug)]
pub struct LogLimiter {
    max_per_window: u32,
    window: Duration,
    keys: Mutex<HashMap<&'static str, Entry>>,
}

impl LogLimiter {
    /// A limiter that lets `max_per_window` lines per key through in each `window`.
    pub fn new(max_per_window: u32, window: Duration) -> Self {
        LogLimiter { max_per_window, window: window.max(Duration::from_millis(1)), keys: Mutex::new(HashMap::new()) }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether to log an event of `key` now. When a window with suppressed events has
    /// ended, its summary line is logged first (at `warn`).
    pub fn allow(&self, key: &'static str) -> bool {
        let (allowed, summary) = self.allow_at(key, Instant::now());
        if let Some(suppressed) = summary {
            log_summary(key, suppressed, self.window);
        }
        allowed
    }

    /// The pure core of [`allow`](Self::allow): whether an event of `key` at `now` may be
    /// logged, and, when a window that suppressed events has just ended, how many it
    /// suppressed (to report before this event).
    pub fn allow_at(&self, key: &'static str, now: Instant) -> (bool, Option<u64>) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let entry = keys.entry(key).or_insert(Entry { window_start: now, logged: 0, suppressed: 0 });
        let mut summary = None;
        if now.saturating_duration_since(entry.window_start) >= self.window {
            if entry.suppressed > 0 {
                summary = Some(entry.suppressed);
            }
            *entry = Entry { window_start: now, logged: 0, suppressed: 0 };
        }
        if entry.logged < self.max_per_window {
            entry.logged += 1;
            (true, summary)
        } else {
            entry.suppressed = entry.suppressed.saturating_add(1);
            (false, summary)
        }
    }

    /// Logs the summary of every key whose window has ended with suppressed events, and
    /// forgets keys that have been quiet for a whole window.
    pub fn flush(&self) {
        for (key, suppressed) in self.take_summaries_at(Instant::now()) {
            log_summary(key, suppressed, self.window);
        }
    }

    /// The pure core of [`flush`](Self::flush): the `(key, suppressed)` pairs of windows
    /// that ended by `now` with suppressed events (each reported once).
    pub fn take_summaries_at(&self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        keys.retain(|key, entry| {
            if now.saturating_duration_since(entry.window_start) < self.window {
                return true;
            }
            if entry.suppressed > 0 {
                out.push((*key, entry.suppressed));
            }
            // A key with nothing to report starts afresh at its next event.
            false
        });
        out.sort_unstable();
        out
    }
}

fn log_summary(key: &'static str, suppressed: u64, window: Duration) {
    tracing::warn!(event = key, suppressed, window_s = window.as_secs_f64(), "suppressed {suppressed} similar events");
}

/// The process-wide limiter ([`DEFAULT_MAX_PER_WINDOW`] lines per key per
/// [`DEFAULT_WINDOW`]), used by [`warn_limited!`](crate::warn_limited) and
/// [`info_limited!`](crate::info_limited).
pub fn global() -> &'static LogLimiter {
    static GLOBAL: OnceLock<LogLimiter> = OnceLock::new();
    GLOBAL.get_or_init(|| LogLimiter::new(DEFAULT_MAX_PER_WINDOW, DEFAULT_WINDOW))
}

/// `tracing::warn!`, rate-limited per key by the process-wide [`LogLimiter`]:
/// `warn_limited!("key", field = value, "message")`.
#[macro_export]
macro_rules! warn_limited {
    ($key:expr, $($arg:tt)+) => {
        if $crate::log_limit::global().allow($key) {
            ::tracing::warn!($($arg)+);
        }
    };
}

/// `tracing::info!`, rate-limited per key by the process-wide [`LogLimiter`]:
/// `info_limited!("key", field = value, "message")`.
#[macro_export]
macro_rules! info_limited {
    ($key:expr, $($arg:tt)+) => {
        if $crate::log_limit::global().allow($key) {
            ::tracing::info!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_n_through_per_window_then_summarises_at_the_next_event() {
        let limiter = LogLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut allowed = 0;
        for i in 0..1000 {
            let (ok, summary) = limiter.allow_at("refused", t0 + Duration::from_millis(i));
            assert_eq!(summary, None);
            allowed += ok as u32;
        }
        assert_eq!(allowed, 3);
        // The next window: the summary of the last one comes with its first event.
        let (ok, summary) = limiter.allow_at("refused", t0 + Duration::from_secs(10));
        assert!(ok);
        assert_eq!(summary, Some(997));
        // Reported once only.
        let (ok, summary) = limiter.allow_at("refused", t0 + Duration::from_secs(11));
        assert!(ok);
        assert_eq!(summary, None);
    }

    #[test]
    fn keys_are_independent() {
        let limiter = LogLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(limiter.allow_at("a", t0).0);
        assert!(!limiter.allow_at("a", t0).0);
        assert!(limiter.allow_at("b", t0).0);
        assert!(!limiter.allow_at("b", t0).0);
    }

    #[test]
    fn flush_reports_ended_windows_once_and_forgets_quiet_keys() {
        let limiter = LogLimiter::new(2, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.allow_at("a", t0);
        }
        limiter.allow_at("b", t0);
        limiter.allow_at("c", t0 + Duration::from_secs(3));
        assert!(limiter.take_summaries_at(t0 + Duration::from_secs(4)).is_empty(), "no window has ended");
        assert_eq!(limiter.take_summaries_at(t0 + Duration::from_secs(5)), vec![("a", 8)]);
        assert!(limiter.take_summaries_at(t0 + Duration::from_secs(6)).is_empty(), "reported once");
        // "a" and "b" were forgotten; "c" is still in its window.
        assert_eq!(limiter.keys.lock().unwrap().len(), 1);
        // A forgotten key starts a fresh window.
        assert!(limiter.allow_at("a", t0 + Duration::from_secs(6)).0);
    }

    #[test]
    fn a_zero_limit_suppresses_everything_but_still_counts() {
        let limiter = LogLimiter::new(0, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(!limiter.allow_at("x", t0).0);
        assert!(!limiter.allow_at("x", t0).0);
        assert_eq!(limiter.take_summaries_at(t0 + Duration::from_secs(1)), vec![("x", 2)]);
    }

    #[test]
    fn the_macros_compile_and_run() {
        crate::warn_limited!("test: macro", n = 1, "a warning");
        crate::info_limited!("test: macro info", "an info line");
        global().flush();
    }
}
