//! `cargo xtask doctor`: a read-only check of the NFS path of the database from this host (the
//! NFS server): export options, owners and modes, the volumes' mount options, SELinux and
//! firewalld; each problem with its fix and the PostgreSQL documentation behind it.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use pgset_nfs::{Diagnosis, Duct, Health, HostPaths, VolumesRead};
use pgset_spec::ClusterSpec;

use crate::cli::{ClientArgs, SpecArgs};
use crate::verify::Output;

/// Arguments of `cargo xtask doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How to print the findings
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the task: probes (only reads), judges, prints; fails when a check fails.
pub async fn run(args: Args) -> Result<()> {
    let spec = args.spec.load(&args.client)?;
    let paths = HostPaths::default();
    let runner = Duct::default();
    let facts = pgset_nfs::probe(&runner, &paths, &spec).context("probe the host")?;
    let members =
        pgset_nfs::probe_member_states(&paths, &spec).context("read the member directories")?;
    let volumes = read_volumes(&spec, &args.client).await;
    let found = pgset_nfs::diagnose(&spec, &facts, &members, &volumes);
    match args.output {
        Output::Table => print!("{}", table(&found)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&json(&found))?),
    }
    let failed = found.iter().filter(|d| d.health == Health::Fail).count();
    if failed > 0 {
        bail!("{failed} check(s) failed (listed above with their fixes)");
    }
    Ok(())
}

/// pgset's volumes for the spec, read from the API; `None` without a cluster to ask (none
/// named and none at the default places).
async fn read_volumes(spec: &ClusterSpec, client_args: &ClientArgs) -> VolumesRead {
    let named = client_args.kubeconfig.is_some()
        || client_args.context.is_some()
        || std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
    let client = match client_args.client().await {
        Ok(c) => c,
        Err(e) if named => return Some(Err(format!("{e:#}"))),
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

fn table(found: &[Diagnosis]) -> String {
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
