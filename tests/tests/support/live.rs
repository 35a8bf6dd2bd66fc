//! Shared by the live-cluster tests: running `cargo xtask` with a spec file, and judging a
//! verify report.

#![allow(dead_code)]

use std::path::Path;

use pgset_tests::workspace_root;
use pgset_verify::{Report, Verdict, names};

/// What one `cargo xtask` run printed and how it ended.
pub struct XtaskRun {
    /// Standard output.
    pub stdout: String,
    /// Standard error (progress lines).
    pub stderr: String,
    /// Exit status 0.
    pub ok: bool,
}

/// `cargo xtask <args> --config <spec file>` in the workspace. Progress is echoed after the run
/// so a failing test shows it.
pub fn xtask(spec_file: &Path, args: &[&str]) -> XtaskRun {
    let mut argv: Vec<String> = vec!["xtask".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.push("--config".into());
    argv.push(spec_file.display().to_string());
    let out = pgset_command::HostCommand::new("cargo")
        .args(&argv)
        .dir(workspace_root())
        .output()
        .expect("run cargo xtask");
    let run = XtaskRun {
        ok: out.success(),
        stdout: out.stdout,
        stderr: out.stderr,
    };
    eprint!("{}", run.stderr);
    run
}

/// Every check reported, in order, and passed.
pub fn assert_all_passed(report: &Report, run: &str) {
    let summary: Vec<String> = report
        .checks
        .iter()
        .map(|c| format!("{} {:?}: {}", c.name, c.verdict, c.message))
        .collect();
    assert_eq!(
        report
            .checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        names::ALL,
        "{run}: every check reported, in order"
    );
    assert!(
        report.checks.iter().all(|c| c.verdict == Verdict::Pass),
        "{run}: {summary:#?}"
    );
    assert!(report.passed, "{run}");
    assert!(report.warnings.is_empty(), "{run}: {:?}", report.warnings);
}

/// Deletes the test's namespace, then re-raises the scenario's panic, if it had one, so the
/// clean-up runs whether the scenario passed or not.
pub async fn finish(
    test: &str,
    namespaces: &kube::Api<k8s_openapi::api::core::v1::Namespace>,
    ns: &str,
    outcome: Result<(), tokio::task::JoinError>,
) {
    if let Err(e) = namespaces
        .delete(ns, &kube::api::DeleteParams::default())
        .await
    {
        eprintln!("{test}: could not delete namespace {ns}: {e}");
    }
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("{test}: {e}"),
        }
    }
}

/// Creates the test's namespace; returns the namespaces API for [`finish`].
pub async fn create_namespace(
    client: &kube::Client,
    ns: &str,
) -> kube::Api<k8s_openapi::api::core::v1::Namespace> {
    let namespaces = kube::Api::all(client.clone());
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    namespaces
        .create(&kube::api::PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("create namespace {ns}: {e}"));
    namespaces
}

