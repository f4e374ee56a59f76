//! Building the wire requests of one tick from what the ECS gathered: pure functions of
//! plain data, unit-tested without Bevy.

use bevy::prelude::Entity;
use p2c2r_protocol::ai::{AgentQuery, AiNavigateRequest, NavGrid};
use p2c2r_protocol::physics::{
    ApplyForce, ApplyImpulse, BodyDesc, BodyId, JointDesc, JointId, KinematicTarget, PhysicsStepRequest, SetPose,
    SetVelocity, Vec3,
};

/// What changed in the ECS since the last tick, gathered by the Send stage's first
/// systems (plugin-internal).
#[derive(bevy::prelude::Resource, Debug, Default)]
pub(crate) struct TickChanges {
    /// Bodies registered this tick (new, or re-created under a new id).
    pub adds: Vec<(Entity, BodyDesc)>,
    /// Body ids to remove from the world.
    pub remove: Vec<BodyId>,
    pub set_pose: Vec<SetPose>,
    pub set_velocity: Vec<SetVelocity>,
    pub forces: Vec<ApplyForce>,
    pub impulses: Vec<ApplyImpulse>,
    /// Impulses characters give the bodies they push, by entity: named by id only in
    /// `collect_changes`, after this tick's registrations (a body re-created this tick has
    /// a new id).
    pub pushes: Vec<(Entity, bevy::math::Vec3)>,
    pub targets: Vec<KinematicTarget>,
    /// Joints to create (new, changed, or whose body was re-created).
    pub add_joints: Vec<JointDesc>,
    /// Joints to remove (their bodies still in the world).
    pub remove_joints: Vec<JointId>,
    /// Bodies to wake up.
    pub wake: Vec<BodyId>,
    /// Bodies to put to sleep.
    pub sleep: Vec<BodyId>,
}

/// The world settings every physics request is built with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct WorldSettings {
    /// Gravity, sent with every snapshot.
    pub gravity: Vec3,
    /// Gravity changed since the last request (it goes with this one).
    pub gravity_changed: bool,
    /// Steps per tick.
    pub substeps: u32,
}

/// This tick's `physics_step` request. A snapshot carries every body the world holds
/// (`world`: the bodies registered before this tick, with their latest state) plus this
/// tick's new ones, sorted by id, every joint between them (`joints`: each as last sent),
/// and nothing to remove; otherwise the request carries only this tick's changes.
/// Kinematic targets are deduplicated (the last one of a body wins: a peer refuses a tick
/// that lists a body twice). Gravity goes with every snapshot, and with a delta when it
/// changed (`settings.gravity_changed`).
pub(crate) fn physics_request(
    tick: u64,
    dt: f32,
    settings: WorldSettings,
    snapshot: bool,
    changes: TickChanges,
    world: impl FnOnce() -> Vec<BodyDesc>,
    joints: impl FnOnce() -> Vec<JointDesc>,
) -> PhysicsStepRequest {
    let substeps = settings.substeps.max(1);
    let TickChanges {
        adds,
        remove,
        set_pose,
        set_velocity,
        forces,
        impulses,
        // Named by id in `collect_changes` already (into `impulses`).
        pushes: _,
        mut targets,
        add_joints,
        remove_joints,
        wake,
        sleep,
    } = changes;
    dedup_targets(&mut targets);
    let (add, remove, add_joints, remove_joints) = if snapshot {
        let mut add = world();
        add.extend(adds.into_iter().map(|(_, d)| d));
        add.sort_by_key(|d| d.id);
        let ids: std::collections::HashSet<BodyId> = add.iter().map(|d| d.id).collect();
        let mut joints = joints();
        joints.retain(|j| ids.contains(&j.body1) && j.body2.is_none_or(|b| ids.contains(&b)));
        joints.sort_by_key(|j| j.id);
        (add, Vec::new(), joints, Vec::new())
    } else {
        (adds.into_iter().map(|(_, d)| d).collect(), remove, add_joints, remove_joints)
    };
    let known = |ids: Vec<BodyId>| -> Vec<BodyId> {
        // A wake or sleep of a body that is not in this world (removed meanwhile) would
        // be refused with the whole tick.
        let mut ids = ids;
        ids.retain(|id| !remove.contains(id));
        ids
    };
    PhysicsStepRequest {
        tick,
        snapshot,
        gravity: (snapshot || settings.gravity_changed).then_some(settings.gravity),
        dt: dt / substeps as f32,
        steps: substeps,
        add,
        set_pose,
        set_velocity,
        forces,
        impulses,
        kinematic_targets: targets,
        wake: known(wake),
        sleep: known(sleep),
        add_joints,
        remove_joints,
        remove,
        ..Default::default()
    }
}

/// The probe the fallback sends to see whether a peer answers: an empty snapshot.
pub(crate) fn probe_request(tick: u64, dt: f32) -> PhysicsStepRequest {
    PhysicsStepRequest { tick, snapshot: true, dt, steps: 1, ..Default::default() }
}

