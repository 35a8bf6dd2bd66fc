//! The pods' identity: ServiceAccount `<name>-sa`, and Role + RoleBinding `<name>-agent` that
//! let the agent read and label its own set's pods, hold its members' Leases and the leader
//! Lease, and read its own StatefulSet's size, nothing else. Which member may touch which of
//! those objects is [`crate::isolation`]'s policy.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use pgset_spec::{ClusterSpec, MAX_REPLICAS, contract};

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
/// - `pods` (core): `get`, `patch` — the agent labels its own pod and reads it (its
///   `terminationGracePeriodSeconds` sets the Lease duration). `resourceNames` lists every pod
///   name the set can have (`<name>-0` .. `<name>-{MAX_REPLICAS-1}`), so the agent cannot touch
///   other pods of the namespace.
/// - `leases` (`coordination.k8s.io`): `get`, `update` restricted to the members' write-fence
///   Leases (`<name>-<ordinal>-member`) and the cluster's leader Lease (`<name>-leader`), and
///   `create`. Kubernetes cannot restrict `create` by `resourceNames` (a POST names no object
///   when it is authorized), so that rule is as narrow as RBAC allows: the one verb, on Leases
///   only, in the cluster's namespace only.
///
/// RBAC cannot tell one member from another either: all run as `<name>-sa`, so every rule names
/// every member's objects. What RBAC cannot say, the member isolation policy
/// ([`crate::isolation`]) enforces where the API server serves it: a member's token may change
/// only its own pod and its own fence, contend for the leader Lease, and create no other Lease.
/// - `configmaps`: `get` and `patch` on the cluster's record (`<name>-record`) only: the master
///   writes the database system identifier it initialised there, and reads it before an initdb.
/// - `statefulsets` (`apps`): `get` on the set's own StatefulSet only: the master drops a
///   member's replication slot only when the member's ordinal is at or above `spec.replicas`,
///   and a replica contending for the master role asks the members below it.
pub fn role(spec: &ClusterSpec) -> Role {
    let member_pods: Vec<String> = (0..MAX_REPLICAS).map(|i| spec.pod_name(i)).collect();
    let mut leases: Vec<String> = (0..MAX_REPLICAS)
        .map(|i| spec.member_lease_name(i))
        .collect();
    leases.push(contract::leader_lease_name(&spec.name));
    Role {
        metadata: object_meta(spec, spec.role_name()),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                resource_names: Some(member_pods),
                verbs: vec!["get".into(), "patch".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![COORDINATION_GROUP.into()]),
                resources: Some(vec!["leases".into()]),
                resource_names: Some(leases),
                verbs: vec!["get".into(), "update".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![COORDINATION_GROUP.into()]),
                resources: Some(vec!["leases".into()]),
                resource_names: None,
                verbs: vec!["create".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![spec.record_name()]),
                verbs: vec!["get".into(), "patch".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec![APPS_GROUP.into()]),
                resources: Some(vec!["statefulsets".into()]),
                resource_names: Some(vec![spec.statefulset_name().to_string()]),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

/// API group of Leases.
const COORDINATION_GROUP: &str = "coordination.k8s.io";
/// API group of StatefulSets.
const APPS_GROUP: &str = "apps";

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
    fn role_grants_exactly_what_the_agent_calls() {
        let spec = named_spec("db", "prod");
        let role = role(&spec);
        assert_eq!(role.metadata.name.as_deref(), Some("db-agent"));
        assert_eq!(role.metadata.namespace.as_deref(), Some("prod"));
        let rules = role.rules.expect("rules");
        let summary: Vec<(String, String, Vec<String>, Option<usize>)> = rules
            .iter()
            .map(|r| {
                (
                    r.api_groups.as_ref().unwrap().join(","),
                    r.resources.as_ref().unwrap().join(","),
                    r.verbs.clone(),
                    r.resource_names.as_ref().map(Vec::len),
                )
            })
            .collect();
        let n = Some(MAX_REPLICAS as usize);
        let s = |x: &str| x.to_string();
        assert_eq!(
            summary,
            vec![
                (s(""), s("pods"), vec![s("get"), s("patch")], n),
                (
                    s("coordination.k8s.io"),
                    s("leases"),
                    vec![s("get"), s("update")],
                    Some(MAX_REPLICAS as usize + 1)
                ),
                (
                    s("coordination.k8s.io"),
                    s("leases"),
                    vec![s("create")],
                    None
                ),
                (s(""), s("configmaps"), vec![s("get"), s("patch")], Some(1)),
                (s("apps"), s("statefulsets"), vec![s("get")], Some(1)),
            ]
        );
        assert_eq!(
            rules[3].resource_names.as_deref(),
            Some(&["db-record".to_string()][..])
        );
        let pods = rules[0].resource_names.as_ref().unwrap();
        assert_eq!(pods[0], "db-0");
        assert_eq!(
            pods[MAX_REPLICAS as usize - 1],
            format!("db-{}", MAX_REPLICAS - 1)
        );
        let leases = rules[1].resource_names.as_ref().unwrap();
        assert_eq!(leases[0], "db-0-member");
        assert_eq!(
            leases[MAX_REPLICAS as usize - 1],
            format!("db-{}-member", MAX_REPLICAS - 1)
        );
        assert_eq!(leases[MAX_REPLICAS as usize], "db-leader");
        assert_eq!(
            rules[4].resource_names.as_deref(),
            Some(&["db".to_string()][..])
        );
        for rule in &rules {
            for verb in &rule.verbs {
                assert!(
                    !["list", "watch", "delete", "deletecollection", "*"].contains(&verb.as_str()),
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
