//! `doctor`'s per-node mount probe against a mock API server: the exact requests it sends, that
//! it removes everything it made (after a verdict, on a failure, when interrupted), and that it
//! writes nothing when a name it needs belongs to something else; what it proved is kept, and a
//! later run with the same volumes and nodes creates no probe pod while a changed node runs it.

#[allow(dead_code)]
mod mock_api;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mock_api::{Call, mock_client, not_found};
use pgset_deploy::Error;
use pgset_deploy::mount_probe::proof::{Probed, probe_unless_proven, proof_name};
use pgset_deploy::mount_probe::{NodeMount, probe_mounts, probe_name, probe_volume_name};
use pgset_spec::{ClusterSpec, ValidSpec};
use serde_json::{Value, json};

const NS: &str = "prod";
const PVS: &str = "/api/v1/persistentvolumes";

fn spec() -> ValidSpec {
    let s = ClusterSpec {
        name: "db".into(),
        namespace: NS.into(),
        ..ClusterSpec::default()
    };
    s.validated().unwrap()
}

fn pods() -> String {
    format!("/api/v1/namespaces/{NS}/pods")
}

fn claims() -> String {
    format!("/api/v1/namespaces/{NS}/persistentvolumeclaims")
}

fn configmaps() -> String {
    format!("/api/v1/namespaces/{NS}/configmaps")
}

fn decoded(query: &str) -> String {
    query.replace("%3D", "=").replace("%2C", ",")
}

