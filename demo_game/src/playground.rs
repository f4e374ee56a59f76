//! The physics playground beside the arena: what a game's world is made of, every piece
//! offloaded like the rest. A heightfield terrain, a level mesh (a half-pipe, sent to each
//! peer once and named by its content afterwards), a door on a spring-loaded hinge, a rope
//! bridge of ball-jointed planks, a seesaw, and a trigger zone that counts what enters it.
//! A dropper lets balls fall on them in turn; every ball reports its collisions, and each
//! start of a contact makes a spark (a hit effect, drawn by [`crate::render`]). The HUD
//! shows the events per second (the plugin's `P2c2rStats::events`) and the zone's count.
//!
//! The level file places the playground (`playground.origin`, `[x, z]`); a level without
//! one has none.

use std::f32::consts::PI;

use bevy::prelude::*;
use bevy_p2c2r::{
    ActiveEvents, Collider, ColliderMassProperties, CollisionEvent, ContactForceEvent, ContactForceEventThreshold,
    Damping, Friction, ImpulseJoint, JointData, Restitution, RigidBody, Sensor, Velocity,
};
use serde::{Deserialize, Serialize};

use crate::game::{Drawn, Role, StartPosition};
use crate::level::{BodyShape, Level, StaticKind};

/// Where the level puts its playground.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaygroundDef {
    /// The centre of its terrain, `[x, z]`.
    pub origin: [f32; 2],
}

/// The terrain's size along x and z, metres.
pub const TERRAIN_SIZE: [f32; 2] = [24.0, 40.0];
/// Its grid: rows along z, columns along x.
pub const TERRAIN_GRID: [u32; 2] = [21, 13];
/// Seconds between two dropped balls.
pub const DROP_PERIOD: f32 = 0.6;
/// At most this many dropped balls exist; dropping another despawns the oldest.
pub const MAX_DROPPED: usize = 24;
/// How long a spark lives, seconds.
pub const SPARK_SECONDS: f32 = 0.4;

/// What a piece of the playground is, for the renderer and the report.
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The terrain (a heightfield).
    Terrain,
    /// The half-pipe (a triangle mesh).
    HalfPipe,
    /// The trigger zone.
    Zone,
    /// A ball the dropper let fall (the number orders them, oldest first).
    Dropped(u64),
}

/// A triangle mesh to draw: what the terrain and the half-pipe look like.
#[derive(Component, Clone, Debug)]
pub struct DrawnMesh {
    /// Vertices, in the entity's frame.
    pub positions: Vec<[f32; 3]>,
    /// Triangles.
    pub indices: Vec<[u32; 3]>,
    /// Linear sRGB colour.
    pub color: [f32; 3],
}

/// A hit effect: a spark that shrinks away.
#[derive(Component, Clone, Copy, Debug)]
pub struct Spark {
    /// Seconds it has lived.
    pub age: f32,
}

/// What the playground counts, for the HUD and the report.
#[derive(Resource, Clone, Debug, Default)]
pub struct PlaygroundCounters {
    /// Collision events seen (started and stopped).
    pub collision_events: u64,
    /// Contact-force events seen.
    pub force_events: u64,
    /// Bodies that entered the trigger zone.
    pub zone_entries: u64,
    /// Sparks made.
    pub sparks: u64,
    /// Joints the playground holds.
    pub joints: usize,
}

/// Spawns the playground (when the level has one) and runs its dropper, counters and
/// sparks.
pub struct PlaygroundPlugin;

impl Plugin for PlaygroundPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<PlaygroundCounters>()
            .add_systems(Startup, spawn_playground)
            .add_systems(FixedUpdate, (count_events, drop_balls))
            .add_systems(Update, age_sparks);
    }
}

fn spawn_playground(mut commands: Commands, level: Res<Level>, mut counters: ResMut<PlaygroundCounters>) {
    let Some(def) = &level.playground else { return };
    let o = Vec3::new(def.origin[0], 0.0, def.origin[1]);
    spawn_terrain(&mut commands, o);
    spawn_half_pipe(&mut commands, o + Vec3::new(-6.0, 0.0, -13.0));
    counters.joints += spawn_door(&mut commands, o + Vec3::new(-8.0, 0.0, 3.0));
    counters.joints += spawn_bridge(&mut commands, o + Vec3::new(-1.0, 0.0, 11.0));
    counters.joints += spawn_seesaw(&mut commands, o + Vec3::new(5.0, 0.0, -3.0));
    commands.spawn((
        Name::new("trigger zone"),
        Piece::Zone,
        Collider::cuboid(1.5, 1.0, 1.5),
        Sensor,
        ActiveEvents::COLLISION_EVENTS,
        Transform::from_translation(zone_position(o)),
    ));
}

