//! `doctor`'s per-node mount probe: on every schedulable Ready node, a short-lived pod mounts
//! the cluster's export directory through a PersistentVolume and claim made for it (NFS,
//! `hard`, the spec's `nfsvers`, read-only), lists it as the postgres uid and exits; the pods,
//! claims and volumes it made are always removed afterwards.
//!
//! The objects ([`probe_objects`]), the choice of nodes ([`probe_nodes`]) and the verdict on a
//! finished pod ([`verdict`]) are pure; [`probe_mounts`] holds the client. Nothing but the
//! probe's own objects is ever written: a name that is taken by anything else stops the probe
//! before it creates anything. [`proof`] keeps what a probe proved, so a run that finds the same
//! volumes, export and nodes skips it.

pub mod proof;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, Event, Node, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::wait::{Condition, conditions};
use kube::{Api, Client, Resource, ResourceExt};
use pgset_nfs::{Diagnosis, Health};
use pgset_spec::contract::{self, APP_NAME, components, labels};
use pgset_spec::{ClusterSpec, ValidSpec};

use crate::readiness::{KeptOff, node_keeps_members_off};
use crate::rollout::{describe_pod, shorten};
use crate::statefulset::{restricted_security_context, runtime_default_seccomp};
use crate::wait::until_object;
use crate::{Error, Result};

/// How long a probe pod may take to mount, list and exit (image pull included) by default.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the removal of the probe's objects is awaited.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The probe container's name.
pub const PROBE_CONTAINER: &str = "mount-probe";
/// The diagnosis name of a node's mount probe.
pub const DIAGNOSIS: &str = "node-mount";
/// Annotation naming the node a probe object belongs to (the names carry only a hash).
pub const NODE_ANNOTATION: &str = "pgset.io/probe-node";
/// The volume's name inside the probe pod.
const VOLUME: &str = "export";

/// The objects that probe one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeProbe {
    /// The node.
    pub node: String,
    /// `<namespace>.<name>-doctor-<hash>`, pre-bound to [`NodeProbe::claim`].
    pub volume: PersistentVolume,
    /// `<name>-doctor-<hash>` in the cluster's namespace, bound to [`NodeProbe::volume`].
    pub claim: PersistentVolumeClaim,
    /// `<name>-doctor-<hash>` on the node, mounting the claim read-only.
    pub pod: Pod,
}

/// What the probe found on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMount {
    /// The node.
    pub node: String,
    /// The pod mounted the export and listed it.
    pub mounted: bool,
    /// What was seen: the pod's outcome, its reason and its events when it failed.
    pub detail: String,
}

/// How a probe pod ended, from its status alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It mounted the export and listed it.
    Mounted,
    /// It ended without listing the export, with why.
    Failed(String),
    /// It has not finished (yet), with its state.
    Unfinished(String),
}

/// The probe's labels: managed by pgset, the cluster's instance, component `mount-probe`; never
/// the cluster's selector (no `app.kubernetes.io/name`), so no StatefulSet adopts a probe pod
/// and no Service or teardown of the cluster's pods selects it.
pub fn probe_labels(spec: &ClusterSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED_BY.to_string(), APP_NAME.to_string()),
        (labels::INSTANCE.to_string(), spec.name.clone()),
        (
            labels::COMPONENT.to_string(),
            components::MOUNT_PROBE.to_string(),
        ),
    ])
}

