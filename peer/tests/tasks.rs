//! Task dispatch through `peer::run_task`: sessions, resync, idle expiry, seed tasks and
//! every kind of bad payload. No network.

use std::sync::Arc;
use std::time::Duration;

use p2c2r_protocol::ai::{AgentStatus, AiNavigateResult};
use p2c2r_protocol::physics::PhysicsStepResult;
use p2c2r_protocol::{ErrorCode, Message, TaskError, TaskSpec, TaskStatus, codec, raw_payload};
use peer::seed::{SeedAiResult, SeedPhysicsResult};
use peer::{ManualClock, SessionStore, run_task};

fn spec(task_type: &str, session: Option<&str>, json: &str) -> TaskSpec {
    TaskSpec {
        task_id: "t".into(),
        task_type: task_type.into(),
        session_id: session.map(str::to_owned),
        gamer_id: None,
        task_data: raw_payload(json.to_owned()).expect("test payloads are JSON"),
    }
}

fn store() -> SessionStore {
    SessionStore::new(Duration::from_secs(60))
}

fn error(result: &str) -> TaskError {
    serde_json::from_str(result).unwrap_or_else(|e| panic!("not a task error: {e}: {result}"))
}

fn physics(result: &str) -> PhysicsStepResult {
    serde_json::from_str(result).unwrap_or_else(|e| panic!("not a physics result: {e}: {result}"))
}

const SNAPSHOT: &str = r#"{"tick":0,"snapshot":true,"dt":0.016666668,"add":[
    {"id":0,"shape":{"kind":"box","half_extents":[10,0.5,10]},"body_type":"fixed","position":[0,-0.5,0]},
    {"id":1,"shape":{"kind":"box","half_extents":[0.5,0.5,0.5]},"position":[0,3,0]}]}"#;

fn tick(t: u64) -> String {
    format!(r#"{{"tick":{t},"dt":0.016666668}}"#)
}

#[test]
fn physics_step_runs_a_session_tick_by_tick() {
    let s = store();
    let r = physics(&run_task(&s, &spec("physics_step", Some("s1"), SNAPSHOT)));
    assert_eq!((r.status, r.tick, r.bodies.len()), (TaskStatus::Success, 0, 1));
    for t in 1..=30 {
        let r = physics(&run_task(&s, &spec("physics_step", Some("s1"), &tick(t))));
        assert_eq!(r.tick, t);
        assert!(r.bodies[0].position[1] < 3.0);
    }
    assert!(s.contains("s1"));
}

#[test]
fn a_session_lost_with_its_peer_resyncs_on_another_peer() {
    let (a, b) = (store(), store());
    let mut last = None;
    for t in 0..=10 {
        let payload = if t == 0 { SNAPSHOT.to_owned() } else { tick(t) };
        last = Some(physics(&run_task(&a, &spec("physics_step", Some("s"), &payload))));
    }
    // Peer `a` dies; tick 11 lands on `b`, which never saw the session.
    let e = error(&run_task(&b, &spec("physics_step", Some("s"), &tick(11))));
    assert_eq!(e.code, ErrorCode::UnknownSession);
    assert!(e.resync);
    assert_eq!(e.tick, Some(11));
    // The gamer resends its latest states as a snapshot for tick 11; `b` carries on.
    let state = last.unwrap().bodies[0];
    let snapshot = format!(
        r#"{{"tick":11,"snapshot":true,"dt":0.016666668,"add":[
            {{"id":0,"shape":{{"kind":"box","half_extents":[10,0.5,10]}},"body_type":"fixed","position":[0,-0.5,0]}},
            {{"id":1,"shape":{{"kind":"box","half_extents":[0.5,0.5,0.5]}},"position":{:?},"rotation":{:?},"linvel":{:?},"angvel":{:?}}}]}}"#,
        state.position, state.rotation, state.linvel, state.angvel
    );
    let r = physics(&run_task(&b, &spec("physics_step", Some("s"), &snapshot)));
    assert_eq!(r.tick, 11);
    for t in 12..=20 {
        assert_eq!(physics(&run_task(&b, &spec("physics_step", Some("s"), &tick(t)))).tick, t);
    }
}

