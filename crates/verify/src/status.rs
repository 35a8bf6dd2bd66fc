//! `status`: one screen of the cluster — each member's role, readiness, node, restarts, data
//! directory or claim, streaming state and lag — as a table or JSON.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, Client};
use pgset_spec::{ClusterSpec, StorageMode, contract};
use serde::{Deserialize, Serialize};

use crate::checks::{self, Member};
use crate::live::{Options, Verifier};
use crate::sql::ReplicationRow;
use crate::{Result, api};

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
    /// What its agent stopped with (a refusal to use a data directory, a fatal error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_with: Option<String>,
    /// The member's agent's own status (`/status` on its health port, through the API server's
    /// pod proxy): readiness and why, timeline, LSNs, WAL receiver, slots on the master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<serde_json::Value>,
}

/// The whole screen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
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
    /// Why the streaming column is unknown, when the master could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_error: Option<String>,
}

/// Builds the member lines from the pods and the master's `pg_stat_replication` (pure).
pub fn member_statuses(
    spec: &ClusterSpec,
    members: &[Member],
    replication: &std::result::Result<Vec<ReplicationRow>, String>,
) -> Vec<MemberStatus> {
    let master = spec.pod_name(0);
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
                agent: None,
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
/// that cannot follow, members on different database systems or timelines, and a slot on the
/// master that holds WAL for a member outside the set.
pub fn agent_problems(members: &[MemberStatus], desired: i32, cluster: &str) -> Vec<String> {
    let mut p = Vec::new();
    let mut systems = std::collections::BTreeSet::new();
    let mut timelines = std::collections::BTreeSet::new();
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
        if let Some(sysid) = a["postgres"]["systemIdentifier"].as_str() {
            systems.insert(sysid.to_string());
        }
        if let Some(tl) = a["postgres"]["timeline"].as_i64() {
            timelines.insert(tl);
        }
        for slot in a["postgres"]["slots"].as_array().into_iter().flatten() {
            let name = slot["slot"].as_str().unwrap_or_default();
            let prefix = format!("{}_", cluster.replace('-', "_"));
            let Some(k) = name
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if k >= desired {
                p.push(format!(
                    "slot {name} on {} retains {} bytes of WAL for a member outside the set ({} wanted)",
                    m.pod,
                    slot["retainedBytes"].as_i64().unwrap_or(0),
                    desired
                ));
            }
        }
    }
    if systems.len() > 1 {
        p.push(format!(
            "members are on different database systems: {}",
            systems.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if timelines.len() > 1 {
        p.push(format!(
            "members are on different timelines: {}",
            timelines
                .into_iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    p
}

impl ClusterStatus {
    /// Reads the cluster: pods through the API, each agent's status, streaming from the master.
    pub async fn gather(client: Client, spec: &ClusterSpec) -> Result<ClusterStatus> {
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
        let verifier = Verifier::new(client.clone(), spec.clone(), Options::new(spec));
        let members = verifier.members().await?;
        let master_up = members
            .iter()
            .any(|m| m.ordinal == Some(0) && m.phase == "Running" && !m.terminating);
        let replication = if master_up {
            verifier.replication().await
        } else {
            Err(format!("{} is not running", spec.pod_name(0)))
        };
        let mut lines = member_statuses(spec, &members, &replication);
        for (line, member) in lines.iter_mut().zip(&members) {
            if member.phase == "Running" && !member.terminating {
                line.agent = agent_status(&client, &spec.namespace, &member.name).await;
            }
        }
        Ok(ClusterStatus {
            cluster: spec.name.clone(),
            namespace: spec.namespace.clone(),
            storage: spec.storage.mode.to_string(),
            desired: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: lines.iter().filter(|m| m.ready).count() as i32,
            members: lines,
            replication_error: replication.err(),
        })
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Why the cluster is not healthy (empty when it is): every member the StatefulSet wants is
    /// Ready with its role, and every replica streams from the master.
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
        for (k, m) in self.members.iter().enumerate() {
            let want = if k == 0 {
                contract::roles::MASTER
            } else {
                contract::roles::REPLICA
            };
            if let Some(why) = &m.stopped_with {
                p.push(format!("{} stopped: {why}", m.pod));
            } else if !m.ready {
                p.push(format!("{} is not Ready ({})", m.pod, m.phase));
            } else if m.role != want {
                p.push(format!("{} has role {}, not {want}", m.pod, m.role));
            }
            if k > 0 && self.replication_error.is_none() && m.streaming != "streaming" {
                p.push(format!("{} is {}", m.pod, m.streaming));
            }
        }
        p.extend(agent_problems(&self.members, self.desired, &self.cluster));
        p
    }

    /// The one-screen table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Cluster {}/{}: {}/{} members ready, storage {}",
            self.namespace, self.cluster, self.ready, self.desired, self.storage
        );
        if self.members.is_empty() {
            let _ = writeln!(out, "no pods");
            return out;
        }
        let header = [
            "POD",
            "ROLE",
            "READY",
            "STATUS",
            "RESTARTS",
            "NODE",
            "DATA",
            "STREAMING",
            "LAG",
        ];
        let rows: Vec<[String; 9]> = self
            .members
            .iter()
            .map(|m| {
                let lag = match (m.replay_lag_ms, m.unreplayed_bytes) {
                    (Some(ms), _) => format!("{ms:.1} ms"),
                    (None, Some(b)) if m.role != contract::roles::MASTER => format!("{b:.0} B"),
                    _ => "-".into(),
                };
                [
                    m.pod.clone(),
                    m.role.clone(),
                    if m.ready { "✓".into() } else { "✗".into() },
                    m.phase.clone(),
                    m.restarts.to_string(),
                    m.node.clone(),
                    m.data.clone(),
                    m.streaming.clone(),
                    lag,
                ]
            })
            .collect();
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
        if let Some(e) = &self.replication_error {
            let _ = writeln!(out, "streaming unknown: {e}");
        }
        for m in &self.members {
            if let Some(why) = &m.stopped_with {
                let _ = writeln!(out, "{} stopped: {why}", m.pod);
            }
            let Some(a) = &m.agent else {
                continue;
            };
            let pg = &a["postgres"];
            let mut facts = Vec::new();
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
            if !facts.is_empty() {
                let _ = writeln!(out, "{}: {}", m.pod, facts.join(", "));
            }
            for slot in pg["slots"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{}: slot {} {} {}, retains {} bytes",
                    m.pod,
                    slot["slot"].as_str().unwrap_or("?"),
                    if slot["active"].as_bool() == Some(true) {
                        "active"
                    } else {
                        "idle"
                    },
                    slot["walStatus"].as_str().unwrap_or("-"),
                    slot["retainedBytes"].as_i64().unwrap_or(0)
                );
            }
        }
        for problem in agent_problems(&self.members, self.desired, &self.cluster) {
            let _ = writeln!(out, "warning: {problem}");
        }
        out
    }
}
