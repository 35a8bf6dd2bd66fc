//! `cargo xtask nfs`: make this host the cluster's NFS server (probe → plan → apply); the
//! probe and plan are the context's ([`RunContext::plan_nfs_host`]), which `up`'s preflight
//! makes too.

use anyhow::{Context, Result, bail};
use pgset_command::Executor;
use pgset_nfs::{ExportOptions, HostPaths, Step, parse_clients, volume_server_address};
use pgset_spec::ClusterSpec;

use crate::args::{ClientArgs, DryRunArg, SpecArgs};
use crate::context::{HostPlan, RunContext, client_list};
use crate::progress::Reporter;

/// Arguments of `cargo xtask nfs`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("dry_run", |a| a.help("Probe the host and print the plan; change nothing. `server` is the same here: this command writes nothing to the API server")))]
pub struct Args {
    /// Hosts allowed to mount the export: comma-separated IP addresses and CIDR networks, or
    /// `*` for every host [default: the network of the cluster's nodes, else this host's
    /// primary network]
    #[arg(long, value_name = "CIDR,...")]
    pub clients: Option<String>,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Also print the read-only probe commands
    #[arg(long, short = 'v')]
    pub verbose: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What the NFS stage takes beyond the context.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageOptions<'a> {
    /// `--clients`, already checked by the caller or checked here.
    pub clients: Option<&'a str>,
    /// Also print the read-only probe commands.
    pub verbose: bool,
    /// Run as `up`'s stage, whose preflight has counted the blockers already: a dry run lists
    /// them and goes on to the next stage.
    pub in_up: bool,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let ctx = RunContext::for_command(&args.spec, &args.client, args.dry_run.mode)?;
    stage(
        &ctx,
        &StageOptions {
            clients: args.clients.as_deref(),
            verbose: args.verbose,
            in_up: false,
        },
    )
    .await
}

/// Makes this host the cluster's NFS server with the invocation's spec (or, in a dry run,
/// prints the plan): `nfs`, and `up`'s NFS stage, which uses the plan its preflight made.
pub async fn stage(ctx: &RunContext, opts: &StageOptions<'_>) -> Result<()> {
    let spec = ctx.spec();
    let reporter = ctx.reporter();
    if let Some(c) = opts.clients {
        parse_clients(c)?;
    }
    let dry_run = ctx.dry_run().is_some();
    let runner = Executor {
        dry_run,
        log_probes: opts.verbose,
    };
    let paths = HostPaths::default();
    let made;
    let plan = match &ctx.gathered().nfs_host {
        Some(Ok(plan)) => plan,
        Some(Err(e)) if dry_run && opts.in_up => {
            reporter.line(&format!("    a real run would refuse: {e}"));
            return Ok(());
        }
        Some(Err(e)) => bail!("{e}"),
        None => {
            made = ctx.plan_nfs_host(opts.clients, &runner).await?;
            &made
        }
    };
    let HostPlan {
        facts,
        options,
        steps,
        nodes,
    } = plan;
    print_plan(reporter, spec, options, steps);
    let server = volume_server_address(spec, &facts.addresses, nodes);
    let blockers = pgset_nfs::blockers(facts, steps);

    if dry_run {
        print_server(reporter, server.as_deref());
        if !blockers.is_empty() {
            let refusal = pgset_nfs::Error::Blocked { blockers };
            if opts.in_up {
                reporter.line(&format!("    a real run would refuse: {refusal}"));
                return Ok(());
            }
            return Err(refusal).context("a real run would refuse (dry run: nothing was changed)");
        }
        return Ok(());
    }
    if !steps.is_empty() {
        if !facts.is_root {
            return Err(pgset_nfs::Error::NotRoot { steps: steps.len() }.into());
        }
        if !blockers.is_empty() {
            return Err(pgset_nfs::Error::Blocked { blockers }.into());
        }
        let stage = reporter.stage("configure the NFS host");
        pgset_nfs::apply(steps, facts, &paths, &runner, &mut |l| reporter.line(l))
            .context("configure the NFS host")?;
        stage.done(&format!("{} step(s)", steps.len()));
    }
    pgset_nfs::verify_export(&runner, &spec.cluster_export_dir(), &options.clients)
        .context("check the export with `exportfs -v`")?;
    reporter.result(&format!(
        "{} is exported to {}",
        spec.cluster_export_dir().display(),
        client_list(&options.clients)
    ));
    print_server(reporter, server.as_deref());
    Ok(())
}

fn print_plan(reporter: &Reporter, spec: &ClusterSpec, options: &ExportOptions, steps: &[Step]) {
    if steps.is_empty() {
        reporter.result(&format!(
            "nothing to change: {} is exported to {} and the NFS server runs",
            spec.cluster_export_dir().display(),
            client_list(&options.clients)
        ));
        return;
    }
    reporter.result(&format!("plan ({} step(s)):", steps.len()));
    for (i, step) in steps.iter().enumerate() {
        reporter.result(&format!("  {}. {step}", i + 1));
        for cmd in step.commands() {
            reporter.result(&format!("       $ {cmd}"));
        }
    }
}

fn print_server(reporter: &Reporter, server: Option<&str>) {
    match server {
        Some(s) => reporter.result(&format!("NFS server address for the volumes: {s}")),
        None => reporter.result(&format!(
            "NFS server address for the volumes: not detected; pass --nfs-server ADDR to `{} volumes`",
            pgset_spec::contract::program_name()
        )),
    }
}
