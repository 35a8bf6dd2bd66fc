//! `cargo xtask bench`: benchmarks printed side by side with their baselines and targets.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the benchmarks.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask bench` is not built yet")
}
