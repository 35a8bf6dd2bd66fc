//! The no-change `up` figure: the time of a second `pgset up` on the user's own cluster,
//! unchanged, beside 5 s plus the time the cluster takes to answer a cheap read.
//!
//! `up` needs the NFS host and root (its NFS stage reads and writes `/etc/exports`), so it runs
//! (the `pgset` binary beside this one, else on `PATH`, as a subprocess) only when this host is
//! where `up` ran for that cluster: the cluster's mount-probe proof (ConfigMap
//! `<name>-mount-probe`, written by `up`'s NFS path checks) names an NFS server address of this
//! host. It also needs the cluster up (every member Ready at the StatefulSet's current
//! revision), so the run is a no-change run and not the cluster's first rollout. Otherwise a
//! line says which of these is missing. [`skip_reason`] is the pure decision.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use pgset_command::HostCommand;
use pgset_deploy::mount_probe::proof::{proof_name, read_proof};
use pgset_spec::ValidSpec;
use pgset_spec::contract::APP_NAME;

use super::plan;
use crate::cli::ClientArgs;

/// Round trips measured for the cluster's answer time.
const ANSWER_SAMPLES: usize = 5;
/// Limit of each `up`.
const UP_TIMEOUT: Duration = Duration::from_secs(900);
/// How often a running `up` is looked at (the resolution of its time).
const POLL: Duration = Duration::from_millis(20);

/// What the skip decision looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// The `pgset` binary found, if any.
    pub binary: Option<PathBuf>,
    /// This process runs as root.
    pub root: bool,
    /// The NFS server address named by the cluster's mount-probe proof; `None`: no proof.
    pub proof_server: Option<String>,
    /// This host's addresses.
    pub host_addresses: Vec<IpAddr>,
    /// `(Ready members at the current revision, members the spec asks for)`; `None`: no
    /// StatefulSet.
    pub members: Option<(i32, i32)>,
}

/// The NFS server a proof's fingerprint names (its `server <addr>` line).
pub fn proof_server(fingerprint: &str) -> Option<String> {
    fingerprint
        .lines()
        .find_map(|l| l.strip_prefix("server "))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Why the no-change `up` cannot run here, or the binary to run. Pure.
pub fn skip_reason(spec: &ValidSpec, facts: &Facts) -> Result<PathBuf, String> {
    let cluster = format!("cluster {} in namespace {}", spec.name, spec.namespace);
    let Some(binary) = &facts.binary else {
        return Err(format!(
            "no `{APP_NAME}` binary beside this one or on PATH (`cargo build -p pgset-cli` builds it)"
        ));
    };
    if !facts.root {
        return Err(
            "`up` needs root on the NFS host (its NFS stage edits /etc/exports): run the benchmark as root there"
                .into(),
        );
    }
    let Some(server) = &facts.proof_server else {
        return Err(format!(
            "{cluster} has no mount-probe proof (ConfigMap {}): `up` has not run its NFS path checks for it from an NFS host (a StorageClass cluster has none)",
            proof_name(spec)
        ));
    };
    let here = server
        .parse::<IpAddr>()
        .is_ok_and(|a| facts.host_addresses.contains(&a));
    if !here {
        let addresses: Vec<String> = facts
            .host_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(format!(
            "{cluster}'s volumes name NFS server {server}, not this host ({}): `up` ran on another host; run the benchmark there",
            if addresses.is_empty() {
                "no address found".to_string()
            } else {
                addresses.join(", ")
            }
        ));
    }
    match facts.members {
        None => Err(format!(
            "{cluster} is not deployed (no StatefulSet {}): run `{APP_NAME} up` once first",
            spec.statefulset_name()
        )),
        Some((ready, wanted)) if ready != wanted || wanted != spec.replicas => Err(format!(
            "{cluster} is not up as the spec says ({ready} of {wanted} members Ready at the current revision, the spec asks for {}): run `{APP_NAME} up` first, so the measured run changes nothing",
            spec.replicas
        )),
        Some(_) => Ok(binary.clone()),
    }
}

/// The `pgset` binary: beside the running one, else on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(APP_NAME)))
        .filter(|p| p.is_file());
    beside.or_else(|| which::which(APP_NAME).ok())
}

