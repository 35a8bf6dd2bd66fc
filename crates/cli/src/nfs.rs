//! `cargo xtask nfs`: make this host the cluster's NFS server (probe → plan → apply), and the
//! address and client detection shared with `cargo xtask volumes`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use pgset_command::Executor;
use pgset_nfs::{
    Blocker, ExportClient, ExportOptions, ExportsFile, HostAddresses, HostFacts, HostPaths, Step,
    clients_from_node_addresses, nfs_server_address, parse_clients,
};
use pgset_spec::{ClusterSpec, ValidSpec};

use crate::cli::{ClientArgs, DryRunArg, SpecArgs, Stage};

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
    /// Run as `up`'s stage, whose preflight has counted the blockers already: a dry run lists
    /// them and goes on to the next stage.
    #[arg(skip)]
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
    /// Probes this host and plans; changes nothing.
    pub(crate) async fn make(
        spec: &ValidSpec,
        clients: Option<&str>,
        client_args: &ClientArgs,
        runner: &Executor,
    ) -> Result<HostPlan> {
        let explicit_clients = clients.map(parse_clients).transpose()?;
        let stage = Stage::start("probe the host");
        let facts =
            pgset_nfs::probe(runner, &HostPaths::default(), spec).context("probe the host")?;
        stage.done(&facts.os.pretty_name);

        let nodes = if explicit_clients.is_some() && spec.nfs.server.is_some() {
            Vec::new()
        } else {
            node_addresses(client_args).await?
        };
        let kept = kept_clients(spec, facts.exports_file.as_deref());
        let clients = match (explicit_clients, kept) {
            (Some(c), _) => c,
            (None, Some(c)) => {
                eprintln!(
                    "note: keeping the clients of pgset's block in /etc/exports ({}); pass --clients to change them",
                    client_list(&c)
                );
                c
            }
            (None, None) => default_clients(&nodes, &facts.addresses)?,
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
    let spec = args.spec.load(&args.client)?;
    if let Some(c) = &args.clients {
        parse_clients(c)?;
    }
    let runner = Executor {
        dry_run: args.dry_run.is_set(),
        log_probes: args.verbose,
    };
    let paths = HostPaths::default();
    let HostPlan {
        facts,
        options,
        steps,
        nodes,
    } = HostPlan::make(&spec, args.clients.as_deref(), &args.client, &runner).await?;
    print_plan(&spec, &options, &steps);
    let server = server_address(&spec, &facts.addresses, &nodes);
    let blockers = pgset_nfs::blockers(&facts, &steps);

    if args.dry_run.is_set() {
        print_server(server.as_deref());
        if !blockers.is_empty() {
            let refusal = pgset_nfs::Error::Blocked { blockers };
            if args.in_up {
                eprintln!("    a real run would refuse: {refusal}");
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
        let stage = Stage::start("configure the NFS host");
        pgset_nfs::apply(&steps, &facts, &paths, &runner).context("configure the NFS host")?;
        stage.done(&format!("{} step(s)", steps.len()));
    }
    pgset_nfs::verify_export(&runner, &spec.cluster_export_dir(), &options.clients)
        .context("check the export with `exportfs -v`")?;
    println!(
        "{} is exported to {}",
        spec.cluster_export_dir().display(),
        client_list(&options.clients)
    );
    print_server(server.as_deref());
    Ok(())
}

fn print_plan(spec: &ValidSpec, options: &ExportOptions, steps: &[Step]) {
    if steps.is_empty() {
        println!(
            "nothing to change: {} is exported to {} and the NFS server runs",
            spec.cluster_export_dir().display(),
            client_list(&options.clients)
        );
        return;
    }
    println!("plan ({} step(s)):", steps.len());
    for (i, step) in steps.iter().enumerate() {
        println!("  {}. {step}", i + 1);
        for cmd in step.commands() {
            println!("       $ {cmd}");
        }
    }
}

fn print_server(server: Option<&str>) {
    match server {
        Some(s) => println!("NFS server address for the volumes: {s}"),
        None => println!(
            "NFS server address for the volumes: not detected; pass --nfs-server ADDR to `cargo xtask volumes`"
        ),
    }
}

fn client_list(clients: &[ExportClient]) -> String {
    clients
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The clients already in pgset's block for this export, so a rerun without `--clients`
/// (`up` again, `scale`) does not change who may mount it.
fn kept_clients(spec: &ClusterSpec, exports: Option<&str>) -> Option<Vec<ExportClient>> {
    let file = ExportsFile::parse(exports?, spec).ok()?;
    let clients = file.block_clients(&spec.cluster_export_dir().display().to_string());
    (!clients.is_empty()).then_some(clients)
}

/// The clients for a first run without `--clients`: the cluster's node network, else this host's
/// primary network (with a note saying so).
fn default_clients(nodes: &[IpAddr], addresses: &HostAddresses) -> Result<Vec<ExportClient>> {
    if !nodes.is_empty() {
        return Ok(clients_from_node_addresses(nodes, &addresses.networks));
    }
    match addresses.primary_network() {
        Some(net) => {
            eprintln!(
                "note: no cluster nodes known; allowing this host's primary network {net} (use --clients to choose)"
            );
            Ok(vec![ExportClient::Network(net)])
        }
        None => Err(pgset_nfs::Error::NoClients.into()),
    }
}

/// The NFS server address the volumes name: `--nfs-server`/`nfs.server`, else this host's node
/// address, else its primary address.
pub(crate) fn server_address(
    spec: &ValidSpec,
    addresses: &HostAddresses,
    nodes: &[IpAddr],
) -> Option<String> {
    spec.nfs
        .server
        .clone()
        .or_else(|| nfs_server_address(addresses, nodes).map(|a| a.to_string()))
}

/// The InternalIP addresses of the cluster's nodes. Without a kubeconfig (none named and none
/// at the default places) or when an unnamed default cluster does not answer, a note is printed
/// and the list is empty; a kubeconfig or context the user named must work.
pub(crate) async fn node_addresses(client_args: &ClientArgs) -> Result<Vec<IpAddr>> {
    let named = client_args.kubeconfig.is_some()
        || client_args.context.is_some()
        || std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
    let listed = async {
        let client = client_args.client().await?;
        let nodes = tokio::time::timeout(
            NODE_LIST_TIMEOUT,
            Api::<Node>::all(client).list(&ListParams::default()),
        )
        .await
        .context("list the cluster's nodes: no answer")?
        .context("list the cluster's nodes")?;
        Ok::<_, anyhow::Error>(nodes)
    }
    .await;
    let nodes = match listed {
        Ok(n) => n,
        Err(e) if !named => {
            eprintln!("note: no cluster to ask for node addresses ({e:#})");
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        for a in node
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP")
        {
            match a.address.parse::<IpAddr>() {
                Ok(ip) => out.push(ip),
                Err(_) => bail!(
                    "node {name} has an InternalIP {:?} that is not an IP address: pass --clients and --nfs-server",
                    a.address
                ),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_keeps_the_clients_of_pgsets_block() {
        let spec = ClusterSpec::default();
        let clients = parse_clients("10.0.2.0/24,127.0.0.1").unwrap();
        let file = format!(
            "/srv/other *(ro)\n{}",
            pgset_nfs::render_block(&spec, &clients)
        );
        assert_eq!(kept_clients(&spec, Some(&file)), Some(clients.clone()));
        assert_eq!(kept_clients(&spec, Some("/srv/other *(ro)\n")), None);
        assert_eq!(kept_clients(&spec, None), None);
        let mut other = spec.clone();
        other.name = "other".into();
        assert_eq!(kept_clients(&other, Some(&file)), None);
        // The same name in another namespace is another cluster with its own block.
        let mut staging = spec.clone();
        staging.namespace = "staging".into();
        assert_eq!(kept_clients(&staging, Some(&file)), None);
        let star = parse_clients("*").unwrap();
        let both = format!("{file}{}", pgset_nfs::render_block(&staging, &star));
        assert_eq!(kept_clients(&staging, Some(&both)), Some(star));
        assert_eq!(kept_clients(&spec, Some(&both)), Some(clients));
    }
}
