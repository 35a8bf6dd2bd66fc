//! Synchronous replication kept from the live membership: the master names in
//! `synchronous_standby_names` the replicas that confirm each commit, and on the leader record
//! (the note [`SYNCHRONOUS`]) the replicas known to hold every acknowledged commit, the only ones
//! a failover may promote.
//!
//! The two lists change in an order that keeps the record's list a subset of the replicas that
//! hold every acknowledged commit (the rule Patroni's synchronous mode follows):
//! - a replica leaves the record's list **before** it leaves `synchronous_standby_names`;
//! - a replica joins the record's list only **after** it was named in
//!   `synchronous_standby_names`, every WAL sender runs with that value (checked a while after
//!   the change took effect, when PostgreSQL shows it as `sync`) and it flushed everything
//!   written up to then.
//!
//! The names are `FIRST n (all named)`: each commit waits for every named replica. With
//! `required` the named replicas are `number` members of the set whether they run or not (writes
//! wait for them, and never for a member that was scaled away: the list is made from the live
//! membership on every round); with `preferred` only replicas that stream are named, down to
//! none, when the master is asynchronous and the record's list is empty.

use std::collections::BTreeSet;
use std::time::Duration;

use pgset_spec::contract::annotations::SYNCHRONOUS;
use pgset_spec::{Durability, Synchronous};
use tokio::time::Instant;

use crate::leader::{LeaderRecord, LeaderStore};
use crate::pg::Db;
use crate::role::RoleStore;
use crate::{Error, Result};

/// How long after `synchronous_standby_names` took effect the master reads the WAL position a
/// newly named replica must flush before it joins the record's list (every WAL sender and
/// backend has reloaded the configuration by then).
pub const SETTLE: Duration = Duration::from_secs(1);

/// A replica as the master's `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// Its `application_name` (the member's name).
    pub name: String,
    /// Whether its WAL sender is `streaming`.
    pub streaming: bool,
    /// Whether PostgreSQL counts it as synchronous (`sync_state` `sync` or `quorum`).
    pub sync: bool,
    /// The WAL position it flushed.
    pub flush: Option<u64>,
}

/// The replicas to name: `sync.number` of `members` (the set's members other than the master),
/// keeping those named now while they stream, then other streaming members by ordinal; with
/// `required`, members that do not stream fill the rest (those named now first) so commits wait
/// for them; with `preferred`, only streaming members.
pub fn choose(
    sync: Synchronous,
    members: &[String],
    streaming: &BTreeSet<String>,
    named: &[String],
) -> Vec<String> {
    let want = usize::try_from(sync.number).unwrap_or(usize::MAX);
    let mut by_ordinal: Vec<&String> = members.iter().collect();
    by_ordinal.sort_by_key(|m| (pgset_spec::ordinal_of(m), (*m).clone()));
    let member = |m: &String| members.contains(m);
    let mut out: Vec<String> = Vec::new();
    let take = |m: &String, out: &mut Vec<String>| {
        if out.len() < want && !out.contains(m) {
            out.push(m.clone());
        }
    };
    for m in named.iter().filter(|m| member(m) && streaming.contains(*m)) {
        take(m, &mut out);
    }
    for m in by_ordinal.iter().filter(|m| streaming.contains(**m)) {
        take(m, &mut out);
    }
    if sync.durability == Durability::Required {
        for m in named.iter().filter(|m| member(m)) {
            take(m, &mut out);
        }
        for m in &by_ordinal {
            take(m, &mut out);
        }
    }
    out.sort_by_key(|m| (pgset_spec::ordinal_of(m), m.clone()));
    out
}

/// `synchronous_standby_names` for `names`: `FIRST n ("a", "b")` (every named replica confirms
/// each commit), or empty (asynchronous).
pub fn standby_names(names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let quoted: Vec<String> = names
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    format!("FIRST {} ({})", names.len(), quoted.join(", "))
}

/// The replicas named in `value` when it is a value [`standby_names`] writes; `None` for any
/// other value (a hand-set one is replaced).
pub fn parse_standby_names(value: &str) -> Option<Vec<String>> {
    let value = value.trim();
    if value.is_empty() {
        return Some(Vec::new());
    }
    let rest = value.strip_prefix("FIRST ")?;
    let (n, list) = rest.split_once(" (")?;
    let list = list.strip_suffix(')')?;
    let names: Vec<String> = list
        .split(", ")
        .map(|q| {
            q.strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .map(|q| q.replace("\"\"", "\""))
        })
        .collect::<Option<_>>()?;
    (n.parse::<usize>().ok()? == names.len()).then_some(names)
}

