//! The local-mode target: drills against a set formed by `cargo xtask local up` (members as
//! agent processes on 127.0.0.1). The drill acts as the launcher that restarts an agent that
//! exited, as the kubelet does for a pod, with the contract environment the agent had; a killed
//! agent takes the rest of its member's processes with it, as a container's teardown does. The
//! master is the member the leader record names, wherever it moved: the writer follows it, and
//! the failover drills add a writer that keeps its connection to the first master.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_local::{self as local, LocalSet, MemberStatus};
use pgset_spec::contract::{AgentEnv, MemberIdentity, secret};

use crate::engine::{self, Log, Setup};
use crate::load::{Endpoint, ReadyProbe, Route};
use crate::report::{DrillReport, KeptDiverged};
use crate::{DrillName, Error, Result, Target as Where, step_err};

/// What a local drill needs.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The set's directory (`local up --dir`).
    pub dir: PathBuf,
    /// The agent binary the launcher starts.
    pub agent_bin: PathBuf,
    /// How long the set may take to be healthy again after the fault.
    pub recovery_timeout: Duration,
    /// Load before the fault (the baseline).
    pub warmup: Duration,
    /// Load after the set is healthy again.
    pub cooldown: Duration,
    /// How the waits before giving up scale (`--patience`, and the round trip the drill
    /// measures on its first connection).
    pub patience: crate::Patience,
}

impl LocalOptions {
    /// Defaults for everything but the directory and the agent.
    pub fn new(dir: impl Into<PathBuf>, agent_bin: impl Into<PathBuf>) -> LocalOptions {
        LocalOptions {
            dir: dir.into(),
            agent_bin: agent_bin.into(),
            recovery_timeout: Duration::from_secs(120),
            warmup: Duration::from_secs(1),
            cooldown: Duration::from_secs(1),
            patience: crate::Patience::default(),
        }
    }
}

/// Why the set is not healthy (empty when it is): every listed member's agent runs and answers
/// ready, and every listed replica streams.
pub fn unhealthy(members: &[MemberStatus]) -> Vec<String> {
    let mut why = Vec::new();
    for m in members.iter().filter(|m| m.member) {
        if m.agent_pid.is_none() {
            why.push(
                match m
                    .stopped_with
                    .as_deref()
                    .and_then(pgset_local::status::one_line_reason)
                {
                    Some(s) => format!("{} is stopped: {s}", m.name),
                    None => format!("{} is not running", m.name),
                },
            );
        } else if m.ready != Some(true) {
            why.push(format!(
                "{} is not ready: {}",
                m.name,
                m.reason.as_deref().unwrap_or("its agent does not answer")
            ));
        } else if m.streaming == Some(false) {
            why.push(format!("{} does not stream from the master", m.name));
        } else if let Some(in_recovery) = m.detail.as_ref().and_then(|d| d["inRecovery"].as_bool())
        {
            let master = m.role == pgset_spec::contract::roles::MASTER;
            if master && in_recovery {
                why.push(format!(
                    "{} is the master the leader record names, but its postgres is in recovery",
                    m.name
                ));
            } else if !master && !in_recovery {
                why.push(format!(
                    "{} runs as a master, but the leader record names another member",
                    m.name
                ));
            }
        }
    }
    why
}

/// Under synchronous replication (`required:N` in the master's agent environment): why the set
/// cannot fail over yet — fewer than N replicas on the leader record's list of those holding
/// every acknowledged commit. Right after a failover or a rejoin the new master lists a replica
/// only once it is named, settled and flushed; a master lost before that is replaced by nobody
/// (the rule), so a failover drill waits for the list as for health.
async fn synchronous_short(dir: &Path) -> Option<String> {
    let set = local::read_set(dir).ok()?;
    let master = local::leader_member(dir, &set).await?;
    let pid = local::agent_pid(dir, &master)?;
    let env = local::agent_env(pid).ok()?;
    let wanted = env
        .iter()
        .find(|(k, _)| k == pgset_spec::contract::env::SYNCHRONOUS)
        .and_then(|(_, v)| v.strip_prefix("required:"))
        .and_then(|n| n.parse::<usize>().ok())?;
    let store = pgset_agent::leader::FileStore::new(
        dir,
        &set.name,
        pgset_agent::leader::Holder::new("pgset-drill", "-"),
        pgset_agent::leader::LeaderTimings::for_lease(pgset_agent::settings::DEFAULT_LEADER_LEASE)
            .ok()?,
    );
    use pgset_agent::leader::LeaderStore;
    let record = store.read().await.ok()??;
    let listed = record
        .note(pgset_spec::contract::annotations::SYNCHRONOUS)
        .map(|v| v.split(',').filter(|m| !m.trim().is_empty()).count())
        .unwrap_or(0);
    (listed < wanted).then(|| {
        format!(
            "synchronous replication (required, {wanted}): the leader record lists {listed} \
             replica(s) holding every acknowledged commit, so a failover now would promote nobody"
        )
    })
}

