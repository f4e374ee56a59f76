//! The Apply stage: results (from peers or the local fallback) written into
//! [`PhysicsState`] / [`AgentState`] in tick order, through a playout buffer sized from
//! the measured jitter of peer results ([`Playout`]).

use std::time::Duration;

use bevy::prelude::*;
use p2c2r_protocol::ai::{AgentResult, AgentStatus, AiNavigateResult};
use p2c2r_protocol::physics::{BodyState, PhysicsStepResult};

use crate::body::Velocity;
use crate::components::*;
use crate::events::Contacts;
use crate::ids::EntityIds;
use crate::messages::{AiStepped, BodyLeftWorld, PhysicsStepped, ResultSource};
use crate::offload::{OffloadMode, StreamKind};
use crate::plugin::Offload;
use crate::queries::PhysicsQueries;
use crate::stats::P2c2rStats;

/// Results accepted and not applied yet, and the playout that paces the physics ones
/// (plugin-internal).
#[derive(Resource, Default)]
pub(crate) struct Results {
    pub physics: Vec<(PhysicsStepResult, ResultSource, Option<Duration>)>,
    pub ai: Vec<(AiNavigateResult, ResultSource)>,
    pub playout: Playout,
    /// The latest physics tick applied (what the scene queries see, and the pushes
    /// characters sent for it and before are in it). `P2c2rStats` shows it; the plugin
    /// reads it here, never from the stats.
    pub last_applied_tick: Option<u64>,
}

/// The playout buffer's target depth is `ceil(JITTER_MULTIPLIER × jitter −
/// JITTER_TOLERANCE)` ticks, `jitter` being the mean deviation of the results' transit
/// in ticks ([`ArrivalJitter`]). 3 × the mean deviation covers about the whole spread of
/// arrivals (a uniform spread is 4 mean deviations wide, a two-point one 2), so a late
/// result rarely finds the buffer empty; simulated paths of 60 ± 15, 60 ± 30 and
/// 100 ± 40 ms at 60 Hz glitched least with 3 (2 starved on wide jitter, 4 kept adding
/// and removing a tick of latency).
pub(crate) const JITTER_MULTIPLIER: f64 = 3.0;

/// A quarter tick of estimated spread is ignored: the estimate decays geometrically and
/// never quite reaches zero, and a spread that small costs one late tick in many seconds,
/// less than a tick of latency on every result would.
pub(crate) const JITTER_TOLERANCE: f64 = 0.25;

/// The deepest playout target, in ticks (100 ms at 60 Hz): beyond it the latency a
/// buffer adds costs more than the stutter it saves, and a path that bad is better left
/// to the fallback timeout.
pub(crate) const MAX_PLAYOUT_TICKS: usize = 6;

/// Ticks in a row the queue must stay below its target (a result expected every time)
/// before one tick is held to deepen it: a jitter dip refills on its own within the
/// target (at most [`MAX_PLAYOUT_TICKS`] ticks), so only a lasting shortfall (the target
/// grew, a result was lost) is held for, and then one tick in 16 at most (motion slows
/// by a sixteenth while the buffer deepens; it never stops for more than a tick).
pub(crate) const HOLD_AFTER: u32 = 16;

/// Results over the target past which a backlog is cut at once (down to the target
/// plus [`BACKLOG_KEEP`]) rather than drained two per tick.
pub(crate) const BACKLOG: usize = 8;

/// What a cut backlog keeps above the target, drained two per tick.
pub(crate) const BACKLOG_KEEP: usize = 4;

/// The largest transit sampled, in ticks (a game paused for a while must not blow the
/// estimate up for minutes).
const MAX_TRANSIT_TICKS: u64 = 1024;

