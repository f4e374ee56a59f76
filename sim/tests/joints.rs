//! Joints: they behave as the physics says (a pendulum's period, a motor reaching its
//! target, a rope's length), go with their bodies, step identically in two worlds and
//! through the packed wire, and hostile ones get clear errors that change nothing.

use p2c2r_protocol::physics::{
    BodyDesc, BodyState, BodyType, JointDesc, JointKind, JointMotor, PhysicsStepRequest, Shape,
};
use p2c2r_protocol::{ErrorCode, packed};
use p2c2r_sim::physics::PhysicsWorld;

const DT: f32 = 1.0 / 60.0;

fn snapshot(add: Vec<BodyDesc>, add_joints: Vec<JointDesc>) -> PhysicsStepRequest {
    PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, add_joints, ..Default::default() }
}

fn tick(tick: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() }
}

fn state(world: &PhysicsWorld, id: u64) -> BodyState {
    world.state(id).unwrap_or_else(|| panic!("no body {id}"))
}

/// A joint from `body1` to the world.
fn to_world(id: u64, body1: u64, kind: JointKind, anchor2: [f32; 3]) -> JointDesc {
    JointDesc { id, body1, body2: None, kind, anchor1: [0.0; 3], anchor2, contacts_enabled: true }
}

fn ball(id: u64, radius: f32, position: [f32; 3]) -> BodyDesc {
    BodyDesc::new(id, Shape::Sphere { radius }, position)
}

#[test]
fn a_pendulum_on_a_hinge_keeps_its_period_within_one_percent() {
    // A small ball 1 m below a hinge about z, let go 5° from the vertical.
    let (length, radius, amplitude) = (1.0f64, 0.05f64, 5.0f64.to_radians());
    let start = [(length * amplitude.sin()) as f32, (2.0 - length * amplitude.cos()) as f32, 0.0];
    let hinge = JointKind::Revolute { axis: [0.0, 0.0, 1.0], limits: None, motor: None };
    let joint = JointDesc { anchor1: [-start[0], 2.0 - start[1], 0.0], ..to_world(1, 1, hinge, [0.0, 2.0, 0.0]) };
    let mut world = PhysicsWorld::new();
    world
        .step(&PhysicsStepRequest {
            steps: 4,
            dt: DT / 4.0,
            ..snapshot(vec![ball(1, radius as f32, start)], vec![joint])
        })
        .unwrap();
    // Crossings of the vertical, going one way: a period apart.
    let mut crossings = Vec::new();
    let mut last_x = state(&world, 1).position[0];
    for t in 1..=600u64 {
        world.step(&PhysicsStepRequest { steps: 4, dt: DT / 4.0, ..tick(t) }).unwrap();
        let x = state(&world, 1).position[0];
        if last_x > 0.0 && x <= 0.0 {
            // Linear interpolation within the tick.
            crossings.push((t - 1) as f64 * f64::from(DT) + f64::from(last_x / (last_x - x)) * f64::from(DT));
        }
        last_x = x;
    }
    assert!(crossings.len() >= 4, "{crossings:?}");
    let measured = (crossings[crossings.len() - 1] - crossings[0]) / (crossings.len() - 1) as f64;
    // A ball on a massless rod (its own inertia counted), and the finite amplitude.
    let g = 9.81f64;
    let small = 2.0 * std::f64::consts::PI * ((length * length + 0.4 * radius * radius) / (g * length)).sqrt();
    let expected = small * (1.0 + amplitude * amplitude / 16.0);
    let error = (measured - expected).abs() / expected;
    assert!(error < 0.01, "period {measured:.4} s against {expected:.4} s: {:.2} %", error * 100.0);
}

