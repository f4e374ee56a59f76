//! Collision and contact-force events: raised once for what happens, in a deterministic
//! order, identically in two worlds and through both wires, and exactly once across a move
//! of the session to another world (a snapshot carrying the touching pairs).

use std::collections::BTreeSet;

use p2c2r_protocol::ErrorCode;
use p2c2r_protocol::packed::{ResultDecoder, ResultEncoder, decode_request, encode_request};
use p2c2r_protocol::physics::{
    BodyDesc, BodyId, BodyType, EventKind, KinematicTarget, PhysicsEvent, PhysicsStepRequest, PhysicsStepResult, Shape,
    active_events,
};
use p2c2r_sim::physics::PhysicsWorld;

const DT: f32 = 1.0 / 60.0;
const IDENTITY: [f32; 4] = [0.0, 0.0, 0.0, 1.0];
const COLLISIONS: u8 = active_events::COLLISION_EVENTS;
const ALL_EVENTS: u8 = active_events::ALL;

fn snapshot(add: Vec<BodyDesc>) -> PhysicsStepRequest {
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

fn tick(tick: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() }
}

fn ground(id: BodyId) -> BodyDesc {
    BodyDesc::new(id, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0]).with_body_type(BodyType::Fixed)
}

fn listening(mut d: BodyDesc, events: u8) -> BodyDesc {
    d.active_events = events;
    d
}

fn sensor_zone(id: BodyId, position: [f32; 3]) -> BodyDesc {
    let mut d =
        BodyDesc::new(id, Shape::Box { half_extents: [1.0, 1.0, 1.0] }, position).with_body_type(BodyType::Fixed);
    d.sensor = true;
    d.active_events = COLLISIONS;
    d
}

/// The (kind, body1, body2) of events, for comparisons that ignore the numbers.
fn kinds(events: &[PhysicsEvent]) -> Vec<(&'static str, BodyId, BodyId)> {
    events
        .iter()
        .map(|e| {
            let kind = match e.kind {
                EventKind::Started { .. } => "started",
                EventKind::Stopped { removed: false, .. } => "stopped",
                EventKind::Stopped { removed: true, .. } => "removed",
                EventKind::ContactForce { .. } => "force",
            };
            (kind, e.body1, e.body2)
        })
        .collect()
}

/// Steps `world` through ticks `from..to` (plain ticks) and returns every event with its
/// tick.
fn run(world: &mut PhysicsWorld, from: u64, to: u64) -> Vec<(u64, PhysicsEvent)> {
    let mut all = Vec::new();
    for t in from..to {
        let result = world.step(&tick(t)).expect("the world steps");
        all.extend(result.events.into_iter().map(|e| (t, e)));
    }
    all
}

#[test]
fn a_box_through_a_sensor_is_reported_entering_and_leaving_exactly_once() {
    let mut world = PhysicsWorld::new();
    // A box falls through a zone that pushes nothing, onto the ground.
    let falling = BodyDesc::new(2, Shape::Box { half_extents: [0.25; 3] }, [0.0, 8.0, 0.0]);
    let first = world.step(&snapshot(vec![ground(0), sensor_zone(1, [0.0, 4.0, 0.0]), falling])).unwrap();
    assert!(first.events.is_empty(), "nothing touches yet: {:?}", first.events);
    let events = run(&mut world, 1, 180);
    let sensor_events: Vec<_> = events.iter().filter(|(_, e)| (e.body1, e.body2) == (1, 2)).collect();
    assert_eq!(sensor_events.len(), 2, "entered and left once: {sensor_events:?}");
    let (entered, left) = (sensor_events[0], sensor_events[1]);
    assert!(matches!(entered.1.kind, EventKind::Started { sensor: true }), "{entered:?}");
    assert!(matches!(left.1.kind, EventKind::Stopped { sensor: true, removed: false }), "{left:?}");
    assert!(entered.0 < left.0, "it entered before it left");
    // The sensor pushed nothing: the box fell through it in free fall and landed.
    let landed = world.state(2).unwrap().position[1];
    assert!((landed - 0.25).abs() < 0.02, "the box rests on the ground: {landed}");
    // The ground asked for nothing and the box neither: no event about them.
    assert!(events.iter().all(|(_, e)| e.body1 == 1), "only the zone reports: {events:?}");
}

