//! Registration: binding a peer or gamer id to a connection (proving ownership of an id
//! held or reserved, see [`crate::ids`]), and what a registration starts: a peer's place
//! in the scheduler with the standing it earned, a gamer's slot, limits and the results
//! kept while it was away.

use std::collections::HashSet;
use std::time::Instant;

use p2c2r_protocol::{ErrorCode, Message, RegisterGamer, RegisterPeer, RegistrationAck, limits};
use tracing::debug;

use super::answers::lost_result;
use super::frames::check_id;
use super::registry::{CLOSE_POLICY, Role};
use super::{ConnId, Router, State};
use crate::auth::Role as CredentialRole;
use crate::ids::{Claim, Kind};
use crate::outbound::Outbound;
use crate::scheduler::PeerSpec;

/// The outcome of binding a registration to a connection.
enum Binding {
    /// The id is now this connection's: a new registration, or the same client taking
    /// its id back (`resumed`).
    New {
        /// The id was held or reserved and the registration proved it owns it.
        resumed: bool,
    },
    /// This connection had already registered with this id and role.
    Again,
}

impl Router {
    /// Binds a registering id to `conn`. The id must be the connection's credential's
    /// (with credentials); one held by a live connection, or reserved after one closed, is
    /// taken over only by a registration that proves it is the same client (see
    /// [`crate::ids`]). Returns `None` when the registration is refused (an error has been
    /// sent), and whether this connection had already registered exactly so.
    fn bind(
        &self,
        state: &mut State,
        conn: ConnId,
        role: &Role,
        wanted: Role,
        secret: Option<&str>,
    ) -> Option<Binding> {
        let (field, msg_type, id, kind, needed) = match &wanted {
            Role::Peer(id) => ("peer_id", "register_peer", id, Kind::Peer, CredentialRole::Peer),
            Role::Gamer(id) => ("gamer_id", "register_gamer", id, Kind::Gamer, CredentialRole::Gamer),
            Role::Unregistered => return None,
        };
        if let Err(reason) = check_id(field, id) {
            state.registry.send_error(conn, ErrorCode::InvalidMessage, reason, Some(msg_type.into()));
            return None;
        }
        let internal = state.registry.is_internal(conn);
        if id.starts_with(super::FLEET_ID_PREFIX) != internal {
            let reason =
                format!("a {field} starting with {:?} is reserved for the coordinators' fleet", super::FLEET_ID_PREFIX);
            state.registry.send_error(conn, ErrorCode::InvalidMessage, reason, Some(msg_type.into()));
            return None;
        }
        // The coordinator's own stand-ins own their ids as a credential would prove.
        let same_credential = if internal {
            true
        } else if self.config.identity.auth_file.is_some() {
            let refusal = match state.registry.credential(conn).map(|c| &c.identity) {
                Some(identity) if identity.role == needed && identity.id == *id => None,
                Some(identity) => Some(format!(
                    "this connection's credential is for {} {:?}; it cannot register as {needed} {id:?}",
                    identity.role, identity.id
                )),
                None => Some("credentials required".to_owned()),
            };
            if let Some(reason) = refusal {
                state.registry.send_error(conn, ErrorCode::Unauthorized, reason, Some(msg_type.into()));
                return None;
            }
            true
        } else {
            false
        };
        if *role == wanted {
            return Some(Binding::Again);
        }
        if *role != Role::Unregistered {
            let reason = "this connection is already registered; open a new one";
            state.registry.send_error(conn, ErrorCode::AlreadyRegistered, reason, Some(msg_type.into()));
            return None;
        }
        let live =
            if kind == Kind::Peer { state.registry.peers.get(id) } else { state.registry.gamers.get(id) }.copied();
        let resumed = match state.registry.ids.claim(kind, id, live.is_some(), secret, same_credential, Instant::now())
        {
            Claim::Refused => {
                crate::info_limited!("router: id in use", conn, id, msg_type, "registration of an id in use refused");
                let reason = format!(
                    "{field} {id:?} is in use: taking it over needs the resume_secret of its last registration"
                );
                state.registry.send_error(conn, ErrorCode::IdInUse, reason, Some(msg_type.into()));
                return None;
            }
            Claim::Proven => true,
            Claim::Free => {
                // An expired reservation not swept yet: what it held goes now, not to
                // whoever registers the id next.
                if kind == Kind::Gamer && state.delivery.contains(id) {
                    state.forget_gamer(id);
                }
                false
            }
        };
        let ids = if kind == Kind::Peer { &mut state.registry.peers } else { &mut state.registry.gamers };
        if let Some(old) = ids.insert(id.clone(), conn) {
            crate::info_limited!(
                "router: id resumed",
                conn,
                id,
                msg_type,
                "id taken back by its owner; closing its old connection"
            );
            state.registry.replace(old, &format!("this {field} registered again from another connection"));
        }
        if let Some(c) = state.registry.conns.get_mut(&conn) {
            c.role = wanted;
            c.since = Instant::now();
        }
        Some(Binding::New { resumed })
    }

