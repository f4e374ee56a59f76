//! The binary encoding of `physics_step` payloads: requests ([`encode_request`],
//! [`decode_request`]) and successful results, as deltas against the session's previous
//! result ([`ResultEncoder`], [`ResultDecoder`]).
//!
//! # Frames
//!
//! Every payload starts with a format byte (`0x50` `'P'` for a request, `0x51` `'Q'` for a
//! result) and a version byte (1); a decoder refuses any other version with a clear
//! error. Integers are LEB128 varints (the shortest form only), signed ones zigzag-coded;
//! `f32`s are their 4 IEEE bytes, little-endian. Every decoder checks everything: a
//! truncated frame, an unknown version, a count larger than the bytes left could hold or
//! than [`MAX_BODIES_PER_SESSION`], reserved bits, unsorted or repeated ids, values off
//! the lattice and trailing bytes are all errors ([`PackedError`]), never panics (see
//! `protocol/tests/fuzz.rs`).
//!
//! # Requests
//!
//! Poses and velocities (bodies to add, `set_pose`, `set_velocity`, `kinematic_targets`)
//! travel on the lattice of [`crate::quantize`]: a peer snaps them on arrival anyway, so
//! quantizing them on the wire loses nothing the world would keep, and
//! `decode_request(encode_request(r)) == snap_request(r)`
//! ([`crate::quantize::snap_request`]). Forces, impulses, gravity, `dt`, shape sizes and
//! materials are inputs that the peer never echoes back: they travel bit for bit (so a
//! local world and a peer's world get the same numbers), with each component that is
//! `+0.0` left out by a mask instead of being quantized. List order is kept (it is the
//! order of application); ids are coded as the zigzag difference from the previous id of
//! the list, small when the list is sorted.
//!
//! # Results
//!
//! Only successful results are packed (a `status: error` result stays JSON:
//! [`crate::TaskError`]). A result is either a keyframe (after a snapshot or a resync, and
//! answering a `physics_step_full`: every body coded absolutely, ids as ascending gaps;
//! a decoder accepts one whatever it holds) or a delta against the previous result of the
//! session. A delta's header names that result's tick (`baseline_tick`), the
//! identity of the keyframe its chain started from (4 bytes: a delta from another chain
//! that happens to share the tick is refused), the tick's duration (`dt × steps`, an `f32`) and a velocity `drift`; then comes one bit
//! per body of the previous result saying whether this one carries it again, and the ids
//! of the bodies it adds. A carried body is coded as residuals against a prediction from
//! its previous state, a new one absolutely. The predictions follow rapier's integrator
//! (four substeps per step), computed in `f64` from the integers on both sides:
//!
//! - linear velocity: the previous one plus the frame's `drift` (the median change over
//!   the frame: gravity × the tick's duration while bodies fall), zero when asleep;
//! - angular velocity: the previous one, zero when asleep;
//! - position: the previous one moved by `(3·v₀ + 5·v₁)/8 × duration` (what four
//!   substeps cover under a constant acceleration), unmoved when asleep;
//! - rotation: the previous one turned by the new angular velocity in four substeps,
//!   quantized; one whose dropped component changed, or whose residuals would be longer,
//!   is sent whole.
//!
//! A body's header is one byte (asleep, and which linear and angular velocity components
//! are sent), and a second one when its position or rotation is (which components, or the
//! dropped component of a whole rotation); only non-zero components are sent. A body
//! exactly as predicted costs nothing but its bit in a bitmap of such bodies (when the
//! bitmap is shorter than a zero header byte each). The baseline is bounded: encoder and
//! decoder keep only the previous result's bodies (at most [`MAX_BODIES_PER_SESSION`]).
//! A decoder refuses a delta whose baseline is not the last result it decoded (the gamer
//! resyncs), and a failed decode leaves it unchanged.
//!
//! What this costs is measured by `sim/benches/bandwidth.rs`: 900 cubes dropped, settling
//! and pushed around take 1.14 bytes per body per frame, requests included (JSON: 29).
//!
//! ```
//! use p2c2r_protocol::packed::{ResultDecoder, ResultEncoder};
//! use p2c2r_protocol::physics::{BodyState, PhysicsStepResult};
//!
//! let ball = |tick: u64| BodyState {
//!     id: 7,
//!     position: [0.0, 10.0 - tick as f32 * 0.25, 0.0],
//!     rotation: [0.0, 0.0, 0.0, 1.0],
//!     linvel: [0.0, -15.0, 0.0],
//!     angvel: [0.0; 3],
//!     sleeping: false,
//! };
//! let (mut encoder, mut decoder) = (ResultEncoder::new(), ResultDecoder::new());
//! let mut frame = Vec::new();
//! for tick in 0..3 {
//!     let result = PhysicsStepResult { tick, bodies: vec![ball(tick)], ..Default::default() };
//!     frame.clear();
//!     encoder.encode(&result, tick == 0, 1.0 / 60.0, &mut frame).unwrap();
//!     assert_eq!(decoder.decode(&frame).unwrap(), result);
//! }
//! // 13 bytes of header (format, version, flags, tick, baseline, keyframe identity,
//! // duration), 1 saying that the previous frame's ball is carried on, 1 that no body is
//! // new, and a zero header: the ball moved exactly as predicted.
//! assert_eq!(frame.len(), 16);
//! ```

use crate::TaskStatus;
use crate::limits::{self, MAX_BODIES_PER_SESSION};
use crate::physics::{
    ApplyForce, ApplyImpulse, BodyDesc, BodyId, BodyType, CombineRule, CompoundPart, EventKind, Groups, JointDesc,
    JointId, JointKind, JointMotor, KinematicTarget, MassProperties, Offset, PhysicsEvent, PhysicsStepRequest,
    PhysicsStepResult, SetPose, SetVelocity, Shape, Vec3, active_events, locked_axes,
};
use crate::quantize::{
    MAX_POSITION, MAX_ROTATION_COMPONENT, MAX_VELOCITY, POSITION_SCALE, QuantizedRotation, QuantizedState,
    ROTATION_SCALE, VELOCITY_SCALE, dequantize, dequantize_position, dequantize_velocity, other_indices, quantize,
    quantize_position, quantize_velocity, round_to_i64,
};

/// The first byte of a packed `physics_step` request.
pub const REQUEST_FORMAT: u8 = 0x50;
/// The first byte of a packed successful `physics_step` result.
pub const RESULT_FORMAT: u8 = 0x51;
/// The version this build writes and reads (the second byte).
pub const VERSION: u8 = 1;

