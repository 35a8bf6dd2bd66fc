//! A spec that passed validation: the only form that reaches a cluster or a host.
//!
//! A [`ValidSpec`] is made only by validating a [`ClusterSpec`] ([`ClusterSpec::validated`] or
//! [`ValidSpec::new`]); it reads as a `ClusterSpec` through `Deref` and cannot be changed in
//! place. The one change a command makes after loading, the number of members, goes through
//! [`ValidSpec::with_replicas`], which validates again; any other change starts from
//! [`ValidSpec::into_inner`] and must validate again to come back.

use std::ops::Deref;

use crate::{ClusterSpec, Result, validate};

/// A [`ClusterSpec`] known to be valid, read-only.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec(ClusterSpec);

impl ValidSpec {
    /// Validates `spec`; the first problem found is the error, with the field and the fix.
    pub fn new(spec: ClusterSpec) -> Result<ValidSpec> {
        validate::spec(&spec)?;
        Ok(ValidSpec(spec))
    }

    /// The same spec with `replicas` members, validated again (the count's bounds and
    /// everything that depends on it).
    pub fn with_replicas(self, replicas: i32) -> Result<ValidSpec> {
        let mut spec = self.0;
        spec.replicas = replicas;
        ValidSpec::new(spec)
    }

    /// The plain spec, to build a different one from (which must be validated again).
    pub fn into_inner(self) -> ClusterSpec {
        self.0
    }
}

impl Deref for ValidSpec {
    type Target = ClusterSpec;

    fn deref(&self) -> &ClusterSpec {
        &self.0
    }
}

impl AsRef<ClusterSpec> for ValidSpec {
    fn as_ref(&self) -> &ClusterSpec {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, MAX_REPLICAS};

    #[test]
    fn an_invalid_spec_does_not_become_valid_and_says_what_validate_says() {
        let bad = ClusterSpec {
            name: "Bad_Name".into(),
            ..ClusterSpec::default()
        };
        let said = bad.validate().unwrap_err().to_string();
        let err = bad.clone().validated().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Invalid {
                    field: "name (--name)",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), said);
        assert_eq!(ValidSpec::new(bad).unwrap_err().to_string(), said);
    }

    #[test]
    fn a_valid_spec_reads_as_the_spec_it_was_made_from() {
        let spec = ClusterSpec {
            replicas: 3,
            ..ClusterSpec::default()
        };
        let valid = spec.clone().validated().unwrap();
        assert_eq!(*valid, spec);
        assert_eq!(valid.pod_name(2), "pgset-2");
        assert_eq!(valid.into_inner(), spec);
    }

    #[test]
    fn with_replicas_validates_the_new_count_with_validates_message() {
        let valid = ClusterSpec::default().validated().unwrap();
        let five = valid.clone().with_replicas(5).unwrap();
        assert_eq!(five.replicas, 5);
        assert_eq!(valid.replicas, 2, "the original is unchanged");
        for bad in [0, -1, MAX_REPLICAS + 1] {
            let plain = ClusterSpec {
                replicas: bad,
                ..ClusterSpec::default()
            };
            let said = plain.validate().unwrap_err().to_string();
            let err = valid.clone().with_replicas(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        field: "replicas (--replicas)",
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
            assert_eq!(err.to_string(), said, "{bad}");
        }
    }
}
