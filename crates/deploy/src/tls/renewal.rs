//! Automatic renewal of the cluster's certificates in `tls.mode: auto`: CronJob
//! `<name>-cert-renewal` runs the agent's image daily (`pgset-agent renew-certs`), which
//! reissues the server and replication certificates by the signing CA once within 30 days of
//! their end (`pgset_agent::renew`); members reload them as after `rotate-certs`.
//!
//! The job runs as ServiceAccount `<name>-cert-renewal`, never the members' `<name>-sa`: its
//! Role may `get` the three TLS Secrets and `update` the two certificate Secrets, each by name
//! (`resourceNames`), nothing else; the members' Role gains nothing (the CA key stays out of
//! every member's reach). The CA itself is never renewed by the job: a CA rotation waits for
//! the members, which `deploy` and `rotate-certs --ca` do.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgset_spec::{ClusterSpec, TlsMode, contract};

use crate::object_meta;
use crate::statefulset::restricted_security_context;

/// When the job runs: daily, at a minute no other daily job is likely to pick.
pub const SCHEDULE: &str = "17 3 * * *";
/// The job's container.
pub const CONTAINER: &str = "renew-certs";
/// `app.kubernetes.io/name` of the job's pods (the members' is `pgset`).
pub const POD_APP_NAME: &str = "pgset-cert-renewal";

/// The name of the CronJob, its ServiceAccount, Role and RoleBinding.
pub fn name(spec: &ClusterSpec) -> String {
    format!("{}-cert-renewal", spec.name)
}

/// The objects of the renewal, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct CertRenewal {
    /// `<name>-cert-renewal`: the job's own identity.
    pub service_account: ServiceAccount,
    /// `<name>-cert-renewal`: get the three TLS Secrets, update the two certificate Secrets.
    pub role: Role,
    /// `<name>-cert-renewal`: binds the Role to the job's ServiceAccount only.
    pub role_binding: RoleBinding,
    /// `<name>-cert-renewal`: the daily job.
    pub cron_job: CronJob,
}