/// The jitter of physics results from peers, in ticks: the transit of a result is how
/// many ticks after its own it was accepted (the plugin's tick counter at arrival minus
/// the result's tick), and its jitter is the smoothed mean deviation of the transit
/// around its smoothed mean (the gains of RFC 6298's round-trip estimator: 1/8 for the
/// mean, 1/4 for the deviation). Counted in ticks as seen by the Receive stage, it holds
/// what the playout must absorb, network jitter and frame timing alike, and a steady
/// transit (a LAN, or a steady long path) measures zero.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ArrivalJitter {
    mean: Option<f64>,
    deviation: f64,
}

impl ArrivalJitter {
    /// A result for `result_tick` accepted at tick `now_tick`.
    pub fn sample(&mut self, now_tick: u64, result_tick: u64) {
        let transit = now_tick.saturating_sub(result_tick).min(MAX_TRANSIT_TICKS) as f64;
        match self.mean {
            None => self.mean = Some(transit),
            Some(mean) => {
                self.deviation = self.deviation * 0.75 + (transit - mean).abs() * 0.25;
                self.mean = Some(mean * 0.875 + transit * 0.125);
            }
        }
    }

    /// The jitter, in ticks (0 before two samples).
    pub fn ticks(&self) -> f64 {
        self.deviation
    }

    /// The playout target it calls for, in ticks (see [`JITTER_MULTIPLIER`]).
    pub fn target(&self) -> usize {
        playout_target(self.deviation)
    }
}

/// The playout target for a jitter of `jitter_ticks`: `ceil(3 × jitter − 1/4)`, within
/// `0..=MAX_PLAYOUT_TICKS`.
pub(crate) fn playout_target(jitter_ticks: f64) -> usize {
    let ticks = (JITTER_MULTIPLIER * jitter_ticks - JITTER_TOLERANCE).ceil();
    if ticks.is_nan() || ticks <= 0.0 { 0 } else { (ticks as usize).min(MAX_PLAYOUT_TICKS) }
}

/// The playout of physics results: how many of the queued results to apply at each tick,
/// so that results arriving unevenly (network jitter, frames that run several fixed ticks)
/// are shown one tick per tick. Pure: the Apply system feeds it the queue's length, the
/// target and whether a result is expected, and it keeps only counters.
///
/// The rule, for `queued` results waiting and a target of `target` ticks kept in reserve:
/// - `queued` is `target + 1` or `target + 2`: apply one (the band has a tick of slack, so
///   a queue that wobbles by one is not drained only to starve the next tick);
/// - above that, up to `target + BACKLOG`: apply two, draining the excess at one per tick;
/// - above that: apply all but `target + BACKLOG_KEEP` at once;
/// - at or below `target` (the reserve is being used): apply one, except that after
///   [`HOLD_AFTER`] such ticks in a row with a result expected, one tick is held (none
///   applied) to deepen the buffer;
/// - nothing queued: nothing (a starved tick, counted when a result was expected).
///
/// Results are still applied in tick order and never go back (the queue is sorted), and
/// a backlog always drains. Holding never delays the fallback: its timeout counts the
/// requests still unanswered, not the results waiting here.
#[derive(Clone, Debug, Default)]
pub(crate) struct Playout {
    /// The jitter of peer physics results.
    pub jitter: ArrivalJitter,
    /// Ticks in a row below target with a result expected.
    short_for: u32,
    /// Results have been applied since results became expected.
    flowing: bool,
    /// Ticks held to deepen the buffer.
    pub holds: u64,
    /// Ticks with a result expected and none to apply, once results flowed.
    pub starved: u64,
}

impl Playout {
    /// A physics result from a peer for `result_tick` was accepted at tick `now_tick`.
    pub fn arrived(&mut self, now_tick: u64, result_tick: u64) {
        self.jitter.sample(now_tick, result_tick);
    }

