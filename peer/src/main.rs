//! `cargo run -p peer`: a P2C2R worker. Parses flags, sets up logging, runs
//! [`peer::run`] until Ctrl-C or SIGTERM.
//!
//! Tasks run in worker processes started from this same executable (unless
//! `--in-process`); a worker is this binary started with an internal first argument
//! ([`peer::worker::WORKER_ARG`]), checked before anything else and not listed in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// P2C2R peer: runs rapier3d physics sessions and game-AI tasks for gamers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Coordinator WebSocket URL (ws://HOST:PORT, or wss://HOST:PORT for TLS).
    #[arg(long, env = "P2C2R_COORDINATOR", default_value_t = defaults().coordinator_url)]
    coordinator: String,
    /// Bearer token to present to the coordinator. Visible to other local users on the
    /// command line: prefer --token-file or the environment.
    #[arg(long, env = "P2C2R_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored); read again on every
    /// reconnection, so a renewed token is picked up without a restart.
    #[arg(long, env = "P2C2R_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// For a wss:// coordinator: trust the certificates in this PEM file instead of the
    /// public web PKI roots.
    #[arg(long, env = "P2C2R_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Peer id to register with [default: a random peer-<uuid>].
    #[arg(long, env = "P2C2R_PEER_ID")]
    peer_id: Option<String>,
    /// File keeping the resume secret across restarts (mode 0600), so a peer restarted
    /// under its own id takes it back at once [default with --peer-id:
    /// $XDG_STATE_HOME/p2c2r/peer-<id>.json, else ~/.local/state/…; without: none].
    #[arg(long, env = "P2C2R_STATE_FILE", value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Tasks run at once [default: the number of cores].
    #[arg(long, env = "P2C2R_MAX_CONCURRENT_TASKS")]
    max_concurrent_tasks: Option<u32>,
    /// Milliseconds after which an unused session is dropped.
    #[arg(long, env = "P2C2R_SESSION_IDLE_TIMEOUT_MS", default_value_t = ms(defaults().session_idle_timeout), value_parser = positive_ms())]
    session_idle_timeout_ms: u64,
    /// Most sessions held at once. Session ids come from gamers, so this bounds the worlds
    /// and grids kept in memory: creating one more drops the least recently used idle
    /// session, and when every session is busy the task is refused (`limit_exceeded`).
    #[arg(long, env = "P2C2R_MAX_SESSIONS", default_value_t = defaults().max_sessions)]
    max_sessions: usize,
    /// Milliseconds between heartbeats.
    #[arg(long, default_value_t = ms(defaults().heartbeat_interval), value_parser = positive_ms())]
    heartbeat_interval_ms: u64,
    /// Milliseconds before the first reconnection attempt; the pause doubles per failed
    /// attempt, up to --max-reconnect-delay-ms.
    #[arg(long, default_value_t = ms(defaults().reconnect_backoff_min), value_parser = positive_ms())]
    min_reconnect_delay_ms: u64,
    /// Longest pause between reconnection attempts, in milliseconds.
    #[arg(long, default_value_t = ms(defaults().reconnect_backoff_max), value_parser = positive_ms())]
    max_reconnect_delay_ms: u64,
    /// Milliseconds allowed for connecting to the coordinator and registering.
    #[arg(long, default_value_t = ms(defaults().connect_timeout), value_parser = positive_ms())]
    connect_timeout_ms: u64,
    /// Milliseconds a graceful shutdown waits for running tasks.
    #[arg(long, default_value_t = ms(defaults().shutdown_grace))]
    shutdown_grace_ms: u64,
    /// Largest frame accepted from the coordinator, in bytes.
    #[arg(long, default_value_t = defaults().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Tasks accepted and not yet answered; beyond it tasks are answered queue_full
    /// [default: 64 per concurrent task].
    #[arg(long)]
    max_pending_tasks: Option<usize>,
    /// Task types to declare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_TASK_TYPES.as_str())]
    task_types: Vec<String>,
    /// Run tasks inside this process instead of in worker processes. A task that
    /// exhausts memory then takes the whole peer down.
    #[arg(long, env = "P2C2R_IN_PROCESS")]
    in_process: bool,
    /// Address-space cap of each worker process, in MiB (0: none). A task that needs more
    /// costs its worker (restarted at once) and is answered limit_exceeded.
    #[arg(long, env = "P2C2R_WORKER_MEMORY_MB", default_value_t = peer::DEFAULT_WORKER_MEMORY_BYTES / MIB)]
    worker_memory_mb: u64,
    /// With workers: milliseconds a running task may go on past its deadline before its
    /// worker is killed (the coordinator has re-dispatched it by then).
    #[arg(long, default_value_t = ms(defaults().cancel_grace))]
    cancel_grace_ms: u64,
    /// With workers: how many workers one gamer's tasks may kill (out of memory or CPU,
    /// crash, cancelled past the deadline) within --worker-death-window-ms before its
    /// further tasks are refused (limit_exceeded, not run) for the rest of the window
    /// (0: never refuse).
    #[arg(long, env = "P2C2R_MAX_WORKER_DEATHS_PER_GAMER", default_value_t = defaults().max_worker_deaths_per_gamer)]
    max_worker_deaths_per_gamer: u32,
    /// The sliding window of --max-worker-deaths-per-gamer, in milliseconds.
    #[arg(long, env = "P2C2R_WORKER_DEATH_WINDOW_MS", default_value_t = ms(defaults().worker_death_window), value_parser = positive_ms())]
    worker_death_window_ms: u64,
    /// Estimated memory all sessions may hold together, in MiB. Beyond it, idle sessions
    /// of the gamer that created sessions fastest recently are evicted.
    #[arg(long, env = "P2C2R_SESSION_MEMORY_MB", default_value_t = defaults().session_memory_bytes / MIB)]
    session_memory_mb: u64,
    /// Estimated memory one gamer's sessions may hold, in MiB [default: a quarter of
    /// --session-memory-mb].
    #[arg(long, env = "P2C2R_GAMER_SESSION_MEMORY_MB")]
    gamer_session_memory_mb: Option<u64>,
    /// Large shapes (level meshes, terrains) kept across snapshots for every session, in
    /// MiB: a resync or failover names them instead of sending them again. With workers,
    /// each keeps its own, of at most a quarter of its memory cap.
    #[arg(long, env = "P2C2R_SHAPE_CACHE_MB", default_value_t = (defaults().shape_cache_bytes / MIB as usize) as u64)]
    shape_cache_mb: u64,
    /// Most bodies × steps one physics_step may simulate.
    #[arg(long, default_value_t = defaults().budgets.max_body_steps)]
    max_body_steps: u64,
    /// Most overlapping body pairs a physics world may hold (checked before and after
    /// stepping).
    #[arg(long, default_value_t = defaults().budgets.max_contact_pairs)]
    max_contact_pairs: u64,
    /// Most A* node expansions per ai_navigate request.
    #[arg(long, default_value_t = defaults().budgets.max_path_expansions)]
    max_path_expansions: usize,
    /// Most waypoints in one ai_navigate answer, all agents together.
    #[arg(long, default_value_t = defaults().budgets.max_waypoints)]
    max_waypoints: usize,
    /// Serve Prometheus metrics (GET /metrics) on this address, HOST:PORT (e.g.
    /// 127.0.0.1:9464) [default: not served].
    #[arg(long, env = "P2C2R_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Frames to ask the coordinator for: binary (compact task frames, falling back to
    /// JSON when the coordinator does not offer them) or json.
    #[arg(long, env = "P2C2R_WIRE", value_enum, default_value_t = Wire::from(defaults().wire))]
    wire: Wire,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG also works.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

