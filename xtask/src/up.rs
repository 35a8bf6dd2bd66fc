//! `cargo xtask up`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask up`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask up` is not built yet")
}
