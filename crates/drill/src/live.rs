//! The live target: drills against a cluster, all through the API server. The writers reach the
//! master through the pod its `<name>-master` Service routes to, the reader through
//! `<name>-replica` (a port-forward to the pod of a ready endpoint, as kube-proxy would pick
//! one), the readiness monitor asks the master agent's `/readyz` through the pod proxy, and the
//! faults are Kubernetes' own operations: deleting a pod, scaling the StatefulSet, a `kill` in
//! the postgres container. The master is the member the cluster names (the leader Lease's
//! holder, else ordinal 0), read once the cluster is healthy. Health before and after is
//! `status`'s verdict.
//!
//! The failover drills: `master-freeze` (SIGSTOP to the master's postmaster by exec, until
//! another member holds the leader Lease and is Ready as master), `master-isolated` (an
//! admission policy of the drill's own denies the master pod's updates of the leader Lease:
//! [`crate::isolate`]) and `rejoin` (a replica promoted by hand, written on, its pod deleted).
//! In them a writer keeps its connection to the first master's pod, beside the writer through
//! the master Service, so late commits are counted as locally, and the monitors follow the pod
//! the master Service routes to. `master-agent-freeze` and `master-agent-kill` are local only
//! ([`DrillName::not_in_cluster`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use pgset_spec::contract::POSTGRES_CONTAINER;
use pgset_spec::{ClusterSpec, ValidSpec, contract, slot_name};
use pgset_verify::exec::PodExec;
use pgset_verify::{ClusterStatus, Options, Verifier, checks};
use tokio_postgres::NoTls;

use crate::engine::{self, Log, Setup};
use crate::load::{self, Endpoint, ReadyProbe, Route, STATEMENT_DEADLINE};
use crate::local::{REJOIN_ROWS, TAKEOVER_WATCH};
use crate::patience::{FIRST_CONNECT, Patience};
use crate::report::{DrillReport, KeptDiverged};
use crate::{DrillName, Error, Result, Target as Where, step_err};

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A port-forward through the API server to PostgreSQL's port of a pod, or of the pod a Service
/// routes to now.
#[derive(Clone)]
pub struct Forward {
    pods: Api<Pod>,
    slices: Api<EndpointSlice>,
    name: String,
    /// With TLS: the connector verifying against the cluster's CA, and the headless Service
    /// (a pod is verified as `<pod>.<headless>`, a Service by its own name).
    tls: Option<(pgset_agent::tls::Connector, String)>,
}

impl Forward {
    /// To `name` (a Service or a pod) in `namespace`.
    pub fn new(client: &Client, namespace: &str, name: impl Into<String>) -> Forward {
        Forward {
            pods: Api::namespaced(client.clone(), namespace),
            slices: Api::namespaced(client.clone(), namespace),
            name: name.into(),
            tls: None,
        }
    }

    /// Connects over TLS 1.3, verifying the server against the CA (verify-full: for a pod its
    /// name under `headless`, for a Service its own name, both in the server certificate).
    pub fn with_tls(mut self, connector: pgset_agent::tls::Connector, headless: &str) -> Forward {
        self.tls = Some((connector, headless.to_string()));
        self
    }

    /// The Service or pod.
    pub fn target(&self) -> &str {
        &self.name
    }

    /// The pod a ready endpoint of the Service targets now. With none, waits 100 ms before it
    /// says so, so a client retrying through a Service without endpoints does not flood the API.
    pub async fn routed_pod(&self) -> Result<String, String> {
        let list = self
            .slices
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={}", self.name)))
            .await
            .map_err(|e| format!("list the endpoints of Service {}: {e}", self.name))?;
        let endpoints = checks::endpoints(&list.items);
        match endpoints.into_iter().find(|e| e.ready && e.pod.is_some()) {
            Some(e) => Ok(e.pod.unwrap_or_default()),
            None => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(format!("Service {} has no ready endpoint", self.name))
            }
        }
    }

    /// Connects with `cfg` through a port-forward (to the Service's pod when `via_service`),
    /// within `deadline`.
    pub(crate) async fn connect(
        &self,
        cfg: &tokio_postgres::Config,
        via_service: bool,
        deadline: Duration,
    ) -> Result<tokio_postgres::Client, String> {
        let attempt = async {
            let pod = if via_service {
                self.routed_pod().await?
            } else {
                self.name.clone()
            };
            let port = contract::POSTGRES_PORT;
            let mut forward = self
                .pods
                .portforward(&pod, &[port])
                .await
                .map_err(|e| format!("port-forward to pod {pod}: {e}"))?;
            let stream = forward
                .take_stream(port)
                .ok_or_else(|| format!("port-forward to pod {pod} gave no stream"))?;
            let client = match &self.tls {
                None => {
                    let (client, conn) = cfg
                        .connect_raw(stream, NoTls)
                        .await
                        .map_err(|e| format!("connect to pod {pod}: {e}"))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                        forward.abort();
                    });
                    client
                }
                Some((connector, headless)) => {
                    use tokio_postgres::tls::MakeTlsConnect;
                    let host = if via_service {
                        self.name.clone()
                    } else {
                        format!("{pod}.{headless}")
                    };
                    let tls = MakeTlsConnect::<tokio::io::DuplexStream>::make_tls_connect(
                        &mut connector.clone(),
                        &host,
                    )
                    .map_err(|e| format!("TLS to {host}: {e}"))?;
                    let (client, conn) = cfg
                        .connect_raw(stream, tls)
                        .await
                        .map_err(|e| format!("connect to pod {pod} over TLS as {host}: {e}"))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                        forward.abort();
                    });
                    client
                }
            };
            Ok(client)
        };
        match tokio::time::timeout(deadline, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no connection through {} within {}",
                self.name,
                load::secs(deadline)
            )),
        }
    }
}

