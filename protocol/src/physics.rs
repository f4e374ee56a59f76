//! The `physics_step` task: one fixed tick of a physics session held by a peer.
//!
//! The gamer sends what changed since the previous tick; the peer applies it to the
//! session's world, steps it `steps` times by `dt`, and answers with the state of every
//! body that moved. A request with `snapshot: true` replaces the whole world and is
//! accepted by any peer at any time: it is how a session starts and how it moves to a new
//! peer after its old one died.
//!
//! Vectors are `[x, y, z]`, rotations are unit quaternions `[x, y, z, w]`, units are SI.

use serde::{Deserialize, Serialize};

/// A body's id, chosen by the gamer, unique within its session.
pub type BodyId = u64;

/// A joint's id, chosen by the gamer, unique within its session (apart from body ids).
pub type JointId = u64;

/// Three floats: a position, a velocity, a force, ...
pub type Vec3 = [f32; 3];

/// A unit quaternion `[x, y, z, w]`.
pub type Quat = [f32; 4];

/// The identity rotation.
pub const IDENTITY: Quat = [0.0, 0.0, 0.0, 1.0];

/// A `physics_step` request's payload (`task_data`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhysicsStepRequest {
    /// The tick number. Without `snapshot`, it must be one more than the session's last.
    pub tick: u64,
    /// Replace the session's world with `add` (and start the session if the peer lacks it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// Gravity; the session keeps the last value sent, `[0, -9.81, 0]` at first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gravity: Option<Vec3>,
    /// Seconds per step.
    pub dt: f32,
    /// Steps to take this tick.
    #[serde(default = "one_step")]
    pub steps: u32,
    /// Bodies to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<BodyDesc>,
    /// Bodies to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<BodyId>,
    /// Bodies to teleport.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_pose: Vec<SetPose>,
    /// Velocities to overwrite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_velocity: Vec<SetVelocity>,
    /// Forces applied during this tick's steps (cleared afterwards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forces: Vec<ApplyForce>,
    /// Impulses applied once, before this tick's first step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impulses: Vec<ApplyImpulse>,
    /// Poses that kinematic bodies move to over this tick.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinematic_targets: Vec<KinematicTarget>,
    /// Bodies to wake up (before this tick's steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wake: Vec<BodyId>,
    /// Bodies to put to sleep (before this tick's steps; a contact or a change wakes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sleep: Vec<BodyId>,
    /// Joints to create (after the bodies are added; a snapshot lists every joint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_joints: Vec<JointDesc>,
    /// Joints to delete (before `add_joints`, so a joint can be changed in one tick).
    /// Removing a body removes its joints too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_joints: Vec<JointId>,
    /// Only in a snapshot: the pairs of bodies that were touching (for which a
    /// [`EventKind::Started`] was delivered and no [`EventKind::Stopped`] yet), each with
    /// the smaller id first, sorted. The world reports them stopped when they no longer
    /// touch, and does not report them started again: so a session moved to another
    /// world raises each event exactly once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touching: Vec<[BodyId; 2]>,
}

/// A joint between two bodies, or between a body and the world: bevy_rapier3d's
/// `ImpulseJoint` with the joint builders of the same names. Its angle or offset (what
/// limits and motors act on) is the second body's against the first (bevy_rapier's child
/// against its parent); a body joined to the world is measured against the world.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JointDesc {
    /// The joint's id.
    pub id: JointId,
    /// The first body.
    pub body1: BodyId,
    /// The second body; none: the world (anchored at `anchor2`, in world coordinates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body2: Option<BodyId>,
    /// What it allows.
    pub kind: JointKind,
    /// Where it holds the first body, in that body's frame.
    #[serde(default)]
    pub anchor1: Vec3,
    /// Where it holds the second body, in that body's frame (or the world's).
    #[serde(default)]
    pub anchor2: Vec3,
    /// Whether the two bodies still collide with each other.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub contacts_enabled: bool,
}

