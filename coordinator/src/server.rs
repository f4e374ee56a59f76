//! The accept loop: one coordinator's connections, over TCP and in memory alike, admitted
//! (attempt rate, per-address, per-network and unregistered caps, `max_connections`) or
//! dropped before any handshake, each then served in a task of its own; and the
//! background tasks it starts and, at shutdown, waits for.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{self, Admission, Refusal};
use crate::fleet::{self, Published};
use crate::memory::MemoryConn;
use crate::observe::{ByteTotals, InboundBudget};
use crate::{Prepared, Router, Shared, connection, http, metrics, ratelimit, timers, warn_limited};

/// A coordinator about to serve: what its tasks share, and where the fleet sampler
/// publishes.
pub(crate) struct Server {
    pub(crate) shared: Arc<Shared>,
    feed: watch::Sender<Published>,
}

impl Server {
    pub(crate) async fn new(prepared: Prepared, local: SocketAddr) -> std::io::Result<Self> {
        let Prepared { config, auth, tls, reputation } = prepared;
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        config.check_exposure(local).map_err(invalid)?;
        let attempts = ratelimit::AttemptLimiter::new(
            config
                .rate_limits
                .max_connection_attempts_per_second
                .map(|n| ratelimit::Rate::per_second(f64::from(n), 4.0)),
        );
        let router = Arc::new(Router::new(config.clone()));
        if let Some((db, kept)) = reputation {
            router.restore_reputation(db, kept);
        }
        let admission = Admission::new(admission::Limits {
            per_address: config.connections.max_connections_per_address,
            per_network: config.connections.max_connections_per_network,
            unregistered: config.connections.max_unregistered_connections,
            prefix_v4: config.connections.host_prefix_v4,
            prefix_v6: config.connections.host_prefix_v6,
        });
        let bytes = Arc::new(ByteTotals::default());
        let (feed, feed_rx) = watch::channel(Published::default());
        #[allow(unused_mut)] // Only the federation adds to it.
        let mut registry = metrics::registry(router.clone(), admission.clone(), bytes.clone());
        #[cfg(feature = "nats")]
        let federation = match config.federated() {
            Some(settings) => {
                let scheme = if tls.is_some() { "wss" } else { "ws" };
                let url = settings.advertise_url.clone().unwrap_or_else(|| format!("{scheme}://{local}"));
                let federation = crate::federation::Federation::connect(&config, url).await?;
                router.set_alias_key(federation.alias_key());
                federation.metrics().register(&mut registry);
                Some(federation)
            }
            None => None,
        };
        let shared = Shared {
            registry,
            #[cfg(feature = "nats")]
            federation,
            inbound: InboundBudget::new(connection::inbound_budget_bytes(&config)),
            config: Arc::new(config),
            router,
            admission,
            bytes,
            feed: feed_rx,
            event_streams: http::EventStreams::default(),
            auth: Arc::new(auth),
            tls,
            attempts,
            local_addr: local,
        };
        Ok(Server { shared: Arc::new(shared), feed })
    }

