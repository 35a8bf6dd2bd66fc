//! Tests of the check logic on outputs captured from a real PostgreSQL (tests/fixtures/verify)
//! and on pods, Services and EndpointSlices in the API's JSON shape.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use pgset_spec::{ClusterSpec, StorageMode};
use serde_json::json;

use crate::checks::{self, ClaimState, Member, MemberStorage};
use crate::exec::ExecOutput;
use crate::report::Verdict;
use crate::sql;
use crate::status;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/verify")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ok(stdout: &str) -> ExecOutput {
    ExecOutput {
        stdout: stdout.to_string(),
        stderr: String::new(),
        exit_code: 0,
    }
}

fn failed(stderr: &str, exit_code: i32) -> ExecOutput {
    ExecOutput {
        stdout: String::new(),
        stderr: stderr.to_string(),
        exit_code,
    }
}

/// The finding's message says `part` (shown in full when it does not).
fn assert_mentions(f: &crate::report::Finding, part: &str) {
    assert!(f.message.contains(part), "{:?} lacks {part:?}", f.message);
}

fn spec(replicas: i32) -> ClusterSpec {
    ClusterSpec {
        replicas,
        ..ClusterSpec::default()
    }
}

fn replicas(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A member pod as the API returns it.
fn pod(ordinal: i32, created: &str, ready: bool, role: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("pgset-{ordinal}"),
            "namespace": "default",
            "uid": format!("uid-{ordinal}"),
            "creationTimestamp": created,
            "labels": {
                "app.kubernetes.io/name": "pgset",
                "app.kubernetes.io/instance": "pgset",
                "statefulset.kubernetes.io/pod-name": format!("pgset-{ordinal}"),
                "role": role
            }
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "postgres", "image": "postgres:18"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": format!("data-pgset-{ordinal}")}}]
        },
        "status": {
            "phase": "Running",
            "podIP": format!("10.244.0.{}", 10 + ordinal),
            "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": created},
                {"type": "ContainersReady", "status": "True"}
            ],
            "containerStatuses": [{"name": "postgres", "ready": ready, "restartCount": ordinal, "image": "postgres:18", "imageID": "", "started": true}]
        }
    }))
    .unwrap()
}

fn members(pods: &[Pod]) -> Vec<Member> {
    pods.iter().map(Member::from_pod).collect()
}

/// The healthy members as they are in shared mode: all mount the shared claim.
fn sharing(claim: &str) -> Vec<Member> {
    healthy()
        .into_iter()
        .map(|mut m| {
            m.claims = vec![claim.to_string()];
            m
        })
        .collect()
}

/// Three Ready members created in order, with these role labels.
fn labelled(roles: [&str; 3]) -> Vec<Member> {
    let created = [
        "2026-11-22T05:00:00Z",
        "2026-11-22T05:00:09Z",
        "2026-11-22T05:00:21Z",
    ];
    (0..3)
        .map(|i| Member::from_pod(&pod(i as i32, created[i], true, roles[i])))
        .collect()
}

fn healthy() -> Vec<Member> {
    labelled(["master", "replica", "replica"])
}

#[test]
fn member_from_pod_reads_what_verify_needs() {
    let m = Member::from_pod(&pod(2, "2026-11-22T05:00:21Z", true, "replica"));
    assert_eq!(m.name, "pgset-2");
    assert_eq!(m.ordinal, Some(2));
    assert!(m.ready);
    assert_eq!(m.role(), Some("replica"));
    assert_eq!(m.ip.as_deref(), Some("10.244.0.12"));
    assert_eq!(m.node.as_deref(), Some("node-1"));
    assert_eq!(m.restarts, 2);
    assert_eq!(m.claims, vec!["data-pgset-2"]);
    assert_eq!(m.container.as_deref(), Some("postgres"));
}

#[test]
fn pods_in_order_pass() {
    let f = checks::pods_ready_in_order(&spec(3), &healthy(), Some("OrderedReady"));
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
    assert_eq!(
        f.message,
        "3 pods Running and Ready, created in ordinal order"
    );
}

#[test]
fn pods_created_together_fail() {
    let ms = members(&[
        pod(0, "2026-11-22T05:00:00Z", true, "master"),
        pod(1, "2026-11-22T05:00:00Z", true, "replica"),
    ]);
    let f = checks::pods_ready_in_order(&spec(2), &ms, None);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "same second");
}

#[test]
fn pods_parallel_policy_fails_unless_the_spec_asks_for_it() {
    let f = checks::pods_ready_in_order(&spec(3), &healthy(), Some("Parallel"));
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "not the spec's OrderedReady");
    let mut parallel = spec(3);
    parallel.pod_management_policy = pgset_spec::PodManagementPolicy::Parallel;
    let f = checks::pods_ready_in_order(&parallel, &healthy(), Some("Parallel"));
    assert_eq!(f.verdict, Verdict::Pass, "{f:?}");
    assert_mentions(&f, "started in parallel");
    let f = checks::pods_ready_in_order(&parallel, &healthy(), Some("OrderedReady"));
    assert_eq!(f.verdict, Verdict::Fail);
}

#[test]
fn recreated_master_is_noted_not_failed() {
    let ms = members(&[
        pod(0, "2026-11-22T06:10:00Z", true, "master"),
        pod(1, "2026-11-22T05:00:09Z", true, "replica"),
        pod(2, "2026-11-22T05:00:21Z", true, "replica"),
    ]);
    let f = checks::pods_ready_in_order(&spec(3), &ms, Some("OrderedReady"));
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
    assert_mentions(&f, "pgset-0 recreated later");
}

#[test]
fn missing_unready_and_extra_pods_fail() {
    let ms = members(&[
        pod(0, "2026-11-22T05:00:00Z", true, "master"),
        pod(1, "2026-11-22T05:00:09Z", false, "replica"),
        pod(3, "2026-11-22T05:01:00Z", true, "replica"),
    ]);
    let f = checks::pods_ready_in_order(&spec(3), &ms, None);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "pgset-1 not Ready");
    assert_mentions(&f, "pgset-2 missing");
    assert_mentions(&f, "unexpected pod pgset-3");
}

