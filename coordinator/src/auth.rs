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
//! jwt-hs256 <secret of at least 32 bytes>           # verifies gamer JWTs; several: rotation
//! jwt-hs256 <another secret> gamer,operator         # a key may be trusted for more roles
//! token peer rack-1 <secret of at least 16 bytes>
//! token operator grafana <secret>
//! revoke gamer alice                                # refuse this identity's tokens, JWTs included
//! ```
//!
//! A JWT key signs **gamer** tokens only unless its line names other roles: the key a game
//! backend holds must not be able to mint a peer or an operator. Secrets contain no
//! whitespace and no `#` (which starts a comment only at a line's start or after
//! whitespace).
//!
//! [`Auth`] holds the parsed file and reloads it (SIGHUP, or when the file changes); a bad
//! file keeps the previous one in force. Secrets are looked up by their SHA-256 digest, so
//! no comparison runs over a secret's bytes. Without an auth file the coordinator is in
//! open mode: every connection is anonymous and may register any id that is not taken.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The line without its comment: `#` at the start or after whitespace.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

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

    /// Reads the spelling of [`Role::as_str`].
    pub fn parse(text: &str) -> Option<Role> {
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
    /// A JWT, signed by the key with this SHA-256 digest; checked for expiry at connect,
    /// and valid on a live connection while that key stays trusted for its role and its
    /// identity is not revoked.
    Jwt([u8; 32]),
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
    /// Not a JWT this coordinator accepts, nor a listed secret (the reason is one of a
    /// few fixed texts: nothing the client sent is echoed).
    #[error("token not recognised: {0}")]
    Invalid(&'static str),
    /// A well-signed JWT for a role its key is not trusted for.
    #[error("this token's signing key may not grant the {0} role")]
    RoleNotAllowed(Role),
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
#[derive(Clone, Default)]
pub struct Credentials {
    listed: HashMap<[u8; 32], Identity>,
    jwt_keys: Vec<JwtKey>,
    revoked: HashSet<(Role, String)>,
}

/// One `jwt-hs256` line.
#[derive(Clone)]
struct JwtKey {
    decoding: DecodingKey,
    encoding: EncodingKey,
    /// The digest of the secret, to recognise the key across reloads.
    digest: [u8; 32],
    /// The roles its tokens may carry.
    roles: Vec<Role>,
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
            let line = strip_comment(line).trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = |reason: String| format!("line {}: {reason}", n + 1);
            let role = |text: &str| Role::parse(text).ok_or_else(|| at(format!("unknown role {text:?}")));
            match fields.as_slice() {
                ["jwt-hs256", secret, rest @ ..] if rest.len() <= 1 => {
                    if secret.len() < MIN_JWT_KEY_BYTES {
                        return Err(at(format!("a jwt-hs256 key needs at least {MIN_JWT_KEY_BYTES} bytes")));
                    }
                    let roles = match rest.first() {
                        None => vec![Role::Gamer],
                        Some(list) => list.split(',').map(role).collect::<Result<Vec<_>, _>>()?,
                    };
                    let decoding = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| at(e.to_string()))?;
                    let encoding = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| at(e.to_string()))?;
                    c.jwt_keys.push(JwtKey { decoding, encoding, digest: digest(secret), roles });
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
                    return Err(at(
                        "expected `jwt-hs256 SECRET [ROLES]`, `token ROLE ID SECRET` or `revoke ROLE ID`".into()
                    ));
                }
            }
        }
        Ok(c)
    }

    /// The identities this file revokes (what a federated coordinator tells the fleet).
    pub fn revoked(&self) -> &HashSet<(Role, String)> {
        &self.revoked
    }

    /// These credentials with `more` identities revoked too (the fleet's revocations).
    pub fn revoking(&self, more: &HashSet<(Role, String)>) -> Credentials {
        let mut c = self.clone();
        c.revoked.extend(more.iter().cloned());
        c
    }

    /// Checks a presented token.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Credential, AuthError> {
        let credential = if let Some(identity) = self.listed.get(&digest(token)) {
            Credential { identity: identity.clone(), kind: CredentialKind::Listed(digest(token)) }
        } else if token.split('.').count() == 3 && !self.jwt_keys.is_empty() {
            let (identity, key) = self.verify_jwt(token, now_unix)?;
            Credential { identity, kind: CredentialKind::Jwt(key) }
        } else {
            return Err(AuthError::Invalid("neither a listed secret nor a JWT"));
        };
        if self.revoked.contains(&(credential.identity.role, credential.identity.id.clone())) {
            return Err(AuthError::Revoked);
        }
        Ok(credential)
    }

    fn verify_jwt(&self, token: &str, now_unix: u64) -> Result<(Identity, [u8; 32]), AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // `exp` is checked here against the given clock (testable), not jsonwebtoken's.
        validation.validate_exp = false;
        let mut last = AuthError::BadSignature;
        for key in &self.jwt_keys {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.exp.saturating_add(JWT_LEEWAY_SECS) < now_unix {
                        return Err(AuthError::Expired);
                    }
                    if claims.sub.is_empty() || claims.sub.len() > p2c2r_protocol::limits::MAX_ID_BYTES {
                        return Err(AuthError::Invalid("sub must be a non-empty id"));
                    }
                    if !key.roles.contains(&claims.role) {
                        return Err(AuthError::RoleNotAllowed(claims.role));
                    }
                    return Ok((Identity { role: claims.role, id: claims.sub }, key.digest));
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::BadSignature,
                        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
                            AuthError::Invalid("the claims must be sub, role (gamer, peer or operator) and exp")
                        }
                        _ => AuthError::Invalid("not a well-formed HS256 JWT"),
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
            CredentialKind::Jwt(key) => {
                self.jwt_keys.iter().any(|k| k.digest == *key && k.roles.contains(&identity.role))
            }
        }
    }

    /// Signs a JWT for `role` and `id`, valid for `ttl`, with the first key trusted for
    /// that role: what a
    /// game backend does with its own JWT library (`coordinator --mint-token`).
    pub fn mint(&self, role: Role, id: &str, ttl: Duration, now_unix: u64) -> Result<String, String> {
        let key = self
            .jwt_keys
            .iter()
            .find(|k| k.roles.contains(&role))
            .ok_or_else(|| format!("the auth file has no jwt-hs256 key trusted for the {role} role"))?;
        let claims = Claims { sub: id.to_owned(), role, exp: now_unix.saturating_add(ttl.as_secs()) };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key.encoding).map_err(|e| e.to_string())
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
    /// The file as last loaded.
    file: RwLock<Arc<Credentials>>,
    /// Identities other coordinators of the fleet revoke ([`Auth::set_fleet_revoked`]).
    fleet_revoked: RwLock<HashSet<(Role, String)>>,
    /// The file's credentials with the fleet's revocations: what is in force.
    current: RwLock<Arc<Credentials>>,
    /// Held while `current` is computed, so a reload and a fleet update at once cannot
    /// leave either out.
    combining: Mutex<()>,
    /// The digest of the file's contents when last read (loaded or refused), so a change
    /// is noticed whatever the file system's timestamps, and a bad file is reported once.
    seen: Mutex<Option<[u8; 32]>>,
}