/// What a joint allows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JointKind {
    /// No relative motion at all.
    Fixed,
    /// Turning about one axis only (a hinge).
    Revolute {
        /// The axis, in both bodies' frames (normalized).
        axis: Vec3,
        /// The smallest and largest angle, radians.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<[f32; 2]>,
        /// A motor driving the angle.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        motor: Option<JointMotor>,
    },
    /// Sliding along one axis only.
    Prismatic {
        /// The axis, in both bodies' frames (normalized).
        axis: Vec3,
        /// The smallest and largest offset along it, metres.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<[f32; 2]>,
        /// A motor driving the offset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        motor: Option<JointMotor>,
    },
    /// Turning freely about the anchors (a ball joint).
    Spherical,
    /// The anchors at most this far apart.
    Rope {
        /// The rope's length, metres.
        max_distance: f32,
    },
    /// A spring between the anchors.
    Spring {
        /// Its length at rest, metres.
        rest_length: f32,
        /// Its stiffness, N/m.
        stiffness: f32,
        /// Its damping, N·s/m.
        damping: f32,
    },
}

/// A joint's motor: it pushes the joint towards `target_position` with `stiffness` and
/// towards `target_velocity` with `damping`, with at most `max_force` (rapier's motor
/// model, acceleration-based).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JointMotor {
    /// The angle (radians) or offset (metres) to reach.
    #[serde(default)]
    pub target_position: f32,
    /// The speed to reach.
    #[serde(default)]
    pub target_velocity: f32,
    /// How hard it pulls towards the target position.
    #[serde(default)]
    pub stiffness: f32,
    /// How hard it pulls towards the target velocity.
    #[serde(default)]
    pub damping: f32,
    /// The most force (or torque) it applies; none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_force: Option<f32>,
}

fn one_step() -> u32 {
    1
}

/// How a body moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyType {
    /// Moved by forces and contacts.
    #[default]
    Dynamic,
    /// Moved only by kinematic targets; pushes dynamic bodies.
    Kinematic,
    /// Never moves.
    Fixed,
    /// Moved only by the velocity it is given (`set_velocity`, or its initial one); pushes
    /// dynamic bodies. bevy_rapier's `RigidBody::KinematicVelocityBased`.
    KinematicVelocity,
}

impl BodyType {
    /// Whether contacts and forces move it.
    pub fn is_dynamic(self) -> bool {
        self == BodyType::Dynamic
    }

    /// Whether it is kinematic (moved by position or by velocity).
    pub fn is_kinematic(self) -> bool {
        matches!(self, BodyType::Kinematic | BodyType::KinematicVelocity)
    }
}

