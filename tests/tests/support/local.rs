//! Shared harness of the local-mode tests (included by each `local_*.rs` with `#[path]`): builds
//! the agent, makes a set directory the postgres user can reach, runs SQL, and stops every
//! process of a set when the test ends, pass or fail.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_agent::pgbin::PgBin;
use pgset_local::{self as local, LocalSet, UpOptions};

/// The server binaries the members run: `PGSET_TEST_PG_BIN_DIR` when set (`cargo xtask test`
/// runs the local suites a second time on PostgreSQL 18 this way), else the ones the agent finds.
pub fn test_pg_bin_dir() -> Option<PathBuf> {
    std::env::var_os("PGSET_TEST_PG_BIN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The PostgreSQL binaries, or `None` after `missing_tool` (skip locally, fail in CI).
pub fn pg_or_skip(test: &str) -> Option<PgBin> {
    match PgBin::find(test_pg_bin_dir().as_deref()) {
        Ok(b) => Some(b),
        Err(e) => {
            pgset_tests::missing_tool(
                test,
                &format!("needs PostgreSQL server binaries (initdb, postgres): {e}"),
            );
            None
        }
    }
}

/// The agent binary, built once per test process into the same target directory.
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Test binaries live in <target>/<profile>/deps; the agent lands in <target>/<profile>.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        pgset_cli::cli::build_agent_in(
            &pgset_tests::workspace_root().join("Cargo.toml"),
            profile_dir,
        )
        .expect("build pgset-agent")
    })
    .clone()
}

/// A local set under a fresh temp dir; Drop stops all its processes.
pub struct TestSet {
    pub tmp: tempfile::TempDir,
    pub opts: UpOptions,
}

