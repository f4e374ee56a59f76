//! Many peers and gamers at once: every task is delivered exactly once, even when peers
//! crash mid-task or answer after their deadline. The gamers are the real gamer client;
//! the peers are the testkit's raw client, scripted to crash or straggle.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, WAIT, gamer, request, success_json};
use coordinator::{Config, spawn};
use p2c2r_protocol::Message;

#[derive(Clone, Copy)]
enum Behaviour {
    Honest,
    /// Drops its connection without answering after this many assignments.
    CrashAfter(usize),
    /// Answers every task, but only after its deadline has passed.
    Straggle(Duration),
}

async fn run_peer(url: String, id: String, behaviour: Behaviour) {
    let mut peer = Client::peer(&url, &id, 4).await;
    let mut seen = 0;
    loop {
        let message = tokio::select! {
            m = futures_util::StreamExt::next(&mut peer.ws) => m,
            _ = tokio::time::sleep(Duration::from_secs(30)) => return,
        };
        let text = match message {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => return,
        };
        let assignment = match p2c2r_protocol::codec::decode(text.as_str()) {
            Ok(Message::TaskAssignment(a)) => a,
            _ => continue, // errors for late answers, etc.
        };
        seen += 1;
        let echo = format!(r#"{{"status":"success","gamer_task":"{}","by":"{id}"}}"#, assignment.task_data.task_id);
        match behaviour {
            Behaviour::Honest => peer.answer(&assignment, &echo).await,
            Behaviour::CrashAfter(n) if seen >= n => return, // drops the socket mid-task
            Behaviour::CrashAfter(_) => peer.answer(&assignment, &echo).await,
            Behaviour::Straggle(delay) => {
                tokio::time::sleep(delay).await;
                peer.answer(&assignment, &echo).await;
            }
        }
    }
}

async fn run_gamer(url: String, id: String, tasks: usize, deadline_ms: u64) -> usize {
    let mut gamer = gamer::connect(&url, &id).await;
    for i in 0..tasks {
        gamer.send(request(&format!("{id}-t{i}"), "physics", r#"{"n":1}"#, None, Some(deadline_ms)));
    }
    let mut delivered = HashSet::new();
    while delivered.len() < tasks {
        let result = gamer.next_outcome().await;
        let body = common::json(success_json(&result));
        assert_eq!(body["status"], "success", "{body}");
        assert_eq!(body["gamer_task"], result.task_id.as_str(), "result matches its task");
        assert!(result.task_id.starts_with(&format!("{id}-")), "a result for another gamer: {}", result.task_id);
        assert!(delivered.insert(result.task_id.clone()), "delivered twice: {}", result.task_id);
    }
    delivered.len()
}

async fn scenario(behaviours: Vec<Behaviour>, gamers: usize, tasks_per_gamer: usize, deadline_ms: u64) {
    let coord = spawn(
        "127.0.0.1:0",
        Config { scheduling: coordinator::Scheduling { max_attempts: 10, ..Default::default() }, ..Config::default() },
    )
    .await
    .unwrap();
    let url = coord.url();
    let mut peers = Vec::new();
    for (i, b) in behaviours.into_iter().enumerate() {
        peers.push(tokio::spawn(run_peer(url.clone(), format!("peer{i}"), b)));
    }
    common::eventually("peers registered", || coord.stats().peers == peers.len() as u64).await;
    let mut handles = Vec::new();
    for g in 0..gamers {
        handles.push(tokio::spawn(run_gamer(url.clone(), format!("gamer{g}"), tasks_per_gamer, deadline_ms)));
    }
    let mut total = 0;
    for h in handles {
        total += tokio::time::timeout(WAIT * 6, h).await.expect("gamer finished").expect("gamer ok");
    }
    assert_eq!(total, gamers * tasks_per_gamer);
    let stats = coord.stats();
    assert_eq!(stats.tasks_completed as usize, gamers * tasks_per_gamer, "exactly once: {stats:?}");
    assert_eq!(stats.tasks_failed, 0);
    assert_eq!(stats.queued_now, 0);
    for p in peers {
        p.abort();
    }
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_twenty_gamers_two_thousand_tasks_each_delivered_once() {
    scenario(vec![Behaviour::Honest; 20], 20, 100, 5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_and_straggling_peers_lose_and_duplicate_nothing() {
    let mut behaviours = vec![Behaviour::Honest; 12];
    for n in [1, 3, 5, 10, 20] {
        behaviours.push(Behaviour::CrashAfter(n));
    }
    for _ in 0..3 {
        behaviours.push(Behaviour::Straggle(Duration::from_millis(400)));
    }
    scenario(behaviours, 20, 100, 250).await;
}
