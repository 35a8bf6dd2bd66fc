//! The agent's API calls against a scripted API server (tower-test): the exact method, path,
//! field manager and body of the role label, the pod-existence check, the 403 explanation, and
//! the phase writer's patches (a base backup's readings no more often than its interval).

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use pgset_agent::kube_api::{PodApi, RecordData};
use serde_json::{Value, json};

type Seen = Arc<Mutex<Vec<(String, String, String, Value)>>>;

fn mock(status: u16, answer: Value) -> (Client, Seen) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            record.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.path().to_string(),
                parts.uri.query().unwrap_or_default().to_string(),
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ));
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "db"), seen)
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "db", "labels": {"role": "master"}}})
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

#[tokio::test]
async fn labelling_is_a_server_side_apply_of_the_role_label_only() {
    let (client, seen) = mock(200, pod("pgset-0"));
    PodApi::with_client(client, "db", "pgset")
        .label_role("pgset-0", "master")
        .await
        .unwrap();
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (method, path, query, body) = &calls[0];
    assert_eq!(method, "PATCH");
    assert_eq!(path, "/api/v1/namespaces/db/pods/pgset-0");
    assert!(
        query.contains("fieldManager=pgset") && query.contains("force=true"),
        "{query}"
    );
    assert_eq!(
        body,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pgset-0", "labels": {"role": "master"}}})
    );
}

/// A member `pod` of cluster `pgset` in namespace `db`, its role taken from the record as `role`.
fn member(pod: &str, role: pgset_agent::settings::Role) -> pgset_agent::settings::Settings {
    use pgset_spec::contract::env;
    let m = std::collections::HashMap::from([
        (env::MODE, "kubernetes".to_string()),
        (env::NAMESPACE, "db".to_string()),
        (env::CLUSTER, "pgset".to_string()),
        (env::POD_NAME, pod.to_string()),
        (env::DATA_ROOT, "/data".to_string()),
        (env::MASTER_HOST, "pgset-master".to_string()),
        (env::MASTER_PORT, "5432".to_string()),
        (env::PORT, "5432".to_string()),
        (env::SOCKET_DIR, "/run/pg".to_string()),
        (env::SECRET_DIR, "/secret".to_string()),
    ]);
    let mut s = pgset_agent::settings::Settings::from_lookup(|k| m.get(k).cloned()).unwrap();
    s.role = role;
    s
}

#[tokio::test]
async fn a_replica_labels_its_pod_replica_at_start_even_a_former_master() {
    use pgset_agent::settings::Role;
    // Ordinal 0, the usual master, starting as the replica of a newer holder.
    let (client, seen) = mock(200, pod("pgset-0"));
    let api = PodApi::with_client(client, "db", "pgset");
    let labelled = pgset_agent::role::label_at_start(&api, &member("pgset-0", Role::Replica))
        .await
        .unwrap();
    assert!(labelled);
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (method, path, query, body) = &calls[0];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("PATCH", "/api/v1/namespaces/db/pods/pgset-0")
    );
    assert!(query.contains("fieldManager=pgset"), "{query}");
    assert_eq!(body["metadata"]["labels"], json!({"role": "replica"}));
}

#[tokio::test]
async fn a_master_is_not_labelled_at_start_only_once_it_serves() {
    use pgset_agent::settings::Role;
    let (client, seen) = mock(200, pod("pgset-1"));
    let api = PodApi::with_client(client, "db", "pgset");
    let labelled = pgset_agent::role::label_at_start(&api, &member("pgset-1", Role::Master))
        .await
        .unwrap();
    assert!(!labelled);
    assert!(seen.lock().unwrap().is_empty(), "no request at all");
}

#[tokio::test]
async fn a_forbidden_label_names_the_missing_verb_and_the_role() {
    let (client, _) = mock(403, status(403, "Forbidden"));
    let e = PodApi::with_client(client, "db", "pgset")
        .label_role("pgset-1", "replica")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`patch` pods") && e.contains("Role `pgset-agent`") && e.contains("`pgset-sa`"),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_pod_is_gone_and_a_present_one_exists() {
    let (client, seen) = mock(404, status(404, "NotFound"));
    assert!(
        !PodApi::with_client(client, "db", "pgset")
            .pod_exists("pgset-2")
            .await
            .unwrap()
    );
    assert_eq!(
        seen.lock().unwrap()[0].1,
        "/api/v1/namespaces/db/pods/pgset-2"
    );
    let (client, _) = mock(200, pod("pgset-1"));
    assert!(
        PodApi::with_client(client, "db", "pgset")
            .pod_exists("pgset-1")
            .await
            .unwrap()
    );
    let (client, _) = mock(403, status(403, "Forbidden"));
    let e = PodApi::with_client(client, "db", "pgset")
        .pod_exists("pgset-1")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`get` pods"), "{e}");
}

