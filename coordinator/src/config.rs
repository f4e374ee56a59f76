//! The coordinator's settings, with safe defaults.

use std::path::PathBuf;
use std::time::Duration;

use p2c2r_protocol::limits;

pub use crate::tls::TlsFiles;

/// Everything the coordinator can be told, in sections. `Config::default()` is what
/// `cargo run -p coordinator` uses. The command line is derived from these structs (clap's
/// derive, under the `cli` feature): every field is a flag whose default is read from
/// here, durations as `…-ms` flags in milliseconds, an optional limit's `None` as 0.
/// `tests/cli.rs` reads the fields from the derived `Debug` and checks each has its flag
/// with its default. The scheduler and the replication bookkeeping take their sections as
/// they are ([`crate::scheduler::SchedulerConfig`]). [`Config::validate`] is the one check
/// of a configuration, made by the binary and by [`crate::prepare`] alike.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Config {
    /// Connections: timeouts, queues, frames, and how many one address, network or role may hold.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub connections: Connections,
    /// Scheduling: what the scheduler holds for each gamer and asks of each peer.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub scheduling: Scheduling,
    /// Identity: credentials, TLS, and how long an id stays its owner's.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub identity: Identity,
    /// Rate limits: what one gamer or address may do per second.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub rate_limits: RateLimits,
    /// Replication: replicated and audited physics sessions (see `replication.rs`).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub replication: Replication,
    /// Reputation: what gets a peer quarantined, for how long, and where it is remembered.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub reputation: Reputation,
    /// Federation: many coordinators sharing one fleet over NATS (off without `nats_urls`).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub federation: Federation,
    /// How long shutdown waits for connections to close.
    #[cfg_attr(feature = "cli", arg(long = "shutdown-grace-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().shutdown_grace)))]
    pub shutdown_grace: Duration,
    /// How often a one-line summary of the fleet (peers, gamers, tasks per second, p99
    /// latency) is logged at `info`. `None` (0 on the command line): never.
    #[cfg_attr(feature = "cli", arg(long = "summary-interval-ms", value_name = "MS", value_parser = cli::optional_millis, default_value = cli::optional_ms(defaults().summary_interval)))]
    pub summary_interval: std::option::Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connections: Connections::default(),
            scheduling: Scheduling::default(),
            identity: Identity::default(),
            rate_limits: RateLimits::default(),
            replication: Replication::default(),
            reputation: Reputation::default(),
            federation: Federation::default(),
            shutdown_grace: Duration::from_secs(5),
            summary_interval: Some(Duration::from_secs(10)),
        }
    }
}

