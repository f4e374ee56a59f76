//! The binary's command line: `--help` documents the metrics endpoint, which is served
//! from `P2C2R_METRICS_LISTEN` too, and a busy metrics address is a clear error; the
//! credential flags are documented and exclusive; every `PeerConfig` field has a flag
//! (the list is read from the struct itself), durations in milliseconds.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{listener, scrape};

#[test]
fn help_lists_the_metrics_endpoint() {
    let out = Command::new(env!("CARGO_BIN_EXE_peer")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--coordinator", "--in-process", "--metrics-listen", "P2C2R_METRICS_LISTEN"] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

/// `PeerConfig` fields whose flags are not spelled like the field.
const RENAMED: &[(&str, &[&str])] = &[
    ("coordinator_url", &["--coordinator"]),
    ("fallback_coordinators", &["--fallback-coordinator"]),
    ("token", &["--token", "--token-file"]),
    ("reconnect_backoff_min", &["--min-reconnect-delay-ms"]),
    ("reconnect_backoff_max", &["--max-reconnect-delay-ms"]),
    ("isolation", &["--in-process", "--worker-memory-mb"]),
    ("session_memory_bytes", &["--session-memory-mb"]),
    ("gamer_session_memory_bytes", &["--gamer-session-memory-mb"]),
    ("shape_cache_bytes", &["--shape-cache-mb"]),
];

/// `PeerConfig` fields deliberately without a flag, each with why.
const EXEMPT: &[(&str, &str)] = &[("dialer", "an in-memory connection exists only inside one process")];

/// Derived from `PeerConfig` (its `Debug` names every field, and those of its `budgets`),
/// not from a list written here: a field added without a flag fails this, as does a flag
/// whose default is not `PeerConfig::default()`'s or a duration not in milliseconds.
#[test]
fn every_config_field_has_a_flag_with_its_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_peer")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let config = format!("{:#?}", peer::PeerConfig::default());
    let problems = p2c2r_testkit::settings::problems(&config, &help, RENAMED, EXEMPT);
    assert!(problems.is_empty(), "{}\n\n{help}", problems.join("\n"));
    // The renamed ones, whose defaults the check above cannot compare by name.
    let defaults = peer::PeerConfig::default();
    let mib = |bytes: u64| (bytes / (1024 * 1024)).to_string();
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    let flags = p2c2r_testkit::settings::flags(&help);
    let default_of = |long: &str| flags.iter().find(|f| f.long == long).and_then(|f| f.default.clone());
    assert_eq!(default_of("--session-memory-mb"), Some(mib(defaults.session_memory_bytes)));
    assert_eq!(default_of("--shape-cache-mb"), Some(mib(defaults.shape_cache_bytes as u64)));
    assert_eq!(default_of("--worker-memory-mb"), Some(mib(peer::DEFAULT_WORKER_MEMORY_BYTES)));
    assert_eq!(default_of("--coordinator"), Some(defaults.coordinator_url));
    assert_eq!(default_of("--min-reconnect-delay-ms"), Some(ms(defaults.reconnect_backoff_min)));
    assert_eq!(default_of("--max-reconnect-delay-ms"), Some(ms(defaults.reconnect_backoff_max)));
    assert_eq!(default_of("--task-types"), Some(defaults.task_types.join(",")));
}

#[test]
fn durations_are_whole_milliseconds_and_the_old_spellings_are_refused() {
    let peer = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_peer"));
        command.env_remove("P2C2R_SESSION_IDLE_TIMEOUT").env_remove("P2C2R_WORKER_DEATH_WINDOW_SECS");
        command
    };
    for args in [
        ["--session-idle-timeout-ms", "0.5"],
        ["--heartbeat-interval-ms", "0"],
        ["--session-idle-timeout", "60"],
        ["--worker-death-window-secs", "60"],
    ] {
        let out = peer().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains(args[0]), "{args:?}");
    }
    let out = peer().env("P2C2R_SESSION_IDLE_TIMEOUT", "60").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("P2C2R_SESSION_IDLE_TIMEOUT_MS"));
}

#[test]
fn credential_flags_are_documented_and_token_excludes_token_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_peer")).arg("--help").env("P2C2R_TOKEN", "s3cr3t").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--token", "P2C2R_TOKEN", "--token-file", "P2C2R_TOKEN_FILE", "--ca-file", "P2C2R_CA_FILE"] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    assert!(!help.contains("s3cr3t"), "--help shows the token from the environment:\n{help}");
    let both = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["--token", "a", "--token-file", "/nonexistent", "--in-process"])
        .env_remove("P2C2R_TOKEN")
        .env_remove("P2C2R_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!both.status.success());
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(stderr.contains("--token-file") && stderr.contains("cannot be used with"), "{stderr}");
}

#[tokio::test]
async fn metrics_are_served_on_the_address_from_the_environment() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["--in-process", "--coordinator", "ws://127.0.0.1:1", "--log", "info"])
        .env("P2C2R_METRICS_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = child.stderr.take().unwrap();
    // The log names the port it chose. It is read to its end: the peer must not write
    // to a closed pipe.
    let (found, addr) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if line.contains("metrics listening")
                && let Some(found) = found.take()
            {
                let addr = line.split("addr=").nth(1).and_then(|a| a.split_whitespace().next());
                let _ = found.send(addr.and_then(|a| a.parse::<std::net::SocketAddr>().ok()));
            }
        }
    });
    let addr = common::within("the metrics address in the log", addr).await.ok().flatten();
    let scraped = match addr {
        Some(addr) => Some(scrape(addr).await),
        None => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    let samples = scraped.expect("the peer logged where it serves metrics");
    assert_eq!(samples.get("p2c2r_peer_connected"), Some(&0.0), "{samples:?}");
}

#[tokio::test]
async fn a_busy_metrics_address_is_a_clear_error() {
    let taken = listener().await;
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["--in-process", "--coordinator", "ws://127.0.0.1:1", "--metrics-listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--metrics-listen") && stderr.contains(&addr), "{stderr}");
    let bad = Command::new(env!("CARGO_BIN_EXE_peer")).args(["--metrics-listen", "not-an-address"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--metrics-listen"));
}

/// The binary checks its configuration with the library's own `PeerConfig::validate`: a
/// value out of range is a clear error naming the setting, not a silent clamp.
#[test]
fn settings_out_of_range_are_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["--in-process", "--max-sessions", "0", "--max-concurrent-tasks", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_sessions must be at least 1"), "{stderr}");
    assert!(stderr.contains("max_concurrent_tasks must be at least 1"), "{stderr}");
    let config =
        peer::PeerConfig { reconnect_backoff_min: std::time::Duration::from_secs(9), ..peer::PeerConfig::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let Err(refused) = runtime.block_on(peer::try_spawn(config)) else { panic!("an invalid configuration started") };
    assert!(refused.to_string().contains("reconnect_backoff_min must not exceed"), "{refused}");
}
