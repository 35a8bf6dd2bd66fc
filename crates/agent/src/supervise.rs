//! Supervising postgres: start it on the prepared PGDATA, forward its log lines, keep the health
//! state current (readiness, the pod's role label, the primary's replication role and slot
//! cleanup), turn SIGTERM/SIGINT into a fast shutdown, and notice a replica whose WAL is gone.

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::Signal as SignalStream;
use tokio::sync::mpsc;

use crate::bootstrap::{ensure_replication_role, local_psql};
use crate::cmd::{self, HostCommand};
use crate::health::Health;
use crate::kube_api::PodApi;
use crate::pgbin::PgBin;
use crate::render::sql_quote;
use crate::settings::{Mode, Role, Settings, member_of_slot};
use crate::{Error, Result};

/// How a postgres run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Postgres exited; the agent exits with this code.
    Exited(i32),
    /// The replica cannot follow the master any more (its WAL is gone): copy again.
    Reclone,
}

/// The shutdown signals the agent forwards.
pub struct ShutdownSignals {
    /// SIGTERM (the kubelet, `local down`).
    pub term: SignalStream,
    /// SIGINT (a terminal).
    pub int: SignalStream,
}

impl ShutdownSignals {
    /// Installs the handlers.
    pub fn install() -> Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let io = |e| Error::Io {
            action: "install signal handlers".into(),
            source: e,
        };
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).map_err(io)?,
            int: signal(SignalKind::interrupt()).map_err(io)?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

enum Event {
    WalGone(String),
    Exited(i32),
}

/// Whether a postgres log line says the standby can no longer get the WAL it needs from the master.
pub fn says_wal_is_gone(line: &str) -> bool {
    (line.contains("requested WAL segment") && line.contains("has already been removed"))
        || line.contains("can no longer get changes from replication slot")
        || (line.contains("replication slot") && line.contains("has been invalidated"))
}

/// Runs postgres until it exits, a shutdown signal is handled, or a re-clone is needed.
pub async fn supervise(
    s: &Settings,
    bin: &PgBin,
    health: &Arc<Health>,
    api: Option<&PodApi>,
    signals: &mut ShutdownSignals,
) -> Result<Outcome> {
    let postgres = bin.command("postgres").arg("-D").arg(s.pgdata());
    let reader = postgres.start_reader()?;
    let pid = *reader.pids().first().ok_or_else(|| Error::Command {
        command: postgres.display(),
        status: "started without a pid".into(),
        stderr: String::new(),
    })?;
    health.set_live(true, "postgres running");
    let (tx, mut rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || forward_log(reader, tx));

    let monitor = tokio::spawn(monitor(
        s.clone(),
        bin.clone(),
        health.clone(),
        api.cloned(),
    ));
    let postmaster = Pid::from_raw(pid as i32);
    let mut stopping = false;
    let mut recloning = false;
    let code = loop {
        tokio::select! {
            _ = signals.recv() => {
                if !stopping {
                    crate::info!("shutdown requested: fast shutdown of postgres (pid {pid})");
                    stopping = true;
                    health.set_ready(false);
                    let _ = kill(postmaster, Signal::SIGINT);
                }
            }
            ev = rx.recv() => match ev {
                Some(Event::WalGone(line)) => {
                    if s.role == Role::Replica && !stopping && !recloning {
                        crate::warn!(
                            "the master no longer has the WAL this replica needs ({}); stopping postgres \
                             to copy the master again; the old data directory is kept aside",
                            line.trim()
                        );
                        recloning = true;
                        health.set_ready(false);
                        let _ = kill(postmaster, Signal::SIGINT);
                    }
                }
                Some(Event::Exited(code)) => break code,
                None => break 1,
            }
        }
    };
    monitor.abort();
    health.set_ready(false);
    health.set_live(false, "postgres exited");
    crate::info!("postgres exited with code {code}");
    Ok(if recloning && !stopping {
        Outcome::Reclone
    } else {
        Outcome::Exited(code)
    })
}

fn forward_log(reader: duct::ReaderHandle, tx: mpsc::UnboundedSender<Event>) {
    let mut lines = std::io::BufReader::new(&reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                eprint!("{line}");
                if !line.ends_with('\n') {
                    eprintln!();
                }
                if says_wal_is_gone(&line) {
                    let _ = tx.send(Event::WalGone(line.into_owned()));
                }
            }
        }
    }
    let code = loop {
        match reader.try_wait() {
            Ok(Some(out)) => break cmd::exit_code(out.status),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break 1,
        }
    };
    let _ = tx.send(Event::Exited(code));
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Runs a query on the member's socket, quietly; `None` when it fails.
async fn query(s: &Settings, bin: &PgBin, sql: &str) -> Option<String> {
    let c: HostCommand = local_psql(s, bin).quiet().arg("-c").arg(sql);
    blocking(move || c.read().ok())
        .await
        .flatten()
        .map(|o| o.trim().to_string())
}

