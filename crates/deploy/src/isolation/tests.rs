//! The policy's rendered text and exact match conditions, and how its expressions judge
//! requests.

use super::*;
use crate::testutil::named_spec;

#[test]
fn policy_and_binding_are_named_for_the_namespace_and_cluster_and_carry_pgsets_labels() {
    let spec = named_spec("db", "prod");
    let policy = policy(&spec);
    let binding = binding(&spec);
    for meta in [&policy.metadata, &binding.metadata] {
        assert_eq!(meta.name.as_deref(), Some("pgset-prod-db-members"));
        assert_eq!(
            meta.namespace, None,
            "cluster-scoped objects have no namespace"
        );
        assert_eq!(meta.labels, Some(label_map(spec.common_labels())));
    }
    assert_ne!(
        policy_name(&named_spec("db", "prod")),
        policy_name(&named_spec("db", "staging")),
        "two namespaces' clusters of one name must not share a policy"
    );
}

#[test]
fn the_policy_judges_only_the_clusters_service_account_on_pod_updates_and_lease_writes() {
    let spec = named_spec("db", "prod");
    let policy_spec = policy(&spec).spec.unwrap();
    assert_eq!(policy_spec.failure_policy.as_deref(), Some("Fail"));
    let conditions = policy_spec.match_conditions.unwrap();
    assert_eq!(conditions.len(), 1);
    assert_eq!(
        conditions[0].expression,
        "request.userInfo.username == 'system:serviceaccount:prod:db-sa'"
    );
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = policy_spec
        .match_constraints
        .unwrap()
        .resource_rules
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap(),
                r.resources.unwrap(),
                r.operations.unwrap(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        vec![
            (s(&[""]), s(&["pods"]), s(&["UPDATE"])),
            (
                s(&["coordination.k8s.io"]),
                s(&["leases"]),
                s(&["CREATE", "UPDATE"])
            ),
        ]
    );
    let variables = policy_spec.variables.unwrap();
    assert_eq!(variables[0].name, "podName");
    assert_eq!(
        variables[0].expression,
        "has(request.userInfo.extra) && 'authentication.kubernetes.io/pod-name' in request.userInfo.extra && size(request.userInfo.extra['authentication.kubernetes.io/pod-name']) == 1 ? request.userInfo.extra['authentication.kubernetes.io/pod-name'][0] : ''"
    );
    for v in policy_spec.validations.unwrap() {
        assert_eq!(v.reason.as_deref(), Some("Forbidden"));
        assert!(v.message.unwrap().starts_with("pgset member isolation: "));
    }
}

#[test]
fn the_validations_name_the_exact_member_pods_and_leases_of_the_cluster() {
    let spec = named_spec("db", "prod");
    let expressions: Vec<String> = validations(&spec).into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        expressions,
        [
            "variables.podName != ''",
            "request.resource.resource != 'pods' || object.metadata.name == variables.podName",
            "!(request.resource.resource == 'leases' && object.metadata.name.matches('^db-(0|[1-9][0-9]*)-member$')) || object.metadata.name == variables.podName + '-member'",
            "!(request.resource.resource == 'leases' && object.metadata.name == 'db-leader') || variables.podName.matches('^db-(0|[1-9][0-9]*)$')",
            "request.resource.resource != 'leases' || object.metadata.name == 'db-leader' || object.metadata.name.matches('^db-(0|[1-9][0-9]*)-member$')",
        ]
    );
}

#[test]
fn a_request_without_a_pod_claim_is_refused_with_a_message_that_says_why() {
    let spec = named_spec("db", "prod");
    let (_, message) = &validations(&spec)[0];
    assert!(message.contains("ServiceAccount prod/db-sa"), "{message}");
    assert!(message.contains(POD_NAME_CLAIM), "{message}");
    assert!(
        message.contains("projected ServiceAccount token"),
        "{message}"
    );
}

