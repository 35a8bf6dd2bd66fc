//! Supervising postgres: start it on the prepared PGDATA, forward its log lines untouched, keep
//! the health state current from PostgreSQL's own state over one connection (readiness, the
//! pod's role label, the master's replication role and slots), turn SIGTERM/SIGINT into a fast
//! shutdown, and ask for a new copy only when PostgreSQL's state says the replica cannot follow.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgset_spec::contract::{AgentMode, MemberPhase, read_members};
use serde_json::{Map, Value, json};
use tokio::signal::unix::Signal as SignalStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::fence::Fence;
use crate::follow::{self, Follow};
use crate::health::{self, Health, Phase, ReplayLag, ReplayWatch};
use crate::kube_api::PodApi;
use crate::leader::StopEscalation;
use crate::pg::{self, Db, OwnState, lsn_text};
use crate::pgbin::PgBin;
use crate::render;
use crate::role::{self, GiveUp, RoleStore, Turn};
use crate::settings::{Role, Settings, member_of_slot};
use crate::{Error, Result};

/// A replica stopping to rejoin its master: why, the size of the master's databases, and where
/// its WAL was seen past the fork ([`Outcome::Reclone`]).
type Rejoining = (String, i64, Option<(u32, u64)>);

/// How a postgres run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The master stopped postgres for a switchover; the record is still its own, renewed by
    /// the switchover, until [`crate::switchover::finish`] hands it over or keeps it.
    SteppedDown(Box<crate::switchover::Stepping>),
    /// Postgres exited; the agent exits with this code.
    Exited(i32),
    /// The replica cannot follow the master any more (PostgreSQL's verdict): rewind it when
    /// its history parted from the master's, else copy again (unless `copy` is false).
    Reclone {
        /// Why, in words.
        reason: String,
        /// The size of the master's databases (what the new copy needs), in bytes.
        needed_bytes: i64,
        /// Set when the running replica's WAL was seen past the point where the master's
        /// history parted from it (its WAL timeline and end): rewind only, never a copy.
        parted: Option<(u32, u64)>,
        /// The settings it ran with last (the master it followed last, which may have moved
        /// since postgres started).
        settings: Box<Settings>,
    },
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
    Reclone {
        reason: String,
        needed_bytes: i64,
        parted: Option<(u32, u64)>,
    },
    Exited(i32),
}

/// Runs postgres until it exits, a shutdown signal is handled, or a re-clone is needed. A master
/// passes `leader_lost`, which says why the role is given up (the holder's renewals ended): then,
/// as for a shutdown signal or a lost member fence, readiness goes off at once and postgres is
/// stopped on the fixed deadlines of [`StopEscalation`]. A replica (local or in a cluster)
/// contends for the record through `store` ([`role::contend`]) and, promoted, renews it as the
/// master.
#[allow(clippy::too_many_arguments)]
pub async fn supervise(
    s: &Settings,
    bin: &PgBin,
    health: &Arc<Health>,
    api: Option<&PodApi>,
    signals: &mut ShutdownSignals,
    fence: &Fence,
    leader_lost: Option<oneshot::Receiver<GiveUp>>,
    store: &RoleStore,
) -> Result<Outcome> {
    let escalation = s.leader_timings()?.stop();
    let postgres = bin.command("postgres").arg("-D").arg(s.pgdata());
    let reader = postgres.start_reader()?;
    let pid = *reader.pids().first().ok_or_else(|| pgset_command::Error {
        command: postgres.to_string(),
        status: "started without a pid".into(),
        output: Some(String::new()),
    })?;
    health.postgres_started();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let log_tx = tx.clone();
    std::thread::spawn(move || forward_log(reader, log_tx));

    let (settings_tx, settings_rx) = watch::channel(s.clone());
    let monitor = tokio::spawn(
        Monitor::new(
            s.clone(),
            settings_rx,
            health.clone(),
            api.cloned(),
            pid as i32,
            tx,
            store.clone(),
        )
        .run(),
    );
    // A replica contends for the record when its holder stops renewing it.
    let (turn_tx, mut turns) = mpsc::unbounded_channel();
    let contender = (s.role == Role::Replica).then(|| {
        tokio::spawn(role::contend(
            s.clone(),
            store.clone(),
            api.cloned(),
            turn_tx,
        ))
    });
    let mut keeper = None;
    let mut current = s.clone();
    let postmaster = Pid::from_raw(pid as i32);
    let mut stop = Stop::new(postmaster, escalation);
    let mut stopping = false;
    let mut reclone: Option<Rejoining> = None;
    let mut fence_lost: Option<String> = None;
    let mut role_lost: Option<String> = None;
    let mut stepping: Option<Box<crate::switchover::Stepping>> = None;
    let mut has_leader = leader_lost.is_some();
    let mut leader_lost = leader_lost;
    // The watchdog ends postgres when this agent is gone or, holding the master role, stalls
    // (crate::watchdog); armed with the stop escalation's total, within the timing invariant.
    let watchdog = match crate::watchdog::Handle::start(pid as i32) {
        Ok(w) => Some(std::sync::Arc::new(std::sync::Mutex::new(w))),
        Err(e) => {
            crate::warn!("starting the watchdog: {e}; postgres is bounded by this agent alone");
            None
        }
    };
    let arm = crate::watchdog::Message::Arm(escalation.total());
    let send = |m: &crate::watchdog::Message| {
        if let Some(w) = &watchdog
            && let Ok(mut w) = w.lock()
        {
            w.send(m);
        }
    };
    if has_leader {
        send(&arm);
    }
    let beats = watchdog.clone().map(crate::watchdog::Handle::beat);
    let code = loop {
        tokio::select! {
            reason = fence.lost(), if fence_lost.is_none() => {
                crate::warn!(
                    "the member's write fence is lost ({reason}): stopping postgres now, \
                     before another pod may take the data directory"
                );
                health.stopping(Phase::Stopping, "write fence lost");
                stop.begin();
                fence_lost = Some(reason);
            }
            reason = async { leader_lost.as_mut().expect("guarded").await }, if has_leader && leader_lost.is_some() => {
                leader_lost = None;
                // A dropped sender (the renewals ended without a word) gives the role up too.
                match reason.unwrap_or_else(|_| GiveUp::Lost("the leader record's renewals ended".into())) {
                    GiveUp::Switchover(step) => {
                        crate::info!(
                            "switchover to {}: readiness off and a fast shutdown of postgres \
                             (pid {pid}); its WAL senders ship everything up to the shutdown \
                             checkpoint",
                            step.target
                        );
                        health.stopping(Phase::Stopping, "switchover");
                        stop.begin();
                        stepping = Some(step);
                    }
                    GiveUp::Lost(reason) => {
                        crate::warn!(
                            "giving the master role up: {reason}; readiness off and postgres stopped \
                             before another member may take the record"
                        );
                        health.stopping(Phase::Stopping, "master role given up");
                        stop.begin();
                        role_lost = Some(reason);
                    }
                }
            }
            _ = signals.recv() => {
                if !stopping {
                    crate::info!("shutdown requested: fast shutdown of postgres (pid {pid})");
                    stopping = true;
                    health.stopping(Phase::Stopping, "shutting down");
                    stop.begin();
                }
            }
            _ = stop.next_deadline() => stop.escalate(),
            Some(turn) = turns.recv() => match turn {
                Turn::Promoted { held, settings } => {
                    let (lost_tx, lost_rx) = oneshot::channel();
                    keeper = Some(tokio::spawn(role::keep(
                        (*settings).clone(),
                        store.clone(),
                        held,
                        lost_tx,
                    )));
                    leader_lost = Some(lost_rx);
                    has_leader = true;
                    send(&arm);
                    current = *settings;
                    let _ = settings_tx.send(current.clone());
                }
                Turn::Repoint(settings) => {
                    current = *settings;
                    let _ = settings_tx.send(current.clone());
                }
            },
            ev = rx.recv() => match ev {
                Some(Event::Reclone { reason, needed_bytes, parted }) => {
                    if current.role == Role::Replica && !stopping && reclone.is_none() {
                        if parted.is_none() {
                            crate::warn!(
                                "{reason}; stopping postgres to rewind it to the master's history \
                                 (what it wrote after the fork kept) or, if it has not diverged or \
                                 cannot be rewound, to copy the master again (this member's data \
                                 kept aside as {})",
                                s.previous_dir().display()
                            );
                        } else {
                            crate::warn!(
                                "{reason}; stopping postgres to rewind it to the master's history \
                                 (what it received after the fork kept)"
                            );
                        }
                        health.stopping(Phase::Stopping, "stopping to rejoin the master");
                        stop.begin();
                        reclone = Some((reason, needed_bytes, parted));
                    }
                }
                Some(Event::Exited(code)) => break code,
                None => break 1,
            }
        }
    };
    monitor.abort();
    for task in [contender, keeper, beats].into_iter().flatten() {
        task.abort();
    }
    // Postgres ended: the watchdog sees its pipe close and exits without acting.
    drop(watchdog);
    health.stopping(Phase::Exited, "postgres exited");
    crate::info!("postgres exited with code {code}");
    if let Some(started) = stop.started {
        crate::info!(
            "postgres stopped {} ms after the stop began",
            started.elapsed().as_millis()
        );
    }
    if fence_lost.is_none()
        && role_lost.is_none()
        && stepping.is_none()
        && (stopping || reclone.is_none())
        && let Some(path) = s.termination_log()
    {
        crate::run::write_termination_log(&path, &exit_reason(code, stopping));
    }
    if let Some(reason) = fence_lost {
        return Err(Error::Fence {
            path: s.pgdata(),
            problem: format!("postgres was stopped because the write fence was lost: {reason}"),
        });
    }
    if let Some(reason) = role_lost {
        return Err(Error::Failed(format!(
            "the master role was given up and postgres stopped: {reason}"
        )));
    }
    if let Some(step) = stepping
        && !stopping
    {
        return Ok(Outcome::SteppedDown(step));
    }
    Ok(match reclone {
        Some((reason, needed_bytes, parted)) if !stopping => Outcome::Reclone {
            reason,
            needed_bytes,
            parted,
            settings: Box::new(current),
        },
        _ => Outcome::Exited(code),
    })
}

