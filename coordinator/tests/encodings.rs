//! JSON and binary clients through one coordinator: every pairing of a gamer's and a
//! peer's encoding delivers the same payload bytes both ways, and malformed binary frames
//! get a clear error without costing the connection.

mod common;

use common::{Client, within};
use coordinator::{Config, spawn};
use p2c2r_protocol::binary::{self, FrameHeader};
use p2c2r_protocol::{Encoding, ErrorCode, Message, Payload, TaskResult, raw_payload};
use p2c2r_testkit::client::{capacity, register_gamer, register_peer, task_request};

async fn connect(url: &str, encoding: Encoding) -> Client {
    match encoding {
        Encoding::Json => Client::connect(url).await,
        Encoding::Binary => Client::connect_binary(url).await,
    }
}

/// A gamer of one encoding submits `payload`; a peer of another receives it, answers
/// `answer`; both see the other's bytes exactly.
async fn round_trip(url: &str, gamer_wire: Encoding, peer_wire: Encoding, payload: Payload, answer: Payload) {
    let kind = if payload.is_binary() { "packed" } else { "json" };
    let tag = format!("{}-{}-{kind}", gamer_wire.as_str(), peer_wire.as_str());
    let mut peer = connect(url, peer_wire).await;
    peer.register(&register_peer(&format!("peer-{tag}"), capacity(1), None)).await;
    let mut gamer = connect(url, gamer_wire).await;
    gamer.register(&register_gamer(&format!("gamer-{tag}"), None)).await;

    gamer.send(&task_request("t1", "physics_step", payload.clone(), Some("s".into()), None)).await;
    let assignment = peer.recv_assignment().await;
    let received = &assignment.task_data.task_data;
    assert_eq!(bytes_of(received), bytes_of(&payload), "{tag}: the peer got the gamer's payload");
    assert_eq!(assignment.task_data.session_id.as_deref(), Some("s"));

    peer.send(&Message::TaskResult(TaskResult {
        task_id: assignment.task_id,
        result: answer.clone(),
        attempt: Some(assignment.attempt),
        peer_id: None,
    }))
    .await;
    let result = gamer.recv_result().await;
    assert_eq!(result.task_id, "t1");
    assert_eq!(bytes_of(&result.result), bytes_of(&answer), "{tag}: the gamer got the peer's answer");
}

fn result_of(assignment: &p2c2r_protocol::TaskAssignment, result: Payload) -> Message {
    Message::TaskResult(TaskResult {
        task_id: assignment.task_id.clone(),
        result,
        attempt: Some(assignment.attempt),
        peer_id: None,
    })
}

