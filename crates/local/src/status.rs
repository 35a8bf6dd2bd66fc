//! The complete status of a local set: a summary (cluster, ids, version, master, LSN), each
//! member with its lag, slot and identity check, the warnings a user must act on, and whether
//! the set is healthy. Built from the members' own agents (`/status`), the master's PostgreSQL
//! and the data directories' identity files; the judgement ([`warnings`], [`healthy`]) is pure.

use std::collections::HashSet;
use std::path::Path;

use pgset_spec::contract::{self, secret};
use serde::{Deserialize, Serialize};

use pgset_agent::identity::{self, Identity, MemberRef, Refusal, Verdict};
use pgset_spec::status::bytes;
pub use pgset_spec::status::{Slot, Summary};
use pgset_spec::{LagBound, member_of_slot, slot_name};

use crate::{self as local, LOCAL_NAMESPACE, MemberStatus, Result};

/// A data directory's identity, checked against the member that uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityCheck {
    /// `ok`, `missing` (no data directory or no identity yet), `foreign` (another cluster's),
    /// `other-member`, `other-system` (not the master's system identifier) or `unreadable`.
    pub state: String,
    /// What the identity says, in words.
    pub detail: String,
}

/// One member, with what the master knows of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    /// What the member and its agent say.
    #[serde(flatten)]
    pub status: MemberStatus,
    /// Its timeline (from its agent).
    pub timeline: Option<i64>,
    /// Replicas: WAL the master sent it but it has not replayed yet (`sent_lsn` minus
    /// `replay_lsn` in the master's `pg_stat_replication`), in bytes.
    pub lag_bytes: Option<i64>,
    /// Replicas: the master's `replay_lag`, in seconds (`None` when idle or not streaming).
    pub lag_seconds: Option<f64>,
    /// Replicas: its slot on the master.
    pub slot: Option<Slot>,
    /// Its data directory's identity check.
    pub identity: IdentityCheck,
    /// The first line of an earlier exit's termination log, left while its agent runs again:
    /// history, never a warning by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Whether every member is ready, every replica streams, and there is no warning.
    pub healthy: bool,
    /// The summary.
    pub summary: Summary,
    /// Each known member.
    pub members: Vec<MemberReport>,
    /// What a user must act on.
    pub warnings: Vec<String>,
    /// A set made with `--tls`: how a client reaches the master safely (a libpq connection
    /// string with `sslmode=verify-full` and the set's CA; no password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
}

/// What the master's PostgreSQL says (one query).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MasterFacts {
    /// `server_version`.
    pub version: Option<String>,
    /// `pg_postmaster_start_time()`.
    pub started_at: Option<String>,
    /// Seconds since then.
    pub uptime_s: Option<f64>,
    /// `pg_current_wal_lsn()`.
    pub lsn: Option<String>,
    /// `pg_stat_replication` rows.
    #[serde(default)]
    pub replication: Vec<ReplicationRow>,
    /// Physical slots.
    #[serde(default)]
    pub slots: Vec<Slot>,
}

/// A row of the master's `pg_stat_replication`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ReplicationRow {
    /// `application_name` (the member).
    pub name: String,
    /// `state`.
    pub state: Option<String>,
    /// `sent_lsn` minus `replay_lsn`, in bytes.
    pub lag_bytes: Option<i64>,
    /// `replay_lag` in seconds.
    pub lag_seconds: Option<f64>,
}

const MASTER_QUERY: &str = "SELECT json_build_object(
  'version', current_setting('server_version'),
  'started_at', pg_postmaster_start_time()::text,
  'uptime_s', extract(epoch FROM now() - pg_postmaster_start_time())::float8,
  'lsn', pg_current_wal_lsn()::text,
  'replication', (SELECT coalesce(json_agg(json_build_object(
      'name', application_name, 'state', state,
      'lag_bytes', pg_wal_lsn_diff(sent_lsn, replay_lsn)::bigint,
      'lag_seconds', extract(epoch FROM replay_lag)::float8) ORDER BY application_name), '[]')
    FROM pg_stat_replication),
  'slots', (SELECT coalesce(json_agg(json_build_object(
      'slot', slot_name, 'active', active, 'wal_status', wal_status,
      'retained_bytes', CASE WHEN restart_lsn IS NULL THEN NULL
                       ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END)
      ORDER BY slot_name), '[]')
    FROM pg_replication_slots WHERE slot_type = 'physical'))::text";

