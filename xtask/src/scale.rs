//! `cargo xtask scale`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask scale`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask scale` is not built yet")
}
