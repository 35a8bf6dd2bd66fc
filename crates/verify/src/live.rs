//! The edge of verify: reads pods, Services, EndpointSlices and claims through the API, runs the
//! commands in the pods, times each check, and cleans up the marker table.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::wait::Condition;
use kube::{Api, Client};
use pgset_spec::contract::POSTGRES_CONTAINER;
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};

use crate::checks::{self, ClaimState, Endpoint, Member, MemberStorage, names};
use crate::exec::{ExecOutput, PodExec};
use crate::report::{Check, Finding, Measurements, Report};
use crate::sql::{self, PathStat, ReplicationRow};
use crate::{Result, api, ownership};
use k8s_openapi::jiff::Timestamp;
use pgset_deploy::master::{LeaderLease, MasterView};

/// Label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long a check that reads settling state (readiness, labels, endpoints, streaming) keeps
/// retrying before it reports what it saw.
pub const SETTLE: Duration = Duration::from_secs(20);

/// How often a check read through exec is retried while the cluster settles.
const POLL: Duration = Duration::from_secs(1);

/// How often check 9 looks at streaming once the recreated master is Ready, so the rejoin
/// time it measures is off by little more than this (and one exec's round trip).
const RECOVERY_POLL: Duration = Duration::from_millis(250);

/// How often the scale test looks for the removed member's slot on the master (whose agent
/// drops a gone member's slot on its own, every 10 s in a cluster, once the pod is gone).
pub const SLOT_POLL: Duration = Duration::from_secs(2);

/// Default of [`Options::max_rejoin`]: replicas stream again within this of the master's return.
pub const DEFAULT_MAX_REJOIN: Duration = Duration::from_secs(10);

/// What to run and how long to wait.
#[derive(Debug, Clone)]
pub struct Options {
    /// Check 8: scale out by one and back.
    pub scale_test: bool,
    /// Check 9: delete the master pod.
    pub disruptive: bool,
    /// Limit of each wait (a pod Ready, a replica streaming, the marker replicated).
    pub timeout: Duration,
    /// Check 9 fails when the replicas stream again later than this after the master pod is
    /// Ready again.
    pub max_rejoin: Duration,
    /// Where the members' directories can be inspected on this host (shared mode on the NFS
    /// host: the export); `None` inspects them from inside the pods.
    pub local_data_root: Option<PathBuf>,
}

impl Options {
    /// Defaults: no scale test, not disruptive, 180 s waits, the export when it exists here.
    pub fn new(spec: &ClusterSpec) -> Options {
        Options {
            scale_test: false,
            disruptive: false,
            timeout: Duration::from_secs(180),
            max_rejoin: DEFAULT_MAX_REJOIN,
            local_data_root: local_export(spec),
        }
    }
}

/// The cluster's directory on the export, when verify runs on the NFS host in shared mode
/// (it holds the member directories): the export itself for the default cluster,
/// `<export>/<namespace>.<name>` for another.
pub fn local_export(spec: &ClusterSpec) -> Option<PathBuf> {
    (spec.storage.mode == StorageMode::Shared && spec.member_export_dir(0).is_dir())
        .then(|| spec.cluster_export_dir())
}

/// Runs the checks against one cluster.
pub struct Verifier {
    spec: ValidSpec,
    options: Options,
    pods: Api<Pod>,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    claims: Api<PersistentVolumeClaim>,
    statefulsets: Api<StatefulSet>,
    exec: PodExec,
    client: Client,
}

/// Records how long `f` takes and names its finding.
async fn timed(name: &str, f: impl Future<Output = Finding>) -> Check {
    let started = Instant::now();
    let finding = f.await;
    Check::new(name, finding, started.elapsed())
}

/// Asks `look` every `every` until `done` holds of its answer or another look would start
/// past `limit`; returns the last answer and how long the looks took. For what is read through
/// exec (SQL, files): objects of the API are waited for by watching them instead.
async fn retry<T, F, Fut>(
    limit: Duration,
    every: Duration,
    mut look: F,
    done: impl Fn(&T) -> bool,
) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let started = Instant::now();
    loop {
        let answer = look().await;
        let waited = started.elapsed();
        if done(&answer) || waited + every > limit {
            return (answer, waited);
        }
        tokio::time::sleep(every).await;
    }
}

/// Retries `f` until it passes or `limit` is over; returns the last finding.
async fn settle<F, Fut>(limit: Duration, f: F) -> Finding
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Finding>,
{
    retry(limit, POLL, f, |finding: &Finding| {
        finding.verdict != crate::Verdict::Fail
    })
    .await
    .0
}

fn fail_on_err(r: Result<Finding>) -> Finding {
    r.unwrap_or_else(|e| Finding::fail(e.to_string()))
}

