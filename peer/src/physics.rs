//! One physics session: a rapier3d world driven by `physics_step` requests.
//!
//! [`PhysicsWorld::step`] validates a [`PhysicsStepRequest`] completely before touching the
//! world, applies its changes in a fixed order, steps, and reports body states sorted by body
//! id. Everything here is synchronous and deterministic: with rapier3d's
//! `enhanced-determinism` feature the same sequence of requests gives bit-identical results
//! on every machine, which is what lets a session move between peers and lets the Bevy
//! plugin step the same world locally when no peer answers.
//!
//! Order of application within one request:
//!
//! 1. `snapshot`: the world is replaced by an empty one (gravity back to the default).
//! 2. `gravity`.
//! 3. `remove`, then `add` (so a body can be replaced within one tick).
//! 4. `set_pose`, `set_velocity`, `impulses`, `forces`.
//! 5. `steps` steps of `dt`; kinematic bodies move to their `kinematic_targets` along the
//!    way (linear interpolation of the position, normalized linear interpolation of the
//!    rotation, exactly the target after the last step).
//! 6. Forces are cleared; states of non-fixed bodies that are awake, or that fell asleep
//!    since they were last reported, are returned.
//!
//! A request that fails validation leaves the world exactly as it was.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use p2c2r_protocol::physics::{
    BodyDesc, BodyId, BodyState, BodyType, PhysicsStepRequest, PhysicsStepResult, Quat, Shape, Vec3,
};
use p2c2r_protocol::{ErrorCode, TaskError, TaskStatus, limits};
use rapier3d::math::{Pose, Rotation, Vector};
use rapier3d::prelude::{ColliderBuilder, RigidBodyBuilder, RigidBodyHandle};

/// Gravity of a new session, m/s².
pub const DEFAULT_GRAVITY: Vec3 = [0.0, -9.81, 0.0];
/// Density used when a body gives neither `mass` nor `density`, kg/m³.
pub const DEFAULT_DENSITY: f32 = 1000.0;
/// Largest accepted `dt`, in seconds.
pub const MAX_DT: f32 = 1.0;
/// Largest accepted absolute coordinate of a position, in metres.
pub const MAX_COORDINATE: f32 = 1.0e6;
/// Largest accepted absolute component of a velocity (m/s or rad/s).
pub const MAX_SPEED: f32 = 1.0e5;
/// Largest accepted absolute component of a force, torque or impulse.
pub const MAX_FORCE: f32 = 1.0e12;
/// Largest accepted absolute component of gravity, m/s².
pub const MAX_GRAVITY: f32 = 1.0e4;
/// Smallest and largest accepted half extent or radius, in metres.
pub const SHAPE_EXTENT_RANGE: (f32, f32) = (1.0e-4, 1.0e4);
/// Smallest and largest accepted mass (kg) or density (kg/m³).
pub const MASS_RANGE: (f32, f32) = (1.0e-6, 1.0e9);
/// Largest accepted friction coefficient, restitution or damping.
pub const MAX_MATERIAL: f32 = 1.0e3;

/// How long each phase of one [`PhysicsWorld::step_timed`] call took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTimings {
    /// Validating the request and applying its changes to the world.
    pub apply: Duration,
    /// The rapier steps.
    pub step: Duration,
    /// Reading the body states out of the world.
    pub extract: Duration,
}

struct Entry {
    handle: RigidBodyHandle,
    body_type: BodyType,
    /// The last state reported for this body said `sleeping: true`.
    reported_asleep: bool,
}

/// One session's rapier3d world, keyed by the gamer's body ids.
///
/// ```
/// use p2c2r_protocol::physics::{BodyDesc, PhysicsStepRequest, Shape};
/// use peer::physics::PhysicsWorld;
///
/// let mut world = PhysicsWorld::new();
/// let ball = BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 10.0, 0.0]);
/// let start = PhysicsStepRequest { tick: 0, snapshot: true, dt: 1.0 / 60.0, steps: 1, add: vec![ball], ..Default::default() };
/// let result = world.step(&start).unwrap();
/// assert!(result.bodies[0].position[1] < 10.0);
/// let next = PhysicsStepRequest { tick: 1, dt: 1.0 / 60.0, steps: 1, ..Default::default() };
/// assert_eq!(world.step(&next).unwrap().tick, 1);
/// assert_eq!(world.last_tick(), Some(1));
/// ```
pub struct PhysicsWorld {
    world: rapier3d::prelude::PhysicsWorld,
    bodies: BTreeMap<BodyId, Entry>,
    last_tick: Option<u64>,
}

