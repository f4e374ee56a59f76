//! A connection's outbound queue: bounded in frames and in bytes, encoded by the writer.
//!
//! The router pushes [`Outbound`] values under its state lock; they are plain data (a
//! message, or an assignment that shares its payload with the scheduler), so nothing
//! large is encoded or copied under the lock. The connection's writer task encodes each
//! one on its own time ([`Outbound::encode`]) and writes it.
//!
//! The queue counts both frames and bytes. [`OutboundTx::try_send`] refuses a frame that
//! would take the queue past either bound: the client is not reading, and the router
//! disconnects it rather than buffer for it. [`OutboundTx::send_exempt`] bypasses the
//! bounds for the coordinator's own answers to a gamer (timeouts, task failures): those
//! are bounded elsewhere (by the gamer's pending tasks, which they answer), and refusing
//! them would turn one burst of timeouts into the disconnection of an honest gamer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use p2c2r_protocol::binary::Frame;
use p2c2r_protocol::binary::{self, FrameHeader};
use p2c2r_protocol::{Encoding, Message, Payload, TaskAssignmentRef, TaskSpecRef, codec};
use tokio::sync::mpsc;

/// Bytes counted for a frame on top of its payload (ids, field names, framing).
const FRAME_OVERHEAD_BYTES: usize = 512;

/// A frame on its way to a connection's writer.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message, encoded by the writer.
    Message(Box<Message>),
    /// A task assignment whose payload is shared with the scheduler.
    Assignment(Box<AssignmentFrame>),
    /// A WebSocket ping.
    Ping,
    /// Close the connection with this code and reason.
    Close(u16, String),
}

/// The fields of a `task_assignment`, with its payload shared rather than copied.
#[derive(Debug)]
pub struct AssignmentFrame {
    /// The coordinator's id for this attempt.
    pub assignment_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// The attempt's deadline in milliseconds.
    pub deadline_ms: u64,
    /// The gamer's own task id.
    pub task_id: String,
    /// What to run.
    pub task_type: String,
    /// The task's session, if any.
    pub session_id: Option<String>,
    /// The gamer that submitted it.
    pub gamer_id: String,
    /// The task's input, as the gamer sent it.
    pub payload: Payload,
}

impl Outbound {
    /// A protocol message to encode later.
    pub fn message(message: Message) -> Self {
        Outbound::Message(Box::new(message))
    }

    /// The bytes this frame is counted as while it waits: its payload (as JSON, the larger
    /// form) plus a fixed overhead. Computed without encoding it.
    pub fn weight(&self) -> usize {
        let payload = match self {
            // The payload's size as JSON: what a binary payload grows to (base64) on a
            // JSON connection, never less than it takes on a binary one, so the queue's
            // byte bound holds on either.
            Outbound::Message(m) => match m.as_ref() {
                Message::TaskResult(r) => r.result.json_len(),
                Message::TaskAssignment(a) => a.task_data.task_data.json_len(),
                Message::TaskRequest(r) => r.task_data.json_len(),
                _ => 0,
            },
            Outbound::Assignment(a) => a.payload.json_len(),
            Outbound::Ping | Outbound::Close(..) => 0,
        };
        payload + FRAME_OVERHEAD_BYTES
    }

    /// The data frame for a connection that speaks `encoding` (`None` for pings and
    /// closes): a binary frame for a task message with a binary payload on a binary
    /// connection, JSON text otherwise (a binary payload base64-wrapped, see
    /// [`p2c2r_protocol::payload`]).
    pub fn encode(&self, encoding: Encoding) -> Option<Frame> {
        match (self, encoding) {
            (Outbound::Message(m), _) => Some(binary::encode_for(m, encoding)),
            (Outbound::Assignment(a), Encoding::Binary) if a.payload.is_binary() => {
                let Payload::Binary(bytes) = &a.payload else { unreachable!("checked by the guard") };
                Some(Frame::Binary(binary::encode_parts(
                    &FrameHeader::TaskAssignment {
                        assignment_id: &a.assignment_id,
                        attempt: a.attempt,
                        deadline_ms: Some(a.deadline_ms),
                        task_id: &a.task_id,
                        task_type: &a.task_type,
                        session_id: a.session_id.as_deref(),
                        gamer_id: Some(&a.gamer_id),
                    },
                    bytes,
                )))
            }
            (Outbound::Assignment(a), _) => Some(Frame::Text(codec::encode_assignment(&TaskAssignmentRef {
                task_id: &a.assignment_id,
                attempt: a.attempt,
                deadline_ms: Some(a.deadline_ms),
                task_data: TaskSpecRef {
                    task_id: &a.task_id,
                    task_type: &a.task_type,
                    session_id: a.session_id.as_deref(),
                    gamer_id: Some(&a.gamer_id),
                    task_data: &a.payload,
                },
            }))),
            (Outbound::Ping | Outbound::Close(..), _) => None,
        }
    }
}

