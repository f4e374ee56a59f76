//! Error codes carried by `error` messages and by failed task results.

use serde::{Deserialize, Serialize};

/// A machine-readable error code. Serialized in `snake_case`; unknown codes from a newer
/// peer or coordinator decode as [`ErrorCode::Other`] instead of failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, or not a JSON object.
    BadJson,
    /// A binary frame that is malformed (truncated or bad header), of an unknown frame
    /// version, or sent on a connection that did not negotiate binary frames.
    BadFrame,
    /// The frame has no `msg_type`, or one this side does not know.
    UnknownMsgType,
    /// A required field is missing or a field has the wrong type.
    InvalidMessage,
    /// The message is not allowed for this connection's role (peer or gamer).
    WrongRole,
    /// The connection must register before sending this message.
    NotRegistered,
    /// The connection already registered with another id or role.
    AlreadyRegistered,
    /// Another connection registered with this id; this one is being closed.
    Replaced,
    /// The gamer already has a pending task with this `task_id`.
    DuplicateTask,
    /// The gamer's queue is full; the task was not accepted.
    QueueFull,
    /// The gamer has too many sessions with pending tasks.
    SessionLimit,
    /// A `task_result` for a task that is not currently assigned to this peer
    /// (never assigned, already answered, or superseded by a later attempt).
    UnknownTask,
    /// The task was dispatched the maximum number of times without an answer.
    MaxAttemptsExceeded,
    /// No peer that runs the task's type could take it within the queue wait limit.
    QueueTimeout,
    /// The frame exceeds the configured size limit.
    FrameTooLarge,
    /// The coordinator is shutting down.
    ShuttingDown,
    /// The peer does not run this task type.
    UnknownTaskType,
    /// The task payload is malformed or holds values out of range (NaN, negative `dt`, ...).
    InvalidPayload,
    /// The task asks for more than the peer's limits allow (bodies, steps, grid size).
    LimitExceeded,
    /// The peer does not hold this session; the gamer must send a full snapshot.
    UnknownSession,
    /// A tick arrived out of order for its session; the gamer must send a full snapshot.
    OutOfOrder,
    /// The peer failed while running the task.
    Internal,
    /// Every peer that held the task disconnected while running it, `max_attempts` times:
    /// the task is quarantined as poison and not dispatched again.
    PoisonTask,
    /// The connection's credential does not allow this (no credential, wrong role, an id
    /// other than the credential's, or a credential revoked since).
    Unauthorized,
    /// The id is registered by a live connection (or one that may still resume), and this
    /// registration did not prove it is the same client.
    IdInUse,
    /// Over a rate limit (tasks or bytes per second, new sessions, connection attempts);
    /// the request was not accepted. Slow down and retry.
    RateLimited,
    /// The peer missed too many deadlines in a row and is quarantined: no work for its id
    /// for a while (registrations refused).
    Quarantined,
    /// Strict replication: the replicas of the session did not agree on this tick (or too
    /// few answered), so no answer is delivered; the result asks for a resync.
    Unverified,
    /// The request names a cached shape (`Shape::Cached`) the peer does not hold: send
    /// the snapshot again with the shape itself (the error asks for a resync).
    MissingShape,
    /// A federated coordinator could not confirm a registration with the rest of its fleet
    /// in time (the fleet's shared store is unreachable): nothing was registered; retry,
    /// here or on another coordinator.
    Unavailable,
    /// A code this build does not know.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownMsgType => "unknown_msg_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::WrongRole => "wrong_role",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::AlreadyRegistered => "already_registered",
            ErrorCode::Replaced => "replaced",
            ErrorCode::DuplicateTask => "duplicate_task",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::SessionLimit => "session_limit",
            ErrorCode::UnknownTask => "unknown_task",
            ErrorCode::MaxAttemptsExceeded => "max_attempts_exceeded",
            ErrorCode::QueueTimeout => "queue_timeout",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::UnknownTaskType => "unknown_task_type",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::Internal => "internal",
            ErrorCode::PoisonTask => "poison_task",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::IdInUse => "id_in_use",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Quarantined => "quarantined",
            ErrorCode::Unverified => "unverified",
            ErrorCode::MissingShape => "missing_shape",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_matches_as_str() {
        for code in [
            ErrorCode::BadJson,
            ErrorCode::BadFrame,
            ErrorCode::UnknownMsgType,
            ErrorCode::InvalidMessage,
            ErrorCode::WrongRole,
            ErrorCode::NotRegistered,
            ErrorCode::AlreadyRegistered,
            ErrorCode::Replaced,
            ErrorCode::DuplicateTask,
            ErrorCode::QueueFull,
            ErrorCode::SessionLimit,
            ErrorCode::UnknownTask,
            ErrorCode::MaxAttemptsExceeded,
            ErrorCode::QueueTimeout,
            ErrorCode::FrameTooLarge,
            ErrorCode::ShuttingDown,
            ErrorCode::UnknownTaskType,
            ErrorCode::InvalidPayload,
            ErrorCode::LimitExceeded,
            ErrorCode::UnknownSession,
            ErrorCode::OutOfOrder,
            ErrorCode::Internal,
            ErrorCode::PoisonTask,
            ErrorCode::Unauthorized,
            ErrorCode::IdInUse,
            ErrorCode::RateLimited,
            ErrorCode::Quarantined,
            ErrorCode::Unverified,
            ErrorCode::MissingShape,
            ErrorCode::Unavailable,
            ErrorCode::Other,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn unknown_code_decodes_as_other() {
        assert_eq!(serde_json::from_str::<ErrorCode>("\"from_the_future\"").unwrap(), ErrorCode::Other);
    }
}
