//! The components that describe an offloaded rigid body, named and shaped as
//! bevy_rapier3d's: a [`Collider`] makes an entity a body (fixed unless it has a
//! [`RigidBody`]), and the optional components beside it ([`Friction`], [`Restitution`],
//! [`ColliderMassProperties`], [`GravityScale`], [`LockedAxes`], [`Sensor`],
//! [`ActiveEvents`], [`CollisionGroups`], ...) set what the defaults do not. Changing any
//! of them re-creates the body in the world at its latest state; removing the
//! [`Collider`] (or despawning the entity) removes it.
//!
//! [`BodyParts`] reads them all, and [`BodyParts::desc`] is the one place a body becomes
//! its wire description.

use std::sync::OnceLock;

use bevy::ecs::query::QueryData;
use bevy::math::{Quat, Vec3};
use bevy::prelude::{Component, Transform};
use p2c2r_protocol::physics::{self as wire, BodyId, BodyType, CombineRule, Groups, MassProperties, Offset};

use crate::components::{PhysicsState, valid_position, valid_rotation, valid_velocity};

/// How a body moves: bevy_rapier3d's `RigidBody`. An entity with a [`Collider`] and no
/// `RigidBody` is a fixed body.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[require(Transform)]
pub enum RigidBody {
    /// Moved by gravity, forces, impulses and contacts.
    #[default]
    Dynamic,
    /// Never moves.
    Fixed,
    /// Moved only by [`crate::KinematicTarget`]; pushes dynamic bodies.
    KinematicPositionBased,
    /// Moved only by its [`Velocity`]; pushes dynamic bodies.
    KinematicVelocityBased,
}

impl RigidBody {
    /// The wire's body type.
    pub fn body_type(self) -> BodyType {
        match self {
            RigidBody::Dynamic => BodyType::Dynamic,
            RigidBody::Fixed => BodyType::Fixed,
            RigidBody::KinematicPositionBased => BodyType::Kinematic,
            RigidBody::KinematicVelocityBased => BodyType::KinematicVelocity,
        }
    }
}

/// A body's collision shape, in its frame: bevy_rapier3d's `Collider`, with its
/// constructors. Large shapes (a level mesh, a terrain: at least
/// [`p2c2r_protocol::limits::MIN_CACHED_SHAPE_ELEMENTS`] elements) are sent to a peer
/// once and named by their content afterwards ([`wire::Shape::Cached`]).
#[derive(Component, Clone, Debug)]
#[require(Transform)]
pub struct Collider {
    shape: wire::Shape,
    /// The shape's name in a peer's cache, computed once (`None` for small shapes).
    cached: OnceLock<Option<wire::Shape>>,
}

impl PartialEq for Collider {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape
    }
}

impl Collider {
    /// A collider of this wire shape.
    pub fn from_shape(shape: wire::Shape) -> Self {
        Collider { shape, cached: OnceLock::new() }
    }

    /// A ball.
    pub fn ball(radius: f32) -> Self {
        Self::from_shape(wire::Shape::Sphere { radius })
    }

    /// A box with these half extents.
    pub fn cuboid(hx: f32, hy: f32, hz: f32) -> Self {
        Self::from_shape(wire::Shape::Box { half_extents: [hx, hy, hz] })
    }

    /// A capsule along y.
    pub fn capsule_y(half_height: f32, radius: f32) -> Self {
        Self::from_shape(wire::Shape::Capsule { half_height, radius })
    }

    /// A capsule along x.
    pub fn capsule_x(half_height: f32, radius: f32) -> Self {
        Self::from_shape(wire::Shape::CapsuleX { half_height, radius })
    }

    /// A capsule along z.
    pub fn capsule_z(half_height: f32, radius: f32) -> Self {
        Self::from_shape(wire::Shape::CapsuleZ { half_height, radius })
    }

    /// A cylinder along y.
    pub fn cylinder(half_height: f32, radius: f32) -> Self {
        Self::from_shape(wire::Shape::Cylinder { half_height, radius })
    }

    /// A cone along y, its tip up.
    pub fn cone(half_height: f32, radius: f32) -> Self {
        Self::from_shape(wire::Shape::Cone { half_height, radius })
    }

    /// The convex hull of these points (the world refuses points in one plane).
    pub fn convex_hull(points: &[Vec3]) -> Self {
        Self::from_shape(wire::Shape::ConvexHull { points: points.iter().map(|p| p.to_array()).collect() })
    }

