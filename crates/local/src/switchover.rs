//! `local switchover` and `local failover --to`: a request written on the set's leader record
//! (`<dir>/<name>.leader`, compare-and-swap, the holder kept), judged first from the record and
//! the members' own agents, then followed until the new master holds the record and accepts
//! writes and (switchover) the old master streams from it.

use std::path::Path;
use std::time::{Duration, Instant};

use pgset_agent::leader::{FileStore, Holder, LeaderRecord, LeaderStore, LeaderTimings};
use pgset_spec::contract::annotations::{FAILOVER_TO, SWITCHOVER, SWITCHOVER_OUTCOME};
use pgset_spec::contract::{self, SwitchoverOutcome, SwitchoverRequest};
use serde::Serialize;

use crate::{LocalSet, Result, local_err, read_set};

/// What a switchover or failover did, as the command prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The request's id.
    pub id: String,
    /// The master before.
    pub from: String,
    /// The master now.
    pub to: String,
    /// The new master's timeline.
    pub timeline: u32,
    /// The LSN of the hand over (the old master's shutdown checkpoint), or what the new master
    /// had received (failover).
    pub lsn: Option<String>,
    /// Milliseconds from the last moment the old master was seen accepting writes to the first
    /// moment the new one was, polled every 50 ms over the members' sockets.
    pub write_gap_ms: Option<u64>,
    /// How the old master rejoined (switchover), in words.
    pub old_master: String,
}

impl Report {
    /// The one line the command prints.
    pub fn line(&self) -> String {
        format!(
            "{} → {}: master on timeline {}, write gap {}, {}",
            self.from,
            self.to,
            self.timeline,
            self.write_gap_ms
                .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "not measured".into()),
            self.old_master
        )
    }
}

fn store(dir: &Path, set: &LocalSet) -> Result<FileStore> {
    let timings = LeaderTimings::for_lease(pgset_agent::settings::DEFAULT_LEADER_LEASE)
        .map_err(|e| local_err(e.to_string()))?;
    Ok(FileStore::new(
        dir,
        &set.name,
        Holder::new("pgset-local", format!("cli-{}", std::process::id())),
        timings,
    ))
}

async fn read_record(store: &FileStore) -> Result<Option<LeaderRecord>> {
    store
        .read()
        .await
        .map_err(|e| local_err(format!("the leader record cannot be read: {e}")))
}

/// The set's members (the membership file), sorted by ordinal.
fn members(dir: &Path, set: &LocalSet) -> Vec<String> {
    let mut m: Vec<String> = contract::read_members(&dir.join(crate::MEMBERS_FILE))
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    m.sort_by_key(|n| pgset_spec::ordinal_of(n).unwrap_or(i32::MAX));
    m.retain(|n| pgset_spec::ordinal_of(n).is_some_and(|k| set.member(k) == *n));
    m
}

/// What a member's agent says of its postgres (`/status`'s `postgres`), when it answers.
async fn agent_status(set: &LocalSet, member: &str) -> Option<serde_json::Value> {
    let k = pgset_spec::ordinal_of(member)?;
    let (_, body) =
        pgset_agent::health::get(set.health_addr(k), contract::HEALTH_STATUS_PATH).await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    (v["member"].as_str() == Some(member)).then(|| v["postgres"].clone())
}

/// Whether `member`'s agent reports its postgres streaming as a replica.
async fn streams(set: &LocalSet, member: &str) -> bool {
    agent_status(set, member).await.is_some_and(|p| {
        p["inRecovery"].as_bool() == Some(true) && p["walReceiver"].as_str() == Some("streaming")
    })
}

/// The timeline of `member`'s postgres when it accepts writes now (answers, not in recovery,
/// not read-only); `None` otherwise.
async fn writable(dir: &Path, set: &LocalSet, member: &str) -> Option<u32> {
    let k = pgset_spec::ordinal_of(member)?;
    let db = pgset_agent::Db::socket(
        &dir.join("run"),
        set.member_port(k),
        "pgset-switchover",
        Duration::from_millis(500),
    )
    .await
    .ok()?;
    let r = db
        .row(
            "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off',
                    CASE WHEN pg_is_in_recovery() THEN NULL ELSE
                      ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::bigint
                    END",
            &[],
        )
        .await
        .ok()?;
    if !r.get::<_, bool>(0) {
        return None;
    }
    r.get::<_, Option<i64>>(1)
        .and_then(|t| u32::try_from(t).ok())
}

