//! Physics sessions against known motion, determinism by bytes, tick ordering and payload
//! validation, through `p2c2r_sim::physics::PhysicsWorld`; and the lattice: the gamer's
//! copy of the state, built from packed results, is the peer's world.

use p2c2r_protocol::physics::{
    ApplyForce, ApplyImpulse, BodyDesc, BodyState, BodyType, KinematicTarget, PhysicsStepRequest, SetPose, SetVelocity,
    Shape,
};
use std::collections::BTreeMap;

use p2c2r_protocol::packed::{ResultDecoder, ResultEncoder, decode_request, encode_request};
use p2c2r_protocol::physics::PhysicsStepResult;
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
        // The world is snapped to the lattice after every tick: the velocity gains g·dt
        // rounded to a velocity unit (2⁻¹⁰ m/s) each tick, so it may lag by up to half a
        // unit per tick (here 167 units instead of 167.4: 0.25% of g).
        let lag = t as f32 * 0.5 / 1024.0;
        assert!((ball.linvel[1] + 9.81 * time).abs() < 1e-3 + lag, "t={time}: vy={}", ball.linvel[1]);
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
            // A body is left out when its state on the lattice did not change (asleep, or
            // awake but still by a lattice unit): the last report still holds, exactly.
            assert_eq!(world.state(1), last, "tick {t}: a body left out is as last reported");
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
        // Exactly the target, snapped to the lattice (a position unit is 2⁻¹⁴ m).
        assert!((p.position[0] - t as f32 * 0.05).abs() <= 1.0 / 32768.0, "tick {t}: {:?}", p.position);
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
        boxes.push(BoundingBox::of(&shape, position, [x / n, y / n, z / n, w / n], i % 5 != 0));
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
        &Shape::Box { half_extents: [100.0, 0.5, 100.0] },
        [0.0, -0.4, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        false,
    ));
    let touching = boxes.iter().filter(|b| b.dynamic && b.min[1] <= 0.11).count() as u64;
    assert_eq!(estimate_overlapping_pairs(&grounded, brute + touching - 1), PairEstimate::Over);
    assert!(matches!(estimate_overlapping_pairs(&grounded, brute + touching), PairEstimate::Within(_)));
    // Piled at one point: stops once over the budget.
    let pile = vec![BoundingBox::of(&Shape::Sphere { radius: 0.5 }, [0.0; 3], [0.0, 0.0, 0.0, 1.0], true); 1000];
    assert_eq!(estimate_overlapping_pairs(&pile, 50_000), PairEstimate::Over);
    assert_eq!(estimate_overlapping_pairs(&pile, 1_000_000), PairEstimate::Within(499_500));
    // A rotated box's bounding box holds its corners.
    let q = [0.0, (0.5f32).sqrt(), 0.0, (0.5f32).sqrt()]; // 90° about y
    let b = BoundingBox::of(&Shape::Box { half_extents: [2.0, 1.0, 0.5] }, [0.0; 3], q, true);
    assert!((b.max[0] - 0.51).abs() < 1e-4 && (b.max[2] - 2.01).abs() < 1e-4, "{b:?}");
}

// ---------------------------------------------------------------------------------------
// The lattice: the gamer's copy is the peer's world.

/// The peer's side of a session: requests arrive packed, results leave packed.
struct Peer {
    world: PhysicsWorld,
    encoder: ResultEncoder,
}

impl Peer {
    fn new() -> Self {
        Peer { world: PhysicsWorld::new(), encoder: ResultEncoder::new() }
    }

    /// Steps a request that went through the packed encoding; returns the result and its
    /// packed bytes.
    fn step(&mut self, request: &PhysicsStepRequest) -> (PhysicsStepResult, Vec<u8>) {
        let mut bytes = Vec::new();
        encode_request(request, &mut bytes);
        let request = decode_request(&bytes).unwrap();
        let result = self.world.step(&request).unwrap();
        let mut packed = Vec::new();
        let elapsed = request.dt * request.steps as f32;
        self.encoder.encode(&result, request.snapshot, elapsed, &mut packed).unwrap();
        (result, packed)
    }
}

