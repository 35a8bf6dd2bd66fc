//! The pgset commands, run as `cargo xtask <command>` or by the `pgset` binary. [`main`] parses
//! once and dispatches to one module per command.

pub mod args;
pub mod cli;
pub mod connect_info;
pub mod context;
pub mod deploy;
pub mod doctor;
pub mod down;
pub mod drill;
pub mod hint;
pub mod image;
pub mod local;
pub mod nfs;
pub mod progress;
pub mod render;
pub mod rotate_certs;
pub mod scale;
pub mod screen;
pub mod status;
pub mod switchover;
pub mod up;
pub mod verify;
pub mod volumes;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

// The program name in help and usage lines is the name it was started by (`pgset`), or what
// `pgset_spec::contract::PROGRAM_NAME_ENV` says (`cargo xtask` sets it when it hands a command
// over).
/// From a lab host to a verified, replicating PostgreSQL cluster on a Kubernetes StatefulSet.
#[derive(Debug, Parser)]
#[command(name = "pgset", version, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Task {
    /// Preflight, NFS host, volumes, NFS path checks, agent image, deploy, rollout, verify: the whole flow
    Up(up::Args),
    /// Scale to 0, then delete the objects in reverse order; claims, volumes and Secret stay unless --purge --yes
    Down(down::Args),
    /// Make this host the NFS server for the cluster (packages, services, SELinux, /etc/exports)
    Nfs(nfs::Args),
    /// Check the NFS path of the database from this host (export options, owners and modes, mount options, SELinux, firewalld; read-only) and from every node (a probe pod per node mounts the export; removed after)
    Doctor(doctor::Args),
    /// Create the NFS PersistentVolumes (and the shared claim)
    Volumes(volumes::Args),
    /// Build the agent's OCI image archive; --import loads it into containerd
    Image(image::Args),
    /// Apply Secret, RBAC, Services, claim and StatefulSet; wait for the ordered rollout
    Deploy(deploy::Args),
    /// Run the checks against the live cluster
    Verify(verify::Args),
    /// Fault drills under load against the cluster (or, with --dir, a local set): writes refused, rows lost, late commits, reads refused, time to stream again, re-clones
    Drill(drill::Args),
    /// Scale the StatefulSet (ordered; scale-down keeps claims and data)
    Scale(scale::Args),
    /// One screen: each member's role, readiness, node, data, streaming state and lag
    Status(status::Args),
    /// Hand the master role to a streaming replica: the master stops cleanly, the replica takes over with every acknowledged write, the old master rejoins as its replica
    Switchover(switchover::Args),
    /// Promote a named replica once the master is gone while automatic failover is off or paused (--yes: accept losing what it did not receive)
    Failover(switchover::FailoverArgs),
    /// How a client connects to the master over verified TLS (connection string, CA and how to fetch it)
    ConnectInfo(connect_info::ConnectArgs),
    /// Reissue the server and replication certificates now (members reload them, no restart)
    RotateCerts(rotate_certs::RotateArgs),
    /// Write the objects as YAML into manifests/ (--check: fail when they differ)
    Render(render::Args),
    /// A primary and replicas as local processes on 127.0.0.1, driven by the same agent
    Local(local::Args),
}

