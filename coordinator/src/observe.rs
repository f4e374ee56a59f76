//! A wrapper around a connection's socket that watches the bytes pass, below the
//! WebSocket layer, for the two facts tungstenite does not tell us:
//!
//! - **How long the client's current message has been unfinished.** tungstenite
//!   reassembles fragmented messages (and reads a large frame's payload) internally and
//!   only hands over complete messages, so a client that sends the first fragment of a huge
//!   message and then dribbles continuation fragments, or announces a 16 MiB frame and
//!   sends its payload a byte at a time, pins up to `max_frame_bytes` of buffer for as long
//!   as it likes while keeping itself "alive" with pongs. [`FrameObserver`] parses the
//!   client→server frame headers as the bytes pass (FIN bit, opcode, MASK, 7/16/64-bit
//!   payload length, mask key; payload bytes are skipped, never copied) and records when a
//!   data message began and when its last frame ended. Control frames (ping, pong, close)
//!   interleaved between fragments do not count as progress. The connection's reader loop
//!   closes a connection whose message has been unfinished for longer than
//!   `message_assembly_timeout` (see [`StreamWatch::message_unfinished_for`]).
//! - **How many bytes all connections' unfinished messages may pin, together.** Each
//!   wrapper charges the announced payload length of its current unfinished message to a
//!   shared [`InboundBudget`] as the frame headers pass (before tungstenite sees them and
//!   reserves the memory), and releases it when the message ends or the connection goes.
//!   A header that would take the total past the cap fails the read instead, so the
//!   reservation never happens, and the reader loop closes that connection
//!   ([`StreamWatch::over_budget`]). Messages that arrive whole within one read are never
//!   charged: only those spread over several reads pin memory between them.
//! - **When a write last made progress**, so the writer task can disconnect a client whose
//!   socket accepts no bytes for `write_stall_timeout` (see [`StreamWatch::last_write`]).
//!
//! The observer is only an observer: it never changes or rejects bytes, tungstenite still
//! validates everything, and garbage merely leaves the observer's idea of the stream
//! wrong (bounded: all it can do then is close a connection that tungstenite would close
//! anyway, or miss an unfinished message whose frame tungstenite refuses). It starts
//! parsing after the HTTP upgrade request, at the first byte following the request's
//! blank line (`\r\n\r\n`), which is where framing starts; it needs no signal from the
//! handshake, so no read can fall between the two. (tungstenite 0.30 refuses frame bytes
//! that arrive in the same read as the request, `JunkAfterRequest`; the observer would
//! follow them correctly if it ever accepted them.)

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Upper bound of a frame header: 2 bytes, a 64-bit length and a mask key.
const MAX_HEADER: usize = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the HTTP upgrade request; `matched` bytes of `\r\n\r\n` seen in a row.
    Http { matched: u8 },
    /// Inside an HTTP upgrade request whose exact length is known (`remaining` bytes of
    /// it still to pass).
    Head { remaining: u64 },
    /// Collecting a frame header.
    Header,
    /// Skipping a frame's payload; `ends_message` when it is a data frame with FIN set.
    Payload { remaining: u64, ends_message: bool },
}

/// Parses client→server WebSocket frame headers from a byte stream fed in arbitrary
/// pieces, and tracks whether a data message is unfinished. Never panics, whatever it is
/// fed.
#[derive(Debug, Clone)]
pub struct FrameObserver {
    state: State,
    header: [u8; MAX_HEADER],
    have: usize,
    in_message: bool,
    messages_started: u64,
    message_bytes: u64,
}

impl Default for FrameObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameObserver {
    /// An observer that expects the HTTP upgrade request first.
    pub fn new() -> Self {
        FrameObserver {
            state: State::Http { matched: 0 },
            header: [0; MAX_HEADER],
            have: 0,
            in_message: false,
            messages_started: 0,
            message_bytes: 0,
        }
    }

    /// An observer that expects frames at once (no HTTP request first).
    pub fn after_handshake() -> Self {
        FrameObserver { state: State::Header, ..Self::new() }
    }

    /// An observer that expects an HTTP request of exactly `head_len` bytes first (as its
    /// parser measured it), then frames. Safer than looking for `\r\n\r\n`: HTTP parsers
    /// also accept bare `\n` line ends and blank lines before the request line, and an
    /// observer that misplaced the first frame would see no frame at all.
    pub fn after_head(head_len: usize) -> Self {
        let state = if head_len == 0 { State::Header } else { State::Head { remaining: head_len as u64 } };
        FrameObserver { state, ..Self::new() }
    }

