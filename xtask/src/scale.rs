//! `cargo xtask scale N`: set the number of members (ordered: new members start one after the
//! other; scale-down removes the highest ordinals and keeps their claims and data).

use anyhow::{Context, Result, bail};
use pgset_spec::{MAX_REPLICAS, StorageMode};

use crate::cli::{ClientArgs, SpecArgs, Stage};
use crate::deploy::WaitArgs;

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
        prepare_member_volumes(&args, &spec, &client).await?;
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

/// Templates mode on pgset's NFS volumes: a new member needs its directory on the export and
/// its pre-bound volume before its pod can start. On the NFS host (as root) the `nfs` stage
/// creates the missing directories; the volumes are applied from anywhere.
async fn prepare_member_volumes(
    args: &Args,
    spec: &pgset_spec::ClusterSpec,
    client: &kube::Client,
) -> Result<()> {
    let missing: Vec<String> = (0..spec.replicas)
        .map(|o| spec.member_export_dir(o))
        .filter(|d| !d.exists())
        .map(|d| d.display().to_string())
        .collect();
    if spec.nfs.export.is_dir() && nix::unistd::geteuid().is_root() {
        if !missing.is_empty() {
            let mut spec_args = args.spec.clone();
            spec_args.replicas = Some(spec.replicas);
            crate::nfs::run(crate::nfs::Args {
                clients: None,
                dry_run: false,
                verbose: false,
                spec: spec_args,
                client: args.client.clone(),
            })
            .await
            .context("create the new members' directories on the NFS export")?;
        }
    } else if !missing.is_empty() {
        eprintln!(
            "    note: cannot check the export here; on the NFS host, run `cargo xtask nfs --storage templates --replicas {}` so that {} exist",
            spec.replicas,
            if spec.nfs.export.is_dir() {
                missing.join(", ")
            } else {
                format!("{}/{}-N", spec.nfs.export.display(), spec.name)
            }
        );
    }
    let server = crate::volumes::resolve_server(spec, &args.client).await?;
    crate::volumes::apply_storage(client, spec, &server)
        .await
        .context("create the new members' volumes")
}
