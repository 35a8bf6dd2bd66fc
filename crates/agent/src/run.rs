//! `pgset-agent run`: settings from the env contract, the postgres user, the supported major,
//! the health endpoint, the data directory's identity checks, the master's identity for a
//! replica, then supervising postgres until it exits (or copying again when PostgreSQL's state
//! says the replica can no longer follow, keeping at most one older copy).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgset_spec::contract::{self, AgentMode, MemberPhase};

use crate::bootstrap::{self, Plan};
use crate::datadir;
use crate::fence::{Fence, FenceOptions, StalePid, StaleSocketLock};
use crate::health::{self, Health};
use crate::identity::{self, MemberRef};
use crate::kube_api::{ClusterRecord, PodApi};
use crate::pg::{self, Db, MasterView};
use crate::pgbin::PgBin;
use crate::privilege;
use crate::settings::{Role, Settings};
use crate::supervise::{Outcome, ShutdownSignals, supervise};
use crate::{Error, Result, meter, phase};

/// Exit code after a shutdown signal arrived before postgres ran.
const EXIT_SIGTERM: i32 = 143;

/// Runs the member; returns the process exit code.
pub async fn run() -> Result<i32> {
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
    let major = bin.supported_major()?;
    crate::info!("PostgreSQL {major} binaries in {}", bin.dir().display());
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
    let result = run_member(&s, &bin, &me, &health, api.as_ref()).await;
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

/// From the write fence to postgres' exit.
async fn run_member(
    s: &Settings,
    bin: &PgBin,
    me: &MemberRef,
    health: &Arc<Health>,
    api: Option<&PodApi>,
) -> Result<i32> {
    let mut signals = ShutdownSignals::install()?;
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
    crate::info!("holding the write fence: {}", fence.holder_description());
    let pid_file = (s.env.mode == AgentMode::Local).then(|| s.agent_pid_file());
    if let Some(f) = &pid_file {
        datadir::write_atomic(f, format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
    }
    let result = member_loop(s, bin, me, health, api, &mut signals, &fence).await;
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

async fn member_loop(
    s: &Settings,
    bin: &PgBin,
    me: &MemberRef,
    health: &Arc<Health>,
    api: Option<&PodApi>,
    signals: &mut ShutdownSignals,
    fence: &Fence,
) -> Result<i32> {
    loop {
        health.preparing(MemberPhase::Checking, "checking the data directory");
        let (s2, me2) = (s.clone(), me.clone());
        let mut plan = tokio::task::spawn_blocking(move || bootstrap::inspect(&s2, &me2))
            .await
            .map_err(|e| Error::Failed(format!("checking the data directory: {e}")))??;
        // In a cluster the record (ConfigMap `<name>-record`) tells what this cluster's master
        // initialised, also when no sibling directory is in view (templates mode).
        let record = match api {
            Some(api) => Some(api.cluster_record().await),
            None => None,
        };
        if s.role == Role::Master && plan == Plan::Initdb {
            check_record_before_initdb(s, me, record.as_ref())?;
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
                    return Ok(EXIT_SIGTERM);
                }
            };
            let recorded = match &record {
                Some(Ok(Some(r))) if r.cluster_id == me.cluster_id => Some(r.clone()),
                _ => None,
            };
            plan = check_master(s, me, plan, &view, recorded.as_ref())?;
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
                if s.role == Role::Master && let (Some(api), Some(record)) = (api, &record) {
                    keep_record(s, me, api, plan, record).await;
                }
            }
            _ = signals.recv() => {
                crate::info!("shutdown requested while preparing the data directory; stopping the copy");
                for pid in datadir::processes_using(&s.bootstrap_dir()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
                }
                return Ok(EXIT_SIGTERM);
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
            StaleSocketLock::Absent | StaleSocketLock::Removed(_) | StaleSocketLock::Foreign(_) => {
            }
        }
        match supervise(s, bin, health, api, signals, fence).await? {
            Outcome::Exited(code) => return Ok(code),
            Outcome::Reclone {
                reason,
                needed_bytes,
            } => {
                let kept = set_aside(s, me, needed_bytes)?;
                crate::warn!(
                    "{reason}: this member's data is kept at {} and the master is copied again",
                    kept.display()
                );
            }
        }
    }
}

/// Waits until the master answers as the replication role, with backoff and a log line when
/// the reason changes; an error after `s.master_wait`.
async fn wait_for_master(s: &Settings) -> Result<(Db, MasterView)> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut last_logged: Option<(String, Instant)> = None;
    loop {
        let attempt = match Db::master(s, pg::DEADLINE).await {
            Ok(db) => match pg::master_view(&db, &s.slot(), None).await {
                Ok(view) => Ok((db, view)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let why = match attempt {
            Ok(found) => {
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
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Before an initdb in a cluster: the record must be readable (no answer proves nothing) and must
/// not say that this cluster already initialised a database.
fn check_record_before_initdb(
    s: &Settings,
    me: &MemberRef,
    record: Option<&Result<Option<ClusterRecord>>>,
) -> Result<()> {
    let name = crate::kube_api::record_name(&s.env.cluster);
    match record {
        None | Some(Ok(None)) => Ok(()),
        Some(Ok(Some(r))) if r.cluster_id != me.cluster_id || s.env.allow_reinit => {
            if r.cluster_id == me.cluster_id {
                crate::warn!(
                    "initialising a new database although the record {name} says this cluster \
                     initialised database system {}; {} is set",
                    r.system_identifier,
                    contract::env::ALLOW_REINIT
                );
            }
            Ok(())
        }
        Some(Ok(Some(r))) => Err(Error::Refused {
            path: s.pgdata(),
            problem: format!(
                "the master's data directory is missing but the cluster record (ConfigMap {name}) \
                 says this cluster initialised database system {}; an empty master would replace \
                 the cluster's database. Restore the master's volume (was its claim or \
                 PersistentVolume replaced?); to start a new, empty database on purpose set {}=true \
                 (spec: postgres.allowReinit)",
                r.system_identifier,
                contract::env::ALLOW_REINIT
            ),
        }),
        Some(Err(e)) => Err(Error::Refused {
            path: s.pgdata(),
            problem: format!(
                "the master's data directory is empty and the cluster record (ConfigMap {name}) \
                 cannot be read ({e}), so nothing proves the cluster never had data; initdb waits \
                 until the record can be read"
            ),
        }),
    }
}

/// After the master's data is in place: records its database system in the cluster record when
/// the record is empty (or after an initialisation on opt-in); a record that disagrees is
/// reported, not overwritten.
async fn keep_record(
    s: &Settings,
    me: &MemberRef,
    api: &PodApi,
    plan: Plan,
    record: &Result<Option<ClusterRecord>>,
) {
    let Ok(own) = identity::control_system_identifier(&s.pgdata()) else {
        return;
    };
    let ours = ClusterRecord {
        system_identifier: own.to_string(),
        cluster_id: me.cluster_id.clone(),
    };
    let write = match record {
        Ok(None) => true,
        Ok(Some(r)) if *r == ours => false,
        Ok(Some(_)) if plan == Plan::Initdb => true,
        Ok(Some(r)) => {
            crate::warn!(
                "the cluster record says database system {} (cluster id {}) but the master's data \
                 is {own}; left as it is: new replicas will refuse to copy this master until it is \
                 resolved",
                r.system_identifier,
                r.cluster_id
            );
            false
        }
        Err(_) => false,
    };
    if write {
        match api.write_cluster_record(&ours).await {
            Ok(()) => crate::info!(
                "recorded database system {own} in the cluster record {}",
                crate::kube_api::record_name(&s.env.cluster)
            ),
            Err(e) => crate::warn!("writing the cluster record: {e}"),
        }
    }
}

/// A replica checks whom it follows: its own data must be the master's database system; a new
/// copy must come from the system this cluster's members (and its record) recorded.
fn check_master(
    s: &Settings,
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
                return Ok(Plan::Existing);
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
                    r.system_identifier.clone(),
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
            system_identifier: "42".into(),
            cluster_id: id.into(),
        }
    }

    #[test]
    fn initdb_only_where_the_record_proves_the_cluster_never_had_data() {
        let (mut s, me) = master();
        check_record_before_initdb(&s, &me, None).unwrap();
        check_record_before_initdb(&s, &me, Some(&Ok(None))).unwrap();
        check_record_before_initdb(&s, &me, Some(&Ok(Some(record("other"))))).unwrap();
        let e = check_record_before_initdb(&s, &me, Some(&Ok(Some(record("c1")))))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("initialised database system 42") && e.contains("PGSET_ALLOW_REINIT"),
            "{e}"
        );
        let unreadable = Err(Error::Kube("forbidden".into()));
        let e = check_record_before_initdb(&s, &me, Some(&unreadable))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot be read (Kubernetes API: forbidden)"),
            "{e}"
        );
        s.env.allow_reinit = true;
        check_record_before_initdb(&s, &me, Some(&Ok(Some(record("c1"))))).unwrap();
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
