//! The player's character, moved where the game runs: [`KinematicCharacterController`]
//! (bevy_rapier3d's, with the same fields) walks a kinematic body against the world the
//! game holds ([`crate::PhysicsQueries`]' copy, the last applied tick), in the game's own
//! fixed tick, without waiting for a round trip.
//!
//! **What is true where.** The character's pose is decided here and nowhere else: it is
//! written to its [`PhysicsState`] and drawn (interpolated between ticks like any body),
//! and sent to the world as the body's kinematic target, so the world has the character
//! where the player sees it, a round trip later. Results from the world never move it
//! back. The world reacts to it: what it pushes (see below) and what it stands on.
//!
//! **What the player sees of the world reacting.** Everything else is drawn as the world
//! stepped it, so a crate the character pushes starts to move after the round trip plus
//! the playout buffer (the same delay as every offloaded body). The character itself
//! never waits: its input moves it at the next fixed tick.
//!
//! **Pushing.** To the controller every body is an obstacle at its last applied pose, so
//! the character stops against a crate. A dynamic body it bumps into gets an impulse in
//! the next request that brings its velocity along the contact normal up to the
//! character's, sized as two masses meeting (a heavy body gets a share each tick).
//! Impulses sent for ticks the copy does not show yet are counted as already moving the
//! body, so each tick sends only what is still missing; with the too-old velocity alone,
//! the same push would go again every tick of a round trip and fling the crate.
//!
//! **When the local move and the world disagree** (a door the peer closed where the
//! character walked, because the copy still showed it open): the next applied tick puts
//! the door into the character. Each move first pushes the character out of whatever it
//! overlaps, by at most [`KinematicCharacterController::max_correction`] (5 cm a tick by
//! default, 3 m/s at 60 Hz), so the correction is a short glide, never a snap; the
//! player's own input keeps working meanwhile. On the world's side the character is a
//! kinematic body and pushes the door out of its way for as long as they overlap: the two
//! sides meet. [`KinematicCharacterControllerOutput::correction`] and
//! [`crate::P2c2rStats`]' `characters` group count and measure these corrections.

use bevy::prelude::*;
use p2c2r_sim::character::{Autostep, CharacterSettings, push_impulse};
use p2c2r_sim::queries::QueryFilterSpec;

use crate::body::{Collider, CollisionGroups, RigidBody};
use crate::build::TickChanges;
use crate::components::{KinematicTarget, PhysicsState, PoseInterpolation};
use crate::ids::EntityIds;
use crate::queries::PhysicsQueries;
use crate::stats::P2c2rStats;

/// The largest impulse one push sends, in N·s (a 1,000 kg crate to 20 m/s): a bound on
/// what a bad mass or speed can do to the world.
const MAX_PUSH_IMPULSE: f32 = 20_000.0;

/// How many pushes are remembered until the copy shows them (about 4 s of one push a tick
/// on 4 bodies at 60 Hz): past it the oldest are forgotten, and a push may repeat.
const MAX_PENDING_PUSHES: usize = 1024;

/// A kinematic character controller (bevy_rapier3d's `KinematicCharacterController`):
/// set [`translation`](Self::translation) to where the character should move this fixed
/// tick (gravity included; the controller does not apply any), and read
/// [`KinematicCharacterControllerOutput`] for what it did. Needs a [`Collider`] (a capsule,
/// typically); its body is made [`RigidBody::KinematicPositionBased`].
///
/// Lengths are in metres, angles in radians.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
#[require(RigidBody = RigidBody::KinematicPositionBased, KinematicCharacterControllerOutput)]
pub struct KinematicCharacterController {
    /// The move wanted this tick, taken (set back to `None`) by the controller.
    pub translation: Option<Vec3>,
    /// Which way is up.
    pub up: Vec3,
    /// The gap kept between the character and what it touches (> 0).
    pub offset: f32,
    /// Slide along what it hits (otherwise stop).
    pub slide: bool,
    /// Step over small obstacles.
    pub autostep: Option<CharacterAutostep>,
    /// The steepest slope it walks up.
    pub max_slope_climb_angle: f32,
    /// The gentlest slope it slides down.
    pub min_slope_slide_angle: f32,
    /// Stick to the ground when it is at most this far below.
    pub snap_to_ground: Option<f32>,
    /// Which bodies it collides with (all, by default); sensors never stop it.
    pub filter_groups: Option<CollisionGroups>,
    /// Push the dynamic bodies it bumps into.
    pub apply_impulse_to_dynamic_bodies: bool,
    /// The character's mass for pushing, in kg.
    pub custom_mass: Option<f32>,
    /// The farthest one tick pushes the character out of something it overlaps (a door
    /// closed on it by the world): the speed of a correction.
    pub max_correction: f32,
}

/// Stepping over small obstacles (bevy_rapier3d's `CharacterAutostep`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CharacterAutostep {
    /// The highest step.
    pub max_height: f32,
    /// The room needed on top of it.
    pub min_width: f32,
    /// Whether dynamic bodies count as steps.
    pub include_dynamic_bodies: bool,
}