/// The renewal's objects with `tls.mode: auto`; `None` otherwise (provided certificates are
/// renewed where they are issued, and off has none).
pub fn objects(spec: &ClusterSpec) -> Option<CertRenewal> {
    if spec.tls.mode != TlsMode::Auto {
        return None;
    }
    let name = name(spec);
    let rule = |verb: &str, names: Vec<String>| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".into()]),
        resource_names: Some(names),
        verbs: vec![verb.into()],
        ..PolicyRule::default()
    };
    let leaves = vec![
        spec.tls_server_secret_name(),
        spec.tls_replication_secret_name(),
    ];
    let mut readable = vec![spec.ca_secret_name()];
    readable.extend(leaves.clone());
    let role = Role {
        metadata: object_meta(spec, name.clone()),
        rules: Some(vec![rule("get", readable), rule("update", leaves)]),
    };
    let role_binding = RoleBinding {
        metadata: object_meta(spec, name.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.clone(),
            namespace: Some(spec.namespace.clone()),
            ..Subject::default()
        }]),
    };
    let container = Container {
        name: CONTAINER.into(),
        image: Some(spec.agent.image.clone()),
        image_pull_policy: Some(spec.agent.pull_policy.clone()),
        command: Some(vec![
            contract::AGENT_IMAGE_BINARY.into(),
            "renew-certs".into(),
            "--namespace".into(),
            spec.namespace.clone(),
            "--ca-secret".into(),
            spec.ca_secret_name(),
            "--server-secret".into(),
            spec.tls_server_secret_name(),
            "--replication-secret".into(),
            spec.tls_replication_secret_name(),
        ]),
        security_context: Some(restricted_security_context(spec)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("64Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    // Not the members' labels: their selector (rollout, the CA rotation's wait) must never
    // count a job's pod as a member.
    let labels = crate::label_map(vec![
        (contract::labels::NAME, POD_APP_NAME.to_string()),
        (contract::labels::INSTANCE, spec.name.clone()),
        (contract::labels::MANAGED_BY, contract::APP_NAME.to_string()),
    ]);
    let cron_job = CronJob {
        metadata: object_meta(spec, name.clone()),
        spec: Some(CronJobSpec {
            schedule: SCHEDULE.into(),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(1),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: None,
                spec: Some(JobSpec {
                    backoff_limit: Some(3),
                    active_deadline_seconds: Some(600),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(labels),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(PodSpec {
                            service_account_name: Some(name.clone()),
                            automount_service_account_token: Some(true),
                            restart_policy: Some("Never".into()),
                            security_context: Some(PodSecurityContext {
                                run_as_non_root: Some(true),
                                ..PodSecurityContext::default()
                            }),
                            containers: vec![container],
                            ..PodSpec::default()
                        }),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    };
    Some(CertRenewal {
        service_account: ServiceAccount {
            metadata: object_meta(spec, name),
            ..ServiceAccount::default()
        },
        role,
        role_binding,
        cron_job,
    })
}

/// With `tls.mode` provided or off, a renewal job an earlier `auto` deploy left is removed
/// (its CronJob, RoleBinding, Role and ServiceAccount): it would otherwise reissue the user's
/// certificates by the old CA. One line per object removed; nothing when there is none.
pub async fn remove_leftover(
    client: &kube::Client,
    spec: &ClusterSpec,
    mode: crate::apply::ApplyMode,
    progress: &mut (dyn FnMut(&str) + Send),
) -> crate::Result<()> {
    async fn remove<K: crate::NamespacedObject>(
        client: &kube::Client,
        ns: &str,
        name: &str,
        mode: crate::apply::ApplyMode,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> crate::Result<()> {
        let api: kube::Api<K> = kube::Api::namespaced(client.clone(), ns);
        let mut params = kube::api::DeleteParams::default();
        if mode == crate::apply::ApplyMode::ServerDryRun {
            params = params.dry_run();
        }
        match api.delete(name, &params).await {
            Ok(_) => {
                progress(&format!(
                    "deleted {} {name} (left by a tls.mode auto deploy){}",
                    crate::apply::kind_of::<K>(),
                    mode.suffix()
                ));
                Ok(())
            }
            Err(e) if crate::is_status(&e, 404) => Ok(()),
            Err(e) => Err(crate::Error::api(
                "delete",
                crate::apply::kind_of::<K>(),
                name,
                ns,
            )(e)),
        }
    }
    if spec.tls.mode == TlsMode::Auto {
        return Ok(());
    }
    let (ns, name) = (spec.namespace.as_str(), name(spec));
    remove::<CronJob>(client, ns, &name, mode, progress).await?;
    remove::<RoleBinding>(client, ns, &name, mode, progress).await?;
    remove::<Role>(client, ns, &name, mode, progress).await?;
    remove::<ServiceAccount>(client, ns, &name, mode, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::named_spec;

    #[test]
    fn the_job_may_only_read_the_tls_secrets_and_update_the_two_certificates_by_name() {
        let spec = named_spec("db", "prod");
        let r = objects(&spec).expect("tls.mode auto by default");
        let rules = r.role.rules.clone().unwrap();
        let plain: Vec<(Vec<String>, Vec<String>, Vec<String>)> = rules
            .iter()
            .map(|rule| {
                assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
                (
                    rule.resources.clone().unwrap(),
                    rule.verbs.clone(),
                    rule.resource_names.clone().unwrap(),
                )
            })
            .collect();
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            plain,
            [
                (
                    v(&["secrets"]),
                    v(&["get"]),
                    v(&["db-ca", "db-tls-server", "db-tls-replication"])
                ),
                (
                    v(&["secrets"]),
                    v(&["update"]),
                    v(&["db-tls-server", "db-tls-replication"])
                ),
            ]
        );
        // Its own identity, bound to its own ServiceAccount only.
        assert_eq!(
            r.service_account.metadata.name.as_deref(),
            Some("db-cert-renewal")
        );
        assert_ne!(spec.service_account_name(), "db-cert-renewal");
        let subjects = r.role_binding.subjects.clone().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].name, "db-cert-renewal");
        assert_eq!(subjects[0].namespace.as_deref(), Some("prod"));
        assert_eq!(r.role_binding.role_ref.name, "db-cert-renewal");
        // The members' Role gains no Secret, so never the CA key.
        let members = crate::rbac::role(&spec);
        assert!(members.rules.unwrap().iter().all(|rule| {
            !rule
                .resources
                .clone()
                .unwrap_or_default()
                .contains(&"secrets".to_string())
        }));
    }

    #[test]
    fn the_job_runs_the_agent_image_daily_as_its_own_account_and_its_pods_are_no_members() {
        let spec = named_spec("db", "prod");
        let job = objects(&spec).unwrap().cron_job;
        let cron = job.spec.unwrap();
        assert_eq!(cron.schedule, SCHEDULE);
        assert_eq!(cron.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = cron.job_template.spec.unwrap().template;
        let pod_spec = pod.spec.unwrap();
        assert_eq!(
            pod_spec.service_account_name.as_deref(),
            Some("db-cert-renewal")
        );
        let c = &pod_spec.containers[0];
        assert_eq!(c.image.as_deref(), Some(spec.agent.image.as_str()));
        assert_eq!(
            c.command.clone().unwrap(),
            [
                contract::AGENT_IMAGE_BINARY,
                "renew-certs",
                "--namespace",
                "prod",
                "--ca-secret",
                "db-ca",
                "--server-secret",
                "db-tls-server",
                "--replication-secret",
                "db-tls-replication"
            ]
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        // The members' selector never matches a job's pod.
        let labels = pod.metadata.unwrap().labels.unwrap();
        let selects = spec
            .selector_labels()
            .iter()
            .all(|(k, v)| labels.get(*k) == Some(v));
        assert!(!selects, "{labels:?}");
    }

    #[test]
    fn provided_or_no_tls_has_no_renewal_job() {
        for mode in [TlsMode::Provided, TlsMode::Off] {
            let mut spec = (*named_spec("db", "prod")).clone();
            spec.tls.mode = mode;
            assert!(objects(&spec).is_none(), "{mode:?}");
        }
    }
}
