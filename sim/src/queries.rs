//! Scene queries on a copy of a world's colliders, answered where the game runs: ray casts,
//! shape casts, point projection and intersection tests, with collision-group filters and
//! an excluded body.
//!
//! A [`QueryWorld`] holds one collider per body at the pose the game last applied (the
//! peers' latest tick, or the local fallback's), in a bounding-volume tree of its own
//! (parry's, which rapier's queries run over: no broad phase, no pairs, only the leaves
//! moved and the tree refitted), and never steps. The game keeps it in step by
//! [`QueryWorld::add`], [`QueryWorld::remove`], [`QueryWorld::set_pose`] and
//! [`QueryWorld::update`], and every query reads it as it is, without a network wait.
//! Shapes are built by the same code as a world's ([`crate::shapes`]), so a query sees
//! exactly the geometry the world steps.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use p2c2r_protocol::TaskError;
use p2c2r_protocol::physics::{BodyDesc, BodyId, BodyType, Groups, Quat, Shape, Vec3};
use rapier3d::math::{Pose, Rotation, Vector};
use rapier3d::parry::partitioning::{Bvh, BvhWorkspace};
use rapier3d::parry::query::{Ray, ShapeCastOptions};
use rapier3d::prelude::{
    ColliderBuilder, ColliderHandle, QueryFilter, QueryFilterFlags, QueryPipeline, RigidBodyBuilder, RigidBodyHandle,
    RigidBodyType, SharedShape,
};

use crate::checks::{invalid, unit_quat};
use crate::physics::interaction_groups;
use crate::shapes;

/// How far a leaf's box is fattened (5 cm): a body that moves less than this leaves the
/// tree untouched (queries test the exact shapes anyway).
const LEAF_MARGIN: f32 = 0.05;

/// What a query looks at: bodies whose collision groups interact with `groups`, not
/// `exclude`, and sensors only when `sensors` is set (bevy_rapier3d's `QueryFilter`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryFilterSpec {
    /// The query's groups: a body is seen when these and its own interact.
    pub groups: Groups,
    /// A body to ignore (the character casting the ray, say).
    pub exclude: Option<BodyId>,
    /// Whether sensors count.
    pub sensors: bool,
}

impl Default for QueryFilterSpec {
    fn default() -> Self {
        QueryFilterSpec { groups: Groups::ALL, exclude: None, sensors: false }
    }
}

/// A ray's first hit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RayHit {
    /// The body hit.
    pub body: BodyId,
    /// How far along the ray (in units of its direction's length).
    pub distance: f32,
    /// Where.
    pub point: Vec3,
    /// The surface's normal there.
    pub normal: Vec3,
}

/// A shape cast's first hit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShapeHit {
    /// The body hit.
    pub body: BodyId,
    /// When, in units of the cast's velocity (the shape moved `time × velocity`).
    pub time: f32,
    /// The contact point on the body hit.
    pub point: Vec3,
    /// The body's surface normal there.
    pub normal: Vec3,
}

/// The point of the world nearest to a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointHit {
    /// The nearest body.
    pub body: BodyId,
    /// The nearest point on it.
    pub point: Vec3,
    /// Whether the point queried is inside it.
    pub inside: bool,
}

/// One collider per body, at the pose last given, for queries.
pub struct QueryWorld {
    /// The colliders (and rapier's query dispatcher); never stepped.
    world: rapier3d::prelude::PhysicsWorld,
    colliders: HashMap<BodyId, Entry, BuildHasherDefault<IdHasher>>,
    /// The colliders' boxes; leaves are collider indices.
    bvh: Bvh,
    /// Scratch space for refitting and re-optimizing the tree.
    workspace: BvhWorkspace,
    /// Leaves changed since the tree was last refitted.
    dirty: bool,
}

/// Hashes a body id with one multiplication: the ids are the caller's own (a game's
/// entities), not the network's, so SipHash's defence against chosen keys buys nothing
/// here, and every applied tick looks up every moving body.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id ^ (id >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

