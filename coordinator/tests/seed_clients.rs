//! The seed documents' four Python clients, byte for byte but for the URL, against the
//! real `coordinator` binary. Needs `python3` with `websockets` and `psutil`
//! (`pip install websockets psutil`); `.ci/run` installs them.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SEED_URL: &str = "ws://localhost:8765";
const WAIT: Duration = Duration::from_secs(60);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies a seed script into `dir`, pointing it at `url` instead of the seed's URL.
fn seed_script(name: &str, dir: &Path, url: &str) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seed_clients").join(name);
    let code = std::fs::read_to_string(&source).unwrap();
    assert_eq!(code.matches(SEED_URL).count(), 1, "{name} names the seed URL once");
    let target = dir.join(name);
    std::fs::write(&target, code.replace(SEED_URL, url)).unwrap();
    target
}

fn python_ready() {
    let ok = Command::new("python3")
        .args(["-c", "import websockets, psutil"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "this test needs python3 with websockets and psutil: pip install websockets psutil");
}

/// Runs a script to completion (bounded) and returns its stdout.
fn run_to_end(script: &Path) -> String {
    let mut child = Command::new("python3").arg(script).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(status.success(), "{script:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            return stdout;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{script:?} did not finish: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn seed_python_clients_complete_their_tasks_through_the_coordinator_binary() {
    python_ready();
    let mut coordinator = Killed(
        Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The log line "coordinator listening addr=127.0.0.1:PORT" says where it is.
    let mut log = BufReader::new(coordinator.0.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "coordinator exited before listening");
        if let Some(rest) = line.split("addr=").nth(1).filter(|_| line.contains("coordinator listening")) {
            break rest.trim().to_owned();
        }
    };
    // Keep draining the log so the coordinator never blocks on a full pipe.
    std::thread::spawn(move || for _ in log.lines() {});
    let url = format!("ws://{addr}");
    let dir = std::env::temp_dir().join(format!("p2c2r-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let spawn_quiet = |script: &Path, args: &[&str]| {
        Killed(
            Command::new("python3").arg(script).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
        )
    };
    // Phase 4: the minimal test peer serves the minimal test gamer.
    let test_peer = spawn_quiet(&seed_script("test_peer.py", &dir, &url), &[]);
    let out = run_to_end(&seed_script("test_gamer.py", &dir, &url));
    assert!(out.contains("Received result: {'status': 'success', 'data': 'processed'}"), "{out}");
    drop(test_peer);

    // Phases 5 and 6: the "real" peer node serves the gamer client.
    let peer_node = spawn_quiet(&seed_script("peer_node.py", &dir, &url), &["peer_1"]);
    let out = run_to_end(&seed_script("gamer_client.py", &dir, &url));
    assert!(out.contains("Result: {'status': 'success', 'data': 'physics_processed'}"), "{out}");
    drop(peer_node);

    // SIGTERM shuts the coordinator down gracefully (exit status 0).
    let pid = coordinator.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = coordinator.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < WAIT, "coordinator ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
