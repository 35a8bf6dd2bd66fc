//! Against a live cluster (KUBECONFIG): a 3-member cluster of its own, then `cargo xtask verify
//! --scale-test --disruptive -o json` passes every check with the lag and recovery measured,
//! waits until the removed member's slot is dropped (status is healthy right after it), leaves no
//! marker table behind nor spec.replicas with another field owner (a deploy after it
//! keeps the StatefulSet's resourceVersion), passes again on a second run, and `cargo xtask status -o
//! json` shows the master and two streaming replicas. Everything lives in a namespace of its own
//! (and, in shared mode, the cluster's own PersistentVolume), removed at the end.
//!
//! Storage: `PGSET_LIVE_STORAGE_CLASS` set → templates mode on that StorageClass; otherwise
//! shared mode on the NFS export of `PGSET_LIVE_NFS_SERVER` (default export `/nfsfileshare`,
//! `PGSET_LIVE_NFS_EXPORT` to change it), as `cargo xtask nfs` sets up; the cluster's directory
//! `<export>/<namespace>.pgset-verify` is made from inside the cluster and stays there with the
//! members' data (data is never deleted). The agent image must be
//! on the nodes (`cargo xtask image --import`); `PGSET_LIVE_AGENT_IMAGE` names another.
//!
//! Deadlines: on a machine much slower than the reference (a 2-CPU node),
//! `PGSET_LIVE_PATIENCE=FACTOR` (default 1) multiplies verify's `--timeout` and
//! `--max-rejoin-seconds` and the bounds asserted here.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, Client};
use pgset_deploy::apply::{ApplyMode, deploy};
use pgset_spec::contract::POSTGRES_CONTAINER;
use pgset_spec::{ClusterSpec, ValidSpec};
use pgset_verify::exec::PodExec;
use pgset_verify::{ClusterStatus, Report, Verdict, names, sql};
use support::{XtaskRun, assert_all_passed, xtask};

#[path = "support/live.rs"]
mod support;

use support::patience;

/// The cluster's name.
const CLUSTER: &str = "pgset-verify";

async fn marker_table_present(client: &Client, spec: &ClusterSpec) -> bool {
    let exec = PodExec::new(
        Api::<Pod>::namespaced(client.clone(), &spec.namespace),
        Duration::from_secs_f64(60.0 * patience()),
    );
    let query = format!("select to_regclass('{}') is not null", sql::MARKER_TABLE);
    // The master the cluster names (its leader Lease, else ordinal 0): the disruptive check
    // may have moved it.
    let master = pgset_deploy::master::read_master(client, spec)
        .await
        .expect("read the master")
        .master
        .expect("a master");
    let out = exec
        .run(&master, POSTGRES_CONTAINER, &sql::psql_local(&[&query]))
        .await
        .expect("exec psql on the master");
    assert!(out.success(), "psql: {}", out.failure_summary());
    sql::parse_bool(&out.stdout).expect("a boolean")
}

/// The StatefulSet once its controller stops writing status (two equal resourceVersions 3 s
/// apart).
async fn settled_statefulset(client: &Client, spec: &ClusterSpec) -> StatefulSet {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &spec.namespace);
    let settle = async {
        let mut before = api
            .get(spec.statefulset_name())
            .await
            .expect("read the StatefulSet");
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = api
                .get(spec.statefulset_name())
                .await
                .expect("read the StatefulSet");
            if now.metadata.resource_version == before.metadata.resource_version {
                return now;
            }
            before = now;
        }
    };
    tokio::time::timeout(Duration::from_secs_f64(120.0 * patience()), settle)
        .await
        .expect("the StatefulSet settles")
}

