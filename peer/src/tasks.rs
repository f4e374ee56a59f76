//! Running one task: parse its payload, route it by `task_type`, produce the result JSON.
//!
//! Pure dispatch with no I/O; the connection layer decides where and when this runs.
//! Every failure becomes a [`TaskError`] result: input never panics the peer, and a panic
//! inside a task (a bug) is caught, answered with `internal`, and costs only that session.

use std::hash::{Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};

use p2c2r_protocol::ai::{AiNavigateRequest, AiNavigateResult};
use p2c2r_protocol::physics::{PhysicsStepRequest, Shape};
use p2c2r_protocol::{ErrorCode, Payload, TaskError, TaskSpec, TaskStatus, limits, packed, task_types, to_payload};
use p2c2r_sim::shape_cache::ShapeCache;

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
            task_type @ (task_types::PHYSICS_STEP | task_types::PHYSICS_STEP_FULL) => {
                let session = session_key(spec, task_type)?;
                physics_step_packed(sessions, spec.gamer_id.as_deref(), &session, &bytes, Report::of(task_type))
            }
            other => Err(TaskError::new(
                ErrorCode::InvalidPayload,
                format!(
                    "{:?} takes a JSON payload; only physics_step and physics_step_full have a binary one",
                    truncate(other, 64)
                ),
            )),
        };
    }
    let payload = spec.task_data.json().expect("a payload is JSON when it is not binary");
    match spec.task_type.as_str() {
        task_type @ (task_types::PHYSICS_STEP | task_types::PHYSICS_STEP_FULL) => {
            let session = session_key(spec, task_type)?;
            physics_step(sessions, spec.gamer_id.as_deref(), &session, payload, Report::of(task_type))
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
    report: Report,
) -> Result<Payload, TaskError> {
    if payload.len() > 2 * limits::MAX_BODIES_PER_SESSION {
        probe::<PhysicsProbe>(payload)?;
    }
    let request: PhysicsStepRequest = parse(payload)?;
    let key = RequestKey::of(payload.as_bytes(), report);
    step_session(sessions, gamer, session_id, &request, key, ResultWire::Json, report)
}

/// A `physics_step` whose payload is [`packed`]: the answer is packed too, a delta
/// against the session's previous packed answer (a keyframe after a snapshot, and for
/// [`Report::Full`]).
fn physics_step_packed(
    sessions: &SessionStore,
    gamer: Option<&str>,
    session_id: &str,
    payload: &[u8],
    report: Report,
) -> Result<Payload, TaskError> {
    let request = packed::decode_request(payload).map_err(|e| {
        TaskError::new(ErrorCode::InvalidPayload, format!("malformed packed {}: {e}", report.task_type()))
    })?;
    step_session(sessions, gamer, session_id, &request, RequestKey::of(payload, report), ResultWire::Packed, report)
}

/// Which bodies a physics answer lists: the two physics task types run the same step
/// and differ only in their answer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Report {
    /// `physics_step`: the bodies whose state changed on the lattice (the world's own
    /// report).
    Changed,
    /// `physics_step_full`: every body of the world ([`PhysicsWorld::states`]); packed,
    /// a keyframe, so a gamer whose copy (or decoder baseline) went wrong is corrected.
    Full,
}

impl Report {
    fn of(task_type: &str) -> Self {
        if task_type == task_types::PHYSICS_STEP_FULL { Report::Full } else { Report::Changed }
    }

    fn task_type(self) -> &'static str {
        match self {
            Report::Changed => task_types::PHYSICS_STEP,
            Report::Full => task_types::PHYSICS_STEP_FULL,
        }
    }
}

/// How a physics result is answered: as the request came.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ResultWire {
    Json,
    Packed,
}

/// What identifies a request (its bytes and which answer it asks for), to answer a
/// duplicate delivery from the cache: a `physics_step_full` is never answered with a
/// `physics_step`'s cached answer to the same bytes, nor the reverse.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RequestKey {
    hash: u64,
    len: usize,
}

