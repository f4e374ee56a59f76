//! Which copy of a gamer's task or session the scheduler holds.
//!
//! A replicated session runs on several peers at once (see [`crate::replication`]): each
//! replica is a session of its own to the scheduler, and each replica's copy of a tick a
//! task of its own. A [`CopyId`] names one: the gamer's own id and the replica it belongs
//! to. Replica 0 is the session's first replica, and every task and session that is not
//! replicated, so those are named by the gamer's id alone.

use std::fmt;

/// The gamer's id for a task or session, and which replica's copy it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CopyId {
    /// The gamer's own id (what peers and the gamer see).
    pub id: String,
    /// The replica generation: 0 for the first replica and for anything unreplicated.
    pub replica: u32,
}

impl CopyId {
    /// A task or session that is not a later replica's copy.
    pub fn plain(id: impl Into<String>) -> Self {
        CopyId { id: id.into(), replica: 0 }
    }

    /// Replica `replica`'s copy of `id`.
    pub fn replica(id: impl Into<String>, replica: u32) -> Self {
        CopyId { id: id.into(), replica }
    }
}

impl From<&str> for CopyId {
    fn from(id: &str) -> Self {
        CopyId::plain(id)
    }
}

impl From<String> for CopyId {
    fn from(id: String) -> Self {
        CopyId::plain(id)
    }
}

/// The gamer's id, and `#replica` for a later replica's copy (for logs).
impl fmt::Display for CopyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.replica {
            0 => f.write_str(&self.id),
            r => write!(f, "{}#{r}", self.id),
        }
    }
}

/// A plain id equals the copy that is not a later replica's.
impl PartialEq<str> for CopyId {
    fn eq(&self, other: &str) -> bool {
        self.replica == 0 && self.id == other
    }
}

impl PartialEq<&str> for CopyId {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_of_one_id_are_different_copies_and_only_replica_0_is_the_plain_id() {
        let first = CopyId::plain("w");
        let second = CopyId::replica("w", 1);
        assert_ne!(first, second);
        assert_eq!(first, "w");
        assert_ne!(second, "w");
        assert_eq!(second.to_string(), "w#1");
        // An id holding the separator a string encoding would use is just an id.
        assert_ne!(CopyId::plain("w#1"), second);
    }
}
