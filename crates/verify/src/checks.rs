//! The verdicts of the checks, decided purely from what was read from the API and printed by the
//! commands run in the pods. No I/O here: [`crate::live`] gathers the inputs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use pgset_deploy::master::{LeaderLease, MasterView, PodSeen, find_master};
use pgset_spec::{ClusterSpec, contract, ordinal_of};

use crate::exec::ExecOutput;
use crate::report::{Finding, Measurements};
use crate::sql::{self, MarkerSighting, PathStat, ReplicationRow};

/// The stable names of the checks (the JSON contract), in the order they run.
pub mod names {
    /// 1: pods Running and Ready, created in ordinal order.
    pub const PODS: &str = "pods-ready-in-order";
    /// 2: per-pod DNS names and the headless Service's endpoints.
    pub const DNS: &str = "dns-and-endpoints";
    /// 3: the master and replica Services select the right pods.
    pub const ROLE_SERVICES: &str = "role-services";
    /// After 3: the leader Lease's holder (else ordinal 0), the one pod labelled `role=master`
    /// and the one ready endpoint of the master Service are the same member.
    pub const ONE_MASTER: &str = "one-master";
    /// 4: the master streams to every replica.
    pub const STREAMING: &str = "streaming";
    /// 5: writes through the replica Service fail read-only; reads work.
    pub const REPLICA_READ_ONLY: &str = "replica-read-only";
    /// 6: a row written through the master Service is read on every replica.
    pub const REPLICATED_WRITE: &str = "replicated-write";
    /// 7: each member's data in its own directory or claim.
    pub const STORAGE: &str = "storage";
    /// After 7: the member isolation policy and its binding are as pgset renders them (skipped,
    /// with a warning, where the API server does not serve them).
    pub const MEMBER_ISOLATION: &str = "member-isolation";
    /// After member-isolation: TLS 1.3 served and required, the server certificate's names and
    /// end, pg_hba hostssl only with replication by certificate (skipped with `tls.mode: off`).
    pub const TLS: &str = "tls";
    /// 8: scale to N+1 and back (`--scale-test`).
    pub const SCALE_OUT: &str = "scale-out";
    /// 9: delete the master pod and watch it come back (`--disruptive`).
    pub const MASTER_RECOVERY: &str = "master-recovery";
    /// Every check, in order.
    pub const ALL: [&str; 12] = [
        PODS,
        DNS,
        ROLE_SERVICES,
        ONE_MASTER,
        STREAMING,
        REPLICA_READ_ONLY,
        REPLICATED_WRITE,
        STORAGE,
        MEMBER_ISOLATION,
        TLS,
        SCALE_OUT,
        MASTER_RECOVERY,
    ];
}

/// What verify needs to know of a member pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Member {
    /// Pod name.
    pub name: String,
    /// Ordinal parsed from the name.
    pub ordinal: Option<i32>,
    /// Pod uid (changes when the pod is recreated).
    pub uid: String,
    /// `status.phase`.
    pub phase: String,
    /// The `Ready` condition is true.
    pub ready: bool,
    /// When the `Ready` condition last changed.
    pub ready_since: Option<Timestamp>,
    /// Being deleted.
    pub terminating: bool,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// `status.podIP`.
    pub ip: Option<String>,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// Restarts of all containers.
    pub restarts: i32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Claims mounted by the pod.
    pub claims: Vec<String>,
    /// The container to exec into.
    pub container: Option<String>,
    /// What the member's agent said when it stopped, while it is down: the postgres
    /// container's termination message (its first line; a refusal names the directory, whose
    /// it is and the fix) when the container is terminated now, or waits to be restarted, or
    /// runs again but is not Ready yet. `None` for a container that runs and is Ready.
    pub stopped_with: Option<String>,
    /// The exit code that message came with (the agent exits 2 when it refuses a data
    /// directory or finds the member fenced elsewhere).
    pub stopped_exit: Option<i32>,
    /// The postgres container's previous exit (`lastState.terminated`), shown as history.
    pub last_exit: Option<LastExit>,
    /// Each container's and init container's image, by container name.
    pub images: BTreeMap<String, String>,
}