/// Connections: timeouts, queues, frames, and how many one address, network or role may hold.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(next_help_heading = "Connections"))]
pub struct Connections {
    /// How often each connection is pinged.
    #[cfg_attr(feature = "cli", arg(long = "heartbeat-interval-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().connections.heartbeat_interval)))]
    pub heartbeat_interval: Duration,
    /// A connection silent this long (no frame, no pong) is evicted.
    #[cfg_attr(feature = "cli", arg(long = "heartbeat-timeout-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().connections.heartbeat_timeout)))]
    pub heartbeat_timeout: Duration,
    /// Time allowed for the WebSocket handshake.
    #[cfg_attr(feature = "cli", arg(long = "handshake-timeout-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().connections.handshake_timeout)))]
    pub handshake_timeout: Duration,
    /// Time allowed between connecting and registering (or asking for stats).
    #[cfg_attr(feature = "cli", arg(long = "register-timeout-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().connections.register_timeout)))]
    pub register_timeout: Duration,
    /// A write to a client that makes no progress this long disconnects it.
    #[cfg_attr(feature = "cli", arg(long = "write-stall-timeout-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().connections.write_stall_timeout)))]
    pub write_stall_timeout: Duration,
    /// A WebSocket message whose first fragment arrived this long ago and which is still
    /// unfinished closes its connection (pongs and heartbeats do not extend it).
    #[cfg_attr(feature = "cli", arg(long = "message-assembly-timeout-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().connections.message_assembly_timeout)))]
    pub message_assembly_timeout: Duration,
    /// Largest accepted frame, in bytes; larger ones close the connection (1009).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.max_frame_bytes))]
    pub max_frame_bytes: usize,
    /// Frames of at least this many bytes are decoded on the blocking pool instead of the
    /// runtime threads that serve every connection (parsing megabytes of JSON inline would
    /// hold up everyone else); smaller ones inline, where the hop costs more than the parse.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.off_runtime_frame_bytes))]
    pub off_runtime_frame_bytes: usize,
    /// Peers that ask for it (on a binary connection) get large frames in chunks between
    /// the other frames, and may send theirs so (`p2c2r_protocol::chunk`): a large payload
    /// holds up the other sessions' ticks on that peer by a chunk, not by itself. Off: whole
    /// frames, as before.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.chunked_frames, action = clap::ArgAction::Set))]
    pub chunked_frames: bool,
    /// Frames buffered towards one connection; a client that falls further behind is
    /// disconnected instead of buffered without limit.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.send_queue_frames))]
    pub send_queue_frames: usize,
    /// Bytes buffered towards one connection (payloads plus a fixed overhead per frame);
    /// a client that falls further behind is disconnected. One frame larger than this
    /// still fits an empty queue.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.send_queue_bytes))]
    pub send_queue_bytes: usize,
    /// Connections served at once; more are refused.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.max_connections))]
    pub max_connections: usize,
    /// Connections one IP address may hold at once.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.max_connections_per_address))]
    pub max_connections_per_address: usize,
    /// Connections all addresses of one network (`host_prefix_v4`, `host_prefix_v6`) may
    /// hold at once.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.max_connections_per_network))]
    pub max_connections_per_network: usize,
    /// Connections that have not registered yet, at once (squatters cannot hold the
    /// registered clients' slots).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.max_unregistered_connections))]
    pub max_unregistered_connections: usize,
    /// Of `max_connections`, slots that only peers may take: gamers can register only
    /// while more than this many slots are free.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.reserved_peer_slots))]
    pub reserved_peer_slots: usize,
    /// Addresses in one IPv4 network of this prefix length count as one network (one
    /// origin, for `quarantine_min_gamers`). 32: every address on its own (tests on
    /// loopback, where 127.0.0.2–9 stand for other machines).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.host_prefix_v4, value_parser = clap::value_parser!(u8).range(0..=32)))]
    pub host_prefix_v4: u8,
    /// The same for IPv6 (48: a site).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().connections.host_prefix_v6, value_parser = clap::value_parser!(u8).range(0..=128)))]
    pub host_prefix_v6: u8,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            register_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(10),
            message_assembly_timeout: Duration::from_secs(20),
            max_frame_bytes: limits::DEFAULT_MAX_FRAME_BYTES,
            off_runtime_frame_bytes: 64 * 1024,
            chunked_frames: true,
            send_queue_frames: 1024,
            send_queue_bytes: 2 * limits::DEFAULT_MAX_FRAME_BYTES,
            max_connections: 4096,
            max_connections_per_address: 64,
            max_connections_per_network: 256,
            max_unregistered_connections: 512,
            reserved_peer_slots: 256,
            host_prefix_v4: 24,
            host_prefix_v6: 48,
        }
    }
}

