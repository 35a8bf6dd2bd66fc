//! The write fence's Lease protocol against a scripted API server (tower-test), on tokio's paused
//! clock: the exact method, path and body of create, take-over, renewal and release, the
//! take-over of an unrenewed Lease only after its duration passed on the agent's own clock, a
//! 409 on update, the loss of the fence after failing renewals, and `statefulset_replicas`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use pgset_agent::Error;
use pgset_agent::fence::{Fence, FenceOptions, StalePid};
use pgset_agent::kube_api::PodApi;
use pgset_agent::settings::Settings;
use pgset_spec::contract::env;
use serde_json::{Value, json};
use tokio::time::Instant;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/db/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/db/leases/pgset-1-member";
const ME: &str = "uid-new";
const OTHER: &str = "uid-old";

/// One request the client sent, and when (on the paused clock, since the server started).
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    body: Value,
    at: Duration,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// A server answering every request with `answer(call)`.
fn serve(mut answer: impl FnMut(&Call) -> (u16, Value) + Send + 'static) -> (Client, Calls) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::default();
    let record = calls.clone();
    let start = Instant::now();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                at: start.elapsed(),
            };
            let (status, value) = answer(&call);
            record.lock().unwrap().push(call);
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "db"), calls)
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

/// A Lease as the API server returns it.
fn lease(holder: Option<&str>, rv: &str, renew: &str, transitions: i32) -> Value {
    let mut spec = json!({"leaseDurationSeconds": 6, "renewTime": renew,
                          "acquireTime": "2020-01-01T00:00:00.000000Z",
                          "leaseTransitions": transitions});
    if let Some(h) = holder {
        spec["holderIdentity"] = json!(h);
    }
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "pgset-1-member", "namespace": "db", "resourceVersion": rv},
           "spec": spec})
}

/// The API server's answer to a write: the body as stored, with a new resourceVersion.
fn stored(body: &Value, rv: u64) -> Value {
    let mut v = body.clone();
    v["metadata"]["resourceVersion"] = json!(rv.to_string());
    v["metadata"]["namespace"] = json!("db");
    v
}

/// The body with its wall-clock times checked (RFC 3339 with microseconds) and blanked.
fn redacted(body: &Value) -> Value {
    let mut v = body.clone();
    for key in ["acquireTime", "renewTime"] {
        if let Some(t) = v["spec"].get(key) {
            let t = t.as_str().unwrap_or_default();
            assert!(
                t.ends_with('Z') && t.contains('T'),
                "{key} is not a timestamp: {t}"
            );
            v["spec"][key] = json!("<time>");
        }
    }
    v
}

fn settings(root: &Path) -> Settings {
    let m: HashMap<&str, String> = HashMap::from([
        (env::MODE, "kubernetes".to_string()),
        (env::CLUSTER, "pgset".to_string()),
        (env::POD_NAME, "pgset-1".to_string()),
        (env::NAMESPACE, "db".to_string()),
        (env::POD_UID, ME.to_string()),
        (env::DATA_ROOT, root.to_string_lossy().into_owned()),
        (env::MASTER_HOST, "pgset-master".to_string()),
        (env::MASTER_PORT, "5432".to_string()),
        (env::PORT, "5432".to_string()),
        (env::SECRET_DIR, "/secret".to_string()),
    ]);
    Settings::from_lookup(|k| m.get(k).cloned()).unwrap()
}

/// Short timings: a 6 s Lease renewed every 2 s, polled every second.
fn quick() -> FenceOptions {
    FenceOptions {
        lease_duration: Some(Duration::from_secs(6)),
        renew_every: Some(Duration::from_secs(2)),
        poll_every: Duration::from_secs(1),
        wait_timeout: Some(Duration::from_secs(30)),
    }
}

fn calls(c: &Calls) -> Vec<Call> {
    c.lock().unwrap().clone()
}

fn methods(c: &[Call]) -> Vec<(&str, &str)> {
    c.iter()
        .map(|c| (c.method.as_str(), c.path.as_str()))
        .collect()
}

/// A server that keeps what the agent writes, as the API server would.
fn faithful(initial: Option<Value>) -> (Client, Calls) {
    let mut current = initial;
    let mut rv = 100u64;
    serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => match &current {
                Some(l) => (200, l.clone()),
                None => (404, status(404, "NotFound")),
            },
            ("POST", LEASES) if current.is_none() => {
                rv += 1;
                current = Some(stored(&call.body, rv));
                (201, current.clone().unwrap())
            }
            ("POST", LEASES) => (409, status(409, "AlreadyExists")),
            ("PUT", LEASE) => {
                let sent = call.body["metadata"]["resourceVersion"].clone();
                match &current {
                    Some(l) if l["metadata"]["resourceVersion"] == sent => {
                        rv += 1;
                        current = Some(stored(&call.body, rv));
                        (200, current.clone().unwrap())
                    }
                    _ => (409, status(409, "Conflict")),
                }
            }
            _ => (404, status(404, "NotFound")),
        },
    )
}

