//! [`P2c2rPlugin`]: its settings and builder, its public system sets, and how the
//! stages' systems (each in its own module) are wired into the schedule.
//!
//! ```text
//! Receive  receive.rs      network events → offload controller → queued results
//! Apply    apply.rs        queued results → PhysicsState / AgentState (playout)
//! Send     gather.rs       ECS → TickChanges (register, removals, forces, commands)
//!          send.rs         controller plans → build.rs (pure) → bridge / local sim
//! Interpolate interpolate.rs  PoseInterpolation → Transform
//! ```

use std::path::PathBuf;
use std::time::Duration;

use bevy::app::{FixedPostUpdate, FixedPreUpdate, RunFixedMainLoop, RunFixedMainLoopSystems};
use bevy::diagnostic::{Diagnostic, RegisterDiagnostic};
use bevy::prelude::*;

use crate::apply::{self, Results};
use crate::bridge::P2c2rClient;
use crate::build::TickChanges;
use crate::client::ClientConfig;
pub use crate::client::{Credential, Dialer};
use crate::events::{self, CollisionEvent, ContactForceEvent, Contacts};
use crate::gather;
use crate::ids::EntityIds;
use crate::interpolate::interpolate;
use crate::messages::*;
use crate::offload::{FallbackTimeout, OffloadController};
use crate::queries::{self, PhysicsQueries};
use crate::receive::receive;
use crate::send::{self, Fallback};
use crate::shape_names::ShapeNames;
use crate::stats::{P2c2rStats, diagnostics};
pub use p2c2r_protocol::Encoding;

/// What to do when no peer answers in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FallbackPolicy {
    /// Step physics and AI in-process with the engine peers run (`p2c2r_sim`) until
    /// peers answer again (the default): the game never freezes.
    #[default]
    Local,
    /// Wait for peers: offloaded bodies and agents stop moving until a peer answers.
    Disabled,
}

/// The stages of the plugin, in frame order. Order your systems around them.
///
/// ```text
/// FixedPreUpdate   Receive  drain results and connection events from the transport
///                  Apply    write results into PhysicsState / AgentState, step agents
/// FixedUpdate      (your game logic: read states, add forces, spawn bodies)
/// FixedPostUpdate  Send     batch this tick's changes into one physics_step and one
///                           ai_navigate request; send them (or step locally)
/// RunFixedMainLoop Interpolate  (AfterFixedMainLoop) write interpolated Transforms
/// ```
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum P2c2rSystems {
    /// `FixedPreUpdate`: takes everything the network delivered from [`P2c2rClient`],
    /// matches it with what was sent, handles errors, resyncs and mode changes,
    /// and writes [`ConnectionChanged`], [`TaskFailed`], [`ModeChanged`] and
    /// [`TaskResultReceived`] messages.
    Receive,
    /// `FixedPreUpdate`, after `Receive`: applies received results to [`PhysicsState`]
    /// and [`AgentState`] in tick order (one physics tick per fixed tick; bursts are
    /// played out at up to two per tick, long backlogs drained), advances agents that
    /// have no body, and writes [`PhysicsStepped`] / [`AiStepped`]. Systems in
    /// `FixedUpdate` see the results.
    Apply,
    /// `FixedPostUpdate`: registers new bodies and agents, gathers removals, forces,
    /// impulses, kinematic targets and [`PhysicsCommand`]s, and sends one `physics_step`
    /// and one `ai_navigate` request for this tick to the network (or steps them locally
    /// in fallback); then publishes [`P2c2rStats`] and the diagnostics.
    Send,
    /// `FixedPostUpdate`, before `Send`: moves each [`crate::KinematicCharacterController`]
    /// by its wanted translation against the world the game holds, pushes what it bumps
    /// into, and makes its new pose the body's kinematic target for this tick.
    Characters,
    /// `RunFixedMainLoop` (in `AfterFixedMainLoop`): writes each offloaded entity's
    /// `Transform`, interpolated between the last two ticks by the fixed clock's
    /// overstep, so motion is smooth at any frame rate. Runs before `Update`.
    Interpolate,
}

