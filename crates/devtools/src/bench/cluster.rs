//! Live-cluster benchmarks: pgset's rollout against a bare StatefulSet of the same image, a
//! no-change re-deploy, replication lag, recovery after the master pod is deleted, and the
//! master-pod-delete and postgres-kill drills' RTO and re-join beside their targets.
//!
//! Everything runs in a temporary namespace (`pgset-bench-<suffix>`) that is deleted at the end,
//! with a cluster of its own of the same name (3 members, its own volumes), so the user's
//! cluster and data are never touched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, Pod};
use kube::api::{DeleteParams, Patch, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use pgset_deploy::apply::{ApplyMode, apply_params, deploy};
use pgset_deploy::readiness::pod_is_ready;
use pgset_deploy::rollout::{RolloutReport, step_lines, wait_for_rollout};
use pgset_deploy::teardown::{Purge, down};
use pgset_deploy::wait::{Listing, until_listing};
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec, contract};
use pgset_verify::{Options, Verifier, names};
use serde_json::json;

use crate::cli::{ClientArgs, SpecArgs};

/// Members of the benchmarked clusters.
const MEMBERS: i32 = 3;
/// Name of the bare StatefulSet.
const BARE: &str = "bare-postgres";
/// Limit of each rollout.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);
/// Rollout target: pgset's time over the bare StatefulSet's.
const ROLLOUT_RATIO_TARGET: f64 = 1.10;
/// Target for a re-deploy that changes nothing.
const REDEPLOY_TARGET: Duration = Duration::from_secs(3);

/// Runs the live-cluster benchmarks (skipped with a reason when no cluster is configured).
pub async fn run(spec: &SpecArgs, client: &ClientArgs) -> Result<()> {
    let named = client.kubeconfig.is_some()
        || std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty());
    if !named {
        println!("cluster benchmarks: skipped: needs KUBECONFIG (or --kubeconfig)");
        return Ok(());
    }
    let user_spec = spec.load(client).context("load the cluster spec")?;
    let kube = client.client().await.context("connect to the cluster")?;
    kube.apiserver_version()
        .await
        .context("reach the cluster's API server")?;

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let namespace = format!("pgset-bench-{nanos:08x}");
    let bench = bench_spec(&user_spec, &namespace).context("the benchmark's cluster spec")?;
    println!(
        "cluster benchmarks: {MEMBERS} members of {} in temporary namespace {namespace}",
        bench.postgres.image
    );
    Api::<Namespace>::all(kube.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await
        .with_context(|| format!("create namespace {namespace}"))?;
    let result = measure(&kube, client, &bench).await;
    let cleanup = clean_up(&kube, &bench).await;
    let results = result?;
    cleanup?;
    print_results(&results);
    Ok(())
}

/// The benchmarked cluster: the user's images and storage choices, its own name and namespace.
fn bench_spec(user: &ValidSpec, namespace: &str) -> pgset_spec::Result<ValidSpec> {
    let mut s = user.clone().into_inner();
    // Named like its namespace (unique per run), so its members always start from initdb,
    // even when an earlier run's directories remain on a shared export.
    s.name = namespace.to_string();
    s.namespace = namespace.to_string();
    s.replicas = MEMBERS;
    // Per-member NFS volumes need export directories made ahead on the NFS host; the shared
    // claim does not (the agent makes its directory), so without a StorageClass use shared.
    if s.storage.storage_class.is_none() {
        s.storage.mode = StorageMode::Shared;
    }
    s.validated()
}

/// What was measured.
struct Results {
    bare: Duration,
    pgset: Duration,
    redeploy: Duration,
    lag_ms: Option<f64>,
    recovery_s: Option<f64>,
    rejoin_s: Option<f64>,
    streaming_resumed_s: Option<f64>,
    failed_checks: Vec<String>,
    drills: Vec<pgset_drill::DrillReport>,
    /// The first deploy's timeline: each member's steps and when they began.
    timeline: Vec<String>,
}

/// The drills the cluster benchmark runs (their figures beside the targets).
const DRILLS: [pgset_drill::DrillName; 2] = [
    pgset_drill::DrillName::MasterPodDelete,
    pgset_drill::DrillName::PostgresKill,
];

