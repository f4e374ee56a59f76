//! The Send stage's second half: the offload controller plans the tick, the requests are
//! built from [`TickChanges`] ([`crate::build`]) and sent to peers, stepped locally, or
//! both; then the plugin's outputs ([`P2c2rStats`], diagnostics) are published.

use std::time::Instant;

use bevy::diagnostic::Diagnostics;
use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use p2c2r_protocol::ai::{AgentQuery, AiNavigateResult};
use p2c2r_protocol::physics::{BodyType, PhysicsStepRequest};
use p2c2r_protocol::{Encoding, ErrorCode, Payload, packed, task_types, to_payload};

use crate::apply::{Results, take_physics_results, write_state};
use crate::bridge::{P2c2rClient, QueueError, Sent, Unanswered};
use crate::build::{self, TickChanges, WorldSettings};
use crate::components::*;
use crate::events::Contacts;
use crate::gather::BodyQuery;
use crate::ids::EntityIds;
use crate::local::LocalSim;
use crate::messages::*;
use crate::offload::{OffloadMode, StreamKind, Verdict};
use crate::plugin::{Offload, P2c2rConfiguration, Settings};
use crate::receive::{publish_mode_changes, stream_of};
use crate::shape_names::ShapeNames;
use crate::stats::{P2c2rStats, diagnostics};

/// The in-process fallback (plugin-internal).
#[derive(Resource, Default)]
pub(crate) struct Fallback(pub LocalSim);

#[derive(SystemParam)]
pub(crate) struct SendParams<'w, 's> {
    client: ResMut<'w, P2c2rClient>,
    offload: ResMut<'w, Offload>,
    settings: Res<'w, Settings>,
    configuration: Res<'w, P2c2rConfiguration>,
    /// The gravity the last request carried (a change goes with the next one).
    gravity_sent: Local<'s, Option<Vec3>>,
    ids: ResMut<'w, EntityIds>,
    changes: ResMut<'w, TickChanges>,
    results: ResMut<'w, Results>,
    stats: ResMut<'w, P2c2rStats>,
    fallback: ResMut<'w, Fallback>,
    time: Res<'w, Time<Fixed>>,
    grid: Option<Res<'w, NavigationGrid>>,
    failed: MessageWriter<'w, TaskFailed>,
    mode: MessageWriter<'w, ModeChanged>,
    stepped: MessageWriter<'w, PhysicsStepped>,
    contacts: ResMut<'w, Contacts>,
    names: ResMut<'w, ShapeNames>,
    warned_no_grid: Local<'s, bool>,
}

