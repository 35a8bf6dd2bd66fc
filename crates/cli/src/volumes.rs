//! `cargo xtask volumes`: the NFS PersistentVolumes (and, in shared mode, the shared claim),
//! applied server-side; `--dry-run` prints them as YAML.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use pgset_command::Executor;
use pgset_deploy::apply::{ApplyMode, apply_reporting};
use pgset_deploy::storage::{apply_volumes, shared_claim};
use pgset_nfs::persistent_volumes;
use pgset_spec::{StorageMode, ValidSpec};

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

/// The volumes and the claim of a spec, for a server address.
struct StorageObjects {
    volumes: Vec<PersistentVolume>,
    claim: Option<PersistentVolumeClaim>,
}

fn storage_objects(spec: &ValidSpec, server: &str) -> StorageObjects {
    StorageObjects {
        volumes: persistent_volumes(spec, server),
        claim: (spec.storage.mode == StorageMode::Shared).then(|| shared_claim(spec)),
    }
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

/// Applies the volumes (and the shared claim) server-side. Every volume is read and judged
/// before any is written: one with this cluster's name that another claim holds stops the run
/// with nothing changed; one bound to this cluster's claim is left as it is; the others are
/// applied (created, or reserved for their claim). `up` and `scale` call this to create the
/// missing ones.
pub(crate) async fn apply_storage(
    client: &kube::Client,
    spec: &ValidSpec,
    server: &str,
    mode: ApplyMode,
    reporter: &Reporter,
) -> Result<()> {
    let StorageObjects { volumes, claim } = storage_objects(spec, server);
    let stage = reporter.stage(format!(
        "apply {} NFS volume(s) on {server} for {}{}",
        volumes.len(),
        spec.cluster_export_dir().display(),
        if mode == ApplyMode::ServerDryRun {
            ", server dry run"
        } else {
            ""
        }
    ));
    let mut progress = |line: &str| reporter.line(&format!("    {line}"));
    let mut outcome = apply_volumes(client, &volumes, mode, &mut progress)
        .await
        .with_context(|| {
            format!(
                "apply the PersistentVolumes of cluster {}",
                spec.exports_block_id()
            )
        })?;
    if let Some(c) = &claim {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &spec.namespace);
        outcome.record(
            apply_reporting(&claims, c, mode, &mut progress)
                .await
                .with_context(|| {
                    format!("apply PersistentVolumeClaim {}", spec.shared_claim_name())
                })?,
        );
    }
    stage.done(&outcome.summary());
    Ok(())
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let spec = args.spec.load(&args.client)?;
    let ctx = RunContext::new(
        spec,
        args.client.clone(),
        args.dry_run.mode,
        Reporter::current(),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::ClusterSpec;

    #[test]
    fn shared_mode_has_volumes_and_the_claim_templates_mode_only_volumes() {
        let mut spec = ClusterSpec::default();
        let shared = storage_objects(&spec.clone().validated().unwrap(), "10.0.0.1");
        assert_eq!(shared.volumes.len(), 3);
        assert_eq!(
            shared.claim.and_then(|c| c.metadata.name).as_deref(),
            Some("pgset-pvc")
        );
        spec.storage.mode = StorageMode::Templates;
        let templates = storage_objects(&spec.clone().validated().unwrap(), "10.0.0.1");
        assert_eq!(templates.volumes.len(), 2);
        assert!(templates.claim.is_none());
    }

    #[test]
    fn another_namespace_gets_its_own_volume_for_its_own_claim() {
        let spec = ClusterSpec {
            namespace: "staging".into(),
            ..ClusterSpec::default()
        };
        let shared = storage_objects(&spec.clone().validated().unwrap(), "10.0.0.1");
        let names: Vec<_> = shared
            .volumes
            .iter()
            .filter_map(|v| v.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["staging.pgset-pvc"]);
        let claim = shared.claim.unwrap();
        assert_eq!(claim.metadata.namespace.as_deref(), Some("staging"));
        assert_eq!(claim.metadata.name.as_deref(), Some("pgset-pvc"));
    }
}