/// How the plugin reaches the coordinator: grouped so that one value configures it
/// ([`P2c2rPlugin::with_connection`]).
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    /// The coordinator's WebSocket URL (`ws://HOST:PORT`, or `wss://` for TLS); `None`
    /// keeps the one the plugin was made with ([`P2c2rPlugin::new`], or none for
    /// [`P2c2rPlugin::local_only`] and [`P2c2rPlugin::embedded`]).
    pub coordinator_url: Option<String>,
    /// Other coordinators of the same fleet: after a failed attempt or a lost connection
    /// the next attempt goes to the next of `coordinator_url` and these, and resumes the
    /// gamer's id there (README, "Many coordinators, one fleet"). Empty (the default): the
    /// one coordinator.
    pub fallback_urls: Vec<String>,
    /// The gamer id to register with (default: `gamer-` and a random suffix). It must be
    /// unique among the coordinator's connected gamers.
    pub gamer_id: Option<String>,
    /// The physics session id (default: `s-<random>`, never the gamer id: peers see it).
    /// The AI session is this id with `:ai` appended.
    pub session_id: Option<String>,
    /// The per-attempt deadline sent with each task (default 500 ms): the coordinator
    /// re-dispatches a task to another peer when it passes.
    pub task_deadline: Duration,
    /// The first and the largest reconnect delay (default 100 ms and 5 s).
    pub reconnect_backoff: (Duration, Duration),
    /// The bearer token presented to the coordinator (`Authorization: Bearer <token>` in
    /// the WebSocket upgrade; for gamers, usually a JWT): [`Credential::Token`], or
    /// [`Credential::File`], read again at every reconnection so that a renewed token is
    /// picked up. A coordinator that refuses it answers HTTP 401/403: the plugin logs it,
    /// reports it in [`ConnectionChanged`], steps locally and keeps retrying.
    pub token: Option<Credential>,
    /// For a `wss://` coordinator: trust the certificates of this PEM file (a private CA,
    /// or a self-signed certificate) instead of the public web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// How physics travels (default [`Encoding::Binary`]: binary frames and packed
    /// `physics_step` payloads, PROTOCOL.md "Packed `physics_step`"); [`Encoding::Json`]:
    /// JSON text. Against a coordinator without binary frames the plugin sends JSON.
    pub wire: Encoding,
    /// Reach the coordinator through this [`Dialer`] (in-memory connections to a
    /// coordinator in this process: `coordinator::CoordinatorHandle::dialer`,
    /// [`EmbeddedCluster::dialer`](crate::embedded::EmbeddedCluster::dialer)) instead of
    /// TCP; `coordinator_url` still names the host and path of the upgrade request, and
    /// every reconnection dials again. `None` keeps the one set before (none: TCP). For
    /// headless tests with no sockets; [`P2c2rPlugin::embedded_in_memory`] sets it up.
    pub dialer: Option<Dialer>,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            coordinator_url: None,
            fallback_urls: Vec::new(),
            gamer_id: None,
            session_id: None,
            task_deadline: Duration::from_millis(500),
            reconnect_backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            token: None,
            ca_file: None,
            wire: Encoding::Binary,
            dialer: None,
        }
    }
}

/// What happens when no peer answers in time ([`P2c2rPlugin::with_fallback`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FallbackSettings {
    /// Step locally (the default) or wait for peers.
    pub policy: FallbackPolicy,
    /// The least time the oldest unanswered request may wait before the local fallback
    /// takes over (default 100 ms). Shorter: faster takeover, more false alarms.
    pub timeout: Duration,
    /// The most the adaptive timeout may grow to (default 1 s): a peer slower than this
    /// is abandoned however steady it is.
    pub max_timeout: Duration,
    /// Adapt the timeout to the measured round trip (the default): the smoothed round
    /// trip of peer results plus four times its variation (as TCP's retransmission
    /// timeout), between `timeout` and `max_timeout`, so a peer 150 ms away is not
    /// abandoned and a dead one is noticed within a few of its round trips. Off: always
    /// `timeout`.
    pub adaptive: bool,
    /// How often the fallback checks whether a peer answers again (default 500 ms).
    pub probe_interval: Duration,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        FallbackSettings {
            policy: FallbackPolicy::Local,
            timeout: Duration::from_millis(100),
            max_timeout: Duration::from_secs(1),
            adaptive: true,
            probe_interval: Duration::from_millis(500),
        }
    }
}

