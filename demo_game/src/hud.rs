//! What the HUD says, as plain data and a pure function, so it is tested without a window.

use std::fmt::Write;

use crate::offload::{EventStats, NetworkStats, PlayoutStats, ReplicationStats};

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
    /// The link, as the plugin measures it (bytes, rates, round trip and its jitter, the
    /// fallback timeout).
    pub network: NetworkStats,
    /// The playout buffer, as the plugin keeps it.
    pub playout: PlayoutStats,
    /// How the coordinator replicates the physics session.
    pub replication: ReplicationStats,
    /// Collision and contact-force events, as the plugin delivered them.
    pub events: EventStats,
    /// What the player did.
    pub player: crate::player::PlayerCounters,
    /// Physics ticks completed per second (peers and fallback).
    pub ticks_per_s: f64,
    /// Dynamic rigid bodies.
    pub bodies: usize,
    /// NPC agents.
    pub agents: usize,
    /// Joints.
    pub joints: usize,
    /// Bodies that entered the playground's trigger zone.
    pub zone_entries: u64,
    /// In-process peers.
    pub local_peers: usize,
    /// Coordinator URL.
    pub coordinator: String,
    /// Whether the coordinator runs in this process.
    pub embedded_coordinator: bool,
    /// Last notice (peer added, killed, ...).
    pub notice: Option<String>,
}

/// `replicas 2/2, strict, disagreements 0, corrections 0`, `replicas 2/1, audited, ...`,
/// or `not replicated` (with the counts when some were recorded earlier).
pub fn replication_line(r: &ReplicationStats) -> String {
    let counts = format!("disagreements {}, corrections {}", r.disagreements, r.corrections);
    if r.wanted <= 1 && !r.audited {
        return if r.disagreements == 0 && r.corrections == 0 {
            "not replicated".to_owned()
        } else {
            format!("not replicated, {counts}")
        };
    }
    let mut s = format!("replicas {}/{}", r.live, r.wanted);
    if r.audited {
        s.push_str(", audited");
    }
    if r.strict {
        s.push_str(", strict");
    }
    format!("{s}, {counts}")
}

/// The key help line.
pub const KEYS: &str = "WASD/arrows walk | Space jump | LMB fire | RMB-drag orbit | wheel zoom | P add peer | K kill serving peer | F autofire | Esc quit";

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
        d.network.fallback_timeout_ms
    );
    let _ = writeln!(
        s,
        "round trip: {} ms +/- {:.1}   playout buffer: {} tick{}",
        d.network.round_trip_ms.map_or("-".to_owned(), |v| format!("{v:.1}")),
        d.network.round_trip_variation_ms,
        d.playout.target_ticks,
        if d.playout.target_ticks == 1 { "" } else { "s" }
    );
    let _ = writeln!(s, "session: {}", replication_line(&d.replication));
    let _ = writeln!(s, "ticks/s: {:.0}", d.ticks_per_s);
    let _ = writeln!(s, "bodies: {}   agents: {}   joints: {}", d.bodies, d.agents, d.joints);
    let _ = writeln!(
        s,
        "events/s: {:.0}   touching pairs: {}   trigger zone entries: {}",
        d.events.per_sec, d.events.touching_pairs, d.zone_entries
    );
    let p = &d.player;
    let _ = writeln!(
        s,
        "player: crates moved {:.1} m   door opened {:.0} deg   NPCs chasing {}   corrections {}",
        p.crates_moved_m, p.door_opened_deg, p.npcs_chasing, p.corrections
    );
    let _ = writeln!(
        s,
        "bytes/s: up {}  down {}   per body per tick: up {:.2}  down {:.2}",
        human_bytes(d.network.bytes_sent_per_sec),
        human_bytes(d.network.bytes_received_per_sec),
        d.network.bytes_sent_per_body_tick,
        d.network.bytes_received_per_body_tick
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
            ticks_per_s: 60.0,
            bodies: 344,
            agents: 10,
            joints: 12,
            events: EventStats { per_sec: 41.0, touching_pairs: 3, ..Default::default() },
            zone_entries: 7,
            network: NetworkStats {
                bytes_sent_per_sec: 1500.0,
                bytes_received_per_sec: 2_500_000.0,
                bytes_sent_per_body_tick: 0.07,
                bytes_received_per_body_tick: 1.25,
                round_trip_ms: Some(62.04),
                round_trip_variation_ms: 4.8,
                fallback_timeout_ms: 160.0,
                ..Default::default()
            },
            playout: PlayoutStats { target_ticks: 2, ..Default::default() },
            replication: ReplicationStats { wanted: 2, live: 2, strict: true, ..Default::default() },
            player: crate::player::PlayerCounters {
                crates_moved_m: 2.54,
                door_opened_deg: 63.2,
                npcs_chasing: 2,
                corrections: 5,
                ..Default::default()
            },
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
            "joints: 12",
            "events/s: 41",
            "touching pairs: 3",
            "trigger zone entries: 7",
            "1.5 kB",
            "2.5 MB",
            "K kill",
            "round trip: 62.0 ms +/- 4.8",
            "playout buffer: 2 ticks",
            "session: replicas 2/2, strict, disagreements 0, corrections 0",
            "player: crates moved 2.5 m   door opened 63 deg   NPCs chasing 2   corrections 5",
            "Space jump",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        let text = hud_text(&HudData { mode: Mode::LocalFallback, ..Default::default() });
        assert!(text.contains("LOCAL FALLBACK"), "{text}");
        assert!(text.contains("p50 - / p99 -"), "{text}");
        assert!(text.contains("round trip: - ms"), "{text}");
        assert!(text.contains("session: not replicated"), "{text}");
    }

    #[test]
    fn the_replica_line_says_how_the_session_is_replicated() {
        let line = |r: ReplicationStats| replication_line(&r);
        assert_eq!(line(ReplicationStats::default()), "not replicated");
        assert_eq!(line(ReplicationStats { wanted: 1, live: 1, ..Default::default() }), "not replicated");
        assert_eq!(
            line(ReplicationStats {
                wanted: 2,
                live: 1,
                audited: true,
                disagreements: 3,
                corrections: 1,
                ..Default::default()
            }),
            "replicas 1/2, audited, disagreements 3, corrections 1"
        );
        assert_eq!(
            line(ReplicationStats { wanted: 3, live: 3, ..Default::default() }),
            "replicas 3/3, disagreements 0, corrections 0"
        );
        assert_eq!(
            line(ReplicationStats { wanted: 1, live: 1, corrections: 2, ..Default::default() }),
            "not replicated, disagreements 0, corrections 2"
        );
        // Whatever the coordinator sends, the line is made.
        let odd = ReplicationStats {
            wanted: 255,
            live: 255,
            audited: true,
            strict: true,
            disagreements: u64::MAX,
            corrections: u64::MAX,
        };
        assert!(line(odd).starts_with("replicas 255/255, audited, strict"), "{}", line(odd));
    }
}
