//! Local mode on real PostgreSQL: `local switchover` hands the master role to a streaming replica
//! under a steady writer with no acknowledged write lost and no write acknowledged by two
//! masters, the old master rejoining as a replica on its own data directory (no copy, no
//! rewind), and back again; refused switchovers change nothing and name the fix; `local failover
//! --to` promotes the named replica after the master was killed with automatic failover off.

#[path = "support/local.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_local as local;
use support::{TestSet, inode, pg_or_skip, wait_until};

const SECOND: Duration = Duration::from_secs(1);

/// One 3-member set at a time: the timings measured here are the agents', not the scheduler's.
static ONE_SET_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn holder(dir: &Path) -> String {
    support::leader(dir)["holder"]["member"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Kept copies of a member beside the data directories (`.previous`, `.diverged-*`).
fn kept(dir: &Path, member: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&format!("{member}.previous"))
                || n.starts_with(&format!("{member}.diverged-"))
        })
        .collect()
}

/// One acknowledged row: its number, the port of the master that acknowledged it, that
/// master's timeline, and when the acknowledgement arrived.
#[derive(Debug, Clone, Copy)]
struct Ack {
    n: i64,
    port: i64,
    timeline: i64,
    at: Instant,
}

const INSERT: &str = "INSERT INTO acked VALUES ($1, current_setting('port')::int, \
     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int) \
     RETURNING port, timeline";

