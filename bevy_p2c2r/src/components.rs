//! Components and resources beside the body's own ([`crate::body`]): what the game
//! pushes bodies with ([`ExternalForce`], [`ExternalImpulse`], [`KinematicTarget`]), NPC
//! agents ([`OffloadedAgent`]) and their [`NavigationGrid`], and what the plugin writes
//! back ([`PhysicsState`], [`AgentState`], the interpolated `Transform`s).

use bevy::math::{Quat, Vec2, Vec3};
use bevy::prelude::{Component, Resource, Transform};
use p2c2r_protocol::ai::{AgentStatus, NavGrid};
use p2c2r_protocol::physics::{self as wire, BodyId};
use p2c2r_sim::physics::{MAX_COORDINATE, MAX_SPEED};

/// The latest authoritative state of a body (an entity with a [`crate::Collider`]), written by the plugin (not
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
/// An agent without a body ([`crate::Collider`]) is moved by the plugin along its desired
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
}
