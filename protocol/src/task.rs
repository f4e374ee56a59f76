//! Task types and the common shape of task results.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// The `task_type` names that P2C2R peers run.
pub mod task_types {
    /// One fixed tick of a physics session ([`crate::physics::PhysicsStepRequest`]).
    pub const PHYSICS_STEP: &str = "physics_step";
    /// Path queries and steering for a batch of agents ([`crate::ai::AiNavigateRequest`]).
    pub const AI_NAVIGATE: &str = "ai_navigate";
    /// A `physics_step` whose answer reports every body of the session (asleep or not)
    /// and, packed, is a keyframe. The coordinator sends it, in place of a
    /// `physics_step`, to every replica of a session whose gamer may hold a wrong state
    /// (after a replica was proven to lie): the full answer corrects the gamer's copy.
    /// Gamers never send it.
    pub const PHYSICS_STEP_FULL: &str = "physics_step_full";
    /// The seed's physics task: `{"num_objects": N}`, answered with a summary.
    pub const SEED_PHYSICS: &str = "physics";
    /// The seed's AI task: `{"model": NAME}`, answered with a summary.
    pub const SEED_AI: &str = "ai";
    /// Every type a P2C2R peer runs.
    pub const ALL: [&str; 5] = [PHYSICS_STEP, PHYSICS_STEP_FULL, AI_NAVIGATE, SEED_PHYSICS, SEED_AI];
}

/// The `status` field every P2C2R task result carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// The task ran; the rest of the result is its output.
    #[default]
    Success,
    /// The task did not run; see [`TaskError`].
    Error,
}

/// A failed task's result: `{"status":"error","code":...,"message":...}`.
///
/// Peers send it when a payload is bad or a session is unknown; the coordinator sends it
/// when it gives up on a task. `resync` tells the gamer to send a full snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// Always [`TaskStatus::Error`].
    pub status: TaskStatus,
    /// What went wrong.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The gamer must send a full snapshot of the session before the next tick.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
    /// The tick the failed request carried, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<u64>,
}

impl TaskError {
    /// A task error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        TaskError { status: TaskStatus::Error, code, message: message.into(), resync: false, tick: None }
    }

    /// Marks the error as needing a full snapshot.
    pub fn with_resync(mut self) -> Self {
        self.resync = true;
        self
    }

    /// Records the tick the failed request carried.
    pub fn with_tick(mut self, tick: u64) -> Self {
        self.tick = Some(tick);
        self
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for TaskError {}

/// Reads the `status` of a result without parsing the rest of it.
pub fn result_status(result: &str) -> Option<TaskStatus> {
    #[derive(Deserialize)]
    struct StatusOnly {
        status: Option<TaskStatus>,
    }
    serde_json::from_str::<StatusOnly>(result).ok().and_then(|s| s.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_error_shape() {
        let e = TaskError::new(ErrorCode::UnknownSession, "no such session").with_resync().with_tick(4);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"status":"error","code":"unknown_session","message":"no such session","resync":true,"tick":4}"#
        );
        assert_eq!(serde_json::from_str::<TaskError>(&json).unwrap(), e);
        assert_eq!(result_status(&json), Some(TaskStatus::Error));
        assert_eq!(result_status(r#"{"status":"success","data":1}"#), Some(TaskStatus::Success));
        assert_eq!(result_status("[]"), None);
    }
}
