//! The gamer client's identity against a scripted coordinator: it presents the latest
//! `resume_secret` when it registers again and takes pending results back, backs off
//! when its id is in use, and surfaces a refused token while it keeps retrying.

use std::time::{Duration, Instant};

use bevy_p2c2r::client::{ClientConfig, ClientError, ClientEvent, ClientEvents, Credential, GamerClient};
use p2c2r_protocol::{ErrorCode, Message, TaskRequest, TaskResult};
use p2c2r_testkit::gate::{SeenTokens, accept_checking_bearer};
use p2c2r_testkit::server::{self, Conn};
use p2c2r_testkit::wait::{WAIT, within};
use tokio::net::TcpListener;

/// Acknowledges a gamer's registration, handing out `secret`.
async fn ack(ws: &mut Conn, gamer_id: &str, secret: &str) {
    ws.send(&server::ack(None, Some(gamer_id), Some(secret))).await;
}

async fn event(events: &mut ClientEvents) -> ClientEvent {
    within("a client event", events.recv()).await.expect("the event stream is open")
}

fn config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url, "gamer-identity");
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(300);
    config
}

fn task(id: &str) -> TaskRequest {
    TaskRequest {
        task_id: id.into(),
        task_type: "physics".into(),
        task_data: p2c2r_protocol::raw_payload(r#"{"num_objects":1}"#.into()).unwrap(),
        session_id: None,
        deadline_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_resume_secret_is_presented_and_pending_results_come_back() {
    let listener = server::listener().await;
    let url = server::url(&listener);
    let (client, mut events) = GamerClient::start(config(url));

    let mut ws = Conn::accept(&listener).await;
    let first = ws.gamer_registration().await;
    assert_eq!((first.gamer_id.as_str(), first.resume_secret.as_deref()), ("gamer-identity", None));
    ack(&mut ws, "gamer-identity", "secret-1").await;
    assert!(matches!(event(&mut events).await, ClientEvent::Connected { .. }));
    // A task goes out, and the connection drops before its result.
    client.send(task("t1")).unwrap();
    let Message::TaskRequest(sent) = ws.next_non_heartbeat().await else { panic!("expected the task") };
    assert_eq!(sent.task_id, "t1");
    drop(ws);
    assert!(matches!(event(&mut events).await, ClientEvent::Disconnected { .. }));

    // The client comes back with the secret; the coordinator hands the result over.
    let mut ws = Conn::accept(&listener).await;
    let second = ws.gamer_registration().await;
    assert_eq!(second.resume_secret.as_deref(), Some("secret-1"));
    ack(&mut ws, "gamer-identity", "secret-2").await;
    assert!(matches!(event(&mut events).await, ClientEvent::Connected { .. }));
    let result = TaskResult {
        task_id: "t1".into(),
        result: p2c2r_protocol::raw_payload(r#"{"status":"success"}"#.into()).unwrap(),
        attempt: Some(1),
        peer_id: Some("p".into()),
    };
    ws.send(&Message::TaskResult(result)).await;
    match event(&mut events).await {
        ClientEvent::Result(outcome) => assert_eq!(outcome.task_id, "t1"),
        other => panic!("expected the pending result, got {other:?}"),
    }
    drop(ws);
    assert!(matches!(event(&mut events).await, ClientEvent::Disconnected { .. }));

    // Each registration presents the secret of the latest ack.
    let mut ws = Conn::accept(&listener).await;
    assert_eq!(ws.gamer_registration().await.resume_secret.as_deref(), Some("secret-2"));
    ack(&mut ws, "gamer-identity", "secret-3").await;
    assert!(client.wait_connected(WAIT).await);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_in_use_is_reported_and_retried_after_a_pause() {
    let listener = server::listener().await;
    let url = server::url(&listener);
    // connect() reports the refusal of the first attempt as such.
    let connecting = tokio::spawn(GamerClient::connect(config(url.clone())));
    let mut ws = Conn::accept(&listener).await;
    ws.gamer_registration().await;
    ws.send(&Message::error(ErrorCode::IdInUse, "gamer-identity is registered", None)).await;
    match within("connect's answer", connecting).await.unwrap() {
        Err(e @ ClientError::RegistrationRefused(_)) => assert!(e.is_refusal(), "{e}"),
        other => panic!("expected a refused registration, got {other:?}"),
    }
    drop(ws);

    // start() keeps trying, at a pace a refusal deserves.
    let (client, mut events) = GamerClient::start(config(url));
    let mut ws = Conn::accept(&listener).await;
    ws.gamer_registration().await;
    ws.send(&Message::error(ErrorCode::IdInUse, "gamer-identity is registered", None)).await;
    let refused_at = Instant::now();
    match event(&mut events).await {
        ClientEvent::Disconnected { reason } => assert!(reason.contains("id_in_use"), "{reason}"),
        other => panic!("expected a disconnection, got {other:?}"),
    }
    drop(ws);
    let mut ws = Conn::accept(&listener).await;
    let waited = refused_at.elapsed();
    assert!(waited >= Duration::from_millis(290), "retried after only {waited:?}");
    ws.gamer_registration().await;
    ack(&mut ws, "gamer-identity", "s").await;
    assert!(client.wait_connected(WAIT).await);
    client.close().await;
}

/// Accepts one connection, upgraded only with `Bearer good`.
async fn accept_checking_token(listener: &TcpListener, seen: &SeenTokens) -> Option<Conn> {
    accept_checking_bearer(listener, "good", seen).await.map(|ws| Conn(ws, p2c2r_protocol::Encoding::Json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_surfaced_and_a_fixed_token_file_is_picked_up() {
    let dir = std::env::temp_dir().join(format!("p2c2r-gamer-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("gamer.jwt");
    std::fs::write(&token_file, "stale\n").unwrap();
    let listener = server::listener().await;
    let url = server::url(&listener);
    let seen: SeenTokens = Default::default();
    let accept_checking_token = |listener| accept_checking_token(listener, &seen);
    let mut config = config(url);
    config.token = Some(Credential::File(token_file.clone()));
    let connecting = tokio::spawn(GamerClient::connect(config.clone()));
    assert!(accept_checking_token(&listener).await.is_none());
    match within("connect's answer", connecting).await.unwrap() {
        Err(ClientError::Refused { status: 401, body, .. }) => assert_eq!(body, "token expired"),
        other => panic!("expected HTTP 401, got {other:?}"),
    }

    let (client, mut events) = GamerClient::start(config);
    assert!(accept_checking_token(&listener).await.is_none());
    match event(&mut events).await {
        ClientEvent::Disconnected { reason } => assert!(reason.contains("401"), "{reason}"),
        other => panic!("expected a disconnection, got {other:?}"),
    }
    assert!(accept_checking_token(&listener).await.is_none(), "still refused, still retrying");
    std::fs::write(&token_file, "good\n").unwrap();
    let mut ws = loop {
        if let Some(ws) = accept_checking_token(&listener).await {
            break ws;
        }
    };
    ws.gamer_registration().await;
    ack(&mut ws, "gamer-identity", "s").await;
    assert!(client.wait_connected(WAIT).await);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last().unwrap().as_deref(), Some("Bearer good"), "{seen:?}");
    assert!(seen[..seen.len() - 1].iter().all(|h| h.as_deref() == Some("Bearer stale")), "{seen:?}");
    client.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
