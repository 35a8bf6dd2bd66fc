//! Kubernetes objects of a pgset cluster, built purely from a `ClusterSpec`, and the thin edge
//! that applies them, waits for the rollout, scales and tears down.
//!
//! The builders ([`rbac`], [`isolation`], [`secret`], [`services`], [`storage`], [`statefulset`]) are pure
//! functions of a validated [`ClusterSpec`]; [`ClusterObjects::build`] gathers them. Only
//! [`apply`], [`isolation`]'s edge, [`rollout`], [`scale`] and [`teardown`] hold a
//! [`kube::Client`].

pub mod apply;
pub mod isolation;
pub mod master;
pub mod mount_probe;
pub mod network;
pub mod nodes;
pub mod preflight;
pub mod rbac;
pub mod readiness;
pub mod record;
pub mod render;
pub mod rollout;
pub mod scale;
pub mod secret;
pub mod services;
pub mod statefulset;
pub mod storage;
pub mod switchover;
pub mod teardown;
pub mod tls;
pub mod wait;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};

/// Errors of the Kubernetes edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("{action} {kind} {name} in namespace {namespace}")]
    Api {
        /// What was being done (`apply`, `get`, `delete`, ...).
        action: &'static str,
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object (or the label selector of a list).
        name: String,
        /// Namespace (`-` for cluster-scoped objects).
        namespace: String,
        /// The client's error, with the API server's message.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret exists but lacks a key pgset needs; it is never modified by pgset.
    #[error(
        "Secret {name} exists but has no non-empty key {key:?}; pgset never overwrites a Secret: add the key (kubectl edit secret {name}) or, if no data was ever created with it, delete it (kubectl delete secret {name}) and deploy again"
    )]
    SecretIncomplete {
        /// Secret name.
        name: String,
        /// The missing key.
        key: &'static str,
    },
    /// The operating system's random source failed.
    #[error("generate the Secret's passwords and cluster id: {0}")]
    Random(#[from] pgset_spec::random::RandomError),
    /// The StatefulSet exists with a field Kubernetes does not let change (the claim template,
    /// the selector, the service name), e.g. after switching storage modes.
    #[error(
        "StatefulSet {name} in namespace {namespace} exists with fields that cannot change (claim template, selector or service name, e.g. after changing the storage mode): take the cluster down (scale to 0 and delete the StatefulSet; claims and data stay), then deploy again"
    )]
    StatefulSetImmutable {
        /// StatefulSet name.
        name: String,
        /// Namespace.
        namespace: String,
        /// The API server's refusal.
        #[source]
        source: Box<kube::Error>,
    },
    /// PersistentVolumes with this cluster's names are reserved for, or bound to, claims that
    /// are not this cluster's. Judged before any volume is applied: nothing was changed.
    #[error(
        "{}. pgset changed nothing. Keep these volumes: deleting one frees no directory, and the pods of the claim holding it may be using this cluster's data. Stop the cluster that owns that claim (the claim's namespace and cluster name), check which data directories it wrote, release the volume (once that claim is gone, remove the volume's spec.claimRef), then run this again; the section \"Several clusters on one NFS host\" of docs/guide.md explains the layout",
        held.join("; ")
    )]
    VolumesHeldElsewhere {
        /// One sentence per volume: its name, its NFS source, the claim holding it, the claim
        /// it is reserved for.
        held: Vec<String>,
    },
    /// A volume no claim holds could not be applied (its NFS source cannot change).
    #[error(
        "apply PersistentVolume {name}: no claim holds it, and its NFS server and path cannot change once created: if the server or export moved, delete this volume (`kubectl delete pv {name}`; the data on the export stays) and run this again"
    )]
    VolumeApply {
        /// The volume.
        name: String,
        /// The API server's refusal.
        #[source]
        source: Box<kube::Error>,
    },
    /// The shared claim exists with fields that cannot change: its storage class, or the
    /// volume it is bound to (a claim made before each cluster had its own volume).
    #[error(
        "PersistentVolumeClaim {name} in namespace {namespace} exists with fields that cannot change: its storage class, or the volume it is bound to is not {volume} (a claim made before every cluster had its own volume may hold the default cluster's pv1..pvN and its directories); nothing after the claim was applied. Keep the claim and its data: see the section \"Several clusters on one NFS host\" of docs/guide.md"
    )]
    ClaimImmutable {
        /// Claim name.
        name: String,
        /// Namespace.
        namespace: String,
        /// The volume the spec names for it.
        volume: String,
        /// The API server's refusal.
        #[source]
        source: Box<kube::Error>,
    },
    /// A scale to fewer members would remove the master.
    #[error(
        "scaling to {replicas} member(s) would remove the master {master} (ordinal {ordinal}): move the master to a member below {replicas} first; nothing was changed"
    )]
    MasterWouldBeRemoved {
        /// The master's pod name.
        master: String,
        /// Its ordinal.
        ordinal: i32,
        /// The members asked for.
        replicas: i32,
    },
    /// A switchover or failover request that is refused before anything is written: why, and
    /// what to fix.
    #[error("{0}; nothing was changed")]
    SwitchoverRefused(String),
    /// The cluster's TLS material cannot be used as it is: what is wrong and what fixes it.
    #[error("{0}")]
    Tls(String),
    /// `agent.delivery: image` on a node whose runtime cannot run the agent from an image
    /// volume.
    #[error(
        "agent.delivery is image, but node(s) {nodes} cannot run the agent from an image volume (it needs containerd 2.1 or later; CRI-O mounts image volumes noexec): use agent.delivery: copy; nothing was changed"
    )]
    NoImageVolumes {
        /// `name (runtime)`, comma-separated.
        nodes: String,
    },
    /// The StatefulSet to scale does not exist.
    #[error("StatefulSet {name} not found in namespace {namespace}: deploy the cluster first")]
    NotDeployed {
        /// StatefulSet name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// A watch the wait rests on failed.
    #[error("watch {kind} {name} in namespace {namespace}")]
    Watch {
        /// Kind of the objects watched.
        kind: &'static str,
        /// Name of the object (or the label selector of the watched set).
        name: String,
        /// Namespace (`-` for cluster-scoped objects).
        namespace: String,
        /// The watcher's error, with the API server's message.
        #[source]
        source: Box<kube::runtime::watcher::Error>,
    },
    /// A wait ran out of time.
    #[error("timed out after {}s waiting for {what}: {status}", waited.as_secs())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
        /// The state found when the time ran out (pod, condition, container reason, last event).
        status: String,
    },
    /// A name the mount probe needs is taken by an object that is not a mount probe's.
    #[error(
        "{kind} {name} exists and is not pgset's mount probe (no label app.kubernetes.io/component=mount-probe): the probe changed nothing; rename or remove that object, or skip the probe with --no-mount-probe"
    )]
    ProbeNameTaken {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Some of the mount probe's objects could not be removed.
    #[error(
        "the mount probe could not remove what it made: {}; remove them with `kubectl delete pod,pvc -n {namespace} -l {selector}` and `kubectl delete pv -l {selector}` (the export's data is never touched: the volumes are Retain)",
        left.join("; ")
    )]
    ProbeLeftovers {
        /// What is left, with why.
        left: Vec<String>,
        /// Namespace of the pods and claims.
        namespace: String,
        /// The probe's label selector.
        selector: String,
    },
    /// The run was interrupted (Ctrl-C); what it made was removed.
    #[error("{what} was interrupted; the objects it made were removed")]
    Interrupted {
        /// What was interrupted.
        what: String,
    },
    /// A node's InternalIP is not an IP address, so neither the export's clients nor the
    /// volumes' server can be derived from the nodes.
    #[error(
        "node {node} has an InternalIP {address:?} that is not an IP address: pass --clients and --nfs-server"
    )]
    NodeAddress {
        /// The node's name.
        node: String,
        /// The address as the node reports it.
        address: String,
    },
    /// An object could not be written as YAML.
    #[error("write {kind} {name} as YAML: {message}")]
    Yaml {
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object.
        name: String,
        /// The serializer's message.
        message: String,
    },
}

