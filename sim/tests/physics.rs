//! Physics sessions against known motion, determinism by bytes, tick ordering and payload
//! validation, through `p2c2r_sim::physics::PhysicsWorld`.

use p2c2r_protocol::physics::{
    ApplyForce, ApplyImpulse, BodyDesc, BodyState, BodyType, KinematicTarget, PhysicsStepRequest, SetPose, SetVelocity,
    Shape,
};
use p2c2r_protocol::{ErrorCode, limits};
use p2c2r_sim::Budgets;
use p2c2r_sim::physics::{
    BoundingBox, MAX_COORDINATE, MAX_SPEED, PairEstimate, PhysicsWorld, estimate_overlapping_pairs,
};

const DT: f32 = 1.0 / 60.0;

fn snapshot(tick: u64, add: Vec<BodyDesc>) -> PhysicsStepRequest {
    PhysicsStepRequest { tick, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

fn tick(tick: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() }
}

fn ground() -> BodyDesc {
    BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0]).with_body_type(BodyType::Fixed)
}

fn cube(id: u64, position: [f32; 3]) -> BodyDesc {
    BodyDesc::new(id, Shape::Box { half_extents: [0.5; 3] }, position)
}

fn state(states: &[BodyState], id: u64) -> BodyState {
    *states.iter().find(|b| b.id == id).unwrap_or_else(|| panic!("no state for body {id}"))
}

/// Runs ticks 1..=n after a snapshot, keeping the latest state of each body.
fn run(world: &mut PhysicsWorld, first: u64, n: u64, latest: &mut std::collections::BTreeMap<u64, BodyState>) {
    for t in first..first + n {
        let result = world.step(&tick(t)).unwrap();
        assert_eq!(result.tick, t);
        for b in result.bodies {
            latest.insert(b.id, b);
        }
    }
}

#[test]
fn ball_in_free_fall_follows_half_g_t_squared() {
    let mut world = PhysicsWorld::new();
    let y0 = 100.0;
    world
        .step(&PhysicsStepRequest {
            steps: 0,
            ..snapshot(0, vec![BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, y0, 0.0])])
        })
        .unwrap();
    for t in 1..=120u64 {
        let result = world.step(&tick(t)).unwrap();
        let ball = state(&result.bodies, 1);
        let time = t as f32 * DT;
        let expected = y0 - 0.5 * 9.81 * time * time;
        // Semi-implicit Euler is ahead of the exact curve by g·dt·t/2 (8 cm after 1 s).
        let tolerance = 9.81 * DT * time / 2.0 + 1e-3;
        assert!(
            (ball.position[1] - expected).abs() <= tolerance,
            "t={time}: y={} expected {expected}",
            ball.position[1]
        );
        assert!((ball.linvel[1] + 9.81 * time).abs() < 1e-3, "t={time}: vy={}", ball.linvel[1]);
        assert_eq!(ball.position[0], 0.0);
        assert!(!ball.sleeping);
    }
}

#[test]
fn gravity_can_be_changed_and_is_kept() {
    let mut world = PhysicsWorld::new();
    let mut start = snapshot(0, vec![BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 0.0, 0.0])]);
    start.gravity = Some([0.0, 0.0, 0.0]);
    start.steps = 0;
    world.step(&start).unwrap();
    let mut latest = Default::default();
    run(&mut world, 1, 30, &mut latest);
    assert_eq!(latest[&1].position, [0.0, 0.0, 0.0], "no gravity, no motion");
    assert_eq!(world.gravity(), [0.0, 0.0, 0.0]);
}

#[test]
fn box_dropped_on_the_ground_comes_to_rest_on_it() {
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(0, vec![ground(), cube(1, [0.0, 3.0, 0.0])])).unwrap();
    let mut fell_asleep_at = None;
    let mut last = None;
    for t in 1..=600u64 {
        let result = world.step(&tick(t)).unwrap();
        if let Some(b) = result.bodies.iter().find(|b| b.id == 1) {
            last = Some(*b);
            if b.sleeping && fell_asleep_at.is_none() {
                fell_asleep_at = Some(t);
            }
        } else {
            assert!(fell_asleep_at.is_some(), "a body is left out only once it was reported asleep");
        }
    }
    let b = last.unwrap();
    assert!(fell_asleep_at.is_some(), "the box never fell asleep");
    assert!((b.position[1] - 0.5).abs() < 0.02, "rests on the ground: y={}", b.position[1]);
    assert!(b.linvel.iter().all(|v| v.abs() < 0.05), "at rest: {:?}", b.linvel);
    assert!(b.sleeping);
}