/// Scheduling: what the scheduler holds for each gamer and asks of each peer.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(next_help_heading = "Scheduling"))]
pub struct Scheduling {
    /// Per-attempt deadline of a task whose request carries no `deadline_ms`.
    #[cfg_attr(feature = "cli", arg(long = "task-deadline-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().scheduling.default_task_deadline)))]
    pub default_task_deadline: Duration,
    /// Dispatches per task before the gamer is told it failed.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.max_attempts))]
    pub max_attempts: u32,
    /// Tasks one gamer may have queued or in flight.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.max_pending_per_gamer))]
    pub max_pending_per_gamer: usize,
    /// Sessions one gamer may keep.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.max_sessions_per_gamer))]
    pub max_sessions_per_gamer: usize,
    /// A task still waiting for a peer this long after it was submitted is answered with
    /// a `queue_timeout` error. `None` (0 on the command line): tasks wait for a capable peer forever.
    #[cfg_attr(feature = "cli", arg(long = "max-queue-wait-ms", value_name = "MS", value_parser = cli::optional_millis, default_value = cli::optional_ms(defaults().scheduling.max_queue_wait)))]
    pub max_queue_wait: std::option::Option<Duration>,
    /// Payload bytes one gamer may have pending (queued or in flight).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.max_pending_bytes_per_gamer))]
    pub max_pending_bytes_per_gamer: usize,
    /// Payload bytes all gamers together may have pending.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.max_pending_bytes))]
    pub max_pending_bytes: usize,
    /// A peer's declared `max_concurrent_tasks` is capped at this.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.max_peer_capacity))]
    pub max_peer_capacity: u32,
    /// Tasks a newly registered peer is given at once before it has shown it can do
    /// more; each completion raises it by one (up to what it declared), each missed
    /// deadline halves it (never below this).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.initial_peer_capacity))]
    pub initial_peer_capacity: u32,
    /// Most tasks of one session in flight at its peer at once: they run one after
    /// another there and take one slot together; the ticks behind the running one are
    /// pipelined to hide the round trip.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.max_session_pipeline))]
    pub max_session_pipeline: u32,
    /// A session whose peer answers this many ticks in a row with a resync error moves to
    /// another peer when one can take it; 0: never.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().scheduling.max_resyncs_in_a_row))]
    pub max_resyncs_in_a_row: u32,
}

impl Default for Scheduling {
    fn default() -> Self {
        Scheduling {
            default_task_deadline: Duration::from_millis(limits::DEFAULT_TASK_DEADLINE_MS),
            max_attempts: 3,
            max_pending_per_gamer: 10_000,
            max_sessions_per_gamer: 64,
            max_queue_wait: Some(Duration::from_secs(30)),
            max_pending_bytes_per_gamer: 64 * 1024 * 1024,
            max_pending_bytes: 1024 * 1024 * 1024,
            max_peer_capacity: 64,
            initial_peer_capacity: 4,
            max_session_pipeline: 16,
            max_resyncs_in_a_row: 3,
        }
    }
}

/// Identity: credentials, TLS, and how long an id stays its owner's.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(next_help_heading = "Identity"))]
pub struct Identity {
    /// Credentials (see [`crate::auth`]): tokens are required when set. `None`: open mode,
    /// allowed only on a loopback address unless [`insecure`](Self::insecure).
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_AUTH_FILE", value_name = "PATH"))]
    pub auth_file: Option<PathBuf>,
    /// Allows open mode on a non-loopback address (logged loudly at start).
    #[cfg_attr(feature = "cli", arg(long))]
    pub insecure: bool,
    /// Serve `wss://` (and `https://`) with this certificate and key.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub tls: Option<TlsFiles>,
    /// How long an id stays reserved after its connection closes: only a registration
    /// presenting its resume secret (or the same credential) may take it, and a gamer's
    /// tasks keep running and their results are kept for it meanwhile. Zero: the id is
    /// free, and a gamer's tasks dropped, as soon as the connection closes.
    #[cfg_attr(feature = "cli", arg(long = "resume-grace-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().identity.resume_grace)))]
    pub resume_grace: Duration,
}

impl Default for Identity {
    fn default() -> Self {
        Identity { auth_file: None, insecure: false, tls: None, resume_grace: Duration::from_secs(10) }
    }
}

