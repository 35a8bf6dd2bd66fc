//! `cargo xtask verify`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask verify`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask verify` is not built yet")
}