/// Why a packed payload was refused. The message is fit for an `invalid_payload` task
/// error; [`needs_resync`](Self::needs_resync) says when the gamer must send a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackedError {
    /// The payload is empty.
    #[error("the packed payload is empty")]
    Empty,
    /// The first byte names another format.
    #[error("not a packed physics {expected}: the format byte is {found:#04x}, expected {expected_byte:#04x}")]
    WrongFormat {
        /// What was expected ("request" or "result").
        expected: &'static str,
        /// Its format byte.
        expected_byte: u8,
        /// The byte found.
        found: u8,
    },
    /// The version byte is not [`VERSION`].
    #[error("unknown packed format version {0}; this build reads version {VERSION}")]
    UnknownVersion(u8),
    /// The frame ends early.
    #[error("truncated frame: it ends inside {0}")]
    Truncated(&'static str),
    /// A varint is longer than 10 bytes, overflows 64 bits or is not in its shortest form.
    #[error("malformed varint in {0}")]
    BadVarint(&'static str),
    /// A count is larger than the protocol allows.
    #[error("{what} holds {count} entries; at most {max} are allowed")]
    TooMany {
        /// The list.
        what: &'static str,
        /// The count found.
        count: u64,
        /// The largest allowed.
        max: usize,
    },
    /// A count is larger than the bytes left in the frame could hold.
    #[error("{what} claims {count} entries but only {left} bytes are left")]
    CountPastEnd {
        /// The list.
        what: &'static str,
        /// The count found.
        count: u64,
        /// Bytes left in the frame.
        left: usize,
    },
    /// A list that must be sorted by id is not, or holds an id twice.
    #[error("{what}: ids must be strictly ascending, got {id} after {previous}")]
    Unsorted {
        /// The list.
        what: &'static str,
        /// The id found.
        id: BodyId,
        /// The id before it.
        previous: BodyId,
    },
    /// An id gap runs past the largest id.
    #[error("{0}: an id past {max}", max = u64::MAX)]
    IdOverflow(&'static str),
    /// A value is outside the lattice's bounds.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    /// A rotation that quantization never produces.
    #[error("{0}: a rotation off the lattice")]
    BadRotation(&'static str),
    /// Bits that this version leaves unused are set, or a tag is unknown.
    #[error("{0}: unknown tag or reserved bits set")]
    Reserved(&'static str),
    /// A list is flagged present but empty.
    #[error("{0} is flagged present but empty")]
    EmptyList(&'static str),
    /// Bytes follow the end of the frame.
    #[error("{0} bytes after the end of the frame")]
    TrailingBytes(usize),
    /// A delta result against another tick than the last one decoded.
    #[error("delta against tick {baseline} but the last decoded tick is {last}; resync")]
    WrongBaseline {
        /// The frame's baseline tick.
        baseline: u64,
        /// The last tick the decoder holds.
        last: u64,
    },
    /// A delta result continuing another keyframe than the decoder's (a keyframe this
    /// decoder never saw, e.g. a snapshot's answer that was lost, reusing a tick).
    #[error("delta continuing keyframe {frame:08x} but the decoder holds keyframe {held:08x}; resync")]
    WrongStream {
        /// The stream the frame continues.
        frame: u32,
        /// The stream the decoder holds.
        held: u32,
    },
    /// A delta result when the decoder holds no result yet.
    #[error("delta against tick {0} but no result was decoded yet (a keyframe comes first); resync")]
    NoBaseline(u64),
    /// Only `status: success` results are packed.
    #[error("only successful results are packed; errors stay JSON")]
    NotSuccess,
    /// A digest that is not 16 lowercase hex digits.
    #[error("the digest must be 16 lowercase hex digits, got {0:?}")]
    BadDigest(String),
}

impl PackedError {
    /// The decoder's baseline is not the one the frame needs: the gamer should send a full
    /// snapshot (whose result is a keyframe).
    pub fn needs_resync(&self) -> bool {
        matches!(self, PackedError::WrongBaseline { .. } | PackedError::WrongStream { .. } | PackedError::NoBaseline(_))
    }
}

type Result<T> = std::result::Result<T, PackedError>;

// ---------------------------------------------------------------------------------------
// Primitives.

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn put_signed(out: &mut Vec<u8>, v: i64) {
    put_varint(out, zigzag(v));
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_f32(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes the components of `v` whose bit is set in `mask`.
fn put_signed_masked(out: &mut Vec<u8>, v: [i64; 3], mask: u8) {
    for (i, k) in v.into_iter().enumerate() {
        if mask & (1 << i) != 0 {
            put_signed(out, k);
        }
    }
}

fn nonzero_mask(v: [i64; 3]) -> u8 {
    u8::from(v[0] != 0) | u8::from(v[1] != 0) << 1 | u8::from(v[2] != 0) << 2
}

/// Bit `i` set when component `i` is not `+0.0` (a `-0.0` is sent: bits, not values).
fn f32_mask(v: Vec3) -> u8 {
    u8::from(v[0].to_bits() != 0) | u8::from(v[1].to_bits() != 0) << 1 | u8::from(v[2].to_bits() != 0) << 2
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        let b = *self.bytes.get(self.pos).ok_or(PackedError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let end = self.pos.checked_add(N).filter(|&end| end <= self.bytes.len()).ok_or(PackedError::Truncated(what))?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(a)
    }

    fn f32(&mut self, what: &'static str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    fn f32s<const N: usize>(&mut self, what: &'static str) -> Result<[f32; N]> {
        let mut xs = [0.0; N];
        for x in &mut xs {
            *x = self.f32(what)?;
        }
        Ok(xs)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16> {
        Ok(i16::from_le_bytes(self.array(what)?))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(PackedError::BadVarint(what));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                // The shortest form only: one encoding per value.
                if b == 0 && shift > 0 {
                    return Err(PackedError::BadVarint(what));
                }
                return Ok(v);
            }
        }
        Err(PackedError::BadVarint(what))
    }

    fn signed(&mut self, what: &'static str) -> Result<i64> {
        Ok(unzigzag(self.varint(what)?))
    }

    /// A count of entries of at least `min_bytes` each: refused before anything is
    /// allocated when the protocol or the bytes left cannot hold it.
    fn count(&mut self, what: &'static str, min_bytes: usize) -> Result<usize> {
        self.count_up_to(what, min_bytes, MAX_BODIES_PER_SESSION)
    }

    /// [`Reader::count`] with a maximum of its own.
    fn count_up_to(&mut self, what: &'static str, min_bytes: usize, max: usize) -> Result<usize> {
        let count = self.varint(what)?;
        if count > max as u64 {
            return Err(PackedError::TooMany { what, count, max });
        }
        if count > (self.left() / min_bytes) as u64 {
            return Err(PackedError::CountPastEnd { what, count, left: self.left() });
        }
        Ok(count as usize)
    }

    fn signed_masked(&mut self, what: &'static str, mask: u8) -> Result<[i64; 3]> {
        let mut v = [0i64; 3];
        for (i, k) in v.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *k = self.signed(what)?;
            }
        }
        Ok(v)
    }

    /// The components of `mask`, each of which must be non-zero (a zero one would not have
    /// been sent: one encoding per value).
    fn nonzero_masked(&mut self, what: &'static str, mask: u8) -> Result<[i64; 3]> {
        let v = self.signed_masked(what, mask)?;
        if nonzero_mask(v) != mask {
            return Err(PackedError::Reserved(what));
        }
        Ok(v)
    }

    fn f32_masked(&mut self, what: &'static str, mask: u8) -> Result<Vec3> {
        let mut v = [0.0f32; 3];
        for (i, x) in v.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *x = self.f32(what)?;
            }
        }
        Ok(v)
    }

    fn finish(&self) -> Result<()> {
        match self.left() {
            0 => Ok(()),
            n => Err(PackedError::TrailingBytes(n)),
        }
    }

    fn header(&mut self, expected: &'static str, expected_byte: u8) -> Result<()> {
        let found = self.u8("the format byte").map_err(|_| PackedError::Empty)?;
        if found != expected_byte {
            return Err(PackedError::WrongFormat { expected, expected_byte, found });
        }
        match self.u8("the version byte")? {
            VERSION => Ok(()),
            v => Err(PackedError::UnknownVersion(v)),
        }
    }
}

fn check_position(k: [i64; 3], what: &'static str) -> Result<[i64; 3]> {
    if k.iter().all(|k| k.unsigned_abs() <= MAX_POSITION.unsigned_abs()) {
        Ok(k)
    } else {
        Err(PackedError::OutOfRange(what))
    }
}

fn check_velocity(k: [i64; 3], what: &'static str) -> Result<[i64; 3]> {
    if k.iter().all(|k| k.unsigned_abs() <= MAX_VELOCITY.unsigned_abs()) {
        Ok(k)
    } else {
        Err(PackedError::OutOfRange(what))
    }
}

fn check_rotation(r: QuantizedRotation, what: &'static str) -> Result<QuantizedRotation> {
    if r.is_canonical() { Ok(r) } else { Err(PackedError::BadRotation(what)) }
}

fn put_rotation_others(out: &mut Vec<u8>, r: QuantizedRotation) {
    for k in r.others {
        put_i16(out, k);
    }
}

fn read_rotation_others(r: &mut Reader<'_>, largest: u8, what: &'static str) -> Result<QuantizedRotation> {
    let others = [r.i16(what)?, r.i16(what)?, r.i16(what)?];
    check_rotation(QuantizedRotation { largest, others }, what)
}

/// A list's ids as zigzag differences from the previous id (wrapping, so every `u64`
/// round-trips and the list keeps its order).
struct IdWriter(BodyId);

impl IdWriter {
    fn put(&mut self, out: &mut Vec<u8>, id: BodyId) {
        put_signed(out, id.wrapping_sub(self.0) as i64);
        self.0 = id;
    }
}

struct IdReader(BodyId);

impl IdReader {
    fn read(&mut self, r: &mut Reader<'_>, what: &'static str) -> Result<BodyId> {
        self.0 = self.0.wrapping_add(r.signed(what)? as u64);
        Ok(self.0)
    }
}

// ---------------------------------------------------------------------------------------
// Requests.

const REQ_SNAPSHOT: u8 = 1;
const REQ_GRAVITY: u8 = 1 << 1;
const REQ_STEPS: u8 = 1 << 2;

const LIST_ADD: u8 = 1;
const LIST_REMOVE: u8 = 1 << 1;
const LIST_SET_POSE: u8 = 1 << 2;
const LIST_SET_VELOCITY: u8 = 1 << 3;
const LIST_FORCES: u8 = 1 << 4;
const LIST_IMPULSES: u8 = 1 << 5;
const LIST_TARGETS: u8 = 1 << 6;
/// A second list mask byte follows.
const LIST_MORE: u8 = 1 << 7;
// The second list mask.
const LIST_WAKE: u8 = 1;
const LIST_SLEEP: u8 = 1 << 1;
const LIST_ADD_JOINTS: u8 = 1 << 2;
const LIST_REMOVE_JOINTS: u8 = 1 << 3;
const LIST_TOUCHING: u8 = 1 << 4;
// A joint to add: its flags byte (bits 0-2 the kind: 0 fixed, 1 revolute, 2 prismatic,
// 3 spherical, 4 rope, 5 spring).
const JOINT_KIND_MASK: u8 = 0b111;
const JOINT_BODY2: u8 = 1 << 3;
const JOINT_NO_CONTACTS: u8 = 1 << 4;
const JOINT_LIMITS: u8 = 1 << 5;
const JOINT_MOTOR: u8 = 1 << 6;
const JOINT_MOTOR_MAX_FORCE: u8 = 1 << 7;

// A body to add: first flags byte.
const ADD_SHAPE_MASK: u8 = 0b11;
const ADD_TYPE_SHIFT: u8 = 2;
const ADD_CCD: u8 = 1 << 4;
const ADD_SLEEPING: u8 = 1 << 5;
const ADD_MASS: u8 = 1 << 6;
const ADD_DENSITY: u8 = 1 << 7;
// Second flags byte: what differs from the defaults.
const ADD_FRICTION: u8 = 1;
const ADD_RESTITUTION: u8 = 1 << 1;
const ADD_LINEAR_DAMPING: u8 = 1 << 2;
const ADD_ANGULAR_DAMPING: u8 = 1 << 3;
const ADD_ROTATION: u8 = 1 << 4;
const ADD_LINVEL: u8 = 1 << 5;
const ADD_ANGVEL: u8 = 1 << 6;
/// A varint of extra properties follows the flags (see `EXTRA_*`).
const ADD_EXTRA: u8 = 1 << 7;
// A body's shape in its first flags byte: 0 a box, 1 a ball, 2 a y capsule, 3 a shape
// tagged after the flags (`SHAPE_*`).
const ADD_SHAPE_TAGGED: u8 = 3;
// Extra properties of a body to add, each written only when it differs from the default.
const EXTRA_COLLIDER_OFFSET: u64 = 1;
const EXTRA_GRAVITY_SCALE: u64 = 1 << 1;
const EXTRA_LOCKED_AXES: u64 = 1 << 2;
const EXTRA_DOMINANCE: u64 = 1 << 3;
const EXTRA_ADDITIONAL_MASS: u64 = 1 << 4;
const EXTRA_MASS_PROPERTIES: u64 = 1 << 5;
const EXTRA_FRICTION_COMBINE: u64 = 1 << 6;
const EXTRA_RESTITUTION_COMBINE: u64 = 1 << 7;
const EXTRA_COLLISION_GROUPS: u64 = 1 << 8;
const EXTRA_SOLVER_GROUPS: u64 = 1 << 9;
const EXTRA_SENSOR: u64 = 1 << 10;
const EXTRA_ACTIVE_EVENTS: u64 = 1 << 11;
const EXTRA_FORCE_THRESHOLD: u64 = 1 << 12;
/// Bits past the extras this version knows.
const EXTRA_UNKNOWN: u64 = !0 << 13;
// Shape tags.
const SHAPE_BOX: u8 = 0;
const SHAPE_BALL: u8 = 1;
const SHAPE_CAPSULE_Y: u8 = 2;
const SHAPE_CAPSULE_X: u8 = 3;
const SHAPE_CAPSULE_Z: u8 = 4;
const SHAPE_CYLINDER: u8 = 5;
const SHAPE_CONE: u8 = 6;
const SHAPE_CONVEX_HULL: u8 = 7;
const SHAPE_TRIMESH: u8 = 8;
const SHAPE_HEIGHTFIELD: u8 = 9;
const SHAPE_COMPOUND: u8 = 10;
const SHAPE_CACHED: u8 = 11;

// A pose (set_pose, kinematic_targets): bits 0-2 the non-zero position components, bit 3
// a rotation other than the identity, bits 4-5 its dropped component.
const POSE_ROTATION: u8 = 1 << 3;
const POSE_INDEX_SHIFT: u8 = 4;

const DEFAULT_FRICTION: f32 = 0.5;

/// Appends the packed form of `request` to `out`. Poses and velocities are quantized (see
/// the module documentation); everything else is kept bit for bit. A list longer than
/// [`MAX_BODIES_PER_SESSION`] is written but refused by [`decode_request`] (and by peers).
pub fn encode_request(request: &PhysicsStepRequest, out: &mut Vec<u8>) {
    let r = request;
    let mut flags = 0;
    if r.snapshot {
        flags |= REQ_SNAPSHOT;
    }
    if r.gravity.is_some() {
        flags |= REQ_GRAVITY;
    }
    if r.steps != 1 {
        flags |= REQ_STEPS;
    }
    let lists = [
        (LIST_ADD, r.add.is_empty()),
        (LIST_REMOVE, r.remove.is_empty()),
        (LIST_SET_POSE, r.set_pose.is_empty()),
        (LIST_SET_VELOCITY, r.set_velocity.is_empty()),
        (LIST_FORCES, r.forces.is_empty()),
        (LIST_IMPULSES, r.impulses.is_empty()),
        (LIST_TARGETS, r.kinematic_targets.is_empty()),
    ]
    .iter()
    .filter(|(_, empty)| !empty)
    .fold(0, |mask, (bit, _)| mask | bit);
    let more = [
        (LIST_WAKE, r.wake.is_empty()),
        (LIST_SLEEP, r.sleep.is_empty()),
        (LIST_ADD_JOINTS, r.add_joints.is_empty()),
        (LIST_REMOVE_JOINTS, r.remove_joints.is_empty()),
        (LIST_TOUCHING, r.touching.is_empty()),
    ]
    .iter()
    .filter(|(_, empty)| !empty)
    .fold(0, |mask, (bit, _)| mask | bit);
    if more == 0 {
        out.extend_from_slice(&[REQUEST_FORMAT, VERSION, flags, lists]);
    } else {
        out.extend_from_slice(&[REQUEST_FORMAT, VERSION, flags, lists | LIST_MORE, more]);
    }
    put_varint(out, r.tick);
    put_f32(out, r.dt);
    if r.steps != 1 {
        put_varint(out, u64::from(r.steps));
    }
    if let Some(g) = r.gravity {
        g.iter().for_each(|&x| put_f32(out, x));
    }
    if !r.add.is_empty() {
        put_varint(out, r.add.len() as u64);
        let mut ids = IdWriter(0);
        for d in &r.add {
            ids.put(out, d.id);
            put_body(out, d);
        }
    }
    put_id_list(out, &r.remove);
    if !r.set_pose.is_empty() {
        put_varint(out, r.set_pose.len() as u64);
        let mut ids = IdWriter(0);
        for p in &r.set_pose {
            ids.put(out, p.id);
            put_pose(out, p.position, p.rotation);
        }
    }
    if !r.set_velocity.is_empty() {
        put_varint(out, r.set_velocity.len() as u64);
        let mut ids = IdWriter(0);
        for v in &r.set_velocity {
            ids.put(out, v.id);
            let (linvel, angvel) = (quantize_velocity(v.linvel), quantize_velocity(v.angvel));
            let (lin_mask, ang_mask) = (nonzero_mask(linvel), nonzero_mask(angvel));
            out.push(lin_mask | ang_mask << 3);
            put_signed_masked(out, linvel, lin_mask);
            put_signed_masked(out, angvel, ang_mask);
        }
    }
    if !r.forces.is_empty() {
        put_varint(out, r.forces.len() as u64);
        let mut ids = IdWriter(0);
        for f in &r.forces {
            ids.put(out, f.id);
            put_vector_pair(out, f.force, f.torque);
        }
    }
    if !r.impulses.is_empty() {
        put_varint(out, r.impulses.len() as u64);
        let mut ids = IdWriter(0);
        for i in &r.impulses {
            ids.put(out, i.id);
            put_vector_pair(out, i.impulse, i.torque_impulse);
        }
    }
    if !r.kinematic_targets.is_empty() {
        put_varint(out, r.kinematic_targets.len() as u64);
        let mut ids = IdWriter(0);
        for k in &r.kinematic_targets {
            ids.put(out, k.id);
            put_pose(out, k.position, k.rotation);
        }
    }
    put_id_list(out, &r.wake);
    put_id_list(out, &r.sleep);
    if !r.add_joints.is_empty() {
        put_varint(out, r.add_joints.len() as u64);
        let mut ids = IdWriter(0);
        for j in &r.add_joints {
            ids.put(out, j.id);
            put_joint(out, j);
        }
    }
    put_id_list(out, &r.remove_joints);
    if !r.touching.is_empty() {
        // Each pair: its first id against the previous pair's, its second against its
        // first (both small when the pairs are sorted).
        put_varint(out, r.touching.len() as u64);
        let mut ids = IdWriter(0);
        for &[a, b] in &r.touching {
            ids.put(out, a);
            put_signed(out, b.wrapping_sub(a) as i64);
        }
    }
}

/// A list of ids (none written when empty: the list mask says so): its count, then each
/// id coded against the previous one.
fn put_id_list(out: &mut Vec<u8>, list: &[u64]) {
    if !list.is_empty() {
        put_varint(out, list.len() as u64);
        let mut ids = IdWriter(0);
        for &id in list {
            ids.put(out, id);
        }
    }
}

/// A joint after its id: flags, bodies, anchors (a masked pair of vectors), what its kind
/// holds, limits and motor (floats bit for bit).
fn put_joint(out: &mut Vec<u8>, j: &JointDesc) {
    let (kind, limits, motor) = match j.kind {
        JointKind::Fixed => (0, None, None),
        JointKind::Revolute { limits, motor, .. } => (1, limits, motor),
        JointKind::Prismatic { limits, motor, .. } => (2, limits, motor),
        JointKind::Spherical => (3, None, None),
        JointKind::Rope { .. } => (4, None, None),
        JointKind::Spring { .. } => (5, None, None),
    };
    let mut flags = kind;
    for (set, bit) in [
        (j.body2.is_some(), JOINT_BODY2),
        (!j.contacts_enabled, JOINT_NO_CONTACTS),
        (limits.is_some(), JOINT_LIMITS),
        (motor.is_some(), JOINT_MOTOR),
        (motor.is_some_and(|m| m.max_force.is_some()), JOINT_MOTOR_MAX_FORCE),
    ] {
        if set {
            flags |= bit;
        }
    }
    out.push(flags);
    put_varint(out, j.body1);
    if let Some(body2) = j.body2 {
        put_varint(out, body2);
    }
    put_vector_pair(out, j.anchor1, j.anchor2);
    match j.kind {
        JointKind::Revolute { axis, .. } | JointKind::Prismatic { axis, .. } => put_f32s(out, &axis),
        JointKind::Rope { max_distance } => put_f32(out, max_distance),
        JointKind::Spring { rest_length, stiffness, damping } => put_f32s(out, &[rest_length, stiffness, damping]),
        JointKind::Fixed | JointKind::Spherical => {}
    }
    if let Some(limits) = limits {
        put_f32s(out, &limits);
    }
    if let Some(m) = motor {
        put_f32s(out, &[m.target_position, m.target_velocity, m.stiffness, m.damping]);
        if let Some(max) = m.max_force {
            put_f32(out, max);
        }
    }
}

fn read_joint(r: &mut Reader<'_>, id: JointId) -> Result<JointDesc> {
    const WHAT: &str = "add_joints";
    let flags = r.u8(WHAT)?;
    let body1 = r.varint(WHAT)?;
    let body2 = if flags & JOINT_BODY2 != 0 { Some(r.varint(WHAT)?) } else { None };
    let (anchor1, anchor2) = read_vector_pair(r, WHAT)?;
    let axial = matches!(flags & JOINT_KIND_MASK, 1 | 2);
    if !axial && flags & (JOINT_LIMITS | JOINT_MOTOR) != 0
        || flags & JOINT_MOTOR == 0 && flags & JOINT_MOTOR_MAX_FORCE != 0
    {
        return Err(PackedError::Reserved("add_joints: flags"));
    }
    let mut kind = match flags & JOINT_KIND_MASK {
        0 => JointKind::Fixed,
        1 => JointKind::Revolute { axis: r.f32s(WHAT)?, limits: None, motor: None },
        2 => JointKind::Prismatic { axis: r.f32s(WHAT)?, limits: None, motor: None },
        3 => JointKind::Spherical,
        4 => JointKind::Rope { max_distance: r.f32(WHAT)? },
        5 => {
            let [rest_length, stiffness, damping] = r.f32s(WHAT)?;
            JointKind::Spring { rest_length, stiffness, damping }
        }
        _ => return Err(PackedError::Reserved("add_joints: kind")),
    };
    if let JointKind::Revolute { limits, motor, .. } | JointKind::Prismatic { limits, motor, .. } = &mut kind {
        if flags & JOINT_LIMITS != 0 {
            *limits = Some(r.f32s(WHAT)?);
        }
        if flags & JOINT_MOTOR != 0 {
            let [target_position, target_velocity, stiffness, damping] = r.f32s(WHAT)?;
            let max_force = if flags & JOINT_MOTOR_MAX_FORCE != 0 { Some(r.f32(WHAT)?) } else { None };
            *motor = Some(JointMotor { target_position, target_velocity, stiffness, damping, max_force });
        }
    }
    Ok(JointDesc { id, body1, body2, kind, anchor1, anchor2, contacts_enabled: flags & JOINT_NO_CONTACTS == 0 })
}

fn put_pose(out: &mut Vec<u8>, position: Vec3, rotation: [f32; 4]) {
    let position = quantize_position(position);
    let rotation = QuantizedRotation::from_quat(rotation);
    let mask = nonzero_mask(position);
    if rotation == QuantizedRotation::IDENTITY {
        out.push(mask);
        put_signed_masked(out, position, mask);
    } else {
        out.push(mask | POSE_ROTATION | rotation.largest << POSE_INDEX_SHIFT);
        put_signed_masked(out, position, mask);
        put_rotation_others(out, rotation);
    }
}

fn read_pose(r: &mut Reader<'_>, what: &'static str) -> Result<(Vec3, [f32; 4])> {
    let flags = r.u8(what)?;
    if flags >> 6 != 0 {
        return Err(PackedError::Reserved(what));
    }
    let position = check_position(r.signed_masked(what, flags & 0b111)?, what)?;
    let rotation = if flags & POSE_ROTATION != 0 {
        let rotation = read_rotation_others(r, (flags >> POSE_INDEX_SHIFT) & 0b11, what)?;
        if rotation == QuantizedRotation::IDENTITY {
            // The identity has its own (shorter) form: one encoding per request.
            return Err(PackedError::Reserved(what));
        }
        rotation
    } else {
        if flags >> POSE_INDEX_SHIFT != 0 {
            return Err(PackedError::Reserved(what));
        }
        QuantizedRotation::IDENTITY
    };
    Ok((dequantize_position(position), rotation.to_quat()))
}

/// Two vectors of inputs (force and torque, impulse and torque impulse): a mask of the
/// components that are not `+0.0`, then those components' bits.
fn put_vector_pair(out: &mut Vec<u8>, a: Vec3, b: Vec3) {
    let (mask_a, mask_b) = (f32_mask(a), f32_mask(b));
    out.push(mask_a | mask_b << 3);
    for (v, mask) in [(a, mask_a), (b, mask_b)] {
        for (i, x) in v.into_iter().enumerate() {
            if mask & (1 << i) != 0 {
                put_f32(out, x);
            }
        }
    }
}

fn read_vector_pair(r: &mut Reader<'_>, what: &'static str) -> Result<(Vec3, Vec3)> {
    let mask = r.u8(what)?;
    if mask >> 6 != 0 {
        return Err(PackedError::Reserved(what));
    }
    let a = r.f32_masked(what, mask & 0b111)?;
    let b = r.f32_masked(what, mask >> 3)?;
    // A masked-in +0.0 would be a second encoding of the same request.
    if f32_mask(a) | f32_mask(b) << 3 != mask {
        return Err(PackedError::Reserved(what));
    }
    Ok((a, b))
}

fn put_body(out: &mut Vec<u8>, d: &BodyDesc) {
    let shape = match d.shape {
        Shape::Box { .. } => SHAPE_BOX,
        Shape::Sphere { .. } => SHAPE_BALL,
        Shape::Capsule { .. } => SHAPE_CAPSULE_Y,
        _ => ADD_SHAPE_TAGGED,
    };
    let body_type = match d.body_type {
        BodyType::Dynamic => 0,
        BodyType::Kinematic => 1,
        BodyType::Fixed => 2,
        BodyType::KinematicVelocity => 3,
    };
    let mut a = shape | body_type << ADD_TYPE_SHIFT;
    for (set, bit) in
        [(d.ccd, ADD_CCD), (d.sleeping, ADD_SLEEPING), (d.mass.is_some(), ADD_MASS), (d.density.is_some(), ADD_DENSITY)]
    {
        if set {
            a |= bit;
        }
    }
    let position = quantize_position(d.position);
    let rotation = QuantizedRotation::from_quat(d.rotation);
    let (linvel, angvel) = (quantize_velocity(d.linvel), quantize_velocity(d.angvel));
    let mut b = 0;
    for (set, bit) in [
        (d.friction.to_bits() != DEFAULT_FRICTION.to_bits(), ADD_FRICTION),
        (d.restitution.to_bits() != 0, ADD_RESTITUTION),
        (d.linear_damping.to_bits() != 0, ADD_LINEAR_DAMPING),
        (d.angular_damping.to_bits() != 0, ADD_ANGULAR_DAMPING),
        (rotation != QuantizedRotation::IDENTITY, ADD_ROTATION),
        (linvel != [0; 3], ADD_LINVEL),
        (angvel != [0; 3], ADD_ANGVEL),
    ] {
        if set {
            b |= bit;
        }
    }
    let extras = extras_of(d);
    if extras != 0 {
        b |= ADD_EXTRA;
    }
    out.extend_from_slice(&[a, b]);
    if shape == ADD_SHAPE_TAGGED {
        put_shape(out, &d.shape);
    } else {
        put_shape_data(out, &d.shape);
    }
    if extras != 0 {
        put_varint(out, extras);
        put_extras(out, d, extras);
    }
    position.iter().for_each(|&k| put_signed(out, k));
    if b & ADD_ROTATION != 0 {
        out.push(rotation.largest);
        put_rotation_others(out, rotation);
    }
    if b & ADD_LINVEL != 0 {
        linvel.iter().for_each(|&k| put_signed(out, k));
    }
    if b & ADD_ANGVEL != 0 {
        angvel.iter().for_each(|&k| put_signed(out, k));
    }
    for x in [d.mass, d.density].into_iter().flatten() {
        put_f32(out, x);
    }
    for (bit, x) in [
        (ADD_FRICTION, d.friction),
        (ADD_RESTITUTION, d.restitution),
        (ADD_LINEAR_DAMPING, d.linear_damping),
        (ADD_ANGULAR_DAMPING, d.angular_damping),
    ] {
        if b & bit != 0 {
            put_f32(out, x);
        }
    }
}

fn read_body(r: &mut Reader<'_>, id: BodyId, elements: &mut usize) -> Result<BodyDesc> {
    const WHAT: &str = "add";
    let a = r.u8(WHAT)?;
    let b = r.u8(WHAT)?;
    let body_type = match (a >> ADD_TYPE_SHIFT) & 0b11 {
        0 => BodyType::Dynamic,
        1 => BodyType::Kinematic,
        2 => BodyType::Fixed,
        _ => BodyType::KinematicVelocity,
    };
    let shape = match a & ADD_SHAPE_MASK {
        ADD_SHAPE_TAGGED => {
            let shape = read_shape(r, elements, false)?;
            if matches!(shape, Shape::Box { .. } | Shape::Sphere { .. } | Shape::Capsule { .. }) {
                // These have short forms of their own: one encoding per value.
                return Err(PackedError::Reserved("add: shape"));
            }
            shape
        }
        tag => read_shape_data(r, tag, elements, false)?,
    };
    let mut desc = BodyDesc::new(id, shape, [0.0; 3]);
    if b & ADD_EXTRA != 0 {
        let extras = r.varint("add: extras")?;
        if extras == 0 || extras & EXTRA_UNKNOWN != 0 {
            return Err(PackedError::Reserved("add: extras"));
        }
        read_extras(r, &mut desc, extras)?;
    }
    let shape = std::mem::replace(&mut desc.shape, Shape::Sphere { radius: 0.0 });
    let position = check_position([r.signed(WHAT)?, r.signed(WHAT)?, r.signed(WHAT)?], "add: position")?;
    let rotation = if b & ADD_ROTATION != 0 {
        let largest = r.u8(WHAT)?;
        if largest > 3 {
            return Err(PackedError::BadRotation("add: rotation"));
        }
        let rotation = read_rotation_others(r, largest, "add: rotation")?;
        if rotation == QuantizedRotation::IDENTITY {
            return Err(PackedError::Reserved("add: rotation"));
        }
        rotation
    } else {
        QuantizedRotation::IDENTITY
    };
    let mut velocity = |bit: u8, what: &'static str| -> Result<[i64; 3]> {
        if b & bit == 0 {
            return Ok([0; 3]);
        }
        let v = check_velocity([r.signed(what)?, r.signed(what)?, r.signed(what)?], what)?;
        if v == [0; 3] { Err(PackedError::Reserved(what)) } else { Ok(v) }
    };
    let linvel = velocity(ADD_LINVEL, "add: linvel")?;
    let angvel = velocity(ADD_ANGVEL, "add: angvel")?;
    let mass = if a & ADD_MASS != 0 { Some(r.f32(WHAT)?) } else { None };
    let density = if a & ADD_DENSITY != 0 { Some(r.f32(WHAT)?) } else { None };
    let mut material = |bit: u8, default: f32| -> Result<f32> {
        if b & bit == 0 {
            return Ok(default);
        }
        let x = r.f32(WHAT)?;
        if x.to_bits() == default.to_bits() { Err(PackedError::Reserved("add: material")) } else { Ok(x) }
    };
    let friction = material(ADD_FRICTION, DEFAULT_FRICTION)?;
    let restitution = material(ADD_RESTITUTION, 0.0)?;
    let linear_damping = material(ADD_LINEAR_DAMPING, 0.0)?;
    let angular_damping = material(ADD_ANGULAR_DAMPING, 0.0)?;
    Ok(BodyDesc {
        id,
        shape,
        body_type,
        position: dequantize_position(position),
        rotation: rotation.to_quat(),
        linvel: dequantize_velocity(linvel),
        angvel: dequantize_velocity(angvel),
        mass,
        density,
        friction,
        restitution,
        linear_damping,
        angular_damping,
        ccd: a & ADD_CCD != 0,
        sleeping: a & ADD_SLEEPING != 0,
        ..desc
    })
}

/// The extra properties a body differs from the defaults in (`EXTRA_*` bits).
fn extras_of(d: &BodyDesc) -> u64 {
    [
        (d.collider_offset.is_some(), EXTRA_COLLIDER_OFFSET),
        (d.gravity_scale.to_bits() != 1.0f32.to_bits(), EXTRA_GRAVITY_SCALE),
        (d.locked_axes != 0, EXTRA_LOCKED_AXES),
        (d.dominance != 0, EXTRA_DOMINANCE),
        (d.additional_mass.to_bits() != 0, EXTRA_ADDITIONAL_MASS),
        (d.mass_properties.is_some(), EXTRA_MASS_PROPERTIES),
        (d.friction_combine != CombineRule::Average, EXTRA_FRICTION_COMBINE),
        (d.restitution_combine != CombineRule::Average, EXTRA_RESTITUTION_COMBINE),
        (!d.collision_groups.is_all(), EXTRA_COLLISION_GROUPS),
        (!d.solver_groups.is_all(), EXTRA_SOLVER_GROUPS),
        (d.sensor, EXTRA_SENSOR),
        (d.active_events != 0, EXTRA_ACTIVE_EVENTS),
        (d.contact_force_threshold.to_bits() != 0, EXTRA_FORCE_THRESHOLD),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .fold(0, |mask, (_, bit)| mask | bit)
}

fn put_extras(out: &mut Vec<u8>, d: &BodyDesc, extras: u64) {
    if let Some(offset) = d.collider_offset {
        put_f32s(out, &offset.position);
        put_f32s(out, &offset.rotation);
    }
    if extras & EXTRA_GRAVITY_SCALE != 0 {
        put_f32(out, d.gravity_scale);
    }
    if extras & EXTRA_LOCKED_AXES != 0 {
        out.push(d.locked_axes);
    }
    if extras & EXTRA_DOMINANCE != 0 {
        out.push(d.dominance as u8);
    }
    if extras & EXTRA_ADDITIONAL_MASS != 0 {
        put_f32(out, d.additional_mass);
    }
    if let Some(m) = d.mass_properties {
        put_f32(out, m.mass);
        put_f32s(out, &m.center_of_mass);
        put_f32s(out, &m.principal_inertia);
        put_f32s(out, &m.principal_inertia_frame);
    }
    for (bit, rule) in
        [(EXTRA_FRICTION_COMBINE, d.friction_combine), (EXTRA_RESTITUTION_COMBINE, d.restitution_combine)]
    {
        if extras & bit != 0 {
            out.push(combine_rule_byte(rule));
        }
    }
    for (bit, groups) in [(EXTRA_COLLISION_GROUPS, d.collision_groups), (EXTRA_SOLVER_GROUPS, d.solver_groups)] {
        if extras & bit != 0 {
            put_varint(out, u64::from(groups.memberships));
            put_varint(out, u64::from(groups.filters));
        }
    }
    if extras & EXTRA_ACTIVE_EVENTS != 0 {
        out.push(d.active_events);
    }
    if extras & EXTRA_FORCE_THRESHOLD != 0 {
        put_f32(out, d.contact_force_threshold);
    }
}

fn read_extras(r: &mut Reader<'_>, d: &mut BodyDesc, extras: u64) -> Result<()> {
    const WHAT: &str = "add: extras";
    if extras & EXTRA_COLLIDER_OFFSET != 0 {
        d.collider_offset = Some(Offset { position: r.f32s(WHAT)?, rotation: r.f32s(WHAT)? });
    }
    if extras & EXTRA_GRAVITY_SCALE != 0 {
        d.gravity_scale = r.f32(WHAT)?;
        if d.gravity_scale.to_bits() == 1.0f32.to_bits() {
            return Err(PackedError::Reserved("add: gravity_scale"));
        }
    }
    if extras & EXTRA_LOCKED_AXES != 0 {
        d.locked_axes = r.u8(WHAT)?;
        if d.locked_axes == 0 || d.locked_axes & !locked_axes::ALL != 0 {
            return Err(PackedError::Reserved("add: locked_axes"));
        }
    }
    if extras & EXTRA_DOMINANCE != 0 {
        d.dominance = r.u8(WHAT)? as i8;
        if d.dominance == 0 || d.dominance == i8::MIN {
            return Err(PackedError::Reserved("add: dominance"));
        }
    }
    if extras & EXTRA_ADDITIONAL_MASS != 0 {
        d.additional_mass = r.f32(WHAT)?;
        if d.additional_mass.to_bits() == 0 {
            return Err(PackedError::Reserved("add: additional_mass"));
        }
    }
    if extras & EXTRA_MASS_PROPERTIES != 0 {
        d.mass_properties = Some(MassProperties {
            mass: r.f32(WHAT)?,
            center_of_mass: r.f32s(WHAT)?,
            principal_inertia: r.f32s(WHAT)?,
            principal_inertia_frame: r.f32s(WHAT)?,
        });
    }
    for (bit, rule) in
        [(EXTRA_FRICTION_COMBINE, &mut d.friction_combine), (EXTRA_RESTITUTION_COMBINE, &mut d.restitution_combine)]
    {
        if extras & bit != 0 {
            *rule = match r.u8(WHAT)? {
                1 => CombineRule::Min,
                2 => CombineRule::Multiply,
                3 => CombineRule::Max,
                _ => return Err(PackedError::Reserved("add: combine rule")),
            };
        }
    }
    for (bit, groups) in
        [(EXTRA_COLLISION_GROUPS, &mut d.collision_groups), (EXTRA_SOLVER_GROUPS, &mut d.solver_groups)]
    {
        if extras & bit != 0 {
            let mut group = || -> Result<u32> {
                u32::try_from(r.varint("add: groups")?).map_err(|_| PackedError::OutOfRange("add: groups"))
            };
            *groups = Groups { memberships: group()?, filters: group()? };
            if groups.is_all() {
                return Err(PackedError::Reserved("add: groups"));
            }
        }
    }
    d.sensor = extras & EXTRA_SENSOR != 0;
    if extras & EXTRA_ACTIVE_EVENTS != 0 {
        d.active_events = r.u8(WHAT)?;
        if d.active_events == 0 || d.active_events & !active_events::ALL != 0 {
            return Err(PackedError::Reserved("add: active_events"));
        }
    }
    if extras & EXTRA_FORCE_THRESHOLD != 0 {
        d.contact_force_threshold = r.f32(WHAT)?;
        if d.contact_force_threshold.to_bits() == 0 {
            return Err(PackedError::Reserved("add: contact_force_threshold"));
        }
    }
    Ok(())
}

fn combine_rule_byte(rule: CombineRule) -> u8 {
    match rule {
        CombineRule::Average => 0,
        CombineRule::Min => 1,
        CombineRule::Multiply => 2,
        CombineRule::Max => 3,
    }
}

fn put_f32s(out: &mut Vec<u8>, xs: &[f32]) {
    xs.iter().for_each(|&x| put_f32(out, x));
}

/// A shape with its tag.
fn put_shape(out: &mut Vec<u8>, shape: &Shape) {
    let tag = match shape {
        Shape::Box { .. } => SHAPE_BOX,
        Shape::Sphere { .. } => SHAPE_BALL,
        Shape::Capsule { .. } => SHAPE_CAPSULE_Y,
        Shape::CapsuleX { .. } => SHAPE_CAPSULE_X,
        Shape::CapsuleZ { .. } => SHAPE_CAPSULE_Z,
        Shape::Cylinder { .. } => SHAPE_CYLINDER,
        Shape::Cone { .. } => SHAPE_CONE,
        Shape::ConvexHull { .. } => SHAPE_CONVEX_HULL,
        Shape::TriMesh { .. } => SHAPE_TRIMESH,
        Shape::Heightfield { .. } => SHAPE_HEIGHTFIELD,
        Shape::Compound { .. } => SHAPE_COMPOUND,
        Shape::Cached { .. } => SHAPE_CACHED,
    };
    out.push(tag);
    put_shape_data(out, shape);
}

/// A shape's packed bytes (its tag and data): what [`crate::physics::ShapeHash::of`] hashes.
pub(crate) fn put_shape_bytes(out: &mut Vec<u8>, shape: &Shape) {
    put_shape(out, shape);
}

/// A shape's data, after its tag: floats bit for bit (static geometry is never quantized).
fn put_shape_data(out: &mut Vec<u8>, shape: &Shape) {
    match shape {
        Shape::Box { half_extents } => put_f32s(out, half_extents),
        Shape::Sphere { radius } => put_f32(out, *radius),
        Shape::Capsule { half_height, radius }
        | Shape::CapsuleX { half_height, radius }
        | Shape::CapsuleZ { half_height, radius }
        | Shape::Cylinder { half_height, radius }
        | Shape::Cone { half_height, radius } => put_f32s(out, &[*half_height, *radius]),
        Shape::ConvexHull { points } => {
            put_varint(out, points.len() as u64);
            points.iter().for_each(|p| put_f32s(out, p));
        }
        Shape::TriMesh { vertices, indices } => {
            put_varint(out, vertices.len() as u64);
            vertices.iter().for_each(|p| put_f32s(out, p));
            put_varint(out, indices.len() as u64);
            indices.iter().flatten().for_each(|&i| put_varint(out, u64::from(i)));
        }
        Shape::Heightfield { rows, columns, heights, scale } => {
            put_varint(out, u64::from(*rows));
            put_varint(out, u64::from(*columns));
            put_f32s(out, heights);
            put_f32s(out, scale);
        }
        Shape::Compound { parts } => {
            put_varint(out, parts.len() as u64);
            for part in parts {
                put_shape(out, &part.shape);
                put_f32s(out, &part.position);
                put_f32s(out, &part.rotation);
            }
        }
        Shape::Cached { sha256, elements } => {
            out.extend_from_slice(&sha256.0);
            put_varint(out, *elements);
        }
    }
}

/// A tagged shape; `in_compound` refuses the composite ones (no recursion past one level).
fn read_shape(r: &mut Reader<'_>, elements: &mut usize, in_compound: bool) -> Result<Shape> {
    let tag = r.u8("add: shape")?;
    read_shape_data(r, tag, elements, in_compound)
}

/// Counts `n` more shape elements against the request's bound.
fn charge(elements: &mut usize, n: usize, what: &'static str) -> Result<()> {
    *elements = elements.saturating_add(n);
    if *elements > limits::MAX_SHAPE_ELEMENTS_PER_REQUEST {
        return Err(PackedError::TooMany {
            what,
            count: *elements as u64,
            max: limits::MAX_SHAPE_ELEMENTS_PER_REQUEST,
        });
    }
    Ok(())
}

fn read_shape_data(r: &mut Reader<'_>, tag: u8, elements: &mut usize, in_compound: bool) -> Result<Shape> {
    const WHAT: &str = "add: shape";
    let pair = |r: &mut Reader<'_>| -> Result<(f32, f32)> { Ok((r.f32(WHAT)?, r.f32(WHAT)?)) };
    Ok(match tag {
        SHAPE_BOX => Shape::Box { half_extents: r.f32s(WHAT)? },
        SHAPE_BALL => Shape::Sphere { radius: r.f32(WHAT)? },
        SHAPE_CAPSULE_Y => {
            let (half_height, radius) = pair(r)?;
            Shape::Capsule { half_height, radius }
        }
        SHAPE_CAPSULE_X => {
            let (half_height, radius) = pair(r)?;
            Shape::CapsuleX { half_height, radius }
        }
        SHAPE_CAPSULE_Z => {
            let (half_height, radius) = pair(r)?;
            Shape::CapsuleZ { half_height, radius }
        }
        SHAPE_CYLINDER => {
            let (half_height, radius) = pair(r)?;
            Shape::Cylinder { half_height, radius }
        }
        SHAPE_CONE => {
            let (half_height, radius) = pair(r)?;
            Shape::Cone { half_height, radius }
        }
        SHAPE_CONVEX_HULL => {
            let n = r.count_up_to("add: convex hull points", 12, limits::MAX_HULL_POINTS)?;
            charge(elements, n, "add: shape elements")?;
            let points = (0..n).map(|_| r.f32s(WHAT)).collect::<Result<_>>()?;
            Shape::ConvexHull { points }
        }
        SHAPE_TRIMESH if !in_compound => {
            let nv = r.count_up_to("add: mesh vertices", 12, limits::MAX_MESH_VERTICES)?;
            charge(elements, nv, "add: shape elements")?;
            let vertices = (0..nv).map(|_| r.f32s(WHAT)).collect::<Result<_>>()?;
            let nt = r.count_up_to("add: mesh triangles", 3, limits::MAX_MESH_TRIANGLES)?;
            charge(elements, nt, "add: shape elements")?;
            let mut index = || -> Result<u32> {
                u32::try_from(r.varint("add: mesh index")?).map_err(|_| PackedError::OutOfRange("add: mesh index"))
            };
            let indices = (0..nt).map(|_| Ok([index()?, index()?, index()?])).collect::<Result<_>>()?;
            Shape::TriMesh { vertices, indices }
        }
        SHAPE_HEIGHTFIELD if !in_compound => {
            let dimension = |r: &mut Reader<'_>| -> Result<u32> {
                u32::try_from(r.varint("add: heightfield size")?)
                    .map_err(|_| PackedError::OutOfRange("add: heightfield size"))
            };
            let (rows, columns) = (dimension(r)?, dimension(r)?);
            let cells = u64::from(rows) * u64::from(columns);
            if cells > limits::MAX_HEIGHTFIELD_CELLS as u64 {
                return Err(PackedError::TooMany {
                    what: "add: heightfield cells",
                    count: cells,
                    max: limits::MAX_HEIGHTFIELD_CELLS,
                });
            }
            let cells = cells as usize;
            if cells.saturating_mul(4) > r.left() {
                return Err(PackedError::CountPastEnd {
                    what: "add: heightfield cells",
                    count: cells as u64,
                    left: r.left(),
                });
            }
            charge(elements, cells, "add: shape elements")?;
            let heights = (0..cells).map(|_| r.f32(WHAT)).collect::<Result<_>>()?;
            Shape::Heightfield { rows, columns, heights, scale: r.f32s(WHAT)? }
        }
        SHAPE_COMPOUND if !in_compound => {
            // The smallest part: a tag, a radius, a pose of seven floats.
            let n = r.count_up_to("add: compound parts", 33, limits::MAX_COMPOUND_PARTS)?;
            charge(elements, n, "add: shape elements")?;
            let parts = (0..n)
                .map(|_| {
                    let shape = read_shape(r, elements, true)?;
                    Ok(CompoundPart { shape, position: r.f32s(WHAT)?, rotation: r.f32s(WHAT)? })
                })
                .collect::<Result<_>>()?;
            Shape::Compound { parts }
        }
        SHAPE_CACHED if !in_compound => {
            let sha256 = crate::physics::ShapeHash(r.array("add: a cached shape's hash")?);
            let declared = r.varint("add: a cached shape's elements")?;
            let count = usize::try_from(declared).unwrap_or(usize::MAX);
            if count < limits::MIN_CACHED_SHAPE_ELEMENTS {
                return Err(PackedError::OutOfRange("add: a cached shape's elements"));
            }
            charge(elements, count, "add: shape elements")?;
            Shape::Cached { sha256, elements: declared }
        }
        SHAPE_TRIMESH | SHAPE_HEIGHTFIELD | SHAPE_COMPOUND | SHAPE_CACHED => {
            return Err(PackedError::Reserved(
                "add: a compound's part is a mesh, a heightfield, a compound or a cached shape",
            ));
        }
        _ => return Err(PackedError::Reserved("add: shape")),
    })
}

/// One list of a packed request: its length (checked against the bytes left) and its ids.
struct List {
    n: usize,
    ids: IdReader,
    what: &'static str,
}

impl List {
    /// Reads the list's entries: each an id, then what `entry` reads.
    fn read<T>(
        mut self,
        r: &mut Reader<'_>,
        mut entry: impl FnMut(&mut Reader<'_>, BodyId) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.n);
        for _ in 0..self.n {
            let id = self.ids.read(r, self.what)?;
            out.push(entry(r, id)?);
        }
        Ok(out)
    }
}

/// Decodes a packed request. The result is what [`crate::quantize::snap_request`] makes of
/// the request that was encoded.
pub fn decode_request(bytes: &[u8]) -> std::result::Result<PhysicsStepRequest, PackedError> {
    let mut r = Reader::new(bytes);
    r.header("request", REQUEST_FORMAT)?;
    let flags = r.u8("the request flags")?;
    if flags >> 3 != 0 {
        return Err(PackedError::Reserved("the request flags"));
    }
    let lists = r.u8("the request's list mask")?;
    let more = if lists & LIST_MORE != 0 {
        let more = r.u8("the request's second list mask")?;
        if more == 0 || more >> 5 != 0 {
            return Err(PackedError::Reserved("the request's second list mask"));
        }
        more
    } else {
        0
    };
    let tick = r.varint("tick")?;
    let dt = r.f32("dt")?;
    let steps = if flags & REQ_STEPS != 0 {
        let steps = u32::try_from(r.varint("steps")?).map_err(|_| PackedError::OutOfRange("steps"))?;
        if steps == 1 {
            return Err(PackedError::Reserved("steps"));
        }
        steps
    } else {
        1
    };
    let gravity =
        if flags & REQ_GRAVITY != 0 { Some([r.f32("gravity")?, r.f32("gravity")?, r.f32("gravity")?]) } else { None };
    let mut request =
        PhysicsStepRequest { tick, snapshot: flags & REQ_SNAPSHOT != 0, gravity, dt, steps, ..Default::default() };
    // Each list: a count (non-zero when flagged), then its entries, each an id coded
    // against the previous one and what follows it.
    let list = |r: &mut Reader<'_>, bit: u8, what: &'static str, min_bytes: usize| -> Result<List> {
        if lists & bit == 0 {
            return Ok(List { n: 0, ids: IdReader(0), what });
        }
        match r.count(what, min_bytes)? {
            0 => Err(PackedError::EmptyList(what)),
            n => Ok(List { n, ids: IdReader(0), what }),
        }
    };
    // The smallest body to add: an id, two flag bytes, a radius and three coordinates.
    let add = list(&mut r, LIST_ADD, "add", 10)?;
    let mut elements = 0;
    request.add = add.read(&mut r, |r, id| read_body(r, id, &mut elements))?;
    let remove = list(&mut r, LIST_REMOVE, "remove", 1)?;
    request.remove = remove.read(&mut r, |_, id| Ok(id))?;
    let set_pose = list(&mut r, LIST_SET_POSE, "set_pose", 2)?;
    request.set_pose = set_pose.read(&mut r, |r, id| {
        let (position, rotation) = read_pose(r, "set_pose")?;
        Ok(SetPose { id, position, rotation })
    })?;
    let set_velocity = list(&mut r, LIST_SET_VELOCITY, "set_velocity", 2)?;
    request.set_velocity = set_velocity.read(&mut r, |r, id| {
        const WHAT: &str = "set_velocity";
        let mask = r.u8(WHAT)?;
        if mask >> 6 != 0 {
            return Err(PackedError::Reserved(WHAT));
        }
        let linvel = check_velocity(r.signed_masked(WHAT, mask & 0b111)?, WHAT)?;
        let angvel = check_velocity(r.signed_masked(WHAT, mask >> 3)?, WHAT)?;
        if nonzero_mask(linvel) | nonzero_mask(angvel) << 3 != mask {
            return Err(PackedError::Reserved(WHAT));
        }
        Ok(SetVelocity { id, linvel: dequantize_velocity(linvel), angvel: dequantize_velocity(angvel) })
    })?;
    let forces = list(&mut r, LIST_FORCES, "forces", 2)?;
    request.forces = forces.read(&mut r, |r, id| {
        let (force, torque) = read_vector_pair(r, "forces")?;
        Ok(ApplyForce { id, force, torque })
    })?;
    let impulses = list(&mut r, LIST_IMPULSES, "impulses", 2)?;
    request.impulses = impulses.read(&mut r, |r, id| {
        let (impulse, torque_impulse) = read_vector_pair(r, "impulses")?;
        Ok(ApplyImpulse { id, impulse, torque_impulse })
    })?;
    let targets = list(&mut r, LIST_TARGETS, "kinematic_targets", 2)?;
    request.kinematic_targets = targets.read(&mut r, |r, id| {
        let (position, rotation) = read_pose(r, "kinematic_targets")?;
        Ok(KinematicTarget { id, position, rotation })
    })?;
    for (bit, what) in [(LIST_WAKE, "wake"), (LIST_SLEEP, "sleep")] {
        let ids = if more & bit == 0 {
            Vec::new()
        } else {
            match r.count(what, 1)? {
                0 => return Err(PackedError::EmptyList(what)),
                n => List { n, ids: IdReader(0), what }.read(&mut r, |_, id| Ok(id))?,
            }
        };
        match what {
            "wake" => request.wake = ids,
            _ => request.sleep = ids,
        }
    }
    if more & LIST_ADD_JOINTS != 0 {
        const WHAT: &str = "add_joints";
        // The smallest joint: an id, its flags, a body, an anchor mask.
        match r.count(WHAT, 4)? {
            0 => return Err(PackedError::EmptyList(WHAT)),
            n => request.add_joints = List { n, ids: IdReader(0), what: WHAT }.read(&mut r, read_joint)?,
        }
    }
    if more & LIST_REMOVE_JOINTS != 0 {
        const WHAT: &str = "remove_joints";
        match r.count(WHAT, 1)? {
            0 => return Err(PackedError::EmptyList(WHAT)),
            n => request.remove_joints = List { n, ids: IdReader(0), what: WHAT }.read(&mut r, |_, id| Ok(id))?,
        }
    }
    if more & LIST_TOUCHING != 0 {
        const WHAT: &str = "touching";
        match r.count_up_to(WHAT, 2, limits::MAX_TOUCHING_PAIRS)? {
            0 => return Err(PackedError::EmptyList(WHAT)),
            n => {
                request.touching = List { n, ids: IdReader(0), what: WHAT }
                    .read(&mut r, |r, a| Ok([a, a.wrapping_add(r.signed(WHAT)? as u64)]))?;
            }
        }
    }
    r.finish()?;
    Ok(request)
}

// ---------------------------------------------------------------------------------------
// Results.

const RES_KEYFRAME: u8 = 1;
const RES_DIGEST: u8 = 1 << 1;
const RES_REMOVED: u8 = 1 << 2;
const RES_DRIFT: u8 = 1 << 3;
/// A delta frame lists its exactly predicted bodies in a bitmap (and sends no header for
/// them), when that is shorter than a header byte for each.
const RES_EXACT_BITMAP: u8 = 1 << 4;
/// The tick's events follow the removed bodies.
const RES_EVENTS: u8 = 1 << 5;

// An event's header byte.
const EVENT_KIND_MASK: u8 = 0b11;
const EVENT_STOPPED: u8 = 0;
const EVENT_STARTED: u8 = 1;
const EVENT_FORCE: u8 = 2;
const EVENT_SENSOR: u8 = 1 << 2;
const EVENT_REMOVED: u8 = 1 << 3;
/// The event's step differs from the previous event's (a varint gap follows).
const EVENT_NEXT_STEP: u8 = 1 << 4;

// A body's header: a first byte, and a second one when its "more" bit is set.
const BODY_SLEEPING: u8 = 1;
const BODY_MORE: u8 = 1 << 1;
const BODY_LINVEL_SHIFT: u8 = 2;
const BODY_ANGVEL_SHIFT: u8 = 5;
// Second byte: bits 0-2 the position components sent, bits 3-5 the rotation residuals sent,
// or, with `BODY_ROTATION_WHOLE`, bits 3-4 the dropped component of a whole rotation.
const BODY_POSITION_SHIFT: u8 = 0;
const BODY_ROTATION_SHIFT: u8 = 3;
const BODY_ROTATION_WHOLE: u8 = 1 << 6;

/// Bodies as a baseline: sorted by id.
type Baseline = Vec<(BodyId, QuantizedState)>;

/// Rapier's default solver moves bodies in 4 substeps per step (TGS): under a constant
/// acceleration a body covers `(3·v₀ + 5·v₁)/8 × dt`, not `v₁ × dt`, and turns by 4 small
/// rotations. The predictions follow it; another integrator only costs bytes.
const SUBSTEPS: usize = 4;

/// The largest displacement a prediction adds, in position units (far past any lattice
/// position, so it never limits an honest prediction, and keeps the sums within `i64`).
const MAX_PREDICTED_DISPLACEMENT: f64 = (1u64 << 40) as f64;

/// Where the body's origin is predicted to be: the previous position moved by the
/// substep-weighted mean of the previous and new velocities over the tick's duration.
fn predict_position(base: &QuantizedState, linvel: [i64; 3], elapsed: f64) -> [i64; 3] {
    let scale = elapsed * (POSITION_SCALE / VELOCITY_SCALE) / 8.0;
    std::array::from_fn(|i| {
        let velocity = 3.0 * base.linvel[i] as f64 + 5.0 * linvel[i] as f64;
        // `as` maps NaN (a hostile duration) to 0; both sides compute the same bits.
        let displacement =
            round_to_i64((velocity * scale).clamp(-MAX_PREDICTED_DISPLACEMENT, MAX_PREDICTED_DISPLACEMENT));
        base.position[i] + displacement
    })
}

/// The previous rotation turned by the new angular velocity over the tick's duration, in
/// substeps, the way rapier integrates it (`q ← normalize((ω·h/2, 1) ⊗ q)`), in `f64`,
/// then quantized (nearest, not necessarily canonical: it is only a prediction). The
/// normalizations only scale, so they are done once: `q' ∝ (ω·h/2, 1)⁴ ⊗ q`, whose norm
/// is `n = (1 + |ω·h/2|²)²` (q is a unit quaternion); `1/n` is taken as
/// `1 − 2x + 3x²` with `x = |ω·h/2|²` (below 10⁻⁴ for any honest spin, where the terms
/// left out are under 10⁻¹²), sparing a division.
fn predict_rotation(base: QuantizedRotation, angvel: [i64; 3], elapsed: f64) -> QuantizedRotation {
    if angvel == [0; 3] {
        return base;
    }
    let [a, b, c] = base.others.map(|k| f64::from(k) / ROTATION_SCALE);
    let dropped = (1.0 - (a * a + b * b + c * c)).max(0.0).sqrt();
    let q = match base.largest {
        0 => [dropped, a, b, c],
        1 => [a, dropped, b, c],
        2 => [a, b, dropped, c],
        _ => [a, b, c, dropped],
    };
    let half = elapsed * 0.5 / (SUBSTEPS as f64 * VELOCITY_SCALE);
    let step = [angvel[0] as f64 * half, angvel[1] as f64 * half, angvel[2] as f64 * half, 1.0];
    let twice = quaternion_product(step, step);
    let turn = quaternion_product(twice, twice);
    let turned = quaternion_product(turn, q);
    let x = step[0] * step[0] + step[1] * step[1] + step[2] * step[2];
    let inverse_norm = 1.0 - 2.0 * x + 3.0 * x * x;
    if !(inverse_norm.is_finite() && turned.iter().all(|c| c.is_finite())) {
        return base;
    }
    let mut largest = 0;
    for i in 1..4 {
        // Written to compile to conditional moves: the winner is unpredictable.
        largest = if turned[i].abs() > turned[largest].abs() { i } else { largest };
    }
    let scale = if turned[largest] < 0.0 { -ROTATION_SCALE } else { ROTATION_SCALE } * inverse_norm;
    let limit = f64::from(MAX_ROTATION_COMPONENT);
    let rounded = turned.map(|c| round_to_i64((c * scale).clamp(-limit, limit)) as i16);
    let others = other_indices(largest).map(|i| rounded[i]);
    QuantizedRotation { largest: largest as u8, others }
}

/// The Hamilton product `a ⊗ b` of quaternions `[x, y, z, w]`.
fn quaternion_product(a: [f64; 4], b: [f64; 4]) -> [f64; 4] {
    let [ax, ay, az, aw] = a;
    let [bx, by, bz, bw] = b;
    [
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ]
}

/// What a delta-coded body is predicted to be, given its new velocities (decoded first).
struct Prediction {
    linvel: [i64; 3],
    angvel: [i64; 3],
}

impl Prediction {
    /// The velocities: the previous linear one plus the frame's drift and the previous
    /// angular one; zero for a body that fell asleep (rapier zeroes them).
    fn of(base: &QuantizedState, sleeping: bool, drift: [i64; 3]) -> Self {
        if sleeping {
            Prediction { linvel: [0; 3], angvel: [0; 3] }
        } else {
            Prediction { linvel: std::array::from_fn(|i| base.linvel[i].saturating_add(drift[i])), angvel: base.angvel }
        }
    }
}

/// The pose prediction once the new velocities are known: a body that fell asleep has
/// not moved (rapier puts islands to sleep before integrating them).
fn predict_pose(
    base: &QuantizedState,
    sleeping: bool,
    linvel: [i64; 3],
    angvel: [i64; 3],
    elapsed: f64,
) -> ([i64; 3], QuantizedRotation) {
    if sleeping {
        (base.position, base.rotation)
    } else {
        (predict_position(base, linvel, elapsed), predict_rotation(base.rotation, angvel, elapsed))
    }
}

fn sub3(a: [i64; 3], b: [i64; 3]) -> [i64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn add3(a: [i64; 3], b: [i64; 3], what: &'static str) -> Result<[i64; 3]> {
    let mut v = [0i64; 3];
    for i in 0..3 {
        v[i] = a[i].checked_add(b[i]).ok_or(PackedError::OutOfRange(what))?;
    }
    Ok(v)
}

fn parse_digest(digest: &str) -> Result<u64> {
    let valid = digest.len() == 16 && digest.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if !valid {
        return Err(PackedError::BadDigest(digest.to_owned()));
    }
    u64::from_str_radix(digest, 16).map_err(|_| PackedError::BadDigest(digest.to_owned()))
}

/// The sorted, strictly ascending check of a result's lists.
fn check_ascending<I: IntoIterator<Item = BodyId>>(ids: I, what: &'static str) -> Result<()> {
    let mut previous: Option<BodyId> = None;
    for id in ids {
        if let Some(previous) = previous.filter(|&p| id <= p) {
            return Err(PackedError::Unsorted { what, id, previous });
        }
        previous = Some(id);
    }
    Ok(())
}

/// Ascending ids as gaps: the first id, then each id minus the previous one minus one.
/// Events must come in the order a world reports them (by step, kind rank, body ids;
/// each pair's smaller id first, no repeats), at most
/// [`limits::MAX_EVENTS_PER_TICK`], and hold finite forces: one encoding per tick's
/// events. A gamer checks a JSON result's events with it too.
pub fn check_events(events: &[PhysicsEvent]) -> Result<()> {
    if events.len() > limits::MAX_EVENTS_PER_TICK {
        let count = events.len() as u64;
        return Err(PackedError::TooMany { what: "events", count, max: limits::MAX_EVENTS_PER_TICK });
    }
    let mut previous: Option<(u32, u8, BodyId, BodyId)> = None;
    for e in events {
        if e.body1 >= e.body2 {
            return Err(PackedError::Unsorted { what: "an event's bodies", id: e.body2, previous: e.body1 });
        }
        // Steps 0..steps, and `steps` for bodies removed after the last one.
        if e.step > limits::MAX_STEPS_PER_TICK {
            return Err(PackedError::OutOfRange("an event's step"));
        }
        let key = (e.step, e.kind.rank(), e.body1, e.body2);
        if previous.is_some_and(|p| p >= key) {
            return Err(PackedError::Unsorted { what: "events", id: e.body1, previous: previous.map_or(0, |p| p.2) });
        }
        previous = Some(key);
        if let EventKind::ContactForce { total_force, total_force_magnitude, max_force_direction, max_force_magnitude } =
            e.kind
            && !total_force
                .iter()
                .chain(&max_force_direction)
                .chain(&[total_force_magnitude, max_force_magnitude])
                .all(|x| x.is_finite())
        {
            return Err(PackedError::OutOfRange("a contact force"));
        }
    }
    Ok(())
}

/// A result's events (checked by [`check_events`]): a count, then each one's header
/// byte, its step as a gap from the previous event's (when it differs), `body1` against
/// the previous event's, `body2` as its gap from `body1`, and a contact force's numbers
/// (the two vectors masked, then the two magnitudes), bit for bit.
fn put_events(out: &mut Vec<u8>, events: &[PhysicsEvent]) {
    if events.is_empty() {
        return;
    }
    put_varint(out, events.len() as u64);
    let (mut step, mut ids) = (0, IdWriter(0));
    for e in events {
        let mut header = match e.kind {
            EventKind::Stopped { sensor, removed } => {
                EVENT_STOPPED | if sensor { EVENT_SENSOR } else { 0 } | if removed { EVENT_REMOVED } else { 0 }
            }
            EventKind::Started { sensor } => EVENT_STARTED | if sensor { EVENT_SENSOR } else { 0 },
            EventKind::ContactForce { .. } => EVENT_FORCE,
        };
        if e.step != step {
            header |= EVENT_NEXT_STEP;
        }
        out.push(header);
        if e.step != step {
            put_varint(out, u64::from(e.step - step));
            step = e.step;
        }
        ids.put(out, e.body1);
        put_varint(out, e.body2 - e.body1 - 1);
        if let EventKind::ContactForce {
            total_force,
            total_force_magnitude,
            max_force_direction,
            max_force_magnitude,
        } = e.kind
        {
            put_vector_pair(out, total_force, max_force_direction);
            put_f32(out, total_force_magnitude);
            put_f32(out, max_force_magnitude);
        }
    }
}

fn read_events(r: &mut Reader<'_>) -> Result<Vec<PhysicsEvent>> {
    const WHAT: &str = "events";
    // Each event: at least a header byte and two ids.
    let n = r.count_up_to(WHAT, 3, limits::MAX_EVENTS_PER_TICK)?;
    if n == 0 {
        return Err(PackedError::EmptyList(WHAT));
    }
    let mut events = Vec::with_capacity(n);
    let (mut step, mut ids) = (0u32, IdReader(0));
    for _ in 0..n {
        let header = r.u8(WHAT)?;
        if header >> 5 != 0 {
            return Err(PackedError::Reserved("an event's header"));
        }
        let (sensor, removed) = (header & EVENT_SENSOR != 0, header & EVENT_REMOVED != 0);
        if header & EVENT_NEXT_STEP != 0 {
            let gap = r.varint("an event's step")?;
            step = u32::try_from(gap)
                .ok()
                .filter(|&g| g > 0)
                .and_then(|g| step.checked_add(g))
                .ok_or(PackedError::OutOfRange("an event's step"))?;
        }
        let body1 = ids.read(r, WHAT)?;
        let body2 =
            body1.checked_add(r.varint(WHAT)?).and_then(|b| b.checked_add(1)).ok_or(PackedError::IdOverflow(WHAT))?;
        let kind = match header & EVENT_KIND_MASK {
            EVENT_STOPPED => EventKind::Stopped { sensor, removed },
            EVENT_STARTED if !removed => EventKind::Started { sensor },
            EVENT_FORCE if !removed && !sensor => {
                let (total_force, max_force_direction) = read_vector_pair(r, "a contact force")?;
                EventKind::ContactForce {
                    total_force,
                    max_force_direction,
                    total_force_magnitude: r.f32("a contact force")?,
                    max_force_magnitude: r.f32("a contact force")?,
                }
            }
            _ => return Err(PackedError::Reserved("an event's header")),
        };
        events.push(PhysicsEvent { step, body1, body2, kind });
    }
    check_events(&events)?;
    Ok(events)
}

fn put_ascending_ids(out: &mut Vec<u8>, ids: impl Iterator<Item = BodyId>) {
    let mut previous: Option<BodyId> = None;
    for id in ids {
        put_varint(out, previous.map_or(id, |p| id - p - 1));
        previous = Some(id);
    }
}

fn read_ascending_id(r: &mut Reader<'_>, previous: Option<BodyId>, what: &'static str) -> Result<BodyId> {
    let gap = r.varint(what)?;
    match previous {
        None => Ok(gap),
        Some(p) => p.checked_add(gap).and_then(|id| id.checked_add(1)).ok_or(PackedError::IdOverflow(what)),
    }
}

/// A bitmap of `bits` bits, least significant bit first.
fn put_bitmap(out: &mut Vec<u8>, bits: impl Iterator<Item = bool>) {
    let mut byte = 0u8;
    let mut filled = 0;
    for bit in bits {
        byte |= u8::from(bit) << filled;
        filled += 1;
        if filled == 8 {
            out.push(byte);
            byte = 0;
            filled = 0;
        }
    }
    if filled > 0 {
        out.push(byte);
    }
}

/// Reads a bitmap of `bits` bits; the unused high bits of its last byte must be zero.
fn read_bitmap<'a>(r: &mut Reader<'a>, bits: usize, what: &'static str) -> Result<&'a [u8]> {
    let len = bits.div_ceil(8);
    if len > r.left() {
        return Err(PackedError::Truncated(what));
    }
    let bytes = &r.bytes[r.pos..r.pos + len];
    r.pos += len;
    if !bits.is_multiple_of(8) && bytes[len - 1] >> (bits % 8) != 0 {
        return Err(PackedError::Reserved(what));
    }
    Ok(bytes)
}

fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap[i / 8] >> (i % 8) & 1 != 0
}

/// The body header and values of a body: absolute (`predicted` is `None`) or residuals
/// against a prediction. Returns `false`, writing nothing, for an awake delta-coded body
/// that is exactly as predicted.
fn put_body_state(
    out: &mut Vec<u8>,
    s: &QuantizedState,
    base: Option<&QuantizedState>,
    drift: [i64; 3],
    elapsed: f64,
) -> bool {
    let (linvel, angvel, position, rotation) = match base {
        None => (s.linvel, s.angvel, s.position, Err(s.rotation)),
        Some(base) => {
            let velocities = Prediction::of(base, s.sleeping, drift);
            let (position, rotation) = predict_pose(base, s.sleeping, s.linvel, s.angvel, elapsed);
            let residuals: [i64; 3] =
                std::array::from_fn(|i| i64::from(s.rotation.others[i]) - i64::from(rotation.others[i]));
            // Residuals when the dropped component is the same and they are the shorter form.
            let rotation = if s.rotation == rotation {
                Ok([0; 3])
            } else if s.rotation.largest == rotation.largest
                && residuals.iter().map(|&k| varint_len(zigzag(k))).sum::<usize>() <= 6
            {
                Ok(residuals)
            } else {
                Err(s.rotation)
            };
            (sub3(s.linvel, velocities.linvel), sub3(s.angvel, velocities.angvel), sub3(s.position, position), rotation)
        }
    };
    let mut first =
        u8::from(s.sleeping) | nonzero_mask(linvel) << BODY_LINVEL_SHIFT | nonzero_mask(angvel) << BODY_ANGVEL_SHIFT;
    let mut second = nonzero_mask(position) << BODY_POSITION_SHIFT;
    match rotation {
        Ok(residuals) => second |= nonzero_mask(residuals) << BODY_ROTATION_SHIFT,
        Err(whole) if whole != QuantizedRotation::IDENTITY || base.is_some() => {
            second |= BODY_ROTATION_WHOLE | whole.largest << BODY_ROTATION_SHIFT;
        }
        Err(_) => {}
    }
    if second != 0 {
        first |= BODY_MORE;
    }
    if base.is_some() && first == 0 {
        return false;
    }
    out.push(first);
    if second != 0 {
        out.push(second);
    }
    put_signed_masked(out, linvel, nonzero_mask(linvel));
    put_signed_masked(out, angvel, nonzero_mask(angvel));
    put_signed_masked(out, position, nonzero_mask(position));
    match rotation {
        Ok(residuals) => put_signed_masked(out, residuals, nonzero_mask(residuals)),
        Err(whole) if second & BODY_ROTATION_WHOLE != 0 => put_rotation_others(out, whole),
        Err(_) => {}
    }
    true
}

/// Reads what [`put_body_state`] wrote. `exact` is a body of the exact bitmap (no
/// header); `bitmap` says whether the frame has one (then an all-zero header is refused:
/// one encoding per frame).
fn read_body_state(
    r: &mut Reader<'_>,
    base: Option<&QuantizedState>,
    exact: bool,
    bitmap: bool,
    drift: [i64; 3],
    elapsed: f64,
) -> Result<QuantizedState> {
    const WHAT: &str = "a body's header";
    let (first, second) = if exact {
        (0, 0)
    } else {
        let first = r.u8(WHAT)?;
        if first == 0 && bitmap && base.is_some() {
            return Err(PackedError::Reserved(WHAT));
        }
        let second = if first & BODY_MORE != 0 { r.u8(WHAT)? } else { 0 };
        if first & BODY_MORE != 0 && second == 0 {
            return Err(PackedError::Reserved(WHAT));
        }
        (first, second)
    };
    let whole = second & BODY_ROTATION_WHOLE != 0;
    if second >> 7 != 0
        || (whole && second & (1 << 5) != 0)
        || (base.is_none() && second & 0b111 << BODY_ROTATION_SHIFT != 0 && !whole)
    {
        return Err(PackedError::Reserved(WHAT));
    }
    let sleeping = first & BODY_SLEEPING != 0;
    let linvel = r.nonzero_masked("a body's linvel", first >> BODY_LINVEL_SHIFT & 0b111)?;
    let angvel = r.nonzero_masked("a body's angvel", first >> BODY_ANGVEL_SHIFT & 0b111)?;
    let position = r.nonzero_masked("a body's position", second >> BODY_POSITION_SHIFT & 0b111)?;
    let index = second >> BODY_ROTATION_SHIFT & 0b11;
    let state = match base {
        None => {
            let rotation = if whole {
                let rotation = read_rotation_others(r, index, "a body's rotation")?;
                if rotation == QuantizedRotation::IDENTITY {
                    // The identity has its own (shorter) form.
                    return Err(PackedError::Reserved("a body's rotation"));
                }
                rotation
            } else {
                QuantizedRotation::IDENTITY
            };
            QuantizedState {
                position: check_position(position, "a body's position")?,
                rotation,
                linvel: check_velocity(linvel, "a body's linvel")?,
                angvel: check_velocity(angvel, "a body's angvel")?,
                sleeping,
            }
        }
        Some(base) => {
            let velocities = Prediction::of(base, sleeping, drift);
            let linvel = check_velocity(add3(velocities.linvel, linvel, "a body's linvel")?, "a body's linvel")?;
            let angvel = check_velocity(add3(velocities.angvel, angvel, "a body's angvel")?, "a body's angvel")?;
            let (predicted_position, predicted_rotation) = predict_pose(base, sleeping, linvel, angvel, elapsed);
            let position =
                check_position(add3(predicted_position, position, "a body's position")?, "a body's position")?;
            let rotation = if whole {
                let rotation = read_rotation_others(r, index, "a body's rotation")?;
                if rotation == predicted_rotation {
                    return Err(PackedError::Reserved("a body's rotation"));
                }
                rotation
            } else {
                let residuals = r.nonzero_masked("a body's rotation", second >> BODY_ROTATION_SHIFT & 0b111)?;
                if residuals == [0; 3] && predicted_rotation == base.rotation {
                    // Unchanged: canonical already.
                    base.rotation
                } else {
                    let mut others = [0i16; 3];
                    for i in 0..3 {
                        others[i] = i64::from(predicted_rotation.others[i])
                            .checked_add(residuals[i])
                            .and_then(|k| i16::try_from(k).ok())
                            .ok_or(PackedError::BadRotation("a body's rotation"))?;
                    }
                    check_rotation(
                        QuantizedRotation { largest: predicted_rotation.largest, others },
                        "a body's rotation",
                    )?
                }
            };
            QuantizedState { position, rotation, linvel, angvel, sleeping }
        }
    };
    Ok(state)
}

/// How many bodies at most the frame's velocity drift is estimated from.
const DRIFT_SAMPLE: usize = 128;

/// The identity of a keyframe: FNV-1a (32 bits) of its bytes. Every delta carries the
/// identity of the keyframe it continues, so a delta is never decoded against another
/// lineage that happens to share its baseline's tick (a snapshot may reuse a tick; its
/// lost keyframe must not go unnoticed). The same keyframe bytes give the same identity on
/// every peer, so packed results stay byte-identical across peers.
fn stream_id(keyframe: &[u8]) -> u32 {
    keyframe.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The peer's side of a session's results: packs each successful result as a delta
/// against the previous one (one encoder per session; see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct ResultEncoder {
    last_tick: Option<u64>,
    /// The stream of the last keyframe ([`stream_id`]), carried by every delta after it.
    stream: u32,
    baseline: Baseline,
    next: Baseline,
    /// For each body of `next`: its index in `baseline`, or `u32::MAX` for a new body.
    base_index: Vec<u32>,
    changes: Vec<i64>,
    /// The bodies' records, an exactly predicted body's as a single zero byte.
    records: Vec<u8>,
    /// For each body carried on from the baseline: whether it is exactly predicted.
    exact: Vec<bool>,
    /// Where the zero bytes of the exactly predicted bodies are in `records`.
    exact_offsets: Vec<usize>,
}

impl ResultEncoder {
    /// An encoder with no baseline: its first result is a keyframe.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the baseline (the next result is a keyframe).
    pub fn reset(&mut self) {
        self.last_tick = None;
        self.baseline.clear();
    }

    /// The tick of the last result encoded, if any.
    pub fn last_tick(&self) -> Option<u64> {
        self.last_tick
    }

    /// Appends the packed form of `result` to `out` and makes it the baseline of the next.
    ///
    /// `keyframe` codes every body absolutely (after a snapshot: the gamer's decoder may
    /// hold nothing; answering a `physics_step_full`: it may hold a wrong baseline), and
    /// the following deltas continue it; without a previous result the frame is a
    /// keyframe anyway. `elapsed`
    /// is the tick's duration, `dt × steps` of the request: it only feeds the predictions,
    /// so any value decodes correctly (a wrong one costs bytes).
    ///
    /// The states are quantized (a peer's states are on the lattice already, so nothing
    /// is lost). Refused, with `out` and the encoder unchanged: an error result, bodies or
    /// removed ids not strictly ascending, more than [`MAX_BODIES_PER_SESSION`] of
    /// either, a digest that is not 16 lowercase hex digits.
    pub fn encode(
        &mut self,
        result: &PhysicsStepResult,
        keyframe: bool,
        elapsed: f32,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if result.status != TaskStatus::Success {
            return Err(PackedError::NotSuccess);
        }
        for (what, len) in [("bodies", result.bodies.len()), ("removed", result.removed.len())] {
            if len > MAX_BODIES_PER_SESSION {
                return Err(PackedError::TooMany { what, count: len as u64, max: MAX_BODIES_PER_SESSION });
            }
        }
        check_ascending(result.bodies.iter().map(|b| b.id), "bodies")?;
        check_ascending(result.removed.iter().copied(), "removed")?;
        check_events(&result.events)?;
        let digest = result.digest.as_deref().map(parse_digest).transpose()?;

        let keyframe = keyframe || self.last_tick.is_none();
        let elapsed = if elapsed.is_finite() { elapsed } else { 0.0 };
        self.next.clear();
        self.next.extend(result.bodies.iter().map(|b| (b.id, quantize(b))));
        self.base_index.clear();
        if keyframe {
            self.base_index.resize(self.next.len(), u32::MAX);
        } else {
            let mut cursor = 0;
            for (id, _) in &self.next {
                while cursor < self.baseline.len() && self.baseline[cursor].0 < *id {
                    cursor += 1;
                }
                let found = cursor < self.baseline.len() && self.baseline[cursor].0 == *id;
                self.base_index.push(if found { cursor as u32 } else { u32::MAX });
            }
        }
        let drift = if keyframe { [0; 3] } else { self.median_drift() };

        // The records first (into a scratch buffer): whether the exact bitmap pays off
        // depends on how many bodies are exactly predicted.
        self.records.clear();
        self.exact.clear();
        self.exact_offsets.clear();
        for ((_, state), &index) in self.next.iter().zip(&self.base_index) {
            let base = (index != u32::MAX).then(|| &self.baseline[index as usize].1);
            let written = put_body_state(&mut self.records, state, base, drift, f64::from(elapsed));
            if base.is_some() {
                self.exact.push(!written);
                if !written {
                    self.exact_offsets.push(self.records.len());
                    self.records.push(0);
                }
            }
        }
        let exact_count = self.exact.iter().filter(|&&e| e).count();
        let exact_bitmap = exact_count > self.exact.len().div_ceil(8);

        let mut flags = 0;
        for (set, bit) in [
            (keyframe, RES_KEYFRAME),
            (digest.is_some(), RES_DIGEST),
            (!result.removed.is_empty(), RES_REMOVED),
            (drift != [0; 3], RES_DRIFT),
            (exact_bitmap, RES_EXACT_BITMAP),
            (!result.events.is_empty(), RES_EVENTS),
        ] {
            if set {
                flags |= bit;
            }
        }
        let start = out.len();
        out.extend_from_slice(&[RESULT_FORMAT, VERSION, flags]);
        put_varint(out, result.tick);
        if !keyframe {
            let baseline_tick = self.last_tick.expect("a delta has a baseline");
            put_varint(out, result.tick.wrapping_sub(baseline_tick));
            out.extend_from_slice(&self.stream.to_le_bytes());
            put_f32(out, elapsed);
            if drift != [0; 3] {
                drift.iter().for_each(|&k| put_signed(out, k));
            }
        }
        if let Some(digest) = digest {
            out.extend_from_slice(&digest.to_le_bytes());
        }
        if !result.removed.is_empty() {
            put_varint(out, result.removed.len() as u64);
            put_ascending_ids(out, result.removed.iter().copied());
        }
        put_events(out, &result.events);
        if keyframe {
            put_varint(out, self.next.len() as u64);
            put_ascending_ids(out, self.next.iter().map(|(id, _)| *id));
        } else {
            // Which of the previous result's bodies this one carries (their indices in the
            // baseline ascend), then the others.
            let mut carried = self.base_index.iter().filter(|&&i| i != u32::MAX).peekable();
            put_bitmap(out, (0..self.baseline.len() as u32).map(|i| carried.next_if(|&&index| index == i).is_some()));
            let new = self.base_index.iter().filter(|&&i| i == u32::MAX).count();
            put_varint(out, new as u64);
            put_ascending_ids(
                out,
                self.next.iter().zip(&self.base_index).filter(|(_, i)| **i == u32::MAX).map(|((id, _), _)| *id),
            );
            if exact_bitmap {
                put_bitmap(out, self.exact.iter().copied());
            }
        }
        if exact_bitmap {
            // The bitmap says it: the zero header bytes of the exact bodies go.
            let mut from = 0;
            for &offset in &self.exact_offsets {
                out.extend_from_slice(&self.records[from..offset]);
                from = offset + 1;
            }
            out.extend_from_slice(&self.records[from..]);
        } else {
            out.extend_from_slice(&self.records);
        }
        if keyframe {
            self.stream = stream_id(&out[start..]);
        }
        std::mem::swap(&mut self.baseline, &mut self.next);
        self.last_tick = Some(result.tick);
        Ok(())
    }

    /// The per-axis median change of linear velocity of the awake bodies that the
    /// baseline carries: gravity × the tick's duration while bodies fall, about zero
    /// otherwise. Over a sample of at most [`DRIFT_SAMPLE`] bodies spread over the frame:
    /// a hint needs no more, and a full selection per axis cost a tenth of the encoding.
    fn median_drift(&mut self) -> [i64; 3] {
        let stride = self.next.len().div_ceil(DRIFT_SAMPLE).max(1);
        let mut drift = [0; 3];
        for (axis, d) in drift.iter_mut().enumerate() {
            self.changes.clear();
            for ((_, state), &index) in self.next.iter().zip(&self.base_index).step_by(stride) {
                if index != u32::MAX && !state.sleeping {
                    self.changes.push(state.linvel[axis] - self.baseline[index as usize].1.linvel[axis]);
                }
            }
            if !self.changes.is_empty() {
                let middle = self.changes.len() / 2;
                // Within the range a decoder accepts (any drift decodes correctly).
                *d = (*self.changes.select_nth_unstable(middle).1).clamp(-MAX_VELOCITY, MAX_VELOCITY);
            }
        }
        drift
    }
}

/// The gamer's side of a session's results: unpacks each result against the previous one
/// (one decoder per session). A failed decode leaves it unchanged.
#[derive(Clone, Debug, Default)]
pub struct ResultDecoder {
    last_tick: Option<u64>,
    /// The stream of the last keyframe decoded ([`stream_id`]).
    stream: u32,
    baseline: Baseline,
    next: Baseline,
    /// The bodies of the frame being decoded: id and index in `baseline` (`u32::MAX` for
    /// a body coded absolutely).
    order: Vec<(BodyId, u32)>,
}

/// Equal when they hold the same baseline (the scratch space is not compared).
impl PartialEq for ResultDecoder {
    fn eq(&self, other: &Self) -> bool {
        self.last_tick == other.last_tick && self.stream == other.stream && self.baseline == other.baseline
    }
}

impl ResultDecoder {
    /// A decoder that holds nothing yet: it accepts only a keyframe.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the baseline (after sending a snapshot: its result is a keyframe).
    pub fn reset(&mut self) {
        self.last_tick = None;
        self.baseline.clear();
    }

    /// The tick of the last result decoded, if any.
    pub fn last_tick(&self) -> Option<u64> {
        self.last_tick
    }

    /// The last result's bodies on the lattice, sorted by id.
    pub fn baseline(&self) -> &[(BodyId, QuantizedState)] {
        &self.baseline
    }

    /// Decodes a packed result and makes it the baseline of the next. Errors leave the
    /// decoder unchanged; [`PackedError::needs_resync`] tells a delta that cannot be
    /// decoded (another baseline) from a malformed frame.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<PhysicsStepResult> {
        let mut r = Reader::new(bytes);
        r.header("result", RESULT_FORMAT)?;
        let flags = r.u8("the result flags")?;
        if flags >> 6 != 0 {
            return Err(PackedError::Reserved("the result flags"));
        }
        let keyframe = flags & RES_KEYFRAME != 0;
        let tick = r.varint("tick")?;
        let (mut elapsed, mut drift) = (0.0, [0; 3]);
        if keyframe {
            if flags & (RES_DRIFT | RES_EXACT_BITMAP) != 0 {
                return Err(PackedError::Reserved("a keyframe's flags"));
            }
        } else {
            let baseline = tick.wrapping_sub(r.varint("baseline_tick")?);
            match self.last_tick {
                None => return Err(PackedError::NoBaseline(baseline)),
                Some(last) if last != baseline => return Err(PackedError::WrongBaseline { baseline, last }),
                Some(_) => {}
            }
            let frame = u32::from_le_bytes(r.array("the keyframe stream")?);
            if frame != self.stream {
                return Err(PackedError::WrongStream { frame, held: self.stream });
            }
            elapsed = f64::from(r.f32("the tick's duration")?);
            if flags & RES_DRIFT != 0 {
                drift = check_velocity([r.signed("drift")?, r.signed("drift")?, r.signed("drift")?], "drift")?;
                if drift == [0; 3] {
                    return Err(PackedError::Reserved("drift"));
                }
            }
        }
        let digest = if flags & RES_DIGEST != 0 {
            Some(format!("{:016x}", u64::from_le_bytes(r.array("digest")?)))
        } else {
            None
        };
        let mut removed = Vec::new();
        if flags & RES_REMOVED != 0 {
            let n = r.count("removed", 1)?;
            if n == 0 {
                return Err(PackedError::EmptyList("removed"));
            }
            removed.reserve_exact(n);
            let mut previous = None;
            for _ in 0..n {
                let id = read_ascending_id(&mut r, previous, "removed")?;
                removed.push(id);
                previous = Some(id);
            }
        }
        let events = if flags & RES_EVENTS != 0 { read_events(&mut r)? } else { Vec::new() };

        self.order.clear();
        let mut continuing = 0;
        if keyframe {
            // Each body: at least an id and a header byte.
            let n = r.count("bodies", 2)?;
            self.order.reserve(n);
            let mut previous = None;
            for _ in 0..n {
                let id = read_ascending_id(&mut r, previous, "bodies")?;
                self.order.push((id, u32::MAX));
                previous = Some(id);
            }
        } else {
            let carried = read_bitmap(&mut r, self.baseline.len(), "the bodies carried on")?;
            // Each new body: at least an id and a header byte.
            let new = r.count("new bodies", 2)?;
            continuing = carried.iter().map(|b| b.count_ones() as usize).sum();
            if continuing + new > MAX_BODIES_PER_SESSION {
                let count = (continuing + new) as u64;
                return Err(PackedError::TooMany { what: "bodies", count, max: MAX_BODIES_PER_SESSION });
            }
            self.order.reserve(continuing + new);
            // Merge the carried bodies and the new ids, in ascending order.
            let mut carried_ids = (0..self.baseline.len()).filter(|&i| bit(carried, i)).peekable();
            let mut previous = None;
            for _ in 0..new {
                let id = read_ascending_id(&mut r, previous, "new bodies")?;
                previous = Some(id);
                while let Some(&i) = carried_ids.peek().filter(|&&i| self.baseline[i].0 <= id) {
                    if self.baseline[i].0 == id {
                        return Err(PackedError::Unsorted { what: "new bodies", id, previous: id });
                    }
                    self.order.push((self.baseline[i].0, i as u32));
                    carried_ids.next();
                }
                self.order.push((id, u32::MAX));
            }
            for i in carried_ids {
                self.order.push((self.baseline[i].0, i as u32));
            }
        }
        let exact_bitmap = flags & RES_EXACT_BITMAP != 0;
        let exact =
            if exact_bitmap { read_bitmap(&mut r, continuing, "the exactly predicted bodies")? } else { &[][..] };

        let mut bodies = Vec::with_capacity(self.order.len());
        self.next.clear();
        self.next.reserve(self.order.len());
        let mut carried_index = 0;
        for &(id, index) in &self.order {
            let base = (index != u32::MAX).then(|| &self.baseline[index as usize].1);
            let is_exact = base.is_some() && exact_bitmap && bit(exact, carried_index);
            if base.is_some() {
                carried_index += 1;
            }
            let state = read_body_state(&mut r, base, is_exact, exact_bitmap, drift, elapsed)?;
            self.next.push((id, state));
            bodies.push(dequantize(id, &state));
        }
        r.finish()?;
        if keyframe {
            self.stream = stream_id(bytes);
        }
        std::mem::swap(&mut self.baseline, &mut self.next);
        self.last_tick = Some(tick);
        Ok(PhysicsStepResult { status: TaskStatus::Success, tick, bodies, removed, digest, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::BodyState;
    use crate::quantize::{snap, snap_request};

    fn sample_request() -> PhysicsStepRequest {
        PhysicsStepRequest {
            tick: 9,
            snapshot: true,
            gravity: Some([0.0, -9.81, 0.0]),
            dt: 1.0 / 60.0,
            steps: 2,
            add: vec![
                BodyDesc::new(1, Shape::Box { half_extents: [0.5; 3] }, [0.1, 1.0, -3.3]),
                BodyDesc {
                    rotation: [0.1, 0.2, 0.3, 0.927],
                    linvel: [1.0, -2.0, 0.5],
                    angvel: [0.0, 3.0, 0.0],
                    mass: Some(2.5),
                    friction: 0.9,
                    restitution: 0.3,
                    linear_damping: 0.1,
                    angular_damping: 0.2,
                    ccd: true,
                    ..BodyDesc::new(u64::MAX, Shape::Capsule { half_height: 0.5, radius: 0.25 }, [1.0, 1.0, 0.0])
                        .with_body_type(BodyType::Kinematic)
                },
                BodyDesc {
                    density: Some(300.0),
                    sleeping: true,
                    ..BodyDesc::new(0, Shape::Sphere { radius: 0.3 }, [-1.0e6, 1.0e6, 0.0])
                        .with_body_type(BodyType::Fixed)
                },
            ]
            .into_iter()
            .chain(every_new_shape_and_property())
            .collect(),
            remove: vec![3, 2, u64::MAX - 1],
            set_pose: vec![SetPose { id: 1, position: [1.0, 2.0, 3.0], rotation: [0.0, 0.6, 0.0, 0.8] }],
            set_velocity: vec![SetVelocity { id: 1, linvel: [1.0, 0.0, 0.001], angvel: [0.0, 0.0, -7.5] }],
            forces: vec![ApplyForce { id: 1, force: [0.0, 10.0, -0.0], torque: [0.0, 0.0, 1.0e-30] }],
            impulses: vec![ApplyImpulse { id: 5, impulse: [0.0, 1.0, 0.0], torque_impulse: [0.0; 3] }],
            kinematic_targets: vec![
                KinematicTarget { id: u64::MAX, position: [2.0, 1.0, 0.0], rotation: [0.0, 0.0, 0.0, 1.0] },
                KinematicTarget { id: 4, position: [0.0; 3], rotation: [0.0, 0.0, 0.0, -1.0] },
            ],
            wake: vec![7, 1],
            sleep: vec![u64::MAX],
            add_joints: sample_joints(),
            remove_joints: vec![3, 1],
            // Unsorted on purpose: the encoding keeps any order (the world refuses it).
            touching: vec![[1, 5], [0, u64::MAX], [7, 3]],
        }
    }

    /// A joint of each kind, with and without a second body, limits and motors.
    fn sample_joints() -> Vec<JointDesc> {
        let joint = |id, kind| JointDesc {
            id,
            body1: 1,
            body2: Some(u64::MAX),
            kind,
            anchor1: [0.0, 0.5, 0.0],
            anchor2: [0.0; 3],
            contacts_enabled: true,
        };
        let motor =
            JointMotor { target_position: 1.0, target_velocity: 0.0, stiffness: 10.0, damping: 1.0, max_force: None };
        vec![
            joint(10, JointKind::Fixed),
            JointDesc {
                body2: None,
                contacts_enabled: false,
                ..joint(
                    11,
                    JointKind::Revolute { axis: [0.0, 0.0, 1.0], limits: Some([-1.0, 1.0]), motor: Some(motor) },
                )
            },
            joint(
                12,
                JointKind::Prismatic {
                    axis: [1.0, 0.0, 0.0],
                    limits: None,
                    motor: Some(JointMotor { max_force: Some(50.0), ..motor }),
                },
            ),
            joint(13, JointKind::Spherical),
            joint(14, JointKind::Rope { max_distance: 2.0 }),
            joint(15, JointKind::Spring { rest_length: 1.0, stiffness: 100.0, damping: 2.0 }),
        ]
    }

    /// A body of each shape beyond box, ball and y capsule, and one with every extra
    /// property set.
    fn every_new_shape_and_property() -> Vec<BodyDesc> {
        let part = |shape: Shape, position: Vec3| CompoundPart { shape, position, rotation: [0.0, 0.6, 0.0, 0.8] };
        let shapes = vec![
            Shape::CapsuleX { half_height: 0.5, radius: 0.2 },
            Shape::CapsuleZ { half_height: 0.25, radius: 0.1 },
            Shape::Cylinder { half_height: 1.0, radius: 0.5 },
            Shape::Cone { half_height: 0.75, radius: 0.3 },
            Shape::ConvexHull { points: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] },
            Shape::TriMesh {
                vertices: vec![[0.0; 3], [10.0, 0.0, 0.0], [0.0, 0.0, 10.0], [10.0, 0.0, 10.0]],
                indices: vec![[0, 2, 1], [1, 2, 3]],
            },
            Shape::Heightfield {
                rows: 2,
                columns: 3,
                heights: vec![0.0, 0.5, 1.0, -0.5, 0.25, 0.0],
                scale: [10.0, 1.0, 5.0],
            },
            Shape::Compound {
                parts: vec![
                    part(Shape::Box { half_extents: [0.5, 0.1, 0.5] }, [0.0, 0.0, 0.0]),
                    part(Shape::Sphere { radius: 0.2 }, [0.0, 0.3, 0.0]),
                    part(
                        Shape::ConvexHull { points: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] },
                        [1.0, 0.0, 0.0],
                    ),
                ],
            },
            Shape::Cached { sha256: crate::physics::ShapeHash([7; 32]), elements: 300 },
        ];
        let mut bodies: Vec<BodyDesc> =
            shapes.into_iter().zip(100..).map(|(shape, id)| BodyDesc::new(id, shape, [0.0, 2.0, 0.0])).collect();
        bodies.push(BodyDesc {
            collider_offset: Some(Offset { position: [0.0, 0.5, 0.0], rotation: [0.0, 0.0, 0.6, 0.8] }),
            gravity_scale: 0.25,
            locked_axes: locked_axes::ROTATION_X | locked_axes::ROTATION_Z,
            dominance: -3,
            additional_mass: 4.0,
            mass_properties: Some(MassProperties {
                mass: 10.0,
                center_of_mass: [0.0, -0.5, 0.0],
                principal_inertia: [1.0, 2.0, 3.0],
                principal_inertia_frame: [0.0, 0.0, 0.0, 1.0],
            }),
            friction_combine: CombineRule::Max,
            restitution_combine: CombineRule::Min,
            collision_groups: Groups { memberships: 0b10, filters: !0b100 },
            solver_groups: Groups { memberships: 1, filters: 0 },
            sensor: true,
            active_events: active_events::ALL,
            contact_force_threshold: 25.0,
            ..BodyDesc::new(200, Shape::Box { half_extents: [0.5; 3] }, [0.0, 1.0, 0.0])
                .with_body_type(BodyType::KinematicVelocity)
        });
        bodies
    }

    #[test]
    fn hostile_shapes_and_extras_get_clear_errors() {
        let encode = |body: BodyDesc| {
            let mut bytes = Vec::new();
            let r = PhysicsStepRequest { tick: 1, dt: 0.1, snapshot: true, add: vec![body], ..Default::default() };
            encode_request(&r, &mut bytes);
            bytes
        };
        // A compound holding a mesh: its part's tag is refused.
        let mesh = Shape::TriMesh { vertices: vec![[0.0; 3]; 3], indices: vec![[0, 1, 2]] };
        let nested = Shape::Compound {
            parts: vec![CompoundPart { shape: mesh, position: [0.0; 3], rotation: [0.0, 0.0, 0.0, 1.0] }],
        };
        let bytes = encode(BodyDesc::new(1, nested, [0.0; 3]));
        assert!(matches!(decode_request(&bytes), Err(PackedError::Reserved(_))), "{:?}", decode_request(&bytes));
        // A hull claiming more points than the limit, or than the bytes left.
        let hull = Shape::ConvexHull { points: vec![[0.0; 3]; 4] };
        let mut bytes = encode(BodyDesc::new(1, hull, [0.0; 3]));
        // The point count follows the shape's tag (the request's tenth byte on: its
        // header, tick, dt, the add count, the id, the body's flags).
        assert_eq!(bytes[14..16], [SHAPE_CONVEX_HULL, 4]);
        bytes[15] = 0x7f;
        assert!(matches!(decode_request(&bytes), Err(PackedError::CountPastEnd { .. })));
        bytes.splice(15..16, [0x81, 0x40]);
        assert!(matches!(decode_request(&bytes), Err(PackedError::TooMany { max: limits::MAX_HULL_POINTS, .. })));
        // A heightfield claiming a billion cells.
        let field = Shape::Heightfield { rows: 2, columns: 2, heights: vec![0.0; 4], scale: [1.0; 3] };
        let mut bytes = encode(BodyDesc::new(1, field, [0.0; 3]));
        assert_eq!(bytes[14..17], [SHAPE_HEIGHTFIELD, 2, 2]);
        bytes.splice(15..17, [0x80, 0x80, 0x04, 0x80, 0x80, 0x04]);
        assert!(matches!(decode_request(&bytes), Err(PackedError::TooMany { .. })));
        // A short-form shape written tagged: not the one encoding.
        let mut bytes = encode(BodyDesc::new(1, Shape::Cylinder { half_height: 1.0, radius: 1.0 }, [0.0; 3]));
        assert_eq!(bytes[14], SHAPE_CYLINDER);
        bytes[14] = SHAPE_CAPSULE_Y;
        assert!(matches!(decode_request(&bytes), Err(PackedError::Reserved(_))));
        // An extra set to its default: not the one encoding.
        let mut bytes =
            encode(BodyDesc { gravity_scale: 2.0, ..BodyDesc::new(1, Shape::Sphere { radius: 1.0 }, [0.0; 3]) });
        let at = bytes.len() - 3 - 4;
        bytes[at..at + 4].copy_from_slice(&1.0f32.to_le_bytes());
        assert!(matches!(decode_request(&bytes), Err(PackedError::Reserved(_))), "{:?}", decode_request(&bytes));
    }

    fn bits(v: &PhysicsStepRequest) -> String {
        // Compares -0.0 and +0.0 apart (PartialEq on floats does not).
        format!("{v:?}")
    }

    #[test]
    fn a_request_round_trips_snapped() {
        let r = sample_request();
        let mut bytes = Vec::new();
        encode_request(&r, &mut bytes);
        assert_eq!(&bytes[..2], &[REQUEST_FORMAT, VERSION]);
        let decoded = decode_request(&bytes).unwrap();
        assert_eq!(decoded, snap_request(&r));
        assert_eq!(bits(&decoded), bits(&snap_request(&r)));
        assert_eq!(decoded.forces[0].force[2].to_bits(), (-0.0f32).to_bits(), "inputs travel bit for bit");
        // Encoding the decoded request gives the same bytes: one encoding per request.
        let mut again = Vec::new();
        encode_request(&decoded, &mut again);
        assert_eq!(again, bytes);
        // The smallest request.
        let tick = PhysicsStepRequest { tick: 1, dt: 1.0 / 60.0, steps: 1, ..Default::default() };
        bytes.clear();
        encode_request(&tick, &mut bytes);
        assert_eq!(bytes.len(), 9);
        assert_eq!(decode_request(&bytes).unwrap(), tick);
    }

    /// Bodies falling and spinning, integrated the way rapier does (semi-implicit Euler in
    /// four substeps).
    fn falling(n: u64, tick: u64) -> PhysicsStepResult {
        let h = 1.0 / 60.0 / 4.0;
        let (mut y, mut v) = (50.0f64, 0.0f64);
        for _ in 0..tick * 4 {
            v -= 9.81 * h;
            y += v * h;
        }
        let dt = 1.0 / 60.0;
        let angle = 0.6 * tick as f64 * dt;
        PhysicsStepResult {
            tick,
            bodies: (0..n)
                .map(|i| {
                    snap(&BodyState {
                        id: i * 3,
                        position: [i as f32, y as f32, 0.5],
                        rotation: [0.0, (angle / 2.0).sin() as f32, 0.0, (angle / 2.0).cos() as f32],
                        linvel: [0.0, v as f32, 0.0],
                        angvel: [0.0, 0.6, 0.0],
                        sleeping: false,
                    })
                })
                .collect(),
            digest: Some(format!("{:016x}", tick * 0x0123_4567_89ab_cdef)),
            ..Default::default()
        }
    }

    #[test]
    fn results_round_trip_as_keyframes_and_deltas() {
        let (mut encoder, mut decoder) = (ResultEncoder::new(), ResultDecoder::new());
        let mut sizes = Vec::new();
        for tick in 0..30 {
            let mut result = falling(100, tick);
            if tick == 10 {
                result.removed = vec![1, 7, u64::MAX];
                result.bodies.retain(|b| b.id % 2 == 0);
            }
            let mut bytes = Vec::new();
            encoder.encode(&result, tick == 0, 1.0 / 60.0, &mut bytes).unwrap();
            assert_eq!(decoder.decode(&bytes).unwrap(), result, "tick {tick}");
            assert_eq!(decoder.last_tick(), Some(tick));
            sizes.push(bytes.len());
        }
        assert!(sizes[0] > 100 * 8, "a keyframe: {sizes:?}");
        assert!(sizes[20] < 100 * 3, "predicted bodies cost a few bytes: {sizes:?}");
    }

    fn sample_events() -> Vec<PhysicsEvent> {
        let force = EventKind::ContactForce {
            total_force: [0.0, 812.5, -0.0],
            total_force_magnitude: 830.0,
            max_force_direction: [0.0, 1.0, 0.0],
            max_force_magnitude: 400.25,
        };
        let event = |step, body1, body2, kind| PhysicsEvent { step, body1, body2, kind };
        vec![
            event(0, 3, 9, EventKind::Stopped { sensor: true, removed: true }),
            event(0, 1, 2, EventKind::Started { sensor: false }),
            event(0, 1, u64::MAX, EventKind::Started { sensor: true }),
            event(2, 0, 1, EventKind::Stopped { sensor: false, removed: false }),
            event(2, 5, 6, force),
            event(7, 0, 4, force),
        ]
    }

    #[test]
    fn events_round_trip_in_keyframes_and_deltas_and_malformed_ones_are_refused() {
        let (mut encoder, mut decoder) = (ResultEncoder::new(), ResultDecoder::new());
        for tick in 0..3 {
            let result = PhysicsStepResult { events: sample_events(), ..falling(5, tick) };
            let mut bytes = Vec::new();
            encoder.encode(&result, tick == 0, 1.0 / 60.0, &mut bytes).unwrap();
            assert_eq!(decoder.decode(&bytes).unwrap(), result, "tick {tick}");
        }
        // The encoder refuses events out of order, a pair the wrong way round, NaN forces.
        let mut out = Vec::new();
        let mut fresh = ResultEncoder::new();
        let mut swapped = sample_events();
        swapped.swap(0, 1);
        let mut reversed = sample_events();
        (reversed[1].body1, reversed[1].body2) = (2, 1);
        let mut nan = sample_events();
        nan[4].kind = EventKind::ContactForce {
            total_force: [f32::NAN; 3],
            total_force_magnitude: 1.0,
            max_force_direction: [0.0; 3],
            max_force_magnitude: 1.0,
        };
        for events in [swapped, reversed, nan] {
            let result = PhysicsStepResult { events, ..falling(2, 0) };
            assert!(fresh.encode(&result, true, 0.1, &mut out).is_err());
        }
        // Hand-made frames: one stopped event at step 0, bodies 1 and 2.
        let frame = |event: &[u8]| {
            let mut bytes = vec![RESULT_FORMAT, VERSION, RES_KEYFRAME | RES_EVENTS, 0, 1];
            bytes.extend_from_slice(event);
            bytes.push(0); // no bodies
            bytes
        };
        assert!(ResultDecoder::new().decode(&frame(&[EVENT_STOPPED, 2, 0])).is_ok());
        for (bad, why) in [
            (frame(&[EVENT_STARTED | EVENT_REMOVED, 2, 0]), "a start cannot be a removal"),
            (frame(&[EVENT_FORCE | EVENT_SENSOR, 2, 0]), "a sensor pushes nothing"),
            (frame(&[3, 2, 0]), "kind 3"),
            (frame(&[1 << 5, 2, 0]), "a reserved bit"),
            (frame(&[EVENT_STOPPED | EVENT_NEXT_STEP, 0, 2, 0]), "a step gap of 0"),
            (frame(&[EVENT_STOPPED, 2]), "truncated"),
            (vec![RESULT_FORMAT, VERSION, RES_KEYFRAME | RES_EVENTS, 0, 0, 0], "an empty list"),
            (vec![RESULT_FORMAT, VERSION, RES_KEYFRAME | RES_EVENTS, 0, 0xff, 0xff, 0x7f, 0], "too many"),
        ] {
            assert!(ResultDecoder::new().decode(&bad).is_err(), "{why}");
        }
        // Two events out of order.
        let mut two = vec![RESULT_FORMAT, VERSION, RES_KEYFRAME | RES_EVENTS, 0, 2];
        two.extend_from_slice(&[EVENT_STARTED, 2, 0, EVENT_STOPPED, 0, 0, 0]);
        assert!(matches!(ResultDecoder::new().decode(&two), Err(PackedError::Unsorted { .. })));
    }

    #[test]
    fn a_delta_against_another_tick_is_refused_and_changes_nothing() {
        let (mut encoder, mut decoder) = (ResultEncoder::new(), ResultDecoder::new());
        let mut frames = Vec::new();
        for tick in 0..3 {
            let mut bytes = Vec::new();
            encoder.encode(&falling(5, tick), tick == 0, 1.0 / 60.0, &mut bytes).unwrap();
            frames.push(bytes);
        }
        let e = decoder.decode(&frames[1]).unwrap_err();
        assert_eq!(e, PackedError::NoBaseline(0));
        assert!(e.needs_resync());
        decoder.decode(&frames[0]).unwrap();
        let before = decoder.clone();
        let e = decoder.decode(&frames[2]).unwrap_err();
        assert_eq!(e.to_string(), "delta against tick 1 but the last decoded tick is 0; resync");
        assert_eq!(decoder, before);
        decoder.decode(&frames[1]).unwrap();
        decoder.decode(&frames[2]).unwrap();
    }

    /// What a `physics_step_full` answer does to a gamer: a keyframe in the middle of a
    /// chain is accepted by a decoder holding that chain, by one holding another chain (a
    /// liar's) and by a fresh one alike; each then holds exactly the keyframe's bodies,
    /// takes the deltas that follow it, and refuses deltas continuing the old chain.
    #[test]
    fn a_keyframe_mid_chain_restarts_any_decoders_baseline() {
        let elapsed = 1.0 / 60.0;
        let encode = |encoder: &mut ResultEncoder, result: &PhysicsStepResult, keyframe: bool| {
            let mut bytes = Vec::new();
            encoder.encode(result, keyframe, elapsed, &mut bytes).unwrap();
            bytes
        };
        let (mut encoder, mut liar) = (ResultEncoder::new(), ResultEncoder::new());
        let (mut chain, mut wrong) = (ResultDecoder::new(), ResultDecoder::new());
        for tick in 0..10 {
            chain.decode(&encode(&mut encoder, &falling(5, tick), tick == 0)).unwrap();
            let mut lie = falling(5, tick);
            lie.bodies[2].position[0] += 1.0;
            wrong.decode(&encode(&mut liar, &lie, tick == 0)).unwrap();
        }
        // The old chain, continued without the keyframe.
        let mut old = encoder.clone();
        encode(&mut old, &falling(5, 10), false);
        let stale = encode(&mut old, &falling(5, 11), false);

        // Every body, more than the chain carried.
        let full = falling(8, 10);
        let keyframe = encode(&mut encoder, &full, true);
        let mut fresh = ResultDecoder::new();
        assert_eq!(fresh.decode(&keyframe).unwrap(), full);
        let baseline: Vec<(BodyId, QuantizedState)> = full.bodies.iter().map(|b| (b.id, quantize(b))).collect();
        assert_eq!(fresh.baseline(), &baseline[..]);
        for decoder in [&mut chain, &mut wrong] {
            assert_eq!(decoder.decode(&keyframe).unwrap(), full);
            assert_eq!(decoder.baseline(), &baseline[..], "the keyframe's bodies, nothing of the old chain");
            assert_eq!(*decoder, fresh);
        }
        let next = encode(&mut encoder, &falling(8, 11), false);
        for decoder in [&mut chain, &mut wrong, &mut fresh] {
            let before = decoder.clone();
            assert!(matches!(decoder.decode(&stale), Err(PackedError::WrongStream { .. })), "the old chain");
            assert_eq!(*decoder, before);
            assert_eq!(decoder.decode(&next).unwrap(), falling(8, 11));
        }
    }

    #[test]
    fn malformed_frames_get_clear_errors() {
        let mut request = Vec::new();
        encode_request(&sample_request(), &mut request);
        let mut result = Vec::new();
        ResultEncoder::new().encode(&falling(10, 3), true, 1.0 / 60.0, &mut result).unwrap();
        // Every truncation is an error, never a panic.
        for end in 0..request.len() {
            assert!(decode_request(&request[..end]).is_err(), "{end}");
        }
        for end in 0..result.len() {
            let mut decoder = ResultDecoder::new();
            assert!(decoder.decode(&result[..end]).is_err(), "{end}");
            assert_eq!(decoder, ResultDecoder::new());
        }
        assert_eq!(decode_request(&[]).unwrap_err(), PackedError::Empty);
        assert!(matches!(decode_request(&result).unwrap_err(), PackedError::WrongFormat { found: 0x51, .. }));
        let mut v2 = request.clone();
        v2[1] = 2;
        assert_eq!(
            decode_request(&v2).unwrap_err().to_string(),
            "unknown packed format version 2; this build reads version 1"
        );
        let mut trailing = request.clone();
        trailing.push(0);
        assert_eq!(decode_request(&trailing).unwrap_err(), PackedError::TrailingBytes(1));
        // An absurd count: refused before anything is allocated.
        let mut absurd = vec![REQUEST_FORMAT, VERSION, 0, LIST_REMOVE, 1, 0, 0, 0, 0];
        put_varint(&mut absurd, u64::MAX);
        assert!(matches!(decode_request(&absurd).unwrap_err(), PackedError::TooMany { what: "remove", .. }));
        let mut past_end = absurd[..9].to_vec();
        put_varint(&mut past_end, 1000);
        assert!(matches!(decode_request(&past_end).unwrap_err(), PackedError::CountPastEnd { count: 1000, .. }));
        // A varint of eleven bytes, and an overlong one.
        let mut long = absurd[..9].to_vec();
        long.extend_from_slice(&[0xff; 11]);
        assert_eq!(decode_request(&long).unwrap_err(), PackedError::BadVarint("remove"));
        let overlong = [REQUEST_FORMAT, VERSION, 0, 0, 0x81, 0x00, 0, 0, 0, 0];
        assert_eq!(decode_request(&overlong).unwrap_err(), PackedError::BadVarint("tick"));
        // Too many bodies for a session.
        let mut many = vec![RESULT_FORMAT, VERSION, RES_KEYFRAME, 0];
        put_varint(&mut many, MAX_BODIES_PER_SESSION as u64 + 1);
        assert!(matches!(ResultDecoder::new().decode(&many).unwrap_err(), PackedError::TooMany { what: "bodies", .. }));
        for e in [PackedError::Truncated("x"), PackedError::BadRotation("y"), PackedError::NoBaseline(3)] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn the_encoder_refuses_what_it_cannot_represent() {
        let mut encoder = ResultEncoder::new();
        let mut out = vec![1, 2, 3];
        let mut unsorted = falling(3, 0);
        unsorted.bodies.swap(0, 1);
        assert!(matches!(encoder.encode(&unsorted, true, 0.1, &mut out), Err(PackedError::Unsorted { .. })));
        let bad_digest = PhysicsStepResult { digest: Some("XYZ".into()), ..falling(3, 0) };
        assert!(matches!(encoder.encode(&bad_digest, true, 0.1, &mut out), Err(PackedError::BadDigest(_))));
        let error = PhysicsStepResult { status: TaskStatus::Error, ..Default::default() };
        assert_eq!(encoder.encode(&error, true, 0.1, &mut out), Err(PackedError::NotSuccess));
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(encoder.last_tick(), None);
    }

    #[test]
    fn ten_thousand_bodies_fit_the_frame_limit_with_room_to_spare() {
        let add: Vec<BodyDesc> = (0..10_000u64)
            .map(|i| {
                let (x, z) = ((i % 100) as f32 * 1.5 - 75.0, (i / 100) as f32 * 1.5 - 75.0);
                BodyDesc {
                    rotation: [0.0, 0.38268343, 0.0, 0.9238795],
                    ..BodyDesc::new(i, Shape::Box { half_extents: [0.5; 3] }, [x, 3.0 + (i % 7) as f32, z])
                }
            })
            .collect();
        let request =
            PhysicsStepRequest { tick: 0, snapshot: true, dt: 1.0 / 60.0, steps: 1, add, ..Default::default() };
        let mut bytes = Vec::new();
        encode_request(&request, &mut bytes);
        let json = serde_json::to_vec(&request).unwrap().len();
        println!("10,000-body snapshot request: {} bytes packed, {json} bytes of JSON", bytes.len());
        assert!(bytes.len() < 400_000, "{}", bytes.len());
        assert_eq!(decode_request(&bytes).unwrap(), snap_request(&request));
        let result = PhysicsStepResult {
            tick: 0,
            bodies: request
                .add
                .iter()
                .map(|d| {
                    snap(&BodyState {
                        id: d.id,
                        position: d.position,
                        rotation: d.rotation,
                        linvel: [0.0, -0.16, 0.0],
                        angvel: [0.0; 3],
                        sleeping: false,
                    })
                })
                .collect(),
            digest: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        bytes.clear();
        ResultEncoder::new().encode(&result, true, 1.0 / 60.0, &mut bytes).unwrap();
        let json = serde_json::to_vec(&result).unwrap().len();
        println!("its keyframe result: {} bytes packed, {json} bytes of JSON", bytes.len());
        assert!(bytes.len() < 250_000, "{}", bytes.len());
        assert_eq!(ResultDecoder::new().decode(&bytes).unwrap(), result);
    }

    /// Random sessions: bodies appearing, leaving, falling asleep, spinning, teleported far
    /// (whole rotations, large residuals), at the edges of the lattice. Every frame decodes
    /// to the quantized result, whatever the encoder chose.
    #[test]
    fn random_sessions_round_trip() {
        let mut rng = fastrand::Rng::with_seed(77);
        let (mut encoder, mut decoder) = (ResultEncoder::new(), ResultDecoder::new());
        let mut states: Vec<BodyState> = Vec::new();
        for tick in 0..2_000u64 {
            if tick % 400 == 0 || rng.u8(..50) == 0 {
                states = (0..rng.u64(..60))
                    .map(|i| BodyState {
                        id: i * 2 + rng.u64(..2),
                        position: [0.0; 3],
                        rotation: [0.0, 0.0, 0.0, 1.0],
                        linvel: [0.0; 3],
                        angvel: [0.0; 3],
                        sleeping: false,
                    })
                    .collect();
            }
            for s in &mut states {
                let choice = rng.u8(..8);
                let mut f = |scale: f32| (rng.f32() - 0.5) * scale;
                match choice {
                    0 => s.position = [f(2.0e6), f(2.0e6), f(1.0)],
                    1 => s.rotation = [f(2.0), f(2.0), f(2.0), f(2.0)],
                    2 => s.linvel = [f(3.0e5), f(1.0), 0.0],
                    3 => s.angvel = [f(8.0), f(8.0), f(8.0)],
                    4 => s.sleeping = !s.sleeping,
                    _ => {
                        for k in 0..3 {
                            s.position[k] += s.linvel[k] / 60.0;
                        }
                    }
                }
            }
            let bodies: Vec<BodyState> = states.iter().filter(|_| rng.u8(..4) != 0).copied().collect();
            let result = PhysicsStepResult {
                tick,
                bodies,
                removed: if rng.u8(..10) == 0 { vec![rng.u64(..), u64::MAX] } else { vec![] },
                digest: rng.bool().then(|| format!("{:016x}", rng.u64(..))),
                ..Default::default()
            };
            let mut bytes = Vec::new();
            encoder
                .encode(&result, rng.u8(..100) == 0, [1.0 / 60.0, 0.5, f32::NAN][rng.usize(..3)], &mut bytes)
                .unwrap();
            let decoded = decoder.decode(&bytes).unwrap_or_else(|e| panic!("tick {tick}: {e}"));
            let snapped: Vec<BodyState> = result.bodies.iter().map(snap).collect();
            assert_eq!(format!("{:?}", decoded.bodies), format!("{snapped:?}"), "tick {tick}");
            assert_eq!((decoded.removed, decoded.digest), (result.removed, result.digest));
        }
    }

    #[test]
    fn varints_and_zigzag_cover_the_extremes() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(Reader::new(&out).varint("v"), Ok(v));
        }
        for v in [0, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
