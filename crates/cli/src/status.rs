//! `cargo xtask status`: one screen of the cluster, like `kubectl cnpg status`, printed or
//! redrawn by [`crate::screen`].

use anyhow::{Context, Result};
use pgset_verify::ClusterStatus;

use crate::args::{ClientArgs, SpecArgs, StatusOutput};
use crate::context::RunContext;
use crate::screen::{Screen, show};

/// Arguments of `cargo xtask status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit code: 0 when the cluster is healthy (every wanted member Ready with \
its role, every replica streaming, no warning), 2 when it is not, 1 when it could not be read."
)]
pub struct Args {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = StatusOutput::Table)]
    pub output: StatusOutput,
    /// Redraw when the status changes (every second), until Ctrl-C
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Reads the cluster and prints it.
pub async fn run(args: Args) -> Result<()> {
    let ctx =
        RunContext::for_command(&args.spec, &args.client, None).context("load the cluster spec")?;
    let spec = ctx.spec();
    let client = ctx.client().await.context("connect to the cluster")?;
    show(args.output, args.watch, ClusterStatus::to_table, || {
        let (spec, client) = (spec.clone(), client.clone());
        async move {
            let status = ClusterStatus::gather(client, &spec)
                .await
                .with_context(|| format!("read the status of {}/{}", spec.namespace, spec.name))?;
            let mut still = status.clone();
            still.summary.master_uptime_s = None;
            still.leader_renewed_s_ago = None;
            for m in &mut still.members {
                if let Some(a) = m.agent.as_mut() {
                    a["postgres"]["uptimeSeconds"] = serde_json::Value::Null;
                    a["lastAnswerMs"] = serde_json::Value::Null;
                }
            }
            Ok(Screen {
                healthy: status.healthy,
                unhealthy: format!(
                    "{}/{} is not healthy (exit code 2): {}",
                    spec.namespace,
                    spec.name,
                    status.warnings.join("; ")
                ),
                report: status,
                still,
            })
        }
    })
    .await
}
