//! Where tasks run: off the I/O task, at most `max_concurrent_tasks` at once, and the
//! tasks of one session strictly one after another in arrival order.
//!
//! Each session with work has one queue and one tokio task draining it; tasks without a
//! session get a tokio task each. Before running, every task waits for a permit of a
//! fair semaphore sized to `max_concurrent_tasks`, then runs on tokio's blocking pool, so
//! a long physics step never delays heartbeats or reading. The number of tasks waiting is
//! bounded: beyond it, a task is answered at once with a `queue_full` error.
//!
//! With [`Isolation::Workers`](crate::Isolation) tasks run in worker processes instead
//! ([`crate::worker`]): the workers themselves bound concurrency, a session's tasks go to
//! the worker holding its world, and a task is cancelled (its worker killed) past its
//! deadline or when its connection closes.
//!
//! Every result is checked against the coordinator's frame limit before it is sent: an
//! answer whose `task_result` frame would be larger is replaced by a `limit_exceeded`
//! error (with the tick and resync for session tasks), so an oversized answer never
//! costs the connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use p2c2r_protocol::binary::{self, Frame};
use p2c2r_protocol::{Encoding, ErrorCode, Message, TaskAssignment, TaskError, TaskResult, to_payload};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use crate::metrics::{Metrics, TaskOutcome};
use crate::session::SessionStore;
use crate::tasks::run_task_payload;
use crate::worker::{Outcome, Workers, lost_task_error};

/// Where tasks run.
pub(crate) enum Executor {
    /// On tokio's blocking pool, against this store.
    InProcess(Arc<SessionStore>),
    /// In worker processes.
    Workers(Arc<Workers>),
}

/// An encoded `task_result` frame on its way to the coordinator, with the session it
/// answers (gamer alias, session): a session's results keep their order when large frames
/// go in chunks (see [`p2c2r_protocol::chunk`]).
#[derive(Debug)]
pub(crate) struct Reply {
    pub frame: Frame,
    pub lane: Option<(String, String)>,
}

impl Reply {
    /// The reply to `assignment` carrying `frame`.
    pub fn to(assignment: &TaskAssignment, frame: Frame) -> Self {
        Reply { frame, lane: Self::lane_of(assignment) }
    }

    /// The session an assignment's replies belong to (gamer alias, session).
    pub fn lane_of(assignment: &TaskAssignment) -> Option<(String, String)> {
        let spec = &assignment.task_data;
        spec.session_id.as_ref().map(|s| (spec.gamer_id.clone().unwrap_or_default(), s.clone()))
    }
}

/// One assignment and where its encoded `task_result` frame goes.
pub(crate) struct Job {
    pub assignment: TaskAssignment,
    pub reply: mpsc::Sender<Reply>,
    /// How the connection to the coordinator encodes frames.
    pub encoding: Encoding,
    /// When the assignment arrived; its `deadline_ms` counts from here.
    pub received: Instant,
    /// The largest `task_result` frame the coordinator accepts.
    pub max_frame_bytes: usize,
}

impl Job {
    /// A job received now, with no limit on its result's size.
    pub fn new(assignment: TaskAssignment, reply: mpsc::Sender<Reply>) -> Self {
        Job { assignment, reply, encoding: Encoding::Json, received: Instant::now(), max_frame_bytes: usize::MAX }
    }

    /// Sets how the result frame is encoded.
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Sets the largest result frame the coordinator accepts.
    pub fn with_max_frame_bytes(mut self, max: usize) -> Self {
        self.max_frame_bytes = max;
        self
    }

    /// When the coordinator stops waiting for this attempt.
    fn deadline(&self) -> Option<Instant> {
        self.assignment.deadline_ms.map(|ms| self.received + Duration::from_millis(ms))
    }

    /// Whether the assignment's deadline has passed: the coordinator has given up on this
    /// attempt (and re-dispatched the task), so it would refuse the answer.
    fn expired(&self) -> bool {
        self.assignment.deadline_ms.is_some_and(|ms| self.received.elapsed() >= Duration::from_millis(ms))
    }
}

pub(crate) struct Pool {
    permits: Arc<Semaphore>,
    queues: Arc<Mutex<HashMap<String, VecDeque<Job>>>>,
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    /// Tasks running now, and the most ever running at once.
    running: Arc<(AtomicUsize, AtomicUsize)>,
    executor: Arc<Executor>,
    tracker: TaskTracker,
    /// Where tasks are counted as they end.
    metrics: Arc<Metrics>,
}

impl Pool {
    pub fn new(max_concurrent: usize, max_pending: usize, store: Arc<SessionStore>) -> Self {
        Self::with_executor(max_concurrent, max_pending, Executor::InProcess(store))
    }

