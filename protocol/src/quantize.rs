//! The lattice that physics states travel on: fixed-point positions, velocities and
//! smallest-three rotations.
//!
//! A peer snaps its own world onto this lattice after every tick
//! (`p2c2r_sim::physics::PhysicsWorld` does it), so the state it reports *is* the state it
//! keeps: the gamer's copy and the peer's world agree bit for bit, and a snapshot built
//! from the gamer's copy continues the world without a jump. The packed encoding
//! ([`crate::packed`]) sends the integers.
//!
//! | quantity | unit | largest magnitude | error of [`snap`] |
//! |---|---|---|---|
//! | position | 2⁻¹⁴ m (61 µm) | [`MAX_POSITION`]: 1e6 m | ≤ 2⁻¹⁵ m (0 past 1,024 m, where every `f32` is on the lattice) |
//! | linear velocity | 2⁻¹⁰ m/s | [`MAX_VELOCITY`]: 1e5 m/s | ≤ 2⁻¹¹ m/s (0 past 16,384 m/s) |
//! | angular velocity | 2⁻¹⁰ rad/s | [`MAX_VELOCITY`] | ≤ 2⁻¹¹ rad/s |
//! | rotation | 2⁻¹⁵ per component | the three smallest, ±1/√2 | ≤ [`MAX_ROTATION_ERROR`] rad |
//!
//! Why these units. Every unit is far below what a player sees and below rapier's contact
//! tolerances (its allowed penetration is 5 mm); 15-bit smallest-three rotations move the
//! corner of a 1 m cube by at most 2⁻¹⁵ × 0.87 m ≈ 27 µm. What decides is what snapping
//! does to motion, and the bytes (measured with `sim/benches/bandwidth.rs`):
//!
//! - A snapped world moves by whole units: each tick a body moves by its displacement
//!   rounded to a position unit, and its velocity changes by its acceleration × the
//!   tick's duration rounded to a velocity unit. Positions in 2⁻¹⁴ m keep a body crawling
//!   at 5 cm/s within 3% of its speed at 60 Hz (2⁻¹² m: 12%), and cost no more bytes (the
//!   900-cube scene: 1.14 bytes per body per frame, against 1.16 with 2⁻¹² m; more cubes
//!   asleep at the end, 803 against 754, rapier without snapping: 817).
//! - Velocities in 2⁻¹⁰ m/s: finer units make the tiny velocity changes of resting, not
//!   yet sleeping bodies visible, so they are reported far more often (2⁻¹² m/s: 1.41
//!   bytes per body per frame). The price is the rounding of a constant acceleration: at
//!   60 Hz, gravity's 9.81 m/s² × 1/60 s is 167.4 units, so a falling body gains 167 units
//!   per tick and falls at 9.785 m/s² (0.25% slower), the same on every peer.
//!
//! Sleeping still works: a snapped body is still by rapier's test exactly when it would
//! have been (see `p2c2r_sim::physics`).
//!
//! Every conversion is a deterministic function of its input: only IEEE 754 operations
//! (`+ - × ÷ √`, rounding and casts), no transcendental functions, so every machine
//! computes the same bits. Values are rounded to the nearest unit, ties to even.
//! Non-finite inputs never panic: NaN becomes 0 (the identity for
//! a rotation), infinities and out-of-range values are clamped to the largest magnitude.
//!
//! The key property, tested over millions of random inputs: for every `q` that
//! [`quantize`] returns, `quantize(&dequantize(id, &q)) == q`, so a state already on the
//! lattice re-quantizes to itself and [`snap`] is idempotent.

use crate::limits::{MAX_COORDINATE, MAX_SPEED};
use crate::physics::{BodyDesc, BodyId, BodyState, PhysicsStepRequest, Quat, Vec3};

