//! Local mode on real PostgreSQL: a replica that received more than the member promoted over
//! it (here by `failover --to` a replica that was behind) holds WAL past the point where the
//! new master's history parts from its own. PostgreSQL can never follow such a replica as it is;
//! its agent sees it from PostgreSQL's own state (the new master's timeline history against the
//! WAL the replica holds), rewinds it to the new master's history, and keeps what it received
//! after the fork aside, warned of by `local status` — no copy, nothing gone without a word.
//! Ports 29960-29962 (health 30960-30962).

#[path = "support/local.rs"]
mod support;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_local as local;
use support::{TestSet, pg_or_skip, wait_until};

const SECOND: Duration = Duration::from_secs(1);
const PORT: u16 = 29960;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_ahead_of_the_member_promoted_is_rewound_and_what_it_had_past_the_fork_kept() {
    if pg_or_skip("local_replica_fork").is_none() {
        return;
    }
    let mut t = TestSet::new(3, PORT);
    // Only the promotion asked for below happens.
    t.opts.failover = false;
    local::up(&t.opts).await.expect("set up");
    t.sql(0, "CREATE TABLE t (n int)").unwrap();
    for k in [1, 2] {
        t.wait_for(
            k,
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'",
            "1",
            60 * SECOND,
        );
    }
    let inode = support::inode(&t.dir().join("pgset-2"));

    // The master stops sending to pgset-1 (its WAL sender frozen, so nothing is left in flight
    // in a socket buffer); rows reach pgset-2 only.
    let sender: i32 = t
        .sql(
            0,
            "SELECT pid FROM pg_stat_replication WHERE application_name = 'pgset-1'",
        )
        .unwrap()
        .trim()
        .parse()
        .expect("the master sends to pgset-1");
    kill(Pid::from_raw(sender), Signal::SIGSTOP).unwrap();
    t.sql(0, "INSERT INTO t SELECT generate_series(1, 1000)")
        .unwrap();
    t.wait_for(2, "SELECT count(*) FROM t", "1000", 60 * SECOND);
    assert_eq!(t.sql(1, "SELECT count(*) FROM t").unwrap(), "0");

    // The master is gone for good (its agent and every postgres process killed).
    let agent = local::agent_pid(t.dir(), "pgset-0").expect("the master's agent runs");
    let postmaster = support::postmaster_of(t.dir(), "pgset-0");
    let mut all = vec![postmaster];
    all.extend(pgset_agent::watchdog::children(postmaster));
    kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
    for pid in all {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }

    // pgset-1, behind pgset-2, is made the master on purpose.
    let report = local::switchover::failover(t.dir(), "pgset-1", 180 * SECOND)
        .await
        .expect("failover to pgset-1");
    println!("failover: {report:?}");
    assert_eq!(t.sql(1, "SELECT pg_is_in_recovery()").unwrap(), "f");
    assert_eq!(
        t.sql(1, "SELECT count(*) FROM t").unwrap(),
        "0",
        "the new master never received the rows"
    );
    t.sql(1, "INSERT INTO t VALUES (-1)").unwrap();

    // pgset-2 follows the new master: rewound, not copied, its extra WAL kept and warned of.
    t.wait_for(2, "SELECT count(*) FROM t WHERE n = -1", "1", 240 * SECOND);
    assert_eq!(
        t.sql(2, "SELECT count(*) FROM t").unwrap(),
        "1",
        "pgset-2 holds the new master's history"
    );
    assert_eq!(
        support::inode(&t.dir().join("pgset-2")),
        inode,
        "pgset-2 was rewound in place, not copied again"
    );
    assert!(!t.dir().join("pgset-2.previous").exists());
    let log = t.log(2);
    assert!(
        log.contains("parted from this replica's timeline"),
        "pgset-2 said why it stopped: {log}"
    );
    let kept: Vec<_> = std::fs::read_dir(t.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pgset-2.diverged-"))
        .collect();
    assert_eq!(kept.len(), 1, "one kept copy of pgset-2's WAL: {kept:?}");
    let marked: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.dir().join(&kept[0]).join("diverged.json")).unwrap(),
    )
    .unwrap();
    let bytes = marked["bytesAfterFork"].as_u64().unwrap();
    assert!(
        bytes > 0,
        "the kept copy counts what pgset-2 had past the fork: {marked}"
    );
    let mut warnings = Vec::new();
    wait_until("local status warns of the kept copy", 30 * SECOND, || {
        warnings = futures_block(pgset_local::status::report(t.dir()))
            .map(|r| r.warnings)
            .unwrap_or_default();
        warnings
            .iter()
            .any(|w| w.contains("pgset-2") && w.contains(&kept[0]))
    });
    println!(
        "kept {} ({bytes} bytes after the fork); warned: {warnings:?}",
        kept[0]
    );
}

/// Runs a future to completion from a synchronous check (the waits poll synchronously).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
