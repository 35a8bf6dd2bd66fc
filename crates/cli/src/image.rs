//! `cargo xtask image`: builds the static agent, packs it into an OCI image archive and, with
//! `--import`, loads the archive into the node's containerd where the kubelet finds it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use pgset_spec::VERSION;

use crate::args::{ClientArgs, DryRunArg, SpecArgs};
use crate::cli::require_checkout;
use crate::context::RunContext;
use crate::progress::Reporter;
use pgset_image::containerd::{
    CONTAINERD_NAMESPACE, import_command, import_preflight, list_command,
};
use pgset_image::reference::ImageName;
use pgset_image::{oci, static_binary};

/// Arguments of `cargo xtask image`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("dry_run", |a| a.help("Print the build, the archive and the import that would happen, and change nothing. `server` is the same here: this command writes nothing to the API server")))]
pub struct Args {
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Where to write the archive [default: pgset-agent-<version>.oci.tar in the target
    /// directory: $CARGO_TARGET_DIR, else target/ in the workspace]
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Then load the archive into containerd's k8s.io namespace with `ctr` (as root, on the node)
    #[arg(long)]
    pub import: bool,
    #[command(flatten)]
    pub dry_run: DryRunArg,
}

/// The default archive path: `pgset-agent-<version>.oci.tar` in the target directory.
pub fn default_archive_path(target_root: &Path) -> PathBuf {
    target_root.join(format!(
        "{}-{VERSION}.oci.tar",
        pgset_spec::contract::AGENT_BIN
    ))
}

/// What the image stage takes beyond the context.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageOptions<'a> {
    /// Where to write the archive (`None`: the default path in the target directory).
    pub out: Option<&'a Path>,
    /// Then load the archive into containerd.
    pub import: bool,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let ctx = RunContext::for_command(&args.spec, &args.client, args.dry_run.mode)?;
    stage(
        &ctx,
        &StageOptions {
            out: args.out.as_deref(),
            import: args.import,
        },
    )
    .await
}

/// Builds the agent image of the invocation's spec and writes its archive, then imports it
/// when asked (or, in a dry run, says what would be done): `image`, and `up`'s image stage.
pub async fn stage(ctx: &RunContext, opts: &StageOptions<'_>) -> Result<()> {
    let reporter = ctx.reporter();
    let name = ImageName::parse(&ctx.spec().agent.image)
        .map_err(|problem| anyhow!(problem))
        .context("name the agent image")?;
    let workspace = require_checkout("building the agent image")?;
    let out = opts.out.map_or_else(
        || default_archive_path(&static_binary::target_root(&workspace)),
        Path::to_path_buf,
    );

    if ctx.dry_run().is_some() {
        print_plan(reporter, &workspace, &out, &name, opts.import);
        if opts.import {
            import_preflight()?;
        }
        return Ok(());
    }
    // Refuse an import that cannot happen before spending minutes on the build.
    let ctr = if opts.import {
        Some(import_preflight()?)
    } else {
        None
    };

    let archive = {
        let (workspace, out, name) = (workspace.clone(), out.clone(), name.clone());
        let reporter = reporter.clone();
        tokio::task::spawn_blocking(move || build_archive(&reporter, &workspace, &out, &name))
            .await
            .context("join the image build")??
    };
    reporter.result(&archive.summary());

    if let Some(ctr) = ctr {
        let stage = reporter.stage(format!("import {} into containerd", name.full));
        pgset_image::containerd::import(&ctr, &out, &name)?;
        stage.done(&name.full);
        reporter.result(&format!(
            "imported {} into containerd namespace {CONTAINERD_NAMESPACE}",
            name.full
        ));
    }
    Ok(())
}

/// The archive written by [`build_archive`].
#[derive(Debug, Clone)]
pub struct ArchiveReport {
    /// The archive file.
    pub path: PathBuf,
    /// The image name recorded in it.
    pub name: String,
    /// `sha256:…` of the manifest (the image's digest).
    pub manifest_digest: String,
    /// Size of the archive in bytes.
    pub size: u64,
    /// False when the file already held exactly these bytes and was left alone.
    pub written: bool,
}

