//! `pgset switchover [--to MEMBER]`: hand the master role to a streaming replica of the cluster
//! (the request on the leader Lease, `pgset_deploy::switchover`), then wait until the new master
//! holds the Lease and is Ready, and the old master streams from it. `pgset failover --to MEMBER
//! --yes`: name the replica that takes an expired Lease while automatic failover is off or
//! paused.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::args::{ClientArgs, OneLine, SpecArgs, parse_timeout};
use crate::context::RunContext;

/// Arguments of `pgset switchover`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The member to make the master (default: the most advanced streaming replica)
    #[arg(long)]
    pub to: Option<String>,
    /// How long to wait for the new master and the old master's rejoin (e.g. 120, 90s, 5m)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OneLine::Text)]
    pub output: OneLine,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let ctx = RunContext::for_command(&args.spec, &args.client, None)?;
    let spec = ctx.spec();
    let client = ctx.client().await?;
    let stage = ctx.reporter().stage(format!(
        "switchover of {} in namespace {}{}",
        spec.name,
        spec.namespace,
        args.to
            .as_deref()
            .map(|t| format!(" to {t}"))
            .unwrap_or_default()
    ));
    let (from, request) =
        pgset_deploy::switchover::request_switchover(client, spec, args.to.as_deref())
            .await
            .context("ask for a switchover")?;
    let done =
        pgset_deploy::switchover::wait_switchover(client, spec, &from, &request, args.timeout)
            .await
            .context("switchover")?;
    stage.done("");
    match args.output {
        OneLine::Text => println!("{}", done.line()),
        OneLine::Json => println!("{}", serde_json::to_string_pretty(&done)?),
    }
    Ok(())
}

/// Arguments of `pgset failover`.
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The replica to promote
    #[arg(long)]
    pub to: String,
    /// Promote it, accepting the loss of what it did not receive
    #[arg(long)]
    pub yes: bool,
    /// How long to wait for it to take over (e.g. 120, 90s, 5m)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OneLine::Text)]
    pub output: OneLine,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How long the Lease is watched for a renewal before a manual failover is asked: the holder's
/// renew deadline and one renewal (the agent's default timings).
const LIVENESS_WATCH: Duration = Duration::from_secs(10);

/// Runs `failover`.
pub async fn run_failover(args: FailoverArgs) -> Result<()> {
    let ctx = RunContext::for_command(&args.spec, &args.client, None)?;
    let spec = ctx.spec();
    if !args.yes {
        anyhow::bail!(
            "failover to {} promotes it with the WAL it received; writes the old master \
             acknowledged after that are lost; the old master, if it comes back, and any replica \
             that received more are rewound with what they hold after the fork kept aside. Nothing \
             was changed; add --yes to fail over (a running master is never replaced: use `{} \
             switchover` for that)",
            args.to,
            pgset_spec::contract::program_name()
        );
    }
    let client = ctx.client().await?;
    let stage = ctx.reporter().stage(format!(
        "failover of {} in namespace {} to {}",
        spec.name, spec.namespace, args.to
    ));
    let (from, request) =
        pgset_deploy::switchover::request_failover(client, spec, &args.to, LIVENESS_WATCH)
            .await
            .context("ask for a failover")?;
    let done = pgset_deploy::switchover::wait_failover(
        client,
        spec,
        &from,
        &args.to,
        &request,
        args.timeout,
    )
    .await
    .context("failover")?;
    stage.done("");
    match args.output {
        OneLine::Text => println!("{}", done.line()),
        OneLine::Json => println!("{}", serde_json::to_string_pretty(&done)?),
    }
    Ok(())
}
