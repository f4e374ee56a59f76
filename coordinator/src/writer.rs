//! A connection's writer task: drains its bounded outbound queue into the socket, one
//! frame at a time, each write watched for stalls; on a peer's connection that took
//! chunked frames, large frames go in chunks between the others
//! ([`p2c2r_protocol::chunk::Interleave`]). The reader side is [`crate::connection`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use p2c2r_protocol::Encoding;
use p2c2r_protocol::chunk::{self, Interleave, Next};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::connection::Sink;
use crate::observe::StreamWatch;
use crate::outbound::{Frame, Outbound, OutboundRx};
use crate::router::ConnId;
use crate::{info_limited, warn_limited};

/// How a write ended when it did not succeed.
enum WriteFailed {
    /// The connection was killed meanwhile.
    Killed,
    /// No byte moved for the stall timeout.
    Stalled,
    /// The socket or tungstenite refused it.
    Error(tungstenite::Error),
}

/// Drains the outbound queue into the socket, one frame at a time, each flushed. Where
/// the peer took chunked frames (`chunked`), a frame longer than a chunk goes in chunks,
/// one between whatever else is queued ([`Interleave`]): a large payload holds up the
/// other sessions' ticks by one chunk, not by the whole frame.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_loop(
    conn: ConnId,
    mut sink: Sink,
    mut rx: OutboundRx,
    encoding: Encoding,
    kill: CancellationToken,
    watch: Arc<StreamWatch>,
    stall: Duration,
    chunked: Option<Arc<AtomicBool>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut kept: Interleave<(String, String)> = Interleave::default();
    let chunking = || chunked.as_ref().is_some_and(|c| c.load(Ordering::Acquire));
    loop {
        let next = if kept.is_empty() {
            tokio::select! {
                biased;
                _ = kill.cancelled() => None,
                next = rx.recv_weighed() => next,
            }
        } else {
            match rx.try_recv_weighed() {
                Ok(next) => Some(next),
                // Nothing else waits (or every sender is gone): the next chunk goes.
                Err(_) => {
                    let (next, released) = kept.next_to_write().expect("not empty");
                    rx.release(released);
                    let frame = match next {
                        Next::Chunk(chunk) => WsMessage::binary(chunk),
                        Next::Frame(frame) => ws_message(frame),
                    };
                    match send_watched(&mut sink, frame, &watch, stall, &kill).await {
                        Ok(()) => continue,
                        Err(failed) => {
                            report_failure(conn, failed, stall);
                            kill.cancel();
                            break;
                        }
                    }
                }
            }
        };
        let Some((next, weight)) = next else { break };
        let (frame, closing) = match &next {
            Outbound::Message(_) | Outbound::Assignment(_) => match next.encode(encoding) {
                // A small frame with nothing kept goes at once: no lane to look up (this is
                // every frame of a connection carrying no bulk).
                Some(frame) if chunking() && (!kept.is_empty() || chunk::should_chunk(&frame)) => {
                    // Kept frames stay counted against the queue's bounds until written.
                    rx.hold(weight);
                    let large = chunk::should_chunk(&frame);
                    match kept.offer(lane_of(&next), frame, weight) {
                        Some(frame) => {
                            rx.release(weight);
                            (ws_message(frame), false)
                        }
                        None => {
                            if large {
                                metrics.chunked_frames_sent.inc();
                            }
                            continue;
                        }
                    }
                }
                Some(frame) => (ws_message(frame), false),
                None => continue,
            },
            // The ping carries when it was sent; the pong brings it back (round trip).
            Outbound::Ping => (WsMessage::Ping(watch.ping_payload(std::time::Instant::now()).to_vec().into()), false),
            Outbound::Close(code, reason) => {
                // What was queued before the close goes first.
                let mut failed = None;
                while let Some((next, released)) = kept.next_to_write() {
                    rx.release(released);
                    let frame = match next {
                        Next::Chunk(chunk) => WsMessage::binary(chunk),
                        Next::Frame(frame) => ws_message(frame),
                    };
                    if let Err(e) = send_watched(&mut sink, frame, &watch, stall, &kill).await {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(failed) = failed {
                    report_failure(conn, failed, stall);
                    kill.cancel();
                    break;
                }
                (
                    WsMessage::Close(Some(CloseFrame { code: CloseCode::from(*code), reason: reason.clone().into() })),
                    true,
                )
            }
        };
        drop(next);
        match send_watched(&mut sink, frame, &watch, stall, &kill).await {
            Ok(()) if !closing => continue,
            Ok(()) => {}
            Err(failed) => report_failure(conn, failed, stall),
        }
        // A polite close, a stall or an error ends the connection; tell the reader loop.
        kill.cancel();
        break;
    }
    // Best effort: flush and close politely, but never wait long for a stuck client.
    let _ = timeout(Duration::from_millis(500), sink.close()).await;
}

/// The WebSocket message carrying an encoded frame.
fn ws_message(frame: Frame) -> WsMessage {
    match frame {
        Frame::Text(text) => WsMessage::text(text),
        Frame::Binary(bytes) => WsMessage::binary(bytes),
    }
}

/// The session an outbound frame belongs to, as the order of its frames must be kept
/// (a session's ticks run in the order they arrive).
fn lane_of(frame: &Outbound) -> Option<(String, String)> {
    match frame {
        Outbound::Assignment(a) => a.session_id.as_ref().map(|s| (a.gamer_id.clone(), s.clone())),
        Outbound::Message(m) => match m.as_ref() {
            p2c2r_protocol::Message::TaskAssignment(a) => {
                let spec = &a.task_data;
                spec.session_id.as_ref().map(|s| (spec.gamer_id.clone().unwrap_or_default(), s.clone()))
            }
            _ => None,
        },
        Outbound::Ping | Outbound::Close(..) => None,
    }
}

/// Logs why a write ended the connection.
fn report_failure(conn: ConnId, failed: WriteFailed, stall: Duration) {
    match failed {
        WriteFailed::Killed => {}
        WriteFailed::Stalled => {
            info_limited!(
                "connection: write stalled",
                conn,
                stall_ms = stall.as_millis() as u64,
                "client accepted no bytes within the write stall timeout; disconnecting"
            );
        }
        WriteFailed::Error(e) => {
            if matches!(e, tungstenite::Error::WriteBufferFull(_)) {
                warn_limited!("connection: write buffer full", conn, "write buffer full; disconnecting");
            } else {
                debug!(conn, error = %e, "write failed");
            }
        }
    }
}

/// Sends and flushes one frame, failing when no byte reaches the socket for `stall`.
async fn send_watched(
    sink: &mut Sink,
    frame: WsMessage,
    watch: &StreamWatch,
    stall: Duration,
    kill: &CancellationToken,
) -> Result<(), WriteFailed> {
    let started = std::time::Instant::now();
    let send = sink.send(frame);
    tokio::pin!(send);
    loop {
        let progress = watch.last_write().max(started);
        tokio::select! {
            biased;
            _ = kill.cancelled() => return Err(WriteFailed::Killed),
            sent = &mut send => return sent.map_err(WriteFailed::Error),
            _ = sleep_until(Instant::from_std(progress + stall)) => {
                if watch.last_write().max(started) + stall <= std::time::Instant::now() {
                    return Err(WriteFailed::Stalled);
                }
            }
        }
    }
}