struct Entry {
    /// A body of the same kind holding the collider (never stepped, never moved: the
    /// collider's pose is set directly), so that rapier's character controller tells
    /// dynamic bodies from the rest.
    body: RigidBodyHandle,
    handle: ColliderHandle,
    /// The collider's pose in its body's frame.
    offset: Pose,
    /// A dynamic body's mass (kg); `None` for fixed and kinematic bodies, which nothing
    /// pushes.
    mass: Option<f32>,
}

impl Default for QueryWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for QueryWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryWorld").field("bodies", &self.colliders.len()).finish()
    }
}

impl QueryWorld {
    /// An empty world.
    pub fn new() -> Self {
        QueryWorld {
            world: rapier3d::prelude::PhysicsWorld::new(),
            colliders: HashMap::default(),
            bvh: Bvh::new(),
            workspace: BvhWorkspace::default(),
            dirty: false,
        }
    }

    /// How many bodies it holds.
    pub fn len(&self) -> usize {
        self.colliders.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.colliders.is_empty()
    }

    /// Adds a body (replacing one of the same id), its shape checked and built as a world
    /// would ([`Shape::Cached`] is refused: give the shape itself).
    pub fn add(&mut self, desc: &BodyDesc) -> Result<(), TaskError> {
        let what = format!("query body {}", desc.id);
        shapes::check(&desc.shape, &what)?;
        let shape = shapes::build(&desc.shape, &what)?;
        self.add_built(desc, shape)
    }

    /// Adds a body with its shape built already (a cached one, shared).
    pub fn add_built(&mut self, desc: &BodyDesc, shape: SharedShape) -> Result<(), TaskError> {
        if !desc.position.iter().chain(&desc.rotation).all(|v| v.is_finite()) {
            return Err(invalid(format!("query body {}: a non-finite position or rotation", desc.id)));
        }
        self.remove(desc.id);
        let offset = match desc.collider_offset {
            Some(o) => Pose::from_parts(Vector::from_array(o.position), unit_quat("collider_offset", o.rotation)?),
            None => Pose::IDENTITY,
        };
        let collider = ColliderBuilder::new(shape)
            .sensor(desc.sensor)
            .collision_groups(interaction_groups(desc.collision_groups))
            .user_data(u128::from(desc.id))
            .position(pose(desc.position, desc.rotation) * offset)
            .build();
        let aabb = collider.compute_aabb();
        let mass = desc.body_type.is_dynamic().then(|| body_mass(desc, collider.shape()));
        let kind = match desc.body_type {
            BodyType::Dynamic => RigidBodyType::Dynamic,
            BodyType::Fixed => RigidBodyType::Fixed,
            BodyType::Kinematic => RigidBodyType::KinematicPositionBased,
            BodyType::KinematicVelocity => RigidBodyType::KinematicVelocityBased,
        };
        // The body stays at the origin, so the collider's pose relative to it is its pose.
        let (body, handle) = self.world.insert(RigidBodyBuilder::new(kind), collider);
        self.bvh.insert_or_update_partially(aabb, handle.into_raw_parts().0, 0.0);
        self.colliders.insert(desc.id, Entry { body, handle, offset, mass });
        self.dirty = true;
        Ok(())
    }

    /// A dynamic body's mass in kg, as a world gives it (`None` for a fixed or kinematic
    /// body, or one not held).
    pub fn mass(&self, id: BodyId) -> Option<f32> {
        self.colliders.get(&id)?.mass
    }

    /// Forgets a body.
    pub fn remove(&mut self, id: BodyId) {
        if let Some(entry) = self.colliders.remove(&id) {
            self.world.remove_body(entry.body);
            self.bvh.remove(entry.handle.into_raw_parts().0);
        }
    }