/// Plans this tick, builds its requests and sends them (or steps them locally).
pub(crate) fn send_tick(
    mut p: SendParams,
    mut bodies: BodyQuery,
    agents: Query<(&OffloadedAgent, &AgentState), Without<crate::body::Collider>>,
) {
    let now = Instant::now();
    p.offload.tick += 1;
    let tick = p.offload.tick;
    let dt = p.time.timestep().as_secs_f32();

    // A changed navigation grid must reach the peer's AI session (with this tick's
    // request) and the local navigator.
    if let Some(grid) = &p.grid
        && grid.is_changed()
    {
        p.offload.controller.grid_changed();
        p.fallback.0.grid_changed();
    }

    // Decide who steps this tick.
    let connected = p.client.is_connected();
    let (plan, _) = p.offload.controller.plan(now, connected);
    let (physics, ai_plan) = (plan[StreamKind::Physics], plan[StreamKind::Ai]);

    if physics.reset {
        // A snapshot carries the newest states: apply every result still queued.
        let taken =
            take_physics_results(&mut p.results, &mut p.ids, &mut p.stats, &mut p.stepped, &mut p.contacts, None);
        for (entity, s, t) in taken {
            if let Ok((_, parts, mut ps, _, _, _, interp, _, velocity, controller)) = bodies.get_mut(entity) {
                let character = crate::character::is_character(controller, parts.rigid_body);
                write_state(&mut ps, interp, velocity, &s, t, character);
            }
        }
    }

    let changes = std::mem::take(&mut *p.changes);
    let gravity = p.configuration.gravity;
    let world = WorldSettings {
        gravity: gravity.to_array(),
        gravity_changed: p.gravity_sent.is_some_and(|sent| sent != gravity),
        substeps: p.configuration.substeps,
    };
    *p.gravity_sent = Some(gravity);
    let fresh: std::collections::HashSet<Entity> = changes.adds.iter().map(|(e, _)| *e).collect();
    let ids = &*p.ids;
    let mut request = build::physics_request(
        tick,
        dt,
        world,
        physics.reset,
        changes,
        || {
            bodies
                .iter()
                .filter(|(entity, _, ps, ..)| !fresh.contains(entity) && ids.bodies.id(*entity) == Some(ps.id))
                .map(|(_, body, ps, ..)| body.desc(ps.id, ps))
                .collect()
        },
        || ids.joint_descs.values().cloned().collect(),
    );
    if request.snapshot {
        // The pairs touching travel with the snapshot: events stay exactly once.
        request.touching = p.contacts.for_snapshot(&request.add);
    }
    if physics.to_peer && !p.stats.replicated() {
        // Large shapes the peer was sent go by name. Not in a replicated or audited
        // session: a replica that joins by replaying the session's log must find every
        // shape in it.
        p.names.name(&mut request);
    }

    let planned_mode = p.offload.controller.mode();
    let mut sent_physics = false;
    if physics.to_peer {
        let bodies = p.ids.bodies.len();
        p.stats.count_offloaded_tick(bodies);
        if physics.reset {
            p.stats.snapshots_sent += 1;
        }
        let sent = Sent { kind: TaskKind::Physics, tick: Some(tick) };
        if let Some(payload) = encode_physics(&request, wire(&p)) {
            sent_physics = send(&mut p, task_types::PHYSICS_STEP, payload, sent, tick, now);
        }
    }
    if plan.probe {
        let probe = build::probe_request(tick, request.dt);
        if let Some(payload) = encode_physics(&probe, wire(&p)) {
            let sent = Sent { kind: TaskKind::Probe, tick: None };
            let (task_id, result) = p.client.send(task_types::PHYSICS_STEP, payload, sent);
            match result {
                Ok(()) => p.offload.controller.probe_sent(task_id),
                Err(e) => report_unsent(&mut p, task_id, e, tick),
            }
        }
    }
    if physics.local {
        p.stats.fallback_ticks += 1;
        match p.fallback.0.step(&request, &p.names) {
            Ok(result) => {
                if p.offload.controller.local_result(StreamKind::Physics, result.tick) == Verdict::Apply {
                    p.results.physics.push((result, ResultSource::Local, None));
                } else {
                    p.stats.stale_results += 1;
                }
            }
            Err(e) => {
                p.offload.controller.local_failed();
                tracing::warn!(error = %e, "p2c2r: local fallback step failed; resyncing");
                report_local_failure(&mut p, e, tick, true);
            }
        }
    } else if !physics.to_peer {
        // Nobody steps this tick; keep the local mirror honest.
        p.fallback.0.drop_world();
    }
    if p.offload.controller.mode() == OffloadMode::Offloaded && !physics.local {
        p.fallback.0.drop_world();
    }

    // AI: one request with every agent.
    let queries: Vec<AgentQuery> = agents
        .iter()
        .map(|(a, st)| query(st, a, st.position))
        .chain(bodies.iter().filter_map(|(_, body, ps, _, _, _, _, agent, _, _)| {
            let kinematic = body.body_type() == BodyType::Kinematic;
            agent.map(|(a, st)| query(st, a, if kinematic { st.position } else { ps.position }))
        }))
        .collect();
    if p.grid.is_none() && !queries.is_empty() && !*p.warned_no_grid {
        *p.warned_no_grid = true;
        tracing::warn!("p2c2r: offloaded agents need a NavigationGrid resource; they stay still until one is inserted");
    }
    let mut sent_ai = false;
    // Held apart from `p` so that the grid is only borrowed (it is cloned only into a
    // request that carries it).
    let grid = p.grid.take();
    if let Some(grid) = &grid
        && !queries.is_empty()
    {
        let ai = build::ai_request(tick, ai_plan.reset.then(|| grid.0.clone()), queries);
        // Not when this tick's physics could not be sent and the controller gave up on
        // the peers.
        if ai_plan.to_peer
            && p.offload.controller.mode() == planned_mode
            && let Some(payload) = encode(&ai, "AI")
        {
            sent_ai = send(
                &mut p,
                task_types::AI_NAVIGATE,
                payload,
                Sent { kind: TaskKind::Ai, tick: Some(tick) },
                tick,
                now,
            );
        }
        if ai_plan.local {
            match p.fallback.0.navigate(&grid.0, &ai.agents) {
                Ok(agents) => {
                    if p.offload.controller.local_result(StreamKind::Ai, tick) == Verdict::Apply {
                        p.results
                            .ai
                            .push((AiNavigateResult { status: Default::default(), tick, agents }, ResultSource::Local));
                    }
                }
                Err(e) => report_local_failure(&mut p, e, tick, false),
            }
        }
    }
    // Only what was handed over is in flight.
    let mut done = plan;
    done[StreamKind::Physics].to_peer = sent_physics;
    done[StreamKind::Ai].to_peer = sent_ai;
    p.offload.controller.sent(tick, now, &done);

    // Custom tasks that could not be handed over, or that will never be answered.
    for Unanswered { task_id, why } in p.client.take_unanswered() {
        let failed = TaskFailed {
            task_id,
            kind: TaskKind::Custom,
            code: ErrorCode::Other,
            message: why,
            tick: None,
            resync: false,
        };
        report(&mut p, failed);
    }
    let SendParams { offload, stats, mode, .. } = &mut p;
    publish_mode_changes(offload, stats, mode);
}

