//! The P2C2R peer: a worker that runs gamers' physics and game-AI tasks.
//!
//! A peer connects to a coordinator over WebSocket, registers with the capabilities it
//! detects (cores, memory, GPU, task types, how many tasks it runs at once), heartbeats
//! every second, and answers `task_assignment`s with `task_result`s. It reconnects with
//! jittered, capped backoff whenever the coordinator goes away, and never exits on a
//! network error.
//!
//! It connects through [`p2c2r_net::connect`]: `ws://` or `wss://` (rustls; the public
//! roots, or [`PeerConfig::ca_file`]), presenting [`PeerConfig::token`] as a bearer
//! token; over TCP, or through [`PeerConfig::dialer`] to a coordinator in the same
//! process, with no socket. A refused credential is logged as such and retried with backoff like any other
//! failure (a token file is read again on every attempt). Each `registration_ack`'s
//! `resume_secret` is kept in memory and presented by the next registration, so a
//! reconnecting peer takes its id back from a connection the coordinator has not yet
//! noticed is dead; a registration answered `id_in_use` is retried later.
//!
//! | task type | what the peer does |
//! | --- | --- |
//! | `physics_step` | one tick of a session's rapier3d world ([`p2c2r_sim::physics::PhysicsWorld`]) |
//! | `physics_step_full` | the same tick, answered with every body of the world (packed: a keyframe); the coordinator sends it to correct a gamer's copy |
//! | `ai_navigate` | A* paths and steering on a session's grid ([`p2c2r_sim::navigation::Navigator`]) |
//! | `physics` | the seed's task: N falling balls for one step, summarised ([`seed`]) |
//! | `ai` | the seed's task: a built-in navigation scene, summarised ([`seed`]) |
//!
//! The simulation itself is the engine crate [`p2c2r_sim`] (deterministic, synchronous,
//! no tokio), which the Bevy plugin also uses to step locally when no peer answers. On
//! top of it, this library has two layers, usable separately:
//!
//! - [`run_task`]: pure dispatch of one task against a [`SessionStore`], no I/O.
//! - [`run`] / [`spawn`]: the process (connection, registration, heartbeats, pool,
//!   reconnection). `cargo run -p peer` is a thin binary over [`run`]. Tasks run in
//!   process ([`Isolation::InProcess`], the library default) or in worker processes with
//!   a memory cap ([`Isolation::Workers`], the binary's default; see [`worker`]), so that
//!   a task exhausting memory or CPU costs one worker, not the peer.
//!
//! Every task arriving at a peer is treated as hostile until checked: besides the
//! protocol's limits, each task runs within work budgets ([`Budgets`]: bodies × steps,
//! overlapping body pairs, A* expansions, waypoints) checked before the work runs, each
//! session within memory budgets (per peer and per gamer, with eviction that makes a
//! gamer flooding the peer with sessions pay for it, see [`session`]), and no result
//! larger than the coordinator's frame limit is ever sent (it is answered
//! `limit_exceeded` instead). With workers, a gamer whose tasks keep killing workers is
//! refused on this peer for a while ([`containment`]), and sessionless tasks keep away
//! from the workers holding sessions ([`worker`]).
//!
//! With [`PeerConfig::metrics_listen`] (`peer --metrics-listen HOST:PORT`) the peer also
//! serves Prometheus metrics at `GET /metrics` on that address: tasks by type and
//! outcome, their run times, sessions held, tasks queued (see [`metrics`]).
//!
//! # Quick start
//!
//! Start a peer inside your own tokio runtime, and stop it:
//!
//! ```no_run
//! # async fn demo() {
//! let config = peer::PeerConfig { coordinator_url: "ws://127.0.0.1:8765".into(), ..Default::default() };
//! let handle = peer::spawn(config).await;
//! println!("peer {} started", handle.peer_id());
//! handle.shutdown().await;
//! # }
//! ```
//!
//! To step a physics session directly, with no network involved, use [`p2c2r_sim`].
//!
//! # Features
//!
//! `cli` (the `peer` binary: clap, tracing-subscriber) and `detect` (cores and memory
//! through sysinfo) are on by default. A program embedding a peer as a library can turn
//! both off (`default-features = false`).

