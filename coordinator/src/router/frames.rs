//! What the router checks without its state: decoding a frame (with a task result's
//! status, which may mean parsing a large payload), ids from the network, and whether a
//! binary payload can travel to a JSON connection.

use p2c2r_protocol::{ErrorCode, Message, Payload, codec, inspect::ResultKind, limits};

/// Bytes a task frame takes beyond its payload, at most (ids of at most 256 bytes each,
/// field names, numbers).
pub(super) const FRAME_ENVELOPE_BYTES: usize = 2048;

/// A frame decoded without the router's state: the message (or why it is refused), for a
/// task result its status, and for a physics tick whether it is a snapshot (what a
/// replicated session's replicas start from): read here because either may mean parsing
/// a large payload.
#[derive(Debug)]
pub struct Decoded {
    pub(super) message: Result<Message, (ErrorCode, String, Option<String>)>,
    pub(super) kind: Option<ResultKind>,
    pub(super) snapshot: bool,
}

impl Decoded {
    /// The message, when the frame decoded.
    pub fn message(&self) -> Option<&Message> {
        self.message.as_ref().ok()
    }

    /// A well-formed registration: what it registers as (its id valid) and the resume
    /// secret it presents. What the federation claims before the router binds it.
    pub fn registration(&self) -> Option<(crate::ids::Kind, &str, Option<&str>)> {
        let (kind, field, id, secret) = match &self.message {
            Ok(Message::RegisterGamer(m)) => (crate::ids::Kind::Gamer, "gamer_id", &m.gamer_id, &m.resume_secret),
            Ok(Message::RegisterPeer(m)) => (crate::ids::Kind::Peer, "peer_id", &m.peer_id, &m.resume_secret),
            _ => return None,
        };
        check_id(field, id).ok()?;
        Some((kind, id.as_str(), secret.as_deref()))
    }
}

impl From<Result<Message, (ErrorCode, String, Option<String>)>> for Decoded {
    fn from(message: Result<Message, (ErrorCode, String, Option<String>)>) -> Self {
        let (kind, snapshot) = match &message {
            Ok(Message::TaskResult(m)) => (Some(p2c2r_protocol::inspect::result_kind(&m.result)), false),
            Ok(Message::TaskRequest(m)) if m.task_type == p2c2r_protocol::task_types::PHYSICS_STEP => {
                (None, p2c2r_protocol::inspect::is_snapshot_request(&m.task_data))
            }
            _ => (None, false),
        };
        Decoded { message, kind, snapshot }
    }
}

/// Decodes a text frame (JSON) with no lock held: pure CPU, so the connection can run it
/// off the runtime's threads when the frame is large.
pub fn decode_text(frame: &str) -> Decoded {
    Decoded::from(codec::decode(frame).map_err(|e| (e.code(), e.to_string(), e.refers_to())))
}

/// Decodes a binary frame with no lock held. Its payload is never parsed or re-encoded:
/// it is copied once into a buffer of its own size (as a slice of the connection's read
/// buffer it would keep that whole buffer alive while queued: a few bytes of task could
/// hold megabytes), then shared by the scheduler and every frame that carries it.
pub fn decode_binary(frame: bytes::Bytes) -> Decoded {
    Decoded::from(
        p2c2r_protocol::binary::decode(frame).map(detach_payload).map_err(|e| (e.code(), e.to_string(), None)),
    )
}

/// The message with its task payload in a buffer of its own ([`Payload::detached`]).
fn detach_payload(message: Message) -> Message {
    match message {
        Message::TaskRequest(mut r) => {
            r.task_data = r.task_data.detached();
            Message::TaskRequest(r)
        }
        Message::TaskResult(mut r) => {
            r.result = r.result.detached();
            Message::TaskResult(r)
        }
        Message::TaskAssignment(mut a) => {
            a.task_data.task_data = a.task_data.task_data.detached();
            Message::TaskAssignment(a)
        }
        other => other,
    }
}

/// Why a binary payload cannot travel to a JSON connection with frames of at most `max`
/// bytes (base64 makes it a third larger, and a frame over the limit would cost that
/// connection), if it cannot.
pub(super) fn too_large_for_json(payload: &Payload, max: usize) -> Option<String> {
    let wrapped = payload.json_len().saturating_add(FRAME_ENVELOPE_BYTES);
    (payload.is_binary() && wrapped > max).then(|| {
        format!(
            "a binary payload of {} bytes takes {wrapped} bytes base64-wrapped for a JSON connection, more than the {max}-byte frame limit; at most {} bytes",
            payload.len(),
            max_binary_for_json(max)
        )
    })
}

/// The largest binary payload that fits a JSON frame of `max` bytes base64-wrapped
/// (`{"p2c2r_binary":"…"}`, see [`Payload::json_len`]) with the envelope.
fn max_binary_for_json(max: usize) -> usize {
    let wrapper = r#"{"p2c2r_binary":""}"#.len();
    max.saturating_sub(FRAME_ENVELOPE_BYTES + wrapper) / 4 * 3
}

/// Checks an id from the network: not empty, bounded, no control characters (so the
/// coordinator's own ids cannot be forged with them).
pub(super) fn check_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{field} must not be empty"))
    } else if value.len() > limits::MAX_ID_BYTES {
        Err(format!("{field} is longer than {} bytes", limits::MAX_ID_BYTES))
    } else if value.chars().any(char::is_control) {
        Err(format!("{field} must not contain control characters"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_binary_payload_named_for_json_connections_fits_and_one_more_byte_does_not() {
        for max in [4096, 65_536, 16 * 1024 * 1024 + 7] {
            let at_most = max_binary_for_json(max);
            let fits = |n: usize| Payload::binary(vec![0u8; n]).json_len() + FRAME_ENVELOPE_BYTES <= max;
            assert!(fits(at_most), "{max}: {at_most} must fit");
            assert!(!fits(at_most + 3), "{max}: the next base64 group must not");
        }
    }

    #[test]
    fn ids_from_the_network_are_bounded_and_hold_no_control_characters() {
        assert!(check_id("task_id", "t1").is_ok());
        assert!(check_id("task_id", "").unwrap_err().contains("empty"));
        assert!(check_id("task_id", &"x".repeat(limits::MAX_ID_BYTES + 1)).unwrap_err().contains("longer"));
        assert!(check_id("task_id", "t\u{0}1").unwrap_err().contains("control"));
    }
}
