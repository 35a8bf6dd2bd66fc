//! Preflight of `cargo xtask up`: everything checked before anything is changed.
//!
//! Gathering only reads (the host and the API); [`judge`] is pure and turns the facts into
//! findings, each a blocker or a note, with what to do about it.

use std::fmt;

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use pgset_nfs::OsFamily;
use pgset_spec::{ClusterSpec, StorageMode};

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
    /// The StorageClass named by the spec exists (templates mode with a class only).
    pub storage_class_exists: Option<bool>,
    /// When the NFS stage runs: why this host cannot run its plan (empty when it can), or the
    /// error that stops planning it (an export path that is not pgset's, an unknown OS...).
    pub nfs_host: Option<Result<Vec<String>, String>>,
}

/// One node as preflight sees it.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Condition Ready is True.
    pub ready: bool,
    /// The Ready condition's message when not ready (kubelet says "cni plugin not initialized").
    pub message: String,
}

/// A preflight finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// A blocker stops `up` before any change; a note is printed and `up` goes on.
    pub blocker: bool,
    /// What was found and what to do.
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.blocker { "blocker" } else { "note" };
        write!(f, "{tag}: {}", self.text)
    }
}

fn blocker(text: impl Into<String>) -> Finding {
    Finding {
        blocker: true,
        text: text.into(),
    }
}

fn note(text: impl Into<String>) -> Finding {
    Finding {
        blocker: false,
        text: text.into(),
    }
}

