//! Claims: the shared ReadWriteMany claim `<name>-pvc` (shared mode) and the volume claim
//! template `data` (templates mode); and applying the cluster's storage (its PersistentVolumes,
//! built on the NFS side, and the shared claim) without ever taking a volume another claim
//! holds or undoing a binding.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client};
use pgset_nfs::persistent_volumes;
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};

use crate::apply::{ApplyMode, DeployOutcome, apply_reporting};
use crate::{Error, Result, is_status, label_map, object_meta};

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
/// their StorageClass name, so a default StorageClass cannot provision it instead. A cluster
/// other than the default also names its one volume (`volumeName`), so the claim can bind
/// nothing else even where another volume of the class is free; the default cluster's claim
/// binds one of `pv1..pvN`, which are reserved for it.
pub fn shared_claim(spec: &ClusterSpec) -> PersistentVolumeClaim {
    let own_volume = if spec.is_default_cluster() {
        None
    } else {
        spec.shared_pv_names().into_iter().next()
    };
    PersistentVolumeClaim {
        metadata: object_meta(spec, spec.shared_claim_name()),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: Some(spec.storage_class_name()),
            volume_name: own_volume,
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

/// What applying the cluster's volumes does with one of them, judged from the volume as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeAction {
    /// Absent, reserved for no claim, or reserved for this cluster's claim and not yet bound:
    /// server-side apply (which sets the reservation, `claimRef`).
    Apply,
    /// Bound (or released) to the claim of this cluster it is meant for: left exactly as it is.
    /// Applying would replace the atomic `claimRef` and drop the binding's uid, which turns the
    /// bound claim `Lost`.
    Keep {
        /// `namespace/name` of the claim.
        claim: String,
        /// The volume's phase (`Bound`, `Released`, ...).
        phase: String,
    },
}

fn claim_key(r: &ObjectReference) -> (Option<&str>, Option<&str>) {
    (r.namespace.as_deref(), r.name.as_deref())
}

fn claim_text(r: &ObjectReference) -> String {
    format!(
        "{}/{}",
        r.namespace.as_deref().unwrap_or("?"),
        r.name.as_deref().unwrap_or("?")
    )
}

fn nfs_text(pv: &PersistentVolume) -> String {
    pv.spec.as_ref().and_then(|s| s.nfs.as_ref()).map_or_else(
        || "not NFS".to_string(),
        |n| format!("NFS {}:{}", n.server, n.path),
    )
}

/// Judges every wanted volume (`existing[i]` is what the API server has under
/// `wanted[i]`'s name) before any is applied. A volume with one of this cluster's names that
/// is reserved for, or bound to, a claim other than the one it is meant for is refused, all of
/// them in one [`Error::VolumesHeldElsewhere`]. Pure.
pub fn judge_volumes(
    wanted: &[PersistentVolume],
    existing: &[Option<PersistentVolume>],
) -> Result<Vec<VolumeAction>> {
    let mut actions = Vec::new();
    let mut held = Vec::new();
    for (want, have) in wanted.iter().zip(existing) {
        let meant = want.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let Some(have) = have else {
            actions.push(VolumeAction::Apply);
            continue;
        };
        let holder = have.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let phase = have
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "of unknown phase".into());
        match (holder, meant) {
            (None, _) => actions.push(VolumeAction::Apply),
            (Some(h), Some(m)) if claim_key(h) == claim_key(m) => {
                if h.uid.as_deref().is_none_or(str::is_empty) {
                    actions.push(VolumeAction::Apply);
                } else {
                    actions.push(VolumeAction::Keep {
                        claim: claim_text(h),
                        phase,
                    });
                }
            }
            (Some(h), meant) => {
                let name = have.metadata.name.as_deref().unwrap_or("?");
                let bound = if h.uid.as_deref().is_none_or(str::is_empty) {
                    "reserved for".to_string()
                } else {
                    format!("{phase}, held by")
                };
                held.push(format!(
                    "PersistentVolume {name} ({}) is {bound} claim {}, not {}",
                    nfs_text(have),
                    claim_text(h),
                    meant.map_or("a claim of this cluster".into(), |m| format!(
                        "this cluster's claim {}",
                        claim_text(m)
                    )),
                ));
            }
        }
    }
    if held.is_empty() {
        Ok(actions)
    } else {
        Err(Error::VolumesHeldElsewhere { held })
    }
}