/// Asks the master over its socket (`None` when it does not answer).
async fn master_facts(dir: &Path, set: &local::LocalSet) -> Option<MasterFacts> {
    let db = local::ask_master(dir, set).await?;
    let row = db.row(MASTER_QUERY, &[]).await.ok()?;
    serde_json::from_str(&row.try_get::<_, String>(0).ok()?).ok()
}

/// A data directory's identity as local status reports it: the agent's own judgement
/// ([`identity::judge`]) against `me` and, when known, the master's system identifier, in
/// status's words.
pub fn check_identity(
    found: Option<&Identity>,
    me: &MemberRef,
    master_sysid: Option<u64>,
) -> IdentityCheck {
    let check = |state: &str, detail: String| IdentityCheck {
        state: state.to_string(),
        detail,
    };
    match identity::judge(found, me, master_sysid) {
        Verdict::Unmarked => check("missing", "no identity (no data yet)".to_string()),
        Verdict::Ours => check(
            "ok",
            found.map_or_else(String::new, |id| {
                format!(
                    "{}/{}, system {}, made by {}",
                    id.namespace, id.member, id.system_identifier, id.origin
                )
            }),
        ),
        Verdict::Refused(Refusal::Foreign { owner, .. }) => {
            check("foreign", format!("owned by {owner}"))
        }
        Verdict::Refused(Refusal::OtherMember { member, .. }) => {
            check("other-member", format!("the data of member {member}"))
        }
        Verdict::Refused(Refusal::OtherSystem { recorded, expected }) => check(
            "other-system",
            format!("system identifier {recorded}, not the master's {expected}"),
        ),
        Verdict::Refused(why @ Refusal::Format { .. }) => check("unreadable", why.to_string()),
    }
}
pub use pgset_spec::status::{REASON_MAX_CHARS, lag_warning, one_line_reason};

/// The warnings a user must act on: slots retaining WAL for members not in the set, members on
/// another timeline than the master, data directories owned by another cluster or member, members
/// that stopped with a refusal (its first line), replicas further behind than `bound`.
pub fn warnings(
    cluster: &str,
    listed: &HashSet<String>,
    members: &[MemberReport],
    master_timeline: Option<i64>,
    slots: &[Slot],
    bound: &LagBound,
) -> Vec<String> {
    let mut w = Vec::new();
    for s in slots {
        let owner = member_of_slot(cluster, &s.slot);
        if owner.as_ref().is_some_and(|m| listed.contains(m)) {
            continue;
        }
        let whose = match &owner {
            Some(m) => format!("for {m}, which is not in the set"),
            None => "for no member of the set".to_string(),
        };
        w.push(format!(
            "slot {} retains {} of WAL {whose} ({}, wal_status {}): it keeps the master's WAL until it is dropped",
            s.slot,
            s.retained_bytes
                .map_or("an unknown amount".to_string(), |b| format!("{b} bytes")),
            if s.active { "active" } else { "inactive" },
            s.wal_status.as_deref().unwrap_or("-"),
        ));
    }
    for m in members {
        let name = &m.status.name;
        if let (Some(t), Some(mt)) = (m.timeline, master_timeline)
            && t != mt
        {
            w.push(format!("{name} is on timeline {t}, the master on {mt}"));
        }
        match m.identity.state.as_str() {
            "foreign" | "other-member" | "other-system" => w.push(format!(
                "{name}'s data directory {}: {}",
                m.status.data_dir.display(),
                m.identity.detail
            )),
            _ => {}
        }
        if let Some(why) = m.status.stopped_with.as_deref().and_then(one_line_reason) {
            w.push(format!("{name} stopped: {why}"));
        }
        if m.status.role == contract::roles::REPLICA && m.status.member {
            w.extend(lag_warning(name, m.lag_bytes, m.lag_seconds, bound));
        }
    }
    // Each warning once.
    let mut seen = HashSet::new();
    w.retain(|x| seen.insert(x.clone()));
    w
}

