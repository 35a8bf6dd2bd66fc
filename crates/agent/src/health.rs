//! The health endpoint and the state behind it. `GET /healthz`: the member makes progress
//! (postgres answers new connections, or its recovery or shutdown does I/O, or a base backup
//! grows) within the liveness timeout. `GET /startupz`: the agent serves its endpoints (from then
//! on liveness judges progress, so a long copy or recovery that progresses is never restarted).
//! `GET /readyz`: the member serves its role, judged by a check younger than the readiness
//! deadline (no answer in time is not ready; a replica's replay must keep within its bound).
//! `GET /status`: the member's state as JSON, with the reason it is not ready. Answers come from
//! the cached state, never from a query made while the prober waits.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgset_spec::contract::{
    BaseBackupReading, HEALTH_LIVE_PATH, HEALTH_READY_PATH, HEALTH_STARTUP_PATH, MemberPhase,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{Result, io_err};

/// The milestones of a member's start as `/status` lists them ([`Health::mark`]), besides the
/// first time each [`MemberPhase`] step was entered (its annotation word).
pub mod milestone {
    /// The agent process began (before it read its environment).
    pub const STARTED: &str = "agent-started";
    /// The member's write fence is held.
    pub const FENCED: &str = "fence-held";
    /// The leader record was read: the member knows its role.
    pub const RECORD: &str = "record-read";
    /// The data directory was inspected: proven this member's, or empty.
    pub const IDENTITY: &str = "identity-checked";
    /// A replica's master answered.
    pub const MASTER_ANSWERED: &str = "master-answered";
    /// initdb, the copy or the configuration is done (identity written).
    pub const DATA_MADE: &str = "data-made";
    /// The master holds the leader record, just before its postgres starts.
    pub const RECORD_HELD: &str = "record-held";
    /// postgres accepted the agent's first connection.
    pub const ACCEPTING: &str = "postgres-accepting";
    /// The first verdict that the member serves its role.
    pub const FIRST_READY: &str = "first-ready";
}

/// When a member first reached a step or milestone, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// The step's word ([`MemberPhase::as_str`]) or a [`milestone`].
    pub step: String,
    /// Wall-clock time in milliseconds since the UNIX epoch (a launcher on the same host
    /// subtracts its own start).
    pub at_unix_ms: u64,
}

/// Milliseconds since the UNIX epoch of `t`.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Path of the JSON status.
pub const STATUS_PATH: &str = pgset_spec::contract::HEALTH_STATUS_PATH;

/// Default time postgres may go without answering before liveness fails.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);

/// How old the last readiness check may be before readiness is withdrawn: a check every second,
/// each under a 2 s deadline, plus a margin.
pub const READINESS_DEADLINE: Duration = Duration::from_secs(4);

/// What the member is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Preparing the data directory: initdb, base backup, checks (liveness holds).
    Preparing,
    /// postgres runs.
    Running,
    /// Shutting down on request.
    Stopping,
    /// postgres exited.
    Exited,
}

/// The member's state, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The member (pod) name, so a prober can tell it reached the member it meant.
    pub member: String,
    /// The agent's process id (local mode tells its own member's agent from another's by it).
    pub agent_pid: u32,
    /// The agent's version (the pgset release it was built from).
    pub agent_version: &'static str,
    /// What the member is doing.
    pub phase: Phase,
    /// In words: the step while preparing, or what postgres does.
    pub activity: String,
    /// Whether it serves its role.
    pub ready: bool,
    /// Why it is (not) ready.
    pub reason: String,
    /// Milliseconds since postgres last answered a new connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_answer_ms: Option<u64>,
    /// Detail from PostgreSQL's own state (timeline, LSNs, WAL receiver, slot), when known.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub postgres: serde_json::Map<String, serde_json::Value>,
    /// This member's kept copies with writes the cluster does not have, until the user removes
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diverged: Vec<crate::rewind::KeptCopy>,
    /// When the member first reached each step and milestone of its start, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Mark>,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    activity: String,
    /// When the phase (or, while preparing, the step) began: the liveness clock's origin.
    phase_since: Instant,
    last_answer: Option<Instant>,
    /// The last sign of progress while postgres refuses connections (recovery or shutdown doing
    /// I/O) or while a base backup is copied (its bytes grew).
    last_progress: Option<Instant>,
    /// The bytes of the base backup at its last reading.
    copied_bytes: Option<u64>,
    ready: bool,
    reason: String,
    checked_at: Option<Instant>,
    detail: serde_json::Map<String, serde_json::Value>,
}

