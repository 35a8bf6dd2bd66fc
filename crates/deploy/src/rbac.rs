//! The pods' identity: ServiceAccount `<name>-sa`, and Role + RoleBinding `<name>-agent` that
//! let the agent read and label its own set's pods, nothing else.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use pgset_spec::{ClusterSpec, MAX_REPLICAS};

use crate::object_meta;

/// ServiceAccount `<name>-sa`.
pub fn service_account(spec: &ClusterSpec) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(spec, spec.service_account_name()),
        ..ServiceAccount::default()
    }
}

/// Role `<name>-agent`.
///
/// The agent labels its own pod (`patch`) and checks whether a member's pod still exists
/// (`get`, before dropping the replication slot of a member scaled away); it makes no other
/// API call. `resourceNames` lists every pod name the set can have
/// (`<name>-0` .. `<name>-{MAX_REPLICAS-1}`), so the agent cannot touch other pods of the
/// namespace.
pub fn role(spec: &ClusterSpec) -> Role {
    let member_pods: Vec<String> = (0..MAX_REPLICAS).map(|i| spec.pod_name(i)).collect();
    Role {
        metadata: object_meta(spec, spec.role_name()),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            resource_names: Some(member_pods),
            verbs: vec!["get".into(), "patch".into()],
            ..PolicyRule::default()
        }]),
    }
}

/// RoleBinding `<name>-agent`: the Role, granted to `<name>-sa`.
pub fn role_binding(spec: &ClusterSpec) -> RoleBinding {
    RoleBinding {
        metadata: object_meta(spec, spec.role_name()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: spec.role_name(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: spec.service_account_name(),
            namespace: Some(spec.namespace.clone()),
            api_group: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::named_spec;

    #[test]
    fn role_grants_get_and_patch_on_member_pods_only() {
        let spec = named_spec("db", "prod");
        let role = role(&spec);
        assert_eq!(role.metadata.name.as_deref(), Some("db-agent"));
        assert_eq!(role.metadata.namespace.as_deref(), Some("prod"));
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        let pods = &rules[0];
        assert_eq!(pods.api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(pods.resources.as_deref(), Some(&["pods".to_string()][..]));
        assert_eq!(pods.verbs, vec!["get", "patch"]);
        let names = pods.resource_names.as_ref().expect("resourceNames");
        assert_eq!(names.len(), MAX_REPLICAS as usize);
        assert_eq!(names[0], "db-0");
        assert_eq!(
            names[MAX_REPLICAS as usize - 1],
            format!("db-{}", MAX_REPLICAS - 1)
        );
        for rule in &rules {
            for verb in &rule.verbs {
                assert!(
                    ![
                        "list",
                        "watch",
                        "create",
                        "update",
                        "delete",
                        "deletecollection",
                        "*"
                    ]
                    .contains(&verb.as_str()),
                    "unexpected verb {verb}"
                );
            }
        }
    }

    #[test]
    fn binding_grants_the_role_to_the_service_account_of_the_namespace() {
        let spec = named_spec("db", "prod");
        let sa = service_account(&spec);
        let rb = role_binding(&spec);
        assert_eq!(sa.metadata.name.as_deref(), Some("db-sa"));
        assert_eq!(rb.metadata.name.as_deref(), Some("db-agent"));
        assert_eq!(rb.role_ref.kind, "Role");
        assert_eq!(rb.role_ref.name, "db-agent");
        assert_eq!(rb.role_ref.api_group, "rbac.authorization.k8s.io");
        let subjects = rb.subjects.expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(Some(subjects[0].name.as_str()), sa.metadata.name.as_deref());
        assert_eq!(subjects[0].namespace.as_deref(), Some("prod"));
    }
}
