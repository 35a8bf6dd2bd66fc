//! The cluster's failover drills against a scripted API server: `master-isolated` creates its
//! admission policy and binding, and deletes them whether the drill holds to the end or fails
//! midway (and first removes a leftover of an earlier run); a cluster without the policy API is
//! not applicable and changes nothing; the takeover wait follows the leader Lease and the pods
//! until another member holds it Ready as master; the agent drills are refused in a cluster
//! before any request. (The exec that sends SIGSTOP/SIGCONT goes over a websocket this mock does
//! not speak: the parts around it are tested here, the pid parsing in the crate's unit tests.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use pgset_drill::engine::Log;
use pgset_drill::live::{LiveOptions, wait_takeover};
use pgset_drill::{DrillName, Error, isolate};
use pgset_spec::{ClusterSpec, ValidSpec};
use pgset_verify::{Options, Verifier};
use serde_json::{Value, json};
use tower_test::mock;

/// One request: `METHOD path` and its JSON body (`null` without one).
#[derive(Debug, Clone)]
struct Call {
    line: String,
    body: Value,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// A client whose requests `reply` answers (it sees each request and how many came before).
fn server<F>(mut reply: F) -> (Client, Calls)
where
    F: FnMut(&str, &Value, usize) -> (u16, Value) + Send + 'static,
{
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let line = format!("{} {}", parts.method, parts.uri.path());
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let n = log.lock().unwrap().len();
            let (status, answer) = reply(&line, &body, n);
            log.lock().unwrap().push(Call { line, body });
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), calls)
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn spec() -> ValidSpec {
    ClusterSpec {
        replicas: 3,
        ..ClusterSpec::default()
    }
    .validated()
    .unwrap()
}

const GROUP: &str = "/apis/admissionregistration.k8s.io/v1";
const POLICY: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies";
const BINDING: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings";
const NAME: &str = "pgset-drill-default-pgset-isolated";

fn resources() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "admissionregistration.k8s.io/v1",
           "resources": [
               {"name": "validatingadmissionpolicies", "singularName": "", "namespaced": false,
                "kind": "ValidatingAdmissionPolicy", "verbs": ["create", "delete", "get"]},
               {"name": "validatingadmissionpolicybindings", "singularName": "", "namespaced": false,
                "kind": "ValidatingAdmissionPolicyBinding", "verbs": ["create", "delete", "get"]}]})
}

/// An API server that serves the policy; `leftover` says whether one of an earlier run exists.
fn admission(leftover: bool) -> impl FnMut(&str, &Value, usize) -> (u16, Value) + Send + 'static {
    let mut exists = leftover;
    move |line: &str, body: &Value, _| {
        let deleted = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        match line {
            l if l == format!("GET {GROUP}") => (200, resources()),
            l if l.starts_with("POST ") => {
                exists = true;
                (201, body.clone())
            }
            l if l.starts_with("DELETE ") && exists => (200, deleted),
            l if l.starts_with("DELETE ") => not_found(),
            other => panic!("unexpected request {other}"),
        }
    }
}

fn lines(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.line.clone())
        .collect()
}

#[tokio::test]
async fn master_isolated_creates_its_policy_and_binding_and_deletes_both_after_the_hold() {
    let (client, calls) = server(admission(false));
    let log = Log::default();
    let held = isolate::isolated(&client, &spec(), "pgset-1", &log, async {
        Ok::<_, Error>("took over")
    })
    .await
    .unwrap();
    assert_eq!(held, "took over");
    assert_eq!(
        lines(&calls),
        [
            format!("GET {GROUP}"),
            format!("DELETE {BINDING}/{NAME}"),
            format!("DELETE {POLICY}/{NAME}"),
            format!("POST {POLICY}"),
            format!("POST {BINDING}"),
            format!("DELETE {BINDING}/{NAME}"),
            format!("DELETE {POLICY}/{NAME}"),
        ]
    );
    let calls = calls.lock().unwrap().clone();
    let policy = &calls[3].body;
    assert_eq!(policy["metadata"]["name"], NAME);
    assert_eq!(
        policy["spec"]["validations"][0]["expression"],
        "object.metadata.name != 'pgset-leader' || variables.podName != 'pgset-1'"
    );
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"],
        json!(["leases"])
    );
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:default:pgset-sa'"
    );
    let binding = &calls[4].body;
    assert_eq!(binding["spec"]["policyName"], NAME);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(
        log.lines(),
        [
            format!(
                "pgset-1 cut off from the leader Lease pgset-leader: created ValidatingAdmissionPolicy and binding {NAME}"
            ),
            format!("pgset-1 reconnected: deleted ValidatingAdmissionPolicy and binding {NAME}"),
        ]
    );
}