#[test]
fn stack_of_boxes_stays_standing() {
    let mut world = PhysicsWorld::new();
    let mut bodies = vec![ground()];
    for i in 0..8u64 {
        bodies.push(cube(i + 1, [0.0, 0.5 + i as f32, 0.0]));
    }
    let mut latest = std::collections::BTreeMap::new();
    for b in world.step(&snapshot(0, bodies)).unwrap().bodies {
        latest.insert(b.id, b);
    }
    run(&mut world, 1, 600, &mut latest);
    for i in 0..8u64 {
        let b = latest[&(i + 1)];
        let expected_y = 0.5 + i as f32;
        assert!(b.position[0].abs() < 0.05 && b.position[2].abs() < 0.05, "box {i} slid: {:?}", b.position);
        assert!((b.position[1] - expected_y).abs() < 0.05, "box {i} at y={} expected {expected_y}", b.position[1]);
        assert!(b.rotation[3].abs() > 0.999, "box {i} tilted: {:?}", b.rotation);
    }
}

fn falling_stack_requests() -> Vec<PhysicsStepRequest> {
    let mut bodies = vec![ground()];
    for i in 0..10u64 {
        // Slightly offset and spaced so the stack falls, collides and topples a little.
        bodies.push(cube(i + 1, [0.05 * (i % 3) as f32, 2.0 + 1.2 * i as f32, 0.03 * (i % 2) as f32]));
    }
    bodies.push(BodyDesc { restitution: 0.5, ..BodyDesc::new(20, Shape::Sphere { radius: 0.3 }, [3.0, 5.0, 0.0]) });
    bodies.push(BodyDesc::new(21, Shape::Capsule { half_height: 0.4, radius: 0.2 }, [-3.0, 4.0, 0.0]));
    bodies.push(
        BodyDesc::new(30, Shape::Box { half_extents: [1.0, 0.2, 1.0] }, [6.0, 0.2, 0.0])
            .with_body_type(BodyType::Kinematic),
    );
    let mut requests = vec![snapshot(0, bodies)];
    for t in 1..600u64 {
        let mut r = tick(t);
        if t % 50 == 0 {
            r.impulses.push(ApplyImpulse { id: 20, impulse: [0.0, 3.0, 0.5], torque_impulse: [0.0, 0.1, 0.0] });
        }
        if t % 7 == 0 && t < 300 {
            r.forces.push(ApplyForce { id: 21, force: [5.0, 0.0, 0.0], torque: [0.0; 3] });
        }
        r.kinematic_targets.push(KinematicTarget {
            id: 30,
            position: [6.0 - t as f32 * 0.01, 0.2, 0.0],
            rotation: [0.0, 0.0, 0.0, 1.0],
        });
        if t == 300 {
            r.add.push(cube(40, [0.0, 15.0, 0.0]));
            r.remove.push(21);
            r.steps = 2;
        }
        requests.push(r);
    }
    requests
}

#[test]
fn two_independent_worlds_return_identical_bytes_for_600_ticks() {
    let requests = falling_stack_requests();
    let (mut a, mut b) = (PhysicsWorld::new(), PhysicsWorld::new());
    // Give `b` a different history first: determinism must not depend on it.
    b.step(&snapshot(0, vec![cube(99, [0.0, 1.0, 0.0])])).unwrap();
    let mut moved = 0;
    for request in &requests {
        let ra = serde_json::to_string(&a.step(request).unwrap()).unwrap();
        let rb = serde_json::to_string(&b.step(request).unwrap()).unwrap();
        assert_eq!(ra, rb, "tick {} differs", request.tick);
        assert!(ra.contains("\"digest\":\""), "every result carries its digest");
        moved += ra.len();
    }
    assert!(moved > 100_000, "the scene moved");
}

