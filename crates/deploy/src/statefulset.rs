//! StatefulSet `<name>`: ordered members running the agent (delivered by an init container)
//! in the official postgres image, non-root with a read-only root filesystem, probed over the
//! agent's HTTP endpoint, with the data volume per storage mode.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ImageVolumeSource, ObjectFieldSelector, PersistentVolumeClaimVolumeSource,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Toleration, Volume,
    VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgset_spec::contract::{
    self, AgentEnv, AgentMode, EnvSource, MemberIdentity, POSTGRES_CONTAINER, agent_env,
};
use pgset_spec::{AgentDelivery, ClusterSpec, StorageMode};

use crate::services::POSTGRES_PORT_NAME;
use crate::storage::claim_template;
use crate::{label_map, object_meta};

/// Name of the init container that installs the agent.
pub const INSTALL_AGENT_CONTAINER: &str = "install-agent";
/// Name of the agent's health port on the container.
pub const HEALTH_PORT_NAME: &str = "health";
/// Mode of the password files: owner (root) and group (the pod's fsGroup) may read.
pub const SECRET_FILE_MODE: i32 = 0o440;

const AGENT_VOLUME: &str = "agent";
const SECRET_VOLUME: &str = "secret";
const SOCKET_VOLUME: &str = "socket";
const TMP_VOLUME: &str = "tmp";
const SHM_VOLUME: &str = "shm";

/// Path of the installed agent binary in the pod.
pub fn agent_path() -> String {
    format!("{}/{}", contract::AGENT_DIR, contract::AGENT_BIN)
}

/// StatefulSet `<name>`.
pub fn statefulset(spec: &ClusterSpec) -> StatefulSet {
    let (claim_volume, claim_templates) = match spec.storage.mode {
        StorageMode::Shared => (
            Some(Volume {
                name: spec.data_volume_name().into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: spec.shared_claim_name(),
                    read_only: None,
                }),
                ..Volume::default()
            }),
            None,
        ),
        StorageMode::Templates => (None, Some(vec![claim_template(spec)])),
    };
    let mut volumes = vec![
        agent_volume(spec),
        Volume {
            name: SECRET_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(spec.secret_name()),
                default_mode: Some(SECRET_FILE_MODE),
                optional: Some(false),
                items: None,
            }),
            ..Volume::default()
        },
        empty_dir(SOCKET_VOLUME, None),
        empty_dir(TMP_VOLUME, None),
        empty_dir(SHM_VOLUME, Some("Memory")),
    ];
    volumes.extend(claim_volume);
    volumes.extend(crate::tls::volume(spec));

    let template_labels = label_map(spec.common_labels());
    StatefulSet {
        metadata: object_meta(spec, spec.statefulset_name()),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(spec.headless_service_name().to_string()),
            pod_management_policy: Some(spec.pod_management_policy.as_str().into()),
            selector: LabelSelector {
                match_labels: Some(label_map(spec.selector_labels())),
                match_expressions: None,
            },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    max_unavailable: None,
                }),
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            volume_claim_templates: claim_templates,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(BTreeMap::from([(
                        "kubectl.kubernetes.io/default-container".to_string(),
                        POSTGRES_CONTAINER.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(spec.service_account_name()),
                    automount_service_account_token: Some(true),
                    // Service links would inject PGSET_MASTER_PORT=tcp://... from the
                    // `<name>-master` Service, clashing with the env contract.
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(
                        spec.probes.termination_grace_period_seconds,
                    ),
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(spec.postgres.uid),
                        run_as_group: Some(spec.postgres.gid),
                        run_as_non_root: Some(true),
                        fs_group: Some(spec.postgres.gid),
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    affinity: Some(spread_members(spec)),
                    tolerations: spec
                        .tolerate_control_plane
                        .then(|| vec![control_plane_toleration()]),
                    init_containers: (spec.agent.delivery == AgentDelivery::Copy)
                        .then(|| vec![install_agent_container(spec)]),
                    containers: vec![postgres_container(spec)],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn empty_dir(name: &str, medium: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_string),
            size_limit: None,
        }),
        ..Volume::default()
    }
}

