//! The Send stage's first half: gathering this tick's changes from the ECS into
//! [`TickChanges`] (new and removed bodies and agents, forces, impulses, kinematic
//! targets, [`PhysicsCommand`]s, agents' steering).

use bevy::prelude::*;
use p2c2r_protocol::ai::AgentStatus;
use p2c2r_protocol::physics::{
    ApplyForce, ApplyImpulse, BodyType, KinematicTarget as WireKinematicTarget, SetPose, SetVelocity,
};

use crate::build::TickChanges;
use crate::components::*;
use crate::ids::EntityIds;
use crate::messages::PhysicsCommand;

pub(crate) fn on_body_removed(remove: On<Remove, OffloadedBody>, mut ids: ResMut<EntityIds>, mut commands: Commands) {
    ids.removed_bodies.push(remove.entity);
    commands.entity(remove.entity).try_remove::<(PhysicsState, PoseInterpolation)>();
}

pub(crate) fn on_agent_removed(
    remove: On<Remove, OffloadedAgent>,
    mut ids: ResMut<EntityIds>,
    bodies: Query<(), With<OffloadedBody>>,
    mut commands: Commands,
) {
    ids.removed_agents.push(remove.entity);
    let mut e = commands.entity(remove.entity);
    e.try_remove::<AgentState>();
    if !bodies.contains(remove.entity) {
        e.try_remove::<PoseInterpolation>();
    }
}

/// Gives new (and changed) bodies their id and initial state.
pub(crate) fn register_bodies(
    mut commands: Commands,
    mut ids: ResMut<EntityIds>,
    mut changes: ResMut<TickChanges>,
    added: Query<(Entity, &OffloadedBody, &Transform, Option<&PhysicsState>), Changed<OffloadedBody>>,
) {
    for (entity, body, transform, existing) in &added {
        // A changed body is re-created under a new id with its latest state.
        let (id, old) = ids.bodies.assign(entity);
        if let Some(old) = old {
            ids.replaced_bodies.push(old);
        }
        let ps = match existing {
            Some(ps) => PhysicsState { id, ..*ps },
            None => PhysicsState {
                id,
                tick: 0,
                position: transform.translation,
                rotation: transform.rotation.normalize(),
                linvel: body.initial_linvel,
                angvel: body.initial_angvel,
                sleeping: false,
            },
        };
        changes.adds.push((entity, body.desc(id, &ps)));
        let mut e = commands.entity(entity);
        e.insert(ps);
        if body.body_type != BodyType::Fixed {
            e.insert(PoseInterpolation::at(ps.position, ps.rotation));
        } else {
            e.remove::<PoseInterpolation>();
        }
    }
}

/// Gives new agents their id and initial state.
pub(crate) fn register_agents(
    mut commands: Commands,
    mut ids: ResMut<EntityIds>,
    added: Query<(Entity, &Transform, Has<OffloadedBody>), Added<OffloadedAgent>>,
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
        &'static OffloadedBody,
        &'static mut PhysicsState,
        Option<&'static ExternalForce>,
        Option<&'static mut ExternalImpulse>,
        Option<Ref<'static, KinematicTarget>>,
        Option<&'static mut PoseInterpolation>,
        Option<(&'static OffloadedAgent, &'static AgentState)>,
    ),
>;

/// Collects removals, forces, impulses, kinematic targets, commands and agents' steering
/// into [`TickChanges`].
pub(crate) fn collect_changes(
    mut ids: ResMut<EntityIds>,
    mut changes: ResMut<TickChanges>,
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
        if let Some(id) = ids.bodies.remove_entity(entity) {
            changes.remove.push(id);
        }
    }
    for entity in std::mem::take(&mut ids.removed_agents) {
        if any_agent.contains(entity) {
            continue;
        }
        ids.agents.remove_entity(entity);
        ids.agents_moving.remove(&entity);
    }

    for (_, _, ps, force, impulse, target, _, _) in &mut bodies {
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
        apply_command(ids, changes, &mut bodies, cmd);
    }
    steer_agents(ids, changes, &bodies);
}

fn apply_command(ids: &EntityIds, changes: &mut TickChanges, bodies: &mut BodyQuery, cmd: &PhysicsCommand) {
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
        PhysicsCommand::Teleport { entity, position, rotation } => {
            if let Some(id) = ids.bodies.id(entity) {
                let position = Vec3::from_array(valid_position(position));
                let rotation = Quat::from_array(valid_rotation(rotation));
                changes.set_pose.push(SetPose { id, position: position.to_array(), rotation: rotation.to_array() });
                if let Ok((_, _, mut ps, _, _, _, interp, _)) = bodies.get_mut(entity) {
                    ps.position = position;
                    ps.rotation = rotation;
                    if let Some(mut interp) = interp {
                        *interp = PoseInterpolation::at(position, rotation);
                    }
                }
            }
        }
    }
}

/// Agents that are bodies follow their desired velocity.
fn steer_agents(ids: &mut EntityIds, changes: &mut TickChanges, bodies: &BodyQuery) {
    for (entity, body, ps, _, _, _, _, agent) in bodies {
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
        match body.body_type {
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
