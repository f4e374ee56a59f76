//! Scene queries with no network wait: [`PhysicsQueries`], a resource any game system can
//! read, answers ray casts, shape casts, point projections and intersection tests against
//! the world the game holds (bevy_rapier3d's `RapierContext` queries).
//!
//! **What a query sees**: every body at its [`crate::PhysicsState`], the state of the
//! last tick applied (from a peer or the local fallback), not the interpolated
//! `Transform` drawn between the last two ticks. A body spawned (or changed) is seen from
//! the fixed tick after, when the plugin registers it, at its spawn pose; a teleport at
//! once. Queries never wait for the network and never reach it: the plugin keeps a copy of
//! every body's collider (`p2c2r_sim::queries`, rapier's own queries over the same shapes
//! a world steps) and moves it as results are applied.
//!
//! **What it costs**: the copy is kept in step at every applied tick (every body added,
//! every applied state that changed moved and the tree refitted: about 80 ns a moving body
//! in `cargo bench -p p2c2r_sim --bench features`, about twice that inside a game, where
//! the copy is cold). A game that never queries can turn it
//! off with [`crate::P2c2rConfiguration::scene_queries`]; queries then see nothing, and
//! turning it back on rebuilds the copy at the next tick.

use bevy::math::{Quat, Vec3};
use bevy::prelude::{Entity, ResMut, Resource};
use p2c2r_protocol::physics::BodyDesc;
use p2c2r_sim::queries::{QueryFilterSpec, QueryWorld};

use crate::body::{BodyParts, Collider, CollisionGroups};
use crate::components::PhysicsState;

/// What a query looks at (bevy_rapier3d's `QueryFilter`): by default every solid body.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueryFilter {
    /// The query's groups: a body is seen when these and its own interact.
    pub groups: Option<CollisionGroups>,
    /// A body to ignore (the one casting).
    pub exclude_rigid_body: Option<Entity>,
    /// Whether sensors count.
    pub include_sensors: bool,
}

impl QueryFilter {
    /// Sees only bodies whose groups interact with these.
    pub fn groups(mut self, groups: CollisionGroups) -> Self {
        self.groups = Some(groups);
        self
    }

    /// Ignores this body.
    pub fn exclude_rigid_body(mut self, entity: Entity) -> Self {
        self.exclude_rigid_body = Some(entity);
        self
    }

    /// Sees sensors too.
    pub fn include_sensors(mut self) -> Self {
        self.include_sensors = true;
        self
    }

    fn spec(&self) -> QueryFilterSpec {
        QueryFilterSpec {
            groups: CollisionGroups::wire(self.groups),
            exclude: self.exclude_rigid_body.map(Entity::to_bits),
            sensors: self.include_sensors,
        }
    }
}

/// A ray's first hit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RayHit {
    /// The body hit.
    pub entity: Entity,
    /// How far along the ray, in units of its direction's length.
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
    pub entity: Entity,
    /// When, in units of the cast's velocity.
    pub time: f32,
    /// The contact point on the body hit.
    pub point: Vec3,
    /// The body's surface normal there.
    pub normal: Vec3,
}

/// The nearest point of the world to a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointHit {
    /// The nearest body.
    pub entity: Entity,
    /// The nearest point on it.
    pub point: Vec3,
    /// Whether the point queried is inside it.
    pub inside: bool,
}

/// Scene queries against the world the game holds: read it as `Res<PhysicsQueries>` from
/// any system (see the module's documentation for which tick a query sees).
#[derive(Resource, Default, Debug)]
pub struct PhysicsQueries {
    world: QueryWorld,
    tick: u64,
    /// The copy holds every body and follows every applied state.
    synced: bool,
}

impl PhysicsQueries {
    /// The tick whose states the queries see (0 before the first).
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// The first body a ray from `origin` along `direction` hits within `max_distance`
    /// (in units of `direction`'s length); `solid`: a ray that starts inside a body hits
    /// it at distance 0.
    pub fn cast_ray(
        &self,
        origin: Vec3,
        direction: Vec3,
        max_distance: f32,
        solid: bool,
        filter: QueryFilter,
    ) -> Option<RayHit> {
        let hit = self.world.cast_ray(origin.to_array(), direction.to_array(), max_distance, solid, &filter.spec())?;
        Some(RayHit {
            entity: Entity::try_from_bits(hit.body)?,
            distance: hit.distance,
            point: Vec3::from_array(hit.point),
            normal: Vec3::from_array(hit.normal),
        })
    }