impl Error {
    /// An [`Error::Api`] for `action` on `kind` `name` in `namespace`.
    pub(crate) fn api(
        action: &'static str,
        kind: &'static str,
        name: impl Into<String>,
        namespace: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Error {
        let (name, namespace) = (name.into(), namespace.into());
        move |source| Error::Api {
            action,
            kind,
            name,
            namespace,
            source: Box::new(source),
        }
    }

    /// An [`Error::Watch`] for watching `kind` `name` in `namespace`.
    pub(crate) fn watch(
        kind: &'static str,
        name: impl Into<String>,
        namespace: impl Into<String>,
    ) -> impl FnMut(kube::runtime::watcher::Error) -> Error + Send + 'static {
        let (name, namespace) = (name.into(), namespace.into());
        move |source| Error::Watch {
            kind,
            name: name.clone(),
            namespace: namespace.clone(),
            source: Box::new(source),
        }
    }

    /// True when the API server answered 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source, .. } if is_status(source, 404))
    }
}

/// True when `error` is an API answer with HTTP status `code`.
pub(crate) fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Result with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every object pgset applies with server-side apply, built from one spec.
///
/// The Secret is not here: its content depends on the cluster (get-or-create, never
/// overwritten), see [`apply::ensure_secret`]. Where the objects are applied, this struct is
/// destructured without `..`, so an object added here and never applied fails to compile.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterObjects {
    /// `<name>-sa`, the pods' identity towards the API.
    pub service_account: ServiceAccount,
    /// `<name>-agent`: get/patch on the member pods.
    pub role: Role,
    /// `<name>-agent`: binds the Role to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// `pgset-<namespace>-<name>-members` (cluster-scoped): each member's token acts only as
    /// its own pod; applied only where the API server serves it.
    pub member_policy: ValidatingAdmissionPolicy,
    /// `pgset-<namespace>-<name>-members` (cluster-scoped): the policy, in the namespace only.
    pub member_policy_binding: ValidatingAdmissionPolicyBinding,
    /// `<name>-record`: the cluster's record, filled by the master's agent.
    pub cluster_record: ConfigMap,
    /// `<name>`, headless: stable per-pod DNS names.
    pub headless_service: Service,
    /// `<name>-master`: the pod labelled role=master.
    pub master_service: Service,
    /// `<name>-replica`: the pods labelled role=replica.
    pub replica_service: Service,
    /// `<name>-pvc` in shared mode; `None` in templates mode.
    pub shared_claim: Option<PersistentVolumeClaim>,
    /// `<name>`: the members.
    pub statefulset: StatefulSet,
    /// `<name>-cert-renewal` with `tls.mode: auto`: the daily job that renews the certificates,
    /// its own ServiceAccount, Role and RoleBinding.
    pub cert_renewal: Option<tls::renewal::CertRenewal>,
}