#[test]
fn replication_rows_parse_from_captured_output() {
    let rows = sql::parse_replication(&fixture("pg_stat_replication.after_write.out")).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].application_name, "pgset-1");
    assert!(rows[0].is_streaming());
    assert_eq!(rows[0].sync_state, "async");
    assert_eq!(rows[0].unreplayed_bytes, Some(0.0));
    let lag = rows[0].replay_lag_ms.unwrap();
    assert!((lag - 5.288).abs() < 1e-9, "{lag}");
    assert_eq!(rows[1].replay_lag_ms, None);
    assert_eq!(checks::max_replay_lag_ms(&rows), Some(lag));

    let idle = sql::parse_replication(&fixture("pg_stat_replication.idle.out")).unwrap();
    assert_eq!(idle.len(), 2);
    assert_eq!(checks::max_replay_lag_ms(&idle), None);
    assert!(
        sql::parse_replication(&fixture("pg_stat_replication.on_replica.out"))
            .unwrap()
            .is_empty()
    );
    assert!(sql::parse_replication("pgset-1|streaming|async\n").is_err());
    assert!(sql::parse_replication("pgset-1|streaming|async|0|soon\n").is_err());
}

#[test]
fn streaming_verdicts() {
    let rows = sql::parse_replication(&fixture("pg_stat_replication.after_write.out")).unwrap();
    let f = checks::streaming(&replicas(&["pgset-1", "pgset-2"]), &rows);
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
    assert_eq!(f.message, "2 of 2 replicas streaming; replay_lag ≤ 5.3 ms");
    assert!(f.measurements.replay_lag_ms.is_some());

    let f = checks::streaming(&replicas(&["pgset-1", "pgset-2", "pgset-3"]), &rows);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(f.message, "pgset-3 not in pg_stat_replication");

    let f = checks::streaming(&replicas(&["pgset-1"]), &rows);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "unexpected walsender \"pgset-2\"");

    let mut catching_up = rows.clone();
    catching_up[1].state = "catchup".into();
    let f = checks::streaming(&replicas(&["pgset-1", "pgset-2"]), &catching_up);
    assert_eq!(f.message, "pgset-2 is catchup");

    let none = sql::parse_replication(&fixture("pg_stat_replication.on_replica.out")).unwrap();
    let f = checks::streaming(&replicas(&["pgset-1"]), &none);
    assert_eq!(f.verdict, Verdict::Fail);
}

#[test]
fn read_only_replica_from_captured_output() {
    let refused = failed(&fixture("create_table_on_replica.out"), 1);
    assert_eq!(sql::sqlstate(&refused.stderr), Some("25006"));
    let standby = ok(&fixture("in_recovery.replica.out"));
    let primary = ok(&fixture("in_recovery.master.out"));
    assert!(sql::parse_bool(&standby.stdout).unwrap());
    assert!(!sql::parse_bool(&primary.stdout).unwrap());

    let f = checks::replica_read_only(&refused, &standby);
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);

    let f = checks::replica_read_only(&refused, &primary);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "answered by a primary");

    let f = checks::replica_read_only(&ok(""), &standby);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "succeeded");

    let unreachable = failed(&fixture("psql_no_server.out"), 2);
    assert_eq!(sql::sqlstate(&unreachable.stderr), None);
    let f = checks::replica_read_only(&unreachable, &unreachable);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "without a SQLSTATE");
    assert_mentions(&f, "exit 2");

    let timeout = fixture("marker_wait.timeout.out");
    assert_eq!(sql::sqlstate(&timeout), Some("P0001"));
    let f = checks::replica_read_only(&failed(&timeout, 1), &standby);
    assert_mentions(&f, "SQLSTATE P0001, not 25006");
}

fn sightings(
    entries: &[(&str, Result<ExecOutput, String>)],
) -> BTreeMap<String, Result<ExecOutput, String>> {
    entries
        .iter()
        .map(|(p, r)| (p.to_string(), r.clone()))
        .collect()
}

#[test]
fn replicated_write_lag_from_captured_output() {
    let lsn = sql::parse_lsn(&fixture("marker_table_lsn.out")).unwrap();
    assert_eq!(lsn.to_string(), "0/50549F0");
    assert!(sql::parse_lsn("CREATE TABLE\n").is_err());
    assert!(sql::wait_for_replay(&lsn, 30).contains("'0/50549F0'::pg_lsn"));

    let insert = ok(&fixture("marker_insert.out"));
    let seen = sightings(&[
        ("pgset-1", Ok(ok(&fixture("marker_wait.replica1.out")))),
        ("pgset-2", Ok(ok(&fixture("marker_wait.replica2.out")))),
    ]);
    let f = checks::replicated_write("d4e5f6", &insert, &seen);
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
    let lag = f.measurements.lag_ms.unwrap();
    assert!((lag - 10.123).abs() < 1e-9, "slowest replica: {lag}");
    assert_eq!(f.message, "marker row read on 2 replica(s); lag 10.1 ms");

    let seen = sightings(&[
        ("pgset-1", Ok(ok(&fixture("marker_wait.replica1.out")))),
        (
            "pgset-2",
            Ok(ok(&fixture("marker_wait.already_visible.out"))),
        ),
    ]);
    let f = checks::replicated_write("d4e5f6", &insert, &seen);
    assert_eq!(f.verdict, Verdict::Pass);
    assert!(
        f.message
            .contains("upper bound: already visible on first poll on pgset-2"),
        "{}",
        f.message
    );

    let seen = sightings(&[
        ("pgset-1", Ok(ok(&fixture("marker_wait.replica1.out")))),
        (
            "pgset-2",
            Ok(failed(&fixture("marker_wait.timeout.out"), 1)),
        ),
    ]);
    let f = checks::replicated_write("d4e5f6", &insert, &seen);
    assert_eq!(f.verdict, Verdict::Fail);
    assert!(
        f.message
            .starts_with("pgset-2: exit 1: ERROR: P0001: marker not replicated"),
        "{}",
        f.message
    );

    let seen = sightings(&[(
        "pgset-1",
        Err("exec `psql` in pod pgset-1: timed out".into()),
    )]);
    let f = checks::replicated_write("d4e5f6", &insert, &seen);
    assert_eq!(f.verdict, Verdict::Fail);

    let f = checks::replicated_write("other", &insert, &BTreeMap::new());
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "expected the token other");

    let f = checks::replicated_write(
        "d4e5f6",
        &failed(&fixture("create_table_on_replica.out"), 1),
        &BTreeMap::new(),
    );
    assert!(
        f.message
            .starts_with("insert through the master Service failed")
    );
}