/// Why [`OutboundTx::try_send`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The queue holds its most frames or bytes: the client is not reading.
    Full,
    /// The connection's writer is gone.
    Closed,
}

#[derive(Debug)]
struct Budget {
    max_frames: usize,
    max_bytes: usize,
    frames: AtomicUsize,
    bytes: AtomicUsize,
}

/// The sending side, held by the router (cheap to clone).
#[derive(Clone, Debug)]
pub struct OutboundTx {
    tx: mpsc::UnboundedSender<(Outbound, usize)>,
    budget: Arc<Budget>,
}

/// The receiving side, drained by the connection's writer.
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<(Outbound, usize)>,
    budget: Arc<Budget>,
}

/// A queue that holds at most `max_frames` frames and `max_bytes` bytes (one frame larger
/// than `max_bytes` is accepted into an empty queue, so that no frame within the frame
/// limit is undeliverable).
pub fn channel(max_frames: usize, max_bytes: usize) -> (OutboundTx, OutboundRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Budget {
        max_frames: max_frames.max(1),
        max_bytes: max_bytes.max(1),
        frames: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
    });
    (OutboundTx { tx, budget: budget.clone() }, OutboundRx { rx, budget })
}

impl OutboundTx {
    /// Queues a frame if it fits the bounds.
    pub fn try_send(&self, frame: Outbound) -> Result<(), SendError> {
        let weight = frame.weight();
        let b = &self.budget;
        // Reserve first, then check, so that concurrent senders cannot both squeeze in.
        let frames = b.frames.fetch_add(1, Ordering::AcqRel);
        let bytes = b.bytes.fetch_add(weight, Ordering::AcqRel);
        if frames >= b.max_frames || (bytes > 0 && bytes + weight > b.max_bytes) {
            b.frames.fetch_sub(1, Ordering::AcqRel);
            b.bytes.fetch_sub(weight, Ordering::AcqRel);
            return Err(SendError::Full);
        }
        self.push(frame, weight)
    }

    /// Queues a frame regardless of the bounds (see the module docs for who may).
    pub fn send_exempt(&self, frame: Outbound) -> Result<(), SendError> {
        let weight = frame.weight();
        self.budget.frames.fetch_add(1, Ordering::AcqRel);
        self.budget.bytes.fetch_add(weight, Ordering::AcqRel);
        self.push(frame, weight)
    }

    fn push(&self, frame: Outbound, weight: usize) -> Result<(), SendError> {
        self.tx.send((frame, weight)).map_err(|_| {
            self.budget.frames.fetch_sub(1, Ordering::AcqRel);
            self.budget.bytes.fetch_sub(weight, Ordering::AcqRel);
            SendError::Closed
        })
    }

    /// Frames waiting now.
    pub fn queued_frames(&self) -> usize {
        self.budget.frames.load(Ordering::Acquire)
    }

    /// Bytes waiting now (as counted by [`Outbound::weight`]).
    pub fn queued_bytes(&self) -> usize {
        self.budget.bytes.load(Ordering::Acquire)
    }

    /// The most frames the queue holds.
    pub fn max_frames(&self) -> usize {
        self.budget.max_frames
    }
}

