//! The coordinator's port speaks plain HTTP as well as WebSocket. Every accepted
//! connection's request head is read here, within `max_head_bytes` (16 KiB) and the
//! handshake timeout; a WebSocket upgrade (any path, as before) goes on to
//! [`crate::connection`] with the head replayed, and anything else is answered here and
//! closed:
//!
//! | path | what |
//! |---|---|
//! | `/` | the live dashboard (self-contained HTML, CSS and JavaScript) |
//! | `/events` | server-sent events: a [`crate::fleet::Snapshot`] a second, the first with the charts' history |
//! | `/api/fleet` | the latest snapshot as JSON, with history |
//! | `/metrics` | Prometheus text format (see [`crate::metrics`]) |
//!
//! With TLS configured every connection is a TLS one first (its handshake counts against
//! the handshake timeout). With credentials configured ([`crate::auth`]), the request's
//! bearer token is checked here, before any upgrade: a missing, expired, forged or revoked
//! one is answered `401`, and the plain HTTP pages need the operator role (`403` for
//! others); the verified credential travels with the WebSocket to the router, which binds
//! what the connection may register as.
//!
//! Bad requests get a status, never a hang: 400 for a malformed head, 431 for one too
//! large, 408 for one too slow, 404 for an unknown path, 405 for a method other than
//! `GET` or `HEAD`, 503 when [`MAX_EVENT_STREAMS`] dashboards are already watching. A
//! client that does not read its response is dropped after `write_stall_timeout`.
//! Plain HTTP connections count against the same admission limits as any other. An
//! in-memory connection ([`crate::memory`]) goes through all of this too, TLS included.

use std::net::SocketAddr;
use std::sync::Arc;

use p2c2r_ops::http::{self as ops_http, HeadLimits, Request, Response, Rewind};
use p2c2r_ops::scrape;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Shared;
use crate::admission::Ticket;
use crate::auth::{self, Credential, Role};
use crate::fleet::Published;
use crate::tls::Transport;

/// The dashboard page, served at `/`.
pub const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// Largest request head read (a browser's is under 2 KiB; a WebSocket upgrade's under 1).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Dashboards (event streams) served at once; more are answered 503.
pub const MAX_EVENT_STREAMS: usize = 32;

/// Dashboards served at once to one address (IPv6: one /64): one address cannot take
/// every place, even with streams it never reads.
pub const MAX_EVENT_STREAMS_PER_ADDRESS: usize = 4;

/// An event stream's socket send buffer (the kernel doubles it): small, so that a client
/// that stops reading fills it, and its own receive buffer, within a few events, instead
/// of the default's hundreds of kilobytes.
pub const EVENT_STREAM_SEND_BUFFER: usize = 8 * 1024;

/// A write to an event stream that makes no progress this long (2 s) ends the stream (its place
/// goes to the next dashboard; a browser's EventSource reconnects by itself).
pub const EVENT_STREAM_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// The places for dashboards' event streams: [`MAX_EVENT_STREAMS`] in all,
/// [`MAX_EVENT_STREAMS_PER_ADDRESS`] per address.
#[derive(Debug)]
pub struct EventStreams {
    total: Arc<Semaphore>,
    by_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One event stream's place, given back when dropped.
#[derive(Debug)]
pub struct EventStreamPlace {
    _permit: OwnedSemaphorePermit,
    address: std::net::IpAddr,
    by_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Default for EventStreams {
    fn default() -> Self {
        EventStreams { total: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)), by_address: Arc::default() }
    }
}

impl EventStreams {
    /// A place for a stream to `address`, or why there is none.
    pub fn try_take(&self, address: std::net::IpAddr) -> Result<EventStreamPlace, String> {
        let address = crate::admission::address_key(address);
        let mut by_address = self.by_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = by_address.get(&address).copied().unwrap_or(0);
        if held >= MAX_EVENT_STREAMS_PER_ADDRESS {
            return Err(format!(
                "{MAX_EVENT_STREAMS_PER_ADDRESS} dashboards are open from this address already; close one first"
            ));
        }
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| format!("{MAX_EVENT_STREAMS} dashboards are open already; try again later"))?;
        by_address.insert(address, held + 1);
        Ok(EventStreamPlace { _permit: permit, address, by_address: self.by_address.clone() })
    }
}