#[test]
fn the_binding_denies_in_the_clusters_namespace_only() {
    let spec = named_spec("db", "prod");
    let b = binding(&spec).spec.unwrap();
    assert_eq!(b.policy_name.as_deref(), Some("pgset-prod-db-members"));
    assert_eq!(b.validation_actions, Some(vec!["Deny".to_string()]));
    let resources = b.match_resources.unwrap();
    let selector = resources.namespace_selector.unwrap();
    assert_eq!(
        selector.match_labels,
        Some(
            [(
                "kubernetes.io/metadata.name".to_string(),
                "prod".to_string()
            )]
            .into_iter()
            .collect()
        )
    );
    assert_eq!(selector.match_expressions, None);
    assert_eq!(resources.resource_rules, None, "the policy's rules apply");
}

#[test]
fn drift_ignores_what_the_server_adds_and_names_what_differs() {
    let spec = named_spec("db", "prod");
    let rendered = policy(&spec);
    let mut found = serde_json::to_value(&rendered).unwrap();
    found["metadata"]["resourceVersion"] = "9".into();
    found["metadata"]["uid"] = "u".into();
    found["spec"]["matchConstraints"]["matchPolicy"] = "Equivalent".into();
    found["spec"]["matchConstraints"]["resourceRules"][0]["scope"] = "*".into();
    found["status"] = serde_json::json!({"observedGeneration": 1});
    let found: ValidatingAdmissionPolicy = serde_json::from_value(found).unwrap();
    assert_eq!(drift(&rendered, &found), Vec::<String>::new());

    let mut changed = found.clone();
    changed.spec.as_mut().unwrap().failure_policy = Some("Ignore".into());
    changed
        .spec
        .as_mut()
        .unwrap()
        .validations
        .as_mut()
        .unwrap()
        .pop();
    assert_eq!(
        drift(&rendered, &changed),
        [
            ".spec.failurePolicy is \"Ignore\", pgset renders \"Fail\"".to_string(),
            format!(
                ".spec.validations is a list of 4, pgset renders a list of {}",
                validations(&spec).len()
            ),
        ]
    );
}

/// A request as the policy sees it: who (`user`, the token's `extra`), what (`resource`,
/// `name`).
struct Request {
    user: &'static str,
    extra: Option<serde_json::Value>,
    resource: &'static str,
    name: &'static str,
}

const SA: &str = "system:serviceaccount:prod:db-sa";

fn bound_to(pod: &str) -> Option<serde_json::Value> {
    Some(serde_json::json!({
        POD_NAME_CLAIM: [pod],
        "authentication.kubernetes.io/pod-uid": ["0d9c"],
    }))
}

fn evaluate(expression: &str, context: &cel_interpreter::Context) -> cel_interpreter::Value {
    cel_interpreter::Program::compile(expression)
        .unwrap_or_else(|e| panic!("{expression} does not parse: {e:?}"))
        .execute(context)
        .unwrap_or_else(|e| panic!("{expression} fails: {e:?}"))
}

/// What the policy decides: `None` when it does not judge the request (the match condition is
/// false), else the index of the first validation that refuses it, or `Some(None)` when every
/// validation allows it. The expressions are the rendered ones, evaluated by a CEL interpreter.
fn judge(request: &Request) -> Option<Option<usize>> {
    let spec = named_spec("db", "prod");
    let mut user = serde_json::json!({"username": request.user});
    if let Some(extra) = &request.extra {
        user["extra"] = extra.clone();
    }
    let mut context = cel_interpreter::Context::default();
    context
        .add_variable(
            "request",
            serde_json::json!({
                "userInfo": user,
                "resource": {"group": "", "version": "v1", "resource": request.resource},
            }),
        )
        .unwrap();
    context
        .add_variable(
            "object",
            serde_json::json!({"metadata": {"name": request.name}}),
        )
        .unwrap();
    let policy_spec = policy(&spec).spec.unwrap();
    let condition = &policy_spec.match_conditions.unwrap()[0].expression;
    if evaluate(condition, &context) != cel_interpreter::Value::Bool(true) {
        return None;
    }
    let variable = &policy_spec.variables.unwrap()[0];
    let pod_name = evaluate(&variable.expression, &context);
    context.add_variable_from_value(
        "variables",
        std::collections::HashMap::from([(variable.name.clone(), pod_name)]),
    );
    let validations = policy_spec.validations.unwrap();
    for (i, v) in validations.iter().enumerate() {
        match evaluate(&v.expression, &context) {
            cel_interpreter::Value::Bool(true) => {}
            cel_interpreter::Value::Bool(false) => return Some(Some(i)),
            other => panic!("{} gives {other:?}, not a bool", v.expression),
        }
    }
    Some(None)
}

