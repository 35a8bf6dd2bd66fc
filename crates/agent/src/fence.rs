//! The member's write fence: what proves that no other PostgreSQL writes this member's data
//! directory, taken before PostgreSQL starts and held for as long as it runs.
//!
//! Two locks, both always taken in Kubernetes mode:
//!
//! - An exclusive `flock` on `<data root>/<pod>.lock` (mode 0600, never deleted), holding the
//!   holder's pid, pod, pod UID and host. Local processes conflict on it directly; on NFS, Linux
//!   emulates `flock` with a server-side lock (NFSv4 lock state, NLM on v3), so a process on
//!   another host conflicts too, unless the volume is mounted with `local_lock=flock|all`. In
//!   local mode a held lock is an immediate refusal; in Kubernetes mode the agent waits for it
//!   (an NFS server frees the lock of a client that vanished when the client's NFS lease expires).
//! - A `coordination.k8s.io/v1` Lease `<pod>-member` whose `holderIdentity` is the pod's UID, so
//!   two incarnations of one pod name (a pod force-deleted on a lost node, and its replacement)
//!   never both hold it. A holder renews it every `duration/3` (at most 10 s). A contender takes
//!   it when it is released (no holder) or when its record (holder, renew time, resourceVersion)
//!   has not changed for `leaseDurationSeconds` measured on the contender's own monotonic clock:
//!   wall clocks of different hosts are never compared (client-go's leader-election rule). Every
//!   write carries the observed `resourceVersion`, so of two contenders exactly one wins. A
//!   Lease already held by this pod's own UID is taken at once: the kubelet restarts a container
//!   only after all its processes are gone.
//!   A holder whose renewals have failed for `duration - duration/3` since the last renewal it
//!   sent gives the fence up ([`Fence::lost`] resolves) and must stop PostgreSQL at once: that is
//!   `duration/3` before any contender can take the Lease.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use pgset_spec::contract::{self, AgentMode};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::kube_api::PodApi;
use crate::settings::Settings;
use crate::{Error, Result, io_err};

/// Added to the pod's `terminationGracePeriodSeconds` to make the Lease duration.
pub const LEASE_MARGIN_OVER_GRACE: Duration = Duration::from_secs(30);
/// The longest interval between two renewals.
pub const MAX_RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// The Lease duration for a pod with this grace period: grace + 30 s. A holder that is being
/// deleted keeps PostgreSQL up to the grace period, and the kubelet kills it at the end of it;
/// a Lease that outlives the grace period cannot be taken while that PostgreSQL may still run,
/// even when its agent could not reach the API to release it.
pub fn lease_duration_for_grace(grace_seconds: i64) -> Duration {
    Duration::from_secs(grace_seconds.max(0) as u64) + LEASE_MARGIN_OVER_GRACE
}

/// How often a holder renews: a third of the duration, at most [`MAX_RENEW_INTERVAL`].
pub fn renew_interval(duration: Duration) -> Duration {
    (duration / 3).min(MAX_RENEW_INTERVAL)
}

/// How long renewals may fail, counted from the last renewal that succeeded, before the holder
/// gives the fence up: the duration minus a safety margin of a third of it, which is the time
/// PostgreSQL's fast shutdown has before a contender may take the Lease.
pub fn loss_after(duration: Duration) -> Duration {
    duration - duration / 3
}

/// Timings of the fence; the defaults suit a pod, tests shorten them.
#[derive(Debug, Clone)]
pub struct FenceOptions {
    /// The Lease duration; `None`: the pod's `terminationGracePeriodSeconds` + 30 s, read from
    /// the pod through the API.
    pub lease_duration: Option<Duration>,
    /// The renewal interval; `None`: [`renew_interval`] of the duration.
    pub renew_every: Option<Duration>,
    /// How often a contender looks at a held Lease or lock again.
    pub poll_every: Duration,
    /// How long a contender waits for another holder; `None`: twice the duration plus 30 s,
    /// enough for a holder that vanished to expire.
    pub wait_timeout: Option<Duration>,
}

impl Default for FenceOptions {
    fn default() -> FenceOptions {
        FenceOptions {
            lease_duration: None,
            renew_every: None,
            poll_every: Duration::from_secs(2),
            wait_timeout: None,
        }
    }
}

/// What [`Fence::clear_stale_postmaster_pid`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum StalePid {
    /// There is no `postmaster.pid`.
    Absent,
    /// A live postmaster in this PID namespace owns the directory; the file was left alone.
    LivePostmaster(i32),
    /// The stale file was renamed to this path, its content kept.
    Renamed(PathBuf),
}

