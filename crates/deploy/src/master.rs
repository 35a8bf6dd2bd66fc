//! Which member is the master: the holder of the leader Lease (`<cluster>-leader`) when it names
//! a member that exists, else (a cluster made before the record existed) ordinal 0, with the
//! pods' `role=master` label as a cross-check. [`find_master`] is pure; [`read_master`] is its one
//! read. Also the leader Lease's failover pause, which `down` and `scale` set while they change
//! the membership on purpose.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use pgset_spec::contract::{self, annotations, labels, roles};
use pgset_spec::{ClusterSpec, ordinal_of};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, is_status, selector_string};

/// The leader Lease as read: who holds it, the timeline served, when it was last renewed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderLease {
    /// The Lease's name (`<cluster>-leader`).
    pub name: String,
    /// The member that holds it ([`annotations::LEADER_MEMBER`]); `None` once released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// `spec.holderIdentity`: the holding pod's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    /// The timeline the holder serves ([`annotations::LEADER_TIMELINE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// `spec.renewTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed: Option<Timestamp>,
    /// `spec.leaseDurationSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i32>,
    /// `spec.leaseTransitions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transitions: Option<i32>,
    /// Whether automatic failover is paused ([`annotations::FAILOVER`]).
    #[serde(default)]
    pub failover_paused: bool,
    /// `metadata.resourceVersion`.
    #[serde(default, skip)]
    pub resource_version: Option<String>,
}

impl LeaderLease {
    /// Reads a Lease.
    pub fn from_lease(lease: &Lease) -> LeaderLease {
        let meta = &lease.metadata;
        let notes = meta.annotations.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        LeaderLease {
            name: meta.name.clone().unwrap_or_default(),
            member: notes
                .get(annotations::LEADER_MEMBER)
                .filter(|m| !m.is_empty())
                .cloned(),
            holder_identity: spec.holder_identity.filter(|h| !h.is_empty()),
            timeline: notes
                .get(annotations::LEADER_TIMELINE)
                .and_then(|t| t.parse().ok()),
            renewed: spec.renew_time.map(|t| t.0),
            duration_seconds: spec.lease_duration_seconds,
            transitions: spec.lease_transitions,
            failover_paused: notes.get(annotations::FAILOVER).map(String::as_str)
                == Some(annotations::FAILOVER_PAUSED),
            resource_version: meta.resource_version.clone(),
        }
    }

    /// Whole seconds since the last renewal at `now` (for display; `None` without a renewal).
    pub fn renewed_ago(&self, now: Timestamp) -> Option<i64> {
        self.renewed
            .map(|r| now.as_second().saturating_sub(r.as_second()).max(0))
    }

    /// Seconds since the last renewal when that is longer than the Lease's own duration: the
    /// holder stopped renewing it. Held records only (a released one is not renewed).
    pub fn not_renewed_for(&self, now: Timestamp) -> Option<i64> {
        let ago = self.renewed_ago(now)?;
        let duration = i64::from(self.duration_seconds?);
        (self.member.is_some() && ago > duration).then_some(ago)
    }

    /// One line for people, `ago` being [`LeaderLease::renewed_ago`]:
    /// `pgset-leader held by pgset-1 (uid), timeline 2, renewed 3 s ago, failover paused`.
    pub fn describe(&self, ago: Option<i64>) -> String {
        let mut parts = vec![match &self.member {
            Some(m) => format!(
                "held by {m}{}",
                self.holder_identity
                    .as_ref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default()
            ),
            None => "released".to_string(),
        }];
        if let Some(t) = self.timeline {
            parts.push(format!("timeline {t}"));
        }
        if let Some(ago) = ago {
            parts.push(format!("renewed {ago} s ago"));
        }
        if self.failover_paused {
            parts.push("failover paused".into());
        }
        format!("{} {}", self.name, parts.join(", "))
    }
}

/// What [`find_master`] needs of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSeen {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Its [`labels::ROLE`] label.
    pub role: Option<String>,
    /// Being deleted.
    pub terminating: bool,
    /// The agent's step on the pod ([`annotations::PHASE`]).
    pub phase: Option<String>,
    /// Whether the pod is Ready.
    pub ready: bool,
}

