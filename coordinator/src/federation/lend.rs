//! Lending: this coordinator's peers run sessions of other coordinators' gamers that found
//! no peer at home. It listens on [`wire::PLACE`] (queue group [`wire::LENDERS`]) only
//! while its own peers have free slots (interest = availability), and on its own
//! [`wire::work`] subject always (the later ticks of sessions it took). Each remote gamer
//! is a stand-in gamer here ([`FLEET_ID_PREFIX`] and its alias): an internal connection of
//! the router, so its tasks are checked, limited, scheduled, retried and timed out as any
//! gamer's; their results and errors go back as the replies of the requests that brought
//! them.
//!
//! Bounded: at most [`MAX_STAND_INS`] stand-in gamers (idle ones leave after
//! [`IDLE_STAND_IN`]), [`MAX_WAITING_REPLIES`] replies waiting per stand-in, each forgotten
//! a little after its task's deadline; a request over the frame limit, without a reply
//! subject or without valid headers is refused or dropped and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};
use futures_util::StreamExt;
use p2c2r_protocol::{ErrorCode, ErrorMessage, Message, RegisterGamer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Federation, wire};
use crate::Router;
use crate::outbound::{self, Outbound};
use crate::router::{ConnHandle, ConnId, Decoded, Departure, FLEET_ID_PREFIX};

/// Remote gamers served here at once.
pub const MAX_STAND_INS: usize = 1024;
/// Replies one stand-in may have waiting.
pub const MAX_WAITING_REPLIES: usize = 4096;
/// A stand-in with nothing waiting leaves after this long.
pub const IDLE_STAND_IN: Duration = Duration::from_secs(60);
/// How often the lender looks at its peers' room (to listen for placements or not) and
/// sweeps what waits.
const LOOK: Duration = Duration::from_millis(200);
/// How long past its deadline a reply is kept waiting for.
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// Where a task's reply goes, and until when it is waited for.
type Replies = Arc<Mutex<HashMap<String, (Subject, Instant)>>>;

/// A remote gamer served here.
struct StandIn {
    conn: ConnId,
    kill: CancellationToken,
    replies: Replies,
    last_used: Instant,
}

