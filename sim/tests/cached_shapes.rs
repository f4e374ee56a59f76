//! Large static geometry sent once: a world with a shape cache keeps the level mesh it was
//! sent, a later snapshot names it by content (40 bytes instead of megabytes), and the
//! world it makes steps exactly as one sent the mesh itself. A name the cache lacks is a
//! `missing_shape` error that asks for a resync and changes nothing.

use p2c2r_protocol::physics::{BodyDesc, BodyType, CompoundPart, PhysicsStepRequest, Shape, ShapeHash};
use p2c2r_protocol::{ErrorCode, limits, packed};
use p2c2r_sim::Budgets;
use p2c2r_sim::physics::PhysicsWorld;
use p2c2r_sim::shape_cache::ShapeCache;

const DT: f32 = 1.0 / 60.0;

/// A bumpy level floor of `n × n` quads (2 n² triangles).
fn level(n: u32) -> Shape {
    let vertices = (0..=n)
        .flat_map(|z| {
            (0..=n).map(move |x| {
                [x as f32 - n as f32 / 2.0, ((x * 7 + z * 3) % 5) as f32 * 0.05, z as f32 - n as f32 / 2.0]
            })
        })
        .collect();
    let at = |x: u32, z: u32| z * (n + 1) + x;
    let indices = (0..n)
        .flat_map(|z| {
            (0..n).flat_map(move |x| {
                [[at(x, z), at(x, z + 1), at(x + 1, z)], [at(x + 1, z), at(x, z + 1), at(x + 1, z + 1)]]
            })
        })
        .collect();
    Shape::TriMesh { vertices, indices }
}

fn scene(floor: Shape) -> Vec<BodyDesc> {
    let mut bodies = vec![BodyDesc::new(0, floor, [0.0; 3]).with_body_type(BodyType::Fixed)];
    for i in 0..20u64 {
        bodies.push(BodyDesc::new(
            i + 1,
            Shape::Box { half_extents: [0.3; 3] },
            [(i % 5) as f32 - 2.0, 2.0 + (i / 5) as f32, 0.5],
        ));
    }
    bodies
}

fn snapshot(tick: u64, add: Vec<BodyDesc>) -> PhysicsStepRequest {
    PhysicsStepRequest { tick, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }
}

fn tick(t: u64) -> PhysicsStepRequest {
    PhysicsStepRequest { tick: t, dt: DT, steps: 1, ..Default::default() }
}

fn packed_len(request: &PhysicsStepRequest) -> usize {
    let mut bytes = Vec::new();
    packed::encode_request(request, &mut bytes);
    assert_eq!(packed::decode_request(&bytes).unwrap().add.len(), request.add.len());
    bytes.len()
}

#[test]
fn a_level_mesh_is_sent_once_then_named_and_the_worlds_step_identically() {
    let budgets = Budgets::default();
    let floor = level(100); // 20,000 triangles
    let cached = floor.to_cached().expect("a level mesh is worth caching");
    let mut cache = ShapeCache::default();
    // The first connection sends the mesh; the peer keeps it.
    let mut first = PhysicsWorld::new();
    let inline = snapshot(0, scene(floor.clone()));
    first.step_cached(&inline, &budgets, &mut cache).unwrap();
    assert!(cache.contains(&ShapeHash::of(&floor)));
    for t in 1..60 {
        first.step_cached(&tick(t), &budgets, &mut cache).unwrap();
    }
    // A resync (or a failover to a peer that holds the mesh) names it: a few bytes.
    let named = snapshot(0, scene(cached.clone()));
    let (inline_bytes, named_bytes) = (packed_len(&inline), packed_len(&named));
    assert!(inline_bytes > 200_000 && named_bytes < 1_000, "{inline_bytes} bytes sent once, {named_bytes} after");
    // The world made from the name steps exactly as the one made from the mesh.
    let (mut from_mesh, mut from_name) = (PhysicsWorld::new(), PhysicsWorld::new());
    for t in 0..240 {
        let (a, b) = if t == 0 { (inline.clone(), named.clone()) } else { (tick(t), tick(t)) };
        let a = from_mesh.step_limited(&a, &budgets).unwrap();
        let b = from_name.step_cached(&b, &budgets, &mut cache).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap(), "tick {t}");
    }
    assert_eq!(from_mesh.size(), from_name.size(), "charged for the same elements");
    let resting = from_name.state(1).unwrap().position[1];
    assert!(resting > 0.2 && resting < 0.7, "the boxes landed on the mesh: {resting}");
    assert_eq!(cache.hits_and_misses(), (1, 0));
}

