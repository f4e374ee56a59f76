//! A connection's writer task: drains its bounded outbound queue into the socket, one
//! frame at a time, each write watched for stalls; on a peer's connection that took
//! chunked frames, large frames go in chunks between the others
//! ([`p2c2r_protocol::chunk::Interleave`]), no faster than the peer's acknowledgements let
//! them ([`p2c2r_protocol::pacing::Pacer`]), and the chunks the reader took are
//! acknowledged. The reader side is [`crate::connection`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use p2c2r_protocol::Encoding;
use p2c2r_protocol::chunk::{self, Interleave, Next};
use p2c2r_protocol::pacing::{self, Ack, Pacer};
use tokio::sync::watch;
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

/// What a connection's reader tells its writer about chunks: the chunk bytes it took
/// (which the writer acknowledges) and the peer's acknowledgements of the writer's chunks.
/// Watched values: cumulative counts, so nothing is lost when several arrive at once.
pub(crate) struct ChunkFlowTx {
    /// Chunk bytes the reader took so far, and when it took the last.
    received: watch::Sender<Ack>,
    /// The peer's latest acknowledgement.
    acked: watch::Sender<Ack>,
    /// The clock acknowledgements are timed on.
    origin: std::time::Instant,
}

impl ChunkFlowTx {
    /// The reader took a chunk of `bytes`.
    pub fn took(&self, bytes: usize) {
        let taken_at_us = pacing::micros_since(self.origin, std::time::Instant::now());
        self.received.send_modify(|ack| *ack = Ack { received: ack.received + bytes as u64, taken_at_us });
    }

    /// The peer acknowledged our chunks. The latest is kept whatever it says: the
    /// writer's pacer ignores one that goes back or claims more than was sent, so a lie
    /// never outlives the next true acknowledgement.
    pub fn peer_acked(&self, ack: Ack) {
        self.acked.send_replace(ack);
    }
}

/// The writer's side of [`ChunkFlowTx`], with whether chunks are on yet (the peer asks
/// when it registers).
pub(crate) struct Chunking {
    /// Set once the peer took chunked frames.
    pub on: Arc<AtomicBool>,
    received: watch::Receiver<Ack>,
    acked: watch::Receiver<Ack>,
    acknowledged: u64,
}

/// A connection's chunk flow: the reader's half and the writer's.
pub(crate) fn chunk_flow(on: Arc<AtomicBool>) -> (ChunkFlowTx, Chunking) {
    let (received_tx, received) = watch::channel(Ack::default());
    let (acked_tx, acked) = watch::channel(Ack::default());
    let origin = std::time::Instant::now();
    (ChunkFlowTx { received: received_tx, acked: acked_tx, origin }, Chunking { on, received, acked, acknowledged: 0 })
}

impl Chunking {
    /// An acknowledgement owed for chunks the reader took since the last one.
    fn owed_ack(&mut self) -> Option<Ack> {
        let ack = *self.received.borrow_and_update();
        (ack.received > self.acknowledged).then(|| {
            self.acknowledged = ack.received;
            ack
        })
    }

    /// Resolves when the reader took a chunk or the peer acknowledged ours; never once
    /// the reader is gone (the connection is ending; the kill token follows).
    async fn changed(&mut self) {
        let changed = tokio::select! {
            changed = self.received.changed() => changed,
            changed = self.acked.changed() => changed,
        };
        if changed.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves when `chunking` has news; never without chunks.
async fn chunk_news(chunking: &mut Option<Chunking>) {
    match chunking {
        Some(chunking) => chunking.changed().await,
        None => std::future::pending().await,
    }
}

/// Drains the outbound queue into the socket, one frame at a time, each flushed. Where
/// the peer took chunked frames (`chunking`), a frame longer than a chunk goes in chunks,
/// one between whatever else is queued ([`Interleave`]): a large payload holds up the
/// other sessions' ticks by one chunk, not by the whole frame. Chunks go no faster than
/// the peer acknowledges them ([`Pacer`]), so they do not fill the queues along the path
/// either; acknowledgements of the peer's chunks go before anything else.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_loop(
    conn: ConnId,
    mut sink: Sink,
    mut rx: OutboundRx,
    encoding: Encoding,
    kill: CancellationToken,
    watch: Arc<StreamWatch>,
    stall: Duration,
    mut chunking: Option<Chunking>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut kept: Interleave<(String, String)> = Interleave::default();
    let mut pacer = Pacer::default();
    // When chunks in flight were last acknowledged (or none were in flight): a peer whose
    // acknowledgements stop for the write stall timeout is stalled like one that stops
    // reading, and its connection ends rather than hold its chunks for ever.
    let mut acks_moved = std::time::Instant::now();
    loop {
        let now = std::time::Instant::now();
        if let Some(chunking) = chunking.as_mut() {
            if let Some(ack) = chunking.owed_ack() {
                let ack = WsMessage::binary(pacing::ack_frame(ack));
                if let Err(failed) = send_watched(&mut sink, ack, &watch, stall, &kill).await {
                    report_failure(conn, failed, stall);
                    kill.cancel();
                    break;
                }
                continue;
            }
            let in_flight = pacer.in_flight();
            pacer.acked(*chunking.acked.borrow_and_update(), now);
            if in_flight == 0 || pacer.in_flight() < in_flight {
                acks_moved = now;
            }
        }
        let chunks_on = chunking.as_ref().is_some_and(|c| c.on.load(Ordering::Acquire));
        let next = if kept.is_empty() || !pacer.may_send() {
            let waiting_for_acks = !kept.is_empty() && pacer.in_flight() > 0;
            tokio::select! {
                biased;
                _ = kill.cancelled() => None,
                () = chunk_news(&mut chunking) => continue,
                next = rx.recv_weighed() => next,
                _ = sleep_until(Instant::from_std(acks_moved + stall)), if waiting_for_acks => {
                    info_limited!(
                        "connection: chunk acknowledgements stopped",
                        conn,
                        stall_ms = stall.as_millis() as u64,
                        "the peer acknowledged none of its chunks within the write stall timeout; disconnecting"
                    );
                    kill.cancel();
                    break;
                }
            }
        } else {
            match rx.try_recv_weighed() {
                Ok(next) => Some(next),
                // Nothing else waits (or every sender is gone): the next chunk goes.
                Err(_) => {
                    let (next, released) = kept.next_to_write().expect("not empty");
                    rx.release(released);
                    let frame = match next {
                        Next::Chunk(chunk) => {
                            pacer.sent(chunk.len(), now);
                            WsMessage::binary(chunk)
                        }
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
                Some(frame) if chunks_on && (!kept.is_empty() || chunk::should_chunk(&frame)) => {
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
