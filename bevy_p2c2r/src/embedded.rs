//! The whole system in one process: a coordinator (unless the game joins an existing
//! deployment) and any number of peers, on their own thread with their own tokio runtime.
//!
//! [`P2c2rPlugin::embedded()`] starts one (an in-process coordinator on a free loopback
//! port and one peer), connects the plugin to it and inserts it as the [`EmbeddedCluster`]
//! resource, so a game can add and kill peers while it runs:
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_p2c2r::prelude::*;
//!
//! App::new()
//!     .add_plugins(MinimalPlugins)
//!     .add_plugins(P2c2rPlugin::embedded())
//!     .add_systems(Update, replace_dead_peers)
//!     .run();
//!
//! /// Starts a peer for every one that is killed.
//! fn replace_dead_peers(cluster: Option<Res<EmbeddedCluster>>, mut events: MessageReader<ClusterEvent>) {
//!     let Some(cluster) = cluster else { return }; // it could not start: the game steps locally
//!     for event in events.read() {
//!         if let ClusterEvent::PeerKilled(id) = event {
//!             println!("peer {id} was killed; starting another");
//!             cluster.add_peer();
//!         }
//!     }
//! }
//! ```
//!
//! Bevy talks to the cluster through channels only: [`EmbeddedCluster::add_peer`] and
//! [`EmbeddedCluster::kill_peer`] enqueue a command and return at once, and
//! [`EmbeddedCluster::poll`] drains what happened since the last call (with the plugin,
//! a system in `First` does that every frame and writes each event as a [`ClusterEvent`]
//! message). Nothing here blocks a Bevy system; only [`EmbeddedCluster::start`] (called
//! when the plugin is added, before the app runs) waits for the cluster to come up, and
//! dropping the resource waits a bounded time for it to shut down.
//!
//! With [`P2c2rPlugin::embedded_in_memory`] (or [`EmbeddedCluster::start_in_memory`])
//! nothing opens a socket: the coordinator binds no port, and the peers and the plugin
//! reach it through in-memory connections ([`EmbeddedCluster::dialer`]) that speak the
//! same WebSocket protocol under the same limits. That is the way to test a game headless
//! with the whole system in the test's process:
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_p2c2r::prelude::*;
//!
//! let mut app = App::new();
//! app.add_plugins(MinimalPlugins).add_plugins(P2c2rPlugin::embedded_in_memory().gamer_id("test"));
//! app.update(); // a coordinator and a peer run in this process, with no port open
//! ```
//!
//! This module is behind the `embedded` cargo feature (on by default), which brings in
//! the `coordinator` and `peer` libraries (without their command-line parts).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::P2c2rPlugin;
use crate::client::Dialer;

/// How long starting the cluster (coordinator up, initial peers spawned) may take.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutting the cluster down may take before the thread is left behind.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Commands waiting for the cluster thread; commands beyond this are refused.
const COMMAND_QUEUE: usize = 16;
/// Events waiting for [`EmbeddedCluster::poll`]; events beyond this are dropped.
const EVENT_QUEUE: usize = 256;
/// How long a new peer may take to register before a [`ClusterEvent::Failed`] says so.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the in-process coordinator's count of registered peers is read.
const REFRESH: Duration = Duration::from_millis(250);

enum Command {
    AddPeer,
    KillPeer(Option<String>),
}

/// Something that happened in the cluster: returned by [`EmbeddedCluster::poll`], and
/// written as a Bevy message every frame when the plugin runs the cluster
/// ([`P2c2rPlugin::embedded`]).
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// An in-process peer started (and, unless a [`ClusterEvent::Failed`] came just
    /// before, registered); its peer id.
    PeerStarted(String),
    /// An in-process peer was killed abruptly; its peer id.
    PeerKilled(String),
    /// A command failed, or a peer has not registered yet; why.
    Failed(String),
}