#[test]
fn a_name_the_cache_lacks_asks_for_the_shape_and_bad_names_are_refused() {
    let budgets = Budgets::default();
    let floor = level(20);
    let named = snapshot(0, scene(floor.to_cached().unwrap()));
    let mut world = PhysicsWorld::new();
    world.step_limited(&snapshot(0, scene(Shape::Box { half_extents: [10.0, 0.1, 10.0] })), &budgets).unwrap();
    let before = world.digest();
    // No cache, or one without the shape: missing, resync, nothing changed.
    let mut empty = ShapeCache::default();
    for error in [world.step_limited(&named, &budgets), world.step_cached(&named, &budgets, &mut empty)] {
        let error = error.expect_err("missing");
        assert_eq!((error.code, error.resync), (ErrorCode::MissingShape, true), "{error:?}");
        assert!(error.message.contains(&ShapeHash::of(&floor).to_hex()), "{}", error.message);
        assert_eq!(world.digest(), before);
    }
    // With the shape cached: a wrong element count, a dynamic mesh, a cached part.
    let mut cache = ShapeCache::default();
    PhysicsWorld::new().step_cached(&snapshot(0, scene(floor.clone())), &budgets, &mut cache).unwrap();
    let Some(Shape::Cached { sha256, elements }) = floor.to_cached() else { unreachable!() };
    let wrong_count = Shape::Cached { sha256, elements: elements + 1 };
    let mut dynamic = scene(floor.to_cached().unwrap());
    dynamic[0].body_type = BodyType::Dynamic;
    let part = CompoundPart { shape: floor.to_cached().unwrap(), position: [0.0; 3], rotation: [0.0, 0.0, 0.0, 1.0] };
    let cases = [
        (snapshot(0, scene(wrong_count)), "declared"),
        (snapshot(0, dynamic), "cannot be a dynamic body"),
        (snapshot(0, scene(Shape::Compound { parts: vec![part] })), "compound"),
    ];
    for (request, expected) in cases {
        let error = world.step_cached(&request, &budgets, &mut cache).expect_err(expected);
        assert_eq!(error.code, ErrorCode::InvalidPayload, "{expected}: {error:?}");
        assert!(error.message.contains(expected), "{expected}: {}", error.message);
        assert_eq!(world.digest(), before);
    }
    // Small shapes are never cached (sending them is cheaper than naming them).
    assert!(Shape::Box { half_extents: [1.0; 3] }.to_cached().is_none());
    assert!(level(5).elements() < limits::MIN_CACHED_SHAPE_ELEMENTS && level(5).to_cached().is_none());
}

#[test]
fn a_name_for_a_shape_the_same_request_sends_itself_is_resolved() {
    // Two bodies share the level's mesh: one carries it, the other names it.
    let floor = level(20);
    let mut add = scene(floor.clone());
    add.push(BodyDesc::new(99, floor.to_cached().unwrap(), [0.0, -3.0, 0.0]).with_body_type(BodyType::Fixed));
    let mut cache = ShapeCache::default();
    let result = PhysicsWorld::new().step_cached(&snapshot(0, add), &Budgets::default(), &mut cache);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(cache.len(), 1, "kept once");
}