/// How this tick's physics travels: packed when the settings ask for it and the
/// coordinator took binary frames (a coordinator from before them, and the peers behind
/// it, may not know packed payloads), JSON otherwise.
fn wire(p: &SendParams) -> Encoding {
    if p.settings.wire == Encoding::Binary && p.client.binary_frames() { Encoding::Binary } else { Encoding::Json }
}

/// A `physics_step` payload: packed for the binary wire, JSON otherwise.
fn encode_physics(request: &PhysicsStepRequest, wire: Encoding) -> Option<Payload> {
    match wire {
        Encoding::Binary => {
            let mut bytes = Vec::new();
            packed::encode_request(request, &mut bytes);
            Some(Payload::binary(bytes))
        }
        Encoding::Json => encode(request, "physics"),
    }
}

fn encode<T: serde::Serialize>(request: &T, what: &str) -> Option<Payload> {
    match to_payload(request) {
        Ok(payload) => Some(payload),
        Err(e) => {
            tracing::error!(error = %e, "p2c2r: cannot encode a {what} request");
            None
        }
    }
}

/// Sends one of the tick's requests; a request that cannot be handed over is reported
/// and tells the controller. Returns whether it was sent.
fn send(p: &mut SendParams, task_type: &str, payload: Payload, sent: Sent, tick: u64, now: Instant) -> bool {
    let (task_id, result) = p.client.send(task_type, payload, sent);
    match result {
        Ok(()) => true,
        Err(error) => {
            if let Some(stream) = stream_of(sent.kind) {
                p.offload.controller.send_failed(stream, now, &error.to_string());
            }
            report_unsent(p, task_id, error, tick);
            false
        }
    }
}

/// Counts a failure and tells the game about it.
fn report(p: &mut SendParams, failed: TaskFailed) {
    p.stats.task_failures += 1;
    p.failed.write(failed);
}

/// A local step failed (`resync`: the local world is gone and restarts from a snapshot).
fn report_local_failure(p: &mut SendParams, e: p2c2r_protocol::TaskError, tick: u64, resync: bool) {
    let failed = TaskFailed {
        task_id: String::new(),
        kind: TaskKind::Local,
        code: e.code,
        message: e.message,
        tick: Some(tick),
        resync,
    };
    report(p, failed);
}