impl RequestKey {
    fn of(bytes: &[u8], report: Report) -> Self {
        let mut h = std::hash::DefaultHasher::new();
        report.hash(&mut h);
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
    report: Report,
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
            let size = match &session.physics {
                Some(world) => world.projected_size(request),
                None => PhysicsWorld::requested_size(request),
            };
            sessions
                .charge(session_id, Session::estimate(size, session.grid_cells()))
                .map_err(|e| over_budget(e, tick))?;
            let world = session.physics.get_or_insert_with(PhysicsWorld::new);
            // Only a request that sends or names a large shape needs the store's shape
            // cache (plain ticks never touch it), and then only for a moment: the names
            // are looked up, the request runs with its own cache (building and hashing
            // outside the lock), and its new shapes are kept once it succeeded.
            let shapes = request.add.iter().any(|d| d.shape.is_cacheable() || matches!(d.shape, Shape::Cached { .. }));
            let mut result = if shapes {
                let mut own = ShapeCache::new(usize::MAX);
                {
                    let mut store = sessions.shape_cache();
                    for d in &request.add {
                        if let Shape::Cached { sha256, .. } = &d.shape
                            && let Some(shape) = store.get(sha256)
                        {
                            own.insert(*sha256, shape);
                        }
                    }
                }
                let result = world.step_cached(request, &budgets, &mut own)?;
                let mut store = sessions.shape_cache();
                for (hash, shape) in own.drain() {
                    store.insert_for(gamer.unwrap_or_default(), hash, shape);
                }
                result
            } else {
                world.step_limited(request, &budgets)?
            };
            if report == Report::Full {
                result.bodies = world.states();
            }
            let result = match wire {
                ResultWire::Json => to_payload(&result).expect("physics results always serialize"),
                ResultWire::Packed => {
                    let mut bytes = Vec::new();
                    let elapsed = request.dt * request.steps as f32;
                    // A full answer is a keyframe: the gamer's decoder may hold a wrong
                    // baseline (a liar's), and the chain restarts from this answer.
                    let keyframe = request.snapshot || report == Report::Full;
                    // The world's states are valid and sorted, so encoding cannot fail;
                    // if it ever did, the gamer would get an error and resync, never a
                    // frame it cannot decode.
                    session.physics_wire.encode(&result, keyframe, elapsed, &mut bytes).map_err(|e| {
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
                let world = session.physics.as_ref().map(PhysicsWorld::size).unwrap_or_default();
                sessions.charge(session_id, Session::estimate(world, w * h)).map_err(|e| over_budget(e, tick))?;
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

    use p2c2r_protocol::packed::ResultDecoder;
    use p2c2r_protocol::physics::{BodyDesc, BodyState, BodyType, PhysicsStepResult, Shape};
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

    const DT: f32 = 1.0 / 60.0;

    /// A ground, a kinematic paddle, a sphere asleep in mid-air, one falling from high up,
    /// and twelve cubes settling on the ground.
    fn scene() -> PhysicsStepRequest {
        let mut add = vec![
            BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0])
                .with_body_type(BodyType::Fixed),
            BodyDesc::new(40, Shape::Box { half_extents: [0.2, 0.5, 2.0] }, [-9.0, 0.5, 0.0])
                .with_body_type(BodyType::Kinematic),
            BodyDesc { sleeping: true, ..BodyDesc::new(50, Shape::Sphere { radius: 0.5 }, [8.0, 6.0, 8.0]) },
            // Falling for seconds: awake throughout.
            BodyDesc::new(60, Shape::Sphere { radius: 0.5 }, [-15.0, 80.0, -15.0]),
        ];
        for i in 0..12u64 {
            let cube = BodyDesc::new(
                i + 1,
                Shape::Box { half_extents: [0.5; 3] },
                [(i % 4) as f32 * 1.5, 0.6, (i / 4) as f32 * 1.5],
            );
            add.push(BodyDesc { rotation: [0.0, 0.2, 0.0, 0.98], ..cube });
        }
        PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
    }

    fn plain(tick: u64) -> PhysicsStepRequest {
        PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() }
    }

    fn json_spec(task_type: &str, request: &PhysicsStepRequest) -> TaskSpec {
        TaskSpec { task_type: task_type.into(), task_data: to_payload(request).unwrap(), ..step("s", "{}") }
    }

    fn packed_spec(task_type: &str, request: &PhysicsStepRequest) -> TaskSpec {
        let mut bytes = Vec::new();
        packed::encode_request(request, &mut bytes);
        TaskSpec { task_type: task_type.into(), task_data: Payload::binary(bytes), ..step("s", "{}") }
    }

    fn result(answer: &Payload) -> PhysicsStepResult {
        let json = answer.json().unwrap_or_else(|| panic!("not JSON: {answer:?}"));
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not a physics result: {e}: {json}"))
    }

    fn bytes(answer: &Payload) -> Vec<u8> {
        match answer {
            Payload::Binary(bytes) => bytes.to_vec(),
            other => panic!("not a packed answer: {other:?}"),
        }
    }

    fn world_states(store: &SessionStore) -> Vec<BodyState> {
        store.with_session("s", false, |s| s.physics.as_ref().expect("a world").states()).expect("the session")
    }

    /// Runs the scene's snapshot and plain ticks 1..`until` (packed or JSON), returning the
    /// answers.
    fn history(store: &SessionStore, until: u64, wire: ResultWire) -> Vec<Payload> {
        let spec = |r: &PhysicsStepRequest| match wire {
            ResultWire::Json => json_spec(task_types::PHYSICS_STEP, r),
            ResultWire::Packed => packed_spec(task_types::PHYSICS_STEP, r),
        };
        std::iter::once(scene()).chain((1..until).map(plain)).map(|r| run_task_payload(store, &spec(&r))).collect()
    }

    #[test]
    fn a_full_step_lists_every_body_and_steps_like_a_plain_one() {
        let (full, plain_store) =
            (SessionStore::new(Duration::from_secs(60)), SessionStore::new(Duration::from_secs(60)));
        let k = 60;
        history(&full, k, ResultWire::Json);
        history(&plain_store, k, ResultWire::Json);
        let answer = run_task_payload(&full, &json_spec(task_types::PHYSICS_STEP_FULL, &plain(k)));
        let changed = result(&run_task_payload(&plain_store, &json_spec(task_types::PHYSICS_STEP, &plain(k))));
        let r = result(&answer);
        assert_eq!((r.status, r.tick), (TaskStatus::Success, k));
        let mut ids: Vec<_> = scene().add.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        assert_eq!(r.bodies.iter().map(|b| b.id).collect::<Vec<_>>(), ids, "every body, fixed ones too, by id");
        assert_eq!(r.bodies, world_states(&full), "each as the world holds it");
        assert!(r.bodies.iter().any(|b| b.sleeping) && r.bodies.iter().any(|b| !b.sleeping));
        assert!(changed.bodies.len() < r.bodies.len(), "the plain answer leaves unchanged bodies out");
        for b in &changed.bodies {
            assert_eq!(r.bodies.iter().find(|f| f.id == b.id), Some(b));
        }
        assert_eq!((&r.removed, &r.digest), (&changed.removed, &changed.digest), "the same step");
        // The session continues as if the tick had been a plain one.
        for t in k + 1..k + 30 {
            let a = run_task_payload(&full, &json_spec(task_types::PHYSICS_STEP, &plain(t)));
            let b = run_task_payload(&plain_store, &json_spec(task_types::PHYSICS_STEP, &plain(t)));
            assert_eq!(a.json(), b.json(), "tick {t}");
        }
        // A full snapshot lists the fixed bodies a plain one leaves out.
        let r = result(&run_task_payload(&full, &json_spec(task_types::PHYSICS_STEP_FULL, &scene())));
        assert_eq!(r.bodies.len(), scene().add.len());
    }

    #[test]
    fn a_packed_full_step_is_a_keyframe_that_restarts_any_decoders_chain() {
        let store = SessionStore::new(Duration::from_secs(60));
        let k = 60;
        let mut chain = ResultDecoder::new();
        for answer in history(&store, k, ResultWire::Packed) {
            chain.decode(&bytes(&answer)).unwrap();
        }
        let full = bytes(&run_task_payload(&store, &packed_spec(task_types::PHYSICS_STEP_FULL, &plain(k))));
        let states = world_states(&store);
        let next = bytes(&run_task_payload(&store, &packed_spec(task_types::PHYSICS_STEP, &plain(k + 1))));

        // A decoder holding nothing: only a keyframe decodes.
        let mut fresh = ResultDecoder::new();
        let decoded = fresh.decode(&full).expect("a keyframe");
        // A decoder holding the session's chain, and one holding another chain (a liar's).
        let mut liar = ResultDecoder::new();
        let other = SessionStore::new(Duration::from_secs(60));
        let mut moved = scene();
        moved.add[3].position[1] += 2.0;
        for request in std::iter::once(moved).chain((1..=k).map(plain)) {
            liar.decode(&bytes(&run_task_payload(&other, &packed_spec(task_types::PHYSICS_STEP, &request)))).unwrap();
        }
        assert_eq!(liar.last_tick(), Some(k));
        assert!(liar.decode(&next).is_err(), "a delta is refused against another chain");
        for decoder in [&mut chain, &mut liar] {
            assert_eq!(decoder.decode(&full).unwrap(), decoded);
            assert_eq!(*decoder, fresh, "the keyframe's bodies are the baseline");
        }
        assert_eq!(decoded.bodies.len(), scene().add.len(), "every body");
        assert_eq!(decoded.bodies, states);
        assert_eq!(fresh.baseline().len(), scene().add.len());
        let after = fresh.decode(&next).expect("the following delta continues the keyframe");
        assert_eq!(chain.decode(&next).unwrap(), after);
        assert_eq!(liar.decode(&next).unwrap(), after);
        assert_eq!(after.tick, k + 1);
    }

    #[test]
    fn honest_peers_answer_a_full_step_with_the_same_bytes() {
        for wire in [ResultWire::Json, ResultWire::Packed] {
            let answers: Vec<Payload> = (0..2)
                .map(|_| {
                    let store = SessionStore::new(Duration::from_secs(60));
                    history(&store, 45, wire);
                    let spec = match wire {
                        ResultWire::Json => json_spec(task_types::PHYSICS_STEP_FULL, &plain(45)),
                        ResultWire::Packed => packed_spec(task_types::PHYSICS_STEP_FULL, &plain(45)),
                    };
                    let answer = run_task_payload(&store, &spec);
                    // Redelivered: the same bytes, from the cache.
                    assert_eq!(run_task_payload(&store, &spec), answer);
                    answer
                })
                .collect();
            assert_eq!(answers[0], answers[1]);
            if wire == ResultWire::Packed {
                let json_store = SessionStore::new(Duration::from_secs(60));
                history(&json_store, 45, ResultWire::Json);
                let full =
                    result(&run_task_payload(&json_store, &json_spec(task_types::PHYSICS_STEP_FULL, &plain(45))));
                let decoded = ResultDecoder::new().decode(&bytes(&answers[0])).unwrap();
                assert_eq!(decoded, full, "packed and JSON answers hold the same states, bit for bit");
            }
        }
    }

    #[test]
    fn a_full_step_is_never_answered_from_a_plain_steps_cache() {
        for wire in [ResultWire::Json, ResultWire::Packed] {
            let store = SessionStore::new(Duration::from_secs(60));
            let answers = history(&store, 10, wire);
            let (request, plain_answer) = (plain(9), answers.last().unwrap());
            let spec = |task_type| match wire {
                ResultWire::Json => json_spec(task_type, &request),
                ResultWire::Packed => packed_spec(task_type, &request),
            };
            assert_eq!(run_task_payload(&store, &spec(task_types::PHYSICS_STEP)), *plain_answer, "redelivered");
            let e: TaskError =
                serde_json::from_str(run_task_payload(&store, &spec(task_types::PHYSICS_STEP_FULL)).json().unwrap())
                    .unwrap();
            assert_eq!((e.code, e.resync, e.tick), (ErrorCode::OutOfOrder, true, Some(9)), "the tick already ran");
        }
    }

    #[test]
    fn a_full_step_for_an_unknown_session_asks_for_resync() {
        let store = SessionStore::new(Duration::from_secs(60));
        for spec in
            [json_spec(task_types::PHYSICS_STEP_FULL, &plain(7)), packed_spec(task_types::PHYSICS_STEP_FULL, &plain(7))]
        {
            let e: TaskError = serde_json::from_str(run_task_payload(&store, &spec).json().unwrap()).unwrap();
            assert_eq!((e.code, e.resync, e.tick), (ErrorCode::UnknownSession, true, Some(7)));
        }
        assert!(store.session_ids().is_empty());
        let e: TaskError = serde_json::from_str(
            run_task_payload(
                &store,
                &TaskSpec { session_id: None, ..json_spec(task_types::PHYSICS_STEP_FULL, &scene()) },
            )
            .json()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(e.code, ErrorCode::InvalidPayload);
        assert!(e.message.contains("physics_step_full needs a session_id"), "{}", e.message);
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
