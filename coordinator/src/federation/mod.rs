//! Many coordinators, one fleet: coordinators started with `--nats-url` share a control
//! plane in NATS JetStream key-value buckets. Gamers and peers still speak PROTOCOL.md over
//! WebSocket to one coordinator; only coordinators reach NATS.
//!
//! What the fleet shares, each in a bucket of its own:
//! - `p2c2r_ids`: who holds each gamer and peer id ([`claims`]), so an id is held by one
//!   live connection across the fleet, and a client resumes on any coordinator with its
//!   resume secret;
//! - `p2c2r_coordinators`: each coordinator's lease (renewed every third of
//!   `--lease-ttl-ms`), which is also its summary on the fleet page;
//! - `p2c2r_quarantines`: a peer quarantined through one coordinator is refused by all;
//! - `p2c2r_revocations`: an identity an auth file revokes is refused by all;
//! - `p2c2r_fleet`: the key gamers' aliases are computed with, so peers see one alias per
//!   gamer whichever coordinator it is on.
//!
//! Nothing here is on a tick's path: a registration makes at most a few key-value
//! operations (bounded by `--kv-timeout-ms`), a tick none. Background work (`sync.rs`):
//! lease renewal, watching the buckets, publishing quarantines and revocations, releasing
//! the claims of ids this coordinator no longer holds.
//!
//! Without `--nats-url` none of this exists and the coordinator runs alone.

pub mod claims;
pub mod keys;
mod metrics;
mod sync;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use p2c2r_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::claims::{ClaimRecord, Decision, HolderLease, Proof};
pub use self::metrics::FederationMetrics;
pub(crate) use self::sync::spawn;
use crate::auth::Role;
use crate::config::Federation as Settings;
use crate::ids::Kind;

/// The ids bucket ([`claims`]).
pub const IDS_BUCKET: &str = "p2c2r_ids";
/// The coordinators' leases.
pub const LEASES_BUCKET: &str = "p2c2r_coordinators";
/// Quarantined peers.
pub const QUARANTINES_BUCKET: &str = "p2c2r_quarantines";
/// Revoked identities.
pub const REVOCATIONS_BUCKET: &str = "p2c2r_revocations";
/// Settings the whole fleet shares (the alias key).
pub const FLEET_BUCKET: &str = "p2c2r_fleet";
const ALIAS_KEY: &str = "alias_key";
/// The largest value any bucket takes (a lease is the largest, a few hundred bytes).
const MAX_VALUE_BYTES: i32 = 4096;
/// How long a lapsed lease stays readable (after that its coordinator counts as gone
/// forever).
const LEASE_KEPT: Duration = Duration::from_secs(3600);

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
    /// Its version.
    pub version: String,
}

/// A peer's quarantine, as the fleet shares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct QuarantineRecord {
    /// When it ends, Unix milliseconds.
    until_unix_ms: u64,
    /// The coordinator that quarantined it.
    by: String,
}

/// Why a registration was refused by the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The error code the client gets.
    pub code: ErrorCode,
    /// What it says.
    pub reason: String,
}

/// A claim this coordinator holds.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// The revision it last wrote.
    revision: u64,
    /// When: a claim written for a registration the router has not taken yet is not
    /// released for not being held (see `sync.rs`).
    at: std::time::Instant,
}