/// A small API server: objects live in a store by path; a created pod is finished at once by
/// the "kubelet": Succeeded on `n1`, Failed with `ls`'s complaint elsewhere. `on_pod_created`
/// is told each pod's creation.
fn handler(
    mut store: HashMap<String, Value>,
    on_pod_created: Arc<tokio::sync::Notify>,
    finish_pods: bool,
) -> impl FnMut(&Call) -> (u16, Value) + Send + 'static {
    move |call| {
        let collections = [pods(), claims(), PVS.to_string(), configmaps()];
        let events = format!("/api/v1/namespaces/{NS}/events");
        match call.method.as_str() {
            "POST" if collections.contains(&call.path) => {
                let mut obj = call.body.clone();
                let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                obj["metadata"]["uid"] = json!(format!("uid-{name}"));
                obj["metadata"]["resourceVersion"] = json!("1");
                if call.path == pods() {
                    let node = obj["spec"]["nodeName"].as_str().unwrap().to_string();
                    if finish_pods && node == "n1" {
                        obj["status"] = json!({"phase": "Succeeded"});
                    } else if finish_pods {
                        obj["status"] = json!({"phase": "Failed", "containerStatuses": [{
                            "name": "mount-probe", "image": "postgres:18", "imageID": "",
                            "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": 2, "reason": "Error",
                                "message": "ls: cannot open directory '/pgdata': Permission denied"}},
                        }]});
                    } else {
                        obj["status"] = json!({"phase": "Pending"});
                    }
                    on_pod_created.notify_one();
                }
                store.insert(format!("{}/{name}", call.path), obj.clone());
                (201, obj)
            }
            "GET" if call.path == events => (
                200,
                json!({"kind": "EventList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
                    "items": [{"metadata": {"name": "e1", "namespace": NS},
                        "involvedObject": {"kind": "Pod", "name": "x"},
                        "type": "Warning", "reason": "FailedMount",
                        "message": "MountVolume.SetUp failed: access denied by server"}]}),
            ),
            "GET" if collections.contains(&call.path) => {
                // The watcher's list of one object by name.
                let q = decoded(&call.query);
                let name = q
                    .split('&')
                    .find_map(|p| p.strip_prefix("fieldSelector=metadata.name="))
                    .expect("a list by name");
                let items: Vec<Value> = store
                    .get(&format!("{}/{name}", call.path))
                    .cloned()
                    .into_iter()
                    .collect();
                (
                    200,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "5"}, "items": items}),
                )
            }
            "GET" => match store.get(&call.path) {
                Some(obj) => (200, obj.clone()),
                None => not_found(&call.path),
            },
            "PUT" => {
                let mut obj = call.body.clone();
                obj["metadata"]["resourceVersion"] = json!("2");
                store.insert(call.path.clone(), obj.clone());
                (200, obj)
            }
            "DELETE" => match store.remove(&call.path) {
                Some(obj) => (200, obj),
                None => not_found(&call.path),
            },
            _ => panic!("unexpected request {} {}", call.method, call.path),
        }
    }
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_write())
        .map(|c| match c.method.as_str() {
            "POST" => format!(
                "POST {} {}",
                c.path,
                c.body["metadata"]["name"].as_str().unwrap()
            ),
            _ => c.line(),
        })
        .collect()
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test]
async fn each_node_is_probed_and_everything_made_is_removed() {
    let spec = spec();
    let (client, calls) = mock_client(handler(
        HashMap::new(),
        Arc::new(tokio::sync::Notify::new()),
        true,
    ));
    let nodes = ["n1".to_string(), "n2".to_string()];
    let mut lines = Vec::new();
    let found = probe_mounts(
        &client,
        &spec,
        "10.0.0.5",
        &nodes,
        Duration::from_secs(30),
        never(),
        &mut |l: &str| lines.push(l.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(
        found,
        [
            NodeMount {
                node: "n1".into(),
                mounted: true,
                detail: "mounted and listed".into()
            },
            NodeMount {
                node: "n2".into(),
                mounted: false,
                detail: "the probe exited 2 (Error): ls: cannot open directory '/pgdata': Permission denied; events: FailedMount: MountVolume.SetUp failed: access denied by server".into()
            },
        ]
    );
    let (p1, p2) = (probe_name(&spec, "n1"), probe_name(&spec, "n2"));
    let (v1, v2) = (
        probe_volume_name(&spec, "n1"),
        probe_volume_name(&spec, "n2"),
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        writes(&calls),
        [
            format!("POST {PVS} {v1}"),
            format!("POST {} {p1}", claims()),
            format!("POST {} {p1}", pods()),
            format!("POST {PVS} {v2}"),
            format!("POST {} {p2}", claims()),
            format!("POST {} {p2}", pods()),
            format!("DELETE {}/{p1}", pods()),
            format!("DELETE {}/{p2}", pods()),
            format!("DELETE {}/{p1}", claims()),
            format!("DELETE {}/{p2}", claims()),
            format!("DELETE {PVS}/{v1}"),
            format!("DELETE {PVS}/{v2}"),
        ]
    );
    // Every delete names the uid of the object the probe made, and nothing else.
    for c in calls.iter().filter(|c| c.method == "DELETE") {
        let name = c.path.rsplit('/').next().unwrap();
        assert_eq!(
            c.body["preconditions"]["uid"],
            json!(format!("uid-{name}")),
            "{}",
            c.line()
        );
    }
    // Before writing, each name was read; after deleting, each object was seen gone.
    let reads: Vec<String> = calls
        .iter()
        .filter(|c| c.method == "GET" && c.query.is_empty())
        .map(Call::line)
        .collect();
    assert_eq!(
        reads,
        [
            format!("GET {}/{p1}", pods()),
            format!("GET {}/{p1}", claims()),
            format!("GET {PVS}/{v1}"),
            format!("GET {}/{p2}", pods()),
            format!("GET {}/{p2}", claims()),
            format!("GET {PVS}/{v2}"),
        ]
    );
    let last_delete = calls.iter().rposition(|c| c.method == "DELETE").unwrap();
    let seen_gone: Vec<String> = calls[last_delete..]
        .iter()
        .filter(|c| c.method == "GET")
        .map(|c| format!("{} {}", c.path, decoded(&c.query)))
        .collect();
    for (collection, name) in [
        (pods(), &p1),
        (pods(), &p2),
        (claims(), &p1),
        (claims(), &p2),
        (PVS.to_string(), &v1),
        (PVS.to_string(), &v2),
    ] {
        assert!(
            seen_gone
                .iter()
                .any(|l| l.starts_with(&format!("{collection} "))
                    && l.contains(&format!("fieldSelector=metadata.name={name}"))),
            "{name} not awaited gone: {seen_gone:?}"
        );
    }
    // The pod's body: on its node, read-only, as the postgres uid.
    let pod = calls
        .iter()
        .find(|c| c.method == "POST" && c.path == pods())
        .unwrap();
    assert_eq!(pod.body["spec"]["nodeName"], "n1");
    assert_eq!(pod.body["spec"]["securityContext"]["runAsUser"], 999);
    assert_eq!(
        pod.body["spec"]["volumes"][0]["persistentVolumeClaim"],
        json!({"claimName": p1, "readOnly": true})
    );
    assert!(lines.iter().any(|l| l == "node n2: failed"), "{lines:?}");
}

#[tokio::test]
async fn an_interrupted_probe_removes_what_it_made() {
    let spec = spec();
    let created = Arc::new(tokio::sync::Notify::new());
    let (client, calls) = mock_client(handler(HashMap::new(), created.clone(), false));
    let nodes = ["n1".to_string(), "n2".to_string()];
    let interrupt = async move { created.notified().await };
    let err = probe_mounts(
        &client,
        &spec,
        "10.0.0.5",
        &nodes,
        Duration::from_secs(30),
        interrupt,
        &mut |_: &str| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Interrupted { .. }), "{err}");
    let (p1, v1) = (probe_name(&spec, "n1"), probe_volume_name(&spec, "n1"));
    assert_eq!(
        writes(&calls.lock().unwrap()),
        [
            format!("POST {PVS} {v1}"),
            format!("POST {} {p1}", claims()),
            format!("POST {} {p1}", pods()),
            format!("DELETE {}/{p1}", pods()),
            format!("DELETE {}/{p1}", claims()),
            format!("DELETE {PVS}/{v1}"),
        ],
        "interrupted after the first pod: that node's objects, and only those, are removed"
    );
}

#[tokio::test]
async fn a_name_held_by_something_else_stops_the_probe_before_any_write() {
    let spec = spec();
    let v1 = probe_volume_name(&spec, "n1");
    let p1 = probe_name(&spec, "n1");
    let foreign = HashMap::from([(
        format!("{PVS}/{v1}"),
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": v1, "uid": "someone-elses", "labels": {"app": "other"}}}),
    )]);
    let (client, calls) = mock_client(handler(foreign, Arc::new(tokio::sync::Notify::new()), true));
    let err = probe_mounts(
        &client,
        &spec,
        "10.0.0.5",
        &["n1".to_string()],
        Duration::from_secs(30),
        never(),
        &mut |_: &str| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::ProbeNameTaken { kind: "PersistentVolume", name } if *name == v1),
        "{err}"
    );
    assert!(writes(&calls.lock().unwrap()).is_empty());

    // A previous probe's leftover (its labels) is removed first, by its own uid.
    let leftover = HashMap::from([(
        format!("{}/{p1}", pods()),
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p1, "namespace": NS, "uid": "old-run",
                "labels": {"app.kubernetes.io/component": "mount-probe",
                    "app.kubernetes.io/managed-by": "pgset", "app.kubernetes.io/instance": "db"}},
            "status": {"phase": "Succeeded"}}),
    )]);
    let (client, calls) = mock_client(handler(
        leftover,
        Arc::new(tokio::sync::Notify::new()),
        true,
    ));
    let found = probe_mounts(
        &client,
        &spec,
        "10.0.0.5",
        &["n1".to_string()],
        Duration::from_secs(30),
        never(),
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    assert!(found[0].mounted);
    let calls = calls.lock().unwrap().clone();
    let w = writes(&calls);
    assert_eq!(w[0], format!("DELETE {}/{p1}", pods()));
    assert_eq!(w[1], format!("POST {PVS} {v1}"));
    let first = calls.iter().find(|c| c.method == "DELETE").unwrap();
    assert_eq!(first.body["preconditions"]["uid"], "old-run");
}

