//! Against a live cluster (KUBECONFIG): the write fence and data identity seen from outside the
//! pods. A second pod pointed at the master's data directory never starts PostgreSQL there; a
//! force-deleted master is replaced only once its Lease is released or expires; `deploy` adds a
//! cluster id to a Secret made before cluster ids and keeps its passwords; a member whose data
//! directory is another cluster's is refused, with the reason in its pod status.
//!
//! Each test deploys a 2-member cluster of its own, named after the run, in a namespace of its
//! own, and removes both at the end whether it passed or not. Storage, as for `live_verify`:
//! `PGSET_LIVE_STORAGE_CLASS` set → templates mode on that StorageClass (its claims are
//! ReadWriteOnce); otherwise shared mode on the NFS export of `PGSET_LIVE_NFS_SERVER` (default
//! export `/nfsfileshare`, `PGSET_LIVE_NFS_EXPORT` to change it), as `cargo xtask nfs` sets up,
//! with PersistentVolumes named after the namespace. In shared mode the members' directories
//! `<export>/<cluster>-N` stay on the export (pgset never deletes data); every run uses a new
//! cluster name, so a run never meets an earlier run's directories. The agent image must be on
//! the nodes (`cargo xtask image --import`); `PGSET_LIVE_AGENT_IMAGE` names another.
//!
//! The pure parts (the intruder pod built from the StatefulSet, where it may run, how its wait
//! shows in its log, the planted foreign directory, the Lease hand-over judgement) are tested
//! here without a cluster.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerStateTerminated, ContainerStatus, EnvVar, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSpec, Secret, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, LogParams, Patch, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use pgset_agent::identity::{Identity, MemberRef};
use pgset_deploy::apply::{ApplyMode, apply_params, deploy};
use pgset_deploy::readiness::pod_is_ready;
use pgset_deploy::rollout::{describe_pod, step_lines, wait_for_rollout};
use pgset_deploy::scale::set_replicas;
use pgset_deploy::secret::Passwords;
use pgset_deploy::teardown::{Purge, down};
use pgset_spec::contract::{self, POSTGRES_CONTAINER, secret as keys};
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};
use pgset_tests::{live_kubeconfig, skip};
use pgset_verify::exec::PodExec;
use pgset_verify::sql;
use sha2::{Digest, Sha256};
use tokio::time::{Instant, sleep};

#[path = "support/live.rs"]
mod support;

/// Longest wait for a rollout.
const ROLLOUT: Duration = Duration::from_secs(600);
/// How long the intruder is watched once its agent waits for the fence.
const WINDOW: Duration = Duration::from_secs(60);
/// Longest wait for a test pod to start (image pull, init container, volume attach).
const POD_START: Duration = Duration::from_secs(300);
/// Name of the pod forced onto the master's data directory.
const INTRUDER: &str = "intruder";
/// What PostgreSQL logs once it accepts connections (primary and standby alike).
const POSTGRES_READY_LINE: &str = "database system is ready to accept";
/// The label the StatefulSet controller sets on each of its pods, holding the pod's name.
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The planted foreign directory's owner: another namespace and cluster.
const FOREIGN_NAMESPACE: &str = "elsewhere";
const FOREIGN_CLUSTER: &str = "other";
const FOREIGN_CLUSTER_ID: &str = "0123456789abcdef0123456789abcdef";
/// The planted `pg_control`'s system identifier: eight 0x01 bytes, the same in either byte order.
const FOREIGN_SYSID: u64 = 0x0101_0101_0101_0101;
/// Size of the planted `pg_control` (PostgreSQL's own is 8192 bytes).
const PG_CONTROL_SIZE: usize = 8192;
/// The planted `PG_VERSION`.
const FOREIGN_PG_VERSION: &str = "18\n";
/// Slack for comparing instants seen through a watch with durations the agent measured.
const WATCH_SLACK: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Setup shared by the scenarios
// ---------------------------------------------------------------------------------------------

/// A short suffix that differs between runs: the cluster's and namespace's names end with it.
fn run_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!(
        "{:08x}",
        (nanos as u32) ^ std::process::id().rotate_left(16)
    )
}

/// The 2-member cluster `name` in `namespace`, or why it cannot be built here.
fn cluster_spec(namespace: &str, name: &str) -> Result<ValidSpec, String> {
    support::live_cluster_spec(namespace, name, 2)
}

/// Shared mode: the spec's NFS volumes, renamed after the namespace so they cannot collide
/// with another cluster's `pv1..pvN` (as in `live_verify`).
fn volumes(spec: &ValidSpec) -> Vec<PersistentVolume> {
    let server = spec.nfs.server.clone().unwrap_or_default();
    pgset_nfs::persistent_volumes(spec, &server)
        .into_iter()
        .map(|mut pv| {
            let name = pv.metadata.name.take().unwrap_or_default();
            pv.metadata.name = Some(format!("{}-{name}", spec.namespace));
            pv
        })
        .collect()
}

async fn apply_volumes(client: &Client, spec: &ValidSpec) {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for pv in volumes(spec) {
        let name = pv.metadata.name.clone().unwrap_or_default();
        pvs.patch(&name, &apply_params(ApplyMode::Apply), &Patch::Apply(&pv))
            .await
            .unwrap_or_else(|e| panic!("apply PersistentVolume {name}: {e}"));
    }
}

fn progress(line: &str) {
    eprintln!("    {line}");
}