#[test]
fn a_landing_raises_one_start_and_contact_forces_above_the_threshold_pointing_at_body2() {
    let mut world = PhysicsWorld::new();
    let mut crate_ = listening(BodyDesc::new(5, Shape::Box { half_extents: [0.5; 3] }, [0.0, 3.0, 0.0]), ALL_EVENTS);
    crate_.mass = Some(10.0);
    // Resting, the ground pushes with the crate's weight (98 N); landing, far harder.
    crate_.contact_force_threshold = 500.0;
    world.step(&snapshot(vec![ground(1), crate_])).unwrap();
    let events = run(&mut world, 1, 240);
    let starts: Vec<_> = events.iter().filter(|(_, e)| matches!(e.kind, EventKind::Started { .. })).collect();
    assert_eq!(starts.len(), 1, "one landing: {events:?}");
    assert!(!events.iter().any(|(_, e)| matches!(e.kind, EventKind::Stopped { .. })), "it stays down");
    let forces: Vec<_> = events
        .iter()
        .filter_map(|(t, e)| match e.kind {
            EventKind::ContactForce { total_force, total_force_magnitude, .. } => {
                Some((*t, total_force, total_force_magnitude))
            }
            _ => None,
        })
        .collect();
    assert!(!forces.is_empty(), "the landing pushed harder than 500 N");
    let landing = starts[0].0;
    for (t, total, magnitude) in &forces {
        assert!(*magnitude > 500.0, "only forces above the threshold: {magnitude}");
        assert!(*t >= landing && *t < landing + 10, "around the landing (tick {landing}), not while resting: {t}");
        // The crate (body 5, the larger id) is pushed up by the ground.
        assert!(total[1] > 0.0, "the force on body2 points up: {total:?}");
    }
}

#[test]
fn a_kinematic_body_walking_into_a_fixed_trigger_zone_is_noticed() {
    let mut world = PhysicsWorld::new();
    let walker = BodyDesc::new(3, Shape::Capsule { half_height: 0.5, radius: 0.3 }, [-5.0, 1.0, 0.0])
        .with_body_type(BodyType::Kinematic);
    world.step(&snapshot(vec![sensor_zone(1, [0.0, 1.0, 0.0]), walker])).unwrap();
    let mut seen = Vec::new();
    for t in 1..=100u64 {
        let mut r = tick(t);
        let x = -5.0 + t as f32 * 0.1;
        r.kinematic_targets = vec![KinematicTarget { id: 3, position: [x, 1.0, 0.0], rotation: IDENTITY }];
        seen.extend(kinds(&world.step(&r).unwrap().events));
    }
    assert_eq!(seen, [("started", 1, 3), ("stopped", 1, 3)], "walked in and out");
}

/// A scene raising every kind of event: a pile of listening crates dropped on the
/// ground, a sensor zone they fall through, a crate removed while touching.
fn busy_scene() -> Vec<BodyDesc> {
    let mut bodies = vec![ground(0), sensor_zone(1, [0.0, 3.0, 0.0])];
    for i in 0..24u64 {
        let (x, z) = ((i % 4) as f32 * 0.9 - 1.35, (i / 4 % 3) as f32 * 0.9 - 0.9);
        let y = 5.0 + (i / 12) as f32 * 1.2;
        let mut d = listening(BodyDesc::new(10 + i, Shape::Box { half_extents: [0.4; 3] }, [x, y, z]), ALL_EVENTS);
        d.contact_force_threshold = 50.0;
        bodies.push(d);
    }
    bodies
}

fn busy_request(t: u64) -> PhysicsStepRequest {
    let mut r = if t == 0 { snapshot(busy_scene()) } else { tick(t) };
    if t == 150 {
        r.remove = vec![12];
    }
    r
}

