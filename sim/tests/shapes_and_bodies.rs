//! The shapes and body properties beyond boxes, balls and y capsules: they behave as
//! rapier's do, step identically in two worlds and through the packed wire, and hostile
//! versions of them get clear errors that leave the world as it was.

use p2c2r_protocol::physics::{
    BodyDesc, BodyState, BodyType, CombineRule, CompoundPart, Groups, MassProperties, Offset, PhysicsStepRequest,
    Shape, locked_axes,
};
use p2c2r_protocol::{ErrorCode, limits, packed};
use p2c2r_sim::physics::PhysicsWorld;

const DT: f32 = 1.0 / 60.0;
const IDENTITY: [f32; 4] = [0.0, 0.0, 0.0, 1.0];

fn snapshot(add: Vec<BodyDesc>) -> PhysicsStepRequest {
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

fn tick(tick: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() }
}

fn fixed(id: u64, shape: Shape, position: [f32; 3]) -> BodyDesc {
    BodyDesc::new(id, shape, position).with_body_type(BodyType::Fixed)
}

fn state(world: &PhysicsWorld, id: u64) -> BodyState {
    world.state(id).unwrap_or_else(|| panic!("no body {id}"))
}

/// A 9 × 9 terrain, 40 m square, rising gently towards +x.
fn terrain() -> Shape {
    let (rows, columns) = (9u32, 9u32);
    let heights =
        (0..rows * columns).map(|i| (i % columns) as f32 * 0.25 + ((i / columns) % 2) as f32 * 0.05).collect();
    Shape::Heightfield { rows, columns, heights, scale: [40.0, 1.0, 40.0] }
}

/// A ramp of two triangles.
fn ramp() -> Shape {
    Shape::TriMesh {
        vertices: vec![[0.0, 0.0, 0.0], [6.0, 2.0, 0.0], [0.0, 0.0, 4.0], [6.0, 2.0, 4.0]],
        indices: vec![[0, 2, 1], [1, 2, 3]],
    }
}

fn tetra(size: f32) -> Shape {
    Shape::ConvexHull { points: vec![[0.0; 3], [size, 0.0, 0.0], [0.0, size, 0.0], [0.0, 0.0, size]] }
}

/// Every new shape and property in one scene, over a terrain and a ramp.
fn scene() -> Vec<BodyDesc> {
    let part = |shape, position| CompoundPart { shape, position, rotation: [0.0, 0.383, 0.0, 0.924] };
    let mut bodies = vec![
        fixed(0, terrain(), [0.0, 0.0, 0.0]),
        fixed(1, ramp(), [-12.0, 0.5, -2.0]),
        BodyDesc::new(10, Shape::Cylinder { half_height: 0.4, radius: 0.3 }, [-8.0, 4.0, 0.0]),
        BodyDesc::new(11, Shape::Cone { half_height: 0.5, radius: 0.4 }, [-5.0, 4.0, 1.0]),
        BodyDesc::new(12, Shape::CapsuleX { half_height: 0.5, radius: 0.2 }, [-2.0, 4.0, -1.0]),
        BodyDesc::new(13, Shape::CapsuleZ { half_height: 0.5, radius: 0.2 }, [0.0, 5.0, 2.0]),
        BodyDesc::new(14, tetra(1.0), [2.0, 5.0, 0.0]),
        BodyDesc::new(
            15,
            Shape::Compound {
                parts: vec![
                    part(Shape::Box { half_extents: [0.6, 0.1, 0.6] }, [0.0, 0.0, 0.0]),
                    part(Shape::Sphere { radius: 0.25 }, [0.0, 0.35, 0.0]),
                    part(tetra(0.5), [0.4, 0.0, 0.0]),
                ],
            },
            [4.0, 5.0, -2.0],
        ),
        BodyDesc {
            collider_offset: Some(Offset { position: [0.0, 0.5, 0.0], rotation: [0.0, 0.0, 0.383, 0.924] }),
            gravity_scale: 0.5,
            locked_axes: locked_axes::ROTATION_X | locked_axes::ROTATION_Z,
            dominance: 2,
            additional_mass: 3.0,
            friction_combine: CombineRule::Max,
            restitution_combine: CombineRule::Min,
            restitution: 0.6,
            ..BodyDesc::new(16, Shape::Box { half_extents: [0.3; 3] }, [6.0, 6.0, 1.0])
        },
        BodyDesc {
            mass_properties: Some(MassProperties {
                mass: 5.0,
                center_of_mass: [0.0, -0.2, 0.0],
                principal_inertia: [0.2, 0.3, 0.4],
                principal_inertia_frame: IDENTITY,
            }),
            angvel: [0.0, 2.0, 1.0],
            ..BodyDesc::new(17, Shape::Cylinder { half_height: 0.2, radius: 0.5 }, [8.0, 6.0, -1.0])
        },
        BodyDesc {
            linvel: [-1.0, 0.0, 0.0],
            ..BodyDesc::new(18, Shape::Box { half_extents: [0.5, 0.2, 2.0] }, [12.0, 4.0, 0.0])
                .with_body_type(BodyType::KinematicVelocity)
        },
    ];
    // A sensor slab the cubes fall through, and a cube in a group of its own.
    bodies.push(BodyDesc { sensor: true, ..fixed(2, Shape::Box { half_extents: [8.0, 0.1, 2.0] }, [0.0, 6.0, -4.0]) });
    bodies.push(BodyDesc {
        collision_groups: Groups { memberships: 0b10, filters: 0b10 },
        ..BodyDesc::new(19, Shape::Box { half_extents: [0.25; 3] }, [-8.0, 8.0, -4.0])
    });
    // A few cubes to push around.
    bodies.extend(
        (0..6)
            .map(|i| BodyDesc::new(20 + i, Shape::Box { half_extents: [0.25; 3] }, [i as f32 * 2.0 - 6.0, 8.0, -4.0])),
    );
    bodies
}

