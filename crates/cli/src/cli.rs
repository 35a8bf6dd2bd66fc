//! What the binary knows of itself: the source tree it was built from (and the agent built
//! from it), the exit with a code of a verdict, and the report files some commands write.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pgset_command::HostCommand;

/// A stage's progress lines (`==> label`, `label done in 1.2s`), owned by the invocation's
/// [`Reporter`](crate::progress::Reporter).
pub use crate::progress::Stage;

/// The workspace root this binary was built from (this package lives in its `crates/cli`),
/// whether or not it still exists.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).map(PathBuf::from).unwrap_or(here)
}

/// The source tree this binary was built from, when it is still there (`cargo xtask`, or a
/// `pgset` installed from a checkout that was kept); `None` for an installed binary whose
/// sources are gone.
pub fn checkout() -> Option<PathBuf> {
    let root = workspace_root();
    root.join("crates")
        .join("cli")
        .join("Cargo.toml")
        .is_file()
        .then_some(root)
}

/// The source tree, or an error naming what needs it and how to get it.
pub fn require_checkout(what: &str) -> anyhow::Result<PathBuf> {
    checkout().ok_or_else(|| {
        anyhow::anyhow!(
            "{what} needs pgset's source tree, and the one this binary was built from ({}) is \
             gone: run it from a checkout (`cargo xtask ...` in a clone of pgset)",
            workspace_root().display()
        )
    })
}

/// The agent binary: built from the source tree when there is one (next to this binary in the
/// target dir); for an installed `pgset` without its sources, the `pgset-agent` installed beside
/// it (`cargo install --path crates/agent`) or on `PATH`.
pub fn build_agent() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate this binary")?;
    let profile_dir = exe.parent().context("this binary has no directory")?;
    let Some(root) = checkout() else {
        return installed_agent(profile_dir);
    };
    let stage = Stage::start("build pgset-agent");
    let bin = build_agent_in(&root.join("Cargo.toml"), profile_dir).context("build the agent")?;
    stage.done(&bin.display().to_string());
    Ok(bin)
}

/// An installed agent: beside this binary, else on `PATH`.
fn installed_agent(dir: &Path) -> Result<PathBuf> {
    let beside = dir.join("pgset-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    which::which("pgset-agent").map_err(|_| {
        anyhow::anyhow!(
            "no pgset-agent binary: this pgset has no source tree to build it from, and none is \
             installed beside it ({}) or on PATH; install it (`cargo install --path crates/agent` \
             from a checkout) or pass --agent-bin",
            dir.display()
        )
    })
}

/// Builds the agent binary of the workspace at `manifest` with cargo (debug profile, the
/// inherited CARGO_TARGET_DIR) and returns its path in `profile_dir` (the directory holding the
/// caller's own binary, e.g. `target/debug`).
pub fn build_agent_in(manifest: &Path, profile_dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    HostCommand::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "pgset-agent",
            "--bin",
            "pgset-agent",
            "--manifest-path",
        ])
        .arg(manifest)
        .run()?;
    let bin = profile_dir.join("pgset-agent");
    if !bin.is_file() {
        anyhow::bail!(
            "{} was not built (is CARGO_TARGET_DIR the same?)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Ends a task with a given exit code and a message, without the `error:` prefix: a verdict
/// for scripts (e.g. `local status` says a set is not healthy with exit code 2).
#[derive(Debug)]
pub struct Exit {
    /// The process exit code.
    pub code: u8,
    /// What to print on stderr.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Checks a `--report FILE` before anything runs: its directory exists and it is not a
/// directory itself (the file is written, or replaced, when the run ends).
pub fn check_report_path(path: &std::path::Path) -> Result<()> {
    if path.is_dir() {
        bail!(
            "--report {}: is a directory; name a file, e.g. {}/report.md",
            path.display(),
            path.display()
        );
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        bail!(
            "--report {}: the directory {} does not exist; create it or name another file",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Writes a report file (after [`check_report_path`]) and says where.
pub fn write_report(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write the report {}", path.display()))?;
    crate::progress::Reporter::current().line(&format!("report written to {}", path.display()));
    Ok(())
}

#[cfg(test)]
mod report_path_tests {
    use super::*;

    #[test]
    fn a_report_path_needs_an_existing_directory_and_is_not_one() {
        let t = tempfile::tempdir().unwrap();
        check_report_path(&t.path().join("r.md")).unwrap();
        check_report_path(std::path::Path::new("r.md")).unwrap();
        let e = check_report_path(t.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = check_report_path(&t.path().join("missing/r.md"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!t.path().join("missing").exists());
    }
}