/// A collision shape, in the body's frame (or the collider's, see
/// [`BodyDesc::collider_offset`]). bevy_rapier3d's `Collider` constructors of the same names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shape {
    /// A box with these half extents.
    Box {
        /// Half the size along x, y and z.
        half_extents: Vec3,
    },
    /// A ball.
    Sphere {
        /// Its radius.
        radius: f32,
    },
    /// A capsule along the y axis.
    Capsule {
        /// Half the length of the cylinder part.
        half_height: f32,
        /// Its radius.
        radius: f32,
    },
    /// A capsule along the x axis.
    CapsuleX {
        /// Half the length of the cylinder part.
        half_height: f32,
        /// Its radius.
        radius: f32,
    },
    /// A capsule along the z axis.
    CapsuleZ {
        /// Half the length of the cylinder part.
        half_height: f32,
        /// Its radius.
        radius: f32,
    },
    /// A cylinder along the y axis.
    Cylinder {
        /// Half its height.
        half_height: f32,
        /// Its radius.
        radius: f32,
    },
    /// A cone along the y axis, its base at `-half_height`, its tip at `half_height`.
    Cone {
        /// Half its height.
        half_height: f32,
        /// The radius of its base.
        radius: f32,
    },
    /// The convex hull of these points (at least four, not all in one plane).
    ConvexHull {
        /// The points, at most [`crate::limits::MAX_HULL_POINTS`].
        points: Vec<Vec3>,
    },
    /// A triangle mesh (a level's static geometry, typically: its triangles have no
    /// inside, so a dynamic body made of one collides poorly; use a convex hull or a
    /// compound of them for moving bodies).
    TriMesh {
        /// The vertices, at most [`crate::limits::MAX_MESH_VERTICES`].
        vertices: Vec<Vec3>,
        /// The triangles, as indices into `vertices` (counter-clockwise seen from outside),
        /// at most [`crate::limits::MAX_MESH_TRIANGLES`].
        indices: Vec<[u32; 3]>,
    },
    /// A terrain: a grid of heights in the x/z plane, centred on the body.
    Heightfield {
        /// Grid rows, along z (at least 2).
        rows: u32,
        /// Grid columns, along x (at least 2).
        columns: u32,
        /// `rows × columns` heights, row after row, each scaled by `scale[1]`.
        heights: Vec<f32>,
        /// The grid's size along x, the heights' scale along y, its size along z.
        scale: Vec3,
    },
    /// Several convex shapes fixed together, each at its own pose in the body's frame.
    Compound {
        /// The parts: boxes, balls, capsules, cylinders, cones and convex hulls (no meshes,
        /// heightfields or compounds), at most [`crate::limits::MAX_COMPOUND_PARTS`].
        parts: Vec<CompoundPart>,
    },
    /// A large shape the world already holds in its cache, named by its content: the
    /// SHA-256 of its packed encoding ([`ShapeHash::of`]). A world keeps every shape of at
    /// least [`crate::limits::MIN_CACHED_SHAPE_ELEMENTS`] elements it was sent, within a
    /// byte budget; one that lacks the shape answers `missing_shape` (with `resync`), and
    /// the gamer sends the snapshot again with the shape itself. Not a compound's part.
    Cached {
        /// The shape's content hash.
        sha256: ShapeHash,
        /// Its [`Shape::elements`], for the memory the world is charged before it looks
        /// the shape up (a world refuses a count that differs from the shape's).
        elements: u64,
    },
}

/// The SHA-256 of a shape's packed encoding: what names it in a cache. Hex on JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeHash(pub [u8; 32]);

impl ShapeHash {
    /// The hash of `shape`'s packed encoding (the tag byte and its data).
    pub fn of(shape: &Shape) -> ShapeHash {
        use sha2::Digest as _;
        let mut bytes = Vec::new();
        crate::packed::put_shape_bytes(&mut bytes, shape);
        ShapeHash(sha2::Sha256::digest(&bytes).into())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<ShapeHash> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ShapeHash(out))
    }
}

impl std::fmt::Debug for ShapeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShapeHash({})", self.to_hex())
    }
}

impl Serialize for ShapeHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ShapeHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ShapeHash::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("a shape hash is 64 hex digits"))
    }
}

impl Shape {
    /// Whether it is made of parts (a mesh, a heightfield, a compound): such a shape may
    /// not be a compound's part.
    pub fn is_composite(&self) -> bool {
        matches!(self, Shape::TriMesh { .. } | Shape::Heightfield { .. } | Shape::Compound { .. })
    }

