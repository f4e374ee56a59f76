//! How a P2C2R client reaches a coordinator.
//!
//! Peers (the `peer` crate) and gamers (the `p2c2r_client` crate, which the Bevy plugin
//! uses) both open one WebSocket to the coordinator with [`connect`], and wait between
//! reconnection attempts with the same [`Backoff`]:
//!
//! - `ws://HOST:PORT` is plain TCP; `wss://HOST:PORT` is TLS (rustls with the `ring`
//!   provider). The server's certificate is checked against the certificates of
//!   [`ConnectOptions::ca_file`] when it is set (PEM, one or more certificates: a private
//!   CA or a self-signed coordinator certificate), otherwise against the public web PKI
//!   roots (Mozilla's, built in).
//! - A [`Credential`] (an inline token, or a file holding one, read afresh on every
//!   connect so a renewed token is picked up without a restart) is sent in the upgrade
//!   request as `Authorization: Bearer <token>`. Tokens are opaque to clients.
//! - A coordinator that refuses the token answers the upgrade with an HTTP status
//!   (401/403): that is [`ConnectError::Refused`], with the status and the body's text.
//! - [`ConnectOptions::encoding`] `Binary` offers the binary-frame subprotocol
//!   (`Sec-WebSocket-Protocol: p2c2r.bin.v1`); [`connect_negotiated`] says whether the
//!   coordinator took it. A coordinator that does not know it answers without it, and the
//!   connection is JSON, as it was before binary frames existed.
//! - [`ConnectOptions::dialer`] replaces TCP with an in-process byte stream (a
//!   [`Dialer`], which an in-process coordinator hands out): the same WebSocket upgrade,
//!   token and limits, no socket. For tests and headless games that run the whole system
//!   in one process; see [`memory`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), p2c2r_net::ConnectError> {
//! use p2c2r_net::{ConnectOptions, Credential};
//!
//! let options = ConnectOptions {
//!     token: Some(Credential::file("/etc/p2c2r/peer.token")),
//!     ca_file: Some("/etc/p2c2r/ca.pem".into()),
//!     ..ConnectOptions::default()
//! };
//! let ws = p2c2r_net::connect("wss://coordinator.example:8765", &options).await?;
//! # drop(ws);
//! # Ok(())
//! # }
//! ```

pub mod backoff;
pub mod memory;
pub mod socket;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream, tungstenite};

pub use backoff::Backoff;
pub use memory::{Dialer, Io};
pub use p2c2r_protocol::Encoding;
pub use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The WebSocket [`connect`] returns: over TCP (plain or TLS) or, with a
/// [`ConnectOptions::dialer`], over an in-memory stream.
pub type WsStream = WebSocketStream<MaybeTlsStream<Io>>;

/// [`ConnectOptions::timeout`] by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many characters of a refusal's body are kept in [`ConnectError::Refused`].
pub const MAX_REFUSAL_BODY_CHARS: usize = 512;

/// A client's credential: the bearer token it presents to the coordinator.
///
/// `Debug` never shows an inline token.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The token itself.
    Token(String),
    /// A file holding the token (surrounding whitespace, such as a final newline, is
    /// ignored). Read on every [`connect`], so replacing the file takes effect at the
    /// next reconnect.
    File(PathBuf),
}

impl Credential {
    /// An inline token.
    pub fn token(token: impl Into<String>) -> Self {
        Credential::Token(token.into())
    }

