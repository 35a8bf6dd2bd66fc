//! One value per invocation that the commands and `up`'s stages share: the validated spec
//! (loaded once, read-only from here on), the client flags and a client built once on first
//! use, the cluster's nodes listed once under one policy, the dry-run mode, the progress
//! reporter, what `up`'s preflight gathered, and what two commands both need of the cluster's
//! storage (the NFS server address the volumes name, the volumes applied, this NFS host's plan).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use pgset_command::Executor;
use pgset_deploy::apply::ApplyMode;
use pgset_deploy::nodes::internal_ips;
use pgset_deploy::storage::storage_objects;
use pgset_nfs::{
    Blocker, ExportOptions, HostFacts, HostPaths, Step, default_clients, kept_clients,
    parse_clients,
};
use pgset_spec::ValidSpec;
use tokio::sync::OnceCell;

use crate::args::{ClientArgs, DryRun, SpecArgs};
use crate::progress::Reporter;

/// How long listing the cluster's nodes may take before the host's own network is used.
const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(15);

/// What `up`'s preflight read, kept for the stages after it so that none asks again. Empty
/// for a command run on its own (each stage then reads what it needs).
#[derive(Default)]
pub struct Gathered {
    /// This NFS host probed and planned by preflight, or why planning it failed; `None` when
    /// the NFS stage does not run.
    pub(crate) nfs_host: Option<Result<HostPlan, String>>,
    /// Whether `ctr` (containerd's client) is on this host; `None` when not looked for.
    pub(crate) ctr_here: Option<bool>,
}

/// The NFS host as probed, with the plan for it. Reading only.
pub struct HostPlan {
    /// What the probe found.
    pub facts: HostFacts,
    /// The export's clients.
    pub options: ExportOptions,
    /// What would change, in order.
    pub steps: Vec<Step>,
    /// The nodes' addresses the clients were chosen from.
    pub nodes: Vec<IpAddr>,
}

impl HostPlan {
    /// Every reason this host cannot run the plan.
    pub fn blockers(&self) -> Vec<Blocker> {
        pgset_nfs::blockers(&self.facts, &self.steps)
    }
}

/// The cluster's nodes as the invocation sees them.
#[derive(Debug, Clone, Copy)]
pub enum Nodes<'a> {
    /// Listed (by `up`'s preflight or on first use).
    Listed(&'a [Node]),
    /// No cluster was named and none answered at the default places: why not. A cluster the
    /// user named that does not answer is an error instead.
    NoCluster(&'a str),
}

/// What the stages of one invocation share.
pub struct RunContext {
    spec: ValidSpec,
    client_args: ClientArgs,
    /// The client, or why it could not be built: tried once per invocation.
    client: OnceCell<Result<kube::Client, String>>,
    /// The nodes, or why they could not be listed: listed once per invocation.
    nodes: OnceCell<Result<Vec<Node>, String>>,
    dry_run: Option<DryRun>,
    reporter: Reporter,
    gathered: Gathered,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("cluster", &self.spec.name)
            .field("namespace", &self.spec.namespace)
            .field("client_built", &matches!(self.client.get(), Some(Ok(_))))
            .field("dry_run", &self.dry_run)
            .field("reporter", &self.reporter)
            .field(
                "nodes_listed",
                &self.nodes.get().and_then(|n| n.as_ref().ok()).map(Vec::len),
            )
            .finish()
    }
}

impl RunContext {
    /// The context of a command run on its own: its spec flags loaded and validated, its
    /// client flags, its dry-run mode and the invocation's reporter.
    pub fn for_command(
        spec: &SpecArgs,
        client_args: &ClientArgs,
        dry_run: Option<DryRun>,
    ) -> Result<RunContext> {
        RunContext::with_reporter(spec, client_args, dry_run, Reporter::current())
    }

    /// [`RunContext::for_command`] with a reporter of the command's own (installed by it).
    pub fn with_reporter(
        spec: &SpecArgs,
        client_args: &ClientArgs,
        dry_run: Option<DryRun>,
        reporter: Reporter,
    ) -> Result<RunContext> {
        let spec = spec.load(client_args)?;
        Ok(RunContext::new(
            spec,
            client_args.clone(),
            dry_run,
            reporter,
        ))
    }