    /// A triangle mesh (static geometry: fixed or kinematic bodies only).
    pub fn trimesh(vertices: Vec<Vec3>, indices: Vec<[u32; 3]>) -> Self {
        Self::from_shape(wire::Shape::TriMesh { vertices: vertices.iter().map(|v| v.to_array()).collect(), indices })
    }

    /// A heightfield of `rows × columns` heights (rows along z, row after row), `scale`
    /// being its size along x, the heights' scale, its size along z.
    pub fn heightfield(heights: Vec<f32>, rows: u32, columns: u32, scale: Vec3) -> Self {
        Self::from_shape(wire::Shape::Heightfield { rows, columns, heights, scale: scale.to_array() })
    }

    /// Convex shapes fixed together, each at its pose in the body's frame.
    pub fn compound(parts: Vec<(Vec3, Quat, Collider)>) -> Self {
        let parts = parts
            .into_iter()
            .map(|(position, rotation, collider)| wire::CompoundPart {
                shape: collider.shape,
                position: position.to_array(),
                rotation: rotation.to_array(),
            })
            .collect();
        Self::from_shape(wire::Shape::Compound { parts })
    }

    /// The wire shape.
    pub fn shape(&self) -> &wire::Shape {
        &self.shape
    }

    /// Its name in a peer's cache ([`wire::Shape::Cached`]) when it is large enough to
    /// be cached (hashed once).
    pub fn cached(&self) -> Option<&wire::Shape> {
        self.cached.get_or_init(|| self.shape.to_cached()).as_ref()
    }
}

/// Friction coefficient and how it combines with the other body's (bevy_rapier3d's
/// `Friction`). Default 0.5, averaged.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct Friction {
    /// The coefficient.
    pub coefficient: f32,
    /// How two bodies' coefficients combine.
    pub combine_rule: CombineRule,
}

impl Friction {
    /// This coefficient, averaged with the other body's.
    pub fn coefficient(coefficient: f32) -> Self {
        Friction { coefficient, combine_rule: CombineRule::Average }
    }
}

/// Restitution (bounciness) and how it combines (bevy_rapier3d's `Restitution`).
/// Default 0, averaged.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct Restitution {
    /// The coefficient, 0..1.
    pub coefficient: f32,
    /// How two bodies' coefficients combine.
    pub combine_rule: CombineRule,
}

impl Restitution {
    /// This coefficient, averaged with the other body's.
    pub fn coefficient(coefficient: f32) -> Self {
        Restitution { coefficient, combine_rule: CombineRule::Average }
    }
}

/// The collider's mass (bevy_rapier3d's `ColliderMassProperties`). Default: density 1000.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub enum ColliderMassProperties {
    /// Density, kg/m³.
    Density(f32),
    /// Total mass, kg.
    Mass(f32),
    /// Everything explicit.
    MassProperties(MassProperties),
}

/// Mass added to the body's collider's (bevy_rapier3d's `AdditionalMassProperties::Mass`).
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct AdditionalMass(pub f32);

/// Linear and angular damping (bevy_rapier3d's `Damping`).
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct Damping {
    /// Linear damping.
    pub linear_damping: f32,
    /// Angular damping.
    pub angular_damping: f32,
}

/// How much gravity moves the body (bevy_rapier3d's `GravityScale`). Default 1.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct GravityScale(pub f32);

/// Axes the body cannot move along or turn about (bevy_rapier3d's `LockedAxes`).
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LockedAxes(pub u8);

impl LockedAxes {
    /// No translation along x.
    pub const TRANSLATION_LOCKED_X: Self = LockedAxes(wire::locked_axes::TRANSLATION_X);
    /// No translation along y.
    pub const TRANSLATION_LOCKED_Y: Self = LockedAxes(wire::locked_axes::TRANSLATION_Y);
    /// No translation along z.
    pub const TRANSLATION_LOCKED_Z: Self = LockedAxes(wire::locked_axes::TRANSLATION_Z);
    /// No translation at all.
    pub const TRANSLATION_LOCKED: Self = LockedAxes(0b111);
    /// No rotation about x.
    pub const ROTATION_LOCKED_X: Self = LockedAxes(wire::locked_axes::ROTATION_X);
    /// No rotation about y.
    pub const ROTATION_LOCKED_Y: Self = LockedAxes(wire::locked_axes::ROTATION_Y);
    /// No rotation about z.
    pub const ROTATION_LOCKED_Z: Self = LockedAxes(wire::locked_axes::ROTATION_Z);
    /// No rotation at all (a character that stays upright).
    pub const ROTATION_LOCKED: Self = LockedAxes(0b111_000);
}

