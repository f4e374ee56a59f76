//! Binary frames: the task messages whose payload is binary, on connections that
//! negotiated the [`SUBPROTOCOL`].
//!
//! A client asks for binary frames by offering the WebSocket subprotocol
//! `p2c2r.bin.v1` (`Sec-WebSocket-Protocol`) when it connects; the coordinator accepts it
//! by naming it in its answer. Without it (the seed's clients, any JSON client) a
//! connection is JSON only, exactly as before. On a binary connection, `task_request`,
//! `task_assignment` and `task_result` messages whose payload is [`Payload::Binary`]
//! travel as binary WebSocket frames; every other message (registration, errors,
//! heartbeats, stats, tasks with JSON payloads) stays a JSON text frame, as they are rare
//! or small. Both kinds of frame share the connection.
//!
//! A binary frame is one version byte ([`FRAME_VERSION`]), a header serialized with
//! `postcard` ([`FrameHeader`]), then the payload's bytes up to the end of the frame:
//!
//! ```text
//! 01                      frame version 1
//! 02                      header variant 2: task_result
//! 05 74 2d 31 2e 31       task_id "t-1.1" (varint length, UTF-8)
//! 01 01                   attempt: Some(1)
//! 00                      peer_id: None
//! 51 01 ...               the payload: the rest of the frame
//! ```
//!
//! Decoding borrows the header's strings from the frame and takes the payload as a
//! shared slice of it ([`Bytes::slice`]): the coordinator forwards payloads without
//! copying or parsing them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Message, Payload, TaskAssignment, TaskRequest, TaskResult, TaskSpec, limits};

/// The WebSocket subprotocol that turns binary frames on.
pub const SUBPROTOCOL: &str = "p2c2r.bin.v1";

/// The first byte of every binary frame.
pub const FRAME_VERSION: u8 = 1;

/// How a connection's messages travel, chosen when it connects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// JSON text frames only (the default, and the seed's protocol).
    #[default]
    Json,
    /// Binary frames for task messages with binary payloads ([`SUBPROTOCOL`]).
    Binary,
}

impl Encoding {
    /// The encoding a client's `Sec-WebSocket-Protocol` offer selects: binary when it
    /// lists [`SUBPROTOCOL`] (a comma-separated list, possibly over several headers).
    pub fn from_offer<'a>(offers: impl IntoIterator<Item = &'a str>) -> Self {
        let binary = offers.into_iter().flat_map(|o| o.split(',')).any(|p| p.trim() == SUBPROTOCOL);
        if binary { Encoding::Binary } else { Encoding::Json }
    }

    /// The encoding a server's answer (`Sec-WebSocket-Protocol`, if any) selected.
    pub fn from_answer(answer: Option<&str>) -> Self {
        if answer.map(str::trim) == Some(SUBPROTOCOL) { Encoding::Binary } else { Encoding::Json }
    }

    /// The name used in logs and the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        }
    }
}

/// An encoded frame, ready for a WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A JSON text frame ([`crate::codec`]).
    Text(String),
    /// A binary frame (this module).
    Binary(Vec<u8>),
}

