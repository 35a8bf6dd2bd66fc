//! Waiting for the StatefulSet's ordered rollout: each member's step as it changes (from its
//! agent's phase annotation, else its pod's state) with a base backup's latest reading, Ready
//! with how long it took, and on timeout the state of the member that holds it up. The
//! [`Timeline`] of the report says when each member reached each step: where the time went.

use std::collections::BTreeMap;
use std::pin::pin;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::ListParams;
use kube::runtime::watcher::{self, watch_object, watcher};
use kube::{Api, Client};
use pgset_spec::contract::{BaseBackupReading, MemberPhase, annotations};
use pgset_spec::{ClusterSpec, ValidSpec, ordinal_of};
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
    /// When each member reached each step, from the start of the wait.
    pub timeline: Timeline,
}

/// When each member of a rollout reached each of its steps (scheduled, agent copied, each
/// `pgset.io/phase` step, Ready), in seconds from the start of the wait, which directly follows
/// the apply: where the rollout's time went, on any cluster.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timeline {
    /// Each member seen, by ordinal.
    pub members: Vec<MemberTimeline>,
}

/// One member's steps in the order they were seen.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemberTimeline {
    /// The pod name.
    pub name: String,
    /// Its ordinal.
    pub ordinal: i32,
    /// Each step with when it was first seen.
    pub steps: Vec<TimelineStep>,
}

/// A step and when it began.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TimelineStep {
    /// The step, in the words of the rollout's lines.
    pub step: String,
    /// Seconds from the start of the wait (to the millisecond).
    pub seconds: f64,
}

impl Timeline {
    /// Takes one rollout event: a member's new step is added with its time; a new reading
    /// within the same step, or the StatefulSet's own wait, adds nothing.
    pub fn record(&mut self, event: &RolloutEvent) {
        let RolloutEvent::Member(m) = event else {
            return;
        };
        let step = match (&m.step, m.already) {
            (MemberStep::Ready, true) => "Ready (already)".to_string(),
            (step, _) => step.to_string(),
        };
        let at = (m.at.as_secs_f64() * 1000.0).round() / 1000.0;
        let i = match self.members.iter().position(|t| t.name == m.name) {
            Some(i) => i,
            None => {
                self.members.push(MemberTimeline {
                    name: m.name.clone(),
                    ordinal: m.ordinal,
                    steps: Vec::new(),
                });
                self.members.sort_by_key(|t| t.ordinal);
                self.members
                    .iter()
                    .position(|t| t.name == m.name)
                    .unwrap_or_default()
            }
        };
        let steps = &mut self.members[i].steps;
        if steps.last().is_none_or(|last| last.step != step) {
            steps.push(TimelineStep { step, seconds: at });
        }
    }

    /// One line per member: each step with when it began and, in brackets, how long it took
    /// (until the next step).
    pub fn lines(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| {
                let steps: Vec<String> = m
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match m.steps.get(i + 1) {
                        Some(next) => {
                            format!(
                                "+{:.1}s {} ({:.1}s)",
                                s.seconds,
                                s.step,
                                next.seconds - s.seconds
                            )
                        }
                        None => format!("+{:.1}s {}", s.seconds, s.step),
                    })
                    .collect();
                format!("{}: {}", m.name, steps.join(" → "))
            })
            .collect()
    }
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

/// What a rollout has reported so far, judged again at every change the watches see.
struct Judge {
    started: Instant,
    first_seen: BTreeMap<String, Instant>,
    reported: Vec<(String, Option<Duration>)>,
    last: BTreeMap<i32, (MemberStep, String, Option<BaseBackupReading>)>,
    last_waiting: Option<String>,
    first_look: bool,
}