#[test]
fn events_are_identical_in_two_worlds_and_through_both_wires_for_600_ticks() {
    let (mut plain, mut wired) = (PhysicsWorld::new(), PhysicsWorld::new());
    let (mut encoder, mut decoder) = (ResultEncoder::new(), ResultDecoder::new());
    let mut total = 0;
    for t in 0..600 {
        let request = busy_request(t);
        let mut bytes = Vec::new();
        encode_request(&request, &mut bytes);
        let a = plain.step(&request).unwrap();
        let b = wired.step(&decode_request(&bytes).unwrap()).unwrap();
        let json = |r: &PhysicsStepResult| serde_json::to_string(r).unwrap();
        assert_eq!(json(&a), json(&b), "tick {t}");
        // The packed result carries the events bit for bit, and so does JSON.
        let mut frame = Vec::new();
        encoder.encode(&a, t == 0, DT, &mut frame).unwrap();
        let unpacked = decoder.decode(&frame).unwrap();
        assert_eq!(unpacked.events, a.events, "packed, tick {t}");
        let parsed: PhysicsStepResult = serde_json::from_str(&json(&a)).unwrap();
        assert_eq!(parsed.events, a.events, "JSON, tick {t}");
        total += a.events.len();
        if t == 150 {
            assert!(
                kinds(&a.events).iter().any(|&(k, b1, b2)| k == "removed" && (b1 == 12 || b2 == 12)),
                "{:?}",
                a.events
            );
        }
    }
    assert_eq!(plain.digest(), wired.digest());
    assert!(total > 100, "the scene raised events: {total}");
}

/// The pairs a gamer holds after applying `events`: started and not yet stopped.
fn apply(touching: &mut BTreeSet<[BodyId; 2]>, events: &[PhysicsEvent]) {
    for e in events {
        match e.kind {
            EventKind::Started { .. } => assert!(touching.insert([e.body1, e.body2]), "started twice: {e:?}"),
            EventKind::Stopped { .. } => assert!(touching.remove(&[e.body1, e.body2]), "stopped unstarted: {e:?}"),
            EventKind::ContactForce { .. } => {}
        }
    }
}

#[test]
fn a_session_moved_to_another_world_raises_each_event_exactly_once() {
    // The original world, and what the gamer learns from it.
    let mut original = PhysicsWorld::new();
    let mut held = BTreeSet::new();
    for t in 0..120 {
        apply(&mut held, &original.step(&busy_request(t)).unwrap().events);
    }
    assert!(!held.is_empty(), "crates touch at the hand-over");
    // A snapshot of the gamer's copy (the world's states are exactly what it applied),
    // with the touching pairs it holds, to a new world.
    let mut add = busy_scene();
    for d in &mut add {
        if let Some(s) = original.state(d.id) {
            (d.position, d.rotation, d.linvel, d.angvel, d.sleeping) =
                (s.position, s.rotation, s.linvel, s.angvel, s.sleeping);
        }
    }
    let mut moved = PhysicsWorld::new();
    let mut handover =
        PhysicsStepRequest { tick: 120, touching: held.iter().copied().collect(), ..snapshot(add.clone()) };
    let first = moved.step(&handover).unwrap();
    apply(&mut held, &first.events);
    assert!(
        !first.events.iter().any(|e| matches!(e.kind, EventKind::Started { .. })),
        "the pairs still touching are not started again: {:?}",
        first.events
    );
    // It goes on with the same rules: every start matched by one stop, through a removal.
    for t in 121..400 {
        let mut r = tick(t);
        if t == 150 {
            r.remove = vec![12];
        }
        apply(&mut held, &moved.step(&r).unwrap().events);
    }
    // Without the touching pairs, the new world would start them all over again.
    handover.touching.clear();
    let naive = PhysicsWorld::new().step(&handover).unwrap();
    let restarted = naive.events.iter().filter(|e| matches!(e.kind, EventKind::Started { .. })).count();
    assert!(restarted > 0, "the touching pairs are what keeps events exactly once");
}

