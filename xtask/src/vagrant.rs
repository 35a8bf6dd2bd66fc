//! `cargo xtask vagrant`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask vagrant`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask vagrant` is not built yet")
}
