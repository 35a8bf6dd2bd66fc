//! The master role from the leader record: which role this member takes at start, the master's
//! claim of the record before postgres runs, and the holder's renewals while postgres answers,
//! which end (and make the agent stop postgres) at the renew deadline without a good renewal.

use std::time::Duration;

use pgset_spec::contract::AgentMode;
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
    /// The record names another master: the replica follows it now (its `primary_conninfo`
    /// rewritten and reloaded).
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

/// The local mode's pause switch: `<data root>/<cluster>.leader.paused`.
fn paused(s: &Settings) -> bool {
    s.env
        .data_root
        .join(format!(
            "{}.{}.paused",
            s.env.cluster,
            pgset_spec::contract::LEADER_SUFFIX
        ))
        .exists()
}

/// The other members a contender compares itself with (local mode: the membership file).
fn peers(s: &Settings) -> Vec<String> {
    let mut members: Vec<String> = s
        .env
        .members_file
        .as_deref()
        .and_then(pgset_spec::contract::read_members)
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    members.retain(|m| *m != s.pod_name);
    members.sort();
    members
}

/// Why a peer makes this member not the one to promote, or `None`.
async fn peer_objection(s: &Settings, mine: u64, peer: &str) -> Option<String> {
    let own = s.env.health_addr?;
    let port = member_port(s, peer)?.checked_add(own.port().checked_sub(s.env.port)?)?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (code, body) = crate::health::get(addr, pgset_spec::contract::HEALTH_STATUS_PATH).await?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    if v["member"].as_str() != Some(peer) {
        return None;
    }
    let pgv = &v["postgres"];
    if pgv["inRecovery"].as_bool() == Some(false) {
        return Some(format!("{peer} runs as a master"));
    }
    let theirs = pgv["receiveLsn"].as_str().and_then(parse_lsn)?;
    let them = pgset_spec::ordinal_of(peer)?;
    (!ahead_or_first(mine, s.ordinal, theirs, them)).then(|| {
        format!(
            "{peer} received up to {} and this member up to {}",
            pg::lsn_text(theirs as i64),
            pg::lsn_text(mine as i64)
        )
    })
}

/// A replica's part in failover (local mode), every `renew_every`: it notes when its WAL
/// receiver streamed from the holder; it follows a new holder; and when the record expired on
/// its own clock (or was released) while failover is on and not paused, and it streamed from
/// that holder within the lease duration (+ one renewal), on its timeline, within
/// `maximumLagOnFailover`, and no reachable member received more (ties: the lower ordinal), it
/// takes the record (compare-and-swap), promotes postgres and renews with the new timeline.
pub async fn contend(
    s: Settings,
    store: RoleStore,
    turns: tokio::sync::mpsc::UnboundedSender<Turn>,
) {
    let timings = *store.timings();
    let mut s = s;
    let mut observer = Observer::new();
    let mut streamed: Option<Streamed> = None;
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
    loop {
        tokio::time::sleep(timings.renew_every()).await;
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
            && member_port(&s, &h.member) != Some(s.env.master_port)
        {
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
        let from_holder = own.receiver_status.as_deref() == Some("streaming")
            && own.sender_port.and_then(|p| u16::try_from(p).ok()) == Some(s.env.master_port);
        if from_holder {
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
        let free = record.holder.is_none() || observer.expired(&record, seen);
        if !free {
            continue;
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
        if !s.failover() {
            say(format!(
                "the leader record of {holder} expired; automatic failover is off ({}=false): no promotion",
                pgset_spec::contract::env::FAILOVER
            ));
            continue;
        }
        if record.failover_paused() || paused(&s) {
            say(format!(
                "the leader record of {holder} expired; failover is paused: no promotion"
            ));
            continue;
        }
        let recent = timings.lease_duration() + timings.renew_every();
        let final_look = version_first_look.as_ref().map_or(look, |(_, l)| *l);
        let Some(st) = streamed.filter(|st| {
            st.look + 1 >= final_look || seen.saturating_duration_since(st.at) <= recent
        }) else {
            say(format!(
                "the leader record of {holder} expired, but this member did not stream from it within {} ms: not eligible",
                recent.as_millis()
            ));
            continue;
        };
        if st.timeline != record.timeline {
            say(format!(
                "the leader record of {holder} names timeline {} but this member received timeline {}: not eligible",
                record.timeline, st.timeline
            ));
            continue;
        }
        if st.unknown_lag > s.maximum_lag_on_failover() {
            say(format!(
                "this member was {} bytes behind what {holder} last reported (limit {}): not eligible",
                st.unknown_lag,
                s.maximum_lag_on_failover()
            ));
            continue;
        }
        let mine = own.receive_lsn.unwrap_or(0).max(0) as u64;
        let mut objection = None;
        for peer in peers(&s) {
            if Some(&peer) == record.holder.as_ref().map(|h| &h.member) {
                continue;
            }
            if let Some(o) = peer_objection(&s, mine, &peer).await {
                objection = Some(o);
                break;
            }
        }
        if let Some(o) = objection {
            say(format!(
                "the leader record of {holder} expired; another member goes first ({o})"
            ));
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
