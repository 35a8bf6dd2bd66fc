//! Local mode on real PostgreSQL, the probes tell the truth: a replica whose replay is paused,
//! further behind than `replication.maxReplicaLag`, or standing still while WAL waits for longer
//! than its seconds (an idle master is no lag) leaves readiness and says why, and is ready
//! again once it catches up (the master's readiness unchanged); a crash recovery that makes
//! progress stays live for longer than the liveness timeout, and one that stands still does not;
//! a shutdown that neither ends nor progresses stops being live once the timeout passes.

#[path = "support/local.rs"]
mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_local as local;
use pgset_spec::contract::{HEALTH_LIVE_PATH, HEALTH_READY_PATH, HEALTH_STATUS_PATH};
use support::{TestSet, pg_or_skip};

const SECOND: Duration = Duration::from_secs(1);

async fn get(t: &TestSet, k: i32, path: &str) -> (u16, String) {
    pgset_agent::health::get(t.set().health_addr(k), path)
        .await
        .unwrap_or((0, "no answer".into()))
}

async fn status(t: &TestSet, k: i32) -> serde_json::Value {
    let (_, body) = get(t, k, HEALTH_STATUS_PATH).await;
    serde_json::from_str(&body).unwrap_or_default()
}

/// Polls `path` on member k until its answer satisfies `f`, or panics naming `what`.
async fn until(
    t: &TestSet,
    k: i32,
    path: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let start = Instant::now();
    loop {
        let (code, body) = get(t, k, path).await;
        if f(code, &body) {
            return (code, body);
        }
        assert!(
            start.elapsed() < timeout,
            "member {k}: {what} within {timeout:?}; last {path}: {code} {body}\nlog tail:\n{}",
            local::log_tail(t.dir(), &t.set().member(k), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_or_lagging_replica_is_not_ready_and_is_again_once_it_catches_up() {
    if pg_or_skip("local_probes_replay").is_none() {
        return;
    }
    let mut t = TestSet::new(2, 27310);
    t.opts.max_replica_lag = pgset_spec::LagBound {
        bytes: 1 << 20,
        seconds: 10,
    };
    local::up(&t.opts).await.expect("up");
    until(&t, 1, HEALTH_READY_PATH, "ready", 30 * SECOND, |c, _| {
        c == 200
    })
    .await;

    t.sql(1, "SELECT pg_wal_replay_pause()").unwrap();
    let (_, body) = until(&t, 1, HEALTH_READY_PATH, "not ready", 5 * SECOND, |c, _| {
        c == 503
    })
    .await;
    assert!(body.contains("replay paused"), "{body}");
    assert_eq!(status(&t, 1).await["postgres"]["replayPaused"], true);

    // More than the bound (1 MiB) arrives and waits to be replayed.
    t.sql(
        0,
        "CREATE TABLE lag AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )
    .unwrap();
    let (_, body) = until(
        &t,
        1,
        HEALTH_READY_PATH,
        "says how far replay is behind",
        15 * SECOND,
        |c, b| c == 503 && b.contains("behind (bound 1 MiB)"),
    )
    .await;
    eprintln!("paused replica: {}", body.trim());
    assert!(body.contains("replay paused"), "{body}");
    let st = status(&t, 1).await;
    let lag = st["postgres"]["replayLagBytes"].as_u64().unwrap_or(0);
    assert!(lag > 1 << 20, "{st}");
    // The master's readiness is its own: it still accepts writes.
    assert_eq!(
        get(&t, 0, HEALTH_READY_PATH).await,
        (200, "ready: accepts writes\n".to_string())
    );

    t.sql(1, "SELECT pg_wal_replay_resume()").unwrap();
    let resumed = Instant::now();
    until(
        &t,
        1,
        HEALTH_READY_PATH,
        "ready after resuming",
        10 * SECOND,
        |c, _| c == 200,
    )
    .await;
    eprintln!(
        "ready again {:.1} s after resuming",
        resumed.elapsed().as_secs_f32()
    );
    t.wait_for(1, "SELECT count(*) FROM lag", "20000", 10 * SECOND);
    let st = status(&t, 1).await;
    assert_eq!(st["postgres"]["replayPaused"], false, "{st}");
    assert_eq!(st["postgres"]["replayLagBytes"], 0, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_replay_stands_still_while_wal_waits_is_not_ready_after_the_seconds_bound()
{
    if pg_or_skip("local_probes_replay_stall").is_none() {
        return;
    }
    let mut t = TestSet::new(2, 27340);
    let bound = 3 * SECOND;
    t.opts.max_replica_lag = pgset_spec::LagBound {
        bytes: 16 << 20,
        seconds: bound.as_secs(),
    };
    local::up(&t.opts).await.expect("up");
    until(&t, 1, HEALTH_READY_PATH, "ready", 30 * SECOND, |c, _| {
        c == 200
    })
    .await;
    // Replay holds every commit back for an hour: it stands still at the next commit.
    t.sql(1, "ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
        .unwrap();
    t.sql(1, "SELECT pg_reload_conf()").unwrap();
    // An idle master sends nothing to replay: ready for longer than the bound.
    tokio::time::sleep(bound + 2 * SECOND).await;
    let (code, body) = get(&t, 1, HEALTH_READY_PATH).await;
    assert_eq!(code, 200, "idle is not lagging: {body}");

    t.sql(0, "CREATE TABLE held AS SELECT 1 AS x").unwrap();
    let wrote = Instant::now();
    let (_, body) = until(
        &t,
        1,
        HEALTH_READY_PATH,
        "not ready once replay stood still for the bound",
        5 * bound,
        |c, _| c == 503,
    )
    .await;
    let after = wrote.elapsed();
    eprintln!(
        "held replay: not ready after {:.1} s: {}",
        after.as_secs_f32(),
        body.trim()
    );
    assert!(after >= bound, "{after:?}");
    assert!(body.contains("replay has not advanced for"), "{body}");
    assert!(body.contains("(bound 3 s)"), "{body}");
    let st = status(&t, 1).await;
    assert!(
        st["postgres"]["replayStalledSeconds"]
            .as_f64()
            .unwrap_or(0.0)
            >= 3.0,
        "{st}"
    );
    assert!(
        st["postgres"]["replayLagBytes"].as_u64().unwrap_or(0) > 0,
        "{st}"
    );
    assert_eq!(st["postgres"]["replayPaused"], false, "{st}");

    t.sql(1, "ALTER SYSTEM RESET recovery_min_apply_delay")
        .unwrap();
    t.sql(1, "SELECT pg_reload_conf()").unwrap();
    until(
        &t,
        1,
        HEALTH_READY_PATH,
        "ready once replay moves",
        10 * SECOND,
        |c, _| c == 200,
    )
    .await;
    t.wait_for(1, "SELECT count(*) FROM held", "1", 10 * SECOND);
}

/// The children of `pid` whose process title contains `word` (the test may read titles; the
/// agent does not).
fn child_titled(pid: i32, word: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()) {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        let title = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&title).contains(word) {
            return Some(child);
        }
    }
    None
}

/// Continues a stopped process when the test ends, pass or fail, so the set can stop.
struct Resume(Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_that_progresses_stays_live_and_one_that_stands_still_does_not() {
    if pg_or_skip("local_probes_crash_recovery").is_none() {
        return;
    }
    let mut t = TestSet::new(1, 27320);
    // Above the agent's 2 s between new connections, so the last answer before the crash
    // counts; the slowed recovery lasts half as long again.
    let timeout = 5 * SECOND;
    t.opts.liveness_timeout = Some(timeout);
    local::up(&t.opts).await.expect("up");
    assert_eq!(get(&t, 0, HEALTH_LIVE_PATH).await.0, 200);
    // WAL to replay after the crash: everything since this checkpoint.
    t.sql(0, "CHECKPOINT").unwrap();
    t.sql(
        0,
        "CREATE TABLE w AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 200000) g",
    )
    .unwrap();
    // One record per row: replay that takes a while.
    t.sql(0, "UPDATE w SET g = g + 1").unwrap();
    t.sql(0, "UPDATE w SET g = g - 1").unwrap();
    t.sql(0, "UPDATE w SET g = g + 1").unwrap();
    let postmaster = pgset_agent::datadir::live_postmaster(&t.dir().join("pgset-0")).unwrap();
    let walwriter: i32 = t
        .sql(
            0,
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'",
        )
        .unwrap()
        .parse()
        .unwrap();
    kill(Pid::from_raw(walwriter), Signal::SIGKILL).unwrap();
    let crashed = Instant::now();

    // The postmaster reinitialises in place and starts a startup process to replay the WAL.
    let startup = loop {
        if let Some(pid) = child_titled(postmaster, "startup") {
            break pid;
        }
        assert!(crashed.elapsed() < 10 * SECOND, "a startup process runs");
        std::thread::sleep(Duration::from_millis(5));
    };
    let startup_pid = Pid::from_raw(startup);
    let _resume = Resume(startup_pid);
    let alive = || std::fs::metadata(format!("/proc/{startup}")).is_ok();

    // Recovery under way, as pg_control says (after the data directory's fsync), before it is
    // slowed down: the agent names the state it reads.
    until(
        &t,
        0,
        HEALTH_READY_PATH,
        "pg_control in crash recovery",
        60 * SECOND,
        |_, body| body.contains("pg_control: in crash recovery"),
    )
    .await;

    // Slowed down (stopped most of the time), replay still progresses: live throughout,
    // for half as long again as the liveness timeout. The slice it runs in is short and taken
    // on a blocking clock, so a loaded machine that oversleeps the stopped part does not hand
    // it more time to finish early.
    let mut codes = Vec::new();
    let slow_until = Instant::now() + timeout + timeout / 2;
    while Instant::now() < slow_until && alive() {
        let _ = kill(startup_pid, Signal::SIGSTOP);
        let (code, body) = get(&t, 0, HEALTH_LIVE_PATH).await;
        codes.push((crashed.elapsed(), code, body));
        tokio::time::sleep(Duration::from_millis(450)).await;
        let _ = kill(startup_pid, Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(10));
        let _ = kill(startup_pid, Signal::SIGSTOP);
    }
    assert!(
        alive(),
        "the recovery must outlast the slowed window for this test to mean anything (it ended \
         {:.1} s after the crash)",
        crashed.elapsed().as_secs_f32()
    );
    let refused = pgset_agent::Db::socket(&t.dir().join("run"), t.port(0), "test", SECOND)
        .await
        .map(|_| ());
    assert!(
        refused.as_ref().is_err_and(pgset_agent::cannot_connect_now),
        "postgres refuses connections with 57P03 while it recovers: {refused:?}"
    );
    eprintln!(
        "liveness during the slowed recovery (s, code): {:?}",
        codes
            .iter()
            .map(|(a, c, _)| (a.as_secs_f32(), *c))
            .collect::<Vec<_>>()
    );
    for (at, code, body) in &codes {
        assert_eq!(
            *code,
            200,
            "live at {:.1} s of a progressing recovery: {body}",
            at.as_secs_f32()
        );
    }

    // Stopped outright, the recovery makes no progress: not live once the timeout passes.
    kill(startup_pid, Signal::SIGSTOP).unwrap();
    let stood = Instant::now();
    let (_, body) = until(&t, 0, HEALTH_LIVE_PATH, "not live", 4 * timeout, |c, _| {
        c == 503
    })
    .await;
    let after = stood.elapsed();
    kill(startup_pid, Signal::SIGCONT).unwrap();
    eprintln!(
        "stalled recovery: not live after {:.1} s: {}",
        after.as_secs_f32(),
        body.trim()
    );
    assert!(after >= timeout - SECOND, "{after:?}");
    assert!(body.contains("made progress"), "{body}");

    // Recovery ends: the member accepts writes, live and ready again, with its data.
    until(
        &t,
        0,
        HEALTH_READY_PATH,
        "ready after recovery",
        60 * SECOND,
        |c, _| c == 200,
    )
    .await;
    assert_eq!(get(&t, 0, HEALTH_LIVE_PATH).await.0, 200);
    assert_eq!(t.sql(0, "SELECT count(*) FROM w").unwrap(), "200000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_neither_ends_nor_progresses_is_not_live_after_the_timeout() {
    if pg_or_skip("local_probes_stopping").is_none() {
        return;
    }
    let mut t = TestSet::new(1, 27330);
    let timeout = 3 * SECOND;
    t.opts.liveness_timeout = Some(timeout);
    local::up(&t.opts).await.expect("up");
    let postmaster = pgset_agent::datadir::live_postmaster(&t.dir().join("pgset-0")).unwrap();
    let agent = local::agent_pid(t.dir(), &t.set().member(0)).expect("agent pid");
    // A postmaster that cannot act on the fast shutdown the agent asks for.
    let _resume = Resume(Pid::from_raw(postmaster));
    kill(Pid::from_raw(postmaster), Signal::SIGSTOP).unwrap();
    kill(Pid::from_raw(agent), Signal::SIGTERM).unwrap();
    let asked = Instant::now();
    let (_, body) = until(&t, 0, HEALTH_LIVE_PATH, "stopping", 2 * SECOND, |_, b| {
        b.contains("shutting down")
    })
    .await;
    assert!(
        body.starts_with("live:"),
        "stopping is live at first: {body}"
    );
    let (_, body) = until(&t, 0, HEALTH_LIVE_PATH, "not live", 4 * timeout, |c, _| {
        c == 503
    })
    .await;
    let after = asked.elapsed();
    eprintln!(
        "stuck shutdown: not live after {:.1} s: {}",
        after.as_secs_f32(),
        body.trim()
    );
    assert!(after >= timeout - SECOND, "{after:?}");
    assert!(body.contains("shutting down"), "{body}");
    kill(Pid::from_raw(postmaster), Signal::SIGCONT).unwrap();
    let gone = Instant::now();
    while std::fs::metadata(format!("/proc/{agent}")).is_ok() {
        assert!(
            gone.elapsed() < 30 * SECOND,
            "the agent ends once postgres stops"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