impl PodSeen {
    /// Reads a pod.
    pub fn from_pod(pod: &Pod) -> PodSeen {
        let meta = &pod.metadata;
        PodSeen {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            role: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::ROLE).cloned()),
            terminating: meta.deletion_timestamp.is_some(),
            phase: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotations::PHASE).cloned()),
            ready: crate::readiness::pod_is_ready(pod),
        }
    }
}

/// Where the master's name came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MasterSource {
    /// The leader Lease's holder.
    #[default]
    LeaderLease,
    /// No leader Lease (a cluster made before it existed): ordinal 0.
    OrdinalZero,
}

/// The master as the cluster's own state says, and every disagreement seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasterView {
    /// The master's pod name; `None` when the leader Lease is released or names no pod.
    pub master: Option<String>,
    /// Where that name came from.
    pub source: MasterSource,
    /// The leader Lease, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderLease>,
    /// The pods (not being deleted) labelled `role=master`.
    pub labelled: Vec<String>,
    /// What disagrees: never resolved silently, a warning in `status`, a failed check in `verify`.
    pub problems: Vec<String>,
}

impl MasterView {
    /// The master's name, or ordinal 0's when there is none (what to aim a read at, never a
    /// judgement: the problems say there is no master).
    pub fn master_or_first(&self, spec: &ClusterSpec) -> String {
        self.master.clone().unwrap_or_else(|| spec.pod_name(0))
    }

    /// The master's ordinal.
    pub fn ordinal(&self) -> Option<i32> {
        self.master.as_deref().and_then(ordinal_of)
    }
}

/// The master (pure): the leader Lease's holder when it names a member that exists; with no
/// Lease, ordinal 0; the `role=master` label as a cross-check. `now` is used only to say how
/// long ago the Lease was renewed.
pub fn find_master(
    spec: &ClusterSpec,
    leader: Option<&LeaderLease>,
    pods: &[PodSeen],
    now: Timestamp,
) -> MasterView {
    let mut problems = Vec::new();
    let mut labelled: Vec<String> = pods
        .iter()
        .filter(|p| !p.terminating && p.role.as_deref() == Some(roles::MASTER))
        .map(|p| p.name.clone())
        .collect();
    labelled.sort_by_key(|n| (ordinal_of(n), n.clone()));
    let (master, source) = match leader {
        None => (Some(spec.pod_name(0)), MasterSource::OrdinalZero),
        Some(lease) => {
            let master = match &lease.member {
                None => {
                    problems.push(format!(
                        "the leader record {} is released: no member holds the master role",
                        lease.name
                    ));
                    None
                }
                Some(member) => match pods.iter().find(|p| &p.name == member) {
                    None => {
                        problems.push(format!(
                            "the leader record {} names {member}, which does not exist",
                            lease.name
                        ));
                        None
                    }
                    Some(pod) => {
                        if let Some(holder) = &lease.holder_identity
                            && !pod.uid.is_empty()
                            && holder != &pod.uid
                        {
                            problems.push(format!(
                                "the leader record {} is held by an earlier pod of {member} (uid {holder}), not the running one (uid {})",
                                lease.name, pod.uid
                            ));
                        }
                        Some(member.clone())
                    }
                },
            };
            if let Some(ago) = lease.not_renewed_for(now) {
                problems.push(format!(
                    "leader record {} not renewed for {ago} s (its duration is {} s)",
                    lease.name,
                    lease.duration_seconds.unwrap_or_default()
                ));
            }
            (master, MasterSource::LeaderLease)
        }
    };
    if labelled.len() > 1 {
        problems.push(format!(
            "{} pods are labelled {}={}: {}",
            labelled.len(),
            labels::ROLE,
            roles::MASTER,
            labelled.join(", ")
        ));
    } else if let (Some(m), [l]) = (&master, labelled.as_slice())
        && m != l
    {
        let says = match source {
            MasterSource::LeaderLease => format!(
                "the leader record {} names {m}",
                contract::leader_lease_name(&spec.name)
            ),
            MasterSource::OrdinalZero => format!("with no leader record {m} is the master"),
        };
        problems.push(format!(
            "{says}, but the label {}={} is on {l}",
            labels::ROLE,
            roles::MASTER
        ));
    }
    MasterView {
        master,
        source,
        leader: leader.cloned(),
        labelled,
        problems,
    }
}

