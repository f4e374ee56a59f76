//! Shared pieces for P2C2R's tests and benchmarks.
//!
//! - [`proxy`]: an in-process, latency-injecting TCP proxy (like Linux `netem`) to put
//!   between a client and a server: one-way latency, jitter, bandwidth, stalls and
//!   severed connections, without root or `tc`.
//! - [`gate`]: a WebSocket server side that checks each upgrade's bearer token.
//! - [`settings`]: checks that a binary's `--help` has a flag for every field of its
//!   settings struct, with the struct's default, durations in milliseconds.

pub mod gate;
pub mod proxy;
pub mod settings;
