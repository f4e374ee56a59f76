//! Scenes two benchmarks share (`bandwidth` and `features`): each a snapshot's bodies and
//! joints, so both measure the same worlds.

use p2c2r_protocol::physics::{BodyDesc, BodyType, JointDesc, JointKind, Shape, active_events};

/// 20 rope bridges of 20 planks (400 bodies, 400 ball joints and 20 ropes to the world),
/// 40 balls dropped on them.
pub fn rope_bridges() -> (Vec<BodyDesc>, Vec<JointDesc>) {
    let (bridges, planks) = (20u64, 20u64);
    let (mut bodies, mut joints) = (Vec::new(), Vec::new());
    for b in 0..bridges {
        let z = b as f32 * 3.0;
        for p in 0..planks {
            let id = b * planks + p;
            bodies.push(BodyDesc::new(id, Shape::Box { half_extents: [0.45, 0.05, 0.5] }, [p as f32, 5.0, z]));
            let link = |id, body2, kind, anchor1, anchor2| JointDesc {
                id,
                body1: b * planks + p,
                body2,
                kind,
                anchor1,
                anchor2,
                contacts_enabled: false,
            };
            if p == 0 {
                joints.push(link(10_000 + b, None, JointKind::Spherical, [-0.5, 0.0, 0.0], [-0.5, 5.0, z]));
            }
            if p + 1 < planks {
                joints.push(link(id, Some(id + 1), JointKind::Spherical, [0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]));
            } else {
                let rope = JointKind::Rope { max_distance: 0.05 };
                joints.push(link(20_000 + b, None, rope, [0.5, 0.0, 0.0], [planks as f32 - 0.5, 5.0, z]));
            }
        }
        for k in 0..2u64 {
            let x = 5.0 + k as f32 * 8.0;
            bodies.push(BodyDesc::new(1_000 + b * 2 + k, Shape::Sphere { radius: 0.3 }, [x, 8.0 + k as f32, z]));
        }
    }
    (bodies, joints)
}

/// 1,000 bouncy balls (with continuous collision detection) in a closed 10 m box without
/// gravity, each reporting its collisions when `listening`: about 130 events a tick.
pub fn bouncing_balls(listening: bool) -> Vec<BodyDesc> {
    let mut rng = fastrand::Rng::with_seed(500);
    let wall = |id, half: [f32; 3], at: [f32; 3]| {
        BodyDesc::new(id, Shape::Box { half_extents: half }, at).with_body_type(BodyType::Fixed)
    };
    let mut bodies = vec![
        wall(0, [5.0, 0.5, 5.0], [0.0, -0.5, 0.0]),
        wall(1, [5.0, 0.5, 5.0], [0.0, 10.5, 0.0]),
        wall(2, [0.5, 5.0, 5.0], [-5.5, 5.0, 0.0]),
        wall(3, [0.5, 5.0, 5.0], [5.5, 5.0, 0.0]),
        wall(4, [5.0, 5.0, 0.5], [0.0, 5.0, -5.5]),
        wall(5, [5.0, 5.0, 0.5], [0.0, 5.0, 5.5]),
    ];
    let mut speed = || rng.f32() * 48.0 - 24.0;
    for i in 0..1000u64 {
        let (x, y, z) = ((i % 10) as f32 - 4.5, 0.5 + (i / 100) as f32 * 0.95, ((i / 10) % 10) as f32 - 4.5);
        let mut ball = BodyDesc::new(100 + i, Shape::Sphere { radius: 0.3 }, [x, y, z]);
        ball.linvel = [speed(), speed(), speed()];
        (ball.restitution, ball.friction, ball.ccd) = (1.0, 0.0, true);
        if listening {
            ball.active_events = active_events::COLLISION_EVENTS;
        }
        bodies.push(ball);
    }
    bodies
}
