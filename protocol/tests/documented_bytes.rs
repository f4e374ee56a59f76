//! The byte-level examples of PROTOCOL.md ("Encodings", "Packed `physics_step`") are what
//! the encoders write, byte for byte (and read back); and a delta from another keyframe's
//! chain is refused even when it names the right tick.

use p2c2r_protocol::packed::{PackedError, ResultDecoder, ResultEncoder, decode_request, encode_request};
use p2c2r_protocol::physics::{
    ApplyImpulse, BodyDesc, BodyState, IDENTITY, KinematicTarget, PhysicsStepRequest, PhysicsStepResult, Shape,
};

const DT: f32 = 1.0 / 60.0;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn the_documented_request_is_what_encode_request_writes() {
    let request = PhysicsStepRequest {
        tick: 42,
        dt: DT,
        steps: 1,
        impulses: vec![ApplyImpulse { id: 7, impulse: [0.0, 5.0, 0.0], torque_impulse: [0.0; 3] }],
        kinematic_targets: vec![KinematicTarget { id: 9, position: [1.0, 0.5, -2.0], rotation: IDENTITY }],
        ..Default::default()
    };
    let mut bytes = Vec::new();
    encode_request(&request, &mut bytes);
    assert_eq!(hex(&bytes), "50 01 00 60 2a 89 88 88 3c 01 0e 02 00 00 a0 40 01 12 07 80 80 02 80 80 01 ff ff 03");
    assert_eq!(serde_json::to_string(&request).unwrap().len(), 201);
}

#[test]
fn the_documented_tagged_shape_with_an_extra_is_what_encode_request_writes() {
    // A snapshot adding a cylinder that gravity pulls at half strength.
    let body = BodyDesc {
        gravity_scale: 0.5,
        ..BodyDesc::new(0, Shape::Cylinder { half_height: 0.5, radius: 0.25 }, [0.0, 2.0, 0.0])
    };
    let request =
        PhysicsStepRequest { tick: 0, snapshot: true, dt: DT, steps: 1, add: vec![body], ..Default::default() };
    let mut bytes = Vec::new();
    encode_request(&request, &mut bytes);
    assert_eq!(
        hex(&bytes),
        "50 01 01 01 00 89 88 88 3c 01 00 03 80 05 00 00 00 3f 00 00 80 3e 02 00 00 00 3f 00 80 80 04 00"
    );
    assert_eq!(decode_request(&bytes).unwrap(), request);
}

fn ball(tick: u64) -> PhysicsStepResult {
    let state = BodyState {
        id: 7,
        position: [0.0, 10.0 - tick as f32 * 0.25, 0.0],
        rotation: IDENTITY,
        linvel: [0.0, -15.0, 0.0],
        angvel: [0.0; 3],
        sleeping: false,
    };
    PhysicsStepResult { tick, bodies: vec![state], ..Default::default() }
}

#[test]
fn the_documented_keyframe_and_delta_are_what_the_encoder_writes() {
    let mut encoder = ResultEncoder::new();
    let (mut keyframe, mut delta) = (Vec::new(), Vec::new());
    encoder.encode(&ball(0), true, DT, &mut keyframe).unwrap();
    encoder.encode(&ball(1), false, DT, &mut delta).unwrap();
    assert_eq!(hex(&keyframe), "51 01 01 00 01 07 0a 02 ff ef 01 80 80 14");
    assert_eq!(hex(&delta), "51 01 00 01 01 05 eb d3 0a 89 88 88 3c 01 00 00");
    let mut decoder = ResultDecoder::new();
    assert_eq!(decoder.decode(&keyframe).unwrap(), ball(0));
    assert_eq!(decoder.decode(&delta).unwrap(), ball(1));
}