#[test]
fn every_new_shape_and_property_steps_identically_in_two_worlds_and_through_the_packed_wire() {
    let (mut plain, mut wired) = (PhysicsWorld::new(), PhysicsWorld::new());
    let mut requests = vec![snapshot(scene())];
    requests.extend((1..600).map(|t| {
        let mut r = tick(t);
        // Sleep and wake the cone now and then; nudge the compound.
        match t % 120 {
            30 => r.sleep = vec![11],
            60 => r.wake = vec![11],
            90 => {
                r.impulses = vec![p2c2r_protocol::physics::ApplyImpulse {
                    id: 15,
                    impulse: [0.0, 3.0, 0.5],
                    torque_impulse: [0.0; 3],
                }]
            }
            _ => {}
        }
        r
    }));
    for request in &requests {
        let mut bytes = Vec::new();
        packed::encode_request(request, &mut bytes);
        let decoded = packed::decode_request(&bytes).expect("the packed request decodes");
        let a = plain.step(request).expect("the plain world steps");
        let b = wired.step(&decoded).expect("the wired world steps");
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap(), "tick {}", request.tick);
    }
    assert_eq!(plain.digest(), wired.digest());
    // And the scene did move: the falling bodies came down, the kinematic one slid 10 m.
    for id in [10, 11, 12, 13, 14, 15, 17] {
        assert!(state(&plain, id).position[1] < 4.0, "body {id} fell: {:?}", state(&plain, id).position);
    }
    let slid = state(&plain, 18).position[0];
    assert!((slid - 2.0).abs() < 0.05, "the velocity-based kinematic body moved by its velocity: {slid}");
    let locked = state(&plain, 16);
    assert!(locked.angvel[0] == 0.0 && locked.angvel[2] == 0.0, "rotation about x and z locked: {locked:?}");
}

#[test]
fn a_ball_dropped_on_a_heightfield_comes_to_rest_on_its_surface() {
    // A plane rising 1 m per 10 m towards +x, 20 m square: at x = 2.5 its height is 1.25.
    let heights = vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0];
    let field = Shape::Heightfield { rows: 3, columns: 3, heights, scale: [20.0, 1.0, 20.0] };
    let mut world = PhysicsWorld::new();
    let ball = BodyDesc {
        friction: 1.0,
        angular_damping: 2.0,
        ..BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [-2.5, 3.0, 0.0])
    };
    world.step(&snapshot(vec![fixed(0, field, [0.0, 0.0, 0.0]), ball])).unwrap();
    for t in 1..=300 {
        world.step(&tick(t)).unwrap();
    }
    let s = state(&world, 1);
    // The surface under x = -2.5 is at 0.75 (the field is centred on its body); the
    // ball rolls down the slope, so compare with the surface where it is.
    let surface = (s.position[0] + 10.0) / 10.0;
    let normal_offset = 0.5 * (1.0f32 + 0.01).sqrt();
    assert!(
        (s.position[1] - (surface + normal_offset)).abs() < 0.05,
        "the ball lies on the surface: {:?}, surface {surface}",
        s.position
    );
}

