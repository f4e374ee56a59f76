//! The sessions a peer holds: one physics world and one navigation grid per session id,
//! dropped after a configurable idle time.
//!
//! The store is bounded twice: by a number of sessions and by their estimated memory
//! ([`Session::estimated_bytes`]), for the whole store and per gamer. When a new or
//! growing session does not fit, idle sessions are evicted *fairly*: those of the gamer
//! that created sessions fastest recently go first (its least recently used one first),
//! so a gamer flooding the peer with new sessions evicts its own, never an honest
//! gamer's while the flooder still holds any. When nothing can be evicted the task is
//! refused (`limit_exceeded` with resync).
//!
//! Time comes from a [`Clock`] so tests can move it by hand ([`ManualClock`]) instead of
//! sleeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use p2c2r_protocol::Payload;

use p2c2r_sim::Budgets;
use p2c2r_sim::navigation::Navigator;
use p2c2r_sim::physics::{PhysicsWorld, WorldSize};
use p2c2r_sim::shape_cache::ShapeCache;

/// Where a [`SessionStore`] reads the time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to, for tests. Clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock stopped at the current instant.
    pub fn new() -> Self {
        ManualClock { base: Instant::now(), offset: Arc::new(Mutex::new(Duration::ZERO)) }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *lock(&self.offset) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *lock(&self.offset)
    }
}

/// What a peer keeps for one session id.
#[derive(Debug, Default)]
pub struct Session {
    /// The physics world, once a `physics_step` snapshot arrived.
    pub physics: Option<PhysicsWorld>,
    /// The navigation grid, once an `ai_navigate` request carried one.
    pub navigator: Option<Navigator>,
    /// The last successful `physics_step` answer, replayed if the same request is
    /// delivered again (the coordinator delivers to peers at least once).
    pub(crate) last_physics: Option<CachedResult>,
    /// The encoder of packed physics answers: it keeps the previous answer's bodies, the
    /// baseline of the next delta.
    pub(crate) physics_wire: p2c2r_protocol::packed::ResultEncoder,
}

/// Estimated bytes of one rapier body with its collider, as a session holds it.
///
/// Measured once with rapier3d 0.36 (`cargo run --release -p peer --example
/// session_bytes`): worlds of 10,000 boxes falling onto a ground (one contact pair per
/// body), each stepped 60 times, grew the process's resident memory by about 7.5 KB per
/// body (the body, its collider, broad-phase and island entries, the contact pair and its
/// manifold, our id map); rounded up.
pub const BYTES_PER_BODY: u64 = 8 * 1024;
/// Estimated bytes of one shape element (a hull point, a mesh vertex or triangle with its
/// share of the mesh's tree, a heightfield cell, a compound part): parry keeps a few
/// dozen bytes each; rounded up, not measured.
pub const BYTES_PER_SHAPE_ELEMENT: u64 = 64;
/// Estimated bytes of one joint (rapier's joint and its solver entries, our id map);
/// rounded up, not measured.
pub const BYTES_PER_JOINT: u64 = 1024;
/// Estimated bytes of one navigation-grid cell (its connected-component label).
pub const BYTES_PER_GRID_CELL: u64 = 4;
/// Estimated bytes of an empty session (an empty rapier world and the store's entry).
pub const SESSION_BASE_BYTES: u64 = 16 * 1024;
/// Default memory budget of a [`SessionStore`], all sessions together: 512 MiB.
pub const DEFAULT_SESSION_MEMORY_BYTES: u64 = 512 * 1024 * 1024;
/// Half-life of the creation rate by which gamers are ranked for eviction.
pub const CREATION_RATE_HALF_LIFE: Duration = Duration::from_secs(30);

impl Session {
    /// The memory this session is estimated to hold: [`SESSION_BASE_BYTES`], plus
    /// [`BYTES_PER_BODY`] per physics body, [`BYTES_PER_SHAPE_ELEMENT`] per element of
    /// their shapes, [`BYTES_PER_JOINT`] per joint, [`BYTES_PER_GRID_CELL`] per grid cell,
    /// and the cached last answer. (The packed answers' baseline, about 100 bytes per
    /// moving body, is within the rounding of [`BYTES_PER_BODY`].)
    pub fn estimated_bytes(&self) -> u64 {
        Self::estimate(self.physics.as_ref().map(PhysicsWorld::size).unwrap_or_default(), self.grid_cells())
            + self.last_physics.as_ref().map_or(0, |c| c.result.len() as u64)
    }