#[test]
fn the_digest_covers_the_whole_world_and_any_difference_changes_it() {
    let requests = falling_stack_requests();
    let (mut a, mut b) = (PhysicsWorld::new(), PhysicsWorld::new());
    let mut digests = std::collections::HashSet::new();
    for request in &requests[..200] {
        let (ra, rb) = (a.step(request).unwrap(), b.step(request).unwrap());
        let digest = ra.digest.clone().expect("every result carries a digest");
        assert_eq!(digest.len(), 16, "{digest}");
        assert!(digest.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{digest}");
        assert_eq!(ra.digest, rb.digest, "tick {}", request.tick);
        assert_eq!(Some(format!("{:016x}", a.digest())), ra.digest);
        digests.insert(digest);
    }
    assert!(digests.len() > 150, "the digest follows the state: {} distinct", digests.len());
    // The same next tick, except that one body of `b` gets a tiny velocity change.
    let body = requests[0].add.iter().find(|d| d.body_type == BodyType::Dynamic).expect("a dynamic body").id;
    let next = &requests[200];
    let nudged = PhysicsStepRequest {
        set_velocity: vec![SetVelocity { id: body, linvel: [0.0, 1.0e-3, 0.0], angvel: [0.0; 3] }],
        ..next.clone()
    };
    let (ra, rb) = (a.step(next).unwrap(), b.step(&nudged).unwrap());
    assert_ne!(ra.digest, rb.digest, "one body's difference changes the digest");
}

#[test]
fn states_are_sorted_by_body_id() {
    let mut world = PhysicsWorld::new();
    let ids = [17u64, 3, 99, 42, 5];
    let bodies = ids.iter().enumerate().map(|(i, &id)| cube(id, [i as f32 * 2.0, 5.0, 0.0])).collect();
    let result = world.step(&snapshot(0, bodies)).unwrap();
    let got: Vec<u64> = result.bodies.iter().map(|b| b.id).collect();
    assert_eq!(got, vec![3, 5, 17, 42, 99]);
}

#[test]
fn a_tick_without_snapshot_on_a_new_world_asks_for_resync() {
    let mut world = PhysicsWorld::new();
    let e = world.step(&tick(5)).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownSession);
    assert!(e.resync);
    assert_eq!(e.tick, Some(5));
}

#[test]
fn out_of_order_ticks_ask_for_resync_and_a_snapshot_recovers() {
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(10, vec![ground(), cube(1, [0.0, 2.0, 0.0])])).unwrap();
    world.step(&tick(11)).unwrap();
    for bad in [13, 11, 10, 0] {
        let e = world.step(&tick(bad)).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfOrder, "tick {bad}");
        assert!(e.resync);
        assert!(e.message.contains("expected tick 12"), "{}", e.message);
        assert_eq!(world.last_tick(), Some(11), "a rejected tick changes nothing");
    }
    world.step(&tick(12)).unwrap();
    // A snapshot is accepted at any tick, even an earlier one, and replaces the world.
    let r = world.step(&snapshot(3, vec![cube(7, [0.0, 9.0, 0.0])])).unwrap();
    assert_eq!(r.bodies.iter().map(|b| b.id).collect::<Vec<_>>(), vec![7]);
    assert_eq!(world.body_count(), 1);
    assert_eq!(world.last_tick(), Some(3));
    world.step(&tick(4)).unwrap();
}

#[test]
fn deltas_add_remove_teleport_and_push_bodies() {
    let mut world = PhysicsWorld::new();
    let mut start = snapshot(0, vec![cube(1, [0.0, 10.0, 0.0]), cube(2, [5.0, 10.0, 0.0])]);
    start.gravity = Some([0.0; 3]);
    world.step(&start).unwrap();

    let mut r = tick(1);
    r.remove = vec![2];
    r.add = vec![BodyDesc::new(3, Shape::Sphere { radius: 0.25 }, [0.0, 0.0, 5.0])];
    r.set_pose = vec![SetPose { id: 1, position: [1.0, 2.0, 3.0], rotation: [0.0, 0.0, 0.0, 1.0] }];
    r.set_velocity = vec![SetVelocity { id: 3, linvel: [1.0, 0.0, 0.0], angvel: [0.0; 3] }];
    r.forces = vec![ApplyForce { id: 1, force: [0.0, 1000.0 * 60.0, 0.0], torque: [0.0; 3] }];
    let result = world.step(&r).unwrap();
    assert_eq!(world.body_count(), 2);
    let b1 = state(&result.bodies, 1);
    // 1 m³ of density 1000 is 1000 kg: 60 kN for 1/60 s gives 1 m/s.
    assert!((b1.linvel[1] - 1.0).abs() < 1e-3, "{:?}", b1.linvel);
    assert!((b1.position[0] - 1.0).abs() < 1e-6 && (b1.position[2] - 3.0).abs() < 1e-6);
    let b3 = state(&result.bodies, 3);
    assert!((b3.position[0] - DT).abs() < 1e-5, "{:?}", b3.position);
    assert!(result.bodies.iter().all(|b| b.id != 2));

    // Forces last one tick only; impulses act once.
    let result = world.step(&tick(2)).unwrap();
    assert!((state(&result.bodies, 1).linvel[1] - 1.0).abs() < 1e-3);
    let mut r = tick(3);
    r.impulses = vec![ApplyImpulse { id: 1, impulse: [1000.0, 0.0, 0.0], torque_impulse: [0.0; 3] }];
    let result = world.step(&r).unwrap();
    assert!((state(&result.bodies, 1).linvel[0] - 1.0).abs() < 1e-3);
}