/// This tick's `ai_navigate` request: every agent, sorted by id, and the grid when the
/// peer's AI session needs it.
pub(crate) fn ai_request(tick: u64, grid: Option<NavGrid>, mut agents: Vec<AgentQuery>) -> AiNavigateRequest {
    agents.sort_by_key(|q| q.id);
    AiNavigateRequest { tick, grid, agents }
}

/// Keeps only the last kinematic target of each body (in their order of appearance).
pub(crate) fn dedup_targets(targets: &mut Vec<KinematicTarget>) {
    let mut seen = std::collections::HashSet::with_capacity(targets.len());
    let mut kept: Vec<KinematicTarget> = targets.drain(..).rev().filter(|t| seen.insert(t.id)).collect();
    kept.reverse();
    *targets = kept;
}

#[cfg(test)]
mod tests {
    use p2c2r_protocol::physics::{BodyType, Shape};
    use p2c2r_sim::Budgets;
    use p2c2r_sim::physics::PhysicsWorld;

    use super::*;

    const SETTINGS: WorldSettings = WorldSettings { gravity: [0.0, -9.81, 0.0], gravity_changed: false, substeps: 2 };

    fn ball(id: BodyId, body_type: BodyType) -> BodyDesc {
        BodyDesc::new(id, Shape::Sphere { radius: 0.5 }, [id as f32 * 2.0, 1.0, 0.0]).with_body_type(body_type)
    }

    fn target(id: BodyId, x: f32) -> KinematicTarget {
        KinematicTarget { id, position: [x, 0.0, 0.0], rotation: [0.0, 0.0, 0.0, 1.0] }
    }

    #[test]
    fn a_snapshot_carries_the_whole_world_sorted_and_deltas_only_the_changes() {
        let fresh = Entity::from_raw_u32(9).unwrap();
        let changes =
            || TickChanges { adds: vec![(fresh, ball(2, BodyType::Dynamic))], remove: vec![7], ..Default::default() };
        let world = || vec![ball(3, BodyType::Dynamic), ball(1, BodyType::Fixed)];
        let joint = |id, body1, body2| JointDesc {
            id,
            body1,
            body2,
            kind: p2c2r_protocol::physics::JointKind::Spherical,
            anchor1: [0.0; 3],
            anchor2: [0.0; 3],
            contacts_enabled: false,
        };
        // Every joint between the snapshot's bodies (one to a body gone is left out).
        let joints = || vec![joint(5, 3, Some(1)), joint(4, 2, None), joint(6, 3, Some(7))];
        let snapshot = physics_request(5, 1.0 / 60.0, SETTINGS, true, changes(), world, joints);
        assert_eq!(snapshot.add.iter().map(|d| d.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(snapshot.add_joints.iter().map(|j| j.id).collect::<Vec<_>>(), [4, 5]);
        assert!(snapshot.remove.is_empty() && snapshot.snapshot);
        assert_eq!(snapshot.gravity, Some(SETTINGS.gravity));
        assert_eq!((snapshot.steps, snapshot.dt), (2, 1.0 / 120.0));
        let (no_bodies, no_joints) = (|| unreachable!("no snapshot"), || unreachable!("no snapshot"));
        let delta = physics_request(6, 1.0 / 60.0, SETTINGS, false, changes(), no_bodies, no_joints);
        assert_eq!(delta.add.iter().map(|d| d.id).collect::<Vec<_>>(), [2]);
        assert_eq!((delta.remove.clone(), delta.gravity, delta.snapshot), (vec![7], None, false));
        // Gravity changed while playing: it goes with the next delta.
        let changed = WorldSettings { gravity: [0.0, -1.6, 0.0], gravity_changed: true, ..SETTINGS };
        let delta = physics_request(7, 1.0 / 60.0, changed, false, TickChanges::default(), Vec::new, Vec::new);
        assert_eq!(delta.gravity, Some([0.0, -1.6, 0.0]));
    }

    #[test]
    fn a_body_gets_one_kinematic_target_and_the_last_wins() {
        // As gathered: changed `KinematicTarget`s first, then agents.
        let targets = vec![target(3, 1.0), target(1, 1.0), target(2, 1.0), target(3, 2.0), target(1, 2.0)];
        let changes = TickChanges { targets, ..Default::default() };
        let world = || [1, 2, 3].map(|id| ball(id, BodyType::Kinematic)).to_vec();
        let request = physics_request(1, 1.0 / 60.0, SETTINGS, true, changes, world, Vec::new);
        let kept: Vec<(BodyId, f32)> = request.kinematic_targets.iter().map(|t| (t.id, t.position[0])).collect();
        assert_eq!(kept, [(2, 1.0), (3, 2.0), (1, 2.0)]);
        // And the engine accepts it, with a peer's budgets.
        let result = PhysicsWorld::new().step_limited(&request, &Budgets::default());
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn ai_requests_list_agents_by_id() {
        let q = |id| AgentQuery { id, position: [0.0; 3], goal: [1.0, 0.0, 0.0], speed: 1.0, radius: 0.3 };
        let request = ai_request(4, None, vec![q(3), q(1), q(2)]);
        assert_eq!(request.agents.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!((request.tick, request.grid), (4, None));
        let probe = probe_request(9, 0.5);
        assert!(probe.snapshot && probe.add.is_empty() && probe.steps == 1);
    }
}
