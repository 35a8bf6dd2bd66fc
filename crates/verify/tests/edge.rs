//! The verify edge against a mock API server: the requests sent to read pods, Services,
//! EndpointSlices and the StatefulSet, to scale, and to exec psql in a pod.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use pgset_spec::ClusterSpec;
use pgset_verify::exec::PodExec;
use pgset_verify::{ClusterStatus, Error, Options, Verdict, Verifier, names};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

fn verifier(client: Client) -> Verifier {
    let spec = ClusterSpec {
        replicas: 3,
        ..ClusterSpec::default()
    };
    let mut options = Options::new(&spec);
    options.timeout = Duration::from_secs(5);
    Verifier::new(client, spec.validated().unwrap(), options)
}

/// What a request carried.
struct Seen {
    method: Method,
    path: String,
    query: String,
    headers: http::HeaderMap,
    body: Value,
}

/// Takes the next request and answers it with `status` and `body`.
async fn answer(handle: &mut ApiHandle, status: u16, body: Value) -> Seen {
    let (request, respond) = handle.next_request().await.expect("a request");
    let (parts, req_body) = request.into_parts();
    let bytes = req_body.collect_bytes().await.unwrap();
    let seen = Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts.headers.clone(),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        },
    };
    respond.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
    seen
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound", "code": 404})
}

fn statefulset(replicas: i32, policy: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": "pgset", "namespace": "default"},
           "spec": {"replicas": replicas, "serviceName": "pgset", "podManagementPolicy": policy,
                    "selector": {"matchLabels": {"app.kubernetes.io/name": "pgset"}},
                    "template": {"spec": {"containers": [{"name": "postgres"}]}}}})
}

fn pod(ordinal: i32, phase: &str, role: &str) -> Value {
    json!({"metadata": {"name": format!("pgset-{ordinal}"), "namespace": "default",
                        "uid": format!("uid-{ordinal}"),
                        "creationTimestamp": format!("2026-11-22T05:00:{:02}Z", ordinal * 10),
                        "labels": {"app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset", "role": role}},
           "spec": {"nodeName": "node-1", "containers": [{"name": "postgres"}]},
           "status": {"phase": phase, "podIP": format!("10.244.0.{}", 10 + ordinal),
                      "conditions": [{"type": "Ready", "status": if phase == "Running" { "True" } else { "False" }}]}})
}

/// A master and two replicas, Running, Ready and labelled.
fn healthy_pods() -> Value {
    pod_list(vec![
        pod(0, "Running", "master"),
        pod(1, "Running", "replica"),
        pod(2, "Running", "replica"),
    ])
}

fn pod_list(pods: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
}

fn service(name: &str, role: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"selector": {"app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset", "role": role}}})
}

fn slices(service: &str, pods: &[i32]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|o| json!({"addresses": [format!("10.244.0.{}", 10 + o)], "conditions": {"ready": true},
                        "targetRef": {"kind": "Pod", "name": format!("pgset-{o}"), "namespace": "default"}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
           "items": [{"metadata": {"name": format!("{service}-x1"), "labels": {"kubernetes.io/service-name": service}},
                      "addressType": "IPv4", "endpoints": endpoints}]})
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader";

const POD_SELECTOR: &str =
    "&labelSelector=app.kubernetes.io%2Fname%3Dpgset%2Capp.kubernetes.io%2Finstance%3Dpgset";

#[tokio::test]
async fn members_are_listed_by_the_cluster_selector() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            200,
            pod_list(vec![
                pod(1, "Running", "replica"),
                pod(0, "Running", "master"),
            ]),
        )
        .await
    });
    let members = v.members().await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/api/v1/namespaces/default/pods");
    assert_eq!(seen.query, POD_SELECTOR);
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["pgset-0", "pgset-1"], "sorted by ordinal");
    assert_eq!(members[0].role(), Some("master"));
    assert_eq!(members[1].role(), Some("replica"));
}

#[tokio::test]
async fn role_services_read_labels_selectors_and_endpoint_slices() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        let pods = healthy_pods();
        seen.push(answer(&mut handle, 200, pods).await);
        seen.push(answer(&mut handle, 404, not_found("leases", "pgset-leader")).await);
        seen.push(answer(&mut handle, 200, service("pgset-master", "master")).await);
        seen.push(answer(&mut handle, 200, service("pgset-replica", "replica")).await);
        seen.push(answer(&mut handle, 200, slices("pgset-master", &[0])).await);
        seen.push(answer(&mut handle, 200, slices("pgset-replica", &[1, 2])).await);
        seen
    });
    let finding = v.check_role_services().await;
    let seen = server.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Pass, "{}", finding.message);
    let requests: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.path.clone(), s.query.clone()))
        .collect();
    assert_eq!(
        requests,
        [
            (
                "/api/v1/namespaces/default/pods".to_string(),
                POD_SELECTOR.to_string()
            ),
            (LEASE.to_string(), String::new()),
            (
                "/api/v1/namespaces/default/services/pgset-master".into(),
                String::new()
            ),
            (
                "/api/v1/namespaces/default/services/pgset-replica".into(),
                String::new()
            ),
            (
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices".into(),
                "&labelSelector=kubernetes.io%2Fservice-name%3Dpgset-master".into()
            ),
            (
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices".into(),
                "&labelSelector=kubernetes.io%2Fservice-name%3Dpgset-replica".into()
            ),
        ]
    );
}

#[tokio::test]
async fn a_replica_without_its_label_fails_role_services() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        let pods = pod_list(vec![
            pod(0, "Running", "master"),
            pod(1, "Running", "replica"),
            pod(2, "Running", "unset"),
        ]);
        answer(&mut handle, 200, pods).await;
        answer(&mut handle, 404, not_found("leases", "pgset-leader")).await;
        answer(&mut handle, 200, service("pgset-master", "master")).await;
        answer(&mut handle, 404, not_found("services", "pgset-replica")).await;
        answer(&mut handle, 200, slices("pgset-master", &[0])).await;
        answer(&mut handle, 200, slices("pgset-replica", &[1])).await;
    });
    let finding = v.check_role_services().await;
    server.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Fail);
    assert_eq!(finding.message, "Service pgset-replica missing");
}

#[tokio::test]
async fn scale_patches_the_scale_subresource_with_pgsets_field_manager() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        let get = answer(&mut handle, 200, statefulset(3, "OrderedReady")).await;
        let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                           "metadata": {"name": "pgset", "namespace": "default"},
                           "spec": {"replicas": 4}, "status": {"replicas": 3}});
        let patch = answer(&mut handle, 200, scale).await;
        (get, patch)
    });
    v.scale(4).await.unwrap();
    let (get, patch) = server.await.unwrap();
    assert_eq!(get.method, Method::GET);
    assert_eq!(
        get.path,
        "/apis/apps/v1/namespaces/default/statefulsets/pgset"
    );
    assert_eq!(patch.method, Method::PATCH);
    assert_eq!(
        patch.path,
        "/apis/apps/v1/namespaces/default/statefulsets/pgset/scale"
    );
    assert_eq!(patch.query, "&fieldManager=pgset");
    assert_eq!(
        patch.headers["content-type"],
        "application/merge-patch+json"
    );
    assert_eq!(patch.body, json!({"spec": {"replicas": 4}}));
}