#[test]
fn a_slider_motor_reaches_its_target_and_a_rope_holds_its_length() {
    let motor =
        JointMotor { target_position: 2.0, target_velocity: 0.0, stiffness: 200.0, damping: 40.0, max_force: None };
    let slider = JointKind::Prismatic { axis: [1.0, 0.0, 0.0], limits: Some([-5.0, 5.0]), motor: Some(motor) };
    let rope = JointKind::Rope { max_distance: 2.0 };
    let cart =
        BodyDesc { gravity_scale: 0.0, ..BodyDesc::new(1, Shape::Box { half_extents: [0.2; 3] }, [0.0, 5.0, 0.0]) };
    // The weight starts 1 m below its anchor, thrown sideways: the rope goes taut.
    let weight = BodyDesc { linvel: [3.0, 0.0, 0.0], ..ball(2, 0.1, [10.0, 4.0, 0.0]) };
    let mut world = PhysicsWorld::new();
    let joints = vec![to_world(1, 1, slider, [0.0, 5.0, 0.0]), to_world(2, 2, rope, [10.0, 5.0, 0.0])];
    world.step(&snapshot(vec![cart, weight], joints)).unwrap();
    let mut longest = 0.0f32;
    for t in 1..=240 {
        world.step(&tick(t)).unwrap();
        let p = state(&world, 2).position;
        longest = longest.max(((p[0] - 10.0).powi(2) + (p[1] - 5.0).powi(2) + p[2].powi(2)).sqrt());
    }
    let cart = state(&world, 1).position;
    assert!((cart[0] - 2.0).abs() < 0.02, "the motor drove the cart to x = 2: {cart:?}");
    assert!(cart[1] == 5.0 && cart[2] == 0.0, "the slider kept it on its axis: {cart:?}");
    assert!(longest < 2.02, "the rope held: the weight never more than {longest} m from its anchor");
    assert!(longest > 1.9, "the rope went taut: {longest}");
}

#[test]
fn joints_go_with_their_bodies_and_can_be_changed_in_one_tick() {
    let mut world = PhysicsWorld::new();
    let bodies = vec![ball(1, 0.2, [0.0, 5.0, 0.0]), ball(2, 0.2, [1.0, 5.0, 0.0])];
    let link = JointDesc {
        id: 7,
        body1: 1,
        body2: Some(2),
        kind: JointKind::Spherical,
        anchor1: [0.5, 0.0, 0.0],
        anchor2: [-0.5, 0.0, 0.0],
        contacts_enabled: false,
    };
    world.step(&snapshot(bodies, vec![link.clone(), to_world(8, 1, JointKind::Spherical, [0.0, 5.0, 0.0])])).unwrap();
    assert_eq!(world.joint_count(), 2);
    // Changed in one tick: removed and added again as a spring.
    let spring =
        JointDesc { kind: JointKind::Spring { rest_length: 1.0, stiffness: 50.0, damping: 1.0 }, ..link.clone() };
    world.step(&PhysicsStepRequest { remove_joints: vec![7], add_joints: vec![spring], ..tick(1) }).unwrap();
    assert_eq!(world.joint_count(), 2);
    // Removing body 2 removes joint 7; the id can be used again.
    world.step(&PhysicsStepRequest { remove: vec![2], ..tick(2) }).unwrap();
    assert_eq!(world.joint_count(), 1);
    let error = world.step(&PhysicsStepRequest { remove_joints: vec![7], ..tick(3) }).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidPayload, "{}", error.message);
    let again = PhysicsStepRequest { add: vec![ball(2, 0.2, [1.0, 5.0, 0.0])], add_joints: vec![link], ..tick(3) };
    world.step(&again).unwrap();
    assert_eq!(world.joint_count(), 2);
}

#[test]
fn hostile_joints_get_clear_errors_and_change_nothing() {
    let mut world = PhysicsWorld::new();
    world.step(&snapshot(vec![ball(1, 0.2, [0.0, 5.0, 0.0]), ball(2, 0.2, [1.0, 5.0, 0.0])], vec![])).unwrap();
    let digest = world.digest();
    let joint = |kind| JointDesc {
        id: 1,
        body1: 1,
        body2: Some(2),
        kind,
        anchor1: [0.0; 3],
        anchor2: [0.0; 3],
        contacts_enabled: true,
    };
    let hinge = |axis, limits| JointKind::Revolute { axis, limits, motor: None };
    let cases: Vec<(&str, JointDesc)> = vec![
        ("a missing body", JointDesc { body2: Some(9), ..joint(JointKind::Fixed) }),
        ("a body joined to itself", JointDesc { body2: Some(1), ..joint(JointKind::Fixed) }),
        ("a NaN anchor", JointDesc { anchor1: [f32::NAN, 0.0, 0.0], ..joint(JointKind::Spherical) }),
        ("a zero axis", joint(hinge([0.0; 3], None))),
        ("limits the wrong way round", joint(hinge([0.0, 1.0, 0.0], Some([1.0, -1.0])))),
        (
            "a negative motor stiffness",
            joint(JointKind::Prismatic {
                axis: [1.0, 0.0, 0.0],
                limits: None,
                motor: Some(JointMotor {
                    target_position: 0.0,
                    target_velocity: 0.0,
                    stiffness: -1.0,
                    damping: 0.0,
                    max_force: None,
                }),
            }),
        ),
        ("an infinite rope", joint(JointKind::Rope { max_distance: f32::INFINITY })),
        ("a negative spring", joint(JointKind::Spring { rest_length: -1.0, stiffness: 1.0, damping: 0.0 })),
    ];
    for (what, j) in cases {
        let error = world.step(&PhysicsStepRequest { add_joints: vec![j], ..tick(1) }).expect_err(what);
        assert_eq!(error.code, ErrorCode::InvalidPayload, "{what}: {}", error.message);
        assert_eq!((world.digest(), world.joint_count()), (digest, 0), "{what}: nothing changed");
    }
    let twice = vec![joint(JointKind::Fixed), joint(JointKind::Spherical)];
    assert_eq!(
        world.step(&PhysicsStepRequest { add_joints: twice, ..tick(1) }).unwrap_err().code,
        ErrorCode::InvalidPayload
    );
    assert_eq!(
        world.step(&PhysicsStepRequest { remove_joints: vec![4], ..tick(1) }).unwrap_err().code,
        ErrorCode::InvalidPayload
    );
    world.step(&tick(1)).expect("the session goes on");
}

