//! Who may connect, and as whom: credentials checked during the HTTP handshake, before
//! any WebSocket exists.
//!
//! A client presents a bearer token (`Authorization: Bearer <token>`, or `?token=` for
//! browsers, which cannot set headers on a WebSocket). A token is either
//! - a **JWT** (HS256) signed with a key of the auth file, carrying `sub` (the id),
//!   `role` (`gamer`, `peer` or `operator`) and `exp`: what a game backend mints for its
//!   players without talking to the coordinator; or
//! - a **long-lived secret** listed in the auth file with its role and id: how the
//!   operator enrols peers and operators.
//!
//! The auth file, one entry per line (`#` starts a comment):
//!
//! ```text
//! jwt-hs256 <secret of at least 32 bytes>     # verifies JWTs; several lines: key rotation
//! token peer rack-1 <secret of at least 16 bytes>
//! token operator grafana <secret>
//! revoke gamer alice                           # refuse this identity's tokens, JWTs included
//! ```
//!
//! [`Auth`] holds the parsed file and reloads it (SIGHUP, or when the file changes); a bad
//! file keeps the previous one in force. Secrets are looked up by their SHA-256 digest, so
//! no comparison runs over a secret's bytes. Without an auth file the coordinator is in
//! open mode: every connection is anonymous and may register any id that is not taken.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Shortest accepted JWT key, in bytes (HS256 wants at least its output size).
pub const MIN_JWT_KEY_BYTES: usize = 32;
/// Shortest accepted long-lived secret.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Clock skew tolerated on `exp`.
pub const JWT_LEEWAY_SECS: u64 = 5;

/// What a credential lets its holder be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submits tasks (`register_gamer` with the credential's id).
    Gamer,
    /// Runs tasks (`register_peer` with the credential's id).
    Peer,
    /// Reads `stats`, `/metrics` and the dashboard; registers as nothing.
    Operator,
}

impl Role {
    /// The spelling in tokens and the auth file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gamer => "gamer",
            Role::Peer => "peer",
            Role::Operator => "operator",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "gamer" => Some(Role::Gamer),
            "peer" => Some(Role::Peer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a verified credential says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What it may do.
    pub role: Role,
    /// The id it may register with (an operator's names it in logs).
    pub id: String,
}

/// A verified credential, as a connection keeps it (to re-check after a reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// Who it says.
    pub identity: Identity,
    /// A listed secret (by its digest), or a JWT.
    pub kind: CredentialKind,
}

/// How a credential was proven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A secret of the auth file; valid while the file lists it.
    Listed([u8; 32]),
    /// A JWT; valid until it expires (checked at connect) unless its identity is revoked.
    Jwt,
}

/// Why a credential was refused. Every variant is answered `401` with its text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Credentials are required and none was presented.
    #[error("credentials required: send `Authorization: Bearer <token>` (or ?token=<token>)")]
    Missing,
    /// The JWT's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The JWT's signature matches no key.
    #[error("token signature is not valid")]
    BadSignature,
    /// Not a JWT this coordinator accepts, nor a listed secret.
    #[error("token not recognised: {0}")]
    Invalid(String),
    /// The credential's identity is revoked.
    #[error("credential revoked")]
    Revoked,
}

/// The claims of a P2C2R JWT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The id the holder registers with.
    pub sub: String,
    /// `gamer`, `peer` or `operator`.
    pub role: Role,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// A parsed auth file.
