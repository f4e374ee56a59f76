//! The `task_result` errors the coordinator writes itself, for tasks no peer's answer
//! will reach the gamer for: given up, lost while the gamer was away, or refused by a
//! replicated session's verdict.

use p2c2r_protocol::{ErrorCode, Message, TaskError, TaskResult, to_payload};
use tracing::debug;

use crate::outbound::{Outbound, OutboundTx};
use crate::scheduler::{FailReason, Failure};

/// Sends each gamer the `task_result` error for a task that was given up, exempt from the
/// outbound bounds (these answers are bounded by the gamer's pending tasks). Needs no lock.
pub(super) fn send_answers(answers: Vec<(OutboundTx, Failure)>) {
    for (tx, failure) in answers {
        let _ = tx.send_exempt(Outbound::message(failure_message(failure)));
    }
}

/// The `task_result` error for a task whose result arrived while its gamer was away and
/// could not be kept.
pub(super) fn lost_result(task_id: String) -> Message {
    let error = TaskError::new(
        ErrorCode::LimitExceeded,
        format!("the result of task {task_id:?} arrived while you were away and did not fit the bytes kept for you"),
    );
    let result = to_payload(&error).expect("TaskError serializes");
    Message::TaskResult(TaskResult { task_id, result, attempt: None, peer_id: None })
}

/// The `task_result` error that tells a gamer its task was given up.
pub(super) fn failure_message(Failure { gamer, task_id, attempts, reason, .. }: Failure) -> Message {
    debug!(gamer_id = gamer, %task_id, attempts, ?reason, "task given up");
    // The gamer's own id: the copy it was, if a replica's, is the coordinator's business.
    let task_id = task_id.id;
    let error = match reason {
        FailReason::MaxAttempts => TaskError::new(
            ErrorCode::MaxAttemptsExceeded,
            format!("no peer answered task {task_id:?} in {attempts} attempts"),
        ),
        FailReason::QueueTimeout => TaskError::new(
            ErrorCode::QueueTimeout,
            format!("no peer that runs this task type could take task {task_id:?} within the queue wait limit"),
        ),
        FailReason::Poison => TaskError::new(
            ErrorCode::PoisonTask,
            format!(
                "task {task_id:?} was quarantined: the peer running it disconnected on each of {attempts} attempts"
            ),
        ),
    };
    let result = to_payload(&error).expect("TaskError serializes");
    Message::TaskResult(TaskResult { task_id, result, attempt: Some(attempts), peer_id: None })
}

/// A `task_result` error the coordinator answers a replicated tick with (resync).
pub(super) fn replica_error(task_id: &str, code: ErrorCode, message: &str) -> Message {
    let error = TaskError::new(code, message).with_resync();
    let result = to_payload(&error).expect("TaskError serializes");
    Message::TaskResult(TaskResult { task_id: task_id.to_owned(), result, attempt: None, peer_id: None })
}