#[tokio::test]
async fn master_isolated_deletes_its_policy_and_binding_when_the_drill_fails_midway() {
    let (client, calls) = server(admission(false));
    let log = Log::default();
    let err = isolate::isolated(&client, &spec(), "pgset-1", &log, async {
        Err::<(), _>(Error::Step {
            step: "wait for a replica to take over from pgset-1".into(),
            message: "none did within 300 s".into(),
        })
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("none did within 300 s"), "{err}");
    let sent = lines(&calls);
    assert_eq!(
        &sent[sent.len() - 2..],
        [
            format!("DELETE {BINDING}/{NAME}"),
            format!("DELETE {POLICY}/{NAME}"),
        ],
        "removed after the failure: {sent:?}"
    );
    assert_eq!(sent.iter().filter(|l| l.starts_with("POST ")).count(), 2);
}

#[tokio::test]
async fn master_isolated_deletes_the_policy_when_its_binding_cannot_be_created() {
    let mut inner = admission(false);
    let (client, calls) = server(move |line, body, n| {
        if line == format!("POST {BINDING}") {
            return (
                403,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "Forbidden", "code": 403, "message": "forbidden"}),
            );
        }
        inner(line, body, n)
    });
    let log = Log::default();
    let hold_ran = Arc::new(Mutex::new(false));
    let ran = hold_ran.clone();
    let err = isolate::isolated(&client, &spec(), "pgset-1", &log, async move {
        *ran.lock().unwrap() = true;
        Ok(())
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("create ValidatingAdmissionPolicyBinding {NAME}")),
        "{err}"
    );
    assert!(
        !*hold_ran.lock().unwrap(),
        "nothing is held without the binding"
    );
    assert_eq!(
        lines(&calls)[3..],
        [
            format!("POST {POLICY}"),
            format!("POST {BINDING}"),
            format!("DELETE {BINDING}/{NAME}"),
            format!("DELETE {POLICY}/{NAME}"),
        ]
    );
}

#[tokio::test]
async fn master_isolated_removes_a_leftover_of_an_earlier_run_first_and_says_so() {
    let (client, calls) = server(admission(true));
    let log = Log::default();
    isolate::isolated(&client, &spec(), "pgset-0", &log, async { Ok(()) })
        .await
        .unwrap();
    assert_eq!(
        lines(&calls)[1..3],
        [
            format!("DELETE {BINDING}/{NAME}"),
            format!("DELETE {POLICY}/{NAME}"),
        ]
    );
    assert_eq!(
        log.lines()[0],
        format!(
            "removed ValidatingAdmissionPolicy and binding {NAME} left over from an earlier run"
        )
    );
}