    pub fn with_executor(max_concurrent: usize, max_pending: usize, executor: Executor) -> Self {
        Pool {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            queues: Arc::default(),
            pending: Arc::default(),
            max_pending,
            running: Arc::default(),
            executor: Arc::new(executor),
            tracker: TaskTracker::new(),
            metrics: Arc::default(),
        }
    }

    /// Counts tasks in `metrics` (default: instruments of its own, never read).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The count of tasks accepted and not yet answered, to read it elsewhere.
    pub fn pending_count(&self) -> Arc<AtomicUsize> {
        self.pending.clone()
    }

    /// Tasks running now (with workers: handed to a worker, or waiting for the one
    /// holding their session), and the most ever running at once.
    pub fn running(&self) -> Arc<(AtomicUsize, AtomicUsize)> {
        self.running.clone()
    }

    /// Tasks accepted and not yet answered.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// The most tasks that ever ran at once.
    #[cfg(test)]
    pub fn peak_running(&self) -> usize {
        self.running.1.load(Ordering::Acquire)
    }

    /// Waits until every task accepted so far has been answered.
    pub async fn wait_idle(&self) {
        self.tracker.close();
        self.tracker.wait().await;
        self.tracker.reopen();
    }

    /// Queues a task without waiting. A task over the bound is refused with the frame
    /// that answers it.
    pub fn submit(&self, job: Job) -> Result<(), Frame> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            let error = TaskError::new(ErrorCode::QueueFull, "the peer has too many tasks waiting; try again later");
            let frame =
                result_frame(&job.assignment, to_payload(&error).expect("task errors always serialize"), job.encoding);
            tracing::warn!(task_id = %job.assignment.task_id, "too many tasks waiting; rejected one");
            self.metrics.task_ended(&job.assignment.task_data.task_type, TaskOutcome::QueueFull);
            return Err(frame);
        }
        let session = job.assignment.task_data.session_key();
        if let Some(session) = &session {
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(queue) = queues.get_mut(session) {
                queue.push_back(job);
                return Ok(());
            }
            queues.insert(session.clone(), VecDeque::new());
        }
        self.spawn_chain(session, job);
        Ok(())
    }

    /// Runs `first`, then (for a session) every task queued behind it, in order.
    fn spawn_chain(&self, session: Option<String>, first: Job) {
        let permits = self.permits.clone();
        let queues = self.queues.clone();
        let pending = self.pending.clone();
        let executor = self.executor.clone();
        let running = self.running.clone();
        let metrics = self.metrics.clone();
        self.tracker.spawn(async move {
            let mut job = first;
            loop {
                if job.reply.is_closed() {
                    // Its connection is gone and the coordinator re-dispatches it.
                    tracing::debug!(task_id = %job.assignment.task_id, "dropping a task of a closed connection");
                    metrics.task_ended(&job.assignment.task_data.task_type, TaskOutcome::Dropped);
                } else if job.expired() {
                    // Its deadline passed while it waited behind its session's earlier tasks.
                    skip_stale(&job, &metrics);
                } else {
                    match &*executor {
                        Executor::InProcess(store) => run_in_process(job, store, &permits, &running, &metrics).await,
                        Executor::Workers(workers) => run_in_worker(job, workers, &running, &metrics).await,
                    }
                }
                pending.fetch_sub(1, Ordering::AcqRel);
                match next_job(&queues, session.as_deref()) {
                    Some(next) => job = next,
                    None => return,
                }
            }
        });
    }
}

/// Runs a job on tokio's blocking pool once a permit is free, and answers it.
async fn run_in_process(
    job: Job,
    store: &Arc<SessionStore>,
    permits: &Arc<Semaphore>,
    running: &Arc<(AtomicUsize, AtomicUsize)>,
    metrics: &Metrics,
) {
    let task_type = crate::metrics::task_type_label(&job.assignment.task_data.task_type);
    let Ok(permit) = permits.clone().acquire_owned().await else {
        metrics.task_ended(task_type, TaskOutcome::Dropped);
        return;
    };
    if job.expired() {
        // Its deadline passed while it waited for a permit.
        drop(permit);
        skip_stale(&job, metrics);
        return;
    }
    let Job { assignment, reply, max_frame_bytes, encoding, .. } = job;
    let store = store.clone();
    let running = running.clone();
    let run = tokio::task::spawn_blocking(move || {
        let now = running.0.fetch_add(1, Ordering::AcqRel) + 1;
        running.1.fetch_max(now, Ordering::AcqRel);
        let started = Instant::now();
        let result = run_task_payload(&store, &assignment.task_data);
        let ran_for = started.elapsed();
        running.0.fetch_sub(1, Ordering::AcqRel);
        let (frame, outcome) = checked_result_frame(&assignment, result, max_frame_bytes, encoding);
        ((Reply::to(&assignment, frame), outcome), ran_for)
    });
    let answer = run.await;
    drop(permit);
    match answer {
        Ok(((frame, outcome), ran_for)) => {
            // Counted before the answer leaves, so whoever got the answer sees it counted.
            metrics.task_ran(task_type, ran_for);
            metrics.task_ended(task_type, outcome);
            // A closed connection drops its results: the coordinator re-sends the task.
            drop(reply.send(frame).await);
        }
        Err(e) => {
            metrics.task_ended(task_type, TaskOutcome::Dropped);
            tracing::error!("a task failed to complete: {e}");
        }
    }
}