#[test]
fn sighting_parser_rejects_other_shapes() {
    let s = sql::parse_marker_sighting(&fixture("marker_wait.replica2.out")).unwrap();
    assert_eq!(s.token, "d4e5f6");
    assert_eq!(s.polls, 402);
    assert!(sql::parse_marker_sighting("").is_err());
    assert!(sql::parse_marker_sighting("a|1\n").is_err());
    assert!(sql::parse_marker_sighting("a|x|1\n").is_err());
}

fn endpoint(pod: &str, ip: &str, ready: bool) -> checks::Endpoint {
    checks::Endpoint {
        pod: Some(pod.to_string()),
        addresses: vec![ip.to_string()],
        ready,
    }
}

#[test]
fn dns_and_endpoints_verdicts() {
    let captured = fixture("getent_hosts.out");
    assert_eq!(sql::parse_getent_hosts(&captured), vec!["127.0.0.1"]);
    let s = spec(3);
    let ms = healthy();
    let resolve = |i: i32| ok(&format!("10.244.0.{}      {}\n", 10 + i, s.pod_fqdn(i)));
    let resolved: BTreeMap<String, Result<ExecOutput, String>> =
        (0..3).map(|i| (s.pod_name(i), Ok(resolve(i)))).collect();
    let headless: Vec<checks::Endpoint> = (0..3)
        .map(|i| endpoint(&s.pod_name(i), &format!("10.244.0.{}", 10 + i), true))
        .collect();
    let f = checks::dns_and_endpoints(&s, &ms, &resolved, &headless);
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);

    let mut wrong = resolved.clone();
    wrong.insert("pgset-1".into(), Ok(ok(&captured)));
    wrong.insert("pgset-2".into(), Ok(failed("", 2)));
    let f = checks::dns_and_endpoints(&s, &ms, &wrong, &headless[..2]);
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(
        &f,
        "pgset-1.pgset.default.svc.cluster.local resolves to [\"127.0.0.1\"], not 10.244.0.11",
    );
    assert_mentions(&f, "does not resolve (getent exit 2)");
    assert!(
        f.message
            .contains("pgset-2 not in the endpoints of Service pgset"),
        "{}",
        f.message
    );
}

#[test]
fn endpoints_from_slices() {
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "pgset-master-abcde", "labels": {"kubernetes.io/service-name": "pgset-master"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.0.10"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "pgset-0", "namespace": "default"}},
            {"addresses": ["10.244.0.11"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "pgset-1", "namespace": "default"}}
        ],
        "ports": [{"name": "postgres", "port": 5432, "protocol": "TCP"}]
    }))
    .unwrap();
    let eps = checks::endpoints(&[slice]);
    assert_eq!(
        eps,
        vec![
            endpoint("pgset-0", "10.244.0.10", true),
            endpoint("pgset-1", "10.244.0.11", false)
        ]
    );
}

fn service(name: &str, role: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {
            "app.kubernetes.io/name": "pgset",
            "app.kubernetes.io/instance": "pgset",
            "role": role
        }, "ports": [{"port": 5432}]}
    }))
    .unwrap()
}

#[test]
fn role_services_verdicts() {
    let s = spec(3);
    let ms = healthy();
    let master = service("pgset-master", "master");
    let replica = service("pgset-replica", "replica");
    let master_eps = vec![endpoint("pgset-0", "10.244.0.10", true)];
    let replica_eps = vec![
        endpoint("pgset-1", "10.244.0.11", true),
        endpoint("pgset-2", "10.244.0.12", true),
    ];
    let f = checks::role_services(
        &s,
        &ms,
        "pgset-0",
        Some(&master),
        &master_eps,
        Some(&replica),
        &replica_eps,
    );
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
    assert_eq!(
        f.message,
        "pgset-master selects pgset-0; pgset-replica selects 2 replica(s)"
    );

    // pgset-2 not yet labelled by its agent.
    let unlabelled = labelled(["master", "replica", ""]);
    let f = checks::role_services(
        &s,
        &unlabelled,
        "pgset-0",
        Some(&master),
        &master_eps,
        Some(&replica),
        &replica_eps[..1],
    );
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(
        &f,
        "Service pgset-replica selects [\"pgset-1\"], expected [\"pgset-1\", \"pgset-2\"]",
    );
    assert_mentions(&f, "ready endpoints [\"pgset-1\"]");

    // Two masters.
    let two = labelled(["master", "master", "replica"]);
    let f = checks::role_services(
        &s,
        &two,
        "pgset-0",
        Some(&master),
        &master_eps,
        Some(&replica),
        &replica_eps,
    );
    assert!(
        f.message
            .contains("Service pgset-master selects [\"pgset-0\", \"pgset-1\"]"),
        "{}",
        f.message
    );

    let f = checks::role_services(
        &s,
        &ms,
        "pgset-0",
        None,
        &[],
        Some(&service("pgset-replica", "master")),
        &replica_eps,
    );
    assert_mentions(&f, "Service pgset-master missing");
    assert!(
        f.message
            .contains("Service pgset-replica does not select role=replica"),
        "{}",
        f.message
    );
}

fn stats_for(dir: &str, uid: i64, mode: &str) -> Vec<sql::PathStat> {
    sql::parse_stat(&format!(
        "{dir}|{uid}|{uid}|{mode}|directory\n{dir}/PG_VERSION|{uid}|{uid}|600|regular file\n"
    ))
    .unwrap()
}