impl Verifier {
    /// A verifier for `spec`'s cluster through `client`.
    pub fn new(client: Client, spec: ValidSpec, options: Options) -> Verifier {
        let ns = spec.namespace.clone();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let exec_timeout = options.timeout + Duration::from_secs(15);
        Verifier {
            exec: PodExec::new(pods.clone(), exec_timeout),
            pods,
            services: Api::namespaced(client.clone(), &ns),
            slices: Api::namespaced(client.clone(), &ns),
            claims: Api::namespaced(client.clone(), &ns),
            statefulsets: Api::namespaced(client.clone(), &ns),
            client,
            spec,
            options,
        }
    }

    /// Before any check: the API server answers and the StatefulSet exists.
    pub async fn preflight(&self) -> Result<()> {
        let found = self
            .statefulsets
            .get_opt(self.spec.statefulset_name())
            .await
            .map_err(api(format!(
                "read StatefulSet {} in namespace {}",
                self.spec.name, self.spec.namespace
            )))?;
        match found {
            Some(_) => Ok(()),
            None => Err(crate::Error::NotDeployed {
                name: self.spec.name.clone(),
                namespace: self.spec.namespace.clone(),
            }),
        }
    }

    /// The spec being verified.
    pub fn spec(&self) -> &ValidSpec {
        &self.spec
    }

    /// Runs every check (8 and 9 only when asked), then drops the marker table.
    pub async fn run(&self) -> Report {
        let started = Instant::now();
        let mut list = Vec::new();
        list.push(timed(names::PODS, settle(SETTLE, || self.check_pods())).await);
        let healthy = list[0].verdict == crate::Verdict::Pass;
        list.push(timed(names::DNS, settle(SETTLE, || self.check_dns())).await);
        list.push(
            timed(
                names::ROLE_SERVICES,
                settle(SETTLE, || self.check_role_services()),
            )
            .await,
        );
        list.push(
            timed(
                names::ONE_MASTER,
                settle(SETTLE, || self.check_one_master()),
            )
            .await,
        );
        list.push(timed(names::STREAMING, settle(SETTLE, || self.check_streaming())).await);
        list.push(timed(names::REPLICA_READ_ONLY, self.check_replica_read_only()).await);
        list.push(timed(names::REPLICATED_WRITE, self.check_replicated_write()).await);
        list.push(timed(names::STORAGE, self.check_storage()).await);
        let isolation_started = Instant::now();
        let (isolation, not_enforced) = self.check_member_isolation().await;
        list.push(Check::new(
            names::MEMBER_ISOLATION,
            isolation,
            isolation_started.elapsed(),
        ));
        list.push(timed(names::TLS, self.check_tls()).await);
        list.push(
            timed(
                names::SCALE_OUT,
                self.optional(self.options.scale_test, "--scale-test", healthy, || {
                    self.check_scale_out()
                }),
            )
            .await,
        );
        list.push(
            timed(
                names::MASTER_RECOVERY,
                self.optional(self.options.disruptive, "--disruptive", healthy, || {
                    self.check_master_recovery()
                }),
            )
            .await,
        );
        let mut report = Report::new(
            &self.spec.name,
            &self.spec.namespace,
            list,
            started.elapsed(),
        );
        report.warnings.extend(not_enforced);
        // The master may still be coming back from check 9: give it the settling time.
        let (dropped, _) = retry(SETTLE, POLL, || self.drop_marker_table(), Result::is_ok).await;
        if let Err(e) = dropped {
            report
                .warnings
                .push(format!("could not drop table {}: {e}", sql::MARKER_TABLE));
        }
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        report
    }

    /// A check that changes the cluster: run only when asked (`flag`) and the pods are healthy.
    async fn optional<F, Fut>(&self, asked: bool, flag: &str, healthy: bool, check: F) -> Finding
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Finding>>,
    {
        if !asked {
            Finding::skipped(format!("not requested ({flag})"))
        } else if !healthy {
            Finding::skipped(format!("{} did not pass", names::PODS))
        } else {
            fail_on_err(check().await)
        }
    }

    fn selector(&self) -> String {
        self.spec
            .selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Check member-isolation ([`checks::member_isolation`]) and, where the API server does
    /// not serve the policy, the warning that says isolation is not enforced.
    pub async fn check_member_isolation(&self) -> (Finding, Option<String>) {
        use pgset_deploy::isolation;
        let served = match isolation::served(&self.client).await {
            Ok(served) => served,
            Err(e) => return (Finding::fail(e.to_string()), None),
        };
        if !served {
            let finding = checks::member_isolation(&self.spec, false, None, None);
            let warning = finding.message.clone();
            return (finding, Some(warning));
        }
        let name = isolation::policy_name(&self.spec);
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.client.clone());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(self.client.clone());
        let policy = match policies.get_opt(&name).await {
            Ok(p) => p,
            Err(e) => {
                return (
                    Finding::fail(format!("get ValidatingAdmissionPolicy {name}: {e}")),
                    None,
                );
            }
        };
        let binding = match bindings.get_opt(&name).await {
            Ok(b) => b,
            Err(e) => {
                return (
                    Finding::fail(format!("get ValidatingAdmissionPolicyBinding {name}: {e}")),
                    None,
                );
            }
        };
        let finding = checks::member_isolation(&self.spec, true, policy.as_ref(), binding.as_ref());
        (finding, None)
    }

