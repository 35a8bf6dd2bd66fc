//! `pgset switchover [--to MEMBER]`: hand the master role to a streaming replica of the cluster
//! (the request on the leader Lease, `pgset_deploy::switchover`), then wait until the new master
//! holds the Lease and is Ready, and the old master streams from it.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{ClientArgs, SpecArgs, Stage};
use crate::deploy::parse_timeout;
use crate::local::OneLine;

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
    let spec = args.spec.load(&args.client)?;
    let client = args.client.client().await?;
    let stage = Stage::start(format!(
        "switchover of {} in namespace {}{}",
        spec.name,
        spec.namespace,
        args.to
            .as_deref()
            .map(|t| format!(" to {t}"))
            .unwrap_or_default()
    ));
    let (from, request) =
        pgset_deploy::switchover::request_switchover(&client, &spec, args.to.as_deref())
            .await
            .context("ask for a switchover")?;
    let done =
        pgset_deploy::switchover::wait_switchover(&client, &spec, &from, &request, args.timeout)
            .await
            .context("switchover")?;
    stage.done("");
    match args.output {
        OneLine::Text => println!("{}", done.line()),
        OneLine::Json => println!("{}", serde_json::to_string_pretty(&done)?),
    }
    Ok(())
}