impl Default for PhysicsWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PhysicsWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhysicsWorld").field("bodies", &self.bodies.len()).field("last_tick", &self.last_tick).finish()
    }
}

impl PhysicsWorld {
    /// An empty world with default gravity that has seen no tick yet: it accepts only a
    /// snapshot.
    pub fn new() -> Self {
        let mut world = rapier3d::prelude::PhysicsWorld::new();
        world.gravity = vec3(DEFAULT_GRAVITY);
        PhysicsWorld { world, bodies: BTreeMap::new(), last_tick: None }
    }

    /// The tick of the last request that succeeded, `None` before the first snapshot.
    pub fn last_tick(&self) -> Option<u64> {
        self.last_tick
    }

    /// How many bodies the world holds (fixed ones included).
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// The current gravity.
    pub fn gravity(&self) -> Vec3 {
        self.world.gravity.to_array()
    }

    /// Validates and applies a request (snapshot or delta) and steps.
    ///
    /// Errors are [`TaskError`]s ready to send: `unknown_session` (no snapshot yet) and
    /// `out_of_order` (the tick is not the next one) carry `resync: true`;
    /// `invalid_payload` and `limit_exceeded` leave the world untouched so the request can
    /// be corrected and sent again.
    pub fn step(&mut self, request: &PhysicsStepRequest) -> Result<PhysicsStepResult, TaskError> {
        self.step_timed(request).map(|(result, _)| result)
    }

    /// [`step`](Self::step), also reporting how long each phase took.
    pub fn step_timed(&mut self, request: &PhysicsStepRequest) -> Result<(PhysicsStepResult, StepTimings), TaskError> {
        let tick = request.tick;
        let t0 = Instant::now();
        let plan = self.validate(request).map_err(|e| e.with_tick(tick))?;
        self.apply(request, &plan);
        let t1 = Instant::now();
        self.simulate(request, &plan);
        let t2 = Instant::now();
        let bodies = self.extract();
        let t3 = Instant::now();
        let bodies = match bodies {
            Ok(bodies) => bodies,
            Err(e) => {
                // The world is no longer trustworthy: forget it, the gamer resends it.
                *self = PhysicsWorld::new();
                return Err(e.with_tick(tick));
            }
        };
        self.last_tick = Some(tick);
        let timings = StepTimings { apply: t1 - t0, step: t2 - t1, extract: t3 - t2 };
        Ok((PhysicsStepResult { status: TaskStatus::Success, tick, bodies }, timings))
    }