    /// How many of the `queued` physics results to apply this tick, given the `target`
    /// depth and whether a result is `expected` (peers step the world and have ticks in
    /// flight).
    pub fn count(&mut self, queued: usize, target: usize, expected: bool) -> usize {
        if !expected {
            self.short_for = 0;
            self.flowing = false;
        }
        if queued == 0 {
            if expected && self.flowing {
                self.starved += 1;
            }
            return 0;
        }
        let count = if queued <= target {
            if expected {
                self.short_for += 1;
                if self.short_for >= HOLD_AFTER {
                    self.short_for = 0;
                    self.holds += 1;
                    return 0;
                }
            }
            1
        } else {
            self.short_for = 0;
            match queued - target {
                1 | 2 => 1,
                over if over <= BACKLOG => 2,
                over => over - BACKLOG_KEEP,
            }
        };
        self.flowing |= expected;
        count
    }
}

pub(crate) fn shift_interpolation(mut q: Query<&mut PoseInterpolation>) {
    for mut p in &mut q {
        if p.previous != p.current {
            p.previous = p.current;
        }
    }
}

/// Takes the oldest `count` queued physics results (all when `None`), counts them and
/// writes their [`PhysicsStepped`]; returns the body states to write, in tick order.
pub(crate) fn take_physics_results(
    results: &mut Results,
    ids: &mut EntityIds,
    stats: &mut P2c2rStats,
    stepped: &mut MessageWriter<PhysicsStepped>,
    contacts: &mut Contacts,
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
                ids.depart(*id, entity);
            }
        }
        contacts.record(&result.events);
        if source.is_peer() {
            stats.physics_results_from_peers += 1;
        } else {
            stats.physics_results_local += 1;
        }
        stats.count_applied();
        stats.last_applied_tick = Some(result.tick);
        results.last_applied_tick = Some(result.tick);
        stepped.write(PhysicsStepped { tick: result.tick, source, bodies: result.bodies.len(), rtt });
    }
    updates
}

/// Reports the bodies a world removed because they left its bounds, and takes
/// their [`crate::Collider`] off them: the game decides whether to despawn them or give
/// them a collider again.
pub(crate) fn report_bodies_left_world(
    mut ids: ResMut<EntityIds>,
    mut left: MessageWriter<BodyLeftWorld>,
    mut queries: ResMut<PhysicsQueries>,
    mut commands: Commands,
) {
    for (entity, id, tick) in std::mem::take(&mut ids.left_world) {
        queries.remove(entity);
        left.write(BodyLeftWorld { entity, id, tick });
        if let Ok(mut e) = commands.get_entity(entity) {
            e.try_remove::<(crate::body::Collider, PhysicsState, PoseInterpolation)>();
        }
    }
}

pub(crate) fn write_state(
    ps: &mut PhysicsState,
    interp: Option<Mut<PoseInterpolation>>,
    velocity: Option<Mut<Velocity>>,
    s: &BodyState,
    tick: u64,
    character: bool,
) {
    if tick < ps.tick {
        return;
    }
    if character {
        // A character's pose is decided where the game runs (its controller); the world
        // has it where it was sent a round trip ago, and must not pull it back.
        let (position, rotation) = (ps.position, ps.rotation);
        ps.apply(s, tick);
        (ps.position, ps.rotation) = (position, rotation);
        return;
    }
    ps.apply(s, tick);
    if let Some(mut interp) = interp {
        interp.current = (ps.position, ps.rotation);
    }
    if let Some(mut velocity) = velocity
        && !velocity.is_changed()
    {
        // Not a change the game made: it must not be sent back as one. (A velocity the
        // game changed since is kept: the Send stage sends it.)
        *velocity.bypass_change_detection() = Velocity { linvel: ps.linvel, angvel: ps.angvel };
    }
}

/// What an applied state writes: the state, the drawn pose, the velocity, and whether the
/// body is a character (whose pose the controller decides).
type AppliedBody = (
    &'static mut PhysicsState,
    Option<&'static mut PoseInterpolation>,
    Option<&'static mut Velocity>,
    Has<crate::KinematicCharacterController>,
    Option<&'static crate::body::RigidBody>,
);

