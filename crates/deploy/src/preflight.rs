//! Preflight's judgement of the cluster's nodes before anything changes: which nodes can run
//! the members and what keeps the others off, which lack a locally imported agent image, and
//! who mounts the export. Pure: the findings are data, the command words them.

use k8s_openapi::api::core::v1::Node;
use pgset_spec::contract::CONTROL_PLANE_TAINT;
use pgset_spec::image_ref::ImageReference;
use pgset_spec::{ClusterSpec, default_agent_image};

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
    }
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
}