#[test]
fn hostile_event_settings_and_touching_pairs_get_clear_errors_and_leave_the_world_as_it_was() {
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(busy_scene())).unwrap();
    let before = world.digest();
    let mut bad_bits = busy_scene();
    bad_bits[3].active_events = 0b100;
    let mut bad_threshold = busy_scene();
    bad_threshold[3].contact_force_threshold = f32::NAN;
    let touching = |pairs: Vec<[BodyId; 2]>| PhysicsStepRequest { touching: pairs, ..snapshot(busy_scene()) };
    let cases = [
        (snapshot(bad_bits), "active_events"),
        (snapshot(bad_threshold), "contact_force_threshold"),
        (touching(vec![[11, 10]]), "smaller id first"),
        (touching(vec![[10, 11], [10, 11]]), "out of order or repeated"),
        (touching(vec![[10, 999]]), "does not add"),
        // Two bodies that ask for no events:
        (PhysicsStepRequest { touching: vec![[0, 500]], ..snapshot(vec![ground(0), ground(500)]) }, "neither body"),
        (PhysicsStepRequest { touching: vec![[10, 11]], ..tick(1) }, "only a snapshot"),
    ];
    for (request, expected) in cases {
        let error = world.step(&request).expect_err(expected);
        assert_eq!(error.code, ErrorCode::InvalidPayload, "{expected}: {error:?}");
        assert!(error.message.contains(expected), "{expected}: {}", error.message);
        assert_eq!(world.digest(), before, "{expected}: the world is as it was");
    }
    let too_many = touching((0..=p2c2r_protocol::limits::MAX_TOUCHING_PAIRS as u64).map(|i| [i, i + 1]).collect());
    assert_eq!(world.step(&too_many).expect_err("too many").code, ErrorCode::LimitExceeded);
}

#[test]
fn a_fixed_trigger_zone_on_the_ground_does_not_report_the_ground() {
    let mut world = PhysicsWorld::new();
    // The zone overlaps the ground and a fixed wall; only the falling ball is news.
    let wall =
        BodyDesc::new(5, Shape::Box { half_extents: [0.2, 2.0, 3.0] }, [0.5, 2.0, 0.0]).with_body_type(BodyType::Fixed);
    let falling = BodyDesc::new(7, Shape::Sphere { radius: 0.3 }, [0.0, 4.0, 0.0]);
    let first = world.step(&snapshot(vec![ground(0), sensor_zone(1, [0.0, 0.5, 0.0]), wall, falling])).unwrap();
    assert!(first.events.is_empty(), "{:?}", first.events);
    let events = run(&mut world, 1, 120);
    let pairs: BTreeSet<(BodyId, BodyId)> = events.iter().map(|(_, e)| (e.body1, e.body2)).collect();
    assert_eq!(pairs, BTreeSet::from([(1, 7)]), "only the ball entered the zone: {events:?}");
}

#[test]
fn a_body_thrown_out_of_the_world_stops_its_contacts_after_the_last_step() {
    let mut world = PhysicsWorld::new();
    let edge = 999_998.0;
    let shelf = BodyDesc::new(1, Shape::Box { half_extents: [2.0, 0.5, 2.0] }, [edge, -0.5, 0.0])
        .with_body_type(BodyType::Fixed);
    let ball = listening(BodyDesc::new(2, Shape::Sphere { radius: 0.5 }, [edge, 0.5, 0.0]), COLLISIONS);
    let mut touching = BTreeSet::new();
    apply(&mut touching, &world.step(&snapshot(vec![shelf, ball])).unwrap().events);
    for t in 1..30 {
        apply(&mut touching, &world.step(&tick(t)).unwrap().events);
    }
    assert!(touching.contains(&[1, 2]), "the ball rests on the shelf");
    let mut throw = tick(30);
    throw.set_velocity =
        vec![p2c2r_protocol::physics::SetVelocity { id: 2, linvel: [300.0, 0.0, 0.0], angvel: [0.0; 3] }];
    let result = world.step(&throw).unwrap();
    assert_eq!(result.removed, [2], "{:?}", result.bodies);
    let stop = PhysicsEvent { step: 1, body1: 1, body2: 2, kind: EventKind::Stopped { sensor: false, removed: true } };
    assert_eq!(result.events.last(), Some(&stop), "after the tick's one step: {:?}", result.events);
    apply(&mut touching, &result.events);
    assert!(touching.is_empty());
}
