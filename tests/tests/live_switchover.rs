//! Against a live cluster (KUBECONFIG): `switchover` moves the master role to a named replica
//! and back. The leader Lease names the target under its own pod UID, the target is Ready with
//! `role=master`, the old master streams from it again (no copy: its pod kept its data), a row
//! written before is on the new master, and `verify`'s checks pass after each move.
//!
//! The test deploys a 3-member cluster of its own in a namespace of its own and removes both at
//! the end whether it passed or not.

use std::time::Duration;

use pgset_deploy::master::read_master;
use pgset_deploy::switchover::{request_switchover, wait_switchover};
use pgset_verify::{Options, Verifier};

#[path = "support/live.rs"]
mod support;

/// Moves the master from `from` to `to` and checks what the cluster says after.
async fn switch(client: &kube::Client, spec: &pgset_spec::ValidSpec, from: &str, to: &str) {
    let timeout = Duration::from_secs_f64(300.0 * support::patience());
    let (_, request) = request_switchover(client, spec, Some(to))
        .await
        .unwrap_or_else(|e| panic!("switchover {from} → {to} asked: {e}"));
    let switched = wait_switchover(client, spec, from, &request, timeout)
        .await
        .unwrap_or_else(|e| panic!("switchover {from} → {to}: {e}"));
    eprintln!("{}", switched.line());
    assert_eq!((switched.from.as_str(), switched.to.as_str()), (from, to));
    let master = read_master(client, spec).await.expect("read the master");
    assert_eq!(master.master.as_deref(), Some(to), "{master:?}");
    let report = Verifier::new(client.clone(), spec.clone(), Options::new(spec))
        .run()
        .await;
    support::assert_all_passed(&report, &format!("verify after {from} → {to}"));
}

#[tokio::test]
async fn a_switchover_to_a_replica_and_back_keeps_the_cluster_verified() {
    let test = "a_switchover_to_a_replica_and_back_keeps_the_cluster_verified";
    support::on_a_cluster_of_its_own(test, "swo", 3, |client, spec| async move {
        let _spec_file = support::deploy_own_cluster(&client, &spec).await;
        let (zero, one) = (spec.pod_name(0), spec.pod_name(1));
        switch(&client, &spec, &zero, &one).await;
        switch(&client, &spec, &one, &zero).await;
    })
    .await;
}
