//! The P2C2R wire protocol, shared by the coordinator, peers and gamer clients.
//!
//! Every message is one JSON object tagged by `msg_type` (see [`Message`]). The seed
//! messages keep their names and fields; everything P2C2R adds is optional or a new
//! message type, so the seed's Python clients keep working. A connection that negotiates
//! binary frames ([`binary`]) sends task messages with binary payloads as compact binary
//! frames instead. Task payloads travel as [`Payload`]s (JSON text or binary bytes): the
//! coordinator forwards them without parsing them.
//!
//! Physics states travel on a fixed-point lattice ([`quantize`]) and, packed, as compact
//! binary deltas against the session's previous tick ([`packed`]).
//!
//! This crate does no I/O. `PROTOCOL.md` at the repository root documents every message
//! with an example.
//!
//! ```
//! use p2c2r_protocol::{codec, Message, RegisterGamer};
//!
//! let frame = codec::encode(&Message::RegisterGamer(RegisterGamer { gamer_id: "g1".into(), resume_secret: None }));
//! assert_eq!(frame, r#"{"msg_type":"register_gamer","gamer_id":"g1"}"#);
//! assert!(matches!(codec::decode(&frame), Ok(Message::RegisterGamer(_))));
//! ```

pub mod ai;
pub mod binary;
pub mod chunk;
pub mod codec;
pub mod error;
pub mod inspect;
pub mod limits;
pub mod message;
pub mod pacing;
pub mod packed;
pub mod payload;
pub mod physics;
pub mod quantize;
pub mod task;

pub use binary::Encoding;
pub use codec::{CodecError, decode, encode};
pub use error::ErrorCode;
pub use message::*;
pub use payload::Payload;
pub use task::{TaskError, TaskStatus, task_types};

/// Wraps already-serialized JSON text as a [`Payload`], checking that it is valid JSON.
pub fn raw_payload(json: String) -> Result<Payload, serde_json::Error> {
    Payload::from_json_text(json)
}

/// Serializes a value as a JSON [`Payload`].
pub fn to_payload<T: serde::Serialize + ?Sized>(value: &T) -> Result<Payload, serde_json::Error> {
    Payload::to_json(value)
}

/// The JSON `null` payload, used where a message carries no task data.
pub fn null_payload() -> Payload {
    Payload::null()
}
