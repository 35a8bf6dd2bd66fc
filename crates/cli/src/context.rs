//! One value per invocation that the stages share: the validated spec (read-only from here
//! on), the client flags and a client built once on first use, the dry-run mode, the
//! progress reporter, and what `up`'s preflight gathered for the stages after it.

use anyhow::{Result, anyhow};
use k8s_openapi::api::core::v1::Node;
use pgset_spec::ValidSpec;
use tokio::sync::OnceCell;

use crate::cli::{ClientArgs, SpecArgs};
use crate::deploy::DryRun;
use crate::nfs::HostPlan;
use crate::progress::Reporter;

/// What `up`'s preflight read, kept for the stages after it so that none asks again. Empty
/// for a command run on its own (each stage then reads what it needs).
#[derive(Default)]
pub struct Gathered {
    /// The cluster's nodes as preflight listed them; `None` when it did not (no cluster).
    pub(crate) nodes: Option<Vec<Node>>,
    /// This NFS host probed and planned by preflight, or why planning it failed; `None` when
    /// the NFS stage does not run.
    pub(crate) nfs_host: Option<Result<HostPlan, String>>,
    /// Whether `ctr` (containerd's client) is on this host; `None` when not looked for.
    pub(crate) ctr_here: Option<bool>,
}

/// What the stages of one invocation share.
pub struct RunContext {
    spec: ValidSpec,
    client_args: ClientArgs,
    /// The client, or why it could not be built: tried once per invocation.
    client: OnceCell<Result<kube::Client, String>>,
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
                "nodes_gathered",
                &self.gathered.nodes.as_ref().map(Vec::len),
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
        let spec = spec.load(client_args)?;
        Ok(RunContext::new(
            spec,
            client_args.clone(),
            dry_run,
            Reporter::current(),
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
            dry_run,
            reporter,
            gathered: Gathered::default(),
        }
    }

    /// Uses a client already built (e.g. by another command) instead of building another.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::ClusterSpec;

    #[tokio::test]
    async fn the_client_is_built_on_first_use_and_a_failure_is_said_each_time() {
        crate::cli::test_counts::reset();
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
            crate::cli::test_counts::clients_built(),
            1,
            "a failed build is remembered, not tried again"
        );
    }
}
