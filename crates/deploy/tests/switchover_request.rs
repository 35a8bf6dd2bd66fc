//! The cluster side of `switchover`, against a scripted API server: the request is one merge
//! patch of one annotation on the leader Lease's `resourceVersion` as read (the holder and every
//! other annotation kept), made again on the new version when the holder's renewal raced it;
//! a refused request writes nothing.

#[allow(dead_code)]
mod mock_api;

use std::sync::{Arc, Mutex};

use mock_api::{Call, mock_client};
use pgset_deploy::switchover::{request_failover, request_switchover};
use pgset_spec::contract::SwitchoverRequest;
use pgset_spec::{ClusterSpec, ValidSpec};
use serde_json::{Value, json};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn spec() -> ValidSpec {
    ClusterSpec::default().validated().unwrap()
}

fn lease(version: u64) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "pgset-leader", "namespace": "default",
                        "resourceVersion": version.to_string(),
                        "annotations": {"pgset.io/leader-member": "pgset-0",
                                        "pgset.io/leader-timeline": "3",
                                        "pgset.io/failover": "paused",
                                        "example.com/owner": "team-a"}},
           "spec": {"holderIdentity": "uid-0", "leaseDurationSeconds": 15}})
}

fn pod(k: i32, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("pgset-{k}"), "namespace": "default", "uid": format!("uid-{k}"),
                        "annotations": {"pgset.io/phase": phase}},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pods() -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
           "items": [pod(0, "running"), pod(1, "streaming"), pod(2, "base-backup")]})
}

/// A Lease renewed (its version moved on) once between the first read and the first write.
fn server(renewals: u32) -> impl FnMut(&Call) -> (u16, Value) + Send + 'static {
    let version = Arc::new(Mutex::new(5u64));
    let mut raced = 0;
    move |call: &Call| match (call.method.as_str(), call.path.as_str()) {
        ("GET", LEASE) => (200, lease(*version.lock().unwrap())),
        ("GET", PODS) => (200, pods()),
        ("PATCH", LEASE) => {
            let mut v = version.lock().unwrap();
            if raced < renewals {
                raced += 1;
                *v += 1;
                return (
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
                );
            }
            assert_eq!(
                call.body["metadata"]["resourceVersion"],
                json!(v.to_string())
            );
            *v += 1;
            let mut l = lease(*v);
            for (k, val) in call.body["metadata"]["annotations"].as_object().unwrap() {
                l["metadata"]["annotations"][k] = val.clone();
            }
            (200, l)
        }
        other => panic!("unexpected request {other:?}"),
    }
}

#[tokio::test]
async fn the_request_is_one_annotation_patched_on_the_version_read_and_again_after_a_renewal() {
    let (client, calls) = mock_client(server(1));
    let (master, request) = request_switchover(&client, &spec(), Some("pgset-1"))
        .await
        .unwrap();
    assert_eq!(master, "pgset-0");
    assert_eq!(request.to.as_deref(), Some("pgset-1"));
    let calls = calls.lock().unwrap().clone();
    let lines: Vec<String> = calls.iter().map(Call::line).collect();
    assert_eq!(
        lines,
        [
            format!("GET {LEASE}"),
            format!("GET {PODS}"),
            format!("PATCH {LEASE}"),
            format!("GET {LEASE}"),
            format!("GET {PODS}"),
            format!("PATCH {LEASE}"),
        ]
    );
    let writes: Vec<&Call> = calls.iter().filter(|c| c.is_write()).collect();
    for (w, version) in writes.iter().zip(["5", "6"]) {
        assert_eq!(w.content_type, "application/merge-patch+json");
        assert_eq!(
            w.body["metadata"]["resourceVersion"],
            json!(version),
            "CAS on the version read"
        );
        let notes = w.body["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(
            notes.keys().collect::<Vec<_>>(),
            ["pgset.io/switchover"],
            "only the request is written: the holder and the other annotations are kept"
        );
        let sent =
            SwitchoverRequest::parse(notes["pgset.io/switchover"].as_str().unwrap()).unwrap();
        assert_eq!(sent, request);
    }
    assert!(
        writes[0].body.get("spec").is_none(),
        "the holder is not touched"
    );
}

