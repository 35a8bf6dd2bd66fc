//! Live-cluster benchmarks: `up` stages, rollout against a bare StatefulSet, re-run, lag, recovery.

use anyhow::{Result, bail};

use crate::cli::{ClientArgs, SpecArgs};

/// Runs the live-cluster benchmarks (skipped with a reason when no cluster is configured).
pub async fn run(_spec: &SpecArgs, _client: &ClientArgs) -> Result<()> {
    bail!("cluster benchmarks are not built yet")
}