#[test]
fn stat_parses_from_captured_output() {
    let stats = sql::parse_stat(&fixture("stat_data_dir.out")).unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].path, "/tmp/vcap/pgset-0");
    assert_eq!(stats[0].mode, 0o700);
    assert_eq!(stats[0].kind, "directory");
    assert_eq!(stats[1].kind, "regular file");
    assert_eq!(fixture("data_directory.out").trim(), "/tmp/vcap/pgset-1");
    assert!(sql::parse_stat("/x|a|0|700|directory\n").is_err());
}

#[test]
fn storage_shared_on_the_export() {
    // As seen on the NFS host (the captured stat), with the data root it was captured under.
    let mut s = spec(1);
    s.postgres.uid = 101;
    let mut seen = BTreeMap::new();
    seen.insert(
        "pgset-0".to_string(),
        MemberStorage {
            data_directory: Some(Ok("/pgdata/pgset-0".into())),
            stat: Some(Ok(sql::parse_stat(&fixture("stat_data_dir.out")).unwrap())),
            claim: None,
        },
    );
    let f = checks::storage(&s, &sharing("pgset-pvc")[..1], &seen, "/tmp/vcap");
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
    let f = checks::storage(&s, &healthy()[..1], &seen, "/tmp/vcap");
    assert_eq!(f.message, "pgset-0 does not mount claim pgset-pvc");

    s.postgres.uid = 999;
    let f = checks::storage(&s, &sharing("pgset-pvc")[..1], &seen, "/tmp/vcap");
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(f.message, "/tmp/vcap/pgset-0 owned by uid 101, not 999");
}

#[test]
fn storage_in_pod_and_templates() {
    let mut s = spec(2);
    let mk = |pod: &str, dir: &str, mode: &str, claim: Option<ClaimState>| MemberStorage {
        data_directory: Some(Ok(dir.to_string())),
        stat: Some(Ok(stats_for(&format!("/pgdata/{pod}"), 999, mode))),
        claim,
    };
    let mut seen = BTreeMap::new();
    seen.insert(
        "pgset-0".to_string(),
        mk("pgset-0", "/pgdata/pgset-0", "700", None),
    );
    seen.insert("pgset-1".to_string(), mk("pgset-1", "/pgdata", "777", None));
    let f = checks::storage(&s, &sharing("pgset-pvc"), &seen, "/pgdata");
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(
        f.message,
        "pgset-1 runs on /pgdata, not /pgdata/pgset-1; /pgdata/pgset-1 has mode 777, not 700/750"
    );

    s.storage.mode = StorageMode::Templates;
    let claim = |n: i32, phase: &str, volume: &str| {
        Some(ClaimState {
            name: format!("data-pgset-{n}"),
            phase: phase.into(),
            volume: Some(volume.into()),
        })
    };
    seen.insert(
        "pgset-0".to_string(),
        mk(
            "pgset-0",
            "/pgdata/pgset-0",
            "700",
            claim(0, "Bound", "pv-a"),
        ),
    );
    seen.insert(
        "pgset-1".to_string(),
        mk(
            "pgset-1",
            "/pgdata/pgset-1",
            "750",
            claim(1, "Bound", "pv-b"),
        ),
    );
    let f = checks::storage(&s, &healthy(), &seen, "/pgdata");
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);

    seen.insert(
        "pgset-1".to_string(),
        mk(
            "pgset-1",
            "/pgdata/pgset-1",
            "750",
            claim(1, "Pending", "pv-a"),
        ),
    );
    let f = checks::storage(&s, &healthy(), &seen, "/pgdata");
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "claim data-pgset-1 is Pending");
    assert_mentions(&f, "pgset-1 and pgset-0 share volume pv-a");
}

#[test]
fn status_lines_from_pods_and_replication() {
    let s = spec(3);
    let rows = sql::parse_replication(&fixture("pg_stat_replication.after_write.out")).unwrap();
    let lines = status::member_statuses(&s, &healthy(), "pgset-0", &Ok(rows));
    assert_eq!(lines[0].streaming, "primary (2 walsender(s))");
    assert_eq!(lines[1].streaming, "streaming");
    assert!(lines[1].replay_lag_ms.is_some());
    assert_eq!(lines[2].replay_lag_ms, None);
    assert_eq!(lines[2].data, "/pgdata/pgset-2 (pgset-pvc)");
    let screen = status::ClusterStatus {
        cluster: "pgset".into(),
        namespace: "default".into(),
        storage: "shared".into(),
        desired: 3,
        ready: 3,
        members: lines,
        replication_error: None,
        ..Default::default()
    };
    let table = screen.to_table();
    let text: Vec<&str> = table.lines().collect();
    assert_eq!(
        text[2],
        "leader record none: pgset-0 is the master by its ordinal"
    );
    assert_eq!(text[3], "namespace default  storage shared");
    assert_eq!(
        text[5],
        "POD      ROLE     READY  STATUS   RESTARTS  NODE    IP           SERVICE  DATA                         STREAMING                 LAG"
    );
    assert_eq!(
        text[6],
        "pgset-0  master   ✓      Running  0         node-1  10.244.0.10  -        /pgdata/pgset-0 (pgset-pvc)  primary (2 walsender(s))  -"
    );
    assert_eq!(
        text[7],
        "pgset-1  replica  ✓      Running  1         node-1  10.244.0.11  -        /pgdata/pgset-1 (pgset-pvc)  streaming                 0 B / 5.3 ms"
    );
    assert_eq!(
        text[8],
        "pgset-2  replica  ✓      Running  2         node-1  10.244.0.12  -        /pgdata/pgset-2 (pgset-pvc)  streaming                 0 B"
    );
    assert_eq!(text.last(), Some(&"healthy"));

    assert!(screen.problems().is_empty(), "{:?}", screen.problems());
    let mut broken = screen.clone();
    broken.members[2].streaming = "not streaming".into();
    broken.members[1].ready = false;
    broken.members[1].phase = "Pending".into();
    broken.desired = 4;
    assert_eq!(
        broken.problems(),
        [
            "3 pod(s) for 4 wanted members",
            "pgset-1 is not Ready (Pending)",
            "pgset-2 is not streaming"
        ]
    );

    let unknown = status::member_statuses(
        &s,
        &healthy(),
        "pgset-0",
        &Err("pgset-0 is not running".into()),
    );
    assert!(unknown.iter().all(|m| m.streaming == "unknown"));
    let dark = status::ClusterStatus {
        members: unknown,
        replication_error: Some("pgset-0 is not running".into()),
        ..screen.clone()
    };
    assert_eq!(
        dark.problems(),
        ["streaming unknown: pgset-0 is not running"]
    );
    let mut t = spec(3);
    t.storage.mode = StorageMode::Templates;
    let none = sql::parse_replication(&fixture("pg_stat_replication.on_replica.out")).unwrap();
    let lines = status::member_statuses(&t, &healthy(), "pgset-0", &Ok(none));
    assert_eq!(lines[1].data, "data-pgset-1");
    assert_eq!(lines[1].streaming, "not streaming");
}

