//! Helpers shared by the end-to-end tests: a gamer speaking the JSON protocol over
//! tokio-tungstenite, a scripted coordinator connection, and waits under a generous
//! timeout.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use p2c2r_protocol::physics::{PhysicsStepRequest, PhysicsStepResult};
use p2c2r_protocol::{Message, RegisterGamer, RegistrationAck, TaskError, TaskRequest, TaskResult, codec, to_payload};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Waits for `f`, failing the test after [`WAIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A game client speaking the protocol directly.
pub struct Gamer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Gamer {
    pub async fn connect(url: &str, gamer_id: &str) -> Gamer {
        let (mut ws, _) = within("connecting", tokio_tungstenite::connect_async(url)).await.unwrap();
        let hello = Message::RegisterGamer(RegisterGamer { gamer_id: gamer_id.into(), resume_secret: None });
        ws.send(WsMessage::text(codec::encode(&hello))).await.unwrap();
        let mut gamer = Gamer { ws, next_id: 0 };
        match gamer.next().await {
            Message::RegistrationAck(_) => gamer,
            other => panic!("expected registration_ack, got {}", other.msg_type()),
        }
    }

    pub async fn next(&mut self) -> Message {
        loop {
            match within("a frame", self.ws.next()).await.expect("the coordinator closed").unwrap() {
                WsMessage::Text(t) => return codec::decode(t.as_str()).unwrap(),
                _ => continue,
            }
        }
    }

    /// Sends a task and waits for its result.
    pub async fn run(
        &mut self,
        task_type: &str,
        session: Option<&str>,
        data: p2c2r_protocol::RawPayload,
    ) -> TaskResult {
        self.run_with_deadline(task_type, session, data, None).await
    }

    /// [`run`](Self::run) with a per-attempt deadline.
    pub async fn run_with_deadline(
        &mut self,
        task_type: &str,
        session: Option<&str>,
        data: p2c2r_protocol::RawPayload,
        deadline_ms: Option<u64>,
    ) -> TaskResult {
        self.next_id += 1;
        let task_id = format!("task-{}", self.next_id);
        let request = Message::TaskRequest(TaskRequest {
            task_id: task_id.clone(),
            task_type: task_type.into(),
            task_data: data,
            session_id: session.map(str::to_owned),
            deadline_ms,
        });
        self.ws.send(WsMessage::text(codec::encode(&request))).await.unwrap();
        loop {
            match self.next().await {
                Message::TaskResult(r) if r.task_id == task_id => return r,
                Message::TaskResult(r) => panic!("a result for {} that is not pending", r.task_id),
                Message::Error(e) => panic!("coordinator error: {} {}", e.code, e.message),
                _ => {}
            }
        }
    }

    pub async fn physics(
        &mut self,
        session: &str,
        request: &PhysicsStepRequest,
    ) -> Result<(PhysicsStepResult, TaskResult), TaskError> {
        let r = self.run("physics_step", Some(session), to_payload(request).unwrap()).await;
        match serde_json::from_str::<PhysicsStepResult>(r.result.get()) {
            Ok(result) => Ok((result, r)),
            Err(_) => Err(serde_json::from_str::<TaskError>(r.result.get())
                .unwrap_or_else(|e| panic!("neither a result nor an error: {e}: {}", r.result.get()))),
        }
    }
}

/// One connection of a scripted coordinator (for the misbehaviours a real one never shows).
pub struct Conn(pub WebSocketStream<TcpStream>);

impl Conn {
    pub async fn accept(listener: &TcpListener) -> Conn {
        let (tcp, _) = within("a connection", listener.accept()).await.unwrap();
        Conn(tokio_tungstenite::accept_async(tcp).await.unwrap())
    }

    /// The next protocol message, skipping control frames; `None` once the peer is gone.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            match within("a frame", self.0.next()).await? {
                Ok(WsMessage::Text(t)) => return Some(codec::decode(t.as_str()).unwrap()),
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next message that is not a heartbeat.
    pub async fn next_non_heartbeat(&mut self) -> Message {
        loop {
            match self.next().await.expect("the peer is connected") {
                Message::Heartbeat(_) => {}
                other => return other,
            }
        }
    }

    pub async fn result(&mut self) -> TaskResult {
        match self.next_non_heartbeat().await {
            Message::TaskResult(r) => r,
            other => panic!("expected a task_result, got {}", other.msg_type()),
        }
    }

    pub async fn send(&mut self, m: &Message) {
        self.0.send(WsMessage::text(codec::encode(m))).await.unwrap();
    }

    pub async fn send_raw(&mut self, frame: WsMessage) {
        self.0.send(frame).await.unwrap();
    }

    /// Reads the registration and acknowledges it.
    pub async fn register(&mut self) -> p2c2r_protocol::RegisterPeer {
        self.register_handing_out(None).await
    }

    /// Reads the registration and acknowledges it with this `resume_secret`.
    pub async fn register_handing_out(&mut self, resume_secret: Option<&str>) -> p2c2r_protocol::RegisterPeer {
        let Some(Message::RegisterPeer(r)) = self.next().await else { panic!("expected register_peer") };
        self.send(&Message::RegistrationAck(RegistrationAck {
            peer_id: Some(r.peer_id.clone()),
            gamer_id: None,
            status: "registered".into(),
            heartbeat_interval_ms: Some(1000),
            max_frame_bytes: None,
            resume_secret: resume_secret.map(str::to_owned),
        }))
        .await;
        r
    }
}

/// A listener on a free loopback port.
pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// `GET path` over a plain TCP connection; returns the whole response (head and body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("an HTTP response", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    })
    .await
}

/// Scrapes `http://addr/metrics` and returns its samples: `name{labels}` → value.
pub async fn scrape(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let response = http_get(addr, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {response}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
            (name.to_owned(), value.parse().unwrap_or_else(|e| panic!("{e}: {line:?}")))
        })
        .collect()
}
