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
use crate::client::{ClientConfig, Credential};
use crate::gather;
use crate::ids::EntityIds;
use crate::interpolate::interpolate;
use crate::messages::*;
use crate::offload::{FallbackTimeout, OffloadController};
use crate::receive::receive;
use crate::send::{self, Fallback};
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
    /// `RunFixedMainLoop` (in `AfterFixedMainLoop`): writes each offloaded entity's
    /// `Transform`, interpolated between the last two ticks by the fixed clock's
    /// overstep, so motion is smooth at any frame rate. Runs before `Update`.
    Interpolate,
}

/// The Bevy plugin: offloads the physics of [`OffloadedBody`] entities and the
/// navigation of [`OffloadedAgent`] entities to P2C2R peers, with a local fallback.
///
/// Build it with [`Default`] (coordinator at `ws://127.0.0.1:8765`) or
/// [`P2c2rPlugin::new`], then chain the builder methods.
#[derive(Clone, Debug)]
pub struct P2c2rPlugin {
    coordinator_url: Option<String>,
    gamer_id: Option<String>,
    session_id: Option<String>,
    tick_rate: Option<f64>,
    task_deadline: Duration,
    fallback: FallbackPolicy,
    fallback_timeout: Duration,
    max_fallback_timeout: Duration,
    adaptive_fallback: bool,
    probe_interval: Duration,
    gravity: Vec3,
    substeps: u32,
    interpolation: bool,
    backoff: (Duration, Duration),
    token: Option<Credential>,
    ca_file: Option<PathBuf>,
    wire: Encoding,
    /// [`P2c2rPlugin::embedded`]: the in-process cluster to start in `build`.
    #[cfg(feature = "embedded")]
    pub(crate) embedded: Option<crate::embedded::EmbeddedOptions>,
}

/// The coordinator URL [`P2c2rPlugin::default`] connects to.
pub const DEFAULT_COORDINATOR_URL: &str = "ws://127.0.0.1:8765";

impl Default for P2c2rPlugin {
    fn default() -> Self {
        P2c2rPlugin {
            coordinator_url: Some(DEFAULT_COORDINATOR_URL.to_owned()),
            gamer_id: None,
            session_id: None,
            tick_rate: None,
            task_deadline: Duration::from_millis(500),
            fallback: FallbackPolicy::Local,
            fallback_timeout: Duration::from_millis(100),
            max_fallback_timeout: Duration::from_secs(1),
            adaptive_fallback: true,
            probe_interval: Duration::from_millis(500),
            gravity: Vec3::new(0.0, -9.81, 0.0),
            substeps: 1,
            interpolation: true,
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            token: None,
            ca_file: None,
            wire: Encoding::Binary,
            #[cfg(feature = "embedded")]
            embedded: None,
        }
    }
}

impl P2c2rPlugin {
    /// The default plugin, connecting to this coordinator URL (`ws://HOST:PORT`).
    pub fn new(coordinator_url: impl Into<String>) -> Self {
        Self::default().coordinator(coordinator_url)
    }

    /// No coordinator: physics and AI always run in-process (the fallback), e.g. for
    /// offline play or tests.
    pub fn local_only() -> Self {
        P2c2rPlugin { coordinator_url: None, ..Self::default() }
    }

    /// The whole system in this process: `build` starts a coordinator (on `127.0.0.1`, a
    /// free port) and one peer on their own thread and tokio runtime, connects to them,
    /// and inserts them as the [`EmbeddedCluster`](crate::embedded::EmbeddedCluster)
    /// resource (add and kill peers through it). More peers:
    /// [`embedded_peers`](Self::embedded_peers); a [`coordinator`](Self::coordinator) set
    /// afterwards is joined instead of starting one. If the cluster cannot start, the
    /// plugin logs why and steps locally, as with no coordinator. Needs the `embedded`
    /// feature (on by default).
    #[cfg(feature = "embedded")]
    pub fn embedded() -> Self {
        P2c2rPlugin { coordinator_url: None, embedded: Some(Default::default()), ..Self::default() }
    }

    /// Sets the coordinator's WebSocket URL: `ws://HOST:PORT`, or `wss://HOST:PORT` for
    /// TLS (see [`ca_file`](Self::ca_file)).
    pub fn coordinator(mut self, url: impl Into<String>) -> Self {
        self.coordinator_url = Some(url.into());
        self
    }

