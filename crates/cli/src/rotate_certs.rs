//! `pgset rotate-certs`: reissue the server and replication certificates now (the cluster's
//! Secrets, or a local set's files with `--local DIR`); members reload them without a restart.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::args::{ClientArgs, SpecArgs};

/// Arguments of `pgset rotate-certs`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Rotate the certificates of the local set in DIR (made by `local up --tls`) instead of
    /// the cluster's
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Reissues the certificates: one line per object or file made.
pub async fn rotate_certs(args: RotateArgs) -> Result<()> {
    if let Some(dir) = &args.local {
        for line in pgset_local::rotate_certs(dir).context("rotate the local set's certificates")? {
            println!("{line}");
        }
        println!("every running member reloads them within a few seconds (no restart)");
        return Ok(());
    }
    let spec = args.spec.load(&args.client)?;
    let client = args.client.client().await?;
    pgset_deploy::tls::rotate(
        &client,
        &spec,
        pgset_deploy::apply::ApplyMode::Apply,
        pgset_deploy::tls::now(),
        &mut |line: &str| println!("{line}"),
    )
    .await
    .context("rotate the cluster's certificates")?;
    println!(
        "members reload them once the kubelet has updated their mounted Secrets (up to a minute or so), without a restart"
    );
    Ok(())
}
