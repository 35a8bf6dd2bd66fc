//! `status`: one screen of the cluster — a summary (cluster id, system identifier, PostgreSQL
//! version, master and its uptime, members ready, the master's LSN and timeline), then each
//! member's role, readiness and why not, node, pod IP, the Service that routes to it, data
//! directory or claim and its identity check, timeline, streaming state, lag, slot and retained
//! WAL, restarts and agent version, and the warnings a user must act on — as a table, JSON or
//! YAML. Built from the API (pods, StatefulSet, EndpointSlices, the cluster record, the leader
//! Lease that names the master) and each member agent's own `/status`; the judgement
//! ([`ClusterStatus::problems`]) is pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use pgset_spec::status::{Slot, Summary, bytes};
use pgset_spec::{ClusterSpec, LagBound, StorageMode, ValidSpec, contract, slot_name};
use serde::{Deserialize, Serialize};

use crate::checks::{self, Endpoint, Member};
use crate::live::{Options, Verifier};
use crate::sql::ReplicationRow;
use crate::{Result, api};
use k8s_openapi::jiff::Timestamp;
use pgset_deploy::master::MasterView;

/// One member's line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Pod name.
    pub pod: String,
    /// The role label (`master`, `replica`), `-` when the agent has not set it.
    pub role: String,
    /// Pod phase.
    pub phase: String,
    /// Ready condition.
    pub ready: bool,
    /// Node it runs on.
    pub node: String,
    /// Container restarts.
    pub restarts: i32,
    /// Data directory (shared mode) or claim (templates mode).
    pub data: String,
    /// `primary`, the replica's `pg_stat_replication.state`, `not streaming`, or `unknown`.
    pub streaming: String,
    /// Replay lag the master reports for this replica (ms), when it has a recent sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lag_ms: Option<f64>,
    /// Bytes sent to this replica but not yet replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreplayed_bytes: Option<f64>,
    /// What its agent stopped with (a refusal to use a data directory, a fatal error), while
    /// its container is down or not Ready again: one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_with: Option<String>,
    /// Its postgres container's previous exit (when, exit code, the one-line reason): history,
    /// never a warning by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<checks::LastExit>,
    /// The member's agent's own status (`/status` on its health port, through the API server's
    /// pod proxy): readiness and why, timeline, LSNs, WAL receiver, slots on the master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<serde_json::Value>,
    /// `status.podIP`.
    #[serde(default)]
    pub pod_ip: Option<String>,
    /// The role Services (`<name>-master`, `<name>-replica`) whose ready endpoints list this
    /// pod: where a client of that Service lands now.
    #[serde(default)]
    pub services: Vec<String>,
    /// Its data directory's identity check: `accepted` (its agent runs postgres, which it does
    /// only on a directory it proved to be this member's), `checking` (the agent prepares it),
    /// `refused` (the agent stopped with exit code 2: see `stopped_with`) or `unknown`.
    #[serde(default)]
    pub identity: String,
    /// Its timeline (its agent's).
    #[serde(default)]
    pub timeline: Option<i64>,
    /// Its slot on the master (replicas).
    #[serde(default)]
    pub slot: Option<Slot>,
    /// Its agent's version.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// Each container's image, by container name.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

/// The whole screen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Whether the cluster is healthy: no problem below (`--output json` for scripts; the exit
    /// code says the same).
    #[serde(default)]
    pub healthy: bool,
    /// The cluster at a glance.
    #[serde(default)]
    pub summary: Summary,
    /// Cluster name.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Storage mode.
    pub storage: String,
    /// Members the StatefulSet wants.
    pub desired: i32,
    /// Members Ready.
    pub ready: i32,
    /// The members, by ordinal.
    pub members: Vec<MemberStatus>,
    /// How far behind a replica may be (`spec.replication.maxReplicaLag`) before status warns.
    #[serde(default)]
    pub max_replica_lag: LagBound,
    /// Why the streaming column is unknown, when the master could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_error: Option<String>,
    /// What a user must act on (the same as the problems that make the exit code 2).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The master as the leader Lease (else, with none, ordinal 0) and the pods' labels say, the
    /// Lease as read, and every disagreement (each one a warning).
    #[serde(default)]
    pub master: MasterView,
    /// Seconds since the leader Lease was renewed, when read (its `renewTime` against this
    /// host's clock: for people only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_renewed_s_ago: Option<i64>,
}

