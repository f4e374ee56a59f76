//! Shared pieces for P2C2R's tests and benchmarks.
//!
//! - [`client`]: a raw protocol client, registered as a peer or a gamer, every wait
//!   bounded.
//! - [`gamer`]: an honest gamer, the real `p2c2r_client::GamerClient` with bounded
//!   waits, for tests whose gamer only sends well-formed requests and reads results.
//! - [`server`]: a scripted coordinator (loopback listener, handshake, registration
//!   acks, scripted replies) for testing the peer and the plugin.
//! - [`wait`]: [`wait::within`] and [`wait::eventually`], bounded waits on events.
//! - [`proxy`]: an in-process, latency-injecting TCP proxy (like Linux `netem`) to put
//!   between a client and a server: one-way latency, jitter, bandwidth, stalls and
//!   severed connections, without root or `tc`.
//! - [`gate`]: a WebSocket server side that checks each upgrade's bearer token.
//! - [`nats`]: a real NATS cluster with JetStream on loopback (nats-server processes),
//!   for the federation of coordinators.
//! - [`tls`]: a self-signed certificate for the loopback names, in a temp dir.
//! - [`settings`]: checks that a binary's `--help` has a flag for every field of its
//!   settings struct, with the struct's default, durations in milliseconds.

pub mod client;
pub mod gamer;
pub mod gate;
pub mod nats;
pub mod proxy;
pub mod server;
pub mod settings;
pub mod tls;
pub mod wait;