#[tokio::test]
async fn preflight_names_the_missing_statefulset_and_the_fix() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        answer(&mut handle, 404, not_found("statefulsets.apps", "pgset")).await
    });
    let err = v.preflight().await.unwrap_err();
    server.await.unwrap();
    assert!(matches!(err, Error::NotDeployed { .. }));
    assert_eq!(
        err.to_string(),
        "StatefulSet pgset not found in namespace default: deploy it first, or name the cluster with --name / -n"
    );
}

#[tokio::test]
async fn pods_check_reads_the_statefulset_policy() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        let pods = healthy_pods();
        answer(&mut handle, 200, pods).await;
        answer(&mut handle, 200, statefulset(3, "Parallel")).await;
    });
    let finding = v.check_pods().await;
    server.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Fail);
    assert_eq!(
        finding.message,
        format!(
            "podManagementPolicy is Parallel, not the spec's OrderedReady: apply the spec again \
             (`{} deploy` recreates what it must)",
            pgset_spec::contract::program_name()
        )
    );
}

#[tokio::test]
async fn exec_sends_the_command_to_the_postgres_container_and_reports_a_refusal() {
    let (client, mut handle) = mock_client();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "default");
    let exec = PodExec::new(pods, Duration::from_secs(5));
    let server = tokio::spawn(async move {
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"pgset-0\" is forbidden: User \"viewer\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\"",
            "reason": "Forbidden", "code": 403});
        answer(&mut handle, 403, forbidden).await
    });
    let argv = pgset_verify::sql::psql_local(&[pgset_verify::sql::IN_RECOVERY_QUERY]);
    let err = exec.run("pgset-0", "postgres", &argv).await.unwrap_err();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/api/v1/namespaces/default/pods/pgset-0/exec");
    assert_eq!(
        seen.query,
        "&stdout=true&stderr=true&container=postgres&command=psql&command=-X&command=-q&command=-A\
         &command=-t&command=-F&command=%7C&command=-v&command=ON_ERROR_STOP%3D1&command=-v\
         &command=VERBOSITY%3Dverbose&command=-h&command=%2Fvar%2Frun%2Fpostgresql&command=-U\
         &command=postgres&command=-d&command=postgres&command=-c\
         &command=select+pg_is_in_recovery%28%29"
    );
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert!(matches!(err, Error::Exec { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("exec `psql` in pod pgset-0: "), "{text}");
    assert!(
        text.contains(r#"User "viewer" cannot create resource "pods/exec""#),
        "the API server's reason reaches the user: {text}"
    );
}

fn record(cluster_id: &str, sysid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "pgset-record", "namespace": "default"},
           "data": {"clusterId": cluster_id, "systemIdentifier": sysid}})
}

/// A master agent's `/status` with its standbys and slots.
fn master_agent(replication: Value, slots: Value) -> Value {
    json!({
        "member": "pgset-0", "agentPid": 7, "agentVersion": "0.1.0", "phase": "running",
        "activity": "postgres running", "ready": true, "reason": "accepts writes",
        "postgres": {"inRecovery": false, "timeline": 2, "systemIdentifier": "7300000000000000001",
                     "serverVersion": "18.1", "uptimeSeconds": 3723, "startedAt": "2026-11-29 21:00:00+00",
                     "currentLsn": "0/5000060", "replication": replication, "slots": slots}
    })
}

fn replica_agent(pod: &str, timeline: i64, sysid: &str) -> Value {
    json!({
        "member": pod, "agentPid": 8, "agentVersion": "0.1.0", "phase": "running",
        "activity": "postgres running", "ready": true, "reason": "streaming from the master",
        "postgres": {"inRecovery": true, "timeline": timeline, "systemIdentifier": sysid,
                     "receiveLsn": "0/5000060", "replayLsn": "0/5000060", "walReceiver": "streaming"}
    })
}

fn standby(pod: &str) -> Value {
    json!({"applicationName": pod, "state": "streaming", "syncState": "async",
           "unreplayedBytes": 0, "replayLagMs": 1.5})
}

fn slot(name: &str, active: bool, retained: i64) -> Value {
    json!({"slot": name, "active": active, "walStatus": "reserved", "retainedBytes": retained})
}

