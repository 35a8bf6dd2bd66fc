//! Exact count of the processes a process starts, from the kernel's process events connector.
//!
//! Polling `/proc` for children misses every child that lives shorter than the polling interval
//! (a `psql` that answers in a few milliseconds), and tracing with `strace -f` stops the traced
//! process on every system call, so it would change the CPU figure measured beside the count.
//! The proc connector (netlink, `NETLINK_CONNECTOR`, group `CN_IDX_PROC`) has the kernel send one
//! `PROC_EVENT_FORK` message per `fork`/`clone`, with the parent's and the child's thread group,
//! without touching the observed process. It needs `CAP_NET_ADMIN` (root). A lost message
//! (`ENOBUFS`) is recorded, so a count is either exact or reported as a lower bound.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::libc;
use nix::sys::socket::{NetlinkAddr, bind, setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

/// `CN_IDX_PROC` and `CN_VAL_PROC` (linux/connector.h).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN` (linux/cn_proc.h).
const PROC_CN_MCAST_LISTEN: u32 = 1;
/// `PROC_EVENT_FORK` (linux/cn_proc.h).
const PROC_EVENT_FORK: u32 = 1;
/// `NLMSG_DONE`, the type every connector message carries.
const NLMSG_DONE: u16 = 3;
/// Sizes of `struct nlmsghdr` and `struct cn_msg`.
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;

/// Process-creation counts per parent process, since [`ForkCounter::start`].
#[derive(Debug, Default)]
struct Counts {
    /// New processes (not threads) by the parent's thread-group id.
    by_parent: HashMap<i32, u64>,
    /// Whether the kernel dropped messages (the counts are then lower bounds).
    lost: bool,
}

/// Listens to the kernel's fork events in a thread and counts them per parent process.
pub struct ForkCounter {
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ForkCounter {
    /// Subscribes to the proc connector; fails when it is not available (not root, no
    /// `CONFIG_PROC_EVENTS`).
    pub fn start() -> Result<ForkCounter> {
        let socket = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::DGRAM,
            Some(Protocol::from(libc::NETLINK_CONNECTOR)),
        )
        .context("open a NETLINK_CONNECTOR socket")?;
        // Large enough that a burst of events system-wide is not dropped; needs CAP_NET_ADMIN
        // beyond rmem_max, and a smaller buffer only makes a loss (which is reported) likelier.
        let _ = setsockopt(&socket, sockopt::RcvBufForce, &(8 << 20));
        bind(socket.as_raw_fd(), &NetlinkAddr::new(0, CN_IDX_PROC))
            .context("join the proc connector's group (needs root)")?;
        socket
            .send(&subscribe_message(std::process::id()))
            .context("subscribe to process events (needs root)")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;

        let counts = Arc::new(Mutex::new(Counts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        let thread = {
            let counts = counts.clone();
            let stop = stop.clone();
            std::thread::spawn(move || listen(socket, &counts, &stop, ack_tx))
        };
        let counter = ForkCounter {
            counts,
            stop,
            thread: Some(thread),
        };
        // The kernel answers the subscription; its error code says whether it was accepted.
        match ack_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(0) => Ok(counter),
            Ok(err) => bail!("the kernel refused the process-events subscription (error {err})"),
            Err(_) => bail!("the kernel did not acknowledge the process-events subscription"),
        }
    }

    /// Processes `parent` started since the counter started, and whether the count is exact.
    pub fn count_of(&self, parent: i32) -> (u64, bool) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (c.by_parent.get(&parent).copied().unwrap_or(0), !c.lost)
    }
}

impl Drop for ForkCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(
    mut socket: Socket,
    counts: &Mutex<Counts>,
    stop: &AtomicBool,
    ack: std::sync::mpsc::Sender<u32>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match socket.read(&mut buf) {
            Ok(n) => {
                for event in parse(&buf[..n]) {
                    match event {
                        Event::Ack(err) => {
                            let _ = ack.send(err);
                        }
                        Event::Fork { parent_tgid } => {
                            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                            *c.by_parent.entry(parent_tgid).or_default() += 1;
                        }
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                counts.lock().unwrap_or_else(|p| p.into_inner()).lost = true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                counts.lock().unwrap_or_else(|p| p.into_inner()).lost = true;
                return;
            }
        }
    }
}

/// `nlmsghdr` + `cn_msg` + `PROC_CN_MCAST_LISTEN`.
fn subscribe_message(own_pid: u32) -> Vec<u8> {
    let len = NLMSG_HDR + CN_MSG_HDR + 4;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
    m.extend_from_slice(&own_pid.to_ne_bytes()); // nlmsg_pid
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes()); // id.idx
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes()); // id.val
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    m
}

