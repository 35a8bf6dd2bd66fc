//! Tests of the StatefulSet builder: the fields the members depend on.

use super::*;
use crate::testutil::{named_spec, spec_in_mode};
use pgset_spec::StorageMode;
use pgset_spec::contract::env;

fn pod_spec(sts: &StatefulSet) -> &PodSpec {
    sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn mounts(c: &Container) -> Vec<(String, String, bool)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.name.clone(),
                m.mount_path.clone(),
                m.read_only == Some(true),
            )
        })
        .collect()
}

#[test]
fn names_selector_and_ordering() {
    let spec = named_spec("db", "prod");
    let sts = statefulset(&spec);
    assert_eq!(sts.metadata.name.as_deref(), Some("db"));
    assert_eq!(sts.metadata.namespace.as_deref(), Some("prod"));
    let s = sts.spec.as_ref().unwrap();
    assert_eq!(s.replicas, Some(2));
    assert_eq!(s.service_name.as_deref(), Some("db"));
    assert_eq!(s.pod_management_policy.as_deref(), Some("OrderedReady"));
    let parallel = pgset_spec::ClusterSpec {
        pod_management_policy: pgset_spec::PodManagementPolicy::Parallel,
        ..ClusterSpec::default()
    }
    .validated()
    .unwrap();
    assert_eq!(
        statefulset(&parallel)
            .spec
            .unwrap()
            .pod_management_policy
            .as_deref(),
        Some("Parallel"),
        "the spec's policy is rendered"
    );
    let selector = s.selector.match_labels.as_ref().unwrap();
    let labels = s
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(selector.len(), 2);
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "template lacks selector label {k}");
    }
    assert_eq!(
        labels.get("app.kubernetes.io/instance").map(String::as_str),
        Some("db")
    );
    assert!(
        !selector.contains_key("role"),
        "the role label changes; it must not select"
    );
    let retention = s.persistent_volume_claim_retention_policy.as_ref().unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    let pod = pod_spec(&sts);
    assert_eq!(pod.service_account_name.as_deref(), Some("db-sa"));
    assert_eq!(pod.enable_service_links, Some(false));
    assert!(pod.termination_grace_period_seconds.unwrap() >= 60);
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(spec.probes.termination_grace_period_seconds)
    );
}

#[test]
fn security_context_is_non_root_without_privileges() {
    let spec = named_spec("db", "prod");
    let sts = statefulset(&spec);
    let pod = pod_spec(&sts);
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_user, Some(999));
    assert_eq!(psc.run_as_group, Some(999));
    assert_eq!(psc.fs_group, Some(999));
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    for name in [POSTGRES_CONTAINER, INSTALL_AGENT_CONTAINER] {
        let sc = container(pod, name).security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(999), "{name}");
        assert_eq!(sc.run_as_non_root, Some(true), "{name}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(sc.privileged, Some(false), "{name}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{name}"
        );
        assert_eq!(sc.capabilities.as_ref().unwrap().add, None, "{name}");
    }
}

#[test]
fn uid_and_gid_follow_the_spec() {
    let mut spec = named_spec("db", "prod").into_inner();
    spec.postgres.uid = 70;
    spec.postgres.gid = 71;
    let sts = statefulset(&spec);
    let pod = pod_spec(&sts);
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(
        (psc.run_as_user, psc.run_as_group, psc.fs_group),
        (Some(70), Some(71), Some(71))
    );
    let sc = container(pod, POSTGRES_CONTAINER)
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(70), Some(71)));
}

#[test]
fn agent_is_installed_by_an_init_container_and_run_by_postgres() {
    let spec = named_spec("db", "prod");
    let sts = statefulset(&spec);
    let pod = pod_spec(&sts);
    let inits = pod.init_containers.as_ref().unwrap();
    assert_eq!(inits.len(), 1);
    let init = &inits[0];
    assert_eq!(init.name, "install-agent");
    assert_eq!(init.image.as_deref(), Some(spec.agent.image.as_str()));
    assert_eq!(
        init.command.as_deref().unwrap(),
        ["/pgset-agent", "install", "/pgset/bin/pgset-agent"]
    );
    assert_eq!(
        mounts(init),
        vec![("agent".into(), "/pgset/bin".into(), false)]
    );
    let pg = container(pod, POSTGRES_CONTAINER);
    assert_eq!(pg.image.as_deref(), Some("postgres:18"));
    assert_eq!(
        pg.command.as_deref().unwrap(),
        ["/pgset/bin/pgset-agent", "run"]
    );
    assert!(mounts(pg).contains(&("agent".into(), "/pgset/bin".into(), true)));
    let agent_volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "agent")
        .unwrap();
    assert!(agent_volume.empty_dir.is_some());
}