#[test]
fn psql_arguments_carry_no_password() {
    let argv = sql::psql_remote("pgset-replica", &[sql::IN_RECOVERY_QUERY], false);
    assert_eq!(argv[0..2], ["sh", "-c"]);
    assert_eq!(
        argv[2],
        "PGPASSWORD=\"$(cat /etc/pgset/secret/superuser-password)\" PGCONNECT_TIMEOUT=5 exec psql \"$@\""
    );
    assert!(argv.windows(2).any(|w| w == ["-h", "pgset-replica"]));
    assert!(argv.windows(2).any(|w| w == ["-U", "postgres"]));
    // With TLS the replication role by its mounted certificate: no password at all.
    let argv = sql::psql_remote("pgset-replica", &[sql::IN_RECOVERY_QUERY], true);
    assert_eq!(
        argv[2],
        "PGSSLMODE=verify-full PGSSLROOTCERT=/etc/pgset/tls/ca.crt \
         PGSSLCERT=/etc/pgset/tls/replication.crt PGSSLKEY=/etc/pgset/tls/replication.key \
         PGCONNECT_TIMEOUT=5 exec psql \"$@\""
    );
    assert!(argv.windows(2).any(|w| w == ["-U", "replicator"]));
    assert_eq!(
        argv.last().map(String::as_str),
        Some(sql::IN_RECOVERY_QUERY)
    );
    let local = sql::psql_local(&["select 1", "select 2"]);
    assert_eq!(
        local,
        [
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-h",
            "/var/run/postgresql",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "select 1",
            "-c",
            "select 2"
        ]
    );
}

#[test]
#[should_panic(expected = "alphanumeric")]
fn marker_tokens_cannot_inject_sql() {
    let _ = sql::insert_marker("x'); drop table users; --");
}

#[test]
fn new_tokens_are_valid_and_distinct() {
    let a = sql::new_token();
    std::thread::sleep(std::time::Duration::from_millis(1));
    let b = sql::new_token();
    assert_ne!(a, b);
    assert!(sql::select_marker(&a).contains(&a));
}

#[test]
fn a_new_member_starts_after_the_others_are_ready() {
    // The others became Ready when created (the fixture pods' lastTransitionTime).
    let others = healthy();
    let new = Member::from_pod(&pod(3, "2026-11-22T06:00:00Z", true, "replica"));
    assert_eq!(
        others[2].ready_since.map(|t| t.to_string()).as_deref(),
        Some("2026-11-22T05:00:21Z")
    );
    assert!(checks::started_after_ready(&new, &others).is_empty());

    let early = Member::from_pod(&pod(3, "2026-11-22T05:00:10Z", true, "replica"));
    assert_eq!(
        checks::started_after_ready(&early, &others),
        ["pgset-2 became Ready after pgset-3 was created"]
    );
    let mut unready = others.clone();
    unready[1].ready = false;
    assert_eq!(
        checks::started_after_ready(&new, &unready),
        ["pgset-1 not Ready"]
    );
}

#[test]
fn member_directories_on_this_host_are_stat_like_in_a_pod() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("pgset-verify-stat-{}", std::process::id()));
    let dir = root.join("pgset-0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.join("PG_VERSION"), "18\n").unwrap();
    let stats = crate::live::local_stat(&dir).unwrap();
    let missing = crate::live::local_stat(&root.join("pgset-1")).unwrap();
    std::fs::remove_dir_all(&root).unwrap();

    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].path, dir.display().to_string());
    assert_eq!(
        (stats[0].mode, stats[0].kind.as_str()),
        (0o700, "directory")
    );
    assert_eq!(stats[1].kind, "regular file");
    assert!(missing.is_empty());

    let mut s = spec(2);
    s.postgres.uid = stats[0].uid;
    let mut seen = BTreeMap::new();
    for (pod, found) in [("pgset-0", stats), ("pgset-1", missing)] {
        seen.insert(
            pod.to_string(),
            MemberStorage {
                data_directory: Some(Ok(format!("/pgdata/{pod}"))),
                stat: Some(Ok(found)),
                claim: None,
            },
        );
    }
    let root_text = root.display().to_string();
    let f = checks::storage(&s, &sharing("pgset-pvc")[..2], &seen, &root_text);
    assert_eq!(
        f.message,
        format!("{root_text}/pgset-1 missing; {root_text}/pgset-1/PG_VERSION missing")
    );
}

#[test]
fn master_recovery_passes_when_replicas_rejoin_within_the_bound() {
    let f = checks::master_recovery(
        "pgset-0",
        Duration::from_millis(3_400),
        &checks::Rejoin::Streaming(Duration::from_millis(1_200)),
        Duration::from_secs(10),
        Vec::new(),
    );
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
    assert_eq!(
        f.message,
        "pgset-0 back Ready as a new pod in 3.4s with its data; replicas streaming 1.2s after it was Ready (bound 10s); Services follow the roles"
    );
    assert_eq!(f.measurements.recovery_s, Some(3.4));
    assert_eq!(f.measurements.rejoin_s, Some(1.2));
    assert!((f.measurements.streaming_resumed_s.unwrap() - 4.6).abs() < 1e-9);
    // Exactly at the bound still passes.
    let f = checks::master_recovery(
        "pgset-0",
        Duration::from_secs(3),
        &checks::Rejoin::Streaming(Duration::from_secs(10)),
        Duration::from_secs(10),
        Vec::new(),
    );
    assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
}

