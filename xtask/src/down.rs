//! `cargo xtask down`: scale to 0 and wait, then delete the objects in reverse order. Claims,
//! PersistentVolumes, data and the Secret stay unless `--purge --yes`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use pgset_deploy::teardown::{Purge, down};

use crate::cli::{ClientArgs, SpecArgs, Stage};
use crate::deploy::parse_timeout;

/// Arguments of `cargo xtask down`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also delete the claims, pgset's PersistentVolumes and the Secret (needs --yes)
    #[arg(long)]
    pub purge: bool,
    /// Confirm --purge
    #[arg(long, requires = "purge")]
    pub yes: bool,
    /// How long to wait for the pods (and, when purging, claims and volumes) to go
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let spec = args.spec.load(&args.client)?;
    let purge = match (args.purge, args.yes) {
        (true, true) => Purge::Everything,
        (true, false) => bail!(
            "--purge deletes the claims, PersistentVolumes and Secret of cluster {} in namespace {} (the data's volumes and passwords): add --yes to confirm; nothing was changed",
            spec.name,
            spec.namespace
        ),
        (false, _) => Purge::Keep,
    };
    let client = args.client.client().await?;
    let stage = Stage::start(format!(
        "take cluster {} off namespace {}{}",
        spec.name,
        spec.namespace,
        if purge == Purge::Everything {
            ", purging claims, volumes and Secret"
        } else {
            ""
        }
    ));
    down(&client, &spec, purge, args.timeout, &mut |l: &str| {
        eprintln!("    {l}")
    })
    .await
    .context("tear the cluster down")?;
    stage.done("");
    Ok(())
}
