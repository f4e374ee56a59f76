//! What the new physics features cost a peer per tick, beside plain rapier stepping the
//! same scene. A printed table, not a timed test.
//!
//! Run: `cargo bench -p p2c2r_sim --bench features`.
//!
//! Each scene is stepped 600 ticks at 60 Hz by `PhysicsWorld::step_timed` (what a peer
//! runs: validation, rapier's step, events, the lattice, the report) and by a plain
//! rapier3d `PhysicsWorld` built with the same bodies, shapes and joints, tick for tick
//! interleaved so both see the same machine load. Plain rapier asks for its own collision
//! events where the scene has them (a channel collector, drained every tick).
//!
//! - `jointed`: 20 rope bridges of 20 planks (400 bodies, 400 ball joints and 20 ropes),
//!   40 balls dropped on them;
//! - `events`: 1,000 bouncy balls in a closed box without gravity, every one reporting
//!   its collisions (about 130 events a tick);
//! - `terrain`: a heightfield, a 20,000-triangle mesh and 300 convex hulls, compounds and
//!   cylinders falling on them;
//! - `sensors`: 400 balls falling through 25 trigger zones onto a ground.
//!
//! Columns: mean µs per tick for P2C2R (apply, step, extract and total) and for plain
//! rapier, and their ratio. Then what scene queries cost the game (`p2c2r_sim::queries`):
//! keeping a copy of 4,096 moving boxes in step, and a ray cast through them.

use std::time::{Duration, Instant};

use p2c2r_protocol::physics::{
    BodyDesc, BodyType, CompoundPart, JointDesc, JointKind, PhysicsStepRequest, Shape, active_events,
};
use p2c2r_sim::physics::PhysicsWorld;
use p2c2r_sim::shapes;

mod scenes;
use rapier3d::prelude::{
    ActiveCollisionTypes, ActiveEvents, ChannelEventCollector, ColliderBuilder, RigidBodyBuilder, RigidBodyHandle,
    RopeJointBuilder, SphericalJointBuilder, Vector,
};

const DT: f32 = 1.0 / 60.0;
const TICKS: u64 = 600;

/// A scene: the snapshot P2C2R gets, and the same world for plain rapier.
struct Scene {
    name: &'static str,
    gravity: [f32; 3],
    bodies: Vec<BodyDesc>,
    joints: Vec<JointDesc>,
}

/// The plain rapier world of a scene.
fn plain(scene: &Scene) -> (rapier3d::prelude::PhysicsWorld, std::collections::HashMap<u64, RigidBodyHandle>) {
    let mut world = rapier3d::prelude::PhysicsWorld::new();
    world.gravity = Vector::from_array(scene.gravity);
    world.integration_parameters.dt = DT;
    let mut handles = std::collections::HashMap::new();
    for d in &scene.bodies {
        let body = match d.body_type {
            BodyType::Fixed => RigidBodyBuilder::fixed(),
            _ => RigidBodyBuilder::dynamic(),
        }
        .translation(Vector::from_array(d.position))
        .linvel(Vector::from_array(d.linvel))
        .ccd_enabled(d.ccd);
        let shape = shapes::build(&d.shape, "bench").expect("the scene's shapes build");
        let mut collider = ColliderBuilder::new(shape)
            .friction(d.friction)
            .restitution(d.restitution)
            .sensor(d.sensor)
            .density(1000.0);
        if d.active_events & active_events::COLLISION_EVENTS != 0 {
            collider = collider.active_events(ActiveEvents::COLLISION_EVENTS);
        }
        if d.sensor {
            collider = collider.active_collision_types(ActiveCollisionTypes::all() - ActiveCollisionTypes::FIXED_FIXED);
        }
        handles.insert(d.id, world.insert(body, collider).0);
    }
    let anchor = world.insert_body(RigidBodyBuilder::fixed());
    for j in &scene.joints {
        let (parent, child, a1, a2) = match j.body2 {
            Some(b2) => (handles[&j.body1], handles[&b2], j.anchor1, j.anchor2),
            None => (anchor, handles[&j.body1], j.anchor2, j.anchor1),
        };
        let (a1, a2) = (Vector::from_array(a1), Vector::from_array(a2));
        match j.kind {
            JointKind::Spherical => {
                world.insert_impulse_joint(
                    parent,
                    child,
                    SphericalJointBuilder::new().local_anchor1(a1).local_anchor2(a2),
                );
            }
            JointKind::Rope { max_distance } => {
                world.insert_impulse_joint(
                    parent,
                    child,
                    RopeJointBuilder::new(max_distance).local_anchor1(a1).local_anchor2(a2),
                );
            }
            _ => unreachable!("the scenes use ball joints and ropes"),
        }
    }
    (world, handles)
}

