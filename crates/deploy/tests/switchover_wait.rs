//! The waits that follow a switchover or a manual failover, against a scripted API server: each
//! reads the leader Lease and the pods every half second, only reads while it waits, and ends
//! done (the target holds the Lease under its own pod UID, Ready with the master label; for a
//! switchover also the old master streaming again), refused (the outcome the master wrote), or
//! timed out (saying what was still missing; a manual failover's request withdrawn from the
//! Lease by one merge patch on the version read, only when it is still ours).

#[allow(dead_code)]
mod mock_api;

use std::time::Duration;

use mock_api::{Call, mock_client};
use pgset_deploy::switchover::{wait_failover, wait_switchover};
use pgset_spec::contract::{SwitchoverOutcome, SwitchoverRequest};
use pgset_spec::{ClusterSpec, ValidSpec};
use serde_json::{Value, json};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn spec() -> ValidSpec {
    ClusterSpec::default().validated().unwrap()
}

/// The leader Lease held by `member` (holder `uid-<k>`), with `notes` added.
fn lease(member: &str, version: u64, notes: &[(&str, String)]) -> Value {
    let mut l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "pgset-leader", "namespace": "default",
                        "resourceVersion": version.to_string(),
                        "annotations": {"pgset.io/leader-member": member,
                                        "pgset.io/leader-timeline": "4"}},
           "spec": {"holderIdentity": format!("uid-{}", &member[6..]), "leaseDurationSeconds": 15}});
    for (k, v) in notes {
        l["metadata"]["annotations"][*k] = json!(v);
    }
    l
}

fn pod(k: i32, phase: &str, ready: bool, role: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("pgset-{k}"), "namespace": "default", "uid": format!("uid-{k}"),
                        "labels": {"role": role},
                        "annotations": {"pgset.io/phase": phase}},
           "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn pods(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
           "items": items})
}

fn outcome(request: &SwitchoverRequest, state: &str, reason: Option<&str>) -> String {
    SwitchoverOutcome {
        id: request.id.clone(),
        state: state.into(),
        from: "pgset-0".into(),
        to: request.to.clone(),
        lsn: Some("0/5000028".into()),
        timeline: 4,
        reason: reason.map(String::from),
    }
    .to_note()
}

fn lines(calls: &mock_api::Calls) -> Vec<String> {
    calls.lock().unwrap().iter().map(Call::line).collect()
}

/// `n` reads of the Lease and the pods, in that order.
fn reads(n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|_| [format!("GET {LEASE}"), format!("GET {PODS}")])
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_switchover_wait_ends_once_the_target_is_the_ready_master_and_the_old_one_streams() {
    let request = SwitchoverRequest::new(Some("pgset-1"));
    let handed = outcome(&request, SwitchoverOutcome::HANDED_OVER, None);
    let mut round = 0;
    let (client, calls) = mock_client(move |call: &Call| match call.path.as_str() {
        LEASE => {
            round += 1;
            match round {
                // Not answered yet.
                1 => (200, lease("pgset-0", 5, &[])),
                // Handed over: pgset-1 holds the Lease, but is not Ready as master yet.
                2 => (
                    200,
                    lease(
                        "pgset-1",
                        7,
                        &[("pgset.io/switchover-outcome", handed.clone())],
                    ),
                ),
                _ => (
                    200,
                    lease(
                        "pgset-1",
                        8,
                        &[("pgset.io/switchover-outcome", handed.clone())],
                    ),
                ),
            }
        }
        PODS => (
            200,
            pods(match round {
                1 => vec![
                    pod(0, "running", true, "master"),
                    pod(1, "streaming", true, "replica"),
                ],
                2 => vec![
                    pod(0, "stopping", false, "replica"),
                    pod(1, "promoting", false, "replica"),
                ],
                // The new master Ready and labelled; the old one still rewinding.
                3 => vec![
                    pod(0, "rewinding", false, "replica"),
                    pod(1, "running", true, "master"),
                ],
                _ => vec![
                    pod(0, "streaming", true, "replica"),
                    pod(1, "running", true, "master"),
                ],
            }),
        ),
        other => panic!("unexpected request {other}"),
    });
    let done = wait_switchover(
        &client,
        &spec(),
        "pgset-0",
        &request,
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    assert_eq!(done.to, "pgset-1");
    assert_eq!(done.timeline, Some(4));
    assert_eq!(done.lsn.as_deref(), Some("0/5000028"));
    assert_eq!(
        done.old_master,
        "pgset-0 streams from pgset-1 as its replica"
    );
    assert_eq!(lines(&calls), reads(4), "only reads, four rounds");
}

#[tokio::test(start_paused = true)]
async fn a_switchover_wait_ends_with_the_masters_refusal_and_its_reason() {
    let request = SwitchoverRequest::new(Some("pgset-1"));
    let refused = outcome(
        &request,
        SwitchoverOutcome::REFUSED,
        Some("pgset-1 is 40 MB behind; wait until it caught up"),
    );
    let mut round = 0;
    let (client, calls) = mock_client(move |call: &Call| match call.path.as_str() {
        LEASE => {
            round += 1;
            let notes = if round > 1 {
                vec![("pgset.io/switchover-outcome", refused.clone())]
            } else {
                vec![]
            };
            (200, lease("pgset-0", 5, &notes))
        }
        PODS => (
            200,
            pods(vec![
                pod(0, "running", true, "master"),
                pod(1, "streaming", true, "replica"),
            ]),
        ),
        other => panic!("unexpected request {other}"),
    });
    let e = wait_switchover(
        &client,
        &spec(),
        "pgset-0",
        &request,
        Duration::from_secs(300),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the switchover was refused by the master pgset-0: pgset-1 is 40 MB behind"),
        "{e}"
    );
    assert_eq!(lines(&calls), reads(2));
}

#[tokio::test(start_paused = true)]
async fn an_outcome_of_another_request_is_not_this_ones_and_the_wait_times_out_saying_what_is_missing()
 {
    let request = SwitchoverRequest::new(Some("pgset-1"));
    let earlier = SwitchoverRequest::new(Some("pgset-2"));
    let other = outcome(
        &earlier,
        SwitchoverOutcome::REFUSED,
        Some("an older answer"),
    );
    let (client, calls) = mock_client(move |call: &Call| match call.path.as_str() {
        LEASE => (
            200,
            lease(
                "pgset-0",
                5,
                &[("pgset.io/switchover-outcome", other.clone())],
            ),
        ),
        PODS => (
            200,
            pods(vec![
                pod(0, "running", true, "master"),
                pod(1, "streaming", true, "replica"),
            ]),
        ),
        other => panic!("unexpected request {other}"),
    });
    let e = wait_switchover(&client, &spec(), "pgset-0", &request, Duration::ZERO)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "the switchover (request {}) did not complete within 0 s: the master pgset-0 did not \
             answer the request",
            request.id
        )),
        "{e}"
    );
    assert!(!e.contains("older answer"), "{e}");
    assert_eq!(lines(&calls), reads(1));
}

