//! Preflight before anything changes: its facts (this host: root, OS family, `ctr`,
//! `mount.nfs`; the cluster: Kubernetes version, every node, the StorageClass the spec names)
//! and its judgement of them: which findings block a run and which are notes; for the nodes,
//! which can run the members and what keeps the others off, which lack a locally imported agent
//! image, and who mounts the export. Reading only; the judgement is pure and its findings are
//! data, which the command words.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use pgset_nfs::OsFamily;
use pgset_spec::contract::CONTROL_PLANE_TAINT;
use pgset_spec::image_ref::ImageReference;
use pgset_spec::{ClusterSpec, StorageMode, default_agent_image};

use crate::readiness::{self, KeptOff};

/// The kubelet's default `nodeStatusMaxImages`: a node reporting this many may have more.
pub const KUBELET_MAX_IMAGES: usize = 50;

/// One node as preflight sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Condition Ready is True.
    pub ready: bool,
    /// The Ready condition's message when not ready (kubelet says "cni plugin not initialized").
    pub message: String,
    /// Cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
    /// Taints that keep the pods off (`NoSchedule`, `NoExecute`), as `key[=value]:Effect`;
    /// the not-ready and unreachable taints are left out (Ready says that).
    pub taints: Vec<String>,
    /// The agent image is among the node's images (`status.images`, as the kubelet reports).
    pub has_agent_image: bool,
    /// How many images the kubelet reports (it reports at most its largest
    /// [`KUBELET_MAX_IMAGES`] by default, so a small image may be left out).
    pub images_reported: usize,
    /// The container runtime and its version (`status.nodeInfo.containerRuntimeVersion`, e.g.
    /// `containerd://2.1.4`).
    pub runtime: String,
}

/// A node as preflight sees it, read from its API object. Pure.
pub fn node_facts(node: &Node, agent_image: &str) -> NodeFacts {
    let name = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.as_ref();
    let ready_cond = readiness::node_ready_condition(node);
    let spec = node.spec.as_ref();
    let taints = readiness::member_taints(node);
    let wanted = ImageReference::parse(agent_image).map(|r| r.normalized());
    let images = status.and_then(|s| s.images.as_ref());
    let has_agent_image = images
        .into_iter()
        .flatten()
        .flat_map(|i| i.names.iter().flatten())
        .any(|n| wanted.is_some() && ImageReference::parse(n).map(|r| r.normalized()) == wanted);
    let images_reported = images.map_or(0, Vec::len);
    NodeFacts {
        name,
        ready: ready_cond.is_some_and(|c| c.status == "True"),
        message: ready_cond
            .and_then(|c| c.message.clone())
            .unwrap_or_default(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        taints,
        has_agent_image,
        images_reported,
        runtime: status
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.container_runtime_version.clone())
            .unwrap_or_default(),
    }
}

/// Whether a node's runtime (`containerd://2.1.4`) mounts image volumes so that a binary in
/// them runs: containerd 2.1 and later. CRI-O mounts them `noexec`; older containerd has none.
pub fn runs_from_image_volumes(runtime: &str) -> bool {
    let Some(version) = runtime.strip_prefix("containerd://") else {
        return false;
    };
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) >= (2, 1))
}

impl NodeFacts {
    /// What keeps the members off this node ([`readiness::keeps_members_off`]); empty when
    /// they can run here.
    pub fn kept_off(&self, tolerate_control_plane: bool) -> Vec<KeptOff> {
        readiness::keeps_members_off(
            self.ready,
            self.unschedulable,
            &self.taints,
            tolerate_control_plane,
        )
    }
}

/// What the node judgement knows about this host and this run besides the nodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostRole<'a> {
    /// This host's node name, when it is a node.
    pub node: Option<&'a str>,
    /// This host is one of the nodes.
    pub is_node: bool,
    /// The run imports the agent image into this host's containerd.
    pub imports_image: bool,
    /// `mount.nfs` is on this host.
    pub mount_nfs_here: bool,
    /// The run's NFS stage (which installs `mount.nfs` here) runs.
    pub nfs_stage: bool,
}

