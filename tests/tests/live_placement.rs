//! Against a live cluster (KUBECONFIG) and an NFS export (`PGSET_LIVE_NFS_SERVER`, export
//! `/nfsfileshare` or `PGSET_LIVE_NFS_EXPORT`, provisioned by `cargo xtask nfs`): two clusters of
//! the same name in two namespaces, one in `shared` and one in `templates` mode, run side by side
//! on the one export. Both become Ready; each has its own PostgreSQL system identifier, which its
//! replica shares; each claim is bound to the cluster's own volume in the cluster's own
//! directory `<export>/<namespace>.<name>`; applying the volumes again changes nothing and keeps
//! the bindings. Both namespaces and the volumes are removed at the end; the data directories
//! stay on the export (pgset never deletes data). The agent image must be on the nodes
//! (`cargo xtask image --import`); `PGSET_LIVE_AGENT_IMAGE` names another.

#[path = "support/live.rs"]
mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::DeleteParams;
use kube::{Api, Client};
use pgset_deploy::apply::{ApplyMode, deploy};
use pgset_deploy::rollout::{step_lines, wait_for_rollout};
use pgset_deploy::storage::apply_volumes;
use pgset_deploy::teardown::{Purge, down};
use pgset_spec::contract::POSTGRES_CONTAINER;
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};
use pgset_tests::live_kubeconfig;
use pgset_verify::exec::PodExec;
use pgset_verify::sql;

const TEST: &str = "two_clusters_in_two_namespaces_share_nothing";
const ROLLOUT: Duration = Duration::from_secs(600);

fn cluster(namespace: &str, mode: StorageMode, server: &str) -> ValidSpec {
    let mut spec = ClusterSpec {
        namespace: namespace.to_string(),
        replicas: 2,
        ..ClusterSpec::default()
    };
    spec.storage.mode = mode;
    spec.nfs.server = Some(server.to_string());
    if let Ok(export) = std::env::var("PGSET_LIVE_NFS_EXPORT") {
        spec.nfs.export = export.into();
    }
    support::live_images(&mut spec);
    spec.validated().expect("live spec is valid")
}

fn volumes(spec: &ValidSpec) -> Vec<PersistentVolume> {
    pgset_nfs::persistent_volumes(spec, spec.nfs.server.as_deref().unwrap_or_default())
}

/// The claims of a cluster, in ordinal order for templates mode.
fn claims(spec: &ClusterSpec) -> Vec<String> {
    match spec.storage.mode {
        StorageMode::Shared => vec![spec.shared_claim_name()],
        StorageMode::Templates => (0..spec.replicas)
            .map(|i| spec.member_claim_name(i))
            .collect(),
    }
}

/// One line of psql output on a member.
async fn query(client: &Client, spec: &ClusterSpec, ordinal: i32, sql_text: &str) -> String {
    let exec = PodExec::new(
        Api::<Pod>::namespaced(client.clone(), &spec.namespace),
        Duration::from_secs(60),
    );
    let pod = spec.pod_name(ordinal);
    let out = exec
        .run(&pod, POSTGRES_CONTAINER, &sql::psql_local(&[sql_text]))
        .await
        .unwrap_or_else(|e| panic!("exec psql in {}/{pod}: {e}", spec.namespace));
    assert!(
        out.success(),
        "{}/{pod}: {}",
        spec.namespace,
        out.failure_summary()
    );
    out.stdout.trim().to_string()
}

async fn start(client: &Client, spec: &ValidSpec) {
    support::prepare_cluster_dirs(client, spec).await;
    let progress = &mut |line: &str| eprintln!("    [{}] {line}", spec.namespace);
    apply_volumes(client, &volumes(spec), ApplyMode::Apply, progress)
        .await
        .unwrap_or_else(|e| panic!("apply the volumes of {}: {e}", spec.exports_block_id()));
    deploy(client, spec, ApplyMode::Apply, progress)
        .await
        .unwrap_or_else(|e| panic!("deploy {}: {e}", spec.exports_block_id()));
}