    /// A context over a spec that passed validation (`SpecArgs::load` validates).
    pub fn new(
        spec: ValidSpec,
        client_args: ClientArgs,
        dry_run: Option<DryRun>,
        reporter: Reporter,
    ) -> RunContext {
        RunContext {
            spec,
            client_args,
            client: OnceCell::new(),
            nodes: OnceCell::new(),
            dry_run,
            reporter,
            gathered: Gathered::default(),
        }
    }

    /// Uses a client already built instead of building another.
    pub fn with_client(self, client: kube::Client) -> RunContext {
        RunContext {
            client: OnceCell::new_with(Some(Ok(client))),
            ..self
        }
    }

    /// What `up`'s preflight read (empty for a command on its own).
    pub fn gathered(&self) -> &Gathered {
        &self.gathered
    }

    /// Where `up`'s preflight keeps what it read (the NFS host's plan is made with this
    /// context, so it is added after the context is built).
    pub(crate) fn gathered_mut(&mut self) -> &mut Gathered {
        &mut self.gathered
    }

    /// The validated spec.
    pub fn spec(&self) -> &ValidSpec {
        &self.spec
    }

    /// The kubeconfig, context and namespace flags.
    pub fn client_args(&self) -> &ClientArgs {
        &self.client_args
    }

    /// The cluster client, built on first use (a client dry run never needs one). Built once:
    /// a failure is remembered and said again to each later caller, never retried.
    pub async fn client(&self) -> Result<&kube::Client> {
        self.client
            .get_or_init(|| async {
                self.client_args
                    .client()
                    .await
                    .map_err(|e| format!("{e:#}"))
            })
            .await
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// The cluster's nodes, listed once with the context's client (within 15 s) and the same
    /// for every later caller. One policy: a cluster the user named (`--kubeconfig`,
    /// `--context`, `$KUBECONFIG`) must answer, else it is an error; without one, the
    /// caller learns there is no cluster and why ([`Nodes::NoCluster`]).
    pub async fn nodes(&self) -> Result<Nodes<'_>> {
        let listed = self
            .nodes
            .get_or_init(|| async {
                let client = self.client().await.map_err(|e| format!("{e:#}"))?;
                list_nodes(client).await.map_err(|e| format!("{e:#}"))
            })
            .await;
        match listed {
            Ok(nodes) => Ok(Nodes::Listed(nodes)),
            Err(e) if !self.cluster_named() => Ok(Nodes::NoCluster(e)),
            Err(e) => Err(anyhow!("{e}")),
        }
    }

    /// Keeps `nodes` as listed: later callers of [`RunContext::nodes`] get these.
    #[cfg(test)]
    pub(crate) fn keep_nodes(&self, nodes: Vec<Node>) {
        let _ = self.nodes.set(Ok(nodes));
    }

    /// The InternalIP addresses of the cluster's nodes ([`RunContext::nodes`]); without a
    /// cluster a note is printed and the list is empty.
    pub async fn node_addresses(&self) -> Result<Vec<IpAddr>> {
        match self.nodes().await? {
            Nodes::Listed(nodes) => Ok(internal_ips(nodes)?),
            Nodes::NoCluster(why) => {
                self.reporter.line(&format!(
                    "note: no cluster to ask for node addresses ({why})"
                ));
                Ok(Vec::new())
            }
        }
    }

    /// Whether the user named a cluster (`--kubeconfig`, `--context` or `$KUBECONFIG`): one
    /// that does not answer is then an error, never a reason to go on without a cluster.
    pub fn cluster_named(&self) -> bool {
        self.client_args.named()
    }

    /// The dry-run mode, if any.
    pub fn dry_run(&self) -> Option<DryRun> {
        self.dry_run
    }

    /// Where progress goes.
    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Probes this host and plans it as the NFS server of the context's spec; changes nothing.
    /// `clients` is `--clients`; without it the clients pgset's block in /etc/exports keeps,
    /// else the nodes' network. `nfs` and `up`'s preflight plan with this.
    pub async fn plan_nfs_host(
        &self,
        clients: Option<&str>,
        runner: &Executor,
    ) -> Result<HostPlan> {
        let spec = self.spec();
        let reporter = self.reporter();
        let explicit_clients = clients.map(parse_clients).transpose()?;
        let stage = reporter.stage("probe the host");
        let facts =
            pgset_nfs::probe(runner, &HostPaths::default(), spec).context("probe the host")?;
        stage.done(&facts.os.pretty_name);

        let nodes = if explicit_clients.is_some() && spec.nfs.server.is_some() {
            Vec::new()
        } else {
            self.node_addresses().await?
        };
        let kept = kept_clients(spec, facts.exports_file.as_deref());
        let clients = match (explicit_clients, kept) {
            (Some(c), _) => c,
            (None, Some(c)) => {
                reporter.line(&format!(
                    "note: keeping the clients of pgset's block in /etc/exports ({}); pass --clients to change them",
                    client_list(&c)
                ));
                c
            }
            (None, None) => {
                let chosen = default_clients(&nodes, &facts.addresses)?;
                if let Some(note) = chosen.note() {
                    reporter.line(&format!("note: {note}"));
                }
                chosen.clients()
            }
        };
        let options = ExportOptions { clients };
        let steps = pgset_nfs::plan(&facts, spec, &options).context("plan the NFS host")?;
        Ok(HostPlan {
            facts,
            options,
            steps,
            nodes,
        })
    }

