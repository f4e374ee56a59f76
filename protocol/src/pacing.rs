//! Chunked frames paced by delay, so that bulk never builds a queue in front of the ticks.
//!
//! Chunks ([`crate::chunk`]) stop a large frame from holding up the frames queued behind it
//! *in the sender*. They do nothing about the queues further down the path: on a
//! 100 Mbit/s link with buffers that hold 30 ms, a sender that writes chunks as fast as TCP
//! takes them keeps those buffers full, and every tick waits 30 ms behind the bulk in them.
//! So a receiver acknowledges the chunks it takes, saying when it took them, and a sender
//! keeps at most a window of chunk bytes unacknowledged ([`Pacer`]). The window follows
//! the one-way delay of the chunks themselves, as LEDBAT (RFC 6817) does for a whole flow:
//! it grows while chunks arrive as fast as the quickest seen lately, and shrinks once they
//! take more than [`TARGET_QUEUE_DELAY`] longer, which is to say once the bulk has started
//! to queue. Bulk then fills what the link has spare and leaves the queues nearly empty for
//! the ticks. One-way, not round trip: the acknowledgement's own way back (behind the other
//! side's bulk, say) does not count as a queue this side built.
//!
//! An acknowledgement is one binary WebSocket frame:
//!
//! ```text
//! 03                          acknowledgement version (a chunk starts with 02)
//! 00 40 06 00 00 00 00 00     chunk bytes taken on this connection so far, u64 little endian
//! 8f 3a 01 00 00 00 00 00     when the receiver took the last of them: microseconds on
//!                             its own clock (any origin), u64 little endian
//! ```
//!
//! counting every chunk's whole frame, header included. Acknowledgements are cumulative, so
//! a receiver may send one for several chunks, and a lost or late one costs nothing the
//! next does not repair. The two clocks are never compared as such: a delay is judged
//! against the quickest seen on the same two clocks lately, so their offset cancels out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::chunk::{CHUNK_BYTES, CHUNK_HEADER_BYTES};

/// The first byte of an acknowledgement.
pub const ACK_VERSION: u8 = 3;

/// An acknowledgement's length: version, count and time.
pub const ACK_BYTES: usize = 17;

/// How much longer than the quietest round trip lately chunks may take before the window
/// shrinks (4 ms): the queueing the bulk may add in front of everything else, both ways
/// together.
pub const TARGET_QUEUE_DELAY: Duration = Duration::from_millis(4);

/// The smallest window: two chunks, so bulk always moves.
pub const MIN_WINDOW: u64 = 2 * (CHUNK_BYTES + CHUNK_HEADER_BYTES) as u64;

/// The largest window: a 100 ms round trip at over 600 Mbit/s.
pub const MAX_WINDOW: u64 = 8 * 1024 * 1024;

/// The window a connection starts with.
pub const INITIAL_WINDOW: u64 = 4 * (CHUNK_BYTES + CHUNK_HEADER_BYTES) as u64;

/// Chunks in flight a sender keeps marks for (tiny last chunks must not make the marks
/// grow with the window).
const MAX_MARKS: usize = 1024;

/// The base delay is the quickest in the last two of these periods (a route that changed
/// is learnt within two).
const BASE_PERIOD: Duration = Duration::from_secs(10);

/// The delay judged is the quickest of the last few samples (random jitter filtered out,
/// a queue that persists kept).
const CURRENT_SAMPLES: usize = 4;

/// Whether a binary WebSocket frame is an acknowledgement.
pub fn is_ack(frame: &[u8]) -> bool {
    frame.first() == Some(&ACK_VERSION)
}

/// What an acknowledgement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ack {
    /// Chunk bytes taken so far.
    pub received: u64,
    /// When the last of them was taken, in microseconds on the receiver's clock.
    pub taken_at_us: u64,
}

/// The acknowledgement frame for `ack`.
pub fn ack_frame(ack: Ack) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ACK_BYTES);
    frame.push(ACK_VERSION);
    frame.extend_from_slice(&ack.received.to_le_bytes());
    frame.extend_from_slice(&ack.taken_at_us.to_le_bytes());
    frame
}

/// What an acknowledgement frame says.
pub fn parse_ack(frame: &[u8]) -> Result<Ack, MalformedAck> {
    if frame.len() != ACK_BYTES || !is_ack(frame) {
        return Err(MalformedAck);
    }
    let word = |at: usize| u64::from_le_bytes(frame[at..at + 8].try_into().expect("8 bytes"));
    Ok(Ack { received: word(1), taken_at_us: word(9) })
}

/// Microseconds from `origin` to `now`: a receiver's clock for [`Ack::taken_at_us`].
pub fn micros_since(origin: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(origin).as_micros() as u64
}

