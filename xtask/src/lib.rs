//! `cargo xtask`: the entry point of every task. Its own are the developer tasks: `test` runs
//! here, `bench` and `vagrant` are handed to the `pgset-devtools` binary; every other command is
//! a pgset command, handed with its arguments untouched to the `pgset` binary (package
//! `pgset-cli`), which parses them, explains them and reports a usage error. So this package
//! builds without the Kubernetes and PostgreSQL clients, `cargo xtask test` starts its fmt and
//! clippy steps at once, and no pgset command is listed twice. [`Cli`] is public for the test that
//! holds the entry points together.

mod test;

use pgset_command::HostCommand;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use pgset_spec::contract::PROGRAM_NAME_ENV;

/// The program name this entry point's help shows, and the one it asks `pgset` to show.
const PROGRAM_NAME: &str = "cargo xtask";

/// The developer tasks of pgset; every other COMMAND is a pgset command.
#[derive(Debug, Parser)]
#[command(
    bin_name = PROGRAM_NAME,
    version,
    arg_required_else_help = true,
    disable_help_subcommand = true,
    subcommand_value_name = "COMMAND",
    after_help = "Every other COMMAND is a pgset command (up, deploy, status, local, drill, ...), \
handed with its arguments to the `pgset` binary: `cargo xtask help` lists them, \
`cargo xtask COMMAND --help` explains one."
)]
pub struct Cli {
    #[command(subcommand)]
    task: Task,
}

// The developer tools' descriptions are the `pgset-devtools` binary's own (a test in
// pgset-tests compares them); their flags and `--help` are the binary's.
#[derive(Debug, Subcommand)]
enum Task {
    /// The test suite: fmt, clippy, cargo tests, manifest validation, lab files, NFS in a VM
    Test(test::Args),
    /// Benchmarks (replica bootstrap, local formation, live rollout when KUBECONFIG is set)
    Bench(Forwarded),
    /// The Vagrant lab: a Rocky Linux 9 VM with kubeadm, NFS and a verified cluster
    Vagrant(Forwarded),
    /// Print this message and pgset's commands, or the help of the given command(s)
    Help {
        /// The task (and subcommand) to explain
        #[arg(value_name = "COMMAND")]
        task: Vec<OsString>,
    },
    /// A pgset command and its arguments
    #[command(external_subcommand)]
    Pgset(Vec<OsString>),
}

/// A developer tool's arguments, passed to `pgset-devtools` untouched: it parses them, prints
/// the tool's help and reports a usage error.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
struct Forwarded {
    /// The tool's arguments (`cargo xtask <task> --help` lists them)
    #[arg(
        value_name = "ARGS",
        num_args = 0..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<OsString>,
}

/// The binaries a task is handed to.
const PGSET: (&str, &str) = ("pgset-cli", "pgset");
const DEVTOOLS: (&str, &str) = ("pgset-devtools", "pgset-devtools");

impl Cli {
    /// The binary a parsed command line is handed to and the arguments it gets (the command's
    /// name first), or `None` for a task run here (`test`, `help`).
    pub fn handed_to(&self) -> Option<(&'static str, Vec<OsString>)> {
        let with = |task: &str, args: &[OsString]| {
            std::iter::once(OsString::from(task))
                .chain(args.iter().cloned())
                .collect()
        };
        match &self.task {
            Task::Test(_) | Task::Help { .. } => None,
            Task::Bench(f) => Some((DEVTOOLS.1, with("bench", &f.args))),
            Task::Vagrant(f) => Some((DEVTOOLS.1, with("vagrant", &f.args))),
            Task::Pgset(argv) => Some((PGSET.1, argv.clone())),
        }
    }
}

/// Parses the command line and runs the task, or hands it to `pgset` or `pgset-devtools`.
pub fn main() -> ExitCode {
    // The host commands' lines, under the step that runs them.
    pgset_command::log_with(|line| eprintln!("    {line}"));
    let cli = Cli::parse();
    match cli.handed_to() {
        Some((bin, argv)) if bin == DEVTOOLS.1 => exec(cargo_run(DEVTOOLS, argv)),
        Some((_, argv)) => run_pgset(argv),
        None => match cli.task {
            Task::Test(args) => match test::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Task::Help { task } => help(task),
            Task::Bench(_) | Task::Vagrant(_) | Task::Pgset(_) => {
                unreachable!("handed to a binary above")
            }
        },
    }
}

