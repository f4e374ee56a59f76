//! Offload a Bevy game's physics and NPC navigation to P2C2R peers.
//!
//! Add [`P2c2rPlugin`], describe rigid bodies with the components a bevy_rapier3d user
//! knows ([`RigidBody`], [`Collider`], [`Restitution`], [`Sensor`], [`ActiveEvents`],
//! [`ImpulseJoint`], ...: see the crate's README for the whole table), mark NPCs with
//! [`OffloadedAgent`], and insert a [`NavigationGrid`]. Every fixed tick the plugin sends
//! one `physics_step` request with everything that changed and one `ai_navigate` request
//! with every agent to a P2C2R coordinator, which routes them to peers. Results are
//! written to [`PhysicsState`], [`Velocity`] and [`AgentState`], events arrive as
//! [`CollisionEvent`] and [`ContactForceEvent`] messages, and `Transform`s are
//! interpolated between the last two ticks so motion stays smooth at any frame rate.
//!
//! When no peer answers in time, or the coordinator is unreachable, the plugin steps the
//! same world in-process with the engine the peers run (`p2c2r_sim`) ([`FallbackPolicy::Local`], the
//! default) and hands back to peers, with a snapshot, when one answers again: the game
//! never freezes. [`P2c2rStats`], Bevy messages ([`PhysicsStepped`], [`ModeChanged`],
//! [`TaskFailed`], [`ConnectionChanged`], ...) and Bevy diagnostics
//! ([`stats::diagnostics`]) say what is happening.
//!
//! The network side is [`client::GamerClient`] (the `p2c2r_client` crate), an async
//! client usable without Bevy. In the plugin it runs on its own thread with its own tokio
//! runtime; Bevy systems use its bounded queues directly and never block.
//!
//! # Quick start
//!
//! [`P2c2rPlugin::embedded()`] is the whole system in one line: it starts a coordinator
//! and one peer inside the app (on their own thread and tokio runtime) and connects to
//! them; the game can add and kill peers through the [`EmbeddedCluster`](embedded::EmbeddedCluster)
//! resource. For a real deployment use [`P2c2rPlugin::new`] with the coordinator's URL.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_p2c2r::prelude::*;
//!
//! fn main() {
//!     App::new()
//!         .add_plugins(MinimalPlugins)
//!         .add_plugins(
//!             P2c2rPlugin::embedded() // or P2c2rPlugin::new("ws://HOST:8765")
//!                 .gamer_id("player-1")
//!                 .tick_rate(60.0),
//!         )
//!         .add_systems(Update, (hit_sound, low_gravity))
//!         .insert_resource(NavigationGrid::new(1.0, Vec2::new(-8.0, -8.0), vec!["................"; 16]))
//!         .add_systems(Startup, setup)
//!         .add_systems(FixedUpdate, report.after(P2c2rSystems::Apply))
//!         .run();
//! }
//!
//! fn setup(mut commands: Commands) {
//!     // A fixed ground (a collider without a rigid body is fixed) and a falling ball
//!     // that reports what it hits.
//!     commands.spawn((Collider::cuboid(8.0, 0.5, 8.0), Transform::from_xyz(0.0, -0.5, 0.0)));
//!     commands.spawn((
//!         RigidBody::Dynamic,
//!         Collider::ball(0.5),
//!         Restitution::coefficient(0.3),
//!         ActiveEvents::COLLISION_EVENTS,
//!         Transform::from_xyz(0.0, 5.0, 0.0),
//!     ));
//!     // An NPC walking to the far corner.
//!     commands.spawn((OffloadedAgent::new(Vec3::new(6.0, 0.0, 6.0), 3.0), Transform::from_xyz(-6.0, 0.0, -6.0)));
//! }
//!
//! fn report(stats: Res<P2c2rStats>, balls: Query<&Transform, With<RigidBody>>) {
//!     if stats.ticks % 60 == 0 {
//!         println!("{} rtt p50 {:?} ms, {} bodies", stats.mode, stats.rtt_ms_p50(), balls.iter().count());
//!     }
//! }
//!
//! fn hit_sound(mut collisions: MessageReader<CollisionEvent>) {
//!     for event in collisions.read() {
//!         if let CollisionEvent::Started(a, b, _) = event {
//!             println!("{a} hit {b}");
//!         }
//!     }
//! }
//!
//! // The world's settings are a resource: change them while playing (here, the moon
//! // after ten seconds).
//! fn low_gravity(time: Res<Time>, mut config: ResMut<P2c2rConfiguration>) {
//!     if time.elapsed_secs() > 10.0 && config.gravity.y < -1.6 {
//!         config.gravity = Vec3::new(0.0, -1.6, 0.0);
//!     }
//! }
//! ```
//!
//! Without a coordinator, [`P2c2rPlugin::local_only`] runs the same game fully
//! in-process, with no network at all.
//!
//! # Features
//!
//! - `embedded` (default): [`P2c2rPlugin::embedded`] and the [`embedded`] module. It adds
//!   the `coordinator` and `peer` libraries, without their command-line parts (no clap,
//!   sysinfo or tracing-subscriber). Turn it off (`default-features = false`) to connect
//!   to remote coordinators only.

