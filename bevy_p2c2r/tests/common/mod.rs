//! Shared helpers for the plugin's integration tests: an in-process coordinator and
//! peers on loopback port 0, and headless Bevy apps driven one fixed tick per update.
//! Scripted coordinators come from the testkit (`p2c2r_testkit::server`).

#![allow(dead_code, unused_imports)]

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_p2c2r::prelude::*;
pub use p2c2r_testkit::server::{Conn, frame, scripted_server};

/// Fixed tick rate of the test apps.
pub const HZ: f64 = 60.0;

/// A tokio runtime holding a coordinator and its peers.
pub struct Cluster {
    pub rt: tokio::runtime::Runtime,
    pub coordinator: Option<coordinator::CoordinatorHandle>,
    pub url: String,
}

impl Cluster {
    /// A coordinator on a free loopback port, no peer yet.
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let coordinator =
            rt.block_on(coordinator::spawn("127.0.0.1:0", coordinator::Config::default())).expect("coordinator starts");
        let url = coordinator.url();
        Cluster { rt, coordinator: Some(coordinator), url }
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

impl Drop for Cluster {
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
        .spawn((
            OffloadedBody::fixed(BodyShape::cuboid(Vec3::new(40.0, 1.0, 40.0))),
            Transform::from_xyz(0.0, -0.5, 0.0),
        ))
        .id()
}

/// A ball at the origin moving down at 3 m/s (tests run with zero gravity, so its height
/// tells which tick it has reached).
pub fn spawn_sinking_ball(app: &mut App) -> Entity {
    app.world_mut()
        .spawn((
            OffloadedBody::dynamic(BodyShape::ball(0.5)).with_linvel(Vec3::new(0.0, -3.0, 0.0)),
            Transform::default(),
        ))
        .id()
}