    /// A token read from this file on every connect.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Credential::File(path.into())
    }

    /// The token, trimmed; read from the file for [`Credential::File`].
    ///
    /// Fails with [`ConnectError::TokenFile`] when the file cannot be read, and with
    /// [`ConnectError::InvalidToken`] when the token is empty.
    pub fn read(&self) -> Result<String, ConnectError> {
        let token = match self {
            Credential::Token(token) => token.trim().to_owned(),
            Credential::File(path) => std::fs::read_to_string(path)
                .map_err(|e| ConnectError::TokenFile { path: path.clone(), reason: e.to_string() })?
                .trim()
                .to_owned(),
        };
        if token.is_empty() {
            return Err(ConnectError::InvalidToken(match self {
                Credential::Token(_) => "the token is empty".into(),
                Credential::File(path) => format!("the token file {} is empty", path.display()),
            }));
        }
        Ok(token)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
            Credential::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// How [`connect`] reaches the coordinator. [`Default`]: no token, public roots, the
/// default WebSocket limits, [`DEFAULT_CONNECT_TIMEOUT`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The bearer token to present, if any (`Authorization: Bearer <token>`).
    pub token: Option<Credential>,
    /// For `wss://`: trust the certificates in this PEM file (one or more) instead of the
    /// public web PKI roots. Read on every connect. Ignored for `ws://`.
    pub ca_file: Option<PathBuf>,
    /// WebSocket limits (frame and message sizes); tungstenite's defaults when `None`.
    pub ws_config: Option<WebSocketConfig>,
    /// Limit for the TCP connect, the TLS handshake and the WebSocket upgrade together.
    pub timeout: Duration,
    /// The encoding to offer: `Binary` asks for binary frames (see the crate docs);
    /// `Json` (the default) offers nothing.
    pub encoding: Encoding,
    /// Where the bytes go: `None` (the default) connects over TCP to the URL's host and
    /// port; a [`Dialer`] opens an in-memory stream to a coordinator in this process
    /// instead, over which everything else happens as over TCP (TLS too for `wss://`,
    /// checking the URL's host). Asked for a new stream at every connect.
    pub dialer: Option<Dialer>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: None,
            ca_file: None,
            ws_config: None,
            timeout: DEFAULT_CONNECT_TIMEOUT,
            encoding: Encoding::Json,
            dialer: None,
        }
    }
}

/// Why [`connect`] failed.
///
/// [`InvalidUrl`](Self::InvalidUrl), [`TokenFile`](Self::TokenFile),
/// [`InvalidToken`](Self::InvalidToken) and [`CaFile`](Self::CaFile) are problems of the
/// client's own configuration (though a file may be fixed on disk before the next try);
/// [`Refused`](Self::Refused) with 401 or 403 means the coordinator does not accept the
/// credential ([`is_auth_refusal`](Self::is_auth_refusal)); the rest are network
/// failures worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a valid `ws://` or `wss://` URL.
    #[error("invalid coordinator URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The token is empty, or holds characters an HTTP header cannot carry.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The CA file could not be read or holds no usable certificate.
    #[error("cannot use the CA file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (e.g. the server's certificate is not trusted or does not
    /// name the host).
    #[error("TLS failure: {0}")]
    Tls(String),
    /// The TCP connection (or the [`Dialer`]'s stream) or the WebSocket handshake failed.
    #[error("connection failed: {0}")]
    Io(String),
    /// Binary frames were offered and the server answered without a subprotocol (a
    /// coordinator from before binary frames). Internal: [`connect_negotiated`] then
    /// connects again offering nothing, so callers never see it.
    #[error("the server accepted no subprotocol")]
    NoSubprotocol,
    /// The coordinator answered the upgrade request with an HTTP error, e.g. 401 for a
    /// missing, expired or unknown token, 403 for a token it does not accept here.
    #[error("the coordinator refused the connection: HTTP {status}{}{}", reason_phrase(*status), body_suffix(body))]
    Refused {
        /// The HTTP status code.
        status: u16,
        /// The response body as text (at most [`MAX_REFUSAL_BODY_CHARS`] characters),
        /// e.g. `token expired`; empty when there was none.
        body: String,
    },
    /// No WebSocket within [`ConnectOptions::timeout`].
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

fn reason_phrase(status: u16) -> String {
    StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).map(|r| format!(" {r}")).unwrap_or_default()
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() { String::new() } else { format!(": {body}") }
}

