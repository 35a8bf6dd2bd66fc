//! Tests of loading, overriding and validating the spec.

use super::*;

fn invalid_field(spec: &ClusterSpec) -> &'static str {
    match spec.validate() {
        Err(Error::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn defaults_are_the_seeds_names_and_valid() {
    let s = ClusterSpec::default();
    s.validate().unwrap();
    assert_eq!(s.name, "pgset");
    assert_eq!(s.namespace, "default");
    assert_eq!(s.replicas, 2);
    assert_eq!(s.storage.mode, StorageMode::Shared);
    assert_eq!(s.nfs.export, PathBuf::from("/nfsfileshare"));
    assert_eq!(s.postgres.uid, 999);
    assert_eq!(s.master_service_name(), "pgset-master");
    assert_eq!(s.replica_service_name(), "pgset-replica");
    assert_eq!(s.service_account_name(), "pgset-sa");
    assert_eq!(s.shared_claim_name(), "pgset-pvc");
    assert_eq!(s.secret_name(), "pgset-secret");
    assert_eq!(s.shared_pv_names(), ["pv1", "pv2", "pv3"]);
    assert_eq!(s.member_claim_name(2), "data-pgset-2");
    assert_eq!(s.pod_fqdn(1), "pgset-1.pgset.default.svc.cluster.local");
    assert_eq!(s.member_lease_name(2), "pgset-2-member");
    assert_eq!(
        s.member_export_dir(0),
        PathBuf::from("/nfsfileshare/pgset-0")
    );
    assert!(s.agent.image.ends_with(&format!(":{VERSION}")));
}

#[test]
fn parses_a_full_file_and_round_trips() {
    let yaml = r#"
name: db
namespace: lab
replicas: 3
storage:
  mode: templates
  size: 5Gi
  storageClass: fast
nfs:
  export: /srv/nfs/pg
  server: 192.168.56.10
  version: "4.2"
postgres:
  image: postgres:17.6
  uid: 999
  gid: 999
agent:
  image: registry.local:5000/pgset-agent:0.1.0
  pullPolicy: Always
probes:
  readinessPeriodSeconds: 2
"#;
    let s = ClusterSpec::parse(yaml).unwrap();
    s.validate().unwrap();
    assert_eq!(s.name, "db");
    assert_eq!(s.replicas, 3);
    assert_eq!(s.storage.mode, StorageMode::Templates);
    assert_eq!(s.storage.storage_class.as_deref(), Some("fast"));
    assert_eq!(s.nfs.server.as_deref(), Some("192.168.56.10"));
    assert_eq!(s.probes.readiness_period_seconds, 2);
    assert_eq!(
        s.probes.liveness_period_seconds, 10,
        "unset fields keep defaults"
    );
    let again = ClusterSpec::parse(&s.to_yaml()).unwrap();
    assert_eq!(again, s);
}

#[test]
fn empty_or_comment_only_file_gives_defaults() {
    assert_eq!(ClusterSpec::parse("").unwrap(), ClusterSpec::default());
    assert_eq!(
        ClusterSpec::parse("# nothing yet\n").unwrap(),
        ClusterSpec::default()
    );
}

#[test]
fn unknown_field_is_rejected_with_its_name_and_position() {
    let err = ClusterSpec::parse("name: pgset\nreplica: 3\n").unwrap_err();
    assert!(err.contains("replica"), "{err}");
    assert!(err.contains('2'), "line number missing: {err}");
    let err = ClusterSpec::parse("nfs:\n  exprt: /x\n").unwrap_err();
    assert!(err.contains("exprt"), "{err}");
}

#[test]
fn wrong_type_and_bad_syntax_are_rejected() {
    let err = ClusterSpec::parse("replicas: three\n").unwrap_err();
    assert!(
        err.to_lowercase().contains("replicas") || err.contains("three"),
        "{err}"
    );
    assert!(ClusterSpec::parse("name: [unclosed\n").is_err());
    let err = ClusterSpec::parse("storage:\n  mode: nfs\n").unwrap_err();
    assert!(err.contains("nfs"), "{err}");
}

#[test]
fn load_reads_the_file_applies_overrides_then_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgset.yaml");
    std::fs::write(&path, "replicas: 3\nnfs:\n  export: /data/pg\n").unwrap();
    let s = ClusterSpec::load(
        Some(&path),
        &Overrides {
            replicas: Some(4),
            storage: Some(StorageMode::Templates),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.replicas, 4, "flag wins over file");
    assert_eq!(s.storage.mode, StorageMode::Templates);
    assert_eq!(
        s.nfs.export,
        PathBuf::from("/data/pg"),
        "file wins over default"
    );

    let bad = ClusterSpec::load(
        Some(&path),
        &Overrides {
            replicas: Some(0),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(bad.to_string().contains("--replicas"), "{bad}");

    let missing = ClusterSpec::load(Some(&dir.path().join("nope.yaml")), &Overrides::default());
    assert!(matches!(missing, Err(Error::Read { .. })));
}

#[test]
fn invalid_names_are_rejected() {
    for name in [
        "",
        "PgSet",
        "pg_set",
        "-pg",
        "pg-",
        "1pg",
        &"a".repeat(53),
        "pg.set",
    ] {
        let s = ClusterSpec {
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(invalid_field(&s), "name (--name)", "{name:?}");
    }
    let s = ClusterSpec {
        namespace: "Kube System".into(),
        ..Default::default()
    };
    assert_eq!(invalid_field(&s), "namespace (-n/--namespace)");
}

#[test]
fn replica_bounds() {
    for r in [0, -1, MAX_REPLICAS + 1, 1000] {
        let s = ClusterSpec {
            replicas: r,
            ..Default::default()
        };
        assert_eq!(invalid_field(&s), "replicas (--replicas)", "{r}");
    }
    for r in [1, 2, MAX_REPLICAS] {
        ClusterSpec {
            replicas: r,
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}

#[test]
fn export_paths() {
    for bad in [
        "nfsfileshare",
        "./x",
        "/",
        "/nfs share",
        "/nfs\nshare",
        "/nfs\tx",
        "/a/../b",
        "/a/./b",
        "/a//b",
        "/a/",
        "/a#b",
        "/a\"b",
        "/a*",
        "",
    ] {
        assert!(
            validate_export_path(Path::new(bad)).is_err(),
            "{bad:?} should be rejected"
        );
        let s = ClusterSpec {
            nfs: NfsSpec {
                export: bad.into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(invalid_field(&s), "nfs.export (--nfs-export)");
    }
    for good in ["/nfsfileshare", "/srv/nfs/pg-data", "/exports/pg_01"] {
        validate_export_path(Path::new(good)).unwrap();
    }
}

#[test]
fn image_references() {
    for good in [
        "postgres",
        "postgres:18",
        "postgres:17.6-bookworm",
        "docker.io/library/postgres:18",
        "localhost:5000/pgset-agent:0.1.0",
        "registry.example.com/team/pg@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "ghcr.io/org/img:v1.2.3@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert!(is_image_reference(good), "{good}");
    }
    for bad in [
        "",
        "Postgres:18",
        "postgres:",
        "postgres:-x",
        "post gres",
        "postgres:18@sha256:xyz",
        "/postgres",
        "postgres//x",
        "host:port/x",
    ] {
        assert!(!is_image_reference(bad), "{bad}");
    }
    let s = ClusterSpec {
        postgres: PostgresSpec {
            image: "Postgres:18".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(invalid_field(&s), "postgres.image (--postgres-image)");
}

#[test]
fn quantities() {
    assert_eq!(parse_quantity_bytes("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
    assert_eq!(parse_quantity_bytes("100m"), Some(0.1));
    assert_eq!(parse_quantity_bytes("2"), Some(2.0));
    assert_eq!(parse_quantity_bytes("1e3"), Some(1000.0));
    assert_eq!(parse_quantity_bytes("1.5G"), Some(1.5e9));
    for bad in ["", "1 Gi", "Gi", "1GB", "1..2", "ten", "1gi"] {
        assert_eq!(parse_quantity_bytes(bad), None, "{bad:?}");
    }
    let s = ClusterSpec {
        storage: StorageSpec {
            size: "10GB".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(invalid_field(&s), "storage.size");
    let s = ClusterSpec {
        storage: StorageSpec {
            size: "0".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(invalid_field(&s), "storage.size");
}

#[test]
fn storage_class_only_in_templates_mode() {
    let mut s = ClusterSpec::default();
    s.storage.storage_class = Some("fast".into());
    assert_eq!(invalid_field(&s), "storage.storageClass");
    s.storage.mode = StorageMode::Templates;
    s.validate().unwrap();
}

#[test]
fn short_grace_period_and_odd_probes_are_rejected() {
    let mut s = ClusterSpec::default();
    s.probes.termination_grace_period_seconds = 10;
    assert_eq!(invalid_field(&s), "probes.terminationGracePeriodSeconds");
    let mut s = ClusterSpec::default();
    s.probes.readiness_period_seconds = 0;
    assert_eq!(invalid_field(&s), "probes.readinessPeriodSeconds");
}

#[test]
fn a_replica_lag_bound_too_tight_or_out_of_range_is_rejected() {
    let mut s = ClusterSpec::default();
    s.replication.max_replica_lag.bytes = 4096;
    assert_eq!(invalid_field(&s), "replication.maxReplicaLag.bytes");
    let mut s = ClusterSpec::default();
    s.replication.max_replica_lag.seconds = 0;
    assert_eq!(invalid_field(&s), "replication.maxReplicaLag.seconds");
    let s: ClusterSpec =
        serde_saphyr::from_str("replication:\n  maxReplicaLag:\n    seconds: 30\n").unwrap();
    s.validate().unwrap();
    assert_eq!(s.replication.max_replica_lag.seconds, 30);
    assert_eq!(
        s.replication.max_replica_lag.bytes,
        crate::DEFAULT_MAX_REPLICA_LAG_BYTES
    );
}

#[test]
fn failover_is_on_by_default_and_its_lag_bound_is_checked() {
    let s = ClusterSpec::default();
    assert!(s.replication.failover);
    assert_eq!(s.replication.maximum_lag_on_failover, 1024 * 1024);
    let s: ClusterSpec =
        serde_saphyr::from_str("replication:\n  failover: false\n  maximumLagOnFailover: 65536\n")
            .unwrap();
    s.validate().unwrap();
    assert!(!s.replication.failover);
    assert_eq!(s.replication.maximum_lag_on_failover, 65536);
    let mut s = ClusterSpec::default();
    s.replication.maximum_lag_on_failover = 2 << 30;
    assert_eq!(invalid_field(&s), "replication.maximumLagOnFailover");
}

#[test]
fn ordinals() {
    assert_eq!(ordinal_of("pgset-0"), Some(0));
    assert_eq!(ordinal_of("my-db-12"), Some(12));
    for bad in [
        "pgset", "pgset-", "pgset-x", "pgset-01", "pgset--1", "pgset-1a",
    ] {
        assert_eq!(ordinal_of(bad), None, "{bad}");
    }
}

#[test]
fn error_message_names_field_and_fix() {
    let s = ClusterSpec {
        replicas: 0,
        ..Default::default()
    };
    let msg = s.validate().unwrap_err().to_string();
    assert!(msg.contains("replicas (--replicas)"), "{msg}");
    assert!(msg.contains("between 1 and"), "{msg}");
}

#[test]
fn the_example_file_in_the_repository_is_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pgset.example.yaml");
    let s = ClusterSpec::read(&path).unwrap();
    s.validate().unwrap();
    assert_eq!(
        s,
        ClusterSpec::default(),
        "pgset.example.yaml must document the defaults"
    );
    // Every field is written out, not just left to its default.
    let text = std::fs::read_to_string(&path).unwrap();
    for line in ClusterSpec::default().to_yaml().lines() {
        let key = line.split(':').next().unwrap_or_default();
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{key}:"))),
            "pgset.example.yaml does not show `{key}`"
        );
    }
}

#[test]
fn unsupported_postgres_majors_are_refused_before_anything() {
    let with = |image: &str| ClusterSpec {
        postgres: PostgresSpec {
            image: image.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    for ok in [
        "postgres:13",
        "postgres:18",
        "postgres:17.6-bookworm",
        "postgres",
        "postgres:latest",
    ] {
        with(ok).validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["postgres:12", "postgres:9.6", "postgres:19"] {
        let e = with(bad).validate().unwrap_err().to_string();
        assert!(
            e.contains("is not supported") && e.contains("postgres:18"),
            "{bad}: {e}"
        );
    }
}

fn cluster(namespace: &str, name: &str, mode: StorageMode) -> ClusterSpec {
    let mut s = ClusterSpec {
        name: name.into(),
        namespace: namespace.into(),
        replicas: 3,
        ..ClusterSpec::default()
    };
    s.storage.mode = mode;
    s.validate().unwrap();
    s
}

/// Clusters chosen to break naive schemes: the same name in other namespaces, names that
/// concatenate alike with '-' (`a-b`/`c` and `a`/`b-c`), a namespace named like a member
/// directory of the default cluster, and the default's parts swapped.
const CLUSTERS: [(&str, &str); 9] = [
    ("default", "pgset"),
    ("staging", "pgset"),
    ("default", "db"),
    ("a-b", "c"),
    ("a", "b-c"),
    ("pgset-0", "stale"),
    ("pgset", "default"),
    ("default", "pgset-default"),
    ("x", "pgset"),
];

#[test]
fn the_default_cluster_keeps_the_seeds_placement() {
    let s = cluster("default", "pgset", StorageMode::Shared);
    assert!(s.is_default_cluster());
    assert_eq!(s.cluster_export_dir(), PathBuf::from("/nfsfileshare"));
    assert_eq!(s.shared_pv_names(), ["pv1", "pv2", "pv3"]);
    assert_eq!(s.shared_claim_name(), "pgset-pvc");
    assert_eq!(
        s.member_export_dir(1),
        PathBuf::from("/nfsfileshare/pgset-1")
    );
    assert_eq!(s.exports_block_id(), "default/pgset");
    let t = cluster("default", "pgset", StorageMode::Templates);
    assert_eq!(t.member_pv_name(0), "pgset-default-0");
    assert_eq!(t.member_claim_name(0), "data-pgset-0");
    assert_eq!(
        t.member_export_dir(2),
        PathBuf::from("/nfsfileshare/pgset-2")
    );
    let mut five = s.clone();
    five.replicas = 5;
    assert_eq!(five.shared_pv_names().len(), 5);
}

#[test]
fn other_clusters_live_in_their_own_directory_with_their_own_volumes() {
    let s = cluster("staging", "pgset", StorageMode::Shared);
    assert!(!s.is_default_cluster());
    assert_eq!(
        s.cluster_export_dir(),
        PathBuf::from("/nfsfileshare/staging.pgset")
    );
    assert_eq!(s.shared_pv_names(), ["staging.pgset-pvc"]);
    assert_eq!(s.shared_claim_name(), "pgset-pvc");
    assert_eq!(
        s.member_export_dir(0),
        PathBuf::from("/nfsfileshare/staging.pgset/pgset-0")
    );
    assert_eq!(s.exports_block_id(), "staging/pgset");
    let mut t = cluster("default", "db", StorageMode::Templates);
    t.nfs.export = "/srv/nfs".into();
    assert_eq!(t.member_pv_name(1), "default.data-db-1");
    assert_eq!(
        t.member_export_dir(1),
        PathBuf::from("/srv/nfs/default.db/db-1")
    );
}

/// Every volume name of a cluster in a mode, with the claim it is for.
fn volumes(s: &ClusterSpec) -> Vec<(String, (String, String))> {
    match s.storage.mode {
        StorageMode::Shared => s
            .shared_pv_names()
            .into_iter()
            .map(|pv| (pv, (s.namespace.clone(), s.shared_claim_name())))
            .collect(),
        StorageMode::Templates => (0..s.replicas)
            .map(|i| {
                (
                    s.member_pv_name(i),
                    (s.namespace.clone(), s.member_claim_name(i)),
                )
            })
            .collect(),
    }
}

#[test]
fn two_clusters_never_share_a_volume_a_claim_a_directory_or_a_block() {
    let modes = [StorageMode::Shared, StorageMode::Templates];
    let all: Vec<ClusterSpec> = CLUSTERS
        .iter()
        .flat_map(|(ns, name)| modes.map(|m| cluster(ns, name, m)))
        .collect();
    for s in &all {
        for (pv, _) in volumes(s) {
            assert!(
                is_dns1123_subdomain(&pv),
                "{pv:?} is not a valid PersistentVolume name"
            );
        }
        let dir = s.cluster_export_dir();
        assert!(dir.starts_with(&s.nfs.export), "{}", dir.display());
        assert!(validate_export_path(&dir).is_ok(), "{}", dir.display());
    }
    for a in &all {
        for b in &all {
            if (&a.namespace, &a.name) == (&b.namespace, &b.name) {
                continue;
            }
            let who = format!(
                "{}/{} ({}) and {}/{} ({})",
                a.namespace, a.name, a.storage.mode, b.namespace, b.name, b.storage.mode
            );
            for (pv_a, claim_a) in volumes(a) {
                for (pv_b, claim_b) in volumes(b) {
                    assert_ne!(pv_a, pv_b, "{who} share a volume");
                    assert_ne!(claim_a, claim_b, "{who} share a claim");
                }
            }
            assert_ne!(a.exports_block_id(), b.exports_block_id(), "{who}");
            assert_ne!(a.cluster_export_dir(), b.cluster_export_dir(), "{who}");
            for i in 0..a.replicas {
                let da = a.member_export_dir(i);
                // A's exported directory never is, or lies inside, one of B's data directories.
                assert!(
                    !a.cluster_export_dir().starts_with(b.member_export_dir(i)),
                    "{who}: {} inside a data directory of the other",
                    a.cluster_export_dir().display()
                );
                for j in 0..b.replicas {
                    let db = b.member_export_dir(j);
                    assert!(
                        !da.starts_with(&db) && !db.starts_with(&da),
                        "{who} share data: {} and {}",
                        da.display(),
                        db.display()
                    );
                }
            }
        }
    }
}

#[test]
fn names_that_could_meet_a_members_kept_files_are_reserved() {
    for reserved in ["previous", "bootstrap", "lock", "log", "stale-1700000000"] {
        let s = ClusterSpec {
            name: reserved.into(),
            ..Default::default()
        };
        assert_eq!(invalid_field(&s), "name (--name)", "{reserved}");
    }
    let s = ClusterSpec {
        name: "previously".into(),
        ..Default::default()
    };
    s.validate().unwrap();
}

#[test]
fn a_scalar_where_a_mapping_is_expected_names_the_mapping_to_write() {
    for (text, hint) in [
        (
            "storage: shared\n",
            "`storage` expects a mapping: write `storage: {mode: shared}`",
        ),
        (
            "nfs: /srv/nfs\n",
            "`nfs` expects a mapping: write `nfs: {export: /srv/nfs}`",
        ),
        (
            "nfs: 10.0.0.5\n",
            "`nfs` expects a mapping: write `nfs: {server: 10.0.0.5}`",
        ),
        (
            "name: db\npostgres: postgres:16\n",
            "`postgres` expects a mapping: write `postgres: {image: postgres:16}`",
        ),
    ] {
        let err = ClusterSpec::parse(text).unwrap_err();
        assert!(err.contains(hint), "{text:?}: {err}");
        assert!(
            err.contains("line "),
            "{text:?} keeps the parser's position: {err}"
        );
    }
}

#[test]
fn a_mapping_where_a_single_value_is_expected_says_so() {
    for (text, hint) in [
        (
            "replicas: {n: 3}\n",
            "`replicas` expects a single value, not a mapping: write e.g. `replicas: 2`",
        ),
        (
            "name: [a]\n",
            "`name` expects a single value, not a list: write e.g. `name: pgset`",
        ),
        (
            "storage:\n  mode: {templates: true}\n",
            "`storage.mode` expects a single value, not a mapping: write e.g. `mode: shared`",
        ),
        (
            "nfs:\n  export:\n    - /srv/nfs\n",
            "`nfs.export` expects a single value, not a list: write e.g. `export: /nfsfileshare`",
        ),
    ] {
        let err = ClusterSpec::parse(text).unwrap_err();
        assert!(err.contains(hint), "{text:?}: {err}");
    }
    // Errors of another kind get no hint.
    let err = ClusterSpec::parse("replicas: many\n").unwrap_err();
    assert!(!err.contains("expects"), "{err}");
}

#[test]
fn tolerating_the_control_plane_is_off_unless_the_file_or_the_flag_asks() {
    assert!(!ClusterSpec::default().tolerate_control_plane);
    let from_file = ClusterSpec::parse("tolerateControlPlane: true\n").unwrap();
    assert!(from_file.tolerate_control_plane);
    let mut s = ClusterSpec::default();
    s.apply(&Overrides::default());
    assert!(!s.tolerate_control_plane, "no flag leaves the file's value");
    s.apply(&Overrides {
        tolerate_control_plane: Some(true),
        ..Default::default()
    });
    assert!(s.tolerate_control_plane);
}

#[test]
fn the_pod_management_policy_is_ordered_ready_unless_parallel_is_asked_and_nothing_else_is_taken() {
    assert_eq!(
        ClusterSpec::default().pod_management_policy,
        PodManagementPolicy::OrderedReady
    );
    let parallel = ClusterSpec::parse("podManagementPolicy: Parallel\n").unwrap();
    assert_eq!(
        parallel.pod_management_policy,
        PodManagementPolicy::Parallel
    );
    assert!(parallel.validated().is_ok());
    for bad in ["parallel", "Random", "OrderedReady, Parallel"] {
        let e = ClusterSpec::parse(&format!("podManagementPolicy: {bad}\n")).unwrap_err();
        assert!(
            e.contains("OrderedReady") && e.contains("Parallel"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn synchronous_replication_is_off_by_default_and_cannot_ask_for_more_replicas_than_exist() {
    assert_eq!(ClusterSpec::default().replication.synchronous, None);
    let s: ClusterSpec =
        serde_saphyr::from_str("replicas: 3\nreplication:\n  synchronous: {}\n").unwrap();
    s.validate().unwrap();
    assert_eq!(
        s.replication.synchronous,
        Some(crate::Synchronous {
            number: 1,
            durability: crate::Durability::Required
        })
    );
    let s: ClusterSpec = serde_saphyr::from_str(
        "replicas: 2\nreplication:\n  synchronous:\n    number: 2\n    durability: required\n",
    )
    .unwrap();
    assert_eq!(invalid_field(&s), "replication.synchronous.number");
    // Preferred never waits for a replica that is not there: any number is accepted.
    let s: ClusterSpec = serde_saphyr::from_str(
        "replicas: 2\nreplication:\n  synchronous:\n    number: 2\n    durability: preferred\n",
    )
    .unwrap();
    s.validate().unwrap();
    let s: ClusterSpec =
        serde_saphyr::from_str("replication:\n  synchronous:\n    number: 0\n").unwrap();
    assert_eq!(invalid_field(&s), "replication.synchronous.number");
    assert!(
        serde_saphyr::from_str::<ClusterSpec>(
            "replication:\n  synchronous:\n    durability: maybe\n"
        )
        .is_err()
    );
    for (text, sync) in [
        ("required:1", Some((1, crate::Durability::Required))),
        ("preferred:3", Some((3, crate::Durability::Preferred))),
        ("required:0", None),
        ("required", None),
        ("sometimes:1", None),
    ] {
        assert_eq!(
            crate::Synchronous::from_env(text).map(|s| (s.number, s.durability)),
            sync,
            "{text}"
        );
    }
}

#[test]
fn tls_is_auto_by_default_with_the_secrets_pgset_names() {
    let s = ClusterSpec::default();
    assert_eq!(s.tls.mode, TlsMode::Auto);
    assert!(s.tls.enabled());
    assert_eq!(s.ca_secret_name(), "pgset-ca");
    assert_eq!(s.ca_configmap_name(), "pgset-ca-cert");
    assert_eq!(s.tls_server_secret_name(), "pgset-tls-server");
    assert_eq!(s.tls_replication_secret_name(), "pgset-tls-replication");
    let off = ClusterSpec::parse("tls:\n  mode: off\n").unwrap();
    off.validate().unwrap();
    assert!(!off.tls.enabled());
}

#[test]
fn provided_tls_names_the_users_secrets_and_needs_both() {
    let yaml =
        "tls:\n  mode: provided\n  serverSecret: db-server-tls\n  replicationSecret: db-repl-tls\n";
    let s = ClusterSpec::parse(yaml).unwrap();
    s.validate().unwrap();
    assert_eq!(s.tls_server_secret_name(), "db-server-tls");
    assert_eq!(s.tls_replication_secret_name(), "db-repl-tls");
    assert_eq!(ClusterSpec::parse(&s.to_yaml()).unwrap(), s);

    let missing = ClusterSpec::parse("tls:\n  mode: provided\n  serverSecret: a\n").unwrap();
    assert_eq!(invalid_field(&missing), "tls.replicationSecret");
    let msg = missing.validate().unwrap_err().to_string();
    assert!(msg.contains("tls.crt, tls.key and ca.crt"), "{msg}");

    let same =
        ClusterSpec::parse("tls:\n  mode: provided\n  serverSecret: a\n  replicationSecret: a\n")
            .unwrap();
    assert_eq!(invalid_field(&same), "tls.replicationSecret");

    let bad = ClusterSpec::parse(
        "tls:\n  mode: provided\n  serverSecret: Not_A_Name\n  replicationSecret: b\n",
    )
    .unwrap();
    assert_eq!(invalid_field(&bad), "tls.serverSecret");
}

#[test]
fn a_tls_secret_named_outside_provided_mode_is_refused_with_the_fix() {
    for mode in ["auto", "off"] {
        let s = ClusterSpec::parse(&format!("tls:\n  mode: {mode}\n  serverSecret: a\n")).unwrap();
        assert_eq!(invalid_field(&s), "tls.serverSecret");
        let msg = s.validate().unwrap_err().to_string();
        assert!(msg.contains("set tls.mode: provided"), "{msg}");
    }
    let unknown = ClusterSpec::parse("tls:\n  mode: sometimes\n").unwrap_err();
    assert!(
        unknown.contains("sometimes") || unknown.contains("mode"),
        "{unknown}"
    );
}

#[test]
fn tls_written_as_a_single_value_is_told_to_name_the_mode() {
    let e = ClusterSpec::parse("tls: off\n").unwrap_err();
    assert!(
        e.contains("`tls` expects a mapping: write `tls: {mode:"),
        "{e}"
    );
}

#[test]
fn access_names_networks_in_cidr_form_and_needs_tls() {
    let s = ClusterSpec::default();
    assert!(s.access.superuser_from.is_empty() && s.access.replication_from.is_empty());
    let yaml =
        "access:\n  superuserFrom: [10.0.0.0/8]\n  replicationFrom: [10.244.0.0/16, 'fd00::/8']\n";
    let s = ClusterSpec::parse(yaml).unwrap();
    s.validate().unwrap();
    assert_eq!(s.access.superuser_from[0].to_string(), "10.0.0.0/8");
    assert_eq!(s.access.replication_from.len(), 2);
    assert_eq!(ClusterSpec::parse(&s.to_yaml()).unwrap(), s);
    // Nothing of it is written when unset.
    assert!(!ClusterSpec::default().to_yaml().contains("superuserFrom"));

    let e = ClusterSpec::parse("access:\n  replicationFrom: [10.244.1.0/16]\n").unwrap_err();
    assert!(e.contains("write `10.244.0.0/16`"), "{e}");
    let e = ClusterSpec::parse("access:\n  superuserFrom: [everywhere]\n").unwrap_err();
    assert!(e.contains("no prefix length"), "{e}");

    let off =
        ClusterSpec::parse("tls: {mode: off}\naccess:\n  superuserFrom: [10.0.0.0/8]\n").unwrap();
    assert_eq!(invalid_field(&off), "access.superuserFrom");
    let msg = off.validate().unwrap_err().to_string();
    assert!(msg.contains("tls.mode auto"), "{msg}");
}