/// What the probes see, updated by the supervisor and its monitor.
#[derive(Debug)]
pub struct Health {
    member: String,
    state: Mutex<State>,
    liveness_timeout: Duration,
    /// The member's step as one word, for the pod's phase annotation.
    step: tokio::sync::watch::Sender<MemberPhase>,
    /// The latest measurement of a base backup in progress, for the pod's annotation.
    copied: tokio::sync::watch::Sender<Option<BaseBackupReading>>,
    /// The data root, where `/status` looks for this member's diverged copies.
    data_root: std::sync::OnceLock<std::path::PathBuf>,
    /// The first time of each step and milestone ([`Health::mark`]).
    marks: Mutex<Vec<Mark>>,
}

impl Health {
    /// A new state of `member` (preparing, not ready) with the liveness timeout.
    pub fn new(member: &str, liveness_timeout: Duration) -> Arc<Health> {
        Arc::new(Health {
            member: member.to_string(),
            state: Mutex::new(State {
                phase: Phase::Preparing,
                activity: "starting".into(),
                phase_since: Instant::now(),
                last_answer: None,
                last_progress: None,
                copied_bytes: None,
                ready: false,
                reason: "starting".into(),
                checked_at: None,
                detail: serde_json::Map::new(),
            }),
            liveness_timeout,
            step: tokio::sync::watch::Sender::new(MemberPhase::Fencing),
            copied: tokio::sync::watch::Sender::new(None),
            data_root: std::sync::OnceLock::new(),
            marks: Mutex::new(Vec::new()),
        })
    }

    /// Records that the member reached `step` now, the first time only (a later return to a
    /// step, after a switchover or a rejoin, keeps the first time).
    pub fn mark(&self, step: &str) {
        self.mark_at(step, std::time::SystemTime::now());
    }