/// What [`Fence::clear_stale_socket_lock`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum StaleSocketLock {
    /// There is no `.s.PGSQL.<port>.lock`.
    Absent,
    /// A live postmaster on this member's data directory holds it; left alone.
    LivePostmaster(i32),
    /// It names another data directory (another server's socket); left alone.
    Foreign(String),
    /// It named this member's data directory and no postmaster of it runs: removed. The pid it
    /// named, which may belong to an unrelated process now.
    Removed(i32),
}

/// The held fence. Keep it alive for as long as PostgreSQL runs; dropping it without
/// [`Fence::release`] stops renewing (the Lease then expires) and frees the lock.
#[derive(Debug)]
pub struct Fence {
    lock: Flock<File>,
    lock_path: PathBuf,
    pgdata: PathBuf,
    description: String,
    lease: Option<LeaseHold>,
}

/// The state shared between the fence and its renewal task.
#[derive(Debug)]
struct LeaseHold {
    api: PodApi,
    name: String,
    identity: String,
    /// The Lease as last written by this holder (its `resourceVersion` is the one to send).
    current: Arc<Mutex<Lease>>,
    lost: watch::Receiver<Option<String>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Fence {
    /// Takes the fence for `settings`' member: the lock file always, and in Kubernetes mode the
    /// member's Lease through `api` (required there). In local mode a held lock is refused at
    /// once; in Kubernetes mode the agent waits up to the wait timeout for the other holder.
    /// The data root must exist.
    pub async fn acquire(
        settings: &Settings,
        api: Option<&PodApi>,
        opts: FenceOptions,
    ) -> Result<Fence> {
        let pgdata = settings.pgdata();
        let lock_path = lock_path(settings);
        let me = Holder::me(settings);
        let mut lease_plan = None;
        let mut deadline = None;
        if settings.env.mode == AgentMode::Kubernetes {
            let api = api.ok_or_else(|| Error::Fence {
                path: pgdata.clone(),
                problem: "Kubernetes mode needs the API client to hold the member's Lease".into(),
            })?;
            let identity = settings
                .pod_uid()
                .map(str::to_string)
                .ok_or_else(|| Error::Env {
                    var: contract::env::POD_UID,
                    problem: "missing; in a pod set it from the downward API (metadata.uid): \
                          it is the holder identity of the member's Lease"
                        .into(),
                })?;
            let duration = match opts.lease_duration {
                Some(d) => d,
                None => lease_duration_for_grace(
                    api.termination_grace_seconds(&settings.pod_name).await?,
                ),
            };
            let wait = opts
                .wait_timeout
                .unwrap_or(duration * 2 + LEASE_MARGIN_OVER_GRACE);
            deadline = Some(Instant::now() + wait);
            lease_plan = Some((api.clone(), identity, duration));
        }

        let lock = take_lock(&lock_path, &pgdata, &me, deadline, opts.poll_every).await?;

        let lease = match lease_plan {
            None => None,
            Some((api, identity, duration)) => {
                let name = contract::member_lease_name(&settings.pod_name);
                let deadline = deadline.unwrap_or_else(Instant::now);
                let (lease, sent) = acquire_lease(
                    &api,
                    &name,
                    &identity,
                    duration,
                    settings,
                    deadline,
                    opts.poll_every,
                )
                .await?;
                let renew = opts.renew_every.unwrap_or_else(|| renew_interval(duration));
                Some(LeaseHold::start(
                    api, name, identity, lease, sent, duration, renew,
                ))
            }
        };
        let fence = Fence {
            lock,
            lock_path,
            pgdata,
            description: match &lease {
                Some(l) => format!("{me}, holding the Lease {}", l.name),
                None => me.to_string(),
            },
            lease,
        };
        crate::info!(
            "write fence taken on {}: {}",
            fence.pgdata.display(),
            fence.description
        );
        Ok(fence)
    }

    /// Who holds the fence, for log lines and status.
    pub fn holder_description(&self) -> &str {
        &self.description
    }

    /// The data directory this fence guards.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Resolves, with the reason, when the fence can no longer be held (renewals failed for too
    /// long, or another holder took or deleted the Lease). The caller must then stop PostgreSQL
    /// at once (fast shutdown). Never resolves in local mode: the lock file cannot be lost while
    /// this process lives.
    pub async fn lost(&self) -> String {
        let Some(hold) = &self.lease else {
            return std::future::pending().await;
        };
        let mut rx = hold.lost.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the Lease renewal task stopped".to_string(),
        }
    }