/// A request could not be handed to the network.
fn report_unsent(p: &mut SendParams, task_id: String, error: QueueError, tick: u64) {
    let message = error.to_string();
    report(
        p,
        TaskFailed { task_id, kind: TaskKind::Other, code: ErrorCode::Other, message, tick: Some(tick), resync: false },
    );
}

fn query(st: &AgentState, a: &OffloadedAgent, position: Vec3) -> AgentQuery {
    AgentQuery { id: st.id, position: position.to_array(), goal: a.goal.to_array(), speed: a.speed, radius: a.radius }
}

/// Publishes the plugin's outputs for this tick: [`P2c2rStats`] and Bevy diagnostics.
pub(crate) fn publish_stats(
    client: Res<P2c2rClient>,
    offload: Res<Offload>,
    ids: Res<EntityIds>,
    mut stats: ResMut<P2c2rStats>,
    mut diagnostics: Diagnostics,
) {
    let now = Instant::now();
    let stats = &mut *stats;
    stats.mode = offload.controller.mode();
    stats.connection = client.connection().clone();
    stats.ticks = offload.tick;
    stats.network.tasks_in_flight = offload.controller.tasks_in_flight();
    stats.network.fallback_timeout_ms = offload.controller.current_timeout().as_secs_f64() * 1000.0;
    let rtt = offload.controller.rtt();
    stats.network.round_trip_ms = rtt.smoothed().map(|d| d.as_secs_f64() * 1000.0);
    stats.network.round_trip_variation_ms = rtt.variation().as_secs_f64() * 1000.0;
    stats.bodies = ids.bodies.len();
    stats.agents = ids.agents.len();
    stats.network.bytes_sent = client.bytes_sent();
    stats.network.bytes_received = client.bytes_received();
    stats.update_rates(now);
    let d = &mut diagnostics;
    if let Some(rtt) = stats.rtt_ms_quantile(0.5) {
        d.add_measurement(&diagnostics::RTT_MS, || rtt);
    }
    d.add_measurement(&diagnostics::TASKS_IN_FLIGHT, || stats.network.tasks_in_flight as f64);
    d.add_measurement(&diagnostics::TICKS_OFFLOADED, || stats.ticks_offloaded as f64);
    d.add_measurement(&diagnostics::TICKS_FALLBACK, || stats.fallback_ticks as f64);
    d.add_measurement(&diagnostics::BYTES_SENT, || stats.network.bytes_sent as f64);
    d.add_measurement(&diagnostics::BYTES_RECEIVED, || stats.network.bytes_received as f64);
    d.add_measurement(&diagnostics::FALLBACK, || f64::from(u8::from(stats.in_fallback())));
    d.add_measurement(&diagnostics::BYTES_SENT_PER_BODY_TICK, || stats.network.bytes_sent_per_body_tick);
    d.add_measurement(&diagnostics::BYTES_RECEIVED_PER_BODY_TICK, || stats.network.bytes_received_per_body_tick);
    if let Some(rtt) = stats.network.round_trip_ms {
        d.add_measurement(&diagnostics::ROUND_TRIP_MS, || rtt);
        d.add_measurement(&diagnostics::ROUND_TRIP_VARIATION_MS, || stats.network.round_trip_variation_ms);
    }
    d.add_measurement(&diagnostics::PLAYOUT_TARGET_TICKS, || stats.playout.target_ticks as f64);
    d.add_measurement(&diagnostics::PLAYOUT_JITTER_TICKS, || stats.playout.jitter_ticks);
    if stats.session_status(&stats.session_id).is_some() {
        d.add_measurement(&diagnostics::REPLICAS_WANTED, || f64::from(stats.replication.wanted));
        d.add_measurement(&diagnostics::REPLICAS_LIVE, || f64::from(stats.replication.live));
        d.add_measurement(&diagnostics::REPLICA_DISAGREEMENTS, || stats.replication.disagreements as f64);
        d.add_measurement(&diagnostics::REPLICA_CORRECTIONS, || stats.replication.corrections as f64);
    }
}
