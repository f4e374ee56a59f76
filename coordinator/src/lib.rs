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
//! each message to the shared state; [`connection`] owns one socket; this file accepts
//! connections and runs the deadline timer.

pub mod config;
pub mod connection;
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

pub use config::Config;
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
    let task = tokio::spawn(server.serve(listener, cancel.clone()));
    Ok(CoordinatorHandle { local_addr, cancel, task, router })
}

/// A coordinator running in the background; see [`spawn`].
#[derive(Debug)]
pub struct CoordinatorHandle {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    router: Arc<Router>,
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
}

impl Server {
    fn new(config: Config) -> Self {
        Server { router: Arc::new(Router::new(config.clone())), config: Arc::new(config) }
    }

    async fn serve(self, listener: TcpListener, cancel: CancellationToken) -> std::io::Result<()> {
        info!(addr = %listener.local_addr()?, "coordinator listening");
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        tracker.spawn(deadline_timer(self.router.clone(), cancel.clone()));
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                warn!(%addr, limit = self.config.max_connections, "connection limit reached; refusing");
                drop(stream);
                continue;
            };
            debug!(%addr, "accepted");
            let (router, config, cancel) = (self.router.clone(), self.config.clone(), cancel.clone());
            tracker.spawn(async move {
                connection::serve(router, config, stream, cancel).await;
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
            _ = sleep => router.expire_due(Instant::now()),
        }
    }
}