/// What a live drill needs.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The cluster.
    pub spec: ValidSpec,
    /// How long the cluster may take to be healthy again after the fault.
    pub recovery_timeout: Duration,
    /// Load before the fault (the baseline).
    pub warmup: Duration,
    /// Load after the cluster is healthy again.
    pub cooldown: Duration,
    /// How the waits before giving up scale (`--patience`, and the round trip the drill
    /// measures on its first connection).
    pub patience: Patience,
}

impl LiveOptions {
    /// Defaults for everything but the cluster.
    pub fn new(spec: ValidSpec) -> LiveOptions {
        LiveOptions {
            spec,
            recovery_timeout: Duration::from_secs(300),
            warmup: Duration::from_secs(2),
            cooldown: Duration::from_secs(2),
            patience: Patience::default(),
        }
    }
}

/// Whether this host serves the cluster's export (where `nfs-restart` may run).
pub fn on_nfs_host(spec: &ClusterSpec) -> bool {
    pgset_verify::live::local_export(spec).is_some()
}

/// Why the cluster is not healthy for a drill (empty when it is): `status`'s warnings, but for
/// the kept copies of diverged writes. Those are data set aside on a member's volume for the
/// user to look at (what `rejoin` must leave); the members serve and stream all the same, as a
/// local set's health has it.
pub fn drill_health(status: &ClusterStatus, namespace: &str) -> Vec<String> {
    let kept = pgset_verify::status::diverged_problems(&status.members, namespace);
    status
        .warnings
        .iter()
        .filter(|w| !kept.contains(w))
        .cloned()
        .collect()
}

/// Why the cluster is not healthy (empty when it is): `status`'s verdict ([`drill_health`]).
pub async fn unhealthy(client: &Client, spec: &ValidSpec) -> Result<Vec<String>> {
    let status = ClusterStatus::gather(client.clone(), spec).await?;
    Ok(drill_health(&status, &spec.namespace))
}

/// Waits until the cluster is healthy ([`unhealthy`]).
async fn wait_healthy(client: &Client, spec: &ValidSpec, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match unhealthy(client, spec).await {
            Ok(why) => why,
            Err(e) => vec![e.to_string()],
        };
        if why.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::NotHealthy(why.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn superuser_password(client: &Client, spec: &ClusterSpec) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &spec.namespace);
    let name = spec.secret_name();
    let secret = secrets
        .get(&name)
        .await
        .map_err(|e| step_err(format!("read Secret {name}"), e))?;
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(contract::secret::SUPERUSER_PASSWORD_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            step_err(
                format!("read Secret {name}"),
                format!(
                    "it has no `{}` key",
                    contract::secret::SUPERUSER_PASSWORD_KEY
                ),
            )
        })
}

/// The inode of each member's data directory and of its kept `.previous` copy, read in the
/// member's own pod (a copy made anew has a new inode).
async fn data_marks(exec: &PodExec, members: &[String]) -> BTreeMap<String, String> {
    let mut marks = BTreeMap::new();
    for m in members {
        let dir = checks::data_dir_in_pod(m);
        let argv = vec![
            "stat".to_string(),
            "-c".into(),
            "%n %i".into(),
            dir.clone(),
            format!("{dir}.previous"),
        ];
        // stat exits 1 when the kept copy does not exist; the lines it printed still count.
        if let Ok(out) = exec.run(m, POSTGRES_CONTAINER, &argv).await {
            marks.insert(m.clone(), out.stdout.trim().to_string());
        }
    }
    marks
}

fn recloned(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(m, b)| after.get(*m).is_some_and(|a| a != *b))
        .map(|(m, _)| m.clone())
        .collect()
}

/// The diverged copies each member's agent lists (`diverged` in its `/status`, as `status`
/// reads it), with whether `status` warns of each with its path and bytes.
pub fn kept_diverged(status: &ClusterStatus) -> Vec<KeptDiverged> {
    let mut out = Vec::new();
    for m in &status.members {
        let Some(agent) = &m.agent else {
            continue;
        };
        for kept in agent["diverged"].as_array().into_iter().flatten() {
            let path = kept["path"].as_str().unwrap_or_default().to_string();
            let bytes = kept["bytesAfterFork"].as_u64().unwrap_or(0);
            let warned = status.warnings.iter().any(|w| {
                w.starts_with(&m.pod) && w.contains(&path) && w.contains(&format!("{bytes} bytes"))
            });
            out.push(KeptDiverged {
                member: m.pod.clone(),
                path,
                bytes_after_fork: bytes,
                warned,
            });
        }
    }
    out
}