fn zone_position(o: Vec3) -> Vec3 {
    o + Vec3::new(7.0, 1.0, -12.0)
}

/// The terrain's height at grid cell (row, column): a valley along z with low hills at
/// the sides, flat where the pieces stand.
fn terrain_height(row: u32, column: u32) -> f32 {
    let x = column as f32 / (TERRAIN_GRID[1] - 1) as f32;
    let z = row as f32 / (TERRAIN_GRID[0] - 1) as f32;
    let edge = ((x - 0.5).abs() * 2.0).powi(4);
    0.9 * edge * (1.0 + 0.3 * (z * 4.0 * PI).sin())
}

fn spawn_terrain(commands: &mut Commands, o: Vec3) {
    let [rows, columns] = TERRAIN_GRID;
    let heights: Vec<f32> = (0..rows).flat_map(|r| (0..columns).map(move |c| terrain_height(r, c))).collect();
    let scale = Vec3::new(TERRAIN_SIZE[0], 1.0, TERRAIN_SIZE[1]);
    // The same grid, drawn: vertex (r, c) at x = (c / (columns - 1) - 1/2) · size.
    let positions = (0..rows)
        .flat_map(|r| {
            let heights = &heights;
            (0..columns).map(move |c| {
                let x = (c as f32 / (columns - 1) as f32 - 0.5) * scale.x;
                let z = (r as f32 / (rows - 1) as f32 - 0.5) * scale.z;
                [x, heights[(r * columns + c) as usize], z]
            })
        })
        .collect();
    commands.spawn((
        Name::new("terrain"),
        Piece::Terrain,
        DrawnMesh { positions, indices: grid_triangles(rows, columns), color: [0.36, 0.5, 0.3] },
        Collider::heightfield(heights, rows, columns, scale),
        Friction::coefficient(0.8),
        // Slightly below the arena's floor level, so the playground's pieces stand at 0.
        Transform::from_translation(o + Vec3::Y * -0.01),
    ));
}

/// The triangles of a `rows × columns` grid of vertices, row after row (upwards facing).
fn grid_triangles(rows: u32, columns: u32) -> Vec<[u32; 3]> {
    let at = |r: u32, c: u32| r * columns + c;
    (0..rows - 1)
        .flat_map(|r| {
            (0..columns - 1).flat_map(move |c| {
                [[at(r, c), at(r + 1, c), at(r, c + 1)], [at(r, c + 1), at(r + 1, c), at(r + 1, c + 1)]]
            })
        })
        .collect()
}

/// A half-pipe, 8 m long and 6 m wide: a level mesh of 24 × 8 quads (384 triangles), large
/// enough to be sent to a peer once and named afterwards.
fn spawn_half_pipe(commands: &mut Commands, at: Vec3) {
    let (segments, strips) = (24u32, 8u32);
    let positions: Vec<[f32; 3]> = (0..=segments)
        .flat_map(|s| {
            (0..=strips).map(move |k| {
                let angle = -PI / 2.0 + PI * s as f32 / segments as f32;
                let (x, y) = (3.0 * angle.sin(), 3.0 - 3.0 * angle.cos());
                [x, y.min(2.4), k as f32 - strips as f32 / 2.0]
            })
        })
        .collect();
    let indices = grid_triangles(segments + 1, strips + 1);
    let vertices = positions.iter().map(|p| Vec3::from(*p)).collect();
    commands.spawn((
        Name::new("half-pipe"),
        Piece::HalfPipe,
        DrawnMesh { positions, indices: indices.clone(), color: [0.6, 0.55, 0.5] },
        Collider::trimesh(vertices, indices),
        Friction::coefficient(0.4),
        Transform::from_translation(at),
    ));
}

fn post(commands: &mut Commands, name: &str, position: Vec3, half: Vec3) -> Entity {
    let shape = BodyShape::Box(half);
    commands
        .spawn((
            Name::new(name.to_owned()),
            Drawn { role: Role::Static(StaticKind::Wall), shape, color: [0.45, 0.35, 0.25] },
            Collider::cuboid(half.x, half.y, half.z),
            Transform::from_translation(position),
        ))
        .id()
}