impl Judge {
    /// Reports each member whose step changed and the StatefulSet when it holds the rollout up;
    /// true when the rollout is done.
    fn judge(
        &mut self,
        spec: &ClusterSpec,
        snap: &Snapshot,
        replicas: i32,
        progress: &mut (dyn FnMut(&RolloutEvent) + Send),
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
        // Members above the wanted count (seen before or now), until they are gone.
        let surplus: Vec<i32> = self
            .last
            .keys()
            .copied()
            .filter(|o| *o >= replicas)
            .chain(snap.pods.keys().copied().filter(|o| *o >= replicas))
            .collect::<std::collections::BTreeSet<i32>>()
            .into_iter()
            .collect();
        let mut tell = |ordinal: i32, state: MemberState| {
            let key = (state.step.clone(), state.detail.clone(), state.base_backup);
            if self.last.get(&ordinal) != Some(&key) {
                self.last.insert(ordinal, key);
                progress(&RolloutEvent::Member(state));
            }
        };
        for ordinal in (0..replicas).filter(|_| observed) {
            let name = spec.pod_name(ordinal);
            if self.reported.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let pod = snap.pods.get(&ordinal);
            let mut state = MemberState::of(spec, ordinal, pod, update_revision.as_deref());
            state.at = self.started.elapsed();
            if pod.is_some_and(|p| member_done(p, update_revision.as_deref())) {
                let took = self.first_seen.get(&name).map(|t| t.elapsed());
                state.took = took;
                state.already = took.is_none() && self.first_look;
                tell(ordinal, state);
                self.reported.push((name, took));
            } else {
                self.first_seen.entry(name).or_insert_with(Instant::now);
                tell(ordinal, state);
            }
        }
        // Members above the wanted count, until they are gone.
        for ordinal in surplus {
            let mut state = match snap.pods.get(&ordinal) {
                Some(pod) => MemberState::of(spec, ordinal, Some(pod), None),
                None => MemberState::of(spec, ordinal, None, None),
            };
            state.step = match (&state.step, snap.pods.contains_key(&ordinal)) {
                (_, false) => MemberStep::Removed,
                (MemberStep::Terminating, true) => MemberStep::Terminating,
                (_, true) => MemberStep::Surplus,
            };
            state.at = self.started.elapsed();
            tell(ordinal, state);
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
        let now_waiting = statefulset_wait(
            spec,
            snap,
            observed,
            self.reported.len() == replicas as usize && !extra_members,
        );
        if now_waiting != self.last_waiting {
            if let Some(w) = &now_waiting {
                progress(&RolloutEvent::Waiting(w.clone()));
            }
            self.last_waiting = now_waiting;
        }
        false
    }
}

/// Which watch a change came from.
enum Change {
    StatefulSet(Box<Option<StatefulSet>>),
    Pod(Box<watcher::Event<Pod>>),
}

/// Waits until the StatefulSet has exactly `replicas` members, all Ready at its current
/// revision, and no member above them. Reports each member's step as it changes (a
/// [`RolloutEvent`]: what a person reads, the pod's full state beside it), and the StatefulSet
/// itself when it holds the rollout up. Fails after `timeout` with the state of the member
/// holding the rollout up.
pub async fn wait_for_rollout(
    client: &Client,
    spec: &ValidSpec,
    replicas: i32,
    timeout: Duration,
    progress: &mut (dyn FnMut(&RolloutEvent) + Send),
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
    let mut state = Judge {
        started: Instant::now(),
        first_seen: BTreeMap::new(),
        reported: Vec::new(),
        last: BTreeMap::new(),
        last_waiting: None,
        first_look: true,
    };
    let mut snap: Option<Snapshot> = None;
    let mut timeline = Timeline::default();
    let mut progress = |event: &RolloutEvent| {
        timeline.record(event);
        progress(event);
    };
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
            if state.judge(spec, current, replicas, &mut progress) {
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
                timeline,
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

/// What a rollout reports while it waits.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutEvent {
    /// A member's step (or its pod's state) changed.
    Member(MemberState),
    /// The StatefulSet itself holds the rollout up, in words.
    Waiting(String),
}

impl std::fmt::Display for RolloutEvent {
    /// The short line a person reads (the pod's full state is in [`MemberState::detail`]).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RolloutEvent::Member(m) => m.fmt(f),
            RolloutEvent::Waiting(w) => write!(f, "waiting: {w}"),
        }
    }
}

/// Where one member of a rollout is.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberState {
    /// The pod name.
    pub name: String,
    /// Its ordinal.
    pub ordinal: i32,
    /// Its step, in a few words.
    pub step: MemberStep,
    /// The node it runs on, once scheduled.
    pub node: Option<String>,
    /// Time from the start of the wait.
    pub at: Duration,
    /// For a Ready member: the time from first seen (not Ready) to Ready.
    pub took: Option<Duration>,
    /// For a Ready member: it was Ready before the wait started.
    pub already: bool,
    /// The pod's whole state (phase, conditions that are not True, containers), for `-v` and
    /// for a failure report; empty when there is no pod.
    pub detail: String,
    /// While the agent copies the master: its latest reading of the copy
    /// ([`annotations::BASE_BACKUP`]); `None` in every other step, or when the value is
    /// malformed.
    pub base_backup: Option<BaseBackupReading>,
}

