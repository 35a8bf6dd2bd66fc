//! Local mode: a master and replicas as agent processes on 127.0.0.1, the same agent as in a pod.
//! `up` starts the members in order (each waits for the previous to be ready; with
//! [`UpOptions::parallel`] all at once, the replicas waiting for the master), `status` reports
//! them, `down` stops them; [`status`](mod@status) builds the whole report. Layout of DIR:
//! `<cluster>-N/` data (DATA_ROOT=DIR), `<cluster>-N.log`, `secret/` passwords (0600), `run/`
//! sockets, `members` (the membership file) and `pgset-local.json`; with [`UpOptions::tls`],
//! `tls/` (the set's CA, its key never leaving it, and the members' certificates, made once by
//! `pgset-tls` and renewed when due; the CA rotated with overlap by [`ca_rotation`]).

pub mod ca_rotation;
pub mod status;
pub mod switchover;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, chown};
use pgset_agent::datadir::{self, write_atomic};
use pgset_agent::health;
use pgset_agent::leader::{FileStore, Holder, LeaderStore, LeaderTimings};
use pgset_agent::privilege::postgres_user;
use pgset_agent::settings::Role;
use pgset_command::HostCommand;
use pgset_spec::contract::{self, AgentEnv, AgentMode, MemberIdentity, agent_pid_file, secret};
use pgset_spec::random;
use serde::{Deserialize, Serialize};