/// Whether this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Ready members at the StatefulSet's current revision and its replicas; `None` when absent.
async fn members(kube: &Client, spec: &ValidSpec) -> Result<Option<(i32, i32)>> {
    let sts = Api::<StatefulSet>::namespaced(kube.clone(), &spec.namespace)
        .get_opt(spec.statefulset_name())
        .await
        .with_context(|| format!("read StatefulSet {}", spec.statefulset_name()))?;
    Ok(sts.map(|s| {
        let wanted = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = s.status.unwrap_or_default();
        let current =
            status.update_revision.is_some() && status.update_revision == status.current_revision;
        let ready = if current {
            status.ready_replicas.unwrap_or(0)
        } else {
            0
        };
        (ready, wanted)
    }))
}

/// Gathers the [`Facts`] for the user's cluster.
pub async fn facts(kube: &Client, user: &ValidSpec) -> Result<Facts> {
    let proof = read_proof(kube, user)
        .await
        .context("read the mount-probe proof")?;
    let addresses = pgset_nfs::probe_addresses(&pgset_command::Executor::default())
        .context("probe this host's addresses")?;
    Ok(Facts {
        binary: find_binary(),
        root: is_root(),
        proof_server: proof.and_then(|p| proof_server(&p.fingerprint)),
        host_addresses: addresses.networks.iter().map(|(a, _)| *a).collect(),
        members: members(kube, user).await?,
    })
}

/// The cluster's answer time: the median round trip of a cheap read (`get` of a namespace).
pub async fn answer_time(kube: &Client, namespace: &str) -> Result<Duration> {
    let api = Api::<Namespace>::all(kube.clone());
    let mut samples = Vec::new();
    for _ in 0..ANSWER_SAMPLES {
        let t = Instant::now();
        api.get(namespace)
            .await
            .with_context(|| format!("read namespace {namespace}"))?;
        samples.push(t.elapsed());
    }
    Ok(plan::median(&samples).unwrap_or_default())
}

/// The arguments of `up` for `user`'s spec written to `config`, with the benchmark's client.
pub fn up_args(config: &Path, client: &ClientArgs) -> Vec<String> {
    let mut args = vec![
        "up".to_string(),
        "--config".to_string(),
        config.display().to_string(),
    ];
    if let Some(k) = &client.kubeconfig {
        args.extend(["--kubeconfig".to_string(), k.display().to_string()]);
    }
    if let Some(c) = &client.context {
        args.extend(["--context".to_string(), c.clone()]);
    }
    args
}

