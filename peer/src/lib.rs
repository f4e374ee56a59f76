//! P2C2R peer (filled in by the peer issue).
