//! The leader record: the one source of the master role, held, renewed, released and handed
//! over by compare-and-swap on a backend's own version (a Lease in a cluster, a file locally).
//!
//! One record per cluster says who may be the master: the holder (member name and pod UID, or
//! the local instance id), the timeline it serves, when it was acquired and last renewed (wall
//! clock, for people only), the lease duration, how many times it changed hands, and the
//! backend's version. Every write carries the version the writer read, so of two contenders
//! exactly one wins and the other learns who did.
//!
//! The rules follow the member's write fence ([`crate::fence`], client-go's leader election):
//!
//! - A contender takes the record only when it is free: released (no holder), already its own
//!   member's (another incarnation of it: the caller holds the member's write fence),
//!   absent (only for the bootstrap candidate, [`IfAbsent::Create`]), or unchanged for the
//!   record's own lease duration measured on the contender's monotonic clock since it first saw
//!   that exact version ([`Observer`]). Wall clocks of two hosts are never compared. An
//!   unreadable record, an error or no answer is never free.
//! - The holder renews every [`LeaderTimings::renew_every`]. It gives the role up at
//!   [`LeaderTimings::renew_deadline`] after the instant it sent its last successful write
//!   ([`Written::give_up_at`]) and stops accepting writes within the stop escalation's
//!   [`StopEscalation::total`]. A contender starts its clock no earlier than the answer that
//!   showed it a version, which is after that version was written, so the timing invariant
//!   `renew_deadline + worst_case_stop < lease_duration` ([`invariant_holds`]) keeps the old
//!   master stopped before a new one can take the record.
//! - A member named as the new holder by [`LeaderStore::hand_over`] becomes the master only after
//!   its own first write of that record (an [`LeaderStore::acquire`], taken at once because the
//!   record is already its own): its deadline counts from that write, never from the hand over.
//!   The old holder stops accepting writes before it hands over.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use pgset_spec::contract;
use pgset_spec::contract::annotations::{self, LEADER_MEMBER, LEADER_TIMELINE};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::kube_api::{Resource, forbidden_message_on};

/// Who holds the role: the member's name and the identity of this incarnation of it (the pod
/// UID, or in local mode the instance id), so two incarnations of one member never both hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    /// The member (pod) name.
    pub member: String,
    /// The pod UID, or the local instance id.
    pub id: String,
}

impl Holder {
    /// A holder of `member` with identity `id`.
    pub fn new(member: impl Into<String>, id: impl Into<String>) -> Holder {
        Holder {
            member: member.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.member, self.id)
    }
}

/// The backend's version of a record, opaque: a Lease's `resourceVersion`, the leader file's
/// counter. Only compared for equality and sent back with a write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// The version as the backend spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A version spelled `text` (tests of the record's users).
    #[cfg(test)]
    pub(crate) fn for_tests(text: &str) -> Version {
        Version(text.to_string())
    }
}

/// The leader record as the backend holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRecord {
    /// The holder; `None` once released (the next contender takes it at once).
    pub holder: Option<Holder>,
    /// The timeline the holder serves (the last one served, once released).
    pub timeline: u32,
    /// When the current holder took it (wall clock, for people; never compared across hosts).
    pub acquired: Option<SystemTime>,
    /// When it was last written (wall clock, for people; never compared across hosts).
    pub renewed: Option<SystemTime>,
    /// How long a contender waits, on its own clock, for a version to change before taking it.
    pub lease_duration: Duration,
    /// How many times the holder changed.
    pub transitions: u32,
    /// Everything else the record says, kept across every write (the Lease's other
    /// annotations, the leader file's `notes`): the failover pause ([`annotations::FAILOVER`]),
    /// a switchover's request and hand over, the synchronous standbys.
    pub notes: BTreeMap<String, String>,
    /// The backend's version, sent back with the next write (compare-and-swap).
    pub version: Version,
}

impl LeaderRecord {
    /// The note `key`, when the record has it.
    pub fn note(&self, key: &str) -> Option<&str> {
        self.notes.get(key).map(String::as_str)
    }

    /// This record with the note `key` set to `value` (removed for `None`).
    pub fn with_note(&self, key: &str, value: Option<&str>) -> LeaderRecord {
        let mut next = self.clone();
        match value {
            Some(v) => next.notes.insert(key.to_string(), v.to_string()),
            None => next.notes.remove(key),
        };
        next
    }

    /// Whether automatic failover is paused on it ([`annotations::FAILOVER`]).
    pub fn failover_paused(&self) -> bool {
        self.note(annotations::FAILOVER) == Some(annotations::FAILOVER_PAUSED)
    }

    /// Whether `who` holds it.
    pub fn held_by(&self, who: &Holder) -> bool {
        self.holder.as_ref() == Some(who)
    }

