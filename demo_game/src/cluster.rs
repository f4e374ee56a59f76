//! The in-process cluster: a coordinator (unless the game joins an existing deployment) and
//! any number of peers, on their own thread with their own tokio runtime.
//!
//! Bevy talks to it through channels only: [`Cluster::add_peer`] and [`Cluster::kill_peer`]
//! enqueue a command and return at once, and [`Cluster::poll`] drains what happened since
//! the last call. Nothing here blocks a Bevy system.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// How long starting the cluster (coordinator up, initial peers registered) may take.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutting the cluster down may take before the thread is left behind.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Commands waiting for the cluster thread; key presses beyond this are dropped.
const COMMAND_QUEUE: usize = 16;

enum Command {
    AddPeer,
    KillPeer(Option<String>),
}

/// Something that happened in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// An in-process peer started and registered; its peer id.
    PeerStarted(String),
    /// An in-process peer was killed abruptly; its peer id.
    PeerKilled(String),
    /// A command failed; why.
    Failed(String),
}

/// How the in-process peers reach the coordinator: the credential they present and the
/// CA file they trust for `wss://` (see [`peer::PeerConfig::token`] and
/// [`peer::PeerConfig::ca_file`]). [`Default`]: neither.
#[derive(Clone, Debug, Default)]
pub struct PeerAccess {
    /// The bearer token (inline or in a file).
    pub token: Option<peer::Credential>,
    /// The PEM file of certificates to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// The id to register with: a peer credential is bound to one id. `None`: a random
    /// `peer-<uuid>`.
    pub peer_id: Option<String>,
}

/// The in-process coordinator and peers. A Bevy resource; dropping it shuts them down.
#[derive(Resource)]
pub struct Cluster {
    url: String,
    embedded_coordinator: bool,
    commands: Option<tokio::sync::mpsc::Sender<Command>>,
    events: Receiver<ClusterEvent>,
    peers: Vec<String>,
    registered: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    done: Receiver<()>,
}

/// `registered` before the in-process coordinator has been asked, or with a remote one.
const UNKNOWN: u64 = u64::MAX;

impl Cluster {
    /// Starts the cluster and waits (before the game runs) until the coordinator listens
    /// and `peers` peers have registered. With `coordinator: Some(url)` no coordinator is
    /// started and the peers join `url`.
    pub fn start(coordinator: Option<String>, peers: u32) -> anyhow::Result<Cluster> {
        Self::start_with(coordinator, peers, PeerAccess::default())
    }

