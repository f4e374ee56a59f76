//! The Apply stage: results (from peers or the local fallback) written into
//! [`PhysicsState`] / [`AgentState`] in tick order, with a playout that smooths bursts.

use std::time::Duration;

use bevy::prelude::*;
use p2c2r_protocol::ai::{AgentResult, AgentStatus, AiNavigateResult};
use p2c2r_protocol::physics::{BodyState, BodyType, PhysicsStepResult};

use crate::components::*;
use crate::ids::EntityIds;
use crate::messages::{AiStepped, BodyLeftWorld, PhysicsStepped, ResultSource};
use crate::stats::P2c2rStats;

/// Results accepted and not applied yet (plugin-internal).
#[derive(Resource, Default)]
pub(crate) struct Results {
    pub physics: Vec<(PhysicsStepResult, ResultSource, Option<Duration>)>,
    pub ai: Vec<(AiNavigateResult, ResultSource)>,
}

pub(crate) fn shift_interpolation(mut q: Query<&mut PoseInterpolation>) {
    for mut p in &mut q {
        if p.previous != p.current {
            p.previous = p.current;
        }
    }
}

/// How many queued physics results to apply this tick. Results that arrive in bursts
/// (network jitter) are played out one per tick, catching up at double speed, so motion
/// stays even; a long backlog is drained at once.
pub(crate) fn playout_count(queued: usize) -> usize {
    match queued {
        0 | 1 => queued,
        2..=8 => 2,
        _ => queued - 4,
    }
}

/// Takes the oldest `count` queued physics results (all when `None`), counts them and
/// writes their [`PhysicsStepped`]; returns the body states to write, in tick order.
pub(crate) fn take_physics_results(
    results: &mut Results,
    ids: &mut EntityIds,
    stats: &mut P2c2rStats,
    stepped: &mut MessageWriter<PhysicsStepped>,
    count: Option<usize>,
) -> Vec<(Entity, BodyState, u64)> {
    let queue = &mut results.physics;
    queue.sort_by_key(|(r, _, _)| r.tick);
    let n = count.unwrap_or(queue.len()).min(queue.len());
    let taken: Vec<_> = queue.drain(..n).collect();
    let mut updates = Vec::new();
    for (result, source, rtt) in taken {
        for s in &result.bodies {
            if let Some(entity) = ids.bodies.entity(s.id) {
                updates.push((entity, *s, result.tick));
            }
        }
        // The world dropped these (they left its bounds): stop simulating them, so no
        // later request names them and no snapshot carries them.
        for id in &result.removed {
            if let Some(entity) = ids.bodies.remove_id(*id) {
                ids.left_world.push((entity, *id, result.tick));
            }
        }
        if source.is_peer() {
            stats.physics_results_from_peers += 1;
        } else {
            stats.physics_results_local += 1;
        }
        stats.count_applied();
        stats.last_applied_tick = Some(result.tick);
        stepped.write(PhysicsStepped { tick: result.tick, source, bodies: result.bodies.len(), rtt });
    }
    updates
}

/// Reports the bodies a world removed because they left its bounds, and takes
/// [`OffloadedBody`] off them: the game decides whether to despawn or re-add them.
pub(crate) fn report_bodies_left_world(
    mut ids: ResMut<EntityIds>,
    mut left: MessageWriter<BodyLeftWorld>,
    mut commands: Commands,
) {
    for (entity, id, tick) in std::mem::take(&mut ids.left_world) {
        left.write(BodyLeftWorld { entity, id, tick });
        if let Ok(mut e) = commands.get_entity(entity) {
            e.try_remove::<(OffloadedBody, PhysicsState, PoseInterpolation)>();
        }
    }
}

pub(crate) fn write_state(ps: &mut PhysicsState, interp: Option<Mut<PoseInterpolation>>, s: &BodyState, tick: u64) {
    if tick < ps.tick {
        return;
    }
    ps.apply(s, tick);
    if let Some(mut interp) = interp {
        interp.current = (ps.position, ps.rotation);
    }
}

pub(crate) fn apply_physics(
    mut results: ResMut<Results>,
    mut ids: ResMut<EntityIds>,
    mut stats: ResMut<P2c2rStats>,
    mut bodies: Query<(&mut PhysicsState, Option<&mut PoseInterpolation>)>,
    mut stepped: MessageWriter<PhysicsStepped>,
) {
    let count = playout_count(results.physics.len());
    for (entity, s, tick) in take_physics_results(&mut results, &mut ids, &mut stats, &mut stepped, Some(count)) {
        if let Ok((mut ps, interp)) = bodies.get_mut(entity) {
            write_state(&mut ps, interp, &s, tick);
        }
    }
}

pub(crate) fn apply_ai(
    mut results: ResMut<Results>,
    ids: Res<EntityIds>,
    mut stats: ResMut<P2c2rStats>,
    time: Res<Time<Fixed>>,
    mut agents: Query<(&OffloadedAgent, &mut AgentState, Option<&mut PoseInterpolation>, Option<&OffloadedBody>)>,
    mut stepped: MessageWriter<AiStepped>,
) {
    let mut queue = std::mem::take(&mut results.ai);
    queue.sort_by_key(|(r, _)| r.tick);
    for (result, source) in queue {
        for a in &result.agents {
            let Some(entity) = ids.agents.entity(a.id) else { continue };
            let Ok((_, mut st, _, _)) = agents.get_mut(entity) else { continue };
            apply_agent(&mut st, a, result.tick);
        }
        if source.is_peer() {
            stats.ai_results_from_peers += 1;
        } else {
            stats.ai_results_local += 1;
        }
        stepped.write(AiStepped { tick: result.tick, source, agents: result.agents.len() });
    }
    // Agents without a body (and kinematic ones) are moved here, along their desired
    // velocity; dynamic bodies get it as their velocity in the Send stage.
    let dt = time.timestep().as_secs_f32();
    for (agent, mut st, interp, body) in &mut agents {
        if st.status != AgentStatus::Moving {
            continue;
        }
        let kinematic = match body {
            None => false,
            Some(b) if b.body_type == BodyType::Kinematic => true,
            Some(_) => continue,
        };
        let mut v = st.desired_velocity;
        v.y = 0.0;
        let to_goal = Vec3::new(agent.goal.x - st.position.x, 0.0, agent.goal.z - st.position.z);
        let step = v * dt;
        if to_goal.length() <= step.length() && to_goal.length() < agent.radius.max(0.05) {
            st.position.x = agent.goal.x;
            st.position.z = agent.goal.z;
        } else {
            st.position += step;
        }
        if let Some(mut interp) = interp
            && !kinematic
        {
            interp.current.0 = st.position;
        }
    }
}

fn apply_agent(st: &mut AgentState, a: &AgentResult, tick: u64) {
    st.tick = tick;
    st.status = a.status;
    st.waypoints = a.waypoints.iter().map(|w| Vec3::from_array(*w)).collect();
    st.desired_velocity =
        if a.status == AgentStatus::Moving { Vec3::from_array(a.desired_velocity) } else { Vec3::ZERO };
    if !st.desired_velocity.is_finite() {
        st.desired_velocity = Vec3::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playout_smooths_bursts_and_drains_backlogs() {
        assert_eq!(playout_count(0), 0);
        assert_eq!(playout_count(1), 1);
        assert_eq!(playout_count(3), 2);
        assert_eq!(playout_count(8), 2);
        assert_eq!(playout_count(20), 16);
    }
}
