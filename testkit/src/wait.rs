//! Bounded waits for tests: on an event or a condition, never on a sleep of a guessed
//! length. The bound is generous (a loaded CI machine must not fail a test that would
//! pass); a test only waits that long when it fails, and then it says what it waited for.

use std::time::Duration;

/// How long any one wait may take before the test fails (30 s).
pub const WAIT: Duration = Duration::from_secs(30);

/// How often [`eventually`] checks its condition.
const POLL: Duration = Duration::from_millis(5);

/// Awaits `future`, panicking with "timed out after … waiting for {what}" after [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Checks `condition` every few milliseconds until it holds; panics with "timed out …
/// waiting for {what}" after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {WAIT:?} waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}