async fn measure(kube: &Client, client_args: &ClientArgs, bench: &ValidSpec) -> Result<Results> {
    let bare = bare_rollout(kube, bench)
        .await
        .context("bare StatefulSet rollout")?;
    eprintln!(
        "    bare StatefulSet: {MEMBERS} Ready in {:.1}s",
        bare.as_secs_f64()
    );
    delete_bare(kube, bench).await?;

    create_volumes(kube, client_args, bench).await?;
    let started = Instant::now();
    let first = deploy_and_wait(kube, bench)
        .await
        .context("deploy the bench cluster")?;
    let verifier = Verifier::new(kube.clone(), bench.clone(), Options::new(bench));
    let streaming = verifier.check_streaming_until(ROLLOUT_TIMEOUT).await;
    if streaming.verdict != pgset_verify::Verdict::Pass {
        bail!(
            "the bench cluster did not stream to every replica: {}",
            streaming.message
        );
    }
    let pgset = started.elapsed();
    eprintln!(
        "    pgset: {MEMBERS} Ready and streaming in {:.1}s",
        pgset.as_secs_f64()
    );

    let started = Instant::now();
    deploy_and_wait(kube, bench)
        .await
        .context("re-deploy the bench cluster")?;
    let redeploy = started.elapsed();

    let mut options = Options::new(bench);
    options.disruptive = true;
    options.timeout = ROLLOUT_TIMEOUT;
    let report = Verifier::new(kube.clone(), bench.clone(), options)
        .run()
        .await;
    let write = report.measurements(names::REPLICATED_WRITE);
    let recovery = report.measurements(names::MASTER_RECOVERY);
    let mut drills = Vec::new();
    for d in DRILLS {
        eprintln!("    drill {d}");
        drills.push(
            pgset_drill::live::run(
                kube.clone(),
                &pgset_drill::live::LiveOptions::new(bench.clone()),
                d,
            )
            .await
            .with_context(|| format!("drill {d}"))?,
        );
    }
    Ok(Results {
        bare,
        pgset,
        timeline: first.timeline.lines(),
        redeploy,
        lag_ms: write.lag_ms,
        recovery_s: recovery.recovery_s,
        rejoin_s: recovery.rejoin_s,
        streaming_resumed_s: recovery.streaming_resumed_s,
        failed_checks: report
            .failed()
            .map(|c| format!("{}: {}", c.name, c.message))
            .collect(),
        drills,
    })
}

/// Applies the cluster and waits for its rollout, as `cargo xtask deploy` does.
async fn deploy_and_wait(kube: &Client, spec: &ValidSpec) -> Result<RolloutReport> {
    let quiet = &mut |_: &str| {};
    deploy(kube, spec, ApplyMode::Apply, quiet).await?;
    Ok(wait_for_rollout(kube, spec, MEMBERS, ROLLOUT_TIMEOUT, &mut step_lines(quiet)).await?)
}

fn print_results(r: &Results) {
    let ratio = r.pgset.as_secs_f64() / r.bare.as_secs_f64().max(f64::EPSILON);
    let verdict = |ok: bool| if ok { "ok" } else { "OVER TARGET" };
    println!(
        "  {:<52} {:>8.1}s",
        "bare StatefulSet (initdb + postgres), 3 Ready",
        r.bare.as_secs_f64()
    );
    println!(
        "  {:<52} {:>8.1}s  {ratio:.2}x bare (target <= {ROLLOUT_RATIO_TARGET}x) {}",
        "pgset deploy, 3 Ready + streaming",
        r.pgset.as_secs_f64(),
        verdict(ratio <= ROLLOUT_RATIO_TARGET)
    );
    println!("    where the deploy's time went (seconds since the apply; each step's length):");
    for l in &r.timeline {
        println!("      {l}");
    }
    println!(
        "  {:<52} {:>8.1}s  (target <= {}s) {}",
        "no-change re-deploy",
        r.redeploy.as_secs_f64(),
        REDEPLOY_TARGET.as_secs(),
        verdict(r.redeploy <= REDEPLOY_TARGET)
    );
    let or_dash =
        |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
    println!(
        "  {:<52} {:>9}",
        "replication lag (commit -> first sight, slowest)",
        or_dash(r.lag_ms, "ms")
    );
    println!(
        "  {:<52} {:>9}  (streaming again after {}: {} after the master was Ready)",
        "recovery after master pod deletion",
        or_dash(r.recovery_s, "s"),
        or_dash(r.streaming_resumed_s, "s"),
        or_dash(r.rejoin_s, "s")
    );
    for f in &r.failed_checks {
        println!("  check failed during the benchmark: {f}");
    }
    println!(
        "  {:<31} {:<24} {:<24} {:>8}",
        "drill", "writes accepted again", "streaming after ready", "re-join"
    );
    for l in super::drills::lines(&r.drills, &DRILLS) {
        println!("  {l}");
    }
}

/// A 3-pod StatefulSet of the same image that only initialises and starts postgres (the image's
/// own entrypoint), ready when it accepts TCP connections, probed every second.
fn bare_statefulset(spec: &ClusterSpec) -> Result<StatefulSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": BARE, "namespace": spec.namespace},
        "spec": {
            "replicas": MEMBERS,
            "serviceName": BARE,
            // The floor starts its pods as the cluster does.
            "podManagementPolicy": spec.pod_management_policy.as_str(),
            "selector": {"matchLabels": {"app": BARE}},
            "template": {
                "metadata": {"labels": {"app": BARE}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "postgres",
                        "image": spec.postgres.image,
                        "env": [
                            {"name": "POSTGRES_HOST_AUTH_METHOD", "value": "trust"},
                            {"name": "PGDATA", "value": "/var/lib/postgresql/bench/data"}
                        ],
                        "ports": [{"containerPort": contract::POSTGRES_PORT}],
                        "readinessProbe": {
                            "tcpSocket": {"port": contract::POSTGRES_PORT},
                            "periodSeconds": 1,
                            "failureThreshold": 1
                        },
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/bench"}]
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}]
                }
            }
        }
    }))?)
}

