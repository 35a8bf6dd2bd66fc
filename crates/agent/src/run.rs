//! `pgset-agent run`: settings from the env contract, the postgres user, the supported major,
//! the health endpoint, the data directory's identity checks, the master's identity for a
//! replica, then supervising postgres until it exits (rewinding a replica whose history parted
//! from the master's, what it wrote after the fork kept, or copying again when PostgreSQL's state
//! says it can no longer follow, keeping at most one older copy and never one with diverged writes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgset_spec::contract::{self, AgentMode, MemberPhase};

use crate::bootstrap::{self, Plan};
use crate::datadir;
use crate::fence::{Fence, FenceOptions, StalePid, StaleSocketLock};
use crate::health::{self, Health, milestone};
use crate::identity::{self, MemberRef};
use crate::kube_api::{ClusterRecord, PodApi, RecordData};
use crate::leader::LeaderStore;
use crate::pg::{self, Db, MasterView};
use crate::pgbin::PgBin;
use crate::privilege;
use crate::rewind::Rejoin;
use crate::role::{self, RoleStore};
use crate::settings::{Role, Settings};
use crate::supervise::{Outcome, ShutdownSignals, supervise};
use crate::{Error, Result, meter, phase};

/// Exit code after a shutdown signal arrived before postgres ran.
const EXIT_SIGTERM: i32 = 143;

/// Runs the member; returns the process exit code.
pub async fn run() -> Result<i32> {
    let began = std::time::SystemTime::now();
    if let Some(user) = privilege::drop_root()? {
        crate::info!(
            "started as root: running as user `{}` (uid {})",
            user.name,
            user.uid
        );
    }
    let s = Settings::from_env()?;
    crate::info!(
        "member {} of cluster {}: {} (ordinal {}), data {}",
        s.pod_name,
        s.env.cluster,
        s.role.label(),
        s.ordinal,
        s.pgdata().display()
    );
    let bin = PgBin::find(s.env.pg_bin_dir.as_deref())?;
    let major = MajorCheck::start(&bin);
    datadir::check_root(&s.env.data_root)?;
    let me = bootstrap::member_ref(&s)?;
    let api = match s.env.mode {
        AgentMode::Kubernetes => {
            let ns = s.namespace().unwrap_or_default();
            Some(PodApi::in_cluster(ns, &s.env.cluster)?)
        }
        AgentMode::Local => None,
    };
    let health = Health::new(&s.pod_name, s.liveness_timeout());
    health.mark_at(milestone::STARTED, began);
    if let Some(addr) = s.env.health_addr {
        health::serve(addr, health.clone()).await?;
    }
    let mut publisher = api.clone().map(|api| {
        phase::publish(
            api,
            s.pod_name.clone(),
            health.steps(),
            health.base_backup_readings(),
        )
    });
    let result = run_member(&s, &bin, &major, &me, &health, api.as_ref()).await;
    if let (Err(e), Some(publisher)) = (&result, publisher.as_mut()) {
        let step = match e {
            Error::Refused { .. } | Error::Fence { .. } => MemberPhase::Refused,
            _ => MemberPhase::Failed,
        };
        health.set_step(step);
        publisher.flush(step, LAST_STEP_WAIT).await;
    }
    result
}

/// How long an agent that stops with an error waits for its last step to reach the pod.
const LAST_STEP_WAIT: Duration = Duration::from_secs(5);

/// The binaries' major version (`postgres -V`, a process of its own), asked when the agent
/// starts and confirmed before the member changes anything (before its data is checked against
/// the master, a slot made, a record written or initdb run): a replica waits for its master
/// meanwhile instead of after.
struct MajorCheck {
    asked: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<u32>>>>,
    major: tokio::sync::OnceCell<u32>,
}

impl MajorCheck {
    /// Asks `bin` its version in the background.
    fn start(bin: &PgBin) -> MajorCheck {
        let bin = bin.clone();
        MajorCheck {
            asked: tokio::sync::Mutex::new(Some(tokio::task::spawn_blocking(move || {
                bin.supported_major()
            }))),
            major: tokio::sync::OnceCell::new(),
        }
    }

    /// The supported major of `bin`, or the error that refuses it (asked again after a failure).
    async fn confirmed(&self, bin: &PgBin) -> Result<u32> {
        if let Some(major) = self.major.get() {
            return Ok(*major);
        }
        let asked = self.asked.lock().await.take();
        let major = match asked {
            Some(task) => task.await.map_err(|e| {
                Error::Failed(format!("asking the PostgreSQL binaries their version: {e}"))
            })??,
            None => bin.supported_major()?,
        };
        crate::info!("PostgreSQL {major} binaries in {}", bin.dir().display());
        let _ = self.major.set(major);
        Ok(major)
    }
}

