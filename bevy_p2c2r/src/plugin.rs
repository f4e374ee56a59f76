//! [`P2c2rPlugin`]: its settings, its system sets and the systems that batch changes
//! into requests, apply results and interpolate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bevy::app::{FixedPostUpdate, FixedPreUpdate, RunFixedMainLoop, RunFixedMainLoopSystems};
use bevy::diagnostic::{Diagnostic, Diagnostics, RegisterDiagnostic};
use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use p2c2r_protocol::ai::{AgentId, AgentQuery, AgentResult, AgentStatus, AiNavigateRequest, AiNavigateResult};
use p2c2r_protocol::physics::{
    ApplyForce, ApplyImpulse, BodyId, BodyState, BodyType, KinematicTarget as WireKinematicTarget, PhysicsStepRequest,
    PhysicsStepResult, SetPose, SetVelocity,
};
use p2c2r_protocol::{ErrorCode, TaskError, TaskRequest, task_types, to_payload};

use crate::client::{ClientConfig, ClientEvent, Credential, TaskOutcome, TaskReply};
use crate::components::*;
use crate::link::{FallbackTimeout, Link, OffloadMode, Transition, Verdict};
use crate::local::LocalSim;
use crate::messages::*;
use crate::stats::{P2c2rStats, diagnostics};
use crate::tasks::{Tag, ai_id, classify, physics_id, probe_id};
use crate::transport::{Incoming, P2c2rClient, Parsed, parse_physics};

/// What to do when no peer answers in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FallbackPolicy {
    /// Step physics and AI in-process with the `peer` library until peers answer again
    /// (the default): the game never freezes.
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
    /// `FixedPreUpdate`: moves everything the transport thread received into
    /// [`P2c2rClient`], sorts results by tick, handles errors, resyncs and mode changes,
    /// and writes [`ConnectionChanged`], [`TaskFailed`], [`ModeChanged`] and
    /// [`TaskResultReceived`] messages.
    Receive,
    /// `FixedPreUpdate`, after `Receive`: applies received results to [`PhysicsState`]
    /// and [`AgentState`] in tick order (one physics tick per fixed tick; bursts are
    /// played out at up to two per tick, long backlogs drained), advances agents that
    /// have no body, and writes [`PhysicsStepped`] / [`AiStepped`]. Systems in
    /// `FixedUpdate` see the results.
    Apply,
    /// `FixedPostUpdate`: registers new bodies and agents, collects removals, forces,
    /// impulses, kinematic targets and [`PhysicsCommand`]s, and sends one `physics_step`
    /// and one `ai_navigate` request for this tick (or steps them locally in fallback),
    /// then hands the requests to the transport thread.
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
}

#[derive(Clone, Debug)]
struct Settings {
    session: String,
    ai_session: String,
    deadline_ms: u64,
    gravity: Vec3,
    substeps: u32,
    interpolation: bool,
}

/// Body, agent and tick bookkeeping (plugin-internal).
#[derive(Resource)]
struct OffloadState {
    settings: Settings,
    link: Link,
    tick: u64,
    next_body_id: BodyId,
    next_agent_id: AgentId,
    body_entity: HashMap<BodyId, Entity>,
    entity_body: HashMap<Entity, BodyId>,
    agent_entity: HashMap<AgentId, Entity>,
    entity_agent: HashMap<Entity, AgentId>,
    removed_bodies: Vec<Entity>,
    removed_agents: Vec<Entity>,
    /// Bodies a world removed because they left its bounds, to report.
    left_world: Vec<(Entity, BodyId, u64)>,
    physics_results: Vec<(PhysicsStepResult, ResultSource, Option<Duration>)>,
    ai_results: Vec<(AiNavigateResult, ResultSource)>,
    probes: u64,
    grid_dirty: bool,
    warned_no_grid: bool,
    /// Dynamic agents being steered (to stop them once when they arrive).
    agents_moving: std::collections::HashSet<Entity>,
}