impl Auth {
    /// Open mode: no credentials.
    pub fn open() -> Auth {
        Auth {
            path: None,
            file: RwLock::default(),
            fleet_revoked: RwLock::default(),
            current: RwLock::default(),
            combining: Mutex::new(()),
            seen: Mutex::new(None),
        }
    }

    /// Credentials from `path`; fails when it cannot be read or parsed.
    pub fn from_file(path: &Path) -> Result<Auth, String> {
        let auth = Auth { path: Some(path.to_owned()), ..Auth::open() };
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
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.load(path, &text)
    }

    fn load(&self, path: &Path, text: &str) -> Result<(), String> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest(text));
        let parsed = Credentials::parse(text).map_err(|e| format!("{}: {e}", path.display()))?;
        let _combining = self.combining.lock().unwrap_or_else(|p| p.into_inner());
        *self.file.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(parsed);
        self.combine();
        Ok(())
    }

    /// The credentials of the file alone (without the fleet's revocations).
    pub fn file(&self) -> Arc<Credentials> {
        self.file.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the identities the rest of the fleet revokes; they are refused here as if this
    /// coordinator's file revoked them (call [`crate::Router::revalidate`] after).
    pub fn set_fleet_revoked(&self, revoked: HashSet<(Role, String)>) {
        let _combining = self.combining.lock().unwrap_or_else(|p| p.into_inner());
        *self.fleet_revoked.write().unwrap_or_else(|p| p.into_inner()) = revoked;
        self.combine();
    }

    /// Computes what is in force; the caller holds `combining`.
    fn combine(&self) {
        let file = self.file();
        let fleet = self.fleet_revoked.read().unwrap_or_else(|p| p.into_inner());
        let combined = if fleet.is_empty() { file } else { Arc::new(file.revoking(&fleet)) };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = combined;
    }

    /// Reloads when the file's contents changed since they were last read; returns whether
    /// it did (`Err` once for a new bad file, then nothing until it changes again).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(path) = &self.path else { return Ok(false) };
        // A missing or unreadable file keeps the credentials in force (an editor's
        // rename-over-save passes through this).
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(false) };
        if Some(digest(&text)) == *self.seen.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        self.load(path, &text).map(|()| true)
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
        assert!(matches!(gamer.kind, CredentialKind::Jwt(_)));
    }

    #[test]
    fn expired_forged_revoked_and_unknown_tokens_are_refused() {
        let c = creds();
        let now = 1_800_000_000;
        let jwt = c.mint(Role::Gamer, "alice", Duration::from_secs(60), now).unwrap();
        assert_eq!(c.verify(&jwt, now + 60 + JWT_LEEWAY_SECS + 1), Err(AuthError::Expired));
        let other = Credentials::parse(&format!("jwt-hs256 {} gamer,operator", "x".repeat(40))).unwrap();
        let forged = other.mint(Role::Operator, "alice", Duration::from_secs(60), now).unwrap();
        assert_eq!(c.verify(&forged, now), Err(AuthError::BadSignature));
        let mut tampered = jwt.clone();
        tampered.insert(tampered.find('.').unwrap() + 3, 'A');
        assert!(c.verify(&tampered, now).is_err());
        let revoked = c.mint(Role::Gamer, "mallory", Duration::from_secs(60), now).unwrap();
        assert_eq!(c.verify(&revoked, now), Err(AuthError::Revoked));
        assert!(matches!(c.verify("guess", now), Err(AuthError::Invalid(_))));
        // The gamer key cannot mint a peer or an operator, even well signed.
        let same_key_for_peers = Credentials::parse(&format!("jwt-hs256 {KEY} gamer,peer")).unwrap();
        let peer_token = same_key_for_peers.mint(Role::Peer, "rack-1", Duration::from_secs(60), now).unwrap();
        assert_eq!(c.verify(&peer_token, now), Err(AuthError::RoleNotAllowed(Role::Peer)));
        assert_eq!(same_key_for_peers.verify(&peer_token, now).unwrap().identity.role, Role::Peer);
        assert!(c.mint(Role::Operator, "x", Duration::from_secs(1), now).is_err(), "no key for operators");
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
        let rotated = Credentials::parse(&format!("jwt-hs256 {}", "n".repeat(40))).unwrap();
        assert!(!rotated.still_valid(&jwt), "the key that signed it is gone");
    }

    #[test]
    fn a_hash_inside_a_secret_is_not_a_comment() {
        let c = Credentials::parse("token peer p abc#def0123456789xyz   # the comment\n# whole line").unwrap();
        assert!(c.verify("abc#def0123456789xyz", 0).is_ok());
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
            head_len: 0,
        };
        assert_eq!(bearer(&request(vec![("authorization", "Bearer abc")], None)), Some("abc"));
        assert_eq!(bearer(&request(vec![("authorization", "bearer  abc ")], None)), Some("abc"));
        assert_eq!(bearer(&request(vec![("authorization", "Basic abc")], Some("token=x"))), None);
        assert_eq!(bearer(&request(vec![], Some("a=1&token=xyz"))), Some("xyz"));
        assert_eq!(bearer(&request(vec![], None)), None);
    }
}