/// The gamer's side: its copy of every non-fixed body, from the packed results.
#[derive(Default)]
struct Gamer {
    decoder: ResultDecoder,
    bodies: BTreeMap<u64, BodyState>,
}

impl Gamer {
    /// The result of `request`: the bodies the request removed are gone, those the peer
    /// removed are listed, the others are replaced by their reported states.
    fn receive(&mut self, request: &PhysicsStepRequest, packed: &[u8]) -> PhysicsStepResult {
        let result = self.decoder.decode(packed).unwrap();
        if request.snapshot {
            self.bodies.clear();
        }
        for id in &request.remove {
            self.bodies.remove(id);
        }
        for id in &result.removed {
            self.bodies.remove(id);
        }
        for b in &result.bodies {
            self.bodies.insert(b.id, *b);
        }
        result
    }
}

/// Every number of a state as bits (`-0.0` is not `0.0`), and its sleep flag.
fn bits(s: &BodyState) -> (u64, Vec<u32>, bool) {
    let numbers = s.position.iter().chain(&s.rotation).chain(&s.linvel).chain(&s.angvel);
    (s.id, numbers.map(|v| v.to_bits()).collect(), s.sleeping)
}

fn all_bits(states: &[BodyState]) -> Vec<(u64, Vec<u32>, bool)> {
    states.iter().map(bits).collect()
}

/// The falling stack, with a teleport and a velocity change thrown in.
fn busy_requests(until: u64) -> Vec<PhysicsStepRequest> {
    let mut requests = falling_stack_requests();
    requests.truncate(until as usize + 1);
    requests[100].set_pose.push(SetPose { id: 5, position: [2.0, 6.0, 1.0], rotation: [0.0, 0.6, 0.0, 0.8] });
    requests[120].set_velocity.push(SetVelocity { id: 6, linvel: [0.3, 2.0, -0.1], angvel: [1.0, 0.0, 0.5] });
    requests
}

/// After every one of 300 ticks (contacts, impulses, forces, a kinematic body, a
/// teleport, bodies added and removed, two steps in a tick), the gamer's copy built from
/// the packed results holds exactly the peer's world: every number of every non-fixed body,
/// bit for bit, and no other body. That is what lets a snapshot built from the copy
/// continue the world without a jump.
#[test]
fn the_gamers_copy_is_the_peers_world_bit_for_bit_after_every_tick() {
    let (mut peer, mut gamer) = (Peer::new(), Gamer::default());
    let mut alive = std::collections::BTreeSet::new();
    for request in &busy_requests(300) {
        let (result, packed) = peer.step(request);
        let decoded = gamer.receive(request, &packed);
        assert_eq!(all_bits(&decoded.bodies), all_bits(&result.bodies), "tick {}", request.tick);
        assert_eq!(decoded.digest, result.digest);
        for id in request.remove.iter().chain(&result.removed) {
            alive.remove(id);
        }
        alive.extend(request.add.iter().filter(|d| d.body_type != BodyType::Fixed).map(|d| d.id));
        assert_eq!(gamer.bodies.keys().copied().collect::<Vec<_>>(), alive.iter().copied().collect::<Vec<_>>());
        for (id, mine) in &gamer.bodies {
            let world = peer.world.state(*id).expect("a body of the world");
            assert_eq!(bits(mine), bits(&world), "tick {}, body {id}", request.tick);
        }
    }
    assert!(gamer.bodies.values().any(|b| b.sleeping) && gamer.bodies.values().any(|b| !b.sleeping));
}