#[test]
fn kinematic_bodies_reach_their_targets_and_push_others() {
    let mut world = PhysicsWorld::new();
    let paddle = BodyDesc::new(1, Shape::Box { half_extents: [0.5, 0.5, 0.5] }, [0.0, 0.5, 0.0])
        .with_body_type(BodyType::Kinematic);
    let ball = BodyDesc::new(2, Shape::Sphere { radius: 0.5 }, [2.0, 0.5, 0.0]);
    let mut start = snapshot(0, vec![paddle, ball]);
    start.gravity = Some([0.0; 3]);
    world.step(&start).unwrap();
    for t in 1..=60u64 {
        let mut r = tick(t);
        r.steps = 4;
        r.dt = DT / 4.0;
        r.kinematic_targets =
            vec![KinematicTarget { id: 1, position: [t as f32 * 0.05, 0.5, 0.0], rotation: [0.0, 0.0, 0.0, 1.0] }];
        let result = world.step(&r).unwrap();
        let p = state(&result.bodies, 1);
        assert!((p.position[0] - t as f32 * 0.05).abs() < 1e-5, "tick {t}: {:?}", p.position);
    }
    let result = world.step(&tick(61)).unwrap();
    let ball = result.bodies.iter().find(|b| b.id == 2).copied();
    assert!(ball.is_some_and(|b| b.position[0] > 2.5 && b.linvel[0] > 0.0), "the paddle pushed the ball: {ball:?}");
}