/// Runs `scenario` on a cluster of its own in a namespace of its own, then removes the cluster
/// (claims and Secret included), the test's volumes and the namespace, whether it passed or not.
async fn live_test<F, Fut>(test: &'static str, prefix: &str, scenario: F)
where
    F: FnOnce(Client, ValidSpec) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if live_kubeconfig(test).is_none() {
        return;
    }
    let suffix = run_suffix();
    let ns = format!("pgset-{prefix}-{suffix}");
    let spec = match cluster_spec(&ns, &format!("{prefix}-{suffix}")) {
        Ok(s) => s,
        Err(reason) => {
            skip(test, &reason);
            return;
        }
    };
    let client = Client::try_default().await.expect("client from KUBECONFIG");
    let namespaces = support::create_namespace(&client, &ns).await;
    eprintln!(
        "{test}: namespace {ns}, cluster {}, storage {}",
        spec.name, spec.storage.mode
    );

    let outcome = {
        let (client, spec) = (client.clone(), spec.clone());
        tokio::spawn(async move {
            if !volumes(&spec).is_empty() {
                // The cluster's own directory on the export (placement), as `cargo xtask nfs`
                // makes it on the NFS host.
                support::prepare_cluster_dirs(&client, &spec).await;
            }
            apply_volumes(&client, &spec).await;
            scenario(client, spec).await;
        })
        .await
    };

    let quiet = &mut |_: &str| {};
    if let Err(e) = down(&client, &spec, Purge::Everything, ROLLOUT, quiet).await {
        eprintln!("{test}: tear down: {e}");
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for pv in volumes(&spec) {
        let name = pv.metadata.name.unwrap_or_default();
        let _ = pvs.delete(&name, &DeleteParams::default()).await;
    }
    if spec.storage.mode == StorageMode::Shared {
        eprintln!(
            "{test}: the members' directories {}/{}-N stay on the NFS export",
            spec.nfs.export.display(),
            spec.name
        );
    }
    support::finish(test, &namespaces, &ns, outcome).await;
}

async fn deploy_and_wait(client: &Client, spec: &ValidSpec) {
    deploy(client, spec, ApplyMode::Apply, &mut progress)
        .await
        .expect("deploy");
    wait_for_rollout(
        client,
        spec,
        spec.replicas,
        ROLLOUT,
        &mut step_lines(&mut progress),
    )
    .await
    .expect("rollout");
}

fn pods_api(client: &Client, spec: &ClusterSpec) -> Api<Pod> {
    Api::namespaced(client.clone(), &spec.namespace)
}

fn exec_in(client: &Client, spec: &ClusterSpec) -> PodExec {
    PodExec::new(pods_api(client, spec), Duration::from_secs(60))
}

/// Runs SQL over the pod's local socket; its trimmed output, or the test fails.
async fn psql(exec: &PodExec, pod: &str, query: &str) -> String {
    let out = exec
        .run(pod, POSTGRES_CONTAINER, &sql::psql_local(&[query]))
        .await
        .unwrap_or_else(|e| panic!("exec psql in {pod}: {e}"));
    assert!(
        out.success(),
        "psql in {pod} ({query}): {}",
        out.failure_summary()
    );
    out.stdout.trim().to_string()
}

/// The master's database system identifier and postmaster start time, as one string.
async fn master_fingerprint(exec: &PodExec, pod: &str) -> String {
    let fp = psql(
        exec,
        pod,
        "select system_identifier, pg_postmaster_start_time() from pg_control_system()",
    )
    .await;
    assert!(
        fp.split('|').count() == 2 && !fp.starts_with('|'),
        "system identifier and start time: {fp:?}"
    );
    fp
}

/// The members `pg_stat_replication` on `master` shows streaming.
async fn streaming_members(exec: &PodExec, master: &str) -> Vec<String> {
    let out = psql(exec, master, sql::REPLICATION_QUERY).await;
    sql::parse_replication(&out)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|r| r.is_streaming())
        .map(|r| r.application_name)
        .collect()
}

/// Waits until `replica` streams from `master` again (up to `within`).
async fn await_streaming(exec: &PodExec, master: &str, replica: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let streaming = streaming_members(exec, master).await;
        if streaming.iter().any(|m| m == replica) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{replica} does not stream from {master} within {} s: {streaming:?}",
            within.as_secs()
        );
        sleep(Duration::from_secs(1)).await;
    }
}

fn postgres_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == POSTGRES_CONTAINER)
}

fn restarts(pod: &Pod) -> i32 {
    postgres_status(pod).map_or(0, |c| c.restart_count)
}

/// The postgres container's termination: the current one if it is terminated now, else the
/// last one.
fn termination(pod: &Pod) -> Option<&ContainerStateTerminated> {
    let c = postgres_status(pod)?;
    c.state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
}

async fn get_pod(pods: &Api<Pod>, name: &str) -> Pod {
    pods.get(name)
        .await
        .unwrap_or_else(|e| panic!("get pod {name}: {e}"))
}

/// The postgres container's log; empty while it has not started.
async fn container_log(pods: &Api<Pod>, name: &str) -> String {
    let params = LogParams {
        container: Some(POSTGRES_CONTAINER.into()),
        ..LogParams::default()
    };
    pods.logs(name, &params).await.unwrap_or_default()
}

/// The holder of a member's Lease (empty when released).
async fn lease_holder(client: &Client, spec: &ClusterSpec, ordinal: i32) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &spec.namespace);
    let name = spec.member_lease_name(ordinal);
    leases
        .get_opt(&name)
        .await
        .unwrap_or_else(|e| panic!("get Lease {name}: {e}"))
        .map(|l| observed(&l).holder)
}

/// `GET /status` of the agent in `pod`, through bash's `/dev/tcp` (the postgres image has bash
/// but no HTTP client), parsed as JSON.
async fn agent_status(exec: &PodExec, pod: &str) -> serde_json::Value {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{}; printf 'GET /status HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        contract::HEALTH_PORT
    );
    let argv = ["bash".to_string(), "-c".into(), script];
    let out = exec
        .run(pod, POSTGRES_CONTAINER, &argv)
        .await
        .unwrap_or_else(|e| panic!("exec in {pod}: {e}"));
    assert!(
        out.success(),
        "GET /status in {pod}: {}",
        out.failure_summary()
    );
    let body = out
        .stdout
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim();
    serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("/status of {pod} is not JSON ({e}): {}", out.stdout))
}

async fn await_gone(pods: &Api<Pod>, name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while pods
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get pod {name}: {e}"))
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "pod {name} is still there {} s after it was deleted",
            within.as_secs()
        );
        sleep(Duration::from_secs(1)).await;
    }
}

async fn live_statefulset(client: &Client, spec: &ClusterSpec) -> StatefulSet {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &spec.namespace);
    api.get(spec.statefulset_name())
        .await
        .unwrap_or_else(|e| panic!("get StatefulSet {}: {e}", spec.statefulset_name()))
}

// ---------------------------------------------------------------------------------------------
// Pure parts: the pods the tests make, and the judgements on what they see
// ---------------------------------------------------------------------------------------------

/// Where the intruder may run, given how its claim may be mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    /// ReadWriteMany: anywhere; a node other than the master's is preferred.
    PreferOtherNode,
    /// ReadWriteOnce: on the master's node, the one node that may mount the claim again.
    Node(String),
}

/// Where a second pod may mount a claim with these access modes that `master_node` mounts, or
/// why it cannot.
fn claim_placement(access_modes: &[String], master_node: &str) -> Result<Placement, String> {
    let has = |m: &str| access_modes.iter().any(|a| a == m);
    if has("ReadWriteMany") {
        Ok(Placement::PreferOtherNode)
    } else if has("ReadWriteOncePod") {
        Err(format!(
            "the claim's access modes {access_modes:?} let one pod only mount it: a second pod \
             cannot reach the member's data directory through it"
        ))
    } else if has("ReadWriteOnce") {
        Ok(Placement::Node(master_node.to_string()))
    } else {
        Err(format!(
            "the claim's access modes {access_modes:?} allow no second writer to mount it"
        ))
    }
}

