//! A kinematic character controller moved against a [`QueryWorld`]: where the game runs,
//! in its own frame, without waiting for a world to step.
//!
//! Walking, sliding along walls, climbing slopes up to an angle, stepping over small
//! obstacles and snapping to the ground are rapier's `KinematicCharacterController`, run
//! over the query world's colliders. Two things are this project's own, because the world
//! the character walks in is a copy that arrives a round trip late:
//!
//! - **Reconciliation** ([`QueryWorld::depenetrate`]): when a newly applied tick puts
//!   something where the character stands (a door the peer closed on it, a crate pushed
//!   into it), the character is pushed out along the contact normals by at most
//!   [`CharacterSettings::max_correction`] per move, so a correction is a glide over a few
//!   frames rather than a snap.
//! - **Pushing** ([`push_impulse`]): every body the character is stopped by is a fixed
//!   obstacle to the controller. A dynamic one is pushed by an impulse sent to the world,
//!   sized to bring its velocity along the contact normal up to the character's, counting
//!   the impulses already sent that the copy does not show yet (otherwise, over a round
//!   trip, the same push would be sent again every tick).

use p2c2r_protocol::TaskError;
use p2c2r_protocol::physics::{BodyId, Quat, Shape, Vec3};
use rapier3d::control::{CharacterAutostep, CharacterLength, KinematicCharacterController};
use rapier3d::math::{Pose, Vector};
use rapier3d::parry::shape::Shape as ParryShape;
use rapier3d::prelude::QueryPipeline;

use crate::checks::invalid;
use crate::queries::{QueryFilterSpec, QueryWorld, pose};

/// Passes of pushing out of overlaps per move: being pushed out of one body can leave the
/// character in another.
const DEPENETRATION_PASSES: usize = 4;

/// How the character moves: rapier's `KinematicCharacterController` settings in metres and
/// radians, and how fast a disagreement with the world is corrected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CharacterSettings {
    /// Which way is up (a unit vector).
    pub up: Vec3,
    /// The gap kept between the character and what it touches, in metres (> 0).
    pub offset: f32,
    /// Slide along what it hits (otherwise stop).
    pub slide: bool,
    /// Step over obstacles up to `max_height` with `min_width` of room on top.
    pub autostep: Option<Autostep>,
    /// The steepest slope it walks up, in radians.
    pub max_slope_climb_angle: f32,
    /// The gentlest slope it slides down, in radians.
    pub min_slope_slide_angle: f32,
    /// Stick to the ground when it is at most this far below (metres).
    pub snap_to_ground: Option<f32>,
    /// The farthest one move pushes the character out of a body it overlaps, in metres.
    pub max_correction: f32,
}

/// Stepping over small obstacles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Autostep {
    /// The highest step, in metres.
    pub max_height: f32,
    /// The room needed on top of it, in metres.
    pub min_width: f32,
    /// Whether dynamic bodies count as steps.
    pub include_dynamic_bodies: bool,
}

impl Default for CharacterSettings {
    fn default() -> Self {
        CharacterSettings {
            up: [0.0, 1.0, 0.0],
            offset: 0.02,
            slide: true,
            autostep: Some(Autostep { max_height: 0.35, min_width: 0.2, include_dynamic_bodies: false }),
            max_slope_climb_angle: 45f32.to_radians(),
            min_slope_slide_angle: 30f32.to_radians(),
            snap_to_ground: Some(0.2),
            max_correction: 0.05,
        }
    }
}

/// What one move did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CharacterMove {
    /// The translation applied, correction included.
    pub translation: Vec3,
    /// Standing on the ground afterwards.
    pub grounded: bool,
    /// Sliding down a slope too steep to stand on.
    pub sliding_down_slope: bool,
    /// How far the character was pushed out of bodies it overlapped, before moving.
    pub correction: Vec3,
    /// What it bumped into, in order.
    pub collisions: Vec<CharacterHit>,
}