/// A node the members cannot run on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOff {
    /// Node name.
    pub name: String,
    /// What keeps the members off, in [`readiness::keeps_members_off`]'s order.
    pub kept_off: Vec<KeptOff>,
    /// The Ready condition's message (said with [`KeptOff::NotReady`]).
    pub message: String,
}

/// One finding about the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeFinding {
    /// The cluster has no nodes. A blocker.
    NoNodes,
    /// No node can run the members: every one would stay Pending. A blocker.
    NoneUsable {
        /// Every node, with what keeps the members off it.
        off: Vec<NodeOff>,
        /// A node is not Ready for want of a pod network (its message names the CNI).
        no_cni: bool,
        /// A node carries kubeadm's control-plane taint.
        control_plane_tainted: bool,
    },
    /// The members will not run on this node, but on others. A note.
    Off(NodeOff),
    /// A node that may run the members reports as many images as its kubelet reports at most,
    /// without the agent image: it may still have it. A note.
    ImageUnknown {
        /// Node name.
        node: String,
    },
    /// A node that may run the members lacks the locally imported agent image. A blocker.
    ImageMissing {
        /// Node name.
        node: String,
        /// The node is this host (whose image stage is skipped).
        here: bool,
    },
    /// `agent.delivery: image`, and a node that may run the members has a runtime that cannot
    /// run the agent from an image volume. A blocker.
    NoImageVolumes {
        /// Node name.
        node: String,
        /// Its runtime and version.
        runtime: String,
    },
    /// `mount.nfs` is missing on this node and no NFS stage installs it. A blocker.
    MountNfsMissingHere,
    /// Nodes other than this host that may run the members and so mount the export: each needs
    /// `mount.nfs` from its admin. A note.
    OthersMount {
        /// Their names.
        nodes: Vec<String>,
    },
}

impl NodeFinding {
    /// True when the finding stops `up` before any change; false for a note.
    pub fn is_blocker(&self) -> bool {
        match self {
            NodeFinding::NoNodes
            | NodeFinding::NoneUsable { .. }
            | NodeFinding::ImageMissing { .. }
            | NodeFinding::NoImageVolumes { .. }
            | NodeFinding::MountNfsMissingHere => true,
            NodeFinding::Off(_)
            | NodeFinding::ImageUnknown { .. }
            | NodeFinding::OthersMount { .. } => false,
        }
    }
}

/// The nodes: can any run the members, what keeps each one off, does each one that may run
/// them have the agent image when it is not pulled from a registry, and `mount.nfs`. The
/// findings come in the order to report them. Pure.
pub fn judge_nodes(
    spec: &ClusterSpec,
    nodes: &[NodeFacts],
    host: &HostRole<'_>,
) -> Vec<NodeFinding> {
    let mut out = Vec::new();
    if nodes.is_empty() {
        out.push(NodeFinding::NoNodes);
        return out;
    }
    let mut usable: Vec<&NodeFacts> = Vec::new();
    let mut off: Vec<NodeOff> = Vec::new();
    for n in nodes {
        let kept_off = n.kept_off(spec.tolerate_control_plane);
        if kept_off.is_empty() {
            usable.push(n);
        } else {
            off.push(NodeOff {
                name: n.name.clone(),
                kept_off,
                message: n.message.clone(),
            });
        }
    }
    if usable.is_empty() {
        out.push(NodeFinding::NoneUsable {
            off,
            no_cni: nodes
                .iter()
                .any(|n| !n.ready && n.message.to_lowercase().contains("cni")),
            control_plane_tainted: nodes
                .iter()
                .any(|n| n.taints.iter().any(|t| t.starts_with(CONTROL_PLANE_TAINT))),
        });
    } else {
        out.extend(off.into_iter().map(NodeFinding::Off));
    }

    // A locally imported image (the default, or pull policy Never) must be on every node
    // that may run the pods; the image stage imports it on this host only.
    let local_image =
        spec.agent.image == default_agent_image() || spec.agent.pull_policy == "Never";
    if local_image && spec.agent.pull_policy != "Always" {
        for n in &usable {
            let here = host.node == Some(n.name.as_str());
            if n.has_agent_image || (here && host.imports_image) {
                continue;
            }
            out.push(if n.images_reported >= KUBELET_MAX_IMAGES {
                NodeFinding::ImageUnknown {
                    node: n.name.clone(),
                }
            } else {
                NodeFinding::ImageMissing {
                    node: n.name.clone(),
                    here,
                }
            });
        }
    }

    // The agent run from an image volume: only where the runtime mounts it executable.
    if spec.agent.delivery == pgset_spec::AgentDelivery::Image {
        for n in usable
            .iter()
            .filter(|n| !runs_from_image_volumes(&n.runtime))
        {
            out.push(NodeFinding::NoImageVolumes {
                node: n.name.clone(),
                runtime: n.runtime.clone(),
            });
        }
    }

    // mount.nfs: the NFS stage installs it on this host; other nodes need it from their admin.
    if spec.storage.storage_class.is_none() {
        if host.is_node && !host.mount_nfs_here && !host.nfs_stage {
            out.push(NodeFinding::MountNfsMissingHere);
        }
        let others: Vec<String> = usable
            .iter()
            .filter(|n| host.node != Some(n.name.as_str()))
            .map(|n| n.name.clone())
            .collect();
        if !others.is_empty() {
            out.push(NodeFinding::OthersMount { nodes: others });
        }
    }
    out
}