    /// Checks everything about a request against the current world, mutating nothing.
    fn validate(&self, r: &PhysicsStepRequest) -> Result<Plan, TaskError> {
        // Sizes first: they are cheap and bound the work below.
        let max = limits::MAX_BODIES_PER_SESSION;
        for (name, len) in [
            ("add", r.add.len()),
            ("remove", r.remove.len()),
            ("set_pose", r.set_pose.len()),
            ("set_velocity", r.set_velocity.len()),
            ("forces", r.forces.len()),
            ("impulses", r.impulses.len()),
            ("kinematic_targets", r.kinematic_targets.len()),
        ] {
            if len > max {
                return Err(limit(format!("{name} has {len} entries; at most {max} are allowed")));
            }
        }
        if r.steps > limits::MAX_STEPS_PER_TICK {
            return Err(limit(format!("steps is {}; at most {} are allowed", r.steps, limits::MAX_STEPS_PER_TICK)));
        }
        if !(r.dt.is_finite() && r.dt > 0.0 && r.dt <= MAX_DT) {
            return Err(invalid(format!("dt must be a number in (0, {MAX_DT}] seconds, got {}", r.dt)));
        }
        if let Some(g) = r.gravity {
            check_vec("gravity", g, MAX_GRAVITY)?;
        }

        // Then the session's continuity.
        if !r.snapshot {
            match self.last_tick {
                None => {
                    return Err(TaskError::new(
                        ErrorCode::UnknownSession,
                        "this peer holds no world for the session; send a full snapshot",
                    )
                    .with_resync());
                }
                Some(last) if last.checked_add(1) != Some(r.tick) => {
                    return Err(TaskError::new(
                        ErrorCode::OutOfOrder,
                        format!("expected tick {}, got {}; send a full snapshot", last.saturating_add(1), r.tick),
                    )
                    .with_resync());
                }
                Some(_) => {}
            }
        }

        // Then every body reference and value.
        let existing = |id: BodyId| -> Option<BodyType> {
            if r.snapshot { None } else { self.bodies.get(&id).map(|e| e.body_type) }
        };
        let mut removed = HashSet::with_capacity(r.remove.len());
        for &id in &r.remove {
            if existing(id).is_none() {
                return Err(invalid(format!("remove: no body {id}")));
            }
            if !removed.insert(id) {
                return Err(invalid(format!("remove: body {id} listed twice")));
            }
        }
        let mut added: HashMap<BodyId, BodyType> = HashMap::with_capacity(r.add.len());
        for desc in &r.add {
            check_body(desc)?;
            if existing(desc.id).is_some() && !removed.contains(&desc.id) {
                return Err(invalid(format!("add: body {} already exists", desc.id)));
            }
            if added.insert(desc.id, desc.body_type).is_some() {
                return Err(invalid(format!("add: body {} listed twice", desc.id)));
            }
        }
        let kept = if r.snapshot { 0 } else { self.bodies.len() - removed.len() };
        if kept + added.len() > max {
            return Err(limit(format!(
                "the session would hold {} bodies; at most {max} are allowed",
                kept + added.len()
            )));
        }
        let body_type = |id: BodyId, list: &str| -> Result<BodyType, TaskError> {
            if let Some(t) = added.get(&id) {
                return Ok(*t);
            }
            match existing(id) {
                Some(t) if !removed.contains(&id) => Ok(t),
                _ => Err(invalid(format!("{list}: no body {id}"))),
            }
        };
        let mut rotations = Vec::with_capacity(r.set_pose.len());
        for p in &r.set_pose {
            body_type(p.id, "set_pose")?;
            check_vec("set_pose.position", p.position, MAX_COORDINATE)?;
            rotations.push(unit_quat("set_pose.rotation", p.rotation)?);
        }
        for v in &r.set_velocity {
            body_type(v.id, "set_velocity")?;
            check_vec("set_velocity.linvel", v.linvel, MAX_SPEED)?;
            check_vec("set_velocity.angvel", v.angvel, MAX_SPEED)?;
        }
        for f in &r.forces {
            body_type(f.id, "forces")?;
            check_vec("forces.force", f.force, MAX_FORCE)?;
            check_vec("forces.torque", f.torque, MAX_FORCE)?;
        }
        for i in &r.impulses {
            body_type(i.id, "impulses")?;
            check_vec("impulses.impulse", i.impulse, MAX_FORCE)?;
            check_vec("impulses.torque_impulse", i.torque_impulse, MAX_FORCE)?;
        }
        let mut targets = Vec::with_capacity(r.kinematic_targets.len());
        let mut targeted = HashSet::with_capacity(r.kinematic_targets.len());
        for k in &r.kinematic_targets {
            if body_type(k.id, "kinematic_targets")? != BodyType::Kinematic {
                return Err(invalid(format!("kinematic_targets: body {} is not kinematic", k.id)));
            }
            if !targeted.insert(k.id) {
                return Err(invalid(format!("kinematic_targets: body {} listed twice", k.id)));
            }
            check_vec("kinematic_targets.position", k.position, MAX_COORDINATE)?;
            targets.push(unit_quat("kinematic_targets.rotation", k.rotation)?);
        }
        let add_rotations = r.add.iter().map(|d| unit_quat("add.rotation", d.rotation)).collect::<Result<_, _>>()?;
        Ok(Plan { add_rotations, pose_rotations: rotations, target_rotations: targets })
    }

