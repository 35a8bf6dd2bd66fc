//! Switchover and manual failover from requests on the leader record: the holder answers a
//! switchover (stops postgres cleanly, checks the target received its shutdown checkpoint, hands
//! the record over and rejoins as the target's replica), the target takes a record handed to it,
//! and a replica named by `failover --to` takes an expired record whatever the failover setting.
//!
//! The protocol, every step a compare-and-swap write of the record:
//!
//! 1. `switchover` writes [`annotations::SWITCHOVER`] (a [`SwitchoverRequest`]) with the holder
//!    kept.
//! 2. The holder's renewal returns the record as stored; [`answer`] checks the target streams
//!    from this master (`pg_stat_replication`, by application name) within
//!    `maximumLagOnFailover`, else writes a refused [`SwitchoverOutcome`] and removes the
//!    request (nothing stopped). Otherwise it starts [`Hold`] (renewals that no longer ask
//!    postgres, bounded by [`hold_budget`]), runs a CHECKPOINT (the shutdown checkpoint is then
//!    short) and the supervisor turns readiness off and stops postgres with a fast shutdown
//!    through its one stop escalation. PostgreSQL's clean shutdown makes every WAL sender ship
//!    everything up to the shutdown checkpoint before the postmaster exits.
//! 3. [`finish`], postgres stopped: `pg_control` must say `shut down` (an escalated stop is not
//!    clean), the target's own `/status` must report a receive LSN past the shutdown checkpoint,
//!    and only then one write names the target the holder, with a handed-over outcome carrying
//!    the checkpoint's LSN, and removes the request. Any failure before that write removes the
//!    request, records an aborted outcome with its reason, and the member starts again as the
//!    master (it still holds the record). Writes are never accepted by two members: the old
//!    master is stopped before the hand over and the target promotes only after it.
//! 4. The target's contender ([`take_handed`]): a record naming its member under another
//!    identity with a handed-over outcome whose LSN it received is taken (`acquire`) and the
//!    target promoted. The other replicas follow the new holder.

use std::time::Duration;

use pgset_spec::contract::annotations::{FAILOVER_TO, SWITCHOVER, SWITCHOVER_OUTCOME};
use pgset_spec::contract::{self, SwitchoverOutcome, SwitchoverRequest};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::Result;
use crate::leader::{
    Claim, Holder, HolderWrite, IfAbsent, LeaderRecord, LeaderStore, Observer, Written,
};
use crate::pg::{self, Db};
use crate::pgbin::PgBin;
use crate::role::{self, RoleStore, Turn};
use crate::settings::Settings;

/// A replica as the master's `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// Its application name (the member's name).
    pub member: String,
    /// Whether its state is `streaming`.
    pub streaming: bool,
    /// WAL the master wrote that it has not flushed, in bytes.
    pub behind: u64,
}

/// The member a switchover goes to, or why none: `to` when it streams from this master within
/// `max_lag`, else (no `to`) the streaming replica least behind, ties to the lower ordinal.
pub fn choose(
    request: &SwitchoverRequest,
    me: &str,
    standbys: &[Standby],
    max_lag: u64,
) -> std::result::Result<String, String> {
    let fit = |st: &&Standby| st.streaming && st.behind <= max_lag;
    match &request.to {
        Some(to) if to == me => Err(format!(
            "{to} is the master already; name a replica, or omit --to for the most advanced one"
        )),
        Some(to) => match standbys.iter().find(|st| st.member == *to) {
            None => Err(format!(
                "{to} does not stream from the master {me} (it is not in pg_stat_replication); \
                 start it and wait until it streams, or name a streaming replica"
            )),
            Some(st) if !st.streaming => Err(format!(
                "{to} is connected to the master {me} but does not stream yet; wait until it \
                 streams"
            )),
            Some(st) if st.behind > max_lag => Err(format!(
                "{to} is {} bytes behind the master {me} (limit maximumLagOnFailover {max_lag}); \
                 wait until it catches up",
                st.behind
            )),
            Some(_) => Ok(to.clone()),
        },
        None => standbys
            .iter()
            .filter(fit)
            .min_by_key(|st| {
                (
                    st.behind,
                    pgset_spec::ordinal_of(&st.member).unwrap_or(i32::MAX),
                )
            })
            .map(|st| st.member.clone())
            .ok_or_else(|| {
                format!(
                    "no replica streams from the master {me} within maximumLagOnFailover \
                     ({max_lag} bytes); start one and wait until it streams"
                )
            }),
    }
}

