//! The agent's API calls in a cluster, made with the pod's service account: label its own pod
//! `role=master|replica` (server-side apply, field manager `pgset`), annotate it with its
//! step and a base backup's progress (`pgset.io/phase`, `pgset.io/base-backup`, a merge
//! patch), read and write keys of the cluster's record and publish the member's data
//! identity and the TLS files it has loaded on its pod (merge patches), ask whether a member's pod
//! still exists, read its own pod's grace period, read the StatefulSet's `spec.replicas` (the
//! master drops a member's slot only when its ordinal is at or above it; a contending replica
//! asks the members below it), and get, create and
//! replace the member's write-fence Lease (optimistic concurrency on `resourceVersion`).
//! The API host comes from KUBERNETES_SERVICE_HOST (an IP): the agent never resolves DNS names.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use pgset_spec::contract;
use serde_json::json;

use crate::{Error, Result};

/// How long the agent waits for a connection to the API server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agent waits for the API server's answer to a sent request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent waits to send a request.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest one API call can take: connect, send and answer. It stays well under the
/// fence's shortest renew deadline: half of it (a Lease lasts the grace period plus
/// [`crate::fence::LEASE_MARGIN_OVER_GRACE`], at least 30 s, and a holder gives up after two
/// thirds of it, at least 20 s), so one call that hangs leaves time for another renewal.
pub const CALL_BOUND: Duration = Duration::from_secs(10);

/// A client for the pod's own namespace.
#[derive(Clone)]
pub struct PodApi {
    pods: Api<Pod>,
    leases: Api<Lease>,
    statefulsets: Api<StatefulSet>,
    configmaps: Api<ConfigMap>,
    namespace: String,
    cluster: String,
}