/// The in-process fallback (plugin-internal).
#[derive(Resource, Default)]
struct Fallback(LocalSim);

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
                P2c2rClient::connect(config, session.clone(), Some(deadline_ms))
            }
            None => P2c2rClient::offline(gamer_id.clone(), session.clone()),
        };
        let timeout = if self.adaptive_fallback {
            FallbackTimeout::Adaptive { min: self.fallback_timeout, max: self.max_fallback_timeout }
        } else {
            FallbackTimeout::Fixed(self.fallback_timeout)
        };
        let link =
            Link::new(client.has_transport(), self.fallback == FallbackPolicy::Local, timeout, self.probe_interval);
        let mut stats = P2c2rStats::default();
        stats.mode = link.mode;
        stats.connection = client.connection().clone();
        stats.session_id = session.clone();
        let settings = Settings {
            ai_session: format!("{session}:ai"),
            session,
            deadline_ms,
            gravity: self.gravity,
            substeps: self.substeps,
            interpolation: self.interpolation,
        };
        if let Some(hz) = self.tick_rate {
            app.insert_resource(Time::<Fixed>::from_hz(hz));
        }
        app.insert_resource(client)
            .insert_resource(stats)
            .insert_resource(OffloadState {
                settings,
                link,
                tick: 0,
                next_body_id: 1,
                next_agent_id: 1,
                body_entity: HashMap::new(),
                entity_body: HashMap::new(),
                agent_entity: HashMap::new(),
                entity_agent: HashMap::new(),
                removed_bodies: Vec::new(),
                removed_agents: Vec::new(),
                left_world: Vec::new(),
                physics_results: Vec::new(),
                ai_results: Vec::new(),
                probes: 0,
                grid_dirty: true,
                warned_no_grid: false,
                agents_moving: Default::default(),
            })
            .init_resource::<Fallback>()
            .init_resource::<PendingBodies>()
            .add_message::<PhysicsStepped>()
            .add_message::<AiStepped>()
            .add_message::<TaskFailed>()
            .add_message::<ConnectionChanged>()
            .add_message::<ModeChanged>()
            .add_message::<TaskResultReceived>()
            .add_message::<PhysicsCommand>()
            .add_message::<BodyLeftWorld>()
            .add_observer(on_body_removed)
            .add_observer(on_agent_removed)
            .configure_sets(FixedPreUpdate, (P2c2rSystems::Receive, P2c2rSystems::Apply).chain())
            .configure_sets(FixedPostUpdate, P2c2rSystems::Send)
            .configure_sets(
                RunFixedMainLoop,
                P2c2rSystems::Interpolate.in_set(RunFixedMainLoopSystems::AfterFixedMainLoop),
            )
            .add_systems(FixedPreUpdate, receive.in_set(P2c2rSystems::Receive))
            .add_systems(
                FixedPreUpdate,
                (shift_interpolation, apply_physics, report_bodies_left_world, apply_ai)
                    .chain()
                    .in_set(P2c2rSystems::Apply),
            )
            .add_systems(
                FixedPostUpdate,
                (register_bodies, register_agents, ApplyDeferred, dispatch).chain().in_set(P2c2rSystems::Send),
            )
            .add_systems(RunFixedMainLoop, interpolate.in_set(P2c2rSystems::Interpolate));
        for path in diagnostics::ALL {
            let suffix = match path.as_str() {
                "p2c2r/rtt_ms" => "ms",
                "p2c2r/bytes_sent" | "p2c2r/bytes_received" => "B",
                _ => "",
            };
            app.register_diagnostic(Diagnostic::new(path).with_suffix(suffix));
        }
    }
}

fn on_body_removed(remove: On<Remove, OffloadedBody>, mut state: ResMut<OffloadState>, mut commands: Commands) {
    state.removed_bodies.push(remove.entity);
    commands.entity(remove.entity).try_remove::<(PhysicsState, PoseInterpolation)>();
}

fn on_agent_removed(
    remove: On<Remove, OffloadedAgent>,
    mut state: ResMut<OffloadState>,
    bodies: Query<(), With<OffloadedBody>>,
    mut commands: Commands,
) {
    state.removed_agents.push(remove.entity);
    let mut e = commands.entity(remove.entity);
    e.try_remove::<AgentState>();
    if !bodies.contains(remove.entity) {
        e.try_remove::<PoseInterpolation>();
    }
}

#[derive(SystemParam)]
struct Events<'w> {
    failed: MessageWriter<'w, TaskFailed>,
    connection: MessageWriter<'w, ConnectionChanged>,
    mode: MessageWriter<'w, ModeChanged>,
    custom: MessageWriter<'w, TaskResultReceived>,
}

fn note_transition(stats: &mut P2c2rStats, mode: &mut MessageWriter<ModeChanged>, link: &Link, t: Option<Transition>) {
    let Some(t) = t else { return };
    let previous = stats.mode;
    let reason = match t {
        Transition::Fallback(reason) => {
            stats.fallbacks_entered += 1;
            tracing::info!(%reason, "p2c2r: stepping locally (fallback)");
            reason
        }
        Transition::HandingBack => {
            tracing::info!("p2c2r: a peer answers again; handing back");
            "a peer answered the probe".to_owned()
        }
        Transition::Offloaded => {
            stats.handbacks += 1;
            tracing::info!("p2c2r: peers step the world again");
            "a peer serves the session".to_owned()
        }
    };
    stats.mode = link.mode;
    if previous != link.mode {
        mode.write(ModeChanged { mode: link.mode, previous, reason });
    }
}