    /// How many elements (points, vertices, triangles, cells, parts and theirs) it is
    /// made of, as counted against [`crate::limits::MAX_SHAPE_ELEMENTS_PER_REQUEST`].
    pub fn elements(&self) -> usize {
        match self {
            Shape::ConvexHull { points } => points.len(),
            Shape::TriMesh { vertices, indices } => vertices.len().saturating_add(indices.len()),
            Shape::Heightfield { heights, .. } => heights.len(),
            Shape::Compound { parts } => {
                parts.iter().fold(parts.len(), |sum, part| sum.saturating_add(part.shape.elements()))
            }
            Shape::Cached { elements, .. } => usize::try_from(*elements).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// Whether a world keeps it in its shape cache (and a gamer may send it as
    /// [`Shape::Cached`]): it has at least [`crate::limits::MIN_CACHED_SHAPE_ELEMENTS`]
    /// elements.
    pub fn is_cacheable(&self) -> bool {
        !matches!(self, Shape::Cached { .. }) && self.elements() >= crate::limits::MIN_CACHED_SHAPE_ELEMENTS
    }

    /// This shape as a reference to its cached copy, when it is cacheable.
    pub fn to_cached(&self) -> Option<Shape> {
        self.is_cacheable().then(|| Shape::Cached { sha256: ShapeHash::of(self), elements: self.elements() as u64 })
    }
}

/// One part of a [`Shape::Compound`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompoundPart {
    /// Its shape.
    pub shape: Shape,
    /// Where it sits in the body's frame.
    #[serde(default)]
    pub position: Vec3,
    /// How it is turned in the body's frame.
    #[serde(default = "identity")]
    pub rotation: Quat,
}

/// How two colliders' friction or restitution coefficients combine in a contact (the rule
/// of higher rank among the two wins: average < min < multiply < max, as in rapier).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CombineRule {
    /// Their mean.
    #[default]
    Average,
    /// The smaller.
    Min,
    /// Their product.
    Multiply,
    /// The larger.
    Max,
}

/// A body's mass properties given outright instead of computed from its shape.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MassProperties {
    /// Its mass, kg.
    pub mass: f32,
    /// Its centre of mass, in the body's frame.
    #[serde(default)]
    pub center_of_mass: Vec3,
    /// Its principal moments of inertia, kg·m².
    pub principal_inertia: Vec3,
    /// The frame of the principal axes, in the body's frame.
    #[serde(default = "identity")]
    pub principal_inertia_frame: Quat,
}

/// Axes along or about which a body cannot move: bits of [`BodyDesc::locked_axes`], as
/// bevy_rapier3d's `LockedAxes`.
pub mod locked_axes {
    /// No translation along x.
    pub const TRANSLATION_X: u8 = 1;
    /// No translation along y.
    pub const TRANSLATION_Y: u8 = 1 << 1;
    /// No translation along z.
    pub const TRANSLATION_Z: u8 = 1 << 2;
    /// No rotation about x.
    pub const ROTATION_X: u8 = 1 << 3;
    /// No rotation about y.
    pub const ROTATION_Y: u8 = 1 << 4;
    /// No rotation about z.
    pub const ROTATION_Z: u8 = 1 << 5;
    /// Every bit in use.
    pub const ALL: u8 = 0b11_1111;
}

/// A body to create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BodyDesc {
    /// The body's id.
    pub id: BodyId,
    /// Its collision shape.
    pub shape: Shape,
    /// How it moves.
    #[serde(default)]
    pub body_type: BodyType,
    /// Where it starts.
    #[serde(default)]
    pub position: Vec3,
    /// How it starts rotated.
    #[serde(default = "identity")]
    pub rotation: Quat,
    /// Initial linear velocity.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub linvel: Vec3,
    /// Initial angular velocity.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub angvel: Vec3,
    /// Total mass in kg; overrides `density`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass: Option<f32>,
    /// Density in kg/m³ (1000 when neither mass nor density is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<f32>,
    /// Friction coefficient.
    #[serde(default = "default_friction")]
    pub friction: f32,
    /// Restitution (bounciness).
    #[serde(default)]
    pub restitution: f32,
    /// Linear damping.
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub linear_damping: f32,
    /// Angular damping.
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub angular_damping: f32,
    /// Continuous collision detection, for fast small bodies such as projectiles.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ccd: bool,
    /// Whether the body starts asleep.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sleeping: bool,
    /// Where the collider sits in the body's frame (its shape is then centred there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collider_offset: Option<Offset>,
    /// How much gravity pulls it (1: fully; 0: not at all; negative: upwards).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub gravity_scale: f32,
    /// Axes it cannot move along or turn about ([`locked_axes`] bits).
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub locked_axes: u8,
    /// Its dominance group (-127 to 127): in a contact, the body of the higher group
    /// pushes the other as if it were fixed.
    #[serde(default, skip_serializing_if = "is_zero_i8")]
    pub dominance: i8,
    /// Mass added to what its collider gives (kg), as bevy_rapier3d's
    /// `AdditionalMassProperties::Mass`.
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub additional_mass: f32,
    /// Its mass properties given outright (overrides `mass` and `density`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass_properties: Option<MassProperties>,
    /// How its friction combines with another's.
    #[serde(default, skip_serializing_if = "is_average")]
    pub friction_combine: CombineRule,
    /// How its restitution combines with another's.
    #[serde(default, skip_serializing_if = "is_average")]
    pub restitution_combine: CombineRule,
    /// Which colliders it touches at all (no contact, no event with the others), as
    /// bevy_rapier3d's `CollisionGroups`.
    #[serde(default, skip_serializing_if = "Groups::is_all")]
    pub collision_groups: Groups,
    /// Which colliders' contacts push it (contacts with the others are computed, and
    /// push nothing), as bevy_rapier3d's `SolverGroups`.
    #[serde(default, skip_serializing_if = "Groups::is_all")]
    pub solver_groups: Groups,
    /// A sensor (a trigger volume): it detects what enters it and pushes nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensor: bool,
    /// Which events it raises: bits of [`active_events`], as bevy_rapier3d's
    /// `ActiveEvents`. A pair of bodies raises collision events when either asks.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub active_events: u8,
    /// The total contact force (newtons, the sum of every contact's magnitude) above which
    /// a pair raises a contact-force event, as bevy_rapier3d's
    /// `ContactForceEventThreshold`: the smaller of the two bodies' that ask for them.
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub contact_force_threshold: f32,
}

