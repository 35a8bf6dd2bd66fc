//! Waiting for the StatefulSet's ordered rollout: one progress line per member as it becomes
//! Ready (with how long it took), and on timeout the state of the member that holds it up.

use std::collections::BTreeMap;
use std::pin::pin;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::ListParams;
use kube::runtime::watcher::{self, watch_object, watcher};
use kube::{Api, Client};
use pgset_spec::{ClusterSpec, ordinal_of};
use tokio::time::Instant;

use crate::readiness::pod_is_ready;
use crate::wait::{Listing, unrecoverable};
use crate::{Error, Result, selector_string};

/// Budget for collecting the diagnosis after a timeout.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(10);
/// Label the StatefulSet controller puts on each pod: the revision it was created from.
const REVISION_LABEL: &str = "controller-revision-hash";

/// How a rollout went: each member and how long it took to become Ready.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutReport {
    /// `(pod name, time from first seen to Ready)`; `None` when it was Ready already.
    pub members: Vec<(String, Option<Duration>)>,
    /// Time from the start of the wait until every member was Ready.
    pub total: Duration,
}

fn pod_ordinal(pod: &Pod) -> Option<i32> {
    ordinal_of(pod.metadata.name.as_deref()?)
}

/// True when `pod` is Ready, not being deleted, and (when the StatefulSet names one) created
/// from the current revision.
fn member_done(pod: &Pod, update_revision: Option<&str>) -> bool {
    let current = match update_revision {
        Some(rev) => pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL))
            .is_some_and(|r| r == rev),
        None => true,
    };
    current && pod.metadata.deletion_timestamp.is_none() && pod_is_ready(pod)
}

/// True when the StatefulSet reports `replicas` members, all Ready and at its current revision.
fn statefulset_settled(sts: &StatefulSet, replicas: i32) -> bool {
    let generation = sts.metadata.generation.unwrap_or(0);
    let Some(status) = sts.status.as_ref() else {
        return false;
    };
    status.observed_generation.unwrap_or(0) >= generation
        && status.replicas == replicas
        && status.ready_replicas.unwrap_or(0) == replicas
        && status.updated_replicas.unwrap_or(0) == replicas
}

struct Snapshot {
    statefulset: Option<StatefulSet>,
    pods: BTreeMap<i32, Pod>,
}

async fn snapshot(client: &Client, spec: &ClusterSpec) -> Result<Snapshot> {
    let ns = spec.namespace.as_str();
    let name = spec.statefulset_name();
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let statefulset =
        sts_api
            .get_opt(name)
            .await
            .map_err(Error::api("get", "StatefulSet", name, ns))?;
    let selector = selector_string(spec);
    let list = pod_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api("list", "Pod", &selector, ns))?;
    let pods = list
        .items
        .into_iter()
        .filter_map(|p| pod_ordinal(&p).map(|o| (o, p)))
        .collect();
    Ok(Snapshot { statefulset, pods })
}

/// Which watch a change came from.
enum Change {
    StatefulSet(Box<Option<StatefulSet>>),
    Pod(Box<watcher::Event<Pod>>),
}

/// What a rollout has reported so far, judged again at every change the watches see.
struct Progress {
    started: Instant,
    first_seen: BTreeMap<String, Instant>,
    reported: Vec<(String, Option<Duration>)>,
    last_hold_up: String,
    first_look: bool,
}

impl Progress {
    /// Reports the members that became Ready and, when it changed, the member holding the
    /// rollout up; true when the rollout is done.
    fn judge(
        &mut self,
        spec: &ClusterSpec,
        snap: &Snapshot,
        replicas: i32,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> bool {
        let update_revision = snap
            .statefulset
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.update_revision.clone());
        // Until the controller has seen the latest spec, its revision names the old
        // template: judging members against it would report old pods as done.
        let observed = snap.statefulset.as_ref().is_some_and(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.observed_generation)
                .unwrap_or(0)
                >= s.metadata.generation.unwrap_or(0)
        });
        for ordinal in (0..replicas).filter(|_| observed) {
            let Some(pod) = snap.pods.get(&ordinal) else {
                continue;
            };
            let name = spec.pod_name(ordinal);
            if self.reported.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if member_done(pod, update_revision.as_deref()) {
                let took = self.first_seen.get(&name).map(|t| t.elapsed());
                match took {
                    Some(d) => progress(&format!(
                        "{name} Ready after {:.1}s (at +{:.1}s)",
                        d.as_secs_f64(),
                        self.started.elapsed().as_secs_f64()
                    )),
                    None if self.first_look => progress(&format!("{name} Ready (already)")),
                    None => progress(&format!(
                        "{name} Ready (at +{:.1}s)",
                        self.started.elapsed().as_secs_f64()
                    )),
                }
                self.reported.push((name, took));
            } else {
                self.first_seen.entry(name).or_insert_with(Instant::now);
            }
        }
        self.first_look &= !observed;
        let extra_members = snap.pods.keys().any(|o| *o >= replicas);
        let settled = snap
            .statefulset
            .as_ref()
            .is_some_and(|s| statefulset_settled(s, replicas));
        if settled && !extra_members && self.reported.len() == replicas as usize {
            return true;
        }
        let hold_up = hold_up(spec, snap, replicas, update_revision.as_deref());
        if hold_up != self.last_hold_up {
            progress(&format!("waiting: {hold_up}"));
            self.last_hold_up = hold_up;
        }
        false
    }
}

