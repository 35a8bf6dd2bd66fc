//! Whether a pod or a node is Ready (their `Ready` condition), and what keeps the members off
//! a node: one definition each for rollout, teardown, verify, preflight and the mount probe.

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition};
use pgset_spec::contract::CONTROL_PLANE_TAINT;

/// The pod's `Ready` condition, when reported.
pub fn pod_ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// True when the pod's `Ready` condition is True.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod_ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// The node's `Ready` condition, when reported.
pub fn node_ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// True when the node's `Ready` condition is True.
pub fn node_is_ready(node: &Node) -> bool {
    node_ready_condition(node).is_some_and(|c| c.status == "True")
}

/// kubeadm's control-plane taint as [`member_taints`] spells it.
pub fn control_plane_no_schedule() -> String {
    format!("{CONTROL_PLANE_TAINT}:NoSchedule")
}

/// Taints the node controller sets while a node is not Ready; Ready already says so.
const CONDITION_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// The node's taints that keep pods without tolerations off (`NoSchedule`, `NoExecute`), as
/// `key[=value]:Effect`; the not-ready and unreachable taints are left out (Ready says that).
pub fn member_taints(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .filter(|t| !CONDITION_TAINTS.contains(&t.key.as_str()))
        .map(|t| match t.value.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{}={v}:{}", t.key, t.effect),
            None => format!("{}:{}", t.key, t.effect),
        })
        .collect()
}

/// What keeps the members off a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeptOff {
    /// The node is not Ready.
    NotReady,
    /// The node is cordoned (`spec.unschedulable`).
    Cordoned,
    /// Taints the members do not tolerate, as [`member_taints`] spells them.
    Tainted(Vec<String>),
}

/// The rule for where the members can run, from a node's facts: Ready, not cordoned, and no
/// taint among `taints` (as [`member_taints`] gives them) that they do not tolerate; with
/// `tolerate_control_plane` (the spec's `tolerateControlPlane`) kubeadm's control-plane
/// taint does not count. Empty when the members can run there. Pure.
pub fn keeps_members_off(
    ready: bool,
    unschedulable: bool,
    taints: &[String],
    tolerate_control_plane: bool,
) -> Vec<KeptOff> {
    let mut why = Vec::new();
    if !ready {
        why.push(KeptOff::NotReady);
    }
    if unschedulable {
        why.push(KeptOff::Cordoned);
    }
    let control_plane = control_plane_no_schedule();
    let taints: Vec<String> = taints
        .iter()
        .filter(|t| !(tolerate_control_plane && **t == control_plane))
        .cloned()
        .collect();
    if !taints.is_empty() {
        why.push(KeptOff::Tainted(taints));
    }
    why
}

/// [`keeps_members_off`] for a node object.
pub fn node_keeps_members_off(node: &Node, tolerate_control_plane: bool) -> Vec<KeptOff> {
    keeps_members_off(
        node_is_ready(node),
        node.spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        &member_taints(node),
        tolerate_control_plane,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(ready: bool, unschedulable: bool, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"unschedulable": unschedulable, "taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_ready_uncordoned_untainted_node_takes_members() {
        assert_eq!(
            node_keeps_members_off(&node(true, false, json!([])), false),
            []
        );
        let soft = json!([{"key": "example.com/soft", "effect": "PreferNoSchedule"}]);
        assert_eq!(node_keeps_members_off(&node(true, false, soft), false), []);
    }

    #[test]
    fn not_ready_cordoned_and_taints_each_keep_members_off() {
        let taints = json!([
            {"key": "dedicated", "value": "db", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
        ]);
        assert_eq!(
            node_keeps_members_off(&node(false, true, taints), false),
            [
                KeptOff::NotReady,
                KeptOff::Cordoned,
                KeptOff::Tainted(vec!["dedicated=db:NoExecute".into()]),
            ],
            "the not-ready taint is said by NotReady already"
        );
    }

    #[test]
    fn the_control_plane_taint_counts_unless_tolerated() {
        let cp = json!([{"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}]);
        let n = node(true, false, cp);
        assert_eq!(
            node_keeps_members_off(&n, false),
            [KeptOff::Tainted(vec![control_plane_no_schedule()])]
        );
        assert_eq!(node_keeps_members_off(&n, true), []);
        // Tolerating NoSchedule does not tolerate a NoExecute taint of the same key.
        let cp_execute = json!([{"key": CONTROL_PLANE_TAINT, "effect": "NoExecute"}]);
        assert_eq!(
            node_keeps_members_off(&node(true, false, cp_execute), true).len(),
            1
        );
    }

    #[test]
    fn readiness_is_the_ready_condition() {
        let pod: Pod = serde_json::from_value(json!({"status": {"conditions": [
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "False"}
        ]}}))
        .unwrap();
        assert!(!pod_is_ready(&pod));
        assert!(!pod_is_ready(&Pod::default()));
        assert!(node_is_ready(&node(true, false, json!([]))));
        assert!(!node_is_ready(&Node::default()));
    }
}