/// The events a body raises: bits of [`BodyDesc::active_events`].
pub mod active_events {
    /// [`super::EventKind::Started`] and [`super::EventKind::Stopped`] when it starts or
    /// stops touching another body (a sensor: when one enters or leaves it).
    pub const COLLISION_EVENTS: u8 = 1;
    /// [`super::EventKind::ContactForce`] at each step its contacts with a body push
    /// harder than the threshold.
    pub const CONTACT_FORCE_EVENTS: u8 = 1 << 1;
    /// Every bit in use.
    pub const ALL: u8 = 0b11;
}

/// Interaction groups: two colliders interact when each one's `memberships` share a bit
/// with the other's `filters` (rapier's `InteractionGroups` in its default *and* mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    /// The groups it is in (32 bits).
    pub memberships: u32,
    /// The groups it interacts with.
    pub filters: u32,
}

impl Groups {
    /// In every group, interacting with every group: the default.
    pub const ALL: Groups = Groups { memberships: u32::MAX, filters: u32::MAX };

    /// Whether these are the defaults.
    pub fn is_all(&self) -> bool {
        *self == Groups::ALL
    }
}

impl Default for Groups {
    fn default() -> Self {
        Groups::ALL
    }
}

/// A collider's pose in its body's frame.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offset {
    /// Its position.
    #[serde(default)]
    pub position: Vec3,
    /// Its rotation.
    #[serde(default = "identity")]
    pub rotation: Quat,
}

impl BodyDesc {
    /// A dynamic body of this shape at this position, with default material.
    pub fn new(id: BodyId, shape: Shape, position: Vec3) -> Self {
        BodyDesc {
            id,
            shape,
            body_type: BodyType::Dynamic,
            position,
            rotation: IDENTITY,
            linvel: [0.0; 3],
            angvel: [0.0; 3],
            mass: None,
            density: None,
            friction: default_friction(),
            restitution: 0.0,
            linear_damping: 0.0,
            angular_damping: 0.0,
            ccd: false,
            sleeping: false,
            collider_offset: None,
            gravity_scale: 1.0,
            locked_axes: 0,
            dominance: 0,
            additional_mass: 0.0,
            mass_properties: None,
            friction_combine: CombineRule::Average,
            restitution_combine: CombineRule::Average,
            collision_groups: Groups::ALL,
            solver_groups: Groups::ALL,
            sensor: false,
            active_events: 0,
            contact_force_threshold: 0.0,
        }
    }