/// Builds the member lines from the pods and the master's `pg_stat_replication` (pure).
pub fn member_statuses(
    spec: &ClusterSpec,
    members: &[Member],
    master: &str,
    replication: &std::result::Result<Vec<ReplicationRow>, String>,
) -> Vec<MemberStatus> {
    members
        .iter()
        .map(|m| {
            let row = replication
                .as_ref()
                .ok()
                .and_then(|rows| rows.iter().find(|r| r.application_name == m.name));
            let streaming = if m.name == master {
                match replication {
                    Ok(rows) => format!("primary ({} walsender(s))", rows.len()),
                    Err(_) => "unknown".into(),
                }
            } else {
                match (replication, row) {
                    (Err(_), _) => "unknown".into(),
                    (Ok(_), Some(r)) => r.state.clone(),
                    (Ok(_), None) => "not streaming".into(),
                }
            };
            let data = match (spec.storage.mode, m.ordinal) {
                (StorageMode::Templates, Some(o)) => spec.member_claim_name(o),
                _ => format!(
                    "{} ({})",
                    checks::data_dir_in_pod(&m.name),
                    spec.shared_claim_name()
                ),
            };
            MemberStatus {
                pod: m.name.clone(),
                role: m.role().unwrap_or("-").to_string(),
                phase: if m.terminating {
                    "Terminating".into()
                } else {
                    m.phase.clone()
                },
                ready: m.ready,
                node: m.node.clone().unwrap_or_else(|| "-".into()),
                restarts: m.restarts,
                data,
                streaming,
                replay_lag_ms: row.and_then(|r| r.replay_lag_ms),
                unreplayed_bytes: row.and_then(|r| r.unreplayed_bytes),
                stopped_with: m.stopped_with.clone(),
                last_exit: m.last_exit.clone(),
                agent: None,
                pod_ip: m.ip.clone(),
                services: Vec::new(),
                identity: if m.stopped_exit == Some(2) {
                    "refused".into()
                } else {
                    "unknown".into()
                },
                timeline: None,
                slot: None,
                agent_version: None,
                images: m.images.clone(),
            }
        })
        .collect()
}

/// A member agent's `/status`, through the API server's pod proxy (`pods/proxy`); `None` when it
/// does not answer within 3 s or the caller may not use the proxy.
pub async fn agent_status(
    client: &Client,
    namespace: &str,
    pod: &str,
) -> Option<serde_json::Value> {
    let path = format!(
        "/api/v1/namespaces/{namespace}/pods/{pod}:{}/proxy{}",
        contract::HEALTH_PORT,
        contract::HEALTH_STATUS_PATH
    );
    let request = http::Request::get(path).body(Vec::new()).ok()?;
    let text = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        client.request_text(request),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_str(&text).ok()
}

/// Problems the agents' own states show (pure): a member not ready with its reason, a replica
/// that cannot follow, a member on another database system or timeline than the master, and a
/// slot on the master that holds WAL for a member outside the set.
pub fn agent_problems(
    members: &[MemberStatus],
    master: &str,
    desired: i32,
    cluster: &str,
) -> Vec<String> {
    let mut p = Vec::new();
    let master = members
        .iter()
        .find(|m| m.pod == master)
        .and_then(|m| m.agent.as_ref());
    let master_sysid = master.and_then(|a| a["postgres"]["systemIdentifier"].as_str());
    let master_tl = master.and_then(|a| a["postgres"]["timeline"].as_i64());
    for m in members {
        let Some(a) = &m.agent else {
            continue;
        };
        if a["ready"].as_bool() == Some(false)
            && let Some(reason) = a["reason"].as_str()
        {
            p.push(format!("{} is not ready: {reason}", m.pod));
        }
        if let Some(problem) = a["postgres"]["followProblem"].as_str() {
            p.push(format!("{} cannot follow the master: {problem}", m.pod));
        }
        if let (Some(mine), Some(theirs)) =
            (a["postgres"]["systemIdentifier"].as_str(), master_sysid)
            && mine != theirs
        {
            p.push(format!(
                "{}'s data is database system {mine}, the master's is {theirs}: it is not a copy of the master",
                m.pod
            ));
        }
        if let (Some(mine), Some(theirs)) = (a["postgres"]["timeline"].as_i64(), master_tl)
            && mine != theirs
        {
            p.push(format!(
                "{} is on timeline {mine}, the master on {theirs}",
                m.pod
            ));
        }
        for slot in a["postgres"]["slots"].as_array().into_iter().flatten() {
            let name = slot["slot"].as_str().unwrap_or_default();
            let Some(k) = pgset_spec::member_of_slot(cluster, name)
                .and_then(|member| pgset_spec::ordinal_of(&member))
            else {
                continue;
            };
            if k >= desired {
                p.push(format!(
                    "slot {name} on {} retains {} of WAL for {cluster}-{k}, a member outside the set ({desired} wanted): scale back to {} or drop the slot",
                    m.pod,
                    bytes(slot["retainedBytes"].as_i64().unwrap_or(0)),
                    k + 1
                ));
            }
        }
    }
    p
}

