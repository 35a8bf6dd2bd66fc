//! Taking a cluster off: scale to 0 and wait for the pods to go, then delete the objects in
//! the reverse of the apply order. Claims, PersistentVolumes and the Secret (whose passwords
//! belong to the data), the cluster record, the TLS material pgset made (the CA clients trust,
//! its certificates, the CA ConfigMap), the leader and member Leases and the mount probe's
//! proof stay unless purging. Before the members stop, automatic failover is
//! paused on the leader Lease, and stays paused: the cluster is left with no member running.
//! The member isolation policy and its binding (cluster-scoped, no data) always go, and so does
//! a policy the `master-isolated` drill left when its process was killed.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use pgset_spec::contract::{self, APP_NAME, labels, record};
use pgset_spec::{ClusterSpec, ValidSpec};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::apply::kind_of;
use crate::master::{Pause, pause_failover, read_master};
use crate::mount_probe::proof;
use crate::scale::set_replicas;
use crate::wait::{Listing, until_listing};
use crate::{Error, NamespacedObject, Result, is_status, selector_string};

/// Whether the user's data goes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// Keep claims, PersistentVolumes and the Secret.
    Keep,
    /// Delete them as well (`--purge --yes`).
    Everything,
}

/// A time budget shared by the waits of one teardown.
struct Deadline {
    end: Instant,
    total: Duration,
}

impl Deadline {
    fn new(total: Duration) -> Deadline {
        Deadline {
            end: Instant::now() + total,
            total,
        }
    }

    fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }
}

/// Deletes one namespaced object; `Ok(false)` when it was already absent.
async fn delete_named<K>(client: &Client, namespace: &str, name: &str) -> Result<bool>
where
    K: NamespacedObject,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(Error::api("delete", kind_of::<K>(), name, namespace)(e)),
    }
}

async fn delete_reporting<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()>
where
    K: NamespacedObject,
{
    let kind = kind_of::<K>();
    if delete_named::<K>(client, namespace, name).await? {
        progress(&format!("deleted {kind} {name}"));
    } else {
        progress(&format!("{kind} {name} already absent"));
    }
    Ok(())
}

/// Whether the Lease `name` is this cluster's: its leader record or a member's write fence.
pub fn is_cluster_lease(spec: &ClusterSpec, name: &str) -> bool {
    if name == contract::leader_lease_name(&spec.name) {
        return true;
    }
    name.strip_suffix(&contract::member_lease_name(""))
        .and_then(|pod| pod.strip_prefix(&format!("{}-", spec.name)))
        .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// Deletes this cluster's Leases once its members are gone (`--purge --yes`): the leader record
/// names a master of data that no longer exists, and a new cluster of the same name must start
/// from ordinal 0 again. Leases labelled for the cluster with other names are left alone.
async fn delete_leases(
    client: &Client,
    spec: &ClusterSpec,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let ns = spec.namespace.as_str();
    let mut names = labelled_names::<Lease>(client, spec).await?;
    names.retain(|n| is_cluster_lease(spec, n));
    names.sort();
    for name in names {
        delete_reporting::<Lease>(client, ns, &name, progress).await?;
    }
    Ok(())
}

/// Deletes the mount probe's proof (`--purge --yes`: the volumes it proved are gone), only when
/// the ConfigMap of that name is the probe's own.
async fn delete_probe_proof(
    client: &Client,
    spec: &ClusterSpec,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let ns = spec.namespace.as_str();
    let name = proof::proof_name(spec);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    match api
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "ConfigMap", &name, ns))?
    {
        None => Ok(()),
        Some(cm) if !proof::is_ours(&cm) => {
            progress(&format!(
                "kept ConfigMap {name}: it is not the mount probe's (no {}={} label)",
                labels::COMPONENT,
                contract::components::MOUNT_PROBE
            ));
            Ok(())
        }
        Some(_) => delete_reporting::<ConfigMap>(client, ns, &name, progress).await,
    }
}