#[test]
fn a_jointed_scene_steps_identically_in_two_worlds_and_through_the_packed_wire() {
    let plank = |id, x: f32| BodyDesc::new(id, Shape::Box { half_extents: [0.45, 0.05, 0.5] }, [x, 5.0, 0.0]);
    let mut bodies: Vec<BodyDesc> = (0..8).map(|i| plank(10 + i, i as f32)).collect();
    bodies.push(
        BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    );
    bodies.push(BodyDesc::new(30, Shape::Box { half_extents: [0.5, 1.0, 0.05] }, [-4.0, 1.0, 0.0]));
    bodies.push(ball(31, 0.3, [3.0, 9.0, 0.0]));
    bodies.push(BodyDesc::new(32, Shape::Box { half_extents: [0.3; 3] }, [6.0, 2.0, 3.0]));
    // A rope bridge: planks linked by ball joints, its ends hung from the world; a door
    // on a motorised hinge; a ball falling on the bridge; a box on a spring.
    let link = |id, a: u64| JointDesc {
        id,
        body1: a,
        body2: Some(a + 1),
        kind: JointKind::Spherical,
        anchor1: [0.5, 0.0, 0.0],
        anchor2: [-0.5, 0.0, 0.0],
        contacts_enabled: false,
    };
    let mut joints: Vec<JointDesc> = (0..7).map(|i| link(100 + i, 10 + i)).collect();
    joints.push(JointDesc { anchor1: [-0.5, 0.0, 0.0], ..to_world(110, 10, JointKind::Spherical, [-0.5, 5.0, 0.0]) });
    joints.push(JointDesc {
        anchor1: [0.5, 0.0, 0.0],
        ..to_world(111, 17, JointKind::Rope { max_distance: 0.1 }, [7.5, 5.0, 0.0])
    });
    let motor =
        JointMotor { target_position: 0.0, target_velocity: 1.0, stiffness: 0.0, damping: 5.0, max_force: Some(20.0) };
    let door = JointKind::Revolute { axis: [0.0, 1.0, 0.0], limits: Some([-1.5, 1.5]), motor: Some(motor) };
    joints.push(JointDesc { anchor1: [-0.5, 0.0, 0.0], ..to_world(112, 30, door, [-4.5, 1.0, 0.0]) });
    joints.push(to_world(
        113,
        32,
        JointKind::Spring { rest_length: 2.0, stiffness: 80.0, damping: 2.0 },
        [6.0, 6.0, 3.0],
    ));
    let mut requests = vec![snapshot(bodies, joints)];
    requests.extend((1..600).map(tick));
    let (mut plain, mut wired) = (PhysicsWorld::new(), PhysicsWorld::new());
    for request in &requests {
        let mut bytes = Vec::new();
        packed::encode_request(request, &mut bytes);
        let decoded = packed::decode_request(&bytes).expect("decodes");
        assert_eq!(&decoded.add_joints, &request.add_joints, "joints travel bit for bit");
        let a = plain.step(request).unwrap();
        let b = wired.step(&decoded).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap(), "tick {}", request.tick);
    }
    assert_eq!(plain.digest(), wired.digest());
    let sag = state(&plain, 13).position[1];
    assert!(sag < 5.0 && sag > 2.0, "the bridge sags under its weight and holds: {sag}");
}