    /// Whether a data message has begun (its first frame's header arrived) and its last
    /// frame (FIN set) has not been received completely.
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// The payload bytes announced so far by the frames of the unfinished message (0 when
    /// none is unfinished): what tungstenite holds or has reserved for it.
    pub fn message_bytes(&self) -> u64 {
        if self.in_message { self.message_bytes } else { 0 }
    }

    /// How many data messages have begun so far.
    pub fn messages_started(&self) -> u64 {
        self.messages_started
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Http { mut matched } => {
                    let mut used = 0;
                    for &b in bytes {
                        used += 1;
                        matched = match (matched, b) {
                            (0 | 2, b'\r') => matched + 1,
                            (1 | 3, b'\n') => matched + 1,
                            (_, b'\r') => 1,
                            _ => 0,
                        };
                        if matched == 4 {
                            break;
                        }
                    }
                    bytes = &bytes[used..];
                    self.state = if matched == 4 { State::Header } else { State::Http { matched } };
                    self.have = 0;
                }
                State::Head { remaining } => {
                    let skip = remaining.min(bytes.len() as u64);
                    bytes = &bytes[skip as usize..];
                    self.state =
                        if remaining == skip { State::Header } else { State::Head { remaining: remaining - skip } };
                    self.have = 0;
                }
                State::Header => {
                    let need = self.header_len();
                    let take = (need - self.have).min(bytes.len());
                    self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                    self.have += take;
                    bytes = &bytes[take..];
                    // The length is known only once the first two bytes are in.
                    if self.have == self.header_len() {
                        self.end_header();
                    }
                }
                State::Payload { remaining, ends_message } => {
                    let skip = remaining.min(bytes.len() as u64);
                    bytes = &bytes[skip as usize..];
                    self.state = State::Payload { remaining: remaining - skip, ends_message };
                    if remaining == skip {
                        self.end_payload(ends_message);
                    }
                }
            }
        }
    }

    /// Bytes of the header being collected, as far as is known (2 until the second byte).
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let b1 = self.header[1];
        let extended = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn end_header(&mut self) {
        let (b0, b1) = (self.header[0], self.header[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(be)
            }
            n => u64::from(n),
        };
        self.have = 0;
        let ends_message = match opcode {
            // Text or binary: the first frame of a message. One arriving inside a message
            // is a protocol error tungstenite will refuse; it must not restart the clock.
            1 | 2 => {
                if !self.in_message {
                    self.in_message = true;
                    self.messages_started += 1;
                    self.message_bytes = 0;
                }
                self.message_bytes = self.message_bytes.saturating_add(len);
                fin
            }
            // Continuation: ends the message when FIN is set.
            0 => {
                if self.in_message {
                    self.message_bytes = self.message_bytes.saturating_add(len);
                }
                fin && self.in_message
            }
            // Control frames (and reserved opcodes, which tungstenite refuses) do not
            // touch the message.
            _ => false,
        };
        self.state = State::Payload { remaining: len, ends_message };
        if len == 0 {
            self.end_payload(ends_message);
        }
    }

    fn end_payload(&mut self, ends_message: bool) {
        if ends_message {
            self.in_message = false;
        }
        self.state = State::Header;
    }
}

/// The bytes that all connections' unfinished inbound messages may pin together; shared
/// by every [`ObservedStream`] of a coordinator. See the module docs.
#[derive(Debug)]
pub struct InboundBudget {
    cap: u64,
    used: AtomicU64,
}

impl InboundBudget {
    /// A budget of `cap` bytes.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(InboundBudget { cap: cap as u64, used: AtomicU64::new(0) })
    }

    /// The bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub(crate) fn try_charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.cap)
            })
            .is_ok()
    }

    pub(crate) fn release(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(bytes)));
    }
}

