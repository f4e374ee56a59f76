//! Task payloads and results as they travel: JSON text or binary bytes.
//!
//! The coordinator routes payloads without looking inside them; only the peer (which runs
//! the task) and the gamer (which reads the result) parse them. A [`Payload`] is cheap to
//! clone (a reference count), so the scheduler keeps one for re-dispatch while frames
//! carrying it wait in connection queues.
//!
//! A binary payload (e.g. a [`crate::packed`] physics tick) travels in a binary frame
//! ([`crate::binary`]) to a connection that negotiated binary frames. To a JSON
//! connection it travels as the JSON object `{"p2c2r_binary":"<base64>"}` in the same
//! field, which [`Payload::binary_bytes`] turns back into the bytes: so a JSON peer can
//! serve a binary gamer and the reverse, through one coordinator that never re-encodes a
//! payload (the base64 wrapping is its one transformation).

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The key of the JSON object that carries a binary payload on a JSON connection.
pub const BINARY_IN_JSON_KEY: &str = "p2c2r_binary";

/// A task's input or a task's result.
#[derive(Clone, Debug)]
pub enum Payload {
    /// JSON text, checked to be valid JSON when it was decoded or built.
    Json(Arc<RawValue>),
    /// Bytes in a binary encoding the task type defines (e.g. [`crate::packed`]).
    Binary(Bytes),
}

impl Payload {
    /// Wraps already-serialized JSON text, checking that it is valid JSON.
    pub fn from_json_text(json: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json).map(|raw| Payload::Json(Arc::from(raw)))
    }

    /// Serializes a value as a JSON payload.
    pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(|raw| Payload::Json(Arc::from(raw)))
    }

    /// The JSON `null` payload, used where a message carries no task data.
    pub fn null() -> Self {
        Payload::Json(Arc::from(RawValue::NULL.to_owned()))
    }

    /// A binary payload.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Payload::Binary(bytes.into())
    }

    /// The same payload in a buffer of its own size. A binary payload decoded from a
    /// frame is a slice of the buffer the frame was read into, which it keeps alive whole:
    /// a receiver that holds payloads for long (the coordinator's queues) detaches them, so
    /// a few bytes of payload can never hold a large read buffer.
    pub fn detached(self) -> Self {
        match self {
            Payload::Binary(bytes) => Payload::Binary(Bytes::copy_from_slice(&bytes)),
            json => json,
        }
    }

    /// The JSON text of a JSON payload (`None` for a binary one).
    pub fn json(&self) -> Option<&str> {
        match self {
            Payload::Json(raw) => Some(raw.get()),
            Payload::Binary(_) => None,
        }
    }

    /// Whether this is a binary payload.
    pub fn is_binary(&self) -> bool {
        matches!(self, Payload::Binary(_))
    }

    /// The payload's size in bytes as it travels (the JSON text, or the binary bytes).
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(raw) => raw.get().len(),
            Payload::Binary(bytes) => bytes.len(),
        }
    }

    /// The payload's size in bytes on a JSON connection: a binary payload grows by a third
    /// there (base64) and gains its wrapper. What decides whether a frame carrying it fits
    /// the frame limit everywhere it may go.
    pub fn json_len(&self) -> usize {
        match self {
            Payload::Json(raw) => raw.get().len(),
            Payload::Binary(bytes) => {
                r#"{"p2c2r_binary":""}"#.len() + base64::encoded_len(bytes.len(), true).unwrap_or(usize::MAX)
            }
        }
    }

    /// Whether the payload has no bytes at all (never true of JSON).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of a binary payload: its own bytes, or the bytes a JSON connection
    /// carried as `{"p2c2r_binary":"<base64>"}`. `None` for any other JSON payload, and for
    /// a wrapper whose base64 is invalid.
    pub fn binary_bytes(&self) -> Option<Cow<'_, [u8]>> {
        match self {
            Payload::Binary(bytes) => Some(Cow::Borrowed(bytes.as_ref())),
            Payload::Json(raw) => {
                let text = raw.get();
                // Constant-time test first (a JSON physics payload can be megabytes): only
                // an object whose first key is the wrapper's is parsed.
                let first_key = text.trim_start().strip_prefix('{')?.trim_start();
                if !first_key.strip_prefix('"')?.starts_with(BINARY_IN_JSON_KEY) {
                    return None;
                }
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Wrapper<'a> {
                    #[serde(borrow)]
                    p2c2r_binary: Cow<'a, str>,
                }
                let wrapper: Wrapper<'_> = serde_json::from_str(text).ok()?;
                base64::engine::general_purpose::STANDARD.decode(wrapper.p2c2r_binary.as_bytes()).ok().map(Cow::Owned)
            }
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::null()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Json(a), Payload::Json(b)) => a.get() == b.get(),
            (Payload::Binary(a), Payload::Binary(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Json(raw) => raw.serialize(serializer),
            Payload::Binary(bytes) => {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(BINARY_IN_JSON_KEY, &base64::engine::general_purpose::STANDARD.encode(bytes))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(|raw| Payload::Json(Arc::from(raw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_payload_survives_a_json_connection() {
        let bytes: Vec<u8> = (0..=255).collect();
        let payload = Payload::binary(bytes.clone());
        let json = serde_json::to_string(&payload).unwrap();
        assert!(json.starts_with(r#"{"p2c2r_binary":""#), "{json}");
        let back: Payload = serde_json::from_str(&json).unwrap();
        assert!(!back.is_binary());
        assert_eq!(back.binary_bytes().unwrap().as_ref(), &bytes[..]);
        // Another JSON writer's spacing is fine too.
        let spaced = Payload::from_json_text(r#" { "p2c2r_binary" : "AQI=" } "#.into()).unwrap();
        assert_eq!(spaced.binary_bytes().unwrap().as_ref(), &[1, 2]);
    }

    #[test]
    fn ordinary_json_is_not_mistaken_for_binary() {
        for text in [
            r#"{"tick":1}"#,
            "null",
            r#"{"p2c2r_binary":"!!"}"#,
            r#"{"p2c2r_binary":"AA==","x":1}"#,
            r#""p2c2r_binary""#,
        ] {
            let payload = Payload::from_json_text(text.into()).unwrap();
            assert!(payload.binary_bytes().is_none(), "{text}");
            assert_eq!(payload.json(), Some(text));
        }
    }

    #[test]
    fn sizes_and_equality() {
        let binary = Payload::binary(vec![7u8; 1000]);
        assert_eq!(binary.json_len(), serde_json::to_string(&binary).unwrap().len());
        assert_eq!(Payload::null().json_len(), 4);
        assert_eq!(Payload::null().len(), 4);
        assert_eq!(Payload::binary(vec![1, 2, 3]).len(), 3);
        assert_eq!(Payload::to_json(&[1, 2]).unwrap(), Payload::from_json_text("[1,2]".into()).unwrap());
        assert_ne!(Payload::binary(vec![1]), Payload::from_json_text("1".into()).unwrap());
    }
}
