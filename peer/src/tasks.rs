//! Running one task: parse its payload, route it by `task_type`, produce the result JSON.
//!
//! Pure dispatch with no I/O; the connection layer decides where and when this runs.
//! Every failure becomes a [`TaskError`] result: input never panics the peer, and a panic
//! inside a task (a bug) is caught, answered with `internal`, and costs only that session.

use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};

use p2c2r_protocol::ai::{AiNavigateRequest, AiNavigateResult};
use p2c2r_protocol::physics::PhysicsStepRequest;
use p2c2r_protocol::{ErrorCode, Payload, TaskError, TaskSpec, TaskStatus, limits, packed, task_types, to_payload};

use crate::payload::{AiProbe, PhysicsProbe, parse, probe};
use crate::seed;
use crate::session::{CachedResult, OverBudget, Session, SessionStore, StoreFull};
use p2c2r_sim::navigation::Navigator;
use p2c2r_sim::physics::PhysicsWorld;

/// Runs one task and returns its result as JSON text: a success object, or a
/// [`TaskError`] object (`"status": "error"`).
///
/// ```
/// use p2c2r_protocol::{TaskSpec, raw_payload};
/// use peer::{SessionStore, run_task};
/// use std::time::Duration;
///
/// let sessions = SessionStore::new(Duration::from_secs(60));
/// let spec = TaskSpec {
///     task_id: "t1".into(),
///     task_type: "physics_step".into(),
///     session_id: Some("s1".into()),
///     gamer_id: None,
///     task_data: raw_payload(r#"{"tick":0,"snapshot":true,"dt":0.016,"add":[{"id":1,"shape":{"kind":"sphere","radius":0.5},"position":[0,5,0]}]}"#.into()).unwrap(),
/// };
/// let result = run_task(&sessions, &spec);
/// assert!(result.starts_with(r#"{"status":"success","tick":0,"bodies":[{"id":1,"#), "{result}");
/// ```
pub fn run_task(sessions: &SessionStore, spec: &TaskSpec) -> String {
    match run_task_payload(sessions, spec) {
        Payload::Json(json) => json.get().to_owned(),
        // A packed request (possibly base64-wrapped in JSON) gets a packed answer: as
        // JSON text, that is its base64 wrapper.
        binary => serde_json::to_string(&binary).expect("payloads always serialize"),
    }
}

/// [`run_task`], returning the result ready to put in a `task_result` (no copy, no
/// re-parse).
pub fn run_task_payload(sessions: &SessionStore, spec: &TaskSpec) -> Payload {
    let outcome = catch_unwind(AssertUnwindSafe(|| dispatch(sessions, spec))).unwrap_or_else(|_| {
        tracing::error!(task_type = %spec.task_type, session_id = ?spec.session_id, "task panicked");
        let mut error = TaskError::new(ErrorCode::Internal, "the peer failed while running the task");
        if let Some(session_key) = spec.session_key() {
            sessions.remove(&session_key);
            error = error.with_resync();
        }
        Err(error)
    });
    outcome.unwrap_or_else(|error| to_payload(&error).expect("task errors always serialize"))
}

fn dispatch(sessions: &SessionStore, spec: &TaskSpec) -> Result<Payload, TaskError> {
    // A binary payload, or one a JSON connection carried base64-wrapped.
    if let Some(bytes) = spec.task_data.binary_bytes() {
        return match spec.task_type.as_str() {
            task_types::PHYSICS_STEP => {
                let session = session_key(spec, task_types::PHYSICS_STEP)?;
                physics_step_packed(sessions, spec.gamer_id.as_deref(), &session, &bytes)
            }
            other => Err(TaskError::new(
                ErrorCode::InvalidPayload,
                format!("{:?} takes a JSON payload; only physics_step has a binary one", truncate(other, 64)),
            )),
        };
    }
    let payload = spec.task_data.json().expect("a payload is JSON when it is not binary");
    match spec.task_type.as_str() {
        task_types::PHYSICS_STEP => {
            physics_step(sessions, spec.gamer_id.as_deref(), &session_key(spec, task_types::PHYSICS_STEP)?, payload)
        }
        task_types::AI_NAVIGATE => {
            ai_navigate(sessions, spec.gamer_id.as_deref(), &session_key(spec, task_types::AI_NAVIGATE)?, payload)
        }
        task_types::SEED_PHYSICS => seed::physics_within(payload, sessions.budgets()),
        task_types::SEED_AI => seed::ai(payload),
        other => Err(TaskError::new(
            ErrorCode::UnknownTaskType,
            format!("this peer runs {:?}, not {:?}", task_types::ALL, truncate(other, 64)),
        )),
    }
}

