//! What waits for gamers that left within their resume grace: the results and answers
//! that arrived for them meanwhile, bounded per gamer and in all.
//!
//! Invariant: `kept_bytes` is the sum of every detached gamer's `bytes`, and never more
//! than `max_kept_bytes`; a frame that does not fit is remembered by its task id, and the
//! gamer gets an error for it on resume (never silence).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::outbound::Outbound;

/// What waits for one gamer that may resume.
#[derive(Default)]
pub(super) struct Detached {
    /// The address (IPv6: /64) it left from: the address its slot is charged to.
    address: Option<IpAddr>,
    /// When it left.
    since: Option<Instant>,
    pub(super) frames: Vec<Outbound>,
    bytes: usize,
    /// Tasks whose result or answer did not fit the budgets and was dropped: on resume
    /// each gets an error instead.
    pub(super) lost: Vec<String>,
}

/// The detached gamers and the bytes kept for them.
pub(super) struct Delivery {
    detached: HashMap<String, Detached>,
    /// Bytes kept at most for one detached gamer (its pending-bytes budget).
    resume_budget: usize,
    /// Bytes kept for all detached gamers together, and the most allowed (a quarter of
    /// `max_pending_bytes`): gamers that leave one after another cannot make the results
    /// of their tasks pile up.
    kept_bytes: usize,
    max_kept_bytes: usize,
    /// Absent gamers whose slot went to a newcomer ([`Delivery::squatter`]).
    pub(super) absent_evicted: u64,
}

impl Delivery {
    pub(super) fn new(resume_budget: usize, max_kept_bytes: usize) -> Self {
        Delivery {
            detached: HashMap::new(),
            resume_budget,
            kept_bytes: 0,
            max_kept_bytes: max_kept_bytes.max(1),
            absent_evicted: 0,
        }
    }

    /// Gamers away now with work pending (each holds a gamer slot).
    pub(super) fn len(&self) -> usize {
        self.detached.len()
    }

    pub(super) fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    pub(super) fn contains(&self, gamer: &str) -> bool {
        self.detached.contains_key(gamer)
    }

    /// A gamer left at `since` from `address` with work pending: what arrives for it is
    /// kept from now on.
    pub(super) fn detach(&mut self, gamer: &str, address: Option<IpAddr>, since: Instant) {
        self.detached.insert(gamer.to_owned(), Detached { address, since: Some(since), ..Detached::default() });
    }

    /// Removes what was kept for a gamer (to deliver or drop).
    pub(super) fn take(&mut self, gamer: &str) -> Option<Detached> {
        let waiting = self.detached.remove(gamer)?;
        self.kept_bytes = self.kept_bytes.saturating_sub(waiting.bytes);
        Some(waiting)
    }

    /// Keeps a frame for a gamer that may resume, within its budget and the shared one.
    /// Does nothing for a gamer that is not detached (it left with nothing pending).
    pub(super) fn keep(&mut self, gamer: &str, task_id: &str, frame: Outbound) {
        // One gamer may hold at most an eighth of the shared pool: a few leavers with
        // large results cannot take every other leaver's share.
        let budget = self.resume_budget.min(self.max_kept_bytes / 8).max(1);
        let Some(waiting) = self.detached.get_mut(gamer) else { return };
        let bytes = frame.weight();
        if waiting.bytes.saturating_add(bytes) > budget || self.kept_bytes.saturating_add(bytes) > self.max_kept_bytes {
            waiting.lost.push(task_id.to_owned());
            return;
        }
        waiting.bytes += bytes;
        self.kept_bytes += bytes;
        waiting.frames.push(frame);
    }

    /// With every gamer slot taken, which absent gamer makes room: the one that left
    /// longest ago from the address holding the most absent slots (absent gamers are
    /// charged to the address they left from), when that address holds two or more, so
    /// one address resuming absent ids cannot hold every slot against newcomers, while an
    /// address's one absent gamer keeps its slot for its grace.
    pub(super) fn squatter(&self) -> Option<(String, Option<IpAddr>)> {
        let mut by_address: HashMap<Option<IpAddr>, usize> = HashMap::new();
        for d in self.detached.values() {
            *by_address.entry(d.address).or_default() += 1;
        }
        let (&address, _) = by_address.iter().filter(|&(_, n)| *n >= 2).max_by_key(|&(a, n)| (*n, *a))?;
        self.detached
            .iter()
            .filter(|(_, d)| d.address == address)
            .min_by_key(|(id, d)| (d.since, (*id).clone()))
            .map(|(id, _)| (id.clone(), address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2c2r_protocol::Message;

    /// A task result whose payload takes about `bytes`.
    fn frame(bytes: usize) -> Outbound {
        let result = p2c2r_protocol::Payload::binary(vec![0u8; bytes * 3 / 4]);
        Outbound::message(Message::TaskResult(p2c2r_protocol::TaskResult {
            task_id: "t".into(),
            result,
            attempt: None,
            peer_id: None,
        }))
    }

    #[test]
    fn frames_over_the_budgets_are_remembered_as_lost_and_the_pool_is_given_back() {
        let mut d = Delivery::new(1_000_000, 8 * 4_096);
        d.detach("g", None, Instant::now());
        d.keep("g", "t1", frame(1_000));
        // An eighth of the pool is one gamer's most.
        d.keep("g", "t2", frame(4_096));
        d.keep("nobody", "t3", frame(10));
        assert!(d.kept_bytes() > 1_000 && d.kept_bytes() < 4_096);
        let waiting = d.take("g").unwrap();
        assert_eq!(waiting.frames.len(), 1);
        assert_eq!(waiting.lost, ["t2"]);
        assert_eq!(d.kept_bytes(), 0);
        assert!(d.take("nobody").is_none(), "a gamer that left idle keeps nothing");
    }

    #[test]
    fn the_squatter_is_the_oldest_absent_gamer_of_the_address_holding_most() {
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let mut d = Delivery::new(1_000, 8_000);
        d.detach("lone", Some(b), t0);
        assert_eq!(d.squatter(), None, "an address's one absent gamer keeps its slot");
        d.detach("a2", Some(a), t0 + std::time::Duration::from_secs(2));
        d.detach("a1", Some(a), t0 + std::time::Duration::from_secs(1));
        assert_eq!(d.squatter(), Some(("a1".to_owned(), Some(a))));
    }
}