/// The oldest Kubernetes minor version pgset runs on (1.25).
pub const MIN_KUBERNETES_MINOR: u32 = 25;

/// What preflight learned. Every field is read, never assumed.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Effective uid is 0.
    pub root: bool,
    /// Host steps (NFS, image import) are part of this run.
    pub host_steps: bool,
    /// The OS family pgset provisions, or why this host is not one (from /etc/os-release).
    pub os_family: Result<OsFamily, String>,
    /// The API server answered; its `major.minor`.
    pub cluster_version: Option<Result<String, String>>,
    /// Nodes: name, Ready, and whether the network is ready (a CNI is present).
    pub nodes: Vec<NodeFacts>,
    /// The agent image is to be imported into this host's containerd.
    pub imports_image: bool,
    /// `ctr` (containerd's client) is on this host.
    pub ctr_here: bool,
    /// `mount.nfs` is on this host.
    pub mount_nfs_here: bool,
    /// This host is one of the nodes (its hostname is a node name).
    pub host_is_node: bool,
    /// This host's node name, when it is a node.
    pub host_node: Option<String>,
    /// The StorageClass named by the spec exists (templates mode with a class only).
    pub storage_class_exists: Option<bool>,
    /// When the NFS stage runs: why this host cannot run its plan (empty when it can), or the
    /// error that stops planning it (an export path that is not pgset's, an unknown OS...).
    pub nfs_host: Option<Result<Vec<String>, String>>,
}

impl Facts {
    /// This host's facts (root, OS family, `ctr`, `mount.nfs`), read; the cluster's are empty
    /// until [`Facts::read_version`] and [`Facts::add_nodes`]. Only reads.
    pub fn of_this_host(host_steps: bool, imports_image: bool) -> Facts {
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let os_family = pgset_nfs::parse_os_release(&os_release)
            .family()
            .map_err(|e| e.to_string());
        Facts {
            root: nix::unistd::geteuid().is_root(),
            host_steps,
            imports_image,
            ctr_here: which::which("ctr").is_ok(),
            os_family,
            mount_nfs_here: which::which("mount.nfs").is_ok()
                || std::path::Path::new("/sbin/mount.nfs").exists()
                || std::path::Path::new("/usr/sbin/mount.nfs").exists(),
            cluster_version: None,
            nodes: Vec::new(),
            host_is_node: false,
            host_node: None,
            storage_class_exists: None,
            nfs_host: None,
        }
    }