impl Frame {
    /// The frame's size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(text) => text.len(),
            Frame::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether the frame has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes `message` for a connection that speaks `encoding`: a binary frame for a task
/// message with a binary payload on a binary connection, JSON text otherwise (a binary
/// payload then travels base64-wrapped, see [`crate::payload`]).
pub fn encode_for(message: &Message, encoding: Encoding) -> Frame {
    match encoding {
        Encoding::Binary => encode(message).map_or_else(|| Frame::Text(crate::codec::encode(message)), Frame::Binary),
        Encoding::Json => Frame::Text(crate::codec::encode(message)),
    }
}

/// The header of a binary frame: a task message without its payload.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum FrameHeader<'a> {
    /// A `task_request` ([`TaskRequest`]).
    TaskRequest {
        /// See [`TaskRequest::task_id`].
        task_id: &'a str,
        /// See [`TaskRequest::task_type`].
        task_type: &'a str,
        /// See [`TaskRequest::session_id`].
        session_id: Option<&'a str>,
        /// See [`TaskRequest::deadline_ms`].
        deadline_ms: Option<u64>,
    },
    /// A `task_assignment` ([`TaskAssignment`]).
    TaskAssignment {
        /// See [`TaskAssignment::task_id`].
        assignment_id: &'a str,
        /// See [`TaskAssignment::attempt`].
        attempt: u32,
        /// See [`TaskAssignment::deadline_ms`].
        deadline_ms: Option<u64>,
        /// See [`TaskSpec::task_id`].
        task_id: &'a str,
        /// See [`TaskSpec::task_type`].
        task_type: &'a str,
        /// See [`TaskSpec::session_id`].
        session_id: Option<&'a str>,
        /// See [`TaskSpec::gamer_id`].
        gamer_id: Option<&'a str>,
    },
    /// A `task_result` ([`TaskResult`]).
    TaskResult {
        /// See [`TaskResult::task_id`].
        task_id: &'a str,
        /// See [`TaskResult::attempt`].
        attempt: Option<u32>,
        /// See [`TaskResult::peer_id`].
        peer_id: Option<&'a str>,
    },
}

impl FrameHeader<'_> {
    fn msg_type(&self) -> &'static str {
        match self {
            FrameHeader::TaskRequest { .. } => "task_request",
            FrameHeader::TaskAssignment { .. } => "task_assignment",
            FrameHeader::TaskResult { .. } => "task_result",
        }
    }

    /// Every string field, for the length check.
    fn strings(&self) -> [Option<&str>; 5] {
        match self {
            FrameHeader::TaskRequest { task_id, task_type, session_id, .. } => {
                [Some(task_id), Some(task_type), *session_id, None, None]
            }
            FrameHeader::TaskAssignment { assignment_id, task_id, task_type, session_id, gamer_id, .. } => {
                [Some(assignment_id), Some(task_id), Some(task_type), *session_id, *gamer_id]
            }
            FrameHeader::TaskResult { task_id, peer_id, .. } => [Some(task_id), *peer_id, None, None, None],
        }
    }
}

/// Why a binary frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The frame is empty.
    #[error("empty binary frame")]
    Empty,
    /// The first byte is not a version this side speaks.
    #[error("binary frame version {0} is not supported; this side speaks version {FRAME_VERSION} ({SUBPROTOCOL})")]
    UnknownVersion(u8),
    /// The header is truncated or malformed.
    #[error("malformed binary frame header: {0}")]
    BadHeader(String),
    /// An id in the header is longer than the protocol allows.
    #[error("an id in the {msg_type} header is longer than {max} bytes", max = limits::MAX_ID_BYTES)]
    IdTooLong {
        /// The frame's message type.
        msg_type: &'static str,
    },
}

impl FrameError {
    /// The protocol error code for this failure.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            FrameError::IdTooLong { .. } => crate::ErrorCode::InvalidMessage,
            _ => crate::ErrorCode::BadFrame,
        }
    }
}

/// Encodes `message` as a binary frame when it is a task message with a binary payload;
/// `None` for every other message (they travel as JSON text frames).
pub fn encode(message: &Message) -> Option<Vec<u8>> {
    let (header, payload) = match message {
        Message::TaskRequest(r) => (
            FrameHeader::TaskRequest {
                task_id: &r.task_id,
                task_type: &r.task_type,
                session_id: r.session_id.as_deref(),
                deadline_ms: r.deadline_ms,
            },
            &r.task_data,
        ),
        Message::TaskAssignment(a) => (
            FrameHeader::TaskAssignment {
                assignment_id: &a.task_id,
                attempt: a.attempt,
                deadline_ms: a.deadline_ms,
                task_id: &a.task_data.task_id,
                task_type: &a.task_data.task_type,
                session_id: a.task_data.session_id.as_deref(),
                gamer_id: a.task_data.gamer_id.as_deref(),
            },
            &a.task_data.task_data,
        ),
        Message::TaskResult(r) => (
            FrameHeader::TaskResult { task_id: &r.task_id, attempt: r.attempt, peer_id: r.peer_id.as_deref() },
            &r.result,
        ),
        _ => return None,
    };
    let Payload::Binary(bytes) = payload else { return None };
    Some(encode_parts(&header, bytes))
}

