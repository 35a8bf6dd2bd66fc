//! `cargo xtask`: the entry point of every task. `test` runs here; every other task is a pgset
//! command, handed with its arguments untouched to the `pgset` binary (package `pgset-cli`), so
//! this package builds without the Kubernetes and PostgreSQL clients and `cargo xtask test`
//! starts its fmt and clippy steps at once. [`Cli`] is public for the test that holds its task
//! list equal to the `pgset` binary's.

mod test;

use pgset_command::HostCommand;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use pgset_spec::contract::PROGRAM_NAME_ENV;

/// The program name this entry point's help shows, and the one it asks `pgset` to show.
const PROGRAM_NAME: &str = "cargo xtask";

/// From a lab host to a verified, replicating PostgreSQL cluster on a Kubernetes StatefulSet.
#[derive(Debug, Parser)]
#[command(
    bin_name = PROGRAM_NAME,
    version,
    arg_required_else_help = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    task: Task,
}

// The descriptions of the pgset commands are the `pgset` binary's own (a test in pgset-tests
// compares them); their flags and `--help` are the binary's.
#[derive(Debug, Subcommand)]
enum Task {
    /// Preflight, NFS host, volumes, NFS path checks, agent image, deploy, rollout, verify: the whole flow
    Up(Forwarded),
    /// Scale to 0, then delete the objects in reverse order; claims, volumes and Secret stay unless --purge --yes
    Down(Forwarded),
    /// Make this host the NFS server for the cluster (packages, services, SELinux, /etc/exports)
    Nfs(Forwarded),
    /// Check the NFS path of the database from this host (export options, owners and modes, mount options, SELinux, firewalld; read-only) and from every node (a probe pod per node mounts the export; removed after)
    Doctor(Forwarded),
    /// Create the NFS PersistentVolumes (and the shared claim)
    Volumes(Forwarded),
    /// Build the agent's OCI image archive; --import loads it into containerd
    Image(Forwarded),
    /// Apply Secret, RBAC, Services, claim and StatefulSet; wait for the ordered rollout
    Deploy(Forwarded),
    /// Run the checks against the live cluster
    Verify(Forwarded),
    /// Fault drills against a local set or the cluster: RTO, RPO, reads refused, re-join, re-clones
    Drill(Forwarded),
    /// Scale the StatefulSet (ordered; scale-down keeps claims and data)
    Scale(Forwarded),
    /// One screen: each member's role, readiness, node, data, streaming state and lag
    Status(Forwarded),
    /// Hand the master role to a streaming replica: the master stops cleanly, the replica takes over with every acknowledged write, the old master rejoins as its replica
    Switchover(Forwarded),
    /// Promote a named replica once the master is gone while automatic failover is off or paused (--yes: accept losing what it did not receive)
    Failover(Forwarded),
    /// How a client connects to the master over verified TLS (connection string, CA and how to fetch it)
    ConnectInfo(Forwarded),
    /// Reissue the server and replication certificates now (members reload them, no restart)
    RotateCerts(Forwarded),
    /// Write the objects as YAML into manifests/ (--check: fail when they differ)
    Render(Forwarded),
    /// A primary and replicas as local processes on 127.0.0.1, driven by the same agent
    Local(Forwarded),
    /// The test suite: fmt, clippy, cargo tests, manifest validation, lab files, NFS in a VM
    Test(test::Args),
    /// Benchmarks (replica bootstrap, local formation, live rollout when KUBECONFIG is set)
    Bench(Forwarded),
    /// The Vagrant lab: a Rocky Linux 9 VM with kubeadm, NFS and a verified cluster
    Vagrant(Forwarded),
    /// Print this message or the help of the given subcommand(s)
    Help {
        /// The task (and subcommand) to explain
        #[arg(value_name = "COMMAND")]
        task: Vec<OsString>,
    },
}

/// A pgset command's arguments, passed to the `pgset` binary untouched: it parses them, prints
/// the command's help and reports a usage error.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
struct Forwarded {
    /// The command's arguments (`cargo xtask <task> --help` lists them)
    #[arg(
        value_name = "ARGS",
        num_args = 0..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<OsString>,
}

