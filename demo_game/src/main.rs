//! `cargo run -p demo_game [-- --help]`: the P2C2R demo game. See the crate docs of the
//! `demo_game` library and `demo_game/README.md`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    demo_game::run(demo_game::cli::Args::parse())
}