/// Encodes a header and a binary payload as one frame.
pub fn encode_parts(header: &FrameHeader<'_>, payload: &[u8]) -> Vec<u8> {
    // Headers are a few dozen bytes; one allocation holds the whole frame.
    let mut frame = Vec::with_capacity(1 + 64 + payload.len());
    frame.push(FRAME_VERSION);
    let mut frame = postcard::to_extend(header, frame).expect("writing to a Vec cannot fail");
    frame.extend_from_slice(payload);
    frame
}

/// Decodes a binary frame. The payload is a shared slice of `frame`, not a copy.
pub fn decode(frame: Bytes) -> Result<Message, FrameError> {
    let (&version, rest) = frame.split_first().ok_or(FrameError::Empty)?;
    if version != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(version));
    }
    let (header, payload) =
        postcard::take_from_bytes::<FrameHeader<'_>>(rest).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let msg_type = header.msg_type();
    if header.strings().into_iter().flatten().any(|s| s.len() > limits::MAX_ID_BYTES) {
        return Err(FrameError::IdTooLong { msg_type });
    }
    let payload = Payload::Binary(frame.slice(frame.len() - payload.len()..));
    Ok(match header {
        FrameHeader::TaskRequest { task_id, task_type, session_id, deadline_ms } => Message::TaskRequest(TaskRequest {
            task_id: task_id.to_owned(),
            task_type: task_type.to_owned(),
            task_data: payload,
            session_id: session_id.map(str::to_owned),
            deadline_ms,
        }),
        FrameHeader::TaskAssignment {
            assignment_id,
            attempt,
            deadline_ms,
            task_id,
            task_type,
            session_id,
            gamer_id,
        } => Message::TaskAssignment(TaskAssignment {
            task_id: assignment_id.to_owned(),
            attempt,
            deadline_ms,
            task_data: TaskSpec {
                task_id: task_id.to_owned(),
                task_type: task_type.to_owned(),
                session_id: session_id.map(str::to_owned),
                gamer_id: gamer_id.map(str::to_owned),
                task_data: payload,
            },
        }),
        FrameHeader::TaskResult { task_id, attempt, peer_id } => Message::TaskResult(TaskResult {
            task_id: task_id.to_owned(),
            result: payload,
            attempt,
            peer_id: peer_id.map(str::to_owned),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec, raw_payload};

    fn binary(bytes: &[u8]) -> Payload {
        Payload::binary(bytes.to_vec())
    }

    fn messages() -> Vec<Message> {
        vec![
            Message::TaskRequest(TaskRequest {
                task_id: "p:7".into(),
                task_type: "physics_step".into(),
                task_data: binary(&[0x50, 1, 2, 3]),
                session_id: Some("physics".into()),
                deadline_ms: Some(250),
            }),
            Message::TaskAssignment(TaskAssignment {
                task_id: "98.1".into(),
                attempt: 3,
                deadline_ms: None,
                task_data: TaskSpec {
                    task_id: "p:7".into(),
                    task_type: "physics_step".into(),
                    session_id: None,
                    gamer_id: Some("g".into()),
                    task_data: binary(&[]),
                },
            }),
            Message::TaskResult(TaskResult {
                task_id: "t-1.1".into(),
                result: binary(&[0x51, 1]),
                attempt: Some(1),
                peer_id: None,
            }),
        ]
    }

    #[test]
    fn task_messages_round_trip_and_reencode_identically() {
        for message in messages() {
            let frame = encode(&message).expect("binary payload → binary frame");
            let back = decode(Bytes::from(frame.clone())).unwrap();
            assert_eq!(encode(&back).unwrap(), frame);
            // The JSON rendering (binary payloads base64-wrapped) agrees too.
            assert_eq!(codec::encode(&back), codec::encode(&message));
        }
    }

    #[test]
    fn the_documented_example_frame_is_what_encode_writes() {
        let frame = encode(&messages()[2]).unwrap();
        assert_eq!(frame, [1, 2, 5, b't', b'-', b'1', b'.', b'1', 1, 1, 0, 0x51, 1]);
    }

    #[test]
    fn the_payload_is_a_slice_of_the_frame_not_a_copy() {
        let frame = Bytes::from(encode(&messages()[0]).unwrap());
        let Message::TaskRequest(r) = decode(frame.clone()).unwrap() else { panic!() };
        let Payload::Binary(payload) = r.task_data else { panic!() };
        let range = frame.as_ptr_range();
        assert!(range.contains(&payload.as_ptr()), "payload must point into the frame");
        assert_eq!(payload.as_ref(), &[0x50, 1, 2, 3]);
        // Detached, it is a copy of its own (it no longer keeps the frame alive).
        let Payload::Binary(own) = Payload::Binary(payload).detached() else { panic!() };
        assert!(!range.contains(&own.as_ptr()));
        assert_eq!(own.as_ref(), &[0x50, 1, 2, 3]);
    }

    #[test]
    fn json_payloads_and_other_messages_stay_json() {
        let json = Message::TaskResult(TaskResult {
            task_id: "t".into(),
            result: raw_payload(r#"{"status":"success"}"#.into()).unwrap(),
            attempt: None,
            peer_id: None,
        });
        assert!(encode(&json).is_none());
        assert!(encode(&Message::Stats(crate::StatsRequest {})).is_none());
    }

    #[test]
    fn bad_frames_get_clear_errors() {
        assert_eq!(decode(Bytes::new()).unwrap_err(), FrameError::Empty);
        let err = decode(Bytes::from_static(&[2, 0])).unwrap_err();
        assert_eq!(err, FrameError::UnknownVersion(2));
        assert!(err.to_string().contains("p2c2r.bin.v1"), "{err}");
        assert_eq!(err.code(), crate::ErrorCode::BadFrame);
        let frame = encode(&messages()[1]).unwrap();
        for cut in 1..12 {
            let err = decode(Bytes::copy_from_slice(&frame[..cut])).unwrap_err();
            assert!(matches!(err, FrameError::BadHeader(_)), "cut at {cut}: {err}");
        }
        // Unknown header variant, absurd string length.
        assert!(matches!(decode(Bytes::from_static(&[1, 9])), Err(FrameError::BadHeader(_))));
        let absurd = [1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(decode(Bytes::copy_from_slice(&absurd)), Err(FrameError::BadHeader(_))));
        // Not UTF-8.
        assert!(matches!(decode(Bytes::from_static(&[1, 2, 1, 0xff, 0, 0])), Err(FrameError::BadHeader(_))));
    }

    #[test]
    fn long_ids_are_refused() {
        let long = "x".repeat(limits::MAX_ID_BYTES + 1);
        let frame = encode_parts(&FrameHeader::TaskResult { task_id: &long, attempt: None, peer_id: None }, &[1]);
        let err = decode(Bytes::from(frame)).unwrap_err();
        assert_eq!(err, FrameError::IdTooLong { msg_type: "task_result" });
        assert_eq!(err.code(), crate::ErrorCode::InvalidMessage);
    }

    #[test]
    fn negotiation_reads_offers_and_answers() {
        assert_eq!(Encoding::from_offer(["p2c2r.bin.v1"]), Encoding::Binary);
        assert_eq!(Encoding::from_offer(["chat, p2c2r.bin.v1"]), Encoding::Binary);
        assert_eq!(Encoding::from_offer(["p2c2r.bin.v2"]), Encoding::Json);
        assert_eq!(Encoding::from_offer([]), Encoding::Json);
        assert_eq!(Encoding::from_answer(Some("p2c2r.bin.v1")), Encoding::Binary);
        assert_eq!(Encoding::from_answer(None), Encoding::Json);
    }
}