impl ClusterObjects {
    /// Builds every object from a validated spec.
    pub fn build(spec: &ValidSpec) -> ClusterObjects {
        ClusterObjects {
            service_account: rbac::service_account(spec),
            role: rbac::role(spec),
            role_binding: rbac::role_binding(spec),
            member_policy: isolation::policy(spec),
            member_policy_binding: isolation::binding(spec),
            cluster_record: record::cluster_record(spec),
            headless_service: services::headless(spec),
            master_service: services::master(spec),
            replica_service: services::replica(spec),
            shared_claim: match spec.storage.mode {
                StorageMode::Shared => Some(storage::shared_claim(spec)),
                StorageMode::Templates => None,
            },
            statefulset: statefulset::statefulset(spec),
            cert_renewal: tls::renewal::objects(spec),
        }
    }
}

/// A namespaced k8s-openapi object the edge can read, apply and delete.
pub trait NamespacedObject:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Clone
    + std::fmt::Debug
{
}

impl<K> NamespacedObject for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
{
}

/// Turns `(key, value)` label pairs into the map Kubernetes objects carry.
pub(crate) fn label_map(pairs: Vec<(&'static str, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Metadata of a namespaced object of this cluster: name, namespace, common labels.
pub(crate) fn object_meta(spec: &ClusterSpec, name: impl Into<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(spec.namespace.clone()),
        labels: Some(label_map(spec.common_labels())),
        ..ObjectMeta::default()
    }
}

/// The label selector string (`k=v,k=v`) of this cluster's pods and claims.
pub fn selector_string(spec: &ClusterSpec) -> String {
    spec.selector_labels()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
pub(crate) mod testutil;