    /// Records that the member reached `step` at `at`, the first time only.
    pub fn mark_at(&self, step: &str, at: std::time::SystemTime) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if !marks.iter().any(|m| m.step == step) {
            marks.push(Mark {
                step: step.to_string(),
                at_unix_ms: unix_ms(at),
            });
        }
    }

    /// The steps and milestones reached so far, in order.
    pub fn marks(&self) -> Vec<Mark> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Has `/status` list the member's diverged copies kept in `data_root`.
    pub fn watch_kept_copies(&self, data_root: &std::path::Path) {
        let _ = self.data_root.set(data_root.to_path_buf());
    }

    /// Records the member's step; watchers see it only when it changes.
    pub fn set_step(&self, step: MemberPhase) {
        self.mark(step.as_str());
        self.step.send_if_modified(|current| {
            let changed = *current != step;
            *current = step;
            changed
        });
    }

    /// What the member is doing now.
    pub fn phase(&self) -> Phase {
        self.with(|s| s.phase)
    }

    /// The member's step now.
    pub fn step(&self) -> MemberPhase {
        *self.step.borrow()
    }

    /// Follows the member's step (the phase annotation's writer).
    pub fn steps(&self) -> tokio::sync::watch::Receiver<MemberPhase> {
        self.step.subscribe()
    }

    /// Records how far a base backup has come (`None` once it is over); bytes that grew are
    /// progress for liveness.
    pub fn set_base_backup(&self, reading: Option<BaseBackupReading>) {
        self.with(|s| {
            let bytes = reading.map(|r| r.bytes);
            if bytes.is_some_and(|b| b > s.copied_bytes.unwrap_or(0)) {
                s.last_progress = Some(Instant::now());
            }
            s.copied_bytes = bytes;
        });
        self.copied.send_replace(reading);
    }

    /// Follows a base backup's readings (the phase annotation's writer).
    pub fn base_backup_readings(&self) -> tokio::sync::watch::Receiver<Option<BaseBackupReading>> {
        self.copied.subscribe()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Preparing the data directory: `step`, and `activity` in words.
    pub fn preparing(&self, step: MemberPhase, activity: &str) {
        let new_step = self.step() != step;
        self.set_step(step);
        self.with(|s| {
            if new_step || s.phase != Phase::Preparing {
                s.phase_since = Instant::now();
                s.last_progress = None;
                s.copied_bytes = None;
            }
            s.phase = Phase::Preparing;
            s.activity = activity.to_string();
            s.detail.clear();
        });
        self.set_ready(false, activity);
    }

    /// postgres was started: the liveness clock starts now.
    pub fn postgres_started(&self) {
        self.set_step(MemberPhase::Starting);
        self.with(|s| {
            s.phase = Phase::Running;
            s.activity = "postgres running".into();
            s.phase_since = Instant::now();
            s.last_answer = None;
            s.last_progress = None;
        });
    }

    /// postgres accepted a new connection.
    pub fn accepted(&self) {
        let first = self.with(|s| s.last_answer.replace(Instant::now()).is_none());
        if first {
            self.mark(milestone::ACCEPTING);
        }
    }

    /// postgres refuses connections for now (starting up, recovering, shutting down) and its
    /// processes did I/O since the last look: it makes progress.
    pub fn progressed(&self) {
        self.with(|s| s.last_progress = Some(Instant::now()));
    }

    /// A shutdown was requested, or postgres exited.
    pub fn stopping(&self, phase: Phase, activity: &str) {
        self.set_step(MemberPhase::Stopping);
        self.with(|s| {
            if s.phase != phase {
                s.phase_since = Instant::now();
            }
            s.phase = phase;
            s.activity = activity.to_string();
        });
        self.set_ready(false, activity);
    }

    /// Records a readiness verdict (now); logs when it flips.
    pub fn set_ready(&self, ready: bool, reason: &str) {
        let flipped = self.with(|s| {
            let flipped = s.ready != ready;
            s.ready = ready;
            s.reason = reason.to_string();
            s.checked_at = Some(Instant::now());
            flipped
        });
        if flipped {
            if ready {
                self.mark(milestone::FIRST_READY);
                crate::info!("ready: {reason}");
            } else {
                crate::info!("not ready: {reason}");
            }
        }
    }

    /// Replaces the PostgreSQL detail shown by `/status`.
    pub fn set_detail(&self, detail: serde_json::Map<String, serde_json::Value>) {
        self.with(|s| s.detail = detail);
    }

    /// Whether the member is ready now (a verdict younger than the readiness deadline).
    pub fn is_ready(&self) -> bool {
        self.with(|s| {
            s.ready
                && s.checked_at
                    .is_some_and(|t| t.elapsed() <= READINESS_DEADLINE)
        })
    }

    /// Whether the agent is live now, and why not.
    pub fn liveness(&self) -> (bool, String) {
        self.liveness_at(Instant::now())
    }

    /// Whether the agent is live at `now` (a monotonic instant), and why not: the member must
    /// show a sign of life (an answer, or progress) within the liveness timeout, counted from the
    /// start of its phase. Preparing steps other than a base backup are waits the agent bounds
    /// itself (the fence, the master) or local work (initdb, checks): live.
    pub fn liveness_at(&self, now: Instant) -> (bool, String) {
        let step = self.step();
        self.with(|s| {
            let limit = self.liveness_timeout.as_secs();
            let quiet_since = |signs: &[Option<Instant>]| {
                let last = signs
                    .iter()
                    .flatten()
                    .copied()
                    .fold(s.phase_since, Instant::max);
                now.saturating_duration_since(last)
            };
            match s.phase {
                Phase::Exited => (false, s.activity.clone()),
                Phase::Preparing if step != MemberPhase::BaseBackup => (true, s.activity.clone()),
                Phase::Preparing => {
                    let quiet = quiet_since(&[s.last_progress]);
                    if quiet <= self.liveness_timeout {
                        (true, s.activity.clone())
                    } else {
                        (
                            false,
                            format!(
                                "the base backup has not grown for {} s (limit {limit} s)",
                                quiet.as_secs()
                            ),
                        )
                    }
                }
                Phase::Running | Phase::Stopping => {
                    let quiet = quiet_since(&[s.last_answer, s.last_progress]);
                    if quiet <= self.liveness_timeout {
                        (true, s.activity.clone())
                    } else if s.phase == Phase::Stopping {
                        (
                            false,
                            format!(
                                "{}: postgres has neither stopped nor made progress for {} s \
                                 (limit {limit} s)",
                                s.activity,
                                quiet.as_secs()
                            ),
                        )
                    } else {
                        (
                            false,
                            format!(
                                "postgres has neither answered a new connection nor made \
                                 progress for {} s (limit {limit} s)",
                                quiet.as_secs()
                            ),
                        )
                    }
                }
            }
        })
    }

    /// The state as `/status` shows it.
    pub fn status(&self) -> Status {
        let ready = self.is_ready();
        self.with(|s| Status {
            member: self.member.clone(),
            agent_pid: std::process::id(),
            agent_version: env!("CARGO_PKG_VERSION"),
            phase: s.phase,
            activity: s.activity.clone(),
            ready,
            reason: if s.ready && !ready {
                "no readiness check completed within the deadline".into()
            } else {
                s.reason.clone()
            },
            last_answer_ms: s.last_answer.map(|t| t.elapsed().as_millis() as u64),
            postgres: s.detail.clone(),
            diverged: self
                .data_root
                .get()
                .map(|root| crate::rewind::kept_copies(root, &self.member))
                .unwrap_or_default(),
            steps: self.marks(),
        })
    }

    /// Status code and body for a request path.
    pub fn answer(&self, path: &str) -> (u16, String) {
        match path {
            HEALTH_LIVE_PATH => {
                let (live, why) = self.liveness();
                if live {
                    (200, format!("live: {why}\n"))
                } else {
                    (503, format!("not live: {why}\n"))
                }
            }
            // The agent serves: from now on liveness judges whether the member makes progress,
            // so the startup probe bounds only the agent's own start, not a copy or a recovery.
            HEALTH_STARTUP_PATH => {
                let activity = self.with(|s| s.activity.clone());
                (200, format!("started: {activity}\n"))
            }
            HEALTH_READY_PATH => {
                let st = self.status();
                if st.ready {
                    (200, format!("ready: {}\n", st.reason))
                } else {
                    (503, format!("not ready: {}\n", st.reason))
                }
            }
            STATUS_PATH => (
                200,
                serde_json::to_string(&self.status()).unwrap_or_default() + "\n",
            ),
            _ => (404, "not found\n".to_string()),
        }
    }
}

