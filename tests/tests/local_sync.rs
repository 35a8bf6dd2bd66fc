//! Local mode on real PostgreSQL, synchronous replication (`replication.synchronous`): the
//! master names streaming replicas in `synchronous_standby_names` and, once caught up, on the
//! leader record; a named replica that stops is replaced (required) or dropped (preferred) so
//! no write waits for a member that is gone; on failover only a replica on the record's list
//! is promoted, with every acknowledged row.

#[path = "support/local.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_local as local;
use pgset_spec::{Durability, Synchronous};
use support::{TestSet, pg_or_skip, wait_until};

const SECOND: Duration = Duration::from_secs(1);

/// The sets take their turns: each runs three members on a small machine.
static ONE_SET_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The leader record's list of replicas holding every acknowledged commit.
fn listed(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("pgset.leader")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["notes"]["pgset.io/synchronous"]
        .as_str()
        .map(str::to_string)
}

fn holder(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("pgset.leader")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["holder"]["member"].as_str().map(str::to_string)
}

fn names(t: &TestSet, k: i32) -> String {
    t.sql(k, "SHOW synchronous_standby_names")
        .unwrap_or_else(|e| format!("<{e}>"))
}

fn synchronous(durability: Durability) -> Option<Synchronous> {
    Some(Synchronous {
        number: 1,
        durability,
    })
}