#[test]
fn with_image_delivery_the_agent_image_is_the_volume_and_no_init_container_copies() {
    let mut spec = named_spec("db", "prod").into_inner();
    spec.agent.delivery = AgentDelivery::Image;
    spec.agent.pull_policy = "Never".into();
    let sts = statefulset(&spec);
    let pod = pod_spec(&sts);
    assert_eq!(pod.init_containers, None);
    let agent_volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "agent")
        .unwrap();
    assert_eq!(agent_volume.empty_dir, None);
    let image = agent_volume.image.as_ref().unwrap();
    assert_eq!(image.reference.as_deref(), Some(spec.agent.image.as_str()));
    assert_eq!(image.pull_policy.as_deref(), Some("Never"));
    // The image's root holds the binary under the name the command runs.
    assert_eq!(
        format!("{}{}", contract::AGENT_DIR, contract::AGENT_IMAGE_BINARY),
        agent_path()
    );
    let pg = container(pod, POSTGRES_CONTAINER);
    assert_eq!(
        pg.command.as_deref().unwrap(),
        ["/pgset/bin/pgset-agent", "run"]
    );
    assert!(mounts(pg).contains(&("agent".into(), "/pgset/bin".into(), true)));
}

#[test]
fn env_contract_is_complete_and_holds_no_password() {
    let spec = named_spec("db", "prod");
    let sts = statefulset(&spec);
    let pg = container(pod_spec(&sts), POSTGRES_CONTAINER);
    let expect = [
        (env::MODE, "kubernetes"),
        (env::CLUSTER, "db"),
        (env::DATA_ROOT, "/pgdata"),
        (env::MASTER_HOST, "db-master"),
        (env::MASTER_PORT, "5432"),
        (env::PORT, "5432"),
        (env::LISTEN_ADDRESSES, "*"),
        (env::SOCKET_DIR, "/var/run/postgresql"),
        (env::SECRET_DIR, "/etc/pgset/secret"),
        (env::HEALTH_ADDR, "0.0.0.0:8008"),
    ];
    for (name, value) in expect {
        assert_eq!(env_value(pg, name).as_deref(), Some(value), "{name}");
    }
    let vars = pg.env.as_ref().unwrap();
    for (name, path) in [
        (env::POD_NAME, "metadata.name"),
        (env::NAMESPACE, "metadata.namespace"),
        (env::POD_UID, "metadata.uid"),
    ] {
        let var = vars.iter().find(|e| e.name == name).unwrap();
        let field = var.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, path, "{name}");
    }
    for var in vars {
        assert!(
            !var.name.contains("PASSWORD"),
            "password in env: {}",
            var.name
        );
        if let Some(from) = &var.value_from {
            assert!(from.secret_key_ref.is_none(), "secret in env: {}", var.name);
        }
    }
    assert!(pg.env_from.is_none());
}

#[test]
fn secret_is_mounted_as_group_readable_files() {
    let spec = named_spec("db", "prod");
    let sts = statefulset(&spec);
    let pod = pod_spec(&sts);
    let vol = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "secret")
        .unwrap();
    let secret = vol.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("db-secret"));
    let mode = secret.default_mode.unwrap();
    assert_eq!(mode & 0o007, 0, "others must not read the passwords");
    assert_eq!(mode & 0o222, 0, "password files are read-only");
    assert_ne!(mode & 0o040, 0, "the fsGroup must read them");
    let pg = container(pod, POSTGRES_CONTAINER);
    assert!(mounts(pg).contains(&("secret".into(), "/etc/pgset/secret".into(), true)));
}

