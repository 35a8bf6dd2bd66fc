//! The identity every member's data directory carries (`pgset-identity.json`): namespace,
//! cluster, cluster id, member and PostgreSQL's system identifier; and the pure judgement of a
//! directory found at start against the member that wants to use it.

use std::fs;
use std::path::{Path, PathBuf};

use pgset_spec::contract::IDENTITY_FILE;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err};

/// Version of the identity file's format.
pub const FORMAT: u32 = 1;

/// Who a member is: what the agent compares a data directory's identity with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// Namespace (`local` in local mode).
    pub namespace: String,
    /// Cluster (StatefulSet) name.
    pub cluster: String,
    /// The cluster id from the Secret.
    pub cluster_id: String,
    /// The member (pod) name.
    pub member: String,
}

/// The identity file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    /// [`FORMAT`].
    pub format: u32,
    /// Namespace of the cluster.
    pub namespace: String,
    /// Cluster name.
    pub cluster: String,
    /// The cluster id (from the Secret).
    pub cluster_id: String,
    /// The member whose data this is.
    pub member: String,
    /// PostgreSQL's database system identifier (decimal, as `pg_controldata` prints it).
    pub system_identifier: String,
    /// How the data was made: `initdb`, `base backup` or `adopted`.
    pub origin: String,
    /// When the identity was written (UTC).
    pub created: String,
}

impl Identity {
    /// A new identity of `me` for data with `system_identifier`.
    pub fn new(me: &MemberRef, system_identifier: u64, origin: &str) -> Identity {
        Identity {
            format: FORMAT,
            namespace: me.namespace.clone(),
            cluster: me.cluster.clone(),
            cluster_id: me.cluster_id.clone(),
            member: me.member.clone(),
            system_identifier: system_identifier.to_string(),
            origin: origin.to_string(),
            created: crate::log::timestamp(),
        }
    }

    /// `namespace/cluster (id …)`, for messages.
    pub fn owner(&self) -> String {
        format!(
            "{}/{} (cluster id {})",
            self.namespace, self.cluster, self.cluster_id
        )
    }
}

/// The identity file of a data directory.
pub fn path(pgdata: &Path) -> PathBuf {
    pgdata.join(IDENTITY_FILE)
}

/// Reads a data directory's identity: `None` when it has none.
pub fn read(pgdata: &Path) -> Result<Option<Identity>> {
    let file = path(pgdata);
    let text = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("read {}", file.display()))(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Refused {
            path: pgdata.to_path_buf(),
            problem: format!(
                "its identity file {IDENTITY_FILE} is not readable as pgset's ({e}); pgset does not \
                 start on a directory it cannot prove is this member's: restore the file or move \
                 the directory away"
            ),
        })
}

/// Writes the identity into `pgdata` (atomically, mode 0600).
pub fn write(pgdata: &Path, identity: &Identity) -> Result<()> {
    let text = serde_json::to_string_pretty(identity)
        .map_err(|e| Error::Failed(format!("encode the identity: {e}")))?
        + "\n";
    crate::datadir::write_atomic(&path(pgdata), text.as_bytes(), 0o600).map(drop)
}

/// PostgreSQL's database system identifier from `global/pg_control` (its first field, in the
/// machine's byte order), read without running any tool.
pub fn control_system_identifier(pgdata: &Path) -> Result<u64> {
    let file = pgdata.join("global").join("pg_control");
    let bytes = fs::read(&file).map_err(io_err(format!("read {}", file.display())))?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Refused {
            path: pgdata.to_path_buf(),
            problem: format!("{} is too short to be a pg_control file", file.display()),
        })?;
    Ok(u64::from_ne_bytes(first))
}

/// What a data directory's identity says about the member that wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This member's data, proven.
    Ours,
    /// No identity file: made before identities existed, or not by pgset.
    Unmarked,
    /// Not this member's: why (its `Display` names whose it is and the fix).
    Refused(Refusal),
}

/// Why a data directory is not this member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The identity has a format this agent does not know.
    Format {
        /// The identity's format.
        found: u32,
    },
    /// Another cluster's data (namespace, name or cluster id differ).
    Foreign {
        /// [`Identity::owner`] of the data.
        owner: String,
        /// The member's `namespace/cluster (cluster id …)`.
        expected: String,
        /// Same namespace and name, another cluster id: the cluster was made anew.
        same_name: bool,
    },
    /// The data of another member of this cluster.
    OtherMember {
        /// The member the identity names.
        member: String,
        /// The member that wants the data.
        wanted: String,
    },
    /// Another database system than the one expected (the data was replaced).
    OtherSystem {
        /// The system identifier the identity records.
        recorded: String,
        /// The system identifier it was judged against.
        expected: u64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Format { found } => write!(
                f,
                "its identity has format {found} and this agent knows format {FORMAT}; run the \
                 agent version that wrote it"
            ),
            Refusal::Foreign {
                owner,
                expected,
                same_name,
            } => {
                let fix = if *same_name {
                    "the cluster was made anew (its Secret, and with it the cluster id, is new) \
                     while the old data stayed: restore the old Secret, or move the old directory \
                     away to start empty"
                } else {
                    "this cluster's volume points at another cluster's directory: give each \
                     cluster its own export directory (see \"Several clusters on one NFS host\" \
                     in docs/guide.md) or its own claim"
                };
                write!(
                    f,
                    "it belongs to cluster {owner}, not to {expected}; pgset never starts on \
                     another cluster's data and leaves it untouched; {fix}"
                )
            }
            Refusal::OtherMember { member, wanted } => write!(
                f,
                "it is the data of member {member} of this cluster, not of {wanted}; move it back \
                 to its own directory"
            ),
            Refusal::OtherSystem { recorded, expected } => write!(
                f,
                "its pg_control says database system {expected} but its identity says \
                 {recorded}: the directory's content was replaced; move it away and restore this \
                 member's data"
            ),
        }
    }
}

