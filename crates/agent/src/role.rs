//! The master role from the leader record: which role this member takes at start, the master's
//! claim of the record before postgres runs, the holder's renewals while postgres answers,
//! which end (and make the agent stop postgres) at the renew deadline without a good renewal,
//! and a replica's part in failover ([`contend`]), locally and in a cluster.

use std::time::Duration;

use pgset_spec::contract::AgentMode;
use pgset_spec::contract::annotations::SYNCHRONOUS;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::kube_api::PodApi;
use crate::leader::{
    Claim, FileStore, Holder, HolderWrite, IfAbsent, LeaderRecord, LeaderResult, LeaderStore,
    LeaderTimings, LeaseStore, Observer, Written,
};
use crate::pg::{self, Db};
use crate::settings::{Role, Settings};
use crate::{Error, Result};

/// The leader record's store of this member: the file in the data root locally, the Lease in a
/// cluster.
#[derive(Debug, Clone)]
pub enum RoleStore {
    /// Local mode: `<data root>/<cluster>.leader`.
    File(FileStore),
    /// Kubernetes: the Lease `<cluster>-leader`.
    Lease(Box<LeaseStore>),
}

impl RoleStore {
    /// The store of `s`'s cluster, written as this incarnation of the member.
    pub fn of(s: &Settings, api: Option<&PodApi>) -> Result<RoleStore> {
        let timings = s.leader_timings()?;
        match (s.env.mode, api) {
            (AgentMode::Kubernetes, Some(api)) => {
                let me = Holder::new(&s.pod_name, s.pod_uid().unwrap_or_default());
                Ok(RoleStore::Lease(Box::new(LeaseStore::new(
                    api.client(),
                    s.namespace().unwrap_or("default"),
                    &s.env.cluster,
                    me,
                    timings,
                ))))
            }
            _ => {
                let me = Holder::new(&s.pod_name, local_instance_id());
                Ok(RoleStore::File(FileStore::new(
                    &s.env.data_root,
                    &s.env.cluster,
                    me,
                    timings,
                )))
            }
        }
    }
}

/// A local agent's identity as a holder: its pid and its start on the wall clock, different for
/// every incarnation of the member.
fn local_instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("pid-{}-{nanos:x}", std::process::id())
}

impl LeaderStore for RoleStore {
    fn me(&self) -> &Holder {
        match self {
            RoleStore::File(f) => f.me(),
            RoleStore::Lease(l) => l.me(),
        }
    }

    fn timings(&self) -> &LeaderTimings {
        match self {
            RoleStore::File(f) => f.timings(),
            RoleStore::Lease(l) => l.timings(),
        }
    }

    async fn read(&self) -> LeaderResult<Option<LeaderRecord>> {
        match self {
            RoleStore::File(f) => f.read().await,
            RoleStore::Lease(l) => l.read().await,
        }
    }

    async fn create(&self, record: &LeaderRecord) -> LeaderResult<Option<LeaderRecord>> {
        match self {
            RoleStore::File(f) => f.create(record).await,
            RoleStore::Lease(l) => l.create(record).await,
        }
    }

    async fn replace(&self, record: &LeaderRecord) -> LeaderResult<Option<LeaderRecord>> {
        match self {
            RoleStore::File(f) => f.replace(record).await,
            RoleStore::Lease(l) => l.replace(record).await,
        }
    }
}

/// The role a member takes from the record as read at its start, and the member it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Master or replica.
    pub role: Role,
    /// The member a replica follows (the holder; ordinal 0 while there is no holder).
    pub master: Option<String>,
}

/// The role from the record: held by this member (any incarnation: the member fence, already
/// held, proves an older one is gone) makes it the master; held by another makes it that
/// member's replica. No record, or one released: ordinal 0 is the bootstrap candidate (it
/// creates the record only once its data or initdb is proven) and the others follow it.
pub fn decide(s: &Settings, record: Option<&LeaderRecord>) -> Decision {
    match record.and_then(|r| r.holder.as_ref()) {
        Some(h) if h.member == s.pod_name => Decision {
            role: Role::Master,
            master: None,
        },
        Some(h) => Decision {
            role: Role::Replica,
            master: Some(h.member.clone()),
        },
        None if s.ordinal == 0 => Decision {
            role: Role::Master,
            master: None,
        },
        None => Decision {
            role: Role::Replica,
            master: Some(format!("{}-0", s.env.cluster)),
        },
    }
}

/// `s` as the member `decision` makes it: its role, and locally the followed member's port
/// (member k listens on member 0's port + k).
pub fn apply(s: &Settings, decision: &Decision) -> Settings {
    let mut out = s.clone();
    out.role = decision.role;
    // The launcher gives member 0's port as the master's.
    if s.env.mode == AgentMode::Local
        && let Some(k) = decision.master.as_deref().and_then(pgset_spec::ordinal_of)
        && let Some(port) = u16::try_from(k)
            .ok()
            .and_then(|k| s.base_master_port.checked_add(k))
    {
        out.env.master_port = port;
    }
    out
}

