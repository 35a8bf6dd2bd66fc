//! `cargo xtask local up|status|down`: a primary and replicas as local processes on 127.0.0.1,
//! driven by the same agent as in a pod (`pgset_local`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use pgset_local::status::{self as local_status, StatusReport};
use pgset_local::{self as local, UpOptions};

use crate::args::{OneLine, StatusOutput};
use crate::cli::{Stage, build_agent};
use crate::progress::Reporter;
use crate::screen::{Screen, show};

/// Arguments of `cargo xtask local`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Start (or reshape) the set: members in order, each after the previous is ready (or all
    /// at once with --parallel)
    Up(UpArgs),
    /// Each member: role, address, socket and data directories, pid, streaming
    Status(StatusArgs),
    /// Stop every member; --purge also removes DIR
    Down(DownArgs),
    /// Hand the master role to a streaming replica: the master stops cleanly, the replica takes
    /// over with every acknowledged write, the old master rejoins as its replica
    Switchover(SwitchoverArgs),
    /// Promote a named replica when the master is gone and automatic failover is off or paused
    Failover(FailoverArgs),
}

#[derive(Debug, clap::Args)]
struct SwitchoverArgs {
    /// The set's directory
    #[arg(long)]
    dir: PathBuf,
    /// The member to make the master (default: the most advanced streaming replica)
    #[arg(long)]
    to: Option<String>,
    /// Seconds to wait for the new master and the old master's rejoin
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OneLine::Text)]
    output: OneLine,
}

#[derive(Debug, clap::Args)]
struct FailoverArgs {
    /// The set's directory
    #[arg(long)]
    dir: PathBuf,
    /// The replica to promote
    #[arg(long)]
    to: String,
    /// Promote it, accepting the loss of what it did not receive
    #[arg(long)]
    yes: bool,
    /// Seconds to wait for it to take over
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = OneLine::Text)]
    output: OneLine,
}

fn print_report(report: &local::switchover::Report, output: OneLine) -> Result<()> {
    match output {
        OneLine::Text => println!("{}", report.line()),
        OneLine::Json => println!("{}", serde_json::to_string_pretty(report)?),
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of members, the primary included
    #[arg(long, default_value_t = 3)]
    replicas: i32,
    /// Directory for data, logs, sockets and generated passwords
    #[arg(long)]
    dir: PathBuf,
    /// Port of the primary; member N listens on PORT+N (health on PORT+1000+N)
    #[arg(long, default_value_t = 15432)]
    port: u16,
    /// Cluster name (members are NAME-0, NAME-1, ...)
    #[arg(long, default_value = pgset_spec::DEFAULT_NAME)]
    name: String,
    /// Seconds to wait for each member to become ready
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Seconds a replica waits for the master before it fails
    #[arg(long)]
    master_wait: Option<u64>,
    /// pg_basebackup --max-rate for replicas' first copies (e.g. 50M)
    #[arg(long)]
    max_rate: Option<String>,
    /// Take data directories without pgset's identity (made before identities) as the members'
    /// own, and mark them (explicit opt-in)
    #[arg(long)]
    adopt_unmarked: bool,
    /// Let member 0 initialise a new, empty database although the set had data, and replicas of
    /// the old one copy it again, keeping their data aside (explicit opt-in)
    #[arg(long)]
    allow_reinit: bool,
    /// Start every member at once (a StatefulSet's Parallel policy): replicas wait for the
    /// master inside their agents, then copy it concurrently
    #[arg(long)]
    parallel: bool,
    /// Serve and replicate over TLS 1.3 only: a CA kept in DIR/tls (made once, renewed when
    /// due), replication by client certificate, plain TCP refused
    #[arg(long)]
    tls: bool,
    /// The agent binary (default: built with `cargo build -p pgset-agent`)
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit code: 0 when the set is healthy (every member ready, every replica \
streaming, no warning), 2 when it is not, 1 when its status could not be read."
)]
struct StatusArgs {
    /// The set's directory
    #[arg(long)]
    dir: PathBuf,
    /// Output format (`text` is the table)
    #[arg(long, short = 'o', value_enum, default_value_t = StatusOutput::Table)]
    output: StatusOutput,
    /// Redraw when the status changes (every second), until Ctrl-C
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, clap::Args)]
struct DownArgs {
    /// The set's directory
    #[arg(long)]
    dir: PathBuf,
    /// Also remove DIR (data, logs, passwords)
    #[arg(long)]
    purge: bool,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Up(a) => up(a).await,
        Command::Status(a) => status(&a.dir, a.output, a.watch).await,
        Command::Down(a) => {
            let stopped = local::down(&a.dir, a.purge)
                .await
                .context("stop the local set")?;
            Reporter::current().line(&format!(
                "stopped: {}",
                if stopped.is_empty() {
                    "nothing was running".to_string()
                } else {
                    stopped.join(", ")
                }
            ));
            Ok(())
        }
        Command::Switchover(a) => {
            let report = local::switchover::switchover(
                &a.dir,
                a.to.as_deref(),
                Duration::from_secs(a.timeout),
            )
            .await
            .context("switchover")?;
            print_report(&report, a.output)
        }
        Command::Failover(a) => {
            if !a.yes {
                let warning = local::switchover::failover_warning(&a.dir, &a.to)
                    .await
                    .context("failover")?;
                anyhow::bail!("{warning}");
            }
            let report = local::switchover::failover(&a.dir, &a.to, Duration::from_secs(a.timeout))
                .await
                .context("failover")?;
            print_report(&report, a.output)
        }
    }
}

async fn up(a: UpArgs) -> Result<()> {
    let agent_bin = match a.agent_bin {
        Some(b) => b,
        None => build_agent()?,
    };
    let mut opts = UpOptions::new(&a.dir, a.replicas, a.port, agent_bin);
    opts.name = a.name;
    opts.ready_timeout = Duration::from_secs(a.timeout);
    opts.master_wait = a.master_wait.map(Duration::from_secs);
    opts.basebackup_max_rate = a.max_rate;
    opts.adopt_unmarked = a.adopt_unmarked;
    opts.allow_reinit = a.allow_reinit;
    opts.parallel = a.parallel;
    opts.tls = a.tls;
    let stage = Stage::start(format!(
        "local set of {} in {}",
        a.replicas,
        a.dir.display()
    ));
    let report = local::up(&opts).await.context("form the local set")?;
    let list = |v: &Vec<String>| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    stage.done(&format!(
        "started {}; already running {}; stopped {}",
        list(&report.started),
        list(&report.already_running),
        list(&report.stopped)
    ));
    // The set as `local status` shows it; its verdict is that command's to give.
    let report = local_status::report(&a.dir)
        .await
        .context("read the local set")?;
    print!("{}", report.to_table());
    Ok(())
}

async fn status(dir: &Path, output: StatusOutput, watch: bool) -> Result<()> {
    show(output, watch, StatusReport::to_table, || async {
        let report = local_status::report(dir)
            .await
            .context("read the local set")?;
        // The uptime changes every second; redraw on a change of anything else.
        let mut still = report.clone();
        still.summary.master_uptime_s = None;
        Ok(Screen {
            healthy: report.healthy,
            unhealthy: format!("the set in {} is not healthy (exit code 2)", dir.display()),
            report,
            still,
        })
    })
    .await
}