/// A replica's replay as readiness judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayLag {
    /// WAL received but not yet replayed (`pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn()`).
    pub bytes: u64,
    /// Replay is paused or a pause is requested (`pg_is_wal_replay_paused()`).
    pub paused: bool,
    /// How long replay has not advanced while WAL waits to be replayed (zero when none waits).
    pub stalled: Duration,
}

/// Follows a replica's replay position across checks on a monotonic clock, so a replay that
/// stopped advancing is told from an idle master (which sends nothing to replay).
#[derive(Debug, Clone, Default)]
pub struct ReplayWatch {
    last_replay: Option<i64>,
    advanced_at: Option<Instant>,
}

impl ReplayWatch {
    /// One reading at `now`: the received and replayed positions, and replay's pause.
    pub fn observe(
        &mut self,
        now: Instant,
        received: Option<i64>,
        replayed: Option<i64>,
        paused: bool,
    ) -> ReplayLag {
        let bytes = match (received, replayed) {
            (Some(r), Some(p)) if r > p => u64::try_from(r - p).unwrap_or(0),
            _ => 0,
        };
        // Nothing waiting counts as keeping up: the clock starts when WAL waits and replay
        // stands still.
        if bytes == 0 || replayed != self.last_replay || self.advanced_at.is_none() {
            self.advanced_at = Some(now);
        }
        self.last_replay = replayed;
        let stalled = match self.advanced_at {
            Some(at) if bytes > 0 => now.saturating_duration_since(at),
            _ => Duration::ZERO,
        };
        ReplayLag {
            bytes,
            paused,
            stalled,
        }
    }
}