/// How the in-process peers reach the coordinator: the credential they present, the CA
/// file they trust for `wss://` and the id they register with (see the `peer` crate's
/// `PeerConfig`). [`Default`]: none of them (no token, the public roots, a random id).
#[derive(Clone, Debug, Default)]
pub struct PeerAccess {
    /// The bearer token (inline, or a file read again on every reconnection).
    pub token: Option<crate::client::Credential>,
    /// The PEM file of certificates to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// The id to register with: a peer credential is bound to one id. `None`: a random
    /// `peer-<uuid>`.
    pub peer_id: Option<String>,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The cluster's thread or tokio runtime could not be created.
    #[error("cannot start the cluster's thread or runtime: {0}")]
    Runtime(std::io::Error),
    /// The in-process coordinator could not start (or listen on a loopback port).
    #[error("cannot start the in-process coordinator: {0}")]
    Coordinator(std::io::Error),
    /// A peer could not be started (a bad URL, peer id or CA file, ...).
    #[error("cannot start a peer for {url}: {error}")]
    Peer {
        /// The coordinator the peer was for.
        url: String,
        /// Why.
        error: peer::PeerError,
    },
    /// The cluster did not come up in time.
    #[error("the in-process cluster did not start within {0:?}")]
    Timeout(Duration),
}

/// The in-process coordinator and peers. A Bevy resource (inserted by
/// [`P2c2rPlugin::embedded`]); dropping it shuts them down, waiting at most 3 s.
#[derive(Resource)]
pub struct EmbeddedCluster {
    url: String,
    dialer: Option<Dialer>,
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

impl EmbeddedCluster {
    /// Starts the cluster and waits (at most 20 s; call it before the game runs, not from
    /// a system) until the coordinator listens and `peers` peers have started. With
    /// `coordinator: None` a coordinator starts in-process on `127.0.0.1`, port 0; with
    /// `Some(url)` none is started and the peers join `url`. A peer that has not
    /// registered within 10 s keeps trying and is reported as a [`ClusterEvent::Failed`].
    pub fn start(coordinator: Option<String>, peers: u32) -> Result<EmbeddedCluster, EmbeddedError> {
        Self::start_with(coordinator, peers, PeerAccess::default())
    }

    /// [`EmbeddedCluster::start`], with peers presenting `access` (a token, a CA file, an
    /// id) to the coordinator.
    pub fn start_with(
        coordinator: Option<String>,
        peers: u32,
        access: PeerAccess,
    ) -> Result<EmbeddedCluster, EmbeddedError> {
        Self::start_replicated(coordinator, peers, access, 1)
    }

    /// Starts a coordinator in-process that binds no port, and `peers` peers connected to
    /// it in memory (see the [module docs](self)); otherwise as
    /// [`EmbeddedCluster::start_replicated`]. Clients connect with
    /// [`url`](Self::url) and [`dialer`](Self::dialer).
    pub fn start_in_memory(peers: u32, access: PeerAccess, replicas: u8) -> Result<EmbeddedCluster, EmbeddedError> {
        Self::start_options(None, EmbeddedOptions { peers, access, replicas, in_memory: true })
    }

    /// [`EmbeddedCluster::start_with`], the in-process coordinator (when one starts) running
    /// each physics session on `replicas` peers (see `coordinator::Replication::replicas`; the
    /// embedded peers share one address, so replicas need not be on distinct hosts).
    pub fn start_replicated(
        coordinator: Option<String>,
        peers: u32,
        access: PeerAccess,
        replicas: u8,
    ) -> Result<EmbeddedCluster, EmbeddedError> {
        Self::start_options(coordinator, EmbeddedOptions { peers, access, replicas, in_memory: false })
    }

