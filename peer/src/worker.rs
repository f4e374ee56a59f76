//! Worker processes: where a peer runs untrusted tasks when [`Isolation::Workers`] is set.
//!
//! The peer process (the *supervisor*) keeps the connection, the queues and the
//! heartbeats; the tasks themselves run in `max_concurrent_tasks` child processes, one
//! task at a time each. A task that exhausts memory or CPU costs one worker, not the
//! peer: the worker caps its own address space (`RLIMIT_AS`) before doing anything else,
//! so an allocation past the cap aborts it; the supervisor notices the closed pipe,
//! answers the task with `limit_exceeded` and `resync: true`, forgets the sessions that
//! lived in that worker (their next tick is answered `unknown_session` with resync), and
//! starts a new worker for the next task. Every other session keeps being served.
//!
//! Sessions are sticky: each session's tasks go to the worker that holds its world, and a
//! new session goes to the worker holding the fewest. Sessionless tasks (the ones most
//! likely to be hostile and cheapest to place) keep away from sessions: while some worker
//! holds no session they run only in such workers (waiting for one when all are busy), so
//! a sessionless task that kills its worker costs no gamer its world; when every worker
//! holds sessions they go to the free worker holding the fewest. A task still running
//! [`PeerConfig::cancel_grace`](crate::PeerConfig) after its assignment's deadline, or
//! when the connection to the coordinator is lost, is cancelled by killing its worker
//! (the coordinator has re-dispatched it and would refuse the answer); that worker's
//! sessions are lost too and resync on their next tick.
//!
//! Worker deaths are charged to the gamer whose task caused them (exhausted memory or
//! CPU, crashed the worker, or was cancelled past its deadline; not a lost connection).
//! A gamer whose tasks killed
//! [`PeerConfig::max_worker_deaths_per_gamer`](crate::PeerConfig) workers within
//! [`PeerConfig::worker_death_window`](crate::PeerConfig) has its further tasks answered
//! `limit_exceeded` at once, without running them, until the window passes (see
//! [`crate::containment`]): an attacker costs the peer a few restarts per window, not one
//! per task.
//!
//! # The worker protocol (internal)
//!
//! The worker is the peer executable started with the single argument [`WORKER_ARG`] and
//! its settings as JSON in the environment variable [`SETTINGS_ENV`]. It is not a user
//! interface: `peer --help` does not list it. It reads frames from stdin and writes one
//! frame to stdout per frame read, in order. A frame is a little-endian `u32` length
//! followed by that many bytes, at most [`MAX_WORKER_FRAME`]. A tag byte says how it is
//! encoded (`encode_task`, `encode_answer`): a request starts with `J` and a
//! [`TaskSpec`] as JSON, or with `B`, a `u32` length, that [`TaskSpec`] as JSON with a
//! `null` payload, and the binary payload's bytes; an answer is the task's result JSON
//! (what goes in `task_result`'s `result`) followed by `J`, or a binary result's bytes
//! followed by `B` (last, so the supervisor keeps the bytes where they were read). The
//! worker exits when stdin closes (so workers die with their peer even when it is
//! killed), and on a malformed frame. Its stderr is the peer's stderr.
//!
//! With `P2C2R_TEST_TASKS=1` in a worker's environment (see [`Isolation::Workers`]'s
//! `env`), two task types exist for tests only: [`TEST_ALLOC_TASK`] allocates until the
//! worker runs out of memory, and [`TEST_SLEEP_TASK`] (`{"ms": N}`) sleeps.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use p2c2r_protocol::{ErrorCode, Payload, TaskError, TaskSpec, raw_payload, to_payload};
use serde::{Deserialize, Serialize};
use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::containment::DeathCounter;
use crate::session::SessionStore;
use p2c2r_sim::Budgets;