impl OutboundRx {
    /// The next frame, once one is queued; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        self.recv_weighed().await.map(|(frame, _)| frame)
    }

    /// The next frame and the bytes it was counted as, once one is queued; `None` when
    /// every sender is gone.
    pub async fn recv_weighed(&mut self) -> Option<(Outbound, usize)> {
        let (frame, weight) = self.rx.recv().await?;
        self.taken(weight);
        Some((frame, weight))
    }

    /// The next frame and its weight if one is queued now.
    pub fn try_recv_weighed(&mut self) -> Result<(Outbound, usize), mpsc::error::TryRecvError> {
        let (frame, weight) = self.rx.try_recv()?;
        self.taken(weight);
        Ok((frame, weight))
    }

    /// Counts `bytes` of a frame the writer keeps (a chunked frame being written) against
    /// the queue's byte bound again, until [`OutboundRx::release`].
    pub fn hold(&self, bytes: usize) {
        self.budget.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives back bytes [`OutboundRx::hold`] counted.
    pub fn release(&self, bytes: usize) {
        self.budget.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn taken(&self, weight: usize) {
        self.budget.frames.fetch_sub(1, Ordering::AcqRel);
        self.budget.bytes.fetch_sub(weight, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use p2c2r_protocol::{ErrorCode, TaskResult, raw_payload};

    use super::*;

    fn result_of(bytes: usize) -> Outbound {
        let json = format!("\"{}\"", "x".repeat(bytes.saturating_sub(2)));
        Outbound::message(Message::TaskResult(TaskResult {
            task_id: "t".into(),
            result: raw_payload(json).unwrap(),
            attempt: None,
            peer_id: None,
        }))
    }

    #[tokio::test]
    async fn bounded_in_frames() {
        let (tx, mut rx) = channel(2, usize::MAX);
        tx.try_send(Outbound::Ping).unwrap();
        tx.try_send(Outbound::Ping).unwrap();
        assert_eq!(tx.try_send(Outbound::Ping), Err(SendError::Full));
        rx.recv().await.unwrap();
        tx.try_send(Outbound::Ping).unwrap();
        assert_eq!(tx.queued_frames(), 2);
    }

    #[tokio::test]
    async fn bounded_in_bytes_but_one_large_frame_fits_an_empty_queue() {
        let (tx, mut rx) = channel(100, 10_000);
        tx.try_send(result_of(50_000)).unwrap();
        assert_eq!(tx.try_send(result_of(10)), Err(SendError::Full), "the queue holds more than its bytes");
        rx.recv().await.unwrap();
        assert_eq!(tx.queued_bytes(), 0);
        tx.try_send(result_of(4_000)).unwrap();
        tx.try_send(result_of(4_000)).unwrap();
        assert_eq!(tx.try_send(result_of(4_000)), Err(SendError::Full));
    }

    #[tokio::test]
    async fn exempt_frames_pass_a_full_queue_and_are_counted() {
        let (tx, mut rx) = channel(1, 10_000);
        tx.try_send(Outbound::Ping).unwrap();
        let error = Message::error(ErrorCode::QueueTimeout, "late", None);
        tx.send_exempt(Outbound::message(error)).unwrap();
        assert_eq!(tx.queued_frames(), 2);
        assert!(matches!(rx.recv().await, Some(Outbound::Ping)));
        assert!(matches!(rx.recv().await, Some(Outbound::Message(_))));
        assert_eq!((tx.queued_frames(), tx.queued_bytes()), (0, 0));
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_and_releases_its_reservation() {
        let (tx, rx) = channel(4, 10_000);
        drop(rx);
        assert_eq!(tx.try_send(Outbound::Ping), Err(SendError::Closed));
        assert_eq!((tx.queued_frames(), tx.queued_bytes()), (0, 0));
    }

    #[test]
    fn assignments_encode_like_the_owned_message() {
        let assignment = |payload: Payload| {
            Outbound::Assignment(Box::new(AssignmentFrame {
                assignment_id: "4.1".into(),
                attempt: 1,
                deadline_ms: 250,
                task_id: "t".into(),
                task_type: "physics_step".into(),
                session_id: Some("s".into()),
                gamer_id: "g".into(),
                payload,
            }))
        };
        let owned = |payload: Payload| {
            Message::TaskAssignment(p2c2r_protocol::TaskAssignment {
                task_id: "4.1".into(),
                attempt: 1,
                deadline_ms: Some(250),
                task_data: p2c2r_protocol::TaskSpec {
                    task_id: "t".into(),
                    task_type: "physics_step".into(),
                    session_id: Some("s".into()),
                    gamer_id: Some("g".into()),
                    task_data: payload,
                },
            })
        };
        let json = raw_payload(r#"{"tick":1}"#.into()).unwrap();
        let frame = assignment(json.clone());
        let expected = r#"{"msg_type":"task_assignment","task_id":"4.1","attempt":1,"deadline_ms":250,"task_data":{"task_id":"t","task_type":"physics_step","session_id":"s","gamer_id":"g","task_data":{"tick":1}}}"#;
        // A JSON payload is a text frame on either kind of connection.
        for encoding in [Encoding::Json, Encoding::Binary] {
            assert_eq!(frame.encode(encoding), Some(Frame::Text(expected.into())));
        }
        assert_eq!(codec::encode(&owned(json)), expected);
        assert!(frame.weight() >= 10);
        // A binary payload: a binary frame on a binary connection, base64 in JSON
        // otherwise; both as the owned message would encode.
        let bin = Payload::binary(vec![0x50, 1, 2]);
        let frame = assignment(bin.clone());
        let Some(Frame::Binary(b)) = frame.encode(Encoding::Binary) else { panic!() };
        assert_eq!(Some(b), binary::encode(&owned(bin.clone())));
        let Some(Frame::Text(t)) = frame.encode(Encoding::Json) else { panic!() };
        assert_eq!(t, codec::encode(&owned(bin)));
        assert!(t.contains(r#""task_data":{"p2c2r_binary":"UAEC"}"#), "{t}");
    }
}
