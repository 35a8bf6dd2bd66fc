//! Server-side apply of a cluster's objects in a fixed order (RBAC, member isolation where the
//! API server serves it, the cluster record,
//! Secret, the TLS Secrets and CA ConfigMap (`tls`), Services, claim, StatefulSet) with one field manager; the Secret is get-or-create
//! and never overwritten, the record is created once (see `record`); after a deploy that saw
//! every member Ready, the failover pause `down` or `scale` left is lifted.

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use pgset_spec::ValidSpec;
use pgset_spec::contract::FIELD_MANAGER;
use pgset_spec::contract::secret::CLUSTER_ID_KEY;

use crate::isolation::{self, Isolation};
use crate::master::{read_leader, resume_failover};
use crate::rollout::RolloutReport;
use crate::secret::{Passwords, has_cluster_id, missing_keys, new_cluster_id, secret};
use crate::{ClusterObjects, Error, NamespacedObject, Result, is_status, record};

/// Whether changes are made or only checked by the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Apply for real.
    Apply,
    /// `dryRun=All`: the server validates, defaults and admits, but stores nothing.
    ServerDryRun,
}

impl ApplyMode {
    fn is_dry_run(self) -> bool {
        self == ApplyMode::ServerDryRun
    }

    pub(crate) fn suffix(self) -> &'static str {
        match self {
            ApplyMode::Apply => "",
            ApplyMode::ServerDryRun => " (server dry run)",
        }
    }
}

/// What happened to the Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretOutcome {
    /// It existed with both keys and was left as it was.
    Kept,
    /// It was created with fresh random passwords.
    Created,
    /// It was missing while the cluster record (or the member pods) named the cluster's id: it
    /// was created with that cluster id and fresh random passwords (the master sets both roles'
    /// passwords from the Secret when it starts).
    CreatedWithRecordedId,
    /// It existed without a cluster id (made before cluster ids): one was added, the passwords
    /// were left as they were.
    ClusterIdAdded,
}

/// Server-side apply parameters: pgset's field manager, taking over conflicting fields.
pub fn apply_params(mode: ApplyMode) -> PatchParams {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if mode.is_dry_run() {
        params.dry_run()
    } else {
        params
    }
}

/// The static kind name of a k8s-openapi type.
pub(crate) fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "object",
    }
}

/// Makes sure Secret `<name>-secret` exists with both passwords: an existing Secret is never
/// written; an absent one is created with fresh random passwords.
pub async fn ensure_secret(
    client: &Client,
    spec: &ValidSpec,
    mode: ApplyMode,
) -> Result<SecretOutcome> {
    ensure_secret_keeping(client, spec, mode, None)
        .await
        .map(|(outcome, _)| outcome)
}

/// [`ensure_secret`], where a Secret made (or given a cluster id) takes `recorded_id`, the
/// cluster id the record or the member pods name, instead of a new one: the members' data
/// carries that id. Returns the outcome and the Secret's cluster id.
pub async fn ensure_secret_keeping(
    client: &Client,
    spec: &ValidSpec,
    mode: ApplyMode,
    recorded_id: Option<&str>,
) -> Result<(SecretOutcome, String)> {
    let existing = read_secret(client, spec).await?;
    let (cluster_id, recorded) = secret_cluster_id(existing.as_ref(), recorded_id)?;
    let outcome =
        write_secret(client, spec, mode, existing.as_ref(), &cluster_id, recorded).await?;
    Ok((outcome, cluster_id))
}

/// Reads the Secret and checks that an existing one has both passwords (pgset never
/// overwrites them); `None` when it does not exist.
pub async fn read_secret(client: &Client, spec: &ValidSpec) -> Result<Option<Secret>> {
    let name = spec.secret_name();
    let ns = spec.namespace.as_str();
    let existing = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&name)
        .await
        .map_err(Error::api("get", "Secret", &name, ns))?;
    if let Some(existing) = &existing {
        check_existing(existing, &name)?;
    }
    Ok(existing)
}

