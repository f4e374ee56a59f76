//! Command-line flags.

use bevy_p2c2r::client::Credential;
use bevy_p2c2r::embedded::PeerAccess;
use clap::Parser;

/// P2C2R demo: a 3D arena whose physics and NPC AI run on peers.
///
/// With no flags it starts a coordinator and one peer inside this process and opens a
/// window. Point it at a running deployment with --coordinator.
#[derive(Clone, Debug, Parser)]
#[command(name = "demo_game", version, about, long_about)]
pub struct Args {
    /// Join this coordinator (ws://HOST:PORT, or wss://HOST:PORT for TLS) instead of
    /// starting one in-process.
    #[arg(long, value_name = "URL", env = "P2C2R_COORDINATOR")]
    pub coordinator: Option<String>,

    /// Bearer token the game (the plugin) presents to the coordinator: a gamer credential.
    /// Visible to other local users on the command line: prefer --token-file or the
    /// environment.
    #[arg(long, value_name = "TOKEN", env = "P2C2R_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    pub token: Option<String>,

    /// Bearer token the in-process peers (--peers) present: a peer credential, bound to
    /// --peer-id.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "P2C2R_PEER_TOKEN",
        hide_env_values = true,
        conflicts_with = "peer_token_file"
    )]
    pub peer_token: Option<String>,

    /// File holding the in-process peers' bearer token.
    #[arg(long, value_name = "PATH", env = "P2C2R_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<std::path::PathBuf>,

    /// The id the in-process peer registers with (its credential's id); at most one peer.
    #[arg(long, value_name = "ID")]
    pub peer_id: Option<String>,

    /// File holding the bearer token (surrounding whitespace ignored), read again on every
    /// reconnection.
    #[arg(long, value_name = "PATH", env = "P2C2R_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// For a wss:// coordinator: trust the certificates in this PEM file instead of the
    /// public web PKI roots.
    #[arg(long, value_name = "PATH", env = "P2C2R_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Peers to start in-process at launch (with --coordinator they join that deployment).
    /// Default: 1 without --coordinator, 0 with it.
    #[arg(long, value_name = "N")]
    pub peers: Option<u32>,

    /// Peers the in-process coordinator runs each physics session on (1–5; start at least
    /// as many with --peers). Ignored with --coordinator: the deployment decides.
    #[arg(long, value_name = "R", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// Level file: a path, or a path relative to the assets folder.
    #[arg(long, value_name = "PATH", default_value = crate::level::DEFAULT_LEVEL)]
    pub level: String,

    /// Run the game systems without a window; needs --frames. Prints one JSON line at exit.
    #[arg(long, requires = "frames")]
    pub headless: bool,

    /// Exit after this many frames (with --headless, or with --screenshot).
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,

    /// Save a screenshot (PNG) of the window after --frames frames, then exit.
    #[arg(long, value_name = "PATH", requires = "frames", conflicts_with = "headless")]
    pub screenshot: Option<std::path::PathBuf>,

    /// Fire a ball at the towers every half second on its own (always on with --headless).
    #[arg(long)]
    pub autofire: bool,
    /// The player walks the course on its own: pushes the crates, jumps up the platforms,
    /// fires at NPCs in its sights (always on with --headless).
    #[arg(long)]
    pub autoplay: bool,

    /// Fixed physics / AI tick rate in Hz.
    #[arg(long, value_name = "HZ", default_value_t = 60.0)]
    pub tick_hz: f64,

    /// Milliseconds the oldest unanswered tick may wait before the local fallback steps
    /// the world (default: the plugin's, 100).
    #[arg(long, value_name = "MS")]
    pub fallback_timeout_ms: Option<u64>,

    /// Gamer id this client registers with (default: a random one).
    #[arg(long, value_name = "ID")]
    pub gamer_id: Option<String>,

    /// Window width and height in pixels.
    #[arg(long, value_name = "WxH", default_value = "1280x720", value_parser = parse_size)]
    pub window_size: (u32, u32),
}

impl Args {
    /// How many peers to start in-process at launch.
    pub fn initial_peers(&self) -> u32 {
        self.peers.unwrap_or(if self.coordinator.is_some() { 0 } else { 1 })
    }

    /// The credential of `--peer-token` or `--peer-token-file`, if any.
    pub fn peer_credential(&self) -> Option<Credential> {
        match (&self.peer_token, &self.peer_token_file) {
            (Some(token), _) => Some(Credential::Token(token.clone())),
            (None, Some(path)) => Some(Credential::File(path.clone())),
            (None, None) => None,
        }
    }

    /// The credential of `--token` or `--token-file`, if any.
    pub fn credential(&self) -> Option<Credential> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Some(Credential::Token(token.clone())),
            (None, Some(path)) => Some(Credential::File(path.clone())),
            (None, None) => None,
        }
    }

    /// How the in-process peers reach the coordinator: `--peer-token` /
    /// `--peer-token-file` as `--peer-id`, and `--ca-file`.
    pub fn peer_access(&self) -> PeerAccess {
        PeerAccess { token: self.peer_credential(), ca_file: self.ca_file.clone(), peer_id: self.peer_id.clone() }
    }

    /// Why these flags cannot work together, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let lent = self.initial_peers();
        if self.peer_id.is_some() && lent > 1 {
            return Err(format!("--peer-id names one peer; --peers {lent} would register it {lent} times"));
        }
        Ok(())
    }
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or("expected WIDTHxHEIGHT, e.g. 1280x720")?;
    let w: u32 = w.trim().parse().map_err(|e| format!("width: {e}"))?;
    let h: u32 = h.trim().parse().map_err(|e| format!("height: {e}"))?;
    if w == 0 || h == 0 {
        return Err("width and height must be > 0".into());
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["demo_game"]).unwrap();
        assert_eq!(a.initial_peers(), 1);
        assert!(!a.headless);
        let a = Args::try_parse_from(["demo_game", "--coordinator", "ws://h:1"]).unwrap();
        assert_eq!(a.initial_peers(), 0);
        let a = Args::try_parse_from(["demo_game", "--headless", "--frames", "10", "--peers", "3"]).unwrap();
        assert_eq!((a.frames, a.initial_peers()), (Some(10), 3));
        let a = Args::try_parse_from(["demo_game", "--window-size", "800x600"]).unwrap();
        assert_eq!(a.window_size, (800, 600));
    }

    #[test]
    fn credential_flags() {
        let a = Args::try_parse_from(["demo_game", "--token", "t0k", "--ca-file", "ca.pem"]).unwrap();
        assert_eq!(a.credential(), Some(Credential::Token("t0k".into())));
        assert_eq!(a.peer_access().ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        let a = Args::try_parse_from(["demo_game", "--token-file", "/run/token"]).unwrap();
        assert_eq!(a.credential(), Some(Credential::File("/run/token".into())));
        assert!(Args::try_parse_from(["demo_game", "--token", "a", "--token-file", "b"]).is_err());
    }

    #[test]
    fn headless_and_screenshot_need_frames() {
        assert!(Args::try_parse_from(["demo_game", "--headless"]).is_err());
        assert!(Args::try_parse_from(["demo_game", "--screenshot", "a.png"]).is_err());
        assert!(Args::try_parse_from(["demo_game", "--headless", "--frames", "1", "--screenshot", "a.png"]).is_err());
    }

    #[test]
    fn every_flag_is_documented() {
        let cmd = Args::command();
        for arg in cmd.get_arguments() {
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
        }
    }
}
