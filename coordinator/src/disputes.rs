//! Disputes replicas could not settle, and what they say about the peers in them.
//!
//! Replicas of a session that disagree are settled by a vote (see
//! [`crate::replication`]); when nothing can settle it (a tie with no third compatible
//! peer, or a re-run that did not confirm the majority), nobody can say who lied. This
//! module remembers such disputes, so that they end instead of repeating:
//!
//! - **Kept apart.** Two peers whose dispute was not settled are never placed as
//!   replicas of one session again (until [`DisputeConfig::memory`] passes): a liar
//!   cannot keep re-pairing with the same honest peer and deliver its answer each time
//!   the session restarts.
//! - **Quarantine by partners.** Each peer's unsettled disputes are counted by partner
//!   *network* (a voter: see `admission::network_of`), and only partners whose vote had
//!   weight when they disputed (established, `Reputation::established_after_answers`, and
//!   verified: seen agreeing with another network, [`Disputes::has_agreed`]). A peer in
//!   unsettled disputes with [`DisputeConfig::partners_to_quarantine`] or more
//!   networks, and with more such networks than networks it agreed with on compared
//!   ticks, is reported for quarantine. A liar that lies on every tick agrees with
//!   nobody honest, so three honest networks are enough to catch it; to get an honest
//!   peer quarantined this way an attacker needs established peers on at least that many
//!   networks, and more networks than the honest peer has agreeing partners.
//!
//! Everything here is bounded: pairs and per-peer records by count (the soonest to
//! expire goes first) and by time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A peer's part in a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// The peer.
    pub peer: String,
    /// Who its vote counts as: its network where replicas must be on distinct hosts, else
    /// the peer.
    pub voter: String,
    /// Its vote's weight when it answered (0: none; see `replication::vote_weight`).
    pub weight: u32,
}

/// How disputes are remembered.
#[derive(Debug, Clone)]
pub struct DisputeConfig {
    /// Distinct established partner networks in unsettled disputes that get a peer
    /// quarantined (when more than the networks it agreed with); 0: never.
    pub partners_to_quarantine: usize,
    /// How long an unsettled dispute keeps its two peers apart and counts.
    pub memory: Duration,
    /// Most pairs kept apart, and most peers with records.
    pub max_records: usize,
}

impl Default for DisputeConfig {
    fn default() -> Self {
        DisputeConfig { partners_to_quarantine: 3, memory: Duration::from_secs(3600), max_records: 16_384 }
    }
}

/// Most partner networks remembered per peer (disputes and agreements alike): past it,
/// the oldest record goes.
const MAX_PARTNERS_PER_PEER: usize = 64;

/// Unsettled disputes and agreements, by peer.
#[derive(Debug, Default)]
pub struct Disputes {
    config: DisputeConfig,
    /// Pairs kept apart (the two ids in order), until when.
    apart: HashMap<(String, String), Instant>,
    /// Per peer: its established partner networks in unsettled disputes, until when.
    disputed: HashMap<String, HashMap<String, Instant>>,
    /// Per peer: the networks it agreed with on a compared tick, until when.
    agreed: HashMap<String, HashMap<String, Instant>>,
}

impl Disputes {
    /// An empty record.
    pub fn new(config: DisputeConfig) -> Self {
        Disputes { config, ..Default::default() }
    }

    /// Whether two peers are kept apart (an unsettled dispute between them).
    pub fn apart(&self, a: &str, b: &str) -> bool {
        !self.apart.is_empty() && self.apart.contains_key(&pair(a, b))
    }

    /// Whether any pair is kept apart (placement skips the checks when none is).
    pub fn any_apart(&self) -> bool {
        !self.apart.is_empty()
    }

    /// Pairs kept apart now.
    pub fn pairs_apart(&self) -> usize {
        self.apart.len()
    }