/// Position units per metre: positions are integers of 2⁻¹⁴ m (about 61 µm).
pub const POSITION_SCALE: f64 = 16384.0;
/// Velocity units per m/s (or rad/s): velocities are integers of 2⁻¹⁰ m/s (about 1 mm/s).
pub const VELOCITY_SCALE: f64 = 1024.0;
/// Rotation units per unit of a quaternion component: 2⁻¹⁵.
pub const ROTATION_SCALE: f64 = 32768.0;
/// Largest position integer: [`MAX_COORDINATE`] metres.
pub const MAX_POSITION: i64 = MAX_COORDINATE as i64 * POSITION_SCALE as i64;
/// Largest velocity integer: [`MAX_SPEED`] m/s or rad/s.
pub const MAX_VELOCITY: i64 = MAX_SPEED as i64 * VELOCITY_SCALE as i64;
/// Largest magnitude of one of the three smallest components: ⌊2¹⁵/√2⌋. The largest
/// component of a unit quaternion is at least as large as the others, so the others lie
/// within ±1/√2.
pub const MAX_ROTATION_COMPONENT: i16 = 23170;
/// The largest angle between a unit quaternion and its snapped rotation, in radians.
/// Rounding alone moves a rotation by at most about 7e-5 rad; near ties of three or four
/// components, keeping the fixed point costs up to 1.06e-4 rad (the worst of 16 million
/// near-tied inputs, see this module's tests); the bound leaves a margin.
pub const MAX_ROTATION_ERROR: f64 = 1.5e-4;

/// A rotation in smallest-three form: the component of largest magnitude is dropped (the
/// quaternion negated so that it is positive) and recomputed from the other three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantizedRotation {
    /// Index (0..=3 for x, y, z, w) of the dropped component.
    pub largest: u8,
    /// The other three components in index order, in units of 2⁻¹⁵, each within
    /// ±[`MAX_ROTATION_COMPONENT`].
    pub others: [i16; 3],
}

impl QuantizedRotation {
    /// The identity rotation `[0, 0, 0, 1]`.
    pub const IDENTITY: QuantizedRotation = QuantizedRotation { largest: 3, others: [0; 3] };

    /// The lattice rotation nearest to `q`, which need not be normalized (it is scaled to
    /// unit length first). A zero or non-finite quaternion gives the identity.
    ///
    /// The dropped component is the largest of `q` (the first one on ties) unless rounding
    /// the other three would make the recomputed one smaller than one of them (a near
    /// tie): then the next largest component is tried, and if none works, the components
    /// that beat the dropped one are moved one unit towards zero until it is the largest
    /// again. That keeps the fixed point: the dequantized rotation re-quantizes to the
    /// same integers (see [`is_canonical`](Self::is_canonical)).
    pub fn from_quat(q: Quat) -> Self {
        let wide = q.map(f64::from);
        let squared_norm = wide.iter().map(|c| c * c).sum::<f64>();
        if !(squared_norm.is_finite() && squared_norm > 0.0) {
            return Self::IDENTITY;
        }
        // A unit quaternion to within 2⁻²⁰ (any rotation read from a world or from the
        // lattice) is scaled as it is: that moves a component by at most 0.011 of a unit,
        // and spares a square root and a division per rotation.
        let unit = ROTATION_SCALE
            / if (squared_norm - 1.0).abs() <= 1.0 / (1 << 20) as f64 { 1.0 } else { squared_norm.sqrt() };
        let round = |largest: usize| {
            let scale = if q[largest] < 0.0 { -unit } else { unit };
            let limit = f64::from(MAX_ROTATION_COMPONENT);
            let mut others = [0i16; 3];
            for (slot, index) in other_indices(largest).into_iter().enumerate() {
                others[slot] = round_to_i64((wide[index] * scale).clamp(-limit, limit)) as i16;
            }
            QuantizedRotation { largest: largest as u8, others }
        };
        // Ranked on the input itself, not on the scaled values: scaling by 1/norm could
        // round two near-equal components into a tie. The first candidate is the one a
        // dequantized rotation re-quantizes with, so canonical rotations are fixed points.
        let first = round(largest_index(q));
        if first.is_canonical() {
            return first;
        }
        let mut candidates = [0usize, 1, 2, 3];
        candidates.sort_by(|&a, &b| q[b].abs().total_cmp(&q[a].abs()).then(a.cmp(&b)));
        for &largest in &candidates[1..] {
            let rotation = round(largest);
            if largest_index(rotation.to_quat()) == largest {
                return rotation;
            }
        }
        // Three or four near-equal components that round the wrong way for every
        // candidate: the nearest canonical rotation among the candidates' roundings with
        // some components moved a unit towards zero (rare; deterministic: ties keep the
        // first found). Moving a component away from zero never makes the dropped one
        // the largest, and moving two units does not come nearer (measured).
        let mut best: Option<(f64, QuantizedRotation)> = None;
        for &largest in &candidates {
            let rounded = round(largest);
            for shrunk in 1..8 {
                let mut rotation = rounded;
                for (slot, k) in rotation.others.iter_mut().enumerate() {
                    if shrunk & (1 << slot) != 0 {
                        *k -= k.signum();
                    }
                }
                if !rotation.is_canonical() {
                    continue;
                }
                // In f64 before the rounding to f32, which alone would move the dot product
                // by more than the differences compared here.
                let d = rotation.to_unit_f64();
                let dot: f64 = wide.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>();
                let distance = 1.0 - dot.abs() / squared_norm.sqrt();
                if best.is_none_or(|(b, _)| distance < b) {
                    best = Some((distance, rotation));
                }
            }
        }
        if let Some((_, rotation)) = best {
            return rotation;
        }
        // Not expected to be reached; a last resort that always ends.
        let largest = candidates[0];
        let mut rotation = round(largest);
        loop {
            let d = rotation.to_quat();
            if largest_index(d) == largest {
                return rotation;
            }
            // Every pass moves at least one non-zero component towards zero (if the
            // dropped component were 0, the other three would be non-zero: two components
            // of at most 1/√2 cannot make a unit quaternion), so this ends.
            for (slot, index) in other_indices(largest).into_iter().enumerate() {
                if d[index].abs() >= d[largest] {
                    rotation.others[slot] -= rotation.others[slot].signum();
                }
            }
        }
    }