/// Judges a data directory's identity against the member that wants it and, when known, the
/// database system identifier it must hold (the agent: its `pg_control`'s; local status: the
/// master's). The one judgement of an identity: the agent acts on it, status reports it.
pub fn judge(found: Option<&Identity>, me: &MemberRef, system_identifier: Option<u64>) -> Verdict {
    let Some(id) = found else {
        return Verdict::Unmarked;
    };
    if id.format != FORMAT {
        return Verdict::Refused(Refusal::Format { found: id.format });
    }
    if id.namespace != me.namespace || id.cluster != me.cluster || id.cluster_id != me.cluster_id {
        return Verdict::Refused(Refusal::Foreign {
            owner: id.owner(),
            expected: format!(
                "{}/{} (cluster id {})",
                me.namespace, me.cluster, me.cluster_id
            ),
            same_name: id.namespace == me.namespace && id.cluster == me.cluster,
        });
    }
    if id.member != me.member {
        return Verdict::Refused(Refusal::OtherMember {
            member: id.member.clone(),
            wanted: me.member.clone(),
        });
    }
    if let Some(sysid) = system_identifier
        && id.system_identifier != sysid.to_string()
    {
        return Verdict::Refused(Refusal::OtherSystem {
            recorded: id.system_identifier.clone(),
            expected: sysid,
        });
    }
    Verdict::Ours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> MemberRef {
        MemberRef {
            namespace: "default".into(),
            cluster: "pgset".into(),
            cluster_id: "c1".into(),
            member: "pgset-1".into(),
        }
    }

    #[test]
    fn decisions() {
        let id = Identity::new(&me(), 42, "base backup");
        assert_eq!(judge(Some(&id), &me(), Some(42)), Verdict::Ours);
        assert_eq!(judge(None, &me(), Some(42)), Verdict::Unmarked);

        let mut other_ns = me();
        other_ns.namespace = "staging".into();
        let Verdict::Refused(why) = judge(Some(&id), &other_ns, Some(42)) else {
            panic!("another namespace's data must be refused");
        };
        assert!(
            matches!(
                why,
                Refusal::Foreign {
                    same_name: false,
                    ..
                }
            ),
            "{why:?}"
        );
        let why = why.to_string();
        assert!(
            why.contains("belongs to cluster default/pgset (cluster id c1)")
                && why.contains("own export directory"),
            "{why}"
        );

        let mut new_secret = me();
        new_secret.cluster_id = "c2".into();
        let Verdict::Refused(why) = judge(Some(&id), &new_secret, Some(42)) else {
            panic!("another cluster id must be refused");
        };
        assert!(
            matches!(
                why,
                Refusal::Foreign {
                    same_name: true,
                    ..
                }
            ),
            "{why:?}"
        );
        let why = why.to_string();
        assert!(why.contains("restore the old Secret"), "{why}");

        let mut sibling = me();
        sibling.member = "pgset-2".into();
        let Verdict::Refused(why) = judge(Some(&id), &sibling, Some(42)) else {
            panic!("a sibling's data must be refused");
        };
        assert!(matches!(why, Refusal::OtherMember { .. }), "{why:?}");
        let why = why.to_string();
        assert!(why.contains("member pgset-1"), "{why}");

        let Verdict::Refused(why) = judge(Some(&id), &me(), Some(43)) else {
            panic!("replaced content must be refused");
        };
        assert!(
            why.to_string().contains("replaced") && why.to_string().contains("says 42"),
            "{why}"
        );
        // An unknown system identifier is not compared; everything else still is.
        assert_eq!(judge(Some(&id), &me(), None), Verdict::Ours);
        assert!(matches!(
            judge(Some(&id), &sibling, None),
            Verdict::Refused(Refusal::OtherMember { .. })
        ));

        let mut future = id.clone();
        future.format = 2;
        assert_eq!(
            judge(Some(&future), &me(), Some(42)),
            Verdict::Refused(Refusal::Format { found: 2 })
        );
    }

    #[test]
    fn round_trip_and_pg_control() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read(t.path()).unwrap(), None);
        let id = Identity::new(&me(), 7_000_000_000_000_000_001, "initdb");
        write(t.path(), &id).unwrap();
        assert_eq!(read(t.path()).unwrap(), Some(id));
        std::fs::write(path(t.path()), "{ not json").unwrap();
        assert!(matches!(read(t.path()), Err(Error::Refused { .. })));

        std::fs::create_dir(t.path().join("global")).unwrap();
        let mut control = 7_000_000_000_000_000_001u64.to_ne_bytes().to_vec();
        control.extend_from_slice(&[0; 100]);
        std::fs::write(t.path().join("global/pg_control"), control).unwrap();
        assert_eq!(
            control_system_identifier(t.path()).unwrap(),
            7_000_000_000_000_000_001
        );
    }
}