impl Drop for EventStreamPlace {
    fn drop(&mut self) {
        let mut by_address = self.by_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// The dashboard's script and styles are inline and it talks only to its own origin.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                             frame-ancestors 'none'";

/// Serves one accepted connection: reads its request head, then hands a WebSocket
/// upgrade to [`crate::connection::serve`] or answers a plain HTTP request.
pub async fn serve(
    shared: Arc<Shared>,
    stream: p2c2r_net::Io,
    addr: SocketAddr,
    ticket: Ticket,
    cancel: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let Some(mut stream) = accept(&shared, stream, addr, &cancel).await else { return };
    // The whole handshake (TLS and head) shares one timeout.
    let left = shared.config.connections.handshake_timeout.saturating_sub(started.elapsed());
    let limits = HeadLimits { max_bytes: MAX_HEAD_BYTES, timeout: left };
    let head = tokio::select! {
        _ = cancel.cancelled() => return,
        head = ops_http::read_head(&mut stream, limits) => head,
    };
    let (request, read) = match head {
        Ok(pair) => pair,
        Err(e) => {
            debug!(%addr, error = %e, "bad request head");
            if let Some(status) = e.status() {
                let _ = ops_http::respond(
                    &mut stream,
                    &Response::text(status, e.to_string()),
                    false,
                    shared.config.connections.write_stall_timeout,
                )
                .await;
            }
            return;
        }
    };
    if let Some(reason) = foreign_request(&shared, &request) {
        crate::info_limited!("http: foreign request", %addr, reason, "request from another site refused");
        let response = Response::text(403, reason);
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = ops_http::respond(&mut stream, &response, false, shared.config.connections.write_stall_timeout) => {}
        }
        return;
    }
    let credential = match shared.auth.verify(auth::bearer(&request)) {
        Ok(credential) => credential,
        Err(e) => {
            crate::info_limited!("http: credential refused", %addr, reason = %e, "credential refused");
            let response = Response::text(401, e.to_string()).with_header("WWW-Authenticate", "Bearer realm=\"p2c2r\"");
            let _ =
                ops_http::respond(&mut stream, &response, false, shared.config.connections.write_stall_timeout).await;
            return;
        }
    };
    if request.is_websocket_upgrade() {
        let stream = Rewind::new(read, stream);
        crate::connection::serve(shared, stream, request.head_len, addr, credential, ticket, cancel).await;
        return;
    }
    debug!(%addr, method = request.method, path = request.path, "http request");
    let head_only = request.method == "HEAD";
    let route = match &credential {
        Some(c) if c.identity.role != Role::Operator => Route::Respond(forbidden(c)),
        _ => route(&shared, &request, addr),
    };
    match route {
        Route::Respond(response) => {
            // A client that does not read must not hold shutdown up.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = ops_http::respond(&mut stream, &response, head_only, shared.config.connections.write_stall_timeout) => {}
            }
        }
        Route::Events(permit) if head_only => {
            let head = ops_http::streaming_head(200, "text/event-stream");
            let _ = ops_http::write_all_within(&mut stream, &head, shared.config.connections.write_stall_timeout).await;
            drop(permit);
        }
        Route::Events(permit) => {
            stream_events(&shared, &mut stream, credential.as_ref(), shared.feed.clone(), cancel).await;
            drop(permit);
        }
    }
    drop(ticket);
}

/// Sets up an accepted connection and, when TLS is configured, runs its handshake
/// (within the handshake timeout); `None` when that fails or shutdown comes first.
async fn accept(
    shared: &Shared,
    stream: p2c2r_net::Io,
    addr: SocketAddr,
    cancel: &CancellationToken,
) -> Option<Transport> {
    // (An in-memory stream's buffers are small already.)
    if let p2c2r_net::Io::Tcp(tcp) = &stream {
        let _ = tcp.set_nodelay(true);
        // Unsent bytes wait in the connection's own queue, where a tick can go before a
        // large frame's next chunk, not in a kernel buffer of megabytes (best effort).
        let _ = p2c2r_net::socket::limit_unsent(tcp, p2c2r_net::socket::UNSENT_BYTES);
    }
    let Some(acceptor) = &shared.tls else { return Some(Transport::Plain(stream)) };
    let accept = tokio::time::timeout(shared.config.connections.handshake_timeout, acceptor.accept(stream));
    match tokio::select! { _ = cancel.cancelled() => return None, a = accept => a } {
        Ok(Ok(tls)) => Some(Transport::Tls(Box::new(tls))),
        Ok(Err(e)) => {
            debug!(%addr, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%addr, "TLS handshake timed out");
            None
        }
    }
}

/// Why a request from another web site is refused, in open mode (no credentials), where
/// nothing else stops a page the operator happens to visit: a WebSocket or page request
/// whose `Origin` is not this host (a browser always sends it cross-site), or, on a
/// loopback address, a `Host` that is not a loopback name (DNS rebinding: a site whose
/// name resolves to 127.0.0.1). With credentials, a browser game on another origin is
/// legitimate and tokens are the gate.
fn foreign_request(shared: &Shared, request: &Request) -> Option<&'static str> {
    if shared.auth.enabled() {
        return None;
    }
    let host = request.header("host").unwrap_or_default().trim().to_ascii_lowercase();
    if let Some(origin) = request.header("origin") {
        let origin = origin.trim().to_ascii_lowercase();
        let authority = origin.split_once("://").map_or(origin.as_str(), |(_, rest)| rest);
        if origin == "null" || authority != host {
            return Some("cross-origin requests are refused in open mode");
        }
    }
    if shared.local_addr.ip().is_loopback() && !host.is_empty() && !is_loopback_host(&host) {
        return Some("on a loopback address only loopback host names are served in open mode");
    }
    None
}