/// The leader Lease, when it exists.
pub async fn read_leader(client: &Client, spec: &ClusterSpec) -> Result<Option<LeaderLease>> {
    let ns = spec.namespace.as_str();
    let name = contract::leader_lease_name(&spec.name);
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "Lease", &name, ns))?
        .as_ref()
        .map(LeaderLease::from_lease))
}

/// Reads the leader Lease and the set's pods, and finds the master ([`find_master`]).
pub async fn read_master(client: &Client, spec: &ClusterSpec) -> Result<MasterView> {
    let leader = read_leader(client, spec).await?;
    let ns = spec.namespace.as_str();
    let selector = selector_string(spec);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api("list", "Pod", &selector, ns))?;
    let seen: Vec<PodSeen> = list.items.iter().map(PodSeen::from_pod).collect();
    Ok(find_master(spec, leader.as_ref(), &seen, Timestamp::now()))
}

/// What [`pause_failover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// No leader Lease: nothing can take the master role, nothing to pause.
    NoLeader,
    /// The pause is written now.
    Paused,
    /// It was paused already.
    AlreadyPaused,
}

/// Sets or removes the failover annotation with a merge patch on the `resourceVersion` read, so
/// a write racing the holder's renewal fails (409) and is made again on the new version.
async fn set_failover(client: &Client, spec: &ClusterSpec, paused: bool) -> Result<Option<bool>> {
    let ns = spec.namespace.as_str();
    let name = contract::leader_lease_name(&spec.name);
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let mut attempts = 0;
    loop {
        let Some(lease) = api
            .get_opt(&name)
            .await
            .map_err(Error::api("get", "Lease", &name, ns))?
        else {
            return Ok(None);
        };
        let read = LeaderLease::from_lease(&lease);
        if read.failover_paused == paused {
            return Ok(Some(false));
        }
        let value = paused.then_some(annotations::FAILOVER_PAUSED);
        let patch = serde_json::json!({ "metadata": {
            "resourceVersion": read.resource_version,
            "annotations": BTreeMap::from([(annotations::FAILOVER, value)]),
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(Some(true)),
            Err(e) if is_status(&e, 409) && attempts < 5 => attempts += 1,
            Err(e) => return Err(Error::api("patch", "Lease", &name, ns)(e)),
        }
    }
}

/// Pauses automatic failover on the leader Lease (when one exists) before the membership is
/// changed on purpose.
pub async fn pause_failover(client: &Client, spec: &ClusterSpec) -> Result<Pause> {
    Ok(match set_failover(client, spec, true).await? {
        None => Pause::NoLeader,
        Some(true) => Pause::Paused,
        Some(false) => Pause::AlreadyPaused,
    })
}

/// Removes the failover pause; `true` when one was removed.
pub async fn resume_failover(client: &Client, spec: &ClusterSpec) -> Result<bool> {
    Ok(set_failover(client, spec, false).await? == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::named_spec;

    fn pod(name: &str, role: Option<&str>) -> PodSeen {
        PodSeen {
            name: name.into(),
            uid: format!("uid-{name}"),
            role: role.map(String::from),
            ..PodSeen::default()
        }
    }

    fn lease(member: Option<&str>) -> LeaderLease {
        LeaderLease {
            name: "db-leader".into(),
            member: member.map(String::from),
            holder_identity: member.map(|m| format!("uid-{m}")),
            timeline: Some(2),
            renewed: Some(now()),
            duration_seconds: Some(15),
            ..LeaderLease::default()
        }
    }

    fn now() -> Timestamp {
        "2026-12-07T12:00:00Z".parse().unwrap()
    }

    fn set(roles: [Option<&str>; 3]) -> Vec<PodSeen> {
        roles
            .iter()
            .enumerate()
            .map(|(k, r)| pod(&format!("db-{k}"), *r))
            .collect()
    }

    const M: Option<&str> = Some(roles::MASTER);
    const R: Option<&str> = Some(roles::REPLICA);

    #[test]
    fn the_lease_holder_is_the_master_wherever_its_ordinal() {
        let spec = named_spec("db", "prod");
        let view = find_master(&spec, Some(&lease(Some("db-1"))), &set([R, M, R]), now());
        assert_eq!(view.master.as_deref(), Some("db-1"));
        assert_eq!(view.ordinal(), Some(1));
        assert_eq!(view.source, MasterSource::LeaderLease);
        assert_eq!(view.labelled, ["db-1"]);
        assert!(view.problems.is_empty(), "{:?}", view.problems);
    }

    #[test]
    fn without_a_lease_ordinal_zero_is_the_master() {
        let spec = named_spec("db", "prod");
        let view = find_master(&spec, None, &set([M, R, R]), now());
        assert_eq!(view.master.as_deref(), Some("db-0"));
        assert_eq!(view.source, MasterSource::OrdinalZero);
        assert!(view.problems.is_empty(), "{:?}", view.problems);
    }

    #[test]
    fn a_label_that_disagrees_with_the_lease_is_a_problem_not_resolved() {
        let spec = named_spec("db", "prod");
        let view = find_master(&spec, Some(&lease(Some("db-1"))), &set([M, R, R]), now());
        assert_eq!(view.master.as_deref(), Some("db-1"), "the Lease decides");
        assert_eq!(
            view.problems,
            ["the leader record db-leader names db-1, but the label role=master is on db-0"]
        );
        let two = find_master(&spec, Some(&lease(Some("db-1"))), &set([M, M, R]), now());
        assert_eq!(
            two.problems,
            ["2 pods are labelled role=master: db-0, db-1"]
        );
        let old = find_master(&spec, None, &set([R, M, R]), now());
        assert_eq!(
            old.problems,
            ["with no leader record db-0 is the master, but the label role=master is on db-1"]
        );
    }

    #[test]
    fn a_released_lease_or_one_naming_no_pod_names_no_master() {
        let spec = named_spec("db", "prod");
        let released = find_master(&spec, Some(&lease(None)), &set([R, R, R]), now());
        assert_eq!(released.master, None);
        assert_eq!(
            released.problems,
            ["the leader record db-leader is released: no member holds the master role"]
        );
        let gone = find_master(&spec, Some(&lease(Some("db-5"))), &set([R, R, R]), now());
        assert_eq!(gone.master, None);
        assert_eq!(
            gone.problems,
            ["the leader record db-leader names db-5, which does not exist"]
        );
        assert_eq!(gone.master_or_first(&spec), "db-0");
    }

    #[test]
    fn a_lease_held_by_an_earlier_pod_or_not_renewed_is_said() {
        let spec = named_spec("db", "prod");
        let mut stale = lease(Some("db-1"));
        stale.holder_identity = Some("uid-old".into());
        stale.renewed = Some("2026-12-07T11:59:00Z".parse().unwrap());
        let view = find_master(&spec, Some(&stale), &set([R, M, R]), now());
        assert_eq!(view.master.as_deref(), Some("db-1"));
        assert_eq!(
            view.problems,
            [
                "the leader record db-leader is held by an earlier pod of db-1 (uid uid-old), not the running one (uid uid-db-1)",
                "leader record db-leader not renewed for 60 s (its duration is 15 s)",
            ]
        );
        let fresh = lease(Some("db-1"));
        assert_eq!(fresh.not_renewed_for(now()), None);
        assert_eq!(
            fresh.describe(fresh.renewed_ago(now())),
            "db-leader held by db-1 (uid-db-1), timeline 2, renewed 0 s ago"
        );
    }

    #[test]
    fn a_lease_is_read_from_its_annotations_and_spec() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-leader", "resourceVersion": "7", "annotations": {
                annotations::LEADER_MEMBER: "db-2",
                annotations::LEADER_TIMELINE: "3",
                annotations::FAILOVER: annotations::FAILOVER_PAUSED,
            }},
            "spec": {"holderIdentity": "u2", "leaseDurationSeconds": 15,
                     "renewTime": "2026-12-07T11:59:50.000000Z", "leaseTransitions": 1}
        }))
        .unwrap();
        let read = LeaderLease::from_lease(&lease);
        assert_eq!(read.member.as_deref(), Some("db-2"));
        assert_eq!(read.timeline, Some(3));
        assert!(read.failover_paused);
        assert_eq!(read.resource_version.as_deref(), Some("7"));
        assert_eq!(read.renewed_ago(now()), Some(10));
        assert_eq!(read.transitions, Some(1));
    }
}
