//! `cargo xtask image`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask image`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask image` is not built yet")
}