/// The label selector of a cluster's probe objects (`kubectl delete pod,pvc,pv -l ...`).
pub fn probe_selector(spec: &ClusterSpec) -> String {
    probe_labels(spec)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A short, stable hash of a node name (FNV-1a, 32 bits, hex): node names may be long and
/// dotted, object names must stay short.
pub fn node_hash(node: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in node.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// Name of a node's probe pod and claim: `<name>-doctor-<hash>`.
pub fn probe_name(spec: &ClusterSpec, node: &str) -> String {
    format!("{}-doctor-{}", spec.name, node_hash(node))
}

/// Name of a node's probe volume: `<namespace>.<name>-doctor-<hash>`. The '.' keeps it apart
/// from the default cluster's volumes, and `-doctor-` from every other cluster's
/// (`<namespace>.<name>-pvc`, `<namespace>.data-<name>-N`).
pub fn probe_volume_name(spec: &ClusterSpec, node: &str) -> String {
    format!("{}.{}", spec.namespace, probe_name(spec, node))
}

/// The nodes a probe runs on: Ready, not cordoned, without a taint that keeps the members
/// off (`NoSchedule`, `NoExecute`; kubeadm's control-plane taint only when the spec does not
/// tolerate it). The others are returned with why they are left out.
pub fn probe_nodes(nodes: &[Node], spec: &ClusterSpec) -> (Vec<String>, Vec<(String, String)>) {
    let mut on = Vec::new();
    let mut off = Vec::new();
    for node in nodes {
        let name = node.name_any();
        let why: Vec<String> = node_keeps_members_off(node, spec.tolerate_control_plane)
            .into_iter()
            .map(|kept| match kept {
                KeptOff::NotReady => "not Ready".to_string(),
                KeptOff::Cordoned => "cordoned".to_string(),
                KeptOff::Tainted(taints) => format!("tainted {}", taints.join(", ")),
            })
            .collect();
        if why.is_empty() {
            on.push(name);
        } else {
            off.push((name, why.join(", ")));
        }
    }
    (on, off)
}

/// The probe's volume, claim and pod for one node. Pure.
///
/// The pod runs on `node` (`nodeName`), as the postgres uid with the members' restricted
/// security context, mounts the claim read-only at the data mount and only lists it; it
/// never restarts, and ends itself after `deadline` should nobody be left to remove it.
pub fn probe_objects(
    spec: &ClusterSpec,
    server: &str,
    node: &str,
    deadline: Duration,
) -> NodeProbe {
    let name = probe_name(spec, node);
    let labels = probe_labels(spec);
    let meta = |name: String, namespace: Option<String>| ObjectMeta {
        name: Some(name),
        namespace,
        labels: Some(labels.clone()),
        annotations: Some(BTreeMap::from([(
            NODE_ANNOTATION.to_string(),
            node.to_string(),
        )])),
        ..ObjectMeta::default()
    };
    let mut volume = pgset_nfs::probe_volume(
        spec,
        server,
        probe_volume_name(spec, node),
        name.clone(),
        labels.clone(),
    );
    volume.metadata = meta(probe_volume_name(spec, node), None);
    let claim = PersistentVolumeClaim {
        metadata: meta(name.clone(), Some(spec.namespace.clone())),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadOnlyMany".into()]),
            storage_class_name: Some(spec.storage_class_name()),
            volume_name: Some(probe_volume_name(spec, node)),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(pgset_nfs::PROBE_SIZE.into()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    };
    let small = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])
    };
    let pod = Pod {
        metadata: meta(name.clone(), Some(spec.namespace.clone())),
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX)),
            termination_grace_period_seconds: Some(1),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(spec.postgres.uid),
                run_as_group: Some(spec.postgres.gid),
                run_as_non_root: Some(true),
                seccomp_profile: Some(runtime_default_seccomp()),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: PROBE_CONTAINER.into(),
                image: Some(spec.postgres.image.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec![
                    "ls".into(),
                    "-la".into(),
                    "--".into(),
                    contract::DATA_MOUNT.into(),
                ]),
                security_context: Some(restricted_security_context(spec)),
                // `ls`'s complaint becomes the termination message the verdict reads.
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(small("10m", "16Mi")),
                    limits: Some(small("100m", "64Mi")),
                    ..ResourceRequirements::default()
                }),
                volume_mounts: Some(vec![k8s_openapi::api::core::v1::VolumeMount {
                    name: VOLUME.into(),
                    mount_path: contract::DATA_MOUNT.into(),
                    read_only: Some(true),
                    ..Default::default()
                }]),
                ..Container::default()
            }],
            volumes: Some(vec![Volume {
                name: VOLUME.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: name,
                    read_only: Some(true),
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        status: None,
    };
    NodeProbe {
        node: node.to_string(),
        volume,
        claim,
        pod,
    }
}

/// The verdict on a probe pod from its status. Pure. `None`: the pod is gone.
pub fn verdict(pod: Option<&Pod>) -> Verdict {
    let Some(pod) = pod else {
        return Verdict::Failed(
            "the probe pod disappeared before it finished (deleted or evicted by someone else)"
                .into(),
        );
    };
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Verdict::Mounted,
        Some("Failed") => {
            let terminated = status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .find(|c| c.name == PROBE_CONTAINER)
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref());
            let mut why = match terminated {
                Some(t) => {
                    let mut s = format!(
                        "the probe exited {} ({})",
                        t.exit_code,
                        t.reason.as_deref().unwrap_or("no reason")
                    );
                    if let Some(m) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
                        s.push_str(&format!(": {}", shorten(m)));
                    }
                    s
                }
                None => "the pod failed before its container ran".to_string(),
            };
            if let Some(reason) = status.and_then(|s| s.reason.as_deref()) {
                why.push_str(&format!("; pod {reason}"));
                if let Some(m) = status.and_then(|s| s.message.as_deref()) {
                    why.push_str(&format!(": {}", shorten(m)));
                }
            }
            Verdict::Failed(why)
        }
        _ => Verdict::Unfinished(describe_pod(pod)),
    }
}

