//! Local mode on real PostgreSQL, health from PostgreSQL's own state: a log line any database
//! user can forge changes nothing; a stopped (SIGSTOP) postmaster turns not ready within the
//! readiness deadline and not live after the liveness timeout, and both come back on SIGCONT;
//! replicas keep serving reads while the master is down, start no processes and repeat no log
//! line meanwhile, and stream again within seconds of the master's return.

#[path = "support/local.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_local as local;
use pgset_spec::contract::{HEALTH_LIVE_PATH, HEALTH_READY_PATH};
use support::{TestSet, inode, pg_or_skip};

const SECOND: Duration = Duration::from_secs(1);
const STREAMING_COUNT: &str = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";

async fn code(t: &TestSet, k: i32, path: &str) -> Option<u16> {
    pgset_agent::health::probe(t.set().health_addr(k), path).await
}

/// Children of `pid` seen while polling for `window` (pid and start time, so a reused pid counts
/// again).
fn children_during(pid: i32, window: Duration) -> usize {
    let mut seen = HashSet::new();
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.filter_map(|e| e.ok()) {
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    continue;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                if fields.get(1) == Some(&pid.to_string().as_str()) {
                    seen.insert((e.file_name(), fields.get(19).map(|s| s.to_string())));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_wal_error_in_a_query_changes_nothing() {
    if pg_or_skip("local_health_forged_log").is_none() {
        return;
    }
    let t = TestSet::new(2, 26740);
    local::up(&t.opts).await.expect("up");
    t.sql(0, "CREATE ROLE mallory LOGIN").unwrap();
    t.wait_for(
        1,
        "SELECT count(*) FROM pg_roles WHERE rolname = 'mallory'",
        "1",
        30 * SECOND,
    );
    let replica = t.dir().join("pgset-1");
    let before = inode(&replica);
    let bin = pgset_agent::pgbin::PgBin::find(None).unwrap();
    let out = bin
        .command("psql")
        .args(["-X", "-h"])
        .arg(t.dir().join("run"))
        .args(["-p", &t.port(1).to_string(), "-U", "mallory", "-d", "postgres", "-c"])
        .arg(
            "select 1/0 as \"requested WAL segment 000000010000000000000001 has already been removed\"",
        )
        .quiet()
        .output()
        .unwrap();
    assert!(!out.status.success(), "the query fails as written");
    std::thread::sleep(6 * SECOND);
    assert!(
        t.log(1).contains("has already been removed"),
        "postgres logged the forged text"
    );
    assert_eq!(inode(&replica), before, "same data directory");
    assert!(
        !t.dir().join("pgset-1.previous").exists(),
        "no copy was made"
    );
    assert!(!t.log(1).contains("copied again"));
    assert_eq!(t.sql(0, STREAMING_COUNT).unwrap(), "1", "still streaming");
    assert_eq!(code(&t, 1, HEALTH_READY_PATH).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postmaster_is_not_ready_then_not_live_and_recovers_on_sigcont() {
    if pg_or_skip("local_health_sigstop").is_none() {
        return;
    }
    // A replica's postmaster: a frozen master gives its role up and is stopped (see
    // local_failover), a replica only leaves readiness and liveness until it runs again.
    let mut t = TestSet::new(2, 26750);
    t.opts.liveness_timeout = Some(8 * SECOND);
    local::up(&t.opts).await.expect("up");
    assert_eq!(code(&t, 1, HEALTH_READY_PATH).await, Some(200));
    let postmaster = pgset_agent::datadir::live_postmaster(&t.dir().join("pgset-1")).unwrap();
    kill(Pid::from_raw(postmaster), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();

    let mut not_ready_after = None;
    let mut not_live_after = None;
    let mut live_at_2s = None;
    while stopped.elapsed() < 30 * SECOND && not_live_after.is_none() {
        if not_ready_after.is_none() && code(&t, 1, HEALTH_READY_PATH).await == Some(503) {
            not_ready_after = Some(stopped.elapsed());
        }
        let live = code(&t, 1, HEALTH_LIVE_PATH).await;
        if live_at_2s.is_none() && stopped.elapsed() >= 2 * SECOND {
            live_at_2s = live;
        }
        if live == Some(503) {
            not_live_after = Some(stopped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kill(Pid::from_raw(postmaster), Signal::SIGCONT).unwrap();
    let not_ready_after = not_ready_after.expect("readiness must be withdrawn");
    let not_live_after = not_live_after.expect("liveness must fail");
    eprintln!(
        "SIGSTOP: not ready after {:.1} s, not live after {:.1} s",
        not_ready_after.as_secs_f32(),
        not_live_after.as_secs_f32()
    );
    assert!(not_ready_after <= 8 * SECOND, "{not_ready_after:?}");
    assert_eq!(live_at_2s, Some(200), "liveness is patient");
    assert!(
        not_live_after >= 6 * SECOND && not_live_after <= 16 * SECOND,
        "{not_live_after:?}"
    );

    let resumed = Instant::now();
    while code(&t, 1, HEALTH_READY_PATH).await != Some(200)
        || code(&t, 1, HEALTH_LIVE_PATH).await != Some(200)
    {
        assert!(
            resumed.elapsed() < 15 * SECOND,
            "ready and live again after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_reads_while_the_master_is_down_and_stream_again_within_seconds() {
    if pg_or_skip("local_health_master_down").is_none() {
        return;
    }
    let mut t = TestSet::new(3, 26760);
    // The master stays down longer than the leader record's lease: with failover on, a replica
    // would take the role (local_failover); here the replicas keep serving reads.
    t.opts.failover = false;
    local::up(&t.opts).await.expect("up");
    t.sql(0, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .unwrap();
    for k in [1, 2] {
        t.wait_for(k, "SELECT count(*) FROM t", "1", 30 * SECOND);
    }
    t.wait_for(0, STREAMING_COUNT, "2", 30 * SECOND);

    assert!(
        local::stop_member(t.dir(), "pgset-0", 60 * SECOND)
            .await
            .unwrap()
    );
    let log_before = t.log(1).len();
    let agent1 = local::agent_pid(t.dir(), "pgset-1").unwrap();
    let forks = tokio::task::spawn_blocking(move || children_during(agent1, 20 * SECOND));
    let window = Instant::now();
    while window.elapsed() < 20 * SECOND {
        for k in [1, 2] {
            assert_eq!(
                code(&t, k, HEALTH_READY_PATH).await,
                Some(200),
                "replica {k} stays ready while the master is down ({:?} in)",
                window.elapsed()
            );
            assert_eq!(t.sql(k, "SELECT count(*) FROM t").unwrap(), "1");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let forks = forks.await.unwrap();
    assert!(forks <= 2, "the agent started {forks} processes in 20 s");
    let log = t.log(1)[log_before..].to_string();
    let mut agent_lines: HashMap<String, usize> = HashMap::new();
    for line in log.lines().filter(|l| l.contains("pgset-agent:")) {
        let text = line.split_once("pgset-agent:").unwrap().1.to_string();
        *agent_lines.entry(text).or_default() += 1;
    }
    assert!(
        agent_lines.values().all(|n| *n <= 1),
        "the agent repeats itself: {agent_lines:?}"
    );

    local::up(&t.opts).await.expect("master back");
    let back = Instant::now();
    t.wait_for(0, STREAMING_COUNT, "2", 30 * SECOND);
    let rejoin = back.elapsed();
    eprintln!(
        "replicas streaming {:.2} s after the master was ready",
        rejoin.as_secs_f32()
    );
    assert!(rejoin <= 3 * SECOND, "re-join took {rejoin:?}");
}

/// Accepts connections on `port` and never answers them, like an address whose host went away
/// while its connections were not reset; the accepted sockets stay open until the guard drops.
struct Tarpit {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<std::net::TcpStream>>>,
}

impl Tarpit {
    fn start(port: u16) -> Tarpit {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            held
        });
        Tarpit {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops listening (the port is free again) and returns the connections it still holds.
    fn close_listener(mut self) -> Vec<std::net::TcpStream> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_receiver_hanging_on_a_silent_address_is_restarted_once_the_master_answers() {
    if pg_or_skip("local_health_silent_address").is_none() {
        return;
    }
    let t = TestSet::new(2, 26770);
    local::up(&t.opts).await.expect("up");
    t.wait_for(0, STREAMING_COUNT, "1", 30 * SECOND);

    // The master goes away and its address accepts connections but never answers.
    assert!(
        local::stop_member(t.dir(), "pgset-0", 60 * SECOND)
            .await
            .unwrap()
    );
    let tarpit = Tarpit::start(t.port(0));
    tokio::time::sleep(6 * SECOND).await;
    assert_eq!(
        code(&t, 1, HEALTH_READY_PATH).await,
        Some(200),
        "the replica serves reads while the master does not answer"
    );
    let held = tarpit.close_listener();
    assert!(
        !held.is_empty(),
        "the WAL receiver connected to the silent address"
    );

    // The master is back on the port; the hung connections stay open (never reset).
    local::up(&t.opts).await.expect("master back");
    let back = Instant::now();
    while t.sql(0, STREAMING_COUNT).as_deref() != Ok("1") {
        assert!(
            back.elapsed() < 30 * SECOND,
            "the replica does not stream again; its log:\n{}",
            t.log(1)
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejoin = back.elapsed();
    eprintln!(
        "replica streaming {:.2} s after the master was ready, {} connection(s) left hanging",
        rejoin.as_secs_f32(),
        held.len()
    );
    assert!(rejoin <= 5 * SECOND, "re-join took {rejoin:?}");
    assert!(
        t.log(1).contains("restarting it"),
        "the agent restarted the WAL receiver"
    );
    drop(held);
}