/// Serves other coordinators' sessions until `cancel`.
pub(crate) async fn run(federation: Arc<Federation>, router: Arc<Router>, cancel: CancellationToken) {
    let client = federation.client.clone();
    let mut work = match client.subscribe(wire::work(&federation.id)).await {
        Ok(subscriber) => subscriber,
        Err(e) => return warn!(error = %e, "federation: cannot take work from the fleet"),
    };
    let mut place: Option<async_nats::Subscriber> = None;
    let mut stand_ins: HashMap<String, StandIn> = HashMap::new();
    let mut look = tokio::time::interval(LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let placed = async {
            match place.as_mut() {
                Some(subscriber) => subscriber.next().await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            _ = cancel.cancelled() => break,
            message = work.next() => match message {
                Some(message) => message,
                None => break,
            },
            message = placed => match message {
                Some(message) => message,
                None => {
                    place = None;
                    continue;
                }
            },
            _ = look.tick() => {
                // Interest = availability: in the queue group only while a peer has room.
                let room = router.free_local_slots() > 0;
                match (room, place.is_some()) {
                    (true, false) => match client.queue_subscribe(wire::PLACE, wire::LENDERS.into()).await {
                        Ok(subscriber) => place = Some(subscriber),
                        Err(e) => crate::warn_limited!("federation: no offer", error = %e, "cannot offer room to the fleet"),
                    },
                    (false, true) => {
                        if let Some(mut subscriber) = place.take() {
                            let _ = subscriber.unsubscribe().await;
                        }
                    }
                    _ => {}
                }
                sweep(&router, &mut stand_ins);
                continue;
            }
        };
        take(&federation, &router, &mut stand_ins, message).await;
    }
    for (_, stand_in) in stand_ins.drain() {
        router.disconnect(stand_in.conn, Departure::Closed);
        stand_in.kill.cancel();
    }
}

/// One task from another coordinator: checked, then handed to the router as its
/// stand-in gamer's.
async fn take(
    federation: &Federation,
    router: &Arc<Router>,
    stand_ins: &mut HashMap<String, StandIn>,
    message: async_nats::Message,
) {
    let metrics = &federation.metrics;
    let Some(reply) = message.reply.clone() else {
        metrics.fleet_refused.inc();
        return debug!("federation: work without a reply subject dropped");
    };
    let refuse = |code: ErrorCode, why: String| {
        metrics.fleet_refused.inc();
        let error = Message::Error(ErrorMessage { code, message: why, refers_to: None });
        let (payload, framing) = wire::encode(&error);
        let mut headers = HeaderMap::new();
        headers.insert(wire::FRAMING, framing);
        headers.insert(wire::LENDER, federation.id.as_str());
        federation.client.publish_with_headers(reply.clone(), headers, payload)
    };
    let headers = message.headers.as_ref();
    let (Some(alias), Some(_origin)) =
        (wire::header(headers, wire::GAMER, 64), wire::header(headers, wire::ORIGIN, 64))
    else {
        let _ = refuse(ErrorCode::InvalidMessage, "work needs the gamer and origin headers".into()).await;
        return;
    };
    if message.payload.len() > router.max_frame_bytes() {
        let _ =
            refuse(ErrorCode::FrameTooLarge, format!("{} bytes is over the frame limit", message.payload.len())).await;
        return;
    }
    let decoded = wire::decode(message.payload.clone(), headers);
    let Some(Message::TaskRequest(request)) = decoded.message() else {
        let _ = refuse(ErrorCode::InvalidMessage, "work must be one task_request".into()).await;
        return;
    };
    let task_id = request.task_id.clone();
    let deadline = Instant::now() + Duration::from_millis(request.deadline_ms.unwrap_or(2_000)) + REPLY_GRACE;
    // One the router let go (its queue overflowed, say) is replaced.
    if let Some(gone) = stand_ins.get(alias).filter(|s| !router.is_registered(s.conn)).map(|s| s.conn) {
        router.disconnect(gone, Departure::Closed);
        if let Some(old) = stand_ins.remove(alias) {
            old.kill.cancel();
        }
    }
    if !stand_ins.contains_key(alias) {
        if stand_ins.len() >= MAX_STAND_INS {
            let _ =
                refuse(ErrorCode::QueueFull, "this coordinator serves as many remote gamers as it can".into()).await;
            return;
        }
        let stand_in = stand_in(federation, router, alias);
        stand_ins.insert(alias.to_owned(), stand_in);
    }
    let stand_in = stand_ins.get_mut(alias).expect("inserted above");
    stand_in.last_used = Instant::now();
    let room = {
        let mut replies = stand_in.replies.lock().unwrap_or_else(|p| p.into_inner());
        let room = replies.len() < MAX_WAITING_REPLIES || replies.contains_key(&task_id);
        if room {
            replies.insert(task_id, (reply.clone(), deadline));
        }
        room
    };
    if !room {
        let _ = refuse(ErrorCode::QueueFull, "too many of this gamer's tasks wait here".into()).await;
        return;
    }
    metrics.fleet_tasks_lent.inc();
    router.handle_decoded(stand_in.conn, decoded);
}

/// A stand-in gamer for `alias`: registered with the router, its outbound queue drained
/// into the replies of the requests that brought its tasks.
fn stand_in(federation: &Federation, router: &Arc<Router>, alias: &str) -> StandIn {
    let (frames, bytes) = router.queue_bounds();
    let (tx, mut rx) = outbound::channel(frames, bytes);
    let kill = CancellationToken::new();
    let conn = router.connect_internal(ConnHandle { tx, kill: kill.clone(), chunked: None });
    let gamer_id = format!("{FLEET_ID_PREFIX}{alias}");
    router.handle_decoded(
        conn,
        Decoded::from(Ok(Message::RegisterGamer(RegisterGamer { gamer_id, resume_secret: None }))),
    );
    let replies: Replies = Arc::default();
    let (waiting, client, lender) = (replies.clone(), federation.client.clone(), federation.id.clone());
    let stop = kill.clone();
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return,
                frame = rx.recv() => match frame {
                    Some(frame) => frame,
                    None => return,
                },
            };
            let Outbound::Message(message) = frame else { continue };
            let task_id = match message.as_ref() {
                Message::TaskResult(r) => Some(r.task_id.clone()),
                Message::Error(e) => e.refers_to.clone(),
                _ => None,
            };
            let Some(task_id) = task_id else { continue };
            let Some((reply, _)) = waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_id) else {
                continue;
            };
            let (payload, framing) = wire::encode(&message);
            let mut headers = HeaderMap::new();
            headers.insert(wire::FRAMING, framing);
            headers.insert(wire::LENDER, lender.as_str());
            if let Err(e) = client.publish_with_headers(reply, headers, payload).await {
                crate::warn_limited!(
                    "federation: answer not sent",
                    error = %e,
                    "an answer for another coordinator was not sent"
                );
            }
        }
    });
    StandIn { conn, kill, replies, last_used: Instant::now() }
}

/// Forgets replies waited for too long, and lets idle stand-ins go.
fn sweep(router: &Router, stand_ins: &mut HashMap<String, StandIn>) {
    let now = Instant::now();
    stand_ins.retain(|_, stand_in| {
        let mut replies = stand_in.replies.lock().unwrap_or_else(|p| p.into_inner());
        replies.retain(|_, (_, until)| *until > now);
        let idle = replies.is_empty() && now.duration_since(stand_in.last_used) > IDLE_STAND_IN;
        drop(replies);
        if idle {
            router.disconnect(stand_in.conn, Departure::Farewell);
            stand_in.kill.cancel();
        }
        !idle
    });
}
