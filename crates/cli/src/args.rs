//! The arguments the commands share, defined once and flattened into each command's own: the
//! spec (file and overrides), the cluster client, `--dry-run`, the output formats, the waits
//! and the mount probe's flags.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use pgset_spec::{ClusterSpec, Overrides, StorageMode, ValidSpec};

/// What `--dry-run` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Print the objects as YAML on stdout; no cluster needed
    Client,
    /// Send every write with dryRun=All: the API server validates, changes nothing
    Server,
}

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

/// `--no-wait` and `--timeout` of the commands that wait for the members to be Ready.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return once the StatefulSet is written, without waiting for the members to be Ready
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the members (e.g. 300, 90s, 5m)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

impl WaitArgs {
    /// The time to wait, or `None` with `--no-wait`.
    pub fn timeout(&self) -> Option<Duration> {
        (!self.no_wait).then_some(self.timeout)
    }
}

/// Parses a timeout: seconds (`300`), or a number with `s`, `m` or `h`.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use e.g. 300, 90s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use s, m or h")),
    };
    if secs == 0 {
        return Err("a timeout of 0 can never be met: give at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

/// The per-node mount probe's flags (`doctor` and `up`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Do not run the per-node mount probe (a pod, claim and volume per node, removed after)
    #[arg(long, conflicts_with = "probe")]
    pub no_mount_probe: bool,
    /// Run the mount probe even when it proved the same volumes, export and nodes before
    #[arg(long)]
    pub probe: bool,
    /// How long each node's probe pod may take to mount the export and list it, image pull
    /// included (e.g. 120, 90s, 2m)
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_timeout)]
    pub probe_timeout: Duration,
}

impl Default for ProbeArgs {
    fn default() -> Self {
        ProbeArgs {
            no_mount_probe: false,
            probe: false,
            probe_timeout: pgset_deploy::mount_probe::DEFAULT_PROBE_TIMEOUT,
        }
    }
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A column-aligned table
    #[default]
    Table,
    /// JSON (stable field names, for scripts)
    Json,
}

/// Output of `status` and `local status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    /// A summary, one row per member, each member's details, warnings and the verdict
    #[default]
    #[value(alias = "text")]
    Table,
    /// JSON (stable field names, for scripts)
    Json,
    /// YAML
    Yaml,
}

/// Output of `switchover` and `failover`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OneLine {
    /// One line: old → new master, timeline, write gap, how the old master rejoined
    #[default]
    Text,
    /// JSON (stable field names, for scripts)
    Json,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_and_without_units() {
        assert_eq!(parse_timeout("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("5 minutes").is_err());
        assert!(parse_timeout("m").is_err());
        assert!(parse_timeout("-1").is_err());
    }
}
