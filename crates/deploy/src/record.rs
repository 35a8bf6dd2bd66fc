//! ConfigMap `<name>-record`: the cluster's record. `deploy` creates it saying whether the
//! cluster may have data (`state`: `new` only when no Secret with a cluster id, no member pod
//! and no claim of the cluster existed before; otherwise `data-expected`, or `data` with the
//! system identifier the members published), and never writes a key of it again; the master's
//! agent fills it with the database system identifier it runs. It outlives the pods and `down`
//! (like the claims and the Secret), and its finalizer keeps it through a casual delete until
//! `down --purge --yes`, so a master whose own data went missing can tell that the cluster had
//! data, even when no sibling directory is in view (templates mode), and refuse to initialise
//! an empty database over it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pgset_spec::contract::{FIELD_MANAGER, record};
use pgset_spec::{ClusterSpec, ValidSpec};
use serde::Deserialize;

use crate::apply::{Applied, ApplyMode, apply_reporting};
use crate::{Error, Result, is_status, object_meta, selector_string};

/// The record, as `deploy` applies it to a record that exists: labels and the finalizer only,
/// so a re-apply never touches what the agent wrote.
pub fn cluster_record(spec: &ClusterSpec) -> ConfigMap {
    let mut metadata = object_meta(spec, spec.record_name());
    metadata.finalizers = Some(vec![record::FINALIZER.to_string()]);
    ConfigMap {
        metadata,
        ..ConfigMap::default()
    }
}

/// A member's data identity as its agent published it on its pod
/// ([`record::POD_IDENTITY_ANNOTATION`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    /// The cluster id of the member's data.
    pub cluster_id: String,
    /// The database system identifier of the member's data.
    pub system_identifier: String,
}

/// The identities the member pods published, by pod name (pods without one, or with a
/// malformed one, are left out).
pub fn pod_identities(pods: &[Pod]) -> Vec<(String, PodIdentity)> {
    pods.iter()
        .filter_map(|p| {
            let text = p
                .metadata
                .annotations
                .as_ref()?
                .get(record::POD_IDENTITY_ANNOTATION)?;
            let id: PodIdentity = serde_json::from_str(text).ok()?;
            Some((p.metadata.name.clone()?, id))
        })
        .collect()
}

/// A key of the record's data, when present and not empty.
fn key<'a>(cm: &'a ConfigMap, name: &str) -> Option<&'a str> {
    cm.data
        .as_ref()?
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Whether the record says what it knows of the cluster's data (a state or a system
/// identifier); a record without either (made empty by an older `deploy`) is filled in.
pub fn knows_its_state(cm: &ConfigMap) -> bool {
    key(cm, record::STATE).is_some() || key(cm, record::SYSTEM_IDENTIFIER).is_some()
}

/// The cluster id a new Secret (or an old Secret that lacks one) takes: the one the record
/// names, else the one every member pod that published its identity names. `None` when
/// nothing names one, or the pods disagree.
pub fn inherited_cluster_id(record: Option<&ConfigMap>, pods: &[Pod]) -> Option<String> {
    if let Some(id) = record.and_then(|cm| key(cm, record::CLUSTER_ID)) {
        return Some(id.to_string());
    }
    let ids: std::collections::BTreeSet<String> = pod_identities(pods)
        .into_iter()
        .map(|(_, id)| id.cluster_id)
        .collect();
    (ids.len() == 1).then(|| ids.into_iter().next().unwrap_or_default())
}

/// What proves that a cluster existed before this deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The Secret held a cluster id before this deploy.
    pub secret_had_cluster_id: bool,
    /// The cluster's member pods.
    pub pods: Vec<String>,
    /// The cluster's claims.
    pub claims: Vec<String>,
    /// The identities the member pods published.
    pub identities: Vec<(String, PodIdentity)>,
}

impl Evidence {
    /// What the evidence is, in words; empty when there is none.
    pub fn describe(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.secret_had_cluster_id {
            found.push("the Secret already held a cluster id".to_string());
        }
        if !self.pods.is_empty() {
            found.push(format!("member pods {}", self.pods.join(", ")));
        }
        if !self.claims.is_empty() {
            found.push(format!("claims {}", self.claims.join(", ")));
        }
        found
    }
}