pub mod capabilities;
mod config;
mod connection;
pub mod containment;
pub mod metrics;
mod payload;
mod pipe;
mod pool;
pub mod seed;
pub mod session;
pub mod state;
pub mod tasks;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::PeerConfig;
pub use p2c2r_net::{Credential, Dialer};
pub use p2c2r_protocol::Encoding;
/// The work budgets a peer enforces on every task: the engine's ([`p2c2r_sim::budget`]).
pub use p2c2r_sim::budget;
pub use p2c2r_sim::budget::Budgets;
pub use session::{
    Clock, DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_MEMORY_BYTES, ManualClock, OverBudget, Session, SessionStore,
    StoreFull, SystemClock,
};
pub use tasks::{run_task, run_task_payload};
pub use worker::{DEFAULT_WORKER_MEMORY_BYTES, Isolation};

/// The coordinator a peer connects to when none is configured.
pub const DEFAULT_COORDINATOR_URL: &str = "ws://localhost:8765";

/// Why [`run`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The coordinator URL is not a `ws://` or `wss://` URL.
    #[error("invalid coordinator URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The peer id is empty or too long.
    #[error("invalid peer id: {0}")]
    InvalidPeerId(String),
    /// A setting is out of its range ([`PeerConfig::validate`]).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The worker processes ([`Isolation::Workers`]) could not be started.
    #[error("cannot start worker processes: {0}")]
    Workers(String),
    /// The metrics address ([`PeerConfig::metrics_listen`]) could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        /// The address given.
        addr: SocketAddr,
        /// Why it could not be bound.
        source: std::io::Error,
    },
}

/// A `Result` with [`PeerError`].
pub type Result<T, E = PeerError> = std::result::Result<T, E>;

/// The connection state of a running peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// Registered with the coordinator right now.
    pub connected: bool,
    /// Successful registrations so far (reconnections included).
    pub registrations: u64,
    /// Attempts the coordinator refused so far (a bad credential, an id held by another).
    pub refusals: u64,
}

/// Runs a peer until `shutdown` completes; then lets running tasks finish (up to
/// [`PeerConfig::shutdown_grace`]) and closes the connection properly.
///
/// Network errors never end it: it reconnects with backoff. It returns an error only for
/// a configuration it cannot start with.
pub async fn run(config: PeerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let Prepared { peer, registry, metrics_listener, .. } = prepare(config)?;
    let cancel = CancellationToken::new();
    let serve = serve(peer, cancel.clone(), registry, metrics_listener);
    tokio::pin!(serve);
    tokio::select! {
        () = &mut serve => return Ok(()),
        () = shutdown => cancel.cancel(),
    }
    serve.await;
    Ok(())
}

/// Starts a peer on the current tokio runtime and returns its handle.
///
/// # Panics
///
/// If the configuration is invalid (see [`PeerError`]); use [`try_spawn`] to get the error.
pub async fn spawn(config: PeerConfig) -> PeerHandle {
    match try_spawn(config).await {
        Ok(handle) => handle,
        Err(e) => panic!("cannot start the peer: {e}"),
    }
}

/// [`spawn`], returning configuration errors instead of panicking.
pub async fn try_spawn(config: PeerConfig) -> Result<PeerHandle> {
    let Prepared { peer, status, registry, metrics_listener } = prepare(config)?;
    let peer_id = peer.peer_id.clone();
    let sessions = peer.store.clone();
    let workers = peer.workers.clone();
    let running = peer.pool.running();
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(peer, cancel.clone(), registry.clone(), metrics_listener));
    Ok(PeerHandle { peer_id, cancel, task, status, sessions, workers, running, registry, metrics_addr })
}

/// Serves the peer until `cancel` fires and its connection is closed, and `GET /metrics`
/// on `metrics_listener` (when given) until then.
async fn serve(
    peer: connection::Peer,
    cancel: CancellationToken,
    registry: Arc<Registry>,
    metrics_listener: Option<TcpListener>,
) {
    let stop_metrics = CancellationToken::new();
    // Dropping this future (a killed peer) stops the scrapes in progress too.
    let _stop_when_dropped = stop_metrics.clone().drop_guard();
    let scrapes = async {
        if let Some(listener) = metrics_listener {
            p2c2r_ops::scrape::serve(listener, registry, stop_metrics.clone()).await;
        }
    };
    let peer = async {
        connection::run(peer, cancel).await;
        stop_metrics.cancel();
    };
    tokio::join!(peer, scrapes);
}

