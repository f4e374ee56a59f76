//! Checks that a screenshot is not blank; used by `demo_game/smoke.sh`.
//!
//! `cargo run -p demo_game --example check_screenshot -- PATH.png`: prints the image's
//! statistics as JSON and exits 1 if it looks blank (or 2 if it cannot be read).

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check_screenshot PATH.png");
        return ExitCode::from(2);
    };
    let stats = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| demo_game::screenshot_check::analyze_png(&b))
    {
        Ok(stats) => stats,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", serde_json::to_string(&stats).expect("stats serialize"));
    if stats.is_blank() {
        eprintln!("{path} looks blank");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
