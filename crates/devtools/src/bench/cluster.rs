//! Live-cluster benchmarks: pgset's rollout at 3 and 7 members against the floor (a bare
//! OrderedReady StatefulSet of the same image running only initdb and postgres), 7 members with
//! `podManagementPolicy: Parallel` against the OrderedReady floor of 7, a no-change re-deploy
//! and a no-change `up`, replication lag, recovery after the master pod is deleted, and the
//! master-pod-delete and postgres-kill drills' RTO and re-join beside their targets. Each
//! measured rollout's per-member timeline is printed beside the figures.
//!
//! Everything runs in a temporary namespace (`pgset-bench-<suffix>`) with clusters of its own
//! (one per measured rollout, each torn down before the next), so the user's cluster and data
//! are never touched; the only exception is the no-change `up`, which re-runs `up` on the
//! user's own cluster when it is up and was brought up from this host ([`no_change_up`]).
//! Everything the benchmark made (the namespace, the clusters' volumes, the member isolation
//! policies) is removed at the end, also when a measurement failed.

mod no_change_up;
mod plan;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use pgset_deploy::apply::{ApplyMode, apply_params, deploy};
use pgset_deploy::readiness::pod_is_ready;
use pgset_deploy::rollout::{RolloutReport, step_lines, wait_for_rollout};
use pgset_deploy::teardown::{Purge, down};
use pgset_deploy::wait::{Listing, until_listing};
use pgset_spec::{PodManagementPolicy, StorageMode, ValidSpec, contract};
use pgset_verify::{Options, Verifier, names};
use serde_json::json;

use crate::cli::{ClientArgs, SpecArgs};
use plan::{LARGE, PARALLEL_RATIO_TARGET, ROLLOUT_RATIO_TARGET, Run, SMALL};

/// Name of the bare StatefulSet.
const BARE: &str = "bare-postgres";
/// Limit of each rollout.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(900);
/// Limit of the removal of one measured cluster or bare StatefulSet.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(300);
/// Target for a re-deploy that changes nothing.
const REDEPLOY_TARGET: Duration = Duration::from_secs(3);

/// Checks `--rounds` (before anything is read or made).
pub fn check_rounds(rounds: u32) -> Result<u32> {
    plan::check_rounds(rounds).map_err(anyhow::Error::msg)
}

