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
//! Clients in the same process may also connect without a socket, through
//! [`CoordinatorHandle::dialer`] (a coordinator started with [`spawn_in_memory`] has no
//! port at all); see [`memory`].
//!
//! Module map: [`scheduler`] decides where tasks go (pure, no I/O); [`router`] applies
//! each message to the shared state; [`http`] reads each connection's request head and
//! answers plain HTTP (the dashboard, its event stream, `/metrics`); [`connection`] owns
//! one WebSocket ([`observe`] watches its bytes, [`outbound`] bounds what waits for it);
//! [`admission`] decides who may connect; [`metrics`] and [`fleet`] are the operator's
//! view; [`log_limit`] keeps repeated warnings from flooding the log; [`memory`] carries
//! in-process clients' connections; [`config`] holds every setting; `server.rs` accepts
//! connections (TCP and in-memory alike) and starts the background tasks, `timers.rs` the
//! deadline timer and the housekeeping; this file starts and stops a coordinator.
//!
//! The accept loop admits a connection only if all of these hold, and otherwise drops it
//! before the WebSocket handshake (the client sees its connection closed): its address
//! holds fewer than `max_connections_per_address` connections (IPv6: per /64), fewer than
//! `max_unregistered_connections` connections have not registered yet, and fewer than
//! `max_connections` are open.

pub mod admission;
pub mod auth;
pub mod config;
pub mod connection;
pub mod copy_id;
pub mod disputes;
#[cfg(feature = "nats")]
pub mod federation;
pub mod fleet;
pub mod http;
pub mod ids;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod ratelimit;
pub mod replication;
pub mod reputation;
pub mod router;
pub mod scheduler;
mod server;
mod timers;
pub mod tls;
mod writer;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use admission::Admission;
pub use admission::AdmissionCounts;
use auth::Auth;
pub use config::{
    Config, Connections, Federation, Identity, InvalidConfig, RateLimits, Replication, Reputation, Scheduling, TlsFiles,
};
use fleet::Published;
use memory::Backlog;
use observe::{ByteTotals, InboundBudget};
pub use p2c2r_protocol::StatsReport;
pub use router::Router;
use server::Server;

/// Runs the coordinator on `listener` until `shutdown` completes, then closes every
/// connection (telling each why) and waits up to `config.shutdown_grace` for them.
/// Fails at once when the configuration cannot serve: an unreadable auth file or
/// certificate, or open mode on a non-loopback address without `insecure`.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    prepare(config)?.run(listener, shutdown).await
}

/// Checks the configuration ([`Config::validate`]) and opens what the coordinator needs
/// before it may listen: the auth file, the TLS
/// certificate and the reputation database. The binary calls it before binding its port,
/// so that a coordinator that cannot start (a corrupt database, a missing certificate)
/// never accepts a connection.
pub fn prepare(config: Config) -> std::io::Result<Prepared> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    config.validate().map_err(|e| invalid(e.to_string()))?;
    let auth = match &config.identity.auth_file {
        Some(path) => Auth::from_file(path).map_err(invalid)?,
        None => Auth::open(),
    };
    let tls = config.identity.tls.as_ref().map(tls::acceptor).transpose().map_err(|e| invalid(e.to_string()))?;
    let reputation = match &config.reputation.reputation_db {
        Some(path) => {
            let (db, kept) = reputation::ReputationDb::open(path).map_err(|e| invalid(e.to_string()))?;
            info!(
                path = %path.display(),
                quarantined = kept.quarantined.len(),
                standings = kept.standings.len(),
                "reputation database open"
            );
            Some((db, kept))
        }
        None => None,
    };
    Ok(Prepared { config, auth, tls, reputation })
}

/// A coordinator ready to listen ([`prepare`]).
pub struct Prepared {
    config: Config,
    auth: Auth,
    tls: Option<tokio_rustls::TlsAcceptor>,
    reputation: Option<(reputation::ReputationDb, reputation::Kept)>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Prepared {
    /// Runs the coordinator on `listener`; see [`run`].
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let cancel = CancellationToken::new();
        let server = Server::new(self, listener.local_addr()?).await?;
        let serve = server.serve(Some(listener), None, cancel.clone());
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => return result,
            _ = shutdown => {}
        }
        info!("shutting down");
        cancel.cancel();
        serve.await
    }
}

/// Binds `addr` and runs the coordinator in the background on the current tokio runtime.
/// It also takes in-memory connections ([`CoordinatorHandle::dialer`]).
pub async fn spawn(addr: impl ToSocketAddrs, config: Config) -> std::io::Result<CoordinatorHandle> {
    let prepared = prepare(config)?;
    let listener = TcpListener::bind(addr).await?;
    start(prepared, Some(listener)).await
}

