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
//! 6. Forces are cleared. Every non-fixed body's pose and velocities are snapped onto the
//!    lattice of [`p2c2r_protocol::quantize`] in the world itself (without waking it), and
//!    a body is reported when its state on the lattice differs from the last one reported
//!    for it: a body that did not move by a lattice unit is left out, a body that fell
//!    asleep is reported once (`sleeping: true`), a new body (so every body after a
//!    snapshot) is reported.
//! 7. A body that left the world's bounds (a coordinate past [`MAX_COORDINATE`], a
//!    velocity component past [`MAX_SPEED`], or any non-finite value) is removed from the
//!    world and listed in the result's `removed` (sorted, once), not in `bodies`. So every
//!    state a peer reports passes its own validation, and a snapshot of the reported states
//!    is always accepted: such a body can never wedge a session.
//!
//! A request that fails validation leaves the world exactly as it was.
//!
//! # The world is the lattice
//!
//! Poses and velocities enter the world on the lattice too (bodies to add, `set_pose`,
//! `set_velocity`, kinematic targets are snapped on arrival: what the packed encoding
//! carries), and leave it on the lattice after every tick. So the states reported are
//! exactly the world's: a gamer that applies every result holds the peer's world bit for
//! bit, a snapshot built from that copy starts another world (on another peer, or the Bevy
//! plugin's local fallback) exactly where this one is, and the packed results lose
//! nothing. What a snapshot cannot carry is the solver's memory: contact impulses kept
//! for warm-starting, sleep timers, the order in which bodies were created, and the
//! contacts themselves (rapier gives a new collider contact constraints from its second
//! step on). A world built from a snapshot therefore starts exactly where the old one was
//! (same states, same digest) and continues bit for bit for bodies out of contact, while
//! bodies in contact continue close to, not exactly as, the old world (see
//! `sim/tests/physics.rs`). The positions, rotations and velocities of a kinematic body
//! are derived by rapier from its poses at every step and cannot be set: its reported
//! (and digested) velocities are the snapped ones, never fed back into the world, where
//! the next step recomputes them anyway.
//!
//! [`PhysicsWorld::step_limited`] (what peers run) also enforces a [`Budgets`]: before
//! anything runs, the bodies × steps of the request and an estimate of the overlapping
//! body pairs of the world it would make ([`estimate_overlapping_pairs`]); after stepping,
//! rapier's own contact pairs. [`PhysicsWorld::step`] checks no budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2c2r_protocol::physics::{
    BodyDesc, BodyId, BodyState, BodyType, CombineRule, EventKind, Groups, JointDesc, JointId, JointKind, Offset,
    PhysicsStepRequest, PhysicsStepResult, Quat, Shape, ShapeHash, Vec3,
};
use p2c2r_protocol::quantize::{QuantizedState, dequantize, quantize, snap_position, snap_rotation, snap_velocity};
use p2c2r_protocol::{ErrorCode, TaskError, TaskStatus, limits};
use rapier3d::math::{Pose, Rotation, Vector};
use rapier3d::prelude::{
    ActiveCollisionTypes, ActiveEvents, CoefficientCombineRule, ColliderBuilder, ColliderHandle, FixedJointBuilder,
    GenericJoint, Group, ImpulseJointHandle, InteractionGroups, InteractionTestMode, JointAxis, LockedAxes,
    MassProperties, PrismaticJointBuilder, RevoluteJointBuilder, RigidBody, RigidBodyActivation, RigidBodyBuilder,
    RigidBodyHandle, RigidBodySet, RopeJointBuilder, SharedShape, SphericalJointBuilder, SpringJointBuilder,
};

use crate::budget::Budgets;
use crate::checks::{check_scalar, check_vec, invalid, limit, unit_quat};
use crate::events::{Events, ForceCollector, Listener};
use crate::shape_cache::{CachedShape, ShapeCache};
use crate::shapes;

/// Gravity of a new session, m/s².
pub const DEFAULT_GRAVITY: Vec3 = [0.0, -9.81, 0.0];
/// Density used when a body gives neither `mass` nor `density`, kg/m³.
pub const DEFAULT_DENSITY: f32 = 1000.0;
pub use p2c2r_protocol::limits::{
    MASS_RANGE, MAX_COORDINATE, MAX_DT, MAX_FORCE, MAX_GRAVITY, MAX_MATERIAL, MAX_SPEED, SHAPE_EXTENT_RANGE,
};

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
    /// The events it asks for ([`BodyDesc::active_events`]).
    active_events: u8,
    /// What its collider covers, for the contact-pair budget: one bound, or one per part
    /// of a compound (rapier pairs the parts, so the budget counts them).
    bounds: Vec<Bound>,
    /// Its shape's elements ([`Shape::elements`]), for the memory it holds.
    elements: usize,
    /// The last state reported for this body, on the lattice (`None` until its first
    /// report): a body is reported again only when its state differs.
    last_reported: Option<QuantizedState>,
    /// Whether its collider is a sensor.
    sensor: bool,
    /// Seconds this awake dynamic body has been still by rapier's own sleep test (see
    /// [`track_sleep`]).
    still_for: f32,
}

/// One session's rapier3d world, keyed by the gamer's body ids.
///
/// ```
/// use p2c2r_protocol::physics::{BodyDesc, PhysicsStepRequest, Shape};
/// use p2c2r_sim::physics::PhysicsWorld;
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
    /// The bodies' shape elements together (kept as bodies come and go: read every tick).
    shape_elements: usize,
    /// The gamer's joints, by id.
    joints: BTreeMap<JointId, JointEntry>,
    /// A fixed body with no collider at the origin, for joints to the world (made at the
    /// first one; never reported).
    world_anchor: Option<RigidBodyHandle>,
    /// Touching pairs and this tick's events.
    events: Events,
    last_tick: Option<u64>,
}

/// How much a world holds, for the memory it is charged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorldSize {
    /// Bodies.
    pub bodies: usize,
    /// Elements of their shapes (hull points, mesh vertices and triangles, heightfield
    /// cells, compound parts).
    pub shape_elements: usize,
    /// Joints.
    pub joints: usize,
}

