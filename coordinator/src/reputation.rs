//! Peer reputation that outlives the process, kept in an embedded database ([redb], one
//! file at `Reputation::reputation_db`, created on first start), as BOINC keeps its host
//! records:
//! - which peer ids are quarantined, and until when, so a peer quarantined for lying or for
//!   swallowing tasks cannot wait out a coordinator restart;
//! - each departed peer's standing ([`Standing`]: the capacity it has shown and its streak
//!   of missed deadlines), so a peer demoted for missing deadlines, or a few misses from
//!   quarantine, gains nothing by reconnecting or by waiting for a restart. The router keeps
//!   the same in memory ([`Standings`]) for peers that reconnect while it runs.
//!
//! The router decides; this module only remembers. Writes go to a bounded queue served by
//! a thread of their own, so the router never waits on the disk under its lock; a full
//! queue drops the write (logged) and what it said still holds in memory until the
//! restart. Both tables are bounded like the router's: at most [`MAX_RECORDS`] ids each;
//! quarantines expired are dropped first, then the ones that end soonest; standings older
//! than [`MAX_STANDING_AGE`] are dropped, then the least recently updated.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use crate::scheduler::Standing;

/// Peer id → end of its quarantine, in milliseconds since the Unix epoch (wall clock:
/// it must mean the same after a restart).
const QUARANTINE: TableDefinition<&str, u64> = TableDefinition::new("quarantine");

/// Peer id → its standing when it last left: window, misses in a row, successful answers
/// ever, agreements on compared ticks ever, when the id first registered, and when the
/// row was written (both milliseconds since the Unix epoch).
const STANDING: TableDefinition<&str, (u32, u32, u64, u64, u64, u64)> = TableDefinition::new("standing.v3");

/// The standing table before it counted agreements and age: carried over when the
/// database is opened (no agreements, and a first registration no earlier than the row).
const STANDING_V2: TableDefinition<&str, (u32, u32, u64, u64)> = TableDefinition::new("standing.v2");

/// The standing table before it counted successful answers: dropped when the database is
/// opened (what it held is a day old at most, and worth less than a format kept for it).
const STANDING_V1: TableDefinition<&str, (u32, u32, u64)> = TableDefinition::new("standing");

/// Peer ids kept at most, in each table: the router's in-memory bound.
pub const MAX_RECORDS: usize = crate::router::MAX_QUARANTINED;

/// How long a departed peer's standing is kept: a day. Far longer than a quarantine (an
/// hour by default) or a restart, so that neither wipes it; short enough that what a
/// machine showed is not held against it for ever (its load, its hardware, its owner may
/// have changed, and a day-old streak of misses says little about it now). Older ones are
/// dropped when the database is opened and never given back by [`Standings`].
pub const MAX_STANDING_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Writes waiting for the disk at most.
const QUEUE: usize = 1024;

/// Why the reputation database could not be opened. The coordinator refuses to start on
/// any of these rather than start afresh: starting afresh would silently lift every
/// quarantine the file holds.
#[derive(Debug, thiserror::Error)]
pub enum ReputationError {
    /// redb could not open or read it (permissions, a lock held by another process, I/O).
    #[error("cannot open the reputation database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: redb::Error,
    },
    /// Its pages fail redb's checksums and could not be repaired.
    #[error(
        "the reputation database {path} is corrupt ({detail}); restore it from a backup, or move it away to start \
         with no reputation (every quarantine in it would be lost)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb found.
        detail: String,
    },
    /// The file exists and is empty: a truncated copy or a failed restore, not a database
    /// that was never written (redb writes its header when it creates one).
    #[error(
        "the reputation database {path} exists but is empty (0 bytes): a truncated copy? Restore it, or remove it \
         to start with no reputation"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A quarantine read back at start: the peer id and how long it still lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The peer id.
    pub peer_id: String,
    /// Time left.
    pub left: Duration,
}

