//! `cargo xtask down`: scale to 0 and wait, then delete the objects in reverse order. Claims,
//! PersistentVolumes, data and the Secret stay unless `--purge --yes`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use pgset_deploy::teardown::{Purge, down};

use crate::args::{ClientArgs, SpecArgs, parse_timeout};
use crate::context::RunContext;

/// Arguments of `cargo xtask down`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also delete the claims, pgset's PersistentVolumes, the Secret, the cluster record and its Leases (needs --yes)
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
    let ctx = RunContext::for_command(&args.spec, &args.client, None)?;
    let (spec, reporter) = (ctx.spec(), ctx.reporter());
    let purge = match (args.purge, args.yes) {
        (true, true) => Purge::Everything,
        (true, false) => bail!(
            "--purge deletes the claims, PersistentVolumes, Secret, cluster record and Leases of cluster {} in namespace {} (the data's volumes, passwords and history): add --yes to confirm; nothing was changed",
            spec.name,
            spec.namespace
        ),
        (false, _) => Purge::Keep,
    };
    let client = ctx.client().await?;
    let stage = reporter.stage(format!(
        "take cluster {} off namespace {}{}",
        spec.name,
        spec.namespace,
        if purge == Purge::Everything {
            ", purging claims, volumes and Secret"
        } else {
            ""
        }
    ));
    down(client, spec, purge, args.timeout, &mut |l: &str| {
        reporter.line(&format!("    {l}"))
    })
    .await
    .context("tear the cluster down")?;
    stage.done("");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig naming a server nothing listens on: any request would fail to connect,
    /// so an error that is not a connection error proves no request was sent.
    fn unreachable_cluster() -> (tempfile::TempDir, ClientArgs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\ncontexts:\n- name: lab\n  context: {cluster: c, user: u}\ncurrent-context: lab\nusers:\n- name: u\n  user: {token: t}\n",
        )
        .unwrap();
        let client = ClientArgs {
            kubeconfig: Some(path),
            ..ClientArgs::default()
        };
        (dir, client)
    }

    #[tokio::test]
    async fn purge_without_yes_is_refused_before_any_request() {
        let (_dir, client) = unreachable_cluster();
        let args = Args {
            purge: true,
            yes: false,
            timeout: Duration::from_secs(5),
            spec: SpecArgs::default(),
            client,
        };
        let err = format!("{:#}", run(args).await.unwrap_err());
        assert!(err.contains("add --yes to confirm"), "{err}");
        assert!(err.contains("nothing was changed"), "{err}");
        assert!(!err.contains("onnect"), "a request was attempted: {err}");
    }

    #[tokio::test]
    async fn invalid_spec_is_refused_before_any_request() {
        let (_dir, client) = unreachable_cluster();
        let args = Args {
            purge: false,
            yes: false,
            timeout: Duration::from_secs(5),
            spec: SpecArgs {
                name: Some("Not_A_Name".into()),
                ..SpecArgs::default()
            },
            client,
        };
        let err = format!("{:#}", run(args).await.unwrap_err());
        assert!(err.contains("name"), "{err}");
        assert!(!err.contains("onnect"), "a request was attempted: {err}");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_reported_not_skipped() {
        let (_dir, client) = unreachable_cluster();
        let args = Args {
            purge: false,
            yes: false,
            timeout: Duration::from_secs(5),
            spec: SpecArgs::default(),
            client,
        };
        let err = format!("{:#}", run(args).await.unwrap_err());
        assert!(err.contains("onnect"), "{err}");
    }
}