/// A joint the world holds.
struct JointEntry {
    handle: ImpulseJointHandle,
    body1: BodyId,
    body2: Option<BodyId>,
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
        PhysicsWorld {
            world,
            bodies: BTreeMap::new(),
            shape_elements: 0,
            joints: BTreeMap::new(),
            world_anchor: None,
            events: Events::default(),
            last_tick: None,
        }
    }

    /// The tick of the last request that succeeded, `None` before the first snapshot.
    pub fn last_tick(&self) -> Option<u64> {
        self.last_tick
    }

    /// How many bodies the world holds (fixed ones included).
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// How many joints the world holds.
    pub fn joint_count(&self) -> usize {
        self.joints.len()
    }

    /// The current gravity.
    pub fn gravity(&self) -> Vec3 {
        self.world.gravity.to_array()
    }

    /// A digest of the whole world: XXH3-64 over the gravity and, for every body in id
    /// order (fixed ones included), its id, type, and its [`state`](Self::state): position,
    /// rotation, velocities and sleep state, every number at full precision (its IEEE 754
    /// bits, little-endian); then the touching pairs and the last tick's events. Worlds fed the same requests with the same determinism setup
    /// ([`crate::determinism`]) have the same digest; any difference in any body changes
    /// it. Every physics result carries it (hex).
    pub fn digest(&self) -> u64 {
        // One pass into a flat buffer, then one hash: small streaming writes cost more
        // than the copy.
        const BYTES_PER_BODY: usize = 8 + 2 + 13 * 4;
        let mut bytes = Vec::with_capacity(12 + self.bodies.len() * BYTES_PER_BODY);
        let put = |bytes: &mut Vec<u8>, values: &[f32]| {
            for v in values {
                bytes.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        };
        put(&mut bytes, &self.world.gravity.to_array());
        for (&id, entry) in &self.bodies {
            let state = self.read_state(id, entry);
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&[entry.body_type as u8, u8::from(state.sleeping)]);
            put(&mut bytes, &state.position);
            put(&mut bytes, &state.rotation);
            put(&mut bytes, &state.linvel);
            put(&mut bytes, &state.angvel);
        }
        // The touching pairs and the last tick's events: what the gamer learns from
        // events is state too.
        for ((body1, body2), sensor) in self.events.touching() {
            bytes.extend_from_slice(&body1.to_le_bytes());
            bytes.extend_from_slice(&body2.to_le_bytes());
            bytes.push(u8::from(sensor));
        }
        for event in self.events.last_tick() {
            bytes.extend_from_slice(&event.step.to_le_bytes());
            bytes.extend_from_slice(&event.body1.to_le_bytes());
            bytes.extend_from_slice(&event.body2.to_le_bytes());
            match event.kind {
                EventKind::Started { sensor } => bytes.extend_from_slice(&[1, u8::from(sensor)]),
                EventKind::Stopped { sensor, removed } => {
                    bytes.extend_from_slice(&[0, u8::from(sensor), u8::from(removed)])
                }
                EventKind::ContactForce {
                    total_force,
                    total_force_magnitude,
                    max_force_direction,
                    max_force_magnitude,
                } => {
                    bytes.push(2);
                    put(&mut bytes, &total_force);
                    put(&mut bytes, &[total_force_magnitude, max_force_magnitude]);
                    put(&mut bytes, &max_force_direction);
                }
            }
        }
        twox_hash::XxHash3_64::oneshot(&bytes)
    }

    /// A body's state as the world holds it (fixed bodies included), `None` for an
    /// unknown id. Between ticks it is on the lattice, and it is exactly the state last
    /// reported for the body. A kinematic body's velocities are the snapped ones: rapier
    /// derives them from the body's poses at every step, and they cannot be set.
    pub fn state(&self, id: BodyId) -> Option<BodyState> {
        self.bodies.get(&id).map(|entry| self.read_state(id, entry))
    }

    /// Every body's [`state`](Self::state), sorted by id: asleep or awake, fixed ones
    /// included, whether or not a step reported it. Reading changes nothing, so a step
    /// followed by this reports every body and the world continues exactly as after the
    /// step alone (what a peer answers a `physics_step_full` with: the step's result with
    /// these as its `bodies`). Between ticks every state is on the lattice; a non-fixed
    /// body's is the same bits a gamer that applied every result holds.
    pub fn states(&self) -> Vec<BodyState> {
        self.bodies.iter().map(|(&id, entry)| self.read_state(id, entry)).collect()
    }

    fn read_state(&self, id: BodyId, entry: &Entry) -> BodyState {
        let rb = &self.world.bodies[entry.handle];
        let (linvel, angvel) = (rb.linvel().to_array(), rb.angvel().to_array());
        let kinematic = entry.body_type == BodyType::Kinematic;
        BodyState {
            id,
            position: rb.translation().to_array(),
            rotation: rb.rotation().to_array(),
            linvel: if kinematic { snap_velocity(linvel) } else { linvel },
            angvel: if kinematic { snap_velocity(angvel) } else { angvel },
            sleeping: rb.is_sleeping(),
        }
    }

    /// Validates and applies a request (snapshot or delta) and steps, with no work budget
    /// (see [`step_limited`](Self::step_limited)).
    ///
    /// Errors are [`TaskError`]s ready to send: `unknown_session` (no snapshot yet) and
    /// `out_of_order` (the tick is not the next one) carry `resync: true`;
    /// `invalid_payload` and `limit_exceeded` leave the world untouched so the request can
    /// be corrected and sent again.
    pub fn step(&mut self, request: &PhysicsStepRequest) -> Result<PhysicsStepResult, TaskError> {
        self.step_timed(request).map(|(result, _)| result)
    }

    /// [`step`](Self::step) within a work budget, as peers run it.
    ///
    /// Before anything runs: a request whose world would hold more than
    /// `budgets.max_body_steps / max(steps, 1)` bodies and joints, or whose bodies'
    /// bounding boxes (a compound's parts each) would overlap in more than
    /// `budgets.max_contact_pairs` pairs (at least one body of the pair dynamic), is
    /// refused with `limit_exceeded` and the world is untouched. After each step: once
    /// rapier holds more than `max_contact_pairs` contact manifolds (bodies piled up
    /// during the steps, or composite shapes touching in many parts), the remaining steps
    /// are skipped, the world is dropped and the request answered `limit_exceeded` with
    /// `resync: true`.
    pub fn step_limited(
        &mut self,
        request: &PhysicsStepRequest,
        budgets: &Budgets,
    ) -> Result<PhysicsStepResult, TaskError> {
        self.run(request, budgets, None).map(|(result, _)| result)
    }

    /// [`step_limited`](Self::step_limited) with a [`ShapeCache`], as peers and the Bevy
    /// plugin's local fallback run it: [`Shape::Cached`] shapes are looked up in it (one
    /// it lacks is answered `missing_shape`, with `resync`), and every cacheable shape
    /// the request sends itself is kept in it once the request passed validation.
    pub fn step_cached(
        &mut self,
        request: &PhysicsStepRequest,
        budgets: &Budgets,
        cache: &mut ShapeCache,
    ) -> Result<PhysicsStepResult, TaskError> {
        self.run(request, budgets, Some(cache)).map(|(result, _)| result)
    }

    /// [`step`](Self::step), also reporting how long each phase took.
    pub fn step_timed(&mut self, request: &PhysicsStepRequest) -> Result<(PhysicsStepResult, StepTimings), TaskError> {
        self.run(request, &Budgets::unlimited(), None)
    }

    fn run(
        &mut self,
        request: &PhysicsStepRequest,
        budgets: &Budgets,
        mut cache: Option<&mut ShapeCache>,
    ) -> Result<(PhysicsStepResult, StepTimings), TaskError> {
        let tick = request.tick;
        let t0 = Instant::now();
        let plan = self.validate(request, cache.as_deref_mut()).map_err(|e| e.with_tick(tick))?;
        if let Some(cache) = cache {
            // Valid shapes, built: keep the large ones for later references.
            for ((desc, collider), bounds) in request.add.iter().zip(&plan.add_colliders).zip(&plan.add_local_boxes) {
                if desc.shape.is_cacheable() {
                    let shape = CachedShape {
                        built: collider.clone(),
                        local_boxes: bounds.clone(),
                        elements: desc.shape.elements(),
                        surface: matches!(desc.shape, Shape::TriMesh { .. } | Shape::Heightfield { .. }),
                    };
                    cache.insert(ShapeHash::of(&desc.shape), Arc::new(shape));
                }
            }
        }
        self.check_budget(request, &plan, budgets).map_err(|e| e.with_tick(tick))?;
        self.apply(request, &plan);
        let t1 = Instant::now();
        let overflow = self.simulate(request, &plan, budgets.max_contact_pairs);
        let t2 = Instant::now();
        if let Some(overflow) = overflow {
            // The world piled up during the steps: forget it, the gamer resends it.
            *self = PhysicsWorld::new();
            let message = match overflow {
                Overflow::Pairs(pairs) => format!(
                    "the world grew to {pairs} contact pairs; at most {} are allowed; the session was dropped, send a smaller snapshot",
                    budgets.max_contact_pairs
                ),
                Overflow::Events(events) => format!(
                    "the tick raised {events} events; at most {} are allowed; the session was dropped, ask fewer bodies for events",
                    limits::MAX_EVENTS_PER_TICK
                ),
            };
            return Err(limit(message).with_resync().with_tick(tick));
        }
        let extracted = self.extract(request.steps, request.dt);
        let (bodies, removed) = match extracted {
            Ok(out) => out,
            Err(e) => {
                // The world is no longer trustworthy: forget it, the gamer resends it.
                *self = PhysicsWorld::new();
                return Err(e.with_tick(tick));
            }
        };
        if self.events.count() > limits::MAX_EVENTS_PER_TICK {
            // Bodies that left the world added theirs past the bound.
            let events = self.events.count();
            *self = PhysicsWorld::new();
            return Err(limit(format!(
                "the tick raised {events} events; at most {} are allowed; the session was dropped, ask fewer bodies for events",
                limits::MAX_EVENTS_PER_TICK
            ))
            .with_resync()
            .with_tick(tick));
        }
        self.last_tick = Some(tick);
        let events = self.events.finish_tick();
        let digest = Some(format!("{:016x}", self.digest()));
        // Extracting includes the digest.
        let timings = StepTimings { apply: t1 - t0, step: t2 - t1, extract: t2.elapsed() };
        Ok((PhysicsStepResult { status: TaskStatus::Success, tick, bodies, removed, digest, events }, timings))
    }

    /// What the world holds: bodies, shape elements, joints.
    pub fn size(&self) -> WorldSize {
        WorldSize { bodies: self.bodies.len(), shape_elements: self.shape_elements, joints: self.joints.len() }
    }

    /// What the world would hold after `request`'s changes, without checking the request
    /// (at most: removals of joints are not subtracted); used to charge a session's memory
    /// before the work runs.
    pub fn projected_size(&self, request: &PhysicsStepRequest) -> WorldSize {
        if request.snapshot {
            return Self::requested_size(request);
        }
        let added = Self::requested_size(request).shape_elements;
        let now = self.size();
        let removed: usize = request.remove.iter().filter_map(|id| self.bodies.get(id)).map(|e| e.elements).sum();
        WorldSize {
            bodies: self.projected_body_count(request),
            shape_elements: now.shape_elements.saturating_sub(removed).saturating_add(added),
            joints: now.joints.saturating_add(request.add_joints.len()),
        }
    }

    /// What `request` adds: all a world made by it holds when it is a snapshot.
    pub fn requested_size(request: &PhysicsStepRequest) -> WorldSize {
        WorldSize {
            bodies: request.add.len(),
            shape_elements: request.add.iter().fold(0usize, |sum, d| sum.saturating_add(d.shape.elements())),
            joints: request.add_joints.len(),
        }
    }

    /// How many bodies the world would hold after `request`'s changes, without checking
    /// the request (a malformed one is refused later by [`step`](Self::step)): used to
    /// charge a session's memory before the work runs.
    pub fn projected_body_count(&self, request: &PhysicsStepRequest) -> usize {
        if request.snapshot {
            request.add.len()
        } else {
            let removed = request.remove.iter().filter(|id| self.bodies.contains_key(id)).count();
            (self.bodies.len() - removed.min(self.bodies.len())).saturating_add(request.add.len())
        }
    }

    /// Refuses a validated request whose work would exceed the budget. Mutates nothing.
    fn check_budget(&self, r: &PhysicsStepRequest, plan: &Plan, budgets: &Budgets) -> Result<(), TaskError> {
        // Joints are solved like bodies: each counts as one.
        let joints_after = if r.snapshot { r.add_joints.len() } else { self.joints.len() + r.add_joints.len() };
        let body_steps = ((plan.bodies_after + joints_after) as u64).saturating_mul(u64::from(r.steps.max(1)));
        if body_steps > budgets.max_body_steps {
            return Err(limit(format!(
                "{} bodies and joints × {} steps is {body_steps} body-steps; at most {} are allowed per task",
                plan.bodies_after + joints_after,
                r.steps.max(1),
                budgets.max_body_steps
            )));
        }
        // Only a request that places bodies (a snapshot, new bodies, teleports) can bring
        // many together before the first step; otherwise the count of rapier's contact
        // pairs after each step bounds the growth, and plain ticks skip this O(n) pass.
        if budgets.max_contact_pairs == u64::MAX || (r.add.is_empty() && r.set_pose.is_empty()) {
            return Ok(());
        }
        // The bounding boxes of the world the request makes: kept bodies (at their new
        // pose when `set_pose` moves them) and added ones.
        let poses: HashMap<BodyId, (Vec3, Quat)> =
            r.set_pose.iter().map(|p| (p.id, (p.position, p.rotation))).collect();
        let removed: HashSet<BodyId> = r.remove.iter().copied().collect();
        let mut boxes = Vec::with_capacity(plan.bodies_after);
        if !r.snapshot {
            for (id, entry) in &self.bodies {
                if removed.contains(id) {
                    continue;
                }
                let (position, rotation) = poses.get(id).copied().unwrap_or_else(|| {
                    let rb = &self.world.bodies[entry.handle];
                    (rb.translation().to_array(), rb.rotation().to_array())
                });
                let dynamic = entry.body_type.is_dynamic();
                boxes.extend(entry.bounds.iter().map(|b| BoundingBox::around(*b, position, rotation, dynamic)));
            }
        }
        for (desc, bounds) in r.add.iter().zip(&plan.add_bounds) {
            let (position, rotation) = poses.get(&desc.id).copied().unwrap_or((desc.position, desc.rotation));
            let dynamic = desc.body_type.is_dynamic();
            boxes.extend(bounds.iter().map(|b| BoundingBox::around(*b, position, rotation, dynamic)));
        }
        match estimate_overlapping_pairs(&boxes, budgets.max_contact_pairs) {
            PairEstimate::Within(_) => Ok(()),
            PairEstimate::Over => Err(limit(format!(
                "the bodies' bounding boxes overlap in more than {} pairs, the most allowed per world; spread the bodies out or send fewer",
                budgets.max_contact_pairs
            ))),
            PairEstimate::TooDense => Err(limit(format!(
                "the bodies are packed too densely to check against the budget of {} overlapping pairs; send fewer bodies",
                budgets.max_contact_pairs
            ))),
        }
    }

    /// Checks everything about a request against the current world, mutating nothing but
    /// the cache's use marks (`cache` resolves [`Shape::Cached`]; without one, such a shape
    /// is missing).
    fn validate(&self, r: &PhysicsStepRequest, cache: Option<&mut ShapeCache>) -> Result<Plan, TaskError> {
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
            ("wake", r.wake.len()),
            ("sleep", r.sleep.len()),
            ("add_joints", r.add_joints.len()),
            ("remove_joints", r.remove_joints.len()),
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
        let elements = r.add.iter().fold(0usize, |sum, d| sum.saturating_add(d.shape.elements()));
        if elements > limits::MAX_SHAPE_ELEMENTS_PER_REQUEST {
            return Err(limit(format!(
                "add: the shapes hold {elements} elements (points, vertices, triangles, cells, parts); at most {} are allowed per request",
                limits::MAX_SHAPE_ELEMENTS_PER_REQUEST
            )));
        }
        let hull_points = r.add.iter().fold(0usize, |sum, d| sum.saturating_add(shapes::hull_points(&d.shape)));
        if hull_points > limits::MAX_HULL_POINTS_PER_REQUEST {
            return Err(limit(format!(
                "add: the convex hulls hold {hull_points} points; at most {} are allowed per request",
                limits::MAX_HULL_POINTS_PER_REQUEST
            )));
        }
        // Cached shapes are looked up once, checked when they were first sent.
        let mut cached: Vec<Option<Arc<CachedShape>>> = vec![None; r.add.len()];
        let mut missing = Vec::new();
        let mut cache = cache;
        for (desc, slot) in r.add.iter().zip(&mut cached) {
            if let Shape::Cached { sha256, .. } = &desc.shape {
                match cache.as_deref_mut().and_then(|c| c.get(sha256)) {
                    Some(shape) => *slot = Some(shape),
                    None => missing.push(*sha256),
                }
            }
        }
        if !missing.is_empty() {
            // A name the cache lacks may stand for a shape this very request sends itself
            // (another body's): build that one once, and use it for both.
            let wanted: HashSet<ShapeHash> = missing.iter().copied().collect();
            let mut inline: HashMap<ShapeHash, Arc<CachedShape>> = HashMap::new();
            for d in r.add.iter().filter(|d| d.shape.is_cacheable()) {
                let hash = ShapeHash::of(&d.shape);
                if wanted.contains(&hash) && !inline.contains_key(&hash) {
                    inline.insert(hash, Arc::new(CachedShape::build(&d.shape, &format!("add: body {}", d.id))?));
                }
            }
            for (desc, slot) in r.add.iter().zip(&mut cached) {
                if let Shape::Cached { sha256, .. } = &desc.shape
                    && slot.is_none()
                {
                    *slot = inline.get(sha256).cloned();
                }
            }
            missing.retain(|hash| !inline.contains_key(hash));
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            // Named in the message, a few at most (the message must stay small).
            let mut names: Vec<String> = missing.iter().take(4).map(ShapeHash::to_hex).collect();
            if missing.len() > 4 {
                names.push(format!("and {} more", missing.len() - 4));
            }
            return Err(TaskError::new(
                ErrorCode::MissingShape,
                format!(
                    "add: this peer does not hold the cached shape(s) {}; send the snapshot with the shapes themselves",
                    names.join(", ")
                ),
            )
            .with_resync());
        }
        for (desc, shape) in r.add.iter().zip(&cached) {
            check_body(desc, shape.as_deref())?;
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
            rotations.push(lattice_rotation("set_pose.rotation", p.rotation)?);
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
                return Err(invalid(format!(
                    "kinematic_targets: body {} is not a kinematic body moved by position (a velocity-based one moves by set_velocity)",
                    k.id
                )));
            }
            if !targeted.insert(k.id) {
                return Err(invalid(format!("kinematic_targets: body {} listed twice", k.id)));
            }
            check_vec("kinematic_targets.position", k.position, MAX_COORDINATE)?;
            targets.push(lattice_rotation("kinematic_targets.rotation", k.rotation)?);
        }
        for (list, ids) in [("wake", &r.wake), ("sleep", &r.sleep)] {
            for &id in ids {
                body_type(id, list)?;
            }
        }
        self.validate_joints(r, &removed, &added)?;
        validate_touching(r)?;
        let add_rotations =
            r.add.iter().map(|d| lattice_rotation("add.rotation", d.rotation)).collect::<Result<_, _>>()?;
        // Built here, once checked, so that apply cannot fail.
        let add_colliders = r
            .add
            .iter()
            .zip(&cached)
            .map(|(d, cached)| match cached {
                Some(shape) => Ok(shape.built.clone()),
                None => shapes::build(&d.shape, &format!("add: body {}", d.id)),
            })
            .collect::<Result<_, _>>()?;
        let add_local_boxes: Vec<Vec<(Vec3, Vec3)>> = r
            .add
            .iter()
            .zip(&cached)
            .map(|(d, cached)| match cached {
                Some(shape) => shape.local_boxes.clone(),
                None if d.shape.is_cacheable() => shapes::local_boxes(&d.shape),
                None => Vec::new(),
            })
            .collect();
        let add_bounds = r
            .add
            .iter()
            .zip(&add_local_boxes)
            .map(|(d, boxes)| match d.shape {
                Shape::Cached { .. } => Bound::boxes(boxes, d.collider_offset.as_ref()),
                _ => Bound::parts_of(&d.shape, d.collider_offset.as_ref()),
            })
            .collect();
        Ok(Plan {
            add_rotations,
            add_colliders,
            add_local_boxes,
            add_bounds,
            pose_rotations: rotations,
            target_rotations: targets,
            bodies_after: kept + added.len(),
        })
    }

    /// Checks the request's joints: removals name joints that exist (a removed body's
    /// joints are gone with it), additions name bodies that exist after this tick's body
    /// changes, and hold finite, bounded values.
    fn validate_joints(
        &self,
        r: &PhysicsStepRequest,
        removed_bodies: &HashSet<BodyId>,
        added_bodies: &HashMap<BodyId, BodyType>,
    ) -> Result<(), TaskError> {
        let alive = |id: &JointId| -> bool {
            !r.snapshot
                && self.joints.get(id).is_some_and(|j| {
                    !removed_bodies.contains(&j.body1) && j.body2.is_none_or(|b| !removed_bodies.contains(&b))
                })
        };
        let mut removed = HashSet::with_capacity(r.remove_joints.len());
        for id in &r.remove_joints {
            if !alive(id) {
                return Err(invalid(format!("remove_joints: no joint {id}")));
            }
            if !removed.insert(*id) {
                return Err(invalid(format!("remove_joints: joint {id} listed twice")));
            }
        }
        let body_exists = |id: BodyId| {
            added_bodies.contains_key(&id)
                || (!r.snapshot && self.bodies.contains_key(&id) && !removed_bodies.contains(&id))
        };
        let mut added = HashSet::with_capacity(r.add_joints.len());
        for j in &r.add_joints {
            let what = format!("add_joints: joint {}", j.id);
            if alive(&j.id) && !removed.contains(&j.id) {
                return Err(invalid(format!("{what} already exists")));
            }
            if !added.insert(j.id) {
                return Err(invalid(format!("{what} listed twice")));
            }
            for body in std::iter::once(j.body1).chain(j.body2) {
                if !body_exists(body) {
                    return Err(invalid(format!("{what}: no body {body}")));
                }
            }
            if j.body2 == Some(j.body1) {
                return Err(invalid(format!("{what} joins body {} to itself", j.body1)));
            }
            check_joint(j, &what)?;
        }
        // Only additions can pass the bound (and counting is O(joints): not on every tick).
        if added.is_empty() {
            return Ok(());
        }
        let kept = self.joints.keys().filter(|id| alive(id) && !removed.contains(id)).count();
        if kept + added.len() > limits::MAX_JOINTS_PER_SESSION {
            return Err(limit(format!(
                "the session would hold {} joints; at most {} are allowed",
                kept + added.len(),
                limits::MAX_JOINTS_PER_SESSION
            )));
        }
        Ok(())
    }

    /// Applies a validated request's changes (everything before the steps).
    fn apply(&mut self, r: &PhysicsStepRequest, plan: &Plan) {
        if r.snapshot {
            *self = PhysicsWorld::new();
        }
        if let Some(g) = r.gravity {
            self.world.gravity = vec3(g);
        }
        self.events.begin_tick();
        self.remove_bodies(&r.remove, 0);
        for (((desc, rotation), collider), bounds) in
            r.add.iter().zip(&plan.add_rotations).zip(&plan.add_colliders).zip(&plan.add_bounds)
        {
            let (handle, collider) = self.insert(desc, *rotation, collider.clone());
            let elements = desc.shape.elements();
            self.shape_elements += elements;
            let bounds = bounds.clone();
            self.events.add_body(desc.id, Listener { collider, active_events: desc.active_events });
            self.bodies.insert(
                desc.id,
                Entry {
                    handle,
                    body_type: desc.body_type,
                    active_events: desc.active_events,
                    sensor: desc.sensor,
                    bounds,
                    elements,
                    last_reported: None,
                    still_for: 0.0,
                },
            );
        }
        if r.snapshot {
            let sensor = |id: &BodyId| self.bodies.get(id).is_some_and(|e| e.sensor);
            let pairs: Vec<_> = r.touching.iter().map(|&[a, b]| ((a, b), sensor(&a) || sensor(&b))).collect();
            self.events.restore_touching(pairs.into_iter());
        }
        for id in &r.remove_joints {
            let joint = self.joints.remove(id).expect("validated");
            self.world.remove_impulse_joint(joint.handle);
        }
        for j in &r.add_joints {
            let body1 = self.bodies[&j.body1].handle;
            // A joint measures its second body against its first (bevy_rapier's parent
            // and child); a body joined to the world is measured against the world.
            let (parent, child) = match j.body2 {
                Some(id) => (body1, self.bodies[&id].handle),
                None => (self.world_anchor(), body1),
            };
            let handle = self.world.insert_impulse_joint(parent, child, rapier_joint(j));
            self.joints.insert(j.id, JointEntry { handle, body1: j.body1, body2: j.body2 });
        }
        for (p, rotation) in r.set_pose.iter().zip(&plan.pose_rotations) {
            let entry = self.bodies.get_mut(&p.id).expect("validated");
            let rb = &mut self.world.bodies[entry.handle];
            rb.set_position(Pose::from_parts(vec3(snap_position(p.position)), *rotation), true);
            reset_sleep(&mut self.world.bodies, entry);
        }
        for v in &r.set_velocity {
            let entry = self.bodies.get_mut(&v.id).expect("validated");
            let rb = &mut self.world.bodies[entry.handle];
            rb.set_linvel(vec3(snap_velocity(v.linvel)), true);
            rb.set_angvel(vec3(snap_velocity(v.angvel)), true);
            reset_sleep(&mut self.world.bodies, entry);
        }
        for i in &r.impulses {
            let entry = self.bodies.get_mut(&i.id).expect("validated");
            let rb = &mut self.world.bodies[entry.handle];
            rb.apply_impulse(vec3(i.impulse), true);
            rb.apply_torque_impulse(vec3(i.torque_impulse), true);
            reset_sleep(&mut self.world.bodies, entry);
        }
        for f in &r.forces {
            let entry = self.bodies.get_mut(&f.id).expect("validated");
            let rb = &mut self.world.bodies[entry.handle];
            rb.add_force(vec3(f.force), true);
            rb.add_torque(vec3(f.torque), true);
            reset_sleep(&mut self.world.bodies, entry);
        }
        for id in &r.wake {
            let entry = self.bodies.get_mut(id).expect("validated");
            self.world.bodies[entry.handle].wake_up(true);
            reset_sleep(&mut self.world.bodies, entry);
        }
        for id in &r.sleep {
            let entry = self.bodies.get_mut(id).expect("validated");
            entry.still_for = 0.0;
            self.world.bodies[entry.handle].sleep();
        }
    }

    /// The fixed body joints to the world hang from.
    fn world_anchor(&mut self) -> RigidBodyHandle {
        match self.world_anchor {
            Some(handle) => handle,
            None => {
                let handle = self.world.insert_body(RigidBodyBuilder::fixed());
                self.world_anchor = Some(handle);
                handle
            }
        }
    }

    /// Removes bodies during `step`, and with them their joints (rapier removes those with
    /// the body; the world forgets them too) and their touching pairs (reported stopped).
    fn remove_bodies(&mut self, ids: &[BodyId], step: u32) {
        if ids.is_empty() {
            return;
        }
        let mut gone = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(entry) = self.bodies.remove(id) {
                self.world.remove_body(entry.handle);
                self.shape_elements -= entry.elements;
                gone.push((*id, entry.active_events));
            }
        }
        self.events.remove_bodies(&gone, step);
        if !self.joints.is_empty() {
            let removed: HashSet<BodyId> = ids.iter().copied().collect();
            self.joints.retain(|_, j| !removed.contains(&j.body1) && j.body2.is_none_or(|b| !removed.contains(&b)));
        }
    }

    fn insert(&mut self, d: &BodyDesc, rotation: Rotation, shape: SharedShape) -> (RigidBodyHandle, ColliderHandle) {
        let body = match d.body_type {
            BodyType::Dynamic => RigidBodyBuilder::dynamic(),
            BodyType::Kinematic => RigidBodyBuilder::kinematic_position_based(),
            BodyType::KinematicVelocity => RigidBodyBuilder::kinematic_velocity_based(),
            BodyType::Fixed => RigidBodyBuilder::fixed(),
        }
        .pose(Pose::from_parts(vec3(snap_position(d.position)), rotation))
        .linvel(vec3(snap_velocity(d.linvel)))
        .angvel(vec3(snap_velocity(d.angvel)))
        .linear_damping(d.linear_damping)
        .angular_damping(d.angular_damping)
        .ccd_enabled(d.ccd)
        .sleeping(d.sleeping)
        .gravity_scale(d.gravity_scale)
        .locked_axes(LockedAxes::from_bits_truncate(d.locked_axes))
        .dominance_group(d.dominance);
        let body = if d.additional_mass != 0.0 { body.additional_mass(d.additional_mass) } else { body };
        let mut collider = ColliderBuilder::new(shape)
            .friction(d.friction)
            .restitution(d.restitution)
            .friction_combine_rule(combine_rule(d.friction_combine))
            .restitution_combine_rule(combine_rule(d.restitution_combine))
            .collision_groups(interaction_groups(d.collision_groups))
            .solver_groups(interaction_groups(d.solver_groups))
            .sensor(d.sensor)
            // Collision events are read from the narrow phase (see `events`); only the
            // solver's forces need rapier's events.
            .active_events(if d.active_events & p2c2r_protocol::physics::active_events::CONTACT_FORCE_EVENTS != 0 {
                ActiveEvents::CONTACT_FORCE_EVENTS
            } else {
                ActiveEvents::empty()
            })
            .contact_force_event_threshold(d.contact_force_threshold)
            // The body id, for the events.
            .user_data(u128::from(d.id));
        if d.sensor {
            // A trigger zone notices every moving body: a kinematic character walking into
            // a fixed zone too (rapier's default leaves out pairs without a dynamic body),
            // but never fixed geometry (a fixed zone overlapping the level, a kinematic
            // zone moving through it).
            let mut types = ActiveCollisionTypes::all() - ActiveCollisionTypes::FIXED_FIXED;
            if d.body_type.is_kinematic() {
                types -= ActiveCollisionTypes::KINEMATIC_FIXED;
            }
            collider = collider.active_collision_types(types);
        }
        if let Some(offset) = d.collider_offset {
            let rotation = unit_quat("collider_offset.rotation", offset.rotation).expect("validated");
            collider = collider.position(Pose::from_parts(vec3(offset.position), rotation));
        }
        let collider = match (d.mass_properties, d.mass, d.density) {
            (Some(m), _, _) => {
                let frame = unit_quat("mass_properties", m.principal_inertia_frame).expect("validated");
                collider.mass_properties(MassProperties::with_principal_inertia_frame(
                    vec3(m.center_of_mass),
                    m.mass,
                    vec3(m.principal_inertia),
                    frame,
                ))
            }
            (None, Some(mass), _) => collider.mass(mass),
            (None, None, Some(density)) => collider.density(density),
            (None, None, None) => collider.density(DEFAULT_DENSITY),
        };
        let (handle, collider) = self.world.insert(body, collider);
        if d.sleeping {
            // Attaching the collider woke the body; put it back to sleep as asked.
            self.world.bodies[handle].sleep();
        }
        (handle, collider)
    }

    /// Runs the request's steps, moving kinematic bodies towards their targets and
    /// collecting events. After each step, counts rapier's contact pairs (unless
    /// `max_pairs` is `u64::MAX`) and stops early once there are more than `max_pairs`,
    /// or more than [`limits::MAX_EVENTS_PER_TICK`] events.
    fn simulate(&mut self, r: &PhysicsStepRequest, plan: &Plan, max_pairs: u64) -> Option<Overflow> {
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
            .map(|(k, rotation)| Pose::from_parts(vec3(snap_position(k.position)), *rotation))
            .collect();
        if r.steps == 0 {
            // No time passes: kinematic bodies are simply placed at their targets.
            for ((handle, _), target) in starts.iter().zip(&targets) {
                self.world.bodies[*handle].set_position(*target, true);
            }
            return None;
        }
        self.world.integration_parameters.dt = r.dt;
        let forces = ForceCollector::default();
        for k in 1..=r.steps {
            for ((handle, start), target) in starts.iter().zip(&targets) {
                let pose = if k == r.steps { *target } else { interpolate(start, target, k as f32 / r.steps as f32) };
                self.world.bodies[*handle].set_next_kinematic_position(pose);
            }
            let step = k - 1;
            if self.events.wants_forces() {
                self.world.step_with_events(&(), &forces);
                self.events.add_forces(&forces, &self.world.colliders, step);
            } else {
                self.world.step();
            }
            self.events.after_step(&self.world.narrow_phase, &self.world.colliders, step);
            if self.events.count() > limits::MAX_EVENTS_PER_TICK {
                return Some(Overflow::Events(self.events.count()));
            }
            if max_pairs != u64::MAX {
                // A pair of composite shapes (meshes, heightfields, compounds) holds a
                // manifold per pair of parts in contact: those are the work, so count them.
                let pairs = self.world.contact_pairs().map(|p| p.manifolds().len().max(1) as u64).sum::<u64>();
                if pairs > max_pairs {
                    return Some(Overflow::Pairs(pairs));
                }
            }
        }
        for f in &r.forces {
            if let Some(entry) = self.bodies.get(&f.id) {
                let rb = &mut self.world.bodies[entry.handle];
                rb.reset_forces(false);
                rb.reset_torques(false);
            }
        }
        None
    }

    /// Snaps every non-fixed body onto the lattice and returns the states to report (those
    /// that differ from the last reported), sorted by body id, and the bodies removed
    /// because they left the world's bounds (sorted too).
    fn extract(&mut self, steps: u32, dt: f32) -> Result<(Vec<BodyState>, Vec<BodyId>), TaskError> {
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
        let mut removed = Vec::new();
        for (&id, entry) in self.bodies.iter_mut() {
            if entry.body_type == BodyType::Fixed {
                continue;
            }
            let rb = &self.world.bodies[entry.handle];
            let sleeping = rb.is_sleeping();
            if sleeping && entry.last_reported.is_some_and(|q| q.sleeping) {
                // Asleep since its last report: nothing moved it (whatever moves a body
                // wakes it), and it was snapped then.
                continue;
            }
            let raw = BodyState {
                id,
                position: rb.translation().to_array(),
                rotation: rb.rotation().to_array(),
                linvel: rb.linvel().to_array(),
                angvel: rb.angvel().to_array(),
                sleeping,
            };
            if !within_bounds(&raw) {
                removed.push(id);
                continue;
            }
            if entry.body_type == BodyType::Dynamic {
                track_sleep(&mut self.world.bodies, entry, steps, dt);
            }
            let quantized = quantize(&raw);
            let snapped = dequantize(id, &quantized);
            if !same_bits(&raw, &snapped) {
                // Taking the body mutably marks it modified; only when something changes.
                write_state(&mut self.world.bodies[entry.handle], &snapped);
            }
            if entry.last_reported != Some(quantized) {
                entry.last_reported = Some(quantized);
                states.push(snapped);
            }
        }
        // Reported after the tick's last step (whose own events come first).
        self.remove_bodies(&removed, steps);
        Ok((states, removed))
    }
}