/// Rate limits: what one gamer or address may do per second.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(next_help_heading = "Rate limits"))]
pub struct RateLimits {
    /// Tasks one gamer may submit per second (bursts of two seconds' worth); `None` (0 on the command line):
    /// unlimited.
    #[cfg_attr(feature = "cli", arg(long, value_parser = cli::zero_is_none::<u32>, default_value = cli::zero_or(defaults().rate_limits.max_tasks_per_second)))]
    pub max_tasks_per_second: std::option::Option<u32>,
    /// Task payload bytes one gamer may submit per second (bursts of two seconds' worth);
    /// `None` (0 on the command line): unlimited.
    #[cfg_attr(feature = "cli", arg(long, value_parser = cli::zero_is_none::<usize>, default_value = cli::zero_or(defaults().rate_limits.max_task_bytes_per_second)))]
    pub max_task_bytes_per_second: std::option::Option<usize>,
    /// New sessions one gamer may open per second (bursts up to
    /// `max_sessions_per_gamer`); `None` (0 on the command line): unlimited.
    #[cfg_attr(feature = "cli", arg(long, value_parser = cli::zero_is_none::<u32>, default_value = cli::zero_or(defaults().rate_limits.max_new_sessions_per_second)))]
    pub max_new_sessions_per_second: std::option::Option<u32>,
    /// Connection attempts one address (IPv6: /64) may make per second (bursts of four
    /// seconds' worth); beyond it, `429 Too Many Requests`. `None` (0 on the command line): unlimited.
    #[cfg_attr(feature = "cli", arg(long, value_parser = cli::zero_is_none::<u32>, default_value = cli::zero_or(defaults().rate_limits.max_connection_attempts_per_second)))]
    pub max_connection_attempts_per_second: std::option::Option<u32>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            max_tasks_per_second: Some(5_000),
            max_task_bytes_per_second: Some(64 * 1024 * 1024),
            max_new_sessions_per_second: Some(10),
            max_connection_attempts_per_second: Some(64),
        }
    }
}

/// Replication: replicated and audited physics sessions (see `replication.rs`).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(next_help_heading = "Replication"))]
pub struct Replication {
    /// Replicas each physics session runs on (1..=5): every replica steps every tick,
    /// the gamer gets the first answer, answers are compared, and the death of one
    /// replica costs the session nothing (see `replication.rs`). 1: not replicated.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().replication.replicas, value_parser = clap::value_parser!(u8).range(1..=5)))]
    pub replicas: u8,
    /// Fraction (0..=1) of unreplicated physics sessions that run on a second, hidden
    /// replica whose answers are compared (an audit); sessions are drawn when they
    /// start. Applies whenever a second compatible peer is connected.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().replication.audit_fraction))]
    pub audit_fraction: f64,
    /// Deliver only answers two replicas agree on (every physics session gets at least
    /// two replicas; a disagreement or a missing replica is answered `unverified` with
    /// resync, so the gamer steps locally meanwhile).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().replication.strict_replication, action = clap::ArgAction::Set))]
    pub strict_replication: bool,
    /// Replicas of one session must run on peers connected from different addresses, so
    /// one machine running many peers cannot outvote the others. Turn it off only where
    /// all peers share an address (tests on loopback).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().replication.replicas_on_distinct_hosts, action = clap::ArgAction::Set))]
    pub replicas_on_distinct_hosts: bool,
    /// Ticks a replicated session's log keeps since its last snapshot (what a replica
    /// started later replays). Past it, replicas are started only at a snapshot.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().replication.replica_log_ticks))]
    pub replica_log_ticks: usize,
    /// Payload bytes a replicated session's log keeps, at most.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().replication.replica_log_bytes))]
    pub replica_log_bytes: usize,
    /// Payload bytes all replicated sessions' logs keep together, at most.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().replication.max_replica_log_bytes))]
    pub max_replica_log_bytes: usize,
    /// The determinism setups (as `Determinism::label` writes them: `engine [features]
    /// sim arch`, what a peer logs at start) whose peers may serve replicated and audited
    /// sessions: the builds the operator ships. A peer declaring another setup still
    /// serves unreplicated work, but is never a replica. Empty (the default): any setup;
    /// the one the most established peers share is used.
    #[cfg_attr(
        feature = "cli",
        arg(long = "accepted-setup", env = "P2C2R_ACCEPTED_SETUPS", value_delimiter = ';', value_name = "SETUP")
    )]
    pub accepted_setups: Vec<String>,
    /// With credentials on (`auth_file`), a peer no audit can check (it declares no
    /// determinism setup, or one no peer on another network shares) serves no sessions
    /// unless this is set; sessionless tasks it still runs. Without credentials (open
    /// mode, loopback only) every peer serves sessions.
    #[cfg_attr(feature = "cli", arg(long))]
    pub allow_unauditable_peers: bool,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            replicas: 1,
            audit_fraction: 0.1,
            strict_replication: false,
            replicas_on_distinct_hosts: true,
            replica_log_ticks: 1800,
            replica_log_bytes: 8 * 1024 * 1024,
            max_replica_log_bytes: 256 * 1024 * 1024,
            accepted_setups: Vec::new(),
            allow_unauditable_peers: false,
        }
    }
}