    /// The same body with another body type.
    pub fn with_body_type(mut self, body_type: BodyType) -> Self {
        self.body_type = body_type;
        self
    }
}

fn identity() -> Quat {
    IDENTITY
}

fn default_friction() -> f32 {
    0.5
}

fn is_zero(v: &Vec3) -> bool {
    *v == [0.0; 3]
}

fn is_zero_f32(v: &f32) -> bool {
    *v == 0.0
}

fn one() -> f32 {
    1.0
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

fn is_one(v: &f32) -> bool {
    v.to_bits() == 1.0f32.to_bits()
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

fn is_zero_i8(v: &i8) -> bool {
    *v == 0
}

fn is_average(rule: &CombineRule) -> bool {
    *rule == CombineRule::Average
}

/// Teleports a body.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetPose {
    /// The body.
    pub id: BodyId,
    /// New position.
    pub position: Vec3,
    /// New rotation.
    #[serde(default = "identity")]
    pub rotation: Quat,
}

/// Overwrites a body's velocities.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetVelocity {
    /// The body.
    pub id: BodyId,
    /// New linear velocity.
    #[serde(default)]
    pub linvel: Vec3,
    /// New angular velocity.
    #[serde(default)]
    pub angvel: Vec3,
}

/// A force (N) and torque (N·m) applied during this tick.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyForce {
    /// The body.
    pub id: BodyId,
    /// Force at the centre of mass.
    #[serde(default)]
    pub force: Vec3,
    /// Torque.
    #[serde(default)]
    pub torque: Vec3,
}

/// An impulse (N·s) and angular impulse applied once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyImpulse {
    /// The body.
    pub id: BodyId,
    /// Linear impulse at the centre of mass.
    #[serde(default)]
    pub impulse: Vec3,
    /// Angular impulse.
    #[serde(default)]
    pub torque_impulse: Vec3,
}

/// Where a kinematic body should be at the end of this tick.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KinematicTarget {
    /// The body.
    pub id: BodyId,
    /// Target position.
    pub position: Vec3,
    /// Target rotation.
    #[serde(default = "identity")]
    pub rotation: Quat,
}

/// A successful `physics_step` result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhysicsStepResult {
    /// Always [`crate::TaskStatus::Success`].
    pub status: crate::TaskStatus,
    /// The tick this answers.
    pub tick: u64,
    /// Every body that moved this tick, or that fell asleep (once, with `sleeping: true`).
    /// After a snapshot, every non-fixed body.
    pub bodies: Vec<BodyState>,
    /// Bodies the peer removed from the world this tick because they left its bounds
    /// (a position past the largest coordinate or a speed past the largest speed): the
    /// session stays resyncable, and the gamer should forget them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<BodyId>,
    /// A digest of the session's whole state after this tick (every body, at full
    /// precision, and the gravity): 16 lowercase hex digits of XXH3-64 (see
    /// `p2c2r_sim::physics::PhysicsWorld::digest`). Two worlds with the same
    /// determinism setup ([`crate::Determinism`]) fed the same requests give the same
    /// digest, so results can be checked against each other without sending the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The tick's collision and contact-force events, in a deterministic order: by step,
    /// then stops before starts before forces, then by body ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<PhysicsEvent>,
}

/// Something that happened between two bodies during one step of a tick, as
/// bevy_rapier3d's `CollisionEvent` and `ContactForceEvent`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhysicsEvent {
    /// The step of the tick (from 0) in which it happened.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub step: u32,
    /// The body with the smaller id.
    pub body1: BodyId,
    /// The other body.
    pub body2: BodyId,
    /// What happened.
    pub kind: EventKind,
}

