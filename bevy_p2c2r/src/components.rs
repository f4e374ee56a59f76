//! Components and resources that mark what the plugin offloads, and what it writes back.
//!
//! Game code adds [`OffloadedBody`] (with a [`Transform`]) to make a rigid body and
//! [`OffloadedAgent`] to make an NPC agent; the navigation grid is the
//! [`NavigationGrid`] resource. The plugin answers with [`PhysicsState`] and
//! [`AgentState`] and moves the `Transform`s.

use bevy::math::{Quat, Vec2, Vec3};
use bevy::prelude::{Component, Resource, Transform};
use p2c2r_protocol::ai::{AgentStatus, NavGrid};
use p2c2r_protocol::physics::{self as wire, BodyId, BodyType};
use p2c2r_sim::physics::{MAX_COORDINATE, MAX_SPEED};

/// A collision shape, in the body's local frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BodyShape {
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
    /// A capsule along the local y axis.
    Capsule {
        /// Half the length of the cylinder part.
        half_height: f32,
        /// Its radius.
        radius: f32,
    },
}

impl BodyShape {
    /// A box of this full size (not half size).
    pub fn cuboid(size: Vec3) -> Self {
        BodyShape::Box { half_extents: size * 0.5 }
    }

    /// A ball of this radius.
    pub fn ball(radius: f32) -> Self {
        BodyShape::Sphere { radius }
    }

    /// The shape as it travels on the wire.
    pub fn to_wire(self) -> wire::Shape {
        match self {
            BodyShape::Box { half_extents } => wire::Shape::Box { half_extents: half_extents.to_array() },
            BodyShape::Sphere { radius } => wire::Shape::Sphere { radius },
            BodyShape::Capsule { half_height, radius } => wire::Shape::Capsule { half_height, radius },
        }
    }
}

/// Marks an entity as a rigid body simulated by the peers (or by the local fallback).
///
/// Spawn it with a [`Transform`] giving the initial pose (scale is ignored; the entity
/// should have no parent). The plugin assigns a body id, sends the body with the next
/// tick, adds [`PhysicsState`] and, for dynamic and kinematic bodies, writes the
/// interpolated pose into the `Transform` every frame, so game code must not move it
/// through the `Transform`: use [`crate::PhysicsCommand::Teleport`],
/// [`KinematicTarget`], [`ExternalForce`] or [`ExternalImpulse`]. Changing this
/// component re-creates the body (same pose and velocity); removing it or despawning
/// the entity removes the body.
#[derive(Component, Clone, Debug, PartialEq)]
#[require(Transform)]
pub struct OffloadedBody {
    /// The collision shape.
    pub shape: BodyShape,
    /// Dynamic, kinematic or fixed.
    pub body_type: BodyType,
    /// Total mass in kg; overrides `density`.
    pub mass: Option<f32>,
    /// Density in kg/m³ (the peer's default, 1000, when neither is set).
    pub density: Option<f32>,
    /// Friction coefficient.
    pub friction: f32,
    /// Restitution (bounciness), 0..1.
    pub restitution: f32,
    /// Linear damping.
    pub linear_damping: f32,
    /// Angular damping.
    pub angular_damping: f32,
    /// Continuous collision detection, for fast small bodies such as projectiles.
    pub ccd: bool,
    /// Linear velocity at spawn (e.g. a shot ball).
    pub initial_linvel: Vec3,
    /// Angular velocity at spawn.
    pub initial_angvel: Vec3,
}

impl OffloadedBody {
    /// A dynamic body (moved by gravity, forces and contacts) with default material.
    pub fn dynamic(shape: BodyShape) -> Self {
        OffloadedBody {
            shape,
            body_type: BodyType::Dynamic,
            mass: None,
            density: None,
            friction: 0.5,
            restitution: 0.0,
            linear_damping: 0.0,
            angular_damping: 0.0,
            ccd: false,
            initial_linvel: Vec3::ZERO,
            initial_angvel: Vec3::ZERO,
        }
    }

    /// A fixed body (ground, walls): never moves.
    pub fn fixed(shape: BodyShape) -> Self {
        OffloadedBody { body_type: BodyType::Fixed, ..Self::dynamic(shape) }
    }

