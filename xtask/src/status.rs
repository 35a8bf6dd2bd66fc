//! `cargo xtask status`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask status` is not built yet")
}