/// Turns facts into findings. Pure.
pub fn judge(spec: &ClusterSpec, f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    if f.host_steps && !f.root {
        out.push(blocker(
            "the NFS host steps and the image import need root: run as root (sudo -E cargo xtask up), or skip them with --skip-nfs --skip-image",
        ));
    }
    if f.imports_image && !f.ctr_here {
        out.push(blocker(
            "the agent image is imported into this node's containerd with `ctr`, which is not installed here: run `up` on a containerd node, or push the image to a registry and pass --agent-image IMAGE --skip-image",
        ));
    }
    if f.host_steps
        && let Err(why) = &f.os_family
    {
        out.push(blocker(format!(
            "{why}: pgset provisions CentOS 7, RHEL-family 8+ (Rocky, Alma) and Debian-family hosts; provision NFS by hand and use --skip-nfs"
        )));
    }
    match &f.cluster_version {
        None => {}
        Some(Err(e)) => out.push(blocker(format!(
            "the cluster did not answer ({e}): check --kubeconfig/--context and that the API server runs (`kubectl get nodes`)"
        ))),
        Some(Ok(v)) => {
            let minor = v
                .split('.')
                .nth(1)
                .and_then(|m| m.trim_end_matches('+').parse::<u32>().ok());
            if minor.is_some_and(|m| m < 25) {
                out.push(blocker(format!(
                    "Kubernetes {v} is too old: pgset needs 1.25 or newer"
                )));
            }
        }
    }
    if matches!(f.cluster_version, Some(Ok(_))) {
        if f.nodes.is_empty() {
            out.push(blocker("the cluster has no nodes: join a node first"));
        }
        let ready = f.nodes.iter().filter(|n| n.ready).count();
        if !f.nodes.is_empty() && ready == 0 {
            let hint = f
                .nodes
                .iter()
                .find(|n| n.message.to_lowercase().contains("cni"))
                .map(|_| " (no CNI: install a pod network such as Flannel or Calico)")
                .unwrap_or("");
            out.push(blocker(format!(
                "no node is Ready{hint}: {}",
                f.nodes
                    .iter()
                    .map(|n| format!("{}: {}", n.name, n.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        } else {
            for n in f.nodes.iter().filter(|n| !n.ready) {
                out.push(note(format!("node {} is not Ready: {}", n.name, n.message)));
            }
        }
        if f.host_is_node && !f.mount_nfs_here {
            out.push(blocker(
                "mount.nfs is missing on this node: install nfs-utils (RHEL family) or nfs-common (Debian family)",
            ));
        } else if !f.host_is_node {
            out.push(note(
                "this host is not a node: make sure every node has mount.nfs (nfs-utils / nfs-common)",
            ));
        }
    }
    match &f.nfs_host {
        None => {}
        Some(Ok(blockers)) => {
            for b in blockers {
                out.push(blocker(format!("NFS host: {b}")));
            }
        }
        Some(Err(e)) => out.push(blocker(format!("NFS host: {e}"))),
    }
    if spec.storage.mode == StorageMode::Templates
        && let (Some(class), Some(false)) = (&spec.storage.storage_class, f.storage_class_exists)
    {
        out.push(blocker(format!(
            "StorageClass {class:?} does not exist: `kubectl get storageclass` lists the ones you have"
        )));
    }
    out
}

/// Reads the facts: the host, and the cluster when a client is given.
pub async fn gather(
    spec: &ClusterSpec,
    client: Option<&kube::Client>,
    host_steps: bool,
    imports_image: bool,
) -> Result<Facts> {
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os_family = pgset_nfs::parse_os_release(&os_release)
        .family()
        .map_err(|e| e.to_string());
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let mut facts = Facts {
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
        storage_class_exists: None,
        nfs_host: None,
    };
    let Some(client) = client else {
        return Ok(facts);
    };
    match client.apiserver_version().await {
        Ok(info) => {
            facts.cluster_version = Some(Ok(format!("{}.{}", info.major, info.minor)));
        }
        Err(e) => {
            facts.cluster_version = Some(Err(e.to_string()));
            return Ok(facts);
        }
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await?;
    for n in list.items {
        let name = n.metadata.name.clone().unwrap_or_default();
        let ready_cond = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let ready = ready_cond.is_some_and(|c| c.status == "True");
        let message = ready_cond
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        if name == hostname || hostname.split('.').next() == Some(name.as_str()) {
            facts.host_is_node = true;
        }
        facts.nodes.push(NodeFacts {
            name,
            ready,
            message,
        });
    }
    if let (StorageMode::Templates, Some(class)) = (spec.storage.mode, &spec.storage.storage_class)
    {
        let classes: Api<StorageClass> = Api::all(client.clone());
        facts.storage_class_exists = Some(classes.get_opt(class).await?.is_some());
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_ok() -> Facts {
        Facts {
            root: true,
            host_steps: true,
            imports_image: true,
            ctr_here: true,
            os_family: Ok(OsFamily::El8Plus),
            cluster_version: Some(Ok("1.35".into())),
            nodes: vec![NodeFacts {
                name: "cp".into(),
                ready: true,
                message: "kubelet is posting ready status".into(),
            }],
            mount_nfs_here: true,
            host_is_node: true,
            storage_class_exists: None,
            nfs_host: Some(Ok(Vec::new())),
        }
    }

    fn blockers(f: &[Finding]) -> Vec<&str> {
        f.iter()
            .filter(|f| f.blocker)
            .map(|f| f.text.as_str())
            .collect()
    }

    #[test]
    fn a_ready_kubeadm_host_has_no_blockers() {
        let f = judge(&ClusterSpec::default(), &cluster_ok());
        assert!(blockers(&f).is_empty(), "{f:?}");
    }

    #[test]
    fn host_steps_need_root() {
        let facts = Facts {
            root: false,
            ..cluster_ok()
        };
        let b = judge(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("need root"), "{b:?}");
        let facts = Facts {
            root: false,
            host_steps: false,
            ..cluster_ok()
        };
        assert!(blockers(&judge(&ClusterSpec::default(), &facts)).is_empty());
    }

    #[test]
    fn unreachable_cluster_is_a_blocker_and_stops_further_cluster_checks() {
        let facts = Facts {
            cluster_version: Some(Err("connection refused".into())),
            nodes: vec![],
            ..cluster_ok()
        };
        let b = judge(&ClusterSpec::default(), &facts);
        let b = blockers(&b);
        assert_eq!(b.len(), 1, "{b:?}");
        assert!(b[0].contains("connection refused"));
    }

    #[test]
    fn no_ready_node_without_cni_says_install_a_pod_network() {
        let facts = Facts {
            nodes: vec![NodeFacts {
                name: "cp".into(),
                ready: false,
                message: "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized".into(),
            }],
            ..cluster_ok()
        };
        let b = judge(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("install a pod network"), "{b:?}");
    }

    #[test]
    fn importing_the_image_needs_ctr() {
        let facts = Facts {
            ctr_here: false,
            ..cluster_ok()
        };
        let b = judge(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("`ctr`"), "{b:?}");
        let facts = Facts {
            ctr_here: false,
            imports_image: false,
            ..cluster_ok()
        };
        assert!(blockers(&judge(&ClusterSpec::default(), &facts)).is_empty());
    }

    #[test]
    fn missing_mount_nfs_on_the_node_is_a_blocker() {
        let facts = Facts {
            mount_nfs_here: false,
            ..cluster_ok()
        };
        let b = judge(&ClusterSpec::default(), &facts);
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
        let b = judge(&ClusterSpec::default(), &facts);
        assert_eq!(
            blockers(&b),
            ["NFS host: start nfs-server: `systemctl` cannot start services"]
        );
        let facts = Facts {
            nfs_host: Some(Err("refusing the export /etc: ...".into())),
            ..cluster_ok()
        };
        let b = judge(&ClusterSpec::default(), &facts);
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
        let b = judge(&spec, &facts);
        assert!(blockers(&b)[0].contains("\"fast\""), "{b:?}");
    }

    #[test]
    fn old_kubernetes_and_unknown_os_are_blockers() {
        let facts = Facts {
            cluster_version: Some(Ok("1.22".into())),
            ..cluster_ok()
        };
        assert!(blockers(&judge(&ClusterSpec::default(), &facts))[0].contains("too old"));
        let facts = Facts {
            os_family: Err("unsupported OS \"Arch Linux\"".into()),
            ..cluster_ok()
        };
        let b = judge(&ClusterSpec::default(), &facts);
        assert!(blockers(&b)[0].contains("Arch Linux"), "{b:?}");
        assert!(blockers(&b)[0].contains("--skip-nfs"), "{b:?}");
    }
}