/// A departed peer's standing read back at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptStanding {
    /// The peer id.
    pub peer_id: String,
    /// What it had earned when it left.
    pub standing: Standing,
    /// How long ago it was written.
    pub age: Duration,
}

/// What the database kept from before a restart ([`ReputationDb::open`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// The quarantines still in force.
    pub quarantined: Vec<Quarantined>,
    /// The standings younger than [`MAX_STANDING_AGE`], the least recently written first.
    pub standings: Vec<KeptStanding>,
}

/// One write for the writer thread.
#[derive(Debug)]
enum Write {
    /// A quarantine until this time (ms since the epoch).
    Quarantine { peer_id: String, until_ms: u64 },
    /// A departed peer's standing, written at this time (ms since the epoch).
    Standing { peer_id: String, standing: Standing, at_ms: u64 },
    /// A standing no longer worth keeping (no different from a new peer's).
    Forget { peer_id: String },
}

/// The open database: a handle the router writes through.
#[derive(Debug)]
pub struct ReputationDb {
    tx: Option<SyncSender<Write>>,
    writer: Option<JoinHandle<()>>,
}

impl ReputationDb {
    /// Opens (or creates) the database at `path` and returns it with what it kept: the
    /// quarantines still in force and the standings not too old (the rest is dropped).
    /// The whole file is checked against redb's checksums first (it is small: at most
    /// [`MAX_RECORDS`] ids a table): a file damaged outside redb is refused as
    /// [`ReputationError::Corrupt`] instead of being trusted (where a plain open may panic
    /// inside redb); so is an existing empty file ([`ReputationError::Empty`]).
    pub fn open(path: &Path) -> Result<(ReputationDb, Kept), ReputationError> {
        let path_buf = || path.to_owned();
        let fail = |source: redb::Error| match source {
            redb::Error::Corrupted(detail) => ReputationError::Corrupt { path: path_buf(), detail },
            source => ReputationError::Open { path: path_buf(), source },
        };
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            return Err(ReputationError::Empty { path: path_buf() });
        }
        let db = Database::builder().set_check_integrity_on_open(true).create(path).map_err(|e| fail(e.into()))?;
        drop_v1_standings(&db).map_err(fail)?;
        migrate_v2_standings(&db).map_err(fail)?;
        let now = now_ms();
        let quarantined = prune(&db, now, MAX_RECORDS).map_err(fail)?;
        let standings = prune_standings(&db, now, MAX_RECORDS).map_err(fail)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("p2c2r-reputation".into())
            .spawn(move || write_loop(&db, &rx))
            .map_err(|e| fail(redb::Error::Io(e)))?;
        Ok((ReputationDb { tx: Some(tx), writer: Some(writer) }, Kept { quarantined, standings }))
    }

    /// Records that `peer_id` is quarantined for `duration` from now. Never blocks.
    pub fn quarantined(&self, peer_id: &str, duration: Duration) {
        let until_ms = now_ms().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self.queue(Write::Quarantine { peer_id: peer_id.to_owned(), until_ms }, "quarantine");
    }

    /// Records `peer_id`'s standing as it leaves. Never blocks.
    pub fn standing(&self, peer_id: &str, standing: Standing) {
        self.queue(Write::Standing { peer_id: peer_id.to_owned(), standing, at_ms: now_ms() }, "standing");
    }

    /// Forgets `peer_id`'s standing (it is a new peer's again). Never blocks.
    pub fn forget_standing(&self, peer_id: &str) {
        self.queue(Write::Forget { peer_id: peer_id.to_owned() }, "standing");
    }

    fn queue(&self, write: Write, what: &'static str) {
        let Some(tx) = &self.tx else { return };
        let (write, why) = match tx.try_send(write) {
            Ok(()) => return,
            Err(TrySendError::Full(write)) => (write, "reputation database behind; this is kept in memory only"),
            Err(TrySendError::Disconnected(write)) => {
                (write, "reputation database writer gone; this is kept in memory only")
            }
        };
        let (Write::Quarantine { peer_id, .. } | Write::Standing { peer_id, .. } | Write::Forget { peer_id }) = write;
        crate::warn_limited!("reputation: write dropped", peer_id, what, "{why}");
    }

    /// Writes what is queued and closes the database.
    pub fn close(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for ReputationDb {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The standings of departed peers, in memory, for the router: at most `max` ids, the least
/// recently updated forgotten first; one older than [`MAX_STANDING_AGE`] is never given
/// back. Every operation costs O(log n).
#[derive(Debug)]
pub struct Standings {
    by_peer: HashMap<String, Remembered>,
    /// Update order → peer id.
    order: BTreeMap<u64, String>,
    next: u64,
    max: usize,
}

#[derive(Debug)]
struct Remembered {
    standing: Standing,
    order: u64,
    at: Instant,
}

impl Standings {
    /// An empty table of at most `max` ids (at least 1).
    pub fn new(max: usize) -> Self {
        Standings { by_peer: HashMap::new(), order: BTreeMap::new(), next: 0, max: max.max(1) }
    }

    /// Remembers `peer_id`'s standing as of `at` (the most recent update of all).
    pub fn remember(&mut self, peer_id: &str, standing: Standing, at: Instant) {
        self.forget(peer_id);
        if self.by_peer.len() >= self.max
            && let Some((_, oldest)) = self.order.pop_first()
        {
            self.by_peer.remove(&oldest);
        }
        self.next += 1;
        self.order.insert(self.next, peer_id.to_owned());
        self.by_peer.insert(peer_id.to_owned(), Remembered { standing, order: self.next, at });
    }

    /// Forgets `peer_id`'s standing; returns whether there was one.
    pub fn forget(&mut self, peer_id: &str) -> bool {
        let Some(old) = self.by_peer.remove(peer_id) else { return false };
        self.order.remove(&old.order);
        true
    }

    /// `peer_id`'s standing, unless none is remembered or it is older than
    /// [`MAX_STANDING_AGE`] at `now`.
    pub fn recall(&self, peer_id: &str, now: Instant) -> Option<Standing> {
        let r = self.by_peer.get(peer_id)?;
        (now.saturating_duration_since(r.at) <= MAX_STANDING_AGE).then_some(r.standing)
    }
}

/// Wall-clock milliseconds since the Unix epoch: what the database and standings' ages
/// are written in.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Drops expired records, and the soonest-ending ones past `max`; returns the rest.
fn prune(db: &Database, now: u64, max: usize) -> Result<Vec<Quarantined>, redb::Error> {
    let txn = db.begin_write()?;
    let live = {
        let mut table = txn.open_table(QUARANTINE)?;
        let mut all = Vec::new();
        for row in table.iter()? {
            let (peer, until) = row?;
            all.push((peer.value().to_owned(), until.value()));
        }
        // Longest first: what is cut past the bound ends soonest.
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let keep = all.iter().take_while(|(_, until)| *until > now).count().min(max);
        for (peer, _) in &all[keep..] {
            table.remove(peer.as_str())?;
        }
        all.truncate(keep);
        all
    };
    txn.commit()?;
    Ok(live
        .into_iter()
        .map(|(peer_id, until)| Quarantined { peer_id, left: Duration::from_millis(until - now) })
        .collect())
}

/// Drops the standings older than [`MAX_STANDING_AGE`] at `now`, and the least recently
/// written past `max`; returns the rest, the least recently written first.
fn prune_standings(db: &Database, now: u64, max: usize) -> Result<Vec<KeptStanding>, redb::Error> {
    let max_age = u64::try_from(MAX_STANDING_AGE.as_millis()).unwrap_or(u64::MAX);
    let txn = db.begin_write()?;
    let kept = {
        let mut table = txn.open_table(STANDING)?;
        let mut all = Vec::new();
        for row in table.iter()? {
            let (peer, value) = row?;
            let (window, misses_in_a_row, verified, agreements, since_ms, at) = value.value();
            let standing = Standing { window, misses_in_a_row, verified, agreements, since_ms };
            all.push((peer.value().to_owned(), standing, at));
        }
        // Newest first: what is cut past the bound is the least recently written.
        all.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        let keep = all.iter().take_while(|(_, _, at)| now.saturating_sub(*at) <= max_age).count().min(max);
        for (peer, _, _) in &all[keep..] {
            table.remove(peer.as_str())?;
        }
        all.truncate(keep);
        all
    };
    txn.commit()?;
    Ok(kept
        .into_iter()
        .rev()
        .map(|(peer_id, standing, at)| KeptStanding {
            peer_id,
            standing,
            age: Duration::from_millis(now.saturating_sub(at)),
        })
        .collect())
}

/// Deletes the standing table of the format before [`STANDING_V2`], if the file has one.
fn drop_v1_standings(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    let existed = txn.delete_table(STANDING_V1)?;
    txn.commit()?;
    if existed {
        tracing::info!("reputation database: standings of the previous format dropped");
    }
    Ok(())
}

/// Carries the standings of the format before [`STANDING`] over into it, if the file has
/// them: an established peer keeps what it earned across the upgrade.
fn migrate_v2_standings(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    let moved = {
        let old = txn.open_table(STANDING_V2)?;
        let rows: Vec<_> = old
            .iter()?
            .map(|row| row.map(|(peer, value)| (peer.value().to_owned(), value.value())))
            .collect::<Result<_, _>>()?;
        drop(old);
        let mut new = txn.open_table(STANDING)?;
        for (peer, (window, misses, verified, at)) in &rows {
            // A peer already in the current table (written by a newer run) keeps that row.
            if new.get(peer.as_str())?.is_none() {
                new.insert(peer.as_str(), (*window, *misses, *verified, 0, *at, *at))?;
            }
        }
        rows.len()
    };
    txn.delete_table(STANDING_V2)?;
    txn.commit()?;
    if moved > 0 {
        tracing::info!(standings = moved, "reputation database: standings carried over to the current format");
    }
    Ok(())
}

fn write_loop(db: &Database, rx: &Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        // One transaction for everything already queued.
        let batch: Vec<_> = std::iter::once(first).chain(rx.try_iter().take(QUEUE)).collect();
        if let Err(e) = write(db, &batch, MAX_RECORDS) {
            tracing::error!(error = %e, "cannot write to the reputation database");
        }
    }
}

fn write(db: &Database, batch: &[Write], max: usize) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    let (quarantines_full, standings_full) = {
        let mut quarantine = txn.open_table(QUARANTINE)?;
        let mut standing = txn.open_table(STANDING)?;
        for write in batch {
            match write {
                Write::Quarantine { peer_id, until_ms } => {
                    let longer = quarantine.get(peer_id.as_str())?.is_none_or(|old| old.value() < *until_ms);
                    if longer {
                        quarantine.insert(peer_id.as_str(), until_ms)?;
                    }
                }
                Write::Standing { peer_id, standing: s, at_ms } => {
                    let row = (s.window, s.misses_in_a_row, s.verified, s.agreements, s.since_ms, *at_ms);
                    standing.insert(peer_id.as_str(), row)?;
                }
                Write::Forget { peer_id } => {
                    standing.remove(peer_id.as_str())?;
                }
            }
        }
        (quarantine.len()? > max as u64, standing.len()? > max as u64)
    };
    txn.commit()?;
    if quarantines_full {
        prune(db, now_ms(), max)?;
    }
    if standings_full {
        // Down to 15/16 of the bound: a full table is not read and sorted on every write.
        prune_standings(db, now_ms(), max - max / 16)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("p2c2r-reputation-{name}-{}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn quarantines_survive_a_reopen_and_expired_ones_are_dropped() {
        let path = temp("reopen");
        let (db, kept) = ReputationDb::open(&path).unwrap();
        assert_eq!(kept, Kept::default(), "created empty");
        db.quarantined("liar", Duration::from_secs(3600));
        db.quarantined("brief", Duration::ZERO);
        db.close();
        let (db, kept) = ReputationDb::open(&path).unwrap();
        let live = kept.quarantined;
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].peer_id, "liar");
        assert!(live[0].left > Duration::from_secs(3500) && live[0].left <= Duration::from_secs(3600));
        // A shorter quarantine does not cut a longer one short.
        db.quarantined("liar", Duration::from_secs(1));
        db.close();
        let live = ReputationDb::open(&path).unwrap().1.quarantined;
        assert!(live[0].left > Duration::from_secs(3500), "{live:?}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_longest() {
        let path = temp("bounded");
        let db = Database::create(&path).unwrap();
        let now = now_ms();
        let max = 100;
        let batch: Vec<Write> =
            (0..150u64).map(|i| Write::Quarantine { peer_id: format!("p{i}"), until_ms: now + 60_000 + i }).collect();
        write(&db, &batch, max).unwrap();
        let live = prune(&db, now, usize::MAX).unwrap();
        assert_eq!(live.len(), max, "the write that went past the bound pruned");
        assert!(live.iter().all(|q| q.peer_id != "p0"), "the soonest-ending went first");
        assert!(live.iter().any(|q| q.peer_id == "p149"));
        drop(db);
        let _ = std::fs::remove_file(&path);
    }

    fn standing(window: u32, misses_in_a_row: u32) -> Standing {
        Standing { window, misses_in_a_row, verified: u64::from(window) * 10, agreements: 3, since_ms: 1_000 }
    }

    #[test]
    fn an_empty_file_is_refused_not_taken_for_a_new_database() {
        let path = temp("empty");
        std::fs::write(&path, b"").unwrap();
        let error = ReputationDb::open(&path).unwrap_err();
        assert!(matches!(error, ReputationError::Empty { .. }), "{error}");
        assert!(error.to_string().contains("exists but is empty"), "{error}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "the file is left as it was");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_garbled_file_is_reported_corrupt_and_never_panics() {
        let path = temp("garbled");
        let (db, _) = ReputationDb::open(&path).unwrap();
        for i in 0..200 {
            db.quarantined(&format!("liar-{i}"), Duration::from_secs(3600));
            db.standing(&format!("slow-{i}"), standing(3, 2));
        }
        db.close();
        let clean = std::fs::read(&path).unwrap();
        // Garble one region at a time past the header: every open is an error or a
        // clean read, never a panic; and at least the pages holding data are caught.
        let mut corrupt = 0;
        let step = (clean.len() / 24).max(1);
        for at in (4096..clean.len()).step_by(step) {
            let mut bytes = clean.clone();
            for b in &mut bytes[at..(at + 64).min(clean.len())] {
                *b ^= 0x5a;
            }
            std::fs::write(&path, &bytes).unwrap();
            let opened = std::panic::catch_unwind(|| ReputationDb::open(&path).map(|(db, kept)| (db.close(), kept)));
            match opened.expect("opening a garbled file must not panic") {
                Err(ReputationError::Corrupt { .. }) => corrupt += 1,
                Err(other) => panic!("a garbled file must be reported corrupt, not: {other}"),
                Ok(_) => {}
            }
        }
        assert!(corrupt > 0, "no garbled region was caught");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn standings_of_the_previous_format_are_carried_over() {
        let path = temp("standing-v2");
        let at = now_ms() - 60_000;
        {
            let raw = Database::create(&path).unwrap();
            let txn = raw.begin_write().unwrap();
            txn.open_table(STANDING_V2).unwrap().insert("veteran", (6, 0, 900, at)).unwrap();
            txn.commit().unwrap();
        }
        let (db, kept) = ReputationDb::open(&path).unwrap();
        db.close();
        let [veteran] = &kept.standings[..] else { panic!("{:?}", kept.standings) };
        assert_eq!(veteran.peer_id, "veteran");
        let expected = Standing { window: 6, misses_in_a_row: 0, verified: 900, agreements: 0, since_ms: at };
        assert_eq!(veteran.standing, expected, "its answers kept; its age counted from the row");
        // Carried over once: the old table is gone, the new one holds it.
        let raw = Database::create(&path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&raw).unwrap();
        assert!(txn.open_table(STANDING_V2).is_err());
        assert_eq!(txn.open_table(STANDING).unwrap().len().unwrap(), 1);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn standings_survive_a_reopen_and_old_ones_are_dropped() {
        let path = temp("standing");
        let (db, _) = ReputationDb::open(&path).unwrap();
        db.standing("slow", standing(3, 2));
        db.standing("mended", standing(2, 1));
        db.forget_standing("mended");
        db.standing("slow", standing(2, 3));
        db.close();
        // One written long ago, straight into the file.
        let old = now_ms() - u64::try_from(MAX_STANDING_AGE.as_millis()).unwrap() - 60_000;
        let raw = Database::create(&path).unwrap();
        write(
            &raw,
            &[Write::Standing { peer_id: "ancient".into(), standing: standing(1, 7), at_ms: old }],
            MAX_RECORDS,
        )
        .unwrap();
        drop(raw);
        let (db, kept) = ReputationDb::open(&path).unwrap();
        assert!(kept.quarantined.is_empty());
        assert_eq!(kept.standings.len(), 1, "{:?}", kept.standings);
        assert_eq!((kept.standings[0].peer_id.as_str(), kept.standings[0].standing), ("slow", standing(2, 3)));
        assert!(kept.standings[0].age < Duration::from_secs(600));
        drop(db);
        // The old one went from the file too.
        let raw = Database::create(&path).unwrap();
        assert_eq!(redb::ReadableDatabase::begin_read(&raw).unwrap().open_table(STANDING).unwrap().len().unwrap(), 1);
        drop(raw);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_standing_table_is_bounded_and_keeps_the_most_recent() {
        let path = temp("standing-bounded");
        let db = Database::create(&path).unwrap();
        let now = now_ms();
        let max = 100;
        let batch: Vec<Write> = (0..150u64)
            .map(|i| Write::Standing { peer_id: format!("p{i}"), standing: standing(2, 1), at_ms: now - 1_000 + i })
            .collect();
        write(&db, &batch, max).unwrap();
        let kept = prune_standings(&db, now, usize::MAX).unwrap();
        assert_eq!(kept.len(), max - max / 16, "the write that went past the bound pruned");
        assert!(kept.iter().all(|k| k.peer_id != "p0"), "the least recently written went first");
        assert_eq!(kept.first().unwrap().peer_id, format!("p{}", 150 - kept.len()), "oldest first");
        assert_eq!(kept.last().unwrap().peer_id, "p149");
        drop(db);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_standings_in_memory_are_bounded_and_age() {
        let t0 = Instant::now();
        let mut table = Standings::new(3);
        for (i, peer) in ["a", "b", "c"].into_iter().enumerate() {
            table.remember(peer, standing(2, u32::try_from(i).unwrap()), t0);
        }
        // Updating "a" makes "b" the least recently updated: it goes first.
        table.remember("a", standing(5, 0), t0);
        table.remember("d", standing(1, 1), t0);
        assert_eq!(table.recall("b", t0), None);
        assert_eq!(table.recall("a", t0), Some(standing(5, 0)));
        assert_eq!(table.recall("c", t0), Some(standing(2, 2)));
        assert_eq!(table.recall("d", t0), Some(standing(1, 1)));
        assert!(table.forget("d"));
        assert!(!table.forget("d"));
        assert_eq!(table.recall("d", t0), None);
        // Too old to be given back.
        assert_eq!(table.recall("a", t0 + MAX_STANDING_AGE + Duration::from_secs(1)), None);
        assert_eq!((table.by_peer.len(), table.order.len()), (2, 2));
    }
}