const MIB: u64 = 1024 * 1024;

/// `--wire`: [`peer::Encoding`] as a flag value.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Wire {
    Json,
    Binary,
}

impl From<peer::Encoding> for Wire {
    fn from(encoding: peer::Encoding) -> Self {
        match encoding {
            peer::Encoding::Json => Wire::Json,
            peer::Encoding::Binary => Wire::Binary,
        }
    }
}

impl From<Wire> for peer::Encoding {
    fn from(wire: Wire) -> Self {
        match wire {
            Wire::Json => peer::Encoding::Json,
            Wire::Binary => peer::Encoding::Binary,
        }
    }
}

/// The one source of every flag's default: a flag's `default_value_t` reads the matching
/// field of `PeerConfig::default()` (durations in milliseconds, memory in MiB), so `--help`
/// shows what the library's defaults are. The exception is where tasks run: the library
/// defaults to in-process, the binary to worker processes (`--in-process` opts out).
/// `tests/cli.rs` checks that every field has its flag.
fn defaults() -> peer::PeerConfig {
    peer::PeerConfig::default()
}

/// `PeerConfig::default().task_types` as the flag spells them, comma-separated.
static DEFAULT_TASK_TYPES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| defaults().task_types.join(","));

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A duration in milliseconds that must not be zero (a zero heartbeat period or idle
/// timeout makes no sense), and at most about 11.5 days.
fn positive_ms() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=1_000_000_000)
}

