//! The game itself, the same with or without a window: the level's bodies and NPCs, balls
//! fired into them, NPCs walking from target to target, and the numbers the HUD and the
//! headless report show. Everything that moves is an offloaded body or agent
//! (see [`crate::offload`]): its `Transform` is written by the plugin from peer results
//! (or from local fallback), never by this module.

use bevy::prelude::*;

use crate::level::{BodyShape, Level, StaticBox, StaticKind};
use crate::offload;

/// Speed of a fired ball, m/s.
pub const BALL_SPEED: f32 = 32.0;
/// Radius of a fired ball, m.
pub const BALL_RADIUS: f32 = 0.28;
/// At most this many fired balls exist; firing another despawns the oldest.
pub const MAX_BALLS: usize = 40;
/// Seconds between two shots of `--autofire`.
pub const AUTOFIRE_PERIOD: f32 = 0.5;
/// An NPC within this distance (XZ) of its target has arrived and picks the next one.
pub const ARRIVE_DISTANCE: f32 = 0.9;

/// A moving body below this height has fallen out of the arena and is despawned.
pub const KILL_Y: f32 = -20.0;
/// A moving body farther than this (XZ) outside the level's static geometry is despawned.
pub const KILL_MARGIN: f32 = 60.0;

/// What a drawn thing is; the renderer picks its look from this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Ground, wall or ramp.
    Static(StaticKind),
    /// A box or sphere of a tower, pyramid or pile.
    Stacked,
    /// A ball the player (or autofire) fired.
    Ball,
    /// An NPC.
    Npc,
    /// The player's character.
    Player,
}

/// Something the game spawned, with what the renderer needs to draw it.
#[derive(Component, Clone, Copy, Debug)]
pub struct Drawn {
    /// What it is.
    pub role: Role,
    /// Its collision shape, which is also its mesh.
    pub shape: BodyShape,
    /// Linear sRGB colour.
    pub color: [f32; 3],
}

/// Where a dynamic body started, to measure how far peer results moved it.
#[derive(Component, Clone, Copy, Debug)]
pub struct StartPosition(pub Vec3);

/// A fired ball; the number orders them so the oldest goes first.
#[derive(Component, Clone, Copy, Debug)]
pub struct Ball(pub u64);

/// An NPC: the index of the level target it walks to, and how far it has walked.
#[derive(Component, Clone, Debug)]
pub struct Npc {
    /// Index into the level's `agents.targets`.
    pub target: usize,
    /// Metres walked (XZ) since spawn.
    pub walked: f32,
    /// Targets reached since spawn.
    pub arrivals: u32,
    /// Position last frame.
    pub last: Vec3,
    /// Walking towards the player (see [`crate::player`]), not on its rounds.
    pub chasing: bool,
}

/// Ask the game to fire a ball.
#[derive(Message, Clone, Copy, Debug)]
pub struct FireBall {
    /// Where the ball appears.
    pub origin: Vec3,
    /// Its initial velocity.
    pub velocity: Vec3,
}

/// The demo's settings that are not the plugin's.
#[derive(Resource, Clone, Debug, Default)]
pub struct DemoSettings {
    /// Fire at the stacks on a timer.
    pub autofire: bool,
    /// Exit after this many frames.
    pub frames: Option<u64>,
    /// Running without a window.
    pub headless: bool,
}

/// Counters the game keeps for the HUD and the report.
#[derive(Resource, Clone, Debug, Default)]
pub struct DemoCounters {
    /// Frames run.
    pub frames: u64,
    /// Balls fired.
    pub balls_fired: u64,
}

/// The game systems. Needs a [`Level`] resource and the offload plugin (see
/// [`crate::offload::add_plugin`]); draws nothing (see [`crate::render::RenderPlugin`]).
pub struct GamePlugin;

impl Plugin for GamePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<DemoSettings>()
            .init_resource::<DemoCounters>()
            .add_message::<FireBall>()
            .add_systems(Startup, spawn_level)
            .add_systems(Update, (count_frames, autofire, fire_balls, npc_walk, despawn_lost_bodies).chain())
            .add_systems(FixedUpdate, offload::keep_npcs_upright);
    }
}