/// Keeps readiness current; labels the pod; on the primary, sets up the replication role and
/// drops the slots of members that are gone.
async fn monitor(s: Settings, bin: PgBin, health: Arc<Health>, api: Option<PodApi>) {
    let mut role_ready = s.role == Role::Replica;
    let mut labelled = api.is_none();
    let mut gone_once = HashSet::new();
    let mut last_label_error: Option<String> = None;
    let mut tick: u64 = 0;
    let slot_check_every = match s.mode {
        Mode::Local => Duration::from_secs(2),
        Mode::Kubernetes => Duration::from_secs(10),
    };
    let mut last_slot_check = std::time::Instant::now();
    loop {
        tick += 1;
        let serving = match s.role {
            Role::Primary => {
                if !role_ready {
                    let (s2, b2) = (s.clone(), bin.clone());
                    match blocking(move || ensure_replication_role(&s2, &b2)).await {
                        Some(Ok(())) => {
                            crate::info!(
                                "replication role `{}` is set up",
                                pgset_spec::contract::REPLICATION_USER
                            );
                            role_ready = true;
                        }
                        Some(Err(e)) if tick.is_multiple_of(40) => {
                            crate::info!("setting up the replication role: {e}")
                        }
                        _ => {}
                    }
                }
                role_ready
                    && query(&s, &bin, "SELECT pg_is_in_recovery()")
                        .await
                        .as_deref()
                        == Some("f")
            }
            Role::Replica => {
                query(&s, &bin, "SELECT status FROM pg_stat_wal_receiver")
                    .await
                    .as_deref()
                    == Some("streaming")
            }
        };
        if serving
            && !labelled
            && let Some(api) = &api
        {
            match api.label_role(&s.pod_name, s.role.label()).await {
                Ok(()) => {
                    crate::info!(
                        "labelled pod {} {}={}",
                        s.pod_name,
                        pgset_spec::contract::labels::ROLE,
                        s.role.label()
                    );
                    labelled = true;
                }
                Err(e) => {
                    // Logged when it changes, not on every retry.
                    let text = e.to_string();
                    if last_label_error.as_deref() != Some(text.as_str()) {
                        crate::warn!("labelling the pod (not ready until it works): {text}");
                        last_label_error = Some(text);
                    }
                }
            }
        }
        health.set_ready(serving && labelled);
        if s.role == Role::Primary && role_ready && last_slot_check.elapsed() >= slot_check_every {
            last_slot_check = std::time::Instant::now();
            drop_slots_of_gone_members(&s, &bin, api.as_ref(), &mut gone_once).await;
        }
        // Until the member serves its role, look often: readiness gates the next member's
        // start (OrderedReady, and local `up`), so every poll interval adds to the rollout.
        let pause = if health.is_ready() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(25)
        };
        tokio::time::sleep(pause).await;
    }
}

/// The members listed in the local membership file; `None` when it cannot be read.
pub fn read_members(path: &std::path::Path) -> Option<HashSet<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    )
}

/// Drops idle slots of this cluster's members that no longer exist, so they cannot pin WAL.
/// In a cluster a member must be missing on two checks in a row (a pod being recreated is not gone).
async fn drop_slots_of_gone_members(
    s: &Settings,
    bin: &PgBin,
    api: Option<&PodApi>,
    gone_once: &mut HashSet<String>,
) {
    let Some(out) = query(
        s,
        bin,
        "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical' AND NOT active",
    )
    .await
    else {
        return;
    };
    let members = match s.mode {
        Mode::Local => match s.members_file.as_deref().and_then(read_members) {
            Some(m) => Some(m),
            None => return,
        },
        Mode::Kubernetes => None,
    };
    for slot in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some(member) = member_of_slot(&s.cluster, slot) else {
            continue;
        };
        let exists = match (&members, api) {
            (Some(m), _) => m.contains(&member),
            (None, Some(api)) => match api.pod_exists(&member).await {
                Ok(e) => e,
                Err(e) => {
                    crate::warn!("checking whether member {member} exists: {e}");
                    continue;
                }
            },
            (None, None) => continue,
        };
        if exists {
            gone_once.remove(slot);
            continue;
        }
        if s.mode == Mode::Kubernetes && gone_once.insert(slot.to_string()) {
            continue;
        }
        let sql = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {} AND NOT active",
            sql_quote(slot)
        );
        if query(s, bin, &sql).await.is_some() {
            crate::info!(
                "dropped replication slot {slot}: member {member} is gone, so it must not retain WAL"
            );
            gone_once.remove(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_lost_wal() {
        assert!(says_wal_is_gone(
            "2026-01-01 FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 000000010000000000000003 has already been removed"
        ));
        assert!(says_wal_is_gone(
            "ERROR:  can no longer get changes from replication slot \"pgset_1\""
        ));
        assert!(!says_wal_is_gone(
            "LOG:  started streaming WAL from primary at 0/3000000 on timeline 1"
        ));
    }

    #[test]
    fn members_file_lines() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("members");
        std::fs::write(&f, "pgset-0\npgset-1\n\n").unwrap();
        let m = read_members(&f).unwrap();
        assert!(m.contains("pgset-1") && m.len() == 2);
        assert!(read_members(&t.path().join("none")).is_none());
    }
}
