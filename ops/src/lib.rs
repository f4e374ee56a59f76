//! The operator endpoints of P2C2R's binaries: what a monitoring system scrapes and a
//! browser opens. [`http`] reads a request head within byte and time limits and writes a
//! response; [`scrape`] encodes a Prometheus registry and serves it on a port of its own
//! (the peer's `--metrics-listen`). The coordinator serves the same on its WebSocket
//! port, routing plain HTTP requests away from the upgrade. [`flags`] is how their
//! command lines spell durations and optional limits.

pub mod flags;
pub mod http;
pub mod scrape;