impl ConnectError {
    /// The HTTP status of a [`ConnectError::Refused`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the coordinator refused the credential (HTTP 401 or 403): retrying with the
    /// same token will not help until it is fixed.
    pub fn is_auth_refusal(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// Whether the client's own configuration is at fault (URL, token, token file, CA
    /// file), not the network or the coordinator.
    pub fn is_config_problem(&self) -> bool {
        matches!(
            self,
            ConnectError::InvalidUrl { .. }
                | ConnectError::TokenFile { .. }
                | ConnectError::InvalidToken(_)
                | ConnectError::CaFile { .. }
        )
    }

    fn from_ws(url: &str, error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::Http(response) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let body: String = body.trim().chars().take(MAX_REFUSAL_BODY_CHARS).collect();
                ConnectError::Refused { status: response.status().as_u16(), body }
            }
            tungstenite::Error::Url(e) => ConnectError::InvalidUrl { url: url.to_owned(), reason: e.to_string() },
            tungstenite::Error::Tls(e) => ConnectError::Tls(e.to_string()),
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                tungstenite::error::SubProtocolError::NoSubProtocol,
            )) => ConnectError::NoSubprotocol,
            tungstenite::Error::Io(e) => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(tls) => ConnectError::Tls(tls.to_string()),
                None => ConnectError::Io(e.to_string()),
            },
            other => ConnectError::Io(other.to_string()),
        }
    }
}

/// The server's side of the encoding negotiation, for a `tokio_tungstenite::accept_hdr_*`
/// callback: reads the client's `Sec-WebSocket-Protocol` offer and, when it lists
/// [`p2c2r_protocol::binary::SUBPROTOCOL`], accepts it in `response`. Returns the
/// connection's encoding.
pub fn accept_encoding(
    request: &tungstenite::handshake::server::Request,
    response: &mut tungstenite::handshake::server::Response,
) -> Encoding {
    let offers = request.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok());
    let encoding = Encoding::from_offer(offers);
    if encoding == Encoding::Binary {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p2c2r_protocol::binary::SUBPROTOCOL));
    }
    encoding
}

/// Opens a WebSocket to the coordinator at `url` (`ws://` or `wss://`), presenting
/// `options.token` and, for `wss://`, trusting `options.ca_file` (or the public roots);
/// through `options.dialer` instead of TCP when it is set.
///
/// The token file and the CA file are read on every call. Everything from the TCP
/// connect to the end of the upgrade runs within `options.timeout`.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<WsStream, ConnectError> {
    connect_negotiated(url, options).await.map(|(ws, _)| ws)
}

/// [`connect`], also returning the encoding the coordinator agreed to: `Binary` only when
/// [`ConnectOptions::encoding`] offered it and the coordinator's answer named
/// [`p2c2r_protocol::binary::SUBPROTOCOL`].
///
/// Both attempts together run within `options.timeout`.
pub async fn connect_negotiated(url: &str, options: &ConnectOptions) -> Result<(WsStream, Encoding), ConnectError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    match connect_offering(url, options, options.encoding, deadline).await {
        // A coordinator from before binary frames answers without a subprotocol, which
        // tungstenite treats as a failed handshake: connect again, JSON only.
        Err(ConnectError::NoSubprotocol) => connect_offering(url, options, Encoding::Json, deadline).await,
        other => other,
    }
}

