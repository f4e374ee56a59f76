//! The P2C2R demo game (filled in by the demo issue).

fn main() {
    eprintln!("demo_game: not built yet; see the open issue for the demo game");
    std::process::exit(2);
}