impl Member {
    /// Reads a pod.
    pub fn from_pod(pod: &Pod) -> Member {
        let meta = &pod.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let spec = pod.spec.as_ref();
        let ready = pgset_deploy::readiness::pod_ready_condition(pod);
        Member {
            ordinal: ordinal_of(&name),
            name,
            uid: meta.uid.clone().unwrap_or_default(),
            phase: status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Unknown".into()),
            ready: ready.is_some_and(|c| c.status == "True"),
            ready_since: ready.and_then(|c| c.last_transition_time.as_ref().map(|t| t.0)),
            terminating: meta.deletion_timestamp.is_some(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            ip: status.and_then(|s| s.pod_ip.clone()),
            node: spec.and_then(|s| s.node_name.clone()),
            restarts: status
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0),
            labels: meta.labels.clone().unwrap_or_default(),
            claims: spec
                .and_then(|s| s.volumes.as_ref())
                .map(|vs| {
                    vs.iter()
                        .filter_map(|v| {
                            Some(v.persistent_volume_claim.as_ref()?.claim_name.clone())
                        })
                        .collect()
                })
                .unwrap_or_default(),
            container: crate::exec::container_of(pod),
            stopped_with: termination_message(pod).map(|(message, _)| message),
            stopped_exit: termination_message(pod).map(|(_, code)| code),
            last_exit: last_exit(pod),
            images: spec
                .map(|s| {
                    s.init_containers
                        .iter()
                        .flatten()
                        .chain(&s.containers)
                        .filter_map(|c| Some((c.name.clone(), c.image.clone()?)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The role label the agent set, if any.
    pub fn role(&self) -> Option<&str> {
        self.labels.get(contract::labels::ROLE).map(String::as_str)
    }
}

pub use pgset_spec::status::{REASON_MAX_CHARS, one_line_reason};

/// A container's previous exit, as history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastExit {
    /// When it ended (`finishedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Its exit code.
    pub exit_code: i32,
    /// The first line of its termination message (bounded), or the kubelet's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LastExit {
    /// In words: `exit code 137 at 2026-…: reason`.
    pub fn describe(&self) -> String {
        let mut s = format!("exit code {}", self.exit_code);
        if let Some(at) = &self.finished_at {
            s += &format!(" at {at}");
        }
        if let Some(r) = &self.reason {
            s += &format!(": {r}");
        }
        s
    }
}

fn postgres_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    let container = crate::exec::container_of(pod)?;
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)
}

/// The postgres container's previous exit (`lastState.terminated`), whatever its code.
pub fn last_exit(pod: &Pod) -> Option<LastExit> {
    let t = postgres_status(pod)?
        .last_state
        .as_ref()?
        .terminated
        .as_ref()?;
    Some(LastExit {
        finished_at: t.finished_at.as_ref().map(|f| f.0.to_string()),
        exit_code: t.exit_code,
        reason: t
            .message
            .as_deref()
            .and_then(one_line_reason)
            .or_else(|| t.reason.clone()),
    })
}

/// What the postgres container stopped with while it is down, with the exit code: the message
/// of its current state when it is terminated; else, while it waits to be restarted or runs
/// again without being Ready yet (a crash-looping member is between two restarts), of its last
/// termination. A container that runs and is Ready has not stopped, whatever it exited with
/// before (that is [`last_exit`]). The message is its first line, bounded
/// ([`one_line_reason`]).
pub fn termination_message(pod: &Pod) -> Option<(String, i32)> {
    let status = postgres_status(pod)?;
    let of = |s: Option<&k8s_openapi::api::core::v1::ContainerState>| {
        s.and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
            .and_then(|t| Some((one_line_reason(t.message.as_deref()?)?, t.exit_code)))
    };
    let running = status.state.as_ref().is_some_and(|s| s.running.is_some());
    if running && status.ready {
        return None;
    }
    of(status.state.as_ref()).or_else(|| of(status.last_state.as_ref()))
}

/// Members sorted by ordinal (pods without one last, by name).
pub fn sorted(mut members: Vec<Member>) -> Vec<Member> {
    members.sort_by(|a, b| {
        (a.ordinal.is_none(), a.ordinal, &a.name).cmp(&(b.ordinal.is_none(), b.ordinal, &b.name))
    });
    members
}

fn names_of<'a>(members: impl IntoIterator<Item = &'a Member>) -> Vec<&'a str> {
    members.into_iter().map(|m| m.name.as_str()).collect()
}

/// The replicas' pod names the spec expects: every member but the master.
pub fn expected_replicas(spec: &ClusterSpec, master: &str) -> Vec<String> {
    (0..spec.replicas)
        .map(|i| spec.pod_name(i))
        .filter(|n| n != master)
        .collect()
}

/// The pod verify connects through a Service from: the first replica, else (one member) the
/// master itself. A connection to a Service that leads back to the pod it came from may arrive
/// from the node's address, which pg_hba does not admit the replication role from.
pub fn service_client_pod(spec: &ClusterSpec, master: &str) -> String {
    expected_replicas(spec, master)
        .into_iter()
        .next()
        .unwrap_or_else(|| master.to_string())
}

/// The master as the leader Lease (else ordinal 0) and the pods' labels say (pure): see
/// [`pgset_deploy::master::find_master`]. `now` only dates the Lease's last renewal.
pub fn master_view(
    spec: &ClusterSpec,
    leader: Option<&LeaderLease>,
    members: &[Member],
    now: Timestamp,
) -> MasterView {
    let pods: Vec<PodSeen> = members
        .iter()
        .map(|m| PodSeen {
            name: m.name.clone(),
            uid: m.uid.clone(),
            role: m.role().map(String::from),
            terminating: m.terminating,
            ..PodSeen::default()
        })
        .collect();
    find_master(spec, leader, &pods, now)
}

/// The one-master check: the leader Lease's holder (else, with no Lease, ordinal 0), the one pod
/// labelled `role=master` and the one ready endpoint of Service `<name>-master` are the same
/// member. Every disagreement fails it; none is resolved.
pub fn one_master(spec: &ClusterSpec, view: &MasterView, master_endpoints: &[Endpoint]) -> Finding {
    let mut problems = view.problems.clone();
    let service = spec.master_service_name();
    let mut routed: Vec<&str> = master_endpoints
        .iter()
        .filter(|e| e.ready)
        .filter_map(|e| e.pod.as_deref())
        .collect();
    routed.sort_unstable();
    routed.dedup();
    let Some(master) = &view.master else {
        return Finding::from_problems(problems, String::new());
    };
    if view.labelled.is_empty() {
        problems.push(format!(
            "no pod is labelled {}={}, {master} should be",
            contract::labels::ROLE,
            contract::roles::MASTER
        ));
    }
    if routed != [master.as_str()] {
        problems.push(format!(
            "Service {service} routes to {routed:?}, not to the master {master}"
        ));
    }
    let source = match &view.leader {
        Some(l) => format!(
            "the leader record {}{}",
            l.name,
            l.timeline
                .map(|t| format!(" (timeline {t})"))
                .unwrap_or_default()
        ),
        None => "ordinal 0 (no leader record)".to_string(),
    };
    Finding::from_problems(
        problems,
        format!(
            "{master} is the master: {source}, the label {}={} and Service {service} agree",
            contract::labels::ROLE,
            contract::roles::MASTER
        ),
    )
}

/// Check 1: pods `<name>-0..N-1` exist, Running and Ready, none extra, the StatefulSet has the
/// spec's `podManagementPolicy`, and under `OrderedReady` they were created in ordinal order. A pod created after a higher ordinal was
/// recreated in place (deleted, then restored by the StatefulSet); that is noted, not failed.
pub fn pods_ready_in_order(
    spec: &ClusterSpec,
    members: &[Member],
    pod_management_policy: Option<&str>,
) -> Finding {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let by_name: BTreeMap<&str, &Member> = members.iter().map(|m| (m.name.as_str(), m)).collect();
    let policy = pod_management_policy.unwrap_or("OrderedReady");
    let wanted = spec.pod_management_policy.as_str();
    if policy != wanted {
        problems.push(format!(
            "podManagementPolicy is {policy}, not the spec's {wanted}: apply the spec again \
             (`{} deploy` recreates what it must)",
            pgset_spec::contract::program_name()
        ));
    }
    let ordered = wanted == pgset_spec::PodManagementPolicy::OrderedReady.as_str();
    let mut expected = Vec::new();
    for i in 0..spec.replicas {
        let name = spec.pod_name(i);
        match by_name.get(name.as_str()) {
            None => problems.push(format!("{name} missing")),
            Some(m) => {
                if m.terminating {
                    problems.push(format!("{name} terminating"));
                } else if m.phase != "Running" {
                    problems.push(format!("{name} is {}", m.phase));
                } else if !m.ready {
                    problems.push(format!("{name} not Ready"));
                }
                expected.push(*m);
            }
        }
    }
    for m in members {
        if !m.ordinal.is_some_and(|o| (0..spec.replicas).contains(&o)) {
            problems.push(format!(
                "unexpected pod {} (the spec has {} members)",
                m.name, spec.replicas
            ));
        }
    }
    // Under Parallel the members start together by design: only the order of OrderedReady is
    // judged.
    for pair in expected.windows(2).filter(|_| ordered) {
        let (before, after) = (pair[0], pair[1]);
        if before.ordinal.map(|o| o + 1) != after.ordinal {
            continue;
        }
        match (before.created, after.created) {
            (Some(a), Some(b)) if b > a => {}
            (Some(a), Some(b)) if b == a => problems.push(format!(
                "{} and {} created in the same second: not started one after the other",
                before.name, after.name
            )),
            (Some(_), Some(_)) => notes.push(format!("{} recreated later", before.name)),
            _ => problems.push(format!(
                "no creationTimestamp on {} or {}",
                before.name, after.name
            )),
        }
    }
    let mut ok = if ordered {
        format!(
            "{} pods Running and Ready, created in ordinal order",
            spec.replicas
        )
    } else {
        format!(
            "{} pods Running and Ready, started in parallel (podManagementPolicy Parallel)",
            spec.replicas
        )
    };
    if !notes.is_empty() {
        ok.push_str(&format!(" ({})", notes.join(", ")));
    }
    Finding::from_problems(problems, ok)
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod it targets.
    pub pod: Option<String>,
    /// Its addresses.
    pub addresses: Vec<String>,
    /// `conditions.ready` (unset means ready).
    pub ready: bool,
}

/// The endpoints listed by a Service's EndpointSlices.
pub fn endpoints(slices: &[EndpointSlice]) -> Vec<Endpoint> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| Endpoint {
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone()),
            addresses: e.addresses.clone(),
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        })
        .collect()
}

