//! Local mode on real PostgreSQL, the recovery paths: an agent killed in the middle of a replica's
//! base backup is restarted and the copy is redone; a replica whose WAL the primary no longer has
//! is copied again, its old data directory moved aside and kept.

#[path = "support/local.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_agent::local;
use support::{TestSet, pg_or_skip, wait_until};

const SECOND: Duration = Duration::from_secs(1);

fn tree_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

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

    // Back to 2: the agent sees the WAL is gone, moves the old directory aside and copies again.
    let report = local::up(&t.opts).await.expect("scale back to 2");
    assert_eq!(report.started, ["pgset-1"]);
    t.wait_for(1, "SELECT note FROM t WHERE id = 2", "after", 60 * SECOND);
    let log = t.log(1);
    assert!(log.contains("no longer has the WAL"), "{log}");
    let kept: Vec<_> = std::fs::read_dir(t.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("pgset-1.stale-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the old data directory is kept aside");
    assert!(kept[0].path().join("PG_VERSION").is_file());
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
        30 * SECOND,
    );
}