/// What a connection's reader loop and writer task learn from its [`ObservedStream`].
#[derive(Debug)]
pub struct StreamWatch {
    base: Instant,
    /// Nanoseconds after `base` at which the unfinished message began, plus one; 0: none.
    message_since: AtomicU64,
    /// Nanoseconds after `base` of the last write that moved bytes.
    last_write: AtomicU64,
    /// Set when a read was failed because the [`InboundBudget`] was spent.
    over_budget: AtomicBool,
    /// Set once the connection has registered; before, one unfinished message may pin at
    /// most [`UNREGISTERED_MESSAGE_BYTES`] of the budget.
    registered: AtomicBool,
    /// Set when a read was failed because an unregistered client announced a larger one.
    unregistered_too_large: AtomicBool,
    /// Bytes read from and written to the socket (framing and handshake included).
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// The payload of the last ping sent (nanoseconds after `base` when it was queued
    /// for writing); 0: none outstanding.
    ping_sent: AtomicU64,
    /// The last measured ping round trip in microseconds, plus one; 0: none yet.
    round_trip_us: AtomicU64,
}

/// Bytes moved through every connection's socket since start, both directions
/// (WebSocket framing and handshakes included).
#[derive(Debug, Default)]
pub struct ByteTotals {
    read: AtomicU64,
    written: AtomicU64,
}

impl ByteTotals {
    /// Bytes received from clients.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes sent to clients.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The largest unfinished message a connection that has not registered may announce
/// (a registration is a few hundred bytes; this leaves room for a malformed one to get its
/// precise error): without it, 64 unregistered sockets from one address could each
/// announce a 16 MiB frame and pin the whole [`InboundBudget`]. With it, one address
/// pins at most 64 MiB before registering.
pub const UNREGISTERED_MESSAGE_BYTES: u64 = 1024 * 1024;

impl StreamWatch {
    fn new() -> Self {
        StreamWatch {
            base: Instant::now(),
            message_since: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            over_budget: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            unregistered_too_large: AtomicBool::new(false),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            ping_sent: AtomicU64::new(0),
            round_trip_us: AtomicU64::new(0),
        }
    }

    /// Bytes read from this connection's socket so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Bytes written to this connection's socket so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// The payload for a ping about to be written: when it was sent. A pong carrying it
    /// back measures the round trip ([`StreamWatch::pong`]).
    pub fn ping_payload(&self, now: Instant) -> [u8; 8] {
        let sent = self.nanos(now).max(1);
        self.ping_sent.store(sent, Ordering::Release);
        sent.to_be_bytes()
    }

    /// A pong arrived: when it answers the last ping, returns (and remembers) the round
    /// trip. Pongs that answer nothing, or an older ping, are ignored.
    pub fn pong(&self, payload: &[u8], now: Instant) -> Option<Duration> {
        let sent = u64::from_be_bytes(payload.try_into().ok()?);
        if sent == 0 || self.ping_sent.compare_exchange(sent, 0, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return None;
        }
        let rtt = now.saturating_duration_since(self.at(sent));
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1);
        self.round_trip_us.store(us.saturating_add(1), Ordering::Release);
        Some(rtt)
    }

    /// The last measured ping round trip, if any.
    pub fn round_trip(&self) -> Option<Duration> {
        match self.round_trip_us.load(Ordering::Acquire) {
            0 => None,
            us => Some(Duration::from_micros(us - 1)),
        }
    }

    /// The connection has registered: its messages may use the budget in full.
    pub fn mark_registered(&self) {
        self.registered.store(true, Ordering::Release);
    }

    /// Whether the connection's reads were failed because, before registering, it
    /// announced a message larger than [`UNREGISTERED_MESSAGE_BYTES`].
    pub fn unregistered_too_large(&self) -> bool {
        self.unregistered_too_large.load(Ordering::Acquire)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    /// How long the client's current data message has been unfinished at `now` (`None`
    /// when no message is in progress).
    pub fn message_unfinished_for(&self, now: Instant) -> Option<Duration> {
        match self.message_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(now.saturating_duration_since(self.at(since - 1))),
        }
    }

    /// Whether the connection's reads were failed because all connections' unfinished
    /// messages together had reached the [`InboundBudget`] cap.
    pub fn over_budget(&self) -> bool {
        self.over_budget.load(Ordering::Acquire)
    }

    /// When a write last moved bytes into the socket (the connection's start if none has).
    pub fn last_write(&self) -> Instant {
        self.at(self.last_write.load(Ordering::Acquire))
    }

    fn wrote(&self, now: Instant) {
        self.last_write.store(self.nanos(now), Ordering::Release);
    }