/// A body the character bumped into while moving.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CharacterHit {
    /// The body.
    pub body: BodyId,
    /// Its mass when it is dynamic (something a push moves), `None` otherwise.
    pub mass: Option<f32>,
    /// The contact normal, from the character towards the body (unit length).
    pub normal: Vec3,
    /// The part of the move still to go when it hit.
    pub translation_remaining: Vec3,
}

impl CharacterSettings {
    /// Checks the settings: finite, a unit-length `up`, positive offset, angles within
    /// 0..π/2.
    pub fn check(&self) -> Result<(), TaskError> {
        let bad = |what: &str| Err(invalid(what.to_string()));
        let up = Vector::from_array(self.up);
        if !up.is_finite() || (up.length() - 1.0).abs() > 1.0e-3 {
            return bad("character: up must be a unit vector");
        }
        if !(self.offset.is_finite() && self.offset > 0.0 && self.offset < 1.0) {
            return bad("character: offset must be within (0, 1) m");
        }
        let angle = |a: f32| a.is_finite() && (0.0..=std::f32::consts::FRAC_PI_2).contains(&a);
        if !angle(self.max_slope_climb_angle) || !angle(self.min_slope_slide_angle) {
            return bad("character: slope angles must be within 0..π/2");
        }
        let length = |l: f32| l.is_finite() && (0.0..100.0).contains(&l);
        if self.snap_to_ground.is_some_and(|s| !length(s)) || !length(self.max_correction) {
            return bad("character: snap_to_ground and max_correction must be within 0..100 m");
        }
        if let Some(a) = self.autostep
            && (!length(a.max_height) || !length(a.min_width))
        {
            return bad("character: autostep heights must be within 0..100 m");
        }
        Ok(())
    }

    fn rapier(&self) -> KinematicCharacterController {
        KinematicCharacterController {
            up: Vector::from_array(self.up).normalize(),
            offset: CharacterLength::Absolute(self.offset),
            slide: self.slide,
            autostep: self.autostep.map(|a| CharacterAutostep {
                max_height: CharacterLength::Absolute(a.max_height),
                min_width: CharacterLength::Absolute(a.min_width),
                include_dynamic_bodies: a.include_dynamic_bodies,
            }),
            max_slope_climb_angle: self.max_slope_climb_angle,
            min_slope_slide_angle: self.min_slope_slide_angle,
            snap_to_ground: self.snap_to_ground.map(CharacterLength::Absolute),
            ..KinematicCharacterController::default()
        }
    }
}

impl QueryWorld {
    /// Moves a character of `shape` standing at `position`/`rotation` by `desired` over
    /// `dt` seconds, against the bodies `filter` lets through (exclude the character's own
    /// body): first out of anything it overlaps (by at most `max_correction`), then along
    /// `desired` as far as the world lets it. The caller applies
    /// [`CharacterMove::translation`].
    #[allow(clippy::too_many_arguments)] // rapier's `move_shape`'s, plus the filter
    pub fn move_character(
        &self,
        shape: &Shape,
        position: Vec3,
        rotation: Quat,
        desired: Vec3,
        dt: f32,
        settings: &CharacterSettings,
        filter: &QueryFilterSpec,
    ) -> Result<CharacterMove, TaskError> {
        settings.check()?;
        let desired_v = Vector::from_array(desired);
        if !desired_v.is_finite() || desired_v.length() > 1000.0 || !(dt.is_finite() && dt > 0.0 && dt <= 1.0) {
            return Err(invalid("character: a move must be finite (under 1 km) and dt within (0, 1] s".to_string()));
        }
        let built = self.query_shape(shape)?;
        let (correction, still_overlapping) =
            self.depenetrate(built.as_ref(), position, rotation, settings.max_correction, filter);
        let mut start = pose(position, rotation);
        start.translation += Vector::from_array(correction);
        if still_overlapping && desired_v.length_squared() < 1.0e-10 {
            // Standing still, rapier would push the character all the way out at once (a
            // snap); the bounded correction goes on at the next move instead.
            return Ok(CharacterMove { translation: correction, correction, ..CharacterMove::default() });
        }
        let mut collisions = Vec::new();
        let pipeline = self.pipeline(filter);
        let moved = settings.rapier().move_shape(dt, &pipeline, built.as_ref(), &start, desired_v, |c| {
            if let Some(body) = self.body_of(c.handle) {
                collisions.push(CharacterHit {
                    body,
                    mass: self.mass(body),
                    // rapier's `normal1` is the surface's, pointing out of the body.
                    normal: (-c.hit.normal1).normalize_or_zero().to_array(),
                    translation_remaining: c.translation_remaining.to_array(),
                });
            }
        });
        Ok(CharacterMove {
            translation: (moved.translation + Vector::from_array(correction)).to_array(),
            grounded: moved.grounded,
            sliding_down_slope: moved.is_sliding_down_slope,
            correction,
            collisions,
        })
    }

