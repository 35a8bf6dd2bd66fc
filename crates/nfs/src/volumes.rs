//! The NFS PersistentVolumes of a cluster, built purely from the spec and the server address;
//! and how that address is chosen.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};

use crate::facts::HostAddresses;

/// The PersistentVolumes pgset creates on the export at `server`, each reserved by
/// `claimRef` (namespace and name) for exactly one claim of this cluster, so no other claim
/// can bind it:
/// - `shared` mode: [`ClusterSpec::shared_pv_names`] (`pv1..pvN` for the default cluster, as
///   in the seed), ReadWriteMany, at the cluster's directory, reserved for the shared claim;
/// - `templates` mode without a StorageClass: one volume per ordinal at the member's
///   directory, reserved for `data-<name>-N`;
/// - `templates` mode with a StorageClass: none (the class provisions the claims).
///
/// Every volume: NFS, Retain, mount options `hard` and `nfsvers=<version>`, pgset's own
/// storage class (so a default StorageClass cannot take the claims), pgset's labels.
pub fn persistent_volumes(spec: &ValidSpec, server: &str) -> Vec<PersistentVolume> {
    match spec.storage.mode {
        StorageMode::Shared => spec
            .shared_pv_names()
            .into_iter()
            .map(|name| {
                volume(
                    spec,
                    name,
                    server,
                    spec.cluster_export_dir().display().to_string(),
                    claim_ref(spec, spec.shared_claim_name()),
                )
            })
            .collect(),
        StorageMode::Templates if spec.storage.storage_class.is_none() => (0..spec.replicas)
            .map(|i| {
                volume(
                    spec,
                    spec.member_pv_name(i),
                    server,
                    spec.member_export_dir(i).display().to_string(),
                    claim_ref(spec, spec.member_claim_name(i)),
                )
            })
            .collect(),
        StorageMode::Templates => Vec::new(),
    }
}

/// The PersistentVolume of `doctor`'s mount probe on one node: named `name`, at the cluster's
/// directory ([`ClusterSpec::cluster_export_dir`]) on `server`, with the mount options of the
/// cluster's own volumes (NFS, `hard`, `nfsvers=<version>`), pre-bound (`claimRef`) to the
/// probe's claim `claim` in the cluster's namespace, ReadOnlyMany and mounted read-only,
/// labelled `labels` (the probe's, never the cluster's selector). Retain: deleting it never
/// touches the export.
pub fn probe_volume(
    spec: &ClusterSpec,
    server: &str,
    name: String,
    claim: String,
    labels: BTreeMap<String, String>,
) -> PersistentVolume {
    let mut pv = volume(
        spec,
        name,
        server,
        spec.cluster_export_dir().display().to_string(),
        claim_ref(spec, claim),
    );
    pv.metadata.labels = Some(labels);
    if let Some(s) = pv.spec.as_mut() {
        s.access_modes = Some(vec!["ReadOnlyMany".into()]);
        s.capacity = Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity(PROBE_SIZE.into()),
        )]));
        if let Some(nfs) = s.nfs.as_mut() {
            nfs.read_only = Some(true);
        }
    }
    pv
}

/// The size the probe's volume and claim declare (NFS ignores it; binding compares it).
pub const PROBE_SIZE: &str = "1Mi";

/// The reservation of a volume for one claim of the cluster's namespace.
fn claim_ref(spec: &ClusterSpec, claim: String) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some(spec.namespace.clone()),
        name: Some(claim),
        ..ObjectReference::default()
    }
}

