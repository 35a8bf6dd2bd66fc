//! The cluster's TLS material as Kubernetes objects: in `tls.mode: auto` a CA kept in Secret
//! `<name>-ca` (made once, never rewritten while valid, never mounted into a member), the server
//! certificate (every name a client uses) and the replication role's client certificate in
//! Secrets of their own (cert-manager's shape: `tls.crt`, `tls.key`, `ca.crt`; reissued only
//! when due), and the CA's certificate alone in ConfigMap `<name>-ca-cert` for clients; in
//! `provided` mode the user's two Secrets, only read and checked. Members get the two
//! certificate Secrets as one projected volume under the contract's file names.
//!
//! Keys: a Secret volume's files are owned by root, group the pod's `fsGroup` (the postgres
//! gid), with the volume's mode. [`TLS_FILE_MODE`] 0440 makes the keys readable by the postgres
//! user through its group and by no one else; PostgreSQL accepts a key owned by root without
//! group write or any access for others, and so does libpq (and the agent's own check). The
//! files stay the kubelet's, so a renewed Secret reaches a running member in place (an atomic
//! symlink swap) without the agent copying anything.
//!
//! The `ca.crt` members and clients get is a trust bundle ([`trust_bundle`]): the CA, or
//! during a CA rotation the old and the new one; a CA near its end is rotated with overlap by
//! [`ca_rotation`] (from `deploy`, or `rotate-certs --ca`), never replaced in one step.
//!
//! The builders and the judgement ([`judge_leaf`], [`judge_ca`]) are pure; [`ensure`] reads the
//! cluster, then creates or patches what is missing or due.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, ProjectedVolumeSource, Secret, SecretProjection, Volume, VolumeProjection,
};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pgset_spec::contract::{self, FIELD_MANAGER, tls as files};
use pgset_spec::{ClusterSpec, MAX_REPLICAS, TlsMode, ValidSpec};
use pgset_tls::{CertFacts, Issued, Now};

/// The current time, as [`ensure`] and [`rotate`] take it.
pub use pgset_tls::now;

use crate::apply::{Applied, ApplyMode};
use crate::{Error, Result, object_meta};

/// The Secret type of every certificate Secret (`tls.crt`, `tls.key`).
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// Mode of the TLS files in a member: root-owned, readable by the pod's group (the postgres
/// gid through `fsGroup`), nothing for others.
pub const TLS_FILE_MODE: i32 = 0o440;
/// Name of the TLS volume in the pod.
pub const TLS_VOLUME: &str = "tls";
/// The cluster domain the fully qualified names end in.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Every name the server certificate carries: the master and replica Services and the pod
/// names of every ordinal a cluster may have (up to [`MAX_REPLICAS`], so scaling never needs a
/// new certificate) under the headless Service, each short, with the namespace, with `.svc`
/// and with `.svc.cluster.local`.
pub fn server_names(spec: &ClusterSpec) -> Vec<String> {
    let pods: Vec<String> = (0..MAX_REPLICAS).map(|o| spec.pod_name(o)).collect();
    pgset_tls::cluster_names(
        &spec.master_service_name(),
        &spec.replica_service_name(),
        spec.headless_service_name(),
        &pods,
        &spec.namespace,
        CLUSTER_DOMAIN,
    )
}

/// The CA's common name for this cluster.
pub fn ca_common_name(spec: &ClusterSpec) -> String {
    format!("{} {}", pgset_tls::CA_COMMON_NAME, spec.name)
}

