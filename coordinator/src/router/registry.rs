//! Who is connected, and which connection holds which peer or gamer id.
//!
//! Invariants: `peers[id]` and `gamers[id]` name a connection in `conns` whose role is
//! that id (a replaced connection loses its role at once, so its later departure cannot
//! undo the registration that replaced it); every frame for a connection goes into its
//! bounded outbound queue with `try_send` (a full queue disconnects a slow reader) or,
//! for the few frames the router bounds itself, `send_exempt`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use p2c2r_protocol::{ErrorCode, Message};
use tokio_util::sync::CancellationToken;

use crate::auth::Credential;
use crate::ids::IdBook;
use crate::metrics::Metrics;
use crate::observe::StreamWatch;
use crate::outbound::{Outbound, OutboundTx, SendError};

/// A connection's number, unique for the coordinator's lifetime.
pub type ConnId = u64;

/// WebSocket close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code for a policy violation (replaced, never registered, ...).
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for a server going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// How the router reaches a connection.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    /// The bounded outbound queue.
    pub tx: OutboundTx,
    /// Cancelled to drop the connection at once (slow reader, replaced, evicted).
    pub kill: CancellationToken,
    /// On a binary connection: set when a peer registers asking for chunked frames
    /// ([`p2c2r_protocol::chunk`]); its writer and reader then chunk and reassemble.
    pub chunked: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Who is at the other end of a connection, for the operator's view.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// What its socket has seen (bytes moved, ping round trip).
    pub watch: Arc<StreamWatch>,
    /// The credential it presented, verified (`None` in open mode).
    pub credential: Option<Credential>,
}

/// Why a connection ended, for the logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The client closed it with a close frame: a clean goodbye. A gamer with nothing
    /// pending releases its id at once instead of reserving it for the resume grace (a
    /// gamer run again under a fixed id gets it back).
    Farewell,
    /// The socket failed or ended without a goodbye, or the coordinator closed it.
    Closed,
    /// It was silent past the heartbeat timeout.
    Evicted,
}

/// What a connection registered as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Role {
    Unregistered,
    Peer(String),
    Gamer(String),
}

pub(super) struct Conn {
    pub(super) handle: ConnHandle,
    pub(super) role: Role,
    pub(super) info: Option<ConnInfo>,
    /// When it registered its current role (or connected).
    pub(super) since: Instant,
    /// The coordinator's own connection (the federation's stand-ins for the rest of the
    /// fleet): no socket, no credential, and the only kind that may hold an id starting
    /// with [`super::FLEET_ID_PREFIX`].
    pub(super) internal: bool,
}

/// The connections and the ids they hold.
pub(super) struct Registry {
    pub(super) conns: HashMap<ConnId, Conn>,
    pub(super) peers: HashMap<String, ConnId>,
    pub(super) gamers: HashMap<String, ConnId>,
    next_conn: ConnId,
    /// Who owns which id: resume secrets, reservations, aliases.
    pub(super) ids: IdBook,
    pub(super) peers_evicted: u64,
    pub(super) gamers_evicted: u64,
    pub(super) errors_sent: u64,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub(super) fn new(ids: IdBook, metrics: Arc<Metrics>) -> Self {
        Registry {
            conns: HashMap::new(),
            peers: HashMap::new(),
            gamers: HashMap::new(),
            next_conn: 1,
            ids,
            peers_evicted: 0,
            gamers_evicted: 0,
            errors_sent: 0,
            metrics,
        }
    }

    /// Records a new connection, unregistered.
    pub(super) fn connect(&mut self, handle: ConnHandle, info: Option<ConnInfo>, internal: bool) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn { handle, role: Role::Unregistered, info, since: Instant::now(), internal });
        id
    }

    /// Whether `conn` is one of the coordinator's own connections.
    pub(super) fn is_internal(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.internal)
    }

    /// What the connection registered as (`None`: it is gone).
    pub(super) fn role(&self, conn: ConnId) -> Option<&Role> {
        self.conns.get(&conn).map(|c| &c.role)
    }

    /// The connection's address, if it has one.
    pub(super) fn addr(&self, conn: ConnId) -> Option<SocketAddr> {
        Some(self.conns.get(&conn)?.info.as_ref()?.addr)
    }

    /// The verified credential of a connection, if it presented one.
    pub(super) fn credential(&self, conn: ConnId) -> Option<&Credential> {
        self.conns.get(&conn)?.info.as_ref()?.credential.as_ref()
    }

    /// A gamer's outbound queue, while it is connected.
    pub(super) fn gamer_tx(&self, gamer: &str) -> Option<&OutboundTx> {
        self.gamers.get(gamer).and_then(|c| self.conns.get(c)).map(|c| &c.handle.tx)
    }

    /// Turns chunked frames on for a peer's connection that asked for them, where the
    /// connection is binary; returns whether they are on.
    pub(super) fn take_chunks(&mut self, conn: ConnId, asked: bool) -> bool {
        let switch = self.conns.get(&conn).and_then(|c| c.handle.chunked.as_ref());
        match switch {
            Some(switch) if asked => {
                switch.store(true, std::sync::atomic::Ordering::Release);
                true
            }
            _ => false,
        }
    }

    pub(super) fn send(&mut self, conn: ConnId, message: Message) {
        self.send_frame(conn, Outbound::message(message));
    }

    /// Queues a frame within the connection's bounds; a connection whose queue is full
    /// is disconnected (a slow reader) rather than buffered for without limit.
    pub(super) fn send_frame(&mut self, conn: ConnId, frame: Outbound) {
        let Some(entry) = self.conns.get(&conn) else { return };
        match entry.handle.tx.try_send(frame) {
            Ok(()) => {}
            Err(SendError::Full) => {
                // Once per connection: later frames to it find it already cancelled.
                if !entry.handle.kill.is_cancelled() {
                    crate::warn_limited!(
                        "router: slow reader",
                        conn,
                        "client is not reading fast enough; disconnecting it"
                    );
                    entry.handle.kill.cancel();
                }
            }
            Err(SendError::Closed) => {}
        }
    }

    /// Queues a frame exempt from the queue's bounds (the caller bounds such frames).
    pub(super) fn send_exempt(&self, conn: ConnId, frame: Outbound) {
        if let Some(entry) = self.conns.get(&conn) {
            let _ = entry.handle.tx.send_exempt(frame);
        }
    }

    pub(super) fn send_error(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        message: impl Into<String>,
        refers_to: Option<String>,
    ) {
        self.errors_sent += 1;
        self.metrics.error_sent(code.as_str());
        self.send(conn, Message::error(code, message, refers_to));
    }

    /// Takes the connection's role away at once (no more tasks, results or
    /// registrations, whatever its socket still does) and asks its writer to close it
    /// with `reason` after the frames already queued; where even that cannot be queued,
    /// it is dropped at once. Returns the role it had.
    pub(super) fn close(&mut self, conn: ConnId, reason: &str) -> Option<Role> {
        let entry = self.conns.get_mut(&conn)?;
        let role = std::mem::replace(&mut entry.role, Role::Unregistered);
        if entry.handle.tx.send_exempt(Outbound::Close(CLOSE_POLICY, reason.into())).is_err() {
            entry.handle.kill.cancel();
        }
        Some(role)
    }

    /// Tells a connection it was replaced and closes it; its later departure does not
    /// undo the new registration.
    pub(super) fn replace(&mut self, old: ConnId, reason: &str) {
        self.send_error(old, ErrorCode::Replaced, reason, None);
        self.close(old, "replaced");
    }
}