/// An acknowledgement that is not [`ACK_BYTES`] long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunk acknowledgement (not {ACK_BYTES} bytes starting with {ACK_VERSION})")]
pub struct MalformedAck;

/// A sender's window of unacknowledged chunk bytes, moved by their round trips.
#[derive(Debug)]
pub struct Pacer {
    window: u64,
    sent: u64,
    acked: u64,
    /// Each chunk in flight: the count it brings `sent` to, and when it went.
    marks: VecDeque<(u64, Instant)>,
    /// The sender's clock for one-way delays.
    origin: Instant,
    /// One-way delays (receiver's clock minus sender's: offset by the clocks' difference)
    /// of the last few acknowledgements, in microseconds.
    recent: VecDeque<i64>,
    /// The quickest one-way delay of this period and of the one before.
    base: [Option<i64>; 2],
    period_began: Option<Instant>,
    /// The last round trip, which paces how often the window may halve.
    round_trip: Duration,
    /// Growing fast, until the first sign of a queue.
    starting: bool,
    /// The window held chunks back since the last acknowledgement: only then may it grow
    /// (a window a sender does not fill says nothing about the path).
    limited: bool,
    /// When the window last halved.
    halved_at: Option<Instant>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            window: INITIAL_WINDOW,
            sent: 0,
            acked: 0,
            marks: VecDeque::new(),
            origin: Instant::now(),
            recent: VecDeque::new(),
            base: [None, None],
            period_began: None,
            round_trip: Duration::ZERO,
            starting: true,
            limited: false,
            halved_at: None,
        }
    }
}

impl Pacer {
    /// Whether a chunk may go now; when not, the sender waits for an acknowledgement.
    pub fn may_send(&mut self) -> bool {
        let open = self.sent - self.acked < self.window && self.marks.len() < MAX_MARKS;
        self.limited |= !open;
        open
    }

    /// A chunk of `bytes` (its whole frame) went at `now`.
    pub fn sent(&mut self, bytes: usize, now: Instant) {
        self.sent += bytes as u64;
        self.marks.push_back((self.sent, now));
    }

    /// The receiver says it has taken `ack.received` chunk bytes in all. A count beyond
    /// what was sent is a lie and changes nothing (it would open the window for good);
    /// one that goes back changes nothing either.
    pub fn acked(&mut self, ack: Ack, now: Instant) {
        let received = ack.received;
        if received <= self.acked || received > self.sent {
            return;
        }
        let newly = received - self.acked;
        self.acked = received;
        let mut last = None;
        while let Some(&(end, at)) = self.marks.front() {
            if end > received {
                break;
            }
            last = Some((end, at));
            self.marks.pop_front();
        }
        // Only an acknowledgement that ends exactly at a chunk says when that chunk
        // arrived (a hostile or garbled count gives no delay).
        let Some((end, went)) = last.filter(|&(end, _)| end == ack.received) else { return };
        debug_assert_eq!(end, received);
        self.round_trip = now.saturating_duration_since(went);
        // Any two u64 clocks: their difference fits an i128, and a delay past an i64 is
        // no sample.
        let Ok(one_way) = i64::try_from(i128::from(ack.taken_at_us) - i128::from(micros_since(self.origin, went)))
        else {
            return;
        };
        self.observe(one_way, now);
        self.adjust(newly, now);
    }