/// Reads the record until it answers (an unreadable record is never free, and never a role),
/// logging each new reason.
pub async fn read_record(store: &RoleStore) -> Option<LeaderRecord> {
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    loop {
        match store.read().await {
            Ok(r) => return r,
            Err(e) => {
                let text = e.to_string();
                if text != last {
                    crate::warn!("reading the leader record (retrying): {text}");
                    last = text;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// The master's claim before postgres starts: the record taken for this member (created by the
/// bootstrap candidate when absent). Anything but the record in hand refuses to run as master.
pub async fn claim(s: &Settings, store: &RoleStore, timeline: u32) -> Result<Written> {
    let if_absent = if s.ordinal == 0 {
        IfAbsent::Create
    } else {
        IfAbsent::Wait
    };
    let mut observer = Observer::new();
    let refuse = |problem: String| Error::Refused {
        path: s.pgdata(),
        problem,
    };
    match store.acquire(timeline, if_absent, &mut observer).await {
        Ok(Claim::Taken(w)) => Ok(w),
        Ok(Claim::HeldBy { record, .. }) => Err(refuse(format!(
            "the leader record names {} the master; this member does not run as master",
            record
                .holder
                .map(|h| h.to_string())
                .unwrap_or_else(|| "nobody".into())
        ))),
        Ok(Claim::LostRace(_)) => Err(refuse(
            "another member took the leader record first; this member does not run as master"
                .into(),
        )),
        Ok(Claim::NoRecord) => Err(refuse(
            "there is no leader record and only ordinal 0 may create it".into(),
        )),
        Err(e) => Err(refuse(format!(
            "the leader record cannot be taken ({e}); postgres does not start as master without it"
        ))),
    }
}

/// The role label at the start of a run, before postgres is ready: a replica labels its pod
/// `role=replica` at once, so a former master that rejoins as a replica never keeps
/// `role=master` while it prepares; a master is labelled only once it serves (the Monitor), so
/// `role=master` is only ever on the member the leader record names. Returns whether the pod
/// was labelled.
pub async fn label_at_start(api: &PodApi, s: &Settings) -> Result<bool> {
    if s.role != Role::Replica {
        return Ok(false);
    }
    api.label_role(&s.pod_name, s.role.label()).await?;
    Ok(true)
}

/// Whether the member's own postgres answers: a new connection runs a statement, or the
/// postmaster itself answers that it cannot accept connections yet (starting, recovering).
/// A frozen or dead postmaster answers neither within `timeout`.
pub async fn postgres_answers(s: &Settings, timeout: Duration) -> (bool, Option<u32>) {
    match Db::local(s, timeout).await {
        Ok(db) => match tokio::time::timeout(timeout, db.row(OWN_TIMELINE_SQL, &[])).await {
            Ok(Ok(r)) => (
                true,
                r.get::<_, Option<i64>>(0)
                    .and_then(|t| u32::try_from(t).ok()),
            ),
            _ => (false, None),
        },
        Err(e) => (pg::cannot_connect_now(&e), None),
    }
}

/// Why the holder's renewals ended.
#[derive(Debug)]
pub enum GiveUp {
    /// The role is lost: why.
    Lost(String),
    /// A switchover began: postgres is to be stopped cleanly while its renewals go on.
    Switchover(Box<crate::switchover::Stepping>),
}

/// The holder's renewals, run while postgres runs: every `renew_every`, only after postgres
/// answered; the reason the role is given up is sent once, at the renew deadline after the
/// last good write (or at once when the record names another holder). A switchover asked on
/// the record is answered after a good renewal ([`crate::switchover::answer`]).
pub async fn keep(s: Settings, store: RoleStore, mut held: Written, lost: oneshot::Sender<GiveUp>) {
    let timings = *store.timings();
    let mut timeline = held.record.timeline;
    let mut last_problem = String::new();
    loop {
        let give_up_at = held.give_up_at(&timings);
        let next = (Instant::now() + timings.renew_every()).min(give_up_at);
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        if now >= give_up_at {
            let why = if last_problem.is_empty() {
                "no renewal".to_string()
            } else {
                last_problem
            };
            let _ = lost.send(GiveUp::Lost(format!(
                "the leader record was not renewed within the renew deadline of {} ms ({why})",
                timings.renew_deadline().as_millis()
            )));
            return;
        }
        let left = give_up_at - now;
        let (answers, tl) = postgres_answers(&s, left.min(pg::DEADLINE)).await;
        if !answers {
            last_problem = "postgres does not answer, so the role is not renewed".into();
            continue;
        }
        if let Some(tl) = tl {
            timeline = tl;
        }
        let left = give_up_at.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, store.renew(&held.record, timeline)).await {
            Ok(Ok(HolderWrite::Done(w))) => {
                held = w;
                last_problem.clear();
                if let Some(step) = crate::switchover::answer(&s, &store, &mut held, timeline).await
                {
                    let _ = lost.send(GiveUp::Switchover(Box::new(step)));
                    return;
                }
            }
            Ok(Ok(HolderWrite::NotHolder(r))) => {
                let who = r
                    .and_then(|r| r.holder)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "nobody".into());
                let _ = lost.send(GiveUp::Lost(format!(
                    "the leader record names {who}, not this member"
                )));
                return;
            }
            Ok(Err(e)) => last_problem = format!("renewing: {e}"),
            Err(_) => last_problem = "renewing: no answer before the renew deadline".into(),
        }
    }
}

/// What a replica's contender tells the supervisor.
#[derive(Debug)]
pub enum Turn {
    /// This member took the record and was promoted: it is the master now, holding `held`.
    Promoted {
        /// The record as this member last wrote it.
        held: Written,
        /// The settings of the member as master.
        settings: Box<Settings>,
    },
    /// The record names another master: the replica follows it now (locally its
    /// `primary_conninfo` rewritten and reloaded; in a cluster the master Service follows the
    /// role label, and the settings are the same).
    Repoint(Box<Settings>),
}

/// What a replica knows of its own WAL receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Streamed {
    /// When it was last seen streaming from the holder.
    at: Instant,
    /// The contender's look (a count of completed looks) it was seen in.
    look: u64,
    /// The timeline it received.
    timeline: u32,
    /// `latest_end_lsn - flushed_lsn` then: WAL the master had that this replica did not.
    unknown_lag: u64,
}

/// A replica's own state for the contest, in one statement.
#[derive(Debug, Clone, Default)]
struct ReplicaState {
    in_recovery: bool,
    receiver_status: Option<String>,
    sender_port: Option<i32>,
    received_tli: Option<i64>,
    unknown_lag: Option<i64>,
    receive_lsn: Option<i64>,
}

async fn replica_state(db: &Db) -> Result<ReplicaState> {
    let r = db
        .row(
            "SELECT pg_is_in_recovery(),
                    (SELECT status FROM pg_stat_wal_receiver),
                    (SELECT sender_port FROM pg_stat_wal_receiver),
                    (SELECT received_tli FROM pg_stat_wal_receiver)::bigint,
                    (SELECT pg_wal_lsn_diff(latest_end_lsn, flushed_lsn)
                       FROM pg_stat_wal_receiver)::bigint,
                    pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint",
            &[],
        )
        .await?;
    Ok(ReplicaState {
        in_recovery: r.get(0),
        receiver_status: r.get(1),
        sender_port: r.get(2),
        received_tli: r.get(3),
        unknown_lag: r.get(4),
        receive_lsn: r.get(5),
    })
}

/// The port a local member listens on.
pub(crate) fn member_port(s: &Settings, member: &str) -> Option<u16> {
    let k = u16::try_from(pgset_spec::ordinal_of(member)?).ok()?;
    s.base_master_port.checked_add(k)
}

/// `X/Y` as PostgreSQL prints an LSN.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Whether `mine` (this member's received LSN, ordinal `me`) may be promoted over a peer that
/// received `theirs` at ordinal `them`: none may be ahead, and of equals the lower ordinal goes.
pub fn ahead_or_first(mine: u64, me: i32, theirs: u64, them: i32) -> bool {
    mine > theirs || (mine == theirs && me < them)
}

/// The local mode's pause switch: `<data root>/<cluster>.leader.paused`. In a cluster the pause
/// is the leader Lease's annotation alone ([`LeaderRecord::failover_paused`]).
fn paused(s: &Settings) -> bool {
    s.env.mode == AgentMode::Local
        && s.env
            .data_root
            .join(format!(
                "{}.{}.paused",
                s.env.cluster,
                pgset_spec::contract::LEADER_SUFFIX
            ))
            .exists()
}

/// Whether this replica's WAL receiver streams from the record's holder now.
fn streams_from_holder(s: &Settings, own: &ReplicaState, record: &LeaderRecord) -> bool {
    if own.receiver_status.as_deref() != Some("streaming") {
        return false;
    }
    match s.env.mode {
        // Member k listens on member 0's port + k, and the replica follows the holder's port.
        AgentMode::Local => {
            own.sender_port.and_then(|p| u16::try_from(p).ok()) == Some(s.env.master_port)
        }
        // Every replica's primary_conninfo names the master Service, which routes only to the
        // Ready pod labelled role=master, and only the holder labels itself master (a promoted
        // member once it serves; any other member labels itself replica at its start). A master's
        // WAL carries the timeline it serves, which the holder writes into the record: a receiver
        // that streams the record's timeline streams from the holder, and one that streams
        // another timeline streams from a master the record does not name.
        AgentMode::Kubernetes => {
            own.received_tli.and_then(|t| u32::try_from(t).ok()) == Some(record.timeline)
        }
    }
}

/// The other members a contender compares itself with: locally the membership file, in a
/// cluster the StatefulSet's members `<cluster>-0 .. <cluster>-(replicas-1)`. An error when the
/// set's size cannot be read: members that are not known are never taken for absent.
async fn peers(s: &Settings, api: Option<&PodApi>) -> std::result::Result<Vec<String>, String> {
    let mut members: Vec<String> = match s.env.mode {
        AgentMode::Local => s
            .env
            .members_file
            .as_deref()
            .and_then(pgset_spec::contract::read_members)
            .map(|m| m.into_iter().collect())
            .unwrap_or_default(),
        AgentMode::Kubernetes => {
            let api = api.ok_or("no API client")?;
            let replicas = api
                .statefulset_replicas()
                .await
                .map_err(|e| e.to_string())?;
            let spec = cluster_names(&s.env.cluster);
            (0..replicas).map(|k| spec.pod_name(k)).collect()
        }
    };
    members.retain(|m| *m != s.pod_name);
    members.sort();
    Ok(members)
}

/// A member's DNS name in a cluster: `<pod>.<headless Service>.<namespace>.svc` (the headless
/// Service publishes members that are not ready too).
pub fn peer_host(cluster: &str, namespace: &str, peer: &str) -> String {
    let spec = cluster_names(cluster);
    format!("{peer}.{}.{namespace}.svc", spec.headless_service_name())
}

/// The cluster's names as the spec spells them (pod names, the headless Service).
fn cluster_names(cluster: &str) -> pgset_spec::ClusterSpec {
    pgset_spec::ClusterSpec {
        name: cluster.to_string(),
        ..Default::default()
    }
}

/// How long a contender waits for a peer's name to resolve.
const PEER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// A peer's `/status` (status code and body), `None` without an answer: locally on 127.0.0.1
/// at its member's health port, in a cluster at its DNS name ([`peer_host`]) and the health
/// port all members share.
pub(crate) async fn peer_status(s: &Settings, peer: &str) -> Option<(u16, String)> {
    let own = s.env.health_addr?;
    let addr = match s.env.mode {
        AgentMode::Local => {
            let port = member_port(s, peer)?.checked_add(own.port().checked_sub(s.env.port)?)?;
            std::net::SocketAddr::from(([127, 0, 0, 1], port))
        }
        AgentMode::Kubernetes => {
            let host = peer_host(&s.env.cluster, s.namespace()?, peer);
            let found = tokio::time::timeout(
                PEER_LOOKUP_TIMEOUT,
                tokio::net::lookup_host((host, own.port())),
            )
            .await
            .ok()?
            .ok()?;
            found.into_iter().next()?
        }
    };
    crate::health::get(addr, pgset_spec::contract::HEALTH_STATUS_PATH).await
}

/// What a peer said of itself on its health endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAnswer {
    /// No answer, or none about this peer's postgres: no objection (it cannot be promoted
    /// either).
    Silent,
    /// Its postgres runs as a master (not in recovery).
    Master,
    /// A replica that received WAL up to this LSN.
    Received(u64),
}

/// Reads a peer's `/status` answer (pure).
pub fn peer_answer(peer: &str, code: u16, body: &str) -> PeerAnswer {
    if code != 200 {
        return PeerAnswer::Silent;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return PeerAnswer::Silent;
    };
    if v["member"].as_str() != Some(peer) {
        return PeerAnswer::Silent;
    }
    let pgv = &v["postgres"];
    if pgv["inRecovery"].as_bool() == Some(false) {
        return PeerAnswer::Master;
    }
    match pgv["receiveLsn"].as_str().and_then(parse_lsn) {
        Some(lsn) => PeerAnswer::Received(lsn),
        None => PeerAnswer::Silent,
    }
}

/// Why a peer makes this member (ordinal `me`, received up to `mine`) not the one to promote,
/// or `None` (pure): a peer that runs as a master objects, and so does one that received more
/// (of equals, the lower ordinal goes); a silent one does not.
pub fn objection(me: i32, mine: u64, answers: &[(String, PeerAnswer)]) -> Option<String> {
    answers.iter().find_map(|(peer, answer)| match *answer {
        PeerAnswer::Silent => None,
        PeerAnswer::Master => Some(format!("{peer} runs as a master")),
        PeerAnswer::Received(theirs) => {
            let them = pgset_spec::ordinal_of(peer)?;
            (!ahead_or_first(mine, me, theirs, them)).then(|| {
                format!(
                    "{peer} received up to {} and this member up to {}",
                    pg::lsn_text(theirs as i64),
                    pg::lsn_text(mine as i64)
                )
            })
        }
    })
}

/// The peers' answers, asked at once, in the peers' order.
async fn peer_answers(s: &Settings, peers: Vec<String>) -> Vec<(String, PeerAnswer)> {
    let mut asked = tokio::task::JoinSet::new();
    for (i, peer) in peers.into_iter().enumerate() {
        let s = s.clone();
        asked.spawn(async move {
            let answer = match peer_status(&s, &peer).await {
                Some((code, body)) => peer_answer(&peer, code, &body),
                None => PeerAnswer::Silent,
            };
            (i, peer, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(done) = asked.join_next().await {
        if let Ok(a) = done {
            answers.push(a);
        }
    }
    answers.sort_by_key(|(i, _, _)| *i);
    answers.into_iter().map(|(_, p, a)| (p, a)).collect()
}

/// What a contender knows at one look: the inputs of [`eligibility`].
#[derive(Debug, Clone)]
struct Look {
    /// The holder the record names (`nobody` once released).
    holder: String,
    /// The timeline the record names.
    timeline: u32,
    /// The observer's verdict: the record expired on this member's clock, or was released.
    free: bool,
    /// Automatic failover is on.
    failover: bool,
    /// Failover is paused (the record's note; locally also the pause file).
    paused: bool,
    /// What this replica last saw of its WAL receiver streaming from the holder.
    streamed: Option<Streamed>,
    /// When this look read the record.
    seen: Instant,
    /// The number of the look that first saw the record's current version.
    final_look: u64,
    /// How recently it must have streamed: the lease duration and one renewal.
    recent: Duration,
    /// `maximumLagOnFailover`.
    lag_limit: u64,
    /// Why synchronous replication does not allow this member ([`crate::sync::objection`]).
    sync_objection: Option<String>,
    /// This member is on the record's list of synchronous replicas (the lag bound does not
    /// apply: it holds every acknowledged commit).
    listed: bool,
}

/// Whether a replica may take the record at one look, before its peers are asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Eligibility {
    /// The record is held and renewed: nothing to decide.
    Held,
    /// Not this member, for this reason.
    Not(String),
    /// This member may take it if no peer objects.
    Eligible,
}

/// The rules of [`contend`] before the peers (pure): the record free, failover on and not
/// paused, streamed from the holder recently (in the look that first saw the record's version
/// or the one before, or within the lease duration and one renewal), on the record's timeline,
/// within `maximumLagOnFailover` (unless on the list of synchronous replicas; under synchronous
/// replication only a listed replica is eligible).
fn eligibility(l: &Look) -> Eligibility {
    let holder = &l.holder;
    if !l.free {
        return Eligibility::Held;
    }
    if !l.failover {
        return Eligibility::Not(format!(
            "the leader record of {holder} expired; automatic failover is off ({}=false): no promotion",
            pgset_spec::contract::env::FAILOVER
        ));
    }
    if l.paused {
        return Eligibility::Not(format!(
            "the leader record of {holder} expired; failover is paused: no promotion"
        ));
    }
    let Some(st) = l.streamed.filter(|st| {
        st.look + 1 >= l.final_look || l.seen.saturating_duration_since(st.at) <= l.recent
    }) else {
        return Eligibility::Not(format!(
            "the leader record of {holder} expired, but this member did not stream from it within {} ms: not eligible",
            l.recent.as_millis()
        ));
    };
    if st.timeline != l.timeline {
        return Eligibility::Not(format!(
            "the leader record of {holder} names timeline {} but this member received timeline {}: not eligible",
            l.timeline, st.timeline
        ));
    }
    if let Some(o) = &l.sync_objection {
        return Eligibility::Not(o.clone());
    }
    if !l.listed && st.unknown_lag > l.lag_limit {
        return Eligibility::Not(format!(
            "this member was {} bytes behind what {holder} last reported (limit {}): not eligible",
            st.unknown_lag, l.lag_limit
        ));
    }
    Eligibility::Eligible
}

/// How soon a replica looks again after yielding the expired record to a peer that goes first.
const FOLLOW_LOOK: Duration = Duration::from_millis(250);
/// How many such quick looks in a row (then the usual interval: a peer that never takes the
/// record is not asked four times a second).
const FOLLOW_LOOKS: u32 = 20;

/// A look just after the expiry, so a replica does not wait up to one more renewal interval
/// past it: the record's remaining time on this member's own clock.
const EXPIRY_SLACK: Duration = Duration::from_millis(20);

/// When a contender looks next: every `renew_every`, or just after the record would expire on
/// its own clock if that comes sooner (`remaining`: [`Observer::remaining`]; `None` or zero when
/// it was never seen or is free already, which the current look decides).
fn next_look(renew_every: Duration, remaining: Option<Duration>) -> Duration {
    match remaining {
        Some(r) if !r.is_zero() => (r + EXPIRY_SLACK).min(renew_every),
        _ => renew_every,
    }
}

/// A replica's part in failover, every `renew_every` (and just after the record would expire): it notes when its WAL receiver streamed
/// from the holder ([`streams_from_holder`]); it follows a new holder (locally by rewriting its
/// `primary_conninfo` to the holder's port; in a cluster the master Service follows the role
/// label, so it only forgets what it saw streaming and tells the supervisor); and when the
/// record expired on its own clock (or was released) while failover is on and not paused, and
/// it streamed from that holder within the lease duration (+ one renewal), on its timeline,
/// within `maximumLagOnFailover`, and no reachable member received more (ties: the lower
/// ordinal), it takes the record (compare-and-swap), promotes postgres and renews with the new
/// timeline. In a cluster, `api` lists the set's members; without it nothing is promoted.
pub async fn contend(
    s: Settings,
    store: RoleStore,
    api: Option<PodApi>,
    turns: tokio::sync::mpsc::UnboundedSender<Turn>,
) {
    let timings = *store.timings();
    let mut s = s;
    let mut observer = Observer::new();
    let mut streamed: Option<Streamed> = None;
    // In a cluster: the holder this replica follows, as first read (the agent took its role
    // from the record moments before).
    let mut following: Option<String> = None;
    // Completed looks, and the look that first saw the record's current version: a replica that
    // streamed in that look or the one before streamed while the holder still renewed, however
    // long a loaded machine takes between looks.
    let mut look: u64 = 0;
    let mut version_first_look: Option<(crate::leader::Version, u64)> = None;
    let mut said = String::new();
    let mut say = |text: String| {
        if text != said {
            crate::info!("{text}");
            said = text;
        }
    };
    let mut pause = timings.renew_every();
    let mut yielded: u32 = 0;
    loop {
        tokio::time::sleep(pause).await;
        pause = timings.renew_every();
        let Ok(db) = Db::local(&s, pg::DEADLINE).await else {
            continue;
        };
        let Ok(own) = replica_state(&db).await else {
            continue;
        };
        if !own.in_recovery {
            continue;
        }
        let record = match store.read().await {
            Ok(Some(r)) => r,
            // An unreadable or missing record is never free.
            Ok(None) | Err(_) => continue,
        };
        let seen = Instant::now();
        observer.observe(&record, seen);
        pause = next_look(timings.renew_every(), observer.remaining(&record, seen));
        look += 1;
        if version_first_look
            .as_ref()
            .is_none_or(|(v, _)| *v != record.version)
        {
            version_first_look = Some((record.version.clone(), look));
        }
        // A switchover: the record handed to this member is taken (crate::switchover).
        if let Some(taken) =
            crate::switchover::take_handed(&s, &store, &db, &record, &mut observer).await
        {
            match taken {
                Ok(turn) => {
                    let _ = turns.send(turn);
                }
                Err(e) => crate::warn!("taking the leader record handed to this member: {e}"),
            }
            return;
        }
        if let Some(h) = &record.holder
            && h.member != s.pod_name
        {
            match s.env.mode {
                AgentMode::Local if member_port(&s, &h.member) != Some(s.env.master_port) => {
                    let next = apply(&s, &decide(&s, Some(&record)));
                    match repoint(&db, &next).await {
                        Ok(()) => {
                            crate::info!(
                                "the leader record names {} the master: following it on port {}",
                                h.member,
                                next.env.master_port
                            );
                            s = next;
                            streamed = None;
                            let _ = turns.send(Turn::Repoint(Box::new(s.clone())));
                        }
                        Err(e) => crate::warn!("re-pointing to {}: {e}", h.member),
                    }
                    continue;
                }
                AgentMode::Kubernetes => {
                    let before = following.replace(h.member.clone());
                    if before.as_ref().is_some_and(|b| *b != h.member) {
                        crate::info!(
                            "the leader record names {} the master: following it through {}:{} (the Service selects the pod labelled {}={})",
                            h.member,
                            s.env.master_host,
                            s.env.master_port,
                            pgset_spec::contract::labels::ROLE,
                            Role::Master.label()
                        );
                        s = apply(&s, &decide(&s, Some(&record)));
                        streamed = None;
                        let _ = turns.send(Turn::Repoint(Box::new(s.clone())));
                        continue;
                    }
                }
                AgentMode::Local => {}
            }
        }
        if streams_from_holder(&s, &own, &record) {
            streamed = Some(Streamed {
                at: seen,
                look,
                timeline: own
                    .received_tli
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(0),
                unknown_lag: own.unknown_lag.unwrap_or(0).max(0) as u64,
            });
        }
        let holder = record
            .holder
            .as_ref()
            .map(|h| h.member.clone())
            .unwrap_or_else(|| "nobody".into());
        // A manual failover (`failover --to`) names the one member that takes the record.
        let received_timeline = streamed.map(|st| st.timeline).filter(|t| *t > 0);
        match crate::switchover::manual_failover(
            &s,
            &store,
            &db,
            &record,
            received_timeline,
            &mut observer,
        )
        .await
        {
            crate::switchover::Manual::NotAsked => {}
            crate::switchover::Manual::OtherNamed(m) => {
                say(format!(
                    "the leader record of {holder} expired; failover to {m} was asked: no promotion here"
                ));
                continue;
            }
            crate::switchover::Manual::Refused(why) => {
                say(why);
                continue;
            }
            crate::switchover::Manual::Took(Ok(turn)) => {
                let _ = turns.send(turn);
                return;
            }
            crate::switchover::Manual::Took(Err(e)) => {
                crate::warn!("failover to this member failed after taking the leader record: {e}");
                return;
            }
        }
        // Under synchronous replication only the replicas on the record's list hold every
        // acknowledged commit.
        let listed = crate::sync::parse_note(record.note(SYNCHRONOUS));
        let verdict = eligibility(&Look {
            holder: holder.clone(),
            timeline: record.timeline,
            free: record.holder.is_none() || observer.expired(&record, seen),
            failover: s.failover(),
            paused: record.failover_paused() || paused(&s),
            streamed,
            seen,
            final_look: version_first_look.as_ref().map_or(look, |(_, l)| *l),
            recent: timings.lease_duration() + timings.renew_every(),
            lag_limit: s.maximum_lag_on_failover(),
            sync_objection: crate::sync::objection(s.synchronous(), &record, &s.pod_name),
            listed: listed.contains(&s.pod_name),
        });
        match verdict {
            Eligibility::Held => {
                yielded = 0;
                continue;
            }
            Eligibility::Not(why) => {
                say(why);
                continue;
            }
            Eligibility::Eligible => {}
        }
        let mine = own.receive_lsn.unwrap_or(0).max(0) as u64;
        let mut others = match peers(&s, api.as_ref()).await {
            Ok(p) => p,
            Err(e) => {
                say(format!(
                    "the leader record of {holder} expired, but the set's members cannot be listed ({e}): no promotion"
                ));
                continue;
            }
        };
        others.retain(|p| Some(p) != record.holder.as_ref().map(|h| &h.member));
        // A peer that may not be promoted does not make this member wait.
        if s.synchronous().is_some() && !listed.is_empty() {
            others.retain(|p| listed.contains(p));
        }
        let answers = peer_answers(&s, others).await;
        if let Some(o) = objection(s.ordinal, mine, &answers) {
            say(format!(
                "the leader record of {holder} expired; another member goes first ({o})"
            ));
            // It is taking the record now: look again soon to follow it (a synchronous master's
            // first commits wait for a replica to follow), for a few seconds at most.
            yielded += 1;
            if yielded <= FOLLOW_LOOKS {
                pause = pause.min(FOLLOW_LOOK);
            }
            continue;
        }
        crate::info!(
            "the leader record of {holder} expired on this member's clock; taking it (received up to {}, timeline {})",
            pg::lsn_text(mine as i64),
            record.timeline
        );
        let written = match store
            .acquire(record.timeline, IfAbsent::Wait, &mut observer)
            .await
        {
            Ok(Claim::Taken(w)) => w,
            Ok(other) => {
                crate::info!("the leader record was not taken: {other:?}");
                continue;
            }
            Err(e) => {
                crate::warn!("taking the leader record: {e}");
                continue;
            }
        };
        match promote(&s, &store, &db, written).await {
            Ok((held, settings)) => {
                let _ = turns.send(Turn::Promoted {
                    held,
                    settings: Box::new(settings),
                });
                return;
            }
            Err(e) => {
                crate::warn!("promotion failed after taking the leader record: {e}");
                return;
            }
        }
    }
}

/// Rewrites the managed configuration for `next`'s master and reloads it (PostgreSQL 13+
/// reloads `primary_conninfo` and restarts its WAL receiver).
async fn repoint(db: &Db, next: &Settings) -> Result<()> {
    let s2 = next.clone();
    tokio::task::spawn_blocking(move || crate::bootstrap::write_managed_files(&s2))
        .await
        .map_err(|e| Error::Failed(format!("writing the configuration: {e}")))??;
    db.execute_batch("SELECT pg_reload_conf()").await
}

/// The current timeline of a master: the first part of its current WAL file's name.
const TIMELINE_SQL: &str =
    "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::bigint";

/// The timeline of a master, none in recovery (no current WAL position then).
const OWN_TIMELINE_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE \
     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::bigint END";

/// Promotes this member's postgres once the record is its own, and renews the record with the
/// new timeline. On a failure the record is released: this member never accepted a write.
pub(crate) async fn promote(
    s: &Settings,
    store: &RoleStore,
    db: &Db,
    written: Written,
) -> Result<(Written, Settings)> {
    let timings = *store.timings();
    let promoted = async {
        db.execute_batch("SELECT pg_promote(false)").await?;
        loop {
            let r = db.row("SELECT pg_is_in_recovery()", &[]).await?;
            if !r.get::<_, bool>(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tl: i64 = db.row(TIMELINE_SQL, &[]).await?.get(0);
        Ok::<u32, Error>(u32::try_from(tl).unwrap_or(0))
    };
    let left = written
        .give_up_at(&timings)
        .saturating_duration_since(Instant::now());
    let timeline = match tokio::time::timeout(left, promoted).await {
        Ok(Ok(tl)) => tl,
        Ok(Err(e)) => {
            let _ = store.release(&written.record).await;
            return Err(e);
        }
        Err(_) => {
            let _ = store.release(&written.record).await;
            return Err(Error::Failed(
                "postgres was not promoted before the renew deadline".into(),
            ));
        }
    };
    let held = match store.renew(&written.record, timeline).await {
        Ok(HolderWrite::Done(w)) => w,
        Ok(HolderWrite::NotHolder(_)) => {
            return Err(Error::Failed(
                "the leader record names another member right after the promotion".into(),
            ));
        }
        // The keeper renews again before the deadline of the first write.
        Err(_) => written,
    };
    let mut master = s.clone();
    master.role = Role::Master;
    let m2 = master.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || crate::bootstrap::write_managed_files(&m2))
        .await
        .map_err(|e| Error::Failed(e.to_string()))
        .and_then(|r| r)
    {
        crate::warn!("writing the master's configuration after the promotion: {e}");
    }
    crate::info!(
        "promoted: this member is the master on timeline {}",
        held.record.timeline
    );
    Ok((held, master))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_contender_looks_again_just_after_the_record_would_expire_not_a_renewal_later() {
        let every = Duration::from_secs(2);
        // Never seen, or free already: the usual interval (this look decided).
        assert_eq!(next_look(every, None), every);
        assert_eq!(next_look(every, Some(Duration::ZERO)), every);
        // Far from expiry: the usual interval.
        assert_eq!(next_look(every, Some(Duration::from_secs(9))), every);
        // Expiring within the interval: just after it, so the next look finds it expired.
        assert_eq!(
            next_look(every, Some(Duration::from_millis(700))),
            Duration::from_millis(700) + EXPIRY_SLACK
        );
        assert!(next_look(every, Some(Duration::from_millis(1))) > Duration::from_millis(1));
    }

    use super::*;
    use crate::leader::Version;

    fn settings(pod: &str) -> Settings {
        let m = crate::settings::tests::sample_env(pod);
        Settings::from_lookup(|k| m.get(k).cloned()).unwrap()
    }

    fn held_by(member: Option<&str>) -> LeaderRecord {
        LeaderRecord {
            holder: member.map(|m| Holder::new(m, "old-instance")),
            timeline: 1,
            acquired: None,
            renewed: None,
            lease_duration: Duration::from_secs(15),
            transitions: 0,
            notes: Default::default(),
            version: Version::for_tests("1"),
        }
    }

    #[test]
    fn the_role_follows_the_record_not_the_ordinal() {
        let zero = settings("pgset-0");
        let two = settings("pgset-2");
        assert_eq!(decide(&zero, None).role, Role::Master);
        assert_eq!(
            decide(&two, None),
            Decision {
                role: Role::Replica,
                master: Some("pgset-0".into())
            }
        );
        let r = held_by(Some("pgset-2"));
        assert_eq!(
            decide(&two, Some(&r)).role,
            Role::Master,
            "a restart re-takes it"
        );
        assert_eq!(
            decide(&zero, Some(&r)),
            Decision {
                role: Role::Replica,
                master: Some("pgset-2".into())
            }
        );
        let released = held_by(None);
        assert_eq!(decide(&zero, Some(&released)).role, Role::Master);
        assert_eq!(decide(&two, Some(&released)).role, Role::Replica);
    }

    #[test]
    fn the_most_advanced_goes_first_and_of_equals_the_lower_ordinal() {
        assert!(ahead_or_first(10, 2, 9, 1));
        assert!(!ahead_or_first(9, 1, 10, 2));
        assert!(ahead_or_first(10, 1, 10, 2));
        assert!(!ahead_or_first(10, 2, 10, 1));
        assert_eq!(parse_lsn("1/3000028"), Some(0x1_0300_0028));
        assert_eq!(parse_lsn("x"), None);
    }

    /// A member of a cluster in namespace `db`.
    fn cluster_settings(pod: &str) -> Settings {
        let mut m = crate::settings::tests::sample_env(pod);
        m.insert(pgset_spec::contract::env::MODE, "kubernetes".into());
        m.insert(pgset_spec::contract::env::NAMESPACE, "db".into());
        Settings::from_lookup(|k| m.get(k).cloned()).unwrap()
    }

    /// A look at which every rule lets this member take the record: free, failover on and not
    /// paused, streamed on the record's timeline in this very look, within the lag limit.
    fn eligible_look() -> Look {
        let seen = Instant::now();
        Look {
            holder: "pgset-0".into(),
            timeline: 2,
            free: true,
            failover: true,
            paused: false,
            streamed: Some(Streamed {
                at: seen,
                look: 7,
                timeline: 2,
                unknown_lag: 0,
            }),
            seen,
            final_look: 7,
            recent: Duration::from_secs(17),
            lag_limit: 1 << 20,
            sync_objection: None,
            listed: false,
        }
    }

    #[test]
    fn under_synchronous_replication_only_a_listed_replica_is_eligible_whatever_its_lag() {
        let mut l = eligible_look();
        l.sync_objection = Some("only pgset-2 hold every acknowledged commit".into());
        assert!(matches!(eligibility(&l), Eligibility::Not(w) if w.contains("pgset-2")));
        let mut l = eligible_look();
        l.listed = true;
        l.streamed.as_mut().unwrap().unknown_lag = 10 << 20;
        assert_eq!(eligibility(&l), Eligibility::Eligible);
    }

    fn why(l: &Look) -> String {
        match eligibility(l) {
            Eligibility::Not(why) => why,
            other => panic!("expected a reason, got {other:?}"),
        }
    }

    #[test]
    fn a_replica_that_streamed_from_an_expired_holder_on_its_timeline_is_eligible() {
        assert_eq!(eligibility(&eligible_look()), Eligibility::Eligible);
        let released = Look {
            holder: "nobody".into(),
            ..eligible_look()
        };
        assert_eq!(eligibility(&released), Eligibility::Eligible);
    }

    #[test]
    fn a_held_record_is_not_contended_and_says_nothing() {
        let held = Look {
            free: false,
            failover: false,
            paused: true,
            streamed: None,
            ..eligible_look()
        };
        assert_eq!(eligibility(&held), Eligibility::Held);
    }

    #[test]
    fn failover_off_or_paused_promotes_nobody_and_says_which() {
        let off = Look {
            failover: false,
            ..eligible_look()
        };
        assert_eq!(
            why(&off),
            "the leader record of pgset-0 expired; automatic failover is off (PGSET_FAILOVER=false): no promotion"
        );
        let paused = Look {
            paused: true,
            ..eligible_look()
        };
        assert_eq!(
            why(&paused),
            "the leader record of pgset-0 expired; failover is paused: no promotion"
        );
    }

    #[test]
    fn a_replica_that_never_streamed_or_not_recently_is_not_eligible() {
        let never = Look {
            streamed: None,
            ..eligible_look()
        };
        assert_eq!(
            why(&never),
            "the leader record of pgset-0 expired, but this member did not stream from it within 17000 ms: not eligible"
        );
        let l = eligible_look();
        let long_ago = Look {
            streamed: Some(Streamed {
                at: l.seen - Duration::from_secs(18),
                look: 3,
                ..l.streamed.unwrap()
            }),
            final_look: 9,
            ..l.clone()
        };
        assert!(why(&long_ago).contains("did not stream from it within 17000 ms"));
        // Streamed in the look before the one that first saw the final version: while the
        // holder still renewed, however long ago on a loaded machine.
        let slow_machine = Look {
            final_look: 4,
            ..long_ago.clone()
        };
        assert_eq!(eligibility(&slow_machine), Eligibility::Eligible);
        let within = Look {
            streamed: Some(Streamed {
                at: l.seen - Duration::from_secs(16),
                ..long_ago.streamed.unwrap()
            }),
            ..long_ago
        };
        assert_eq!(eligibility(&within), Eligibility::Eligible);
    }

    #[test]
    fn another_timeline_or_too_much_lag_is_not_eligible() {
        let l = eligible_look();
        let other_timeline = Look {
            timeline: 3,
            ..l.clone()
        };
        assert_eq!(
            why(&other_timeline),
            "the leader record of pgset-0 names timeline 3 but this member received timeline 2: not eligible"
        );
        let behind = Look {
            streamed: Some(Streamed {
                unknown_lag: (1 << 20) + 1,
                ..l.streamed.unwrap()
            }),
            ..l.clone()
        };
        assert_eq!(
            why(&behind),
            "this member was 1048577 bytes behind what pgset-0 last reported (limit 1048576): not eligible"
        );
        let at_limit = Look {
            streamed: Some(Streamed {
                unknown_lag: 1 << 20,
                ..l.streamed.unwrap()
            }),
            ..l
        };
        assert_eq!(eligibility(&at_limit), Eligibility::Eligible);
    }

    #[test]
    fn a_peer_that_is_a_master_or_received_more_objects_and_a_silent_one_does_not() {
        let ask = |answers: &[(&str, PeerAnswer)]| {
            let answers: Vec<(String, PeerAnswer)> =
                answers.iter().map(|(p, a)| (p.to_string(), *a)).collect();
            objection(1, 100, &answers)
        };
        assert_eq!(ask(&[]), None);
        assert_eq!(ask(&[("pgset-2", PeerAnswer::Silent)]), None);
        assert_eq!(ask(&[("pgset-2", PeerAnswer::Received(99))]), None);
        assert_eq!(
            ask(&[("pgset-2", PeerAnswer::Received(100))]),
            None,
            "of equals the lower ordinal goes"
        );
        assert_eq!(
            ask(&[("pgset-0", PeerAnswer::Received(100))]).as_deref(),
            Some("pgset-0 received up to 0/64 and this member up to 0/64")
        );
        assert_eq!(
            ask(&[
                ("pgset-2", PeerAnswer::Silent),
                ("pgset-3", PeerAnswer::Received(101))
            ])
            .as_deref(),
            Some("pgset-3 received up to 0/65 and this member up to 0/64")
        );
        assert_eq!(
            ask(&[("pgset-2", PeerAnswer::Master)]).as_deref(),
            Some("pgset-2 runs as a master")
        );
    }

    #[test]
    fn a_peers_status_is_read_from_its_own_answer_only() {
        let status = |member: &str, pg: serde_json::Value| {
            serde_json::json!({"member": member, "postgres": pg}).to_string()
        };
        let replica = status(
            "pgset-2",
            serde_json::json!({"inRecovery": true, "receiveLsn": "1/3000028"}),
        );
        assert_eq!(
            peer_answer("pgset-2", 200, &replica),
            PeerAnswer::Received(0x1_0300_0028)
        );
        assert_eq!(
            peer_answer("pgset-2", 503, &replica),
            PeerAnswer::Silent,
            "only a 200 is an answer"
        );
        assert_eq!(
            peer_answer("pgset-1", 200, &replica),
            PeerAnswer::Silent,
            "another member's answer is not this peer's"
        );
        assert_eq!(peer_answer("pgset-2", 200, "not json"), PeerAnswer::Silent);
        assert_eq!(
            peer_answer(
                "pgset-2",
                200,
                &status("pgset-2", serde_json::json!({"inRecovery": false}))
            ),
            PeerAnswer::Master
        );
        assert_eq!(
            peer_answer(
                "pgset-2",
                200,
                &status("pgset-2", serde_json::json!({"inRecovery": true}))
            ),
            PeerAnswer::Silent,
            "a replica that received nothing yet"
        );
    }

    #[test]
    fn a_cluster_member_is_asked_at_its_name_under_the_headless_service() {
        assert_eq!(peer_host("pgset", "db", "pgset-2"), "pgset-2.pgset.db.svc");
    }

    fn streaming(sender_port: i32, tli: i64) -> ReplicaState {
        ReplicaState {
            in_recovery: true,
            receiver_status: Some("streaming".into()),
            sender_port: Some(sender_port),
            received_tli: Some(tli),
            unknown_lag: Some(0),
            receive_lsn: Some(100),
        }
    }

    #[test]
    fn locally_a_replica_streams_from_the_holder_when_its_sender_is_the_holders_port() {
        let two = apply(
            &settings("pgset-2"),
            &decide(&settings("pgset-2"), Some(&held_by(Some("pgset-1")))),
        );
        assert_eq!(two.env.master_port, 5433);
        let record = held_by(Some("pgset-1"));
        assert!(streams_from_holder(&two, &streaming(5433, 1), &record));
        assert!(!streams_from_holder(&two, &streaming(5432, 1), &record));
        let mut stopped = streaming(5433, 1);
        stopped.receiver_status = Some("waiting".into());
        assert!(!streams_from_holder(&two, &stopped, &record));
    }

    #[test]
    fn in_a_cluster_a_replica_streams_from_the_holder_when_it_receives_the_records_timeline() {
        let two = cluster_settings("pgset-2");
        let record = held_by(Some("pgset-1"));
        // The master Service's port, whatever member serves behind it.
        assert!(streams_from_holder(&two, &streaming(5432, 1), &record));
        assert!(
            !streams_from_holder(&two, &streaming(5432, 2), &record),
            "another timeline is another master"
        );
        let mut stopped = streaming(5432, 1);
        stopped.receiver_status = None;
        assert!(!streams_from_holder(&two, &stopped, &record));
    }

    #[test]
    fn the_pause_file_counts_locally_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let with_root = |mode: &str| {
            let mut m = crate::settings::tests::sample_env("pgset-1");
            m.insert(pgset_spec::contract::env::MODE, mode.into());
            m.insert(pgset_spec::contract::env::NAMESPACE, "db".into());
            m.insert(pgset_spec::contract::env::DATA_ROOT, root.clone());
            Settings::from_lookup(|k| m.get(k).cloned()).unwrap()
        };
        assert!(!paused(&with_root("local")));
        std::fs::write(dir.path().join("pgset.leader.paused"), "").unwrap();
        assert!(paused(&with_root("local")));
        assert!(!paused(&with_root("kubernetes")));
    }

    #[tokio::test]
    async fn locally_the_peers_are_the_membership_file_but_this_member() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("members");
        std::fs::write(&file, "pgset-2\npgset-0\npgset-1\n").unwrap();
        let mut m = crate::settings::tests::sample_env("pgset-1");
        m.insert(
            pgset_spec::contract::env::MEMBERS_FILE,
            file.display().to_string(),
        );
        let s = Settings::from_lookup(|k| m.get(k).cloned()).unwrap();
        assert_eq!(peers(&s, None).await.unwrap(), ["pgset-0", "pgset-2"]);
    }

    /// An API server that answers every request with `status` and `answer`, and the requests'
    /// method and path.
    fn api_answering(
        status: u16,
        answer: serde_json::Value,
    ) -> (PodApi, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                record.lock().unwrap().push(format!(
                    "{} {}",
                    request.method(),
                    request.uri().path()
                ));
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        let client = kube::Client::new(service, "db");
        (PodApi::with_client(client, "db", "pgset"), seen)
    }

    #[tokio::test]
    async fn in_a_cluster_the_peers_are_the_statefulsets_members_but_this_member() {
        let (api, seen) = api_answering(
            200,
            serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                               "metadata": {"name": "pgset", "namespace": "db"},
                               "spec": {"replicas": 3, "selector": {}, "serviceName": "pgset",
                                        "template": {}}}),
        );
        let s = cluster_settings("pgset-1");
        assert_eq!(peers(&s, Some(&api)).await.unwrap(), ["pgset-0", "pgset-2"]);
        assert_eq!(
            *seen.lock().unwrap(),
            ["GET /apis/apps/v1/namespaces/db/statefulsets/pgset"]
        );
    }

    #[tokio::test]
    async fn in_a_cluster_a_set_whose_size_cannot_be_read_has_no_known_peers() {
        let (api, _) = api_answering(
            403,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                               "status": "Failure", "reason": "Forbidden", "code": 403}),
        );
        let e = peers(&cluster_settings("pgset-1"), Some(&api))
            .await
            .unwrap_err();
        assert!(e.contains("`get` statefulsets"), "{e}");
    }

    #[tokio::test]
    async fn a_cluster_peer_whose_name_does_not_resolve_does_not_object() {
        let answers = peer_answers(&cluster_settings("pgset-1"), vec!["pgset-2".into()]).await;
        assert_eq!(answers, [("pgset-2".to_string(), PeerAnswer::Silent)]);
    }

    #[tokio::test]
    async fn in_a_cluster_without_an_api_client_the_peers_are_not_known() {
        let e = peers(&cluster_settings("pgset-1"), None).await.unwrap_err();
        assert_eq!(e, "no API client");
    }

    #[test]
    fn a_local_replica_connects_to_the_holders_port() {
        let zero = settings("pgset-0");
        assert_eq!(zero.env.master_port, 5432);
        let d = decide(&zero, Some(&held_by(Some("pgset-2"))));
        let s = apply(&zero, &d);
        assert_eq!((s.role, s.env.master_port), (Role::Replica, 5434));
        let s = apply(&zero, &decide(&zero, None));
        assert_eq!((s.role, s.env.master_port), (Role::Master, 5432));
    }
}
