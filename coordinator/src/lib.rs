//! The P2C2R coordinator: a WebSocket server that registers peers and gamers, queues
//! tasks, assigns them to capable peers, watches liveness, re-dispatches the work of dead
//! or straggling peers, and forwards each result to the gamer that asked for it.
//!
//! `cargo run -p coordinator` runs it; tests, benchmarks and the demo start it in-process:
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let coordinator = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await?;
//! println!("peers and gamers connect to {}", coordinator.url());
//! coordinator.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Module map: [`scheduler`] decides where tasks go (pure, no I/O); [`router`] applies
//! each message to the shared state; [`connection`] owns one socket ([`observe`] watches
//! its bytes, [`outbound`] bounds what waits for it); [`admission`] decides who may
//! connect; [`log_limit`] keeps repeated warnings from flooding the log; this file
//! accepts connections and runs the deadline timer.
//!
//! The accept loop admits a connection only if all of these hold, and otherwise drops it
//! before the WebSocket handshake (the client sees its TCP connection closed): its address
//! holds fewer than `max_connections_per_address` connections (IPv6: per /64), fewer than
//! `max_unregistered_connections` connections have not registered yet, and fewer than
//! `max_connections` are open.

pub mod admission;
pub mod config;
pub mod connection;
pub mod log_limit;
pub mod observe;
pub mod outbound;
pub mod router;
pub mod scheduler;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use admission::AdmissionCounts;
use admission::{Admission, Refusal};
pub use config::Config;
use observe::InboundBudget;
pub use p2c2r_protocol::StatsReport;
pub use router::Router;

/// Runs the coordinator on `listener` until `shutdown` completes, then closes every
/// connection (telling each why) and waits up to `config.shutdown_grace` for them.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let cancel = CancellationToken::new();
    let server = Server::new(config);
    let serve = server.serve(listener, cancel.clone());
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return result,
        _ = shutdown => {}
    }
    info!("shutting down");
    cancel.cancel();
    serve.await
}

/// Binds `addr` and runs the coordinator in the background on the current tokio runtime.
pub async fn spawn(addr: impl ToSocketAddrs, config: Config) -> std::io::Result<CoordinatorHandle> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let server = Server::new(config);
    let router = server.router.clone();
    let admission = server.admission.clone();
    let inbound = server.inbound.clone();
    let task = tokio::spawn(server.serve(listener, cancel.clone()));
    Ok(CoordinatorHandle { local_addr, cancel, task, router, admission, inbound })
}

/// A coordinator running in the background; see [`spawn`].
#[derive(Debug)]
pub struct CoordinatorHandle {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    router: Arc<Router>,
    admission: Arc<Admission>,
    inbound: Arc<InboundBudget>,
}

impl CoordinatorHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL clients connect to, e.g. `ws://127.0.0.1:8765`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.local_addr)
    }

    /// The counters a `stats` request would report.
    pub fn stats(&self) -> StatsReport {
        self.router.stats()
    }

    /// The connections open now, and how many of them have not registered yet.
    pub fn admission(&self) -> AdmissionCounts {
        self.admission.counts()
    }

    /// Bytes that unfinished inbound messages (spread over several reads) pin now, all
    /// connections together; see [`observe`].
    pub fn inbound_bytes(&self) -> u64 {
        self.inbound.used()
    }

    /// Stops accepting, closes every connection and waits for them (bounded by
    /// `shutdown_grace`).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "coordinator stopped with an error"),
            Err(e) => warn!(error = %e, "coordinator task failed"),
        }
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

struct Server {
    config: Arc<Config>,
    router: Arc<Router>,
    admission: Arc<Admission>,
    inbound: Arc<InboundBudget>,
}

impl Server {
    fn new(config: Config) -> Self {
        Server {
            router: Arc::new(Router::new(config.clone())),
            admission: Admission::new(config.max_connections_per_address, config.max_unregistered_connections),
            inbound: InboundBudget::new(connection::inbound_budget_bytes(&config)),
            config: Arc::new(config),
        }
    }

    async fn serve(self, listener: TcpListener, cancel: CancellationToken) -> std::io::Result<()> {
        info!(addr = %listener.local_addr()?, "coordinator listening");
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        tracker.spawn(deadline_timer(self.router.clone(), cancel.clone()));
        tracker.spawn(log_summaries(cancel.clone()));
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    warn_limited!("accept: failed", error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Refused connections are dropped before the handshake: cheap for us, and
            // nothing to gain for a flood.
            let ticket = match self.admission.admit(addr.ip()) {
                Ok(ticket) => ticket,
                Err(Refusal::PerAddress) => {
                    let limit = self.config.max_connections_per_address;
                    warn_limited!("accept: per-address limit", %addr, limit, "per-address connection limit reached; refusing");
                    continue;
                }
                Err(Refusal::Unregistered) => {
                    let limit = self.config.max_unregistered_connections;
                    warn_limited!("accept: unregistered limit", %addr, limit, "too many unregistered connections; refusing");
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                let limit = self.config.max_connections;
                warn_limited!("accept: connection limit", %addr, limit, "connection limit reached; refusing");
                continue;
            };
            debug!(%addr, "accepted");
            let (router, config, cancel) = (self.router.clone(), self.config.clone(), cancel.clone());
            let inbound = self.inbound.clone();
            tracker.spawn(async move {
                connection::serve(router, config, stream, ticket, inbound, cancel).await;
                drop(permit);
            });
        }
        drop(listener);
        self.router.announce_shutdown();
        tracker.close();
        if tokio::time::timeout(self.config.shutdown_grace, tracker.wait()).await.is_err() {
            warn!("some connections did not close within the grace period");
        }
        info!("coordinator stopped");
        Ok(())
    }
}

/// Logs, once per window, the summaries of repeated warnings the log limiter suppressed
/// (so a burst that stops is still reported).
async fn log_summaries(cancel: CancellationToken) {
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
async fn deadline_timer(router: Arc<Router>, cancel: CancellationToken) {
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
