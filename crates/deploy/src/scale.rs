//! Scaling the StatefulSet: patch `spec.replicas` through the scale subresource (only that
//! field changes), then wait for the ordered rollout. Scale-down keeps claims and data.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use pgset_spec::ValidSpec;
use pgset_spec::contract::FIELD_MANAGER;

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

/// Sets the StatefulSet's `spec.replicas` through its scale subresource; returns the previous
/// value. Fails with [`Error::NotDeployed`] when the StatefulSet does not exist.
pub async fn set_replicas(client: &Client, spec: &ValidSpec, replicas: i32) -> Result<i32> {
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
    let from = current.spec.and_then(|s| s.replicas).unwrap_or(1);
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

/// Scales to `replicas` members and, with `wait`, waits up to `timeout` for the ordered
/// rollout (scale-up: each new member Ready in turn; scale-down: the highest ordinals gone).
/// Claims of removed members stay (retention policy Retain).
pub async fn scale(
    client: &Client,
    spec: &ValidSpec,
    replicas: i32,
    wait: Option<Duration>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ScaleOutcome> {
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
    Ok(ScaleOutcome {
        from,
        to: replicas,
        rollout,
    })
}
