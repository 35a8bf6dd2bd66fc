//! Member isolation: a ValidatingAdmissionPolicy and its binding, `pgset-<namespace>-<name>-members`,
//! that let a member's ServiceAccount token act only as the member pod it is bound to.
//!
//! Every member runs as ServiceAccount `<name>-sa`, and RBAC cannot tell one member from
//! another: the Role names every member's pod and fence Lease, and cannot restrict `create` by
//! name at all. The API server knows more than RBAC: a projected token is bound to one pod, and
//! requests made with it carry that pod's name in `userInfo.extra` ([`POD_NAME_CLAIM`]). The
//! policy, for requests by `<name>-sa` in the cluster's namespace only:
//!
//! - a pod may be updated or patched only by itself;
//! - a member's fence Lease `<name>-<k>-member` may be created or updated only by pod `<name>-<k>`;
//! - the leader Lease `<name>-leader` by any member pod (every member may contend), and no other
//!   Lease name may be created or updated;
//! - a request without the pod claim (a token not bound to a pod) is refused for these resources.
//!
//! The policy needs `admissionregistration.k8s.io/v1` ValidatingAdmissionPolicy (Kubernetes
//! 1.30 and newer); on an older API server [`served`] says so and `deploy` goes on without it,
//! saying once that isolation is not enforced ([`not_enforced`]).

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::DeleteParams;
use kube::{Api, Client};
use pgset_spec::{ClusterSpec, contract};

use crate::apply::{Applied, ApplyMode, apply_reporting, kind_of};
use crate::{Error, Result, is_status, label_map};

/// The key of `request.userInfo.extra` that names the pod a projected ServiceAccount token is
/// bound to (a list of one string).
pub const POD_NAME_CLAIM: &str = "authentication.kubernetes.io/pod-name";

/// The API group and version that serves ValidatingAdmissionPolicy as GA.
pub const ADMISSION_GROUP_VERSION: &str = "admissionregistration.k8s.io/v1";

/// The resource [`served`] looks for in [`ADMISSION_GROUP_VERSION`].
const POLICY_RESOURCE: &str = "validatingadmissionpolicies";

/// The label every namespace carries with its own name (Kubernetes 1.21+): the binding's
/// namespace selector.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Name of the policy and of its binding (both cluster-scoped, so the namespace is in it).
pub fn policy_name(spec: &ClusterSpec) -> String {
    format!("pgset-{}-{}-members", spec.namespace, spec.name)
}

/// The user name the API server gives requests made with a token of `<name>-sa`.
pub fn service_account_user(spec: &ClusterSpec) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        spec.namespace,
        spec.service_account_name()
    )
}

fn cluster_meta(spec: &ClusterSpec) -> ObjectMeta {
    ObjectMeta {
        name: Some(policy_name(spec)),
        labels: Some(label_map(spec.common_labels())),
        ..ObjectMeta::default()
    }
}

/// A CEL string literal (single quotes; the names are DNS labels, quoted anyway).
fn cel_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An RE2 pattern matching exactly the member pod names `<name>-<ordinal>` (then `suffix`).
fn member_pattern(spec: &ClusterSpec, suffix: &str) -> String {
    let escape = |s: &str| {
        s.chars()
            .flat_map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    vec![c]
                } else {
                    vec!['\\', c]
                }
            })
            .collect::<String>()
    };
    format!("^{}-(0|[1-9][0-9]*){}$", escape(&spec.name), escape(suffix))
}

/// The match condition: the policy judges only requests by the cluster's ServiceAccount.
pub fn match_condition_expression(spec: &ClusterSpec) -> String {
    format!(
        "request.userInfo.username == {}",
        cel_string(&service_account_user(spec))
    )
}

/// `variables.podName`: the pod the request's token is bound to, `''` when it names none (or
/// more than one).
pub fn pod_name_variable_expression() -> String {
    let key = cel_string(POD_NAME_CLAIM);
    format!(
        "has(request.userInfo.extra) && {key} in request.userInfo.extra && size(request.userInfo.extra[{key}]) == 1 ? request.userInfo.extra[{key}][0] : ''"
    )
}