/// Environment variables of settings renamed when durations became milliseconds: one still
/// set would be ignored silently, in seconds where milliseconds are now read.
const RENAMED_ENV: [(&str, &str); 2] = [
    ("P2C2R_SESSION_IDLE_TIMEOUT", "P2C2R_SESSION_IDLE_TIMEOUT_MS"),
    ("P2C2R_WORKER_DEATH_WINDOW_SECS", "P2C2R_WORKER_DEATH_WINDOW_MS"),
];

fn main() -> anyhow::Result<std::process::ExitCode> {
    if peer::worker::is_worker_invocation() {
        // A worker: logs go to stderr (the peer's), stdout carries frames.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
        return Ok(peer::worker::run_worker());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve())?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn serve() -> anyhow::Result<()> {
    if let Some((old, new)) = RENAMED_ENV.iter().find(|(old, _)| std::env::var_os(old).is_some()) {
        anyhow::bail!("{old} is no longer read: set {new} instead, in milliseconds");
    }
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // Every field is set here (no `..Default::default()`): a new setting does not compile
    // until the binary says where it comes from.
    let config = peer::PeerConfig {
        coordinator_url: args.coordinator,
        token: args.token.map(peer::Credential::Token).or(args.token_file.map(peer::Credential::File)),
        ca_file: args.ca_file,
        state_file: args.state_file.or_else(|| args.peer_id.as_deref().and_then(peer::state::default_path)),
        peer_id: args.peer_id,
        max_concurrent_tasks: args.max_concurrent_tasks,
        session_idle_timeout: Duration::from_millis(args.session_idle_timeout_ms),
        max_sessions: args.max_sessions.max(1),
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
        reconnect_backoff_min: Duration::from_millis(args.min_reconnect_delay_ms),
        reconnect_backoff_max: Duration::from_millis(args.max_reconnect_delay_ms),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        max_frame_bytes: args.max_frame_bytes.max(1),
        max_pending_tasks: args.max_pending_tasks,
        task_types: args.task_types,
        isolation: if args.in_process {
            peer::Isolation::InProcess
        } else {
            let exe = std::env::current_exe()
                .map_err(|e| anyhow::anyhow!("cannot find this executable to start workers ({e}); use --in-process"))?;
            peer::Isolation::workers(exe, args.worker_memory_mb.saturating_mul(MIB))
        },
        budgets: peer::Budgets {
            max_body_steps: args.max_body_steps,
            max_contact_pairs: args.max_contact_pairs,
            max_path_expansions: args.max_path_expansions,
            max_waypoints: args.max_waypoints,
        },
        cancel_grace: Duration::from_millis(args.cancel_grace_ms),
        max_worker_deaths_per_gamer: args.max_worker_deaths_per_gamer,
        worker_death_window: Duration::from_millis(args.worker_death_window_ms),
        session_memory_bytes: args.session_memory_mb.saturating_mul(MIB),
        gamer_session_memory_bytes: args.gamer_session_memory_mb.map(|mb| mb.saturating_mul(MIB)),
        shape_cache_bytes: usize::try_from(args.shape_cache_mb.saturating_mul(MIB)).unwrap_or(usize::MAX),
        metrics_listen: args.metrics_listen,
        wire: args.wire.into(),
        // A process started from a command line reaches its coordinator over TCP.
        dialer: None,
    };
    match peer::run(config, shutdown_signal()).await {
        Err(e @ peer::PeerError::MetricsListen { .. }) => Err(anyhow::anyhow!("--metrics-listen: {e}")),
        result => Ok(result?),
    }
}

/// Completes on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
