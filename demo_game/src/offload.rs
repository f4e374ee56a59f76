//! The one place the demo talks to the `bevy_p2c2r` plugin: which plugin settings it uses,
//! how its bodies and NPCs are marked for offloading, and how it reads the plugin's
//! statistics for the HUD and the report.

use bevy::ecs::query::QueryData;
use bevy::prelude::*;
use bevy_p2c2r::{
    AgentState, Ccd, Collider, ColliderMassProperties, ConnectionSettings, Credential, Damping, ExternalForce,
    FallbackSettings, Friction, NavigationGrid, OffloadMode, OffloadedAgent, P2c2rConfiguration, P2c2rPlugin,
    P2c2rStats, PhysicsState, Restitution, RigidBody, Velocity, embedded::EmbeddedCluster,
};
pub use bevy_p2c2r::{EventStats, NetworkStats, PlayoutStats, ReplicationStats};

use crate::cli::Args;
use crate::hud::Mode;
use crate::level::{BodyShape, Level};

/// Adds the plugin with its embedded cluster (`--peers` in-process peers, presenting
/// `--peer-token` / `--peer-token-file` as `--peer-id`), joining `--coordinator` or else
/// starting one in-process; ticking at `--tick-hz` with the level's gravity, presenting
/// `--token` / `--token-file` and trusting `--ca-file`; and the level's navigation grid.
pub fn add_plugin(app: &mut App, args: &Args, level: &Level) {
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(Credential::Token(token.clone())),
        (None, Some(path)) => Some(Credential::File(path.clone())),
        (None, None) => None,
    };
    let connection = ConnectionSettings {
        coordinator_url: args.coordinator.clone(),
        gamer_id: args.gamer_id.clone(),
        token,
        ca_file: args.ca_file.clone(),
        ..default()
    };
    let mut fallback = FallbackSettings::default();
    if let Some(ms) = args.fallback_timeout_ms {
        fallback.timeout = std::time::Duration::from_millis(ms);
    }
    let plugin = P2c2rPlugin::embedded()
        .embedded_peers(args.initial_peers())
        .embedded_peer_access(args.peer_access())
        .embedded_replicas(args.replicas)
        .tick_rate(args.tick_hz)
        .with_connection(connection)
        .with_fallback(fallback)
        .with_configuration(P2c2rConfiguration { gravity: Vec3::from(level.gravity), ..default() });
    app.add_plugins(plugin);
    app.insert_resource(NavigationGrid(level.nav_grid.to_protocol()));
}

/// The collider of a demo shape.
pub fn collider(shape: BodyShape) -> Collider {
    match shape {
        BodyShape::Box(h) => Collider::cuboid(h.x, h.y, h.z),
        BodyShape::Sphere(r) => Collider::ball(r),
        BodyShape::Capsule(radius, half_height) => Collider::capsule_y(half_height, radius),
    }
}

/// A ground, wall or ramp.
pub fn fixed_body(shape: BodyShape) -> impl Bundle {
    (RigidBody::Fixed, collider(shape), Friction::coefficient(0.8))
}

/// A box or sphere of a stack.
pub fn dynamic_body(shape: BodyShape, linvel: Vec3) -> impl Bundle {
    // Spheres would roll forever on a frictionless contact; give them some drag.
    let damping = match shape {
        BodyShape::Sphere(_) => Damping { linear_damping: 0.1, angular_damping: 0.6 },
        _ => Damping::default(),
    };
    (
        RigidBody::Dynamic,
        collider(shape),
        Friction::coefficient(0.6),
        Velocity::linear(linvel),
        ColliderMassProperties::Density(400.0),
        damping,
    )
}

/// A fired ball: heavy, bouncy, with continuous collision detection.
pub fn ball(shape: BodyShape, linvel: Vec3) -> impl Bundle {
    (
        RigidBody::Dynamic,
        collider(shape),
        Velocity::linear(linvel),
        ColliderMassProperties::Density(3000.0),
        Restitution::coefficient(0.3),
        Damping { linear_damping: 0.05, angular_damping: 0.3 },
        Ccd::enabled(),
    )
}

/// An NPC: a dynamic capsule (so balls and boxes knock it about) that is also an
/// offloaded agent (so peers find its path and steer it).
pub fn agent(radius: f32, half_height: f32, goal: Vec3, speed: f32) -> impl Bundle {
    (
        RigidBody::Dynamic,
        collider(BodyShape::Capsule(radius, half_height)),
        ColliderMassProperties::Mass(70.0),
        Friction::coefficient(0.1),
        Damping { linear_damping: 0.2, angular_damping: 6.0 },
        OffloadedAgent::new(goal, speed).with_radius(radius),
        ExternalForce::default(),
    )
}

/// Restoring torque per radian of tilt or heading error, N·m/rad. Must beat gravity's
/// toppling torque (m·g·h/2 ≈ 550 N·m/rad for the shipped NPCs).
const UPRIGHT_GAIN: f32 = 1400.0;
/// Torque per rad/s of angular velocity, N·m·s/rad.
const UPRIGHT_DAMPING: f32 = 90.0;
/// Largest balance torque, N·m: a hard hit still knocks an NPC over for a moment.
const UPRIGHT_MAX_TORQUE: f32 = 2500.0;