    /// The estimate for a session whose world holds `world` and whose grid `grid_cells`.
    pub fn estimate(world: WorldSize, grid_cells: usize) -> u64 {
        SESSION_BASE_BYTES
            .saturating_add((world.bodies as u64).saturating_mul(BYTES_PER_BODY))
            .saturating_add((world.shape_elements as u64).saturating_mul(BYTES_PER_SHAPE_ELEMENT))
            .saturating_add((world.joints as u64).saturating_mul(BYTES_PER_JOINT))
            .saturating_add((grid_cells as u64).saturating_mul(BYTES_PER_GRID_CELL))
    }

    /// Cells of the navigation grid held (0 without one).
    pub fn grid_cells(&self) -> usize {
        self.navigator.as_ref().map_or(0, |n| {
            let (w, h) = n.size();
            w * h
        })
    }
}

/// A result kept for duplicate deliveries.
#[derive(Debug)]
pub(crate) struct CachedResult {
    pub tick: u64,
    pub request_hash: u64,
    pub request_len: usize,
    pub result: Payload,
}

struct Slot {
    session: Mutex<Session>,
    last_used: Mutex<Instant>,
    /// The gamer that owns the session ("" when the task named none).
    gamer: Arc<str>,
    /// The session's estimated memory, as last charged.
    bytes: AtomicU64,
}

impl Slot {
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

/// How fast a gamer created sessions recently: a count that halves every
/// [`CREATION_RATE_HALF_LIFE`].
#[derive(Clone, Copy, Debug)]
struct Rate {
    score: f64,
    at: Instant,
}

impl Rate {
    fn at(self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        self.score * 0.5f64.powf(age / CREATION_RATE_HALF_LIFE.as_secs_f64())
    }
}

/// The sessions of one peer, shared by its worker threads.
///
/// Work on one session is serialized by a mutex per session; the map itself is locked only
/// to look a session up, so different sessions run in parallel. The peer additionally
/// queues each session's tasks in arrival order before they reach the store.
pub struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<Slot>>>,
    /// Per gamer, how fast it created sessions recently. Locked only under `sessions`.
    creations: Mutex<HashMap<Arc<str>, Rate>>,
    idle_timeout: Duration,
    max_sessions: usize,
    memory_budget: u64,
    gamer_memory_budget: u64,
    budgets: Budgets,
    /// Large shapes kept across snapshots, for every session of the store (see
    /// [`p2c2r_sim::shape_cache`]). Locked only for requests that send or name one.
    shapes: Mutex<ShapeCache>,
    clock: Arc<dyn Clock>,
}

/// How many sessions a [`SessionStore`] holds at most unless told otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 256;

/// Why [`SessionStore::try_with_session`] could not create a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreFull {
    /// The store's limit.
    pub max_sessions: usize,
}

/// Why [`SessionStore::charge`] refused to let a session grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// The bytes the session asked for.
    pub requested: u64,
    /// The budget it would exceed.
    pub budget: u64,
    /// Whether that is the per-gamer budget (else the whole store's).
    pub per_gamer: bool,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("sessions", &self.len())
            .field("idle_timeout", &self.idle_timeout)
            .field("max_sessions", &self.max_sessions)
            .field("memory_budget", &self.memory_budget)
            .field("gamer_memory_budget", &self.gamer_memory_budget)
            .finish()
    }
}

impl SessionStore {
    /// A store on the real clock that drops sessions unused for `idle_timeout`.
    pub fn new(idle_timeout: Duration) -> Self {
        Self::with_clock(idle_timeout, Arc::new(SystemClock))
    }

    /// A store reading time from `clock`.
    pub fn with_clock(idle_timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        SessionStore {
            sessions: Mutex::new(HashMap::new()),
            creations: Mutex::new(HashMap::new()),
            idle_timeout,
            max_sessions: DEFAULT_MAX_SESSIONS,
            memory_budget: DEFAULT_SESSION_MEMORY_BYTES,
            gamer_memory_budget: DEFAULT_SESSION_MEMORY_BYTES / 4,
            budgets: Budgets::default(),
            shapes: Mutex::new(ShapeCache::default()),
            clock,
        }
    }

    /// Sets the byte budget of the store's shape cache (default
    /// [`p2c2r_sim::shape_cache::DEFAULT_SHAPE_CACHE_BYTES`]).
    pub fn with_shape_cache_bytes(mut self, bytes: usize) -> Self {
        self.shapes = Mutex::new(ShapeCache::new(bytes));
        self
    }