/// True once the pod has finished (either way) or is gone.
fn finished() -> impl Condition<Pod> {
    |pod: Option<&Pod>| {
        pod.is_none_or(|p| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
    }
}

/// One finding per probed node, for `doctor`'s report.
pub fn diagnoses(spec: &ClusterSpec, server: &str, found: &[NodeMount]) -> Vec<Diagnosis> {
    let dir = spec.cluster_export_dir();
    let uid = spec.postgres.uid;
    found
        .iter()
        .map(|m| {
            if m.mounted {
                Diagnosis {
                    name: DIAGNOSIS,
                    health: Health::Pass,
                    message: format!(
                        "node {}: a pod mounted {server}:{} (hard, nfsvers={}) and listed it as uid {uid}",
                        m.node,
                        dir.display(),
                        spec.nfs.version
                    ),
                    fix: None,
                    docs: None,
                }
            } else {
                Diagnosis {
                    name: DIAGNOSIS,
                    health: Health::Fail,
                    message: format!(
                        "node {}: a pod could not mount and list {server}:{}: {}",
                        m.node,
                        dir.display(),
                        m.detail
                    ),
                    fix: Some(format!(
                        "on node {node}: it must reach {server} over NFS (port 2049), have mount.nfs (nfs-utils / nfs-common), be among the export's clients (`exportfs -v` on the NFS host lists them; `{program} nfs --clients` sets them), and {dir} must be owned by uid {uid} (`{program} nfs`); `kubectl describe pod` of a pod on {node} shows the kubelet's mount error",
                        node = m.node,
                        dir = dir.display(),
                        program = pgset_spec::contract::program_name(),
                    )),
                    docs: Some(pgset_nfs::DOCS_NFS),
                }
            }
        })
        .collect()
}

/// Kinds of the probe's objects, in the order they are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Pod,
    Claim,
    Volume,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Claim => "PersistentVolumeClaim",
            Kind::Volume => "PersistentVolume",
        }
    }
}

/// An object the probe made, is making (no uid yet: the answer may not have arrived when the
/// run was interrupted) or found of its own, to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Made {
    kind: Kind,
    name: String,
    uid: Option<String>,
}

impl Made {
    fn new(kind: Kind, name: String, uid: Option<String>) -> Made {
        Made { kind, name, uid }
    }
}

