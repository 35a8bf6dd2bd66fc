//! The developer tools, kept out of the `pgset` binary: the benchmarks ([`bench`]) and the
//! Vagrant lab driver ([`vagrant`]). They use the product's libraries and the CLI's shared
//! parts (arguments, the agent's build, the reporter) and are run by `cargo xtask bench` and
//! `cargo xtask vagrant` through the `pgset-devtools` binary.

pub mod bench;
mod cli;
mod local;
mod nfs;
pub mod vagrant;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// pgset's developer tools.
#[derive(Debug, Parser)]
#[command(name = "pgset-devtools", version, arg_required_else_help = true)]
pub struct Tools {
    #[command(subcommand)]
    tool: Tool,
}

/// The tools.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Benchmarks (replica bootstrap, local formation, live rollout when KUBECONFIG is set)
    Bench(bench::Args),
    /// The Vagrant lab: a Rocky Linux 9 VM with kubeadm, NFS and a verified cluster
    Vagrant(vagrant::Args),
}

/// Parses the command line and runs the tool; a usage error exits here, as clap does.
#[tokio::main]
pub async fn main() -> std::process::ExitCode {
    let mut command = Tools::command();
    if let Some(name) = std::env::var_os(pgset_spec::contract::PROGRAM_NAME_ENV) {
        command = command.bin_name(name.to_string_lossy().into_owned());
    }
    let tools = Tools::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    pgset_cli::say_through_the_reporter();
    let result = match tools.tool {
        Tool::Bench(a) => bench::run(a).await,
        Tool::Vagrant(a) => vagrant::run(a).await,
    };
    pgset_cli::exit_code(result)
}