fn plank(position: Vec3, half: Vec3, color: [f32; 3]) -> impl Bundle {
    (
        Drawn { role: Role::Stacked, shape: BodyShape::Box(half), color },
        StartPosition(position),
        RigidBody::Dynamic,
        Collider::cuboid(half.x, half.y, half.z),
        ColliderMassProperties::Density(300.0),
        Transform::from_translation(position),
    )
}

/// A door on a hinge that springs back shut: balls push it open. Returns its joints.
fn spawn_door(commands: &mut Commands, at: Vec3) -> usize {
    let frame = post(commands, "door post", at + Vec3::new(0.0, 1.2, 0.0), Vec3::new(0.15, 1.2, 0.15));
    let half = Vec3::new(0.8, 1.05, 0.06);
    let hinge = JointData::revolute(Vec3::Y)
        .local_anchor1(Vec3::new(0.2, 0.0, 0.0))
        .local_anchor2(Vec3::new(-half.x - 0.05, 0.0, 0.0))
        .limits([-1.7, 1.7])
        .motor_position(0.0, 60.0, 12.0);
    commands.spawn((
        Name::new("door"),
        plank(at + Vec3::new(0.2 + half.x + 0.05, 1.2, 0.0), half, [0.7, 0.45, 0.2]),
        ImpulseJoint::new(frame, hinge),
    ));
    1
}

/// A rope bridge of nine planks between two posts, each plank ball-jointed to the next.
/// Returns its joints.
fn spawn_bridge(commands: &mut Commands, at: Vec3) -> usize {
    let (planks, half) = (9, Vec3::new(0.45, 0.05, 0.6));
    let pitch = 2.0 * half.x + 0.1;
    let span = planks as f32 * pitch;
    let west = post(commands, "bridge post", at + Vec3::new(-0.2, 1.0, 0.0), Vec3::new(0.2, 1.0, 0.7));
    let east = post(commands, "bridge post", at + Vec3::new(span + 0.2, 1.0, 0.0), Vec3::new(0.2, 1.0, 0.7));
    let mut previous = (west, Vec3::new(0.2, 0.95, 0.0));
    let mut joints = 0;
    for i in 0..planks {
        let position = at + Vec3::new(half.x + 0.05 + i as f32 * pitch, 1.9, 0.0);
        let link = JointData::spherical().local_anchor1(previous.1).local_anchor2(Vec3::new(-half.x - 0.05, 0.0, 0.0));
        let plank = commands
            .spawn((
                Name::new("bridge plank"),
                plank(position, half, [0.55, 0.4, 0.25]),
                ImpulseJoint::new(previous.0, link),
            ))
            .id();
        previous = (plank, Vec3::new(half.x + 0.05, 0.0, 0.0));
        joints += 1;
    }
    // The last plank hangs from the east post too: an entity holds one joint, so the post
    // holds this one (to the plank, its parent).
    let tie = JointData::spherical().local_anchor1(previous.1).local_anchor2(Vec3::new(-0.2, 0.95, 0.0));
    commands.entity(east).insert(ImpulseJoint::new(previous.0, tie));
    joints + 1
}

/// A seesaw: a plank on a hinge over a pivot, a crate on one end. Returns its joints.
fn spawn_seesaw(commands: &mut Commands, at: Vec3) -> usize {
    let pivot = post(commands, "seesaw pivot", at + Vec3::new(0.0, 0.4, 0.0), Vec3::new(0.2, 0.4, 0.6));
    let half = Vec3::new(2.6, 0.08, 0.5);
    let hinge = JointData::revolute(Vec3::Z).local_anchor1(Vec3::new(0.0, 0.5, 0.0)).limits([-0.35, 0.35]);
    commands.spawn((
        Name::new("seesaw"),
        plank(at + Vec3::new(0.0, 0.9, 0.0), half, [0.25, 0.45, 0.7]),
        ImpulseJoint::new(pivot, hinge),
    ));
    let crate_half = Vec3::splat(0.3);
    commands.spawn((Name::new("seesaw crate"), plank(at + Vec3::new(-2.1, 1.3, 0.0), crate_half, [0.8, 0.7, 0.3])));
    1
}

