//! Shared pieces for P2C2R's tests and benchmarks.
//!
//! - [`proxy`]: an in-process, latency-injecting TCP proxy (like Linux `netem`) to put
//!   between a client and a server: one-way latency, jitter, bandwidth, stalls and
//!   severed connections, without root or `tc`.
//! - [`gate`]: a WebSocket server side that checks each upgrade's bearer token.

pub mod gate;
pub mod proxy;
