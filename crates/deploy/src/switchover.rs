//! `switchover` in a cluster: the request written on the leader Lease (the annotation
//! [`annotations::SWITCHOVER`], a merge patch on the `resourceVersion` read, the holder and every
//! other annotation kept), judged first from the Lease and the pods ([`judge`], pure), then
//! followed on the Lease until the master's agent answers and the target holds it and is ready
//! as the master.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use pgset_spec::contract::annotations::{FAILOVER_TO, SWITCHOVER, SWITCHOVER_OUTCOME};
use pgset_spec::contract::{self, MemberPhase, SwitchoverOutcome, SwitchoverRequest, roles};
use pgset_spec::{ClusterSpec, ordinal_of};
use serde::Serialize;

use crate::master::{LeaderLease, PodSeen};
use crate::{Error, Result, is_status, selector_string};

/// Whether the member's agent reports it streaming (`pgset.io/phase` on its pod).
fn streams(m: &PodSeen) -> bool {
    m.phase.as_deref() == Some(MemberPhase::Streaming.as_str())
}

/// The master a switchover starts from, or why none may be asked (pure): the Lease must exist
/// and name a holder, `to` must be a member other than the holder whose agent reports it
/// streaming, and no other switchover may be pending. Without `to`, some replica must stream.
pub fn judge(
    spec: &ClusterSpec,
    lease: Option<&LeaderLease>,
    pending: Option<&str>,
    members: &[PodSeen],
    to: Option<&str>,
) -> std::result::Result<String, String> {
    let name = contract::leader_lease_name(&spec.name);
    let Some(lease) = lease else {
        return Err(format!(
            "there is no leader Lease {name} in namespace {}: the cluster has no master to hand \
             over from; deploy it first",
            spec.namespace
        ));
    };
    let Some(master) = lease.member.clone() else {
        return Err(format!(
            "the leader Lease {name} names no master (it was released); wait until a member takes \
             it (`{} status`)",
            contract::program_name()
        ));
    };
    if let Some(p) = pending {
        return Err(format!(
            "a switchover is already asked on {name} ({p}); wait for its outcome"
        ));
    }
    match to {
        Some(to) => {
            let Some(m) = members.iter().find(|m| m.name == to) else {
                let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                names.sort_by_key(|n| ordinal_of(n));
                return Err(format!(
                    "{to} is not a member of {} (members: {}); name one of them",
                    spec.name,
                    names.join(", ")
                ));
            };
            if to == master {
                return Err(format!(
                    "{to} is the master already; name a replica, or omit --to for the most \
                     advanced one"
                ));
            }
            if !streams(m) {
                return Err(format!(
                    "{to} does not stream from the master {master} (its agent reports {}); wait \
                     until `{} status` shows it streaming",
                    m.phase.as_deref().unwrap_or("no step"),
                    contract::program_name()
                ));
            }
        }
        None => {
            if !members.iter().any(|m| m.name != master && streams(m)) {
                return Err(format!(
                    "no replica streams from the master {master}; wait until `{} status` shows \
                     one streaming",
                    contract::program_name()
                ));
            }
        }
    }
    Ok(master)
}

async fn read(client: &Client, spec: &ClusterSpec) -> Result<(Option<Lease>, Vec<PodSeen>)> {
    let ns = spec.namespace.as_str();
    let name = contract::leader_lease_name(&spec.name);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let lease = leases
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "Lease", &name, ns))?;
    let selector = selector_string(spec);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api("list", "Pod", &selector, ns))?;
    Ok((lease, list.items.iter().map(PodSeen::from_pod).collect()))
}

