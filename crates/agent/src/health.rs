//! The health endpoint: `GET /healthz` (the agent is working: bootstrapping, or postgres alive)
//! and `GET /readyz` (the member serves its role), as a tiny HTTP/1.1 responder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use pgset_spec::contract::{HEALTH_LIVE_PATH, HEALTH_READY_PATH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::{Result, io_err};

/// What the probes see, updated by the supervisor.
#[derive(Debug, Default)]
pub struct Health {
    live: AtomicBool,
    ready: AtomicBool,
    phase: Mutex<String>,
}

impl Health {
    /// A new state: not live, not ready.
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// Sets liveness and the phase shown in the body.
    pub fn set_live(&self, live: bool, phase: &str) {
        self.live.store(live, Ordering::SeqCst);
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_string();
        }
    }

    /// Sets readiness; logs when it flips.
    pub fn set_ready(&self, ready: bool) {
        if self.ready.swap(ready, Ordering::SeqCst) != ready {
            crate::info!(
                "{}",
                if ready {
                    "ready: serving its role"
                } else {
                    "not ready"
                }
            );
        }
    }

    /// Whether the member is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn phase(&self) -> String {
        self.phase.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Status code and body for a request path.
    pub fn answer(&self, path: &str) -> (u16, String) {
        let phase = self.phase();
        let (ok, what) = match path {
            HEALTH_LIVE_PATH => (self.live.load(Ordering::SeqCst), "live"),
            HEALTH_READY_PATH => (self.is_ready(), "ready"),
            _ => return (404, "not found\n".to_string()),
        };
        if ok {
            (200, format!("{what}: {phase}\n"))
        } else {
            (503, format!("not {what}: {phase}\n"))
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
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split_whitespace().nth(1)?.parse().ok()
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
        let h = Health::new();
        assert_eq!(h.answer("/healthz").0, 503);
        h.set_live(true, "bootstrapping");
        assert_eq!(
            h.answer("/healthz"),
            (200, "live: bootstrapping\n".to_string())
        );
        assert_eq!(h.answer("/readyz").0, 503);
        h.set_ready(true);
        assert_eq!(h.answer("/readyz").0, 200);
        assert_eq!(h.answer("/other").0, 404);
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let h = Health::new();
        serve(addr, h.clone()).await.unwrap();
        assert_eq!(probe(addr, "/readyz").await, Some(503));
        h.set_live(true, "running");
        h.set_ready(true);
        assert_eq!(probe(addr, "/readyz").await, Some(200));
        assert_eq!(probe(addr, "/healthz").await, Some(200));
    }
}