async fn scenario(client: Client, a: ValidSpec, b: ValidSpec) {
    // Both clusters are applied before either is awaited: they start side by side.
    start(&client, &a).await;
    start(&client, &b).await;
    for spec in [&a, &b] {
        let progress = &mut |line: &str| eprintln!("    [{}] {line}", spec.namespace);
        wait_for_rollout(
            &client,
            spec,
            spec.replicas,
            ROLLOUT,
            &mut step_lines(progress),
        )
        .await
        .unwrap_or_else(|e| panic!("rollout of {}: {e}", spec.exports_block_id()));
    }

    // Each cluster's claims are bound to its own volumes, in its own directory.
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut paths = Vec::new();
    for spec in [&a, &b] {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &spec.namespace);
        for (claim, pv) in claims(spec).iter().zip(volumes(spec)) {
            let want = pv.metadata.name.clone().unwrap_or_default();
            let got = pvcs
                .get(claim)
                .await
                .unwrap_or_else(|e| panic!("get claim {}/{claim}: {e}", spec.namespace));
            let status = got.status.and_then(|s| s.phase).unwrap_or_default();
            let bound = got.spec.and_then(|s| s.volume_name).unwrap_or_default();
            assert_eq!(
                (status.as_str(), bound.as_str()),
                ("Bound", want.as_str()),
                "claim {}/{claim}",
                spec.namespace
            );
            let live = pvs.get(&want).await.expect("get the bound volume");
            let path = live
                .spec
                .and_then(|s| s.nfs)
                .map(|n| n.path)
                .unwrap_or_default();
            assert!(
                std::path::Path::new(&path).starts_with(spec.cluster_export_dir()),
                "volume {want} at {path}, outside {}",
                spec.cluster_export_dir().display()
            );
            paths.push(path);
        }
    }
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        paths.len(),
        "two claims share a directory: {paths:?}"
    );

    // Each member runs on its own data directory below its own mount.
    for spec in [&a, &b] {
        for i in 0..spec.replicas {
            let dir = query(&client, spec, i, sql::DATA_DIRECTORY_QUERY).await;
            assert_eq!(
                dir,
                format!("{}/{}", pgset_spec::contract::DATA_MOUNT, spec.pod_name(i)),
                "{}/{}",
                spec.namespace,
                spec.pod_name(i)
            );
        }
    }

    // Two PostgreSQL clusters, not one: different system identifiers, each replica on its
    // master's.
    let system_id = "select system_identifier from pg_control_system()";
    let id_a = query(&client, &a, 0, system_id).await;
    let id_b = query(&client, &b, 0, system_id).await;
    assert!(!id_a.is_empty() && !id_b.is_empty());
    assert_ne!(id_a, id_b, "both clusters run on the same data");
    assert_eq!(query(&client, &a, 1, system_id).await, id_a);
    assert_eq!(query(&client, &b, 1, system_id).await, id_b);
    eprintln!(
        "{TEST}: {} system identifier {id_a}, {} system identifier {id_b}",
        a.exports_block_id(),
        b.exports_block_id()
    );

    // Applying the volumes again keeps every binding and changes nothing.
    for spec in [&a, &b] {
        let quiet = &mut |line: &str| eprintln!("    [{}] {line}", spec.namespace);
        let again = apply_volumes(&client, &volumes(spec), ApplyMode::Apply, quiet)
            .await
            .expect("apply the volumes again");
        assert!(again.changed.is_empty(), "{:?}", again.changed);
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &spec.namespace);
        for claim in claims(spec) {
            let phase = pvcs
                .get(&claim)
                .await
                .expect("get claim")
                .status
                .and_then(|s| s.phase);
            assert_eq!(phase.as_deref(), Some("Bound"), "{claim}");
        }
    }
}

#[tokio::test]
async fn two_clusters_in_two_namespaces_share_nothing() {
    if live_kubeconfig(TEST).is_none() {
        return;
    }
    let Ok(server) = std::env::var("PGSET_LIVE_NFS_SERVER") else {
        pgset_tests::skip(
            TEST,
            "needs the NFS export both clusters share: set PGSET_LIVE_NFS_SERVER (and PGSET_LIVE_NFS_EXPORT when it is not /nfsfileshare)",
        );
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let a = cluster(
        &format!("pgset-place-a-{nanos}"),
        StorageMode::Shared,
        &server,
    );
    let b = cluster(
        &format!("pgset-place-b-{nanos}"),
        StorageMode::Templates,
        &server,
    );
    let client = Client::try_default().await.expect("client from KUBECONFIG");
    let ns_a = support::create_namespace(&client, &a.namespace).await;
    let _ = support::create_namespace(&client, &b.namespace).await;
    eprintln!(
        "{TEST}: {} ({}) and {} ({}) on {server}:{}",
        a.exports_block_id(),
        a.storage.mode,
        b.exports_block_id(),
        b.storage.mode,
        a.nfs.export.display()
    );

    let outcome = tokio::spawn(scenario(client.clone(), a.clone(), b.clone())).await;

    let quiet = &mut |_: &str| {};
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for spec in [&a, &b] {
        if let Err(e) = down(&client, spec, Purge::Everything, ROLLOUT, quiet).await {
            eprintln!("{TEST}: tear down {}: {e}", spec.exports_block_id());
        }
        for pv in volumes(spec) {
            let name = pv.metadata.name.unwrap_or_default();
            let _ = pvs.delete(&name, &DeleteParams::default()).await;
        }
        eprintln!(
            "{TEST}: the data of {} stays in {}",
            spec.exports_block_id(),
            spec.cluster_export_dir().display()
        );
    }
    if let Err(e) = ns_a.delete(&b.namespace, &DeleteParams::default()).await {
        eprintln!("{TEST}: could not delete namespace {}: {e}", b.namespace);
    }
    support::finish(TEST, &ns_a, &a.namespace, outcome).await;
}