async fn scenario(client: Client, spec: ValidSpec) {
    let (_dir, spec_file) = support::deploy_own_cluster(&client, &spec).await;

    let factor = patience();
    let timeout = format!("{:.0}", 180.0 * factor);
    let max_rejoin = pgset_verify::live::DEFAULT_MAX_REJOIN.as_secs_f64() * factor;
    let max_rejoin_arg = max_rejoin.to_string();
    let XtaskRun {
        stdout: json, ok, ..
    } = xtask(
        &spec_file,
        &[
            "verify",
            "--scale-test",
            "--disruptive",
            "-o",
            "json",
            "--timeout",
            &timeout,
            "--max-rejoin-seconds",
            &max_rejoin_arg,
        ],
    );
    let report: Report = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_all_passed(&report, "first verify");
    assert!(ok, "verify exits 0 when every check passes");
    let lag = report
        .measurements(names::REPLICATED_WRITE)
        .lag_ms
        .expect("lag measured");
    assert!((0.0..30_000.0 * factor).contains(&lag), "lag {lag} ms");
    let recovery = report.measurements(names::MASTER_RECOVERY);
    assert!(recovery.recovery_s.expect("recovery measured") > 0.0);
    let rejoin = recovery.rejoin_s.expect("rejoin measured");
    assert!(
        (0.0..=max_rejoin).contains(&rejoin),
        "a passing master-recovery check has its replicas back within the bound: {rejoin} s"
    );
    assert!(report.measurements(names::SCALE_OUT).join_s.is_some());
    // The scale test waited until the master dropped the removed member's slot, and said so:
    // status right after it is healthy, with no slot kept for a member outside the set.
    let scale = report
        .checks
        .iter()
        .find(|c| c.name == names::SCALE_OUT)
        .expect("the scale check");
    let removed_slot = pgset_spec::slot_name(&spec.pod_name(spec.replicas));
    assert!(
        scale
            .message
            .contains(&format!("slot {removed_slot} dropped")),
        "{}",
        scale.message
    );
    let right_after = xtask(&spec_file, &["status", "-o", "json"]);
    let st: ClusterStatus = serde_json::from_str(&right_after.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", right_after.stdout));
    assert!(
        right_after.ok && st.healthy,
        "status right after verify --scale-test: {:?}",
        st.warnings
    );
    assert!(
        !marker_table_present(&client, &spec).await,
        "verify dropped its marker table"
    );

    // The scale test handed spec.replicas back to pgset's field manager: a deploy after it
    // changes nothing (the StatefulSet keeps its resourceVersion).
    let before = settled_statefulset(&client, &spec).await;
    let owners = before.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        !owners
            .iter()
            .any(|e| e.subresource.as_deref() == Some("scale")),
        "the scale test left an owner of the scale subresource: {owners:#?}"
    );
    deploy(&client, &spec, ApplyMode::Apply, &mut |line: &str| {
        eprintln!("    {line}")
    })
    .await
    .expect("deploy after verify --scale-test");
    let after = settled_statefulset(&client, &spec).await;
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "deploy after verify --scale-test changed the StatefulSet: {:#?}",
        after.metadata.managed_fields
    );

    // The scale test and the master's deletion left the cluster as it was: a second run passes.
    let XtaskRun {
        stdout: json, ok, ..
    } = xtask(&spec_file, &["verify", "-o", "json", "--timeout", &timeout]);
    let again: Report = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(ok);
    assert_eq!(again.checks[7].verdict, Verdict::Skipped);
    assert_eq!(again.checks[8].verdict, Verdict::Skipped);
    assert!(
        again.checks[..7].iter().all(|c| c.verdict == Verdict::Pass),
        "{:#?}",
        again.checks
    );

    let XtaskRun {
        stdout: json, ok, ..
    } = xtask(&spec_file, &["status", "-o", "json"]);
    assert!(ok, "status exits 0");
    let status: ClusterStatus =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!((status.desired, status.ready), (3, 3));
    // The master is the member the cluster names; the disruptive check may have moved it.
    let master = status.master.master.clone().expect("a master");
    assert!(status.master.problems.is_empty(), "{:?}", status.master);
    let roles: Vec<(&str, &str, &str)> = status
        .members
        .iter()
        .map(|m| (m.pod.as_str(), m.role.as_str(), m.streaming.as_str()))
        .collect();
    let want: Vec<(&str, &str, &str)> = status
        .members
        .iter()
        .map(|m| {
            if m.pod == master {
                (m.pod.as_str(), "master", "primary (2 walsender(s))")
            } else {
                (m.pod.as_str(), "replica", "streaming")
            }
        })
        .collect();
    assert_eq!(roles, want);
    assert!(status.healthy, "{:?}", status.warnings);
    let s = &status.summary;
    assert_eq!(s.master, master);
    assert_eq!((s.members_ready, s.members_total), (3, 3));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &spec.namespace);
    let secret = secrets.get(&spec.secret_name()).await.expect("the Secret");
    let cluster_id = secret
        .data
        .as_ref()
        .and_then(|d| d.get(pgset_spec::contract::secret::CLUSTER_ID_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).to_string());
    assert_eq!(
        s.cluster_id, cluster_id,
        "the record's cluster id is the Secret's"
    );
    for (what, v) in [
        ("system identifier", &s.system_identifier),
        ("PostgreSQL version", &s.postgres_version),
        ("master LSN", &s.master_lsn),
    ] {
        assert!(
            v.as_deref().is_some_and(|v| !v.is_empty()),
            "{what} missing: {s:?}"
        );
    }
    assert!(s.master_uptime_s.is_some_and(|u| u >= 0.0), "{s:?}");
    assert!(s.timeline.is_some_and(|t| t >= 1), "{s:?}");
    for m in &status.members {
        let want = if m.pod == master {
            spec.master_service_name()
        } else {
            spec.replica_service_name()
        };
        assert_eq!(
            m.services,
            [want],
            "each role Service routes to its members"
        );
    }
    for m in &status.members {
        assert_eq!(m.identity, "accepted", "{}", m.pod);
        assert!(m.agent_version.is_some(), "{}: no agent version", m.pod);
        assert!(m.pod_ip.is_some(), "{}: no pod IP", m.pod);
        assert_eq!(m.timeline, s.timeline, "{}", m.pod);
    }
    for m in &status.members[1..] {
        let slot = m
            .slot
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no slot", m.pod));
        assert!(slot.active, "{}: slot {slot:?}", m.pod);
    }
    let yaml = xtask(&spec_file, &["status", "-o", "yaml"]);
    assert!(yaml.ok, "status -o yaml exits 0");
    let from_yaml: ClusterStatus =
        serde_saphyr::from_str(&yaml.stdout).unwrap_or_else(|e| panic!("{e}: {}", yaml.stdout));
    assert_eq!(from_yaml.summary.cluster_id, s.cluster_id);
    let table = xtask(&spec_file, &["status"]);
    assert!(table.ok);
    assert!(
        table
            .stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("cluster pgset-verify  cluster id ")),
        "{}",
        table.stdout
    );

    // Verify against a cluster that is not there: one clear error, non-zero exit.
    let absent = xtask(&spec_file, &["verify", "--name", "absent"]);
    assert!(!absent.ok, "verify of a missing cluster fails");
}

#[tokio::test]
async fn verify_and_status_on_a_cluster_of_its_own() {
    support::on_a_cluster_of_its_own(
        "verify_and_status_on_a_cluster_of_its_own",
        CLUSTER,
        3,
        scenario,
    )
    .await;
}