#[test]
fn bad_values_are_rejected_and_leave_the_world_untouched() {
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(0, vec![ground(), cube(1, [0.0, 2.0, 0.0])])).unwrap();
    let bad: Vec<(&str, PhysicsStepRequest, ErrorCode)> = vec![
        ("negative dt", PhysicsStepRequest { dt: -0.016, ..tick(1) }, ErrorCode::InvalidPayload),
        ("zero dt", PhysicsStepRequest { dt: 0.0, ..tick(1) }, ErrorCode::InvalidPayload),
        ("NaN dt", PhysicsStepRequest { dt: f32::NAN, ..tick(1) }, ErrorCode::InvalidPayload),
        ("huge dt", PhysicsStepRequest { dt: 1.0e9, ..tick(1) }, ErrorCode::InvalidPayload),
        (
            "infinite gravity",
            PhysicsStepRequest { gravity: Some([0.0, f32::INFINITY, 0.0]), ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        (
            "too many steps",
            PhysicsStepRequest { steps: limits::MAX_STEPS_PER_TICK + 1, ..tick(1) },
            ErrorCode::LimitExceeded,
        ),
        (
            "NaN position",
            PhysicsStepRequest { add: vec![cube(2, [f32::NAN, 0.0, 0.0])], ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        (
            "far position",
            PhysicsStepRequest { add: vec![cube(2, [1.0e30, 0.0, 0.0])], ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        (
            "negative radius",
            PhysicsStepRequest { add: vec![BodyDesc::new(2, Shape::Sphere { radius: -1.0 }, [0.0; 3])], ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        (
            "zero mass",
            PhysicsStepRequest { add: vec![BodyDesc { mass: Some(0.0), ..cube(2, [0.0; 3]) }], ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        (
            "zero quaternion",
            PhysicsStepRequest { add: vec![BodyDesc { rotation: [0.0; 4], ..cube(2, [0.0; 3]) }], ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        ("duplicate id", PhysicsStepRequest { add: vec![cube(1, [0.0; 3])], ..tick(1) }, ErrorCode::InvalidPayload),
        (
            "same id twice",
            PhysicsStepRequest { add: vec![cube(5, [0.0; 3]), cube(5, [2.0; 3])], ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        ("remove unknown", PhysicsStepRequest { remove: vec![77], ..tick(1) }, ErrorCode::InvalidPayload),
        (
            "force on unknown",
            PhysicsStepRequest { forces: vec![ApplyForce { id: 77, force: [0.0; 3], torque: [0.0; 3] }], ..tick(1) },
            ErrorCode::InvalidPayload,
        ),
        (
            "NaN impulse",
            PhysicsStepRequest {
                impulses: vec![ApplyImpulse { id: 1, impulse: [f32::NAN, 0.0, 0.0], torque_impulse: [0.0; 3] }],
                ..tick(1)
            },
            ErrorCode::InvalidPayload,
        ),
        (
            "target on a dynamic body",
            PhysicsStepRequest {
                kinematic_targets: vec![KinematicTarget { id: 1, position: [0.0; 3], rotation: [0.0, 0.0, 0.0, 1.0] }],
                ..tick(1)
            },
            ErrorCode::InvalidPayload,
        ),
        (
            "a million bodies",
            PhysicsStepRequest {
                add: (0..1_000_000u64)
                    .map(|i| BodyDesc::new(i + 10, Shape::Sphere { radius: 0.5 }, [0.0; 3]))
                    .collect(),
                ..tick(1)
            },
            ErrorCode::LimitExceeded,
        ),
    ];
    for (what, request, code) in bad {
        let e = world.step(&request).unwrap_err();
        assert_eq!(e.code, code, "{what}: {e}");
        assert!(!e.resync, "{what}: a bad payload does not need a resync");
        assert_eq!(e.tick, Some(1), "{what}");
        assert_eq!(world.last_tick(), Some(0), "{what}: the world did not advance");
        assert_eq!(world.body_count(), 2, "{what}: the world was not changed");
    }
    // The same (corrected) tick still works.
    world.step(&tick(1)).unwrap();
}

#[test]
fn a_failed_snapshot_keeps_the_old_world() {
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(0, vec![cube(1, [0.0, 2.0, 0.0])])).unwrap();
    let e = world.step(&snapshot(1, vec![cube(2, [f32::NAN, 0.0, 0.0])])).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPayload);
    assert_eq!(world.body_count(), 1);
    world.step(&tick(1)).unwrap();
}

#[test]
fn sleeping_bodies_are_reported_once_then_left_out() {
    let mut world = PhysicsWorld::new();
    // Asleep in mid-air: it does not fall until something wakes it.
    let r = world.step(&snapshot(0, vec![ground(), BodyDesc { sleeping: true, ..cube(1, [0.0, 5.0, 0.0]) }])).unwrap();
    assert_eq!(r.bodies.len(), 1, "after a snapshot every non-fixed body is reported");
    assert!(r.bodies[0].sleeping);
    assert_eq!(r.bodies[0].position, [0.0, 5.0, 0.0]);
    assert!(world.step(&tick(1)).unwrap().bodies.is_empty());
    // Waking it (a teleport) reports it again.
    let mut r = tick(2);
    r.set_pose = vec![SetPose { id: 1, position: [0.0, 3.0, 0.0], rotation: [0.0, 0.0, 0.0, 1.0] }];
    let r = world.step(&r).unwrap();
    assert_eq!(r.bodies.len(), 1);
    assert!(!r.bodies[0].sleeping);
}

#[test]
fn a_body_leaving_the_world_is_removed_reported_once_and_the_rest_resyncs() {
    let mut world = PhysicsWorld::new();
    // Launched at MAX_SPEED away from the origin, 10 km from the edge of the world.
    // Rapier caps linear speeds (400 m/s by default), so it covers `cap × dt × steps`
    // per tick, and crosses MAX_COORDINATE after `10 km / that` ticks.
    let start = MAX_COORDINATE - 10_000.0;
    let rocket = BodyDesc {
        linvel: [MAX_SPEED, 0.0, 0.0],
        ..BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [start, 0.0, 0.0])
    };
    let stay = BodyDesc::new(2, Shape::Sphere { radius: 0.5 }, [0.0, 0.0, 10.0]);
    let (dt, steps) = (DT, 16);
    let first = PhysicsStepRequest {
        tick: 0,
        snapshot: true,
        dt,
        steps,
        gravity: Some([0.0; 3]),
        add: vec![rocket, stay],
        ..Default::default()
    };
    let cap = rapier3d::prelude::IntegrationParameters::default().max_linear_velocity().min(MAX_SPEED);
    let per_tick = cap * dt * steps as f32;
    // After tick t the rocket is at start + (t + 1) × per_tick.
    let expected_tick = ((MAX_COORDINATE - start) / per_tick).floor() as u64;
    let mut removed_at = None;
    let mut latest = std::collections::BTreeMap::new();
    for t in 0..=expected_tick + 2 {
        let request =
            if t == 0 { first.clone() } else { PhysicsStepRequest { tick: t, dt, steps, ..Default::default() } };
        let r = world.step(&request).unwrap();
        for b in &r.bodies {
            assert!(b.position.iter().all(|x| x.abs() <= MAX_COORDINATE), "an out-of-bounds state was reported: {b:?}");
            latest.insert(b.id, *b);
        }
        if !r.removed.is_empty() {
            assert_eq!(r.removed, vec![1], "tick {t}");
            assert!(removed_at.is_none(), "reported twice: at {removed_at:?} and {t}");
            assert!(r.bodies.iter().all(|b| b.id != 1));
            removed_at = Some(t);
        }
    }
    let removed_at = removed_at.expect("the rocket was removed");
    assert!(
        (expected_tick - 1..=expected_tick + 1).contains(&removed_at),
        "removed at tick {removed_at}, expected ~{expected_tick}"
    );
    assert_eq!(world.body_count(), 1);
    // A snapshot of the remaining bodies' latest states is accepted.
    latest.remove(&1);
    let s = latest[&2];
    let again = PhysicsStepRequest {
        tick: expected_tick + 3,
        snapshot: true,
        dt,
        steps: 1,
        add: vec![BodyDesc {
            rotation: s.rotation,
            linvel: s.linvel,
            angvel: s.angvel,
            ..BodyDesc::new(2, Shape::Sphere { radius: 0.5 }, s.position)
        }],
        ..Default::default()
    };
    assert!(world.step(&again).is_ok());
}

fn pile(n: u64) -> PhysicsStepRequest {
    snapshot(0, (0..n).map(|id| BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [0.0; 3])).collect())
}

#[test]
fn a_thousand_spheres_at_one_point_are_refused_before_stepping() {
    let mut world = PhysicsWorld::new();
    world.step_limited(&snapshot(0, vec![ground(), cube(1, [0.0, 3.0, 0.0])]), &Budgets::default()).unwrap();
    let e = world.step_limited(&pile(1000), &Budgets::default()).unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitExceeded, "{e:?}");
    assert_eq!(e.tick, Some(0));
    assert!(!e.resync, "the world is untouched");
    // The old world carries on.
    assert_eq!(world.body_count(), 2);
    assert_eq!(world.step_limited(&tick(1), &Budgets::default()).unwrap().tick, 1);
}

#[test]
fn body_steps_over_the_budget_are_refused_and_within_it_pass() {
    let budgets = Budgets { max_body_steps: 100, ..Budgets::default() };
    let spread = |n: u64| (0..n).map(|id| cube(id, [id as f32 * 3.0, 5.0, 0.0])).collect::<Vec<_>>();
    let mut world = PhysicsWorld::new();
    let ok = PhysicsStepRequest { steps: 10, ..snapshot(0, spread(10)) };
    world.step_limited(&ok, &budgets).unwrap();
    let over = PhysicsStepRequest { tick: 1, steps: 11, ..tick(1) };
    let e = world.step_limited(&over, &budgets).unwrap_err();
    assert_eq!((e.code, e.tick, e.resync), (ErrorCode::LimitExceeded, Some(1), false), "{e:?}");
    assert_eq!(world.last_tick(), Some(0), "the world is untouched");
    // 10,000 bodies with a few steps pass the default budget.
    let big = PhysicsStepRequest { steps: 4, ..snapshot(0, spread(10_000)) };
    assert!(PhysicsWorld::new().step_limited(&big, &Budgets::default()).is_ok());
}

#[test]
fn a_world_piling_up_past_the_pair_budget_is_dropped_with_resync() {
    // Two spheres 5 cm apart rushing together: no overlap before the step, a contact
    // pair after it.
    let budgets = Budgets { max_contact_pairs: 0, ..Budgets::default() };
    let a = BodyDesc { linvel: [1.0, 0.0, 0.0], ..BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 0.0, 0.0]) };
    let b = BodyDesc { linvel: [-1.0, 0.0, 0.0], ..BodyDesc::new(2, Shape::Sphere { radius: 0.5 }, [1.05, 0.0, 0.0]) };
    let request = PhysicsStepRequest { dt: 0.1, steps: 3, gravity: Some([0.0; 3]), ..snapshot(0, vec![a, b]) };
    let mut world = PhysicsWorld::new();
    let e = world.step_limited(&request, &budgets).unwrap_err();
    assert_eq!((e.code, e.tick, e.resync), (ErrorCode::LimitExceeded, Some(0), true), "{e:?}");
    let e = world.step_limited(&tick(1), &budgets).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownSession, "the world was dropped: {e:?}");
    // With a budget, the same request passes.
    assert!(PhysicsWorld::new().step_limited(&request, &Budgets::default()).is_ok());
}

#[test]
fn the_pair_estimate_matches_brute_force_and_stops_early() {
    // A jittered lattice of boxes and spheres, some touching, some rotated.
    let mut boxes = Vec::new();
    let mut seed = 7u32;
    let mut next = || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32
    };
    for i in 0..600 {
        let position = [next() * 20.0, next() * 5.0, next() * 20.0];
        let shape = if i % 2 == 0 {
            Shape::Sphere { radius: 0.3 + next() }
        } else {
            Shape::Box { half_extents: [0.2 + next(), 0.2 + next(), 0.2 + next()] }
        };
        let (x, y, z, w) = (next() - 0.5, next() - 0.5, next() - 0.5, next() - 0.5);
        let n = (x * x + y * y + z * z + w * w).sqrt();
        boxes.push(BoundingBox::of(shape, position, [x / n, y / n, z / n, w / n], i % 5 != 0));
    }
    let overlap = |a: &BoundingBox, b: &BoundingBox| (0..3).all(|i| a.min[i] <= b.max[i] && b.min[i] <= a.max[i]);
    let mut brute = 0u64;
    for i in 0..boxes.len() {
        for j in i + 1..boxes.len() {
            if (boxes[i].dynamic || boxes[j].dynamic) && overlap(&boxes[i], &boxes[j]) {
                brute += 1;
            }
        }
    }
    assert!(brute > 100, "the scene has overlaps: {brute}");
    // Within the budget, the answer is an upper bound (exact once it sweeps).
    match estimate_overlapping_pairs(&boxes, brute) {
        PairEstimate::Within(n) => assert!(n >= brute, "{n} < {brute}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(estimate_overlapping_pairs(&boxes, brute - 1), PairEstimate::Over);
    // A ground under everything is compared with every box, and counted with each it touches.
    let mut grounded = boxes.clone();
    grounded.push(BoundingBox::of(
        Shape::Box { half_extents: [100.0, 0.5, 100.0] },
        [0.0, -0.4, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        false,
    ));
    let touching = boxes.iter().filter(|b| b.dynamic && b.min[1] <= 0.11).count() as u64;
    assert_eq!(estimate_overlapping_pairs(&grounded, brute + touching - 1), PairEstimate::Over);
    assert!(matches!(estimate_overlapping_pairs(&grounded, brute + touching), PairEstimate::Within(_)));
    // Piled at one point: stops once over the budget.
    let pile = vec![BoundingBox::of(Shape::Sphere { radius: 0.5 }, [0.0; 3], [0.0, 0.0, 0.0, 1.0], true); 1000];
    assert_eq!(estimate_overlapping_pairs(&pile, 50_000), PairEstimate::Over);
    assert_eq!(estimate_overlapping_pairs(&pile, 1_000_000), PairEstimate::Within(499_500));
    // A rotated box's bounding box holds its corners.
    let q = [0.0, (0.5f32).sqrt(), 0.0, (0.5f32).sqrt()]; // 90° about y
    let b = BoundingBox::of(Shape::Box { half_extents: [2.0, 1.0, 0.5] }, [0.0; 3], q, true);
    assert!((b.max[0] - 0.51).abs() < 1e-4 && (b.max[2] - 2.01).abs() < 1e-4, "{b:?}");
}