async fn wait_healthy(dir: &Path, timeout: Duration) -> Result<Vec<MemberStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        let members = local::status(dir).await?;
        let mut why = unhealthy(&members);
        if why.is_empty()
            && let Some(short) = synchronous_short(dir).await
        {
            why.push(short);
        }
        if why.is_empty() {
            return Ok(members);
        }
        if Instant::now() > deadline {
            return Err(Error::NotHealthy(why.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A data directory's inode and its `.previous` sibling's, to see a copy made anew.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DataMark {
    member: String,
    data: Option<u64>,
    previous: Option<u64>,
}

fn data_marks(dir: &Path, members: &[String]) -> Vec<DataMark> {
    let ino = |p: PathBuf| std::fs::metadata(p).ok().map(|m| m.ino());
    members
        .iter()
        .map(|m| DataMark {
            member: m.clone(),
            data: ino(dir.join(m)),
            previous: ino(dir.join(format!("{m}.previous"))),
        })
        .collect()
}

fn recloned(before: &[DataMark], after: &[DataMark]) -> Vec<String> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.data != a.data || (a.previous.is_some() && b.previous != a.previous))
        .map(|(b, _)| b.member.clone())
        .collect()
}

/// How long a fault is held after a replica took over, so a commit the old master still
/// acknowledges (a late commit) is seen by the writer that keeps its connection to it.
pub const TAKEOVER_WATCH: Duration = Duration::from_secs(2);

/// Rows written on the replica the `rejoin` drill promotes by hand.
pub const REJOIN_ROWS: i64 = 1000;

/// The member's processes besides its agent: its postmaster (from `postmaster.pid`) and the
/// postmaster's children, which a container's teardown kills with the agent.
fn postgres_processes(pgdata: &Path) -> Vec<i32> {
    let Some(pm) = pgset_agent::datadir::live_postmaster(pgdata) else {
        return Vec::new();
    };
    let mut all = vec![pm];
    all.extend(pgset_agent::watchdog::children(pm));
    all
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// The copies with diverged writes in `dir` of each of `members`, as `(member, copy)`.
fn kept_of(dir: &Path, members: &[String]) -> Vec<(String, pgset_agent::rewind::KeptCopy)> {
    members
        .iter()
        .flat_map(|m| {
            pgset_agent::rewind::kept_copies(dir, m)
                .into_iter()
                .map(move |k| (m.clone(), k))
        })
        .collect()
}

/// The copies of `after` not in `before`, each with whether `warnings` (`local status`'s) name
/// it with its bytes.
fn new_kept(
    before: &[(String, pgset_agent::rewind::KeptCopy)],
    after: &[(String, pgset_agent::rewind::KeptCopy)],
    warnings: &[String],
) -> Vec<KeptDiverged> {
    after
        .iter()
        .filter(|(_, k)| !before.iter().any(|(_, b)| b.path == k.path))
        .map(|(m, k)| KeptDiverged {
            member: m.clone(),
            path: k.path.display().to_string(),
            bytes_after_fork: k.bytes_after_fork,
            warned: warnings.contains(&pgset_local::status::diverged_warning(m, k)),
        })
        .collect()
}

/// The local set a drill runs on.
struct Target {
    opts: LocalOptions,
    set: LocalSet,
    members: Vec<String>,
    password: String,
    log: Arc<Log>,
    /// The master's ordinal: the leader record's holder.
    master: i32,
    /// The drill's table (the `rejoin` drill writes into it on the replica it promotes).
    table: Mutex<String>,
}

impl Target {
    fn endpoint(&self, k: i32) -> Endpoint {
        Endpoint::new(local::HOST, self.set.member_port(k), self.password.clone())
            .with_patience(self.opts.patience)
    }

    /// `floor` scaled by the drill's patience.
    fn wait(&self, floor: Duration) -> Duration {
        self.opts.patience.deadline(floor)
    }

    fn step(&self, what: impl Into<String>) {
        self.log.step(what);
    }

    fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Stops member k's agent with SIGTERM (fast shutdown) and waits for it to exit; returns
    /// the environment to start it again with.
    async fn stop(&self, k: i32) -> Result<Vec<(String, String)>> {
        let member = self.set.member(k);
        let pid = local::agent_pid(self.dir(), &member)
            .ok_or_else(|| step_err(format!("stop {member}"), "its agent is not running"))?;
        let env = local::agent_env(pid)?;
        self.step(format!("SIGTERM to {member}'s agent (pid {pid})"));
        local::stop_member(self.dir(), &member, self.wait(Duration::from_secs(90))).await?;
        self.step(format!("{member}'s agent exited"));
        Ok(env)
    }

    /// Starts member k's agent with `env` and waits until it is ready.
    async fn start(&self, k: i32, env: &[(String, String)]) -> Result<()> {
        let member = self.set.member(k);
        self.step(format!("launcher starts {member}'s agent"));
        local::launch_agent(self.dir(), &member, &self.opts.agent_bin, env)?;
        local::wait_ready(self.dir(), &self.set, k, self.opts.recovery_timeout).await?;
        self.step(format!("{member} ready"));
        Ok(())
    }

    async fn restart(&self, k: i32) -> Result<()> {
        let env = self.stop(k).await?;
        self.start(k, &env).await
    }

    /// Member k's running agent and the environment to start it again with.
    fn agent_of(&self, k: i32, what: &str) -> Result<(i32, Vec<(String, String)>)> {
        let member = self.set.member(k);
        let pid = local::agent_pid(self.dir(), &member)
            .ok_or_else(|| step_err(format!("{what} {member}"), "its agent is not running"))?;
        Ok((pid, local::agent_env(pid)?))
    }

    /// Waits until the leader record names a member other than `old` and that member's
    /// postgres accepts writes; returns it.
    async fn wait_takeover(&self, old: i32) -> Result<i32> {
        let old_member = self.set.member(old);
        let deadline = Instant::now() + self.opts.recovery_timeout;
        let mut named = None;
        loop {
            let k = local::master_ordinal(self.dir(), &self.set).await;
            if k != old {
                if named != Some(k) {
                    self.step(format!("the leader record names {}", self.set.member(k)));
                    named = Some(k);
                }
                let writable = match self.endpoint(k).connect().await {
                    Ok(c) => c
                        .query_one("SELECT NOT pg_is_in_recovery()", &[])
                        .await
                        .is_ok_and(|r| r.get::<_, bool>(0)),
                    Err(_) => false,
                };
                if writable {
                    self.step(format!("{} accepts writes", self.set.member(k)));
                    return Ok(k);
                }
            }
            if Instant::now() > deadline {
                return Err(step_err(
                    format!("wait for a replica to take over from {old_member}"),
                    format!(
                        "none did within {}",
                        crate::load::secs(self.opts.recovery_timeout)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until member k's agent `pid` has exited.
    async fn wait_agent_exit(&self, k: i32, pid: i32) -> Result<()> {
        let member = self.set.member(k);
        let within = self.wait(Duration::from_secs(60));
        let deadline = Instant::now() + within;
        while alive(pid) {
            if Instant::now() > deadline {
                return Err(step_err(
                    format!("{member}'s agent (pid {pid})"),
                    format!("it did not exit within {}", crate::load::secs(within)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.step(format!("{member}'s agent exited"));
        Ok(())
    }

    /// SIGSTOP to member k's postmaster until a replica took over (and [`TAKEOVER_WATCH`]
    /// after), then SIGCONT; the launcher starts the agent again once it exited.
    async fn master_freeze(&self, k: i32) -> Result<()> {
        let member = self.set.member(k);
        let (agent, env) = self.agent_of(k, "freeze the postmaster of")?;
        let pm = pgset_agent::datadir::live_postmaster(&self.dir().join(&member))
            .ok_or_else(|| step_err(format!("freeze {member}'s postmaster"), "none runs"))?;
        kill(Pid::from_raw(pm), Signal::SIGSTOP)
            .map_err(|e| step_err(format!("SIGSTOP to postmaster {pm}"), e))?;
        self.step(format!("SIGSTOP to {member}'s postmaster (pid {pm})"));
        let took = self.wait_takeover(k).await;
        if took.is_ok() {
            tokio::time::sleep(TAKEOVER_WATCH).await;
        }
        // Resumed whatever happened; its agent may have killed it already.
        if kill(Pid::from_raw(pm), Signal::SIGCONT).is_ok() && alive(pm) {
            self.step(format!("SIGCONT to {member}'s postmaster (pid {pm})"));
        } else {
            self.step(format!(
                "{member}'s postmaster (pid {pm}) is gone: its agent stopped it"
            ));
        }
        took?;
        self.wait_agent_exit(k, agent).await?;
        self.start(k, &env).await
    }

    /// SIGSTOP to member k's agent (its postgres runs on) until a replica took over (and
    /// [`TAKEOVER_WATCH`] after), then SIGCONT; the launcher starts it again once it exited.
    async fn master_agent_freeze(&self, k: i32) -> Result<()> {
        let member = self.set.member(k);
        let (agent, env) = self.agent_of(k, "freeze the agent of")?;
        kill(Pid::from_raw(agent), Signal::SIGSTOP)
            .map_err(|e| step_err(format!("SIGSTOP to agent {agent}"), e))?;
        self.step(format!(
            "SIGSTOP to {member}'s agent (pid {agent}); its postgres runs on"
        ));
        let took = self.wait_takeover(k).await;
        if took.is_ok() {
            tokio::time::sleep(TAKEOVER_WATCH).await;
        }
        let _ = kill(Pid::from_raw(agent), Signal::SIGCONT);
        self.step(format!("SIGCONT to {member}'s agent (pid {agent})"));
        took?;
        self.wait_agent_exit(k, agent).await?;
        self.start(k, &env).await
    }

    /// SIGKILL to member k's agent and, as the teardown of its container does (its PID namespace
    /// ends with its main process), to its postmaster and the postmaster's children at once;
    /// the launcher starts the agent again.
    async fn master_agent_kill(&self, k: i32) -> Result<()> {
        let member = self.set.member(k);
        let (agent, env) = self.agent_of(k, "kill the agent of")?;
        let rest = postgres_processes(&self.dir().join(&member));
        kill(Pid::from_raw(agent), Signal::SIGKILL)
            .map_err(|e| step_err(format!("SIGKILL to agent {agent}"), e))?;
        for pid in &rest {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        self.step(format!(
            "SIGKILL to {member}'s agent (pid {agent}) and, as its container's teardown, to its \
             {} postgres processes{}",
            rest.len(),
            rest.first()
                .map(|pm| format!(" (postmaster {pm})"))
                .unwrap_or_default()
        ));
        self.wait_agent_exit(k, agent).await?;
        let within = self.wait(Duration::from_secs(30));
        let deadline = Instant::now() + within;
        while rest.iter().any(|p| alive(*p)) {
            if Instant::now() > deadline {
                return Err(step_err(
                    format!("{member}'s postgres processes after SIGKILL"),
                    format!("still there after {}", crate::load::secs(within)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.start(k, &env).await
    }

    /// The isolation switch for member k until a replica took over (and [`TAKEOVER_WATCH`]
    /// after), then removed; the launcher starts the agent again once it exited (it gave the
    /// role up).
    async fn master_isolated(&self, k: i32) -> Result<()> {
        let member = self.set.member(k);
        let (agent, env) = self.agent_of(k, "isolate")?;
        let timings = pgset_agent::leader::LeaderTimings::for_lease(
            pgset_agent::settings::DEFAULT_LEADER_LEASE,
        )
        .map_err(|e| step_err("the leader timings", e))?;
        let switch = pgset_agent::leader::FileStore::new(
            self.dir(),
            &self.set.name,
            pgset_agent::leader::Holder::new("pgset-drill", "-"),
            timings,
        )
        .isolate_switch(&member);
        std::fs::write(&switch, b"")
            .map_err(|e| step_err(format!("create {}", switch.display()), e))?;
        self.step(format!(
            "{member} cut off from the leader record ({})",
            switch.display()
        ));
        let took = self.wait_takeover(k).await;
        if took.is_ok() {
            tokio::time::sleep(TAKEOVER_WATCH).await;
        }
        let removed = std::fs::remove_file(&switch);
        self.step(format!(
            "{member} reconnected: the isolation switch removed"
        ));
        removed.map_err(|e| step_err(format!("remove {}", switch.display()), e))?;
        took?;
        self.wait_agent_exit(k, agent).await?;
        self.start(k, &env).await
    }

    /// Promotes replica k by hand while the master runs, writes [`REJOIN_ROWS`] rows on it
    /// (writer 0, which no drill writer uses), and restarts its agent: it must rejoin the
    /// master and keep what it wrote aside.
    async fn rejoin(&self, k: i32) -> Result<()> {
        let member = self.set.member(k);
        let ep = self.endpoint(k);
        let c = ep
            .connect_within(Duration::from_secs(10))
            .await
            .map_err(|e| step_err(format!("connect to {member}"), e))?;
        let promoted = ep
            .within(c.query_one("SELECT pg_promote(true, 60)", &[]))
            .await
            .map_err(|e| step_err(format!("pg_promote() on {member}"), e))?;
        if !promoted.get::<_, bool>(0) {
            return Err(step_err(
                format!("pg_promote() on {member}"),
                "not promoted within 60 s",
            ));
        }
        self.step(format!("pg_promote() on {member} while the master runs"));
        let table = self.table.lock().map(|t| t.clone()).unwrap_or_default();
        let sql = crate::load::insert_sql(&table);
        let row = ep
            .within(c.query_one(sql.as_str(), &[&0i32, &1i64, &REJOIN_ROWS]))
            .await
            .map_err(|e| step_err(format!("write on {member}"), e))?;
        self.step(format!(
            "{REJOIN_ROWS} rows written on {member} (timeline {})",
            row.try_get::<_, i32>(0).unwrap_or_default()
        ));
        drop(c);
        self.restart(k).await
    }

    /// SIGKILL to member k's postmaster; its agent exits and the launcher starts it again.
    async fn kill_postgres(&self, k: i32) -> Result<()> {
        let member = self.set.member(k);
        let agent = local::agent_pid(self.dir(), &member)
            .ok_or_else(|| step_err(format!("kill {member}'s postgres"), "no agent runs"))?;
        let env = local::agent_env(agent)?;
        let pid = pgset_agent::datadir::live_postmaster(&self.dir().join(&member))
            .ok_or_else(|| step_err(format!("kill {member}'s postgres"), "no postmaster runs"))?;
        self.step(format!("SIGKILL to {member}'s postmaster (pid {pid})"));
        kill(Pid::from_raw(pid), Signal::SIGKILL)
            .map_err(|e| step_err(format!("kill postmaster {pid}"), e))?;
        let exit = self.wait(Duration::from_secs(60));
        let deadline = Instant::now() + exit;
        while local::agent_pid(self.dir(), &member).is_some() {
            if Instant::now() > deadline {
                return Err(step_err(
                    format!("{member}'s agent after its postgres was killed"),
                    format!("it did not exit within {}", crate::load::secs(exit)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.step(format!("{member}'s agent exited"));
        self.start(k, &env).await
    }

    /// The environment of a new member k: the last member's, as its agent was started, with the
    /// member's own name, port, health address and termination log (the typed contract).
    fn new_member_env(&self, k: i32) -> Result<Vec<(String, String)>> {
        let last = self.set.member(k - 1);
        let pid = local::agent_pid(self.dir(), &last).ok_or_else(|| {
            step_err(
                format!("read {last}'s environment"),
                "its agent is not running",
            )
        })?;
        let env = local::agent_env(pid)?;
        let mut contract = AgentEnv::from_lookup(|name| {
            env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        })
        .map_err(|e| step_err(format!("read {last}'s environment"), e))?;
        let member = self.set.member(k);
        contract.member = MemberIdentity::Given {
            pod_name: member.clone(),
            namespace: Some(local::LOCAL_NAMESPACE.to_string()),
            pod_uid: None,
        };
        contract.port = self.set.member_port(k);
        contract.health_addr = Some(self.set.health_addr(k));
        contract.termination_log = Some(local::termination_log(self.dir(), &member));
        Ok(contract
            .literal_entries()
            .map_err(|e| step_err(format!("{member}'s environment"), e))?
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect())
    }

    /// Adds member n (a directory of its own, never used before), stops its agent with SIGTERM
    /// while the master's `pg_stat_progress_basebackup` shows its copy, starts it again and waits
    /// until it is ready; then takes it out of the set again (its copy stays: data is never
    /// deleted).
    async fn restart_during_basebackup(&self) -> Result<()> {
        let n = self.members.len() as i32;
        let new = self.set.member(n);
        let env = self.new_member_env(n)?;
        let master = self.endpoint(self.master);
        let pad = engine::fill_pad(&master, &self.log).await?;
        let outcome = async {
            self.step(format!("membership {} -> {}", n, n + 1));
            local::write_members(self.dir(), &self.set, n + 1)?;
            self.step(format!("launcher starts {new}'s agent"));
            local::launch_agent(self.dir(), &new, &self.opts.agent_bin, &env)?;
            let deadline = Instant::now() + self.opts.recovery_timeout;
            let mut client = None;
            while !engine::copying(&master, &mut client).await {
                let ready = pgset_agent::health::probe(
                    self.set.health_addr(n),
                    pgset_spec::contract::HEALTH_READY_PATH,
                )
                .await
                    == Some(200);
                if ready {
                    return Err(Error::NotApplicable {
                        drill: DrillName::AgentRestartDuringBasebackup,
                        why: format!(
                            "{new} became ready without a base backup the drill could interrupt"
                        ),
                    });
                }
                if Instant::now() > deadline {
                    return Err(step_err(
                        format!("wait for {new}'s base backup"),
                        "none started",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.step(format!("base backup for {new} running"));
            self.step(format!("SIGTERM to {new}'s agent"));
            local::stop_member(self.dir(), &new, self.wait(Duration::from_secs(90))).await?;
            self.step(format!("{new}'s agent exited"));
            self.start(n, &env).await
        }
        .await;
        // Back to the set as it was found, whatever happened.
        self.step(format!("membership {} -> {}", n + 1, n));
        let back = local::write_members(self.dir(), &self.set, n);
        let stopped =
            local::stop_member(self.dir(), &new, self.wait(Duration::from_secs(90))).await;
        self.step(format!("{new}'s agent stopped"));
        engine::wait_slot_dropped(
            &master,
            &pgset_spec::slot_name(&new),
            Duration::from_millis(100),
            self.wait(Duration::from_secs(30)),
            &self.log,
        )
        .await;
        engine::drop_pad(&master, &pad).await;
        outcome?;
        back?;
        stopped.map(drop).map_err(Error::from)
    }

    /// Takes the last member out of the set (its agent stopped, the master drops its slot) and
    /// brings it back on its data.
    async fn scale_down_up(&self) -> Result<()> {
        let n = self.members.len() as i32;
        let k = n - 1;
        let member = self.set.member(k);
        self.step(format!("membership {} -> {}", n, n - 1));
        local::write_members(self.dir(), &self.set, n - 1)?;
        let env = match self.stop(k).await {
            Ok(env) => env,
            Err(e) => {
                // The membership goes back to what it was: the set is left as it was found.
                local::write_members(self.dir(), &self.set, n)?;
                return Err(e);
            }
        };
        engine::wait_slot_dropped(
            &self.endpoint(self.master),
            &pgset_spec::slot_name(&member),
            Duration::from_millis(100),
            self.wait(Duration::from_secs(30)),
            &self.log,
        )
        .await;
        self.step(format!("membership {} -> {}", n - 1, n));
        local::write_members(self.dir(), &self.set, n)?;
        self.start(k, &env).await
    }
}

fn read_password(dir: &Path) -> Result<String> {
    let p = dir.join("secret").join(secret::SUPERUSER_PASSWORD_KEY);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| step_err(format!("read {}", p.display()), e))
}

/// Runs `drill` on the local set in `opts.dir`: refuses unless the set is healthy, runs the load,
/// injects the fault, waits until the set is healthy again, and measures.
pub async fn run(opts: &LocalOptions, drill: DrillName) -> Result<DrillReport> {
    let set = local::read_set(&opts.dir)?;
    let status = local::status(&opts.dir).await?;
    let why = unhealthy(&status);
    if !why.is_empty() {
        return Err(Error::NotHealthy(why.join("; ")));
    }
    // A failover drill waits (within the recovery timeout) until the set can fail over.
    if drill.fails_over() {
        let deadline = Instant::now() + opts.recovery_timeout;
        while let Some(short) = synchronous_short(&opts.dir).await {
            if Instant::now() > deadline {
                return Err(Error::NotHealthy(short));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let members: Vec<String> = status
        .iter()
        .filter(|m| m.member)
        .map(|m| m.name.clone())
        .collect();
    let n = members.len() as i32;
    if n < 2 || members.iter().zip(0..).any(|(m, k)| *m != set.member(k)) {
        return Err(Error::NotApplicable {
            drill,
            why: format!(
                "needs members {}-0..{}-N with at least one replica (the set has {}): `{} local up --replicas 3`",
                set.name,
                set.name,
                members.join(", "),
                pgset_spec::contract::program_name(),
            ),
        });
    }
    if !opts.agent_bin.is_file() {
        return Err(step_err(
            "find the agent binary",
            format!("{} does not exist", opts.agent_bin.display()),
        ));
    }
    if !drill.runs_on(Where::Local) {
        return Err(Error::NotApplicable {
            drill,
            why: "runs against a cluster, not a local set".into(),
        });
    }
    // The drills aim at the actual master (the leader record's holder), and at the last
    // replica.
    let master_k = local::master_ordinal(&opts.dir, &set).await;
    let last_replica = (0..n).rev().find(|k| *k != master_k).unwrap_or(n - 1);
    if drill == DrillName::ScaleDownUp && master_k == n - 1 {
        return Err(Error::NotApplicable {
            drill,
            why: format!(
                "the last member {} is the master (the leader record names it): scaling down \
                 takes a replica out",
                set.member(master_k)
            ),
        });
    }
    let target_k = match drill {
        DrillName::ReplicaRestart | DrillName::Rejoin => last_replica,
        DrillName::ScaleDownUp => n - 1,
        DrillName::AgentRestartDuringBasebackup => n,
        _ => master_k,
    };
    if drill == DrillName::AgentRestartDuringBasebackup {
        let new = set.member(n);
        if opts.dir.join(&new).exists() {
            return Err(Error::NotApplicable {
                drill,
                why: format!(
                    "{new} has a data directory in {} already (an earlier run's copy, kept: data is \
                     never deleted); the drill needs a member that was never copied: run it on a \
                     set of its own",
                    opts.dir.display()
                ),
            });
        }
    }
    // Reads go through the replica the fault hits, else the last one.
    let read_k = last_replica;
    let mut t = Target {
        opts: opts.clone(),
        set: set.clone(),
        members: members.clone(),
        password: read_password(&opts.dir)?,
        log: Arc::new(Log::default()),
        master: master_k,
        table: Mutex::new(String::new()),
    };
    // The first connection to the master, timed: every wait before giving up scales with it.
    let round_trip =
        crate::load::time_first_connect(&t.endpoint(master_k), crate::patience::FIRST_CONNECT)
            .await
            .map_err(|e| step_err(format!("connect to {}", set.member(master_k)), e))?;
    t.opts.patience = opts.patience.measured(round_trip);
    t.opts.recovery_timeout = t.opts.patience.deadline(opts.recovery_timeout);
    let opts = &t.opts;
    // The writer, the row count and the monitors follow the master the record names.
    let leader = Endpoint::via(
        Route::LocalLeader {
            dir: opts.dir.clone(),
            set: set.clone(),
        },
        t.password.clone(),
    )
    .with_patience(opts.patience);
    let setup = Setup {
        writer: leader.clone(),
        reader: t.endpoint(read_k),
        master: leader,
        replicas: (0..n).map(|k| (set.member(k), t.endpoint(k))).collect(),
        pinned: drill.may_move_master().then(|| t.endpoint(master_k)),
        names: (0..n)
            .map(|k| {
                (
                    format!("{}:{}", local::HOST, set.member_port(k)),
                    set.member(k),
                )
            })
            .collect(),
        ready: ReadyProbe::LocalLeader {
            dir: opts.dir.clone(),
            set: set.clone(),
        },
        warmup: opts.warmup,
        cooldown: opts.cooldown,
        members: members.len(),
        target: set.member(target_k),
        read_from: set.member(read_k),
        repair_hint: format!(
            "the set may need `{} local up --dir {}` to be whole again",
            pgset_spec::contract::program_name(),
            opts.dir.display()
        ),
    };
    let marks_before = data_marks(&opts.dir, &members);
    let kept_before = kept_of(&opts.dir, &members);
    let table = engine::create_table(&setup).await?;
    if let Ok(mut tb) = t.table.lock() {
        tb.clone_from(&table);
    }
    let fault = async {
        match drill {
            DrillName::MasterRestart | DrillName::MasterRestartUnderLoad => {
                t.restart(master_k).await
            }
            DrillName::ReplicaRestart => t.restart(target_k).await,
            DrillName::PostgresKill => t.kill_postgres(master_k).await,
            DrillName::ScaleDownUp => t.scale_down_up().await,
            DrillName::AgentRestartDuringBasebackup => t.restart_during_basebackup().await,
            DrillName::MasterFreeze => t.master_freeze(master_k).await,
            DrillName::MasterAgentFreeze => t.master_agent_freeze(master_k).await,
            DrillName::MasterAgentKill => t.master_agent_kill(master_k).await,
            DrillName::MasterIsolated => t.master_isolated(master_k).await,
            DrillName::Rejoin => t.rejoin(target_k).await,
            other => Err(Error::NotApplicable {
                drill: other,
                why: "runs against a cluster, not a local set".into(),
            }),
        }
    };
    let recovery = opts.recovery_timeout;
    let healthy = || async { wait_healthy(&opts.dir, recovery).await.map(drop) };
    let outcome = engine::drive(&setup, drill, &table, t.log.clone(), fault, healthy).await;
    engine::drop_table(&setup, &table).await;
    let mut report = outcome?;
    report.recloned = recloned(&marks_before, &data_marks(&opts.dir, &members));
    // What the drill made a member set aside, and whether `local status` warns of it.
    let warnings = pgset_local::status::report(&opts.dir)
        .await
        .map(|r| r.warnings)
        .unwrap_or_default();
    report.kept_diverged = new_kept(&kept_before, &kept_of(&opts.dir, &members), &warnings);
    report.judge();
    Ok(report)
}

/// Runs several drills in order, each only when the set is healthy.
pub async fn run_all(opts: &LocalOptions, drills: &[DrillName]) -> Result<Vec<DrillReport>> {
    let mut out = Vec::new();
    for d in drills {
        out.push(run(opts, *d).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, k: i32) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            role: if k == 0 { "master" } else { "replica" }.into(),
            host: "127.0.0.1".into(),
            port: 28100 + k as u16,
            socket_dir: "/tmp/run".into(),
            data_dir: format!("/tmp/{name}").into(),
            pid: Some(100 + k),
            agent_pid: Some(200 + k),
            member: true,
            streaming: (k > 0).then_some(true),
            ready: Some(true),
            reason: Some("serving".into()),
            detail: None,
            stopped_with: None,
        }
    }

    #[test]
    fn health_needs_every_listed_member_ready_and_streaming() {
        let mut ms = vec![
            member("pgset-0", 0),
            member("pgset-1", 1),
            member("pgset-2", 2),
        ];
        assert!(unhealthy(&ms).is_empty());
        ms[1].streaming = Some(false);
        ms[2].agent_pid = None;
        ms[2].stopped_with = Some("refused: foreign data\nlog line 2\nlog line 3".into());
        let why = unhealthy(&ms);
        assert_eq!(
            why,
            [
                "pgset-1 does not stream from the master",
                "pgset-2 is stopped: refused: foreign data"
            ]
        );
        // A member taken out of the set does not count.
        ms[2].member = false;
        ms[1].streaming = Some(true);
        assert!(unhealthy(&ms).is_empty());
    }

    #[test]
    fn health_needs_the_recorded_master_writable_and_no_other_member_a_master() {
        let mut ms = vec![
            member("pgset-0", 0),
            member("pgset-1", 1),
            member("pgset-2", 2),
        ];
        // The leader record names pgset-1 (status gives it the master's role).
        ms[0].role = "replica".into();
        ms[0].streaming = Some(true);
        ms[1].role = "master".into();
        ms[1].streaming = None;
        let detail = |in_recovery: bool| Some(serde_json::json!({ "inRecovery": in_recovery }));
        ms[0].detail = detail(true);
        ms[1].detail = detail(false);
        ms[2].detail = detail(true);
        assert!(unhealthy(&ms).is_empty(), "{:?}", unhealthy(&ms));
        // A replica promoted by hand, and a recorded master that is still a standby.
        ms[2].detail = detail(false);
        ms[1].detail = detail(true);
        assert_eq!(
            unhealthy(&ms),
            [
                "pgset-1 is the master the leader record names, but its postgres is in recovery",
                "pgset-2 runs as a master, but the leader record names another member"
            ]
        );
    }

    #[test]
    fn a_new_inode_or_a_new_previous_copy_is_a_reclone() {
        let t = tempfile::tempdir().unwrap();
        let names = vec!["pgset-1".to_string(), "pgset-2".to_string()];
        for n in &names {
            std::fs::create_dir(t.path().join(n)).unwrap();
        }
        let before = data_marks(t.path(), &names);
        assert!(recloned(&before, &data_marks(t.path(), &names)).is_empty());
        std::fs::rename(t.path().join("pgset-2"), t.path().join("pgset-2.previous")).unwrap();
        std::fs::create_dir(t.path().join("pgset-2")).unwrap();
        assert_eq!(
            recloned(&before, &data_marks(t.path(), &names)),
            ["pgset-2"]
        );
    }
}