    fn start_options(coordinator: Option<String>, options: EmbeddedOptions) -> Result<EmbeddedCluster, EmbeddedError> {
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<Ready, EmbeddedError>>(1);
        let (event_tx, events) = crossbeam_channel::bounded::<ClusterEvent>(EVENT_QUEUE);
        let (command_tx, command_rx) = tokio::sync::mpsc::channel::<Command>(COMMAND_QUEUE);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(1);
        let embedded_coordinator = coordinator.is_none();
        let registered = Arc::new(AtomicU64::new(UNKNOWN));
        let registered_in_thread = registered.clone();
        let thread = std::thread::Builder::new()
            .name("p2c2r-cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("p2c2r-cluster-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EmbeddedError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(cluster_main(
                    coordinator,
                    options,
                    ready_tx,
                    event_tx,
                    command_rx,
                    registered_in_thread,
                ));
                runtime.shutdown_timeout(Duration::from_millis(500));
                let _ = done_tx.send(());
            })
            .map_err(EmbeddedError::Runtime)?;
        // On an error or a timeout `command_tx` is dropped here, which stops the thread.
        let Ready { url, dialer, peers } = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(EmbeddedError::Timeout(START_TIMEOUT)),
        };
        Ok(EmbeddedCluster {
            url,
            dialer,
            embedded_coordinator,
            commands: Some(command_tx),
            events,
            peers,
            registered,
            thread: Some(thread),
            done,
        })
    }

    /// The coordinator's URL (`ws://127.0.0.1:PORT` for the in-process one;
    /// `ws://127.0.0.1:0`, no port, for one started in memory: use it with
    /// [`dialer`](Self::dialer)).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// In-memory connections to the in-process coordinator (whether or not it also
    /// listens on a port), from `127.0.0.1`: give it to a client with [`url`](Self::url)
    /// ([`crate::ConnectionSettings::dialer`], `p2c2r_client::ClientConfig::dialer`,
    /// `peer::PeerConfig::dialer`). `None` when the cluster joined a remote coordinator.
    pub fn dialer(&self) -> Option<&Dialer> {
        self.dialer.as_ref()
    }

    /// Whether the coordinator runs in this process.
    pub fn embedded_coordinator(&self) -> bool {
        self.embedded_coordinator
    }

    /// Peers registered with the in-process coordinator (all of them, not only this
    /// process's; refreshed every 250 ms); `None` with a remote coordinator.
    pub fn registered_peers(&self) -> Option<u64> {
        let n = self.registered.load(Ordering::Relaxed);
        (n != UNKNOWN).then_some(n)
    }

    /// Ids of the in-process peers that are running, oldest first, as of the last
    /// [`EmbeddedCluster::poll`].
    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    /// Starts one more in-process peer. Returns at once: `false` if the command queue is
    /// full (16 commands waiting); [`ClusterEvent::PeerStarted`] follows.
    pub fn add_peer(&self) -> bool {
        self.send(Command::AddPeer)
    }

    /// Kills (abruptly, like a crash) the in-process peer with this id, or the oldest one
    /// if `None`. Returns at once: `false` if the command queue is full;
    /// [`ClusterEvent::PeerKilled`] (or [`ClusterEvent::Failed`] if there is no such
    /// peer) follows.
    pub fn kill_peer(&self, peer_id: Option<&str>) -> bool {
        self.send(Command::KillPeer(peer_id.map(str::to_owned)))
    }

    fn send(&self, command: Command) -> bool {
        self.commands.as_ref().is_some_and(|tx| tx.try_send(command).is_ok())
    }

    /// Drains what happened since the last call and keeps [`EmbeddedCluster::peers`]
    /// current. Never blocks.
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

impl Drop for EmbeddedCluster {
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

/// What [`P2c2rPlugin::embedded`] starts: how many peers, and how they reach the
/// coordinator.
#[derive(Clone, Debug)]
pub(crate) struct EmbeddedOptions {
    peers: u32,
    access: PeerAccess,
    replicas: u8,
    /// No port: the coordinator takes in-memory connections only.
    in_memory: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { peers: 1, access: PeerAccess::default(), replicas: 1, in_memory: false }
    }
}

/// What the cluster thread reports once it is up.
struct Ready {
    url: String,
    dialer: Option<Dialer>,
    peers: Vec<String>,
}

impl P2c2rPlugin {
    /// Sets how many peers the embedded cluster starts with (default 1; 0 is allowed:
    /// add them later with [`EmbeddedCluster::add_peer`]). Turns the embedded cluster on,
    /// as [`P2c2rPlugin::embedded`] does, but keeps any coordinator URL set: with one, the
    /// peers join that coordinator and none starts in-process.
    pub fn embedded_peers(mut self, peers: u32) -> Self {
        self.embedded.get_or_insert_with(EmbeddedOptions::default).peers = peers;
        self
    }

    /// Sets how the embedded peers reach the coordinator (a peer credential, a CA file,
    /// their id). Turns the embedded cluster on, like
    /// [`embedded_peers`](Self::embedded_peers).
    pub fn embedded_peer_access(mut self, access: PeerAccess) -> Self {
        self.embedded.get_or_insert_with(EmbeddedOptions::default).access = access;
        self
    }

    /// Sets how many embedded peers run each physics session at once (default 1, at most
    /// 5): with 2 or more, the death of the serving peer costs the game nothing (another
    /// replica's results continue the session) and lying peers are outvoted. Applies to
    /// the in-process coordinator only. Turns the embedded cluster on, like
    /// [`embedded_peers`](Self::embedded_peers).
    pub fn embedded_replicas(mut self, replicas: u8) -> Self {
        self.embedded.get_or_insert_with(EmbeddedOptions::default).replicas = replicas.clamp(1, 5);
        self
    }

