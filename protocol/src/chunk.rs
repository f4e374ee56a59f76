//! Large frames in pieces, so that they never hold up the small ones behind them.
//!
//! A 15 MiB frame takes over a second on a 100 Mbit/s link; written whole, every frame
//! queued behind it (the ticks of the other sessions on the same connection) waits that
//! long. On a connection where both sides said they take chunks (`chunked_frames` in a
//! peer's capabilities and in the coordinator's `registration_ack`), a sender cuts a frame
//! longer than [`CHUNK_BYTES`] into chunks and interleaves them with the frames queued
//! after it: each chunk is one binary WebSocket frame,
//!
//! ```text
//! 02                      chunk version
//! 01                      flags: bit 0 last chunk, bit 1 the frame is a text frame
//! 07 00 00 00             stream: the sender's number for this frame (u32, little endian)
//! ...                     up to CHUNK_BYTES of the frame's bytes
//! ```
//!
//! and the receiver puts a stream's chunks back together in order ([`Reassembler`]) and
//! handles the frame as if it had come whole. Frames of one session are never reordered
//! (a sender queues a session's later frames behind its chunked one); frames of other
//! sessions, pings and errors go between chunks.
//!
//! The receiver bounds what it holds: a stream's frame at most the frame limit, at most
//! [`MAX_OPEN_STREAMS`] unfinished streams, and a clear [`ChunkError`] for anything else.

use std::collections::VecDeque;
use std::time::Instant;

use crate::binary::Frame;

/// The first byte of a chunk (a whole binary frame starts with [`crate::binary::FRAME_VERSION`]).
pub const CHUNK_VERSION: u8 = 2;

/// The most frame bytes one chunk carries (8 KiB); frames longer than this are chunked.
pub const CHUNK_BYTES: usize = 8 * 1024;

/// A chunk's header: version, flags, stream.
pub const CHUNK_HEADER_BYTES: usize = 6;

/// Unfinished streams a receiver holds at once.
pub const MAX_OPEN_STREAMS: usize = 8;

const LAST: u8 = 1;
const TEXT: u8 = 2;

/// Whether a binary WebSocket frame is a chunk.
pub fn is_chunk(frame: &[u8]) -> bool {
    frame.first() == Some(&CHUNK_VERSION)
}

/// Whether a frame is long enough to be sent in chunks.
pub fn should_chunk(frame: &Frame) -> bool {
    frame_len(frame) > CHUNK_BYTES
}

fn frame_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(t) => t.len(),
        Frame::Binary(b) => b.len(),
    }
}

/// One frame being sent as chunks.
#[derive(Debug)]
pub struct Chunker {
    bytes: Vec<u8>,
    text: bool,
    stream: u32,
    sent: usize,
    done: bool,
}

impl Chunker {
    /// Chunks of `frame`, numbered `stream` (a sender numbers its chunked frames).
    pub fn new(frame: Frame, stream: u32) -> Self {
        let (bytes, text) = match frame {
            Frame::Text(t) => (t.into_bytes(), true),
            Frame::Binary(b) => (b, false),
        };
        Chunker { bytes, text, stream, sent: 0, done: false }
    }

    /// The next chunk, `None` once the last was taken.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let end = (self.sent + CHUNK_BYTES).min(self.bytes.len());
        self.done = end == self.bytes.len();
        let flags = if self.done { LAST } else { 0 } | if self.text { TEXT } else { 0 };
        let mut chunk = Vec::with_capacity(CHUNK_HEADER_BYTES + end - self.sent);
        chunk.push(CHUNK_VERSION);
        chunk.push(flags);
        chunk.extend_from_slice(&self.stream.to_le_bytes());
        chunk.extend_from_slice(&self.bytes[self.sent..end]);
        self.sent = end;
        Some(chunk)
    }

    /// Whether the last chunk was taken.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Shorter than a header, or not a chunk.
    #[error("malformed chunk (shorter than its {CHUNK_HEADER_BYTES}-byte header, or not a chunk)")]
    Malformed,
    /// The stream's frame, or the unfinished frames together, would pass the frame limit.
    #[error("chunked frames would exceed {0} bytes (one frame, or every unfinished one together)")]
    TooLarge(usize),
    /// Too many unfinished streams.
    #[error("more than {MAX_OPEN_STREAMS} chunked frames unfinished at once")]
    TooManyStreams,
    /// A stream's chunks disagree on whether the frame is text.
    #[error("a chunked frame's chunks disagree on its kind")]
    KindChanged,
    /// A text frame put together is not UTF-8.
    #[error("a chunked text frame is not UTF-8")]
    NotUtf8,
}

#[derive(Debug)]
struct Partial {
    stream: u32,
    text: bool,
    bytes: Vec<u8>,
    since: Instant,
}

/// Puts chunked frames back together.
#[derive(Debug)]
pub struct Reassembler {
    max_frame_bytes: usize,
    open: Vec<Partial>,
}

