//! The numbers the demo reports: the HUD's (refreshed a few times a second) and the JSON
//! line printed at exit of a `--frames` run.

use bevy::prelude::*;
use serde::Serialize;

use crate::game::{DemoCounters, Drawn, Npc, Role, StartPosition};
use crate::hud::Mode;
use crate::offload;
use crate::playground::PlaygroundCounters;

/// A body counts as moved when it ends this far (m) from where it started.
pub const MOVED_THRESHOLD: f32 = 0.1;

/// The JSON line of a `--frames` run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Report {
    /// Frames run.
    pub frames: u64,
    /// Seconds since the app started.
    pub elapsed_s: f64,
    /// `physics_step` results from peers applied.
    pub physics_results_from_peers: u64,
    /// `ai_navigate` results from peers applied.
    pub ai_results_from_peers: u64,
    /// Physics ticks stepped in-process because no peer answered in time.
    pub fallback_ticks: u64,
    /// Dynamic rigid bodies (stacks, balls, NPC capsules).
    pub bodies: usize,
    /// Fixed bodies (ground, walls, ramps).
    pub static_bodies: usize,
    /// NPC agents.
    pub agents: usize,
    /// Dynamic bodies (not NPCs) now more than 0.1 m from where they started.
    pub bodies_moved: usize,
    /// Balls fired.
    pub balls_fired: u64,
    /// Metres walked by all NPCs together.
    pub agent_distance_m: f32,
    /// Targets reached by all NPCs together.
    pub agent_arrivals: u32,
    /// `offloaded`, `local_fallback` or `connecting`.
    pub mode: &'static str,
    /// Peers serving this game (as the plugin or the in-process coordinator knows them).
    pub peers: u32,
    /// Median task round trip, ms.
    pub rtt_ms_p50: Option<f64>,
    /// 99th percentile task round trip, ms.
    pub rtt_ms_p99: Option<f64>,
    /// Bytes sent to the coordinator.
    pub bytes_sent: u64,
    /// Bytes received from the coordinator.
    pub bytes_received: u64,
    /// Joints in the playground.
    pub joints: usize,
    /// Collision events (started, stopped) delivered so far.
    pub collision_events: u64,
    /// Contact-force events delivered so far.
    pub force_events: u64,
    /// Both kinds, per second, over the last second.
    pub events_per_s: f64,
    /// Bodies that entered the playground's trigger zone.
    pub zone_entries: u64,
    /// Hit effects made from collision events.
    pub sparks: u64,
    /// What the player did (all zero in a level without one).
    pub player: crate::player::PlayerCounters,
}

/// Counts what the world holds and reads the plugin's statistics.
pub fn collect(world: &mut World) -> Report {
    let mut r = Report::default();
    let mut q = world.query::<(&Drawn, &Transform, Option<&StartPosition>)>();
    for (drawn, transform, start) in q.iter(world) {
        match drawn.role {
            Role::Static(_) => r.static_bodies += 1,
            Role::Npc => {
                r.bodies += 1;
                r.agents += 1;
            }
            Role::Player => {}
            Role::Stacked | Role::Ball => {
                r.bodies += 1;
                if start.is_some_and(|s| s.0.distance(transform.translation) > MOVED_THRESHOLD) {
                    r.bodies_moved += 1;
                }
            }
        }
    }
    let mut npcs = world.query::<&Npc>();
    for npc in npcs.iter(world) {
        r.agent_distance_m += npc.walked;
        r.agent_arrivals += npc.arrivals;
    }
    if let Some(c) = world.get_resource::<DemoCounters>() {
        r.frames = c.frames;
        r.balls_fired = c.balls_fired;
    }
    if let Some(t) = world.get_resource::<Time<Real>>() {
        r.elapsed_s = t.elapsed_secs_f64();
    }
    if let Some(p) = world.get_resource::<PlaygroundCounters>() {
        r.joints = p.joints;
        r.collision_events = p.collision_events;
        r.force_events = p.force_events;

        r.zone_entries = p.zone_entries;
        r.sparks = p.sparks;
    }
    if let Some(p) = world.get_resource::<crate::player::PlayerCounters>() {
        r.player = *p;
    }
    let s = offload::stats(world);
    r.physics_results_from_peers = s.physics_results_from_peers;
    r.ai_results_from_peers = s.ai_results_from_peers;
    r.fallback_ticks = s.fallback_ticks;
    r.mode = match s.mode {
        Mode::Connecting => "connecting",
        Mode::Offloaded => "offloaded",
        Mode::LocalFallback => "local_fallback",
        Mode::HandingBack => "handing_back",
    };
    r.peers = s.peers;
    r.events_per_s = s.events.per_sec;
    r.rtt_ms_p50 = s.rtt_ms_p50;
    r.rtt_ms_p99 = s.rtt_ms_p99;
    r.bytes_sent = s.network.bytes_sent;
    r.bytes_received = s.network.bytes_received;
    r
}