    /// Moves a body (a rotation that is not unit length is normalized; a degenerate one is
    /// the identity; a non-finite position leaves the body where it was).
    pub fn set_pose(&mut self, id: BodyId, position: Vec3, rotation: Quat) {
        let Some(entry) = self.colliders.get(&id) else { return };
        if !position.iter().all(|v| v.is_finite()) {
            return;
        }
        if let Some(collider) = self.world.colliders.get_mut(entry.handle) {
            collider.set_position(pose(position, rotation) * entry.offset);
            let aabb = collider.compute_aabb();
            self.bvh.insert_or_update_partially(aabb, entry.handle.into_raw_parts().0, LEAF_MARGIN);
            self.dirty = true;
        }
    }

    /// Brings the tree up to date with the bodies added and moved since the last call:
    /// refits it, and re-optimizes a part of it (as rapier's broad phase does each step:
    /// bodies that wander far from where the tree grouped them would otherwise make every
    /// query visit most of it). Call once after a batch of changes, before querying.
    /// Queries made without it may miss what moved.
    pub fn update(&mut self) {
        if self.dirty {
            self.bvh.refit(&mut self.workspace);
            self.bvh.optimize_incremental(&mut self.workspace);
            self.dirty = false;
        }
    }

    /// The first body a ray from `origin` along `direction` hits within `max_distance`
    /// (in units of `direction`'s length); `solid`: a ray starting inside a body hits it
    /// at distance 0.
    pub fn cast_ray(
        &self,
        origin: Vec3,
        direction: Vec3,
        max_distance: f32,
        solid: bool,
        filter: &QueryFilterSpec,
    ) -> Option<RayHit> {
        let ray = Ray::new(Vector::from_array(origin), Vector::from_array(direction));
        let (handle, hit) = self.pipeline(filter).cast_ray_and_get_normal(&ray, max_distance, solid)?;
        Some(RayHit {
            body: self.body_of(handle)?,
            distance: hit.time_of_impact,
            point: ray.point_at(hit.time_of_impact).to_array(),
            normal: hit.normal.to_array(),
        })
    }

    /// The first body `shape`, at `position`/`rotation` and moving by `velocity`, hits
    /// within `max_time` (in units of `velocity`).
    pub fn cast_shape(
        &self,
        shape: &Shape,
        position: Vec3,
        rotation: Quat,
        velocity: Vec3,
        max_time: f32,
        filter: &QueryFilterSpec,
    ) -> Result<Option<ShapeHit>, TaskError> {
        let built = self.query_shape(shape)?;
        let options = ShapeCastOptions { max_time_of_impact: max_time, ..ShapeCastOptions::default() };
        let found = self.pipeline(filter).cast_shape(
            &pose(position, rotation),
            Vector::from_array(velocity),
            built.as_ref(),
            options,
        );
        Ok(found.and_then(|(handle, hit)| {
            let collider = self.world.colliders.get(handle)?;
            Some(ShapeHit {
                body: self.body_of(handle)?,
                time: hit.time_of_impact,
                point: (collider.position() * hit.witness2).to_array(),
                normal: (collider.position().rotation * hit.normal2).to_array(),
            })
        }))
    }

    /// The nearest point of the world to `point` within `max_distance`; `solid`: a point
    /// inside a body is its own projection.
    pub fn project_point(
        &self,
        point: Vec3,
        max_distance: f32,
        solid: bool,
        filter: &QueryFilterSpec,
    ) -> Option<PointHit> {
        let pipeline = self.pipeline(filter);
        let (handle, projection) = pipeline.project_point(Vector::from_array(point), max_distance, solid)?;
        Some(PointHit { body: self.body_of(handle)?, point: projection.point.to_array(), inside: projection.is_inside })
    }

    /// The bodies containing `point`, sorted by id.
    pub fn intersections_with_point(&self, point: Vec3, filter: &QueryFilterSpec) -> Vec<BodyId> {
        let pipeline = self.pipeline(filter);
        let mut bodies: Vec<BodyId> =
            pipeline.intersect_point(Vector::from_array(point)).filter_map(|(h, _)| self.body_of(h)).collect();
        bodies.sort_unstable();
        bodies
    }