impl Reassembler {
    /// A reassembler for frames of at most `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Reassembler { max_frame_bytes, open: Vec::new() }
    }

    /// Takes one chunk; returns the frame it completes, if any.
    pub fn push(&mut self, chunk: &[u8], now: Instant) -> Result<Option<Frame>, ChunkError> {
        if chunk.len() < CHUNK_HEADER_BYTES || !is_chunk(chunk) {
            return Err(ChunkError::Malformed);
        }
        let flags = chunk[1];
        let stream = u32::from_le_bytes(chunk[2..6].try_into().expect("4 bytes"));
        let data = &chunk[CHUNK_HEADER_BYTES..];
        let (last, text) = (flags & LAST != 0, flags & TEXT != 0);
        let at = match self.open.iter().position(|p| p.stream == stream) {
            Some(at) => at,
            None => {
                if self.open.len() >= MAX_OPEN_STREAMS {
                    return Err(ChunkError::TooManyStreams);
                }
                self.open.push(Partial { stream, text, bytes: Vec::new(), since: now });
                self.open.len() - 1
            }
        };
        if self.open[at].text != text {
            return Err(ChunkError::KindChanged);
        }
        // Every unfinished frame together within one frame's limit: a sender opening many
        // streams holds no more than one large frame would.
        let held: usize = self.open.iter().map(|p| p.bytes.len()).sum();
        if held + data.len() > self.max_frame_bytes {
            self.open.swap_remove(at);
            return Err(ChunkError::TooLarge(self.max_frame_bytes));
        }
        let partial = &mut self.open[at];
        partial.bytes.extend_from_slice(data);
        if !last {
            return Ok(None);
        }
        let Partial { bytes, text, .. } = self.open.swap_remove(at);
        Ok(Some(if text {
            Frame::Text(String::from_utf8(bytes).map_err(|_| ChunkError::NotUtf8)?)
        } else {
            Frame::Binary(bytes)
        }))
    }

    /// When the oldest unfinished frame began, if any.
    pub fn oldest(&self) -> Option<Instant> {
        self.open.iter().map(|p| p.since).min()
    }

    /// Bytes held in unfinished frames.
    pub fn buffered(&self) -> usize {
        self.open.iter().map(|p| p.bytes.len()).sum()
    }
}

/// What a sender writes next from the frames it kept: a chunk, or a frame that waited
/// behind its session's chunked frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A chunk, to send as one binary WebSocket frame.
    Chunk(Vec<u8>),
    /// A whole frame.
    Frame(Frame),
}

/// A sender's frames on a connection that takes chunks: small frames go at once, large
/// ones in chunks taken one at a time ([`Interleave::next_to_write`], between whatever else is
/// ready), and a frame of a session (`K`: whatever names one) whose earlier frame is
/// still being chunked waits behind it, so a session's frames keep their order.
///
/// Each kept frame carries a weight (what the sender's queue counted it as), given back
/// by [`Interleave::next_to_write`] when the frame is written, so the sender's bounds still hold
/// for what waits here.
#[derive(Debug)]
pub struct Interleave<K> {
    lanes: VecDeque<Lane<K>>,
    next_stream: u32,
}

#[derive(Debug)]
struct Lane<K> {
    key: Option<K>,
    current: Option<(Chunker, usize)>,
    then: VecDeque<(Frame, usize)>,
}

impl<K> Default for Interleave<K> {
    fn default() -> Self {
        Interleave { lanes: VecDeque::new(), next_stream: 0 }
    }
}

impl<K: PartialEq> Interleave<K> {
    /// Takes a frame to send: back at once when it may go now (small, and nothing of its
    /// session is being chunked), otherwise kept.
    pub fn offer(&mut self, key: Option<K>, frame: Frame, weight: usize) -> Option<Frame> {
        if let Some(lane) = key.as_ref().and_then(|k| self.lanes.iter_mut().find(|l| l.key.as_ref() == Some(k))) {
            lane.then.push_back((frame, weight));
            return None;
        }
        if !should_chunk(&frame) {
            return Some(frame);
        }
        let chunker = self.chunker(frame);
        self.lanes.push_back(Lane { key, current: Some((chunker, weight)), then: VecDeque::new() });
        None
    }