/// The mass a character pushes with when it has no [`KinematicCharacterController::custom_mass`].
pub const DEFAULT_CHARACTER_MASS: f32 = 80.0;

impl Default for KinematicCharacterController {
    fn default() -> Self {
        let s = CharacterSettings::default();
        KinematicCharacterController {
            translation: None,
            up: Vec3::from_array(s.up),
            offset: s.offset,
            slide: s.slide,
            autostep: s.autostep.map(|a| CharacterAutostep {
                max_height: a.max_height,
                min_width: a.min_width,
                include_dynamic_bodies: a.include_dynamic_bodies,
            }),
            max_slope_climb_angle: s.max_slope_climb_angle,
            min_slope_slide_angle: s.min_slope_slide_angle,
            snap_to_ground: s.snap_to_ground,
            filter_groups: None,
            apply_impulse_to_dynamic_bodies: true,
            custom_mass: None,
            max_correction: s.max_correction,
        }
    }
}

impl KinematicCharacterController {
    fn settings(&self) -> CharacterSettings {
        CharacterSettings {
            up: self.up.to_array(),
            offset: self.offset,
            slide: self.slide,
            autostep: self.autostep.map(|a| Autostep {
                max_height: a.max_height,
                min_width: a.min_width,
                include_dynamic_bodies: a.include_dynamic_bodies,
            }),
            max_slope_climb_angle: self.max_slope_climb_angle,
            min_slope_slide_angle: self.min_slope_slide_angle,
            snap_to_ground: self.snap_to_ground,
            max_correction: self.max_correction,
        }
    }
}

/// What the controller did at the last fixed tick (bevy_rapier3d's
/// `KinematicCharacterControllerOutput`, with the correction added).
#[derive(Component, Clone, Debug, Default, PartialEq)]
pub struct KinematicCharacterControllerOutput {
    /// The move asked for.
    pub desired_translation: Vec3,
    /// The move made, correction included.
    pub effective_translation: Vec3,
    /// Standing on the ground.
    pub grounded: bool,
    /// Sliding down a slope too steep to stand on.
    pub is_sliding_down_slope: bool,
    /// How far it was pushed out of something the world put where it stood.
    pub correction: Vec3,
    /// What it bumped into.
    pub collisions: Vec<CharacterCollision>,
}

/// A body the character bumped into.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CharacterCollision {
    /// The body.
    pub entity: Entity,
    /// The contact normal, from the character towards the body.
    pub normal: Vec3,
    /// The part of the move still to go when it hit.
    pub translation_remaining: Vec3,
    /// The impulse sent to push it (zero for what does not move).
    pub impulse: Vec3,
}

/// Whether the controller moves this body: it has a [`KinematicCharacterController`] and
/// is [`RigidBody::KinematicPositionBased`] (anything else the world moves itself).
pub(crate) fn is_character(has_controller: bool, body: Option<&RigidBody>) -> bool {
    has_controller && body == Some(&RigidBody::KinematicPositionBased)
}

/// Impulses sent to bodies for ticks the copy does not show yet (plugin-internal).
#[derive(Resource, Default)]
pub(crate) struct PendingPushes {
    /// (tick sent in, body, velocity change expected).
    sent: std::collections::VecDeque<(u64, Entity, Vec3)>,
}

impl PendingPushes {
    /// Forgets the pushes the copy shows now (sent for ticks up to `applied`).
    fn applied(&mut self, applied: u64) {
        self.sent.retain(|(tick, _, _)| *tick > applied);
    }

    /// The velocity change still on its way to `entity`.
    fn on_the_way(&self, entity: Entity) -> Vec3 {
        self.sent.iter().filter(|(_, e, _)| *e == entity).map(|(_, _, dv)| *dv).sum()
    }

    fn push(&mut self, tick: u64, entity: Entity, dv: Vec3) {
        if self.sent.len() >= MAX_PENDING_PUSHES {
            self.sent.pop_front();
        }
        self.sent.push_back((tick, entity, dv));
    }
}

/// A character and what the controller reads and writes of it.
type Character = (
    Entity,
    &'static mut KinematicCharacterController,
    &'static mut KinematicCharacterControllerOutput,
    &'static Collider,
    &'static RigidBody,
    &'static mut PhysicsState,
    Option<&'static mut PoseInterpolation>,
    Option<&'static mut KinematicTarget>,
);