#[test]
fn master_recovery_fails_when_replicas_rejoin_later_than_the_bound() {
    // The templates-storage case: the WAL receiver waited for a TCP connect timeout.
    let f = checks::master_recovery(
        "pgset-0",
        Duration::from_millis(3_900),
        &checks::Rejoin::Streaming(Duration::from_millis(132_000)),
        Duration::from_secs(10),
        Vec::new(),
    );
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(
        f.message,
        "replicas streamed again only 132.0s after pgset-0 was Ready: over the bound of 10s (--max-rejoin-seconds)"
    );
    assert_eq!(f.measurements.rejoin_s, Some(132.0));
    // A bound below a second is honoured as given.
    let f = checks::master_recovery(
        "pgset-0",
        Duration::from_secs(3),
        &checks::Rejoin::Streaming(Duration::from_millis(1_700)),
        Duration::from_millis(1_500),
        Vec::new(),
    );
    assert_eq!(f.verdict, Verdict::Fail);
    assert_mentions(&f, "1.7s after pgset-0 was Ready: over the bound of 1.5s");
}

#[test]
fn master_recovery_reports_replicas_that_never_rejoined_and_other_problems_with_the_time() {
    let f = checks::master_recovery(
        "pgset-0",
        Duration::from_secs(4),
        &checks::Rejoin::NotStreaming {
            waited: Duration::from_secs(180),
            last: "pgset-2 not in pg_stat_replication".into(),
        },
        Duration::from_secs(10),
        Vec::new(),
    );
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(
        f.message,
        "replicas not all streaming 180.0s after pgset-0 was Ready (bound 10s): pgset-2 not in pg_stat_replication"
    );
    assert_eq!(f.measurements.rejoin_s, Some(180.0));

    // Rejoined in time but the marker was lost: fails on that, still says the time.
    let f = checks::master_recovery(
        "pgset-0",
        Duration::from_secs(4),
        &checks::Rejoin::Streaming(Duration::from_millis(800)),
        Duration::from_secs(10),
        vec!["marker row abc lost".into()],
    );
    assert_eq!(f.verdict, Verdict::Fail);
    assert_eq!(
        f.message,
        "marker row abc lost; replicas streaming 0.8s after it was Ready (bound 10s)"
    );
    assert_eq!(f.measurements.rejoin_s, Some(0.8));
}

#[test]
fn rejoin_time_is_in_the_json_and_the_table() {
    let m = crate::report::Measurements {
        recovery_s: Some(3.5),
        rejoin_s: Some(1.3),
        ..Default::default()
    };
    assert_eq!(m.summary(), "recovery 3.5 s, rejoin 1.3 s");
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json, json!({"recovery_s": 3.5, "rejoin_s": 1.3}));
}

#[test]
fn on_the_nfs_host_each_cluster_checks_its_own_directory() {
    let export = tempfile::tempdir().unwrap();
    let mut default = ClusterSpec::default();
    default.nfs.export = export.path().to_path_buf();
    let mut staging = default.clone();
    staging.namespace = "staging".into();
    // Only the default cluster's member directory exists: another cluster with the same name
    // must not take it for its own.
    std::fs::create_dir(export.path().join("pgset-0")).unwrap();
    assert_eq!(
        crate::live::local_export(&default),
        Some(export.path().to_path_buf())
    );
    assert_eq!(crate::live::local_export(&staging), None);
    std::fs::create_dir_all(export.path().join("staging.pgset/pgset-0")).unwrap();
    assert_eq!(
        crate::live::local_export(&staging),
        Some(export.path().join("staging.pgset"))
    );
    staging.storage.mode = StorageMode::Templates;
    assert_eq!(crate::live::local_export(&staging), None);
}

#[test]
fn a_refused_member_shows_its_agents_message_in_status() {
    let mut refused = pod(2, "2026-01-01T00:00:00Z", false, "");
    let refusal =
        "refusing to use /pgdata/pgset-2: it belongs to cluster other/pgset (cluster id c2)";
    refused.status.as_mut().unwrap().container_statuses = Some(vec![serde_json::from_value(json!({
        "name": "postgres", "ready": false, "restartCount": 3, "image": "postgres:18", "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2, "message": format!("{refusal}\n")}}
    }))
    .unwrap()]);
    let m = Member::from_pod(&refused);
    assert_eq!(m.stopped_with.as_deref(), Some(refusal));
    // A clean exit's message is not a refusal.
    let mut clean = pod(1, "2026-01-01T00:00:00Z", true, "replica");
    clean.status.as_mut().unwrap().container_statuses = Some(vec![serde_json::from_value(json!({
        "name": "postgres", "ready": true, "restartCount": 1, "image": "postgres:18", "imageID": "",
        "lastState": {"terminated": {"exitCode": 0, "message": "bye"}}
    }))
    .unwrap()]);
    assert_eq!(Member::from_pod(&clean).stopped_with, None);

    let spec = ClusterSpec::default();
    let lines = crate::status::member_statuses(&spec, &[m], "pgset-0", &Ok(Vec::new()));
    assert_eq!(lines[0].stopped_with.as_deref(), Some(refusal));
    let status = crate::status::ClusterStatus {
        cluster: "pgset".into(),
        namespace: "default".into(),
        storage: "shared".into(),
        desired: 1,
        ready: 0,
        members: lines,
        replication_error: None,
        ..Default::default()
    };
    assert_eq!(status.members[0].identity, "refused");
    assert!(
        status
            .to_table()
            .contains(&format!("pgset-2 stopped: {refusal}"))
    );
    assert!(
        status
            .problems()
            .iter()
            .any(|p| p.contains("belongs to cluster other/pgset")),
        "{:?}",
        status.problems()
    );
}

