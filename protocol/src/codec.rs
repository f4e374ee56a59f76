//! Turning frames into [`Message`]s and back.
//!
//! Decoding reads `msg_type` first and then parses only the matching struct, so that the
//! error for a bad frame says exactly what is wrong (not JSON, unknown type, or a bad
//! field), and so that task payloads stay raw JSON text that is forwarded, not rebuilt.

use std::borrow::Cow;

use serde::Deserialize;

use crate::{ErrorCode, Message};

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Not JSON, or not a JSON object.
    #[error("frame is not a JSON object: {0}")]
    BadJson(String),
    /// No `msg_type`, or an unknown one.
    #[error("unknown msg_type {0:?}")]
    UnknownMsgType(String),
    /// `msg_type` is known but the fields do not match it.
    #[error("invalid {msg_type}: {reason}")]
    InvalidMessage {
        /// The frame's `msg_type`.
        msg_type: &'static str,
        /// What serde reported.
        reason: String,
    },
}

impl CodecError {
    /// The protocol error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::BadJson(_) => ErrorCode::BadJson,
            CodecError::UnknownMsgType(_) => ErrorCode::UnknownMsgType,
            CodecError::InvalidMessage { .. } => ErrorCode::InvalidMessage,
        }
    }

    /// The `msg_type` the error refers to, when it is known.
    pub fn refers_to(&self) -> Option<String> {
        match self {
            CodecError::BadJson(_) => None,
            CodecError::UnknownMsgType(t) => Some(t.clone()),
            CodecError::InvalidMessage { msg_type, .. } => Some((*msg_type).to_owned()),
        }
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow, default)]
    msg_type: Option<Cow<'a, str>>,
}

/// Decodes one text frame.
pub fn decode(frame: &str) -> Result<Message, CodecError> {
    let header: Header<'_> = serde_json::from_str(frame).map_err(|e| CodecError::BadJson(e.to_string()))?;
    let Some(msg_type) = header.msg_type else {
        return Err(CodecError::UnknownMsgType(String::new()));
    };
    fn body<'a, T: Deserialize<'a>>(frame: &'a str, msg_type: &'static str) -> Result<T, CodecError> {
        serde_json::from_str(frame).map_err(|e| CodecError::InvalidMessage { msg_type, reason: e.to_string() })
    }
    Ok(match msg_type.as_ref() {
        "register_peer" => Message::RegisterPeer(body(frame, "register_peer")?),
        "register_gamer" => Message::RegisterGamer(body(frame, "register_gamer")?),
        "registration_ack" => Message::RegistrationAck(body(frame, "registration_ack")?),
        "heartbeat" => Message::Heartbeat(body(frame, "heartbeat")?),
        "task_request" => Message::TaskRequest(body(frame, "task_request")?),
        "task_assignment" => Message::TaskAssignment(body(frame, "task_assignment")?),
        "task_result" => Message::TaskResult(body(frame, "task_result")?),
        "error" => Message::Error(body(frame, "error")?),
        "stats" => Message::Stats(body(frame, "stats")?),
        "stats_report" => Message::StatsReport(body(frame, "stats_report")?),
        "session_status" => Message::SessionStatus(body(frame, "session_status")?),
        other => return Err(CodecError::UnknownMsgType(truncate(other, 64))),
    })
}

/// Encodes one message as a text frame.
pub fn encode(message: &Message) -> String {
    // Serializing these types cannot fail: every map key is a string and every payload
    // is already valid JSON.
    serde_json::to_string(message).expect("protocol messages always serialize")
}