async fn connect_offering(
    url: &str,
    options: &ConnectOptions,
    offer: Encoding,
    deadline: tokio::time::Instant,
) -> Result<(WsStream, Encoding), ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidUrl { url: url.to_owned(), reason };
    let mut request = url.into_client_request().map_err(|e| invalid(e.to_string()))?;
    if offer == Encoding::Binary {
        request
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p2c2r_protocol::binary::SUBPROTOCOL));
    }
    let tls = match request.uri().scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(invalid("must start with ws:// or wss://".into())),
    };
    if let Some(credential) = &options.token {
        let token = credential.read()?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ConnectError::InvalidToken("it holds characters an HTTP header cannot carry".into()))?;
        value.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let connector =
        if tls { Connector::Rustls(Arc::new(tls_config(options.ca_file.as_deref())?)) } else { Connector::Plain };
    let connecting = async {
        let io = match &options.dialer {
            Some(dialer) => Io::Memory(dialer.dial().map_err(|e| ConnectError::Io(e.to_string()))?),
            None => Io::Tcp(connect_tcp(url, request.uri()).await?),
        };
        tokio_tungstenite::client_async_tls_with_config(request, io, options.ws_config, Some(connector))
            .await
            .map_err(|e| ConnectError::from_ws(url, e))
    };
    match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok((ws, response))) => {
            let answer = response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
            let io = match ws.get_ref() {
                MaybeTlsStream::Plain(io) => Some(io),
                MaybeTlsStream::Rustls(tls) => Some(tls.get_ref().0),
                _ => None,
            };
            // Best effort: without it frames still go, only less promptly behind bulk.
            if let Some(Io::Tcp(tcp)) = io {
                let _ = socket::limit_unsent(tcp, socket::UNSENT_BYTES);
            }
            Ok((ws, Encoding::from_answer(answer)))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::Timeout(options.timeout)),
    }
}

/// The TCP connection to the URL's host and port (80 for `ws://`, 443 for `wss://` when
/// it names none), with Nagle's algorithm off: what tungstenite's own `connect` does.
async fn connect_tcp(url: &str, uri: &tokio_tungstenite::tungstenite::http::Uri) -> Result<TcpStream, ConnectError> {
    let invalid = |reason: &str| ConnectError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
    let host = uri.host().ok_or_else(|| invalid("it names no host"))?;
    // An IPv6 literal comes bracketed (`[::1]`); the resolver wants it bare.
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| ConnectError::Io(e.to_string()))?;
    tcp.set_nodelay(true).map_err(|e| ConnectError::Io(e.to_string()))?;
    Ok(tcp)
}

/// The rustls client configuration for `wss://`: the `ring` provider, trusting the
/// certificates of `ca_file` when given, otherwise the public web PKI roots.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ConnectError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|e| ConnectError::CaFile { path: path.to_owned(), reason: e.to_string() })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Every certificate of a PEM file; an error when there is none.
fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let error = |reason: String| ConnectError::CaFile { path: path.to_owned(), reason };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_tokens_are_trimmed_and_redacted() {
        let c = Credential::token("  abc.def \n");
        assert_eq!(c.read().unwrap(), "abc.def");
        assert_eq!(format!("{c:?}"), "Token(<redacted>)");
        assert!(matches!(Credential::token(" \n").read(), Err(ConnectError::InvalidToken(_))));
    }

    #[test]
    fn refusals_say_status_and_body() {
        let e = ConnectError::Refused { status: 401, body: "token expired".into() };
        assert_eq!(e.to_string(), "the coordinator refused the connection: HTTP 401 Unauthorized: token expired");
        assert!(e.is_auth_refusal());
        assert_eq!(e.status(), Some(401));
        let e = ConnectError::Refused { status: 503, body: String::new() };
        assert_eq!(e.to_string(), "the coordinator refused the connection: HTTP 503 Service Unavailable");
        assert!(!e.is_auth_refusal());
        assert!(!ConnectError::Timeout(Duration::from_secs(1)).is_auth_refusal());
    }

    #[test]
    fn public_roots_are_the_default() {
        tls_config(None).expect("a configuration with the web PKI roots");
        let missing = Path::new("/nonexistent/p2c2r-ca.pem");
        assert!(matches!(tls_config(Some(missing)), Err(ConnectError::CaFile { .. })));
    }
}