#[test]
fn the_agents_states_show_gone_members_slots_and_split_systems() {
    let spec = ClusterSpec::default();
    let pods = [
        pod(0, "2026-01-01T00:00:00Z", true, "master"),
        pod(1, "2026-01-01T00:00:01Z", true, "replica"),
    ];
    let mut lines =
        crate::status::member_statuses(&spec, &members(&pods), "pgset-0", &Ok(Vec::new()));
    lines[0].agent = Some(
        json!({"ready": true, "reason": "accepts writes", "postgres": {
        "timeline": 1, "systemIdentifier": "1",
        "slots": [
            {"slot": "pgset_1", "active": true, "walStatus": "reserved", "retainedBytes": 0},
            {"slot": "pgset_2", "active": false, "walStatus": "extended", "retainedBytes": 50331648}
        ]}}),
    );
    lines[1].agent = Some(json!({"ready": true, "reason": "streaming from the master",
        "postgres": {"timeline": 2, "systemIdentifier": "2"}}));
    let p = crate::status::agent_problems(&lines, "pgset-0", 2, "pgset");
    assert!(
        p.iter().any(|x| x == "slot pgset_2 on pgset-0 retains 48.0 MiB of WAL for pgset-2, a member outside the set (2 wanted): scale back to 3 or drop the slot"),
        "{p:?}"
    );
    assert!(!p.iter().any(|x| x.contains("pgset_1")), "{p:?}");
    assert!(
        p.iter().any(|x| x
            == "pgset-1's data is database system 2, the master's is 1: it is not a copy of the master"),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|x| x == "pgset-1 is on timeline 2, the master on 1"),
        "{p:?}"
    );
    // The replica's own slot is shown on its line; the gone member's only as a warning.
    crate::status::apply_agents(&mut lines, "pgset-0");
    assert_eq!(
        lines[1].slot.as_ref().map(|s| (s.slot.as_str(), s.active)),
        Some(("pgset_1", true))
    );
    assert_eq!(lines[0].slot, None);
    assert_eq!(lines[1].timeline, Some(2));
}

#[test]
fn status_warns_when_members_run_different_images_and_marks_the_routing_services() {
    let spec = ClusterSpec::default();
    let pods = [
        pod(0, "2026-01-01T00:00:00Z", true, "master"),
        pod(1, "2026-01-01T00:00:01Z", true, "replica"),
        pod(2, "2026-01-01T00:00:02Z", true, "replica"),
    ];
    let mut lines =
        crate::status::member_statuses(&spec, &members(&pods), "pgset-0", &Ok(Vec::new()));
    for (k, line) in lines.iter_mut().enumerate() {
        line.images.insert("postgres".into(), "postgres:18".into());
        line.images.insert(
            "install-agent".into(),
            if k == 2 {
                "pgset-agent:0.2.0"
            } else {
                "pgset-agent:0.1.0"
            }
            .into(),
        );
    }
    assert_eq!(
        crate::status::image_problems(&lines),
        [
            "container install-agent runs different images: pgset-agent:0.1.0 on pgset-0, pgset-1; pgset-agent:0.2.0 on pgset-2 (a rollout in progress, or a pod changed by hand)"
        ]
    );
    lines[2]
        .images
        .insert("install-agent".into(), "pgset-agent:0.1.0".into());
    assert!(crate::status::image_problems(&lines).is_empty());

    let services = vec![
        (
            "pgset-master".to_string(),
            vec![endpoint("pgset-0", "10.244.0.10", true)],
        ),
        (
            "pgset-replica".to_string(),
            vec![
                endpoint("pgset-1", "10.244.0.11", true),
                endpoint("pgset-2", "10.244.0.12", false),
            ],
        ),
    ];
    crate::status::apply_services(&mut lines, &services);
    assert_eq!(lines[0].services, ["pgset-master"]);
    assert_eq!(lines[1].services, ["pgset-replica"]);
    assert!(
        lines[2].services.is_empty(),
        "a not-ready endpoint routes nothing"
    );
}

/// A postgres container's status with the given current state and an earlier exit whose
/// message is an agent's log tail of twenty lines.
fn after_a_crash(ordinal: i32, ready: bool, state: serde_json::Value) -> Pod {
    let mut p = pod(ordinal, "2026-01-01T00:00:00Z", ready, "master");
    let tail: Vec<String> = (1..=20)
        .map(|i| format!("2026-01-01T00:00:0{} agent: log line {i}", i % 10))
        .collect();
    p.status.as_mut().unwrap().container_statuses = Some(vec![serde_json::from_value(json!({
        "name": "postgres", "ready": ready, "restartCount": 1, "image": "postgres:18", "imageID": "",
        "state": state,
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
            "finishedAt": "2026-01-01T00:05:00Z", "message": tail.join("\n")}}
    }))
    .unwrap()]);
    p
}

fn screen_of(members: Vec<status::MemberStatus>) -> status::ClusterStatus {
    let mut s = status::ClusterStatus {
        cluster: "pgset".into(),
        namespace: "default".into(),
        storage: "shared".into(),
        desired: members.len() as i32,
        ready: members.iter().filter(|m| m.ready).count() as i32,
        members,
        replication_error: None,
        ..Default::default()
    };
    s.judge();
    s
}