#[test]
fn two_gamers_with_the_same_session_id_get_separate_worlds() {
    let sessions = store();
    let of =
        |gamer: &str, json: &str| TaskSpec { gamer_id: Some(gamer.into()), ..spec("physics_step", Some("main"), json) };
    assert_eq!(physics(&run_task(&sessions, &of("alice", SNAPSHOT))).tick, 0);
    // Bob never sent a snapshot: his "main" is not Alice's.
    let bob = error(&run_task(&sessions, &of("bob", &tick(1))));
    assert_eq!((bob.code, bob.resync), (ErrorCode::UnknownSession, true));
    assert_eq!(physics(&run_task(&sessions, &of("alice", &tick(1)))).tick, 1);
    // Ids chosen to collide if the key were a plain concatenation.
    let a = TaskSpec { gamer_id: Some("a/b".into()), ..spec("physics_step", Some("c"), SNAPSHOT) };
    let b = TaskSpec { gamer_id: Some("a".into()), ..spec("physics_step", Some("b/c"), "{}") };
    assert_ne!(a.session_key(), b.session_key());
}

#[test]
fn out_of_order_ticks_get_a_resync_error() {
    let s = store();
    run_task(&s, &spec("physics_step", Some("s"), SNAPSHOT));
    run_task(&s, &spec("physics_step", Some("s"), &tick(1)));
    let e = error(&run_task(&s, &spec("physics_step", Some("s"), &tick(3))));
    assert_eq!((e.code, e.resync, e.tick), (ErrorCode::OutOfOrder, true, Some(3)));
    // The session is intact: tick 2 still works.
    physics(&run_task(&s, &spec("physics_step", Some("s"), &tick(2))));
}

#[test]
fn a_redelivered_tick_gets_the_same_bytes_again() {
    let s = store();
    run_task(&s, &spec("physics_step", Some("s"), SNAPSHOT));
    let first = run_task(&s, &spec("physics_step", Some("s"), &tick(1)));
    let again = run_task(&s, &spec("physics_step", Some("s"), &tick(1)));
    assert_eq!(first, again, "at-least-once delivery must not cost a resync");
    let next = physics(&run_task(&s, &spec("physics_step", Some("s"), &tick(2))));
    assert_eq!(next.tick, 2);
}

#[test]
fn idle_sessions_are_dropped_after_the_configured_timeout() {
    let clock = ManualClock::new();
    let s = SessionStore::with_clock(Duration::from_secs(30), Arc::new(clock.clone()));
    run_task(&s, &spec("physics_step", Some("idle"), SNAPSHOT));
    run_task(&s, &spec("physics_step", Some("busy"), SNAPSHOT));
    clock.advance(Duration::from_secs(20));
    physics(&run_task(&s, &spec("physics_step", Some("busy"), &tick(1))));
    clock.advance(Duration::from_secs(20));
    assert_eq!(s.evict_idle(), 1, "only the session idle for 40 s goes");
    assert_eq!(s.session_ids(), vec!["busy".to_owned()]);
    let e = error(&run_task(&s, &spec("physics_step", Some("idle"), &tick(1))));
    assert_eq!((e.code, e.resync), (ErrorCode::UnknownSession, true));
    physics(&run_task(&s, &spec("physics_step", Some("busy"), &tick(2))));
}

#[test]
fn physics_and_ai_need_a_session_id() {
    let s = store();
    for task_type in ["physics_step", "ai_navigate"] {
        let e = error(&run_task(&s, &spec(task_type, None, SNAPSHOT)));
        assert_eq!(e.code, ErrorCode::InvalidPayload, "{task_type}");
        assert!(e.message.contains("session_id"));
    }
}

