//! Who holds an id across the fleet: a claim in the ids bucket names the coordinator whose
//! connection holds the id, and the digest of the resume secret that connection was given.
//! Claims change only by compare-and-set (create, or update at the revision read), so two
//! coordinators racing for one id cannot both win. Pure: the I/O is in `super`.
//!
//! A registration on coordinator `me` may take an id when:
//! - nobody claims it (it creates the claim);
//! - `me` claims it (the local id book decides, as a lone coordinator does);
//! - it proves it is the same client: the resume secret whose digest the claim holds, or a
//!   credential for that id;
//! - the claiming coordinator is gone (its lease lapsed) for longer than the resume grace,
//!   as a closed connection's id stops being reserved after the grace.
//!
//! Otherwise it is refused, and the holder keeps being served.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A claim's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The coordinator whose connection holds (or last held) the id.
    pub holder: String,
    /// Hex SHA-256 of the resume secret of the id's latest registration; `None` until the
    /// registration is acknowledged.
    #[serde(default)]
    pub secret_digest: Option<String>,
}

/// The claiming coordinator, as its lease says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderLease {
    /// It renewed its lease within the lease's time to live.
    Live,
    /// Its lease lapsed (or it left) this long ago.
    GoneFor(Duration),
}

/// What a registration presents to prove it owns an id.
#[derive(Clone, Copy, Debug, Default)]
pub struct Proof<'a> {
    /// Hex SHA-256 of the `resume_secret` it presented.
    pub secret_digest: Option<&'a str>,
    /// Its verified credential names this id.
    pub same_credential: bool,
}

/// What to do with a registration, given the claim as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody claims it: create the claim.
    Create,
    /// This coordinator claims it: its own id book decides.
    Ours,
    /// Take the claim over (update at the revision read).
    TakeOver,
    /// Someone else holds it.
    Refuse,
    /// Nothing proves the registration owns an id held elsewhere: read the holder's lease
    /// and decide again with it.
    ReadLease,
}

/// Decides a registration on coordinator `me` (see the module docs); `lease` is the
/// holder's, once [`Decision::ReadLease`] asked for it.
pub fn decide(
    claim: Option<&ClaimRecord>,
    me: &str,
    proof: Proof<'_>,
    lease: Option<HolderLease>,
    grace: Duration,
) -> Decision {
    let Some(claim) = claim else { return Decision::Create };
    if claim.holder == me {
        return Decision::Ours;
    }
    let proven = proof.same_credential
        || matches!((proof.secret_digest, claim.secret_digest.as_deref()), (Some(a), Some(b)) if a == b);
    if proven {
        return Decision::TakeOver;
    }
    match lease {
        None => Decision::ReadLease,
        Some(HolderLease::GoneFor(gone)) if gone >= grace => Decision::TakeOver,
        Some(_) => Decision::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn held_by(holder: &str, digest: Option<&str>) -> ClaimRecord {
        ClaimRecord { holder: holder.into(), secret_digest: digest.map(Into::into) }
    }

    /// The lease is not needed: nothing read.
    const NO_LEASE: Option<HolderLease> = None;

    #[test]
    fn a_free_id_is_created_and_our_own_is_left_to_the_id_book() {
        assert_eq!(decide(None, "a", Proof::default(), NO_LEASE, GRACE), Decision::Create);
        let ours = held_by("a", Some("d"));
        assert_eq!(decide(Some(&ours), "a", Proof::default(), NO_LEASE, GRACE), Decision::Ours);
    }

    #[test]
    fn a_live_holder_keeps_its_id_unless_the_registration_proves_it_is_the_same_client() {
        let claim = held_by("b", Some("d1"));
        let live = Some(HolderLease::Live);
        assert_eq!(decide(Some(&claim), "a", Proof::default(), NO_LEASE, GRACE), Decision::ReadLease);
        assert_eq!(decide(Some(&claim), "a", Proof::default(), live, GRACE), Decision::Refuse);
        let wrong = Proof { secret_digest: Some("d2"), same_credential: false };
        assert_eq!(decide(Some(&claim), "a", wrong, live, GRACE), Decision::Refuse);
        let right = Proof { secret_digest: Some("d1"), same_credential: false };
        assert_eq!(decide(Some(&claim), "a", right, NO_LEASE, GRACE), Decision::TakeOver);
        let credential = Proof { secret_digest: None, same_credential: true };
        assert_eq!(decide(Some(&claim), "a", credential, NO_LEASE, GRACE), Decision::TakeOver);
    }

    #[test]
    fn a_claim_not_yet_acknowledged_is_proven_by_no_secret() {
        let claim = held_by("b", None);
        let any = Proof { secret_digest: Some("d1"), same_credential: false };
        assert_eq!(decide(Some(&claim), "a", any, Some(HolderLease::Live), GRACE), Decision::Refuse);
    }

    #[test]
    fn a_gone_holders_ids_stay_reserved_for_the_grace_then_are_free() {
        let claim = held_by("b", Some("d1"));
        let soon = Some(HolderLease::GoneFor(GRACE - Duration::from_millis(1)));
        assert_eq!(decide(Some(&claim), "a", Proof::default(), soon, GRACE), Decision::Refuse);
        let later = Some(HolderLease::GoneFor(GRACE));
        assert_eq!(decide(Some(&claim), "a", Proof::default(), later, GRACE), Decision::TakeOver);
    }
}
