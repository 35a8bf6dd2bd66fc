//! `cargo xtask` (the alias in `.cargo/config.toml` runs this binary).

fn main() -> std::process::ExitCode {
    xtask::main()
}