/// `cargo xtask help [TASK…]`: this entry point's own help followed by pgset's (its commands),
/// `test`'s, a developer tool's from `pgset-devtools`, or a pgset command's from `pgset`.
fn help(task: Vec<OsString>) -> ExitCode {
    let mut cli = Cli::command();
    match task.first().and_then(|t| t.to_str()) {
        None => {
            let _ = cli.print_help();
            println!();
            run_pgset(vec!["--help".into()])
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
        Some(name) => {
            let tool = if ["bench", "vagrant"].contains(&name) {
                DEVTOOLS
            } else {
                PGSET
            };
            let mut argv = vec![OsString::from("help")];
            argv.extend(task);
            exec(cargo_run(tool, argv))
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
    cargo_run(PGSET, argv)
}

/// `cargo run --quiet --package PACKAGE --bin BIN -- ARGV` with the program name set.
fn cargo_run((package, bin): (&str, &str), argv: Vec<OsString>) -> HostCommand {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    HostCommand::new(cargo)
        .args(["run", "--quiet", "--manifest-path"])
        .arg(workspace_root().join("Cargo.toml"))
        .args(["--package", package, "--bin", bin, "--"])
        .args(argv)
        .env(PROGRAM_NAME_ENV, PROGRAM_NAME)
}

/// Replaces this process with `pgset ARGV` (through `cargo run`, which replaces itself in turn):
/// its stdin, stdout and stderr, its signals and its exit code are the command's own.
fn run_pgset(argv: Vec<OsString>) -> ExitCode {
    exec(pgset_command(argv))
}

/// Replaces this process with `command`.
fn exec(command: HostCommand) -> ExitCode {
    let error = command.exec();
    eprintln!("error: {error}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary a command line is handed to, and its arguments.
    fn handed(argv: &[&str]) -> (&'static str, Vec<String>) {
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let (bin, args) = cli
            .handed_to()
            .unwrap_or_else(|| panic!("{argv:?} is not handed over"));
        let args = args
            .iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect();
        (bin, args)
    }

    #[test]
    fn every_command_it_does_not_know_goes_to_pgset_with_its_arguments_untouched() {
        assert_eq!(
            handed(&[
                "cargo xtask",
                "up",
                "--dry-run=server",
                "-n",
                "lab",
                "--bogus"
            ]),
            (
                "pgset",
                vec!["up", "--dry-run=server", "-n", "lab", "--bogus"]
                    .into_iter()
                    .map(String::from)
                    .collect()
            )
        );
        assert_eq!(handed(&["cargo xtask", "up", "--help"]).1, ["up", "--help"]);
        assert_eq!(handed(&["cargo xtask", "up", "-h"]).1, ["up", "-h"]);
        assert_eq!(
            handed(&["cargo xtask", "local", "up", "--", "x"]).1,
            ["local", "up", "--", "x"]
        );
        assert_eq!(handed(&["cargo xtask", "scale", "-1"]).1, ["scale", "-1"]);
        assert_eq!(handed(&["cargo xtask", "drill"]).1, ["drill"]);
        // A name pgset does not know either is pgset's to refuse, with its usage.
        assert_eq!(
            handed(&["cargo xtask", "nosuch", "--x"]),
            ("pgset", vec!["nosuch".to_string(), "--x".into()])
        );
        // The developer tools go to their own binary.
        assert_eq!(
            handed(&["cargo xtask", "bench", "--drills-only"]),
            (
                "pgset-devtools",
                vec!["bench".to_string(), "--drills-only".into()]
            )
        );
        assert_eq!(
            handed(&["cargo xtask", "vagrant", "e2e", "--keep"]).1,
            ["vagrant", "e2e", "--keep"]
        );
        // The entry point's own flags and `test`'s are its own.
        let cli = Cli::try_parse_from(["cargo xtask", "test", "--quick", "--", "filter"]).unwrap();
        assert!(cli.handed_to().is_none());
        let Task::Test(t) = cli.task else {
            panic!("not test")
        };
        assert!(t.quick && !t.require_tools);
        assert_eq!(t.cargo_test_args, ["filter"]);
    }

    #[test]
    fn its_help_lists_only_its_own_tasks_and_says_where_the_others_go() {
        let help = Cli::command().render_help().to_string();
        for own in ["test", "bench", "vagrant", "help"] {
            assert!(help.contains(&format!("  {own} ")), "{own}: {help}");
        }
        assert!(!help.contains("  up "), "a pgset command is listed: {help}");
        assert!(
            help.contains("Every other COMMAND is a pgset command"),
            "{help}"
        );
        assert!(!help.contains("against a local set"), "{help}");
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