    /// The store's shape cache, locked.
    pub fn shape_cache(&self) -> MutexGuard<'_, ShapeCache> {
        lock(&self.shapes)
    }

    /// Sets how many sessions the store holds at most (at least 1; default
    /// [`DEFAULT_MAX_SESSIONS`]). Session ids come from gamers, so without a limit anyone
    /// could make the peer hold any number of worlds.
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions.max(1);
        self
    }

    /// Sets the estimated memory all sessions may hold together, and one gamer's sessions
    /// (default [`DEFAULT_SESSION_MEMORY_BYTES`] and a quarter of it).
    pub fn with_memory_budget(mut self, total_bytes: u64, per_gamer_bytes: u64) -> Self {
        self.memory_budget = total_bytes;
        self.gamer_memory_budget = per_gamer_bytes.min(total_bytes);
        self
    }

    /// Sets the work budgets tasks run within ([`crate::run_task`] reads them here).
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.budgets = budgets;
        self
    }

    /// The work budgets tasks run within.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// How many sessions the store holds at most.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The memory budgets: all sessions together, one gamer's sessions.
    pub fn memory_budget(&self) -> (u64, u64) {
        (self.memory_budget, self.gamer_memory_budget)
    }

    /// The estimated memory the sessions hold, as last charged.
    pub fn estimated_bytes(&self) -> u64 {
        lock(&self.sessions).values().map(|s| s.bytes()).sum()
    }

    /// How long a session may stay unused.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How many sessions are held (idle ones not yet evicted included).
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a live (not idle-expired) session has this id.
    pub fn contains(&self, session_id: &str) -> bool {
        let now = self.clock.now();
        lock(&self.sessions).get(session_id).is_some_and(|slot| !self.expired(slot, now))
    }

    /// The ids of the sessions held, sorted.
    pub fn session_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Drops a session; returns whether it existed.
    pub fn remove(&self, session_id: &str) -> bool {
        lock(&self.sessions).remove(session_id).is_some()
    }

    /// Drops every session unused for longer than the idle timeout; returns how many.
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now();
        let mut sessions = lock(&self.sessions);
        let before = sessions.len();
        sessions.retain(|_, slot| !self.expired(slot, now));
        // Forget the rates of gamers that hold nothing and stopped creating.
        lock(&self.creations)
            .retain(|gamer, rate| rate.at(now) > 0.01 || sessions.values().any(|slot| slot.gamer == *gamer));
        before - sessions.len()
    }

    /// Runs `f` on a session, holding that session's lock.
    ///
    /// An idle-expired session counts as absent. An absent session is created when
    /// `create` is set; otherwise `f` is not run and `None` is returned. When the store is
    /// full and no session can be evicted to make room, `f` is not run and `None` is
    /// returned too; [`try_with_session`](Self::try_with_session) tells the two apart.
    pub fn with_session<R>(&self, session_id: &str, create: bool, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.try_with_session(session_id, create, f).ok().flatten()
    }

    /// [`with_session`](Self::with_session), saying when a session could not be created
    /// because the store is full. The session belongs to no gamer (see
    /// [`try_with_gamer_session`](Self::try_with_gamer_session)).
    pub fn try_with_session<R>(
        &self,
        session_id: &str,
        create: bool,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>, StoreFull> {
        self.try_with_gamer_session(None, session_id, create, f)
    }

    /// [`try_with_session`](Self::try_with_session) for a session owned by `gamer`.
    ///
    /// Creating a session in a full store first drops the idle-expired sessions, then one
    /// idle session of the gamer that created sessions fastest recently (its least
    /// recently used); if that gamer's sessions are all in use, nothing is evicted and
    /// [`StoreFull`] is returned.
    pub fn try_with_gamer_session<R>(
        &self,
        gamer: Option<&str>,
        session_id: &str,
        create: bool,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>, StoreFull> {
        let slot = {
            let now = self.clock.now();
            let mut sessions = lock(&self.sessions);
            if sessions.get(session_id).is_some_and(|slot| self.expired(slot, now)) {
                sessions.remove(session_id);
            }
            match sessions.get(session_id) {
                Some(slot) => slot.clone(),
                None if create => {
                    let gamer: Arc<str> = Arc::from(gamer.unwrap_or(""));
                    self.count_creation(&gamer, now);
                    self.make_room(&mut sessions, now)?;
                    let slot = Arc::new(Slot {
                        session: Mutex::new(Session::default()),
                        last_used: Mutex::new(now),
                        gamer,
                        bytes: AtomicU64::new(SESSION_BASE_BYTES),
                    });
                    sessions.insert(session_id.to_owned(), slot.clone());
                    slot
                }
                None => return Ok(None),
            }
        };
        let mut session = lock(&slot.session);
        *lock(&slot.last_used) = self.clock.now();
        let r = f(&mut session);
        slot.bytes.store(session.estimated_bytes(), Ordering::Release);
        *lock(&slot.last_used) = self.clock.now();
        Ok(Some(r))
    }

    /// Lets a session grow to `bytes` (its estimated memory once the task has run),
    /// evicting idle sessions to make room: first the same gamer's least recently used
    /// ones while its sessions exceed the per-gamer budget, then those of the gamer that
    /// created sessions fastest recently while the store exceeds its budget. Call it from
    /// inside [`with_session`](Self::with_session) before the work that makes the session
    /// grow: the session itself is in use and never evicted. Shrinking always succeeds.
    ///
    /// An unknown session id is charged nothing.
    pub fn charge(&self, session_id: &str, bytes: u64) -> Result<(), OverBudget> {
        let now = self.clock.now();
        let mut sessions = lock(&self.sessions);
        let Some(slot) = sessions.get(session_id).cloned() else { return Ok(()) };
        if bytes <= slot.bytes() {
            slot.bytes.store(bytes, Ordering::Release);
            return Ok(());
        }
        let over = |per_gamer: bool, budget: u64| OverBudget { requested: bytes, budget, per_gamer };
        loop {
            let gamer_total: u64 = sessions
                .iter()
                .filter(|(id, s)| s.gamer == slot.gamer && *id != session_id)
                .map(|(_, s)| s.bytes())
                .sum();
            if gamer_total.saturating_add(bytes) <= self.gamer_memory_budget {
                break;
            }
            let victim = Self::lru_idle(&sessions, Some(&slot.gamer)).ok_or(over(true, self.gamer_memory_budget))?;
            tracing::debug!(session_id = %victim, "a gamer's sessions exceed its memory budget; evicting its least recently used");
            sessions.remove(&victim);
        }
        loop {
            let total: u64 = sessions.iter().filter(|(id, _)| *id != session_id).map(|(_, s)| s.bytes()).sum();
            if total.saturating_add(bytes) <= self.memory_budget {
                break;
            }
            let victim = self.fair_victim(&sessions, now).ok_or(over(false, self.memory_budget))?;
            tracing::debug!(session_id = %victim, "session memory budget exceeded; evicting a session of the fastest creator");
            sessions.remove(&victim);
        }
        slot.bytes.store(bytes, Ordering::Release);
        Ok(())
    }

    /// Records that `gamer` created a session now.
    fn count_creation(&self, gamer: &Arc<str>, now: Instant) {
        let mut creations = lock(&self.creations);
        let rate = creations.entry(gamer.clone()).or_insert(Rate { score: 0.0, at: now });
        *rate = Rate { score: rate.at(now) + 1.0, at: now };
    }

    /// Frees one place in a full map: expired sessions first, then a fair victim.
    fn make_room(&self, sessions: &mut HashMap<String, Arc<Slot>>, now: Instant) -> Result<(), StoreFull> {
        if sessions.len() < self.max_sessions {
            return Ok(());
        }
        sessions.retain(|_, slot| !self.expired(slot, now));
        if sessions.len() < self.max_sessions {
            return Ok(());
        }
        match self.fair_victim(sessions, now) {
            Some(id) => {
                tracing::debug!(session_id = %id, "session store full; evicting a session of the fastest creator");
                sessions.remove(&id);
                Ok(())
            }
            None => Err(StoreFull { max_sessions: self.max_sessions }),
        }
    }

    /// The session to evict: the least recently used idle session of the gamer, among
    /// those holding sessions, that created sessions fastest recently (ties: the one
    /// holding more memory, then by name). `None` when that gamer's sessions are all in
    /// use: an honest gamer's session is never evicted while the flooder holds any (even
    /// when the flooder is the one asking for room).
    fn fair_victim(&self, sessions: &HashMap<String, Arc<Slot>>, now: Instant) -> Option<String> {
        let creations = lock(&self.creations);
        let mut held: HashMap<&Arc<str>, u64> = HashMap::new();
        for slot in sessions.values() {
            *held.entry(&slot.gamer).or_default() += slot.bytes();
        }
        let rate = |g: &Arc<str>| creations.get(g).map_or(0.0, |r| r.at(now));
        let (gamer, _) = held.into_iter().max_by(|(a, abytes), (b, bbytes)| {
            rate(a).total_cmp(&rate(b)).then(abytes.cmp(bbytes)).then_with(|| b.cmp(a))
        })?;
        Self::lru_idle(sessions, Some(gamer))
    }

    /// The least recently used idle session (of `gamer`, when given).
    fn lru_idle(sessions: &HashMap<String, Arc<Slot>>, gamer: Option<&Arc<str>>) -> Option<String> {
        // A slot is in use while a task holds a clone of its `Arc`; clones are only made
        // under the map lock we hold, so a count of 1 means no task can be using it. (A
        // task that just finished may still be counted: then the slot merely looks busy.)
        // Ties on `last_used` are broken by id so the choice is deterministic.
        sessions
            .iter()
            .filter(|(_, slot)| Arc::strong_count(slot) == 1 && gamer.is_none_or(|g| slot.gamer == *g))
            .map(|(id, slot)| (*lock(&slot.last_used), id))
            .min()
            .map(|(_, id)| id.clone())
    }

    fn expired(&self, slot: &Slot, now: Instant) -> bool {
        now.saturating_duration_since(*lock(&slot.last_used)) > self.idle_timeout
    }
}

/// Locks a mutex, ignoring poisoning: the data behind every mutex here stays consistent
/// (a task that panicked had its session removed by the caller).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_is_charged_for_its_shapes_and_joints_not_only_its_bodies() {
        use p2c2r_protocol::physics::{BodyDesc, BodyType, PhysicsStepRequest, Shape};
        let mesh = Shape::TriMesh {
            vertices: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            indices: vec![[0, 2, 1]; 1000],
        };
        let request = PhysicsStepRequest {
            snapshot: true,
            dt: 0.01,
            steps: 1,
            add: vec![BodyDesc::new(1, mesh, [0.0; 3]).with_body_type(BodyType::Fixed)],
            ..Default::default()
        };
        let size = PhysicsWorld::new().projected_size(&request);
        assert_eq!(size, WorldSize { bodies: 1, shape_elements: 1003, joints: 0 });
        let plain = Session::estimate(WorldSize { bodies: 1, ..WorldSize::default() }, 0);
        assert_eq!(Session::estimate(size, 0) - plain, 1003 * BYTES_PER_SHAPE_ELEMENT);
        let jointed = WorldSize { joints: 10, ..size };
        assert_eq!(Session::estimate(jointed, 0) - Session::estimate(size, 0), 10 * BYTES_PER_JOINT);
        // A world stepped holds what it was projected to.
        let mut world = PhysicsWorld::new();
        world.step(&request).unwrap();
        assert_eq!(world.size(), size);
        // And gives them back when its bodies go.
        world.step(&PhysicsStepRequest { tick: 1, dt: 0.01, steps: 1, remove: vec![1], ..Default::default() }).unwrap();
        assert_eq!(world.size(), WorldSize::default());
    }

    #[test]
    fn idle_sessions_are_dropped_after_the_timeout() {
        let clock = ManualClock::new();
        let store = SessionStore::with_clock(Duration::from_secs(30), Arc::new(clock.clone()));
        store.with_session("a", true, |_| ());
        store.with_session("b", true, |_| ());
        clock.advance(Duration::from_secs(20));
        store.with_session("b", false, |_| ()).unwrap();
        clock.advance(Duration::from_secs(15));
        // "a" has been idle 35 s, "b" 15 s.
        assert!(!store.contains("a"));
        assert!(store.contains("b"));
        assert_eq!(store.evict_idle(), 1);
        assert_eq!(store.session_ids(), vec!["b".to_owned()]);
        clock.advance(Duration::from_secs(31));
        assert!(store.with_session("b", false, |_| ()).is_none(), "an expired session counts as absent");
        assert!(store.is_empty());
    }

    #[test]
    fn a_full_store_evicts_the_least_recently_used_idle_session() {
        let clock = ManualClock::new();
        let store = SessionStore::with_clock(Duration::from_secs(60), Arc::new(clock.clone())).with_max_sessions(3);
        for id in ["a", "b", "c"] {
            store.with_session(id, true, |_| ()).unwrap();
            clock.advance(Duration::from_secs(1));
        }
        // "a" is used again, so "b" is now the least recently used.
        store.with_session("a", false, |_| ()).unwrap();
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.try_with_session("d", true, |_| 4), Ok(Some(4)));
        assert_eq!(store.session_ids(), vec!["a", "c", "d"]);
        // Looking up an existing session never evicts anything.
        store.with_session("c", false, |_| ()).unwrap();
        assert_eq!(store.len(), 3);
        // An expired session is dropped before any live one.
        clock.advance(Duration::from_secs(30));
        store.with_session("a", false, |_| ()).unwrap();
        store.with_session("d", false, |_| ()).unwrap();
        clock.advance(Duration::from_secs(40));
        // "c" has been idle 70 s, "a" and "d" 40 s.
        store.with_session("e", true, |_| ()).unwrap();
        assert_eq!(store.session_ids(), vec!["a", "d", "e"]);
    }

    #[test]
    fn a_full_store_never_evicts_a_session_in_use() {
        let clock = ManualClock::new();
        let store = SessionStore::with_clock(Duration::from_secs(60), Arc::new(clock.clone())).with_max_sessions(2);
        store.with_session("a", true, |_| ()).unwrap();
        clock.advance(Duration::from_secs(1));
        store.with_session("b", true, |_| ()).unwrap();
        clock.advance(Duration::from_secs(1));
        // While "a" (the least recently used) is in use, creating "c" evicts "b".
        store
            .with_session("a", false, |_| {
                assert_eq!(store.try_with_session("c", true, |_| ()), Ok(Some(())));
            })
            .unwrap();
        assert_eq!(store.session_ids(), vec!["a", "c"]);
        // With every session in use, nothing can be evicted: the store is full.
        store
            .with_session("a", false, |_| {
                store
                    .with_session("c", false, |_| {
                        assert_eq!(store.try_with_session("d", true, |_| ()), Err(StoreFull { max_sessions: 2 }));
                        assert_eq!(store.with_session("d", true, |_| ()), None);
                    })
                    .unwrap();
            })
            .unwrap();
        assert_eq!(store.session_ids(), vec!["a", "c"]);
        // Once they are idle again, the least recently used one makes room.
        store.with_session("d", true, |_| ()).unwrap();
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn the_fastest_creator_pays_for_room_and_never_an_honest_gamer() {
        let clock = ManualClock::new();
        let store = SessionStore::with_clock(Duration::from_secs(60), Arc::new(clock.clone())).with_max_sessions(3);
        let create = |gamer: &str, id: &str| store.try_with_gamer_session(Some(gamer), id, true, |_| ());
        create("honest", "h").unwrap();
        for i in 0..5 {
            clock.advance(Duration::from_secs(1));
            create("flood", &format!("f{i}")).unwrap();
        }
        // The flooder's newest two remain; the honest gamer's older, less recently used
        // session was never the victim.
        assert_eq!(store.session_ids(), vec!["f3", "f4", "h"]);
        // While the flooder's sessions are all in use, nobody else's is evicted for it.
        store
            .with_session("f3", false, |_| {
                store
                    .with_session("f4", false, |_| {
                        assert_eq!(create("honest", "h2"), Err(StoreFull { max_sessions: 3 }));
                        assert_eq!(create("flood", "f5"), Err(StoreFull { max_sessions: 3 }));
                    })
                    .unwrap();
            })
            .unwrap();
        assert_eq!(store.session_ids(), vec!["f3", "f4", "h"]);
        // Once idle again, the flooder pays.
        create("honest", "h2").unwrap();
        assert_eq!(store.session_ids(), vec!["f4", "h", "h2"]);
    }

    #[test]
    fn growth_past_a_gamers_budget_is_refused_and_shrinking_always_fits() {
        let store = SessionStore::new(Duration::from_secs(60)).with_memory_budget(1 << 20, 300 << 10);
        store.try_with_gamer_session(Some("a"), "a1", true, |_| ()).unwrap();
        store
            .try_with_gamer_session(Some("b"), "b1", true, |_| {
                assert_eq!(store.charge("b1", 200 << 10), Ok(()));
                assert_eq!(
                    store.charge("b1", 400 << 10),
                    Err(OverBudget { requested: 400 << 10, budget: 300 << 10, per_gamer: true })
                );
                assert_eq!(store.charge("b1", 1), Ok(()));
            })
            .unwrap();
        assert_eq!(store.session_ids(), vec!["a1", "b1"]);
    }

    #[test]
    fn absent_sessions_are_created_only_on_request() {
        let store = SessionStore::new(Duration::from_secs(1));
        assert!(store.with_session("s", false, |_| ()).is_none());
        assert_eq!(store.len(), 0);
        assert_eq!(store.with_session("s", true, |_| 5), Some(5));
        assert!(store.remove("s"));
        assert!(!store.remove("s"));
    }
}