#[test]
fn writable_paths_are_volumes_under_a_read_only_root() {
    let spec = named_spec("db", "prod");
    let sts = statefulset(&spec);
    let pod = pod_spec(&sts);
    let pg = container(pod, POSTGRES_CONTAINER);
    let m = mounts(pg);
    for (name, path) in [
        ("socket", "/var/run/postgresql"),
        ("tmp", "/tmp"),
        ("shm", "/dev/shm"),
        ("data", "/pgdata"),
    ] {
        assert!(
            m.contains(&(name.into(), path.into(), false)),
            "{name} at {path}: {m:?}"
        );
    }
    let volumes = pod.volumes.as_ref().unwrap();
    let shm = volumes.iter().find(|v| v.name == "shm").unwrap();
    assert_eq!(
        shm.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    for name in ["socket", "tmp"] {
        assert!(
            volumes
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .empty_dir
                .is_some()
        );
    }
    // Every mount names a volume of the pod (or a claim template).
    let templates: Vec<String> = sts
        .spec
        .as_ref()
        .unwrap()
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|t| t.metadata.name.clone())
        .collect();
    for (name, _, _) in m {
        assert!(
            volumes.iter().any(|v| v.name == name) || templates.contains(&name),
            "mount {name} has no volume"
        );
    }
}

#[test]
fn probes_use_the_agents_http_endpoint_with_spec_timings() {
    let mut spec = named_spec("db", "prod").into_inner();
    spec.probes.startup_period_seconds = 2;
    spec.probes.startup_timeout_seconds = 601;
    spec.probes.readiness_period_seconds = 1;
    spec.probes.liveness_period_seconds = 10;
    spec.probes.liveness_failure_threshold = 6;
    spec.probes.timeout_seconds = 3;
    let sts = statefulset(&spec);
    let pg = container(pod_spec(&sts), POSTGRES_CONTAINER);
    let health_port = pg
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some(HEALTH_PORT_NAME))
        .unwrap();
    assert_eq!(health_port.container_port, 8008);
    let path_of = |p: &Probe| {
        let get = p.http_get.as_ref().unwrap();
        assert_eq!(get.port, IntOrString::String(HEALTH_PORT_NAME.into()));
        get.path.clone().unwrap()
    };
    let startup = pg.startup_probe.as_ref().unwrap();
    assert_eq!(path_of(startup), "/startupz");
    assert_eq!(startup.period_seconds, Some(2));
    // 601 s at 2 s a probe: 301 failures cover the whole timeout.
    assert_eq!(startup.failure_threshold, Some(301));
    assert_eq!(startup.timeout_seconds, Some(3));
    let live = pg.liveness_probe.as_ref().unwrap();
    assert_eq!(path_of(live), "/healthz");
    assert_eq!(live.period_seconds, Some(10));
    assert_eq!(live.failure_threshold, Some(6));
    let ready = pg.readiness_probe.as_ref().unwrap();
    assert_eq!(path_of(ready), "/readyz");
    assert_eq!(ready.period_seconds, Some(1));
    assert_eq!(ready.initial_delay_seconds, Some(0));
}

#[test]
fn resources_follow_the_spec() {
    let mut spec = named_spec("db", "prod").into_inner();
    spec.resources.cpu_request = "250m".into();
    spec.resources.memory_request = "512Mi".into();
    spec.resources.memory_limit = "2Gi".into();
    let sts = statefulset(&spec);
    let r = container(pod_spec(&sts), POSTGRES_CONTAINER)
        .resources
        .clone()
        .unwrap();
    let req = r.requests.unwrap();
    assert_eq!(req["cpu"], Quantity("250m".into()));
    assert_eq!(req["memory"], Quantity("512Mi".into()));
    let lim = r.limits.unwrap();
    assert_eq!(lim["memory"], Quantity("2Gi".into()));
    assert!(!lim.contains_key("cpu"));
}

#[test]
fn shared_mode_mounts_the_shared_claim() {
    let spec = spec_in_mode(StorageMode::Shared, None);
    let sts = statefulset(&spec);
    assert!(sts.spec.as_ref().unwrap().volume_claim_templates.is_none());
    let data = pod_spec(&sts)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(
        data.persistent_volume_claim.as_ref().unwrap().claim_name,
        "pgset-pvc"
    );
}