/// Everything that can stop a local-mode operation, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The set, its directory or a member is not as the operation needs it.
    #[error("{0}")]
    Set(String),
    /// A data directory, the postgres user or an identity (the agent's own steps) failed.
    #[error(transparent)]
    Agent(#[from] pgset_agent::Error),
    /// A host command failed.
    #[error(transparent)]
    Command(#[from] pgset_command::Error),
    /// A member's environment could not be written.
    #[error(transparent)]
    Env(#[from] contract::EnvError),
    /// A file operation failed.
    #[error("{action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Local mode's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let action = action.into();
    move |source| Error::Io { action, source }
}

static PROGRESS: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

/// Sends each line of what the launcher does (a member started or stopped, a TLS file made, the
/// directory removed) to `sink`; without one they are not said. The first call wins; it is meant
/// for a program's `main` (the `pgset` binary writes them through its progress reporter).
pub fn progress_with(sink: fn(&str)) {
    let _ = PROGRESS.set(sink);
}

/// One line of what the launcher does, to the sink given to [`progress_with`].
fn info(line: &str) {
    if let Some(sink) = PROGRESS.get() {
        sink(line);
    }
}

/// The file recording the set's name and base port.
pub const STATE_FILE: &str = "pgset-local.json";
/// The membership file the master's agent reads (PGSET_MEMBERS_FILE).
pub const MEMBERS_FILE: &str = "members";
/// Health ports are the member's port plus this.
pub const HEALTH_PORT_OFFSET: u16 = 1000;
/// Host every local member listens on.
pub const HOST: &str = "127.0.0.1";
/// The namespace local members report (there is no API).
pub const LOCAL_NAMESPACE: &str = "local";

/// What `up` needs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The set's directory.
    pub dir: PathBuf,
    /// Cluster name.
    pub name: String,
    /// Number of members (master included).
    pub replicas: i32,
    /// Port of member 0; member k listens on port + k.
    pub port: u16,
    /// The agent binary to run.
    pub agent_bin: PathBuf,
    /// How long to wait for each member to become ready.
    pub ready_timeout: Duration,
    /// PGSET_MASTER_WAIT_TIMEOUT for the replicas, when set.
    pub master_wait: Option<Duration>,
    /// PGSET_BASEBACKUP_MAX_RATE for the replicas, when set.
    pub basebackup_max_rate: Option<String>,
    /// PGSET_PG_BIN_DIR, when set.
    pub pg_bin_dir: Option<PathBuf>,
    /// PGSET_ALLOW_REINIT=true: initialise anew over a set that had data (explicit opt-in).
    pub allow_reinit: bool,
    /// PGSET_ADOPT_UNMARKED=true: adopt data directories without an identity (explicit opt-in).
    pub adopt_unmarked: bool,
    /// PGSET_LIVENESS_TIMEOUT, when set.
    pub liveness_timeout: Option<Duration>,
    /// PGSET_MAX_REPLICA_LAG_BYTES and PGSET_MAX_REPLICA_LAG_SECONDS: the replicas' readiness
    /// bound (the spec's default unless set).
    pub max_replica_lag: pgset_spec::LagBound,
    /// Start every member at once (a StatefulSet's `Parallel` policy): each replica's agent waits
    /// for the master itself, then copies it; `up` then waits for all to be ready.
    pub parallel: bool,
    /// PGSET_FAILOVER (written only when off): a replica takes the master role when the
    /// master stops renewing the leader record.
    pub failover: bool,
    /// PGSET_MAXIMUM_LAG_ON_FAILOVER: how far behind a replica may be and still be promoted.
    pub maximum_lag_on_failover: u64,
    /// PGSET_SYNCHRONOUS: synchronous replication (`None`: asynchronous).
    pub synchronous: Option<pgset_spec::Synchronous>,
    /// `--tls`: the set's CA and certificates in `<dir>/tls/` (made once, renewed when due),
    /// PGSET_TLS_DIR naming it for every member.
    pub tls: bool,
    /// With `tls`, PGSET_SUPERUSER_FROM: the networks pg_hba admits the superuser from over TCP
    /// (default the loopback, as in a pod; empty: the local socket only).
    pub superuser_from: Vec<pgset_spec::Cidr>,
    /// With `tls`, PGSET_REPLICATION_FROM: the networks replication comes from (default the
    /// loopback, where every local member is).
    pub replication_from: Vec<pgset_spec::Cidr>,
}

impl UpOptions {
    /// Options with the defaults for everything but the directory, size, port and agent.
    pub fn new(
        dir: impl Into<PathBuf>,
        replicas: i32,
        port: u16,
        agent_bin: impl Into<PathBuf>,
    ) -> UpOptions {
        UpOptions {
            dir: dir.into(),
            name: pgset_spec::DEFAULT_NAME.to_string(),
            replicas,
            port,
            agent_bin: agent_bin.into(),
            ready_timeout: Duration::from_secs(300),
            master_wait: None,
            basebackup_max_rate: None,
            pg_bin_dir: None,
            allow_reinit: false,
            adopt_unmarked: false,
            liveness_timeout: None,
            max_replica_lag: pgset_spec::LagBound::default(),
            parallel: false,
            failover: true,
            maximum_lag_on_failover: pgset_spec::DEFAULT_MAXIMUM_LAG_ON_FAILOVER,
            synchronous: None,
            tls: false,
            superuser_from: pgset_spec::Cidr::loopback(),
            replication_from: pgset_spec::Cidr::loopback(),
        }
    }
}

/// The set's TLS directory under DIR (`--tls`): the CA (its key stays here), the server and
/// replication certificates; its presence marks a set made with `--tls`.
pub const TLS_DIR: &str = "tls";

/// `DIR/tls`, the directory every member's [`contract::env::TLS_DIR`] names.
pub fn tls_dir(dir: &Path) -> PathBuf {
    dir.join(TLS_DIR)
}

/// How a client reaches the set's master: a libpq connection string without a password (the
/// superuser's is in `DIR/secret`), which with TLS verifies the server against the set's CA
/// (`sslmode=verify-full`). `None` for a set without TLS.
pub fn tls_connection_string(dir: &Path, set: &LocalSet, master: i32) -> Option<String> {
    let ca = tls_dir(dir).join(contract::tls::CA_CERT);
    ca.exists().then(|| {
        format!(
            "host={HOST} port={} user={} dbname=postgres sslmode=verify-full sslrootcert={}",
            set.member_port(master),
            contract::SUPERUSER,
            ca.display()
        )
    })
}

/// Makes or renews the set's TLS files (nothing still valid is rewritten) and hands them to
/// the postgres user; one line per file made.
fn prepare_tls(opts: &UpOptions) -> Result<()> {
    let dir = tls_dir(&opts.dir);
    let made = pgset_tls::ensure_dir(
        &dir,
        &opts.name,
        &pgset_tls::local_names(),
        pgset_tls::now(),
    )
    .map_err(|e| local_err(format!("the set's TLS files: {e}")))?;
    for line in &made {
        info(line);
    }
    give_to_postgres(&dir)?;
    for f in fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))? {
        let f = f.map_err(io_err(format!("read {}", dir.display())))?;
        give_to_postgres(&f.path())?;
    }
    Ok(())
}

