//! How peers and gamers leave: a connection closing or evicted, a credential revoked, a
//! resume grace passing, an absent gamer making room. Each kind of departure is written
//! once: [`State::peer_departed`] and [`State::forget_gamer`].

use std::time::Instant;

use p2c2r_protocol::ErrorCode;

use super::registry::{Departure, Role};
use super::{ConnId, REVOKED_FLUSH, Router, State};
use crate::auth::Credentials;
use crate::ids::Kind;

impl Router {
    /// Forgets a connection: a peer's tasks are re-queued, a gamer's kept for its resume
    /// grace (when it has work pending) or dropped.
    pub fn disconnect(&self, conn: ConnId, why: Departure) {
        let mut state = self.lock();
        let Some(entry) = state.registry.conns.remove(&conn) else { return };
        let address = entry.info.as_ref().map(|i| crate::admission::address_key(i.addr.ip()));
        let now = Instant::now();
        match entry.role {
            Role::Unregistered => {}
            Role::Peer(peer_id) => {
                if why == Departure::Evicted {
                    state.registry.peers_evicted += 1;
                }
                // A replaced registration already moved on; only the current one counts.
                if state.registry.peers.get(&peer_id) == Some(&conn) {
                    state.registry.peers.remove(&peer_id);
                    // Even after a goodbye a peer's id stays reserved for the grace: the
                    // standing it earned goes back only to a registration proving the id is
                    // its own, and a restarting peer proves it with the secret its state file
                    // kept (so it is never refused its own id).
                    state.registry.ids.release(Kind::Peer, &peer_id, now);
                    let requeued = state.peer_departed(&peer_id);
                    crate::info_limited!("router: peer left", peer_id, requeued, ?why, "peer left");
                    state.dispatch(now);
                }
            }
            Role::Gamer(gamer_id) => {
                if why == Departure::Evicted {
                    state.registry.gamers_evicted += 1;
                }
                if state.registry.gamers.get(&gamer_id) == Some(&conn) {
                    state.registry.gamers.remove(&gamer_id);
                    let idle = state.sched.gamer_view(&gamer_id).is_none_or(|g| g.pending == 0);
                    if why == Departure::Farewell && idle {
                        // A clean goodbye with nothing pending: the id is free at once.
                        let dropped = state.forget_gamer(&gamer_id);
                        crate::info_limited!("router: gamer left", gamer_id, dropped, ?why, "gamer left");
                    } else if state.registry.ids.release(Kind::Gamer, &gamer_id, now) {
                        // Its id is reserved for it either way. With work pending, its tasks
                        // keep running, their results wait for it, and it holds its gamer
                        // slot (charged to the address it left from); with nothing pending
                        // it holds no slot: it may resume, but keeps nobody out meanwhile.
                        if !idle {
                            state.delivery.detach(&gamer_id, address, now);
                        }
                        crate::info_limited!("router: gamer detached", gamer_id, ?why, idle, "gamer left; may resume");
                    } else {
                        let dropped = state.forget_gamer(&gamer_id);
                        crate::info_limited!("router: gamer left", gamer_id, dropped, ?why, "gamer left");
                    }
                }
            }
        }
        // A replica retired with the peer may have started a tie-breaker's replay.
        self.release(state);
    }

    /// After the credentials changed: closes every connection whose credential they no
    /// longer accept (its id is freed at once: the credential that could resume it is
    /// gone). Returns how many were closed.
    pub fn revalidate(&self, credentials: &Credentials) -> usize {
        let mut state = self.lock();
        let refused: Vec<ConnId> = state
            .registry
            .conns
            .iter()
            .filter(|(_, c)| {
                c.info.as_ref().and_then(|i| i.credential.as_ref()).is_some_and(|cr| !credentials.still_valid(cr))
            })
            .map(|(id, _)| *id)
            .collect();
        for &conn in &refused {
            state.expel(conn, ErrorCode::Unauthorized, "credential revoked");
        }
        if !refused.is_empty() {
            state.dispatch(Instant::now());
            crate::info_limited!(
                "router: credentials revoked",
                closed = refused.len(),
                "closed connections whose credential was revoked"
            );
        }
        let closed = refused.len();
        self.release(state);
        closed
    }