    /// The bodies `shape` at `position`/`rotation` overlaps, sorted by id.
    pub fn intersections_with_shape(
        &self,
        shape: &Shape,
        position: Vec3,
        rotation: Quat,
        filter: &QueryFilterSpec,
    ) -> Result<Vec<BodyId>, TaskError> {
        let built = self.query_shape(shape)?;
        let pipeline = self.pipeline(filter);
        let mut bodies: Vec<BodyId> = pipeline
            .intersect_shape(pose(position, rotation), built.as_ref())
            .filter_map(|(h, _)| self.body_of(h))
            .collect();
        bodies.sort_unstable();
        Ok(bodies)
    }

    pub(crate) fn query_shape(&self, shape: &Shape) -> Result<SharedShape, TaskError> {
        shapes::check(shape, "query shape")?;
        shapes::build(shape, "query shape")
    }

    /// Rapier's queries over this world's tree.
    pub(crate) fn pipeline(&self, filter: &QueryFilterSpec) -> QueryPipeline<'_> {
        QueryPipeline {
            dispatcher: self.world.narrow_phase.query_dispatcher(),
            bvh: &self.bvh,
            bodies: &self.world.bodies,
            colliders: &self.world.colliders,
            filter: self.filter(filter),
        }
    }

    pub(crate) fn body_of(&self, handle: ColliderHandle) -> Option<BodyId> {
        self.world.colliders.get(handle).map(|c| c.user_data as BodyId)
    }

    fn filter(&self, spec: &QueryFilterSpec) -> QueryFilter<'static> {
        let mut filter = QueryFilter::default().groups(interaction_groups(spec.groups));
        if !spec.sensors {
            filter.flags |= QueryFilterFlags::EXCLUDE_SENSORS;
        }
        if let Some(entry) = spec.exclude.and_then(|id| self.colliders.get(&id)) {
            filter.exclude_collider = Some(entry.handle);
        }
        filter
    }
}

/// A dynamic body's mass as a world computes it: given outright, or its shape's volume
/// times its density, plus any additional mass.
fn body_mass(desc: &BodyDesc, shape: &dyn rapier3d::parry::shape::Shape) -> f32 {
    let collider = match (desc.mass_properties, desc.mass, desc.density) {
        (Some(m), _, _) => m.mass,
        (None, Some(mass), _) => mass,
        (None, None, density) => shape.mass_properties(density.unwrap_or(crate::physics::DEFAULT_DENSITY)).mass(),
    };
    collider + desc.additional_mass
}

pub(crate) fn pose(position: Vec3, rotation: Quat) -> Pose {
    let q = Rotation::from_array(rotation);
    let length = q.length();
    let rotation = if length.is_finite() && length > 1.0e-6 { q / length } else { Rotation::IDENTITY };
    Pose::from_parts(Vector::from_array(position), rotation)
}

#[cfg(test)]
mod tests {
    use p2c2r_protocol::physics::BodyType;

    use super::*;

    const IDENTITY: Quat = [0.0, 0.0, 0.0, 1.0];

