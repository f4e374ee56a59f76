//! Borrowing: a session that finds no peer on this coordinator runs on another
//! coordinator's. The rest of the fleet stands in the scheduler as one peer,
//! [`FLEET_PEER`] (an internal connection of the router, marked remote): the scheduler
//! gives it a task only when no local peer can take it, and keeps a session there once
//! placed, as it keeps any session on its peer. Its assignments go out on NATS:
//!
//! - the first tick of a session goes to [`wire::PLACE`], where one coordinator with free
//!   peer slots takes it (and answers with its name, [`wire::LENDER`]);
//! - its later ticks go straight to that lender's [`wire::work`] subject, in order (one
//!   task publishes them all);
//! - each answer comes back on this coordinator's inbox and is handed to the router as
//!   the stand-in peer's `task_result`.
//!
//! Nothing is lost silently: a request nobody received comes back at once as "no
//! responders" and is answered with `unavailable` (resync), and one unanswered past its
//! deadline is given up here (the router's own deadline re-dispatches it). The stand-in is
//! registered only while another coordinator's lease shows free slots, or while sessions
//! it placed are in use: with no room anywhere a task waits in the queue and times out as
//! it would on a lone coordinator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use p2c2r_protocol::{Capabilities, ErrorCode, Message, RegisterPeer, TaskError, TaskRequest, TaskResult, to_payload};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Federation, wire};
use crate::Router;
use crate::outbound::{self, AssignmentFrame, Outbound, OutboundRx};
use crate::router::{ConnHandle, ConnId, Decoded, Departure};

/// The fleet's stand-in peer.
pub const FLEET_PEER: &str = "~fleet";
/// Tasks the stand-in may have in flight at once (the scheduler's window grows to it).
pub const FLEET_SLOTS: u32 = 64;
/// A placement not used for this long is forgotten (its session has ended or moved).
pub const PLACEMENT_IDLE: Duration = Duration::from_secs(60);
/// How often the borrower looks at the fleet's room and sweeps what waits.
const LOOK: Duration = Duration::from_millis(200);
/// How long past its deadline an answer is still waited for.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// A tick sent to the fleet, waiting for its answer.
struct Pending {
    assignment_id: String,
    placement: Option<(String, String)>,
    sent: Instant,
    until: Instant,
}

/// The stand-in peer, while registered.
struct StandIn {
    conn: ConnId,
    kill: CancellationToken,
    rx: OutboundRx,
}

