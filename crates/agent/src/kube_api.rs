//! The agent's two API calls in a cluster, made with the pod's service account: label its own pod
//! `role=master|replica` (server-side apply, field manager `pgset`), and ask whether a member's pod
//! still exists (so the primary can drop the slot of a member that was scaled away).
//! The API host comes from KUBERNETES_SERVICE_HOST (an IP): the agent never resolves DNS names.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use pgset_spec::contract;
use serde_json::json;

use crate::{Error, Result};

/// A client for the pod's own namespace.
#[derive(Clone)]
pub struct PodApi {
    pods: Api<Pod>,
    sets: Api<StatefulSet>,
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
        let client = Client::try_from(config)
            .map_err(|e| Error::Kube(format!("building the client: {e}")))?;
        Ok(PodApi::with_client(client, namespace, cluster))
    }

    /// A client over an existing connection (tests use a mock service).
    pub fn with_client(client: Client, namespace: &str, cluster: &str) -> PodApi {
        PodApi {
            pods: Api::namespaced(client.clone(), namespace),
            sets: Api::namespaced(client, namespace),
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

    /// Whether the pod `name` exists.
    pub async fn pod_exists(&self, name: &str) -> Result<bool> {
        match self.pods.get_opt(name).await {
            Ok(p) => Ok(p.is_some()),
            Err(e) => Err(self.explain(e, "get", name)),
        }
    }

    /// The StatefulSet's `spec.replicas`: a member at or above it was scaled away.
    pub async fn statefulset_replicas(&self) -> Result<i32> {
        let set = self.sets.get(&self.cluster).await.map_err(|e| {
            Error::Kube(format!(
                "get statefulsets/{} in namespace {}: {e}",
                self.cluster, self.namespace
            ))
        })?;
        Ok(set.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    fn explain(&self, e: kube::Error, verb: &str, name: &str) -> Error {
        match &e {
            kube::Error::Api(s) if s.code == 403 => Error::Kube(forbidden_message(
                verb,
                &self.namespace,
                &self.cluster,
                name,
            )),
            _ => Error::Kube(format!(
                "{verb} pods/{name} in namespace {}: {e}",
                self.namespace
            )),
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

/// What to tell the user when the API forbids a call: which verb on which resource the Role lacks.
pub fn forbidden_message(verb: &str, namespace: &str, cluster: &str, name: &str) -> String {
    let spec = pgset_spec::ClusterSpec {
        name: cluster.to_string(),
        ..Default::default()
    };
    format!(
        "forbidden: the service account may not `{verb}` pods (pods/{name} in namespace {namespace}); \
         the Role `{}` must grant verbs [get, patch] on resource `pods` in the core API group, \
         bound to the service account `{}`",
        spec.role_name(),
        spec.service_account_name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_only_the_role_label() {
        let p = role_patch("pgset-0", "master");
        assert_eq!(p["metadata"]["labels"], json!({"role": "master"}));
        assert_eq!(p["kind"], "Pod");
    }

    #[test]
    fn forbidden_names_verb_resource_and_role() {
        let m = forbidden_message("patch", "db", "pgset", "pgset-1");
        assert!(
            m.contains("`patch` pods") && m.contains("pgset-agent") && m.contains("namespace db"),
            "{m}"
        );
    }
}