/// The data of a record made by `deploy` (created, or filled into one without a state):
/// `new` without evidence; with evidence, `data` and the system identifier when the member
/// pods of this cluster id published one (and agree), else `data-expected`.
pub fn record_data(cluster_id: &str, evidence: &Evidence) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    data.insert(record::CLUSTER_ID.to_string(), cluster_id.to_string());
    if evidence.describe().is_empty() {
        data.insert(record::STATE.to_string(), record::STATE_NEW.to_string());
        return data;
    }
    let systems: std::collections::BTreeSet<&str> = evidence
        .identities
        .iter()
        .filter(|(_, id)| id.cluster_id == cluster_id && !id.system_identifier.is_empty())
        .map(|(_, id)| id.system_identifier.as_str())
        .collect();
    match systems.iter().next() {
        Some(sysid) if systems.len() == 1 => {
            data.insert(record::STATE.to_string(), record::STATE_DATA.to_string());
            data.insert(record::SYSTEM_IDENTIFIER.to_string(), sysid.to_string());
        }
        _ => {
            data.insert(
                record::STATE.to_string(),
                record::STATE_DATA_EXPECTED.to_string(),
            );
        }
    }
    data
}

/// Whether `cm` already has every label and finalizer of `applied`: then `deploy` sends
/// nothing (an apply by another field manager than the record's creator would change its
/// managed fields, and so its resourceVersion, although nothing the user sees changed).
pub fn carries(cm: &ConfigMap, applied: &ConfigMap) -> bool {
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    let finalizers = cm.metadata.finalizers.clone().unwrap_or_default();
    applied
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && applied
            .metadata
            .finalizers
            .iter()
            .flatten()
            .all(|f| finalizers.contains(f))
}

/// Reads the record; `None` when it does not exist.
pub async fn read(client: &Client, spec: &ValidSpec) -> Result<Option<ConfigMap>> {
    let ns = spec.namespace.as_str();
    let name = spec.record_name();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "ConfigMap", name, ns))
}

/// The cluster's member pods (by its selector labels).
pub async fn member_pods(client: &Client, spec: &ValidSpec) -> Result<Vec<Pod>> {
    let ns = spec.namespace.as_str();
    let selector = selector_string(spec);
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api("list", "Pod", &selector, ns))?
        .items)
}

/// What `deploy` knows when it ensures the record.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// The record as read before the Secret was ensured (`None`: it did not exist).
    pub prior: Option<&'a ConfigMap>,
    /// The Secret's cluster id.
    pub cluster_id: &'a str,
    /// The Secret held a cluster id before this deploy.
    pub secret_had_cluster_id: bool,
    /// The cluster's member pods.
    pub pods: &'a [Pod],
}