/// The holder of a record that has one, else the error that says so.
fn holder_of(record: Option<&LeaderRecord>, dir: &Path) -> Result<Holder> {
    let Some(r) = record else {
        return Err(local_err(format!(
            "the set in {} has no leader record: it has no master yet; start it with `{} local \
             up --dir {}`",
            dir.display(),
            contract::program_name(),
            dir.display()
        )));
    };
    r.holder.clone().ok_or_else(|| {
        local_err(
            "the leader record names no master (it was released); wait until a member takes it \
             (`local status`)"
                .to_string(),
        )
    })
}

fn check_member(dir: &Path, set: &LocalSet, to: &str) -> Result<()> {
    let known = members(dir, set);
    if known.iter().any(|m| m == to) {
        return Ok(());
    }
    Err(local_err(format!(
        "{to} is not a member of the set in {} (members: {}); name one of them",
        dir.display(),
        known.join(", ")
    )))
}

/// Writes the note `key` = `value` on the record by compare-and-swap, as long as `holder` still
/// holds it (a renewal between the read and the write is retried on the new version).
async fn write_note(
    store: &FileStore,
    dir: &Path,
    holder: &Holder,
    key: &str,
    value: &str,
) -> Result<LeaderRecord> {
    for _ in 0..20 {
        let current = read_record(store).await?;
        if holder_of(current.as_ref(), dir)? != *holder {
            return Err(local_err(format!(
                "the leader record changed hands while the request was written (it names {} now); \
                 nothing was asked: look at `local status` and ask again",
                current
                    .and_then(|r| r.holder)
                    .map(|h| h.member)
                    .unwrap_or_else(|| "nobody".into())
            )));
        }
        let record = current.expect("checked above");
        if let Some(written) = store
            .replace(&record.with_note(key, Some(value)))
            .await
            .map_err(|e| local_err(format!("writing the request on the leader record: {e}")))?
        {
            return Ok(written);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(local_err(
        "the leader record kept changing while the request was written; ask again".to_string(),
    ))
}

/// Removes the request `id` (note `key`) when it is still on the record, unanswered: a request
/// nobody answered in time is not left to surprise a later run.
async fn withdraw(store: &FileStore, key: &str, id: &str) {
    for _ in 0..20 {
        let Ok(Some(r)) = store.read().await else {
            return;
        };
        if r.note(key)
            .and_then(SwitchoverRequest::parse)
            .is_none_or(|q| q.id != id)
        {
            return;
        }
        if let Ok(Some(_)) = store.replace(&r.with_note(key, None)).await {
            return;
        }
    }
}

/// The outcome note of request `id`, once written.
fn outcome_of(record: &LeaderRecord, id: &str) -> Option<SwitchoverOutcome> {
    SwitchoverOutcome::parse(record.note(SWITCHOVER_OUTCOME)?).filter(|o| o.id == id)
}

/// A directory's inode: the data directory the member runs on stays the same one.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Kept copies of `member` in `dir` (`<member>.previous`, `<member>.diverged-*`).
fn kept_copies(dir: &Path, member: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            *n == format!("{member}.previous") || n.starts_with(&format!("{member}.diverged-"))
        })
        .collect();
    out.sort();
    out
}