    /// The unit quaternion `[x, y, z, w]` these integers stand for: the three components
    /// are `k × 2⁻¹⁵` (exact in `f32`), the dropped one `√max(0, 1 − Σk²·2⁻³⁰)` computed
    /// in `f64` and rounded to `f32` once.
    pub fn to_quat(self) -> Quat {
        self.to_unit_f64().map(|c| c as f32)
    }

    /// [`to_quat`](Self::to_quat) before the rounding to `f32` (which is exact for the
    /// three transmitted components).
    fn to_unit_f64(self) -> [f64; 4] {
        let mut q = [0.0f64; 4];
        let mut sum_of_squares = 0i64;
        let largest = usize::from(self.largest.min(3));
        for (slot, index) in other_indices(largest).into_iter().enumerate() {
            let k = self.others[slot];
            q[index] = f64::from(k) / ROTATION_SCALE;
            sum_of_squares += i64::from(k) * i64::from(k);
        }
        q[largest] = (1.0 - sum_of_squares as f64 / (ROTATION_SCALE * ROTATION_SCALE)).max(0.0).sqrt();
        q
    }

    /// Whether these integers are what [`from_quat`](Self::from_quat) returns for some
    /// quaternion: the index is 0..=3, every component within ±[`MAX_ROTATION_COMPONENT`],
    /// and the recomputed component is the largest of the dequantized quaternion (the
    /// first one on ties). Exactly these rotations re-quantize to themselves; a decoder
    /// refuses the others.
    pub fn is_canonical(self) -> bool {
        if self.largest > 3 || self.others.iter().any(|k| k.unsigned_abs() > MAX_ROTATION_COMPONENT.unsigned_abs()) {
            return false;
        }
        // In units of 2⁻³⁰: the dropped component squared minus the largest other one
        // squared. Far from zero, the comparison of the f32 values cannot go the other way
        // (their rounding moves them by less than 2⁻²³ each); near zero, compare them.
        let squares = self.others.map(|k| i64::from(k) * i64::from(k));
        let margin = (1i64 << 30) - squares.iter().sum::<i64>() - squares.iter().max().expect("three");
        const CLEAR: i64 = 1 << 12;
        if margin > CLEAR {
            true
        } else if margin < -CLEAR {
            false
        } else {
            largest_index(self.to_quat()) == usize::from(self.largest)
        }
    }
}

