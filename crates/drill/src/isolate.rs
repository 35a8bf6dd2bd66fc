//! The cluster's `master-isolated` fault: a ValidatingAdmissionPolicy of the drill's own and its
//! binding that deny the master pod's token every update of the leader Lease, removed again
//! whatever happens.
//!
//! All members run as one ServiceAccount, so RBAC cannot take the Lease from one member only;
//! the API server knows which pod a projected token is bound to (`userInfo.extra`
//! [`POD_NAME_CLAIM`], as the member isolation policy of `deploy` reads it), so an admission
//! policy can. Both objects are named [`contract::drill_isolation_name`]: a leftover of a drill
//! whose process was killed is removed by the next run ([`isolated`] removes it first) and by
//! `down`.

use std::future::Future;

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use pgset_spec::{ClusterSpec, contract};

use crate::engine::Log;
use crate::{DrillName, Error, Result, step_err};

/// The key of `request.userInfo.extra` that names the pod a projected ServiceAccount token is
/// bound to.
pub const POD_NAME_CLAIM: &str = "authentication.kubernetes.io/pod-name";

/// The API group and version that serves ValidatingAdmissionPolicy as GA.
pub const ADMISSION_GROUP_VERSION: &str = "admissionregistration.k8s.io/v1";

/// The label every namespace carries with its own name: the binding's namespace selector.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The name of the policy and of its binding.
pub fn name(spec: &ClusterSpec) -> String {
    contract::drill_isolation_name(&spec.namespace, &spec.name)
}

fn cel_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn meta(spec: &ClusterSpec) -> ObjectMeta {
    let mut labels: std::collections::BTreeMap<String, String> = spec
        .common_labels()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.insert(
        "pgset.io/drill".into(),
        DrillName::MasterIsolated.as_str().into(),
    );
    ObjectMeta {
        name: Some(name(spec)),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The validation (expression, message): `true` unless the request updates the leader Lease
/// with a token bound to `pod`.
pub fn validation(spec: &ClusterSpec, pod: &str) -> (String, String) {
    let leader = contract::leader_lease_name(&spec.name);
    (
        format!(
            "object.metadata.name != {} || variables.podName != {}",
            cel_string(&leader),
            cel_string(pod)
        ),
        format!(
            "pgset drill master-isolated: {pod} is cut off from the leader Lease {leader} while \
             the drill runs (left over from an interrupted drill? `kubectl delete \
             validatingadmissionpolicybinding,validatingadmissionpolicy {}` ends it)",
            name(spec)
        ),
    )
}

/// The policy: leader Lease updates (and creates) by the cluster's ServiceAccount with a token
/// bound to `pod` are denied.
pub fn policy(spec: &ClusterSpec, pod: &str) -> ValidatingAdmissionPolicy {
    let claim = cel_string(POD_NAME_CLAIM);
    let (expression, message) = validation(spec, pod);
    ValidatingAdmissionPolicy {
        metadata: meta(spec),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec!["coordination.k8s.io".into()]),
                    api_versions: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["leases".into()]),
                    ..NamedRuleWithOperations::default()
                }]),
                ..MatchResources::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "cluster-service-account".into(),
                expression: format!(
                    "request.userInfo.username == {}",
                    cel_string(&format!(
                        "system:serviceaccount:{}:{}",
                        spec.namespace,
                        spec.service_account_name()
                    ))
                ),
            }]),
            variables: Some(vec![Variable {
                name: "podName".into(),
                expression: format!(
                    "has(request.userInfo.extra) && {claim} in request.userInfo.extra && \
                     size(request.userInfo.extra[{claim}]) == 1 ? \
                     request.userInfo.extra[{claim}][0] : ''"
                ),
            }]),
            validations: Some(vec![Validation {
                expression,
                message: Some(message),
                reason: Some("Forbidden".into()),
                ..Validation::default()
            }]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// The binding: the policy, denying, in the cluster's namespace only.
pub fn binding(spec: &ClusterSpec) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: meta(spec),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(name(spec)),
            validation_actions: Some(vec!["Deny".into()]),
            match_resources: Some(MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(
                        [(NAMESPACE_NAME_LABEL.to_string(), spec.namespace.clone())].into(),
                    ),
                    ..LabelSelector::default()
                }),
                ..MatchResources::default()
            }),
            ..ValidatingAdmissionPolicyBindingSpec::default()
        }),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Whether the API server serves ValidatingAdmissionPolicy in [`ADMISSION_GROUP_VERSION`].