    /// The first body `shape`, at `position`/`rotation` moving by `velocity`, hits within
    /// `max_time` (in units of `velocity`). `None` too for a shape a world would refuse.
    pub fn cast_shape(
        &self,
        shape: &Collider,
        position: Vec3,
        rotation: Quat,
        velocity: Vec3,
        max_time: f32,
        filter: QueryFilter,
    ) -> Option<ShapeHit> {
        let hit = self
            .world
            .cast_shape(
                shape.shape(),
                position.to_array(),
                rotation.to_array(),
                velocity.to_array(),
                max_time,
                &filter.spec(),
            )
            .ok()??;
        Some(ShapeHit {
            entity: Entity::try_from_bits(hit.body)?,
            time: hit.time,
            point: Vec3::from_array(hit.point),
            normal: Vec3::from_array(hit.normal),
        })
    }

    /// The nearest point of the world to `point` within `max_distance`; `solid`: a point
    /// inside a body is its own projection.
    pub fn project_point(&self, point: Vec3, max_distance: f32, solid: bool, filter: QueryFilter) -> Option<PointHit> {
        let hit = self.world.project_point(point.to_array(), max_distance, solid, &filter.spec())?;
        Some(PointHit {
            entity: Entity::try_from_bits(hit.body)?,
            point: Vec3::from_array(hit.point),
            inside: hit.inside,
        })
    }

    /// The bodies containing `point`.
    pub fn intersections_with_point(&self, point: Vec3, filter: QueryFilter) -> Vec<Entity> {
        let bodies = self.world.intersections_with_point(point.to_array(), &filter.spec());
        bodies.into_iter().filter_map(Entity::try_from_bits).collect()
    }

    /// The bodies `shape` at `position`/`rotation` overlaps (none for a shape a world would
    /// refuse).
    pub fn intersections_with_shape(
        &self,
        shape: &Collider,
        position: Vec3,
        rotation: Quat,
        filter: QueryFilter,
    ) -> Vec<Entity> {
        let found = self.world.intersections_with_shape(
            shape.shape(),
            position.to_array(),
            rotation.to_array(),
            &filter.spec(),
        );
        found.unwrap_or_default().into_iter().filter_map(Entity::try_from_bits).collect()
    }

    /// A body registered (or re-created): `desc` as sent, keyed here by its entity (only
    /// once the copy is kept).
    pub(crate) fn add(&mut self, entity: Entity, desc: &BodyDesc) {
        if !self.synced {
            return;
        }
        let desc = BodyDesc { id: entity.to_bits(), ..desc.clone() };
        if let Err(e) = self.world.add(&desc) {
            // A world refuses the body too (and says so); queries just do not see it.
            tracing::debug!(?entity, error = %e.message, "p2c2r: a body queries cannot see");
        }
    }

    /// The copy itself (the character controller walks on it).
    pub(crate) fn world(&self) -> &QueryWorld {
        &self.world
    }

    /// Brings the tree up to the moves made since (teleports, characters).
    pub(crate) fn update(&mut self) {
        self.world.update();
    }

    /// A body is gone.
    pub(crate) fn remove(&mut self, entity: Entity) {
        if self.synced {
            self.world.remove(entity.to_bits());
        }
    }

    /// A body was teleported, or a character moved.
    pub(crate) fn set_pose(&mut self, entity: Entity, position: Vec3, rotation: Quat) {
        if self.synced {
            self.world.set_pose(entity.to_bits(), position.to_array(), rotation.to_array());
        }
    }
}

/// Brings the queries up to the states just applied (the Apply stage, last): every body
/// once, and from then on the states that changed.
pub(crate) fn update_queries(
    mut queries: ResMut<PhysicsQueries>,
    settings: bevy::prelude::Res<crate::P2c2rConfiguration>,
    results: bevy::prelude::Res<crate::apply::Results>,
    ids: bevy::prelude::Res<crate::ids::EntityIds>,
    bodies: bevy::prelude::Query<(Entity, BodyParts, &PhysicsState)>,
    moved: bevy::prelude::Query<(Entity, &PhysicsState), bevy::prelude::Changed<PhysicsState>>,
) {
    let queries = &mut *queries;
    if !settings.scene_queries {
        if queries.synced {
            queries.world = QueryWorld::new();
            queries.synced = false;
        }
        return;
    }
    if !queries.synced {
        queries.synced = true;
        for (entity, parts, state) in &bodies {
            if ids.bodies.id(entity) == Some(state.id) {
                queries.add(entity, &parts.desc(state.id, state));
            }
        }
    } else {
        for (entity, state) in &moved {
            queries.world.set_pose(entity.to_bits(), state.position.to_array(), state.rotation.to_array());
        }
    }
    queries.world.update();
    queries.tick = results.last_applied_tick.unwrap_or(0);
}