/// The pause before the next look of a member that does not serve now: [`FIRST_SERVE_LOOK`]
/// until it first served, within [`FIRST_SERVE_WINDOW`] of postgres' start (or of a new role),
/// else [`NOT_READY_LOOK`].
fn look_after(served: bool, since_start: Duration) -> Duration {
    if !served && since_start < FIRST_SERVE_WINDOW {
        FIRST_SERVE_LOOK
    } else {
        NOT_READY_LOOK
    }
}

/// How long WAL senders may ship what was acknowledged once the backends are killed.
const SENDERS_DRAIN: Duration = Duration::from_millis(200);

/// Stopping postgres on fixed deadlines, whatever state it is in: a fast shutdown (SIGINT),
/// after [`StopEscalation::fast`] an immediate one (SIGQUIT), after
/// [`StopEscalation::immediate`] SIGKILL of every child of the postmaster but its WAL senders,
/// and a moment later (within [`StopEscalation::kill`]) of the postmaster and the WAL senders
/// (a stopped postmaster cannot pass a signal on, and its backends would still commit). Every shutdown the
/// agent performs goes through it.
struct Stop {
    postmaster: Pid,
    escalation: StopEscalation,
    started: Option<tokio::time::Instant>,
    /// Signals sent so far: 1 fast, 2 immediate, 3 backends killed, 4 all killed.
    stage: u8,
    next: Option<tokio::time::Instant>,
}

impl Stop {
    fn new(postmaster: Pid, escalation: StopEscalation) -> Stop {
        Stop {
            postmaster,
            escalation,
            started: None,
            stage: 0,
            next: None,
        }
    }

    /// Starts the stop (once; a second request changes nothing).
    fn begin(&mut self) {
        if self.stage > 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        self.started = Some(now);
        self.stage = 1;
        let _ = kill(self.postmaster, Signal::SIGINT);
        self.next = Some(now + self.escalation.fast);
    }