/// Makes a cluster's directories on its NFS export from inside the cluster, as `cargo xtask nfs`
/// would on the NFS host: the export made traversable when it is not, the cluster's own
/// directory (`<export>/<namespace>.<name>`, 0700; 0711 in templates mode) and, in templates
/// mode, each member's directory (0700), all owned by the postgres uid. A pod running as that
/// uid mounts the export (an inline NFS volume, so the namespace must allow them) and exits;
/// it is deleted afterwards. Nothing that exists is removed or emptied.
pub async fn prepare_cluster_dirs(client: &kube::Client, spec: &pgset_spec::ClusterSpec) {
    use k8s_openapi::api::core::v1::Pod;
    use pgset_spec::StorageMode;

    let server = spec
        .nfs
        .server
        .clone()
        .expect("the spec names its NFS server");
    let key = spec.placement_key();
    let templates = spec.storage.mode == StorageMode::Templates;
    let mut script = format!(
        "set -eu\ncase \"$(stat -c %a /export)\" in *[1357]) ;; *) chmod go+x /export ;; esac\n\
         mkdir -p /export/{key}\nchmod {} /export/{key}\n",
        if templates { "0711" } else { "0700" }
    );
    if templates {
        for i in 0..spec.replicas {
            let pod = spec.pod_name(i);
            script.push_str(&format!(
                "mkdir -p /export/{key}/{pod}\nchmod 0700 /export/{key}/{pod}\n"
            ));
        }
    }
    script.push_str(&format!("ls -ln /export/{key}\n"));
    let name = "pgset-prepare-dirs";
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": spec.namespace},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsUser": spec.postgres.uid, "runAsGroup": spec.postgres.gid,
                "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": "mkdir", "image": spec.postgres.image,
                "command": ["sh", "-c", script],
                "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}
                },
                "volumeMounts": [{"name": "export", "mountPath": "/export"}]
            }],
            "volumes": [{"name": "export", "nfs": {
                "server": server, "path": spec.nfs.export.display().to_string()
            }}]
        }
    }))
    .expect("the preparing pod");
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &spec.namespace);
    pods.create(&kube::api::PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let finished = kube::runtime::wait::await_condition(pods.clone(), name, |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
    });
    let done = tokio::time::timeout(std::time::Duration::from_secs(300), finished).await;
    let state = pods.get_opt(name).await.ok().flatten();
    let phase = state
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let log = pods
        .logs(name, &kube::api::LogParams::default())
        .await
        .unwrap_or_default();
    let _ = pods.delete(name, &kube::api::DeleteParams::default()).await;
    assert!(
        done.is_ok() && phase == "Succeeded",
        "preparing {}/{key} on {server}: pod {name} ended {phase:?} ({}): {log}",
        spec.nfs.export.display(),
        if done.is_ok() {
            "finished"
        } else {
            "timed out"
        }
    );
    eprintln!("prepared {}/{key}:\n{log}", spec.nfs.export.display());
}

