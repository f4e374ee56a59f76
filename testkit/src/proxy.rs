//! A latency-injecting TCP proxy, like Linux `netem` but in-process.
//!
//! [`start`] listens on `127.0.0.1:0`; every connection it accepts is paired with a new
//! connection to the target, and bytes are forwarded both ways. Each direction gets the
//! current [`Conditions`] independently:
//!
//! - **latency and jitter**: each chunk read from one side (up to 64 KiB) is released to
//!   the other side at `max(previous release, arrival + latency ± jitter)`, never before
//!   its arrival. Data stays in order, as on any TCP path: jitter spreads the delays, it
//!   never reorders bytes.
//! - **bandwidth**: a chunk also waits for its serialization on a link of the given
//!   bytes per second ("link busy until" clock), before its latency starts.
//! - **backpressure**: at most 8 MiB wait in each direction; when that is full the proxy
//!   stops reading from the sender, just like a full TCP window.
//! - **close**: an end of stream (FIN) is forwarded after the data queued before it (it
//!   travels the path like data); an error on either socket closes both abruptly.
//!
//! The [`Proxy`] handle changes the path while tests run: [`Proxy::set_conditions`],
//! [`Proxy::stall`] (hold everything for a while), [`Proxy::sever`] (reset every open
//! connection) and [`Proxy::shutdown`].
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use p2c2r_testkit::proxy::{self, Conditions};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! // The server under test (here: an echo server) listens on an ephemeral port.
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let server_addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut socket, _)) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let (mut from, mut to) = socket.split();
//!             let _ = tokio::io::copy(&mut from, &mut to).await;
//!         });
//!     }
//! });
//!
//! // Put a 60 ms ± 7.5 ms round trip between the client and the server...
//! let proxy =
//!     proxy::start(server_addr, Conditions::round_trip(Duration::from_millis(60), Duration::from_millis(15))).await?;
//! // ...and point the client at the proxy instead of the server: a WebSocket client
//! // takes `proxy.url()` ("ws://127.0.0.1:PORT"), a plain TCP client `proxy.addr()`.
//! let mut client = TcpStream::connect(proxy.addr()).await?;
//! let sent = Instant::now();
//! client.write_all(b"ping").await?;
//! let mut echo = [0; 4];
//! client.read_exact(&mut echo).await?;
//! assert_eq!(&echo, b"ping");
//! assert!(sent.elapsed() >= Duration::from_millis(45)); // at least rtt - jitter
//!
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The most bytes read from a socket at once (one chunk on the simulated path).
const CHUNK_BYTES: usize = 64 * 1024;
/// The most bytes waiting in one direction of one connection before the proxy stops
/// reading from the sender.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// The proxy's sockets' receive buffers when [`Conditions::queue_bytes`] is set (the
/// kernel doubles it). Not smaller: loopback's segments are 64 KiB, and a window of less
/// than two of them is reopened only by delayed acknowledgements (40 ms), which would make
/// the path crawl.
const PATH_RECV_BUFFER: usize = 128 * 1024;

/// The conditions of the simulated path, applied to each direction independently.
///
/// The [`Default`] is a perfect path: no delay, no bandwidth limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Conditions {
    /// One-way delay added to every chunk.
    pub latency: Duration,
    /// One-way jitter: each chunk's delay is `latency` plus a uniform sample in
    /// `[-jitter, +jitter]` (never below zero; data still stays in order).
    pub jitter: Duration,
    /// Link capacity in bytes per second, per direction; `None` (or `Some(0)`) is unlimited.
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Bytes the proxy queues in each direction before it pushes back (the bottleneck's
    /// queue), at least one read of 64 KiB; its sockets' receive buffers are then held at
    /// 256 KiB (autotuning would grow them to megabytes), which the path holds too. `None`:
    /// 8 MiB, and the kernel's buffers as they grow. Read when a connection opens.
    pub queue_bytes: Option<usize>,
}