    /// [`Cluster::start`], with peers presenting `access` (a token, a CA file) to the
    /// coordinator.
    pub fn start_with(coordinator: Option<String>, peers: u32, access: PeerAccess) -> anyhow::Result<Cluster> {
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<anyhow::Result<(String, Vec<String>)>>(1);
        let (event_tx, events) = crossbeam_channel::bounded::<ClusterEvent>(256);
        let (command_tx, command_rx) = tokio::sync::mpsc::channel::<Command>(COMMAND_QUEUE);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(1);
        let embedded_coordinator = coordinator.is_none();
        let registered = Arc::new(AtomicU64::new(UNKNOWN));
        let registered_in_thread = registered.clone();
        let thread = std::thread::Builder::new().name("p2c2r-cluster".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("p2c2r-cluster-worker")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(cluster_main(
                coordinator,
                peers,
                access,
                ready_tx,
                event_tx,
                command_rx,
                registered_in_thread,
            ));
            runtime.shutdown_timeout(Duration::from_millis(500));
            let _ = done_tx.send(());
        })?;
        let (url, peers) = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => return Err(e),
            Err(_) => anyhow::bail!("the in-process cluster did not start within {START_TIMEOUT:?}"),
        };
        Ok(Cluster {
            url,
            embedded_coordinator,
            commands: Some(command_tx),
            events,
            peers,
            registered,
            thread: Some(thread),
            done,
        })
    }

    /// The coordinator's URL (`ws://127.0.0.1:PORT` for the embedded one).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the coordinator runs in this process.
    pub fn embedded_coordinator(&self) -> bool {
        self.embedded_coordinator
    }

    /// Peers registered with the in-process coordinator (refreshed every 250 ms); `None`
    /// with a remote coordinator.
    pub fn registered_peers(&self) -> Option<u64> {
        let n = self.registered.load(Ordering::Relaxed);
        (n != UNKNOWN).then_some(n)
    }

    /// Ids of the in-process peers that are running, oldest first.
    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    /// Starts one more in-process peer. Returns at once; [`ClusterEvent::PeerStarted`] follows.
    pub fn add_peer(&self) -> bool {
        self.send(Command::AddPeer)
    }

    /// Kills (abruptly, like a crash) the in-process peer with this id, or the oldest one if
    /// `None`. Returns at once; [`ClusterEvent::PeerKilled`] follows.
    pub fn kill_peer(&self, peer_id: Option<&str>) -> bool {
        self.send(Command::KillPeer(peer_id.map(str::to_owned)))
    }

    fn send(&self, command: Command) -> bool {
        self.commands.as_ref().is_some_and(|tx| tx.try_send(command).is_ok())
    }

    /// Drains what happened since the last call and keeps [`Cluster::peers`] current.
    pub fn poll(&mut self) -> Vec<ClusterEvent> {
        let mut out = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(event) => {
                    match &event {
                        ClusterEvent::PeerStarted(id) => self.peers.push(id.clone()),
                        ClusterEvent::PeerKilled(id) => self.peers.retain(|p| p != id),
                        ClusterEvent::Failed(_) => {}
                    }
                    out.push(event);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Closing the command channel is the shutdown signal; then wait, with a deadline.
        self.commands = None;
        if self.done.recv_timeout(STOP_TIMEOUT).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

/// The embedded coordinator: defaults, but a short shutdown so quitting the game is quick.
fn coordinator_config() -> coordinator::Config {
    coordinator::Config { shutdown_grace: Duration::from_millis(500), ..Default::default() }
}

/// How long a new peer may take to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a peer and waits (up to [`REGISTER_TIMEOUT`]) until it has registered with the
/// coordinator. A peer that has not registered by then is kept (it keeps reconnecting with
/// backoff) and returned with `false`.
async fn start_peer(url: &str, access: &PeerAccess) -> anyhow::Result<(peer::PeerHandle, bool)> {
    let config = peer::PeerConfig {
        coordinator_url: url.to_owned(),
        token: access.token.clone(),
        ca_file: access.ca_file.clone(),
        peer_id: access.peer_id.clone(),
        ..Default::default()
    };
    let handle = peer::try_spawn(config).await?;
    let registered = tokio::time::timeout(REGISTER_TIMEOUT, handle.wait_for(|s| s.connected)).await.is_ok();
    Ok((handle, registered))
}

fn not_registered(handle: &peer::PeerHandle, url: &str) -> ClusterEvent {
    ClusterEvent::Failed(format!(
        "peer {} has not registered with {url} after {REGISTER_TIMEOUT:?}; it keeps trying",
        handle.peer_id()
    ))
}

async fn cluster_main(
    coordinator_url: Option<String>,
    initial_peers: u32,
    access: PeerAccess,
    ready: Sender<anyhow::Result<(String, Vec<String>)>>,
    events: Sender<ClusterEvent>,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
    registered: Arc<AtomicU64>,
) {
    let mut coordinator = None;
    let url = match coordinator_url {
        Some(url) => url,
        None => match coordinator::spawn("127.0.0.1:0", coordinator_config()).await {
            Ok(handle) => {
                let url = handle.url();
                coordinator = Some(handle);
                url
            }
            Err(e) => {
                let _ = ready.send(Err(anyhow::anyhow!("cannot start the coordinator: {e}")));
                return;
            }
        },
    };
    let mut peers: Vec<peer::PeerHandle> = Vec::new();
    for _ in 0..initial_peers {
        match start_peer(&url, &access).await {
            Ok((p, registered)) => {
                if !registered {
                    let _ = events.try_send(not_registered(&p, &url));
                }
                peers.push(p);
            }
            Err(e) => {
                let _ = ready.send(Err(e.context(format!("cannot start a peer for {url}"))));
                return;
            }
        }
    }
    let ids = peers.iter().map(|p| p.peer_id().to_string()).collect();
    let _ = ready.send(Ok((url.clone(), ids)));

    let mut refresh = tokio::time::interval(Duration::from_millis(250));
    loop {
        let command = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => command,
                None => break,
            },
            _ = refresh.tick() => {
                if let Some(c) = &coordinator {
                    registered.store(c.stats().peers, Ordering::Relaxed);
                }
                continue;
            }
        };
        let event = match command {
            Command::AddPeer => match start_peer(&url, &access).await {
                Ok((p, registered)) => {
                    if !registered {
                        let _ = events.try_send(not_registered(&p, &url));
                    }
                    let id = p.peer_id().to_string();
                    peers.push(p);
                    ClusterEvent::PeerStarted(id)
                }
                Err(e) => ClusterEvent::Failed(format!("cannot start a peer: {e:#}")),
            },
            Command::KillPeer(id) => {
                let index = match &id {
                    Some(id) => peers.iter().position(|p| p.peer_id() == id.as_str()),
                    None => (!peers.is_empty()).then_some(0),
                };
                match index {
                    Some(i) => {
                        let p = peers.remove(i);
                        let id = p.peer_id().to_string();
                        p.kill();
                        ClusterEvent::PeerKilled(id)
                    }
                    None => ClusterEvent::Failed(match id {
                        Some(id) => format!("peer {id} is not running in this process"),
                        None => "no in-process peer to kill".into(),
                    }),
                }
            }
        };
        let _ = events.try_send(event);
    }

    // The game is gone: shut down peers, then the coordinator.
    let stop = async {
        for p in peers {
            p.shutdown().await;
        }
        if let Some(c) = coordinator {
            c.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(STOP_TIMEOUT - Duration::from_millis(700), stop).await;
}
