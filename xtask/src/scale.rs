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