impl TestSet {
    /// A set of `replicas` members on ports `port..`, not started yet.
    pub fn new(replicas: i32, port: u16) -> TestSet {
        let tmp = tempfile::Builder::new()
            .prefix("pgset-local-")
            .tempdir_in("/tmp")
            .unwrap();
        // The members run as `postgres` when the tests run as root: it must reach DIR.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut opts = UpOptions::new(tmp.path().join("set"), replicas, port, agent_bin());
        opts.ready_timeout = Duration::from_secs(180);
        opts.master_wait = Some(Duration::from_secs(60));
        opts.pg_bin_dir = test_pg_bin_dir();
        TestSet { tmp, opts }
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    pub fn set(&self) -> LocalSet {
        LocalSet {
            name: self.opts.name.clone(),
            port: self.opts.port,
        }
    }

    pub fn port(&self, k: i32) -> u16 {
        self.opts.port + k as u16
    }

    /// Runs SQL on member k over its socket as the superuser: stdout, or stderr on failure.
    pub fn sql(&self, k: i32, sql: &str) -> Result<String, String> {
        let bin = PgBin::find(None).map_err(|e| e.to_string())?;
        let out = bin
            .command("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "VERBOSITY=verbose",
                "-h",
            ])
            .arg(self.dir().join("run"))
            .args([
                "-p",
                &self.port(k).to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .quiet()
            .output()
            .map_err(|e| e.to_string())?;
        if out.success() {
            Ok(out.stdout.trim().to_string())
        } else {
            Err(out.stderr.trim().to_string())
        }
    }

    /// Waits until `sql` on member k returns `want`, or panics with the last answer.
    pub fn wait_for(&self, k: i32, sql: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.sql(k, sql);
            if got.as_deref() == Ok(want) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "member {k}: `{sql}` gave {got:?}, wanted {want:?} within {timeout:?}; log tail:\n{}",
                    local::log_tail(self.dir(), &self.set().member(k), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn log(&self, k: i32) -> String {
        std::fs::read_to_string(self.dir().join(format!("{}.log", self.set().member(k))))
            .unwrap_or_default()
    }
}

impl Drop for TestSet {
    fn drop(&mut self) {
        let dir = self.opts.dir.clone();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(member) = name.strip_suffix(".agent.pid")
                && let Some(pid) = local::agent_pid(&dir, member)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !pgset_agent::datadir::processes_using(&dir).is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        for pid in pgset_agent::datadir::processes_using(&dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The inode of a path (a data directory that was copied again would be a new one).
pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Waits until `f` is true, or panics with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A secret directory for a set that is not `t`'s: fresh passwords and a cluster id of its own,
/// readable by the postgres user the agent runs as.
pub fn foreign_secret_dir(parent: &Path) -> PathBuf {
    let dir = parent.join("foreign-secret");
    std::fs::create_dir_all(&dir).unwrap();
    for (key, value) in [
        ("superuser-password", "foreignSuperuserPassword1"),
        ("replication-password", "foreignReplicationPassword1"),
        ("cluster-id", "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"),
    ] {
        std::fs::write(dir.join(key), value).unwrap();
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    give_to_postgres(&dir);
    dir
}

/// Hands a path (and what is in it) to the postgres user when the tests run as root.
pub fn give_to_postgres(path: &Path) {
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let user = pgset_agent::privilege::postgres_user().unwrap();
    let mut paths = vec![path.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(path) {
        paths.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    for p in paths {
        nix::unistd::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
    }
}

/// Runs the agent once with `env` until it exits (killed after `timeout`): its exit code
/// (`None` when it had to be killed) and its stderr.
pub fn run_agent(env: &[(&str, String)], timeout: Duration) -> (Option<i32>, String) {
    let mut cmd = pgset_command::HostCommand::new(agent_bin())
        .arg("run")
        .quiet();
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    let handle = cmd.start().unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(out) = handle.try_wait().unwrap() {
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = handle.kill();
            let out = handle.wait().unwrap();
            return (None, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file below `dir` with its size, mode and a hash of its content, for comparing a tree
/// before and after (sorted by path).
pub fn tree_digest(dir: &Path) -> Vec<(PathBuf, u64, u32, u64)> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
                out.push((p, 0, m.mode(), 0));
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap_or_default().hash(&mut h);
                out.push((p, m.len(), m.mode(), h.finish()));
            }
        }
    }
    out.sort();
    out
}

/// The pid of member `member`'s postmaster, from its `postmaster.pid`.
pub fn postmaster_of(dir: &Path, member: &str) -> i32 {
    let text = std::fs::read_to_string(dir.join(member).join("postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// Inserts rows `1, 2, …` into table `acked` of the server on `port` (socket directory `run`),
/// one at a time over one connection (reconnecting on failure), until `stop`; returns each
/// acknowledged row with the instant it was acknowledged.
pub async fn write_until(run: PathBuf, port: u16, stop: Instant) -> Vec<(i64, Instant)> {
    let mut acked = Vec::new();
    let mut db = None;
    let mut n = 0i64;
    while Instant::now() < stop {
        if db.is_none() {
            db = pgset_agent::Db::socket(&run, port, "writer", Duration::from_secs(1))
                .await
                .ok();
            if db.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        n += 1;
        let sql = format!("INSERT INTO acked VALUES ({n})");
        match tokio::time::timeout(
            Duration::from_secs(1),
            db.as_ref().unwrap().execute_batch(&sql),
        )
        .await
        {
            Ok(Ok(())) => acked.push((n, Instant::now())),
            _ => db = None,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

/// The leader file of the set in `dir` (cluster `pgset`), as JSON.
pub fn leader(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("pgset.leader")).expect("the leader record exists");
    serde_json::from_str(&text).expect("the leader record is JSON")
}

/// Why these binaries cannot serve TLS, from how they were built (`pg_config --configure`
/// names `--with-openssl` or `--with-ssl=openssl` when they can); `None` when they can.
pub fn no_ssl_reason(bin: &PgBin) -> Option<String> {
    let out = match bin.command("pg_config").arg("--configure").quiet().output() {
        Ok(out) if out.success() => out,
        Ok(out) => return Some(format!("`pg_config --configure` failed: {}", out.stderr)),
        Err(e) => return Some(format!("`pg_config --configure` did not run: {e}")),
    };
    let with_ssl = out
        .stdout
        .split_whitespace()
        .map(|w| w.trim_matches('\''))
        .any(|w| w == "--with-openssl" || w == "--with-ssl=openssl");
    (!with_ssl).then(|| {
        format!(
            "the PostgreSQL in {} was built without SSL (its `pg_config --configure` has no \
             --with-openssl or --with-ssl=openssl)",
            bin.dir().display()
        )
    })
}
