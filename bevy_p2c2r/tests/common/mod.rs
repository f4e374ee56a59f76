//! Shared helpers for the plugin's integration tests: an in-process coordinator and
//! peers reached through in-memory connections (the plugin's own `EmbeddedCluster`, for
//! tests where sockets are not the point) or on loopback port 0 (on a runtime the test
//! holds), and headless Bevy apps driven one fixed tick per update. Scripted
//! coordinators come from the testkit (`p2c2r_testkit::server`).

#![allow(dead_code, unused_imports)]

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_p2c2r::embedded::ClusterEvent;
use bevy_p2c2r::prelude::*;
pub use p2c2r_testkit::server::{Conn, frame, scripted_server};

/// Fixed tick rate of the test apps.
pub const HZ: f64 = 60.0;

/// How long a peer may take to start, register, or die.
const PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// An in-process coordinator with no port and the peers the test starts and kills, all
/// connected in memory: the [`EmbeddedCluster`] of `P2c2rPlugin::embedded_in_memory()`,
/// outside any app. [`Cluster::plugin`] connects a plugin to it.
pub struct Cluster {
    pub embedded: EmbeddedCluster,
    pub url: String,
}

/// A peer of a [`Cluster`].
pub struct Peer {
    id: String,
}

impl Peer {
    pub fn peer_id(&self) -> &str {
        &self.id
    }
}

impl Cluster {
    /// A coordinator with no port, no peer yet.
    pub fn new() -> Self {
        Self::replicated(1)
    }

    /// A coordinator running each physics session on `replicas` peers, no peer yet.
    pub fn replicated(replicas: u8) -> Self {
        let embedded =
            EmbeddedCluster::start_in_memory(0, Default::default(), replicas).expect("the embedded cluster starts");
        let url = embedded.url().to_owned();
        Cluster { embedded, url }
    }

    /// The plugin, connecting to this cluster's coordinator in memory.
    pub fn plugin(&self) -> P2c2rPlugin {
        P2c2rPlugin::new(&self.url)
            .with_connection(ConnectionSettings { dialer: self.embedded.dialer().cloned(), ..Default::default() })
    }

    /// Starts a peer and waits until it is registered.
    pub fn peer(&mut self) -> Peer {
        assert!(self.embedded.add_peer(), "the cluster takes the command");
        let id = self.wait_for(|event| match event {
            ClusterEvent::PeerStarted(id) => Some(id.clone()),
            _ => None,
        });
        Peer { id }
    }

    /// Kills the peer abruptly (like a crash) and waits until it is gone.
    pub fn kill(&mut self, peer: &Peer) {
        assert!(self.embedded.kill_peer(Some(peer.peer_id())), "the cluster takes the command");
        self.wait_for(|event| match event {
            ClusterEvent::PeerKilled(id) if id == peer.peer_id() => Some(()),
            _ => None,
        });
    }

