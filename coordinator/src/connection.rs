//! One WebSocket connection: handshake, framing, liveness, and the bounded writer.
//!
//! The reader loop hands text frames to the [`Router`]; a separate writer task drains the
//! connection's bounded outbound queue into the socket, so a slow client never blocks
//! anyone else. Liveness is local to the connection: it pings every heartbeat interval
//! and any inbound frame (message, heartbeat, pong) counts as a sign of life.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::Config;
use crate::router::{CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, ConnHandle, Departure, Outbound, Router};
use p2c2r_protocol::ErrorCode;

const WRITE_BUFFER_BYTES: usize = 128 * 1024;

/// The WebSocket settings that enforce the frame limit.
pub fn ws_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
        // Room for one largest frame on top of the normal write buffer, and no more, for a
        // client that does not read (tungstenite requires it to exceed write_buffer_size).
        .max_write_buffer_size(config.max_frame_bytes.saturating_add(WRITE_BUFFER_BYTES * 2))
        .write_buffer_size(WRITE_BUFFER_BYTES)
}

/// Serves one accepted TCP connection until it closes, is evicted, or `shutdown` fires.
pub async fn serve(router: Arc<Router>, config: Arc<Config>, stream: TcpStream, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let ws = match timeout(
        config.handshake_timeout,
        tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(&config))),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => {
            debug!("websocket handshake timed out");
            return;
        }
    };
    let (mut sink, mut frames) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Outbound>(config.send_queue_frames.max(1));
    let kill = CancellationToken::new();
    let conn = router.connect(ConnHandle { tx: tx.clone(), kill: kill.clone() });
    debug!(conn, "connection open");

    let writer_kill = kill.clone();
    let writer = tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                _ = writer_kill.cancelled() => None,
                next = rx.recv() => next,
            };
            let Some(next) = next else { break };
            let (frame, closing) = match next {
                Outbound::Text(text) => (WsMessage::text(text), false),
                Outbound::Ping => (WsMessage::Ping(Default::default()), false),
                Outbound::Close(code, reason) => {
                    (WsMessage::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() })), true)
                }
            };
            let sent = tokio::select! {
                _ = writer_kill.cancelled() => break,
                sent = sink.send(frame) => sent,
            };
            if sent.is_err() || closing {
                // Tell the reader loop too: a polite close ends the connection.
                writer_kill.cancel();
                break;
            }
        }
        // Best effort: flush and close politely, but never wait long for a stuck client.
        let _ = timeout(Duration::from_millis(500), sink.close()).await;
    });

    let start = Instant::now();
    let mut last_seen = start;
    let mut pings = interval_at(start + config.heartbeat_interval, config.heartbeat_interval);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let register_by = start + config.register_timeout;
    let mut registered = false;

    let departure = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tx.try_send(Outbound::Close(CLOSE_GOING_AWAY, "coordinator shutting down".into()));
                break Departure::Closed;
            }
            _ = kill.cancelled() => break Departure::Closed,
            _ = pings.tick() => {
                if last_seen.elapsed() > config.heartbeat_timeout {
                    info!(conn, silent_ms = last_seen.elapsed().as_millis() as u64, "connection silent; evicting");
                    let _ = tx.try_send(Outbound::Close(CLOSE_POLICY, "heartbeat timeout".into()));
                    break Departure::Evicted;
                }
                if tx.try_send(Outbound::Ping).is_err() {
                    // The queue is full of unsent frames: the client has stopped reading.
                    info!(conn, "outbound queue full; disconnecting");
                    break Departure::Closed;
                }
            }
            _ = sleep_until(register_by), if !registered => {
                if router.is_registered(conn) {
                    registered = true;
                } else {
                    router.send_error(conn, ErrorCode::NotRegistered, "no registration within the time allowed");
                    let _ = tx.try_send(Outbound::Close(CLOSE_POLICY, "registration timeout".into()));
                    break Departure::Closed;
                }
            }
            frame = frames.next() => {
                last_seen = Instant::now();
                match frame {
                    Some(Ok(WsMessage::Text(text))) => router.handle_frame(conn, text.as_str()),
                    Some(Ok(WsMessage::Binary(_))) => router.send_error(
                        conn,
                        ErrorCode::BadJson,
                        "binary frames are not supported; send JSON text frames",
                    ),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                    Some(Ok(WsMessage::Close(_))) | None => break Departure::Closed,
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        info!(conn, error = %e, "frame over the size limit; closing");
                        router.send_error(conn, ErrorCode::FrameTooLarge, e.to_string());
                        let _ = tx.try_send(Outbound::Close(CLOSE_TOO_BIG, "frame too large".into()));
                        break Departure::Closed;
                    }
                    Some(Err(e)) => {
                        debug!(conn, error = %e, "connection error");
                        break Departure::Closed;
                    }
                }
            }
        }
    };
    router.disconnect(conn, departure);
    drop(tx);
    // The writer ends once the queue is drained (or at once when killed).
    if timeout(Duration::from_secs(2), writer).await.is_err() {
        kill.cancel();
    }
    debug!(conn, ?departure, "connection closed");
}
