//! `cargo xtask volumes`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask volumes`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask volumes` is not built yet")
}
