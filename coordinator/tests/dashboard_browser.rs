//! The dashboard in a real browser: headless Chromium opens it while a peer and a gamer
//! run tasks, and the page's DOM must list the peer and show the task counter rising.
//! Chromium is driven over its DevTools protocol (a WebSocket, spoken here with
//! tokio-tungstenite), and the test saves a screenshot:
//! `$CARGO_TARGET_TMPDIR/dashboard.png`, or the path in `P2C2R_DASHBOARD_SCREENSHOT`.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it); the browser is looked up as
//! `$CHROMIUM`, then `chromium`, `chromium-browser`, `google-chrome` on the `PATH`.
//! Without one the test fails, saying so, unless `P2C2R_SKIP_BROWSER_TESTS=1` is set.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::{Client, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Chromium's flags for a closed network and a root user (the CI machine's).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
];

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A Chromium process, killed when dropped.
struct Browser {
    _child: Child,
    _profile: TempDir,
    devtools_url: String,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    async fn launch(binary: &PathBuf) -> Browser {
        let profile =
            TempDir(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{}", std::process::id())));
        std::fs::create_dir_all(&profile.0).unwrap();
        let mut child = Command::new(binary)
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Chromium prints where its DevTools endpoint listens.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let devtools_url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.split_once("DevTools listening on ").map(|(_, url)| url.trim().to_owned()) {
                    return url;
                }
            }
            panic!("chromium exited without a DevTools endpoint");
        })
        .await
        .expect("chromium started in time");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Browser { _child: child, _profile: profile, devtools_url }
    }
}

/// A DevTools protocol connection with one page attached.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    session: Option<String>,
}

impl Page {
    async fn open(browser: &Browser, url: &str) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(&browser.devtools_url).await.expect("devtools connect");
        let mut page = Page { ws, next_id: 0, session: None };
        let target = page.call("Target.createTarget", json!({ "url": url })).await;
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = page.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await;
        page.session = Some(attached["sessionId"].as_str().expect("a session id").to_owned());
        page
    }

    /// Sends a command and waits for its answer (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.ws.send(WsMessage::text(command.to_string())).await.expect("devtools send");
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("devtools answered in time")
                .expect("devtools connection open")
                .expect("devtools frame");
            let WsMessage::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(text.as_str()).unwrap();
            if answer["id"] == json!(id) {
                assert!(answer.get("error").is_none(), "{method} failed: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true })).await;
        result["result"]["value"].clone()
    }
}

/// What the test reads from the page's DOM.
const PAGE_STATE: &str = r#"JSON.stringify({
    peer: document.querySelector('#peers tr[data-peer-id="browser-peer"]')?.textContent ?? null,
    gamer: !!document.querySelector('#gamers tr[data-gamer-id="browser-gamer"]'),
    completed: Number(document.getElementById('tasks-completed')?.dataset.value ?? -1),
    state: document.body.dataset.state ?? null,
})"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_live_in_chromium() {
    let Some(chromium) = find_chromium() else {
        if std::env::var_os("P2C2R_SKIP_BROWSER_TESTS").is_some() {
            eprintln!("skipped: no chromium and P2C2R_SKIP_BROWSER_TESTS is set");
            return;
        }
        panic!(
            "this test needs Chromium: `apt-get install chromium` (or set CHROMIUM=/path/to/browser; \
             P2C2R_SKIP_BROWSER_TESTS=1 skips it)"
        );
    };
    let coord = coordinator::spawn("127.0.0.1:0", coordinator::Config::default()).await.unwrap();

    // A peer that answers everything, and a gamer that keeps tasks flowing.
    let mut peer = Client::peer(&coord.url(), "browser-peer", 8).await;
    let peer_task = tokio::spawn(async move {
        loop {
            let a = peer.recv_assignment().await;
            peer.answer(&a, r#"{"ok":true}"#).await;
        }
    });
    let mut gamer = Client::gamer(&coord.url(), "browser-gamer").await;
    let gamer_task = tokio::spawn(async move {
        for i in 0u64.. {
            gamer.submit(&format!("t{i}"), "physics_step", r#"{"tick":1}"#, Some("arena")).await;
            gamer.recv_result().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    let browser = Browser::launch(&chromium).await;
    let mut page = Page::open(&browser, &coord.http_url()).await;

    // The peer is listed and tasks are counted...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        let state: Value = serde_json::from_str(page.eval(PAGE_STATE).await.as_str().unwrap_or("{}")).unwrap();
        if state["peer"].is_string() && state["gamer"] == json!(true) && state["completed"].as_f64() > Some(0.0) {
            assert_eq!(state["state"], "live", "{state}");
            assert!(state["peer"].as_str().unwrap().contains("browser-peer"), "{state}");
            break state["completed"].as_f64().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "the page never showed the fleet: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // ...and the counter rises while they flow, without a reload.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state: Value = serde_json::from_str(page.eval(PAGE_STATE).await.as_str().unwrap_or("{}")).unwrap();
        if state["completed"].as_f64().unwrap_or(0.0) > first {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the task counter did not rise past {first}: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let navigations = page.eval("performance.getEntriesByType('navigation').length").await;
    assert_eq!(navigations, json!(1), "updated live, not by reloading");

    // Let the charts draw a few seconds of history, then keep a screenshot to look at.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" })).await;
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::env::var_os("P2C2R_DASHBOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());

    peer_task.abort();
    gamer_task.abort();
    drop(page);
    drop(browser);
    coord.shutdown().await;
}