/// Kept copies with writes the cluster does not have, as each member's agent lists them
/// (`diverged` in its `/status`), with the command that removes one once the user has looked at
/// it (pure): the cluster is not healthy until then.
pub fn diverged_problems(members: &[MemberStatus], namespace: &str) -> Vec<String> {
    let mut p = Vec::new();
    for m in members {
        let Some(a) = &m.agent else {
            continue;
        };
        for kept in a["diverged"].as_array().into_iter().flatten() {
            let path = kept["path"].as_str().unwrap_or_default();
            p.push(format!(
                "{pod} wrote {} bytes of WAL after the fork at {} that the cluster does not have; \
                 they are kept in {path}: look at them, then remove it with `kubectl exec -n \
                 {namespace} {pod} -c {} -- rm -r {path}`",
                kept["bytesAfterFork"].as_u64().unwrap_or(0),
                kept["forkLsn"].as_str().unwrap_or("unknown"),
                pgset_spec::contract::POSTGRES_CONTAINER,
                pod = m.pod,
            ));
        }
    }
    p
}

/// A replica further behind the master than `bound` allows (pure): `bytes` sent to it but not
/// yet replayed, `seconds` of the master's `replay_lag`. Names the bound.
pub fn lag_problem(
    pod: &str,
    bytes_behind: Option<f64>,
    seconds: Option<f64>,
    bound: &LagBound,
) -> Option<String> {
    pgset_spec::status::lag_warning(pod, bytes_behind.map(|b| b as i64), seconds, bound)
}

/// Containers whose image differs between the members (a rollout in progress, or a pod changed
/// by hand), one problem per container (pure).
pub fn image_problems(members: &[MemberStatus]) -> Vec<String> {
    let mut by_container: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for m in members {
        for (container, image) in &m.images {
            by_container
                .entry(container)
                .or_default()
                .entry(image)
                .or_default()
                .push(&m.pod);
        }
    }
    by_container
        .into_iter()
        .filter(|(_, images)| images.len() > 1)
        .map(|(container, images)| {
            let which: Vec<String> = images
                .into_iter()
                .map(|(image, pods)| format!("{image} on {}", pods.join(", ")))
                .collect();
            format!(
                "container {container} runs different images: {} (a rollout in progress, or a pod changed by hand)",
                which.join("; ")
            )
        })
        .collect()
}

/// The master's `pg_stat_replication` as its agent shows it, when it does.
pub fn replication_from_agent(agent: &serde_json::Value) -> Option<Vec<ReplicationRow>> {
    let rows = agent["postgres"]["replication"].as_array()?;
    Some(
        rows.iter()
            .map(|r| ReplicationRow {
                application_name: r["applicationName"].as_str().unwrap_or_default().into(),
                state: r["state"].as_str().unwrap_or("unknown").into(),
                sync_state: r["syncState"].as_str().unwrap_or_default().into(),
                unreplayed_bytes: r["unreplayedBytes"].as_f64(),
                replay_lag_ms: r["replayLagMs"].as_f64(),
            })
            .collect(),
    )
}