/// Runs the probe on `nodes`: judges that no name is taken by anything but a probe, removes a
/// previous run's leftovers, creates each node's volume, claim and pod, waits (at most
/// `timeout` per pod, all in parallel) for each pod to finish, reads why a pod failed, and
/// removes everything it made, whatever happened, also when `interrupted` completes first
/// (then the result is [`Error::Interrupted`]).
pub async fn probe_mounts(
    client: &Client,
    spec: &ValidSpec,
    server: &str,
    nodes: &[String],
    timeout: Duration,
    interrupted: impl Future<Output = ()>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<NodeMount>> {
    let ns = spec.namespace.as_str();
    let deadline = timeout + CLEANUP_TIMEOUT;
    let probes: Vec<NodeProbe> = nodes
        .iter()
        .map(|n| probe_objects(spec, server, n, deadline))
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());

    // Judge every name before anything is written.
    let mut leftovers = Vec::new();
    for p in &probes {
        let name = p.pod.name_any();
        let vname = p.volume.name_any();
        if let Some(uid) = own_or_refuse(&pods, &name, ns, Kind::Pod.name()).await? {
            leftovers.push(Made::new(Kind::Pod, name.clone(), Some(uid)));
        }
        if let Some(uid) = own_or_refuse(&claims, &name, ns, Kind::Claim.name()).await? {
            leftovers.push(Made::new(Kind::Claim, name.clone(), Some(uid)));
        }
        if let Some(uid) = own_or_refuse(&volumes, &vname, "-", Kind::Volume.name()).await? {
            leftovers.push(Made::new(Kind::Volume, vname, Some(uid)));
        }
    }
    if !leftovers.is_empty() {
        progress(&format!(
            "removing {} object(s) a previous mount probe left",
            leftovers.len()
        ));
        remove(client, spec, &leftovers).await?;
    }

    let mut made: Vec<Made> = Vec::new();
    let work = async {
        for p in &probes {
            // Each object is recorded before it is asked for, so an interruption between the
            // request and its answer still removes it.
            made.push(Made::new(Kind::Volume, p.volume.name_any(), None));
            let v = volumes
                .create(&PostParams::default(), &p.volume)
                .await
                .map_err(Error::api(
                    "create",
                    "PersistentVolume",
                    p.volume.name_any(),
                    "-",
                ))?;
            if let Some(m) = made.last_mut() {
                m.uid = v.uid();
            }
            made.push(Made::new(Kind::Claim, p.claim.name_any(), None));
            let c = claims
                .create(&PostParams::default(), &p.claim)
                .await
                .map_err(Error::api(
                    "create",
                    "PersistentVolumeClaim",
                    p.claim.name_any(),
                    ns,
                ))?;
            if let Some(m) = made.last_mut() {
                m.uid = c.uid();
            }
            made.push(Made::new(Kind::Pod, p.pod.name_any(), None));
            let pod = pods
                .create(&PostParams::default(), &p.pod)
                .await
                .map_err(Error::api("create", "Pod", p.pod.name_any(), ns))?;
            if let Some(m) = made.last_mut() {
                m.uid = pod.uid();
            }
            progress(&format!(
                "node {}: pod {}/{} mounts {server}:{}",
                p.node,
                ns,
                pod.name_any(),
                spec.cluster_export_dir().display()
            ));
        }
        let waits = probes.iter().map(|p| {
            let api = pods.clone();
            let name = p.pod.name_any();
            async move {
                let waited =
                    tokio::time::timeout(timeout, until_object(api.clone(), &name, finished()))
                        .await;
                let outcome = match waited {
                    Ok(Ok(pod)) => verdict(pod.as_ref()),
                    Ok(Err(e)) => Verdict::Unfinished(format!("watching the pod failed: {e}")),
                    Err(_) => match api.get_opt(&name).await {
                        Ok(pod) => match verdict(pod.as_ref()) {
                            Verdict::Unfinished(state) => Verdict::Unfinished(format!(
                                "not finished after {}s: {state}",
                                timeout.as_secs()
                            )),
                            other => other,
                        },
                        Err(e) => Verdict::Unfinished(format!(
                            "not finished after {}s, and reading it failed: {e}",
                            timeout.as_secs()
                        )),
                    },
                };
                (name, outcome)
            }
        });
        let outcomes = futures::future::join_all(waits).await;
        let mut found = Vec::new();
        for (p, (name, outcome)) in probes.iter().zip(outcomes) {
            let (mounted, mut detail) = match outcome {
                Verdict::Mounted => (true, "mounted and listed".to_string()),
                Verdict::Failed(why) | Verdict::Unfinished(why) => (false, why),
            };
            if !mounted {
                let events = pod_events(client, ns, &name).await;
                if !events.is_empty() {
                    detail.push_str(&format!("; events: {}", events.join("; ")));
                }
            }
            progress(&format!(
                "node {}: {}",
                p.node,
                if mounted { "mounted" } else { "failed" }
            ));
            found.push(NodeMount {
                node: p.node.clone(),
                mounted,
                detail,
            });
        }
        Ok::<_, Error>(found)
    };
    let outcome = tokio::select! {
        biased;
        () = interrupted => None,
        result = work => Some(result),
    };
    if !made.is_empty() {
        progress(&format!(
            "removing the mount probe's {} object(s)",
            made.len()
        ));
    }
    let removed = remove(client, spec, &made).await;
    match outcome {
        None => {
            removed?;
            Err(Error::Interrupted {
                what: "the mount probe".into(),
            })
        }
        Some(Err(e)) => {
            removed?;
            Err(e)
        }
        Some(Ok(found)) => {
            removed?;
            Ok(found)
        }
    }
}