    /// How far to move `shape` at `position`/`rotation` to leave the bodies it overlaps
    /// (sensors never count), at most `max_correction` in all; and whether it still
    /// overlaps one after that.
    pub fn depenetrate(
        &self,
        shape: &dyn ParryShape,
        position: Vec3,
        rotation: Quat,
        max_correction: f32,
        filter: &QueryFilterSpec,
    ) -> (Vec3, bool) {
        let pipeline = self.pipeline(&QueryFilterSpec { sensors: false, ..*filter });
        let mut at = pose(position, rotation);
        let start = at.translation;
        let mut left = max_correction;
        for _ in 0..DEPENETRATION_PASSES {
            let Some((depth, normal)) = deepest_overlap(&pipeline, shape, &at) else {
                return ((at.translation - start).to_array(), false);
            };
            let push = depth.min(left);
            if push <= 0.0 {
                return ((at.translation - start).to_array(), true);
            }
            // `normal` points from the character into the body: back away from it.
            at.translation -= normal * push;
            left -= push;
        }
        ((at.translation - start).to_array(), deepest_overlap(&pipeline, shape, &at).is_some())
    }
}

/// The deepest overlap of `shape` at `at` with a body the pipeline sees (sensors never
/// count): how deep, and the normal from the shape into that body.
fn deepest_overlap(pipeline: &QueryPipeline<'_>, shape: &dyn ParryShape, at: &Pose) -> Option<(f32, Vector)> {
    let mut deepest: Option<(f32, Vector)> = None;
    for (_, collider) in pipeline.intersect_shape(*at, shape) {
        if collider.is_sensor() {
            continue;
        }
        let relative = at.inv_mul(collider.position());
        if let Ok(Some(contact)) = pipeline.dispatcher.contact(&relative, shape, collider.shape(), 0.0)
            && contact.dist < 0.0
            && deepest.is_none_or(|(d, _)| -contact.dist > d)
        {
            deepest = Some((-contact.dist, at.rotation * contact.normal1));
        }
    }
    deepest
}

/// The impulse (N·s) a character moving at `character_velocity` gives a dynamic body of
/// `mass` it pushes along `normal` (from the character towards the body): enough to bring
/// the body's velocity along the normal up to the character's, given that the body moves
/// at `body_velocity` (its last known velocity plus what impulses already sent will add),
/// and never more than `max_impulse`. Zero when the body already moves away as fast, or
/// the character moves away from it.
pub fn push_impulse(normal: Vec3, character_velocity: Vec3, body_velocity: Vec3, mass: f32, max_impulse: f32) -> Vec3 {
    let n = Vector::from_array(normal).normalize_or_zero();
    let wanted = Vector::from_array(character_velocity).dot(n);
    let has = Vector::from_array(body_velocity).dot(n);
    let dv = wanted - has;
    if !(dv > 0.0 && wanted > 0.0 && mass.is_finite() && mass > 0.0) {
        return [0.0; 3];
    }
    (n * (mass * dv).min(max_impulse.max(0.0))).to_array()
}