fn bytes(map: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    map.iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// Secret `<name>-ca`: the CA's certificate and key (`tls.crt`, `tls.key`).
pub fn ca_secret(spec: &ClusterSpec, ca: &Issued) -> Secret {
    Secret {
        metadata: object_meta(spec, spec.ca_secret_name()),
        type_: Some(TLS_SECRET_TYPE.into()),
        data: Some(bytes(&[
            (files::SECRET_CERT_KEY, &ca.cert_pem),
            (files::SECRET_KEY_KEY, &ca.key_pem),
        ])),
        ..Secret::default()
    }
}

/// A certificate Secret `name`: `tls.crt`, `tls.key` and the CA's `ca.crt`.
pub fn leaf_secret(spec: &ClusterSpec, name: &str, leaf: &Issued, ca_cert_pem: &str) -> Secret {
    Secret {
        metadata: object_meta(spec, name),
        type_: Some(TLS_SECRET_TYPE.into()),
        data: Some(bytes(&[
            (files::SECRET_CERT_KEY, &leaf.cert_pem),
            (files::SECRET_KEY_KEY, &leaf.key_pem),
            (files::SECRET_CA_KEY, ca_cert_pem),
        ])),
        ..Secret::default()
    }
}

/// ConfigMap `<name>-ca-cert`: the trust bundle (the CA's certificate; old and new CA during a
/// CA rotation), for clients.
pub fn ca_configmap(spec: &ClusterSpec, ca_cert_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(spec, spec.ca_configmap_name()),
        data: Some(BTreeMap::from([(
            files::CONFIGMAP_CA_KEY.to_string(),
            ca_cert_pem.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// The members' TLS volume: the server Secret's `tls.crt`, `tls.key` and `ca.crt` and the
/// replication Secret's `tls.crt` and `tls.key`, projected under the file names the agent
/// reads ([`contract::tls`]), mode [`TLS_FILE_MODE`]. Never the CA's key. `None` with TLS off.
pub fn volume(spec: &ClusterSpec) -> Option<Volume> {
    if !spec.tls.enabled() {
        return None;
    }
    let item = |key: &str, path: &str| KeyToPath {
        key: key.into(),
        path: path.into(),
        mode: None,
    };
    let project = |secret: String, items: Vec<KeyToPath>| VolumeProjection {
        secret: Some(SecretProjection {
            name: secret,
            items: Some(items),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    };
    Some(Volume {
        name: TLS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(TLS_FILE_MODE),
            sources: Some(vec![
                project(
                    spec.tls_server_secret_name(),
                    vec![
                        item(files::SECRET_CERT_KEY, files::SERVER_CERT),
                        item(files::SECRET_KEY_KEY, files::SERVER_KEY),
                        item(files::SECRET_CA_KEY, files::CA_CERT),
                    ],
                ),
                project(
                    spec.tls_replication_secret_name(),
                    vec![
                        item(files::SECRET_CERT_KEY, files::REPLICATION_CERT),
                        item(files::SECRET_KEY_KEY, files::REPLICATION_KEY),
                    ],
                ),
            ]),
        }),
        ..Volume::default()
    })
}

/// The value of `key` in `secret` as text (`data` or `stringData`), when present and not empty.
pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok());
    let from_string = || {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
    };
    from_data.or_else(from_string).filter(|v| !v.is_empty())
}

/// A certificate Secret as read: its certificate and key, the CA it carries, and the facts of
/// its certificate. An error names the Secret, what is wrong and what fixes it.
#[derive(Debug, Clone)]
pub struct ReadPair {
    /// Certificate and key.
    pub issued: Issued,
    /// `ca.crt`, when the Secret has one.
    pub ca_cert_pem: Option<String>,
    /// What the certificate says.
    pub facts: CertFacts,
}

/// Reads `tls.crt`, `tls.key` (and `ca.crt`) of `secret` named `name`.
pub fn read_pair(secret: &Secret, name: &str, fix: &str) -> Result<ReadPair> {
    let get = |key: &str| {
        secret_text(secret, key).ok_or_else(|| {
            Error::Tls(format!(
                "Secret {name} has no key {key:?} (a TLS Secret holds {}, {} and {}); {fix}",
                files::SECRET_CERT_KEY,
                files::SECRET_KEY_KEY,
                files::SECRET_CA_KEY
            ))
        })
    };
    let cert_pem = get(files::SECRET_CERT_KEY)?;
    let key_pem = get(files::SECRET_KEY_KEY)?;
    let facts = pgset_tls::read_cert(&cert_pem).map_err(|problem| {
        Error::Tls(format!(
            "Secret {name}: {} is not a readable PEM certificate ({problem}); {fix}",
            files::SECRET_CERT_KEY
        ))
    })?;
    Ok(ReadPair {
        issued: Issued { cert_pem, key_pem },
        ca_cert_pem: secret_text(secret, files::SECRET_CA_KEY),
        facts,
    })
}

/// Whether the members of `existing` (the StatefulSet as the cluster has it) run with TLS: its
/// postgres container names a TLS directory in the env contract.
pub fn runs_tls(existing: &k8s_openapi::api::apps::v1::StatefulSet) -> bool {
    existing
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .into_iter()
        .flat_map(|p| p.containers.iter())
        .filter(|c| c.name == contract::POSTGRES_CONTAINER)
        .flat_map(|c| c.env.iter().flatten())
        .any(|e| e.name == contract::env::TLS_DIR)
}

/// A deploy that would switch running members between TLS and plain TCP: refused (the rolling
/// update restarts the replicas first, which would then verify a master that does not serve
/// TLS yet, or reach with plain TCP a master that requires it, and never become Ready). The
/// error says how to keep the cluster as it is or move it. `None` when nothing switches.
pub fn switch_problem(
    spec: &ClusterSpec,
    existing: Option<&k8s_openapi::api::apps::v1::StatefulSet>,
) -> Option<String> {
    let existing = existing?;
    let (now, wanted) = (runs_tls(existing), spec.tls.enabled());
    if now == wanted {
        return None;
    }
    let program = contract::program_name();
    Some(if now {
        format!(
            "StatefulSet {} runs with TLS and the spec says tls.mode off: members cannot switch in place (a replica restarted first would reach a master that requires TLS without it); keep TLS (remove tls.mode off), or take the cluster down (`{program} down`, data kept) and deploy it again without TLS",
            spec.statefulset_name()
        )
    } else {
        format!(
            "StatefulSet {} runs without TLS and the spec says tls.mode {} (the default): members cannot switch in place (a replica restarted first would verify a master that does not serve TLS yet); keep it plain with `tls: {{mode: off}}` in the spec, or take the cluster down (`{program} down`, data kept) and deploy it again to start every member with TLS",
            spec.statefulset_name(),
            spec.tls.mode
        )
    })
}

/// What to do about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// It is there and serves: only read.
    Keep,
    /// It is missing: create it.
    Create,
    /// It must be made anew, for this reason.
    Renew(String),
}

/// The CA as read from Secret `<name>-ca` (`None`: absent): kept while valid, made when
/// missing; one near its end ([`ca_due`]) is kept here and rotated with overlap. A CA that is
/// unreadable, not a CA or not valid now is never replaced by `deploy` (every member and
/// client trusts it): one error saying what to do.
pub fn judge_ca(spec: &ClusterSpec, existing: Option<&Secret>, now: Now) -> Result<Option<Issued>> {
    let name = spec.ca_secret_name();
    let Some(secret) = existing else {
        return Ok(None);
    };
    let fix = format!(
        "pgset never rewrites a CA others trust: repair Secret {name}, or delete it together with Secrets {} and {} to have a new CA made by the next deploy (clients must then fetch the new CA from ConfigMap {})",
        spec.tls_server_secret_name(),
        spec.tls_replication_secret_name(),
        spec.ca_configmap_name()
    );
    let pair = read_pair(secret, &name, &fix)?;
    if !pair.facts.is_ca {
        return Err(Error::Tls(format!(
            "Secret {name} holds a certificate that is not a CA; {fix}"
        )));
    }
    if pair.facts.not_after <= now || pair.facts.not_before > now {
        return Err(Error::Tls(format!(
            "the CA in Secret {name} is not valid now (from {} to {}); {fix}",
            pair.facts.not_before, pair.facts.not_after
        )));
    }
    Ok(Some(pair.issued))
}

/// Whether the CA `facts` describe is within [`pgset_tls::CA_RENEW_BEFORE`] of its end: a
/// deploy then rotates it with overlap ([`ca_rotation`]).
pub fn ca_due(facts: &CertFacts, now: Now) -> bool {
    facts.not_after - now < pgset_tls::CA_RENEW_BEFORE
}

/// The trust bundle the members and clients are given: the bundle Secret `server` carries as
/// `ca.crt` when it holds the signing CA `ca_cert_pem` (during and after a CA rotation, old and
/// new CA), else the signing CA alone.
pub fn trust_bundle(server: Option<&Secret>, ca_cert_pem: &str) -> String {
    server
        .and_then(|s| secret_text(s, files::SECRET_CA_KEY))
        .filter(|b| pgset_tls::bundle_has(b, ca_cert_pem))
        .unwrap_or_else(|| ca_cert_pem.to_string())
}

/// Whether a certificate Secret pgset made (`existing`) still serves: it must hold a readable
/// certificate and key, the CA's certificate in its `ca.crt` (alone, or in a bundle during a
/// CA rotation), be signed by that CA (its signature: an old CA and its successor share a
/// name), name exactly
/// `want_names` (the server's; `None` for the client certificate) and not be due
/// ([`pgset_tls::needs_renewal`]).
pub fn judge_leaf(
    spec: &ClusterSpec,
    existing: Option<&Secret>,
    name: &str,
    want_names: Option<&[String]>,
    ca_cert_pem: &str,
    now: Now,
) -> Action {
    let Some(secret) = existing else {
        return Action::Create;
    };
    let pair = match read_pair(secret, name, "") {
        Ok(pair) => pair,
        Err(e) => return Action::Renew(format!("unreadable: {e}")),
    };
    let carries_ca = pair
        .ca_cert_pem
        .as_deref()
        .is_some_and(|b| pgset_tls::bundle_has(b, ca_cert_pem));
    if !carries_ca {
        return Action::Renew("it carries another CA".into());
    }
    if !pgset_tls::signed_by(&pair.issued.cert_pem, ca_cert_pem) {
        return Action::Renew("another CA signed it".into());
    }
    match pgset_tls::needs_renewal(&pair.facts, want_names, Some(&ca_common_name(spec)), now) {
        Some(why) => Action::Renew(format!("{why:?}")),
        None => Action::Keep,
    }
}

async fn get_secret(api: &Api<Secret>, name: &str, ns: &str) -> Result<Option<Secret>> {
    api.get_opt(name)
        .await
        .map_err(Error::api("get", "Secret", name, ns))
}

fn post_params(mode: ApplyMode) -> PostParams {
    PostParams {
        dry_run: mode == ApplyMode::ServerDryRun,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

fn merge_params(mode: ApplyMode) -> PatchParams {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    if mode == ApplyMode::ServerDryRun {
        params.dry_run()
    } else {
        params
    }
}

fn suffix(mode: ApplyMode) -> &'static str {
    match mode {
        ApplyMode::Apply => "",
        ApplyMode::ServerDryRun => " (server dry run)",
    }
}

/// Makes sure the cluster's TLS material is there: in `auto` the CA Secret, the server and
/// replication certificate Secrets and the CA ConfigMap (each created when missing, a
/// certificate reissued by a merge patch of its data when due, nothing written when all
/// serve: a second deploy only reads; a CA near its end, or a CA rotation a stopped run began,
/// is then rotated with overlap by [`ca_rotation::rotate_ca`], which waits for the members);
/// in `provided` the user's Secrets are read and checked
/// ([`check_provided`]) and nothing is written; with TLS off nothing is read. One line per
/// object to `progress` (never a key).
pub async fn ensure(
    client: &Client,
    spec: &ValidSpec,
    mode: ApplyMode,
    now: Now,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<Applied>> {
    ensure_or_rotate(client, spec, mode, now, false, progress).await
}

/// `rotate-certs`: reissues the server and replication certificates now (each by one merge
/// patch of its Secret; the CA and the ConfigMap are kept, or made when missing). Members
/// running with the Secrets mounted see the new files when the kubelet updates the volume, and
/// their agents have PostgreSQL reload them. Only for `tls.mode: auto`: a refusal names what to
/// do otherwise, with nothing written.
pub async fn rotate(
    client: &Client,
    spec: &ValidSpec,
    mode: ApplyMode,
    now: Now,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<Applied>> {
    match spec.tls.mode {
        TlsMode::Auto => ensure_or_rotate(client, spec, mode, now, true, progress).await,
        TlsMode::Provided => Err(Error::Tls(format!(
            "tls.mode is provided: Secrets {} and {} are yours; renew them where they are issued (cert-manager: `cmctl renew`), nothing was changed",
            spec.tls_server_secret_name(),
            spec.tls_replication_secret_name()
        ))),
        TlsMode::Off => Err(Error::Tls(
            "tls.mode is off: there are no certificates to rotate; set tls.mode auto and deploy, nothing was changed".into(),
        )),
    }
}

/// A certificate Secret: its name, as read, and the names of a server certificate.
type Leaf<'a> = (&'a str, Option<&'a Secret>, Option<&'a [String]>);

async fn ensure_or_rotate(
    client: &Client,
    spec: &ValidSpec,
    mode: ApplyMode,
    now: Now,
    rotate: bool,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<Applied>> {
    match spec.tls.mode {
        TlsMode::Off => return Ok(Vec::new()),
        TlsMode::Provided => {
            check_provided(client, spec, now).await?;
            progress(&format!(
                "checked TLS Secrets {} and {} (provided)",
                spec.tls_server_secret_name(),
                spec.tls_replication_secret_name()
            ));
            // The user's objects: not counted among pgset's.
            return Ok(Vec::new());
        }
        TlsMode::Auto => {}
    }
    let ns = spec.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let (ca_name, server_name, repl_name, cm_name) = (
        spec.ca_secret_name(),
        spec.tls_server_secret_name(),
        spec.tls_replication_secret_name(),
        spec.ca_configmap_name(),
    );
    // Everything is read and judged before the first write.
    let ca_read = get_secret(&secrets, &ca_name, ns).await?;
    if rotate && ca_read.is_none() {
        return Err(Error::Tls(format!(
            "there is no CA Secret {ca_name} in namespace {ns}: the cluster {} was not deployed \
             with TLS there (check --name and --namespace, or deploy it first); nothing was changed",
            spec.name
        )));
    }
    let kept_ca = judge_ca(spec, ca_read.as_ref(), now)?;
    let server_read = get_secret(&secrets, &server_name, ns).await?;
    let repl_read = get_secret(&secrets, &repl_name, ns).await?;
    let cm_read =
        configmaps
            .get_opt(&cm_name)
            .await
            .map_err(Error::api("get", "ConfigMap", &cm_name, ns))?;

    let suffix = suffix(mode);
    let mut applied = Vec::new();
    let ca = match kept_ca {
        Some(ca) => {
            progress(&format!("kept CA Secret {ca_name}"));
            applied.push(Applied::Unchanged);
            ca
        }
        None => {
            let ca = pgset_tls::make_ca(&spec.name, now).map_err(tls_error)?;
            secrets
                .create(&post_params(mode), &ca_secret(spec, &ca))
                .await
                .map_err(Error::api("create", "Secret", &ca_name, ns))?;
            progress(&format!("created CA Secret {ca_name}{suffix}"));
            applied.push(Applied::Created(format!("Secret/{ca_name}")));
            ca
        }
    };

    let bundle = trust_bundle(server_read.as_ref(), &ca.cert_pem);
    let names = server_names(spec);
    // (Secret, as read, the names a server certificate must carry; None: the client's)
    let leaves: [Leaf<'_>; 2] = [
        (&server_name, server_read.as_ref(), Some(&names)),
        (&repl_name, repl_read.as_ref(), None),
    ];
    for (name, existing, want) in leaves {
        let action = match judge_leaf(spec, existing, name, want, &ca.cert_pem, now) {
            Action::Keep if rotate => Action::Renew("rotate-certs".into()),
            action => action,
        };
        if action == Action::Keep {
            progress(&format!("kept certificate Secret {name}"));
            applied.push(Applied::Unchanged);
            continue;
        }
        let leaf = match want {
            Some(names) => pgset_tls::issue_server(&ca, names, now),
            None => pgset_tls::issue_client(&ca, contract::REPLICATION_USER, now),
        }
        .map_err(tls_error)?;
        let secret = leaf_secret(spec, name, &leaf, &bundle);
        match action {
            Action::Create => {
                secrets
                    .create(&post_params(mode), &secret)
                    .await
                    .map_err(Error::api("create", "Secret", name, ns))?;
                progress(&format!("created certificate Secret {name}{suffix}"));
                applied.push(Applied::Created(format!("Secret/{name}")));
            }
            Action::Renew(why) => {
                let patch = serde_json::json!({"type": TLS_SECRET_TYPE, "data": secret.data});
                secrets
                    .patch(name, &merge_params(mode), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::api("patch", "Secret", name, ns))?;
                progress(&format!(
                    "reissued certificate Secret {name} ({why}){suffix}"
                ));
                applied.push(Applied::Changed(format!("Secret/{name}")));
            }
            Action::Keep => unreachable!("kept above"),
        }
    }

    let want_cm = ca_configmap(spec, &bundle);
    let have = cm_read
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(files::CONFIGMAP_CA_KEY));
    match (cm_read.is_some(), have) {
        (true, Some(pem)) if *pem == bundle => {
            progress(&format!("kept ConfigMap {cm_name}"));
            applied.push(Applied::Unchanged);
        }
        (true, _) => {
            let patch = serde_json::json!({"data": want_cm.data});
            configmaps
                .patch(&cm_name, &merge_params(mode), &Patch::Merge(&patch))
                .await
                .map_err(Error::api("patch", "ConfigMap", &cm_name, ns))?;
            progress(&format!(
                "wrote the CA certificate into ConfigMap {cm_name}{suffix}"
            ));
            applied.push(Applied::Changed(format!("ConfigMap/{cm_name}")));
        }
        (false, _) => {
            configmaps
                .create(&post_params(mode), &want_cm)
                .await
                .map_err(Error::api("create", "ConfigMap", &cm_name, ns))?;
            progress(&format!("created ConfigMap {cm_name}{suffix}"));
            applied.push(Applied::Created(format!("ConfigMap/{cm_name}")));
        }
    }
    // A CA near its end, or a rotation a stopped run began: rotated with overlap, waiting for
    // the members between steps (none yet on a first deploy: nothing to wait for).
    let ca_ends = pgset_tls::read_cert(&ca.cert_pem)
        .ok()
        .filter(|f| ca_due(f, now))
        .map(|f| f.not_after);
    let begun = ca_read
        .as_ref()
        .is_some_and(|s| secret_text(s, ca_rotation::NEXT_CERT_KEY).is_some());
    if !rotate && (ca_ends.is_some() || begun) {
        let why = match ca_ends {
            Some(end) => format!("the CA in Secret {ca_name} ends at {end}"),
            None => format!("Secret {ca_name} holds a CA rotation begun earlier"),
        };
        let silent = match mode {
            ApplyMode::Apply => ca_rotation::silent_members(client, spec).await?,
            ApplyMode::ServerDryRun => Vec::new(),
        };
        if mode == ApplyMode::ServerDryRun {
            progress(&format!(
                "{why}: deploy rotates it with overlap (not in a dry run)"
            ));
        } else if !silent.is_empty() {
            progress(&format!(
                "{why}: not rotated by this deploy: {} run an agent that does not say which TLS files it loaded ({}); the next deploy rotates it once the members run this deploy's agent",
                silent.join(", "),
                files::LOADED_ANNOTATION
            ));
        } else {
            progress(&format!("{why}: rotating it with overlap"));
            applied.extend(
                ca_rotation::rotate_ca(
                    client,
                    spec,
                    now,
                    ca_rotation::DEFAULT_STEP_TIMEOUT,
                    progress,
                )
                .await?,
            );
        }
    }
    if mode == ApplyMode::ServerDryRun {
        // A dry run stores nothing.
        return Ok(applied.into_iter().map(|_| Applied::Unchanged).collect());
    }
    Ok(applied)
}

fn tls_error(e: pgset_tls::Error) -> Error {
    Error::Tls(e.to_string())
}

/// `provided` mode: the user's server and replication Secrets exist with `tls.crt`, `tls.key`
/// and `ca.crt`, their certificates are not past their end, and the replication certificate's
/// CN is the replication user (PostgreSQL's `cert` authentication takes it as the role).
/// Nothing is written.
pub async fn check_provided(client: &Client, spec: &ValidSpec, now: Now) -> Result<()> {
    let ns = spec.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, client_cert) in [
        (spec.tls_server_secret_name(), false),
        (spec.tls_replication_secret_name(), true),
    ] {
        let fix = format!(
            "create Secret {name} in namespace {ns} (e.g. a cert-manager Certificate with secretName {name}) or use tls.mode auto"
        );
        let secret = get_secret(&secrets, &name, ns)
            .await?
            .ok_or_else(|| Error::Tls(format!("TLS Secret {name} does not exist; {fix}")))?;
        check_provided_secret(&secret, &name, client_cert, now, &fix)?;
    }
    Ok(())
}

/// The checks of [`check_provided`] on one Secret as read.
pub fn check_provided_secret(
    secret: &Secret,
    name: &str,
    client_cert: bool,
    now: Now,
    fix: &str,
) -> Result<()> {
    let pair = read_pair(secret, name, fix)?;
    if pair.ca_cert_pem.is_none() {
        return Err(Error::Tls(format!(
            "Secret {name} has no key {:?}: members verify each other against it; add the issuing CA's certificate",
            files::SECRET_CA_KEY
        )));
    }
    if pair.facts.not_after <= now {
        return Err(Error::Tls(format!(
            "the certificate in Secret {name} ended at {}; renew it",
            pair.facts.not_after
        )));
    }
    if client_cert && pair.facts.common_name.as_deref() != Some(contract::REPLICATION_USER) {
        return Err(Error::Tls(format!(
            "the certificate in Secret {name} has CN {:?}, but replication authenticates as {:?} by the certificate's CN; issue it with commonName {}",
            pair.facts.common_name.unwrap_or_default(),
            contract::REPLICATION_USER,
            contract::REPLICATION_USER
        )));
    }
    Ok(())
}

/// How a client connects to the cluster's master: the libpq connection string (never a
/// password), where the CA certificate it verifies the server against comes from, and the
/// commands that fetch it and the superuser's password without printing either on a command
/// line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectInfo {
    /// The master Service's fully qualified name.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The connection string: `sslmode=verify-full` against `sslrootcert` with TLS on.
    pub conninfo: String,
    /// Where the CA certificate is kept (`ConfigMap <name>-ca-cert`, or the user's server
    /// Secret's `ca.crt`); `None` with TLS off.
    pub ca_source: Option<String>,
    /// The command that writes the CA certificate to [`ConnectInfo::ca_file`].
    pub fetch_ca: Option<String>,
    /// The file the connection string names as `sslrootcert`.
    pub ca_file: Option<String>,
    /// The command that writes a libpq passfile with the superuser's password.
    pub fetch_password: String,
    /// The port-forward to the master Service that the superuser connects through (pg_hba
    /// admits it over TCP only from the loopback and `access.superuserFrom`).
    pub port_forward: String,
    /// [`ConnectInfo::conninfo`] through [`ConnectInfo::port_forward`]: the Service's name kept
    /// as `host` for verify-full, `hostaddr=127.0.0.1` where to connect.
    pub forwarded_conninfo: String,
    /// How an application in the cluster gets a role of its own over the master's socket (its
    /// password typed, never on a command line).
    pub create_role: String,
    /// The networks besides the loopback pg_hba admits the superuser from (TLS on).
    pub superuser_from: Vec<String>,
}

impl ConnectInfo {
    /// Lines for a person.
    pub fn text(&self) -> String {
        let mut out = String::new();
        match (&self.ca_source, &self.fetch_ca) {
            (Some(source), Some(fetch)) => out.push_str(&format!(
                "# The CA certificate the server is verified against ({source}):\n{fetch}\n"
            )),
            _ => out.push_str("# TLS is off (tls.mode: off): the connection is not encrypted.\n"),
        }
        out.push_str(&format!(
            "# The superuser's password, into a libpq passfile (never on a command line):\n{}\n",
            self.fetch_password
        ));
        if self.ca_file.is_none() {
            out.push_str(&format!(
                "# Connect from inside the cluster:\npsql \"{}\"\n# or through a port-forward:\n{} &\npsql \"{}\"\n",
                self.conninfo, self.port_forward, self.forwarded_conninfo
            ));
            return out;
        }
        let also = if self.superuser_from.is_empty() {
            String::new()
        } else {
            format!(
                " and {} (access.superuserFrom), where the first string works too",
                self.superuser_from.join(", ")
            )
        };
        out.push_str(&format!(
            "# The superuser connects over TCP only from the loopback{also}: through a\n# port-forward, keeping the Service's name for verify-full:\n{} &\npsql \"{}\"\n# An application in the cluster connects as a role of its own, by password over TLS:\n#   {}\npsql \"{}\"\n",
            self.port_forward,
            self.forwarded_conninfo,
            self.create_role,
            self.conninfo.replace(
                &format!("user={}", contract::SUPERUSER),
                "user=app"
            )
        ));
        out
    }
}

/// The connection to `spec`'s master: `host=<name>-master.<ns>.svc.cluster.local port=5432
/// user=postgres dbname=postgres sslmode=verify-full sslrootcert=<file>` with TLS; the CA from
/// ConfigMap `<name>-ca-cert` (`auto`, readable without reading a Secret) or the user's server
/// Secret (`provided`).
pub fn connect_info(spec: &ClusterSpec) -> ConnectInfo {
    let host = format!(
        "{}.{}.svc.{CLUSTER_DOMAIN}",
        spec.master_service_name(),
        spec.namespace
    );
    let port = contract::POSTGRES_PORT;
    let ns = &spec.namespace;
    let ca_file = format!("{}-ca.crt", spec.name);
    let (ca_source, fetch_ca) = match spec.tls.mode {
        TlsMode::Off => (None, None),
        TlsMode::Auto => (
            Some(format!(
                "ConfigMap {} key {}",
                spec.ca_configmap_name(),
                files::CONFIGMAP_CA_KEY
            )),
            Some(format!(
                "kubectl -n {ns} get configmap {} -o jsonpath='{{.data.ca\\.crt}}' > {ca_file}",
                spec.ca_configmap_name()
            )),
        ),
        TlsMode::Provided => (
            Some(format!(
                "Secret {} key {}",
                spec.tls_server_secret_name(),
                files::SECRET_CA_KEY
            )),
            Some(format!(
                "kubectl -n {ns} get secret {} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > {ca_file}",
                spec.tls_server_secret_name()
            )),
        ),
    };
    let mut conninfo = format!(
        "host={host} port={port} user={} dbname=postgres",
        contract::SUPERUSER
    );
    if spec.tls.enabled() {
        conninfo.push_str(&format!(" sslmode=verify-full sslrootcert={ca_file}"));
    }
    let fetch_password = format!(
        "(umask 077; printf '*:*:*:{}:%s\\n' \"$(kubectl -n {ns} get secret {} -o jsonpath='{{.data.{}}}' | base64 -d)\" > ~/.pgpass)",
        contract::SUPERUSER,
        spec.secret_name(),
        contract::secret::SUPERUSER_PASSWORD_KEY
    );
    let master_pod = format!(
        "$(kubectl -n {ns} get pods -l {}={},{}={} -o name)",
        contract::labels::INSTANCE,
        spec.name,
        contract::labels::ROLE,
        contract::roles::MASTER
    );
    ConnectInfo {
        port_forward: format!(
            "kubectl -n {ns} port-forward svc/{} {port}:{port}",
            spec.master_service_name()
        ),
        forwarded_conninfo: format!("{conninfo} hostaddr=127.0.0.1"),
        create_role: format!(
            "kubectl -n {ns} exec -it {master_pod} -c {} -- psql -c 'CREATE ROLE app LOGIN' -c '\\password app'",
            contract::POSTGRES_CONTAINER
        ),
        superuser_from: spec
            .access
            .superuser_from
            .iter()
            .map(|n| n.to_string())
            .collect(),
        host,
        port,
        conninfo,
        ca_file: spec.tls.enabled().then_some(ca_file),
        ca_source,
        fetch_ca,
        fetch_password,
    }
}

pub mod ca_rotation;
pub mod renewal;

#[cfg(test)]
mod tests;