/// Removes the record's finalizer (the only way pgset removes it: `down --purge --yes`), with
/// a merge patch of the finalizers without pgset's, on the resourceVersion read.
async fn release_record(
    client: &Client,
    spec: &ClusterSpec,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let ns = spec.namespace.as_str();
    let name = spec.record_name();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let Some(cm) = api
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "ConfigMap", &name, ns))?
    else {
        return Ok(());
    };
    let finalizers = cm.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == record::FINALIZER) {
        return Ok(());
    }
    let kept: Vec<&String> = finalizers
        .iter()
        .filter(|f| *f != record::FINALIZER)
        .collect();
    let patch = serde_json::json!({ "metadata": {
        "finalizers": kept,
        "resourceVersion": cm.metadata.resource_version,
    }});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::api("patch", "ConfigMap", &name, ns))?;
    progress(&format!(
        "removed the finalizer {} of ConfigMap {name}",
        record::FINALIZER
    ));
    Ok(())
}

/// Watches the objects `config` selects until none of them `counts` is left, or the
/// deadline passes (then the error names those still there).
async fn wait_until_gone<K, F>(
    what: String,
    deadline: &Deadline,
    api: Api<K>,
    config: watcher::Config,
    namespace: &str,
    counts: F,
) -> Result<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    F: Fn(&K) -> bool,
{
    let selector = config.label_selector.clone().unwrap_or_default();
    let mut listing = Listing::default();
    let watching = until_listing(api, config, &mut listing, |objects| {
        !objects.values().any(&counts)
    });
    match tokio::time::timeout(deadline.remaining(), watching).await {
        Ok(result) => result.map_err(Error::watch(kind_of::<K>(), selector, namespace)),
        Err(_) => {
            let left: Vec<&str> = listing
                .objects
                .iter()
                .filter(|(_, o)| counts(o))
                .map(|(name, _)| name.as_str())
                .collect();
            Err(Error::Timeout {
                what,
                waited: deadline.total,
                status: format!("still present: {}", left.join(", ")),
            })
        }
    }
}

/// True when `claim` is one of this cluster's: it carries the cluster's selector labels (the
/// shared claim and the StatefulSet's per-member claims), or it is the shared claim by name.
fn is_cluster_claim(spec: &ClusterSpec, claim: &PersistentVolumeClaim) -> bool {
    let labelled = claim.metadata.labels.as_ref().is_some_and(|l| {
        spec.selector_labels()
            .iter()
            .all(|(k, v)| l.get(*k) == Some(v))
    });
    labelled || claim.metadata.name.as_deref() == Some(spec.shared_claim_name().as_str())
}

/// The label selector of pgset's PersistentVolumes of this cluster.
fn volume_selector(spec: &ClusterSpec) -> String {
    format!(
        "{}={APP_NAME},{}={}",
        labels::MANAGED_BY,
        labels::INSTANCE,
        spec.name
    )
}

/// Names of the objects of kind `K` in the namespace carrying this cluster's selector labels.
async fn labelled_names<K: NamespacedObject>(
    client: &Client,
    spec: &ClusterSpec,
) -> Result<Vec<String>> {
    let ns = spec.namespace.as_str();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let selector = selector_string(spec);
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api("list", kind_of::<K>(), &selector, ns))?;
    Ok(list
        .items
        .iter()
        .filter_map(|o| o.meta().name.clone())
        .collect())
}

/// This cluster's claims: those carrying its selector labels (the shared claim and the
/// StatefulSet's per-member claims), plus the shared claim by name.
pub(crate) async fn cluster_claims(client: &Client, spec: &ClusterSpec) -> Result<Vec<String>> {
    let ns = spec.namespace.as_str();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let mut found = labelled_names::<PersistentVolumeClaim>(client, spec).await?;
    let shared = spec.shared_claim_name();
    if !found.contains(&shared)
        && api
            .get_opt(&shared)
            .await
            .map_err(Error::api("get", "PersistentVolumeClaim", &shared, ns))?
            .is_some()
    {
        found.push(shared);
    }
    found.sort();
    Ok(found)
}

