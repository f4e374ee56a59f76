//! The binary's command line: `--help` documents every setting (the list is read from
//! `Config` itself), and `P2C2R_LISTEN` works.

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
        "--auth-file",
        "P2C2R_AUTH_FILE",
        "--insecure",
        "--tls-cert",
        "--tls-key",
        "--resume-grace-ms",
        "--max-tasks-per-second",
        "--max-task-bytes-per-second",
        "--max-new-sessions-per-second",
        "--max-connection-attempts-per-second",
        "--quarantine-after-misses",
        "--quarantine-duration-ms",
        "--mint-token",
        "--mint-ttl-ms",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

/// `Config` fields whose flags are not spelled like the field.
const RENAMED: &[(&str, &[&str])] = &[
    ("scheduling.default_task_deadline", &["--task-deadline-ms"]),
    ("identity.tls", &["--tls-cert", "--tls-key"]),
    ("replication.accepted_setups", &["--accepted-setup"]),
    ("federation.nats_urls", &["--nats-url"]),
];

/// `Config` fields deliberately without a flag, each with why. None today: every setting
/// can be given on the command line.
const EXEMPT: &[(&str, &str)] = &[];

/// Derived from `Config` (its `Debug` names every field), not from a list written here:
/// a field added without a flag fails this, as does a flag whose default is not
/// `Config::default()`'s or a duration not in milliseconds.
#[test]
fn every_config_field_has_a_flag_with_its_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let config = format!("{:#?}", coordinator::Config::default());
    let problems = p2c2r_testkit::settings::problems(&config, &help, RENAMED, EXEMPT);
    assert!(problems.is_empty(), "{}\n\n{help}", problems.join("\n"));
}

#[test]
fn a_minted_token_lives_whole_seconds_only() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--auth-file", "/nonexistent", "--mint-token", "gamer:a", "--mint-ttl-ms", "999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mint-ttl-ms"));
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

#[test]
fn the_default_listen_address_is_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("[default: 127.0.0.1:8765]"));
}

#[test]
fn open_mode_off_loopback_needs_insecure() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator")).args(["--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without credentials") && stderr.contains("--insecure"), "{stderr}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--listen", "0.0.0.0:0", "--insecure"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut warned = 0;
    let mut line = String::new();
    while log.read_line(&mut line).unwrap() > 0 {
        warned += usize::from(line.contains("WARN") && line.contains("INSECURE"));
        if warned == 3 {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(warned, 3, "loudly logged");
}

#[test]
fn a_minted_token_is_a_jwt_the_coordinator_accepts() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-mint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let auth = dir.join("auth");
    std::fs::write(&auth, "jwt-hs256 cli-test-key-0123456789abcdef0123456789\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("--auth-file")
        .arg(&auth)
        .args(["--mint-token", "gamer:alice", "--mint-ttl-ms", "60000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let creds = coordinator::auth::Credentials::parse(&std::fs::read_to_string(&auth).unwrap()).unwrap();
    let credential = creds.verify(token.trim(), coordinator::auth::unix_now()).unwrap();
    assert_eq!(credential.identity.id, "alice");
    assert_eq!(credential.identity.role, coordinator::auth::Role::Gamer);
    let bad = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("--auth-file")
        .arg(&auth)
        .args(["--mint-token", "wizard:alice"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown role"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary checks its configuration with the library's own `Config::validate`: a value
/// out of range is a clear error naming the setting, not a silent clamp.
#[test]
fn settings_out_of_range_are_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--listen", "127.0.0.1:0", "--max-attempts", "0", "--heartbeat-interval-ms", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_attempts must be at least 1"), "{stderr}");
    assert!(stderr.contains("heartbeat_interval (ms) must be at least 1"), "{stderr}");
    // The library refuses the same configuration before it listens.
    let config = coordinator::Config {
        scheduling: coordinator::Scheduling { max_attempts: 0, ..Default::default() },
        ..coordinator::Config::default()
    };
    let refused = coordinator::prepare(config).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    assert!(refused.to_string().contains("max_attempts must be at least 1"), "{refused}");
}
