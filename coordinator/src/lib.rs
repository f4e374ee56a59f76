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
//! each message to the shared state; [`http`] reads each connection's request head and
//! answers plain HTTP (the dashboard, its event stream, `/metrics`); [`connection`] owns
//! one WebSocket ([`observe`] watches its bytes, [`outbound`] bounds what waits for it);
//! [`admission`] decides who may connect; [`metrics`] and [`fleet`] are the operator's
//! view; [`log_limit`] keeps repeated warnings from flooding the log; this file accepts
//! connections and runs the deadline timer and the fleet sampler.
//!
//! The accept loop admits a connection only if all of these hold, and otherwise drops it
//! before the WebSocket handshake (the client sees its TCP connection closed): its address
//! holds fewer than `max_connections_per_address` connections (IPv6: per /64), fewer than
//! `max_unregistered_connections` connections have not registered yet, and fewer than
//! `max_connections` are open.

pub mod admission;
pub mod config;
pub mod connection;
pub mod fleet;
pub mod http;
pub mod log_limit;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod router;
pub mod scheduler;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use admission::AdmissionCounts;
use admission::{Admission, Refusal};
pub use config::Config;
use fleet::Published;
use observe::{ByteTotals, InboundBudget};
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
    let shared = server.shared.clone();
    let task = tokio::spawn(server.serve(listener, cancel.clone()));
    Ok(CoordinatorHandle { local_addr, cancel, task, shared })
}

/// A coordinator running in the background; see [`spawn`].
#[derive(Debug)]
pub struct CoordinatorHandle {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    shared: Arc<Shared>,
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

    /// The URL of the dashboard (and, with `metrics` appended, of the Prometheus
    /// endpoint), e.g. `http://127.0.0.1:8765/`.
    pub fn http_url(&self) -> String {
        format!("http://{}/", self.local_addr)
    }

    /// The counters a `stats` request would report.
    pub fn stats(&self) -> StatsReport {
        self.shared.router.stats()
    }

    /// The connections open now, and how many of them have not registered yet.
    pub fn admission(&self) -> AdmissionCounts {
        self.shared.admission.counts()
    }

    /// Bytes that unfinished inbound messages (spread over several reads) pin now, all
    /// connections together; see [`observe`].
    pub fn inbound_bytes(&self) -> u64 {
        self.shared.inbound.used()
    }

    /// What `GET /metrics` would answer now.
    pub fn metrics_text(&self) -> String {
        p2c2r_ops::scrape::encode(&self.shared.registry)
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

/// Everything the coordinator's tasks share, in one place.
#[derive(Debug)]
pub struct Shared {
    /// The settings.
    pub config: Arc<Config>,
    /// The state and message handling.
    pub router: Arc<Router>,
    /// Who may connect.
    pub admission: Arc<Admission>,
    /// Memory for unfinished inbound messages.
    pub inbound: Arc<InboundBudget>,
    /// Bytes moved through every WebSocket.
    pub bytes: Arc<ByteTotals>,
    /// What `GET /metrics` encodes.
    pub registry: Registry,
    /// The latest fleet snapshot, for the dashboard.
    pub feed: watch::Receiver<Published>,
    /// Places for dashboards' event streams.
    pub event_streams: Arc<Semaphore>,
}

struct Server {
    shared: Arc<Shared>,
    feed: watch::Sender<Published>,
}

impl Server {
    fn new(config: Config) -> Self {
        let router = Arc::new(Router::new(config.clone()));
        let admission = Admission::new(config.max_connections_per_address, config.max_unregistered_connections);
        let bytes = Arc::new(ByteTotals::default());
        let (feed, feed_rx) = watch::channel(Published::default());
        let shared = Shared {
            registry: metrics::registry(router.clone(), admission.clone(), bytes.clone()),
            inbound: InboundBudget::new(connection::inbound_budget_bytes(&config)),
            config: Arc::new(config),
            router,
            admission,
            bytes,
            feed: feed_rx,
            event_streams: Arc::new(Semaphore::new(http::MAX_EVENT_STREAMS)),
        };
        Server { shared: Arc::new(shared), feed }
    }

    async fn serve(self, listener: TcpListener, cancel: CancellationToken) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        info!(addr = %local, "coordinator listening");
        info!("dashboard at http://{local}/, Prometheus metrics at http://{local}/metrics");
        let Server { shared, feed } = self;
        let config = shared.config.clone();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let metrics = shared.router.metrics().clone();
        tracker.spawn(deadline_timer(shared.router.clone(), cancel.clone()));
        tracker.spawn(log_summaries(cancel.clone()));
        tracker.spawn(fleet::run(
            shared.router.clone(),
            shared.bytes.clone(),
            config.summary_interval,
            feed,
            cancel.clone(),
        ));
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
            let ticket = match shared.admission.admit(addr.ip()) {
                Ok(ticket) => ticket,
                Err(Refusal::PerAddress) => {
                    metrics.refused("per_address");
                    let limit = config.max_connections_per_address;
                    warn_limited!("accept: per-address limit", %addr, limit, "per-address connection limit reached; refusing");
                    continue;
                }
                Err(Refusal::Unregistered) => {
                    metrics.refused("unregistered");
                    let limit = config.max_unregistered_connections;
                    warn_limited!("accept: unregistered limit", %addr, limit, "too many unregistered connections; refusing");
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                metrics.refused("connections");
                let limit = config.max_connections;
                warn_limited!("accept: connection limit", %addr, limit, "connection limit reached; refusing");
                continue;
            };
            debug!(%addr, "accepted");
            let (shared, cancel) = (shared.clone(), cancel.clone());
            tracker.spawn(async move {
                http::serve(shared, stream, addr, ticket, cancel).await;
                drop(permit);
            });
        }
        drop(listener);
        shared.router.announce_shutdown();
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace, tracker.wait()).await.is_err() {
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
