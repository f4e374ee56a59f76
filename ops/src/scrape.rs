//! Prometheus scrape endpoint: `GET /metrics` in the Prometheus text format (0.0.4),
//! encoded by `prometheus-client` from a registry.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::http::{self, HeadLimits, Request, Response};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Scrapes served at once by [`serve`]; more connections are closed at once (a scraper
/// needs one).
pub const MAX_SCRAPE_CONNECTIONS: usize = 16;

/// Time allowed to write a response to a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The registry's metrics in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail; an error would be a metric's own encoding bug.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        warn!(error = %e, "metrics encoding failed");
    }
    out
}

/// The answer of a server whose only page is `/metrics`.
pub fn route(request: &Request, registry: &Registry) -> Response {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET" | "HEAD", "/metrics") => Response::new(200, CONTENT_TYPE, encode(registry)),
        ("GET" | "HEAD", _) => Response::text(404, "not found; metrics are at /metrics"),
        _ => Response::status(405).with_header("Allow", "GET, HEAD"),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics listening");
    }
    let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let (mut stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%addr, "too many metrics connections; closing one");
            continue;
        };
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let served = async {
                // A scraper sends its head at once: a short time limit keeps slow clients
                // from holding the few places.
                let limits = HeadLimits { timeout: Duration::from_secs(2), ..HeadLimits::default() };
                let response = match http::read_head(&mut stream, limits).await {
                    Ok((request, _)) => (route(&request, &registry), request.method == "HEAD"),
                    Err(e) => match e.status() {
                        Some(status) => (Response::text(status, e.to_string()), false),
                        None => return,
                    },
                };
                let _ = http::respond(&mut stream, &response.0, response.1, WRITE_TIMEOUT).await;
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = served => {}
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: std::net::SocketAddr, head: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_everything_else_with_a_status() {
        let mut registry = Registry::with_prefix("p2c2r_test");
        let counter = Counter::<u64>::default();
        registry.register("things", "Things done", counter.clone());
        counter.inc_by(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(registry), shutdown.clone()));

        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("# TYPE p2c2r_test_things_total counter\n"), "{ok}");
        assert!(ok.contains("\np2c2r_test_things_total 3\n"), "{ok}");
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
        let post = get(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD\r\n"), "{post}");
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431 "));
        let head = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"), "{head}");

        shutdown.cancel();
        server.await.unwrap();
    }
}
