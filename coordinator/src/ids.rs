//! Who owns an id: the book of registered ids, their resume secrets, the grace during
//! which a closed connection's id stays reserved, and the opaque aliases peers see in
//! place of gamer ids. Pure: the router gives it the time and says which ids are live.
//!
//! Every registration gets a fresh secret (in its `registration_ack`). A later
//! registration of an id that is live, or whose connection closed less than the grace ago,
//! must prove it comes from the same client: the latest secret, or (with credentials) a
//! credential for that id. Otherwise it is refused, and the victim keeps being served.
//! Secrets are kept only as SHA-256 digests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Which map an id lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A peer id.
    Peer,
    /// A gamer id.
    Gamer,
}

/// What a registration of an id may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds or reserves it.
    Free,
    /// It is held or reserved, and the registration proved it is the same client.
    Proven,
    /// It is held or reserved by someone else.
    Refused,
}

#[derive(Debug)]
struct Record {
    secret: [u8; 32],
    /// Set while no connection holds the id: until when it stays reserved.
    reserved_until: Option<Instant>,
    /// A gamer's alias, computed once.
    alias: Option<String>,
}

/// The id book; see the module docs.
#[derive(Debug)]
pub struct IdBook {
    records: HashMap<(Kind, String), Record>,
    alias_key: [u8; 32],
    grace: Duration,
}

/// The SHA-256 digest a secret is kept as.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// 32 bytes from the OS random source.
fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // Without the OS's random source no secret could be trusted: a coordinator that cannot
    // read it must not run (it never fails on the platforms we run on).
    getrandom::fill(&mut key).expect("the OS random source");
    key
}

/// 256 random bits, hex.
fn fresh_secret() -> String {
    random_key().iter().map(|b| format!("{b:02x}")).collect()
}

impl IdBook {
    /// An empty book whose closed ids stay reserved for `grace`.
    pub fn new(grace: Duration) -> Self {
        IdBook { records: HashMap::new(), alias_key: random_key(), grace }
    }

    /// Whether a registration of `id` may take it: `live` says whether a connection holds
    /// it now; `secret` is what the registration presented; `same_credential` whether its
    /// verified credential names this id.
    pub fn claim(
        &self,
        kind: Kind,
        id: &str,
        live: bool,
        secret: Option<&str>,
        same_credential: bool,
        now: Instant,
    ) -> Claim {
        let Some(record) = self.records.get(&(kind, id.to_owned())) else { return Claim::Free };
        if !live && record.reserved_until.is_some_and(|until| until <= now) {
            return Claim::Free;
        }
        if same_credential || secret.is_some_and(|s| digest(s) == record.secret) {
            Claim::Proven
        } else {
            Claim::Refused
        }
    }

    /// Records that `id` is now held by a new registration; returns its fresh secret.
    pub fn bind(&mut self, kind: Kind, id: &str) -> String {
        let secret = fresh_secret();
        let record = self.records.entry((kind, id.to_owned())).or_insert(Record {
            secret: [0; 32],
            reserved_until: None,
            alias: None,
        });
        record.secret = digest(&secret);
        record.reserved_until = None;
        secret
    }

    /// The connection holding `id` closed: it stays reserved for the grace (or is
    /// forgotten at once when the grace is zero). Returns whether it is reserved.
    pub fn release(&mut self, kind: Kind, id: &str, now: Instant) -> bool {
        if self.grace.is_zero() {
            self.records.remove(&(kind, id.to_owned()));
            return false;
        }
        match self.records.get_mut(&(kind, id.to_owned())) {
            Some(record) => {
                record.reserved_until = Some(now + self.grace);
                true
            }
            None => false,
        }
    }

    /// The digest of `id`'s latest secret, while it is held or reserved.
    pub fn secret_digest(&self, kind: Kind, id: &str) -> Option<[u8; 32]> {
        self.records.get(&(kind, id.to_owned())).map(|r| r.secret)
    }

    /// Whether `id` is held, or reserved until after `now`.
    pub fn holds(&self, kind: Kind, id: &str, now: Instant) -> bool {
        self.records.get(&(kind, id.to_owned())).is_some_and(|r| r.reserved_until.is_none_or(|until| until > now))
    }

