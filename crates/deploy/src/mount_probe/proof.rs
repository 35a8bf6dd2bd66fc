//! What a mount probe proved, kept so the next run can skip it: a fingerprint of the volumes
//! (name, server, path, mount options), the export path and the probed nodes (name, uid, boot
//! id), stored in a ConfigMap of the probe's own (`<name>-mount-probe`, the probe's labels) in
//! the cluster's namespace, written only after every probed node mounted the export.
//!
//! [`fingerprint`] is pure; [`probe_unless_proven`] reads the proof, probes when it does not
//! match (or when forced), and writes the new proof when every node mounted.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use pgset_spec::contract::{APP_NAME, components, labels};
use pgset_spec::{ClusterSpec, ValidSpec};

use super::{NodeMount, probe_labels, probe_mounts};
use crate::{Error, Result};

/// The proof's key holding the fingerprint text.
pub const FINGERPRINT_KEY: &str = "fingerprint";
/// The proof's key holding when it was proven (UTC).
pub const PROVEN_AT_KEY: &str = "provenAt";

/// The proof's ConfigMap: `<name>-mount-probe` in the cluster's namespace.
pub fn proof_name(spec: &ClusterSpec) -> String {
    format!("{}-mount-probe", spec.name)
}

/// What a probe proves, as stable text (one fact a line, sorted): the NFS server and export
/// path the probe mounts, each of the cluster's volumes as the API has it (or `absent`), and
/// each probed node with its uid and boot id. A node rebooted, replaced, added or left out, a
/// volume changed or the export moved gives another text. Pure.
pub fn fingerprint(
    spec: &ClusterSpec,
    server: &str,
    nodes: &[Node],
    probed: &[String],
    volumes: &[(String, Option<PersistentVolume>)],
) -> String {
    let mut lines = vec![
        format!("server {server}"),
        format!("export {}", spec.cluster_export_dir().display()),
    ];
    for (name, pv) in volumes {
        let nfs = pv.as_ref().and_then(|pv| pv.spec.as_ref());
        lines.push(match nfs {
            Some(s) => {
                let (srv, path) = s
                    .nfs
                    .as_ref()
                    .map(|n| (n.server.as_str(), n.path.as_str()))
                    .unwrap_or(("-", "-"));
                let mut options = s.mount_options.clone().unwrap_or_default();
                options.sort();
                format!("volume {name} {srv}:{path} {}", options.join(","))
            }
            None => format!("volume {name} absent"),
        });
    }
    for name in probed {
        let node = nodes.iter().find(|n| n.name_any() == *name);
        let uid = node
            .and_then(|n| n.metadata.uid.clone())
            .unwrap_or_default();
        let boot = node
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.boot_id.clone())
            .unwrap_or_default();
        lines.push(format!("node {name} uid={uid} boot={boot}"));
    }
    lines.sort();
    lines.join("\n") + "\n"
}

/// A proof read back: its fingerprint and when it was proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// [`fingerprint`]'s text.
    pub fingerprint: String,
    /// When every node mounted the export (UTC, to the second).
    pub proven_at: String,
}

/// What [`probe_unless_proven`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// The stored proof matches: nothing was probed.
    Proven {
        /// When it was proven.
        at: String,
    },
    /// The probe ran: each node's finding.
    Ran(Vec<NodeMount>),
}

/// Reads the proof: `None` when there is none, or when the ConfigMap of that name is not the
/// probe's (then it is never written either).
pub async fn read_proof(client: &Client, spec: &ClusterSpec) -> Result<Option<Proof>> {
    let ns = spec.namespace.as_str();
    let name = proof_name(spec);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let found = api
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "ConfigMap", &name, ns))?;
    Ok(found.filter(is_ours).and_then(|cm| {
        let data = cm.data.unwrap_or_default();
        Some(Proof {
            fingerprint: data.get(FINGERPRINT_KEY)?.clone(),
            proven_at: data.get(PROVEN_AT_KEY)?.clone(),
        })
    }))
}

/// Whether `cm` is the probe's own: labelled component `mount-probe`, managed by pgset.
pub fn is_ours(cm: &ConfigMap) -> bool {
    let l = cm.labels();
    l.get(labels::COMPONENT).map(String::as_str) == Some(components::MOUNT_PROBE)
        && l.get(labels::MANAGED_BY).map(String::as_str) == Some(APP_NAME)
}

/// Writes the proof (creates the ConfigMap, or replaces the probe's own); a ConfigMap of that
/// name that is not the probe's is left as it is and named in the error.
pub async fn write_proof(client: &Client, spec: &ClusterSpec, proof: &Proof) -> Result<()> {
    let ns = spec.namespace.as_str();
    let name = proof_name(spec);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let existing = api
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "ConfigMap", &name, ns))?;
    let mut cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(probe_labels(spec)),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (FINGERPRINT_KEY.to_string(), proof.fingerprint.clone()),
            (PROVEN_AT_KEY.to_string(), proof.proven_at.clone()),
        ])),
        ..ConfigMap::default()
    };
    match existing {
        None => {
            api.create(&PostParams::default(), &cm)
                .await
                .map_err(Error::api("create", "ConfigMap", &name, ns))?;
        }
        Some(old) if is_ours(&old) => {
            cm.metadata.resource_version = old.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &cm)
                .await
                .map_err(Error::api("replace", "ConfigMap", &name, ns))?;
        }
        Some(_) => {
            return Err(Error::ProbeNameTaken {
                kind: "ConfigMap",
                name,
            });
        }
    }
    Ok(())
}

