//! Specs used by this crate's unit tests.

use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};

/// A validated spec with a name and namespace.
pub(crate) fn named_spec(name: &str, namespace: &str) -> ValidSpec {
    ClusterSpec {
        name: name.into(),
        namespace: namespace.into(),
        ..ClusterSpec::default()
    }
    .validated()
    .expect("test spec is valid")
}

/// A validated spec in the given storage mode.
pub(crate) fn spec_in_mode(mode: StorageMode, storage_class: Option<&str>) -> ValidSpec {
    let mut spec = ClusterSpec::default();
    spec.storage.mode = mode;
    spec.storage.storage_class = storage_class.map(str::to_string);
    spec.validated().expect("test spec is valid")
}