/// pgset's PersistentVolumes of this cluster: labelled managed-by=pgset and instance=<name>,
/// and either bound (or pre-bound) to a claim of this namespace, or unbound with a name this
/// spec gives its volumes. PersistentVolumes of other clusters are never selected.
pub fn is_cluster_volume(spec: &ClusterSpec, pv: &PersistentVolume) -> bool {
    let labels_match = pv.metadata.labels.as_ref().is_some_and(|l| {
        l.get(labels::MANAGED_BY).map(String::as_str) == Some(APP_NAME)
            && l.get(labels::INSTANCE) == Some(&spec.name)
    });
    if !labels_match {
        return false;
    }
    let name = pv.metadata.name.clone().unwrap_or_default();
    match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
        Some(claim) => claim.namespace.as_deref() == Some(spec.namespace.as_str()),
        // Unbound: one of the names pgset gives volumes, for any size the cluster had
        // in either storage mode ([`ClusterSpec::shared_pv_names`], [`ClusterSpec::member_pv_name`]).
        None => {
            let widest = ClusterSpec {
                replicas: pgset_spec::MAX_REPLICAS,
                ..spec.clone()
            };
            widest.shared_pv_names().contains(&name)
                || (0..widest.replicas).any(|o| widest.member_pv_name(o) == name)
        }
    }
}

async fn cluster_volumes(client: &Client, spec: &ClusterSpec) -> Result<Vec<String>> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let selector = volume_selector(spec);
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::api("list", "PersistentVolume", &selector, "-"))?;
    let mut found: Vec<String> = list
        .items
        .iter()
        .filter(|pv| is_cluster_volume(spec, pv))
        .filter_map(|pv| pv.metadata.name.clone())
        .collect();
    found.sort();
    Ok(found)
}

/// The StatefulSet's `spec.replicas`, 0 when it does not exist.
async fn current_replicas_or_absent(client: &Client, spec: &ValidSpec) -> Result<i32> {
    match crate::scale::current_replicas(client, spec).await {
        Err(Error::NotDeployed { .. }) => Ok(0),
        other => other,
    }
}

/// Pauses failover on the leader Lease (when it exists) so no member takes the master role
/// while the members stop, and says which member is the master when it is not ordinal 0.
async fn pause_before_stopping(
    client: &Client,
    spec: &ValidSpec,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let lease = pgset_spec::contract::leader_lease_name(&spec.name);
    let view = read_master(client, spec).await?;
    if let Some(master) = &view.master
        && view.ordinal() != Some(0)
    {
        progress(&format!(
            "the master is {master}, not ordinal 0: the StatefulSet stops the highest ordinals first, so the members above it stop before it and those below it after it"
        ));
    }
    match pause_failover(client, spec).await? {
        Pause::Paused => progress(&format!(
            "paused failover on Lease {lease}: no member takes the master role while they stop; it stays paused (a waited `{p} deploy` or `{p} scale N` removes the pause once the members are Ready again)",
            p = pgset_spec::contract::program_name()
        )),
        Pause::AlreadyPaused => progress(&format!("failover already paused on Lease {lease}")),
        Pause::NoLeader => {}
    }
    Ok(())
}