/// Applies the cluster's PersistentVolumes (cluster-scoped): reads every one first and judges
/// them all ([`judge_volumes`]), so a refusal changes nothing; then applies those to apply and
/// leaves the bound ones as they are. `progress` gets one line per volume.
pub async fn apply_volumes(
    client: &Client,
    volumes: &[PersistentVolume],
    mode: ApplyMode,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<DeployOutcome> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let mut existing = Vec::new();
    for pv in volumes {
        let name = pv.metadata.name.clone().unwrap_or_default();
        existing.push(api.get_opt(&name).await.map_err(Error::api(
            "get",
            "PersistentVolume",
            &name,
            "-",
        ))?);
    }
    let actions = judge_volumes(volumes, &existing)?;
    let mut outcome = DeployOutcome::default();
    for (pv, action) in volumes.iter().zip(actions) {
        let name = pv.metadata.name.clone().unwrap_or_default();
        match action {
            VolumeAction::Keep { claim, phase } => {
                progress(&format!(
                    "kept PersistentVolume {name} ({phase}, claim {claim}): a bound volume is never re-applied"
                ));
                outcome.unchanged += 1;
            }
            VolumeAction::Apply => {
                outcome.record(apply_reporting(&api, pv, mode, progress).await.map_err(
                    |source| {
                        if is_status(&source, 422) {
                            Error::VolumeApply {
                                name: name.clone(),
                                source: Box::new(source),
                            }
                        } else {
                            Error::api("apply", "PersistentVolume", &name, "-")(source)
                        }
                    },
                )?)
            }
        }
    }
    Ok(outcome)
}

/// The storage of a spec for an NFS server address: its volumes and, in shared mode, the
/// shared claim.
#[derive(Debug, Clone)]
pub struct StorageObjects {
    /// The NFS PersistentVolumes ([`persistent_volumes`]).
    pub volumes: Vec<PersistentVolume>,
    /// The shared claim ([`shared_claim`]), in shared mode only.
    pub claim: Option<PersistentVolumeClaim>,
}

/// The volumes and the claim of `spec` on the export at `server`. Pure.
pub fn storage_objects(spec: &ValidSpec, server: &str) -> StorageObjects {
    StorageObjects {
        volumes: persistent_volumes(spec, server),
        claim: (spec.storage.mode == StorageMode::Shared).then(|| shared_claim(spec)),
    }
}