impl std::fmt::Debug for PodApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodApi")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl PodApi {
    /// The in-cluster client (service-account token, API server from KUBERNETES_SERVICE_HOST).
    pub fn in_cluster(namespace: &str, cluster: &str) -> Result<PodApi> {
        let config = kube::Config::incluster_env().map_err(|e| {
            Error::Kube(format!(
                "in-cluster configuration: {e}; the pod needs its service account token mounted \
                 (automountServiceAccountToken) and KUBERNETES_SERVICE_HOST set"
            ))
        })?;
        PodApi::from_config(config, namespace, cluster)
    }

    /// The API client (the leader record's Lease is written with it).
    pub fn client(&self) -> kube::Client {
        self.leases.clone().into_client()
    }

    /// A client for `config` with the agent's timeouts ([`CONNECT_TIMEOUT`], [`READ_TIMEOUT`],
    /// [`WRITE_TIMEOUT`]): an API server that accepts and never answers costs a call at most
    /// their sum, never the member's fence or a readiness check.
    pub fn from_config(mut config: kube::Config, namespace: &str, cluster: &str) -> Result<PodApi> {
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(READ_TIMEOUT);
        config.write_timeout = Some(WRITE_TIMEOUT);
        let client = Client::try_from(config)
            .map_err(|e| Error::Kube(format!("building the client: {e}")))?;
        Ok(PodApi::with_client(client, namespace, cluster))
    }

    /// A client over an existing connection (tests use a mock service).
    pub fn with_client(client: Client, namespace: &str, cluster: &str) -> PodApi {
        PodApi {
            pods: Api::namespaced(client.clone(), namespace),
            leases: Api::namespaced(client.clone(), namespace),
            statefulsets: Api::namespaced(client.clone(), namespace),
            configmaps: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
        }
    }

    /// Sets `role=<role>` on the pod `name`.
    pub async fn label_role(&self, name: &str, role: &str) -> Result<()> {
        let params = PatchParams::apply(contract::FIELD_MANAGER).force();
        self.pods
            .patch(name, &params, &Patch::Apply(role_patch(name, role)))
            .await
            .map(drop)
            .map_err(|e| self.explain(e, "patch", name))
    }

    /// Sets the [`contract::annotations::PHASE`] annotation of the pod `name` to `phase` and
    /// [`contract::annotations::BASE_BACKUP`] to `copied` (removed when `None`): a merge patch
    /// of those two keys, field manager `pgset-agent`, so the role label's server-side apply
    /// keeps its own field.
    pub async fn annotate_phase(
        &self,
        name: &str,
        phase: contract::MemberPhase,
        copied: Option<&contract::BaseBackupReading>,
    ) -> Result<()> {
        let params = PatchParams {
            field_manager: Some(format!("{}-agent", contract::FIELD_MANAGER)),
            ..PatchParams::default()
        };
        self.pods
            .patch(name, &params, &Patch::Merge(&phase_patch(phase, copied)))
            .await
            .map(drop)
            .map_err(|e| self.explain(e, "patch", name))
    }

    /// Whether the pod `name` exists.
    pub async fn pod_exists(&self, name: &str) -> Result<bool> {
        match self.pods.get_opt(name).await {
            Ok(p) => Ok(p.is_some()),
            Err(e) => Err(self.explain(e, "get", name)),
        }
    }

    /// The cluster's record (ConfigMap `<cluster>-record`) as it is, also while it is being
    /// deleted (its finalizer keeps it); `None` only when the ConfigMap does not exist, which
    /// proves nothing about the cluster's data.
    pub async fn cluster_record(&self) -> Result<Option<ClusterRecord>> {
        let name = record_name(&self.cluster);
        let cm = self
            .configmaps
            .get_opt(&name)
            .await
            .map_err(|e| self.explain_on(e, Resource::ConfigMaps, "get", &name))?;
        Ok(cm.map(|cm| {
            ClusterRecord::from_data(
                &cm.data.unwrap_or_default(),
                cm.metadata.deletion_timestamp.is_some(),
            )
        }))
    }

    /// Writes keys of the cluster's record: a merge patch of those data keys alone (`None`
    /// removes a key). The agent never creates the record: `deploy` does.
    pub async fn write_cluster_record(&self, entries: &[(&str, Option<&str>)]) -> Result<()> {
        let name = record_name(&self.cluster);
        let data: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let params = PatchParams {
            field_manager: Some(format!("{}-agent", contract::FIELD_MANAGER)),
            ..PatchParams::default()
        };
        self.configmaps
            .patch(&name, &params, &Patch::Merge(&json!({ "data": data })))
            .await
            .map(drop)
            .map_err(|e| self.explain_on(e, Resource::ConfigMaps, "patch", &name))
    }

    /// Publishes the member's data identity on its pod
    /// ([`contract::record::POD_IDENTITY_ANNOTATION`], a merge patch of that annotation):
    /// `deploy` rebuilds a lost record from it.
    pub async fn publish_identity(
        &self,
        name: &str,
        cluster_id: &str,
        system_identifier: &str,
    ) -> Result<()> {
        let params = PatchParams {
            field_manager: Some(format!("{}-agent", contract::FIELD_MANAGER)),
            ..PatchParams::default()
        };
        self.pods
            .patch(
                name,
                &params,
                &Patch::Merge(&identity_patch(cluster_id, system_identifier)),
            )
            .await
            .map(drop)
            .map_err(|e| self.explain(e, "patch", name))
    }

    /// Publishes which TLS files the member's PostgreSQL has loaded on its pod `name`
    /// ([`contract::tls::LOADED_ANNOTATION`], a merge patch of that annotation): a CA rotation
    /// waits until every member names its new trust bundle.
    pub async fn publish_tls_loaded(&self, name: &str, loaded: &serde_json::Value) -> Result<()> {
        let params = PatchParams {
            field_manager: Some(format!("{}-agent", contract::FIELD_MANAGER)),
            ..PatchParams::default()
        };
        self.pods
            .patch(name, &params, &Patch::Merge(&tls_loaded_patch(loaded)))
            .await
            .map(drop)
            .map_err(|e| self.explain(e, "patch", name))
    }

    /// The pod's `spec.terminationGracePeriodSeconds` (Kubernetes' default, 30, when unset).
    pub async fn termination_grace_seconds(&self, name: &str) -> Result<i64> {
        let pod = self
            .pods
            .get(name)
            .await
            .map_err(|e| self.explain(e, "get", name))?;
        Ok(pod
            .spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30))
    }

    /// The StatefulSet's `spec.replicas` (Kubernetes' default, 1, when unset). A member whose
    /// ordinal is at or above it was scaled away; every other member belongs to the set even
    /// while its pod object does not exist (OrderedReady recreates pods one at a time).
    pub async fn statefulset_replicas(&self) -> Result<i32> {
        let sts = self
            .statefulsets
            .get(&self.cluster)
            .await
            .map_err(|e| self.explain_on(e, Resource::StatefulSets, "get", &self.cluster))?;
        Ok(sts.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    /// The Lease `name`, or `None` when it does not exist.
    pub async fn get_lease(&self, name: &str) -> Result<Option<Lease>> {
        self.leases
            .get_opt(name)
            .await
            .map_err(|e| self.explain_on(e, Resource::Leases, "get", name))
    }

    /// Creates `lease`; `Ok(None)` when a Lease of that name already exists (409: someone else
    /// created it first; observe it again).
    pub async fn create_lease(&self, lease: &Lease) -> Result<Option<Lease>> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        match self.leases.create(&PostParams::default(), lease).await {
            Ok(l) => Ok(Some(l)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(self.explain_on(e, Resource::Leases, "create", &name)),
        }
    }

    /// Replaces the Lease (`PUT` with the `resourceVersion` the caller observed, carried in
    /// `lease.metadata`); `Ok(None)` on a 409 conflict: the Lease changed since it was observed.
    pub async fn replace_lease(&self, lease: &Lease) -> Result<Option<Lease>> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        match self
            .leases
            .replace(&name, &PostParams::default(), lease)
            .await
        {
            Ok(l) => Ok(Some(l)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(self.explain_on(e, Resource::Leases, "update", &name)),
        }
    }

    fn explain(&self, e: kube::Error, verb: &str, name: &str) -> Error {
        self.explain_on(e, Resource::Pods, verb, name)
    }

    fn explain_on(&self, e: kube::Error, resource: Resource, verb: &str, name: &str) -> Error {
        match &e {
            kube::Error::Api(s) if s.code == 403 => Error::Kube(forbidden_message_on(
                resource,
                verb,
                &self.namespace,
                &self.cluster,
                name,
            )),
            _ => Error::Kube(format!(
                "{verb} {}/{name} in namespace {}: {e}",
                resource.plural(),
                self.namespace
            )),
        }
    }
}

/// The kinds of object the agent calls the API about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Core `pods`.
    Pods,
    /// `coordination.k8s.io` `leases`.
    Leases,
    /// `apps` `statefulsets`.
    StatefulSets,
    /// Core `configmaps`.
    ConfigMaps,
}

