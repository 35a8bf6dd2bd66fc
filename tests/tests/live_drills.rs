//! Against a live cluster (KUBECONFIG): a 3-member cluster of its own, then `cargo xtask drill all
//! -o json` runs every pod-level drill (master-pod-delete, the failover drills master-freeze,
//! master-isolated and rejoin, replica-pod-delete, postgres-kill, agent-restart-during-basebackup,
//! scale-down-up, master-restart-under-load, and nfs-restart when the test runs on the NFS host) under a writer through the master Service and a reader through
//! the replica Service. Each drill must lose no committed row (on the master and on every
//! replica), recover within the targets (writes accepted again within 10 s of the master pod's
//! deletion; replicas streaming within 2 s of the master being ready), copy no member anew
//! unless it changes the membership, and leave the cluster as it found it: `status` healthy with
//! 3 members afterwards. A drill refuses to start on an unhealthy cluster (its JSON still names it
//! and why it did not run) and a drill of local mode is refused against the cluster, both before
//! anything changes.
//!
//! Storage as in `live_verify` (`PGSET_LIVE_STORAGE_CLASS`, or `PGSET_LIVE_NFS_SERVER` and
//! `PGSET_LIVE_NFS_EXPORT`); the agent image must be on the nodes.
//!
//! Deadlines: the drills scale their waits with the round trip of their first connection; on a
//! machine much slower than the reference (a 2-CPU node), `PGSET_LIVE_PATIENCE=FACTOR` (default 1)
//! is passed as `--patience` and the recovery targets asserted here are multiplied by it.

use kube::Client;
use pgset_drill::report::DrillRun;
use pgset_drill::report::{REJOIN_TARGET_S, WRITE_RECOVERY_TARGET_S};
use pgset_drill::{DrillName, Verdict};
use pgset_spec::{ClusterSpec, ValidSpec};
use pgset_verify::ClusterStatus;
use support::xtask;

#[path = "support/live.rs"]
mod support;

use support::patience;

const CLUSTER: &str = "pgset-drill";