/// Moves every character by its wanted translation (the `Characters` set, before Send):
/// out of what it overlaps, then as far as the world lets it; pushes what it bumps into;
/// sends its new pose as its kinematic target.
#[allow(clippy::too_many_arguments)]
pub(crate) fn move_characters(
    mut commands: Commands,
    mut queries: ResMut<PhysicsQueries>,
    mut changes: ResMut<TickChanges>,
    mut pending: ResMut<PendingPushes>,
    mut stats: ResMut<P2c2rStats>,
    ids: Res<EntityIds>,
    results: Res<crate::apply::Results>,
    time: Res<Time<Fixed>>,
    offload: Res<crate::plugin::Offload>,
    mut characters: Query<Character>,
    others: Query<&PhysicsState, Without<KinematicCharacterController>>,
    mut warned: Local<bool>,
    mut warned_body: Local<bool>,
) {
    let dt = time.timestep().as_secs_f32();
    // This tick's request carries the pushes.
    let tick = offload.tick + 1;
    pending.applied(results.last_applied_tick.unwrap_or(0));
    for (entity, mut controller, mut output, collider, body, mut state, interp, target) in &mut characters {
        // Registered (it has an id) and placed: the first tick only registers it.
        if ids.bodies.id(entity) != Some(state.id) {
            continue;
        }
        let Some(mut interp) = interp.filter(|_| *body == RigidBody::KinematicPositionBased) else {
            // A world moves any other kind of body itself (and refuses kinematic targets
            // for it): the controller leaves it alone, and says so once.
            if !std::mem::replace(&mut *warned_body, true) {
                tracing::warn!(
                    ?entity,
                    ?body,
                    "p2c2r: a KinematicCharacterController needs RigidBody::KinematicPositionBased; not moved"
                );
            }
            continue;
        };
        let desired = controller.translation.take().unwrap_or(Vec3::ZERO);
        let filter = QueryFilterSpec {
            groups: CollisionGroups::wire(controller.filter_groups),
            exclude: Some(entity.to_bits()),
            sensors: false,
        };
        let (position, rotation) = (state.position, state.rotation);
        let moved = queries.world().move_character(
            collider.shape(),
            position.to_array(),
            rotation.to_array(),
            desired.to_array(),
            dt,
            &controller.settings(),
            &filter,
        );
        let moved = match moved {
            Ok(m) => m,
            Err(e) => {
                // A bad move (NaN input, bad settings) moves nothing; said once as a
                // warning, then at debug level (it may repeat every tick).
                if std::mem::replace(&mut *warned, true) {
                    tracing::debug!(?entity, error = %e.message, "p2c2r: character move refused");
                } else {
                    tracing::warn!(?entity, error = %e.message, "p2c2r: character move refused");
                }
                *output = KinematicCharacterControllerOutput { desired_translation: desired, ..default() };
                continue;
            }
        };
        let character_velocity = desired / dt;
        // A mass that is not a positive number is the default's (a push must stay bounded).
        let mass = controller.custom_mass.filter(|m| m.is_finite() && *m > 0.0).unwrap_or(DEFAULT_CHARACTER_MASS);
        let mut collisions = Vec::with_capacity(moved.collisions.len());
        for hit in &moved.collisions {
            let Some(body) = Entity::try_from_bits(hit.body) else { continue };
            let normal = Vec3::from_array(hit.normal);
            let mut impulse = Vec3::ZERO;
            if controller.apply_impulse_to_dynamic_bodies
                && let (Some(body_mass), Ok(body_state)) = (hit.mass, others.get(body))
            {
                // The character and the body meet as two masses: a heavy crate gives way
                // slowly, pushed again each tick while the character leans on it.
                let effective = body_mass * mass / (body_mass + mass);
                let velocity = body_state.linvel + pending.on_the_way(body);
                impulse = Vec3::from_array(push_impulse(
                    hit.normal,
                    character_velocity.to_array(),
                    velocity.to_array(),
                    effective,
                    MAX_PUSH_IMPULSE,
                ));
                if impulse != Vec3::ZERO {
                    changes.pushes.push((body, impulse));
                    pending.push(tick, body, impulse / body_mass);
                    stats.characters.pushes += 1;
                }
            }
            collisions.push(CharacterCollision {
                entity: body,
                normal,
                translation_remaining: Vec3::from_array(hit.translation_remaining),
                impulse,
            });
        }
        let correction = Vec3::from_array(moved.correction);
        if correction != Vec3::ZERO {
            stats.characters.corrections += 1;
            stats.characters.corrected_m += correction.length() as f64;
        }
        let new_position = position + Vec3::from_array(moved.translation);
        state.position = new_position;
        interp.current = (new_position, rotation);
        match target {
            Some(mut t) => {
                if t.position != new_position || t.rotation != rotation {
                    *t = KinematicTarget { position: new_position, rotation };
                }
            }
            None => {
                commands.entity(entity).insert(KinematicTarget { position: new_position, rotation });
            }
        }
        queries.set_pose(entity, new_position, rotation);
        *output = KinematicCharacterControllerOutput {
            desired_translation: desired,
            effective_translation: Vec3::from_array(moved.translation),
            grounded: moved.grounded,
            is_sliding_down_slope: moved.sliding_down_slope,
            correction,
            collisions,
        };
    }
    queries.update();
}