impl Default for QuantizedRotation {
    fn default() -> Self {
        Self::IDENTITY
    }
}

/// A body's state on the lattice (see the module documentation for the units).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantizedState {
    /// Position, in units of 2⁻¹⁴ m.
    pub position: [i64; 3],
    /// Rotation, smallest-three.
    pub rotation: QuantizedRotation,
    /// Linear velocity, in units of 2⁻¹⁰ m/s.
    pub linvel: [i64; 3],
    /// Angular velocity, in units of 2⁻¹⁰ rad/s.
    pub angvel: [i64; 3],
    /// Whether the body is asleep.
    pub sleeping: bool,
}

impl QuantizedState {
    /// Whether every value is one that [`quantize`] can return: in range, and a canonical
    /// rotation.
    pub fn is_canonical(&self) -> bool {
        self.position.iter().all(|k| k.unsigned_abs() <= MAX_POSITION.unsigned_abs())
            && self.linvel.iter().chain(&self.angvel).all(|k| k.unsigned_abs() <= MAX_VELOCITY.unsigned_abs())
            && self.rotation.is_canonical()
    }
}

/// The lattice state nearest to `state` (clamped to the largest magnitudes).
pub fn quantize(state: &BodyState) -> QuantizedState {
    QuantizedState {
        position: quantize_position(state.position),
        rotation: QuantizedRotation::from_quat(state.rotation),
        linvel: quantize_velocity(state.linvel),
        angvel: quantize_velocity(state.angvel),
        sleeping: state.sleeping,
    }
}

/// The state these integers stand for.
pub fn dequantize(id: BodyId, q: &QuantizedState) -> BodyState {
    BodyState {
        id,
        position: dequantize_position(q.position),
        rotation: q.rotation.to_quat(),
        linvel: dequantize_velocity(q.linvel),
        angvel: dequantize_velocity(q.angvel),
        sleeping: q.sleeping,
    }
}

/// `dequantize(quantize(state))`: the state moved onto the lattice. Idempotent.
pub fn snap(state: &BodyState) -> BodyState {
    dequantize(state.id, &quantize(state))
}