/// The StatefulSet's own pod template as a bare pod `intruder` whose agent believes it is
/// ordinal 0: `PGSET_POD_NAME` is the value `<name>-0` instead of the downward API, everything
/// else (service account, init container, env, probes, security) as in the template, the data
/// volume ordinal 0's (the shared claim, or `data-<name>-0` in templates mode). It carries no
/// label, so no Service, StatefulSet or `status` takes it for a member.
fn intruder_pod(
    sts: &StatefulSet,
    spec: &ClusterSpec,
    placement: &Placement,
) -> Result<Pod, String> {
    let template = sts
        .spec
        .as_ref()
        .ok_or("the StatefulSet has no spec")?
        .template
        .clone();
    let mut pod = template.spec.ok_or("the pod template has no spec")?;
    let target = spec.pod_name(0);
    let container = pod
        .containers
        .iter_mut()
        .find(|c| c.name == POSTGRES_CONTAINER)
        .ok_or("the pod template has no postgres container")?;
    let var = container
        .env
        .as_mut()
        .and_then(|env| env.iter_mut().find(|e| e.name == contract::env::POD_NAME))
        .ok_or("the postgres container has no PGSET_POD_NAME")?;
    *var = EnvVar {
        name: contract::env::POD_NAME.into(),
        value: Some(target.clone()),
        value_from: None,
    };
    let data = spec.data_volume_name();
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    match spec.storage.mode {
        StorageMode::Shared => {
            if !volumes
                .iter()
                .any(|v| v.name == data && v.persistent_volume_claim.is_some())
            {
                return Err("the pod template has no shared claim volume".into());
            }
        }
        StorageMode::Templates => {
            volumes.retain(|v| v.name != data);
            volumes.push(claim_volume(data, &spec.member_claim_name(0)));
        }
    }
    match placement {
        Placement::Node(node) => {
            pod.node_name = Some(node.clone());
            pod.affinity = None;
        }
        Placement::PreferOtherNode => {
            pod.affinity = Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 100,
                            pod_affinity_term: PodAffinityTerm {
                                topology_key: "kubernetes.io/hostname".into(),
                                label_selector: Some(LabelSelector {
                                    match_labels: Some(BTreeMap::from([(
                                        POD_NAME_LABEL.to_string(),
                                        target,
                                    )])),
                                    match_expressions: None,
                                }),
                                ..PodAffinityTerm::default()
                            },
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            });
        }
    }
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(INTRUDER.into()),
            annotations: template.metadata.and_then(|m| m.annotations),
            ..ObjectMeta::default()
        },
        spec: Some(pod),
        status: None,
    })
}

fn claim_volume(name: &str, claim: &str) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Volume::default()
    }
}

/// The line of the intruder's log saying its agent waits for the fence that ordinal 0 (pod UID
/// `holder_uid`) holds: the write lock whose recorded holder is that pod, or the Lease held by
/// that UID (the wording of `crates/agent/src/fence.rs`).
fn fence_wait_line<'a>(log: &'a str, spec: &ClusterSpec, holder_uid: &str) -> Option<&'a str> {
    let pod = spec.pod_name(0);
    let lock = format!(
        "waiting for the write lock {}/{pod}.lock: held by agent pid ",
        contract::DATA_MOUNT
    );
    let lock_holder = format!(" of {pod} (pod UID {holder_uid}) on host ");
    let lease = format!(
        "the Lease {} is held by pod UID {holder_uid} (another incarnation of {pod})",
        spec.member_lease_name(0)
    );
    log.lines().find(|l| {
        l.contains(" pgset-agent: ")
            && ((l.contains(&lock) && l.contains(&lock_holder)) || l.contains(&lease))
    })
}

/// The identity of another cluster's member `ordinal`, planted where this cluster's member
/// will look.
fn foreign_identity(spec: &ClusterSpec, ordinal: i32) -> Identity {
    let owner = MemberRef {
        namespace: FOREIGN_NAMESPACE.into(),
        cluster: FOREIGN_CLUSTER.into(),
        cluster_id: FOREIGN_CLUSTER_ID.into(),
        member: spec.pod_name(ordinal),
    };
    Identity::new(&owner, FOREIGN_SYSID, "initdb")
}

/// The planted `pg_control`: the system identifier's eight bytes, then zeros.
fn foreign_pg_control() -> Vec<u8> {
    let mut bytes = FOREIGN_SYSID.to_ne_bytes().to_vec();
    bytes.resize(PG_CONTROL_SIZE, 0);
    bytes
}

/// Shell script planting a foreign data directory at `$D` (never over an existing one):
/// `PG_VERSION`, `global/pg_control` and `pgset-identity.json` from `$IDENTITY`.
fn plant_script() -> String {
    format!(
        "set -eu\n\
         umask 077\n\
         if [ -e \"$D\" ]; then echo \"$D exists already; leaving it alone\" >&2; exit 3; fi\n\
         mkdir -p \"$D/global\"\n\
         printf '{}' > \"$D/PG_VERSION\"\n\
         printf '\\001\\001\\001\\001\\001\\001\\001\\001' > \"$D/global/pg_control\"\n\
         head -c {} /dev/zero >> \"$D/global/pg_control\"\n\
         printf '%s' \"$IDENTITY\" > \"$D/{}\"\n",
        FOREIGN_PG_VERSION.replace('\n', "\\n"),
        PG_CONTROL_SIZE - 8,
        contract::IDENTITY_FILE
    )
}

/// Shell script listing `$D` and hashing its files.
fn inspect_script() -> String {
    format!(
        "set -eu\ncd \"$D\"\nfind . | LC_ALL=C sort\nsha256sum PG_VERSION global/pg_control {}\n",
        contract::IDENTITY_FILE
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What [`inspect_script`] prints for the planted directory, unchanged.
fn expected_inspection(identity_json: &str) -> String {
    format!(
        ".\n./PG_VERSION\n./global\n./global/pg_control\n./{id}\n\
         {}  PG_VERSION\n{}  global/pg_control\n{}  {id}\n",
        sha256_hex(FOREIGN_PG_VERSION.as_bytes()),
        sha256_hex(&foreign_pg_control()),
        sha256_hex(identity_json.as_bytes()),
        id = contract::IDENTITY_FILE
    )
}

/// A one-shot pod running `script` with `env` in the postgres image, as the postgres user,
/// with the cluster's data volume at the usual mount: the shared claim, or `claim`.
fn one_shot_pod(
    sts: &StatefulSet,
    spec: &ClusterSpec,
    name: &str,
    claim: Option<&str>,
    script: &str,
    env: Vec<EnvVar>,
) -> Result<Pod, String> {
    let template = sts
        .spec
        .as_ref()
        .ok_or("the StatefulSet has no spec")?
        .template
        .spec
        .as_ref()
        .ok_or("the pod template has no spec")?;
    let postgres = template
        .containers
        .iter()
        .find(|c| c.name == POSTGRES_CONTAINER)
        .ok_or("the pod template has no postgres container")?;
    let data = spec.data_volume_name();
    let volume = match claim {
        Some(claim) => claim_volume(data, claim),
        None => template
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == data && v.persistent_volume_claim.is_some())
            .cloned()
            .ok_or("the pod template has no data volume")?,
    };
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: template.security_context.clone(),
            containers: vec![Container {
                name: "sh".into(),
                image: postgres.image.clone(),
                image_pull_policy: postgres.image_pull_policy.clone(),
                command: Some(vec!["sh".into(), "-c".into(), script.into()]),
                env: Some(env),
                security_context: postgres.security_context.clone(),
                volume_mounts: Some(vec![VolumeMount {
                    name: data.into(),
                    mount_path: contract::DATA_MOUNT.into(),
                    ..VolumeMount::default()
                }]),
                ..Container::default()
            }],
            volumes: Some(vec![volume]),
            ..PodSpec::default()
        }),
        status: None,
    })
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// Runs a one-shot pod to its end; returns its log. Fails the test, with the log, when it did
/// not succeed. The pod is deleted (and gone) when this returns.
async fn run_to_completion(pods: &Api<Pod>, pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    pods.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let deadline = Instant::now() + POD_START;
    let phase = loop {
        let p = get_pod(pods, &name).await;
        let phase = p.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            break phase.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} did not finish within {} s: {}",
            POD_START.as_secs(),
            describe_pod(&p)
        );
        sleep(Duration::from_secs(1)).await;
    };
    let log = pods
        .logs(&name, &LogParams::default())
        .await
        .unwrap_or_else(|e| format!("(no log: {e})"));
    let _ = pods.delete(&name, &DeleteParams::default()).await;
    await_gone(pods, &name, Duration::from_secs(120)).await;
    assert_eq!(phase, "Succeeded", "pod {name} failed: {log}");
    log
}