fn spawn_level(mut commands: Commands, level: Res<Level>) {
    for s in &level.r#static {
        spawn_static(&mut commands, s);
    }
    for stack in &level.stacks {
        for (position, shape) in stack.bodies() {
            commands.spawn((
                Name::new(stack.name.clone()),
                Drawn { role: Role::Stacked, shape, color: stack.color },
                StartPosition(position),
                Transform::from_translation(position),
                offload::dynamic_body(shape, Vec3::ZERO),
            ));
        }
    }
    let a = &level.agents;
    let half_height = (a.height / 2.0 - a.radius).max(0.05);
    for (i, [x, z]) in a.spawns.iter().enumerate() {
        let position = Vec3::new(*x, a.height / 2.0 + 0.02, *z);
        let target = i % a.targets.len();
        commands.spawn((
            Name::new(format!("npc {i}")),
            Drawn { role: Role::Npc, shape: BodyShape::Capsule(a.radius, half_height), color: a.color },
            StartPosition(position),
            Npc { target, walked: 0.0, arrivals: 0, last: position, chasing: false },
            Transform::from_translation(position),
            offload::agent(a.radius, half_height, target_point(&level, target), a.speed),
        ));
    }
}

fn spawn_static(commands: &mut Commands, s: &StaticBox) {
    let shape = BodyShape::Box(Vec3::from(s.half_extents));
    commands.spawn((
        Name::new(s.name.clone()),
        Drawn { role: Role::Static(s.kind), shape, color: s.color },
        s.transform(),
        offload::fixed_body(shape),
    ));
}

/// The world point of level target `i`.
pub fn target_point(level: &Level, i: usize) -> Vec3 {
    let [x, z] = level.agents.targets[i % level.agents.targets.len()];
    Vec3::new(x, 0.0, z)
}

fn count_frames(mut counters: ResMut<DemoCounters>) {
    counters.frames += 1;
}

fn autofire(
    settings: Res<DemoSettings>,
    level: Res<Level>,
    time: Res<Time>,
    mut timer: Local<f32>,
    mut shot: Local<u32>,
    mut fire: MessageWriter<FireBall>,
) {
    if !settings.autofire || level.stacks.is_empty() {
        return;
    }
    *timer += time.delta_secs();
    if *timer < AUTOFIRE_PERIOD {
        return;
    }
    *timer = 0.0;
    let stack = &level.stacks[*shot as usize % level.stacks.len()];
    let angle = *shot as f32 * 2.4;
    *shot += 1;
    let target = Vec3::new(stack.base[0], 1.0, stack.base[1]);
    let origin = target + Vec3::new(angle.cos() * 9.0, 3.5, angle.sin() * 9.0);
    fire.write(FireBall { origin, velocity: aim(origin, target, BALL_SPEED, level.gravity[1]) });
}

/// The velocity that sends a ball fired from `from` at `speed` through `to` (gravity `g`,
/// negative), compensating the drop over the flight time of a straight shot.
pub fn aim(from: Vec3, to: Vec3, speed: f32, g: f32) -> Vec3 {
    let d = to - from;
    let t = d.length() / speed;
    let v = d / t.max(1e-3);
    v - Vec3::Y * 0.5 * g * t
}

fn fire_balls(
    mut commands: Commands,
    mut fire: MessageReader<FireBall>,
    mut counters: ResMut<DemoCounters>,
    balls: Query<(Entity, &Ball)>,
) {
    let mut live: Vec<(u64, Entity)> = balls.iter().map(|(e, b)| (b.0, e)).collect();
    live.sort_unstable();
    let mut live = std::collections::VecDeque::from(live);
    for shot in fire.read() {
        if !(shot.origin.is_finite() && shot.velocity.is_finite()) {
            continue;
        }
        while live.len() >= MAX_BALLS {
            if let Some((_, e)) = live.pop_front() {
                commands.entity(e).despawn();
            }
        }
        counters.balls_fired += 1;
        let n = counters.balls_fired;
        let shape = BodyShape::Sphere(BALL_RADIUS);
        let e = commands
            .spawn((
                Name::new(format!("ball {n}")),
                Ball(n),
                Drawn { role: Role::Ball, shape, color: [0.95, 0.35, 0.1] },
                StartPosition(shot.origin),
                Transform::from_translation(shot.origin),
                offload::ball(shape, shot.velocity),
            ))
            .id();
        live.push_back((n, e));
    }
}

fn npc_walk(level: Res<Level>, mut npcs: Query<(&Transform, &mut Npc, offload::AgentGoal)>) {
    for (transform, mut npc, mut goal) in &mut npcs {
        let here = transform.translation;
        let step = (here - npc.last).xz().length();
        // Ignore teleports (a resync after failover) when adding up the distance walked.
        if step < 2.0 {
            npc.walked += step;
        }
        npc.last = here;
        if npc.chasing {
            continue;
        }
        let target = target_point(&level, npc.target);
        if (here - target).xz().length() < ARRIVE_DISTANCE {
            npc.target = (npc.target + 1) % level.agents.targets.len();
            npc.arrivals += 1;
            offload::set_goal(&mut goal, target_point(&level, npc.target));
        }
    }
}

