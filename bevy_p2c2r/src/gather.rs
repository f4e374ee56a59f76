//! The Send stage's first half: gathering this tick's changes from the ECS into
//! [`TickChanges`] (new and removed bodies and agents, forces, impulses, kinematic
//! targets, [`PhysicsCommand`]s, agents' steering).

use bevy::prelude::*;
use p2c2r_protocol::ai::AgentStatus;
use p2c2r_protocol::physics::{
    ApplyForce, ApplyImpulse, BodyType, KinematicTarget as WireKinematicTarget, SetPose, SetVelocity,
};

use crate::body::*;
use crate::build::TickChanges;
use crate::components::*;
use crate::ids::EntityIds;
use crate::joints::ImpulseJoint;
use crate::messages::PhysicsCommand;
use crate::queries::PhysicsQueries;
use crate::shape_names::ShapeNames;

/// A body's [`Collider`] went (or its entity): the body goes.
pub(crate) fn on_body_removed(remove: On<Remove, Collider>, mut ids: ResMut<EntityIds>, mut commands: Commands) {
    ids.removed_bodies.push(remove.entity);
    commands.entity(remove.entity).try_remove::<(PhysicsState, PoseInterpolation)>();
}

/// A part of a body went (its [`RigidBody`], its [`Sensor`], ...): the body is re-created
/// without it, as after a change.
pub(crate) fn on_body_part_removed<T: Component>(remove: On<Remove, T>, mut colliders: Query<&mut Collider>) {
    if let Ok(mut collider) = colliders.get_mut(remove.entity) {
        collider.set_changed();
    }
}

/// Observes the removal of every optional part of a body.
pub(crate) fn observe_body_parts(app: &mut App) {
    app.add_observer(on_body_part_removed::<RigidBody>)
        .add_observer(on_body_part_removed::<Friction>)
        .add_observer(on_body_part_removed::<Restitution>)
        .add_observer(on_body_part_removed::<ColliderMassProperties>)
        .add_observer(on_body_part_removed::<AdditionalMass>)
        .add_observer(on_body_part_removed::<Damping>)
        .add_observer(on_body_part_removed::<GravityScale>)
        .add_observer(on_body_part_removed::<LockedAxes>)
        .add_observer(on_body_part_removed::<Dominance>)
        .add_observer(on_body_part_removed::<Ccd>)
        .add_observer(on_body_part_removed::<CollisionGroups>)
        .add_observer(on_body_part_removed::<SolverGroups>)
        .add_observer(on_body_part_removed::<Sensor>)
        .add_observer(on_body_part_removed::<ActiveEvents>)
        .add_observer(on_body_part_removed::<ContactForceEventThreshold>)
        .add_observer(on_body_part_removed::<ColliderOffset>);
}

pub(crate) fn on_agent_removed(
    remove: On<Remove, OffloadedAgent>,
    mut ids: ResMut<EntityIds>,
    bodies: Query<(), With<Collider>>,
    mut commands: Commands,
) {
    ids.removed_agents.push(remove.entity);
    let mut e = commands.entity(remove.entity);
    e.try_remove::<AgentState>();
    if !bodies.contains(remove.entity) {
        e.try_remove::<PoseInterpolation>();
    }
}