    /// Asks the API server its version; true when it answered (its `major.minor` is kept, or
    /// why it did not answer).
    pub async fn read_version(&mut self, client: &kube::Client) -> bool {
        let answer = client.apiserver_version().await;
        let answered = answer.is_ok();
        self.cluster_version = Some(
            answer
                .map(|info| format!("{}.{}", info.major, info.minor))
                .map_err(|e| e.to_string()),
        );
        answered
    }

    /// The nodes as listed; this host is the node whose name is its hostname (or the
    /// hostname's first label).
    pub fn add_nodes(&mut self, spec: &ClusterSpec, nodes: &[Node], hostname: &str) {
        for n in nodes {
            let node = node_facts(n, &spec.agent.image);
            if node.name == hostname || hostname.split('.').next() == Some(node.name.as_str()) {
                self.host_is_node = true;
                self.host_node = Some(node.name.clone());
            }
            self.nodes.push(node);
        }
    }

    /// Whether the StorageClass the spec names exists (templates mode with a class only).
    pub async fn read_storage_class(
        &mut self,
        client: &kube::Client,
        spec: &ClusterSpec,
    ) -> Result<(), kube::Error> {
        if let (StorageMode::Templates, Some(class)) =
            (spec.storage.mode, &spec.storage.storage_class)
        {
            let classes: Api<StorageClass> = Api::all(client.clone());
            self.storage_class_exists = Some(classes.get_opt(class).await?.is_some());
        }
        Ok(())
    }
}

/// This host's name, as the nodes are matched against it (empty when unreadable).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// One finding of preflight. [`Finding::is_blocker`] says whether it stops a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The host steps (NFS, image import) run and this process is not root. A blocker.
    NotRoot,
    /// The image is to be imported here and `ctr` is not installed. A blocker.
    NoCtr,
    /// The host steps run and this host's OS is not one pgset provisions: why. A blocker.
    UnsupportedOs(String),
    /// The API server did not answer: its error. A blocker.
    NoAnswer(String),
    /// The cluster's Kubernetes (`major.minor`) is older than 1.25. A blocker.
    TooOld(String),
    /// A finding about the nodes (blocker or note, [`NodeFinding::is_blocker`]).
    Node(NodeFinding),
    /// What stops the NFS stage on this host, or why it could not be planned. A blocker.
    NfsHost(String),
    /// The StorageClass the spec names does not exist. A blocker.
    NoStorageClass(String),
}

impl Finding {
    /// True when the finding stops the run before any change; false for a note.
    pub fn is_blocker(&self) -> bool {
        match self {
            Finding::Node(n) => n.is_blocker(),
            _ => true,
        }
    }
}