/// A peer ready to run.
struct Prepared {
    peer: connection::Peer,
    status: Arc<watch::Sender<PeerStatus>>,
    /// What `GET /metrics` encodes.
    registry: Arc<Registry>,
    /// [`PeerConfig::metrics_listen`], bound.
    metrics_listener: Option<TcpListener>,
}

/// Binds [`PeerConfig::metrics_listen`]. Needs a tokio runtime.
fn bind_metrics(addr: SocketAddr) -> Result<TcpListener> {
    let error = |source| PeerError::MetricsListen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    TcpListener::from_std(listener).map_err(error)
}

fn prepare(config: PeerConfig) -> Result<Prepared> {
    config.validate()?;
    check_url(&config.coordinator_url)?;
    for url in &config.fallback_coordinators {
        check_url(url)?;
    }
    let peer_id = match &config.peer_id {
        Some(id) if id.is_empty() || id.len() > p2c2r_protocol::limits::MAX_ID_BYTES => {
            return Err(PeerError::InvalidPeerId(format!(
                "must be 1 to {} bytes, got {}",
                p2c2r_protocol::limits::MAX_ID_BYTES,
                id.len()
            )));
        }
        Some(id) => id.clone(),
        None => format!("peer-{}", uuid::Uuid::new_v4()),
    };
    // Bound before any worker process starts, so a busy port costs nothing.
    let metrics_listener = config.metrics_listen.map(bind_metrics).transpose()?;
    let machine = capabilities::detect();
    let max_concurrent = config.max_concurrent_tasks.unwrap_or(machine.cpu_cores).max(1);
    let capabilities = capabilities::capabilities(&machine, max_concurrent, &config.task_types);
    tracing::info!(%peer_id, ?capabilities, "peer starting");
    if let Some(setup) = &capabilities.determinism {
        // What an operator lists in the coordinator's --accepted-setup.
        tracing::info!(setup = %setup.label(), "determinism setup");
    }
    let gamer_memory = config.gamer_session_memory_bytes.unwrap_or(config.session_memory_bytes / 4);
    let store = Arc::new(
        SessionStore::new(config.session_idle_timeout)
            .with_max_sessions(config.max_sessions)
            .with_memory_budget(config.session_memory_bytes, gamer_memory)
            .with_budgets(config.budgets)
            .with_shape_cache_bytes(config.shape_cache_bytes),
    );
    let max_pending = config.max_pending_tasks.unwrap_or(64 * max_concurrent as usize).max(1);
    let (pool, workers) = match &config.isolation {
        Isolation::InProcess => (pool::Pool::new(max_concurrent as usize, max_pending, store.clone()), None),
        Isolation::Workers { exe, memory_limit_bytes, env } => {
            let n = max_concurrent as usize;
            // Each worker's memory is capped, which bounds the peer's to `n` caps; its
            // sessions get the peer's budgets, but at most half its cap.
            let cap = if *memory_limit_bytes == 0 { u64::MAX } else { memory_limit_bytes / 2 };
            let memory_budget = config.session_memory_bytes.min(cap);
            let settings = worker::WorkerSettings {
                memory_limit_bytes: *memory_limit_bytes,
                idle_timeout_ms: config.session_idle_timeout.as_millis().min(u128::from(u64::MAX)) as u64,
                max_sessions: config.max_sessions.div_ceil(n).max(1),
                memory_budget,
                gamer_memory_budget: gamer_memory.min(memory_budget),
                budgets: config.budgets,
                shape_cache_bytes: if *memory_limit_bytes == 0 {
                    config.shape_cache_bytes
                } else {
                    config.shape_cache_bytes.min((memory_limit_bytes / 4) as usize)
                },
            };
            let deaths = containment::DeathCounter::new(config.max_worker_deaths_per_gamer, config.worker_death_window);
            let workers =
                Arc::new(worker::Workers::new(exe.clone(), env.clone(), n, &settings, config.cancel_grace, deaths));
            workers.start_all().map_err(|e| PeerError::Workers(format!("cannot start {}: {e}", exe.display())))?;
            tracing::info!(workers = n, exe = %exe.display(), memory_limit_bytes, "running tasks in worker processes");
            let executor = pool::Executor::Workers(workers.clone());
            (pool::Pool::with_executor(n, max_pending, executor), Some(workers))
        }
    };
    let instruments = Arc::new(metrics::Metrics::default());
    let pool = pool.with_metrics(instruments.clone());
    let status = Arc::new(watch::Sender::new(PeerStatus::default()));
    let state = metrics::State {
        pending: pool.pending_count(),
        running: pool.running(),
        store: store.clone(),
        workers: workers.clone(),
        status: status.clone(),
    };
    let registry = Arc::new(metrics::registry(&instruments, state));
    let peer = connection::Peer { config, peer_id, capabilities, store, pool, status: status.clone(), workers };
    Ok(Prepared { peer, status, registry, metrics_listener })
}

