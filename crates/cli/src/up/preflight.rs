//! Preflight of `cargo xtask up`, in words: its facts and their judgement are
//! `pgset_deploy::preflight`'s ([`gather`] reads them, the nodes listed once by the context);
//! [`worded`] says each finding, a blocker or a note, with what to do about it.

use std::fmt;

use anyhow::Result;
use pgset_deploy::preflight::{
    Facts, Finding, KUBELET_MAX_IMAGES, MIN_KUBERNETES_MINOR, NodeFinding, NodeOff, judge,
};
use pgset_deploy::readiness::{self, KeptOff};
use pgset_spec::ClusterSpec;
use pgset_spec::contract::CONTROL_PLANE_TAINT;

use crate::context::{Nodes, RunContext};

/// A preflight finding in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worded {
    /// A blocker stops `up` before any change; a note is printed and `up` goes on.
    pub blocker: bool,
    /// What was found and what to do.
    pub text: String,
}

impl fmt::Display for Worded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.blocker { "blocker" } else { "note" };
        write!(f, "{tag}: {}", self.text)
    }
}

/// The findings of [`judge`], each in words with what to do.
pub fn worded(spec: &ClusterSpec, f: &Facts) -> Vec<Worded> {
    judge(spec, f)
        .iter()
        .map(|finding| Worded {
            blocker: finding.is_blocker(),
            text: words(spec, finding),
        })
        .collect()
}

/// One finding in words.
fn words(spec: &ClusterSpec, finding: &Finding) -> String {
    match finding {
        Finding::NotRoot => format!(
            "the NFS host steps and the image import need root: run as root (sudo -E {} up), or skip them with --skip-nfs --skip-image",
            pgset_spec::contract::program_name()
        ),
        Finding::NoCtr => "the agent image is imported into this node's containerd with `ctr`, which is not installed here: run `up` on a containerd node, or push the image to a registry and pass --agent-image IMAGE --skip-image".into(),
        Finding::UnsupportedOs(why) => format!(
            "{why}: pgset provisions CentOS 7, RHEL-family 8+ (Rocky, Alma) and Debian-family hosts; provision NFS by hand and use --skip-nfs"
        ),
        Finding::NoAnswer(e) => format!(
            "the cluster did not answer ({e}): check --kubeconfig/--context and that the API server runs (`kubectl get nodes`)"
        ),
        Finding::TooOld(v) => format!(
            "Kubernetes {v} is too old: pgset needs 1.{MIN_KUBERNETES_MINOR} or newer"
        ),
        Finding::Node(n) => node_finding_text(spec, n),
        Finding::NfsHost(e) => format!("NFS host: {e}"),
        Finding::NoStorageClass(class) => format!(
            "StorageClass {class:?} does not exist: `kubectl get storageclass` lists the ones you have"
        ),
    }
}