/// Rotates a `--tls` set's certificates now: the server and replication certificates in
/// `DIR/tls` are reissued under the set's CA (kept), their keys 0600 and the postgres user's.
/// Every running agent notices the new files within its next look and has its postgres reload
/// them (no restart; open connections, streaming included, keep their session). A set without
/// TLS is refused with nothing changed. One line per file made.
pub fn rotate_certs(dir: &Path) -> Result<Vec<String>> {
    read_set(dir)?;
    let tls = tls_dir(dir);
    if !tls.exists() {
        return Err(local_err(format!(
            "{} holds a set without TLS: there are no certificates to rotate (make a set with `{} local up --tls`)",
            dir.display(),
            pgset_spec::contract::program_name()
        )));
    }
    let made = pgset_tls::reissue_leaves(&tls, &pgset_tls::local_names(), pgset_tls::now())
        .map_err(|e| local_err(format!("the set's TLS files: {e}")))?;
    for f in [
        contract::tls::SERVER_CERT,
        contract::tls::SERVER_KEY,
        contract::tls::REPLICATION_CERT,
        contract::tls::REPLICATION_KEY,
    ] {
        give_to_postgres(&tls.join(f))?;
    }
    Ok(made)
}

/// The recorded identity of a local set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSet {
    /// Cluster name.
    pub name: String,
    /// Port of member 0.
    pub port: u16,
}

impl LocalSet {
    /// Member k's name.
    pub fn member(&self, k: i32) -> String {
        format!("{}-{k}", self.name)
    }

    /// Member k's postgres port.
    pub fn member_port(&self, k: i32) -> u16 {
        self.port + k as u16
    }

    /// Member k's health endpoint.
    pub fn health_addr(&self, k: i32) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.member_port(k) + HEALTH_PORT_OFFSET))
    }
}

/// What `up` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpReport {
    /// Members started by this call.
    pub started: Vec<String>,
    /// Members that were already running.
    pub already_running: Vec<String>,
    /// Members stopped because the set shrank (their data is kept).
    pub stopped: Vec<String>,
    /// Each member started by this call: when its agent reached each step of its start.
    pub steps: Vec<MemberSteps>,
}

/// When a member's agent reached each step and milestone of its start (its own record, from
/// `/status`: the first time of each `pgset.io/phase` step and of each
/// [`pgset_agent::health::milestone`]), in milliseconds since `up` began, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberSteps {
    /// The member.
    pub member: String,
    /// `(step, milliseconds since up began)`, in the order reached.
    pub steps: Vec<(String, i64)>,
}

impl MemberSteps {
    /// Milliseconds since `up` began when the member reached `step`, if it did.
    pub fn at(&self, step: &str) -> Option<i64> {
        self.steps
            .iter()
            .find(|(s, _)| s == step)
            .map(|(_, at)| *at)
    }

    /// The steps of a `/status` answer, relative to `began`.
    fn from_status(member: &str, status: &serde_json::Value, began: std::time::SystemTime) -> Self {
        let origin = health::unix_ms(began) as i64;
        let marks: Vec<health::Mark> =
            serde_json::from_value(status["steps"].clone()).unwrap_or_default();
        MemberSteps {
            member: member.to_string(),
            steps: marks
                .into_iter()
                .map(|m| (m.step, m.at_unix_ms as i64 - origin))
                .collect(),
        }
    }
}

impl UpReport {
    /// Keeps the steps of a member this call started, from its `/status` when it was ready.
    fn note_steps(
        &mut self,
        member: &str,
        status: &serde_json::Value,
        began: std::time::SystemTime,
    ) {
        if self.started.iter().any(|m| m == member) {
            self.steps
                .push(MemberSteps::from_status(member, status, began));
        }
    }
}

/// One member as `status` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// Member name.
    pub name: String,
    /// `master` or `replica`.
    pub role: String,
    /// Host it listens on.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Its socket directory.
    pub socket_dir: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The postmaster's pid, when running.
    pub pid: Option<i32>,
    /// The agent's pid, when running.
    pub agent_pid: Option<i32>,
    /// Whether it is listed in the membership file.
    pub member: bool,
    /// Replicas: whether the master lists it as streaming. Master: `None`.
    pub streaming: Option<bool>,
    /// The agent's readiness verdict, when its health endpoint answers.
    pub ready: Option<bool>,
    /// Why it is (not) ready, in the agent's words.
    pub reason: Option<String>,
    /// The agent's `/status` detail from PostgreSQL's state (timeline, LSNs, slots, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// The refusal or fatal error the agent stopped with, when it is not running.
    pub stopped_with: Option<String>,
}

fn local_err(msg: impl Into<String>) -> Error {
    Error::Set(msg.into())
}