/// A Lease's record as the test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew_time: Option<String>,
    resource_version: Option<String>,
}

fn observed(lease: &Lease) -> Observed {
    let spec = lease.spec.as_ref();
    Observed {
        holder: spec
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default(),
        renew_time: spec.and_then(|s| s.renew_time.as_ref().map(|t| t.0.to_string())),
        resource_version: lease.metadata.resource_version.clone(),
    }
}

/// How the Lease passed from the old pod to its replacement.
#[derive(Debug, Clone, PartialEq)]
enum Handover {
    /// The old holder released it; the new one took it `after` the release.
    Released { after: Duration },
    /// The old holder stopped renewing; the new one took it over `after` its last write.
    Expired { after: Duration },
}

/// Judges the Lease's successive records, each with the instant (since the watch began) it was
/// seen: the new holder takes it only from a released record, or from the old holder's record
/// after it went unchanged for the Lease's `duration`; nobody else ever holds it.
fn judge_handover(
    records: &[(Duration, Observed)],
    old: &str,
    new: &str,
    duration: Duration,
) -> Result<Handover, String> {
    let taken = records
        .iter()
        .position(|(_, r)| r.holder == new)
        .ok_or_else(|| format!("the new pod (UID {new}) never held the Lease: {records:?}"))?;
    if let Some((at, r)) = records[..taken]
        .iter()
        .find(|(_, r)| !r.holder.is_empty() && r.holder != old)
    {
        return Err(format!(
            "the Lease was held by {} at {at:?}, neither the old nor the new pod",
            r.holder
        ));
    }
    let Some(before) = taken.checked_sub(1).map(|i| &records[i]) else {
        return Err(
            "the first record seen is already the new pod's: the hand-over was not observed".into(),
        );
    };
    let at = records[taken].0;
    let after = at.saturating_sub(before.0);
    if before.1.holder.is_empty() {
        if !records[..taken].iter().any(|(_, r)| r.holder == old) {
            return Err("the old pod never held the Lease while it was watched".into());
        }
        return Ok(Handover::Released { after });
    }
    if after + WATCH_SLACK < duration {
        return Err(format!(
            "the new pod took the Lease {} s after the old holder's last write, before its {} s \
             duration ran out and without a release",
            after.as_secs_f64(),
            duration.as_secs()
        ));
    }
    Ok(Handover::Expired { after })
}

// ---------------------------------------------------------------------------------------------
// 1. A second pod on a member's directory never starts PostgreSQL
// ---------------------------------------------------------------------------------------------

async fn intruder_scenario(client: Client, spec: ValidSpec) {
    const TEST: &str = "a_second_pod_on_a_members_directory_never_starts_postgres";
    deploy_and_wait(&client, &spec).await;
    let pods = pods_api(&client, &spec);
    let exec = exec_in(&client, &spec);
    let (first, second) = (spec.pod_name(0), spec.pod_name(1));

    let master = get_pod(&pods, &first).await;
    let uid = master.metadata.uid.clone().expect("pod UID");
    let node = master
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("the master is scheduled");
    let master_restarts = restarts(&master);
    let before = master_fingerprint(&exec, &first).await;
    assert!(
        streaming_members(&exec, &first).await.contains(&second),
        "{second} streams before the intruder comes"
    );
    assert_eq!(
        lease_holder(&client, &spec, 0).await.as_deref(),
        Some(uid.as_str()),
        "{first} holds its member Lease"
    );

    let placement = match spec.storage.mode {
        StorageMode::Shared => Placement::PreferOtherNode,
        StorageMode::Templates => {
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &spec.namespace);
            let name = spec.member_claim_name(0);
            let claim = claims
                .get(&name)
                .await
                .unwrap_or_else(|e| panic!("get claim {name}: {e}"));
            let modes = claim
                .status
                .and_then(|s| s.access_modes)
                .or_else(|| claim.spec.and_then(|s| s.access_modes))
                .unwrap_or_default();
            match claim_placement(&modes, &node) {
                Ok(p) => p,
                Err(reason) => {
                    skip(TEST, &format!("templates mode: {reason}"));
                    return;
                }
            }
        }
    };
    let sts = live_statefulset(&client, &spec).await;
    let intruder = intruder_pod(&sts, &spec, &placement).expect("the intruder pod");
    pods.create(&PostParams::default(), &intruder)
        .await
        .expect("create the intruder");

    // Until its agent says it waits for the master's fence (image, init container, volume),
    // then for the window: every second, the intruder is not Ready and its log shows no
    // PostgreSQL accepting connections, and the master is the same Ready pod.
    let created = Instant::now();
    let mut window_end: Option<Instant> = None;
    loop {
        let p = get_pod(&pods, INTRUDER).await;
        assert!(
            !pod_is_ready(&p),
            "the intruder became Ready: {}",
            describe_pod(&p)
        );
        let log = container_log(&pods, INTRUDER).await;
        assert!(
            !log.contains(POSTGRES_READY_LINE),
            "PostgreSQL started in the intruder:\n{log}"
        );
        let m = get_pod(&pods, &first).await;
        assert!(
            pod_is_ready(&m),
            "{first} is not Ready: {}",
            describe_pod(&m)
        );
        assert_eq!(
            m.metadata.uid.as_deref(),
            Some(uid.as_str()),
            "{first} was replaced"
        );
        assert_eq!(
            restarts(&m),
            master_restarts,
            "{first}'s container restarted"
        );
        match window_end {
            None => {
                if let Some(line) = fence_wait_line(&log, &spec, &uid) {
                    let on = p.spec.as_ref().and_then(|s| s.node_name.clone());
                    eprintln!(
                        "{TEST}: the intruder (node {}) waits, {first} on node {node}: {line}",
                        on.unwrap_or_default()
                    );
                    window_end = Some(Instant::now() + WINDOW);
                } else {
                    assert!(
                        created.elapsed() < POD_START,
                        "the intruder's agent did not wait for {first}'s write fence within {} s \
                         ({}):\n{log}",
                        POD_START.as_secs(),
                        describe_pod(&p)
                    );
                }
            }
            Some(end) if Instant::now() >= end => break,
            Some(_) => {}
        }
        sleep(Duration::from_secs(1)).await;
    }

    // Still waiting, by the agent's own state: alive, preparing, not ready, never restarted.
    let p = get_pod(&pods, INTRUDER).await;
    let running = postgres_status(&p)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    assert!(
        running && restarts(&p) == 0,
        "the intruder's agent still waits after {} s: {}",
        WINDOW.as_secs(),
        describe_pod(&p)
    );
    let status = agent_status(&exec, INTRUDER).await;
    assert_eq!(status["phase"], "preparing", "{status}");
    assert_eq!(status["ready"], false, "{status}");
    assert!(
        status["activity"]
            .as_str()
            .is_some_and(|a| a.contains("write fence")),
        "the intruder is taking the write fence: {status}"
    );
    let log = container_log(&pods, INTRUDER).await;
    assert!(!log.contains(POSTGRES_READY_LINE), "{log}");

    let during = master_fingerprint(&exec, &first).await;
    assert_eq!(
        during, before,
        "{first}'s system identifier and postmaster start time"
    );
    assert!(
        streaming_members(&exec, &first).await.contains(&second),
        "{second} still streams while the intruder waits"
    );
    assert_eq!(
        lease_holder(&client, &spec, 0).await.as_deref(),
        Some(uid.as_str()),
        "{first} still holds its member Lease"
    );

    pods.delete(INTRUDER, &DeleteParams::default())
        .await
        .expect("delete the intruder");
    let grace = spec.probes.termination_grace_period_seconds.max(0) as u64;
    await_gone(&pods, INTRUDER, Duration::from_secs(grace + 60)).await;

    let m = get_pod(&pods, &first).await;
    assert!(
        pod_is_ready(&m),
        "{first} after the intruder: {}",
        describe_pod(&m)
    );
    assert_eq!(m.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(restarts(&m), master_restarts);
    assert_eq!(master_fingerprint(&exec, &first).await, before);
    assert!(streaming_members(&exec, &first).await.contains(&second));
    assert_eq!(
        lease_holder(&client, &spec, 0).await.as_deref(),
        Some(uid.as_str())
    );
}

