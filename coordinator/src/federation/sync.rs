//! The federation's background work, one task each, all ending with the coordinator:
//! - the lease, renewed every third of its time to live (nothing else in its task, so no
//!   other work can make it lapse), with this coordinator's summary;
//! - housekeeping, as often: quarantines and revocations made here published, and the
//!   claims of ids no longer held here released (a bounded number per round);
//! - four watchers, one per shared bucket, each starting from the bucket's current values
//!   and, when its stream ends, going on from the last revision it saw: ids registered
//!   again elsewhere are closed here, quarantines and revocations decided elsewhere are
//!   applied here, and the fleet's leases kept for the fleet page.
//!
//! The data plane runs beside them: `lend.rs` (other coordinators' sessions on this
//! one's peers) and `borrow.rs` (this one's sessions on theirs).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lease::{Lease, renewal_period};
use super::{Federation, Held, LEASE_KEPT, QuarantineRecord, age, keys, unix_ms};
use crate::Router;
use crate::auth::{Auth, Role};
use crate::federation::claims::ClaimRecord;

/// A pause before a watcher starts again.
const REWATCH: Duration = Duration::from_secs(1);
/// Claims released per housekeeping round at most (the rest wait for the next).
const RELEASES_PER_ROUND: usize = 64;
/// How long a claim just written is kept whatever the router says: its registration goes
/// to the router right after the claim is written, on the same task.
const CLAIM_SETTLE: Duration = Duration::from_secs(2);

/// Starts the background work on `tracker`.
pub(crate) fn spawn(
    federation: Arc<Federation>,
    router: Arc<Router>,
    auth: Arc<Auth>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    tracker.spawn(renew(federation.clone(), router.clone(), cancel.clone()));
    tracker.spawn(housekeeping(federation.clone(), router.clone(), auth.clone(), cancel.clone()));
    tracker.spawn(super::lend::run(federation.clone(), router.clone(), cancel.clone()));
    tracker.spawn(super::borrow::run(federation.clone(), router.clone(), cancel.clone()));
    let (f, r) = (federation.clone(), router.clone());
    tracker.spawn(watch(federation.ids.clone(), cancel.clone(), move |entry| moved_away(&f, &r, entry)));
    let (f, r) = (federation.clone(), router.clone());
    tracker.spawn(watch(federation.quarantines.clone(), cancel.clone(), move |entry| quarantined(&f, &r, entry)));
    let mut revoked = HashMap::new();
    let r = router;
    tracker.spawn(watch(federation.revocations.clone(), cancel.clone(), move |entry| {
        revocation(&mut revoked, &auth, &r, entry)
    }));
    let f = federation.clone();
    let mut leases = HashMap::new();
    tracker.spawn(watch(federation.leases.clone(), cancel, move |entry| lease(&f, &mut leases, entry)));
}

/// Follows every change of `bucket` until `cancel`: its current values first, then each
/// change; after an interruption it goes on from the last revision seen, so nothing is
/// missed.
async fn watch(bucket: kv::Store, cancel: CancellationToken, mut apply: impl FnMut(kv::Entry) + Send) {
    let mut last = 0u64;
    loop {
        let watching = async {
            let changes = if last == 0 {
                bucket.watch_with_history(">").await
            } else {
                bucket.watch_all_from_revision(last + 1).await
            };
            match changes {
                Ok(mut changes) => {
                    while let Some(change) = changes.next().await {
                        match change {
                            Ok(entry) => {
                                last = last.max(entry.revision);
                                apply(entry);
                            }
                            // Missed heartbeats and the like: the ordered consumer mends itself.
                            Err(e) => {
                                crate::warn_limited!("federation: watch", error = %e, "a bucket watch was interrupted")
                            }
                        }
                    }
                }
                Err(e) => crate::warn_limited!("federation: watch", error = %e, "cannot watch a bucket"),
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = watching => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = tokio::time::sleep(REWATCH) => {}
        }
    }
}

/// Ticks every renewal period, a late tick delaying the next rather than bunching them.
fn every_renewal(federation: &Federation) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(renewal_period(federation.lease_ttl));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// Renews the lease until `cancel`, then gives it up.
async fn renew(federation: Arc<Federation>, router: Arc<Router>, cancel: CancellationToken) {
    let mut ticks = every_renewal(&federation);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let stats = router.stats();
        let lease = Lease {
            peers: stats.peers,
            gamers: stats.gamers,
            tasks_now: stats.queued_now + stats.in_flight_now,
            tasks_completed: stats.tasks_completed,
            free_slots: router.free_local_slots(),
            ..federation.lease_template()
        };
        // Never longer than a renewal period: the next renewal must not wait behind it.
        match tokio::time::timeout(renewal_period(federation.lease_ttl), federation.renew_lease(lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => crate::warn_limited!("federation: lease", error = %e, "lease not renewed"),
            Err(_) => crate::warn_limited!("federation: lease", "lease not renewed in time"),
        }
    }
    federation.leave().await;
}

async fn housekeeping(federation: Arc<Federation>, router: Arc<Router>, auth: Arc<Auth>, cancel: CancellationToken) {
    let mut ticks = every_renewal(&federation);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        publish_quarantines(&federation, &router).await;
        publish_revocations(&federation, &auth).await;
        release_claims(&federation, &router).await;
    }
}

