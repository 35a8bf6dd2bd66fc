//! The live target against a mock API server: the requests that find the pod a Service routes
//! to and ask the master agent whether it is ready, and a drill on an unhealthy cluster that
//! reads and changes nothing.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use pgset_drill::live::{Forward, LiveOptions};
use pgset_drill::load::ReadyProbe;
use pgset_drill::{DrillName, Error};
use pgset_spec::ClusterSpec;
use serde_json::{Value, json};
use tower_test::mock;

/// A mock API server that answers each request with `reply(method, path and query)` and
/// records what it was asked.
fn server(reply: fn(&str, &str) -> (u16, Value)) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            log.lock().unwrap().push(format!("{method} {uri}"));
            let (status, body) = reply(&method, &uri);
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), seen)
}

fn slices(endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
           "items": [{"metadata": {"name": "pgset-master-x1"}, "addressType": "IPv4",
                      "endpoints": endpoints}]})
}

fn endpoint(pod: &str, ready: bool) -> Value {
    json!({"addresses": ["10.244.0.10"], "conditions": {"ready": ready},
           "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}})
}

#[tokio::test]
async fn a_service_routes_to_the_pod_of_a_ready_endpoint() {
    let (client, seen) = server(|_, _| {
        (
            200,
            slices(json!([
                endpoint("pgset-1", false),
                endpoint("pgset-0", true)
            ])),
        )
    });
    let f = Forward::new(&client, "default", "pgset-master");
    assert_eq!(f.routed_pod().await.unwrap(), "pgset-0");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [
            "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices?&labelSelector=kubernetes.io%2Fservice-name%3Dpgset-master"
        ]
    );
}

#[tokio::test]
async fn a_service_without_a_ready_endpoint_routes_nowhere() {
    let (client, _) = server(|_, _| (200, slices(json!([endpoint("pgset-0", false)]))));
    let f = Forward::new(&client, "default", "pgset-master");
    assert_eq!(
        f.routed_pod().await.unwrap_err(),
        "Service pgset-master has no ready endpoint"
    );
}

#[tokio::test]
async fn readiness_is_the_master_agents_readyz_through_the_pod_proxy() {
    let (client, seen) = server(|_, uri| {
        if uri.contains("pgset-0:8008") {
            (200, json!("ready"))
        } else {
            (
                503,
                json!({"kind": "Status", "code": 503, "message": "not ready"}),
            )
        }
    });
    let probe = |pod: &str| ReadyProbe::Proxy {
        client: client.clone(),
        namespace: "default".into(),
        pod: pod.into(),
        deadline: pgset_drill::load::STATEMENT_DEADLINE,
    };
    assert!(probe("pgset-0").ready().await);
    assert!(!probe("pgset-1").ready().await);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [
            "GET /api/v1/namespaces/default/pods/pgset-0:8008/proxy/readyz",
            "GET /api/v1/namespaces/default/pods/pgset-1:8008/proxy/readyz"
        ]
    );
}

#[tokio::test]
async fn a_drill_on_an_unhealthy_cluster_only_reads() {
    // The StatefulSet wants 3 members; 2 pods exist, the second not Ready.
    let (client, seen) = server(|_, uri| {
        let pod = |k: i32, ready: bool| {
            json!({"metadata": {"name": format!("pgset-{k}"), "namespace": "default", "uid": format!("u{k}"),
                                "labels": {"role": if k == 0 { "master" } else { "replica" }}},
                   "spec": {"containers": [{"name": "postgres", "image": "postgres:18"}]},
                   "status": {"phase": "Running", "podIP": format!("10.244.0.{k}"),
                              "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
        };
        let path = uri.split('?').next().unwrap_or_default();
        match path {
            "/apis/apps/v1/namespaces/default/statefulsets/pgset" => (
                200,
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                       "metadata": {"name": "pgset", "namespace": "default"},
                       "spec": {"replicas": 3, "serviceName": "pgset",
                                "selector": {"matchLabels": {}}, "template": {}}}),
            ),
            "/api/v1/namespaces/default/pods" => (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                       "items": [pod(0, true), pod(1, false)]}),
            ),
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader"
            | "/api/v1/namespaces/default/configmaps/pgset-record" => (
                404,
                json!({"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"}),
            ),
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices" => (
                200,
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                       "metadata": {}, "items": []}),
            ),
            _ => (
                503,
                json!({"kind": "Status", "code": 503, "message": "no agent"}),
            ),
        }
    });
    let spec = ClusterSpec {
        replicas: 3,
        ..ClusterSpec::default()
    }
    .validated()
    .unwrap();
    let err = pgset_drill::live::run(client, &LiveOptions::new(spec), DrillName::ReplicaPodDelete)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotHealthy(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("2 pod(s) for 3 wanted members"), "{text}");
    assert!(text.contains("pgset-1 is not Ready (Running)"), "{text}");
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| r.starts_with("GET ")),
        "a refused drill changes nothing: {seen:?}"
    );
}

