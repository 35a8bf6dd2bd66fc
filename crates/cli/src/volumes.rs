//! `cargo xtask volumes`: the NFS PersistentVolumes (and, in shared mode, the shared claim),
//! applied server-side; `--dry-run` prints them as YAML.

use anyhow::{Context, Result};
use pgset_command::Executor;
use pgset_deploy::apply::ApplyMode;
use pgset_deploy::storage::{StorageObjects, storage_objects};
use pgset_spec::ValidSpec;

use crate::cli::{ClientArgs, DryRunArg, SpecArgs};
use crate::context::RunContext;
use crate::deploy::DryRun;
use crate::nfs::node_addresses_in;
use crate::progress::Reporter;

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

/// The NFS server address the volumes name: `--nfs-server`/`nfs.server`, else detected on
/// this host (its node address when it is a node, else its primary address), the nodes known
/// to the context (or listed with its client).
pub(crate) async fn resolve_server(spec: &ValidSpec, ctx: &RunContext) -> Result<String> {
    if let Some(s) = &spec.nfs.server {
        return Ok(s.clone());
    }
    let addresses =
        pgset_nfs::probe_addresses(&Executor::default()).context("probe this host's addresses")?;
    let nodes = node_addresses_in(ctx).await?;
    pgset_nfs::volume_server_address(spec, &addresses, &nodes).context(
        "cannot tell the NFS server's address: pass --nfs-server ADDR (the address the nodes reach the NFS host at)",
    )
}

/// Applies the volumes (and the shared claim) server-side under one stage line, each object's
/// line below it ([`pgset_deploy::storage::apply_storage`] judges every volume before any is
/// written). `up` and `scale` call this to create the missing ones.
pub(crate) async fn apply_storage(
    client: &kube::Client,
    spec: &ValidSpec,
    server: &str,
    mode: ApplyMode,
    reporter: &Reporter,
) -> Result<()> {
    let objects = storage_objects(spec, server);
    let stage = reporter.stage(format!(
        "apply {} NFS volume(s) on {server} for {}{}",
        objects.volumes.len(),
        spec.cluster_export_dir().display(),
        if mode == ApplyMode::ServerDryRun {
            ", server dry run"
        } else {
            ""
        }
    ));
    let mut progress = |line: &str| reporter.line(&format!("    {line}"));
    let outcome =
        pgset_deploy::storage::apply_storage(client, spec, &objects, mode, &mut progress).await?;
    stage.done(&outcome.summary());
    Ok(())
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
    let server = resolve_server(spec, ctx).await?;
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
    let client = ctx.client().await?;
    let mode = match ctx.dry_run() {
        Some(_) => ApplyMode::ServerDryRun,
        None => ApplyMode::Apply,
    };
    apply_storage(client, spec, &server, mode, ctx.reporter()).await
}