#[tokio::test]
async fn a_second_pod_on_a_members_directory_never_starts_postgres() {
    live_test(
        "a_second_pod_on_a_members_directory_never_starts_postgres",
        "fence",
        intruder_scenario,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. A force-deleted master is replaced only after its fence is released or expires
// ---------------------------------------------------------------------------------------------

/// Watches the Lease `name` from `version` on, sending each record with the instant it was seen
/// (since `start`), until the receiver is dropped.
async fn watch_lease(
    leases: Api<Lease>,
    name: String,
    mut version: String,
    start: Instant,
    records: tokio::sync::mpsc::UnboundedSender<(Duration, Observed)>,
) {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(120);
    loop {
        let stream = match leases.watch(&params, &version).await {
            Ok(s) => s,
            Err(e) => panic!("watch Lease {name}: {e}"),
        };
        let mut stream = Box::pin(stream);
        while let Some(event) = stream.next().await {
            let lease = match event {
                Ok(WatchEvent::Added(l) | WatchEvent::Modified(l)) => l,
                Ok(WatchEvent::Deleted(_)) => panic!("the Lease {name} was deleted"),
                Ok(WatchEvent::Bookmark(b)) => {
                    version = b.metadata.resource_version;
                    continue;
                }
                // A watch that fell behind (410 Gone) would hide records: fail, never guess.
                Ok(WatchEvent::Error(e)) => panic!("watch Lease {name}: {e:?}"),
                Err(e) => panic!("watch Lease {name}: {e}"),
            };
            let record = observed(&lease);
            if let Some(v) = &record.resource_version {
                version = v.clone();
            }
            if records.send((start.elapsed(), record)).is_err() {
                return;
            }
        }
    }
}

/// The master pod is force-deleted (grace period 0) and the Lease watched until its replacement
/// is Ready. Its node stays in contact, so the kubelet still stops the old container within
/// seconds: whether the old agent releases the Lease in that time or is killed first (the Lease
/// then expires) varies, and both are accepted; a hand-over by neither fails. A node that lost
/// contact cannot be made here; the rule checked is the one that protects it.
async fn force_delete_scenario(client: Client, spec: ValidSpec) {
    const TEST: &str =
        "a_force_deleted_master_pod_is_replaced_only_after_its_fence_is_released_or_expires";
    deploy_and_wait(&client, &spec).await;
    let pods = pods_api(&client, &spec);
    let exec = exec_in(&client, &spec);
    let (first, second) = (spec.pod_name(0), spec.pod_name(1));
    let old_uid = get_pod(&pods, &first).await.metadata.uid.expect("pod UID");
    let sysid = psql(
        &exec,
        &first,
        "select system_identifier from pg_control_system()",
    )
    .await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &spec.namespace);
    let lease_name = spec.member_lease_name(0);
    let lease = leases
        .get(&lease_name)
        .await
        .unwrap_or_else(|e| panic!("get Lease {lease_name}: {e}"));
    let duration = Duration::from_secs(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .expect("leaseDurationSeconds")
            .max(0) as u64,
    );
    let start = Instant::now();
    let first_record = observed(&lease);
    assert_eq!(first_record.holder, old_uid, "{first} holds its Lease");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send((Duration::ZERO, first_record.clone()))
        .expect("record");
    let watcher = tokio::spawn(watch_lease(
        leases.clone(),
        lease_name.clone(),
        first_record.resource_version.clone().unwrap_or_default(),
        start,
        tx,
    ));

    pods.delete(&first, &DeleteParams::default().grace_period(0))
        .await
        .unwrap_or_else(|e| panic!("force-delete {first}: {e}"));
    eprintln!(
        "{TEST}: force-deleted {first} (UID {old_uid}); its Lease lasts {} s",
        duration.as_secs()
    );

    // The replacement: the same name, another UID. Ready only once it holds the Lease.
    let deadline = Instant::now() + duration * 2 + POD_START;
    let (new_uid, ready_at) = loop {
        if let Some(p) = pods
            .get_opt(&first)
            .await
            .unwrap_or_else(|e| panic!("get pod {first}: {e}"))
            && p.metadata.uid.as_deref() != Some(old_uid.as_str())
            && pod_is_ready(&p)
        {
            break (p.metadata.uid.clone().expect("pod UID"), start.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "{first} was not replaced by a Ready pod within {} s",
            (duration * 2 + POD_START).as_secs()
        );
        sleep(Duration::from_millis(250)).await;
    };
    // Records up to now (plus any in flight for a moment). A watch that failed fails the test.
    sleep(Duration::from_secs(1)).await;
    if watcher.is_finished() {
        if let Err(e) = watcher.await
            && let Ok(panic) = e.try_into_panic()
        {
            std::panic::resume_unwind(panic);
        }
    } else {
        watcher.abort();
        let _ = watcher.await;
    }
    let mut records = Vec::new();
    while let Ok(r) = rx.try_recv() {
        records.push(r);
    }
    records.dedup_by(|b, a| a.1 == b.1);

    let handover = judge_handover(&records, &old_uid, &new_uid, duration)
        .unwrap_or_else(|e| panic!("{e}\nrecords: {records:#?}"));
    let taken_at = records
        .iter()
        .find(|(_, r)| r.holder == new_uid)
        .map(|(at, _)| *at)
        .expect("judged above");
    assert!(
        ready_at > taken_at,
        "the new {first} was Ready ({ready_at:?}) before it held the Lease ({taken_at:?})"
    );
    eprintln!("{TEST}: {handover:?}; the new {first} was Ready at {ready_at:?}");

    assert_eq!(
        psql(
            &exec,
            &first,
            "select system_identifier from pg_control_system()"
        )
        .await,
        sysid,
        "the new {first} runs on the same database"
    );
    await_streaming(&exec, &first, &second, Duration::from_secs(180)).await;
}

#[tokio::test]
async fn a_force_deleted_master_pod_is_replaced_only_after_its_fence_is_released_or_expires() {
    live_test(
        "a_force_deleted_master_pod_is_replaced_only_after_its_fence_is_released_or_expires",
        "handover",
        force_delete_scenario,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. deploy adds a cluster id to a Secret made before cluster ids
// ---------------------------------------------------------------------------------------------

fn secret_data(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
}

async fn old_secret_scenario(client: Client, spec: ValidSpec) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &spec.namespace);
    let name = spec.secret_name();
    let passwords = Passwords::generate().expect("passwords");
    let old = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                keys::SUPERUSER_PASSWORD_KEY.to_string(),
                ByteString(passwords.superuser.clone().into_bytes()),
            ),
            (
                keys::REPLICATION_PASSWORD_KEY.to_string(),
                ByteString(passwords.replication.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &old)
        .await
        .unwrap_or_else(|e| panic!("create Secret {name}: {e}"));

    let first = deploy(&client, &spec, ApplyMode::Apply, &mut progress)
        .await
        .expect("deploy over the old Secret");
    assert!(
        first.changed.contains(&format!("Secret/{name}")),
        "deploy reports the Secret changed: {:?}",
        first.changed
    );
    let upgraded = secrets.get(&name).await.expect("get the Secret");
    let id = secret_data(&upgraded, keys::CLUSTER_ID_KEY).expect("the Secret has a cluster id");
    let id = String::from_utf8(id).expect("the cluster id is text");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a 128-bit hex cluster id: {id:?}"
    );
    // Compared without printing them.
    assert!(
        secret_data(&upgraded, keys::SUPERUSER_PASSWORD_KEY).as_deref()
            == Some(passwords.superuser.as_bytes()),
        "deploy changed the superuser password"
    );
    assert!(
        secret_data(&upgraded, keys::REPLICATION_PASSWORD_KEY).as_deref()
            == Some(passwords.replication.as_bytes()),
        "deploy changed the replication password"
    );
    assert_eq!(
        upgraded.data.as_ref().map(BTreeMap::len),
        Some(3),
        "the two passwords and the cluster id, nothing else"
    );

    wait_for_rollout(
        &client,
        &spec,
        spec.replicas,
        ROLLOUT,
        &mut step_lines(&mut progress),
    )
    .await
    .expect("rollout");

    // Every member's data carries this cluster id; the replica reached the master with the
    // passwords of the old Secret (it streams), and so does a superuser login over TCP.
    let exec = exec_in(&client, &spec);
    for ordinal in 0..spec.replicas {
        let pod = spec.pod_name(ordinal);
        let path = format!("{}/{pod}/{}", contract::DATA_MOUNT, contract::IDENTITY_FILE);
        let out = exec
            .run(&pod, POSTGRES_CONTAINER, &["cat".to_string(), path.clone()])
            .await
            .unwrap_or_else(|e| panic!("exec in {pod}: {e}"));
        assert!(out.success(), "cat {path}: {}", out.failure_summary());
        let identity: Identity = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{path} ({e}): {}", out.stdout));
        assert_eq!(
            (
                identity.namespace.as_str(),
                identity.cluster.as_str(),
                identity.cluster_id.as_str(),
                identity.member.as_str()
            ),
            (
                spec.namespace.as_str(),
                spec.name.as_str(),
                id.as_str(),
                pod.as_str()
            ),
            "{path}"
        );
    }
    let (first_pod, second_pod) = (spec.pod_name(0), spec.pod_name(1));
    assert!(
        streaming_members(&exec, &first_pod)
            .await
            .contains(&second_pod)
    );
    // Over TCP by password, from the loopback of the master's pod: pg_hba admits the superuser
    // over TCP only there (and through port-forwards, which arrive there too).
    let login = exec
        .run(
            &first_pod,
            POSTGRES_CONTAINER,
            &sql::psql_remote("127.0.0.1", &["select 1"], false),
        )
        .await
        .expect("exec psql");
    assert!(
        login.success() && login.stdout.trim() == "1",
        "superuser login to the master with the old Secret's password: {}",
        login.failure_summary()
    );

    let version = upgraded.metadata.resource_version.clone();
    let second = deploy(&client, &spec, ApplyMode::Apply, &mut progress)
        .await
        .expect("second deploy");
    assert!(
        !second.changed.contains(&format!("Secret/{name}")),
        "a second deploy reports the Secret changed: {:?}",
        second.changed
    );
    let again = secrets.get(&name).await.expect("get the Secret");
    assert_eq!(
        again.metadata.resource_version, version,
        "a second deploy wrote the Secret"
    );
    assert!(
        secret_data(&again, keys::CLUSTER_ID_KEY).as_deref() == Some(id.as_bytes()),
        "the cluster id changed"
    );
}

#[tokio::test]
async fn deploy_adds_a_cluster_id_to_an_old_secret_and_keeps_the_passwords() {
    live_test(
        "deploy_adds_a_cluster_id_to_an_old_secret_and_keeps_the_passwords",
        "oldsecret",
        old_secret_scenario,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. A member whose directory is another cluster's is refused, and says so in its pod status
// ---------------------------------------------------------------------------------------------

async fn refused_member_scenario(client: Client, spec: ValidSpec) {
    const TEST: &str = "status_shows_a_refused_member";
    deploy_and_wait(&client, &spec).await;
    let pods = pods_api(&client, &spec);
    let exec = exec_in(&client, &spec);
    let (first, second, third) = (spec.pod_name(0), spec.pod_name(1), spec.pod_name(2));

    // Data written before the scale-out.
    psql(
        &exec,
        &first,
        "create table fence_probe (id integer primary key); insert into fence_probe values (1)",
    )
    .await;

    // The third member's data directory, made beforehand as another cluster's.
    let sts = live_statefulset(&client, &spec).await;
    let claim = match spec.storage.mode {
        StorageMode::Shared => None,
        StorageMode::Templates => {
            let template = sts
                .spec
                .as_ref()
                .and_then(|s| s.volume_claim_templates.as_ref())
                .and_then(|t| t.first())
                .cloned()
                .expect("a volume claim template");
            let name = spec.member_claim_name(2);
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: template.metadata.labels.clone(),
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            };
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &spec.namespace);
            claims
                .create(&PostParams::default(), &claim)
                .await
                .unwrap_or_else(|e| panic!("create claim {name}: {e}"));
            Some(name)
        }
    };
    let identity = foreign_identity(&spec, 2);
    let identity_json = serde_json::to_string_pretty(&identity).expect("identity JSON") + "\n";
    let dir = format!("{}/{third}", contract::DATA_MOUNT);
    let env = vec![value_env("D", &dir), value_env("IDENTITY", &identity_json)];
    let plant = one_shot_pod(
        &sts,
        &spec,
        "plant-foreign",
        claim.as_deref(),
        &plant_script(),
        env.clone(),
    )
    .expect("plant pod");
    run_to_completion(&pods, &plant).await;
    eprintln!("{TEST}: planted {dir} as member of {}", identity.owner());

    set_replicas(&client, &spec, 3).await.expect("scale to 3");
    let deadline = Instant::now() + POD_START;
    let terminated = loop {
        if let Some(p) = pods
            .get_opt(&third)
            .await
            .unwrap_or_else(|e| panic!("get pod {third}: {e}"))
        {
            assert!(
                !pod_is_ready(&p),
                "{third} became Ready on another cluster's data"
            );
            if let Some(t) = termination(&p)
                && t.message.as_deref().is_some_and(|m| !m.trim().is_empty())
            {
                break t.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{third} did not stop with a termination message within {} s: {}",
                POD_START.as_secs(),
                describe_pod(&p)
            );
        }
        sleep(Duration::from_secs(1)).await;
    };
    let message = terminated.message.clone().unwrap_or_default();
    eprintln!("{TEST}: {third} stopped: {message}");
    assert_eq!(terminated.exit_code, 2, "a refusal exits 2: {message}");
    for needle in [
        format!("refusing to use {dir}"),
        format!("belongs to cluster {}", identity.owner()),
        format!("not to {}/{}", spec.namespace, spec.name),
    ] {
        assert!(message.contains(&needle), "{needle:?} in {message:?}");
    }
    let p = get_pod(&pods, &third).await;
    assert!(!pod_is_ready(&p), "{third}: {}", describe_pod(&p));

    // The cluster is unharmed: the master serves, the replica streams and has the row.
    assert!(streaming_members(&exec, &first).await.contains(&second));
    assert_eq!(
        psql(&exec, &second, "select count(*) from fence_probe").await,
        "1"
    );

    // Scaled back, the planted directory is exactly as planted: never changed or moved.
    set_replicas(&client, &spec, 2).await.expect("scale to 2");
    await_gone(&pods, &third, Duration::from_secs(180)).await;
    let inspect = one_shot_pod(
        &sts,
        &spec,
        "inspect-foreign",
        claim.as_deref(),
        &inspect_script(),
        env,
    )
    .expect("inspect pod");
    let seen = run_to_completion(&pods, &inspect).await;
    assert_eq!(
        seen,
        expected_inspection(&identity_json),
        "{dir} after the refusal"
    );
}

#[tokio::test]
async fn status_shows_a_refused_member() {
    live_test(
        "status_shows_a_refused_member",
        "refused",
        refused_member_scenario,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Without a cluster
// ---------------------------------------------------------------------------------------------

mod pure {
    use super::*;
    use pgset_agent::identity::{Verdict, judge};

    fn spec(mode: StorageMode) -> ClusterSpec {
        let mut s = ClusterSpec {
            name: "fence-1".into(),
            namespace: "pgset-fence-1".into(),
            ..ClusterSpec::default()
        };
        s.storage.mode = mode;
        if mode == StorageMode::Templates {
            s.storage.storage_class = Some("fast".into());
        }
        s.validate().unwrap();
        s
    }

    fn postgres(pod: &Pod) -> &Container {
        pod.spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .find(|c| c.name == POSTGRES_CONTAINER)
            .unwrap()
    }

    fn env<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .unwrap()
    }

    #[test]
    fn the_intruder_is_the_template_pointed_at_ordinal_0() {
        for mode in [StorageMode::Shared, StorageMode::Templates] {
            let s = spec(mode);
            let sts = pgset_deploy::statefulset::statefulset(&s);
            let template = sts.spec.as_ref().unwrap().template.spec.clone().unwrap();
            let pod = intruder_pod(&sts, &s, &Placement::PreferOtherNode).unwrap();
            let p = pod.spec.as_ref().unwrap();

            let name = env(postgres(&pod), contract::env::POD_NAME);
            assert_eq!(name.value.as_deref(), Some("fence-1-0"), "{mode}");
            assert!(name.value_from.is_none());
            // Its own UID still comes from the downward API: it is another holder.
            assert!(
                env(postgres(&pod), contract::env::POD_UID)
                    .value_from
                    .is_some()
            );
            // Every other variable as in the template.
            let others = |c: &Container| -> Vec<EnvVar> {
                c.env
                    .clone()
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.name != contract::env::POD_NAME)
                    .collect()
            };
            let tpl_postgres = template
                .containers
                .iter()
                .find(|c| c.name == POSTGRES_CONTAINER)
                .unwrap();
            assert_eq!(others(postgres(&pod)), others(tpl_postgres));
            assert_eq!(postgres(&pod).command, tpl_postgres.command);
            assert_eq!(postgres(&pod).readiness_probe, tpl_postgres.readiness_probe);
            assert_eq!(p.service_account_name, template.service_account_name);
            assert_eq!(p.init_containers, template.init_containers);
            assert_eq!(p.security_context, template.security_context);

            let claims: Vec<&str> = p
                .volumes
                .iter()
                .flatten()
                .filter(|v| v.name == "data")
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.as_str())
                .collect();
            let want = match mode {
                StorageMode::Shared => "fence-1-pvc",
                StorageMode::Templates => "data-fence-1-0",
            };
            assert_eq!(claims, [want], "{mode}");
            // Every other volume as in the template.
            let rest = |vs: &Option<Vec<Volume>>| -> Vec<Volume> {
                vs.clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|v| v.name != "data")
                    .collect()
            };
            assert_eq!(rest(&p.volumes), rest(&template.volumes));

            // No label: nothing selects it as a member.
            assert_eq!(pod.metadata.name.as_deref(), Some(INTRUDER));
            assert!(pod.metadata.labels.is_none());
            // It prefers a node other than ordinal 0's.
            let term = &p
                .affinity
                .as_ref()
                .unwrap()
                .pod_anti_affinity
                .as_ref()
                .unwrap()
                .preferred_during_scheduling_ignored_during_execution
                .as_ref()
                .unwrap()[0]
                .pod_affinity_term;
            assert_eq!(
                term.label_selector.as_ref().unwrap().match_labels,
                Some(BTreeMap::from([(
                    POD_NAME_LABEL.to_string(),
                    "fence-1-0".to_string()
                )]))
            );
            assert!(p.node_name.is_none());
        }
    }

    #[test]
    fn a_read_write_once_claim_pins_the_intruder_to_the_masters_node() {
        let s = spec(StorageMode::Templates);
        let sts = pgset_deploy::statefulset::statefulset(&s);
        let pod = intruder_pod(&sts, &s, &Placement::Node("node-a".into())).unwrap();
        let p = pod.spec.unwrap();
        assert_eq!(p.node_name.as_deref(), Some("node-a"));
        assert!(p.affinity.is_none());
    }

    #[test]
    fn where_a_second_pod_may_mount_a_claim() {
        let modes = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            claim_placement(&modes(&["ReadWriteMany"]), "n1"),
            Ok(Placement::PreferOtherNode)
        );
        assert_eq!(
            claim_placement(&modes(&["ReadWriteOnce"]), "n1"),
            Ok(Placement::Node("n1".into()))
        );
        assert_eq!(
            claim_placement(&modes(&["ReadWriteOnce", "ReadWriteMany"]), "n1"),
            Ok(Placement::PreferOtherNode)
        );
        let e = claim_placement(&modes(&["ReadWriteOncePod"]), "n1").unwrap_err();
        assert!(e.contains("one pod only"), "{e}");
        assert!(claim_placement(&modes(&["ReadOnlyMany"]), "n1").is_err());
        assert!(claim_placement(&[], "n1").is_err());
    }

    #[test]
    fn the_wait_for_the_masters_fence_is_found_in_the_log() {
        let s = spec(StorageMode::Shared);
        let ts = "2026-11-29 20:00:00.000 UTC pgset-agent:";
        let lock = format!(
            "{ts} waiting for the write lock /pgdata/fence-1-0.lock: held by agent pid 7 of \
             fence-1-0 (pod UID u-0) on host fence-1-0"
        );
        let lease = format!(
            "{ts} the Lease fence-1-0-member is held by pod UID u-0 (another incarnation of \
             fence-1-0); waiting until it is released or goes 120 s without renewal"
        );
        let start = format!("{ts} member fence-1-0 of cluster fence-1: master (ordinal 0)");
        for line in [&lock, &lease] {
            let log = format!("{start}\n{line}\n");
            assert_eq!(fence_wait_line(&log, &s, "u-0"), Some(line.as_str()));
        }
        // Another holder, another member, or no wait at all: not the master's fence.
        assert_eq!(fence_wait_line(&lock, &s, "u-9"), None);
        assert_eq!(fence_wait_line(&lease, &s, "u-9"), None);
        let other = lock.replace("fence-1-0", "fence-1-1");
        assert_eq!(fence_wait_line(&other, &s, "u-0"), None);
        assert_eq!(fence_wait_line(&start, &s, "u-0"), None);
    }

    #[test]
    fn the_planted_directory_is_refused_as_another_clusters() {
        let s = spec(StorageMode::Shared);
        let planted = foreign_identity(&s, 2);
        let me = MemberRef {
            namespace: s.namespace.clone(),
            cluster: s.name.clone(),
            cluster_id: "ffffffffffffffffffffffffffffffff".into(),
            member: s.pod_name(2),
        };
        let Verdict::Refused(why) = judge(Some(&planted), &me, Some(FOREIGN_SYSID)) else {
            panic!("the planted identity must be refused");
        };
        let why = why.to_string();
        assert!(
            why.contains(&format!("belongs to cluster {}", planted.owner()))
                && why.contains("not to pgset-fence-1/fence-1"),
            "{why}"
        );
        // Its pg_control carries the identity's system identifier in either byte order.
        let control = foreign_pg_control();
        assert_eq!(control.len(), PG_CONTROL_SIZE);
        let first: [u8; 8] = control[..8].try_into().unwrap();
        assert_eq!(u64::from_ne_bytes(first), FOREIGN_SYSID);
        assert_eq!(planted.system_identifier, FOREIGN_SYSID.to_string());
    }

    #[test]
    fn the_plant_and_inspect_scripts_agree_with_the_expected_listing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("fence-1-2");
        let json = "{\"format\": 1}\n";
        let sh = |script: String| {
            pgset_command::HostCommand::new("sh")
                .args(["-c", &script])
                .env("D", &dir)
                .env("IDENTITY", json)
                .quiet()
                .output()
                .unwrap()
        };
        let planted = sh(plant_script());
        assert!(planted.status.success(), "{}", planted.stderr);
        assert_eq!(
            std::fs::read(dir.join("global/pg_control")).unwrap(),
            foreign_pg_control()
        );
        let seen = sh(inspect_script());
        assert!(seen.status.success());
        assert_eq!(seen.stdout, expected_inspection(json));
        // Never over an existing directory.
        let again = sh(plant_script());
        assert_eq!(again.status.code(), Some(3));
        std::fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
        assert_ne!(
            sh(inspect_script()).stdout,
            expected_inspection(json),
            "a changed file shows"
        );
    }

    #[test]
    fn the_one_shot_pod_runs_as_the_members_do_on_the_data_volume() {
        for (mode, claim, want) in [
            (StorageMode::Shared, None, "fence-1-pvc"),
            (
                StorageMode::Templates,
                Some("data-fence-1-2"),
                "data-fence-1-2",
            ),
        ] {
            let s = spec(mode);
            let sts = pgset_deploy::statefulset::statefulset(&s);
            let template = sts.spec.as_ref().unwrap().template.spec.clone().unwrap();
            let pod = one_shot_pod(&sts, &s, "plant", claim, "true", vec![]).unwrap();
            let p = pod.spec.unwrap();
            assert_eq!(p.restart_policy.as_deref(), Some("Never"));
            assert_eq!(p.security_context, template.security_context);
            let c = &p.containers[0];
            assert_eq!(c.image.as_deref(), Some(s.postgres.image.as_str()));
            assert_eq!(
                c.security_context, template.containers[0].security_context,
                "{mode}"
            );
            let v = &p.volumes.as_ref().unwrap()[0];
            assert_eq!(v.persistent_volume_claim.as_ref().unwrap().claim_name, want);
            assert_eq!(
                c.volume_mounts.as_ref().unwrap()[0].mount_path,
                contract::DATA_MOUNT
            );
        }
    }

    fn rec(at: u64, holder: &str, rv: u32) -> (Duration, Observed) {
        (
            Duration::from_secs(at),
            Observed {
                holder: holder.into(),
                renew_time: Some(format!("t{rv}")),
                resource_version: Some(rv.to_string()),
            },
        )
    }

    #[test]
    fn a_lease_passes_on_by_release_or_by_expiry_only() {
        let d = Duration::from_secs(120);
        // Released by the old holder, then taken.
        let released = [rec(0, "old", 1), rec(3, "", 2), rec(5, "new", 3)];
        assert_eq!(
            judge_handover(&released, "old", "new", d),
            Ok(Handover::Released {
                after: Duration::from_secs(2)
            })
        );
        // Not renewed for the duration, then taken over.
        let expired = [rec(0, "old", 1), rec(8, "old", 2), rec(129, "new", 3)];
        assert_eq!(
            judge_handover(&expired, "old", "new", d),
            Ok(Handover::Expired {
                after: Duration::from_secs(121)
            })
        );
        // Taken over while the old holder's record was fresh: the fence was broken.
        let early = [rec(0, "old", 1), rec(8, "old", 2), rec(60, "new", 3)];
        let e = judge_handover(&early, "old", "new", d).unwrap_err();
        assert!(e.contains("before its 120 s duration"), "{e}");
        // Never taken, taken by a third pod, or taken before the watch saw the old holder.
        assert!(judge_handover(&[rec(0, "old", 1)], "old", "new", d).is_err());
        let third = [
            rec(0, "old", 1),
            rec(2, "", 2),
            rec(3, "x", 3),
            rec(4, "new", 4),
        ];
        assert!(
            judge_handover(&third, "old", "new", d)
                .unwrap_err()
                .contains("held by x")
        );
        assert!(judge_handover(&[rec(0, "new", 1)], "old", "new", d).is_err());
        assert!(judge_handover(&[rec(0, "", 1), rec(1, "new", 2)], "old", "new", d).is_err());
    }
}