/// The record's list as a set.
pub fn parse_note(value: Option<&str>) -> BTreeSet<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

/// The note's value for `members` (sorted, comma-separated).
pub fn note_value(members: &BTreeSet<String>) -> String {
    members.iter().cloned().collect::<Vec<_>>().join(",")
}

/// The next change, one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write the record's list.
    Note(BTreeSet<String>),
    /// Set `synchronous_standby_names` to these replicas.
    Names(Vec<String>),
    /// Both are as they should be.
    Nothing,
}

/// The next step from the record's list (`note`), the replicas named now (`named`), the ones
/// to name (`desired`) and those that flushed everything since the names settled (`caught_up`).
pub fn next_step(
    note: &BTreeSet<String>,
    named: &[String],
    desired: &[String],
    caught_up: &BTreeSet<String>,
) -> Step {
    let named_set: BTreeSet<String> = named.iter().cloned().collect();
    let desired_set: BTreeSet<String> = desired.iter().cloned().collect();
    if named_set != desired_set {
        let leaving: BTreeSet<String> = named_set.difference(&desired_set).cloned().collect();
        if note.intersection(&leaving).next().is_some() {
            return Step::Note(note.difference(&leaving).cloned().collect());
        }
        return Step::Names(desired.to_vec());
    }
    // Named and not leaving: a member on the list keeps every acknowledged commit (each commit
    // waits for it), so it stays on it even while it is down.
    let target: BTreeSet<String> = note
        .intersection(&desired_set)
        .chain(caught_up.intersection(&desired_set))
        .cloned()
        .collect();
    if &target != note {
        Step::Note(target)
    } else {
        Step::Nothing
    }
}

/// The master's state of synchronous replication between rounds.
#[derive(Debug, Default)]
pub struct Keeper {
    /// When the current names were first seen in effect, and the WAL position read `SETTLE`
    /// after that.
    settled: Option<(Vec<String>, Instant, Option<u64>)>,
    last_said: String,
}

impl Keeper {
    /// One round on the master: reads what PostgreSQL and the record say and makes the next
    /// change. `members` are the set's members other than this one.
    pub async fn round(
        &mut self,
        sync: Synchronous,
        db: &Db,
        store: &RoleStore,
        members: &[String],
    ) -> Result<Step> {
        let value: String = db
            .row("SELECT current_setting('synchronous_standby_names')", &[])
            .await?
            .get(0);
        let named = parse_standby_names(&value);
        let standbys = standbys(db).await?;
        let streaming: BTreeSet<String> = standbys
            .iter()
            .filter(|s| s.streaming)
            .map(|s| s.name.clone())
            .collect();
        let named_now = named.clone().unwrap_or_default();
        let desired = choose(sync, members, &streaming, &named_now);
        let record = match store.read().await {
            Ok(Some(r)) if r.held_by(store.me()) => r,
            // Only the holder writes the list; an unreadable record changes nothing.
            Ok(_) => return Ok(Step::Nothing),
            Err(e) => return Err(Error::Failed(format!("reading the leader record: {e}"))),
        };
        let note = parse_note(record.note(SYNCHRONOUS));
        // The WAL position a newly named replica must flush: read `SETTLE` after the names took
        // effect (a value this agent did not write is replaced first).
        let now = Instant::now();
        match (&mut self.settled, &named) {
            (Some((n, _, _)), Some(named)) if n == named => {}
            (_, Some(named)) => self.settled = Some((named.clone(), now, None)),
            (_, None) => self.settled = None,
        }
        if let Some((_, since, lsn @ None)) = &mut self.settled
            && now.saturating_duration_since(*since) >= SETTLE
        {
            *lsn = Some(current_lsn(db).await?);
        }
        let caught_up: BTreeSet<String> = match &self.settled {
            Some((_, _, Some(at))) => standbys
                .iter()
                .filter(|s| s.streaming && s.sync && s.flush.is_some_and(|f| f >= *at))
                .map(|s| s.name.clone())
                .collect(),
            _ => BTreeSet::new(),
        };
        let step = if named.is_none() {
            // A value of someone else's: the list first loses everyone it named, then the value
            // is replaced.
            if note.is_empty() {
                Step::Names(desired.clone())
            } else {
                Step::Note(BTreeSet::new())
            }
        } else {
            next_step(&note, &named_now, &desired, &caught_up)
        };
        match &step {
            Step::Nothing => {}
            Step::Note(next) => {
                write_note(store, &record, next).await?;
                self.say(format!(
                    "synchronous replication: the leader record names {} as holding every acknowledged commit",
                    if next.is_empty() {
                        "no replica".to_string()
                    } else {
                        note_value(next)
                    }
                ));
            }
            Step::Names(names) => {
                let text = standby_names(names);
                // ALTER SYSTEM runs outside a transaction block: two statements.
                db.execute_batch(&format!(
                    "ALTER SYSTEM SET synchronous_standby_names = {}",
                    crate::render::sql_quote(&text)
                ))
                .await?;
                db.execute_batch("SELECT pg_reload_conf()").await?;
                self.settled = None;
                self.say(format!(
                    "synchronous replication: synchronous_standby_names = '{text}'{}",
                    if names.is_empty() {
                        " (no replica streams: asynchronous until one does)"
                    } else {
                        ""
                    }
                ));
            }
        }
        Ok(step)
    }