#[cfg(test)]
mod tests {
    use p2c2r_protocol::physics::{BodyDesc, BodyType};

    use super::*;

    const IDENTITY: Quat = [0.0, 0.0, 0.0, 1.0];
    const DT: f32 = 1.0 / 60.0;
    const CAPSULE: Shape = Shape::Capsule { half_height: 0.5, radius: 0.3 };

    fn fixed(id: BodyId, shape: Shape, position: Vec3, rotation: Quat) -> BodyDesc {
        BodyDesc { rotation, ..BodyDesc::new(id, shape, position).with_body_type(BodyType::Fixed) }
    }

    /// A ground, a 30° ramp up along +x, a 0.3 m step along −x, a wall along +z and a
    /// crate along −z; the character stands at the origin.
    fn course() -> QueryWorld {
        let mut q = QueryWorld::new();
        q.add(&fixed(1, Shape::Box { half_extents: [50.0, 0.5, 50.0] }, [0.0, -0.5, 0.0], IDENTITY)).unwrap();
        let tilt = 30f32.to_radians();
        let (s, c) = (tilt / 2.0).sin_cos();
        // A 10 m long slab tilted 30° about z, rising towards +x from x = 3.
        let ramp_rotation = [0.0, 0.0, s, c];
        let centre = [3.0 + 5.0 * tilt.cos(), 5.0 * tilt.sin() - 0.1, 0.0];
        q.add(&fixed(2, Shape::Box { half_extents: [5.0, 0.1, 2.0] }, centre, ramp_rotation)).unwrap();
        q.add(&fixed(3, Shape::Box { half_extents: [2.0, 0.15, 2.0] }, [-4.0, 0.15, 0.0], IDENTITY)).unwrap();
        q.add(&fixed(4, Shape::Box { half_extents: [3.0, 2.0, 0.25] }, [0.0, 2.0, 3.0], IDENTITY)).unwrap();
        q.add(&BodyDesc::new(5, Shape::Box { half_extents: [0.5; 3] }, [0.0, 0.5, -3.0])).unwrap();
        q.update();
        q
    }

    /// Walks `steps` ticks at `velocity` (m/s) with gravity, from `start`; returns where it
    /// ends, whether it was grounded, and every move.
    fn walk(q: &QueryWorld, start: Vec3, velocity: [f32; 3], steps: usize) -> (Vec3, Vec<CharacterMove>) {
        let mut at = Vector::from_array(start);
        let mut fall = 0.0f32;
        let mut moves = Vec::new();
        let exclude = QueryFilterSpec::default();
        for _ in 0..steps {
            fall = (fall - 9.81 * DT).max(-20.0);
            let desired = [velocity[0] * DT, (velocity[1] + fall) * DT, velocity[2] * DT];
            let m = q
                .move_character(&CAPSULE, at.to_array(), IDENTITY, desired, DT, &CharacterSettings::default(), &exclude)
                .unwrap();
            at += Vector::from_array(m.translation);
            if m.grounded {
                fall = 0.0;
            }
            moves.push(m);
        }
        (at.to_array(), moves)
    }

    const STANDING: f32 = 0.8 + 0.02;

    #[test]
    fn walks_up_a_thirty_degree_slope() {
        let q = course();
        let (at, moves) = walk(&q, [0.0, STANDING, 0.0], [3.0, 0.0, 0.0], 180);
        // 9 m along x at 3 m/s: well up the ramp, which rises tan 30° per metre past x = 3.
        assert!(at[0] > 6.0, "it kept walking: {at:?}");
        let ramp_height = (at[0] - 3.0) * 30f32.to_radians().tan();
        assert!(at[1] > ramp_height + 0.5 && at[1] < ramp_height + 1.3, "on the ramp: {at:?}, ramp {ramp_height}");
        assert!(moves.last().unwrap().grounded);
    }