impl MemberState {
    /// The state of member `ordinal` from its pod (if any) and the StatefulSet's current
    /// revision.
    pub fn of(
        spec: &ClusterSpec,
        ordinal: i32,
        pod: Option<&Pod>,
        update_revision: Option<&str>,
    ) -> MemberState {
        let step = pod.map_or(MemberStep::NotCreated, |p| member_step(p, update_revision));
        MemberState {
            name: spec.pod_name(ordinal),
            ordinal,
            base_backup: pod
                .filter(|_| step == MemberStep::Agent(MemberPhase::BaseBackup))
                .and_then(base_backup_reading),
            step,
            node: pod
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.node_name.clone()),
            at: Duration::ZERO,
            took: None,
            already: false,
            detail: pod.map(describe_pod).unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for MemberState {
    /// `pgset-1: base backup (+12.3s)`; `pgset-1: Ready after 30.2s (+40.1s)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.step)?;
        match (self.step == MemberStep::Ready, self.took, self.already) {
            (true, Some(took), _) => write!(
                f,
                " after {:.1}s (+{:.1}s)",
                took.as_secs_f64(),
                self.at.as_secs_f64()
            ),
            (true, None, true) => write!(f, " (already)"),
            _ => write!(f, " (+{:.1}s)", self.at.as_secs_f64()),
        }
    }
}

/// A member's step, from its agent's phase annotation when it has one, else from its pod's
/// phase and conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberStep {
    /// The controller has not created the pod yet (ordered start: its turn comes).
    NotCreated,
    /// Waiting for a node; the scheduler's reason when it gave one.
    Unscheduled(Option<String>),
    /// On a node; the init container copies the agent.
    Scheduled,
    /// The agent is copied; the containers start.
    AgentCopied,
    /// The agent's own step (its `pgset.io/phase` annotation).
    Agent(MemberPhase),
    /// A container cannot start or keeps failing: the kubelet's reason.
    Stuck(String),
    /// Ready at the current revision.
    Ready,
    /// Ready, but from the previous revision: to be replaced.
    Outdated,
    /// Above the wanted count: to be removed.
    Surplus,
    /// Being deleted.
    Terminating,
    /// Gone (a member above the wanted count).
    Removed,
}

impl std::fmt::Display for MemberStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberStep::NotCreated => f.write_str("not created yet"),
            MemberStep::Unscheduled(None) => f.write_str("waiting for a node"),
            MemberStep::Unscheduled(Some(r)) => write!(f, "waiting for a node ({r})"),
            MemberStep::Scheduled => f.write_str("scheduled, copying the agent"),
            MemberStep::AgentCopied => f.write_str("agent copied, starting"),
            MemberStep::Agent(p) => f.write_str(p.words()),
            MemberStep::Stuck(r) => write!(f, "stuck: {r}"),
            MemberStep::Ready => f.write_str("Ready"),
            MemberStep::Outdated => f.write_str("old revision, to be replaced"),
            MemberStep::Surplus => f.write_str("to be removed"),
            MemberStep::Terminating => f.write_str("terminating"),
            MemberStep::Removed => f.write_str("removed"),
        }
    }
}

/// Turns a line printer into a rollout's progress: one short line per member per step (a
/// change of the pod's detail alone prints nothing), and each wait of the StatefulSet itself.
pub fn step_lines<'a>(
    print: &'a mut (dyn FnMut(&str) + Send),
) -> impl FnMut(&RolloutEvent) + Send + 'a {
    let mut last: BTreeMap<String, MemberStep> = BTreeMap::new();
    move |event: &RolloutEvent| {
        if let RolloutEvent::Member(m) = event {
            if last.get(&m.name) == Some(&m.step) {
                return;
            }
            last.insert(m.name.clone(), m.step.clone());
        }
        print(&event.to_string());
    }
}

/// The agent's reading of its base backup on `pod`, if it carries a well-formed one.
pub fn base_backup_reading(pod: &Pod) -> Option<BaseBackupReading> {
    let text = pod
        .metadata
        .annotations
        .as_ref()?
        .get(annotations::BASE_BACKUP)?;
    BaseBackupReading::parse(text)
}

/// Container waiting reasons that are a normal part of starting.
const STARTING_REASONS: &[&str] = &["ContainerCreating", "PodInitializing"];