pub async fn served(client: &Client) -> Result<bool> {
    match client
        .list_api_group_resources(ADMISSION_GROUP_VERSION)
        .await
    {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|r| r.name == "validatingadmissionpolicies")),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(step_err(format!("discover {ADMISSION_GROUP_VERSION}"), e)),
    }
}

/// `master-isolated` is not applicable: the API server does not serve the policy.
pub fn not_served() -> Error {
    Error::NotApplicable {
        drill: DrillName::MasterIsolated,
        why: format!(
            "the API server does not serve {ADMISSION_GROUP_VERSION} ValidatingAdmissionPolicy \
             (Kubernetes 1.30 or newer does), the only way to cut one member off from the leader \
             Lease when all share one ServiceAccount"
        ),
    }
}

/// Deletes the binding, then the policy; returns whether either existed. Absent ones are fine.
pub async fn remove(client: &Client, spec: &ClusterSpec) -> Result<bool> {
    let n = name(spec);
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let mut found = false;
    match bindings.delete(&n, &DeleteParams::default()).await {
        Ok(_) => found = true,
        Err(e) if is_status(&e, 404) => {}
        Err(e) => {
            return Err(step_err(
                format!("delete ValidatingAdmissionPolicyBinding {n}"),
                e,
            ));
        }
    }
    match policies.delete(&n, &DeleteParams::default()).await {
        Ok(_) => found = true,
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(step_err(format!("delete ValidatingAdmissionPolicy {n}"), e)),
    }
    Ok(found)
}

/// Runs `hold` while `pod` may not update the leader Lease: checks that the API server serves
/// the policy ([`Error::NotApplicable`] when not, nothing changed), removes a leftover of an
/// earlier run, creates the policy, then its binding, runs `hold` (until it ends, or Ctrl-C),
/// and deletes the binding and the policy whatever `hold` returned. Every change is a step.
///
/// Ctrl-C while held removes them, then ends the process with 130 (SIGINT's own exit status);
/// after the hold, Ctrl-C keeps ending the process at once, as it did before the drill listened
/// for it.
pub async fn isolated<T>(
    client: &Client,
    spec: &ClusterSpec,
    pod: &str,
    log: &Log,
    hold: impl Future<Output = Result<T>>,
) -> Result<T> {
    if !served(client).await? {
        return Err(not_served());
    }
    let n = name(spec);
    if remove(client, spec).await? {
        log.step(format!(
            "removed ValidatingAdmissionPolicy and binding {n} left over from an earlier run"
        ));
    }
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let made = async {
        policies
            .create(&PostParams::default(), &policy(spec, pod))
            .await
            .map_err(|e| step_err(format!("create ValidatingAdmissionPolicy {n}"), e))?;
        bindings
            .create(&PostParams::default(), &binding(spec))
            .await
            .map_err(|e| step_err(format!("create ValidatingAdmissionPolicyBinding {n}"), e))?;
        Ok::<(), Error>(())
    }
    .await;
    let held = match made {
        Ok(()) => {
            log.step(format!(
                "{pod} cut off from the leader Lease {}: created ValidatingAdmissionPolicy and \
                 binding {n}",
                contract::leader_lease_name(&spec.name)
            ));
            tokio::select! {
                r = hold => Some(r),
                _ = interrupted() => None,
            }
        }
        Err(e) => Some(Err(e)),
    };
    // Whatever happened: the member is given the Lease back.
    let removed = remove(client, spec).await;
    match &removed {
        Ok(_) => log.step(format!(
            "{pod} reconnected: deleted ValidatingAdmissionPolicy and binding {n}"
        )),
        Err(e) => log.step(format!(
            "{pod} may still be cut off: {e}; delete them with `kubectl delete \
             validatingadmissionpolicybinding,validatingadmissionpolicy {n}`"
        )),
    }
    let Some(held) = held else {
        return Err(Error::Interrupted(format!(
            "{pod} was given the leader Lease back ({n} deleted)"
        )));
    };
    // Listening for Ctrl-C above replaced its default for the whole process: give it back its
    // meaning (end the process, 130) for the rest of the run; nothing of this drill is left to
    // undo.
    tokio::spawn(async {
        interrupted().await;
        std::process::exit(130);
    });
    let out = held?;
    removed?;
    Ok(out)
}

