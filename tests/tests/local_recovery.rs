//! Local mode on real PostgreSQL, the recovery paths: an agent killed in the middle of a replica's
//! base backup is restarted and the copy is redone; a replica whose WAL the primary no longer has
//! (its slot dropped when it was scaled away) is copied again on PostgreSQL's verdict, its old data
//! kept as the one `<pod>.previous`; a replica whose slot the primary invalidated is copied again
//! once, and again later, never keeping more than one older copy.

#[path = "support/local.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_agent::datadir::tree_size;
use pgset_local as local;
use support::{TestSet, pg_or_skip, wait_until};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_the_base_backup_redoes_it_when_restarted() {
    if pg_or_skip("local_recovery_interrupted_copy").is_none() {
        return;
    }
    let t = TestSet::new(2, 26610);
    let mut primary_only = t.opts.clone();
    primary_only.replicas = 1;
    local::up(&primary_only).await.expect("primary up");
    t.sql(
        0,
        "CREATE TABLE big AS SELECT g, repeat('x', 900) AS pad FROM generate_series(1, 60000) g",
    )
    .unwrap();

    // A throttled copy (4 MB/s of ~90 MB) so the agent can be killed in the middle of it.
    let mut slow = t.opts.clone();
    slow.basebackup_max_rate = Some("4M".into());
    let first = tokio::spawn(async move { local::up(&slow).await });
    let bootstrap = t.dir().join("pgset-1.bootstrap");
    wait_until("the base backup has copied 10 MB", 60 * SECOND, || {
        tree_size(&bootstrap) > 10 << 20
    });
    let agent = local::agent_pid(t.dir(), "pgset-1").expect("agent of pgset-1 runs");
    kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
    let err = first
        .await
        .unwrap()
        .expect_err("up fails when the member's agent dies");
    assert!(
        err.to_string()
            .contains("pgset-1 stopped before it was ready"),
        "{err}"
    );
    assert!(
        bootstrap.is_dir(),
        "the interrupted copy is left where it was"
    );
    assert!(
        !t.dir().join("pgset-1").exists(),
        "an incomplete copy is never in place as PGDATA"
    );

    // Restarted (full speed): the interrupted copy is discarded and redone, then it streams.
    let report = local::up(&t.opts)
        .await
        .expect("up after the interrupted copy");
    assert_eq!(report.started, ["pgset-1"]);
    t.wait_for(1, "SELECT count(*) FROM big", "60000", 60 * SECOND);
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
        30 * SECOND,
    );
    assert!(
        t.log(1).contains("an interrupted first copy was found"),
        "{}",
        t.log(1)
    );
    assert!(!bootstrap.exists());
    assert!(
        pgset_agent::datadir::processes_using(&bootstrap).is_empty(),
        "no copy left running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_wal_is_gone_is_copied_again_and_its_old_data_kept() {
    if pg_or_skip("local_recovery_wal_gone").is_none() {
        return;
    }
    let t = TestSet::new(2, 26620);
    local::up(&t.opts).await.expect("up");
    t.sql(
        0,
        "CREATE TABLE t (id int, note text); INSERT INTO t VALUES (1, 'before')",
    )
    .unwrap();
    t.wait_for(1, "SELECT note FROM t WHERE id = 1", "before", 30 * SECOND);

    // Member 1 goes away; its slot is dropped; the primary recycles the WAL it would need.
    let mut one = t.opts.clone();
    one.replicas = 1;
    local::up(&one).await.expect("scale to 1");
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_replication_slots",
        "0",
        30 * SECOND,
    );
    t.sql(0, "ALTER SYSTEM SET wal_keep_size = 0").unwrap();
    t.sql(0, "SELECT pg_reload_conf()").unwrap();
    for i in 0..6 {
        t.sql(0, &format!("INSERT INTO t VALUES ({}, 'wal')", 10 + i))
            .unwrap();
        t.sql(0, "SELECT pg_switch_wal()").unwrap();
    }
    t.sql(0, "CHECKPOINT").unwrap();
    t.sql(0, "INSERT INTO t VALUES (2, 'after')").unwrap();

    // Back to 2: the master's oldest WAL is past what the replica needs: a new copy, the old
    // data kept as the one `.previous`.
    let report = local::up(&t.opts).await.expect("scale back to 2");
    assert_eq!(report.started, ["pgset-1"]);
    t.wait_for(1, "SELECT note FROM t WHERE id = 2", "after", 60 * SECOND);
    let log = t.log(1);
    assert!(log.contains("the oldest the master has is"), "{log}");
    assert_eq!(kept_copies(t.dir(), "pgset-1"), ["pgset-1.previous"]);
    assert!(t.dir().join("pgset-1.previous/PG_VERSION").is_file());
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
        30 * SECOND,
    );
}

/// The names of a member's kept copies in the set directory.
fn kept_copies(dir: &Path, member: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&format!("{member}."))
                && !n.ends_with(".log")
                && !n.ends_with(".lock")
                && !n.ends_with(".termination-log")
                && !n.ends_with(".agent.pid")
        })
        .collect();
    v.sort();
    v
}

/// Stops member 1, has the primary write WAL until member 1's slot is invalidated
/// (`max_slot_wal_keep_size` lowered for the test), and starts member 1 again.
async fn invalidate_slot_of_member_1(t: &TestSet, round: i32) {
    assert!(
        local::stop_member(t.dir(), "pgset-1", 60 * SECOND)
            .await
            .unwrap()
    );
    for i in 0..40 {
        if t.sql(
            0,
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgset_1'",
        )
        .unwrap()
            == "lost"
        {
            break;
        }
        t.sql(
            0,
            &format!(
                "INSERT INTO t VALUES ({}, 'filler {round}')",
                1000 * round + i
            ),
        )
        .unwrap();
        t.sql(0, "SELECT pg_switch_wal()").unwrap();
        t.sql(0, "CHECKPOINT").unwrap();
    }
    assert_eq!(
        t.sql(
            0,
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgset_1'"
        )
        .unwrap(),
        "lost",
        "the slot is invalidated by PostgreSQL itself"
    );
    t.sql(
        0,
        &format!("INSERT INTO t VALUES ({}, 'round {round}')", 100 + round),
    )
    .unwrap();
    local::up(&t.opts).await.expect("member 1 back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_means_one_new_copy_and_never_more_than_one_kept() {
    if pg_or_skip("local_recovery_slot_invalidated").is_none() {
        return;
    }
    let t = TestSet::new(2, 26630);
    local::up(&t.opts).await.expect("up");
    t.sql(0, "CREATE TABLE t (id int, note text)").unwrap();
    t.sql(0, "ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'")
        .unwrap();
    t.sql(0, "ALTER SYSTEM SET wal_keep_size = 0").unwrap();
    t.sql(0, "SELECT pg_reload_conf()").unwrap();
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
        30 * SECOND,
    );

    for round in 1..=2 {
        invalidate_slot_of_member_1(&t, round).await;
        t.wait_for(
            1,
            &format!("SELECT note FROM t WHERE id = {}", 100 + round),
            &format!("round {round}"),
            90 * SECOND,
        );
        assert_eq!(
            t.log(1).matches("and the master is copied again").count(),
            round as usize,
            "one new copy per invalidation"
        );
        assert!(t.log(1).contains("invalidated this replica's slot"));
        assert_eq!(kept_copies(t.dir(), "pgset-1"), ["pgset-1.previous"]);
        t.wait_for(
            0,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            "1",
            30 * SECOND,
        );
    }
}
