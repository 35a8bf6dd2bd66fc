//! Tests of the mount probe's pure parts: its objects, the nodes it runs on, its verdicts.

use super::*;
use crate::testutil::named_spec;

fn node(name: &str, ready: bool, unschedulable: bool, taints: &[(&str, &str)]) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "unschedulable": unschedulable,
            "taints": taints.iter().map(|(k, e)| serde_json::json!({"key": k, "effect": e})).collect::<Vec<_>>(),
        },
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    }))
    .unwrap()
}

fn pod_in(phase: &str, terminated: Option<serde_json::Value>) -> Pod {
    let mut status = serde_json::json!({"phase": phase});
    if let Some(t) = terminated {
        status["containerStatuses"] = serde_json::json!([{
            "name": PROBE_CONTAINER, "image": "postgres:18", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": t},
        }]);
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": status}))
        .unwrap()
}

#[test]
fn the_probe_mounts_the_clusters_directory_read_only_as_the_postgres_uid_on_its_node() {
    let mut spec = named_spec("db", "prod").into_inner();
    spec.nfs.version = "4.2".into();
    let p = probe_objects(&spec, "10.0.0.5", "worker-1.lab", Duration::from_secs(180));
    let hash = node_hash("worker-1.lab");
    assert_eq!(hash.len(), 8);
    assert_eq!(hash, node_hash("worker-1.lab"), "stable");
    assert_ne!(hash, node_hash("worker-2.lab"));

    // Names: never one of a cluster's own.
    let name = format!("db-doctor-{hash}");
    assert_eq!(p.pod.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(p.claim.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(
        p.volume.metadata.name.as_deref(),
        Some(format!("prod.{name}").as_str())
    );
    assert!(!spec.shared_pv_names().contains(&format!("prod.{name}")));
    for meta in [&p.pod.metadata, &p.claim.metadata, &p.volume.metadata] {
        let l = meta.labels.as_ref().unwrap();
        assert_eq!(l[labels::COMPONENT], "mount-probe");
        assert_eq!(l[labels::MANAGED_BY], "pgset");
        assert_eq!(l[labels::INSTANCE], "db");
        assert!(
            !l.contains_key(labels::NAME),
            "the cluster's selector must never match a probe object"
        );
        assert_eq!(
            meta.annotations.as_ref().unwrap()[NODE_ANNOTATION],
            "worker-1.lab"
        );
    }
    assert_eq!(p.pod.metadata.namespace.as_deref(), Some("prod"));
    assert_eq!(p.claim.metadata.namespace.as_deref(), Some("prod"));

    // The volume: the cluster's directory, the real volumes' options, read-only, pre-bound.
    let vs = p.volume.spec.as_ref().unwrap();
    let nfs = vs.nfs.as_ref().unwrap();
    assert_eq!(
        (nfs.server.as_str(), nfs.path.as_str(), nfs.read_only),
        ("10.0.0.5", "/nfsfileshare/prod.db", Some(true))
    );
    assert_eq!(
        vs.mount_options.as_deref().unwrap(),
        ["hard", "nfsvers=4.2"]
    );
    let claim_ref = vs.claim_ref.as_ref().unwrap();
    assert_eq!(
        (claim_ref.namespace.as_deref(), claim_ref.name.as_deref()),
        (Some("prod"), Some(name.as_str()))
    );
    let cs = p.claim.spec.as_ref().unwrap();
    assert_eq!(cs.volume_name, p.volume.metadata.name);
    assert_eq!(cs.access_modes, vs.access_modes);
    assert_eq!(cs.storage_class_name, vs.storage_class_name);

    // The pod: pinned, never restarted, the members' restricted context, lists only.
    let ps = p.pod.spec.as_ref().unwrap();
    assert_eq!(ps.node_name.as_deref(), Some("worker-1.lab"));
    assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
    assert_eq!(ps.active_deadline_seconds, Some(180));
    assert_eq!(ps.automount_service_account_token, Some(false));
    let psc = ps.security_context.as_ref().unwrap();
    assert_eq!(
        (psc.run_as_user, psc.run_as_group, psc.run_as_non_root),
        (Some(999), Some(999), Some(true))
    );
    assert_eq!(psc.fs_group, None, "nothing on the export is chowned");
    let c = &ps.containers[0];
    assert_eq!(c.image.as_deref(), Some(spec.postgres.image.as_str()));
    assert_eq!(
        c.command.as_deref().unwrap(),
        ["ls", "-la", "--", contract::DATA_MOUNT]
    );
    assert_eq!(
        c.security_context,
        Some(restricted_security_context(&spec)),
        "the StatefulSet's container context"
    );
    let csc = c.security_context.as_ref().unwrap();
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(csc.read_only_root_filesystem, Some(true));
    let m = &c.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (m.mount_path.as_str(), m.read_only),
        (contract::DATA_MOUNT, Some(true))
    );
    let v = &ps.volumes.as_ref().unwrap()[0];
    let pvc = v.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(
        (pvc.claim_name.as_str(), pvc.read_only),
        (name.as_str(), Some(true))
    );

    // The default cluster's probe volume is still dotted: never one of pv1..pvN.
    let default = ClusterSpec::default();
    assert!(probe_volume_name(&default, "n").starts_with("default.pgset-doctor-"));
    assert_eq!(
        probe_objects(&default, "s", "n", Duration::from_secs(1))
            .volume
            .spec
            .unwrap()
            .nfs
            .unwrap()
            .path,
        "/nfsfileshare"
    );
}

#[test]
fn probes_run_on_ready_schedulable_untainted_nodes() {
    let cp = [("node-role.kubernetes.io/control-plane", "NoSchedule")];
    let nodes = vec![
        node("cp", true, false, &cp),
        node(
            "w1",
            true,
            false,
            &[("example.com/soft", "PreferNoSchedule")],
        ),
        node("w2", false, false, &[]),
        node("w3", true, true, &[]),
        node("w4", true, false, &[("dedicated", "NoExecute")]),
    ];
    let spec = ClusterSpec::default();
    let (on, off) = probe_nodes(&nodes, &spec);
    assert_eq!(on, ["w1"]);
    assert_eq!(
        off,
        [
            (
                "cp".to_string(),
                "tainted node-role.kubernetes.io/control-plane:NoSchedule".to_string()
            ),
            ("w2".into(), "not Ready".into()),
            ("w3".into(), "cordoned".into()),
            ("w4".into(), "tainted dedicated:NoExecute".into()),
        ]
    );
    let tolerant = ClusterSpec {
        tolerate_control_plane: true,
        ..spec
    };
    assert_eq!(probe_nodes(&nodes, &tolerant).0, ["cp", "w1"]);
}

#[test]
fn the_verdict_comes_from_the_pods_phase_and_its_containers_end() {
    assert_eq!(verdict(Some(&pod_in("Succeeded", None))), Verdict::Mounted);
    let failed = pod_in(
        "Failed",
        Some(serde_json::json!({
            "exitCode": 2, "reason": "Error",
            "message": "ls: cannot open directory '/pgdata': Permission denied\n",
        })),
    );
    assert_eq!(
        verdict(Some(&failed)),
        Verdict::Failed(
            "the probe exited 2 (Error): ls: cannot open directory '/pgdata': Permission denied"
                .into()
        )
    );
    let mut deadline = pod_in("Failed", None);
    let status = deadline.status.as_mut().unwrap();
    status.reason = Some("DeadlineExceeded".into());
    status.message = Some("Pod was active on the node longer than the specified deadline".into());
    assert_eq!(
        verdict(Some(&deadline)),
        Verdict::Failed("the pod failed before its container ran; pod DeadlineExceeded: Pod was active on the node longer than the specified deadline".into())
    );
    match verdict(Some(&pod_in("Pending", None))) {
        Verdict::Unfinished(state) => assert!(state.starts_with("Pending"), "{state}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(verdict(None), Verdict::Failed(why) if why.contains("disappeared")));
}

#[test]
fn each_node_gets_one_finding_with_the_fix_when_it_failed() {
    let spec = ClusterSpec::default();
    let found = diagnoses(
        &spec,
        "10.0.0.5",
        &[
            NodeMount {
                node: "w1".into(),
                mounted: true,
                detail: "mounted and listed".into(),
            },
            NodeMount {
                node: "w2".into(),
                mounted: false,
                detail: "events: FailedMount: mount.nfs: access denied by server".into(),
            },
        ],
    );
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].health, Health::Pass);
    assert_eq!(
        found[0].message,
        "node w1: a pod mounted 10.0.0.5:/nfsfileshare (hard, nfsvers=4.1) and listed it as uid 999"
    );
    assert_eq!(found[1].health, Health::Fail);
    assert!(found[1].message.contains("access denied by server"));
    let fix = found[1].fix.as_deref().unwrap();
    assert!(
        fix.starts_with("on node w2:") && fix.contains("mount.nfs"),
        "{fix}"
    );
    assert!(found.iter().all(|d| d.name == DIAGNOSIS));
}
