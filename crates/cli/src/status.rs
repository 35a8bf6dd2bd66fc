//! `cargo xtask status`: one screen of the cluster, like `kubectl cnpg status`.

use anyhow::{Context, Result};
use pgset_verify::ClusterStatus;

use crate::cli::{ClientArgs, SpecArgs};
use crate::verify::{Output, spec_and_client};

/// Arguments of `cargo xtask status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit code: 0 when the cluster is healthy (every wanted member Ready with \
its role, every replica streaming), 2 when it is not, 1 when it could not be read."
)]
pub struct Args {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Reads the cluster and prints it.
pub async fn run(args: Args) -> Result<()> {
    let (spec, client) = spec_and_client(&args.spec, &args.client).await?;
    let status = ClusterStatus::gather(client, &spec)
        .await
        .with_context(|| format!("read the status of {}/{}", spec.namespace, spec.name))?;
    match args.output {
        Output::Table => print!("{}", status.to_table()),
        Output::Json => println!("{}", status.to_json()),
    }
    let problems = status.problems();
    if problems.is_empty() {
        return Ok(());
    }
    Err(crate::cli::Exit {
        code: 2,
        message: format!(
            "{}/{} is not healthy (exit code 2): {}",
            spec.namespace,
            spec.name,
            problems.join("; ")
        ),
    }
    .into())
}
