//! `cargo run -p peer`: a P2C2R worker. Parses flags, sets up logging, runs
//! [`peer::run`] until Ctrl-C or SIGTERM.
//!
//! Tasks run in worker processes started from this same executable (unless
//! `--in-process`); a worker is this binary started with an internal first argument
//! ([`peer::worker::WORKER_ARG`]), checked before anything else and not listed in `--help`.

use std::path::PathBuf;

use clap::Parser;

/// P2C2R peer: runs rapier3d physics sessions and game-AI tasks for gamers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Every setting of the peer, as `peer::PeerConfig` declares it.
    #[command(flatten)]
    config: peer::PeerConfig,
    /// Bearer token to present to the coordinator. Visible to other local users on the
    /// command line: prefer --token-file or the environment.
    #[arg(long, env = "P2C2R_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored); read again on every
    /// reconnection, so a renewed token is picked up without a restart.
    #[arg(long, env = "P2C2R_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Run tasks inside this process instead of in worker processes. A task that
    /// exhausts memory then takes the whole peer down.
    #[arg(long, env = "P2C2R_IN_PROCESS")]
    in_process: bool,
    /// Address-space cap of each worker process, in MiB (0: none). A task that needs more
    /// costs its worker (restarted at once) and is answered limit_exceeded.
    #[arg(long, env = "P2C2R_WORKER_MEMORY_MB", default_value_t = peer::DEFAULT_WORKER_MEMORY_BYTES / MIB)]
    worker_memory_mb: u64,
    /// Most bodies × steps one physics_step may simulate.
    #[arg(long, default_value_t = budgets().max_body_steps)]
    max_body_steps: u64,
    /// Most overlapping body pairs a physics world may hold (checked before and after
    /// stepping).
    #[arg(long, default_value_t = budgets().max_contact_pairs)]
    max_contact_pairs: u64,
    /// Most A* node expansions per ai_navigate request.
    #[arg(long, default_value_t = budgets().max_path_expansions)]
    max_path_expansions: usize,
    /// Most waypoints in one ai_navigate answer, all agents together.
    #[arg(long, default_value_t = budgets().max_waypoints)]
    max_waypoints: usize,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG also works.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

const MIB: u64 = 1024 * 1024;

/// The work budgets' defaults (they live in the simulation crate, which has no command
/// line of its own).
fn budgets() -> peer::Budgets {
    peer::Budgets::default()
}

impl Args {
    /// The configuration the flags give: `PeerConfig` as parsed, with the credential,
    /// where tasks run and the budgets, which have flags of their own.
    fn config(self) -> anyhow::Result<peer::PeerConfig> {
        let isolation = if self.in_process {
            peer::Isolation::InProcess
        } else {
            let exe = std::env::current_exe()
                .map_err(|e| anyhow::anyhow!("cannot find this executable to start workers ({e}); use --in-process"))?;
            peer::Isolation::workers(exe, self.worker_memory_mb.saturating_mul(MIB))
        };
        let config = self.config;
        let state_file =
            config.state_file.clone().or_else(|| config.peer_id.as_deref().and_then(peer::state::default_path));
        Ok(peer::PeerConfig {
            token: self.token.map(peer::Credential::Token).or(self.token_file.map(peer::Credential::File)),
            state_file,
            isolation,
            budgets: peer::Budgets {
                max_body_steps: self.max_body_steps,
                max_contact_pairs: self.max_contact_pairs,
                max_path_expansions: self.max_path_expansions,
                max_waypoints: self.max_waypoints,
            },
            // A process started from a command line reaches its coordinator over TCP.
            dialer: None,
            ..config
        })
    }
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

    let config = args.config()?;
    config.validate()?;
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