    fn observed(&self, observer: &FrameObserver, started_before: u64, now: Instant) {
        if !observer.in_message() {
            self.message_since.store(0, Ordering::Release);
        } else if observer.messages_started() != started_before || self.message_since.load(Ordering::Acquire) == 0 {
            // A message began in these bytes (the previous one may have ended in them too).
            self.message_since.store(self.nanos(now).saturating_add(1), Ordering::Release);
        }
    }
}

/// A socket wrapped so that a [`FrameObserver`] sees every byte read and every write's
/// progress is recorded; see the module docs. Reads and writes pass through unchanged.
#[derive(Debug)]
pub struct ObservedStream<S> {
    inner: S,
    observer: FrameObserver,
    watch: Arc<StreamWatch>,
    budget: Option<Arc<InboundBudget>>,
    /// Bytes this stream has charged to `budget`.
    charged: u64,
    /// Where the bytes it moves are added up for the whole coordinator.
    totals: Option<Arc<ByteTotals>>,
}

impl<S> ObservedStream<S> {
    /// Wraps `inner`, whose first bytes are the client's HTTP upgrade request.
    pub fn new(inner: S) -> Self {
        ObservedStream {
            inner,
            observer: FrameObserver::new(),
            watch: Arc::new(StreamWatch::new()),
            budget: None,
            charged: 0,
            totals: None,
        }
    }

    /// Starts watching frames after exactly `head_len` bytes of HTTP request (see
    /// [`FrameObserver::after_head`]).
    pub fn after_head(mut self, head_len: usize) -> Self {
        self.observer = FrameObserver::after_head(head_len);
        self
    }

    /// Like [`new`](Self::new), charging unfinished messages to `budget`.
    pub fn with_budget(inner: S, budget: Arc<InboundBudget>) -> Self {
        let mut stream = Self::new(inner);
        stream.budget = Some(budget);
        stream
    }

    /// Also adds the bytes it moves to `totals`.
    pub fn counting(mut self, totals: Arc<ByteTotals>) -> Self {
        self.totals = Some(totals);
        self
    }