/// Reads `name`: `None` when absent; its uid when it is a probe object of this kind (labelled
/// component `mount-probe` and managed by pgset); an error naming it when it is anything else.
async fn own_or_refuse<K>(
    api: &Api<K>,
    name: &str,
    namespace: &str,
    kind: &'static str,
) -> Result<Option<String>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let found = api
        .get_opt(name)
        .await
        .map_err(Error::api("get", kind, name, namespace))?;
    let Some(obj) = found else {
        return Ok(None);
    };
    let l = obj.meta().labels.clone().unwrap_or_default();
    let ours = l.get(labels::COMPONENT).map(String::as_str) == Some(components::MOUNT_PROBE)
        && l.get(labels::MANAGED_BY).map(String::as_str) == Some(APP_NAME);
    if ours {
        Ok(Some(obj.meta().uid.clone().unwrap_or_default()))
    } else {
        Err(Error::ProbeNameTaken {
            kind,
            name: name.to_string(),
        })
    }
}

/// Deletes what the probe made (pods, then claims, then volumes; each only with its own uid)
/// and waits until all are gone. An object whose creation was not answered is read first and
/// removed only when it is there and carries the probe's labels.
async fn remove(client: &Client, spec: &ClusterSpec, made: &[Made]) -> Result<()> {
    if made.is_empty() {
        return Ok(());
    }
    let ns = spec.namespace.as_str();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let mut order: Vec<Made> = made.to_vec();
    order.sort_by_key(|m| m.kind);
    let mut left = Vec::new();
    let mut deleted = Vec::new();
    for m in order {
        let what = format!("{} {}", m.kind.name(), m.name);
        let result = match m.kind {
            Kind::Pod => delete_own(&pods, &m.name, m.uid.as_deref(), ns).await,
            Kind::Claim => delete_own(&claims, &m.name, m.uid.as_deref(), ns).await,
            Kind::Volume => delete_own(&volumes, &m.name, m.uid.as_deref(), "-").await,
        };
        match result {
            Ok(Some(uid)) => deleted.push(Made::new(m.kind, m.name, Some(uid))),
            Ok(None) => {}
            Err(e) => left.push(format!("{what}: {e}")),
        }
    }
    let gone = async {
        for m in &deleted {
            let uid = m.uid.as_deref().unwrap_or_default();
            let waited = match m.kind {
                Kind::Pod => until_object(pods.clone(), &m.name, conditions::is_deleted(uid))
                    .await
                    .map(drop),
                Kind::Claim => until_object(claims.clone(), &m.name, conditions::is_deleted(uid))
                    .await
                    .map(drop),
                Kind::Volume => until_object(volumes.clone(), &m.name, conditions::is_deleted(uid))
                    .await
                    .map(drop),
            };
            if let Err(e) = waited {
                return Err(format!("{} {}: {e}", m.kind.name(), m.name));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(CLEANUP_TIMEOUT, gone).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => left.push(e),
        Err(_) => left.push(format!(
            "still present after {}s",
            CLEANUP_TIMEOUT.as_secs()
        )),
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::ProbeLeftovers {
            left,
            namespace: ns.to_string(),
            selector: probe_selector(spec),
        })
    }
}

/// Deletes `name` only if it has `uid` (when known) or, when not, only if it is a probe
/// object; returns the uid deleted, `None` when there was nothing of the probe's to delete.
async fn delete_own<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<&str>,
    namespace: &str,
) -> Result<Option<String>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let uid = match uid {
        Some(u) => u.to_string(),
        None => match own_or_refuse(api, name, namespace, "object").await {
            Ok(Some(u)) => u,
            Ok(None) | Err(Error::ProbeNameTaken { .. }) => return Ok(None),
            Err(e) => return Err(e),
        },
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(Some(uid)),
        Err(e) if crate::is_status(&e, 404) => Ok(None),
        Err(e) => Err(Error::api("delete", "object", name, namespace)(e)),
    }
}

/// The events about a pod, warnings first, as `Reason: message` (at most three).
async fn pod_events(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={name}"
    ));
    let Ok(list) = api.list(&params).await else {
        return Vec::new();
    };
    let mut events = list.items;
    events.sort_by_key(|e| e.type_.as_deref() != Some("Warning"));
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let line = format!(
            "{}: {}",
            e.reason.unwrap_or_default(),
            shorten(&e.message.unwrap_or_default())
        );
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out.truncate(3);
    out
}

#[cfg(test)]
mod tests;