    /// A kinematic body, moved only by [`KinematicTarget`]; it pushes dynamic bodies.
    pub fn kinematic(shape: BodyShape) -> Self {
        OffloadedBody { body_type: BodyType::Kinematic, ..Self::dynamic(shape) }
    }

    /// Sets the total mass in kg.
    pub fn with_mass(mut self, mass: f32) -> Self {
        self.mass = Some(mass);
        self
    }

    /// Sets the density in kg/m³.
    pub fn with_density(mut self, density: f32) -> Self {
        self.density = Some(density);
        self
    }

    /// Sets the friction coefficient.
    pub fn with_friction(mut self, friction: f32) -> Self {
        self.friction = friction;
        self
    }

    /// Sets the restitution (bounciness).
    pub fn with_restitution(mut self, restitution: f32) -> Self {
        self.restitution = restitution;
        self
    }

    /// Sets linear and angular damping.
    pub fn with_damping(mut self, linear: f32, angular: f32) -> Self {
        self.linear_damping = linear;
        self.angular_damping = angular;
        self
    }

    /// Enables continuous collision detection.
    pub fn with_ccd(mut self) -> Self {
        self.ccd = true;
        self
    }

    /// Sets the linear velocity the body spawns with.
    pub fn with_linvel(mut self, linvel: Vec3) -> Self {
        self.initial_linvel = linvel;
        self
    }

    /// Sets the angular velocity the body spawns with.
    pub fn with_angvel(mut self, angvel: Vec3) -> Self {
        self.initial_angvel = angvel;
        self
    }

    /// The wire description of this body with this id and state.
    pub(crate) fn desc(&self, id: BodyId, state: &PhysicsState) -> wire::BodyDesc {
        wire::BodyDesc {
            id,
            shape: self.shape.to_wire(),
            body_type: self.body_type,
            position: valid_position(state.position),
            rotation: valid_rotation(state.rotation),
            linvel: valid_velocity(state.linvel),
            angvel: valid_velocity(state.angvel),
            mass: self.mass,
            density: self.density,
            friction: self.friction,
            restitution: self.restitution,
            linear_damping: self.linear_damping,
            angular_damping: self.angular_damping,
            ccd: self.ccd,
            sleeping: state.sleeping,
            ..wire::BodyDesc::new(id, self.shape.to_wire(), [0.0; 3])
        }
    }
}

/// The latest authoritative state of an [`OffloadedBody`], written by the plugin (not
/// interpolated: the `Transform` is). Read it for velocities or the exact simulated pose.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct PhysicsState {
    /// The body's id in the physics session.
    pub id: BodyId,
    /// The tick this state belongs to (0 before the first result).
    pub tick: u64,
    /// Position.
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

impl PhysicsState {
    pub(crate) fn apply(&mut self, s: &wire::BodyState, tick: u64) {
        self.tick = tick;
        // Results are checked on arrival (`check_body_state`); this keeps the ECS state
        // finite even so (a zero quaternion would normalise to NaN).
        self.position = Vec3::from_array(valid_position(Vec3::from_array(s.position)));
        self.rotation = Quat::from_array(valid_rotation(Quat::from_array(s.rotation)));
        self.linvel = Vec3::from_array(valid_velocity(Vec3::from_array(s.linvel)));
        self.angvel = Vec3::from_array(valid_velocity(Vec3::from_array(s.angvel)));
        self.sleeping = s.sleeping;
    }
}

/// Clamps each coordinate into `±max` (what the peer's validator accepts); NaN becomes 0.
fn clamp_vec(v: Vec3, max: f32) -> [f32; 3] {
    v.to_array().map(|x| if x.is_nan() { 0.0 } else { x.clamp(-max, max) })
}

/// A position the peer's validator accepts: within ±[`MAX_COORDINATE`], finite.
pub(crate) fn valid_position(v: Vec3) -> [f32; 3] {
    clamp_vec(v, MAX_COORDINATE)
}