/// Sends tasks the scheduler gave the fleet's stand-in to other coordinators until `cancel`.
pub(crate) async fn run(federation: Arc<Federation>, router: Arc<Router>, cancel: CancellationToken) {
    let client = federation.client.clone();
    let inbox = client.new_inbox();
    let mut answers = match client.subscribe(format!("{inbox}.*")).await {
        Ok(subscriber) => subscriber,
        Err(e) => return warn!(error = %e, "federation: cannot take answers from the fleet"),
    };
    let mut stand_in: Option<StandIn> = None;
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // (gamer alias, session) → (lender, last used).
    let mut placements: HashMap<(String, String), (String, Instant)> = HashMap::new();
    let mut sent = 0u64;
    let mut look = tokio::time::interval(LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let assigned = async {
            match stand_in.as_mut() {
                Some(s) => s.rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            frame = assigned => match frame {
                Some(Outbound::Assignment(a)) => {
                    sent += 1;
                    if let Some(p) = send(&federation, &inbox, sent, &a, &mut placements).await {
                        pending.insert(sent, p);
                    } else if let Some(s) = &stand_in {
                        answer_error(&router, s.conn, &a.assignment_id, ErrorCode::Unavailable, "the fleet could not be reached");
                    }
                }
                Some(_) => {}
                None => stand_in = None,
            },
            answer = answers.next() => match answer {
                Some(answer) => {
                    if let Some(s) = &stand_in {
                        settle(&federation, &router, s.conn, answer, &mut pending, &mut placements);
                    }
                }
                None => {
                    warn!("federation: the fleet's answers stopped; no more sessions go to the fleet");
                    break;
                }
            },
            _ = look.tick() => {
                let now = Instant::now();
                pending.retain(|_, p| {
                    let waiting = p.until > now;
                    if !waiting {
                        federation.metrics.fleet_timeouts.inc();
                    }
                    waiting
                });
                placements.retain(|_, (_, used)| now.duration_since(*used) < PLACEMENT_IDLE);
                federation.metrics.sessions_placed_remotely.set(placements.len() as i64);
                let room = federation.fleet().iter().any(|l| l.coordinator != federation.id && l.free_slots > 0);
                let wanted = room || !placements.is_empty() || !pending.is_empty();
                match (wanted, stand_in.is_some()) {
                    (true, false) => stand_in = Some(register(&router)),
                    (false, true) => {
                        if let Some(s) = stand_in.take() {
                            router.disconnect(s.conn, Departure::Farewell);
                            s.kill.cancel();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(s) = stand_in {
        router.disconnect(s.conn, Departure::Closed);
        s.kill.cancel();
    }
}

/// Registers the stand-in peer with the router.
fn register(router: &Router) -> StandIn {
    let (frames, bytes) = router.queue_bounds();
    let (tx, rx) = outbound::channel(frames, bytes);
    let kill = CancellationToken::new();
    let conn = router.connect_internal(ConnHandle { tx, kill: kill.clone(), chunked: None });
    let registration = RegisterPeer {
        peer_id: FLEET_PEER.to_owned(),
        capabilities: Capabilities { max_concurrent_tasks: Some(FLEET_SLOTS), ..Default::default() },
        resume_secret: None,
    };
    router.handle_decoded(conn, Decoded::from(Ok(Message::RegisterPeer(registration))));
    debug!("federation: the fleet stands in as a peer");
    StandIn { conn, kill, rx }
}

/// Publishes one assignment to the fleet; what to wait for, or `None` when it could not
/// be sent.
async fn send(
    federation: &Federation,
    inbox: &str,
    n: u64,
    a: &AssignmentFrame,
    placements: &mut HashMap<(String, String), (String, Instant)>,
) -> Option<Pending> {
    let placement = a.session_id.clone().map(|s| (a.gamer_id.clone(), s));
    let subject = match placement.as_ref().and_then(|p| placements.get_mut(p)) {
        Some((lender, used)) => {
            *used = Instant::now();
            wire::work(lender)
        }
        None => wire::PLACE.to_owned(),
    };
    let request = Message::TaskRequest(TaskRequest {
        task_id: a.assignment_id.clone(),
        task_type: a.task_type.clone(),
        task_data: a.payload.clone(),
        session_id: a.session_id.clone(),
        deadline_ms: Some(a.deadline_ms),
    });
    let (payload, framing) = wire::encode(&request);
    let mut headers = HeaderMap::new();
    headers.insert(wire::FRAMING, framing);
    headers.insert(wire::GAMER, a.gamer_id.as_str());
    headers.insert(wire::ORIGIN, federation.id.as_str());
    let reply = format!("{inbox}.{n}");
    if let Err(e) = federation.client.publish_with_reply_and_headers(subject, reply, headers, payload).await {
        crate::warn_limited!("federation: tick not sent", error = %e, "a tick for the fleet was not sent");
        return None;
    }
    federation.metrics.fleet_tasks_borrowed.inc();
    let now = Instant::now();
    Some(Pending {
        assignment_id: a.assignment_id.clone(),
        placement,
        sent: now,
        until: now + Duration::from_millis(a.deadline_ms) + ANSWER_GRACE,
    })
}

/// An answer from the fleet: handed to the router as the stand-in peer's.
fn settle(
    federation: &Federation,
    router: &Router,
    conn: ConnId,
    answer: async_nats::Message,
    pending: &mut HashMap<u64, Pending>,
    placements: &mut HashMap<(String, String), (String, Instant)>,
) {
    let Some(n) = answer.subject.rsplit('.').next().and_then(|n| n.parse::<u64>().ok()) else { return };
    // Late (given up already) or never sent: nothing waits for it.
    let Some(p) = pending.remove(&n) else { return };
    if answer.status == Some(StatusCode::NO_RESPONDERS) {
        federation.metrics.fleet_no_responders.inc();
        if let Some(key) = &p.placement {
            placements.remove(key);
        }
        let why = "no coordinator of the fleet took this tick (none has a free peer, or its lender left)";
        return answer_error(router, conn, &p.assignment_id, ErrorCode::Unavailable, why);
    }
    federation.metrics.fleet_round_trip.observe(p.sent.elapsed().as_secs_f64());
    let headers = answer.headers.as_ref();
    let lender = wire::header(headers, wire::LENDER, 64).map(str::to_owned);
    let decoded = wire::decode(answer.payload, headers);
    match decoded.message() {
        Some(Message::TaskResult(r)) if r.task_id == p.assignment_id => {
            if let (Some(key), Some(lender)) = (p.placement, lender) {
                placements.insert(key, (lender, Instant::now()));
            }
            router.handle_decoded(conn, decoded);
        }
        Some(Message::Error(e)) => {
            if let Some(key) = &p.placement {
                placements.remove(key);
            }
            let why = format!("the lending coordinator refused the tick: {}", e.message);
            answer_error(router, conn, &p.assignment_id, e.code, &why);
        }
        _ => answer_error(router, conn, &p.assignment_id, ErrorCode::Internal, "the fleet answered nonsense"),
    }
}

/// Answers an assignment of the stand-in with an error result (resync: the session's
/// world, if any, must be sent again wherever it goes next).
fn answer_error(router: &Router, conn: ConnId, assignment_id: &str, code: ErrorCode, why: &str) {
    let error = TaskError::new(code, why).with_resync();
    let result = to_payload(&error).expect("TaskError serializes");
    let message =
        Message::TaskResult(TaskResult { task_id: assignment_id.to_owned(), result, attempt: None, peer_id: None });
    router.handle_decoded(conn, Decoded::from(Ok(message)));
}