fn physics_step(
    sessions: &SessionStore,
    gamer: Option<&str>,
    session_id: &str,
    payload: &str,
) -> Result<Payload, TaskError> {
    if payload.len() > 2 * limits::MAX_BODIES_PER_SESSION {
        probe::<PhysicsProbe>(payload)?;
    }
    let request: PhysicsStepRequest = parse(payload)?;
    step_session(sessions, gamer, session_id, &request, RequestKey::of(payload.as_bytes()), ResultWire::Json)
}

/// A `physics_step` whose payload is [`packed`]: the answer is packed too, a delta
/// against the session's previous packed answer (a keyframe after a snapshot).
fn physics_step_packed(
    sessions: &SessionStore,
    gamer: Option<&str>,
    session_id: &str,
    payload: &[u8],
) -> Result<Payload, TaskError> {
    let request = packed::decode_request(payload)
        .map_err(|e| TaskError::new(ErrorCode::InvalidPayload, format!("malformed packed physics_step: {e}")))?;
    step_session(sessions, gamer, session_id, &request, RequestKey::of(payload), ResultWire::Packed)
}

/// How a physics result is answered: as the request came.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ResultWire {
    Json,
    Packed,
}

/// What identifies a request's bytes, to answer a duplicate delivery from the cache.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RequestKey {
    hash: u64,
    len: usize,
}

impl RequestKey {
    fn of(bytes: &[u8]) -> Self {
        let mut h = std::hash::DefaultHasher::new();
        bytes.hash(&mut h);
        RequestKey { hash: h.finish(), len: bytes.len() }
    }
}

fn step_session(
    sessions: &SessionStore,
    gamer: Option<&str>,
    session_id: &str,
    request: &PhysicsStepRequest,
    key: RequestKey,
    wire: ResultWire,
) -> Result<Payload, TaskError> {
    let budgets = *sessions.budgets();
    let tick = request.tick;
    sessions
        .try_with_gamer_session(gamer, session_id, request.snapshot, |session| {
            if let Some(cached) = &session.last_physics
                && cached.tick == request.tick
                && cached.request_hash == key.hash
                && cached.request_len == key.len
            {
                return Ok(cached.result.clone());
            }
            // Charge the session's memory for the world the request makes before building it.
            let bodies = session.physics.as_ref().map_or(request.add.len(), |w| w.projected_body_count(request));
            sessions
                .charge(session_id, Session::estimate(bodies, session.grid_cells()))
                .map_err(|e| over_budget(e, tick))?;
            let world = session.physics.get_or_insert_with(PhysicsWorld::new);
            let result = world.step_limited(request, &budgets)?;
            let result = match wire {
                ResultWire::Json => to_payload(&result).expect("physics results always serialize"),
                ResultWire::Packed => {
                    let mut bytes = Vec::new();
                    let elapsed = request.dt * request.steps as f32;
                    // The world's states are valid and sorted, so encoding cannot fail;
                    // if it ever did, the gamer would get an error and resync, never a
                    // frame it cannot decode.
                    session.physics_wire.encode(&result, request.snapshot, elapsed, &mut bytes).map_err(|e| {
                        session.physics_wire.reset();
                        TaskError::new(ErrorCode::Internal, format!("cannot pack the result: {e}")).with_resync()
                    })?;
                    Payload::binary(bytes)
                }
            };
            session.last_physics = Some(CachedResult {
                tick: request.tick,
                request_hash: key.hash,
                request_len: key.len,
                result: result.clone(),
            });
            Ok(result)
        })
        .map_err(|full| store_full(full, tick))?
        .unwrap_or_else(|| Err(unknown_session(tick)))
}