/// A linear or angular velocity the peer's validator accepts: within ±[`MAX_SPEED`].
pub(crate) fn valid_velocity(v: Vec3) -> [f32; 3] {
    clamp_vec(v, MAX_SPEED)
}

/// A unit rotation: `q` normalised, or the identity when it cannot be (zero, NaN, inf).
pub(crate) fn valid_rotation(q: Quat) -> [f32; 4] {
    let len = q.length();
    if q.is_finite() && len.is_finite() && len > 1.0e-6 { (q / len).to_array() } else { Quat::IDENTITY.to_array() }
}

/// Checks one body state of a physics result: every number finite and the rotation
/// close to unit length (the same tolerance as the peer's validator). A peer that
/// answers otherwise is broken; its result must not reach the ECS state.
pub(crate) fn check_body_state(s: &wire::BodyState) -> Result<(), String> {
    let finite = s.position.iter().chain(&s.rotation).chain(&s.linvel).chain(&s.angvel).all(|x| x.is_finite());
    if !finite {
        return Err(format!("body {} has a non-finite value", s.id));
    }
    let norm = Quat::from_array(s.rotation).length();
    if !(0.9..=1.1).contains(&norm) {
        return Err(format!("body {} has a rotation of norm {norm}, not a unit quaternion", s.id));
    }
    Ok(())
}

/// A force and torque applied to a dynamic body on every tick while present (and
/// non-zero).
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct ExternalForce {
    /// Force at the centre of mass, N.
    pub force: Vec3,
    /// Torque, N·m.
    pub torque: Vec3,
}

/// An impulse applied once, at the next tick; the plugin then resets it to zero.
/// Add to it (`impulse.impulse += ...`) to combine several in one tick.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct ExternalImpulse {
    /// Linear impulse at the centre of mass, N·s.
    pub impulse: Vec3,
    /// Angular impulse.
    pub torque_impulse: Vec3,
}

/// Where a kinematic body should be at the end of the next tick. The plugin sends it
/// each tick it changes.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct KinematicTarget {
    /// Target position.
    pub position: Vec3,
    /// Target rotation.
    pub rotation: Quat,
}

impl KinematicTarget {
    /// A target at this position with no rotation.
    pub fn at(position: Vec3) -> Self {
        KinematicTarget { position, rotation: Quat::IDENTITY }
    }
}

/// Marks an NPC agent whose path finding and steering run on the peers (or locally in
/// fallback). Needs the [`NavigationGrid`] resource.
///
/// An agent without an [`OffloadedBody`] is moved by the plugin along its desired
/// velocity on the x–z plane (its `Transform` is interpolated like a body's). An agent
/// that is also a dynamic body gets the desired velocity as its horizontal velocity each
/// tick while moving (its vertical velocity is kept and its angular velocity zeroed, so a
/// capsule stays upright) and is stopped once when it arrives; a kinematic one is advanced by the plugin and sent as kinematic
/// targets.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
#[require(Transform)]
pub struct OffloadedAgent {
    /// Where it wants to go; change it at any time.
    pub goal: Vec3,
    /// Top speed, m/s.
    pub speed: f32,
    /// Radius, used to keep agents apart.
    pub radius: f32,
}

impl OffloadedAgent {
    /// An agent heading for `goal` at `speed` m/s, radius 0.4 m.
    pub fn new(goal: Vec3, speed: f32) -> Self {
        OffloadedAgent { goal, speed, radius: 0.4 }
    }

    /// Sets the radius.
    pub fn with_radius(mut self, radius: f32) -> Self {
        self.radius = radius;
        self
    }
}

/// The latest navigation answer for an [`OffloadedAgent`], written by the plugin.
#[derive(Component, Clone, Debug, PartialEq)]
pub struct AgentState {
    /// The agent's id in the AI session.
    pub id: u64,
    /// The tick of the answer (0 before the first).
    pub tick: u64,
    /// Moving, arrived, unreachable or invalid.
    pub status: AgentStatus,
    /// The path's waypoints (goal last), empty unless moving.
    pub waypoints: Vec<Vec3>,
    /// The velocity the agent moves at now.
    pub desired_velocity: Vec3,
    /// The agent's simulated position (not interpolated).
    pub position: Vec3,
}

