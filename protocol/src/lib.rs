//! The P2C2R wire protocol, shared by the coordinator, peers and gamer clients.
//!
//! Every frame is one JSON object tagged by `msg_type` (see [`Message`]). The seed
//! messages keep their names and fields; everything P2C2R adds is optional or a new
//! message type, so the seed's Python clients keep working. Task payloads travel as
//! [`RawPayload`]: the coordinator forwards their bytes without parsing them.
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
pub mod codec;
pub mod error;
pub mod limits;
pub mod message;
pub mod packed;
pub mod physics;
pub mod quantize;
pub mod task;

pub use codec::{CodecError, decode, encode};
pub use error::ErrorCode;
pub use message::*;
pub use task::{TaskError, TaskStatus, task_types};

/// A task payload or result kept as the exact JSON text it arrived as.
///
/// The coordinator routes payloads without looking inside them; only the peer (which runs
/// the task) and the gamer (which reads the result) parse them into typed values.
pub type RawPayload = Box<serde_json::value::RawValue>;

/// Wraps already-serialized JSON text as a [`RawPayload`], checking that it is valid JSON.
pub fn raw_payload(json: String) -> Result<RawPayload, serde_json::Error> {
    serde_json::value::RawValue::from_string(json)
}

/// Serializes a value as a [`RawPayload`].
pub fn to_payload<T: serde::Serialize + ?Sized>(value: &T) -> Result<RawPayload, serde_json::Error> {
    serde_json::value::to_raw_value(value)
}

/// The JSON `null` payload, used where a message carries no task data.
pub fn null_payload() -> RawPayload {
    serde_json::value::RawValue::from_string("null".to_owned()).expect("null is valid JSON")
}