    fn count(&self, read: bool, n: usize) {
        let n = n as u64;
        let (mine, all) = match (read, &self.totals) {
            (true, totals) => (&self.watch.bytes_read, totals.as_ref().map(|t| &t.read)),
            (false, totals) => (&self.watch.bytes_written, totals.as_ref().map(|t| &t.written)),
        };
        mine.fetch_add(n, Ordering::Relaxed);
        if let Some(all) = all {
            all.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Brings the charge to the unfinished message's bytes; false when the budget
    /// refuses the increase.
    fn settle_budget(&mut self) -> bool {
        let Some(budget) = &self.budget else { return true };
        let wanted = self.observer.message_bytes();
        if wanted > UNREGISTERED_MESSAGE_BYTES && !self.watch.registered.load(Ordering::Acquire) {
            self.watch.unregistered_too_large.store(true, Ordering::Release);
            return false;
        }
        if wanted > self.charged {
            if !budget.try_charge(wanted - self.charged) {
                return false;
            }
        } else {
            budget.release(self.charged - wanted);
        }
        self.charged = wanted;
        true
    }

    /// What the wrapper has seen, shared with the connection's tasks.
    pub fn watch(&self) -> Arc<StreamWatch> {
        self.watch.clone()
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ObservedStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = &buf.filled()[before..];
            this.count(true, fresh.len());
            if !fresh.is_empty() {
                let started_before = this.observer.messages_started();
                this.observer.feed(fresh);
                this.watch.observed(&this.observer, started_before, Instant::now());
                if !this.settle_budget() {
                    // Fail the read: tungstenite never sees the header, so never reserves
                    // the memory. The reader loop closes the connection.
                    if !this.watch.unregistered_too_large() {
                        this.watch.over_budget.store(true, Ordering::Release);
                    }
                    return Poll::Ready(Err(io::Error::other("memory for incoming messages is exhausted")));
                }
            }
        }
        polled
    }
}

impl<S> Drop for ObservedStream<S> {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.charged);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ObservedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.watch.wrote(Instant::now());
            self.count(false, n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.watch.wrote(Instant::now());
            self.count(false, n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_measures_the_round_trip_of_the_ping_it_answers_once() {
        let watch = StreamWatch::new();
        let t0 = Instant::now();
        assert_eq!(watch.pong(&1u64.to_be_bytes(), t0), None, "answers no ping");
        let payload = watch.ping_payload(t0);
        assert_eq!(watch.pong(b"short", t0), None);
        let rtt = watch.pong(&payload, t0 + Duration::from_millis(30)).expect("answers the ping");
        assert!(rtt >= Duration::from_millis(30) && rtt < Duration::from_millis(31), "{rtt:?}");
        assert_eq!(watch.round_trip(), Some(rtt));
        assert_eq!(watch.pong(&payload, t0 + Duration::from_secs(5)), None, "a replayed pong counts once");
        assert_eq!(watch.round_trip(), Some(rtt));
    }

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";

    /// Feeds `stream` in pieces of `chunk` bytes.
    fn feed_chunked(stream: &[u8], chunk: usize) -> FrameObserver {
        let mut o = FrameObserver::new();
        for piece in stream.chunks(chunk.max(1)) {
            o.feed(piece);
        }
        o
    }

    /// Every split of the stream gives the same answer as feeding it whole.
    fn check_all_splits(stream: &[u8], expect_in_message: bool) {
        for chunk in [1, 2, 3, 5, 7, 13, 64, 1000, stream.len()] {
            assert_eq!(feed_chunked(stream, chunk).in_message(), expect_in_message, "chunk {chunk}");
        }
        for split in 0..=stream.len() {
            let mut o = FrameObserver::new();
            o.feed(&stream[..split]);
            o.feed(&stream[split..]);
            assert_eq!(o.in_message(), expect_in_message, "split at {split}");
        }
    }

    #[test]
    fn a_single_frame_message_is_finished_once_its_payload_is_in() {
        let mut stream = REQUEST.to_vec();
        stream.extend(frame(true, 1, b"{\"msg_type\":\"heartbeat\"}"));
        check_all_splits(&stream, false);
        // Announced but not all there: unfinished.
        let mut o = FrameObserver::new();
        o.feed(&stream[..stream.len() - 1]);
        assert!(o.in_message());
        o.feed(&stream[stream.len() - 1..]);
        assert!(!o.in_message());
    }

    #[test]
    fn fragments_with_interleaved_control_frames_stay_unfinished_until_fin() {
        let mut stream = REQUEST.to_vec();
        stream.extend(frame(false, 1, &[b'a'; 200]));
        stream.extend(frame(true, 10, b"pong"));
        stream.extend(frame(false, 0, &[b'b'; 70_000]));
        stream.extend(frame(true, 9, b""));
        check_all_splits(&stream, true);
        let mut finished = stream.clone();
        finished.extend(frame(true, 0, b"end"));
        check_all_splits(&finished, false);
        // And the next message starts afresh.
        finished.extend(frame(false, 2, b"x"));
        check_all_splits(&finished, true);
        assert_eq!(feed_chunked(&finished, 9).messages_started(), 2);
    }

    #[test]
    fn all_three_length_forms_and_empty_frames_parse() {
        let mut stream = REQUEST.to_vec();
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            stream.extend(frame(true, 1, &vec![b'x'; len]));
        }
        stream.extend(frame(false, 1, b""));
        check_all_splits(&stream, true);
        assert_eq!(feed_chunked(&stream, 4096).messages_started(), 9);
    }

    #[test]
    fn frame_bytes_in_the_same_read_as_the_request_are_seen() {
        let mut stream = REQUEST.to_vec();
        stream.extend(frame(false, 1, b"start"));
        let mut o = FrameObserver::new();
        o.feed(&stream);
        assert!(o.in_message());
        // A lone "\r\n" in the headers is not the end of them.
        let mut o = FrameObserver::new();
        o.feed(b"GET / HTTP/1.1\r\n\r");
        o.feed(b"\rX\r\n");
        assert!(matches!(o.state, State::Http { .. }));
    }

    #[test]
    fn a_continuation_outside_a_message_or_a_restart_inside_one_changes_nothing() {
        let mut o = FrameObserver::after_handshake();
        o.feed(&frame(true, 0, b"stray"));
        assert!(!o.in_message());
        o.feed(&frame(false, 1, b"a"));
        o.feed(&frame(false, 1, b"b"));
        assert_eq!(o.messages_started(), 1);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut o = FrameObserver::new();
            for _ in 0..50 {
                let len = (next() % 64) as usize;
                let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                o.feed(&bytes);
            }
        }
        // A 64-bit length with every bit set is skipped, not allocated.
        let mut o = FrameObserver::after_handshake();
        o.feed(&[0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        o.feed(&[0u8; 4096]);
        assert!(o.in_message());
    }

    #[test]
    fn message_bytes_count_the_announced_payloads_of_the_unfinished_message() {
        let mut o = FrameObserver::after_handshake();
        let first = frame(false, 1, &[b'a'; 300]);
        o.feed(&first[..8]);
        assert_eq!(o.message_bytes(), 300, "charged as soon as the header is in");
        o.feed(&first[8..]);
        o.feed(&frame(true, 9, &[0; 100]));
        o.feed(&frame(false, 0, &[b'b'; 70_000]));
        assert_eq!(o.message_bytes(), 70_300, "control frames are not counted");
        o.feed(&frame(true, 0, b"end"));
        assert_eq!(o.message_bytes(), 0);
        o.feed(&frame(true, 1, b"whole"));
        assert_eq!(o.message_bytes(), 0);
    }

    #[tokio::test]
    async fn the_budget_refuses_a_read_that_would_pass_the_cap_and_releases_on_drop() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let budget = InboundBudget::new(1000);
        let (mut a_client, a_server) = tokio::io::duplex(64 * 1024);
        let (mut b_client, b_server) = tokio::io::duplex(64 * 1024);
        let mut a = ObservedStream::with_budget(a_server, budget.clone());
        let mut b = ObservedStream::with_budget(b_server, budget.clone());
        let mut buf = vec![0u8; 4096];
        // A: the HTTP request and the header of an 800-byte frame, plus a little payload.
        let mut bytes = REQUEST.to_vec();
        bytes.extend_from_slice(&frame(true, 1, &[b'x'; 800])[..20]);
        a_client.write_all(&bytes).await.unwrap();
        assert!(a.read(&mut buf).await.unwrap() > 0);
        assert_eq!(budget.used(), 800);
        // B: a 300-byte frame would pass the cap: its read fails.
        let mut bytes = REQUEST.to_vec();
        bytes.extend_from_slice(&frame(true, 1, &[b'y'; 300])[..10]);
        b_client.write_all(&bytes).await.unwrap();
        assert!(b.read(&mut buf).await.is_err());
        assert!(b.watch().over_budget());
        assert!(!a.watch().over_budget());
        drop(b);
        assert_eq!(budget.used(), 800);
        // A finishes its message: released.
        a_client.write_all(&frame(true, 1, &[b'x'; 800])[20..]).await.unwrap();
        while budget.used() > 0 {
            assert!(a.read(&mut buf).await.unwrap() > 0);
        }
        // And a connection dropped mid-message releases its charge.
        a_client.write_all(&frame(true, 1, &[b'z'; 900])[..8]).await.unwrap();
        assert!(a.read(&mut buf).await.unwrap() > 0);
        assert_eq!(budget.used(), 900);
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_watch_dates_the_latest_unfinished_message() {
        let watch = StreamWatch::new();
        let t0 = watch.base;
        let mut o = FrameObserver::after_handshake();
        let started = o.messages_started();
        o.feed(&frame(false, 1, b"a"));
        watch.observed(&o, started, t0 + Duration::from_secs(1));
        assert_eq!(watch.message_unfinished_for(t0 + Duration::from_secs(5)), Some(Duration::from_secs(4)));
        // A pong does not move the clock.
        let started = o.messages_started();
        o.feed(&frame(true, 10, b""));
        watch.observed(&o, started, t0 + Duration::from_secs(3));
        assert_eq!(watch.message_unfinished_for(t0 + Duration::from_secs(5)), Some(Duration::from_secs(4)));
        // Finishing it and starting another in one read restarts it.
        let started = o.messages_started();
        let mut bytes = frame(true, 0, b"b");
        bytes.extend(frame(false, 1, b"c"));
        o.feed(&bytes);
        watch.observed(&o, started, t0 + Duration::from_secs(4));
        assert_eq!(watch.message_unfinished_for(t0 + Duration::from_secs(5)), Some(Duration::from_secs(1)));
        let started = o.messages_started();
        o.feed(&frame(true, 0, b"d"));
        watch.observed(&o, started, t0 + Duration::from_secs(4));
        assert_eq!(watch.message_unfinished_for(t0 + Duration::from_secs(5)), None);
    }
}
