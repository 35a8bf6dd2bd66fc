//! `cargo xtask status`: one screen of the cluster, like `kubectl cnpg status`, and the loop
//! that prints (or, with `--watch`, redraws) a status screen for both the cluster and a local set.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use pgset_verify::ClusterStatus;
use serde::Serialize;

use crate::cli::{ClientArgs, Exit, SpecArgs};
use crate::verify::spec_and_client;

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

/// One reading of a status, as the loop needs it.
pub struct Screen<T> {
    /// The report.
    pub report: T,
    /// The same report with what changes every second (uptimes) taken out: a redraw happens
    /// only when this changes.
    pub still: T,
    /// Whether it is healthy.
    pub healthy: bool,
    /// The error line when it is not.
    pub unhealthy: String,
}

/// Renders `report` in `output`; `table` is its table.
pub fn render<T: Serialize>(
    report: &T,
    table: impl Fn(&T) -> String,
    output: StatusOutput,
) -> Result<String> {
    Ok(match output {
        StatusOutput::Table => table(report),
        StatusOutput::Json => serde_json::to_string_pretty(report)? + "\n",
        StatusOutput::Yaml => serde_saphyr::to_string(report).context("render YAML")?,
    })
}

/// Prints one screen and exits 0 when healthy, 2 when not; with `watch`, redraws on change every
/// second until Ctrl-C.
pub async fn show<T, F, Fut>(
    output: StatusOutput,
    watch: bool,
    table: impl Fn(&T) -> String + Copy,
    mut read: F,
) -> Result<()>
where
    T: Serialize,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Screen<T>>>,
{
    let mut shown = String::new();
    loop {
        let screen = read().await?;
        let text = render(&screen.report, table, output)?;
        if !watch {
            print!("{text}");
            if screen.healthy {
                return Ok(());
            }
            return Err(Exit {
                code: 2,
                message: screen.unhealthy,
            }
            .into());
        }
        let key = render(&screen.still, table, output)?;
        if key != shown {
            print!("\x1b[2J\x1b[H{text}");
            shown = key;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Reads the cluster and prints it.
pub async fn run(args: Args) -> Result<()> {
    let (spec, client) = spec_and_client(&args.spec, &args.client).await?;
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
