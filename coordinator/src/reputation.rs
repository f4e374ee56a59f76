//! Peer reputation that outlives the process: which peer ids are quarantined, and until
//! when, kept in an embedded database ([redb], one file at `Config::reputation_db`,
//! created on first start), so a peer quarantined for lying or for swallowing tasks cannot
//! wait out a coordinator restart, as BOINC keeps its host records.
//!
//! The router decides; this module only remembers. Writes go to a bounded queue served by
//! a thread of their own, so the router never waits on the disk under its lock; a full
//! queue drops the write (logged) and the quarantine still holds in memory until the
//! restart. The table is bounded like the router's: at most [`MAX_RECORDS`] ids, expired
//! ones dropped first, then the ones whose quarantine ends soonest.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Peer id → end of its quarantine, in milliseconds since the Unix epoch (wall clock:
/// it must mean the same after a restart).
const QUARANTINE: TableDefinition<&str, u64> = TableDefinition::new("quarantine");

/// Peer ids kept at most: the router's in-memory bound.
pub const MAX_RECORDS: usize = crate::router::MAX_QUARANTINED;

/// Writes waiting for the disk at most.
const QUEUE: usize = 1024;

/// Why the reputation database could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the reputation database {path}: {source}")]
pub struct ReputationError {
    /// The file.
    pub path: PathBuf,
    /// What redb reported.
    #[source]
    pub source: redb::Error,
}

/// A quarantine read back at start: the peer id and how long it still lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The peer id.
    pub peer_id: String,
    /// Time left.
    pub left: Duration,
}

/// The open database: a handle the router writes through.
#[derive(Debug)]
pub struct ReputationDb {
    tx: Option<SyncSender<(String, u64)>>,
    writer: Option<JoinHandle<()>>,
}

impl ReputationDb {
    /// Opens (or creates) the database at `path` and returns it with the quarantines still
    /// in force, dropping the expired ones.
    pub fn open(path: &Path) -> Result<(ReputationDb, Vec<Quarantined>), ReputationError> {
        let fail = |source: redb::Error| ReputationError { path: path.to_owned(), source };
        let db = Database::create(path).map_err(|e| fail(e.into()))?;
        let live = prune(&db, now_ms(), MAX_RECORDS).map_err(fail)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("p2c2r-reputation".into())
            .spawn(move || write_loop(&db, &rx))
            .map_err(|e| fail(redb::Error::Io(e)))?;
        Ok((ReputationDb { tx: Some(tx), writer: Some(writer) }, live))
    }

    /// Records that `peer_id` is quarantined for `duration` from now. Never blocks.
    pub fn quarantined(&self, peer_id: &str, duration: Duration) {
        let until = now_ms().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        let Some(tx) = &self.tx else { return };
        match tx.try_send((peer_id.to_owned(), until)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(peer_id, "reputation database behind; this quarantine is kept in memory only");
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(peer_id, "reputation database writer gone; this quarantine is kept in memory only");
            }
        }
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

fn now_ms() -> u64 {
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

fn write_loop(db: &Database, rx: &Receiver<(String, u64)>) {
    while let Ok(first) = rx.recv() {
        // One transaction for everything already queued.
        let batch: Vec<_> = std::iter::once(first).chain(rx.try_iter().take(QUEUE)).collect();
        if let Err(e) = write(db, &batch, MAX_RECORDS) {
            tracing::error!(error = %e, "cannot write to the reputation database");
        }
    }
}

fn write(db: &Database, batch: &[(String, u64)], max: usize) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    let full = {
        let mut table = txn.open_table(QUARANTINE)?;
        for (peer, until) in batch {
            let longer = table.get(peer.as_str())?.is_none_or(|old| old.value() < *until);
            if longer {
                table.insert(peer.as_str(), until)?;
            }
        }
        table.len()? > max as u64
    };
    txn.commit()?;
    if full {
        prune(db, now_ms(), max)?;
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
        let (db, live) = ReputationDb::open(&path).unwrap();
        assert!(live.is_empty(), "created empty");
        db.quarantined("liar", Duration::from_secs(3600));
        db.quarantined("brief", Duration::ZERO);
        db.close();
        let (db, live) = ReputationDb::open(&path).unwrap();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].peer_id, "liar");
        assert!(live[0].left > Duration::from_secs(3500) && live[0].left <= Duration::from_secs(3600));
        // A shorter quarantine does not cut a longer one short.
        db.quarantined("liar", Duration::from_secs(1));
        db.close();
        let (_, live) = ReputationDb::open(&path).unwrap();
        assert!(live[0].left > Duration::from_secs(3500), "{live:?}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_longest() {
        let path = temp("bounded");
        let db = Database::create(&path).unwrap();
        let now = now_ms();
        let max = 100;
        let batch: Vec<(String, u64)> = (0..150u64).map(|i| (format!("p{i}"), now + 60_000 + i)).collect();
        write(&db, &batch, max).unwrap();
        let live = prune(&db, now, usize::MAX).unwrap();
        assert_eq!(live.len(), max, "the write that went past the bound pruned");
        assert!(live.iter().all(|q| q.peer_id != "p0"), "the soonest-ending went first");
        assert!(live.iter().any(|q| q.peer_id == "p149"));
        drop(db);
        let _ = std::fs::remove_file(&path);
    }
}
