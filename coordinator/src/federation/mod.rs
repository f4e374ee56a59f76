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

mod admit;
mod borrow;
pub mod claims;
pub mod keys;
mod lease;
mod lend;
mod metrics;
mod sync;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use p2c2r_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use tracing::info;

pub use self::borrow::FLEET_PEER;
pub use self::lease::Lease;
pub use self::metrics::FederationMetrics;
pub(crate) use self::sync::spawn;
use crate::auth::Role;
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
/// How long a released claim leaves a marker (long enough for every watcher to see the
/// release; then nothing of the id is left).
const CLAIM_MARKER_TTL: Duration = Duration::from_secs(60);
/// The longest one key-value request may take before it is tried again (within
/// `kv_timeout`): a request to a bucket leader that just died is not waited on for long.
const KV_TRY: Duration = Duration::from_secs(2);

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
    /// When this run started (an earlier run's claims are gone since then).
    started: std::time::Instant,
    /// The revision of the lease this run wrote last.
    lease_revision: std::sync::atomic::AtomicU64,
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
    pub async fn connect(config: &crate::Config, url: String) -> std::io::Result<Arc<Federation>> {
        let settings = &config.federation;
        let grace = config.identity.resume_grace;
        let quarantine_kept = config.reputation.quarantine_duration + Duration::from_secs(60);
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
        let mut js = jetstream::new(client.clone());
        // One try is short; `kv` retries within `kv_timeout`.
        js.set_timeout(KV_TRY.min(settings.kv_timeout));
        let bucket = |name: &str, max_age: Duration| kv::Config {
            bucket: name.to_owned(),
            history: 1,
            max_age,
            max_value_size: MAX_VALUE_BYTES,
            storage: jetstream::stream::StorageType::File,
            num_replicas: settings.kv_replicas.into(),
            ..Default::default()
        };
        // Released claims leave markers that expire (needs NATS 2.11).
        let claims_bucket = kv::Config { limit_markers: Some(CLAIM_MARKER_TTL), ..bucket(IDS_BUCKET, Duration::ZERO) };
        // Retried within `kv_timeout`: a cluster just started (or electing its meta
        // leader) may not create a bucket at the first try.
        let open = |config: kv::Config| {
            let js = js.clone();
            async move {
                let name = config.bucket.clone();
                let started = tokio::time::Instant::now();
                loop {
                    // An existing bucket is taken as it is: one coordinator started with
                    // other settings does not rewrite the fleet's.
                    let error = match js.get_key_value(name.clone()).await {
                        Ok(store) => return Ok(store),
                        Err(_) => match js.create_key_value(config.clone()).await {
                            Ok(store) => return Ok(store),
                            Err(e) => e.to_string(),
                        },
                    };
                    if started.elapsed() >= settings.kv_timeout {
                        return Err(io_error(
                            &format!("bucket {name}"),
                            format!("{error} (a lone NATS server needs --kv-replicas 1; JetStream must be enabled)"),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let ids = open(claims_bucket).await?;
        let leases = open(bucket(LEASES_BUCKET, LEASE_KEPT)).await?;
        let quarantines = open(bucket(QUARANTINES_BUCKET, quarantine_kept)).await?;
        let revocations = open(bucket(REVOCATIONS_BUCKET, Duration::ZERO)).await?;
        let fleet = open(bucket(FLEET_BUCKET, Duration::ZERO)).await?;
        let alias_key = shared_alias_key(&fleet, settings.kv_timeout).await?;
        let federation = Arc::new(Federation {
            id,
            url,
            instance: format!("{:016x}", fastrand::u64(..)),
            started: std::time::Instant::now(),
            lease_revision: std::sync::atomic::AtomicU64::new(0),
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
/// other reads it. Retried within `within` (a bucket just created may not answer yet).
async fn shared_alias_key(fleet: &kv::Store, within: Duration) -> std::io::Result<[u8; 32]> {
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).expect("the OS random source");
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < within {
        match fleet.create(ALIAS_KEY, Bytes::from(hex(&fresh))).await {
            Ok(_) => return Ok(fresh),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match fleet.get(ALIAS_KEY).await {
                Ok(Some(text)) => return parse_key(&text),
                Ok(None) => last = "missing".into(),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(io_error("alias key", last))
}

fn parse_key(text: &[u8]) -> std::io::Result<[u8; 32]> {
    let text = std::str::from_utf8(text).map_err(|e| io_error("alias key", e))?;
    if text.len() != 64 {
        return Err(io_error("alias key", "not 32 bytes of hex"));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| io_error("alias key", e))?;
    }
    Ok(key)
}
