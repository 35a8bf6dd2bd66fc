//! `pgset-devtools`: the developer tools as a binary of their own, which `cargo xtask bench` and
//! `cargo xtask vagrant` run.

fn main() -> std::process::ExitCode {
    pgset_devtools::main()
}