    pub(super) fn register_peer(&self, state: &mut State, conn: ConnId, role: &Role, m: RegisterPeer) {
        if let Some(left) = state.standing.quarantined_for(&m.peer_id, Instant::now()) {
            let left = left.as_secs();
            let reason = format!("peer {:?} is quarantined ({left} s left)", m.peer_id);
            state.registry.send_error(conn, ErrorCode::Quarantined, reason, Some("register_peer".into()));
            state.registry.send_exempt(conn, Outbound::Close(CLOSE_POLICY, "quarantined".into()));
            return;
        }
        // Capabilities are copied into the scheduler and the operator's view: bounded.
        if let Some(types) = &m.capabilities.task_types {
            let bad = types.len() > limits::MAX_TASK_TYPES_PER_PEER
                || types.iter().any(|t| t.is_empty() || t.len() > limits::MAX_ID_BYTES);
            if bad {
                let reason = format!(
                    "capabilities.task_types must hold at most {} non-empty names of at most {} bytes",
                    limits::MAX_TASK_TYPES_PER_PEER,
                    limits::MAX_ID_BYTES
                );
                return state.registry.send_error(
                    conn,
                    ErrorCode::InvalidMessage,
                    reason,
                    Some("register_peer".into()),
                );
            }
        }
        if let Some(d) = &m.capabilities.determinism
            && !d.is_within_limits()
        {
            let reason = format!(
                "capabilities.determinism must hold non-empty strings of at most {} bytes and at most {} features",
                limits::MAX_ID_BYTES,
                limits::MAX_DETERMINISM_FEATURES
            );
            return state.registry.send_error(conn, ErrorCode::InvalidMessage, reason, Some("register_peer".into()));
        }
        // Whether the registration proved it owns the id: a credential naming it, or the
        // resume secret of its last registration (see the standing restored below).
        let owner = match self.bind(state, conn, role, Role::Peer(m.peer_id.clone()), m.resume_secret.as_deref()) {
            None => return,
            Some(Binding::Again) => {
                let secret = state.registry.ids.bind(Kind::Peer, &m.peer_id);
                let chunked = state
                    .registry
                    .take_chunks(conn, m.capabilities.chunked_frames && self.config.connections.chunked_frames);
                return state.registry.send(conn, self.ack(Some(m.peer_id), None, secret, chunked));
            }
            Some(Binding::New { resumed }) => resumed || self.config.identity.auth_file.is_some(),
        };
        let caps = &m.capabilities;
        let capacity = caps.max_concurrent_tasks.or(caps.cpu_cores).unwrap_or(1).max(1);
        let task_types =
            caps.task_types.as_ref().filter(|t| !t.is_empty()).map(|t| t.iter().cloned().collect::<HashSet<_>>());
        crate::info_limited!("router: peer registered", peer_id = m.peer_id, capacity, task_types = ?caps.task_types, "peer registered");
        // A setup the operator does not vouch for is never compared, so never a replica.
        let accepted = |d: &&p2c2r_protocol::Determinism| {
            let ok = self.config.replication.accepted_setups.is_empty()
                || self.config.replication.accepted_setups.contains(&d.label());
            if !ok {
                crate::info_limited!(
                    "router: setup not accepted",
                    peer_id = m.peer_id,
                    setup = d.label(),
                    "peer's determinism setup is not an accepted one: it serves no replicated session"
                );
            }
            ok
        };
        let setup = caps.determinism.as_ref().filter(accepted).map(PeerSpec::setup_of);
        // A host is a network (IPv4 /24, IPv6 /48 by default): one network's peers are one
        // vote and never two replicas of one session.
        let host = state.registry.addr(conn).map(|addr| self.network_of(addr.ip()));
        // add_peer re-queues the work of a same-id registration it replaces.
        state.retire_replicas_on(&m.peer_id);
        state.remember_standing(&m.peer_id);
        let remote = state.registry.is_internal(conn);
        state.sched.add_peer(m.peer_id.clone(), PeerSpec { task_types, capacity, setup, host, remote });
        if self.config.identity.auth_file.is_some()
            && !self.config.replication.allow_unauditable_peers
            && !state.sched.is_auditable(&m.peer_id)
        {
            crate::info_limited!(
                "router: peer not auditable",
                peer_id = m.peer_id,
                "no peer of another network shares its determinism setup (or it declares none): it serves no \
                 session until one does (--allow-unauditable-peers lets it); sessionless tasks it runs"
            );
        }
        // The id starts where it left off, not afresh (see State::remember_standing). What
        // it lost (a streak of misses) sticks to the id whoever registers it; what it gained
        // (a window grown past a new peer's, and the successful answers that make it
        // established) goes back only to a registration that proves it owns the id: in open
        // mode anyone may take a free id, and must not inherit capacity or trust it has not
        // earned.
        // Its age counts from its first registration (kept with its standing).
        let now_ms = crate::reputation::now_ms();
        let fresh = crate::scheduler::Standing { since_ms: now_ms, ..state.sched.fresh_standing() };
        let standing = match state.standing.standings.recall(&m.peer_id, Instant::now()) {
            Some(mut standing) => {
                if !owner {
                    standing.window = standing.window.min(fresh.window);
                    standing.verified = 0;
                    standing.agreements = 0;
                    standing.since_ms = now_ms;
                }
                if standing.since_ms == 0 {
                    standing.since_ms = now_ms;
                }
                debug!(peer_id = m.peer_id, ?standing, owner, "peer's standing restored");
                standing
            }
            None => fresh,
        };
        state.sched.restore_standing(&m.peer_id, standing);
        let secret = state.registry.ids.bind(Kind::Peer, &m.peer_id);
        let chunked =
            state.registry.take_chunks(conn, m.capabilities.chunked_frames && self.config.connections.chunked_frames);
        state.registry.send(conn, self.ack(Some(m.peer_id), None, secret, chunked));
        state.dispatch(Instant::now());
    }

