//! The seed documents' task shapes, answered with real work and a summary.
//!
//! - `physics` with `{"num_objects": N}` (or the seed gamer's `{"objects": []}`): drops N
//!   balls onto a ground plane, simulates one 1/60 s step, and summarises the result.
//! - `ai` with `{"model": NAME}`: there are no models to run, so the peer runs a small
//!   built-in navigation scene through the same [`Navigator`] as `ai_navigate` and says so.

use p2c2r_protocol::ai::{AgentQuery, AgentStatus, NavGrid};
use p2c2r_protocol::physics::{BodyDesc, BodyType, PhysicsStepRequest, SeedPhysicsRequest, Shape};
use p2c2r_protocol::{ErrorCode, Payload, TaskError, TaskStatus, limits, to_payload};
use serde::{Deserialize, Serialize};

use crate::payload::parse;
use p2c2r_sim::Budgets;
use p2c2r_sim::navigation::Navigator;
use p2c2r_sim::physics::PhysicsWorld;

/// The seed `physics` task's time step: one 60 Hz tick.
pub const SEED_DT: f32 = 1.0 / 60.0;

/// The answer to a seed `physics` task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedPhysicsResult {
    /// Always success.
    pub status: TaskStatus,
    /// `"physics_processed"`, as the seed peer answered.
    pub data: String,
    /// How many bodies were simulated.
    pub num_objects: u32,
    /// Steps taken.
    pub steps: u32,
    /// Seconds per step.
    pub dt: f32,
    /// Mean, lowest and highest body height after the step (0 without bodies).
    pub mean_height: f32,
    /// Lowest body height.
    pub min_height: f32,
    /// Highest body height.
    pub max_height: f32,
    /// Mean downward speed after the step, m/s.
    pub mean_fall_speed: f32,
}

/// The answer to a seed `ai` task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedAiResult {
    /// Always success.
    pub status: TaskStatus,
    /// `"ai_processed"`.
    pub data: String,
    /// The model the request named (`"default"` when none).
    pub model: String,
    /// Agents in the built-in scene.
    pub agents: usize,
    /// Agents that found a path.
    pub paths_found: usize,
    /// Agents whose goal is walled off.
    pub unreachable: usize,
    /// What the peer did instead of running a model.
    pub note: String,
}

/// Runs a seed `physics` task.
pub fn physics(payload: &str) -> Result<Payload, TaskError> {
    physics_within(payload, &Budgets::unlimited())
}

/// [`physics`] within a work budget, as peers run it (see
/// [`PhysicsWorld::step_limited`]).
pub fn physics_within(payload: &str, budgets: &Budgets) -> Result<Payload, TaskError> {
    let request: SeedPhysicsRequest =
        if payload.trim() == "null" { SeedPhysicsRequest::default() } else { parse(payload)? };
    let n = request.num_objects;
    // The ground is a body of the world too: the balls get the rest of a session's bodies.
    let max_objects = limits::MAX_BODIES_PER_SESSION - 1;
    if n as usize > max_objects {
        return Err(TaskError::new(
            ErrorCode::LimitExceeded,
            format!("num_objects is {n}; at most {max_objects} are allowed (the ground is one more body)"),
        ));
    }
    let side = (n as f32).sqrt().ceil().max(1.0) as u64;
    let extent = side as f32 * 1.5;
    let mut add = Vec::with_capacity(n as usize + 1);
    add.push(
        BodyDesc::new(0, Shape::Box { half_extents: [extent, 0.5, extent] }, [0.0, -0.5, 0.0])
            .with_body_type(BodyType::Fixed),
    );
    for i in 0..u64::from(n) {
        let (col, row) = (i % side, i / side);
        let position = [col as f32 * 1.5 - extent / 2.0, 5.0 + (i % 3) as f32, row as f32 * 1.5 - extent / 2.0];
        add.push(BodyDesc::new(i + 1, Shape::Sphere { radius: 0.5 }, position));
    }
    let request = PhysicsStepRequest { tick: 0, snapshot: true, dt: SEED_DT, steps: 1, add, ..Default::default() };
    let result = PhysicsWorld::new().step_limited(&request, budgets)?;
    let count = result.bodies.len().max(1) as f32;
    let heights = result.bodies.iter().map(|b| b.position[1]);
    let summary = SeedPhysicsResult {
        status: TaskStatus::Success,
        data: "physics_processed".into(),
        num_objects: n,
        steps: 1,
        dt: SEED_DT,
        mean_height: heights.clone().sum::<f32>() / count,
        min_height: heights.clone().reduce(f32::min).unwrap_or(0.0),
        max_height: heights.reduce(f32::max).unwrap_or(0.0),
        mean_fall_speed: result.bodies.iter().map(|b| -b.linvel[1]).sum::<f32>() / count,
    };
    Ok(to_payload(&summary).expect("summaries always serialize"))
}

#[derive(Deserialize, Default)]
struct SeedAiRequest {
    #[serde(default)]
    model: Option<String>,
}

/// Runs a seed `ai` task.
pub fn ai(payload: &str) -> Result<Payload, TaskError> {
    let request: SeedAiRequest = if payload.trim() == "null" { SeedAiRequest::default() } else { parse(payload)? };
    let model = request.model.unwrap_or_else(|| "default".into());
    if model.len() > limits::MAX_ID_BYTES {
        return Err(TaskError::new(ErrorCode::InvalidPayload, "model name too long"));
    }
    let grid = NavGrid {
        cell_size: 1.0,
        origin: [0.0, 0.0],
        rows: [
            "..........", //
            ".######...",
            "......#...",
            "####..#.##",
            "......#.#.",
            ".######.#.",
            "........#.",
        ]
        .map(String::from)
        .to_vec(),
    };
    let navigator = Navigator::new(&grid).expect("the built-in grid is valid");
    let agent = |id, from: [f32; 2], to: [f32; 2]| AgentQuery {
        id,
        position: [from[0], 0.0, from[1]],
        goal: [to[0], 0.0, to[1]],
        speed: 2.0,
        radius: 0.3,
    };
    let agents = [
        agent(1, [0.5, 0.5], [0.5, 6.5]),
        agent(2, [9.5, 0.5], [3.5, 6.5]),
        agent(3, [0.5, 6.5], [7.5, 2.5]),
        agent(4, [0.5, 0.5], [9.5, 6.5]),
    ];
    let results = navigator.navigate(&agents);
    let summary = SeedAiResult {
        status: TaskStatus::Success,
        data: "ai_processed".into(),
        model,
        agents: results.len(),
        paths_found: results.iter().filter(|r| r.status == AgentStatus::Moving).count(),
        unreachable: results.iter().filter(|r| r.status == AgentStatus::Unreachable).count(),
        note: "this peer runs no AI models; it ran a built-in A* navigation scene. \
               Send ai_navigate for real NPC paths and steering"
            .into(),
    };
    Ok(to_payload(&summary).expect("summaries always serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_most_objects_run_and_one_more_is_refused_clearly() {
        let most = limits::MAX_BODIES_PER_SESSION - 1;
        let answer = physics(&format!(r#"{{"num_objects":{most}}}"#)).expect("the documented maximum runs");
        assert!(answer.json().unwrap().contains(&format!(r#""num_objects":{most}"#)));
        let error = physics(&format!(r#"{{"num_objects":{}}}"#, most + 1)).unwrap_err();
        assert_eq!(error.code, ErrorCode::LimitExceeded);
        assert!(error.message.contains(&format!("at most {most}")), "{}", error.message);
    }
}