/// Check 2: each pod's stable name resolves (inside a pod) to that pod's IP, and the headless
/// Service's endpoints list every pod with its IP. `resolved` holds, per pod name, the output of
/// `getent hosts <fqdn>` run in a member pod, or why it could not be run.
pub fn dns_and_endpoints(
    spec: &ClusterSpec,
    members: &[Member],
    resolved: &BTreeMap<String, Result<ExecOutput, String>>,
    headless: &[Endpoint],
) -> Finding {
    let mut problems = Vec::new();
    for i in 0..spec.replicas {
        let name = spec.pod_name(i);
        let fqdn = spec.pod_fqdn(i);
        let Some(member) = members.iter().find(|m| m.name == name) else {
            problems.push(format!("{name} missing"));
            continue;
        };
        let Some(ip) = member.ip.as_deref() else {
            problems.push(format!("{name} has no IP"));
            continue;
        };
        match resolved.get(&name) {
            None => problems.push(format!("{fqdn} not looked up")),
            Some(Err(e)) => problems.push(format!("{fqdn}: {e}")),
            Some(Ok(out)) if !out.success() => problems.push(format!(
                "{fqdn} does not resolve (getent exit {})",
                out.exit_code
            )),
            Some(Ok(out)) => {
                let addrs = sql::parse_getent_hosts(&out.stdout);
                if !addrs.contains(&ip) {
                    problems.push(format!("{fqdn} resolves to {addrs:?}, not {ip}"));
                }
            }
        }
        match headless
            .iter()
            .find(|e| e.pod.as_deref() == Some(name.as_str()))
        {
            None => problems.push(format!(
                "{name} not in the endpoints of Service {}",
                spec.headless_service_name()
            )),
            Some(e) if !e.addresses.iter().any(|a| a == ip) => problems.push(format!(
                "endpoint of {name} has {:?}, not {ip}",
                e.addresses
            )),
            Some(_) => {}
        }
    }
    Finding::from_problems(
        problems,
        format!(
            "{} stable names resolve to their pods' IPs; Service {} lists every pod",
            spec.replicas,
            spec.headless_service_name()
        ),
    )
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Check 3: Service `<name>-master` selects exactly the master (the leader Lease's holder, else
/// ordinal 0) and `<name>-replica` exactly the others, both by their selectors over the pods'
/// labels (set by the agent) and by their ready endpoints.
pub fn role_services(
    spec: &ClusterSpec,
    members: &[Member],
    master_pod: &str,
    master: Option<&Service>,
    master_endpoints: &[Endpoint],
    replica: Option<&Service>,
    replica_endpoints: &[Endpoint],
) -> Finding {
    let mut problems = Vec::new();
    let expect_master = vec![master_pod.to_string()];
    let expect_replicas = expected_replicas(spec, master_pod);
    let services = [
        (
            spec.master_service_name(),
            master,
            master_endpoints,
            &expect_master,
            contract::roles::MASTER,
        ),
        (
            spec.replica_service_name(),
            replica,
            replica_endpoints,
            &expect_replicas,
            contract::roles::REPLICA,
        ),
    ];
    for (svc_name, svc, eps, expected, role) in services {
        let Some(svc) = svc else {
            problems.push(format!("Service {svc_name} missing"));
            continue;
        };
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if selector.get(contract::labels::ROLE).map(String::as_str) != Some(role) {
            problems.push(format!(
                "Service {svc_name} does not select {}={role}",
                contract::labels::ROLE
            ));
        }
        let mut selected: Vec<&str> = names_of(
            members
                .iter()
                .filter(|m| !m.terminating && selects(&selector, &m.labels)),
        );
        selected.sort_unstable();
        let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
        want.sort_unstable();
        if selected != want {
            problems.push(format!(
                "Service {svc_name} selects {selected:?}, expected {want:?}"
            ));
        }
        let mut ready: Vec<&str> = eps
            .iter()
            .filter(|e| e.ready)
            .filter_map(|e| e.pod.as_deref())
            .collect();
        ready.sort_unstable();
        ready.dedup();
        if ready != want {
            problems.push(format!(
                "Service {svc_name} has ready endpoints {ready:?}, expected {want:?}"
            ));
        }
    }
    Finding::from_problems(
        problems,
        format!(
            "{} selects {}; {} selects {} replica(s)",
            spec.master_service_name(),
            master_pod,
            spec.replica_service_name(),
            expect_replicas.len()
        ),
    )
}

/// Largest replay lag among the rows (ms).
pub fn max_replay_lag_ms(rows: &[ReplicationRow]) -> Option<f64> {
    rows.iter().filter_map(|r| r.replay_lag_ms).reduce(f64::max)
}

/// Check 4: `pg_stat_replication` on the master has exactly one `streaming` row per expected
/// replica (by `application_name`) and no others.
pub fn streaming(expected: &[String], rows: &[ReplicationRow]) -> Finding {
    let mut problems = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        *counts.entry(r.application_name.as_str()).or_default() += 1;
    }
    for name in expected {
        let mine: Vec<&ReplicationRow> = rows
            .iter()
            .filter(|r| &r.application_name == name)
            .collect();
        match mine.as_slice() {
            [] => problems.push(format!("{name} not in pg_stat_replication")),
            [r] if !r.is_streaming() => problems.push(format!("{name} is {}", r.state)),
            [_] => {}
            many => problems.push(format!("{name} has {} walsenders", many.len())),
        }
    }
    for name in counts.keys() {
        if !expected.iter().any(|e| e == name) {
            problems.push(format!("unexpected walsender {name:?}"));
        }
    }
    let lag = max_replay_lag_ms(rows);
    let lag_text = lag.map_or("no recent lag sample (idle)".to_string(), |l| {
        format!("replay_lag ≤ {l:.1} ms")
    });
    Finding::from_problems(
        problems,
        format!(
            "{} of {} replicas streaming; {lag_text}",
            expected.len(),
            expected.len()
        ),
    )
    .with(Measurements {
        replay_lag_ms: lag,
        ..Measurements::default()
    })
}

/// What check 9 saw of the replicas after the master pod was Ready again.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejoin {
    /// Every replica was seen streaming this long after the master was seen Ready.
    Streaming(Duration),
    /// Not every replica streamed within the wait; `last` is the last streaming finding.
    NotStreaming {
        /// How long it waited after the master was seen Ready.
        waited: Duration,
        /// What the last look at `pg_stat_replication` found.
        last: String,
    },
}