/// Tolerates kubeadm's control-plane taint (only when the spec asks for it).
pub fn control_plane_toleration() -> Toleration {
    Toleration {
        key: Some(contract::CONTROL_PLANE_TAINT.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }
}

pub(crate) fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// Members prefer different nodes (a preference: a one-node lab still runs them all).
fn spread_members(spec: &ClusterSpec) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(label_map(spec.selector_labels())),
                            match_expressions: None,
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The container security context: the image's postgres user, no privilege escalation, no
/// capabilities, read-only root filesystem (everything written goes to volumes).
pub(crate) fn restricted_security_context(spec: &ClusterSpec) -> SecurityContext {
    SecurityContext {
        run_as_user: Some(spec.postgres.uid),
        run_as_group: Some(spec.postgres.gid),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// Where the agent binary comes from: an emptyDir the init container fills (`copy`), or the
/// agent image itself as an image volume (`image`), whose root holds the binary under the same
/// name, so the container's command is the same either way.
fn agent_volume(spec: &ClusterSpec) -> Volume {
    match spec.agent.delivery {
        AgentDelivery::Copy => empty_dir(AGENT_VOLUME, None),
        AgentDelivery::Image => Volume {
            name: AGENT_VOLUME.into(),
            image: Some(ImageVolumeSource {
                reference: Some(spec.agent.image.clone()),
                pull_policy: Some(spec.agent.pull_policy.clone()),
            }),
            ..Volume::default()
        },
    }
}

/// Init container `install-agent`: copies the agent binary from its image into the emptyDir.
fn install_agent_container(spec: &ClusterSpec) -> Container {
    Container {
        name: INSTALL_AGENT_CONTAINER.into(),
        image: Some(spec.agent.image.clone()),
        image_pull_policy: Some(spec.agent.pull_policy.clone()),
        command: Some(vec![
            contract::AGENT_IMAGE_BINARY.into(),
            "install".into(),
            agent_path(),
        ]),
        security_context: Some(restricted_security_context(spec)),
        volume_mounts: Some(vec![mount(AGENT_VOLUME, contract::AGENT_DIR, false)]),
        ..Container::default()
    }
}

/// The agent's env contract in a pod: the member's identity from the downward API, the
/// in-pod paths and ports, and the spec's data opt-ins. No password: those are files under the
/// secret dir.
pub fn agent_contract(spec: &ClusterSpec) -> AgentEnv {
    AgentEnv {
        mode: AgentMode::Kubernetes,
        member: MemberIdentity::FromPod,
        cluster: spec.name.clone(),
        data_root: contract::DATA_MOUNT.into(),
        master_host: spec.master_service_name(),
        master_port: contract::POSTGRES_PORT,
        port: contract::POSTGRES_PORT,
        listen_addresses: agent_env::DEFAULT_LISTEN_ADDRESSES.into(),
        socket_dir: contract::SOCKET_DIR.into(),
        secret_dir: contract::SECRET_MOUNT.into(),
        health_addr: Some(agent_env::default_health_addr()),
        pg_bin_dir: None,
        members_file: None,
        master_wait: None,
        basebackup_max_rate: None,
        adopt_unmarked: spec.postgres.adopt_unmarked_data,
        allow_reinit: spec.postgres.allow_reinit,
        termination_log: None,
        liveness_timeout: None,
        failover: (!spec.replication.failover).then_some(false),
        maximum_lag_on_failover: Some(spec.replication.maximum_lag_on_failover),
        synchronous: spec.replication.synchronous,
        // The projected certificate Secrets (crate::tls::volume), when TLS is on.
        tls_dir: spec.tls.enabled().then(|| contract::TLS_MOUNT.into()),
        // The loopback always: a port-forward (verify, the drills, `connect-info`) arrives there.
        superuser_from: spec.tls.enabled().then(|| {
            let mut nets = pgset_spec::Cidr::loopback();
            nets.extend(spec.access.superuser_from.iter().copied());
            nets
        }),
        replication_from: (spec.tls.enabled() && !spec.access.replication_from.is_empty())
            .then(|| spec.access.replication_from.clone()),
        max_replica_lag_bytes: Some(spec.replication.max_replica_lag.bytes),
        max_replica_lag: Some(std::time::Duration::from_secs(
            spec.replication.max_replica_lag.seconds,
        )),
    }
}

/// The container's `env:`, [`agent_contract`] as env vars.
pub fn agent_env(spec: &ClusterSpec) -> Vec<EnvVar> {
    agent_contract(spec)
        .entries()
        .into_iter()
        .map(|e| match e.source {
            EnvSource::Value(value) => EnvVar {
                name: e.name.into(),
                value: Some(value),
                value_from: None,
            },
            EnvSource::PodField(field_path) => EnvVar {
                name: e.name.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: field_path.into(),
                    }),
                    ..EnvVarSource::default()
                }),
            },
        })
        .collect()
}