/// Whether `host` (a `Host` header: name or address, maybe with a port) names this machine.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(addr, _)| addr),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.chars().all(|c| c.is_ascii_digit()) { name } else { host }),
    };
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The answer to a credential that is not an operator's asking for an operator's page.
fn forbidden(credential: &Credential) -> Response {
    Response::text(
        403,
        format!(
            "the dashboard and metrics need the operator role; this credential is a {}'s",
            credential.identity.role
        ),
    )
}

/// What a plain HTTP request gets.
enum Route {
    Respond(Response),
    /// The event stream, holding its place.
    Events(EventStreamPlace),
}

fn route(shared: &Shared, request: &Request, addr: SocketAddr) -> Route {
    if request.method != "GET" && request.method != "HEAD" {
        return Route::Respond(Response::status(405).with_header("Allow", "GET, HEAD"));
    }
    Route::Respond(match request.path.as_str() {
        "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", DASHBOARD_HTML)
            .with_header("Content-Security-Policy", DASHBOARD_CSP),
        "/metrics" => Response::new(200, scrape::CONTENT_TYPE, scrape::encode(&shared.registry)),
        "/api/fleet" => {
            let latest = shared.feed.borrow().with_history.clone();
            if latest.is_empty() {
                Response::text(503, "no sample yet; try again in a second").with_header("Retry-After", "1")
            } else {
                Response::new(200, "application/json", latest.as_bytes().to_vec())
            }
        }
        "/api/federation" => federation_page(shared),
        "/events" => match shared.event_streams.try_take(addr.ip()) {
            Ok(place) => return Route::Events(place),
            Err(why) => Response::text(503, why).with_header("Retry-After", "10"),
        },
        _ => {
            Response::text(404, "not found: the dashboard is at /, metrics at /metrics, WebSocket clients connect at /")
        }
    })
}

/// The fleet of coordinators this one belongs to, as their leases last said (any
/// coordinator of the fleet shows the same); 404 when it runs alone.
fn federation_page(shared: &Shared) -> Response {
    #[cfg(feature = "nats")]
    if let Some(federation) = &shared.federation {
        let page = serde_json::json!({
            "coordinator": federation.id(),
            "coordinators": federation.fleet(),
        });
        return Response::new(200, "application/json", page.to_string().into_bytes());
    }
    let _ = shared;
    Response::text(404, "this coordinator runs alone (no --nats-url)")
}

/// Streams the fleet snapshots as server-sent events until the client leaves, stops
/// reading, or the coordinator shuts down.
async fn stream_events(
    shared: &Shared,
    stream: &mut Transport,
    credential: Option<&Credential>,
    mut feed: watch::Receiver<Published>,
    cancel: CancellationToken,
) {
    // A stream that is not read is dropped soon: a small send buffer fills within a few
    // events, and a short stall then ends it.
    let stall = EVENT_STREAM_STALL.min(shared.config.connections.write_stall_timeout);
    // (An in-memory stream's buffer is small already.)
    if let Some(tcp) = stream.tcp()
        && let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(EVENT_STREAM_SEND_BUFFER)
    {
        debug!(error = %e, "event stream: send buffer not set");
    }
    let mut head = ops_http::streaming_head(200, "text/event-stream");
    // Reconnect after 2 s if the stream breaks (EventSource's default is 3).
    head.extend_from_slice(b"retry: 2000\n\n");
    if ops_http::write_all_within(stream, &head, stall).await.is_err() {
        return;
    }
    let mut first = true;
    loop {
        let event = {
            let latest = feed.borrow_and_update();
            if first { latest.with_history.clone() } else { latest.event.clone() }
        };
        // A revoked credential (or a removed key) ends the stream at the next event.
        if credential.is_some_and(|c| !shared.auth.current().still_valid(c)) {
            return;
        }
        if !event.is_empty() {
            first = false;
            let mut frame = Vec::with_capacity(event.len() + 32);
            frame.extend_from_slice(b"event: snapshot\ndata: ");
            frame.extend_from_slice(event.as_bytes());
            frame.extend_from_slice(b"\n\n");
            let written = tokio::select! {
                _ = cancel.cancelled() => return,
                written = ops_http::write_all_within(stream, &frame, stall) => written,
            };
            if written.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = feed.changed() => if changed.is_err() { return },
        }
    }
}