impl std::ops::BitOr for LockedAxes {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        LockedAxes(self.0 | other.0)
    }
}

/// The body's dominance group (bevy_rapier3d's `Dominance`): in a contact, the more
/// dominant body is not pushed by the other. -127..=127, default 0.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dominance {
    /// The group.
    pub groups: i8,
}

/// Continuous collision detection, for fast small bodies (bevy_rapier3d's `Ccd`).
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ccd {
    /// Whether it is on.
    pub enabled: bool,
}

impl Ccd {
    /// On.
    pub fn enabled() -> Self {
        Ccd { enabled: true }
    }
}

/// The body's velocity (bevy_rapier3d's `Velocity`): its velocity at spawn, kept up to
/// date by the plugin at every applied tick; a change the game makes is sent to the world
/// (a velocity-based kinematic body moves by it).
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct Velocity {
    /// Linear velocity, m/s.
    pub linvel: Vec3,
    /// Angular velocity, rad/s.
    pub angvel: Vec3,
}

impl Velocity {
    /// This linear velocity.
    pub fn linear(linvel: Vec3) -> Self {
        Velocity { linvel, angvel: Vec3::ZERO }
    }
}

/// Which bodies it touches at all (bevy_rapier3d's `CollisionGroups`): two bodies
/// interact when each one's `memberships` share a bit with the other's `filters`.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CollisionGroups {
    /// The groups it is in.
    pub memberships: u32,
    /// The groups it interacts with.
    pub filters: u32,
}

impl CollisionGroups {
    /// These groups.
    pub fn new(memberships: u32, filters: u32) -> Self {
        CollisionGroups { memberships, filters }
    }

    /// The wire's groups (`None`: every group).
    pub(crate) fn wire(groups: Option<CollisionGroups>) -> Groups {
        groups.map_or(Groups::ALL, |g| Groups { memberships: g.memberships, filters: g.filters })
    }
}

/// Which bodies' contacts push it (bevy_rapier3d's `SolverGroups`): contacts with the
/// others are detected (and raise events) and push nothing.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SolverGroups {
    /// The groups it is in.
    pub memberships: u32,
    /// The groups whose contacts push it.
    pub filters: u32,
}

impl SolverGroups {
    /// These groups.
    pub fn new(memberships: u32, filters: u32) -> Self {
        SolverGroups { memberships, filters }
    }
}

/// A trigger volume (bevy_rapier3d's `Sensor`): it detects what enters it (with
/// [`ActiveEvents::COLLISION_EVENTS`]) and pushes nothing. A sensor notices every moving
/// body, a kinematic character walking into a fixed zone included, but not the fixed
/// geometry it overlaps.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sensor;

/// Which events the body raises (bevy_rapier3d's `ActiveEvents`): see
/// [`crate::CollisionEvent`] and [`crate::ContactForceEvent`].
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActiveEvents(pub u8);

impl ActiveEvents {
    /// Started and stopped touching (entering and leaving a sensor).
    pub const COLLISION_EVENTS: Self = ActiveEvents(wire::active_events::COLLISION_EVENTS);
    /// Contact forces above the [`ContactForceEventThreshold`].
    pub const CONTACT_FORCE_EVENTS: Self = ActiveEvents(wire::active_events::CONTACT_FORCE_EVENTS);
}

impl std::ops::BitOr for ActiveEvents {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        ActiveEvents(self.0 | other.0)
    }
}

/// The total contact force (N) above which a pair raises a [`crate::ContactForceEvent`]
/// (bevy_rapier3d's `ContactForceEventThreshold`). Default 0.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct ContactForceEventThreshold(pub f32);

/// The collider's pose in its body's frame (bevy_rapier3d places a collider on a child
/// entity for this; here it is a component of the body).
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct ColliderOffset {
    /// Position in the body's frame.
    pub position: Vec3,
    /// Rotation in the body's frame.
    pub rotation: Quat,
}