/// Keeps rapier's sleeping working although the world is snapped after every tick.
///
/// Rapier treats a pose the user sets as a disturbance: at the next step it wakes the body
/// and the bodies touching it *strongly*, resetting their sleep timers. Snapping sets the
/// pose of nearly every awake body every tick, so without help a pile never falls asleep
/// (measured with the 900 cubes of `sim/benches/bandwidth.rs`: 1 asleep after 150 ticks
/// with snapping alone, 894 with this, 897 without snapping).
///
/// So this keeps the timer that rapier would have kept. After the tick's steps, rapier's
/// timer says whether the body passed rapier's own sleep test (it measures the body's
/// displacement) at every step: it is then at least `steps × dt`, since the reset only
/// happens at the first step, where user changes are applied. While the body passes,
/// `still_for` accumulates across ticks; once it reaches rapier's `time_until_sleep`, the
/// body's `time_until_sleep` is lowered to the smallest positive number, so that rapier
/// counts it eligible exactly when it passed its test at the last step, and rapier's
/// island logic puts its island to sleep as it would have. Islands are put to sleep before
/// their bodies are integrated, so they fall asleep on the lattice and no pose is written
/// into them afterwards. A sleeping body is left alone (touching its activation would wake
/// it); once awake again its `still_for` starts from zero and rapier's threshold comes
/// back. What the gamer disturbs (`set_pose`, `set_velocity`, `impulses`, `forces`) starts
/// from zero too, at once ([`reset_sleep`]).
fn track_sleep(bodies: &mut RigidBodySet, entry: &mut Entry, steps: u32, dt: f32) {
    let activation = bodies[entry.handle].activation();
    if activation.sleeping {
        entry.still_for = 0.0;
        return;
    }
    if steps > 0 {
        let passed_every_step = activation.time_since_can_sleep >= (steps as f32 - 0.5) * dt;
        entry.still_for =
            if passed_every_step { entry.still_for + steps as f32 * dt } else { activation.time_since_can_sleep };
    }
    let default = RigidBodyActivation::default_time_until_sleep();
    let wanted = if entry.still_for >= default { f32::MIN_POSITIVE } else { default };
    if activation.time_until_sleep != wanted {
        bodies[entry.handle].activation_mut().time_until_sleep = wanted;
    }
}