#[tokio::test]
async fn the_cluster_record_is_read_and_written_on_its_configmap_only() {
    let (client, seen) = mock(
        200,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "pgset-record", "namespace": "db"},
               "data": {"state": "data", "systemIdentifier": "7300000000000000001", "clusterId": "c1",
                        "reinitReplaced": "7200000000000000001"}}),
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let record = api.cluster_record().await.unwrap().expect("a record");
    assert_eq!(record.data(), RecordData::Data("7300000000000000001"));
    assert_eq!(record.cluster_id, "c1");
    assert_eq!(
        record.reinit_replaced.as_deref(),
        Some("7200000000000000001")
    );
    assert_eq!(record.reinit_system_identifier, None);
    assert!(!record.deleting);
    api.write_cluster_record(&[
        ("systemIdentifier", Some("7300000000000000001")),
        ("reinitSystemIdentifier", None),
    ])
    .await
    .unwrap();
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].0.as_str(), calls[0].1.as_str()),
        ("GET", "/api/v1/namespaces/db/configmaps/pgset-record")
    );
    let (method, path, query, body) = &calls[1];
    assert_eq!(method, "PATCH");
    assert_eq!(path, "/api/v1/namespaces/db/configmaps/pgset-record");
    assert!(query.contains("fieldManager=pgset-agent"), "{query}");
    assert_eq!(
        body,
        &json!({"data": {"systemIdentifier": "7300000000000000001", "reinitSystemIdentifier": null}}),
        "a merge patch of the given keys alone (null removes one)"
    );
}

#[tokio::test]
async fn a_missing_record_is_none_an_empty_one_unknown_a_deleted_one_still_there() {
    let (client, _) = mock(404, status(404, "NotFound"));
    let api = PodApi::with_client(client, "db", "pgset");
    assert_eq!(api.cluster_record().await.unwrap(), None);

    let (client, _) = mock(
        200,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "pgset-record", "namespace": "db"}}),
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let record = api.cluster_record().await.unwrap().expect("it exists");
    assert_eq!(
        record.data(),
        RecordData::Unknown,
        "no state: nothing proves the cluster never had data"
    );

    let (client, _) = mock(
        200,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "pgset-record", "namespace": "db",
                            "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["pgset.io/record"]},
               "data": {"state": "data-expected", "clusterId": "c1"}}),
    );
    let api = PodApi::with_client(client, "db", "pgset");
    let record = api
        .cluster_record()
        .await
        .unwrap()
        .expect("kept by its finalizer");
    assert!(record.deleting);
    assert_eq!(record.data(), RecordData::DataExpected);

    let (client, _) = mock(
        200,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "pgset-record", "namespace": "db"},
               "data": {"state": "new", "clusterId": "c1"}}),
    );
    let api = PodApi::with_client(client, "db", "pgset");
    assert_eq!(
        api.cluster_record().await.unwrap().unwrap().data(),
        RecordData::New
    );

    let (client, _) = mock(403, status(403, "Forbidden"));
    let api = PodApi::with_client(client, "db", "pgset");
    let e = api.cluster_record().await.unwrap_err().to_string();
    assert!(e.contains("configmaps") && e.contains("pgset-agent"), "{e}");
}

