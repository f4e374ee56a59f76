//! The binary's command line: `--help` documents every setting, and `P2C2R_LISTEN` works.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn help_lists_every_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "P2C2R_LISTEN",
        "--heartbeat-interval-ms",
        "--heartbeat-timeout-ms",
        "--task-deadline-ms",
        "--max-attempts",
        "--max-frame-bytes",
        "--handshake-timeout-ms",
        "--register-timeout-ms",
        "--send-queue-frames",
        "--max-connections",
        "--max-pending-per-gamer",
        "--max-sessions-per-gamer",
        "--max-queue-wait-ms",
        "--shutdown-grace-ms",
        "--send-queue-bytes",
        "--write-stall-timeout-ms",
        "--message-assembly-timeout-ms",
        "--max-connections-per-address",
        "--max-unregistered-connections",
        "--reserved-peer-slots",
        "--max-pending-bytes-per-gamer",
        "--max-pending-bytes",
        "--max-peer-capacity",
        "--initial-peer-capacity",
        "--max-session-pipeline",
        "--summary-interval-ms",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn listen_address_comes_from_the_environment() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .env("P2C2R_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let found = loop {
        line.clear();
        if log.read_line(&mut line).unwrap() == 0 {
            break false;
        }
        if line.contains("coordinator listening") {
            break line.contains("addr=127.0.0.1:");
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "{line}");
}

#[test]
fn unusable_listen_address_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator")).args(["--listen", "not-an-address"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}
