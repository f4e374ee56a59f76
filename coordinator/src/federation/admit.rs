//! Claiming ids for registrations ([`super::claims`] decides, this does the key-value
//! I/O): `admit` before the router sees a registration, `acknowledged` once it gave the
//! client a resume secret, `abandon` when it refused the registration after all.
//!
//! Every claim write is a compare-and-set, run in a task of its own so that a caller
//! giving up (its time is bounded by `kv_timeout`) never cancels a write half done: what
//! was written is recorded as held, and released if the router does not hold the id.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_nats::jetstream::kv;
use bytes::Bytes;
use p2c2r_protocol::ErrorCode;
use tracing::debug;

use super::claims::{self, ClaimRecord, Decision, HolderLease, Proof};
use super::{Federation, Held, QuarantineRecord, Refusal, keys, unix_ms};
use crate::ids::Kind;

/// Compare-and-set rounds before a claim that keeps changing is given up on.
const ROUNDS: usize = 8;

impl Federation {
    /// Claims `id` for a registration on this coordinator, or says why not (see
    /// [`claims`]); a peer quarantined anywhere in the fleet is refused. Bounded by
    /// `kv_timeout`: past it the registration is refused `unavailable`.
    pub async fn admit(self: &Arc<Self>, kind: Kind, id: &str, proof: Proof) -> Result<(), Refusal> {
        let unavailable = |e: String| Refusal {
            code: ErrorCode::Unavailable,
            reason: format!("the fleet could not confirm this registration: {e}; retry"),
        };
        let (federation, id) = (self.clone(), id.to_owned());
        let claiming = tokio::spawn(async move { federation.try_admit(kind, &id, &proof).await });
        match tokio::time::timeout(self.kv_timeout, claiming).await {
            Ok(Ok(Ok(outcome))) => outcome,
            Ok(Ok(Err(e))) => Err(unavailable(e)),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable("timed out".into())),
        }
    }

    async fn try_admit(&self, kind: Kind, id: &str, proof: &Proof) -> Result<Result<(), Refusal>, String> {
        if kind == Kind::Peer
            && let Some(record) = self.kv("quarantine", || self.quarantines.get(keys::peer(id))).await?
            && let Ok(record) = serde_json::from_slice::<QuarantineRecord>(&record)
        {
            let left = record.until_unix_ms.saturating_sub(unix_ms(SystemTime::now()));
            if left > 0 {
                return Ok(Err(Refusal {
                    code: ErrorCode::Quarantined,
                    reason: format!("peer {id:?} is quarantined by coordinator {} ({} s left)", record.by, left / 1000),
                }));
            }
        }
        let key = keys::claim(kind, id);
        let me = (self.id.as_str(), self.instance.as_str());
        for _ in 0..ROUNDS {
            let entry = self.kv("claim", || self.ids.entry(&key)).await?;
            let (claim, revision) = match &entry {
                // Only coordinators write here; a value this version cannot read is
                // nobody's claim it can honour, and is taken over.
                Some(e) if e.operation == kv::Operation::Put => {
                    (serde_json::from_slice::<ClaimRecord>(&e.value).ok(), e.revision)
                }
                Some(e) => (None, e.revision),
                None => (None, 0),
            };
            let mut decision = claims::decide(claim.as_ref(), me, proof, None, self.grace);
            if decision == Decision::ReadLease {
                let holder = claim.as_ref().expect("a lease is read for a claim");
                let lease = if holder.holder == self.id {
                    // An earlier run of this coordinator: gone since this one started.
                    HolderLease::GoneFor(self.started.elapsed())
                } else {
                    self.lease_of(&holder.holder).await?
                };
                decision = claims::decide(claim.as_ref(), me, proof, Some(lease), self.grace);
            }
            if decision == Decision::Refuse {
                self.metrics.claims_refused.inc();
                let holder = claim.map(|c| c.holder).unwrap_or_default();
                let field = if kind == Kind::Peer { "peer_id" } else { "gamer_id" };
                return Ok(Err(Refusal {
                    code: ErrorCode::IdInUse,
                    reason: format!(
                        "{field} {id:?} is in use on coordinator {holder}: taking it over needs the resume_secret of its \
                         last registration"
                    ),
                }));
            }
            // Created, taken over, or ours written again: the digest stays until the
            // router gives the client a new secret (`acknowledged`).
            let record = ClaimRecord {
                holder: self.id.clone(),
                instance: self.instance.clone(),
                secret_digest: claim.as_ref().and_then(|c| c.secret_digest.clone()),
            };
            if let Some(revision) = self.compare_and_set(&key, &record, revision).await? {
                if decision == Decision::TakeOver {
                    self.metrics.claims_taken_over.inc();
                }
                self.held_mut().insert((kind, id.to_owned()), Held { revision, at: Instant::now() });
                return Ok(Ok(()));
            }
        }
        Err("the id's claim kept changing".into())
    }

    /// Writes `record` at `key` if its last revision is still `revision` (0: if it has
    /// none); `None` when another write came first.
    async fn compare_and_set(&self, key: &str, record: &ClaimRecord, revision: u64) -> Result<Option<u64>, String> {
        let value = Bytes::from(serde_json::to_vec(record).expect("a claim serializes"));
        let lost = |e: &kv::UpdateError| e.kind() == kv::UpdateErrorKind::WrongLastRevision;
        match self.kv_raw("claim", || self.ids.update(key, value.clone(), revision), lost).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if lost(&e) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The registration of `id` was acknowledged with a resume secret whose digest is
    /// `secret_digest`: the claim records it, so that the client can resume on any
    /// coordinator. A claim taken over meanwhile is left to its new holder.
    pub async fn acknowledged(self: &Arc<Self>, kind: Kind, id: &str, secret_digest: [u8; 32]) {
        let (federation, id) = (self.clone(), id.to_owned());
        let recording = tokio::spawn(async move { federation.record_secret(kind, &id, secret_digest).await });
        match tokio::time::timeout(self.kv_timeout, recording).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                crate::warn_limited!("federation: secret not recorded", error = %e, "a claim's resume secret was not recorded")
            }
            Ok(Err(e)) => {
                crate::warn_limited!("federation: secret not recorded", error = %e, "a claim's resume secret was not recorded")
            }
            Err(_) => crate::warn_limited!(
                "federation: secret not recorded",
                "a claim's resume secret was not recorded in time"
            ),
        }
    }

    async fn record_secret(&self, kind: Kind, id: &str, secret_digest: [u8; 32]) -> Result<(), String> {
        let key = keys::claim(kind, id);
        let record = ClaimRecord {
            holder: self.id.clone(),
            instance: self.instance.clone(),
            secret_digest: Some(super::hex(&secret_digest)),
        };
        let Some(Held { mut revision, .. }) = self.held_mut().get(&(kind, id.to_owned())).copied() else {
            return Ok(());
        };
        for _ in 0..ROUNDS {
            if let Some(written) = self.compare_and_set(&key, &record, revision).await? {
                self.held_mut().insert((kind, id.to_owned()), Held { revision: written, at: Instant::now() });
                return Ok(());
            }
            // Someone wrote since: an earlier try of ours whose answer was lost (ours
            // still: write on from there), or another coordinator (its claim now).
            let entry = self.kv("claim", || self.ids.entry(&key)).await?;
            let ours = entry.as_ref().filter(|e| e.operation == kv::Operation::Put).and_then(|e| {
                let claim = serde_json::from_slice::<ClaimRecord>(&e.value).ok()?;
                (claim.holder == self.id && claim.instance == self.instance).then_some(e.revision)
            });
            match ours {
                Some(current) => revision = current,
                None => return Ok(()),
            }
        }
        Err("the id's claim kept changing".into())
    }

    /// The router refused a registration `admit` claimed for: the claim goes now (if
    /// nothing of this coordinator holds the id), not at the next round of releases.
    pub async fn abandon(self: &Arc<Self>, kind: Kind, id: &str, still_held: bool) {
        if still_held {
            return;
        }
        let Some(Held { revision, .. }) = self.held_mut().get(&(kind, id.to_owned())).copied() else { return };
        let (federation, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move { federation.release(kind, &id, revision).await });
    }

    /// Releases a claim this coordinator wrote at `revision` (a release that lost to a
    /// later write leaves that write alone). Returns whether the claim is settled (released,
    /// or no longer ours); `false` to try again later.
    pub(super) async fn release(&self, kind: Kind, id: &str, revision: u64) -> bool {
        let key = keys::claim(kind, id);
        let lost = |e: &kv::PurgeError| e.kind() == kv::UpdateErrorKind::WrongLastRevision;
        // Purged with a marker that expires (`CLAIM_MARKER_TTL`): a released id leaves
        // nothing behind for good.
        let purge = || self.ids.purge_expect_revision_with_ttl(&key, revision, super::CLAIM_MARKER_TTL);
        let settled = match self.kv_raw("claim", purge, lost).await {
            Ok(()) => {
                debug!(id, "federation: claim released");
                true
            }
            Err(e) if lost(&e) => true,
            Err(e) => {
                crate::warn_limited!("federation: claim not released", error = %e, "a claim was not released; trying again later");
                false
            }
        };
        if settled {
            let mut held = self.held_mut();
            if held.get(&(kind, id.to_owned())).is_some_and(|h| h.revision == revision) {
                held.remove(&(kind, id.to_owned()));
            }
        }
        settled
    }
}
