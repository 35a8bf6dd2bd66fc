//! The cluster's CA rotated with overlap (`rotate-certs --ca`, and `deploy` when the CA is near
//! its end): no member or client holding the trust bundle loses trust at any moment.
//!
//! 1. The new CA's certificate and key join Secret `<name>-ca` as [`NEXT_CERT_KEY`] and
//!    [`NEXT_KEY_KEY`] (the signing key is not touched), then the trust bundle (old and new CA)
//!    is written where it is read: `ca.crt` of both certificate Secrets (the members' mounted
//!    `ca.crt`) and ConfigMap `<name>-ca-cert` (clients). The leaves stay the old CA's.
//! 2. Once every member pod names that bundle in its agent's
//!    [`contract::tls::LOADED_ANNOTATION`] (the kubelet swaps a mounted Secret at different
//!    times on different pods, a minute or more apart; the agent has PostgreSQL reload the
//!    files and then writes the annotation on its own pod), the server and replication
//!    certificates are reissued by the new CA and its key becomes the signing key.
//! 3. Once every member names those certificates loaded, no certificate of the old CA is in
//!    use: the bundle becomes the new CA alone, and the run waits until every member has it.
//!
//! Each wait is a watch of the member pods (kube's runtime), bounded; a member that does not
//! catch up stops the run with an error naming it, with the objects left at a step every
//! member can serve; the same command resumes from what it reads (the next key present: step
//! 1 was written; a bundle of more than the signing CA: step 2 was).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Patch;
use kube::runtime::watcher;
use kube::{Api, Client};
use pgset_spec::contract::{self, tls as files};
use pgset_spec::{TlsMode, ValidSpec};
use pgset_tls::{Issued, Now};
use serde_json::{Value, json};

use super::{get_secret, merge_params, read_pair, secret_text, server_names, tls_error};
use crate::apply::{Applied, ApplyMode};
use crate::wait::{Listing, until_listing};
use crate::{Error, Result, selector_string};

/// Secret `<name>-ca`'s key of the new CA's certificate during a rotation.
pub const NEXT_CERT_KEY: &str = pgset_tls::NEXT_CA_CERT_KEY;
/// Secret `<name>-ca`'s key of the new CA's key during a rotation.
pub const NEXT_KEY_KEY: &str = pgset_tls::NEXT_CA_KEY_KEY;
/// How long each step waits for every member by default.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(300);

fn b64(text: &str) -> Value {
    serde_json::to_value(ByteString(text.as_bytes().to_vec())).expect("bytes serialize")
}

/// What a member that loaded the trust bundle `bundle` (and, with `certs`, the server and
/// replication certificates `certs`) names in its annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The bundle's digest.
    pub ca_bundle: String,
    /// The certificates' digest, when it matters.
    pub certs: Option<String>,
}

impl Want {
    fn new(bundle: &str, certs: Option<(&str, &str)>) -> Want {
        Want {
            ca_bundle: pgset_tls::digest(bundle.as_bytes()),
            certs: certs.map(|(s, r)| pgset_tls::certs_digest(s, r)),
        }
    }
}