/// Why applying a cluster's storage failed: which part, and the error under it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The volumes were refused or could not be applied.
    #[error("apply the PersistentVolumes of cluster {cluster}")]
    Volumes {
        /// The cluster (`namespace/name`).
        cluster: String,
        /// What [`apply_volumes`] said.
        #[source]
        source: Error,
    },
    /// The shared claim could not be applied.
    #[error("apply PersistentVolumeClaim {name}")]
    Claim {
        /// The claim's name.
        name: String,
        /// The API server's refusal.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Applies a cluster's storage server-side: the volumes first, every one read and judged before
/// any is written ([`apply_volumes`]: one with this cluster's name that another claim holds
/// stops the run with nothing changed; one bound to this cluster's claim is left as it is;
/// the others are applied), then the shared claim. `progress` gets one line per object.
pub async fn apply_storage(
    client: &Client,
    spec: &ValidSpec,
    objects: &StorageObjects,
    mode: ApplyMode,
    progress: &mut (dyn FnMut(&str) + Send),
) -> std::result::Result<DeployOutcome, StorageError> {
    let mut outcome = apply_volumes(client, &objects.volumes, mode, progress)
        .await
        .map_err(|source| StorageError::Volumes {
            cluster: spec.exports_block_id(),
            source,
        })?;
    if let Some(c) = &objects.claim {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &spec.namespace);
        outcome.record(
            apply_reporting(&claims, c, mode, progress)
                .await
                .map_err(|source| StorageError::Claim {
                    name: spec.shared_claim_name(),
                    source: Box::new(source),
                })?,
        );
    }
    Ok(outcome)
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
        // The default cluster's claim binds one of pv1..pvN (reserved for it).
        assert_eq!(s.volume_name, None);
    }

    #[test]
    fn another_clusters_shared_claim_names_its_own_volume() {
        let mut spec = spec_in_mode(StorageMode::Shared, None).into_inner();
        spec.namespace = "staging".into();
        let pvc = shared_claim(&spec);
        assert_eq!(pvc.metadata.name.as_deref(), Some("pgset-pvc"));
        assert_eq!(pvc.metadata.namespace.as_deref(), Some("staging"));
        assert_eq!(
            pvc.spec.unwrap().volume_name.as_deref(),
            Some("staging.pgset-pvc")
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

    fn pv(
        name: &str,
        claim_ref: Option<(&str, &str, &str)>,
        phase: Option<&str>,
    ) -> PersistentVolume {
        let mut v = serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nfs": {"server": "10.0.0.5", "path": "/nfsfileshare"}},
        });
        if let Some((ns, claim, uid)) = claim_ref {
            v["spec"]["claimRef"] = serde_json::json!({
                "kind": "PersistentVolumeClaim", "namespace": ns, "name": claim, "uid": uid
            });
        }
        if let Some(p) = phase {
            v["status"] = serde_json::json!({"phase": p});
        }
        serde_json::from_value(v).unwrap()
    }

    fn wanted(name: &str) -> PersistentVolume {
        pv(name, Some(("default", "pgset-pvc", "")), None)
    }

    #[test]
    fn absent_free_and_reserved_volumes_are_applied_bound_ones_kept() {
        let want = [wanted("pv1"), wanted("pv2"), wanted("pv3"), wanted("pv4")];
        let have = [
            Some(pv(
                "pv1",
                Some(("default", "pgset-pvc", "u-1")),
                Some("Bound"),
            )),
            Some(pv("pv2", None, Some("Available"))),
            Some(pv(
                "pv3",
                Some(("default", "pgset-pvc", "")),
                Some("Available"),
            )),
            None,
        ];
        assert_eq!(
            judge_volumes(&want, &have).unwrap(),
            [
                VolumeAction::Keep {
                    claim: "default/pgset-pvc".into(),
                    phase: "Bound".into()
                },
                VolumeAction::Apply,
                VolumeAction::Apply,
                VolumeAction::Apply,
            ]
        );
    }

    #[test]
    fn a_volume_another_claim_holds_is_refused_and_never_to_be_deleted() {
        let want = [wanted("pv1"), wanted("pv2"), wanted("pv3")];
        let have = [
            Some(pv(
                "pv1",
                Some(("default", "pgset-pvc", "u-1")),
                Some("Bound"),
            )),
            Some(pv(
                "pv2",
                Some(("staging", "pgset-pvc", "u-2")),
                Some("Bound"),
            )),
            Some(pv(
                "pv3",
                Some(("default", "other-pvc", "")),
                Some("Available"),
            )),
        ];
        let err = judge_volumes(&want, &have).unwrap_err();
        assert!(matches!(&err, Error::VolumesHeldElsewhere { held } if held.len() == 2));
        let text = err.to_string();
        for expected in [
            "PersistentVolume pv2 (NFS 10.0.0.5:/nfsfileshare) is Bound, held by claim staging/pgset-pvc, not this cluster's claim default/pgset-pvc",
            "PersistentVolume pv3 (NFS 10.0.0.5:/nfsfileshare) is reserved for claim default/other-pvc",
            "pgset changed nothing",
            "Keep these volumes",
            "Stop the cluster that owns that claim",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in: {text}");
        }
        assert!(!text.contains("pv1"), "{text}");
        assert!(!text.contains("kubectl delete"), "{text}");
    }

    #[test]
    fn shared_mode_has_volumes_and_the_claim_templates_mode_only_volumes() {
        let mut spec = ClusterSpec::default();
        let shared = storage_objects(&spec.clone().validated().unwrap(), "10.0.0.1");
        assert_eq!(shared.volumes.len(), 3);
        assert_eq!(
            shared.claim.and_then(|c| c.metadata.name).as_deref(),
            Some("pgset-pvc")
        );
        spec.storage.mode = StorageMode::Templates;
        let templates = storage_objects(&spec.clone().validated().unwrap(), "10.0.0.1");
        assert_eq!(templates.volumes.len(), 2);
        assert!(templates.claim.is_none());
    }

    #[test]
    fn another_namespace_gets_its_own_volume_for_its_own_claim() {
        let spec = ClusterSpec {
            namespace: "staging".into(),
            ..ClusterSpec::default()
        };
        let shared = storage_objects(&spec.clone().validated().unwrap(), "10.0.0.1");
        let names: Vec<_> = shared
            .volumes
            .iter()
            .filter_map(|v| v.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["staging.pgset-pvc"]);
        let claim = shared.claim.unwrap();
        assert_eq!(claim.metadata.namespace.as_deref(), Some("staging"));
        assert_eq!(claim.metadata.name.as_deref(), Some("pgset-pvc"));
    }
}
