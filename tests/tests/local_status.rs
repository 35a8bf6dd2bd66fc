//! Local mode on real PostgreSQL, `cargo xtask local status`: its JSON carries the summary
//! (cluster, cluster id, system identifier, version, master and uptime, members ready, LSN,
//! timeline) and, per member, lag, slot, identity check and the agent's own detail; its exit code
//! is 0 only while the set is healthy: a slot kept for no member, a replica behind the lag bound
//! and a stopped replica make it 2; an earlier exit of a member running again is history.
//! Ports 28300-28302.

#[path = "support/local.rs"]
mod support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pgset_local as local;
use support::{TestSet, pg_or_skip};

const PORT: u16 = 28300;

/// The pgset binary (what `cargo xtask local` runs), built once into the same target directory.
fn xtask_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        pgset_command::HostCommand::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "pgset-cli",
                "--bin",
                "pgset",
                "--manifest-path",
            ])
            .arg(pgset_tests::workspace_root().join("Cargo.toml"))
            .run_attached()
            .expect("build pgset");
        profile_dir.join("pgset")
    })
    .clone()
}

/// `xtask local status --dir DIR -o OUTPUT`: exit code and stdout.
fn status(t: &TestSet, output: &str) -> (i32, String) {
    let out = pgset_command::HostCommand::new(xtask_bin())
        .args(["local", "status", "--dir"])
        .arg(t.dir())
        .args(["--output", output])
        .quiet()
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), out.stdout)
}