impl Conditions {
    /// A path with this round-trip time and round-trip jitter: one-way latency `rtt / 2`
    /// and one-way jitter `jitter / 2`, no bandwidth limit.
    pub fn round_trip(rtt: Duration, jitter: Duration) -> Self {
        Self { latency: rtt / 2, jitter: jitter / 2, bandwidth_bytes_per_s: None, queue_bytes: None }
    }

    /// These conditions with a queue of `bytes` in each direction (a router's buffer: what
    /// a sender can get ahead of the link by).
    pub fn with_queue(self, bytes: usize) -> Self {
        Self { queue_bytes: Some(bytes), ..self }
    }

    /// These conditions with a bandwidth limit of `bytes_per_s` in each direction.
    pub fn with_bandwidth(self, bytes_per_s: u64) -> Self {
        Self { bandwidth_bytes_per_s: Some(bytes_per_s), ..self }
    }
}

/// Another name for [`Proxy`], the handle of a running netem-like proxy.
pub type NetemProxy = Proxy;

/// Starts a proxy on `127.0.0.1:0` that forwards every accepted connection to `target`
/// under `conditions` (see the [module docs](self)).
///
/// The proxy runs on the current Tokio runtime until [`Proxy::shutdown`] or drop.
pub async fn start(target: SocketAddr, conditions: Conditions) -> std::io::Result<Proxy> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let root = CancellationToken::new();
    let shared = Arc::new(Shared {
        target,
        conditions: Mutex::new(conditions),
        stall_until: Mutex::new(None),
        generation: Mutex::new(root.child_token()),
        root,
        connections: AtomicUsize::new(0),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(accept_loop(listener, Arc::clone(&shared), tracker.clone()));
    Ok(Proxy { addr, shared, tracker })
}

/// The handle of a running proxy (see [`start`]). Dropping it stops the proxy, like
/// [`Proxy::shutdown`] without waiting.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl Proxy {
    /// The address clients connect to instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's address as a WebSocket URL: `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The conditions applied to data arriving now.
    pub fn conditions(&self) -> Conditions {
        *lock(&self.shared.conditions)
    }

    /// Applies `conditions` to data arriving from now on, on all current and future
    /// connections. Data already queued keeps its release time (and later data still
    /// never overtakes it).
    pub fn set_conditions(&self, conditions: Conditions) {
        *lock(&self.shared.conditions) = conditions;
    }

    /// Holds all forwarding, on all connections and in both directions, for `duration`
    /// from now. Data keeps being read and queued (up to the queue's bound), then it is
    /// released in order. A stall never shortens one already in progress.
    pub fn stall(&self, duration: Duration) {
        let until = far_add(Instant::now(), duration);
        let mut stall_until = lock(&self.shared.stall_until);
        *stall_until = Some(stall_until.map_or(until, |current| current.max(until)));
    }

    /// Closes every open connection abruptly (a reset, both to the client and to the
    /// target), dropping whatever data is queued. New connections are still accepted.
    pub fn sever(&self) {
        let mut generation = lock(&self.shared.generation);
        generation.cancel();
        *generation = self.shared.root.child_token();
    }

    /// How many connections are open now (accepted and connected to the target).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every connection and waits for all the proxy's tasks to end.
    pub async fn shutdown(self) {
        self.shared.root.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.root.cancel();
        self.tracker.close();
    }
}

/// State shared by the handle, the accept loop and the connections.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    conditions: Mutex<Conditions>,
    /// Nothing is released before this instant.
    stall_until: Mutex<Option<Instant>>,
    /// The parent token of the connections accepted since the last [`Proxy::sever`].
    generation: Mutex<CancellationToken>,
    /// Cancelled by [`Proxy::shutdown`] (or drop): everything stops.
    root: CancellationToken,
    connections: AtomicUsize,
}

impl Shared {
    fn conditions(&self) -> Conditions {
        *lock(&self.conditions)
    }

    fn stall_until(&self) -> Option<Instant> {
        *lock(&self.stall_until)
    }
}

