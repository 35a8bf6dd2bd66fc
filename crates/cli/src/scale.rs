//! `cargo xtask scale N`: set the number of members (ordered: new members start one after the
//! other; scale-down removes the highest ordinals and keeps their claims and data, never the
//! master, and pauses automatic failover while it runs).

use anyhow::{Context, Result, bail};
use pgset_spec::{MAX_REPLICAS, StorageMode, ValidSpec};

use crate::args::{ClientArgs, SpecArgs, WaitArgs};
use crate::context::RunContext;

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
    let ctx = RunContext::for_command(&args.spec, &args.client, None)?;
    let declared = ctx.spec().replicas;
    let spec = scaled(ctx.spec().clone(), args.members)?;
    let client = ctx.client().await?;
    let reporter = ctx.reporter();
    if spec.storage.mode == StorageMode::Templates && spec.storage.storage_class.is_none() {
        ctx.prepare_member_volumes(&spec).await?;
    }
    let stage = reporter.stage(format!(
        "scale StatefulSet {} in namespace {} to {} members",
        spec.statefulset_name(),
        spec.namespace,
        spec.replicas
    ));
    let wait = args.wait.timeout();
    let outcome = pgset_deploy::scale::scale(client, &spec, spec.replicas, wait, &mut |l: &str| {
        reporter.line(&format!("    {l}"))
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
        reporter.line(&format!(
            "    data of removed members kept: {} (scaling up again reuses it)",
            kept.join(", ")
        ));
    }
    if declared != spec.replicas {
        reporter.line(&format!(
            "    note: the spec says {declared} members, and `{} deploy` applies the spec: set replicas: {} in the spec file (or pass --replicas {}) to keep this size",
            pgset_spec::contract::program_name(),
            spec.replicas,
            spec.replicas
        ));
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