    /// Whether the fence is still held right now: the Lease (if any) not lost, and the lock
    /// file at its path still the file this process locked.
    pub fn check_held(&self) -> Result<()> {
        if let Some(hold) = &self.lease
            && let Some(reason) = hold.lost.borrow().clone()
        {
            return Err(Error::Fence {
                path: self.pgdata.clone(),
                problem: format!("the write fence was lost: {reason}"),
            });
        }
        let mine = self
            .lock
            .metadata()
            .map_err(io_err(format!("inspect {}", self.lock_path.display())))?;
        let same = fs::metadata(&self.lock_path)
            .is_ok_and(|now| now.dev() == mine.dev() && now.ino() == mine.ino());
        if !same {
            return Err(Error::Fence {
                path: self.pgdata.clone(),
                problem: format!(
                    "the lock file {} was removed or replaced while this agent held it, so it no \
                     longer keeps other writers out; stop this member and find who changed it",
                    self.lock_path.display()
                ),
            });
        }
        Ok(())
    }

    /// Handles the socket lock file `<socket_dir>/.s.PGSQL.<port>.lock` left by a PostgreSQL
    /// that no longer runs. It lives in the pod's socket volume, which outlives a container, and
    /// names a pid that an unrelated process of the new container can have: PostgreSQL would then
    /// refuse to start ("lock file already exists"). Only while the fence is held, only when the
    /// file names this member's data directory (its second line, as PostgreSQL writes it) and no
    /// live postmaster of that directory runs, it is removed (a lock, not data). Call it after
    /// [`Fence::clear_stale_postmaster_pid`].
    pub fn clear_stale_socket_lock(&self, socket_dir: &Path, port: u16) -> Result<StaleSocketLock> {
        self.check_held()?;
        let path = socket_dir.join(format!(".s.PGSQL.{port}.lock"));
        let content = match fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StaleSocketLock::Absent);
            }
            Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
        };
        let mut lines = content.lines();
        let pid = lines
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
            .map(i32::abs)
            .unwrap_or(0);
        let data_dir = lines.next().unwrap_or_default().trim().to_string();
        if Path::new(&data_dir) != self.pgdata {
            crate::warn!(
                "{} names the data directory `{data_dir}`, not this member's: left alone",
                path.display()
            );
            return Ok(StaleSocketLock::Foreign(data_dir));
        }
        if let Some(live) = crate::datadir::live_postmaster(&self.pgdata) {
            return Ok(StaleSocketLock::LivePostmaster(live));
        }
        fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
        crate::info!(
            "{} was left by this member's postmaster that no longer runs (pid {pid}); the write \
             fence is held: removed it",
            path.display()
        );
        Ok(StaleSocketLock::Removed(pid))
    }

    /// Handles a `postmaster.pid` left in `pgdata` by a PostgreSQL that no longer runs: only while
    /// the fence is held (which proves no other writer exists) and only when no live postmaster
    /// in this PID namespace owns the directory, renames it to `postmaster.pid.stale` (replacing
    /// an older one, keeping the content) so PostgreSQL does not mistake an unrelated live
    /// process with the recorded pid for its predecessor. Never deletes it.
    pub fn clear_stale_postmaster_pid(&self, pgdata: &Path) -> Result<StalePid> {
        if pgdata != self.pgdata {
            return Err(Error::Fence {
                path: pgdata.to_path_buf(),
                problem: format!(
                    "this fence guards {}, not this directory; its postmaster.pid is left alone",
                    self.pgdata.display()
                ),
            });
        }
        self.check_held()?;
        let pid_file = pgdata.join("postmaster.pid");
        let content = match fs::read_to_string(&pid_file) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StalePid::Absent),
            Err(e) => return Err(io_err(format!("read {}", pid_file.display()))(e)),
        };
        if let Some(pid) = crate::datadir::live_postmaster(pgdata) {
            crate::info!(
                "{} names the live postmaster {pid}; leaving it alone",
                pid_file.display()
            );
            return Ok(StalePid::LivePostmaster(pid));
        }
        let stale = pgdata.join("postmaster.pid.stale");
        fs::rename(&pid_file, &stale).map_err(io_err(format!(
            "rename {} to {}",
            pid_file.display(),
            stale.display()
        )))?;
        crate::info!(
            "{} was left by a postmaster that no longer runs (pid {}); the write fence is held, \
             so no other server uses this directory: kept it as {}",
            pid_file.display(),
            content.lines().next().unwrap_or("?").trim(),
            stale.display()
        );
        Ok(StalePid::Renamed(stale))
    }

    /// Gives the fence up after a clean shutdown, once PostgreSQL has stopped: clears the
    /// Lease's holder so the next pod starts at once, and frees the lock.
    pub async fn release(mut self) -> Result<()> {
        let result = match self.lease.take() {
            Some(hold) => hold.release().await,
            None => Ok(()),
        };
        let path = self.lock_path.clone();
        if let Err((_, errno)) = self.lock.unlock() {
            crate::warn!(
                "unlocking {}: {errno}; the lock ends with this process",
                path.display()
            );
        }
        result
    }
}