/// Lets a ball fall on each piece in turn (a fired ball for the door).
fn drop_balls(
    mut commands: Commands,
    level: Res<Level>,
    time: Res<Time>,
    mut timer: Local<f32>,
    mut dropped: Local<u64>,
    balls: Query<(Entity, &Piece)>,
) {
    let Some(def) = &level.playground else { return };
    *timer += time.delta_secs();
    if *timer < DROP_PERIOD {
        return;
    }
    *timer = 0.0;
    let o = Vec3::new(def.origin[0], 0.0, def.origin[1]);
    let n = *dropped;
    *dropped += 1;
    let jitter = ((n * 7) % 5) as f32 * 0.15 - 0.3;
    let (position, velocity) = match n % 5 {
        0 => (zone_position(o) + Vec3::new(jitter, 4.0, -jitter), Vec3::ZERO),
        1 => (o + Vec3::new(3.0 + jitter, 6.0, 11.0), Vec3::ZERO),
        2 => (o + Vec3::new(7.3, 5.0, -3.0 + jitter), Vec3::ZERO),
        3 => (o + Vec3::new(-8.5, 3.5, -13.0 + jitter), Vec3::new(4.0, 0.0, 0.0)),
        _ => (o + Vec3::new(-7.0 + jitter, 1.4, 8.0), Vec3::new(0.0, 0.0, -7.0)),
    };
    let radius = 0.25;
    commands.spawn((
        Name::new("dropped ball"),
        Piece::Dropped(n),
        Drawn { role: Role::Ball, shape: BodyShape::Sphere(radius), color: [0.9, 0.3, 0.1] },
        RigidBody::Dynamic,
        Collider::ball(radius),
        Velocity::linear(velocity),
        // 33 kg: resting, it weighs 320 N; landing, it pushes several thousand.
        ColliderMassProperties::Density(500.0),
        Restitution::coefficient(0.4),
        Damping { linear_damping: 0.05, angular_damping: 0.3 },
        ActiveEvents::COLLISION_EVENTS | ActiveEvents::CONTACT_FORCE_EVENTS,
        ContactForceEventThreshold(2000.0),
        Transform::from_translation(position),
    ));
    let mut alive: Vec<(u64, Entity)> =
        balls.iter().filter_map(|(e, p)| if let Piece::Dropped(k) = p { Some((*k, e)) } else { None }).collect();
    if alive.len() >= MAX_DROPPED {
        alive.sort_unstable();
        for (_, e) in &alive[..alive.len() + 1 - MAX_DROPPED] {
            commands.entity(*e).despawn();
        }
    }
}

/// Counts the events, the zone's entries, and makes a spark where a ball starts touching
/// something.
fn count_events(
    mut commands: Commands,
    mut collisions: MessageReader<CollisionEvent>,
    mut forces: MessageReader<ContactForceEvent>,
    pieces: Query<(&Piece, &Transform)>,
    mut counters: ResMut<PlaygroundCounters>,
) {
    for event in collisions.read() {
        counters.collision_events += 1;
        let CollisionEvent::Started(a, b, _) = *event else { continue };
        let piece = |e: Entity| pieces.get(e).ok();
        if [a, b].iter().any(|e| matches!(piece(*e), Some((Piece::Zone, _)))) {
            counters.zone_entries += 1;
        }
        if let Some((_, transform)) =
            [a, b].iter().filter_map(|e| piece(*e)).find(|(p, _)| matches!(p, Piece::Dropped(_)))
        {
            counters.sparks += 1;
            commands.spawn((
                Name::new("spark"),
                Spark { age: 0.0 },
                Transform::from_translation(transform.translation),
            ));
        }
    }
    counters.force_events += forces.read().count() as u64;
}

fn age_sparks(mut commands: Commands, time: Res<Time>, mut sparks: Query<(Entity, &mut Spark, &mut Transform)>) {
    for (entity, mut spark, mut transform) in &mut sparks {
        spark.age += time.delta_secs();
        if spark.age >= SPARK_SECONDS {
            commands.entity(entity).despawn();
        } else {
            transform.scale = Vec3::splat(1.0 + 3.0 * spark.age / SPARK_SECONDS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_half_pipe_is_large_enough_to_be_sent_once() {
        let indices = grid_triangles(25, 9);
        assert_eq!(indices.len(), 24 * 8 * 2);
        let vertices: Vec<Vec3> = (0..25 * 9).map(|i| Vec3::new(i as f32, 0.0, 0.0)).collect();
        assert!(Collider::trimesh(vertices, indices).cached().is_some(), "named after its first trip");
    }

    #[test]
    fn the_terrain_is_flat_in_the_middle_and_rises_at_the_sides() {
        assert!(terrain_height(10, 6) < 0.01);
        assert!(terrain_height(10, 0) > 0.5 && terrain_height(10, 12) > 0.5);
        assert!((0..21).all(|r| (0..13).all(|c| terrain_height(r, c).is_finite())));
    }
}