/// What the cluster's record holds (the keys of [`contract::record`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterRecord {
    /// [`contract::record::STATE`], when set.
    pub state: Option<String>,
    /// The database system identifier the master recorded, when it did.
    pub system_identifier: Option<String>,
    /// The cluster id of that data (empty when the record names none).
    pub cluster_id: String,
    /// [`contract::record::REINIT_REPLACED`]: the opt-in `allowReinit` was used in place of
    /// this system identifier.
    pub reinit_replaced: Option<String>,
    /// [`contract::record::REINIT_SYSTEM_IDENTIFIER`]: the system that initialisation made.
    pub reinit_system_identifier: Option<String>,
    /// The ConfigMap is being deleted (kept by its finalizer): still the record.
    pub deleting: bool,
}

/// What a record says about the cluster's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordData<'a> {
    /// A new cluster, no data yet: the master may initialise one.
    New,
    /// The cluster has data: this database system.
    Data(&'a str),
    /// The cluster has data whose system identifier is not known (a record rebuilt by `deploy`).
    DataExpected,
    /// The record says neither (no state): nothing proves the cluster never had data.
    Unknown,
}

impl ClusterRecord {
    /// The record from the ConfigMap's data (empty values count as absent).
    pub fn from_data(data: &std::collections::BTreeMap<String, String>, deleting: bool) -> Self {
        let get = |k: &str| data.get(k).filter(|v| !v.is_empty()).cloned();
        ClusterRecord {
            state: get(contract::record::STATE),
            system_identifier: get(contract::record::SYSTEM_IDENTIFIER),
            cluster_id: get(contract::record::CLUSTER_ID).unwrap_or_default(),
            reinit_replaced: get(contract::record::REINIT_REPLACED),
            reinit_system_identifier: get(contract::record::REINIT_SYSTEM_IDENTIFIER),
            deleting,
        }
    }

    /// What the record says about the cluster's data: a system identifier wins (records made
    /// before the state key hold only that); then the state; anything else is unknown.
    pub fn data(&self) -> RecordData<'_> {
        if let Some(id) = &self.system_identifier {
            return RecordData::Data(id);
        }
        match self.state.as_deref() {
            Some(contract::record::STATE_NEW) => RecordData::New,
            Some(contract::record::STATE_DATA_EXPECTED) => RecordData::DataExpected,
            _ => RecordData::Unknown,
        }
    }
}

/// The record ConfigMap's name (the same as `ClusterSpec::record_name`).
pub fn record_name(cluster: &str) -> String {
    pgset_spec::ClusterSpec {
        name: cluster.to_string(),
        ..Default::default()
    }
    .record_name()
}

impl Resource {
    /// The resource's plural name, as in a Role rule.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Leases => "leases",
            Resource::StatefulSets => "statefulsets",
            Resource::ConfigMaps => "configmaps",
        }
    }

    /// How a Role names the API group.
    fn group(self) -> &'static str {
        match self {
            Resource::Pods => "the core API group",
            Resource::Leases => "API group `coordination.k8s.io`",
            Resource::StatefulSets => "API group `apps`",
            Resource::ConfigMaps => "the core API group",
        }
    }

    /// The verbs the agent's Role grants on the resource.
    fn verbs(self) -> &'static str {
        match self {
            Resource::Pods => "[get, patch]",
            Resource::Leases => "[get, update] on the member Leases and [create]",
            Resource::StatefulSets => "[get] on the cluster's StatefulSet",
            Resource::ConfigMaps => "[get, patch] on the cluster's record ConfigMap",
        }
    }
}