/// The step of a member whose pod exists.
pub fn member_step(pod: &Pod, update_revision: Option<&str>) -> MemberStep {
    if pod.metadata.deletion_timestamp.is_some() {
        return MemberStep::Terminating;
    }
    if pod_is_ready(pod) {
        return if member_done(pod, update_revision) {
            MemberStep::Ready
        } else {
            MemberStep::Outdated
        };
    }
    let agent = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::PHASE))
        .and_then(|w| MemberPhase::parse(w));
    if let Some(p @ (MemberPhase::Refused | MemberPhase::Failed)) = agent {
        return MemberStep::Agent(p);
    }
    let status = pod.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .chain(&s.container_statuses)
        })
        .flatten();
    for c in containers {
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(reason) = waiting.and_then(|w| w.reason.as_deref())
            && !STARTING_REASONS.contains(&reason)
        {
            return MemberStep::Stuck(reason.to_string());
        }
        let failed = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0);
        if failed {
            return MemberStep::Stuck(format!("{} exited", c.name));
        }
    }
    if let Some(p) = agent {
        return MemberStep::Agent(p);
    }
    let condition = |type_: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
    };
    match condition("PodScheduled") {
        Some(c) if c.status == "True" => {}
        Some(c) => return MemberStep::Unscheduled(c.reason.clone()),
        None => return MemberStep::Unscheduled(None),
    }
    match condition("Initialized") {
        Some(c) if c.status == "True" => MemberStep::AgentCopied,
        _ => MemberStep::Scheduled,
    }
}