    pub(super) fn register_gamer(&self, state: &mut State, conn: ConnId, role: &Role, m: RegisterGamer) {
        // Gamers never take the slots kept for peers (a re-registration of a live id
        // replaces a slot rather than taking one).
        let gamer_slots =
            self.config.connections.max_connections.saturating_sub(self.config.connections.reserved_peer_slots).max(1);
        // Gamers away within their resume grace with work pending still hold slots.
        let holding = state.registry.gamers.len() + state.delivery.len();
        let newcomer = *role == Role::Unregistered
            && !state.registry.gamers.contains_key(&m.gamer_id)
            && !state.delivery.contains(&m.gamer_id);
        if newcomer && holding >= gamer_slots && state.evict_absent_squatter() {
            // A place was freed: the newcomer is served, not refused.
        } else if newcomer && holding >= gamer_slots {
            let reason = format!("the coordinator serves its most gamers ({gamer_slots}); try again later");
            state.registry.send_error(conn, ErrorCode::LimitExceeded, reason, Some("register_gamer".into()));
            state.registry.send_exempt(conn, Outbound::Close(CLOSE_POLICY, "gamer slots full".into()));
            return;
        }
        let resumed = match self.bind(state, conn, role, Role::Gamer(m.gamer_id.clone()), m.resume_secret.as_deref()) {
            None => return,
            Some(Binding::Again) => true,
            Some(Binding::New { resumed }) => resumed,
        };
        // A gamer taking its id back keeps its pending tasks and sessions; their results
        // come here, after the ones that arrived while it was away.
        state.sched.add_gamer(m.gamer_id.clone());
        if let Some(addr) = state.registry.addr(conn) {
            let network = self.network_of(addr.ip());
            state.sched.set_gamer_origin(&m.gamer_id, network.to_string());
        }
        state.limits.start(&m.gamer_id, &self.config, resumed, Instant::now());
        crate::info_limited!("router: gamer registered", gamer_id = m.gamer_id, resumed, "gamer registered");
        let secret = state.registry.ids.bind(Kind::Gamer, &m.gamer_id);
        state.registry.send(conn, self.ack(None, Some(m.gamer_id.clone()), secret, false));
        if let Some(waiting) = state.delivery.take(&m.gamer_id) {
            if !waiting.lost.is_empty() {
                crate::warn_limited!(
                    "router: resume lost results",
                    gamer_id = m.gamer_id,
                    lost = waiting.lost.len(),
                    "results that arrived while the gamer was away did not fit the byte budget"
                );
            }
            let lost = waiting.lost.into_iter().map(|task_id| Outbound::message(lost_result(task_id)));
            for frame in waiting.frames.into_iter().chain(lost) {
                state.registry.send_exempt(conn, frame);
            }
        }
    }

    /// The network an address belongs to (`host_prefix_v4`, `host_prefix_v6`): one origin
    /// for quarantine, one host for replicas and their votes.
    pub(super) fn network_of(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        crate::admission::network_of(ip, self.config.connections.host_prefix_v4, self.config.connections.host_prefix_v6)
    }

    fn ack(&self, peer_id: Option<String>, gamer_id: Option<String>, resume_secret: String, chunked: bool) -> Message {
        Message::RegistrationAck(RegistrationAck {
            peer_id,
            gamer_id,
            status: "registered".into(),
            heartbeat_interval_ms: Some(self.config.connections.heartbeat_interval.as_millis() as u64),
            max_frame_bytes: Some(self.config.connections.max_frame_bytes),
            resume_secret: Some(resume_secret),
            chunked_frames: chunked,
        })
    }
}