/// A body the gamer disturbed needs rapier's full time still before it may sleep again.
fn reset_sleep(bodies: &mut RigidBodySet, entry: &mut Entry) {
    entry.still_for = 0.0;
    let default = RigidBodyActivation::default_time_until_sleep();
    if bodies[entry.handle].activation().time_until_sleep != default {
        bodies[entry.handle].activation_mut().time_until_sleep = default;
    }
}

/// Whether two states hold the same bits (`-0.0` and `0.0` differ, unlike `==`).
fn same_bits(a: &BodyState, b: &BodyState) -> bool {
    let bits = |s: &BodyState| {
        let mut all = [0u32; 13];
        for (slot, v) in all.iter_mut().zip(s.position.iter().chain(&s.rotation).chain(&s.linvel).chain(&s.angvel)) {
            *slot = v.to_bits();
        }
        all
    };
    bits(a) == bits(b)
}

/// Writes a snapped state into a body, bit for bit, without waking it. Rapier's setters
/// compare values and skip an equal one, so where only the sign of a zero differs the
/// body first steps aside. A kinematic body ignores the velocities (rapier derives them).
fn write_state(rb: &mut RigidBody, s: &BodyState) {
    let pose = Pose::from_parts(vec3(s.position), Rotation::from_array(s.rotation));
    let current = rb.position();
    let pose_bits = |p: &Pose| (p.translation.to_array().map(f32::to_bits), p.rotation.to_array().map(f32::to_bits));
    if pose_bits(current) != pose_bits(&pose) {
        if *current == pose {
            rb.set_position(Pose::from_parts(pose.translation + Vector::ONE, pose.rotation), false);
        }
        rb.set_position(pose, false);
    }
    let (linvel, angvel) = (vec3(s.linvel), vec3(s.angvel));
    if rb.linvel().to_array().map(f32::to_bits) != s.linvel.map(f32::to_bits) {
        if rb.linvel() == linvel {
            rb.set_linvel(linvel + Vector::ONE, false);
        }
        rb.set_linvel(linvel, false);
    }
    if rb.angvel().to_array().map(f32::to_bits) != s.angvel.map(f32::to_bits) {
        if rb.angvel() == angvel {
            rb.set_angvel(angvel + Vector::ONE, false);
        }
        rb.set_angvel(angvel, false);
    }
}