/// Locks `mutex`, ignoring poisoning (the guarded values are plain data).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `instant + duration`, saturating at roughly a century from `instant` instead of panicking.
fn far_add(instant: Instant, duration: Duration) -> Instant {
    instant
        .checked_add(duration)
        .or_else(|| instant.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(instant)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            () = shared.root.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                tracing::debug!(%peer, target = %shared.target, "proxy accepted a connection");
                let token = lock(&shared.generation).child_token();
                tracker.spawn(run_connection(client, Arc::clone(&shared), token));
            }
            Err(error) => {
                // Typically out of file descriptors: back off a little rather than spin.
                tracing::warn!(%error, "proxy accept failed");
                tokio::select! {
                    () = shared.root.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    }
}

/// Counts an open connection while alive.
struct OpenConnection<'a>(&'a AtomicUsize);

impl<'a> OpenConnection<'a> {
    fn new(connections: &'a AtomicUsize) -> Self {
        connections.fetch_add(1, Ordering::SeqCst);
        Self(connections)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run_connection(mut client: TcpStream, shared: Arc<Shared>, token: CancellationToken) {
    let connected = tokio::select! {
        () = token.cancelled() => return,
        connected = TcpStream::connect(shared.target) => connected,
    };
    let mut server = match connected {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%error, target = %shared.target, "proxy could not reach its target");
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if shared.conditions().queue_bytes.is_some() {
        // The kernel's receive buffers are a second queue ahead of the proxy's, grown to
        // megabytes by autotuning: hold them at a fixed, modest size.
        for socket in [&client, &server] {
            let _ = socket2::SockRef::from(socket).set_recv_buffer_size(PATH_RECV_BUFFER);
        }
    }
    let _open = OpenConnection::new(&shared.connections);
    {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::join!(
            forward(client_read, server_write, &shared, &token),
            forward(server_read, client_write, &shared, &token),
        );
    }
    if token.is_cancelled() && !shared.root.is_cancelled() {
        // Severed, or an error on either side: close both abruptly (RST), like a broken path.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// What travels through one direction's queue.
enum Segment {
    Data { bytes: Vec<u8>, release: Instant, _budget: OwnedSemaphorePermit },
    Eof { release: Instant },
}

/// Forwards one direction until end of stream (forwarded as a write shutdown) or until
/// `token` is cancelled; an I/O error cancels `token`, which closes the whole connection.
async fn forward<R, W>(from: R, to: W, shared: &Shared, token: &CancellationToken)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, queued) = mpsc::unbounded_channel();
    // At least one read's worth, or a full read could never be queued.
    let budget = Arc::new(Semaphore::new(shared.conditions().queue_bytes.unwrap_or(QUEUE_BYTES).max(CHUNK_BYTES)));
    tokio::join!(receive(from, queue, budget, shared, token), deliver(queued, to, shared, token));
}

/// Reads chunks from the sender, stamps each with its release time and queues it.
async fn receive<R: AsyncRead + Unpin>(
    mut from: R,
    queue: mpsc::UnboundedSender<Segment>,
    budget: Arc<Semaphore>,
    shared: &Shared,
    token: &CancellationToken,
) {
    let mut schedule = Schedule::new();
    let mut buf = vec![0; CHUNK_BYTES];
    loop {
        let read = tokio::select! {
            () = token.cancelled() => return,
            read = from.read(&mut buf) => read,
        };
        let n = match read {
            Ok(n) => n,
            Err(error) => {
                tracing::debug!(%error, "proxy read failed; closing the connection");
                token.cancel();
                return;
            }
        };
        if n == 0 {
            let release = schedule.release(Instant::now(), 0, shared.conditions());
            let _ = queue.send(Segment::Eof { release });
            return;
        }
        // Wait for room in the queue: meanwhile nothing more is read from the sender.
        let permits = u32::try_from(n).expect("a chunk is at most 64 KiB");
        let room = tokio::select! {
            () = token.cancelled() => return,
            room = Arc::clone(&budget).acquire_many_owned(permits) => room,
        };
        let Ok(room) = room else { return };
        let release = schedule.release(Instant::now(), n, shared.conditions());
        if queue.send(Segment::Data { bytes: buf[..n].to_vec(), release, _budget: room }).is_err() {
            return;
        }
    }
}

/// Writes queued chunks to the receiver at their release times (and not during a stall).
async fn deliver<W: AsyncWrite + Unpin>(
    mut queued: mpsc::UnboundedReceiver<Segment>,
    mut to: W,
    shared: &Shared,
    token: &CancellationToken,
) {
    loop {
        let segment = tokio::select! {
            () = token.cancelled() => return,
            segment = queued.recv() => segment,
        };
        // A closed queue without an end of stream: the receiving side stopped on cancellation.
        let Some(segment) = segment else { return };
        let release = match &segment {
            Segment::Data { release, .. } | Segment::Eof { release } => *release,
        };
        if !wait_for_release(release, shared, token).await {
            return;
        }
        let written = match &segment {
            Segment::Data { bytes, .. } => tokio::select! {
                () = token.cancelled() => return,
                written = to.write_all(bytes) => written,
            },
            Segment::Eof { .. } => tokio::select! {
                () = token.cancelled() => return,
                written = to.shutdown() => written,
            },
        };
        if let Err(error) = written {
            tracing::debug!(%error, "proxy write failed; closing the connection");
            token.cancel();
            return;
        }
        if matches!(segment, Segment::Eof { .. }) {
            return;
        }
        // Dropping the segment here frees its room in the queue.
    }
}

/// Sleeps until `release` and then past any stall; `false` if cancelled meanwhile.
async fn wait_for_release(release: Instant, shared: &Shared, token: &CancellationToken) -> bool {
    let mut until = release;
    loop {
        if until > Instant::now() {
            tokio::select! {
                () = token.cancelled() => return false,
                () = sleep_until(until) => {}
            }
        }
        // A stall may have begun (or grown) while we slept: check again.
        match shared.stall_until() {
            Some(stall_until) if stall_until > Instant::now() => until = stall_until,
            _ => return true,
        }
    }
}

/// One direction's clocks: when the last chunk is released and when the link is free.
struct Schedule {
    rng: fastrand::Rng,
    last_release: Option<Instant>,
    link_free: Option<Instant>,
}

impl Schedule {
    fn new() -> Self {
        Self { rng: fastrand::Rng::new(), last_release: None, link_free: None }
    }

    /// The release time of `bytes` arriving at `arrival` under `conditions`:
    /// `max(previous release, sent + latency ± jitter)`, where `sent` is when the link
    /// finishes serializing the chunk (`arrival` without a bandwidth limit); never
    /// before `arrival`.
    fn release(&mut self, arrival: Instant, bytes: usize, conditions: Conditions) -> Instant {
        let sent = match conditions.bandwidth_bytes_per_s {
            Some(rate) if rate > 0 => {
                let start = self.link_free.map_or(arrival, |free| free.max(arrival));
                let serialization = Duration::from_secs_f64(bytes as f64 / rate as f64);
                let sent = far_add(start, serialization);
                self.link_free = Some(sent);
                sent
            }
            _ => arrival,
        };
        let release = far_add(sent, self.delay(conditions));
        let release = self.last_release.map_or(release, |last| last.max(release)).max(arrival);
        self.last_release = Some(release);
        release
    }

    /// `latency` plus a uniform sample in `[-jitter, +jitter]`, at least zero.
    fn delay(&mut self, conditions: Conditions) -> Duration {
        let jitter = u64::try_from(conditions.jitter.as_nanos()).unwrap_or(u64::MAX / 2).min(u64::MAX / 2);
        if jitter == 0 {
            return conditions.latency;
        }
        let offset = self.rng.u64(0..=2 * jitter);
        if offset >= jitter {
            conditions.latency.saturating_add(Duration::from_nanos(offset - jitter))
        } else {
            conditions.latency.saturating_sub(Duration::from_nanos(jitter - offset))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpSocket;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    /// A guard against hangs only; no test asserts an upper bound on time.
    const HANG_GUARD: Duration = Duration::from_secs(20);

    /// Pattern byte `i` of a stream: not periodic at any power of two, so a dropped,
    /// duplicated or reordered chunk shows.
    fn pattern_byte(i: usize) -> u8 {
        (i % 251) as u8
    }

    /// `len` bytes of the pattern starting at stream offset `offset`.
    fn pattern(offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len).map(pattern_byte).collect()
    }

    /// An echo server: each connection echoes everything, then forwards the end of stream.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut from, mut to) = socket.split();
                    if tokio::io::copy(&mut from, &mut to).await.is_ok() {
                        let _ = to.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    /// One echo round trip of `message`; returns its duration, measured from before the write.
    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Duration {
        let start = Instant::now();
        stream.write_all(message).await.unwrap();
        let mut echo = vec![0; message.len()];
        timeout(HANG_GUARD, stream.read_exact(&mut echo)).await.expect("echo timed out").unwrap();
        assert_eq!(echo, message);
        start.elapsed()
    }

    /// Waits (polling) until the proxy counts `expected` open connections.
    async fn wait_for_connections(proxy: &Proxy, expected: usize) {
        timeout(HANG_GUARD, async {
            while proxy.connections() != expected {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expected {expected} connections, have {}", proxy.connections()));
    }

    #[test]
    fn round_trip_conditions_halve_rtt_and_jitter() {
        let conditions = Conditions::round_trip(Duration::from_millis(60), Duration::from_millis(15));
        assert_eq!(conditions.latency, Duration::from_millis(30));
        assert_eq!(conditions.jitter, Duration::from_micros(7500));
        assert_eq!(conditions.bandwidth_bytes_per_s, None);
        assert_eq!(conditions.with_bandwidth(1000).bandwidth_bytes_per_s, Some(1000));
        assert_eq!(Conditions::default().latency, Duration::ZERO);
    }

    #[test]
    fn schedule_keeps_order_and_never_releases_early() {
        let mut schedule = Schedule::new();
        let conditions =
            Conditions { latency: Duration::from_millis(10), jitter: Duration::from_millis(10), ..Default::default() };
        let start = Instant::now();
        let mut last = start;
        for i in 0..10_000u64 {
            let arrival = start + Duration::from_micros(i * 100);
            let release = schedule.release(arrival, 100, conditions);
            assert!(release >= arrival && release >= last);
            assert!(release <= arrival + Duration::from_millis(20) || release == last);
            last = release;
        }
        // Bandwidth: 10 chunks of 100 KB at 1 MB/s leave the link 1 s after the first arrival.
        let mut schedule = Schedule::new();
        let slow = Conditions::default().with_bandwidth(1_000_000);
        let release = (0..10).map(|_| schedule.release(start, 100_000, slow)).last().unwrap();
        assert!(release >= start + Duration::from_millis(999));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_arrive_intact_and_in_order_both_ways() {
        const LEN: usize = 4 * 1024 * 1024;
        let proxy = start(echo_server().await, Conditions::default()).await.unwrap();
        let client = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut from, mut to) = client.into_split();
        let writer = tokio::spawn(async move {
            // Uneven writes, then an end of stream that the echo server returns.
            let data = pattern(0, LEN);
            for piece in data.chunks(7919) {
                to.write_all(piece).await.unwrap();
            }
            to.shutdown().await.unwrap();
        });
        let mut echoed = Vec::with_capacity(LEN);
        timeout(HANG_GUARD, from.read_to_end(&mut echoed)).await.expect("echo timed out").unwrap();
        writer.await.unwrap();
        assert_eq!(echoed.len(), LEN);
        assert!(echoed == pattern(0, LEN), "echoed bytes differ from those sent");
        wait_for_connections(&proxy, 0).await;
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn round_trip_takes_at_least_the_rtt() {
        let rtt = Duration::from_millis(60);
        let proxy = start(echo_server().await, Conditions::round_trip(rtt, Duration::ZERO)).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        client.set_nodelay(true).unwrap();
        for i in 0..3u8 {
            let took = round_trip(&mut client, &[i; 32]).await;
            assert!(took >= rtt, "round trip {i} took {took:?}, less than {rtt:?}");
        }
    }

    #[tokio::test]
    async fn jitter_keeps_order_and_a_minimum_delay() {
        let rtt = Duration::from_millis(60);
        let jitter = Duration::from_millis(40);
        let proxy = start(echo_server().await, Conditions::round_trip(rtt, jitter)).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        client.set_nodelay(true).unwrap();
        for i in 0..4u8 {
            let took = round_trip(&mut client, &[i; 16]).await;
            assert!(took >= rtt - jitter, "round trip {i} took {took:?}, less than {:?}", rtt - jitter);
        }
        // Numbered messages sent a little apart, so each is its own chunk with its own
        // jitter sample: they still come back in order.
        let (mut from, mut to) = client.into_split();
        let writer = tokio::spawn(async move {
            for i in 0..40u32 {
                to.write_all(&i.to_be_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            to.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        timeout(HANG_GUARD, from.read_to_end(&mut echoed)).await.expect("echo timed out").unwrap();
        writer.await.unwrap();
        let numbers: Vec<u32> = echoed.chunks(4).map(|b| u32::from_be_bytes(b.try_into().unwrap())).collect();
        assert_eq!(numbers, (0..40).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bandwidth_limits_throughput() {
        const LEN: usize = 1_000_000;
        // A sink that reads everything and reports when the last byte came.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let sink_addr = listener.local_addr().unwrap();
        let sink: JoinHandle<(Vec<u8>, Instant)> = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::with_capacity(LEN);
            socket.read_to_end(&mut received).await.unwrap();
            (received, Instant::now())
        });
        let conditions = Conditions::default().with_bandwidth(1_000_000);
        let proxy = start(sink_addr, conditions).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let start = Instant::now();
        client.write_all(&pattern(0, LEN)).await.unwrap();
        client.shutdown().await.unwrap();
        let (received, done) = timeout(HANG_GUARD, sink).await.expect("sink timed out").unwrap();
        assert!(received == pattern(0, LEN), "the sink got different bytes");
        let took = done - start;
        assert!(took >= Duration::from_millis(900), "1 MB at 1 MB/s took only {took:?}");
    }

    #[tokio::test]
    async fn stall_holds_then_releases_in_order() {
        let stall = Duration::from_millis(300);
        let proxy = start(echo_server().await, Conditions::default()).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        client.set_nodelay(true).unwrap();
        round_trip(&mut client, b"before").await;

        let start = Instant::now();
        proxy.stall(stall);
        let mut sent = Vec::new();
        for i in 0..20u32 {
            let message = i.to_be_bytes();
            client.write_all(&message).await.unwrap();
            sent.extend_from_slice(&message);
        }
        let mut echoed = vec![0; sent.len()];
        timeout(HANG_GUARD, client.read_exact(&mut echoed)).await.expect("echo timed out").unwrap();
        let took = start.elapsed();
        assert!(took >= stall, "data came back after {took:?}, during the {stall:?} stall");
        assert_eq!(echoed, sent);
        // And forwarding is back to normal afterwards.
        round_trip(&mut client, b"after").await;
    }

    #[tokio::test]
    async fn sever_ends_connections_and_new_ones_work() {
        let proxy = start(echo_server().await, Conditions::default()).await.unwrap();
        let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut first, b"hello").await;
        let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut second, b"hello").await;
        assert_eq!(proxy.connections(), 2);

        proxy.sever();
        for client in [&mut first, &mut second] {
            let mut buf = [0; 16];
            let read = timeout(HANG_GUARD, client.read(&mut buf)).await.expect("the severed connection stayed open");
            // A reset (error) or an end of stream: either way the connection is over.
            assert!(matches!(read, Ok(0) | Err(_)), "read {read:?} from a severed connection");
        }
        wait_for_connections(&proxy, 0).await;

        let mut third = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut third, b"again").await;
        assert_eq!(proxy.connections(), 1);
    }

    #[tokio::test]
    async fn set_conditions_delays_later_data() {
        let proxy = start(echo_server().await, Conditions::default()).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        client.set_nodelay(true).unwrap();
        round_trip(&mut client, b"fast").await;

        let rtt = Duration::from_millis(80);
        proxy.set_conditions(Conditions::round_trip(rtt, Duration::ZERO));
        assert_eq!(proxy.conditions(), Conditions::round_trip(rtt, Duration::ZERO));
        let took = round_trip(&mut client, b"slow").await;
        assert!(took >= rtt, "the existing connection's round trip took only {took:?}");
        // New connections get the new conditions too.
        let mut other = TcpStream::connect(proxy.addr()).await.unwrap();
        let took = round_trip(&mut other, b"slow too").await;
        assert!(took >= rtt, "a new connection's round trip took only {took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_stops_reading_from_the_sender() {
        // Far more than the queue plus every socket buffer on the way.
        const LEN: usize = 128 * 1024 * 1024;
        const BLOCK: usize = 251 * 1024;
        // Small socket buffers at both ends, so what piles up is mostly the proxy's.
        let listener = TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(64 * 1024).unwrap();
        listener.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let listener = listener.listen(1).unwrap();
        let sink_addr = listener.local_addr().unwrap();
        let proxy = start(sink_addr, Conditions::default()).await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(64 * 1024).unwrap();
        let client = socket.connect(proxy.addr()).await.unwrap();
        let (mut sink, _) = listener.accept().await.unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn({
            let written = Arc::clone(&written);
            async move {
                let mut client = client;
                let block = pattern(0, BLOCK); // whole periods of the pattern: blocks chain seamlessly
                while written.load(Ordering::SeqCst) < LEN {
                    client.write_all(&block).await.unwrap();
                    written.fetch_add(BLOCK, Ordering::SeqCst);
                }
                client.shutdown().await.unwrap();
            }
        });

        // The sink does not read for a while: the sender must get stuck.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let stuck_at = written.load(Ordering::SeqCst);
        assert!(stuck_at < LEN * 3 / 4, "the proxy buffered {stuck_at} bytes without a reader");

        // Then everything arrives, intact and in order.
        let expected = pattern(0, BLOCK + CHUNK_BYTES);
        let mut buf = vec![0; CHUNK_BYTES];
        let mut received = 0;
        timeout(HANG_GUARD, async {
            loop {
                let n = sink.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                let offset = received % 251;
                assert!(buf[..n] == expected[offset..offset + n], "bytes differ at {received}");
                received += n;
            }
        })
        .await
        .expect("the sink timed out");
        writer.await.unwrap();
        assert_eq!(received, LEN.div_ceil(BLOCK) * BLOCK);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_closes_connections() {
        let proxy = start(echo_server().await, Conditions::default()).await.unwrap();
        let addr = proxy.addr();
        assert_eq!(proxy.url(), format!("ws://127.0.0.1:{}", addr.port()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        round_trip(&mut client, b"hello").await;

        proxy.shutdown().await;
        let mut buf = [0; 16];
        let read = timeout(HANG_GUARD, client.read(&mut buf)).await.expect("the connection outlived the proxy");
        assert!(matches!(read, Ok(0) | Err(_)), "read {read:?} after shutdown");
    }

    #[tokio::test]
    async fn unreachable_target_closes_the_client() {
        // A port that is bound (so nothing else takes it) but not listening: connecting is refused.
        let closed = TcpSocket::new_v4().unwrap();
        closed.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let target = closed.local_addr().unwrap();
        let proxy = start(target, Conditions::default()).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0; 16];
        let read = timeout(HANG_GUARD, client.read(&mut buf)).await.expect("the client was left hanging");
        assert!(matches!(read, Ok(0) | Err(_)), "read {read:?} through a proxy with no target");
        assert_eq!(proxy.connections(), 0);
    }
}
