//! Who holds an id across the fleet: a claim in the ids bucket names the coordinator whose
//! connection holds the id, and the digest of the resume secret that connection was given.
//! Claims change only by compare-and-set (create, or update at the revision read), so two
//! coordinators racing for one id cannot both win. Pure: the I/O is in `super`.
//!
//! A registration on coordinator `me` may take an id when:
//! - nobody claims it (it creates the claim);
//! - this run of `me` claims it (the local id book decides, as a lone coordinator does;
//!   the claim is written again, so that a release racing the registration cannot win);
//! - it proves it is the same client: the resume secret whose digest the claim holds, or a
//!   credential for that id;
//! - the claiming coordinator is gone (its lease lapsed, or it is an earlier run of `me`)
//!   for longer than the resume grace, as a closed connection's id stops being reserved
//!   after the grace.
//!
//! Otherwise it is refused, and the holder keeps being served.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A claim's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The coordinator whose connection holds (or last held) the id.
    pub holder: String,
    /// Which run of it (a restart under the same name is another run).
    #[serde(default)]
    pub instance: String,
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
#[derive(Clone, Debug, Default)]
pub struct Proof {
    /// Hex SHA-256 of the `resume_secret` it presented.
    pub secret_digest: Option<String>,
    /// Its verified credential names this id.
    pub same_credential: bool,
}

/// What to do with a registration, given the claim as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody claims it: create the claim.
    Create,
    /// This run of this coordinator claims it: its own id book decides.
    Ours,
    /// Take the claim over (update at the revision read).
    TakeOver,
    /// Someone else holds it.
    Refuse,
    /// Nothing proves the registration owns an id held elsewhere (or by an earlier run of
    /// this coordinator): find how long its holder has been gone and decide again with it.
    ReadLease,
}

/// Decides a registration on run `instance` of coordinator `me` (see the module docs);
/// `lease` is the holder's, once [`Decision::ReadLease`] asked for it.
pub fn decide(
    claim: Option<&ClaimRecord>,
    (me, instance): (&str, &str),
    proof: &Proof,
    lease: Option<HolderLease>,
    grace: Duration,
) -> Decision {
    let Some(claim) = claim else { return Decision::Create };
    if claim.holder == me && claim.instance == instance {
        return Decision::Ours;
    }
    let proven = proof.same_credential
        || matches!((proof.secret_digest.as_deref(), claim.secret_digest.as_deref()), (Some(a), Some(b)) if a == b);
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

    const ME: (&str, &str) = ("a", "run-2");

    fn held_by(holder: &str, digest: Option<&str>) -> ClaimRecord {
        ClaimRecord { holder: holder.into(), instance: "run-2".into(), secret_digest: digest.map(Into::into) }
    }

    fn secret(digest: &str) -> Proof {
        Proof { secret_digest: Some(digest.into()), same_credential: false }
    }

    /// The lease is not needed: nothing read.
    const NO_LEASE: Option<HolderLease> = None;

    #[test]
    fn a_free_id_is_created_and_our_own_is_left_to_the_id_book() {
        assert_eq!(decide(None, ME, &Proof::default(), NO_LEASE, GRACE), Decision::Create);
        let ours = held_by("a", Some("d"));
        assert_eq!(decide(Some(&ours), ME, &Proof::default(), NO_LEASE, GRACE), Decision::Ours);
        // An earlier run of this coordinator is gone: its ids are reserved as anyone's.
        let before = ClaimRecord { instance: "run-1".into(), ..ours };
        assert_eq!(decide(Some(&before), ME, &Proof::default(), NO_LEASE, GRACE), Decision::ReadLease);
        assert_eq!(decide(Some(&before), ME, &secret("d"), NO_LEASE, GRACE), Decision::TakeOver);
    }

    #[test]
    fn a_live_holder_keeps_its_id_unless_the_registration_proves_it_is_the_same_client() {
        let claim = held_by("b", Some("d1"));
        let live = Some(HolderLease::Live);
        assert_eq!(decide(Some(&claim), ME, &Proof::default(), NO_LEASE, GRACE), Decision::ReadLease);
        assert_eq!(decide(Some(&claim), ME, &Proof::default(), live, GRACE), Decision::Refuse);
        assert_eq!(decide(Some(&claim), ME, &secret("d2"), live, GRACE), Decision::Refuse);
        assert_eq!(decide(Some(&claim), ME, &secret("d1"), NO_LEASE, GRACE), Decision::TakeOver);
        let credential = Proof { secret_digest: None, same_credential: true };
        assert_eq!(decide(Some(&claim), ME, &credential, NO_LEASE, GRACE), Decision::TakeOver);
    }

    #[test]
    fn a_claim_not_yet_acknowledged_is_proven_by_no_secret() {
        let claim = held_by("b", None);
        assert_eq!(decide(Some(&claim), ME, &secret("d1"), Some(HolderLease::Live), GRACE), Decision::Refuse);
    }

    #[test]
    fn a_gone_holders_ids_stay_reserved_for_the_grace_then_are_free() {
        let claim = held_by("b", Some("d1"));
        let soon = Some(HolderLease::GoneFor(GRACE - Duration::from_millis(1)));
        assert_eq!(decide(Some(&claim), ME, &Proof::default(), soon, GRACE), Decision::Refuse);
        let later = Some(HolderLease::GoneFor(GRACE));
        assert_eq!(decide(Some(&claim), ME, &Proof::default(), later, GRACE), Decision::TakeOver);
    }
}