/// A member's kept copy with writes the cluster does not have: what it holds and the command
/// that removes it once the user has looked at it (the set is not healthy until then).
pub fn diverged_warning(member: &str, kept: &pgset_agent::rewind::KeptCopy) -> String {
    format!(
        "{member} wrote {} bytes of WAL after the fork at {} that the cluster does not have; they \
         are kept in {}: look at them, then remove it with `rm -r {}`",
        kept.bytes_after_fork,
        kept.fork_lsn,
        kept.path.display(),
        kept.path.display()
    )
}

/// Whether the set is healthy: every listed member's agent runs and answers ready, every
/// listed replica streams, and there is no warning.
pub fn healthy(members: &[MemberReport], warnings: &[String]) -> bool {
    warnings.is_empty()
        && members.iter().filter(|m| m.status.member).all(|m| {
            m.status.agent_pid.is_some()
                && m.status.ready == Some(true)
                && m.status.streaming != Some(false)
        })
        && members.iter().any(|m| m.status.member)
}

/// The complete status of the set in `dir`.
pub async fn report(dir: &Path) -> Result<StatusReport> {
    let set = local::read_set(dir)?;
    let members = local::status(dir).await?;
    let listed: HashSet<String> = members
        .iter()
        .filter(|m| m.member)
        .map(|m| m.name.clone())
        .collect();
    let cluster_id_file = dir.join("secret").join(secret::CLUSTER_ID_KEY);
    let cluster_id = std::fs::read_to_string(&cluster_id_file)
        .ok()
        .map(|s| s.trim().to_string());
    let facts = master_facts(dir, &set).await.unwrap_or_default();
    // The master the leader record names (ordinal 0 only for a set without one).
    let master = set.member(local::master_ordinal(dir, &set).await);
    let master_detail = members
        .iter()
        .find(|m| m.name == master)
        .and_then(|m| m.detail.clone());
    let master_detail = master_detail.as_ref();
    let master_timeline = master_detail.and_then(|d| d["timeline"].as_i64());
    let master_ident = identity::read(&dir.join(&master)).ok().flatten();
    let system_identifier = master_detail
        .and_then(|d| d["systemIdentifier"].as_str().map(String::from))
        .or_else(|| master_ident.map(|i| i.system_identifier));
    let master_sysid = system_identifier.as_deref().and_then(|s| s.parse().ok());
    let mut out = Vec::new();
    for m in members {
        let ident = match (identity::read(&m.data_dir), &cluster_id) {
            (Ok(found), Some(cluster_id)) => {
                let me = MemberRef {
                    namespace: LOCAL_NAMESPACE.to_string(),
                    cluster: set.name.clone(),
                    cluster_id: cluster_id.clone(),
                    member: m.name.clone(),
                };
                check_identity(found.as_ref(), &me, master_sysid)
            }
            (Ok(None), None) => IdentityCheck {
                state: "missing".into(),
                detail: "no identity (no data yet)".into(),
            },
            (Ok(Some(_)), None) => IdentityCheck {
                state: "unreadable".into(),
                detail: format!(
                    "the set's cluster id {} is not readable: nothing to judge the identity against",
                    cluster_id_file.display()
                ),
            },
            (Err(e), _) => IdentityCheck {
                state: "unreadable".into(),
                detail: e.to_string(),
            },
        };
        let row = facts.replication.iter().find(|r| r.name == m.name);
        let slot = (m.role == contract::roles::REPLICA)
            .then(|| {
                let name = slot_name(&m.name);
                facts.slots.iter().find(|s| s.slot == name).cloned()
            })
            .flatten();
        // A log left by an earlier exit while the agent runs again is history; while it does
        // not run, `stopped_with` is what it stopped with (one line).
        let last_exit = m
            .agent_pid
            .and_then(|_| std::fs::read_to_string(local::termination_log(dir, &m.name)).ok())
            .as_deref()
            .and_then(one_line_reason);
        let mut m = m;
        m.stopped_with = m.stopped_with.as_deref().and_then(one_line_reason);
        out.push(MemberReport {
            last_exit,
            timeline: m.detail.as_ref().and_then(|d| d["timeline"].as_i64()),
            lag_bytes: row.and_then(|r| r.lag_bytes),
            lag_seconds: row.and_then(|r| r.lag_seconds),
            slot,
            identity: ident,
            status: m,
        });
    }
    // A local set records no bound of its own: the spec's default is the one judged.
    let mut warnings = warnings(
        &set.name,
        &listed,
        &out,
        master_timeline,
        &facts.slots,
        &LagBound::default(),
    );
    for m in &out {
        for kept in pgset_agent::rewind::kept_copies(dir, &m.status.name) {
            warnings.push(diverged_warning(&m.status.name, &kept));
        }
    }
    let summary = Summary {
        cluster: set.name.clone(),
        cluster_id,
        system_identifier,
        postgres_version: facts.version.clone(),
        master,
        master_started_at: facts.started_at.clone(),
        master_uptime_s: facts.uptime_s,
        members_ready: out
            .iter()
            .filter(|m| m.status.member && m.status.ready == Some(true))
            .count(),
        members_total: listed.len(),
        master_lsn: facts
            .lsn
            .clone()
            .or_else(|| master_detail.and_then(|d| d["currentLsn"].as_str().map(String::from))),
        timeline: master_timeline,
    };
    let connect = local::tls_connection_string(dir, &set, local::master_ordinal(dir, &set).await);
    Ok(StatusReport {
        healthy: healthy(&out, &warnings),
        summary,
        members: out,
        warnings,
        connect,
    })
}