/// Writes rows one at a time to whichever member the leader record names (reconnecting on
/// failure) until `stop`; returns every acknowledged row.
async fn steady_writer(
    dir: std::path::PathBuf,
    base: u16,
    first: i64,
    stop: Arc<AtomicBool>,
) -> Vec<Ack> {
    let run = dir.join("run");
    let mut acks = Vec::new();
    let mut db: Option<(String, pgset_agent::Db)> = None;
    let mut n = first;
    while !stop.load(Ordering::SeqCst) {
        let master = holder(&dir);
        if db.as_ref().is_none_or(|(m, _)| *m != master) {
            let k = pgset_spec::ordinal_of(&master).unwrap_or(0) as u16;
            db = pgset_agent::Db::socket(&run, base + k, "writer", Duration::from_millis(500))
                .await
                .ok()
                .map(|d| (master.clone(), d));
            if db.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        n += 1;
        let (_, d) = db.as_ref().unwrap();
        match tokio::time::timeout(Duration::from_secs(1), d.row(INSERT, &[&(n as i32)])).await {
            Ok(Ok(row)) => acks.push(Ack {
                n,
                port: i64::from(row.get::<_, i32>(0)),
                timeline: i64::from(row.get::<_, i32>(1)),
                at: Instant::now(),
            }),
            _ => db = None,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acks
}

/// Runs a switchover to `to` under the steady writer and checks what it promises; returns the
/// report.
async fn switch_under_writes(t: &TestSet, from: i32, to: i32) -> local::switchover::Report {
    let dir = t.dir().to_path_buf();
    let old = t.set().member(from);
    let new = t.set().member(to);
    let old_inode = inode(&dir.join(&old));
    let timeline_before: i64 = t
        .sql(
            from,
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
        )
        .unwrap()
        .parse()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let first: i64 = t
        .sql(from, "SELECT COALESCE(max(n), 0) FROM acked")
        .unwrap()
        .parse()
        .unwrap();
    let writer = tokio::spawn(steady_writer(dir.clone(), t.port(0), first, stop.clone()));
    tokio::time::sleep(2 * SECOND).await;
    let report = local::switchover::switchover(&dir, Some(&new), 120 * SECOND)
        .await
        .unwrap_or_else(|e| panic!("switchover {old} → {new}: {e}\n{}", t.log(from)));
    tokio::time::sleep(2 * SECOND).await;
    stop.store(true, Ordering::SeqCst);
    let acks = writer.await.unwrap();
    println!("{}", report.line());

    assert_eq!(
        (report.from.as_str(), report.to.as_str()),
        (old.as_str(), new.as_str())
    );
    assert_eq!(holder(&dir), new, "the record names the new master");
    let (old_port, new_port) = (i64::from(t.port(from)), i64::from(t.port(to)));
    let by_old: Vec<&Ack> = acks.iter().filter(|a| a.port == old_port).collect();
    let by_new: Vec<&Ack> = acks.iter().filter(|a| a.port == new_port).collect();
    assert!(
        !by_old.is_empty() && !by_new.is_empty(),
        "both masters acknowledged writes: {acks:?}"
    );
    let last_old = by_old.iter().map(|a| a.at).max().unwrap();
    let first_new = by_new.iter().map(|a| a.at).min().unwrap();
    let runs: Vec<(i64, i64, usize)> = acks.iter().fold(Vec::new(), |mut runs, a| {
        match runs.last_mut() {
            Some((port, tl, count)) if *port == a.port && *tl == a.timeline => *count += 1,
            _ => runs.push((a.port, a.timeline, 1)),
        }
        runs
    });
    assert!(
        last_old < first_new,
        "no row was acknowledged by the old master after the new master's first commit: runs of \
         (port, timeline, rows) {runs:?}\n{old}:\n{}\n{new}:\n{}",
        local::log_tail(&dir, &old, 60),
        local::log_tail(&dir, &new, 60)
    );
    assert!(by_old.iter().all(|a| a.timeline == timeline_before));
    assert!(
        by_new.iter().all(|a| a.timeline == timeline_before + 1),
        "the new master writes on the next timeline"
    );
    let gap = first_new.duration_since(last_old);
    println!(
        "switchover {old} → {new}: write gap seen by the writer {} ms ({} rows before, {} after)",
        gap.as_millis(),
        by_old.len(),
        by_new.len()
    );
    // RPO 0: every acknowledged row is on the new master.
    let stored: std::collections::HashSet<i64> = t
        .sql(to, "SELECT n FROM acked")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<i64> = acks
        .iter()
        .map(|a| a.n)
        .filter(|n| !stored.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on the new master: {lost:?}"
    );

    // The old master rejoined as a replica on its own data directory: no copy, no rewind.
    assert_eq!(inode(&dir.join(&old)), old_inode, "the same data directory");
    assert!(
        kept(&dir, &old).is_empty(),
        "nothing kept aside: {:?}\n{}\n{old}:\n{}\n{new}:\n{}",
        kept(&dir, &old),
        kept(&dir, &old)
            .iter()
            .map(|k| std::fs::read_to_string(dir.join(k).join("diverged.json")).unwrap_or_default())
            .collect::<String>(),
        local::log_tail(&dir, &old, 80),
        local::log_tail(&dir, &new, 80)
    );
    assert!(
        report.old_master.contains("no copy, no rewind"),
        "{}",
        report.old_master
    );
    assert_eq!(t.sql(from, "SELECT pg_is_in_recovery()").unwrap(), "t");
    // Every replica streams from the new master, on its timeline.
    let others: Vec<i32> = (0..3).filter(|k| *k != to).collect();
    t.wait_for(
        to,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        &others.len().to_string(),
        60 * SECOND,
    );
    for k in others {
        t.wait_for(
            k,
            &format!(
                "SELECT received_tli = {} AND sender_port = {} FROM pg_stat_wal_receiver",
                timeline_before + 1,
                t.port(to)
            ),
            "t",
            60 * SECOND,
        );
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_writes_loses_nothing_and_the_old_master_rejoins_without_copy_or_rewind()
{
    let Some(_bin) = pg_or_skip("local_switchover_under_writes") else {
        return;
    };
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let t = TestSet::new(3, 29100);
    local::up(&t.opts).await.expect("set up");
    t.sql(
        0,
        "CREATE TABLE acked (n int PRIMARY KEY, port int, timeline int)",
    )
    .unwrap();
    for k in [1, 2] {
        t.wait_for(
            k,
            "SELECT count(*) FROM pg_class WHERE relname = 'acked'",
            "1",
            60 * SECOND,
        );
    }
    let there = switch_under_writes(&t, 0, 1).await;
    assert_eq!(there.timeline, 2);
    assert!(there.write_gap_ms.is_some());
    let back = switch_under_writes(&t, 1, 0).await;
    assert_eq!(back.timeline, 3);
    // The record names who asked and how it ended.
    let record = support::leader(t.dir());
    let outcome = record["notes"]["pgset.io/switchover-outcome"]
        .as_str()
        .unwrap();
    assert!(
        outcome.contains("handed-over") && outcome.contains(&back.id),
        "{outcome}"
    );
    assert!(
        record["notes"].get("pgset.io/switchover").is_none(),
        "the request is cleared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_switchovers_change_nothing_and_name_the_fix() {
    let Some(_bin) = pg_or_skip("local_switchover_refused") else {
        return;
    };
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let t = TestSet::new(3, 29110);
    local::up(&t.opts).await.expect("set up");
    local::stop_member(t.dir(), "pgset-2", 120 * SECOND)
        .await
        .unwrap();
    let before = support::leader(t.dir());
    let cases = [
        (Some("pgset-2"), "does not stream from the master pgset-0"),
        (Some("pgset-7"), "pgset-7 is not a member of the set"),
        (Some("pgset-0"), "pgset-0 is the master already"),
    ];
    for (to, want) in cases {
        let e = local::switchover::switchover(t.dir(), to, 30 * SECOND)
            .await
            .expect_err("refused")
            .to_string();
        assert!(e.contains(want), "{to:?}: {e}");
        let now = support::leader(t.dir());
        assert_eq!(now["holder"], before["holder"], "{to:?}: the holder stays");
        assert_eq!(now["notes"], before["notes"], "{to:?}: nothing was asked");
    }
    let e = local::switchover::switchover(t.dir(), Some("pgset-2"), 30 * SECOND)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("start it"), "the error names the fix: {e}");
    // The master still serves writes.
    t.sql(0, "CREATE TABLE still (n int)").unwrap();

    // A request that reaches the master's agent (written past the command's checks) for a
    // member that does not stream: the agent refuses it, records why, clears it, and stops
    // nothing.
    let postmaster =
        std::fs::read_to_string(t.dir().join("pgset-0").join("postmaster.pid")).unwrap();
    let store = pgset_agent::leader::FileStore::new(
        t.dir(),
        "pgset",
        pgset_agent::leader::Holder::new("test", "test"),
        pgset_agent::leader::LeaderTimings::for_lease(pgset_agent::settings::DEFAULT_LEADER_LEASE)
            .unwrap(),
    );
    use pgset_agent::leader::LeaderStore as _;
    let request = pgset_spec::contract::SwitchoverRequest::new(Some("pgset-2"));
    let mut written = None;
    for _ in 0..20 {
        let r = store.read().await.unwrap().unwrap();
        written = store
            .replace(&r.with_note("pgset.io/switchover", Some(&request.to_note())))
            .await
            .unwrap();
        if written.is_some() {
            break;
        }
    }
    assert!(written.is_some(), "the request is written");
    wait_until("the master answers the request", 30 * SECOND, || {
        support::leader(t.dir())["notes"]["pgset.io/switchover-outcome"]
            .as_str()
            .is_some_and(|o| o.contains(&request.id))
    });
    let record = support::leader(t.dir());
    let outcome = pgset_spec::contract::SwitchoverOutcome::parse(
        record["notes"]["pgset.io/switchover-outcome"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(outcome.state, "refused");
    assert!(
        outcome
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("pgset-2 does not stream"),
        "{outcome:?}"
    );
    assert!(
        record["notes"].get("pgset.io/switchover").is_none(),
        "the request is cleared"
    );
    assert_eq!(
        record["holder"], before["holder"],
        "the master keeps the record"
    );
    assert_eq!(
        std::fs::read_to_string(t.dir().join("pgset-0").join("postmaster.pid")).unwrap(),
        postmaster,
        "postgres was not stopped"
    );
    t.sql(0, "INSERT INTO still VALUES (1)").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_named_replica_promotes_it_after_the_master_died_with_failover_off() {
    let Some(_bin) = pg_or_skip("local_switchover_manual_failover") else {
        return;
    };
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let mut t = TestSet::new(3, 29120);
    t.opts.failover = false;
    local::up(&t.opts).await.expect("set up");
    t.sql(0, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)")
        .unwrap();
    for k in [1, 2] {
        t.wait_for(k, "SELECT count(*) FROM kept", "1", 60 * SECOND);
    }
    // While the master runs, failover is refused: that is a switchover's case.
    let e = local::switchover::failover(t.dir(), "pgset-2", 60 * SECOND)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is live") && e.contains("switchover"), "{e}");

    let agent = local::agent_pid(t.dir(), "pgset-0").unwrap();
    let pm: i32 = std::fs::read_to_string(t.dir().join("pgset-0").join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = kill(Pid::from_raw(agent), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pm), Signal::SIGKILL);
    let before = support::leader(t.dir());
    // Without --yes: what may be lost, and no change.
    let warning = local::switchover::failover_warning(t.dir(), "pgset-2")
        .await
        .unwrap();
    assert!(
        warning.contains("--yes") && warning.contains("lost"),
        "{warning}"
    );
    assert_eq!(support::leader(t.dir())["notes"], before["notes"]);

    let started = Instant::now();
    let report = local::switchover::failover(t.dir(), "pgset-2", 120 * SECOND)
        .await
        .unwrap_or_else(|e| panic!("failover: {e}\n{}", t.log(2)));
    println!(
        "{} (the named replica accepted writes {} ms after the request)",
        report.line(),
        started.elapsed().as_millis()
    );
    assert_eq!(holder(t.dir()), "pgset-2");
    assert_eq!(report.timeline, 2);
    t.sql(2, "INSERT INTO kept VALUES (2)").unwrap();
    // The other replica was not promoted and follows the named one.
    t.wait_for(1, "SELECT count(*) FROM kept", "2", 60 * SECOND);
    assert_eq!(t.sql(1, "SELECT pg_is_in_recovery()").unwrap(), "t");
    wait_until("the request is cleared", 10 * SECOND, || {
        support::leader(t.dir())["notes"]
            .get("pgset.io/failover-to")
            .is_none()
    });
}

/// Writes `request` on the set's leader record as a command would (compare-and-swap, retried
/// on a renewal), past the command's own checks.
async fn write_request(dir: &Path, key: &str, request: &pgset_spec::contract::SwitchoverRequest) {
    use pgset_agent::leader::LeaderStore as _;
    let store = pgset_agent::leader::FileStore::new(
        dir,
        "pgset",
        pgset_agent::leader::Holder::new("test", "test"),
        pgset_agent::leader::LeaderTimings::for_lease(pgset_agent::settings::DEFAULT_LEADER_LEASE)
            .unwrap(),
    );
    for _ in 0..20 {
        let r = store.read().await.unwrap().unwrap();
        if store
            .replace(&r.with_note(key, Some(&request.to_note())))
            .await
            .unwrap()
            .is_some()
        {
            return;
        }
    }
    panic!("the request could not be written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_whose_target_does_not_report_the_shutdown_checkpoint_is_aborted_and_the_master_serves_again()
 {
    let Some(_bin) = pg_or_skip("local_switchover_aborted") else {
        return;
    };
    let _one = ONE_SET_AT_A_TIME.lock().await;
    let t = TestSet::new(3, 29130);
    local::up(&t.opts).await.expect("set up");
    t.sql(0, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)")
        .unwrap();
    t.wait_for(1, "SELECT count(*) FROM kept", "1", 60 * SECOND);
    let master_inode = inode(&t.dir().join("pgset-0"));
    // The target's postgres streams, but its agent cannot say what it received.
    let agent = local::agent_pid(t.dir(), "pgset-1").unwrap();
    kill(Pid::from_raw(agent), Signal::SIGSTOP).unwrap();
    let request = pgset_spec::contract::SwitchoverRequest::new(Some("pgset-1"));
    write_request(t.dir(), "pgset.io/switchover", &request).await;
    let answered = std::panic::catch_unwind(|| {
        wait_until("the master ends the switchover", 60 * SECOND, || {
            support::leader(t.dir())["notes"]["pgset.io/switchover-outcome"]
                .as_str()
                .is_some_and(|o| o.contains(&request.id))
        })
    });
    kill(Pid::from_raw(agent), Signal::SIGCONT).unwrap();
    answered.unwrap_or_else(|_| panic!("no outcome; pgset-0's log:\n{}", t.log(0)));
    let record = support::leader(t.dir());
    let outcome = pgset_spec::contract::SwitchoverOutcome::parse(
        record["notes"]["pgset.io/switchover-outcome"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(outcome.state, "aborted", "{outcome:?}");
    assert!(
        outcome
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("pgset-1 did not report WAL past the shutdown checkpoint"),
        "{outcome:?}"
    );
    assert_eq!(
        record["holder"]["member"], "pgset-0",
        "nothing was handed over"
    );
    assert!(
        record["notes"].get("pgset.io/switchover").is_none(),
        "the request is cleared"
    );
    // The master serves again on its own data and timeline; the target is still a replica.
    wait_until("pgset-0 accepts writes again", 60 * SECOND, || {
        t.sql(0, "INSERT INTO kept VALUES (2)").is_ok()
    });
    assert_eq!(inode(&t.dir().join("pgset-0")), master_inode);
    assert_eq!(
        t.sql(0, "SELECT timeline_id FROM pg_control_checkpoint()")
            .unwrap(),
        "1"
    );
    assert_eq!(t.sql(1, "SELECT pg_is_in_recovery()").unwrap(), "t");
    t.wait_for(1, "SELECT count(*) FROM kept", "2", 60 * SECOND);
    t.wait_for(2, "SELECT count(*) FROM kept", "2", 60 * SECOND);
}
