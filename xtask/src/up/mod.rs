//! `cargo xtask up`: preflight, NFS host, volumes, agent image, deploy, rollout, verify.

mod preflight;

use anyhow::{Result, bail};

/// Arguments of `cargo xtask up`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the task.
pub async fn run(_args: Args) -> Result<()> {
    let _ = preflight::judge;
    let _ = preflight::gather;
    bail!("`cargo xtask up` is not built yet")
}
