//! A minimal protocol client for end-to-end tests: raw frames in, decoded messages out,
//! every wait bounded by a generous timeout.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use p2c2r_protocol::{
    Capabilities, Message, RegisterGamer, RegisterPeer, TaskAssignment, TaskRequest, TaskResult, codec, raw_payload,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Long enough for a loaded CI machine; tests only wait this long when they fail.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    /// The resume secret of this client's last registration.
    pub secret: Option<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) =
            tokio::time::timeout(WAIT, connect_async(url)).await.expect("connect timed out").expect("connect");
        Client { ws, secret: None }
    }

    pub async fn peer(url: &str, peer_id: &str, max_concurrent_tasks: u32) -> Client {
        let caps = Capabilities { max_concurrent_tasks: Some(max_concurrent_tasks), ..Default::default() };
        Self::peer_with(url, peer_id, caps).await
    }

    pub async fn peer_with(url: &str, peer_id: &str, capabilities: Capabilities) -> Client {
        Self::peer_resuming(url, peer_id, capabilities, None).await
    }

    /// Registers a peer presenting `secret` (the resume secret of an earlier registration).
    pub async fn peer_resuming(url: &str, peer_id: &str, capabilities: Capabilities, secret: Option<String>) -> Client {
        let mut c = Client::connect(url).await;
        c.send(&Message::RegisterPeer(RegisterPeer { peer_id: peer_id.into(), capabilities, resume_secret: secret }))
            .await;
        c.expect_ack().await;
        c
    }

    pub async fn gamer(url: &str, gamer_id: &str) -> Client {
        Self::gamer_resuming(url, gamer_id, None).await
    }

    /// Registers a gamer presenting `secret` (the resume secret of an earlier registration).
    pub async fn gamer_resuming(url: &str, gamer_id: &str, secret: Option<String>) -> Client {
        let mut c = Client::connect(url).await;
        c.send(&Message::RegisterGamer(RegisterGamer { gamer_id: gamer_id.into(), resume_secret: secret })).await;
        c.expect_ack().await;
        c
    }

    /// Reads the registration_ack and keeps its resume secret.
    pub async fn expect_ack(&mut self) {
        match self.recv().await {
            Message::RegistrationAck(ack) => self.secret = ack.resume_secret,
            other => panic!("expected registration_ack, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: &Message) {
        self.send_text(&codec::encode(message)).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text.to_owned())).await.expect("send");
    }

    /// Submits a task with a JSON payload.
    pub async fn submit(&mut self, task_id: &str, task_type: &str, payload: &str, session_id: Option<&str>) {
        self.submit_with_deadline(task_id, task_type, payload, session_id, None).await
    }

    pub async fn submit_with_deadline(
        &mut self,
        task_id: &str,
        task_type: &str,
        payload: &str,
        session_id: Option<&str>,
        deadline_ms: Option<u64>,
    ) {
        self.send(&Message::TaskRequest(TaskRequest {
            task_id: task_id.into(),
            task_type: task_type.into(),
            task_data: raw_payload(payload.to_owned()).unwrap(),
            session_id: session_id.map(str::to_owned),
            deadline_ms,
        }))
        .await;
    }

    /// The next text frame, raw. The wait is bounded in total, not per frame: pings keep
    /// arriving, and must not keep a wrong expectation waiting for ever.
    pub async fn recv_text(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("timed out waiting for a text frame")
                .expect("connection ended")
                .expect("connection error");
            match frame {
                WsMessage::Text(t) => return t.as_str().to_owned(),
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    pub async fn recv(&mut self) -> Message {
        let text = self.recv_text().await;
        codec::decode(&text).unwrap_or_else(|e| panic!("undecodable frame {text}: {e}"))
    }

    pub async fn recv_assignment(&mut self) -> TaskAssignment {
        match self.recv().await {
            Message::TaskAssignment(a) => a,
            other => panic!("expected task_assignment, got {other:?}"),
        }
    }

    pub async fn recv_result(&mut self) -> TaskResult {
        match self.recv().await {
            Message::TaskResult(r) => r,
            other => panic!("expected task_result, got {other:?}"),
        }
    }

    pub async fn recv_error(&mut self) -> p2c2r_protocol::ErrorMessage {
        match self.recv().await {
            Message::Error(e) => e,
            other => panic!("expected error, got {other:?}"),
        }
    }

    /// Answers an assignment with a JSON result.
    pub async fn answer(&mut self, assignment: &TaskAssignment, result: &str) {
        self.send(&Message::TaskResult(TaskResult {
            task_id: assignment.task_id.clone(),
            result: raw_payload(result.to_owned()).unwrap(),
            attempt: Some(assignment.attempt),
            peer_id: None,
        }))
        .await;
    }

    /// Waits until the server closes the connection; returns the close code if one came.
    pub async fn expect_closed(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next()).await.expect("connection was not closed");
            match frame {
                None | Some(Err(_)) => return None,
                Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Asks for stats on this connection (frames before the report are skipped).
    pub async fn stats(&mut self) -> p2c2r_protocol::StatsReport {
        self.send(&Message::Stats(Default::default())).await;
        loop {
            if let Message::StatsReport(r) = self.recv().await {
                return r;
            }
        }
    }
}

/// Polls `condition` every few milliseconds until it holds or `WAIT` passes.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}