/// What the StatefulSet itself holds the rollout up with, if anything: it does not exist, its
/// controller has not seen the latest spec, or its status has not caught up with members that
/// are all done.
fn statefulset_wait(
    spec: &ClusterSpec,
    snap: &Snapshot,
    observed: bool,
    members_done: bool,
) -> Option<String> {
    let Some(sts) = &snap.statefulset else {
        return Some(format!(
            "StatefulSet {} does not exist",
            spec.statefulset_name()
        ));
    };
    if !observed {
        return Some("the StatefulSet controller has not seen the new spec yet".into());
    }
    members_done.then(|| {
        format!(
            "StatefulSet status catching up ({})",
            statefulset_summary(sts)
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "pgset-1", "annotations": annotations,
                         "labels": {"controller-revision-hash": "r1"}},
            "spec": {"nodeName": "node-a", "containers": []},
            "status": status
        }))
        .unwrap()
    }

    /// The state `kubectl describe` shows while the init container copies the agent.
    fn initialising() -> serde_json::Value {
        json!({
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
                 "message": "containers with incomplete status: [install-agent]"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                 "message": "containers with unready status: [postgres]"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                 "message": "containers with unready status: [postgres]"}
            ],
            "initContainerStatuses": [{"name": "install-agent", "ready": false, "restartCount": 0,
                "image": "a", "imageID": "", "state": {"running": {}}}],
            "containerStatuses": [{"name": "postgres", "ready": false, "restartCount": 0,
                "image": "p", "imageID": "",
                "state": {"waiting": {"reason": "PodInitializing"}}}]
        })
    }

    fn running(ready: bool) -> serde_json::Value {
        json!({
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ],
            "containerStatuses": [{"name": "postgres", "ready": ready, "restartCount": 0,
                "image": "p", "imageID": "", "state": {"running": {}}}]
        })
    }

    #[test]
    fn a_pod_copying_the_agent_is_scheduled_in_few_words_and_its_detail_keeps_the_conditions() {
        let p = pod(json!({}), initialising());
        assert_eq!(member_step(&p, Some("r1")), MemberStep::Scheduled);
        let spec = ClusterSpec::default();
        let state = MemberState::of(&spec, 1, Some(&p), Some("r1"));
        assert_eq!(state.node.as_deref(), Some("node-a"));
        assert_eq!(
            state.to_string(),
            "pgset-1: scheduled, copying the agent (+0.0s)"
        );
        assert!(
            state
                .detail
                .contains("Initialized=False (ContainersNotInitialized")
        );
        assert!(
            state.detail.len() > 120,
            "the dump is the long form: {}",
            state.detail
        );
    }

    #[test]
    fn the_agents_annotation_names_the_step_once_the_agent_runs() {
        let p = pod(json!({"pgset.io/phase": "base-backup"}), running(false));
        assert_eq!(
            member_step(&p, Some("r1")),
            MemberStep::Agent(MemberPhase::BaseBackup)
        );
        let p = pod(json!({}), running(false));
        assert_eq!(member_step(&p, Some("r1")), MemberStep::AgentCopied);
        // A word this release does not know is not guessed at.
        let p = pod(json!({"pgset.io/phase": "warp-drive"}), running(false));
        assert_eq!(member_step(&p, Some("r1")), MemberStep::AgentCopied);
        let p = pod(json!({"pgset.io/phase": "streaming"}), running(true));
        assert_eq!(member_step(&p, Some("r1")), MemberStep::Ready);
        assert_eq!(member_step(&p, Some("r2")), MemberStep::Outdated);
    }

    #[test]
    fn a_base_backup_reading_is_carried_while_the_agent_copies_and_a_malformed_one_is_none() {
        let spec = ClusterSpec::default();
        let reading = r#"{"bytes":190840832,"total":429916160,"atMs":1796002802512}"#;
        let p = pod(
            json!({"pgset.io/phase": "base-backup", "pgset.io/base-backup": reading}),
            running(false),
        );
        let state = MemberState::of(&spec, 1, Some(&p), None);
        assert_eq!(state.step, MemberStep::Agent(MemberPhase::BaseBackup));
        assert_eq!(
            state.base_backup,
            Some(BaseBackupReading {
                bytes: 190_840_832,
                total: Some(429_916_160),
                at_ms: 1_796_002_802_512
            })
        );
        let without_total = pod(
            json!({"pgset.io/phase": "base-backup",
                   "pgset.io/base-backup": r#"{"bytes":5,"atMs":7}"#}),
            running(false),
        );
        assert_eq!(
            MemberState::of(&spec, 1, Some(&without_total), None).base_backup,
            Some(BaseBackupReading {
                bytes: 5,
                total: None,
                at_ms: 7
            })
        );
        for bad in [
            "182 MB",
            r#"{"bytes":-5,"atMs":7}"#,
            r#"{"bytes":5}"#,
            r#"{"bytes":"5","atMs":7}"#,
            "",
        ] {
            let p = pod(
                json!({"pgset.io/phase": "base-backup", "pgset.io/base-backup": bad}),
                running(false),
            );
            let state = MemberState::of(&spec, 1, Some(&p), None);
            assert_eq!(
                state.step,
                MemberStep::Agent(MemberPhase::BaseBackup),
                "a bad reading leaves the step alone"
            );
            assert_eq!(state.base_backup, None, "{bad:?}");
        }
        // Another step: a reading left on the pod is not shown.
        let p = pod(
            json!({"pgset.io/phase": "starting", "pgset.io/base-backup": reading}),
            running(false),
        );
        assert_eq!(MemberState::of(&spec, 1, Some(&p), None).base_backup, None);
        assert_eq!(MemberState::of(&spec, 1, None, None).base_backup, None);
    }

    #[test]
    fn a_failing_container_is_stuck_unless_the_agent_said_it_refused() {
        let mut status = running(false);
        status["containerStatuses"][0]["state"] =
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}});
        let p = pod(json!({"pgset.io/phase": "starting"}), status.clone());
        assert_eq!(
            member_step(&p, Some("r1")),
            MemberStep::Stuck("CrashLoopBackOff".into())
        );
        let p = pod(json!({"pgset.io/phase": "refused"}), status);
        assert_eq!(
            member_step(&p, Some("r1")),
            MemberStep::Agent(MemberPhase::Refused)
        );
    }

    #[test]
    fn an_unscheduled_pod_says_it_waits_for_a_node() {
        let p = pod(
            json!({}),
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                   "reason": "Unschedulable", "message": "0/3 nodes are available: 3 node(s) had untolerated taint"}]}),
        );
        assert_eq!(
            member_step(&p, None),
            MemberStep::Unscheduled(Some("Unschedulable".into()))
        );
    }

    #[test]
    fn step_lines_print_one_line_per_member_per_step() {
        let spec = ClusterSpec::default();
        let mut printed = Vec::new();
        let mut print = |l: &str| printed.push(l.to_string());
        {
            let mut lines = step_lines(&mut print);
            let mut a = MemberState::of(&spec, 1, Some(&pod(json!({}), initialising())), None);
            lines(&RolloutEvent::Member(a.clone()));
            a.detail.push_str("; changed detail");
            a.at = Duration::from_secs(3);
            lines(&RolloutEvent::Member(a.clone()));
            a.step = MemberStep::AgentCopied;
            lines(&RolloutEvent::Member(a));
            lines(&RolloutEvent::Waiting(
                "StatefulSet pgset does not exist".into(),
            ));
        }
        assert_eq!(
            printed,
            [
                "pgset-1: scheduled, copying the agent (+0.0s)",
                "pgset-1: agent copied, starting (+3.0s)",
                "waiting: StatefulSet pgset does not exist"
            ]
        );
    }
}
