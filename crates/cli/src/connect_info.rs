//! `pgset connect-info`: how a client connects to the cluster's master over verified TLS (the
//! connection string with `sslmode=verify-full`, where the CA certificate comes from and how to
//! fetch it; never a password).

use anyhow::Result;

use crate::args::{ClientArgs, OneLine, SpecArgs};

/// Arguments of `pgset connect-info`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OneLine::Text)]
    pub output: OneLine,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Prints how to connect; reads only the spec (the cluster is not contacted).
pub async fn connect_info(args: ConnectArgs) -> Result<()> {
    let spec = args.spec.load(&args.client)?;
    let info = pgset_deploy::tls::connect_info(&spec);
    match args.output {
        OneLine::Text => print!("{}", info.text()),
        OneLine::Json => println!("{}", serde_json::to_string_pretty(&info)?),
    }
    Ok(())
}