#[test]
fn bad_payloads_get_error_results() {
    let s = store();
    run_task(&s, &spec("physics_step", Some("s"), SNAPSHOT));
    let body = r#"{"id":9,"shape":{"kind":"sphere","radius":0.5}}"#;
    let million_bodies = format!(r#"{{"tick":1,"dt":0.016,"add":[{}]}}"#, vec![body; 1_000_000].join(","));
    let million_ids = format!(r#"{{"tick":1,"dt":0.016,"remove":[{}]}}"#, vec!["1"; 1_000_000].join(","));
    let cases: Vec<(&str, String, ErrorCode)> = vec![
        ("not an object", "[1,2,3]".into(), ErrorCode::InvalidPayload),
        ("wrong type", r#"{"tick":"one","dt":0.016}"#.into(), ErrorCode::InvalidPayload),
        ("missing dt", r#"{"tick":1}"#.into(), ErrorCode::InvalidPayload),
        ("negative tick", r#"{"tick":-1,"dt":0.016}"#.into(), ErrorCode::InvalidPayload),
        ("negative dt", r#"{"tick":1,"dt":-0.016}"#.into(), ErrorCode::InvalidPayload),
        ("dt overflowing to infinity", r#"{"tick":1,"dt":1e300}"#.into(), ErrorCode::InvalidPayload),
        ("NaN sent as null", r#"{"tick":1,"dt":0.016,"gravity":[0,null,0]}"#.into(), ErrorCode::InvalidPayload),
        (
            "unknown shape",
            r#"{"tick":1,"dt":0.016,"add":[{"id":3,"shape":{"kind":"teapot"}}]}"#.into(),
            ErrorCode::InvalidPayload,
        ),
        ("a million bodies", million_bodies, ErrorCode::LimitExceeded),
        ("a million removals", million_ids, ErrorCode::LimitExceeded),
        ("a thousand steps", r#"{"tick":1,"dt":0.016,"steps":1000}"#.into(), ErrorCode::LimitExceeded),
    ];
    for (what, payload, code) in cases {
        let result = run_task(&s, &spec("physics_step", Some("s"), &payload));
        let e = error(&result);
        assert_eq!(e.code, code, "{what}: {result}");
        assert_eq!(e.status, TaskStatus::Error);
        assert!(!e.message.is_empty());
    }
    // The session survived all of it.
    physics(&run_task(&s, &spec("physics_step", Some("s"), &tick(1))));
}

#[test]
fn nan_and_deep_nesting_inside_an_assignment_frame_are_handled() {
    // A literal NaN is not JSON: the frame itself fails to decode (the peer logs and
    // keeps reading; see tests/process.rs).
    let frame = r#"{"msg_type":"task_assignment","task_id":"1:1","task_data":{"task_id":"t","task_type":"physics_step","session_id":"s","task_data":{"tick":1,"dt":NaN}}}"#;
    assert!(codec::decode(frame).is_err());
    // Absurd nesting is forwarded as raw text and refused by the peer's parser.
    let deep = format!(
        r#"{{"msg_type":"task_assignment","task_id":"1:1","task_data":{{"task_id":"t","task_type":"physics_step","session_id":"s","task_data":{}{}}}}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let Ok(Message::TaskAssignment(a)) = codec::decode(&deep) else { panic!("the frame decodes") };
    let e = error(&run_task(&store(), &a.task_data));
    assert_eq!(e.code, ErrorCode::InvalidPayload);
}

#[test]
fn unknown_task_types_are_refused() {
    let e = error(&run_task(&store(), &spec("render_frame", None, "{}")));
    assert_eq!(e.code, ErrorCode::UnknownTaskType);
    assert!(e.message.contains("render_frame") && e.message.contains("physics_step"));
}

#[test]
fn seed_physics_simulates_falling_bodies() {
    let s = store();
    let r: SeedPhysicsResult =
        serde_json::from_str(&run_task(&s, &spec("physics", None, r#"{"num_objects": 50}"#))).unwrap();
    assert_eq!((r.status, r.data.as_str(), r.num_objects, r.steps), (TaskStatus::Success, "physics_processed", 50, 1));
    assert!(r.mean_fall_speed > 0.1 && r.mean_fall_speed < 0.2, "one 1/60 s step of free fall: {r:?}");
    assert!(r.min_height >= 4.9 && r.max_height <= 7.0, "{r:?}");
    // The seed gamer's other shape, and no payload at all.
    for payload in [r#"{"objects": []}"#, "null", "{}"] {
        let r: SeedPhysicsResult = serde_json::from_str(&run_task(&s, &spec("physics", None, payload))).unwrap();
        assert_eq!(r.num_objects, 0, "{payload}");
    }
    let e = error(&run_task(&s, &spec("physics", None, r#"{"num_objects": 1000000}"#)));
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    let e = error(&run_task(&s, &spec("physics", None, r#"{"num_objects": -3}"#)));
    assert_eq!(e.code, ErrorCode::InvalidPayload);
    assert!(s.is_empty(), "seed tasks keep no session");
}

#[test]
fn seed_ai_gets_a_clear_result() {
    let r: SeedAiResult =
        serde_json::from_str(&run_task(&store(), &spec("ai", None, r#"{"model": "default"}"#))).unwrap();
    assert_eq!((r.status, r.data.as_str(), r.model.as_str()), (TaskStatus::Success, "ai_processed", "default"));
    assert_eq!((r.agents, r.paths_found, r.unreachable), (4, 3, 1));
    assert!(r.note.contains("ai_navigate"));
    let r: SeedAiResult = serde_json::from_str(&run_task(&store(), &spec("ai", None, "{}"))).unwrap();
    assert_eq!(r.model, "default");
    let e = error(&run_task(&store(), &spec("ai", None, r#"{"model": 42}"#)));
    assert_eq!(e.code, ErrorCode::InvalidPayload);
}

const GRID_REQUEST: &str = r#"{"tick":1,"grid":{"cell_size":1.0,"origin":[0,0],"rows":["....","..#.","...."]},
    "agents":[{"id":1,"position":[0.5,0,0.5],"goal":[3.5,0,2.5],"speed":2},
              {"id":2,"position":[0.5,0,2.5],"goal":[2.5,0,1.5],"speed":2}]}"#;

#[test]
fn ai_navigate_keeps_the_grid_per_session() {
    let s = store();
    let r: AiNavigateResult =
        serde_json::from_str(&run_task(&s, &spec("ai_navigate", Some("npc"), GRID_REQUEST))).unwrap();
    assert_eq!(r.tick, 1);
    assert_eq!(
        r.agents.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AgentStatus::Moving, AgentStatus::Unreachable]
    );
    // Later ticks leave the grid out.
    let later = r#"{"tick":2,"agents":[{"id":1,"position":[1.5,0,0.5],"goal":[3.5,0,2.5],"speed":2}]}"#;
    let r: AiNavigateResult = serde_json::from_str(&run_task(&s, &spec("ai_navigate", Some("npc"), later))).unwrap();
    assert_eq!(r.agents[0].status, AgentStatus::Moving);
    // A peer without the grid asks for it again.
    let e = error(&run_task(&store(), &spec("ai_navigate", Some("npc"), later)));
    assert_eq!((e.code, e.resync, e.tick), (ErrorCode::UnknownSession, true, Some(2)));
    // A bad grid is refused and the old one kept.
    let bad = r#"{"tick":3,"grid":{"cell_size":1.0,"rows":["...",".."]},"agents":[]}"#;
    assert_eq!(error(&run_task(&s, &spec("ai_navigate", Some("npc"), bad))).code, ErrorCode::InvalidPayload);
    let r: AiNavigateResult = serde_json::from_str(&run_task(&s, &spec("ai_navigate", Some("npc"), later))).unwrap();
    assert_eq!(r.agents.len(), 1);
}

#[test]
fn physics_and_ai_share_a_session_id() {
    let s = store();
    physics(&run_task(&s, &spec("physics_step", Some("game"), SNAPSHOT)));
    let _: AiNavigateResult =
        serde_json::from_str(&run_task(&s, &spec("ai_navigate", Some("game"), GRID_REQUEST))).unwrap();
    physics(&run_task(&s, &spec("physics_step", Some("game"), &tick(1))));
    assert_eq!(s.len(), 1);
}

#[test]
fn too_many_agents_or_cells_exceed_limits() {
    let s = store();
    let agent = r#"{"id":1,"position":[0.5,0,0.5],"goal":[0.5,0,0.5],"speed":1}"#;
    let many =
        format!(r#"{{"tick":1,"grid":{{"cell_size":1,"rows":["."]}},"agents":[{}]}}"#, vec![agent; 20_000].join(","));
    assert_eq!(error(&run_task(&s, &spec("ai_navigate", Some("a"), &many))).code, ErrorCode::LimitExceeded);
    let huge_grid = format!(r#"{{"tick":1,"grid":{{"cell_size":1,"rows":[{}]}}}}"#, vec![r#""""#; 1_100_000].join(","));
    assert_eq!(error(&run_task(&s, &spec("ai_navigate", Some("a"), &huge_grid))).code, ErrorCode::LimitExceeded);
}

fn gamer_spec(gamer: &str, task_type: &str, session: &str, json: &str) -> TaskSpec {
    TaskSpec { gamer_id: Some(gamer.into()), ..spec(task_type, Some(session), json) }
}

#[test]
fn a_gamer_flooding_the_peer_with_sessions_evicts_only_its_own() {
    let clock = ManualClock::new();
    let s = SessionStore::with_clock(Duration::from_secs(60), Arc::new(clock.clone()));
    // Gamer A: one physics session and one AI session, used every tick.
    let a_physics = gamer_spec("A", "physics_step", "world", SNAPSHOT);
    let a_ai = gamer_spec("A", "ai_navigate", "npcs", GRID_REQUEST);
    physics(&run_task(&s, &a_physics));
    let _: AiNavigateResult = serde_json::from_str(&run_task(&s, &a_ai)).unwrap();
    let keys = [a_physics.session_key().unwrap(), a_ai.session_key().unwrap()];
    // Gamer B creates 300 sessions, more than the store holds (256).
    let mut a_tick = 1;
    for i in 0..300 {
        clock.advance(Duration::from_millis(10));
        let r = run_task(&s, &gamer_spec("B", "physics_step", &format!("flood-{i}"), SNAPSHOT));
        physics(&r);
        for key in &keys {
            assert!(s.contains(key), "A's session {key} was evicted by B's query {i}");
        }
        if i % 10 == 0 {
            // A keeps playing, more slowly than B creates sessions.
            clock.advance(Duration::from_millis(10));
            physics(&run_task(&s, &gamer_spec("A", "physics_step", "world", &tick(a_tick))));
            a_tick += 1;
        }
    }
    assert_eq!(s.len(), s.max_sessions());
}

#[test]
fn session_memory_budgets_evict_the_flooder_and_refuse_what_cannot_fit() {
    // 8 MiB for everyone, 6 MiB per gamer: a 200-body session is about 1.7 MB.
    let s = store().with_memory_budget(8 << 20, 6 << 20);
    let bodies = |n: usize| {
        let add: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":{i},"shape":{{"kind":"sphere","radius":0.5}},"position":[{},0,0]}}"#, 3 * i))
            .collect();
        format!(r#"{{"tick":0,"snapshot":true,"dt":0.016,"gravity":[0,0,0],"add":[{}]}}"#, add.join(","))
    };
    let key = |gamer: &str, session: &str| gamer_spec(gamer, "physics_step", session, "{}").session_key().unwrap();
    let held = |gamer: &str| s.session_ids().iter().filter(|k| k.starts_with(&format!("1:{gamer}/"))).count();
    physics(&run_task(&s, &gamer_spec("A", "physics_step", "a", &bodies(300))));
    // B's sessions beyond its own budget evict B's oldest, never A's.
    for i in 0..6 {
        physics(&run_task(&s, &gamer_spec("B", "physics_step", &format!("b{i}"), &bodies(200))));
        assert!(s.contains(&key("A", "a")), "B's session {i} evicted A's");
        assert!(held("B") <= 3, "B holds {}", held("B"));
    }
    assert_eq!(held("B"), 3);
    // C's one session does not fit the peer's budget: the fastest creator (B) pays.
    physics(&run_task(&s, &gamer_spec("C", "physics_step", "c", &bodies(200))));
    assert!(s.contains(&key("A", "a")) && s.contains(&key("C", "c")));
    assert_eq!(held("B"), 2);
    assert!(s.estimated_bytes() <= 8 << 20, "{}", s.estimated_bytes());
    // One session larger than a gamer's budget is refused.
    let e = error(&run_task(&s, &gamer_spec("D", "physics_step", "huge", &bodies(800))));
    assert_eq!((e.code, e.resync, e.tick), (ErrorCode::LimitExceeded, true, Some(0)), "{e:?}");
    assert!(s.contains(&key("A", "a")) && s.contains(&key("C", "c")));
}

#[test]
fn ai_answers_are_bounded_in_waypoints() {
    use peer::Budgets;
    // A serpentine corridor: the path turns at every bend, and 2,000 agents share it.
    let mut rows = Vec::new();
    for r in 0..41 {
        let row: String = (0..41)
            .map(|c| match r % 4 {
                1 => {
                    if c == 40 {
                        '.'
                    } else {
                        '#'
                    }
                }
                3 => {
                    if c == 0 {
                        '.'
                    } else {
                        '#'
                    }
                }
                _ => '.',
            })
            .collect();
        rows.push(format!("{row:?}"));
    }
    let agent = r#"{"id":1,"position":[0.5,0,0.5],"goal":[0.5,0,40.5],"speed":1}"#;
    let request = format!(
        r#"{{"tick":3,"grid":{{"cell_size":1,"rows":[{}]}},"agents":[{}]}}"#,
        rows.join(","),
        vec![agent; 2000].join(",")
    );
    let limited = store().with_budgets(Budgets { max_waypoints: 10_000, ..Budgets::default() });
    let e = error(&run_task(&limited, &spec("ai_navigate", Some("maze"), &request)));
    assert_eq!((e.code, e.tick), (ErrorCode::LimitExceeded, Some(3)), "{e:?}");
    // The default budget lets it through.
    let r: AiNavigateResult =
        serde_json::from_str(&run_task(&store(), &spec("ai_navigate", Some("maze"), &request))).unwrap();
    assert!(r.agents[0].waypoints.len() > 10, "{}", r.agents[0].waypoints.len());
}