fn ai_navigate(
    sessions: &SessionStore,
    gamer: Option<&str>,
    session_id: &str,
    payload: &str,
) -> Result<Payload, TaskError> {
    if payload.len() > 2 * limits::MAX_AGENTS_PER_REQUEST {
        probe::<AiProbe>(payload)?;
    }
    let request: AiNavigateRequest = parse(payload)?;
    let tick = request.tick;
    if request.agents.len() > limits::MAX_AGENTS_PER_REQUEST {
        return Err(TaskError::new(
            ErrorCode::LimitExceeded,
            format!(
                "{} agents; at most {} are allowed per request",
                request.agents.len(),
                limits::MAX_AGENTS_PER_REQUEST
            ),
        )
        .with_tick(tick));
    }
    let budgets = *sessions.budgets();
    // Build the navigator before touching the session, so a bad grid changes nothing.
    let navigator = request.grid.as_ref().map(Navigator::new).transpose().map_err(|e| e.with_tick(tick))?;
    sessions
        .try_with_gamer_session(gamer, session_id, navigator.is_some(), |session| {
            if let Some(navigator) = navigator {
                let (w, h) = navigator.size();
                let bodies = session.physics.as_ref().map_or(0, PhysicsWorld::body_count);
                sessions.charge(session_id, Session::estimate(bodies, w * h)).map_err(|e| over_budget(e, tick))?;
                session.navigator = Some(navigator);
            }
            let Some(navigator) = &session.navigator else { return Err(unknown_session(tick)) };
            let agents = navigator
                .navigate_within(&request.agents, budgets.max_path_expansions, budgets.max_waypoints)
                .map_err(|e| e.with_tick(tick))?;
            Ok(to_payload(&AiNavigateResult { status: TaskStatus::Success, tick, agents })
                .expect("ai results always serialize"))
        })
        .map_err(|full| store_full(full, tick))?
        .unwrap_or_else(|| Err(unknown_session(tick)))
}

fn over_budget(e: OverBudget, tick: u64) -> TaskError {
    let whose = if e.per_gamer { "this gamer's sessions on this peer" } else { "this peer's sessions" };
    TaskError::new(
        ErrorCode::LimitExceeded,
        format!(
            "the session would need about {} KiB, over the memory budget of {} KiB for {whose}, and nothing idle can be evicted; try another peer or a smaller world",
            e.requested / 1024,
            e.budget / 1024
        ),
    )
    .with_resync()
    .with_tick(tick)
}

/// Checks the task's session id and returns the key its session is stored under.
fn session_key(spec: &TaskSpec, task_type: &str) -> Result<String, TaskError> {
    match spec.session_id.as_deref() {
        None | Some("") => Err(TaskError::new(
            ErrorCode::InvalidPayload,
            format!("{task_type} needs a session_id: the peer keeps the session's state between ticks"),
        )),
        Some(id) if id.len() > limits::MAX_ID_BYTES => Err(TaskError::new(
            ErrorCode::InvalidPayload,
            format!("session_id is {} bytes; at most {} are allowed", id.len(), limits::MAX_ID_BYTES),
        )),
        Some(_) => Ok(spec.session_key().expect("the session id is present")),
    }
}

fn unknown_session(tick: u64) -> TaskError {
    TaskError::new(ErrorCode::UnknownSession, "this peer does not hold the session; send a full snapshot")
        .with_resync()
        .with_tick(tick)
}

fn store_full(full: StoreFull, tick: u64) -> TaskError {
    TaskError::new(
        ErrorCode::LimitExceeded,
        format!("this peer already holds {} sessions, all in use; try another peer", full.max_sessions),
    )
    .with_resync()
    .with_tick(tick)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use p2c2r_protocol::raw_payload;

    use super::*;

    fn step(session: &str, data: &str) -> TaskSpec {
        TaskSpec {
            task_id: "t".into(),
            task_type: task_types::PHYSICS_STEP.into(),
            session_id: Some(session.into()),
            gamer_id: None,
            task_data: raw_payload(data.into()).unwrap(),
        }
    }

    #[test]
    fn a_new_session_in_a_full_busy_store_is_refused_with_limit_exceeded() {
        let store = SessionStore::new(Duration::from_secs(60)).with_max_sessions(1);
        let snapshot = r#"{"tick":7,"snapshot":true,"dt":0.016}"#;
        assert!(run_task(&store, &step("a", snapshot)).contains("success"));
        // While "a" is in use, "b" cannot take its place.
        store
            .with_session("a", false, |_| {
                let answer = run_task(&store, &step("b", snapshot));
                let error: TaskError = serde_json::from_str(&answer).unwrap();
                assert_eq!(error.code, ErrorCode::LimitExceeded, "{answer}");
                assert!(error.resync);
                assert_eq!(error.tick, Some(7));
            })
            .unwrap();
        // Once "a" is idle, it is evicted to make room.
        assert!(run_task(&store, &step("b", snapshot)).contains("success"));
        assert_eq!(store.session_ids(), vec!["b"]);
    }
}
