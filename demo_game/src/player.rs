//! The player: a character walking with `bevy_p2c2r`'s [`KinematicCharacterController`]
//! on a small course in the arena (crates to push, a door on a spring-loaded hinge,
//! three platforms to jump up), aiming by ray cast with a hit marker, and NPCs that
//! notice it (line of sight by ray cast) and walk towards it.
//!
//! Input is a [`PlayerInput`] resource: the window's keys and mouse fill it
//! ([`crate::render`]), or, headless and with `--autoplay`, the [`Autopilot`], which walks
//! the course on its own (the smoke and screenshot tests watch it play). The character
//! moves in the game's own fixed tick, whatever the round trip to the peers; the crates,
//! the door and the NPCs are the world's and react a round trip later.

use bevy::prelude::*;
use bevy_p2c2r::prelude::*;
use serde::{Deserialize, Serialize};

use crate::game::{BALL_SPEED, Drawn, FireBall, Npc, Role, StartPosition};
use crate::level::{BodyShape, Level, StaticKind};
use crate::offload;

/// Walking speed, m/s.
pub const WALK_SPEED: f32 = 4.0;
/// Take-off speed of a jump, m/s (about 1.5 m high).
pub const JUMP_SPEED: f32 = 5.5;
/// The capsule: half height of its cylinder and radius, m.
pub const CAPSULE: (f32, f32) = (0.5, 0.35);
/// How far an NPC sees, m.
pub const SIGHT: f32 = 14.0;
/// Seconds an NPC keeps chasing without seeing the player, and then ignores it.
pub const CHASE_MEMORY: f32 = 2.0;
/// Seconds of chasing after which an NPC goes back to its rounds for a while.
pub const CHASE_LIMIT: f32 = 10.0;
/// Farthest the aim looks, m.
pub const AIM_RANGE: f32 = 40.0;

/// Where the course is, in the level file (`"player": {...}`); a level without it has no
/// player.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PlayerDef {
    /// Where the player starts, (x, z).
    pub start: [f32; 2],
    /// The crates, (x, z) of each.
    pub crates: Vec<[f32; 2]>,
    /// The door's hinge post, (x, z); the door swings from it towards +x.
    pub door: [f32; 2],
    /// The platforms, lowest first, (x, z, height of the top).
    pub platforms: Vec<[f32; 3]>,
    /// The autopilot's route: (x, z, jump) points.
    pub route: Vec<[f32; 3]>,
}

/// The player's character.
#[derive(Component, Clone, Debug, Default)]
pub struct Player {
    /// Which way it faces (radians about y; 0 faces −z).
    pub heading: f32,
    /// Its vertical speed, m/s.
    pub vertical_speed: f32,
}

/// A crate of the course.
#[derive(Component, Clone, Copy, Debug)]
pub struct Crate;

/// The course's door.
#[derive(Component, Clone, Copy, Debug)]
pub struct Door;

/// The aim's hit marker.
#[derive(Component, Clone, Copy, Debug)]
pub struct AimMarker;

/// What the player wants this frame.
#[derive(Resource, Clone, Copy, Debug, Default)]
pub struct PlayerInput {
    /// Walk direction in the world's x–z plane (length at most 1).
    pub walk: Vec2,
    /// Jump at the next tick that finds the character on the ground.
    pub jump: bool,
    /// Where the aim ray starts and where it points.
    pub aim: Option<(Vec3, Vec3)>,
    /// Fire at the aim point.
    pub fire: bool,
}

/// Plays the course on its own: walks the level's route, jumping where it says.
#[derive(Resource, Clone, Debug, Default)]
pub struct Autopilot {
    step: usize,
    on_step: f32,
    since_shot: f32,
}

/// Seconds the autopilot tries one step of the route before going on to the next.
const STEP_LIMIT: f32 = 6.0;