/// A body to register: its parts, pose, initial velocity and state (if re-created).
type NewBody = (Entity, BodyParts, &'static Transform, Option<&'static Velocity>, Option<&'static PhysicsState>);

/// Gives new (and changed) bodies their id and initial state.
pub(crate) fn register_bodies(
    mut commands: Commands,
    mut ids: ResMut<EntityIds>,
    mut changes: ResMut<TickChanges>,
    mut names: ResMut<ShapeNames>,
    mut queries: ResMut<PhysicsQueries>,
    added: Query<NewBody, BodyChanged>,
) {
    for (entity, body, transform, velocity, existing) in &added {
        // A changed body is re-created under a new id with its latest state.
        let (id, old) = ids.bodies.assign(entity);
        if let Some(old) = old {
            ids.replaced_bodies.push(old);
            ids.depart(old, entity);
        }
        let ps = match existing {
            Some(ps) => PhysicsState { id, ..*ps },
            None => PhysicsState {
                id,
                tick: 0,
                position: transform.translation,
                rotation: transform.rotation.normalize(),
                linvel: velocity.map_or(Vec3::ZERO, |v| v.linvel),
                angvel: velocity.map_or(Vec3::ZERO, |v| v.angvel),
                sleeping: false,
            },
        };
        names.register(entity, body.collider);
        let desc = body.desc(id, &ps);
        queries.add(entity, &desc);
        changes.adds.push((entity, desc));
        let mut e = commands.entity(entity);
        e.insert(ps);
        if body.body_type() != BodyType::Fixed {
            e.insert(PoseInterpolation::at(ps.position, ps.rotation));
        } else {
            e.remove::<PoseInterpolation>();
        }
    }
}

/// A body's [`ImpulseJoint`] went: the joint goes (unless its body went too).
pub(crate) fn on_joint_removed(remove: On<Remove, ImpulseJoint>, mut ids: ResMut<EntityIds>) {
    ids.removed_joints.push(remove.entity);
}

/// Sends new and changed joints, and again those whose bodies were re-created (a world
/// removes a body's joints with it); removes the joints whose component went. Runs after
/// [`collect_changes`] (this tick's removals are known).
pub(crate) fn register_joints(
    mut ids: ResMut<EntityIds>,
    mut changes: ResMut<TickChanges>,
    joints: Query<(Entity, Ref<ImpulseJoint>)>,
) {
    let ids = &mut *ids;
    // Whether the world still holds a joint between these bodies: both still stand for
    // the same entities (a re-created or removed body took its joints with it).
    let alive = |ids: &EntityIds, desc: &p2c2r_protocol::physics::JointDesc| {
        let live = |id| ids.bodies.entity(id).is_some();
        live(desc.body1) && desc.body2.is_none_or(live)
    };
    for entity in std::mem::take(&mut ids.removed_joints) {
        if joints.contains(entity) {
            continue; // removed and added again in the same frame
        }
        ids.refused_joints.remove(&entity);
        if let Some(id) = ids.joints.remove_entity(entity)
            && let Some(desc) = ids.joint_descs.remove(&id)
            && alive(ids, &desc)
        {
            changes.remove_joints.push(id);
        }
    }
    for (entity, joint) in &joints {
        if ids.refused_joints.contains(&entity) && !joint.is_changed() {
            continue;
        }
        let Some(body) = ids.bodies.id(entity) else { continue };
        let parent = match joint.parent {
            Some(parent) => match ids.bodies.id(parent) {
                Some(id) => Some(id),
                None => continue, // not a body (yet): the joint waits for it
            },
            None => None,
        };
        let sent = ids.joints.id(entity).and_then(|id| ids.joint_descs.get(&id));
        let (wire_body1, wire_body2) = match parent {
            Some(parent) => (parent, Some(body)),
            None => (body, None),
        };
        let same_bodies = sent.is_some_and(|d| (d.body1, d.body2) == (wire_body1, wire_body2));
        if same_bodies && !joint.is_changed() {
            continue;
        }
        // A joint the world would refuse (a body joined to itself, a zero axis, limits the
        // wrong way round) would get every tick refused: it is left out, with a warning,
        // and the joint it replaces goes.
        let checked = p2c2r_sim::physics::check_joint_alone(&joint.desc(0, body, parent));
        let (id, old) = match checked {
            Ok(()) => {
                ids.refused_joints.remove(&entity);
                let (id, old) = ids.joints.assign(entity);
                (Some(id), old)
            }
            Err(e) => {
                tracing::warn!(?entity, error = %e.message, "p2c2r: this joint is not offloaded");
                ids.refused_joints.insert(entity);
                (None, ids.joints.remove_entity(entity))
            }
        };
        if let Some(old) = old
            && let Some(desc) = ids.joint_descs.remove(&old)
            && alive(ids, &desc)
        {
            changes.remove_joints.push(old);
        }
        let Some(id) = id else { continue };
        let desc = joint.desc(id, body, parent);
        ids.joint_descs.insert(id, desc.clone());
        changes.add_joints.push(desc);
    }
}

/// Gives new agents their id and initial state.
pub(crate) fn register_agents(
    mut commands: Commands,
    mut ids: ResMut<EntityIds>,
    added: Query<(Entity, &Transform, Has<Collider>), Added<OffloadedAgent>>,
) {
    for (entity, transform, has_body) in &added {
        if ids.agents.contains_entity(entity) {
            continue;
        }
        let (id, _) = ids.agents.assign(entity);
        let mut e = commands.entity(entity);
        e.insert(AgentState {
            id,
            tick: 0,
            status: AgentStatus::Moving,
            waypoints: Vec::new(),
            desired_velocity: Vec3::ZERO,
            position: transform.translation,
        });
        if !has_body {
            e.insert(PoseInterpolation::at(transform.translation, transform.rotation));
        }
    }
}

/// The bodies the Send stage reads and writes.
pub(crate) type BodyQuery<'w, 's> = Query<
    'w,
    's,
    (
        Entity,
        BodyParts,
        &'static mut PhysicsState,
        Option<&'static ExternalForce>,
        Option<&'static mut ExternalImpulse>,
        Option<Ref<'static, KinematicTarget>>,
        Option<&'static mut PoseInterpolation>,
        Option<(&'static OffloadedAgent, &'static AgentState)>,
        Option<&'static mut Velocity>,
        Has<crate::KinematicCharacterController>,
    ),
>;

/// Collects removals, forces, impulses, kinematic targets, commands and agents' steering
/// into [`TickChanges`].
pub(crate) fn collect_changes(
    mut ids: ResMut<EntityIds>,
    mut changes: ResMut<TickChanges>,
    mut names: ResMut<ShapeNames>,
    mut queries: ResMut<PhysicsQueries>,
    mut commands_in: MessageReader<PhysicsCommand>,
    mut bodies: BodyQuery,
    any_agent: Query<(), With<OffloadedAgent>>,
) {
    let ids = &mut *ids;
    let changes = &mut *changes;
    // Removals since the last tick.
    changes.remove.append(&mut ids.replaced_bodies);
    for entity in std::mem::take(&mut ids.removed_bodies) {
        if bodies.contains(entity) {
            continue; // removed and re-added in the same frame
        }
        // (A body that left the world's bounds was forgotten already, its shape not.)
        names.unregister(entity);
        queries.remove(entity);
        if let Some(id) = ids.bodies.remove_entity(entity) {
            changes.remove.push(id);
            ids.depart(id, entity);
        }
    }
    for entity in std::mem::take(&mut ids.removed_agents) {
        if any_agent.contains(entity) {
            continue;
        }
        ids.agents.remove_entity(entity);
        ids.agents_moving.remove(&entity);
    }

    // The characters' pushes, named by the bodies' ids as of this tick.
    for (entity, impulse) in std::mem::take(&mut changes.pushes) {
        if let Some(id) = ids.bodies.id(entity) {
            changes.impulses.push(ApplyImpulse { id, impulse: impulse.to_array(), torque_impulse: [0.0; 3] });
        }
    }

    // Bodies sent this tick carry their velocity already.
    let fresh: std::collections::HashSet<Entity> = changes.adds.iter().map(|(e, _)| *e).collect();
    for (entity, _, mut ps, force, impulse, target, _, _, velocity, _) in &mut bodies {
        // The game set the velocity (the plugin's own writes bypass change detection).
        if let Some(v) = velocity
            && v.is_changed()
            && !fresh.contains(&entity)
        {
            let (linvel, angvel) = (valid_velocity(v.linvel), valid_velocity(v.angvel));
            changes.set_velocity.push(SetVelocity { id: ps.id, linvel, angvel });
            ps.linvel = Vec3::from_array(linvel);
            ps.angvel = Vec3::from_array(angvel);
        }
        if let Some(f) = force
            && (f.force != Vec3::ZERO || f.torque != Vec3::ZERO)
        {
            changes.forces.push(ApplyForce { id: ps.id, force: f.force.to_array(), torque: f.torque.to_array() });
        }
        if let Some(mut i) = impulse
            && (i.impulse != Vec3::ZERO || i.torque_impulse != Vec3::ZERO)
        {
            changes.impulses.push(ApplyImpulse {
                id: ps.id,
                impulse: i.impulse.to_array(),
                torque_impulse: i.torque_impulse.to_array(),
            });
            *i = ExternalImpulse::default();
        }
        if let Some(t) = target
            && t.is_changed()
        {
            changes.targets.push(WireKinematicTarget {
                id: ps.id,
                position: valid_position(t.position),
                rotation: valid_rotation(t.rotation),
            });
        }
    }
    for cmd in commands_in.read() {
        apply_command(ids, changes, &mut bodies, &mut queries, cmd);
    }
    // Teleported bodies are seen by queries at once (from `Update` on).
    queries.update();
    steer_agents(ids, changes, &bodies);
}

fn apply_command(
    ids: &EntityIds,
    changes: &mut TickChanges,
    bodies: &mut BodyQuery,
    queries: &mut PhysicsQueries,
    cmd: &PhysicsCommand,
) {
    match *cmd {
        PhysicsCommand::Impulse { entity, impulse, torque_impulse } => {
            if let Some(id) = ids.bodies.id(entity) {
                changes.impulses.push(ApplyImpulse {
                    id,
                    impulse: impulse.to_array(),
                    torque_impulse: torque_impulse.to_array(),
                });
            }
        }
        PhysicsCommand::Force { entity, force, torque } => {
            if let Some(id) = ids.bodies.id(entity) {
                changes.forces.push(ApplyForce { id, force: force.to_array(), torque: torque.to_array() });
            }
        }
        PhysicsCommand::SetVelocity { entity, linvel, angvel } => {
            if let Some(id) = ids.bodies.id(entity) {
                let (linvel, angvel) =
                    (Vec3::from_array(valid_velocity(linvel)), Vec3::from_array(valid_velocity(angvel)));
                changes.set_velocity.push(SetVelocity { id, linvel: linvel.to_array(), angvel: angvel.to_array() });
                if let Ok((_, _, mut ps, ..)) = bodies.get_mut(entity) {
                    ps.linvel = linvel;
                    ps.angvel = angvel;
                }
            }
        }
        PhysicsCommand::WakeUp { entity } => changes.wake.extend(ids.bodies.id(entity)),
        PhysicsCommand::Sleep { entity } => changes.sleep.extend(ids.bodies.id(entity)),
        PhysicsCommand::Teleport { entity, position, rotation } => {
            if let Some(id) = ids.bodies.id(entity) {
                let position = Vec3::from_array(valid_position(position));
                let rotation = Quat::from_array(valid_rotation(rotation));
                changes.set_pose.push(SetPose { id, position: position.to_array(), rotation: rotation.to_array() });
                queries.set_pose(entity, position, rotation);
                if let Ok((_, parts, mut ps, _, _, _, interp, _, _, controller)) = bodies.get_mut(entity) {
                    let character = crate::character::is_character(controller, parts.rigid_body);
                    ps.position = position;
                    ps.rotation = rotation;
                    if let Some(mut interp) = interp {
                        *interp = PoseInterpolation::at(position, rotation);
                    }
                    if character {
                        // The character's target for this tick was set before this command
                        // and would drag it back during the step: the last target wins.
                        changes.targets.push(WireKinematicTarget {
                            id,
                            position: position.to_array(),
                            rotation: rotation.to_array(),
                        });
                    }
                }
            }
        }
    }
}

/// Agents that are bodies follow their desired velocity.
fn steer_agents(ids: &mut EntityIds, changes: &mut TickChanges, bodies: &BodyQuery) {
    for (entity, body, ps, _, _, _, _, agent, _, _) in bodies {
        let Some((_, st)) = agent else { continue };
        let v = st.desired_velocity;
        // Steer a dynamic agent while it moves, and stop it once when it arrives; after
        // that, collisions may push it around.
        let was_moving = ids.agents_moving.contains(&entity);
        let moving = st.tick > 0 && st.status == AgentStatus::Moving;
        if moving {
            ids.agents_moving.insert(entity);
        } else {
            ids.agents_moving.remove(&entity);
        }
        match body.body_type() {
            // Dynamic agents walk at the desired velocity and stay upright: their angular
            // velocity is zeroed each tick (the protocol has no rotation lock).
            BodyType::Dynamic if moving || was_moving => changes.set_velocity.push(SetVelocity {
                id: ps.id,
                linvel: valid_velocity(Vec3::new(v.x, ps.linvel.y, v.z)),
                angvel: [0.0; 3],
            }),
            // Kinematic agents are advanced by the plugin (like agents without a body)
            // and the peer moves the body to where the agent is.
            BodyType::Kinematic if st.tick > 0 => changes.targets.push(WireKinematicTarget {
                id: ps.id,
                position: valid_position(st.position),
                rotation: valid_rotation(ps.rotation),
            }),
            _ => {}
        }
    }
}
