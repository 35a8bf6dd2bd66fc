//! `cargo xtask status`: one screen of the cluster, like `kubectl cnpg status`.

use anyhow::{Context, Result};
use pgset_verify::ClusterStatus;

use crate::cli::{ClientArgs, SpecArgs};
use crate::verify::{Output, spec_and_client};

/// Arguments of `cargo xtask status`.
#[derive(Debug, clap::Args)]
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
    Ok(())
}
