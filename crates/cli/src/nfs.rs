//! `cargo xtask nfs`: make this host the cluster's NFS server (probe → plan → apply), and the
//! listing of the nodes' addresses shared with `cargo xtask volumes`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use pgset_command::Executor;
use pgset_deploy::nodes::internal_ips;
use pgset_nfs::{
    Blocker, ExportClient, ExportOptions, HostFacts, HostPaths, Step, default_clients,
    kept_clients, parse_clients, volume_server_address,
};
use pgset_spec::ClusterSpec;

use crate::cli::{ClientArgs, DryRunArg, SpecArgs};
use crate::context::RunContext;
use crate::progress::Reporter;

/// How long listing the cluster's nodes may take before the host's own network is used.
const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(15);

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

/// The NFS host as probed, with the plan for it. Reading only.
pub(crate) struct HostPlan {
    pub facts: HostFacts,
    pub options: ExportOptions,
    pub steps: Vec<Step>,
    pub nodes: Vec<IpAddr>,
}

impl HostPlan {
    /// Probes this host and plans with the context's spec; changes nothing.
    pub(crate) async fn make(
        ctx: &RunContext,
        clients: Option<&str>,
        runner: &Executor,
    ) -> Result<HostPlan> {
        let spec = ctx.spec();
        let reporter = ctx.reporter();
        let explicit_clients = clients.map(parse_clients).transpose()?;
        let stage = reporter.stage("probe the host");
        let facts =
            pgset_nfs::probe(runner, &HostPaths::default(), spec).context("probe the host")?;
        stage.done(&facts.os.pretty_name);

        let nodes = if explicit_clients.is_some() && spec.nfs.server.is_some() {
            Vec::new()
        } else {
            node_addresses_in(ctx).await?
        };
        let kept = kept_clients(spec, facts.exports_file.as_deref());
        let clients = match (explicit_clients, kept) {
            (Some(c), _) => c,
            (None, Some(c)) => {
                reporter.line(&format!(
                    "note: keeping the clients of pgset's block in /etc/exports ({}); pass --clients to change them",
                    client_list(&c)
                ));
                c
            }
            (None, None) => {
                let chosen = default_clients(&nodes, &facts.addresses)?;
                if let Some(note) = chosen.note() {
                    reporter.line(&format!("note: {note}"));
                }
                chosen.clients()
            }
        };
        let options = ExportOptions { clients };
        let steps = pgset_nfs::plan(&facts, spec, &options).context("plan the NFS host")?;
        Ok(HostPlan {
            facts,
            options,
            steps,
            nodes,
        })
    }

    /// Every reason this host cannot run the plan.
    pub(crate) fn blockers(&self) -> Vec<Blocker> {
        pgset_nfs::blockers(&self.facts, &self.steps)
    }
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
            made = HostPlan::make(ctx, opts.clients, &runner).await?;
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

fn client_list(clients: &[ExportClient]) -> String {
    clients
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The InternalIP addresses of the cluster's nodes: the ones `up`'s preflight listed, else
/// listed with the context's client. Without a kubeconfig (none named and none at the default
/// places) or when an unnamed default cluster does not answer, a note is printed and the list
/// is empty; a kubeconfig or context the user named must work.
pub(crate) async fn node_addresses_in(ctx: &RunContext) -> Result<Vec<IpAddr>> {
    if let Some(nodes) = &ctx.gathered().nodes {
        return Ok(internal_ips(nodes)?);
    }
    let listed = async { list_nodes(ctx.client().await?).await }.await;
    addresses_or_note(listed, ctx.cluster_named(), ctx.reporter())
}

/// [`node_addresses_in`] for a command without a context: builds its own client.
pub(crate) async fn node_addresses(client_args: &ClientArgs) -> Result<Vec<IpAddr>> {
    let listed = async { list_nodes(&client_args.client().await?).await }.await;
    addresses_or_note(listed, client_args.named(), &Reporter::current())
}

async fn list_nodes(client: &kube::Client) -> Result<Vec<Node>> {
    let nodes = tokio::time::timeout(
        NODE_LIST_TIMEOUT,
        Api::<Node>::all(client.clone()).list(&ListParams::default()),
    )
    .await
    .context("list the cluster's nodes: no answer")?
    .context("list the cluster's nodes")?;
    Ok(nodes.items)
}

fn addresses_or_note(
    listed: Result<Vec<Node>>,
    named: bool,
    reporter: &Reporter,
) -> Result<Vec<IpAddr>> {
    match listed {
        Ok(nodes) => Ok(internal_ips(&nodes)?),
        Err(e) if !named => {
            reporter.line(&format!(
                "note: no cluster to ask for node addresses ({e:#})"
            ));
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"addresses": addresses
                .iter()
                .map(|(t, a)| serde_json::json!({"type": t, "address": a}))
                .collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_nodes_preflight_listed_give_the_addresses_without_another_client() {
        crate::cli::test_counts::reset();
        let mut ctx = RunContext::new(
            ClusterSpec::default().validated().unwrap(),
            ClientArgs {
                kubeconfig: Some("/nonexistent/kubeconfig".into()),
                ..ClientArgs::default()
            },
            None,
            Reporter::recording(false),
        );
        ctx.gathered_mut().nodes = Some(vec![
            node(
                "cp",
                &[("InternalIP", "10.0.2.15"), ("Hostname", "cp.lab.example")],
            ),
            node("w1", &[("InternalIP", "10.0.2.16")]),
        ]);
        let found = node_addresses_in(&ctx).await.unwrap();
        assert_eq!(
            found,
            [
                "10.0.2.15".parse::<IpAddr>().unwrap(),
                "10.0.2.16".parse().unwrap()
            ]
        );
        assert_eq!(crate::cli::test_counts::clients_built(), 0);

        ctx.gathered_mut().nodes = Some(vec![node("w2", &[("InternalIP", "not-an-ip")])]);
        let e = node_addresses_in(&ctx).await.unwrap_err().to_string();
        assert!(e.contains("node w2") && e.contains("--nfs-server"), "{e}");

        // Without preflight's list the context's client is asked: a named kubeconfig that is
        // missing is an error, tried once however often it is asked.
        ctx.gathered_mut().nodes = None;
        for _ in 0..2 {
            let e = format!("{:#}", node_addresses_in(&ctx).await.unwrap_err());
            assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
        }
        assert_eq!(crate::cli::test_counts::clients_built(), 1);
    }
}