/// Ballistic bodies high above the scene: they touch nothing for the test's 300 ticks.
fn ballistic_bodies() -> Vec<BodyDesc> {
    (0..8u64)
        .map(|i| {
            let shape = match i % 3 {
                0 => Shape::Box { half_extents: [0.4, 0.2, 0.3] },
                1 => Shape::Sphere { radius: 0.5 },
                _ => Shape::Capsule { half_height: 0.6, radius: 0.2 },
            };
            BodyDesc {
                linvel: [i as f32 * 0.7 - 2.0, 3.0 + i as f32, 1.5 - i as f32 * 0.3],
                angvel: [0.3 * i as f32, 2.0 - 0.4 * i as f32, 1.1],
                rotation: [0.1, 0.2 * i as f32, 0.3, 0.9],
                ..BodyDesc::new(100 + i, shape, [i as f32 * 20.0 - 70.0, 2000.0, 40.0])
            }
        })
        .collect()
}

/// A snapshot built by the gamer from its copy continues the world without a jump, on
/// another peer or locally (the Bevy plugin's fallback runs the same `PhysicsWorld`).
///
/// Guaranteed, and asserted here:
///
/// - the world the snapshot makes is the peer's world: every body's state bit for bit
///   (the snapshot's keyframe result is the gamer's copy) and the same digest, which
///   covers every body's type and state, sleep flags included, and the gravity;
/// - from then on, every peer given the same snapshot and requests returns the same bytes
///   (a session resynced on two peers, or on a peer and locally, stays in agreement);
/// - bodies out of contact continue exactly as in the original world: the same states and
///   the same packed bytes, tick after tick, forces and all.
///
/// Not guaranteed: bodies in contact continue close to, not exactly as, the original
/// world. A snapshot carries states, not the solver's memory: rapier rebuilds contacts
/// from scratch (a new collider gets its contact constraints from its second step on),
/// without the impulses it kept from the previous step to warm-start the solver, restarts
/// sleep timers, and orders the bodies by their creation.
#[test]
fn a_snapshot_of_the_gamers_copy_continues_the_world_without_a_jump() {
    const AT: usize = 150;
    let mut requests = busy_requests(300);
    requests[0].add.extend(ballistic_bodies());
    let descs: BTreeMap<u64, BodyDesc> =
        requests.iter().flat_map(|r| r.add.iter().cloned()).map(|d| (d.id, d)).collect();
    let ballistic: Vec<u64> = ballistic_bodies().iter().map(|d| d.id).collect();

    let (mut original, mut gamer) = (Peer::new(), Gamer::default());
    for request in &requests[..AT] {
        let (_, packed) = original.step(request);
        gamer.receive(request, &packed);
    }
    // The gamer's snapshot: its copy of every body, the fixed ones as it created them.
    let mut add: Vec<BodyDesc> = descs.values().filter(|d| d.body_type == BodyType::Fixed).cloned().collect();
    add.extend(gamer.bodies.values().map(|s| BodyDesc {
        position: s.position,
        rotation: s.rotation,
        linvel: s.linvel,
        angvel: s.angvel,
        sleeping: s.sleeping,
        ..descs[&s.id].clone()
    }));
    let snapshot =
        PhysicsStepRequest { tick: AT as u64 - 1, snapshot: true, dt: DT, steps: 0, add, ..Default::default() };

    let (mut taken_over, mut again) = (Peer::new(), Peer::new());
    let (keyframe, packed) = taken_over.step(&snapshot);
    assert_eq!(again.step(&snapshot).1, packed);
    let copy: Vec<BodyState> = gamer.bodies.values().copied().collect();
    assert_eq!(all_bits(&keyframe.bodies), all_bits(&copy), "no jump: the new world starts where the old one was");
    assert_eq!(taken_over.world.digest(), original.world.digest(), "the whole world, sleep flags included");

    let split = |result: &PhysicsStepResult| {
        let only = |keep: bool| PhysicsStepResult {
            bodies: result.bodies.iter().filter(|b| ballistic.contains(&b.id) == keep).copied().collect(),
            digest: None,
            ..result.clone()
        };
        (only(true), only(false))
    };
    let (mut ballistic_original, mut ballistic_taken_over) = (ResultEncoder::new(), ResultEncoder::new());
    let mut in_contact_differ = 0;
    for request in &requests[AT..] {
        let (a, _) = original.step(request);
        let (b, packed) = taken_over.step(request);
        assert_eq!(again.step(request).1, packed, "tick {}: two peers, the same bytes", request.tick);
        let ((free_a, touching_a), (free_b, touching_b)) = (split(&a), split(&b));
        assert_eq!(all_bits(&free_a.bodies), all_bits(&free_b.bodies), "tick {}", request.tick);
        assert_eq!(free_a.bodies.len(), ballistic.len(), "they fly the whole time");
        let first = request.tick == AT as u64;
        let (mut bytes_a, mut bytes_b) = (Vec::new(), Vec::new());
        ballistic_original.encode(&free_a, first, DT * request.steps as f32, &mut bytes_a).unwrap();
        ballistic_taken_over.encode(&free_b, first, DT * request.steps as f32, &mut bytes_b).unwrap();
        assert_eq!(bytes_a, bytes_b, "tick {}", request.tick);
        in_contact_differ += usize::from(all_bits(&touching_a.bodies) != all_bits(&touching_b.bodies));
    }
    println!("ticks where bodies in contact differ from the original world: {in_contact_differ}");
}

