//! Local mode on real PostgreSQL, a member whose postmaster is killed: its agent exits with a
//! one-line reason in its termination log, and on the next start it clears the socket lock file
//! the dead postmaster left (the pod's socket volume outlives a container, and the pid in the
//! lock can belong to an unrelated process of the new container), so postgres starts on the first
//! try instead of refusing with "lock file already exists".

#[path = "support/local.rs"]
mod support;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_local as local;
use support::{TestSet, pg_or_skip, wait_until};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_says_why_and_restarts_past_its_stale_socket_lock() {
    let Some(bin) = pg_or_skip("local_restart_stale_socket_lock") else {
        return;
    };
    let major = bin.supported_major().unwrap();
    let t = TestSet::new(2, 26780);
    local::up(&t.opts).await.expect("set up");
    let served = t.sql(0, "SHOW server_version_num").unwrap();
    assert_eq!(
        served.trim().parse::<u32>().unwrap() / 10000,
        major,
        "the members run the binaries under test"
    );
    t.sql(0, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .unwrap();

    let pgdata = t.dir().join("pgset-0");
    let pid_text = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap();
    let postmaster: i32 = pid_text.lines().next().unwrap().trim().parse().unwrap();
    let agent = local::agent_pid(t.dir(), "pgset-0").expect("the master's agent runs");
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).unwrap();
    wait_until(
        "the master's agent exits with its postmaster",
        60 * SECOND,
        || kill(Pid::from_raw(agent), None).is_err(),
    );

    let reason = std::fs::read_to_string(local::termination_log(t.dir(), "pgset-0"))
        .expect("the agent wrote its reason");
    assert_eq!(reason.lines().count(), 1, "one line: {reason:?}");
    assert!(
        reason.contains("postgres ended on its own") && reason.contains("SIGKILL"),
        "{reason}"
    );

    // The dead postmaster's socket lock names a pid; make it one a live, unrelated process has,
    // as in a new container whose processes reuse the old pids.
    let lock = t
        .dir()
        .join("run")
        .join(format!(".s.PGSQL.{}.lock", t.port(0)));
    let old = std::fs::read_to_string(&lock).expect("the killed postmaster left its socket lock");
    // PostgreSQL takes a lock naming another user's process for stale (kill(2) says EPERM), so
    // the squatter runs as the user postgres runs as, as every process of a container does.
    let squatter = if nix::unistd::Uid::effective().is_root() {
        pgset_command::HostCommand::new("setpriv").args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "sleep",
            "300",
        ])
    } else {
        pgset_command::HostCommand::new("sleep").arg("300")
    }
    .quiet()
    .start()
    .unwrap();
    let squatter_pid = squatter.pids()[0];
    let rest: Vec<&str> = old.lines().skip(1).collect();
    std::fs::write(&lock, format!("{squatter_pid}\n{}\n", rest.join("\n"))).unwrap();

    local::up(&t.opts)
        .await
        .expect("the master starts again on the first try");
    let log = t.log(0);
    assert!(
        !log.contains("already exists"),
        "postgres refused the socket lock:\n{log}"
    );
    assert!(
        log.contains(".s.PGSQL."),
        "the agent says it cleared the lock:\n{log}"
    );
    assert_eq!(t.sql(0, "SELECT n FROM kept").unwrap().trim(), "7");
    assert!(
        kill(Pid::from_raw(squatter_pid as i32), None).is_ok(),
        "the unrelated process is untouched"
    );
    let _ = squatter.kill();
}