    #[test]
    fn climbs_a_thirty_centimetre_step() {
        let q = course();
        let (at, _) = walk(&q, [0.0, STANDING, 0.0], [-3.0, 0.0, 0.0], 90);
        assert!(at[0] < -3.0, "over the step: {at:?}");
        assert!((at[1] - (0.3 + STANDING)).abs() < 0.1, "standing on it: {at:?}");
    }

    #[test]
    fn stops_at_a_wall_and_slides_along_it() {
        let q = course();
        let (at, moves) = walk(&q, [0.0, STANDING, 0.0], [1.0, 0.0, 3.0], 90);
        // The wall's face is at z = 2.75; the capsule's radius 0.3 and the 0.02 gap.
        assert!(at[2] < 2.75 - 0.3 + 0.01 && at[2] > 2.3, "stopped at the wall: {at:?}");
        assert!(at[0] > 1.2, "slid along it: {at:?}");
        assert!(moves.iter().any(|m| m.collisions.iter().any(|c| c.body == 4 && c.mass.is_none())));
    }

    #[test]
    fn lands_on_a_platform_after_a_jump() {
        let mut q = course();
        q.add(&fixed(6, Shape::Box { half_extents: [1.0, 0.25, 1.0] }, [0.0, 1.25, -8.0], IDENTITY)).unwrap();
        q.update();
        // Jump at 6 m/s towards the platform (top at 1.5 m) from 2 m short of it.
        let (mut at, mut fall) = ([0.0, STANDING, -5.5], 6.0f32);
        let mut grounded_on_top = false;
        for _ in 0..120 {
            fall -= 9.81 * DT;
            // Stop walking once landed on top.
            let forward = if grounded_on_top { 0.0 } else { -2.5 * DT };
            let desired = [0.0, fall * DT, forward];
            let m = q
                .move_character(
                    &CAPSULE,
                    at,
                    IDENTITY,
                    desired,
                    DT,
                    &CharacterSettings::default(),
                    &QueryFilterSpec::default(),
                )
                .unwrap();
            at = (Vector::from_array(at) + Vector::from_array(m.translation)).to_array();
            if m.grounded && fall < 0.0 {
                fall = 0.0;
                grounded_on_top |= at[1] > 1.5 + 0.7;
            }
        }
        assert!(grounded_on_top, "landed on the platform: {at:?}");
        assert!((at[1] - (1.5 + STANDING)).abs() < 0.1 && at[2] < -7.0, "{at:?}");
    }

    #[test]
    fn a_crate_stops_the_character_and_is_reported_with_its_mass() {
        let q = course();
        let (at, moves) = walk(&q, [0.0, STANDING, 0.0], [0.0, 0.0, -3.0], 60);
        assert!(at[2] > -2.5 - 0.3 - 0.05, "stopped at the crate (face at z = -2.5): {at:?}");
        let hit = moves.iter().flat_map(|m| &m.collisions).find(|c| c.body == 5).expect("bumped the crate");
        assert!((hit.mass.unwrap() - 1000.0).abs() < 1.0, "1 m³ at 1000 kg/m³: {hit:?}");
        assert!(hit.normal[2] < -0.9, "the normal points at the crate: {hit:?}");
    }

    #[test]
    fn an_overlap_is_corrected_a_little_per_move() {
        let mut q = course();
        // A door closed where the character stands: 0.2 m into its capsule.
        q.add(&fixed(7, Shape::Box { half_extents: [2.0, 2.0, 0.1] }, [0.0, 2.0, 0.0], IDENTITY)).unwrap();
        q.update();
        let settings = CharacterSettings::default();
        let mut at = [0.0, STANDING, 0.2];
        let mut corrections = Vec::new();
        for _ in 0..20 {
            let m =
                q.move_character(&CAPSULE, at, IDENTITY, [0.0; 3], DT, &settings, &QueryFilterSpec::default()).unwrap();
            // What the player sees: how far the character moved in this move.
            let moved = Vector::from_array(m.translation).length();
            assert!(moved <= settings.max_correction + 1e-5, "a glide, not a snap: {moved} m in one move");
            corrections.push(Vector::from_array(m.correction).length());
            at = (Vector::from_array(at) + Vector::from_array(m.translation)).to_array();
        }
        assert!(at[2] >= 0.1 + 0.3 - 1e-3, "pushed out of the door: {at:?} {corrections:?}");
        assert!(corrections.iter().filter(|&&c| c > 0.0).count() >= 4, "over several moves: {corrections:?}");
    }