    /// The whole system in this process with no socket at all: as
    /// [`P2c2rPlugin::embedded`], but the coordinator binds no port, and the peers and the
    /// plugin reach it through in-memory connections (the same WebSocket protocol, under
    /// the same limits and credentials; see [`crate::embedded`]). For headless tests of a
    /// game. Ignored when a coordinator URL is set (the peers then join it over the
    /// network).
    pub fn embedded_in_memory() -> Self {
        let mut plugin = Self::embedded();
        plugin.embedded.get_or_insert_with(EmbeddedOptions::default).in_memory = true;
        plugin
    }
}

/// Called by the plugin's `build` when the embedded cluster is on: starts it (joining
/// `coordinator` if given), inserts it as a resource with the system that turns its
/// events into [`ClusterEvent`] messages, and returns the URL the plugin connects to, with
/// the dialer to use when the cluster runs in memory. If it cannot start, logs why and
/// returns `coordinator`: with `None` the game runs on the local simulation, as with no
/// coordinator.
pub(crate) fn start_in(
    app: &mut App,
    options: &EmbeddedOptions,
    coordinator: Option<String>,
) -> (Option<String>, Option<Dialer>) {
    app.add_message::<ClusterEvent>().add_systems(First, forward_events.run_if(resource_exists::<EmbeddedCluster>));
    match EmbeddedCluster::start_options(coordinator.clone(), options.clone()) {
        Ok(cluster) => {
            tracing::info!(url = cluster.url(), peers = ?cluster.peers(), "p2c2r: embedded cluster started");
            let url = cluster.url().to_owned();
            let dialer = cluster.dialer().filter(|_| options.in_memory).cloned();
            app.insert_resource(cluster);
            (Some(url), dialer)
        }
        Err(e) => {
            match &coordinator {
                Some(url) => {
                    tracing::error!(error = %e, "p2c2r: embedded peers did not start; connecting to {url} anyway")
                }
                None => tracing::error!(error = %e, "p2c2r: embedded cluster did not start; stepping locally"),
            }
            (coordinator, None)
        }
    }
}

/// Writes the cluster's events as messages (and keeps [`EmbeddedCluster::peers`]
/// current). Runs in `First`.
fn forward_events(mut cluster: ResMut<EmbeddedCluster>, mut out: MessageWriter<ClusterEvent>) {
    for event in cluster.poll() {
        match &event {
            ClusterEvent::PeerStarted(id) => tracing::info!("p2c2r: embedded peer {id} started"),
            ClusterEvent::PeerKilled(id) => tracing::info!("p2c2r: embedded peer {id} killed"),
            ClusterEvent::Failed(why) => tracing::warn!("p2c2r: embedded cluster: {why}"),
        }
        out.write(event);
    }
}

/// The embedded coordinator: defaults, but a short shutdown so quitting the game is quick.
/// `replicas` is brought within what a coordinator accepts (1 to
/// `coordinator::replication::MAX_REPLICAS`), as `P2c2rPlugin::embedded_replicas` does.
fn coordinator_config(replicas: u8) -> coordinator::Config {
    coordinator::Config {
        replication: coordinator::Replication {
            replicas: replicas.clamp(1, coordinator::replication::MAX_REPLICAS),
            // Every embedded peer is in this process, on one address.
            replicas_on_distinct_hosts: false,
            ..Default::default()
        },
        shutdown_grace: Duration::from_millis(500),
        ..Default::default()
    }
}

fn peer_config(url: &str, dialer: Option<&Dialer>, access: &PeerAccess) -> peer::PeerConfig {
    peer::PeerConfig {
        coordinator_url: url.to_owned(),
        token: access.token.clone(),
        ca_file: access.ca_file.clone(),
        peer_id: access.peer_id.clone(),
        dialer: dialer.cloned(),
        ..Default::default()
    }
}

/// Waits until `handle` has registered or `deadline` passes; whether it registered.
async fn registered_by(handle: &peer::PeerHandle, deadline: tokio::time::Instant) -> bool {
    tokio::time::timeout_at(deadline, handle.wait_for(|s| s.connected)).await.is_ok()
}

