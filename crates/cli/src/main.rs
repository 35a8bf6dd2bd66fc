//! `pgset`: the pgset commands as a binary of their own (`cargo install --path crates/cli`); the
//! same as `cargo xtask <command>`, which runs it.

fn main() -> std::process::ExitCode {
    pgset_cli::main()
}