/// Turns facts into findings, in the order to report them. Pure.
pub fn judge(spec: &ClusterSpec, f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    if f.host_steps && !f.root {
        out.push(Finding::NotRoot);
    }
    if f.imports_image && !f.ctr_here {
        out.push(Finding::NoCtr);
    }
    if f.host_steps
        && let Err(why) = &f.os_family
    {
        out.push(Finding::UnsupportedOs(why.clone()));
    }
    match &f.cluster_version {
        None => {}
        Some(Err(e)) => out.push(Finding::NoAnswer(e.clone())),
        Some(Ok(v)) => {
            let minor = v
                .split('.')
                .nth(1)
                .and_then(|m| m.trim_end_matches('+').parse::<u32>().ok());
            if minor.is_some_and(|m| m < MIN_KUBERNETES_MINOR) {
                out.push(Finding::TooOld(v.clone()));
            }
        }
    }
    if matches!(f.cluster_version, Some(Ok(_))) {
        let host = HostRole {
            node: f.host_node.as_deref(),
            is_node: f.host_is_node,
            imports_image: f.imports_image,
            mount_nfs_here: f.mount_nfs_here,
            nfs_stage: f.nfs_host.is_some(),
        };
        out.extend(
            judge_nodes(spec, &f.nodes, &host)
                .into_iter()
                .map(Finding::Node),
        );
    }
    match &f.nfs_host {
        None => {}
        Some(Ok(blockers)) => out.extend(blockers.iter().cloned().map(Finding::NfsHost)),
        Some(Err(e)) => out.push(Finding::NfsHost(e.clone())),
    }
    if spec.storage.mode == StorageMode::Templates
        && let (Some(class), Some(false)) = (&spec.storage.storage_class, f.storage_class_exists)
    {
        out.push(Finding::NoStorageClass(class.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a test node differs from a Ready, schedulable node with the agent image.
    #[derive(Default)]
    struct NodeShape {
        not_ready: Option<&'static str>,
        taints: &'static [(&'static str, &'static str)],
        unschedulable: bool,
        without_image: bool,
    }

    /// A Node object as the API server returns it (kubelet-reported images included).
    fn node(name: &str, shape: NodeShape) -> Node {
        let images = if shape.without_image {
            serde_json::json!([{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368}])
        } else {
            serde_json::json!([
                {"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320368},
                {"names": [default_agent_image(), "docker.io/library/pgset-agent@sha256:0123"], "sizeBytes": 3400000}
            ])
        };
        let taints: Vec<serde_json::Value> = shape
            .taints
            .iter()
            .map(|(key, effect)| serde_json::json!({"key": key, "effect": effect}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {"taints": taints, "unschedulable": shape.unschedulable},
            "status": {
                "conditions": [{
                    "type": "Ready",
                    "status": if shape.not_ready.is_some() { "False" } else { "True" },
                    "reason": "KubeletReady",
                    "message": shape.not_ready.unwrap_or("kubelet is posting ready status"),
                }],
                "images": images,
            }
        }))
        .unwrap()
    }

    fn facts(name: &str, shape: NodeShape) -> NodeFacts {
        node_facts(&node(name, shape), &default_agent_image())
    }

    const CONTROL_PLANE: &[(&str, &str)] =
        &[("node-role.kubernetes.io/control-plane", "NoSchedule")];

    /// This host is node `cp`, imports the image and runs the NFS stage.
    fn on_cp() -> HostRole<'static> {
        HostRole {
            node: Some("cp"),
            is_node: true,
            imports_image: true,
            mount_nfs_here: true,
            nfs_stage: true,
        }
    }

    #[test]
    fn image_delivery_needs_containerd_2_1_on_every_node_that_may_run_the_members() {
        for (runtime, runs) in [
            ("containerd://2.1.4", true),
            ("containerd://2.2.0-rc.1", true),
            ("containerd://v3.0.0", true),
            ("containerd://2.0.5", false),
            ("containerd://1.7.27", false),
            ("cri-o://1.34.1", false),
            ("docker://28.0.1", false),
            ("", false),
        ] {
            assert_eq!(runs_from_image_volumes(runtime), runs, "{runtime}");
        }
        let mut spec = ClusterSpec::default();
        let mut new = facts("cp", NodeShape::default());
        new.runtime = "containerd://2.1.4".into();
        let mut old = facts("w1", NodeShape::default());
        old.runtime = "cri-o://1.34.1".into();
        let nodes = [new, old];
        let blockers = |spec: &ClusterSpec| -> Vec<NodeFinding> {
            judge_nodes(spec, &nodes, &on_cp())
                .into_iter()
                .filter(|f| matches!(f, NodeFinding::NoImageVolumes { .. }))
                .collect()
        };
        assert_eq!(
            blockers(&spec),
            Vec::<NodeFinding>::new(),
            "copy runs anywhere"
        );
        spec.agent.delivery = pgset_spec::AgentDelivery::Image;
        let found = blockers(&spec);
        assert_eq!(
            found,
            vec![NodeFinding::NoImageVolumes {
                node: "w1".into(),
                runtime: "cri-o://1.34.1".into()
            }]
        );
        assert!(found[0].is_blocker());
    }

    #[test]
    fn node_facts_read_taints_cordon_readiness_and_images() {
        let n = facts(
            "cp",
            NodeShape {
                taints: &[
                    ("node-role.kubernetes.io/control-plane", "NoSchedule"),
                    ("node.kubernetes.io/not-ready", "NoExecute"),
                    ("example.com/prefer-not", "PreferNoSchedule"),
                ],
                unschedulable: true,
                not_ready: Some("PLEG is not healthy"),
                ..NodeShape::default()
            },
        );
        assert_eq!(
            n,
            NodeFacts {
                name: "cp".into(),
                ready: false,
                message: "PLEG is not healthy".into(),
                unschedulable: true,
                taints: vec!["node-role.kubernetes.io/control-plane:NoSchedule".into()],
                has_agent_image: true,
                images_reported: 2,
                runtime: String::new(),
            }
        );
        // The kubelet reports an imported image under its full name; a short name matches.
        let short = format!("pgset-agent:{}", pgset_spec::VERSION);
        assert!(node_facts(&node("w", NodeShape::default()), &short).has_agent_image);
        let other = facts(
            "w",
            NodeShape {
                without_image: true,
                ..NodeShape::default()
            },
        );
        assert!(!other.has_agent_image);
    }

    #[test]
    fn no_nodes_and_no_usable_node_are_blockers_with_what_keeps_each_off() {
        let spec = ClusterSpec::default();
        let none = judge_nodes(&spec, &[], &on_cp());
        assert_eq!(none, [NodeFinding::NoNodes]);
        assert!(none[0].is_blocker());

        let nodes = [
            facts(
                "cp",
                NodeShape {
                    taints: CONTROL_PLANE,
                    ..NodeShape::default()
                },
            ),
            facts(
                "w1",
                NodeShape {
                    not_ready: Some("cni plugin not initialized"),
                    unschedulable: true,
                    ..NodeShape::default()
                },
            ),
        ];
        let found = judge_nodes(&spec, &nodes, &on_cp());
        assert_eq!(
            found,
            [NodeFinding::NoneUsable {
                off: vec![
                    NodeOff {
                        name: "cp".into(),
                        kept_off: vec![KeptOff::Tainted(vec![
                            "node-role.kubernetes.io/control-plane:NoSchedule".into()
                        ])],
                        message: "kubelet is posting ready status".into(),
                    },
                    NodeOff {
                        name: "w1".into(),
                        kept_off: vec![KeptOff::NotReady, KeptOff::Cordoned],
                        message: "cni plugin not initialized".into(),
                    },
                ],
                no_cni: true,
                control_plane_tainted: true,
            }]
        );
        assert!(found[0].is_blocker());

        // Tolerating the control-plane taint makes cp usable; w1 is then only a note.
        let tolerant = ClusterSpec {
            tolerate_control_plane: true,
            ..ClusterSpec::default()
        };
        let found = judge_nodes(&tolerant, &nodes, &on_cp());
        assert!(
            matches!(&found[0], NodeFinding::Off(o) if o.name == "w1"),
            "{found:?}"
        );
        assert!(found.iter().all(|f| !f.is_blocker()), "{found:?}");
    }

    #[test]
    fn a_locally_imported_image_must_be_on_every_usable_node() {
        let spec = ClusterSpec::default();
        let without = |name: &str| {
            facts(
                name,
                NodeShape {
                    without_image: true,
                    ..NodeShape::default()
                },
            )
        };
        let nodes = [without("cp"), without("w1")];
        assert_eq!(
            judge_nodes(&spec, &nodes, &on_cp()),
            [
                NodeFinding::ImageMissing {
                    node: "w1".into(),
                    here: false
                },
                NodeFinding::OthersMount {
                    nodes: vec!["w1".into()]
                },
            ]
        );
        // Without the image stage this host's node needs it too.
        let no_import = HostRole {
            imports_image: false,
            ..on_cp()
        };
        let found = judge_nodes(&spec, &nodes, &no_import);
        assert_eq!(
            found[0],
            NodeFinding::ImageMissing {
                node: "cp".into(),
                here: true
            }
        );
        // A kubelet at its report limit may have it: a note.
        let mut full = nodes.clone();
        full[1].images_reported = KUBELET_MAX_IMAGES;
        let found = judge_nodes(&spec, &full, &on_cp());
        assert_eq!(found[0], NodeFinding::ImageUnknown { node: "w1".into() });
        assert!(!found[0].is_blocker());
        // A registry image pulled by every node needs nothing.
        let mut registry = ClusterSpec::default();
        registry.agent.image = "registry.example.com/pgset-agent:1".into();
        assert!(
            judge_nodes(&registry, &nodes, &on_cp())
                .iter()
                .all(|f| !f.is_blocker())
        );
    }

    #[test]
    fn mount_nfs_here_is_the_nfs_stages_job_and_a_storage_class_needs_none() {
        let spec = ClusterSpec::default();
        let nodes = [facts("cp", NodeShape::default())];
        let missing = HostRole {
            mount_nfs_here: false,
            ..on_cp()
        };
        assert!(judge_nodes(&spec, &nodes, &missing).is_empty());
        let skipped = HostRole {
            nfs_stage: false,
            ..missing
        };
        assert_eq!(
            judge_nodes(&spec, &nodes, &skipped),
            [NodeFinding::MountNfsMissingHere]
        );
        let mut class = ClusterSpec::default();
        class.storage.storage_class = Some("fast".into());
        assert!(judge_nodes(&class, &nodes, &skipped).is_empty());
    }

    /// Facts of a root run on a supported host with a 1.35 cluster of one good node `cp`,
    /// which is this host.
    fn all_well() -> Facts {
        Facts {
            root: true,
            host_steps: true,
            os_family: Ok(OsFamily::El8Plus),
            cluster_version: Some(Ok("1.35".into())),
            nodes: vec![facts("cp", NodeShape::default())],
            imports_image: true,
            ctr_here: true,
            mount_nfs_here: true,
            host_is_node: true,
            host_node: Some("cp".into()),
            storage_class_exists: None,
            nfs_host: Some(Ok(Vec::new())),
        }
    }

    #[test]
    fn preflight_judges_the_host_and_the_cluster_into_findings_that_block_or_note() {
        let spec = ClusterSpec::default();
        assert_eq!(judge(&spec, &all_well()), []);
        let f = Facts {
            root: false,
            ctr_here: false,
            os_family: Err("unsupported OS \"Arch Linux\"".into()),
            cluster_version: Some(Ok("1.24".into())),
            nfs_host: Some(Err("refusing the export /etc".into())),
            ..all_well()
        };
        let found = judge(&spec, &f);
        assert_eq!(
            found,
            [
                Finding::NotRoot,
                Finding::NoCtr,
                Finding::UnsupportedOs("unsupported OS \"Arch Linux\"".into()),
                Finding::TooOld("1.24".into()),
                Finding::NfsHost("refusing the export /etc".into()),
            ]
        );
        assert!(found.iter().all(Finding::is_blocker));
        // Without host steps neither root nor the OS matters; a silent API server is a
        // blocker and its nodes are not judged.
        let f = Facts {
            root: false,
            host_steps: false,
            imports_image: false,
            os_family: Err("unsupported".into()),
            cluster_version: Some(Err("connection refused".into())),
            nodes: Vec::new(),
            nfs_host: None,
            ..all_well()
        };
        assert_eq!(
            judge(&spec, &f),
            [Finding::NoAnswer("connection refused".into())]
        );
        // A node kept off is a note, beside a usable one.
        let f = Facts {
            nodes: vec![
                facts("cp", NodeShape::default()),
                facts(
                    "w1",
                    NodeShape {
                        unschedulable: true,
                        ..NodeShape::default()
                    },
                ),
            ],
            ..all_well()
        };
        let found = judge(&spec, &f);
        assert!(
            matches!(&found[0], Finding::Node(NodeFinding::Off(n)) if n.name == "w1"),
            "{found:?}"
        );
        assert!(!found[0].is_blocker());
        let mut class = ClusterSpec::default();
        class.storage.mode = StorageMode::Templates;
        class.storage.storage_class = Some("fast".into());
        let f = Facts {
            storage_class_exists: Some(false),
            ..all_well()
        };
        assert_eq!(judge(&class, &f), [Finding::NoStorageClass("fast".into())]);
    }
}