    /// The first record of a cluster, held by `me`.
    fn first(me: &Holder, timeline: u32, lease_duration: Duration) -> LeaderRecord {
        let now = SystemTime::now();
        LeaderRecord {
            holder: Some(me.clone()),
            timeline,
            acquired: Some(now),
            renewed: Some(now),
            lease_duration,
            transitions: 0,
            notes: BTreeMap::new(),
            version: Version(String::new()),
        }
    }

    /// This record with `holder` and `timeline` written now; a change of holder is a transition.
    fn written(
        &self,
        holder: Option<&Holder>,
        timeline: u32,
        lease_duration: Duration,
    ) -> LeaderRecord {
        let now = SystemTime::now();
        let mut next = self.clone();
        if let Some(h) = holder
            && self.holder.as_ref() != Some(h)
        {
            next.transitions = self.transitions.saturating_add(1);
            next.acquired = Some(now);
        }
        next.holder = holder.cloned();
        next.timeline = timeline;
        next.renewed = Some(now);
        next.lease_duration = lease_duration;
        next
    }
}

/// A record as this holder wrote it, and the instant (this host's monotonic clock) the write
/// was sent: no contender saw that version before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The record as stored (with its new version).
    pub record: LeaderRecord,
    /// When the successful write was sent.
    pub sent: Instant,
}

impl Written {
    /// When the holder gives the role up unless another write succeeds first: the renew
    /// deadline after this write was sent. At that instant it must stop accepting writes.
    pub fn give_up_at(&self, timings: &LeaderTimings) -> Instant {
        self.sent + timings.renew_deadline
    }
}

/// What [`LeaderStore::acquire`] does when there is no record at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfAbsent {
    /// Create it: only the bootstrap candidate (ordinal 0 of a new cluster) does.
    Create,
    /// Wait for it: a missing record is not free for anyone else.
    Wait,
}

/// The answer of [`LeaderStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This contender holds it now.
    Taken(Written),
    /// Another holder has it and it has not expired on this contender's clock.
    HeldBy {
        /// The record as read.
        record: LeaderRecord,
        /// How long it must stay unchanged before this contender may take it.
        expires_in: Duration,
    },
    /// Another write won the race; the record as read right after (`None`: it was deleted).
    LostRace(Option<LeaderRecord>),
    /// There is no record and this contender is not the bootstrap candidate.
    NoRecord,
}

/// The answer of a holder's write ([`LeaderStore::renew`], [`LeaderStore::release`],
/// [`LeaderStore::hand_over`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderWrite {
    /// Written.
    Done(Written),
    /// This member does not hold it (any more); the record as read (`None`: absent). The
    /// holder must stop acting as the master.
    NotHolder(Option<LeaderRecord>),
}

/// Why the leader record could not be read or written. None of these means "free".
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// A drill's isolation switch cuts this member off from the record.
    #[error(
        "the leader record is unreachable from {member}: the isolation switch {} exists (remove it to reconnect)",
        switch.display()
    )]
    Isolated {
        /// The member cut off.
        member: String,
        /// The switch file.
        switch: PathBuf,
    },
    /// The record exists but cannot be understood; it is never taken as free.
    #[error(
        "the leader record {what} is unreadable: {problem}; it is not taken as free: repair or remove it by hand once no member runs as the master"
    )]
    Corrupt {
        /// The file or Lease.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// A file operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An API call failed.
    #[error("Kubernetes API: {0}")]
    Api(String),
    /// An API call did not answer in time.
    #[error("{action}: no answer within {} ms", after.as_millis())]
    Timeout {
        /// The call.
        action: String,
        /// The budget.
        after: Duration,
    },
}

impl From<LeaderError> for crate::Error {
    fn from(e: LeaderError) -> crate::Error {
        match e {
            LeaderError::Io { action, source } => crate::Error::Io { action, source },
            LeaderError::Api(m) => crate::Error::Kube(m),
            other => crate::Error::Failed(other.to_string()),
        }
    }
}

/// The result of a leader-record operation.
pub type LeaderResult<T> = std::result::Result<T, LeaderError>;

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> LeaderError {
    let action = action.into();
    move |source| LeaderError::Io { action, source }
}

/// Whether a holder that gives up at `renew_deadline` after its last good write, and stops
/// within `worst_case_stop`, is stopped before a contender may take a record of
/// `lease_duration`: `renew_deadline + worst_case_stop < lease_duration`.
pub fn invariant_holds(
    renew_deadline: Duration,
    worst_case_stop: Duration,
    lease_duration: Duration,
) -> bool {
    renew_deadline.saturating_add(worst_case_stop) < lease_duration
}

/// How the old master is stopped once it gives the role up: a fast shutdown, then an immediate
/// one, then SIGKILL, each given its time before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopEscalation {
    /// How long a fast shutdown may take.
    pub fast: Duration,
    /// How long an immediate shutdown may take after it.
    pub immediate: Duration,
    /// How long the processes may take to be gone after SIGKILL.
    pub kill: Duration,
}

impl StopEscalation {
    /// The worst-case time from giving the role up to no process accepting writes.
    pub fn total(&self) -> Duration {
        self.fast
            .saturating_add(self.immediate)
            .saturating_add(self.kill)
    }
}