    /// Resolves at the next escalation's deadline; never while none is due.
    async fn next_deadline(&self) {
        match self.next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    fn escalate(&mut self) {
        let now = tokio::time::Instant::now();
        match self.stage {
            1 => {
                crate::warn!(
                    "postgres did not stop within the fast shutdown's {} ms: immediate shutdown",
                    self.escalation.fast.as_millis()
                );
                let _ = kill(self.postmaster, Signal::SIGQUIT);
                self.stage = 2;
                self.next = Some(now + self.escalation.immediate);
            }
            2 => {
                // The backends first: no commit is acknowledged after this, and the WAL senders
                // get a moment to ship what was acknowledged before.
                let children = children_of(self.postmaster.as_raw());
                let (senders, others): (Vec<i32>, Vec<i32>) = children
                    .into_iter()
                    .partition(|pid| is_process_kind(*pid, "walsender"));
                crate::warn!(
                    "postgres did not stop within the immediate shutdown's {} ms: SIGKILL to its \
                     {} processes but the WAL senders, then to the postmaster (pid {}) and its {} \
                     WAL senders",
                    self.escalation.immediate.as_millis(),
                    others.len(),
                    self.postmaster,
                    senders.len()
                );
                for pid in others {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                self.stage = 3;
                self.next = Some(now + (self.escalation.kill / 4).min(SENDERS_DRAIN));
            }
            3 => {
                crate::warn!("SIGKILL to the postmaster (pid {})", self.postmaster);
                let children = children_of(self.postmaster.as_raw());
                let _ = kill(self.postmaster, Signal::SIGKILL);
                for child in children {
                    let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
                }
                self.stage = 4;
                self.next = None;
            }
            _ => self.next = None,
        }
    }
}

/// The member's last word when postgres ended: asked to stop, or on its own (a crash, a kill).
fn exit_reason(code: i32, requested: bool) -> String {
    let how = match code {
        0 => "exit code 0".to_string(),
        c if c > 128 => match Signal::try_from(c - 128) {
            Ok(sig) => format!("killed by {sig} (exit code {c})"),
            Err(_) => format!("exit code {c}"),
        },
        c => format!("exit code {c}"),
    };
    if requested {
        format!("stopped on request: postgres shut down ({how})")
    } else {
        format!("postgres ended on its own ({how}); the agent exited with it")
    }
}

/// Forwards postgres's output to the agent's stderr, line by line; the text is never interpreted.
fn forward_log(reader: pgset_command::ReaderHandle, tx: mpsc::UnboundedSender<Event>) {
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
            }
        }
    }
    let code = loop {
        match reader.try_wait() {
            Ok(Some(out)) => break pgset_command::exit_code(out.status),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break 1,
        }
    };
    let _ = tx.send(Event::Exited(code));
}

/// The `status` line of `postmaster.pid` (PostgreSQL 10+: `starting`, `stopping`, `ready`,
/// `standby`), with the postmaster's pid.
pub fn postmaster_status(pgdata: &std::path::Path) -> Option<(i32, String)> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let status = lines.nth(6)?.trim().to_string();
    Some((pid, status))
}

/// The cluster state `pg_control` records (`DBState`, after the system identifier and two
/// version numbers), in `pg_controldata`'s words.
pub(crate) fn control_state(pgdata: &std::path::Path) -> Option<&'static str> {
    let bytes = std::fs::read(pgdata.join("global").join("pg_control")).ok()?;
    let state = u32::from_ne_bytes(bytes.get(16..20)?.try_into().ok()?);
    Some(match state {
        0 => "starting up",
        1 => "shut down",
        2 => "shut down in recovery",
        3 => "shutting down",
        4 => "in crash recovery",
        5 => "in archive recovery",
        6 => "in production",
        _ => "unknown",
    })
}

/// How often the I/O of postgres's processes is sampled while it refuses connections.
const IO_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The processes whose parent is `pid` (`/proc/<pid>/task/*/children`, else a scan of `/proc`).
fn children_of(pid: i32) -> Vec<i32> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let lists: Vec<String> = tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
            .collect();
        if !lists.is_empty() {
            return lists
                .iter()
                .flat_map(|l| l.split_whitespace())
                .filter_map(|p| p.parse().ok())
                .collect();
        }
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Whether `pid`'s process title names the PostgreSQL process `kind` (`postgres: startup …`,
/// or `postgres: <cluster_name>: startup …`): PostgreSQL's own name for the process (set
/// when it starts, whatever `update_process_title`), not a log line.
fn is_process_kind(pid: i32, kind: &str) -> bool {
    let Ok(title) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    title_names_kind(&String::from_utf8_lossy(&title), kind)
}

/// Whether a process title (`/proc/<pid>/cmdline`) names the PostgreSQL process `kind`.
fn title_names_kind(title: &str, kind: &str) -> bool {
    title
        .trim_end_matches('\0')
        .split(": ")
        .skip(1)
        .any(|part| part.split_whitespace().next() == Some(kind))
}