/// Whether a state would pass a snapshot's validation: finite, every coordinate within
/// ±[`MAX_COORDINATE`], every velocity component within ±[`MAX_SPEED`], a unit rotation.
fn within_bounds(s: &BodyState) -> bool {
    let finite = s.position.iter().chain(&s.rotation).chain(&s.linvel).chain(&s.angvel).all(|v| v.is_finite());
    finite
        && s.position.iter().all(|x| x.abs() <= MAX_COORDINATE)
        && s.linvel.iter().chain(&s.angvel).all(|v| v.abs() <= MAX_SPEED)
        && unit_quat("rotation", s.rotation).is_ok()
}

/// An axis-aligned bounding box of one body, for [`estimate_overlapping_pairs`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundingBox {
    /// The smallest corner.
    pub min: Vec3,
    /// The largest corner.
    pub max: Vec3,
    /// Whether the body is dynamic (rapier makes no contact pairs between two bodies that
    /// are both fixed or kinematic).
    pub dynamic: bool,
}

/// Added on every side of a bounding box: rapier pairs bodies a little before they touch.
const PAIR_MARGIN: f32 = 0.01;

/// The most pairs [`estimate_overlapping_pairs`] compares before giving up (about
/// 30 ms): beyond it, a world is refused as too dense to check.
pub const MAX_PAIR_COMPARISONS: u64 = 32_000_000;