/// The world's settings, a resource the game may change while playing (bevy_rapier3d's
/// `RapierConfiguration`): a change reaches the world with the next tick's request.
#[derive(Resource, Clone, Copy, Debug, PartialEq)]
pub struct P2c2rConfiguration {
    /// Gravity (default `(0, -9.81, 0)`).
    pub gravity: Vec3,
    /// Physics steps per tick (default 1); each step is `timestep / substeps`.
    pub substeps: u32,
    /// Interpolate `Transform`s between the last two ticks (default on). Off:
    /// `Transform`s jump to each tick's state.
    pub interpolation: bool,
    /// Keep the copy of the world that [`crate::PhysicsQueries`] and character controllers
    /// read (default on). Off saves its upkeep in a game that never queries; queries then
    /// see nothing and characters walk through everything.
    pub scene_queries: bool,
}

impl Default for P2c2rConfiguration {
    fn default() -> Self {
        P2c2rConfiguration {
            gravity: Vec3::new(0.0, -9.81, 0.0),
            substeps: 1,
            interpolation: true,
            scene_queries: true,
        }
    }
}

/// The Bevy plugin: offloads the physics of the bodies (entities with a [`crate::Collider`])
/// and the navigation of [`OffloadedAgent`](crate::OffloadedAgent) entities to P2C2R peers,
/// with a local fallback.
///
/// Build it with [`P2c2rPlugin::new`] (a coordinator's URL), [`P2c2rPlugin::embedded`]
/// (the whole system in the app), [`P2c2rPlugin::local_only`] or [`Default`]
/// (`ws://127.0.0.1:8765`); then, where the defaults do not fit, [`gamer_id`](Self::gamer_id),
/// [`tick_rate`](Self::tick_rate) and the grouped settings:
/// [`with_connection`](Self::with_connection), [`with_fallback`](Self::with_fallback) and
/// [`with_configuration`](Self::with_configuration) (the initial [`P2c2rConfiguration`]
/// resource, which the game may change while playing).
#[derive(Clone, Debug)]
pub struct P2c2rPlugin {
    connection: ConnectionSettings,
    fallback: FallbackSettings,
    configuration: P2c2rConfiguration,
    tick_rate: Option<f64>,
    /// [`P2c2rPlugin::embedded`]: the in-process cluster to start in `build`.
    #[cfg(feature = "embedded")]
    pub(crate) embedded: Option<crate::embedded::EmbeddedOptions>,
}

/// The coordinator URL [`P2c2rPlugin::default`] connects to.
pub const DEFAULT_COORDINATOR_URL: &str = "ws://127.0.0.1:8765";

impl Default for P2c2rPlugin {
    fn default() -> Self {
        P2c2rPlugin {
            connection: ConnectionSettings {
                coordinator_url: Some(DEFAULT_COORDINATOR_URL.to_owned()),
                ..Default::default()
            },
            fallback: FallbackSettings::default(),
            configuration: P2c2rConfiguration::default(),
            tick_rate: None,
            #[cfg(feature = "embedded")]
            embedded: None,
        }
    }
}

impl P2c2rPlugin {
    /// The default plugin, connecting to this coordinator URL (`ws://HOST:PORT`).
    pub fn new(coordinator_url: impl Into<String>) -> Self {
        let mut plugin = Self::default();
        plugin.connection.coordinator_url = Some(coordinator_url.into());
        plugin
    }

    /// No coordinator: physics and AI always run in-process (the fallback), e.g. for
    /// offline play or tests.
    pub fn local_only() -> Self {
        let mut plugin = Self::default();
        plugin.connection.coordinator_url = None;
        plugin
    }

