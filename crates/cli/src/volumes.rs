//! `cargo xtask volumes`: the NFS PersistentVolumes (and, in shared mode, the shared claim),
//! applied server-side; `--dry-run` prints them as YAML.

use anyhow::{Context, Result};
use pgset_deploy::apply::ApplyMode;
use pgset_deploy::storage::{StorageObjects, storage_objects};

use crate::args::{ClientArgs, DryRun, DryRunArg, SpecArgs};
use crate::context::RunContext;

/// Arguments of `cargo xtask volumes`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("dry_run", |a| a.help("Change nothing: print the objects as YAML (client, the default) or have the API server check them (server)")))]
pub struct Args {
    #[command(flatten)]
    pub dry_run: DryRunArg,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let ctx = RunContext::for_command(&args.spec, &args.client, args.dry_run.mode)?;
    stage(&ctx).await
}

/// Applies (or, in a client dry run, prints) the volumes and the claim with the invocation's
/// spec and client: `volumes`, and `up`'s volumes stage.
pub async fn stage(ctx: &RunContext) -> Result<()> {
    let spec = ctx.spec();
    let server = ctx.volume_server(spec).await?;
    if ctx.dry_run() == Some(DryRun::Client) {
        let StorageObjects { volumes, claim } = storage_objects(spec, &server);
        let mut docs = Vec::new();
        for pv in &volumes {
            docs.push(serde_saphyr::to_string(pv).context("render a PersistentVolume")?);
        }
        if let Some(c) = &claim {
            docs.push(serde_saphyr::to_string(c).context("render the claim")?);
        }
        print!("{}", docs.join("---\n"));
        return Ok(());
    }
    let mode = match ctx.dry_run() {
        Some(_) => ApplyMode::ServerDryRun,
        None => ApplyMode::Apply,
    };
    ctx.apply_storage(spec, &server, mode).await
}