async fn standbys(db: &Db) -> Result<Vec<Standby>> {
    let rows = db
        .rows(
            "SELECT application_name, state = 'streaming',
                    COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn), 0)::bigint
               FROM pg_stat_replication",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Standby {
            member: r.get::<_, Option<String>>(0).unwrap_or_default(),
            streaming: r.get::<_, Option<bool>>(1).unwrap_or(false),
            behind: r.get::<_, i64>(2).max(0) as u64,
        })
        .collect())
}

/// How long the holder keeps renewing once a switchover began without asking postgres (it is
/// being stopped, or stopped, and nobody can write): the lease duration. Past it the renewals
/// stop and the record expires as for a master that died.
pub fn hold_budget(store: &RoleStore) -> Duration {
    store.timings().lease_duration()
}

/// Renewals of the record during a switchover, which do not ask postgres: they end when
/// stopped, when the record names another holder, or at the budget's end.
pub struct Hold {
    latest: watch::Receiver<Written>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Hold {
    fn start(store: RoleStore, held: Written, timeline: u32, budget: Duration) -> Hold {
        let (tx, latest) = watch::channel(held);
        let (stop, mut stopped) = oneshot::channel();
        let until = Instant::now() + budget;
        let task = tokio::spawn(async move {
            let every = store.timings().renew_every();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = &mut stopped => return,
                }
                if Instant::now() >= until {
                    crate::warn!(
                        "the switchover did not end within {} ms: the leader record is no longer \
                         renewed",
                        budget.as_millis()
                    );
                    return;
                }
                let held = tx.borrow().record.clone();
                match store.renew(&held, timeline).await {
                    Ok(HolderWrite::Done(w)) => {
                        let _ = tx.send(w);
                    }
                    Ok(HolderWrite::NotHolder(_)) => return,
                    Err(e) => crate::warn!("renewing the leader record during the switchover: {e}"),
                }
            }
        });
        Hold {
            latest,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the renewals (a write in flight completes first) and returns the record as last
    /// written.
    pub async fn end(mut self) -> Written {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.latest.borrow().clone()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A switchover under way: the request, its target and the renewals that keep the record.
pub struct Stepping {
    /// The request answered.
    pub request: SwitchoverRequest,
    /// The member the record goes to.
    pub target: String,
    /// When this master decided to step down.
    pub began: Instant,
    hold: Hold,
}

impl std::fmt::Debug for Stepping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stepping")
            .field("request", &self.request)
            .field("target", &self.target)
            .finish()
    }
}

fn outcome(
    request_id: &str,
    state: &str,
    from: &str,
    to: Option<&str>,
    timeline: u32,
    lsn: Option<String>,
    reason: Option<String>,
) -> SwitchoverOutcome {
    SwitchoverOutcome {
        id: request_id.to_string(),
        state: state.to_string(),
        from: from.to_string(),
        to: to.map(str::to_string),
        lsn,
        timeline,
        reason,
    }
}

/// The holder's answer to a switchover request on `held` (called after a good renewal): `None`
/// when there is none or it was refused (the refusal written, `held` updated); otherwise the
/// switchover begins: renewals by [`Hold`], a CHECKPOINT, and the caller stops postgres.
pub async fn answer(
    s: &Settings,
    store: &RoleStore,
    held: &mut Written,
    timeline: u32,
) -> Option<Stepping> {
    // A failover request is moot while this master renews the record: left on it, it would
    // keep every other replica from a later automatic failover.
    if let Some(stale) = held.record.note(FAILOVER_TO).map(str::to_string) {
        crate::info!(
            "the master renews the leader record: the failover request {stale} is removed"
        );
        if let Ok(HolderWrite::Done(w)) = store
            .renew_noting(
                &held.record,
                timeline,
                vec![(FAILOVER_TO.to_string(), None)],
            )
            .await
        {
            *held = w;
        }
    }
    let text = held.record.note(SWITCHOVER)?.to_string();
    let me = s.pod_name.clone();
    let request = SwitchoverRequest::parse(&text);
    let chosen = match &request {
        None => Err(format!(
            "the request {text:?} is not a switchover request; ask again with `{} switchover`",
            contract::program_name()
        )),
        Some(r) => match Db::local(s, pg::DEADLINE).await {
            Ok(db) => match standbys(&db).await {
                Ok(list) => choose(r, &me, &list, s.maximum_lag_on_failover()),
                Err(e) => Err(format!("reading pg_stat_replication: {e}")),
            },
            Err(e) => Err(format!("connecting to this master: {e}")),
        },
    };
    let id = request.as_ref().map(|r| r.id.clone()).unwrap_or_default();
    let to = request.as_ref().and_then(|r| r.to.clone());
    match chosen {
        Err(reason) => {
            crate::warn!("switchover refused, nothing stopped: {reason}");
            let o = outcome(
                &id,
                SwitchoverOutcome::REFUSED,
                &me,
                to.as_deref(),
                timeline,
                None,
                Some(reason),
            );
            if let Ok(HolderWrite::Done(w)) = store
                .renew_noting(
                    &held.record,
                    timeline,
                    vec![
                        (SWITCHOVER.to_string(), None),
                        (SWITCHOVER_OUTCOME.to_string(), Some(o.to_note())),
                    ],
                )
                .await
            {
                *held = w;
            }
            None
        }
        Ok(target) => {
            let request = request?;
            crate::info!(
                "switchover to {target} asked (request {}): CHECKPOINT, readiness off, then a \
                 fast shutdown; the leader record is renewed for at most {} ms meanwhile",
                request.id,
                hold_budget(store).as_millis()
            );
            let began = Instant::now();
            let hold = Hold::start(store.clone(), held.clone(), timeline, hold_budget(store));
            if let Ok(db) = Db::local(s, pg::DEADLINE).await
                && let Err(e) = db.execute_batch("CHECKPOINT").await
            {
                crate::warn!(
                    "the CHECKPOINT before the switchover did not complete ({e}); stopping anyway"
                );
            }
            Some(Stepping {
                request,
                target,
                began,
                hold,
            })
        }
    }
}

/// What `member`'s agent says it received (`postgres.receiveLsn`), while it is a replica.
pub async fn received_by(s: &Settings, member: &str) -> Option<u64> {
    let (code, body) = role::peer_status(s, member).await?;
    if code != 200 && code != 503 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    if v["member"].as_str() != Some(member) || v["postgres"]["inRecovery"].as_bool() != Some(true) {
        return None;
    }
    v["postgres"]["receiveLsn"]
        .as_str()
        .and_then(crate::rewind::parse_lsn)
}

/// How long the stepped-down master waits for the target to report its shutdown checkpoint.
fn catch_up_wait(store: &RoleStore) -> Duration {
    store.timings().lease_duration() / 3
}

/// Ends a switchover once postgres exited: hands the record over when the shutdown was clean and
/// the target received the shutdown checkpoint; otherwise records why not and keeps the record
/// (the caller then starts postgres as the master again). The caller re-reads the record either
/// way and takes the role it names.
pub async fn finish(s: &Settings, bin: &PgBin, store: &RoleStore, step: Stepping) {
    let Stepping {
        request,
        target,
        began,
        hold,
    } = step;
    let me = s.pod_name.clone();
    let checked = ready_to_hand_over(s, bin, store, &target).await;
    let held = hold.end().await;
    let timeline = held.record.timeline;
    let (writes, handed) = match &checked {
        Ok(checkpoint) if Instant::now() < held.give_up_at(store.timings()) => {
            let o = outcome(
                &request.id,
                SwitchoverOutcome::HANDED_OVER,
                &me,
                Some(&target),
                timeline,
                Some(crate::rewind::lsn_text(*checkpoint)),
                None,
            );
            let to = Holder::new(&target, format!("handover-{}", request.id));
            (
                store
                    .hand_over_noting(
                        &held.record,
                        &to,
                        vec![
                            (SWITCHOVER.to_string(), None),
                            (SWITCHOVER_OUTCOME.to_string(), Some(o.to_note())),
                        ],
                    )
                    .await,
                true,
            )
        }
        other => {
            let reason = match other {
                Err(r) => r.clone(),
                Ok(_) => format!(
                    "the switchover took longer than the renew deadline allows ({} ms)",
                    began.elapsed().as_millis()
                ),
            };
            crate::warn!("switchover to {target} aborted: {reason}; starting again as the master");
            let o = outcome(
                &request.id,
                SwitchoverOutcome::ABORTED,
                &me,
                Some(&target),
                timeline,
                None,
                Some(reason),
            );
            (
                store
                    .renew_noting(
                        &held.record,
                        timeline,
                        vec![
                            (SWITCHOVER.to_string(), None),
                            (SWITCHOVER_OUTCOME.to_string(), Some(o.to_note())),
                        ],
                    )
                    .await,
                false,
            )
        }
    };
    match (writes, handed) {
        (Ok(HolderWrite::Done(_)), true) => crate::info!(
            "handed the leader record to {target} {} ms after the switchover began (shutdown \
             checkpoint {}); rejoining as its replica",
            began.elapsed().as_millis(),
            checked.map(crate::rewind::lsn_text).unwrap_or_default()
        ),
        (Ok(HolderWrite::Done(_)), false) => {}
        (Ok(HolderWrite::NotHolder(r)), _) => crate::warn!(
            "the leader record names {} now, not this member; taking the role it names",
            r.and_then(|r| r.holder)
                .map(|h| h.to_string())
                .unwrap_or_else(|| "nobody".into())
        ),
        (Err(e), _) => crate::warn!("writing the switchover's end on the leader record: {e}"),
    }
}

/// The shutdown checkpoint the target received, or why the record is not handed over.
async fn ready_to_hand_over(
    s: &Settings,
    bin: &PgBin,
    store: &RoleStore,
    target: &str,
) -> std::result::Result<u64, String> {
    let state = crate::supervise::control_state(&s.pgdata());
    if state != Some("shut down") {
        return Err(format!(
            "postgres did not shut down cleanly (pg_control says {}), so its last WAL is not \
             known to have reached {target}",
            state.unwrap_or("nothing readable")
        ));
    }
    let (s2, b2) = (s.clone(), bin.clone());
    let cd = tokio::task::spawn_blocking(move || crate::rewind::control_data(&b2, &s2.pgdata()))
        .await
        .map_err(|e| format!("reading pg_control: {e}"))?
        .map_err(|e| format!("reading pg_control: {e}"))?;
    let deadline = Instant::now() + catch_up_wait(store);
    let mut last = None;
    loop {
        last = received_by(s, target).await.or(last);
        if let Some(lsn) = last
            && lsn > cd.checkpoint
        {
            return Ok(cd.checkpoint);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{target} did not report WAL past the shutdown checkpoint {} within {} ms (it \
                 reported {})",
                crate::rewind::lsn_text(cd.checkpoint),
                catch_up_wait(store).as_millis(),
                last.map(crate::rewind::lsn_text)
                    .unwrap_or_else(|| "nothing".into())
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica's own received LSN.
async fn own_received(db: &Db) -> Option<u64> {
    let r = db
        .row(
            "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint",
            &[],
        )
        .await
        .ok()?;
    r.get::<_, Option<i64>>(0).map(|v| v.max(0) as u64)
}

/// The target's part (called by the contender with each record it reads): a record handed to
/// this member (its member named under another identity, a handed-over outcome naming it) is
/// taken once this member received the outcome's LSN, and postgres promoted. `None`: the record
/// is not handed to this member (or not yet received up to it).
pub async fn take_handed(
    s: &Settings,
    store: &RoleStore,
    db: &Db,
    record: &LeaderRecord,
    observer: &mut Observer,
) -> Option<Result<Turn>> {
    let record = match handed_to(record, &s.pod_name, store.me()) {
        Some(_) => record.clone(),
        // A switchover that may name this member is under way: the record is looked at often
        // until it is answered (the holder renews it meanwhile), so the hand over is taken at
        // once instead of at the contender's next look.
        None if may_come_here(record, &s.pod_name) => watch_request(store, &s.pod_name).await?,
        None => return None,
    };
    let o = handed_to(&record, &s.pod_name, store.me())?;
    let lsn = o.lsn.as_deref().and_then(crate::rewind::parse_lsn)?;
    let mine = own_received(db).await?;
    if mine <= lsn {
        crate::info!(
            "the leader record is handed to this member; waiting to receive past {} (received {})",
            crate::rewind::lsn_text(lsn),
            crate::rewind::lsn_text(mine)
        );
        return None;
    }
    crate::info!(
        "{} handed the leader record to this member (shutdown checkpoint {}, received {}): \
         taking it and promoting",
        o.from,
        crate::rewind::lsn_text(lsn),
        crate::rewind::lsn_text(mine)
    );
    take_and_promote(s, store, db, record.timeline, observer, Vec::new()).await
}

/// The handed-over outcome of a record handed to `member` (named under an identity other than
/// this incarnation's).
fn handed_to(record: &LeaderRecord, member: &str, me: &Holder) -> Option<SwitchoverOutcome> {
    let holder = record.holder.as_ref()?;
    if holder.member != member || holder == me {
        return None;
    }
    let o = SwitchoverOutcome::parse(record.note(SWITCHOVER_OUTCOME)?)?;
    (o.state == SwitchoverOutcome::HANDED_OVER && o.to.as_deref() == Some(member)).then_some(o)
}

/// Whether a switchover request on `record`, held by another member, may go to `member`.
fn may_come_here(record: &LeaderRecord, member: &str) -> bool {
    record.holder.as_ref().is_some_and(|h| h.member != member)
        && record
            .note(SWITCHOVER)
            .and_then(SwitchoverRequest::parse)
            .is_some_and(|r| r.to.as_deref().is_none_or(|to| to == member))
}

/// How often a possible target looks at the record while a switchover is under way.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Reads the record every [`WATCH_EVERY`] until it is handed to `member` (returned), the request
/// is answered otherwise, or the holder's renewal budget passed.
async fn watch_request(store: &RoleStore, member: &str) -> Option<LeaderRecord> {
    let until = Instant::now() + hold_budget(store) + store.timings().renew_every();
    while Instant::now() < until {
        tokio::time::sleep(WATCH_EVERY).await;
        let Ok(Some(r)) = store.read().await else {
            continue;
        };
        if handed_to(&r, member, store.me()).is_some() {
            return Some(r);
        }
        // Answered otherwise (refused, aborted, or handed to another member).
        r.note(SWITCHOVER)?;
    }
    None
}

/// Takes the record (one compare-and-swap) and promotes postgres. `None`: the record was not
/// taken (it changed, or could not be read or written), so the contender looks again.
async fn take_and_promote(
    s: &Settings,
    store: &RoleStore,
    db: &Db,
    timeline: u32,
    observer: &mut Observer,
    notes: Vec<(String, Option<String>)>,
) -> Option<Result<Turn>> {
    let written = match store.acquire(timeline, IfAbsent::Wait, observer).await {
        Ok(Claim::Taken(w)) => w,
        Ok(other) => {
            crate::info!("the leader record was not taken: {other:?}");
            return None;
        }
        Err(e) => {
            crate::warn!("taking the leader record: {e}");
            return None;
        }
    };
    let (mut held, settings) = match role::promote(s, store, db, written).await {
        Ok(done) => done,
        Err(e) => return Some(Err(e)),
    };
    if !notes.is_empty() {
        let tl = held.record.timeline;
        if let Ok(HolderWrite::Done(w)) = store.renew_noting(&held.record, tl, notes).await {
            held = w;
        }
    }
    Some(Ok(Turn::Promoted {
        held,
        settings: Box::new(settings),
    }))
}

/// What a manual failover (`failover --to`) on an expired record means for this replica.
pub enum Manual {
    /// None was asked.
    NotAsked,
    /// Another member is named: this one does not take the record.
    OtherNamed(String),
    /// This member was named and took the record (or failed to, after taking it).
    Took(Result<Turn>),
    /// This member was named but cannot take the record; why.
    Refused(String),
}

/// A replica's answer to a manual failover once the record expired on its clock (or was
/// released): named, it takes the record on the record's timeline whatever the failover
/// setting or pause, reports what it received and records the outcome; `received_timeline` is
/// the timeline it last streamed (from its WAL receiver, else its last restartpoint).
pub async fn manual_failover(
    s: &Settings,
    store: &RoleStore,
    db: &Db,
    record: &LeaderRecord,
    received_timeline: Option<u32>,
    observer: &mut Observer,
) -> Manual {
    let Some(request) = record.note(FAILOVER_TO).and_then(SwitchoverRequest::parse) else {
        return Manual::NotAsked;
    };
    let named = request.to.clone().unwrap_or_default();
    if named != s.pod_name {
        return Manual::OtherNamed(named);
    }
    let restartpoint = async {
        db.row(
            "SELECT timeline_id::bigint FROM pg_control_checkpoint()",
            &[],
        )
        .await
        .ok()
        .and_then(|r| u32::try_from(r.get::<_, i64>(0)).ok())
    };
    let timeline = match received_timeline {
        Some(t) => Some(t),
        None => restartpoint.await,
    };
    if timeline != Some(record.timeline) {
        return Manual::Refused(format!(
            "failover to this member was asked, but the leader record names timeline {} and this \
             member's WAL is on timeline {}",
            record.timeline,
            timeline
                .map(|t| t.to_string())
                .unwrap_or_else(|| "unknown".into())
        ));
    }
    let received = own_received(db).await.unwrap_or(0);
    let from = record
        .holder
        .as_ref()
        .map(|h| h.member.clone())
        .unwrap_or_else(|| "nobody".into());
    crate::info!(
        "failover to this member asked (request {}); the leader record of {from} expired: taking \
         it with WAL received up to {} on timeline {}",
        request.id,
        crate::rewind::lsn_text(received),
        record.timeline
    );
    let o = outcome(
        &request.id,
        SwitchoverOutcome::PROMOTED,
        &from,
        Some(&s.pod_name),
        record.timeline,
        Some(crate::rewind::lsn_text(received)),
        None,
    );
    let notes = vec![
        (FAILOVER_TO.to_string(), None),
        (SWITCHOVER_OUTCOME.to_string(), Some(o.to_note())),
    ];
    match take_and_promote(s, store, db, record.timeline, observer, notes).await {
        Some(taken) => Manual::Took(taken),
        None => Manual::Refused(
            "failover to this member was asked, but the leader record changed before it was \
             taken; looking again"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(member: &str, streaming: bool, behind: u64) -> Standby {
        Standby {
            member: member.into(),
            streaming,
            behind,
        }
    }

    fn ask(to: Option<&str>) -> SwitchoverRequest {
        SwitchoverRequest::new(to)
    }

    #[test]
    fn a_named_target_must_stream_from_the_master_within_the_lag_limit() {
        let list = [
            st("pgset-1", true, 10),
            st("pgset-2", false, 0),
            st("pgset-3", true, 5000),
        ];
        assert_eq!(
            choose(&ask(Some("pgset-1")), "pgset-0", &list, 1000),
            Ok("pgset-1".into())
        );
        let e = choose(&ask(Some("pgset-2")), "pgset-0", &list, 1000).unwrap_err();
        assert!(e.contains("does not stream yet"), "{e}");
        let e = choose(&ask(Some("pgset-3")), "pgset-0", &list, 1000).unwrap_err();
        assert!(
            e.contains("5000 bytes behind") && e.contains("wait until it catches up"),
            "{e}"
        );
        let e = choose(&ask(Some("pgset-9")), "pgset-0", &list, 1000).unwrap_err();
        assert!(e.contains("not in pg_stat_replication"), "{e}");
        let e = choose(&ask(Some("pgset-0")), "pgset-0", &list, 1000).unwrap_err();
        assert!(e.contains("is the master already"), "{e}");
    }

    #[test]
    fn without_a_target_the_least_behind_streaming_replica_goes_ties_to_the_lower_ordinal() {
        let list = [
            st("pgset-2", true, 0),
            st("pgset-1", true, 0),
            st("pgset-3", false, 0),
        ];
        assert_eq!(
            choose(&ask(None), "pgset-0", &list, 1000),
            Ok("pgset-1".into())
        );
        let list = [st("pgset-1", true, 20), st("pgset-2", true, 3)];
        assert_eq!(
            choose(&ask(None), "pgset-0", &list, 1000),
            Ok("pgset-2".into())
        );
        let e = choose(&ask(None), "pgset-0", &[st("pgset-1", false, 0)], 1000).unwrap_err();
        assert!(e.contains("no replica streams"), "{e}");
    }
}
