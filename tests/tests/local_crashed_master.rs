//! Local mode on real PostgreSQL, a former master that crashed: it wrote WAL after its last
//! checkpoint that no replica received, then a replica took the leader record. Its pg_control
//! shows only the checkpoint, so its crash recovery runs first (single-user mode, as pg_rewind
//! does) and the divergence is judged on its true end of WAL: it is rewound, what it wrote after
//! the fork is kept, and it streams from the new master instead of waiting for ever on a
//! history it cannot follow. The new master, whose data was still a standby's when it took the
//! record, promotes itself on a timeline of its own.

#[path = "support/local.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_agent::leader::{FileStore, Holder, LeaderRecord, LeaderStore, LeaderTimings};
use pgset_agent::rewind::{self, DIVERGED_FILE};
use pgset_local as local;
use support::{TestSet, inode, pg_or_skip, wait_until};

const SECOND: Duration = Duration::from_secs(1);

fn diverged_dirs(dir: &Path, member: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{member}.diverged-"))
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_master_with_unsent_wal_is_rewound_and_its_writes_kept_when_it_rejoins() {
    if pg_or_skip("local_crashed_master").is_none() {
        return;
    }
    let mut t = TestSet::new(2, 29740);
    local::up(&t.opts).await.expect("set up");
    t.sql(
        0,
        "CREATE TABLE t (id int, note text); INSERT INTO t VALUES (1, 'shared'); CHECKPOINT",
    )
    .unwrap();
    t.wait_for(1, "SELECT note FROM t WHERE id = 1", "shared", 60 * SECOND);
    // The replica stops cleanly; the master then writes WAL nobody receives, and crashes.
    assert!(
        local::stop_member(t.dir(), "pgset-1", 60 * SECOND)
            .await
            .unwrap()
    );
    t.sql(
        0,
        "INSERT INTO t SELECT g, 'unsent' FROM generate_series(100, 2099) g",
    )
    .unwrap();
    let data0 = t.dir().join("pgset-0");
    let inode0 = inode(&data0);
    let pm = support::postmaster_of(t.dir(), "pgset-0");
    let agent = local::agent_pid(t.dir(), "pgset-0").unwrap();
    kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
    kill(Pid::from_raw(pm), Signal::SIGKILL).unwrap();
    wait_until("the crashed postmaster is gone", 30 * SECOND, || {
        kill(Pid::from_raw(pm), None).is_err()
    });
    // The master role moves to pgset-1, as a failover would have moved it.
    let timings = LeaderTimings::for_lease(Duration::from_secs(13)).unwrap();
    let store = FileStore::new(
        t.dir(),
        "pgset",
        Holder::new("pgset-1", "moved-by-test"),
        timings,
    );
    let current = store.read().await.unwrap().expect("the leader record");
    let moved = LeaderRecord {
        holder: Some(Holder::new("pgset-1", "moved-by-test")),
        ..current
    };
    store
        .replace(&moved)
        .await
        .unwrap()
        .expect("the record moved");
    // Written as root here; the members run as postgres.
    support::give_to_postgres(&t.dir().join("pgset.leader"));

    // Both start: pgset-1 holds the record (and promotes its standby data), pgset-0 rejoins it.
    t.opts.parallel = true;
    local::up(&t.opts).await.expect("the set forms again");
    t.wait_for(1, "SELECT pg_is_in_recovery()", "f", 60 * SECOND);
    t.wait_for(
        1,
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgset-0' AND state = 'streaming'",
        "1",
        120 * SECOND,
    );
    assert_eq!(inode(&data0), inode0, "rewound in place, not copied anew");
    assert_eq!(
        t.sql(1, "SELECT count(*) FROM t WHERE note = 'unsent'")
            .unwrap(),
        "0",
        "the crashed master's unsent rows are not the cluster's"
    );
    let kept = diverged_dirs(t.dir(), "pgset-0");
    assert_eq!(kept.len(), 1, "its WAL after the fork is kept: {kept:?}");
    let d = rewind::read_diverged(&kept[0].join(DIVERGED_FILE)).expect("diverged.json");
    assert!(
        d.bytes_after_fork > 100_000,
        "2000 rows of WAL after the fork: {d:?}"
    );
    assert!(
        t.log(0).contains("crash recovery in single-user mode"),
        "{}",
        t.log(0)
    );
    t.sql(1, "INSERT INTO t VALUES (3, 'new master')").unwrap();
    t.wait_for(
        0,
        "SELECT note FROM t WHERE id = 3",
        "new master",
        60 * SECOND,
    );
}