    /// The NFS server address `spec`'s volumes name: `--nfs-server`/`nfs.server`, else
    /// detected on this host (its node address when it is a node, else its primary address)
    /// and the nodes' addresses.
    pub async fn volume_server(&self, spec: &ValidSpec) -> Result<String> {
        if let Some(s) = &spec.nfs.server {
            return Ok(s.clone());
        }
        let addresses = pgset_nfs::probe_addresses(&Executor::default())
            .context("probe this host's addresses")?;
        let nodes = self.node_addresses().await?;
        pgset_nfs::volume_server_address(spec, &addresses, &nodes).context(
            "cannot tell the NFS server's address: pass --nfs-server ADDR (the address the nodes reach the NFS host at)",
        )
    }

    /// Applies `spec`'s NFS volumes (and the shared claim) server-side under one stage line,
    /// each object's line below it ([`pgset_deploy::storage::apply_storage`] judges every
    /// volume before any is written).
    pub async fn apply_storage(
        &self,
        spec: &ValidSpec,
        server: &str,
        mode: ApplyMode,
    ) -> Result<()> {
        let client = self.client().await?;
        let reporter = self.reporter();
        let objects = storage_objects(spec, server);
        let stage = reporter.stage(format!(
            "apply {} NFS volume(s) on {server} for {}{}",
            objects.volumes.len(),
            spec.cluster_export_dir().display(),
            if mode == ApplyMode::ServerDryRun {
                ", server dry run"
            } else {
                ""
            }
        ));
        let mut progress = |line: &str| reporter.line(&format!("    {line}"));
        let outcome =
            pgset_deploy::storage::apply_storage(client, spec, &objects, mode, &mut progress)
                .await?;
        stage.done(&outcome.summary());
        Ok(())
    }

    /// Templates mode on pgset's NFS volumes: a new member of `spec` needs its directory in
    /// the cluster's directory on the export and its pre-bound volume before its pod can
    /// start. On the NFS host (as root, once the `nfs` stage made the cluster's directory) the
    /// missing member directories are created as the `nfs` stage makes them (owned by the
    /// postgres uid, mode 0700); the volumes are applied from anywhere. `scale` and `verify
    /// --scale-test` prepare their new members with this.
    pub async fn prepare_member_volumes(&self, spec: &ValidSpec) -> Result<()> {
        let missing = (0..spec.replicas).any(|o| !spec.member_export_dir(o).exists());
        if spec.cluster_export_dir().is_dir() && nix::unistd::geteuid().is_root() {
            let made = pgset_nfs::make_member_dirs(&HostPaths::default(), spec)
                .context("make the new members' directories")?;
            for dir in &made {
                self.reporter.line(&format!(
                    "    created {} owned by {}:{} with mode 0700",
                    dir.display(),
                    spec.postgres.uid,
                    spec.postgres.gid
                ));
            }
        } else if missing {
            self.reporter.line(&format!(
                "    note: cannot create member directories here; on the NFS host, run `{} nfs -n {} --name {} --storage templates --replicas {}` so that {}/{}-N exist",
                pgset_spec::contract::program_name(),
                spec.namespace,
                spec.name,
                spec.replicas,
                spec.cluster_export_dir().display(),
                spec.name
            ));
        }
        let server = self.volume_server(spec).await?;
        self.apply_storage(spec, &server, ApplyMode::Apply)
            .await
            .context("create the new members' volumes")
    }
}