fn quantize_scaled(v: f32, scale: f64, max: i64) -> i64 {
    // The clamp bounds the infinities; NaN goes through it and becomes 0.
    round_to_i64((f64::from(v) * scale).clamp(-max as f64, max as f64))
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2⁵¹` (callers clamp
/// first); 0 for NaN. Adding 1.5 × 2⁵² leaves no fraction bits, so the IEEE addition
/// itself rounds, and the integer is the difference of the bit patterns: two additions
/// instead of `f64::round` (a library call on baseline x86-64, no SSE4.1) and a saturating
/// cast, which dominated the codec's profile.
#[inline]
pub(crate) fn round_to_i64(x: f64) -> i64 {
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    if x.is_nan() {
        return 0;
    }
    (x + SHIFT).to_bits() as i64 - SHIFT.to_bits() as i64
}

/// A position in units of 2⁻¹⁴ m, each component clamped to ±[`MAX_POSITION`].
pub fn quantize_position(v: Vec3) -> [i64; 3] {
    v.map(|x| quantize_scaled(x, POSITION_SCALE, MAX_POSITION))
}

/// The position these integers stand for (the nearest `f32`; exact within ±1,024 m, and
/// exact everywhere for integers that [`quantize_position`] returned).
pub fn dequantize_position(k: [i64; 3]) -> Vec3 {
    k.map(|k| (k as f64 / POSITION_SCALE) as f32)
}

/// A velocity in units of 2⁻¹⁰ m/s (or rad/s), each component clamped to
/// ±[`MAX_VELOCITY`].
pub fn quantize_velocity(v: Vec3) -> [i64; 3] {
    v.map(|x| quantize_scaled(x, VELOCITY_SCALE, MAX_VELOCITY))
}

/// The velocity these integers stand for.
pub fn dequantize_velocity(k: [i64; 3]) -> Vec3 {
    k.map(|k| (k as f64 / VELOCITY_SCALE) as f32)
}

/// A position moved onto the lattice.
pub fn snap_position(v: Vec3) -> Vec3 {
    dequantize_position(quantize_position(v))
}

/// A velocity moved onto the lattice.
pub fn snap_velocity(v: Vec3) -> Vec3 {
    dequantize_velocity(quantize_velocity(v))
}

/// A rotation moved onto the lattice (normalized; `q` and `-q` give the same bits).
pub fn snap_rotation(q: Quat) -> Quat {
    QuantizedRotation::from_quat(q).to_quat()
}

/// The request with every pose and velocity it carries snapped (bodies to add, teleports,
/// velocities, kinematic targets); forces, impulses, gravity and `dt` are kept bit for
/// bit. This is what [`crate::packed::decode_request`] returns for an encoded request,
/// and what a peer's world does with the request anyway.
pub fn snap_request(request: &PhysicsStepRequest) -> PhysicsStepRequest {
    let mut r = request.clone();
    for d in &mut r.add {
        *d = snap_body(d);
    }
    for p in &mut r.set_pose {
        p.position = snap_position(p.position);
        p.rotation = snap_rotation(p.rotation);
    }
    for v in &mut r.set_velocity {
        v.linvel = snap_velocity(v.linvel);
        v.angvel = snap_velocity(v.angvel);
    }
    for k in &mut r.kinematic_targets {
        k.position = snap_position(k.position);
        k.rotation = snap_rotation(k.rotation);
    }
    r
}

/// A body description with its pose and velocities snapped.
pub fn snap_body(d: &BodyDesc) -> BodyDesc {
    BodyDesc {
        position: snap_position(d.position),
        rotation: snap_rotation(d.rotation),
        linvel: snap_velocity(d.linvel),
        angvel: snap_velocity(d.angvel),
        ..d.clone()
    }
}

/// The index of the component of largest magnitude, the first one on ties.
fn largest_index(q: Quat) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if q[i].abs() > q[best].abs() {
            best = i;
        }
    }
    best
}

/// The three indices other than `largest`, in order.
pub(crate) fn other_indices(largest: usize) -> [usize; 3] {
    match largest {
        0 => [1, 2, 3],
        1 => [0, 2, 3],
        2 => [0, 1, 3],
        _ => [0, 1, 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: usize = 1_000_000;

    fn random_unit_quat(rng: &mut fastrand::Rng) -> Quat {
        loop {
            let q: [f64; 4] = std::array::from_fn(|_| rng.f64() * 2.0 - 1.0);
            let n = q.iter().map(|c| c * c).sum::<f64>().sqrt();
            if n > 0.1 && n <= 1.0 {
                return q.map(|c| (c / n) as f32);
            }
        }
    }

    /// Quaternions whose two, three or four largest components are (nearly) tied: where
    /// the dropped index could flip between quantizing and re-quantizing.
    fn near_tied_quat(rng: &mut fastrand::Rng) -> Quat {
        let ties = 2 + rng.usize(..3);
        let mut q = [0f64; 4];
        let base = rng.f64() * 0.3 + 0.45;
        for c in q.iter_mut().take(ties) {
            *c = base + (rng.f64() - 0.5) * 1.0e-4 * rng.f64().powi(4);
        }
        for c in q.iter_mut().skip(ties) {
            *c = rng.f64() * 0.3;
        }
        for c in &mut q {
            if rng.bool() {
                *c = -*c;
            }
        }
        rng.shuffle(&mut q);
        let n = q.iter().map(|c| c * c).sum::<f64>().sqrt();
        q.map(|c| (c / n) as f32)
    }

    fn angle_between(a: Quat, b: Quat) -> f64 {
        let norm = |q: Quat| q.iter().map(|&c| f64::from(c) * f64::from(c)).sum::<f64>().sqrt();
        let dot: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum::<f64>();
        2.0 * (dot.abs() / (norm(a) * norm(b))).min(1.0).acos()
    }

    #[test]
    fn rotations_are_fixed_points_and_within_the_documented_error() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut worst = 0.0f64;
        for i in 0..SAMPLES {
            let q = if i % 2 == 0 { random_unit_quat(&mut rng) } else { near_tied_quat(&mut rng) };
            let quantized = QuantizedRotation::from_quat(q);
            assert!(quantized.is_canonical(), "{q:?} -> {quantized:?}");
            let back = quantized.to_quat();
            assert_eq!(QuantizedRotation::from_quat(back), quantized, "not a fixed point: {q:?}");
            // `-q` is the same rotation, and a slightly denormalized input too.
            assert_eq!(QuantizedRotation::from_quat(back.map(|c| -c)), quantized, "{q:?}");
            let error = angle_between(q, back);
            assert!(error <= MAX_ROTATION_ERROR, "{q:?}: {error} rad");
            worst = worst.max(error);
        }
        println!("largest rotation error: {worst:e} rad");
    }

    #[test]
    fn exact_ties_and_special_rotations() {
        let h = std::f32::consts::FRAC_1_SQRT_2;
        for q in [
            [0.5, 0.5, 0.5, 0.5],
            [-0.5, 0.5, -0.5, 0.5],
            [h, h, 0.0, 0.0],
            [0.0, 0.0, h, -h],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, -1.0],
            [0.0, 0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0, 2.0],
        ] {
            let quantized = QuantizedRotation::from_quat(q);
            assert!(quantized.is_canonical(), "{q:?}");
            assert_eq!(QuantizedRotation::from_quat(quantized.to_quat()), quantized, "{q:?}");
            assert!(angle_between(q, quantized.to_quat()) <= MAX_ROTATION_ERROR, "{q:?}");
        }
        assert_eq!(QuantizedRotation::from_quat([0.0, 0.0, 0.0, 1.0]).to_quat(), [0.0, 0.0, 0.0, 1.0]);
        for bad in [[0.0; 4], [f32::NAN, 0.0, 0.0, 1.0], [f32::INFINITY, 0.0, 0.0, 0.0]] {
            assert_eq!(QuantizedRotation::from_quat(bad), QuantizedRotation::IDENTITY, "{bad:?}");
        }
    }

    #[test]
    fn every_canonical_rotation_is_a_fixed_point() {
        // The other direction: random integers, kept when canonical, re-quantize to
        // themselves (what the decoders rely on when they accept a canonical rotation).
        let mut rng = fastrand::Rng::with_seed(7);
        let mut canonical = 0;
        for _ in 0..SAMPLES {
            let r = QuantizedRotation {
                largest: rng.u8(..4),
                others: std::array::from_fn(|_| rng.i16(-MAX_ROTATION_COMPONENT..=MAX_ROTATION_COMPONENT) / 2),
            };
            if r.is_canonical() {
                canonical += 1;
                assert_eq!(QuantizedRotation::from_quat(r.to_quat()), r);
            }
            // The integer fast path agrees with comparing the dequantized values, near
            // ties too (the three components of a near tie, moved about a few units).
            let exact = |r: QuantizedRotation| largest_index(r.to_quat()) == usize::from(r.largest);
            assert_eq!(r.is_canonical(), exact(r), "{r:?}");
            let tie = rng.i16(16300..=18930);
            let near = QuantizedRotation {
                largest: rng.u8(..4),
                others: std::array::from_fn(|_| (tie + rng.i16(-40..=40)) * if rng.bool() { 1 } else { -1 }),
            };
            assert_eq!(near.is_canonical(), exact(near), "{near:?}");
        }
        assert!(canonical > SAMPLES / 4, "{canonical}");
    }

    #[test]
    fn positions_and_velocities_are_fixed_points_within_half_a_unit() {
        let mut rng = fastrand::Rng::with_seed(42);
        for i in 0..SAMPLES {
            // Magnitudes from 1e-6 to the largest, log-uniform, and some exactly representable.
            let magnitude = 10f64.powf(rng.f64() * 12.0 - 6.0);
            let x = ((rng.f64() * 2.0 - 1.0) * magnitude) as f32;
            let x = if i % 10 == 0 { x.round() } else { x };
            let p = [x, -x, x * 0.5];
            let k = quantize_position(p);
            let back = dequantize_position(k);
            assert_eq!(quantize_position(back), k, "{p:?}");
            assert_eq!(snap_position(back), back);
            for (a, b) in p.iter().zip(&back) {
                if a.abs() <= MAX_COORDINATE {
                    let error = (f64::from(*a) - f64::from(*b)).abs();
                    assert!(error <= 1.0 / 32768.0, "{a} -> {b}");
                    if a.abs() >= 1024.0 {
                        assert_eq!(error, 0.0, "{a}");
                    }
                }
            }
            let v = [x.clamp(-2.0e5, 2.0e5), x * 0.25, -x];
            let k = quantize_velocity(v);
            let back = dequantize_velocity(k);
            assert_eq!(quantize_velocity(back), k, "{v:?}");
            for (a, b) in v.iter().zip(&back) {
                if a.abs() <= MAX_SPEED {
                    assert!((f64::from(*a) - f64::from(*b)).abs() <= 1.0 / 2048.0, "{a} -> {b}");
                }
            }
        }
    }

    #[test]
    fn out_of_range_and_non_finite_values_are_clamped() {
        assert_eq!(quantize_position([f32::NAN, f32::INFINITY, -1.0e30]), [0, MAX_POSITION, -MAX_POSITION]);
        assert_eq!(quantize_velocity([f32::NEG_INFINITY, 1.0e6, 0.0]), [-MAX_VELOCITY, MAX_VELOCITY, 0]);
        assert_eq!(dequantize_position([MAX_POSITION, -MAX_POSITION, 0]), [MAX_COORDINATE, -MAX_COORDINATE, 0.0]);
        assert_eq!(dequantize_velocity([MAX_VELOCITY, 0, 0])[0], MAX_SPEED);
        let state = BodyState {
            id: 3,
            position: [f32::NAN; 3],
            rotation: [f32::NAN; 4],
            linvel: [f32::INFINITY; 3],
            angvel: [0.0; 3],
            sleeping: true,
        };
        let q = quantize(&state);
        assert!(q.is_canonical());
        let snapped = snap(&state);
        assert_eq!(snapped.rotation, [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(snap(&snapped), snapped);
        assert_eq!(snapped.id, 3);
        assert!(snapped.sleeping);
    }

    #[test]
    fn rounding_matches_the_standard_library() {
        let mut rng = fastrand::Rng::with_seed(3);
        let specials = [0.5, -0.5, 1.5, -2.5, 0.49999999999999994, 1125899906842623.5, -0.0, 1e15 + 0.5, 2f64.powi(50)];
        for x in specials.into_iter().chain((0..SAMPLES).map(|_| (rng.f64() - 0.5) * 10f64.powi(rng.i32(0..16)))) {
            assert_eq!(round_to_i64(x), x.round_ties_even() as i64, "{x}");
        }
        assert_eq!(round_to_i64(f64::NAN), 0);
    }

    #[test]
    fn snapping_a_state_is_idempotent() {
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..SAMPLES / 4 {
            let mut f = || (rng.f32() - 0.5) * 200.0;
            let state = BodyState {
                id: 1,
                position: [f(), f(), f()],
                rotation: [f(), f(), f(), f()],
                linvel: [f(), f(), f()],
                angvel: [f(), f(), f()],
                sleeping: false,
            };
            let once = snap(&state);
            assert_eq!(quantize(&once), quantize(&state));
            let twice = snap(&once);
            let bits = |s: &BodyState| {
                s.position
                    .iter()
                    .chain(&s.rotation)
                    .chain(&s.linvel)
                    .chain(&s.angvel)
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&once), bits(&twice));
        }
    }
}
