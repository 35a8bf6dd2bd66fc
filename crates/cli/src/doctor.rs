//! `cargo xtask doctor`: a check of the NFS path of the database from this host (the NFS
//! server) and from every node: export options, owners and modes, the volumes' mount options,
//! SELinux and firewalld, read-only; then, when a cluster answers, a short-lived pod per
//! schedulable node that mounts the export through a volume and claim of its own and is
//! removed with them. Each problem with its fix and the PostgreSQL documentation behind it.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use pgset_command::Executor;
use pgset_deploy::mount_probe::proof::{Probed, probe_unless_proven};
use pgset_deploy::mount_probe::{self, probe_nodes};
use pgset_nfs::{Diagnosis, Health, HostPaths, VolumesRead};

use crate::args::{ClientArgs, Output, ProbeArgs, SpecArgs};
use crate::context::{Nodes, RunContext};

/// Arguments of `cargo xtask doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How to print the findings
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What the doctor stage takes beyond the context.
#[derive(Debug, Clone, Copy)]
pub struct StageOptions<'a> {
    /// The mount probe's flags.
    pub probe: &'a ProbeArgs,
    /// Run the checks on this host (it is the NFS host).
    pub host_checks: bool,
    /// How to print the findings.
    pub output: Output,
    /// Run as `up`'s stage: the findings indented under its header, and a failure says that
    /// nothing was deployed.
    pub in_up: bool,
}

/// Runs the task: probes the host (only reads), probes the nodes' mounts (its own objects
/// only, removed after), judges, prints; fails when a check fails.
pub async fn run(args: Args) -> Result<()> {
    let ctx = RunContext::for_command(&args.spec, &args.client, None)?;
    stage(
        &ctx,
        &StageOptions {
            probe: &args.probe,
            host_checks: true,
            output: args.output,
            in_up: false,
        },
    )
    .await
}

/// Runs the checks with the invocation's spec, client and reporter and prints the findings
/// (a dry run says which checks would run): `doctor`, and `up`'s NFS path checks.
pub async fn stage(ctx: &RunContext, opts: &StageOptions<'_>) -> Result<()> {
    let reporter = ctx.reporter();
    let host = opts.host_checks;
    if ctx.dry_run().is_some() {
        reporter.line(&format!(
            "    would run `{} doctor`'s checks{}{}",
            pgset_spec::contract::program_name(),
            if host { ": this NFS host's" } else { ":" },
            if opts.probe.no_mount_probe {
                ""
            } else if host {
                ", and a pod per schedulable node mounting the export (removed after)"
            } else {
                " a pod per schedulable node mounting the export (removed after)"
            }
        ));
        return Ok(());
    }
    let mut found = if host {
        host_checks(ctx).await?
    } else {
        Vec::new()
    };
    found.extend(mount_checks(ctx, opts.probe).await);
    match opts.output {
        Output::Table => {
            let indent = if opts.in_up { "    " } else { "" };
            for line in table(&found).lines() {
                reporter.result(&format!("{indent}{line}"));
            }
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&json(&found))?),
    }
    let failed = found.iter().filter(|d| d.health == Health::Fail).count();
    if failed > 0 {
        if opts.in_up {
            bail!(
                "{failed} NFS path check(s) failed (listed above with their fixes); nothing was deployed"
            );
        }
        bail!("{failed} check(s) failed (listed above with their fixes)");
    }
    Ok(())
}

/// Doctor's checks on this host (the NFS server): export, directories, the volumes' mount
/// options (read from the API when a cluster answers), SELinux, firewalld. Only reads.
pub(crate) async fn host_checks(ctx: &RunContext) -> Result<Vec<Diagnosis>> {
    let spec = ctx.spec();
    let paths = HostPaths::default();
    let runner = Executor::default();
    let facts = pgset_nfs::probe(&runner, &paths, spec).context("probe the host")?;
    let members =
        pgset_nfs::probe_member_states(&paths, spec).context("read the member directories")?;
    let volumes = read_volumes(ctx).await;
    Ok(pgset_nfs::diagnose(spec, &facts, &members, &volumes))
}

fn skipped(message: impl Into<String>) -> Diagnosis {
    Diagnosis {
        name: mount_probe::DIAGNOSIS,
        health: Health::Skipped,
        message: message.into(),
        fix: None,
        docs: None,
    }
}

fn failed(message: impl Into<String>, fix: impl Into<String>) -> Diagnosis {
    Diagnosis {
        name: mount_probe::DIAGNOSIS,
        health: Health::Fail,
        message: message.into(),
        fix: Some(fix.into()),
        docs: None,
    }
}

