//! `connect` against a tiny server: rustls with a certificate made at test time,
//! tokio-tungstenite's server side, and an upgrade callback that records the
//! `Authorization` header and refuses tokens it does not like.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use p2c2r_net::{ConnectError, ConnectOptions, Credential, connect};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{self, http};

const WAIT: Duration = Duration::from_secs(10);

/// A fresh directory under the system's temp dir.
fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir =
        std::env::temp_dir().join(format!("p2c2r-net-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for `localhost` and `127.0.0.1`: (PEM, DER, key).
fn certificate() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    (cert.pem(), cert.der().clone(), key)
}

/// A test server: TLS (or not), one WebSocket per connection, each answering `hello` and
/// then echoing. Tokens other than `accept` are refused with 401 `token expired`.
struct Server {
    url: String,
    /// The server certificate's PEM (empty for plain `ws://`).
    ca_pem: String,
    /// The `Authorization` header of every upgrade request, in order.
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

async fn server(tls: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ca_pem, acceptor) = if tls {
        let (pem, der, key) = certificate();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .unwrap();
        (pem, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    } else {
        (String::new(), None)
    };
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let record = record.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve(tls, record).await;
                        }
                    }
                    None => serve(tcp, record).await,
                }
            });
        }
    });
    let scheme = if tls { "wss" } else { "ws" };
    Server { url: format!("{scheme}://127.0.0.1:{}", addr.port()), ca_pem, seen }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, seen: Arc<Mutex<Vec<Option<String>>>>) {
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let auth = request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
        seen.lock().unwrap().push(auth.clone());
        match auth.as_deref() {
            None | Some("Bearer accept") => Ok(response),
            Some(_) => Err(http::Response::builder()
                .status(http::StatusCode::UNAUTHORIZED)
                .body(Some("token expired".to_owned()))
                .unwrap()),
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    if ws.send(tungstenite::Message::text("hello")).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        if message.is_text() && ws.send(message).await.is_err() {
            return;
        }
    }
}

/// Connects, reads the greeting and checks an echo.
async fn talk(url: &str, options: &ConnectOptions) -> Result<(), ConnectError> {
    let mut ws = tokio::time::timeout(WAIT, connect(url, options)).await.expect("connect returns")?;
    let hello = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(hello.to_text().unwrap(), "hello");
    ws.send(tungstenite::Message::text("ping")).await.unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo.to_text().unwrap(), "ping");
    ws.close(None).await.unwrap();
    Ok(())
}

fn with_ca(server: &Server, dir: &std::path::Path) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &server.ca_pem).unwrap();
    path
}

#[tokio::test]
async fn wss_with_a_ca_file_carries_the_bearer_token() {
    let server = server(true).await;
    let dir = temp_dir();
    let options = ConnectOptions {
        token: Some(Credential::token("accept")),
        ca_file: Some(with_ca(&server, &dir)),
        ..Default::default()
    };
    talk(&server.url, &options).await.unwrap();
    // By name too: the certificate names localhost.
    let by_name = server.url.replace("127.0.0.1", "localhost");
    talk(&by_name, &options).await.unwrap();
    assert_eq!(*server.seen.lock().unwrap(), vec![Some("Bearer accept".to_owned()); 2]);
}

#[tokio::test]
async fn a_ca_file_may_hold_several_certificates() {
    let server = server(true).await;
    let dir = temp_dir();
    let (other, _, _) = certificate();
    let path = dir.join("bundle.pem");
    std::fs::write(&path, format!("{other}\n{}", server.ca_pem)).unwrap();
    let options = ConnectOptions { ca_file: Some(path), ..Default::default() };
    talk(&server.url, &options).await.unwrap();
    assert_eq!(*server.seen.lock().unwrap(), vec![None]);
}

