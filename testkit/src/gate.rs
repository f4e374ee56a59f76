//! A WebSocket server side that checks the bearer token of each upgrade request, for
//! testing how clients present credentials and live with refusals.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;

/// The `Authorization` headers of the upgrade requests a gate saw, in order.
pub type SeenTokens = Arc<Mutex<Vec<Option<String>>>>;

/// How long [`accept_checking_bearer`] waits for a client to connect.
pub const ACCEPT_WAIT: Duration = Duration::from_secs(10);

/// Accepts one connection and upgrades it if its request carries `Bearer {good}`; refuses
/// it otherwise with `401` and the body `token expired`. Records every request's
/// `Authorization` header in `seen`. `None` when refused; panics when nobody connects
/// within [`ACCEPT_WAIT`].
#[allow(clippy::result_large_err)] // tungstenite's callback signature
pub async fn accept_checking_bearer(
    listener: &TcpListener,
    good: &str,
    seen: &SeenTokens,
) -> Option<WebSocketStream<TcpStream>> {
    let (tcp, _) = tokio::time::timeout(ACCEPT_WAIT, listener.accept())
        .await
        .expect("a client connected in time")
        .expect("accept");
    let (seen, expected) = (seen.clone(), format!("Bearer {good}"));
    let callback = move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let auth = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let accepted = auth.as_deref() == Some(expected.as_str());
        seen.lock().unwrap_or_else(|p| p.into_inner()).push(auth);
        if accepted {
            // Takes binary frames when offered, as the coordinator does (this gate only
            // ever sends text frames, which every connection takes).
            let mut response = response;
            p2c2r_net::accept_encoding(request, &mut response);
            Ok(response)
        } else {
            Err(http::Response::builder().status(401).body(Some("token expired".into())).expect("a valid response"))
        }
    };
    tokio_tungstenite::accept_hdr_async(tcp, callback).await.ok()
}