/// Reputation: what gets a peer quarantined, for how long, and where it is remembered.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(next_help_heading = "Reputation"))]
pub struct Reputation {
    /// A peer that misses this many task deadlines in a row (no successful answer in
    /// between) is quarantined: closed, its tasks re-queued, its id refused for
    /// `quarantine_duration`. A miss counts only once an established peer (see
    /// `established_after_answers`) has answered the same task successfully in time, on a
    /// deadline no shorter than such work has shown it needs on the missing peer; so
    /// tasks nobody runs in time, errors and a gamer's own fresh peers never get a peer
    /// quarantined. 0: never.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().reputation.quarantine_after_misses))]
    pub quarantine_after_misses: u32,
    /// The misses that quarantine a peer must be on work of gamers from at least this
    /// many different networks (see `host_prefix_v4`): one gamer alone cannot get a peer
    /// quarantined. 1: any gamer's.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().reputation.quarantine_min_gamers))]
    pub quarantine_min_gamers: u32,
    /// Successful answers a peer must have given (its standing keeps the count across
    /// reconnects and, with `reputation_db`, restarts) before its answers confirm another
    /// peer's miss, and before a retried task prefers it to an unproven peer.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().reputation.established_after_answers))]
    pub established_after_answers: u64,
    /// How long a quarantined peer id is refused.
    #[cfg_attr(feature = "cli", arg(long = "quarantine-duration-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().reputation.quarantine_duration)))]
    pub quarantine_duration: Duration,
    /// Where quarantines and departed peers' standing (the capacity each has shown, its
    /// streak of missed deadlines) are kept across restarts (an embedded redb database,
    /// created on first start; see `reputation.rs`). `None` (the default): in memory only,
    /// so a restart forgets them: a quarantined peer is let back in, a demoted one starts
    /// afresh. Set it in production.
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_REPUTATION_DB", value_name = "PATH"))]
    pub reputation_db: Option<std::path::PathBuf>,
    /// A peer in disputes nothing could settle with established peers of this many
    /// different networks (see `host_prefix_v4`), and more of them than networks it agreed
    /// with, is quarantined (see `disputes.rs`); 0: never. Two peers whose dispute was not
    /// settled are never replicas of one session again for `quarantine_duration`.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().reputation.dispute_partners_to_quarantine))]
    pub dispute_partners_to_quarantine: usize,
}

impl Default for Reputation {
    fn default() -> Self {
        Reputation {
            quarantine_after_misses: 8,
            quarantine_min_gamers: 2,
            established_after_answers: 16,
            quarantine_duration: Duration::from_secs(3600),
            reputation_db: None,
            dispute_partners_to_quarantine: 3,
        }
    }
}