    /// Applies a validated request's changes (everything before the steps).
    fn apply(&mut self, r: &PhysicsStepRequest, plan: &Plan) {
        if r.snapshot {
            *self = PhysicsWorld::new();
        }
        if let Some(g) = r.gravity {
            self.world.gravity = vec3(g);
        }
        for id in &r.remove {
            if let Some(entry) = self.bodies.remove(id) {
                self.world.remove_body(entry.handle);
            }
        }
        for (desc, rotation) in r.add.iter().zip(&plan.add_rotations) {
            let handle = self.insert(desc, *rotation);
            self.bodies.insert(desc.id, Entry { handle, body_type: desc.body_type, reported_asleep: false });
        }
        for (p, rotation) in r.set_pose.iter().zip(&plan.pose_rotations) {
            let rb = &mut self.world.bodies[self.bodies[&p.id].handle];
            rb.set_position(Pose::from_parts(vec3(p.position), *rotation), true);
        }
        for v in &r.set_velocity {
            let rb = &mut self.world.bodies[self.bodies[&v.id].handle];
            rb.set_linvel(vec3(v.linvel), true);
            rb.set_angvel(vec3(v.angvel), true);
        }
        for i in &r.impulses {
            let rb = &mut self.world.bodies[self.bodies[&i.id].handle];
            rb.apply_impulse(vec3(i.impulse), true);
            rb.apply_torque_impulse(vec3(i.torque_impulse), true);
        }
        for f in &r.forces {
            let rb = &mut self.world.bodies[self.bodies[&f.id].handle];
            rb.add_force(vec3(f.force), true);
            rb.add_torque(vec3(f.torque), true);
        }
    }

    fn insert(&mut self, d: &BodyDesc, rotation: Rotation) -> RigidBodyHandle {
        let body = match d.body_type {
            BodyType::Dynamic => RigidBodyBuilder::dynamic(),
            BodyType::Kinematic => RigidBodyBuilder::kinematic_position_based(),
            BodyType::Fixed => RigidBodyBuilder::fixed(),
        }
        .pose(Pose::from_parts(vec3(d.position), rotation))
        .linvel(vec3(d.linvel))
        .angvel(vec3(d.angvel))
        .linear_damping(d.linear_damping)
        .angular_damping(d.angular_damping)
        .ccd_enabled(d.ccd)
        .sleeping(d.sleeping);
        let collider = match d.shape {
            Shape::Box { half_extents: [x, y, z] } => ColliderBuilder::cuboid(x, y, z),
            Shape::Sphere { radius } => ColliderBuilder::ball(radius),
            Shape::Capsule { half_height, radius } => ColliderBuilder::capsule_y(half_height, radius),
        }
        .friction(d.friction)
        .restitution(d.restitution);
        let collider = match (d.mass, d.density) {
            (Some(mass), _) => collider.mass(mass),
            (None, Some(density)) => collider.density(density),
            (None, None) => collider.density(DEFAULT_DENSITY),
        };
        let handle = self.world.insert(body, collider).0;
        if d.sleeping {
            // Attaching the collider woke the body; put it back to sleep as asked.
            self.world.bodies[handle].sleep();
        }
        handle
    }

    /// Runs the request's steps, moving kinematic bodies towards their targets.
    fn simulate(&mut self, r: &PhysicsStepRequest, plan: &Plan) {
        let starts: Vec<(RigidBodyHandle, Pose)> = r
            .kinematic_targets
            .iter()
            .map(|k| {
                let handle = self.bodies[&k.id].handle;
                (handle, *self.world.bodies[handle].position())
            })
            .collect();
        let targets: Vec<Pose> = r
            .kinematic_targets
            .iter()
            .zip(&plan.target_rotations)
            .map(|(k, rotation)| Pose::from_parts(vec3(k.position), *rotation))
            .collect();
        if r.steps == 0 {
            // No time passes: kinematic bodies are simply placed at their targets.
            for ((handle, _), target) in starts.iter().zip(&targets) {
                self.world.bodies[*handle].set_position(*target, true);
            }
            return;
        }
        self.world.integration_parameters.dt = r.dt;
        for k in 1..=r.steps {
            for ((handle, start), target) in starts.iter().zip(&targets) {
                let pose = if k == r.steps { *target } else { interpolate(start, target, k as f32 / r.steps as f32) };
                self.world.bodies[*handle].set_next_kinematic_position(pose);
            }
            self.world.step();
        }
        for f in &r.forces {
            if let Some(entry) = self.bodies.get(&f.id) {
                let rb = &mut self.world.bodies[entry.handle];
                rb.reset_forces(false);
                rb.reset_torques(false);
            }
        }
    }

