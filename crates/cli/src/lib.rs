//! `cargo xtask`: the pgset orchestrator. `main` parses once and dispatches to one module per task.

mod bench;
mod cli;
mod deploy;
mod doctor;
mod down;
mod drill;
mod image;
mod local;
mod nfs;
mod render;
mod scale;
mod status;
mod test;
mod up;
mod vagrant;
mod verify;
mod volumes;

use clap::{Parser, Subcommand};

/// From a lab host to a verified, replicating PostgreSQL cluster on a Kubernetes StatefulSet.
#[derive(Debug, Parser)]
#[command(bin_name = "cargo xtask", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
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
    /// Fault drills against a local set: RTO, RPO, reads refused, re-join, re-clones
    Drill(drill::Args),
    /// Scale the StatefulSet (ordered; scale-down keeps claims and data)
    Scale(scale::Args),
    /// One screen: each member's role, readiness, node, data, streaming state and lag
    Status(status::Args),
    /// Write the objects as YAML into manifests/ (--check: fail when they differ)
    Render(render::Args),
    /// A primary and replicas as local processes on 127.0.0.1, driven by the same agent
    Local(local::Args),
    /// The test suite: fmt, clippy, cargo tests, manifest validation, lab files, NFS in a VM
    Test(test::Args),
    /// Benchmarks (replica bootstrap, local formation, live rollout when KUBECONFIG is set)
    Bench(bench::Args),
    /// The Vagrant lab: a Rocky Linux 9 VM with kubeadm, NFS and a verified cluster
    Vagrant(vagrant::Args),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
        Task::Render(a) => render::run(a).await,
        Task::Local(a) => local::run(a).await,
        Task::Test(a) => test::run(a).await,
        Task::Bench(a) => bench::run(a).await,
        Task::Vagrant(a) => vagrant::run(a).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<cli::Exit>() {
                eprintln!("{exit}");
                return std::process::ExitCode::from(exit.code);
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

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
        for task in ["up", "nfs", "volumes", "image", "deploy"] {
            for flag in ["--dry-run", "--dry-run=client", "--dry-run=server"] {
                Cli::try_parse_from(["cargo xtask", task, flag])
                    .unwrap_or_else(|e| panic!("{task} {flag}: {e}"));
            }
            let err = Cli::try_parse_from(["cargo xtask", task, "--dry-run=bogus"]).unwrap_err();
            assert!(err.to_string().contains("client, server"), "{task}: {err}");
        }
        for (flag, meaning) in [
            ("--dry-run", deploy::DryRun::Client),
            ("--dry-run=client", deploy::DryRun::Client),
            ("--dry-run=server", deploy::DryRun::Server),
        ] {
            let Task::Volumes(v) = Cli::try_parse_from(["cargo xtask", "volumes", flag])
                .unwrap()
                .task
            else {
                panic!("not volumes");
            };
            assert_eq!(v.dry_run, Some(meaning), "{flag}");
        }
    }
}