#[test]
fn gravity_scale_locked_axes_sleep_and_wake_do_what_they_say() {
    let mut world = PhysicsWorld::new();
    let floating = BodyDesc { gravity_scale: 0.0, ..BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 5.0, 0.0]) };
    let pinned = BodyDesc {
        locked_axes: locked_axes::TRANSLATION_Y,
        ..BodyDesc::new(2, Shape::Sphere { radius: 0.5 }, [3.0, 5.0, 0.0])
    };
    let light = BodyDesc { gravity_scale: -1.0, ..BodyDesc::new(3, Shape::Sphere { radius: 0.5 }, [6.0, 5.0, 0.0]) };
    let sleeper = BodyDesc::new(4, Shape::Sphere { radius: 0.5 }, [9.0, 5.0, 0.0]);
    world.step(&snapshot(vec![floating, pinned, light, sleeper])).unwrap();
    world.step(&PhysicsStepRequest { sleep: vec![4], ..tick(1) }).unwrap();
    for t in 2..=60 {
        world.step(&tick(t)).unwrap();
    }
    assert_eq!(state(&world, 1).position[1], 5.0, "no gravity");
    assert_eq!(state(&world, 2).position[1], 5.0, "locked along y");
    assert!(state(&world, 3).position[1] > 9.0, "pulled upwards: {:?}", state(&world, 3).position);
    assert!(state(&world, 4).sleeping && state(&world, 4).position[1] > 4.9, "asleep in mid-air");
    world.step(&PhysicsStepRequest { wake: vec![4], ..tick(61) }).unwrap();
    for t in 62..=90 {
        world.step(&tick(t)).unwrap();
    }
    assert!(!state(&world, 4).sleeping && state(&world, 4).position[1] < 4.0, "woken, it falls");
}

#[test]
fn hostile_shapes_and_bodies_get_clear_errors_and_leave_the_world_as_it_was() {
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(vec![BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 5.0, 0.0])])).unwrap();
    let digest = world.digest();
    let flat = Shape::ConvexHull { points: (0..9).map(|i| [(i % 3) as f32, 0.0, (i / 3) as f32]).collect() };
    let mesh = |indices| Shape::TriMesh { vertices: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], indices };
    let cases: Vec<(&str, BodyDesc, ErrorCode)> = vec![
        ("a flat hull", BodyDesc::new(9, flat, [0.0; 3]), ErrorCode::InvalidPayload),
        ("an index past the vertices", fixed(9, mesh(vec![[0, 1, 7]]), [0.0; 3]), ErrorCode::InvalidPayload),
        ("a dynamic mesh", BodyDesc::new(9, mesh(vec![[0, 2, 1]]), [0.0; 3]), ErrorCode::InvalidPayload),
        (
            "a mesh past the triangle limit",
            fixed(9, mesh(vec![[0, 2, 1]; limits::MAX_MESH_TRIANGLES + 1]), [0.0; 3]),
            ErrorCode::LimitExceeded,
        ),
        (
            "an absurd heightfield",
            fixed(
                9,
                Shape::Heightfield { rows: 100_000, columns: 100_000, heights: vec![0.0; 4], scale: [1.0; 3] },
                [0.0; 3],
            ),
            ErrorCode::LimitExceeded,
        ),
        (
            "a NaN in a heightfield",
            fixed(
                9,
                Shape::Heightfield { rows: 2, columns: 2, heights: vec![0.0, f32::NAN, 0.0, 0.0], scale: [1.0; 3] },
                [0.0; 3],
            ),
            ErrorCode::InvalidPayload,
        ),
        (
            "a non-finite gravity scale",
            BodyDesc { gravity_scale: f32::INFINITY, ..BodyDesc::new(9, Shape::Sphere { radius: 1.0 }, [0.0; 3]) },
            ErrorCode::InvalidPayload,
        ),
        (
            "locked axes past the six",
            BodyDesc { locked_axes: 0x40, ..BodyDesc::new(9, Shape::Sphere { radius: 1.0 }, [0.0; 3]) },
            ErrorCode::InvalidPayload,
        ),
        (
            "a negative inertia",
            BodyDesc {
                mass_properties: Some(MassProperties {
                    mass: 1.0,
                    center_of_mass: [0.0; 3],
                    principal_inertia: [1.0, -1.0, 1.0],
                    principal_inertia_frame: IDENTITY,
                }),
                ..BodyDesc::new(9, Shape::Sphere { radius: 1.0 }, [0.0; 3])
            },
            ErrorCode::InvalidPayload,
        ),
    ];
    for (what, body, code) in cases {
        let request = PhysicsStepRequest { add: vec![body], ..tick(1) };
        let error = world.step(&request).expect_err(what);
        assert_eq!(error.code, code, "{what}: {}", error.message);
        assert_eq!(world.digest(), digest, "{what}: the world is as it was");
    }
    // Shapes summing past the request's bounds, each within its own: hull points, then
    // elements of any kind.
    let hull = |id| BodyDesc::new(id, Shape::ConvexHull { points: vec![[0.0; 3]; limits::MAX_HULL_POINTS] }, [0.0; 3]);
    let many = limits::MAX_HULL_POINTS_PER_REQUEST / limits::MAX_HULL_POINTS + 1;
    let error =
        world.step(&PhysicsStepRequest { add: (10..10 + many as u64).map(hull).collect(), ..tick(1) }).unwrap_err();
    assert_eq!(error.code, ErrorCode::LimitExceeded, "{}", error.message);
    assert!(error.message.contains("convex hulls"), "{}", error.message);
    let field = |id| {
        let (rows, columns) = (1024u32, 1024u32);
        let heights = vec![0.0; (rows * columns) as usize];
        fixed(id, Shape::Heightfield { rows, columns, heights, scale: [100.0, 1.0, 100.0] }, [0.0; 3])
    };
    let error = world.step(&PhysicsStepRequest { add: (10..13).map(field).collect(), ..tick(1) }).unwrap_err();
    assert_eq!(error.code, ErrorCode::LimitExceeded, "{}", error.message);
    assert!(error.message.contains("elements"), "{}", error.message);
    // And the session goes on.
    world.step(&tick(1)).expect("the next tick is accepted");
}