/// One coordinator's link to the fleet; see the module docs.
pub struct Federation {
    id: String,
    url: String,
    instance: String,
    client: async_nats::Client,
    ids: kv::Store,
    leases: kv::Store,
    quarantines: kv::Store,
    revocations: kv::Store,
    lease_ttl: Duration,
    kv_timeout: Duration,
    /// How long a gone coordinator's ids stay reserved (the resume grace).
    grace: Duration,
    alias_key: [u8; 32],
    /// The claims this coordinator holds, with the revision it last wrote and when.
    held: Mutex<HashMap<(Kind, String), Held>>,
    /// Quarantines this coordinator wrote or applied, with their end (Unix ms).
    quarantines_known: Mutex<HashMap<String, u64>>,
    /// The revocations this coordinator's auth file published.
    revocations_published: Mutex<HashSet<(Role, String)>>,
    /// The fleet's leases as last read (the fleet page).
    fleet: Mutex<Vec<Lease>>,
    metrics: Arc<FederationMetrics>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation").field("id", &self.id).finish_non_exhaustive()
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How long ago a key-value entry was written, by the server's clock against ours
/// (coordinators and NATS servers keep their clocks in sync, as any cluster does).
fn age(entry: &kv::Entry) -> Duration {
    let written_ms = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(written_ms))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl Federation {
    /// Connects to NATS, opens (or creates) the fleet's buckets, takes this coordinator's
    /// lease and reads the fleet's alias key. Fails when NATS cannot be reached within
    /// `kv_timeout`, refuses the credentials, or another live coordinator has this name.
    pub async fn connect(settings: &Settings, grace: Duration, url: String) -> std::io::Result<Arc<Federation>> {
        let id = settings.coordinator_id.clone().unwrap_or_else(|| format!("c-{:08x}", fastrand::u32(..)));
        let metrics = Arc::new(FederationMetrics::default());
        let events = metrics.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("p2c2r coordinator {id}"))
            .connection_timeout(settings.kv_timeout)
            .request_timeout(Some(settings.kv_timeout))
            .ping_interval(Duration::from_secs(2))
            .event_callback(move |event| {
                events.nats_event(&event);
                async {}
            });
        if let Some(path) = &settings.nats_credentials {
            options = options.credentials_file(path).await.map_err(|e| io_error("--nats-credentials", e))?;
        }
        if let Some(path) = &settings.nats_nkey_seed {
            let seed = std::fs::read_to_string(path).map_err(|e| io_error("--nats-nkey-seed", e))?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &settings.nats_ca {
            options = options.add_root_certificates(path.clone()).require_tls(true);
        }
        let client = tokio::time::timeout(settings.kv_timeout, options.connect(settings.nats_urls.clone()))
            .await
            .map_err(|_| io_error("NATS", format!("no server of {:?} answered in time", settings.nats_urls)))?
            .map_err(|e| io_error("NATS", e))?;
        let js = jetstream::new(client.clone());
        let bucket = |name: &str, max_age: Duration| kv::Config {
            bucket: name.to_owned(),
            history: 1,
            max_age,
            max_value_size: MAX_VALUE_BYTES,
            storage: jetstream::stream::StorageType::File,
            num_replicas: settings.kv_replicas.into(),
            ..Default::default()
        };
        let open = |config: kv::Config| {
            let js = js.clone();
            async move {
                let name = config.bucket.clone();
                tokio::time::timeout(settings.kv_timeout, js.create_or_update_key_value(config))
                    .await
                    .map_err(|_| io_error(&format!("bucket {name}"), "timed out"))?
                    .map_err(|e| {
                        io_error(
                            &format!("bucket {name}"),
                            format!("{e} (a lone NATS server needs --kv-replicas 1; JetStream must be enabled)"),
                        )
                    })
            }
        };
        let ids = open(bucket(IDS_BUCKET, Duration::ZERO)).await?;
        let leases = open(bucket(LEASES_BUCKET, LEASE_KEPT)).await?;
        let quarantines = open(bucket(QUARANTINES_BUCKET, Duration::ZERO)).await?;
        let revocations = open(bucket(REVOCATIONS_BUCKET, Duration::ZERO)).await?;
        let fleet = open(bucket(FLEET_BUCKET, Duration::ZERO)).await?;
        let alias_key = shared_alias_key(&fleet).await?;
        let federation = Arc::new(Federation {
            id,
            url,
            instance: format!("{:016x}", fastrand::u64(..)),
            client,
            ids,
            leases,
            quarantines,
            revocations,
            lease_ttl: settings.lease_ttl,
            kv_timeout: settings.kv_timeout,
            grace,
            alias_key,
            held: Mutex::default(),
            quarantines_known: Mutex::default(),
            revocations_published: Mutex::default(),
            fleet: Mutex::default(),
            metrics,
        });
        federation.take_lease().await?;
        info!(coordinator = federation.id, "joined the fleet");
        Ok(federation)
    }

    /// This coordinator's name in the fleet.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key every coordinator of the fleet computes gamers' aliases with.
    pub fn alias_key(&self) -> [u8; 32] {
        self.alias_key
    }

    /// The instruments of the link (registered in `/metrics`).
    pub fn metrics(&self) -> &Arc<FederationMetrics> {
        &self.metrics
    }

    /// The fleet's coordinators as their leases last said (renewed ones only).
    pub fn fleet(&self) -> Vec<Lease> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until no other live coordinator holds this name, then writes the lease.
    async fn take_lease(&self) -> std::io::Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            let current = self.kv("lease", || self.leases.entry(&self.id)).await.map_err(|e| io_error("lease", e))?;
            let taken = current.as_ref().is_some_and(|e| {
                e.operation == kv::Operation::Put
                    && age(e) < self.lease_ttl
                    && serde_json::from_slice::<Lease>(&e.value).is_ok_and(|l| l.instance != self.instance)
            });
            if !taken {
                break;
            }
            if started.elapsed() > self.lease_ttl * 2 {
                return Err(io_error(
                    "--coordinator-id",
                    format!("{:?} is the name of a live coordinator of the fleet; give each its own", self.id),
                ));
            }
            tokio::time::sleep(self.lease_ttl / 4).await;
        }
        self.renew_lease(Lease { peers: 0, gamers: 0, tasks_now: 0, tasks_completed: 0, ..self.lease_template() })
            .await
            .map_err(|e| io_error("lease", e))
    }

    fn lease_template(&self) -> Lease {
        Lease {
            coordinator: self.id.clone(),
            url: self.url.clone(),
            instance: self.instance.clone(),
            peers: 0,
            gamers: 0,
            tasks_now: 0,
            tasks_completed: 0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    async fn renew_lease(&self, lease: Lease) -> Result<(), String> {
        let value = Bytes::from(serde_json::to_vec(&lease).expect("a lease serializes"));
        self.kv("lease", || self.leases.put(&self.id, value.clone())).await.map(|_| ())
    }

    /// Gives the lease up at shutdown: the ids this coordinator held stay reserved for the
    /// resume grace from now, and are free after it.
    pub async fn leave(&self) {
        if let Err(e) = self.kv("lease", || self.leases.delete(&self.id)).await {
            warn!(error = %e, "the lease was not given up; it lapses by itself");
        }
        // What is buffered for the servers goes before the connection does.
        let _ = tokio::time::timeout(self.kv_timeout, self.client.flush()).await;
    }

    /// The holder's lease: live, or gone for how long.
    async fn lease_of(&self, holder: &str) -> Result<HolderLease, String> {
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

    /// Claims `id` for a registration on this coordinator, or says why not (see
    /// [`claims`]); a peer quarantined anywhere in the fleet is refused. Bounded by
    /// `kv_timeout`: past it the registration is refused `unavailable`.
    pub async fn admit(&self, kind: Kind, id: &str, proof: Proof<'_>) -> Result<(), Refusal> {
        let unavailable = |e: String| Refusal {
            code: ErrorCode::Unavailable,
            reason: format!("the fleet could not confirm this registration: {e}; retry"),
        };
        match tokio::time::timeout(self.kv_timeout, self.try_admit(kind, id, proof)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("timed out".into())),
        }
    }

    async fn try_admit(&self, kind: Kind, id: &str, proof: Proof<'_>) -> Result<Result<(), Refusal>, String> {
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
        // Compare-and-set races are lost only to another registration of the same id: a
        // few rounds settle it.
        for _ in 0..8 {
            let entry = self.kv("claim", || self.ids.entry(&key)).await?;
            let (claim, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    // Only coordinators write here; a value this version cannot read is
                    // nobody's claim it can honour, and is taken over.
                    (serde_json::from_slice::<ClaimRecord>(&e.value).ok(), e.revision)
                }
                Some(e) => (None, e.revision),
                None => (None, 0),
            };
            let mut decision = claims::decide(claim.as_ref(), &self.id, proof, None, self.grace);
            if decision == Decision::ReadLease {
                let holder = claim.as_ref().map_or("", |c| c.holder.as_str());
                let lease = self.lease_of(holder).await?;
                decision = claims::decide(claim.as_ref(), &self.id, proof, Some(lease), self.grace);
            }
            let written = match decision {
                Decision::Refuse => {
                    self.metrics.claims_refused.inc();
                    let holder = claim.map(|c| c.holder).unwrap_or_default();
                    let field = if kind == Kind::Peer { "peer_id" } else { "gamer_id" };
                    return Ok(Err(Refusal {
                        code: ErrorCode::IdInUse,
                        reason: format!(
                            "{field} {id:?} is in use on coordinator {holder}: taking it over needs the resume_secret of \
                             its last registration"
                        ),
                    }));
                }
                Decision::Ours => {
                    let now = std::time::Instant::now();
                    self.held_mut().entry((kind, id.to_owned())).or_insert(Held { revision, at: now });
                    return Ok(Ok(()));
                }
                Decision::Create | Decision::TakeOver | Decision::ReadLease => {
                    let record = ClaimRecord {
                        holder: self.id.clone(),
                        secret_digest: claim.as_ref().and_then(|c| c.secret_digest.clone()),
                    };
                    let value = Bytes::from(serde_json::to_vec(&record).expect("a claim serializes"));
                    self.compare_and_set(&key, value, revision).await?
                }
            };
            if let Some(revision) = written {
                if decision == Decision::TakeOver {
                    self.metrics.claims_taken_over.inc();
                }
                self.held_mut().insert((kind, id.to_owned()), Held { revision, at: std::time::Instant::now() });
                return Ok(Ok(()));
            }
        }
        Err("the id's claim kept changing".into())
    }

    /// Writes `value` at `key` if its last revision is still `revision` (0: if it has
    /// none); `None` when another write came first.
    async fn compare_and_set(&self, key: &str, value: Bytes, revision: u64) -> Result<Option<u64>, String> {
        let lost = |e: &kv::UpdateError| e.kind() == kv::UpdateErrorKind::WrongLastRevision;
        let result = self.kv_raw("claim", || self.ids.update(key, value.clone(), revision), lost).await;
        match result {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The registration of `id` was acknowledged with a resume secret whose digest is
    /// `secret_digest`: the claim records it, so that the client can resume on any
    /// coordinator. A claim taken over meanwhile is left to its new holder.
    pub async fn acknowledged(&self, kind: Kind, id: &str, secret_digest: [u8; 32]) {
        let Some(Held { revision, .. }) = self.held_mut().get(&(kind, id.to_owned())).copied() else { return };
        let record = ClaimRecord { holder: self.id.clone(), secret_digest: Some(hex(&secret_digest)) };
        let value = Bytes::from(serde_json::to_vec(&record).expect("a claim serializes"));
        match tokio::time::timeout(self.kv_timeout, self.compare_and_set(&keys::claim(kind, id), value, revision)).await
        {
            Ok(Ok(Some(revision))) => {
                self.held_mut().insert((kind, id.to_owned()), Held { revision, at: std::time::Instant::now() });
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(id, error = %e, "the claim's resume secret was not recorded"),
            Err(_) => warn!(id, "the claim's resume secret was not recorded in time"),
        }
    }

    fn held_mut(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, String), Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One key-value operation, counted and timed, retried while it fails (a bucket
    /// electing a leader), within `kv_timeout`.
    async fn kv<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
        &self,
        purpose: &'static str,
        op: impl Fn() -> F,
    ) -> Result<T, String> {
        self.kv_raw(purpose, op, |_| false).await.map_err(|e| e.to_string())
    }

    /// [`Federation::kv`] returning the operation's own error (of the last try); an error
    /// `answers` says is an answer (a compare-and-set lost) is returned at once.
    async fn kv_raw<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
        &self,
        purpose: &'static str,
        op: impl Fn() -> F,
        answers: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let began = std::time::Instant::now();
            let result = op().await;
            self.metrics.kv_operation(purpose, began.elapsed(), result.is_ok());
            match result {
                Ok(value) => return Ok(value),
                Err(e) => {
                    if answers(&e) || started.elapsed() + backoff > self.kv_timeout {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// The fleet's alias key: the first coordinator to start writes a random one, every
/// other reads it.
async fn shared_alias_key(fleet: &kv::Store) -> std::io::Result<[u8; 32]> {
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).expect("the OS random source");
    match fleet.create(ALIAS_KEY, Bytes::from(hex(&fresh))).await {
        Ok(_) => return Ok(fresh),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("alias key", e)),
    }
    let value = fleet.get(ALIAS_KEY).await.map_err(|e| io_error("alias key", e))?;
    let text = value.ok_or_else(|| io_error("alias key", "missing"))?;
    let text = std::str::from_utf8(&text).map_err(|e| io_error("alias key", e))?;
    let mut key = [0u8; 32];
    if text.len() != 64 {
        return Err(io_error("alias key", "not 32 bytes of hex"));
    }
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| io_error("alias key", e))?;
    }
    Ok(key)
}