/// The level's walkable grid on the x–z plane, used by every [`OffloadedAgent`].
/// Changing the resource sends the new grid to the peers.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct NavigationGrid(pub NavGrid);

impl NavigationGrid {
    /// A grid of square cells of side `cell_size` whose cell (0, 0) has its corner at
    /// world `(origin.x, origin.y)` = `(x, z)`. Each string is a row (increasing z), each
    /// character a column (increasing x); `#` is blocked.
    pub fn new(cell_size: f32, origin: Vec2, rows: impl IntoIterator<Item = impl Into<String>>) -> Self {
        NavigationGrid(NavGrid {
            cell_size,
            origin: origin.to_array(),
            rows: rows.into_iter().map(Into::into).collect(),
        })
    }

    /// Whether the cell containing world point `p` (x, z) is walkable; `false` off grid.
    pub fn is_walkable(&self, p: Vec3) -> bool {
        let g = &self.0;
        let col = ((p.x - g.origin[0]) / g.cell_size).floor();
        let row = ((p.z - g.origin[1]) / g.cell_size).floor();
        if col < 0.0 || row < 0.0 {
            return false;
        }
        g.rows.get(row as usize).and_then(|r| r.as_bytes().get(col as usize)).is_some_and(|c| *c != b'#')
    }

    /// The world centre (y = 0) of cell `(col, row)`.
    pub fn cell_center(&self, col: usize, row: usize) -> Vec3 {
        let g = &self.0;
        Vec3::new(g.origin[0] + (col as f32 + 0.5) * g.cell_size, 0.0, g.origin[1] + (row as f32 + 0.5) * g.cell_size)
    }
}

/// Interpolation endpoints of an offloaded entity: the poses of the previous and the
/// latest fixed tick. The plugin writes `Transform = lerp(previous, current, overstep)`.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct PoseInterpolation {
    /// Pose at the previous tick.
    pub previous: (Vec3, Quat),
    /// Pose at the latest tick.
    pub current: (Vec3, Quat),
}

impl PoseInterpolation {
    /// Both endpoints at this pose.
    pub fn at(position: Vec3, rotation: Quat) -> Self {
        PoseInterpolation { previous: (position, rotation), current: (position, rotation) }
    }