/// From the write fence to postgres' exit.
async fn run_member(
    s: &Settings,
    bin: &PgBin,
    major: &MajorCheck,
    me: &MemberRef,
    health: &Arc<Health>,
    api: Option<&PodApi>,
) -> Result<i32> {
    let mut signals = ShutdownSignals::install()?;
    health.watch_kept_copies(&s.env.data_root);
    // The write fence comes before anything is written beside or inside the data directory
    // (even the local pid file: a refused agent must not touch another member's files).
    bootstrap::check_data_root(s)?;
    health.preparing(MemberPhase::Fencing, "taking the member's write fence");
    let fence = tokio::select! {
        f = Fence::acquire(s, api, FenceOptions::default()) => f?,
        _ = signals.recv() => {
            crate::info!("shutdown requested while waiting for the member's write fence");
            return Ok(EXIT_SIGTERM);
        }
    };
    health.mark(milestone::FENCED);
    crate::info!("holding the write fence: {}", fence.holder_description());
    let pid_file = (s.env.mode == AgentMode::Local).then(|| s.agent_pid_file());
    if let Some(f) = &pid_file {
        datadir::write_atomic(f, format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
    }
    // The role comes from the leader record, read under the member fence; read again after a
    // switchover, which changes it in this same process.
    let store = RoleStore::of(s, api)?;
    let result = loop {
        let record = tokio::select! {
            r = role::read_record(&store) => r,
            _ = signals.recv() => {
                crate::info!("shutdown requested while reading the leader record");
                break Ok(EXIT_SIGTERM);
            }
        };
        health.mark(milestone::RECORD);
        match take_role(
            s,
            bin,
            major,
            me,
            health,
            api,
            &mut signals,
            &fence,
            &store,
            record,
        )
        .await
        {
            Ok(Ending::Exit(code)) => break Ok(code),
            Ok(Ending::Rerole) => continue,
            Err(e) => break Err(e),
        }
    };
    if let Some(f) = &pid_file {
        let _ = std::fs::remove_file(f);
    }
    if result.is_ok()
        && let Err(e) = fence.release().await
    {
        crate::warn!("releasing the write fence: {e}");
    }
    result
}

/// How a member's run in one role ended.
enum Ending {
    /// The agent exits with this code.
    Exit(i32),
    /// The record is read again and the member runs in the role it names: after a switchover
    /// (on the same data directory, no copy, no rewind) and after a replica was stopped to
    /// rejoin a master (rewound, or set aside for a new copy).
    Rerole,
}

/// Runs the member in the role `record` names until postgres exits or the role changes.
#[allow(clippy::too_many_arguments)]
async fn take_role(
    s: &Settings,
    bin: &PgBin,
    major: &MajorCheck,
    me: &MemberRef,
    health: &Arc<Health>,
    api: Option<&PodApi>,
    signals: &mut ShutdownSignals,
    fence: &Fence,
    store: &RoleStore,
    record: Option<crate::leader::LeaderRecord>,
) -> Result<Ending> {
    let decision = role::decide(s, record.as_ref());
    let s = &role::apply(s, &decision);
    match &decision.master {
        None => crate::info!(
            "the leader record {}: this member serves as the master",
            record
                .as_ref()
                .and_then(|r| r.holder.as_ref())
                .map(|h| format!("names {h}"))
                .unwrap_or_else(|| "has no holder".into())
        ),
        Some(m) => crate::info!(
            "the leader record names {m} the master: this member is its replica ({}:{})",
            s.env.master_host,
            s.env.master_port
        ),
    }
    if let Some(api) = api {
        // The label is the member's first change in a cluster.
        major.confirmed(bin).await?;
        match role::label_at_start(api, s).await {
            Ok(true) => crate::info!(
                "labelled pod {} {}={} before it serves",
                s.pod_name,
                contract::labels::ROLE,
                s.role.label()
            ),
            Ok(false) => {}
            Err(e) => crate::warn!(
                "labelling the pod {}={} at start (it is labelled again before it is ready): {e}",
                contract::labels::ROLE,
                s.role.label()
            ),
        }
    }
    let timeline = record.as_ref().map(|r| r.timeline).unwrap_or(1).max(1);
    let lead = Lead {
        store: store.clone(),
        timeline,
    };
    member_run(s, bin, major, me, health, api, signals, fence, &lead).await
}

/// The leader record's store and the timeline it last named.
struct Lead {
    store: RoleStore,
    timeline: u32,
}

/// Prepares the data directory, starts and supervises postgres in the role `s` names, and says
/// how the run ended.
#[allow(clippy::too_many_arguments)]
async fn member_run(
    s: &Settings,
    bin: &PgBin,
    major: &MajorCheck,
    me: &MemberRef,
    health: &Arc<Health>,
    api: Option<&PodApi>,
    signals: &mut ShutdownSignals,
    fence: &Fence,
    lead: &Lead,
) -> Result<Ending> {
    health.preparing(MemberPhase::Checking, "checking the data directory");
    // The check marks unmarked data as this member's under the opt-in: a change.
    if s.env.adopt_unmarked {
        major.confirmed(bin).await?;
    }
    let (s2, me2) = (s.clone(), me.clone());
    let mut plan = tokio::task::spawn_blocking(move || bootstrap::inspect(&s2, &me2))
        .await
        .map_err(|e| Error::Failed(format!("checking the data directory: {e}")))??;
    health.mark(milestone::IDENTITY);
    // In a cluster the record (ConfigMap `<name>-record`) tells what this cluster's master
    // initialised, also when no sibling directory is in view (templates mode).
    let record = match api {
        Some(api) => Some(api.cluster_record().await),
        None => None,
    };
    // A master changes its data or the record next; a replica only after its master answered.
    if s.role == Role::Master {
        major.confirmed(bin).await?;
    }
    let mut reinit = None;
    if s.role == Role::Master && plan == Plan::Initdb {
        reinit = check_record_before_initdb(s, me, record.as_ref())?;
        if let Some(r) = &reinit {
            mark_reinit(s, api, r).await?;
        }
    }
    // A replica's connection to the master, kept while it copies: the master's estimate
    // of the copy's size comes over it.
    let mut master = None;
    if s.role == Role::Replica {
        health.preparing(MemberPhase::WaitingForMaster, "waiting for the master");
        let (db, view) = tokio::select! {
            r = wait_for_master(s) => r?,
            _ = signals.recv() => {
                crate::info!("shutdown requested while waiting for the master");
                return Ok(Ending::Exit(EXIT_SIGTERM));
            }
        };
        health.mark(milestone::MASTER_ANSWERED);
        major.confirmed(bin).await?;
        let recorded = match &record {
            Some(Ok(Some(r))) if r.cluster_id == me.cluster_id && r.system_identifier.is_some() => {
                Some(r.clone())
            }
            _ => None,
        };
        plan = check_master(s, bin, me, plan, &view, recorded.as_ref()).await?;
        prepare_slot(&db, s, plan, &view).await?;
        master = Some(db);
    }
    let (step, activity) = match plan {
        Plan::Initdb => (MemberPhase::Initdb, "initdb"),
        Plan::BaseBackup => (MemberPhase::BaseBackup, "base backup from the master"),
        Plan::Existing => (
            MemberPhase::Configuring,
            "writing the managed configuration",
        ),
    };
    health.preparing(step, activity);
    let (s2, b2, me2) = (s.clone(), bin.clone(), me.clone());
    let make = tokio::task::spawn_blocking(move || bootstrap::make(&s2, &b2, &me2, plan));
    // pg_basebackup connects with the member's name as its application_name.
    let meter = meter::measure(
        s.bootstrap_dir(),
        health.clone(),
        master.as_ref(),
        &s.pod_name,
    );
    tokio::select! {
        never = meter, if plan == Plan::BaseBackup => match never {},
        r = make => {
            r.map_err(|e| Error::Failed(format!("preparing the data directory: {e}")))??;
            if s.role == Role::Master {
                keep_record(s, me, api, plan, record.as_ref(), reinit.as_ref()).await;
            }
            if let Some(api) = api {
                publish_identity(s, me, api).await;
            }
            health.mark(milestone::DATA_MADE);
        }
        _ = signals.recv() => {
            crate::info!("shutdown requested while preparing the data directory; stopping the copy");
            for pid in datadir::processes_using(&s.bootstrap_dir()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            return Ok(Ending::Exit(EXIT_SIGTERM));
        }
    }
    health.set_base_backup(None);
    drop(master);
    match fence.clear_stale_postmaster_pid(&s.pgdata())? {
        StalePid::Absent => {}
        StalePid::Renamed(to) => crate::info!(
            "a postmaster.pid without a live postmaster was left by a stopped member; kept as {}",
            to.display()
        ),
        StalePid::LivePostmaster(pid) => {
            return Err(Error::Refused {
                path: s.pgdata(),
                problem: format!(
                    "a live postmaster (pid {pid}) already runs on this data directory; stop it first"
                ),
            });
        }
    }
    match fence.clear_stale_socket_lock(&s.env.socket_dir, s.env.port)? {
        StaleSocketLock::LivePostmaster(pid) => {
            return Err(Error::Refused {
                path: s.pgdata(),
                problem: format!(
                    "a live postmaster (pid {pid}) already serves this member's socket; stop it first"
                ),
            });
        }
        StaleSocketLock::Absent | StaleSocketLock::Removed(_) | StaleSocketLock::Foreign(_) => {}
    }
    // The master takes the record before postgres starts, and renews it while it answers.
    let mut keeper = None;
    let mut leader_lost = None;
    if s.role == Role::Master {
        let held = role::claim(s, &lead.store, lead.timeline).await?;
        health.mark(milestone::RECORD_HELD);
        crate::info!(
            "holding the leader record (timeline {}, renewed every {} ms, given up {} ms \
             after the last good renewal)",
            held.record.timeline,
            lead.store.timings().renew_every().as_millis(),
            lead.store.timings().renew_deadline().as_millis()
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        keeper = Some(tokio::spawn(role::keep(
            s.clone(),
            lead.store.clone(),
            held,
            tx,
        )));
        leader_lost = Some(rx);
    }
    let outcome = supervise(
        s,
        bin,
        health,
        api,
        signals,
        fence,
        leader_lost,
        &lead.store,
    )
    .await;
    // Stopped renewing; the record is not released, so a restart of this member takes it
    // again at once and otherwise it expires for a replica after its lease duration.
    if let Some(k) = keeper {
        k.abort();
    }
    match outcome? {
        Outcome::Exited(code) => Ok(Ending::Exit(code)),
        Outcome::SteppedDown(step) => {
            crate::switchover::finish(s, bin, &lead.store, *step).await;
            Ok(Ending::Rerole)
        }
        Outcome::Reclone {
            reason,
            needed_bytes,
            parted,
            settings,
        } => {
            // Judged against the master it followed last (it may have moved since postgres
            // started); afterwards the record is read again, so the member restarts as a
            // replica of the master it names now. Diverged data is rewound (what it wrote
            // after the fork kept) before a copy; a failed rewind leaves the data marked
            // with what it holds, for `set_aside`.
            let now = &*settings;
            match crate::rewind::rejoin_from(now, bin, parted).await? {
                Rejoin::Rewound(_) => return Ok(Ending::Rerole),
                Rejoin::NotDiverged if parted.is_some() => {
                    crate::info!(
                        "{reason}, but stopped, its data has not parted from the master's \
                         history: starting it again as it is"
                    );
                    return Ok(Ending::Rerole);
                }
                Rejoin::NotDiverged => {}
                // What a copy would discard is not measured: nothing is moved.
                Rejoin::Unknown(why) => {
                    return Err(Error::Failed(format!(
                        "{reason}, but whether this member's data diverged from the master's \
                         history is not known ({why}); its data stays in place"
                    )));
                }
                Rejoin::Failed { reason, .. } => crate::warn!("{reason}"),
            }
            let kept = set_aside(now, me, needed_bytes)?;
            crate::warn!(
                "{reason}: this member's data is kept at {} and the master is copied again",
                kept.display()
            );
            Ok(Ending::Rerole)
        }
    }
}

/// The pause between two looks for the master while the wait is young: a replica started
/// beside its master (a parallel start) copies within this of the master serving. A refused
/// connection costs nothing, so a longer pause would only wait for nothing.
const MASTER_LOOK_SOON: Duration = Duration::from_millis(100);
/// How long the looks stay [`MASTER_LOOK_SOON`] apart: a master's initdb and first start.
const MASTER_LOOK_SOON_FOR: Duration = Duration::from_secs(30);
/// The longest pause between two looks for the master, after [`MASTER_LOOK_SOON_FOR`].
const MASTER_RETRY_MAX: Duration = Duration::from_secs(1);

/// The pause before the next look for the master, `waited` into the wait, after a pause of
/// `last` (none before the first): soon while the wait is young, then backing off to
/// [`MASTER_RETRY_MAX`].
fn next_master_look(waited: Duration, last: Option<Duration>) -> Duration {
    if waited < MASTER_LOOK_SOON_FOR {
        return MASTER_LOOK_SOON;
    }
    last.map(|d| (d * 2).clamp(MASTER_LOOK_SOON, MASTER_RETRY_MAX))
        .unwrap_or(MASTER_LOOK_SOON)
}

/// Waits until the master answers as the replication role, with backoff and a log line when
/// the reason changes; an error after `s.master_wait`.
async fn wait_for_master(s: &Settings) -> Result<(Db, MasterView)> {
    let started = Instant::now();
    let mut last_delay = None;
    let mut last_logged: Option<(String, Instant)> = None;
    loop {
        let attempt = match Db::master(s, pg::DEADLINE).await {
            Ok(db) => match pg::master_view(&db, &s.slot(), None).await {
                Ok(view) => match db.row("SELECT pg_is_in_recovery()", &[]).await {
                    Ok(r) => Ok((db, view, r.get::<_, bool>(0))),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let why = match attempt {
            // The record's holder still promoting (just after a switchover or a failover): its
            // timeline and history are not yet the ones to copy, follow or be rewound to.
            Ok((_, _, true)) => "it is still in recovery: a promotion under way".to_string(),
            Ok((db, view, false)) => {
                let found = (db, view);
                if last_logged.is_some() {
                    crate::info!(
                        "the master {}:{} answers (database system {})",
                        s.env.master_host,
                        s.env.master_port,
                        found.1.system_identifier
                    );
                }
                return Ok(found);
            }
            Err(e) => e.to_string(),
        };
        let delay = next_master_look(started.elapsed(), last_delay);
        if started.elapsed() + delay > s.master_wait() {
            return Err(Error::MasterTimeout {
                host: s.env.master_host.clone(),
                port: s.env.master_port,
                secs: s.master_wait().as_secs(),
                var: contract::env::MASTER_WAIT_TIMEOUT,
            });
        }
        let log_now = match &last_logged {
            Some((text, at)) => *text != why || at.elapsed() >= Duration::from_secs(30),
            None => true,
        };
        if log_now {
            crate::info!(
                "waiting for the master {}:{} ({why})",
                s.env.master_host,
                s.env.master_port
            );
            last_logged = Some((why, Instant::now()));
        }
        tokio::time::sleep(delay).await;
        last_delay = Some(delay);
    }
}

/// An initialisation over a cluster that had data, on the opt-in `allowReinit`: the system
/// identifier (or [`contract::record::UNKNOWN_SYSTEM`]) it replaces, recorded before initdb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reinit {
    /// What the new database replaces.
    pub replaced: String,
}

/// Before an initdb. In a cluster the record must exist, be readable and say "new cluster, no
/// data yet"; a record with data (or data expected) allows one initialisation on the opt-in,
/// once. In local mode the sibling directories are the evidence (checked by
/// [`bootstrap::inspect`]), and local mode's record file keeps that the opt-in was used.
/// `Some` when this initdb uses the opt-in.
fn check_record_before_initdb(
    s: &Settings,
    me: &MemberRef,
    record: Option<&Result<Option<ClusterRecord>>>,
) -> Result<Option<Reinit>> {
    let name = crate::kube_api::record_name(&s.env.cluster);
    let refuse = |problem: String| Error::Refused {
        path: s.pgdata(),
        problem,
    };
    let deploy = format!("{} deploy", contract::program_name());
    let ns = s.namespace().unwrap_or("default");
    let r = match record {
        None => return check_local_reinit(s, me),
        Some(Err(e)) => {
            return Err(refuse(format!(
                "the master's data directory is empty and the cluster record (ConfigMap {name}) \
                 cannot be read ({e}), so nothing proves the cluster never had data; initdb waits \
                 until the record can be read"
            )));
        }
        Some(Ok(None)) => {
            return Err(refuse(format!(
                "the master's data directory is empty and the cluster record (ConfigMap {name}) \
                 does not exist, so nothing proves the cluster never had data; run `{deploy}`: it \
                 makes the record again from what the cluster's Secret, pods and claims prove \
                 (never as a new cluster over one that existed)"
            )));
        }
        Some(Ok(Some(r))) => r,
    };
    if r.deleting {
        crate::warn!(
            "the cluster record {name} is being deleted; its finalizer keeps it and it still \
             counts (only `down --purge --yes` removes it)"
        );
    }
    let how = format!(
        "remove the record's key {k}: kubectl -n {ns} patch configmap {name} --type json -p \
         '[{{\"op\":\"remove\",\"path\":\"/data/{k}\"}}]'",
        k = contract::record::REINIT_REPLACED
    );
    let replaced = match r.data() {
        // Sibling directories with data beside a "new" record (inspect let the initdb through
        // on the opt-in only): the opt-in is used all the same.
        RecordData::New if !bootstrap::data_evidence(s).is_empty() => {
            let replaced = sibling_systems(s, me);
            reinit_allowed(s, r, &replaced, &format!("ConfigMap {name}"), &how)?;
            return Ok(Some(Reinit { replaced }));
        }
        RecordData::New => return Ok(None),
        RecordData::Unknown => {
            return Err(refuse(format!(
                "the master's data directory is empty and the cluster record (ConfigMap {name}) \
                 says nothing of the cluster's data (no `{}` key), so nothing proves the cluster \
                 never had data; run `{deploy}` (it fills the record from what the cluster's \
                 Secret, pods and claims prove), or, only if this cluster never had data, set the \
                 key: kubectl -n {ns} patch configmap {name} --type merge -p \
                 '{{\"data\":{{\"{}\":\"{}\"}}}}'",
                contract::record::STATE,
                contract::record::STATE,
                contract::record::STATE_NEW
            )));
        }
        RecordData::Data(id) if !s.env.allow_reinit => {
            let other = if r.cluster_id.is_empty() || r.cluster_id == me.cluster_id {
                String::new()
            } else {
                format!(
                    " (of cluster id {}, while the Secret says {}: was the Secret made anew?)",
                    r.cluster_id, me.cluster_id
                )
            };
            return Err(refuse(format!(
                "the master's data directory is missing but the cluster record (ConfigMap {name}) \
                 says this cluster initialised database system {id}{other}; an empty master would \
                 replace the cluster's database. Restore the master's volume (was its claim or \
                 PersistentVolume replaced?); to start a new, empty database on purpose set {}=true \
                 (spec: postgres.allowReinit)",
                contract::env::ALLOW_REINIT
            )));
        }
        RecordData::DataExpected if !s.env.allow_reinit => {
            return Err(refuse(format!(
                "the master's data directory is missing but the cluster record (ConfigMap {name}) \
                 says this cluster has data (state {}: rebuilt from the cluster's Secret, pods or \
                 claims; its system identifier is unknown); an empty master would replace the \
                 cluster's database. Restore the master's volume (was its claim or \
                 PersistentVolume replaced?); to start a new, empty database on purpose set {}=true \
                 (spec: postgres.allowReinit)",
                contract::record::STATE_DATA_EXPECTED,
                contract::env::ALLOW_REINIT
            )));
        }
        RecordData::Data(id) => id.to_string(),
        RecordData::DataExpected => contract::record::UNKNOWN_SYSTEM.to_string(),
    };
    reinit_allowed(s, r, &replaced, &format!("ConfigMap {name}"), &how)?;
    crate::warn!(
        "initialising a new database although the record {name} says this cluster has data \
         (database system {replaced}); {} is set, and is used once",
        contract::env::ALLOW_REINIT
    );
    Ok(Some(Reinit { replaced }))
}

/// The opt-in allows one initialisation: none was recorded, or the recorded one replaced this
/// same system and never finished (a retry of it).
fn reinit_allowed(
    s: &Settings,
    r: &ClusterRecord,
    replaced: &str,
    kept_in: &str,
    how: &str,
) -> Result<()> {
    let Some(previous) = &r.reinit_replaced else {
        return Ok(());
    };
    if r.reinit_system_identifier.is_none() && previous == replaced {
        return Ok(());
    }
    Err(Error::Refused {
        path: s.pgdata(),
        problem: format!(
            "the master's data directory is missing and {} (spec: postgres.allowReinit) was \
             already used: it initialised database system {} in place of {previous} (recorded in \
             {kept_in}); the opt-in allows one initialisation, so it does not start another empty \
             database although it is still set. Restore the master's data; to initialise anew \
             once more on purpose, {how}",
            contract::env::ALLOW_REINIT,
            r.reinit_system_identifier
                .as_deref()
                .unwrap_or("(not finished)"),
        ),
    })
}

/// Local mode: the sibling directories are the evidence of data ([`bootstrap::data_evidence`];
/// without the opt-in [`bootstrap::inspect`] already refused), and the record file in the
/// data root keeps that the opt-in was used.
fn check_local_reinit(s: &Settings, me: &MemberRef) -> Result<Option<Reinit>> {
    if bootstrap::data_evidence(s).is_empty() {
        return Ok(None);
    }
    let replaced = sibling_systems(s, me);
    let file = local_record_path(s);
    let how = format!(
        "remove the key {} from {} (or the file)",
        contract::record::REINIT_REPLACED,
        file.display()
    );
    reinit_allowed(
        s,
        &read_local_record(s)?,
        &replaced,
        &file.display().to_string(),
        &how,
    )?;
    Ok(Some(Reinit { replaced }))
}

/// The database systems this cluster's other members' directories record, sorted and joined
/// with `,` ([`contract::record::UNKNOWN_SYSTEM`] when none records one).
fn sibling_systems(s: &Settings, me: &MemberRef) -> String {
    let mut systems: Vec<String> = bootstrap::recorded_systems(s, me)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    systems.sort();
    systems.dedup();
    if systems.is_empty() {
        contract::record::UNKNOWN_SYSTEM.to_string()
    } else {
        systems.join(",")
    }
}

/// Local mode's record file ([`contract::record::LOCAL_FILE`] in the data root).
fn local_record_path(s: &Settings) -> PathBuf {
    s.env.data_root.join(contract::record::LOCAL_FILE)
}

/// The local record file's keys (none when the file does not exist; an unreadable file
/// refuses: it may say the opt-in was used).
fn local_record_data(s: &Settings) -> Result<std::collections::BTreeMap<String, String>> {
    let path = local_record_path(s);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Refused {
            path: path.clone(),
            problem: format!(
                "the local cluster record cannot be read ({e}); it keeps whether {} was used, so \
                 nothing is initialised until it is valid JSON of string keys",
                contract::env::ALLOW_REINIT
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(crate::io_err(format!("read {}", path.display()))(e)),
    }
}

fn read_local_record(s: &Settings) -> Result<ClusterRecord> {
    Ok(ClusterRecord::from_data(&local_record_data(s)?, false))
}

/// Sets (or, with `None`, removes) keys of the local record file.
fn write_local_record(s: &Settings, entries: &[(&str, Option<&str>)]) -> Result<()> {
    let mut data = local_record_data(s)?;
    for (k, v) in entries {
        match v {
            Some(v) => data.insert(k.to_string(), v.to_string()),
            None => data.remove(*k),
        };
    }
    let text = serde_json::to_string_pretty(&data)
        .map_err(|e| Error::Failed(format!("the local cluster record: {e}")))?
        + "\n";
    datadir::write_atomic(&local_record_path(s), text.as_bytes(), 0o600).map(drop)
}

/// Records, before the initdb, that the opt-in is used in place of `reinit.replaced` (and that
/// this initialisation has not finished). No initdb runs when it cannot be recorded.
async fn mark_reinit(s: &Settings, api: Option<&PodApi>, reinit: &Reinit) -> Result<()> {
    let entries = [
        (
            contract::record::REINIT_REPLACED,
            Some(reinit.replaced.as_str()),
        ),
        (contract::record::REINIT_SYSTEM_IDENTIFIER, None),
    ];
    let written = match api {
        Some(api) => api.write_cluster_record(&entries).await,
        None => write_local_record(s, &entries),
    };
    written.map_err(|e| Error::Refused {
        path: s.pgdata(),
        problem: format!(
            "{} is set, but that it is used cannot be recorded ({e}); no new database is made \
             until it can be",
            contract::env::ALLOW_REINIT
        ),
    })
}

/// After the master's data is in place: fills the cluster record with its database system
/// when the record does not say it yet (new, data expected, no state), after an
/// initialisation, and when an initialisation on the opt-in finished (then also
/// [`contract::record::REINIT_SYSTEM_IDENTIFIER`]); a record that names another system is
/// reported, not overwritten. Local mode keeps only the opt-in's use, in its record file.
async fn keep_record(
    s: &Settings,
    me: &MemberRef,
    api: Option<&PodApi>,
    plan: Plan,
    record: Option<&Result<Option<ClusterRecord>>>,
    reinit: Option<&Reinit>,
) {
    let Ok(own) = identity::control_system_identifier(&s.pgdata()) else {
        return;
    };
    let own = own.to_string();
    let Some(api) = api else {
        let pending = read_local_record(s)
            .is_ok_and(|r| r.reinit_replaced.is_some() && r.reinit_system_identifier.is_none());
        if reinit.is_some() || pending {
            let entries = [(
                contract::record::REINIT_SYSTEM_IDENTIFIER,
                Some(own.as_str()),
            )];
            if let Err(e) = write_local_record(s, &entries) {
                crate::warn!("writing the local cluster record: {e}");
            }
        }
        return;
    };
    let name = crate::kube_api::record_name(&s.env.cluster);
    let r = match record {
        Some(Ok(Some(r))) => r,
        Some(Ok(None)) => {
            crate::warn!(
                "the cluster record {name} does not exist; `{} deploy` makes it again",
                contract::program_name()
            );
            return;
        }
        _ => return,
    };
    let pending = r.reinit_replaced.is_some() && r.reinit_system_identifier.is_none();
    let finished_reinit = reinit.is_some() || (plan == Plan::Existing && pending);
    let write = match r.data() {
        _ if plan == Plan::Initdb || finished_reinit => true,
        RecordData::Data(id) if id == own => false,
        RecordData::Data(id) => {
            crate::warn!(
                "the cluster record says database system {id} (cluster id {}) but the master's \
                 data is {own}; left as it is: new replicas will refuse to copy this master until \
                 it is resolved",
                r.cluster_id
            );
            false
        }
        _ if !r.cluster_id.is_empty() && r.cluster_id != me.cluster_id => {
            crate::warn!(
                "the cluster record {name} names cluster id {} but this member's is {}; left as \
                 it is",
                r.cluster_id,
                me.cluster_id
            );
            false
        }
        RecordData::New | RecordData::DataExpected | RecordData::Unknown => true,
    };
    if !write {
        return;
    }
    let mut entries = vec![
        (contract::record::STATE, Some(contract::record::STATE_DATA)),
        (contract::record::SYSTEM_IDENTIFIER, Some(own.as_str())),
        (contract::record::CLUSTER_ID, Some(me.cluster_id.as_str())),
    ];
    if finished_reinit {
        entries.push((
            contract::record::REINIT_SYSTEM_IDENTIFIER,
            Some(own.as_str()),
        ));
    }
    match api.write_cluster_record(&entries).await {
        Ok(()) => crate::info!("recorded database system {own} in the cluster record {name}"),
        Err(e) => crate::warn!("writing the cluster record: {e}"),
    }
}

/// Publishes this member's data identity on its pod, for `deploy` to rebuild a lost record.
async fn publish_identity(s: &Settings, me: &MemberRef, api: &PodApi) {
    let Ok(own) = identity::control_system_identifier(&s.pgdata()) else {
        return;
    };
    if let Err(e) = api
        .publish_identity(&s.pod_name, &me.cluster_id, &own.to_string())
        .await
    {
        crate::warn!("publishing the data identity on the pod: {e}");
    }
}

/// A replica checks whom it follows: its own data must be the master's database system, and
/// its history the master's (data that diverged is kept and rewound, or copied anew when the
/// rewind cannot run); a new copy must come from the system this cluster's members (and its
/// record) recorded.
async fn check_master(
    s: &Settings,
    bin: &PgBin,
    me: &MemberRef,
    plan: Plan,
    view: &MasterView,
    record: Option<&ClusterRecord>,
) -> Result<Plan> {
    let master = view.system_identifier.to_string();
    match plan {
        Plan::Existing => {
            let own = identity::control_system_identifier(&s.pgdata())?;
            if own == view.system_identifier {
                return rejoin(s, bin, me, view).await;
            }
            if s.env.allow_reinit {
                let kept = set_aside(s, me, view.database_bytes)?;
                crate::warn!(
                    "the master is database system {master}, this replica's data is {own}; {} is \
                     set: the old data is kept at {} and the master is copied",
                    contract::env::ALLOW_REINIT,
                    kept.display()
                );
                return Ok(Plan::BaseBackup);
            }
            Err(Error::Refused {
                path: s.pgdata(),
                problem: format!(
                    "the master {}:{} is database system {master} but this replica's data is \
                     {own}: the master was initialised anew or belongs to another cluster. The \
                     replica does not follow it and keeps its data; restore the master's data, or, \
                     if the new master is intended, set {}=true (spec: postgres.allowReinit) to \
                     copy it (this directory is then kept aside)",
                    s.env.master_host,
                    s.env.master_port,
                    contract::env::ALLOW_REINIT
                ),
            })
        }
        Plan::BaseBackup => {
            let mut recorded = bootstrap::recorded_systems(s, me);
            if let Some(r) = record {
                recorded.push((
                    format!("ConfigMap {}", crate::kube_api::record_name(&s.env.cluster)),
                    r.system_identifier.clone().unwrap_or_default(),
                ));
            }
            if recorded.is_empty()
                || recorded.iter().any(|(_, id)| *id == master)
                || s.env.allow_reinit
            {
                return Ok(Plan::BaseBackup);
            }
            let seen: Vec<String> = recorded
                .iter()
                .map(|(member, id)| format!("{member}: {id}"))
                .collect();
            Err(Error::Refused {
                path: s.env.data_root.clone(),
                problem: format!(
                    "the master is database system {master} but this cluster's members recorded \
                     {}; copying it would join a different database. Restore the master's data, or \
                     set {}=true (spec: postgres.allowReinit) if the new master is intended",
                    seen.join(", "),
                    contract::env::ALLOW_REINIT
                ),
            })
        }
        Plan::Initdb => Ok(plan),
    }
}

/// A replica on the master's database system, postgres stopped: when its history parted from
/// the master's, what it wrote after the fork is kept and it is rewound (`Plan::Existing`); when
/// the rewind cannot run, its data is set aside (marked with what it holds) for a new copy
/// (`Plan::BaseBackup`).
async fn rejoin(s: &Settings, bin: &PgBin, me: &MemberRef, view: &MasterView) -> Result<Plan> {
    let needed_bytes = view.database_bytes;
    match crate::rewind::rejoin(s, bin).await? {
        Rejoin::NotDiverged | Rejoin::Rewound(_) => Ok(Plan::Existing),
        // Postgres tries to follow; a divergence it meets is judged again before any copy.
        Rejoin::Unknown(why) => {
            crate::warn!(
                "the master's timeline history is not readable ({why}); starting without \
                 judging whether this member's history parted from it"
            );
            Ok(Plan::Existing)
        }
        Rejoin::Failed { reason, kept } => {
            crate::warn!("{reason}");
            let set_aside_to = set_aside(s, me, needed_bytes)?;
            crate::warn!(
                "the rewind could not run: this member's data is kept at {}{} and the master is \
                 copied again",
                set_aside_to.display(),
                kept.map(|k| format!(", its WAL after the fork at {}", k.path.display()))
                    .unwrap_or_default()
            );
            Ok(Plan::BaseBackup)
        }
    }
}

/// Before a copy, this replica's slot on the master must exist and hold WAL (an invalidated one
/// is dropped and made anew); on an existing replica a missing slot is made.
async fn prepare_slot(db: &Db, s: &Settings, plan: Plan, view: &MasterView) -> Result<()> {
    let slot = s.slot();
    if plan == Plan::BaseBackup && view.slot_wal_status.as_deref() == Some("lost") {
        pg::drop_idle_slot(db, &slot).await?;
        crate::info!("dropped the invalidated slot {slot} before a new copy");
    }
    if plan == Plan::Existing && view.slot_wal_status.as_deref() == Some("lost") {
        return Ok(());
    }
    if pg::ensure_slot(db, &slot).await? {
        crate::info!("created replication slot {slot} on the master (WAL reserved)");
    }
    Ok(())
}

/// Room a new copy needs beyond the master's databases: WAL written while it runs, and margin.
const COPY_MARGIN_BYTES: u64 = 256 << 20;

/// Keeps this member's data aside as `<pod>.previous` before a new copy, replacing an older
/// kept copy of this same member (at most one per member). Refuses, changing nothing, when the
/// older copy is not provably this member's or when the data root has no room for a new copy.
pub fn set_aside(s: &Settings, me: &MemberRef, needed_bytes: i64) -> Result<PathBuf> {
    let pgdata = s.pgdata();
    let previous = s.previous_dir();
    if let Some(d) = crate::rewind::read_diverged(&previous.join(crate::rewind::DIVERGED_MARK))
        && d.bytes_after_fork > 0
    {
        return Err(Error::Refused {
            path: previous.clone(),
            problem: format!(
                "a new copy of the master would replace this kept copy, but it holds {} bytes of \
                 WAL written after the fork at {} that the cluster does not have; nothing was \
                 moved. Look at it, then remove it (rm -r {}) and restart the member",
                d.bytes_after_fork,
                d.fork_lsn,
                previous.display()
            ),
        });
    }
    let previous_bytes = if previous.exists() {
        match identity::read(&previous)? {
            Some(id) if id.cluster_id == me.cluster_id && id.member == me.member => {
                datadir::tree_size(&previous)
            }
            other => {
                return Err(Error::Refused {
                    path: previous.clone(),
                    problem: format!(
                        "a new copy of the master would replace this kept copy, but it is {}; \
                         move it away (pgset keeps one copy per member and deletes only its own)",
                        match other {
                            Some(id) => format!("member {} of {}", id.member, id.owner()),
                            None => "not marked as this member's".into(),
                        }
                    ),
                });
            }
        }
    } else {
        0
    };
    let free = datadir::free_bytes(&s.env.data_root)?;
    let need = (needed_bytes.max(0) as u64).saturating_mul(11) / 10 + COPY_MARGIN_BYTES;
    if free + previous_bytes < need {
        return Err(Error::Refused {
            path: pgdata,
            problem: format!(
                "a new copy of the master needs about {} MiB but the data root has {} MiB free \
                 (plus {} MiB once the older kept copy is replaced); nothing was moved. Free space \
                 on the volume, then restart the member",
                need >> 20,
                free >> 20,
                previous_bytes >> 20
            ),
        });
    }
    if previous.exists() {
        crate::info!(
            "removing the older kept copy {} of this member ({} MiB) to keep only one",
            previous.display(),
            previous_bytes >> 20
        );
        std::fs::remove_dir_all(&previous).map_err(crate::io_err(format!(
            "remove the older kept copy {}",
            previous.display()
        )))?;
    }
    std::fs::rename(&pgdata, &previous).map_err(crate::io_err(format!(
        "move {} aside to {}",
        pgdata.display(),
        previous.display()
    )))?;
    Ok(previous)
}

/// Where a fatal error is written for the pod status: PGSET_TERMINATION_LOG, else the
/// container's termination-message path in a pod.
pub fn termination_log_path() -> Option<PathBuf> {
    contract::agent_env::termination_log_from_lookup(|k| std::env::var(k).ok())
}

/// Writes the message to the termination log, if any, as one line: the pod status and `status`
/// show it as the member's last word, so a multi-line text (a command's stderr tail) is joined
/// with ` | ` and cut at [`TERMINATION_MESSAGE_MAX`] bytes (Kubernetes keeps 4 KiB).
pub fn write_termination_log(path: &Path, message: &str) {
    let _ = std::fs::write(path, one_line(message) + "\n");
}

/// The most a termination message keeps, in bytes.
pub const TERMINATION_MESSAGE_MAX: usize = 1024;

/// `text` as one line of at most [`TERMINATION_MESSAGE_MAX`] bytes: its non-empty lines,
/// trimmed, joined with ` | `.
pub fn one_line(text: &str) -> String {
    let mut line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if line.len() > TERMINATION_MESSAGE_MAX {
        let mut cut = TERMINATION_MESSAGE_MAX - 3;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

/// The env-contract variables, for `--help`.
pub fn env_help() -> String {
    contract::env::ALL.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> (Settings, MemberRef) {
        let m = crate::settings::tests::sample_env("pgset-0");
        let s = Settings::from_lookup(|k| m.get(k).cloned()).unwrap();
        let me = MemberRef {
            namespace: "local".into(),
            cluster: "pgset".into(),
            cluster_id: "c1".into(),
            member: "pgset-0".into(),
        };
        (s, me)
    }

    fn record(id: &str) -> ClusterRecord {
        ClusterRecord {
            system_identifier: Some("42".into()),
            cluster_id: id.into(),
            state: Some(contract::record::STATE_DATA.into()),
            ..ClusterRecord::default()
        }
    }

    fn state(value: &str) -> ClusterRecord {
        ClusterRecord {
            state: Some(value.into()),
            cluster_id: "c1".into(),
            ..ClusterRecord::default()
        }
    }

    fn refused(s: &Settings, me: &MemberRef, r: Result<Option<ClusterRecord>>) -> String {
        check_record_before_initdb(s, me, Some(&r))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn initdb_only_where_the_record_says_new_cluster_no_data_yet() {
        let (s, me) = master();
        assert_eq!(check_record_before_initdb(&s, &me, None).unwrap(), None);
        let new = state(contract::record::STATE_NEW);
        assert_eq!(
            check_record_before_initdb(&s, &me, Some(&Ok(Some(new.clone())))).unwrap(),
            None
        );
        // A missing record is never "empty".
        let e = refused(&s, &me, Ok(None));
        assert!(e.contains("does not exist") && e.contains("deploy`"), "{e}");
        // Nor is a record that says nothing.
        let e = refused(&s, &me, Ok(Some(ClusterRecord::default())));
        assert!(
            e.contains("no `state` key")
                && e.contains(r#"kubectl -n default patch configmap pgset-record --type merge -p '{"data":{"state":"new"}}'"#),
            "{e}"
        );
        let e = refused(&s, &me, Ok(Some(record("c1"))));
        assert!(
            e.contains("initialised database system 42") && e.contains("PGSET_ALLOW_REINIT"),
            "{e}"
        );
        // Data of another cluster id is data too (the Secret was made anew).
        let e = refused(&s, &me, Ok(Some(record("other"))));
        assert!(e.contains("was the Secret made anew"), "{e}");
        let e = refused(
            &s,
            &me,
            Ok(Some(state(contract::record::STATE_DATA_EXPECTED))),
        );
        assert!(
            e.contains("data-expected") && e.contains("PGSET_ALLOW_REINIT"),
            "{e}"
        );
        // A record being deleted still counts, both ways.
        let mut deleting = record("c1");
        deleting.deleting = true;
        assert!(refused(&s, &me, Ok(Some(deleting))).contains("database system 42"));
        let mut deleting = new;
        deleting.deleting = true;
        assert!(check_record_before_initdb(&s, &me, Some(&Ok(Some(deleting)))).is_ok());
        let e = refused(&s, &me, Err(Error::Kube("forbidden".into())));
        assert!(
            e.contains("cannot be read (Kubernetes API: forbidden)"),
            "{e}"
        );
    }

    #[test]
    fn the_opt_in_allows_one_initialisation_and_says_how_to_allow_another() {
        let (mut s, me) = master();
        s.env.allow_reinit = true;
        let allowed = |r: ClusterRecord| check_record_before_initdb(&s, &me, Some(&Ok(Some(r))));
        assert_eq!(
            allowed(record("c1")).unwrap(),
            Some(Reinit {
                replaced: "42".into()
            })
        );
        assert_eq!(
            allowed(state(contract::record::STATE_DATA_EXPECTED)).unwrap(),
            Some(Reinit {
                replaced: contract::record::UNKNOWN_SYSTEM.into()
            })
        );
        // A retry of the same initialisation (it never finished) is the same use.
        let mut retry = record("c1");
        retry.reinit_replaced = Some("42".into());
        assert!(allowed(retry.clone()).unwrap().is_some());
        // Once it made a system, the opt-in is used up, although it is still set.
        let mut used = record("c1");
        used.system_identifier = Some("43".into());
        used.reinit_replaced = Some("42".into());
        used.reinit_system_identifier = Some("43".into());
        let e = allowed(used).unwrap_err().to_string();
        assert!(
            e.contains("was already used: it initialised database system 43 in place of 42")
                && e.contains("kubectl -n default patch configmap pgset-record --type json")
                && e.contains("/data/reinitReplaced"),
            "{e}"
        );
        // A marker that replaced another system than the record now names: used too.
        retry.system_identifier = Some("43".into());
        assert!(allowed(retry).is_err());
    }

    #[test]
    fn siblings_with_data_beside_a_new_record_use_the_opt_in_too() {
        let root = tempfile::tempdir().unwrap();
        let (mut s, me) = master();
        s.env.data_root = root.path().to_path_buf();
        std::fs::create_dir_all(root.path().join("pgset-1")).unwrap();
        std::fs::write(root.path().join("pgset-1/PG_VERSION"), "15\n").unwrap();
        s.env.allow_reinit = true;
        let new = state(contract::record::STATE_NEW);
        assert_eq!(
            check_record_before_initdb(&s, &me, Some(&Ok(Some(new.clone())))).unwrap(),
            Some(Reinit {
                replaced: contract::record::UNKNOWN_SYSTEM.into()
            })
        );
        let mut used = new;
        used.reinit_replaced = Some("41".into());
        used.reinit_system_identifier = Some("42".into());
        assert!(check_record_before_initdb(&s, &me, Some(&Ok(Some(used)))).is_err());
    }

    #[test]
    fn local_mode_keeps_the_opt_ins_use_in_its_record_file() {
        let root = tempfile::tempdir().unwrap();
        let (mut s, me) = master();
        s.env.data_root = root.path().to_path_buf();
        // A sibling with data: the evidence local mode has.
        std::fs::create_dir_all(root.path().join("pgset-1")).unwrap();
        std::fs::write(root.path().join("pgset-1/PG_VERSION"), "15\n").unwrap();
        s.env.allow_reinit = true;
        let first = check_record_before_initdb(&s, &me, None)
            .unwrap()
            .expect("the opt-in is used");
        let entries = [
            (
                contract::record::REINIT_REPLACED,
                Some(first.replaced.as_str()),
            ),
            (contract::record::REINIT_SYSTEM_IDENTIFIER, None),
        ];
        write_local_record(&s, &entries).unwrap();
        assert!(check_record_before_initdb(&s, &me, None).is_ok(), "a retry");
        write_local_record(
            &s,
            &[(contract::record::REINIT_SYSTEM_IDENTIFIER, Some("43"))],
        )
        .unwrap();
        let e = check_record_before_initdb(&s, &me, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already used") && e.contains("pgset-record.json"),
            "{e}"
        );
        std::fs::write(root.path().join(contract::record::LOCAL_FILE), "not json").unwrap();
        let e = check_record_before_initdb(&s, &me, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }

    /// The calls a mock API server saw: method, path, body.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, serde_json::Value)>>>;

    /// A PodApi whose calls are recorded and answered with an empty ConfigMap.
    fn recording_api() -> (PodApi, Seen) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                record.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.path().to_string(),
                    serde_json::from_slice(&bytes).unwrap_or_default(),
                ));
                send.send_response(
                    Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(Body::from(
                            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#.to_vec(),
                        ))
                        .unwrap(),
                );
            }
        });
        (
            PodApi::with_client(kube::Client::new(service, "db"), "db", "pgset"),
            seen,
        )
    }

    /// A master whose data directory holds a pg_control of system `sysid`.
    fn master_with_data(sysid: u64) -> (tempfile::TempDir, Settings, MemberRef) {
        let root = tempfile::tempdir().unwrap();
        let (mut s, me) = master();
        s.env.data_root = root.path().to_path_buf();
        std::fs::create_dir_all(s.pgdata().join("global")).unwrap();
        std::fs::write(s.pgdata().join("global/pg_control"), sysid.to_ne_bytes()).unwrap();
        (root, s, me)
    }

    #[tokio::test]
    async fn a_master_on_its_own_data_fills_in_a_record_that_expected_data() {
        let (_root, s, me) = master_with_data(7300);
        let (api, seen) = recording_api();
        let expected = state(contract::record::STATE_DATA_EXPECTED);
        keep_record(
            &s,
            &me,
            Some(&api),
            Plan::Existing,
            Some(&Ok(Some(expected))),
            None,
        )
        .await;
        // A record that already says so is not written again.
        let mut same = record("c1");
        same.system_identifier = Some("7300".into());
        keep_record(
            &s,
            &me,
            Some(&api),
            Plan::Existing,
            Some(&Ok(Some(same))),
            None,
        )
        .await;
        // Nor is one that names another system (reported instead).
        keep_record(
            &s,
            &me,
            Some(&api),
            Plan::Existing,
            Some(&Ok(Some(record("c1")))),
            None,
        )
        .await;
        let calls = seen.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].0, "PATCH");
        assert_eq!(calls[0].1, "/api/v1/namespaces/db/configmaps/pgset-record");
        assert_eq!(
            calls[0].2,
            serde_json::json!({"data": {"state": "data", "systemIdentifier": "7300", "clusterId": "c1"}})
        );
    }

    #[tokio::test]
    async fn an_initialisation_on_the_opt_in_records_what_it_replaced_and_what_it_made() {
        let (_root, mut s, me) = master_with_data(7301);
        s.env.allow_reinit = true;
        let (api, seen) = recording_api();
        let reinit = check_record_before_initdb(&s, &me, Some(&Ok(Some(record("c1")))))
            .unwrap()
            .unwrap();
        mark_reinit(&s, Some(&api), &reinit).await.unwrap();
        keep_record(
            &s,
            &me,
            Some(&api),
            Plan::Initdb,
            Some(&Ok(Some(record("c1")))),
            Some(&reinit),
        )
        .await;
        let calls = seen.lock().unwrap().clone();
        assert_eq!(
            calls.iter().map(|c| c.2.clone()).collect::<Vec<_>>(),
            [
                serde_json::json!({"data": {"reinitReplaced": "42", "reinitSystemIdentifier": null}}),
                serde_json::json!({"data": {"state": "data", "systemIdentifier": "7301",
                                            "clusterId": "c1", "reinitSystemIdentifier": "7301"}}),
            ]
        );
        // An initialisation whose result was never recorded is completed at the next start.
        seen.lock().unwrap().clear();
        let mut pending = record("c1");
        pending.reinit_replaced = Some("42".into());
        keep_record(
            &s,
            &me,
            Some(&api),
            Plan::Existing,
            Some(&Ok(Some(pending))),
            None,
        )
        .await;
        let calls = seen.lock().unwrap().clone();
        assert_eq!(calls[0].2["data"]["reinitSystemIdentifier"], "7301");
    }

    /// A directory of stand-in PostgreSQL binaries whose `postgres -V` prints `version`.
    fn binaries(version: &str) -> (tempfile::TempDir, PgBin) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for tool in [
            "initdb",
            "postgres",
            "pg_basebackup",
            "pg_isready",
            "psql",
            "pg_receivewal",
        ] {
            let path = dir.path().join(tool);
            std::fs::write(&path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let bin = PgBin::find(Some(dir.path())).unwrap();
        (dir, bin)
    }

    #[tokio::test]
    async fn the_version_asked_at_start_refuses_an_unsupported_major_and_is_asked_once() {
        let (_dir, bin) = binaries("postgres (PostgreSQL) 12.20");
        let e = MajorCheck::start(&bin)
            .confirmed(&bin)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("PostgreSQL 12 is not supported"), "{e}");

        let (dir, bin) = binaries("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)");
        let check = MajorCheck::start(&bin);
        assert_eq!(check.confirmed(&bin).await.unwrap(), 15);
        // Confirmed once: a second confirmation (after a switchover) runs nothing.
        std::fs::remove_file(dir.path().join("postgres")).unwrap();
        assert_eq!(check.confirmed(&bin).await.unwrap(), 15);
    }

    #[test]
    fn a_replica_looks_for_its_master_every_100_ms_for_30_s_then_backs_off_to_1_s() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        assert_eq!(next_master_look(s(0), None), ms(100));
        assert_eq!(next_master_look(ms(2500), Some(ms(100))), ms(100));
        assert_eq!(next_master_look(s(29), Some(ms(100))), ms(100));
        assert_eq!(next_master_look(s(30), Some(ms(100))), ms(200));
        assert_eq!(next_master_look(s(31), Some(ms(200))), ms(400));
        assert_eq!(next_master_look(s(32), Some(ms(800))), s(1));
        assert_eq!(next_master_look(s(300), Some(s(1))), s(1));
    }

    #[test]
    fn the_termination_message_is_one_bounded_line() {
        assert_eq!(
            one_line("pg_basebackup failed\n  FATAL: no pg_hba entry\n\n  detail\n"),
            "pg_basebackup failed | FATAL: no pg_hba entry | detail"
        );
        let long = "é".repeat(TERMINATION_MESSAGE_MAX);
        let cut = one_line(&long);
        assert!(
            cut.len() <= TERMINATION_MESSAGE_MAX && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        write_termination_log(&path, "a\nb");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a | b\n");
    }
}