#[derive(Default)]
pub struct Credentials {
    listed: HashMap<[u8; 32], Identity>,
    jwt_keys: Vec<(DecodingKey, EncodingKey)>,
    revoked: HashSet<(Role, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("Credentials")
            .field("listed", &self.listed.len())
            .field("jwt_keys", &self.jwt_keys.len())
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Credentials {
    /// Parses an auth file's text (see the module docs); errors name the line.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let mut c = Credentials::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split_once('#').map_or(line, |(before, _)| before).trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = |reason: String| format!("line {}: {reason}", n + 1);
            let role = |text: &str| Role::parse(text).ok_or_else(|| at(format!("unknown role {text:?}")));
            match fields.as_slice() {
                ["jwt-hs256", secret] => {
                    if secret.len() < MIN_JWT_KEY_BYTES {
                        return Err(at(format!("a jwt-hs256 key needs at least {MIN_JWT_KEY_BYTES} bytes")));
                    }
                    let decoding = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| at(e.to_string()))?;
                    let encoding = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| at(e.to_string()))?;
                    c.jwt_keys.push((decoding, encoding));
                }
                ["token", r, id, secret] => {
                    let identity = Identity { role: role(r)?, id: (*id).to_owned() };
                    if secret.len() < MIN_TOKEN_BYTES {
                        return Err(at(format!("a token needs at least {MIN_TOKEN_BYTES} characters")));
                    }
                    if id.len() > p2c2r_protocol::limits::MAX_ID_BYTES {
                        return Err(at("id too long".into()));
                    }
                    if c.listed.insert(digest(secret), identity).is_some() {
                        return Err(at("this secret is listed twice".into()));
                    }
                }
                ["revoke", r, id] => {
                    c.revoked.insert((role(r)?, (*id).to_owned()));
                }
                _ => {
                    return Err(at("expected `jwt-hs256 SECRET`, `token ROLE ID SECRET` or `revoke ROLE ID`".into()));
                }
            }
        }
        Ok(c)
    }

    /// Checks a presented token.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Credential, AuthError> {
        let credential = if let Some(identity) = self.listed.get(&digest(token)) {
            Credential { identity: identity.clone(), kind: CredentialKind::Listed(digest(token)) }
        } else if token.split('.').count() == 3 && !self.jwt_keys.is_empty() {
            Credential { identity: self.verify_jwt(token, now_unix)?, kind: CredentialKind::Jwt }
        } else {
            return Err(AuthError::Invalid("neither a listed secret nor a JWT".into()));
        };
        if self.revoked.contains(&(credential.identity.role, credential.identity.id.clone())) {
            return Err(AuthError::Revoked);
        }
        Ok(credential)
    }

    fn verify_jwt(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // `exp` is checked here against the given clock (testable), not jsonwebtoken's.
        validation.validate_exp = false;
        let mut last = AuthError::BadSignature;
        for (key, _) in &self.jwt_keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.exp.saturating_add(JWT_LEEWAY_SECS) < now_unix {
                        return Err(AuthError::Expired);
                    }
                    if claims.sub.is_empty() || claims.sub.len() > p2c2r_protocol::limits::MAX_ID_BYTES {
                        return Err(AuthError::Invalid("sub must be a non-empty id".into()));
                    }
                    return Ok(Identity { role: claims.role, id: claims.sub });
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::BadSignature,
                        kind => AuthError::Invalid(format!("{kind:?}")),
                    };
                    if !matches!(last, AuthError::BadSignature) {
                        // Well signed but malformed claims: no other key will do better.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// Whether a credential accepted earlier still holds under this file (for live
    /// connections after a reload): a listed secret must still be listed for the same
    /// identity, and no identity may be revoked.
    pub fn still_valid(&self, credential: &Credential) -> bool {
        let identity = &credential.identity;
        if self.revoked.contains(&(identity.role, identity.id.clone())) {
            return false;
        }
        match &credential.kind {
            CredentialKind::Listed(d) => self.listed.get(d) == Some(identity),
            CredentialKind::Jwt => true,
        }
    }

    /// Signs a JWT for `role` and `id`, valid for `ttl`, with the file's first key: what a
    /// game backend does with its own JWT library (`coordinator --mint-token`).
    pub fn mint(&self, role: Role, id: &str, ttl: Duration, now_unix: u64) -> Result<String, String> {
        let (_, key) = self.jwt_keys.first().ok_or("the auth file has no jwt-hs256 key")?;
        let claims = Claims { sub: id.to_owned(), role, exp: now_unix.saturating_add(ttl.as_secs()) };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).map_err(|e| e.to_string())
    }
}

/// The current time in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The credentials in force, reloadable; see the module docs.
#[derive(Debug)]
pub struct Auth {
    path: Option<PathBuf>,
    current: RwLock<Arc<Credentials>>,
    /// The file's modification time and length when last loaded.
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Auth {
    /// Open mode: no credentials.
    pub fn open() -> Auth {
        Auth { path: None, current: RwLock::new(Arc::default()), stamp: Mutex::new(None) }
    }

    /// Credentials from `path`; fails when it cannot be read or parsed.
    pub fn from_file(path: &Path) -> Result<Auth, String> {
        let auth = Auth { path: Some(path.to_owned()), current: RwLock::new(Arc::default()), stamp: Mutex::new(None) };
        auth.reload()?;
        Ok(auth)
    }

    /// Whether credentials are required.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// The credentials in force.
    pub fn current(&self) -> Arc<Credentials> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks what a connection presented: `Ok(None)` in open mode (tokens are ignored
    /// there), the credential otherwise.
    pub fn verify(&self, token: Option<&str>) -> Result<Option<Credential>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        self.current().verify(token, unix_now()).map(Some)
    }

    /// Reads the file again; on an error the previous credentials stay in force.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        let before = stamp(path);
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed = Credentials::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(parsed);
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = before;
        Ok(())
    }

    /// Reloads when the file's modification time or length changed since the last load;
    /// returns whether it did (`Err` when the new file is bad).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(path) = &self.path else { return Ok(false) };
        let now = stamp(path);
        if now.is_none() || now == *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }
}

