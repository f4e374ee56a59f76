//! How a peer runs: [`PeerConfig`], its defaults, its checks, and (under the `cli`
//! feature) the `peer` binary's command line derived from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use p2c2r_net::{Credential, Dialer};
use p2c2r_protocol::Encoding;

use crate::{Budgets, DEFAULT_COORDINATOR_URL, DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_MEMORY_BYTES, Isolation};
use crate::{capabilities, containment};

/// How a peer runs. [`Default`] gives the documented defaults. The `peer` binary's command
/// line is derived from this struct (clap's derive, under the `cli` feature): every field
/// is a flag whose default is read from here (durations as `…-ms` flags in milliseconds,
/// memory as `…-mb` flags in MiB), except the credential, where tasks run and the work
/// budgets, which the binary builds from flags of its own; `tests/cli.rs` checks every
/// field has its flag by reading the fields from this struct's derived `Debug`.
/// [`PeerConfig::validate`] is the one check of a configuration, made by the binary and
/// by [`crate::run`] / [`crate::try_spawn`] alike.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct PeerConfig {
    /// The coordinator's WebSocket URL (default `ws://localhost:8765`); `wss://` for TLS.
    #[cfg_attr(feature = "cli", arg(long = "coordinator", env = "P2C2R_COORDINATOR", value_name = "URL", default_value_t = defaults().coordinator_url))]
    pub coordinator_url: String,
    /// Other coordinators of the same fleet (comma-separated): after a failed attempt or a
    /// lost connection the next attempt goes to the next of `coordinator_url` and these,
    /// and takes the peer's id back there with its resume secret (its sessions' worlds
    /// stay in this process). Empty (the default): the one coordinator.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "fallback-coordinator",
            env = "P2C2R_FALLBACK_COORDINATORS",
            value_delimiter = ',',
            value_name = "URL"
        )
    )]
    pub fallback_coordinators: Vec<String>,
    /// The credential presented to the coordinator (`Authorization: Bearer <token>` in
    /// the upgrade request); none by default. A [`Credential::File`] is read again on
    /// every reconnection, so a fixed or renewed token is picked up without a restart.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub token: Option<Credential>,
    /// For a `wss://` coordinator: trust the certificates of this PEM file instead of the
    /// public web PKI roots (default: `None`, the public roots).
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_CA_FILE", value_name = "PATH"))]
    pub ca_file: Option<PathBuf>,
    /// The id to register with; a random `peer-<uuid>` when `None`.
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_PEER_ID"))]
    pub peer_id: Option<String>,
    /// Where the resume secret of the latest registration is kept across restarts
    /// (see [`state`](crate::state)), so a peer restarted under its own id takes it back at once;
    /// `None` (the default): in memory only. The `peer` binary gives one whenever
    /// `--peer-id` is set ([`state::default_path`](crate::state::default_path)).
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_STATE_FILE", value_name = "PATH"))]
    pub state_file: Option<PathBuf>,
    /// Tasks run at once; the detected number of cores when `None`.
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_MAX_CONCURRENT_TASKS"))]
    pub max_concurrent_tasks: Option<u32>,
    /// A session unused this long is dropped (default 60 s).
    #[cfg_attr(feature = "cli", arg(long = "session-idle-timeout-ms", env = "P2C2R_SESSION_IDLE_TIMEOUT_MS", value_name = "MS", value_parser = cli::positive_millis, default_value = cli::ms(defaults().session_idle_timeout)))]
    pub session_idle_timeout: Duration,
    /// Most sessions held at once (default [`DEFAULT_MAX_SESSIONS`]). Creating one more
    /// evicts the least recently used idle session; when all are in use the task is
    /// answered with `limit_exceeded` and resync.
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_MAX_SESSIONS", default_value_t = defaults().max_sessions))]
    pub max_sessions: usize,
    /// How often a heartbeat is sent (default 1 s).
    #[cfg_attr(feature = "cli", arg(long = "heartbeat-interval-ms", value_name = "MS", value_parser = cli::positive_millis, default_value = cli::ms(defaults().heartbeat_interval)))]
    pub heartbeat_interval: Duration,
    /// First reconnection delay (default 100 ms); it doubles per failed attempt.
    #[cfg_attr(feature = "cli", arg(long = "min-reconnect-delay-ms", value_name = "MS", value_parser = cli::positive_millis, default_value = cli::ms(defaults().reconnect_backoff_min)))]
    pub reconnect_backoff_min: Duration,
    /// Longest reconnection delay (default 5 s).
    #[cfg_attr(feature = "cli", arg(long = "max-reconnect-delay-ms", value_name = "MS", value_parser = cli::positive_millis, default_value = cli::ms(defaults().reconnect_backoff_max)))]
    pub reconnect_backoff_max: Duration,
    /// Limit for connecting and registering (default 5 s).
    #[cfg_attr(feature = "cli", arg(long = "connect-timeout-ms", value_name = "MS", value_parser = cli::positive_millis, default_value = cli::ms(defaults().connect_timeout)))]
    pub connect_timeout: Duration,
    /// How long a graceful shutdown waits for running tasks (default 2 s).
    #[cfg_attr(feature = "cli", arg(long = "shutdown-grace-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().shutdown_grace)))]
    pub shutdown_grace: Duration,
    /// Largest frame accepted from the coordinator (default 32 MiB: an assignment wraps a
    /// gamer frame of up to the protocol's 16 MiB default).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().max_frame_bytes))]
    pub max_frame_bytes: usize,
    /// Most tasks accepted and not yet answered; beyond it tasks are answered with
    /// `queue_full` (default: 64 per concurrent task).
    #[cfg_attr(feature = "cli", arg(long))]
    pub max_pending_tasks: Option<usize>,
    /// Task types to declare (default: all four this peer runs).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ',', default_value = defaults().task_types.join(",")))]
    pub task_types: Vec<String>,
    /// Where tasks run (default [`Isolation::InProcess`]; the `peer` binary defaults to
    /// [`Isolation::Workers`] with its own executable). See [`worker`](crate::worker).
    #[cfg_attr(feature = "cli", arg(skip))]
    pub isolation: Isolation,
    /// How much work one task may ask for (default [`Budgets::default`]).
    #[cfg_attr(feature = "cli", arg(skip))]
    pub budgets: Budgets,
    /// Estimated memory all sessions may hold together (default
    /// [`DEFAULT_SESSION_MEMORY_BYTES`], 512 MiB). With workers, each worker's sessions
    /// get this budget but at most half the worker's memory cap (the caps bound the
    /// peer's memory to workers × cap), and `max_sessions` is divided among the workers.
    #[cfg_attr(feature = "cli", arg(long = "session-memory-mb", env = "P2C2R_SESSION_MEMORY_MB", value_name = "MIB", value_parser = cli::mib, default_value = cli::in_mib(defaults().session_memory_bytes)))]
    pub session_memory_bytes: u64,
    /// Estimated memory one gamer's sessions may hold (default a quarter of
    /// `session_memory_bytes`).
    #[cfg_attr(feature = "cli", arg(long = "gamer-session-memory-mb", env = "P2C2R_GAMER_SESSION_MEMORY_MB", value_name = "MIB", value_parser = cli::mib))]
    pub gamer_session_memory_bytes: Option<u64>,
    /// Bytes of large shapes (level meshes, terrains) kept across snapshots for every
    /// session (default [`p2c2r_sim::shape_cache::DEFAULT_SHAPE_CACHE_BYTES`], 64 MiB; see
    /// [`p2c2r_sim::shape_cache`]). With workers, each worker keeps its own, of at most a
    /// quarter of the worker's memory cap.
    #[cfg_attr(feature = "cli", arg(long = "shape-cache-mb", env = "P2C2R_SHAPE_CACHE_MB", value_name = "MIB", value_parser = cli::mib_usize, default_value = cli::in_mib(defaults().shape_cache_bytes as u64)))]
    pub shape_cache_bytes: usize,
    /// With workers: how long past its deadline a running task may go on before its
    /// worker is killed (default 200 ms).
    #[cfg_attr(feature = "cli", arg(long = "cancel-grace-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().cancel_grace)))]
    pub cancel_grace: Duration,
    /// With workers: how many workers one gamer's tasks may kill (exhausting memory or
    /// CPU, crashing, or cancelled past their deadline) within
    /// [`worker_death_window`](Self::worker_death_window) before its further tasks on
    /// this peer are answered `limit_exceeded` without running, for the rest of the window
    /// (default [`containment::DEFAULT_MAX_WORKER_DEATHS_PER_GAMER`], 3; 0 never refuses).
    /// Tasks without a [`gamer_id`](p2c2r_protocol::TaskSpec::gamer_id) share one
    /// anonymous account. In process there are no worker deaths, so this has no effect.
    /// See [`containment`].
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_MAX_WORKER_DEATHS_PER_GAMER", default_value_t = defaults().max_worker_deaths_per_gamer))]
    pub max_worker_deaths_per_gamer: u32,
    /// The sliding window of [`max_worker_deaths_per_gamer`](Self::max_worker_deaths_per_gamer)
    /// (default [`containment::DEFAULT_WORKER_DEATH_WINDOW`], 60 s).
    #[cfg_attr(feature = "cli", arg(long = "worker-death-window-ms", env = "P2C2R_WORKER_DEATH_WINDOW_MS", value_name = "MS", value_parser = cli::positive_millis, default_value = cli::ms(defaults().worker_death_window)))]
    pub worker_death_window: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`, see [`metrics`](crate::metrics)); not served
    /// when `None` (the default). The address is bound when the peer starts, failing the
    /// start when it cannot be ([`PeerError::MetricsListen`](crate::PeerError::MetricsListen)); port 0 picks a free port
    /// ([`PeerHandle::metrics_addr`](crate::PeerHandle::metrics_addr) tells which). Served until the peer has stopped.
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_METRICS_LISTEN", value_name = "HOST:PORT"))]
    pub metrics_listen: Option<SocketAddr>,
    /// The frames to ask the coordinator for: [`Encoding::Binary`] (the default) offers
    /// binary frames, which a coordinator that does not know them declines (the peer then
    /// speaks JSON); [`Encoding::Json`] asks for JSON only. Results answer in the
    /// encoding of their request's payload either way.
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_WIRE", value_name = "json|binary", value_parser = cli::wire, default_value = cli::wire_name(defaults().wire)))]
    pub wire: Encoding,
    /// Connect through this [`Dialer`] (an in-memory stream to a coordinator in this
    /// process, e.g. `coordinator::CoordinatorHandle::dialer`) instead of TCP to
    /// `coordinator_url`'s host, which still names the host and path of the upgrade
    /// request; asked for a new stream at every reconnection. `None` (the default): TCP.
    /// No flag: a command line cannot hand over an in-process stream.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub dialer: Option<Dialer>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            coordinator_url: DEFAULT_COORDINATOR_URL.to_owned(),
            fallback_coordinators: Vec::new(),
            token: None,
            ca_file: None,
            peer_id: None,
            state_file: None,
            max_concurrent_tasks: None,
            session_idle_timeout: Duration::from_secs(60),
            max_sessions: DEFAULT_MAX_SESSIONS,
            heartbeat_interval: Duration::from_secs(1),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(2),
            max_frame_bytes: 2 * p2c2r_protocol::limits::DEFAULT_MAX_FRAME_BYTES,
            max_pending_tasks: None,
            task_types: capabilities::all_task_types(),
            isolation: Isolation::InProcess,
            budgets: Budgets::default(),
            session_memory_bytes: DEFAULT_SESSION_MEMORY_BYTES,
            gamer_session_memory_bytes: None,
            shape_cache_bytes: p2c2r_sim::shape_cache::DEFAULT_SHAPE_CACHE_BYTES,
            cancel_grace: Duration::from_millis(200),
            max_worker_deaths_per_gamer: containment::DEFAULT_MAX_WORKER_DEATHS_PER_GAMER,
            worker_death_window: containment::DEFAULT_WORKER_DEATH_WINDOW,
            metrics_listen: None,
            wire: Encoding::Binary,
            dialer: None,
        }
    }
}

impl PeerConfig {
    /// Checks the settings that have a range. Every problem is named by its setting.
    pub fn validate(&self) -> Result<(), crate::PeerError> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("session_idle_timeout", self.session_idle_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
            ("connect_timeout", self.connect_timeout),
            ("worker_death_window", self.worker_death_window),
        ] {
            if value.as_millis() == 0 {
                problems.push(format!("{name} must be at least 1 ms"));
            }
        }
        if self.reconnect_backoff_min > self.reconnect_backoff_max {
            problems.push("reconnect_backoff_min must not exceed reconnect_backoff_max".to_owned());
        }
        if self.max_sessions == 0 {
            problems.push("max_sessions must be at least 1".to_owned());
        }
        if self.max_frame_bytes == 0 {
            problems.push("max_frame_bytes must be at least 1".to_owned());
        }
        if self.max_concurrent_tasks == Some(0) {
            problems.push("max_concurrent_tasks must be at least 1".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(crate::PeerError::InvalidConfig(problems.join("; "))) }
    }
}

/// How the derived command line reads and shows what `PeerConfig` holds in other units.
#[cfg(feature = "cli")]
mod cli {
    pub(super) use p2c2r_ops::flags::{millis, ms, positive_millis};
    use p2c2r_protocol::Encoding;

    /// `PeerConfig::default()`: the one source of every flag's default.
    pub(super) fn defaults() -> super::PeerConfig {
        super::PeerConfig::default()
    }

    const MIB: u64 = 1024 * 1024;

    /// Bytes given in MiB.
    pub(super) fn mib(text: &str) -> Result<u64, String> {
        text.parse::<u64>().map(|mib| mib.saturating_mul(MIB)).map_err(|e| format!("{e}: a whole number of MiB"))
    }

    /// Bytes given in MiB, as a `usize`.
    pub(super) fn mib_usize(text: &str) -> Result<usize, String> {
        mib(text).map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    /// Default bytes as their flag shows them, in MiB.
    pub(super) fn in_mib(bytes: u64) -> String {
        (bytes / MIB).to_string()
    }

    /// `json` or `binary`.
    pub(super) fn wire(text: &str) -> Result<Encoding, String> {
        match text {
            "json" => Ok(Encoding::Json),
            "binary" => Ok(Encoding::Binary),
            other => Err(format!("{other:?}: json or binary")),
        }
    }

    /// The default encoding as its flag shows it.
    pub(super) fn wire_name(encoding: Encoding) -> String {
        match encoding {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        }
        .to_owned()
    }
}
#[cfg(feature = "cli")]
use cli::defaults;
