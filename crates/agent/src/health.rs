//! The health endpoint and the state behind it. `GET /healthz`: the agent is working (preparing
//! the data directory, postgres starting up, or postgres answering new connections within the
//! liveness timeout). `GET /readyz`: the member serves its role, judged by a check younger than
//! the readiness deadline (no answer in time is not ready). `GET /status`: the member's state as
//! JSON, with the reason it is not ready. Answers come from the cached state, never from a query
//! made while the prober waits.

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
}

#[derive(Debug)]
struct State {
    started: bool,
    phase: Phase,
    activity: String,
    running_since: Instant,
    last_answer: Option<Instant>,
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
}

impl Health {
    /// A new state of `member` (preparing, not ready) with the liveness timeout.
    pub fn new(member: &str, liveness_timeout: Duration) -> Arc<Health> {
        Arc::new(Health {
            member: member.to_string(),
            state: Mutex::new(State {
                started: false,
                phase: Phase::Preparing,
                activity: "starting".into(),
                running_since: Instant::now(),
                last_answer: None,
                ready: false,
                reason: "starting".into(),
                checked_at: None,
                detail: serde_json::Map::new(),
            }),
            liveness_timeout,
            step: tokio::sync::watch::Sender::new(MemberPhase::Fencing),
            copied: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Records the member's step; watchers see it only when it changes.
    pub fn set_step(&self, step: MemberPhase) {
        self.step.send_if_modified(|current| {
            let changed = *current != step;
            *current = step;
            changed
        });
    }

    /// The member's step now.
    pub fn step(&self) -> MemberPhase {
        *self.step.borrow()
    }

    /// Follows the member's step (the phase annotation's writer).
    pub fn steps(&self) -> tokio::sync::watch::Receiver<MemberPhase> {
        self.step.subscribe()
    }

    /// Records how far a base backup has come (`None` once it is over).
    pub fn set_base_backup(&self, reading: Option<BaseBackupReading>) {
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
        self.set_step(step);
        self.with(|s| {
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
            s.running_since = Instant::now();
            s.last_answer = None;
        });
    }

    /// postgres answered (a new connection succeeded, or it is visibly starting up).
    pub fn answered(&self) {
        self.with(|s| s.last_answer = Some(Instant::now()));
    }

    /// postgres accepted a connection on prepared data: the member has started (for good).
    pub fn accepted(&self) {
        self.with(|s| {
            s.last_answer = Some(Instant::now());
            s.started = true;
        });
    }

    /// A shutdown was requested, or postgres exited.
    pub fn stopping(&self, phase: Phase, activity: &str) {
        self.set_step(MemberPhase::Stopping);
        self.with(|s| {
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
        self.with(|s| match s.phase {
            Phase::Preparing | Phase::Stopping => (true, s.activity.clone()),
            Phase::Exited => (false, s.activity.clone()),
            Phase::Running => {
                let since = s.last_answer.unwrap_or(s.running_since);
                let quiet = since.elapsed();
                if quiet <= self.liveness_timeout {
                    (true, s.activity.clone())
                } else {
                    (
                        false,
                        format!(
                            "postgres has not answered a new connection for {} s (limit {} s)",
                            quiet.as_secs(),
                            self.liveness_timeout.as_secs()
                        ),
                    )
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
            HEALTH_STARTUP_PATH => {
                let (started, activity) = self.with(|s| (s.started, s.activity.clone()));
                if started {
                    (200, "started\n".to_string())
                } else {
                    (503, format!("starting: {activity}\n"))
                }
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
    fn answers_follow_the_state() {
        let h = Health::new("pgset-1", Duration::from_millis(50));
        assert_eq!(h.answer("/healthz").0, 200, "preparing is live");
        assert_eq!(h.answer("/readyz").0, 503);
        assert_eq!(h.answer("/startupz").0, 503, "not started while preparing");
        h.postgres_started();
        h.answered();
        assert_eq!(h.answer("/startupz").0, 503, "starting up is not started");
        h.accepted();
        assert_eq!(h.answer("/startupz").0, 200);
        h.set_ready(true, "accepts writes");
        assert_eq!(
            h.answer("/readyz"),
            (200, "ready: accepts writes\n".to_string())
        );
        assert_eq!(h.answer("/healthz").0, 200);
        std::thread::sleep(Duration::from_millis(80));
        let (code, body) = h.answer("/healthz");
        assert_eq!(code, 503, "no answer for longer than the timeout");
        assert!(body.contains("has not answered"), "{body}");
        h.answered();
        assert_eq!(h.answer("/healthz").0, 200);
        h.stopping(Phase::Exited, "postgres exited");
        assert_eq!(h.answer("/healthz").0, 503);
        assert_eq!(h.answer("/other").0, 404);
        let status: serde_json::Value = serde_json::from_str(&h.answer("/status").1).unwrap();
        assert_eq!(status["phase"], "exited");
        assert_eq!(status["member"], "pgset-1");
        assert_eq!(status["ready"], false);
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