mod apply;
pub mod body;
mod bridge;
mod build;
pub mod character;
pub mod components;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod events;
mod gather;
mod ids;
mod interpolate;
mod joints;
mod local;
pub mod messages;
mod offload;
mod plugin;
pub mod queries;
mod receive;
mod send;
mod shape_names;
pub mod stats;

pub use body::{
    ActiveEvents, AdditionalMass, Ccd, Collider, ColliderMassProperties, ColliderOffset, CollisionGroups,
    ContactForceEventThreshold, Damping, Dominance, Friction, GravityScale, LockedAxes, Restitution, RigidBody, Sensor,
    SolverGroups, Velocity,
};
pub use bridge::{P2c2rClient, QueueError};
pub use character::{
    CharacterAutostep, CharacterCollision, KinematicCharacterController, KinematicCharacterControllerOutput,
};
pub use components::{
    AgentState, ExternalForce, ExternalImpulse, KinematicTarget, NavigationGrid, OffloadedAgent, PhysicsState,
    PoseInterpolation,
};
pub use events::{CollisionEvent, CollisionEventFlags, ContactForceEvent};
pub use joints::{ImpulseJoint, JointData};
pub use messages::{
    AiStepped, BodyLeftWorld, ConnectionChanged, ConnectionState, ModeChanged, PhysicsCommand, PhysicsStepped,
    ResultSource, TaskFailed, TaskKind, TaskResultReceived,
};
pub use offload::OffloadMode;
/// The Bevy-free gamer client the plugin runs on its transport thread.
pub use p2c2r_client as client;
pub use p2c2r_protocol;
pub use p2c2r_protocol::ai::AgentStatus;
pub use p2c2r_protocol::physics::BodyType;
pub use plugin::{
    ConnectionSettings, Credential, DEFAULT_COORDINATOR_URL, Dialer, Encoding, FallbackPolicy, FallbackSettings,
    P2c2rConfiguration, P2c2rPlugin, P2c2rSystems,
};
pub use queries::{PhysicsQueries, PointHit, QueryFilter, RayHit, ShapeHit};
pub use stats::{CharacterStats, EventStats, NetworkStats, P2c2rStats, PlayoutStats, ReplicationStats};

/// Everything a game needs: `use bevy_p2c2r::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "embedded")]
    pub use crate::embedded::{ClusterEvent, EmbeddedCluster, EmbeddedError, PeerAccess};
    pub use crate::{
        ActiveEvents, AdditionalMass, AgentState, AgentStatus, AiStepped, BodyLeftWorld, Ccd, Collider,
        ColliderMassProperties, ColliderOffset, CollisionEvent, CollisionEventFlags, CollisionGroups,
        ConnectionChanged, ConnectionSettings, ConnectionState, ContactForceEvent, ContactForceEventThreshold,
        Credential, Damping, Dominance, Encoding, ExternalForce, ExternalImpulse, FallbackPolicy, FallbackSettings,
        Friction, GravityScale, ImpulseJoint, JointData, KinematicCharacterController,
        KinematicCharacterControllerOutput, KinematicTarget, LockedAxes, ModeChanged, NavigationGrid, OffloadMode,
        OffloadedAgent, P2c2rClient, P2c2rConfiguration, P2c2rPlugin, P2c2rStats, P2c2rSystems, PhysicsCommand,
        PhysicsQueries, PhysicsState, PhysicsStepped, PointHit, PoseInterpolation, QueryFilter, RayHit, Restitution,
        ResultSource, RigidBody, Sensor, SolverGroups, TaskFailed, TaskKind, TaskResultReceived, Velocity,
    };
    pub use p2c2r_protocol::physics::CombineRule;
}
