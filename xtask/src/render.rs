//! `cargo xtask render`.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask render`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    bail!("`cargo xtask render` is not built yet")
}