fn note<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Writes a switchover request for `to` (or the most advanced streaming replica) on the leader
/// Lease, once judged ([`judge`]): a merge patch of the one annotation on the `resourceVersion`
/// read, made again on the new version when the holder's renewal raced it (409) and the holder
/// is unchanged.
pub async fn request_switchover(
    client: &Client,
    spec: &ClusterSpec,
    to: Option<&str>,
) -> Result<(String, SwitchoverRequest)> {
    let ns = spec.namespace.as_str();
    let name = contract::leader_lease_name(&spec.name);
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let request = SwitchoverRequest::new(to);
    let mut first_master: Option<String> = None;
    for _ in 0..6 {
        let (lease, members) = read(client, spec).await?;
        let seen = lease.as_ref().map(LeaderLease::from_lease);
        let pending = lease.as_ref().and_then(|l| note(l, SWITCHOVER));
        let master =
            judge(spec, seen.as_ref(), pending, &members, to).map_err(Error::SwitchoverRefused)?;
        if first_master.as_ref().is_some_and(|m| *m != master) {
            return Err(Error::SwitchoverRefused(format!(
                "the leader Lease {name} changed hands while the request was written (it names \
                 {master} now); look at `{} status` and ask again",
                contract::program_name()
            )));
        }
        first_master = Some(master.clone());
        let version = seen.and_then(|s| s.resource_version);
        let patch = serde_json::json!({ "metadata": {
            "resourceVersion": version,
            "annotations": { SWITCHOVER: request.to_note() },
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok((master, request)),
            Err(e) if is_status(&e, 409) => continue,
            Err(e) => return Err(Error::api("patch", "Lease", &name, ns)(e)),
        }
    }
    Err(Error::SwitchoverRefused(format!(
        "the leader Lease {name} kept changing while the request was written; ask again"
    )))
}

/// How a cluster switchover ended, as the command prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Switched {
    /// The request's id.
    pub id: String,
    /// The master before.
    pub from: String,
    /// The master now.
    pub to: String,
    /// The timeline the Lease names.
    pub timeline: Option<u32>,
    /// The hand over's LSN (the old master's shutdown checkpoint).
    pub lsn: Option<String>,
    /// Milliseconds from the request to the new master being Ready with the master role label
    /// (an upper bound of the write gap, polled every 500 ms).
    pub switched_ms: u64,
    /// How the old master is doing, from its agent's step on its pod.
    pub old_master: String,
}

impl Switched {
    /// The one line the command prints.
    pub fn line(&self) -> String {
        format!(
            "{} → {}: master on timeline {}, switched within {:.1} s of the request (write gap at \
             most that), {}",
            self.from,
            self.to,
            self.timeline
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            self.switched_ms as f64 / 1000.0,
            self.old_master
        )
    }
}

/// Follows a request written by [`request_switchover`] until the outcome is on the Lease and
/// the target holds it under its own pod UID, Ready with the master label, and the old master
/// streams again; an error for a refused or aborted outcome (with its reason) or after `timeout`.
pub async fn wait_switchover(
    client: &Client,
    spec: &ClusterSpec,
    from: &str,
    request: &SwitchoverRequest,
    timeout: Duration,
) -> Result<Switched> {
    let asked = Instant::now();
    let deadline = asked + timeout;
    let mut switched: Option<(String, Duration, SwitchoverOutcome, Option<u32>)> = None;
    loop {
        let (lease, members) = read(client, spec).await?;
        let outcome = lease
            .as_ref()
            .and_then(|l| note(l, SWITCHOVER_OUTCOME))
            .and_then(SwitchoverOutcome::parse)
            .filter(|o| o.id == request.id);
        if let Some(o) = &outcome
            && o.state != SwitchoverOutcome::HANDED_OVER
        {
            return Err(Error::SwitchoverRefused(format!(
                "the switchover was {} by the master {}: {}",
                o.state,
                o.from,
                o.reason.clone().unwrap_or_default()
            )));
        }
        if switched.is_none()
            && let (Some(o), Some(l)) = (&outcome, lease.as_ref())
        {
            let seen = LeaderLease::from_lease(l);
            let to = o.to.clone().unwrap_or_default();
            if let Some(m) = members.iter().find(|m| m.name == to)
                && seen.member.as_deref() == Some(to.as_str())
                && seen.holder_identity.as_deref() == Some(m.uid.as_str())
                && m.ready
                && m.role.as_deref() == Some(roles::MASTER)
            {
                switched = Some((to, asked.elapsed(), o.clone(), seen.timeline));
            }
        }
        if let Some((to, took, o, timeline)) = &switched
            && let Some(old) = members.iter().find(|m| m.name == from)
            && streams(old)
        {
            return Ok(Switched {
                id: request.id.clone(),
                from: from.to_string(),
                to: to.clone(),
                timeline: *timeline,
                lsn: o.lsn.clone(),
                switched_ms: took.as_millis() as u64,
                old_master: format!("{from} streams from {to} as its replica"),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::SwitchoverRefused(format!(
                "the switchover (request {}) did not complete within {} s: {}; see `{} status`",
                request.id,
                timeout.as_secs(),
                match (&outcome, &switched) {
                    (None, _) => format!("the master {from} did not answer the request"),
                    (Some(o), None) => format!(
                        "{} does not hold the leader Lease as a Ready master yet",
                        o.to.clone().unwrap_or_default()
                    ),
                    (Some(_), Some(_)) => format!("{from} does not stream from the new master yet"),
                },
                contract::program_name()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The master a manual failover replaces, or why none may be asked (pure): the Lease must exist
/// and name a holder, and `to` must be a member other than the holder.
pub fn judge_failover(
    spec: &ClusterSpec,
    lease: Option<&LeaderLease>,
    members: &[PodSeen],
    to: &str,
) -> std::result::Result<String, String> {
    let name = contract::leader_lease_name(&spec.name);
    let Some(master) = lease.and_then(|l| l.member.clone()) else {
        return Err(format!(
            "the leader Lease {name} in namespace {} names no master: a failover has nothing to \
             replace; `{} status` shows the members",
            spec.namespace,
            contract::program_name()
        ));
    };
    if !members.iter().any(|m| m.name == to) {
        let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        names.sort_by_key(|n| ordinal_of(n));
        return Err(format!(
            "{to} is not a member of {} (members: {}); name one of them",
            spec.name,
            names.join(", ")
        ));
    }
    if to == master {
        return Err(format!(
            "{to} holds the leader Lease; name a replica to promote"
        ));
    }
    Ok(master)
}

/// Names `to` the member that takes the leader Lease once it expired (automatic failover off
/// or paused, the master gone): judged first ([`judge_failover`]), then the Lease is watched for
/// `watch` (at least the holder's renew deadline) and the request is refused when it changed
/// meanwhile — its master runs, which is a switchover's case; otherwise one merge patch of the
/// annotation [`FAILOVER_TO`] on the version watched. Returns the master replaced and the request.
pub async fn request_failover(
    client: &Client,
    spec: &ClusterSpec,
    to: &str,
    watch: Duration,
) -> Result<(String, SwitchoverRequest)> {
    let ns = spec.namespace.as_str();
    let name = contract::leader_lease_name(&spec.name);
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let (lease, members) = read(client, spec).await?;
    let seen = lease.as_ref().map(LeaderLease::from_lease);
    let master =
        judge_failover(spec, seen.as_ref(), &members, to).map_err(Error::SwitchoverRefused)?;
    let version = seen.and_then(|s| s.resource_version);
    let end = tokio::time::Instant::now() + watch;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = api
            .get_opt(&name)
            .await
            .map_err(Error::api("get", "Lease", &name, ns))?;
        if now.and_then(|l| l.metadata.resource_version) != version {
            return Err(Error::SwitchoverRefused(format!(
                "the leader Lease {name} is live (renewed while watched for {} s): its master {master} \
                 runs; use `{} switchover --to {to}` instead",
                watch.as_secs(),
                contract::program_name()
            )));
        }
    }
    let request = SwitchoverRequest::new(Some(to));
    let patch = serde_json::json!({ "metadata": {
        "resourceVersion": version,
        "annotations": { FAILOVER_TO: request.to_note() },
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok((master, request)),
        Err(e) if is_status(&e, 409) => Err(Error::SwitchoverRefused(format!(
            "the leader Lease {name} changed while the request was written: its master may run; \
             nothing was asked, look at `{} status`",
            contract::program_name()
        ))),
        Err(e) => Err(Error::api("patch", "Lease", &name, ns)(e)),
    }
}

/// Follows a manual failover until `to` holds the leader Lease under its own pod UID and is
/// Ready with the master label; after `timeout` the request is withdrawn (when still there) and
/// an error says so.
pub async fn wait_failover(
    client: &Client,
    spec: &ClusterSpec,
    from: &str,
    to: &str,
    request: &SwitchoverRequest,
    timeout: Duration,
) -> Result<Switched> {
    let asked = Instant::now();
    loop {
        let (lease, members) = read(client, spec).await?;
        if let Some(l) = lease.as_ref() {
            let seen = LeaderLease::from_lease(l);
            if let Some(m) = members.iter().find(|m| m.name == to)
                && seen.member.as_deref() == Some(to)
                && seen.holder_identity.as_deref() == Some(m.uid.as_str())
                && m.ready
                && m.role.as_deref() == Some(roles::MASTER)
            {
                let outcome = note(l, SWITCHOVER_OUTCOME)
                    .and_then(SwitchoverOutcome::parse)
                    .filter(|o| o.id == request.id);
                return Ok(Switched {
                    id: request.id.clone(),
                    from: from.to_string(),
                    to: to.to_string(),
                    timeline: seen.timeline,
                    lsn: outcome.and_then(|o| o.lsn),
                    switched_ms: asked.elapsed().as_millis() as u64,
                    old_master: format!(
                        "{from} follows {to} when it runs again (rewound if it wrote after the fork)"
                    ),
                });
            }
            if asked.elapsed() >= timeout {
                let ours = note(l, FAILOVER_TO)
                    .and_then(SwitchoverRequest::parse)
                    .is_some_and(|r| r.id == request.id);
                if ours {
                    let patch = serde_json::json!({ "metadata": {
                        "resourceVersion": l.metadata.resource_version,
                        "annotations": { FAILOVER_TO: null },
                    }});
                    let api: Api<Lease> = Api::namespaced(client.clone(), &spec.namespace);
                    let _ = api
                        .patch(
                            &contract::leader_lease_name(&spec.name),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await;
                }
                return Err(Error::SwitchoverRefused(format!(
                    "{to} did not take the leader Lease within {} s of the request (withdrawn): it \
                     takes it once the Lease expired on its own clock and only while it received \
                     the Lease's timeline; see its log (`kubectl logs {to} -c {}`)",
                    timeout.as_secs(),
                    contract::POSTGRES_CONTAINER
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::named_spec;

    #[test]
    fn a_manual_failover_is_judged_from_the_lease_and_the_members() {
        let spec = named_spec("db", "prod");
        let set = [member(0, "running"), member(1, "not-ready")];
        let held = lease(Some("db-0"));
        assert_eq!(
            judge_failover(&spec, Some(&held), &set, "db-1"),
            Ok("db-0".into())
        );
        let e = judge_failover(&spec, Some(&held), &set, "db-0").unwrap_err();
        assert!(e.contains("db-0 holds the leader Lease"), "{e}");
        let e = judge_failover(&spec, Some(&held), &set, "db-5").unwrap_err();
        assert!(
            e.contains("db-5 is not a member of db (members: db-0, db-1)"),
            "{e}"
        );
        let e = judge_failover(&spec, None, &set, "db-1").unwrap_err();
        assert!(e.contains("names no master"), "{e}");
    }

    fn member(k: i32, phase: &str) -> PodSeen {
        PodSeen {
            name: format!("db-{k}"),
            uid: format!("uid-{k}"),
            phase: Some(phase.into()),
            role: None,
            ready: true,
            ..PodSeen::default()
        }
    }

    fn lease(member: Option<&str>) -> LeaderLease {
        LeaderLease {
            name: "db-leader".into(),
            member: member.map(String::from),
            ..LeaderLease::default()
        }
    }

    #[test]
    fn a_switchover_is_judged_from_the_lease_and_the_agents_steps() {
        let spec = named_spec("db", "prod");
        let set = [
            member(0, "running"),
            member(1, "streaming"),
            member(2, "base-backup"),
        ];
        let held = lease(Some("db-0"));
        assert_eq!(
            judge(&spec, Some(&held), None, &set, Some("db-1")),
            Ok("db-0".into())
        );
        assert_eq!(
            judge(&spec, Some(&held), None, &set, None),
            Ok("db-0".into())
        );
        let refused = |to: Option<&str>, l: Option<&LeaderLease>, pending: Option<&str>| {
            judge(&spec, l, pending, &set, to).unwrap_err()
        };
        let e = refused(Some("db-2"), Some(&held), None);
        assert!(
            e.contains("db-2 does not stream") && e.contains("base-backup"),
            "{e}"
        );
        let e = refused(Some("db-7"), Some(&held), None);
        assert!(
            e.contains("db-7 is not a member of db (members: db-0, db-1, db-2)"),
            "{e}"
        );
        let e = refused(Some("db-0"), Some(&held), None);
        assert!(e.contains("db-0 is the master already"), "{e}");
        let e = refused(Some("db-1"), None, None);
        assert!(
            e.contains("no leader Lease db-leader") && e.contains("deploy it first"),
            "{e}"
        );
        let e = refused(Some("db-1"), Some(&lease(None)), None);
        assert!(e.contains("names no master"), "{e}");
        let e = refused(Some("db-1"), Some(&held), Some("{\"id\":\"x\"}"));
        assert!(e.contains("already asked"), "{e}");
        let e = judge(&spec, Some(&held), None, &set[..1], None).unwrap_err();
        assert!(e.contains("no replica streams"), "{e}");
    }
}