/// `status` is healthy with 3 members Ready, looking again every 2 s for up to 60 s (times the
/// patience): a member may still be settling (a replica catching up) when the step before ends.
fn assert_cluster_as_found(spec_file: &std::path::Path, after: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(60.0 * patience());
    loop {
        let status = xtask(spec_file, &["status", "-o", "json"]);
        let s: ClusterStatus = serde_json::from_str(&status.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", status.stdout));
        if (status.ok && s.healthy && (s.desired, s.ready) == (3, 3))
            || std::time::Instant::now() > until
        {
            assert!(status.ok && s.healthy, "after {after}: {:?}", s.warnings);
            assert_eq!((s.desired, s.ready), (3, 3), "after {after}");
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

async fn scenario(client: Client, spec: ValidSpec) {
    let (dir, spec_file) = support::deploy_own_cluster(&client, &spec).await;
    assert_cluster_as_found(&spec_file, "the rollout");

    // A drill of local mode is refused against the cluster before anything runs.
    let foreign = xtask(&spec_file, &["drill", "master-restart"]);
    assert!(!foreign.ok);
    assert!(
        foreign
            .stderr
            .contains("runs against a local set: add --dir DIR"),
        "{}",
        foreign.stderr
    );

    let factor = patience();
    let factor_arg = factor.to_string();
    let run = xtask(
        &spec_file,
        &["drill", "all", "-o", "json", "--patience", &factor_arg],
    );
    // The output names every drill, whether it ran or not (and why not).
    let out: DrillRun =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    // Without ValidatingAdmissionPolicy, master-isolated cannot single out one member: it says
    // so and does not run.
    let no_policy = out.not_run.iter().any(|n| {
        n.drill == DrillName::MasterIsolated
            && n.why
                .contains("does not serve admissionregistration.k8s.io/v1")
    });
    assert!(
        out.not_run
            .iter()
            .all(|n| n.drill == DrillName::MasterIsolated && no_policy),
        "drills that did not run: {:?}",
        out.not_run
    );
    let reports = out.reports;
    let names: Vec<DrillName> = reports.iter().map(|r| r.drill).collect();
    let on_nfs_host = pgset_drill::live::on_nfs_host(&spec);
    let expected: Vec<DrillName> = DrillName::LIVE
        .into_iter()
        .filter(|d| *d != DrillName::NfsRestart || on_nfs_host)
        .filter(|d| *d != DrillName::MasterIsolated || !no_policy)
        .collect();
    assert_eq!(names, expected, "every live drill ran, in order");
    for r in &reports {
        let d = r.drill;
        // A new member that came up without a base backup to interrupt is reported, not passed.
        if d == DrillName::AgentRestartDuringBasebackup && r.verdict != Verdict::Pass {
            eprintln!("{d}: {:?} {:?}", r.verdict, r.problems);
        }
        assert_eq!(r.rows_missing, 0, "{d}: committed rows lost on the master");
        assert_eq!(
            r.rows_missing_on_replicas, 0,
            "{d}: committed rows missing on a replica"
        );
        assert!(r.rows_committed > 0, "{d}: the writer committed nothing");
        assert!(r.healthy_after, "{d}: not healthy again: {:?}", r.steps);
        if !d.may_reclone() {
            assert!(r.recloned.is_empty(), "{d}: copied anew {:?}", r.recloned);
        }
        if d == DrillName::MasterPodDelete {
            let back = r
                .writes_accepted_again_after_s
                .expect("writes were refused and accepted again");
            assert!(
                back <= WRITE_RECOVERY_TARGET_S * factor,
                "{d}: writes accepted again after {back} s"
            );
            let rejoin = r
                .streaming_after_master_ready_s
                .expect("streaming measured after the master was ready");
            assert!(
                rejoin <= REJOIN_TARGET_S * factor,
                "{d}: replicas streaming {rejoin} s after the master was ready"
            );
        }
        assert_eq!(r.verdict, Verdict::Pass, "{d}: {:?}", r.problems);
    }
    assert!(
        run.ok || no_policy,
        "drill all exits 0 when every drill passes"
    );
    // rejoin keeps what the replica promoted by hand wrote: removed as `status` says, the
    // cluster is as it was found.
    let exec = pgset_verify::exec::PodExec::new(
        kube::Api::namespaced(client.clone(), &spec.namespace),
        std::time::Duration::from_secs_f64(60.0 * factor),
    );
    for k in reports.iter().flat_map(|r| &r.kept_diverged) {
        let rm = exec
            .run(
                &k.member,
                pgset_spec::contract::POSTGRES_CONTAINER,
                &["rm".to_string(), "-r".into(), k.path.clone()],
            )
            .await
            .expect("exec rm");
        assert!(rm.success(), "remove {}: {}", k.path, rm.failure_summary());
    }
    assert_cluster_as_found(&spec_file, "the drills");

    // An unhealthy cluster: no drill starts, nothing changes.
    let unhealthy_spec = ClusterSpec {
        replicas: 4,
        ..spec.clone().into_inner()
    };
    let unhealthy_file = dir.path().join("pgset-4.yaml");
    std::fs::write(&unhealthy_file, unhealthy_spec.to_yaml()).expect("write the spec file");
    let refused = xtask(
        &unhealthy_file,
        &["drill", "replica-pod-delete", "-o", "json"],
    );
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("not healthy, so no drill was started"),
        "{}",
        refused.stderr
    );
    // The JSON still names the drill and why it did not run.
    let out: DrillRun =
        serde_json::from_str(&refused.stdout).unwrap_or_else(|e| panic!("{e}: {}", refused.stdout));
    assert!(out.reports.is_empty(), "{out:?}");
    assert_eq!(out.not_run.len(), 1, "{out:?}");
    assert_eq!(out.not_run[0].drill, DrillName::ReplicaPodDelete);
    assert!(
        out.not_run[0]
            .why
            .contains("not healthy, so no drill was started"),
        "{out:?}"
    );
    assert_cluster_as_found(&spec_file, "the refused drill");
}

#[tokio::test]
async fn every_pod_level_drill_loses_nothing_and_leaves_the_cluster_as_it_was() {
    support::on_a_cluster_of_its_own(
        "every_pod_level_drill_loses_nothing_and_leaves_the_cluster_as_it_was",
        CLUSTER,
        3,
        scenario,
    )
    .await;
}