/// Encodes a borrowed `task_assignment` (same bytes as the owned message).
pub fn encode_assignment(assignment: &crate::TaskAssignmentRef<'_>) -> String {
    serde_json::to_string(assignment).expect("protocol messages always serialize")
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn borrowed_assignment_encodes_like_the_owned_one() {
        let payload = raw_payload(r#"{"tick":3,"add":[1,2]}"#.into()).unwrap();
        for (session, gamer, deadline) in [(Some("s"), Some("g"), Some(50)), (None, None, None)] {
            let owned = Message::TaskAssignment(TaskAssignment {
                task_id: "7.2".into(),
                attempt: 2,
                deadline_ms: deadline,
                task_data: TaskSpec {
                    task_id: "t".into(),
                    task_type: "physics_step".into(),
                    session_id: session.map(str::to_owned),
                    gamer_id: gamer.map(str::to_owned),
                    task_data: payload.clone(),
                },
            });
            let borrowed = TaskAssignmentRef {
                task_id: "7.2",
                attempt: 2,
                deadline_ms: deadline,
                task_data: TaskSpecRef {
                    task_id: "t",
                    task_type: "physics_step",
                    session_id: session,
                    gamer_id: gamer,
                    task_data: &payload,
                },
            };
            assert_eq!(encode_assignment(&borrowed), encode(&owned));
        }
    }

    fn round_trip(message: Message) -> Message {
        let frame = encode(&message);
        let back = decode(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        assert_eq!(encode(&back), frame, "re-encoding changed the frame");
        back
    }

    fn payload(json: &str) -> Payload {
        raw_payload(json.to_owned()).unwrap()
    }

    #[test]
    fn register_peer_round_trips() {
        let m = round_trip(Message::RegisterPeer(RegisterPeer {
            peer_id: "p1".into(),
            capabilities: Capabilities {
                cpu_cores: Some(8),
                ram_gb: Some(15.5),
                gpu: Some(Gpu::Name("H200".into())),
                task_types: Some(vec!["physics_step".into()]),
                max_concurrent_tasks: Some(4),
                determinism: Some(crate::Determinism {
                    engine: "rapier3d 0.36.1".into(),
                    features: vec!["enhanced-determinism".into()],
                    sim: "p2c2r_sim 0.1.0".into(),
                    arch: "x86_64".into(),
                }),
                chunked_frames: true,
            },
            resume_secret: Some("abc".into()),
        }));
        let Message::RegisterPeer(p) = m else { panic!() };
        assert_eq!(p.capabilities.max_concurrent_tasks, Some(4));
    }

    #[test]
    fn register_gamer_round_trips() {
        round_trip(Message::RegisterGamer(RegisterGamer { gamer_id: "g".into(), resume_secret: None }));
    }

    #[test]
    fn registration_ack_round_trips() {
        round_trip(Message::RegistrationAck(RegistrationAck {
            peer_id: Some("p".into()),
            gamer_id: None,
            status: "registered".into(),
            heartbeat_interval_ms: Some(1000),
            max_frame_bytes: Some(10),
            resume_secret: Some("s3cret".into()),
            chunked_frames: true,
        }));
    }

    #[test]
    fn heartbeat_round_trips() {
        round_trip(Message::Heartbeat(Heartbeat { peer_id: Some("p".into()), gamer_id: None }));
    }

    #[test]
    fn task_request_round_trips_with_payload_bytes_intact() {
        let m = round_trip(Message::TaskRequest(TaskRequest {
            task_id: "t".into(),
            task_type: "physics".into(),
            task_data: payload(r#"{"num_objects": 50, "x":[1.5e3 ,2]}"#),
            session_id: Some("s".into()),
            deadline_ms: Some(100),
        }));
        let Message::TaskRequest(r) = m else { panic!() };
        assert_eq!(r.task_data.json().unwrap(), r#"{"num_objects": 50, "x":[1.5e3 ,2]}"#);
    }

    #[test]
    fn task_assignment_round_trips() {
        round_trip(Message::TaskAssignment(TaskAssignment {
            task_id: "7:1".into(),
            attempt: 1,
            deadline_ms: Some(2000),
            task_data: TaskSpec {
                task_id: "t".into(),
                task_type: "ai".into(),
                session_id: None,
                gamer_id: None,
                task_data: payload("{}"),
            },
        }));
    }

    #[test]
    fn task_result_round_trips() {
        round_trip(Message::TaskResult(TaskResult {
            task_id: "t".into(),
            result: payload(r#"{"status":"success","data":"processed"}"#),
            attempt: Some(2),
            peer_id: Some("p".into()),
        }));
    }

    #[test]
    fn error_round_trips() {
        round_trip(Message::error(ErrorCode::WrongRole, "peers cannot submit", Some("task_request".into())));
    }

    #[test]
    fn stats_round_trip() {
        round_trip(Message::Stats(StatsRequest {}));
        round_trip(Message::StatsReport(StatsReport { peers: 3, tasks_completed: 9, ..Default::default() }));
    }

    #[test]
    fn session_status_round_trip() {
        round_trip(Message::SessionStatus(SessionStatus {
            session_id: "physics".into(),
            replicas_wanted: 2,
            replicas_live: 1,
            audited: false,
            strict: true,
            disagreements: 3,
            corrections: 1,
        }));
    }

    #[test]
    fn seed_frames_decode() {
        let frames = [
            r#"{"msg_type": "register_peer", "peer_id": "test_peer_1", "capabilities": {"cpu_cores": 4, "ram_gb": 8}}"#,
            r#"{"msg_type": "register_peer", "peer_id": "peer_1", "capabilities": {"cpu_cores": 2, "ram_gb": 23.47, "gpu": false}}"#,
            r#"{"msg_type": "register_gamer", "gamer_id": "test_gamer_1"}"#,
            r#"{"msg_type": "heartbeat", "peer_id": "peer_1"}"#,
            r#"{"msg_type": "task_request", "task_id": "5d6c", "task_type": "physics", "data": {"objects": []}}"#,
            r#"{"msg_type": "task_request", "task_id": "5d6c", "task_type": "physics", "task_data": {"num_objects": 50}}"#,
            r#"{"msg_type": "task_result", "task_id": "3:1", "result": {"status": "success", "data": "processed"}}"#,
        ];
        for frame in frames {
            decode(frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
        }
        let Ok(Message::TaskRequest(r)) = decode(frames[4]) else { panic!() };
        assert_eq!(r.task_data.json().unwrap(), r#"{"objects": []}"#);
    }

    #[test]
    fn assignment_keeps_task_type_inside_task_data_for_seed_peers() {
        let frame = encode(&Message::TaskAssignment(TaskAssignment {
            task_id: "1:1".into(),
            attempt: 1,
            deadline_ms: None,
            task_data: TaskSpec {
                task_id: "t".into(),
                task_type: "physics".into(),
                session_id: None,
                gamer_id: None,
                task_data: payload(r#"{"num_objects":50}"#),
            },
        }));
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["task_data"]["task_type"], "physics");
        assert_eq!(v["task_data"]["task_data"]["num_objects"], 50);
    }

    #[test]
    fn bad_frames_get_precise_errors() {
        assert_eq!(decode("not json").unwrap_err().code(), ErrorCode::BadJson);
        assert_eq!(decode("[1,2]").unwrap_err().code(), ErrorCode::BadJson);
        assert_eq!(decode("42").unwrap_err().code(), ErrorCode::BadJson);
        assert_eq!(decode(r#"{"peer_id":"x"}"#).unwrap_err().code(), ErrorCode::UnknownMsgType);
        assert_eq!(decode(r#"{"msg_type":"dance"}"#).unwrap_err(), CodecError::UnknownMsgType("dance".into()));
        assert_eq!(decode(r#"{"msg_type":7}"#).unwrap_err().code(), ErrorCode::BadJson);
        let missing = decode(r#"{"msg_type":"task_request","task_type":"physics"}"#).unwrap_err();
        assert_eq!(missing.code(), ErrorCode::InvalidMessage);
        assert!(missing.to_string().contains("task_id"), "{missing}");
        assert_eq!(
            decode(r#"{"msg_type":"register_peer","peer_id":5}"#).unwrap_err().code(),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(decode(&deep).unwrap_err().code(), ErrorCode::BadJson);
        let deep_field = format!(
            r#"{{"msg_type":"register_peer","peer_id":"p","capabilities":{{"gpu":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(decode(&deep_field).is_err());
        // Deep payloads are forwarded untouched; the peer parses them with a depth limit.
        let deep_payload = format!(
            r#"{{"msg_type":"task_request","task_id":"t","task_type":"x","task_data":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(decode(&deep_payload).is_ok());
    }

    #[test]
    fn long_unknown_msg_type_is_truncated_in_the_error() {
        let frame = format!(r#"{{"msg_type":"{}"}}"#, "x".repeat(10_000));
        let CodecError::UnknownMsgType(t) = decode(&frame).unwrap_err() else { panic!() };
        assert!(t.len() < 100);
    }
}
