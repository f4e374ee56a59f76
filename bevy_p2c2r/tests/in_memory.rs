//! The in-memory transport: the plugin, a coordinator and a peer in one process, joined by
//! in-memory connections that speak the same WebSocket protocol as TCP ones, with no
//! socket. (The coordinator's limits on them, per-address caps, credentials and frame
//! sizes, are tested in `coordinator/src/memory.rs`.)
//!
//! Every test here stays off TCP: the first one checks that this process holds no TCP
//! socket while it runs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bevy::prelude::*;
use bevy_p2c2r::Dialer;
use bevy_p2c2r::prelude::*;
use common::*;

const PACE: Duration = Duration::from_millis(3);
const TIMEOUT: Duration = Duration::from_secs(60);

/// The TCP sockets this process holds: those of its file descriptors that the kernel's
/// TCP tables (`/proc/self/net/tcp`, `tcp6`) list, by inode.
#[cfg(target_os = "linux")]
fn tcp_sockets_held() -> usize {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut held = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        // The tenth column is the socket's inode.
        held += text
            .lines()
            .skip(1)
            .filter(|line| line.split_whitespace().nth(9).is_some_and(|i| inodes.contains(i)))
            .count();
    }
    held
}

#[test]
fn a_gamer_a_coordinator_and_a_peer_run_in_memory_without_a_tcp_socket() {
    let mut app = app_with(P2c2rPlugin::embedded_in_memory().gamer_id("no-sockets"), tick_duration());
    let cluster = app.world().resource::<EmbeddedCluster>();
    assert!(cluster.embedded_coordinator());
    assert_eq!(cluster.url(), "ws://127.0.0.1:0", "the coordinator has no port");
    assert!(cluster.dialer().is_some());
    assert_eq!(cluster.peers().len(), 1);
    let peer = cluster.peers()[0].clone();
    spawn_ground(&mut app);
    let ball =
        app.world_mut().spawn(((RigidBody::Dynamic, Collider::ball(0.5)), Transform::from_xyz(0.0, 5.0, 0.0))).id();
    let mut frames = 0u32;
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {
            frames += 1;
            #[cfg(target_os = "linux")]
            if frames % 10 == 1 {
                assert_eq!(tcp_sockets_held(), 0, "a TCP socket is open (frame {frames})");
            }
        },
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= 90 && y(app, ball) < 2.0
        },
        "the in-memory peer to step the falling ball",
    );
    let s = stats(&app);
    assert_eq!(s.serving_peer.as_deref(), Some(peer.as_str()), "{s:?}");
    assert!(s.network.bytes_sent > 0 && s.network.bytes_received > 0, "{:?}", s.network);
    assert!(y(&app, ball) > 0.0, "the ball stays above the ground: {}", y(&app, ball));
    #[cfg(target_os = "linux")]
    {
        assert_eq!(tcp_sockets_held(), 0);
        // The probe sees a TCP socket when there is one.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tcp_sockets_held() >= 1, "the probe finds TCP sockets");
        drop(listener);
    }
}

/// In-memory connections through a dialer, each relayed on a runtime of the test's own
/// so that the test can cut them all ([`Relay::sever`]), as a network failure would.
struct Relay {
    runtime: tokio::runtime::Runtime,
    inner: Dialer,
    cut: tokio::sync::watch::Sender<u64>,
    dials: Arc<AtomicUsize>,
}

impl Relay {
    fn new(inner: Dialer) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Relay { runtime, inner, cut: tokio::sync::watch::channel(0).0, dials: Arc::default() }
    }

    /// A dialer whose every connection goes through the relay.
    fn dialer(&self) -> Dialer {
        let (inner, runtime, cut, dials) =
            (self.inner.clone(), self.runtime.handle().clone(), self.cut.clone(), self.dials.clone());
        Dialer::new("relay", move || {
            let mut upstream = inner.dial()?;
            let (client, mut ours) = tokio::io::duplex(64 * 1024);
            // Cut by a `sever` after this dial only.
            let mut severed = cut.subscribe();
            dials.fetch_add(1, Ordering::Relaxed);
            runtime.spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut ours, &mut upstream) => {}
                    _ = severed.changed() => {}
                }
            });
            Ok(client)
        })
    }

    /// Drops both ends of every connection relayed so far.
    fn sever(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn dials(&self) -> usize {
        self.dials.load(Ordering::Relaxed)
    }
}

/// Every connection change the app saw, in order.
#[derive(Resource, Default)]
struct Changes(Vec<ConnectionState>);

fn collect_changes(mut changes: MessageReader<ConnectionChanged>, mut seen: ResMut<Changes>) {
    seen.0.extend(changes.read().map(|c| c.state.clone()));
}

#[test]
fn a_dropped_in_memory_connection_is_a_disconnect_and_the_plugin_reconnects() {
    let cluster = EmbeddedCluster::start_in_memory(1, PeerAccess::default(), 1).expect("the cluster starts");
    let relay = Relay::new(cluster.dialer().expect("an in-process coordinator").clone());
    let mut app = app_with(
        P2c2rPlugin::new(cluster.url())
            .gamer_id("severed")
            .with_connection(ConnectionSettings {
                dialer: Some(relay.dialer()),
                reconnect_backoff: (Duration::from_millis(20), Duration::from_millis(200)),
                ..default()
            })
            .with_configuration(P2c2rConfiguration { gravity: Vec3::ZERO, ..default() }),
        tick_duration(),
    );
    app.init_resource::<Changes>().add_systems(Update, collect_changes);
    spawn_sinking_ball(&mut app);
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| stats(app).mode == OffloadMode::Offloaded && stats(app).physics_results_from_peers >= 30,
        "offloaded through the relay",
    );
    assert_eq!(relay.dials(), 1);
    let seen_before = app.world().resource::<Changes>().0.len();
    let results_before = stats(&app).physics_results_from_peers;

    relay.sever();
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| {
            let changes = &app.world().resource::<Changes>().0[seen_before..];
            let lost = changes.iter().position(|c| matches!(c, ConnectionState::Disconnected { .. }));
            lost.is_some_and(|i| changes[i..].iter().any(ConnectionState::is_connected))
        },
        "a disconnect, then a connection again",
    );
    assert!(relay.dials() >= 2, "the client dialed again: {} dials", relay.dials());
    run_until(
        &mut app,
        TIMEOUT,
        PACE,
        |_| {},
        |app| {
            let s = stats(app);
            s.mode == OffloadMode::Offloaded && s.physics_results_from_peers >= results_before + 30
        },
        "offloaded again after the reconnection",
    );
    assert_eq!(stats(&app).serving_peer.as_deref(), Some(cluster.peers()[0].as_str()));
}
