//! The cluster's pod network, the default of `access.replicationFrom`: kubeadm's `podSubnet`
//! (ConfigMap `kube-system/kubeadm-config`, the whole range every node's pods come from), else
//! the union of the nodes' pod CIDRs (`spec.podCIDRs`, which covers the nodes there are now).
//! When neither can be read, replication stays admitted from any address (still only by the
//! replication certificate) and the reason is told.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Client;
use kube::api::{Api, ListParams};
use pgset_spec::{Cidr, ValidSpec};
use serde::Deserialize;

/// Where kubeadm keeps its cluster configuration.
pub const KUBEADM_CONFIG: (&str, &str) = ("kube-system", "kubeadm-config");

/// The pod network found, and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetwork {
    /// kubeadm's `networking.podSubnet`.
    Kubeadm(Vec<Cidr>),
    /// The nodes' `spec.podCIDRs`.
    Nodes(Vec<Cidr>),
    /// Not found: why.
    Unknown(String),
}

impl PodNetwork {
    /// The networks, when found.
    pub fn networks(&self) -> Option<&[Cidr]> {
        match self {
            PodNetwork::Kubeadm(n) | PodNetwork::Nodes(n) => Some(n),
            PodNetwork::Unknown(_) => None,
        }
    }

    /// One line for the deploy's progress.
    pub fn describe(&self) -> String {
        let list = |n: &[Cidr]| {
            n.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            PodNetwork::Kubeadm(n) => format!(
                "replication admitted from the pod network {} (kubeadm's podSubnet)",
                list(n)
            ),
            PodNetwork::Nodes(n) => format!(
                "replication admitted from the pod network {} (the nodes' pod CIDRs; a node added \
                 later with another range needs the next deploy, or set access.replicationFrom)",
                list(n)
            ),
            PodNetwork::Unknown(why) => format!(
                "replication admitted from any address, by the replication certificate only: \
                 the pod network is unknown ({why}); set access.replicationFrom to restrict it"
            ),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ClusterConfiguration {
    networking: Networking,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Networking {
    pod_subnet: Option<String>,
}

/// kubeadm's `podSubnet` in a `ClusterConfiguration` text (comma-separated when dual-stack);
/// `None` when absent or not networks.
pub fn kubeadm_pod_subnet(cluster_configuration: &str) -> Option<Vec<Cidr>> {
    let c: ClusterConfiguration = serde_saphyr::from_str(cluster_configuration).ok()?;
    let subnet = c.networking.pod_subnet?;
    let nets: Vec<Cidr> = subnet
        .split(',')
        .map(|s| s.trim().parse::<Cidr>().ok())
        .collect::<Option<_>>()?;
    (!nets.is_empty()).then_some(nets)
}

/// The union of the nodes' pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`); `None` when a node
/// has none (its pods' range is unknown) or there are no nodes.
pub fn nodes_pod_cidrs(nodes: &[Node]) -> Option<Vec<Cidr>> {
    let mut all = BTreeSet::new();
    for node in nodes {
        let spec = node.spec.as_ref()?;
        let cidrs: Vec<&String> = match (&spec.pod_cidrs, &spec.pod_cidr) {
            (Some(list), _) if !list.is_empty() => list.iter().collect(),
            (_, Some(one)) => vec![one],
            _ => return None,
        };
        for c in cidrs {
            all.insert(c.parse::<Cidr>().ok()?);
        }
    }
    (!all.is_empty()).then(|| all.into_iter().collect())
}

/// Finds the pod network: kubeadm's configuration first, then the nodes.
pub async fn find(client: &Client) -> PodNetwork {
    let (ns, name) = KUBEADM_CONFIG;
    let kubeadm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await;
    if let Ok(Some(cm)) = &kubeadm
        && let Some(nets) = cm
            .data
            .as_ref()
            .and_then(|d| d.get("ClusterConfiguration"))
            .and_then(|t| kubeadm_pod_subnet(t))
    {
        return PodNetwork::Kubeadm(nets);
    }
    match Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => match nodes_pod_cidrs(&list.items) {
            Some(nets) => PodNetwork::Nodes(nets),
            None => PodNetwork::Unknown(
                "no kubeadm podSubnet, and not every node has a pod CIDR".into(),
            ),
        },
        Err(e) => PodNetwork::Unknown(format!("the nodes could not be listed: {e}")),
    }
}

/// `spec` with `access.replicationFrom` filled from the cluster's pod network when TLS is on
/// and the spec names none, and the line saying what was chosen (`None` when the spec decides
/// or TLS is off).
pub async fn complete_access(client: &Client, spec: &ValidSpec) -> (ValidSpec, Option<String>) {
    if !spec.tls.enabled() || !spec.access.replication_from.is_empty() {
        return (spec.clone(), None);
    }
    let found = find(client).await;
    let line = found.describe();
    let completed = match found.networks() {
        Some(nets) => {
            let mut s = spec.clone().into_inner();
            s.access.replication_from = nets.to_vec();
            // Networks parsed as Cidr keep the spec valid.
            ValidSpec::new(s).unwrap_or_else(|_| spec.clone())
        }
        None => spec.clone(),
    };
    (completed, Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadms_pod_subnet_is_read_single_and_dual_stack() {
        let text = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n\
                    kubernetesVersion: v1.36.0\nnetworking:\n  dnsDomain: cluster.local\n  \
                    podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n";
        assert_eq!(
            kubeadm_pod_subnet(text).unwrap(),
            vec!["10.244.0.0/16".parse::<Cidr>().unwrap()]
        );
        let dual = "networking:\n  podSubnet: 10.244.0.0/16,fd00:10:244::/56\n";
        assert_eq!(kubeadm_pod_subnet(dual).unwrap().len(), 2);
        assert_eq!(
            kubeadm_pod_subnet("networking:\n  serviceSubnet: 10.96.0.0/12\n"),
            None
        );
        assert_eq!(kubeadm_pod_subnet("networking:\n  podSubnet: pods\n"), None);
    }

    fn node(cidrs: &[&str]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
        }))
        .unwrap()
    }

    #[test]
    fn the_nodes_pod_cidrs_are_united_and_a_node_without_one_makes_them_unknown() {
        let nodes = [
            node(&["10.244.1.0/24"]),
            node(&["10.244.0.0/24"]),
            node(&["10.244.1.0/24"]),
        ];
        assert_eq!(
            nodes_pod_cidrs(&nodes)
                .unwrap()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
            ["10.244.0.0/24", "10.244.1.0/24"]
        );
        let without: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n"}, "spec": {}}))
                .unwrap();
        assert_eq!(nodes_pod_cidrs(&[node(&["10.244.0.0/24"]), without]), None);
        assert_eq!(nodes_pod_cidrs(&[]), None);
    }
}