/// Waits until the master `k` names exactly `member` and the record lists it.
fn wait_named_and_listed(t: &TestSet, k: i32, member: &str) {
    let want = format!("FIRST 1 (\"{member}\")");
    wait_until(
        &format!("the master names {member} and the record lists it"),
        120 * SECOND,
        || names(t, k) == want && listed(t.dir()).as_deref() == Some(member),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_moves_to_a_streaming_replica_and_never_waits_for_a_member_scaled_away() {
    if pg_or_skip("local_sync_required").is_none() {
        return;
    }
    let _turn = ONE_SET_AT_A_TIME.lock().await;
    let mut t = TestSet::new(3, 29710);
    t.opts.synchronous = synchronous(Durability::Required);
    local::up(&t.opts).await.expect("set up");
    wait_named_and_listed(&t, 0, "pgset-1");
    t.sql(0, "CREATE TABLE s (n int); INSERT INTO s VALUES (1)")
        .unwrap();
    assert_eq!(
        t.sql(
            0,
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgset-1'"
        )
        .unwrap(),
        "sync"
    );
    assert_eq!(
        t.sql(
            0,
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgset-2'"
        )
        .unwrap(),
        "async"
    );

    // The named replica stops: the master names the one that streams, and the record lists
    // it once it caught up; commits go on.
    local::stop_member(t.dir(), "pgset-1", 120 * SECOND)
        .await
        .unwrap();
    wait_named_and_listed(&t, 0, "pgset-2");
    t.sql(0, "INSERT INTO s VALUES (2)").unwrap();
    t.wait_for(2, "SELECT count(*) FROM s", "2", 30 * SECOND);

    // pgset-2 is scaled away while pgset-1 is back: the names follow the membership.
    t.opts.replicas = 2;
    local::up(&t.opts).await.expect("scaled to 2");
    wait_named_and_listed(&t, 0, "pgset-1");
    t.sql(0, "INSERT INTO s VALUES (3)").unwrap();
    t.wait_for(1, "SELECT count(*) FROM s", "3", 30 * SECOND);

    // A whole restart in order: the master becomes ready before any replica runs (its own
    // writes do not wait for them), then the replicas join and commits go on.
    local::down(t.dir(), false).await.unwrap();
    local::up(&t.opts).await.expect("an ordered restart");
    wait_named_and_listed(&t, 0, "pgset-1");
    t.sql(0, "INSERT INTO s VALUES (4)").unwrap();
    assert!(
        t.log(0)
            .contains("the leader record names no replica as holding")
            || t.log(0)
                .contains("synchronous_standby_names = 'FIRST 1 (\"pgset-1\")'"),
        "the master says what it changed:\n{}",
        t.log(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_goes_asynchronous_when_no_replica_streams_and_back() {
    if pg_or_skip("local_sync_preferred").is_none() {
        return;
    }
    let _turn = ONE_SET_AT_A_TIME.lock().await;
    let mut t = TestSet::new(2, 29720);
    t.opts.synchronous = synchronous(Durability::Preferred);
    local::up(&t.opts).await.expect("set up");
    wait_named_and_listed(&t, 0, "pgset-1");
    local::stop_member(t.dir(), "pgset-1", 120 * SECOND)
        .await
        .unwrap();
    wait_until(
        "the master names no replica and the record lists none",
        120 * SECOND,
        || names(&t, 0).is_empty() && listed(t.dir()).as_deref() == Some(""),
    );
    // Asynchronous now: a commit does not wait for the stopped replica.
    t.sql(0, "CREATE TABLE p (n int); INSERT INTO p VALUES (1)")
        .unwrap();
    local::up(&t.opts).await.expect("pgset-1 back");
    wait_named_and_listed(&t, 0, "pgset-1");
    t.wait_for(1, "SELECT count(*) FROM p", "1", 30 * SECOND);

    // Switched off: the record's list and the names are undone, so no commit waits.
    local::down(t.dir(), false).await.unwrap();
    t.opts.synchronous = None;
    local::up(&t.opts)
        .await
        .expect("the set without synchronous replication");
    wait_until(
        "the names and the record's list are gone",
        120 * SECOND,
        || names(&t, 0).is_empty() && listed(t.dir()).is_none(),
    );
    local::stop_member(t.dir(), "pgset-1", 120 * SECOND)
        .await
        .unwrap();
    t.sql(0, "INSERT INTO p VALUES (2)").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failover_only_the_listed_replica_is_promoted_and_has_every_acknowledged_row() {
    if pg_or_skip("local_sync_failover").is_none() {
        return;
    }
    let _turn = ONE_SET_AT_A_TIME.lock().await;
    let mut t = TestSet::new(3, 29730);
    t.opts.synchronous = synchronous(Durability::Required);
    local::up(&t.opts).await.expect("set up");
    wait_named_and_listed(&t, 0, "pgset-1");
    // Move the list to pgset-2, then bring pgset-1 back: it streams (and received as much),
    // but only pgset-2 is listed.
    local::stop_member(t.dir(), "pgset-1", 120 * SECOND)
        .await
        .unwrap();
    wait_named_and_listed(&t, 0, "pgset-2");
    local::up(&t.opts).await.expect("pgset-1 back");
    t.sql(0, "CREATE TABLE acked (n bigint PRIMARY KEY)")
        .unwrap();
    t.wait_for(1, "SELECT count(*) FROM acked", "0", 60 * SECOND);
    assert_eq!(listed(t.dir()).as_deref(), Some("pgset-2"));

    let writer = tokio::spawn(support::write_until(
        t.dir().join("run"),
        t.port(0),
        Instant::now() + 4 * SECOND,
    ));
    tokio::time::sleep(3 * SECOND).await;
    // The master dies with its agent, as a pod does.
    let pm = support::postmaster_of(t.dir(), "pgset-0");
    let agent = local::agent_pid(t.dir(), "pgset-0").unwrap();
    kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
    let _ = kill(Pid::from_raw(-pm), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pm), Signal::SIGKILL);
    let acked: Vec<i64> = writer.await.unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(!acked.is_empty(), "rows were acknowledged before the kill");

    wait_until("a new master holds the record", 180 * SECOND, || {
        holder(t.dir()).is_some_and(|h| h != "pgset-0")
    });
    assert_eq!(holder(t.dir()).as_deref(), Some("pgset-2"));
    t.wait_for(2, "SELECT pg_is_in_recovery()", "f", 60 * SECOND);
    let have: std::collections::BTreeSet<i64> = t
        .sql(2, "SELECT n FROM acked")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .filter(|n| !have.contains(n))
        .copied()
        .collect();
    println!(
        "synchronous failover: {} acknowledged rows, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on the new master: {lost:?}"
    );
    // pgset-1 (the lower ordinal, which wins a tie without synchronous replication) was not
    // promoted: it follows pgset-2.
    t.wait_for(1, "SELECT pg_is_in_recovery()", "t", 60 * SECOND);
    t.wait_for(
        2,
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgset-1'",
        "1",
        120 * SECOND,
    );
}