/// What one connector message says, as far as counting needs.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// The answer to the subscription (`PROC_EVENT_NONE` with an error code, 0 = accepted).
    Ack(u32),
    /// A new process (not a thread) whose parent process is `parent_tgid`.
    Fork { parent_tgid: i32 },
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The events in one datagram (one or more netlink messages).
fn parse(datagram: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while let Some(len) = u32_at(rest, 0).map(|l| l as usize) {
        if len < NLMSG_HDR || len > rest.len() {
            break;
        }
        let msg = &rest[..len];
        // struct proc_event: what (u32), cpu (u32), timestamp_ns (u64), then the event data.
        let ev = NLMSG_HDR + CN_MSG_HDR;
        let data = ev + 16;
        match u32_at(msg, ev) {
            Some(0) => {
                // PROC_EVENT_NONE: the ack; event_data.ack.err.
                if let Some(err) = u32_at(msg, data) {
                    out.push(Event::Ack(err));
                }
            }
            Some(PROC_EVENT_FORK) => {
                // event_data.fork: parent_pid, parent_tgid, child_pid, child_tgid.
                if let (Some(ptgid), Some(cpid), Some(ctgid)) = (
                    u32_at(msg, data + 4),
                    u32_at(msg, data + 8),
                    u32_at(msg, data + 12),
                ) && cpid == ctgid
                {
                    out.push(Event::Fork {
                        parent_tgid: ptgid as i32,
                    });
                }
            }
            _ => {}
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork_message(parent_tgid: i32, child_pid: i32, child_tgid: i32) -> Vec<u8> {
        let mut m = subscribe_message(0);
        m.truncate(NLMSG_HDR + CN_MSG_HDR);
        m.extend_from_slice(&PROC_EVENT_FORK.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&0u64.to_ne_bytes());
        for v in [parent_tgid + 1, parent_tgid, child_pid, child_tgid] {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn counts_processes_not_threads() {
        let mut datagram = fork_message(100, 200, 200);
        datagram.extend(fork_message(100, 201, 100)); // a thread of 100
        datagram.extend(fork_message(7, 300, 300));
        assert_eq!(
            parse(&datagram),
            vec![
                Event::Fork { parent_tgid: 100 },
                Event::Fork { parent_tgid: 7 }
            ]
        );
        assert_eq!(
            parse(&datagram[..10]),
            vec![],
            "a truncated message is ignored"
        );
    }

    /// On a real kernel: a shell that starts exactly 25 processes is counted as 25.
    #[test]
    fn counts_a_known_number_of_children_exactly() {
        let counter = match ForkCounter::start() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: the proc connector is not available here: {e:#}");
                return;
            }
        };
        let child = pgset_command::HostCommand::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 25 ]; do /bin/true; i=$((i+1)); done; :",
            ])
            .quiet()
            .start()
            .unwrap();
        let pid = child.pids()[0] as i32;
        assert!(child.wait().unwrap().status.success());
        // The events arrive asynchronously: wait for the listener to catch up.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while counter.count_of(pid).0 < 25 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(counter.count_of(pid), (25, true));
    }
}
