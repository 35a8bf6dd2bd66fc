//! ConfigMap `<name>-record`: the cluster's record, made empty by `deploy` and filled by the
//! master's agent with the database system identifier it initialised (and the cluster id). It
//! outlives the pods and `down` (like the claims and the Secret), so a master whose own data went
//! missing can tell that the cluster had data, even when no sibling directory is in view
//! (templates mode), and refuse to initialise an empty database over it.

use k8s_openapi::api::core::v1::ConfigMap;
use pgset_spec::ClusterSpec;

use crate::object_meta;

/// The record, as `deploy` applies it: metadata only, so a re-apply never touches what the
/// agent wrote.
pub fn cluster_record(spec: &ClusterSpec) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(spec, spec.record_name()),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::named_spec;

    #[test]
    fn the_record_carries_no_data_of_deploys_own() {
        let r = cluster_record(&named_spec("db", "prod"));
        assert_eq!(r.metadata.name.as_deref(), Some("db-record"));
        assert_eq!(r.metadata.namespace.as_deref(), Some("prod"));
        assert!(r.data.is_none() && r.binary_data.is_none());
    }
}