fn json(t: &TestSet) -> (i32, serde_json::Value) {
    let (code, text) = status(t, "json");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (code, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_has_every_field_and_its_exit_code_follows_health() {
    if pg_or_skip("local_status").is_none() {
        return;
    }
    let t = TestSet::new(3, PORT);
    local::up(&t.opts).await.expect("set up");
    // Streaming and readiness settle within a moment of `up`.
    support::wait_until("status says healthy", Duration::from_secs(30), || {
        status(&t, "json").0 == 0
    });

    let (code, v) = json(&t);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["warnings"], serde_json::json!([]));
    let s = &v["summary"];
    assert_eq!(s["cluster"], "pgset");
    let cluster_id = std::fs::read_to_string(t.dir().join("secret/cluster-id")).unwrap();
    assert_eq!(s["cluster_id"], cluster_id.trim());
    assert_eq!(
        s["system_identifier"],
        t.sql(0, "SELECT system_identifier FROM pg_control_system()")
            .unwrap()
    );
    assert_eq!(
        s["postgres_version"],
        t.sql(0, "SHOW server_version").unwrap()
    );
    assert_eq!(s["master"], "pgset-0");
    assert!(s["master_uptime_s"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["members_ready"], 3);
    assert_eq!(s["members_total"], 3);
    assert!(
        s["master_lsn"].as_str().unwrap().contains('/'),
        "an LSN X/Y: {s}"
    );
    assert_eq!(s["timeline"], 1);

    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for (k, m) in members.iter().enumerate() {
        assert_eq!(m["name"], format!("pgset-{k}"));
        assert_eq!(m["ready"], true, "{m:#}");
        assert!(m["reason"].as_str().is_some_and(|r| !r.is_empty()), "{m:#}");
        assert!(m["agent_pid"].as_i64().is_some(), "{m:#}");
        assert_eq!(m["timeline"], 1);
        assert_eq!(m["identity"]["state"], "ok", "{m:#}");
        assert_eq!(m["detail"]["systemIdentifier"], s["system_identifier"]);
        if k == 0 {
            assert_eq!(m["role"], "master");
            assert_eq!(m["detail"]["inRecovery"], false);
            assert!(m["slot"].is_null());
        } else {
            assert_eq!(m["role"], "replica");
            assert_eq!(m["streaming"], true);
            assert_eq!(m["detail"]["inRecovery"], true);
            assert!(m["lag_bytes"].as_i64().is_some_and(|b| b >= 0), "{m:#}");
            assert_eq!(m["slot"]["slot"], format!("pgset_{k}"));
            assert_eq!(m["slot"]["active"], true);
            assert!(m["slot"]["wal_status"].is_string(), "{m:#}");
            assert!(m["slot"]["retained_bytes"].as_i64().is_some(), "{m:#}");
        }
    }
    let (code, table) = status(&t, "table");
    assert_eq!(code, 0);
    assert!(table.contains("ready 3/3"), "{table}");
    assert!(table.trim_end().ends_with("healthy"), "{table}");
    let (code, yaml) = status(&t, "yaml");
    assert_eq!(code, 0);
    assert!(yaml.contains("healthy: true"), "{yaml}");

    // A slot that keeps WAL for no member: a warning, exit code 2; healthy again once dropped.
    t.sql(
        0,
        "SELECT 1 FROM pg_create_physical_replication_slot('orphan_tool', true)",
    )
    .unwrap();
    let (code, v) = json(&t);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["healthy"], false);
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("slot orphan_tool retains") && warnings.contains("for no member"),
        "{warnings}"
    );
    t.sql(0, "SELECT pg_drop_replication_slot('orphan_tool')")
        .unwrap();
    assert_eq!(status(&t, "json").0, 0);

    // A log an earlier exit left while the member runs again is history: still healthy, the
    // first line shown once, no line of the rest.
    let log = local::termination_log(t.dir(), "pgset-1");
    std::fs::write(&log, "fatal: an earlier exit\nlog line 2\nlog line 3\n").unwrap();
    let (code, v) = json(&t);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["members"][1]["last_exit"], "fatal: an earlier exit");
    let (code, table) = status(&t, "table");
    assert_eq!(code, 0, "{table}");
    assert_eq!(
        table
            .matches("pgset-1 last exit: fatal: an earlier exit")
            .count(),
        1,
        "{table}"
    );
    assert!(!table.contains("log line 2"), "{table}");
    std::fs::remove_file(&log).unwrap();

    // A replica whose replay is paused falls behind the default bound (16 MiB): a warning
    // naming the bound; healthy again once it replays.
    t.sql(1, "SELECT pg_wal_replay_pause()").unwrap();
    t.sql(
        0,
        "CREATE TABLE status_lag AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 30000) g",
    )
    .unwrap();
    let mut seen = serde_json::Value::Null;
    // pgset-2 replays the same 30 MB: on a loaded machine it may be over the bound for a moment
    // too, but only the paused replica stays there.
    support::wait_until(
        "status warns of pgset-1's lag, and of pgset-1's only",
        Duration::from_secs(60),
        || {
            let (code, v) = json(&t);
            seen = v["warnings"].clone();
            code == 2
                && seen.to_string().contains("pgset-1 is ")
                && seen
                    .to_string()
                    .contains("behind the master, above the bound of 16.0 MiB / 10 s")
                && !seen.to_string().contains("pgset-2 is")
        },
    );
    assert!(
        !seen.to_string().contains("pgset-2 is"),
        "only the paused replica lags: {seen}"
    );
    t.sql(1, "SELECT pg_wal_replay_resume()").unwrap();
    t.sql(0, "DROP TABLE status_lag").unwrap();
    support::wait_until(
        "status says healthy after replay resumed",
        Duration::from_secs(60),
        || status(&t, "json").0 == 0,
    );

    // A stopped replica: not healthy, exit code 2, and the member says so.
    assert!(
        local::stop_member(t.dir(), "pgset-2", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let (code, v) = json(&t);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["summary"]["members_ready"], 2);
    assert!(v["members"][2]["agent_pid"].is_null(), "{v:#}");
    assert_eq!(v["members"][2]["streaming"], false);
    let (code, table) = status(&t, "table");
    assert_eq!(code, 2);
    // Its agent's own last word: it was asked to stop and postgres shut down cleanly.
    assert!(
        table.contains("pgset-2 stopped: stopped on request: postgres shut down (exit code 0)"),
        "{table}"
    );
    assert!(table.trim_end().ends_with("NOT HEALTHY"), "{table}");

    // What it stopped with, a log tail: its first line, warned of once.
    std::fs::write(
        local::termination_log(t.dir(), "pgset-2"),
        "refusing: a test reason\nlog line 2\nlog line 3\n",
    )
    .unwrap();
    let (code, table) = status(&t, "table");
    assert_eq!(code, 2);
    assert_eq!(
        table
            .matches("warning: pgset-2 stopped: refusing: a test reason\n")
            .count(),
        1,
        "{table}"
    );
    assert_eq!(table.matches("a test reason").count(), 1, "{table}");
    assert!(!table.contains("log line 2"), "{table}");
}