/// What happened between two bodies.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// They started touching (or one entered the other, a sensor).
    Started {
        /// One of them is a sensor.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sensor: bool,
    },
    /// They stopped touching.
    Stopped {
        /// One of them is a sensor.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sensor: bool,
        /// Because one of them was removed from the world (by the game, or for leaving its
        /// bounds).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        removed: bool,
    },
    /// Their contacts pushed harder than the threshold during the step.
    ContactForce {
        /// The sum of the contact forces on `body1`, newtons.
        total_force: Vec3,
        /// The sum of the contact forces' magnitudes.
        total_force_magnitude: f32,
        /// The direction of the strongest contact force (a unit vector).
        max_force_direction: Vec3,
        /// The magnitude of the strongest contact force.
        max_force_magnitude: f32,
    },
}

impl EventKind {
    /// Where it sorts among a step's events: stops, then starts, then forces (a pair
    /// removed and re-added in one tick stops before it starts again).
    pub fn rank(&self) -> u8 {
        match self {
            EventKind::Stopped { .. } => 0,
            EventKind::Started { .. } => 1,
            EventKind::ContactForce { .. } => 2,
        }
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// One body's state after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BodyState {
    /// The body.
    pub id: BodyId,
    /// Position of the body's origin.
    pub position: Vec3,
    /// Rotation.
    pub rotation: Quat,
    /// Linear velocity.
    pub linvel: Vec3,
    /// Angular velocity.
    pub angvel: Vec3,
    /// Whether the body is asleep.
    pub sleeping: bool,
}

/// The seed's `physics` task payload: simulate this many falling bodies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedPhysicsRequest {
    /// How many bodies.
    #[serde(default)]
    pub num_objects: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_request_fills_defaults() {
        let r: PhysicsStepRequest =
            serde_json::from_str(r#"{"tick":1,"dt":0.016,"add":[{"id":1,"shape":{"kind":"sphere","radius":0.5}}]}"#)
                .unwrap();
        assert_eq!(r.steps, 1);
        assert!(!r.snapshot);
        assert_eq!(r.add[0].body_type, BodyType::Dynamic);
        assert_eq!(r.add[0].rotation, IDENTITY);
        assert_eq!(r.add[0].friction, 0.5);
    }

    #[test]
    fn new_shapes_and_properties_read_as_bevy_rapier_users_would_write_them() {
        let body: BodyDesc = serde_json::from_str(
            r#"{"id":1,"shape":{"kind":"compound","parts":[
                {"shape":{"kind":"cylinder","half_height":0.5,"radius":0.2}},
                {"shape":{"kind":"capsule_x","half_height":0.5,"radius":0.1},"position":[0,1,0]}]},
               "body_type":"kinematic_velocity","gravity_scale":0,"locked_axes":56,"dominance":5,
               "friction_combine":"max","collider_offset":{"position":[0,0.5,0]}}"#,
        )
        .unwrap();
        let Shape::Compound { parts } = &body.shape else { panic!("{:?}", body.shape) };
        assert_eq!(parts[1].rotation, IDENTITY);
        assert_eq!(body.shape.elements(), 2);
        assert_eq!(body.locked_axes, locked_axes::ROTATION_X | locked_axes::ROTATION_Y | locked_axes::ROTATION_Z);
        assert_eq!((body.gravity_scale, body.dominance, body.friction_combine), (0.0, 5, CombineRule::Max));
        assert_eq!(body.collider_offset.unwrap().rotation, IDENTITY);
        // Defaults are left out when written.
        let plain = serde_json::to_string(&BodyDesc::new(2, Shape::Sphere { radius: 1.0 }, [0.0; 3])).unwrap();
        assert!(
            !plain.contains("gravity_scale") && !plain.contains("combine") && !plain.contains("dominance"),
            "{plain}"
        );
    }

    #[test]
    fn joints_read_as_documented() {
        let j: JointDesc = serde_json::from_str(
            r#"{"id":1,"body1":2,"kind":{"type":"prismatic","axis":[1,0,0],"motor":{"target_position":2,"stiffness":5}}}"#,
        )
        .unwrap();
        assert_eq!((j.body2, j.anchor1, j.contacts_enabled), (None, [0.0; 3], true));
        let JointKind::Prismatic { motor: Some(m), limits: None, .. } = j.kind else { panic!("{:?}", j.kind) };
        assert_eq!((m.target_position, m.stiffness, m.damping, m.max_force), (2.0, 5.0, 0.0, None));
        let fixed: JointDesc = serde_json::from_str(r#"{"id":1,"body1":2,"body2":3,"kind":{"type":"fixed"}}"#).unwrap();
        assert_eq!(fixed.kind, JointKind::Fixed);
        assert!(!serde_json::to_string(&fixed).unwrap().contains("contacts_enabled"));
    }

    #[test]
    fn a_cached_shape_is_named_by_the_sha256_of_its_packed_bytes_in_hex() {
        let mesh = Shape::TriMesh {
            vertices: (0..200).map(|i| [i as f32, 0.0, (i % 2) as f32]).collect(),
            indices: (0..198).map(|i| [i, i + 1, i + 2]).collect(),
        };
        let Some(Shape::Cached { sha256, elements }) = mesh.to_cached() else { panic!("cacheable") };
        assert_eq!(elements, 398);
        assert_eq!(ShapeHash::from_hex(&sha256.to_hex()), Some(sha256));
        let json = serde_json::to_string(&mesh.to_cached().unwrap()).unwrap();
        assert_eq!(json, format!(r#"{{"kind":"cached","sha256":"{}","elements":398}}"#, sha256.to_hex()));
        assert_eq!(serde_json::from_str::<Shape>(&json).unwrap(), mesh.to_cached().unwrap());
        for bad in ["", "zz", &"0".repeat(63), &"g".repeat(64)] {
            assert!(ShapeHash::from_hex(bad).is_none(), "{bad:?}");
        }
        // Any change of content is another name.
        let Shape::TriMesh { mut vertices, indices } = mesh.clone() else { unreachable!() };
        vertices[3][1] = 1e-6;
        assert_ne!(ShapeHash::of(&Shape::TriMesh { vertices, indices }), sha256);
    }

    #[test]
    fn request_round_trips() {
        let r = PhysicsStepRequest {
            tick: 9,
            snapshot: true,
            gravity: Some([0.0, -9.81, 0.0]),
            dt: 1.0 / 60.0,
            steps: 2,
            add: vec![
                BodyDesc::new(1, Shape::Box { half_extents: [0.5; 3] }, [0.0, 1.0, 0.0]),
                BodyDesc::new(2, Shape::Capsule { half_height: 0.5, radius: 0.25 }, [1.0, 1.0, 0.0])
                    .with_body_type(BodyType::Kinematic),
            ],
            remove: vec![3],
            set_pose: vec![SetPose { id: 1, position: [1.0, 2.0, 3.0], rotation: IDENTITY }],
            set_velocity: vec![SetVelocity { id: 1, linvel: [1.0; 3], angvel: [0.0; 3] }],
            forces: vec![ApplyForce { id: 1, force: [0.0, 10.0, 0.0], torque: [0.0; 3] }],
            impulses: vec![ApplyImpulse { id: 1, impulse: [0.0, 1.0, 0.0], torque_impulse: [0.0; 3] }],
            kinematic_targets: vec![KinematicTarget { id: 2, position: [2.0, 1.0, 0.0], rotation: IDENTITY }],
            wake: vec![1],
            sleep: vec![2],
            add_joints: vec![JointDesc {
                id: 4,
                body1: 1,
                body2: None,
                kind: JointKind::Revolute {
                    axis: [0.0, 0.0, 1.0],
                    limits: Some([-1.0, 1.0]),
                    motor: Some(JointMotor {
                        target_position: 0.5,
                        target_velocity: 0.0,
                        stiffness: 10.0,
                        damping: 1.0,
                        max_force: None,
                    }),
                },
                anchor1: [0.0, 1.0, 0.0],
                anchor2: [0.0, 3.0, 0.0],
                contacts_enabled: false,
            }],
            remove_joints: vec![5],
            touching: vec![[1, 2]],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<PhysicsStepRequest>(&json).unwrap(), r);
    }
}