    /// Polls the cluster until `found` picks an event; panics on a failure or after
    /// [`PEER_TIMEOUT`].
    fn wait_for<T>(&mut self, mut found: impl FnMut(&ClusterEvent) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            for event in self.embedded.poll() {
                if let ClusterEvent::Failed(why) = &event {
                    panic!("the embedded cluster failed: {why}");
                }
                if let Some(t) = found(&event) {
                    return t;
                }
            }
            assert!(start.elapsed() < PEER_TIMEOUT, "no answer from the embedded cluster in {PEER_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A coordinator and peers on a tokio runtime the test holds: for tests that restart the
/// coordinator or put a proxy in front of it.
pub struct TokioCluster {
    pub rt: tokio::runtime::Runtime,
    pub coordinator: Option<coordinator::CoordinatorHandle>,
    pub url: String,
}

impl TokioCluster {
    /// A coordinator on a free loopback port, no peer yet.
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let coordinator =
            rt.block_on(coordinator::spawn("127.0.0.1:0", coordinator::Config::default())).expect("coordinator starts");
        let url = coordinator.url();
        TokioCluster { rt, coordinator: Some(coordinator), url }
    }

    /// Starts a peer and waits until it is registered.
    pub fn peer(&self) -> peer::PeerHandle {
        let config = peer::PeerConfig { coordinator_url: self.url.clone(), ..Default::default() };
        self.rt.block_on(async {
            let handle = peer::spawn(config).await;
            tokio::time::timeout(Duration::from_secs(10), handle.wait_for(|s| s.connected))
                .await
                .expect("peer registers within 10 s");
            handle
        })
    }
}

impl Drop for TokioCluster {
    fn drop(&mut self) {
        if let Some(c) = self.coordinator.take() {
            self.rt.block_on(c.shutdown());
        }
    }
}

/// A headless app (MinimalPlugins) with the plugin; every `update` advances the clock by
/// `frame` of game time.
pub fn app_with(plugin: P2c2rPlugin, frame: Duration) -> App {
    let mut app = App::new();
    app.add_plugins(MinimalPlugins).add_plugins(plugin.tick_rate(HZ));
    app.insert_resource(TimeUpdateStrategy::ManualDuration(frame));
    app
}

/// One fixed tick per update.
pub fn tick_duration() -> Duration {
    Duration::from_secs_f64(1.0 / HZ)
}

/// Runs updates, paced at `pace` of real time each, until `done` holds; panics after
/// `timeout` (real time). `each` sees the app after every update.
pub fn run_until(
    app: &mut App,
    timeout: Duration,
    pace: Duration,
    mut each: impl FnMut(&mut App),
    mut done: impl FnMut(&mut App) -> bool,
    what: &str,
) {
    let start = Instant::now();
    loop {
        let frame_start = Instant::now();
        app.update();
        each(app);
        if done(app) {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}; stats: {:?}", stats(app));
        if let Some(rest) = pace.checked_sub(frame_start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

pub fn stats(app: &App) -> P2c2rStats {
    app.world().resource::<P2c2rStats>().clone()
}

pub fn y(app: &App, e: Entity) -> f32 {
    app.world().get::<Transform>(e).unwrap().translation.y
}

/// A fixed ground whose top is at y = 0.
pub fn spawn_ground(app: &mut App) -> Entity {
    app.world_mut()
        .spawn(((RigidBody::Fixed, Collider::cuboid(20.0, 0.5, 20.0)), Transform::from_xyz(0.0, -0.5, 0.0)))
        .id()
}

/// A ball at the origin moving down at 3 m/s (tests run with zero gravity, so its height
/// tells which tick it has reached).
pub fn spawn_sinking_ball(app: &mut App) -> Entity {
    app.world_mut()
        .spawn((
            (RigidBody::Dynamic, Collider::ball(0.5), Velocity::linear(Vec3::new(0.0, -3.0, 0.0))),
            Transform::default(),
        ))
        .id()
}

/// A scripted peer's side of `physics_step` payloads, in either encoding: it reads a
/// request as the plugin sent it (packed or JSON) and answers in kind (a packed answer is
/// a delta against the previous packed answer, as a real peer's).
#[derive(Default)]
pub struct PeerWire {
    encoder: p2c2r_protocol::packed::ResultEncoder,
}

impl PeerWire {
    /// The request in a `task_request`, and whether it was packed.
    pub fn read(request: &p2c2r_protocol::TaskRequest) -> (p2c2r_protocol::physics::PhysicsStepRequest, bool) {
        match request.task_data.binary_bytes() {
            Some(bytes) => (p2c2r_protocol::packed::decode_request(&bytes).expect("a packed request"), true),
            None => (serde_json::from_str(request.task_data.json().unwrap()).expect("a JSON request"), false),
        }
    }

    /// The answer to `step`: a packed success when the request was packed, JSON otherwise
    /// (errors are always JSON).
    pub fn answer(
        &mut self,
        step: &p2c2r_protocol::physics::PhysicsStepRequest,
        packed: bool,
        outcome: Result<p2c2r_protocol::physics::PhysicsStepResult, p2c2r_protocol::TaskError>,
    ) -> p2c2r_protocol::Payload {
        match outcome {
            Ok(result) if packed => {
                let mut bytes = Vec::new();
                let elapsed = step.dt * step.steps as f32;
                self.encoder.encode(&result, step.snapshot, elapsed, &mut bytes).expect("a packable result");
                p2c2r_protocol::Payload::binary(bytes)
            }
            Ok(result) => p2c2r_protocol::to_payload(&result).unwrap(),
            Err(e) => p2c2r_protocol::to_payload(&e).unwrap(),
        }
    }
}
