//! Local mode on real PostgreSQL, a parallel start (a StatefulSet's `Parallel` policy): every
//! member's agent starts at once, the replicas wait for the master and copy it concurrently;
//! the identities, the record and replication end as after an ordered start (one initdb,
//! one system identifier, each replica streaming from the master on its own slot), and a second
//! parallel `up` changes nothing.

#[path = "support/local.rs"]
mod support;

use std::time::Duration;

use pgset_local as local;
use pgset_spec::contract::record;
use support::{TestSet, pg_or_skip};

const SECOND: Duration = Duration::from_secs(1);
const SYSID: &str = "SELECT system_identifier FROM pg_control_system()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_start_forms_the_same_set_as_an_ordered_one() {
    if pg_or_skip("local_parallel").is_none() {
        return;
    }
    let mut t = TestSet::new(3, 26810);
    t.opts.parallel = true;
    let report = local::up(&t.opts).await.expect("parallel up");
    assert_eq!(report.started, ["pgset-0", "pgset-1", "pgset-2"]);

    // Every replica streams from the master, by name, on its own slot.
    t.wait_for(
        0,
        "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) \
         FROM pg_stat_replication",
        "pgset-1:streaming,pgset-2:streaming",
        30 * SECOND,
    );
    assert_eq!(
        t.sql(
            0,
            "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE active"
        )
        .unwrap(),
        "pgset_1,pgset_2"
    );
    for k in [1, 2] {
        assert_eq!(
            t.sql(
                k,
                "SELECT status || ':' || sender_port FROM pg_stat_wal_receiver"
            )
            .unwrap(),
            format!("streaming:{}", t.port(0)),
            "member {k} streams from the master"
        );
    }

    // One database system: the master's, in every member and in every identity.
    let sysid = t.sql(0, SYSID).unwrap();
    let master_identity = pgset_agent::identity::read(&t.dir().join("pgset-0"))
        .unwrap()
        .expect("the master's identity");
    for k in 0..3 {
        assert_eq!(t.sql(k, SYSID).unwrap(), sysid, "member {k}");
        let member = t.set().member(k);
        let id = pgset_agent::identity::read(&t.dir().join(&member))
            .unwrap()
            .unwrap_or_else(|| panic!("{member} has an identity"));
        assert_eq!(id.member, member);
        assert_eq!(id.system_identifier.to_string(), sysid, "{member}");
        assert_eq!(id.cluster_id, master_identity.cluster_id, "{member}");
    }

    // The record: local mode keeps only the reinit opt-in's use there, and a first formation
    // uses no opt-in, so no key is written (as after an ordered start).
    let kept = t.dir().join(record::LOCAL_FILE);
    assert!(
        !kept.exists(),
        "{}",
        std::fs::read_to_string(&kept).unwrap_or_default()
    );

    // Exactly one initdb (the master's) and one copy per replica.
    assert_eq!(t.log(0).matches("initdb into").count(), 1);
    for k in [1, 2] {
        assert_eq!(t.log(k).matches("initdb").count(), 0, "member {k}");
        assert_eq!(
            t.log(k).matches("base backup complete").count(),
            1,
            "member {k}"
        );
    }

    // A second parallel `up` changes nothing.
    let again = local::up(&t.opts).await.expect("second up");
    assert!(again.started.is_empty(), "{again:?}");
    assert_eq!(again.already_running.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_whose_master_moved_restarts_whole_in_parallel_with_the_same_master_and_no_copy() {
    if pg_or_skip("local_parallel").is_none() {
        return;
    }
    // Ports 30350-30352 (health 31350-31352).
    let mut t = TestSet::new(3, 30350);
    local::up(&t.opts).await.expect("ordered up");
    t.sql(0, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .unwrap();
    t.wait_for(2, "SELECT count(*) FROM t", "1", 60 * SECOND);
    pgset_local::switchover::switchover(t.dir(), Some("pgset-2"), 120 * SECOND)
        .await
        .expect("the master role moves to pgset-2");
    t.wait_for(2, "SELECT pg_is_in_recovery()", "f", 60 * SECOND);
    t.sql(2, "INSERT INTO t VALUES (2)").unwrap();
    let sysid = t.sql(2, SYSID).unwrap();
    // The timeline written on (pg_control names it only after the next checkpoint).
    const TIMELINE: &str = "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)";
    let timeline = t.sql(2, TIMELINE).unwrap();
    let inodes: Vec<u64> = (0..3)
        .map(|k| support::inode(&t.dir().join(t.set().member(k))))
        .collect();

    // Everything stops (data kept); everything starts at once.
    local::down(t.dir(), false).await.expect("down");
    t.opts.parallel = true;
    local::up(&t.opts)
        .await
        .expect("parallel up of the whole set");

    // The same master, the others stream from it: nothing promoted anew, rewound or copied.
    t.wait_for(2, "SELECT pg_is_in_recovery()", "f", 60 * SECOND);
    t.wait_for(
        2,
        "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) \
         FROM pg_stat_replication",
        "pgset-0:streaming,pgset-1:streaming",
        120 * SECOND,
    );
    assert_eq!(
        t.sql(2, TIMELINE).unwrap(),
        timeline,
        "no promotion on the restart"
    );
    for k in 0..3 {
        assert_eq!(t.sql(k, SYSID).unwrap(), sysid, "member {k}");
        t.wait_for(
            k,
            "SELECT string_agg(n::text, ',' ORDER BY n) FROM t",
            "1,2",
            60 * SECOND,
        );
        assert_eq!(
            support::inode(&t.dir().join(t.set().member(k))),
            inodes[k as usize],
            "member {k}'s data directory is the one it had"
        );
    }
}