#[tokio::test]
async fn a_master_running_and_ready_again_after_a_crash_is_healthy_for_the_next_drill() {
    // After postgres-kill: pgset-0's container runs and is Ready again; its previous exit left
    // a twenty-line log tail as its termination message.
    let (client, _seen) = server(|_, uri| {
        let tail: Vec<String> = (1..=20).map(|i| format!("agent: log line {i}")).collect();
        let pod = |k: i32| {
            let mut p = json!({"metadata": {"name": format!("pgset-{k}"), "namespace": "default", "uid": format!("u{k}"),
                                "labels": {"role": if k == 0 { "master" } else { "replica" }}},
                   "spec": {"containers": [{"name": "postgres", "image": "postgres:18"}]},
                   "status": {"phase": "Running", "podIP": format!("10.244.0.{k}"),
                              "conditions": [{"type": "Ready", "status": "True"}],
                              "containerStatuses": [{"name": "postgres", "ready": true, "restartCount": 0,
                                  "image": "postgres:18", "imageID": "",
                                  "state": {"running": {"startedAt": "2026-01-01T00:05:01Z"}}}]}});
            if k == 0 {
                p["status"]["containerStatuses"][0]["restartCount"] = json!(1);
                p["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {
                    "exitCode": 1, "finishedAt": "2026-01-01T00:05:00Z", "message": tail.join("\n")}});
            }
            p
        };
        let slices = |service: &str, pods: &[i32]| {
            let endpoints: Vec<Value> = pods
                .iter()
                .map(|k| json!({"addresses": [format!("10.244.0.{k}")], "conditions": {"ready": true},
                                "targetRef": {"kind": "Pod", "name": format!("pgset-{k}"), "namespace": "default"}}))
                .collect();
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
                   "items": [{"metadata": {"name": format!("{service}-x"), "labels": {"kubernetes.io/service-name": service}},
                              "addressType": "IPv4", "endpoints": endpoints}]})
        };
        let standby = |p: &str| {
            json!({"applicationName": p, "state": "streaming", "syncState": "async",
                                       "unreplayedBytes": 0, "replayLagMs": 1.0})
        };
        let agent = |k: i32| {
            let mut pg = json!({"inRecovery": k != 0, "timeline": 1, "systemIdentifier": "73"});
            if k == 0 {
                pg["replication"] = json!([standby("pgset-1"), standby("pgset-2")]);
                pg["slots"] = json!([
                    {"slot": "pgset_1", "active": true, "walStatus": "reserved", "retainedBytes": 0},
                    {"slot": "pgset_2", "active": true, "walStatus": "reserved", "retainedBytes": 0}
                ]);
            }
            json!({"member": format!("pgset-{k}"), "phase": "running", "ready": true,
                   "reason": "serving", "postgres": pg})
        };
        let path = uri.split('?').next().unwrap_or_default();
        let query = uri.split('?').nth(1).unwrap_or_default();
        match path {
            "/apis/apps/v1/namespaces/default/statefulsets/pgset" => (
                200,
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                       "metadata": {"name": "pgset", "namespace": "default"},
                       "spec": {"replicas": 3, "serviceName": "pgset",
                                "selector": {"matchLabels": {}}, "template": {}}}),
            ),
            "/api/v1/namespaces/default/pods" => (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                       "items": [pod(0), pod(1), pod(2)]}),
            ),
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader"
            | "/api/v1/namespaces/default/configmaps/pgset-record" => (
                404,
                json!({"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"}),
            ),
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
                if query.contains("pgset-master") =>
            {
                (200, slices("pgset-master", &[0]))
            }
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices" => {
                (200, slices("pgset-replica", &[1, 2]))
            }
            p if p.ends_with(":8008/proxy/status") => {
                let k = if p.contains("pgset-0") {
                    0
                } else if p.contains("pgset-1") {
                    1
                } else {
                    2
                };
                (200, agent(k))
            }
            _ => (
                503,
                json!({"kind": "Status", "code": 503, "message": "unexpected"}),
            ),
        }
    });
    let spec = ClusterSpec {
        replicas: 3,
        ..ClusterSpec::default()
    }
    .validated()
    .unwrap();
    let why = pgset_drill::live::unhealthy(&client, &spec).await.unwrap();
    assert!(why.is_empty(), "the next drill may start: {why:?}");
    let status = pgset_verify::ClusterStatus::gather(client, &spec)
        .await
        .unwrap();
    let exit = status.members[0]
        .last_exit
        .as_ref()
        .expect("the last exit as history");
    assert_eq!(exit.exit_code, 1);
    assert_eq!(exit.reason.as_deref(), Some("agent: log line 1"));
    let table = status.to_table();
    assert!(!table.contains("log line 2"), "{table}");
    assert!(table.ends_with("\nhealthy\n"), "{table}");
}