#[tokio::test]
async fn status_summary_comes_from_the_record_the_services_and_the_master_agent() {
    let (client, mut handle) = mock_client();
    let spec = ClusterSpec {
        replicas: 3,
        ..ClusterSpec::default()
    };
    let server = tokio::spawn(async move {
        let mut paths = Vec::new();
        let mut seen = |s: Seen| paths.push(format!("{} {}", s.method, s.path));
        seen(answer(&mut handle, 200, statefulset(3, "OrderedReady")).await);
        seen(answer(&mut handle, 200, healthy_pods()).await);
        seen(answer(&mut handle, 404, not_found("leases", "pgset-leader")).await);
        seen(answer(&mut handle, 200, record("c0ffee", "7300000000000000001")).await);
        seen(answer(&mut handle, 200, slices("pgset-master", &[0])).await);
        seen(answer(&mut handle, 200, slices("pgset-replica", &[1, 2])).await);
        let master = master_agent(
            json!([standby("pgset-1"), standby("pgset-2")]),
            json!([slot("pgset_1", true, 0), slot("pgset_2", true, 96)]),
        );
        seen(answer(&mut handle, 200, master).await);
        seen(
            answer(
                &mut handle,
                200,
                replica_agent("pgset-1", 2, "7300000000000000001"),
            )
            .await,
        );
        seen(
            answer(
                &mut handle,
                200,
                replica_agent("pgset-2", 2, "7300000000000000001"),
            )
            .await,
        );
        paths
    });
    let status = ClusterStatus::gather(client, &spec.validated().unwrap())
        .await
        .unwrap();
    let paths = server.await.unwrap();
    assert_eq!(
        paths,
        [
            "GET /apis/apps/v1/namespaces/default/statefulsets/pgset",
            "GET /api/v1/namespaces/default/pods",
            "GET /apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader",
            "GET /api/v1/namespaces/default/configmaps/pgset-record",
            "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "GET /api/v1/namespaces/default/pods/pgset-0:8008/proxy/status",
            "GET /api/v1/namespaces/default/pods/pgset-1:8008/proxy/status",
            "GET /api/v1/namespaces/default/pods/pgset-2:8008/proxy/status",
        ],
        "streaming comes from the master agent: no exec"
    );
    let s = &status.summary;
    assert_eq!(s.cluster_id.as_deref(), Some("c0ffee"));
    assert_eq!(s.system_identifier.as_deref(), Some("7300000000000000001"));
    assert_eq!(s.postgres_version.as_deref(), Some("18.1"));
    assert_eq!(s.master, "pgset-0");
    assert_eq!(s.master_uptime_s, Some(3723.0));
    assert_eq!((s.members_ready, s.members_total), (3, 3));
    assert_eq!(s.master_lsn.as_deref(), Some("0/5000060"));
    assert_eq!(s.timeline, Some(2));
    assert!(status.healthy, "{:?}", status.warnings);
    let m = &status.members;
    assert_eq!(m[0].services, ["pgset-master"]);
    assert_eq!(m[1].services, ["pgset-replica"]);
    assert_eq!(m[1].streaming, "streaming");
    assert_eq!(m[1].replay_lag_ms, Some(1.5));
    assert_eq!(m[2].slot.as_ref().and_then(|s| s.retained_bytes), Some(96));
    assert_eq!(m[2].identity, "accepted");
    assert_eq!(m[2].agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(m[2].pod_ip.as_deref(), Some("10.244.0.12"));
    let table = status.to_table();
    assert!(
        table.starts_with(
            "cluster pgset  cluster id c0ffee  system identifier 7300000000000000001  PostgreSQL 18.1\n\
             master pgset-0 up 1h2m  ready 3/3  LSN 0/5000060  timeline 2\n"
        ),
        "{table}"
    );
    assert!(table.ends_with("healthy\n"), "{table}");
    let json: Value = serde_json::from_str(&status.to_json()).unwrap();
    assert_eq!(json["healthy"], true);
    assert_eq!(json["summary"]["cluster_id"], "c0ffee");
    assert_eq!(json["members"][1]["services"], json!(["pgset-replica"]));
    assert_eq!(json["members"][2]["slot"]["slot"], "pgset_2");
    let yaml = status.to_yaml();
    assert!(yaml.contains("cluster_id: c0ffee"), "{yaml}");
}

#[tokio::test]
async fn status_warns_of_a_gone_members_slot_a_wrong_timeline_and_a_foreign_data_directory() {
    let (client, mut handle) = mock_client();
    let spec = ClusterSpec {
        replicas: 3,
        ..ClusterSpec::default()
    };
    let refusal = "refusing to use /pgdata/pgset-2: it belongs to cluster other/pgset (cluster id d00d), not default/pgset (cluster id c0ffee); move it away or set postgres.adoptUnmarkedData";
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, statefulset(3, "OrderedReady")).await;
        let mut refused = pod(2, "Running", "");
        refused["status"]["conditions"][0]["status"] = json!("False");
        refused["status"]["containerStatuses"] = json!([{
            "name": "postgres", "ready": false, "restartCount": 4, "image": "postgres:18",
            "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 2, "message": refusal}}
        }]);
        let pods = pod_list(vec![
            pod(0, "Running", "master"),
            pod(1, "Running", "replica"),
            refused,
        ]);
        answer(&mut handle, 200, pods).await;
        answer(&mut handle, 404, not_found("leases", "pgset-leader")).await;
        answer(&mut handle, 200, record("c0ffee", "7300000000000000001")).await;
        answer(&mut handle, 200, slices("pgset-master", &[0])).await;
        answer(&mut handle, 200, slices("pgset-replica", &[1])).await;
        // pgset_5 is the slot of a member scaled away long ago: it holds 1 GiB of WAL.
        let master = master_agent(
            json!([standby("pgset-1")]),
            json!([
                slot("pgset_1", true, 0),
                slot("pgset_2", false, 4096),
                slot("pgset_5", false, 1 << 30)
            ]),
        );
        answer(&mut handle, 200, master).await;
        // pgset-1 still reports the old timeline.
        answer(
            &mut handle,
            200,
            replica_agent("pgset-1", 1, "7300000000000000001"),
        )
        .await;
        // pgset-2's pod is Running while its container crash-loops: its agent does not answer.
        answer(&mut handle, 503, json!({"kind": "Status", "code": 503})).await;
    });
    let status = ClusterStatus::gather(client, &spec.validated().unwrap())
        .await
        .unwrap();
    server.await.unwrap();
    assert!(!status.healthy);
    let w = &status.warnings;
    let has = |text: &str| w.iter().any(|x| x == text);
    assert!(
        has(
            "slot pgset_5 on pgset-0 retains 1.0 GiB of WAL for pgset-5, a member outside the set (3 wanted): scale back to 6 or drop the slot"
        ),
        "{w:?}"
    );
    assert!(has("pgset-1 is on timeline 1, the master on 2"), "{w:?}");
    assert!(has(&format!("pgset-2 stopped: {refusal}")), "{w:?}");
    assert!(has("pgset-2 is not streaming"), "{w:?}");
    // A member within the set keeps its slot: no warning for pgset_2.
    assert!(!w.iter().any(|x| x.contains("pgset_2")), "{w:?}");
    assert_eq!(status.members[2].identity, "refused");
    assert_eq!(status.members[2].services, Vec::<String>::new());
    let table = status.to_table();
    assert!(
        table.contains("warning: pgset-1 is on timeline 1, the master on 2"),
        "{table}"
    );
    assert!(table.ends_with("not healthy\n"), "{table}");
}