    fn world() -> QueryWorld {
        let mut q = QueryWorld::new();
        let ground = BodyDesc::new(1, Shape::Box { half_extents: [10.0, 0.5, 10.0] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed);
        q.add(&ground).unwrap();
        q.add(&BodyDesc::new(2, Shape::Sphere { radius: 0.5 }, [0.0, 3.0, 0.0])).unwrap();
        let mut top = BodyDesc::new(3, Shape::Box { half_extents: [0.5; 3] }, [0.0, 6.0, 0.0]);
        top.collision_groups = Groups { memberships: 4, filters: u32::MAX };
        q.add(&top).unwrap();
        let mut zone = BodyDesc::new(4, Shape::Box { half_extents: [2.0; 3] }, [0.0, 3.0, 0.0]);
        zone.sensor = true;
        q.add(&zone).unwrap();
        q.update();
        q
    }

    #[test]
    fn a_ray_hits_the_nearest_body_and_respects_the_filter() {
        let mut q = world();
        let down = |filter: &QueryFilterSpec| q.cast_ray([0.0, 10.0, 0.0], [0.0, -1.0, 0.0], 100.0, true, filter);
        let hit = down(&QueryFilterSpec::default()).expect("a hit");
        assert_eq!(hit.body, 3, "the box on top, not the sensor: {hit:?}");
        assert!((hit.distance - 3.5).abs() < 1e-4 && (hit.normal[1] - 1.0).abs() < 1e-4, "{hit:?}");
        let past_the_box = QueryFilterSpec { exclude: Some(3), ..Default::default() };
        assert_eq!(down(&past_the_box).unwrap().body, 2, "then the ball");
        let sensors = QueryFilterSpec { exclude: Some(3), sensors: true, ..Default::default() };
        assert_eq!(down(&sensors).unwrap().body, 4, "the zone counts when asked");
        // Groups: a query that filters group 4 out looks past the box (in group 4).
        let not_four = QueryFilterSpec { groups: Groups { memberships: u32::MAX, filters: !4 }, ..Default::default() };
        assert_eq!(down(&not_four).unwrap().body, 2);
        // Moved: the ball slides away, the ray goes on to the ground.
        q.set_pose(2, [5.0, 3.0, 0.0], IDENTITY);
        q.remove(3);
        q.update();
        let hit = q.cast_ray([0.0, 10.0, 0.0], [0.0, -1.0, 0.0], 100.0, true, &QueryFilterSpec::default()).unwrap();
        assert_eq!((hit.body, hit.distance), (1, 10.0));
    }

    #[test]
    fn a_body_added_and_moved_in_one_batch_is_one_change() {
        let mut q = QueryWorld::new();
        q.add(&BodyDesc::new(7, Shape::Sphere { radius: 1.0 }, [0.0; 3])).unwrap();
        q.set_pose(7, [3.0, 0.0, 0.0], IDENTITY);
        q.add(&BodyDesc::new(7, Shape::Sphere { radius: 0.5 }, [3.0, 0.0, 0.0])).unwrap();
        q.update();
        assert_eq!(q.len(), 1);
        assert_eq!(q.intersections_with_point([3.2, 0.0, 0.0], &QueryFilterSpec::default()), [7]);
        assert!(
            q.intersections_with_point([3.8, 0.0, 0.0], &QueryFilterSpec::default()).is_empty(),
            "the re-added, smaller ball"
        );
    }

    #[test]
    fn shapes_points_and_intersections() {
        let q = world();
        let ball = Shape::Sphere { radius: 0.25 };
        let hit = q
            .cast_shape(&ball, [0.0, 3.0, -5.0], IDENTITY, [0.0, 0.0, 1.0], 10.0, &QueryFilterSpec::default())
            .unwrap()
            .expect("the sphere cast hits the ball");
        assert_eq!(hit.body, 2);
        assert!((hit.time - 4.25).abs() < 1e-3, "{hit:?}");
        let near = q.project_point([0.0, 3.0, 2.0], 10.0, true, &QueryFilterSpec::default()).unwrap();
        assert!(near.body == 2 && !near.inside && (near.point[2] - 0.5).abs() < 1e-4, "{near:?}");
        assert_eq!(q.intersections_with_point([0.0, 3.0, 0.0], &QueryFilterSpec::default()), [2]);
        let with_sensors = QueryFilterSpec { sensors: true, ..Default::default() };
        assert_eq!(q.intersections_with_point([0.0, 3.0, 0.0], &with_sensors), [2, 4]);
        let slab = Shape::Box { half_extents: [1.0, 2.0, 1.0] };
        assert_eq!(
            q.intersections_with_shape(&slab, [0.0, 4.0, 0.0], IDENTITY, &QueryFilterSpec::default()).unwrap(),
            [2, 3]
        );
        // A degenerate query shape is an error, not a panic.
        assert!(
            q.cast_shape(
                &Shape::Sphere { radius: f32::NAN },
                [0.0; 3],
                IDENTITY,
                [1.0, 0.0, 0.0],
                1.0,
                &QueryFilterSpec::default()
            )
            .is_err()
        );
    }
}