/// Runs the coordinator in the background on the current tokio runtime without binding
/// any port: only in-memory connections reach it ([`CoordinatorHandle::dialer`]). For
/// tests and games that run the whole system in one process without sockets. It counts
/// as listening on `127.0.0.1:0` (open mode needs no `insecure`; clients' URLs name that
/// address: [`CoordinatorHandle::url`]).
pub async fn spawn_in_memory(config: Config) -> std::io::Result<CoordinatorHandle> {
    start(prepare(config)?, None).await
}

/// Runs the coordinator in the background, taking connections from `listener` (when
/// there is one) and from in-memory dialers.
async fn start(prepared: Prepared, listener: Option<TcpListener>) -> std::io::Result<CoordinatorHandle> {
    let local_addr = match &listener {
        Some(listener) => listener.local_addr()?,
        None => SocketAddr::new(memory::MEMORY_ADDRESS, 0),
    };
    let listening = listener.is_some();
    let cancel = CancellationToken::new();
    let server = Server::new(prepared, local_addr).await?;
    let shared = server.shared.clone();
    let (backlog, memory) = memory::backlog();
    let task = tokio::spawn(server.serve(listener, Some(memory), cancel.clone()));
    Ok(CoordinatorHandle { local_addr, cancel, task, shared, backlog, listening })
}

/// A coordinator running in the background; see [`spawn`].
#[derive(Debug)]
pub struct CoordinatorHandle {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    shared: Arc<Shared>,
    backlog: Backlog,
    listening: bool,
}

impl CoordinatorHandle {
    /// The address it listens on (`127.0.0.1:0` for [`spawn_in_memory`]'s: no port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether it listens on a TCP port (`false` for [`spawn_in_memory`]'s).
    pub fn has_listener(&self) -> bool {
        self.listening
    }

    /// Opens in-memory connections to this coordinator, coming from `127.0.0.1`: give it
    /// to a client (`p2c2r_net::ConnectOptions::dialer`, the gamer client's and the peer's
    /// `dialer` settings) with [`url`](Self::url) as the URL. Each connection is admitted,
    /// authenticated (TLS too, when configured) and bounded as a TCP connection from that
    /// address is (see [`memory`]).
    pub fn dialer(&self) -> p2c2r_net::Dialer {
        self.dialer_from(memory::MEMORY_ADDRESS)
    }

    /// [`dialer`](Self::dialer), its connections counted as coming from `ip` (for the
    /// per-address and per-network limits, and the attempt rate).
    pub fn dialer_from(&self, ip: IpAddr) -> p2c2r_net::Dialer {
        self.backlog.dialer(ip, &self.url())
    }

    /// The URL clients connect to, e.g. `ws://127.0.0.1:8765` (`wss://` with TLS;
    /// `ws://127.0.0.1:0` for [`spawn_in_memory`]'s, reached through a dialer only).
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The URL of the dashboard (and, with `metrics` appended, of the Prometheus
    /// endpoint), e.g. `http://127.0.0.1:8765/` (`https://` with TLS). With no listener
    /// ([`spawn_in_memory`]) only an in-memory connection reaches it.
    pub fn http_url(&self) -> String {
        let scheme = if self.shared.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/", self.local_addr)
    }

    /// Reads the auth file again now (as SIGHUP does), closing live connections whose
    /// credential it no longer accepts.
    pub fn reload_credentials(&self) -> Result<(), String> {
        self.shared.auth.reload()?;
        self.shared.router.revalidate(&self.shared.auth.current());
        Ok(())
    }

    /// The counters a `stats` request would report.
    pub fn stats(&self) -> StatsReport {
        self.shared.router.stats()
    }

    /// What the operator's view shows now: every peer (its learned capacity among the
    /// rest) and gamer, read in one lock hold.
    pub fn fleet(&self) -> fleet::FleetState {
        self.shared.router.fleet()
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

    /// Bytes kept now for gamers that may resume (see `Identity::resume_grace`).
    pub fn kept_bytes(&self) -> usize {
        self.shared.router.kept_bytes()
    }

    /// Ids the coordinator knows now, held or reserved (see [`ids`]).
    pub fn ids_known(&self) -> usize {
        self.shared.router.ids_known()
    }

    /// What `GET /metrics` would answer now.
    pub fn metrics_text(&self) -> String {
        p2c2r_ops::scrape::encode(&self.shared.registry)
    }

    /// Its link to the rest of the fleet, when federated (`--nats-url`).
    #[cfg(feature = "nats")]
    pub fn federation(&self) -> Option<&Arc<federation::Federation>> {
        self.shared.federation.as_ref()
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
    pub event_streams: http::EventStreams,
    /// The credentials in force.
    pub auth: Arc<Auth>,
    /// TLS, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Connection attempts per address.
    pub attempts: ratelimit::AttemptLimiter,
    /// The address the coordinator listens on.
    pub local_addr: SocketAddr,
    /// The link to the rest of the fleet, when federated (`--nats-url`).
    #[cfg(feature = "nats")]
    pub federation: Option<Arc<federation::Federation>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("config", &self.config).field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}