    /// Synchronous replication switched off: the record's list goes first, then names this
    /// agent wrote are reset (a value set by hand is left alone). `Ok(true)` once nothing is
    /// left to undo.
    pub async fn off(&mut self, db: &Db, store: &RoleStore) -> Result<bool> {
        let record = match store.read().await {
            Ok(Some(r)) if r.held_by(store.me()) => r,
            Ok(_) => return Ok(false),
            Err(e) => return Err(Error::Failed(format!("reading the leader record: {e}"))),
        };
        if record.note(SYNCHRONOUS).is_some() {
            match store.replace(&record.with_note(SYNCHRONOUS, None)).await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(false),
                Err(e) => return Err(Error::Failed(format!("writing the leader record: {e}"))),
            }
        }
        let value: String = db
            .row("SELECT current_setting('synchronous_standby_names')", &[])
            .await?
            .get(0);
        if parse_standby_names(&value).is_some_and(|n| !n.is_empty()) {
            db.execute_batch("ALTER SYSTEM RESET synchronous_standby_names")
                .await?;
            db.execute_batch("SELECT pg_reload_conf()").await?;
            self.say(format!(
                "synchronous replication is off: synchronous_standby_names ('{value}') reset"
            ));
        }
        Ok(true)
    }

    fn say(&mut self, text: String) {
        if text != self.last_said {
            crate::info!("{text}");
            self.last_said = text;
        }
    }
}

/// The master's replicas with their flush positions.
async fn standbys(db: &Db) -> Result<Vec<Standby>> {
    let rows = db
        .rows(
            "SELECT application_name::text, state = 'streaming',
                    coalesce(sync_state IN ('sync', 'quorum'), false),
                    pg_wal_lsn_diff(flush_lsn, '0/0')::bigint
               FROM pg_stat_replication",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Standby {
            name: r.get(0),
            streaming: r.get::<_, Option<bool>>(1).unwrap_or(false),
            sync: r.get(2),
            flush: r
                .get::<_, Option<i64>>(3)
                .and_then(|f| u64::try_from(f).ok()),
        })
        .collect())
}

async fn current_lsn(db: &Db) -> Result<u64> {
    let v: i64 = db
        .row(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
            &[],
        )
        .await?
        .get(0);
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Writes the record's list (compare-and-swap on the version read; the holder's next renewal
/// keeps it).
async fn write_note(
    store: &RoleStore,
    record: &LeaderRecord,
    next: &BTreeSet<String>,
) -> Result<()> {
    let value = note_value(next);
    match store
        .replace(&record.with_note(SYNCHRONOUS, Some(&value)))
        .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::Failed(
            "the leader record changed while its list of synchronous replicas was written; tried again next round"
                .into(),
        )),
        Err(e) => Err(Error::Failed(format!("writing the leader record: {e}"))),
    }
}