/// Waits until the StatefulSet has exactly `replicas` members, all Ready at its current
/// revision, and no member above them. Reports each member as it becomes Ready, and the
/// member holding the rollout up whenever its state changes. Fails after `timeout` with the
/// state of that member.
///
/// Watches the StatefulSet (by name) and its pods (by the cluster's selector) and judges
/// again at every change, so a member's Ready is seen as the API server records it.
pub async fn wait_for_rollout(
    client: &Client,
    spec: &ClusterSpec,
    replicas: i32,
    timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RolloutReport> {
    let ns = spec.namespace.as_str();
    let name = spec.statefulset_name();
    let selector = selector_string(spec);
    let statefulsets = watch_object(Api::<StatefulSet>::namespaced(client.clone(), ns), name)
        .filter(unrecoverable)
        .map_ok(|s| Change::StatefulSet(Box::new(s)))
        .map_err(Error::watch("StatefulSet", name, ns));
    let pods = watcher(
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(&selector),
    )
    .filter(unrecoverable)
    .map_ok(|e| Change::Pod(Box::new(e)))
    .map_err(Error::watch("Pod", &selector, ns));
    let mut state = Progress {
        started: Instant::now(),
        first_seen: BTreeMap::new(),
        reported: Vec::new(),
        last_hold_up: String::new(),
        first_look: true,
    };
    let mut snap: Option<Snapshot> = None;
    let waiting = async {
        let mut changes = pin!(futures::stream::select(statefulsets, pods));
        let mut statefulset: Option<Option<StatefulSet>> = None;
        let mut listing = Listing::<Pod>::default();
        while let Some(change) = changes.try_next().await? {
            let changed = match change {
                Change::StatefulSet(s) => {
                    statefulset = Some(*s);
                    true
                }
                Change::Pod(event) => listing.apply(*event),
            };
            let Some(sts) = statefulset.as_ref().filter(|_| changed && listing.listed()) else {
                continue;
            };
            let current = snap.insert(Snapshot {
                statefulset: sts.clone(),
                pods: listing
                    .objects
                    .values()
                    .filter_map(|p| pod_ordinal(p).map(|o| (o, p.clone())))
                    .collect(),
            });
            if state.judge(spec, current, replicas, progress) {
                return Ok::<(), Error>(());
            }
        }
        // The watches restart themselves when the server closes them: they do not end.
        std::future::pending().await
    };
    match tokio::time::timeout(timeout, waiting).await {
        Ok(result) => {
            result?;
            Ok(RolloutReport {
                members: state.reported,
                total: state.started.elapsed(),
            })
        }
        Err(_) => Err(Error::Timeout {
            what: format!(
                "StatefulSet {} in namespace {} to have {replicas} Ready members",
                spec.statefulset_name(),
                spec.namespace
            ),
            waited: timeout,
            status: diagnose(client, spec, replicas, snap).await,
        }),
    }
}

/// One line naming the member the rollout waits for and its state.
fn hold_up(
    spec: &ClusterSpec,
    snap: &Snapshot,
    replicas: i32,
    update_revision: Option<&str>,
) -> String {
    let Some(sts) = &snap.statefulset else {
        return format!("StatefulSet {} does not exist", spec.statefulset_name());
    };
    // A member missing or not Ready holds the rollout up first ...
    for ordinal in 0..replicas {
        let name = spec.pod_name(ordinal);
        match snap.pods.get(&ordinal) {
            None => {
                return format!("pod {name} not created yet ({})", statefulset_summary(sts));
            }
            Some(pod) if !pod_is_ready(pod) || pod.metadata.deletion_timestamp.is_some() => {
                return format!("pod {name}: {}", describe_pod(pod));
            }
            Some(_) => {}
        }
    }
    // ... then a Ready member still on the previous revision (rolling update, highest first).
    for ordinal in (0..replicas).rev() {
        if let Some(pod) = snap.pods.get(&ordinal)
            && !member_done(pod, update_revision)
        {
            let revision = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL));
            return format!(
                "pod {} runs revision {}, to be replaced by {}",
                spec.pod_name(ordinal),
                revision.map_or("?", String::as_str),
                update_revision.unwrap_or("?")
            );
        }
    }
    if let Some((_, pod)) = snap.pods.iter().find(|(o, _)| **o >= replicas) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        return format!(
            "pod {name} still exists (scaling down): {}",
            describe_pod(pod)
        );
    }
    format!(
        "StatefulSet status catching up ({})",
        statefulset_summary(sts)
    )
}

