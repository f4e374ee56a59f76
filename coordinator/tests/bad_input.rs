//! Hostile and broken input: each gets a clear error or a clean close, and the
//! coordinator keeps serving everyone else.

mod common;

use std::time::Duration;

use common::{Client, WAIT, gamer, request};
use coordinator::{Config, spawn};
use futures_util::StreamExt;
use p2c2r_protocol::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(config: Config) -> coordinator::CoordinatorHandle {
    spawn("127.0.0.1:0", config).await.expect("bind loopback")
}

/// A full task round trip, proving the coordinator still serves normal clients.
async fn still_serving(url: &str, tag: &str) {
    let mut peer = Client::peer(url, &format!("check-peer-{tag}"), 1).await;
    // An honest gamer: the real gamer client.
    let mut gamer = gamer::connect(url, &format!("check-gamer-{tag}")).await;
    gamer.send(request("check", "check_type", "{}", None, None));
    let a = peer.recv_assignment().await;
    peer.answer(&a, r#"{"status":"success"}"#).await;
    assert_eq!(gamer.next_outcome().await.task_id, "check");
}

async fn expect_error(client: &mut Client, frame: &str, code: ErrorCode) -> p2c2r_protocol::ErrorMessage {
    client.send_text(frame).await;
    let e = client.recv_error().await;
    assert_eq!(e.code, code, "{frame:.80} -> {e:?}");
    assert!(!e.message.is_empty());
    e
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays_usable() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut c = Client::connect(&url).await;
    expect_error(&mut c, "this is not json", ErrorCode::BadJson).await;
    expect_error(&mut c, "[1, 2, 3]", ErrorCode::BadJson).await;
    expect_error(&mut c, r#"{"peer_id": "p"}"#, ErrorCode::UnknownMsgType).await;
    let e = expect_error(&mut c, r#"{"msg_type": "launch_missiles"}"#, ErrorCode::UnknownMsgType).await;
    assert_eq!(e.refers_to.as_deref(), Some("launch_missiles"));
    let e = expect_error(&mut c, r#"{"msg_type": "register_peer"}"#, ErrorCode::InvalidMessage).await;
    assert!(e.message.contains("peer_id"), "{}", e.message);
    expect_error(&mut c, r#"{"msg_type": "register_gamer", "gamer_id": ""}"#, ErrorCode::InvalidMessage).await;
    let long_id = format!(r#"{{"msg_type": "register_gamer", "gamer_id": "{}"}}"#, "x".repeat(1000));
    expect_error(&mut c, &long_id, ErrorCode::InvalidMessage).await;
    let deep = format!(
        r#"{{"msg_type":"register_peer","peer_id":"p","capabilities":{}1{}}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    expect_error(&mut c, &deep, ErrorCode::InvalidMessage).await;
    let deep_array = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    expect_error(&mut c, &deep_array, ErrorCode::BadJson).await;
    // Binary frames need the binary subprotocol, offered when connecting.
    c.send_binary(vec![1u8, 2, 3]).await;
    let error = c.recv_error().await;
    assert_eq!(error.code, ErrorCode::BadFrame);
    assert!(error.message.contains("p2c2r.bin.v1"), "{}", error.message);
    // After all that, the same connection registers and works.
    c.send_text(r#"{"msg_type": "register_gamer", "gamer_id": "survivor"}"#).await;
    assert!(matches!(c.recv().await, p2c2r_protocol::Message::RegistrationAck(_)));
    still_serving(&url, "a").await;
    assert!(coord.stats().errors_sent >= 10);
    coord.shutdown().await;
}

#[tokio::test]
async fn wrong_role_and_unregistered_messages_are_refused() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut nobody = Client::connect(&url).await;
    let e = expect_error(
        &mut nobody,
        r#"{"msg_type":"task_request","task_id":"t","task_type":"physics","task_data":{}}"#,
        ErrorCode::NotRegistered,
    )
    .await;
    assert_eq!(e.refers_to.as_deref(), Some("t"));
    expect_error(&mut nobody, r#"{"msg_type":"task_result","task_id":"1.1","result":{}}"#, ErrorCode::NotRegistered)
        .await;

    let mut peer = Client::peer(&url, "p", 1).await;
    expect_error(&mut peer, r#"{"msg_type":"task_request","task_id":"t","task_type":"x"}"#, ErrorCode::WrongRole).await;
    expect_error(&mut peer, r#"{"msg_type":"register_gamer","gamer_id":"g"}"#, ErrorCode::AlreadyRegistered).await;
    expect_error(&mut peer, r#"{"msg_type":"task_result","task_id":"42.1","result":{}}"#, ErrorCode::UnknownTask).await;
    expect_error(&mut peer, r#"{"msg_type":"task_result","task_id":"forged","result":{}}"#, ErrorCode::UnknownTask)
        .await;
    expect_error(
        &mut peer,
        r#"{"msg_type":"task_assignment","task_id":"1.1","task_data":{"task_id":"t","task_type":"x"}}"#,
        ErrorCode::WrongRole,
    )
    .await;

    let mut gamer = Client::gamer(&url, "g").await;
    expect_error(&mut gamer, r#"{"msg_type":"task_result","task_id":"t","result":{}}"#, ErrorCode::WrongRole).await;
    expect_error(&mut gamer, r#"{"msg_type":"registration_ack","status":"registered"}"#, ErrorCode::WrongRole).await;
    expect_error(
        &mut gamer,
        r#"{"msg_type":"task_request","task_id":"t","task_type":"x","deadline_ms":0}"#,
        ErrorCode::InvalidMessage,
    )
    .await;
    // A peer cannot answer a task assigned to someone else.
    gamer.submit("real", "x", "{}", None).await;
    let a = peer.recv_assignment().await;
    let mut thief = Client::peer(&url, "thief", 1).await;
    thief.answer(&a, r#"{"status":"success","forged":true}"#).await;
    assert_eq!(thief.recv_error().await.code, ErrorCode::UnknownTask);
    peer.answer(&a, r#"{"status":"success"}"#).await;
    let r = gamer.recv_result().await;
    assert_eq!(r.peer_id.as_deref(), Some("p"));
    // Duplicate task ids while pending are refused.
    gamer.submit("dup", "x", "{}", None).await;
    gamer.submit("dup", "x", "{}", None).await;
    assert_eq!(gamer.recv_error().await.code, ErrorCode::DuplicateTask);
    coord.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_closes_that_connection_only() {
    let coord = start(Config {
        connections: coordinator::Connections { max_frame_bytes: 64 * 1024, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    let mut big = Client::gamer(&url, "big").await;
    let payload = format!(r#"{{"blob":"{}"}}"#, "x".repeat(100 * 1024));
    big.submit("t", "physics", &payload, None).await;
    assert_eq!(big.recv_error().await.code, ErrorCode::FrameTooLarge);
    assert_eq!(big.expect_closed().await, Some(1009));
    still_serving(&url, "b").await;
    coord.shutdown().await;
}

#[tokio::test]
async fn default_frame_limit_fits_a_ten_thousand_body_snapshot() {
    use p2c2r_protocol::physics::{BodyDesc, PhysicsStepRequest, Shape};
    let coord = start(Config::default()).await;
    let url = coord.url();
    let mut peer = Client::peer(&url, "p", 1).await;
    let mut gamer = Client::gamer(&url, "g").await;
    let snapshot = PhysicsStepRequest {
        tick: 1,
        snapshot: true,
        dt: 1.0 / 60.0,
        steps: 1,
        add: (0..10_000u64)
            .map(|i| {
                let mut b =
                    BodyDesc::new(i, Shape::Box { half_extents: [0.5, 0.5, 0.5] }, [i as f32 * 1.1, 12.345, -0.5]);
                b.rotation = [0.1, 0.2, 0.3, 0.927];
                b.linvel = [1.5, -2.5, 0.25];
                b.mass = Some(2.0);
                b
            })
            .collect(),
        ..Default::default()
    };
    let payload = serde_json::to_string(&snapshot).unwrap();
    gamer.submit("snap", "physics_step", &payload, Some("s")).await;
    let a = peer.recv_assignment().await;
    assert_eq!(a.task_data.task_data.json().unwrap(), payload);
    coord.shutdown().await;
}

// Paused clock: the handshake timeout is a tokio timer.
#[tokio::test(start_paused = true)]
async fn handshake_that_never_finishes_is_timed_out() {
    let coord = start(Config {
        connections: coordinator::Connections { handshake_timeout: Duration::from_millis(200), ..Default::default() },
        ..Config::default()
    })
    .await;
    let mut raw = tokio::net::TcpStream::connect(coord.local_addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // and never the rest
    // Answered 408 Request Timeout, then closed.
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut answer)).await.expect("server closed the socket").unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 408 "), "{}", String::from_utf8_lossy(&answer));
    // A connection that says nothing at all is closed the same way.
    let mut mute = tokio::net::TcpStream::connect(coord.local_addr()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, mute.read_to_end(&mut answer)).await.expect("server closed the socket").unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 408 "), "{}", String::from_utf8_lossy(&answer));
    still_serving(&coord.url(), "c").await;
    coord.shutdown().await;
}

// Paused clock: the registration timeout is a tokio timer.
#[tokio::test(start_paused = true)]
async fn client_that_never_registers_is_closed() {
    let coord = start(Config {
        connections: coordinator::Connections { register_timeout: Duration::from_millis(200), ..Default::default() },
        ..Config::default()
    })
    .await;
    let mut lurker = Client::connect(&coord.url()).await;
    assert_eq!(lurker.recv_error().await.code, ErrorCode::NotRegistered);
    assert_eq!(lurker.expect_closed().await, Some(1008));
    coord.shutdown().await;
}

#[tokio::test]
async fn slow_reader_is_disconnected_instead_of_buffered() {
    // No resume grace: the sloth's remaining tasks go with it, so the check below is not
    // queued behind them.
    let coord = start(Config {
        connections: coordinator::Connections { send_queue_frames: 16, ..Default::default() },
        identity: coordinator::Identity { resume_grace: Duration::ZERO, ..Default::default() },
        ..Config::default()
    })
    .await;
    let url = coord.url();
    // Capacity below the queue length: a burst of assignments must not look like a slow peer.
    let mut peer = Client::peer(&url, "p", 8).await;
    let mut sloth = Client::gamer(&url, "sloth").await;
    // Results of ~1 MB each for a gamer that never reads: socket buffers fill, then the
    // bounded queue, then the coordinator lets go of it.
    let big_result = format!(r#"{{"status":"success","blob":"{}"}}"#, "y".repeat(1 << 20));
    let mut answered = 0;
    for i in 0..64 {
        sloth.submit(&format!("t{i}"), "x", "{}", None).await;
    }
    while coord.stats().gamers == 1 {
        let a = tokio::select! {
            a = peer.recv_assignment() => a,
            _ = tokio::time::sleep(WAIT) => panic!("the slow gamer was never disconnected"),
        };
        peer.answer(&a, &big_result).await;
        answered += 1;
        if answered == 64 {
            common::eventually("slow gamer disconnected", || coord.stats().gamers == 0).await;
        }
    }
    still_serving(&url, "d").await;
    // The sloth's socket ends without the results it did not read.
    let mut frames = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, sloth.ws.next()).await {
        frames += 1;
    }
    assert!(frames < 64, "it was cut off, not buffered for");
    coord.shutdown().await;
}

#[tokio::test]
async fn task_nobody_can_run_is_answered_with_queue_timeout() {
    let coord = start(Config {
        scheduling: coordinator::Scheduling { max_queue_wait: Some(Duration::from_millis(100)), ..Default::default() },
        ..Config::default()
    })
    .await;
    let mut gamer = Client::gamer(&coord.url(), "g").await;
    gamer.submit("orphan", "quantum", "{}", None).await;
    let result = gamer.recv_result().await;
    assert_eq!(result.task_id, "orphan");
    assert_eq!(common::json(result.result.json().unwrap())["code"], "queue_timeout");
    assert_eq!(coord.stats().queued_now, 0);
    coord.shutdown().await;
}

#[tokio::test]
async fn unknown_task_type_waits_in_the_queue_until_a_capable_peer_arrives() {
    let coord = start(Config::default()).await;
    let url = coord.url();
    let caps = p2c2r_protocol::Capabilities {
        task_types: Some(vec!["physics_step".into()]),
        max_concurrent_tasks: Some(2),
        ..Default::default()
    };
    let _narrow = Client::peer_with(&url, "narrow", caps).await;
    let mut gamer = Client::gamer(&url, "g").await;
    gamer.submit("exotic", "quantum", "{}", None).await;
    common::eventually("queued", || coord.stats().queued_now == 1).await;
    let mut wide = Client::peer(&url, "wide", 1).await;
    let a = wide.recv_assignment().await;
    assert_eq!(a.task_data.task_type, "quantum");
    coord.shutdown().await;
}
