//! The plugin against a scripted peer that returns broken physics results: a body that
//! fell far off the level (position and speed beyond the validator's limits), a zero
//! quaternion, and a NaN (sent as `null`). Broken results must be rejected with a
//! resync, and every request the plugin sends afterwards, snapshots included, must still
//! be accepted by `p2c2r_sim::physics::PhysicsWorld`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2c2r::prelude::*;
use common::*;
use p2c2r_protocol::physics::PhysicsStepRequest;
use p2c2r_protocol::{Message, TaskResult, raw_payload, task_types};
use serde_json::{Value, json};

/// What the fake peer saw.
#[derive(Default)]
struct Seen {
    /// (tick, snapshot) of every physics request.
    physics: Vec<(u64, bool)>,
    /// Requests the real `PhysicsWorld` rejected: (tick, snapshot, error).
    rejected: Vec<(u64, bool, String)>,
}

/// From this tick on every answer reports the body far below the level, falling fast.
const FAR_OFF_FROM: u64 = 10;
/// The first answer at or after this tick carries a zero quaternion.
const ZERO_QUAT_AT: u64 = 20;
/// The first answer at or after this tick carries a NaN (serialised as `null`).
const NAN_AT: u64 = 30;

async fn serve(listener: tokio::net::TcpListener, seen: Arc<Mutex<Seen>>) {
    let mut ws = Conn::accept(&listener).await;
    let mut world = p2c2r_sim::physics::PhysicsWorld::new();
    let (mut zero_sent, mut nan_sent) = (false, false);
    while let Some(request) = ws.next_task_request().await {
        if request.task_type != task_types::PHYSICS_STEP {
            continue;
        }
        let step: PhysicsStepRequest = serde_json::from_str(request.task_data.json().unwrap()).unwrap();
        let probe = request.task_id.contains(":probe:");
        let answer = match world.step(&step) {
            Ok(r) => {
                let mut v = serde_json::to_value(&r).unwrap();
                if !probe && step.tick >= FAR_OFF_FROM {
                    for b in v["bodies"].as_array_mut().unwrap() {
                        // Beyond every limit, but heading back inwards: the clamped
                        // snapshot keeps the body inside the world, where the real world
                        // must accept it (one heading outwards would leave the world and
                        // be removed, which `local.rs` tests).
                        b["position"] = json!([3.0e6, -2.0e6, 0.0]);
                        b["linvel"] = json!([0.0, 5.0e5, 0.0]);
                        b["angvel"] = json!([2.0e5, 0.0, 0.0]);
                    }
                    let first = v["bodies"].as_array_mut().unwrap().first_mut();
                    if let Some(b) = first {
                        if step.tick >= ZERO_QUAT_AT && !zero_sent {
                            zero_sent = true;
                            b["rotation"] = json!([0.0, 0.0, 0.0, 0.0]);
                        } else if step.tick >= NAN_AT && !nan_sent {
                            nan_sent = true;
                            b["linvel"] = json!([0.0, Value::Null, 0.0]);
                        }
                    }
                }
                v.to_string()
            }
            Err(e) => {
                seen.lock().unwrap().rejected.push((step.tick, step.snapshot, e.message.clone()));
                serde_json::to_string(&e).unwrap()
            }
        };
        seen.lock().unwrap().physics.push((step.tick, step.snapshot));
        let reply = Message::TaskResult(TaskResult {
            task_id: request.task_id.clone(),
            result: raw_payload(answer).unwrap(),
            attempt: Some(1),
            peer_id: Some("bad-peer".into()),
        });
        ws.send(&reply).await;
    }
}

#[test]
fn broken_peer_results_are_rejected_and_snapshots_stay_valid() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let script = seen.clone();
    let (_rt, url) = scripted_server(move |listener| serve(listener, script));

    let mut app = app_with(
        // JSON: this peer lies in ways only JSON can carry (NaN as null, off-range
        // floats); packed results carry lattice integers, which the decoder bounds.
        P2c2rPlugin::new(url)
            .gamer_id("bad")
            .with_connection(ConnectionSettings { wire: Encoding::Json, ..default() })
            .with_fallback(FallbackSettings { timeout: Duration::from_secs(10), ..default() })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    let body = spawn_sinking_ball(&mut app);
    let snapshots_after = |seen: &Seen, tick: u64| seen.physics.iter().filter(|(t, s)| *t > tick && *s).count();
    run_until(
        &mut app,
        Duration::from_secs(60),
        Duration::from_millis(2),
        |app| {
            if let Some(s) = app.world().get::<PhysicsState>(body) {
                assert!(s.position.is_finite() && s.rotation.is_finite() && s.linvel.is_finite(), "{s:?}");
                assert!(s.rotation.is_normalized(), "{s:?}");
            }
        },
        |app| {
            let seen = seen.lock().unwrap();
            stats(app).rejected_results >= 2 && snapshots_after(&seen, NAN_AT) >= 1 && stats(app).ticks >= NAN_AT + 20
        },
        "two rejected results and a resync after each",
    );
    let s = stats(&app);
    assert!(s.task_failures >= 2, "{s:?}");
    let seen = seen.lock().unwrap();
    assert!(seen.rejected.is_empty(), "the peer's validator rejected requests: {:?}", seen.rejected);
    assert!(
        snapshots_after(&seen, ZERO_QUAT_AT) >= 2,
        "each broken result was followed by a snapshot: {:?}",
        seen.physics
    );
    // The far-off state (clamped) is what the snapshots carried, and the peer accepted it.
    let state = *app.world().get::<PhysicsState>(body).unwrap();
    assert!(state.position.y < -1.0e5, "{state:?}");
    assert_eq!(s.mode, OffloadMode::Offloaded, "{s:?}");
}