/// Parses the command line and runs the task, or hands it to `pgset`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let forwarded = match cli.task {
        Task::Test(args) => {
            return match test::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Task::Help { task } => return help(task),
        Task::Up(f) => ("up", f),
        Task::Down(f) => ("down", f),
        Task::Nfs(f) => ("nfs", f),
        Task::Doctor(f) => ("doctor", f),
        Task::Volumes(f) => ("volumes", f),
        Task::Image(f) => ("image", f),
        Task::Deploy(f) => ("deploy", f),
        Task::Verify(f) => ("verify", f),
        Task::Drill(f) => ("drill", f),
        Task::Scale(f) => ("scale", f),
        Task::Status(f) => ("status", f),
        Task::Switchover(f) => ("switchover", f),
        Task::Failover(f) => ("failover", f),
        Task::ConnectInfo(f) => ("connect-info", f),
        Task::RotateCerts(f) => ("rotate-certs", f),
        Task::Render(f) => ("render", f),
        Task::Local(f) => ("local", f),
        Task::Bench(f) => ("bench", f),
        Task::Vagrant(f) => ("vagrant", f),
    };
    let (task, Forwarded { args }) = forwarded;
    let mut argv = vec![OsString::from(task)];
    argv.extend(args);
    run_pgset(argv)
}

/// `cargo xtask help [TASK…]`: this entry point's own help, `test`'s, or a pgset command's from
/// the `pgset` binary.
fn help(task: Vec<OsString>) -> ExitCode {
    let mut cli = Cli::command();
    match task.first().and_then(|t| t.to_str()) {
        None => {
            let _ = cli.print_help();
            ExitCode::SUCCESS
        }
        Some("test" | "help") if task.len() == 1 => {
            let name = task[0].to_string_lossy().into_owned();
            let mut sub = cli
                .find_subcommand_mut(&name)
                .expect("test and help are tasks")
                .clone()
                .bin_name(format!("{PROGRAM_NAME} {name}"));
            let _ = sub.print_help();
            ExitCode::SUCCESS
        }
        Some(_) => {
            let mut argv = vec![OsString::from("help")];
            argv.extend(task);
            run_pgset(argv)
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `cargo run --quiet --package pgset-cli --bin pgset -- ARGV`, the cargo that runs xtask
/// (`$CARGO`) building into the same target directory (`CARGO_TARGET_DIR` is inherited).
fn pgset_command(argv: Vec<OsString>) -> HostCommand {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    HostCommand::new(cargo)
        .args(["run", "--quiet", "--manifest-path"])
        .arg(workspace_root().join("Cargo.toml"))
        .args(["--package", "pgset-cli", "--bin", "pgset", "--"])
        .args(argv)
        .env(PROGRAM_NAME_ENV, PROGRAM_NAME)
}

/// Replaces this process with `pgset ARGV` (through `cargo run`, which replaces itself in turn):
/// its stdin, stdout and stderr, its signals and its exit code are the command's own.
fn run_pgset(argv: Vec<OsString>) -> ExitCode {
    let error = pgset_command(argv).exec();
    eprintln!("error: {error}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(argv: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let (Task::Up(f) | Task::Local(f) | Task::Drill(f) | Task::Scale(f)) = cli.task else {
            panic!("{argv:?} is not a forwarded task");
        };
        f.args
            .iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_pgset_commands_arguments_pass_untouched() {
        assert_eq!(
            forwarded(&[
                "cargo xtask",
                "up",
                "--dry-run=server",
                "-n",
                "lab",
                "--bogus"
            ]),
            ["--dry-run=server", "-n", "lab", "--bogus"]
        );
        assert_eq!(forwarded(&["cargo xtask", "up", "--help"]), ["--help"]);
        assert_eq!(forwarded(&["cargo xtask", "up", "-h"]), ["-h"]);
        assert_eq!(
            forwarded(&["cargo xtask", "local", "up", "--", "x"]),
            ["up", "--", "x"]
        );
        assert_eq!(forwarded(&["cargo xtask", "scale", "-1"]), ["-1"]);
        assert!(forwarded(&["cargo xtask", "drill"]).is_empty());
        // The entry point's own flags and `test`'s are its own.
        let cli = Cli::try_parse_from(["cargo xtask", "test", "--quick", "--", "filter"]).unwrap();
        let Task::Test(t) = cli.task else {
            panic!("not test")
        };
        assert!(t.quick && !t.require_tools);
        assert_eq!(t.cargo_test_args, ["filter"]);
        let e = Cli::try_parse_from(["cargo xtask", "nosuch"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn a_pgset_command_runs_through_cargo_run_with_the_program_name_set() {
        let command = pgset_command(vec!["up".into(), "--dry-run".into()]);
        let args: Vec<String> = command
            .get_args()
            .iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect();
        let manifest = workspace_root().join("Cargo.toml").display().to_string();
        assert_eq!(
            args,
            [
                "run",
                "--quiet",
                "--manifest-path",
                manifest.as_str(),
                "--package",
                "pgset-cli",
                "--bin",
                "pgset",
                "--",
                "up",
                "--dry-run"
            ]
        );
        assert!(std::path::Path::new(&manifest).is_file(), "{manifest}");
        assert_eq!(
            command.get_envs(),
            [(
                std::ffi::OsString::from(PROGRAM_NAME_ENV),
                std::ffi::OsString::from("cargo xtask")
            )]
        );
    }
}