#[tokio::test]
async fn status_without_a_running_master_reads_no_streaming() {
    let (client, mut handle) = mock_client();
    let spec = ClusterSpec {
        replicas: 2,
        ..ClusterSpec::default()
    };
    let server = tokio::spawn(async move {
        let mut paths = Vec::new();
        paths.push(
            answer(&mut handle, 200, statefulset(2, "OrderedReady"))
                .await
                .path,
        );
        let pods = pod_list(vec![
            pod(0, "Pending", "master"),
            pod(1, "Running", "replica"),
        ]);
        paths.push(answer(&mut handle, 200, pods).await.path);
        paths.push(
            answer(&mut handle, 404, not_found("leases", "pgset-leader"))
                .await
                .path,
        );
        paths.push(
            answer(&mut handle, 404, not_found("configmaps", "pgset-record"))
                .await
                .path,
        );
        paths.push(
            answer(&mut handle, 200, slices("pgset-master", &[]))
                .await
                .path,
        );
        paths.push(
            answer(&mut handle, 200, slices("pgset-replica", &[]))
                .await
                .path,
        );
        // The running replica's agent, through the pod proxy: not ready, and why.
        let agent = json!({
            "member": "pgset-1", "agentPid": 7, "phase": "running", "activity": "postgres running",
            "ready": false, "reason": "the master does not answer and replay has not caught up",
            "postgres": {"inRecovery": true, "timeline": 1, "systemIdentifier": "7300000000000000001",
                         "receiveLsn": "0/3000148", "replayLsn": "0/3000000", "walReceiver": "waiting"}
        });
        paths.push(answer(&mut handle, 200, agent).await.path);
        paths
    });
    let status = ClusterStatus::gather(client, &spec.validated().unwrap())
        .await
        .unwrap();
    let paths = server.await.unwrap();
    assert_eq!(
        paths,
        [
            "/apis/apps/v1/namespaces/default/statefulsets/pgset",
            "/api/v1/namespaces/default/pods",
            LEASE,
            "/api/v1/namespaces/default/configmaps/pgset-record",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "/api/v1/namespaces/default/pods/pgset-1:8008/proxy/status"
        ],
        "no exec while the master is not running; only a running member's agent is asked"
    );
    let table = status.to_table();
    assert!(
        table.contains("pgset-1: identity accepted, system 7300000000000000001, timeline 1, received 0/3000148, replayed 0/3000000, WAL receiver waiting, not ready: the master does not answer and replay has not caught up"),
        "{table}"
    );
    assert!(
        status.problems().iter().any(|p| p
            == "pgset-1 is not ready: the master does not answer and replay has not caught up"),
        "{:?}",
        status.problems()
    );
    assert_eq!(status.desired, 2);
    assert_eq!(status.ready, 1);
    assert_eq!(status.summary.cluster_id, None, "no record: no cluster id");
    assert_eq!(status.summary.postgres_version, None);
    assert_eq!(
        status.replication_error.as_deref(),
        Some("pgset-0 is not running")
    );
    assert!(status.members.iter().all(|m| m.streaming == "unknown"));
    assert!(
        status
            .to_table()
            .contains("streaming unknown: pgset-0 is not running")
    );
}

#[test]
fn check_names_are_the_json_contract() {
    assert_eq!(
        names::ALL,
        [
            "pods-ready-in-order",
            "dns-and-endpoints",
            "role-services",
            "one-master",
            "streaming",
            "replica-read-only",
            "replicated-write",
            "storage",
            "member-isolation",
            "tls",
            "scale-out",
            "master-recovery"
        ]
    );
}

#[tokio::test]
async fn scale_test_needs_the_next_members_volume_before_scaling() {
    let (client, mut handle) = mock_client();
    let mut spec = ClusterSpec {
        replicas: 2,
        ..ClusterSpec::default()
    };
    spec.storage.mode = pgset_spec::StorageMode::Templates;
    let v = Verifier::new(
        client,
        spec.clone().validated().unwrap(),
        Options::new(&spec),
    );
    let server = tokio::spawn(async move {
        let pods = pod_list(vec![
            pod(0, "Running", "master"),
            pod(1, "Running", "replica"),
        ]);
        let list = answer(&mut handle, 200, pods).await;
        let pv = answer(
            &mut handle,
            404,
            not_found("persistentvolumes", "pgset-default-2"),
        )
        .await;
        // Nothing else: no scale request may follow.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), handle.next_request())
                .await
                .is_err(),
            "a request after the missing volume"
        );
        (list.path, pv.path)
    });
    let finding = v.check_scale_out().await.unwrap();
    let (list, pv) = server.await.unwrap();
    assert_eq!(list, "/api/v1/namespaces/default/pods");
    assert_eq!(pv, "/api/v1/persistentvolumes/pgset-default-2");
    assert_eq!(finding.verdict, Verdict::Fail);
    assert_eq!(
        finding.message,
        "no PersistentVolume pgset-default-2 for pgset-2: create the volumes for 3 replicas first"
    );
}

/// A StatefulSet at `replicas` with the given managedFields and resourceVersion.
fn owned_statefulset(replicas: i32, rv: &str, managed: Value) -> Value {
    let mut sts = statefulset(replicas, "OrderedReady");
    sts["metadata"]["resourceVersion"] = json!(rv);
    sts["metadata"]["managedFields"] = managed;
    sts
}

fn field_entry(manager: &str, operation: &str, subresource: Option<&str>, fields: Value) -> Value {
    let mut entry = json!({"manager": manager, "operation": operation,
           "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "fieldsV1": fields,
           "time": "2026-01-01T00:00:00Z"});
    if let Some(s) = subresource {
        entry["subresource"] = json!(s);
    }
    entry
}

#[tokio::test]
async fn after_the_scale_test_spec_replicas_goes_back_to_its_owner() {
    let applied = field_entry(
        "pgset",
        "Apply",
        None,
        json!({"f:spec": {"f:replicas": {}, "f:serviceName": {}}}),
    );
    let status_now = field_entry(
        "kube-controller-manager",
        "Update",
        Some("status"),
        json!({"f:status": {"f:replicas": {}, "f:availableReplicas": {}}}),
    );
    let before = vec![
        serde_json::from_value(applied.clone()).unwrap(),
        serde_json::from_value(field_entry(
            "kube-controller-manager",
            "Update",
            Some("status"),
            json!({"f:status": {"f:replicas": {}}}),
        ))
        .unwrap(),
    ];
    let after_scale = json!([
        field_entry(
            "pgset",
            "Apply",
            None,
            json!({"f:spec": {"f:serviceName": {}}})
        ),
        status_now.clone(),
        field_entry(
            "pgset",
            "Update",
            Some("scale"),
            json!({"f:spec": {"f:replicas": {}}})
        ),
    ]);
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        let get = answer(&mut handle, 200, owned_statefulset(3, "42", after_scale)).await;
        let patch = answer(&mut handle, 200, statefulset(3, "OrderedReady")).await;
        (get, patch)
    });
    v.restore_managed_fields(3, &before).await.unwrap();
    let (get, patch) = server.await.unwrap();
    assert_eq!(get.method, Method::GET);
    assert_eq!(patch.method, Method::PATCH);
    assert_eq!(
        patch.path,
        "/apis/apps/v1/namespaces/default/statefulsets/pgset"
    );
    assert_eq!(
        patch.headers["content-type"],
        "application/merge-patch+json"
    );
    // The owners found before, the controller's current status entry, and the
    // resourceVersion read as a precondition.
    assert_eq!(
        patch.body,
        json!({"metadata": {"resourceVersion": "42", "managedFields": [applied, status_now]}})
    );

    // Nothing moved (or the StatefulSet is not back at its size): no write.
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let unchanged = json!([applied_entry_again(), status_entry_again()]);
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, owned_statefulset(3, "43", unchanged)).await;
        answer(&mut handle, 200, owned_statefulset(4, "44", json!([]))).await;
        handle
    });
    v.restore_managed_fields(3, &before).await.unwrap();
    v.restore_managed_fields(3, &before).await.unwrap();
    let mut handle = server.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request())
            .await
            .is_err(),
        "a write was sent"
    );
}