/// The argument that starts the peer executable as a worker (internal).
pub const WORKER_ARG: &str = "--p2c2r-internal-worker";
/// The environment variable carrying a worker's settings as JSON (internal).
pub const SETTINGS_ENV: &str = "P2C2R_WORKER_SETTINGS";
/// Set to `1` in a worker's environment to enable the test-only task types.
pub const TEST_TASKS_ENV: &str = "P2C2R_TEST_TASKS";
/// Test-only task type: allocates memory until the worker aborts.
pub const TEST_ALLOC_TASK: &str = "p2c2r_test_alloc";
/// Test-only task type: `{"ms": N}` sleeps N milliseconds, then succeeds.
pub const TEST_SLEEP_TASK: &str = "p2c2r_test_sleep";
pub use crate::pipe::MAX_WORKER_FRAME;
/// Default address-space cap of a worker: 1 GiB.
pub const DEFAULT_WORKER_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;

/// Where a peer runs its tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// On tokio's blocking pool inside the peer process (the library default: tests and
    /// embedded peers). A step cannot be interrupted: the work budgets
    /// ([`Budgets`]) bound how long it runs, and a task that exhausts memory takes the
    /// whole process down.
    #[default]
    InProcess,
    /// In `max_concurrent_tasks` worker processes started from `exe` (the peer binary
    /// defaults to this with its own executable). See the [module docs](self).
    Workers {
        /// The executable to start with [`WORKER_ARG`]: the `peer` binary, or any binary
        /// whose `main` calls [`run_worker`] when [`is_worker_invocation`] says so.
        exe: PathBuf,
        /// Each worker's address-space limit (`RLIMIT_AS`), in bytes; 0 for none.
        memory_limit_bytes: u64,
        /// Extra environment variables for the workers (e.g. [`TEST_TASKS_ENV`]).
        env: Vec<(OsString, OsString)>,
    },
}

impl Isolation {
    /// Workers started from `exe`, each capped at `memory_limit_bytes`.
    pub fn workers(exe: impl Into<PathBuf>, memory_limit_bytes: u64) -> Self {
        Isolation::Workers { exe: exe.into(), memory_limit_bytes, env: Vec::new() }
    }
}

/// What a worker needs to know, passed as JSON in [`SETTINGS_ENV`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WorkerSettings {
    pub memory_limit_bytes: u64,
    pub idle_timeout_ms: u64,
    pub max_sessions: usize,
    pub memory_budget: u64,
    pub gamer_memory_budget: u64,
    pub budgets: Budgets,
    pub shape_cache_bytes: usize,
}

/// Whether this process was started as a worker (its first argument is [`WORKER_ARG`]).
/// A binary's `main` checks this first and calls [`run_worker`] when it is set.
pub fn is_worker_invocation() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == WORKER_ARG)
}

/// Runs this process as a worker until stdin closes; returns the exit code.
///
/// Applies the memory cap first, then serves frames synchronously on this thread (no
/// tokio runtime, no other threads).
pub fn run_worker() -> std::process::ExitCode {
    let settings: WorkerSettings = match std::env::var(SETTINGS_ENV)
        .map_err(|e| e.to_string())
        .and_then(|json| serde_json::from_str(&json).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("peer worker: cannot read {SETTINGS_ENV}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    limit_memory(settings.memory_limit_bytes);
    let test_tasks = std::env::var(TEST_TASKS_ENV).is_ok_and(|v| v == "1");
    let store = SessionStore::new(Duration::from_millis(settings.idle_timeout_ms))
        .with_max_sessions(settings.max_sessions)
        .with_memory_budget(settings.memory_budget, settings.gamer_memory_budget)
        .with_budgets(settings.budgets)
        .with_shape_cache_bytes(settings.shape_cache_bytes);
    let mut input = std::io::BufReader::new(std::io::stdin().lock());
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let frame = match crate::pipe::read_sync(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("worker: bad frame from the peer: {e}");
                return std::process::ExitCode::from(3);
            }
        };
        store.evict_idle();
        let result = match decode_task(&frame) {
            Ok(spec) if test_tasks && spec.task_type.starts_with("p2c2r_test_") => test_task(&spec),
            Ok(spec) => crate::run_task_payload(&store, &spec),
            Err(e) => to_payload(&TaskError::new(ErrorCode::Internal, format!("the worker got a malformed task: {e}")))
                .expect("task errors always serialize"),
        };
        let mut answer = encode_answer(&result);
        if answer.len() > MAX_WORKER_FRAME {
            // Too large for the pipe: the task fails with a reason, the worker goes on.
            let error = TaskError::new(
                ErrorCode::LimitExceeded,
                format!("the result is {} bytes; a worker answers at most {MAX_WORKER_FRAME}", answer.len()),
            );
            answer = encode_answer(&to_payload(&error).expect("task errors always serialize"));
        }
        if crate::pipe::write_sync(&mut output, &answer).is_err() {
            // The peer is gone.
            return std::process::ExitCode::SUCCESS;
        }
    }
}