/// `<data root>/<pod>.lock`.
pub fn lock_path(settings: &Settings) -> PathBuf {
    settings
        .env
        .data_root
        .join(format!("{}.lock", settings.pod_name))
}

/// Who a lock holder is, as written into the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    pid: u32,
    pod: String,
    uid: Option<String>,
    host: String,
}

impl Holder {
    fn me(settings: &Settings) -> Holder {
        Holder {
            pid: std::process::id(),
            pod: settings.pod_name.clone(),
            uid: settings.pod_uid().map(str::to_string),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".into()),
        }
    }

    fn to_file(&self) -> String {
        format!(
            "pid={}\npod={}\nuid={}\nhost={}\n",
            self.pid,
            self.pod,
            self.uid.as_deref().unwrap_or("-"),
            self.host
        )
    }

    fn from_file(text: &str) -> Option<Holder> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(Holder {
            pid: field("pid")?.parse().ok()?,
            pod: field("pod")?.to_string(),
            uid: field("uid").filter(|u| *u != "-").map(str::to_string),
            host: field("host")?.to_string(),
        })
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "agent pid {} of {}", self.pid, self.pod)?;
        if let Some(uid) = &self.uid {
            write!(f, " (pod UID {uid})")?;
        }
        write!(f, " on host {}", self.host)
    }
}

/// The holder recorded in a held lock file, in words.
fn recorded_holder(lock_path: &Path) -> String {
    fs::read_to_string(lock_path)
        .ok()
        .and_then(|t| Holder::from_file(&t))
        .map_or_else(
            || "unknown (it wrote no holder)".to_string(),
            |h| h.to_string(),
        )
}

/// Takes the lock file: once (local mode, `deadline` None) or until `deadline`.
async fn take_lock(
    lock_path: &Path,
    pgdata: &Path,
    me: &Holder,
    deadline: Option<Instant>,
    poll: Duration,
) -> Result<Flock<File>> {
    let mut last_logged: Option<String> = None;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_path)
            .map_err(io_err(format!(
                "open the lock file {}",
                lock_path.display()
            )))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let text = me.to_file();
                lock.set_len(0)
                    .and_then(|()| lock.write_all_at(text.as_bytes(), 0))
                    .and_then(|()| lock.sync_data())
                    .map_err(io_err(format!(
                        "record the holder in {}",
                        lock_path.display()
                    )))?;
                return Ok(lock);
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                let holder = recorded_holder(lock_path);
                let Some(deadline) = deadline.filter(|d| Instant::now() < *d) else {
                    return Err(Error::Fence {
                        path: pgdata.to_path_buf(),
                        problem: format!(
                            "the data directory is in use: another agent holds its write lock {} \
                             (holder: {holder}){}. Stop that agent (or the set it belongs to) \
                             before starting this member; two PostgreSQL servers must never \
                             write one data directory. Nothing was changed",
                            lock_path.display(),
                            if deadline.is_some() {
                                " and kept it for the whole wait"
                            } else {
                                ""
                            }
                        ),
                    });
                };
                if last_logged.as_deref() != Some(holder.as_str()) {
                    crate::info!(
                        "waiting for the write lock {}: held by {holder}",
                        lock_path.display()
                    );
                    last_logged = Some(holder);
                }
                sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
            Err((_, errno)) => {
                return Err(Error::Fence {
                    path: pgdata.to_path_buf(),
                    problem: format!(
                        "cannot lock {}: {errno}; the data volume must support file locks (on \
                         NFS: NFSv4, or NFSv3 with lockd running, and no `nolock` or \
                         `local_lock` mount option)",
                        lock_path.display()
                    ),
                });
            }
        }
    }
}

/// A Lease's record as a contender observes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew_time: Option<String>,
    resource_version: Option<String>,
}