    /// Sets the gamer id to register with (default: `gamer-` and a random suffix). It
    /// must be unique among the coordinator's connected gamers.
    pub fn gamer_id(mut self, id: impl Into<String>) -> Self {
        self.gamer_id = Some(id.into());
        self
    }

    /// Sets the physics session id (default: `s-<random>`, never the gamer id: peers see it). The AI session is this id
    /// with `:ai` appended.
    pub fn session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// Sets the fixed tick rate in Hz (this sets `Time<Fixed>`; default: leave the app's
    /// fixed timestep alone, 64 Hz unless changed). One physics and one AI request are
    /// sent per tick.
    pub fn tick_rate(mut self, hz: f64) -> Self {
        self.tick_rate = Some(hz);
        self
    }

    /// Sets the per-attempt deadline sent with each task (default 500 ms): the
    /// coordinator re-dispatches a task to another peer when it passes.
    pub fn task_deadline(mut self, deadline: Duration) -> Self {
        self.task_deadline = deadline;
        self
    }

    /// Sets what happens when no peer answers (default [`FallbackPolicy::Local`]).
    pub fn fallback(mut self, policy: FallbackPolicy) -> Self {
        self.fallback = policy;
        self
    }

    /// Sets the least time the oldest unanswered request may wait before the local
    /// fallback takes over (default 100 ms). The timeout adapts to the measured round
    /// trip above it (see [`P2c2rPlugin::adaptive_fallback`]). Shorter: faster takeover,
    /// more false alarms.
    pub fn fallback_timeout(mut self, timeout: Duration) -> Self {
        self.fallback_timeout = timeout;
        self
    }

    /// Sets the most the adaptive fallback timeout may grow to (default 1 s): a peer
    /// slower than this is abandoned however steady it is.
    pub fn max_fallback_timeout(mut self, timeout: Duration) -> Self {
        self.max_fallback_timeout = timeout;
        self
    }

    /// Turns the adaptive fallback timeout on (the default) or off. On, the timeout is
    /// the smoothed round trip of peer results plus four times its variation (as TCP's
    /// retransmission timeout), between [`fallback_timeout`](Self::fallback_timeout) and
    /// [`max_fallback_timeout`](Self::max_fallback_timeout): a peer 150 ms away is not
    /// abandoned, and a dead one is noticed within a few of its round trips. Off, it is
    /// always `fallback_timeout`.
    pub fn adaptive_fallback(mut self, on: bool) -> Self {
        self.adaptive_fallback = on;
        self
    }

    /// Sets how often the fallback checks whether a peer answers again (default 500 ms).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Sets gravity (default `(0, -9.81, 0)`).
    pub fn gravity(mut self, gravity: Vec3) -> Self {
        self.gravity = gravity;
        self
    }

    /// Sets how many physics steps each tick takes (default 1); each step is
    /// `timestep / substeps`.
    pub fn substeps(mut self, substeps: u32) -> Self {
        self.substeps = substeps.max(1);
        self
    }

    /// Turns interpolation of `Transform`s on or off (default on). Off: `Transform`s
    /// jump to each tick's state.
    pub fn interpolation(mut self, on: bool) -> Self {
        self.interpolation = on;
        self
    }

    /// Sets the first and the largest reconnect delay (default 100 ms and 5 s).
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// Presents this bearer token to the coordinator (`Authorization: Bearer <token>` in
    /// the WebSocket upgrade; for gamers, usually a JWT). Replaces a
    /// [`token_file`](Self::token_file). Default: no token.
    ///
    /// A coordinator that refuses it answers the upgrade with HTTP 401/403: the plugin
    /// logs that at `warn`, reports it in [`ConnectionChanged`], steps locally (with
    /// [`FallbackPolicy::Local`]) and keeps retrying with backoff.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Credential::Token(token.into()));
        self
    }

    /// Presents the bearer token held in this file (surrounding whitespace ignored),
    /// read again on every reconnection, so that a renewed token is picked up without a
    /// restart. Replaces a [`token`](Self::token). Default: no token.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token = Some(Credential::File(path.into()));
        self
    }

    /// For a `wss://` coordinator: trusts the certificates of this PEM file (a private CA,
    /// or the coordinator's self-signed certificate) instead of the public web PKI roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// How physics travels (default [`Encoding::Binary`]): binary frames and packed
    /// `physics_step` payloads (quantized, delta-compressed: PROTOCOL.md "Encodings" and
    /// "Packed `physics_step`"), or [`Encoding::Json`], JSON text as the seed protocol
    /// has it. Against a coordinator without binary frames the plugin sends JSON.
    pub fn wire(mut self, wire: Encoding) -> Self {
        self.wire = wire;
        self
    }
}

