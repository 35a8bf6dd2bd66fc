//! Specs used by this crate's unit tests.

use pgset_spec::{ClusterSpec, StorageMode};

/// A validated spec with a name and namespace.
pub(crate) fn named_spec(name: &str, namespace: &str) -> ClusterSpec {
    let spec = ClusterSpec {
        name: name.into(),
        namespace: namespace.into(),
        ..ClusterSpec::default()
    };
    spec.validate().expect("test spec is valid");
    spec
}

/// A validated spec in the given storage mode.
pub(crate) fn spec_in_mode(mode: StorageMode, storage_class: Option<&str>) -> ClusterSpec {
    let mut spec = ClusterSpec::default();
    spec.storage.mode = mode;
    spec.storage.storage_class = storage_class.map(str::to_string);
    spec.validate().expect("test spec is valid");
    spec
}