fn applied_entry_again() -> Value {
    field_entry(
        "pgset",
        "Apply",
        None,
        json!({"f:spec": {"f:replicas": {}, "f:serviceName": {}}}),
    )
}

fn status_entry_again() -> Value {
    field_entry(
        "kube-controller-manager",
        "Update",
        Some("status"),
        json!({"f:status": {"f:replicas": {}, "f:availableReplicas": {}}}),
    )
}

/// `name` at resource version `version`, Ready or not, as a watch event of type `kind`.
fn pod_event(kind: &str, ordinal: i32, phase: &str, version: &str) -> Value {
    let mut p = pod(ordinal, phase, "replica");
    p["metadata"]["resourceVersion"] = json!(version);
    json!({"type": kind, "object": p})
}

#[tokio::test]
async fn a_member_is_awaited_by_watching_it_until_ready_then_gone() {
    let (client, mut handle) = mock_client();
    let v = std::sync::Arc::new(verifier(client));
    let waiter = v.clone();
    let ready = tokio::spawn(async move { waiter.wait_ready("pgset-3", None).await });
    let mut pending = pod(3, "Pending", "replica");
    pending["metadata"]["resourceVersion"] = json!("7");
    let list = answer(
        &mut handle,
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": [pending]}),
    )
    .await;
    assert_eq!(
        (list.method, list.path.as_str(), list.query.as_str()),
        (
            Method::GET,
            "/api/v1/namespaces/default/pods",
            "&fieldSelector=metadata.name%3Dpgset-3&limit=500"
        )
    );
    // The watch resumes from the listing's version and reports the pod Ready.
    let watch = answer(&mut handle, 200, pod_event("MODIFIED", 3, "Running", "8")).await;
    assert_eq!(
        watch.query,
        "&watch=true&timeoutSeconds=290&fieldSelector=metadata.name%3Dpgset-3&allowWatchBookmarks=true&resourceVersion=7"
    );
    let member = ready.await.unwrap().unwrap();
    assert!(member.ready && member.name == "pgset-3", "{member:?}");

    let waiter = v.clone();
    let gone = tokio::spawn(async move { waiter.wait_gone("pgset-3").await });
    let mut running = pod(3, "Running", "replica");
    running["metadata"]["resourceVersion"] = json!("8");
    answer(
        &mut handle,
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "8"}, "items": [running]}),
    )
    .await;
    let watch = answer(&mut handle, 200, pod_event("DELETED", 3, "Running", "9")).await;
    assert!(
        watch.query.ends_with("&resourceVersion=8"),
        "{}",
        watch.query
    );
    gone.await.unwrap().unwrap();
}

/// A watch whose version the API server no longer has (410 Gone, after a long wait) is listed
/// again: the wait goes on and ends when the new listing shows the member Ready.
#[tokio::test]
async fn an_expired_watch_lists_again_and_the_member_is_still_awaited() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let ready = tokio::spawn(async move { v.wait_ready("pgset-3", None).await });
    let mut pending = pod(3, "Pending", "replica");
    pending["metadata"]["resourceVersion"] = json!("7");
    let first = answer(
        &mut handle,
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": [pending]}),
    )
    .await;
    let expired = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 7 (12)", "reason": "Expired", "code": 410}});
    let watch = answer(&mut handle, 200, expired).await;
    assert!(
        watch.query.contains("&watch=true") && watch.query.ends_with("&resourceVersion=7"),
        "{}",
        watch.query
    );
    // A fresh LIST, exactly as the first one (no resource version to resume from).
    let mut running = pod(3, "Running", "replica");
    running["metadata"]["resourceVersion"] = json!("12");
    let relist = tokio::time::timeout(
        Duration::from_secs(5),
        answer(
            &mut handle,
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "12"}, "items": [running]}),
        ),
    )
    .await
    .expect("the expired watch is followed by a new listing");
    assert_eq!(
        (relist.method, relist.path.as_str(), relist.query.as_str()),
        (first.method, first.path.as_str(), first.query.as_str())
    );
    let member = ready
        .await
        .unwrap()
        .expect("a 410 is not an error of the wait");
    assert!(member.ready && member.name == "pgset-3", "{member:?}");
}

#[tokio::test(start_paused = true)]
async fn a_member_that_never_becomes_ready_times_out_naming_it() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let ready = tokio::spawn(async move { v.wait_ready("pgset-3", None).await });
    answer(
        &mut handle,
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": []}),
    )
    .await;
    // The watch is left open with nothing to report: the 5 s timeout ends the wait.
    let (_watch, _never_answered) = handle.next_request().await.expect("a watch");
    let err = ready.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { what, .. } if what == "pod pgset-3 Ready"),
        "{err}"
    );
}

/// Answers one `status` reading of a healthy 3-member cluster whose master has `slots`.
async fn answer_status(handle: &mut ApiHandle, slots: Value) -> Vec<String> {
    let mut paths = Vec::new();
    let mut seen = |s: Seen| paths.push(format!("{} {}", s.method, s.path));
    seen(answer(handle, 200, statefulset(3, "OrderedReady")).await);
    seen(answer(handle, 200, healthy_pods()).await);
    seen(answer(handle, 404, not_found("leases", "pgset-leader")).await);
    seen(answer(handle, 200, record("c0ffee", "7300000000000000001")).await);
    seen(answer(handle, 200, slices("pgset-master", &[0])).await);
    seen(answer(handle, 200, slices("pgset-replica", &[1, 2])).await);
    let master = master_agent(json!([standby("pgset-1"), standby("pgset-2")]), slots);
    seen(answer(handle, 200, master).await);
    for p in ["pgset-1", "pgset-2"] {
        seen(answer(handle, 200, replica_agent(p, 2, "7300000000000000001")).await);
    }
    paths
}

