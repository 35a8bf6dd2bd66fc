//! `cargo xtask local`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask local`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask local` is not built yet")
}