impl Rejoin {
    /// The time measured: until streaming, or the whole wait when it never came.
    pub fn seconds(&self) -> f64 {
        match self {
            Rejoin::Streaming(t) | Rejoin::NotStreaming { waited: t, .. } => t.as_secs_f64(),
        }
    }
}

/// Check 9's verdict: the master came back (in `recovery` from its deletion) with its data
/// (`problems` holds what else went wrong), and every replica streamed again within `max_rejoin`
/// of the master being Ready. The rejoin time is in the message and the measurements either way.
pub fn master_recovery(
    master: &str,
    recovery: Duration,
    rejoin: &Rejoin,
    max_rejoin: Duration,
    mut problems: Vec<String>,
) -> Finding {
    let bound = max_rejoin.as_secs_f64();
    let rejoin_s = rejoin.seconds();
    let rejoin_text = match rejoin {
        Rejoin::Streaming(t) if *t <= max_rejoin => {
            format!("replicas streaming {rejoin_s:.1}s after it was Ready (bound {bound}s)")
        }
        Rejoin::Streaming(_) => {
            let text = format!(
                "replicas streamed again only {rejoin_s:.1}s after {master} was Ready: over the bound of {bound}s (--max-rejoin-seconds)"
            );
            problems.insert(0, text.clone());
            text
        }
        Rejoin::NotStreaming { last, .. } => {
            let text = format!(
                "replicas not all streaming {rejoin_s:.1}s after {master} was Ready (bound {bound}s): {last}"
            );
            problems.insert(0, text.clone());
            text
        }
    };
    let recovery_s = recovery.as_secs_f64();
    let finding = if problems.is_empty() {
        Finding::pass(format!(
            "{master} back Ready as a new pod in {recovery_s:.1}s with its data; {rejoin_text}; Services follow the roles"
        ))
    } else if problems[0] == rejoin_text {
        Finding::fail(problems.join("; "))
    } else {
        // Another problem: still say how long the replicas took.
        Finding::fail(format!("{}; {rejoin_text}", problems.join("; ")))
    };
    finding.with(Measurements {
        recovery_s: Some(recovery_s),
        rejoin_s: Some(rejoin_s),
        streaming_resumed_s: Some(recovery_s + rejoin_s),
        ..Measurements::default()
    })
}

