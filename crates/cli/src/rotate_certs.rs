//! `pgset rotate-certs`: reissue the server and replication certificates now (the cluster's
//! Secrets, or a local set's files with `--local DIR`); members reload them without a restart.
//! With `--ca`, a new CA with overlap: the new CA is trusted by every member before any
//! certificate is its, and the old one leaves the trust bundle once no certificate of it is in
//! use (`pgset_deploy::tls::ca_rotation`, `pgset_local::ca_rotation`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::args::{ClientArgs, SpecArgs, parse_timeout};

/// Arguments of `pgset rotate-certs`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Rotate the certificates of the local set in DIR (made by `local up --tls`) instead of
    /// the cluster's
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Rotate the CA too, with overlap: the new CA joins the trust bundle, the certificates
    /// are reissued by it once every member has loaded that bundle, and the old CA leaves the
    /// bundle once every member has loaded the new certificates (clients: fetch the bundle
    /// again, e.g. with `connect-info`'s command)
    #[arg(long)]
    pub ca: bool,
    /// With --ca: how long each step waits for every member to load the new files (a
    /// cluster's kubelet updates a mounted Secret within a minute or two)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_timeout)]
    pub step_timeout: Duration,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Reissues the certificates (and with `--ca` the CA): one line per object or file made.
pub async fn rotate_certs(args: RotateArgs) -> Result<()> {
    if let Some(dir) = &args.local {
        if args.ca {
            for line in pgset_local::ca_rotation::rotate_ca(dir, args.step_timeout)
                .await
                .context("rotate the local set's CA")?
            {
                println!("{line}");
            }
            return Ok(());
        }
        for line in pgset_local::rotate_certs(dir).context("rotate the local set's certificates")? {
            println!("{line}");
        }
        println!("every running member reloads them within a few seconds (no restart)");
        return Ok(());
    }
    let spec = args.spec.load(&args.client)?;
    let client = args.client.client().await?;
    if args.ca {
        pgset_deploy::tls::ca_rotation::rotate_ca(
            &client,
            &spec,
            pgset_deploy::tls::now(),
            args.step_timeout,
            &mut |line: &str| println!("{line}"),
        )
        .await
        .context("rotate the cluster's CA")?;
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{Cli, Task};

    #[test]
    fn ca_rotation_is_asked_with_ca_and_each_step_waits_as_long_as_given() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["pgset", "rotate-certs"];
            argv.extend(args);
            match Cli::try_parse_from(argv).map(|c| c.task) {
                Ok(Task::RotateCerts(a)) => Ok(a),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        let plain = parse(&[]).unwrap();
        assert!(!plain.ca);
        assert_eq!(plain.step_timeout, std::time::Duration::from_secs(300));
        let ca = parse(&["--local", "/tmp/set", "--ca", "--step-timeout", "90s"]).unwrap();
        assert!(ca.ca);
        assert_eq!(ca.step_timeout, std::time::Duration::from_secs(90));
        let e = parse(&["--ca", "--step-timeout", "0"]).unwrap_err();
        assert!(e.contains("can never be met"), "{e}");
    }
}