#[tokio::test]
async fn master_isolated_is_not_applicable_without_the_policy_api_and_changes_nothing() {
    let (client, calls) = server(|line, _, _| {
        assert_eq!(line, format!("GET {GROUP}"), "only the discovery");
        not_found()
    });
    let err = isolate::isolated(&client, &spec(), "pgset-0", &Log::default(), async {
        Ok(())
    })
    .await
    .unwrap_err();
    match &err {
        Error::NotApplicable { drill, why } => {
            assert_eq!(*drill, DrillName::MasterIsolated);
            assert!(!why.contains('\n'), "{why}");
            assert!(
                why.contains("does not serve admissionregistration.k8s.io/v1"),
                "{why}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(lines(&calls), [format!("GET {GROUP}")]);
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader";

fn pod(k: i32, ready: bool, master: bool) -> Value {
    json!({"metadata": {"name": format!("pgset-{k}"), "namespace": "default", "uid": format!("u{k}"),
                        "labels": {"role": if master { "master" } else { "replica" }}},
           "spec": {"containers": [{"name": "postgres", "image": "postgres:18"}]},
           "status": {"phase": "Running",
                      "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn lease(member: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "pgset-leader", "namespace": "default", "resourceVersion": "4",
                        "annotations": {"pgset.io/leader-member": member}},
           "spec": {"holderIdentity": format!("u{}", &member[6..]), "leaseDurationSeconds": 15}})
}

/// The master pgset-0 frozen: the Lease names it for `held` reads, then pgset-1, whose pod
/// becomes Ready with the master label one pod list later.
fn takeover(held: usize) -> impl FnMut(&str, &Value, usize) -> (u16, Value) + Send + 'static {
    let mut lease_reads = 0;
    let mut moved_lists = 0;
    move |line: &str, _: &Value, _| match line {
        l if l == format!("GET {LEASE}") => {
            lease_reads += 1;
            (
                200,
                lease(if lease_reads > held {
                    "pgset-1"
                } else {
                    "pgset-0"
                }),
            )
        }
        l if l == format!("GET {PODS}") => {
            let moved = lease_reads >= held;
            if moved {
                moved_lists += 1;
            }
            let one_is_master = moved_lists >= 3;
            (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                       "items": [pod(0, false, !one_is_master), pod(1, one_is_master, one_is_master),
                                 pod(2, true, false)]}),
            )
        }
        other => panic!("unexpected request {other}"),
    }
}

#[tokio::test]
async fn the_takeover_wait_follows_the_lease_until_another_member_is_ready_as_master() {
    let (client, calls) = server(takeover(2));
    let spec = spec();
    let verifier = Verifier::new(client, spec.clone(), Options::new(&spec));
    let log = Log::default();
    let new = wait_takeover(&verifier, "pgset-0", Duration::from_secs(60), &log)
        .await
        .unwrap();
    assert_eq!(new, "pgset-1");
    let get = |p: &str| format!("GET {p}");
    assert_eq!(
        lines(&calls),
        [
            // The Lease names the frozen master twice: only reads.
            get(PODS),
            get(LEASE),
            get(PODS),
            get(LEASE),
            // It names pgset-1, not yet Ready as master: the pods are read again.
            get(PODS),
            get(LEASE),
            get(PODS),
            // Ready with the master label.
            get(PODS),
            get(LEASE),
            get(PODS),
        ]
    );
    assert_eq!(
        log.lines(),
        [
            "the leader Lease names pgset-1",
            "pgset-1 is Ready as the master"
        ]
    );
}

#[tokio::test]
async fn the_takeover_wait_gives_up_when_the_lease_never_moves_and_says_so() {
    let (client, calls) = server(takeover(usize::MAX));
    let spec = spec();
    let verifier = Verifier::new(client, spec.clone(), Options::new(&spec));
    let err = wait_takeover(
        &verifier,
        "pgset-0",
        Duration::from_millis(600),
        &Log::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("wait for a replica to take over from pgset-0")
            && err.contains("none did within"),
        "{err}"
    );
    assert!(lines(&calls).iter().all(|l| l.starts_with("GET ")));
}

#[tokio::test]
async fn the_agent_drills_are_refused_in_a_cluster_with_the_reason_before_any_request() {
    for (drill, closest) in [
        (DrillName::MasterAgentKill, "master-pod-delete"),
        (DrillName::MasterAgentFreeze, "master-freeze"),
    ] {
        let (client, calls) = server(|line, _, _| panic!("no request expected: {line}"));
        let err = pgset_drill::live::run(client, &LiveOptions::new(spec()), drill)
            .await
            .unwrap_err();
        let Error::NotApplicable { why, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            why.contains("agent is PID 1 of its postgres container"),
            "{why}"
        );
        assert!(
            why.contains(&format!("run {closest}, the closest cluster drill")),
            "{why}"
        );
        assert!(calls.lock().unwrap().is_empty());
    }
}

/// A healthy cluster of 3 led by pgset-0 whose pgset-2 rejoined after `rejoin`: its agent lists
/// the copy it kept of what it wrote after the fork.
fn rejoined(line: &str, _: &Value, _: usize) -> (u16, Value) {
    let pod = |k: i32| {
        json!({"metadata": {"name": format!("pgset-{k}"), "namespace": "default", "uid": format!("u{k}"),
                            "labels": {"role": if k == 0 { "master" } else { "replica" }}},
               "spec": {"containers": [{"name": "postgres", "image": "postgres:18"}]},
               "status": {"phase": "Running", "podIP": format!("10.244.0.{k}"),
                          "conditions": [{"type": "Ready", "status": "True"}],
                          "containerStatuses": [{"name": "postgres", "ready": true, "restartCount": 0,
                              "image": "postgres:18", "imageID": "",
                              "state": {"running": {"startedAt": "2026-01-01T00:05:01Z"}}}]}})
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
        let mut pg = json!({"inRecovery": k != 0, "timeline": 2, "systemIdentifier": "73"});
        if k == 0 {
            let standby = |p: &str| {
                json!({"applicationName": p, "state": "streaming", "syncState": "async",
                       "unreplayedBytes": 0, "replayLagMs": 1.0})
            };
            pg["replication"] = json!([standby("pgset-1"), standby("pgset-2")]);
            pg["slots"] = json!([
                {"slot": "pgset_1", "active": true, "walStatus": "reserved", "retainedBytes": 0},
                {"slot": "pgset_2", "active": true, "walStatus": "reserved", "retainedBytes": 0}
            ]);
        }
        let mut a = json!({"member": format!("pgset-{k}"), "phase": "running", "ready": true,
                           "reason": "serving", "postgres": pg});
        if k == 2 {
            a["diverged"] = json!([{"path": "/var/lib/postgresql/data/pgset-2.diverged-20261207T120000Z",
                                    "forkLsn": "0/3000060", "bytesAfterFork": 81920}]);
        }
        a
    };
    let (path, query) = line
        .trim_start_matches("GET ")
        .split_once('?')
        .unwrap_or((line.trim_start_matches("GET "), ""));
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
        | "/api/v1/namespaces/default/configmaps/pgset-record" => not_found(),
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
}

#[tokio::test]
async fn a_kept_diverged_copy_is_reported_with_the_warning_and_does_not_stop_the_next_drill() {
    // The line the mock sees has no query: keep it for the EndpointSlice selector.
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, respond)) = handle.next_request().await {
            let line = format!("GET {}", request.uri());
            let (status, answer) = rejoined(&line, &Value::Null, 0);
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    let client = Client::new(service, "default");
    let spec = spec();
    let status = pgset_verify::ClusterStatus::gather(client.clone(), &spec)
        .await
        .unwrap();
    let path = "/var/lib/postgresql/data/pgset-2.diverged-20261207T120000Z";
    assert_eq!(status.warnings.len(), 1, "{:?}", status.warnings);
    assert!(
        status.warnings[0].contains(&format!(
            "remove it with `kubectl exec -n default pgset-2 -c postgres -- rm -r {path}`"
        )),
        "{:?}",
        status.warnings
    );
    let kept = pgset_drill::live::kept_diverged(&status);
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (
            kept[0].member.as_str(),
            kept[0].path.as_str(),
            kept[0].bytes_after_fork,
            kept[0].warned
        ),
        ("pgset-2", path, 81920, true)
    );
    // Without the warning, the copy is reported as not warned of.
    let mut silent = status.clone();
    silent.warnings.clear();
    assert!(!pgset_drill::live::kept_diverged(&silent)[0].warned);
    // The kept copy is the user's data aside, not a fault of the running set.
    assert!(pgset_drill::live::drill_health(&status, "default").is_empty());
    assert!(
        pgset_drill::live::unhealthy(&client, &spec)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn master_isolated_on_a_cluster_without_the_policy_api_is_refused_before_any_load() {
    let (client, calls) = server(|line, _, _| {
        assert_eq!(line, format!("GET {GROUP}"), "only the discovery");
        not_found()
    });
    let err = pgset_drill::live::run(client, &LiveOptions::new(spec()), DrillName::MasterIsolated)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotApplicable { drill: DrillName::MasterIsolated, why }
            if why.contains("does not serve admissionregistration.k8s.io/v1")),
        "{err}"
    );
    assert_eq!(lines(&calls), [format!("GET {GROUP}")]);
}