/// Resolves on Ctrl-C (SIGINT). Never resolves when the handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluate(expression: &str, context: &cel_interpreter::Context) -> cel_interpreter::Value {
        cel_interpreter::Program::compile(expression)
            .unwrap_or_else(|e| panic!("{expression} does not parse: {e:?}"))
            .execute(context)
            .unwrap_or_else(|e| panic!("{expression} fails: {e:?}"))
    }

    /// What the policy for `isolated` decides on an update of Lease `lease` by `user` with a
    /// token bound to `pod` (none: a token naming no pod): `None` when it does not judge the
    /// request, else whether it allows it. The rendered expressions, run by a CEL interpreter.
    fn decides(isolated: &str, user: &str, pod: Option<&str>, lease: &str) -> Option<bool> {
        let spec = ClusterSpec {
            name: "db".into(),
            namespace: "prod".into(),
            ..ClusterSpec::default()
        };
        let mut info = serde_json::json!({"username": user});
        if let Some(pod) = pod {
            info["extra"] = serde_json::json!({POD_NAME_CLAIM: [pod]});
        }
        let mut context = cel_interpreter::Context::default();
        context
            .add_variable(
                "request",
                serde_json::json!({"userInfo": info,
                                   "resource": {"group": "coordination.k8s.io", "version": "v1",
                                                "resource": "leases"}}),
            )
            .unwrap();
        context
            .add_variable("object", serde_json::json!({"metadata": {"name": lease}}))
            .unwrap();
        let s = policy(&spec, isolated).spec.unwrap();
        let condition = &s.match_conditions.unwrap()[0].expression;
        if evaluate(condition, &context) != cel_interpreter::Value::Bool(true) {
            return None;
        }
        let variable = &s.variables.unwrap()[0];
        let pod_name = evaluate(&variable.expression, &context);
        context.add_variable_from_value(
            "variables",
            std::collections::HashMap::from([(variable.name.clone(), pod_name)]),
        );
        let v = &s.validations.unwrap()[0];
        match evaluate(&v.expression, &context) {
            cel_interpreter::Value::Bool(b) => Some(b),
            other => panic!("{} gives {other:?}", v.expression),
        }
    }

    #[test]
    fn only_the_isolated_pods_token_is_denied_the_leader_lease() {
        let sa = "system:serviceaccount:prod:db-sa";
        // The isolated master may not renew the leader Lease...
        assert_eq!(decides("db-1", sa, Some("db-1"), "db-leader"), Some(false));
        // ...but keeps its own fence Lease, and every other member may take the leader Lease.
        assert_eq!(decides("db-1", sa, Some("db-1"), "db-1-member"), Some(true));
        assert_eq!(decides("db-1", sa, Some("db-0"), "db-leader"), Some(true));
        assert_eq!(decides("db-1", sa, Some("db-2"), "db-leader"), Some(true));
        // A token naming no pod is the member isolation policy's to judge, not this one's.
        assert_eq!(decides("db-1", sa, None, "db-leader"), Some(true));
        // Nobody else is judged: an operator's `kubectl` still writes the Lease.
        assert_eq!(
            decides("db-1", "kubernetes-admin", Some("db-1"), "db-leader"),
            None
        );
        assert_eq!(
            decides(
                "db-1",
                "system:serviceaccount:other:db-sa",
                Some("db-1"),
                "db-leader"
            ),
            None
        );
    }

    #[test]
    fn the_policy_denies_only_the_named_pods_updates_of_the_leader_lease() {
        let spec = ClusterSpec {
            name: "db".into(),
            namespace: "prod".into(),
            ..ClusterSpec::default()
        };
        let p = policy(&spec, "db-1");
        assert_eq!(
            p.metadata.name.as_deref(),
            Some("pgset-drill-prod-db-isolated")
        );
        let s = p.spec.unwrap();
        assert_eq!(s.failure_policy.as_deref(), Some("Fail"));
        let v = &s.validations.unwrap()[0];
        assert_eq!(
            v.expression,
            "object.metadata.name != 'db-leader' || variables.podName != 'db-1'"
        );
        assert!(
            v.message
                .as_deref()
                .unwrap()
                .contains("kubectl delete validatingadmissionpolicybinding,validatingadmissionpolicy pgset-drill-prod-db-isolated")
        );
        assert_eq!(
            s.match_conditions.unwrap()[0].expression,
            "request.userInfo.username == 'system:serviceaccount:prod:db-sa'"
        );
        let b = binding(&spec).spec.unwrap();
        assert_eq!(
            b.policy_name.as_deref(),
            Some("pgset-drill-prod-db-isolated")
        );
        assert_eq!(b.validation_actions.unwrap(), ["Deny"]);
        assert_eq!(
            b.match_resources
                .unwrap()
                .namespace_selector
                .unwrap()
                .match_labels
                .unwrap()["kubernetes.io/metadata.name"],
            "prod"
        );
    }
}