pub(crate) fn apply_physics(
    mut results: ResMut<Results>,
    mut ids: ResMut<EntityIds>,
    mut stats: ResMut<P2c2rStats>,
    offload: Res<Offload>,
    mut bodies: Query<AppliedBody>,
    mut stepped: MessageWriter<PhysicsStepped>,
    mut contacts: ResMut<Contacts>,
) {
    // Peers' results are paced by the measured jitter; local ones come one per tick.
    let offloaded = offload.controller.mode() == OffloadMode::Offloaded;
    let target = if offloaded { results.playout.jitter.target() } else { 0 };
    let expected = offloaded && offload.controller.in_flight(StreamKind::Physics) > 0;
    let queued = results.physics.len();
    let count = results.playout.count(queued, target, expected);
    let taken = take_physics_results(&mut results, &mut ids, &mut stats, &mut stepped, &mut contacts, Some(count));
    for (entity, s, tick) in taken {
        if let Ok((mut ps, interp, velocity, controller, body)) = bodies.get_mut(entity) {
            let character = crate::character::is_character(controller, body);
            write_state(&mut ps, interp, velocity, &s, tick, character);
        }
    }
    let playout = &results.playout;
    stats.playout.target_ticks = target;
    stats.playout.jitter_ticks = playout.jitter.ticks();
    stats.playout.queued = results.physics.len();
    stats.playout.holds = playout.holds;
    stats.playout.starved_ticks = playout.starved;
}

/// An agent, and its body if it has one.
type AgentParts = (
    &'static OffloadedAgent,
    &'static mut AgentState,
    Option<&'static mut PoseInterpolation>,
    Option<(&'static crate::body::Collider, Option<&'static crate::body::RigidBody>)>,
);