/// Settings the stages read (plugin-internal; one copy, from the builder).
#[derive(Resource, Clone, Debug)]
pub(crate) struct Settings {
    pub gravity: Vec3,
    pub substeps: u32,
    pub interpolation: bool,
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
        #[cfg(feature = "embedded")]
        let coordinator_url = match &self.embedded {
            Some(options) => crate::embedded::start_in(app, options, self.coordinator_url.clone()),
            None => self.coordinator_url.clone(),
        };
        #[cfg(not(feature = "embedded"))]
        let coordinator_url = self.coordinator_url.clone();
        let gamer_id = self.gamer_id.clone().unwrap_or_else(|| format!("gamer-{:08x}", fastrand::u32(..)));
        // Not the gamer id: session and task ids reach peers, which must not learn whom
        // they serve (they see an alias of the gamer id).
        let session = self.session_id.clone().unwrap_or_else(|| format!("s-{:016x}", fastrand::u64(..)));
        let deadline_ms = self.task_deadline.as_millis().max(1) as u64;
        let client = match &coordinator_url {
            Some(url) => {
                let mut config = ClientConfig::new(url.clone(), gamer_id.clone());
                config.backoff_initial = self.backoff.0;
                config.backoff_max = self.backoff.1;
                config.token = self.token.clone();
                config.ca_file = self.ca_file.clone();
                config.encoding = self.wire;
                P2c2rClient::connect(config, session.clone(), Some(deadline_ms))
            }
            None => P2c2rClient::offline(gamer_id.clone(), session.clone()),
        };
        let timeout = if self.adaptive_fallback {
            FallbackTimeout::Adaptive { min: self.fallback_timeout, max: self.max_fallback_timeout }
        } else {
            FallbackTimeout::Fixed(self.fallback_timeout)
        };
        let controller = OffloadController::new(
            client.has_transport(),
            self.fallback == FallbackPolicy::Local,
            timeout,
            self.probe_interval,
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
            .insert_resource(Settings {
                gravity: self.gravity,
                substeps: self.substeps,
                interpolation: self.interpolation,
                wire: self.wire,
            })
            .insert_resource(Offload { controller, tick: 0 })
            .init_resource::<EntityIds>()
            .init_resource::<TickChanges>()
            .init_resource::<Results>()
            .init_resource::<Fallback>()
            .add_message::<PhysicsStepped>()
            .add_message::<AiStepped>()
            .add_message::<TaskFailed>()
            .add_message::<ConnectionChanged>()
            .add_message::<ModeChanged>()
            .add_message::<TaskResultReceived>()
            .add_message::<PhysicsCommand>()
            .add_message::<BodyLeftWorld>()
            .add_observer(gather::on_body_removed)
            .add_observer(gather::on_agent_removed)
            .configure_sets(FixedPreUpdate, (P2c2rSystems::Receive, P2c2rSystems::Apply).chain())
            .configure_sets(FixedPostUpdate, P2c2rSystems::Send)
            .configure_sets(
                RunFixedMainLoop,
                P2c2rSystems::Interpolate.in_set(RunFixedMainLoopSystems::AfterFixedMainLoop),
            )
            .add_systems(FixedPreUpdate, receive.in_set(P2c2rSystems::Receive))
            .add_systems(
                FixedPreUpdate,
                (apply::shift_interpolation, apply::apply_physics, apply::report_bodies_left_world, apply::apply_ai)
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
                    send::send_tick,
                    send::publish_stats,
                )
                    .chain()
                    .in_set(P2c2rSystems::Send),
            )
            .add_systems(RunFixedMainLoop, interpolate.in_set(P2c2rSystems::Interpolate));
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