/// Parses the command line and runs the command; a usage error exits here, as clap does.
#[tokio::main]
pub async fn main() -> std::process::ExitCode {
    let mut command = Cli::command();
    if let Some(name) = std::env::var_os(pgset_spec::contract::PROGRAM_NAME_ENV) {
        command = command.bin_name(name.to_string_lossy().into_owned());
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    say_through_the_reporter();
    let result = match cli.task {
        Task::Up(a) => up::run(a).await,
        Task::Down(a) => down::run(a).await,
        Task::Nfs(a) => nfs::run(a).await,
        Task::Doctor(a) => doctor::run(a).await,
        Task::Volumes(a) => volumes::run(a).await,
        Task::Image(a) => image::run(a).await,
        Task::Deploy(a) => deploy::run(a).await,
        Task::Verify(a) => verify::run(a).await,
        Task::Drill(a) => drill::run(a).await,
        Task::Scale(a) => scale::run(a).await,
        Task::Status(a) => status::run(a).await,
        Task::Switchover(a) => switchover::run(a).await,
        Task::Failover(a) => switchover::run_failover(a).await,
        Task::ConnectInfo(a) => connect_info::connect_info(a).await,
        Task::RotateCerts(a) => rotate_certs::rotate_certs(a).await,
        Task::Render(a) => render::run(a).await,
        Task::Local(a) => local::run(a).await,
    };
    exit_code(result)
}

/// Sends what the libraries say (host commands' lines, local mode's launcher's) through the
/// invocation's reporter: above the live lines on a terminal. For a program's `main`.
pub fn say_through_the_reporter() {
    pgset_command::log_with(|line| progress::Reporter::current().line(&format!("    {line}")));
    // What local mode's launcher does, one line each.
    pgset_local::progress_with(|line| {
        progress::Reporter::current().line(&format!("pgset local: {line}"))
    });
}

/// The exit code of a command's result: an [`cli::Exit`] prints its message and exits with its
/// code; another error prints `error: ...` and the command that fixes it, when there is one.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<cli::Exit>() {
                eprintln!("{exit}");
                return std::process::ExitCode::from(exit.code);
            }
            eprintln!("error: {e:#}");
            let program = pgset_spec::contract::program_name();
            if let Some(step) = hint::next_step(&e, &program) {
                eprintln!("hint: {step}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a command's `--dry-run` parses: (value given, what it means).
    fn dry_run_meanings(cmd: &clap::Command) -> Option<Vec<String>> {
        let arg = cmd.get_arguments().find(|a| a.get_id() == "dry_run")?;
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        Some(vec![
            format!("values {values:?}"),
            format!("takes {:?} values", arg.get_num_args()),
            format!("requires = {}", arg.is_require_equals_set()),
        ])
    }

    #[test]
    fn every_dry_run_flag_parses_as_deploys_does() {
        let cli = Cli::command();
        let deploy = cli.find_subcommand("deploy").unwrap();
        let wanted = dry_run_meanings(deploy).unwrap();
        let mut with_flag = Vec::new();
        for sub in cli.get_subcommands() {
            if let Some(m) = dry_run_meanings(sub) {
                assert_eq!(m, wanted, "`{}` --dry-run", sub.get_name());
                with_flag.push(sub.get_name().to_string());
            }
        }
        assert_eq!(with_flag, ["up", "nfs", "volumes", "image", "deploy"]);
        // One flag, worded by each command.
        let help = |task: &str| {
            let sub = cli.find_subcommand(task).unwrap();
            let arg = sub.get_arguments().find(|a| a.get_id() == "dry_run");
            arg.and_then(|a| a.get_help()).unwrap().to_string()
        };
        assert!(help("up").contains("every host step"), "{}", help("up"));
        assert!(help("nfs").starts_with("Probe the host"), "{}", help("nfs"));
        assert!(help("deploy").starts_with("Change nothing: print the objects"));
        for task in ["up", "nfs", "volumes", "image", "deploy"] {
            for flag in ["--dry-run", "--dry-run=client", "--dry-run=server"] {
                Cli::try_parse_from(["cargo xtask", task, flag])
                    .unwrap_or_else(|e| panic!("{task} {flag}: {e}"));
            }
            let err = Cli::try_parse_from(["cargo xtask", task, "--dry-run=bogus"]).unwrap_err();
            assert!(err.to_string().contains("client, server"), "{task}: {err}");
        }
        for (flag, meaning) in [
            ("--dry-run", args::DryRun::Client),
            ("--dry-run=client", args::DryRun::Client),
            ("--dry-run=server", args::DryRun::Server),
        ] {
            let Task::Volumes(v) = Cli::try_parse_from(["cargo xtask", "volumes", flag])
                .unwrap()
                .task
            else {
                panic!("not volumes");
            };
            assert_eq!(v.dry_run.mode, Some(meaning), "{flag}");
        }
    }

    /// The modules every command shares; the others are one module per command.
    const SHARED: [&str; 6] = ["args", "cli", "context", "hint", "progress", "screen"];

    /// The modules of this crate a source file names (`crate::NAME`), its tests left out.
    fn named_modules(text: &str) -> std::collections::BTreeSet<String> {
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
        code.split("crate::")
            .skip(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .filter(|name| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
            .collect()
    }

    #[test]
    fn a_command_uses_the_shared_parts_and_never_another_command() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let mut problems = Vec::new();
        let mut commands = std::collections::BTreeSet::new();
        for path in &files {
            let rel = path.strip_prefix(&src).unwrap();
            let module = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            for used in named_modules(&text) {
                if used == module || SHARED.contains(&used.as_str()) {
                    continue;
                }
                if SHARED.contains(&module.as_str()) {
                    problems.push(format!("shared {} uses the command {used}", rel.display()));
                } else if module != "up" {
                    // `up` is the one command made of others: it runs their stages.
                    problems.push(format!("{} uses the command {used}", rel.display()));
                }
            }
            if !SHARED.contains(&module.as_str()) {
                commands.insert(module);
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        // Every command of the binary has its module (and nothing else is a module of its own).
        let tasks: std::collections::BTreeSet<String> = Cli::command()
            .get_subcommands()
            .map(|s| s.get_name().replace('-', "_"))
            .filter(|n| n != "failover")
            .collect();
        assert_eq!(commands, tasks);
    }
}
