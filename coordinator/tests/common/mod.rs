//! What the coordinator's end-to-end tests share: the testkit's raw protocol client, its
//! honest gamer (the real gamer client) and bounded waits, and a JSON parser.

#![allow(dead_code, unused_imports)]

pub use p2c2r_testkit::client::{Client, Ws};
pub use p2c2r_testkit::gamer::{self, request, success_json};
pub use p2c2r_testkit::wait::{WAIT, eventually, within};

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}