/// Fills in what each member's agent says (pure): the identity check, timeline, agent version,
/// and each replica's slot on the master.
pub fn apply_agents(lines: &mut [MemberStatus], master: &str) {
    let master_slots: Vec<serde_json::Value> = lines
        .iter()
        .find(|m| m.pod == master)
        .and_then(|m| m.agent.as_ref())
        .and_then(|a| a["postgres"]["slots"].as_array().cloned())
        .unwrap_or_default();
    for line in lines.iter_mut() {
        let want = slot_name(&line.pod);
        line.slot = master_slots
            .iter()
            .find(|s| s["slot"].as_str() == Some(want.as_str()))
            .map(|s| Slot {
                slot: want.clone(),
                active: s["active"].as_bool().unwrap_or(false),
                wal_status: s["walStatus"].as_str().map(String::from),
                retained_bytes: s["retainedBytes"].as_i64(),
            });
        let Some(a) = &line.agent else {
            continue;
        };
        line.identity = match a["phase"].as_str() {
            Some("running" | "stopping" | "exited") => "accepted".into(),
            Some("preparing") => "checking".into(),
            _ => line.identity.clone(),
        };
        line.timeline = a["postgres"]["timeline"].as_i64();
        line.agent_version = a["agentVersion"].as_str().map(String::from);
    }
}

/// Marks which role Service routes to each member (pure): a ready endpoint of that Service
/// targets the pod.
pub fn apply_services(lines: &mut [MemberStatus], services: &[(String, Vec<Endpoint>)]) {
    for line in lines.iter_mut() {
        line.services = services
            .iter()
            .filter(|(_, eps)| {
                eps.iter()
                    .any(|e| e.ready && e.pod.as_deref() == Some(line.pod.as_str()))
            })
            .map(|(name, _)| name.clone())
            .collect();
    }
}

/// The summary from the members' agents and the cluster record (pure). `record` holds the
/// record's cluster id and system identifier when it has them.
pub fn summary(
    spec: &ClusterSpec,
    lines: &[MemberStatus],
    master: &str,
    desired: i32,
    record: &BTreeMap<String, String>,
) -> Summary {
    let agent = lines
        .iter()
        .find(|m| m.pod == master)
        .and_then(|m| m.agent.as_ref());
    let pg = |key: &str| agent.map(|a| a["postgres"][key].clone());
    let text = |key: &str| pg(key).and_then(|v| v.as_str().map(String::from));
    let nonempty = |key: &str| record.get(key).filter(|v| !v.is_empty()).cloned();
    Summary {
        cluster: spec.name.clone(),
        cluster_id: nonempty(contract::record::CLUSTER_ID),
        system_identifier: text("systemIdentifier")
            .or_else(|| nonempty(contract::record::SYSTEM_IDENTIFIER)),
        postgres_version: text("serverVersion"),
        master: master.to_string(),
        master_started_at: text("startedAt"),
        master_uptime_s: pg("uptimeSeconds").and_then(|v| v.as_f64()),
        members_ready: lines
            .iter()
            .filter(|m| m.ready && pgset_spec::ordinal_of(&m.pod).is_some_and(|k| k < desired))
            .count(),
        members_total: desired.max(0) as usize,
        master_lsn: text("currentLsn"),
        timeline: pg("timeline").and_then(|v| v.as_i64()),
    }
}