/// Asks the master of the set in `dir` to hand over to `to` (or to the most advanced streaming
/// replica) and waits until the new master holds the record and accepts writes, and the old
/// master streams from it, within `timeout`. Refused, with nothing written, for no record or no
/// holder, an unknown member, the master itself, or a member whose agent does not report it
/// streaming.
pub async fn switchover(dir: &Path, to: Option<&str>, timeout: Duration) -> Result<Report> {
    let set = read_set(dir)?;
    let store = store(dir, &set)?;
    let record = read_record(&store).await?;
    let holder = holder_of(record.as_ref(), dir)?;
    if let Some(to) = to {
        check_member(dir, &set, to)?;
        if to == holder.member {
            return Err(local_err(format!(
                "{to} is the master already; name a replica (`local status` lists them), or omit \
                 --to for the most advanced one"
            )));
        }
        if !streams(&set, to).await {
            return Err(local_err(format!(
                "{to} does not stream from the master {}: its agent does not report a streaming \
                 WAL receiver; start it (`local up --dir {}`) and wait until `local status` shows \
                 it streaming",
                holder.member,
                dir.display()
            )));
        }
    } else {
        let mut any = false;
        for m in members(dir, &set) {
            if m != holder.member && streams(&set, &m).await {
                any = true;
            }
        }
        if !any {
            return Err(local_err(format!(
                "no replica streams from the master {}; start one and wait until `local status` \
                 shows it streaming",
                holder.member
            )));
        }
    }
    if let Some(r) = record.as_ref().and_then(|r| r.note(SWITCHOVER)) {
        return Err(local_err(format!(
            "a switchover is already asked ({r}); wait for its outcome (`local status`)"
        )));
    }
    let old = holder.member.clone();
    let old_k = pgset_spec::ordinal_of(&old).unwrap_or(0);
    let old_data = dir.join(set.member(old_k));
    let old_inode = inode(&old_data);
    let old_kept = kept_copies(dir, &old);
    let request = SwitchoverRequest::new(to);
    write_note(&store, dir, &holder, SWITCHOVER, &request.to_note()).await?;

    let deadline = Instant::now() + timeout;
    let mut last_old_write: Option<Instant> = None;
    let mut first_new_write: Option<Instant> = None;
    let mut outcome: Option<SwitchoverOutcome> = None;
    let mut rejoined = false;
    let mut new_timeline: Option<u32> = None;
    loop {
        let now = Instant::now();
        if first_new_write.is_none() && writable(dir, &set, &old).await.is_some() {
            last_old_write = Some(Instant::now());
        }
        if let Some(r) = read_record(&store).await? {
            if outcome.is_none() {
                outcome = outcome_of(&r, &request.id);
            }
            if let Some(o) = &outcome
                && o.state != SwitchoverOutcome::HANDED_OVER
            {
                return Err(local_err(format!(
                    "the switchover was {} by the master {}: {}",
                    o.state,
                    o.from,
                    o.reason.clone().unwrap_or_default()
                )));
            }
            if let (Some(o), Some(h)) = (&outcome, &r.holder)
                && Some(&h.member) == o.to.as_ref()
                && !h.id.starts_with("handover-")
                && first_new_write.is_none()
                && let Some(tl) = writable(dir, &set, &h.member).await
            {
                first_new_write = Some(Instant::now());
                new_timeline = Some(tl);
            }
            if first_new_write.is_some() && streams(&set, &old).await {
                rejoined = true;
            }
            if let (true, Some(o)) = (rejoined, &outcome) {
                let new = o.to.clone().unwrap_or_default();
                let timeline = new_timeline.unwrap_or(r.timeline);
                let same_dir = old_inode.is_some() && inode(&old_data) == old_inode;
                let new_kept: Vec<String> = kept_copies(dir, &old)
                    .into_iter()
                    .filter(|k| !old_kept.contains(k))
                    .collect();
                let how = if same_dir && new_kept.is_empty() {
                    format!(
                        "{old} rejoined as its replica on the same data directory (no copy, no rewind)"
                    )
                } else {
                    format!(
                        "{old} rejoined as its replica; kept aside: {}",
                        if new_kept.is_empty() {
                            "its data directory was replaced".to_string()
                        } else {
                            new_kept.join(", ")
                        }
                    )
                };
                return Ok(Report {
                    id: request.id.clone(),
                    from: old,
                    to: new,
                    timeline,
                    lsn: o.lsn.clone(),
                    write_gap_ms: match (last_old_write, first_new_write) {
                        (Some(a), Some(b)) => {
                            Some(b.saturating_duration_since(a).as_millis() as u64)
                        }
                        _ => None,
                    },
                    old_master: how,
                });
            }
        }
        if now >= deadline {
            if outcome.is_none() {
                withdraw(&store, SWITCHOVER, &request.id).await;
            }
            return Err(local_err(format!(
                "the switchover (request {}) did not complete within {} s: {}; see `local status` \
                 and the members' logs in {}",
                request.id,
                timeout.as_secs(),
                match (&outcome, first_new_write) {
                    (None, _) => format!("the master {old} did not answer the request"),
                    (Some(o), None) => format!(
                        "{} does not accept writes yet",
                        o.to.clone().unwrap_or_default()
                    ),
                    (Some(_), Some(_)) => format!("{old} does not stream from the new master yet"),
                },
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `failover --to` without `--yes` says: what the promotion may lose.
pub async fn failover_warning(dir: &Path, to: &str) -> Result<String> {
    let set = read_set(dir)?;
    check_member(dir, &set, to)?;
    let received = agent_status(&set, to)
        .await
        .and_then(|p| p["receiveLsn"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown (its agent does not answer)".into());
    Ok(format!(
        "failover to {to} promotes it with the WAL it received (up to {received}); writes the \
         old master acknowledged after that are lost; the old master, if it comes back, and any \
         replica that received more are rewound with what they hold after the fork kept aside. \
         Nothing was changed; add --yes to fail over"
    ))
}

/// Names `to` the member that takes the record once it expired (automatic failover off or
/// paused, the master gone), and waits until it holds the record and accepts writes. Refused
/// while the holder still renews the record (watched for the renew deadline): that is a
/// switchover's case.
pub async fn failover(dir: &Path, to: &str, timeout: Duration) -> Result<Report> {
    let set = read_set(dir)?;
    let store = store(dir, &set)?;
    check_member(dir, &set, to)?;
    let record = read_record(&store).await?;
    let holder = holder_of(record.as_ref(), dir)?;
    if to == holder.member {
        return Err(local_err(format!(
            "{to} holds the leader record; name a replica to promote"
        )));
    }
    let first = record.expect("holder_of checked it");
    let timings = *store.timings();
    let watch_for = timings.renew_deadline() + timings.renew_every();
    let watch_end = Instant::now() + watch_for;
    while Instant::now() < watch_end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = read_record(&store).await?;
        if now.as_ref().map(|r| &r.version) != Some(&first.version) {
            return Err(local_err(format!(
                "the leader record of {} is live (renewed while watched): its master runs; use \
                 `{} local switchover --to {to} --dir {}` instead",
                holder.member,
                contract::program_name(),
                dir.display()
            )));
        }
    }
    if agent_status(&set, to)
        .await
        .is_none_or(|p| p["inRecovery"].as_bool() != Some(true))
    {
        return Err(local_err(format!(
            "{to}'s agent does not report a running replica; start it (`local up --dir {}`) and ask again",
            dir.display()
        )));
    }
    let request = SwitchoverRequest::new(Some(to));
    // The record's holder is gone; the note is written on the version watched (a contender's
    // expiry clock restarts with it, once).
    let written = store
        .replace(&first.with_note(FAILOVER_TO, Some(&request.to_note())))
        .await
        .map_err(|e| local_err(format!("writing the request on the leader record: {e}")))?;
    if written.is_none() {
        return Err(local_err(
            "the leader record changed while the request was written; nothing was asked: ask again"
                .to_string(),
        ));
    }
    let asked = Instant::now();
    let deadline = asked + timeout;
    loop {
        if let Some(r) = read_record(&store).await?
            && let Some(o) = outcome_of(&r, &request.id)
            && r.holder.as_ref().is_some_and(|h| h.member == to)
            && let Some(timeline) = writable(dir, &set, to).await
        {
            return Ok(Report {
                id: request.id,
                from: holder.member.clone(),
                to: to.to_string(),
                timeline,
                lsn: o.lsn,
                write_gap_ms: None,
                old_master: format!(
                    "{} is gone; when it starts again it follows {to} (rewound if it wrote after the fork)",
                    holder.member
                ),
            });
        }
        if Instant::now() >= deadline {
            withdraw(&store, FAILOVER_TO, &request.id).await;
            return Err(local_err(format!(
                "{to} did not take the leader record within {} s of the request (withdrawn) (it takes it once \
                 the record expired on its own clock, {} ms); see its log in {}",
                timeout.as_secs(),
                timings.lease_duration().as_millis(),
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