/// The timings of the leader record, which keep the timing invariant (see [`invariant_holds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderTimings {
    lease_duration: Duration,
    renew_every: Duration,
    renew_deadline: Duration,
    stop: StopEscalation,
}

/// Timings that break the invariant, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("leader timings: {0}")]
pub struct TimingError(String);

impl LeaderTimings {
    /// Timings checked against the invariant: the renewal interval is positive and shorter than
    /// the renew deadline (a holder tries at least twice before giving up), and
    /// `renew_deadline + stop.total() < lease_duration`.
    pub fn new(
        lease_duration: Duration,
        renew_every: Duration,
        renew_deadline: Duration,
        stop: StopEscalation,
    ) -> Result<LeaderTimings, TimingError> {
        let ms = |d: Duration| d.as_millis();
        if renew_every.is_zero() || renew_every.saturating_mul(2) > renew_deadline {
            return Err(TimingError(format!(
                "renewing every {} ms leaves fewer than two attempts before the renew deadline \
                 of {} ms: renew at most every {} ms or raise the renew deadline",
                ms(renew_every),
                ms(renew_deadline),
                ms(renew_deadline / 2)
            )));
        }
        if !invariant_holds(renew_deadline, stop.total(), lease_duration) {
            let sum = renew_deadline.saturating_add(stop.total());
            return Err(TimingError(format!(
                "the renew deadline {} ms plus the worst-case stop {} ms (fast {} + immediate {} \
                 + kill {}) is {} ms, not below the lease duration {} ms: a contender could take \
                 the record while the old master still accepts writes. Raise the lease duration \
                 above {} ms, or lower the renew deadline or the stop escalation by more than {} \
                 ms",
                ms(renew_deadline),
                ms(stop.total()),
                ms(stop.fast),
                ms(stop.immediate),
                ms(stop.kill),
                ms(sum),
                ms(lease_duration),
                ms(sum),
                ms(sum.saturating_sub(lease_duration))
            )));
        }
        Ok(LeaderTimings {
            lease_duration,
            renew_every,
            renew_deadline,
            stop,
        })
    }

    /// The default timings for a lease of `lease_duration`, in proportion to it: for 13 s,
    /// renew every 2 s, give up at 6 s (three attempts), stop within 5 s (fast 3 s, immediate
    /// 1 s, kill 1 s), which leaves 2 s of margin for the two clocks' rates. Refused only for a
    /// duration too short to divide.
    pub fn for_lease(lease_duration: Duration) -> Result<LeaderTimings, TimingError> {
        let part = |n: u32| lease_duration * n / 13;
        LeaderTimings::new(
            lease_duration,
            part(2),
            part(6),
            StopEscalation {
                fast: part(3),
                immediate: part(1),
                kill: part(1),
            },
        )
    }

    /// The lease duration a holder writes into the record.
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    /// How often the holder renews.
    pub fn renew_every(&self) -> Duration {
        self.renew_every
    }

    /// How long after its last good write the holder gives the role up.
    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    /// How the old master is stopped.
    pub fn stop(&self) -> StopEscalation {
        self.stop
    }

    /// `stop().total()`.
    pub fn worst_case_stop(&self) -> Duration {
        self.stop.total()
    }
}

/// A contender's memory of the record: the version it saw and when it first saw it on its own
/// monotonic clock. Only this clock decides expiry.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    seen: Option<(Version, Option<Holder>, Instant)>,
}

impl Observer {
    /// A contender that has seen nothing yet.
    pub fn new() -> Observer {
        Observer::default()
    }

    /// Notes `record` as seen at `at` (take it after the answer arrived); returns when this exact
    /// version was first seen.
    pub fn observe(&mut self, record: &LeaderRecord, at: Instant) -> Instant {
        match &self.seen {
            Some((v, h, first)) if *v == record.version && *h == record.holder => *first,
            _ => {
                self.seen = Some((record.version.clone(), record.holder.clone(), at));
                at
            }
        }
    }

    /// How long `record` must stay unchanged from `now` before it expires; `None` when this
    /// exact version was never observed (it cannot have expired).
    pub fn remaining(&self, record: &LeaderRecord, now: Instant) -> Option<Duration> {
        match &self.seen {
            Some((v, h, first)) if *v == record.version && *h == record.holder => Some(
                record
                    .lease_duration
                    .saturating_sub(now.saturating_duration_since(*first)),
            ),
            _ => None,
        }
    }

    /// Whether `record` went unchanged for its lease duration on this clock.
    pub fn expired(&self, record: &LeaderRecord, now: Instant) -> bool {
        self.remaining(record, now).is_some_and(|r| r.is_zero())
    }
}

/// The leader record's store. Backends give `read`, `create` and `replace` (compare-and-swap on
/// [`LeaderRecord::version`]); the role's rules (`acquire`, `renew`, `release`, `hand_over`)
/// are the same for every backend.
pub trait LeaderStore: Send + Sync {
    /// The member this store writes as.
    fn me(&self) -> &Holder;

