//! Local mode on real PostgreSQL: a 3-member set forms and replicates; a replica refuses writes;
//! `up` is idempotent; a killed replica postmaster restarts on its own data without a copy; the
//! primary restarts and replicas reconnect; 3 → 2 → 3 leaves no slot for the gone member; no
//! password shows in `ps` or the logs.

#[path = "support/local.rs"]
mod support;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_command::HostCommand;
use pgset_local as local;
use support::{TestSet, inode, pg_or_skip, wait_until};

const STREAMING_COUNT: &str = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_set_forms_replicates_survives_restarts_and_resizes() {
    if pg_or_skip("local_set").is_none() {
        return;
    }
    let t = TestSet::new(3, 26510);
    let report = local::up(&t.opts).await.expect("first up");
    assert_eq!(report.started, ["pgset-0", "pgset-1", "pgset-2"]);

    // Formation: two streaming replicas, named by application_name.
    t.wait_for(0, STREAMING_COUNT, "2", 30 * SECOND);
    assert_eq!(
        t.sql(0, "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication").unwrap(),
        "pgset-1,pgset-2"
    );
    assert_eq!(
        t.sql(0, "SHOW password_encryption").unwrap(),
        "scram-sha-256"
    );
    assert_eq!(t.sql(1, "SELECT pg_is_in_recovery()").unwrap(), "t");

    // A row written on the primary is read on both replicas.
    t.sql(
        0,
        "CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'one')",
    )
    .unwrap();
    for k in [1, 2] {
        t.wait_for(k, "SELECT note FROM t WHERE id = 1", "one", 20 * SECOND);
    }

    // A write on a replica fails with SQLSTATE 25006.
    let err = t.sql(1, "INSERT INTO t VALUES (2, 'two')").unwrap_err();
    assert!(
        err.contains("25006") && err.contains("read-only transaction"),
        "{err}"
    );

    // A second `up` changes nothing: no member started, same pids, same files.
    let pids: Vec<_> = (0..3)
        .map(|k| local::agent_pid(t.dir(), &t.set().member(k)))
        .collect();
    let members_mtime = std::fs::metadata(t.dir().join(local::MEMBERS_FILE))
        .unwrap()
        .modified()
        .unwrap();
    let secret = std::fs::read(t.dir().join("secret/replication-password")).unwrap();
    let again = local::up(&t.opts).await.expect("second up");
    assert!(
        again.started.is_empty() && again.stopped.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.already_running.len(), 3);
    assert_eq!(
        pids,
        (0..3)
            .map(|k| local::agent_pid(t.dir(), &t.set().member(k)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        members_mtime,
        std::fs::metadata(t.dir().join(local::MEMBERS_FILE))
            .unwrap()
            .modified()
            .unwrap()
    );
    assert_eq!(
        secret,
        std::fs::read(t.dir().join("secret/replication-password")).unwrap()
    );

    // status lists every member with its role and streaming state.
    let status = local::status(t.dir()).await.unwrap();
    assert_eq!(status.len(), 3);
    assert_eq!(status[0].role, "master");
    assert_eq!(status[0].streaming, None);
    assert!(
        status[1..]
            .iter()
            .all(|m| m.role == "replica" && m.streaming == Some(true) && m.pid.is_some())
    );

    // kill -9 of replica 1's postmaster: the agent exits; started again it streams on the same
    // data directory, without a base backup.
    let pgdata1 = t.dir().join("pgset-1");
    std::fs::write(pgdata1.join("pgset-test-marker"), "kept").unwrap();
    let inode_before = inode(&pgdata1);
    let sysid = |k| {
        t.sql(k, "SELECT system_identifier FROM pg_control_system()")
            .unwrap()
    };
    let sysid_before = sysid(1);
    let copies_before = t.log(1).matches("base backup complete").count();
    assert_eq!(copies_before, 1);
    let postmaster = status[1].pid.unwrap();
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).unwrap();
    wait_until(
        "replica 1's agent exits after its postgres died",
        30 * SECOND,
        || local::agent_pid(t.dir(), "pgset-1").is_none(),
    );
    wait_until(
        "the old backends of replica 1 are gone",
        30 * SECOND,
        || pgset_agent::datadir::processes_using(&pgdata1).is_empty(),
    );
    t.sql(0, "INSERT INTO t VALUES (3, 'while 1 was down')")
        .unwrap();
    let report = local::up(&t.opts).await.expect("up after kill -9");
    assert_eq!(report.started, ["pgset-1"]);
    t.wait_for(
        1,
        "SELECT note FROM t WHERE id = 3",
        "while 1 was down",
        30 * SECOND,
    );
    assert_eq!(inode(&pgdata1), inode_before, "same data directory");
    assert_eq!(
        std::fs::read_to_string(pgdata1.join("pgset-test-marker")).unwrap(),
        "kept"
    );
    assert_eq!(sysid(1), sysid_before);
    assert_eq!(
        t.log(1).matches("base backup complete").count(),
        copies_before,
        "no new base backup"
    );
    assert!(t.log(1).contains("starting on the existing data directory"));
    assert!(!t.dir().join("pgset-1.bootstrap").exists());

    // The primary restarted: the replicas reconnect on their own (their agents keep running).
    let replica_agents: Vec<_> = [1, 2]
        .iter()
        .map(|k| local::agent_pid(t.dir(), &t.set().member(*k)))
        .collect();
    assert!(
        local::stop_member(t.dir(), "pgset-0", 60 * SECOND)
            .await
            .unwrap()
    );
    let report = local::up(&t.opts)
        .await
        .expect("up after stopping the primary");
    assert_eq!(report.started, ["pgset-0"]);
    t.wait_for(0, STREAMING_COUNT, "2", 60 * SECOND);
    assert_eq!(
        replica_agents,
        [1, 2]
            .iter()
            .map(|k| local::agent_pid(t.dir(), &t.set().member(*k)))
            .collect::<Vec<_>>()
    );
    t.sql(0, "INSERT INTO t VALUES (4, 'after primary restart')")
        .unwrap();
    for k in [1, 2] {
        t.wait_for(
            k,
            "SELECT note FROM t WHERE id = 4",
            "after primary restart",
            30 * SECOND,
        );
    }

    // Member 2 stops but stays within the set's size (3): its slot is kept (the primary checks
    // every 2 s), so it can catch up by streaming when it comes back.
    assert!(
        local::stop_member(t.dir(), "pgset-2", 60 * SECOND)
            .await
            .unwrap()
    );
    std::thread::sleep(6 * SECOND);
    assert_eq!(
        t.sql(
            0,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgset_2' AND NOT active"
        )
        .unwrap(),
        "1",
        "a member within the set's size keeps its slot while it is down"
    );

    // 3 → 2: member 2 is now above the set's size: it keeps its data, and no slot retains WAL for it.
    let mut two = t.opts.clone();
    two.replicas = 2;
    let report = local::up(&two).await.expect("scale to 2");
    assert!(report.stopped.is_empty(), "member 2 was already stopped");
    assert!(
        t.dir().join("pgset-2/PG_VERSION").is_file(),
        "a stopped member keeps its data"
    );
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgset_2'",
        "0",
        30 * SECOND,
    );
    assert_eq!(
        t.sql(
            0,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgset_1'"
        )
        .unwrap(),
        "1"
    );
    t.sql(0, "INSERT INTO t VALUES (5, 'while 2 was gone')")
        .unwrap();

    // 2 → 3: member 2 rejoins and streams.
    let report = local::up(&t.opts).await.expect("scale back to 3");
    assert_eq!(report.started, ["pgset-2"]);
    t.wait_for(
        2,
        "SELECT note FROM t WHERE id = 5",
        "while 2 was gone",
        60 * SECOND,
    );
    t.wait_for(0, STREAMING_COUNT, "2", 30 * SECOND);
    assert_eq!(
        t.sql(
            0,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgset_2'"
        )
        .unwrap(),
        "1"
    );

    // No password in process arguments or logs.
    let passwords: Vec<String> = ["superuser-password", "replication-password"]
        .iter()
        .map(|k| std::fs::read_to_string(t.dir().join("secret").join(k)).unwrap())
        .collect();
    let ps = HostCommand::new("ps")
        .args(["-eo", "args"])
        .quiet()
        .read()
        .unwrap();
    assert!(ps.contains("postgres -D"), "ps shows the members");
    for pw in &passwords {
        assert!(pw.len() >= 16);
        assert!(!ps.contains(pw.as_str()), "a password is visible in ps");
        for k in 0..3 {
            assert!(
                !t.log(k).contains(pw.as_str()),
                "a password is in the log of member {k}"
            );
        }
    }

    // down stops everything; --purge removes the directory.
    let stopped = local::down(t.dir(), false).await.unwrap();
    assert_eq!(stopped, ["pgset-2", "pgset-1", "pgset-0"]);
    assert!(pgset_agent::datadir::processes_using(t.dir()).is_empty());
    assert!(t.dir().join("pgset-0/PG_VERSION").is_file());
    local::down(t.dir(), true).await.unwrap();
    assert!(!t.dir().exists());
}