    /// Names gamers with `key` from now on: every coordinator of a fleet shares one, so
    /// peers see a gamer under one alias whichever coordinator it is on. Aliases already
    /// computed are forgotten.
    pub fn set_alias_key(&mut self, key: [u8; 32]) {
        self.alias_key = key;
        for record in self.records.values_mut() {
            record.alias = None;
        }
    }

    /// Forgets `id` at once (its owner lost it, e.g. a revoked credential).
    pub fn forget(&mut self, kind: Kind, id: &str) {
        self.records.remove(&(kind, id.to_owned()));
    }

    /// Forgets the ids whose reservation passed by `now`, and returns them.
    pub fn sweep(&mut self, now: Instant) -> Vec<(Kind, String)> {
        let expired: Vec<(Kind, String)> = self
            .records
            .iter()
            .filter(|(_, r)| r.reserved_until.is_some_and(|until| until <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            self.records.remove(key);
        }
        expired
    }

    /// Ids known (held or reserved).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The opaque name peers see for a gamer: a keyed hash of its id (HMAC-SHA256 with a
    /// key chosen at start), stable while the coordinator runs, useless for registering.
    pub fn alias(&mut self, gamer: &str) -> String {
        if let Some(alias) = self.records.get(&(Kind::Gamer, gamer.to_owned())).and_then(|r| r.alias.clone()) {
            return alias;
        }
        let alias = self.compute_alias(gamer);
        if let Some(record) = self.records.get_mut(&(Kind::Gamer, gamer.to_owned())) {
            record.alias = Some(alias.clone());
        }
        alias
    }

    fn compute_alias(&self, gamer: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.alias_key).expect("HMAC takes any key length");
        mac.update(gamer.as_bytes());
        let tag = mac.finalize().into_bytes();
        let hex: String = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("g-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_id_is_taken_only_with_its_latest_secret_or_credential() {
        let mut book = IdBook::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(book.claim(Kind::Gamer, "g", false, None, false, now), Claim::Free);
        let first = book.bind(Kind::Gamer, "g");
        assert_eq!(book.claim(Kind::Gamer, "g", true, None, false, now), Claim::Refused);
        assert_eq!(book.claim(Kind::Gamer, "g", true, Some("guess"), false, now), Claim::Refused);
        assert_eq!(book.claim(Kind::Gamer, "g", true, Some(&first), false, now), Claim::Proven);
        assert_eq!(book.claim(Kind::Gamer, "g", true, None, true, now), Claim::Proven);
        // The same id of the other kind is another id.
        assert_eq!(book.claim(Kind::Peer, "g", false, None, false, now), Claim::Free);
        let second = book.bind(Kind::Gamer, "g");
        assert_ne!(first, second);
        assert_eq!(book.claim(Kind::Gamer, "g", true, Some(&first), false, now), Claim::Refused, "an old secret");
        assert_eq!(second.len(), 64);
    }

    #[test]
    fn a_closed_id_stays_reserved_for_the_grace() {
        let mut book = IdBook::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let secret = book.bind(Kind::Peer, "p");
        assert!(book.release(Kind::Peer, "p", t0));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(book.claim(Kind::Peer, "p", false, None, false, t1), Claim::Refused);
        assert_eq!(book.claim(Kind::Peer, "p", false, Some(&secret), false, t1), Claim::Proven);
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(book.claim(Kind::Peer, "p", false, None, false, t2), Claim::Free);
        assert_eq!(book.sweep(t2), vec![(Kind::Peer, "p".to_owned())]);
        assert!(book.is_empty());

        let mut none = IdBook::new(Duration::ZERO);
        none.bind(Kind::Gamer, "g");
        assert!(!none.release(Kind::Gamer, "g", t0));
        assert_eq!(none.claim(Kind::Gamer, "g", false, None, false, t0), Claim::Free);
    }

    #[test]
    fn aliases_are_stable_distinct_and_opaque() {
        let mut book = IdBook::new(Duration::from_secs(1));
        book.bind(Kind::Gamer, "alice");
        let a = book.alias("alice");
        assert_eq!(a, book.alias("alice"));
        assert_ne!(a, book.alias("bob"));
        assert!(a.starts_with("g-") && a.len() == 34 && !a.contains("alice"));
        let mut other = IdBook::new(Duration::from_secs(1));
        assert_ne!(a, other.alias("alice"), "keyed per coordinator");
        other.set_alias_key(book.alias_key);
        assert_eq!(a, other.alias("alice"), "a fleet shares its key");
    }
}