/// The bearer token a request presents: the `Authorization: Bearer` header, else the
/// `token` query parameter.
pub fn bearer(request: &p2c2r_ops::http::Request) -> Option<&str> {
    if let Some(value) = request.header("authorization") {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    request.query_param("token")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";

    fn creds() -> Credentials {
        Credentials::parse(&format!(
            "# the operator's file\njwt-hs256 {KEY}\ntoken peer rack-1 peer-secret-0123456789\n\
             token operator ops ops-secret-0123456789  # comment\nrevoke gamer mallory\n"
        ))
        .unwrap()
    }

    #[test]
    fn listed_secrets_and_jwts_verify_to_their_identity() {
        let c = creds();
        let now = 1_800_000_000;
        let peer = c.verify("peer-secret-0123456789", now).unwrap();
        assert_eq!(peer.identity, Identity { role: Role::Peer, id: "rack-1".into() });
        let jwt = c.mint(Role::Gamer, "alice", Duration::from_secs(60), now).unwrap();
        let gamer = c.verify(&jwt, now + 30).unwrap();
        assert_eq!(gamer.identity, Identity { role: Role::Gamer, id: "alice".into() });
        assert_eq!(gamer.kind, CredentialKind::Jwt);
    }

    #[test]
    fn expired_forged_revoked_and_unknown_tokens_are_refused() {
        let c = creds();
        let now = 1_800_000_000;
        let jwt = c.mint(Role::Gamer, "alice", Duration::from_secs(60), now).unwrap();
        assert_eq!(c.verify(&jwt, now + 60 + JWT_LEEWAY_SECS + 1), Err(AuthError::Expired));
        let other = Credentials::parse(&format!("jwt-hs256 {}", "x".repeat(40))).unwrap();
        let forged = other.mint(Role::Operator, "alice", Duration::from_secs(60), now).unwrap();
        assert_eq!(c.verify(&forged, now), Err(AuthError::BadSignature));
        let mut tampered = jwt.clone();
        tampered.insert(tampered.find('.').unwrap() + 3, 'A');
        assert!(c.verify(&tampered, now).is_err());
        let revoked = c.mint(Role::Gamer, "mallory", Duration::from_secs(60), now).unwrap();
        assert_eq!(c.verify(&revoked, now), Err(AuthError::Revoked));
        assert!(matches!(c.verify("guess", now), Err(AuthError::Invalid(_))));
        // An unsigned token ("alg": "none") is not accepted.
        let none = format!("eyJhbGciOiJub25lIn0.{}.", jwt.split('.').nth(1).unwrap());
        assert!(c.verify(&none, now).is_err());
    }

    #[test]
    fn a_reload_can_invalidate_live_credentials() {
        let c = creds();
        let peer = c.verify("peer-secret-0123456789", 0).unwrap();
        assert!(c.still_valid(&peer));
        let without = Credentials::parse(&format!("jwt-hs256 {KEY}\nrevoke peer rack-2")).unwrap();
        assert!(!without.still_valid(&peer), "the secret is no longer listed");
        let jwt = c.verify(&c.mint(Role::Gamer, "bob", Duration::from_secs(60), 0).unwrap(), 0).unwrap();
        assert!(without.still_valid(&jwt));
        let revoking = Credentials::parse(&format!("jwt-hs256 {KEY}\nrevoke gamer bob")).unwrap();
        assert!(!revoking.still_valid(&jwt));
    }

    #[test]
    fn bad_files_name_the_line() {
        assert!(Credentials::parse("jwt-hs256 short").unwrap_err().starts_with("line 1:"));
        assert!(Credentials::parse("\n\ntoken wizard x 0123456789abcdef").unwrap_err().starts_with("line 3:"));
        assert!(Credentials::parse("token peer a short").unwrap_err().contains("16"));
        assert!(Credentials::parse("frobnicate").is_err());
        let twice = "token peer a 0123456789abcdef\ntoken peer b 0123456789abcdef";
        assert!(Credentials::parse(twice).unwrap_err().starts_with("line 2:"));
        assert!(format!("{:?}", creds()).contains("jwt_keys: 1"), "debug output shows counts, never keys");
    }

    #[test]
    fn the_bearer_comes_from_the_header_or_the_query() {
        let request = |headers: Vec<(&str, &str)>, query: Option<&str>| p2c2r_ops::http::Request {
            method: "GET".into(),
            path: "/".into(),
            query: query.map(str::to_owned),
            headers: headers.into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
        };
        assert_eq!(bearer(&request(vec![("authorization", "Bearer abc")], None)), Some("abc"));
        assert_eq!(bearer(&request(vec![("authorization", "bearer  abc ")], None)), Some("abc"));
        assert_eq!(bearer(&request(vec![("authorization", "Basic abc")], Some("token=x"))), None);
        assert_eq!(bearer(&request(vec![], Some("a=1&token=xyz"))), Some("xyz"));
        assert_eq!(bearer(&request(vec![], None)), None);
    }
}