#[tokio::test]
async fn a_refused_request_names_the_fix_and_writes_nothing() {
    for (to, want) in [
        (
            Some("pgset-2"),
            "pgset-2 does not stream from the master pgset-0",
        ),
        (Some("pgset-0"), "pgset-0 is the master already"),
        (Some("pgset-9"), "pgset-9 is not a member of pgset"),
    ] {
        let (client, calls) = mock_client(server(0));
        let e = request_switchover(&client, &spec(), to)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(want) && e.contains("nothing was changed"),
            "{to:?}: {e}"
        );
        assert!(
            !calls.lock().unwrap().iter().any(Call::is_write),
            "{to:?}: no write"
        );
    }
    let (client, calls) = mock_client(|call: &Call| match call.path.as_str() {
        LEASE => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
        _ => (200, pods()),
    });
    let e = request_switchover(&client, &spec(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no leader Lease pgset-leader"), "{e}");
    assert!(!calls.lock().unwrap().iter().any(Call::is_write));
}

/// A Lease whose version moves on at the `renew_at`-th read (never when `None`).
fn failover_server(renew_at: Option<usize>) -> impl FnMut(&Call) -> (u16, Value) + Send + 'static {
    let mut reads = 0;
    let mut version = 5u64;
    move |call: &Call| match (call.method.as_str(), call.path.as_str()) {
        ("GET", LEASE) => {
            reads += 1;
            if Some(reads) == renew_at {
                version += 1;
            }
            (200, lease(version))
        }
        ("GET", PODS) => (200, pods()),
        ("PATCH", LEASE) => {
            assert_eq!(
                call.body["metadata"]["resourceVersion"],
                json!(version.to_string())
            );
            version += 1;
            let mut l = lease(version);
            for (k, val) in call.body["metadata"]["annotations"].as_object().unwrap() {
                l["metadata"]["annotations"][k] = val.clone();
            }
            (200, l)
        }
        other => panic!("unexpected request {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_manual_failover_is_refused_while_the_lease_is_renewed_and_written_once_it_stands_still()
{
    let watch = std::time::Duration::from_secs(10);
    // Renewed while watched: its master runs.
    let (client, calls) = mock_client(failover_server(Some(4)));
    let e = request_failover(&client, &spec(), "pgset-1", watch)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is live") && e.contains("switchover --to pgset-1"),
        "{e}"
    );
    assert!(!calls.lock().unwrap().iter().any(Call::is_write));
    // Bad input is refused before the watch.
    let (client, calls) = mock_client(failover_server(None));
    let e = request_failover(&client, &spec(), "pgset-0", watch)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("pgset-0 holds the leader Lease"), "{e}");
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "one read of the Lease and the pods"
    );
    // Unchanged for the whole watch: one merge patch of the one note on the version watched.
    let (client, calls) = mock_client(failover_server(None));
    let (master, request) = request_failover(&client, &spec(), "pgset-1", watch)
        .await
        .unwrap();
    assert_eq!(master, "pgset-0");
    let calls = calls.lock().unwrap().clone();
    let writes: Vec<&Call> = calls.iter().filter(|c| c.is_write()).collect();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].content_type, "application/merge-patch+json");
    assert_eq!(writes[0].body["metadata"]["resourceVersion"], json!("5"));
    let notes = writes[0].body["metadata"]["annotations"]
        .as_object()
        .unwrap();
    assert_eq!(notes.keys().collect::<Vec<_>>(), ["pgset.io/failover-to"]);
    assert_eq!(
        SwitchoverRequest::parse(notes["pgset.io/failover-to"].as_str().unwrap()).unwrap(),
        request
    );
    assert!(
        calls.iter().filter(|c| c.path == LEASE).count() >= 20,
        "the Lease was watched every half second for 10 s"
    );
}
