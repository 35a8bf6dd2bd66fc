//! `cargo xtask nfs`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask nfs`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask nfs` is not built yet")
}
