//! `cargo run -p coordinator`: parses flags, sets up logging, runs the coordinator until
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// The P2C2R coordinator: routes physics and AI tasks from gamers to peers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on. Without --auth-file only a loopback address is allowed
    /// (unless --insecure).
    #[arg(long, env = "P2C2R_LISTEN", default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// Milliseconds between pings to each connection.
    #[arg(long, default_value_t = ms(defaults().heartbeat_interval))]
    heartbeat_interval_ms: u64,
    /// Milliseconds of silence after which a connection is evicted.
    #[arg(long, default_value_t = ms(defaults().heartbeat_timeout))]
    heartbeat_timeout_ms: u64,
    /// Per-attempt task deadline when a request carries no deadline_ms.
    #[arg(long, default_value_t = ms(defaults().default_task_deadline))]
    task_deadline_ms: u64,
    /// Dispatches per task before the gamer is told it failed.
    #[arg(long, default_value_t = defaults().max_attempts)]
    max_attempts: u32,
    /// Largest accepted frame in bytes.
    #[arg(long, default_value_t = defaults().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Milliseconds allowed for the WebSocket handshake.
    #[arg(long, default_value_t = ms(defaults().handshake_timeout))]
    handshake_timeout_ms: u64,
    /// Milliseconds allowed between connecting and registering.
    #[arg(long, default_value_t = ms(defaults().register_timeout))]
    register_timeout_ms: u64,
    /// Frames buffered towards one client before it is disconnected as too slow.
    #[arg(long, default_value_t = defaults().send_queue_frames)]
    send_queue_frames: usize,
    /// Connections served at once.
    #[arg(long, default_value_t = defaults().max_connections)]
    max_connections: usize,
    /// Tasks one gamer may have queued or in flight.
    #[arg(long, default_value_t = defaults().max_pending_per_gamer)]
    max_pending_per_gamer: usize,
    /// Sessions one gamer may keep.
    #[arg(long, default_value_t = defaults().max_sessions_per_gamer)]
    max_sessions_per_gamer: usize,
    /// Milliseconds a task may wait for a capable peer before the gamer gets a
    /// queue_timeout error; 0 waits forever.
    #[arg(long, default_value_t = defaults().max_queue_wait.map_or(0, ms))]
    max_queue_wait_ms: u64,
    /// Milliseconds shutdown waits for connections to close.
    #[arg(long, default_value_t = ms(defaults().shutdown_grace))]
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
    /// Connections all addresses of one network (--host-prefix-v4/-v6) may hold at once.
    #[arg(long, default_value_t = defaults().max_connections_per_network)]
    max_connections_per_network: usize,
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
    /// Credentials file (JWT keys, enrolled tokens, revocations): tokens are required when
    /// given. Reloaded on SIGHUP and when it changes.
    #[arg(long, env = "P2C2R_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// Allow open mode (no credentials) on a non-loopback address. Anyone who reaches the
    /// port can then register any free id and submit tasks.
    #[arg(long)]
    insecure: bool,
    /// TLS certificate chain (PEM): serve wss:// and https:// (needs --tls-key).
    #[arg(long, env = "P2C2R_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "P2C2R_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Milliseconds an id stays reserved after its connection closes (a gamer's results
    /// are kept for it meanwhile); 0 frees it at once.
    #[arg(long, default_value_t = ms(defaults().resume_grace))]
    resume_grace_ms: u64,
    /// Tasks one gamer may submit per second; 0: unlimited.
    #[arg(long, default_value_t = defaults().max_tasks_per_second.unwrap_or(0))]
    max_tasks_per_second: u32,
    /// Task payload bytes one gamer may submit per second; 0: unlimited.
    #[arg(long, default_value_t = defaults().max_task_bytes_per_second.unwrap_or(0))]
    max_task_bytes_per_second: usize,
    /// New sessions one gamer may open per second; 0: unlimited.
    #[arg(long, default_value_t = defaults().max_new_sessions_per_second.unwrap_or(0))]
    max_new_sessions_per_second: u32,
    /// Connection attempts one address may make per second; 0: unlimited.
    #[arg(long, default_value_t = defaults().max_connection_attempts_per_second.unwrap_or(0))]
    max_connection_attempts_per_second: u32,
    /// Task deadlines a peer may miss in a row before it is quarantined; 0: never.
    #[arg(long, default_value_t = defaults().quarantine_after_misses)]
    quarantine_after_misses: u32,
    /// Quarantine for missed deadlines needs misses on work of gamers from this many
    /// different networks.
    #[arg(long, default_value_t = defaults().quarantine_min_gamers)]
    quarantine_min_gamers: u32,
    /// Successful answers a peer must have given before its answers confirm another
    /// peer's miss.
    #[arg(long, default_value_t = defaults().established_after_answers)]
    established_after_answers: u64,
    /// Resync errors in a row from a session's peer before the session moves; 0: never.
    #[arg(long, default_value_t = defaults().max_resyncs_in_a_row)]
    max_resyncs_in_a_row: u32,
    /// IPv4 prefix length of one network (for counting gamers' networks).
    #[arg(long, default_value_t = defaults().host_prefix_v4, value_parser = clap::value_parser!(u8).range(0..=32))]
    host_prefix_v4: u8,
    /// IPv6 prefix length of one network.
    #[arg(long, default_value_t = defaults().host_prefix_v6, value_parser = clap::value_parser!(u8).range(0..=128))]
    host_prefix_v6: u8,
    /// A determinism setup whose peers may serve replicated sessions, as peers log it
    /// ("engine [features] sim arch"); repeat for several [default: any].
    #[arg(long = "accepted-setup", env = "P2C2R_ACCEPTED_SETUPS", value_delimiter = ';', value_name = "SETUP")]
    accepted_setups: Vec<String>,
    /// Frames of at least this many bytes are decoded off the threads serving every
    /// connection.
    #[arg(long, default_value_t = defaults().off_runtime_frame_bytes)]
    off_runtime_frame_bytes: usize,
    /// Milliseconds a quarantined peer id is refused.
    #[arg(long, default_value_t = ms(defaults().quarantine_duration))]
    quarantine_duration_ms: u64,
    /// Keep quarantines and departed peers' standing (shown capacity, streak of missed
    /// deadlines) in this embedded database file (created on first start), so a
    /// quarantined peer stays refused and a demoted one stays demoted across restarts
    /// [default: in memory only].
    #[arg(long, env = "P2C2R_REPUTATION_DB", value_name = "PATH")]
    reputation_db: Option<PathBuf>,
    /// Replicas each physics session runs on (1..=5); 1: not replicated.
    #[arg(long, default_value_t = defaults().replicas, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// Fraction (0..=1) of unreplicated physics sessions audited by a hidden second replica.
    #[arg(long, default_value_t = defaults().audit_fraction)]
    audit_fraction: f64,
    /// Deliver only answers two replicas agree on.
    #[arg(long, default_value_t = defaults().strict_replication, action = clap::ArgAction::Set)]
    strict_replication: bool,
    /// Replicas of one session run on peers at different addresses.
    #[arg(long, default_value_t = defaults().replicas_on_distinct_hosts, action = clap::ArgAction::Set)]
    replicas_on_distinct_hosts: bool,
    /// Ticks a replicated session's log keeps since its last snapshot.
    #[arg(long, default_value_t = defaults().replica_log_ticks)]
    replica_log_ticks: usize,
    /// Payload bytes a replicated session's log keeps.
    #[arg(long, default_value_t = defaults().replica_log_bytes)]
    replica_log_bytes: usize,
    /// Payload bytes all replicated sessions' logs keep together.
    #[arg(long, default_value_t = defaults().max_replica_log_bytes)]
    max_replica_log_bytes: usize,
    /// Established partner networks in unsettled disputes that quarantine a peer (when
    /// more than the networks it agreed with); 0: never.
    #[arg(long, default_value_t = defaults().dispute_partners_to_quarantine)]
    dispute_partners_to_quarantine: usize,
    /// Send large frames to peers that ask for it in chunks between the other frames, and
    /// take theirs so.
    #[arg(long, default_value_t = defaults().chunked_frames, action = clap::ArgAction::Set)]
    chunked_frames: bool,
    /// With credentials on, let peers no audit can check serve sessions.
    #[arg(long)]
    allow_unauditable_peers: bool,
    /// Print a JWT for ROLE:ID (gamer, peer or operator) signed with the auth file's first
    /// jwt-hs256 key trusted for that role, then exit: what a game backend does with its
    /// own JWT library.
    #[arg(long, value_name = "ROLE:ID", requires = "auth_file")]
    mint_token: Option<String>,
    /// Milliseconds the minted token is valid (whole seconds count: a JWT's expiry has
    /// one-second resolution).
    #[arg(long, default_value_t = ms(DEFAULT_MINT_TTL), value_parser = clap::value_parser!(u64).range(1000..))]
    mint_ttl_ms: u64,
}

