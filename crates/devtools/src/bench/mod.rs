//! `cargo xtask bench`: benchmarks printed side by side with their baselines and targets.

mod agent_cost;
mod cluster;
mod drills;
mod forks;
mod local;

use std::time::Duration;

use anyhow::{Result, bail};

use crate::cli::{ClientArgs, SpecArgs};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the local PostgreSQL benchmarks (no cluster)
    #[arg(long, conflicts_with = "cluster_only")]
    pub local_only: bool,
    /// Only the live-cluster benchmarks (needs KUBECONFIG)
    #[arg(long, conflicts_with = "agent_cost_only")]
    pub cluster_only: bool,
    /// Only the agent's own cost (CPU, RSS, processes started per minute of each member's agent,
    /// idle and with the master down) on a local set at ports 27432..
    #[arg(long)]
    pub agent_cost_only: bool,
    /// Only the local formation benchmark: a 3-member set, ordered and parallel, against the raw
    /// tools (medians of alternating runs)
    #[arg(long, conflicts_with_all = ["cluster_only", "agent_cost_only", "drills_only"])]
    pub formation_only: bool,
    /// Only the local drills' recovery times beside their targets (a local set at ports 28390..)
    #[arg(long, conflicts_with_all = ["cluster_only", "agent_cost_only"])]
    pub drills_only: bool,
    /// Consecutive failover drills on a set with synchronous replication (`required`, one
    /// standby) after the local drills; 0 skips them (each takes about half a minute)
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub sync_rounds: usize,
    /// Only the synchronous failover series of the drills benchmark (`--sync-rounds` long)
    #[arg(long, conflicts_with_all = ["cluster_only", "agent_cost_only", "formation_only"])]
    pub sync_only: bool,
    /// Length of each measuring window of the agent-cost benchmark, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub agent_window: u64,
    /// Rounds of the cluster rollouts (bare and pgset alternating; medians printed)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rounds: u32,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the benchmarks.
pub async fn run(args: Args) -> Result<()> {
    if !(10..=3600).contains(&args.agent_window) {
        bail!(
            "--agent-window {}: choose 10..=3600 seconds (short windows make per-minute figures noisy)",
            args.agent_window
        );
    }
    cluster::check_rounds(args.rounds)?;
    let window = Duration::from_secs(args.agent_window);
    if args.agent_cost_only {
        return agent_cost::run(window).await;
    }
    if args.sync_only {
        return drills::run_sync_only(args.sync_rounds.max(1)).await;
    }
    if args.drills_only {
        return drills::run(args.sync_rounds).await;
    }
    if args.formation_only {
        return local::run(true).await;
    }
    if !args.cluster_only {
        local::run(false).await?;
        agent_cost::run(window).await?;
        drills::run(args.sync_rounds).await?;
    }
    if !args.local_only {
        cluster::run(&args.spec, &args.client, args.rounds).await?;
    }
    Ok(())
}
