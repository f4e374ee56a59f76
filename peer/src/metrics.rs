//! What a peer's `GET /metrics` reports (`--metrics-listen`), in the Prometheus text
//! format (through `prometheus-client`), with the same conventions as the coordinator's:
//! every name has the `p2c2r_peer_` prefix, counters end in `_total`, durations are in
//! seconds.
//!
//! Two kinds of metric, so that every number has one source:
//! - **Instruments** ([`Metrics`]) record tasks as they end: how many, by type and
//!   [`TaskOutcome`], and how long they ran.
//! - **State** is read at scrape time from where it already lives: the sessions held,
//!   the tasks waiting or running, the connection to the coordinator, the worker
//!   processes lost.
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `p2c2r_peer_tasks_total` | counter | `task_type`, `outcome` | tasks ended, by type and [`TaskOutcome`] |
//! | `p2c2r_peer_task_duration_seconds` | histogram | `task_type` | time a task ran (not its wait) |
//! | `p2c2r_peer_queue_length` | gauge | | tasks received and not yet finished (waiting or running) |
//! | `p2c2r_peer_tasks_running` | gauge | | of those, the tasks running now |
//! | `p2c2r_peer_sessions` | gauge | | sessions held now |
//! | `p2c2r_peer_connected` | gauge | | 1 while registered with the coordinator, else 0 |
//! | `p2c2r_peer_registrations_total` | counter | | registrations with the coordinator (the first and every reconnection) |
//! | `p2c2r_peer_workers_lost_total` | counter | | worker processes that died or were killed (always 0 in process) |
//!
//! Task types come from the network, so the `task_type` label is bounded: the five types
//! this peer runs ([`task_types::ALL`]) keep their name, anything else is `other`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use p2c2r_protocol::task_types;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::PeerStatus;
use crate::session::SessionStore;
use crate::worker::Workers;

/// The metric name prefix.
pub const PREFIX: &str = "p2c2r_peer";

/// The `task_type` label of task types this peer does not run.
pub const OTHER_TASK_TYPE: &str = "other";

/// The `task_type` label for a task type: its name for the types this peer runs
/// ([`task_types::ALL`]), [`OTHER_TASK_TYPE`] for anything else (task types come from
/// the network, and every label value is a time series).
pub fn task_type_label(task_type: &str) -> &'static str {
    task_types::ALL.into_iter().find(|&known| known == task_type).unwrap_or(OTHER_TASK_TYPE)
}

/// How a task ended: the `outcome` label of `p2c2r_peer_tasks_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskOutcome {
    /// `ok`: answered with a success result.
    Ok,
    /// `error`: answered with an error other than `limit_exceeded` (malformed payload,
    /// unknown session or task type, out-of-order tick, a failure inside the peer).
    Error,
    /// `refused`: answered `limit_exceeded`: over a work or memory budget, no room for
    /// its session, a result larger than the coordinator accepts, its worker died
    /// exhausting memory or CPU, or its gamer is contained for killing workers.
    Refused,
    /// `queue_full`: answered `queue_full` on arrival, without queuing: too many tasks
    /// were waiting.
    QueueFull,
    /// `dropped`: never answered: its deadline passed before it ran or while it ran (its
    /// worker was killed), or its connection to the coordinator closed. The coordinator
    /// re-dispatches it.
    Dropped,
}

impl TaskOutcome {
    /// Every outcome, in label order.
    pub const ALL: [TaskOutcome; 5] =
        [TaskOutcome::Ok, TaskOutcome::Error, TaskOutcome::Refused, TaskOutcome::QueueFull, TaskOutcome::Dropped];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Ok => "ok",
            TaskOutcome::Error => "error",
            TaskOutcome::Refused => "refused",
            TaskOutcome::QueueFull => "queue_full",
            TaskOutcome::Dropped => "dropped",
        }
    }

    /// The outcome of answering with `result`: a binary result is a success (failures
    /// are always JSON).
    pub fn of_payload(result: &p2c2r_protocol::Payload) -> TaskOutcome {
        result.json().map_or(TaskOutcome::Ok, Self::of_result)
    }

    /// The outcome of answering with `result` (a task's result JSON, as this crate
    /// serializes it: `status` first, then an error's `code`).
    pub fn of_result(result: &str) -> TaskOutcome {
        if result.starts_with(r#"{"status":"success""#) {
            TaskOutcome::Ok
        } else if result.starts_with(r#"{"status":"error","code":"limit_exceeded""#) {
            TaskOutcome::Refused
        } else if result.starts_with(r#"{"status":"error","code":"queue_full""#) {
            TaskOutcome::QueueFull
        } else {
            TaskOutcome::Error
        }
    }
}

/// The labels of `p2c2r_peer_tasks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task type ([`task_type_label`]).
    pub task_type: &'static str,
    /// How it ended ([`TaskOutcome::as_str`]).
    pub outcome: &'static str,
}

/// The label of `p2c2r_peer_task_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskTypeLabel {
    /// The task type ([`task_type_label`]).
    pub task_type: &'static str,
}

/// Histogram buckets from 0.25 ms to about 8 s, doubling: a small physics tick up to a
/// task that used its whole work budget.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00025, 2.0, 16)
}

fn duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