#[cfg(unix)]
fn limit_memory(bytes: u64) {
    use nix::sys::resource::{Resource, setrlimit};
    if bytes == 0 {
        return;
    }
    if let Err(e) = setrlimit(Resource::RLIMIT_AS, bytes, bytes) {
        tracing::warn!("worker: cannot cap its address space at {bytes} bytes: {e}");
    }
}

#[cfg(not(unix))]
fn limit_memory(bytes: u64) {
    if bytes != 0 {
        tracing::warn!("worker: memory caps are only applied on Unix");
    }
}

fn test_task(spec: &TaskSpec) -> Payload {
    match spec.task_type.as_str() {
        TEST_ALLOC_TASK => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touch every page, so the memory is really used even without a cap.
                hoard.push(vec![1u8; 16 * 1024 * 1024]);
                std::hint::black_box(&hoard);
            }
        }
        TEST_SLEEP_TASK => {
            #[derive(Deserialize)]
            struct Sleep {
                ms: u64,
            }
            let ms =
                spec.task_data.json().and_then(|json| serde_json::from_str::<Sleep>(json).ok()).map_or(0, |s| s.ms);
            std::thread::sleep(Duration::from_millis(ms));
            raw_payload(r#"{"status":"success","data":"slept"}"#.to_owned()).expect("valid JSON")
        }
        other => to_payload(&TaskError::new(ErrorCode::UnknownTaskType, format!("no test task {other:?}")))
            .expect("task errors always serialize"),
    }
}

const JSON_TAG: u8 = b'J';
const BINARY_TAG: u8 = b'B';

/// A task as the supervisor writes it to a worker.
fn encode_task(spec: &TaskSpec) -> Vec<u8> {
    match &spec.task_data {
        Payload::Json(_) => {
            let mut frame = vec![JSON_TAG];
            serde_json::to_writer(&mut frame, spec).expect("task specs serialize");
            frame
        }
        Payload::Binary(bytes) => {
            let header = TaskSpec {
                task_id: spec.task_id.clone(),
                task_type: spec.task_type.clone(),
                session_id: spec.session_id.clone(),
                gamer_id: spec.gamer_id.clone(),
                task_data: p2c2r_protocol::null_payload(),
            };
            let header = serde_json::to_vec(&header).expect("task specs serialize");
            let mut frame = Vec::with_capacity(5 + header.len() + bytes.len());
            frame.push(BINARY_TAG);
            frame.extend_from_slice(&(header.len() as u32).to_le_bytes());
            frame.extend_from_slice(&header);
            frame.extend_from_slice(bytes);
            frame
        }
    }
}

/// A task as a worker reads it ([`encode_task`]).
fn decode_task(frame: &[u8]) -> Result<TaskSpec, String> {
    match frame.split_first() {
        Some((&JSON_TAG, json)) => serde_json::from_slice(json).map_err(|e| e.to_string()),
        Some((&BINARY_TAG, rest)) => {
            let (len, rest) = rest.split_at_checked(4).ok_or("truncated header length")?;
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let (header, payload) = rest.split_at_checked(len).ok_or("truncated header")?;
            let mut spec: TaskSpec = serde_json::from_slice(header).map_err(|e| e.to_string())?;
            spec.task_data = Payload::binary(bytes::Bytes::copy_from_slice(payload));
            Ok(spec)
        }
        _ => Err("unknown frame tag".into()),
    }
}

/// A task's answer as a worker writes it: the body, then its tag. (The tag goes last so
/// that the supervisor takes the body as it was read, without moving it.)
fn encode_answer(result: &Payload) -> Vec<u8> {
    let body = match result {
        Payload::Json(json) => json.get().as_bytes(),
        Payload::Binary(bytes) => bytes.as_ref(),
    };
    let mut frame = Vec::with_capacity(body.len() + 1);
    frame.extend_from_slice(body);
    frame.push(if result.is_binary() { BINARY_TAG } else { JSON_TAG });
    frame
}

