//! Against a live cluster (KUBECONFIG), on a kubeadm node that is also the NFS host, as root:
//! `cargo xtask up` forms a verified 3-member set, `verify --scale-test --disruptive` passes,
//! `status` shows it, a second `up` changes nothing and says so, and `down --purge --yes`
//! removes the claims and volumes.
//!
//! It uses `templates` storage under a cluster name and namespace of its own, so its volumes
//! (`<ns>.data-pgset-live-N`), its directory (`<export>/<ns>.pgset-live`) and its block in
//! `/etc/exports` (`<ns>/pgset-live`) never touch a cluster already running on the host. The
//! directory and the block stay (data is never deleted).

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use pgset_spec::{ClusterSpec, StorageMode};
use pgset_tests::live_kubeconfig;
use pgset_verify::{ClusterStatus, Report};
use support::{assert_all_passed, xtask};

#[path = "support/live.rs"]
mod support;

const CLUSTER: &str = "pgset-live";

/// Why `up` cannot run its host stages here, if it cannot.
fn host_stage_blocker() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("`up` provisions NFS and imports the agent image: run as root".into());
    }
    if pgset_tests::tool("ctr").is_none() {
        return Some("`up` imports the agent image with ctr: run on a containerd node".into());
    }
    None
}

fn scenario(spec: &ClusterSpec) {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec_file = dir.path().join("pgset.yaml");
    std::fs::write(&spec_file, spec.to_yaml()).expect("write the spec file");

    let first = xtask(&spec_file, &["up"]);
    assert!(first.ok, "first up failed");
    for stage in [
        "NFS host",
        "volumes",
        "agent image",
        "deploy and rollout",
        "verify",
    ] {
        assert!(
            first.stderr.contains(&format!("] {stage}")),
            "stage {stage} missing from up's progress"
        );
    }
    assert!(first.stderr.contains("PostgreSQL is up: 3 member(s)"));

    let verify = xtask(
        &spec_file,
        &["verify", "--scale-test", "--disruptive", "-o", "json"],
    );
    let report: Report =
        serde_json::from_str(&verify.stdout).unwrap_or_else(|e| panic!("{e}: {}", verify.stdout));
    assert_all_passed(&report, "verify after up");
    assert!(verify.ok);

    let status = xtask(&spec_file, &["status", "-o", "json"]);
    assert!(status.ok, "status exits 0");
    let status: ClusterStatus =
        serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", status.stdout));
    assert_eq!((status.desired, status.ready), (3, 3));

    // Everything is in place: a second up changes nothing and each stage says so.
    let second = xtask(&spec_file, &["up"]);
    assert!(second.ok, "second up failed");
    assert!(
        second.stderr.contains("nothing to change") || second.stdout.contains("nothing to change"),
        "the NFS stage did not report that nothing changes"
    );
    let nothing_changed = second.stderr.matches("nothing changed (").count();
    assert_eq!(
        nothing_changed, 2,
        "volumes and deploy should both report nothing changed"
    );
    for verb in ["created ", "configured "] {
        assert!(
            !second
                .stderr
                .lines()
                .any(|l| l.trim_start().starts_with(verb)),
            "a second up {verb}an object"
        );
    }

    let down = xtask(&spec_file, &["down", "--purge", "--yes"]);
    assert!(down.ok, "down --purge --yes failed");
}

#[tokio::test]
async fn up_forms_a_verified_set_and_a_second_up_changes_nothing() {
    let test = "up_forms_a_verified_set_and_a_second_up_changes_nothing";
    if live_kubeconfig(test).is_none() {
        return;
    }
    if let Some(reason) = host_stage_blocker() {
        pgset_tests::skip(test, &reason);
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let ns = format!("pgset-live-{nanos}");
    let mut spec = ClusterSpec {
        name: CLUSTER.into(),
        namespace: ns.clone(),
        replicas: 3,
        ..ClusterSpec::default()
    };
    spec.storage.mode = StorageMode::Templates;
    // `up` builds and imports its own agent image; only the postgres image may come from the
    // environment.
    if let Ok(image) = std::env::var("PGSET_LIVE_POSTGRES_IMAGE") {
        spec.postgres.image = image;
    }
    spec.validate().expect("valid spec");

    let client = Client::try_default().await.expect("client from KUBECONFIG");
    let namespaces = support::create_namespace(&client, &ns).await;

    let outcome = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || scenario(&spec)).await
    };

    // Clean up whatever the scenario left, even after a failure.
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let selector = format!("app.kubernetes.io/instance={CLUSTER}");
    if let Ok(list) = pvs.list(&ListParams::default().labels(&selector)).await {
        for pv in list.items {
            let name = pv.metadata.name.unwrap_or_default();
            if name.contains(&ns) {
                let _ = pvs.delete(&name, &DeleteParams::default()).await;
            }
        }
    }
    support::finish(test, &namespaces, &ns, outcome).await;
}