/// The cluster's id: the existing Secret's, else `recorded_id` (the record's or the member
/// pods'), else a new one; and whether it came from `recorded_id`.
pub fn secret_cluster_id(
    existing: Option<&Secret>,
    recorded_id: Option<&str>,
) -> Result<(String, bool)> {
    if let Some(id) = existing.and_then(cluster_id_of) {
        return Ok((id, false));
    }
    match recorded_id {
        Some(id) => Ok((id.to_string(), true)),
        None => Ok((new_cluster_id()?, false)),
    }
}

/// Makes the Secret as read (`existing`) hold `cluster_id`: an existing Secret with a cluster id
/// is left as it is; one without gets that key alone; a missing one is created with fresh
/// random passwords. `recorded`: the id is the one the record or the members name.
async fn write_secret(
    client: &Client,
    spec: &ValidSpec,
    mode: ApplyMode,
    existing: Option<&Secret>,
    cluster_id: &str,
    recorded: bool,
) -> Result<SecretOutcome> {
    let name = spec.secret_name();
    let ns = spec.namespace.as_str();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    if let Some(existing) = existing {
        if cluster_id_of(existing).is_some() {
            return Ok(SecretOutcome::Kept);
        }
        // Only the missing key is added (a merge patch of one data key); the passwords stay.
        let patch = serde_json::json!({
            "data": { CLUSTER_ID_KEY: ByteString(cluster_id.as_bytes().to_vec()) }
        });
        let mut params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        if mode.is_dry_run() {
            params = params.dry_run();
        }
        api.patch(&name, &params, &Patch::Merge(&patch))
            .await
            .map_err(Error::api("patch", "Secret", &name, ns))?;
        return Ok(SecretOutcome::ClusterIdAdded);
    }
    let passwords = Passwords::generate()?;
    let params = PostParams {
        dry_run: mode.is_dry_run(),
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    match api
        .create(&params, &secret(spec, &passwords, cluster_id))
        .await
    {
        Ok(_) if recorded => Ok(SecretOutcome::CreatedWithRecordedId),
        Ok(_) => Ok(SecretOutcome::Created),
        // Created by someone else between our get and create: theirs is used if it is whole
        // and holds this cluster id.
        Err(e) if is_status(&e, 409) => {
            let theirs = api
                .get(&name)
                .await
                .map_err(Error::api("get", "Secret", &name, ns))?;
            check_existing(&theirs, &name)?;
            match cluster_id_of(&theirs) {
                Some(id) if id == cluster_id => Ok(SecretOutcome::Kept),
                _ => Err(Error::api("create", "Secret", &name, ns)(e)),
            }
        }
        Err(e) => Err(Error::api("create", "Secret", &name, ns)(e)),
    }
}

/// The Secret's cluster id, when it has a non-empty one.
fn cluster_id_of(secret: &Secret) -> Option<String> {
    if !has_cluster_id(secret) {
        return None;
    }
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(CLUSTER_ID_KEY))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string());
    let from_string_data = || {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(CLUSTER_ID_KEY))
            .map(|v| v.trim().to_string())
    };
    from_data
        .filter(|v| !v.is_empty())
        .or_else(from_string_data)
        .filter(|v| !v.is_empty())
}

fn check_existing(existing: &Secret, name: &str) -> Result<()> {
    match missing_keys(existing).first() {
        Some(key) => Err(Error::SecretIncomplete {
            name: name.to_string(),
            key,
        }),
        None => Ok(()),
    }
}

