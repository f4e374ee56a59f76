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
pub mod navigation;
pub mod physics;

pub use budget::Budgets;
