//! The coordinator's timers and workers: the deadline timer, the replay worker, the
//! once-a-second housekeeping (the auth file reloaded, expired ids swept) and the log
//! limiter's summaries.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Router, Shared, log_limit};

/// Once a second: reloads the auth file if it changed (and on SIGHUP at once), closing
/// connections whose credential it no longer accepts; frees the ids and drops the tasks
/// of clients whose resume grace has passed.
pub(crate) async fn housekeeping(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => false,
            _ = hup => true,
        };
        let reloaded = if forced { shared.auth.reload().map(|()| true) } else { shared.auth.reload_if_changed() };
        match reloaded {
            Ok(true) => {
                info!("auth file reloaded");
                shared.router.revalidate(&shared.auth.current());
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "auth file not reloaded; the previous credentials stay in force"),
        }
        shared.router.sweep(std::time::Instant::now());
    }
}

/// Logs, once per window, the summaries of repeated warnings the log limiter suppressed
/// (so a burst that stops is still reported).
pub(crate) async fn log_summaries(cancel: CancellationToken) {
    let limiter = log_limit::global();
    let mut ticks = tokio::time::interval(limiter.window());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => limiter.flush(),
        }
    }
}

/// Wakes at the earliest task deadline (or when a dispatch may have set an earlier one)
/// and re-dispatches or fails the tasks whose deadline passed.
pub(crate) async fn deadline_timer(router: Arc<Router>, cancel: CancellationToken) {
    loop {
        let next = router.next_deadline();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = router.deadlines_changed.notified() => continue,
            _ = sleep => {
                // A batch at a time: when more are due, let others run, then come back
                // (the next deadline is already past, so the sleep ends at once).
                if router.expire_due(Instant::now()) {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Submits what replicas replaying a session's log wait for, a batch per lock hold, letting
/// other tasks run between batches, whenever a lock hold leaves some waiting.
pub(crate) async fn replay_worker(router: Arc<Router>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = router.replays_waiting.notified() => {
                while router.continue_replays() {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}