/// With `agent.delivery: image`, every node that may run the members must run the agent from an
/// image volume (preflight judges the same for `up`; `deploy` alone checks it here, before any
/// write).
async fn image_volumes_usable(client: &Client, spec: &ValidSpec) -> Result<()> {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await
        .map_err(Error::api("list", "Node", "", ""))?;
    let unable: Vec<String> = nodes
        .items
        .iter()
        .map(|n| crate::preflight::node_facts(n, &spec.agent.image))
        .filter(|f| f.kept_off(spec.tolerate_control_plane).is_empty())
        .filter(|f| !crate::preflight::runs_from_image_volumes(&f.runtime))
        .map(|f| {
            format!(
                "{} ({})",
                f.name,
                if f.runtime.is_empty() {
                    "unknown runtime"
                } else {
                    &f.runtime
                }
            )
        })
        .collect();
    if unable.is_empty() {
        Ok(())
    } else {
        Err(Error::NoImageVolumes {
            nodes: unable.join(", "),
        })
    }
}

/// Applies every object of `spec` in order (RBAC, the cluster record, Secret, Services, claim,
/// StatefulSet), reporting one line per object to `progress`.
pub async fn deploy(
    client: &Client,
    spec: &ValidSpec,
    mode: ApplyMode,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<DeployOutcome> {
    // The networks the members' pg_hba admits replication from, when the spec names none.
    let (completed, network) = crate::network::complete_access(client, spec).await;
    let spec = &completed;
    let ClusterObjects {
        service_account,
        role,
        role_binding,
        member_policy,
        member_policy_binding,
        cluster_record,
        headless_service,
        master_service,
        replica_service,
        shared_claim,
        statefulset,
        cert_renewal,
    } = ClusterObjects::build(spec);
    let ns = spec.namespace.as_str();
    let suffix = mode.suffix();
    let mut changes = DeployOutcome::default();

    // Before any write: running members are never switched between TLS and plain in place.
    let running = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(spec.statefulset_name())
        .await
        .map_err(Error::api(
            "get",
            "StatefulSet",
            spec.statefulset_name(),
            ns,
        ))?;
    if let Some(problem) = crate::tls::switch_problem(spec, running.as_ref()) {
        return Err(Error::Tls(format!("{problem}; nothing was changed")));
    }
    if spec.agent.delivery == pgset_spec::AgentDelivery::Image {
        image_volumes_usable(client, spec).await?;
    }

    if let Some(line) = network {
        progress(&line);
    }
    changes
        .record(apply_one::<ServiceAccount>(client, ns, &service_account, mode, progress).await?);
    changes.record(apply_one::<Role>(client, ns, &role, mode, progress).await?);
    changes.record(apply_one::<RoleBinding>(client, ns, &role_binding, mode, progress).await?);
    // Before any member runs with the ServiceAccount: each member's token acts only as itself.
    if let Isolation::Applied(applied) = isolation::apply(
        client,
        spec,
        &member_policy,
        &member_policy_binding,
        mode,
        progress,
    )
    .await?
    {
        for one in applied {
            changes.record(one);
        }
    }

    // Everything the Secret and the record depend on is read first (and an incomplete Secret
    // refused before any write): the record, the member pods, the Secret. The record is made
    // before the Secret, with the Secret's cluster id, so a deploy stopped between the two
    // leaves a record that names the id the next deploy's Secret takes.
    let prior_record = record::read(client, spec).await?;
    let pods = record::member_pods(client, spec).await?;
    let existing_secret = read_secret(client, spec).await?;
    let recorded_id = record::inherited_cluster_id(prior_record.as_ref(), &pods);
    let (cluster_id, recorded) =
        secret_cluster_id(existing_secret.as_ref(), recorded_id.as_deref())?;
    let known = record::Known {
        prior: prior_record.as_ref(),
        cluster_id: &cluster_id,
        secret_had_cluster_id: existing_secret.as_ref().is_some_and(has_cluster_id),
        pods: &pods,
    };
    let record_applied =
        record::ensure(client, spec, mode, &cluster_record, known, progress).await?;
    let outcome = write_secret(
        client,
        spec,
        mode,
        existing_secret.as_ref(),
        &cluster_id,
        recorded,
    )
    .await?;
    if outcome != SecretOutcome::Kept {
        changes
            .changed
            .push(format!("Secret/{}", spec.secret_name()));
    } else {
        changes.unchanged += 1;
    }
    progress(&match outcome {
        SecretOutcome::Kept => format!("kept Secret {} (existing passwords)", spec.secret_name()),
        SecretOutcome::Created => format!(
            "created Secret {} with new random passwords{suffix}",
            spec.secret_name()
        ),
        SecretOutcome::CreatedWithRecordedId => format!(
            "created Secret {} with new random passwords and the cluster id {cluster_id} that ConfigMap {} or the member pods name (the members' data carries it){suffix}",
            spec.secret_name(),
            spec.record_name()
        ),
        SecretOutcome::ClusterIdAdded => format!(
            "added a cluster id to Secret {} (passwords kept){suffix}",
            spec.secret_name()
        ),
    });

    changes.record(record_applied);

    // The certificates before any member that mounts them.
    for applied in crate::tls::ensure(client, spec, mode, pgset_tls::now(), progress).await? {
        changes.record(applied);
    }

    for service in [&headless_service, &master_service, &replica_service] {
        changes.record(apply_one::<Service>(client, ns, service, mode, progress).await?);
    }
    if let Some(claim) = &shared_claim {
        let applied = apply_one::<PersistentVolumeClaim>(client, ns, claim, mode, progress)
            .await
            .map_err(|e| match e {
                Error::Api { source, .. } if is_status(&source, 422) => Error::ClaimImmutable {
                    name: spec.shared_claim_name(),
                    namespace: ns.to_string(),
                    volume: claim
                        .spec
                        .as_ref()
                        .and_then(|s| s.volume_name.clone())
                        .unwrap_or_else(|| spec.shared_pv_names().join(", ")),
                    source,
                },
                other => other,
            })?;
        changes.record(applied);
    }
    let applied = apply_one::<StatefulSet>(client, ns, &statefulset, mode, progress)
        .await
        .map_err(|e| match e {
            Error::Api { source, .. } if is_immutable_field_refusal(&source) => {
                Error::StatefulSetImmutable {
                    name: spec.statefulset_name().to_string(),
                    namespace: ns.to_string(),
                    source,
                }
            }
            other => other,
        })?;
    changes.record(applied);
    // The daily renewal of the certificates made above (tls.mode auto), with its own identity;
    // otherwise none an earlier auto deploy left.
    if cert_renewal.is_none() {
        crate::tls::renewal::remove_leftover(client, spec, mode, progress).await?;
    }
    if let Some(r) = &cert_renewal {
        changes.record(
            apply_one::<ServiceAccount>(client, ns, &r.service_account, mode, progress).await?,
        );
        changes.record(apply_one::<Role>(client, ns, &r.role, mode, progress).await?);
        changes
            .record(apply_one::<RoleBinding>(client, ns, &r.role_binding, mode, progress).await?);
        changes.record(apply_one::<CronJob>(client, ns, &r.cron_job, mode, progress).await?);
    }
    Ok(changes)
}

/// What a deploy did about the failover pause that `down` or `scale` leaves on the leader Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseAfterDeploy {
    /// No pause (or no leader Lease): nothing was written.
    NotPaused,
    /// Every member became Ready: the pause was removed.
    Lifted,
    /// The deploy did not see every member Ready: the pause stays.
    Kept,
}

