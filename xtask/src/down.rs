//! `cargo xtask down`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask down`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask down` is not built yet")
}