#[tokio::test(start_paused = true)]
async fn after_the_scale_test_the_removed_members_slot_is_awaited_until_the_master_dropped_it() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        // Right after the scale-down the master still has pgset_3 (inactive): status warns.
        let first = answer_status(
            &mut handle,
            json!([
                slot("pgset_1", true, 0),
                slot("pgset_2", true, 0),
                slot("pgset_3", false, 1 << 20)
            ]),
        )
        .await;
        // Its agent dropped it: healthy as before.
        let second = answer_status(
            &mut handle,
            json!([slot("pgset_1", true, 0), slot("pgset_2", true, 0)]),
        )
        .await;
        (first, second, handle)
    });
    let started = tokio::time::Instant::now();
    let done = v.wait_slot_dropped("pgset-3", &[]).await;
    let (first, second, mut handle) = server.await.unwrap();
    assert_eq!(done, Ok("slot pgset_3 dropped".to_string()));
    assert_eq!(started.elapsed(), pgset_verify::live::SLOT_POLL);
    assert_eq!(first, second, "the same reading twice");
    assert_eq!(
        first,
        [
            "GET /apis/apps/v1/namespaces/default/statefulsets/pgset",
            "GET /api/v1/namespaces/default/pods",
            "GET /apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader",
            "GET /api/v1/namespaces/default/configmaps/pgset-record",
            "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "GET /api/v1/namespaces/default/pods/pgset-0:8008/proxy/status",
            "GET /api/v1/namespaces/default/pods/pgset-1:8008/proxy/status",
            "GET /api/v1/namespaces/default/pods/pgset-2:8008/proxy/status",
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request())
            .await
            .is_err(),
        "nothing is read once the slot is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_that_stays_after_the_scale_test_fails_it_naming_the_slot() {
    let (client, mut handle) = mock_client();
    // The verifier waits at most 5 s: readings at 0, 2 and 4 s.
    let v = verifier(client);
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            answer_status(
                &mut handle,
                json!([
                    slot("pgset_1", true, 0),
                    slot("pgset_2", true, 0),
                    slot("pgset_3", false, 1 << 20)
                ]),
            )
            .await;
        }
        handle
    });
    let e = v.wait_slot_dropped("pgset-3", &[]).await.unwrap_err();
    let mut handle = server.await.unwrap();
    assert_eq!(
        e,
        "slot pgset_3 is still on pgset-0 4 s after pgset-3 was removed (its master's agent drops a gone member's slot on its own)"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request())
            .await
            .is_err(),
        "no reading after the timeout"
    );

    // The slot gone but a new warning (a replica no longer streaming): not as healthy as before.
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            answer(&mut handle, 200, statefulset(3, "OrderedReady")).await;
            answer(&mut handle, 200, healthy_pods()).await;
            answer(&mut handle, 404, not_found("leases", "pgset-leader")).await;
            answer(&mut handle, 200, record("c0ffee", "7300000000000000001")).await;
            answer(&mut handle, 200, slices("pgset-master", &[0])).await;
            answer(&mut handle, 200, slices("pgset-replica", &[1, 2])).await;
            let master = master_agent(
                json!([standby("pgset-1")]),
                json!([slot("pgset_1", true, 0), slot("pgset_2", false, 0)]),
            );
            answer(&mut handle, 200, master).await;
            for p in ["pgset-1", "pgset-2"] {
                answer(&mut handle, 200, replica_agent(p, 2, "7300000000000000001")).await;
            }
        }
    });
    let e = v.wait_slot_dropped("pgset-3", &[]).await.unwrap_err();
    server.await.unwrap();
    assert!(
        e.starts_with(
            "slot pgset_3 dropped, but status warns of what it did not before: pgset-2 is not streaming"
        ),
        "{e}"
    );
    // What status warned of before the scale test is not held against it.
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, statefulset(3, "OrderedReady")).await;
        answer(&mut handle, 200, healthy_pods()).await;
        answer(&mut handle, 404, not_found("leases", "pgset-leader")).await;
        answer(&mut handle, 200, record("c0ffee", "7300000000000000001")).await;
        answer(&mut handle, 200, slices("pgset-master", &[0])).await;
        answer(&mut handle, 200, slices("pgset-replica", &[1, 2])).await;
        let master = master_agent(
            json!([standby("pgset-1")]),
            json!([slot("pgset_1", true, 0), slot("pgset_2", false, 0)]),
        );
        answer(&mut handle, 200, master).await;
        for p in ["pgset-1", "pgset-2"] {
            answer(&mut handle, 200, replica_agent(p, 2, "7300000000000000001")).await;
        }
    });
    let done = v
        .wait_slot_dropped("pgset-3", &["pgset-2 is not streaming".to_string()])
        .await;
    server.await.unwrap();
    assert_eq!(done, Ok("slot pgset_3 dropped".to_string()));
}

/// The leader Lease held by `pgset-<master>` (pod UID `uid-<master>`), renewed `ago` seconds
/// ago with a 15 s duration.
fn leader_lease(master: i32, ago: i64) -> Value {
    let renewed =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(ago);
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "pgset-leader", "namespace": "default", "resourceVersion": "5",
                        "annotations": {"pgset.io/leader-member": format!("pgset-{master}"),
                                        "pgset.io/leader-timeline": "2"}},
           "spec": {"holderIdentity": format!("uid-{master}"), "leaseDurationSeconds": 15,
                    "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}})
}

/// Three Running members whose master is `pgset-1` by its label.
fn led_by_one() -> Value {
    pod_list(vec![
        pod(0, "Running", "replica"),
        pod(1, "Running", "master"),
        pod(2, "Running", "replica"),
    ])
}

#[tokio::test]
async fn status_of_a_cluster_whose_master_is_pgset_1_follows_the_leader_lease() {
    let (client, mut handle) = mock_client();
    let spec = ClusterSpec {
        replicas: 3,
        ..ClusterSpec::default()
    };
    let server = tokio::spawn(async move {
        let mut paths = Vec::new();
        let mut seen = |s: Seen| paths.push(format!("{} {}", s.method, s.path));
        seen(answer(&mut handle, 200, statefulset(3, "OrderedReady")).await);
        seen(answer(&mut handle, 200, led_by_one()).await);
        seen(answer(&mut handle, 200, leader_lease(1, 3)).await);
        seen(answer(&mut handle, 200, record("c0ffee", "7300000000000000001")).await);
        seen(answer(&mut handle, 200, slices("pgset-master", &[1])).await);
        seen(answer(&mut handle, 200, slices("pgset-replica", &[0, 2])).await);
        seen(
            answer(
                &mut handle,
                200,
                replica_agent("pgset-0", 2, "7300000000000000001"),
            )
            .await,
        );
        let mut master = master_agent(
            json!([standby("pgset-0"), standby("pgset-2")]),
            json!([slot("pgset_0", true, 16), slot("pgset_2", true, 0)]),
        );
        master["member"] = json!("pgset-1");
        seen(answer(&mut handle, 200, master).await);
        seen(
            answer(
                &mut handle,
                200,
                replica_agent("pgset-2", 2, "7300000000000000001"),
            )
            .await,
        );
        paths
    });
    let status = ClusterStatus::gather(client, &spec.validated().unwrap())
        .await
        .unwrap();
    let paths = server.await.unwrap();
    assert!(
        !paths.iter().any(|p| p.contains("/exec")),
        "streaming comes from pgset-1's agent: {paths:?}"
    );
    assert_eq!(status.summary.master, "pgset-1");
    assert_eq!(status.summary.master_uptime_s, Some(3723.0));
    assert!(status.healthy, "{:?}", status.warnings);
    let m = &status.members;
    assert_eq!(m[1].streaming, "primary (2 walsender(s))");
    assert_eq!(m[0].streaming, "streaming");
    assert_eq!(m[0].slot.as_ref().and_then(|s| s.retained_bytes), Some(16));
    assert_eq!(m[1].services, ["pgset-master"]);
    let table = status.to_table();
    let leader_line = table.lines().nth(2).unwrap();
    assert!(
        leader_line.starts_with(
            "leader record pgset-leader held by pgset-1 (uid-1), timeline 2, renewed "
        ) && leader_line.ends_with(" s ago"),
        "{table}"
    );
    assert!(table.contains("master pgset-1 up 1h2m"), "{table}");
    let json: Value = serde_json::from_str(&status.to_json()).unwrap();
    assert_eq!(json["master"]["master"], "pgset-1");
    assert_eq!(json["master"]["source"], "leader-lease");
    assert_eq!(json["master"]["leader"]["member"], "pgset-1");
    assert_eq!(json["master"]["leader"]["timeline"], 2);
    assert!(json["leader_renewed_s_ago"].as_i64().is_some(), "{json}");
    assert!(status.to_yaml().contains("member: pgset-1"));
}

