//! Local PostgreSQL benchmarks: agent replica bootstrap and set formation against raw tools.

use anyhow::{Result, bail};

/// Runs the local benchmarks and prints them.
pub async fn run() -> Result<()> {
    bail!("local benchmarks are not built yet")
}
