//! Field ownership around the scale test: scaling through the scale subresource moves
//! `spec.replicas` to another managedFields entry, so the entries found before are handed back
//! afterwards and a later `deploy` (server-side apply) finds nothing to change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

/// The managedFields to write back after the scale test: the entries found before it, except
/// that the status subresource's entries are the current ones (the StatefulSet controller keeps
/// writing status, and those fields are its own).
pub fn restored(
    before: &[ManagedFieldsEntry],
    now: &[ManagedFieldsEntry],
) -> Vec<ManagedFieldsEntry> {
    let is_status = |e: &&ManagedFieldsEntry| e.subresource.as_deref() == Some("status");
    before
        .iter()
        .filter(|e| !is_status(e))
        .chain(now.iter().filter(is_status))
        .cloned()
        .collect()
}

/// Whether the entries differ apart from the status subresource's: then the scale test moved
/// an owner and the entries are to be written back.
pub fn changed(before: &[ManagedFieldsEntry], now: &[ManagedFieldsEntry]) -> bool {
    let key = |e: &ManagedFieldsEntry| {
        (
            e.manager.clone(),
            e.operation.clone(),
            e.subresource.clone(),
            e.fields_v1.as_ref().map(|f| f.0.to_string()),
        )
    };
    let mut b: Vec<_> = before
        .iter()
        .filter(|e| e.subresource.as_deref() != Some("status"))
        .map(key)
        .collect();
    let mut n: Vec<_> = now
        .iter()
        .filter(|e| e.subresource.as_deref() != Some("status"))
        .map(key)
        .collect();
    b.sort();
    n.sort();
    b != n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        manager: &str,
        operation: &str,
        subresource: Option<&str>,
        fields: &str,
    ) -> ManagedFieldsEntry {
        serde_json::from_value(serde_json::json!({
            "manager": manager,
            "operation": operation,
            "subresource": subresource,
            "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": serde_json::from_str::<serde_json::Value>(fields).unwrap(),
            "time": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    /// The entries of a StatefulSet pgset applied, before and after a scale through the scale
    /// subresource with pgset's field manager (as the API server records them).
    fn before() -> Vec<ManagedFieldsEntry> {
        vec![
            entry(
                "pgset",
                "Apply",
                None,
                r#"{"f:spec":{"f:replicas":{},"f:serviceName":{}}}"#,
            ),
            entry(
                "kube-controller-manager",
                "Update",
                Some("status"),
                r#"{"f:status":{"f:replicas":{}}}"#,
            ),
        ]
    }

    fn after_scale() -> Vec<ManagedFieldsEntry> {
        vec![
            entry("pgset", "Apply", None, r#"{"f:spec":{"f:serviceName":{}}}"#),
            entry(
                "kube-controller-manager",
                "Update",
                Some("status"),
                r#"{"f:status":{"f:availableReplicas":{},"f:replicas":{}}}"#,
            ),
            entry(
                "pgset",
                "Update",
                Some("scale"),
                r#"{"f:spec":{"f:replicas":{}}}"#,
            ),
        ]
    }

    #[test]
    fn the_owners_before_the_scale_come_back_and_status_stays_current() {
        assert!(changed(&before(), &after_scale()));
        let back = restored(&before(), &after_scale());
        assert_eq!(back, vec![before()[0].clone(), after_scale()[1].clone()]);
        assert!(!changed(&before(), &back));
        // Only the controller's status entry moved: nothing to write back.
        let mut status_only = before();
        status_only[1] = after_scale()[1].clone();
        assert!(!changed(&before(), &status_only));
    }
}
