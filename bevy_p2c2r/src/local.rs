//! The local fallback: the same physics and AI the peers run, in-process, through the
//! `peer` library.

use p2c2r_protocol::TaskError;
use p2c2r_protocol::ai::{AgentQuery, AgentResult, NavGrid};
use p2c2r_protocol::physics::{PhysicsStepRequest, PhysicsStepResult};
use peer::ai::Navigator;
use peer::physics::PhysicsWorld;

/// A local mirror of the session's physics world and a navigator for its grid.
#[derive(Default)]
pub(crate) struct LocalSim {
    world: Option<PhysicsWorld>,
    navigator: Option<Navigator>,
    grid: Option<NavGrid>,
}

impl LocalSim {
    /// Steps the local world with exactly the request a peer would get.
    pub fn step(&mut self, request: &PhysicsStepRequest) -> Result<PhysicsStepResult, TaskError> {
        if request.snapshot || self.world.is_none() {
            self.world = Some(PhysicsWorld::new());
        }
        let world = self.world.as_mut().expect("world was just created");
        let result = world.step(request);
        if result.is_err() {
            // Whatever state it is in now, it is no longer a mirror.
            self.world = None;
        }
        result
    }

    /// Forgets the local world (it is stale once peers step the session).
    pub fn drop_world(&mut self) {
        self.world = None;
    }

    /// Answers agent queries on `grid`, rebuilding the navigator when the grid changed.
    pub fn navigate(&mut self, grid: &NavGrid, agents: &[AgentQuery]) -> Result<Vec<AgentResult>, TaskError> {
        if self.grid.as_ref() != Some(grid) || self.navigator.is_none() {
            self.navigator = Some(Navigator::new(grid)?);
            self.grid = Some(grid.clone());
        }
        Ok(self.navigator.as_mut().expect("navigator was just built").navigate(agents))
    }
}