/// Runs a job in a worker process, and answers it unless it was cancelled.
async fn run_in_worker(job: Job, workers: &Workers, running: &Arc<(AtomicUsize, AtomicUsize)>, metrics: &Metrics) {
    let deadline = job.deadline().zip(job.assignment.deadline_ms.map(Duration::from_millis));
    let now = running.0.fetch_add(1, Ordering::AcqRel) + 1;
    running.1.fetch_max(now, Ordering::AcqRel);
    let (outcome, ran_for) = workers.execute(&job.assignment.task_data, deadline, job.reply.closed()).await;
    running.0.fetch_sub(1, Ordering::AcqRel);
    let task_type = &job.assignment.task_data.task_type;
    if let Some(ran_for) = ran_for {
        metrics.task_ran(task_type, ran_for);
    }
    match outcome {
        Outcome::Answer(result) => {
            let (frame, outcome) = checked_result_frame(&job.assignment, result, job.max_frame_bytes, job.encoding);
            metrics.task_ended(task_type, outcome);
            drop(job.reply.send(Reply::to(&job.assignment, frame)).await);
        }
        Outcome::Cancelled => skip_stale(&job, metrics),
    }
}

/// The `task_result` frame answering an assignment, or, when that frame would exceed
/// the coordinator's limit, a `limit_exceeded` error in its place (the coordinator would
/// drop the whole connection for an oversized frame); and the outcome that frame
/// answers with.
pub(crate) fn checked_result_frame(
    assignment: &TaskAssignment,
    result: p2c2r_protocol::Payload,
    max_frame_bytes: usize,
    encoding: Encoding,
) -> (Frame, TaskOutcome) {
    let outcome = TaskOutcome::of_payload(&result);
    // A binary result may go on to a JSON gamer, base64-wrapped (a third larger): it must
    // fit the limit in that form too, or the coordinator refuses it.
    let as_json = if result.is_binary() { result.json_len().saturating_add(2048) } else { 0 };
    let frame = result_frame(assignment, result, encoding);
    if frame.len().max(as_json) <= max_frame_bytes {
        return (frame, outcome);
    }
    tracing::warn!(
        task_id = %assignment.task_id,
        bytes = frame.len(),
        max_frame_bytes,
        "a result is larger than the coordinator accepts; answering limit_exceeded instead"
    );
    let spec = &assignment.task_data;
    let message = format!(
        "the result is {} bytes, more than the {max_frame_bytes} bytes the coordinator accepts in a frame; send a smaller request",
        frame.len().max(as_json)
    );
    let error = if spec.session_id.is_some() {
        lost_task_error(spec, ErrorCode::LimitExceeded, message)
    } else {
        to_payload(&TaskError::new(ErrorCode::LimitExceeded, message)).expect("task errors always serialize")
    };
    (result_frame(assignment, error, encoding), TaskOutcome::Refused)
}

/// Logs a job skipped because its deadline passed while it waited (behind its session's
/// earlier tasks or for a permit), and counts it [`TaskOutcome::Dropped`] (as it counts a
/// task cancelled in its worker).
///
/// Nothing is answered: the coordinator already superseded this attempt and refuses late
/// answers, so running it would only burn a worker. Skipping a `physics_step` leaves a gap
/// in its session's ticks; that is safe because the world is not touched, so the session's
/// next tick arrives out of order and is answered `out_of_order` with resync, exactly as if
/// the tick had been lost, and the gamer re-sends a snapshot.
fn skip_stale(job: &Job, metrics: &Metrics) {
    metrics.task_ended(&job.assignment.task_data.task_type, TaskOutcome::Dropped);
    tracing::debug!(
        task_id = %job.assignment.task_id,
        waited_ms = job.received.elapsed().as_millis() as u64,
        deadline_ms = ?job.assignment.deadline_ms,
        "skipping a task whose deadline passed while it waited"
    );
}