/// The export's clients as one line: `10.0.2.0/24, 192.168.56.11`.
pub fn client_list(clients: &[pgset_nfs::ExportClient]) -> String {
    clients
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lists the cluster's nodes within [`NODE_LIST_TIMEOUT`].
async fn list_nodes(client: &kube::Client) -> Result<Vec<Node>> {
    let nodes = tokio::time::timeout(
        NODE_LIST_TIMEOUT,
        Api::<Node>::all(client.clone()).list(&ListParams::default()),
    )
    .await
    .context("list the cluster's nodes: no answer")?
    .context("list the cluster's nodes")?;
    Ok(nodes.items)
}

/// The nodes' InternalIP addresses for a tool without a spec (the live benchmark): listed with
/// `client_args`' client under [`RunContext::nodes`]' policy.
pub async fn node_addresses(client_args: &ClientArgs) -> Result<Vec<IpAddr>> {
    let listed = async { list_nodes(&client_args.client().await?).await }.await;
    match listed {
        Ok(nodes) => Ok(internal_ips(&nodes)?),
        Err(e) if !client_args.named() => {
            Reporter::current().line(&format!(
                "note: no cluster to ask for node addresses ({e:#})"
            ));
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::ClusterSpec;

    #[tokio::test]
    async fn the_client_is_built_on_first_use_and_a_failure_is_said_each_time() {
        crate::args::test_counts::reset();
        let ctx = RunContext::new(
            ClusterSpec::default().validated().unwrap(),
            ClientArgs {
                kubeconfig: Some("/nonexistent/kubeconfig".into()),
                ..ClientArgs::default()
            },
            Some(DryRun::Client),
            Reporter::with_terminal(false, false),
        );
        assert_eq!(ctx.spec().name, "pgset");
        for _ in 0..2 {
            let Err(e) = ctx.client().await else {
                panic!("a missing kubeconfig builds no client");
            };
            let e = format!("{e:#}");
            assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
        }
        assert_eq!(
            crate::args::test_counts::clients_built(),
            1,
            "a failed build is remembered, not tried again"
        );
    }

    fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"addresses": addresses
                .iter()
                .map(|(t, a)| serde_json::json!({"type": t, "address": a}))
                .collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_nodes_preflight_listed_give_the_addresses_without_another_client() {
        crate::args::test_counts::reset();
        let ctx = || {
            RunContext::new(
                ClusterSpec::default().validated().unwrap(),
                ClientArgs {
                    kubeconfig: Some("/nonexistent/kubeconfig".into()),
                    ..ClientArgs::default()
                },
                None,
                Reporter::recording(false),
            )
        };
        let kept = ctx();
        kept.keep_nodes(vec![
            node(
                "cp",
                &[("InternalIP", "10.0.2.15"), ("Hostname", "cp.lab.example")],
            ),
            node("w1", &[("InternalIP", "10.0.2.16")]),
        ]);
        let found = kept.node_addresses().await.unwrap();
        assert_eq!(
            found,
            [
                "10.0.2.15".parse::<IpAddr>().unwrap(),
                "10.0.2.16".parse().unwrap()
            ]
        );
        assert_eq!(crate::args::test_counts::clients_built(), 0);

        let bad = ctx();
        bad.keep_nodes(vec![node("w2", &[("InternalIP", "not-an-ip")])]);
        let e = bad.node_addresses().await.unwrap_err().to_string();
        assert!(e.contains("node w2") && e.contains("--nfs-server"), "{e}");

        // Without preflight's list the context's client is asked: a named kubeconfig that is
        // missing is an error, tried once however often it is asked.
        let unlisted = ctx();
        for _ in 0..2 {
            let e = format!("{:#}", unlisted.node_addresses().await.unwrap_err());
            assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
        }
        assert_eq!(crate::args::test_counts::clients_built(), 1);
    }

    #[tokio::test]
    async fn without_a_named_cluster_the_nodes_are_none_and_the_note_says_why() {
        // No kubeconfig named, none at the default place: no cluster, no error.
        let home = std::env::var_os("HOME");
        let ctx = RunContext::new(
            ClusterSpec::default().validated().unwrap(),
            ClientArgs::default(),
            None,
            Reporter::recording(false),
        );
        if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
            || home.is_some_and(|h| std::path::Path::new(&h).join(".kube/config").exists())
        {
            return; // a cluster is named on this machine: the other test covers that policy
        }
        assert!(matches!(ctx.nodes().await.unwrap(), Nodes::NoCluster(_)));
        assert_eq!(ctx.node_addresses().await.unwrap(), Vec::<IpAddr>::new());
        let said = ctx.reporter().recorded();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("note: no cluster to ask for node addresses ("),
            "{said:?}"
        );
    }
}