/// Federation: many coordinators sharing one fleet over NATS (see [`crate::federation`]).
/// Without `nats_urls` the coordinator runs alone, exactly as it always has.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(next_help_heading = "Federation"))]
pub struct Federation {
    /// NATS servers of the fleet's cluster (comma-separated); none: this coordinator runs
    /// alone. Only coordinators hold NATS credentials; gamers and peers never reach NATS.
    #[cfg_attr(
        feature = "cli",
        arg(long = "nats-url", env = "P2C2R_NATS_URL", value_delimiter = ',', value_name = "URL")
    )]
    pub nats_urls: Vec<String>,
    /// This coordinator's name in the fleet (letters, digits, `-` and `_`, at most 64); none:
    /// a random one at each start.
    #[cfg_attr(feature = "cli", arg(long, value_name = "NAME"))]
    pub coordinator_id: Option<String>,
    /// The WebSocket URL gamers and peers reach this coordinator at, shown to the fleet
    /// (the fleet page); none: the coordinator's own listening address.
    #[cfg_attr(feature = "cli", arg(long, value_name = "URL"))]
    pub advertise_url: Option<String>,
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed).
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_NATS_CREDENTIALS", value_name = "PATH"))]
    pub nats_credentials: Option<PathBuf>,
    /// A file holding this coordinator's NKey seed (`SU…`), for servers that list NKeys.
    #[cfg_attr(feature = "cli", arg(long, env = "P2C2R_NATS_NKEY_SEED", value_name = "PATH"))]
    pub nats_nkey_seed: Option<PathBuf>,
    /// A PEM file of certificate authorities for the NATS servers' TLS; given, TLS is required.
    #[cfg_attr(feature = "cli", arg(long, value_name = "PATH"))]
    pub nats_ca: Option<PathBuf>,
    /// A coordinator that has not renewed its lease for this long counts as gone (a hung
    /// or killed one included); it renews every third of it.
    #[cfg_attr(feature = "cli", arg(long = "lease-ttl-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().federation.lease_ttl)))]
    pub lease_ttl: Duration,
    /// Copies the NATS cluster keeps of each key-value bucket (3 survives one server lost;
    /// a lone server needs 1).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = defaults().federation.kv_replicas, value_parser = clap::value_parser!(u8).range(1..=5)))]
    pub kv_replicas: u8,
    /// How long a key-value operation may take, retries included (a bucket whose leader
    /// died elects another in a few seconds): a registration waits at most this long for its claim.
    #[cfg_attr(feature = "cli", arg(long = "kv-timeout-ms", value_name = "MS", value_parser = cli::millis, default_value = cli::ms(defaults().federation.kv_timeout)))]
    pub kv_timeout: Duration,
}

impl Default for Federation {
    fn default() -> Self {
        Federation {
            nats_urls: Vec::new(),
            coordinator_id: None,
            advertise_url: None,
            nats_credentials: None,
            nats_nkey_seed: None,
            nats_ca: None,
            lease_ttl: Duration::from_secs(3),
            kv_replicas: 3,
            kv_timeout: Duration::from_secs(10),
        }
    }
}

impl Federation {
    /// Whether this coordinator joins a fleet.
    pub fn enabled(&self) -> bool {
        !self.nats_urls.is_empty()
    }
}

/// Why a configuration cannot serve: every problem found, each naming its setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct InvalidConfig(pub Vec<String>);