async fn bare_rollout(kube: &Client, spec: &ValidSpec) -> Result<Duration> {
    let sts_api: Api<StatefulSet> = Api::namespaced(kube.clone(), &spec.namespace);
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &spec.namespace);
    let started = Instant::now();
    sts_api
        .create(&PostParams::default(), &bare_statefulset(spec)?)
        .await
        .context("create the bare StatefulSet")?;
    let mut listing = Listing::default();
    let all_ready = |pods: &BTreeMap<String, Pod>| {
        pods.values().filter(|p| pod_is_ready(p)).count() == MEMBERS as usize
    };
    let watching = until_listing(
        pods,
        watcher::Config::default().labels(&format!("app={BARE}")),
        &mut listing,
        all_ready,
    );
    match tokio::time::timeout(ROLLOUT_TIMEOUT, watching).await {
        Ok(watched) => {
            watched.context("watch the bare pods")?;
            Ok(started.elapsed())
        }
        Err(_) => {
            let ready = listing.objects.values().filter(|p| pod_is_ready(p)).count();
            bail!("{ready} of {MEMBERS} bare pods Ready after {ROLLOUT_TIMEOUT:?}")
        }
    }
}

async fn delete_bare(kube: &Client, spec: &ValidSpec) -> Result<()> {
    let sts_api: Api<StatefulSet> = Api::namespaced(kube.clone(), &spec.namespace);
    sts_api
        .delete(BARE, &DeleteParams::foreground())
        .await
        .context("delete the bare StatefulSet")?;
    Ok(())
}

/// The bench cluster's PersistentVolumes (shared mode): the spec's NFS volumes renamed after the
/// bench namespace, so they never collide with the user's `pv1..pvN`.
fn bench_volumes(spec: &ValidSpec, server: &str) -> Vec<PersistentVolume> {
    pgset_nfs::persistent_volumes(spec, server)
        .into_iter()
        .map(|mut pv| {
            let name = pv.metadata.name.clone().unwrap_or_default();
            pv.metadata.name = Some(format!("{}-{}-{name}", spec.name, spec.namespace));
            pv
        })
        .collect()
}

async fn create_volumes(kube: &Client, client_args: &ClientArgs, spec: &ValidSpec) -> Result<()> {
    if spec.storage.mode != StorageMode::Shared {
        return Ok(());
    }
    let server = match &spec.nfs.server {
        Some(s) => s.clone(),
        None => {
            let addresses = pgset_nfs::probe_addresses(&pgset_command::Executor::default())
                .context("probe this host's addresses")?;
            let nodes = crate::nfs::node_addresses(client_args).await?;
            pgset_nfs::volume_server_address(spec, &addresses, &nodes)
                .context("cannot tell the NFS server's address: pass --nfs-server ADDR")?
        }
    };
    let pvs: Api<PersistentVolume> = Api::all(kube.clone());
    for pv in bench_volumes(spec, &server) {
        let name = pv.metadata.name.clone().unwrap_or_default();
        pvs.patch(&name, &apply_params(ApplyMode::Apply), &Patch::Apply(&pv))
            .await
            .with_context(|| format!("apply PersistentVolume {name}"))?;
    }
    Ok(())
}

/// Tears the bench cluster down with its claims and volumes, removes its member directories
/// from the export when this host holds it, and deletes the namespace.
async fn clean_up(kube: &Client, spec: &ValidSpec) -> Result<()> {
    let quiet = &mut |_: &str| {};
    let down_result = down(kube, spec, Purge::Everything, ROLLOUT_TIMEOUT, quiet).await;
    let pvs: Api<PersistentVolume> = Api::all(kube.clone());
    let mut leftovers: BTreeMap<String, String> = BTreeMap::new();
    for pv in bench_volumes(spec, "-") {
        let name = pv.metadata.name.unwrap_or_default();
        if let Err(e) = pvs.delete(&name, &DeleteParams::default()).await
            && !matches!(&e, kube::Error::Api(s) if s.code == 404)
        {
            leftovers.insert(format!("PersistentVolume {name}"), e.to_string());
        }
    }
    if spec.storage.mode == StorageMode::Shared && spec.cluster_export_dir().is_dir() {
        for i in 0..=MEMBERS {
            let dir = spec.member_export_dir(i);
            if dir.is_dir()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                leftovers.insert(dir.display().to_string(), e.to_string());
            }
        }
    } else if spec.storage.mode == StorageMode::Shared {
        eprintln!(
            "    note: the bench members' directories {}/{}-N stay on the NFS export (not on this host)",
            spec.cluster_export_dir().display(),
            spec.name
        );
    }
    Api::<Namespace>::all(kube.clone())
        .delete(&spec.namespace, &DeleteParams::default())
        .await
        .with_context(|| format!("delete namespace {}", spec.namespace))?;
    down_result.context("tear down the bench cluster")?;
    if !leftovers.is_empty() {
        bail!("left behind: {leftovers:?}");
    }
    Ok(())
}