/// Two worlds fed the same requests return identical packed results, byte for byte, and
/// the same digests, whatever each world did before.
#[test]
fn two_worlds_fed_the_same_requests_return_identical_packed_bytes() {
    let (mut a, mut b) = (Peer::new(), Peer::new());
    b.step(&snapshot(0, vec![cube(99, [0.0, 1.0, 0.0])]));
    b.step(&tick(1));
    let mut total = 0;
    for request in &busy_requests(599) {
        let ((ra, pa), (rb, pb)) = (a.step(request), b.step(request));
        assert_eq!(pa, pb, "tick {}", request.tick);
        assert_eq!(ra.digest, rb.digest);
        total += pa.len();
    }
    assert!(total > 10_000, "the scene moved: {total} bytes");
}

/// Snapping moves nearly every awake body every tick, which rapier takes for a user's
/// teleport (waking the body and its neighbours); the world keeps rapier's sleep timing
/// anyway: dropped cubes settle and fall asleep, and a push wakes them.
#[test]
fn dropped_cubes_fall_asleep_although_the_world_is_snapped_and_wake_when_pushed() {
    let mut bodies = vec![ground()];
    for i in 0..100u64 {
        let (x, z) = ((i % 10) as f32 * 1.5 - 7.0, (i / 10) as f32 * 1.5 - 7.0);
        let turn = [0.0, (i as f32 * 0.1).sin(), 0.0, (i as f32 * 0.1).cos()];
        bodies.push(BodyDesc { rotation: turn, ..cube(i + 1, [x, 1.0 + (i % 3) as f32 * 0.7, z]) });
    }
    let mut world = PhysicsWorld::new();
    let mut latest = BTreeMap::new();
    for b in world.step(&snapshot(0, bodies)).unwrap().bodies {
        latest.insert(b.id, b);
    }
    run(&mut world, 1, 240, &mut latest);
    let asleep = latest.values().filter(|b| b.sleeping).count();
    assert!(asleep >= 95, "{asleep} of 100 cubes asleep after 4 s");
    let mut push = tick(241);
    let id = latest.values().find(|b| b.sleeping).expect("a sleeping cube").id;
    push.impulses = vec![ApplyImpulse { id, impulse: [3000.0, 0.0, 0.0], torque_impulse: [0.0; 3] }];
    let pushed = state(&world.step(&push).unwrap().bodies, id);
    assert!(!pushed.sleeping && pushed.linvel[0] > 2.0, "{pushed:?}");
    let result = world.step(&tick(242)).unwrap();
    assert!(state(&result.bodies, id).position[0] > latest[&id].position[0] + 0.05, "it moves");
}