    /// Records a dispute nothing settled between the parties of different `votes` (each
    /// vote the parties that gave one answer). Returns the peers that must now be
    /// quarantined (see the module docs).
    pub fn unsettled(&mut self, votes: &[Vec<Party>], now: Instant) -> Vec<String> {
        let until = now + self.config.memory;
        let mut touched = Vec::new();
        for (i, vote) in votes.iter().enumerate() {
            for other in votes.iter().skip(i + 1) {
                for a in vote {
                    for b in other {
                        if a.peer == b.peer {
                            continue;
                        }
                        bounded_insert(&mut self.apart, pair(&a.peer, &b.peer), until, self.config.max_records);
                        if b.weight > 0 {
                            self.record(Record::Disputed, &a.peer, &b.voter, until);
                        }
                        if a.weight > 0 {
                            self.record(Record::Disputed, &b.peer, &a.voter, until);
                        }
                        touched.extend([a.peer.clone(), b.peer.clone()]);
                    }
                }
            }
        }
        touched.sort();
        touched.dedup();
        let threshold = self.config.partners_to_quarantine;
        if threshold == 0 {
            return Vec::new();
        }
        touched
            .into_iter()
            .filter(|peer| {
                let disputed = self.disputed.get(peer).map_or(0, HashMap::len);
                let agreed = self.agreed.get(peer).map_or(0, HashMap::len);
                disputed >= threshold && disputed > agreed
            })
            .collect()
    }

    /// Records that the parties agreed on a compared tick.
    pub fn agreed(&mut self, parties: &[Party], now: Instant) {
        let until = now + self.config.memory;
        for a in parties {
            for b in parties {
                if a.voter != b.voter {
                    self.record(Record::Agreed, &a.peer, &b.voter, until);
                }
            }
        }
    }

    /// Forgets what has expired.
    pub fn sweep(&mut self, now: Instant) {
        self.apart.retain(|_, until| *until > now);
        for table in [&mut self.disputed, &mut self.agreed] {
            table.retain(|_, partners| {
                partners.retain(|_, until| *until > now);
                !partners.is_empty()
            });
        }
    }

    /// Whether a peer agreed with another network's peer on a compared tick within the
    /// memory: its answers were verified by replication (a vote's weight needs it).
    pub fn has_agreed(&self, peer: &str) -> bool {
        self.agreed.get(peer).is_some_and(|partners| !partners.is_empty())
    }

    /// Established partner networks a peer is in unsettled disputes with.
    pub fn partners_disputed(&self, peer: &str) -> usize {
        self.disputed.get(peer).map_or(0, HashMap::len)
    }

    fn record(&mut self, record: Record, peer: &str, partner: &str, until: Instant) {
        let table = match record {
            Record::Disputed => &mut self.disputed,
            Record::Agreed => &mut self.agreed,
        };
        if let Some(partners) = table.get_mut(peer) {
            // The common case on every compared tick: one lookup, no allocation.
            if let Some(known) = partners.get_mut(partner) {
                *known = until;
                return;
            }
            bounded_insert(partners, partner.to_owned(), until, MAX_PARTNERS_PER_PEER);
            return;
        }
        if table.len() >= self.config.max_records {
            // The peer whose records end soonest goes.
            let soonest = table.iter().min_by_key(|(_, p)| p.values().max().copied()).map(|(k, _)| k.clone());
            if let Some(soonest) = soonest {
                table.remove(&soonest);
            }
        }
        table.entry(peer.to_owned()).or_default().insert(partner.to_owned(), until);
    }
}

#[derive(Clone, Copy)]
enum Record {
    Disputed,
    Agreed,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
}

