//! `cargo run -p coordinator`: parses flags, sets up logging, runs the coordinator until
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// The P2C2R coordinator: routes physics and AI tasks from gamers to peers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on. Without --auth-file only a loopback address is allowed
    /// (unless --insecure).
    #[arg(long, env = "P2C2R_LISTEN", default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// Every setting of the coordinator, as `coordinator::Config` declares it.
    #[command(flatten)]
    config: coordinator::Config,
    /// TLS certificate chain (PEM): serve wss:// and https:// (needs --tls-key).
    #[arg(long, env = "P2C2R_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "P2C2R_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Print a JWT for ROLE:ID (gamer, peer or operator) signed with the auth file's first
    /// jwt-hs256 key trusted for that role, then exit: what a game backend does with its
    /// own JWT library.
    #[arg(long, value_name = "ROLE:ID", requires = "auth_file")]
    mint_token: Option<String>,
    /// Milliseconds a token from --mint-token is valid.
    #[arg(long, default_value_t = DEFAULT_MINT_TTL.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1000..))]
    mint_ttl_ms: u64,
}

/// How long a token from `--mint-token` is valid unless `--mint-ttl-ms` says otherwise.
const DEFAULT_MINT_TTL: Duration = Duration::from_secs(3600);

impl Args {
    /// The configuration the flags give, checked.
    fn config(&self) -> anyhow::Result<coordinator::Config> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(coordinator::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        };
        let mut config = self.config.clone();
        config.identity.tls = tls;
        config.validate()?;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(who) = &args.mint_token {
        return mint(&args, who);
    }
    let config = args.config()?;
    config.check_exposure(args.listen).map_err(anyhow::Error::msg)?;
    // Everything that can refuse to start is opened before the port is bound.
    let prepared = coordinator::prepare(config)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    prepared.run(listener, shutdown_signal()).await?;
    Ok(())
}

/// `--mint-token ROLE:ID`: prints a signed token.
fn mint(args: &Args, who: &str) -> anyhow::Result<()> {
    use coordinator::auth::{Auth, Role};
    let (role, id) = who.split_once(':').context("--mint-token takes ROLE:ID, e.g. gamer:alice")?;
    let role = match role {
        "gamer" => Role::Gamer,
        "peer" => Role::Peer,
        "operator" => Role::Operator,
        other => anyhow::bail!("unknown role {other:?}: gamer, peer or operator"),
    };
    let path = args.config.identity.auth_file.as_deref().context("--mint-token needs --auth-file")?;
    let auth = Auth::from_file(path).map_err(anyhow::Error::msg)?;
    let token = auth
        .current()
        .mint(role, id, Duration::from_millis(args.mint_ttl_ms), coordinator::auth::unix_now())
        .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