fn next_job(queues: &Mutex<HashMap<String, VecDeque<Job>>>, session: Option<&str>) -> Option<Job> {
    let session = session?;
    let mut queues = queues.lock().unwrap_or_else(PoisonError::into_inner);
    let next = queues.get_mut(session).and_then(VecDeque::pop_front);
    if next.is_none() {
        queues.remove(session);
    }
    next
}

/// The `task_result` frame answering an assignment.
pub(crate) fn result_frame(assignment: &TaskAssignment, result: p2c2r_protocol::Payload, encoding: Encoding) -> Frame {
    let message = Message::TaskResult(TaskResult {
        task_id: assignment.task_id.clone(),
        result,
        attempt: Some(assignment.attempt),
        peer_id: None,
    });
    binary::encode_for(&message, encoding)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use p2c2r_protocol::{TaskSpec, raw_payload};

    use super::*;

    fn assignment(id: u32, task_type: &str, session: Option<&str>, data: &str) -> TaskAssignment {
        TaskAssignment {
            task_id: format!("{id}:1"),
            attempt: 1,
            deadline_ms: None,
            task_data: TaskSpec {
                task_id: format!("g{id}"),
                task_type: task_type.into(),
                session_id: session.map(str::to_owned),
                gamer_id: None,
                task_data: raw_payload(data.to_owned()).unwrap(),
            },
        }
    }

    fn result_of(frame: &Frame) -> (String, String) {
        let Frame::Text(frame) = frame else { panic!("a binary frame") };
        let Ok(Message::TaskResult(r)) = p2c2r_protocol::codec::decode(frame) else { panic!("{frame}") };
        (r.task_id, r.result.json().unwrap().to_owned())
    }

    #[test]
    fn a_result_over_the_frame_limit_is_replaced_by_limit_exceeded() {
        let store = SessionStore::new(Duration::from_secs(60));
        let mut spec = assignment(1, "physics_step", Some("s"), "{}").task_data;
        let bodies: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"id":{i},"shape":{{"kind":"sphere","radius":0.5}},"position":[{},0,0]}}"#, 3 * i))
            .collect();
        let data = format!(r#"{{"tick":9,"snapshot":true,"dt":0.016,"add":[{}]}}"#, bodies.join(","));
        spec.task_data = raw_payload(data).unwrap();
        let a = TaskAssignment { task_id: "1:1".into(), attempt: 1, deadline_ms: None, task_data: spec };
        let result = run_task_payload(&store, &a.task_data);
        let (full, outcome) = checked_result_frame(&a, result.clone(), usize::MAX, Encoding::Json);
        assert_eq!(outcome, TaskOutcome::Ok);
        assert!(result_of(&full).1.starts_with(r#"{"status":"success""#));
        let (limited, outcome) = checked_result_frame(&a, result, full.len() - 1, Encoding::Json);
        assert_eq!(outcome, TaskOutcome::Refused);
        assert!(limited.len() < full.len());
        let (task_id, answer) = result_of(&limited);
        assert_eq!(task_id, "1:1");
        let e: TaskError = serde_json::from_str(&answer).unwrap();
        assert_eq!((e.code, e.resync, e.tick), (ErrorCode::LimitExceeded, true, Some(9)), "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_capped_and_the_queue_is_bounded() {
        let store = Arc::new(SessionStore::new(Duration::from_secs(60)));
        let pool = Pool::new(2, 8, store);
        let (tx, mut rx) = mpsc::channel(64);
        for i in 0..8 {
            let job = Job::new(assignment(i, "physics", None, r#"{"num_objects":3000}"#), tx.clone());
            assert!(pool.submit(job).is_ok());
        }
        let refused = pool.submit(Job::new(assignment(99, "physics", None, "{}"), tx.clone()));
        let (task_id, result) = result_of(&refused.unwrap_err());
        assert_eq!(task_id, "99:1");
        assert!(result.contains("queue_full"), "{result}");
        for _ in 0..8 {
            let frame = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.unwrap().unwrap().frame;
            assert!(result_of(&frame).1.contains("physics_processed"));
        }
        assert!((1..=2).contains(&pool.peak_running()), "peak {}", pool.peak_running());
        pool.wait_idle().await;
        assert_eq!(pool.pending(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_runs_in_arrival_order_while_others_run_beside_it() {
        let store = Arc::new(SessionStore::new(Duration::from_secs(60)));
        let pool = Pool::new(4, 1000, store);
        let (tx, mut rx) = mpsc::channel(1000);
        let snapshot =
            r#"{"tick":0,"snapshot":true,"dt":0.016,"add":[{"id":1,"shape":{"kind":"sphere","radius":0.5}}]}"#;
        let mut n = 0;
        for session in ["a", "b", "c"] {
            pool.submit(Job::new(assignment(n, "physics_step", Some(session), snapshot), tx.clone())).unwrap();
            n += 1;
        }
        for t in 1..=100u64 {
            for session in ["a", "b", "c"] {
                let data = format!(r#"{{"tick":{t},"dt":0.016}}"#);
                pool.submit(Job::new(assignment(n, "physics_step", Some(session), &data), tx.clone())).unwrap();
                n += 1;
            }
        }
        let mut last_tick = std::collections::HashMap::new();
        for _ in 0..n {
            let reply = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.unwrap().unwrap();
            let (task_id, result) = result_of(&reply.frame);
            let id: u32 = task_id.trim_end_matches(":1").parse().unwrap();
            let session = ["a", "b", "c"][id as usize % 3];
            assert_eq!(reply.lane.as_ref().map(|(_, s)| s.as_str()), Some(session), "a reply names its session");
            let r: p2c2r_protocol::physics::PhysicsStepResult =
                serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
            let previous = last_tick.insert(session, r.tick);
            assert_eq!(previous.map_or(0, |p| p + 1), r.tick, "session {session} answered out of order");
        }
        assert_eq!(last_tick.values().copied().collect::<Vec<_>>(), vec![100; 3]);
    }

    #[tokio::test]
    async fn tasks_of_a_closed_connection_are_skipped() {
        let store = Arc::new(SessionStore::new(Duration::from_secs(60)));
        let pool = Pool::new(1, 100, store.clone());
        let (tx, rx) = mpsc::channel(10);
        drop(rx);
        let snapshot = r#"{"tick":0,"snapshot":true,"dt":0.016}"#;
        pool.submit(Job::new(assignment(1, "physics_step", Some("s"), snapshot), tx)).unwrap();
        pool.wait_idle().await;
        assert!(store.is_empty(), "the task never ran");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_whose_deadline_passed_while_queued_is_not_run() {
        let store = Arc::new(SessionStore::new(Duration::from_secs(60)));
        let pool = Pool::new(1, 100, store.clone());
        let (tx, mut rx) = mpsc::channel(10);
        // A slow task of session "s"...
        pool.submit(Job::new(assignment(1, "physics", Some("s"), r#"{"num_objects":3000}"#), tx.clone())).unwrap();
        // ...and one queued behind it in the same session, whose deadline passes while it waits.
        let mut stale = assignment(2, "physics_step", Some("s"), r#"{"tick":0,"snapshot":true,"dt":0.016}"#);
        stale.deadline_ms = Some(1);
        pool.submit(Job::new(stale, tx.clone())).unwrap();
        // A task with a generous deadline still runs.
        let mut fresh = assignment(3, "physics_step", Some("t"), r#"{"tick":0,"snapshot":true,"dt":0.016}"#);
        fresh.deadline_ms = Some(60_000);
        pool.submit(Job::new(fresh, tx.clone())).unwrap();
        drop(tx);
        pool.wait_idle().await;
        let mut answered = Vec::new();
        while let Some(reply) = rx.recv().await {
            answered.push(result_of(&reply.frame).0);
        }
        answered.sort();
        assert_eq!(answered, vec!["1:1", "3:1"], "the stale task was answered");
        assert_eq!(store.session_ids(), vec!["t"], "the stale task ran");
        assert_eq!(pool.pending(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_whose_deadline_passed_while_waiting_for_a_permit_is_not_run() {
        let store = Arc::new(SessionStore::new(Duration::from_secs(60)));
        let pool = Pool::new(1, 100, store.clone());
        let (tx, mut rx) = mpsc::channel(10);
        // Every permit is taken, as by long-running tasks of other sessions.
        let held = pool.permits.clone().acquire_owned().await.unwrap();
        let mut stale = assignment(1, "physics_step", Some("s"), r#"{"tick":0,"snapshot":true,"dt":0.016}"#);
        stale.deadline_ms = Some(1);
        let submitted = Instant::now();
        pool.submit(Job::new(stale, tx.clone())).unwrap();
        while submitted.elapsed() < Duration::from_millis(2) {
            tokio::task::yield_now().await;
        }
        drop(held);
        drop(tx);
        pool.wait_idle().await;
        assert!(rx.recv().await.is_none(), "the stale task was answered");
        assert!(store.is_empty(), "the stale task ran");
        assert_eq!(pool.pending(), 0);
    }
}