/// Reads the set recorded in `dir`.
pub fn read_set(dir: &Path) -> Result<LocalSet> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| {
        local_err(format!(
            "{}: not a local pgset directory ({e}); run `{} local up --dir {}` first",
            path.display(),
            pgset_spec::contract::program_name(),
            dir.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| local_err(format!("{}: {e}", path.display())))
}

/// The running agent of a member, from its pid file.
pub fn agent_pid(dir: &Path, member: &str) -> Option<i32> {
    let text = fs::read_to_string(agent_pid_file(dir, member)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    live_agent(pid).then_some(pid)
}

/// Whether `pid` is a pgset agent that has not exited (a zombie has).
fn live_agent(pid: i32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let is_agent = cmdline
        .windows(b"pgset-agent".len())
        .any(|w| w == b"pgset-agent");
    is_agent && !zombie
}

/// A member's termination log: the refusal or fatal error its agent stopped with.
pub fn termination_log(dir: &Path, member: &str) -> PathBuf {
    dir.join(format!("{member}.termination-log"))
}

fn random_err(e: pgset_spec::random::RandomError) -> Error {
    local_err(format!("generate the set's passwords and cluster id: {e}"))
}

/// Hands a path to the postgres user when running as root.
fn give_to_postgres(path: &Path) -> Result<()> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let user = postgres_user()?;
    chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| local_err(format!("chown {} to postgres: {e}", path.display())))
}

fn prepare_dir(opts: &UpOptions) -> Result<LocalSet> {
    let dir = &opts.dir;
    let wanted = LocalSet {
        name: opts.name.clone(),
        port: opts.port,
    };
    if dir.join(STATE_FILE).exists() {
        let had_tls = tls_dir(dir).exists();
        if had_tls != opts.tls {
            let program = contract::program_name();
            return Err(local_err(if had_tls {
                format!(
                    "{} holds a set made with --tls; add --tls (its members serve and replicate \
                     only over TLS)",
                    dir.display()
                )
            } else {
                format!(
                    "{} holds a set made without TLS, which cannot be switched on in place yet; \
                     leave out --tls, or make a new set with `{program} local up --tls --dir <new dir>`",
                    dir.display()
                )
            }));
        }
        let have = read_set(dir)?;
        if have != wanted {
            return Err(local_err(format!(
                "{} holds the set `{}` on port {}; use --name {} --port {} with this directory, or another --dir",
                dir.display(),
                have.name,
                have.port,
                have.name,
                have.port
            )));
        }
    } else if dir.exists() {
        let empty = fs::read_dir(dir)
            .map_err(io_err(format!("read {}", dir.display())))?
            .next()
            .is_none();
        if !empty {
            return Err(local_err(format!(
                "{} is not empty and holds no {STATE_FILE}; choose an empty or new --dir",
                dir.display()
            )));
        }
    }
    datadir::ensure_dir(dir, 0o700)?;
    give_to_postgres(dir)?;
    if dir
        .metadata()
        .map(|m| m.permissions().mode() & 0o077 != 0)
        .unwrap_or(false)
    {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
    }
    let secrets = dir.join("secret");
    datadir::ensure_dir(&secrets, 0o700)?;
    give_to_postgres(&secrets)?;
    for key in [
        secret::SUPERUSER_PASSWORD_KEY,
        secret::REPLICATION_PASSWORD_KEY,
    ] {
        let f = secrets.join(key);
        if !f.exists() {
            write_atomic(
                &f,
                random::password().map_err(random_err)?.as_bytes(),
                0o600,
            )?;
        }
        give_to_postgres(&f)?;
    }
    let id = secrets.join(secret::CLUSTER_ID_KEY);
    if !id.exists() {
        write_atomic(
            &id,
            random::cluster_id().map_err(random_err)?.as_bytes(),
            0o600,
        )?;
    }
    give_to_postgres(&id)?;
    if opts.tls {
        prepare_tls(opts)?;
    }
    let run = dir.join("run");
    datadir::ensure_dir(&run, 0o700)?;
    give_to_postgres(&run)?;
    let state = serde_json::to_string_pretty(&wanted).map_err(|e| local_err(e.to_string()))? + "\n";
    write_atomic(&dir.join(STATE_FILE), state.as_bytes(), 0o644)?;
    Ok(wanted)
}