/// Makes sure the record exists and says what it knows: a record that knows its state gets
/// only `applied` (labels and finalizer, [`cluster_record`]; no data key is sent); a missing
/// one is created, and one without a state filled, from the evidence ([`record_data`]).
pub async fn ensure(
    client: &Client,
    spec: &ValidSpec,
    mode: ApplyMode,
    applied: &ConfigMap,
    known: Known<'_>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Applied> {
    let Known {
        prior,
        cluster_id,
        secret_had_cluster_id,
        pods,
    } = known;
    let ns = spec.namespace.as_str();
    let name = spec.record_name();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let dry = mode == ApplyMode::ServerDryRun;
    let suffix = if dry { " (server dry run)" } else { "" };
    if let Some(cm) = prior {
        if cm.metadata.deletion_timestamp.is_some() {
            progress(&format!(
                "ConfigMap {name} was deleted but its finalizer {} keeps it (only `down --purge \
                 --yes` removes it); the agents read it as it is",
                record::FINALIZER
            ));
        }
        if knows_its_state(cm) {
            if carries(cm, applied) {
                progress(&format!(
                    "unchanged ConfigMap {name} (resourceVersion {}){suffix}",
                    cm.metadata.resource_version.as_deref().unwrap_or_default()
                ));
                return Ok(Applied::Unchanged);
            }
            return apply_reporting(&api, applied, mode, progress)
                .await
                .map_err(Error::api("apply", "ConfigMap", name, ns));
        }
    }
    let evidence = Evidence {
        secret_had_cluster_id,
        pods: pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect(),
        claims: crate::teardown::cluster_claims(client, spec).await?,
        identities: pod_identities(pods),
    };
    let data = record_data(cluster_id, &evidence);
    let state = data.get(record::STATE).cloned().unwrap_or_default();
    let why = match evidence.describe() {
        found if found.is_empty() => {
            "no Secret, member pod or claim of this cluster existed".into()
        }
        found => found.join("; "),
    };
    match prior {
        None => {
            let mut cm = applied.clone();
            cm.data = Some(data);
            let params = PostParams {
                dry_run: dry,
                field_manager: Some(FIELD_MANAGER.to_string()),
            };
            match api.create(&params, &cm).await {
                Ok(_) => {
                    progress(&format!(
                        "created ConfigMap {name} (state {state}: {why}){suffix}"
                    ));
                    Ok(if dry {
                        Applied::Unchanged
                    } else {
                        Applied::Created(format!("ConfigMap/{name}"))
                    })
                }
                // Made by someone else between our read and create: apply to theirs.
                Err(e) if is_status(&e, 409) => apply_reporting(&api, applied, mode, progress)
                    .await
                    .map_err(Error::api("apply", "ConfigMap", name, ns)),
                Err(e) => Err(Error::api("create", "ConfigMap", name, ns)(e)),
            }
        }
        Some(_) => {
            // A record made empty by an older deploy: its state is filled (a merge patch of
            // data keys the agent never wrote), then labels and finalizer are applied.
            let mut params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            if dry {
                params = params.dry_run();
            }
            api.patch(
                &name,
                &params,
                &Patch::Merge(&serde_json::json!({ "data": data })),
            )
            .await
            .map_err(Error::api("patch", "ConfigMap", name.clone(), ns))?;
            progress(&format!(
                "filled ConfigMap {name} (state {state}: {why}){suffix}"
            ));
            apply_reporting(&api, applied, mode, progress)
                .await
                .map_err(Error::api("apply", "ConfigMap", name.clone(), ns))?;
            Ok(if dry {
                Applied::Unchanged
            } else {
                Applied::Changed(format!("ConfigMap/{name}"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::named_spec;

    #[test]
    fn the_applied_record_carries_the_finalizer_and_no_data() {
        let r = cluster_record(&named_spec("db", "prod"));
        assert_eq!(r.metadata.name.as_deref(), Some("db-record"));
        assert_eq!(r.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(
            r.metadata.finalizers.as_deref(),
            Some(&[record::FINALIZER.to_string()][..])
        );
        assert!(r.data.is_none() && r.binary_data.is_none());
    }

    fn identity(pod: &str, cluster_id: &str, sysid: &str) -> (String, PodIdentity) {
        (
            pod.into(),
            PodIdentity {
                cluster_id: cluster_id.into(),
                system_identifier: sysid.into(),
            },
        )
    }

    #[test]
    fn a_record_is_new_only_without_any_evidence() {
        let data = record_data("c1", &Evidence::default());
        assert_eq!(data[record::STATE], record::STATE_NEW);
        assert_eq!(data[record::CLUSTER_ID], "c1");
        assert!(!data.contains_key(record::SYSTEM_IDENTIFIER));
        for evidence in [
            Evidence {
                secret_had_cluster_id: true,
                ..Evidence::default()
            },
            Evidence {
                claims: vec!["data-pgset-1".into()],
                ..Evidence::default()
            },
            Evidence {
                pods: vec!["pgset-1".into()],
                ..Evidence::default()
            },
        ] {
            let data = record_data("c1", &evidence);
            assert_eq!(
                data[record::STATE],
                record::STATE_DATA_EXPECTED,
                "{evidence:?}"
            );
            assert!(!data.contains_key(record::SYSTEM_IDENTIFIER));
        }
    }

    #[test]
    fn the_members_published_system_fills_a_rebuilt_record_when_they_agree() {
        let mut evidence = Evidence {
            pods: vec!["pgset-1".into(), "pgset-2".into()],
            identities: vec![
                identity("pgset-1", "c1", "73"),
                identity("pgset-2", "c1", "73"),
            ],
            ..Evidence::default()
        };
        let data = record_data("c1", &evidence);
        assert_eq!(data[record::STATE], record::STATE_DATA);
        assert_eq!(data[record::SYSTEM_IDENTIFIER], "73");
        // Another cluster id's system, or a disagreement, proves no system identifier.
        evidence.identities[1] = identity("pgset-2", "c1", "74");
        assert_eq!(
            record_data("c1", &evidence)[record::STATE],
            record::STATE_DATA_EXPECTED
        );
        evidence.identities = vec![identity("pgset-1", "other", "73")];
        assert_eq!(
            record_data("c1", &evidence)[record::STATE],
            record::STATE_DATA_EXPECTED
        );
    }
}
