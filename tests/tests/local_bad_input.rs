//! Bad input to `pgset-agent run` and `install`: one clear error naming the problem, a non-zero
//! exit, and nothing existing deleted; `--version` prints the crate version.

#[path = "support/local.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pgset_command::{HostCommand, Output};
use pgset_spec::contract::env;
use support::{agent_bin, pg_or_skip};

fn agent(args: &[&str], vars: &[(&str, String)]) -> Output {
    let mut c = HostCommand::new(agent_bin())
        .args(args.iter().copied())
        .quiet();
    for (k, v) in vars {
        c = c.env(*k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    o.stderr.clone()
}

/// A member environment in `root` (health endpoint off so tests do not share ports).
fn member_env(root: &Path, pod: &str, master_port: u16) -> Vec<(&'static str, String)> {
    vec![
        (env::MODE, "local".into()),
        (env::CLUSTER, "pgset".into()),
        (env::POD_NAME, pod.into()),
        (env::DATA_ROOT, root.display().to_string()),
        (env::MASTER_HOST, "127.0.0.1".into()),
        (env::MASTER_PORT, master_port.to_string()),
        (env::PORT, "26690".into()),
        (env::SOCKET_DIR, root.join("run").display().to_string()),
        (env::SECRET_DIR, root.join("secret").display().to_string()),
        (env::HEALTH_ADDR, "off".into()),
        (env::MASTER_WAIT_TIMEOUT, "2".into()),
    ]
}

/// The secret directory of `root` with a cluster id (and a replication password), readable by
/// the postgres user the agent drops to.
fn write_secret(root: &Path) {
    let secret = root.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    for (key, value) in [
        ("replication-password", "not-used-here"),
        ("cluster-id", "0123456789abcdef0123456789abcdef"),
    ] {
        std::fs::write(secret.join(key), value).unwrap();
        std::fs::set_permissions(secret.join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn shared_tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("pgset-bad-")
        .tempdir_in("/tmp")
        .unwrap();
    // The agent drops to `postgres` when started as root; it must be able to write here.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    t
}

#[test]
fn version_and_install() {
    let o = agent(&["--version"], &[]);
    assert!(o.status.success());
    assert_eq!(
        o.stdout.trim(),
        format!("pgset-agent {}", pgset_spec::VERSION)
    );
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("pgset-agent");
    assert!(
        agent(&["install", &dest.display().to_string()], &[])
            .status
            .success()
    );
    let installed = HostCommand::new(&dest)
        .arg("--version")
        .quiet()
        .read()
        .unwrap();
    assert!(installed.contains(pgset_spec::VERSION));
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let o = agent(&["install", "/nonexistent-dir/pgset-agent"], &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_and_malformed_env_are_named() {
    let o = agent(&["run"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("PGSET_MODE: missing"), "{}", stderr(&o));

    let t = shared_tempdir();
    let mut vars = member_env(t.path(), "pgset-x", 26691);
    let o = agent(&["run"], &vars);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("PGSET_POD_NAME") && stderr(&o).contains("numeric ordinal"),
        "{}",
        stderr(&o)
    );
    vars.retain(|(k, _)| *k != env::DATA_ROOT);
    vars[2].1 = "pgset-1".into();
    let o = agent(&["run"], &vars);
    assert!(
        stderr(&o).contains("PGSET_DATA_ROOT: missing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_data_root_that_is_a_file_or_a_foreign_pgdata_is_refused_untouched() {
    if pg_or_skip("local_bad_input_data_root").is_none() {
        return;
    }
    let t = shared_tempdir();
    let file = t.path().join("root-file");
    std::fs::write(&file, "keep me").unwrap();
    let o = agent(&["run"], &member_env(&file, "pgset-0", 26692));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is a file"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    write_secret(t.path());
    let foreign = t.path().join("pgset-0");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes"), "mine").unwrap();
    let o = agent(&["run"], &member_env(t.path(), "pgset-0", 26692));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no PG_VERSION"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes")).unwrap(),
        "mine"
    );
}

#[test]
fn a_master_that_never_answers_is_an_error_after_the_deadline() {
    if pg_or_skip("local_bad_input_master").is_none() {
        return;
    }
    let t = shared_tempdir();
    write_secret(t.path());
    // Nothing listens on 26699.
    let o = agent(&["run"], &member_env(t.path(), "pgset-1", 26699));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("waiting for the master 127.0.0.1:26699"),
        "{err}"
    );
    assert!(
        err.contains("did not accept connections within 2 s")
            && err.contains("PGSET_MASTER_WAIT_TIMEOUT"),
        "{err}"
    );
    assert!(!t.path().join("pgset-1").exists() && !t.path().join("pgset-1.bootstrap").exists());
}