/// The cluster's volumes as the API has them (`None`: absent), by the names pgset gives them.
pub async fn cluster_volumes(
    client: &Client,
    spec: &ValidSpec,
    server: &str,
) -> Result<Vec<(String, Option<PersistentVolume>)>> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let mut out = Vec::new();
    for pv in pgset_nfs::persistent_volumes(spec, server) {
        let name = pv.metadata.name.unwrap_or_default();
        let found =
            api.get_opt(&name)
                .await
                .map_err(Error::api("get", "PersistentVolume", &name, "-"))?;
        out.push((name, found));
    }
    Ok(out)
}

/// Probes `probed` (of `nodes`) unless the stored proof matches what the probe would prove now
/// and `force` is false; after a probe where every node mounted, stores the new proof (a probe
/// with a failure leaves the old one, which then no longer matches anything proven).
#[allow(clippy::too_many_arguments)]
pub async fn probe_unless_proven(
    client: &Client,
    spec: &ValidSpec,
    server: &str,
    nodes: &[Node],
    probed: &[String],
    force: bool,
    timeout: Duration,
    interrupted: impl Future<Output = ()>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Probed> {
    let volumes = cluster_volumes(client, spec, server).await?;
    let now = fingerprint(spec, server, nodes, probed, &volumes);
    let kept = read_proof(client, spec).await?;
    let why = match kept {
        Some(proof) if proof.fingerprint == now && !force => {
            return Ok(Probed::Proven {
                at: proof.proven_at,
            });
        }
        Some(_) if force => "--probe forces it".to_string(),
        Some(proof) => format!(
            "the volumes, the export or the nodes changed since the proof of {}",
            proof.proven_at
        ),
        None if force => "--probe forces it".to_string(),
        None => "no earlier proof for these volumes and nodes".to_string(),
    };
    progress(&format!("probing {} node(s): {why}", probed.len()));
    let found = probe_mounts(client, spec, server, probed, timeout, interrupted, progress).await?;
    if !found.is_empty() && found.iter().all(|f| f.mounted) {
        let proof = Proof {
            fingerprint: now,
            proven_at: Timestamp::now()
                .strftime("%Y-%m-%d %H:%M:%S UTC")
                .to_string(),
        };
        write_proof(client, spec, &proof).await?;
    }
    Ok(Probed::Ran(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        NFSVolumeSource, NodeStatus, NodeSystemInfo, PersistentVolumeSpec,
    };

    fn node(name: &str, uid: &str, boot: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                node_info: Some(NodeSystemInfo {
                    boot_id: boot.into(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn volume(path: &str, options: &[&str]) -> PersistentVolume {
        PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                nfs: Some(NFSVolumeSource {
                    server: "10.0.0.5".into(),
                    path: path.into(),
                    ..NFSVolumeSource::default()
                }),
                mount_options: Some(options.iter().map(|o| o.to_string()).collect()),
                ..PersistentVolumeSpec::default()
            }),
            ..PersistentVolume::default()
        }
    }

    #[test]
    fn the_fingerprint_changes_with_nodes_boots_volumes_and_the_export_only() {
        let spec = ClusterSpec::default();
        let nodes = [node("n1", "u1", "b1"), node("n2", "u2", "b2")];
        let probed = ["n1".to_string(), "n2".to_string()];
        let vols = vec![(
            "pv-0".to_string(),
            Some(volume("/srv/pg", &["nfsvers=4.2", "hard"])),
        )];
        let base = fingerprint(&spec, "10.0.0.5", &nodes, &probed, &vols);
        // Order of nodes and mount options does not matter.
        let swapped = [node("n2", "u2", "b2"), node("n1", "u1", "b1")];
        let reordered = vec![(
            "pv-0".to_string(),
            Some(volume("/srv/pg", &["hard", "nfsvers=4.2"])),
        )];
        assert_eq!(
            fingerprint(&spec, "10.0.0.5", &swapped, &probed, &reordered),
            base
        );
        assert!(base.contains("node n1 uid=u1 boot=b1"), "{base}");
        // Each change gives another fingerprint.
        let rebooted = [node("n1", "u1", "b9"), node("n2", "u2", "b2")];
        let replaced = [node("n1", "u7", "b1"), node("n2", "u2", "b2")];
        for changed in [
            fingerprint(&spec, "10.0.0.5", &rebooted, &probed, &vols),
            fingerprint(&spec, "10.0.0.5", &replaced, &probed, &vols),
            fingerprint(&spec, "10.0.0.5", &nodes, &probed[..1], &vols),
            fingerprint(&spec, "10.0.0.6", &nodes, &probed, &vols),
            fingerprint(
                &spec,
                "10.0.0.5",
                &nodes,
                &probed,
                &[("pv-0".to_string(), Some(volume("/srv/pg", &["soft"])))],
            ),
            fingerprint(
                &spec,
                "10.0.0.5",
                &nodes,
                &probed,
                &[("pv-0".to_string(), None)],
            ),
            fingerprint(
                &ClusterSpec {
                    name: "other".into(),
                    ..ClusterSpec::default()
                },
                "10.0.0.5",
                &nodes,
                &probed,
                &vols,
            ),
        ] {
            assert_ne!(changed, base);
        }
    }
}