    /// The states to report, sorted by body id.
    fn extract(&mut self) -> Result<Vec<BodyState>, TaskError> {
        let diverged = || {
            TaskError::new(
                ErrorCode::Internal,
                "the simulation diverged (non-finite state); the session was reset, send a full snapshot",
            )
            .with_resync()
        };
        if !self.world.quarantine().bodies().is_empty() {
            return Err(diverged());
        }
        let mut states = Vec::new();
        for (&id, entry) in self.bodies.iter_mut() {
            if entry.body_type == BodyType::Fixed {
                continue;
            }
            let rb = &self.world.bodies[entry.handle];
            let sleeping = rb.is_sleeping();
            if sleeping && entry.reported_asleep {
                continue;
            }
            entry.reported_asleep = sleeping;
            let state = BodyState {
                id,
                position: rb.translation().to_array(),
                rotation: rb.rotation().to_array(),
                linvel: rb.linvel().to_array(),
                angvel: rb.angvel().to_array(),
                sleeping,
            };
            let finite = state
                .position
                .iter()
                .chain(&state.rotation)
                .chain(&state.linvel)
                .chain(&state.angvel)
                .all(|v| v.is_finite());
            if !finite {
                return Err(diverged());
            }
            states.push(state);
        }
        Ok(states)
    }
}

/// What validation computed that applying needs.
struct Plan {
    add_rotations: Vec<Rotation>,
    pose_rotations: Vec<Rotation>,
    target_rotations: Vec<Rotation>,
}

fn vec3(v: Vec3) -> Vector {
    Vector::from_array(v)
}

fn interpolate(a: &Pose, b: &Pose, t: f32) -> Pose {
    let translation = a.translation + (b.translation - a.translation) * t;
    // Normalized lerp on the shorter arc: no transcendental functions, so it is
    // bit-identical everywhere.
    let end = if a.rotation.dot(b.rotation) < 0.0 { -b.rotation } else { b.rotation };
    let rotation = a.rotation.lerp(end, t).normalize();
    Pose::from_parts(translation, rotation)
}

fn invalid(message: String) -> TaskError {
    TaskError::new(ErrorCode::InvalidPayload, message)
}

fn limit(message: String) -> TaskError {
    TaskError::new(ErrorCode::LimitExceeded, message)
}

fn check_vec(what: &str, v: Vec3, max: f32) -> Result<(), TaskError> {
    if v.iter().all(|x| x.is_finite() && x.abs() <= max) {
        Ok(())
    } else {
        Err(invalid(format!("{what} must hold finite numbers within ±{max:e}, got {v:?}")))
    }
}

fn check_scalar(what: &str, x: f32, (min, max): (f32, f32)) -> Result<(), TaskError> {
    if x.is_finite() && x >= min && x <= max {
        Ok(())
    } else {
        Err(invalid(format!("{what} must be a number in [{min:e}, {max:e}], got {x}")))
    }
}

/// Normalizes a rotation that is close to unit length; rejects anything else.
fn unit_quat(what: &str, q: Quat) -> Result<Rotation, TaskError> {
    let rotation = Rotation::from_array(q);
    let norm = rotation.length();
    if q.iter().all(|x| x.is_finite()) && (0.9..=1.1).contains(&norm) {
        Ok(if norm == 1.0 { rotation } else { rotation.normalize() })
    } else {
        Err(invalid(format!("{what} must be a unit quaternion [x, y, z, w], got {q:?}")))
    }
}

fn check_body(d: &BodyDesc) -> Result<(), TaskError> {
    let id = d.id;
    let shape = |x: f32| check_scalar(&format!("add: body {id}: shape size"), x, SHAPE_EXTENT_RANGE);
    match d.shape {
        Shape::Box { half_extents } => half_extents.iter().try_for_each(|&x| shape(x))?,
        Shape::Sphere { radius } => shape(radius)?,
        Shape::Capsule { half_height, radius } => {
            shape(radius)?;
            check_scalar(&format!("add: body {id}: capsule half_height"), half_height, (0.0, SHAPE_EXTENT_RANGE.1))?;
        }
    }
    check_vec(&format!("add: body {id}: position"), d.position, MAX_COORDINATE)?;
    check_vec(&format!("add: body {id}: linvel"), d.linvel, MAX_SPEED)?;
    check_vec(&format!("add: body {id}: angvel"), d.angvel, MAX_SPEED)?;
    if let Some(mass) = d.mass {
        check_scalar(&format!("add: body {id}: mass"), mass, MASS_RANGE)?;
    }
    if let Some(density) = d.density {
        check_scalar(&format!("add: body {id}: density"), density, MASS_RANGE)?;
    }
    for (what, x) in [
        ("friction", d.friction),
        ("restitution", d.restitution),
        ("linear_damping", d.linear_damping),
        ("angular_damping", d.angular_damping),
    ] {
        check_scalar(&format!("add: body {id}: {what}"), x, (0.0, MAX_MATERIAL))?;
    }
    Ok(())
}
