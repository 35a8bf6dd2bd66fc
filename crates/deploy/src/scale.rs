//! Scaling the StatefulSet: patch `spec.replicas` through the scale subresource (only that
//! field changes), then wait for the ordered rollout. Scale-down keeps claims and data, never
//! removes the master (the leader Lease's holder, else ordinal 0), and pauses automatic failover
//! on the leader Lease while members are removed.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use pgset_spec::ValidSpec;
use pgset_spec::contract::FIELD_MANAGER;

use crate::master::{MasterView, Pause, pause_failover, read_master, resume_failover};
use crate::rollout::{RolloutReport, step_lines, wait_for_rollout};
use crate::{Error, Result};

/// Where a scale started and ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleOutcome {
    /// Members before.
    pub from: i32,
    /// Members now.
    pub to: i32,
    /// The rollout, when waited for.
    pub rollout: Option<RolloutReport>,
}

/// The StatefulSet's `spec.replicas`. Fails with [`Error::NotDeployed`] when it does not exist.
pub async fn current_replicas(client: &Client, spec: &ValidSpec) -> Result<i32> {
    let ns = spec.namespace.as_str();
    let name = spec.statefulset_name();
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let current = api
        .get_opt(name)
        .await
        .map_err(Error::api("get", "StatefulSet", name, ns))?
        .ok_or_else(|| Error::NotDeployed {
            name: name.to_string(),
            namespace: ns.to_string(),
        })?;
    Ok(current.spec.and_then(|s| s.replicas).unwrap_or(1))
}

/// Sets the StatefulSet's `spec.replicas` through its scale subresource; returns the previous
/// value. Fails with [`Error::NotDeployed`] when the StatefulSet does not exist.
pub async fn set_replicas(client: &Client, spec: &ValidSpec, replicas: i32) -> Result<i32> {
    let ns = spec.namespace.as_str();
    let name = spec.statefulset_name();
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let from = current_replicas(client, spec).await?;
    if from != replicas {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        api.patch_scale(name, &params, &Patch::Merge(&patch))
            .await
            .map_err(Error::api("scale", "StatefulSet", name, ns))?;
    }
    Ok(from)
}

/// Refuses a size that would remove the master (pure): the master's ordinal, or that of a pod
/// labelled master, at or above `replicas`.
pub fn keeps_master(view: &MasterView, replicas: i32) -> Result<()> {
    let candidates = view.master.iter().chain(view.labelled.iter());
    for name in candidates {
        if let Some(ordinal) = pgset_spec::ordinal_of(name)
            && ordinal >= replicas
        {
            return Err(Error::MasterWouldBeRemoved {
                master: name.clone(),
                ordinal,
                replicas,
            });
        }
    }
    Ok(())
}

/// Scales to `replicas` members and, with `wait`, waits up to `timeout` for the ordered
/// rollout (scale-up: each new member Ready in turn; scale-down: the highest ordinals gone).
/// Claims of removed members stay (retention policy Retain). A scale-down that would remove the
/// master is refused before any change ([`keeps_master`]); one that does not pauses failover on
/// the leader Lease first. A scale that waited and ends with members running removes the pause
/// (also the one `down` leaves); one that did not wait leaves it and says so.
pub async fn scale(
    client: &Client,
    spec: &ValidSpec,
    replicas: i32,
    wait: Option<Duration>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ScaleOutcome> {
    let lease = pgset_spec::contract::leader_lease_name(&spec.name);
    let current = current_replicas(client, spec).await?;
    if replicas < current {
        let view = read_master(client, spec).await?;
        keeps_master(&view, replicas)?;
        match pause_failover(client, spec).await? {
            Pause::Paused => progress(&format!(
                "paused failover on Lease {lease} while members are removed"
            )),
            Pause::AlreadyPaused => progress(&format!("failover already paused on Lease {lease}")),
            Pause::NoLeader => {}
        }
    }
    let from = set_replicas(client, spec, replicas).await?;
    if from == replicas {
        progress(&format!(
            "StatefulSet {} already has {replicas} members",
            spec.statefulset_name()
        ));
    } else {
        progress(&format!(
            "StatefulSet {}: {from} -> {replicas} members",
            spec.statefulset_name()
        ));
    }
    let rollout = match wait {
        Some(timeout) => Some(
            wait_for_rollout(client, spec, replicas, timeout, &mut step_lines(progress)).await?,
        ),
        None => None,
    };
    if rollout.is_some() && replicas > 0 {
        if resume_failover(client, spec).await? {
            progress(&format!("removed the failover pause on Lease {lease}"));
        }
    } else if crate::master::read_leader(client, spec)
        .await?
        .is_some_and(|l| l.failover_paused)
    {
        progress(&format!(
            "failover stays paused on Lease {lease}: run `{} scale {replicas}` without --no-wait to wait for the members and resume it",
            pgset_spec::contract::program_name()
        ));
    }
    Ok(ScaleOutcome {
        from,
        to: replicas,
        rollout,
    })
}