/// The times of two `up` runs in a row on the user's cluster (the second is the figure); each
/// run's output goes to a log file in `logs`, named in the error when a run fails.
pub async fn run_twice(
    binary: &Path,
    user: &ValidSpec,
    client: &ClientArgs,
    logs: &Path,
) -> Result<(Duration, Duration)> {
    let config = logs.join("pgset.yaml");
    // JSON is YAML: the spec exactly as the benchmark loaded it.
    std::fs::write(&config, serde_json::to_string_pretty(&**user)?)
        .with_context(|| format!("write {}", config.display()))?;
    let args = up_args(&config, client);
    let mut took = Vec::new();
    for i in 1..=2 {
        let log = logs.join(format!("up-{i}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let command = HostCommand::new(binary).args(&args).quiet();
        let started = Instant::now();
        let handle = command
            .start_logging_to(out)
            .with_context(|| format!("start {}", binary.display()))?;
        let status = loop {
            if let Some(done) = handle
                .try_wait()
                .with_context(|| format!("wait for {}", binary.display()))?
            {
                break done.status;
            }
            if started.elapsed() > UP_TIMEOUT {
                // Ends the child this benchmark started, by its handle.
                let _ = handle.kill();
                bail!(
                    "`{} up` run {i} did not end within {UP_TIMEOUT:?}; its output: {}",
                    binary.display(),
                    log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        if !status.success() {
            bail!(
                "`{} up` run {i} failed ({}); its output: {}",
                binary.display(),
                pgset_command::status_words(status),
                log.display()
            );
        }
        took.push(started.elapsed());
    }
    Ok((took[0], took[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::ClusterSpec;

    fn spec() -> ValidSpec {
        ClusterSpec {
            replicas: 3,
            ..ClusterSpec::default()
        }
        .validated()
        .unwrap()
    }

    fn ready_here() -> Facts {
        Facts {
            binary: Some(PathBuf::from("/usr/local/bin/pgset")),
            root: true,
            proof_server: Some("192.168.56.10".into()),
            host_addresses: vec![
                "10.0.2.15".parse().unwrap(),
                "192.168.56.10".parse().unwrap(),
            ],
            members: Some((3, 3)),
        }
    }

    #[test]
    fn runs_the_binary_when_this_host_holds_the_proofs_nfs_server_as_root_and_the_cluster_is_up() {
        assert_eq!(
            skip_reason(&spec(), &ready_here()),
            Ok(PathBuf::from("/usr/local/bin/pgset"))
        );
    }

    #[test]
    fn skips_when_the_proof_names_another_hosts_nfs_server() {
        let facts = Facts {
            proof_server: Some("192.168.56.99".into()),
            ..ready_here()
        };
        let why = skip_reason(&spec(), &facts).unwrap_err();
        assert!(
            why.contains("NFS server 192.168.56.99, not this host (10.0.2.15, 192.168.56.10)"),
            "{why}"
        );
    }

    #[test]
    fn skips_without_a_mount_probe_proof_naming_its_configmap() {
        let facts = Facts {
            proof_server: None,
            ..ready_here()
        };
        let why = skip_reason(&spec(), &facts).unwrap_err();
        assert!(
            why.contains("no mount-probe proof (ConfigMap pgset-mount-probe)"),
            "{why}"
        );
    }

    #[test]
    fn skips_without_root_or_without_the_binary() {
        let why = skip_reason(
            &spec(),
            &Facts {
                root: false,
                ..ready_here()
            },
        )
        .unwrap_err();
        assert!(why.contains("needs root"), "{why}");
        let why = skip_reason(
            &spec(),
            &Facts {
                binary: None,
                ..ready_here()
            },
        )
        .unwrap_err();
        assert!(why.contains("no `pgset` binary"), "{why}");
    }

    #[test]
    fn skips_when_the_cluster_is_absent_or_not_every_member_is_ready_so_the_run_would_change_it() {
        let why = skip_reason(
            &spec(),
            &Facts {
                members: None,
                ..ready_here()
            },
        )
        .unwrap_err();
        assert!(why.contains("not deployed (no StatefulSet pgset)"), "{why}");
        let why = skip_reason(
            &spec(),
            &Facts {
                members: Some((2, 3)),
                ..ready_here()
            },
        )
        .unwrap_err();
        assert!(why.contains("2 of 3 members Ready"), "{why}");
        // Scaled away from the spec: `up` would scale it back, a change.
        let why = skip_reason(
            &spec(),
            &Facts {
                members: Some((5, 5)),
                ..ready_here()
            },
        )
        .unwrap_err();
        assert!(why.contains("the spec asks for 3"), "{why}");
    }

    #[test]
    fn proof_server_is_read_from_the_fingerprints_server_line() {
        let fp =
            "export /nfsfileshare\nnode n1 uid=u boot=b\nserver 192.168.56.10\nvolume pv1 absent\n";
        assert_eq!(proof_server(fp).as_deref(), Some("192.168.56.10"));
        assert_eq!(proof_server("export /x\n"), None);
    }

    #[test]
    fn the_spec_written_for_up_reads_back_as_the_same_spec() {
        let mut s = ClusterSpec {
            replicas: 5,
            namespace: "db".into(),
            ..ClusterSpec::default()
        };
        s.nfs.server = Some("192.168.56.10".into());
        let text = serde_json::to_string_pretty(&s).unwrap();
        assert_eq!(ClusterSpec::parse(&text).unwrap(), s);
    }

    #[test]
    fn up_args_name_the_written_spec_and_pass_the_client_flags_on() {
        let client = ClientArgs {
            kubeconfig: Some(PathBuf::from("/root/.kube/lab")),
            context: Some("lab".into()),
            ..ClientArgs::default()
        };
        assert_eq!(
            up_args(Path::new("/tmp/b/pgset.yaml"), &client),
            [
                "up",
                "--config",
                "/tmp/b/pgset.yaml",
                "--kubeconfig",
                "/root/.kube/lab",
                "--context",
                "lab"
            ]
        );
        assert_eq!(
            up_args(Path::new("/tmp/b/pgset.yaml"), &ClientArgs::default()),
            ["up", "--config", "/tmp/b/pgset.yaml"]
        );
    }
}
