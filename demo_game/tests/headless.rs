//! The demo's game systems, headless (`MinimalPlugins`), against an in-process coordinator
//! and peer over loopback: peers move the bodies and the NPCs walk.

use std::time::{Duration, Instant};

use bevy::input::ButtonInput;
use bevy::input::keyboard::KeyCode;
use bevy_p2c2r::embedded::EmbeddedCluster as Cluster;
use clap::Parser;
use demo_game::HudState;
use demo_game::cli::Args;
use demo_game::keys;
use demo_game::level::{DEFAULT_LEVEL, Level, assets_dir};
use demo_game::report::{self, Report};

fn headless_app(peers: u32) -> bevy::app::App {
    headless_app_with(peers, &[])
}

fn headless_app_with(peers: u32, flags: &[&str]) -> bevy::app::App {
    // No --frames: the test decides when to stop. Autofire is on in headless apps.
    let peers = peers.to_string();
    let args = Args::try_parse_from(["demo_game", "--autofire", "--peers", &peers].iter().chain(flags)).unwrap();
    let level = Level::load(&assets_dir().join(DEFAULT_LEVEL)).unwrap();
    let mut app = demo_game::build_app(&args, level, false);
    app.finish();
    app.cleanup();
    app
}

/// Runs frames at ~60 Hz until `done` holds or `limit` passes; returns the last report.
fn run_until(app: &mut bevy::app::App, limit: Duration, done: impl Fn(&Report) -> bool) -> Report {
    let start = Instant::now();
    loop {
        app.update();
        let report = report::collect(app.world_mut());
        if done(&report) || start.elapsed() > limit {
            return report;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
}

#[test]
fn peer_results_move_bodies_and_npcs_walk() {
    // This test is about where the physics comes from, not about latency: a generous
    // fallback timeout keeps a busy machine's hiccups (an unoptimised test build of the
    // peer steps about 350 bodies, beside two other tests' clusters) from counting as
    // fallback. Detecting a dead peer fast is tested below, with the default timeout.
    let mut app = headless_app_with(1, &["--fallback-timeout-ms", "2000"]);
    // Warm-up: the first snapshot is the slowest tick; the share of fallback ticks is
    // judged after it.
    let warm = run_until(&mut app, Duration::from_secs(90), |r| r.physics_results_from_peers >= 30);
    let r = run_until(&mut app, Duration::from_secs(90), |r| {
        r.physics_results_from_peers >= warm.physics_results_from_peers + 120
            && r.ai_results_from_peers >= 30
            && r.bodies_moved >= 5
            && r.agent_distance_m >= 10.0
            && r.zone_entries >= 1
    });
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert!(r.bodies >= 300, "a few hundred bodies: {r:?}");
    assert_eq!(r.agents, 10, "{r:?}");
    assert!(r.physics_results_from_peers >= 120, "physics came from peers: {r:?}");
    assert!(r.ai_results_from_peers >= 30, "AI came from peers: {r:?}");
    assert!(r.balls_fired > 0 && r.bodies_moved >= 5, "peer results moved bodies: {r:?}");
    assert!(r.agent_distance_m >= 10.0, "NPCs walked: {r:?}");
    // The playground: its joints, and events from peers reaching the game.
    assert_eq!(r.joints, 12, "{r:?}");
    assert!(r.collision_events > 0 && r.sparks > 0, "collision events made hit effects: {r:?}");
    assert!(r.zone_entries >= 1, "the trigger zone counted a ball: {r:?}");
    assert_eq!(r.mode, "offloaded", "{r:?}");
    // Once warm, peers stepped the world, not the local fallback.
    let (fallback, from_peers) =
        (r.fallback_ticks - warm.fallback_ticks, r.physics_results_from_peers - warm.physics_results_from_peers);
    assert!(fallback * 10 <= from_peers, "{fallback} fallback ticks, {from_peers} from peers after warm-up: {r:?}");
}

#[test]
fn the_player_pushes_crates_opens_the_door_climbs_aims_and_is_noticed() {
    // The autopilot plays the course (headless apps have it): every figure grows from
    // zero only through the controller, the scene queries and the world's reaction.
    let mut app = headless_app(1);
    let r = run_until(&mut app, Duration::from_secs(120), |r| {
        let p = &r.player;
        p.highest_ground_m >= 1.7
            && p.crates_moved_m >= 1.0
            && p.door_opened_deg >= 20.0
            && p.aim_hits > 0
            && p.npcs_noticed >= 1
    });
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    let p = &r.player;
    assert!(p.walked_m >= 10.0 && p.jumps >= 3, "walked and jumped: {p:?}");
    assert!(p.highest_ground_m >= 1.7, "stood on the highest platform (1.8 m): {p:?}");
    assert!(p.crates_moved_m >= 1.0, "pushed a crate the world then moved: {p:?}");
    assert!(p.door_opened_deg >= 20.0, "opened the hinged door: {p:?}");
    assert!(p.aim_hits > 0, "the aim ray hit something: {p:?}");
    assert!(p.npcs_noticed >= 1, "an NPC saw the player and set off towards it: {p:?}");
    assert!(r.physics_results_from_peers > 0, "{r:?}");
}

fn press(app: &mut bevy::app::App, key: KeyCode) {
    app.world_mut().resource_mut::<ButtonInput<KeyCode>>().press(key);
    app.update();
    let mut input = app.world_mut().resource_mut::<ButtonInput<KeyCode>>();
    input.release(key);
    input.clear();
}

fn serving_peer(app: &bevy::app::App) -> Option<String> {
    app.world().resource::<HudState>().0.serving_peer.clone()
}

#[test]
fn kill_key_falls_back_and_add_key_hands_back_to_a_new_peer() {
    let mut app = headless_app(1);
    app.init_resource::<ButtonInput<KeyCode>>();
    let r = run_until(&mut app, Duration::from_secs(60), |r| r.physics_results_from_peers >= 30);
    assert!(r.physics_results_from_peers >= 30, "{r:?}");
    // Let the HUD (refreshed every 0.25 s) learn which peer serves the session.
    run_until(&mut app, Duration::from_secs(1), |_| false);
    let serving = serving_peer(&app).expect("the HUD knows the serving peer");
    assert_eq!(app.world().resource::<Cluster>().peers(), [serving]);

    press(&mut app, keys::KILL_PEER);
    let before = r.fallback_ticks;
    let r = run_until(&mut app, Duration::from_secs(60), |r| r.fallback_ticks >= before + 30);
    assert!(r.fallback_ticks >= before + 30, "the game went on in fallback: {r:?}");
    assert!(app.world().resource::<Cluster>().peers().is_empty(), "the serving peer was killed");

    press(&mut app, keys::ADD_PEER);
    let from_peers = r.physics_results_from_peers;
    let r = run_until(&mut app, Duration::from_secs(60), |r| {
        r.physics_results_from_peers >= from_peers + 30 && r.mode == "offloaded"
    });
    assert!(r.physics_results_from_peers >= from_peers + 30, "a new peer took over: {r:?}");
    assert_eq!(r.mode, "offloaded", "{r:?}");
    assert_eq!(app.world().resource::<Cluster>().peers().len(), 1);
}

#[test]
fn kill_key_with_two_peers_moves_the_session_to_the_survivor() {
    let mut app = headless_app(2);
    app.init_resource::<ButtonInput<KeyCode>>();
    run_until(&mut app, Duration::from_secs(60), |r| r.physics_results_from_peers >= 30);
    run_until(&mut app, Duration::from_secs(1), |_| false);
    let serving = serving_peer(&app).expect("the HUD knows the serving peer");

    press(&mut app, keys::KILL_PEER);
    let from_peers = report::collect(app.world_mut()).physics_results_from_peers;
    let r = run_until(&mut app, Duration::from_secs(60), |r| {
        r.physics_results_from_peers >= from_peers + 60 && r.mode == "offloaded"
    });
    assert!(r.physics_results_from_peers >= from_peers + 60, "the survivor serves: {r:?}");
    let peers = app.world().resource::<Cluster>().peers().to_vec();
    assert_eq!(peers.len(), 1);
    assert_ne!(peers[0], serving, "the serving peer was the one killed");
    run_until(&mut app, Duration::from_secs(1), |_| false);
    assert_eq!(serving_peer(&app).as_deref(), Some(peers[0].as_str()));
}