/// Why a replica's replay keeps it from serving reads, or `None` when it keeps within the bound
/// (`max_bytes` not yet replayed, `max_stall` without progress while WAL waits).
pub fn replay_verdict(lag: &ReplayLag, max_bytes: u64, max_stall: Duration) -> Option<String> {
    let behind = (lag.bytes > max_bytes).then(|| {
        format!(
            "{} behind (bound {})",
            size_text(lag.bytes),
            size_text(max_bytes)
        )
    });
    match (lag.paused, behind) {
        (true, Some(behind)) => return Some(format!("replay paused, {behind}")),
        (true, None) => return Some("replay paused".into()),
        (false, Some(behind)) => return Some(format!("replay {behind}")),
        (false, None) => {}
    }
    if lag.bytes > 0 && lag.stalled > max_stall {
        return Some(format!(
            "replay has not advanced for {:.1} s with {} to replay (bound {} s)",
            lag.stalled.as_secs_f64(),
            size_text(lag.bytes),
            max_stall.as_secs()
        ));
    }
    None
}

/// A size in bytes as people read it: `512 B`, `1.5 KiB`, `18.5 MiB`, `16 MiB`, `2 GiB`.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            let text = format!("{v:.1}");
            return format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text));
        }
    }
    format!("{bytes} B")
}

/// Binds the endpoint now (so a bad address fails at start) and serves it in the background.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(io_err(format!("listen for health checks on {addr}")))?;
    crate::info!("health endpoint on http://{addr}{HEALTH_LIVE_PATH} and {HEALTH_READY_PATH}");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut len = 0;
                let read = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    while len < buf.len() {
                        match stream.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => len += n,
                        }
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let request = String::from_utf8_lossy(&buf[..len]);
                let (status, body) = match request_path(&request) {
                    Some(("GET" | "HEAD", path)) => health.answer(path),
                    Some(_) => (405, "method not allowed\n".to_string()),
                    None => (400, "bad request\n".to_string()),
                };
                let _ = stream.write_all(response(status, &body).as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(())
}

/// Method and path of an HTTP request's first line (query string dropped).
pub fn request_path(request: &str) -> Option<(&str, &str)> {
    let mut parts = request.lines().next()?.split_whitespace();
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next()?.starts_with("HTTP/").then_some(())?;
    Some((method, target.split('?').next().unwrap_or(target)))
}