/// What the player did, for the HUD and the report.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PlayerCounters {
    /// Metres walked (x–z).
    pub walked_m: f32,
    /// Jumps taken.
    pub jumps: u32,
    /// The highest ground it stood on, m.
    pub highest_ground_m: f32,
    /// How far the crates are from where they started, m, in all.
    pub crates_moved_m: f32,
    /// The door's largest opening, degrees.
    pub door_opened_deg: f32,
    /// Frames whose aim ray hit something.
    pub aim_hits: u64,
    /// Balls the player fired.
    pub shots: u64,
    /// Times an NPC saw the player and set off towards it.
    pub npcs_noticed: u64,
    /// NPCs walking towards the player now.
    pub npcs_chasing: u32,
    /// Ticks the character was pushed out of something the world put where it stood.
    pub corrections: u64,
}

/// What an NPC makes of the player.
#[derive(Component, Clone, Copy, Debug, Default)]
pub struct Watcher {
    chasing: bool,
    unseen_for: f32,
    chased_for: f32,
    resting_for: f32,
}

/// The player's systems in `Update` (input comes before them).
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlayerSystems;

/// The player, its course and the NPCs' interest in it.
pub struct PlayerPlugin;

impl Plugin for PlayerPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<PlayerInput>()
            .init_resource::<PlayerCounters>()
            .add_systems(Startup, spawn_course)
            .add_systems(
                Update,
                (autopilot.run_if(resource_exists::<Autopilot>), aim, npcs_notice, count).chain().in_set(PlayerSystems),
            )
            .add_systems(FixedUpdate, walk);
    }
}

fn spawn_course(mut commands: Commands, level: Res<Level>) {
    let Some(def) = &level.player else { return };
    let (half_height, radius) = CAPSULE;
    let start = Vec3::new(def.start[0], half_height + radius + 0.05, def.start[1]);
    commands.spawn((
        Name::new("player"),
        Player::default(),
        Drawn { role: Role::Player, shape: BodyShape::Capsule(radius, half_height), color: [0.95, 0.75, 0.2] },
        KinematicCharacterController { custom_mass: Some(90.0), ..default() },
        Collider::capsule_y(half_height, radius),
        Transform::from_translation(start),
    ));
    for (i, [x, z]) in def.crates.iter().enumerate() {
        let shape = BodyShape::Box(Vec3::splat(0.45));
        let at = Vec3::new(*x, 0.45, *z);
        commands
            .spawn((
                Name::new(format!("crate {i}")),
                Crate,
                Drawn { role: Role::Stacked, shape, color: [0.75, 0.55, 0.3] },
                StartPosition(at),
                Transform::from_translation(at),
                offload::dynamic_body(shape, Vec3::ZERO),
            ))
            // Light enough for the player to push at a walk.
            .insert(ColliderMassProperties::Mass(30.0));
    }
    // The door: a post and a panel on a spring-loaded hinge that swings it shut.
    let post_at = Vec3::new(def.door[0], 1.1, def.door[1]);
    let post_shape = BodyShape::Box(Vec3::new(0.12, 1.1, 0.12));
    let post = commands
        .spawn((
            Name::new("course door post"),
            Drawn { role: Role::Static(StaticKind::Wall), shape: post_shape, color: [0.45, 0.35, 0.25] },
            Transform::from_translation(post_at),
            offload::fixed_body(post_shape),
        ))
        .id();
    let half = Vec3::new(0.85, 1.0, 0.06);
    let hinge = JointData::revolute(Vec3::Y)
        .local_anchor1(Vec3::new(0.17, 0.0, 0.0))
        .local_anchor2(Vec3::new(-half.x - 0.05, 0.0, 0.0))
        .motor_position(0.0, 40.0, 8.0);
    commands
        .spawn((
            Name::new("course door"),
            Door,
            Drawn { role: Role::Stacked, shape: BodyShape::Box(half), color: [0.6, 0.35, 0.2] },
            Transform::from_translation(post_at + Vec3::new(0.17 + half.x + 0.05, 0.0, 0.0)),
            offload::dynamic_body(BodyShape::Box(half), Vec3::ZERO),
            ImpulseJoint::new(post, hinge),
        ))
        .insert(ColliderMassProperties::Mass(20.0));
    for (i, [x, z, top]) in def.platforms.iter().enumerate() {
        let shape = BodyShape::Box(Vec3::new(0.9, top / 2.0, 0.9));
        commands.spawn((
            Name::new(format!("platform {i}")),
            Drawn { role: Role::Static(StaticKind::Ramp), shape, color: [0.35, 0.55, 0.75] },
            Transform::from_xyz(*x, top / 2.0, *z),
            offload::fixed_body(shape),
        ));
    }
    commands.spawn((Name::new("aim marker"), AimMarker, Transform::from_xyz(0.0, -100.0, 0.0)));
}