    /// The pose `alpha` (0..1) of the way from previous to current.
    pub fn lerp(&self, alpha: f32) -> (Vec3, Quat) {
        let a = alpha.clamp(0.0, 1.0);
        (self.previous.0.lerp(self.current.0, a), self.previous.1.slerp(self.current.1, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_is_monotone_between_endpoints() {
        let p = PoseInterpolation { previous: (Vec3::Y * 2.0, Quat::IDENTITY), current: (Vec3::Y, Quat::IDENTITY) };
        let ys: Vec<f32> = (0..=10).map(|i| p.lerp(i as f32 / 10.0).0.y).collect();
        assert!(ys.windows(2).all(|w| w[1] <= w[0]), "{ys:?}");
        assert_eq!(p.lerp(0.0).0.y, 2.0);
        assert_eq!(p.lerp(1.0).0.y, 1.0);
        assert_eq!(p.lerp(7.0).0.y, 1.0, "alpha is clamped");
    }

    #[test]
    fn grid_walkability() {
        let g = NavigationGrid::new(1.0, Vec2::new(-2.0, -2.0), ["..#.", "....", "####"]);
        assert!(g.is_walkable(Vec3::new(-1.5, 0.0, -1.5)));
        assert!(!g.is_walkable(Vec3::new(0.5, 0.0, -1.5)));
        assert!(!g.is_walkable(Vec3::new(0.5, 0.0, 0.5)));
        assert!(!g.is_walkable(Vec3::new(-3.0, 0.0, 0.0)));
        assert_eq!(g.cell_center(1, 1), Vec3::new(-0.5, 0.0, -0.5));
    }

    #[test]
    fn body_desc_is_always_valid_for_the_peer() {
        use p2c2r_protocol::physics::PhysicsStepRequest;
        let body = OffloadedBody::dynamic(BodyShape::ball(0.25));
        let states = [
            (Vec3::new(0.0, -5.0e6, 2.0e6), Quat::from_xyzw(0.0, 0.0, 0.0, 0.0), Vec3::new(0.0, -3.0e5, 0.0)),
            (Vec3::new(f32::NAN, f32::INFINITY, 1.0), Quat::from_xyzw(f32::NAN, 0.0, 0.0, 1.0), Vec3::NAN),
            (Vec3::ONE, Quat::from_xyzw(0.0, 0.0, 0.0, 5.0), Vec3::splat(f32::NEG_INFINITY)),
        ];
        let add: Vec<_> = states
            .iter()
            .enumerate()
            .map(|(i, &(position, rotation, linvel))| {
                let s =
                    PhysicsState { id: i as u64, tick: 9, position, rotation, linvel, angvel: linvel, sleeping: false };
                body.desc(i as u64, &s)
            })
            .collect();
        assert_eq!(add[0].position, [0.0, -MAX_COORDINATE, MAX_COORDINATE]);
        assert_eq!(add[0].rotation, [0.0, 0.0, 0.0, 1.0], "a zero quaternion becomes the identity");
        assert_eq!(add[2].rotation, [0.0, 0.0, 0.0, 1.0], "renormalised");
        let request =
            PhysicsStepRequest { tick: 10, snapshot: true, dt: 1.0 / 60.0, steps: 1, add, ..Default::default() };
        let result = p2c2r_sim::physics::PhysicsWorld::new().step(&request);
        assert!(result.is_ok(), "the snapshot is accepted: {result:?}");
    }

    #[test]
    fn broken_body_states_are_detected() {
        let good = wire::BodyState {
            id: 1,
            position: [0.0, 1.0, 0.0],
            rotation: [0.0, 0.0, 0.0, 1.0],
            linvel: [0.0; 3],
            angvel: [0.0; 3],
            sleeping: false,
        };
        assert!(check_body_state(&good).is_ok());
        assert!(check_body_state(&wire::BodyState { position: [0.0, -2.0e6, 0.0], ..good }).is_ok(), "clamped later");
        assert!(check_body_state(&wire::BodyState { rotation: [0.0; 4], ..good }).is_err());
        assert!(check_body_state(&wire::BodyState { rotation: [0.0, 0.0, 0.0, 2.0], ..good }).is_err());
        assert!(check_body_state(&wire::BodyState { linvel: [f32::NAN, 0.0, 0.0], ..good }).is_err());
        assert!(check_body_state(&wire::BodyState { position: [f32::INFINITY, 0.0, 0.0], ..good }).is_err());
        // Applying a broken state (it never should be) still leaves the ECS state finite.
        let mut ps = PhysicsState {
            id: 1,
            tick: 0,
            position: Vec3::ZERO,
            rotation: Quat::IDENTITY,
            linvel: Vec3::ZERO,
            angvel: Vec3::ZERO,
            sleeping: false,
        };
        ps.apply(&wire::BodyState { rotation: [0.0; 4], linvel: [f32::NAN, 0.0, 0.0], ..good }, 1);
        assert_eq!(ps.rotation, Quat::IDENTITY);
        assert!(ps.linvel.is_finite());
    }

    #[test]
    fn body_desc_carries_material_and_state() {
        let b = OffloadedBody::dynamic(BodyShape::ball(0.25)).with_mass(2.0).with_restitution(0.5).with_ccd();
        let s = PhysicsState {
            id: 7,
            tick: 0,
            position: Vec3::new(1.0, 2.0, 3.0),
            rotation: Quat::IDENTITY,
            linvel: Vec3::X,
            angvel: Vec3::ZERO,
            sleeping: false,
        };
        let d = b.desc(7, &s);
        assert_eq!(d.id, 7);
        assert_eq!(d.mass, Some(2.0));
        assert_eq!(d.restitution, 0.5);
        assert!(d.ccd);
        assert_eq!(d.position, [1.0, 2.0, 3.0]);
        assert_eq!(d.linvel, [1.0, 0.0, 0.0]);
        assert_eq!(d.shape, wire::Shape::Sphere { radius: 0.25 });
    }
}
