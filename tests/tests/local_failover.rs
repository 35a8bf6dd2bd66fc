//! Local mode on real PostgreSQL, the master role from the leader record: a new set's ordinal 0
//! holds the record and renews it; a master cut off from the record (the isolation switch) or
//! frozen (its postmaster SIGSTOPped) gives the role up and stops accepting writes before the
//! record's lease could expire for another member; a shutdown of a frozen master ends on the
//! stop escalation's deadlines instead of waiting for ever.

#[path = "support/local.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_agent::leader::LeaderTimings;
use pgset_agent::settings::DEFAULT_LEADER_LEASE;
use pgset_local as local;
use support::{TestSet, pg_or_skip, wait_until};

const SECOND: Duration = Duration::from_secs(1);

/// The tests take their turns: eight 3-member sets at once on a small machine starve each other
/// of CPU, and the timings measured here are the agent's, not the scheduler's.
static ONE_SET_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); /proc says whether it is gone or dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_set_names_ordinal_0_in_the_leader_record_and_it_renews() {
    let Some(_bin) = pg_or_skip("local_failover_new_set") else {
        return;
    };
    let _one_at_a_time = ONE_SET_AT_A_TIME.lock().await;
    let t = TestSet::new(3, 27510);
    local::up(&t.opts).await.expect("set up");
    let first = support::leader(t.dir());
    assert_eq!(first["holder"]["member"], "pgset-0", "{first}");
    let timings = LeaderTimings::for_lease(DEFAULT_LEADER_LEASE).unwrap();
    let v0 = first["version"].as_u64().unwrap();
    wait_until("the holder renews the record", 30 * SECOND, || {
        support::leader(t.dir())["version"].as_u64().unwrap() > v0
    });
    let renewed = support::leader(t.dir());
    assert_eq!(
        renewed["holder"], first["holder"],
        "renewed by the same holder"
    );
    assert_eq!(
        renewed["lease_duration_ms"].as_u64().unwrap(),
        timings.lease_duration().as_millis() as u64
    );
    // The replicas follow the holder, not an ordinal of their own.
    t.sql(0, "CREATE TABLE seen (n int); INSERT INTO seen VALUES (1)")
        .unwrap();
    for k in [1, 2] {
        t.wait_for(k, "SELECT count(*) FROM seen", "1", 60 * SECOND);
        assert!(
            t.log(k)
                .contains("the leader record names pgset-0 the master"),
            "member {k} says whom it follows:\n{}",
            t.log(k)
        );
    }

    // A restart of the master (SIGTERM: it does not release the record) takes it again at once.
    local::stop_member(t.dir(), "pgset-0", 120 * SECOND)
        .await
        .unwrap();
    let kept = support::leader(t.dir());
    assert_eq!(
        kept["holder"]["member"], "pgset-0",
        "a master that shuts down keeps the record for its restart: {kept}"
    );
    let started = Instant::now();
    local::up(&t.opts).await.expect("the master starts again");
    println!(
        "the restarted master accepted writes again {} ms after its start",
        started.elapsed().as_millis()
    );
    let again = support::leader(t.dir());
    assert_eq!(again["holder"]["member"], "pgset-0");
    assert_ne!(
        again["holder"]["id"], kept["holder"]["id"],
        "the new incarnation holds it"
    );
    t.sql(0, "INSERT INTO seen VALUES (2)").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_master_stops_accepting_writes_before_its_lease_could_expire() {
    let Some(_bin) = pg_or_skip("local_failover_isolated_master") else {
        return;
    };
    let _one_at_a_time = ONE_SET_AT_A_TIME.lock().await;
    let t = TestSet::new(1, 27520);
    local::up(&t.opts).await.expect("set up");
    t.sql(0, "CREATE TABLE acked (n bigint PRIMARY KEY)")
        .unwrap();
    let timings = LeaderTimings::for_lease(DEFAULT_LEADER_LEASE).unwrap();
    let agent = local::agent_pid(t.dir(), "pgset-0").expect("the master's agent runs");

    let writer_stop = Instant::now() + 3 * timings.lease_duration();
    let writer = support::write_until(t.dir().join("run"), t.port(0), writer_stop);
    let cut = async {
        tokio::time::sleep(2 * SECOND).await;
        std::fs::write(t.dir().join("pgset.leader.isolate-pgset-0"), b"").unwrap();
        Instant::now()
    };
    let (acked, cut_at) = tokio::join!(writer, cut);
    assert!(
        !acked.is_empty(),
        "the master accepted writes before the cut"
    );
    let last = acked.last().unwrap().1;
    assert!(
        acked.iter().any(|(_, at)| *at > cut_at),
        "writes went on after the cut, until the role was given up"
    );
    let after_cut = last.saturating_duration_since(cut_at);
    println!(
        "{} rows acknowledged; the last one {} ms after the isolation switch (renew deadline {} \
         ms, lease {} ms)",
        acked.len(),
        after_cut.as_millis(),
        timings.renew_deadline().as_millis(),
        timings.lease_duration().as_millis()
    );
    // The last write the record saw was sent before the switch existed; no other member could
    // take the record before a lease duration after that.
    assert!(
        after_cut < timings.lease_duration(),
        "the isolated master acknowledged a write {after_cut:?} after it was cut off"
    );
    wait_until("the master's agent exits", 60 * SECOND, || !alive(agent));
    let reason = std::fs::read_to_string(local::termination_log(t.dir(), "pgset-0")).unwrap();
    assert_eq!(reason.lines().count(), 1, "{reason:?}");
    assert!(
        reason.contains("master role was given up") && reason.contains("renew deadline"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_gives_the_role_up_and_is_killed_on_the_escalations_deadlines() {
    let Some(_bin) = pg_or_skip("local_failover_frozen_master") else {
        return;
    };
    let _one_at_a_time = ONE_SET_AT_A_TIME.lock().await;
    let t = TestSet::new(1, 27530);
    local::up(&t.opts).await.expect("set up");
    let timings = LeaderTimings::for_lease(DEFAULT_LEADER_LEASE).unwrap();
    let agent = local::agent_pid(t.dir(), "pgset-0").expect("the master's agent runs");
    let postmaster = support::postmaster_of(t.dir(), "pgset-0");
    let frozen_at = Instant::now();
    kill(Pid::from_raw(postmaster), Signal::SIGSTOP).unwrap();
    wait_until(
        "the frozen postmaster is gone",
        4 * timings.lease_duration(),
        || !alive(postmaster),
    );
    let gone = frozen_at.elapsed();
    println!(
        "the frozen postmaster was gone {} ms after it froze (renew deadline {} ms + worst-case \
         stop {} ms < lease {} ms)",
        gone.as_millis(),
        timings.renew_deadline().as_millis(),
        timings.worst_case_stop().as_millis(),
        timings.lease_duration().as_millis()
    );
    assert!(
        gone < timings.lease_duration(),
        "a frozen master outlived its lease: {gone:?}"
    );
    wait_until("the master's agent exits", 60 * SECOND, || !alive(agent));
    let log = t.log(0);
    assert!(log.contains("SIGKILL to the postmaster"), "{log}");
    let reason = std::fs::read_to_string(local::termination_log(t.dir(), "pgset-0")).unwrap();
    assert!(reason.contains("master role was given up"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_of_a_frozen_postmaster_ends_on_the_escalations_deadlines() {
    let Some(_bin) = pg_or_skip("local_failover_frozen_shutdown") else {
        return;
    };
    let _one_at_a_time = ONE_SET_AT_A_TIME.lock().await;
    let t = TestSet::new(2, 27540);
    local::up(&t.opts).await.expect("set up");
    let timings = LeaderTimings::for_lease(DEFAULT_LEADER_LEASE).unwrap();
    // A replica: no renewals to give up, only the shutdown stops it.
    let agent = local::agent_pid(t.dir(), "pgset-1").expect("the replica's agent runs");
    let postmaster = support::postmaster_of(t.dir(), "pgset-1");
    kill(Pid::from_raw(postmaster), Signal::SIGSTOP).unwrap();
    let asked = Instant::now();
    kill(Pid::from_raw(agent), Signal::SIGTERM).unwrap();
    wait_until(
        "the agent stops its frozen postgres and exits",
        4 * timings.lease_duration(),
        || !alive(agent) && !alive(postmaster),
    );
    println!(
        "stopped {} ms after SIGTERM (escalation: fast {} ms, immediate {} ms, kill {} ms)",
        asked.elapsed().as_millis(),
        timings.stop().fast.as_millis(),
        timings.stop().immediate.as_millis(),
        timings.stop().kill.as_millis()
    );
    let log = t.log(1);
    assert!(log.contains("immediate shutdown"), "{log}");
    assert!(log.contains("SIGKILL to the postmaster"), "{log}");
}

/// A row the writer had acknowledged: by which member, and when.
#[derive(Debug, Clone, Copy)]
struct Ack {
    n: i64,
    member: i32,
    at: Instant,
}

/// Writes rows one at a time to whichever member accepts writes (not in recovery), moving on
/// when it stops answering, until `stop`, or 3 s after a member other than the first
/// acknowledged its first row.
async fn write_to_the_master(t: &TestSet, members: i32, stop: Instant) -> Vec<Ack> {
    let run = t.dir().join("run");
    let short = Duration::from_millis(700);
    let mut acked = Vec::new();
    let mut current: Option<(i32, pgset_agent::Db)> = None;
    let mut n = 0i64;
    while Instant::now() < stop {
        if let (Some(first), Some(moved)) = (
            acked.first(),
            acked
                .iter()
                .find(|a: &&Ack| Some(a.member) != acked.first().map(|f: &Ack| f.member)),
        ) && first.member != moved.member
            && moved.at.elapsed() > 3 * SECOND
        {
            break;
        }
        if current.is_none() {
            for k in 0..members {
                let Ok(Ok(db)) = tokio::time::timeout(
                    short,
                    pgset_agent::Db::socket(&run, t.port(k), "writer", short),
                )
                .await
                else {
                    continue;
                };
                if let Ok(Ok(r)) =
                    tokio::time::timeout(short, db.row("SELECT pg_is_in_recovery()", &[])).await
                    && !r.get::<_, bool>(0)
                {
                    current = Some((k, db));
                    break;
                }
            }
            if current.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let (k, db) = current.as_ref().unwrap();
        n += 1;
        let sql = format!("INSERT INTO acked VALUES ({n})");
        match tokio::time::timeout(Duration::from_secs(1), db.execute_batch(&sql)).await {
            Ok(Ok(())) => acked.push(Ack {
                n,
                member: *k,
                at: Instant::now(),
            }),
            _ => current = None,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The master's agent and every postgres process SIGKILLed.
    Kill,
    /// The master's postmaster SIGSTOPped.
    Freeze,
    /// The isolation switch: the master cannot reach the record.
    Isolate,
}

/// Every process of member 0's postgres: the postmaster and its children.
fn postgres_processes(dir: &Path, member: &str) -> Vec<i32> {
    let pm = support::postmaster_of(dir, member);
    let mut all = vec![pm];
    all.extend(pgset_agent::watchdog::children(pm));
    all
}

/// A 3-member set, a writer that follows the master, `fault` on the master: a replica takes
/// the record and is promoted, the other follows it without a copy, no acknowledged row is lost
/// and the old master acknowledged nothing after the new master's first commit.
async fn fails_over(port: u16, fault: Fault) {
    let t = TestSet::new(3, port);
    local::up(&t.opts).await.expect("set up");
    t.sql(0, "CREATE TABLE acked (n bigint PRIMARY KEY)")
        .unwrap();
    for k in [1, 2] {
        t.wait_for(
            k,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'acked'",
            "1",
            60 * SECOND,
        );
    }
    let timings = LeaderTimings::for_lease(DEFAULT_LEADER_LEASE).unwrap();
    let inodes = [1, 2].map(|k| support::inode(&t.dir().join(format!("pgset-{k}"))));
    let agent = local::agent_pid(t.dir(), "pgset-0").expect("the master's agent runs");

    let stop_writing = Instant::now() + 10 * timings.lease_duration();
    let writer = write_to_the_master(&t, 3, stop_writing);
    let dir = t.dir().to_path_buf();
    let inject = async move {
        tokio::time::sleep(3 * SECOND).await;
        let at = Instant::now();
        match fault {
            Fault::Kill => {
                let pids = postgres_processes(&dir, "pgset-0");
                kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
                for pid in pids {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            Fault::Freeze => {
                kill(
                    Pid::from_raw(support::postmaster_of(&dir, "pgset-0")),
                    Signal::SIGSTOP,
                )
                .unwrap();
            }
            Fault::Isolate => {
                std::fs::write(dir.join("pgset.leader.isolate-pgset-0"), b"").unwrap();
            }
        }
        at
    };
    // The writer stops early once the new master acknowledged rows for a while.
    let (acked, fault_at) = tokio::join!(writer, inject);

    let new_master = acked.last().expect("rows were acknowledged").member;
    assert_ne!(
        new_master,
        0,
        "a replica became the master: {:?}",
        acked.last()
    );
    let first_new = acked.iter().find(|a| a.member == new_master).unwrap();
    let last_old = acked.iter().rev().find(|a| a.member == 0).unwrap();
    println!(
        "{fault:?}: writes accepted again by pgset-{new_master} {} ms after the fault (lease {} \
         ms); the old master's last acknowledged commit {} ms after the fault; {} rows \
         acknowledged",
        first_new.at.saturating_duration_since(fault_at).as_millis(),
        timings.lease_duration().as_millis(),
        last_old.at.saturating_duration_since(fault_at).as_millis(),
        acked.len()
    );
    assert!(
        last_old.at < first_new.at,
        "the old master acknowledged a commit after the new master's first"
    );
    assert!(
        acked
            .iter()
            .filter(|a| a.member == new_master)
            .all(|a| a.at > last_old.at),
        "no commit of the new master before the old master's last"
    );
    let record = support::leader(t.dir());
    assert_eq!(
        record["holder"]["member"],
        format!("pgset-{new_master}"),
        "{record}"
    );
    assert!(record["timeline"].as_u64().unwrap() >= 2, "{record}");

    // No acknowledged row is lost.
    let rows = t.sql(new_master, "SELECT n FROM acked ORDER BY n").unwrap();
    let have: std::collections::HashSet<i64> =
        rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<i64> = acked
        .iter()
        .map(|a| a.n)
        .filter(|n| !have.contains(n))
        .collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");

    // The other replica follows the new master on its timeline, without a copy.
    let other = 3 - new_master;
    let max = t.sql(new_master, "SELECT max(n) FROM acked").unwrap();
    t.wait_for(other, "SELECT max(n) FROM acked", &max, 120 * SECOND);
    assert_eq!(
        support::inode(&t.dir().join(format!("pgset-{other}"))),
        inodes[(other - 1) as usize],
        "the other replica was not copied again"
    );
    assert_eq!(
        support::inode(&t.dir().join(format!("pgset-{new_master}"))),
        inodes[(new_master - 1) as usize],
        "the new master kept its own data"
    );
    if fault == Fault::Freeze {
        assert!(
            t.log(0).contains("SIGKILL to the postmaster"),
            "{}",
            t.log(0)
        );
    }

    // Local status names the holder; `local up` keeps the master where it moved.
    let seen: Vec<(String, String)> = local::status(t.dir())
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.role))
        .collect();
    for (name, role) in &seen {
        let k = pgset_spec::ordinal_of(name).unwrap();
        let want = if k == new_master { "master" } else { "replica" };
        assert_eq!(role, want, "{seen:?}");
    }
    // So does its summary, with the new master's timeline and system.
    let report = pgset_local::status::report(t.dir()).await.unwrap();
    assert_eq!(
        report.summary.master,
        format!("pgset-{new_master}"),
        "{:?}",
        report.summary
    );
    if fault == Fault::Kill {
        let started = Instant::now();
        local::up(&t.opts).await.expect("the set is whole again");
        println!(
            "the old master rejoined as a replica in {} ms",
            started.elapsed().as_millis()
        );
        assert_eq!(
            support::leader(t.dir())["holder"]["member"],
            format!("pgset-{new_master}")
        );
        assert_eq!(t.sql(0, "SELECT pg_is_in_recovery()").unwrap(), "t");
        t.wait_for(0, "SELECT max(n) FROM acked", &max, 120 * SECOND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_to_a_replica() {
    if pg_or_skip("local_failover_killed").is_none() {
        return;
    }
    let _one_at_a_time = ONE_SET_AT_A_TIME.lock().await;
    fails_over(27550, Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_fails_over_to_a_replica() {
    if pg_or_skip("local_failover_frozen").is_none() {
        return;
    }
    let _one_at_a_time = ONE_SET_AT_A_TIME.lock().await;
    fails_over(27560, Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_master_fails_over_to_a_replica() {
    if pg_or_skip("local_failover_isolated").is_none() {
        return;
    }
    let _one_at_a_time = ONE_SET_AT_A_TIME.lock().await;
    fails_over(27570, Fault::Isolate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failover_off_nobody_is_promoted() {
    if pg_or_skip("local_failover_off").is_none() {
        return;
    }
    let _one_at_a_time = ONE_SET_AT_A_TIME.lock().await;
    let mut t = TestSet::new(3, 27580);
    t.opts.failover = false;
    local::up(&t.opts).await.expect("set up");
    let timings = LeaderTimings::for_lease(DEFAULT_LEADER_LEASE).unwrap();
    let pids = postgres_processes(t.dir(), "pgset-0");
    let agent = local::agent_pid(t.dir(), "pgset-0").unwrap();
    kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
    for pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_until(
        "a replica says failover is off",
        10 * timings.lease_duration(),
        || t.log(1).contains("automatic failover is off"),
    );
    tokio::time::sleep(2 * timings.renew_every()).await;
    for k in [1, 2] {
        assert_eq!(
            t.sql(k, "SELECT pg_is_in_recovery()").unwrap(),
            "t",
            "member {k} was not promoted"
        );
    }
    assert_eq!(support::leader(t.dir())["holder"]["member"], "pgset-0");
}