    /// The whole system in this process: `build` starts a coordinator (on `127.0.0.1`, a
    /// free port) and one peer on their own thread and tokio runtime, connects to them,
    /// and inserts them as the [`EmbeddedCluster`](crate::embedded::EmbeddedCluster)
    /// resource (add and kill peers through it). More peers:
    /// [`embedded_peers`](Self::embedded_peers); a coordinator URL set with
    /// [`with_connection`](Self::with_connection) afterwards is joined instead of starting
    /// one. If the cluster cannot start, the plugin logs why and steps locally, as with no
    /// coordinator. Needs the `embedded` feature (on by default).
    #[cfg(feature = "embedded")]
    pub fn embedded() -> Self {
        let mut plugin = Self::local_only();
        plugin.embedded = Some(Default::default());
        plugin
    }

    /// Sets the gamer id to register with (see [`ConnectionSettings::gamer_id`]).
    pub fn gamer_id(mut self, id: impl Into<String>) -> Self {
        self.connection.gamer_id = Some(id.into());
        self
    }

    /// Sets the fixed tick rate in Hz (this sets `Time<Fixed>`; default: leave the app's
    /// fixed timestep alone, 64 Hz unless changed). One physics and one AI request are
    /// sent per tick.
    pub fn tick_rate(mut self, hz: f64) -> Self {
        self.tick_rate = Some(hz);
        self
    }

    /// Sets how the plugin reaches the coordinator. Its `coordinator_url`, `gamer_id` and
    /// `dialer`, when `None`, keep what was set before.
    pub fn with_connection(mut self, connection: ConnectionSettings) -> Self {
        let (url, gamer_id, dialer) =
            (self.connection.coordinator_url.take(), self.connection.gamer_id.take(), self.connection.dialer.take());
        self.connection = connection;
        self.connection.coordinator_url = self.connection.coordinator_url.take().or(url);
        self.connection.gamer_id = self.connection.gamer_id.take().or(gamer_id);
        self.connection.dialer = self.connection.dialer.take().or(dialer);
        self
    }

    /// Sets what happens when no peer answers.
    pub fn with_fallback(mut self, fallback: FallbackSettings) -> Self {
        self.fallback = fallback;
        self
    }

    /// Sets the initial [`P2c2rConfiguration`] (gravity, substeps, interpolation).
    pub fn with_configuration(mut self, configuration: P2c2rConfiguration) -> Self {
        self.configuration = configuration;
        self
    }
}

/// Settings the stages read that do not change while playing (plugin-internal).
#[derive(Resource, Clone, Debug)]
pub(crate) struct Settings {
    /// Packed `physics_step` payloads ([`Encoding::Binary`]) or JSON.
    pub wire: Encoding,
}

/// The offload controller and the tick counter (plugin-internal).
#[derive(Resource, Debug)]
pub(crate) struct Offload {
    pub controller: OffloadController,
    /// The last tick sent (or stepped).
    pub tick: u64,
}