/// Inserts into a table bounded to `max` entries: past it, the one ending soonest goes.
fn bounded_insert<K: std::hash::Hash + Eq + Clone>(
    table: &mut HashMap<K, Instant>,
    key: K,
    until: Instant,
    max: usize,
) {
    if !table.contains_key(&key)
        && table.len() >= max.max(1)
        && let Some(soonest) = table.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone())
    {
        table.remove(&soonest);
    }
    table.insert(key, until);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(peer: &str, network: &str) -> Party {
        Party { peer: peer.into(), voter: network.into(), weight: 1 }
    }

    fn disputes() -> Disputes {
        Disputes::new(DisputeConfig::default())
    }

    #[test]
    fn an_unsettled_pair_is_kept_apart_until_its_memory_passes() {
        let mut d = disputes();
        let now = Instant::now();
        assert!(d.unsettled(&[vec![party("honest", "n1")], vec![party("liar", "n9")]], now).is_empty());
        assert!(d.apart("honest", "liar") && d.apart("liar", "honest"));
        assert!(!d.apart("honest", "other"));
        d.sweep(now + Duration::from_secs(3599));
        assert!(d.apart("liar", "honest"));
        d.sweep(now + Duration::from_secs(3601));
        assert!(!d.apart("liar", "honest") && !d.any_apart());
        assert_eq!(d.partners_disputed("liar"), 0);
    }

    #[test]
    fn a_liar_in_disputes_with_three_honest_networks_is_quarantined_and_they_are_not() {
        let mut d = disputes();
        let now = Instant::now();
        // The honest peers agree with each other on other sessions.
        d.agreed(&[party("h1", "n1"), party("h2", "n2")], now);
        d.agreed(&[party("h2", "n2"), party("h3", "n3")], now);
        d.agreed(&[party("h1", "n1"), party("h3", "n3")], now);
        for (honest, network) in [("h1", "n1"), ("h2", "n2")] {
            let out = d.unsettled(&[vec![party(honest, network)], vec![party("liar", "n9")]], now);
            assert!(out.is_empty(), "two partners are not enough: {out:?}");
        }
        let out = d.unsettled(&[vec![party("h3", "n3")], vec![party("liar", "n9")]], now);
        assert_eq!(out, ["liar"]);
    }

    #[test]
    fn three_colluders_cannot_quarantine_an_honest_peer_with_more_agreeing_partners() {
        let mut d = disputes();
        let now = Instant::now();
        for (h, n) in [("h2", "n2"), ("h3", "n3"), ("h4", "n4"), ("h5", "n5")] {
            d.agreed(&[party("h1", "n1"), party(h, n)], now);
        }
        for (a, n) in [("a1", "x1"), ("a2", "x2"), ("a3", "x3")] {
            let out = d.unsettled(&[vec![party("h1", "n1")], vec![party(a, n)]], now);
            assert!(out.is_empty(), "{out:?}");
        }
        assert_eq!(d.partners_disputed("h1"), 3);
        // A fourth and fifth network tip it: the bound the docs state.
        d.unsettled(&[vec![party("h1", "n1")], vec![party("a4", "x4")]], now);
        let out = d.unsettled(&[vec![party("h1", "n1")], vec![party("a5", "x5")]], now);
        assert_eq!(out, ["h1"]);
    }

    #[test]
    fn fresh_partners_and_one_network_of_many_peers_count_little() {
        let mut d = disputes();
        let now = Instant::now();
        let fresh = |p: &str, n: &str| Party { weight: 0, ..party(p, n) };
        for i in 0..5 {
            let out = d.unsettled(&[vec![party("h1", "n1")], vec![fresh(&format!("sybil{i}"), &format!("x{i}"))]], now);
            assert!(out.is_empty());
        }
        assert_eq!(d.partners_disputed("h1"), 0, "fresh peers' disputes do not count against anyone");
        for i in 0..5 {
            d.unsettled(&[vec![party("h2", "n2")], vec![party(&format!("s{i}"), "one-network")]], now);
        }
        assert_eq!(d.partners_disputed("h2"), 1, "one network is one partner however many peers");
    }

    #[test]
    fn records_are_bounded() {
        let mut d = Disputes::new(DisputeConfig { max_records: 8, ..DisputeConfig::default() });
        let now = Instant::now();
        for i in 0..100 {
            d.unsettled(&[vec![party(&format!("a{i}"), &format!("n{i}"))], vec![party("b", "nb")]], now);
        }
        assert!(d.pairs_apart() <= 8);
        assert!(d.disputed.len() <= 8);
        assert!(d.partners_disputed("b") <= MAX_PARTNERS_PER_PEER);
    }
}
