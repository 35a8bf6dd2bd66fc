//! `cargo xtask deploy`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask deploy`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask deploy` is not built yet")
}
