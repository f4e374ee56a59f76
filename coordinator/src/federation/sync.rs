//! The federation's background work, one task each, all ending with the coordinator:
//! - housekeeping, every third of the lease's time to live: the lease renewed (with this
//!   coordinator's summary), quarantines and revocations made here published, and the
//!   claims of ids no longer held here released;
//! - four watchers, one per shared bucket: ids registered again elsewhere are closed here,
//!   quarantines and revocations decided elsewhere are applied here, and the fleet's leases
//!   kept for the fleet page.
//!
//! A watcher whose stream ends (NATS unreachable) starts again after a pause.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{Federation, Held, Lease, QuarantineRecord, age, keys, unix_ms};
use crate::Router;
use crate::auth::Auth;
use crate::federation::claims::ClaimRecord;

/// A pause before a watcher starts again.
const REWATCH: Duration = Duration::from_secs(1);

/// Starts the background work on `tracker`.
pub(crate) fn spawn(
    federation: Arc<Federation>,
    router: Arc<Router>,
    auth: Arc<Auth>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    tracker.spawn(housekeeping(federation.clone(), router.clone(), auth.clone(), cancel.clone()));
    let (f, r) = (federation.clone(), router.clone());
    tracker.spawn(watch(federation.ids.clone(), cancel.clone(), move |entry| moved_away(&f, &r, entry)));
    let (f, r) = (federation.clone(), router.clone());
    tracker.spawn(watch(federation.quarantines.clone(), cancel.clone(), move |entry| quarantined(&f, &r, entry)));
    let mut revoked = HashSet::new();
    let r = router;
    tracker.spawn(watch(federation.revocations.clone(), cancel.clone(), move |entry| {
        revocation(&mut revoked, &auth, &r, entry)
    }));
    let f = federation.clone();
    let mut leases = HashMap::new();
    tracker.spawn(watch(federation.leases.clone(), cancel, move |entry| lease(&f, &mut leases, entry)));
}

/// Follows every change of `bucket` (its current values first) until `cancel`.
async fn watch(bucket: kv::Store, cancel: CancellationToken, mut apply: impl FnMut(kv::Entry) + Send) {
    loop {
        let watching = async {
            match bucket.watch_all().await {
                Ok(mut changes) => {
                    while let Some(change) = changes.next().await {
                        match change {
                            Ok(entry) => apply(entry),
                            Err(e) => return warn!(error = %e, "federation: watch interrupted"),
                        }
                    }
                }
                Err(e) => warn!(error = %e, "federation: cannot watch a bucket"),
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

async fn housekeeping(federation: Arc<Federation>, router: Arc<Router>, auth: Arc<Auth>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(federation.lease_ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            ..federation.lease_template()
        };
        if let Err(e) = federation.renew_lease(lease).await {
            warn!(error = %e, "federation: lease not renewed");
        }
        publish_quarantines(&federation, &router).await;
        publish_revocations(&federation, &auth).await;
        release_claims(&federation, &router).await;
    }
    federation.leave().await;
}

async fn publish_quarantines(federation: &Federation, router: &Router) {
    let now_ms = unix_ms(SystemTime::now());
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
            Err(e) => warn!(peer, error = %e, "federation: quarantine not published"),
        }
    }
}

async fn publish_revocations(federation: &Federation, auth: &Auth) {
    let revoked = auth.file().revoked().clone();
    let published = federation.revocations_published.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (role, id) in revoked.difference(&published) {
        let key = keys::revocation(*role, id);
        let value = Bytes::from(federation.id.clone());
        match federation.kv("revocation", || federation.revocations.put(&key, value.clone())).await {
            Ok(_) => {
                federation.revocations_published.lock().unwrap_or_else(|p| p.into_inner()).insert((*role, id.clone()));
            }
            Err(e) => warn!(id, error = %e, "federation: revocation not published"),
        }
    }
    // Taken out of this coordinator's file: no longer revoked by it.
    for (role, id) in published.difference(&revoked) {
        let key = keys::revocation(*role, id);
        match federation.kv("revocation", || federation.revocations.delete(&key)).await {
            Ok(()) => {
                federation.revocations_published.lock().unwrap_or_else(|p| p.into_inner()).remove(&(*role, id.clone()));
            }
            Err(e) => warn!(id, error = %e, "federation: revocation not withdrawn"),
        }
    }
}

/// How long a claim just written is kept whatever the router says: its registration goes
/// to the router right after the claim is written, on the same task.
const CLAIM_SETTLE: Duration = Duration::from_secs(2);

/// Releases the claims of ids this coordinator no longer holds (they left, or their
/// reservation passed); one written less than [`CLAIM_SETTLE`] ago is kept.
async fn release_claims(federation: &Federation, router: &Router) {
    let settle = CLAIM_SETTLE;
    let held: Vec<_> = federation.held_mut().iter().map(|(k, h)| (k.clone(), *h)).collect();
    for ((kind, id), Held { revision, at }) in held {
        if at.elapsed() < settle || router.holds(kind, &id) {
            continue;
        }
        let key = keys::claim(kind, &id);
        let result = federation
            .kv_raw(
                "claim",
                || federation.ids.delete_expect_revision(&key, Some(revision)),
                |e: &kv::DeleteError| e.kind() == kv::DeleteErrorKind::WrongLastRevision,
            )
            .await;
        match result {
            // Gone, or written by another coordinator since: not ours either way.
            Ok(()) => debug!(id, "federation: claim released"),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {}
            Err(e) => {
                warn!(id, error = %e, "federation: claim not released; trying again later");
                continue;
            }
        }
        let mut held = federation.held_mut();
        if held.get(&(kind, id.clone())).is_some_and(|h| h.revision == revision) {
            held.remove(&(kind, id));
        }
    }
}

/// An id's claim changed: if another coordinator took one held here, its connection here
/// goes.
fn moved_away(federation: &Federation, router: &Router, entry: kv::Entry) {
    if entry.operation != kv::Operation::Put {
        return;
    }
    let Some((kind, id)) = keys::parse_claim(&entry.key) else { return };
    let Ok(claim) = serde_json::from_slice::<ClaimRecord>(&entry.value) else { return };
    if claim.holder == federation.id {
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

/// A revocation changed: the fleet's set is applied to the credentials in force, and
/// connections they no longer accept are closed.
fn revocation(revoked: &mut HashSet<(crate::auth::Role, String)>, auth: &Auth, router: &Router, entry: kv::Entry) {
    let Some(identity) = keys::parse_revocation(&entry.key) else { return };
    let changed = match entry.operation {
        kv::Operation::Put => revoked.insert(identity),
        kv::Operation::Delete | kv::Operation::Purge => revoked.remove(&identity),
    };
    if changed && auth.enabled() {
        auth.set_fleet_revoked(revoked.clone());
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
    let live: Vec<Lease> = leases
        .values()
        .filter(|(_, written)| written.elapsed() < federation.lease_ttl)
        .map(|(l, _)| l.clone())
        .collect();
    federation.metrics.coordinators.set(live.len() as i64);
    let mut page = live;
    page.sort_by(|a, b| a.coordinator.cmp(&b.coordinator));
    *federation.fleet.lock().unwrap_or_else(|p| p.into_inner()) = page;
}
