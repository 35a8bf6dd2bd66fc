//! `pgset-agent`: the container entrypoint (`run`), the init container's installer (`install`),
//! the cluster's certificate renewal job (`renew-certs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The pgset member agent: role by ordinal, PGDATA per member, initdb or base backup,
/// self-labelling, supervising postgres.
#[derive(Debug, Parser)]
#[command(name = "pgset-agent", version = pgset_spec::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prepare this member's data directory and run postgres (configured by PGSET_* variables)
    #[command(after_help = format!("Environment: {}", pgset_agent::run::env_help()))]
    Run,
    /// Copy this binary to DEST (atomically, mode 0755)
    Install {
        /// Destination path, e.g. /pgset/bin/pgset-agent
        dest: PathBuf,
    },
    /// Renew the cluster's server and replication certificates within 30 days of their end
    /// (run by the CronJob `<name>-cert-renewal` with its own ServiceAccount)
    RenewCerts {
        /// The cluster's namespace
        #[arg(long)]
        namespace: String,
        /// The CA Secret (`<name>-ca`), only read
        #[arg(long)]
        ca_secret: String,
        /// The server certificate Secret (`<name>-tls-server`)
        #[arg(long)]
        server_secret: String,
        /// The replication certificate Secret (`<name>-tls-replication`)
        #[arg(long)]
        replication_secret: String,
    },
    /// Started by `run` next to postgres: ends the postmaster when the agent is gone or, holding
    /// the master role, stops sending heartbeats on stdin
    #[command(hide = true)]
    Watchdog {
        /// The postmaster's pid
        #[arg(long)]
        postmaster: i32,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Command::Watchdog { postmaster } = cli.command {
        std::process::exit(pgset_agent::watchdog::run(postmaster));
    }
    // Every host command's `$ <command>` line, in the agent's log format.
    pgset_command::log_with(pgset_agent::log_line);
    let result = match cli.command {
        Command::Run => pgset_agent::run::run().await,
        Command::Install { dest } => pgset_agent::install::install(&dest).map(|()| 0),
        Command::RenewCerts {
            namespace,
            ca_secret,
            server_secret,
            replication_secret,
        } => {
            let targets = pgset_agent::renew::RenewTargets {
                ca_secret,
                server_secret,
                replication_secret,
            };
            pgset_agent::renew::run(&namespace, &targets).await
        }
        Command::Watchdog { .. } => unreachable!("handled before the runtime's work"),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("pgset-agent: error: {msg}");
            if let Some(path) = pgset_agent::run::termination_log_path() {
                pgset_agent::run::write_termination_log(&path, &msg);
            }
            e.exit_code()
        }
    };
    // Exit now: a copy still running in a blocking task (stopped by signal) must not hold the
    // process open while the runtime waits for it.
    std::process::exit(code);
}