fn http_probe(path: &str, period: i32, timeout: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HEALTH_PORT_NAME.into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(0),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        success_threshold: Some(1),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Startup probe: `/startupz` every startup period, for up to the startup timeout: true once
/// the agent serves its endpoints. From then on liveness judges progress, so initdb, a base
/// backup or a recovery that progresses is never restarted for taking long, however long.
pub fn startup_probe(spec: &ClusterSpec) -> Probe {
    let p = &spec.probes;
    let period = p.startup_period_seconds.max(1);
    let failures = (p.startup_timeout_seconds + period - 1) / period;
    http_probe(
        contract::HEALTH_STARTUP_PATH,
        period,
        p.timeout_seconds,
        failures.max(1),
    )
}

/// Liveness probe: `/healthz`, patient (period × threshold before a restart): it fails once the
/// member has shown no sign of progress (an answer, recovery or a shutdown doing work, a base
/// backup growing) for the agent's liveness timeout.
pub fn liveness_probe(spec: &ClusterSpec) -> Probe {
    let p = &spec.probes;
    http_probe(
        contract::HEALTH_LIVE_PATH,
        p.liveness_period_seconds,
        p.timeout_seconds,
        p.liveness_failure_threshold,
    )
}

/// Readiness probe: `/readyz`, frequent, so a ready member is noticed (and the next ordinal
/// started) within a period.
pub fn readiness_probe(spec: &ClusterSpec) -> Probe {
    let p = &spec.probes;
    http_probe(
        contract::HEALTH_READY_PATH,
        p.readiness_period_seconds,
        p.timeout_seconds,
        3,
    )
}

fn postgres_resources(spec: &ClusterSpec) -> ResourceRequirements {
    let r = &spec.resources;
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(r.cpu_request.clone())),
            ("memory".to_string(), Quantity(r.memory_request.clone())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(r.memory_limit.clone()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The postgres container's mounts; the TLS volume whole (never by `subPath`, which the
/// kubelet does not update), so a reissued certificate reaches the running member.
fn postgres_mounts(spec: &ClusterSpec) -> Vec<VolumeMount> {
    let mut mounts = vec![
        mount(spec.data_volume_name(), contract::DATA_MOUNT, false),
        mount(AGENT_VOLUME, contract::AGENT_DIR, true),
        mount(SECRET_VOLUME, contract::SECRET_MOUNT, true),
        mount(SOCKET_VOLUME, contract::SOCKET_DIR, false),
        mount(TMP_VOLUME, "/tmp", false),
        mount(SHM_VOLUME, "/dev/shm", false),
    ];
    if spec.tls.enabled() {
        mounts.push(mount(crate::tls::TLS_VOLUME, contract::TLS_MOUNT, true));
    }
    mounts
}

/// The postgres container: the official image running the installed agent.
fn postgres_container(spec: &ClusterSpec) -> Container {
    Container {
        name: POSTGRES_CONTAINER.into(),
        image: Some(spec.postgres.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![agent_path(), "run".into()]),
        ports: Some(vec![
            ContainerPort {
                name: Some(POSTGRES_PORT_NAME.into()),
                container_port: i32::from(contract::POSTGRES_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(HEALTH_PORT_NAME.into()),
                container_port: i32::from(contract::HEALTH_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        env: Some(agent_env(spec)),
        resources: Some(postgres_resources(spec)),
        security_context: Some(restricted_security_context(spec)),
        startup_probe: Some(startup_probe(spec)),
        liveness_probe: Some(liveness_probe(spec)),
        readiness_probe: Some(readiness_probe(spec)),
        volume_mounts: Some(postgres_mounts(spec)),
        // The agent writes its own one-line reason whenever it exits; a log tail is no reason.
        termination_message_policy: Some("File".into()),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests;