/// A cluster of `replicas` members named `name` in `namespace` on the storage the environment
/// names (`PGSET_LIVE_STORAGE_CLASS`: templates mode on that class; `PGSET_LIVE_NFS_SERVER` and
/// `PGSET_LIVE_NFS_EXPORT`: shared mode on the export), with the images of [`live_images`];
/// or why it cannot be built here.
pub fn live_cluster_spec(
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Result<pgset_spec::ValidSpec, String> {
    use pgset_spec::{ClusterSpec, StorageMode};
    let mut spec = ClusterSpec {
        name: name.to_string(),
        namespace: namespace.to_string(),
        replicas,
        ..ClusterSpec::default()
    };
    match (
        std::env::var("PGSET_LIVE_STORAGE_CLASS"),
        std::env::var("PGSET_LIVE_NFS_SERVER"),
    ) {
        (Ok(class), _) => {
            spec.storage.mode = StorageMode::Templates;
            spec.storage.storage_class = Some(class);
        }
        (Err(_), Ok(server)) => {
            spec.storage.mode = StorageMode::Shared;
            spec.nfs.server = Some(server);
            if let Ok(export) = std::env::var("PGSET_LIVE_NFS_EXPORT") {
                spec.nfs.export = export.into();
            }
        }
        _ => {
            return Err(
                "needs storage for its own cluster: set PGSET_LIVE_STORAGE_CLASS (templates mode) or PGSET_LIVE_NFS_SERVER (shared mode on the NFS export)".into(),
            );
        }
    }
    live_images(&mut spec);
    spec.validated().map_err(|e| e.to_string())
}

/// The images the environment names: `PGSET_LIVE_AGENT_IMAGE` (an agent image other than the
/// default) and `PGSET_LIVE_POSTGRES_IMAGE` (a registry mirror of the official image, or a
/// locally built image of another major), each when set.
pub fn live_images(spec: &mut pgset_spec::ClusterSpec) {
    if let Ok(image) = std::env::var("PGSET_LIVE_AGENT_IMAGE") {
        spec.agent.image = image;
    }
    if let Ok(image) = std::env::var("PGSET_LIVE_POSTGRES_IMAGE") {
        spec.postgres.image = image;
    }
}

/// Shared mode: the cluster's own NFS volume (`<namespace>.<claim>`, in its own directory); none
/// on a StorageClass.
pub fn own_volumes(
    spec: &pgset_spec::ValidSpec,
) -> Vec<k8s_openapi::api::core::v1::PersistentVolume> {
    match &spec.nfs.server {
        Some(server) if spec.storage.storage_class.is_none() => {
            pgset_nfs::persistent_volumes(spec, server)
        }
        _ => Vec::new(),
    }
}

/// Runs `scenario` on a cluster of its own: `replicas` members named `name` in a new namespace
/// `<name>-<nanos>` (skipped with a printed reason without KUBECONFIG or storage), then takes
/// the cluster down with its claims and Secret, deletes its volumes (the data stays on the
/// export) and the namespace, and re-raises the scenario's panic.
pub async fn on_a_cluster_of_its_own<F, Fut>(test: &str, name: &str, replicas: i32, scenario: F)
where
    F: FnOnce(kube::Client, pgset_spec::ValidSpec) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if pgset_tests::live_kubeconfig(test).is_none() {
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let ns = format!("{name}-{nanos}");
    let spec = match live_cluster_spec(&ns, name, replicas) {
        Ok(s) => s,
        Err(reason) => {
            pgset_tests::skip(test, &reason);
            return;
        }
    };
    let client = kube::Client::try_default()
        .await
        .expect("client from KUBECONFIG");
    let namespaces = create_namespace(&client, &ns).await;
    eprintln!("{test}: namespace {ns}, storage {}", spec.storage.mode);
    let outcome = tokio::spawn(scenario(client.clone(), spec.clone())).await;
    let quiet = &mut |_: &str| {};
    if let Err(e) = pgset_deploy::teardown::down(
        &client,
        &spec,
        pgset_deploy::teardown::Purge::Everything,
        std::time::Duration::from_secs(600),
        quiet,
    )
    .await
    {
        eprintln!("{test}: tear down: {e}");
    }
    let pvs: kube::Api<k8s_openapi::api::core::v1::PersistentVolume> = kube::Api::all(client);
    for pv in own_volumes(&spec) {
        let name = pv.metadata.name.unwrap_or_default();
        let _ = pvs.delete(&name, &kube::api::DeleteParams::default()).await;
    }
    finish(test, &namespaces, &ns, outcome).await;
}

/// Deploys `spec` as `cargo xtask up` would on a prepared host (its own volumes and directories
/// in shared mode, the objects, the ordered rollout), then writes the spec to a file for
/// `cargo xtask … --config`; returns the directory holding it (removed when dropped) and the
/// file.
pub async fn deploy_own_cluster(
    client: &kube::Client,
    spec: &pgset_spec::ValidSpec,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let progress = &mut |line: &str| eprintln!("    {line}");
    let pvs = own_volumes(spec);
    if !pvs.is_empty() {
        prepare_cluster_dirs(client, spec).await;
        pgset_deploy::storage::apply_volumes(
            client,
            &pvs,
            pgset_deploy::apply::ApplyMode::Apply,
            progress,
        )
        .await
        .expect("apply the volumes");
    }
    pgset_deploy::apply::deploy(
        client,
        spec,
        pgset_deploy::apply::ApplyMode::Apply,
        progress,
    )
    .await
    .expect("deploy");
    pgset_deploy::rollout::wait_for_rollout(
        client,
        spec,
        spec.replicas,
        std::time::Duration::from_secs(600),
        &mut pgset_deploy::rollout::step_lines(progress),
    )
    .await
    .expect("rollout");
    let dir = tempfile::tempdir().expect("temp dir");
    let spec_file = dir.path().join("pgset.yaml");
    std::fs::write(&spec_file, spec.to_yaml()).expect("write the spec file");
    (dir, spec_file)
}

/// `PGSET_LIVE_PATIENCE`: how much slower than the reference this environment is (1 when unset).
pub fn patience() -> f64 {
    match std::env::var("PGSET_LIVE_PATIENCE") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f > 0.0)
            .unwrap_or_else(|| panic!("PGSET_LIVE_PATIENCE={v}: give a factor above 0")),
        Err(_) => 1.0,
    }
}