fn jointed() -> Scene {
    let (bodies, joints) = scenes::rope_bridges();
    Scene { name: "jointed", gravity: [0.0, -9.81, 0.0], bodies, joints }
}

fn fixed(id: u64, shape: Shape, at: [f32; 3]) -> BodyDesc {
    BodyDesc::new(id, shape, at).with_body_type(BodyType::Fixed)
}

fn events() -> Scene {
    Scene { name: "events", gravity: [0.0; 3], bodies: scenes::bouncing_balls(true), joints: Vec::new() }
}

fn terrain() -> Scene {
    let (rows, columns) = (65u32, 65u32);
    let heights =
        (0..rows * columns).map(|i| ((i % columns) as f32 * 0.3).sin() * ((i / columns) as f32 * 0.2).cos()).collect();
    let n = 100u32;
    let vertices =
        (0..=n).flat_map(|z| (0..=n).map(move |x| [x as f32 * 0.4 - 20.0, 0.0, z as f32 * 0.4 + 25.0])).collect();
    let at = |x: u32, z: u32| z * (n + 1) + x;
    let indices = (0..n)
        .flat_map(|z| {
            (0..n).flat_map(move |x| {
                [[at(x, z), at(x, z + 1), at(x + 1, z)], [at(x + 1, z), at(x, z + 1), at(x + 1, z + 1)]]
            })
        })
        .collect();
    let mut bodies = vec![
        fixed(0, Shape::Heightfield { rows, columns, heights, scale: [40.0, 1.0, 40.0] }, [0.0, 0.0, 0.0]),
        fixed(1, Shape::TriMesh { vertices, indices }, [0.0, 0.0, 0.0]),
    ];
    let hull = Shape::ConvexHull {
        points: vec![[0.0; 3], [0.6, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.6], [0.3, 0.3, 0.3]],
    };
    let part = |shape, position| CompoundPart { shape, position, rotation: [0.0, 0.0, 0.0, 1.0] };
    let compound = Shape::Compound {
        parts: vec![
            part(Shape::Box { half_extents: [0.4, 0.1, 0.4] }, [0.0; 3]),
            part(Shape::Sphere { radius: 0.2 }, [0.0, 0.3, 0.0]),
        ],
    };
    for i in 0..300u64 {
        let shape = match i % 3 {
            0 => hull.clone(),
            1 => compound.clone(),
            _ => Shape::Cylinder { half_height: 0.3, radius: 0.25 },
        };
        let (x, z) = ((i % 15) as f32 * 2.4 - 17.0, (i / 15) as f32 * 2.4 - 17.0 + if i % 2 == 0 { 0.0 } else { 30.0 });
        bodies.push(BodyDesc::new(10 + i, shape, [x, 3.0 + (i % 4) as f32, z]));
    }
    Scene { name: "terrain", gravity: [0.0, -9.81, 0.0], bodies, joints: Vec::new() }
}

fn sensors() -> Scene {
    let mut bodies = vec![fixed(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0])];
    for k in 0..25u64 {
        let mut zone = fixed(
            1 + k,
            Shape::Box { half_extents: [1.5, 0.5, 1.5] },
            [(k % 5) as f32 * 6.0 - 12.0, 3.0, (k / 5) as f32 * 6.0 - 12.0],
        );
        (zone.sensor, zone.active_events) = (true, active_events::COLLISION_EVENTS);
        bodies.push(zone);
    }
    for i in 0..400u64 {
        let (x, z) = ((i % 20) as f32 * 1.5 - 14.25, (i / 20) as f32 * 1.5 - 14.25);
        bodies.push(BodyDesc::new(100 + i, Shape::Sphere { radius: 0.3 }, [x, 6.0 + (i % 3) as f32, z]));
    }
    Scene { name: "sensors", gravity: [0.0, -9.81, 0.0], bodies, joints: Vec::new() }
}