/// What a body's collider covers in the body's frame, as the pair budget sees it: exact
/// for balls and y capsules (as before shapes had offsets), a box for the rest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// A ball at `centre`.
    Ball {
        /// Its centre in the body's frame.
        centre: Vec3,
        /// Its radius.
        radius: f32,
    },
    /// A y capsule at the body's origin.
    CapsuleY {
        /// Half its cylinder's length.
        half_height: f32,
        /// Its radius.
        radius: f32,
    },
    /// A box (centre, half extents) in the body's frame.
    Box {
        /// Its centre.
        centre: Vec3,
        /// Its half extents.
        half: Vec3,
    },
}

impl Bound {
    /// Boxes (centre, half extents, in a shape's frame) placed at `offset` in its body.
    pub fn boxes(boxes: &[(Vec3, Vec3)], offset: Option<&Offset>) -> Vec<Bound> {
        let identity = Offset { position: [0.0; 3], rotation: p2c2r_protocol::physics::IDENTITY };
        let offset = offset.unwrap_or(&identity);
        boxes
            .iter()
            .map(|&(centre, half)| {
                let (centre, half) = shapes::turned_box(centre, half, offset.position, offset.rotation);
                Bound::Box { centre, half }
            })
            .collect()
    }

    /// The bounds of a checked shape placed at `offset` in its body: one per part of a
    /// compound, one for anything else.
    pub fn parts_of(shape: &Shape, offset: Option<&Offset>) -> Vec<Bound> {
        let Shape::Compound { parts } = shape else { return vec![Bound::of(shape, offset)] };
        let identity = Offset { position: [0.0; 3], rotation: p2c2r_protocol::physics::IDENTITY };
        let offset = offset.unwrap_or(&identity);
        parts
            .iter()
            .map(|part| {
                let (centre, half) = shapes::local_box(&part.shape);
                let (centre, half) = shapes::turned_box(centre, half, part.position, part.rotation);
                let (centre, half) = shapes::turned_box(centre, half, offset.position, offset.rotation);
                Bound::Box { centre, half }
            })
            .collect()
    }

    /// The bound of a checked shape placed at `offset` in its body.
    pub fn of(shape: &Shape, offset: Option<&Offset>) -> Self {
        let identity = Offset { position: [0.0; 3], rotation: p2c2r_protocol::physics::IDENTITY };
        let offset = offset.unwrap_or(&identity);
        match *shape {
            Shape::Sphere { radius } => Bound::Ball { centre: offset.position, radius },
            Shape::Capsule { half_height, radius } if offset == &identity => Bound::CapsuleY { half_height, radius },
            _ => {
                let (centre, half) = shapes::local_box(shape);
                let (centre, half) = shapes::turned_box(centre, half, offset.position, offset.rotation);
                Bound::Box { centre, half }
            }
        }
    }
}

impl BoundingBox {
    /// The box around `shape` at this pose (`rotation` is a unit quaternion `[x, y, z, w]`),
    /// widened by a small margin.
    pub fn of(shape: &Shape, position: Vec3, rotation: Quat, dynamic: bool) -> Self {
        Self::around(Bound::of(shape, None), position, rotation, dynamic)
    }

    /// The box around `bound` in a body at this pose, widened by a small margin.
    pub fn around(bound: Bound, position: Vec3, rotation: Quat, dynamic: bool) -> Self {
        let m = shapes::matrix(rotation);
        let (centre, half): (Vec3, Vec3) = match bound {
            Bound::Ball { centre, radius } => {
                (std::array::from_fn(|i| position[i] + (0..3).map(|j| m[i][j] * centre[j]).sum::<f32>()), [radius; 3])
            }
            Bound::CapsuleY { half_height, radius } => {
                (position, std::array::from_fn(|i| m[i][1].abs() * half_height + radius))
            }
            Bound::Box { centre, half } => shapes::turned_box(centre, half, position, rotation),
        };
        BoundingBox {
            min: std::array::from_fn(|i| centre[i] - half[i] - PAIR_MARGIN),
            max: std::array::from_fn(|i| centre[i] + half[i] + PAIR_MARGIN),
            dynamic,
        }
    }

    fn overlaps(&self, other: &BoundingBox) -> bool {
        (0..3).all(|i| self.min[i] <= other.max[i] && other.min[i] <= self.max[i])
    }
}

/// The outcome of [`estimate_overlapping_pairs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairEstimate {
    /// At most this many pairs overlap (exact when the sweep ran; otherwise the bound
    /// from the overlaps along the best axis alone, when that is already within budget).
    Within(u64),
    /// More than the budget overlap.
    Over,
    /// Checking would take more than [`MAX_PAIR_COMPARISONS`] comparisons.
    TooDense,
}

/// Counts the pairs of overlapping boxes (at least one of them dynamic), stopping as soon
/// as there are more than `max`.
///
/// Sort and sweep along the axis where the fewest pairs of boxes overlap: those 1-D
/// overlaps are counted exactly for each axis in O(n log n) first; when the best axis has
/// no more than `max`, that bound is the answer. Otherwise the sweep compares exactly the
/// pairs overlapping along that axis and stops after `max + 1` real overlaps, so the
/// 1,000-spheres-at-one-point attack costs about `max` comparisons, not n². A layout
/// where every axis has more than [`MAX_PAIR_COMPARISONS`] 1-D overlaps but few real
/// ones is refused as [`PairEstimate::TooDense`]: honest scenes are far from it (a flat
/// 100 × 100 grid of boxes on a ground needs about half a million comparisons).
pub fn estimate_overlapping_pairs(boxes: &[BoundingBox], max: u64) -> PairEstimate {
    let n = boxes.len();
    let all_pairs = (n as u64) * (n as u64).saturating_sub(1) / 2;
    if all_pairs <= max {
        // Even if every box touched every other one.
        return PairEstimate::Within(all_pairs);
    }
    let mut best: Option<(u64, usize)> = None;
    for axis in 0..3 {
        let overlaps = axis_overlaps(boxes, axis);
        if best.is_none_or(|(b, _)| overlaps < b) {
            best = Some((overlaps, axis));
        }
    }
    let (bound, axis) = best.expect("three axes");
    if bound <= max {
        return PairEstimate::Within(bound);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| boxes[a].min[axis].total_cmp(&boxes[b].min[axis]));
    let (mut pairs, mut comparisons) = (0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        let a = &boxes[i];
        for &j in &order[k + 1..] {
            let b = &boxes[j];
            if b.min[axis] > a.max[axis] {
                break;
            }
            comparisons += 1;
            if comparisons > MAX_PAIR_COMPARISONS {
                return PairEstimate::TooDense;
            }
            if (a.dynamic || b.dynamic) && a.overlaps(b) {
                pairs += 1;
                if pairs > max {
                    return PairEstimate::Over;
                }
            }
        }
    }
    PairEstimate::Within(pairs)
}