/// The validations, in order: (expression, message). Each is `true` when the request is
/// allowed.
pub fn validations(spec: &ClusterSpec) -> Vec<(String, String)> {
    let sa = format!("{}/{}", spec.namespace, spec.service_account_name());
    let leader = contract::leader_lease_name(&spec.name);
    let fence = cel_string(&member_pattern(spec, &contract::member_lease_name("")));
    let member = cel_string(&member_pattern(spec, ""));
    let is_lease = "request.resource.resource == 'leases'";
    vec![
        (
            "variables.podName != ''".to_string(),
            format!(
                "pgset member isolation: ServiceAccount {sa} may change the cluster's pods and Leases only with a token bound to a member pod, and this request's token names no pod ({POD_NAME_CLAIM}): use the pod's projected ServiceAccount token, not a long-lived Secret token"
            ),
        ),
        (
            "request.resource.resource != 'pods' || object.metadata.name == variables.podName"
                .to_string(),
            format!(
                "pgset member isolation: a member may change only its own pod: ServiceAccount {sa} bound to another pod may not change this pod"
            ),
        ),
        (
            format!(
                "!({is_lease} && object.metadata.name.matches({fence})) || object.metadata.name == variables.podName + {}",
                cel_string(&contract::member_lease_name(""))
            ),
            format!(
                "pgset member isolation: a member's fence Lease <pod>-member may be created or updated only by that member pod: ServiceAccount {sa} bound to another pod may not take this fence"
            ),
        ),
        (
            format!(
                "!({is_lease} && object.metadata.name == {}) || variables.podName.matches({member})",
                cel_string(&leader)
            ),
            format!(
                "pgset member isolation: the leader Lease {leader} may be created or updated only by the cluster's member pods {}-<ordinal>",
                spec.name
            ),
        ),
        (
            format!(
                "request.resource.resource != 'leases' || object.metadata.name == {} || object.metadata.name.matches({fence})",
                cel_string(&leader)
            ),
            format!(
                "pgset member isolation: ServiceAccount {sa} may create or update only the leader Lease {leader} and the members' fence Leases {}-<ordinal>-member, no other Lease",
                spec.name
            ),
        ),
    ]
}

/// ValidatingAdmissionPolicy `pgset-<namespace>-<name>-members`: what a member's token may do
/// to pods (update, patch) and Leases (create, update). Failure policy `Fail`: a policy that
/// cannot be evaluated refuses.
pub fn policy(spec: &ClusterSpec) -> ValidatingAdmissionPolicy {
    let rule = |group: &str, resource: &str, operations: &[&str]| NamedRuleWithOperations {
        api_groups: Some(vec![group.to_string()]),
        api_versions: Some(vec!["*".into()]),
        operations: Some(operations.iter().map(|o| o.to_string()).collect()),
        resources: Some(vec![resource.to_string()]),
        ..NamedRuleWithOperations::default()
    };
    ValidatingAdmissionPolicy {
        metadata: cluster_meta(spec),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![
                    rule("", "pods", &["UPDATE"]),
                    rule("coordination.k8s.io", "leases", &["CREATE", "UPDATE"]),
                ]),
                ..MatchResources::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "cluster-service-account".into(),
                expression: match_condition_expression(spec),
            }]),
            variables: Some(vec![Variable {
                name: "podName".into(),
                expression: pod_name_variable_expression(),
            }]),
            validations: Some(
                validations(spec)
                    .into_iter()
                    .map(|(expression, message)| Validation {
                        expression,
                        message: Some(message),
                        reason: Some("Forbidden".into()),
                        ..Validation::default()
                    })
                    .collect(),
            ),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// ValidatingAdmissionPolicyBinding `pgset-<namespace>-<name>-members`: the policy, denying,
/// in the cluster's namespace only.
pub fn binding(spec: &ClusterSpec) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: cluster_meta(spec),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(policy_name(spec)),
            validation_actions: Some(vec!["Deny".into()]),
            match_resources: Some(MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(
                        [(NAMESPACE_NAME_LABEL.to_string(), spec.namespace.clone())]
                            .into_iter()
                            .collect(),
                    ),
                    ..LabelSelector::default()
                }),
                ..MatchResources::default()
            }),
            ..ValidatingAdmissionPolicyBindingSpec::default()
        }),
    }
}

/// Whether the API server serves ValidatingAdmissionPolicy in
/// [`ADMISSION_GROUP_VERSION`] (one discovery request; a 404 means it does not).
pub async fn served(client: &Client) -> Result<bool> {
    match client
        .list_api_group_resources(ADMISSION_GROUP_VERSION)
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == POLICY_RESOURCE)),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(Error::api(
            "discover",
            "APIResourceList",
            ADMISSION_GROUP_VERSION,
            "-",
        )(e)),
    }
}

/// What `deploy` and `verify` say when the API server does not serve the policy.
pub fn not_enforced(spec: &ClusterSpec) -> String {
    format!(
        "member isolation is not enforced on this cluster: its API server does not serve {ADMISSION_GROUP_VERSION} ValidatingAdmissionPolicy (Kubernetes 1.30 or newer does), so a token of ServiceAccount {}/{} held by one member can still relabel another member's pod or take its fence Lease",
        spec.namespace,
        spec.service_account_name()
    )
}

/// Whether member isolation was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// The policy and its binding were applied (what each apply did).
    Applied(Vec<Applied>),
    /// The API server does not serve the policy: nothing was applied.
    NotServed,
}