/// Check 5: through the replica Service, the write failed with SQLSTATE 25006 and the read
/// answered from a server in recovery.
pub fn replica_read_only(write: &ExecOutput, read: &ExecOutput) -> Finding {
    let mut problems = Vec::new();
    if write.success() {
        problems.push("create table through the replica Service succeeded".to_string());
    } else {
        match sql::sqlstate(&write.stderr) {
            Some(sql::SQLSTATE_READ_ONLY) => {}
            Some(other) => problems.push(format!(
                "write failed with SQLSTATE {other}, not {}: {}",
                sql::SQLSTATE_READ_ONLY,
                write.failure_summary()
            )),
            None => problems.push(format!(
                "write failed without a SQLSTATE: {}",
                write.failure_summary()
            )),
        }
    }
    if !read.success() {
        problems.push(format!("read failed: {}", read.failure_summary()));
    } else {
        match sql::parse_bool(&read.stdout) {
            Ok(true) => {}
            Ok(false) => problems.push("the read was answered by a primary".into()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    Finding::from_problems(
        problems,
        format!(
            "write refused with SQLSTATE {} (read-only); read answered by a standby",
            sql::SQLSTATE_READ_ONLY
        ),
    )
}

/// Check 6: the marker insert through the master Service succeeded and every replica saw the row.
/// `lag_ms` is the slowest replica's delay from the master's clock at the insert to its own clock
/// at first sight; a replica that saw it on the first poll only bounds the lag from above.
pub fn replicated_write(
    token: &str,
    insert: &ExecOutput,
    sightings: &BTreeMap<String, Result<ExecOutput, String>>,
) -> Finding {
    if !insert.success() {
        return Finding::fail(format!(
            "insert through the master Service failed: {}",
            insert.failure_summary()
        ));
    }
    if insert.stdout.trim() != token {
        return Finding::fail(format!(
            "insert printed {:?}, expected the token {token}",
            insert.stdout.trim()
        ));
    }
    let mut problems = Vec::new();
    let mut seen: Vec<(&str, MarkerSighting)> = Vec::new();
    for (pod, result) in sightings {
        match result {
            Err(e) => problems.push(format!("{pod}: {e}")),
            Ok(out) if !out.success() => problems.push(format!("{pod}: {}", out.failure_summary())),
            Ok(out) => match sql::parse_marker_sighting(&out.stdout) {
                Ok(s) if s.token == token => seen.push((pod, s)),
                Ok(s) => problems.push(format!("{pod} saw token {}", s.token)),
                Err(e) => problems.push(format!("{pod}: {e}")),
            },
        }
    }
    if !problems.is_empty() {
        return Finding::fail(problems.join("; "));
    }
    let lag = seen
        .iter()
        .map(|(_, s)| s.after_ms.max(0.0))
        .reduce(f64::max);
    let upper_bound: Vec<&str> = seen
        .iter()
        .filter(|(_, s)| s.polls <= 1)
        .map(|(p, _)| *p)
        .collect();
    let skew: Vec<&str> = seen
        .iter()
        .filter(|(_, s)| s.after_ms < 0.0)
        .map(|(p, _)| *p)
        .collect();
    let mut message = format!("marker row read on {} replica(s)", seen.len());
    if let Some(l) = lag {
        message.push_str(&format!("; lag {l:.1} ms"));
    }
    if !upper_bound.is_empty() {
        message.push_str(&format!(
            " (upper bound: already visible on first poll on {})",
            upper_bound.join(", ")
        ));
    }
    if !skew.is_empty() {
        message.push_str(&format!(
            " (clock of {} behind the master's)",
            skew.join(", ")
        ));
    }
    Finding::pass(message).with(Measurements {
        lag_ms: lag,
        ..Measurements::default()
    })
}

/// What verify saw of one member's storage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberStorage {
    /// `show data_directory` of its running postgres.
    pub data_directory: Option<Result<String, String>>,
    /// `stat` of its data directory and `PG_VERSION` in it.
    pub stat: Option<Result<Vec<PathStat>, String>>,
    /// Templates mode: its claim's name, phase and volume.
    pub claim: Option<ClaimState>,
}

/// A claim as read from the API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimState {
    /// Claim name.
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// `spec.volumeName`.
    pub volume: Option<String>,
}

impl ClaimState {
    /// Reads a claim.
    pub fn from_claim(pvc: &PersistentVolumeClaim) -> ClaimState {
        ClaimState {
            name: pvc.metadata.name.clone().unwrap_or_default(),
            phase: pvc
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            volume: pvc.spec.as_ref().and_then(|s| s.volume_name.clone()),
        }
    }
}

/// Where a member's data must be, as seen inside the pod: `<DATA_MOUNT>/<pod>`.
pub fn data_dir_in_pod(pod: &str) -> String {
    format!("{}/{pod}", contract::DATA_MOUNT)
}

/// Check 7: each member's postgres runs on its own `<root>/<pod>` directory, owned by the
/// postgres uid with mode 0700 or 0750 and holding `PG_VERSION`; in templates mode each member
/// also mounts its own Bound claim `data-<pod>` on a volume no other member uses. `data_root` is
/// where the directories were stat'ed (the pod's mount, or the export on the NFS host).
pub fn storage(
    spec: &ClusterSpec,
    members: &[Member],
    seen: &BTreeMap<String, MemberStorage>,
    data_root: &str,
) -> Finding {
    let mut problems = Vec::new();
    let mut volumes: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..spec.replicas {
        let pod = spec.pod_name(i);
        let Some(s) = seen.get(&pod) else {
            problems.push(format!("{pod}: storage not inspected"));
            continue;
        };
        match &s.data_directory {
            Some(Ok(dir)) if *dir == data_dir_in_pod(&pod) => {}
            Some(Ok(dir)) => problems.push(format!(
                "{pod} runs on {dir}, not {}",
                data_dir_in_pod(&pod)
            )),
            Some(Err(e)) => problems.push(format!("{pod}: data_directory: {e}")),
            None => {}
        }
        let dir = format!("{data_root}/{pod}");
        match &s.stat {
            Some(Ok(stats)) => {
                match stats.iter().find(|st| st.path == dir) {
                    None => problems.push(format!("{dir} missing")),
                    Some(st) => {
                        if st.kind != "directory" {
                            problems.push(format!("{dir} is a {}", st.kind));
                        }
                        if st.uid != spec.postgres.uid {
                            problems.push(format!(
                                "{dir} owned by uid {}, not {}",
                                st.uid, spec.postgres.uid
                            ));
                        }
                        if st.mode != 0o700 && st.mode != 0o750 {
                            problems.push(format!("{dir} has mode {:o}, not 700/750", st.mode));
                        }
                    }
                }
                if !stats
                    .iter()
                    .any(|st| st.path == format!("{dir}/PG_VERSION"))
                {
                    problems.push(format!("{dir}/PG_VERSION missing"));
                }
            }
            Some(Err(e)) => problems.push(format!("{pod}: {e}")),
            None => problems.push(format!("{pod}: {dir} not inspected")),
        }
        if spec.storage.mode == pgset_spec::StorageMode::Shared {
            let shared = spec.shared_claim_name();
            let mounted = members
                .iter()
                .find(|m| m.name == pod)
                .is_some_and(|m| m.claims.contains(&shared));
            if !mounted {
                problems.push(format!("{pod} does not mount claim {shared}"));
            }
        }
        if spec.storage.mode == pgset_spec::StorageMode::Templates {
            let want = spec.member_claim_name(i);
            match &s.claim {
                None => problems.push(format!("claim {want} missing")),
                Some(c) => {
                    if c.phase != "Bound" {
                        problems.push(format!("claim {} is {}", c.name, c.phase));
                    }
                    if let Some(v) = &c.volume
                        && let Some(other) = volumes.insert(v.clone(), pod.clone())
                    {
                        problems.push(format!("{pod} and {other} share volume {v}"));
                    }
                }
            }
            let mounted = members
                .iter()
                .find(|m| m.name == pod)
                .is_some_and(|m| m.claims.contains(&want));
            if !mounted {
                problems.push(format!("{pod} does not mount claim {want}"));
            }
        }
    }
    let how = match spec.storage.mode {
        pgset_spec::StorageMode::Shared => format!(
            "each member in its own directory {data_root}/<pod> on claim {}",
            spec.shared_claim_name()
        ),
        pgset_spec::StorageMode::Templates => {
            "each member in its own directory on its own Bound claim data-<pod>".to_string()
        }
    };
    Finding::from_problems(problems, how)
}

/// Check 8's order, on the API server's clock (second resolution): the new member was created
/// no earlier than each other member last became Ready, and they are all still Ready.
pub fn started_after_ready(new: &Member, others: &[Member]) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(created) = new.created else {
        return vec![format!("{} has no creationTimestamp", new.name)];
    };
    for m in others.iter().filter(|m| m.name != new.name) {
        match (m.ready, m.ready_since) {
            (false, _) => problems.push(format!("{} not Ready", m.name)),
            (true, Some(since)) if since.as_second() > created.as_second() => problems.push(
                format!("{} became Ready after {} was created", m.name, new.name),
            ),
            (true, _) => {}
        }
    }
    problems
}