#[tokio::test]
async fn an_unknown_certificate_is_a_tls_failure() {
    let server = server(true).await;
    // The public roots do not know a self-signed certificate.
    let e = talk(&server.url, &ConnectOptions::default()).await.unwrap_err();
    assert!(matches!(&e, ConnectError::Tls(why) if why.contains("certificate")), "{e:?}");
    // Nor does another CA.
    let dir = temp_dir();
    let (other, _, _) = certificate();
    let path = dir.join("other.pem");
    std::fs::write(&path, other).unwrap();
    let e = talk(&server.url, &ConnectOptions { ca_file: Some(path), ..Default::default() }).await.unwrap_err();
    assert!(matches!(e, ConnectError::Tls(_)), "{e:?}");
    assert!(!e.is_config_problem() && !e.is_auth_refusal());
}

#[tokio::test]
async fn a_refused_upgrade_surfaces_as_its_http_status() {
    let server = server(true).await;
    let dir = temp_dir();
    let options = ConnectOptions {
        token: Some(Credential::token("stale")),
        ca_file: Some(with_ca(&server, &dir)),
        ..Default::default()
    };
    let e = talk(&server.url, &options).await.unwrap_err();
    assert_eq!(e, ConnectError::Refused { status: 401, body: "token expired".into() });
    assert!(e.is_auth_refusal());
    assert!(e.to_string().contains("401") && e.to_string().contains("token expired"), "{e}");
}

#[tokio::test]
async fn a_token_file_is_read_afresh_on_every_connect() {
    let server = server(false).await;
    let dir = temp_dir();
    let path = dir.join("token");
    std::fs::write(&path, "stale\n").unwrap();
    let options = ConnectOptions { token: Some(Credential::file(&path)), ..Default::default() };
    let e = talk(&server.url, &options).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    // Fixed on disk: the next connect uses it, trimmed.
    std::fs::write(&path, "  accept \n").unwrap();
    talk(&server.url, &options).await.unwrap();
    assert_eq!(*server.seen.lock().unwrap(), vec![Some("Bearer stale".to_owned()), Some("Bearer accept".to_owned())]);
    std::fs::remove_file(&path).unwrap();
    let e = talk(&server.url, &options).await.unwrap_err();
    assert!(matches!(e, ConnectError::TokenFile { .. }), "{e:?}");
    assert!(e.is_config_problem());
}

#[tokio::test]
async fn bad_urls_are_refused_before_connecting() {
    for url in ["http://127.0.0.1:1", "not a url", "ws://"] {
        let e = connect(url, &ConnectOptions::default()).await.unwrap_err();
        assert!(matches!(e, ConnectError::InvalidUrl { .. }), "{url}: {e:?}");
    }
    let options = ConnectOptions { token: Some(Credential::token("a\nb")), ..Default::default() };
    let e = connect("ws://127.0.0.1:1", &options).await.unwrap_err();
    assert!(matches!(e, ConnectError::InvalidToken(_)), "{e:?}");
}

#[tokio::test]
async fn a_silent_server_times_out_and_a_closed_port_is_an_io_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let options = ConnectOptions { timeout: Duration::from_millis(300), ..Default::default() };
    let e = connect(&url, &options).await.unwrap_err();
    assert_eq!(e, ConnectError::Timeout(Duration::from_millis(300)));
    drop(listener);
    let e = connect(&url.replace("wss", "ws"), &options).await.unwrap_err();
    assert!(matches!(e, ConnectError::Io(_)), "{e:?}");
}

#[tokio::test]
async fn offering_binary_to_a_server_that_knows_nothing_of_it_falls_back_to_json() {
    // This server answers without a subprotocol, as a coordinator from before binary
    // frames does; tungstenite fails such a handshake, so the client connects again
    // offering nothing.
    let server = server(false).await;
    let options = ConnectOptions { encoding: p2c2r_net::Encoding::Binary, ..Default::default() };
    let (mut ws, encoding) =
        tokio::time::timeout(WAIT, p2c2r_net::connect_negotiated(&server.url, &options)).await.unwrap().unwrap();
    assert_eq!(encoding, p2c2r_net::Encoding::Json);
    let hello = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(hello.to_text().unwrap(), "hello");
    assert_eq!(server.seen.lock().unwrap().len(), 2, "one upgrade offering binary, one offering nothing");
}