/// The member pods of `pods` that have not loaded what `want` names (by their
/// [`contract::tls::LOADED_ANNOTATION`]; a pod without it, or with one that is not JSON, has
/// not), sorted.
pub fn behind(pods: &BTreeMap<String, Pod>, want: &Want) -> Vec<String> {
    pods.iter()
        .filter(|(_, pod)| {
            let loaded: Option<Value> = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(files::LOADED_ANNOTATION))
                .and_then(|v| serde_json::from_str(v).ok());
            let has = |key: &str, value: &str| {
                loaded.as_ref().and_then(|l| l[key].as_str()) == Some(value)
            };
            !(has(files::LOADED_CA_BUNDLE, &want.ca_bundle)
                && want
                    .certs
                    .as_deref()
                    .is_none_or(|c| has(files::LOADED_CERTS, c)))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The member pods whose agent has never said which TLS files it loaded (no
/// [`contract::tls::LOADED_ANNOTATION`]: an agent that predates CA rotation), sorted; one
/// listing. A deploy rotates the CA only when there are none: it would wait for them in vain
/// before it updates them.
pub async fn silent_members(client: &Client, spec: &ValidSpec) -> Result<Vec<String>> {
    let ns = spec.namespace.as_str();
    let selector = selector_string(spec);
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(Error::api("list", "Pod", &selector, ns))?;
    let mut silent: Vec<String> = pods
        .items
        .iter()
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .is_none_or(|a| !a.contains_key(files::LOADED_ANNOTATION))
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    silent.sort();
    Ok(silent)
}

/// Waits, watching the cluster's member pods, until every one has loaded what `want` names;
/// past `timeout`, an error naming those that have not. No member pod: nothing to wait for (a
/// member that starts mounts the Secrets as they are).
async fn wait_loaded(
    client: &Client,
    spec: &ValidSpec,
    want: &Want,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    let ns = spec.namespace.as_str();
    let selector = selector_string(spec);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut listing = Listing::default();
    let waited = tokio::time::timeout(
        timeout,
        until_listing(
            pods,
            watcher::Config::default().labels(&selector),
            &mut listing,
            |pods| behind(pods, want).is_empty(),
        ),
    )
    .await;
    match waited {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::watch("Pod", &selector, ns)(e)),
        Err(_) => {
            let late = if listing.listed() {
                behind(&listing.objects, want).join(", ")
            } else {
                "the member pods (never listed)".to_string()
            };
            Err(Error::Tls(format!(
                "{late} did not load {what} within {}s: their annotation {} names other files (the kubelet has not updated the mounted Secret yet, the member is not running, or its agent predates CA rotation: deploy updates it); nothing is lost: every member serves certificates the bundle it has trusts; run the same command again to resume",
                timeout.as_secs(),
                files::LOADED_ANNOTATION
            )))
        }
    }
}

/// Rotates the cluster's CA with overlap (the module's three steps), each wait bounded by
/// `step_timeout`; one line per object written and per step every member reached. Only for
/// `tls.mode: auto` on a cluster deployed with TLS; otherwise one error, nothing written.
pub async fn rotate_ca(
    client: &Client,
    spec: &ValidSpec,
    now: Now,
    step_timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<Applied>> {
    match spec.tls.mode {
        TlsMode::Auto => {}
        TlsMode::Provided => {
            return Err(Error::Tls(format!(
                "tls.mode is provided: the CA of Secrets {} and {} is yours; rotate it where it is kept (cert-manager: a new issuer), nothing was changed",
                spec.tls_server_secret_name(),
                spec.tls_replication_secret_name()
            )));
        }
        TlsMode::Off => {
            return Err(Error::Tls(
                "tls.mode is off: there is no CA to rotate; set tls.mode auto and deploy, nothing was changed".into(),
            ));
        }
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
    let deploy_first = |what: &str| {
        Error::Tls(format!(
            "there is no {what} in namespace {ns}: the cluster {} was not deployed with TLS there (check --name and --namespace, or deploy it first); nothing was changed",
            spec.name
        ))
    };
    let ca_read = get_secret(&secrets, &ca_name, ns)
        .await?
        .ok_or_else(|| deploy_first(&format!("CA Secret {ca_name}")))?;
    let server_read = get_secret(&secrets, &server_name, ns)
        .await?
        .ok_or_else(|| deploy_first(&format!("certificate Secret {server_name}")))?;
    let repl_read = get_secret(&secrets, &repl_name, ns)
        .await?
        .ok_or_else(|| deploy_first(&format!("certificate Secret {repl_name}")))?;
    let cm_read =
        configmaps
            .get_opt(&cm_name)
            .await
            .map_err(Error::api("get", "ConfigMap", &cm_name, ns))?;
    let signer =
        super::judge_ca(spec, Some(&ca_read), now)?.expect("judge_ca keeps a CA it was given");
    let fix = format!(
        "repair Secret {ca_name} or remove its keys {NEXT_CERT_KEY} and {NEXT_KEY_KEY} to start the rotation again"
    );
    let next = match (
        secret_text(&ca_read, NEXT_CERT_KEY),
        secret_text(&ca_read, NEXT_KEY_KEY),
    ) {
        (Some(cert_pem), Some(key_pem)) => {
            if pgset_tls::matching_cert(&cert_pem, &key_pem).is_none() {
                return Err(Error::Tls(format!(
                    "Secret {ca_name}: {NEXT_CERT_KEY} and {NEXT_KEY_KEY} do not belong together; {fix}"
                )));
            }
            Some(Issued { cert_pem, key_pem })
        }
        (None, None) => None,
        _ => {
            return Err(Error::Tls(format!(
                "Secret {ca_name} holds only one of {NEXT_CERT_KEY} and {NEXT_KEY_KEY}; {fix}"
            )));
        }
    };
    let server = read_pair(&server_read, &server_name, "deploy to have it made again")?;
    let repl = read_pair(&repl_read, &repl_name, "deploy to have it made again")?;
    let bundle_now = server
        .ca_cert_pem
        .clone()
        .unwrap_or_else(|| signer.cert_pem.clone());
    let others = pgset_tls::split_bundle(&bundle_now)
        .into_iter()
        .filter(|c| !pgset_tls::bundle_has(c, &signer.cert_pem))
        .count();

    let mut w = Writes {
        secrets: &secrets,
        ns,
        applied: Vec::new(),
    };
    let names = server_names(spec);
    let (signer, leaves_new) = if next.is_some() || others == 0 {
        // 1: the new CA joins the bundle (a run that stopped here resumes with its CA).
        let next = match next {
            Some(next) => {
                progress(&format!(
                    "resuming the CA rotation begun earlier (Secret {ca_name} holds the new CA)"
                ));
                next
            }
            None => {
                let next = pgset_tls::make_ca(&spec.name, now).map_err(tls_error)?;
                w.secret(
                    progress,
                    &ca_name,
                    json!({ NEXT_CERT_KEY: b64(&next.cert_pem), NEXT_KEY_KEY: b64(&next.key_pem) }),
                    format!("added a new CA to Secret {ca_name} (it signs nothing yet)"),
                )
                .await?;
                next
            }
        };
        let bundle = pgset_tls::make_bundle(&[&signer.cert_pem, &bundle_now, &next.cert_pem]);
        for (name, pair) in [(&server_name, &server), (&repl_name, &repl)] {
            if pair.ca_cert_pem.as_deref() != Some(bundle.as_str()) {
                w.secret(
                    progress,
                    name,
                    json!({ files::SECRET_CA_KEY: b64(&bundle) }),
                    format!("wrote the trust bundle (old and new CA) into Secret {name}"),
                )
                .await?;
            }
        }
        write_configmap(
            &configmaps,
            spec,
            cm_read.as_ref(),
            &bundle,
            &mut w.applied,
            progress,
        )
        .await?;
        progress("waiting until every member has loaded the trust bundle with the new CA");
        wait_loaded(
            client,
            spec,
            &Want::new(&bundle, None),
            step_timeout,
            "the trust bundle with the new CA",
        )
        .await?;
        progress("every member trusts the new CA");
        // 2: the leaves are the new CA's, whose key becomes the signing key.
        let server_leaf = pgset_tls::issue_server(&next, &names, now).map_err(tls_error)?;
        let repl_leaf =
            pgset_tls::issue_client(&next, contract::REPLICATION_USER, now).map_err(tls_error)?;
        for (name, leaf) in [(&server_name, &server_leaf), (&repl_name, &repl_leaf)] {
            w.secret(
                    progress,
                name,
                json!({ files::SECRET_CERT_KEY: b64(&leaf.cert_pem), files::SECRET_KEY_KEY: b64(&leaf.key_pem) }),
                format!("reissued certificate Secret {name} by the new CA"),
            )
            .await?;
        }
        w.secret(
            progress,
            &ca_name,
            json!({
                files::SECRET_CERT_KEY: b64(&next.cert_pem),
                files::SECRET_KEY_KEY: b64(&next.key_pem),
                NEXT_CERT_KEY: null,
                NEXT_KEY_KEY: null,
            }),
            format!("the new CA in Secret {ca_name} is the signing CA"),
        )
        .await?;
        (
            next,
            Some((server_leaf.cert_pem, repl_leaf.cert_pem, bundle)),
        )
    } else {
        progress(&format!(
            "resuming the CA rotation begun earlier (the trust bundle holds {} more CA)",
            others
        ));
        (signer, None)
    };
    let (server_cert, repl_cert, bundle) = match leaves_new {
        Some(done) => done,
        None => {
            // A run that stopped after step 1 or 2: the leaves must be the signing CA's.
            let mut certs = Vec::new();
            for (name, pair, want) in [
                (&server_name, &server, Some(&names)),
                (&repl_name, &repl, None),
            ] {
                if pgset_tls::signed_by(&pair.issued.cert_pem, &signer.cert_pem) {
                    certs.push(pair.issued.cert_pem.clone());
                    continue;
                }
                let leaf = match want {
                    Some(names) => pgset_tls::issue_server(&signer, names, now),
                    None => pgset_tls::issue_client(&signer, contract::REPLICATION_USER, now),
                }
                .map_err(tls_error)?;
                w.secret(
                    progress,
                    name,
                    json!({ files::SECRET_CERT_KEY: b64(&leaf.cert_pem), files::SECRET_KEY_KEY: b64(&leaf.key_pem) }),
                    format!("reissued certificate Secret {name} by the new CA"),
                )
                .await?;
                certs.push(leaf.cert_pem);
            }
            let repl_cert = certs.pop().expect("two leaves");
            let server_cert = certs.pop().expect("two leaves");
            (server_cert, repl_cert, bundle_now)
        }
    };
    progress("waiting until every member has loaded the new CA's certificates");
    wait_loaded(
        client,
        spec,
        &Want::new(&bundle, Some((&server_cert, &repl_cert))),
        step_timeout,
        "the new CA's certificates",
    )
    .await?;
    progress("every member serves the new CA's certificates");
    // 3: no certificate of the old CA is in use: the bundle is the new CA alone.
    let alone = pgset_tls::make_bundle(&[&signer.cert_pem]);
    for name in [&server_name, &repl_name] {
        w.secret(
            progress,
            name,
            json!({ files::SECRET_CA_KEY: b64(&alone) }),
            format!("took the old CA out of the trust bundle of Secret {name}"),
        )
        .await?;
    }
    write_configmap(
        &configmaps,
        spec,
        cm_read.as_ref(),
        &alone,
        &mut w.applied,
        progress,
    )
    .await?;
    progress("waiting until every member has loaded the trust bundle without the old CA");
    wait_loaded(
        client,
        spec,
        &Want::new(&alone, Some((&server_cert, &repl_cert))),
        step_timeout,
        "the trust bundle without the old CA",
    )
    .await?;
    progress("every member trusts the new CA alone");
    Ok(w.applied)
}

/// The writes of a rotation, in order.
struct Writes<'a> {
    secrets: &'a Api<Secret>,
    ns: &'a str,
    applied: Vec<Applied>,
}

impl Writes<'_> {
    /// A merge patch of `data` of Secret `name`, then `what` to `progress`.
    async fn secret(
        &mut self,
        progress: &mut (dyn FnMut(&str) + Send),
        name: &str,
        data: Value,
        what: String,
    ) -> Result<()> {
        self.secrets
            .patch(
                name,
                &merge_params(ApplyMode::Apply),
                &Patch::Merge(&json!({ "data": data })),
            )
            .await
            .map_err(Error::api("patch", "Secret", name, self.ns))?;
        progress(&what);
        self.applied
            .push(Applied::Changed(format!("Secret/{name}")));
        Ok(())
    }
}

/// ConfigMap `<name>-ca-cert` holds `bundle`: patched when it holds something else, created
/// when missing.
async fn write_configmap(
    api: &Api<ConfigMap>,
    spec: &ValidSpec,
    read: Option<&ConfigMap>,
    bundle: &str,
    applied: &mut Vec<Applied>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let (name, ns) = (spec.ca_configmap_name(), spec.namespace.as_str());
    let have = read
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(files::CONFIGMAP_CA_KEY));
    if have.map(String::as_str) == Some(bundle) {
        return Ok(());
    }
    match read {
        Some(_) => {
            api.patch(
                &name,
                &merge_params(ApplyMode::Apply),
                &Patch::Merge(&json!({ "data": { files::CONFIGMAP_CA_KEY: bundle } })),
            )
            .await
            .map_err(Error::api("patch", "ConfigMap", &name, ns))?;
        }
        None => {
            api.create(
                &super::post_params(ApplyMode::Apply),
                &super::ca_configmap(spec, bundle),
            )
            .await
            .map_err(Error::api("create", "ConfigMap", &name, ns))?;
        }
    }
    progress(&format!(
        "wrote the trust bundle into ConfigMap {name} (clients: fetch it again)"
    ));
    applied.push(Applied::Changed(format!("ConfigMap/{name}")));
    Ok(())
}
