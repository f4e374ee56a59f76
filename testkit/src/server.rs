//! A scripted coordinator: the server side of the protocol, for testing clients (the
//! peer, the plugin) against the misbehaviours a real coordinator never shows.
//!
//! [`listener`] binds loopback port 0; [`Conn::accept`] takes one WebSocket connection
//! from it; a [`Conn`] reads messages, answers registrations and sends whatever the test
//! scripts. [`scripted_server`] runs such a script on its own runtime, for synchronous
//! tests (a Bevy app's loop).
//!
//! Waits are bounded by [`WAIT`](crate::wait::WAIT) and panic with what they waited for, except
//! [`Conn::accept_next`], which a server's accept loop uses to wait for reconnections
//! for as long as the test runs.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use p2c2r_protocol::{
    Encoding, Message, RegisterGamer, RegisterPeer, RegistrationAck, TaskRequest, TaskResult, binary, codec,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::wait::within;

/// A listener on a free loopback port (`127.0.0.1:0`).
pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port")
}

/// The `ws://` URL of a listener.
pub fn url(listener: &TcpListener) -> String {
    let addr: SocketAddr = listener.local_addr().expect("a bound listener");
    format!("ws://{addr}")
}

/// Binds a loopback port on a runtime of its own and spawns `serve(listener)` there.
/// Returns the runtime (keep it alive for the test: dropping it stops the server) and
/// the server's URL.
pub fn scripted_server<F, Fut>(serve: F) -> (tokio::runtime::Runtime, String)
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let listener = rt.block_on(listener());
    let url = url(&listener);
    rt.spawn(serve(listener));
    (rt, url)
}

/// Encodes a protocol message as a WebSocket text frame.
pub fn frame(message: &Message) -> WsMessage {
    WsMessage::text(codec::encode(message))
}

/// An acknowledgement of a registration as `peer_id` or `gamer_id`.
pub fn ack(peer_id: Option<&str>, gamer_id: Option<&str>, resume_secret: Option<&str>) -> Message {
    Message::RegistrationAck(RegistrationAck {
        peer_id: peer_id.map(str::to_owned),
        gamer_id: gamer_id.map(str::to_owned),
        status: "registered".into(),
        heartbeat_interval_ms: peer_id.map(|_| 1000),
        max_frame_bytes: None,
        resume_secret: resume_secret.map(str::to_owned),
        chunked_frames: false,
    })
}

/// One connection of a scripted coordinator. Like the real one, it takes binary frames
/// when the client offers them ([`p2c2r_protocol::binary`]), and reads both kinds.
pub struct Conn(pub WebSocketStream<TcpStream>, pub Encoding);

impl Conn {
    /// Accepts one connection and its WebSocket handshake; panics after [`WAIT`](crate::wait::WAIT).
    pub async fn accept(listener: &TcpListener) -> Conn {
        within("a connection", Conn::accept_next(listener)).await.expect("a WebSocket handshake")
    }

    /// Accepts the next connection that completes its handshake, waiting with no bound;
    /// `None` if the listener fails. For accept loops that serve until the test ends.
    pub async fn accept_next(listener: &TcpListener) -> Option<Conn> {
        loop {
            let (tcp, _) = listener.accept().await.ok()?;
            let mut encoding = Encoding::Json;
            #[allow(clippy::result_large_err)] // tungstenite's callback signature
            let negotiate = |request: &Request, mut response: Response| {
                encoding = p2c2r_net::accept_encoding(request, &mut response);
                Ok(response)
            };
            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, negotiate).await {
                return Some(Conn(ws, encoding));
            }
        }
    }

    /// The next protocol message, skipping control frames; `None` once the client is
    /// gone. Panics after [`WAIT`](crate::wait::WAIT) without one, or on an undecodable frame.
    pub async fn next(&mut self) -> Option<Message> {
        within("a frame from the client", async {
            loop {
                match self.0.next().await? {
                    Ok(WsMessage::Text(t)) => {
                        let text = t.as_str();
                        return Some(codec::decode(text).unwrap_or_else(|e| panic!("undecodable frame {text}: {e}")));
                    }
                    Ok(WsMessage::Binary(b)) => {
                        return Some(binary::decode(b).unwrap_or_else(|e| panic!("undecodable binary frame: {e}")));
                    }
                    Ok(WsMessage::Close(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// The next message that is not a heartbeat; panics if the client is gone.
    pub async fn next_non_heartbeat(&mut self) -> Message {
        loop {
            match self.next().await.expect("the client is connected") {
                Message::Heartbeat(_) => {}
                other => return other,
            }
        }
    }

    /// The next message that is not a heartbeat, which must be a task_result.
    pub async fn result(&mut self) -> TaskResult {
        match self.next_non_heartbeat().await {
            Message::TaskResult(r) => r,
            other => panic!("expected a task_result, got {}", other.msg_type()),
        }
    }

    /// Sends a message (a binary frame when it has a binary payload and the connection
    /// takes them); panics if the client is gone.
    pub async fn send(&mut self, m: &Message) {
        self.send_raw(self.frame(m)).await;
    }

    /// The frame `send` would send for `m`.
    pub fn frame(&self, m: &Message) -> WsMessage {
        match binary::encode_for(m, self.1) {
            binary::Frame::Text(text) => WsMessage::text(text),
            binary::Frame::Binary(bytes) => WsMessage::binary(bytes),
        }
    }

    /// Sends a frame as is; panics if the client is gone.
    pub async fn send_raw(&mut self, frame: WsMessage) {
        within("a frame to be sent", self.0.send(frame)).await.expect("send to the client");
    }

    /// Sends a message without panicking: `false` if the client is gone.
    pub async fn try_send(&mut self, m: &Message) -> bool {
        let frame = self.frame(m);
        within("a frame to be sent", self.0.send(frame)).await.is_ok()
    }

    /// Reads a peer's registration and acknowledges it.
    pub async fn register(&mut self) -> RegisterPeer {
        self.register_handing_out(None).await
    }

    /// Reads a peer's registration and acknowledges it with this `resume_secret`.
    pub async fn register_handing_out(&mut self, resume_secret: Option<&str>) -> RegisterPeer {
        let Some(Message::RegisterPeer(r)) = self.next().await else { panic!("expected register_peer") };
        self.send(&ack(Some(&r.peer_id), None, resume_secret)).await;
        r
    }

    /// Reads a gamer's registration (skipping heartbeats), without acknowledging it.
    pub async fn gamer_registration(&mut self) -> RegisterGamer {
        match self.next_non_heartbeat().await {
            Message::RegisterGamer(r) => r,
            other => panic!("expected register_gamer, got {}", other.msg_type()),
        }
    }

    /// The next `task_request` a gamer sends, acknowledging its registrations on the way
    /// and skipping everything else; `None` when the connection ends.
    pub async fn next_task_request(&mut self) -> Option<TaskRequest> {
        self.next_task_request_acking(None, &mut Vec::new()).await
    }

    /// [`next_task_request`](Self::next_task_request), acknowledging registrations with
    /// this `resume_secret` and keeping them in `registrations`.
    pub async fn next_task_request_acking(
        &mut self,
        resume_secret: Option<&str>,
        registrations: &mut Vec<RegisterGamer>,
    ) -> Option<TaskRequest> {
        loop {
            match self.next().await? {
                Message::RegisterGamer(r) => {
                    let ack = ack(None, Some(&r.gamer_id), resume_secret);
                    registrations.push(r);
                    if !self.try_send(&ack).await {
                        return None;
                    }
                }
                Message::TaskRequest(r) => return Some(r),
                _ => {}
            }
        }
    }
}