/// Runs the live-cluster benchmarks (skipped with a reason when no cluster is configured).
pub async fn run(spec: &SpecArgs, client: &ClientArgs, rounds: u32) -> Result<()> {
    let rounds = check_rounds(rounds)?;
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
    // Every spec is checked before anything is made.
    for (round, run) in plan::run_order(rounds) {
        if let Run::Pgset { members, policy } = run {
            let name = run.cluster_name(round).unwrap_or_default();
            plan::bench_spec(&user_spec, &namespace, &name, members, policy)
                .with_context(|| format!("the benchmark's cluster spec {name}"))?;
        }
    }
    // First, while the node runs nothing of the benchmark's.
    let mut results = Results {
        up: measure_up(&kube, client, &user_spec).await,
        ..Results::default()
    };
    println!(
        "cluster benchmarks: {SMALL} and {LARGE} members of {}, the agent delivered by {} (agent.delivery), {rounds} round(s), in temporary namespace {namespace}",
        user_spec.postgres.image,
        user_spec.agent.delivery.as_str()
    );
    Api::<Namespace>::all(kube.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await
        .with_context(|| format!("create namespace {namespace}"))?;
    let mut made = Vec::new();
    let measured = measure(
        &kube,
        client,
        &user_spec,
        &namespace,
        rounds,
        &mut made,
        &mut results,
    )
    .await;
    let cleanup = clean_up(&kube, &namespace, &made).await;
    // What was measured is printed also when a later measurement failed.
    print_results(&results);
    measured?;
    cleanup?;
    Ok(())
}

/// The no-change `up` figure.
#[derive(Debug, Default)]
enum UpFigure {
    /// Not attempted.
    #[default]
    NotRun,
    /// Skipped, with the reason.
    Skipped(String),
    /// Both runs' times and the cluster's answer time.
    Measured {
        first: Duration,
        second: Duration,
        answer: Duration,
    },
    /// A run failed.
    Failed(String),
}

/// What was measured (as far as the benchmark got).
#[derive(Default)]
struct Results {
    /// Each measured rollout, in the order run.
    times: Vec<(Run, Duration)>,
    /// Each pgset rollout's timeline block.
    timelines: Vec<Vec<String>>,
    redeploy: Option<Duration>,
    up: UpFigure,
    lag_ms: Option<f64>,
    recovery_s: Option<f64>,
    rejoin_s: Option<f64>,
    streaming_resumed_s: Option<f64>,
    failed_checks: Vec<String>,
    drills: Vec<pgset_drill::DrillReport>,
}

impl Results {
    fn of(&self, run: Run) -> Vec<Duration> {
        self.times
            .iter()
            .filter(|(r, _)| *r == run)
            .map(|(_, t)| *t)
            .collect()
    }
}

/// The drills the cluster benchmark runs (their figures beside the targets): the master
/// restarted in place, then the failover drills, in which a replica takes over.
const DRILLS: [pgset_drill::DrillName; 4] = [
    pgset_drill::DrillName::MasterPodDelete,
    pgset_drill::DrillName::PostgresKill,
    pgset_drill::DrillName::MasterFreeze,
    pgset_drill::DrillName::MasterIsolated,
];

/// The no-change `up` on the user's cluster, when this host is where it was brought up.
async fn measure_up(kube: &Client, client_args: &ClientArgs, user: &ValidSpec) -> UpFigure {
    let facts = match no_change_up::facts(kube, user).await {
        Ok(f) => f,
        Err(e) => return UpFigure::Skipped(format!("{e:#}")),
    };
    let binary = match no_change_up::skip_reason(user, &facts) {
        Ok(b) => b,
        Err(why) => return UpFigure::Skipped(why),
    };
    eprintln!(
        "    no-change `up`: {} up, twice, on cluster {} in namespace {}",
        binary.display(),
        user.name,
        user.namespace
    );
    let logs = match tempfile::Builder::new().prefix("pgset-bench-up-").tempdir() {
        Ok(d) => d.keep(),
        Err(e) => return UpFigure::Failed(format!("make a directory for the logs: {e}")),
    };
    let answer = match no_change_up::answer_time(kube, &user.namespace).await {
        Ok(a) => a,
        Err(e) => return UpFigure::Failed(format!("{e:#}")),
    };
    match no_change_up::run_twice(&binary, user, client_args, &logs).await {
        Ok((first, second)) => {
            eprintln!("    no-change `up` logs: {}", logs.display());
            UpFigure::Measured {
                first,
                second,
                answer,
            }
        }
        Err(e) => UpFigure::Failed(format!("{e:#}")),
    }
}

async fn measure(
    kube: &Client,
    client_args: &ClientArgs,
    user: &ValidSpec,
    namespace: &str,
    rounds: u32,
    made: &mut Vec<ValidSpec>,
    r: &mut Results,
) -> Result<()> {
    let order = plan::run_order(rounds);
    let mut kept: Option<ValidSpec> = None;
    for (i, (round, run)) in order.iter().copied().enumerate() {
        match run {
            Run::Bare { members } => {
                let took = bare_rollout(kube, namespace, &user.postgres.image, members)
                    .await
                    .with_context(|| format!("bare StatefulSet rollout of {members}"))?;
                eprintln!(
                    "    round {round}: bare StatefulSet: {members} Ready in {:.1}s",
                    took.as_secs_f64()
                );
                r.times.push((run, took));
                delete_bare(kube, namespace).await?;
            }
            Run::Pgset { members, policy } => {
                let name = run.cluster_name(round).unwrap_or_default();
                let spec = plan::bench_spec(user, namespace, &name, members, policy)?;
                made.push(spec.clone());
                create_volumes(kube, client_args, &spec).await?;
                let started = Instant::now();
                let report = deploy_and_wait(kube, &spec)
                    .await
                    .with_context(|| format!("deploy bench cluster {name}"))?;
                let verifier = Verifier::new(kube.clone(), spec.clone(), Options::new(&spec));
                let streaming = verifier.check_streaming_until(ROLLOUT_TIMEOUT).await;
                if streaming.verdict != pgset_verify::Verdict::Pass {
                    bail!(
                        "bench cluster {name} did not stream to every replica: {}",
                        streaming.message
                    );
                }
                let took = started.elapsed();
                eprintln!(
                    "    round {round}: pgset ({policy}): {members} Ready and streaming in {:.1}s",
                    took.as_secs_f64()
                );
                r.times.push((run, took));
                r.timelines.push(plan::timeline_block(
                    run,
                    round,
                    took,
                    &report.timeline.lines(),
                ));
                if i + 1 == order.len() {
                    kept = Some(spec);
                } else {
                    tear_down(kube, &spec)
                        .await
                        .with_context(|| format!("tear down bench cluster {name}"))?;
                }
            }
        }
    }
    let bench = kept.context("the run order ends with no cluster to measure on")?;

    let started = Instant::now();
    deploy_and_wait(kube, &bench)
        .await
        .context("re-deploy the bench cluster")?;
    r.redeploy = Some(started.elapsed());

    let mut options = Options::new(&bench);
    options.disruptive = true;
    options.timeout = ROLLOUT_TIMEOUT;
    let report = Verifier::new(kube.clone(), bench.clone(), options)
        .run()
        .await;
    let write = report.measurements(names::REPLICATED_WRITE);
    let recovery = report.measurements(names::MASTER_RECOVERY);
    r.lag_ms = write.lag_ms;
    r.recovery_s = recovery.recovery_s;
    r.rejoin_s = recovery.rejoin_s;
    r.streaming_resumed_s = recovery.streaming_resumed_s;
    r.failed_checks = report
        .failed()
        .map(|c| format!("{}: {}", c.name, c.message))
        .collect();
    for d in DRILLS {
        eprintln!("    drill {d}");
        r.drills.push(
            pgset_drill::live::run(
                kube.clone(),
                &pgset_drill::live::LiveOptions::new(bench.clone()),
                d,
            )
            .await
            .with_context(|| format!("drill {d}"))?,
        );
    }
    Ok(())
}

/// Applies the cluster and waits for its rollout, as `cargo xtask deploy` does.
async fn deploy_and_wait(kube: &Client, spec: &ValidSpec) -> Result<RolloutReport> {
    let quiet = &mut |_: &str| {};
    deploy(kube, spec, ApplyMode::Apply, quiet).await?;
    Ok(wait_for_rollout(
        kube,
        spec,
        spec.replicas,
        ROLLOUT_TIMEOUT,
        &mut step_lines(quiet),
    )
    .await?)
}

/// The figures beside their targets, then each rollout's timeline; a figure not measured says so.
fn result_lines(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let ordered = PodManagementPolicy::OrderedReady;
    for members in [SMALL, LARGE] {
        let bare = Run::Bare { members };
        out.push(plan::floor_line(bare, &r.of(bare)));
        let pgset = Run::Pgset {
            members,
            policy: ordered,
        };
        out.push(plan::ratio_line(
            pgset,
            &r.of(pgset),
            bare,
            &r.of(bare),
            ROLLOUT_RATIO_TARGET,
        ));
    }
    let parallel = Run::Pgset {
        members: LARGE,
        policy: PodManagementPolicy::Parallel,
    };
    let floor = Run::Bare { members: LARGE };
    out.push(plan::ratio_line(
        parallel,
        &r.of(parallel),
        floor,
        &r.of(floor),
        PARALLEL_RATIO_TARGET,
    ));
    out.push(match r.redeploy {
        Some(t) => format!(
            "{:<58} {:>7.1}s  (target <= {}s) {}",
            "no-change re-deploy (apply + wait, in process)",
            t.as_secs_f64(),
            REDEPLOY_TARGET.as_secs(),
            plan::verdict(t <= REDEPLOY_TARGET)
        ),
        None => format!(
            "{:<58} {:>8}  not measured",
            "no-change re-deploy (apply + wait, in process)", "-"
        ),
    });
    let up = "no-change `up`";
    out.push(match &r.up {
        UpFigure::NotRun => plan::skip_line(up, "not reached"),
        UpFigure::Skipped(why) => plan::skip_line(up, why),
        UpFigure::Failed(why) => format!("{up}: FAILED: {why}"),
        UpFigure::Measured {
            first,
            second,
            answer,
        } => format!(
            "{}  (the first took {:.1}s)",
            plan::no_change_up_line(*second, *answer),
            first.as_secs_f64()
        ),
    });
    let or_dash =
        |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
    out.push(format!(
        "{:<58} {:>8}",
        "replication lag (commit -> first sight, slowest)",
        or_dash(r.lag_ms, "ms")
    ));
    out.push(format!(
        "{:<58} {:>8}  (streaming again after {}: {} after the master was Ready)",
        "recovery after master pod deletion",
        or_dash(r.recovery_s, "s"),
        or_dash(r.streaming_resumed_s, "s"),
        or_dash(r.rejoin_s, "s")
    ));
    for f in &r.failed_checks {
        out.push(format!("check failed during the benchmark: {f}"));
    }
    if !r.drills.is_empty() {
        out.push(format!(
            "{:<31} {:<24} {:<24} {:>8}",
            "drill", "writes accepted again", "streaming after ready", "re-join"
        ));
        let (failover, plain): (Vec<_>, Vec<_>) = DRILLS
            .into_iter()
            .partition(|d| pgset_drill::DrillName::FAILOVER.contains(d));
        out.extend(super::drills::lines(&r.drills, &plain));
        out.push(format!(
            "{:<31} {:<24} {:>10} {:<16} {:>12} {:<22} {:>10}",
            "failover drill",
            "writes accepted again",
            "new master",
            "late commits",
            "RPO (rows)",
            "master",
            "kept bytes"
        ));
        out.extend(super::drills::failover_lines(&r.drills, &failover));
    }
    if !r.timelines.is_empty() {
        out.push("where each pgset rollout's time went:".to_string());
        for block in &r.timelines {
            out.extend(block.iter().map(|l| format!("  {l}")));
        }
    }
    out
}

fn print_results(r: &Results) {
    for l in result_lines(r) {
        println!("  {l}");
    }
}

/// A StatefulSet of `members` pods of `image` that only initialises and starts postgres (the
/// image's own entrypoint), started one after the other (OrderedReady), ready when it accepts
/// TCP connections, probed every second: the floor.
fn bare_statefulset(namespace: &str, image: &str, members: i32) -> Result<StatefulSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": BARE, "namespace": namespace},
        "spec": {
            "replicas": members,
            "serviceName": BARE,
            "podManagementPolicy": PodManagementPolicy::OrderedReady.as_str(),
            "selector": {"matchLabels": {"app": BARE}},
            "template": {
                "metadata": {"labels": {"app": BARE}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "postgres",
                        "image": image,
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

async fn bare_rollout(
    kube: &Client,
    namespace: &str,
    image: &str,
    members: i32,
) -> Result<Duration> {
    let sts_api: Api<StatefulSet> = Api::namespaced(kube.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let started = Instant::now();
    sts_api
        .create(
            &PostParams::default(),
            &bare_statefulset(namespace, image, members)?,
        )
        .await
        .context("create the bare StatefulSet")?;
    let mut listing = Listing::default();
    let all_ready = |pods: &BTreeMap<String, Pod>| {
        pods.values().filter(|p| pod_is_ready(p)).count() == members as usize
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
            bail!("{ready} of {members} bare pods Ready after {ROLLOUT_TIMEOUT:?}")
        }
    }
}

/// Deletes the bare StatefulSet and waits until it and its pods are gone, so the next
/// measured rollout has the node to itself.
async fn delete_bare(kube: &Client, namespace: &str) -> Result<()> {
    let sts_api: Api<StatefulSet> = Api::namespaced(kube.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    match sts_api.delete(BARE, &DeleteParams::foreground()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("delete the bare StatefulSet"),
    }
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    loop {
        let sts = sts_api
            .get_opt(BARE)
            .await
            .context("read the bare StatefulSet")?;
        let left = pods
            .list(&ListParams::default().labels(&format!("app={BARE}")))
            .await
            .context("list the bare pods")?
            .items
            .len();
        if sts.is_none() && left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the bare StatefulSet and its pods were not gone after {TEARDOWN_TIMEOUT:?} ({left} pod(s) left)"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A bench cluster's PersistentVolumes (shared mode): the spec's NFS volumes renamed after the
/// bench cluster and namespace, so they never collide with the user's volumes.
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

/// Tears one bench cluster down with its claims, volumes and isolation policy, and removes its
/// member directories from the export when this host holds it. A second run changes nothing.
async fn tear_down(kube: &Client, spec: &ValidSpec) -> Result<()> {
    let quiet = &mut |_: &str| {};
    let down_result = down(kube, spec, Purge::Everything, TEARDOWN_TIMEOUT, quiet).await;
    let mut leftovers: BTreeMap<String, String> = BTreeMap::new();
    // `down` removes the policy last: a teardown that failed before it still removes it.
    if let Err(e) = pgset_deploy::isolation::delete(kube, spec, quiet).await {
        leftovers.insert(
            format!(
                "ValidatingAdmissionPolicy {}",
                pgset_deploy::isolation::policy_name(spec)
            ),
            e.to_string(),
        );
    }
    let pvs: Api<PersistentVolume> = Api::all(kube.clone());
    for pv in bench_volumes(spec, "-") {
        let name = pv.metadata.name.unwrap_or_default();
        if let Err(e) = pvs.delete(&name, &DeleteParams::default()).await
            && !matches!(&e, kube::Error::Api(s) if s.code == 404)
        {
            leftovers.insert(format!("PersistentVolume {name}"), e.to_string());
        }
    }
    if spec.storage.mode == StorageMode::Shared && spec.cluster_export_dir().is_dir() {
        for i in 0..=spec.replicas {
            let dir = spec.member_export_dir(i);
            if dir.is_dir()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                leftovers.insert(dir.display().to_string(), e.to_string());
            }
        }
        // The cluster's own directory goes once empty (`remove_dir` never removes contents).
        let _ = std::fs::remove_dir(spec.cluster_export_dir());
    } else if spec.storage.mode == StorageMode::Shared {
        eprintln!(
            "    note: the bench members' directories {}/{}-N stay on the NFS export (not on this host)",
            spec.cluster_export_dir().display(),
            spec.name
        );
    }
    down_result.with_context(|| format!("tear down bench cluster {}", spec.name))?;
    if !leftovers.is_empty() {
        bail!("left behind: {leftovers:?}");
    }
    Ok(())
}

/// Whether `pv` belongs to a claim of `namespace`.
fn claimed_in(pv: &PersistentVolume, namespace: &str) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|c| c.namespace.as_deref())
        == Some(namespace)
}

/// Removes everything the benchmark made, whatever failed before: each bench cluster (again;
/// idempotent), the volumes a StorageClass provisioned for claims of the bench namespace (the
/// namespace is this run's own, so they are too), and the namespace. Every step runs; the
/// errors are reported together.
async fn clean_up(kube: &Client, namespace: &str, made: &[ValidSpec]) -> Result<()> {
    let mut errors = Vec::new();
    for spec in made {
        if let Err(e) = tear_down(kube, spec).await {
            errors.push(format!("{e:#}"));
        }
    }
    if let Err(e) = delete_bare(kube, namespace).await {
        errors.push(format!("{e:#}"));
    }
    let pvs: Api<PersistentVolume> = Api::all(kube.clone());
    match pvs.list(&ListParams::default()).await {
        Ok(list) => {
            for pv in list.items.iter().filter(|pv| claimed_in(pv, namespace)) {
                let name = pv.metadata.name.clone().unwrap_or_default();
                if let Err(e) = pvs.delete(&name, &DeleteParams::default()).await
                    && !matches!(&e, kube::Error::Api(s) if s.code == 404)
                {
                    errors.push(format!("delete PersistentVolume {name}: {e}"));
                }
            }
        }
        Err(e) => errors.push(format!("list PersistentVolumes: {e}")),
    }
    if let Err(e) = Api::<Namespace>::all(kube.clone())
        .delete(namespace, &DeleteParams::default())
        .await
    {
        errors.push(format!("delete namespace {namespace}: {e}"));
    }
    if !errors.is_empty() {
        bail!(
            "cleaning up after the benchmark left something behind (delete it by hand): {}",
            errors.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::ClusterSpec;

    const NS: &str = "pgset-bench-0000abcd";

    #[test]
    fn the_floor_is_an_ordered_statefulset_of_bare_postgres_probed_every_second() {
        for members in [SMALL, LARGE] {
            let sts = bare_statefulset(NS, "postgres:18", members).unwrap();
            let spec = sts.spec.unwrap();
            assert_eq!(spec.replicas, Some(members));
            assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
            let pod = spec.template.spec.unwrap();
            let c = &pod.containers[0];
            assert_eq!(c.image.as_deref(), Some("postgres:18"));
            let probe = c.readiness_probe.as_ref().unwrap();
            assert_eq!(probe.period_seconds, Some(1));
            assert_eq!(
                probe.tcp_socket.as_ref().unwrap().port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                    contract::POSTGRES_PORT
                ))
            );
            // No agent, no volume claim: only initdb and postgres.
            assert_eq!(pod.containers.len(), 1);
            assert!(pod.init_containers.is_none());
            assert!(spec.volume_claim_templates.is_none());
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn measured() -> Results {
        let ordered = PodManagementPolicy::OrderedReady;
        Results {
            times: vec![
                (Run::Bare { members: 7 }, secs(100)),
                (
                    Run::Pgset {
                        members: 7,
                        policy: ordered,
                    },
                    secs(108),
                ),
                (
                    Run::Pgset {
                        members: 7,
                        policy: PodManagementPolicy::Parallel,
                    },
                    secs(55),
                ),
                (Run::Bare { members: 3 }, secs(40)),
                (
                    Run::Pgset {
                        members: 3,
                        policy: ordered,
                    },
                    secs(50),
                ),
            ],
            timelines: vec![plan::timeline_block(
                Run::Pgset {
                    members: 3,
                    policy: ordered,
                },
                1,
                secs(50),
                &["b-0: +0.0s scheduled (2.0s) → +2.0s Ready".into()],
            )],
            redeploy: Some(Duration::from_millis(1_500)),
            up: UpFigure::Skipped("no mount-probe proof".into()),
            ..Results::default()
        }
    }

    #[test]
    fn each_rollout_figure_stands_beside_its_target_with_the_up_skip_and_the_timelines() {
        let lines = result_lines(&measured());
        let find = |start: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in {lines:#?}"))
                .clone()
        };
        assert!(
            find("pgset deploy, 3 Ready + streaming, OrderedReady")
                .contains("1.25x bare 3 (target <= 1.10x) OVER TARGET")
        );
        assert!(
            find("pgset deploy, 7 Ready + streaming, OrderedReady")
                .contains("1.08x bare 7 (target <= 1.10x) ok")
        );
        assert!(
            find("pgset deploy, 7 Ready + streaming, Parallel")
                .contains("0.55x bare 7 (target <= 0.60x) ok")
        );
        assert!(find("bare StatefulSet (initdb + postgres), 7 Ready").contains("100.0s"));
        assert!(find("no-change re-deploy").contains("1.5s  (target <= 3s) ok"));
        assert_eq!(
            find("no-change `up`"),
            "no-change `up`: skipped: no mount-probe proof"
        );
        let at = lines
            .iter()
            .position(|l| l == "where each pgset rollout's time went:")
            .unwrap();
        assert_eq!(
            lines[at + 1..],
            [
                "  pgset deploy, 3 Ready + streaming, OrderedReady (round 1): 50.0s; seconds since the apply, each step's length in brackets:",
                "    b-0: +0.0s scheduled (2.0s) → +2.0s Ready",
            ]
        );
    }

    #[test]
    fn a_benchmark_that_stopped_early_says_which_figures_were_not_measured() {
        let r = Results {
            times: vec![(Run::Bare { members: 7 }, secs(100))],
            ..Results::default()
        };
        let lines = result_lines(&r);
        assert!(
            lines.iter().any(
                |l| l.starts_with("pgset deploy, 7 Ready + streaming, Parallel")
                    && l.contains("not measured (target <= 0.60x bare 7)")
            ),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(
                |l| l.starts_with("bare StatefulSet (initdb + postgres), 3 Ready")
                    && l.contains("not measured")
            ),
            "{lines:#?}"
        );
        assert!(lines.contains(&"no-change `up`: skipped: not reached".to_string()));
        assert!(!lines.iter().any(|l| l.starts_with("where each")));
    }

    #[test]
    fn a_measured_no_change_up_shows_the_second_run_against_five_seconds_plus_the_answer() {
        let r = Results {
            up: UpFigure::Measured {
                first: secs(9),
                second: Duration::from_millis(4_200),
                answer: Duration::from_millis(20),
            },
            ..Results::default()
        };
        let lines = result_lines(&r);
        let up = lines
            .iter()
            .find(|l| l.starts_with("no-change `up`"))
            .unwrap();
        assert!(
            up.contains(
                "4.2s  (target <= 5s + 0.02s cluster answer = 5.02s) ok  (the first took 9.0s)"
            ),
            "{up}"
        );
    }

    fn pv(name: &str, claim_ns: Option<&str>) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": match claim_ns {
                Some(ns) => json!({"claimRef": {"namespace": ns, "name": "data-x-0"}}),
                None => json!({}),
            }
        }))
        .unwrap()
    }

    #[test]
    fn only_volumes_claimed_in_the_bench_namespace_are_the_benchmarks_to_remove() {
        assert!(claimed_in(&pv("pvc-1", Some(NS)), NS));
        assert!(!claimed_in(&pv("pvc-2", Some("default")), NS));
        assert!(!claimed_in(&pv("pv1", None), NS));
    }

    /// A mock API server that answers from `answer(method, path)` and records each request as
    /// `METHOD path`.
    fn mock_client(
        answer: fn(&str, &str) -> (u16, serde_json::Value),
    ) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = calls.clone();
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let (status, body) = answer(&method, &path);
                recorded.lock().unwrap().push(format!("{method} {path}"));
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, "default"), calls)
    }

    fn status(code: u16, message: &str) -> (u16, serde_json::Value) {
        (
            code,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                   "message": message, "reason": "", "code": code}),
        )
    }

    /// The API server of a cluster whose StatefulSet cannot be read (the teardown fails at its
    /// first request) and that holds one volume provisioned for a claim of the bench namespace
    /// and one of another namespace.
    fn failing_teardown(method: &str, path: &str) -> (u16, serde_json::Value) {
        let pvs = "/api/v1/persistentvolumes";
        let policies = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies";
        let bindings = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings";
        let bare = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{BARE}");
        match (method, path) {
            ("GET", p)
                if p == format!("/apis/apps/v1/namespaces/{NS}/statefulsets/pgset3-ordered-1") =>
            {
                status(500, "etcdserver: request timed out")
            }
            ("DELETE", p) if p.starts_with(policies) || p.starts_with(bindings) => {
                status(404, "not found")
            }
            ("DELETE" | "GET", p) if p == bare => status(404, "not found"),
            ("GET", p) if p == format!("/api/v1/namespaces/{NS}/pods") => (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            ),
            ("GET", p) if p == pvs => (
                200,
                json!({"apiVersion": "v1", "kind": "PersistentVolumeList", "metadata": {},
                "items": [
                    serde_json::to_value(pv("pvc-in-bench", Some(NS))).unwrap(),
                    serde_json::to_value(pv("pvc-of-the-user", Some("default"))).unwrap(),
                ]}),
            ),
            ("DELETE", "/api/v1/persistentvolumes/pvc-in-bench") => (
                200,
                json!({"apiVersion": "v1", "kind": "PersistentVolume",
                       "metadata": {"name": "pvc-in-bench"}}),
            ),
            ("DELETE", p) if p.starts_with(pvs) => status(404, "not found"),
            ("DELETE", p) if p == format!("/api/v1/namespaces/{NS}") => (
                200,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            ),
            _ => status(500, "unexpected request"),
        }
    }

    #[tokio::test]
    async fn cleanup_removes_the_isolation_policy_the_provisioned_volumes_and_the_namespace_when_the_teardown_fails()
     {
        let (kube, calls) = mock_client(failing_teardown);
        let user = ClusterSpec::default().validated().unwrap();
        let spec = plan::bench_spec(
            &user,
            NS,
            "pgset3-ordered-1",
            3,
            PodManagementPolicy::OrderedReady,
        )
        .unwrap();
        let result = clean_up(&kube, NS, std::slice::from_ref(&spec)).await;
        let e = format!("{:#}", result.unwrap_err());
        assert!(
            e.contains("tear down bench cluster pgset3-ordered-1"),
            "{e}"
        );
        assert!(e.contains("delete it by hand"), "{e}");
        let calls = calls.lock().unwrap().clone();
        let policy = pgset_deploy::isolation::policy_name(&spec);
        for expected in [
            format!(
                "DELETE /apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/{policy}"
            ),
            format!(
                "DELETE /apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{policy}"
            ),
            format!(
                "DELETE /api/v1/persistentvolumes/{}",
                bench_volumes(&spec, "-")[0]
                    .metadata
                    .name
                    .as_deref()
                    .unwrap()
            ),
            "DELETE /api/v1/persistentvolumes/pvc-in-bench".to_string(),
            format!("DELETE /api/v1/namespaces/{NS}"),
        ] {
            assert!(calls.contains(&expected), "no {expected:?} in {calls:#?}");
        }
        assert!(
            !calls.iter().any(|c| c.ends_with("pvc-of-the-user")),
            "another namespace's volume was touched: {calls:#?}"
        );
        // The namespace goes last, after everything in and around it.
        assert_eq!(
            calls.last().unwrap(),
            &format!("DELETE /api/v1/namespaces/{NS}")
        );
    }
}