/// Whether a replica may be promoted under synchronous replication: named on the record's
/// list; with an empty or absent list, only when durability is `preferred` (the master ran
/// asynchronously) — `None` means the synchronous rule does not object.
pub fn objection(sync: Option<Synchronous>, record: &LeaderRecord, me: &str) -> Option<String> {
    let sync = sync?;
    let note = parse_note(record.note(SYNCHRONOUS));
    if note.contains(me) {
        return None;
    }
    if note.is_empty() {
        return match sync.durability {
            Durability::Preferred => None,
            Durability::Required => Some(
                "synchronous replication is required and the leader record names no replica \
                 holding every acknowledged commit: not eligible"
                    .into(),
            ),
        };
    }
    Some(format!(
        "synchronous replication: only {} hold every acknowledged commit: not eligible",
        note_value(&note)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const REQUIRED_1: Synchronous = Synchronous {
        number: 1,
        durability: Durability::Required,
    };
    const PREFERRED_2: Synchronous = Synchronous {
        number: 2,
        durability: Durability::Preferred,
    };

    #[test]
    fn required_names_streaming_members_first_and_down_members_rather_than_none() {
        let members = names(&["db-1", "db-2"]);
        assert_eq!(
            choose(REQUIRED_1, &members, &set(&["db-2"]), &[]),
            names(&["db-2"])
        );
        // The named one keeps its place while it streams.
        assert_eq!(
            choose(
                REQUIRED_1,
                &members,
                &set(&["db-1", "db-2"]),
                &names(&["db-2"])
            ),
            names(&["db-2"])
        );
        // Nobody streams: commits wait for the one named (or the first member).
        assert_eq!(
            choose(REQUIRED_1, &members, &set(&[]), &names(&["db-2"])),
            names(&["db-2"])
        );
        assert_eq!(
            choose(REQUIRED_1, &members, &set(&[]), &[]),
            names(&["db-1"])
        );
        // A member scaled away is never waited for.
        assert_eq!(
            choose(REQUIRED_1, &names(&["db-1"]), &set(&[]), &names(&["db-2"])),
            names(&["db-1"])
        );
    }

    #[test]
    fn preferred_names_only_streaming_members_down_to_none() {
        let members = names(&["db-1", "db-2", "db-3"]);
        assert_eq!(
            choose(
                PREFERRED_2,
                &members,
                &set(&["db-3"]),
                &names(&["db-1", "db-3"])
            ),
            names(&["db-3"])
        );
        assert!(choose(PREFERRED_2, &members, &set(&[]), &names(&["db-1"])).is_empty());
    }

    #[test]
    fn standby_names_round_trip_and_a_foreign_value_is_not_ours() {
        let v = standby_names(&names(&["db-1", "db-2"]));
        assert_eq!(v, r#"FIRST 2 ("db-1", "db-2")"#);
        assert_eq!(parse_standby_names(&v), Some(names(&["db-1", "db-2"])));
        assert_eq!(standby_names(&[]), "");
        assert_eq!(parse_standby_names(""), Some(vec![]));
        for foreign in ["*", "ANY 1 (a, b)", "FIRST 1 (\"a\", \"b\")", "db-1"] {
            assert_eq!(parse_standby_names(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn a_replica_leaves_the_record_before_the_names_and_joins_it_only_once_caught_up() {
        // db-1 named and on the list; db-2 is to replace it.
        let step = next_step(
            &set(&["db-1"]),
            &names(&["db-1"]),
            &names(&["db-2"]),
            &set(&[]),
        );
        assert_eq!(step, Step::Note(set(&[])), "off the list first");
        let step = next_step(&set(&[]), &names(&["db-1"]), &names(&["db-2"]), &set(&[]));
        assert_eq!(step, Step::Names(names(&["db-2"])), "then off the names");
        // Named but not caught up: not on the list yet.
        assert_eq!(
            next_step(&set(&[]), &names(&["db-2"]), &names(&["db-2"]), &set(&[])),
            Step::Nothing
        );
        assert_eq!(
            next_step(
                &set(&[]),
                &names(&["db-2"]),
                &names(&["db-2"]),
                &set(&["db-2"])
            ),
            Step::Note(set(&["db-2"]))
        );
        // On the list and named, down for now: it keeps every acknowledged commit, it stays.
        assert_eq!(
            next_step(
                &set(&["db-2"]),
                &names(&["db-2"]),
                &names(&["db-2"]),
                &set(&[])
            ),
            Step::Nothing
        );
        // A caught-up replica that is not named never joins the list.
        assert_eq!(
            next_step(
                &set(&[]),
                &names(&["db-2"]),
                &names(&["db-2"]),
                &set(&["db-1"])
            ),
            Step::Nothing
        );
    }

    #[test]
    fn only_a_listed_replica_may_be_promoted_and_required_needs_a_list() {
        let mut r = LeaderRecord {
            holder: None,
            timeline: 1,
            acquired: None,
            renewed: None,
            lease_duration: Duration::from_secs(15),
            transitions: 0,
            notes: Default::default(),
            version: crate::leader::Version::for_tests("1"),
        };
        assert_eq!(objection(None, &r, "db-1"), None, "asynchronous");
        assert!(objection(Some(REQUIRED_1), &r, "db-1").is_some());
        assert_eq!(objection(Some(PREFERRED_2), &r, "db-1"), None);
        r = r.with_note(SYNCHRONOUS, Some("db-2"));
        assert!(objection(Some(PREFERRED_2), &r, "db-1").is_some());
        assert_eq!(objection(Some(REQUIRED_1), &r, "db-2"), None);
    }
}
