//! What the federation ([`crate::federation`]) asks of the router: the shared alias key,
//! the secrets and ids it holds (to claim and release them across the fleet), an id taken
//! over on another coordinator, and quarantines decided elsewhere.

use std::time::{Duration, Instant};

use p2c2r_protocol::ErrorCode;

use super::Router;
use crate::ids::Kind;

impl Router {
    /// Names gamers with the fleet's shared alias key (set once, before any connection).
    pub fn set_alias_key(&self, key: [u8; 32]) {
        self.lock().registry.ids.set_alias_key(key);
    }

    /// The digest of the resume secret `id` was last given, while it is held or reserved.
    pub fn secret_digest(&self, kind: Kind, id: &str) -> Option<[u8; 32]> {
        self.lock().registry.ids.secret_digest(kind, id)
    }

    /// Whether `id` is held here, or reserved for its owner's resume.
    pub fn holds(&self, kind: Kind, id: &str) -> bool {
        self.lock().registry.ids.holds(kind, id, Instant::now())
    }

    /// `id` registered again on coordinator `by` (its claim moved there): the connection
    /// holding it here, if any, is told and closed, and the id forgotten here (what it
    /// held goes with it, as when a registration replaces another connection).
    pub fn moved_away(&self, kind: Kind, id: &str, by: &str) {
        let mut state = self.lock();
        let live = match kind {
            Kind::Peer => state.registry.peers.get(id),
            Kind::Gamer => state.registry.gamers.get(id),
        }
        .copied();
        match live {
            Some(conn) => {
                crate::info_limited!("router: id moved", id, by, "id registered again on another coordinator");
                state.expel(conn, ErrorCode::Replaced, &format!("registered again on coordinator {by}"));
            }
            None if kind == Kind::Gamer && state.registry.ids.holds(kind, id, Instant::now()) => {
                state.forget_gamer(id);
            }
            None => state.registry.ids.forget(kind, id),
        }
        state.dispatch(Instant::now());
        self.release(state);
    }

    /// Quarantines `peer_id` for `left` because coordinator `by` did (see
    /// [`Router::quarantines`]); one already quarantined here is left as it is.
    pub fn quarantined_elsewhere(&self, peer_id: &str, left: Duration, by: &str) {
        let mut state = self.lock();
        let now = Instant::now();
        if state.standing.quarantined_for(peer_id, now).is_some() {
            return;
        }
        state.quarantine_peer(peer_id, now + left, &format!("quarantined by coordinator {by}"));
        state.dispatch(now);
        self.release(state);
    }

    /// Slots free now on this coordinator's own peers: what it could lend the fleet.
    pub fn free_local_slots(&self) -> u64 {
        self.lock().sched.free_local_slots()
    }

    /// The largest frame a connection may send (what a task from the fleet may be too).
    pub fn max_frame_bytes(&self) -> usize {
        self.config.connections.max_frame_bytes
    }

    /// A connection's outbound queue bounds, frames and bytes (the fleet's stand-ins get
    /// the same).
    pub fn queue_bounds(&self) -> (usize, usize) {
        (self.config.connections.send_queue_frames, self.config.connections.send_queue_bytes)
    }

    /// The peers quarantined now, with the time each has left (at most
    /// [`super::MAX_QUARANTINED`]).
    pub fn quarantines(&self) -> Vec<(String, Duration)> {
        self.lock().standing.quarantined(Instant::now())
    }
}