fn receive(
    mut client: ResMut<P2c2rClient>,
    mut state: ResMut<OffloadState>,
    mut stats: ResMut<P2c2rStats>,
    mut events: Events,
) {
    let now = Instant::now();
    let state = &mut *state;
    for change in client.receive() {
        stats.connection = change.clone();
        if !change.is_connected() {
            let t = state.link.disconnected(now);
            note_transition(&mut stats, &mut events.mode, &state.link, t);
        }
        events.connection.write(ConnectionChanged { state: change });
    }
    let inbox = std::mem::take(&mut client.inbox);
    for Incoming { event, parsed } in inbox {
        match event {
            ClientEvent::Result(outcome) => on_outcome(state, &mut stats, &mut events, outcome, parsed, now),
            ClientEvent::Error(error) => {
                let task_id = error.refers_to.clone().unwrap_or_default();
                let why = format!("{}: {}", error.code, error.message);
                fail(state, &mut stats, &mut events, &task_id, error.code, why, None, false, now);
            }
            ClientEvent::Undelivered { task_id, error } => {
                fail(state, &mut stats, &mut events, &task_id, ErrorCode::Other, error.to_string(), None, false, now);
            }
            ClientEvent::Connected { .. } | ClientEvent::Disconnected { .. } => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fail(
    state: &mut OffloadState,
    stats: &mut P2c2rStats,
    events: &mut Events,
    task_id: &str,
    code: ErrorCode,
    message: String,
    tick: Option<u64>,
    resync: bool,
    now: Instant,
) {
    stats.task_failures += 1;
    let tag = classify(&state.settings.session, task_id);
    let kind = match tag {
        Tag::Physics(t) => {
            let tr = state.link.peer_physics_failed(tick.or(Some(t)), resync, now, &message);
            note_transition(stats, &mut events.mode, &state.link, tr);
            TaskKind::Physics
        }
        Tag::Ai(t) => {
            let tr = state.link.peer_ai_failed(tick.or(Some(t)), resync, now, &message);
            note_transition(stats, &mut events.mode, &state.link, tr);
            TaskKind::Ai
        }
        Tag::Probe => {
            state.link.probe_failed(task_id);
            TaskKind::Probe
        }
        Tag::Custom => TaskKind::Custom,
        Tag::Unknown => TaskKind::Other,
    };
    tracing::debug!(task_id, %code, %message, "p2c2r task failed");
    let tick = tick.or(match tag {
        Tag::Physics(t) | Tag::Ai(t) => Some(t),
        _ => None,
    });
    events.failed.write(TaskFailed { task_id: task_id.to_owned(), kind, code, message, tick, resync });
}

fn on_outcome(
    state: &mut OffloadState,
    stats: &mut P2c2rStats,
    events: &mut Events,
    outcome: TaskOutcome,
    parsed: Option<Parsed>,
    now: Instant,
) {
    if let Some(peer) = &outcome.peer_id
        && !stats.peers_seen.contains(peer)
    {
        stats.peers_seen.insert(peer.clone());
    }
    let tag = classify(&state.settings.session, &outcome.task_id);
    if let TaskReply::Failed(error) = &outcome.reply {
        let TaskError { code, message, resync, tick, .. } = error.clone();
        fail(state, stats, events, &outcome.task_id, code, message, tick, resync, now);
        if tag == Tag::Custom {
            emit_custom(events, outcome);
        }
        return;
    }
    if let Some(rtt) = outcome.rtt
        && matches!(tag, Tag::Physics(_) | Tag::Ai(_))
    {
        stats.record_rtt(rtt);
    }
    let source = ResultSource::Peer(outcome.peer_id.clone().unwrap_or_default());
    match tag {
        Tag::Physics(_) => match parsed.and_then(Parsed::physics).unwrap_or_else(|| parse_physics(&outcome)) {
            Ok(result) => {
                let (verdict, tr) = state.link.peer_physics(result.tick, now);
                note_transition(stats, &mut events.mode, &state.link, tr);
                if verdict == Verdict::Apply {
                    stats.serving_peer = outcome.peer_id.clone();
                    state.physics_results.push((result, source, outcome.rtt));
                } else {
                    if verdict == Verdict::Stale {
                        // The peer is in sync (the same state was shown locally).
                        stats.serving_peer = outcome.peer_id.clone();
                    }
                    stats.stale_results += 1;
                }
            }
            Err(e) => {
                // A broken result (non-finite numbers, a rotation that is not a unit
                // quaternion) asks for a resync; it is counted in `rejected_results`.
                if e.resync {
                    stats.rejected_results += 1;
                }
                fail(state, stats, events, &outcome.task_id, e.code, e.message, e.tick, e.resync, now)
            }
        },
        Tag::Ai(_) => match parsed.and_then(Parsed::ai).unwrap_or_else(|| outcome.parse()) {
            Ok(result) => {
                if state.link.peer_ai(result.tick) == Verdict::Apply {
                    state.ai_results.push((result, source));
                } else {
                    stats.stale_results += 1;
                }
            }
            Err(e) => fail(state, stats, events, &outcome.task_id, e.code, e.message, None, false, now),
        },
        Tag::Probe => {
            state.link.probe_succeeded(&outcome.task_id);
        }
        Tag::Custom => emit_custom(events, outcome),
        Tag::Unknown => {
            stats.stale_results += 1;
        }
    }
}

fn emit_custom(events: &mut Events, outcome: TaskOutcome) {
    let result = match outcome.reply {
        TaskReply::Success(raw) => raw,
        TaskReply::Failed(e) => to_payload(&e).unwrap_or_else(|_| p2c2r_protocol::null_payload()),
    };
    events.custom.write(TaskResultReceived {
        task_id: outcome.task_id,
        peer_id: outcome.peer_id,
        result: std::sync::Arc::new(result),
        rtt: outcome.rtt,
    });
}

fn shift_interpolation(mut q: Query<&mut PoseInterpolation>) {
    for mut p in &mut q {
        if p.previous != p.current {
            p.previous = p.current;
        }
    }
}

/// How many queued physics results to apply this tick. Results that arrive in bursts
/// (network jitter) are played out one per tick, catching up at double speed, so motion
/// stays even; a long backlog is drained at once.
fn playout_count(queued: usize) -> usize {
    match queued {
        0 | 1 => queued,
        2..=8 => 2,
        _ => queued - 4,
    }
}

/// Takes the oldest `count` queued physics results (all when `None`), counts them and
/// writes their [`PhysicsStepped`]; returns the body states to write, in tick order.
fn take_physics_results(
    state: &mut OffloadState,
    stats: &mut P2c2rStats,
    stepped: &mut MessageWriter<PhysicsStepped>,
    count: Option<usize>,
) -> Vec<(Entity, BodyState, u64)> {
    let queue = &mut state.physics_results;
    queue.sort_by_key(|(r, _, _)| r.tick);
    let n = count.unwrap_or(queue.len()).min(queue.len());
    let taken: Vec<_> = queue.drain(..n).collect();
    let mut updates = Vec::new();
    for (result, source, rtt) in taken {
        for s in &result.bodies {
            if let Some(&entity) = state.body_entity.get(&s.id) {
                updates.push((entity, *s, result.tick));
            }
        }
        // The world dropped these (they left its bounds): stop simulating them, so no
        // later request names them and no snapshot carries them.
        for id in &result.removed {
            if let Some(entity) = state.body_entity.remove(id) {
                state.entity_body.remove(&entity);
                state.left_world.push((entity, *id, result.tick));
            }
        }
        if source.is_peer() {
            stats.physics_results_from_peers += 1;
        } else {
            stats.physics_results_local += 1;
        }
        stats.count_applied();
        stats.last_applied_tick = Some(result.tick);
        stepped.write(PhysicsStepped { tick: result.tick, source, bodies: result.bodies.len(), rtt });
    }
    updates
}

/// Reports the bodies a world removed because they left its bounds, and takes
/// [`OffloadedBody`] off them: the game decides whether to despawn or re-add them.
fn report_bodies_left_world(
    mut state: ResMut<OffloadState>,
    mut left: MessageWriter<BodyLeftWorld>,
    mut commands: Commands,
) {
    for (entity, id, tick) in std::mem::take(&mut state.left_world) {
        left.write(BodyLeftWorld { entity, id, tick });
        if let Ok(mut e) = commands.get_entity(entity) {
            e.try_remove::<(OffloadedBody, PhysicsState, PoseInterpolation)>();
        }
    }
}

fn write_state(ps: &mut PhysicsState, interp: Option<Mut<PoseInterpolation>>, s: &BodyState, tick: u64) {
    if tick < ps.tick {
        return;
    }
    ps.apply(s, tick);
    if let Some(mut interp) = interp {
        interp.current = (ps.position, ps.rotation);
    }
}

fn apply_physics(
    mut state: ResMut<OffloadState>,
    mut stats: ResMut<P2c2rStats>,
    mut bodies: Query<(&mut PhysicsState, Option<&mut PoseInterpolation>)>,
    mut stepped: MessageWriter<PhysicsStepped>,
) {
    let count = playout_count(state.physics_results.len());
    for (entity, s, tick) in take_physics_results(&mut state, &mut stats, &mut stepped, Some(count)) {
        if let Ok((mut ps, interp)) = bodies.get_mut(entity) {
            write_state(&mut ps, interp, &s, tick);
        }
    }
}

fn apply_ai(
    mut state: ResMut<OffloadState>,
    mut stats: ResMut<P2c2rStats>,
    time: Res<Time<Fixed>>,
    mut agents: Query<(&OffloadedAgent, &mut AgentState, Option<&mut PoseInterpolation>, Option<&OffloadedBody>)>,
    mut stepped: MessageWriter<AiStepped>,
) {
    let state = &mut *state;
    let mut results = std::mem::take(&mut state.ai_results);
    results.sort_by_key(|(r, _)| r.tick);
    for (result, source) in results {
        for a in &result.agents {
            let Some(&entity) = state.agent_entity.get(&a.id) else { continue };
            let Ok((_, mut st, _, _)) = agents.get_mut(entity) else { continue };
            apply_agent(&mut st, a, result.tick);
        }
        if source.is_peer() {
            stats.ai_results_from_peers += 1;
        } else {
            stats.ai_results_local += 1;
        }
        stepped.write(AiStepped { tick: result.tick, source, agents: result.agents.len() });
    }
    // Agents without a body (and kinematic ones) are moved here, along their desired
    // velocity; dynamic bodies get it as their velocity in the Send stage.
    let dt = time.timestep().as_secs_f32();
    for (agent, mut st, interp, body) in &mut agents {
        if st.status != AgentStatus::Moving {
            continue;
        }
        let kinematic = match body {
            None => false,
            Some(b) if b.body_type == BodyType::Kinematic => true,
            Some(_) => continue,
        };
        let mut v = st.desired_velocity;
        v.y = 0.0;
        let to_goal = Vec3::new(agent.goal.x - st.position.x, 0.0, agent.goal.z - st.position.z);
        let step = v * dt;
        if to_goal.length() <= step.length() && to_goal.length() < agent.radius.max(0.05) {
            st.position.x = agent.goal.x;
            st.position.z = agent.goal.z;
        } else {
            st.position += step;
        }
        if let Some(mut interp) = interp
            && !kinematic
        {
            interp.current.0 = st.position;
        }
    }
}

fn apply_agent(st: &mut AgentState, a: &AgentResult, tick: u64) {
    st.tick = tick;
    st.status = a.status;
    st.waypoints = a.waypoints.iter().map(|w| Vec3::from_array(*w)).collect();
    st.desired_velocity =
        if a.status == AgentStatus::Moving { Vec3::from_array(a.desired_velocity) } else { Vec3::ZERO };
    if !st.desired_velocity.is_finite() {
        st.desired_velocity = Vec3::ZERO;
    }
}

fn register_bodies(
    mut commands: Commands,
    mut state: ResMut<OffloadState>,
    added: Query<(Entity, &OffloadedBody, &Transform, Option<&PhysicsState>), Changed<OffloadedBody>>,
    mut out: ResMut<PendingBodies>,
) {
    for (entity, body, transform, existing) in &added {
        let state = &mut *state;
        // A changed body is re-created under a new id with its latest state.
        if let Some(old) = state.entity_body.remove(&entity) {
            state.body_entity.remove(&old);
            out.removed_ids.push(old);
        }
        let id = state.next_body_id;
        state.next_body_id += 1;
        state.body_entity.insert(id, entity);
        state.entity_body.insert(entity, id);
        let ps = match existing {
            Some(ps) => PhysicsState { id, ..*ps },
            None => PhysicsState {
                id,
                tick: 0,
                position: transform.translation,
                rotation: transform.rotation.normalize(),
                linvel: body.initial_linvel,
                angvel: body.initial_angvel,
                sleeping: false,
            },
        };
        out.adds.push((entity, body.desc(id, &ps)));
        let mut e = commands.entity(entity);
        e.insert(ps);
        if body.body_type != BodyType::Fixed {
            e.insert(PoseInterpolation::at(ps.position, ps.rotation));
        } else {
            e.remove::<PoseInterpolation>();
        }
    }
}

/// Bodies registered this tick and ids to remove (plugin-internal).
#[derive(Resource, Default)]
struct PendingBodies {
    adds: Vec<(Entity, p2c2r_protocol::physics::BodyDesc)>,
    removed_ids: Vec<BodyId>,
}

fn register_agents(
    mut commands: Commands,
    mut state: ResMut<OffloadState>,
    added: Query<(Entity, &Transform, Has<OffloadedBody>), Added<OffloadedAgent>>,
) {
    for (entity, transform, has_body) in &added {
        let state = &mut *state;
        if state.entity_agent.contains_key(&entity) {
            continue;
        }
        let id = state.next_agent_id;
        state.next_agent_id += 1;
        state.agent_entity.insert(id, entity);
        state.entity_agent.insert(entity, id);
        let mut e = commands.entity(entity);
        e.insert(AgentState {
            id,
            tick: 0,
            status: AgentStatus::Moving,
            waypoints: Vec::new(),
            desired_velocity: Vec3::ZERO,
            position: transform.translation,
        });
        if !has_body {
            e.insert(PoseInterpolation::at(transform.translation, transform.rotation));
        }
    }
}

#[derive(SystemParam)]
struct DispatchParams<'w, 's> {
    client: ResMut<'w, P2c2rClient>,
    state: ResMut<'w, OffloadState>,
    stats: ResMut<'w, P2c2rStats>,
    fallback: ResMut<'w, Fallback>,
    pending: ResMut<'w, PendingBodies>,
    time: Res<'w, Time<Fixed>>,
    grid: Option<Res<'w, NavigationGrid>>,
    commands_in: MessageReader<'w, 's, PhysicsCommand>,
    failed: MessageWriter<'w, TaskFailed>,
    mode: MessageWriter<'w, ModeChanged>,
    stepped: MessageWriter<'w, PhysicsStepped>,
    diagnostics: Diagnostics<'w, 's>,
}

#[allow(clippy::type_complexity)]
fn dispatch(
    mut p: DispatchParams,
    mut bodies: Query<(
        Entity,
        &OffloadedBody,
        &mut PhysicsState,
        Option<&ExternalForce>,
        Option<&mut ExternalImpulse>,
        Option<Ref<KinematicTarget>>,
        Option<&mut PoseInterpolation>,
        Option<(&OffloadedAgent, &AgentState)>,
    )>,
    agents: Query<(&OffloadedAgent, &AgentState), Without<OffloadedBody>>,
    any_agent: Query<(), With<OffloadedAgent>>,
) {
    let now = Instant::now();
    let state = &mut *p.state;
    state.tick += 1;
    let tick = state.tick;
    let dt = p.time.timestep().as_secs_f32();

    // Removals since the last tick.
    let mut remove: Vec<BodyId> = std::mem::take(&mut p.pending.removed_ids);
    for entity in std::mem::take(&mut state.removed_bodies) {
        if bodies.contains(entity) {
            continue; // removed and re-added in the same frame
        }
        if let Some(id) = state.entity_body.remove(&entity) {
            state.body_entity.remove(&id);
            remove.push(id);
        }
    }
    for entity in std::mem::take(&mut state.removed_agents) {
        if any_agent.contains(entity) {
            continue;
        }
        if let Some(id) = state.entity_agent.remove(&entity) {
            state.agent_entity.remove(&id);
        }
        state.agents_moving.remove(&entity);
    }
    let adds = std::mem::take(&mut p.pending.adds);

    // Forces, impulses, kinematic targets, commands.
    let mut forces = Vec::new();
    let mut impulses = Vec::new();
    let mut targets = Vec::new();
    let mut set_pose = Vec::new();
    let mut set_velocity = Vec::new();
    for (_, _, ps, force, impulse, target, _, _) in &mut bodies {
        if let Some(f) = force
            && (f.force != Vec3::ZERO || f.torque != Vec3::ZERO)
        {
            forces.push(ApplyForce { id: ps.id, force: f.force.to_array(), torque: f.torque.to_array() });
        }
        if let Some(mut i) = impulse
            && (i.impulse != Vec3::ZERO || i.torque_impulse != Vec3::ZERO)
        {
            impulses.push(ApplyImpulse {
                id: ps.id,
                impulse: i.impulse.to_array(),
                torque_impulse: i.torque_impulse.to_array(),
            });
            *i = ExternalImpulse::default();
        }
        if let Some(t) = target
            && t.is_changed()
        {
            targets.push(WireKinematicTarget {
                id: ps.id,
                position: valid_position(t.position),
                rotation: valid_rotation(t.rotation),
            });
        }
    }
    for cmd in p.commands_in.read() {
        match *cmd {
            PhysicsCommand::Impulse { entity, impulse, torque_impulse } => {
                if let Some(&id) = state.entity_body.get(&entity) {
                    impulses.push(ApplyImpulse {
                        id,
                        impulse: impulse.to_array(),
                        torque_impulse: torque_impulse.to_array(),
                    });
                }
            }
            PhysicsCommand::Force { entity, force, torque } => {
                if let Some(&id) = state.entity_body.get(&entity) {
                    forces.push(ApplyForce { id, force: force.to_array(), torque: torque.to_array() });
                }
            }
            PhysicsCommand::SetVelocity { entity, linvel, angvel } => {
                if let Some(&id) = state.entity_body.get(&entity) {
                    let (linvel, angvel) =
                        (Vec3::from_array(valid_velocity(linvel)), Vec3::from_array(valid_velocity(angvel)));
                    set_velocity.push(SetVelocity { id, linvel: linvel.to_array(), angvel: angvel.to_array() });
                    if let Ok((_, _, mut ps, ..)) = bodies.get_mut(entity) {
                        ps.linvel = linvel;
                        ps.angvel = angvel;
                    }
                }
            }
            PhysicsCommand::Teleport { entity, position, rotation } => {
                if let Some(&id) = state.entity_body.get(&entity) {
                    let position = Vec3::from_array(valid_position(position));
                    let rotation = Quat::from_array(valid_rotation(rotation));
                    set_pose.push(SetPose { id, position: position.to_array(), rotation: rotation.to_array() });
                    if let Ok((_, _, mut ps, _, _, _, interp, _)) = bodies.get_mut(entity) {
                        ps.position = position;
                        ps.rotation = rotation;
                        if let Some(mut interp) = interp {
                            *interp = PoseInterpolation::at(position, rotation);
                        }
                    }
                }
            }
        }
    }
    // Agents that are bodies follow their desired velocity.
    for (entity, body, ps, _, _, _, _, agent) in &bodies {
        let Some((_, st)) = agent else { continue };
        let v = st.desired_velocity;
        // Steer a dynamic agent while it moves, and stop it once when it arrives; after
        // that, collisions may push it around.
        let was_moving = state.agents_moving.contains(&entity);
        let moving = st.tick > 0 && st.status == AgentStatus::Moving;
        if moving {
            state.agents_moving.insert(entity);
        } else {
            state.agents_moving.remove(&entity);
        }
        match body.body_type {
            // Dynamic agents walk at the desired velocity and stay upright: their angular
            // velocity is zeroed each tick (the protocol has no rotation lock).
            BodyType::Dynamic if moving || was_moving => set_velocity.push(SetVelocity {
                id: ps.id,
                linvel: valid_velocity(Vec3::new(v.x, ps.linvel.y, v.z)),
                angvel: [0.0; 3],
            }),
            // Kinematic agents are advanced by the plugin (like agents without a body)
            // and the peer moves the body to where the agent is.
            BodyType::Kinematic if st.tick > 0 => targets.push(WireKinematicTarget {
                id: ps.id,
                position: valid_position(st.position),
                rotation: valid_rotation(ps.rotation),
            }),
            _ => {}
        }
    }
    // A kinematic agent with a changed `KinematicTarget` has two targets now; the peer
    // rejects a tick that lists a body twice. The last one wins: the agent's.
    dedup_targets(&mut targets);

    // Decide who steps this tick.
    let connected = p.client.is_connected();
    let (plan, tr) = state.link.plan(now, connected);
    note_transition(&mut p.stats, &mut p.mode, &state.link, tr);

    if plan.snapshot {
        // A snapshot carries the newest states: apply every result still queued.
        for (entity, s, t) in take_physics_results(state, &mut p.stats, &mut p.stepped, None) {
            if let Ok((_, _, mut ps, _, _, _, interp, _)) = bodies.get_mut(entity) {
                write_state(&mut ps, interp, &s, t);
            }
        }
    }

    let substeps = state.settings.substeps;
    let mut request = PhysicsStepRequest {
        tick,
        snapshot: plan.snapshot,
        gravity: plan.snapshot.then(|| state.settings.gravity.to_array()),
        dt: dt / substeps as f32,
        steps: substeps,
        add: Vec::new(),
        remove: Vec::new(),
        set_pose,
        set_velocity,
        forces,
        impulses,
        kinematic_targets: targets,
    };
    if plan.snapshot {
        let fresh: std::collections::HashSet<Entity> = adds.iter().map(|(e, _)| *e).collect();
        for (entity, body, ps, ..) in &bodies {
            if !fresh.contains(&entity) && state.entity_body.get(&entity) == Some(&ps.id) {
                request.add.push(body.desc(ps.id, ps));
            }
        }
        request.add.extend(adds.into_iter().map(|(_, d)| d));
        request.add.sort_by_key(|d| d.id);
    } else {
        request.add = adds.into_iter().map(|(_, d)| d).collect();
        request.remove = remove;
    }

    if plan.to_peer || plan.probe {
        p.stats.ticks_offloaded += u64::from(plan.to_peer);
        if plan.to_peer && plan.snapshot {
            p.stats.snapshots_sent += 1;
        }
    }
    if plan.to_peer {
        match to_payload(&request) {
            Ok(task_data) => p.client.queue(TaskRequest {
                task_id: physics_id(&state.settings.session, tick),
                task_type: task_types::PHYSICS_STEP.to_owned(),
                task_data,
                session_id: Some(state.settings.session.clone()),
                deadline_ms: Some(state.settings.deadline_ms),
            }),
            Err(e) => tracing::error!(error = %e, "p2c2r: cannot encode a physics request"),
        }
    }
    if plan.probe {
        state.probes += 1;
        let task_id = probe_id(&state.settings.session, state.probes);
        let probe = PhysicsStepRequest { tick, snapshot: true, dt: request.dt, steps: 1, ..Default::default() };
        if let Ok(task_data) = to_payload(&probe) {
            p.client.queue(TaskRequest {
                task_id: task_id.clone(),
                task_type: task_types::PHYSICS_STEP.to_owned(),
                task_data,
                session_id: Some(state.settings.session.clone()),
                deadline_ms: Some(state.settings.deadline_ms),
            });
            state.link.probe_sent(task_id);
        }
    }
    if plan.to_local {
        p.stats.fallback_ticks += 1;
        match p.fallback.0.step(&request) {
            Ok(result) => {
                if state.link.local_physics(result.tick) == Verdict::Apply {
                    state.physics_results.push((result, ResultSource::Local, None));
                } else {
                    p.stats.stale_results += 1;
                }
            }
            Err(e) => {
                p.stats.task_failures += 1;
                state.link.local_synced = false;
                tracing::warn!(error = %e, "p2c2r: local fallback step failed; resyncing");
                p.failed.write(TaskFailed {
                    task_id: String::new(),
                    kind: TaskKind::Local,
                    code: e.code,
                    message: e.message,
                    tick: Some(tick),
                    resync: true,
                });
            }
        }
    } else if !plan.to_peer {
        // Nobody steps this tick; keep the local mirror honest.
        p.fallback.0.drop_world();
    }
    if state.link.mode == OffloadMode::Offloaded && !plan.to_local {
        p.fallback.0.drop_world();
    }

    // AI: one request with every agent.
    if let Some(grid) = &p.grid
        && grid.is_changed()
    {
        state.grid_dirty = true;
        p.fallback.0.grid_changed();
    }
    if state.grid_dirty {
        state.link.ai_needs_grid = true;
        state.grid_dirty = false;
    }
    let mut sent_ai = false;
    let mut queries: Vec<AgentQuery> = agents
        .iter()
        .map(|(a, st)| query(st, a, st.position))
        .chain(bodies.iter().filter_map(|(_, body, ps, .., agent)| {
            let kinematic = body.body_type == BodyType::Kinematic;
            agent.map(|(a, st)| query(st, a, if kinematic { st.position } else { ps.position }))
        }))
        .collect();
    queries.sort_by_key(|q| q.id);
    if p.grid.is_none() && !queries.is_empty() && !state.warned_no_grid {
        state.warned_no_grid = true;
        tracing::warn!("p2c2r: offloaded agents need a NavigationGrid resource; they stay still until one is inserted");
    }
    if let Some(grid) = &p.grid
        && !queries.is_empty()
    {
        let plan_grid = state.link.ai_needs_grid;
        if plan.ai_to_peer {
            let req = AiNavigateRequest { tick, grid: plan_grid.then(|| grid.0.clone()), agents: queries.clone() };
            if let Ok(task_data) = to_payload(&req) {
                p.client.queue(TaskRequest {
                    task_id: ai_id(&state.settings.session, tick),
                    task_type: task_types::AI_NAVIGATE.to_owned(),
                    task_data,
                    session_id: Some(state.settings.ai_session.clone()),
                    deadline_ms: Some(state.settings.deadline_ms),
                });
                sent_ai = true;
            }
        }
        if plan.ai_local {
            match p.fallback.0.navigate(&grid.0, &queries) {
                Ok(agents) => {
                    if state.link.local_ai(tick) == Verdict::Apply {
                        state
                            .ai_results
                            .push((AiNavigateResult { status: Default::default(), tick, agents }, ResultSource::Local));
                    }
                }
                Err(e) => {
                    p.stats.task_failures += 1;
                    p.failed.write(TaskFailed {
                        task_id: String::new(),
                        kind: TaskKind::Local,
                        code: e.code,
                        message: e.message,
                        tick: Some(tick),
                        resync: false,
                    });
                }
            }
        }
        let mut sent_plan = plan;
        sent_plan.ai_grid = plan_grid;
        state.link.sent(tick, now, &sent_plan, sent_ai);
    } else {
        state.link.sent(tick, now, &plan, false);
    }

    // Hand everything to the transport thread.
    for (request, error) in p.client.flush() {
        let tr = match classify(&state.settings.session, &request.task_id) {
            Tag::Physics(_) | Tag::Ai(_) => state.link.send_failed(now, &error.to_string()),
            Tag::Probe => {
                state.link.probe_failed(&request.task_id);
                None
            }
            _ => None,
        };
        note_transition(&mut p.stats, &mut p.mode, &state.link, tr);
        p.stats.task_failures += 1;
        p.failed.write(TaskFailed {
            task_id: request.task_id,
            kind: TaskKind::Other,
            code: ErrorCode::Other,
            message: error.to_string(),
            tick: Some(tick),
            resync: false,
        });
    }

    // Counters and diagnostics.
    let stats = &mut *p.stats;
    stats.mode = state.link.mode;
    stats.ticks = tick;
    stats.tasks_in_flight = state.link.tasks_in_flight();
    stats.fallback_timeout_ms = state.link.current_timeout().as_secs_f64() * 1000.0;
    stats.bodies = state.body_entity.len();
    stats.agents = state.agent_entity.len();
    stats.bytes_sent = p.client.bytes_sent();
    stats.bytes_received = p.client.bytes_received();
    stats.update_rates(now);
    let d = &mut p.diagnostics;
    if let Some(rtt) = stats.rtt_ms_quantile(0.5) {
        d.add_measurement(&diagnostics::RTT_MS, || rtt);
    }
    d.add_measurement(&diagnostics::TASKS_IN_FLIGHT, || stats.tasks_in_flight as f64);
    d.add_measurement(&diagnostics::TICKS_OFFLOADED, || stats.ticks_offloaded as f64);
    d.add_measurement(&diagnostics::TICKS_FALLBACK, || stats.fallback_ticks as f64);
    d.add_measurement(&diagnostics::BYTES_SENT, || stats.bytes_sent as f64);
    d.add_measurement(&diagnostics::BYTES_RECEIVED, || stats.bytes_received as f64);
    d.add_measurement(&diagnostics::FALLBACK, || f64::from(u8::from(stats.in_fallback())));
}

/// Keeps only the last kinematic target of each body (in their order of appearance).
fn dedup_targets(targets: &mut Vec<WireKinematicTarget>) {
    let mut seen = std::collections::HashSet::with_capacity(targets.len());
    let mut kept: Vec<WireKinematicTarget> = targets.drain(..).rev().filter(|t| seen.insert(t.id)).collect();
    kept.reverse();
    *targets = kept;
}

fn query(st: &AgentState, a: &OffloadedAgent, position: Vec3) -> AgentQuery {
    AgentQuery { id: st.id, position: position.to_array(), goal: a.goal.to_array(), speed: a.speed, radius: a.radius }
}

fn interpolate(time: Res<Time<Fixed>>, state: Res<OffloadState>, mut q: Query<(&PoseInterpolation, &mut Transform)>) {
    let alpha = if state.settings.interpolation { time.overstep_fraction() } else { 1.0 };
    for (p, mut t) in &mut q {
        let (pos, rot) = p.lerp(alpha);
        if t.translation != pos || t.rotation != rot {
            t.translation = pos;
            t.rotation = rot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playout_smooths_bursts_and_drains_backlogs() {
        assert_eq!(playout_count(0), 0);
        assert_eq!(playout_count(1), 1);
        assert_eq!(playout_count(3), 2);
        assert_eq!(playout_count(8), 2);
        assert_eq!(playout_count(20), 16);
    }

    #[test]
    fn a_body_gets_one_kinematic_target_and_the_last_wins() {
        let target =
            |id: BodyId, x: f32| WireKinematicTarget { id, position: [x, 0.0, 0.0], rotation: [0.0, 0.0, 0.0, 1.0] };
        // Order as built by `dispatch`: changed `KinematicTarget`s first, then agents.
        let mut targets = vec![target(3, 1.0), target(1, 1.0), target(2, 1.0), target(3, 2.0), target(1, 2.0)];
        dedup_targets(&mut targets);
        let kept: Vec<(BodyId, f32)> = targets.iter().map(|t| (t.id, t.position[0])).collect();
        assert_eq!(kept, [(2, 1.0), (3, 2.0), (1, 2.0)]);
        // And the peer accepts a request with them.
        let add = [1, 2, 3]
            .map(|id| {
                OffloadedBody::kinematic(BodyShape::ball(0.5)).desc(
                    id,
                    &PhysicsState {
                        id,
                        tick: 0,
                        position: Vec3::ZERO,
                        rotation: Quat::IDENTITY,
                        linvel: Vec3::ZERO,
                        angvel: Vec3::ZERO,
                        sleeping: false,
                    },
                )
            })
            .to_vec();
        let request = PhysicsStepRequest {
            tick: 1,
            snapshot: true,
            dt: 1.0 / 60.0,
            steps: 1,
            add,
            kinematic_targets: targets,
            ..Default::default()
        };
        let result = p2c2r_sim::physics::PhysicsWorld::new().step(&request);
        assert!(result.is_ok(), "{result:?}");
    }
}
