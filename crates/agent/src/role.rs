//! The master role from the leader record: which role this member takes at start, the master's
//! claim of the record before postgres runs, and the holder's renewals while postgres answers,
//! which end (and make the agent stop postgres) at the renew deadline without a good renewal.

use std::future::Future;
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
    Lease(LeaseStore),
}

impl RoleStore {
    /// The store of `s`'s cluster, written as this incarnation of the member.
    pub fn of(s: &Settings, api: Option<&PodApi>) -> Result<RoleStore> {
        let timings = s.leader_timings()?;
        match (s.env.mode, api) {
            (AgentMode::Kubernetes, Some(api)) => {
                let me = Holder::new(&s.pod_name, s.pod_uid().unwrap_or_default());
                Ok(RoleStore::Lease(LeaseStore::new(
                    api.client(),
                    s.namespace().unwrap_or("default"),
                    &s.env.cluster,
                    me,
                    timings,
                )))
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

    fn read(&self) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send {
        async move {
            match self {
                RoleStore::File(f) => f.read().await,
                RoleStore::Lease(l) => l.read().await,
            }
        }
    }

    fn create(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send {
        async move {
            match self {
                RoleStore::File(f) => f.create(record).await,
                RoleStore::Lease(l) => l.create(record).await,
            }
        }
    }

    fn replace(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = LeaderResult<Option<LeaderRecord>>> + Send {
        async move {
            match self {
                RoleStore::File(f) => f.replace(record).await,
                RoleStore::Lease(l) => l.replace(record).await,
            }
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
            .and_then(|k| s.env.master_port.checked_add(k))
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
        Ok(db) => match tokio::time::timeout(timeout, pg::own_state(&db)).await {
            Ok(Ok(own)) if !own.in_recovery => (true, u32::try_from(own.timeline).ok()),
            Ok(Ok(_)) => (true, None),
            _ => (false, None),
        },
        Err(e) => (pg::cannot_connect_now(&e), None),
    }
}

/// The holder's renewals, run while postgres runs: every `renew_every`, only after postgres
/// answered; the reason the role is given up is sent once, at the renew deadline after the
/// last good write (or at once when the record names another holder).
pub async fn keep(s: Settings, store: RoleStore, mut held: Written, lost: oneshot::Sender<String>) {
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
            let _ = lost.send(format!(
                "the leader record was not renewed within the renew deadline of {} ms ({why})",
                timings.renew_deadline().as_millis()
            ));
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
            }
            Ok(Ok(HolderWrite::NotHolder(r))) => {
                let who = r
                    .and_then(|r| r.holder)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "nobody".into());
                let _ = lost.send(format!("the leader record names {who}, not this member"));
                return;
            }
            Ok(Err(e)) => last_problem = format!("renewing: {e}"),
            Err(_) => last_problem = "renewing: no answer before the renew deadline".into(),
        }
    }
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