/// The server-side apply body that sets only the role label.
pub fn role_patch(name: &str, role: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { contract::labels::ROLE: role } }
    })
}

/// The merge patch that sets only the phase annotation and the base-backup reading (`null`,
/// which removes it, when there is none: no reading outlives the copy it measured).
pub fn phase_patch(
    phase: contract::MemberPhase,
    copied: Option<&contract::BaseBackupReading>,
) -> serde_json::Value {
    json!({ "metadata": { "annotations": {
        contract::annotations::PHASE: phase.as_str(),
        contract::annotations::BASE_BACKUP: copied.map(|r| r.to_annotation()),
    } } })
}

/// The merge patch that sets only the member's data identity annotation.
pub fn identity_patch(cluster_id: &str, system_identifier: &str) -> serde_json::Value {
    let value = json!({ "clusterId": cluster_id, "systemIdentifier": system_identifier });
    json!({ "metadata": { "annotations": {
        contract::record::POD_IDENTITY_ANNOTATION: value.to_string(),
    } } })
}

/// The merge patch that sets only the member's loaded-TLS annotation.
pub fn tls_loaded_patch(loaded: &serde_json::Value) -> serde_json::Value {
    json!({ "metadata": { "annotations": {
        contract::tls::LOADED_ANNOTATION: loaded.to_string(),
    } } })
}

/// What to tell the user when the API forbids a call on a pod: which verb the Role lacks.
pub fn forbidden_message(verb: &str, namespace: &str, cluster: &str, name: &str) -> String {
    forbidden_message_on(Resource::Pods, verb, namespace, cluster, name)
}

/// What to tell the user when the API forbids a call: which verb on which resource the Role lacks.
pub fn forbidden_message_on(
    resource: Resource,
    verb: &str,
    namespace: &str,
    cluster: &str,
    name: &str,
) -> String {
    let spec = pgset_spec::ClusterSpec {
        name: cluster.to_string(),
        ..Default::default()
    };
    let plural = resource.plural();
    format!(
        "forbidden: the service account may not `{verb}` {plural} ({plural}/{name} in namespace \
         {namespace}); the Role `{}` must grant verbs {} on resource `{plural}` in {}, bound to \
         the service account `{}` (pgset's `deploy` command applies its Role)",
        spec.role_name(),
        resource.verbs(),
        resource.group(),
        spec.service_account_name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_is_bounded_well_under_the_fences_deadlines() {
        assert_eq!(CALL_BOUND, CONNECT_TIMEOUT + READ_TIMEOUT + WRITE_TIMEOUT);
        let shortest = crate::fence::loss_after(crate::fence::lease_duration_for_grace(0));
        assert_eq!(shortest, Duration::from_secs(20));
        assert!(CALL_BOUND * 2 <= shortest, "{shortest:?}");
    }

    #[test]
    fn patch_sets_only_the_role_label() {
        let p = role_patch("pgset-0", "master");
        assert_eq!(p["metadata"]["labels"], json!({"role": "master"}));
        assert_eq!(p["kind"], "Pod");
    }

    #[test]
    fn the_tls_loaded_patch_sets_only_its_annotation() {
        let loaded = json!({"caBundle": "aa", "certs": "bb"});
        assert_eq!(
            tls_loaded_patch(&loaded),
            json!({ "metadata": { "annotations": {
                "pgset.io/tls-loaded": r#"{"caBundle":"aa","certs":"bb"}"#
            } } })
        );
    }

    #[test]
    fn forbidden_names_verb_resource_and_role() {
        let m = forbidden_message("patch", "db", "pgset", "pgset-1");
        assert!(
            m.contains("`patch` pods") && m.contains("pgset-agent") && m.contains("namespace db"),
            "{m}"
        );
        let m = forbidden_message_on(Resource::Leases, "update", "db", "pgset", "pgset-1-member");
        assert!(
            m.contains("`update` leases (leases/pgset-1-member")
                && m.contains("`coordination.k8s.io`"),
            "{m}"
        );
        let m = forbidden_message_on(Resource::StatefulSets, "get", "db", "pgset", "pgset");
        assert!(
            m.contains("`get` statefulsets") && m.contains("API group `apps`"),
            "{m}"
        );
    }
}
