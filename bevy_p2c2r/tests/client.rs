//! The async `GamerClient` on its own, against an in-process coordinator and peer.

use std::time::Duration;

use bevy_p2c2r::client::{ClientConfig, ClientError, ClientEvent, GamerClient, TaskReply};
use p2c2r_protocol::physics::{BodyDesc, PhysicsStepRequest, PhysicsStepResult, Shape};
use p2c2r_protocol::{ErrorCode, TaskRequest, task_types, to_payload};

const WAIT: Duration = Duration::from_secs(20);

fn physics_request(task_id: &str, session: &str, tick: u64, snapshot: bool) -> TaskRequest {
    let step = PhysicsStepRequest {
        tick,
        snapshot,
        dt: 1.0 / 60.0,
        steps: 1,
        add: if snapshot { vec![BodyDesc::new(1, Shape::Sphere { radius: 0.5 }, [0.0, 10.0, 0.0])] } else { vec![] },
        ..Default::default()
    };
    TaskRequest {
        task_id: task_id.into(),
        task_type: task_types::PHYSICS_STEP.into(),
        task_data: to_payload(&step).unwrap(),
        session_id: Some(session.into()),
        deadline_ms: Some(2_000),
    }
}

async fn next_event(events: &mut bevy_p2c2r::client::ClientEvents) -> ClientEvent {
    tokio::time::timeout(WAIT, events.recv()).await.expect("an event in time").expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_awaits_results_and_errors() {
    let coordinator = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let peer = peer::spawn(peer::PeerConfig { coordinator_url: coordinator.url(), ..Default::default() }).await;
    tokio::time::timeout(WAIT, peer.wait_for(|s| s.connected)).await.unwrap();

    let (client, mut events) = GamerClient::connect(ClientConfig::new(coordinator.url(), "client-test")).await.unwrap();
    assert!(client.is_connected());
    assert!(matches!(next_event(&mut events).await, ClientEvent::Connected { .. }));

    let outcome =
        tokio::time::timeout(WAIT, client.submit(physics_request("t1", "s1", 1, true))).await.unwrap().unwrap();
    assert_eq!(outcome.task_id, "t1");
    assert_eq!(outcome.peer_id.as_deref(), Some(peer.peer_id()));
    assert!(outcome.rtt.is_some());
    let result: PhysicsStepResult = outcome.parse().unwrap();
    assert_eq!(result.tick, 1);
    assert!(result.bodies[0].position[1] < 10.0, "the ball fell");

    // A delta for a session the peer never saw: a task error asking for a resync.
    let outcome =
        tokio::time::timeout(WAIT, client.submit(physics_request("t2", "unknown", 5, false))).await.unwrap().unwrap();
    let TaskReply::Failed(error) = &outcome.reply else { panic!("expected an error: {outcome:?}") };
    assert_eq!(error.code, ErrorCode::UnknownSession);
    assert!(error.resync);

    // send(): the result arrives on the event stream.
    client.send(physics_request("t3", "s1", 2, false)).unwrap();
    match next_event(&mut events).await {
        ClientEvent::Result(outcome) => {
            assert_eq!(outcome.task_id, "t3");
            assert_eq!(outcome.parse::<PhysicsStepResult>().unwrap().tick, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(client.stats().bytes_sent() > 0 && client.stats().bytes_received() > 0);
    client.close().await;
    assert!(matches!(client.submit(physics_request("t4", "s1", 3, false)).await, Err(ClientError::Closed)));
    peer.shutdown().await;
    coordinator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_fast_without_a_coordinator() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = GamerClient::connect(ClientConfig::new(format!("ws://127.0.0.1:{port}"), "nobody")).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_with_backoff_when_the_coordinator_returns() {
    let first = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();
    let addr = first.local_addr();
    let mut config = ClientConfig::new(first.url(), "phoenix");
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    let (client, mut events) = GamerClient::start(config);
    assert!(matches!(next_event(&mut events).await, ClientEvent::Connected { .. }));

    first.shutdown().await;
    loop {
        match next_event(&mut events).await {
            ClientEvent::Disconnected { .. } => break,
            // The coordinator says it is shutting down before it closes.
            ClientEvent::Error(e) => assert_eq!(e.code, ErrorCode::ShuttingDown),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!client.is_connected());
    // While disconnected, sends are reported as undelivered, never lost silently.
    client.send(physics_request("lost", "s", 1, true)).unwrap();
    loop {
        match next_event(&mut events).await {
            ClientEvent::Undelivered { task_id, .. } => {
                assert_eq!(task_id, "lost");
                break;
            }
            ClientEvent::Disconnected { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }

    // The coordinator comes back on the same address: the client registers again.
    let second = coordinator::spawn(addr, coordinator::Config::default()).await.unwrap();
    loop {
        match next_event(&mut events).await {
            ClientEvent::Connected { gamer_id } => {
                assert_eq!(gamer_id, "phoenix");
                break;
            }
            ClientEvent::Disconnected { .. } | ClientEvent::Undelivered { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(client.wait_connected(WAIT).await);
    assert!(client.stats().connects() >= 2);
    client.close().await;
    second.shutdown().await;
}

/// Every `session_status` the coordinator sends becomes a [`ClientEvent::SessionStatus`],
/// in order with the results around it: one sent before the registration's ack right
/// after `Connected`, and one for a session this client never used, with absurd numbers,
/// as it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_status_frames_become_events_in_order() {
    use p2c2r_protocol::{Message, SessionStatus, TaskResult};
    use p2c2r_testkit::server::{self, Conn};

    let early = SessionStatus {
        session_id: "s1".into(),
        replicas_wanted: 2,
        replicas_live: 1,
        audited: true,
        ..Default::default()
    };
    let replicated = SessionStatus {
        session_id: "s1".into(),
        replicas_wanted: 3,
        replicas_live: 2,
        strict: true,
        disagreements: 4,
        corrections: 1,
        ..Default::default()
    };
    let absurd = SessionStatus {
        session_id: "never-used".into(),
        replicas_wanted: 0,
        replicas_live: u8::MAX,
        disagreements: u64::MAX,
        corrections: u64::MAX,
        ..Default::default()
    };
    let listener = server::listener().await;
    let url = server::url(&listener);
    let script = {
        let (early, replicated, absurd) = (early.clone(), replicated.clone(), absurd.clone());
        tokio::spawn(async move {
            let mut ws = Conn::accept(&listener).await;
            let registration = ws.gamer_registration().await;
            ws.send(&Message::SessionStatus(early)).await;
            ws.send(&server::ack(None, Some(&registration.gamer_id), None)).await;
            let request = ws.next_task_request().await.expect("a task request");
            ws.send(&Message::SessionStatus(replicated)).await;
            let result = p2c2r_protocol::raw_payload(r#"{"status":"success","tick":1,"bodies":[]}"#.into()).unwrap();
            let answer = TaskResult { task_id: request.task_id, result, attempt: Some(1), peer_id: Some("p".into()) };
            ws.send(&Message::TaskResult(answer)).await;
            ws.send(&Message::SessionStatus(absurd)).await;
            // Until the client closes.
            while ws.next().await.is_some() {}
        })
    };

    let (client, mut events) = GamerClient::connect(ClientConfig::new(url, "replicated")).await.unwrap();
    assert!(matches!(next_event(&mut events).await, ClientEvent::Connected { .. }));
    match next_event(&mut events).await {
        ClientEvent::SessionStatus(status) => assert_eq!(status, early, "the status sent before the ack"),
        other => panic!("unexpected {other:?}"),
    }
    client.send(physics_request("t1", "s1", 1, true)).unwrap();
    match next_event(&mut events).await {
        ClientEvent::SessionStatus(status) => assert_eq!(status, replicated),
        other => panic!("unexpected {other:?}"),
    }
    match next_event(&mut events).await {
        ClientEvent::Result(outcome) => assert_eq!(outcome.task_id, "t1"),
        other => panic!("unexpected {other:?}"),
    }
    match next_event(&mut events).await {
        ClientEvent::SessionStatus(status) => assert_eq!(status, absurd),
        other => panic!("unexpected {other:?}"),
    }
    assert!(client.is_connected(), "a status is never an error");
    client.close().await;
    tokio::time::timeout(WAIT, script).await.expect("the script ends").expect("the script ran");
}