/// Applies the policy, then its binding (cluster-wide objects), when the API server serves
/// them; otherwise says once, through `progress`, that isolation is not enforced and why.
pub async fn apply(
    client: &Client,
    spec: &ClusterSpec,
    policy: &ValidatingAdmissionPolicy,
    binding: &ValidatingAdmissionPolicyBinding,
    mode: ApplyMode,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Isolation> {
    if !served(client).await? {
        progress(&not_enforced(spec));
        return Ok(Isolation::NotServed);
    }
    let name = policy_name(spec);
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let first = apply_reporting(&policies, policy, mode, progress)
        .await
        .map_err(Error::api(
            "apply",
            kind_of::<ValidatingAdmissionPolicy>(),
            &name,
            "-",
        ))?;
    let second = apply_reporting(&bindings, binding, mode, progress)
        .await
        .map_err(Error::api(
            "apply",
            kind_of::<ValidatingAdmissionPolicyBinding>(),
            &name,
            "-",
        ))?;
    Ok(Isolation::Applied(vec![first, second]))
}

/// Deletes the binding, then the policy (they hold no data). Absent ones, and an API server
/// that does not serve them, are fine: a second run changes nothing.
pub async fn delete(
    client: &Client,
    spec: &ClusterSpec,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let name = policy_name(spec);
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let kind = kind_of::<ValidatingAdmissionPolicyBinding>();
    match bindings.delete(&name, &DeleteParams::default()).await {
        Ok(_) => progress(&format!("deleted {kind} {name}")),
        Err(e) if is_status(&e, 404) => progress(&format!("{kind} {name} already absent")),
        Err(e) => return Err(Error::api("delete", kind, &name, "-")(e)),
    }
    let kind = kind_of::<ValidatingAdmissionPolicy>();
    match policies.delete(&name, &DeleteParams::default()).await {
        Ok(_) => progress(&format!("deleted {kind} {name}")),
        Err(e) if is_status(&e, 404) => progress(&format!("{kind} {name} already absent")),
        Err(e) => return Err(Error::api("delete", kind, &name, "-")(e)),
    }
    Ok(())
}

/// Deletes what the `master-isolated` drill makes ([`contract::drill_isolation_name`]: a policy
/// and a binding that cut the master off from the leader Lease) when a drill whose process was
/// killed left them: the binding, then the policy. Absent ones (the usual case) are not
/// mentioned; an API server that does not serve them has none.
pub async fn delete_drill_leftover(
    client: &Client,
    spec: &ClusterSpec,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let name = contract::drill_isolation_name(&spec.namespace, &spec.name);
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let kind = kind_of::<ValidatingAdmissionPolicyBinding>();
    match bindings.delete(&name, &DeleteParams::default()).await {
        Ok(_) => progress(&format!("deleted {kind} {name}, left over from a drill")),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(Error::api("delete", kind, &name, "-")(e)),
    }
    let kind = kind_of::<ValidatingAdmissionPolicy>();
    match policies.delete(&name, &DeleteParams::default()).await {
        Ok(_) => progress(&format!("deleted {kind} {name}, left over from a drill")),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(Error::api("delete", kind, &name, "-")(e)),
    }
    Ok(())
}

/// How `found` (as read from the API server, defaults filled in) differs from `rendered`: one
/// line per field pgset sets whose value is not what it renders. A field the server added
/// (defaults, status, metadata it keeps) is not a difference.
pub fn drift<T: serde::Serialize>(rendered: &T, found: &T) -> Vec<String> {
    let mut out = Vec::new();
    match (serde_json::to_value(rendered), serde_json::to_value(found)) {
        (Ok(r), Ok(f)) => subset_drift("", &r, &f, &mut out),
        (Err(e), _) | (_, Err(e)) => out.push(format!("cannot compare: {e}")),
    }
    out
}

fn subset_drift(
    path: &str,
    rendered: &serde_json::Value,
    found: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (rendered, found) {
        (Value::Object(r), Value::Object(f)) => {
            for (key, value) in r {
                let here = format!("{path}.{key}");
                match f.get(key) {
                    Some(other) => subset_drift(&here, value, other, out),
                    None => out.push(format!("{here} is missing")),
                }
            }
        }
        (Value::Array(r), Value::Array(f)) if r.len() == f.len() => {
            for (i, (a, b)) in r.iter().zip(f).enumerate() {
                subset_drift(&format!("{path}[{i}]"), a, b, out);
            }
        }
        (Value::Array(r), Value::Array(f)) => out.push(format!(
            "{path} is a list of {}, pgset renders a list of {}",
            f.len(),
            r.len()
        )),
        (r, f) if r == f => {}
        (r, f) => out.push(format!("{path} is {f}, pgset renders {r}")),
    }
}

#[cfg(test)]
mod tests;