impl ArchiveReport {
    fn summary(&self) -> String {
        format!(
            "{} {} ({} bytes): image {} {}",
            if self.written { "wrote" } else { "unchanged" },
            self.path.display(),
            self.size,
            self.name,
            self.manifest_digest
        )
    }
}

/// Builds the static agent and writes the image archive to `out` (atomically; left untouched
/// when it already holds the same bytes).
pub fn build_archive(
    reporter: &Reporter,
    workspace: &Path,
    out: &Path,
    name: &ImageName,
) -> Result<ArchiveReport> {
    let stage = reporter.stage("build the static pgset-agent (release, crt-static)");
    let target_dir = static_binary::image_target_dir(&static_binary::target_root(workspace));
    let executable_path = static_binary::build(workspace, &target_dir, VERSION)?;
    stage.done(&executable_path.display().to_string());

    let stage = reporter.stage(format!("pack the image archive {}", out.display()));
    let executable = std::fs::read(&executable_path)
        .with_context(|| format!("read {}", executable_path.display()))?;
    let archive = oci::pack(oci::ImageContents {
        executable: &executable,
        name,
        version: VERSION,
    })
    .context("pack the OCI image archive")?;
    let written = write_if_changed(out, &archive.bytes)?;
    stage.done(&format!(
        "manifest {}, layer {} bytes",
        archive.manifest.digest, archive.layer.size
    ));
    Ok(ArchiveReport {
        path: out.to_owned(),
        name: name.full.clone(),
        manifest_digest: archive.manifest.digest,
        size: archive.bytes.len() as u64,
        written,
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory renamed over it, so
/// a reader never sees half an archive. Returns false, writing nothing, when the file already
/// holds exactly these bytes.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(false);
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("write {}", file.path().display()))?;
    std::fs::set_permissions(
        file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .with_context(|| format!("set the mode of {}", file.path().display()))?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("rename the new archive to {}", path.display()))?;
    Ok(true)
}

/// What the task would do, for `--dry-run`.
fn print_plan(reporter: &Reporter, workspace: &Path, out: &Path, name: &ImageName, import: bool) {
    let target_dir = static_binary::image_target_dir(&static_binary::target_root(workspace));
    let cargo = static_binary::cargo_program();
    let build = static_binary::build_command(
        &cargo,
        workspace,
        &target_dir,
        &static_binary::enclosing_package_vars(),
    );
    reporter.result(&format!("would build:   {build}"));
    // The command's log line hides environment values; these are build flags, not secrets.
    for (name, value) in build.get_envs() {
        reporter.result(&format!(
            "               with {}={}",
            name.to_string_lossy(),
            value.to_string_lossy()
        ));
    }
    reporter.result(&format!(
        "would check:   {} is a static x86-64 executable and its --version prints {VERSION}",
        static_binary::built_path(&target_dir).display()
    ));
    reporter.result(&format!(
        "would write:   {} (image {}, tag {}, {}/{}, entrypoint {}, user {})",
        out.display(),
        name.full,
        name.tag,
        oci::OS,
        oci::ARCHITECTURE,
        pgset_spec::contract::AGENT_IMAGE_BINARY,
        oci::IMAGE_USER
    ));
    if import {
        let ctr = which::which("ctr").unwrap_or_else(|_| PathBuf::from("ctr"));
        reporter.result(&format!("would import:  {}", import_command(&ctr, out)));
        reporter.result(&format!(
            "would confirm: {} lists {}",
            list_command(&ctr),
            name.full
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_archive_is_versioned_under_target() {
        assert_eq!(
            default_archive_path(Path::new("/w/target")),
            PathBuf::from(format!("/w/target/pgset-agent-{VERSION}.oci.tar"))
        );
    }

    #[test]
    fn an_archive_is_written_once_and_then_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("agent.oci.tar");
        assert!(write_if_changed(&path, b"first").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(!write_if_changed(&path, b"first").unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
        assert!(write_if_changed(&path, b"second").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }
}