#[tokio::test]
async fn the_data_identity_is_a_merge_patch_of_one_annotation_on_the_pod() {
    let (client, seen) = mock(200, pod("pgset-1"));
    PodApi::with_client(client, "db", "pgset")
        .publish_identity("pgset-1", "c1", "7300000000000000001")
        .await
        .unwrap();
    let calls = seen.lock().unwrap().clone();
    let (method, path, query, body) = &calls[0];
    assert_eq!(method, "PATCH");
    assert_eq!(path, "/api/v1/namespaces/db/pods/pgset-1");
    assert!(query.contains("fieldManager=pgset-agent"), "{query}");
    let annotations = body["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations.len(), 1, "{body}");
    let published: Value =
        serde_json::from_str(annotations["pgset.io/data-identity"].as_str().unwrap()).unwrap();
    assert_eq!(
        published,
        json!({"clusterId": "c1", "systemIdentifier": "7300000000000000001"})
    );
}

#[tokio::test]
async fn the_phase_is_a_merge_patch_of_one_annotation_beside_the_role_label() {
    let (client, seen) = mock(200, pod("pgset-1"));
    PodApi::with_client(client, "db", "pgset")
        .annotate_phase(
            "pgset-1",
            pgset_spec::contract::MemberPhase::BaseBackup,
            Some(&pgset_spec::contract::BaseBackupReading {
                bytes: 4096,
                total: Some(8192),
                at_ms: 1_796_002_802_512,
            }),
        )
        .await
        .unwrap();
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (method, path, query, body) = &calls[0];
    assert_eq!(method, "PATCH");
    assert_eq!(path, "/api/v1/namespaces/db/pods/pgset-1");
    // Not the role label's field manager: its server-side apply must keep owning the label.
    assert!(
        query.contains("fieldManager=pgset-agent") && !query.contains("force"),
        "{query}"
    );
    assert_eq!(
        body,
        &json!({"metadata": {"annotations": {
            "pgset.io/phase": "base-backup",
            "pgset.io/base-backup": r#"{"bytes":4096,"total":8192,"atMs":1796002802512}"#,
        }}})
    );
}

#[tokio::test]
async fn the_phase_writer_writes_each_change_once_and_retries_a_failure() {
    use pgset_agent::health::Health;
    use pgset_spec::contract::MemberPhase;
    // The first answer fails, every later one succeeds.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        let mut n = 0;
        while let Some((request, send)) = handle.next_request().await {
            let bytes = request.into_body().collect_bytes().await.unwrap();
            record
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&bytes).unwrap());
            let (code, answer) = if n == 0 {
                (500, status(500, "InternalError"))
            } else {
                (200, pod("pgset-1"))
            };
            n += 1;
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    let api = PodApi::with_client(Client::new(service, "db"), "db", "pgset");
    let health = Health::new("pgset-1", std::time::Duration::from_secs(30));
    health.set_step(MemberPhase::WaitingForMaster);
    let mut publisher = pgset_agent::phase::publish(
        api,
        "pgset-1".into(),
        health.steps(),
        health.base_backup_readings(),
    );
    assert!(
        publisher
            .flush(
                MemberPhase::WaitingForMaster,
                std::time::Duration::from_secs(10)
            )
            .await,
        "written after one retry"
    );
    // The same step again is no change: nothing is sent.
    health.set_step(MemberPhase::WaitingForMaster);
    health.set_step(MemberPhase::BaseBackup);
    assert!(
        publisher
            .flush(MemberPhase::BaseBackup, std::time::Duration::from_secs(10))
            .await
    );
    let words: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            b["metadata"]["annotations"]["pgset.io/phase"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        words,
        ["waiting-for-master", "waiting-for-master", "base-backup"]
    );
}

/// Patch bodies with the (paused) clock's time each arrived.
type Timed = Arc<Mutex<Vec<(tokio::time::Instant, Value)>>>;

/// A mock API server that answers every request with the pod and records each patch body with
/// the time it arrived.
fn timed_mock() -> (Client, Timed) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Timed = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            assert_eq!(request.method(), "PATCH");
            assert_eq!(request.uri().path(), "/api/v1/namespaces/db/pods/pgset-1");
            let bytes = request.into_body().collect_bytes().await.unwrap();
            record.lock().unwrap().push((
                tokio::time::Instant::now(),
                serde_json::from_slice(&bytes).unwrap(),
            ));
            send.send_response(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&pod("pgset-1")).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "db"), seen)
}