/// A counter of the work a process has done: the bytes it read and wrote through system calls
/// (`rchar` + `wchar` of `/proc/<pid>/io`), its CPU time (`utime` + `stime`) and the times it
/// waited on something (`voluntary_ctxt_switches`: each fsync, each wait for WAL). A process
/// that is stopped or hangs in one call adds nothing.
fn work_done(pid: i32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let mut total = 0u64;
    for line in io.lines() {
        if let Some(("rchar" | "wchar", v)) = line.split_once(':') {
            total = total.saturating_add(v.trim().parse().ok()?);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    for i in [11, 12] {
        total = total.saturating_add(fields.get(i)?.parse().ok()?);
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if let Some(v) = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
    {
        total = total.saturating_add(v.trim().parse().ok()?);
    }
    Some(total)
}

/// Whether a process seen in both samples did I/O between them (a new process alone is not
/// progress; a reused pid reads less and is not either).
fn io_grew(
    before: &std::collections::HashMap<i32, u64>,
    after: &std::collections::HashMap<i32, u64>,
) -> bool {
    after
        .iter()
        .any(|(pid, now)| before.get(pid).is_some_and(|then| now > then))
}

/// Follows the work of the postmaster's children that do what it waits for (the startup
/// process replaying WAL, the checkpointer writing a shutdown checkpoint), sampled at most
/// every [`IO_SAMPLE_EVERY`].
#[derive(Debug, Default)]
struct IoWatch {
    last: std::collections::HashMap<i32, u64>,
    sampled_at: Option<Instant>,
}

impl IoWatch {
    /// Whether the postmaster's children of the given kinds did work since the last sample;
    /// `None` when no sample is due.
    fn sample(&mut self, postmaster: i32, kinds: &[&str]) -> Option<bool> {
        if self
            .sampled_at
            .is_some_and(|t| t.elapsed() < IO_SAMPLE_EVERY)
        {
            return None;
        }
        self.sampled_at = Some(Instant::now());
        let now: std::collections::HashMap<i32, u64> = children_of(postmaster)
            .into_iter()
            .filter(|pid| kinds.iter().any(|k| is_process_kind(*pid, k)))
            .filter_map(|pid| Some((pid, work_done(pid)?)))
            .collect();
        let grew = io_grew(&self.last, &now);
        self.last = now;
        Some(grew)
    }
}

/// Logs a line at most once per interval for each key.
#[derive(Debug, Default)]
struct Quiet {
    last: std::collections::HashMap<&'static str, (Instant, String)>,
}

impl Quiet {
    /// Whether to log `text` under `key` now: when it changed, or `every` has passed.
    fn allow(&mut self, key: &'static str, text: &str, every: Duration) -> bool {
        match self.last.get(key) {
            Some((at, old)) if old == text && at.elapsed() < every => false,
            _ => {
                self.last.insert(key, (Instant::now(), text.to_string()));
                true
            }
        }
    }
}

/// How often a new connection proves the postmaster still accepts them.
const PING_EVERY: Duration = Duration::from_secs(2);
/// How often a replica that is not streaming asks the master.
const MASTER_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often the master brings synchronous replication in line with the membership.
const SYNC_ROUND_EVERY: Duration = Duration::from_millis(500);
/// How long the set's size read from the StatefulSet is used before it is read again.
const SIZE_EVERY: Duration = Duration::from_secs(10);
/// How long a replica may not stream, while its master answers, before it is not ready.
const NOT_STREAMING_GRACE: Duration = Duration::from_secs(10);
/// How often a member looks at its postgres until it first serves its role: each look reads the
/// pid file or runs a statement on the open connection, and readiness gates the next member's
/// start, so a longer pause only waits for nothing.
const FIRST_SERVE_LOOK: Duration = Duration::from_millis(20);
/// How long after postgres started (or the role changed) the looks stay [`FIRST_SERVE_LOOK`]
/// apart; a member that does not serve by then looks every [`NOT_READY_LOOK`].
const FIRST_SERVE_WINDOW: Duration = Duration::from_secs(60);
/// How often a member that does not serve looks again otherwise.
const NOT_READY_LOOK: Duration = Duration::from_millis(100);
/// How long a WAL receiver may fail to stream while the master answers before it is restarted
/// (its connection may hang on an address that no longer answers).
const RECEIVER_STUCK_AFTER: Duration = Duration::from_secs(3);

struct Monitor {
    s: Settings,
    /// The settings as the role changes them (a promotion, a new master to follow).
    settings: watch::Receiver<Settings>,
    health: Arc<Health>,
    api: Option<PodApi>,
    postmaster: i32,
    tx: mpsc::UnboundedSender<Event>,
    db: Option<Db>,
    last_ping: Option<Instant>,
    role_ready: bool,
    labelled: bool,
    /// The member served its role since postgres started.
    served: bool,
    /// When postgres started or the role last changed: looks are quick for a while after.
    since: Instant,
    quiet: Quiet,
    // Replica
    not_streaming_since: Option<Instant>,
    master_checked: Option<Instant>,
    master_answers: Option<bool>,
    master_detail: Map<String, Value>,
    last_nudge: Option<Instant>,
    follow_problem: Option<String>,
    reclone_asked: bool,
    own_sysid: Option<u64>,
    /// The master timeline whose history was found not to part from this replica's WAL.
    fork_judged: Option<i64>,
    // Master
    last_slot_check: Option<Instant>,
    /// A master found in recovery was asked to promote.
    promote_asked: bool,
    /// The leader record's store: the master keeps its list of synchronous replicas on it.
    store: RoleStore,
    synchronous: crate::sync::Keeper,
    last_sync_round: Option<Instant>,
    /// Without synchronous replication: names an earlier run left were undone.
    sync_off_done: bool,
    /// The set's size as last read, and when (read at most every `SIZE_EVERY` in a cluster).
    size: Option<(i32, Instant)>,
    // Replica: replay against the bound.
    replay: ReplayWatch,
    lag: Option<ReplayLag>,
    // While postgres refuses connections: whether its processes make progress.
    io: IoWatch,
    /// New certificate files are reloaded (`crate::tls::FileWatch`).
    tls_watch: crate::tls::FileWatch,
}

impl Monitor {
    fn new(
        s: Settings,
        settings: watch::Receiver<Settings>,
        health: Arc<Health>,
        api: Option<PodApi>,
        postmaster: i32,
        tx: mpsc::UnboundedSender<Event>,
        store: RoleStore,
    ) -> Monitor {
        let own_sysid = crate::identity::control_system_identifier(&s.pgdata()).ok();
        Monitor {
            labelled: api.is_none(),
            served: false,
            since: Instant::now(),
            s,
            settings,
            health,
            api,
            postmaster,
            tx,
            db: None,
            last_ping: None,
            role_ready: false,
            quiet: Quiet::default(),
            not_streaming_since: None,
            master_checked: None,
            master_answers: None,
            master_detail: Map::new(),
            last_nudge: None,
            follow_problem: None,
            reclone_asked: false,
            fork_judged: None,
            own_sysid,
            last_slot_check: None,
            promote_asked: false,
            store,
            synchronous: crate::sync::Keeper::default(),
            last_sync_round: None,
            sync_off_done: false,
            size: None,
            replay: ReplayWatch::default(),
            lag: None,
            io: IoWatch::default(),
            tls_watch: crate::tls::FileWatch::default(),
        }
    }

    async fn run(mut self) {
        loop {
            let pause = self.tick().await;
            tokio::time::sleep(pause).await;
        }
    }

    fn not_ready(&mut self, reason: &str) -> Duration {
        self.health.set_ready(false, reason);
        self.next_look()
    }

    /// The pause before the next look of a member that does not serve now.
    fn next_look(&self) -> Duration {
        look_after(self.served, self.since.elapsed())
    }

    /// postgres refuses connections for now: it is alive while its processes do I/O (replay
    /// reading WAL and writing pages, a shutdown checkpoint), judged from `/proc`, not its log.
    fn look_for_progress(&mut self) {
        // Recovery is the startup process's work; a shutdown's checkpoint the checkpointer's.
        let workers: &[&str] = match self.health.phase() {
            Phase::Stopping => &["startup", "checkpointer"],
            _ => &["startup"],
        };
        if self.io.sample(self.postmaster, workers) == Some(true) {
            self.health.progressed();
        }
    }

    /// One round: returns how long to wait before the next.
    async fn tick(&mut self) -> Duration {
        if self.settings.has_changed().unwrap_or(false) {
            let next = self.settings.borrow_and_update().clone();
            if next.role != self.s.role {
                // A promoted member labels its pod and sets up its role anew.
                self.labelled = self.api.is_none();
                self.role_ready = false;
                self.served = false;
                self.since = Instant::now();
                self.lag = None;
            }
            self.not_streaming_since = None;
            self.master_checked = None;
            self.follow_problem = None;
            self.s = next;
        }
        // While postgres starts up (reaching consistency) it refuses connections; its pid file
        // says so without a connection (and without a FATAL line).
        match postmaster_status(&self.s.pgdata()) {
            Some((pid, status)) if pid == self.postmaster && status == "starting" => {
                self.look_for_progress();
                self.db = None;
                return self.not_ready("postgres is starting up");
            }
            _ => {}
        }
        let ping_due = self.last_ping.is_none_or(|t| t.elapsed() >= PING_EVERY);
        if self.db.as_ref().is_none_or(|d| d.is_closed()) || ping_due {
            match Db::local(&self.s, pg::DEADLINE).await {
                Ok(db) => {
                    self.health.accepted();
                    self.db = Some(db);
                    self.last_ping = Some(Instant::now());
                }
                Err(e) => {
                    self.db = None;
                    self.last_ping = Some(Instant::now());
                    let why = if pg::cannot_connect_now(&e) {
                        // After a backend's crash postgres reinitialises in place (its pid
                        // file still says ready) and refuses connections while it recovers.
                        self.look_for_progress();
                        format!(
                            "postgres refuses connections for now (SQLSTATE 57P03; pg_control: {})",
                            control_state(&self.s.pgdata()).unwrap_or("unreadable")
                        )
                    } else {
                        format!("postgres does not accept connections ({e})")
                    };
                    if self.quiet.allow("connect", &why, Duration::from_secs(60)) {
                        crate::info!("{why}");
                    }
                    self.health.set_ready(false, &why);
                    // A postmaster just started has no socket yet: until it first serves, look
                    // again soon (a refused connect costs nothing) so readiness follows it.
                    return if self.served {
                        Duration::from_millis(500)
                    } else {
                        self.next_look()
                    };
                }
            }
        }
        let own = match self.db.as_ref() {
            Some(db) => pg::own_state(db).await,
            None => return self.next_look(),
        };
        let own = match own {
            Ok(o) => o,
            Err(e) => {
                self.db = None;
                return self.not_ready(&format!("postgres did not answer its state query ({e})"));
            }
        };
        self.reload_new_certificates().await;
        let (ready, reason) = match self.s.role {
            Role::Master => self.master(&own).await,
            Role::Replica => self.replica(&own).await,
        };
        self.publish_detail(&own);
        if ready && !self.labelled {
            self.label().await;
        }
        let (ready, reason) = if ready && !self.labelled {
            (false, format!("{reason}, waiting to label the pod"))
        } else {
            (ready, reason)
        };
        self.served |= ready;
        // The step before the verdict: whoever sees the member ready sees its step too.
        self.health.set_step(match (ready, self.s.role) {
            (true, Role::Replica) if own.receiver_status.as_deref() == Some("streaming") => {
                MemberPhase::Streaming
            }
            (true, _) => MemberPhase::Ready,
            (false, _) if self.served => MemberPhase::NotReady,
            (false, _) => MemberPhase::Starting,
        });
        self.health.set_ready(ready, &reason);
        if self.health.is_ready() {
            Duration::from_secs(1)
        } else {
            // Readiness gates the next member's start: look often until it serves its role.
            // Each look is a statement on the open connection, not a process.
            self.next_look()
        }
    }

    /// With TLS: when the certificate files changed (a renewed Secret, a rotation), PostgreSQL
    /// reloads its configuration, which reloads the server certificate, key and CA without a
    /// restart; connections open keep their session, new ones get the new certificate.
    async fn reload_new_certificates(&mut self) {
        let Some(tls) = self.s.tls() else {
            return;
        };
        let Some(db) = self.db.as_ref().filter(|_| self.tls_watch.due()) else {
            return;
        };
        if let Some(digests) = self.tls_watch.look(&tls) {
            match db.execute_batch("SELECT pg_reload_conf()").await {
                Ok(()) if self.tls_watch.loaded().is_some() => crate::info!(
                    "the TLS files ({}) changed: postgres reloaded them",
                    tls.server_cert().display()
                ),
                Ok(()) => {}
                Err(e) => {
                    crate::info!("the TLS files changed but postgres did not reload them: {e}");
                    self.tls_watch.again();
                    return;
                }
            }
            self.tls_watch.reloaded(digests);
        }
        // A CA rotation waits until every member's pod names what it loaded.
        if let (Some(api), Some(loaded)) = (&self.api, self.tls_watch.unpublished()) {
            match api
                .publish_tls_loaded(&self.s.pod_name, &loaded.to_json())
                .await
            {
                Ok(()) => self.tls_watch.published(loaded),
                Err(e) => crate::info!("cannot publish the TLS files loaded on the pod: {e}"),
            }
        }
    }

    fn publish_detail(&mut self, own: &OwnState) {
        let mut d = Map::new();
        d.insert("inRecovery".into(), json!(own.in_recovery));
        d.insert("timeline".into(), json!(own.timeline));
        d.insert("serverVersion".into(), json!(own.server_version));
        d.insert("uptimeSeconds".into(), json!(own.uptime_s.round() as i64));
        d.insert("startedAt".into(), json!(own.started_at));
        if let Some(sysid) = self.own_sysid {
            d.insert("systemIdentifier".into(), json!(sysid.to_string()));
        }
        if let Some(l) = own.current_lsn {
            d.insert("currentLsn".into(), json!(lsn_text(l)));
        }
        if let Some(st) = &own.receiver_status {
            d.insert("walReceiver".into(), json!(st));
        }
        if let Some(l) = own.receive_lsn {
            d.insert("receiveLsn".into(), json!(lsn_text(l)));
        }
        if let Some(l) = own.replay_lsn {
            d.insert("replayLsn".into(), json!(lsn_text(l)));
        }
        if let Some(lag) = self.lag {
            d.insert("replayPaused".into(), json!(lag.paused));
            d.insert("replayLagBytes".into(), json!(lag.bytes));
            d.insert(
                "replayStalledSeconds".into(),
                json!((lag.stalled.as_secs_f64() * 10.0).round() / 10.0),
            );
        }
        if let Some(p) = &self.follow_problem {
            d.insert("followProblem".into(), json!(p));
        }
        if let Some(loaded) = self.tls_watch.loaded() {
            d.insert(
                pgset_spec::contract::tls::LOADED_DETAIL.into(),
                loaded.to_json(),
            );
        }
        for (k, v) in &self.master_detail {
            d.insert(k.clone(), v.clone());
        }
        self.health.set_detail(d);
    }

    async fn label(&mut self) {
        let Some(api) = &self.api else {
            return;
        };
        match api.label_role(&self.s.pod_name, self.s.role.label()).await {
            Ok(()) => {
                crate::info!(
                    "labelled pod {} {}={}",
                    self.s.pod_name,
                    pgset_spec::contract::labels::ROLE,
                    self.s.role.label()
                );
                self.labelled = true;
            }
            Err(e) => {
                let text = e.to_string();
                if self.quiet.allow("label", &text, Duration::from_secs(300)) {
                    crate::warn!("labelling the pod (not ready until it works): {text}");
                }
            }
        }
    }

    async fn master(&mut self, own: &OwnState) -> (bool, String) {
        if own.in_recovery {
            // The record names this member but its data is a standby's: a promotion that did
            // not finish (the member stopped between taking the record and promoting). Only
            // the holder runs as master, so it promotes now, on a timeline of its own.
            if !self.promote_asked
                && let Some(db) = self.db.as_ref()
            {
                self.promote_asked = true;
                crate::warn!(
                    "this member holds the leader record but its postgres is a standby (a \
                     promotion that did not finish): promoting it"
                );
                if let Err(e) = db.execute_batch("SELECT pg_promote(false)").await {
                    crate::warn!("promoting: {e}");
                    self.promote_asked = false;
                }
            }
            return (false, "in recovery, not yet accepting writes".into());
        }
        if !self.role_ready {
            match self.ensure_roles().await {
                Ok(()) => {
                    crate::info!(
                        "replication role `{}` is set up",
                        pgset_spec::contract::REPLICATION_USER
                    );
                    self.role_ready = true;
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.quiet.allow("roles", &text, Duration::from_secs(60)) {
                        crate::warn!("setting up the replication role: {text}");
                    }
                    return (false, format!("setting up the replication role: {text}"));
                }
            }
        }
        let every = match self.s.env.mode {
            AgentMode::Local => Duration::from_secs(2),
            AgentMode::Kubernetes => Duration::from_secs(10),
        };
        self.show_standbys().await;
        if self.last_slot_check.is_none_or(|t| t.elapsed() >= every) {
            self.last_slot_check = Some(Instant::now());
            self.manage_slots().await;
        }
        // Each round reads the leader record: every half second locally, every 2 s in a
        // cluster (a GET of the Lease).
        let sync_every = match self.s.env.mode {
            AgentMode::Local => SYNC_ROUND_EVERY,
            AgentMode::Kubernetes => 4 * SYNC_ROUND_EVERY,
        };
        if self
            .last_sync_round
            .is_none_or(|t| t.elapsed() >= sync_every)
        {
            self.last_sync_round = Some(Instant::now());
            match self.s.synchronous() {
                Some(mode) => self.keep_synchronous(mode).await,
                // Switched off: what an earlier run named is undone once.
                None if !self.sync_off_done => {
                    if let Some(db) = self.db.as_ref() {
                        match self.synchronous.off(db, &self.store).await {
                            Ok(done) => self.sync_off_done = done,
                            Err(e) => {
                                let text = format!("synchronous replication: {e}");
                                if self.quiet.allow("sync", &text, Duration::from_secs(60)) {
                                    crate::warn!("{text}");
                                }
                            }
                        }
                    }
                }
                None => {}
            }
        }
        (true, "accepts writes".into())
    }

    /// Creates the replication role when missing and sets both roles' passwords from the Secret.
    /// Statement logging is switched off for the session in a statement of its own first, so no
    /// password can reach the log whatever the server's settings.
    async fn ensure_roles(&self) -> Result<()> {
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| Error::Failed("no connection".into()))?;
        let replication = crate::bootstrap::read_password(
            &self.s,
            pgset_spec::contract::secret::REPLICATION_PASSWORD_KEY,
        )?;
        let superuser = crate::bootstrap::read_password(
            &self.s,
            pgset_spec::contract::secret::SUPERUSER_PASSWORD_KEY,
        )?;
        db.execute_batch(render::QUIET_SESSION_SQL).await?;
        // The agent's own writes never wait for synchronous replicas: under `required` a master
        // that starts before its replicas (an ordered start) must become ready first.
        db.execute_batch("SET synchronous_commit = local").await?;
        db.execute_batch(&render::role_passwords_sql(&replication, &superuser))
            .await
    }

    /// One round of synchronous replication ([`crate::sync`]): the names and the record's list
    /// from the live membership.
    async fn keep_synchronous(&mut self, mode: pgset_spec::Synchronous) {
        let size = match self.size {
            // Locally the membership file is read every round.
            Some((n, at))
                if self.s.env.mode == AgentMode::Kubernetes && at.elapsed() < SIZE_EVERY =>
            {
                Some(n)
            }
            _ => {
                let n = self.desired_replicas().await;
                if let Some(n) = n {
                    self.size = Some((n, Instant::now()));
                }
                n.or(self.size.map(|(n, _)| n))
            }
        };
        let Some(size) = size else {
            return;
        };
        let members: Vec<String> = (0..size)
            .map(|k| format!("{}-{k}", self.s.env.cluster))
            .filter(|m| *m != self.s.pod_name)
            .collect();
        let Some(db) = self.db.as_ref() else {
            return;
        };
        if let Err(e) = self
            .synchronous
            .round(mode, db, &self.store, &members)
            .await
        {
            let text = format!("synchronous replication: {e}");
            if self.quiet.allow("sync", &text, Duration::from_secs(60)) {
                crate::warn!("{text}");
            }
        }
    }

    /// How many members the set should have: the StatefulSet's `spec.replicas` in a cluster,
    /// the membership file locally.
    async fn desired_replicas(&mut self) -> Option<i32> {
        match self.s.env.mode {
            AgentMode::Local => {
                let members = self.s.env.members_file.as_deref().and_then(read_members)?;
                Some(
                    members
                        .iter()
                        .filter_map(|m| pgset_spec::ordinal_of(m))
                        .map(|k| k + 1)
                        .max()
                        .unwrap_or(0),
                )
            }
            AgentMode::Kubernetes => {
                let api = self.api.as_ref()?;
                match api.statefulset_replicas().await {
                    Ok(n) => Some(n),
                    Err(e) => {
                        let text = e.to_string();
                        if self
                            .quiet
                            .allow("replicas", &text, Duration::from_secs(300))
                        {
                            crate::warn!("reading the StatefulSet's replicas (slots kept): {text}");
                        }
                        None
                    }
                }
            }
        }
    }

    /// Shows the master's `pg_stat_replication` (each check: status reads streaming from it).
    async fn show_standbys(&mut self) {
        let Some(db) = self.db.as_ref() else {
            return;
        };
        if let Ok(standbys) = pg::standbys(db).await {
            let shown: Vec<Value> = standbys
                .iter()
                .map(|r| {
                    json!({
                        "applicationName": r.name,
                        "state": r.state,
                        "syncState": r.sync_state,
                        "unreplayedBytes": r.unreplayed_bytes,
                        "replayLagMs": r.replay_lag_ms,
                    })
                })
                .collect();
            self.master_detail
                .insert("replication".into(), Value::Array(shown));
        }
    }

    /// Drops the slots of members at or above the set's size (scaled away); keeps every slot of
    /// a member within it, whether its pod exists right now or not. Shows each slot's retained WAL.
    async fn manage_slots(&mut self) {
        let Some(db) = self.db.as_ref() else {
            return;
        };
        let Ok(slots) = pg::slots(db).await else {
            return;
        };
        let mut shown = Vec::new();
        for slot in &slots {
            shown.push(json!({
                "slot": slot.slot,
                "active": slot.active,
                "walStatus": slot.wal_status,
                "retainedBytes": slot.retained_bytes,
            }));
        }
        self.master_detail
            .insert("slots".into(), Value::Array(shown));
        let ours: Vec<_> = slots
            .iter()
            .filter(|slot| !slot.active)
            .filter_map(|slot| {
                let member = member_of_slot(&self.s.env.cluster, &slot.slot)?;
                Some((slot.slot.clone(), member))
            })
            .collect();
        if ours.is_empty() {
            return;
        }
        let Some(replicas) = self.desired_replicas().await else {
            return;
        };
        let Some(db) = self.db.as_ref() else {
            return;
        };
        for (slot, member) in ours {
            let Some(k) = pgset_spec::ordinal_of(&member) else {
                continue;
            };
            if k < replicas {
                continue;
            }
            match db
                .rows(
                    "SELECT pg_drop_replication_slot(slot_name)::text FROM pg_replication_slots
                      WHERE slot_name = $1 AND NOT active",
                    &[&slot],
                )
                .await
            {
                Ok(rows) if !rows.is_empty() => crate::info!(
                    "dropped replication slot {slot}: member {member} is at or above the set's \
                     size ({replicas}), so it must not retain WAL"
                ),
                Ok(_) => {}
                Err(e) => crate::warn!("dropping replication slot {slot}: {e}"),
            }
        }
    }

    /// A replica serves reads while it follows the master and its replay keeps within the
    /// bound (`replication.maxReplicaLag`): not paused, not too far behind what it received,
    /// not standing still while WAL waits.
    async fn replica(&mut self, own: &OwnState) -> (bool, String) {
        let (ready, reason) = self.follows(own).await;
        if !own.in_recovery {
            self.lag = None;
            return (ready, reason);
        }
        let lag = self.replay.observe(
            Instant::now(),
            own.receive_lsn,
            own.replay_lsn,
            own.replay_paused.unwrap_or(false),
        );
        self.lag = Some(lag);
        match health::replay_verdict(
            &lag,
            self.s.max_replica_lag_bytes(),
            self.s.max_replica_lag(),
        ) {
            Some(why) if ready => (false, why),
            _ => (ready, reason),
        }
    }

    async fn follows(&mut self, own: &OwnState) -> (bool, String) {
        if !own.in_recovery {
            return (
                false,
                "not in recovery: this replica was promoted outside pgset and will not serve as one"
                    .into(),
            );
        }
        if own.receiver_status.as_deref() == Some("streaming") {
            self.not_streaming_since = None;
            self.follow_problem = None;
            self.master_answers = Some(true);
            return (true, "streaming from the master".into());
        }
        let since = *self.not_streaming_since.get_or_insert_with(Instant::now);
        if self
            .master_checked
            .is_none_or(|t| t.elapsed() >= MASTER_CHECK_EVERY)
        {
            self.master_checked = Some(Instant::now());
            self.check_master(own).await;
        }
        if let Some(problem) = &self.follow_problem {
            return (false, problem.clone());
        }
        let caught_up = match (own.receive_lsn, own.replay_lsn) {
            (Some(received), Some(replayed)) => replayed >= received,
            _ => true,
        };
        match self.master_answers {
            Some(false) if caught_up => (
                true,
                format!(
                    "the master does not answer; serving reads of everything received (replayed up to {})",
                    own.replay_lsn.map(lsn_text).unwrap_or_else(|| "-".into())
                ),
            ),
            Some(false) => (
                false,
                "the master does not answer and replay has not caught up with what was received"
                    .into(),
            ),
            _ if since.elapsed() < NOT_STREAMING_GRACE && self.health.is_ready() => {
                (true, "reconnecting to the master".into())
            }
            _ => (
                false,
                format!(
                    "not streaming from the master for {} s (WAL receiver: {})",
                    since.elapsed().as_secs(),
                    own.receiver_status.as_deref().unwrap_or("not running")
                ),
            ),
        }
    }

    /// Asks the master whether this replica can follow it, creates its slot when missing, and
    /// restarts a WAL receiver whose connection hangs while the master answers.
    async fn check_master(&mut self, own: &OwnState) {
        let db = match Db::master(&self.s, pg::DEADLINE).await {
            Ok(db) => db,
            Err(e) => {
                self.master_answers = Some(false);
                let text = format!("the master does not answer ({e})");
                if self.quiet.allow("master", &text, Duration::from_secs(60)) {
                    crate::info!("{text}");
                }
                return;
            }
        };
        self.master_answers = Some(true);
        let needed = own.receive_lsn.max(own.replay_lsn);
        let view = match pg::master_view(&db, &self.s.slot(), needed).await {
            Ok(v) => v,
            Err(e) => {
                let text = format!("asking the master about this replica: {e}");
                if self.quiet.allow("view", &text, Duration::from_secs(60)) {
                    crate::warn!("{text}");
                }
                return;
            }
        };
        let Some(own_sysid) = self.own_sysid else {
            return;
        };
        match follow::judge(own_sysid, own.timeline, &view) {
            Follow::Yes => {
                self.follow_problem = None;
                if view.slot_wal_status.is_none() {
                    match pg::ensure_slot(&db, &self.s.slot()).await {
                        Ok(true) => crate::info!(
                            "created replication slot {} on the master (WAL reserved)",
                            self.s.slot()
                        ),
                        Ok(false) => {}
                        Err(e) => crate::warn!("creating replication slot {}: {e}", self.s.slot()),
                    }
                }
                self.judge_fork(own, view.timeline).await;
                self.nudge_receiver(own);
            }
            Follow::Mismatch(why) => {
                if self.s.env.allow_reinit {
                    self.ask_reclone(
                        format!("{why} ({} is set)", pgset_spec::contract::env::ALLOW_REINIT),
                        view.database_bytes,
                    );
                } else {
                    let text = format!(
                        "{why}; this replica does not follow it and keeps its data. If the master \
                         was re-initialised on purpose, set {}=true (spec: postgres.allowReinit) \
                         to copy it again; otherwise restore the master's data",
                        pgset_spec::contract::env::ALLOW_REINIT
                    );
                    if self.quiet.allow("mismatch", &text, Duration::from_secs(60)) {
                        crate::warn!("{text}");
                    }
                    self.follow_problem = Some(text);
                }
            }
            Follow::NeedsNewCopy(why) => self.ask_reclone(why, view.database_bytes),
        }
    }

    fn ask_reclone(&mut self, reason: String, needed_bytes: i64) {
        self.ask_rejoin(reason, needed_bytes, None);
    }

    /// Stops postgres, once, to rewind this replica (`parted`: its WAL seen past the fork, so
    /// rewind only) or else to copy the master again when its data did not diverge.
    fn ask_rejoin(&mut self, reason: String, needed_bytes: i64, parted: Option<(u32, u64)>) {
        self.follow_problem = Some(reason.clone());
        if !self.reclone_asked {
            self.reclone_asked = true;
            let _ = self.tx.send(Event::Reclone {
                reason,
                needed_bytes,
                parted,
            });
        }
    }

    /// A replica that does not stream from a master on a newer timeline: when the WAL it holds
    /// on its own older timeline runs past the point where the master's history parted from it
    /// (the master was promoted behind it, say by `failover --to` a replica that had received
    /// less), PostgreSQL can never follow: it is rewound, what it received after the fork kept.
    /// Judged once per master timeline found not to have parted from it.
    async fn judge_fork(&mut self, own: &OwnState, master_timeline: i64) {
        if self.fork_judged == Some(master_timeline) || master_timeline <= own.timeline {
            return;
        }
        let end = own.receive_lsn.max(own.replay_lsn).unwrap_or(0).max(0) as u64;
        match crate::rewind::replica_parted(&self.s, end).await {
            Ok(None) => self.fork_judged = Some(master_timeline),
            Ok(Some(p)) => self.ask_rejoin(p.why, 0, Some((p.timeline, end))),
            Err(e) => {
                let text = format!(
                    "whether this replica's history parted from the master's timeline \
                     {master_timeline} is not known yet: {e}"
                );
                if self.quiet.allow("fork", &text, Duration::from_secs(60)) {
                    crate::warn!("{text}");
                }
            }
        }
    }

    /// The master answers but the WAL receiver has not streamed for a while: its connection may
    /// hang on an address that no longer answers (a Service still routing to a deleted pod).
    /// SIGTERM makes postgres start a new receiver after `wal_retrieve_retry_interval`.
    fn nudge_receiver(&mut self, own: &OwnState) {
        let Some(pid) = own.receiver_pid else {
            return;
        };
        let stuck = self
            .not_streaming_since
            .is_some_and(|t| t.elapsed() >= RECEIVER_STUCK_AFTER);
        let recently = self
            .last_nudge
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
        if stuck && !recently {
            self.last_nudge = Some(Instant::now());
            crate::info!(
                "the master answers but the WAL receiver (pid {pid}, {}) has not streamed for {} s: restarting it",
                own.receiver_status.as_deref().unwrap_or("connecting"),
                self.not_streaming_since
                    .map(|t| t.elapsed().as_secs())
                    .unwrap_or(0)
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmaster_pid_status_line() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("postmaster.pid"),
            "4242\n/data\n1700000000\n5432\n/run\n127.0.0.1\n  1234   5678\nready   \n",
        )
        .unwrap();
        assert_eq!(postmaster_status(t.path()), Some((4242, "ready".into())));
        assert_eq!(postmaster_status(&t.path().join("none")), None);
    }

    #[test]
    fn the_exit_reason_names_the_signal_and_whether_it_was_asked_for() {
        assert_eq!(
            exit_reason(137, false),
            "postgres ended on its own (killed by SIGKILL (exit code 137)); the agent exited with it"
        );
        assert_eq!(
            exit_reason(0, true),
            "stopped on request: postgres shut down (exit code 0)"
        );
        assert_eq!(
            exit_reason(1, false),
            "postgres ended on its own (exit code 1); the agent exited with it"
        );
    }

    #[test]
    fn io_progress_is_growth_of_a_process_seen_twice() {
        use std::collections::HashMap;
        let before = HashMap::from([(10, 100u64), (11, 50)]);
        assert!(!io_grew(&before, &before), "the same counters: no progress");
        assert!(io_grew(&before, &HashMap::from([(10, 101), (11, 50)])));
        assert!(
            !io_grew(&before, &HashMap::from([(12, 9999)])),
            "a new process alone is not progress"
        );
        assert!(!io_grew(&before, &HashMap::from([(10, 5)])), "a reused pid");
        assert!(!io_grew(&HashMap::new(), &HashMap::new()));
    }

    #[test]
    fn pg_control_state_is_read_from_its_place() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(control_state(t.path()), None);
        std::fs::create_dir_all(t.path().join("global")).unwrap();
        let mut control = vec![0u8; 8192];
        control[16..20].copy_from_slice(&4u32.to_ne_bytes());
        std::fs::write(t.path().join("global/pg_control"), &control).unwrap();
        assert_eq!(control_state(t.path()), Some("in crash recovery"));
        control[16..20].copy_from_slice(&6u32.to_ne_bytes());
        std::fs::write(t.path().join("global/pg_control"), &control).unwrap();
        assert_eq!(control_state(t.path()), Some("in production"));
    }

    #[test]
    fn process_titles_name_the_kind_with_or_without_a_cluster_name() {
        assert!(title_names_kind(
            "postgres: pgset-0: startup recovering 000000010000000000000003",
            "startup"
        ));
        assert!(title_names_kind("postgres: startup", "startup"));
        assert!(title_names_kind(
            "postgres: pgset-0: checkpointer \0",
            "checkpointer"
        ));
        assert!(!title_names_kind("postgres: pgset-0: walwriter", "startup"));
        assert!(!title_names_kind(
            "postgres: pgset-0: postgres postgres [local] SELECT startup",
            "startup"
        ));
        assert!(!title_names_kind("/usr/bin/startup", "startup"));
    }

    #[test]
    fn this_process_io_is_read_and_its_children_found() {
        let me = std::process::id() as i32;
        let first = work_done(me).expect("own /proc/<pid>/io, stat and status");
        std::fs::write(std::env::temp_dir().join("pgset-io-probe"), vec![0u8; 4096]).unwrap();
        assert!(work_done(me).unwrap() >= first + 4096);
        assert!(
            !is_process_kind(me, "startup"),
            "a test binary is no startup process"
        );
        let child = pgset_command::HostCommand::new("sleep")
            .arg("5")
            .quiet()
            .start()
            .unwrap();
        let pid = child.pids()[0] as i32;
        let found = children_of(me).contains(&pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "a child of this process is found");
    }

    #[test]
    fn a_member_looks_every_20_ms_until_it_first_serves_for_a_minute_then_every_100_ms() {
        let s = Duration::from_secs;
        assert_eq!(look_after(false, s(0)), Duration::from_millis(20));
        assert_eq!(look_after(false, s(59)), Duration::from_millis(20));
        assert_eq!(look_after(false, s(60)), Duration::from_millis(100));
        // Once it served, a member that stops serving looks as before.
        assert_eq!(look_after(true, s(1)), Duration::from_millis(100));
    }

    #[test]
    fn quiet_logs_changes_and_then_once_per_interval() {
        let mut q = Quiet::default();
        assert!(q.allow("k", "a", Duration::from_secs(60)));
        assert!(!q.allow("k", "a", Duration::from_secs(60)));
        assert!(q.allow("k", "b", Duration::from_secs(60)));
        assert!(q.allow("k", "b", Duration::ZERO));
    }
}
