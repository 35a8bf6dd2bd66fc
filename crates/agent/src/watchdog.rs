//! The watchdog: a small process of its own (`pgset-agent watchdog`, started by the agent next
//! to postgres) that ends the postmaster when the agent can no longer answer for it.
//!
//! The agent's own rules (the renew deadline, the stop escalation) need the agent to run. A
//! frozen agent (SIGSTOP, a stalled runtime) stops renewing the leader record but cannot stop
//! its postgres, which would go on acknowledging commits after a replica took the record; a
//! killed agent (outside a container, whose teardown would take postgres with it) leaves an
//! orphan postmaster serving. The watchdog reads the agent's heartbeats on its stdin:
//!
//! - `arm <ms>`: from now on, no heartbeat for `<ms>` means the agent is stalled (sent by a
//!   master: `ms` is the stop escalation's total, so the timing invariant
//!   `renew_deadline + worst_case_stop < lease_duration` bounds this path too);
//! - `beat`: the agent runs (sent every second);
//! - `disarm`: heartbeats no longer bound postgres (a replica);
//! - end of input: the agent is gone.
//!
//! On a stalled armed agent or a gone agent, it SIGKILLs the postmaster's children and then the
//! postmaster — only when the pid still is that postmaster (its start time unchanged), so a
//! recycled pid is never signalled — and exits. It never starts anything.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often the agent sends `beat`.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// What the watchdog read on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `arm <ms>`.
    Arm(Duration),
    /// `beat`.
    Beat,
    /// `disarm`.
    Disarm,
}

/// Parses one line of the agent's heartbeats; `None` for anything else (ignored).
pub fn parse(line: &str) -> Option<Message> {
    let line = line.trim();
    match line {
        "beat" => Some(Message::Beat),
        "disarm" => Some(Message::Disarm),
        _ => line
            .strip_prefix("arm ")
            .and_then(|ms| ms.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| Message::Arm(Duration::from_millis(ms))),
    }
}

/// Why the watchdog acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do yet; look again within this long.
    Wait(Duration),
    /// The armed agent sent no heartbeat for this long.
    Stalled(Duration),
}

/// The armed deadline's verdict at `now`, the last heartbeat at `last` (pure).
pub fn judge(armed: Option<Duration>, last: Instant, now: Instant) -> Verdict {
    let Some(limit) = armed else {
        return Verdict::Wait(Duration::from_secs(3600));
    };
    let quiet = now.saturating_duration_since(last);
    if quiet >= limit {
        Verdict::Stalled(quiet)
    } else {
        Verdict::Wait(limit - quiet)
    }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command: state is field 3; start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The children of `pid` (from `/proc/*/stat`): a postmaster's backends, WAL senders and
/// auxiliary processes.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// SIGKILLs the postmaster `pid` (started at `started`) and its children, children first (a
/// backend must not commit once the postmaster is gone); nothing when the pid is another
/// process now.
fn end_postmaster(pid: i32, started: u64, why: &str) {
    if start_time(pid) != Some(started) {
        return;
    }
    eprintln!(
        "{} pgset-agent: watchdog: {why}: killing postmaster {pid} and its processes",
        crate::log::timestamp()
    );
    for child in children(pid) {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// `pgset-agent watchdog --postmaster PID`: runs until the postmaster is gone, the agent is
/// gone, or an armed agent stalls. Returns the exit code.
pub fn run(postmaster: i32) -> i32 {
    let Some(started) = start_time(postmaster) else {
        return 0;
    };
    let (tx, rx) = mpsc::channel::<Option<Message>>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if let Some(m) = parse(&l) {
                        let _ = tx.send(Some(m));
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut armed: Option<Duration> = None;
    let mut last = Instant::now();
    loop {
        if start_time(postmaster) != Some(started) {
            return 0;
        }
        let wait = match judge(armed, last, Instant::now()) {
            Verdict::Stalled(quiet) => {
                end_postmaster(
                    postmaster,
                    started,
                    &format!(
                        "the agent sent no heartbeat for {} ms (limit {} ms) while it held the master role",
                        quiet.as_millis(),
                        armed.unwrap_or_default().as_millis()
                    ),
                );
                return 0;
            }
            // The postmaster's own exit is looked for every second.
            Verdict::Wait(d) => d.min(Duration::from_secs(1)),
        };
        match rx.recv_timeout(wait) {
            Ok(Some(Message::Beat)) => last = Instant::now(),
            Ok(Some(Message::Arm(limit))) => {
                armed = Some(limit);
                last = Instant::now();
            }
            Ok(Some(Message::Disarm)) => armed = None,
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                end_postmaster(postmaster, started, "the agent is gone");
                return 0;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The agent's side: the watchdog process and the pipe to it.
pub struct Handle {
    child: Option<std::process::Child>,
    stdin: Option<std::process::ChildStdin>,
}

impl Handle {
    /// Starts `pgset-agent watchdog` (this binary) for `postmaster`. A plain child process: the
    /// command crate runs commands to completion or reads their output, and this one must keep
    /// a pipe to its stdin open for as long as postgres runs.
    #[allow(clippy::disallowed_methods)]
    pub fn start(postmaster: i32) -> std::io::Result<Handle> {
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .arg("watchdog")
            .arg("--postmaster")
            .arg(postmaster.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Handle {
            child: Some(child),
            stdin,
        })
    }

    /// Sends `beat` every [`BEAT_EVERY`] from a task of its own (so no other work of the agent
    /// delays it) until the task is aborted.
    pub fn beat(handle: std::sync::Arc<std::sync::Mutex<Handle>>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(BEAT_EVERY);
            loop {
                every.tick().await;
                if let Ok(mut h) = handle.lock() {
                    h.send(&Message::Beat);
                }
            }
        })
    }

    /// Sends one message; a watchdog that is gone is not an error (postgres ended).
    pub fn send(&mut self, m: &Message) {
        use std::io::Write as _;
        let line = match m {
            Message::Arm(d) => format!("arm {}\n", d.as_millis()),
            Message::Beat => "beat\n".to_string(),
            Message::Disarm => "disarm\n".to_string(),
        };
        if let Some(stdin) = self.stdin.as_mut()
            && stdin.write_all(line.as_bytes()).is_err()
        {
            self.stdin = None;
        }
    }
}

impl Drop for Handle {
    /// The agent lets the watchdog go once postgres ended (it then exits on its own).
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            // Reaped off the agent's threads: it exits at once once postgres is gone.
            std::thread::spawn(move || child.wait());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_messages_parse_and_anything_else_is_ignored() {
        assert_eq!(parse("beat"), Some(Message::Beat));
        assert_eq!(parse("disarm\n"), Some(Message::Disarm));
        assert_eq!(
            parse("arm 5000"),
            Some(Message::Arm(Duration::from_millis(5000)))
        );
        for other in ["arm 0", "arm x", "arm", "", "kill"] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn only_an_armed_agent_quiet_for_its_limit_is_stalled() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(5);
        assert!(matches!(
            judge(None, t0, t0 + Duration::from_secs(60)),
            Verdict::Wait(_)
        ));
        assert_eq!(
            judge(Some(limit), t0, t0 + Duration::from_secs(2)),
            Verdict::Wait(Duration::from_secs(3))
        );
        assert_eq!(
            judge(Some(limit), t0, t0 + Duration::from_secs(5)),
            Verdict::Stalled(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_process_start_time_is_read_and_a_missing_pid_has_none() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(start_time(i32::MAX), None);
    }
}
