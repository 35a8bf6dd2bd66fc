//! `cargo xtask bench`: benchmarks printed side by side with their baselines and targets.

mod cluster;
mod local;

use anyhow::Result;

use crate::cli::{ClientArgs, SpecArgs};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the local PostgreSQL benchmarks (no cluster)
    #[arg(long, conflicts_with = "cluster_only")]
    pub local_only: bool,
    /// Only the live-cluster benchmarks (needs KUBECONFIG)
    #[arg(long)]
    pub cluster_only: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the benchmarks.
pub async fn run(args: Args) -> Result<()> {
    if !args.cluster_only {
        local::run().await?;
    }
    if !args.local_only {
        cluster::run(&args.spec, &args.client).await?;
    }
    Ok(())
}
