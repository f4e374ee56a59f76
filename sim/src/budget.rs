//! Per-task work budgets: how much work one task may ask of a peer, checked before the
//! work runs.
//!
//! The protocol's limits ([`p2c2r_protocol::limits`]) bound each list in a request, but
//! not the work their combination costs: one `physics_step` snapshot of 1,000 spheres
//! piled at the same point (80 KB of JSON, every value within the limits) makes rapier
//! build half a million contact pairs, about 2.5 GB and 7 s for one step. The budgets
//! below bound that work; a request over budget is answered with `limit_exceeded` before
//! anything runs (the world is left untouched), so the peer keeps serving everyone else.

use serde::{Deserialize, Serialize};

/// Default [`Budgets::max_body_steps`]: a 10,000-body snapshot may take up to 40 steps.
pub const DEFAULT_MAX_BODY_STEPS: u64 = 400_000;
/// Default [`Budgets::max_contact_pairs`].
pub const DEFAULT_MAX_CONTACT_PAIRS: u64 = 120_000;
/// Default [`Budgets::max_path_expansions`].
pub const DEFAULT_MAX_PATH_EXPANSIONS: usize = crate::navigation::DEFAULT_MAX_EXPANSIONS;
/// Default [`Budgets::max_waypoints`]: about 8 MB of JSON at most.
pub const DEFAULT_MAX_WAYPOINTS: usize = 200_000;

/// How much work one task may ask for. [`Default`] gives the documented defaults;
/// [`Budgets::unlimited`] turns every check off (for tools and benchmarks; peers and the
/// Bevy plugin's local fallback both run with the defaults, so a request a peer would
/// refuse is refused locally too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    /// Most bodies × steps one `physics_step` may simulate (the bodies and joints the
    /// world holds after the request's changes, times `max(steps, 1)`). Default
    /// [`DEFAULT_MAX_BODY_STEPS`].
    pub max_body_steps: u64,
    /// Most pairs of overlapping bodies (bounding boxes that overlap, at least one body
    /// dynamic) a physics world may hold: checked on the request's world before stepping
    /// (an estimate from the bodies' bounding boxes, a compound's parts each) and on
    /// rapier's own contact manifolds after each step (a world that grew past it is
    /// dropped, with resync). Default
    /// [`DEFAULT_MAX_CONTACT_PAIRS`].
    pub max_contact_pairs: u64,
    /// Most A* node expansions for one `ai_navigate` request, all agents together.
    /// Default [`DEFAULT_MAX_PATH_EXPANSIONS`].
    pub max_path_expansions: usize,
    /// Most waypoints one `ai_navigate` answer may hold, all agents together (a long
    /// winding path shared by thousands of agents would otherwise be copied into each of
    /// their answers). Default [`DEFAULT_MAX_WAYPOINTS`].
    pub max_waypoints: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            max_body_steps: DEFAULT_MAX_BODY_STEPS,
            max_contact_pairs: DEFAULT_MAX_CONTACT_PAIRS,
            max_path_expansions: DEFAULT_MAX_PATH_EXPANSIONS,
            max_waypoints: DEFAULT_MAX_WAYPOINTS,
        }
    }
}

impl Budgets {
    /// No budget at all: every check is skipped.
    pub fn unlimited() -> Self {
        Budgets {
            max_body_steps: u64::MAX,
            max_contact_pairs: u64::MAX,
            max_path_expansions: usize::MAX,
            max_waypoints: usize::MAX,
        }
    }
}