fn check_url(url: &str) -> Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let invalid = |reason: String| PeerError::InvalidUrl { url: url.to_owned(), reason };
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(invalid("must start with ws:// or wss://".into()));
    }
    url.into_client_request().map(drop).map_err(|e| invalid(e.to_string()))
}

/// A peer started with [`spawn`]. Dropping the handle leaves the peer running.
#[derive(Debug)]
pub struct PeerHandle {
    peer_id: String,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    status: Arc<watch::Sender<PeerStatus>>,
    sessions: Arc<SessionStore>,
    workers: Option<Arc<worker::Workers>>,
    running: Arc<(std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicUsize)>,
    registry: Arc<Registry>,
    metrics_addr: Option<SocketAddr>,
}

impl PeerHandle {
    /// The id the peer registers with.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Whether the peer is registered with the coordinator right now.
    pub fn is_connected(&self) -> bool {
        self.status.borrow().connected
    }

    /// The connection state, to watch for changes (e.g. wait for a reconnection).
    pub fn status(&self) -> watch::Receiver<PeerStatus> {
        self.status.subscribe()
    }

    /// Waits until the peer's status satisfies `f` (checked at once, then on every change).
    pub async fn wait_for(&self, f: impl FnMut(&PeerStatus) -> bool) -> PeerStatus {
        let mut rx = self.status.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        *rx.wait_for(f).await.expect("the status sender outlives the handle")
    }

    /// The sessions the peer holds in process (to inspect them; the peer manages them).
    ///
    /// With [`Isolation::Workers`] the sessions live in the workers and this store stays
    /// empty: use [`session_keys`](Self::session_keys).
    pub fn sessions(&self) -> &Arc<SessionStore> {
        &self.sessions
    }

    /// The keys of the sessions the peer holds, sorted (see
    /// [`TaskSpec::session_key`](p2c2r_protocol::TaskSpec::session_key)). With workers:
    /// the sessions routed to a live worker (a worker may already have dropped an idle
    /// one; a session is listed until its worker is lost or it has been idle for the
    /// session timeout).
    pub fn session_keys(&self) -> Vec<String> {
        match &self.workers {
            Some(workers) => workers.session_keys(),
            None => self.sessions.session_ids(),
        }
    }

    /// How many tasks are running now (with workers: in a worker's hands).
    pub fn running_tasks(&self) -> usize {
        match &self.workers {
            Some(workers) => workers.busy(),
            None => self.running.0.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// With [`Isolation::Workers`]: how many worker processes died (a task exhausted its
    /// memory, it crashed) or were killed (a task was cancelled) so far. Always 0 in
    /// process.
    pub fn workers_lost(&self) -> u64 {
        self.workers.as_ref().map_or(0, |w| w.lost())
    }

    /// The address `GET /metrics` is served on ([`PeerConfig::metrics_listen`], with the
    /// port chosen when it was 0), or `None` when it is not served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The peer's metrics (see [`metrics`]), to encode or serve them elsewhere (e.g. with
    /// `p2c2r_ops::scrape::serve`); kept up to date whether or not
    /// [`PeerConfig::metrics_listen`] is set.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// What `GET /metrics` answers now, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        p2c2r_ops::scrape::encode(&self.registry)
    }

    /// Graceful stop: running tasks finish and are answered (up to the grace period), the
    /// connection is closed properly, then this returns.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        self.status.send_modify(|s| s.connected = false);
    }

    /// Simulates a crash: the connection is dropped at once without a WebSocket close
    /// handshake, and the peer stops. Results of running tasks are lost.
    pub fn kill(&self) {
        self.task.abort();
        self.status.send_modify(|s| s.connected = false);
    }
}
