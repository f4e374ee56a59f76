//! What the HUD says, as plain data and a pure function, so it is tested without a window.

use std::fmt::Write;

/// Whether physics and AI currently run on peers or in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Not connected yet / nothing answered yet.
    #[default]
    Connecting,
    /// Ticks are served by peers.
    Offloaded,
    /// No peer answered in time: the plugin steps physics in-process.
    LocalFallback,
    /// A peer is back and is being handed the world (still stepped in-process meanwhile).
    HandingBack,
}

/// Everything the HUD shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HudData {
    /// Offloaded or fallback.
    pub mode: Mode,
    /// Peers registered with the coordinator (when known), else peers in this process.
    pub peers: u32,
    /// Peer serving the physics session, when known.
    pub serving_peer: Option<String>,
    /// Round trip of a tick's tasks, median, ms.
    pub rtt_ms_p50: Option<f64>,
    /// Round trip of a tick's tasks, 99th percentile, ms.
    pub rtt_ms_p99: Option<f64>,
    /// How long an unanswered tick may wait before the local fallback (adapts to the
    /// round trip), ms.
    pub fallback_timeout_ms: f64,
    /// Physics ticks completed per second (peers and fallback).
    pub ticks_per_s: f64,
    /// Dynamic rigid bodies.
    pub bodies: usize,
    /// NPC agents.
    pub agents: usize,
    /// Bytes per second sent to the coordinator.
    pub bytes_sent_per_s: f64,
    /// Bytes per second received from the coordinator.
    pub bytes_recv_per_s: f64,
    /// Bytes sent per offloaded body per offloaded tick.
    pub bytes_sent_per_body_tick: f64,
    /// Bytes received per offloaded body per offloaded tick.
    pub bytes_recv_per_body_tick: f64,
    /// In-process peers.
    pub local_peers: usize,
    /// Coordinator URL.
    pub coordinator: String,
    /// Whether the coordinator runs in this process.
    pub embedded_coordinator: bool,
    /// Last notice (peer added, killed, ...).
    pub notice: Option<String>,
}

/// The key help line.
pub const KEYS: &str = "LMB fire | RMB-drag orbit | wheel zoom | WASD/arrows pan | P add peer | K kill serving peer | F autofire | Esc quit";

/// Formats the HUD.
pub fn hud_text(d: &HudData) -> String {
    let mut s = String::new();
    let mode = match d.mode {
        Mode::Connecting => "connecting...".to_owned(),
        Mode::Offloaded => format!("OFFLOADED to {} peer{}", d.peers, if d.peers == 1 { "" } else { "s" }),
        Mode::LocalFallback => "LOCAL FALLBACK (no peer answering)".to_owned(),
        Mode::HandingBack => "handing back to a peer (local meanwhile)".to_owned(),
    };
    let _ = writeln!(s, "mode: {mode}");
    match (&d.serving_peer, d.mode) {
        (Some(p), Mode::Offloaded) => {
            let _ = writeln!(s, "session on: {p}");
        }
        (_, Mode::LocalFallback | Mode::HandingBack) => {
            let _ = writeln!(s, "session on: this process");
        }
        _ => {}
    }
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    let _ = writeln!(
        s,
        "rtt ms: p50 {} / p99 {}   fallback after {:.0} ms",
        ms(d.rtt_ms_p50),
        ms(d.rtt_ms_p99),
        d.fallback_timeout_ms
    );
    let _ = writeln!(s, "ticks/s: {:.0}", d.ticks_per_s);
    let _ = writeln!(s, "bodies: {}   agents: {}", d.bodies, d.agents);
    let _ = writeln!(
        s,
        "bytes/s: up {}  down {}   per body per tick: up {:.2}  down {:.2}",
        human_bytes(d.bytes_sent_per_s),
        human_bytes(d.bytes_recv_per_s),
        d.bytes_sent_per_body_tick,
        d.bytes_recv_per_body_tick
    );
    let _ = writeln!(
        s,
        "coordinator: {} ({})  in-process peers: {}",
        d.coordinator,
        if d.embedded_coordinator { "in-process" } else { "remote" },
        d.local_peers
    );
    if let Some(n) = &d.notice {
        let _ = writeln!(s, "> {n}");
    }
    s.push_str(KEYS);
    s
}

/// `1234567.0` → `"1.2 MB"`.
pub fn human_bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_every_required_number() {
        let text = hud_text(&HudData {
            mode: Mode::Offloaded,
            peers: 2,
            rtt_ms_p50: Some(0.8),
            rtt_ms_p99: Some(3.25),
            fallback_timeout_ms: 160.0,
            ticks_per_s: 60.0,
            bodies: 344,
            agents: 10,
            bytes_sent_per_s: 1500.0,
            bytes_recv_per_s: 2_500_000.0,
            bytes_sent_per_body_tick: 0.07,
            bytes_recv_per_body_tick: 1.25,
            ..Default::default()
        });
        for needle in [
            "OFFLOADED to 2 peers",
            "p50 0.80",
            "p99 3.25",
            "per body per tick: up 0.07  down 1.25",
            "fallback after 160 ms",
            "ticks/s: 60",
            "bodies: 344",
            "agents: 10",
            "1.5 kB",
            "2.5 MB",
            "K kill",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        let text = hud_text(&HudData { mode: Mode::LocalFallback, ..Default::default() });
        assert!(text.contains("LOCAL FALLBACK"), "{text}");
        assert!(text.contains("p50 - / p99 -"), "{text}");
    }
}