#[test]
fn a_member_running_and_ready_again_shows_its_last_exit_as_history_not_a_warning() {
    let back = after_a_crash(
        0,
        true,
        json!({"running": {"startedAt": "2026-01-01T00:05:01Z"}}),
    );
    let m = Member::from_pod(&back);
    assert_eq!(m.stopped_with, None);
    let exit = m.last_exit.clone().unwrap();
    assert_eq!(exit.exit_code, 1);
    assert_eq!(exit.finished_at.as_deref(), Some("2026-01-01T00:05:00Z"));
    assert_eq!(
        exit.reason.as_deref(),
        Some("2026-01-01T00:00:01 agent: log line 1")
    );
    let spec = ClusterSpec {
        replicas: 1,
        ..ClusterSpec::default()
    };
    let lines = status::member_statuses(&spec, &[m], "pgset-0", &Ok(Vec::new()));
    let screen = screen_of(lines);
    assert!(screen.healthy, "{:?}", screen.warnings);
    assert!(screen.warnings.is_empty(), "{:?}", screen.warnings);
    let table = screen.to_table();
    assert!(
        table.contains(
            "pgset-0: last exit exit code 1 at 2026-01-01T00:05:00Z: 2026-01-01T00:00:01 agent: log line 1\n"
        ),
        "{table}"
    );
    assert!(!table.contains("log line 2"), "{table}");
    assert!(!table.contains("stopped"), "{table}");
    assert_eq!(table.lines().last(), Some("healthy"));
    let json = serde_json::to_value(&screen).unwrap();
    assert_eq!(
        json["members"][0]["last_exit"],
        json!({"finishedAt": "2026-01-01T00:05:00Z", "exitCode": 1,
               "reason": "2026-01-01T00:00:01 agent: log line 1"})
    );
    assert!(screen.to_yaml().contains("exitCode: 1"));
}

#[test]
fn a_member_down_or_not_ready_again_is_stopped_with_one_line_warned_once() {
    let spec = ClusterSpec {
        replicas: 1,
        ..ClusterSpec::default()
    };
    for state in [
        json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        json!({"running": {"startedAt": "2026-01-01T00:05:01Z"}}),
    ] {
        let m = Member::from_pod(&after_a_crash(0, false, state.clone()));
        assert_eq!(
            m.stopped_with.as_deref(),
            Some("2026-01-01T00:00:01 agent: log line 1"),
            "{state}"
        );
        let screen = screen_of(status::member_statuses(
            &spec,
            &[m],
            "pgset-0",
            &Ok(Vec::new()),
        ));
        assert!(!screen.healthy);
        let table = screen.to_table();
        assert_eq!(table.matches("log line 1").count(), 1, "{table}");
        assert!(!table.contains("log line 2"), "{table}");
        assert_eq!(
            screen.warnings,
            ["pgset-0 stopped: 2026-01-01T00:00:01 agent: log line 1"]
        );
    }
    // A very long first line is cut.
    let long = "x".repeat(500);
    let cut = checks::one_line_reason(&format!("\n  {long}\nmore")).unwrap();
    assert_eq!(cut.chars().count(), checks::REASON_MAX_CHARS);
    assert!(cut.ends_with('…'));
    assert_eq!(checks::one_line_reason(" \n \n"), None);
}

#[test]
fn a_replica_behind_the_bound_is_warned_of_naming_the_bound() {
    let s = spec(3);
    let rows = sql::parse_replication(&fixture("pg_stat_replication.after_write.out")).unwrap();
    let mut lines = status::member_statuses(&s, &healthy(), "pgset-0", &Ok(rows));
    let mut screen = screen_of(lines.clone());
    assert!(screen.healthy, "{:?}", screen.warnings);
    // Replay paused: 18.5 MiB and 20.7 s behind.
    lines[1].unreplayed_bytes = Some(18.5 * 1024.0 * 1024.0);
    lines[1].replay_lag_ms = Some(20_700.0);
    screen = screen_of(lines.clone());
    assert!(!screen.healthy);
    assert_eq!(
        screen.warnings,
        [
            "pgset-1 is 18.5 MiB / 20.7 s behind the master, above the bound of 16.0 MiB / 10 s (replication.maxReplicaLag): it serves stale reads"
        ]
    );
    // Either figure alone is enough; at the bound is not above it.
    lines[1].unreplayed_bytes = Some(1024.0);
    screen = screen_of(lines.clone());
    assert_eq!(screen.warnings.len(), 1, "{:?}", screen.warnings);
    lines[1].replay_lag_ms = Some(10_000.0);
    lines[1].unreplayed_bytes = Some((16 * 1024 * 1024) as f64);
    screen = screen_of(lines.clone());
    assert!(screen.healthy, "{:?}", screen.warnings);
    // The spec's bound is the one judged.
    screen.max_replica_lag = pgset_spec::LagBound {
        bytes: 1024,
        seconds: 5,
    };
    screen.judge();
    assert!(
        screen.warnings[0].contains("above the bound of 1.0 KiB / 5 s"),
        "{:?}",
        screen.warnings
    );
}

#[test]
fn a_diverged_copy_an_agent_lists_is_a_warning_with_the_command_that_removes_it() {
    let spec = ClusterSpec::default();
    let pods = [
        pod(0, "2026-01-01T00:00:00Z", true, "master"),
        pod(1, "2026-01-01T00:00:01Z", true, "replica"),
    ];
    let mut lines =
        crate::status::member_statuses(&spec, &members(&pods), "pgset-0", &Ok(Vec::new()));
    lines[0].agent = Some(json!({"ready": true, "reason": "accepts writes"}));
    lines[1].agent = Some(json!({"ready": true, "reason": "streaming from the master",
        "diverged": [{"path": "/data/pgset-1.diverged-20261207T120000Z",
                      "bytesAfterFork": 4096, "forkLsn": "0/3000060"}]}));
    let p = crate::status::diverged_problems(&lines, "db");
    assert_eq!(
        p,
        [
            "pgset-1 wrote 4096 bytes of WAL after the fork at 0/3000060 that the cluster does not \
          have; they are kept in /data/pgset-1.diverged-20261207T120000Z: look at them, then \
          remove it with `kubectl exec -n db pgset-1 -c postgres -- rm -r \
          /data/pgset-1.diverged-20261207T120000Z`"
        ]
    );
    lines[1].agent = Some(json!({"ready": true}));
    assert!(crate::status::diverged_problems(&lines, "db").is_empty());
}

#[test]
fn service_checks_connect_from_a_replica_of_the_master_the_cluster_names_else_the_master() {
    // The master moved to pgset-1: the first other member connects, never by ordinal alone.
    let three = spec(3);
    assert_eq!(checks::service_client_pod(&three, "pgset-1"), "pgset-0");
    assert_eq!(checks::service_client_pod(&three, "pgset-0"), "pgset-1");
    assert_eq!(checks::service_client_pod(&spec(1), "pgset-0"), "pgset-0");
}