impl StatusReport {
    /// The report as a screen: the summary, one row per member, why members are not ready,
    /// the warnings and the verdict.
    pub fn to_table(&self) -> String {
        let mut out = self.summary.lines() + "\n";
        if let Some(c) = &self.connect {
            out += &format!("connect: psql \"{c}\"\n");
        }
        out += &format!(
            "{:<10} {:<8} {:<16} {:<7} {:<6} {:<10} {:<18} {:<28} {}\n",
            "NAME", "ROLE", "ADDRESS", "PID", "READY", "STREAMING", "LAG", "SLOT", "IDENTITY"
        );
        let yes_no = |v: Option<bool>| match v {
            None => "-",
            Some(true) => "yes",
            Some(false) => "no",
        };
        for m in &self.members {
            let st = &m.status;
            let lag = match (m.lag_bytes, m.lag_seconds) {
                (Some(b), Some(t)) => format!("{} / {t:.2}s", bytes(b)),
                (Some(b), None) => bytes(b),
                _ => "-".into(),
            };
            let slot = m.slot.as_ref().map_or("-".into(), |sl| {
                format!(
                    "{} {} {}",
                    sl.slot,
                    sl.wal_status.as_deref().unwrap_or("-"),
                    sl.retained_bytes.map_or("-".into(), bytes)
                )
            });
            out += &format!(
                "{:<10} {:<8} {:<16} {:<7} {:<6} {:<10} {:<18} {:<28} {}\n",
                st.name,
                if st.member { st.role.as_str() } else { "(out)" },
                format!("{}:{}", st.host, st.port),
                st.pid.map_or("-".into(), |p| p.to_string()),
                yes_no(st.ready),
                yes_no(st.streaming),
                lag,
                slot,
                m.identity.state
            );
        }
        for m in &self.members {
            if let (None, Some(false), Some(why)) =
                (&m.status.stopped_with, m.status.ready, &m.status.reason)
            {
                out += &format!("{} not ready: {why}\n", m.status.name);
            } else if m.status.member
                && m.status.agent_pid.is_none()
                && m.status.stopped_with.is_none()
            {
                out += &format!("{} is not running\n", m.status.name);
            }
            if let Some(why) = &m.last_exit {
                out += &format!("{} last exit: {why}\n", m.status.name);
            }
        }
        for w in &self.warnings {
            out += &format!("warning: {w}\n");
        }
        out += if self.healthy {
            "healthy\n"
        } else {
            "NOT HEALTHY\n"
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, k: i32) -> MemberReport {
        MemberReport {
            status: MemberStatus {
                name: name.into(),
                role: if k == 0 { "master" } else { "replica" }.into(),
                host: "127.0.0.1".into(),
                port: 28200 + k as u16,
                socket_dir: "/d/run".into(),
                data_dir: format!("/d/{name}").into(),
                pid: Some(10 + k),
                agent_pid: Some(20 + k),
                member: true,
                streaming: (k > 0).then_some(true),
                ready: Some(true),
                reason: Some("serving".into()),
                detail: None,
                stopped_with: None,
            },
            timeline: Some(1),
            lag_bytes: (k > 0).then_some(0),
            lag_seconds: None,
            slot: None,
            identity: IdentityCheck {
                state: "ok".into(),
                detail: String::new(),
            },
            last_exit: None,
        }
    }

    fn identity(cluster: &str, id: &str, member: &str, sysid: &str) -> Identity {
        Identity {
            format: identity::FORMAT,
            namespace: LOCAL_NAMESPACE.into(),
            cluster: cluster.into(),
            cluster_id: id.into(),
            member: member.into(),
            system_identifier: sysid.into(),
            origin: "initdb".into(),
            created: "2026-11-29T00:00:00Z".into(),
        }
    }

    #[test]
    fn each_verdict_of_the_agents_judgement_has_its_status_word() {
        let me = MemberRef {
            namespace: LOCAL_NAMESPACE.into(),
            cluster: "pgset".into(),
            cluster_id: "c1".into(),
            member: "pgset-1".into(),
        };
        let check = |i: &Identity| check_identity(Some(i), &me, Some(42));
        let ok = check(&identity("pgset", "c1", "pgset-1", "42"));
        assert_eq!(ok.state, "ok");
        assert_eq!(ok.detail, "local/pgset-1, system 42, made by initdb");
        let foreign = check(&identity("pgset", "c2", "pgset-1", "42"));
        assert_eq!(foreign.state, "foreign");
        assert_eq!(foreign.detail, "owned by local/pgset (cluster id c2)");
        let other = check(&identity("pgset", "c1", "pgset-2", "42"));
        assert_eq!(other.state, "other-member");
        assert_eq!(other.detail, "the data of member pgset-2");
        let replaced = check(&identity("pgset", "c1", "pgset-1", "7"));
        assert_eq!(replaced.state, "other-system");
        assert_eq!(replaced.detail, "system identifier 7, not the master's 42");
        let mut future = identity("pgset", "c1", "pgset-1", "42");
        future.format = identity::FORMAT + 1;
        let future = check(&future);
        assert_eq!(future.state, "unreadable");
        assert!(future.detail.contains("format"), "{}", future.detail);
        assert_eq!(check_identity(None, &me, None).state, "missing");
        // The master's system identifier unknown: everything else is still judged.
        assert_eq!(
            check_identity(Some(&identity("pgset", "c1", "pgset-1", "7")), &me, None).state,
            "ok"
        );
    }

    #[test]
    fn a_healthy_set_has_no_warnings() {
        let ms = vec![member("pgset-0", 0), member("pgset-1", 1)];
        let listed: HashSet<String> = ["pgset-0".into(), "pgset-1".into()].into();
        let slots = vec![Slot {
            slot: "pgset_1".into(),
            active: true,
            wal_status: Some("reserved".into()),
            retained_bytes: Some(0),
        }];
        let w = warnings("pgset", &listed, &ms, Some(1), &slots, &LagBound::default());
        assert!(w.is_empty(), "{w:?}");
        assert!(healthy(&ms, &w));
    }

    #[test]
    fn a_gone_members_slot_a_wrong_timeline_foreign_data_and_a_refusal_are_warned() {
        let mut ms = vec![
            member("pgset-0", 0),
            member("pgset-1", 1),
            member("pgset-2", 2),
        ];
        ms[1].timeline = Some(2);
        ms[2].identity = IdentityCheck {
            state: "foreign".into(),
            detail: "owned by local/other (cluster id c9)".into(),
        };
        ms[2].status.agent_pid = None;
        ms[2].status.ready = None;
        ms[2].status.stopped_with = Some("refused: foreign data directory".into());
        let listed: HashSet<String> = ["pgset-0".into(), "pgset-1".into(), "pgset-2".into()].into();
        let slots = vec![
            Slot {
                slot: "pgset_1".into(),
                active: true,
                wal_status: Some("reserved".into()),
                retained_bytes: Some(0),
            },
            Slot {
                slot: "pgset_3".into(),
                active: false,
                wal_status: Some("extended".into()),
                retained_bytes: Some(16_777_216),
            },
            Slot {
                slot: "backup_tool".into(),
                active: false,
                wal_status: None,
                retained_bytes: None,
            },
        ];
        let w = warnings("pgset", &listed, &ms, Some(1), &slots, &LagBound::default());
        assert_eq!(w.len(), 5, "{w:#?}");
        assert!(
            w[0].starts_with(
                "slot pgset_3 retains 16777216 bytes of WAL for pgset-3, which is not in the set"
            ),
            "{}",
            w[0]
        );
        assert!(
            w[1].contains("backup_tool retains an unknown amount of WAL for no member"),
            "{}",
            w[1]
        );
        assert_eq!(w[2], "pgset-1 is on timeline 2, the master on 1");
        assert!(
            w[3].contains("/d/pgset-2: owned by local/other"),
            "{}",
            w[3]
        );
        assert_eq!(w[4], "pgset-2 stopped: refused: foreign data directory");
        assert!(!healthy(&ms, &w));
    }

    #[test]
    fn a_log_tail_is_warned_of_by_its_first_line_once_and_a_lagging_replica_by_its_bound() {
        let mut ms = vec![member("pgset-0", 0), member("pgset-1", 1)];
        ms[1].status.agent_pid = None;
        ms[1].status.stopped_with = Some("\nfatal: no space left\nline 2\nline 3".into());
        let listed: HashSet<String> = ["pgset-0".into(), "pgset-1".into()].into();
        let w = warnings("pgset", &listed, &ms, Some(1), &[], &LagBound::default());
        assert_eq!(w, ["pgset-1 stopped: fatal: no space left"]);
        ms[1].status.agent_pid = Some(21);
        ms[1].status.stopped_with = None;
        // 18.5 MiB / 20.7 s behind: above the default bound.
        ms[1].lag_bytes = Some(19_398_656);
        ms[1].lag_seconds = Some(20.7);
        let w = warnings("pgset", &listed, &ms, Some(1), &[], &LagBound::default());
        assert_eq!(
            w,
            [
                "pgset-1 is 18.5 MiB / 20.7 s behind the master, above the bound of 16.0 MiB / 10 s (replication.maxReplicaLag): it serves stale reads"
            ]
        );
        ms[1].lag_bytes = Some(16 * 1024 * 1024);
        ms[1].lag_seconds = Some(10.0);
        let w = warnings("pgset", &listed, &ms, Some(1), &[], &LagBound::default());
        assert!(w.is_empty(), "at the bound is not above it: {w:?}");
        assert_eq!(
            one_line_reason(&"y".repeat(300)).unwrap().chars().count(),
            REASON_MAX_CHARS
        );
    }

    #[test]
    fn a_diverged_copy_is_warned_of_with_its_bytes_and_how_to_remove_it() {
        let kept = pgset_agent::rewind::KeptCopy {
            path: "/set/pgset-1.diverged-20261207T120000Z".into(),
            bytes_after_fork: 4096,
            fork_lsn: "0/3000060".into(),
        };
        let w = diverged_warning("pgset-1", &kept);
        assert!(
            w.starts_with("pgset-1 wrote 4096 bytes of WAL after the fork at 0/3000060"),
            "{w}"
        );
        assert!(
            w.ends_with("`rm -r /set/pgset-1.diverged-20261207T120000Z`"),
            "{w}"
        );
        let ms = [member("pgset-0", 0)];
        assert!(!healthy(&ms, &[w]));
    }

    #[test]
    fn an_unready_or_not_streaming_member_is_not_healthy_without_a_warning() {
        let mut ms = vec![member("pgset-0", 0), member("pgset-1", 1)];
        ms[1].status.streaming = Some(false);
        assert!(!healthy(&ms, &[]));
        ms[1].status.streaming = Some(true);
        ms[1].status.ready = Some(false);
        assert!(!healthy(&ms, &[]));
        // A member taken out of the set does not count; a set with no member is not healthy.
        ms[1].status.member = false;
        assert!(healthy(&ms, &[]));
        assert!(!healthy(&[], &[]));
    }

    #[test]
    fn the_screen_shows_the_summary_rows_warnings_and_verdict() {
        let mut ms = vec![member("pgset-0", 0), member("pgset-1", 1)];
        ms[1].lag_bytes = Some(2048);
        ms[1].lag_seconds = Some(0.25);
        ms[1].slot = Some(Slot {
            slot: "pgset_1".into(),
            active: true,
            wal_status: Some("reserved".into()),
            retained_bytes: Some(0),
        });
        let r = StatusReport {
            healthy: false,
            summary: Summary {
                cluster: "pgset".into(),
                cluster_id: Some("c1".into()),
                system_identifier: Some("42".into()),
                postgres_version: Some("15.14".into()),
                master: "pgset-0".into(),
                master_started_at: None,
                master_uptime_s: Some(125.0),
                members_ready: 2,
                members_total: 2,
                master_lsn: Some("0/3000148".into()),
                timeline: Some(1),
            },
            members: ms,
            warnings: vec!["slot pgset_3 retains 16 bytes".into()],
            connect: None,
        };
        let t = r.to_table();
        assert!(!t.contains("connect:"), "{t}");
        let with_tls = StatusReport {
            connect: Some("host=127.0.0.1 sslmode=verify-full".into()),
            ..r.clone()
        };
        assert!(
            with_tls
                .to_table()
                .contains("connect: psql \"host=127.0.0.1 sslmode=verify-full\"\n")
        );
        assert!(
            t.contains("cluster pgset  cluster id c1  system identifier 42  PostgreSQL 15.14"),
            "{t}"
        );
        assert!(
            t.contains("master pgset-0 up 2m5s  ready 2/2  LSN 0/3000148  timeline 1"),
            "{t}"
        );
        assert!(t.contains("2.0 KiB / 0.25s"), "{t}");
        assert!(t.contains("pgset_1 reserved 0 B"), "{t}");
        assert!(t.contains("warning: slot pgset_3 retains 16 bytes"), "{t}");
        assert!(t.ends_with("NOT HEALTHY\n"), "{t}");
    }

    #[test]
    fn the_master_query_answer_parses() {
        let text = r#"{"version" : "15.14 (Debian 15.14-0+deb12u1)", "started_at" : "2026-11-29 21:00:00.1+00", "uptime_s" : 12.5, "lsn" : "0/3000148", "replication" : [{"name" : "pgset-1", "state" : "streaming", "lag_bytes" : 0, "lag_seconds" : null}], "slots" : [{"slot" : "pgset_1", "active" : true, "wal_status" : "reserved", "retained_bytes" : 0}]}"#;
        let f: MasterFacts = serde_json::from_str(text).unwrap();
        assert_eq!(f.replication[0].name, "pgset-1");
        assert_eq!(f.replication[0].lag_seconds, None);
        assert_eq!(f.slots[0].retained_bytes, Some(0));
        assert_eq!(f.lsn.as_deref(), Some("0/3000148"));
    }
}