#[tokio::test(start_paused = true)]
async fn a_failover_wait_ends_once_the_target_holds_the_lease_ready_as_master() {
    let request = SwitchoverRequest::new(Some("pgset-1"));
    let asked = request.to_note();
    let promoted = outcome(&request, SwitchoverOutcome::PROMOTED, None);
    let mut round = 0;
    let (client, calls) = mock_client(move |call: &Call| match call.path.as_str() {
        LEASE => {
            round += 1;
            if round == 1 {
                // Not taken yet: the old master's Lease, with the request on it.
                (
                    200,
                    lease("pgset-0", 5, &[("pgset.io/failover-to", asked.clone())]),
                )
            } else {
                (
                    200,
                    lease(
                        "pgset-1",
                        6,
                        &[("pgset.io/switchover-outcome", promoted.clone())],
                    ),
                )
            }
        }
        PODS => (
            200,
            pods(match round {
                1 => vec![pod(1, "streaming", true, "replica")],
                // Holds the Lease, not Ready yet.
                2 => vec![pod(1, "promoting", false, "replica")],
                _ => vec![pod(1, "running", true, "master")],
            }),
        ),
        other => panic!("unexpected request {other}"),
    });
    let done = wait_failover(
        &client,
        &spec(),
        "pgset-0",
        "pgset-1",
        &request,
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    assert_eq!(
        (done.from.as_str(), done.to.as_str()),
        ("pgset-0", "pgset-1")
    );
    assert_eq!(done.lsn.as_deref(), Some("0/5000028"), "the outcome's LSN");
    assert_eq!(lines(&calls), reads(3), "only reads: nothing withdrawn");
}

#[tokio::test(start_paused = true)]
async fn a_failover_wait_that_times_out_withdraws_its_own_request_on_the_version_read() {
    let request = SwitchoverRequest::new(Some("pgset-1"));
    let asked = request.to_note();
    let (client, calls) =
        mock_client(
            move |call: &Call| match (call.method.as_str(), call.path.as_str()) {
                ("GET", LEASE) => (
                    200,
                    lease("pgset-0", 9, &[("pgset.io/failover-to", asked.clone())]),
                ),
                ("GET", PODS) => (200, pods(vec![pod(1, "streaming", true, "replica")])),
                ("PATCH", LEASE) => (200, lease("pgset-0", 10, &[])),
                other => panic!("unexpected request {other:?}"),
            },
        );
    let e = wait_failover(
        &client,
        &spec(),
        "pgset-0",
        "pgset-1",
        &request,
        Duration::ZERO,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pgset-1 did not take the leader Lease within 0 s of the request (withdrawn)"),
        "{e}"
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(Call::line).collect::<Vec<_>>(),
        [
            format!("GET {LEASE}"),
            format!("GET {PODS}"),
            format!("PATCH {LEASE}")
        ]
    );
    let patch = &calls[2];
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(
        patch.body,
        json!({"metadata": {"resourceVersion": "9", "annotations": {"pgset.io/failover-to": null}}}),
        "only the request is removed, on the version read"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failover_wait_that_times_out_leaves_another_request_alone() {
    let request = SwitchoverRequest::new(Some("pgset-1"));
    let someone_elses = SwitchoverRequest::new(Some("pgset-2")).to_note();
    let (client, calls) =
        mock_client(
            move |call: &Call| match (call.method.as_str(), call.path.as_str()) {
                ("GET", LEASE) => (
                    200,
                    lease(
                        "pgset-0",
                        9,
                        &[("pgset.io/failover-to", someone_elses.clone())],
                    ),
                ),
                ("GET", PODS) => (200, pods(vec![pod(1, "streaming", true, "replica")])),
                other => panic!("unexpected request {other:?}"),
            },
        );
    let e = wait_failover(
        &client,
        &spec(),
        "pgset-0",
        "pgset-1",
        &request,
        Duration::ZERO,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("did not take the leader Lease within 0 s"),
        "{e}"
    );
    assert_eq!(lines(&calls), reads(1), "nothing written");
}