    /// The `tls` check ([`crate::tls::verdict`]): the server certificate Secret, a connection
    /// with and one without TLS to the master Service from a replica's pod (the master's own
    /// with one member: a connection to a Service that leads back to the pod it came from may
    /// arrive from the node's address instead of the pod's), and the master's pg_hba rules.
    pub async fn check_tls(&self) -> Finding {
        use crate::tls;
        if !self.spec.tls.enabled() {
            return Finding::skipped("tls.mode off: the cluster serves without TLS");
        }
        fail_on_err(
            async {
                let name = self.spec.tls_server_secret_name();
                let server_secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
                    self.client.clone(),
                    &self.spec.namespace,
                )
                .get_opt(&name)
                .await
                .map_err(api(format!("read Secret {name}")))?;
                let master = self.master().await?;
                let service = self.spec.master_service_name();
                let from = checks::service_client_pod(&self.spec, &master);
                let plain = self
                    .run_in(&from, &tls::psql_ssl(&service, "disable", "SELECT 1"))
                    .await?;
                let with_tls = self
                    .run_in(&from, &tls::psql_ssl(&service, "require", tls::SSL_SQL))
                    .await?;
                let hba = self
                    .run_in(&master, &sql::psql_local(&[tls::HBA_SQL]))
                    .await?;
                Ok(tls::verdict(
                    &self.spec,
                    &tls::TlsInputs {
                        server_secret,
                        plain,
                        tls: with_tls,
                        hba,
                    },
                    pgset_tls::now(),
                ))
            }
            .await,
        )
    }

    /// The cluster's pods, by ordinal.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let list = self
            .pods
            .list(&ListParams::default().labels(&self.selector()))
            .await
            .map_err(api(format!("list the pods of {}", self.spec.name)))?;
        Ok(checks::sorted(
            list.items.iter().map(Member::from_pod).collect(),
        ))
    }

    async fn member(&self, name: &str) -> Result<Option<Member>> {
        Ok(self
            .pods
            .get_opt(name)
            .await
            .map_err(api(format!("read pod {name}")))?
            .map(|p| Member::from_pod(&p)))
    }

    async fn run_in(&self, pod: &str, argv: &[String]) -> Result<ExecOutput> {
        self.exec.run(pod, POSTGRES_CONTAINER, argv).await
    }

    /// The leader Lease, when it exists.
    pub async fn leader(&self) -> Result<Option<LeaderLease>> {
        Ok(pgset_deploy::master::read_leader(&self.client, &self.spec).await?)
    }

    /// The master as the cluster says now: the pods, then the leader Lease
    /// ([`checks::master_view`]).
    pub async fn master_view(&self) -> Result<MasterView> {
        let members = self.members().await?;
        let leader = self.leader().await?;
        Ok(checks::master_view(
            &self.spec,
            leader.as_ref(),
            &members,
            Timestamp::now(),
        ))
    }

    /// The pod to ask the master's questions: the master, or ordinal 0 when there is none (a
    /// check that needs a master then fails on its answer; the one-master check says why).
    pub async fn master(&self) -> Result<String> {
        Ok(self.master_view().await?.master_or_first(&self.spec))
    }

    /// Check 1 (one attempt).
    pub async fn check_pods(&self) -> Finding {
        fail_on_err(
            async {
                let members = self.members().await?;
                let sts = self
                    .statefulsets
                    .get_opt(self.spec.statefulset_name())
                    .await
                    .map_err(api(format!("read StatefulSet {}", self.spec.name)))?;
                let Some(sts) = sts else {
                    return Ok(Finding::fail(format!(
                        "StatefulSet {} not found in namespace {}",
                        self.spec.name, self.spec.namespace
                    )));
                };
                let policy = sts
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_management_policy.clone());
                Ok(checks::pods_ready_in_order(
                    &self.spec,
                    &members,
                    policy.as_deref(),
                ))
            }
            .await,
        )
    }

    pub(crate) async fn service_endpoints(&self, service: &str) -> Result<Vec<Endpoint>> {
        let slices = self
            .slices
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service}")))
            .await
            .map_err(api(format!("list the EndpointSlices of Service {service}")))?;
        Ok(checks::endpoints(&slices.items))
    }

    async fn check_dns(&self) -> Finding {
        fail_on_err(
            async {
                let members = self.members().await?;
                let master = self.master().await?;
                let mut resolved = BTreeMap::new();
                for i in 0..self.spec.replicas {
                    let out = self
                        .run_in(&master, &sql::getent_hosts(&self.spec.pod_fqdn(i)))
                        .await
                        .map_err(|e| e.to_string());
                    resolved.insert(self.spec.pod_name(i), out);
                }
                let headless = self
                    .service_endpoints(self.spec.headless_service_name())
                    .await?;
                Ok(checks::dns_and_endpoints(
                    &self.spec, &members, &resolved, &headless,
                ))
            }
            .await,
        )
    }

    /// Check 3 (one attempt).
    pub async fn check_role_services(&self) -> Finding {
        fail_on_err(
            async {
                let members = self.members().await?;
                let leader = self.leader().await?;
                let view =
                    checks::master_view(&self.spec, leader.as_ref(), &members, Timestamp::now());
                let master_name = self.spec.master_service_name();
                let replica_name = self.spec.replica_service_name();
                let master = self
                    .services
                    .get_opt(&master_name)
                    .await
                    .map_err(api(format!("read Service {master_name}")))?;
                let replica = self
                    .services
                    .get_opt(&replica_name)
                    .await
                    .map_err(api(format!("read Service {replica_name}")))?;
                let master_eps = self.service_endpoints(&master_name).await?;
                let replica_eps = self.service_endpoints(&replica_name).await?;
                Ok(checks::role_services(
                    &self.spec,
                    &members,
                    &view.master_or_first(&self.spec),
                    master.as_ref(),
                    &master_eps,
                    replica.as_ref(),
                    &replica_eps,
                ))
            }
            .await,
        )
    }

    /// `pg_stat_replication` as the master sees it.
    pub async fn replication(&self) -> std::result::Result<Vec<ReplicationRow>, String> {
        let master = self.master().await.map_err(|e| e.to_string())?;
        self.replication_on(&master).await
    }

    /// `pg_stat_replication` as `master` sees it.
    pub async fn replication_on(
        &self,
        master: &str,
    ) -> std::result::Result<Vec<ReplicationRow>, String> {
        let out = self
            .run_in(master, &sql::psql_local(&[sql::REPLICATION_QUERY]))
            .await
            .map_err(|e| e.to_string())?;
        if !out.success() {
            return Err(format!(
                "pg_stat_replication on {master}: {}",
                out.failure_summary()
            ));
        }
        sql::parse_replication(&out.stdout).map_err(|e| e.to_string())
    }

    async fn streaming_of(&self, expected: &[String]) -> Finding {
        match self.replication().await {
            Ok(rows) => checks::streaming(expected, &rows),
            Err(e) => Finding::fail(e),
        }
    }

    async fn check_streaming(&self) -> Finding {
        let master = match self.master().await {
            Ok(master) => master,
            Err(e) => return Finding::fail(e.to_string()),
        };
        match self.replication_on(&master).await {
            Ok(rows) => checks::streaming(&checks::expected_replicas(&self.spec, &master), &rows),
            Err(e) => Finding::fail(e),
        }
    }

    /// The one-master check (one attempt): the leader Lease, the label and the master Service agree.
    pub async fn check_one_master(&self) -> Finding {
        fail_on_err(
            async {
                let view = self.master_view().await?;
                let eps = self
                    .service_endpoints(&self.spec.master_service_name())
                    .await?;
                Ok(checks::one_master(&self.spec, &view, &eps))
            }
            .await,
        )
    }

    /// Check 4, retried until it passes or `limit` is over.
    pub async fn check_streaming_until(&self, limit: Duration) -> Finding {
        settle(limit, || self.check_streaming()).await
    }

    async fn check_replica_read_only(&self) -> Finding {
        if self.spec.replicas < 2 {
            return Finding::skipped("no replicas (replicas: 1)");
        }
        fail_on_err(
            async {
                let service = self.spec.replica_service_name();
                let master = self.master().await?;
                let tls = self.spec.tls.enabled();
                let write = self
                    .run_in(
                        &master,
                        &sql::psql_remote(&service, &[sql::READ_ONLY_PROBE], tls),
                    )
                    .await?;
                let read = self
                    .run_in(
                        &master,
                        &sql::psql_remote(&service, &[sql::IN_RECOVERY_QUERY], tls),
                    )
                    .await?;
                Ok(checks::replica_read_only(&write, &read))
            }
            .await,
        )
    }

    async fn check_replicated_write(&self) -> Finding {
        if self.spec.replicas < 2 {
            return Finding::skipped("no replicas (replicas: 1)");
        }
        fail_on_err(
            async {
                let [create_sql, lsn_sql] = sql::create_marker_table_at_lsn();
                let master = self.master().await?;
                let create = self
                    .run_in(&master, &sql::psql_local(&[&create_sql, &lsn_sql]))
                    .await?;
                if !create.success() {
                    return Ok(Finding::fail(format!(
                        "create table {} on {}: {}",
                        sql::MARKER_TABLE,
                        master,
                        create.failure_summary()
                    )));
                }
                let lsn = match sql::parse_lsn(&create.stdout) {
                    Ok(lsn) => lsn,
                    Err(e) => return Ok(Finding::fail(e.to_string())),
                };
                let token = sql::new_token();
                // Replay wait and marker wait each get half, so both fit in one exec timeout.
                let wait_s = (self.options.timeout.as_secs() / 2).max(1);
                let mut waiters = tokio::task::JoinSet::new();
                for pod in checks::expected_replicas(&self.spec, &master) {
                    let exec = self.exec.clone();
                    let argv = sql::psql_local(&[
                        &sql::wait_for_replay(&lsn, wait_s),
                        &sql::wait_for_marker(&token, wait_s),
                        &sql::report_marker_sighting(&token),
                    ]);
                    waiters.spawn(async move {
                        let out = exec
                            .run(&pod, POSTGRES_CONTAINER, &argv)
                            .await
                            .map_err(|e| e.to_string());
                        (pod, out)
                    });
                }
                // Let the waiters connect and start polling, so the lag is measured from the insert.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                // Through the master Service from a replica's pod (a connection to a Service
                // that leads back to its own pod may arrive from the node's address).
                let writer = checks::service_client_pod(&self.spec, &master);
                let insert = self
                    .run_in(
                        &writer,
                        &sql::psql_remote(
                            &self.spec.master_service_name(),
                            &[&sql::insert_marker(&token)],
                            self.spec.tls.enabled(),
                        ),
                    )
                    .await;
                let insert = match insert {
                    Ok(out) => out,
                    Err(e) => {
                        waiters.abort_all();
                        return Err(e);
                    }
                };
                if !insert.success() {
                    waiters.abort_all();
                }
                let mut sightings = BTreeMap::new();
                while let Some(joined) = waiters.join_next().await {
                    if let Ok((pod, out)) = joined {
                        sightings.insert(pod, out);
                    }
                }
                Ok(checks::replicated_write(&token, &insert, &sightings))
            }
            .await,
        )
    }

    async fn storage_of(&self, ordinal: i32) -> MemberStorage {
        let pod = self.spec.pod_name(ordinal);
        let data_directory = match self
            .run_in(&pod, &sql::psql_local(&[sql::DATA_DIRECTORY_QUERY]))
            .await
        {
            Ok(out) if out.success() => Ok(out.stdout.trim().to_string()),
            Ok(out) => Err(out.failure_summary()),
            Err(e) => Err(e.to_string()),
        };
        let stat = match &self.options.local_data_root {
            Some(root) => local_stat(&root.join(&pod)),
            None => {
                let dir = checks::data_dir_in_pod(&pod);
                match self
                    .run_in(
                        &pod,
                        &sql::stat(&[dir.clone(), format!("{dir}/PG_VERSION")]),
                    )
                    .await
                {
                    Ok(out) => sql::parse_stat(&out.stdout)
                        .map_err(|e| e.to_string())
                        .and_then(|s| {
                            if out.success() {
                                Ok(s)
                            } else {
                                Err(out.failure_summary())
                            }
                        }),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let claim = if self.spec.storage.mode == StorageMode::Templates {
            self.claims
                .get_opt(&self.spec.member_claim_name(ordinal))
                .await
                .ok()
                .flatten()
                .map(|c| ClaimState::from_claim(&c))
        } else {
            None
        };
        MemberStorage {
            data_directory: Some(data_directory),
            stat: Some(stat),
            claim,
        }
    }

    async fn check_storage(&self) -> Finding {
        fail_on_err(
            async {
                let members = self.members().await?;
                let mut seen = BTreeMap::new();
                for i in 0..self.spec.replicas {
                    seen.insert(self.spec.pod_name(i), self.storage_of(i).await);
                }
                let root = match &self.options.local_data_root {
                    Some(r) => r.display().to_string(),
                    None => pgset_spec::contract::DATA_MOUNT.to_string(),
                };
                Ok(checks::storage(&self.spec, &members, &seen, &root))
            }
            .await,
        )
    }

    /// Scales the StatefulSet through its scale subresource (with pgset's field manager).
    pub async fn scale(&self, replicas: i32) -> Result<()> {
        pgset_deploy::scale::set_replicas(&self.client, &self.spec, replicas).await?;
        Ok(())
    }

    /// The StatefulSet's managedFields.
    pub async fn managed_fields(&self) -> Result<Vec<ManagedFieldsEntry>> {
        let name = self.spec.statefulset_name();
        let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.spec.namespace);
        let found = sts
            .get(name)
            .await
            .map_err(api(format!("read StatefulSet {name}")))?;
        Ok(found.metadata.managed_fields.unwrap_or_default())
    }

    /// Writes back the managedFields found before the scale test (the status entries stay
    /// current), when the StatefulSet is at `replicas` again and its owners moved. The patch
    /// names the resourceVersion read, so a concurrent writer makes it fail rather than lose
    /// its ownership.
    pub async fn restore_managed_fields(
        &self,
        replicas: i32,
        before: &[ManagedFieldsEntry],
    ) -> Result<()> {
        let name = self.spec.statefulset_name();
        let sts: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.spec.namespace);
        let now = sts
            .get(name)
            .await
            .map_err(api(format!("read StatefulSet {name}")))?;
        let current = now.metadata.managed_fields.clone().unwrap_or_default();
        if now.spec.as_ref().and_then(|s| s.replicas) != Some(replicas)
            || !ownership::changed(before, &current)
        {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": now.metadata.resource_version,
                "managedFields": ownership::restored(before, &current),
            }
        });
        sts.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api(format!(
                "restore the field owners of StatefulSet {name}"
            )))?;
        Ok(())
    }

    /// Waits until pod `name` is Ready (and, when `not_uid` is given, is a new pod), watching it,
    /// for at most the `--timeout`.
    pub async fn wait_ready(&self, name: &str, not_uid: Option<&str>) -> Result<Member> {
        let ready = |pod: Option<&Pod>| {
            pod.map(Member::from_pod)
                .is_some_and(|m| m.ready && !m.terminating && not_uid.is_none_or(|u| u != m.uid))
        };
        match self
            .wait_for(name, format!("pod {name} Ready"), ready)
            .await?
        {
            Some(pod) => Ok(Member::from_pod(&pod)),
            None => unreachable!("the condition holds of a pod only"),
        }
    }

    /// Waits until no pod `name` is left, watching it, for at most the `--timeout`.
    pub async fn wait_gone(&self, name: &str) -> Result<()> {
        self.wait_for(name, format!("pod {name} removed"), |pod: Option<&Pod>| {
            pod.is_none()
        })
        .await
        .map(drop)
    }

    /// Watches pod `name` until `condition` holds of it (or of its absence), within the timeout;
    /// a watch the API server expired lists again.
    async fn wait_for(
        &self,
        name: &str,
        what: String,
        condition: impl Condition<Pod>,
    ) -> Result<Option<Pod>> {
        let watching = pgset_deploy::wait::until_object(self.pods.clone(), name, condition);
        match tokio::time::timeout(self.options.timeout, watching).await {
            Ok(found) => found.map_err(|source| crate::Error::Watch {
                action: format!("watch pod {name}"),
                source,
            }),
            Err(_) => Err(crate::Error::Timeout {
                what,
                after: self.options.timeout,
            }),
        }
    }

    /// Waits until the master streams to every one of `expected`.
    async fn wait_streaming(&self, expected: &[String]) -> Finding {
        settle(self.options.timeout, || self.streaming_of(expected)).await
    }

    /// Check 8: scale to N+1, watch the new member join, scale back, check its data stayed.
    pub async fn check_scale_out(&self) -> Result<Finding> {
        let n = self.spec.replicas;
        let new_pod = self.spec.pod_name(n);
        let before = self.members().await?;
        if before.iter().any(|m| m.name == new_pod) {
            return Ok(Finding::fail(format!(
                "{new_pod} already exists: the StatefulSet is not at {n} replicas"
            )));
        }
        if self.spec.storage.mode == StorageMode::Templates
            && self.spec.storage.storage_class.is_none()
        {
            // pgset's own volumes are pre-bound per ordinal: member N needs its volume first.
            let pv = self.spec.member_pv_name(n);
            let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
            let found = volumes
                .get_opt(&pv)
                .await
                .map_err(api(format!("read PersistentVolume {pv}")))?;
            if found.is_none() {
                return Ok(Finding::fail(format!(
                    "no PersistentVolume {pv} for {new_pod}: create the volumes for {} replicas first",
                    n + 1
                )));
            }
        }
        // What status warns of now: after the scale test it must warn of nothing more.
        let warned_before = crate::ClusterStatus::gather(self.client.clone(), &self.spec)
            .await?
            .warnings;
        let owners = self.managed_fields().await?;
        let started = Instant::now();
        self.scale(n + 1).await?;
        let outcome = self.scale_out_and_observe(&new_pod, started).await;
        // Scale back whatever happened, and hand spec.replicas back to its owner.
        let back = self.scale(n).await;
        let gone = match back {
            Ok(()) => self.wait_gone(&new_pod).await,
            Err(e) => Err(e),
        };
        let handed_back = match &gone {
            Ok(()) => self.restore_managed_fields(n, &owners).await,
            Err(_) => Ok(()),
        };
        let mut finding = outcome?;
        if let Err(e) = gone {
            return Ok(Finding::fail(format!("scale back to {n}: {e}")));
        }
        if let Err(e) = handed_back {
            return Ok(Finding::fail(format!(
                "scaled back to {n}, but could not hand spec.replicas back to its field manager (the next deploy will rewrite the StatefulSet): {e}"
            )));
        }
        if finding.verdict == crate::Verdict::Pass {
            match self.retained(n).await {
                Ok(what) => finding
                    .message
                    .push_str(&format!("; scaled back, {what} retained")),
                Err(problem) => finding = Finding::fail(problem).with(finding.measurements),
            }
        }
        // The master's agent drops the removed member's slot on its own: the cluster is left as
        // healthy as it was found only once it has.
        match self.wait_slot_dropped(&new_pod, &warned_before).await {
            Ok(done) if finding.verdict == crate::Verdict::Pass => {
                finding.message.push_str(&format!("; {done}"));
            }
            Ok(_) => {}
            Err(problem) if finding.verdict == crate::Verdict::Pass => {
                finding = Finding::fail(problem).with(finding.measurements);
            }
            Err(problem) => finding.message.push_str(&format!("; {problem}")),
        }
        Ok(finding)
    }

    /// After member `pod` was scaled away: waits, for at most the `--timeout`, looking every
    /// [`SLOT_POLL`], until the master no longer has its slot (the master agent's view of
    /// `pg_replication_slots`) and status warns of nothing that is not in `before`. Says so
    /// (`slot pgset_3 dropped`), or names what stayed.
    pub async fn wait_slot_dropped(
        &self,
        pod: &str,
        before: &[String],
    ) -> std::result::Result<String, String> {
        let slot = pgset_spec::slot_name(pod);
        let started = tokio::time::Instant::now();
        loop {
            let last = match crate::ClusterStatus::gather(self.client.clone(), &self.spec).await {
                Err(e) => format!("status could not be read: {e}"),
                Ok(status) => {
                    let master = status.summary.master.clone();
                    let slots = status
                        .members
                        .iter()
                        .find(|m| m.pod == master)
                        .and_then(|m| m.agent.as_ref())
                        .and_then(|a| a["postgres"]["slots"].as_array().cloned());
                    match slots {
                        None => format!("{master}'s agent did not show its slots"),
                        Some(slots) if slots.iter().any(|s| s["slot"].as_str() == Some(&slot)) => {
                            format!("slot {slot} is still on {master}")
                        }
                        Some(_) => {
                            let new: Vec<&str> = status
                                .warnings
                                .iter()
                                .filter(|w| !before.contains(w))
                                .map(String::as_str)
                                .collect();
                            if new.is_empty() {
                                return Ok(format!("slot {slot} dropped"));
                            }
                            format!(
                                "slot {slot} dropped, but status warns of what it did not before: {}",
                                new.join("; ")
                            )
                        }
                    }
                }
            };
            let waited = started.elapsed();
            if waited + SLOT_POLL > self.options.timeout {
                return Err(format!(
                    "{last} {} s after {pod} was removed (its master's agent drops a gone member's slot on its own)",
                    waited.as_secs()
                ));
            }
            tokio::time::sleep(SLOT_POLL).await;
        }
    }

    async fn scale_out_and_observe(&self, new_pod: &str, started: Instant) -> Result<Finding> {
        let member = self.wait_ready(new_pod, None).await?;
        let others = self.members().await?;
        let mut problems = checks::started_after_ready(&member, &others);
        let mut expected = checks::expected_replicas(&self.spec, &self.master().await?);
        expected.push(new_pod.to_string());
        let streaming = self.wait_streaming(&expected).await;
        let join_s = started.elapsed().as_secs_f64();
        if streaming.verdict != crate::Verdict::Pass {
            problems.push(streaming.message);
        }
        Ok(Finding::from_problems(
            problems,
            format!(
                "{new_pod} started after {} Ready members and joined streaming in {join_s:.1}s",
                self.spec.replicas
            ),
        )
        .with(Measurements {
            join_s: Some(join_s),
            ..Measurements::default()
        }))
    }

    /// After a scale-down: the removed member's claim (templates) or directory (shared) is still
    /// there. Returns what was found, or the problem.
    async fn retained(&self, ordinal: i32) -> std::result::Result<String, String> {
        match self.spec.storage.mode {
            StorageMode::Templates => {
                let name = self.spec.member_claim_name(ordinal);
                match self.claims.get_opt(&name).await {
                    Ok(Some(_)) => Ok(format!("claim {name}")),
                    Ok(None) => Err(format!("claim {name} was deleted on scale-down")),
                    Err(e) => Err(format!("read claim {name}: {e}")),
                }
            }
            StorageMode::Shared => {
                let pod = self.spec.pod_name(ordinal);
                let dir = checks::data_dir_in_pod(&pod);
                let master = self.master().await.map_err(|e| e.to_string())?;
                let out = self
                    .run_in(&master, &sql::stat(&[format!("{dir}/PG_VERSION")]))
                    .await
                    .map_err(|e| e.to_string())?;
                if out.success() {
                    Ok(format!("directory {dir}"))
                } else {
                    Err(format!("{dir} not retained: {}", out.failure_summary()))
                }
            }
        }
    }

    async fn check_master_recovery(&self) -> Result<Finding> {
        let master = self.master().await?;
        let token = sql::new_token();
        let create = self
            .run_in(
                &master,
                &sql::psql_local(&[&sql::create_marker_table(), &sql::insert_marker(&token)]),
            )
            .await?;
        if !create.success() {
            return Ok(Finding::fail(format!(
                "write the marker on {master}: {}",
                create.failure_summary()
            )));
        }
        let Some(before) = self.member(&master).await? else {
            return Ok(Finding::fail(format!("{master} missing")));
        };
        let started = Instant::now();
        self.pods
            .delete(&master, &DeleteParams::default())
            .await
            .map_err(api(format!("delete pod {master}")))?;
        // Same name by construction (looked up by name), a new pod by its uid.
        self.wait_ready(&master, Some(&before.uid)).await?;
        let recovery = started.elapsed();
        // Streaming is looked at right away; the marker is read afterwards, so it delays nothing.
        // The master the cluster names now (the leader Lease may have moved meanwhile).
        let master_now = self.master().await?;
        let rejoin = self
            .wait_rejoin(&checks::expected_replicas(&self.spec, &master_now))
            .await;
        let mut problems = Vec::new();
        let marker = self
            .run_in(
                &master_now,
                &sql::psql_local(&[&sql::select_marker(&token)]),
            )
            .await?;
        if !marker.success() {
            problems.push(format!("read the marker: {}", marker.failure_summary()));
        } else if marker.stdout.trim() != token {
            problems.push(format!("marker row {token} lost"));
        }
        // The restarted master labels itself again and the Services follow.
        let services = settle(SETTLE, || self.check_role_services()).await;
        if services.verdict != crate::Verdict::Pass {
            problems.push(services.message);
        }
        Ok(checks::master_recovery(
            &master,
            recovery,
            &rejoin,
            self.options.max_rejoin,
            problems,
        ))
    }

    /// From the master seen Ready again: how long until its `pg_stat_replication` lists every
    /// one of `expected` streaming (a new master's view, so no stale connection counts). Looks
    /// every [`RECOVERY_POLL`] and counts until the end of the look that saw them, so the time
    /// is never shorter than what was seen; it waits up to the `--timeout`, past the bound, so
    /// a slow rejoin is measured, not only failed.
    async fn wait_rejoin(&self, expected: &[String]) -> checks::Rejoin {
        let (finding, waited) = retry(
            self.options.timeout,
            RECOVERY_POLL,
            || self.streaming_of(expected),
            |f: &Finding| f.verdict == crate::Verdict::Pass,
        )
        .await;
        if finding.verdict == crate::Verdict::Pass {
            checks::Rejoin::Streaming(waited)
        } else {
            checks::Rejoin::NotStreaming {
                waited,
                last: finding.message,
            }
        }
    }

    /// Drops the marker table on the master (its drop replicates). Only verify's table.
    pub async fn drop_marker_table(&self) -> std::result::Result<(), String> {
        let master = self.master().await.map_err(|e| e.to_string())?;
        let out = self
            .run_in(&master, &sql::psql_local(&[&sql::drop_marker_table()]))
            .await
            .map_err(|e| e.to_string())?;
        if out.success() {
            Ok(())
        } else {
            Err(out.failure_summary())
        }
    }
}

/// `stat` of a member directory on this host (the NFS export), as [`sql::parse_stat`] would give.
pub fn local_stat(dir: &std::path::Path) -> std::result::Result<Vec<PathStat>, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for path in [dir.to_path_buf(), dir.join("PG_VERSION")] {
        match std::fs::symlink_metadata(&path) {
            Ok(m) => out.push(PathStat {
                path: path.display().to_string(),
                uid: i64::from(m.uid()),
                gid: i64::from(m.gid()),
                mode: m.mode() & 0o7777,
                kind: if m.is_dir() {
                    "directory".into()
                } else if m.is_file() {
                    "regular file".into()
                } else {
                    "other".into()
                },
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(out)
}