fn volume(
    spec: &ClusterSpec,
    name: String,
    server: &str,
    path: String,
    claim_ref: ObjectReference,
) -> PersistentVolume {
    let labels: BTreeMap<String, String> = spec
        .common_labels()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(spec.storage.size.clone()),
            )])),
            claim_ref: Some(claim_ref),
            mount_options: Some(vec!["hard".into(), format!("nfsvers={}", spec.nfs.version)]),
            nfs: Some(NFSVolumeSource {
                path,
                server: server.to_string(),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(spec.storage_class_name()),
            volume_mode: Some("Filesystem".into()),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// The address the nodes reach this NFS host at: the host's own node address when it is one
/// of the cluster's nodes, else its primary address.
pub fn nfs_server_address(addresses: &HostAddresses, node_addresses: &[IpAddr]) -> Option<IpAddr> {
    node_addresses
        .iter()
        .find(|n| addresses.networks.iter().any(|(a, _)| a == *n))
        .copied()
        .or(addresses.primary)
}

/// The NFS server address the volumes name: `--nfs-server`/`nfs.server`, else this host's node
/// address, else its primary address ([`nfs_server_address`]).
pub fn volume_server_address(
    spec: &ValidSpec,
    addresses: &HostAddresses,
    nodes: &[IpAddr],
) -> Option<String> {
    spec.nfs
        .server
        .clone()
        .or_else(|| nfs_server_address(addresses, nodes).map(|a| a.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(spec: &ClusterSpec) -> ValidSpec {
        spec.clone().validated().expect("test spec is valid")
    }

    fn nfs_of(pv: &PersistentVolume) -> (&str, &str) {
        let nfs = pv.spec.as_ref().unwrap().nfs.as_ref().unwrap();
        (nfs.server.as_str(), nfs.path.as_str())
    }

    #[test]
    fn shared_mode_has_the_seeds_three_volumes() {
        let spec = ClusterSpec::default();
        let pvs = persistent_volumes(&valid(&spec), "192.168.56.10");
        let names: Vec<&str> = pvs
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["pv1", "pv2", "pv3"]);
        for pv in &pvs {
            let s = pv.spec.as_ref().unwrap();
            assert_eq!(nfs_of(pv), ("192.168.56.10", "/nfsfileshare"));
            assert_eq!(s.access_modes.as_deref().unwrap(), ["ReadWriteMany"]);
            assert_eq!(
                s.persistent_volume_reclaim_policy.as_deref(),
                Some("Retain")
            );
            assert_eq!(s.mount_options.as_deref().unwrap(), ["hard", "nfsvers=4.1"]);
            assert_eq!(s.storage_class_name.as_deref(), Some("pgset-nfs"));
            assert_eq!(s.capacity.as_ref().unwrap()["storage"].0, "1Gi");
            let claim = s.claim_ref.as_ref().unwrap();
            assert_eq!(claim.namespace.as_deref(), Some("default"));
            assert_eq!(claim.name.as_deref(), Some("pgset-pvc"));
            assert_eq!(claim.kind.as_deref(), Some("PersistentVolumeClaim"));
            assert_eq!(claim.uid, None);
            let labels = pv.metadata.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "pgset");
        }
        let mut five = spec.clone();
        five.replicas = 5;
        assert_eq!(persistent_volumes(&valid(&five), "nfs").len(), 5);
    }

    #[test]
    fn templates_mode_prebinds_one_volume_per_ordinal() {
        let mut spec = ClusterSpec::default();
        spec.storage.mode = StorageMode::Templates;
        spec.replicas = 2;
        spec.nfs.version = "4.2".into();
        let pvs = persistent_volumes(&valid(&spec), "10.0.0.5");
        assert_eq!(pvs.len(), 2);
        for (i, pv) in pvs.iter().enumerate() {
            let i = i32::try_from(i).unwrap();
            assert_eq!(
                pv.metadata.name.as_deref(),
                Some(spec.member_pv_name(i).as_str())
            );
            let s = pv.spec.as_ref().unwrap();
            let path = format!("/nfsfileshare/pgset-{i}");
            assert_eq!(nfs_of(pv), ("10.0.0.5", path.as_str()));
            let claim = s.claim_ref.as_ref().unwrap();
            assert_eq!(
                claim.name.as_deref(),
                Some(format!("data-pgset-{i}").as_str())
            );
            assert_eq!(claim.namespace.as_deref(), Some("default"));
            assert_eq!(s.mount_options.as_deref().unwrap(), ["hard", "nfsvers=4.2"]);
        }
        spec.storage.storage_class = Some("fast".into());
        assert!(persistent_volumes(&valid(&spec), "10.0.0.5").is_empty());
    }

    #[test]
    fn other_clusters_volumes_are_reserved_for_their_own_claims_in_their_directory() {
        let mut spec = ClusterSpec {
            namespace: "staging".into(),
            replicas: 3,
            ..ClusterSpec::default()
        };
        let shared = persistent_volumes(&valid(&spec), "10.0.0.5");
        assert_eq!(shared.len(), 1);
        assert_eq!(
            shared[0].metadata.name.as_deref(),
            Some("staging.pgset-pvc")
        );
        assert_eq!(
            nfs_of(&shared[0]),
            ("10.0.0.5", "/nfsfileshare/staging.pgset")
        );
        let claim = shared[0].spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
        assert_eq!(
            (claim.namespace.as_deref(), claim.name.as_deref()),
            (Some("staging"), Some("pgset-pvc"))
        );

        spec.storage.mode = StorageMode::Templates;
        let members = persistent_volumes(&valid(&spec), "10.0.0.5");
        let got: Vec<(&str, &str, &str)> = members
            .iter()
            .map(|pv| {
                let claim = pv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
                (
                    pv.metadata.name.as_deref().unwrap(),
                    nfs_of(pv).1,
                    claim.name.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "staging.data-pgset-0",
                    "/nfsfileshare/staging.pgset/pgset-0",
                    "data-pgset-0"
                ),
                (
                    "staging.data-pgset-1",
                    "/nfsfileshare/staging.pgset/pgset-1",
                    "data-pgset-1"
                ),
                (
                    "staging.data-pgset-2",
                    "/nfsfileshare/staging.pgset/pgset-2",
                    "data-pgset-2"
                ),
            ]
        );
        for pv in &members {
            let claim = pv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
            assert_eq!(claim.namespace.as_deref(), Some("staging"));
        }
    }

    #[test]
    fn the_probe_volume_mounts_the_clusters_directory_read_only_like_the_real_ones() {
        let mut spec = ClusterSpec {
            namespace: "staging".into(),
            ..ClusterSpec::default()
        };
        spec.storage.mode = StorageMode::Templates;
        spec.nfs.version = "4.2".into();
        let labels = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let pv = probe_volume(
            &spec,
            "10.0.0.5",
            "staging.pgset-doctor-1".into(),
            "pgset-doctor-1".into(),
            labels.clone(),
        );
        assert_eq!(pv.metadata.name.as_deref(), Some("staging.pgset-doctor-1"));
        assert_eq!(pv.metadata.labels.as_ref(), Some(&labels));
        let s = pv.spec.as_ref().unwrap();
        assert_eq!(nfs_of(&pv), ("10.0.0.5", "/nfsfileshare/staging.pgset"));
        assert_eq!(s.nfs.as_ref().unwrap().read_only, Some(true));
        assert_eq!(s.access_modes.as_deref().unwrap(), ["ReadOnlyMany"]);
        let real = &persistent_volumes(&valid(&spec), "10.0.0.5")[0];
        assert_eq!(
            s.mount_options,
            real.spec.as_ref().unwrap().mount_options,
            "the probe mounts as the cluster's volumes do"
        );
        assert_eq!(s.mount_options.as_deref().unwrap(), ["hard", "nfsvers=4.2"]);
        assert_eq!(
            s.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        assert_eq!(s.storage_class_name.as_deref(), Some("pgset-nfs"));
        let claim = s.claim_ref.as_ref().unwrap();
        assert_eq!(
            (claim.namespace.as_deref(), claim.name.as_deref()),
            (Some("staging"), Some("pgset-doctor-1"))
        );
    }

    #[test]
    fn server_address_prefers_the_hosts_node_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let addrs = HostAddresses {
            primary: Some(ip("10.0.2.15")),
            networks: vec![
                (ip("10.0.2.15"), "10.0.2.0/24".parse().unwrap()),
                (ip("192.168.56.10"), "192.168.56.0/24".parse().unwrap()),
            ],
        };
        assert_eq!(
            nfs_server_address(&addrs, &[ip("192.168.56.11"), ip("192.168.56.10")]),
            Some(ip("192.168.56.10"))
        );
        assert_eq!(
            nfs_server_address(&addrs, &[ip("192.168.56.11")]),
            Some(ip("10.0.2.15"))
        );
        assert_eq!(nfs_server_address(&HostAddresses::default(), &[]), None);
    }

    #[test]
    fn the_volumes_name_the_given_server_else_the_detected_one() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let addrs = HostAddresses {
            primary: Some(ip("10.0.2.15")),
            networks: vec![(ip("192.168.56.10"), "192.168.56.0/24".parse().unwrap())],
        };
        let nodes = [ip("192.168.56.10")];
        let mut spec = ClusterSpec::default();
        assert_eq!(
            volume_server_address(&valid(&spec), &addrs, &nodes).as_deref(),
            Some("192.168.56.10")
        );
        assert_eq!(
            volume_server_address(&valid(&spec), &addrs, &[]).as_deref(),
            Some("10.0.2.15")
        );
        assert_eq!(
            volume_server_address(&valid(&spec), &HostAddresses::default(), &[]),
            None
        );
        spec.nfs.server = Some("nfs.lab.example".into());
        assert_eq!(
            volume_server_address(&valid(&spec), &HostAddresses::default(), &nodes).as_deref(),
            Some("nfs.lab.example")
        );
    }
}