#[test]
fn a_delta_from_another_keyframe_is_refused_though_its_tick_matches() {
    // The gamer decoded a keyframe for tick 5; the peer answered a later snapshot that
    // reused tick 5 with another keyframe, which was lost. Its delta for tick 6 names
    // baseline 5, the tick the gamer holds: only the keyframe identity tells them apart.
    let (mut seen, mut lost) = (ResultEncoder::new(), ResultEncoder::new());
    let mut decoder = ResultDecoder::new();
    let mut frame = Vec::new();
    seen.encode(&PhysicsStepResult { tick: 5, ..ball(0) }, true, DT, &mut frame).unwrap();
    decoder.decode(&frame).unwrap();
    let moved = PhysicsStepResult { tick: 5, ..ball(3) };
    frame.clear();
    lost.encode(&moved, true, DT, &mut frame).unwrap();
    frame.clear();
    lost.encode(&PhysicsStepResult { tick: 6, ..ball(4) }, false, DT, &mut frame).unwrap();
    let before = decoder.clone();
    let error = decoder.decode(&frame).unwrap_err();
    assert!(matches!(error, PackedError::WrongStream { .. }), "{error}");
    assert!(error.needs_resync());
    assert_eq!(decoder, before, "a refused delta changes nothing");
}

#[test]
fn the_documented_events_are_what_the_encoder_writes() {
    use p2c2r_protocol::physics::{EventKind, PhysicsEvent};
    // A keyframe of tick 5 that moved no body: body 4 was removed while touching body 1,
    // and body 2 entered sensor 9.
    let result = PhysicsStepResult {
        tick: 5,
        events: vec![
            PhysicsEvent { step: 0, body1: 1, body2: 4, kind: EventKind::Stopped { sensor: false, removed: true } },
            PhysicsEvent { step: 0, body1: 2, body2: 9, kind: EventKind::Started { sensor: true } },
        ],
        ..Default::default()
    };
    let mut frame = Vec::new();
    ResultEncoder::new().encode(&result, true, DT, &mut frame).unwrap();
    assert_eq!(hex(&frame), "51 01 21 05 02 08 02 02 05 02 06 00");
    assert_eq!(ResultDecoder::new().decode(&frame).unwrap(), result);
}

/// A snapshot that names a cached level mesh, adds a ball that reports its collisions,
/// hangs it from the world on a ball joint, and says the two touch.
fn documented_snapshot() -> PhysicsStepRequest {
    use p2c2r_protocol::physics::{BodyType, JointDesc, JointKind, ShapeHash, active_events};
    let level = BodyDesc::new(1, Shape::Cached { sha256: ShapeHash([0x5a; 32]), elements: 300 }, [0.0; 3])
        .with_body_type(BodyType::Fixed);
    let ball = BodyDesc {
        active_events: active_events::COLLISION_EVENTS,
        ..BodyDesc::new(2, Shape::Sphere { radius: 0.5 }, [0.0, 0.5, 0.0])
    };
    let joint = JointDesc {
        id: 7,
        body1: 2,
        body2: None,
        kind: JointKind::Spherical,
        anchor1: [0.0, 0.5, 0.0],
        anchor2: [0.0, 1.5, 0.0],
        contacts_enabled: true,
    };
    PhysicsStepRequest {
        tick: 0,
        snapshot: true,
        dt: DT,
        steps: 1,
        add: vec![level, ball],
        add_joints: vec![joint],
        touching: vec![[1, 2]],
        ..Default::default()
    }
}

#[test]
fn the_documented_cached_shape_joint_and_touching_pair_are_what_encode_request_writes() {
    let request = documented_snapshot();
    let mut bytes = Vec::new();
    encode_request(&request, &mut bytes);
    let hash = vec!["5a"; 32].join(" ");
    let expected = format!(
        "50 01 01 81 14 00 89 88 88 3c 02 02 0b 00 0b {hash} ac 02 00 00 00 02 01 80 00 00 00 3f 80 10 01 00 80 80 01 00 \
         01 0e 03 02 12 00 00 00 3f 00 00 c0 3f 01 02 02"
    );
    assert_eq!(hex(&bytes), expected);
    assert_eq!(bytes.len(), 83);
    assert_eq!(decode_request(&bytes).unwrap(), request);
}