#[test]
fn collision_groups_solver_groups_and_sensors_decide_what_touches_and_what_pushes() {
    let ground = fixed(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0]);
    let ball = |id: u64, x: f32| BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [x, 3.0, 0.0]);
    // The ground is in group 1 and filters everything; each ball is something else.
    let ground = BodyDesc { collision_groups: Groups { memberships: 1, filters: u32::MAX }, ..ground };
    let resting = ball(1, 0.0);
    let not_in_its_filter = BodyDesc { collision_groups: Groups { memberships: 2, filters: !1 }, ..ball(2, 3.0) };
    let unpushed = BodyDesc { solver_groups: Groups { memberships: 2, filters: 0 }, ..ball(3, 6.0) };
    let trigger = BodyDesc { sensor: true, ..fixed(4, Shape::Box { half_extents: [1.0, 0.5, 1.0] }, [9.0, 1.5, 0.0]) };
    let through_the_trigger = ball(5, 9.0);
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(vec![ground, resting, not_in_its_filter, unpushed, trigger, through_the_trigger])).unwrap();
    for t in 1..=90 {
        world.step(&tick(t)).unwrap();
    }
    let y = |id| state(&world, id).position[1];
    assert!((y(1) - 0.5).abs() < 0.02, "a plain ball rests on the ground: {}", y(1));
    assert!(y(2) < -1.0, "outside the ground's groups, it falls through: {}", y(2));
    assert!(y(3) < -1.0, "contacts that push nothing: it falls through: {}", y(3));
    assert!((y(5) - 0.5).abs() < 0.02, "through the trigger volume, onto the ground: {}", y(5));
}

#[test]
fn compounds_are_budgeted_by_their_parts_and_duplicate_triangles_cost_nothing() {
    // Forty bodies of 256 small parts each, all in one spot: 780 pairs of bodies, but
    // rapier would pair every part with every part (about 50 million manifolds).
    let part = CompoundPart { shape: Shape::Sphere { radius: 0.1 }, position: [0.0; 3], rotation: IDENTITY };
    let clump = Shape::Compound { parts: vec![part; 256] };
    let pile: Vec<BodyDesc> = (0..40).map(|i| BodyDesc::new(i, clump.clone(), [0.0, 1.0, 0.0])).collect();
    let mut world = PhysicsWorld::new();
    let error = world.step_limited(&snapshot(pile), &p2c2r_sim::Budgets::default()).unwrap_err();
    assert_eq!(error.code, ErrorCode::LimitExceeded, "{}", error.message);
    // A mesh of one triangle listed 200,000 times is built as one triangle, and a ball
    // resting on it steps as cheaply as on any floor.
    let triangle = Shape::TriMesh {
        vertices: vec![[-10.0, 0.0, -10.0], [10.0, 0.0, -10.0], [0.0, 0.0, 10.0]],
        indices: vec![[0, 2, 1]; 200_000],
    };
    let floor = fixed(0, triangle, [0.0; 3]);
    let ball = BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 0.6, 0.0]);
    world.step_limited(&snapshot(vec![floor, ball]), &p2c2r_sim::Budgets::default()).unwrap();
    for t in 1..=30 {
        world.step_limited(&tick(t), &p2c2r_sim::Budgets::default()).unwrap();
    }
    assert!((state(&world, 1).position[1] - 0.5).abs() < 0.02, "{:?}", state(&world, 1).position);
}