/// The agent's env contract of member k, local flavour: everything on 127.0.0.1 under DIR,
/// membership from the members file; the passwords are files under `DIR/secret`, never values.
pub fn member_contract(opts: &UpOptions, set: &LocalSet, k: i32) -> AgentEnv {
    AgentEnv {
        mode: AgentMode::Local,
        member: MemberIdentity::Given {
            pod_name: set.member(k),
            namespace: Some(LOCAL_NAMESPACE.to_string()),
            pod_uid: None,
        },
        cluster: set.name.clone(),
        data_root: opts.dir.clone(),
        master_host: HOST.to_string(),
        master_port: set.member_port(0),
        port: set.member_port(k),
        listen_addresses: HOST.to_string(),
        socket_dir: opts.dir.join("run"),
        secret_dir: opts.dir.join("secret"),
        health_addr: Some(set.health_addr(k)),
        pg_bin_dir: opts.pg_bin_dir.clone(),
        members_file: Some(opts.dir.join(MEMBERS_FILE)),
        master_wait: opts.master_wait,
        basebackup_max_rate: opts.basebackup_max_rate.clone(),
        adopt_unmarked: opts.adopt_unmarked,
        allow_reinit: opts.allow_reinit,
        termination_log: Some(termination_log(&opts.dir, &set.member(k))),
        liveness_timeout: opts.liveness_timeout,
        failover: (!opts.failover).then_some(false),
        maximum_lag_on_failover: Some(opts.maximum_lag_on_failover),
        synchronous: opts.synchronous,
        tls_dir: opts.tls.then(|| tls_dir(&opts.dir)),
        superuser_from: opts.tls.then(|| opts.superuser_from.clone()),
        replication_from: opts.tls.then(|| opts.replication_from.clone()),
        max_replica_lag_bytes: Some(opts.max_replica_lag.bytes),
        max_replica_lag: Some(Duration::from_secs(opts.max_replica_lag.seconds)),
    }
}

/// The environment of member k: [`member_contract`] as `(name, value)` pairs.
pub fn member_env(opts: &UpOptions, set: &LocalSet, k: i32) -> Result<Vec<(&'static str, String)>> {
    Ok(member_contract(opts, set, k).literal_entries()?)
}

/// The last lines of a member's log, for error messages.
pub fn log_tail(dir: &Path, member: &str, lines: usize) -> String {
    let text = fs::read_to_string(dir.join(format!("{member}.log"))).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts member k's agent, detached (its own session), logging to `DIR/<member>.log`.
pub fn start_member(opts: &UpOptions, set: &LocalSet, k: i32) -> Result<()> {
    let env: Vec<(String, String)> = member_env(opts, set, k)?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    launch_agent(&opts.dir, &set.member(k), &opts.agent_bin, &env)
}

/// Starts a member's agent with `env` (its contract variables), detached (its own session),
/// logging to `DIR/<member>.log`: what `up` does for a member, and what a launcher that restarts
/// an exited agent does.
pub fn launch_agent(
    dir: &Path,
    member: &str,
    agent_bin: &Path,
    env: &[(String, String)],
) -> Result<()> {
    let log_path = dir.join(format!("{member}.log"));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(format!("open {}", log_path.display())))?;
    give_to_postgres(&log_path)?;
    let _ = fs::remove_file(termination_log(dir, member));
    let mut cmd = HostCommand::new("setsid")
        .arg("--fork")
        .arg(agent_bin)
        .arg("run");
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    Ok(cmd.run_logging_to(log)?)
}

/// The contract variables (`PGSET_*`) a running agent was started with, from
/// `/proc/<pid>/environ`: a launcher restarts the member with exactly these.
pub fn agent_env(pid: i32) -> Result<Vec<(String, String)>> {
    let raw = fs::read(format!("/proc/{pid}/environ"))
        .map_err(io_err(format!("read the environment of agent pid {pid}")))?;
    Ok(contract_env(&raw))
}