/// `0` as "none".
fn nonzero<T: PartialEq + Default>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

/// How long a token from `--mint-token` is valid unless `--mint-ttl-ms` says otherwise.
const DEFAULT_MINT_TTL: Duration = Duration::from_secs(3600);

/// The one source of every flag's default: a flag's `default_value_t` reads the matching
/// field here (durations in milliseconds, `None` as 0), so `--help` shows what
/// `Config::default()` holds. `tests/cli.rs` checks that every field has its flag.
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
            max_connections_per_network: self.max_connections_per_network.max(1),
            max_unregistered_connections: self.max_unregistered_connections.max(1),
            reserved_peer_slots: self.reserved_peer_slots,
            max_pending_bytes_per_gamer: self.max_pending_bytes_per_gamer.max(1),
            max_pending_bytes: self.max_pending_bytes.max(1),
            max_peer_capacity: self.max_peer_capacity.max(1),
            initial_peer_capacity: self.initial_peer_capacity.max(1),
            max_session_pipeline: self.max_session_pipeline.max(1),
            summary_interval: (self.summary_interval_ms > 0).then(|| Duration::from_millis(self.summary_interval_ms)),
            auth_file: self.auth_file.clone(),
            insecure: self.insecure,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(coordinator::TlsFiles { cert: cert.clone(), key: key.clone() }),
                _ => None,
            },
            resume_grace: Duration::from_millis(self.resume_grace_ms),
            max_tasks_per_second: nonzero(self.max_tasks_per_second),
            max_task_bytes_per_second: nonzero(self.max_task_bytes_per_second),
            max_new_sessions_per_second: nonzero(self.max_new_sessions_per_second),
            max_connection_attempts_per_second: nonzero(self.max_connection_attempts_per_second),
            quarantine_after_misses: self.quarantine_after_misses,
            quarantine_min_gamers: self.quarantine_min_gamers,
            established_after_answers: self.established_after_answers,
            max_resyncs_in_a_row: self.max_resyncs_in_a_row,
            host_prefix_v4: self.host_prefix_v4,
            host_prefix_v6: self.host_prefix_v6,
            accepted_setups: self.accepted_setups.clone(),
            off_runtime_frame_bytes: self.off_runtime_frame_bytes,
            quarantine_duration: Duration::from_millis(self.quarantine_duration_ms),
            reputation_db: self.reputation_db.clone(),
            replicas: self.replicas,
            audit_fraction: self.audit_fraction.clamp(0.0, 1.0),
            strict_replication: self.strict_replication,
            replicas_on_distinct_hosts: self.replicas_on_distinct_hosts,
            replica_log_ticks: self.replica_log_ticks,
            replica_log_bytes: self.replica_log_bytes,
            max_replica_log_bytes: self.max_replica_log_bytes,
            dispute_partners_to_quarantine: self.dispute_partners_to_quarantine,
            allow_unauditable_peers: self.allow_unauditable_peers,
            chunked_frames: self.chunked_frames,
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
    if let Some(who) = &args.mint_token {
        return mint(&args, who);
    }
    let config = args.config();
    config.check_exposure(args.listen).map_err(anyhow::Error::msg)?;
    // Everything that can refuse to start is opened before the port is bound.
    let prepared = coordinator::prepare(config)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    prepared.run(listener, shutdown_signal()).await?;
    Ok(())
}

/// `--mint-token ROLE:ID`: prints a signed token.
fn mint(args: &Args, who: &str) -> anyhow::Result<()> {
    use coordinator::auth::{Auth, Role};
    let (role, id) = who.split_once(':').context("--mint-token takes ROLE:ID, e.g. gamer:alice")?;
    let role = match role {
        "gamer" => Role::Gamer,
        "peer" => Role::Peer,
        "operator" => Role::Operator,
        other => anyhow::bail!("unknown role {other:?}: gamer, peer or operator"),
    };
    let path = args.auth_file.as_deref().context("--mint-token needs --auth-file")?;
    let auth = Auth::from_file(path).map_err(anyhow::Error::msg)?;
    let token = auth
        .current()
        .mint(role, id, Duration::from_millis(args.mint_ttl_ms), coordinator::auth::unix_now())
        .map_err(anyhow::Error::msg)?;
    println!("{token}");
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