/// Every component that describes a body, read at once.
#[derive(QueryData)]
pub struct BodyParts {
    /// The shape (required).
    pub collider: &'static Collider,
    /// Fixed when absent.
    pub rigid_body: Option<&'static RigidBody>,
    /// Friction.
    pub friction: Option<&'static Friction>,
    /// Restitution.
    pub restitution: Option<&'static Restitution>,
    /// Mass.
    pub mass: Option<&'static ColliderMassProperties>,
    /// Additional mass.
    pub additional_mass: Option<&'static AdditionalMass>,
    /// Damping.
    pub damping: Option<&'static Damping>,
    /// Gravity scale.
    pub gravity_scale: Option<&'static GravityScale>,
    /// Locked axes.
    pub locked_axes: Option<&'static LockedAxes>,
    /// Dominance.
    pub dominance: Option<&'static Dominance>,
    /// Continuous collision detection.
    pub ccd: Option<&'static Ccd>,
    /// Collision groups.
    pub collision_groups: Option<&'static CollisionGroups>,
    /// Solver groups.
    pub solver_groups: Option<&'static SolverGroups>,
    /// A sensor.
    pub sensor: Option<&'static Sensor>,
    /// Events.
    pub active_events: Option<&'static ActiveEvents>,
    /// The contact-force threshold.
    pub threshold: Option<&'static ContactForceEventThreshold>,
    /// The collider's offset.
    pub offset: Option<&'static ColliderOffset>,
}

/// A change to any part of a body: it is re-created.
pub type BodyChanged = bevy::prelude::Or<(
    bevy::prelude::Or<(
        bevy::prelude::Changed<Collider>,
        bevy::prelude::Changed<RigidBody>,
        bevy::prelude::Changed<Friction>,
        bevy::prelude::Changed<Restitution>,
        bevy::prelude::Changed<ColliderMassProperties>,
        bevy::prelude::Changed<AdditionalMass>,
        bevy::prelude::Changed<Damping>,
        bevy::prelude::Changed<GravityScale>,
    )>,
    bevy::prelude::Or<(
        bevy::prelude::Changed<LockedAxes>,
        bevy::prelude::Changed<Dominance>,
        bevy::prelude::Changed<Ccd>,
        bevy::prelude::Changed<CollisionGroups>,
        bevy::prelude::Changed<SolverGroups>,
        bevy::prelude::Changed<Sensor>,
        bevy::prelude::Changed<ActiveEvents>,
        bevy::prelude::Changed<ContactForceEventThreshold>,
        bevy::prelude::Changed<ColliderOffset>,
    )>,
)>;

impl BodyPartsItem<'_, '_> {
    /// The body type.
    pub fn body_type(&self) -> BodyType {
        self.rigid_body.copied().unwrap_or(RigidBody::Fixed).body_type()
    }

    /// The events it asks for.
    pub fn active_events(&self) -> u8 {
        self.active_events.map_or(0, |e| e.0)
    }

    /// The wire description of this body with this id and state (the shape itself; the
    /// sender may name a cached one instead).
    pub fn desc(&self, id: BodyId, state: &PhysicsState) -> wire::BodyDesc {
        let mut d = wire::BodyDesc::new(id, self.collider.shape.clone(), valid_position(state.position));
        d.body_type = self.body_type();
        d.rotation = valid_rotation(state.rotation);
        d.linvel = valid_velocity(state.linvel);
        d.angvel = valid_velocity(state.angvel);
        d.sleeping = state.sleeping;
        if let Some(f) = self.friction {
            (d.friction, d.friction_combine) = (f.coefficient, f.combine_rule);
        }
        if let Some(r) = self.restitution {
            (d.restitution, d.restitution_combine) = (r.coefficient, r.combine_rule);
        }
        match self.mass {
            Some(ColliderMassProperties::Density(density)) => d.density = Some(*density),
            Some(ColliderMassProperties::Mass(mass)) => d.mass = Some(*mass),
            Some(ColliderMassProperties::MassProperties(m)) => d.mass_properties = Some(*m),
            None => {}
        }
        if let Some(m) = self.additional_mass {
            d.additional_mass = m.0;
        }
        if let Some(damping) = self.damping {
            (d.linear_damping, d.angular_damping) = (damping.linear_damping, damping.angular_damping);
        }
        if let Some(g) = self.gravity_scale {
            d.gravity_scale = g.0;
        }
        if let Some(l) = self.locked_axes {
            d.locked_axes = l.0;
        }
        if let Some(dom) = self.dominance {
            d.dominance = dom.groups;
        }
        d.ccd = self.ccd.is_some_and(|c| c.enabled);
        if let Some(g) = self.collision_groups {
            d.collision_groups = CollisionGroups::wire(Some(*g));
        }
        if let Some(g) = self.solver_groups {
            d.solver_groups = Groups { memberships: g.memberships, filters: g.filters };
        }
        d.sensor = self.sensor.is_some();
        d.active_events = self.active_events();
        if let Some(t) = self.threshold {
            d.contact_force_threshold = t.0;
        }
        if let Some(o) = self.offset {
            d.collider_offset = Some(Offset { position: o.position.to_array(), rotation: valid_rotation(o.rotation) });
        }
        d
    }
}
