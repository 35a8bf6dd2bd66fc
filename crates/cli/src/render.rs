//! `cargo xtask render`: the objects as YAML files in `manifests/`; `--check` fails when the
//! committed files differ from what the code builds.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use pgset_deploy::render::{ALL_MANIFEST_FILES, manifest_drift, manifest_files};

use crate::args::{ClientArgs, SpecArgs};
use crate::cli::checkout;
use crate::context::RunContext;

/// Arguments of `cargo xtask render`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write into [default: manifests/ of the source tree, else ./manifests]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write nothing; fail when the files differ from the code
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let ctx = RunContext::for_command(&args.spec, &args.client, None)?;
    let (spec, reporter) = (ctx.spec(), ctx.reporter());
    let dir = args.out.unwrap_or_else(|| {
        checkout()
            .map(|root| root.join("manifests"))
            .unwrap_or_else(|| PathBuf::from("manifests"))
    });
    let files = manifest_files(spec).context("render the objects")?;
    if args.check {
        let stale = manifest_drift(&dir, &files);
        if !stale.is_empty() {
            bail!(
                "manifests are out of date ({}): run `{} render`",
                stale.join("; "),
                pgset_spec::contract::program_name()
            );
        }
        reporter.line(&format!("manifests in {} are up to date", dir.display()));
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for file in &files {
        let path = dir.join(file.name);
        let unchanged = std::fs::read_to_string(&path).is_ok_and(|c| c == file.content);
        if unchanged {
            reporter.line(&format!("unchanged {}", path.display()));
            continue;
        }
        std::fs::write(&path, &file.content)
            .with_context(|| format!("write {}", path.display()))?;
        reporter.line(&format!("wrote {}", path.display()));
    }
    for name in ALL_MANIFEST_FILES {
        let path = dir.join(name);
        if !files.iter().any(|f| f.name == *name) && path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            reporter.line(&format!(
                "removed {} (not rendered for this spec)",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_system_directory_as_the_export_is_refused_before_anything_is_written() {
        for export in ["/etc", "/usr", "/"] {
            let out = tempfile::tempdir().unwrap();
            let args = Args {
                out: Some(out.path().join("manifests")),
                check: false,
                spec: SpecArgs {
                    nfs_export: Some(export.into()),
                    ..SpecArgs::default()
                },
                client: ClientArgs::default(),
            };
            let err = format!("{:#}", run(args).await.unwrap_err());
            assert!(
                err.contains("nfs.export (--nfs-export)")
                    && err.contains(pgset_spec::SYSTEM_EXPORT_PATH_FIX),
                "{export}: {err}"
            );
            assert!(!out.path().join("manifests").exists(), "{export}");
        }
    }
}
