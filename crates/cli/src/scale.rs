//! `cargo xtask scale N`: set the number of members (ordered: new members start one after the
//! other; scale-down removes the highest ordinals and keeps their claims and data).

use anyhow::{Context, Result, bail};
use pgset_spec::{MAX_REPLICAS, StorageMode};

use crate::cli::{ClientArgs, SpecArgs, Stage};
use crate::context::RunContext;
use crate::deploy::WaitArgs;
use crate::progress::Reporter;

/// Arguments of `cargo xtask scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of members wanted (ordinal 0 stays the master)
    #[arg(value_name = "N", allow_negative_numbers = true)]
    pub members: i32,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let mut spec = args.spec.load(&args.client)?;
    if !(1..=MAX_REPLICAS).contains(&args.members) {
        bail!(
            "invalid N {}: scale takes 1 to {MAX_REPLICAS} members; to stop the cluster use `cargo xtask down`",
            args.members
        );
    }
    let declared = spec.replicas;
    spec.replicas = args.members;
    spec.validate()?;
    let client = args.client.client().await?;
    if spec.storage.mode == StorageMode::Templates && spec.storage.storage_class.is_none() {
        let ctx = RunContext::new(spec.clone(), args.client.clone(), None, Reporter::current())
            .with_client(client.clone());
        prepare_member_volumes(&ctx, &spec, &client).await?;
    }
    let stage = Stage::start(format!(
        "scale StatefulSet {} in namespace {} to {} members",
        spec.statefulset_name(),
        spec.namespace,
        spec.replicas
    ));
    let wait = args.wait.timeout();
    let outcome =
        pgset_deploy::scale::scale(&client, &spec, spec.replicas, wait, &mut |l: &str| {
            eprintln!("    {l}")
        })
        .await
        .context("scale the StatefulSet")?;
    if outcome.to < outcome.from {
        let kept: Vec<String> = (outcome.to..outcome.from)
            .map(|o| match spec.storage.mode {
                StorageMode::Templates => spec.member_claim_name(o),
                StorageMode::Shared => {
                    format!("{}/{}", spec.shared_claim_name(), spec.pod_name(o))
                }
            })
            .collect();
        eprintln!(
            "    data of removed members kept: {} (scaling up again reuses it)",
            kept.join(", ")
        );
    }
    if declared != spec.replicas {
        eprintln!(
            "    note: the spec says {declared} members, and `cargo xtask deploy` applies the spec: set replicas: {} in the spec file (or pass --replicas {}) to keep this size",
            spec.replicas, spec.replicas
        );
    }
    stage.done("");
    Ok(())
}

/// Templates mode on pgset's NFS volumes: a new member needs its directory in the cluster's
/// directory on the export and its pre-bound volume before its pod can start. On the NFS host
/// (as root, once the `nfs` stage made the cluster's directory) the missing member directories
/// are created as the `nfs` stage makes them (owned by the postgres uid, mode 0700); the
/// volumes are applied from anywhere. Progress goes to stderr only.
pub(crate) async fn prepare_member_volumes(
    ctx: &RunContext,
    spec: &pgset_spec::ClusterSpec,
    client: &kube::Client,
) -> Result<()> {
    let missing: Vec<std::path::PathBuf> = (0..spec.replicas)
        .map(|o| spec.member_export_dir(o))
        .filter(|d| !d.exists())
        .collect();
    if spec.cluster_export_dir().is_dir() && nix::unistd::geteuid().is_root() {
        for dir in &missing {
            create_member_dir(spec, dir)?;
            ctx.reporter().line(&format!(
                "    created {} owned by {}:{} with mode 0700",
                dir.display(),
                spec.postgres.uid,
                spec.postgres.gid
            ));
        }
    } else if !missing.is_empty() {
        ctx.reporter().line(&format!(
            "    note: cannot create member directories here; on the NFS host, run `cargo xtask nfs -n {} --name {} --storage templates --replicas {}` so that {}/{}-N exist",
            spec.namespace,
            spec.name,
            spec.replicas,
            spec.cluster_export_dir().display(),
            spec.name
        ));
    }
    let server = crate::volumes::resolve_server(spec, ctx).await?;
    crate::volumes::apply_storage(
        client,
        spec,
        &server,
        pgset_deploy::apply::ApplyMode::Apply,
        ctx.reporter(),
    )
    .await
    .context("create the new members' volumes")
}

fn create_member_dir(spec: &pgset_spec::ClusterSpec, dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
    nix::unistd::chown(
        dir,
        Some(nix::unistd::Uid::from_raw(spec.postgres.uid as u32)),
        Some(nix::unistd::Gid::from_raw(spec.postgres.gid as u32)),
    )
    .with_context(|| format!("chown {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))
}
