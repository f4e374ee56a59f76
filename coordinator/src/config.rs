//! The coordinator's settings, with safe defaults.

use std::time::Duration;

use p2c2r_protocol::limits;

/// Everything the coordinator can be told. `Config::default()` is what
/// `cargo run -p coordinator` uses; every field has a matching command-line flag.
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
        }
    }
}
