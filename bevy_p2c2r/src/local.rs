//! The local fallback: the same physics and AI the peers run, in-process, through the
//! engine crate `p2c2r_sim`, with the same work budgets as a peer's defaults.

use p2c2r_protocol::TaskError;
#[cfg(test)]
use p2c2r_protocol::ai::AgentStatus;
use p2c2r_protocol::ai::{AgentQuery, AgentResult, NavGrid};
use p2c2r_protocol::physics::{PhysicsStepRequest, PhysicsStepResult};
use p2c2r_sim::Budgets;
use p2c2r_sim::navigation::Navigator;
use p2c2r_sim::physics::PhysicsWorld;
use p2c2r_sim::shape_cache::ShapeCache;

use crate::shape_names::ShapeNames;

/// A local mirror of the session's physics world and a navigator for its grid.
#[derive(Default)]
pub(crate) struct LocalSim {
    world: Option<PhysicsWorld>,
    navigator: Option<Navigator>,
    /// Large shapes built once (the local world is rebuilt at every snapshot).
    shapes: ShapeCache,
}

impl LocalSim {
    /// Steps the local world with exactly the request a peer would get (a named shape
    /// its cache lacks is taken from the game's colliders, `names`).
    pub fn step(&mut self, request: &PhysicsStepRequest, names: &ShapeNames) -> Result<PhysicsStepResult, TaskError> {
        if request.snapshot || self.world.is_none() {
            self.world = Some(PhysicsWorld::new());
        }
        let resolved = names.resolve(request, |hash| self.shapes.contains(hash));
        let request = resolved.as_ref().unwrap_or(request);
        let world = self.world.as_mut().expect("world was just created");
        let result = world.step_cached(request, &Budgets::default(), &mut self.shapes);
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

    /// Forgets the navigator; the next [`LocalSim::navigate`] builds one for its grid.
    /// The plugin calls this whenever the `NavigationGrid` resource changes (it is not
    /// compared on every tick).
    pub fn grid_changed(&mut self) {
        self.navigator = None;
    }

    /// Answers agent queries on `grid`, building the navigator when there is none (at
    /// first, and after [`LocalSim::grid_changed`]).
    pub fn navigate(&mut self, grid: &NavGrid, agents: &[AgentQuery]) -> Result<Vec<AgentResult>, TaskError> {
        if self.navigator.is_none() {
            self.navigator = Some(Navigator::new(grid)?);
        }
        let budgets = Budgets::default();
        self.navigator.as_mut().expect("navigator was just built").navigate_within(
            agents,
            budgets.max_path_expansions,
            budgets.max_waypoints,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> NavGrid {
        NavGrid { cell_size: 1.0, origin: [0.0, 0.0], rows: rows.iter().map(|r| r.to_string()).collect() }
    }

    fn query() -> AgentQuery {
        AgentQuery { id: 1, position: [0.5, 0.0, 0.5], goal: [2.5, 0.0, 0.5], speed: 1.0, radius: 0.3 }
    }

    #[test]
    fn navigator_is_kept_until_the_grid_changes() {
        let mut sim = LocalSim::default();
        let open = grid(&["...", "..."]);
        let walled = grid(&[".#.", ".#."]);
        let reachable = |r: &[AgentResult]| r[0].status == AgentStatus::Moving;
        assert!(reachable(&sim.navigate(&open, &[query()]).unwrap()));
        // Without a change notice the navigator is reused as is (no per-tick comparison).
        assert!(reachable(&sim.navigate(&walled, &[query()]).unwrap()));
        sim.grid_changed();
        assert!(!reachable(&sim.navigate(&walled, &[query()]).unwrap()));
    }
}