    #[test]
    fn autostep_climbs_a_low_crate_only_when_told_to() {
        let mut q = course();
        // A 0.3 m high dynamic slab across the path along +z, beside the wall's end.
        q.add(&BodyDesc::new(8, Shape::Box { half_extents: [2.0, 0.15, 0.5] }, [-8.0, 0.15, 2.0])).unwrap();
        q.update();
        let walk = |include_dynamic_bodies: bool| {
            let settings = CharacterSettings {
                autostep: Some(Autostep { max_height: 0.35, min_width: 0.2, include_dynamic_bodies }),
                ..Default::default()
            };
            let mut at = Vector::new(-8.0, STANDING, 0.0);
            for _ in 0..90 {
                let desired = [0.0, -0.1 * DT, 2.0 * DT];
                let m = q
                    .move_character(
                        &CAPSULE,
                        at.to_array(),
                        IDENTITY,
                        desired,
                        DT,
                        &settings,
                        &QueryFilterSpec::default(),
                    )
                    .unwrap();
                at += Vector::from_array(m.translation);
            }
            at
        };
        assert!(walk(true).z > 2.5, "stepped onto the slab and over it");
        assert!(walk(false).z < 1.5 - 0.3 + 0.05, "stopped at the slab, a dynamic body");
    }

    #[test]
    fn pushes_bring_a_body_up_to_the_characters_speed_once() {
        let n = [0.0, 0.0, -1.0];
        let j = push_impulse(n, [0.0, 0.0, -3.0], [0.0; 3], 50.0, 1000.0);
        assert_eq!(j, [0.0, 0.0, -150.0]);
        // The same push already on its way: nothing more.
        assert_eq!(push_impulse(n, [0.0, 0.0, -3.0], [0.0, 0.0, -3.0], 50.0, 1000.0), [0.0; 3]);
        // Moving away from it, or a body that is not dynamic: nothing.
        assert_eq!(push_impulse(n, [0.0, 0.0, 3.0], [0.0; 3], 50.0, 1000.0), [0.0; 3]);
        assert_eq!(push_impulse(n, [0.0, 0.0, -3.0], [0.0; 3], f32::NAN, 1000.0), [0.0; 3]);
        // Bounded.
        assert_eq!(push_impulse(n, [0.0, 0.0, -3.0], [0.0; 3], 1.0e6, 200.0), [0.0, 0.0, -200.0]);
    }

    #[test]
    fn bad_moves_and_settings_are_errors() {
        let q = course();
        let go = |desired: Vec3, dt: f32, settings: CharacterSettings| {
            q.move_character(&CAPSULE, [0.0, 1.0, 0.0], IDENTITY, desired, dt, &settings, &QueryFilterSpec::default())
        };
        assert!(go([f32::NAN, 0.0, 0.0], DT, CharacterSettings::default()).is_err());
        assert!(go([1.0e9, 0.0, 0.0], DT, CharacterSettings::default()).is_err());
        assert!(go([0.1, 0.0, 0.0], 0.0, CharacterSettings::default()).is_err());
        assert!(go([0.1, 0.0, 0.0], DT, CharacterSettings { up: [0.0, 2.0, 0.0], ..Default::default() }).is_err());
        assert!(go([0.1, 0.0, 0.0], DT, CharacterSettings { offset: 0.0, ..Default::default() }).is_err());
        assert!(
            go([0.1, 0.0, 0.0], DT, CharacterSettings { max_slope_climb_angle: 4.0, ..Default::default() }).is_err()
        );
        assert!(go([0.1, 0.0, 0.0], DT, CharacterSettings::default()).is_ok());
    }
}