#[tokio::test(start_paused = true)]
async fn base_backup_readings_are_written_no_more_often_than_the_interval_and_removed_after() {
    use pgset_agent::health::Health;
    use pgset_agent::phase::READING_INTERVAL;
    use pgset_spec::contract::{BaseBackupReading, MemberPhase};
    use std::time::Duration;

    let (client, seen) = timed_mock();
    let api = PodApi::with_client(client, "db", "pgset");
    let health = Health::new("pgset-1", Duration::from_secs(30));
    // A reading left from before the copy is not the copy's: never written outside it.
    health.set_base_backup(Some(BaseBackupReading {
        bytes: 1,
        total: None,
        at_ms: 1,
    }));
    health.set_step(MemberPhase::WaitingForMaster);
    let mut publisher = pgset_agent::phase::publish(
        api,
        "pgset-1".into(),
        health.steps(),
        health.base_backup_readings(),
    );
    assert!(
        publisher
            .flush(MemberPhase::WaitingForMaster, Duration::from_secs(5))
            .await
    );
    health.set_base_backup(None);
    health.set_step(MemberPhase::BaseBackup);
    let started = tokio::time::Instant::now();
    // A new reading every second for 30 s (the meter samples more often than the writer may
    // write), growing by 10 MB a second.
    let mut last = None;
    for s in 1..=30u64 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = BaseBackupReading {
            bytes: s * 10_000_000,
            total: Some(400_000_000),
            at_ms: 1_796_000_000_000 + s * 1000,
        };
        health.set_base_backup(Some(r));
        last = Some(r);
    }
    tokio::time::sleep(READING_INTERVAL).await;
    health.set_base_backup(None);
    health.set_step(MemberPhase::Starting);
    assert!(
        publisher
            .flush(MemberPhase::Starting, Duration::from_secs(5))
            .await
    );
    let calls = seen.lock().unwrap().clone();
    let annotations: Vec<&Value> = calls
        .iter()
        .map(|(_, body)| &body["metadata"]["annotations"])
        .collect();
    // Every patch carries the phase and the reading (or its removal), nothing else.
    for a in &annotations {
        let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["pgset.io/base-backup", "pgset.io/phase"], "{a}");
    }
    assert_eq!(
        annotations[0],
        &json!({"pgset.io/phase": "waiting-for-master", "pgset.io/base-backup": null})
    );
    assert_eq!(
        annotations[1],
        &json!({"pgset.io/phase": "base-backup", "pgset.io/base-backup": null}),
        "the step is written at once, before any reading"
    );
    let end = annotations.len() - 1;
    assert_eq!(
        annotations[end],
        &json!({"pgset.io/phase": "starting", "pgset.io/base-backup": null}),
        "the reading goes with the copy"
    );
    let readings: Vec<(tokio::time::Instant, BaseBackupReading)> = calls[2..end]
        .iter()
        .map(|(at, body)| {
            assert_eq!(
                body["metadata"]["annotations"]["pgset.io/phase"],
                "base-backup"
            );
            let text = body["metadata"]["annotations"]["pgset.io/base-backup"]
                .as_str()
                .expect("a reading");
            (
                *at,
                BaseBackupReading::parse(text).expect("a well-formed reading"),
            )
        })
        .collect();
    for pair in readings.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= READING_INTERVAL, "two readings {gap:?} apart");
        assert!(pair[1].1.bytes > pair[0].1.bytes, "{readings:?}");
    }
    // 30 s of readings at one write per interval: 6 or 7 writes, not 30.
    let most = (Duration::from_secs(30 + 5).as_secs() / READING_INTERVAL.as_secs()) as usize + 1;
    assert!(
        (5..=most).contains(&readings.len()),
        "{} readings written: {readings:?}",
        readings.len()
    );
    // The newest reading reaches the pod once its turn comes.
    assert_eq!(readings.last().map(|r| r.1), last);
    assert!(readings[0].0 - started >= Duration::from_secs(1));
}

/// An API server that accepts the connection, reads the request and never answers: the call
/// fails within the agent's bound instead of hanging a readiness check or the fence.
#[tokio::test]
async fn an_api_server_that_never_answers_costs_one_call_at_most_its_bound() {
    use pgset_agent::kube_api::{CALL_BOUND, READ_TIMEOUT};
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0usize));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            held.push(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                std::future::pending::<()>().await;
            }));
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let api = PodApi::from_config(config, "db", "pgset").unwrap();
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(CALL_BOUND * 3, api.pod_exists("pgset-0")).await;
    let took = started.elapsed();
    let result = outcome.expect("the call returns by itself, not only when the test gives up");
    let e = result.expect_err("a server that never answers is an error, never an answer");
    assert!(
        *accepted.lock().unwrap() >= 1,
        "the server accepted the connection"
    );
    assert!(
        took >= READ_TIMEOUT && took <= CALL_BOUND,
        "the read timeout ended the call after {took:?}: {e}"
    );
}
