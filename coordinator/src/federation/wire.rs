//! How coordinators hand each other work over NATS: the subjects, the headers, and a
//! protocol message as a NATS payload (the same frames as on a binary WebSocket
//! connection: a binary frame for a binary payload, JSON text otherwise). Pure.

use async_nats::HeaderMap;
use bytes::Bytes;
use p2c2r_protocol::binary::{self, Frame};
use p2c2r_protocol::{Encoding, Message};

use crate::router::{Decoded, decode_binary, decode_text};

/// Where a session that found no peer on its own coordinator asks for one: coordinators
/// with free peer slots listen in one queue group ([`LENDERS`]), so each request reaches
/// one of them, and none while nobody has room ("no responders").
pub const PLACE: &str = "p2c2r.fleet.place";
/// The queue group of [`PLACE`].
pub const LENDERS: &str = "lenders";

/// Where coordinator `id` takes the ticks of sessions it holds for others.
pub fn work(id: &str) -> String {
    format!("p2c2r.fleet.coord.{id}.work")
}

/// The gamer's alias, as the borrowing coordinator's peers would see it.
pub const GAMER: &str = "P2c2r-Gamer";
/// The borrowing coordinator.
pub const ORIGIN: &str = "P2c2r-Origin";
/// The lending coordinator (on answers): later ticks of the session go to it.
pub const LENDER: &str = "P2c2r-Lender";
/// `binary` or `json`: how the payload is framed.
pub const FRAMING: &str = "P2c2r-Framing";

/// `message` as a NATS payload, and the framing header's value.
pub fn encode(message: &Message) -> (Bytes, &'static str) {
    match binary::encode_for(message, Encoding::Binary) {
        Frame::Binary(bytes) => (Bytes::from(bytes), "binary"),
        Frame::Text(text) => (Bytes::from(text), "json"),
    }
}

/// Decodes a payload framed as its headers say.
pub fn decode(payload: Bytes, headers: Option<&HeaderMap>) -> Decoded {
    let framing = headers.and_then(|h| h.get(FRAMING)).map(|v| v.as_str().to_owned());
    match framing.as_deref() {
        Some("binary") => decode_binary(payload),
        _ => match std::str::from_utf8(&payload) {
            Ok(text) => decode_text(text),
            Err(_) => decode_text("not utf-8"),
        },
    }
}

/// A header's value, if present, at most `max` bytes of letters, digits, `-` and `_`
/// (what aliases and coordinator names are made of).
pub fn header<'a>(headers: Option<&'a HeaderMap>, name: &str, max: usize) -> Option<&'a str> {
    let value = headers?.get(name)?.as_str();
    let ok = !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2c2r_protocol::{Payload, TaskRequest};

    fn request(payload: Payload) -> Message {
        Message::TaskRequest(TaskRequest {
            task_id: "a-1".into(),
            task_type: "physics_step".into(),
            task_data: payload,
            session_id: Some("s".into()),
            deadline_ms: Some(500),
        })
    }

    #[test]
    fn binary_and_json_payloads_cross_as_they_are() {
        for payload in
            [Payload::Binary(Bytes::from_static(&[1, 2, 3])), p2c2r_protocol::raw_payload("{\"n\":1}".into()).unwrap()]
        {
            let (bytes, framing) = encode(&request(payload.clone()));
            let mut headers = HeaderMap::new();
            headers.insert(FRAMING, framing);
            let decoded = decode(bytes, Some(&headers));
            let Some(Message::TaskRequest(back)) = decoded.message() else { panic!("a task request") };
            assert_eq!(back.task_data, payload);
            assert_eq!(back.session_id.as_deref(), Some("s"));
        }
    }

    #[test]
    fn headers_that_could_name_other_subjects_or_flood_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(GAMER, "g-0123abcd");
        headers.insert(ORIGIN, "c1.>");
        assert_eq!(header(Some(&headers), GAMER, 64), Some("g-0123abcd"));
        assert_eq!(header(Some(&headers), ORIGIN, 64), None);
        assert_eq!(header(Some(&headers), GAMER, 4), None);
        assert_eq!(header(None, GAMER, 64), None);
    }
}
