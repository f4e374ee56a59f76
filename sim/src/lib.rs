//! P2C2R's simulation engine: what a peer runs for a gamer, and what the Bevy plugin runs
//! in-process when no peer answers. Both use this crate, with the same limits, so the
//! local fallback and a peer compute the same worlds.
//!
//! - [`physics::PhysicsWorld`]: one session's rapier3d world driven by `physics_step`
//!   requests (validate, apply, step, extract);
//! - [`navigation::Navigator`]: a session's navigation grid, A* paths and steering for
//!   `ai_navigate` requests;
//! - [`budget::Budgets`]: how much work one request may ask for, checked before the work
//!   runs.
//!
//! Everything is synchronous and deterministic (rapier3d's `enhanced-determinism`): no
//! tokio, no sockets, no Bevy. What a request may contain (largest coordinate, speed,
//! counts) is part of the wire contract and lives in [`p2c2r_protocol::limits`].

//! ```
//! use p2c2r_protocol::physics::{BodyDesc, BodyType, PhysicsStepRequest, Shape};
//! use p2c2r_sim::{Budgets, physics::PhysicsWorld};
//!
//! let ground = BodyDesc::new(0, Shape::Box { half_extents: [10.0, 0.5, 10.0] }, [0.0, -0.5, 0.0])
//!     .with_body_type(BodyType::Fixed);
//! let crate_ = BodyDesc::new(1, Shape::Box { half_extents: [0.5; 3] }, [0.0, 3.0, 0.0]);
//! let mut world = PhysicsWorld::new();
//! let budgets = Budgets::default();
//! let mut request = PhysicsStepRequest { tick: 0, snapshot: true, dt: 1.0 / 60.0, steps: 1, add: vec![ground, crate_], ..Default::default() };
//! world.step_limited(&request, &budgets).unwrap();
//! for tick in 1..180 {
//!     request = PhysicsStepRequest { tick, dt: 1.0 / 60.0, steps: 1, ..Default::default() };
//!     world.step_limited(&request, &budgets).unwrap();
//! }
//! ```

pub mod budget;
pub mod character;
mod checks;
mod events;
pub mod navigation;
pub mod physics;
pub mod queries;
pub mod shape_cache;
pub mod shapes;

pub use budget::Budgets;

use p2c2r_protocol::Determinism;

/// The physics engine's exact version (checked against `Cargo.lock` by a test, so that a
/// bump cannot leave it behind).
pub const ENGINE: &str = "rapier3d 0.36.1";

/// This build's determinism setup, as peers declare it in their capabilities: worlds
/// computed with equal setups are bit-identical (and so are their digests).
pub fn determinism() -> Determinism {
    Determinism {
        engine: ENGINE.to_owned(),
        features: vec!["enhanced-determinism".to_owned()],
        sim: concat!("p2c2r_sim ", env!("CARGO_PKG_VERSION")).to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_declared_engine_is_the_one_built() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let version = lock
            .split("[[package]]")
            .find_map(|p| {
                p.contains("name = \"rapier3d\"\n").then(|| p.split("version = \"").nth(1)?.split('"').next())
            })
            .flatten()
            .expect("rapier3d in Cargo.lock");
        assert_eq!(super::ENGINE, format!("rapier3d {version}"), "update ENGINE after a rapier bump");
        assert!(super::determinism().is_within_limits());
    }
}