/// What keeps the pods off a node, in words.
fn why_off(off: &NodeOff) -> String {
    off.kept_off
        .iter()
        .map(|kept| match kept {
            KeptOff::NotReady => format!("not Ready ({})", off.message),
            KeptOff::Cordoned => "cordoned (`kubectl uncordon` to undo)".to_string(),
            KeptOff::Tainted(taints) => {
                let mut s = format!("tainted {}", taints.join(", "));
                if taints.contains(&readiness::control_plane_no_schedule()) {
                    s.push_str(" (or let the members tolerate it: --tolerate-control-plane)");
                }
                s
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A node finding in words, with the command that fixes it.
fn node_finding_text(spec: &ClusterSpec, finding: &NodeFinding) -> String {
    match finding {
        NodeFinding::NoNodes => "the cluster has no nodes: join a node first".into(),
        NodeFinding::NoneUsable {
            off,
            no_cni,
            control_plane_tainted,
        } => {
            let mut fix = Vec::new();
            if *no_cni {
                fix.push("no CNI: install a pod network such as Flannel or Calico".to_string());
            }
            if *control_plane_tainted {
                fix.push(format!(
                    "on a one-node kubeadm lab let the control plane run pods: `kubectl taint nodes --all {CONTROL_PLANE_TAINT}-`, or keep the taint and let only pgset's members tolerate it with --tolerate-control-plane (spec: tolerateControlPlane: true)"
                ));
            }
            if fix.is_empty() {
                fix.push("make a node Ready and schedulable, or join a worker".into());
            }
            format!(
                "no node can run the pods, every member would stay Pending: {}; {}",
                off.iter()
                    .map(|n| format!("{}: {}", n.name, why_off(n)))
                    .collect::<Vec<_>>()
                    .join("; "),
                fix.join("; ")
            )
        }
        NodeFinding::Off(n) => format!("node {}: no pods will run here: {}", n.name, why_off(n)),
        NodeFinding::ImageUnknown { node } => format!(
            "node {node}: cannot tell whether it has the agent image {}: its kubelet reports only its {KUBELET_MAX_IMAGES} largest images; make sure it does (`crictl images` on the node)",
            spec.agent.image
        ),
        NodeFinding::ImageMissing { node, here } => {
            let how = if *here {
                format!(
                    "import it here with `{} image --import` (or drop --skip-image)",
                    pgset_spec::contract::program_name()
                )
            } else {
                format!(
                    "`up` imports it into this host's containerd only: copy the archive of `{program} image --out pgset-agent.tar` to {node} and run `ctr -n k8s.io images import pgset-agent.tar` there, or cordon the node (`kubectl cordon {node}`)",
                    program = pgset_spec::contract::program_name()
                )
            };
            format!(
                "node {node}: may run the pods but does not have the agent image {} (pull policy {}, not in a registry): {how}; or push the image to a registry and pass --agent-image IMAGE --skip-image",
                spec.agent.image, spec.agent.pull_policy
            )
        }
        NodeFinding::NoImageVolumes { node, runtime } => format!(
            "node {node}: runs {} and cannot run the agent from an image volume (agent.delivery: image needs containerd 2.1 or later; CRI-O mounts image volumes noexec): use agent.delivery: copy",
            if runtime.is_empty() { "an unknown runtime" } else { runtime.as_str() }
        ),
        NodeFinding::MountNfsMissingHere => "mount.nfs is missing on this node and the NFS stage is skipped: install nfs-utils (RHEL family) or nfs-common (Debian family)".into(),
        NodeFinding::OthersMount { nodes } => format!(
            "node(s) {} mount the export: make sure each has mount.nfs (nfs-utils / nfs-common); the NFS stage installs it on this host only",
            nodes.join(", ")
        ),
    }
}

/// Reads the facts: this host's, and the cluster's when `cluster` (the context's client was
/// built): its version, the nodes (listed once, by the context, which keeps them for the
/// stages after preflight) and the StorageClass the spec names. Only reads.
pub async fn gather(
    ctx: &RunContext,
    cluster: bool,
    host_steps: bool,
    imports_image: bool,
) -> Result<Facts> {
    let mut facts = Facts::of_this_host(host_steps, imports_image);
    if cluster {
        read_cluster(ctx, &pgset_deploy::preflight::hostname(), &mut facts).await?;
    }
    Ok(facts)
}

/// Reads what the API tells about the cluster into `facts`: its version, every node (listed by
/// the context, [`RunContext::nodes`]), the StorageClass the spec names. Only reads.
pub async fn read_cluster(ctx: &RunContext, hostname: &str, facts: &mut Facts) -> Result<()> {
    let client = ctx.client().await?;
    if !facts.read_version(client).await {
        return Ok(());
    }
    let nodes = match ctx.nodes().await? {
        Nodes::Listed(nodes) => nodes,
        // The API server answered its version: a listing that fails is an error.
        Nodes::NoCluster(e) => anyhow::bail!("{e}"),
    };
    facts.add_nodes(ctx.spec(), nodes, hostname);
    facts.read_storage_class(client, ctx.spec()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use pgset_deploy::preflight::node_facts;
    use pgset_nfs::OsFamily;
    use pgset_spec::StorageMode;
    use pgset_spec::default_agent_image;

    fn cluster_ok() -> Facts {
        Facts {
            root: true,
            host_steps: true,
            imports_image: true,
            ctr_here: true,
            os_family: Ok(OsFamily::El8Plus),
            cluster_version: Some(Ok("1.35".into())),
            nodes: vec![node_facts(
                &node("cp", NodeShape::default()),
                &default_agent_image(),
            )],
            mount_nfs_here: true,
            host_is_node: true,
            host_node: Some("cp".into()),
            storage_class_exists: None,
            nfs_host: Some(Ok(Vec::new())),
        }
    }

    fn blockers(f: &[Worded]) -> Vec<&str> {
        f.iter()
            .filter(|f| f.blocker)
            .map(|f| f.text.as_str())
            .collect()
    }

    #[test]
    fn a_ready_kubeadm_host_has_no_blockers() {
        let f = worded(&ClusterSpec::default(), &cluster_ok());
        assert!(blockers(&f).is_empty(), "{f:?}");
    }

    #[test]
    fn host_steps_need_root() {
        let facts = Facts {
            root: false,
            ..cluster_ok()
        };
        let b = worded(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("need root"), "{b:?}");
        let facts = Facts {
            root: false,
            host_steps: false,
            ..cluster_ok()
        };
        assert!(blockers(&worded(&ClusterSpec::default(), &facts)).is_empty());
    }

    #[test]
    fn unreachable_cluster_is_a_blocker_and_stops_further_cluster_checks() {
        let facts = Facts {
            cluster_version: Some(Err("connection refused".into())),
            nodes: vec![],
            ..cluster_ok()
        };
        let b = worded(&ClusterSpec::default(), &facts);
        let b = blockers(&b);
        assert_eq!(b.len(), 1, "{b:?}");
        assert!(b[0].contains("connection refused"));
    }

    #[test]
    fn no_ready_node_without_cni_says_install_a_pod_network() {
        let facts = Facts {
            nodes: vec![node_facts(
                &node(
                    "cp",
                    NodeShape {
                        not_ready: Some(
                            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
                        ),
                        ..NodeShape::default()
                    },
                ),
                &default_agent_image(),
            )],
            ..cluster_ok()
        };
        let b = worded(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("install a pod network"), "{b:?}");
    }

    #[test]
    fn importing_the_image_needs_ctr() {
        let facts = Facts {
            ctr_here: false,
            ..cluster_ok()
        };
        let b = worded(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("`ctr`"), "{b:?}");
        let facts = Facts {
            ctr_here: false,
            imports_image: false,
            ..cluster_ok()
        };
        assert!(blockers(&worded(&ClusterSpec::default(), &facts)).is_empty());
    }

    #[test]
    fn missing_mount_nfs_here_is_the_nfs_stages_job() {
        let facts = Facts {
            mount_nfs_here: false,
            ..cluster_ok()
        };
        assert!(blockers(&worded(&ClusterSpec::default(), &facts)).is_empty());
        // Only when the NFS stage is skipped does nobody install it.
        let facts = Facts {
            mount_nfs_here: false,
            nfs_host: None,
            ..cluster_ok()
        };
        let b = worded(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("nfs-utils"), "{b:?}");
    }

    #[test]
    fn what_stops_the_nfs_stage_is_a_blocker_before_anything_changes() {
        let facts = Facts {
            nfs_host: Some(Ok(vec![
                "start nfs-server: `systemctl` cannot start services".into(),
            ])),
            ..cluster_ok()
        };
        let b = worded(&ClusterSpec::default(), &facts);
        assert_eq!(
            blockers(&b),
            ["NFS host: start nfs-server: `systemctl` cannot start services"]
        );
        let facts = Facts {
            nfs_host: Some(Err("refusing the export /etc: ...".into())),
            ..cluster_ok()
        };
        let b = worded(&ClusterSpec::default(), &facts);
        assert_eq!(blockers(&b), ["NFS host: refusing the export /etc: ..."]);
    }

    #[test]
    fn missing_storage_class_is_a_blocker() {
        let mut spec = ClusterSpec::default();
        spec.storage.mode = StorageMode::Templates;
        spec.storage.storage_class = Some("fast".into());
        let facts = Facts {
            storage_class_exists: Some(false),
            ..cluster_ok()
        };
        let b = worded(&spec, &facts);
        assert!(blockers(&b)[0].contains("\"fast\""), "{b:?}");
    }

    #[test]
    fn old_kubernetes_and_unknown_os_are_blockers() {
        let facts = Facts {
            cluster_version: Some(Ok("1.22".into())),
            ..cluster_ok()
        };
        assert!(blockers(&worded(&ClusterSpec::default(), &facts))[0].contains("too old"));
        let facts = Facts {
            os_family: Err("unsupported OS \"Arch Linux\"".into()),
            ..cluster_ok()
        };
        let b = worded(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("Arch Linux"), "{b:?}");
        assert!(blockers(&b)[0].contains("--skip-nfs"), "{b:?}");
    }

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
        serde_json::from_value(node_json(name, &shape)).unwrap()
    }

    fn node_json(name: &str, shape: &NodeShape) -> serde_json::Value {
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
        serde_json::json!({
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
        })
    }

    const CONTROL_PLANE: &[(&str, &str)] =
        &[("node-role.kubernetes.io/control-plane", "NoSchedule")];

    #[test]
    fn a_tainted_one_node_kubeadm_lab_is_told_how_to_untaint() {
        let facts = Facts {
            nodes: vec![node_facts(
                &node(
                    "cp",
                    NodeShape {
                        taints: CONTROL_PLANE,
                        ..NodeShape::default()
                    },
                ),
                &default_agent_image(),
            )],
            ..cluster_ok()
        };
        let f = worded(&ClusterSpec::default(), &facts);
        let b = blockers(&f);
        assert_eq!(b.len(), 1, "{f:?}");
        assert!(
            b[0].contains("no node can run the pods")
                && b[0].contains("cp: tainted node-role.kubernetes.io/control-plane:NoSchedule")
                && b[0]
                    .contains("`kubectl taint nodes --all node-role.kubernetes.io/control-plane-`"),
            "{b:?}"
        );
    }

    #[test]
    fn a_control_plane_the_members_tolerate_runs_them() {
        let facts = Facts {
            nodes: vec![node_facts(
                &node(
                    "cp",
                    NodeShape {
                        taints: CONTROL_PLANE,
                        ..NodeShape::default()
                    },
                ),
                &default_agent_image(),
            )],
            ..cluster_ok()
        };
        let blocked = worded(&ClusterSpec::default(), &facts);
        assert!(
            blockers(&blocked)[0].contains("--tolerate-control-plane"),
            "the finding names the flag as the alternative to untainting: {blocked:?}"
        );
        let spec = ClusterSpec {
            tolerate_control_plane: true,
            ..ClusterSpec::default()
        };
        let f = worded(&spec, &facts);
        assert!(blockers(&f).is_empty(), "{f:?}");
        assert!(
            !f.iter().any(|x| x.text.contains("no pods will run here")),
            "{f:?}"
        );
        // Another taint still keeps them off.
        let mut other = facts.clone();
        other.nodes[0].taints.push("dedicated=db:NoSchedule".into());
        let b = worded(&spec, &other);
        assert!(
            blockers(&b)[0].contains("cp: tainted dedicated=db:NoSchedule"),
            "{b:?}"
        );
    }

    #[test]
    fn a_worker_without_the_locally_imported_image_is_a_blocker() {
        let facts = Facts {
            nodes: vec![
                node_facts(
                    &node(
                        "cp",
                        NodeShape {
                            without_image: true,
                            ..NodeShape::default()
                        },
                    ),
                    &default_agent_image(),
                ),
                node_facts(
                    &node(
                        "w1",
                        NodeShape {
                            without_image: true,
                            ..NodeShape::default()
                        },
                    ),
                    &default_agent_image(),
                ),
            ],
            ..cluster_ok()
        };
        let f = worded(&ClusterSpec::default(), &facts);
        let b = blockers(&f);
        // This host gets the image from the image stage; the worker does not.
        assert_eq!(b.len(), 1, "{f:?}");
        assert!(
            b[0].starts_with("node w1: may run the pods but does not have the agent image")
                && b[0].contains("ctr -n k8s.io images import"),
            "{b:?}"
        );
        // A kubelet at its image-report limit may have it: a note, not a blocker.
        let mut full = facts.clone();
        full.nodes[1].images_reported = KUBELET_MAX_IMAGES;
        let f = worded(&ClusterSpec::default(), &full);
        assert!(blockers(&f).is_empty(), "{f:?}");
        assert!(
            f.iter().any(|x| x
                .text
                .starts_with("node w1: cannot tell whether it has the agent image")),
            "{f:?}"
        );
        // A registry image pulled by every node needs nothing.
        let mut spec = ClusterSpec::default();
        spec.agent.image = "registry.example.com/pgset-agent:1".into();
        assert!(blockers(&worded(&spec, &facts)).is_empty());
        // Without the image stage, this host's node needs it too.
        let facts = Facts {
            imports_image: false,
            ..facts
        };
        assert_eq!(blockers(&worded(&ClusterSpec::default(), &facts)).len(), 2);
    }

    /// A client whose requests are recorded as `METHOD path?query` and answered by `answer`.
    fn mock_client(
        answer: impl Fn(&str) -> (u16, serde_json::Value) + Send + 'static,
    ) -> (kube::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = calls.clone();
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let line = format!(
                    "{} {}{}",
                    request.method(),
                    request.uri().path(),
                    request
                        .uri()
                        .query()
                        .filter(|q| !q.is_empty())
                        .map(|q| format!("?{q}"))
                        .unwrap_or_default()
                );
                let (status, body) = answer(request.uri().path());
                recorded.lock().unwrap().push(line);
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        (kube::Client::new(service, "default"), calls)
    }

    #[tokio::test]
    async fn preflight_reads_every_node_and_reports_each_one() {
        let nodes = serde_json::json!({
            "apiVersion": "v1",
            "kind": "NodeList",
            "metadata": {"resourceVersion": "1"},
            "items": [
                node_json("cp", &NodeShape { taints: CONTROL_PLANE, ..NodeShape::default() }),
                node_json("w1", &NodeShape { without_image: true, ..NodeShape::default() }),
                node_json("w2", &NodeShape { not_ready: Some("Kubelet stopped posting node status."), ..NodeShape::default() }),
                node_json("w3", &NodeShape::default()),
            ]
        });
        let (client, calls) = mock_client(move |path| match path {
            "/version" => (
                200,
                serde_json::json!({"major": "1", "minor": "33", "gitVersion": "v1.33.2",
                    "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "",
                    "compiler": "", "platform": "linux/amd64"}),
            ),
            "/api/v1/nodes" => (200, nodes.clone()),
            _ => (404, serde_json::json!({})),
        });
        let spec = ClusterSpec::default();
        let mut facts = Facts {
            cluster_version: None,
            nodes: Vec::new(),
            host_is_node: false,
            host_node: None,
            ..cluster_ok()
        };
        let ctx = RunContext::new(
            spec.clone().validated().unwrap(),
            crate::args::ClientArgs::default(),
            None,
            crate::progress::Reporter::recording(false),
        )
        .with_client(client);
        read_cluster(&ctx, "cp.lab.example", &mut facts)
            .await
            .unwrap();
        let Nodes::Listed(listed) = ctx.nodes().await.unwrap() else {
            panic!("the API server answered: the nodes are kept for the stages");
        };
        let names: Vec<_> = listed
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["cp", "w1", "w2", "w3"]);
        assert_eq!(
            *calls.lock().unwrap(),
            ["GET /version", "GET /api/v1/nodes"],
            "preflight only reads the version and the nodes"
        );
        assert_eq!(facts.cluster_version, Some(Ok("1.33".into())));
        assert_eq!(facts.host_node.as_deref(), Some("cp"));
        let found: Vec<String> = worded(&spec, &facts)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "note: node cp: no pods will run here: tainted node-role.kubernetes.io/control-plane:NoSchedule (or let the members tolerate it: --tolerate-control-plane)".to_string(),
                "note: node w2: no pods will run here: not Ready (Kubelet stopped posting node status.)".into(),
                format!(
                    "blocker: node w1: may run the pods but does not have the agent image {} (pull policy IfNotPresent, not in a registry): `up` imports it into this host's containerd only: copy the archive of `{} image --out pgset-agent.tar` to w1 and run `ctr -n k8s.io images import pgset-agent.tar` there, or cordon the node (`kubectl cordon w1`); or push the image to a registry and pass --agent-image IMAGE --skip-image",
                    default_agent_image(),
                    pgset_spec::contract::program_name()
                ),
                "note: node(s) w1, w3 mount the export: make sure each has mount.nfs (nfs-utils / nfs-common); the NFS stage installs it on this host only".into(),
            ]
        );
    }
}
