//! verify's SQL on real PostgreSQL: a local 3-member set formed by the agent answers every query
//! and statement verify runs in the pods (same psql flags, same text), and the check logic passes
//! on what it prints — streaming, read-only replica, the marker replicated with its lag, the data
//! directory, and the marker table dropped again.

#[path = "support/local.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use pgset_local as local;
use pgset_verify::checks;
use pgset_verify::exec::ExecOutput;
use pgset_verify::sql;
use pgset_verify::{Finding, Verdict};
use support::{TestSet, pg_or_skip};

/// Member `k` of the set, as verify's psql reaches it.
fn member(t: &TestSet, k: i32) -> Member {
    Member {
        socket_dir: t.dir().join("run"),
        port: t.port(k),
    }
}

fn run_psql(t: &TestSet, k: i32, argv: &[String]) -> ExecOutput {
    member(t, k).run(argv)
}

/// Runs a `sh -c ... psql` argv of `pgset_verify::sql::psql_remote` against member `k` over
/// TCP: the pod's secret directory becomes the set's, port 5432 the member's.
fn run_remote(t: &TestSet, k: i32, argv: &[String]) -> ExecOutput {
    let secret_dir = t.dir().join("secret");
    let password = std::fs::read_to_string(
        secret_dir.join(pgset_spec::contract::secret::SUPERUSER_PASSWORD_KEY),
    )
    .expect("the set's superuser password file");
    assert!(
        argv.iter().all(|a| !a.contains(password.trim())),
        "no argument carries the password"
    );
    let mut args: Vec<String> = argv[1..].to_vec();
    args[1] = args[1].replace(
        pgset_spec::contract::SECRET_MOUNT,
        &secret_dir.display().to_string(),
    );
    let p = args.iter().position(|a| a == "-p").expect("psql -p");
    args[p + 1] = t.port(k).to_string();
    let out = pgset_command::HostCommand::new(&argv[0])
        .args(args)
        .quiet()
        .output()
        .expect("run sh");
    exec_output(out)
}

/// A finished process as verify sees a finished exec.
fn exec_output(out: pgset_command::Output) -> ExecOutput {
    ExecOutput {
        exit_code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

fn assert_pass(what: &str, f: &Finding) {
    assert_eq!(f.verdict, Verdict::Pass, "{what}: {}", f.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_sql_passes_on_a_real_streaming_set() {
    if pg_or_skip("verify_sql_local").is_none() {
        return;
    }
    let t = TestSet::new(3, 26570);
    local::up(&t.opts).await.expect("up");
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "2",
        Duration::from_secs(60),
    );
    let replicas = vec!["pgset-1".to_string(), "pgset-2".to_string()];

    // Check 4.
    let out = run_psql(&t, 0, &sql::psql_local(&[sql::REPLICATION_QUERY]));
    assert!(out.success(), "{}", out.failure_summary());
    let rows = sql::parse_replication(&out.stdout).expect("parse pg_stat_replication");
    assert_pass("streaming", &checks::streaming(&replicas, &rows));

    // Check 5 over TCP with the superuser's password, as through the replica Service: the
    // shell in the pod reads the password file, no argument carries it.
    let write = run_remote(
        &t,
        1,
        &sql::psql_remote("127.0.0.1", &[sql::READ_ONLY_PROBE], false),
    );
    let read = run_remote(
        &t,
        1,
        &sql::psql_remote("127.0.0.1", &[sql::IN_RECOVERY_QUERY], false),
    );
    assert_pass("read-only", &checks::replica_read_only(&write, &read));
    let primary = run_psql(&t, 0, &sql::psql_local(&[sql::IN_RECOVERY_QUERY]));
    assert_eq!(
        checks::replica_read_only(&write, &primary).verdict,
        Verdict::Fail,
        "a read answered by the primary must fail the check"
    );

    // Check 6: waiters on both replicas first, then the insert on the primary.
    let [create, lsn_query] = sql::create_marker_table_at_lsn();
    let created = run_psql(&t, 0, &sql::psql_local(&[&create, &lsn_query]));
    assert!(created.success(), "{}", created.failure_summary());
    let lsn = sql::parse_lsn(&created.stdout).expect("a WAL position");
    let token = sql::new_token();
    let handles: Vec<_> = [1, 2]
        .into_iter()
        .map(|k| {
            let argv = sql::psql_local(&[
                &sql::wait_for_replay(&lsn, 30),
                &sql::wait_for_marker(&token, 30),
                &sql::report_marker_sighting(&token),
            ]);
            let target = member(&t, k);
            std::thread::spawn(move || (format!("pgset-{k}"), target.run(&argv)))
        })
        .collect();
    // Let the waiters connect and start polling, as verify does.
    std::thread::sleep(Duration::from_millis(1500));
    let insert = run_psql(&t, 0, &sql::psql_local(&[&sql::insert_marker(&token)]));
    let sightings: BTreeMap<String, Result<ExecOutput, String>> = handles
        .into_iter()
        .map(|h| {
            let (pod, out) = h.join().expect("waiter thread");
            (pod, Ok(out))
        })
        .collect();
    let finding = checks::replicated_write(&token, &insert, &sightings);
    assert_pass("replicated write", &finding);
    let lag = finding.measurements.lag_ms.expect("lag measured");
    assert!(lag < 10_000.0, "lag {lag} ms");
    eprintln!("verify_sql_local: {}", finding.message);

    // Check 7's inputs: the running data directory and its stat.
    let dd = run_psql(&t, 1, &sql::psql_local(&[sql::DATA_DIRECTORY_QUERY]));
    let data_dir = dd.stdout.trim().to_string();
    assert_eq!(data_dir, t.dir().join("pgset-1").display().to_string());
    let stat = pgset_command::HostCommand::new("stat")
        .args(sql::stat(&[data_dir.clone(), format!("{data_dir}/PG_VERSION")])[1..].to_vec())
        .quiet()
        .read()
        .expect("stat");
    let stats = sql::parse_stat(&stat).expect("parse stat");
    assert_eq!(stats[0].kind, "directory");
    assert!(
        stats[0].mode == 0o700 || stats[0].mode == 0o750,
        "{stats:?}"
    );
    assert_eq!(stats[1].path, format!("{data_dir}/PG_VERSION"));

    // Cleanup drops only the marker table, and the drop replicates.
    let dropped = run_psql(&t, 0, &sql::psql_local(&[&sql::drop_marker_table()]));
    assert!(dropped.success(), "{}", dropped.failure_summary());
    t.wait_for(
        2,
        &format!("SELECT to_regclass('{}') IS NULL", sql::MARKER_TABLE),
        "t",
        Duration::from_secs(20),
    );
}

/// Where verify's psql reaches one member of the local set.
struct Member {
    socket_dir: std::path::PathBuf,
    port: u16,
}

impl Member {
    /// Runs a psql argv built by `pgset_verify::sql`: the pod's socket directory becomes the
    /// set's, and the member's port is added.
    fn run(&self, argv: &[String]) -> ExecOutput {
        let bin = pgset_agent::pgbin::PgBin::find(None).expect("PostgreSQL binaries");
        let mut args: Vec<String> = argv[1..].to_vec();
        let h = args.iter().position(|a| a == "-h").expect("psql -h");
        assert_eq!(args[h + 1], pgset_spec::contract::SOCKET_DIR);
        args[h + 1] = self.socket_dir.display().to_string();
        args.insert(h + 2, "-p".into());
        args.insert(h + 3, self.port.to_string());
        let out = bin
            .command("psql")
            .args(args)
            .quiet()
            .output()
            .expect("run psql");
        exec_output(out)
    }
}