    /// The timings it writes with.
    fn timings(&self) -> &LeaderTimings;

    /// The record, or `None` when there is none yet.
    fn read(&self) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send;

    /// Creates the record (its version is ignored); `None` when one exists already.
    fn create(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send;

    /// Replaces the record if its version is still `record.version`; `None` when it changed
    /// or is gone.
    fn replace(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send;

    /// Takes the record for this member, serving `timeline`, if it is free (see the module's
    /// rules). One attempt: the caller keeps `observer` and asks again after `expires_in`.
    fn acquire(
        &self,
        timeline: u32,
        if_absent: IfAbsent,
        observer: &mut Observer,
    ) -> impl Future<Output = LeaderResult<Claim>> + Send {
        async move {
            let me = self.me().clone();
            let duration = self.timings().lease_duration;
            let Some(current) = self.read().await? else {
                if if_absent == IfAbsent::Wait {
                    return Ok(Claim::NoRecord);
                }
                let sent = Instant::now();
                return match self
                    .create(&LeaderRecord::first(&me, timeline, duration))
                    .await?
                {
                    Some(record) => Ok(Claim::Taken(Written { record, sent })),
                    None => Ok(Claim::LostRace(self.read().await?)),
                };
            };
            let seen_at = Instant::now();
            observer.observe(&current, seen_at);
            // Held by another incarnation of this member: the member's own write fence, which
            // the caller holds, proves that incarnation is gone.
            let free = current.holder.is_none()
                || current
                    .holder
                    .as_ref()
                    .is_some_and(|h| h.member == me.member)
                || observer.expired(&current, seen_at);
            if !free {
                let expires_in = observer
                    .remaining(&current, seen_at)
                    .unwrap_or(current.lease_duration);
                return Ok(Claim::HeldBy {
                    record: current,
                    expires_in,
                });
            }
            let sent = Instant::now();
            match self
                .replace(&current.written(Some(&me), timeline, duration))
                .await?
            {
                Some(record) => Ok(Claim::Taken(Written { record, sent })),
                None => Ok(Claim::LostRace(self.read().await?)),
            }
        }
    }

    /// Renews `held` (the record as this holder last wrote it), now serving `timeline`.
    fn renew(
        &self,
        held: &LeaderRecord,
        timeline: u32,
    ) -> impl Future<Output = LeaderResult<HolderWrite>> + Send {
        let me = self.me().clone();
        let duration = self.timings().lease_duration;
        holder_write(self, held.clone(), move |r| {
            r.written(Some(&me), timeline, duration)
        })
    }

    /// Gives the role up: the record stays, with no holder, so the next contender takes it at
    /// once. Call it only once this member accepts no more writes.
    fn release(
        &self,
        held: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<HolderWrite>> + Send {
        let duration = self.timings().lease_duration;
        holder_write(self, held.clone(), move |r| {
            r.written(None, r.timeline, duration)
        })
    }

    /// Names `to` the holder in one write (a switchover). Call it only once this member accepts
    /// no more writes; `to` becomes the master after its own first write (see the module's rules).
    fn hand_over(
        &self,
        held: &LeaderRecord,
        to: &Holder,
    ) -> impl Future<Output = LeaderResult<HolderWrite>> + Send {
        self.hand_over_noting(held, to, Vec::new())
    }

    /// [`LeaderStore::hand_over`], with the notes `notes` set (a `None` value removes one) in
    /// the same write.
    fn hand_over_noting(
        &self,
        held: &LeaderRecord,
        to: &Holder,
        notes: Vec<(String, Option<String>)>,
    ) -> impl Future<Output = LeaderResult<HolderWrite>> + Send {
        let to = to.clone();
        let duration = self.timings().lease_duration;
        holder_write(self, held.clone(), move |r| {
            with_notes(r.written(Some(&to), r.timeline, duration), &notes)
        })
    }

    /// [`LeaderStore::renew`], with the notes `notes` set (a `None` value removes one) in the
    /// same write: how the holder answers a request written on the record.
    fn renew_noting(
        &self,
        held: &LeaderRecord,
        timeline: u32,
        notes: Vec<(String, Option<String>)>,
    ) -> impl Future<Output = LeaderResult<HolderWrite>> + Send {
        let me = self.me().clone();
        let duration = self.timings().lease_duration;
        holder_write(self, held.clone(), move |r| {
            with_notes(r.written(Some(&me), timeline, duration), &notes)
        })
    }
}

/// `record` with `notes` set (a `None` value removes the note).
fn with_notes(mut record: LeaderRecord, notes: &[(String, Option<String>)]) -> LeaderRecord {
    for (k, v) in notes {
        match v {
            Some(v) => record.notes.insert(k.clone(), v.clone()),
            None => record.notes.remove(k),
        };
    }
    record
}

/// A holder's write: only if `held` is this member's; with `held`'s version, and on a conflict
/// once more on the current version if this member still holds it (someone changed the record,
/// not its holder).
async fn holder_write<S: LeaderStore + ?Sized>(
    store: &S,
    held: LeaderRecord,
    change: impl Fn(&LeaderRecord) -> LeaderRecord + Send,
) -> LeaderResult<HolderWrite> {
    let me = store.me().clone();
    if !held.held_by(&me) {
        return Ok(HolderWrite::NotHolder(Some(held)));
    }
    let sent = Instant::now();
    if let Some(record) = store.replace(&change(&held)).await? {
        return Ok(HolderWrite::Done(Written { record, sent }));
    }
    let current = match store.read().await? {
        Some(c) if c.held_by(&me) => c,
        other => return Ok(HolderWrite::NotHolder(other)),
    };
    let sent = Instant::now();
    match store.replace(&change(&current)).await? {
        Some(record) => Ok(HolderWrite::Done(Written { record, sent })),
        None => Ok(HolderWrite::NotHolder(store.read().await?)),
    }
}

// ---------------------------------------------------------------------------------------------
// The file backend (local mode).

/// The leader record of a local set: `<dir>/<cluster>.leader`, a JSON document with a version
/// counter, changed only under an exclusive `flock` of `<dir>/<cluster>.leader.lock` by writing
/// a temporary file and renaming it over the record, so a reader sees a whole record and every
/// write is a compare-and-swap. A drill cuts one member off by creating
/// `<dir>/<cluster>.leader.isolate-<member>`: every call of that member then fails.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    cluster: String,
    me: Holder,
    timings: LeaderTimings,
    lock_wait: Duration,
}

/// The leader file's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecord {
    version: u64,
    holder: Option<Holder>,
    timeline: u32,
    acquired_unix_ms: Option<u64>,
    renewed_unix_ms: Option<u64>,
    lease_duration_ms: u64,
    transitions: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    notes: BTreeMap<String, String>,
}

impl FileRecord {
    fn into_record(self) -> LeaderRecord {
        LeaderRecord {
            holder: self.holder,
            timeline: self.timeline,
            acquired: from_unix_ms(self.acquired_unix_ms),
            renewed: from_unix_ms(self.renewed_unix_ms),
            lease_duration: Duration::from_millis(self.lease_duration_ms),
            transitions: self.transitions,
            notes: self.notes,
            version: Version(self.version.to_string()),
        }
    }
}

fn unix_ms(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix_ms(ms: Option<u64>) -> Option<SystemTime> {
    ms.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

impl FileStore {
    /// The store of `cluster`'s record in `dir`, written as `me` with `timings`.
    pub fn new(
        dir: impl Into<PathBuf>,
        cluster: &str,
        me: Holder,
        timings: LeaderTimings,
    ) -> FileStore {
        FileStore {
            dir: dir.into(),
            cluster: cluster.to_string(),
            me,
            timings,
            lock_wait: Duration::from_secs(2),
        }
    }

    /// `<dir>/<cluster>.leader`.
    pub fn path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.{}", self.cluster, contract::LEADER_SUFFIX))
    }

    /// `<dir>/<cluster>.leader.isolate-<member>`: while it exists, every call of `member` fails.
    pub fn isolate_switch(&self, member: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.{}.isolate-{member}",
            self.cluster,
            contract::LEADER_SUFFIX
        ))
    }

