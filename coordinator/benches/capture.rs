//! How many colluding networks it takes to capture a replicated session: every replica of
//! it on a colluder, so that their agreed lie is delivered and never disputed. (With one
//! honest replica among them, the lie is disputed: delivery is held until the dispute is
//! settled, the gamer corrected, and a liar is quarantined only once a re-run confirms it;
//! see ARCHITECTURE.md, "Trust".)
//!
//! Runs the coordinator's own scheduler with `honest` established peers and `colluders`
//! established colluding peers, each on a network of its own, and places 20,000 sessions
//! of `replicas` replicas, the colluders joining first and staying idle (least-loaded
//! placement would hand them every replica). Prints the fraction of sessions placed
//! entirely on colluders beside the figure random placement gives, C(k, r) / C(n + k, r).
//!
//! Run: `cargo bench -p coordinator --bench capture`.

use std::time::Instant;

use coordinator::scheduler::{Answer, CopyId, PeerSpec, Scheduler, SchedulerConfig, Submission};

const SESSIONS: usize = 20_000;

fn choose(n: u64, k: u64) -> f64 {
    if k > n {
        return 0.0;
    }
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (k - i) as f64)
}

/// The fraction of sessions whose every replica landed on a colluder.
fn captured(honest: u8, colluders: u8, replicas: usize) -> f64 {
    let config = SchedulerConfig {
        reputation: coordinator::Reputation { established_after_answers: 0, ..Default::default() },
        scheduling: coordinator::Scheduling { max_sessions_per_gamer: 8, ..Default::default() },
        ..Default::default()
    };
    let mut s: Scheduler<()> = Scheduler::new(config);
    let spec = |net: [u8; 4]| PeerSpec {
        task_types: None,
        capacity: 64,
        setup: Some(7),
        host: Some(std::net::IpAddr::from(net)),
        remote: false,
    };
    for c in 0..colluders {
        s.add_peer(format!("colluder-{c}"), spec([10, 9, c, 1]));
    }
    for h in 0..honest {
        s.add_peer(format!("honest-{h}"), spec([10, 1, h, 1]));
    }
    let now = Instant::now();
    let mut all_colluding = 0;
    let sessions: Vec<CopyId> = (0..replicas as u32).map(|g| CopyId::replica("world", g)).collect();
    for i in 0..SESSIONS {
        let gamer = format!("gamer-{i}");
        s.add_gamer(gamer.clone());
        for (g, session) in sessions.iter().enumerate() {
            let submission = Submission {
                task_id: format!("t{g}").into(),
                task_type: "physics_step".into(),
                session_id: Some(session.clone()),
                deadline: std::time::Duration::from_secs(1),
                payload: (),
                bytes: 0,
                siblings: sessions.iter().filter(|s| *s != session).cloned().collect(),
                setup: Some(7),
            };
            s.submit(&gamer, submission, now).expect("room");
        }
        let placed = s.dispatch(now);
        assert_eq!(placed.len(), replicas);
        if placed.iter().all(|d| d.peer.starts_with("colluder")) {
            all_colluding += 1;
        }
        for d in placed {
            s.complete(&d.peer, &d.assignment_id, Answer::Success, now).expect("assigned");
        }
        s.remove_gamer(&gamer);
    }
    all_colluding as f64 / SESSIONS as f64
}

fn main() {
    println!("{:>8} {:>9} {:>10} {:>11} {:>11}", "replicas", "honest n", "colluders", "captured", "C(k,r)/C(n+k,r)");
    for replicas in [2usize, 3] {
        for honest in [4u8, 8, 16, 32] {
            for colluders in [1u8, 2, 4, 8, 16] {
                if usize::from(colluders) < replicas {
                    continue;
                }
                let measured = captured(honest, colluders, replicas);
                let n = u64::from(honest) + u64::from(colluders);
                let expected = choose(u64::from(colluders), replicas as u64) / choose(n, replicas as u64);
                println!(
                    "{replicas:>8} {honest:>9} {colluders:>10} {:>10.2}% {:>10.2}%",
                    measured * 100.0,
                    expected * 100.0
                );
            }
        }
    }
}