impl Observed {
    fn of(lease: &Lease) -> Observed {
        let spec = lease.spec.as_ref();
        Observed {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default(),
            renew_time: spec.and_then(|s| s.renew_time.as_ref().map(|t| t.0.to_string())),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn duration_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// The Lease as first created by `identity`.
fn new_lease(name: &str, identity: &str, duration: Duration, settings: &Settings) -> Lease {
    let labels = [
        (contract::labels::NAME, contract::APP_NAME.to_string()),
        (contract::labels::INSTANCE, settings.env.cluster.clone()),
        (contract::labels::MANAGED_BY, contract::APP_NAME.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let now = now_micro();
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(duration_seconds(duration)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// `observed` taken over by `identity` (same `resourceVersion`, so the write fails if it changed).
fn taken_over(observed: &Lease, identity: &str, duration: Duration) -> Lease {
    let mut lease = observed.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let previous = spec.holder_identity.clone().unwrap_or_default();
    let now = now_micro();
    if previous != identity {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.acquire_time = Some(now.clone());
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(duration_seconds(duration));
    spec.renew_time = Some(now);
    lease
}

/// Acquires the Lease by client-go's rule; returns it as written and the instant the winning
/// request was sent (the start of this holder's term).
async fn acquire_lease(
    api: &PodApi,
    name: &str,
    identity: &str,
    duration: Duration,
    settings: &Settings,
    deadline: Instant,
    poll: Duration,
) -> Result<(Lease, Instant)> {
    let pgdata = settings.pgdata();
    // The record last seen and when (this agent's monotonic clock) it was first seen so.
    let mut seen: Option<(Observed, Instant)> = None;
    let mut logged_holder: Option<String> = None;
    loop {
        let sent = Instant::now();
        let Some(current) = api.get_lease(name).await? else {
            if let Some(lease) = api
                .create_lease(&new_lease(name, identity, duration, settings))
                .await?
            {
                return Ok((lease, sent));
            }
            continue; // created by someone else meanwhile: observe it
        };
        let record = Observed::of(&current);
        let held_by_other = !record.holder.is_empty() && record.holder != identity;
        let first_seen = match &seen {
            Some((r, at)) if *r == record => *at,
            _ => {
                seen = Some((record.clone(), sent));
                sent
            }
        };
        let lease_duration = current
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .map_or(duration, |s| Duration::from_secs(s.max(0) as u64));
        let expired = Instant::now().saturating_duration_since(first_seen) >= lease_duration;
        if !held_by_other || expired {
            if held_by_other {
                crate::warn!(
                    "the Lease {name} held by pod UID {} was not renewed for {} s as seen from \
                     here; taking it over",
                    record.holder,
                    lease_duration.as_secs()
                );
            }
            if let Some(lease) = api
                .replace_lease(&taken_over(&current, identity, duration))
                .await?
            {
                return Ok((lease, sent));
            }
            // 409: it changed since observed; observe again.
            if Instant::now() >= deadline {
                return Err(Error::Fence {
                    path: pgdata,
                    problem: format!(
                        "the member's Lease {name} kept changing while this pod tried to take it \
                         (every write conflicted) until the wait ended; another agent is \
                         contending for it. Nothing was changed; the pod restarts and tries again"
                    ),
                });
            }
            continue;
        }
        if Instant::now() >= deadline {
            return Err(Error::Fence {
                path: pgdata,
                problem: format!(
                    "another incarnation of pod {} (pod UID {}) holds the member's Lease {} and \
                     kept renewing it during the whole wait: it may still run PostgreSQL on this \
                     directory. If its node is gone, the Lease expires {} s after its last \
                     renewal and this member starts then (the pod restarts and tries again); do \
                     not delete or edit the Lease while that pod may still run",
                    settings.pod_name,
                    record.holder,
                    name,
                    lease_duration.as_secs()
                ),
            });
        }
        if logged_holder.as_deref() != Some(record.holder.as_str()) {
            crate::info!(
                "the Lease {name} is held by pod UID {} (another incarnation of {}); waiting \
                 until it is released or goes {} s without renewal",
                record.holder,
                settings.pod_name,
                lease_duration.as_secs()
            );
            logged_holder = Some(record.holder.clone());
        }
        let until_expiry = lease_duration.saturating_sub(Instant::now() - first_seen);
        let wait = poll
            .min(deadline.saturating_duration_since(Instant::now()))
            .min(until_expiry.max(Duration::from_millis(1)));
        sleep(wait).await;
    }
}

/// What one renewal attempt found.
enum Renewal {
    Renewed(Box<Lease>),
    /// Someone else holds (or deleted, or released) the Lease.
    Gone(String),
}

impl LeaseHold {
    fn start(
        api: PodApi,
        name: String,
        identity: String,
        lease: Lease,
        term_start: Instant,
        duration: Duration,
        renew_every: Duration,
    ) -> LeaseHold {
        let current = Arc::new(Mutex::new(lease));
        let (lost_tx, lost) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(renew_loop(
            api.clone(),
            name.clone(),
            identity.clone(),
            current.clone(),
            term_start,
            duration,
            renew_every,
            lost_tx,
            stop_rx,
        ));
        LeaseHold {
            api,
            name,
            identity,
            current,
            lost,
            stop,
            task: Some(task),
        }
    }

    async fn release(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(reason) = self.lost.borrow().clone() {
            crate::info!(
                "not releasing the Lease {}: it was already lost ({reason})",
                self.name
            );
            return Ok(());
        }
        let mut lease = self
            .current
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        for _ in 0..3 {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = Some(now_micro());
            }
            if self.api.replace_lease(&lease).await?.is_some() {
                crate::info!("released the Lease {}", self.name);
                return Ok(());
            }
            match self.api.get_lease(&self.name).await? {
                Some(l) if Observed::of(&l).holder == self.identity => lease = l,
                _ => {
                    crate::info!(
                        "the Lease {} is no longer this pod's; nothing to release",
                        self.name
                    );
                    return Ok(());
                }
            }
        }
        Err(Error::Kube(format!(
            "releasing the Lease {}: it kept changing under this holder",
            self.name
        )))
    }
}

/// One renewal: the held Lease with a new renew time, written with its `resourceVersion`; on a
/// conflict the Lease is read again and renewed only if this holder still holds it.
async fn renew_once(api: &PodApi, name: &str, identity: &str, held: Lease) -> Result<Renewal> {
    let renewed = |mut lease: Lease| {
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(now_micro());
        }
        lease
    };
    if let Some(lease) = api.replace_lease(&renewed(held)).await? {
        return Ok(Renewal::Renewed(Box::new(lease)));
    }
    match api.get_lease(name).await? {
        None => Ok(Renewal::Gone(format!("the Lease {name} was deleted"))),
        Some(lease) => {
            let holder = Observed::of(&lease).holder;
            if holder != identity {
                return Ok(Renewal::Gone(if holder.is_empty() {
                    format!("the Lease {name} was released by someone else")
                } else {
                    format!("the Lease {name} is now held by pod UID {holder}")
                }));
            }
            match api.replace_lease(&renewed(lease)).await? {
                Some(lease) => Ok(Renewal::Renewed(Box::new(lease))),
                None => Err(Error::Kube(format!(
                    "renewing the Lease {name}: it changed twice while being renewed"
                ))),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn renew_loop(
    api: PodApi,
    name: String,
    identity: String,
    current: Arc<Mutex<Lease>>,
    term_start: Instant,
    duration: Duration,
    renew_every: Duration,
    lost: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let give_up_after = loss_after(duration);
    // The instant the last successful write was sent: a contender saw it change no earlier.
    let mut last_ok = term_start;
    let mut next = term_start + renew_every;
    let mut failing_since: Option<Instant> = None;
    loop {
        let give_up_at = last_ok + give_up_after;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = sleep_until(next.min(give_up_at)) => {}
        }
        if Instant::now() >= give_up_at {
            let reason = format!(
                "the Lease {name} could not be renewed for {} s (limit {} s of its {} s \
                 duration); another pod may take it {} s from now",
                (Instant::now() - last_ok).as_secs(),
                give_up_after.as_secs(),
                duration.as_secs(),
                duration.saturating_sub(Instant::now() - last_ok).as_secs()
            );
            crate::warn!("write fence lost: {reason}");
            let _ = lost.send(Some(reason));
            return;
        }
        let sent = Instant::now();
        next = sent + renew_every;
        let held = current
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let budget = give_up_at.saturating_duration_since(sent).min(renew_every);
        let outcome = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = timeout(budget, renew_once(&api, &name, &identity, held)) => r,
        };
        match outcome {
            Ok(Ok(Renewal::Renewed(lease))) => {
                if let Some(since) = failing_since.take() {
                    crate::info!(
                        "the Lease {name} is renewed again after {} s of failures",
                        (sent - since).as_secs()
                    );
                }
                if let Ok(mut c) = current.lock() {
                    *c = *lease;
                }
                last_ok = sent;
            }
            Ok(Ok(Renewal::Gone(reason))) => {
                crate::warn!("write fence lost: {reason}");
                let _ = lost.send(Some(reason));
                return;
            }
            Ok(Err(e)) => {
                failing_since.get_or_insert(sent);
                crate::warn!("renewing the Lease {name}: {e}");
            }
            Err(_) => {
                failing_since.get_or_insert(sent);
                crate::warn!(
                    "renewing the Lease {name}: no answer within {} ms",
                    budget.as_millis()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn local_settings(root: &Path, pod: &str) -> Settings {
        let mut m = crate::settings::tests::sample_env(pod);
        m.insert(
            contract::env::DATA_ROOT,
            root.to_string_lossy().into_owned(),
        );
        Settings::from_lookup(|k| m.get(k).cloned()).unwrap()
    }

    #[test]
    fn timings_follow_the_grace_period() {
        let d = lease_duration_for_grace(90);
        assert_eq!(d, Duration::from_secs(120));
        assert_eq!(renew_interval(d), Duration::from_secs(10));
        assert_eq!(
            renew_interval(Duration::from_secs(6)),
            Duration::from_secs(2)
        );
        assert_eq!(loss_after(d), Duration::from_secs(80));
        assert!(loss_after(d) < d);
    }

    #[test]
    fn holder_round_trips_through_the_lock_file() {
        let h = Holder {
            pid: 42,
            pod: "pgset-1".into(),
            uid: Some("u-1".into()),
            host: "node-a".into(),
        };
        assert_eq!(Holder::from_file(&h.to_file()), Some(h.clone()));
        assert_eq!(
            h.to_string(),
            "agent pid 42 of pgset-1 (pod UID u-1) on host node-a"
        );
        let local = Holder { uid: None, ..h };
        assert_eq!(Holder::from_file(&local.to_file()), Some(local));
        assert_eq!(Holder::from_file("garbage"), None);
    }

    #[tokio::test]
    async fn a_second_local_fence_is_refused_naming_the_holder() {
        let t = tempfile::tempdir().unwrap();
        let s = local_settings(t.path(), "pgset-1");
        let first = Fence::acquire(&s, None, FenceOptions::default())
            .await
            .unwrap();
        let lock = t.path().join("pgset-1.lock");
        assert_eq!(
            fs::metadata(&lock).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let recorded = fs::read_to_string(&lock).unwrap();
        assert!(
            recorded.contains(&format!("pid={}\n", std::process::id())),
            "{recorded}"
        );

        let e = Fence::acquire(&s, None, FenceOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Fence { .. }), "{e:?}");
        let m = e.to_string();
        assert!(
            m.starts_with(&format!("{}:", t.path().join("pgset-1").display()))
                && m.contains(&format!("agent pid {} of pgset-1", std::process::id()))
                && m.contains("Stop that agent"),
            "{m}"
        );
        assert_eq!(
            fs::read_to_string(&lock).unwrap(),
            recorded,
            "a refused contender leaves the lock file as it was"
        );
        // Another member of the same root is not affected.
        let other = Fence::acquire(
            &local_settings(t.path(), "pgset-2"),
            None,
            FenceOptions::default(),
        )
        .await
        .unwrap();
        drop(other);

        drop(first);
        let again = Fence::acquire(&s, None, FenceOptions::default())
            .await
            .unwrap();
        again.release().await.unwrap();
        assert!(lock.is_file(), "the lock file is never deleted");
        Fence::acquire(&s, None, FenceOptions::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_stale_socket_lock_of_this_member_is_removed_only_while_the_fence_is_held() {
        let t = tempfile::tempdir().unwrap();
        let s = local_settings(t.path(), "pgset-0");
        let pgdata = s.pgdata();
        fs::create_dir(&pgdata).unwrap();
        let run = t.path().join("run");
        fs::create_dir(&run).unwrap();
        let fence = Fence::acquire(&s, None, FenceOptions::default())
            .await
            .unwrap();
        assert_eq!(
            fence.clear_stale_socket_lock(&run, 5432).unwrap(),
            StaleSocketLock::Absent
        );
        // As PostgreSQL writes it, naming a live process that is not a postmaster (this test's
        // parent): what a restarted container meets when a new process got the old pid.
        let ppid = nix::unistd::getppid().as_raw();
        let lock = run.join(".s.PGSQL.5432.lock");
        let ours = format!(
            "{ppid}\n{}\n1700000000\n5432\n{}\n",
            pgdata.display(),
            run.display()
        );
        fs::write(&lock, &ours).unwrap();
        assert_eq!(
            fence.clear_stale_socket_lock(&run, 5432).unwrap(),
            StaleSocketLock::Removed(ppid)
        );
        assert!(!lock.exists());

        // Another server's socket lock (another data directory) is left alone.
        let foreign = format!("{ppid}\n/elsewhere/data\n1700000000\n5432\n");
        fs::write(&lock, &foreign).unwrap();
        assert_eq!(
            fence.clear_stale_socket_lock(&run, 5432).unwrap(),
            StaleSocketLock::Foreign("/elsewhere/data".into())
        );
        assert_eq!(fs::read_to_string(&lock).unwrap(), foreign);

        // Without the fence, nothing is touched.
        fs::write(&lock, &ours).unwrap();
        fs::rename(t.path().join("pgset-0.lock"), t.path().join("moved.lock")).unwrap();
        assert!(fence.clear_stale_socket_lock(&run, 5432).is_err());
        assert_eq!(fs::read_to_string(&lock).unwrap(), ours);
    }

    #[tokio::test]
    async fn a_stale_postmaster_pid_is_renamed_only_while_the_fence_is_held() {
        let t = tempfile::tempdir().unwrap();
        let s = local_settings(t.path(), "pgset-0");
        let pgdata = s.pgdata();
        fs::create_dir(&pgdata).unwrap();
        let fence = Fence::acquire(&s, None, FenceOptions::default())
            .await
            .unwrap();
        assert_eq!(
            fence.clear_stale_postmaster_pid(&pgdata).unwrap(),
            StalePid::Absent
        );

        // A pid file naming a live process that is not a postmaster (this test's own parent
        // is not a postgres): stale.
        let content = format!(
            "{}\n{}\n1700000000\n5432\n",
            nix::unistd::getppid(),
            pgdata.display()
        );
        fs::write(pgdata.join("postmaster.pid"), &content).unwrap();
        fs::write(pgdata.join("postmaster.pid.stale"), "older\n").unwrap();
        let stale = pgdata.join("postmaster.pid.stale");
        assert_eq!(
            fence.clear_stale_postmaster_pid(&pgdata).unwrap(),
            StalePid::Renamed(stale.clone())
        );
        assert!(!pgdata.join("postmaster.pid").exists());
        assert_eq!(fs::read_to_string(&stale).unwrap(), content);

        // Another directory is not this fence's to judge.
        let elsewhere = t.path().join("pgset-1");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("postmaster.pid"), &content).unwrap();
        assert!(fence.clear_stale_postmaster_pid(&elsewhere).is_err());
        assert!(elsewhere.join("postmaster.pid").exists());

        // Once the lock file is no longer the one locked, the fence is not held: refused.
        fs::write(pgdata.join("postmaster.pid"), &content).unwrap();
        fs::rename(t.path().join("pgset-0.lock"), t.path().join("moved.lock")).unwrap();
        let e = fence.clear_stale_postmaster_pid(&pgdata).unwrap_err();
        assert!(e.to_string().contains("removed or replaced"), "{e}");
        assert_eq!(
            fs::read_to_string(pgdata.join("postmaster.pid")).unwrap(),
            content
        );
    }

    #[tokio::test]
    async fn a_live_postmaster_pid_is_never_touched() {
        let t = tempfile::tempdir().unwrap();
        // A live process whose program is named `postgres`, as a postmaster's is.
        let fake = t.path().join("postgres");
        fs::copy(which_sleep(), &fake).unwrap();
        let child = pgset_command::HostCommand::new(&fake)
            .arg("30")
            .quiet()
            .start()
            .unwrap();
        let pid = child.pids()[0];
        // Wait until the child runs the copied program (not yet the test binary's fork).
        for _ in 0..500 {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline
                .split(|b| *b == 0)
                .next()
                .is_some_and(|a| a.ends_with(b"postgres"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = local_settings(t.path(), "pgset-0");
        let pgdata = s.pgdata();
        fs::create_dir(&pgdata).unwrap();
        let content = format!("{pid}\n{}\n", pgdata.display());
        fs::write(pgdata.join("postmaster.pid"), &content).unwrap();
        let fence = Fence::acquire(&s, None, FenceOptions::default())
            .await
            .unwrap();
        let found = fence.clear_stale_postmaster_pid(&pgdata);
        child.kill().unwrap();
        assert_eq!(found.unwrap(), StalePid::LivePostmaster(pid as i32));
        assert_eq!(
            fs::read_to_string(pgdata.join("postmaster.pid")).unwrap(),
            content
        );
        assert!(!pgdata.join("postmaster.pid.stale").exists());
    }

    fn which_sleep() -> PathBuf {
        ["/usr/bin/sleep", "/bin/sleep"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("sleep(1) in /usr/bin or /bin")
    }

    #[tokio::test]
    async fn kubernetes_mode_needs_the_api_and_the_pod_uid() {
        let t = tempfile::tempdir().unwrap();
        let mut m = crate::settings::tests::sample_env("pgset-1");
        m.insert(
            contract::env::DATA_ROOT,
            t.path().to_string_lossy().into_owned(),
        );
        m.insert(contract::env::MODE, "kubernetes".into());
        m.insert(contract::env::NAMESPACE, "db".into());
        let s = Settings::from_lookup(|k| m.get(k).cloned()).unwrap();
        let e = Fence::acquire(&s, None, FenceOptions::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("needs the API client"), "{e}");
        assert!(
            !t.path().join("pgset-1.lock").exists(),
            "a refusal creates nothing"
        );
    }
}
