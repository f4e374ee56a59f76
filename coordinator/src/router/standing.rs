//! What peers have earned: quarantines (missed deadlines, outvoted, unsettled disputes)
//! and departed peers' standings, in memory and, when configured, in the reputation
//! database.
//!
//! Invariants: both tables are bounded ([`MAX_QUARANTINED`]); a peer found lying while a
//! frame is handled is quarantined once that frame's decision is done
//! ([`State::take_quarantined_liars`]), never in the middle of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use p2c2r_protocol::ErrorCode;

use super::State;
use crate::ids::Kind;
use crate::reputation::{Kept, ReputationDb, Standings};

/// Why a peer that kept missing deadlines was quarantined.
pub(super) const MISSED_DEADLINES: &str = "missed task deadlines in a row";
/// Why a peer outvoted by replicas was quarantined.
pub(super) const OUTVOTED: &str = "its result differed from what two or more replicas of the session agreed on";
/// Why a peer in unsettled disputes with several partners is quarantined.
pub(super) const DISPUTED: &str = "its results differed from those of established peers of several networks, in \
                                   disputes nothing could settle";

/// Peer ids remembered as quarantined at most (each costs about a hundred bytes): beyond,
/// the one whose quarantine ends soonest is forgotten first. In open mode anyone can make
/// up peer ids, so the table must not grow with them.
pub const MAX_QUARANTINED: usize = 65_536;

/// Quarantines and standings.
pub(super) struct Standing {
    /// Peer ids quarantined, and until when (see `Reputation::quarantine_after_misses`).
    quarantine: HashMap<String, Instant>,
    pub(super) peers_quarantined: u64,
    /// Where quarantines outlive the process, when configured.
    reputation: Option<ReputationDb>,
    /// What departed peers had earned (see [`State::remember_standing`]).
    pub(super) standings: Standings,
    /// Peers to quarantine once the current frame is handled, with why: outvoted, or in
    /// unsettled disputes with several partners.
    pub(super) liars: Vec<(String, &'static str)>,
}

impl Standing {
    pub(super) fn new() -> Self {
        Standing {
            quarantine: HashMap::new(),
            peers_quarantined: 0,
            reputation: None,
            standings: Standings::new(MAX_QUARANTINED),
            liars: Vec::new(),
        }
    }

    /// How long the peer's quarantine still lasts at `now`, if it is quarantined.
    pub(super) fn quarantined_for(&self, peer_id: &str, now: Instant) -> Option<Duration> {
        self.quarantine.get(peer_id).filter(|until| **until > now).map(|until| until.saturating_duration_since(now))
    }

    /// The quarantines still on at `now`, with the time each has left.
    pub(super) fn quarantined(&self, now: Instant) -> Vec<(String, Duration)> {
        self.quarantine
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(peer, until)| (peer.clone(), until.saturating_duration_since(now)))
            .collect()
    }

    /// Forgets the quarantines that ended by `now`.
    pub(super) fn sweep(&mut self, now: Instant) {
        self.quarantine.retain(|_, until| *until > now);
    }

    /// Takes the reputation database and what it kept from before a restart (the least
    /// recently written standings first, so the table forgets them in the same order).
    pub(super) fn restore(&mut self, db: ReputationDb, kept: Kept, now: Instant) {
        for q in kept.quarantined {
            insert_bounded(&mut self.quarantine, &q.peer_id, now + q.left, MAX_QUARANTINED);
        }
        for s in kept.standings {
            self.standings.remember(&s.peer_id, s.standing, now.checked_sub(s.age).unwrap_or(now));
        }
        self.reputation = Some(db);
    }

    /// Gives the database up (to close it); from now on everything is kept in memory only.
    pub(super) fn take_db(&mut self) -> Option<ReputationDb> {
        self.reputation.take()
    }

    fn record_quarantine(&mut self, peer_id: &str, until: Instant) {
        insert_bounded(&mut self.quarantine, peer_id, until, MAX_QUARANTINED);
        if let Some(db) = &self.reputation {
            db.quarantined(peer_id, until.saturating_duration_since(Instant::now()));
        }
        self.peers_quarantined += 1;
    }
}

impl State {
    /// Quarantines a peer (it kept missing deadlines, or was outvoted by replicas: `why`):
    /// closes it (its tasks are re-queued, its replicas retired) and refuses its id until
    /// `until`.
    pub(super) fn quarantine_peer(&mut self, peer_id: &str, until: Instant, why: &str) {
        if peer_id.starts_with(super::FLEET_ID_PREFIX) {
            // The fleet's stand-in answers for other coordinators' peers, which their own
            // coordinators judge; its misses shrink its window, never close it.
            return;
        }
        crate::warn_limited!("router: peer quarantined", peer_id, why, "peer quarantined");
        // Its replicas go first: the outcomes of their cancelled copies may count an
        // agreement for it, which forfeiting its trust must then take back.
        self.retire_replicas_on(peer_id);
        self.standing.record_quarantine(peer_id, until);
        self.sched.forfeit_trust(peer_id);
        self.registry.ids.forget(Kind::Peer, peer_id);
        let conn = self.registry.peers.remove(peer_id);
        self.peer_departed(peer_id);
        if let Some(conn) = conn {
            self.registry.send_error(conn, ErrorCode::Quarantined, format!("quarantined: {why}"), None);
            self.registry.close(conn, "quarantined");
        }
    }

