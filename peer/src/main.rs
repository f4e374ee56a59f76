//! `cargo run -p peer`: a P2C2R worker. Parses flags, sets up logging, runs
//! [`peer::run`] until Ctrl-C or SIGTERM.

use std::time::Duration;

use clap::Parser;

/// P2C2R peer: runs rapier3d physics sessions and game-AI tasks for gamers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Coordinator WebSocket URL.
    #[arg(long, env = "P2C2R_COORDINATOR", default_value = peer::DEFAULT_COORDINATOR_URL)]
    coordinator: String,
    /// Peer id to register with [default: a random peer-<uuid>].
    #[arg(long, env = "P2C2R_PEER_ID")]
    peer_id: Option<String>,
    /// Tasks run at once [default: the number of cores].
    #[arg(long, env = "P2C2R_MAX_CONCURRENT_TASKS")]
    max_concurrent_tasks: Option<u32>,
    /// Seconds after which an unused session is dropped.
    #[arg(long, env = "P2C2R_SESSION_IDLE_TIMEOUT", default_value_t = 60.0, value_parser = seconds)]
    session_idle_timeout: f64,
    /// Most sessions held at once. Session ids come from gamers, so this bounds the worlds
    /// and grids kept in memory: creating one more drops the least recently used idle
    /// session, and when every session is busy the task is refused (`limit_exceeded`).
    #[arg(long, env = "P2C2R_MAX_SESSIONS", default_value_t = peer::DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    heartbeat_interval: f64,
    /// Longest pause between reconnection attempts, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    max_reconnect_delay: f64,
    /// Task types to declare, comma-separated [default: physics_step,ai_navigate,physics,ai].
    #[arg(long, value_delimiter = ',')]
    task_types: Option<Vec<String>>,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG also works.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1.0e6 => Ok(v),
        _ => Err(format!("expected a positive number of seconds, got {s:?}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let defaults = peer::PeerConfig::default();
    let config = peer::PeerConfig {
        coordinator_url: args.coordinator,
        peer_id: args.peer_id,
        max_concurrent_tasks: args.max_concurrent_tasks,
        session_idle_timeout: Duration::from_secs_f64(args.session_idle_timeout),
        max_sessions: args.max_sessions.max(1),
        heartbeat_interval: Duration::from_secs_f64(args.heartbeat_interval),
        reconnect_backoff_max: Duration::from_secs_f64(args.max_reconnect_delay),
        task_types: args.task_types.unwrap_or(defaults.task_types.clone()),
        ..defaults
    };
    peer::run(config, shutdown_signal()).await?;
    Ok(())
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