    /// Accepts connections from `listener` and from `memory` (each when given) until
    /// `cancel`, then shuts down.
    pub(crate) async fn serve(
        self,
        listener: Option<TcpListener>,
        mut memory: Option<mpsc::Receiver<MemoryConn>>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let local = self.shared.local_addr;
        let (ws, web) = if self.shared.tls.is_some() { ("wss", "https") } else { ("ws", "http") };
        if listener.is_some() {
            info!(addr = %local, "coordinator listening");
            info!(
                "clients connect to {ws}://{local}; dashboard at {web}://{local}/, metrics at {web}://{local}/metrics"
            );
        } else {
            info!("coordinator running without a port: in-memory connections only ({ws}://{local} through a dialer)");
        }
        if self.shared.auth.enabled() {
            info!("credentials required (auth file loaded; SIGHUP or editing the file reloads it)");
        } else if !local.ip().is_loopback() {
            for line in [
                "INSECURE: open mode on a non-loopback address (--insecure): no credentials are checked,",
                "INSECURE: anyone who reaches this port can register as any free id, submit tasks and read stats.",
                "INSECURE: give --auth-file to require credentials (README: Deploying on the internet).",
            ] {
                warn!("{line}");
            }
        } else {
            info!("open mode on loopback: no credentials required");
        }
        let Server { shared, feed } = self;
        let config = shared.config.clone();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(config.connections.max_connections.max(1)));
        tracker.spawn(timers::deadline_timer(shared.router.clone(), cancel.clone()));
        tracker.spawn(timers::replay_worker(shared.router.clone(), cancel.clone()));
        tracker.spawn(timers::log_summaries(cancel.clone()));
        tracker.spawn(timers::housekeeping(shared.clone(), cancel.clone()));
        #[cfg(feature = "nats")]
        if let Some(federation) = &shared.federation {
            crate::federation::spawn(
                federation.clone(),
                shared.router.clone(),
                shared.auth.clone(),
                &tracker,
                cancel.clone(),
            );
        }
        tracker.spawn(fleet::run(
            shared.router.clone(),
            shared.bytes.clone(),
            config.summary_interval,
            feed,
            cancel.clone(),
        ));
        let acceptor = Acceptor { shared: shared.clone(), slots, tracker: tracker.clone(), cancel: cancel.clone() };
        loop {
            let tcp = async {
                match &listener {
                    Some(listener) => listener.accept().await,
                    None => std::future::pending().await,
                }
            };
            let in_memory = async {
                match memory.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = tcp => match accepted {
                    Ok((stream, addr)) => acceptor.accept(p2c2r_net::Io::Tcp(stream), addr),
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        warn_limited!("accept: failed", error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                dialed = in_memory => match dialed {
                    Some(MemoryConn { stream, addr }) => acceptor.accept(p2c2r_net::Io::Memory(stream), addr),
                    // Every dialer is gone (and the handle with them): nobody can dial again.
                    None => memory = None,
                },
            }
        }
        drop(listener);
        shared.router.announce_shutdown();
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace, tracker.wait()).await.is_err() {
            warn!("some connections did not close within the grace period");
        }
        // What it has to write reaches the disk, and the file is free for the next start.
        // (Joining the writer blocks this task briefly: a few small transactions.)
        shared.router.close_reputation();
        info!("coordinator stopped");
        Ok(())
    }
}

/// What the accept loop needs to admit a connection, TCP or in-memory alike.
struct Acceptor {
    shared: Arc<Shared>,
    /// `max_connections` places.
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Acceptor {
    /// Admits `stream` from `addr` and serves it in a task of its own, or refuses it: the
    /// per-address attempt rate (one non-blocking `429` write, none under TLS), then
    /// admission, then `max_connections`. A refused connection is dropped before any
    /// handshake.
    fn accept(&self, mut stream: p2c2r_net::Io, addr: SocketAddr) {
        let (shared, config) = (&self.shared, &self.shared.config);
        let metrics = shared.router.metrics();
        if !shared.attempts.allow(addr.ip(), std::time::Instant::now()) {
            metrics.refused("rate_limited");
            warn_limited!("accept: attempt rate", %addr, "connection attempts over the per-address rate; refusing");
            // One non-blocking write, never a wait: a flood gets what fits.
            // Under TLS a clear-text answer would be garbage to the client: it is only closed.
            if shared.tls.is_none() {
                let refusal = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                match &mut stream {
                    p2c2r_net::Io::Tcp(tcp) => {
                        let _ = tcp.try_write(refusal);
                    }
                    p2c2r_net::Io::Memory(pipe) => {
                        use futures_util::FutureExt;
                        use tokio::io::AsyncWriteExt;
                        let _ = pipe.write(refusal).now_or_never();
                    }
                }
            }
            return;
        }
        // Refused connections are dropped before the handshake: cheap for us, and
        // nothing to gain for a flood.
        let ticket = match shared.admission.admit(addr.ip()) {
            Ok(ticket) => ticket,
            Err(Refusal::PerAddress) => {
                metrics.refused("per_address");
                let limit = config.connections.max_connections_per_address;
                warn_limited!("accept: per-address limit", %addr, limit, "per-address connection limit reached; refusing");
                return;
            }
            Err(Refusal::PerNetwork) => {
                metrics.refused("per_network");
                let limit = config.connections.max_connections_per_network;
                warn_limited!("accept: per-network limit", %addr, limit, "per-network connection limit reached; refusing");
                return;
            }
            Err(Refusal::Unregistered) => {
                metrics.refused("unregistered");
                let limit = config.connections.max_unregistered_connections;
                warn_limited!("accept: unregistered limit", %addr, limit, "too many unregistered connections; refusing");
                return;
            }
        };
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            metrics.refused("connections");
            let limit = config.connections.max_connections;
            warn_limited!("accept: connection limit", %addr, limit, "connection limit reached; refusing");
            return;
        };
        debug!(%addr, "accepted");
        let (shared, cancel) = (shared.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            http::serve(shared, stream, addr, ticket, cancel).await;
            drop(permit);
        });
    }
}