/// The XZ rectangle `(min, max)` outside which a moving body is lost: the level's
/// static geometry grown by [`KILL_MARGIN`].
pub fn arena_bounds(level: &Level) -> (Vec2, Vec2) {
    let (mut min, mut max) = (Vec2::ZERO, Vec2::ZERO);
    for s in &level.r#static {
        let (lo, hi) = s.footprint();
        (min, max) = (min.min(lo), max.max(hi));
    }
    (min - Vec2::splat(KILL_MARGIN), max + Vec2::splat(KILL_MARGIN))
}

/// Whether a moving body at `p` has left the arena for good: below [`KILL_Y`], outside
/// `bounds` on x–z, or not a finite position at all.
pub fn is_lost(p: Vec3, (min, max): (Vec2, Vec2)) -> bool {
    let xz = p.xz();
    !p.is_finite() || p.y < KILL_Y || xz.cmplt(min).any() || xz.cmpgt(max).any()
}

/// Despawns balls, stack bodies and NPCs that fell out of the arena (a ball shot over a
/// wall falls forever otherwise, and its ever-growing position and speed end up in every
/// snapshot). Static geometry never moves and is never despawned.
fn despawn_lost_bodies(mut commands: Commands, level: Res<Level>, bodies: Query<(Entity, &Transform, &Drawn)>) {
    let bounds = arena_bounds(&level);
    for (entity, transform, drawn) in &bodies {
        if !matches!(drawn.role, Role::Static(_)) && is_lost(transform.translation, bounds) {
            commands.entity(entity).despawn();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::level::{StaticKind, assets_dir};

    #[test]
    fn bodies_out_of_the_arena_are_lost() {
        let level = Level::load(&assets_dir().join(crate::level::DEFAULT_LEVEL)).expect("the shipped level loads");
        let bounds = arena_bounds(&level);
        assert!(!is_lost(Vec3::new(0.0, 1.0, 0.0), bounds));
        assert!(!is_lost(Vec3::new(0.0, KILL_Y + 1.0, 0.0), bounds));
        assert!(is_lost(Vec3::new(0.0, KILL_Y - 1.0, 0.0), bounds));
        assert!(is_lost(Vec3::new(bounds.1.x + 1.0, 1.0, 0.0), bounds));
        assert!(is_lost(Vec3::new(0.0, 1.0, bounds.0.y - 1.0), bounds));
        assert!(is_lost(Vec3::new(f32::NAN, 1.0, 0.0), bounds));
        // Every stack body and NPC of the shipped level starts inside.
        for stack in &level.stacks {
            for (p, _) in stack.bodies() {
                assert!(!is_lost(p, bounds), "{p}");
            }
        }
    }

    #[test]
    fn fallen_bodies_are_despawned_and_static_ones_kept() {
        let level = Level::load(&assets_dir().join(crate::level::DEFAULT_LEVEL)).expect("the shipped level loads");
        let mut app = App::new();
        app.insert_resource(level).add_systems(Update, despawn_lost_bodies);
        let shape = BodyShape::Sphere(BALL_RADIUS);
        let ball = |y: f32| (Drawn { role: Role::Ball, shape, color: [1.0; 3] }, Transform::from_xyz(0.0, y, 0.0));
        let fallen = app.world_mut().spawn(ball(-25.0)).id();
        let flying = app.world_mut().spawn(ball(12.0)).id();
        let far = app
            .world_mut()
            .spawn((Drawn { role: Role::Npc, shape, color: [1.0; 3] }, Transform::from_xyz(1.0e4, 1.0, 0.0)))
            .id();
        let deep_ground = app
            .world_mut()
            .spawn((
                Drawn { role: Role::Static(StaticKind::Ground), shape, color: [1.0; 3] },
                Transform::from_xyz(0.0, -100.0, 0.0),
            ))
            .id();
        app.update();
        assert!(app.world().get_entity(fallen).is_err(), "a ball below the kill plane is despawned");
        assert!(app.world().get_entity(far).is_err(), "a body far outside the level is despawned");
        assert!(app.world().get_entity(flying).is_ok(), "a ball in flight is kept");
        assert!(app.world().get_entity(deep_ground).is_ok(), "static geometry is kept");
    }

    #[test]
    fn aimed_shots_pass_through_the_target() {
        let (from, to, g) = (Vec3::new(0.0, 20.0, 30.0), Vec3::new(1.0, 1.0, -2.0), -9.81);
        let v = aim(from, to, BALL_SPEED, g);
        let t = (to - from).length() / BALL_SPEED;
        let at = from + v * t + 0.5 * Vec3::Y * g * t * t;
        assert!(at.distance(to) < 1e-3, "{at} != {to}");
    }
}
