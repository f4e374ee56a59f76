//! The federation's instruments, in `/metrics` when the coordinator is federated:
//! key-value operations (by purpose: none is made per tick), claims refused and taken over,
//! quarantines applied from the fleet, the fleet's live coordinators, and NATS events
//! (disconnections, slow consumers) with the client's traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// What a key-value operation was for, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabel {
    /// `claim`, `lease`, `quarantine`, `revocation`.
    pub purpose: String,
}

/// A NATS client event, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// `connected`, `disconnected`, `slow_consumer`, `server_error`, …
    pub event: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct FederationMetrics {
    /// Key-value operations, by purpose.
    pub kv_operations: Family<PurposeLabel, Counter>,
    /// Key-value operations that failed (each try), by purpose.
    pub kv_failures: Family<PurposeLabel, Counter>,
    /// How long key-value operations took.
    pub kv_seconds: Histogram,
    /// Registrations refused because another coordinator holds the id.
    pub claims_refused: Counter,
    /// Ids taken over from another coordinator (a resume there, or its holder gone).
    pub claims_taken_over: Counter,
    /// Ids that registered again on another coordinator, closed here.
    pub ids_moved_away: Counter,
    /// Quarantines decided by other coordinators and applied here.
    pub quarantines_from_fleet: Counter,
    /// Coordinators whose lease is live (this one included).
    pub coordinators: Gauge,
    /// Renewals that found this coordinator's lease written by another run of its name.
    pub lease_lost: Counter,
    /// NATS client events, by kind.
    pub nats_events: Family<EventLabel, Counter>,
    /// Ticks of this coordinator's gamers sent to another coordinator's peers.
    pub fleet_tasks_borrowed: Counter,
    /// Ticks of other coordinators' gamers run on this coordinator's peers.
    pub fleet_tasks_lent: Counter,
    /// Ticks sent to the fleet that nobody received (no coordinator listening).
    pub fleet_no_responders: Counter,
    /// Ticks sent to the fleet with no answer by their deadline.
    pub fleet_timeouts: Counter,
    /// Work from other coordinators refused or dropped (malformed, over a bound).
    pub fleet_refused: Counter,
    /// Sessions this coordinator's gamers have on other coordinators' peers now.
    pub sessions_placed_remotely: Gauge,
    /// Round trips of ticks sent to the fleet, from sending to the answer.
    pub fleet_round_trip: Histogram,
    kv_total: AtomicU64,
}

impl Default for FederationMetrics {
    fn default() -> Self {
        FederationMetrics {
            kv_operations: Family::default(),
            kv_failures: Family::default(),
            // 0.1 ms to about 13 s.
            kv_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            claims_refused: Counter::default(),
            claims_taken_over: Counter::default(),
            ids_moved_away: Counter::default(),
            quarantines_from_fleet: Counter::default(),
            coordinators: Gauge::default(),
            lease_lost: Counter::default(),
            nats_events: Family::default(),
            fleet_tasks_borrowed: Counter::default(),
            fleet_tasks_lent: Counter::default(),
            fleet_no_responders: Counter::default(),
            fleet_timeouts: Counter::default(),
            fleet_refused: Counter::default(),
            sessions_placed_remotely: Gauge::default(),
            fleet_round_trip: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            kv_total: AtomicU64::new(0),
        }
    }
}

impl FederationMetrics {
    /// Records one key-value operation (one try).
    pub fn kv_operation(&self, purpose: &str, took: Duration, ok: bool) {
        let label = PurposeLabel { purpose: purpose.to_owned() };
        self.kv_operations.get_or_create(&label).inc();
        if !ok {
            self.kv_failures.get_or_create(&label).inc();
        }
        self.kv_seconds.observe(took.as_secs_f64());
        self.kv_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Key-value operations made for `purpose` so far.
    pub fn kv_count(&self, purpose: &str) -> u64 {
        self.kv_operations.get_or_create(&PurposeLabel { purpose: purpose.to_owned() }).get()
    }

    /// Key-value operations made so far, every purpose.
    pub fn kv_total(&self) -> u64 {
        self.kv_total.load(Ordering::Relaxed)
    }

    /// Counts a NATS client event.
    pub fn nats_event(&self, event: &async_nats::Event) {
        let name = match event {
            async_nats::Event::Connected => "connected",
            async_nats::Event::Disconnected => "disconnected",
            async_nats::Event::LameDuckMode => "lame_duck_mode",
            async_nats::Event::Draining => "draining",
            async_nats::Event::Closed => "closed",
            async_nats::Event::SlowConsumer(_) => "slow_consumer",
            async_nats::Event::ServerError(_) => "server_error",
            async_nats::Event::ClientError(_) => "client_error",
        };
        if !matches!(event, async_nats::Event::Connected) {
            crate::warn_limited!("federation: NATS event", event = %event, "NATS");
        }
        self.nats_events.get_or_create(&EventLabel { event: name.to_owned() }).inc();
    }

    /// Adds the instruments to `registry` (under the coordinator's prefix).
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("federation");
        registry.register("kv_operations", "Key-value operations (each try), by purpose", self.kv_operations.clone());
        registry.register(
            "kv_failures",
            "Key-value operations that failed (each try), by purpose",
            self.kv_failures.clone(),
        );
        registry.register_with_unit("kv", "How long key-value operations took", Unit::Seconds, self.kv_seconds.clone());
        registry.register(
            "claims_refused",
            "Registrations refused because another coordinator's connection holds the id",
            self.claims_refused.clone(),
        );
        registry.register(
            "claims_taken_over",
            "Ids taken over from another coordinator (resumed here, or their coordinator gone)",
            self.claims_taken_over.clone(),
        );
        registry.register(
            "ids_moved_away",
            "Ids registered again on another coordinator, their connection here closed",
            self.ids_moved_away.clone(),
        );
        registry.register(
            "quarantines_from_fleet",
            "Quarantines decided by other coordinators and applied here",
            self.quarantines_from_fleet.clone(),
        );
        registry.register("coordinators", "Coordinators of the fleet whose lease is live", self.coordinators.clone());
        registry.register(
            "lease_lost",
            "Renewals that found this coordinator's lease taken by another run of its name",
            self.lease_lost.clone(),
        );
        registry.register("nats_events", "NATS client events, by kind", self.nats_events.clone());
        registry.register(
            "tasks_borrowed",
            "Ticks of this coordinator's gamers sent to another coordinator's peers",
            self.fleet_tasks_borrowed.clone(),
        );
        registry.register(
            "tasks_lent",
            "Ticks of other coordinators' gamers run on this coordinator's peers",
            self.fleet_tasks_lent.clone(),
        );
        registry.register(
            "no_responders",
            "Ticks sent to the fleet that no coordinator received",
            self.fleet_no_responders.clone(),
        );
        registry.register(
            "timeouts",
            "Ticks sent to the fleet unanswered by their deadline",
            self.fleet_timeouts.clone(),
        );
        registry.register(
            "work_refused",
            "Work from other coordinators refused or dropped (malformed, over a bound)",
            self.fleet_refused.clone(),
        );
        registry.register(
            "sessions_placed_remotely",
            "Sessions of this coordinator's gamers on other coordinators' peers",
            self.sessions_placed_remotely.clone(),
        );
        registry.register_with_unit(
            "round_trip",
            "Round trips of ticks sent to the fleet, sending to answer",
            Unit::Seconds,
            self.fleet_round_trip.clone(),
        );
    }
}
