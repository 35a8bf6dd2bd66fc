//! Against a live cluster (KUBECONFIG) and an NFS export (`PGSET_LIVE_NFS_SERVER`, export
//! `/nfsfileshare` or `PGSET_LIVE_NFS_EXPORT`, provisioned by `cargo xtask nfs`): `doctor`'s
//! per-node mount probe. In a namespace of its own, the cluster's directory
//! `<export>/<namespace>.pgset` is made as `cargo xtask nfs` would; then the probe runs a pod on
//! every schedulable Ready node that mounts it through the probe's own volume and claim. Every
//! such node must have mounted and listed it, and afterwards no pod, claim or volume of the
//! probe's may be left. The namespace is removed at the end; the directory stays on the export.

#[path = "support/live.rs"]
mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use pgset_deploy::mount_probe::{probe_mounts, probe_nodes, probe_selector};
use pgset_spec::{ClusterSpec, ValidSpec};
use pgset_tests::live_kubeconfig;

const TEST: &str = "every_schedulable_node_mounts_the_export_and_the_probe_leaves_nothing";
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);

async fn scenario(client: Client, spec: ValidSpec, server: String) {
    support::prepare_cluster_dirs(&client, &spec).await;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list nodes")
        .items;
    let (on, off) = probe_nodes(&nodes, &spec);
    eprintln!("{TEST}: probing {on:?}; left out: {off:?}");
    assert!(
        !on.is_empty(),
        "no schedulable Ready node to probe: {off:?}"
    );

    let progress = &mut |line: &str| eprintln!("    {line}");
    let found = probe_mounts(
        &client,
        &spec,
        &server,
        &on,
        PROBE_TIMEOUT,
        std::future::pending(),
        progress,
    )
    .await
    .unwrap_or_else(|e| panic!("the mount probe: {e}"));
    let probed: Vec<&str> = found.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(probed, on, "one finding per schedulable node, in order");
    for m in &found {
        assert!(
            m.mounted,
            "node {} did not mount {server}:{}: {}",
            m.node,
            spec.cluster_export_dir().display(),
            m.detail
        );
    }

    // Nothing of the probe's is left: no pod, claim or volume with its labels.
    let selector = probe_selector(&spec);
    let params = ListParams::default().labels(&selector);
    let pods = Api::<Pod>::namespaced(client.clone(), &spec.namespace)
        .list(&params)
        .await
        .expect("list probe pods");
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &spec.namespace)
        .list(&params)
        .await
        .expect("list probe claims");
    let prefix = format!("{}.", spec.namespace);
    let volumes: Vec<String> = Api::<PersistentVolume>::all(client.clone())
        .list(&params)
        .await
        .expect("list probe volumes")
        .items
        .iter()
        .map(|pv| pv.name_any())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(
        pods.items.is_empty(),
        "probe pods left: {:?}",
        pods.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    assert!(
        claims.items.is_empty(),
        "probe claims left: {:?}",
        claims
            .items
            .iter()
            .map(|c| c.name_any())
            .collect::<Vec<_>>()
    );
    assert!(volumes.is_empty(), "probe volumes left: {volumes:?}");
}

#[tokio::test]
async fn every_schedulable_node_mounts_the_export_and_the_probe_leaves_nothing() {
    if live_kubeconfig(TEST).is_none() {
        return;
    }
    let Ok(server) = std::env::var("PGSET_LIVE_NFS_SERVER") else {
        pgset_tests::skip(
            TEST,
            "needs the NFS export the nodes mount: set PGSET_LIVE_NFS_SERVER (and PGSET_LIVE_NFS_EXPORT when it is not /nfsfileshare)",
        );
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let mut spec = ClusterSpec {
        namespace: format!("pgset-doctor-{nanos}"),
        ..ClusterSpec::default()
    };
    spec.nfs.server = Some(server.clone());
    if let Ok(export) = std::env::var("PGSET_LIVE_NFS_EXPORT") {
        spec.nfs.export = export.into();
    }
    support::live_images(&mut spec);
    let spec = spec.validated().expect("live spec is valid");
    let client = Client::try_default().await.expect("client from KUBECONFIG");
    let namespaces = support::create_namespace(&client, &spec.namespace).await;
    eprintln!(
        "{TEST}: {} on {server}:{}",
        spec.exports_block_id(),
        spec.cluster_export_dir().display()
    );
    let outcome = tokio::spawn(scenario(client.clone(), spec.clone(), server)).await;
    eprintln!(
        "{TEST}: {} stays on the export",
        spec.cluster_export_dir().display()
    );
    support::finish(TEST, &namespaces, &spec.namespace, outcome).await;
}