/// The postmaster's pid from the text of `postmaster.pid` (its first line).
pub fn postmaster_pid(text: &str) -> Option<u32> {
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .filter(|&p| p > 0)
}

/// Waits until the leader Lease names a member other than `old` whose pod exists, is Ready and
/// is labelled master (what `switchover` waits for too), asking every 200 ms for up to
/// `timeout`; returns that member. Each new name the Lease gives is a step.
pub async fn wait_takeover(
    verifier: &Verifier,
    old: &str,
    timeout: Duration,
    log: &Log,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut named: Option<String> = None;
    loop {
        let view = verifier.master_view().await?;
        if let Some(new) = view.master.clone().filter(|m| m != old) {
            if named.as_ref() != Some(&new) {
                log.step(format!("the leader Lease names {new}"));
                named = Some(new.clone());
            }
            let members = verifier.members().await?;
            if members.iter().any(|m| {
                m.name == new
                    && m.ready
                    && !m.terminating
                    && m.role() == Some(contract::roles::MASTER)
            }) {
                log.step(format!("{new} is Ready as the master"));
                return Ok(new);
            }
        }
        if Instant::now() > deadline {
            return Err(step_err(
                format!("wait for a replica to take over from {old}"),
                format!(
                    "none did within {}{}",
                    load::secs(timeout),
                    named
                        .map(|n| format!(
                            " ({n} holds the leader Lease but is not Ready as master)"
                        ))
                        .unwrap_or_default()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The connector verifying the members against the cluster's CA (`None` with TLS off): the
/// members refuse a connection without TLS. The CA comes from ConfigMap `<name>-ca-cert`
/// (`tls.mode: auto`) or the server Secret's `ca.crt` (`provided`).
async fn cluster_tls(
    client: &Client,
    spec: &ClusterSpec,
) -> Result<Option<pgset_agent::tls::Connector>> {
    use pgset_spec::TlsMode;
    use pgset_spec::contract::tls as files;
    let ns = spec.namespace.as_str();
    let (origin, pem) = match spec.tls.mode {
        TlsMode::Off => return Ok(None),
        TlsMode::Auto => {
            let name = spec.ca_configmap_name();
            let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
                .get(&name)
                .await
                .map_err(|e| step_err(format!("read ConfigMap {name}"), e))?;
            let pem = cm
                .data
                .and_then(|d| d.get(files::CONFIGMAP_CA_KEY).cloned());
            (format!("ConfigMap {name}"), pem)
        }
        TlsMode::Provided => {
            let name = spec.tls_server_secret_name();
            let secret = Api::<Secret>::namespaced(client.clone(), ns)
                .get(&name)
                .await
                .map_err(|e| step_err(format!("read Secret {name}"), e))?;
            let pem = secret.data.and_then(|d| {
                d.get(files::SECRET_CA_KEY)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            });
            (format!("Secret {name}"), pem)
        }
    };
    let pem = pem.ok_or_else(|| {
        step_err(
            format!("read {origin}"),
            format!(
                "it holds no `{}`: deploy the cluster again",
                files::CONFIGMAP_CA_KEY
            ),
        )
    })?;
    pgset_agent::tls::connector_for_ca(pem.as_bytes(), std::path::Path::new(&origin))
        .map(Some)
        .map_err(|e| step_err(format!("the CA certificate in {origin}"), e))
}

/// The cluster a drill runs on.
struct Live {
    client: Client,
    spec: ValidSpec,
    /// The master's ordinal when the drill started.
    master: i32,
    opts: LiveOptions,
    pods: Api<Pod>,
    verifier: Verifier,
    exec: PodExec,
    password: String,
    /// With TLS: the connector verifying the members against the cluster's CA.
    tls: Option<pgset_agent::tls::Connector>,
    patience: Patience,
    log: Arc<Log>,
}

impl Live {
    fn step(&self, what: impl Into<String>) {
        self.log.step(what);
    }

    /// A port-forward to `name`, over verified TLS when the cluster serves it.
    fn forward(&self, name: String) -> Forward {
        let f = Forward::new(&self.client, &self.spec.namespace, name);
        match &self.tls {
            Some(connector) => f.with_tls(connector.clone(), self.spec.headless_service_name()),
            None => f,
        }
    }

    fn pod_endpoint(&self, k: i32) -> Endpoint {
        Endpoint::via(
            Route::Pod(self.forward(self.spec.pod_name(k))),
            self.password.clone(),
        )
        .with_patience(self.patience)
    }

    fn service_endpoint(&self, service: String) -> Endpoint {
        Endpoint::via(Route::Service(self.forward(service)), self.password.clone())
            .with_patience(self.patience)
    }

    async fn pod(&self, name: &str) -> Result<Option<Pod>> {
        self.pods
            .get_opt(name)
            .await
            .map_err(|e| step_err(format!("read pod {name}"), e))
    }

    /// Waits until pod `name` is Ready, is not `old_uid` and has not been deleted.
    async fn wait_ready(&self, name: &str, old_uid: Option<&str>) -> Result<()> {
        let deadline = Instant::now() + self.opts.recovery_timeout;
        loop {
            if let Some(p) = self.pod(name).await? {
                let m = checks::Member::from_pod(&p);
                if m.ready && !m.terminating && old_uid.is_none_or(|u| u != m.uid) {
                    self.step(format!("pod {name} Ready"));
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(step_err(
                    format!("wait for pod {name}"),
                    format!(
                        "not Ready within {} s",
                        self.opts.recovery_timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_gone(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + self.opts.recovery_timeout;
        while self.pod(name).await?.is_some() {
            if Instant::now() > deadline {
                return Err(step_err(
                    format!("wait for pod {name} to go"),
                    format!(
                        "still there after {} s",
                        self.opts.recovery_timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.step(format!("pod {name} gone"));
        Ok(())
    }

    /// Deletes member k's pod (with its grace period: the agent stops postgres fast) and waits
    /// for the StatefulSet's new pod to be Ready.
    async fn delete_pod(&self, k: i32) -> Result<()> {
        let name = self.spec.pod_name(k);
        let uid = self
            .pod(&name)
            .await?
            .and_then(|p| p.metadata.uid)
            .ok_or_else(|| step_err(format!("delete pod {name}"), "it does not exist"))?;
        self.step(format!("delete pod {name}"));
        self.pods
            .delete(&name, &DeleteParams::default())
            .await
            .map_err(|e| step_err(format!("delete pod {name}"), e))?;
        self.wait_ready(&name, Some(&uid)).await
    }

    /// A connection to member k's postgres through its pod (patience-scaled), with its name and
    /// endpoint.
    async fn connect_pod(&self, k: i32) -> Result<(String, Endpoint, tokio_postgres::Client)> {
        let name = self.spec.pod_name(k);
        let ep = self.pod_endpoint(k);
        let c = ep
            .connect_within(Duration::from_secs(10))
            .await
            .map_err(|e| step_err(format!("connect to {name}"), e))?;
        Ok((name, ep, c))
    }

    /// Member k's postmaster's pid, from `postmaster.pid` as the server itself reads it.
    async fn postmaster_pid(&self, k: i32) -> Result<u32> {
        let (name, ep, c) = self.connect_pod(k).await?;
        let row = ep
            .within(c.query_one("SELECT pg_read_file('postmaster.pid')", &[]))
            .await
            .map_err(|e| step_err(format!("read {name}'s postmaster.pid"), e))?;
        let text: String = row.get(0);
        postmaster_pid(&text).ok_or_else(|| {
            step_err(
                format!("read {name}'s postmaster.pid"),
                "no pid on its first line",
            )
        })
    }

    /// Runs the shell's own `kill -SIGNAL pid` in pod `name`'s postgres container (the image
    /// need not ship a kill binary; the pid is a number). `Ok(false)`: the process is not there.
    async fn signal(&self, name: &str, signal: &str, pid: u32) -> Result<bool> {
        let argv = vec![
            "sh".to_string(),
            "-c".into(),
            format!("kill -0 {pid} 2>/dev/null || exit 3; kill -{signal} {pid}"),
        ];
        let out = self
            .exec
            .run(name, POSTGRES_CONTAINER, &argv)
            .await
            .map_err(|e| step_err(format!("SIG{signal} to {name}'s postmaster"), e))?;
        match out.exit_code {
            0 => Ok(true),
            3 => Ok(false),
            _ => Err(step_err(
                format!("SIG{signal} to {name}'s postmaster"),
                out.failure_summary(),
            )),
        }
    }

    /// SIGSTOP to the master's postmaster, by exec in its container, until another member holds
    /// the leader Lease and is Ready as master (and [`TAKEOVER_WATCH`] after), then SIGCONT
    /// when the process is still there (its agent may have ended it, its container restarted).
    async fn master_freeze(&self) -> Result<()> {
        let name = self.spec.pod_name(self.master);
        let pid = self.postmaster_pid(self.master).await?;
        let restarts = |p: &Pod| checks::Member::from_pod(p).restarts;
        let before = self.pod(&name).await?.map(|p| restarts(&p)).unwrap_or(0);
        if !self.signal(&name, "STOP", pid).await? {
            return Err(step_err(
                format!("SIGSTOP to {name}'s postmaster"),
                format!("no process {pid} in its container"),
            ));
        }
        self.step(format!(
            "SIGSTOP to {name}'s postmaster (pid {pid}) by exec in its postgres container"
        ));
        let took =
            wait_takeover(&self.verifier, &name, self.opts.recovery_timeout, &self.log).await;
        if took.is_ok() {
            tokio::time::sleep(TAKEOVER_WATCH).await;
        }
        // Resumed whatever happened, unless its container restarted (the process went with it).
        let now = self.pod(&name).await?.map(|p| restarts(&p)).unwrap_or(0);
        if now > before {
            self.step(format!(
                "{name}'s container restarted: the frozen postmaster went with it"
            ));
        } else {
            match self.signal(&name, "CONT", pid).await {
                Ok(true) => self.step(format!("SIGCONT to {name}'s postmaster (pid {pid})")),
                Ok(false) => self.step(format!(
                    "{name}'s postmaster (pid {pid}) is gone: its agent stopped it"
                )),
                Err(e) => self.step(format!("{name}'s postmaster not resumed: {e}")),
            }
        }
        took.map(drop)
    }

    /// The master pod's token may not update the leader Lease until another member holds it and
    /// is Ready as master (and [`TAKEOVER_WATCH`] after); then it may again.
    async fn master_isolated(&self) -> Result<()> {
        let name = self.spec.pod_name(self.master);
        let hold = async {
            wait_takeover(&self.verifier, &name, self.opts.recovery_timeout, &self.log).await?;
            tokio::time::sleep(TAKEOVER_WATCH).await;
            Ok(())
        };
        crate::isolate::isolated(&self.client, &self.spec, &name, &self.log, hold).await
    }

    /// Promotes replica k by hand (`pg_promote()` through its pod) while the master runs, writes
    /// [`REJOIN_ROWS`] rows on it (writer 0, which no drill writer uses) and deletes its pod: it
    /// must rejoin the master and keep what it wrote aside.
    async fn rejoin(&self, k: i32, table: &str) -> Result<()> {
        let (name, ep, c) = self.connect_pod(k).await?;
        let promoted = ep
            .within(c.query_one("SELECT pg_promote(true, 60)", &[]))
            .await
            .map_err(|e| step_err(format!("pg_promote() on {name}"), e))?;
        if !promoted.get::<_, bool>(0) {
            return Err(step_err(
                format!("pg_promote() on {name}"),
                "not promoted within 60 s",
            ));
        }
        self.step(format!("pg_promote() on {name} while the master runs"));
        let sql = load::insert_sql(table);
        let row = ep
            .within(c.query_one(sql.as_str(), &[&0i32, &1i64, &REJOIN_ROWS]))
            .await
            .map_err(|e| step_err(format!("write on {name}"), e))?;
        self.step(format!(
            "{REJOIN_ROWS} rows written on {name} (timeline {})",
            row.try_get::<_, i32>(0).unwrap_or_default()
        ));
        drop(c);
        self.delete_pod(k).await
    }

    /// SIGKILL to the master's postmaster (its pid from `postmaster.pid`, read by the server
    /// itself), sent in its container; the agent exits and the kubelet restarts the container.
    async fn kill_postgres(&self) -> Result<()> {
        let name = self.spec.pod_name(self.master);
        let pid = self.postmaster_pid(self.master).await?;
        let restarts = |p: &Pod| checks::Member::from_pod(p).restarts;
        let before = self.pod(&name).await?.map(|p| restarts(&p)).unwrap_or(0);
        self.step(format!("SIGKILL to {name}'s postmaster (pid {pid})"));
        // The shell's own kill: the image need not ship a kill binary. The pid is a number.
        let argv = vec!["sh".to_string(), "-c".into(), format!("kill -KILL {pid}")];
        let out = self
            .exec
            .run(&name, POSTGRES_CONTAINER, &argv)
            .await
            .map_err(|e| step_err(format!("kill {name}'s postmaster"), e))?;
        if !out.success() {
            return Err(step_err(
                format!("kill {name}'s postmaster"),
                out.failure_summary(),
            ));
        }
        let deadline = Instant::now() + self.opts.recovery_timeout;
        loop {
            let now = self.pod(&name).await?.map(|p| restarts(&p)).unwrap_or(0);
            if now > before {
                self.step(format!("{name}'s container restarted"));
                break;
            }
            if Instant::now() > deadline {
                return Err(step_err(
                    format!("{name} after its postgres was killed"),
                    "its container did not restart",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.wait_ready(&name, None).await
    }

    async fn scale(&self, replicas: i32) -> Result<()> {
        self.step(format!("scale to {replicas}"));
        self.verifier.scale(replicas).await?;
        Ok(())
    }

    /// Scales to `n` again and gives spec.replicas back to its owner, whatever happened before.
    async fn scale_back(
        &self,
        n: i32,
        owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry],
    ) -> Result<()> {
        self.scale(n).await?;
        self.verifier.restore_managed_fields(n, owners).await?;
        Ok(())
    }

    /// Takes the last member out (its slot is dropped by the master) and brings it back.
    async fn scale_down_up(&self) -> Result<()> {
        let n = self.spec.replicas;
        let last = self.spec.pod_name(n - 1);
        let owners = self.verifier.managed_fields().await?;
        let outcome = async {
            self.scale(n - 1).await?;
            self.wait_gone(&last).await?;
            // The master's agent checks its slots every 10 s in a cluster.
            engine::wait_slot_dropped(
                &self.pod_endpoint(self.master),
                &slot_name(&last),
                Duration::from_millis(500),
                self.patience.deadline(Duration::from_secs(60)),
                &self.log,
            )
            .await;
            Ok::<(), Error>(())
        }
        .await;
        let back = self.scale_back(n, &owners).await;
        outcome?;
        back?;
        self.wait_ready(&last, None).await
    }

    /// Adds member n, deletes its pod while its base backup runs (PostgreSQL's own
    /// `pg_stat_progress_basebackup` on the master says when), waits for it to come up whole,
    /// then scales back.
    async fn restart_during_basebackup(&self) -> Result<()> {
        let n = self.spec.replicas;
        let new = self.spec.pod_name(n);
        let owners = self.verifier.managed_fields().await?;
        let master = self.pod_endpoint(self.master);
        let pad = engine::fill_pad(&master, &self.log).await?;
        let outcome = async {
            self.scale(n + 1).await?;
            let deadline = Instant::now() + self.opts.recovery_timeout;
            let mut client = None;
            loop {
                let copying = engine::copying(&master, &mut client).await;
                if copying {
                    self.step(format!("base backup for {new} running"));
                    break;
                }
                if self
                    .pod(&new)
                    .await?
                    .is_some_and(|p| checks::Member::from_pod(&p).ready)
                {
                    return Err(Error::NotApplicable {
                        drill: DrillName::AgentRestartDuringBasebackup,
                        why: format!(
                            "{new} became Ready without a base backup the drill could interrupt \
                             (its directory holds data from an earlier scale-out, or the copy was \
                             too quick to catch)"
                        ),
                    });
                }
                if Instant::now() > deadline {
                    return Err(step_err(
                        format!("wait for {new}'s base backup"),
                        "none started",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.delete_pod(n).await
        }
        .await;
        let back = self.scale_back(n, &owners).await;
        let gone = self.wait_gone(&new).await;
        if let Ok(c) = master.connect_within(Duration::from_secs(30)).await {
            let _ = c
                .batch_execute(&format!("DROP TABLE IF EXISTS {pad}"))
                .await;
        }
        outcome?;
        back?;
        gone
    }

    /// Restarts the NFS server on this host (`systemctl restart nfs-server`).
    async fn restart_nfs(&self) -> Result<()> {
        self.step("systemctl restart nfs-server");
        let cmd = pgset_command::HostCommand::new("systemctl").args(["restart", "nfs-server"]);
        tokio::task::spawn_blocking(move || cmd.run())
            .await
            .map_err(|e| step_err("restart nfs-server", e))?
            .map_err(|e| step_err("restart nfs-server", e))?;
        self.step("nfs-server restarted");
        Ok(())
    }
}

/// Which member plays which part in a drill: the master (the cluster's, by the leader Lease or,
/// with none, ordinal 0), the replicas, and the member the fault is aimed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// The master's ordinal.
    pub master: i32,
    /// The other members' ordinals.
    pub replicas: Vec<i32>,
    /// The member the fault is aimed at: the master for the master drills, the highest replica
    /// for `replica-pod-delete` and `rejoin`, the last member for `scale-down-up`, the next one for
    /// `agent-restart-during-basebackup`.
    pub target: i32,
}

impl Roles {
    /// The parts for `drill` in `spec`'s cluster whose master is `master` (pure). No master (a
    /// released leader record) is refused, and so is `scale-down-up` when the last member is
    /// the master: the scale-down would remove it.
    pub fn of(spec: &ClusterSpec, drill: DrillName, master: Option<i32>) -> Result<Roles> {
        let n = spec.replicas;
        let Some(master) = master.filter(|k| (0..n).contains(k)) else {
            return Err(Error::NotHealthy(format!(
                "no member of {} holds the master role (`{} status` says why)",
                spec.name,
                contract::program_name()
            )));
        };
        let replicas: Vec<i32> = (0..n).filter(|&k| k != master).collect();
        let target = match drill {
            DrillName::ReplicaPodDelete | DrillName::Rejoin => {
                replicas.last().copied().unwrap_or(n - 1)
            }
            DrillName::ScaleDownUp if master == n - 1 => {
                return Err(Error::NotApplicable {
                    drill,
                    why: format!(
                        "the master is {}, the member a scale-down removes: move the master to a member below {} first",
                        spec.pod_name(master),
                        n - 1
                    ),
                });
            }
            DrillName::ScaleDownUp => n - 1,
            DrillName::AgentRestartDuringBasebackup => n,
            _ => master,
        };
        Ok(Roles {
            master,
            replicas,
            target,
        })
    }
}

/// Runs `drill` on the cluster: refuses unless it is healthy (`status`'s verdict), runs the load,
/// injects the fault, waits until it is healthy again, and measures.
pub async fn run(client: Client, opts: &LiveOptions, drill: DrillName) -> Result<DrillReport> {
    let spec = &opts.spec;
    if let Some(why) = drill.not_in_cluster() {
        return Err(Error::NotApplicable { drill, why });
    }
    if !drill.runs_on(Where::Live) {
        return Err(Error::NotApplicable {
            drill,
            why: "runs against a local set (`--dir`), not a cluster".into(),
        });
    }
    if drill == DrillName::NfsRestart && !on_nfs_host(spec) {
        return Err(Error::NotApplicable {
            drill,
            why: format!(
                "runs on the NFS host ({}) only: this host does not serve {}",
                spec.nfs
                    .server
                    .as_deref()
                    .unwrap_or("the spec's nfs.server"),
                spec.cluster_export_dir().display()
            ),
        });
    }
    // Judged before any load: inside the fault, a failover drill's error is a failed report.
    if drill == DrillName::MasterIsolated && !crate::isolate::served(&client).await? {
        return Err(crate::isolate::not_served());
    }
    let why = unhealthy(&client, spec).await?;
    if !why.is_empty() {
        return Err(Error::NotHealthy(why.join("; ")));
    }
    let n = spec.replicas;
    if n < 2 {
        return Err(Error::NotApplicable {
            drill,
            why: format!("needs at least one replica ({} has {n} member)", spec.name),
        });
    }
    let members: Vec<String> = (0..n).map(|k| spec.pod_name(k)).collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &spec.namespace);
    let verifier = Verifier::new(client.clone(), spec.clone(), Options::new(spec));
    let view = verifier.master_view().await?;
    let roles = Roles::of(spec, drill, view.ordinal())?;
    let mut t = Live {
        client: client.clone(),
        spec: spec.clone(),
        master: roles.master,
        opts: opts.clone(),
        pods: pods.clone(),
        verifier,
        exec: PodExec::new(
            pods.clone(),
            opts.patience.deadline(Duration::from_secs(30)),
        ),
        password: superuser_password(&client, spec).await?,
        tls: cluster_tls(&client, spec).await?,
        patience: opts.patience,
        log: Arc::new(Log::default()),
    };
    // The first connection to the master, timed: every wait before giving up scales with it.
    let master_pod = spec.pod_name(roles.master);
    let round_trip = load::time_first_connect(&t.pod_endpoint(roles.master), FIRST_CONNECT)
        .await
        .map_err(|e| step_err(format!("connect to {master_pod}"), e))?;
    t.patience = opts.patience.measured(round_trip);
    t.opts.recovery_timeout = t.patience.deadline(opts.recovery_timeout);
    t.exec = PodExec::new(pods, t.patience.deadline(Duration::from_secs(30)));
    t.log.step(format!(
        "first connection to {} in {:.2} s: a statement may take {}, patience {}",
        master_pod,
        round_trip.as_secs_f64(),
        load::secs(t.patience.deadline(STATEMENT_DEADLINE)),
        t.patience.factor()
    ));
    // When the master may move, the monitors and the row count follow the pod the master
    // Service routes to, every member is a replica to check but the master at the end, and a
    // writer keeps its connection to the first master's pod (late commits).
    let moves = drill.may_move_master();
    let master_service = Forward::new(&client, &spec.namespace, spec.master_service_name());
    let setup = Setup {
        writer: t.service_endpoint(spec.master_service_name()),
        reader: t.service_endpoint(spec.replica_service_name()),
        master: if moves {
            Endpoint::via(
                Route::LiveMaster(master_service.clone()),
                t.password.clone(),
            )
            .with_patience(t.patience)
        } else {
            t.pod_endpoint(roles.master)
        },
        replicas: (0..n)
            .filter(|&k| moves || k != roles.master)
            .map(|k| (spec.pod_name(k), t.pod_endpoint(k)))
            .collect(),
        pinned: moves.then(|| t.pod_endpoint(roles.master)),
        names: Vec::new(),
        ready: if moves {
            ReadyProbe::LiveMaster {
                service: Box::new(master_service),
                client: client.clone(),
                namespace: spec.namespace.clone(),
                deadline: t.patience.deadline(STATEMENT_DEADLINE),
            }
        } else {
            ReadyProbe::Proxy {
                client: client.clone(),
                namespace: spec.namespace.clone(),
                pod: master_pod.clone(),
                deadline: t.patience.deadline(STATEMENT_DEADLINE),
            }
        },
        warmup: opts.warmup,
        cooldown: opts.cooldown,
        members: members.len(),
        target: spec.pod_name(roles.target),
        read_from: spec.replica_service_name(),
        repair_hint: format!(
            "`{} status --name {} --namespace {}` shows what is left to mend",
            pgset_spec::contract::program_name(),
            spec.name,
            spec.namespace
        ),
    };
    let marks_before = data_marks(&t.exec, &members).await;
    let kept_before: Vec<String> = match ClusterStatus::gather(client.clone(), spec).await {
        Ok(s) => kept_diverged(&s).into_iter().map(|k| k.path).collect(),
        Err(_) => Vec::new(),
    };
    let table = engine::create_table(&setup).await?;
    let fault = async {
        match drill {
            DrillName::MasterPodDelete | DrillName::MasterRestartUnderLoad => {
                t.delete_pod(roles.master).await
            }
            DrillName::MasterFreeze => t.master_freeze().await,
            DrillName::MasterIsolated => t.master_isolated().await,
            DrillName::Rejoin => t.rejoin(roles.target, &table).await,
            DrillName::ReplicaPodDelete => t.delete_pod(roles.target).await,
            DrillName::PostgresKill => t.kill_postgres().await,
            DrillName::ScaleDownUp => t.scale_down_up().await,
            DrillName::AgentRestartDuringBasebackup => t.restart_during_basebackup().await,
            DrillName::NfsRestart => t.restart_nfs().await,
            other => Err(Error::NotApplicable {
                drill: other,
                why: "runs against a local set (`--dir`), not a cluster".into(),
            }),
        }
    };
    let healthy = || wait_healthy(&client, spec, t.opts.recovery_timeout);
    let outcome = engine::drive(&setup, drill, &table, t.log.clone(), fault, healthy).await;
    engine::drop_table(&setup, &table).await;
    let mut report = outcome?;
    report.recloned = recloned(&marks_before, &data_marks(&t.exec, &members).await);
    // What the drill made a member set aside, and whether `status` warns of it.
    if let Ok(status) = ClusterStatus::gather(client.clone(), spec).await {
        report.kept_diverged = kept_diverged(&status)
            .into_iter()
            .filter(|k| !kept_before.contains(&k.path))
            .collect();
    }
    report.judge();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> ValidSpec {
        ClusterSpec {
            replicas: 3,
            ..ClusterSpec::default()
        }
        .validated()
        .unwrap()
    }

    #[test]
    fn the_drills_parts_follow_the_master_wherever_it_is() {
        let spec = three();
        let on_one = |drill| Roles::of(&spec, drill, Some(1)).unwrap();
        let master = on_one(DrillName::MasterPodDelete);
        assert_eq!((master.master, master.target), (1, 1));
        assert_eq!(master.replicas, [0, 2]);
        assert_eq!(on_one(DrillName::PostgresKill).target, 1);
        assert_eq!(on_one(DrillName::ReplicaPodDelete).target, 2);
        assert_eq!(on_one(DrillName::Rejoin).target, 2);
        assert_eq!(on_one(DrillName::MasterFreeze).target, 1);
        assert_eq!(on_one(DrillName::MasterIsolated).target, 1);
        assert_eq!(on_one(DrillName::ScaleDownUp).target, 2);
        // With the master last, the replica drill takes the highest replica and the
        // scale-down, which would remove the master, is not applicable.
        let last = Roles::of(&spec, DrillName::ReplicaPodDelete, Some(2)).unwrap();
        assert_eq!((last.target, last.replicas.clone()), (1, vec![0, 1]));
        let e = Roles::of(&spec, DrillName::ScaleDownUp, Some(2)).unwrap_err();
        assert!(matches!(e, Error::NotApplicable { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("move the master to a member below 2 first"),
            "{e}"
        );
        // No master (a released leader record): refused as not healthy.
        let e = Roles::of(&spec, DrillName::MasterPodDelete, None).unwrap_err();
        assert!(matches!(e, Error::NotHealthy(_)), "{e}");
        // An older cluster: ordinal 0, as before.
        let old = Roles::of(&spec, DrillName::MasterPodDelete, Some(0)).unwrap();
        assert_eq!((old.master, old.replicas), (0, vec![1, 2]));
    }

    #[test]
    fn the_postmaster_pid_is_the_first_line_of_postmaster_pid() {
        let text = "57\n/var/lib/postgresql/data/pgset-1\n1765100000\n5432\n/run/pgset\n*\n";
        assert_eq!(postmaster_pid(text), Some(57));
        assert_eq!(postmaster_pid(" 812 \n"), Some(812));
        // Nothing a shell could take for more than a number, and never pid 0 (every process of
        // the group) or a negative one.
        for bad in ["", "\n57", "0\n", "-1\n", "57; rm -rf /\n", "abc\n"] {
            assert_eq!(postmaster_pid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_new_inode_or_a_new_kept_copy_is_a_reclone() {
        let before: BTreeMap<String, String> = [
            ("pgset-1".to_string(), "/pgdata/pgset-1 41".to_string()),
            ("pgset-2".to_string(), "/pgdata/pgset-2 42".to_string()),
        ]
        .into();
        let mut after = before.clone();
        assert!(recloned(&before, &after).is_empty());
        after.insert(
            "pgset-2".into(),
            "/pgdata/pgset-2 77\n/pgdata/pgset-2.previous 42".into(),
        );
        assert_eq!(recloned(&before, &after), ["pgset-2"]);
        // A member whose pod could not be asked afterwards is not counted as copied.
        after.remove("pgset-2");
        assert!(recloned(&before, &after).is_empty());
    }
}
