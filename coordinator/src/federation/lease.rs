//! A coordinator's lease in the fleet: taken at start by compare-and-set (a name a live
//! coordinator holds is refused), renewed every third of its time to live by
//! compare-and-set on the revision this run wrote (a run that finds its lease written by
//! another has lost its name and says so), given up at shutdown. Others read a holder's
//! lease to tell a live coordinator from one gone (and since when).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::claims::HolderLease;
use super::{Federation, LEASE_KEPT, age, io_error};

/// A coordinator's lease, and its summary for the fleet page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its name in the fleet.
    pub coordinator: String,
    /// Where gamers and peers reach it.
    pub url: String,
    /// This run of it (a restart with the same name is another instance).
    pub instance: String,
    /// Peers connected.
    pub peers: u64,
    /// Gamers connected.
    pub gamers: u64,
    /// Tasks queued or running now.
    pub tasks_now: u64,
    /// Tasks completed since it started.
    pub tasks_completed: u64,
    /// Slots free on its peers: room it can lend the fleet.
    #[serde(default)]
    pub free_slots: u64,
    /// Its version.
    pub version: String,
}

impl Federation {
    /// This run's lease with nothing counted yet.
    pub(super) fn lease_template(&self) -> Lease {
        Lease {
            coordinator: self.id.clone(),
            url: self.url.clone(),
            instance: self.instance.clone(),
            peers: 0,
            gamers: 0,
            tasks_now: 0,
            tasks_completed: 0,
            free_slots: 0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Takes the lease of this coordinator's name: at once when nobody holds it (or its
    /// holder's lease lapsed), after waiting up to twice its time to live for a live
    /// holder's lease to lapse, and never from another live run.
    pub(super) async fn take_lease(&self) -> std::io::Result<()> {
        let value = Bytes::from(serde_json::to_vec(&self.lease_template()).expect("a lease serializes"));
        let started = tokio::time::Instant::now();
        loop {
            let current = self.kv("lease", || self.leases.entry(&self.id)).await.map_err(|e| io_error("lease", e))?;
            let (live, revision) = match &current {
                Some(e) if e.operation == kv::Operation::Put => (age(e) < self.lease_ttl, e.revision),
                Some(e) => (false, e.revision),
                None => (false, 0),
            };
            if !live {
                let lost = |e: &kv::UpdateError| e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                match self.kv_raw("lease", || self.leases.update(&self.id, value.clone(), revision), lost).await {
                    Ok(written) => {
                        self.lease_revision.store(written, Ordering::Relaxed);
                        return Ok(());
                    }
                    // Another run took it first: look again.
                    Err(e) if lost(&e) => {}
                    Err(e) => return Err(io_error("lease", e)),
                }
            }
            if started.elapsed() > self.lease_ttl * 2 {
                return Err(io_error(
                    "--coordinator-id",
                    format!("{:?} is the name of a live coordinator of the fleet; give each its own", self.id),
                ));
            }
            tokio::time::sleep(self.lease_ttl / 4).await;
        }
    }

    /// Renews the lease with `lease`'s summary, on the revision this run wrote last.
    pub(super) async fn renew_lease(&self, lease: Lease) -> Result<(), String> {
        let value = Bytes::from(serde_json::to_vec(&lease).expect("a lease serializes"));
        let mut revision = self.lease_revision.load(Ordering::Relaxed);
        let lost = |e: &kv::UpdateError| e.kind() == kv::UpdateErrorKind::WrongLastRevision;
        let mut result = self.kv_raw("lease", || self.leases.update(&self.id, value.clone(), revision), lost).await;
        if matches!(&result, Err(e) if lost(e)) {
            // An earlier renewal may have been written after its answer was given up on:
            // a lease this run wrote is still its own.
            let current = self.kv("lease", || self.leases.entry(&self.id)).await?;
            let ours = current.filter(|e| e.operation == kv::Operation::Put).and_then(|e| {
                let lease = serde_json::from_slice::<Lease>(&e.value).ok()?;
                (lease.instance == self.instance).then_some(e.revision)
            });
            if let Some(current) = ours {
                revision = current;
                result = self.kv_raw("lease", || self.leases.update(&self.id, value.clone(), revision), lost).await;
            }
        }
        match result {
            Ok(written) => {
                self.lease_revision.store(written, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if lost(&e) => {
                // Written by another run under this name (this one hung past its lease,
                // and was counted gone): its name is no longer its own.
                self.metrics.lease_lost.inc();
                crate::warn_limited!(
                    "federation: lease lost",
                    coordinator = self.id,
                    "another coordinator took this coordinator's name while its lease had lapsed; give each its own name"
                );
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Gives the lease up at shutdown: the ids this coordinator held stay reserved for the
    /// resume grace from now, and are free after it.
    pub async fn leave(&self) {
        let revision = self.lease_revision.load(Ordering::Relaxed);
        if let Err(e) = self.kv("lease", || self.leases.delete_expect_revision(&self.id, Some(revision))).await {
            warn!(error = %e, "the lease was not given up; it lapses by itself");
        }
        // What is buffered for the servers goes before the connection does.
        let _ = tokio::time::timeout(self.kv_timeout, self.client.flush()).await;
    }

    /// The holder's lease: live, or gone for how long.
    pub(super) async fn lease_of(&self, holder: &str) -> Result<HolderLease, String> {
        let entry = self.kv("lease", || self.leases.entry(holder)).await?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let age = age(&e);
                if age < self.lease_ttl { HolderLease::Live } else { HolderLease::GoneFor(age - self.lease_ttl) }
            }
            Some(e) => HolderLease::GoneFor(age(&e)),
            None => HolderLease::GoneFor(LEASE_KEPT),
        })
    }
}

/// How often a lease is renewed.
pub(super) fn renewal_period(ttl: Duration) -> Duration {
    ttl / 3
}