fn run(scene: Scene) {
    let mut ours = PhysicsWorld::new();
    let (mut theirs, _) = plain(&scene);
    let (collisions, collisions_out) = std::sync::mpsc::channel();
    let (forces, _forces_out) = std::sync::mpsc::channel();
    let (tears, _tears_out) = std::sync::mpsc::channel();
    let collector = ChannelEventCollector::new(collisions, forces, tears);
    let (mut apply, mut step, mut extract, mut plain_total) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut our_events, mut their_events) = (0usize, 0usize);
    for tick in 0..TICKS {
        let request = if tick == 0 {
            PhysicsStepRequest {
                tick,
                snapshot: true,
                gravity: Some(scene.gravity),
                dt: DT,
                steps: 1,
                add: scene.bodies.clone(),
                add_joints: scene.joints.clone(),
                ..Default::default()
            }
        } else {
            PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() }
        };
        let (result, timings) = ours.step_timed(&request).expect("the scene is valid");
        our_events += result.events.len();
        if tick > 0 {
            // The snapshot's tick builds the world: compare the ticks that follow.
            (apply, step, extract) = (apply + timings.apply, step + timings.step, extract + timings.extract);
        }
        let started = Instant::now();
        theirs.step_with_events(&(), &collector);
        their_events += collisions_out.try_iter().count();
        if tick > 0 {
            plain_total += started.elapsed();
        }
    }
    let ticks = (TICKS - 1) as f64;
    let us = |d: Duration| d.as_secs_f64() * 1e6 / ticks;
    let total = apply + step + extract;
    println!(
        "{:<10} {:>6} {:>6} | {:>8.0} {:>8.0} {:>8.0} {:>8.0} | {:>8.0} | {:>6.2} | {:>7.1} {:>7.1}",
        scene.name,
        scene.bodies.len(),
        scene.joints.len(),
        us(apply),
        us(step),
        us(extract),
        us(total),
        us(plain_total),
        total.as_secs_f64() / plain_total.as_secs_f64(),
        our_events as f64 / TICKS as f64,
        their_events as f64 / TICKS as f64,
    );
}

/// What scene queries cost the game: 4,096 boxes in a `QueryWorld`, all moved each tick
/// (the copy kept in step), and ray casts through them.
fn queries() {
    use p2c2r_sim::queries::{QueryFilterSpec, QueryWorld};
    let n = 4096u64;
    let mut rng = fastrand::Rng::with_seed(4096);
    let mut world = QueryWorld::new();
    let at = |i: u64, shift: f32| [(i % 16) as f32 * 2.0 + shift, ((i / 16) % 16) as f32 * 2.0, (i / 256) as f32 * 2.0];
    for i in 0..n {
        world.add(&BodyDesc::new(i, Shape::Box { half_extents: [0.4; 3] }, at(i, 0.0))).expect("a box");
    }
    world.update();
    // Every box wanders at up to 3 m/s, bouncing inside the 32 m cube, for 10 s at 60 Hz:
    // far from where the tree first grouped them.
    let mut positions: Vec<[f32; 3]> = (0..n).map(|i| at(i, 0.0)).collect();
    let mut velocities: Vec<[f32; 3]> =
        (0..n).map(|_| [0; 3].map(|_: i32| (rng.f32() * 2.0 - 1.0) * 3.0 / 60.0)).collect();
    let ticks = 600u32;
    let started = Instant::now();
    for _ in 0..ticks {
        for i in 0..n as usize {
            for k in 0..3 {
                positions[i][k] += velocities[i][k];
                if !(0.0..32.0).contains(&positions[i][k]) {
                    velocities[i][k] = -velocities[i][k];
                }
            }
            world.set_pose(i as u64, positions[i], [0.0, 0.0, 0.0, 1.0]);
        }
        world.update();
    }
    let per_tick = started.elapsed() / ticks;
    let casts = 20_000u32;
    let filter = QueryFilterSpec::default();
    let (mut hits, started) = (0, Instant::now());
    for _ in 0..casts {
        let origin = [rng.f32() * 32.0, rng.f32() * 32.0, rng.f32() * 32.0];
        let direction = [rng.f32() * 2.0 - 1.0, rng.f32() * 2.0 - 1.0, rng.f32() * 2.0 - 1.0];
        if world.cast_ray(origin, direction, 100.0, true, &filter).is_some() {
            hits += 1;
        }
    }
    let per_cast = started.elapsed() / casts;
    println!();
    println!(
        "scene queries among {n} boxes wandering for {ticks} ticks: keeping the copy in step {:.0} µs a tick (every \
         box moved); a ray cast from inside the crowd in a random direction {:.2} µs ({hits} of {casts} hit)",
        per_tick.as_secs_f64() * 1e6,
        per_cast.as_secs_f64() * 1e6
    );
}

fn main() {
    println!(
        "{:<10} {:>6} {:>6} | {:>8} {:>8} {:>8} {:>8} | {:>8} | {:>6} | {:>7} {:>7}",
        "scene",
        "bodies",
        "joints",
        "apply µs",
        "step µs",
        "extr. µs",
        "P2C2R µs",
        "rapier µs",
        "ratio",
        "events",
        "rapier"
    );
    for scene in [jointed(), events(), terrain(), sensors()] {
        run(scene);
    }
    queries();
}