/// Check member-isolation: where the API server serves ValidatingAdmissionPolicy (`served`),
/// the policy and its binding as read (`None` when absent) hold every field pgset renders for
/// `spec`. Where it does not, the check is skipped and says why (the caller adds the warning).
pub fn member_isolation(
    spec: &ClusterSpec,
    served: bool,
    policy: Option<&ValidatingAdmissionPolicy>,
    binding: Option<&ValidatingAdmissionPolicyBinding>,
) -> Finding {
    use pgset_deploy::isolation;
    if !served {
        return Finding::skipped(isolation::not_enforced(spec));
    }
    let name = isolation::policy_name(spec);
    let deploy = format!("run `{} deploy`", contract::program_name());
    let mut problems = Vec::new();
    match policy {
        None => problems.push(format!(
            "ValidatingAdmissionPolicy {name} is missing: every member's token may act as any member; {deploy}"
        )),
        Some(found) => problems.extend(
            isolation::drift(&isolation::policy(spec), found)
                .into_iter()
                .map(|d| format!("ValidatingAdmissionPolicy {name}: {d}")),
        ),
    }
    match binding {
        None => problems.push(format!(
            "ValidatingAdmissionPolicyBinding {name} is missing: the policy is not enforced; {deploy}"
        )),
        Some(found) => problems.extend(
            isolation::drift(&isolation::binding(spec), found)
                .into_iter()
                .map(|d| format!("ValidatingAdmissionPolicyBinding {name}: {d}")),
        ),
    }
    if problems.iter().any(|p| !p.ends_with(&deploy)) {
        problems.push(format!("{deploy} to apply them as rendered"));
    }
    Finding::from_problems(
        problems,
        format!(
            "ValidatingAdmissionPolicy and binding {name} in force: each member's token acts only as its own pod in namespace {}",
            spec.namespace
        ),
    )
}