#[test]
fn templates_mode_uses_a_claim_template_named_like_the_mount() {
    let spec = spec_in_mode(StorageMode::Templates, None);
    let sts = statefulset(&spec);
    let s = sts.spec.as_ref().unwrap();
    let templates = s.volume_claim_templates.as_ref().unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].metadata.name.as_deref(), Some("data"));
    assert_eq!(spec.member_claim_name(0), "data-pgset-0");
    let pod = pod_spec(&sts);
    assert!(
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.name != "data")
    );
    let pg = container(pod, POSTGRES_CONTAINER);
    assert!(mounts(pg).contains(&("data".into(), "/pgdata".into(), false)));
}

#[test]
fn the_data_opt_ins_are_rendered_only_when_given() {
    let mut spec = ClusterSpec::default();
    let names = |spec: &ClusterSpec| -> Vec<String> {
        agent_env(spec).into_iter().map(|e| e.name).collect()
    };
    assert!(
        !names(&spec)
            .iter()
            .any(|n| n == "PGSET_ALLOW_REINIT" || n == "PGSET_ADOPT_UNMARKED")
    );
    spec.postgres.allow_reinit = true;
    spec.postgres.adopt_unmarked_data = true;
    let env = agent_env(&spec);
    for name in ["PGSET_ALLOW_REINIT", "PGSET_ADOPT_UNMARKED"] {
        let v = env.iter().find(|e| e.name == name).expect(name);
        assert_eq!(v.value.as_deref(), Some("true"));
    }
}

#[test]
fn the_control_plane_is_tolerated_only_when_asked() {
    let spec = named_spec("db", "prod");
    assert_eq!(pod_spec(&statefulset(&spec)).tolerations, None);
    let yaml = serde_saphyr::to_string(&statefulset(&spec)).unwrap();
    assert!(!yaml.contains("tolerations"), "{yaml}");

    let asked = ClusterSpec {
        tolerate_control_plane: true,
        ..spec.into_inner()
    };
    let sts = statefulset(&asked);
    let t = pod_spec(&sts).tolerations.as_deref().unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(
        (
            t[0].key.as_deref(),
            t[0].operator.as_deref(),
            t[0].effect.as_deref(),
            t[0].value.as_deref()
        ),
        (
            Some("node-role.kubernetes.io/control-plane"),
            Some("Exists"),
            Some("NoSchedule"),
            None
        )
    );
}

#[test]
fn the_termination_message_is_the_agents_own_file_never_a_log_tail() {
    let sts = statefulset(&named_spec("db", "prod"));
    let pg = container(pod_spec(&sts), POSTGRES_CONTAINER);
    assert_eq!(pg.termination_message_policy.as_deref(), Some("File"));
}

#[test]
fn with_tls_the_certificates_are_mounted_whole_and_the_agent_is_told_where() {
    let spec = named_spec("db", "prod");
    let sts = statefulset(&spec);
    let pod = pod_spec(&sts);
    let pg = container(pod, POSTGRES_CONTAINER);
    assert_eq!(
        env_value(pg, env::TLS_DIR).as_deref(),
        Some(contract::TLS_MOUNT)
    );
    let tls_mount = pg
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "tls")
        .expect("the TLS volume is mounted");
    assert_eq!(tls_mount.mount_path, "/etc/pgset/tls");
    assert_eq!(tls_mount.read_only, Some(true));
    assert!(
        tls_mount.sub_path.is_none(),
        "a subPath mount is never updated by the kubelet: a reissued certificate would not arrive"
    );
    // Root-owned through the Secret volume, the postgres group may read, nobody else:
    // what PostgreSQL and libpq accept for a key owned by root.
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "tls")
        .unwrap();
    let mode = vol.projected.as_ref().unwrap().default_mode.unwrap();
    assert_eq!(mode & 0o037, 0, "{mode:o}");
    assert_ne!(mode & 0o040, 0, "the fsGroup must read the keys");
    assert_eq!(
        pod.security_context.as_ref().unwrap().fs_group,
        Some(spec.postgres.gid)
    );
    // No container mounts the CA key's Secret.
    let yaml = serde_json::to_string(&sts).unwrap();
    assert!(!yaml.contains("\"db-ca\""), "{yaml}");

    let mut off = (*spec).clone();
    off.tls.mode = pgset_spec::TlsMode::Off;
    let sts = statefulset(&off);
    let pod = pod_spec(&sts);
    let pg = container(pod, POSTGRES_CONTAINER);
    assert_eq!(env_value(pg, env::TLS_DIR), None);
    assert!(!mounts(pg).iter().any(|(name, ..)| name == "tls"));
}