/// After a deploy: one that waited until every member was Ready (`rollout`, the report of
/// that wait) removes the failover pause `down` or `scale` left on the leader Lease (a merge
/// patch of that one annotation on the resourceVersion read, so the Lease's other annotations
/// stay and a write racing the holder's renewal is made again on the new version), saying so;
/// one that did not wait leaves it and says how to lift it. A Lease without the pause is not
/// written.
pub async fn lift_failover_pause(
    client: &Client,
    spec: &ValidSpec,
    rollout: Option<&RolloutReport>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<PauseAfterDeploy> {
    let lease = pgset_spec::contract::leader_lease_name(&spec.name);
    let all_ready = rollout.is_some_and(|r| {
        spec.replicas > 0 && usize::try_from(spec.replicas).is_ok_and(|n| r.members.len() == n)
    });
    if all_ready {
        if resume_failover(client, spec).await? {
            progress(&format!(
                "removed the failover pause on Lease {lease}: all {} members are Ready",
                spec.replicas
            ));
            return Ok(PauseAfterDeploy::Lifted);
        }
        return Ok(PauseAfterDeploy::NotPaused);
    }
    if read_leader(client, spec)
        .await?
        .is_some_and(|l| l.failover_paused)
    {
        progress(&format!(
            "failover stays paused on Lease {lease}: run `{} deploy` without --no-wait to wait for the members and lift it",
            pgset_spec::contract::program_name()
        ));
        return Ok(PauseAfterDeploy::Kept);
    }
    Ok(PauseAfterDeploy::NotPaused)
}

/// What a deploy changed. A deploy over a cluster that already matches the spec changes
/// nothing: every object keeps its resourceVersion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployOutcome {
    /// `Kind/name` of each object created or changed (none in a server dry run).
    pub changed: Vec<String>,
    /// How many objects were already as the spec says.
    pub unchanged: usize,
}