#[tokio::test(start_paused = true)]
async fn an_absent_lease_is_created_renewed_and_released() {
    let t = tempfile::tempdir().unwrap();
    let (client, seen) = faithful(None);
    let api = PodApi::with_client(client, "db", "pgset");
    let fence = Fence::acquire(&settings(t.path()), Some(&api), quick())
        .await
        .unwrap();
    assert!(
        fence.holder_description().contains("pgset-1-member"),
        "{}",
        fence.holder_description()
    );
    let c = calls(&seen);
    assert_eq!(methods(&c), [("GET", LEASE), ("POST", LEASES)]);
    assert_eq!(
        redacted(&c[1].body),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "pgset-1-member", "labels": {
                   "app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset",
                   "app.kubernetes.io/managed-by": "pgset"}},
               "spec": {"holderIdentity": ME, "leaseDurationSeconds": 6,
                        "acquireTime": "<time>", "renewTime": "<time>", "leaseTransitions": 0}})
    );

    // Three renewals, 2 s apart, each with the resourceVersion the previous write returned.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let c = calls(&seen);
    let puts: Vec<&Call> = c.iter().filter(|c| c.method == "PUT").collect();
    assert_eq!(puts.len(), 3, "{:?}", methods(&c));
    for (i, put) in puts.iter().enumerate() {
        assert_eq!(put.path, LEASE);
        assert_eq!(put.at, Duration::from_secs(2 * (i as u64 + 1)));
        assert_eq!(
            put.body["metadata"]["resourceVersion"],
            json!((101 + i).to_string())
        );
        assert_eq!(put.body["spec"]["holderIdentity"], json!(ME));
        assert_ne!(
            put.body["spec"]["renewTime"], c[1].body["spec"]["renewTime"],
            "a renewal sets a new renew time"
        );
    }

    fence.release().await.unwrap();
    let c = calls(&seen);
    let last = c.last().unwrap();
    assert_eq!((last.method.as_str(), last.path.as_str()), ("PUT", LEASE));
    assert_eq!(last.body["metadata"]["resourceVersion"], json!("104"));
    assert!(
        last.body["spec"].get("holderIdentity").is_none(),
        "release clears the holder: {}",
        last.body
    );
    // Released: no renewal follows.
    let n = c.len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(calls(&seen).len(), n);
}

#[tokio::test(start_paused = true)]
async fn the_default_duration_is_the_grace_period_plus_30_seconds() {
    let t = tempfile::tempdir().unwrap();
    let (client, seen) = serve(|call| match (call.method.as_str(), call.path.as_str()) {
        ("GET", "/api/v1/namespaces/db/pods/pgset-1") => (
            200,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "pgset-1", "namespace": "db"},
                   "spec": {"containers": [], "terminationGracePeriodSeconds": 90}}),
        ),
        ("GET", LEASE) => (404, status(404, "NotFound")),
        ("POST", LEASES) => (201, stored(&call.body, 1)),
        _ => (500, status(500, "unexpected")),
    });
    let api = PodApi::with_client(client, "db", "pgset");
    let opts = FenceOptions {
        lease_duration: None,
        renew_every: None,
        ..quick()
    };
    let _fence = Fence::acquire(&settings(t.path()), Some(&api), opts)
        .await
        .unwrap();
    let c = calls(&seen);
    assert_eq!(c[2].body["spec"]["leaseDurationSeconds"], json!(120));
    // Renewed every 10 s (a third of 120 s, at most 10 s).
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let c = calls(&seen);
    assert_eq!(c.len(), 4, "{:?}", methods(&c));
    assert_eq!(
        (c[3].method.as_str(), c[3].at),
        ("PUT", Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn an_unrenewed_lease_is_taken_over_only_after_its_duration_on_this_clock() {
    let t = tempfile::tempdir().unwrap();
    // The holder renews twice (the record changes at 0 s, 1 s and 2 s on the agent's clock),
    // then stops. Its renew time is years in the past by wall clock: that must not matter.
    let mut gets = 0u64;
    let mut current = lease(Some(OTHER), "7", "2020-01-01T00:00:00.000000Z", 4);
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => {
                gets += 1;
                if gets <= 3 {
                    current["metadata"]["resourceVersion"] = json!((6 + gets).to_string());
                }
                (200, current.clone())
            }
            ("PUT", LEASE) => (200, stored(&call.body, 50)),
            _ => (500, status(500, "unexpected")),
        },
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let _fence = Fence::acquire(&settings(t.path()), Some(&api), quick())
        .await
        .unwrap();
    let c = calls(&seen);
    let put = c.iter().find(|c| c.method == "PUT").unwrap();
    // Last change seen at 2 s; 6 s without change ends at 8 s, not earlier.
    assert_eq!(put.at, Duration::from_secs(8), "{:?}", methods(&c));
    assert!(
        c.iter()
            .filter(|c| c.at < Duration::from_secs(8))
            .all(|c| c.method == "GET")
    );
    assert_eq!(
        redacted(&put.body),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "pgset-1-member", "namespace": "db", "resourceVersion": "9"},
               "spec": {"holderIdentity": ME, "leaseDurationSeconds": 6,
                        "acquireTime": "<time>", "renewTime": "<time>", "leaseTransitions": 5}})
    );
}

