//! How the fleet's key-value keys name things. A NATS key allows only
//! `[-/_=.a-zA-Z0-9]`, while an id is any UTF-8 of at most
//! [`p2c2r_protocol::limits::MAX_ID_BYTES`]: ids travel as lower-case hex, after a
//! prefix that says what they name. Pure.

use crate::auth::Role;
use crate::ids::Kind;

/// `id`'s bytes as lower-case hex.
pub fn hex(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The id whose bytes `hex` spells; `None` when it is not hex of UTF-8.
pub fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

fn kind_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Gamer => "g",
        Kind::Peer => "p",
    }
}

/// The key of `id`'s claim (the ids bucket).
pub fn claim(kind: Kind, id: &str) -> String {
    format!("{}.{}", kind_prefix(kind), hex(id))
}

/// What a claim's key names.
pub fn parse_claim(key: &str) -> Option<(Kind, String)> {
    let (prefix, id) = key.split_once('.')?;
    let kind = match prefix {
        "g" => Kind::Gamer,
        "p" => Kind::Peer,
        _ => return None,
    };
    Some((kind, unhex(id)?))
}

/// The key of a peer's quarantine.
pub fn peer(id: &str) -> String {
    format!("p.{}", hex(id))
}

/// The peer a quarantine's key names.
pub fn parse_peer(key: &str) -> Option<String> {
    unhex(key.strip_prefix("p.")?)
}

/// The key of an identity revoked by coordinator `by` (each coordinator's revocations
/// under keys of its own; `by` is a coordinator name, already key-safe).
pub fn revocation(role: Role, id: &str, by: &str) -> String {
    format!("{}.{}.{by}", role.as_str(), hex(id))
}

/// The identity a revocation's key names, and the coordinator that revoked it.
pub fn parse_revocation(key: &str) -> Option<(Role, String, String)> {
    let mut parts = key.splitn(3, '.');
    let (role, id, by) = (parts.next()?, parts.next()?, parts.next()?);
    Some((Role::parse(role)?, unhex(id)?, by.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_round_trips_through_a_key_nats_accepts() {
        for id in ["alice", "", "a.b*c>d e", "ünï€ode", "\0x", &"z".repeat(128)] {
            for kind in [Kind::Gamer, Kind::Peer] {
                let key = claim(kind, id);
                assert!(key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'g' || b == b'p'), "{key}");
                assert_eq!(parse_claim(&key), Some((kind, id.to_owned())));
            }
            assert_eq!(parse_peer(&peer(id)), Some(id.to_owned()));
            let key = revocation(Role::Gamer, id, "eu-1");
            assert_eq!(parse_revocation(&key), Some((Role::Gamer, id.to_owned(), "eu-1".to_owned())));
        }
    }

    #[test]
    fn keys_that_name_nothing_are_refused() {
        for key in ["", "g", "x.61", "g.6", "g.zz", "g.ff", "operator"] {
            assert_eq!(parse_claim(key), None, "{key}");
        }
        assert_eq!(parse_peer("g.61"), None);
        assert_eq!(parse_revocation("admin.61.c1"), None);
        assert_eq!(parse_revocation("gamer.61"), None, "who revoked it is part of the key");
    }
}