fn not_registered(handle: &peer::PeerHandle, url: &str) -> ClusterEvent {
    ClusterEvent::Failed(format!(
        "peer {} has not registered with {url} after {REGISTER_TIMEOUT:?}; it keeps trying",
        handle.peer_id()
    ))
}

async fn cluster_main(
    coordinator_url: Option<String>,
    EmbeddedOptions { peers: initial_peers, access, replicas, in_memory }: EmbeddedOptions,
    ready: Sender<Result<Ready, EmbeddedError>>,
    events: Sender<ClusterEvent>,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
    registered: Arc<AtomicU64>,
) {
    let mut coordinator = None;
    let url = match coordinator_url {
        Some(url) => url,
        None => match spawn_coordinator(coordinator_config(replicas), in_memory).await {
            Ok(handle) => {
                let url = handle.url();
                coordinator = Some(handle);
                url
            }
            Err(e) => {
                let _ = ready.send(Err(EmbeddedError::Coordinator(e)));
                return;
            }
        },
    };
    let dialer = coordinator.as_ref().map(coordinator::CoordinatorHandle::dialer);
    // The peers connect in memory only when nothing listens.
    let peer_dialer = dialer.as_ref().filter(|_| in_memory);
    // Start the initial peers together, then wait for them to register (one deadline).
    let mut peers: Vec<peer::PeerHandle> = Vec::new();
    for _ in 0..initial_peers {
        match peer::try_spawn(peer_config(&url, peer_dialer, &access)).await {
            Ok(p) => peers.push(p),
            Err(error) => {
                let _ = ready.send(Err(EmbeddedError::Peer { url, error }));
                stop(peers, coordinator).await;
                return;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
    for p in &peers {
        if !registered_by(p, deadline).await {
            let _ = events.try_send(not_registered(p, &url));
        }
    }
    let ids = peers.iter().map(|p| p.peer_id().to_string()).collect();
    if ready.send(Ok(Ready { url: url.clone(), dialer: dialer.clone(), peers: ids })).is_err() {
        // Nobody waits any more (start timed out).
        stop(peers, coordinator).await;
        return;
    }

    let mut refresh = tokio::time::interval(REFRESH);
    // Peers started by `AddPeer` come back here once registered (or given up on), so the
    // wait for a registration never holds up the other commands or shutdown.
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<Result<peer::PeerHandle, String>>(COMMAND_QUEUE);
    loop {
        let command = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => command,
                None => break,
            },
            Some(started) = started_rx.recv() => {
                let event = match started {
                    Ok(p) => {
                        let id = p.peer_id().to_string();
                        peers.push(p);
                        ClusterEvent::PeerStarted(id)
                    }
                    Err(why) => ClusterEvent::Failed(why),
                };
                let _ = events.try_send(event);
                continue;
            }
            _ = refresh.tick() => {
                if let Some(c) = &coordinator {
                    registered.store(c.stats().peers, Ordering::Relaxed);
                }
                continue;
            }
        };
        let event = match command {
            Command::AddPeer => {
                let (config, url, events, started) =
                    (peer_config(&url, peer_dialer, &access), url.clone(), events.clone(), started_tx.clone());
                tokio::spawn(async move {
                    let result = match peer::try_spawn(config).await {
                        Ok(p) => {
                            if !registered_by(&p, tokio::time::Instant::now() + REGISTER_TIMEOUT).await {
                                let _ = events.try_send(not_registered(&p, &url));
                            }
                            Ok(p)
                        }
                        Err(e) => Err(format!("cannot start a peer: {e}")),
                    };
                    // The cluster is stopping: this peer is nobody's.
                    if let Err(tokio::sync::mpsc::error::SendError(Ok(p))) = started.send(result).await {
                        p.kill();
                    }
                });
                continue;
            }
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
    // The game is gone.
    stop(peers, coordinator).await;
}

/// The in-process coordinator: on `127.0.0.1`, a free port, or on no port at all.
async fn spawn_coordinator(
    config: coordinator::Config,
    in_memory: bool,
) -> std::io::Result<coordinator::CoordinatorHandle> {
    if in_memory { coordinator::spawn_in_memory(config).await } else { coordinator::spawn("127.0.0.1:0", config).await }
}

/// Shuts down the peers, then the coordinator, within the time [`Drop`] waits.
async fn stop(peers: Vec<peer::PeerHandle>, coordinator: Option<coordinator::CoordinatorHandle>) {
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