impl ClusterStatus {
    /// Reads the cluster: the StatefulSet, the pods, the cluster record, the role Services'
    /// endpoints and each running member agent's `/status` through the API. Streaming comes from
    /// the master agent's view of `pg_stat_replication`; an agent that does not show it (an older
    /// one) is asked through `psql` in the master's container instead.
    pub async fn gather(client: Client, spec: &ValidSpec) -> Result<ClusterStatus> {
        let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &spec.namespace);
        let sts = statefulsets
            .get_opt(spec.statefulset_name())
            .await
            .map_err(api(format!("read StatefulSet {}", spec.name)))?;
        let Some(sts) = sts else {
            return Err(crate::Error::NotDeployed {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
            });
        };
        let desired = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let verifier = Verifier::new(client.clone(), spec.clone(), Options::new(spec));
        let members = verifier.members().await?;
        let leader = verifier.leader().await?;
        let now = Timestamp::now();
        let view = checks::master_view(spec, leader.as_ref(), &members, now);
        let master = view.master_or_first(spec);
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &spec.namespace);
        let record = configmaps
            .get_opt(&spec.record_name())
            .await
            .map_err(api(format!("read ConfigMap {}", spec.record_name())))?
            .and_then(|c| c.data)
            .unwrap_or_default();
        let mut services = Vec::new();
        for name in [spec.master_service_name(), spec.replica_service_name()] {
            let eps = verifier.service_endpoints(&name).await?;
            services.push((name, eps));
        }
        let mut agents = Vec::new();
        for m in &members {
            agents.push(if m.phase == "Running" && !m.terminating {
                agent_status(&client, &spec.namespace, &m.name).await
            } else {
                None
            });
        }
        let master_up = members
            .iter()
            .any(|m| m.name == master && m.phase == "Running" && !m.terminating);
        let from_agent = members
            .iter()
            .zip(&agents)
            .find(|(m, _)| m.name == master)
            .and_then(|(_, a)| a.as_ref())
            .and_then(replication_from_agent);
        let replication = match from_agent {
            Some(rows) => Ok(rows),
            None if master_up => verifier.replication_on(&master).await,
            None => Err(format!("{master} is not running")),
        };
        let mut lines = member_statuses(spec, &members, &master, &replication);
        for (line, agent) in lines.iter_mut().zip(agents) {
            line.agent = agent;
        }
        apply_agents(&mut lines, &master);
        apply_services(&mut lines, &services);
        let mut status = ClusterStatus {
            summary: summary(spec, &lines, &master, desired, &record),
            leader_renewed_s_ago: leader.as_ref().and_then(|l| l.renewed_ago(now)),
            master: view,
            cluster: spec.name.clone(),
            namespace: spec.namespace.clone(),
            storage: spec.storage.mode.to_string(),
            desired,
            ready: lines.iter().filter(|m| m.ready).count() as i32,
            members: lines,
            replication_error: replication.err(),
            max_replica_lag: spec.replication.max_replica_lag,
            ..ClusterStatus::default()
        };
        status.judge();
        Ok(status)
    }

    /// The summary's line of the leader record: its holder, timeline and last renewal, or that
    /// there is none (a cluster made before it existed: ordinal 0 is the master).
    pub fn leader_line(&self) -> String {
        match &self.master.leader {
            Some(l) => format!("leader record {}", l.describe(self.leader_renewed_s_ago)),
            None => format!(
                "leader record none: {} is the master by its ordinal",
                self.master_pod().unwrap_or_default()
            ),
        }
    }

    /// The master's pod: the leader Lease's holder when the Lease exists (`None` when it names
    /// none), else ordinal 0.
    pub fn master_pod(&self) -> Option<String> {
        match &self.master.leader {
            Some(_) => self.master.master.clone(),
            None => Some(format!("{}-0", self.cluster)),
        }
    }

    /// Sets `warnings` and `healthy` from [`ClusterStatus::problems`].
    pub fn judge(&mut self) {
        self.warnings = self.problems();
        self.healthy = self.warnings.is_empty();
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// YAML, with the same fields as the JSON.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// Why the cluster is not healthy (empty when it is): every member the StatefulSet wants is
    /// Ready with its role, every replica streams from the master, the agents report no problem
    /// and every member runs the same images.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.members.len() as i32 != self.desired {
            p.push(format!(
                "{} pod(s) for {} wanted members",
                self.members.len(),
                self.desired
            ));
        }
        if let Some(e) = &self.replication_error {
            p.push(format!("streaming unknown: {e}"));
        }
        p.extend(self.master.problems.iter().cloned());
        let master_pod = self.master_pod();
        let master = master_pod.as_deref();
        for m in &self.members {
            let is_master = master == Some(m.pod.as_str());
            let want = if is_master {
                contract::roles::MASTER
            } else {
                contract::roles::REPLICA
            };
            if let Some(why) = &m.stopped_with {
                p.push(format!("{} stopped: {why}", m.pod));
            } else if !m.ready {
                p.push(format!("{} is not Ready ({})", m.pod, m.phase));
            } else if master.is_some() && m.role != want {
                p.push(format!("{} has role {}, not {want}", m.pod, m.role));
            }
            if !is_master && self.replication_error.is_none() && m.streaming != "streaming" {
                p.push(format!("{} is {}", m.pod, m.streaming));
            }
            if !is_master {
                p.extend(lag_problem(
                    &m.pod,
                    m.unreplayed_bytes,
                    m.replay_lag_ms.map(|ms| ms / 1000.0),
                    &self.max_replica_lag,
                ));
            }
        }
        p.extend(agent_problems(
            &self.members,
            master.unwrap_or_default(),
            self.desired,
            &self.cluster,
        ));
        p.extend(diverged_problems(&self.members, &self.namespace));
        p.extend(image_problems(&self.members));
        // Each warning once.
        let mut seen = std::collections::HashSet::new();
        p.retain(|w| seen.insert(w.clone()));
        p
    }

    /// The one-screen table: the summary, a row per member, each member's details, the warnings
    /// and the verdict.
    pub fn to_table(&self) -> String {
        let mut out = self.summary.lines();
        let _ = writeln!(out, "{}", self.leader_line());
        let _ = writeln!(
            out,
            "namespace {}  storage {}\n",
            self.namespace, self.storage
        );
        if self.members.is_empty() {
            let _ = writeln!(out, "no pods");
        }
        let header = [
            "POD",
            "ROLE",
            "READY",
            "STATUS",
            "RESTARTS",
            "NODE",
            "IP",
            "SERVICE",
            "DATA",
            "STREAMING",
            "LAG",
        ];
        let rows: Vec<[String; 11]> = self
            .members
            .iter()
            .map(|m| {
                let lag = match (m.replay_lag_ms, m.unreplayed_bytes) {
                    (Some(ms), Some(b)) => format!("{} / {ms:.1} ms", bytes(b as i64)),
                    (Some(ms), None) => format!("{ms:.1} ms"),
                    (None, Some(b)) if m.role != contract::roles::MASTER => bytes(b as i64),
                    _ => "-".into(),
                };
                let service = if m.services.is_empty() {
                    "-".to_string()
                } else {
                    m.services.join(",")
                };
                [
                    m.pod.clone(),
                    m.role.clone(),
                    if m.ready { "✓".into() } else { "✗".into() },
                    m.phase.clone(),
                    m.restarts.to_string(),
                    m.node.clone(),
                    m.pod_ip.clone().unwrap_or_else(|| "-".into()),
                    service,
                    m.data.clone(),
                    m.streaming.clone(),
                    lag,
                ]
            })
            .collect();
        if !rows.is_empty() {
            let mut widths = header.map(|h| h.chars().count());
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cells: &[String]| {
                let mut l = String::new();
                for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                    if i + 1 == cells.len() {
                        l.push_str(c);
                    } else {
                        let pad = w - c.chars().count();
                        let _ = write!(l, "{c}{}  ", " ".repeat(pad));
                    }
                }
                l
            };
            let _ = writeln!(out, "{}", line(&header.map(String::from)));
            for r in &rows {
                let _ = writeln!(out, "{}", line(r));
            }
            out.push('\n');
        }
        for m in &self.members {
            let mut facts = vec![format!("identity {}", m.identity)];
            if let Some(v) = &m.agent_version {
                facts.push(format!("agent {v}"));
            }
            if let Some(a) = &m.agent {
                let pg = &a["postgres"];
                for (key, label) in [
                    ("systemIdentifier", "system"),
                    ("timeline", "timeline"),
                    ("currentLsn", "LSN"),
                    ("receiveLsn", "received"),
                    ("replayLsn", "replayed"),
                    ("walReceiver", "WAL receiver"),
                ] {
                    match &pg[key] {
                        serde_json::Value::Null => {}
                        serde_json::Value::String(v) => facts.push(format!("{label} {v}")),
                        v => facts.push(format!("{label} {v}")),
                    }
                }
                if a["ready"].as_bool() == Some(false)
                    && let Some(reason) = a["reason"].as_str()
                {
                    facts.push(format!("not ready: {reason}"));
                }
            }
            let _ = writeln!(out, "{}: {}", m.pod, facts.join(", "));
            if let Some(slot) = &m.slot {
                let _ = writeln!(
                    out,
                    "{}: slot {} on the master {} {}, retains {}",
                    m.pod,
                    slot.slot,
                    if slot.active { "active" } else { "idle" },
                    slot.wal_status.as_deref().unwrap_or("-"),
                    slot.retained_bytes.map_or("-".into(), bytes)
                );
            }
            if m.stopped_with.is_none()
                && let Some(exit) = &m.last_exit
            {
                let _ = writeln!(out, "{}: last exit {}", m.pod, exit.describe());
            }
        }
        if let Some(e) = &self.replication_error {
            let _ = writeln!(out, "streaming unknown: {e}");
        }
        let problems = self.problems();
        for problem in &problems {
            let _ = writeln!(out, "warning: {problem}");
        }
        let _ = writeln!(
            out,
            "{}",
            if problems.is_empty() {
                "healthy"
            } else {
                "not healthy"
            }
        );
        out
    }
}
