//! The `ai_navigate` task: path queries and steering for a batch of NPC agents.
//!
//! The navigation grid is sent once per session (`grid`) and kept by the peer; later
//! requests leave it out. A peer that does not hold the session's grid answers with an
//! `unknown_session` error with `resync: true`, and the gamer sends the grid again.
//!
//! The grid lies on the x–z plane: cell `(col, row)` covers
//! `x ∈ origin[0] + col·cell_size .. +cell_size` and `z ∈ origin[1] + row·cell_size ..`.

use serde::{Deserialize, Serialize};

use crate::physics::Vec3;

/// An agent's id, chosen by the gamer.
pub type AgentId = u64;

/// An `ai_navigate` request's payload (`task_data`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AiNavigateRequest {
    /// The tick number, echoed in the result.
    pub tick: u64,
    /// The session's navigation grid; required on the first request of a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<NavGrid>,
    /// The agents to steer this tick.
    #[serde(default)]
    pub agents: Vec<AgentQuery>,
}

/// A walkable grid on the x–z plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NavGrid {
    /// Side of a square cell, in metres.
    pub cell_size: f32,
    /// World `[x, z]` of the corner of cell (0, 0).
    #[serde(default)]
    pub origin: [f32; 2],
    /// One string per row (increasing z), one character per column (increasing x):
    /// `#` is blocked, anything else is walkable. All rows have the same length.
    pub rows: Vec<String>,
}

/// One agent's query.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentQuery {
    /// The agent.
    pub id: AgentId,
    /// Where it is.
    pub position: Vec3,
    /// Where it wants to go.
    pub goal: Vec3,
    /// Its top speed, m/s.
    pub speed: f32,
    /// Its radius, used to keep agents apart.
    #[serde(default = "default_radius")]
    pub radius: f32,
}

fn default_radius() -> f32 {
    0.4
}

/// The per-agent outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// A path was found; follow `desired_velocity`.
    Moving,
    /// The agent is at its goal.
    Arrived,
    /// No path leads to the goal; the agent keeps apart from its neighbours.
    Unreachable,
    /// The query was malformed (NaN, a position off the grid, ...).
    Invalid,
}

/// One agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentResult {
    /// The agent.
    pub id: AgentId,
    /// What happened.
    pub status: AgentStatus,
    /// The path's waypoints (cell centres, goal last), empty unless `moving`.
    #[serde(default)]
    pub waypoints: Vec<Vec3>,
    /// The velocity the agent should move at now: along the path, away from neighbours.
    pub desired_velocity: Vec3,
}

/// A successful `ai_navigate` result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AiNavigateResult {
    /// Always [`crate::TaskStatus::Success`].
    pub status: crate::TaskStatus,
    /// The tick this answers.
    pub tick: u64,
    /// One entry per queried agent, in query order.
    pub agents: Vec<AgentResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = AiNavigateRequest {
            tick: 3,
            grid: Some(NavGrid { cell_size: 1.0, origin: [-5.0, -5.0], rows: vec!["..#".into(), "...".into()] }),
            agents: vec![AgentQuery { id: 1, position: [0.0; 3], goal: [2.0, 0.0, 1.0], speed: 3.0, radius: 0.4 }],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<AiNavigateRequest>(&json).unwrap(), r);
    }
}
