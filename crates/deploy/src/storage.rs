//! Claims: the shared ReadWriteMany claim `<name>-pvc` (shared mode) and the volume claim
//! template `data` (templates mode). The PersistentVolumes themselves come from the NFS side.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgset_spec::ClusterSpec;

use crate::{label_map, object_meta};

fn requests(spec: &ClusterSpec) -> VolumeResourceRequirements {
    VolumeResourceRequirements {
        requests: Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity(spec.storage.size.clone()),
        )])),
        ..VolumeResourceRequirements::default()
    }
}

/// Claim `<name>-pvc` (shared mode): ReadWriteMany, bound to pgset's own NFS volumes through
/// their StorageClass name, so a default StorageClass cannot provision it instead.
pub fn shared_claim(spec: &ClusterSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: object_meta(spec, spec.shared_claim_name()),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: Some(spec.storage_class_name()),
            volume_mode: Some("Filesystem".into()),
            resources: Some(requests(spec)),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Volume claim template `data` (templates mode), giving claims `data-<name>-<ordinal>`.
///
/// With a StorageClass named in the spec: ReadWriteOnce claims provisioned from it. Without:
/// ReadWriteMany claims bound to pgset's NFS volumes (pre-bound per ordinal) via their
/// StorageClass name.
pub fn claim_template(spec: &ClusterSpec) -> PersistentVolumeClaim {
    let (access_mode, class) = match &spec.storage.storage_class {
        Some(class) => ("ReadWriteOnce", class.clone()),
        None => ("ReadWriteMany", spec.storage_class_name()),
    };
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(spec.data_volume_name().to_string()),
            labels: Some(label_map(spec.common_labels())),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![access_mode.into()]),
            storage_class_name: Some(class),
            volume_mode: Some("Filesystem".into()),
            resources: Some(requests(spec)),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec_in_mode;
    use pgset_spec::StorageMode;

    #[test]
    fn shared_claim_is_rwx_on_pgsets_storage_class() {
        let spec = spec_in_mode(StorageMode::Shared, None);
        let pvc = shared_claim(&spec);
        assert_eq!(pvc.metadata.name.as_deref(), Some("pgset-pvc"));
        assert_eq!(pvc.metadata.namespace.as_deref(), Some("default"));
        let s = pvc.spec.unwrap();
        assert_eq!(s.access_modes.unwrap(), vec!["ReadWriteMany"]);
        assert_eq!(s.storage_class_name.as_deref(), Some("pgset-nfs"));
        assert_eq!(
            s.resources.unwrap().requests.unwrap()["storage"],
            Quantity("1Gi".into())
        );
    }

    #[test]
    fn template_uses_named_storage_class_read_write_once() {
        let spec = spec_in_mode(StorageMode::Templates, Some("fast-ssd"));
        let t = claim_template(&spec);
        assert_eq!(t.metadata.name.as_deref(), Some("data"));
        assert_eq!(t.metadata.namespace, None);
        let s = t.spec.unwrap();
        assert_eq!(s.access_modes.unwrap(), vec!["ReadWriteOnce"]);
        assert_eq!(s.storage_class_name.as_deref(), Some("fast-ssd"));
    }

    #[test]
    fn template_without_storage_class_binds_pgsets_nfs_volumes() {
        let spec = spec_in_mode(StorageMode::Templates, None);
        let s = claim_template(&spec).spec.unwrap();
        assert_eq!(s.access_modes.unwrap(), vec!["ReadWriteMany"]);
        assert_eq!(s.storage_class_name.as_deref(), Some("pgset-nfs"));
    }
}