/// What a payload carries: the bytes of a binary one (wherever it travelled base64
/// wrapped), the text of a JSON one.
fn bytes_of(payload: &Payload) -> Vec<u8> {
    match payload.binary_bytes() {
        Some(bytes) => bytes.into_owned(),
        None => payload.json().expect("JSON").as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn every_pairing_of_json_and_binary_clients_delivers_the_same_bytes() {
    let coord = spawn("127.0.0.1:0", Config::default()).await.unwrap();
    let url = coord.url();
    let packed = Payload::binary((0..=255u8).cycle().take(3000).collect::<Vec<u8>>());
    let answer = Payload::binary(vec![0x51, 1, 0, 0xff]);
    let json = raw_payload(r#"{"tick":1,"dt":0.016}"#.into()).unwrap();
    let json_answer = raw_payload(r#"{"status":"success","tick":1,"bodies":[]}"#.into()).unwrap();
    for gamer in [Encoding::Json, Encoding::Binary] {
        for peer in [Encoding::Json, Encoding::Binary] {
            round_trip(&url, gamer, peer, packed.clone(), answer.clone()).await;
            round_trip(&url, gamer, peer, json.clone(), json_answer.clone()).await;
        }
    }
    coord.shutdown().await;
}

#[tokio::test]
async fn binary_payloads_travel_in_binary_frames_between_binary_clients() {
    let coord = spawn("127.0.0.1:0", Config::default()).await.unwrap();
    let url = coord.url();
    let mut peer = Client::connect_binary(&url).await;
    peer.register(&register_peer("p", capacity(1), None)).await;
    let mut gamer = Client::connect_binary(&url).await;
    gamer.register(&register_gamer("g", None)).await;
    gamer.send(&task_request("t", "physics_step", Payload::binary(vec![7u8; 64]), Some("s".into()), Some(250))).await;
    // Read the raw frame: a binary one, whose header names the task.
    let frame = within("an assignment frame", async {
        use futures_util::StreamExt;
        loop {
            match peer.ws.next().await.unwrap().unwrap() {
                tokio_tungstenite::tungstenite::Message::Binary(bytes) => return bytes,
                tokio_tungstenite::tungstenite::Message::Text(t) => panic!("a text frame: {t}"),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(frame[0], binary::FRAME_VERSION);
    let (header, payload) = postcard::take_from_bytes::<FrameHeader<'_>>(&frame[1..]).unwrap();
    let FrameHeader::TaskAssignment { task_id, task_type, session_id, deadline_ms, .. } = header else {
        panic!("{header:?}")
    };
    assert_eq!((task_id, task_type, session_id, deadline_ms), ("t", "physics_step", Some("s"), Some(250)));
    assert_eq!(payload, &[7u8; 64]);
    coord.shutdown().await;
}

#[tokio::test]
async fn malformed_binary_frames_get_bad_frame_and_the_connection_stays_usable() {
    let coord = spawn("127.0.0.1:0", Config::default()).await.unwrap();
    let url = coord.url();
    let mut c = Client::connect_binary(&url).await;
    let long = "x".repeat(300);
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (vec![], ErrorCode::BadFrame),
        (vec![9, 0], ErrorCode::BadFrame),
        (vec![binary::FRAME_VERSION], ErrorCode::BadFrame),
        (vec![binary::FRAME_VERSION, 7], ErrorCode::BadFrame),
        // A string length of 2^32 - 1 bytes in a 7-byte frame.
        (vec![binary::FRAME_VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0x0f], ErrorCode::BadFrame),
        (
            binary::encode_parts(&FrameHeader::TaskResult { task_id: &long, attempt: None, peer_id: None }, &[1]),
            ErrorCode::InvalidMessage,
        ),
        // Well-formed, but not registered yet.
        (
            binary::encode_parts(
                &FrameHeader::TaskRequest { task_id: "t", task_type: "x", session_id: None, deadline_ms: None },
                &[1],
            ),
            ErrorCode::NotRegistered,
        ),
    ];
    for (frame, code) in cases {
        let shown = format!("{frame:?}");
        c.send_binary(frame).await;
        let error = c.recv_error().await;
        assert_eq!(error.code, code, "{shown}: {}", error.message);
        assert!(!error.message.is_empty());
    }
    // The same connection registers and works.
    c.register(&register_gamer("survivor", None)).await;
    let mut peer = Client::connect_binary(&url).await;
    peer.register(&register_peer("p", capacity(1), None)).await;
    c.send(&task_request("t", "physics_step", Payload::binary(vec![1, 2, 3]), Some("s".into()), None)).await;
    let assignment = peer.recv_assignment().await;
    assert_eq!(bytes_of(&assignment.task_data.task_data), vec![1, 2, 3]);
    assert!(coord.stats().errors_sent >= 7);
    coord.shutdown().await;
}

#[tokio::test]
async fn a_binary_payload_too_large_for_a_json_connection_once_base64_wrapped_is_refused() {
    // A 64 KiB frame limit: 48 KiB of binary payload fit a binary frame, but not
    // base64-wrapped (64 KiB plus the frame's envelope) on a JSON connection, which a
    // frame over the limit would cost its connection.
    let config = Config {
        connections: coordinator::Connections { max_frame_bytes: 64 * 1024, ..Default::default() },
        ..Config::default()
    };
    let coord = spawn("127.0.0.1:0", config).await.unwrap();
    let url = coord.url();
    let mut json_peer = Client::connect(&url).await;
    json_peer.register(&register_peer("json-peer", capacity(1), None)).await;
    let mut gamer = Client::connect_binary(&url).await;
    gamer.register(&register_gamer("g", None)).await;

    let too_large = Payload::binary(vec![1u8; 48 * 1024]);
    gamer.send(&task_request("big", "physics_step", too_large, Some("s".into()), None)).await;
    let error = gamer.recv_error().await;
    assert_eq!(error.code, ErrorCode::LimitExceeded, "{}", error.message);
    assert!(error.message.contains("base64"), "{}", error.message);

    // One that fits reaches the JSON peer, wrapped.
    let fits = Payload::binary(vec![2u8; 40 * 1024]);
    gamer.send(&task_request("ok", "physics_step", fits.clone(), Some("s".into()), None)).await;
    let assignment = json_peer.recv_assignment().await;
    assert_eq!(bytes_of(&assignment.task_data.task_data), bytes_of(&fits));
    json_peer.send(&result_of(&assignment, Payload::binary(vec![3u8; 1024]))).await;
    assert_eq!(bytes_of(&gamer.recv_result().await.result), vec![3u8; 1024]);
    drop(json_peer);

    // A binary peer's answer that fits a binary frame but not a JSON one is replaced by
    // an error (with resync) rather than forwarded: the gamer might speak JSON.
    let mut binary_peer = Client::connect_binary(&url).await;
    binary_peer.register(&register_peer("binary-peer", capacity(1), None)).await;
    gamer.send(&task_request("big-answer", "physics_step", fits, Some("t".into()), None)).await;
    let assignment = binary_peer.recv_assignment().await;
    binary_peer.send(&result_of(&assignment, Payload::binary(vec![4u8; 48 * 1024]))).await;
    let result = gamer.recv_result().await;
    let error: p2c2r_protocol::TaskError = serde_json::from_str(result.result.json().unwrap()).unwrap();
    assert_eq!(error.code, ErrorCode::LimitExceeded);
    assert!(error.resync);
    // The gamer and the binary peer are still connected (the JSON peer, dropped above,
    // may or may not be counted out yet).
    let stats = coord.stats();
    assert!(stats.gamers == 1 && stats.peers >= 1, "{stats:?}");
    coord.shutdown().await;
}
