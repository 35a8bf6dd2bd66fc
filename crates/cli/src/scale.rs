//! `cargo xtask scale N`: set the number of members (ordered: new members start one after the
//! other; scale-down removes the highest ordinals and keeps their claims and data, never the
//! master, and pauses automatic failover while it runs).

use anyhow::{Context, Result, bail};
use pgset_spec::{MAX_REPLICAS, StorageMode, ValidSpec};

use crate::cli::{ClientArgs, SpecArgs, Stage};
use crate::context::RunContext;
use crate::deploy::WaitArgs;
use crate::progress::Reporter;

/// Arguments of `cargo xtask scale`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of members wanted (the master must be a member below N)
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
    let spec = args.spec.load(&args.client)?;
    let declared = spec.replicas;
    let spec = scaled(spec, args.members)?;
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
            "    note: the spec says {declared} members, and `{} deploy` applies the spec: set replicas: {} in the spec file (or pass --replicas {}) to keep this size",
            pgset_spec::contract::program_name(),
            spec.replicas,
            spec.replicas
        );
    }
    stage.done("");
    Ok(())
}

/// The spec with `members` members, judged before anything changes: a count out of range is
/// refused with what to do instead.
fn scaled(spec: ValidSpec, members: i32) -> Result<ValidSpec> {
    if !(1..=MAX_REPLICAS).contains(&members) {
        bail!(
            "invalid N {members}: scale takes 1 to {MAX_REPLICAS} members; to stop the cluster use `{} down`",
            pgset_spec::contract::program_name()
        );
    }
    Ok(spec.with_replicas(members)?)
}

/// Templates mode on pgset's NFS volumes: a new member needs its directory in the cluster's
/// directory on the export and its pre-bound volume before its pod can start. On the NFS host
/// (as root, once the `nfs` stage made the cluster's directory) the missing member directories
/// are created as the `nfs` stage makes them (owned by the postgres uid, mode 0700); the
/// volumes are applied from anywhere. Progress goes to stderr only.
pub(crate) async fn prepare_member_volumes(
    ctx: &RunContext,
    spec: &ValidSpec,
    client: &kube::Client,
) -> Result<()> {
    let missing = (0..spec.replicas).any(|o| !spec.member_export_dir(o).exists());
    if spec.cluster_export_dir().is_dir() && nix::unistd::geteuid().is_root() {
        let made = pgset_nfs::make_member_dirs(&pgset_nfs::HostPaths::default(), spec)
            .context("make the new members' directories")?;
        for dir in &made {
            ctx.reporter().line(&format!(
                "    created {} owned by {}:{} with mode 0700",
                dir.display(),
                spec.postgres.uid,
                spec.postgres.gid
            ));
        }
    } else if missing {
        ctx.reporter().line(&format!(
            "    note: cannot create member directories here; on the NFS host, run `{} nfs -n {} --name {} --storage templates --replicas {}` so that {}/{}-N exist",
            pgset_spec::contract::program_name(),
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
#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::ClusterSpec;

    fn refused() -> String {
        format!(
            "scale takes 1 to 32 members; to stop the cluster use `{} down`",
            pgset_spec::contract::program_name()
        )
    }

    #[test]
    fn a_count_out_of_range_is_refused_with_what_to_do_instead() {
        let spec = ClusterSpec::default().validated().unwrap();
        for bad in [0, -1, MAX_REPLICAS + 1] {
            let e = scaled(spec.clone(), bad).unwrap_err().to_string();
            assert_eq!(e, format!("invalid N {bad}: {}", refused()));
        }
        let three = scaled(spec.clone(), 3).unwrap();
        assert_eq!(three.replicas, 3);
        assert_eq!(three.name, spec.name, "only the count changes");
    }

    #[tokio::test]
    async fn scale_with_a_bad_count_fails_before_it_reaches_for_a_cluster() {
        // The client flags name a kubeconfig that does not exist: any step that reached for
        // the cluster would fail on it instead, so the error shows nothing was tried.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pgset.yaml");
        std::fs::write(&config, "replicas: 3\n").unwrap();
        for bad in [0, MAX_REPLICAS + 1] {
            let args = Args {
                members: bad,
                wait: WaitArgs {
                    no_wait: true,
                    timeout: std::time::Duration::from_secs(1),
                },
                spec: SpecArgs {
                    config: Some(config.clone()),
                    ..SpecArgs::default()
                },
                client: ClientArgs {
                    kubeconfig: Some(dir.path().join("no-such-kubeconfig")),
                    ..ClientArgs::default()
                },
            };
            let e = format!("{:#}", run(args).await.unwrap_err());
            assert_eq!(e, format!("invalid N {bad}: {}", refused()));
        }
    }
}