pub(crate) fn apply_ai(
    mut results: ResMut<Results>,
    ids: Res<EntityIds>,
    mut stats: ResMut<P2c2rStats>,
    time: Res<Time<Fixed>>,
    mut agents: Query<AgentParts>,
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
            Some((_, Some(crate::body::RigidBody::KinematicPositionBased))) => true,
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
    fn without_jitter_the_playout_applies_what_comes_and_drains_backlogs() {
        let mut p = Playout::default();
        for (queued, applied) in [(0, 0), (1, 1), (2, 1), (3, 2), (8, 2), (9, 5), (20, 16)] {
            assert_eq!(p.count(queued, 0, true), applied, "{queued} queued");
        }
        assert_eq!(p.holds, 0, "nothing to hold for with a target of 0");
    }

    #[test]
    fn the_target_follows_the_jitter_within_its_bounds() {
        assert_eq!(playout_target(0.0), 0);
        assert_eq!(playout_target(0.05), 0, "a trace of jitter is not worth a tick");
        assert_eq!(playout_target(0.5), 2);
        assert_eq!(playout_target(100.0), MAX_PLAYOUT_TICKS);
        assert_eq!(playout_target(f64::NAN), 0);
        assert_eq!(playout_target(f64::INFINITY), MAX_PLAYOUT_TICKS);
        // A steady transit (the same number of ticks every time) measures no jitter.
        let mut steady = ArrivalJitter::default();
        for tick in 0..200 {
            steady.sample(tick + 9, tick);
        }
        assert_eq!((steady.ticks(), steady.target()), (0.0, 0));
        // Transits of 3 to 5 ticks (60 ± 15 ms at 60 Hz): a buffer of a tick or two.
        let mut jittery = ArrivalJitter::default();
        for tick in 0..200u64 {
            jittery.sample(tick + 3 + (tick * 7 % 3), tick);
        }
        assert!((1..=3).contains(&jittery.target()), "{jittery:?}");
        // The jitter fades once the path is steady again.
        for tick in 200..400 {
            jittery.sample(tick + 4, tick);
        }
        assert_eq!(jittery.target(), 0, "{jittery:?}");
        // Absurd ticks (a result "from the future", a game paused for hours) are bounded.
        let mut odd = ArrivalJitter::default();
        odd.sample(0, u64::MAX);
        odd.sample(u64::MAX, 0);
        assert!(odd.ticks().is_finite() && odd.target() == MAX_PLAYOUT_TICKS, "{odd:?}");
    }

    /// Plays out `arrivals[i]` results arriving at tick `i` (then none, expecting none
    /// after `arrivals.len()`), with the target `target(jitter)` gives; returns how many
    /// were applied at each tick.
    fn play(arrivals: &[usize], target: impl Fn(&ArrivalJitter) -> usize) -> (Vec<usize>, Playout) {
        let mut p = Playout::default();
        let (mut queued, mut sent) = (0usize, 0u64);
        let mut applied = Vec::new();
        for tick in 0..arrivals.len() + 40 {
            let arriving = arrivals.get(tick).copied().unwrap_or(0);
            for _ in 0..arriving {
                p.arrived(tick as u64, sent);
                sent += 1;
            }
            queued += arriving;
            let n = p.count(queued, target(&p.jitter), tick < arrivals.len());
            assert!(n <= queued, "applies only what is queued");
            queued -= n;
            applied.push(n);
        }
        assert_eq!(queued, 0, "everything is applied in the end");
        (applied, p)
    }

    /// Arrivals of a path with jitter over TCP (late results come together with the ones
    /// behind them): each result is 3 to 5 ticks late, in order.
    fn jittery_arrivals(ticks: usize) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut arrivals = vec![0; ticks + 8];
        let mut last = 0;
        for tick in 0..ticks {
            last = (tick + rng.usize(3..=5)).max(last);
            arrivals[last] += 1;
        }
        arrivals.truncate(ticks);
        arrivals
    }

    #[test]
    fn a_jitter_sized_buffer_plays_jittery_arrivals_evenly() {
        let arrivals = jittery_arrivals(3000);
        let stalls = |applied: &[usize]| applied[20..2990].iter().filter(|n| **n != 1).count();
        let (unbuffered, _) = play(&arrivals, |_| 0);
        let (buffered, p) = play(&arrivals, ArrivalJitter::target);
        let (before, after) = (stalls(&unbuffered), stalls(&buffered));
        assert!(p.jitter.target() >= 1, "{:?}", p.jitter);
        assert!(after * 10 < before, "uneven ticks: {after} with the buffer, {before} without");
        assert!(p.holds <= 3000 / HOLD_AFTER as u64);
    }

    #[test]
    fn a_deeper_target_is_built_by_single_held_ticks_spaced_out() {
        let mut p = Playout::default();
        let mut queued = 0;
        let mut held_at = Vec::new();
        for tick in 0..200 {
            queued += 1; // one result per tick, on time
            let n = p.count(queued, 3, true);
            if n == 0 {
                held_at.push(tick);
            }
            queued -= n;
        }
        assert_eq!(held_at.len(), 3, "three holds build a reserve of 3: {held_at:?}");
        assert!(held_at.windows(2).all(|w| w[1] - w[0] >= HOLD_AFTER as usize), "{held_at:?}");
        assert_eq!(queued, 3);
        // Without a result expected (fallback, nothing in flight), nothing is held.
        let mut p = Playout::default();
        assert!((0..100).all(|_| p.count(1, 3, false) == 1));
        assert_eq!((p.holds, p.starved), (0, 0));
    }

    #[test]
    fn a_backlog_drains_into_the_band_and_starved_ticks_are_counted() {
        let mut p = Playout::default();
        let mut queued = 40;
        for _ in 0..30 {
            queued += 1;
            queued -= p.count(queued, 2, true);
        }
        assert!((2..=3).contains(&queued), "{queued}");
        assert_eq!(p.count(0, 2, true), 0);
        assert_eq!(p.starved, 1);
        assert_eq!(p.count(0, 2, false), 0);
        assert_eq!(p.starved, 1, "not counted when nothing is expected");
    }
}