/// The `PGSET_*` pairs of a NUL-separated environment block.
fn contract_env(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.starts_with("PGSET_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes the membership file: members 0..replicas of `set`.
pub fn write_members(dir: &Path, set: &LocalSet, replicas: i32) -> Result<()> {
    let members = contract::local::members_text((0..replicas).map(|k| set.member(k)));
    let members_file = dir.join(MEMBERS_FILE);
    write_atomic(&members_file, members.as_bytes(), 0o644)?;
    give_to_postgres(&members_file)
}

/// Waits until member k answers ready, failing early when its agent exits.
pub async fn wait_ready(dir: &Path, set: &LocalSet, k: i32, timeout: Duration) -> Result<()> {
    wait_ready_status(dir, set, k, timeout).await.map(|_| ())
}

/// [`wait_ready`], returning the member's `/status` answer that said it is ready.
pub async fn wait_ready_status(
    dir: &Path,
    set: &LocalSet,
    k: i32,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let member = set.member(k);
    let deadline = Instant::now() + timeout;
    let started = Instant::now();
    // The agent last seen running this member: its pid file goes before its last words (the
    // termination log), so a member is judged stopped only once that process has ended.
    let mut seen_agent: Option<i32> = None;
    loop {
        // Ready only from this member's own agent: another set on the same ports must not
        // pass for it.
        let answer = health::get(set.health_addr(k), contract::HEALTH_STATUS_PATH)
            .await
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
        if let Some(status) = answer {
            let pid = status["agentPid"].as_u64().map(|p| p as i32);
            let ours = agent_pid(dir, &member);
            if status["member"].as_str() == Some(member.as_str()) && pid.is_some() && pid == ours {
                if status["ready"].as_bool() == Some(true) {
                    return Ok(status);
                }
            } else if ours.is_some() {
                return Err(local_err(format!(
                    "the health port {} of member {member} is answered by another agent ({} pid {}); \
                     another set uses these ports: choose another --port",
                    set.health_addr(k),
                    status["member"].as_str().unwrap_or("?"),
                    pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
                )));
            }
        }
        match agent_pid(dir, &member) {
            Some(pid) => seen_agent = Some(pid),
            None if seen_agent.is_some_and(live_agent) && Instant::now() < deadline => {}
            None if seen_agent.is_some() || started.elapsed() > Duration::from_secs(15) => {
                if let Ok(why) = fs::read_to_string(termination_log(dir, &member)) {
                    return Err(local_err(format!(
                        "member {member} stopped: {}",
                        why.trim()
                    )));
                }
                return Err(local_err(format!(
                    "member {member} stopped before it was ready; the end of {}:\n{}",
                    dir.join(format!("{member}.log")).display(),
                    log_tail(dir, &member, 15)
                )));
            }
            None => {}
        }
        if Instant::now() > deadline {
            return Err(local_err(format!(
                "member {member} was not ready within {} s; the end of its log:\n{}",
                timeout.as_secs(),
                log_tail(dir, &member, 15)
            )));
        }
        // The next member starts as soon as this one is ready: poll the health endpoint often
        // (an answer from the agent's cached state, no query of postgres).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops a member's agent (SIGTERM: fast shutdown of its postgres) and waits for it to exit.
pub async fn stop_member(dir: &Path, member: &str, timeout: Duration) -> Result<bool> {
    let Some(pid) = agent_pid(dir, member) else {
        return Ok(false);
    };
    info(&format!("stopping member {member} (agent pid {pid})"));
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while agent_pid(dir, member).is_some() {
        if Instant::now() > deadline {
            return Err(local_err(format!(
                "member {member} (pid {pid}) did not stop within {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(true)
}

/// Ordinals that have a data directory or a running agent in `dir`.
fn known_ordinals(dir: &Path, set: &LocalSet) -> Vec<i32> {
    let mut ks: Vec<i32> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let base = name.strip_suffix(".agent.pid").unwrap_or(&name).to_string();
                    let k = pgset_spec::ordinal_of(&base)?;
                    (base == set.member(k)).then_some(k)
                })
                .collect()
        })
        .unwrap_or_default();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// Forms (or reshapes) the set: members 0..replicas running, in order; extra members stopped.
pub async fn up(opts: &UpOptions) -> Result<UpReport> {
    if opts.replicas < 1 || opts.replicas > pgset_spec::MAX_REPLICAS {
        return Err(local_err(format!(
            "--replicas {}: must be 1..={}",
            opts.replicas,
            pgset_spec::MAX_REPLICAS
        )));
    }
    let top = opts.port as u32 + opts.replicas as u32 - 1 + HEALTH_PORT_OFFSET as u32;
    if opts.port < 1024 || top > 65535 {
        return Err(local_err(format!(
            "--port {}: members use ports {}..{} and health ports {HEALTH_PORT_OFFSET} above; choose 1024..{}",
            opts.port,
            opts.port,
            opts.port as i32 + opts.replicas - 1,
            65535 - HEALTH_PORT_OFFSET as i32 - opts.replicas + 1
        )));
    }
    if !opts.agent_bin.is_file() {
        return Err(local_err(format!(
            "the agent binary {} does not exist; build it with `cargo build -p pgset-agent`",
            opts.agent_bin.display()
        )));
    }
    let began = std::time::SystemTime::now();
    // The members' PostgreSQL binaries, found once here instead of by each agent (a `pg_config`
    // process per member): the agent's own search, and the agent checks what it is given.
    let found;
    let bin = match opts.pg_bin_dir {
        None => pgset_agent::pgbin::PgBin::find(None).ok(),
        Some(_) => None,
    };
    let opts = match bin {
        Some(bin) => {
            found = UpOptions {
                pg_bin_dir: Some(bin.dir().to_path_buf()),
                ..opts.clone()
            };
            &found
        }
        None => opts,
    };
    let set = prepare_dir(opts)?;
    write_members(&opts.dir, &set, opts.replicas)?;

    let mut report = UpReport::default();
    for k in known_ordinals(&opts.dir, &set)
        .into_iter()
        .rev()
        .filter(|k| *k >= opts.replicas)
    {
        if stop_member(&opts.dir, &set.member(k), Duration::from_secs(120)).await? {
            report.stopped.push(set.member(k));
        }
    }
    // The record's holder starts first: the others follow it.
    let master = master_ordinal(&opts.dir, &set).await;
    let order = std::iter::once(master)
        .filter(|m| *m < opts.replicas)
        .chain((0..opts.replicas).filter(|k| *k != master));
    for k in order {
        let member = set.member(k);
        if agent_pid(&opts.dir, &member).is_some() {
            report.already_running.push(member);
        } else {
            info(&format!(
                "starting member {member} on {HOST}:{}",
                set.member_port(k)
            ));
            start_member(opts, &set, k)?;
            report.started.push(member);
        }
        if !opts.parallel {
            let status = wait_ready_status(&opts.dir, &set, k, opts.ready_timeout).await?;
            report.note_steps(&set.member(k), &status, began);
        }
    }
    if opts.parallel {
        // All started together: the set is ready when its slowest member is (each wait below
        // returns at once for a member that is already ready).
        for k in 0..opts.replicas {
            let status = wait_ready_status(&opts.dir, &set, k, opts.ready_timeout).await?;
            report.note_steps(&set.member(k), &status, began);
        }
    }
    // A CA near its end, or a rotation a stopped run began: rotated with overlap, now that
    // every member runs.
    if opts.tls
        && pgset_tls::ca_due(&tls_dir(&opts.dir), pgset_tls::now())
            .map_err(|e| local_err(format!("the set's TLS files: {e}")))?
    {
        info("the set's CA is near its end (or its rotation unfinished): rotating it with overlap");
        for line in ca_rotation::rotate_ca(&opts.dir, ca_rotation::DEFAULT_STEP_TIMEOUT).await? {
            info(&line);
        }
    }
    Ok(report)
}

/// Stops every member (replicas first); with `purge`, removes DIR too (only a local pgset DIR).
pub async fn down(dir: &Path, purge: bool) -> Result<Vec<String>> {
    let set = read_set(dir)?;
    let mut stopped = Vec::new();
    for k in known_ordinals(dir, &set).into_iter().rev() {
        if stop_member(dir, &set.member(k), Duration::from_secs(120)).await? {
            stopped.push(set.member(k));
        }
    }
    if purge {
        info(&format!("removing {}", dir.display()));
        fs::remove_dir_all(dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    Ok(stopped)
}

/// Every known member of the set in `dir`: its role, addresses, pids, streaming state, the
/// agent's readiness verdict and reason, and the error a stopped agent left.
pub async fn status(dir: &Path) -> Result<Vec<MemberStatus>> {
    let set = read_set(dir)?;
    let listed = contract::read_members(&dir.join(MEMBERS_FILE)).unwrap_or_default();
    let mut ks = known_ordinals(dir, &set);
    ks.extend((0..listed.len() as i32).filter(|k| listed.contains(&set.member(*k))));
    ks.sort_unstable();
    ks.dedup();
    let socket_dir = dir.join("run");
    let master = master_ordinal(dir, &set).await;
    let streaming = match ask_master(dir, &set).await {
        Some(db) => pgset_agent::standbys(&db).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for k in ks {
        let name = set.member(k);
        let data_dir = dir.join(&name);
        let agent_pid = agent_pid(dir, &name);
        let health = match agent_pid {
            Some(_) => health::get(set.health_addr(k), contract::HEALTH_STATUS_PATH)
                .await
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok()),
            None => None,
        };
        let stopped_with = match agent_pid {
            None => fs::read_to_string(termination_log(dir, &name))
                .ok()
                .map(|t| t.trim().to_string()),
            Some(_) => None,
        };
        out.push(MemberStatus {
            role: if k == master {
                Role::Master
            } else {
                Role::Replica
            }
            .label()
            .to_string(),
            host: HOST.to_string(),
            port: set.member_port(k),
            socket_dir: socket_dir.clone(),
            pid: datadir::live_postmaster(&data_dir),
            agent_pid,
            member: listed.contains(&name),
            streaming: (k != master).then(|| {
                streaming
                    .iter()
                    .any(|s| s.name == name && s.state.as_deref() == Some("streaming"))
            }),
            ready: health.as_ref().and_then(|h| h["ready"].as_bool()),
            reason: health
                .as_ref()
                .and_then(|h| h["reason"].as_str().map(String::from)),
            detail: health.as_ref().map(|h| h["postgres"].clone()),
            stopped_with,
            data_dir,
            name,
        });
    }
    Ok(out)
}

/// The member the set's leader record (`<dir>/<name>.leader`) names the master, when it is
/// readable and names one.
pub async fn leader_member(dir: &Path, set: &LocalSet) -> Option<String> {
    let timings = LeaderTimings::for_lease(pgset_agent::settings::DEFAULT_LEADER_LEASE).ok()?;
    let store = FileStore::new(dir, &set.name, Holder::new("local-status", "-"), timings);
    store.read().await.ok()??.holder.map(|h| h.member)
}

/// The master's ordinal: the leader record's holder, else member 0 (a set before its first
/// start, or one whose record names nobody).
pub async fn master_ordinal(dir: &Path, set: &LocalSet) -> i32 {
    leader_member(dir, set)
        .await
        .and_then(|m| {
            let k = pgset_spec::ordinal_of(&m)?;
            (set.member(k) == m).then_some(k)
        })
        .unwrap_or(0)
}

/// The master of the set in `dir`, asked over its socket as the superuser (`None` when it
/// does not answer within [`ASK_TIMEOUT`]): the agent's own client, no process started.
pub async fn ask_master(dir: &Path, set: &LocalSet) -> Option<pgset_agent::Db> {
    pgset_agent::Db::socket(
        &dir.join("run"),
        set.member_port(master_ordinal(dir, set).await),
        "pgset-status",
        ASK_TIMEOUT,
    )
    .await
    .ok()
}

/// How long status waits for the master to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::contract::env;

    #[test]
    fn member_names_ports_and_env() {
        let opts = UpOptions::new("/tmp/set", 3, 25432, "/bin/pgset-agent");
        let set = LocalSet {
            name: "pgset".into(),
            port: 25432,
        };
        assert_eq!(set.member(2), "pgset-2");
        assert_eq!(set.member_port(2), 25434);
        assert_eq!(set.health_addr(1).to_string(), "127.0.0.1:26433");
        let e = member_env(&opts, &set, 1).unwrap();
        let get = |k: &str| {
            e.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(env::MODE), "local");
        assert_eq!(get(env::DATA_ROOT), "/tmp/set");
        assert_eq!(get(env::MASTER_PORT), "25432");
        assert_eq!(get(env::PORT), "25433");
        assert_eq!(get(env::MEMBERS_FILE), "/tmp/set/members");
        assert!(
            e.iter().all(|(_, v)| !v.contains("password")),
            "no password in the environment"
        );
    }

    #[test]
    fn only_contract_variables_are_taken_from_an_environment() {
        let raw = b"PATH=/usr/bin\0PGSET_PORT=28101\0PGSET_MODE=local\0HOME=/root\0junk\0";
        assert_eq!(
            contract_env(raw),
            [
                ("PGSET_PORT".to_string(), "28101".to_string()),
                ("PGSET_MODE".to_string(), "local".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn bad_sizes_and_foreign_dirs_are_refused_without_change() {
        let t = tempfile::tempdir().unwrap();
        let agent = t.path().join("agent");
        fs::write(&agent, "").unwrap();
        let e = up(&UpOptions::new(t.path().join("d"), 0, 25432, &agent))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--replicas 0"), "{e}");
        let e = up(&UpOptions::new(t.path().join("d"), 2, 65000, &agent))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--port 65000"), "{e}");
        assert!(!t.path().join("d").exists());
        let foreign = t.path().join("f");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("mine"), "x").unwrap();
        let e = up(&UpOptions::new(&foreign, 1, 25432, &agent))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not empty"), "{e}");
        assert_eq!(fs::read_dir(&foreign).unwrap().count(), 1);
        let e = down(&foreign, true).await.unwrap_err().to_string();
        assert!(e.contains("not a local pgset directory"), "{e}");
        assert!(
            foreign.join("mine").exists(),
            "down --purge never removes a directory that is not a set"
        );
    }

    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    #[tokio::test]
    async fn what_the_launcher_does_goes_to_the_programs_sink_not_to_stderr() {
        progress_with(|line| SAID.lock().unwrap().push(line.to_string()));
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("set");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(STATE_FILE), r#"{"name": "pgset", "port": 25432}"#).unwrap();
        let stopped = down(&dir, true).await.unwrap();
        assert!(stopped.is_empty(), "no member ran: {stopped:?}");
        assert!(!dir.exists(), "--purge removed the set's directory");
        let said: Vec<String> = SAID
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&dir.display().to_string()))
            .cloned()
            .collect();
        assert_eq!(said, [format!("removing {}", dir.display())]);
    }
}