    /// Frees the ids whose resume grace passed by `now`; a gamer's tasks and kept results
    /// are dropped with it. Forgets the quarantines and disputes that ended.
    pub fn sweep(&self, now: Instant) {
        let mut state = self.lock();
        state.standing.sweep(now);
        state.sched.disputes_mut().sweep(now);
        for (kind, id) in state.registry.ids.sweep(now) {
            if kind == Kind::Gamer && !state.registry.gamers.contains_key(&id) {
                let dropped = state.forget_gamer(&id);
                crate::info_limited!(
                    "router: gamer gone",
                    gamer_id = id,
                    dropped,
                    "gamer did not resume in time; its tasks are dropped"
                );
            }
        }
    }
}

impl State {
    /// Ends a connection for a reason that frees its id at once (a credential revoked, the
    /// id taken over on another coordinator): it is told why and loses its role now, not when
    /// its close frame gets through (it may be reading slowly on purpose); after
    /// [`REVOKED_FLUSH`] it goes anyway. Its id is forgotten: nothing may resume it here.
    pub(super) fn expel(&mut self, conn: ConnId, code: ErrorCode, why: &str) {
        self.registry.send_error(conn, code, why, None);
        let Some(role) = self.registry.close(conn, why) else { return };
        if let Some(kill) = self.registry.conns.get(&conn).map(|c| c.handle.kill.clone()) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        tokio::time::sleep(REVOKED_FLUSH).await;
                        kill.cancel();
                    });
                }
                Err(_) => kill.cancel(),
            }
        }
        match role {
            Role::Peer(id) => {
                if self.registry.peers.get(&id) == Some(&conn) {
                    self.registry.peers.remove(&id);
                    self.peer_departed(&id);
                }
                self.registry.ids.forget(Kind::Peer, &id);
            }
            Role::Gamer(id) => {
                if self.registry.gamers.get(&id) == Some(&conn) {
                    self.registry.gamers.remove(&id);
                    self.forget_gamer(&id);
                }
                // Its record too: nothing could resume it, and no sweep would find it.
                self.registry.ids.forget(Kind::Gamer, &id);
            }
            Role::Unregistered => {}
        }
    }

    /// A peer is gone (left, replaced by nobody, quarantined, revoked): the replicas it
    /// held retire, its standing is remembered, and its tasks are re-queued (returned: how
    /// many). The caller has taken it out of the registry.
    pub(super) fn peer_departed(&mut self, peer_id: &str) -> usize {
        self.retire_replicas_on(peer_id);
        self.remember_standing(peer_id);
        self.sched.remove_peer(peer_id)
    }

    /// Drops everything of a gamer that left for good: its id, tasks (returned: how
    /// many), sessions, kept results and limits.
    pub(super) fn forget_gamer(&mut self, gamer: &str) -> usize {
        self.delivery.take(gamer);
        self.replicas.forget_gamer(gamer);
        self.limits.forget(gamer);
        self.registry.ids.forget(Kind::Gamer, gamer);
        self.sched.remove_gamer(gamer)
    }

    /// With every gamer slot taken, frees one held by an absent gamer (see
    /// [`super::delivery::Delivery::squatter`]): its pending tasks are dropped and its id
    /// freed, as when its resume grace passes. Returns whether one was freed.
    pub(super) fn evict_absent_squatter(&mut self) -> bool {
        let Some((victim, address)) = self.delivery.squatter() else { return false };
        let dropped = self.forget_gamer(&victim);
        self.delivery.absent_evicted += 1;
        crate::warn_limited!(
            "router: absent gamer evicted",
            gamer_id = victim,
            ?address,
            dropped,
            "gamer slots full: the absent gamer whose address holds the most absent slots made room"
        );
        true
    }
}