fn statefulset_summary(sts: &StatefulSet) -> String {
    let desired = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    match &sts.status {
        Some(s) => format!(
            "StatefulSet: {desired} desired, {} created, {} ready, {} updated",
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.updated_replicas.unwrap_or(0)
        ),
        None => format!("StatefulSet: {desired} desired, no status yet"),
    }
}

fn describe_container(kind: &str, c: &ContainerStatus) -> Option<String> {
    let state = c.state.as_ref();
    let mut parts = Vec::new();
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.clone().unwrap_or_else(|| "Waiting".into());
        match w.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => parts.push(format!("waiting: {reason}: {}", shorten(m))),
            None => parts.push(format!("waiting: {reason}")),
        }
    } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        parts.push(format!(
            "terminated: {} (exit {})",
            t.reason.clone().unwrap_or_default(),
            t.exit_code
        ));
    } else if state.and_then(|s| s.running.as_ref()).is_some() && !c.ready {
        parts.push("running, not ready".into());
    }
    if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        let mut last = format!(
            "last exit {} ({})",
            t.exit_code,
            t.reason.clone().unwrap_or_default()
        );
        if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
            last.push_str(&format!(": {}", shorten(m)));
        }
        parts.push(last);
    }
    if c.restart_count > 0 {
        parts.push(format!("{} restarts", c.restart_count));
    }
    (!parts.is_empty()).then(|| format!("{kind} {} {}", c.name, parts.join(", ")))
}

/// A pod's state in one line: phase, the conditions that are not True, containers waiting or
/// failing.
pub fn describe_pod(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".into();
    };
    let mut parts = vec![status.phase.clone().unwrap_or_else(|| "Unknown".into())];
    if pod.metadata.deletion_timestamp.is_some() {
        parts.push("terminating".into());
    }
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            let mut s = format!("{}={}", c.type_, c.status);
            if let Some(r) = &c.reason {
                s.push_str(&format!(" ({r}"));
                if let Some(m) = c.message.as_deref().filter(|m| !m.is_empty()) {
                    s.push_str(&format!(": {}", shorten(m)));
                }
                s.push(')');
            }
            parts.push(s);
        }
    }
    for c in status.init_container_statuses.iter().flatten() {
        parts.extend(describe_container("init container", c));
    }
    for c in status.container_statuses.iter().flatten() {
        parts.extend(describe_container("container", c));
    }
    parts.join("; ")
}

pub(crate) fn shorten(message: &str) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 300 {
        let cut: String = one_line.chars().take(300).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// The state of the member holding the rollout up, with its last event, for a timeout error.
/// `seen` is the last state the watches gave; without one the state is read.
async fn diagnose(
    client: &Client,
    spec: &ClusterSpec,
    replicas: i32,
    seen: Option<Snapshot>,
) -> String {
    let work = async {
        let snap = match seen {
            Some(s) => s,
            None => match snapshot(client, spec).await {
                Ok(s) => s,
                Err(e) => return format!("could not read the state: {e}"),
            },
        };
        let update_revision = snap
            .statefulset
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.update_revision.clone());
        let mut line = hold_up(spec, &snap, replicas, update_revision.as_deref());
        let culprit = (0..replicas)
            .find(|o| {
                snap.pods
                    .get(o)
                    .is_none_or(|p| !member_done(p, update_revision.as_deref()))
            })
            .and_then(|o| snap.pods.get(&o))
            .or_else(|| {
                snap.pods
                    .iter()
                    .find(|(o, _)| **o >= replicas)
                    .map(|(_, p)| p)
            });
        if let Some(name) = culprit.and_then(|p| p.metadata.name.clone())
            && let Some(event) = last_event(client, &spec.namespace, &name).await
        {
            line.push_str(&format!("; last event: {event}"));
        }
        line
    };
    tokio::time::timeout(DIAGNOSIS_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| "the cluster did not answer in time to say why".into())
}

/// The most recent event about pod `name`, as `Type Reason: message`.
async fn last_event(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={name}"
    ));
    let events = api.list(&params).await.ok()?.items;
    let latest = events.into_iter().max_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    })?;
    Some(format!(
        "{} {}: {}",
        latest.type_.unwrap_or_default(),
        latest.reason.unwrap_or_default(),
        shorten(&latest.message.unwrap_or_default())
    ))
}
