//! Arguments shared by the tasks: the spec (file + overrides), the cluster client; progress
//! output is [`crate::progress`]'s.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use pgset_spec::{ClusterSpec, Overrides, StorageMode, ValidSpec};

use crate::deploy::DryRun;

/// `--dry-run[=MODE]` of every command that can change something: one definition, flattened
/// into each command's arguments (`#[command(flatten)]`); each command words its help with
/// `#[command(mut_arg("dry_run", ...))]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
pub struct DryRunArg {
    /// Change nothing (client, the default), or have the API server check the writes (server)
    #[arg(
        id = "dry_run",
        long = "dry-run",
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "client",
        value_enum
    )]
    pub mode: Option<DryRun>,
}

impl DryRunArg {
    /// True when `--dry-run` was given, in either mode.
    pub fn is_set(&self) -> bool {
        self.mode.is_some()
    }
}

/// `--config` and the flags that override it.
#[derive(Debug, Clone, Args, Default)]
pub struct SpecArgs {
    /// Spec file [default: ./pgset.yaml when present]
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Cluster name
    #[arg(long, value_name = "NAME", global = true)]
    pub name: Option<String>,
    /// Number of members (ordinal 0 is the master)
    #[arg(long, value_name = "N", global = true, allow_negative_numbers = true)]
    pub replicas: Option<i32>,
    /// Storage mode: shared (one NFS claim, seeds 000/001) or templates (a claim per member)
    #[arg(long, value_name = "MODE", global = true)]
    pub storage: Option<StorageMode>,
    /// NFS export path on the NFS host
    #[arg(long, value_name = "PATH", global = true)]
    pub nfs_export: Option<PathBuf>,
    /// NFS server address as the nodes reach it
    #[arg(long, value_name = "ADDR", global = true)]
    pub nfs_server: Option<String>,
    /// PostgreSQL image
    #[arg(long, value_name = "IMAGE", global = true)]
    pub postgres_image: Option<String>,
    /// Agent image
    #[arg(long, value_name = "IMAGE", global = true)]
    pub agent_image: Option<String>,
    /// Let the members run on control-plane nodes (tolerate kubeadm's
    /// node-role.kubernetes.io/control-plane:NoSchedule taint) [spec: tolerateControlPlane]
    #[arg(long, global = true)]
    pub tolerate_control_plane: bool,
}

impl SpecArgs {
    /// Loads and validates the spec; `namespace` comes from `-n/--namespace`.
    pub fn load(&self, client: &ClientArgs) -> Result<ValidSpec> {
        #[cfg(test)]
        test_counts::count(&test_counts::SPEC_LOADS);
        let overrides = Overrides {
            name: self.name.clone(),
            namespace: client.namespace.clone(),
            replicas: self.replicas,
            storage: self.storage,
            nfs_export: self.nfs_export.clone(),
            nfs_server: self.nfs_server.clone(),
            postgres_image: self.postgres_image.clone(),
            agent_image: self.agent_image.clone(),
            tolerate_control_plane: self.tolerate_control_plane.then_some(true),
        };
        Ok(ClusterSpec::load(self.config.as_deref(), &overrides)?)
    }
}

/// kubectl-style client flags. A named kubeconfig or context that fails is an error, never a
/// silent fallback to another cluster.
#[derive(Debug, Clone, Args, Default)]
pub struct ClientArgs {
    /// Path to the kubeconfig file [default: $KUBECONFIG, then ~/.kube/config]
    #[arg(long, value_name = "FILE", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use [default: the current context]
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,
    /// Namespace of the cluster's objects [default: the spec's, else `default`]
    #[arg(short = 'n', long, value_name = "NS", global = true)]
    pub namespace: Option<String>,
}

impl ClientArgs {
    /// The kubeconfig file that will be read, if any: `--kubeconfig`, `$KUBECONFIG` (first
    /// entry), `~/.kube/config`.
    pub fn kubeconfig_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.kubeconfig {
            return Some(p.clone());
        }
        if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            return std::env::split_paths(&v).next();
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
    }

    /// Builds the client configuration without contacting the cluster.
    pub async fn config(&self) -> Result<kube::Config> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            cluster: None,
            user: None,
        };
        let explicit = self.kubeconfig.is_some()
            || std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
        let path = self.kubeconfig_path();
        match path {
            Some(path) if explicit || path.exists() => {
                if !path.exists() {
                    bail!(
                        "kubeconfig {} does not exist: pass --kubeconfig FILE or set KUBECONFIG to a cluster's kubeconfig (on a kubeadm host: /etc/kubernetes/admin.conf)",
                        path.display()
                    );
                }
                let kubeconfig = kube::config::Kubeconfig::read_from(&path)
                    .with_context(|| format!("read kubeconfig {}", path.display()))?;
                if let Some(ctx) = &self.context
                    && !kubeconfig.contexts.iter().any(|c| &c.name == ctx)
                {
                    let known: Vec<&str> = kubeconfig
                        .contexts
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect();
                    bail!(
                        "context {ctx:?} is not in {}: use one of {known:?}",
                        path.display()
                    );
                }
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("load kubeconfig {}", path.display()))
            }
            _ => {
                if self.context.is_some() {
                    bail!(
                        "--context given but no kubeconfig found: pass --kubeconfig FILE or set KUBECONFIG"
                    );
                }
                kube::Config::incluster().map_err(|_| {
                    anyhow::anyhow!(
                        "no kubeconfig found: pass --kubeconfig FILE or set KUBECONFIG (on a kubeadm host: /etc/kubernetes/admin.conf)"
                    )
                })
            }
        }
    }

    /// Whether a cluster is named (`--kubeconfig`, `--context` or `$KUBECONFIG`): a named one
    /// must answer; without one, commands that can go on without a cluster do.
    pub fn named(&self) -> bool {
        self.kubeconfig.is_some()
            || self.context.is_some()
            || std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
    }

    /// Builds a client (does not contact the cluster yet).
    pub async fn client(&self) -> Result<kube::Client> {
        #[cfg(test)]
        test_counts::count(&test_counts::CLIENTS_BUILT);
        let config = self.config().await?;
        kube::Client::try_from(config).context("create the Kubernetes client")
    }
}

/// How often this thread loaded a spec and built a client: for the unit tests that check an
/// invocation does each once (a `#[tokio::test]` runs its futures on its own thread).
#[cfg(test)]
pub(crate) mod test_counts {
    use std::cell::Cell;
    use std::thread::LocalKey;

    thread_local! {
        pub(crate) static SPEC_LOADS: Cell<usize> = const { Cell::new(0) };
        pub(crate) static CLIENTS_BUILT: Cell<usize> = const { Cell::new(0) };
    }

    pub(crate) fn count(counter: &'static LocalKey<Cell<usize>>) {
        counter.with(|c| c.set(c.get() + 1));
    }

    /// Starts counting again on this thread.
    pub(crate) fn reset() {
        SPEC_LOADS.with(|c| c.set(0));
        CLIENTS_BUILT.with(|c| c.set(0));
    }

    pub(crate) fn spec_loads() -> usize {
        SPEC_LOADS.with(Cell::get)
    }

    pub(crate) fn clients_built() -> usize {
        CLIENTS_BUILT.with(Cell::get)
    }
}

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
    eprintln!("report written to {}", path.display());
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