fn by(pod: &str, resource: &'static str, name: &'static str) -> Request {
    Request {
        user: SA,
        extra: bound_to(pod),
        resource,
        name,
    }
}

#[test]
fn a_member_may_change_its_own_pod_and_fence_and_contend_for_the_leader_lease() {
    assert_eq!(judge(&by("db-1", "pods", "db-1")), Some(None));
    assert_eq!(judge(&by("db-1", "leases", "db-1-member")), Some(None));
    assert_eq!(judge(&by("db-1", "leases", "db-leader")), Some(None));
    assert_eq!(judge(&by("db-12", "leases", "db-12-member")), Some(None));
    assert_eq!(judge(&by("db-0", "leases", "db-leader")), Some(None));
}

#[test]
fn a_member_may_not_change_another_members_pod() {
    assert_eq!(judge(&by("db-1", "pods", "db-0")), Some(Some(1)));
    assert_eq!(judge(&by("db-1", "pods", "db-10")), Some(Some(1)));
    assert_eq!(judge(&by("db-1", "pods", "web-0")), Some(Some(1)));
}

#[test]
fn a_member_may_not_create_or_update_another_members_fence() {
    assert_eq!(judge(&by("db-1", "leases", "db-0-member")), Some(Some(2)));
    assert_eq!(judge(&by("db-1", "leases", "db-11-member")), Some(Some(2)));
}

#[test]
fn no_lease_but_the_leader_and_the_members_fences_may_be_written() {
    for name in [
        "evil",
        "db-x-0-member",
        "db-01-member",
        "other-leader",
        "db-0",
    ] {
        assert_eq!(
            judge(&by("db-1", "leases", name)),
            Some(Some(4)),
            "lease {name}"
        );
    }
}

#[test]
fn only_a_member_pod_may_write_the_leader_lease() {
    assert_eq!(judge(&by("debug", "leases", "db-leader")), Some(Some(3)));
    assert_eq!(judge(&by("db-x-0", "leases", "db-leader")), Some(Some(3)));
}

#[test]
fn a_token_bound_to_no_pod_is_refused_for_everything_the_policy_covers() {
    for extra in [
        None,
        Some(serde_json::json!({})),
        Some(serde_json::json!({"authentication.kubernetes.io/credential-id": ["x"]})),
        Some(serde_json::json!({POD_NAME_CLAIM: []})),
    ] {
        for (resource, name) in [
            ("pods", "db-0"),
            ("leases", "db-0-member"),
            ("leases", "db-leader"),
        ] {
            let request = Request {
                user: SA,
                extra: extra.clone(),
                resource,
                name,
            };
            assert_eq!(
                judge(&request),
                Some(Some(0)),
                "{extra:?} {resource}/{name}"
            );
        }
    }
}

#[test]
fn requests_by_anyone_but_the_clusters_service_account_are_not_judged() {
    for user in [
        "system:serviceaccount:prod:other-sa",
        "system:serviceaccount:staging:db-sa",
        "system:serviceaccount:kube-system:statefulset-controller",
        "admin",
    ] {
        let request = Request {
            user,
            extra: None,
            resource: "pods",
            name: "db-0",
        };
        assert_eq!(judge(&request), None, "{user}");
    }
}
