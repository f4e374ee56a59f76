//! The binary's command line: `--help` documents the metrics endpoint, which is served
//! from `P2C2R_METRICS_LISTEN` too, and a busy metrics address is a clear error; the
//! credential flags are documented and exclusive.

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