/// The number of pairs of boxes whose extents along `axis` overlap, in O(n log n).
fn axis_overlaps(boxes: &[BoundingBox], axis: usize) -> u64 {
    let n = boxes.len() as u64;
    let mut mins: Vec<f32> = boxes.iter().map(|b| b.min[axis]).collect();
    mins.sort_unstable_by(f32::total_cmp);
    // Pairs that do not overlap: for each box, the boxes starting after it ends.
    let disjoint: u64 = boxes
        .iter()
        .map(|b| {
            let starts_after = mins.len() - mins.partition_point(|&m| m <= b.max[axis]);
            starts_after as u64
        })
        .sum();
    n * (n - 1) / 2 - disjoint
}

/// Why the steps stopped early.
enum Overflow {
    /// Rapier held this many contact manifolds.
    Pairs(u64),
    /// The tick raised this many events.
    Events(usize),
}

/// What validation computed that applying needs.
struct Plan {
    add_rotations: Vec<Rotation>,
    /// The added bodies' shapes, built.
    add_colliders: Vec<SharedShape>,
    /// The local boxes of the added bodies' cacheable shapes (empty for the others).
    add_local_boxes: Vec<Vec<(Vec3, Vec3)>>,
    /// What each added body's collider covers, for the pair budget.
    add_bounds: Vec<Vec<Bound>>,
    pose_rotations: Vec<Rotation>,
    target_rotations: Vec<Rotation>,
    /// How many bodies the world holds once the request's changes are applied.
    bodies_after: usize,
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

/// The lattice rotation of a quaternion that is close to unit length; rejects anything
/// else.
fn lattice_rotation(what: &str, q: Quat) -> Result<Rotation, TaskError> {
    unit_quat(what, q)?;
    Ok(Rotation::from_array(snap_rotation(q)))
}

/// Checks a body to add; `cached` is its shape when it is a [`Shape::Cached`] (checked
/// when it was first sent).
fn check_body(d: &BodyDesc, cached: Option<&CachedShape>) -> Result<(), TaskError> {
    let id = d.id;
    let what = format!("add: body {id}");
    let surface = match cached {
        Some(shape) => {
            if d.shape.elements() != shape.elements {
                return Err(invalid(format!(
                    "{what}: the cached shape has {} elements, not the {} declared",
                    shape.elements,
                    d.shape.elements()
                )));
            }
            shape.surface
        }
        None => {
            shapes::check(&d.shape, &what)?;
            matches!(d.shape, Shape::TriMesh { .. } | Shape::Heightfield { .. })
        }
    };
    if surface && d.body_type.is_dynamic() {
        return Err(invalid(format!(
            "{what}: a triangle mesh or heightfield has no inside, so it cannot be a dynamic body; make it fixed or kinematic, or use a convex hull or a compound of them"
        )));
    }
    check_vec(&format!("{what}: position"), d.position, MAX_COORDINATE)?;
    check_vec(&format!("{what}: linvel"), d.linvel, MAX_SPEED)?;
    check_vec(&format!("{what}: angvel"), d.angvel, MAX_SPEED)?;
    if let Some(mass) = d.mass {
        check_scalar(&format!("{what}: mass"), mass, MASS_RANGE)?;
    }
    if let Some(density) = d.density {
        check_scalar(&format!("{what}: density"), density, MASS_RANGE)?;
    }
    for (name, x) in [
        ("friction", d.friction),
        ("restitution", d.restitution),
        ("linear_damping", d.linear_damping),
        ("angular_damping", d.angular_damping),
    ] {
        check_scalar(&format!("{what}: {name}"), x, (0.0, MAX_MATERIAL))?;
    }
    if let Some(offset) = d.collider_offset {
        check_vec(&format!("{what}: collider_offset.position"), offset.position, MAX_COORDINATE)?;
        unit_quat(&format!("{what}: collider_offset.rotation"), offset.rotation)?;
    }
    check_scalar(
        &format!("{what}: gravity_scale"),
        d.gravity_scale,
        (-limits::MAX_GRAVITY_SCALE, limits::MAX_GRAVITY_SCALE),
    )?;
    if d.locked_axes & !p2c2r_protocol::physics::locked_axes::ALL != 0 {
        return Err(invalid(format!("{what}: locked_axes {:#b} sets bits past the six axes", d.locked_axes)));
    }
    if d.active_events & !p2c2r_protocol::physics::active_events::ALL != 0 {
        return Err(invalid(format!("{what}: active_events {:#b} sets unknown bits", d.active_events)));
    }
    check_scalar(&format!("{what}: contact_force_threshold"), d.contact_force_threshold, (0.0, MAX_FORCE))?;
    if d.dominance == i8::MIN {
        return Err(invalid(format!("{what}: dominance must be in [-127, 127]")));
    }
    if d.additional_mass != 0.0 {
        check_scalar(&format!("{what}: additional_mass"), d.additional_mass, (0.0, MASS_RANGE.1))?;
    }
    if let Some(m) = d.mass_properties {
        check_scalar(&format!("{what}: mass_properties.mass"), m.mass, MASS_RANGE)?;
        check_vec(&format!("{what}: mass_properties.center_of_mass"), m.center_of_mass, MAX_COORDINATE)?;
        for x in m.principal_inertia {
            // 0 locks that rotation; anything else must be large enough to invert.
            if x != 0.0 {
                check_scalar(&format!("{what}: mass_properties.principal_inertia"), x, (1.0e-6, MAX_FORCE))?;
            }
        }
        unit_quat(&format!("{what}: mass_properties.principal_inertia_frame"), m.principal_inertia_frame)?;
    }
    Ok(())
}

/// Checks a snapshot's touching pairs: only in a snapshot, at most
/// [`limits::MAX_TOUCHING_PAIRS`], each of two bodies of the snapshot with the smaller id
/// first and one of them asking for collision events, sorted without repeats.
fn validate_touching(r: &PhysicsStepRequest) -> Result<(), TaskError> {
    if r.touching.is_empty() {
        return Ok(());
    }
    if !r.snapshot {
        return Err(invalid("touching: only a snapshot carries touching pairs".into()));
    }
    if r.touching.len() > limits::MAX_TOUCHING_PAIRS {
        return Err(limit(format!(
            "touching has {} pairs; at most {} are allowed",
            r.touching.len(),
            limits::MAX_TOUCHING_PAIRS
        )));
    }
    let events: HashMap<BodyId, u8> = r.add.iter().map(|d| (d.id, d.active_events)).collect();
    let mut previous: Option<[BodyId; 2]> = None;
    for &[a, b] in &r.touching {
        if a >= b {
            return Err(invalid(format!("touching: pair [{a}, {b}] must list the smaller id first")));
        }
        if previous.is_some_and(|p| p >= [a, b]) {
            return Err(invalid(format!("touching: pair [{a}, {b}] is out of order or repeated; sort the pairs")));
        }
        previous = Some([a, b]);
        let (Some(ea), Some(eb)) = (events.get(&a), events.get(&b)) else {
            return Err(invalid(format!("touching: pair [{a}, {b}] names a body the snapshot does not add")));
        };
        if (ea | eb) & p2c2r_protocol::physics::active_events::COLLISION_EVENTS == 0 {
            return Err(invalid(format!("touching: neither body of pair [{a}, {b}] asks for collision events")));
        }
    }
    Ok(())
}

/// Checks a joint on its own, as a world would (not whether its bodies exist): two
/// different bodies, anchors within the world, a usable axis, ordered limits, motor gains
/// and spring constants finite and not negative. A gamer checks its joints with it before
/// sending them, so that one bad joint never gets a whole tick refused.
pub fn check_joint_alone(j: &JointDesc) -> Result<(), TaskError> {
    let what = format!("joint {}", j.id);
    if j.body2 == Some(j.body1) {
        return Err(invalid(format!("{what} joins body {} to itself", j.body1)));
    }
    check_joint(j, &what)
}

/// Checks a joint's values: anchors within the world, a usable axis, ordered limits,
/// motor gains and spring constants finite and not negative.
fn check_joint(j: &JointDesc, what: &str) -> Result<(), TaskError> {
    check_vec(&format!("{what}: anchor1"), j.anchor1, MAX_COORDINATE)?;
    check_vec(&format!("{what}: anchor2"), j.anchor2, MAX_COORDINATE)?;
    let gain = |name: &str, x: f32| check_scalar(&format!("{what}: {name}"), x, (0.0, MAX_FORCE));
    match j.kind {
        JointKind::Fixed | JointKind::Spherical => Ok(()),
        JointKind::Revolute { axis, limits, motor } | JointKind::Prismatic { axis, limits, motor } => {
            check_vec(&format!("{what}: axis"), axis, MAX_COORDINATE)?;
            let length = axis.iter().map(|x| x * x).sum::<f32>().sqrt();
            if !(1.0e-3..=1.0e3).contains(&length) {
                return Err(invalid(format!("{what}: axis must have a length in [1e-3, 1e3], got {axis:?}")));
            }
            if let Some([low, high]) = limits
                && !(low.is_finite()
                    && high.is_finite()
                    && low <= high
                    && low.abs() <= MAX_COORDINATE
                    && high.abs() <= MAX_COORDINATE)
            {
                return Err(invalid(format!("{what}: limits must be finite, the smaller first, got [{low}, {high}]")));
            }
            if let Some(m) = motor {
                check_scalar(
                    &format!("{what}: motor target_position"),
                    m.target_position,
                    (-MAX_COORDINATE, MAX_COORDINATE),
                )?;
                check_scalar(&format!("{what}: motor target_velocity"), m.target_velocity, (-MAX_SPEED, MAX_SPEED))?;
                gain("motor stiffness", m.stiffness)?;
                gain("motor damping", m.damping)?;
                if let Some(max) = m.max_force {
                    gain("motor max_force", max)?;
                }
            }
            Ok(())
        }
        JointKind::Rope { max_distance } => {
            check_scalar(&format!("{what}: max_distance"), max_distance, (0.0, MAX_COORDINATE))
        }
        JointKind::Spring { rest_length, stiffness, damping } => {
            check_scalar(&format!("{what}: rest_length"), rest_length, (0.0, MAX_COORDINATE))?;
            gain("stiffness", stiffness)?;
            gain("damping", damping)
        }
    }
}

/// rapier's joint for a checked description (to the world: the world is its first body).
fn rapier_joint(j: &JointDesc) -> GenericJoint {
    let (a1, a2) = match j.body2 {
        Some(_) => (vec3(j.anchor1), vec3(j.anchor2)),
        None => (vec3(j.anchor2), vec3(j.anchor1)),
    };
    let axis = |axis: Vec3| vec3(axis).normalize();
    let mut joint: GenericJoint = match j.kind {
        JointKind::Fixed => FixedJointBuilder::new().local_anchor1(a1).local_anchor2(a2).build().into(),
        JointKind::Revolute { axis: v, .. } => {
            RevoluteJointBuilder::new(axis(v)).local_anchor1(a1).local_anchor2(a2).build().into()
        }
        JointKind::Prismatic { axis: v, .. } => {
            PrismaticJointBuilder::new(axis(v)).local_anchor1(a1).local_anchor2(a2).build().into()
        }
        JointKind::Spherical => SphericalJointBuilder::new().local_anchor1(a1).local_anchor2(a2).build().into(),
        JointKind::Rope { max_distance } => {
            RopeJointBuilder::new(max_distance).local_anchor1(a1).local_anchor2(a2).build().into()
        }
        JointKind::Spring { rest_length, stiffness, damping } => {
            SpringJointBuilder::new(rest_length, stiffness, damping).local_anchor1(a1).local_anchor2(a2).build().into()
        }
    };
    if let JointKind::Revolute { limits, motor, .. } | JointKind::Prismatic { limits, motor, .. } = j.kind {
        let axis = if matches!(j.kind, JointKind::Revolute { .. }) { JointAxis::AngX } else { JointAxis::LinX };
        if let Some(limits) = limits {
            joint.set_limits(axis, limits);
        }
        if let Some(m) = motor {
            joint.set_motor(axis, m.target_position, m.target_velocity, m.stiffness, m.damping);
            if let Some(max) = m.max_force {
                joint.set_motor_max_force(axis, max);
            }
        }
    }
    joint.set_contacts_enabled(j.contacts_enabled);
    joint
}

pub(crate) fn interaction_groups(groups: Groups) -> InteractionGroups {
    InteractionGroups::new(
        Group::from_bits_retain(groups.memberships),
        Group::from_bits_retain(groups.filters),
        InteractionTestMode::And,
    )
}

fn combine_rule(rule: CombineRule) -> CoefficientCombineRule {
    match rule {
        CombineRule::Average => CoefficientCombineRule::Average,
        CombineRule::Min => CoefficientCombineRule::Min,
        CombineRule::Multiply => CoefficientCombineRule::Multiply,
        CombineRule::Max => CoefficientCombineRule::Max,
    }
}

#[cfg(test)]
mod tests {
    use p2c2r_protocol::physics::{ApplyImpulse, KinematicTarget};