/// Doctor's per-node mount probe, when a cluster answers: one finding per schedulable Ready
/// node (a pod there mounted the cluster's directory and listed it, or why not), plus one for
/// the nodes left out. Writes only the probe's own pods, claims and volumes, and removes them
/// (also on Ctrl-C).
pub(crate) async fn mount_checks(ctx: &RunContext, probe: &ProbeArgs) -> Vec<Diagnosis> {
    let spec = ctx.spec();
    if probe.no_mount_probe {
        return vec![skipped("--no-mount-probe")];
    }
    if spec.storage.storage_class.is_some() {
        return vec![skipped(
            "the claims come from a StorageClass, not pgset's NFS volumes",
        )];
    }
    let named = ctx.cluster_named();
    let client = match ctx.client().await {
        Ok(c) => c,
        Err(e) if named => {
            return vec![failed(
                format!("the cluster named did not answer: {e:#}"),
                "check --kubeconfig/--context (`kubectl get nodes`), or pass --no-mount-probe",
            )];
        }
        Err(_) => {
            return vec![skipped(
                "no cluster to run the probe pods on (pass --kubeconfig)",
            )];
        }
    };
    let nodes = match ctx.nodes().await {
        Ok(Nodes::Listed(nodes)) => nodes,
        Err(e) => {
            return vec![failed(
                format!("the cluster did not answer: {e:#}"),
                "check --kubeconfig/--context (`kubectl get nodes`), or pass --no-mount-probe",
            )];
        }
        Ok(Nodes::NoCluster(e)) => {
            return vec![skipped(format!(
                "no cluster answered at the default kubeconfig: {e}"
            ))];
        }
    };
    let (on, off) = probe_nodes(nodes, spec);
    let mut out = Vec::new();
    if !off.is_empty() {
        out.push(skipped(format!(
            "not probed (no member runs there): {}",
            off.iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    if on.is_empty() {
        out.push(failed(
            "no node is Ready and schedulable: no member could run, and none can mount the export",
            format!(
                "`{} up`'s preflight names what keeps each node off",
                pgset_spec::contract::program_name()
            ),
        ));
        return out;
    }
    let reporter = ctx.reporter();
    let server = match probe_server(ctx, client).await {
        Ok(s) => s,
        Err(e) => {
            out.push(failed(
                format!("cannot tell the NFS server's address: {e:#}"),
                "pass --nfs-server ADDR (the address the nodes reach the NFS host at)",
            ));
            return out;
        }
    };
    reporter.line(&format!(
        "==> mount probe: {} node(s) mount {server}:{} (pods, claims and volumes labelled {}, removed after)",
        on.len(),
        spec.cluster_export_dir().display(),
        mount_probe::probe_selector(spec)
    ));
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let probed = probe_unless_proven(
        client,
        spec,
        &server,
        nodes,
        &on,
        probe.probe,
        probe.probe_timeout,
        interrupted,
        &mut |line: &str| reporter.line(&format!("    {line}")),
    )
    .await;
    // Listening for Ctrl-C replaced its default for the whole process: from here on it stops
    // the process again, as it did before the probe (`up` goes on to deploy).
    let said = reporter.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            said.line("interrupted");
            std::process::exit(130);
        }
    });
    match probed {
        Ok(Probed::Ran(found)) => out.extend(mount_probe::diagnoses(spec, &server, &found)),
        Ok(Probed::Proven { at }) => out.push(Diagnosis {
            name: mount_probe::DIAGNOSIS,
            health: Health::Pass,
            message: proven_message(&at),
            fix: None,
            docs: None,
        }),
        Err(e) => out.push(failed(
            format!("the mount probe did not complete: {e}"),
            "see the message; `kubectl get pod,pvc,pv -A -l app.kubernetes.io/component=mount-probe` lists what a probe made",
        )),
    }
    out
}

/// What a skipped mount probe says: when it proved the same volumes and nodes, and how to force it.
pub(crate) fn proven_message(at: &str) -> String {
    format!("mount probe: proven at {at} for the same volumes and nodes; --probe forces it")
}

/// The NFS server the probe mounts: the one the cluster's existing volumes name (what the
/// members really mount), else the spec's or the detected one (as `volumes` chooses it).
async fn probe_server(ctx: &RunContext, client: &kube::Client) -> Result<String> {
    let spec = ctx.spec();
    let api: Api<PersistentVolume> = Api::all(client.clone());
    for pv in pgset_nfs::persistent_volumes(spec, "0.0.0.0") {
        let name = pv.metadata.name.unwrap_or_default();
        if let Ok(Some(found)) = api.get_opt(&name).await
            && let Some(nfs) = found.spec.and_then(|s| s.nfs)
        {
            return Ok(nfs.server);
        }
    }
    ctx.volume_server(spec).await
}

/// pgset's volumes for the spec, read from the API; `None` without a cluster to ask (none
/// named and none at the default places).
async fn read_volumes(ctx: &RunContext) -> VolumesRead {
    let spec = ctx.spec();
    let client = match ctx.client().await {
        Ok(c) => c.clone(),
        Err(e) if ctx.cluster_named() => return Some(Err(format!("{e:#}"))),
        Err(_) => return None,
    };
    let api: Api<PersistentVolume> = Api::all(client);
    let mut out = Vec::new();
    // The names are the builder's; the server address does not change a name.
    for pv in pgset_nfs::persistent_volumes(spec, "0.0.0.0") {
        let name = pv.metadata.name.unwrap_or_default();
        match api.get_opt(&name).await {
            Ok(found) => out.push((name, found)),
            Err(e) => return Some(Err(format!("read PersistentVolume {name}: {e}"))),
        }
    }
    Some(Ok(out))
}

pub(crate) fn table(found: &[Diagnosis]) -> String {
    let width = found.iter().map(|d| d.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for d in found {
        out.push_str(&format!(
            "{:<width$}  {:<7}  {}\n",
            d.name,
            d.health.to_string(),
            d.message
        ));
        if let Some(fix) = &d.fix {
            out.push_str(&format!("{:<width$}           fix: {fix}\n", ""));
        }
        if let Some(docs) = d.docs {
            out.push_str(&format!("{:<width$}           see: {docs}\n", ""));
        }
    }
    out
}

fn json(found: &[Diagnosis]) -> serde_json::Value {
    serde_json::json!({
        "passed": found.iter().all(|d| d.health != Health::Fail),
        "checks": found.iter().map(|d| serde_json::json!({
            "name": d.name,
            "verdict": d.health.to_string(),
            "message": d.message,
            "fix": d.fix,
            "docs": d.docs,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::ClusterSpec;

    #[tokio::test]
    async fn the_mount_probe_is_skipped_when_asked_or_for_a_storage_class_and_a_named_cluster_must_answer()
     {
        let ctx = |spec: ClusterSpec, client: ClientArgs| {
            RunContext::new(
                spec.validated().unwrap(),
                client,
                None,
                crate::progress::Reporter::recording(false),
            )
        };
        let spec = ClusterSpec::default();
        let off = ProbeArgs {
            no_mount_probe: true,
            ..ProbeArgs::default()
        };
        let found = mount_checks(&ctx(spec.clone(), ClientArgs::default()), &off).await;
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].name, found[0].health, found[0].message.as_str()),
            ("node-mount", Health::Skipped, "--no-mount-probe")
        );

        let mut class = ClusterSpec::default();
        class.storage.mode = pgset_spec::StorageMode::Templates;
        class.storage.storage_class = Some("fast".into());
        let found = mount_checks(&ctx(class, ClientArgs::default()), &ProbeArgs::default()).await;
        assert_eq!(found[0].health, Health::Skipped);
        assert!(found[0].message.contains("StorageClass"), "{found:?}");

        let missing = ClientArgs {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            ..ClientArgs::default()
        };
        let found = mount_checks(&ctx(spec, missing), &ProbeArgs::default()).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].health, Health::Fail, "{found:?}");
        assert!(
            found[0].message.contains("/nonexistent/kubeconfig"),
            "{found:?}"
        );
    }

    #[test]
    fn json_and_table_carry_the_fix_and_the_docs() {
        let found = vec![
            Diagnosis {
                name: "export-options",
                health: Health::Fail,
                message: "10.0.0.0/24 is exported async".into(),
                fix: Some("run `cargo xtask nfs`".into()),
                docs: Some(pgset_nfs::DOCS_NFS),
            },
            Diagnosis {
                name: "firewalld-services",
                health: Health::Pass,
                message: "firewalld does not run".into(),
                fix: None,
                docs: None,
            },
        ];
        let j = json(&found);
        assert_eq!(j["passed"], false);
        assert_eq!(j["checks"][0]["verdict"], "fail");
        assert_eq!(j["checks"][0]["docs"], pgset_nfs::DOCS_NFS);
        assert_eq!(j["checks"][1]["fix"], serde_json::Value::Null);
        let t = table(&found);
        assert!(
            t.contains("export-options      fail     10.0.0.0/24 is exported async"),
            "{t}"
        );
        assert!(t.contains("fix: run `cargo xtask nfs`"), "{t}");
        assert!(t.contains(&format!("see: {}", pgset_nfs::DOCS_NFS)), "{t}");
    }
}