#[tokio::test]
async fn status_warns_when_the_label_disagrees_with_the_lease_or_the_lease_is_not_renewed() {
    let (client, mut handle) = mock_client();
    let spec = ClusterSpec {
        replicas: 3,
        ..ClusterSpec::default()
    };
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, statefulset(3, "OrderedReady")).await;
        // The label is still on pgset-0; the Lease names pgset-1 and was last renewed 40 s ago.
        answer(&mut handle, 200, healthy_pods()).await;
        answer(&mut handle, 200, leader_lease(1, 40)).await;
        answer(&mut handle, 200, record("c0ffee", "7300000000000000001")).await;
        answer(&mut handle, 200, slices("pgset-master", &[0])).await;
        answer(&mut handle, 200, slices("pgset-replica", &[1, 2])).await;
        for _ in 0..3 {
            answer(&mut handle, 503, json!({"kind": "Status", "code": 503})).await;
        }
        // No agent answered: streaming is read on the Lease's master, pgset-1.
        answer(&mut handle, 403, json!({"kind": "Status", "code": 403})).await
    });
    let status = ClusterStatus::gather(client, &spec.validated().unwrap())
        .await
        .unwrap();
    let exec = server.await.unwrap();
    assert_eq!(exec.path, "/api/v1/namespaces/default/pods/pgset-1/exec");
    assert_eq!(status.summary.master, "pgset-1", "the Lease decides");
    let w = &status.warnings;
    assert!(
        w.contains(
            &"the leader record pgset-leader names pgset-1, but the label role=master is on pgset-0"
                .to_string()
        ),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|x| x.starts_with("leader record pgset-leader not renewed for ")),
        "{w:?}"
    );
    assert!(!status.healthy);
}

#[tokio::test]
async fn role_services_expect_the_leases_master_pgset_1() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, led_by_one()).await;
        answer(&mut handle, 200, leader_lease(1, 1)).await;
        answer(&mut handle, 200, service("pgset-master", "master")).await;
        answer(&mut handle, 200, service("pgset-replica", "replica")).await;
        answer(&mut handle, 200, slices("pgset-master", &[1])).await;
        answer(&mut handle, 200, slices("pgset-replica", &[0, 2])).await;
    });
    let finding = v.check_role_services().await;
    server.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Pass, "{}", finding.message);
    assert_eq!(
        finding.message,
        "pgset-master selects pgset-1; pgset-replica selects 2 replica(s)"
    );
    // The same Services, but the master Service still routes to pgset-0.
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, led_by_one()).await;
        answer(&mut handle, 200, leader_lease(1, 1)).await;
        answer(&mut handle, 200, service("pgset-master", "master")).await;
        answer(&mut handle, 200, service("pgset-replica", "replica")).await;
        answer(&mut handle, 200, slices("pgset-master", &[0])).await;
        answer(&mut handle, 200, slices("pgset-replica", &[1, 2])).await;
    });
    let finding = v.check_role_services().await;
    server.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Fail);
    assert!(
        finding.message.contains(
            r#"Service pgset-master has ready endpoints ["pgset-0"], expected ["pgset-1"]"#
        ),
        "{}",
        finding.message
    );
}

#[tokio::test]
async fn one_master_passes_when_lease_label_and_service_agree() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        let mut paths = Vec::new();
        paths.push(answer(&mut handle, 200, led_by_one()).await.path);
        paths.push(answer(&mut handle, 200, leader_lease(1, 1)).await.path);
        paths.push(
            answer(&mut handle, 200, slices("pgset-master", &[1]))
                .await
                .path,
        );
        paths
    });
    let finding = v.check_one_master().await;
    let paths = server.await.unwrap();
    assert_eq!(paths[1], LEASE);
    assert_eq!(finding.verdict, Verdict::Pass, "{}", finding.message);
    assert_eq!(
        finding.message,
        "pgset-1 is the master: the leader record pgset-leader (timeline 2), the label role=master and Service pgset-master agree"
    );
}

#[tokio::test]
async fn one_master_fails_on_two_labels_a_stale_route_or_a_released_lease() {
    // Two pods labelled master, the Service still on pgset-0.
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        let pods = pod_list(vec![
            pod(0, "Running", "master"),
            pod(1, "Running", "master"),
            pod(2, "Running", "replica"),
        ]);
        answer(&mut handle, 200, pods).await;
        answer(&mut handle, 200, leader_lease(1, 1)).await;
        answer(&mut handle, 200, slices("pgset-master", &[0])).await;
    });
    let finding = v.check_one_master().await;
    server.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Fail);
    assert!(
        finding
            .message
            .contains("2 pods are labelled role=master: pgset-0, pgset-1"),
        "{}",
        finding.message
    );
    assert!(
        finding
            .message
            .contains(r#"Service pgset-master routes to ["pgset-0"], not to the master pgset-1"#),
        "{}",
        finding.message
    );
    // A released Lease: no master at all.
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, healthy_pods()).await;
        let mut released = leader_lease(0, 1);
        released["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("pgset.io/leader-member");
        released["spec"]["holderIdentity"] = Value::Null;
        answer(&mut handle, 200, released).await;
        answer(&mut handle, 200, slices("pgset-master", &[0])).await;
    });
    let finding = v.check_one_master().await;
    server.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Fail);
    assert!(
        finding.message.contains(
            "the leader record pgset-leader is released: no member holds the master role"
        ),
        "{}",
        finding.message
    );
    // No Lease (an older cluster): ordinal 0, its label and its Service agree.
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, healthy_pods()).await;
        answer(&mut handle, 404, not_found("leases", "pgset-leader")).await;
        answer(&mut handle, 200, slices("pgset-master", &[0])).await;
    });
    let finding = v.check_one_master().await;
    server.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Pass, "{}", finding.message);
    assert!(
        finding.message.contains("ordinal 0 (no leader record)"),
        "{}",
        finding.message
    );
}