/// A worker's answer as the supervisor reads it ([`encode_answer`]).
fn decode_answer(mut frame: Vec<u8>) -> Result<Payload, String> {
    match frame.pop() {
        Some(JSON_TAG) => {
            let text = String::from_utf8(frame).map_err(|e| e.to_string())?;
            raw_payload(text).map_err(|e| e.to_string())
        }
        Some(BINARY_TAG) => Ok(Payload::binary(frame)),
        _ => Err("unknown frame tag".into()),
    }
}

/// How a task given to a worker ended.
pub(crate) enum Outcome {
    /// Answer with this result.
    Answer(Payload),
    /// Cancelled (deadline passed or the connection was lost): nothing to answer.
    Cancelled,
}

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

struct Route {
    worker: usize,
    last_used: Instant,
}

/// The supervisor's side: the workers, and which session lives in which.
pub(crate) struct Workers {
    exe: PathBuf,
    env: Vec<(OsString, OsString)>,
    settings: String,
    slots: Vec<tokio::sync::Mutex<Option<Proc>>>,
    routes: Mutex<HashMap<String, Route>>,
    idle_timeout: Duration,
    max_routes: usize,
    grace: Duration,
    next: AtomicUsize,
    /// Workers that died or were killed so far.
    lost: AtomicU64,
    /// Tasks handed to a worker and not finished.
    busy: AtomicUsize,
    /// The workers each gamer's tasks killed recently.
    deaths: Mutex<DeathCounter>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("exe", &self.exe).field("workers", &self.slots.len()).finish()
    }
}

/// The workers a sessionless task may run in, most preferred first, given how many
/// sessions each holds: only those holding none when there are any, else all of them,
/// fewest sessions first. Equals are rotated by `start`, spreading tasks among them.
fn sessionless_candidates(load: &[usize], start: usize) -> Vec<usize> {
    let n = load.len();
    let mut candidates: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
    if load.contains(&0) {
        candidates.retain(|&w| load[w] == 0);
    }
    // Stable: equal loads keep their rotated order.
    candidates.sort_by_key(|&w| load[w]);
    candidates
}

/// The tick a request carries, read without building the rest of it.
fn request_tick(spec: &TaskSpec) -> Option<u64> {
    #[derive(Deserialize)]
    struct TickOnly {
        tick: Option<u64>,
    }
    match spec.task_data.binary_bytes() {
        Some(bytes) => p2c2r_protocol::packed::decode_request(&bytes).ok().map(|r| r.tick),
        None => serde_json::from_str::<TickOnly>(spec.task_data.json()?).ok().and_then(|t| t.tick),
    }
}

/// The error answering a task that failed with its worker (or with the result limit).
pub(crate) fn lost_task_error(spec: &TaskSpec, code: ErrorCode, message: String) -> Payload {
    let mut error = TaskError::new(code, message).with_resync();
    if let Some(tick) = request_tick(spec) {
        error = error.with_tick(tick);
    }
    to_payload(&error).expect("task errors always serialize")
}