    /// The next thing to write from the kept frames (lanes take turns), and the weight of
    /// the frame it finished (0 while a frame has chunks left); `None` when nothing is kept.
    pub fn next_to_write(&mut self) -> Option<(Next, usize)> {
        let mut lane = self.lanes.pop_front()?;
        if lane.current.is_none() {
            let (frame, weight) = lane.then.pop_front().expect("a lane holds a frame");
            if !should_chunk(&frame) {
                if !lane.then.is_empty() {
                    self.lanes.push_back(lane);
                }
                return Some((Next::Frame(frame), weight));
            }
            lane.current = Some((self.chunker(frame), weight));
        }
        let (chunker, weight) = lane.current.as_mut().expect("set above");
        let chunk = chunker.next_chunk().expect("a current frame has chunks left");
        let released = if chunker.is_done() {
            let weight = *weight;
            lane.current = None;
            weight
        } else {
            0
        };
        if lane.current.is_some() || !lane.then.is_empty() {
            self.lanes.push_back(lane);
        }
        Some((Next::Chunk(chunk), released))
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    fn chunker(&mut self, frame: Frame) -> Chunker {
        let stream = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1);
        Chunker::new(frame, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(frame: Frame, stream: u32) -> Vec<Vec<u8>> {
        let mut chunker = Chunker::new(frame, stream);
        std::iter::from_fn(|| chunker.next_chunk()).collect()
    }

    #[test]
    fn a_frame_goes_in_chunks_and_comes_back_whole_between_others() {
        let big = Frame::Binary((0..3 * CHUNK_BYTES + 17).map(|i| i as u8).collect());
        let text = Frame::Text("é".repeat(CHUNK_BYTES));
        assert!(should_chunk(&big) && should_chunk(&text));
        assert!(!should_chunk(&Frame::Binary(vec![1; CHUNK_BYTES])));
        let (a, b) = (chunks_of(big.clone(), 1), chunks_of(text.clone(), 2));
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|c| is_chunk(c) && c.len() <= CHUNK_HEADER_BYTES + CHUNK_BYTES));
        // Interleaved, each stream comes back whole when its last chunk arrives.
        let mut r = Reassembler::new(1 << 20);
        let now = Instant::now();
        let mut done = Vec::new();
        for i in 0..a.len().max(b.len()) {
            for chunks in [&a, &b] {
                if let Some(chunk) = chunks.get(i) {
                    done.extend(r.push(chunk, now).unwrap());
                }
            }
        }
        assert_eq!(done, [text, big], "the shorter stream completes first");
        assert_eq!((r.buffered(), r.oldest()), (0, None));
    }

    #[test]
    fn hostile_chunks_get_clear_errors_within_bounds() {
        let now = Instant::now();
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(&[CHUNK_VERSION, 0, 1], now), Err(ChunkError::Malformed));
        assert_eq!(r.push(&[1, 0, 0, 0, 0, 0], now), Err(ChunkError::Malformed), "a whole binary frame");
        let first = |stream: u32, flags: u8, data: &[u8]| {
            let mut c = vec![CHUNK_VERSION, flags];
            c.extend_from_slice(&stream.to_le_bytes());
            c.extend_from_slice(data);
            c
        };
        assert_eq!(r.push(&first(1, 0, &[0; 60]), now), Ok(None));
        assert_eq!(r.push(&first(1, 0, &[0; 60]), now), Err(ChunkError::TooLarge(100)));
        assert_eq!(r.buffered(), 0, "the oversized stream is dropped");
        for stream in 0..MAX_OPEN_STREAMS as u32 {
            assert_eq!(r.push(&first(stream, 0, b"x"), now), Ok(None));
        }
        assert_eq!(r.push(&first(99, 0, b"x"), now), Err(ChunkError::TooManyStreams));
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(&first(1, 0, &[0; 60]), now), Ok(None));
        assert_eq!(r.push(&first(2, 0, &[0; 60]), now), Err(ChunkError::TooLarge(100)), "all streams together");
        let mut r = Reassembler::new(100);
        for stream in 0..MAX_OPEN_STREAMS as u32 {
            assert_eq!(r.push(&first(stream, 0, b"x"), now), Ok(None));
        }
        assert_eq!(r.oldest(), Some(now));
        assert_eq!(r.push(&first(0, TEXT | LAST, b"x"), now), Err(ChunkError::KindChanged));
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(&first(5, TEXT | LAST, &[0xff, 0xfe]), now), Err(ChunkError::NotUtf8));
        assert_eq!(r.push(&first(6, LAST, &[]), now), Ok(Some(Frame::Binary(Vec::new()))));
    }

    #[test]
    fn small_frames_pass_a_chunked_one_but_never_one_of_their_own_session() {
        let mut i: Interleave<&str> = Interleave::default();
        let big = |n: u8| Frame::Binary(vec![n; 2 * CHUNK_BYTES + 1]);
        let small = |t: &str| Frame::Text(t.to_owned());
        assert_eq!(i.offer(Some("a"), small("a0"), 1), Some(small("a0")), "nothing kept: goes at once");
        assert_eq!(i.offer(Some("a"), big(1), 100), None);
        assert_eq!(i.offer(Some("b"), small("b1"), 1), Some(small("b1")), "another session passes");
        assert_eq!(i.offer(None, small("ping"), 1), Some(small("ping")));
        assert_eq!(i.offer(Some("a"), small("a2"), 1), None, "its own session waits behind it");
        assert_eq!(i.offer(Some("c"), big(3), 200), None, "a second large frame: a lane of its own");
        let mut order = Vec::new();
        let mut released = 0;
        let mut r = Reassembler::new(1 << 20);
        while let Some((next, weight)) = i.next_to_write() {
            released += weight;
            match next {
                Next::Chunk(c) => {
                    if let Some(Frame::Binary(b)) = r.push(&c, Instant::now()).unwrap() {
                        order.push(format!("big{}", b[0]));
                    }
                }
                Next::Frame(Frame::Text(t)) => order.push(t),
                Next::Frame(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(order, ["big1", "big3", "a2"], "lanes take turns; a2 right after its session's frame");
        assert_eq!(released, 301, "every kept weight given back");
        assert!(i.is_empty());
    }
}
