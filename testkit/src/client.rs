//! A raw protocol client for tests and benchmarks: JSON messages over a WebSocket,
//! registered as a peer or as a gamer (or not at all, for hostile tests).
//!
//! Every wait of the test methods is bounded in total by [`WAIT`] (times a small factor
//! where heartbeats and pings keep arriving) and panics with what it waited for. The
//! `try_` methods never panic and never time out: they are for benchmarks' long-lived
//! loops and for attackers that must outlive any bound.
//!
//! ```no_run
//! # async fn demo(url: &str) {
//! use p2c2r_testkit::client::Client;
//! let mut peer = Client::peer(url, "p1", 4).await;
//! let mut gamer = Client::gamer(url, "g1").await;
//! gamer.submit("t1", "physics_step", r#"{"tick":1}"#, Some("s")).await;
//! let assignment = peer.recv_assignment().await;
//! peer.answer(&assignment, r#"{"status":"success"}"#).await;
//! assert_eq!(gamer.recv_result().await.task_id, "t1");
//! # }
//! ```

use futures_util::{SinkExt, StreamExt};
use p2c2r_protocol::physics::{PhysicsStepRequest, PhysicsStepResult};
use p2c2r_protocol::{
    Capabilities, Encoding, ErrorMessage, Message, Payload, RegisterGamer, RegisterPeer, StatsReport, TaskAssignment,
    TaskError, TaskRequest, TaskResult, binary, codec, raw_payload, to_payload,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::wait::{WAIT, within};

/// The client's side of a WebSocket connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client (see the [module docs](self)).
pub struct Client {
    /// The connection; open for tests that need raw frames.
    pub ws: Ws,
    /// The resume secret of this client's last registration.
    pub secret: Option<String>,
    /// The last task number [`Client::run`] used.
    tasks: u64,
    /// Binary once [`Client::connect_binary`] negotiated binary frames: messages with a
    /// binary payload are then sent as binary frames.
    pub encoding: Encoding,
}

impl Client {
    /// Connects to `url` without registering; panics if that takes over [`WAIT`].
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = within("a WebSocket connection", connect_async(url)).await.expect("connect");
        Client::from_ws(ws)
    }

    /// Connects to `url` (a `ws://` loopback URL) from the source address `from` (e.g.
    /// `127.0.0.2`), without registering: attack tests send the attacker's traffic from
    /// other loopback addresses than the honest clients' (per-address limits are part of
    /// the design). Panics if that takes over [`WAIT`].
    pub async fn connect_from(url: &str, from: &str) -> Client {
        let request = url.into_client_request().expect("a valid URL");
        let host = request.uri().host().expect("a host").trim_matches(['[', ']']).to_owned();
        let port = request.uri().port_u16().expect("a port");
        let addr: std::net::SocketAddr = (host.parse::<std::net::IpAddr>().expect("an IP address"), port).into();
        let from: std::net::IpAddr = from.parse().expect("a source IP address");
        let socket = if from.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let socket = socket.expect("a socket");
        socket.bind((from, 0).into()).expect("bind the source address");
        let stream = within("a TCP connection", socket.connect(addr)).await.expect("connect");
        let (ws, _) =
            within("a WebSocket handshake", tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)))
                .await
                .expect("handshake");
        Client::from_ws(ws)
    }

    /// Connects from `from` (see [`connect_from`](Self::connect_from)) and registers as
    /// peer `peer_id`.
    pub async fn peer_from(url: &str, from: &str, peer_id: &str, capabilities: Capabilities) -> Client {
        let mut c = Client::connect_from(url, from).await;
        c.register(&register_peer(peer_id, capabilities, None)).await;
        c
    }

    /// Connects from `from` (see [`connect_from`](Self::connect_from)) and registers as
    /// gamer `gamer_id`.
    pub async fn gamer_from(url: &str, from: &str, gamer_id: &str) -> Client {
        let mut c = Client::connect_from(url, from).await;
        c.register(&register_gamer(gamer_id, None)).await;
        c
    }

    /// Wraps a connection opened some other way (a bound source address, a token, TLS).
    pub fn from_ws(ws: Ws) -> Client {
        Client { ws, secret: None, tasks: 0, encoding: Encoding::Json }
    }

    /// Connects offering binary frames (`p2c2r.bin.v1`); panics unless the server takes
    /// them.
    pub async fn connect_binary(url: &str) -> Client {
        let mut request = url.into_client_request().expect("a valid URL");
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL,
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(binary::SUBPROTOCOL),
        );
        let (ws, response) = within("a WebSocket connection", connect_async(request)).await.expect("connect");
        let answer = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
        assert_eq!(Encoding::from_answer(answer), Encoding::Binary, "the server took binary frames");
        Client { encoding: Encoding::Binary, ..Client::from_ws(ws) }
    }

    /// Connects and registers as peer `peer_id` running up to `max_concurrent_tasks`.
    pub async fn peer(url: &str, peer_id: &str, max_concurrent_tasks: u32) -> Client {
        Self::peer_with(url, peer_id, capacity(max_concurrent_tasks)).await
    }

    /// Connects and registers as peer `peer_id` with these capabilities.
    pub async fn peer_with(url: &str, peer_id: &str, capabilities: Capabilities) -> Client {
        Self::peer_resuming(url, peer_id, capabilities, None).await
    }

    /// Registers a peer presenting `secret` (the resume secret of an earlier registration).
    pub async fn peer_resuming(url: &str, peer_id: &str, capabilities: Capabilities, secret: Option<String>) -> Client {
        let mut c = Client::connect(url).await;
        c.register(&register_peer(peer_id, capabilities, secret)).await;
        c
    }

    /// Connects and registers as gamer `gamer_id`.
    pub async fn gamer(url: &str, gamer_id: &str) -> Client {
        Self::gamer_resuming(url, gamer_id, None).await
    }

    /// Registers a gamer presenting `secret` (the resume secret of an earlier registration).
    pub async fn gamer_resuming(url: &str, gamer_id: &str, secret: Option<String>) -> Client {
        let mut c = Client::connect(url).await;
        c.register(&register_gamer(gamer_id, secret)).await;
        c
    }

    /// Sends a registration (see [`register_peer`], [`register_gamer`]) and reads its ack.
    pub async fn register(&mut self, registration: &Message) {
        self.send(registration).await;
        self.expect_ack().await;
    }

    /// Reads the registration_ack and keeps its resume secret.
    pub async fn expect_ack(&mut self) {
        match self.recv().await {
            Message::RegistrationAck(ack) => self.secret = ack.resume_secret,
            other => panic!("expected registration_ack, got {other:?}"),
        }
    }

    /// Sends a message; panics if the connection is gone.
    pub async fn send(&mut self, message: &Message) {
        let frame = ws_frame(binary::encode_for(message, self.encoding));
        within("a frame to be sent", self.ws.send(frame)).await.expect("send");
    }

    /// Sends a binary frame as is (for malformed input); panics if the connection is gone.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        within("a frame to be sent", self.ws.send(WsMessage::binary(bytes))).await.expect("send");
    }

    /// Sends a text frame as is (for malformed input); panics if the connection is gone.
    pub async fn send_text(&mut self, text: &str) {
        within("a frame to be sent", self.ws.send(WsMessage::text(text.to_owned()))).await.expect("send");
    }

    /// Submits a task with a JSON payload.
    pub async fn submit(&mut self, task_id: &str, task_type: &str, payload: &str, session_id: Option<&str>) {
        self.submit_with_deadline(task_id, task_type, payload, session_id, None).await
    }

    /// [`submit`](Self::submit) with a per-attempt deadline.
    pub async fn submit_with_deadline(
        &mut self,
        task_id: &str,
        task_type: &str,
        payload: &str,
        session_id: Option<&str>,
        deadline_ms: Option<u64>,
    ) {
        let data = raw_payload(payload.to_owned()).expect("a JSON payload");
        self.send(&task_request(task_id, task_type, data, session_id.map(str::to_owned), deadline_ms)).await;
    }

    /// The next text frame, raw. The wait is bounded in total, not per frame: pings keep
    /// arriving, and must not keep a wrong expectation waiting for ever.
    pub async fn recv_text(&mut self) -> String {
        self.text_frame().await.as_str().to_owned()
    }

    /// The next message, from a text or a binary frame (bounded, see
    /// [`recv_text`](Self::recv_text)).
    pub async fn recv(&mut self) -> Message {
        match self.data_frame().await {
            WsMessage::Binary(bytes) => {
                binary::decode(bytes).unwrap_or_else(|e| panic!("undecodable binary frame: {e}"))
            }
            WsMessage::Text(text) => {
                codec::decode(text.as_str()).unwrap_or_else(|e| panic!("undecodable frame {}: {e}", text.as_str()))
            }
            _ => unreachable!("data frames only"),
        }
    }

    /// The next text frame, skipping pings and pongs; panics on any other frame, at the
    /// end of the connection, or after `3 × WAIT` in all.
    async fn text_frame(&mut self) -> Utf8Bytes {
        match self.data_frame().await {
            WsMessage::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text or binary frame, skipping pings, pongs and chunk acknowledgements (bounds as
    /// [`text_frame`](Self::text_frame)).
    async fn data_frame(&mut self) -> WsMessage {
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out after {:?} waiting for a text frame", 3 * WAIT))
                .expect("connection ended")
                .expect("connection error");
            match frame {
                // Acknowledgements of chunks this client sent: flow control, not messages.
                WsMessage::Binary(ref bytes) if p2c2r_protocol::pacing::is_ack(bytes) => continue,
                WsMessage::Text(_) | WsMessage::Binary(_) => return frame,
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next message, which must be a task_assignment.
    pub async fn recv_assignment(&mut self) -> TaskAssignment {
        match self.recv().await {
            Message::TaskAssignment(a) => a,
            other => panic!("expected task_assignment, got {other:?}"),
        }
    }

    /// The next message, which must be a task_result.
    pub async fn recv_result(&mut self) -> TaskResult {
        match self.recv().await {
            Message::TaskResult(r) => r,
            other => panic!("expected task_result, got {other:?}"),
        }
    }

    /// The next message, which must be an error.
    pub async fn recv_error(&mut self) -> ErrorMessage {
        match self.recv().await {
            Message::Error(e) => e,
            other => panic!("expected error, got {other:?}"),
        }
    }

    /// Answers an assignment with a JSON result.
    pub async fn answer(&mut self, assignment: &TaskAssignment, result: &str) {
        self.send(&result_for(assignment, result)).await;
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
    pub async fn stats(&mut self) -> StatsReport {
        self.send(&Message::Stats(Default::default())).await;
        loop {
            if let Message::StatsReport(r) = self.recv().await {
                return r;
            }
        }
    }

    /// As a gamer: submits a task (numbered `task-1`, `task-2`, …) and waits for its
    /// result, skipping other messages; panics on an error or another task's result.
    pub async fn run(&mut self, task_type: &str, session: Option<&str>, data: Payload) -> TaskResult {
        self.run_with_deadline(task_type, session, data, None).await
    }

    /// [`run`](Self::run) with a per-attempt deadline.
    pub async fn run_with_deadline(
        &mut self,
        task_type: &str,
        session: Option<&str>,
        data: Payload,
        deadline_ms: Option<u64>,
    ) -> TaskResult {
        self.tasks += 1;
        let task_id = format!("task-{}", self.tasks);
        self.send(&task_request(&task_id, task_type, data, session.map(str::to_owned), deadline_ms)).await;
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for the result of {task_id}"));
            match next {
                Message::TaskResult(r) if r.task_id == task_id => return r,
                Message::TaskResult(r) => panic!("a result for {} that is not pending", r.task_id),
                Message::Error(e) => panic!("coordinator error: {} {}", e.code, e.message),
                _ => {}
            }
        }
    }

    /// As a gamer: runs one physics step of `session`; the step's result, or the task
    /// error the peer answered with.
    pub async fn physics(
        &mut self,
        session: &str,
        request: &PhysicsStepRequest,
    ) -> Result<(PhysicsStepResult, TaskResult), TaskError> {
        let payload = to_payload(request).expect("a serialisable request");
        let r = self.run(p2c2r_protocol::task_types::PHYSICS_STEP, Some(session), payload).await;
        match serde_json::from_str::<PhysicsStepResult>(r.result.json().unwrap()) {
            Ok(result) => Ok((result, r)),
            Err(_) => Err(serde_json::from_str::<TaskError>(r.result.json().unwrap())
                .unwrap_or_else(|e| panic!("neither a result nor an error: {e}: {}", r.result.json().unwrap()))),
        }
    }

    /// Sends without panicking: `false` if the connection is gone. No bound.
    pub async fn try_send(&mut self, message: &Message) -> bool {
        self.ws.send(ws_frame(binary::encode_for(message, self.encoding))).await.is_ok()
    }

    /// The next decodable message, with no bound on the wait: `None` once the connection
    /// ends or fails, or on an undecodable frame. For benchmarks and attackers.
    pub async fn try_recv(&mut self) -> Option<Message> {
        loop {
            match self.ws.next().await? {
                Ok(WsMessage::Text(t)) => return codec::decode(t.as_str()).ok(),
                Ok(WsMessage::Binary(b)) => return binary::decode(b).ok(),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// The WebSocket message carrying an encoded frame.
pub fn ws_frame(frame: binary::Frame) -> WsMessage {
    match frame {
        binary::Frame::Text(text) => WsMessage::text(text),
        binary::Frame::Binary(bytes) => WsMessage::binary(bytes),
    }
}

/// Capabilities that only set how many tasks a peer runs at once.
pub fn capacity(max_concurrent_tasks: u32) -> Capabilities {
    Capabilities { max_concurrent_tasks: Some(max_concurrent_tasks), ..Default::default() }
}

/// A `register_peer` message.
pub fn register_peer(peer_id: &str, capabilities: Capabilities, resume_secret: Option<String>) -> Message {
    Message::RegisterPeer(RegisterPeer { peer_id: peer_id.into(), capabilities, resume_secret })
}

/// A `register_gamer` message.
pub fn register_gamer(gamer_id: &str, resume_secret: Option<String>) -> Message {
    Message::RegisterGamer(RegisterGamer { gamer_id: gamer_id.into(), resume_secret })
}

/// A `task_request` message.
pub fn task_request(
    task_id: &str,
    task_type: &str,
    task_data: Payload,
    session_id: Option<String>,
    deadline_ms: Option<u64>,
) -> Message {
    Message::TaskRequest(TaskRequest {
        task_id: task_id.into(),
        task_type: task_type.into(),
        task_data,
        session_id,
        deadline_ms,
    })
}

/// The `task_result` answering `assignment` with the JSON `result`.
pub fn result_for(assignment: &TaskAssignment, result: &str) -> Message {
    Message::TaskResult(TaskResult {
        task_id: assignment.task_id.clone(),
        result: raw_payload(result.to_owned()).expect("a JSON result"),
        attempt: Some(assignment.attempt),
        peer_id: None,
    })
}