    /// Bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent - self.acked
    }

    /// The window, in bytes.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// How much longer than the base the recent one-way delays are: the queue the bulk
    /// built.
    pub fn queue_delay(&self) -> Option<Duration> {
        let base = self.base.iter().flatten().min()?;
        let current = self.recent.iter().min()?;
        Some(Duration::from_micros(current.saturating_sub(*base).max(0) as u64))
    }

    fn observe(&mut self, one_way: i64, now: Instant) {
        let began = *self.period_began.get_or_insert(now);
        if now.duration_since(began) >= BASE_PERIOD {
            self.base = [None, self.base[0]];
            self.period_began = Some(now);
        }
        self.base[0] = Some(self.base[0].map_or(one_way, |b| b.min(one_way)));
        if self.recent.len() == CURRENT_SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(one_way);
    }

    fn adjust(&mut self, newly: u64, now: Instant) {
        let Some(delay) = self.queue_delay() else { return };
        let target = TARGET_QUEUE_DELAY.as_secs_f64();
        // +1 on an empty queue, 0 at the target, -1 at twice the target and beyond.
        let off_target = ((target - delay.as_secs_f64()) / target).max(-1.0);
        let limited = std::mem::take(&mut self.limited);
        if off_target > 0.0 {
            if !limited {
                return;
            }
            if self.starting {
                // Doubles each round trip while the path shows no queue.
                self.window += newly;
            } else {
                // About a chunk more each round trip, less as the target nears.
                self.window += (CHUNK_BYTES as f64 * newly as f64 * off_target / self.window as f64) as u64;
            }
        } else {
            self.starting = false;
            let halved_lately = self.halved_at.is_some_and(|at| now.duration_since(at) < self.round_trip);
            if delay > 2 * TARGET_QUEUE_DELAY && !halved_lately {
                // A queue well past the target (the start overshot, or other traffic
                // arrived): back off at once, at most once a round trip.
                self.window /= 2;
                self.halved_at = Some(now);
            } else {
                self.window = self
                    .window
                    .saturating_sub((CHUNK_BYTES as f64 * newly as f64 * -off_target / self.window as f64) as u64);
            }
        }
        self.window = self.window.clamp(MIN_WINDOW, MAX_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = CHUNK_BYTES + CHUNK_HEADER_BYTES;

    #[test]
    fn acknowledgements_round_trip_and_refuse_other_lengths() {
        let ack = Ack { received: 409_600, taken_at_us: 80_527 };
        assert_eq!(ack_frame(ack).len(), ACK_BYTES);
        assert_eq!(parse_ack(&ack_frame(ack)), Ok(ack));
        assert!(is_ack(&ack_frame(Ack::default())) && !is_ack(&[2, 0]));
        assert_eq!(parse_ack(&[ACK_VERSION, 1, 2]), Err(MalformedAck));
        assert_eq!(parse_ack(&[2; ACK_BYTES]), Err(MalformedAck));
        assert_eq!(parse_ack(&[]), Err(MalformedAck));
    }

    /// A sender on a path of `rate` bytes a second and `base` round trip with a bottleneck
    /// queue of `queue` bytes (a full queue holds the sender back, as TCP would), sending
    /// chunks whenever the window lets it, for `time`; returns the pacer, the bytes
    /// delivered and the largest queue delay a tick would have met in the second half.
    /// Acknowledgements come back `ack_jitter` late at most (queued behind the other
    /// side's bulk, say), in order.
    fn simulate(
        rate: f64,
        base: Duration,
        queue: usize,
        time: Duration,
        ack_jitter: Duration,
    ) -> (Pacer, u64, Duration) {
        let start = Instant::now();
        let mut pacer = Pacer::default();
        let step = Duration::from_micros(100);
        let mut in_queue = 0usize;
        // Bytes the link may still send this step, and bytes of the chunk at the head
        // already sent.
        let mut credit = 0.0;
        let mut head_sent = 0usize;
        let mut queued: VecDeque<usize> = VecDeque::new();
        // The receiver's clock starts elsewhere: only differences of delays count.
        let receiver_origin = start - Duration::from_millis(1234);
        let mut acks: VecDeque<(Instant, Ack)> = VecDeque::new();
        let (mut received, mut worst) = (0u64, Duration::ZERO);
        let mut now = start;
        while now - start < time {
            while in_queue + CHUNK <= queue && pacer.may_send() {
                pacer.sent(CHUNK, now);
                in_queue += CHUNK;
                queued.push_back(CHUNK);
            }
            if now - start > time / 2 {
                worst = worst.max(Duration::from_secs_f64(in_queue as f64 / rate));
            }
            credit += rate * step.as_secs_f64();
            while let Some(&bytes) = queued.front() {
                let left = (bytes - head_sent) as f64;
                if credit < left {
                    head_sent += credit as usize;
                    credit = 0.0;
                    break;
                }
                credit -= left;
                head_sent = 0;
                queued.pop_front();
                in_queue -= bytes;
                received += bytes as u64;
                let taken_at_us = micros_since(receiver_origin, now + base / 2);
                let late = ack_jitter.mul_f64(fastrand::f64());
                let at = acks.back().map_or(now, |&(at, _)| at).max(now + base + late);
                acks.push_back((at, Ack { received, taken_at_us }));
            }
            if queued.is_empty() {
                credit = 0.0;
            }
            while let Some(&(at, ack)) = acks.front() {
                if at > now {
                    break;
                }
                pacer.acked(ack, now);
                acks.pop_front();
            }
            now += step;
        }
        (pacer, received, worst)
    }

    #[test]
    fn bulk_fills_the_link_but_keeps_the_queue_near_the_target() {
        // 100 Mbit/s, 20 ms round trip, a queue of 384 KiB (31 ms): what the bulk bench runs.
        let rate = 12.5e6;
        let (pacer, delivered, worst) =
            simulate(rate, Duration::from_millis(20), 384 * 1024, Duration::from_secs(4), Duration::ZERO);
        let throughput = delivered as f64 / 4.0;
        assert!(throughput > 0.6 * rate, "bulk uses most of the link: {throughput:.0} B/s of {rate:.0}");
        assert!(
            worst < TARGET_QUEUE_DELAY * 3,
            "the queue a tick meets stays near the target: {worst:?} (window {})",
            pacer.window()
        );
        // Unpaced, the same sender keeps the queue full.
        let full = Duration::from_secs_f64(384.0 * 1024.0 / rate);
        assert!(worst * 4 < full, "{worst:?} against {full:?} unpaced");
    }

    #[test]
    fn acknowledgements_late_on_their_way_back_do_not_starve_the_bulk() {
        // Up to 15 ms of queue on the way back (the other side's traffic): one-way delays
        // do not see it, so the window does not shrink for it.
        fastrand::seed(7);
        let rate = 12.5e6;
        let (_, delivered, worst) =
            simulate(rate, Duration::from_millis(20), 384 * 1024, Duration::from_secs(4), Duration::from_millis(15));
        let throughput = delivered as f64 / 4.0;
        assert!(throughput > 0.5 * rate, "{throughput:.0} B/s of {rate:.0}");
        // Late acknowledgements come in bunches, and so the chunks they let go: the queue
        // peaks higher than on a clean path, still well under the 31 ms unpaced.
        assert!(worst < TARGET_QUEUE_DELAY * 4, "{worst:?}");
    }

    #[test]
    fn the_window_stays_within_its_bounds_and_shrinks_on_a_queue() {
        let mut pacer = Pacer::default();
        let origin = pacer.origin;
        let one_way = Duration::from_millis(10);
        // The receiver takes everything `delay` after it went, acknowledges it as soon.
        let round = |pacer: &mut Pacer, t: &mut Instant, delay: Duration| {
            while pacer.may_send() {
                pacer.sent(CHUNK, *t);
            }
            let taken = *t + delay;
            *t = taken + one_way;
            let ack = Ack { received: pacer.sent, taken_at_us: micros_since(origin, taken) };
            pacer.acked(ack, *t);
        };
        // Quick deliveries grow the window while it limits the sender.
        let mut t = origin;
        for _ in 0..200 {
            round(&mut pacer, &mut t, one_way);
        }
        assert_eq!(pacer.window(), MAX_WINDOW, "grows to its ceiling, never past");
        assert_eq!(pacer.queue_delay(), Some(Duration::ZERO));
        // Then every chunk takes 50 ms longer to arrive: a queue far past the target.
        for _ in 0..200 {
            round(&mut pacer, &mut t, one_way + Duration::from_millis(50));
        }
        assert_eq!(pacer.queue_delay(), Some(Duration::from_millis(50)));
        assert_eq!(pacer.window(), MIN_WINDOW, "shrinks to its floor, never below");
        assert!(pacer.may_send(), "the floor still lets bulk move");
    }

    #[test]
    fn hostile_or_stale_acknowledgements_change_nothing_they_should_not() {
        let now = Instant::now();
        let mut pacer = Pacer::default();
        pacer.sent(CHUNK, now);
        pacer.sent(CHUNK, now);
        let ack = |received: u64, taken_at_us: u64| Ack { received, taken_at_us };
        pacer.acked(ack(u64::MAX, u64::MAX), now + Duration::from_millis(5));
        assert_eq!(pacer.in_flight(), 2 * CHUNK as u64, "beyond what was sent: a lie, ignored");
        assert_eq!(pacer.queue_delay(), None, "and no delay taken from it");
        pacer.acked(ack(2 * CHUNK as u64, u64::MAX), now + Duration::from_millis(5));
        assert_eq!(pacer.in_flight(), 0, "a true count still counts, whatever its clock says");
        pacer.sent(CHUNK, now);
        pacer.acked(ack(1, 0), now);
        assert_eq!(pacer.in_flight(), CHUNK as u64, "a count that goes back is ignored");
        // A window that did not limit the sender does not grow.
        let window = pacer.window();
        pacer.acked(ack(3 * CHUNK as u64, 7), now + Duration::from_millis(5));
        assert_eq!(pacer.window(), window);
    }

    #[test]
    fn marks_are_bounded_even_for_tiny_chunks() {
        let now = Instant::now();
        let mut pacer = Pacer::default();
        let mut sent = 0;
        while pacer.may_send() {
            pacer.sent(CHUNK_HEADER_BYTES, now);
            sent += 1;
        }
        assert_eq!(sent, MAX_MARKS);
    }
}