async fn publish_quarantines(federation: &Federation, router: &Router) {
    let now_ms = unix_ms(SystemTime::now());
    // Ended quarantines are forgotten here as the bucket forgets them.
    federation.quarantines_known.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, until| *until > now_ms);
    for (peer, left) in router.quarantines() {
        let until_unix_ms = now_ms + left.as_millis() as u64;
        let known = federation.quarantines_known.lock().unwrap_or_else(|p| p.into_inner()).get(&peer).copied();
        // Published already (or learnt from the fleet): the end it has is near enough.
        if known.is_some_and(|until| until + 2_000 >= until_unix_ms) {
            continue;
        }
        let record = QuarantineRecord { until_unix_ms, by: federation.id.clone() };
        let value = Bytes::from(serde_json::to_vec(&record).expect("a quarantine serializes"));
        match federation.kv("quarantine", || federation.quarantines.put(keys::peer(&peer), value.clone())).await {
            Ok(_) => {
                federation.quarantines_known.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, until_unix_ms);
            }
            Err(e) => crate::warn_limited!("federation: quarantine", peer, error = %e, "quarantine not published"),
        }
    }
}

/// Publishes this coordinator's revocations under keys of its own (so one coordinator
/// withdrawing a revocation leaves the others' standing).
async fn publish_revocations(federation: &Federation, auth: &Auth) {
    let revoked = auth.file().revoked().clone();
    let published = federation.revocations_published.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (role, id) in revoked.difference(&published) {
        let key = keys::revocation(*role, id, &federation.id);
        let value = Bytes::from(federation.id.clone());
        match federation.kv("revocation", || federation.revocations.put(&key, value.clone())).await {
            Ok(_) => {
                federation.revocations_published.lock().unwrap_or_else(|p| p.into_inner()).insert((*role, id.clone()));
            }
            Err(e) => crate::warn_limited!("federation: revocation", error = %e, "revocation not published"),
        }
    }
    // Taken out of this coordinator's file: no longer revoked by it.
    for (role, id) in published.difference(&revoked) {
        let key = keys::revocation(*role, id, &federation.id);
        match federation.kv("revocation", || federation.revocations.delete(&key)).await {
            Ok(()) => {
                federation.revocations_published.lock().unwrap_or_else(|p| p.into_inner()).remove(&(*role, id.clone()));
            }
            Err(e) => crate::warn_limited!("federation: revocation", error = %e, "revocation not withdrawn"),
        }
    }
}

/// Releases the claims of ids this coordinator no longer holds (they left, or their
/// reservation passed), at most [`RELEASES_PER_ROUND`] per round; one written less than
/// [`CLAIM_SETTLE`] ago is kept.
async fn release_claims(federation: &Federation, router: &Router) {
    let held: Vec<_> = federation
        .held_mut()
        .iter()
        .filter(|(_, h)| h.at.elapsed() >= CLAIM_SETTLE)
        .map(|(k, h)| (k.clone(), *h))
        .collect();
    let mut released = 0;
    for ((kind, id), Held { revision, .. }) in held {
        if released >= RELEASES_PER_ROUND {
            break;
        }
        if router.holds(kind, &id) {
            continue;
        }
        released += 1;
        federation.release(kind, &id, revision).await;
    }
}

