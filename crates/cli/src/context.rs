//! One value per invocation that the stages share: the validated spec (read-only from here
//! on), the client flags and a client built once on first use, the dry-run mode and the
//! progress reporter.

use anyhow::Result;
use pgset_spec::ValidSpec;
use tokio::sync::OnceCell;

use crate::cli::ClientArgs;
use crate::deploy::DryRun;
use crate::progress::Reporter;

/// What the stages of one invocation share.
pub struct RunContext {
    spec: ValidSpec,
    client_args: ClientArgs,
    client: OnceCell<kube::Client>,
    dry_run: Option<DryRun>,
    reporter: Reporter,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("cluster", &self.spec.name)
            .field("namespace", &self.spec.namespace)
            .field("client_built", &self.client.initialized())
            .field("dry_run", &self.dry_run)
            .field("reporter", &self.reporter)
            .finish()
    }
}

impl RunContext {
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
        }
    }

    /// Uses a client already built (e.g. by `up`'s preflight) instead of building another.
    pub fn with_client(self, client: kube::Client) -> RunContext {
        RunContext {
            client: OnceCell::new_with(Some(client)),
            ..self
        }
    }

    /// The validated spec.
    pub fn spec(&self) -> &ValidSpec {
        &self.spec
    }

    /// The kubeconfig, context and namespace flags.
    pub fn client_args(&self) -> &ClientArgs {
        &self.client_args
    }

    /// The cluster client, built on first use (a client dry run never needs one).
    pub async fn client(&self) -> Result<&kube::Client> {
        self.client
            .get_or_try_init(|| self.client_args.client())
            .await
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
    }
}