#[tokio::test]
async fn streaming_is_asked_of_the_leases_master() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let server = tokio::spawn(async move {
        answer(&mut handle, 200, led_by_one()).await;
        answer(&mut handle, 200, leader_lease(1, 1)).await;
        answer(&mut handle, 403, json!({"kind": "Status", "code": 403})).await
    });
    let finding = v.check_streaming_until(Duration::ZERO).await;
    let exec = server.await.unwrap();
    assert_eq!(exec.path, "/api/v1/namespaces/default/pods/pgset-1/exec");
    assert_eq!(finding.verdict, Verdict::Fail);
    assert!(finding.message.contains("pgset-1"), "{}", finding.message);
}

const ADMISSION_V1: &str = "/apis/admissionregistration.k8s.io/v1";
const POLICY: &str =
    "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/pgset-default-pgset-members";
const BINDING: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/pgset-default-pgset-members";

fn admission_resources(policies: bool) -> Value {
    let mut resources = vec![
        json!({"name": "validatingwebhookconfigurations", "singularName": "",
        "namespaced": false, "kind": "ValidatingWebhookConfiguration", "verbs": ["get"]}),
    ];
    if policies {
        resources.push(
            json!({"name": "validatingadmissionpolicies", "singularName": "",
            "namespaced": false, "kind": "ValidatingAdmissionPolicy", "verbs": ["get"]}),
        );
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1",
           "groupVersion": "admissionregistration.k8s.io/v1", "resources": resources})
}

/// `object` as the API server returns it: with what it adds (defaults, uid, status).
fn as_stored<T: serde::Serialize>(object: &T) -> Value {
    let mut v = serde_json::to_value(object).unwrap();
    v["metadata"]["uid"] = json!("3f1c");
    v["metadata"]["resourceVersion"] = json!("41");
    if v["kind"] == "ValidatingAdmissionPolicy" {
        v["spec"]["matchConstraints"]["matchPolicy"] = json!("Equivalent");
        v["spec"]["matchConstraints"]["namespaceSelector"] = json!({});
        v["spec"]["matchConstraints"]["objectSelector"] = json!({});
        v["status"] = json!({"observedGeneration": 1, "typeChecking": {}});
    } else {
        v["spec"]["matchResources"]["matchPolicy"] = json!("Equivalent");
        v["spec"]["matchResources"]["objectSelector"] = json!({});
    }
    v
}

#[tokio::test]
async fn member_isolation_reads_the_policy_and_binding_and_passes_when_they_are_as_rendered() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let spec = v.spec().clone();
    let api = tokio::spawn(async move {
        let mut seen = Vec::new();
        let discovery = answer(&mut handle, 200, admission_resources(true)).await;
        seen.push(format!("{} {}", discovery.method, discovery.path));
        let policy = as_stored(&pgset_deploy::isolation::policy(&spec));
        let p = answer(&mut handle, 200, policy).await;
        seen.push(format!("{} {}", p.method, p.path));
        let mut binding = as_stored(&pgset_deploy::isolation::binding(&spec));
        binding["spec"]["validationActions"] = json!(["Warn"]);
        let b = answer(&mut handle, 200, binding).await;
        seen.push(format!("{} {}", b.method, b.path));
        seen
    });
    let (finding, warning) = v.check_member_isolation().await;
    let seen = api.await.unwrap();
    assert_eq!(
        seen,
        [
            format!("GET {ADMISSION_V1}"),
            format!("GET {POLICY}"),
            format!("GET {BINDING}")
        ]
    );
    assert_eq!(warning, None);
    assert_eq!(finding.verdict, Verdict::Fail, "{}", finding.message);
    assert!(
        finding.message.contains(
            "ValidatingAdmissionPolicyBinding pgset-default-pgset-members: .spec.validationActions[0] is \"Warn\", pgset renders \"Deny\""
        ) && finding.message.contains("deploy` to apply them as rendered"),
        "{}",
        finding.message
    );

    // As rendered (the server's defaults aside): pass.
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let spec = v.spec().clone();
    let api = tokio::spawn(async move {
        answer(&mut handle, 200, admission_resources(true)).await;
        answer(
            &mut handle,
            200,
            as_stored(&pgset_deploy::isolation::policy(&spec)),
        )
        .await;
        answer(
            &mut handle,
            200,
            as_stored(&pgset_deploy::isolation::binding(&spec)),
        )
        .await;
    });
    let (finding, warning) = v.check_member_isolation().await;
    api.await.unwrap();
    assert_eq!(finding.verdict, Verdict::Pass, "{}", finding.message);
    assert_eq!(warning, None);
}

#[tokio::test]
async fn member_isolation_fails_naming_a_missing_binding_and_the_command_that_makes_it() {
    let (client, mut handle) = mock_client();
    let v = verifier(client);
    let spec = v.spec().clone();
    let api = tokio::spawn(async move {
        answer(&mut handle, 200, admission_resources(true)).await;
        answer(
            &mut handle,
            200,
            as_stored(&pgset_deploy::isolation::policy(&spec)),
        )
        .await;
        let b = answer(
            &mut handle,
            404,
            not_found(
                "validatingadmissionpolicybindings",
                "pgset-default-pgset-members",
            ),
        )
        .await;
        b.path
    });
    let (finding, _) = v.check_member_isolation().await;
    assert_eq!(api.await.unwrap(), BINDING);
    assert_eq!(finding.verdict, Verdict::Fail);
    assert!(
        finding
            .message
            .starts_with("ValidatingAdmissionPolicyBinding pgset-default-pgset-members is missing")
            && finding.message.contains("deploy`"),
        "{}",
        finding.message
    );
}

#[tokio::test]
async fn member_isolation_on_a_cluster_without_admission_policies_is_skipped_with_a_warning() {
    for discovery in [
        (
            404,
            not_found("groupversion", "admissionregistration.k8s.io/v1"),
        ),
        (200, admission_resources(false)),
    ] {
        let (client, mut handle) = mock_client();
        let v = verifier(client);
        let api = tokio::spawn(async move {
            let seen = answer(&mut handle, discovery.0, discovery.1).await;
            // Nothing else is asked: the policy is not read where it cannot exist.
            let more = tokio::time::timeout(Duration::from_millis(100), handle.next_request())
                .await
                .is_ok();
            (seen.path, more)
        });
        let (finding, warning) = v.check_member_isolation().await;
        let (path, more) = api.await.unwrap();
        assert_eq!(path, ADMISSION_V1);
        assert!(!more, "one discovery request only");
        assert_eq!(finding.verdict, Verdict::Skipped);
        assert!(
            finding
                .message
                .starts_with("member isolation is not enforced on this cluster"),
            "{}",
            finding.message
        );
        assert_eq!(warning.as_deref(), Some(finding.message.as_str()));
    }
}
