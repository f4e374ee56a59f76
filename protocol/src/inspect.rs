//! What the coordinator reads from payloads it otherwise only forwards: whether a
//! `physics_step` request is a snapshot (a replicated session's log starts there), and a
//! result's status (which answers can be delivered and compared). Reading never fails:
//! a payload that does not say is treated as not a snapshot, and as an error.

use serde::Deserialize;

use crate::Payload;
use crate::packed::{REQUEST_FORMAT, VERSION};

/// Whether a `physics_step` payload (JSON or packed) is a snapshot request.
pub fn is_snapshot_request(payload: &Payload) -> bool {
    #[derive(Deserialize)]
    struct Snapshot {
        #[serde(default)]
        snapshot: bool,
    }
    if let Some(bytes) = payload.binary_bytes() {
        // A packed request starts with its format, version and flags bytes.
        return matches!(bytes.get(..3), Some(&[REQUEST_FORMAT, VERSION, flags]) if flags & 1 != 0);
    }
    payload.json().and_then(|text| serde_json::from_str::<Snapshot>(text).ok()).is_some_and(|s| s.snapshot)
}

/// What a task result says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultKind {
    /// `"status": "success"` (every packed result is one).
    Success,
    /// An error; `resync` when the peer lost (or never had) the session's state.
    Error {
        /// The gamer must send a snapshot before the next tick.
        resync: bool,
        /// The code is `limit_exceeded`: the request asks for more work than the peer's
        /// budgets allow (any peer with the same budgets refuses it alike).
        over_budget: bool,
    },
}

/// Reads a result's status. A JSON result without `"status": "success"` is an error.
pub fn result_kind(payload: &Payload) -> ResultKind {
    #[derive(Deserialize)]
    struct Status<'a> {
        #[serde(default, borrow)]
        status: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        resync: bool,
        #[serde(default, borrow)]
        code: Option<std::borrow::Cow<'a, str>>,
    }
    if payload.is_binary() || payload.binary_bytes().is_some() {
        return ResultKind::Success;
    }
    match payload.json().and_then(|text| serde_json::from_str::<Status<'_>>(text).ok()) {
        Some(Status { status: Some(s), .. }) if s == "success" => ResultKind::Success,
        Some(Status { resync, code, .. }) => ResultKind::Error {
            resync,
            over_budget: code.is_some_and(|c| c == crate::ErrorCode::LimitExceeded.as_str()),
        },
        None => ResultKind::Error { resync: false, over_budget: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::PhysicsStepRequest;

    fn json(text: &str) -> Payload {
        Payload::from_json_text(text.to_owned()).unwrap()
    }

    #[test]
    fn snapshots_are_recognised_in_both_forms() {
        assert!(is_snapshot_request(&json(r#"{"tick":3,"snapshot":true,"dt":0.016}"#)));
        assert!(!is_snapshot_request(&json(r#"{"tick":3,"dt":0.016}"#)));
        assert!(!is_snapshot_request(&json(r#"[1,2]"#)));
        for snapshot in [true, false] {
            let request = PhysicsStepRequest { tick: 9, snapshot, dt: 0.016, steps: 1, ..Default::default() };
            let mut bytes = Vec::new();
            crate::packed::encode_request(&request, &mut bytes);
            assert_eq!(is_snapshot_request(&Payload::binary(bytes)), snapshot);
        }
        assert!(!is_snapshot_request(&Payload::binary(vec![0x50])));
        assert!(!is_snapshot_request(&Payload::binary(vec![0x51, 1, 1])), "another format");
    }

    #[test]
    fn statuses_are_read_and_anything_else_is_an_error() {
        assert_eq!(result_kind(&json(r#"{"status":"success","bodies":[]}"#)), ResultKind::Success);
        assert_eq!(result_kind(&Payload::binary(vec![1, 2, 3])), ResultKind::Success);
        assert_eq!(
            result_kind(&json(r#"{"status":"error","code":"unknown_session","resync":true}"#)),
            ResultKind::Error { resync: true, over_budget: false }
        );
        assert_eq!(
            result_kind(&json(r#"{"status":"error","code":"limit_exceeded","resync":true}"#)),
            ResultKind::Error { resync: true, over_budget: true }
        );
        assert_eq!(result_kind(&json(r#"{"bodies":[]}"#)), ResultKind::Error { resync: false, over_budget: false });
        assert_eq!(result_kind(&json("null")), ResultKind::Error { resync: false, over_budget: false });
    }
}