impl Workers {
    pub fn new(
        exe: PathBuf,
        env: Vec<(OsString, OsString)>,
        count: usize,
        settings: &WorkerSettings,
        grace: Duration,
        deaths: DeathCounter,
    ) -> Self {
        Workers {
            exe,
            env,
            settings: serde_json::to_string(settings).expect("settings serialize"),
            slots: (0..count.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect(),
            routes: Mutex::default(),
            idle_timeout: Duration::from_millis(settings.idle_timeout_ms),
            max_routes: 4 * settings.max_sessions.max(1) * count.max(1),
            grace,
            next: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            deaths: Mutex::new(deaths),
        }
    }

    /// Starts every worker now (they are started lazily too, after one is lost).
    pub fn start_all(&self) -> std::io::Result<()> {
        for slot in &self.slots {
            let mut slot = slot.try_lock().expect("no task runs before the peer starts");
            if slot.is_none() {
                *slot = Some(self.start()?);
            }
        }
        Ok(())
    }

    /// How many tasks are in a worker's hands right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// How many workers died or were killed so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }

    /// How many sessions are routed to a worker (as [`session_keys`](Self::session_keys)
    /// lists them).
    pub fn sessions(&self) -> usize {
        self.routes().len()
    }

    /// The session keys routed to a worker, sorted.
    pub fn session_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.routes().keys().cloned().collect();
        keys.sort();
        keys
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many sessions each worker holds.
    fn load(&self, routes: &HashMap<String, Route>) -> Vec<usize> {
        let mut load = vec![0usize; self.slots.len()];
        let now = Instant::now();
        // Sessions idle past the timeout have been dropped by their worker: not counted.
        for route in routes.values().filter(|r| now.saturating_duration_since(r.last_used) <= self.idle_timeout) {
            load[route.worker] += 1;
        }
        load
    }

    /// The worker for a session: where it lives, or the one holding the fewest sessions.
    fn route(&self, session: &str) -> usize {
        let mut routes = self.routes();
        if let Some(route) = routes.get(session) {
            return route.worker;
        }
        let load = self.load(&routes);
        let worker = (0..load.len()).min_by_key(|&w| (load[w], w)).expect("at least one worker");
        if routes.len() >= self.max_routes {
            let now = Instant::now();
            routes.retain(|_, r| now.saturating_duration_since(r.last_used) <= self.idle_timeout);
            if routes.len() >= self.max_routes
                && let Some(oldest) = routes.iter().min_by_key(|(_, r)| r.last_used).map(|(k, _)| k.clone())
            {
                routes.remove(&oldest);
            }
        }
        routes.insert(session.to_owned(), Route { worker, last_used: Instant::now() });
        worker
    }

    /// Drops a session's route when the worker's answer says it does not hold the session
    /// (an error asking for a resync: unknown session, no room, a world dropped), so
    /// made-up session ids never count as sessions a worker holds.
    fn keep_route_only_if_held(&self, key: &str, worker: usize, result: &Payload) {
        // The worker's answers are this crate's own serialization, status first: a prefix
        // check keeps a large success result from being lexed once more on every tick.
        let Some(json) = result.json() else { return };
        if !json.starts_with(r#"{"status":"error""#) {
            return;
        }
        let resync = serde_json::from_str::<TaskError>(json).is_ok_and(|e| e.resync);
        if resync {
            let mut routes = self.routes();
            if routes.get(key).is_some_and(|r| r.worker == worker) {
                routes.remove(key);
            }
        }
    }

    /// Forgets every session of a worker that died or was killed.
    fn forget(&self, worker: usize) {
        self.lost.fetch_add(1, Ordering::AcqRel);
        let mut routes = self.routes();
        let before = routes.len();
        routes.retain(|_, r| r.worker != worker);
        tracing::warn!(worker, sessions = before - routes.len(), "worker lost with its sessions");
    }

    /// Runs one task in a worker; returns how it ended, and for how long it ran when it
    /// was handed to a worker (until the answer, or the worker's death or kill).
    ///
    /// `deadline` is the assignment's, with the allowance it was given (none: no limit);
    /// the task is cancelled (its worker
    /// killed) once it is `grace` past, or when `cancelled` completes.
    pub async fn execute(
        &self,
        spec: &TaskSpec,
        deadline: Option<(Instant, Duration)>,
        cancelled: impl Future<Output = ()>,
    ) -> (Outcome, Option<Duration>) {
        let mut ran_for = None;
        let outcome = self.execute_timed(spec, deadline, cancelled, &mut ran_for).await;
        (outcome, ran_for)
    }

    /// [`execute`](Self::execute), setting `ran_for` once the worker has run the task.
    async fn execute_timed(
        &self,
        spec: &TaskSpec,
        deadline: Option<(Instant, Duration)>,
        cancelled: impl Future<Output = ()>,
        ran_for: &mut Option<Duration>,
    ) -> Outcome {
        if let Some(refused) = self.refused(spec) {
            return Outcome::Answer(refused);
        }
        let session = spec.session_key();
        let (worker, mut slot) = match &session {
            Some(key) => {
                let worker = self.route(key);
                (worker, self.slots[worker].lock().await)
            }
            None => self.sessionless_worker().await,
        };
        tokio::pin!(cancelled);
        // Too late to run: past its deadline, or with under a quarter of its allowance left
        // after waiting for its worker (it would be killed, and its gamer charged, for time
        // it spent queued). The coordinator re-dispatches it at its deadline.
        let too_late = deadline.is_some_and(|(d, allowance)| Instant::now() + allowance / 4 >= d);
        if too_late || (&mut cancelled).now_or_never().is_some() {
            // Its deadline passed, or its connection closed, while it waited for its worker:
            // the coordinator re-dispatches it. The worker was not running it: keep it.
            return Outcome::Cancelled;
        }
        // Its gamer's earlier tasks may have used up its allowance while it waited.
        if let Some(refused) = self.refused(spec) {
            return Outcome::Answer(refused);
        }
        if let Some(key) = &session {
            // The worker may have been lost (and the route forgotten) while we waited.
            self.routes().entry(key.clone()).or_insert(Route { worker, last_used: Instant::now() }).last_used =
                Instant::now();
        }
        if let Some(proc) = slot.as_mut()
            && !matches!(proc.child.try_wait(), Ok(None))
        {
            tracing::warn!(worker, "worker exited while idle; restarting it");
            *slot = None;
            self.forget(worker);
            if let Some(key) = &session {
                self.routes().insert(key.clone(), Route { worker, last_used: Instant::now() });
            }
        }
        if slot.is_none() {
            match self.start() {
                Ok(proc) => *slot = Some(proc),
                Err(e) => {
                    tracing::error!(exe = %self.exe.display(), "cannot start a worker: {e}");
                    return Outcome::Answer(lost_task_error(
                        spec,
                        ErrorCode::Internal,
                        "the peer could not start a worker process".into(),
                    ));
                }
            }
        }
        let proc = slot.as_mut().expect("a worker was just started");
        let request = encode_task(spec);
        if request.len() > MAX_WORKER_FRAME {
            return Outcome::Answer(lost_task_error(
                spec,
                ErrorCode::LimitExceeded,
                format!("the task is {} bytes; a worker takes at most {MAX_WORKER_FRAME}", request.len()),
            ));
        }
        let exchange = async {
            crate::pipe::write(&mut proc.stdin, &request).await?;
            crate::pipe::read(&mut proc.stdout).await
        };
        let limit = async {
            match deadline {
                Some((d, _)) => tokio::time::sleep_until((d + self.grace).into()).await,
                None => std::future::pending().await,
            }
        };
        self.busy.fetch_add(1, Ordering::AcqRel);
        let started = Instant::now();
        let outcome = tokio::select! {
            r = exchange => Ok(r),
            // Running past its deadline is the task's fault; a lost connection is nobody's.
            // Charged only when the task itself ran for its whole allowance: time it spent
            // queued behind others is not its fault.
            () = limit => Err(("its deadline passed", deadline.is_some_and(|(_, allowance)| started.elapsed() >= allowance))),
            () = &mut cancelled => Err(("the connection to the coordinator was lost", false)),
        };
        self.busy.fetch_sub(1, Ordering::AcqRel);
        *ran_for = Some(started.elapsed());
        match outcome {
            Ok(Ok(answer)) => match decode_answer(answer) {
                Ok(result) => {
                    if let Some(key) = &session {
                        self.keep_route_only_if_held(key, worker, &result);
                    }
                    Outcome::Answer(result)
                }
                Err(e) => {
                    tracing::error!(worker, "worker answered garbage ({e}); restarting it");
                    self.kill(worker, &mut slot).await;
                    self.charge(spec);
                    Outcome::Answer(lost_task_error(spec, ErrorCode::Internal, "the peer's worker failed".into()))
                }
            },
            Ok(Err(e)) => {
                let status = self.kill(worker, &mut slot).await;
                self.charge(spec);
                tracing::warn!(
                    worker,
                    task_type = %spec.task_type,
                    session_id = ?spec.session_id,
                    ?status,
                    "worker died while running a task ({e}); restarting it"
                );
                Outcome::Answer(lost_task_error(
                    spec,
                    ErrorCode::LimitExceeded,
                    "the task exhausted the worker's memory or CPU and was stopped; the worker's sessions were lost, send a full snapshot"
                        .into(),
                ))
            }
            Err((why, fault)) => {
                tracing::warn!(worker, task_type = %spec.task_type, "cancelling a running task: {why}; restarting its worker");
                self.kill(worker, &mut slot).await;
                if fault {
                    self.charge(spec);
                }
                Outcome::Cancelled
            }
        }
    }

    /// The `limit_exceeded` answer to a task whose gamer's tasks killed too many workers
    /// recently (with resync and tick for session tasks), or `None` to run it.
    fn refused(&self, spec: &TaskSpec) -> Option<Payload> {
        let gamer = spec.gamer_id.as_deref();
        let refusal = self.deaths.lock().unwrap_or_else(PoisonError::into_inner).refusal(gamer, Instant::now())?;
        tracing::debug!(gamer_id = ?gamer, task_type = %spec.task_type, "refusing a task: its gamer's tasks keep killing workers");
        let message = refusal.message();
        Some(if spec.session_id.is_some() {
            lost_task_error(spec, ErrorCode::LimitExceeded, message)
        } else {
            to_payload(&TaskError::new(ErrorCode::LimitExceeded, message)).expect("task errors always serialize")
        })
    }

    /// Charges the death of the worker that ran `spec` to its gamer.
    fn charge(&self, spec: &TaskSpec) {
        let gamer = spec.gamer_id.as_deref();
        let mut deaths = self.deaths.lock().unwrap_or_else(PoisonError::into_inner);
        deaths.record(gamer, Instant::now());
        if let Some(refusal) = deaths.refusal(gamer, Instant::now()) {
            tracing::warn!(
                gamer_id = ?gamer,
                deaths = refusal.deaths,
                refused_for_s = refusal.remaining.as_secs(),
                "a gamer's tasks keep killing workers; refusing its tasks on this peer for the rest of the window"
            );
        }
    }

    /// The worker for a sessionless task (see the [module docs](self)): a free one among
    /// [`sessionless_candidates`], else the first of those holding the fewest sessions to
    /// become free.
    async fn sessionless_worker(&self) -> (usize, tokio::sync::MutexGuard<'_, Option<Proc>>) {
        let load = self.load(&self.routes());
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = sessionless_candidates(&load, start);
        for &w in &candidates {
            if let Ok(guard) = self.slots[w].try_lock() {
                return (w, guard);
            }
        }
        let fewest = load[candidates[0]];
        let waits = candidates
            .into_iter()
            .filter(|&w| load[w] == fewest)
            .map(|w| Box::pin(async move { (w, self.slots[w].lock().await) }));
        futures_util::future::select_all(waits).await.0
    }

    fn start(&self) -> std::io::Result<Proc> {
        let mut command = Command::new(&self.exe);
        command
            .arg(WORKER_ARG)
            .env(SETTINGS_ENV, &self.settings)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // Its own process group: a Ctrl-C meant for the peer does not kill the worker in
        // the middle of a task the graceful shutdown waits for.
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        tracing::debug!(pid = ?child.id(), "worker started");
        Ok(Proc { child, stdin, stdout })
    }

    /// Kills a worker, reaps it, forgets its sessions and starts a new one in its place
    /// (when that fails, the next task tries again); returns how the old one ended.
    async fn kill(&self, worker: usize, slot: &mut Option<Proc>) -> Option<std::process::ExitStatus> {
        let mut status = None;
        if let Some(mut proc) = slot.take() {
            let _ = proc.child.start_kill();
            status = proc.child.wait().await.ok();
        }
        self.forget(worker);
        match self.start() {
            Ok(proc) => *slot = Some(proc),
            Err(e) => tracing::error!(worker, exe = %self.exe.display(), "cannot restart a worker: {e}"),
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_either_kind_come_back_as_written() {
        let json = raw_payload(r#"{"status":"success","tick":3}"#.into()).unwrap();
        let binary = Payload::binary(vec![0x51, 1, 0, 0xff]);
        for answer in [json, binary] {
            assert_eq!(decode_answer(encode_answer(&answer)).unwrap(), answer);
        }
        assert!(decode_answer(Vec::new()).is_err());
        assert!(decode_answer(b"{}X".to_vec()).is_err());
        assert!(decode_answer(vec![0xff, b'J']).is_err(), "not UTF-8");
    }

    /// Workers that are never started (placement only looks at routes and locks).
    fn unstarted(count: usize) -> Workers {
        let settings = WorkerSettings {
            memory_limit_bytes: 0,
            idle_timeout_ms: 60_000,
            max_sessions: 100,
            memory_budget: u64::MAX,
            gamer_memory_budget: u64::MAX,
            budgets: Budgets::default(),
            shape_cache_bytes: 0,
        };
        let deaths = DeathCounter::new(3, Duration::from_secs(60));
        Workers::new("/nonexistent".into(), Vec::new(), count, &settings, Duration::ZERO, deaths)
    }

    #[test]
    fn sessionless_tasks_prefer_workers_without_sessions_then_the_fewest() {
        assert_eq!(sessionless_candidates(&[1, 0], 0), vec![1]);
        assert_eq!(sessionless_candidates(&[1, 0, 2, 0], 0), vec![1, 3]);
        assert_eq!(sessionless_candidates(&[1, 0, 2, 0], 2), vec![3, 1], "equals are rotated");
        assert_eq!(sessionless_candidates(&[0, 0], 1), vec![1, 0]);
        assert_eq!(sessionless_candidates(&[2, 1, 3], 0), vec![1, 0, 2]);
        assert_eq!(sessionless_candidates(&[2, 1, 1], 2), vec![2, 1, 0]);
    }

    #[test]
    fn a_new_session_goes_to_the_worker_holding_the_fewest() {
        let workers = unstarted(3);
        assert_eq!(workers.route("a"), 0);
        assert_eq!(workers.route("b"), 1);
        assert_eq!(workers.route("c"), 2);
        assert_eq!(workers.route("a"), 0, "sticky");
        workers.forget(1);
        assert_eq!(workers.route("d"), 1, "the worker that lost its sessions is the emptiest");
        assert_eq!(workers.route("e"), 0);
    }

    #[tokio::test]
    async fn a_sessionless_task_keeps_away_from_the_session_holding_worker() {
        let workers = unstarted(2);
        assert_eq!(workers.route("honest"), 0);
        for _ in 0..4 {
            let (w, guard) = workers.sessionless_worker().await;
            assert_eq!(w, 1, "never the honest session's worker while worker 1 holds none");
            drop(guard);
        }
        // Worker 1 busy: the next sessionless task waits for it rather than taking worker 0,
        // even though worker 0 is free...
        let (_, busy) = workers.sessionless_worker().await;
        let waiting = workers.sessionless_worker();
        tokio::pin!(waiting);
        assert!((&mut waiting).now_or_never().is_none(), "took the honest session's worker");
        // ...and runs there once it is free.
        drop(busy);
        assert_eq!(waiting.await.0, 1);
        // With a session on every worker, the free one holding the fewest is taken.
        assert_eq!(workers.route("other"), 1);
        assert_eq!(workers.route("third"), 0);
        let (w, _guard) = workers.sessionless_worker().await;
        assert_eq!(w, 1);
        let (w, _guard2) = workers.sessionless_worker().await;
        assert_eq!(w, 0, "worker 1 is busy; worker 0 is free");
    }

    #[test]
    fn a_lost_task_is_answered_with_its_tick_and_resync() {
        let spec = TaskSpec {
            task_id: "t".into(),
            task_type: "physics_step".into(),
            session_id: Some("s".into()),
            gamer_id: None,
            task_data: raw_payload(r#"{"tick":41,"dt":0.016,"add":[]}"#.into()).unwrap(),
        };
        let e: TaskError =
            serde_json::from_str(lost_task_error(&spec, ErrorCode::LimitExceeded, "gone".into()).json().unwrap())
                .unwrap();
        assert_eq!((e.code, e.resync, e.tick), (ErrorCode::LimitExceeded, true, Some(41)));
    }
}
