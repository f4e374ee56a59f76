//! Bevy messages the plugin writes (results, failures, connection and mode changes) and
//! reads ([`PhysicsCommand`]).

use bevy::math::{Quat, Vec3};
use bevy::prelude::{Entity, Message};
use p2c2r_protocol::{ErrorCode, Payload};

use crate::OffloadMode;

/// Where a result came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ResultSource {
    /// A peer, by id (as reported by the coordinator).
    Peer(String),
    /// The in-process fallback.
    Local,
}

impl ResultSource {
    /// Whether a peer computed it.
    pub fn is_peer(&self) -> bool {
        matches!(self, ResultSource::Peer(_))
    }
}

/// A physics tick's result was applied to the bodies.
#[derive(Message, Clone, Debug, PartialEq)]
pub struct PhysicsStepped {
    /// The tick.
    pub tick: u64,
    /// Who computed it.
    pub source: ResultSource,
    /// How many body states it carried.
    pub bodies: usize,
    /// Round-trip time, for peer results.
    pub rtt: Option<std::time::Duration>,
}

/// A world (a peer's or the local fallback) removed a body because it left the world's
/// bounds: a position past the protocol's largest coordinate, a speed past its largest
/// speed, or a non-finite value. The plugin has stopped simulating it and taken
/// [`crate::Collider`] off the entity; despawn it, or add a `Collider` again at a
/// valid place.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub struct BodyLeftWorld {
    /// The entity that was the body.
    pub entity: Entity,
    /// Its body id in the session.
    pub id: p2c2r_protocol::physics::BodyId,
    /// The tick whose result removed it.
    pub tick: u64,
}

/// An AI tick's result was applied to the agents.
#[derive(Message, Clone, Debug, PartialEq)]
pub struct AiStepped {
    /// The tick.
    pub tick: u64,
    /// Who computed it.
    pub source: ResultSource,
    /// How many agents it answered.
    pub agents: usize,
}

/// What kind of task a failure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// A `physics_step`.
    Physics,
    /// An `ai_navigate`.
    Ai,
    /// The fallback's probe for peers.
    Probe,
    /// A task submitted with [`crate::P2c2rClient::submit`].
    Custom,
    /// The local fallback itself (a local step that failed).
    Local,
    /// An `error` message not tied to a known task.
    Other,
}

/// A task failed: an error result from a peer or the coordinator, an `error` message,
/// or a request that could not be sent. The plugin recovers on its own (resync or
/// fallback); this message is for logging and HUDs.
#[derive(Message, Clone, Debug, PartialEq)]
pub struct TaskFailed {
    /// The task's id (empty when unknown).
    pub task_id: String,
    /// What kind of task.
    pub kind: TaskKind,
    /// The error code.
    pub code: ErrorCode,
    /// The reason, for a person.
    pub message: String,
    /// The tick the task carried, when known.
    pub tick: Option<u64>,
    /// The failure asked for a full snapshot.
    pub resync: bool,
}

/// The connection to the coordinator changed.
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub struct ConnectionChanged {
    /// The new state.
    pub state: ConnectionState,
}

/// The state of the connection to the coordinator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConnectionState {
    /// No coordinator configured: everything runs locally.
    Offline,
    /// Connecting (or waiting to reconnect).
    #[default]
    Connecting,
    /// Registered as this gamer.
    Connected {
        /// The registered gamer id.
        gamer_id: String,
    },
    /// The connection dropped or could not be made; reconnecting.
    Disconnected {
        /// Why.
        reason: String,
    },
}

impl ConnectionState {
    /// Whether the client is registered now.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

/// The offload mode changed (fallback entered, hand-back started or done).
#[derive(Message, Clone, Debug, PartialEq, Eq)]
pub struct ModeChanged {
    /// The new mode.
    pub mode: OffloadMode,
    /// The mode before.
    pub previous: OffloadMode,
    /// Why.
    pub reason: String,
}

/// The result of a task submitted with [`crate::P2c2rClient::submit`].
#[derive(Message, Debug)]
pub struct TaskResultReceived {
    /// The task id `submit` returned.
    pub task_id: String,
    /// The peer that ran it.
    pub peer_id: Option<String>,
    /// The result JSON (`"status"` says success or error).
    pub result: std::sync::Arc<Payload>,
    /// Round-trip time.
    pub rtt: Option<std::time::Duration>,
}

/// A one-off command for an offloaded body, sent with the next tick. An alternative to
/// the [`crate::ExternalForce`] / [`crate::ExternalImpulse`] components.
#[derive(Message, Clone, Copy, Debug, PartialEq)]
pub enum PhysicsCommand {
    /// Apply an impulse once.
    Impulse {
        /// The body's entity.
        entity: Entity,
        /// Linear impulse, N·s.
        impulse: Vec3,
        /// Angular impulse.
        torque_impulse: Vec3,
    },
    /// Apply a force during the next tick.
    Force {
        /// The body's entity.
        entity: Entity,
        /// Force, N.
        force: Vec3,
        /// Torque, N·m.
        torque: Vec3,
    },
    /// Overwrite the body's velocities.
    SetVelocity {
        /// The body's entity.
        entity: Entity,
        /// Linear velocity.
        linvel: Vec3,
        /// Angular velocity.
        angvel: Vec3,
    },
    /// Teleport the body (no interpolation across the jump).
    Teleport {
        /// The body's entity.
        entity: Entity,
        /// New position.
        position: Vec3,
        /// New rotation.
        rotation: Quat,
    },
    /// Wake the body up (bevy_rapier3d's `Sleeping::sleeping = false`).
    WakeUp {
        /// The body's entity.
        entity: Entity,
    },
    /// Put the body to sleep (a contact or a change wakes it again).
    Sleep {
        /// The body's entity.
        entity: Entity,
    },
}
