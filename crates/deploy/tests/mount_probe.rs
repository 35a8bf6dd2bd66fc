//! `doctor`'s per-node mount probe against a mock API server: the exact requests it sends, that
//! it removes everything it made (after a verdict, on a failure, when interrupted), and that it
//! writes nothing when a name it needs belongs to something else.

#[allow(dead_code)]
mod mock_api;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mock_api::{Call, mock_client, not_found};
use pgset_deploy::Error;
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
        let collections = [pods(), claims(), PVS.to_string()];
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