impl DeployOutcome {
    /// One line for the user: what changed, or that nothing did.
    pub fn summary(&self) -> String {
        if self.changed.is_empty() {
            format!(
                "nothing changed ({} objects as the spec says)",
                self.unchanged
            )
        } else {
            format!("changed {}", self.changed.join(", "))
        }
    }

    /// Counts one apply.
    pub fn record(&mut self, applied: Applied) {
        match applied {
            Applied::Unchanged => self.unchanged += 1,
            Applied::Created(what) | Applied::Changed(what) => self.changed.push(what),
        }
    }
}

/// What one apply did, judged by the object's resourceVersion before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The object did not exist (`Kind/name`).
    Created(String),
    /// The object existed and the apply changed it (`Kind/name`).
    Changed(String),
    /// The object was already as applied (or this was a dry run).
    Unchanged,
}

/// Server-side applies `object` through `api` (namespaced or cluster-wide) and tells whether it
/// was created, changed or already so; `progress` gets one line saying which.
pub async fn apply_reporting<K>(
    api: &Api<K>,
    object: &K,
    mode: ApplyMode,
    progress: &mut (dyn FnMut(&str) + Send),
) -> std::result::Result<Applied, kube::Error>
where
    K: Resource<DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let kind = kind_of::<K>();
    let name = object.meta().name.clone().unwrap_or_default();
    let before = api
        .get_opt(&name)
        .await?
        .and_then(|o| o.meta().resource_version.clone());
    let applied = api
        .patch(&name, &apply_params(mode), &Patch::Apply(object))
        .await?;
    let after = applied.meta().resource_version.clone().unwrap_or_default();
    let what = format!("{kind}/{name}");
    let (verb, outcome) = match before {
        // A dry run stores nothing, so nothing changed whatever the server would do.
        _ if mode.is_dry_run() => ("validated", Applied::Unchanged),
        None => ("created", Applied::Created(what)),
        Some(v) if v == after => ("unchanged", Applied::Unchanged),
        Some(_) => ("configured", Applied::Changed(what)),
    };
    progress(&format!(
        "{verb} {kind} {name} (resourceVersion {after}){}",
        mode.suffix()
    ));
    Ok(outcome)
}

/// True when the API server refused a StatefulSet update because it touches a field that
/// cannot change.
fn is_immutable_field_refusal(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 422 && status.message.contains("Forbidden: updates to statefulset spec"))
}

async fn apply_one<K>(
    client: &Client,
    namespace: &str,
    object: &K,
    mode: ApplyMode,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Applied>
where
    K: NamespacedObject,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    apply_reporting(&api, object, mode, progress)
        .await
        .map_err(Error::api("apply", kind_of::<K>(), name, namespace))
}