#[tokio::test(start_paused = true)]
async fn a_live_holder_is_waited_for_and_reported_at_the_timeout() {
    let t = tempfile::tempdir().unwrap();
    let mut rv = 10u64;
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => {
                rv += 1; // renewed between every two looks
                (
                    200,
                    lease(
                        Some(OTHER),
                        &rv.to_string(),
                        "2026-01-01T00:00:00.000000Z",
                        0,
                    ),
                )
            }
            _ => (500, status(500, "unexpected")),
        },
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let opts = FenceOptions {
        wait_timeout: Some(Duration::from_secs(20)),
        ..quick()
    };
    let e = Fence::acquire(&settings(t.path()), Some(&api), opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Fence { .. }), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("pod UID uid-old") && m.contains("pgset-1-member") && m.contains("pgset-1"),
        "{m}"
    );
    let c = calls(&seen);
    assert!(c.iter().all(|c| c.method == "GET"), "{:?}", methods(&c));
    assert_eq!(c.last().unwrap().at, Duration::from_secs(20));
    // The lock file was freed with the refusal: a later attempt can take it.
    assert!(t.path().join("pgset-1.lock").is_file());
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_update_means_observe_again() {
    let t = tempfile::tempdir().unwrap();
    let mut gets = 0;
    let mut puts = 0;
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => {
                gets += 1;
                let rv = if gets == 1 { "8" } else { "9" };
                (200, lease(None, rv, "2026-01-01T00:00:00.000000Z", 2))
            }
            ("PUT", LEASE) => {
                puts += 1;
                if puts == 1 {
                    (409, status(409, "Conflict"))
                } else {
                    (200, stored(&call.body, 10))
                }
            }
            _ => (500, status(500, "unexpected")),
        },
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let _fence = Fence::acquire(&settings(t.path()), Some(&api), quick())
        .await
        .unwrap();
    let c = calls(&seen);
    assert_eq!(
        methods(&c),
        [
            ("GET", LEASE),
            ("PUT", LEASE),
            ("GET", LEASE),
            ("PUT", LEASE)
        ]
    );
    assert_eq!(c[1].body["metadata"]["resourceVersion"], json!("8"));
    assert_eq!(c[3].body["metadata"]["resourceVersion"], json!("9"));
    assert_eq!(c[3].body["spec"]["holderIdentity"], json!(ME));
    assert_eq!(
        c[3].body["spec"]["leaseTransitions"],
        json!(3),
        "a released Lease taken by a new holder counts a transition"
    );
    assert_eq!(c[3].at, Duration::ZERO, "a released Lease is taken at once");
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_lose_the_fence_before_anyone_may_take_it() {
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path());
    let pgdata = s.pgdata();
    std::fs::create_dir(&pgdata).unwrap();
    std::fs::write(pgdata.join("postmaster.pid"), "999999999\n").unwrap();
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => (404, status(404, "NotFound")),
            ("POST", LEASES) => (201, stored(&call.body, 1)),
            _ => (500, status(500, "etcdserver: request timed out")),
        },
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let fence = Fence::acquire(&s, Some(&api), quick()).await.unwrap();
    let start = Instant::now();
    let reason = fence.lost().await;
    let after = start.elapsed();
    // 6 s Lease: given up at 4 s after the last good write, 2 s before a contender may take it.
    assert_eq!(after, Duration::from_secs(4), "{reason}");
    assert!(reason.contains("could not be renewed"), "{reason}");
    let c = calls(&seen);
    assert_eq!(
        methods(&c[2..]),
        [("PUT", LEASE)],
        "one failed renewal at 2 s"
    );
    // No longer held: the stale postmaster.pid is left alone.
    let e = fence.clear_stale_postmaster_pid(&pgdata).unwrap_err();
    assert!(e.to_string().contains("write fence was lost"), "{e}");
    assert!(pgdata.join("postmaster.pid").is_file());
    // A lost fence is not released (it is not this holder's any more).
    let n = c.len();
    fence.release().await.unwrap();
    assert_eq!(calls(&seen).len(), n);
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_by_another_holder_is_lost_at_once() {
    let t = tempfile::tempdir().unwrap();
    let s = settings(t.path());
    std::fs::create_dir(s.pgdata()).unwrap();
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) if call.at.is_zero() => (404, status(404, "NotFound")),
            ("GET", LEASE) => (
                200,
                lease(Some(OTHER), "30", "2026-01-01T00:00:00.000000Z", 1),
            ),
            ("POST", LEASES) => (201, stored(&call.body, 1)),
            ("PUT", LEASE) => (409, status(409, "Conflict")),
            _ => (500, status(500, "unexpected")),
        },
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let fence = Fence::acquire(&s, Some(&api), quick()).await.unwrap();
    assert_eq!(
        fence.clear_stale_postmaster_pid(&s.pgdata()).unwrap(),
        StalePid::Absent
    );
    let start = Instant::now();
    let reason = fence.lost().await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(reason.contains("held by pod UID uid-old"), "{reason}");
    assert_eq!(
        methods(&calls(&seen)[2..]),
        [("PUT", LEASE), ("GET", LEASE)]
    );
}

