//! Secret `<name>-secret`: the superuser and replication passwords and the cluster id, mounted
//! into the pods as files. The builder takes the values; generating them is the edge's job.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use pgset_spec::contract::secret::{
    CLUSTER_ID_KEY, REPLICATION_PASSWORD_KEY, SUPERUSER_PASSWORD_KEY,
};
use pgset_spec::{ClusterSpec, random};

use crate::{Result, object_meta};

/// The two passwords of a cluster. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Passwords {
    /// Password of the `postgres` superuser.
    pub superuser: String,
    /// Password of the replication role.
    pub replication: String,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passwords { superuser: <redacted>, replication: <redacted> }")
    }
}

impl Passwords {
    /// Two fresh passwords of [`random::PASSWORD_LEN`] characters from the operating system's random
    /// source (about 190 bits each).
    pub fn generate() -> Result<Passwords> {
        Ok(Passwords {
            superuser: random::password()?,
            replication: random::password()?,
        })
    }
}

/// A new cluster id: 128 random bits as 32 hex digits. It lives as long as the Secret and is
/// written into every member's data directory identity.
pub fn new_cluster_id() -> Result<String> {
    Ok(random::cluster_id()?)
}

/// Whether `secret` carries a cluster id.
pub fn has_cluster_id(secret: &Secret) -> bool {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(CLUSTER_ID_KEY))
        .is_some_and(|v| !v.0.is_empty())
        || secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(CLUSTER_ID_KEY))
            .is_some_and(|v| !v.is_empty())
}

/// Secret `<name>-secret` holding `passwords` and `cluster_id` under the contract's keys.
pub fn secret(spec: &ClusterSpec, passwords: &Passwords, cluster_id: &str) -> Secret {
    let cluster_id = cluster_id.to_string();
    let data: BTreeMap<String, ByteString> = [
        (SUPERUSER_PASSWORD_KEY, &passwords.superuser),
        (REPLICATION_PASSWORD_KEY, &passwords.replication),
        (CLUSTER_ID_KEY, &cluster_id),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: object_meta(spec, spec.secret_name()),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The keys pgset needs that `secret` lacks (absent or empty).
pub fn missing_keys(secret: &Secret) -> Vec<&'static str> {
    [SUPERUSER_PASSWORD_KEY, REPLICATION_PASSWORD_KEY]
        .into_iter()
        .filter(|key| {
            let in_data = secret
                .data
                .as_ref()
                .and_then(|d| d.get(*key))
                .is_some_and(|v| !v.0.is_empty());
            let in_string_data = secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(*key))
                .is_some_and(|v| !v.is_empty());
            !(in_data || in_string_data)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::named_spec;

    #[test]
    fn generated_passwords_are_long_alphanumeric_and_distinct() {
        let a = Passwords::generate().unwrap();
        let b = Passwords::generate().unwrap();
        for p in [&a.superuser, &a.replication, &b.superuser, &b.replication] {
            assert_eq!(p.len(), random::PASSWORD_LEN);
            assert!(p.bytes().all(|c| c.is_ascii_alphanumeric()), "{p}");
        }
        assert_ne!(a.superuser, a.replication);
        assert_ne!(a.superuser, b.superuser);
    }

    #[test]
    fn debug_never_shows_passwords() {
        let p = Passwords {
            superuser: "s3cretSuper".into(),
            replication: "s3cretRepl".into(),
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn secret_holds_both_keys_with_the_given_passwords() {
        let spec = named_spec("db", "prod");
        let p = Passwords {
            superuser: "aaa".into(),
            replication: "bbb".into(),
        };
        let s = secret(&spec, &p, "c0ffee");
        assert!(has_cluster_id(&s));
        assert_eq!(s.data.as_ref().unwrap()[CLUSTER_ID_KEY].0, b"c0ffee");
        let id = new_cluster_id().unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_cluster_id().unwrap());
        assert_eq!(s.metadata.name.as_deref(), Some("db-secret"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let data = s.data.as_ref().unwrap();
        assert_eq!(data[SUPERUSER_PASSWORD_KEY].0, b"aaa");
        assert_eq!(data[REPLICATION_PASSWORD_KEY].0, b"bbb");
        assert!(missing_keys(&s).is_empty());
    }

    #[test]
    fn missing_keys_reports_absent_and_empty_keys() {
        let spec = named_spec("db", "prod");
        let mut s = secret(
            &spec,
            &Passwords {
                superuser: "x".into(),
                replication: String::new(),
            },
            "",
        );
        assert!(!has_cluster_id(&s));
        assert_eq!(missing_keys(&s), vec![REPLICATION_PASSWORD_KEY]);
        s.data = None;
        assert_eq!(
            missing_keys(&s),
            vec![SUPERUSER_PASSWORD_KEY, REPLICATION_PASSWORD_KEY]
        );
    }
}