fn node(name: &str, boot: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-node-{name}")),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                boot_id: boot.into(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

fn names(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect()
}

#[tokio::test]
async fn a_proof_of_the_same_volumes_and_nodes_skips_the_probe_and_a_change_runs_it() {
    let spec = spec();
    let (client, calls) = mock_client(handler(
        HashMap::new(),
        Arc::new(tokio::sync::Notify::new()),
        true,
    ));
    let probe = |nodes: Vec<Node>, force: bool| {
        let (client, spec) = (client.clone(), spec.clone());
        async move {
            let mut lines = Vec::new();
            let probed = probe_unless_proven(
                &client,
                &spec,
                "10.0.0.5",
                &nodes,
                &names(&nodes),
                force,
                Duration::from_secs(30),
                never(),
                &mut |l: &str| lines.push(l.to_string()),
            )
            .await
            .unwrap();
            (probed, lines)
        }
    };
    let pods_made = || {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == "POST" && c.path == pods())
            .count()
    };
    let proof_writes = || {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.is_write() && c.path.starts_with(&configmaps()))
            .map(|c| c.method.clone())
            .collect::<Vec<_>>()
    };

    // No proof yet: the probe runs, every node mounts, the proof is kept.
    let (first, lines) = probe(vec![node("n1", "boot-1")], false).await;
    assert!(
        matches!(&first, Probed::Ran(f) if f.len() == 1 && f[0].mounted),
        "{first:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("no earlier proof")),
        "{lines:?}"
    );
    assert_eq!(pods_made(), 1);
    assert_eq!(proof_writes(), ["POST"]);
    let kept = calls
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.method == "POST" && c.path == configmaps())
        .unwrap()
        .body
        .clone();
    assert_eq!(kept["metadata"]["name"], proof_name(&spec));
    assert_eq!(
        kept["metadata"]["labels"]["app.kubernetes.io/component"],
        "mount-probe"
    );
    let text = kept["data"]["fingerprint"].as_str().unwrap();
    assert!(
        text.contains("node n1 uid=uid-node-n1 boot=boot-1"),
        "{text}"
    );
    assert!(text.contains("server 10.0.0.5\n"), "{text}");
    assert!(
        text.contains(&format!("export {}\n", spec.cluster_export_dir().display())),
        "{text}"
    );

    // The same volumes and nodes: proven, no probe pod, nothing written.
    let (again, _) = probe(vec![node("n1", "boot-1")], false).await;
    assert!(matches!(again, Probed::Proven { .. }), "{again:?}");
    assert_eq!(pods_made(), 1, "a match creates no probe pod");
    assert_eq!(proof_writes(), ["POST"]);

    // A node added: the probe runs on both; n2 fails, so the old proof is not replaced.
    let (changed, lines) = probe(vec![node("n1", "boot-1"), node("n2", "boot-1")], false).await;
    assert!(
        matches!(&changed, Probed::Ran(f) if f.len() == 2),
        "{changed:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("changed since the proof of")),
        "{lines:?}"
    );
    assert_eq!(pods_made(), 3);
    assert_eq!(proof_writes(), ["POST"]);

    // n1 rebooted: proven no longer; the probe runs and the new proof replaces the old.
    let (rebooted, _) = probe(vec![node("n1", "boot-2")], false).await;
    assert!(matches!(rebooted, Probed::Ran(_)), "{rebooted:?}");
    assert_eq!(pods_made(), 4);
    assert_eq!(proof_writes(), ["POST", "PUT"]);
    let (same, _) = probe(vec![node("n1", "boot-2")], false).await;
    assert!(matches!(same, Probed::Proven { .. }), "{same:?}");
    assert_eq!(pods_made(), 4);

    // --probe forces it.
    let (forced, lines) = probe(vec![node("n1", "boot-2")], true).await;
    assert!(matches!(forced, Probed::Ran(_)), "{forced:?}");
    assert!(lines.iter().any(|l| l.contains("--probe")), "{lines:?}");
    assert_eq!(pods_made(), 5);
}

#[tokio::test]
async fn a_configmap_of_the_proofs_name_that_is_not_the_probes_is_never_read_or_written() {
    let spec = spec();
    let path = format!("{}/{}", configmaps(), proof_name(&spec));
    let mut store = HashMap::new();
    store.insert(
        path.clone(),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": proof_name(&spec), "namespace": NS, "uid": "theirs", "resourceVersion": "1"},
            "data": {"fingerprint": "anything", "provenAt": "never"}}),
    );
    let (client, calls) = mock_client(handler(store, Arc::new(tokio::sync::Notify::new()), true));
    let nodes = vec![node("n1", "boot-1")];
    let err = probe_unless_proven(
        &client,
        &spec,
        "10.0.0.5",
        &nodes,
        &names(&nodes),
        false,
        Duration::from_secs(30),
        never(),
        &mut |_: &str| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ProbeNameTaken {
                kind: "ConfigMap",
                ..
            }
        ),
        "{err}"
    );
    let calls = calls.lock().unwrap().clone();
    assert!(
        !calls
            .iter()
            .any(|c| c.is_write() && c.path.starts_with(&configmaps())),
        "{:?}",
        writes(&calls)
    );
}