#[tokio::test]
async fn statefulset_replicas_reads_the_sets_own_spec() {
    let (client, seen) = serve(|_| {
        (
            200,
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                   "metadata": {"name": "pgset", "namespace": "db"},
                   "spec": {"replicas": 3, "serviceName": "pgset",
                            "selector": {}, "template": {}}}),
        )
    });
    let n = PodApi::with_client(client, "db", "pgset")
        .statefulset_replicas()
        .await
        .unwrap();
    assert_eq!(n, 3);
    let c = calls(&seen);
    assert_eq!(
        methods(&c),
        [("GET", "/apis/apps/v1/namespaces/db/statefulsets/pgset")]
    );

    let (client, _) = serve(|_| (403, status(403, "Forbidden")));
    let e = PodApi::with_client(client, "db", "pgset")
        .statefulset_replicas()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`get` statefulsets")
            && e.contains("statefulsets/pgset")
            && e.contains("Role `pgset-agent`"),
        "{e}"
    );
}

#[tokio::test]
async fn a_forbidden_lease_write_names_the_missing_verb() {
    let t = tempfile::tempdir().unwrap();
    let (client, _) = serve(|call| match call.method.as_str() {
        "GET" => (404, status(404, "NotFound")),
        _ => (403, status(403, "Forbidden")),
    });
    let api = PodApi::with_client(client, "db", "pgset");
    let e = Fence::acquire(&settings(t.path()), Some(&api), quick())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`create` leases") && e.contains("coordination.k8s.io"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_conflict_with_this_holder_still_in_place_renews_on_the_new_version() {
    let t = tempfile::tempdir().unwrap();
    let mut puts = 0;
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) if call.at.is_zero() => (404, status(404, "NotFound")),
            // Someone changed the object (not its holder) since this agent's last write.
            ("GET", LEASE) => (
                200,
                lease(Some(ME), "150", "2026-01-01T00:00:00.000000Z", 0),
            ),
            ("POST", LEASES) => (201, stored(&call.body, 101)),
            ("PUT", LEASE) => {
                puts += 1;
                if puts == 1 {
                    (409, status(409, "Conflict"))
                } else {
                    (200, stored(&call.body, 151))
                }
            }
            _ => (500, status(500, "unexpected")),
        },
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let fence = Fence::acquire(&settings(t.path()), Some(&api), quick())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let c = calls(&seen);
    assert_eq!(
        methods(&c[2..]),
        [
            ("PUT", LEASE),
            ("GET", LEASE),
            ("PUT", LEASE),
            ("PUT", LEASE)
        ]
    );
    assert_eq!(c[2].body["metadata"]["resourceVersion"], json!("101"));
    assert_eq!(c[4].body["metadata"]["resourceVersion"], json!("150"));
    assert_eq!(c[5].body["metadata"]["resourceVersion"], json!("151"));
    assert_eq!(c[5].at, Duration::from_secs(4));
    // Still held: lost() has not resolved.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), fence.lost())
            .await
            .is_err()
    );
    fence.check_held().unwrap();
}