/// An id's claim changed: if another coordinator (or another run of this one's name)
/// took one held here, its connection here goes.
fn moved_away(federation: &Federation, router: &Router, entry: kv::Entry) {
    if entry.operation != kv::Operation::Put {
        return;
    }
    let Some((kind, id)) = keys::parse_claim(&entry.key) else { return };
    let Ok(claim) = serde_json::from_slice::<ClaimRecord>(&entry.value) else { return };
    if claim.holder == federation.id && claim.instance == federation.instance {
        return;
    }
    let ours = {
        let mut held = federation.held_mut();
        match held.get(&(kind, id.clone())) {
            Some(h) if h.revision < entry.revision => held.remove(&(kind, id.clone())).is_some(),
            _ => false,
        }
    };
    if ours {
        federation.metrics.ids_moved_away.inc();
        router.moved_away(kind, &id, &claim.holder);
    }
}

/// A quarantine changed: one decided elsewhere and still on is applied here.
fn quarantined(federation: &Federation, router: &Router, entry: kv::Entry) {
    if entry.operation != kv::Operation::Put {
        return;
    }
    let Some(peer) = keys::parse_peer(&entry.key) else { return };
    let Ok(record) = serde_json::from_slice::<QuarantineRecord>(&entry.value) else { return };
    let left = record.until_unix_ms.saturating_sub(unix_ms(SystemTime::now()));
    if record.by == federation.id || left == 0 {
        return;
    }
    {
        let mut known = federation.quarantines_known.lock().unwrap_or_else(|p| p.into_inner());
        if known.get(&peer).is_some_and(|until| *until >= record.until_unix_ms) {
            return;
        }
        known.insert(peer.clone(), record.until_unix_ms);
    }
    federation.metrics.quarantines_from_fleet.inc();
    router.quarantined_elsewhere(&peer, Duration::from_millis(left), &record.by);
}

/// A revocation changed: an identity is revoked while any coordinator's key revokes it;
/// the fleet's set is applied to the credentials in force, and connections they no longer
/// accept are closed.
fn revocation(revoked: &mut HashMap<(Role, String), HashSet<String>>, auth: &Auth, router: &Router, entry: kv::Entry) {
    let Some((role, id, by)) = keys::parse_revocation(&entry.key) else { return };
    let before = revoked.len();
    match entry.operation {
        kv::Operation::Put => {
            revoked.entry((role, id)).or_default().insert(by);
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            if let Some(publishers) = revoked.get_mut(&(role, id.clone())) {
                publishers.remove(&by);
                if publishers.is_empty() {
                    revoked.remove(&(role, id));
                }
            }
        }
    }
    if revoked.len() != before && auth.enabled() {
        auth.set_fleet_revoked(revoked.keys().cloned().collect());
        router.revalidate(&auth.current());
    }
}

/// A lease changed: the fleet page and the count of live coordinators follow.
fn lease(federation: &Federation, leases: &mut HashMap<String, (Lease, Instant)>, entry: kv::Entry) {
    match entry.operation {
        kv::Operation::Put => {
            if let Ok(lease) = serde_json::from_slice::<Lease>(&entry.value) {
                // When it was written, on this clock.
                let written = Instant::now().checked_sub(age(&entry)).unwrap_or_else(Instant::now);
                leases.insert(entry.key.clone(), (lease, written));
            }
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            leases.remove(&entry.key);
        }
    }
    // Leases the bucket no longer keeps are forgotten here too.
    leases.retain(|_, (_, written)| written.elapsed() < LEASE_KEPT);
    let mut live: Vec<Lease> = leases
        .values()
        .filter(|(_, written)| written.elapsed() < federation.lease_ttl)
        .map(|(l, _)| l.clone())
        .collect();
    federation.metrics.coordinators.set(live.len() as i64);
    live.sort_by(|a, b| a.coordinator.cmp(&b.coordinator));
    *federation.fleet.lock().unwrap_or_else(|p| p.into_inner()) = live;
}