    use super::*;

    const DT: f32 = 1.0 / 60.0;

    fn bits(s: &BodyState) -> (BodyId, Vec<u32>, bool) {
        let numbers = s.position.iter().chain(&s.rotation).chain(&s.linvel).chain(&s.angvel);
        (s.id, numbers.map(|v| v.to_bits()).collect(), s.sleeping)
    }

    /// A ground, a kinematic paddle sweeping along it, a pile of 40 cubes dropped onto it
    /// (most fall asleep within the run), a sphere asleep in mid-air from the start and one
    /// falling from high up (awake throughout); then
    /// plain ticks, with a push and a paddle move now and then.
    fn requests(ticks: u64) -> Vec<PhysicsStepRequest> {
        let mut add = vec![
            BodyDesc::new(0, Shape::Box { half_extents: [20.0, 0.5, 20.0] }, [0.0, -0.5, 0.0])
                .with_body_type(BodyType::Fixed),
            BodyDesc::new(100, Shape::Box { half_extents: [0.2, 0.5, 2.0] }, [-9.0, 0.5, 0.0])
                .with_body_type(BodyType::Kinematic),
            BodyDesc { sleeping: true, ..BodyDesc::new(99, Shape::Sphere { radius: 0.5 }, [8.0, 6.0, 8.0]) },
            // Falling for seconds: awake throughout.
            BodyDesc::new(98, Shape::Sphere { radius: 0.5 }, [15.0, 300.0, 15.0]),
        ];
        for i in 0..40u64 {
            let (x, z) = ((i % 8) as f32 * 1.3 - 4.5, (i / 8) as f32 * 1.3 - 3.0);
            let turn = [0.0, (i as f32 * 0.1).sin(), 0.0, (i as f32 * 0.1).cos()];
            let cube = BodyDesc::new(i + 1, Shape::Box { half_extents: [0.5; 3] }, [x, 1.0 + (i % 3) as f32 * 0.7, z]);
            add.push(BodyDesc { rotation: turn, ..cube });
        }
        let mut all = vec![PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add, ..Default::default() }];
        for tick in 1..=ticks {
            let mut r = PhysicsStepRequest { tick, dt: DT, steps: 1, ..Default::default() };
            if tick % 50 == 25 {
                r.impulses =
                    vec![ApplyImpulse { id: 1 + tick % 40, impulse: [0.0, 2000.0, 0.0], torque_impulse: [0.0; 3] }];
            }
            if tick < 30 {
                r.kinematic_targets = vec![KinematicTarget {
                    id: 100,
                    position: [-9.0 + tick as f32 * 0.01, 0.5, 0.0],
                    rotation: [0.0, 0.0, 0.0, 1.0],
                }];
            }
            all.push(r);
        }
        all
    }

    /// A full report after a normal step lists every body of the world (asleep or awake,
    /// fixed, kinematic, reported this tick or not), each exactly as `state` reads it and as
    /// a gamer that applied every result holds it, on the lattice; and reading it changes
    /// nothing: a world that reported fully on tick `k` continues exactly as one that did not.
    #[test]
    fn a_full_report_lists_every_body_and_the_world_continues_as_if_it_had_not() {
        let budgets = Budgets::default();
        let (mut full, mut plain) = (PhysicsWorld::new(), PhysicsWorld::new());
        let mut copy: BTreeMap<BodyId, BodyState> = BTreeMap::new();
        let full_at = [1, 200, 230];
        let requests = requests(240);
        for request in &requests {
            let result = full.step_limited(request, &budgets).unwrap();
            let same = plain.step_limited(request, &budgets).unwrap();
            assert_eq!(serde_json::to_string(&result).unwrap(), serde_json::to_string(&same).unwrap());
            for id in &result.removed {
                copy.remove(id);
            }
            copy.extend(result.bodies.iter().map(|b| (b.id, *b)));
            if !full_at.contains(&request.tick) {
                continue;
            }
            let states = full.states();
            let ids: Vec<BodyId> = states.iter().map(|s| s.id).collect();
            let mut expected: Vec<BodyId> = requests[0].add.iter().map(|d| d.id).collect();
            expected.sort_unstable();
            assert_eq!(ids, expected, "every body, sorted by id, tick {}", request.tick);
            for s in &states {
                assert_eq!(bits(s), bits(&full.state(s.id).unwrap()), "tick {}", request.tick);
                assert_eq!(bits(s), bits(&dequantize(s.id, &quantize(s))), "on the lattice: {s:?}");
                if s.id != 0 {
                    assert_eq!(bits(s), bits(&copy[&s.id]), "the gamer's copy, tick {}", request.tick);
                }
            }
            assert_eq!(states, full.states(), "reading twice gives the same");
            if request.tick >= 200 {
                let asleep = states.iter().filter(|s| s.sleeping).count();
                assert!(asleep >= 10, "{asleep} bodies asleep at tick {}", request.tick);
                assert!(states.iter().any(|s| !s.sleeping));
                assert!(result.bodies.len() < states.len(), "the plain report leaves bodies out");
                assert!(states.iter().any(|s| s.sleeping && !result.bodies.iter().any(|b| b.id == s.id)));
            }
            assert_eq!(full.digest(), plain.digest());
        }
        assert_eq!(full.digest(), plain.digest());
        assert_eq!(full.states(), plain.states());
    }
}