/// The NPCs' balance: a torque (an [`ExternalForce`] the peer applies) that turns each
/// NPC's capsule back upright and towards where it walks, from its latest simulated
/// state. Balls and boxes still knock NPCs about; they get up again. Runs in `FixedUpdate`.
pub fn keep_npcs_upright(
    mut npcs: Query<(&PhysicsState, Option<&AgentState>, &mut ExternalForce), With<OffloadedAgent>>,
) {
    for (state, agent, mut force) in &mut npcs {
        if state.tick == 0 {
            continue;
        }
        force.torque = balance_torque(state.rotation, state.angvel, agent.map_or(state.linvel, |a| a.desired_velocity));
    }
}

/// The torque that rotates a body at `rotation` spinning at `angvel` towards upright,
/// facing (its local -Z) along `heading` on the XZ plane when that is not tiny.
pub fn balance_torque(rotation: Quat, angvel: Vec3, heading: Vec3) -> Vec3 {
    let yaw = if heading.xz().length() > 0.3 {
        f32::atan2(-heading.x, -heading.z)
    } else {
        rotation.to_euler(EulerRot::YXZ).0
    };
    let error = Quat::from_rotation_y(yaw) * rotation.inverse();
    let (axis, mut angle) = error.normalize().to_axis_angle();
    if angle > std::f32::consts::PI {
        angle -= std::f32::consts::TAU;
    }
    let torque = axis * angle * UPRIGHT_GAIN - angvel * UPRIGHT_DAMPING;
    if torque.is_finite() { torque.clamp_length_max(UPRIGHT_MAX_TORQUE) } else { Vec3::ZERO }
}

/// The part of an NPC's components the game changes to give it a new goal.
pub type AgentGoal = &'static mut OffloadedAgent;

/// Sends an NPC to `goal`.
pub fn set_goal(agent: &mut <AgentGoal as QueryData>::Item<'_, '_>, goal: Vec3) {
    agent.goal = goal;
}

/// What the HUD and the report need from the plugin: the demo's own reading of its
/// mode and peers, and the plugin's grouped figures as they are.
#[derive(Clone, Debug, Default)]
pub struct OffloadStats {
    /// Offloaded, fallback, ...
    pub mode: Mode,
    /// Peers: registered with the in-process coordinator, else peers that answered.
    pub peers: u32,
    /// The peer that answered the latest physics result.
    pub serving_peer: Option<String>,
    /// Median round trip, ms.
    pub rtt_ms_p50: Option<f64>,
    /// 99th percentile round trip, ms.
    pub rtt_ms_p99: Option<f64>,
    /// Physics results from peers applied.
    pub physics_results_from_peers: u64,
    /// AI results from peers applied.
    pub ai_results_from_peers: u64,
    /// Ticks stepped by the local fallback.
    pub fallback_ticks: u64,
    /// Physics ticks applied per second.
    pub ticks_per_s: f64,
    /// The link: bytes, rates, round trip, fallback timeout.
    pub network: NetworkStats,
    /// The playout buffer.
    pub playout: PlayoutStats,
    /// How the coordinator replicates the physics session.
    pub replication: ReplicationStats,
    /// Collision and contact-force events delivered.
    pub events: EventStats,
}

/// Reads the plugin's statistics (all zero before the plugin runs).
pub fn stats(world: &World) -> OffloadStats {
    let Some(s) = world.get_resource::<P2c2rStats>() else { return OffloadStats::default() };
    let registered = world.get_resource::<EmbeddedCluster>().and_then(EmbeddedCluster::registered_peers);
    OffloadStats {
        mode: match s.mode {
            OffloadMode::Offloaded if s.physics_results_from_peers == 0 => Mode::Connecting,
            OffloadMode::Offloaded => Mode::Offloaded,
            OffloadMode::Fallback => Mode::LocalFallback,
            OffloadMode::HandingBack => Mode::HandingBack,
        },
        peers: registered.unwrap_or(s.distinct_peers() as u64) as u32,
        serving_peer: s.serving_peer.clone(),
        rtt_ms_p50: s.rtt_ms_p50(),
        rtt_ms_p99: s.rtt_ms_p99(),
        physics_results_from_peers: s.physics_results_from_peers,
        ai_results_from_peers: s.ai_results_from_peers,
        fallback_ticks: s.fallback_ticks,
        ticks_per_s: s.ticks_per_sec,
        network: s.network.clone(),
        playout: s.playout.clone(),
        replication: s.replication,
        events: s.events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_torque_rights_a_tilted_npc() {
        // Tilted forward about +X by 0.5 rad: the torque turns it back (negative X).
        let t = balance_torque(Quat::from_rotation_x(0.5), Vec3::ZERO, Vec3::ZERO);
        assert!(t.x < -100.0 && t.y.abs() < 1e-3 && t.z.abs() < 1e-3, "{t}");
        // Upright and facing its walking direction: no torque.
        let t = balance_torque(Quat::IDENTITY, Vec3::ZERO, Vec3::new(0.0, 0.0, -2.0));
        assert!(t.length() < 1e-3, "{t}");
        // Facing -Z but walking along +X: turn about Y (towards -90 degrees).
        let t = balance_torque(Quat::IDENTITY, Vec3::ZERO, Vec3::new(2.0, 0.0, 0.0));
        assert!(t.y < -100.0, "{t}");
        // Spinning: damped.
        let t = balance_torque(Quat::IDENTITY, Vec3::new(0.0, 0.0, 3.0), Vec3::ZERO);
        assert!(t.z < 0.0, "{t}");
    }
}