/// A healthy cluster of 3 whose master is pgset-1 by its leader Lease and its label; the
/// Secret holds a password; a port-forward is refused (403), so a drill stops at its first
/// connection.
fn led_by_one(_: &str, uri: &str) -> (u16, Value) {
    let pod = |k: i32| {
        json!({"metadata": {"name": format!("pgset-{k}"), "namespace": "default", "uid": format!("u{k}"),
                            "labels": {"role": if k == 1 { "master" } else { "replica" }}},
               "spec": {"containers": [{"name": "postgres", "image": "postgres:18"}]},
               "status": {"phase": "Running", "podIP": format!("10.244.0.{k}"),
                          "conditions": [{"type": "Ready", "status": "True"}]}})
    };
    let slices = |service: &str, pods: &[i32]| {
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|k| json!({"addresses": [format!("10.244.0.{k}")], "conditions": {"ready": true},
                            "targetRef": {"kind": "Pod", "name": format!("pgset-{k}"), "namespace": "default"}}))
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
               "items": [{"metadata": {"name": format!("{service}-x"), "labels": {"kubernetes.io/service-name": service}},
                          "addressType": "IPv4", "endpoints": endpoints}]})
    };
    let agent = |k: i32| {
        let mut pg = json!({"inRecovery": k != 1, "timeline": 2, "systemIdentifier": "73"});
        if k == 1 {
            let standby =
                |p: &str| json!({"applicationName": p, "state": "streaming", "syncState": "async"});
            pg["replication"] = json!([standby("pgset-0"), standby("pgset-2")]);
        }
        json!({"member": format!("pgset-{k}"), "phase": "running", "ready": true,
               "reason": "serving", "postgres": pg})
    };
    let path = uri.split('?').next().unwrap_or_default();
    let query = uri.split('?').nth(1).unwrap_or_default();
    match path {
        "/apis/apps/v1/namespaces/default/statefulsets/pgset" => (
            200,
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                   "metadata": {"name": "pgset", "namespace": "default"},
                   "spec": {"replicas": 3, "serviceName": "pgset",
                            "selector": {"matchLabels": {}}, "template": {}}}),
        ),
        "/api/v1/namespaces/default/pods" => (
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                   "items": [pod(0), pod(1), pod(2)]}),
        ),
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader" => (
            200,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "pgset-leader", "namespace": "default", "resourceVersion": "4",
                                "annotations": {"pgset.io/leader-member": "pgset-1",
                                                "pgset.io/leader-timeline": "2"}},
                   "spec": {"holderIdentity": "u1", "leaseDurationSeconds": 15}}),
        ),
        "/api/v1/namespaces/default/configmaps/pgset-record" => (
            404,
            json!({"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"}),
        ),
        "/api/v1/namespaces/default/secrets/pgset-secret" => (
            200,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "pgset-secret", "namespace": "default"},
                   "data": {pgset_spec::contract::secret::SUPERUSER_PASSWORD_KEY: "c2VjcmV0"}}),
        ),
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
            if query.contains("pgset-master") =>
        {
            (200, slices("pgset-master", &[1]))
        }
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices" => {
            (200, slices("pgset-replica", &[0, 2]))
        }
        p if p.ends_with(":8008/proxy/status") => {
            let k = if p.contains("pgset-0") {
                0
            } else if p.contains("pgset-1") {
                1
            } else {
                2
            };
            (200, agent(k))
        }
        _ => (
            403,
            json!({"kind": "Status", "code": 403, "reason": "Forbidden", "message": "refused"}),
        ),
    }
}

#[tokio::test]
async fn a_master_drill_aims_at_the_member_the_leader_lease_names() {
    let (client, seen) = server(led_by_one);
    let spec = ClusterSpec {
        replicas: 3,
        // The members serve plain TCP here: this test is about which member is aimed at.
        tls: pgset_spec::TlsSpec {
            mode: pgset_spec::TlsMode::Off,
            ..Default::default()
        },
        ..ClusterSpec::default()
    }
    .validated()
    .unwrap();
    let why = pgset_drill::live::unhealthy(&client, &spec).await.unwrap();
    assert!(
        why.is_empty(),
        "healthy with its master on pgset-1: {why:?}"
    );
    // A small patience: the refused first connection gives up after about a second.
    let mut opts = LiveOptions::new(spec);
    opts.patience = pgset_drill::patience::Patience::new(0.02).unwrap();
    let err = pgset_drill::live::run(client, &opts, DrillName::MasterPodDelete)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connect to pgset-1"), "{err}");
    let seen = seen.lock().unwrap();
    let forwards: Vec<&String> = seen.iter().filter(|r| r.contains("/portforward")).collect();
    assert!(!forwards.is_empty(), "{seen:?}");
    assert!(
        forwards
            .iter()
            .all(|r| r.contains("/pods/pgset-1/portforward")),
        "the first connection goes to the master pgset-1: {forwards:?}"
    );
    assert!(seen.iter().all(|r| r.starts_with("GET ")), "{seen:?}");
}