impl Plugin for P2c2rPlugin {
    fn build(&self, app: &mut App) {
        // `embedded()`: start the in-process cluster and connect to it (or, if it cannot
        // start, to the coordinator set, if any).
        let connection = &self.connection;
        #[cfg(feature = "embedded")]
        let (coordinator_url, dialer) = match &self.embedded {
            Some(options) => match crate::embedded::start_in(app, options, connection.coordinator_url.clone()) {
                (url, Some(dialer)) => (url, Some(dialer)),
                (url, None) => (url, connection.dialer.clone()),
            },
            None => (connection.coordinator_url.clone(), connection.dialer.clone()),
        };
        #[cfg(not(feature = "embedded"))]
        let (coordinator_url, dialer) = (connection.coordinator_url.clone(), connection.dialer.clone());
        let gamer_id = connection.gamer_id.clone().unwrap_or_else(|| format!("gamer-{:08x}", fastrand::u32(..)));
        // Not the gamer id: session and task ids reach peers, which must not learn whom
        // they serve (they see an alias of the gamer id).
        let session = connection.session_id.clone().unwrap_or_else(|| format!("s-{:016x}", fastrand::u64(..)));
        let deadline_ms = connection.task_deadline.as_millis().max(1) as u64;
        let client = match &coordinator_url {
            Some(url) => {
                let mut config = ClientConfig::new(url.clone(), gamer_id.clone());
                (config.backoff_initial, config.backoff_max) = connection.reconnect_backoff;
                config.token = connection.token.clone();
                config.ca_file = connection.ca_file.clone();
                config.encoding = connection.wire;
                config.dialer = dialer;
                config.fallback_urls = connection.fallback_urls.clone();
                P2c2rClient::connect(config, session.clone(), Some(deadline_ms))
            }
            None => P2c2rClient::offline(gamer_id.clone(), session.clone()),
        };
        let fallback = &self.fallback;
        let timeout = if fallback.adaptive {
            FallbackTimeout::Adaptive { min: fallback.timeout, max: fallback.max_timeout }
        } else {
            FallbackTimeout::Fixed(fallback.timeout)
        };
        let controller = OffloadController::new(
            client.has_transport(),
            fallback.policy == FallbackPolicy::Local,
            timeout,
            fallback.probe_interval,
        );
        let mut stats = P2c2rStats::default();
        stats.mode = controller.mode();
        stats.connection = client.connection().clone();
        stats.session_id = session;
        if let Some(hz) = self.tick_rate {
            app.insert_resource(Time::<Fixed>::from_hz(hz));
        }
        app.insert_resource(client)
            .insert_resource(stats)
            .insert_resource(Settings { wire: connection.wire })
            .insert_resource(self.configuration)
            .insert_resource(Offload { controller, tick: 0 })
            .init_resource::<EntityIds>()
            .init_resource::<TickChanges>()
            .init_resource::<Results>()
            .init_resource::<Fallback>()
            .init_resource::<Contacts>()
            .init_resource::<ShapeNames>()
            .init_resource::<PhysicsQueries>()
            .init_resource::<crate::character::PendingPushes>()
            .add_message::<CollisionEvent>()
            .add_message::<ContactForceEvent>()
            .add_message::<PhysicsStepped>()
            .add_message::<AiStepped>()
            .add_message::<TaskFailed>()
            .add_message::<ConnectionChanged>()
            .add_message::<ModeChanged>()
            .add_message::<TaskResultReceived>()
            .add_message::<PhysicsCommand>()
            .add_message::<BodyLeftWorld>()
            .add_observer(gather::on_body_removed)
            .add_observer(gather::on_joint_removed)
            .add_observer(gather::on_agent_removed)
            .configure_sets(FixedPreUpdate, (P2c2rSystems::Receive, P2c2rSystems::Apply).chain())
            .configure_sets(FixedPostUpdate, (P2c2rSystems::Characters, P2c2rSystems::Send).chain())
            .configure_sets(
                RunFixedMainLoop,
                P2c2rSystems::Interpolate.in_set(RunFixedMainLoopSystems::AfterFixedMainLoop),
            )
            .add_systems(FixedPreUpdate, receive.in_set(P2c2rSystems::Receive))
            .add_systems(
                FixedPreUpdate,
                (
                    apply::shift_interpolation,
                    apply::apply_physics,
                    events::write_physics_events,
                    apply::report_bodies_left_world,
                    queries::update_queries,
                    apply::apply_ai,
                )
                    .chain()
                    .in_set(P2c2rSystems::Apply),
            )
            .add_systems(
                FixedPostUpdate,
                (
                    gather::register_bodies,
                    gather::register_agents,
                    ApplyDeferred,
                    gather::collect_changes,
                    gather::register_joints,
                    send::send_tick,
                    send::publish_stats,
                )
                    .chain()
                    .in_set(P2c2rSystems::Send),
            )
            .add_systems(FixedPostUpdate, crate::character::move_characters.in_set(P2c2rSystems::Characters))
            .add_systems(RunFixedMainLoop, interpolate.in_set(P2c2rSystems::Interpolate));
        gather::observe_body_parts(app);
        for path in diagnostics::ALL {
            let suffix = match path.as_str() {
                "p2c2r/rtt_ms" | "p2c2r/round_trip_ms" | "p2c2r/round_trip_variation_ms" => "ms",
                "p2c2r/bytes_sent" | "p2c2r/bytes_received" => "B",
                _ => "",
            };
            app.register_diagnostic(Diagnostic::new(path).with_suffix(suffix));
        }
    }
}