/// Takes the cluster off: scale to 0 and wait (up to `timeout` for the whole teardown), then
/// delete StatefulSet, (claims and PersistentVolumes when purging), Services, (Secret when
/// purging), RBAC. Objects already absent are fine: a second run changes nothing.
pub async fn down(
    client: &Client,
    spec: &ValidSpec,
    purge: Purge,
    timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let deadline = Deadline::new(timeout);
    let ns = spec.namespace.as_str();
    let sts_name = spec.statefulset_name();

    if current_replicas_or_absent(client, spec).await? > 0 {
        pause_before_stopping(client, spec, progress).await?;
    }
    match set_replicas(client, spec, 0).await {
        Ok(0) => progress(&format!("StatefulSet {sts_name} already at 0 members")),
        Ok(from) => progress(&format!("StatefulSet {sts_name}: {from} -> 0 members")),
        Err(Error::NotDeployed { .. }) => progress(&format!("StatefulSet {sts_name} absent")),
        Err(e) => return Err(e),
    }
    let started = Instant::now();
    wait_until_gone(
        format!("the pods of {sts_name} in namespace {ns} to stop"),
        &deadline,
        Api::<Pod>::namespaced(client.clone(), ns),
        watcher::Config::default().labels(&selector_string(spec)),
        ns,
        |_: &Pod| true,
    )
    .await?;
    progress(&format!(
        "all pods stopped after {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    delete_reporting::<StatefulSet>(client, ns, sts_name, progress).await?;

    match purge {
        Purge::Everything => {
            let claims = cluster_claims(client, spec).await?;
            for claim in &claims {
                delete_reporting::<PersistentVolumeClaim>(client, ns, claim, progress).await?;
            }
            wait_until_gone(
                format!("the claims of {sts_name} in namespace {ns} to be deleted"),
                &deadline,
                Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns),
                watcher::Config::default(),
                ns,
                |claim: &PersistentVolumeClaim| is_cluster_claim(spec, claim),
            )
            .await?;
            let api: Api<PersistentVolume> = Api::all(client.clone());
            for pv in cluster_volumes(client, spec).await? {
                match api.delete(&pv, &DeleteParams::default()).await {
                    Ok(_) => progress(&format!("deleted PersistentVolume {pv}")),
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(Error::api("delete", "PersistentVolume", &pv, "-")(e)),
                }
            }
            wait_until_gone(
                format!("the PersistentVolumes of {sts_name} to be deleted"),
                &deadline,
                Api::<PersistentVolume>::all(client.clone()),
                watcher::Config::default().labels(&volume_selector(spec)),
                "-",
                |pv: &PersistentVolume| is_cluster_volume(spec, pv),
            )
            .await?;
        }
        Purge::Keep => {
            for claim in cluster_claims(client, spec).await? {
                progress(&format!(
                    "kept PersistentVolumeClaim {claim} (data stays; --purge --yes deletes it)"
                ));
            }
        }
    }

    for service in [
        spec.replica_service_name(),
        spec.master_service_name(),
        spec.headless_service_name().to_string(),
    ] {
        delete_reporting::<Service>(client, ns, &service, progress).await?;
    }
    match purge {
        Purge::Everything => {
            delete_reporting::<Secret>(client, ns, &spec.secret_name(), progress).await?;
            // The TLS material pgset made (auto); a user's provided Secrets are theirs.
            if spec.tls.mode == pgset_spec::TlsMode::Auto {
                for secret in [
                    spec.tls_replication_secret_name(),
                    spec.tls_server_secret_name(),
                    spec.ca_secret_name(),
                ] {
                    delete_reporting::<Secret>(client, ns, &secret, progress).await?;
                }
                delete_reporting::<ConfigMap>(client, ns, &spec.ca_configmap_name(), progress)
                    .await?;
            }
            release_record(client, spec, progress).await?;
            delete_reporting::<ConfigMap>(client, ns, &spec.record_name(), progress).await?;
            delete_leases(client, spec, progress).await?;
            delete_probe_proof(client, spec, progress).await?;
        }
        Purge::Keep => {
            progress(&format!(
                "kept Secret {} and ConfigMap {} (they belong to the data; --purge --yes deletes them)",
                spec.secret_name(),
                spec.record_name()
            ));
            if spec.tls.mode == pgset_spec::TlsMode::Auto {
                progress(&format!(
                    "kept the CA Secret {} that clients trust, its certificates and ConfigMap {} (--purge --yes deletes them)",
                    spec.ca_secret_name(),
                    spec.ca_configmap_name()
                ));
            }
        }
    }
    // Member isolation holds no data: it goes with the RBAC, purging or not.
    crate::isolation::delete(client, spec, progress).await?;
    crate::isolation::delete_drill_leftover(client, spec, progress).await?;
    // The certificate renewal (its job holds no data): whatever the spec's TLS mode now.
    let renewal = crate::tls::renewal::name(spec);
    delete_reporting::<CronJob>(client, ns, &renewal, progress).await?;
    delete_reporting::<RoleBinding>(client, ns, &renewal, progress).await?;
    delete_reporting::<Role>(client, ns, &renewal, progress).await?;
    delete_reporting::<ServiceAccount>(client, ns, &renewal, progress).await?;
    delete_reporting::<RoleBinding>(client, ns, &spec.role_name(), progress).await?;
    delete_reporting::<Role>(client, ns, &spec.role_name(), progress).await?;
    delete_reporting::<ServiceAccount>(client, ns, &spec.service_account_name(), progress).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leader_record_and_the_members_fences_are_the_clusters_leases() {
        let spec = crate::testutil::named_spec("db", "default");
        for yes in ["db-leader", "db-0-member", "db-12-member"] {
            assert!(is_cluster_lease(&spec, yes), "{yes}");
        }
        for no in [
            "db-member",
            "db--member",
            "db-x-member",
            "dbx-0-member",
            "other-leader",
            "db-0-member-x",
            "db-backup",
        ] {
            assert!(!is_cluster_lease(&spec, no), "{no}");
        }
    }
    use crate::testutil::named_spec;
    use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pv(name: &str, instance: &str, claim_ns: Option<&str>) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [
                        (labels::MANAGED_BY.to_string(), APP_NAME.to_string()),
                        (labels::INSTANCE.to_string(), instance.to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                claim_ref: claim_ns.map(|ns| ObjectReference {
                    namespace: Some(ns.into()),
                    name: Some("data-db-0".into()),
                    ..ObjectReference::default()
                }),
                ..PersistentVolumeSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn only_this_clusters_volumes_are_selected() {
        let spec = named_spec("db", "prod");
        assert!(is_cluster_volume(
            &spec,
            &pv("prod.data-db-0", "db", Some("prod"))
        ));
        assert!(is_cluster_volume(&spec, &pv("prod.db-pvc", "db", None)));
        assert!(is_cluster_volume(&spec, &pv("prod.data-db-3", "db", None)));
        assert!(
            is_cluster_volume(&spec, &pv("prod.data-db-7", "db", None)),
            "from an earlier scale-up"
        );
        assert!(!is_cluster_volume(&spec, &pv("data-7", "db", None)));
        // The seed's names belong to the default cluster alone: an unreserved `pv1` labelled
        // `db` could have been made for `db` in any namespace.
        assert!(!is_cluster_volume(&spec, &pv("pv1", "db", None)));
        // Same cluster name in another namespace.
        assert!(!is_cluster_volume(
            &spec,
            &pv("test.data-db-0", "db", Some("test"))
        ));
        assert!(!is_cluster_volume(&spec, &pv("test.data-db-0", "db", None)));
        // Another cluster.
        assert!(!is_cluster_volume(
            &spec,
            &pv("prod.data-other-0", "other", Some("prod"))
        ));
        // Not pgset's.
        let mut foreign = pv("prod.data-db-1", "db", Some("prod"));
        foreign.metadata.labels = None;
        assert!(!is_cluster_volume(&spec, &foreign));
        // The default cluster keeps the seed's names, free ones included.
        let default = ClusterSpec::default();
        assert!(is_cluster_volume(&default, &pv("pv7", "pgset", None)));
        assert!(is_cluster_volume(
            &default,
            &pv("pgset-default-3", "pgset", None)
        ));
        assert!(!is_cluster_volume(
            &default,
            &pv("pv1", "pgset", Some("staging"))
        ));
    }
}