/// Moves the character by the input (the controller takes the move at this tick's end).
fn walk(
    time: Res<Time<Fixed>>,
    mut input: ResMut<PlayerInput>,
    mut counters: ResMut<PlayerCounters>,
    mut players: Query<(&mut Player, &mut KinematicCharacterController, &KinematicCharacterControllerOutput)>,
) {
    let dt = time.timestep().as_secs_f32();
    for (mut player, mut controller, output) in &mut players {
        if output.grounded {
            player.vertical_speed = 0.0;
            if input.jump {
                player.vertical_speed = JUMP_SPEED;
                counters.jumps += 1;
            }
        } else {
            player.vertical_speed -= 9.81 * dt;
        }
        input.jump = false;
        let walk = input.walk.clamp_length_max(1.0) * WALK_SPEED;
        if walk != Vec2::ZERO {
            player.heading = (-walk.x).atan2(-walk.y);
        }
        controller.translation = Some(Vec3::new(walk.x, player.vertical_speed, walk.y) * dt);
        if output.correction != Vec3::ZERO {
            counters.corrections += 1;
        }
    }
}

/// Walks the route: towards each point, jumping when the point says so and the character
/// is close; on to the next point when there (or after [`STEP_LIMIT`] seconds). Aims
/// where it walks and fires at an NPC in its sights, once a second.
fn autopilot(
    time: Res<Time>,
    level: Res<Level>,
    mut pilot: ResMut<Autopilot>,
    mut input: ResMut<PlayerInput>,
    players: Query<(&Transform, &Player, &KinematicCharacterControllerOutput)>,
) {
    let Some(def) = &level.player else { return };
    let Ok((transform, player, output)) = players.single() else { return };
    if def.route.is_empty() {
        return;
    }
    let dt = time.delta_secs();
    pilot.on_step += dt;
    pilot.since_shot += dt;
    let [x, z, jump] = def.route[pilot.step % def.route.len()];
    let to = Vec2::new(x, z) - transform.translation.xz();
    // A jump is done once landed there, a walk once there.
    let arrived = to.length() < 0.35 && (jump == 0.0 || output.grounded);
    if arrived || pilot.on_step > STEP_LIMIT {
        pilot.step = (pilot.step + 1) % def.route.len();
        pilot.on_step = 0.0;
    }
    input.walk = to.normalize_or_zero() * (to.length() / 0.5).min(1.0);
    input.jump = jump > 0.0 && output.grounded && to.length() < 2.0;
    let facing = Quat::from_rotation_y(player.heading) * Vec3::NEG_Z;
    input.aim = Some((transform.translation + Vec3::Y * 0.6, (facing + Vec3::NEG_Y * 0.05).normalize()));
    input.fire = pilot.since_shot > 1.0;
    if input.fire {
        pilot.since_shot = 0.0;
    }
}

/// Casts the aim ray (scene queries, no network wait), puts the marker where it hits, and
/// fires at the point when asked (only at an NPC, for the autopilot's sake, or at anything
/// from the window).
#[allow(clippy::too_many_arguments)] // a system's parameters
fn aim(
    queries: Res<PhysicsQueries>,
    level: Res<Level>,
    mut input: ResMut<PlayerInput>,
    mut counters: ResMut<PlayerCounters>,
    players: Query<Entity, With<Player>>,
    npcs: Query<(), With<Npc>>,
    mut markers: Query<&mut Transform, With<AimMarker>>,
    mut fire: MessageWriter<FireBall>,
) {
    let Ok(player) = players.single() else { return };
    let Some((origin, direction)) = input.aim else { return };
    let hit = queries.cast_ray(origin, direction, AIM_RANGE, true, QueryFilter::default().exclude_rigid_body(player));
    for mut marker in &mut markers {
        marker.translation = hit.map_or(Vec3::new(0.0, -100.0, 0.0), |h| h.point);
    }
    let Some(hit) = hit else {
        input.fire = false;
        return;
    };
    counters.aim_hits += 1;
    if std::mem::take(&mut input.fire) && npcs.contains(hit.entity) {
        let from = origin + direction * 0.8;
        fire.write(FireBall {
            origin: from,
            velocity: crate::game::aim(from, hit.point, BALL_SPEED, level.gravity[1]),
        });
        counters.shots += 1;
    }
}