    /// Remembers a peer's standing as it leaves (closed, evicted, replaced, quarantined,
    /// its credential revoked; call it before the scheduler forgets the peer): the capacity
    /// it has shown and its streak of missed deadlines, in memory (at most
    /// [`MAX_QUARANTINED`] ids, the least recently updated forgotten first) and in the
    /// reputation database. `register_peer` gives it back to the same id (the window grown
    /// past a new peer's only to a registration proving it owns the id). Otherwise a peer
    /// demoted for missing deadlines, or a few misses from quarantine, would only have to
    /// reconnect (or wait for a restart) to start again with a clean streak: with its
    /// standing kept, it gains nothing by leaving. A standing no different from a new
    /// peer's is forgotten instead of kept.
    pub(super) fn remember_standing(&mut self, peer_id: &str) {
        let Some(standing) = self.sched.standing(peer_id) else { return };
        let standings = &mut self.standing;
        if standing.same_as_fresh(&self.sched.fresh_standing()) {
            if standings.standings.forget(peer_id)
                && let Some(db) = &standings.reputation
            {
                db.forget_standing(peer_id);
            }
            return;
        }
        standings.standings.remember(peer_id, standing, Instant::now());
        if let Some(db) = &standings.reputation {
            db.standing(peer_id, standing);
        }
    }

    /// Quarantines the peers found lying since the last call.
    pub(super) fn take_quarantined_liars(&mut self, duration: Duration) {
        let liars = std::mem::take(&mut self.standing.liars);
        if liars.is_empty() {
            return;
        }
        let now = Instant::now();
        for (liar, why) in liars {
            if self.standing.quarantined_for(&liar, now).is_some() {
                continue;
            }
            if why == OUTVOTED {
                self.replicas.counters.liars += 1;
            }
            self.quarantine_peer(&liar, Instant::now() + duration, why);
        }
        self.dispatch(Instant::now());
    }

    /// Quarantines the peers whose streak of missed deadlines the scheduler just
    /// completed (unless a decision already had one quarantined).
    pub(super) fn quarantine_missers(&mut self, duration: Duration, now: Instant) {
        for missed in self.sched.take_quarantined() {
            if self.standing.quarantined_for(&missed, now).is_none() {
                self.quarantine_peer(&missed, now + duration, MISSED_DEADLINES);
            }
        }
    }
}

/// Inserts `key` until `until` into a table of at most `max` entries, forgetting the entry
/// that ends soonest when it is full.
fn insert_bounded(table: &mut HashMap<String, Instant>, key: &str, until: Instant, max: usize) {
    if table.len() >= max.max(1)
        && !table.contains_key(key)
        && let Some(soonest) = table.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone())
    {
        table.remove(&soonest);
    }
    table.insert(key.to_owned(), until);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quarantine_table_is_bounded_and_forgets_the_soonest_first() {
        let t0 = Instant::now();
        let mut table = HashMap::new();
        for i in 0..10u64 {
            insert_bounded(&mut table, &format!("p{i}"), t0 + Duration::from_secs(100 + i), 4);
        }
        assert_eq!(table.len(), 4);
        let mut kept: Vec<&String> = table.keys().collect();
        kept.sort();
        assert_eq!(kept, ["p6", "p7", "p8", "p9"], "the latest to end are kept");
        // Renewing a present id does not evict anyone.
        insert_bounded(&mut table, "p6", t0 + Duration::from_secs(500), 4);
        assert_eq!(table.len(), 4);
        assert!(table.contains_key("p7"));
    }

    #[test]
    fn a_quarantine_lasts_until_it_ends_and_is_swept_then() {
        let t0 = Instant::now();
        let mut s = Standing::new();
        s.record_quarantine("p", t0 + Duration::from_secs(10));
        assert_eq!(s.quarantined_for("p", t0), Some(Duration::from_secs(10)));
        assert_eq!(s.quarantined_for("q", t0), None);
        assert_eq!(s.quarantined_for("p", t0 + Duration::from_secs(10)), None, "over at its end");
        s.sweep(t0 + Duration::from_secs(11));
        assert!(s.quarantine.is_empty());
        assert_eq!(s.peers_quarantined, 1);
    }
}