    fn lock_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.{}.lock", self.cluster, contract::LEADER_SUFFIX))
    }

    fn check_reachable(&self) -> LeaderResult<()> {
        let switch = self.isolate_switch(&self.me.member);
        match std::fs::symlink_metadata(&switch) {
            Ok(_) => Err(LeaderError::Isolated {
                member: self.me.member.clone(),
                switch,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("inspect {}", switch.display()))(e)),
        }
    }

    /// Reads the record file (no lock needed: it is only ever replaced whole).
    fn read_file(&self) -> LeaderResult<Option<LeaderRecord>> {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("read {}", path.display()))(e)),
        };
        let corrupt = |problem: String| LeaderError::Corrupt {
            what: path.display().to_string(),
            problem,
        };
        let f: FileRecord = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if f.lease_duration_ms == 0 {
            return Err(corrupt("its lease duration is 0".into()));
        }
        if f.holder
            .as_ref()
            .is_some_and(|h| h.member.is_empty() || h.id.is_empty())
        {
            return Err(corrupt("its holder has an empty member or id".into()));
        }
        Ok(Some(f.into_record()))
    }

    /// Runs `f` on the current record under the exclusive lock; `f` returns the record to write
    /// (its version is set here) or `None` to write nothing.
    fn locked_write(
        &self,
        f: impl FnOnce(Option<&LeaderRecord>) -> Option<LeaderRecord>,
    ) -> LeaderResult<Option<LeaderRecord>> {
        use nix::errno::Errno;
        use nix::fcntl::{Flock, FlockArg};
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;

        let lock_path = self.lock_path();
        let deadline = std::time::Instant::now() + self.lock_wait;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(format!("open {}", lock_path.display())))?;
        let _lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((_, errno)) => {
                    return Err(io(format!(
                        "lock {} (held longer than {} ms, or locks unsupported)",
                        lock_path.display(),
                        self.lock_wait.as_millis()
                    ))(std::io::Error::from(errno)));
                }
            }
        };
        let current = self.read_file()?;
        let Some(next) = f(current.as_ref()) else {
            return Ok(None);
        };
        let version = match &current {
            None => 1,
            Some(c) => {
                c.version
                    .as_str()
                    .parse::<u64>()
                    .map_err(|e| LeaderError::Corrupt {
                        what: self.path().display().to_string(),
                        problem: format!("its version {:?}: {e}", c.version.as_str()),
                    })?
                    + 1
            }
        };
        let body = FileRecord {
            version,
            holder: next.holder.clone(),
            timeline: next.timeline,
            acquired_unix_ms: unix_ms(next.acquired),
            renewed_unix_ms: unix_ms(next.renewed),
            lease_duration_ms: u64::try_from(next.lease_duration.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            transitions: next.transitions,
            notes: next.notes.clone(),
        };
        let path = self.path();
        let tmp = self
            .dir
            .join(format!("{}.{}.tmp", self.cluster, contract::LEADER_SUFFIX));
        let json = serde_json::to_vec_pretty(&body).map_err(|e| LeaderError::Corrupt {
            what: path.display().to_string(),
            problem: format!("cannot encode it: {e}"),
        })?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(format!("create {}", tmp.display())))?;
        out.write_all(&json)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.sync_all())
            .map_err(io(format!("write {}", tmp.display())))?;
        // The record keeps its owner: a command run as root (a switchover's request) writes it
        // for the agents, which run as the postgres user.
        if let Ok(meta) = std::fs::metadata(&path) {
            use std::os::unix::fs::MetadataExt as _;
            if meta.uid() != nix::unistd::geteuid().as_raw() {
                std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()))
                    .map_err(io(format!("give {} to the record's owner", tmp.display())))?;
            }
        }
        std::fs::rename(&tmp, &path).map_err(io(format!(
            "rename {} to {}",
            tmp.display(),
            path.display()
        )))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("sync {}", self.dir.display())))?;
        // The record as a reader now sees it.
        Ok(Some(body.into_record()))
    }

    /// Runs a blocking file operation off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&FileStore) -> LeaderResult<T> + Send + 'static,
    ) -> LeaderResult<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.check_reachable()?;
            op(&store)
        })
        .await
        .map_err(|e| LeaderError::Io {
            action: "leader record file operation".into(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

impl LeaderStore for FileStore {
    fn me(&self) -> &Holder {
        &self.me
    }

    fn timings(&self) -> &LeaderTimings {
        &self.timings
    }

    fn read(&self) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send {
        self.blocking(FileStore::read_file)
    }

    fn create(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send {
        let record = record.clone();
        self.blocking(move |s| s.locked_write(|current| current.is_none().then_some(record)))
    }

    fn replace(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send {
        let record = record.clone();
        self.blocking(move |s| {
            s.locked_write(|current| {
                current
                    .is_some_and(|c| c.version == record.version)
                    .then_some(record)
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The Lease backend (a cluster).

/// The leader record in a cluster: the `coordination.k8s.io/v1` Lease `<cluster>-leader`, its
/// `holderIdentity` the holder's pod UID, the member's name and the timeline in annotations
/// ([`LEADER_MEMBER`], [`LEADER_TIMELINE`]), every write a `PUT` with the observed
/// `resourceVersion` (or a `POST`, which fails with 409 when the Lease exists). Each call has
/// [`LeaderTimings::renew_every`] to answer.
#[derive(Clone)]
pub struct LeaseStore {
    leases: Api<Lease>,
    namespace: String,
    cluster: String,
    me: Holder,
    timings: LeaderTimings,
}

impl std::fmt::Debug for LeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseStore")
            .field("namespace", &self.namespace)
            .field("cluster", &self.cluster)
            .field("me", &self.me)
            .finish()
    }
}

/// The Lease's `leaseDurationSeconds`: whole seconds, rounded up (a longer record is safe).
fn lease_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

fn micro(t: Option<SystemTime>) -> Option<MicroTime> {
    t.and_then(|t| Timestamp::try_from(t).ok()).map(MicroTime)
}

impl LeaseStore {
    /// The store of `cluster`'s leader Lease in `namespace`, written as `me` with `timings`.
    pub fn new(
        client: Client,
        namespace: &str,
        cluster: &str,
        me: Holder,
        timings: LeaderTimings,
    ) -> LeaseStore {
        LeaseStore {
            leases: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
            me,
            timings,
        }
    }

    /// The Lease's name.
    pub fn name(&self) -> String {
        contract::leader_lease_name(&self.cluster)
    }

    fn explain(&self, e: kube::Error, verb: &str) -> LeaderError {
        let name = self.name();
        LeaderError::Api(match &e {
            kube::Error::Api(s) if s.code == 403 => forbidden_message_on(
                Resource::Leases,
                verb,
                &self.namespace,
                &self.cluster,
                &name,
            ),
            _ => format!("{verb} leases/{name} in namespace {}: {e}", self.namespace),
        })
    }

    /// Runs one API call within the call budget.
    async fn call<T>(
        &self,
        verb: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> LeaderResult<Result<T, kube::Error>> {
        let after = self.timings.renew_every;
        tokio::time::timeout(after, fut)
            .await
            .map_err(|_| LeaderError::Timeout {
                action: format!(
                    "{verb} leases/{} in namespace {}",
                    self.name(),
                    self.namespace
                ),
                after,
            })
    }

    /// The Lease for `record` (with its version when it replaces one).
    fn lease_of(&self, record: &LeaderRecord, version: Option<&Version>) -> Lease {
        let labels = [
            (contract::labels::NAME, contract::APP_NAME.to_string()),
            (contract::labels::INSTANCE, self.cluster.clone()),
            (contract::labels::MANAGED_BY, contract::APP_NAME.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut annotations = record.notes.clone();
        annotations.insert(LEADER_TIMELINE.to_string(), record.timeline.to_string());
        annotations.remove(LEADER_MEMBER);
        if let Some(h) = &record.holder {
            annotations.insert(LEADER_MEMBER.to_string(), h.member.clone());
        }
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name()),
                namespace: version.map(|_| self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                resource_version: version.map(|v| v.0.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: record.holder.as_ref().map(|h| h.id.clone()),
                lease_duration_seconds: Some(lease_seconds(record.lease_duration)),
                acquire_time: micro(record.acquired),
                renew_time: micro(record.renewed),
                lease_transitions: Some(i32::try_from(record.transitions).unwrap_or(i32::MAX)),
                ..LeaseSpec::default()
            }),
        }
    }

    /// The record a Lease holds; a Lease that does not say all of it is unreadable.
    fn record_of(&self, lease: &Lease) -> LeaderResult<LeaderRecord> {
        let corrupt = |problem: &str| LeaderError::Corrupt {
            what: format!("Lease {} in namespace {}", self.name(), self.namespace),
            problem: problem.to_string(),
        };
        let version = lease
            .metadata
            .resource_version
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| corrupt("it has no resourceVersion"))?;
        let annotations = lease.metadata.annotations.clone().unwrap_or_default();
        let spec = lease
            .spec
            .as_ref()
            .ok_or_else(|| corrupt("it has no spec"))?;
        let timeline = annotations
            .get(LEADER_TIMELINE)
            .ok_or_else(|| corrupt(&format!("it has no {LEADER_TIMELINE} annotation")))?
            .parse::<u32>()
            .map_err(|_| corrupt(&format!("its {LEADER_TIMELINE} is not a timeline")))?;
        let seconds = spec
            .lease_duration_seconds
            .filter(|s| *s > 0)
            .ok_or_else(|| corrupt("it has no positive leaseDurationSeconds"))?;
        let transitions = u32::try_from(spec.lease_transitions.unwrap_or(0))
            .map_err(|_| corrupt("its leaseTransitions is negative"))?;
        let holder = match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
            None => None,
            Some(id) => {
                let member = annotations
                    .get(LEADER_MEMBER)
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        corrupt(&format!(
                            "it has a holder but no {LEADER_MEMBER} annotation"
                        ))
                    })?;
                Some(Holder::new(member.clone(), id))
            }
        };
        Ok(LeaderRecord {
            holder,
            timeline,
            acquired: spec.acquire_time.as_ref().map(|t| SystemTime::from(t.0)),
            renewed: spec.renew_time.as_ref().map(|t| SystemTime::from(t.0)),
            lease_duration: Duration::from_secs(seconds.unsigned_abs().into()),
            transitions,
            notes: annotations
                .iter()
                .filter(|(k, _)| k.as_str() != LEADER_MEMBER && k.as_str() != LEADER_TIMELINE)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            version: Version(version),
        })
    }
}

impl LeaderStore for LeaseStore {
    fn me(&self) -> &Holder {
        &self.me
    }

    fn timings(&self) -> &LeaderTimings {
        &self.timings
    }

    async fn read(&self) -> LeaderResult<Option<LeaderRecord>> {
        let name = self.name();
        match self.call("get", self.leases.get_opt(&name)).await? {
            Ok(None) => Ok(None),
            Ok(Some(lease)) => self.record_of(&lease).map(Some),
            Err(e) => Err(self.explain(e, "get")),
        }
    }

    fn create(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send {
        let lease = self.lease_of(record, None);
        async move {
            match self
                .call("create", self.leases.create(&PostParams::default(), &lease))
                .await?
            {
                Ok(l) => self.record_of(&l).map(Some),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
                Err(e) => Err(self.explain(e, "create")),
            }
        }
    }

    fn replace(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send {
        let lease = self.lease_of(record, Some(&record.version));
        async move {
            let name = self.name();
            match self
                .call(
                    "update",
                    self.leases.replace(&name, &PostParams::default(), &lease),
                )
                .await?
            {
                Ok(l) => self.record_of(&l).map(Some),
                // 409: it changed since read; 404: it was deleted since read.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
                Err(e) => Err(self.explain(e, "update")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invariant_is_strict() {
        let s = Duration::from_secs;
        assert!(invariant_holds(s(8), s(5), s(15)));
        assert!(!invariant_holds(s(10), s(5), s(15)), "equal is not enough");
        assert!(!invariant_holds(s(12), s(5), s(15)));
        assert!(!invariant_holds(Duration::MAX, s(1), s(15)));
    }

    #[test]
    fn default_timings_for_13_seconds() {
        let t = LeaderTimings::for_lease(Duration::from_secs(13)).unwrap();
        assert_eq!(t.lease_duration(), Duration::from_secs(13));
        assert_eq!(t.renew_every(), Duration::from_secs(2));
        assert_eq!(t.renew_deadline(), Duration::from_secs(6));
        assert_eq!(
            t.stop(),
            StopEscalation {
                fast: Duration::from_secs(3),
                immediate: Duration::from_secs(1),
                kill: Duration::from_secs(1)
            }
        );
        assert_eq!(t.worst_case_stop(), Duration::from_secs(5));
        assert!(invariant_holds(
            t.renew_deadline(),
            t.worst_case_stop(),
            t.lease_duration()
        ));
    }

    #[test]
    fn default_timings_keep_the_invariant_at_every_scale() {
        for ms in [15, 100, 300, 1_000, 15_000, 60_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            let t = LeaderTimings::for_lease(d).unwrap_or_else(|e| panic!("{ms} ms: {e}"));
            assert!(
                t.renew_deadline() + t.worst_case_stop() < d,
                "{ms} ms: {t:?}"
            );
        }
        assert!(LeaderTimings::for_lease(Duration::ZERO).is_err());
    }

    #[test]
    fn timings_that_break_the_invariant_are_refused_naming_the_fix() {
        let s = Duration::from_secs;
        let stop = StopEscalation {
            fast: s(3),
            immediate: s(1),
            kill: s(1),
        };
        let e = LeaderTimings::new(s(15), s(2), s(10), stop)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("15000 ms, not below the lease duration 15000 ms")
                && e.contains("Raise the lease duration above 15000 ms")
                && e.contains("by more than 0 ms"),
            "{e}"
        );
        let e = LeaderTimings::new(s(15), s(5), s(8), stop)
            .unwrap_err()
            .to_string();
        assert!(e.contains("renew at most every 4000 ms"), "{e}");
        assert!(LeaderTimings::new(s(15), Duration::ZERO, s(8), stop).is_err());
        LeaderTimings::new(s(15), s(4), s(8), stop).unwrap();
    }

    fn record(version: &str, holder: Option<&str>) -> LeaderRecord {
        LeaderRecord {
            holder: holder.map(|h| Holder::new(h, format!("uid-{h}"))),
            timeline: 1,
            acquired: None,
            renewed: None,
            lease_duration: Duration::from_secs(15),
            transitions: 0,
            notes: BTreeMap::new(),
            version: Version(version.into()),
        }
    }

    #[test]
    fn the_observer_counts_from_the_first_sight_of_a_version_on_its_own_clock() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut o = Observer::new();
        let a = record("7", Some("pgset-0"));
        assert_eq!(o.remaining(&a, t0), None, "never seen: not expired");
        assert!(!o.expired(&a, t0 + s(3600)));
        assert_eq!(o.observe(&a, t0), t0);
        assert_eq!(
            o.observe(&a, t0 + s(10)),
            t0,
            "the same version keeps its first sight"
        );
        assert_eq!(o.remaining(&a, t0 + s(10)), Some(s(5)));
        assert!(!o.expired(&a, t0 + s(14)));
        assert!(o.expired(&a, t0 + s(15)));
        // A new version (a renewal) restarts the count.
        let b = record("8", Some("pgset-0"));
        assert!(!o.expired(&b, t0 + s(40)));
        assert_eq!(o.observe(&b, t0 + s(16)), t0 + s(16));
        assert!(!o.expired(&b, t0 + s(30)));
        assert!(o.expired(&b, t0 + s(31)));
        assert!(!o.expired(&a, t0 + s(40)), "the old version is forgotten");
        // The same version with another holder is another record.
        let c = record("8", Some("pgset-1"));
        assert_eq!(o.remaining(&c, t0 + s(40)), None);
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_seconds(Duration::from_millis(300)), 1);
        assert_eq!(lease_seconds(Duration::from_secs(15)), 15);
        assert_eq!(lease_seconds(Duration::from_millis(15_001)), 16);
    }
}