/// Each NPC that sees the player (a ray from its eyes reaches the player first, within
/// [`SIGHT`]) walks towards it; one that lost sight of it for [`CHASE_MEMORY`] seconds,
/// or chased it for [`CHASE_LIMIT`], goes back to its rounds (and ignores the player for
/// as long).
fn npcs_notice(
    time: Res<Time>,
    queries: Res<PhysicsQueries>,
    mut commands: Commands,
    mut counters: ResMut<PlayerCounters>,
    players: Query<(Entity, &Transform), With<Player>>,
    mut npcs: Query<(Entity, &Transform, &mut Npc, Option<&mut Watcher>, offload::AgentGoal)>,
    level: Res<Level>,
) {
    let Ok((player, player_at)) = players.single() else { return };
    let dt = time.delta_secs();
    let target = player_at.translation;
    let mut chasing = 0;
    for (npc, at, mut state, watcher, mut goal) in &mut npcs {
        let Some(mut w) = watcher else {
            commands.entity(npc).insert(Watcher::default());
            continue;
        };
        let eyes = at.translation + Vec3::Y * 0.5;
        let to = target - eyes;
        let sees = to.length() < SIGHT
            && queries
                .cast_ray(eyes, to.normalize_or_zero(), SIGHT, true, QueryFilter::default().exclude_rigid_body(npc))
                .is_some_and(|hit| hit.entity == player);
        if w.resting_for > 0.0 {
            w.resting_for -= dt;
            continue;
        }
        if sees {
            w.unseen_for = 0.0;
            if !w.chasing {
                w.chasing = true;
                w.chased_for = 0.0;
                counters.npcs_noticed += 1;
            }
        } else {
            w.unseen_for += dt;
        }
        if !w.chasing {
            continue;
        }
        w.chased_for += dt;
        if w.unseen_for > CHASE_MEMORY || w.chased_for > CHASE_LIMIT {
            *w = Watcher { resting_for: CHASE_LIMIT, ..default() };
            offload::set_goal(&mut goal, crate::game::target_point(&level, state.target));
            continue;
        }
        state.chasing = true;
        chasing += 1;
        let near_player = Vec3::new(target.x, 0.0, target.z);
        if goal.goal.distance(near_player) > 1.0 {
            offload::set_goal(&mut goal, near_player);
        }
    }
    for (_, _, mut state, watcher, _) in &mut npcs {
        if watcher.is_none_or(|w| !w.chasing) {
            state.chasing = false;
        }
    }
    counters.npcs_chasing = chasing;
}

/// Keeps the counters the crates, the door and the player's walk add up to.
fn count(
    mut counters: ResMut<PlayerCounters>,
    mut last: Local<Option<Vec3>>,
    players: Query<(&Transform, &KinematicCharacterControllerOutput), With<Player>>,
    crates: Query<(&Transform, &StartPosition), With<Crate>>,
    doors: Query<&Transform, With<Door>>,
) {
    let Ok((player, output)) = players.single() else { return };
    let here = player.translation;
    if let Some(before) = *last {
        let step = (here - before).xz().length();
        if step < 2.0 {
            counters.walked_m += step;
        }
    }
    *last = Some(here);
    if output.grounded {
        let ground = here.y - CAPSULE.0 - CAPSULE.1;
        counters.highest_ground_m = counters.highest_ground_m.max(ground);
    }
    counters.crates_moved_m = crates.iter().map(|(t, s)| (t.translation - s.0).xz().length()).sum();
    for door in &doors {
        let (swing, _, _) = door.rotation.to_euler(EulerRot::YXZ);
        counters.door_opened_deg = counters.door_opened_deg.max(swing.abs().to_degrees());
    }
}
