//! `cargo run -p coordinator`: parses flags, sets up logging, runs the coordinator until
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// The P2C2R coordinator: routes physics and AI tasks from gamers to peers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "P2C2R_LISTEN", default_value = "0.0.0.0:8765")]
    listen: SocketAddr,
    /// Milliseconds between pings to each connection.
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// Milliseconds of silence after which a connection is evicted.
    #[arg(long, default_value_t = 3000)]
    heartbeat_timeout_ms: u64,
    /// Per-attempt task deadline when a request carries no deadline_ms.
    #[arg(long, default_value_t = p2c2r_protocol::limits::DEFAULT_TASK_DEADLINE_MS)]
    task_deadline_ms: u64,
    /// Dispatches per task before the gamer is told it failed.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Largest accepted frame in bytes.
    #[arg(long, default_value_t = p2c2r_protocol::limits::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Milliseconds allowed for the WebSocket handshake.
    #[arg(long, default_value_t = 5000)]
    handshake_timeout_ms: u64,
    /// Milliseconds allowed between connecting and registering.
    #[arg(long, default_value_t = 10_000)]
    register_timeout_ms: u64,
    /// Frames buffered towards one client before it is disconnected as too slow.
    #[arg(long, default_value_t = 1024)]
    send_queue_frames: usize,
    /// Connections served at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Tasks one gamer may have queued or in flight.
    #[arg(long, default_value_t = 10_000)]
    max_pending_per_gamer: usize,
    /// Sessions one gamer may keep.
    #[arg(long, default_value_t = 64)]
    max_sessions_per_gamer: usize,
    /// Milliseconds a task may wait for a capable peer before the gamer gets a
    /// queue_timeout error; 0 waits forever.
    #[arg(long, default_value_t = 30_000)]
    max_queue_wait_ms: u64,
    /// Milliseconds shutdown waits for connections to close.
    #[arg(long, default_value_t = 5000)]
    shutdown_grace_ms: u64,
    /// Bytes buffered towards one client before it is disconnected as too slow.
    #[arg(long, default_value_t = defaults().send_queue_bytes)]
    send_queue_bytes: usize,
    /// Milliseconds a write to a client may make no progress before it is disconnected.
    #[arg(long, default_value_t = ms(defaults().write_stall_timeout))]
    write_stall_timeout_ms: u64,
    /// Milliseconds allowed to finish a fragmented WebSocket message once it has begun.
    #[arg(long, default_value_t = ms(defaults().message_assembly_timeout))]
    message_assembly_timeout_ms: u64,
    /// Connections one IP address may hold at once.
    #[arg(long, default_value_t = defaults().max_connections_per_address)]
    max_connections_per_address: usize,
    /// Connections that have not registered yet, at once.
    #[arg(long, default_value_t = defaults().max_unregistered_connections)]
    max_unregistered_connections: usize,
    /// Connection slots kept for peers: gamers register only while more are free.
    #[arg(long, default_value_t = defaults().reserved_peer_slots)]
    reserved_peer_slots: usize,
    /// Payload bytes one gamer may have queued or in flight.
    #[arg(long, default_value_t = defaults().max_pending_bytes_per_gamer)]
    max_pending_bytes_per_gamer: usize,
    /// Payload bytes all gamers together may have queued or in flight.
    #[arg(long, default_value_t = defaults().max_pending_bytes)]
    max_pending_bytes: usize,
    /// Cap on the max_concurrent_tasks a peer declares.
    #[arg(long, default_value_t = defaults().max_peer_capacity)]
    max_peer_capacity: u32,
    /// Tasks a new peer gets at once until it has shown it can do more.
    #[arg(long, default_value_t = defaults().initial_peer_capacity)]
    initial_peer_capacity: u32,
    /// Tasks of one session in flight at its peer at once (pipelined behind the running one).
    #[arg(long, default_value_t = defaults().max_session_pipeline)]
    max_session_pipeline: u32,
    /// Milliseconds between one-line fleet summaries in the log; 0 turns them off.
    #[arg(long, default_value_t = defaults().summary_interval.map_or(0, ms))]
    summary_interval_ms: u64,
}

fn defaults() -> coordinator::Config {
    coordinator::Config::default()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Args {
    fn config(&self) -> coordinator::Config {
        coordinator::Config {
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms.max(1)),
            heartbeat_timeout: Duration::from_millis(self.heartbeat_timeout_ms),
            default_task_deadline: Duration::from_millis(self.task_deadline_ms.max(1)),
            max_attempts: self.max_attempts.max(1),
            max_frame_bytes: self.max_frame_bytes,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            register_timeout: Duration::from_millis(self.register_timeout_ms),
            send_queue_frames: self.send_queue_frames.max(1),
            max_connections: self.max_connections.max(1),
            max_pending_per_gamer: self.max_pending_per_gamer,
            max_sessions_per_gamer: self.max_sessions_per_gamer,
            max_queue_wait: (self.max_queue_wait_ms > 0).then(|| Duration::from_millis(self.max_queue_wait_ms)),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            send_queue_bytes: self.send_queue_bytes.max(1),
            write_stall_timeout: Duration::from_millis(self.write_stall_timeout_ms.max(1)),
            message_assembly_timeout: Duration::from_millis(self.message_assembly_timeout_ms.max(1)),
            max_connections_per_address: self.max_connections_per_address.max(1),
            max_unregistered_connections: self.max_unregistered_connections.max(1),
            reserved_peer_slots: self.reserved_peer_slots,
            max_pending_bytes_per_gamer: self.max_pending_bytes_per_gamer.max(1),
            max_pending_bytes: self.max_pending_bytes.max(1),
            max_peer_capacity: self.max_peer_capacity.max(1),
            initial_peer_capacity: self.initial_peer_capacity.max(1),
            max_session_pipeline: self.max_session_pipeline.max(1),
            summary_interval: (self.summary_interval_ms > 0).then(|| Duration::from_millis(self.summary_interval_ms)),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    coordinator::run(listener, args.config(), shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