/// The instruments that record tasks as they end; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    /// Tasks ended, by type and outcome.
    pub tasks: Family<TaskLabels, Counter>,
    /// Time each task ran, by type, in seconds: in process, the task itself (for a
    /// `physics_step`, parsing, stepping and serializing its tick); with workers, from
    /// handing it to its worker to the answer (or the worker's death or kill). Tasks
    /// that never ran (refused before running, `queue_full`, skipped) are not observed.
    /// A type's series appear with its first task.
    pub task_duration: Family<TaskTypeLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let tasks = Family::default();
        // Every known series exists from the start, so rates work from the first scrape.
        for task_type in task_types::ALL.into_iter().chain([OTHER_TASK_TYPE]) {
            for outcome in TaskOutcome::ALL {
                tasks.get_or_create_owned(&TaskLabels { task_type, outcome: outcome.as_str() });
            }
        }
        Metrics { tasks, task_duration: Family::new_with_constructor(duration_histogram) }
    }
}

impl Metrics {
    /// Counts one task of `task_type` that ended with `outcome`.
    pub fn task_ended(&self, task_type: &str, outcome: TaskOutcome) {
        let labels = TaskLabels { task_type: task_type_label(task_type), outcome: outcome.as_str() };
        self.tasks.get_or_create(&labels).inc();
    }

    /// Records that a task of `task_type` ran for `duration`.
    pub fn task_ran(&self, task_type: &str, duration: Duration) {
        let label = TaskTypeLabel { task_type: task_type_label(task_type) };
        self.task_duration.get_or_create(&label).observe(duration.as_secs_f64());
    }
}

/// Where the state-held metrics are read at scrape time.
#[derive(Debug)]
pub(crate) struct State {
    /// Tasks accepted and not yet finished (the pool's count).
    pub pending: Arc<AtomicUsize>,
    /// Tasks running now in process, and the most ever at once (the pool's counts).
    pub running: Arc<(AtomicUsize, AtomicUsize)>,
    /// The sessions held in process.
    pub store: Arc<SessionStore>,
    /// The worker processes, with [`crate::Isolation::Workers`].
    pub workers: Option<Arc<Workers>>,
    /// The connection state.
    pub status: Arc<watch::Sender<PeerStatus>>,
}

/// The registry a peer's `GET /metrics` encodes: `metrics` and `state`.
pub(crate) fn registry(metrics: &Metrics, state: State) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register("tasks", "Tasks ended, by task type and outcome", metrics.tasks.clone());
    registry.register_with_unit(
        "task_duration",
        "Time a task ran, by task type (in process: the task itself; with workers: from handing it to its worker to the answer)",
        Unit::Seconds,
        metrics.task_duration.clone(),
    );
    registry.register_collector(Box::new(StateCollector(state)));
    registry
}

/// Reads the state-held metrics at scrape time; see the module docs.
#[derive(Debug)]
struct StateCollector(State);

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let (sessions, running, lost) = match &s.workers {
            Some(w) => (w.sessions(), w.busy(), w.lost()),
            None => (s.store.len(), s.running.0.load(Ordering::Acquire), 0),
        };
        let status = *s.status.borrow();
        gauge(
            &mut e,
            "queue_length",
            "Tasks received and not yet finished, waiting or running",
            s.pending.load(Ordering::Acquire) as u64,
        )?;
        gauge(&mut e, "tasks_running", "Tasks running now", running as u64)?;
        gauge(&mut e, "sessions", "Sessions held now", sessions as u64)?;
        gauge(&mut e, "connected", "1 while registered with the coordinator, else 0", u64::from(status.connected))?;
        counter(
            &mut e,
            "registrations",
            "Registrations with the coordinator, the first and every reconnection",
            status.registrations,
        )?;
        counter(&mut e, "workers_lost", "Worker processes that died or were killed (0 in process)", lost)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_types_from_the_network_are_bounded() {
        for known in task_types::ALL {
            assert_eq!(task_type_label(known), known);
        }
        assert_eq!(task_type_label("render"), OTHER_TASK_TYPE);
        assert_eq!(task_type_label(&"x".repeat(10_000)), OTHER_TASK_TYPE);
        assert_eq!(task_type_label(""), OTHER_TASK_TYPE);
    }

    #[test]
    fn outcomes_are_read_from_the_answer() {
        use p2c2r_protocol::{ErrorCode, TaskError, to_payload};
        let error = |code| to_payload(&TaskError::new(code, "x").with_resync().with_tick(3)).unwrap();
        assert_eq!(TaskOutcome::of_result(r#"{"status":"success","tick":1}"#), TaskOutcome::Ok);
        assert_eq!(TaskOutcome::of_result(error(ErrorCode::LimitExceeded).json().unwrap()), TaskOutcome::Refused);
        assert_eq!(TaskOutcome::of_result(error(ErrorCode::QueueFull).json().unwrap()), TaskOutcome::QueueFull);
        assert_eq!(TaskOutcome::of_result(error(ErrorCode::UnknownSession).json().unwrap()), TaskOutcome::Error);
        assert_eq!(TaskOutcome::of_result(error(ErrorCode::InvalidPayload).json().unwrap()), TaskOutcome::Error);
        assert_eq!(TaskOutcome::of_result("garbage"), TaskOutcome::Error);
    }

    #[test]
    fn buckets_run_from_a_quarter_millisecond_to_about_eight_seconds() {
        let buckets: Vec<f64> = duration_buckets().collect();
        assert_eq!(buckets.first(), Some(&0.00025));
        assert!((8.0..8.5).contains(buckets.last().unwrap()), "{buckets:?}");
    }
}