impl Config {
    /// Checks the settings that have a range: what the coordinator would otherwise have
    /// to guess (a zero heartbeat interval, a replica count of 9). Every problem is
    /// named, by the setting's field (its flag is the field's name in kebab case).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut problems = Vec::new();
        let mut at_least_one = |name: &str, value: u128| {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        };
        at_least_one("heartbeat_interval (ms)", self.connections.heartbeat_interval.as_millis());
        at_least_one("default_task_deadline (ms)", self.scheduling.default_task_deadline.as_millis());
        at_least_one("write_stall_timeout (ms)", self.connections.write_stall_timeout.as_millis());
        at_least_one("message_assembly_timeout (ms)", self.connections.message_assembly_timeout.as_millis());
        at_least_one("max_attempts", self.scheduling.max_attempts.into());
        at_least_one("max_frame_bytes", self.connections.max_frame_bytes as u128);
        at_least_one("send_queue_frames", self.connections.send_queue_frames as u128);
        at_least_one("send_queue_bytes", self.connections.send_queue_bytes as u128);
        at_least_one("max_connections", self.connections.max_connections as u128);
        at_least_one("max_connections_per_address", self.connections.max_connections_per_address as u128);
        at_least_one("max_connections_per_network", self.connections.max_connections_per_network as u128);
        at_least_one("max_unregistered_connections", self.connections.max_unregistered_connections as u128);
        at_least_one("max_pending_bytes_per_gamer", self.scheduling.max_pending_bytes_per_gamer as u128);
        at_least_one("max_pending_bytes", self.scheduling.max_pending_bytes as u128);
        at_least_one("max_peer_capacity", self.scheduling.max_peer_capacity.into());
        at_least_one("initial_peer_capacity", self.scheduling.initial_peer_capacity.into());
        at_least_one("max_session_pipeline", self.scheduling.max_session_pipeline.into());
        if !(1..=crate::replication::MAX_REPLICAS).contains(&self.replication.replicas) {
            problems.push(format!("replicas must be 1 to {}", crate::replication::MAX_REPLICAS));
        }
        if !(0.0..=1.0).contains(&self.replication.audit_fraction) {
            problems.push("audit_fraction must be between 0 and 1".to_owned());
        }
        if self.connections.host_prefix_v4 > 32 || self.connections.host_prefix_v6 > 128 {
            problems.push("host_prefix_v4 must be at most 32 and host_prefix_v6 at most 128".to_owned());
        }
        let federation = &self.federation;
        if federation.enabled() && !cfg!(feature = "nats") {
            problems.push("nats_url needs the coordinator's `nats` feature (on by default)".to_owned());
        }
        if let Some(id) = &federation.coordinator_id
            && (id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            problems.push("coordinator_id must be 1 to 64 letters, digits, `-` or `_`".to_owned());
        }
        if federation.lease_ttl < Duration::from_millis(300) {
            problems.push("lease_ttl must be at least 300 ms".to_owned());
        }
        if !(1..=5).contains(&federation.kv_replicas) {
            problems.push("kv_replicas must be 1 to 5".to_owned());
        }
        if federation.kv_timeout.as_millis() == 0 {
            problems.push("kv_timeout (ms) must be at least 1".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(InvalidConfig(problems)) }
    }

    /// The federation's settings, when it is on.
    pub fn federated(&self) -> Option<&Federation> {
        self.federation.enabled().then_some(&self.federation)
    }

    /// Whether listening on `addr` is allowed: open mode (no credentials) only on a
    /// loopback address, unless `insecure` says otherwise (as Redis's protected mode).
    /// With credentials, a non-loopback address also needs TLS: tokens and resume
    /// secrets must not cross the network in clear text (terminate TLS in a proxy on
    /// loopback, or pass `insecure`).
    pub fn check_exposure(&self, addr: std::net::SocketAddr) -> Result<(), String> {
        if addr.ip().is_loopback() || self.identity.insecure {
            return Ok(());
        }
        if self.identity.auth_file.is_some() {
            if self.identity.tls.is_some() {
                return Ok(());
            }
            return Err(format!(
                "refusing to listen on {addr} with credentials but without TLS: tokens and resume secrets would \
                 cross the network in clear text. Give --tls-cert and --tls-key, terminate TLS in a proxy and \
                 listen on 127.0.0.1, or pass --insecure to accept the risk"
            ));
        }
        Err(format!(
            "refusing to listen on {addr} without credentials: anyone who reaches it could act as any \
             gamer or peer. Give --auth-file (see README \"Deploying on the internet\"), listen on \
             127.0.0.1, or pass --insecure to accept the risk"
        ))
    }
}

/// How the derived command line reads and shows what `Config` holds in other types.
#[cfg(feature = "cli")]
mod cli {
    pub(super) use p2c2r_ops::flags::{millis, ms, optional_millis, optional_ms, zero_is_none, zero_or};

    /// `Config::default()`: the one source of every flag's default.
    pub(super) fn defaults() -> super::Config {
        super::Config::default()
    }
}
#[cfg(feature = "cli")]
use cli::defaults;
