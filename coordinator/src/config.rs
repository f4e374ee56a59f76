//! The coordinator's settings, with safe defaults.

use std::path::PathBuf;
use std::time::Duration;

use p2c2r_protocol::limits;

pub use crate::tls::TlsFiles;

/// Everything the coordinator can be told. `Config::default()` is what
/// `cargo run -p coordinator` uses; every field has a matching command-line flag, whose
/// default is read from here (durations as `…-ms` flags, in milliseconds). A new field
/// needs its flag: `tests/cli.rs` reads the fields from this struct's derived `Debug`.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often each connection is pinged.
    pub heartbeat_interval: Duration,
    /// A connection silent this long (no frame, no pong) is evicted.
    pub heartbeat_timeout: Duration,
    /// Per-attempt deadline of a task whose request carries no `deadline_ms`.
    pub default_task_deadline: Duration,
    /// Dispatches per task before the gamer is told it failed.
    pub max_attempts: u32,
    /// Largest accepted frame, in bytes; larger ones close the connection (1009).
    pub max_frame_bytes: usize,
    /// Time allowed for the WebSocket handshake.
    pub handshake_timeout: Duration,
    /// Time allowed between connecting and registering (or asking for stats).
    pub register_timeout: Duration,
    /// Frames buffered towards one connection; a client that falls further behind is
    /// disconnected instead of buffered without limit.
    pub send_queue_frames: usize,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Tasks one gamer may have queued or in flight.
    pub max_pending_per_gamer: usize,
    /// Sessions one gamer may keep.
    pub max_sessions_per_gamer: usize,
    /// A task still waiting for a peer this long after it was submitted is answered with
    /// a `queue_timeout` error. `None`: tasks wait for a capable peer forever.
    pub max_queue_wait: Option<Duration>,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// Bytes buffered towards one connection (payloads plus a fixed overhead per frame);
    /// a client that falls further behind is disconnected. One frame larger than this
    /// still fits an empty queue.
    pub send_queue_bytes: usize,
    /// A write to a client that makes no progress this long disconnects it.
    pub write_stall_timeout: Duration,
    /// A WebSocket message whose first fragment arrived this long ago and which is still
    /// unfinished closes its connection (pongs and heartbeats do not extend it).
    pub message_assembly_timeout: Duration,
    /// Connections one IP address may hold at once.
    pub max_connections_per_address: usize,
    /// Connections all addresses of one network (`host_prefix_v4`, `host_prefix_v6`) may
    /// hold at once.
    pub max_connections_per_network: usize,
    /// Connections that have not registered yet, at once (squatters cannot hold the
    /// registered clients' slots).
    pub max_unregistered_connections: usize,
    /// Of `max_connections`, slots that only peers may take: gamers can register only
    /// while more than this many slots are free.
    pub reserved_peer_slots: usize,
    /// Payload bytes one gamer may have pending (queued or in flight).
    pub max_pending_bytes_per_gamer: usize,
    /// Payload bytes all gamers together may have pending.
    pub max_pending_bytes: usize,
    /// A peer's declared `max_concurrent_tasks` is capped at this.
    pub max_peer_capacity: u32,
    /// Tasks a newly registered peer is given at once before it has shown it can do
    /// more; each completion raises it by one (up to what it declared), each missed
    /// deadline halves it (never below this).
    pub initial_peer_capacity: u32,
    /// Most tasks of one session in flight at its peer at once: they run one after
    /// another there and take one slot together; the ticks behind the running one are
    /// pipelined to hide the round trip.
    pub max_session_pipeline: u32,
    /// How often a one-line summary of the fleet (peers, gamers, tasks per second, p99
    /// latency) is logged at `info`. `None`: never.
    pub summary_interval: Option<Duration>,
    /// Credentials (see [`crate::auth`]): tokens are required when set. `None`: open mode,
    /// allowed only on a loopback address unless [`insecure`](Self::insecure).
    pub auth_file: Option<PathBuf>,
    /// Allows open mode on a non-loopback address (logged loudly at start).
    pub insecure: bool,
    /// Serve `wss://` (and `https://`) with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// How long an id stays reserved after its connection closes: only a registration
    /// presenting its resume secret (or the same credential) may take it, and a gamer's
    /// tasks keep running and their results are kept for it meanwhile. Zero: the id is
    /// free, and a gamer's tasks dropped, as soon as the connection closes.
    pub resume_grace: Duration,
    /// Tasks one gamer may submit per second (bursts of two seconds' worth); `None`:
    /// unlimited.
    pub max_tasks_per_second: Option<u32>,
    /// Task payload bytes one gamer may submit per second (bursts of two seconds' worth);
    /// `None`: unlimited.
    pub max_task_bytes_per_second: Option<usize>,
    /// New sessions one gamer may open per second (bursts up to
    /// `max_sessions_per_gamer`); `None`: unlimited.
    pub max_new_sessions_per_second: Option<u32>,
    /// Connection attempts one address (IPv6: /64) may make per second (bursts of four
    /// seconds' worth); beyond it, `429 Too Many Requests`. `None`: unlimited.
    pub max_connection_attempts_per_second: Option<u32>,
    /// A peer that misses this many task deadlines in a row (no successful answer in
    /// between) is quarantined: closed, its tasks re-queued, its id refused for
    /// `quarantine_duration`. A miss counts only once an established peer (see
    /// `established_after_answers`) has answered the same task successfully in time, on a
    /// deadline no shorter than such work has shown it needs on the missing peer; so
    /// tasks nobody runs in time, errors and a gamer's own fresh peers never get a peer
    /// quarantined. 0: never.
    pub quarantine_after_misses: u32,
    /// The misses that quarantine a peer must be on work of gamers from at least this
    /// many different networks (see `host_prefix_v4`): one gamer alone cannot get a peer
    /// quarantined. 1: any gamer's.
    pub quarantine_min_gamers: u32,
    /// Successful answers a peer must have given (its standing keeps the count across
    /// reconnects and, with `reputation_db`, restarts) before its answers confirm another
    /// peer's miss, and before a retried task prefers it to an unproven peer.
    pub established_after_answers: u64,
    /// A session whose peer answers this many ticks in a row with a resync error moves to
    /// another peer when one can take it; 0: never.
    pub max_resyncs_in_a_row: u32,
    /// Addresses in one IPv4 network of this prefix length count as one network (one
    /// origin, for `quarantine_min_gamers`). 32: every address on its own (tests on
    /// loopback, where 127.0.0.2–9 stand for other machines).
    pub host_prefix_v4: u8,
    /// The same for IPv6 (48: a site).
    pub host_prefix_v6: u8,
    /// The determinism setups (as `Determinism::label` writes them: `engine [features]
    /// sim arch`, what a peer logs at start) whose peers may serve replicated and audited
    /// sessions: the builds the operator ships. A peer declaring another setup still
    /// serves unreplicated work, but is never a replica. Empty (the default): any setup;
    /// the one the most established peers share is used.
    pub accepted_setups: Vec<String>,
    /// Frames of at least this many bytes are decoded on the blocking pool instead of the
    /// runtime threads that serve every connection (parsing megabytes of JSON inline would
    /// hold up everyone else); smaller ones inline, where the hop costs more than the parse.
    pub off_runtime_frame_bytes: usize,
    /// Peers that ask for it (on a binary connection) get large frames in chunks between
    /// the other frames, and may send theirs so (`p2c2r_protocol::chunk`): a large payload
    /// holds up the other sessions' ticks on that peer by a chunk, not by itself. Off: whole
    /// frames, as before.
    pub chunked_frames: bool,
    /// How long a quarantined peer id is refused.
    pub quarantine_duration: Duration,
    /// Where quarantines and departed peers' standing (the capacity each has shown, its
    /// streak of missed deadlines) are kept across restarts (an embedded redb database,
    /// created on first start; see `reputation.rs`). `None` (the default): in memory only,
    /// so a restart forgets them: a quarantined peer is let back in, a demoted one starts
    /// afresh. Set it in production.
    pub reputation_db: Option<std::path::PathBuf>,
    /// Replicas each physics session runs on (1..=5): every replica steps every tick,
    /// the gamer gets the first answer, answers are compared, and the death of one
    /// replica costs the session nothing (see `replication.rs`). 1: not replicated.
    pub replicas: u8,
    /// Fraction (0..=1) of unreplicated physics sessions that run on a second, hidden
    /// replica whose answers are compared (an audit); sessions are drawn when they
    /// start. Applies whenever a second compatible peer is connected.
    pub audit_fraction: f64,
    /// Deliver only answers two replicas agree on (every physics session gets at least
    /// two replicas; a disagreement or a missing replica is answered `unverified` with
    /// resync, so the gamer steps locally meanwhile).
    pub strict_replication: bool,
    /// Replicas of one session must run on peers connected from different addresses, so
    /// one machine running many peers cannot outvote the others. Turn it off only where
    /// all peers share an address (tests on loopback).
    pub replicas_on_distinct_hosts: bool,
    /// Ticks a replicated session's log keeps since its last snapshot (what a replica
    /// started later replays). Past it, replicas are started only at a snapshot.
    pub replica_log_ticks: usize,
    /// Payload bytes a replicated session's log keeps, at most.
    pub replica_log_bytes: usize,
    /// Payload bytes all replicated sessions' logs keep together, at most.
    pub max_replica_log_bytes: usize,
    /// A peer in disputes nothing could settle with established peers of this many
    /// different networks (see `host_prefix_v4`), and more of them than networks it agreed
    /// with, is quarantined (see `disputes.rs`); 0: never. Two peers whose dispute was not
    /// settled are never replicas of one session again for `quarantine_duration`.
    pub dispute_partners_to_quarantine: usize,
    /// With credentials on (`auth_file`), a peer no audit can check (it declares no
    /// determinism setup, or one no peer on another network shares) serves no sessions
    /// unless this is set; sessionless tasks it still runs. Without credentials (open
    /// mode, loopback only) every peer serves sessions.
    pub allow_unauditable_peers: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            default_task_deadline: Duration::from_millis(limits::DEFAULT_TASK_DEADLINE_MS),
            max_attempts: 3,
            max_frame_bytes: limits::DEFAULT_MAX_FRAME_BYTES,
            handshake_timeout: Duration::from_secs(5),
            register_timeout: Duration::from_secs(10),
            send_queue_frames: 1024,
            max_connections: 4096,
            max_pending_per_gamer: 10_000,
            max_sessions_per_gamer: 64,
            max_queue_wait: Some(Duration::from_secs(30)),
            shutdown_grace: Duration::from_secs(5),
            send_queue_bytes: 2 * limits::DEFAULT_MAX_FRAME_BYTES,
            write_stall_timeout: Duration::from_secs(10),
            message_assembly_timeout: Duration::from_secs(20),
            max_connections_per_address: 64,
            max_connections_per_network: 256,
            max_unregistered_connections: 512,
            reserved_peer_slots: 256,
            max_pending_bytes_per_gamer: 64 * 1024 * 1024,
            max_pending_bytes: 1024 * 1024 * 1024,
            max_peer_capacity: 64,
            initial_peer_capacity: 4,
            max_session_pipeline: 16,
            summary_interval: Some(Duration::from_secs(10)),
            auth_file: None,
            insecure: false,
            tls: None,
            resume_grace: Duration::from_secs(10),
            max_tasks_per_second: Some(5_000),
            max_task_bytes_per_second: Some(64 * 1024 * 1024),
            max_new_sessions_per_second: Some(10),
            max_connection_attempts_per_second: Some(64),
            quarantine_after_misses: 8,
            quarantine_min_gamers: 2,
            established_after_answers: 16,
            max_resyncs_in_a_row: 3,
            host_prefix_v4: 24,
            host_prefix_v6: 48,
            accepted_setups: Vec::new(),
            off_runtime_frame_bytes: 64 * 1024,
            quarantine_duration: Duration::from_secs(3600),
            reputation_db: None,
            replicas: 1,
            audit_fraction: 0.1,
            dispute_partners_to_quarantine: 3,
            chunked_frames: true,
            allow_unauditable_peers: false,
            strict_replication: false,
            replicas_on_distinct_hosts: true,
            replica_log_ticks: 1800,
            replica_log_bytes: 8 * 1024 * 1024,
            max_replica_log_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Whether listening on `addr` is allowed: open mode (no credentials) only on a
    /// loopback address, unless `insecure` says otherwise (as Redis's protected mode).
    /// With credentials, a non-loopback address also needs TLS: tokens and resume
    /// secrets must not cross the network in clear text (terminate TLS in a proxy on
    /// loopback, or pass `insecure`).
    pub fn check_exposure(&self, addr: std::net::SocketAddr) -> Result<(), String> {
        if addr.ip().is_loopback() || self.insecure {
            return Ok(());
        }
        if self.auth_file.is_some() {
            if self.tls.is_some() {
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
