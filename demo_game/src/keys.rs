//! The keys that change the cluster while the game runs: `P` starts an in-process peer,
//! `K` kills the peer serving the session, `F` toggles autofire, `Esc` quits. They act
//! wherever keyboard input exists (the window), and tests press them headless by inserting
//! a `ButtonInput<KeyCode>`.

use bevy::prelude::*;

use bevy_p2c2r::embedded::EmbeddedCluster;

use crate::game::DemoSettings;
use crate::{HudState, Notice};

/// Starts one more in-process peer.
pub const ADD_PEER: KeyCode = KeyCode::KeyP;
/// Kills the peer serving the session (if in-process; else the oldest in-process peer).
pub const KILL_PEER: KeyCode = KeyCode::KeyK;
/// Toggles autofire.
pub const AUTOFIRE: KeyCode = KeyCode::KeyF;
/// Quits.
pub const QUIT: KeyCode = KeyCode::Escape;

/// The key bindings above; inert where there is no `ButtonInput<KeyCode>`.
pub struct KeysPlugin;

impl Plugin for KeysPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Update, (peer_keys, toggle_autofire).chain().run_if(resource_exists::<ButtonInput<KeyCode>>));
    }
}

fn peer_keys(
    keys: Res<ButtonInput<KeyCode>>,
    cluster: Option<Res<EmbeddedCluster>>,
    hud: Res<HudState>,
    mut notice: ResMut<Notice>,
    mut exit: MessageWriter<AppExit>,
) {
    if keys.just_pressed(QUIT) {
        exit.write(AppExit::Success);
    }
    let Some(cluster) = cluster else { return };
    if keys.just_pressed(ADD_PEER) {
        notice.set(if cluster.add_peer() { "starting a peer..." } else { "busy, try again" });
    }
    if keys.just_pressed(KILL_PEER) {
        // Kill the peer serving the session if it is ours; else the oldest in-process peer.
        let serving = hud.0.serving_peer.as_deref().filter(|p| cluster.peers().iter().any(|q| q == p));
        if cluster.peers().is_empty() {
            notice.set("no in-process peer to kill");
        } else if cluster.kill_peer(serving) {
            notice.set("killing a peer...");
        }
    }
}

fn toggle_autofire(keys: Res<ButtonInput<KeyCode>>, mut settings: ResMut<DemoSettings>, mut notice: ResMut<Notice>) {
    if keys.just_pressed(AUTOFIRE) {
        settings.autofire = !settings.autofire;
        notice.set(if settings.autofire { "autofire on" } else { "autofire off" });
    }
}