/// A complete HTTP/1.1 response.
pub fn response(status: u16, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The status code of `GET path` at `addr`, for local mode and tests.
pub async fn probe(addr: SocketAddr, path: &str) -> Option<u16> {
    get(addr, path).await.map(|(code, _)| code)
}

/// Status code and body of `GET path` at `addr` (2 s deadline).
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), io)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            request_path("GET /readyz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/readyz"))
        );
        assert_eq!(request_path("garbage"), None);
    }

    #[test]
    fn status_lists_each_step_and_milestone_once_at_its_first_time_in_order() {
        let h = Health::new("pgset-1", Duration::from_secs(30));
        h.mark(milestone::FENCED);
        h.preparing(MemberPhase::BaseBackup, "base backup from the master");
        h.mark(milestone::DATA_MADE);
        h.postgres_started();
        h.accepted();
        h.accepted();
        h.set_step(MemberPhase::Streaming);
        h.set_ready(true, "streaming from the master");
        // A later return to a step (a rejoin copies again) keeps the first time.
        h.preparing(MemberPhase::BaseBackup, "base backup from the master");
        h.mark(milestone::FENCED);
        let status: serde_json::Value = serde_json::from_str(&h.answer(STATUS_PATH).1).unwrap();
        let steps: Vec<Mark> = serde_json::from_value(status["steps"].clone()).unwrap();
        let words: Vec<&str> = steps.iter().map(|m| m.step.as_str()).collect();
        assert_eq!(
            words,
            [
                "fence-held",
                "base-backup",
                "data-made",
                "starting",
                "postgres-accepting",
                "streaming",
                "first-ready",
            ]
        );
        let now = unix_ms(std::time::SystemTime::now());
        assert!(
            steps.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms)
                && steps
                    .iter()
                    .all(|m| m.at_unix_ms <= now && m.at_unix_ms + 60_000 > now),
            "{steps:?}"
        );
        assert!(status["steps"][0]["atUnixMs"].is_u64(), "{status}");
    }

    #[test]
    fn answers_follow_the_state() {
        let h = Health::new("pgset-1", Duration::from_millis(50));
        assert_eq!(h.answer("/healthz").0, 200, "preparing is live");
        assert_eq!(h.answer("/readyz").0, 503);
        assert_eq!(
            h.answer("/startupz").0,
            200,
            "the agent serves: liveness judges progress from now on"
        );
        h.postgres_started();
        h.accepted();
        h.set_ready(true, "accepts writes");
        assert_eq!(
            h.answer("/readyz"),
            (200, "ready: accepts writes\n".to_string())
        );
        assert_eq!(h.answer("/healthz").0, 200);
        std::thread::sleep(Duration::from_millis(80));
        let (code, body) = h.answer("/healthz");
        assert_eq!(code, 503, "no answer for longer than the timeout");
        assert!(body.contains("neither answered"), "{body}");
        h.accepted();
        assert_eq!(h.answer("/healthz").0, 200);
        h.stopping(Phase::Exited, "postgres exited");
        assert_eq!(h.answer("/healthz").0, 503);
        assert_eq!(h.answer("/other").0, 404);
        let status: serde_json::Value = serde_json::from_str(&h.answer("/status").1).unwrap();
        assert_eq!(status["phase"], "exited");
        assert_eq!(status["member"], "pgset-1");
        assert_eq!(status["ready"], false);
    }

    const LIMIT: Duration = Duration::from_secs(30);

    fn reading(bytes: u64) -> Option<BaseBackupReading> {
        Some(BaseBackupReading {
            bytes,
            total: None,
            at_ms: 0,
        })
    }

    #[test]
    fn recovery_that_makes_progress_is_live_and_one_that_makes_none_is_not() {
        let h = Health::new("pgset-0", LIMIT);
        h.postgres_started();
        h.accepted();
        let t0 = Instant::now();
        // A backend crashed: postgres refuses connections while it replays, and its processes
        // do I/O. Each sign of progress moves the clock on.
        assert!(h.liveness_at(t0 + Duration::from_secs(29)).0);
        h.progressed();
        let t1 = Instant::now();
        assert!(
            h.liveness_at(t1 + Duration::from_secs(29)).0,
            "progress within the timeout is alive, however long the recovery runs"
        );
        let (live, why) = h.liveness_at(t1 + Duration::from_secs(31));
        assert!(
            !live,
            "no answer and no progress for longer than the timeout"
        );
        assert!(why.contains("limit 30 s"), "{why}");
    }

    #[test]
    fn a_base_backup_is_live_while_it_grows_and_not_once_it_stops_growing() {
        let h = Health::new("pgset-1", LIMIT);
        h.preparing(MemberPhase::WaitingForMaster, "waiting for the master");
        assert!(
            h.liveness_at(Instant::now() + Duration::from_secs(3600)).0,
            "a wait the agent bounds itself is live"
        );
        h.preparing(MemberPhase::BaseBackup, "base backup from the master");
        let t0 = Instant::now();
        assert!(h.liveness_at(t0 + Duration::from_secs(29)).0);
        assert!(
            !h.liveness_at(t0 + Duration::from_secs(31)).0,
            "nothing copied"
        );
        h.set_base_backup(reading(1000));
        let t1 = Instant::now();
        assert!(h.liveness_at(t1 + Duration::from_secs(29)).0, "it grew");
        h.set_base_backup(reading(1000));
        let (live, why) = h.liveness_at(Instant::now() + Duration::from_secs(31));
        assert!(!live, "the same bytes again are no progress");
        assert!(why.contains("has not grown"), "{why}");
        h.set_base_backup(reading(5000));
        assert!(h.liveness_at(Instant::now() + Duration::from_secs(29)).0);
        // The same step again (a status update) keeps the clock; a new step restarts it.
        h.preparing(MemberPhase::BaseBackup, "base backup from the master");
        assert!(h.liveness_at(Instant::now() + Duration::from_secs(29)).0);
    }

    #[test]
    fn stopping_is_live_only_while_it_makes_progress_within_the_timeout() {
        let h = Health::new("pgset-0", LIMIT);
        h.postgres_started();
        h.accepted();
        h.stopping(Phase::Stopping, "shutting down");
        let t0 = Instant::now();
        assert!(h.liveness_at(t0 + Duration::from_secs(29)).0);
        let (live, why) = h.liveness_at(t0 + Duration::from_secs(31));
        assert!(
            !live,
            "a shutdown that neither ends nor progresses is not healthy"
        );
        assert!(why.starts_with("shutting down"), "{why}");
        h.progressed();
        assert!(h.liveness_at(Instant::now() + Duration::from_secs(29)).0);
        // A second request to stop does not restart the clock.
        h.stopping(Phase::Stopping, "shutting down");
        assert!(!h.liveness_at(Instant::now() + Duration::from_secs(31)).0);
    }

    #[test]
    fn replay_paused_or_behind_is_not_ready_and_catching_up_is() {
        let max = 16 << 20;
        let stall = Duration::from_secs(10);
        let mut w = ReplayWatch::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Idle master: nothing to replay, however long nothing moves.
        let lag = w.observe(at(0), Some(100), Some(100), false);
        assert_eq!(replay_verdict(&lag, max, stall), None);
        let lag = w.observe(at(60), Some(100), Some(100), false);
        assert_eq!(lag.stalled, Duration::ZERO);
        assert_eq!(replay_verdict(&lag, max, stall), None);
        // Paused: not ready, whatever the lag.
        let lag = w.observe(at(61), Some(100), Some(100), true);
        assert_eq!(
            replay_verdict(&lag, max, stall).as_deref(),
            Some("replay paused")
        );
        // Behind by more than the byte bound.
        let behind = 100 + (18 << 20) + (1 << 19);
        let lag = w.observe(at(62), Some(behind), Some(100), true);
        assert_eq!(
            replay_verdict(&lag, max, stall).as_deref(),
            Some("replay paused, 18.5 MiB behind (bound 16 MiB)")
        );
        let lag = w.observe(at(62), Some(behind), Some(100), false);
        assert_eq!(
            replay_verdict(&lag, max, stall).as_deref(),
            Some("replay 18.5 MiB behind (bound 16 MiB)")
        );
        // A little behind, replay standing still: ready until the seconds bound passes.
        let mut w = ReplayWatch::default();
        let lag = w.observe(at(100), Some(5000), Some(1000), false);
        assert_eq!(replay_verdict(&lag, max, stall), None);
        let lag = w.observe(at(109), Some(6000), Some(1000), false);
        assert_eq!(replay_verdict(&lag, max, stall), None);
        let lag = w.observe(at(111), Some(6000), Some(1000), false);
        let why = replay_verdict(&lag, max, stall).expect("stalled");
        assert!(
            why.starts_with("replay has not advanced for 11.0 s"),
            "{why}"
        );
        // Replay moves: ready again at once.
        let lag = w.observe(at(112), Some(6000), Some(2000), false);
        assert_eq!(replay_verdict(&lag, max, stall), None);
        // Caught up.
        let lag = w.observe(at(200), Some(6000), Some(6000), false);
        assert_eq!(lag, ReplayLag::default());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size_text(512), "512 B");
        assert_eq!(size_text(1536), "1.5 KiB");
        assert_eq!(size_text(16 << 20), "16 MiB");
        assert_eq!(size_text((18 << 20) + (1 << 19)), "18.5 MiB");
        assert_eq!(size_text(2 << 30), "2 GiB");
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let h = Health::new("pgset-0", DEFAULT_LIVENESS_TIMEOUT);
        serve(addr, h.clone()).await.unwrap();
        assert_eq!(probe(addr, "/readyz").await, Some(503));
        h.postgres_started();
        h.set_ready(true, "accepts writes");
        assert_eq!(probe(addr, "/readyz").await, Some(200));
        assert_eq!(probe(addr, "/healthz").await, Some(200));
    }
}
