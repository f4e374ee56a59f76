//! The sessions a peer holds: one physics world and one navigation grid per session id,
//! dropped after a configurable idle time.
//!
//! Time comes from a [`Clock`] so tests can move it by hand ([`ManualClock`]) instead of
//! sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use p2c2r_protocol::RawPayload;

use crate::ai::Navigator;
use crate::physics::PhysicsWorld;

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
}

/// A result kept for duplicate deliveries.
#[derive(Debug)]
pub(crate) struct CachedResult {
    pub tick: u64,
    pub request_hash: u64,
    pub request_len: usize,
    pub result: RawPayload,
}

struct Slot {
    session: Mutex<Session>,
    last_used: Mutex<Instant>,
}

/// The sessions of one peer, shared by its worker threads.
///
/// Work on one session is serialized by a mutex per session; the map itself is locked only
/// to look a session up, so different sessions run in parallel. The peer additionally
/// queues each session's tasks in arrival order before they reach the store.
pub struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<Slot>>>,
    idle_timeout: Duration,
    max_sessions: usize,
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

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("sessions", &self.len())
            .field("idle_timeout", &self.idle_timeout)
            .field("max_sessions", &self.max_sessions)
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
        SessionStore { sessions: Mutex::new(HashMap::new()), idle_timeout, max_sessions: DEFAULT_MAX_SESSIONS, clock }
    }

    /// Sets how many sessions the store holds at most (at least 1; default
    /// [`DEFAULT_MAX_SESSIONS`]). Session ids come from gamers, so without a limit anyone
    /// could make the peer hold any number of worlds.
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions.max(1);
        self
    }

    /// How many sessions the store holds at most.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
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
    /// because the store is full.
    ///
    /// Creating a session in a full store first drops the idle-expired sessions, then the
    /// least recently used session that no task is using right now. If every session is in
    /// use, nothing is evicted and [`StoreFull`] is returned.
    pub fn try_with_session<R>(
        &self,
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
                    self.make_room(&mut sessions, now)?;
                    let slot = Arc::new(Slot { session: Mutex::new(Session::default()), last_used: Mutex::new(now) });
                    sessions.insert(session_id.to_owned(), slot.clone());
                    slot
                }
                None => return Ok(None),
            }
        };
        let mut session = lock(&slot.session);
        *lock(&slot.last_used) = self.clock.now();
        let r = f(&mut session);
        *lock(&slot.last_used) = self.clock.now();
        Ok(Some(r))
    }

    /// Frees one place in a full map: expired sessions first, then the least recently used
    /// idle one.
    fn make_room(&self, sessions: &mut HashMap<String, Arc<Slot>>, now: Instant) -> Result<(), StoreFull> {
        if sessions.len() < self.max_sessions {
            return Ok(());
        }
        sessions.retain(|_, slot| !self.expired(slot, now));
        if sessions.len() < self.max_sessions {
            return Ok(());
        }
        // A slot is in use while a task holds a clone of its `Arc`; clones are only made
        // under the map lock we hold, so a count of 1 means no task can be using it. (A
        // task that just finished may still be counted: then the slot merely looks busy.)
        // Ties on `last_used` are broken by id so the choice is deterministic.
        let victim = sessions
            .iter()
            .filter(|(_, slot)| Arc::strong_count(slot) == 1)
            .map(|(id, slot)| (*lock(&slot.last_used), id))
            .min()
            .map(|(_, id)| id.clone());
        match victim {
            Some(id) => {
                tracing::debug!(session_id = %id, "session store full; evicting the least recently used session");
                sessions.remove(&id);
                Ok(())
            }
            None => Err(StoreFull { max_sessions: self.max_sessions }),
        }
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
    fn absent_sessions_are_created_only_on_request() {
        let store = SessionStore::new(Duration::from_secs(1));
        assert!(store.with_session("s", false, |_| ()).is_none());
        assert_eq!(store.len(), 0);
        assert_eq!(store.with_session("s", true, |_| 5), Some(5));
        assert!(store.remove("s"));
        assert!(!store.remove("s"));
    }
}
