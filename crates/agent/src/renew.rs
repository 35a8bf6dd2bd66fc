//! `pgset-agent renew-certs`: what the cluster's CronJob `<name>-cert-renewal` runs (its own
//! ServiceAccount, whose Role may only get the three TLS Secrets and update the two certificate
//! Secrets, by name): the server and replication certificates are reissued by the cluster's
//! signing CA when within [`pgset_tls::AUTO_RENEW_BEFORE`] of their end, keeping their names
//! and the trust bundle; members reload them when the kubelet updates their volume, as after
//! `rotate-certs`. Nothing else is written: a CA rotation under way (the CA Secret holds a next
//! CA), a certificate another CA signed or a bundle without the signing CA are left to
//! `deploy` / `rotate-certs --ca`, saying so. Each update carries the resourceVersion read
//! (a concurrent change fails this run; the next one reads again).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use pgset_spec::contract::{self, tls as files};
use pgset_tls::{Issued, Now};

use crate::{Error, Result};

/// The Secrets a renewal reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewTargets {
    /// `<name>-ca`: only read.
    pub ca_secret: String,
    /// `<name>-tls-server`.
    pub server_secret: String,
    /// `<name>-tls-replication`.
    pub replication_secret: String,
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|v| !v.is_empty())
}

async fn get(api: &Api<Secret>, name: &str) -> Result<Secret> {
    api.get_opt(name)
        .await
        .map_err(|e| Error::Kube(format!("get Secret {name}: {e}")))?
        .ok_or_else(|| {
            Error::Failed(format!(
                "Secret {name} does not exist: the cluster was not deployed with tls.mode auto in this namespace"
            ))
        })
}

/// Renews what is due among the two certificate Secrets of `targets` through `api`, at `now`:
/// one line per Secret (renewed, kept, or left and why).
pub async fn renew(api: &Api<Secret>, targets: &RenewTargets, now: Now) -> Result<Vec<String>> {
    let ca_secret = get(api, &targets.ca_secret).await?;
    if text(&ca_secret, pgset_tls::NEXT_CA_CERT_KEY).is_some() {
        return Ok(vec![format!(
            "a CA rotation is under way (Secret {} holds the next CA): the certificates are left to it",
            targets.ca_secret
        )]);
    }
    let unreadable = |what: &str| {
        Error::Failed(format!(
            "Secret {} has no readable {what}: repair it with deploy",
            targets.ca_secret
        ))
    };
    let ca = Issued {
        cert_pem: text(&ca_secret, files::SECRET_CERT_KEY)
            .ok_or_else(|| unreadable(files::SECRET_CERT_KEY))?,
        key_pem: text(&ca_secret, files::SECRET_KEY_KEY)
            .ok_or_else(|| unreadable(files::SECRET_KEY_KEY))?,
    };
    let ca_facts = pgset_tls::read_cert(&ca.cert_pem).map_err(|p| unreadable(&p))?;
    let mut lines = Vec::new();
    for (name, client) in [
        (&targets.server_secret, false),
        (&targets.replication_secret, true),
    ] {
        let mut secret = get(api, name).await?;
        let cert = text(&secret, files::SECRET_CERT_KEY).unwrap_or_default();
        let facts = match pgset_tls::read_cert(&cert) {
            Ok(f) => f,
            Err(p) => {
                lines.push(format!(
                    "left Secret {name}: its certificate is unreadable ({p}); deploy makes it anew"
                ));
                continue;
            }
        };
        let bundle = text(&secret, files::SECRET_CA_KEY).unwrap_or_default();
        if !pgset_tls::signed_by(&cert, &ca.cert_pem)
            || !pgset_tls::bundle_has(&bundle, &ca.cert_pem)
        {
            lines.push(format!(
                "left Secret {name}: its certificate or trust bundle is not the signing CA's; deploy or rotate-certs --ca settles it"
            ));
            continue;
        }
        if facts.not_after - now >= pgset_tls::AUTO_RENEW_BEFORE {
            lines.push(format!("kept Secret {name} (ends at {})", facts.not_after));
            continue;
        }
        // Never past the CA's own end: a certificate the CA cannot vouch for serves no one.
        if ca_facts.not_after <= now {
            return Err(Error::Failed(format!(
                "the CA in Secret {} ended at {}: run deploy (it says what to do)",
                targets.ca_secret, ca_facts.not_after
            )));
        }
        let issued = if client {
            pgset_tls::issue_client(&ca, contract::REPLICATION_USER, now)
        } else {
            pgset_tls::issue_server(&ca, &facts.names, now)
        }
        .map_err(|e| Error::Failed(e.to_string()))?;
        let data = secret.data.get_or_insert_default();
        data.insert(
            files::SECRET_CERT_KEY.into(),
            ByteString(issued.cert_pem.into_bytes()),
        );
        data.insert(
            files::SECRET_KEY_KEY.into(),
            ByteString(issued.key_pem.into_bytes()),
        );
        let params = PostParams {
            field_manager: Some(format!("{}-cert-renewal", contract::FIELD_MANAGER)),
            ..PostParams::default()
        };
        api.replace(name, &params, &secret)
            .await
            .map_err(|e| Error::Kube(format!("update Secret {name}: {e}")))?;
        lines.push(format!(
            "renewed Secret {name} (it ended at {})",
            facts.not_after
        ));
    }
    Ok(lines)
}

/// The subcommand: the in-cluster client of the job's ServiceAccount, then [`renew`]; the
/// lines on stdout.
pub async fn run(namespace: &str, targets: &RenewTargets) -> Result<i32> {
    let api = crate::kube_api::PodApi::in_cluster(namespace, "")?;
    let secrets: Api<Secret> = Api::namespaced(api.client(), namespace);
    for line in renew(&secrets, targets, pgset_tls::now()).await? {
        println!("{line}");
    }
    Ok(0)
}
