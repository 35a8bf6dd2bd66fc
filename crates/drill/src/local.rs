//! The local-mode target: drills against a set formed by `cargo xtask local up` (members as
//! agent processes on 127.0.0.1). The drill acts as the launcher that restarts an agent that
//! exited, as the kubelet does for a pod, with the contract environment the agent had.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_local::{self as local, LocalSet, MemberStatus};
use pgset_spec::contract::{AgentEnv, MemberIdentity, secret};

use crate::engine::{self, Log, Setup};
use crate::load::{Endpoint, ReadyProbe};
use crate::report::DrillReport;
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
        }
    }
    why
}

async fn wait_healthy(dir: &Path, timeout: Duration) -> Result<Vec<MemberStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        let members = local::status(dir).await?;
        let why = unhealthy(&members);
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

/// The local set a drill runs on.
struct Target {
    opts: LocalOptions,
    set: LocalSet,
    members: Vec<String>,
    password: String,
    log: Arc<Log>,
    /// The master's ordinal: the leader record's holder.
    master: i32,
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
        DrillName::ReplicaRestart => last_replica,
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
    };
    // The first connection to the master, timed: every wait before giving up scales with it.
    let round_trip =
        crate::load::time_first_connect(&t.endpoint(master_k), crate::patience::FIRST_CONNECT)
            .await
            .map_err(|e| step_err(format!("connect to {}", set.member(master_k)), e))?;
    t.opts.patience = opts.patience.measured(round_trip);
    t.opts.recovery_timeout = t.opts.patience.deadline(opts.recovery_timeout);
    let opts = &t.opts;
    let setup = Setup {
        writer: t.endpoint(master_k),
        reader: t.endpoint(read_k),
        master: t.endpoint(master_k),
        replicas: (0..n)
            .filter(|k| *k != master_k)
            .map(|k| (set.member(k), t.endpoint(k)))
            .collect(),
        ready: ReadyProbe::Local(set.health_addr(master_k)),
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
    let table = engine::create_table(&setup).await?;
    let fault = async {
        match drill {
            DrillName::MasterRestart | DrillName::MasterRestartUnderLoad => t.restart(0).await,
            DrillName::ReplicaRestart => t.restart(target_k).await,
            DrillName::PostgresKill => t.kill_postgres(0).await,
            DrillName::ScaleDownUp => t.scale_down_up().await,
            DrillName::AgentRestartDuringBasebackup => t.restart_during_basebackup().await,
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
