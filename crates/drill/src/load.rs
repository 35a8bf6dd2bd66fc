//! The load a drill runs under: writers that commit numbered rows through the master and record
//! only the rows whose COMMIT returned OK, each with the server that acknowledged it, its
//! timeline in the same transaction and the time of the answer; a reader on a replica, and a
//! monitor that samples the master's readiness and `pg_stat_replication`. All over TCP with the
//! superuser's password, which is never printed.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, NoTls};

use crate::measure::{Ack, Attempt, Sample};

/// Deadline of one connection attempt or statement on a fast machine: an [`Endpoint`]'s own
/// deadline is this scaled by the drill's [`crate::Patience`].
pub const STATEMENT_DEADLINE: Duration = Duration::from_secs(2);

/// How a client reaches PostgreSQL.
#[derive(Clone)]
pub enum Route {
    /// TCP to `host:port` (local mode: 127.0.0.1).
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// Through the API server (a port-forward) to the pod a Service routes to now: the pod of a
    /// ready endpoint in the Service's EndpointSlices, as kube-proxy would pick one.
    Service(crate::live::Forward),
    /// Through the API server to one pod (port-forward).
    Pod(crate::live::Forward),
    /// A cluster's master wherever it moves: the pod the master Service routes to now, asked
    /// again by [`Endpoint::leads_to`] (the monitors and the row count follow it; a writer on
    /// it would ask the API server before every statement, so writers use [`Route::Service`]).
    LiveMaster(crate::live::Forward),
    /// Local mode: the member the set's leader record names the master, read again at every
    /// connection (and, by a writer, before every statement).
    LocalLeader {
        /// The set's directory.
        dir: PathBuf,
        /// The set.
        set: pgset_local::LocalSet,
    },
}

/// Where a client connects (the password stays out of `Debug`).
#[derive(Clone)]
pub struct Endpoint {
    route: Route,
    password: String,
    patience: crate::Patience,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", self.describe())
    }
}

impl Endpoint {
    /// The superuser at `host:port` with `password`.
    pub fn new(host: impl Into<String>, port: u16, password: impl Into<String>) -> Endpoint {
        Endpoint {
            route: Route::Tcp {
                host: host.into(),
                port,
            },
            password: password.into(),
            patience: crate::Patience::default(),
        }
    }

    /// The same endpoint, waiting with `patience`.
    pub fn with_patience(self, patience: crate::Patience) -> Endpoint {
        Endpoint { patience, ..self }
    }

    /// Its patience.
    pub fn patience(&self) -> crate::Patience {
        self.patience
    }

    /// How long one connection attempt or statement may take: [`STATEMENT_DEADLINE`] scaled by
    /// its patience.
    pub fn deadline(&self) -> Duration {
        self.patience.deadline(STATEMENT_DEADLINE)
    }

    /// Runs a database future under this endpoint's deadline.
    pub async fn within<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, String> {
        within_for(self.deadline(), f).await
    }

    /// The superuser through `route` with `password`.
    pub fn via(route: Route, password: impl Into<String>) -> Endpoint {
        Endpoint {
            route,
            password: password.into(),
            patience: crate::Patience::default(),
        }
    }

    /// Where it leads, in words.
    pub fn describe(&self) -> String {
        match &self.route {
            Route::Tcp { host, port } => format!("{host}:{port}"),
            Route::Service(f) => format!("Service {}", f.target()),
            Route::Pod(f) => format!("pod {}", f.target()),
            Route::LiveMaster(f) => format!("the master Service {}", f.target()),
            Route::LocalLeader { set, .. } => format!("the master of local set {}", set.name),
        }
    }

    /// The member a [`Route::LocalLeader`] or a [`Route::LiveMaster`] leads to now (`None` for
    /// the other routes, and for a Service without a ready endpoint).
    pub async fn leads_to(&self) -> Option<String> {
        match &self.route {
            Route::LocalLeader { dir, set } => {
                Some(set.member(pgset_local::master_ordinal(dir, set).await))
            }
            Route::LiveMaster(f) => f.routed_pod().await.ok(),
            _ => None,
        }
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.user(pgset_spec::contract::SUPERUSER)
            .password(&self.password)
            .dbname("postgres")
            .application_name("pgset-drill")
            .connect_timeout(self.deadline());
        cfg
    }

    /// Opens a connection (the connection task runs on the runtime), under the deadline.
    pub async fn connect(&self) -> Result<Client, String> {
        let mut cfg = self.config();
        let client = match &self.route {
            Route::Tcp { host, port } => {
                cfg.host(host).port(*port);
                let (client, conn) = self
                    .within(cfg.connect(NoTls))
                    .await
                    .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
            Route::Service(f) | Route::LiveMaster(f) => {
                f.connect(&cfg, true, self.deadline()).await?
            }
            Route::Pod(f) => f.connect(&cfg, false, self.deadline()).await?,
            Route::LocalLeader { dir, set } => {
                let port = set.member_port(pgset_local::master_ordinal(dir, set).await);
                cfg.host(pgset_local::HOST).port(port);
                let (client, conn) = self.within(cfg.connect(NoTls)).await.map_err(|e| {
                    format!("connect to the master at {}:{port}: {e}", pgset_local::HOST)
                })?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
        };
        Ok(client)
    }

    /// Connects, retrying until `timeout` (scaled by its patience).
    pub async fn connect_within(&self, timeout: Duration) -> Result<Client, String> {
        let deadline = Instant::now() + self.patience.deadline(timeout);
        loop {
            match self.connect().await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Runs a database future under [`STATEMENT_DEADLINE`].
pub async fn within<T>(
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    within_for(STATEMENT_DEADLINE, f).await
}

/// Runs a database future under `deadline`.
pub async fn within_for<T>(
    deadline: Duration,
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}", secs(deadline))),
    }
}

/// A deadline in words (`2 s`, `12.5 s`).
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// Connects to `ep`, with up to `first` (times its patience's factor) for an attempt, and times
/// it (the connection and one `SELECT 1`): the round trip the drill's other deadlines scale with.
pub async fn time_first_connect(ep: &Endpoint, first: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    // One attempt may take all of `first` (times the factor).
    let slow = ep
        .clone()
        .with_patience(ep.patience.measured(first / crate::patience::ROUND_TRIPS));
    let c = slow.connect_within(first).await?;
    slow.within(c.simple_query("SELECT 1")).await?;
    Ok(started.elapsed())
}

/// The switch that ends the load.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks every task to finish.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What one writer did.
#[derive(Debug, Clone, Default)]
pub struct WriterLog {
    /// Its number (the `writer` column).
    pub writer: i32,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The row numbers whose COMMIT returned OK.
    pub committed: BTreeSet<i64>,
    /// Each commit that returned OK: its rows, who acknowledged it, on which timeline, when.
    pub acks: Vec<Ack>,
    /// The last error it saw.
    pub last_error: Option<String>,
}

/// How a writer writes.
#[derive(Debug, Clone, Copy)]
pub struct WriterShape {
    /// Rows per transaction (numbered consecutively).
    pub rows_per_commit: i64,
    /// Pause after each attempt (a failed attempt always waits at least 20 ms).
    pub pause: Duration,
}

/// The statement a writer commits (autocommit: one statement, one transaction): rows
/// `$2..=$3` of writer `$1`, each with the server's timeline and its own name for itself taken
/// in the same transaction, which it returns. The name is its `cluster_name` (the agent sets the
/// member's name there), else `address:port`: through a port-forward every pod's server
/// address is its own loopback, which names no member.
pub fn insert_sql(table: &str) -> String {
    format!(
        "WITH w AS (INSERT INTO {table} (writer, n, tli, server) \
         SELECT $1, g, ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int, \
         coalesce(nullif(current_setting('cluster_name'), ''), \
                  coalesce(host(inet_server_addr()), 'socket') || ':' || current_setting('port')) \
         FROM generate_series($2::bigint, $3::bigint) g RETURNING tli, server) \
         SELECT min(tli), min(server) FROM w"
    )
}

/// Commits numbered rows into `table` (autocommit: one statement, one transaction) until `stop`,
/// starting on `client` (connected before the clock starts, so the baseline is not a connect
/// storm) and reconnecting to `ep` after a failure. A writer on a [`Route::LocalLeader`] asks
/// the leader record before every statement and moves to the member it names as soon as it
/// names another: a client that follows the master at once. Any other keeps its connection
/// while it answers, as a pooled client does.
pub async fn writer(
    ep: Endpoint,
    client: Client,
    table: String,
    writer: i32,
    shape: WriterShape,
    t0: Instant,
    stop: Stop,
) -> WriterLog {
    let mut log = WriterLog {
        writer,
        ..WriterLog::default()
    };
    let sql = insert_sql(&table);
    let mut connected_to = ep.leads_to().await;
    let mut client: Option<Client> = Some(client);
    let mut next: i64 = 1;
    while !stop.stopped() {
        let start = t0.elapsed();
        let first = next;
        let last = next + shape.rows_per_commit - 1;
        next = last + 1;
        if let Some(now) = ep.leads_to().await
            && connected_to.as_ref() != Some(&now)
        {
            client = None;
        }
        let result = match &client {
            Some(c) => {
                ep.within(c.query_one(sql.as_str(), &[&writer, &first, &last]))
                    .await
            }
            None => {
                connected_to = ep.leads_to().await;
                match ep.connect().await {
                    Ok(c) => {
                        let r = ep
                            .within(c.query_one(sql.as_str(), &[&writer, &first, &last]))
                            .await;
                        client = Some(c);
                        r
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let at = t0.elapsed();
        let ok = result.is_ok();
        match result {
            Ok(row) => {
                log.committed.extend(first..=last);
                log.acks.push(Ack {
                    writer,
                    first,
                    last,
                    server: row.try_get::<_, String>(1).unwrap_or_default(),
                    timeline: row.try_get::<_, i32>(0).unwrap_or_default(),
                    at,
                    wall_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or_default(),
                });
            }
            Err(e) => {
                client = None;
                log.last_error = Some(e);
            }
        }
        log.attempts.push(Attempt { start, end: at, ok });
        let pause = if ok {
            shape.pause
        } else {
            shape.pause.max(Duration::from_millis(20))
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    log
}

/// What the reader did.
#[derive(Debug, Clone, Default)]
pub struct ReaderLog {
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The last error it saw.
    pub last_error: Option<String>,
}

/// Reads `table` on a replica every `pause` until `stop`.
pub async fn reader(
    ep: Endpoint,
    table: String,
    pause: Duration,
    t0: Instant,
    stop: Stop,
) -> ReaderLog {
    let mut log = ReaderLog::default();
    let sql = format!("SELECT count(*) FROM {table}");
    let mut client: Option<Client> = None;
    while !stop.stopped() {
        let start = t0.elapsed();
        if client.is_none() {
            match ep.connect().await {
                Ok(c) => client = Some(c),
                Err(e) => log.last_error = Some(e),
            }
        }
        let ok = match &client {
            Some(c) => match ep.within(c.query_one(sql.as_str(), &[])).await {
                Ok(_) => true,
                Err(e) => {
                    client = None;
                    log.last_error = Some(e);
                    false
                }
            },
            None => false,
        };
        log.attempts.push(Attempt {
            start,
            end: t0.elapsed(),
            ok,
        });
        tokio::time::sleep(pause).await;
    }
    log
}

/// How the master's readiness is read: its agent's `/readyz`.
#[derive(Clone)]
pub enum ReadyProbe {
    /// On its health address (local mode).
    Local(SocketAddr),
    /// On the health address of the member the local set's leader record names now.
    LocalLeader {
        /// The set's directory.
        dir: PathBuf,
        /// The set.
        set: pgset_local::LocalSet,
    },
    /// Through the API server's pod proxy (`pods/proxy`) to the pod's health port.
    Proxy {
        /// The client.
        client: kube::Client,
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// How long one answer may take.
        deadline: Duration,
    },
    /// Through the API server's pod proxy to the health port of the pod the master Service
    /// routes to now (a cluster's master wherever it moves; none routed: not ready).
    LiveMaster {
        /// The master Service.
        service: Box<crate::live::Forward>,
        /// The client.
        client: kube::Client,
        /// The namespace.
        namespace: String,
        /// How long one answer may take.
        deadline: Duration,
    },
}

impl std::fmt::Debug for ReadyProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyProbe::Local(a) => write!(f, "ReadyProbe({a})"),
            ReadyProbe::LocalLeader { set, .. } => {
                write!(f, "ReadyProbe(the master of local set {})", set.name)
            }
            ReadyProbe::Proxy { namespace, pod, .. } => {
                write!(f, "ReadyProbe(pod {namespace}/{pod})")
            }
            ReadyProbe::LiveMaster {
                namespace, service, ..
            } => write!(
                f,
                "ReadyProbe(the pod Service {namespace}/{} routes to)",
                service.target()
            ),
        }
    }
}

impl ReadyProbe {
    /// Whether the agent answers ready now.
    pub async fn ready(&self) -> bool {
        match self {
            ReadyProbe::Local(addr) => {
                pgset_agent::health::probe(*addr, pgset_spec::contract::HEALTH_READY_PATH).await
                    == Some(200)
            }
            ReadyProbe::LocalLeader { dir, set } => {
                let k = pgset_local::master_ordinal(dir, set).await;
                pgset_agent::health::probe(
                    set.health_addr(k),
                    pgset_spec::contract::HEALTH_READY_PATH,
                )
                .await
                    == Some(200)
            }
            ReadyProbe::Proxy {
                client,
                namespace,
                pod,
                deadline,
            } => proxy_ready(client, namespace, pod, *deadline).await,
            ReadyProbe::LiveMaster {
                service,
                client,
                namespace,
                deadline,
            } => match service.routed_pod().await {
                Ok(pod) => proxy_ready(client, namespace, &pod, *deadline).await,
                Err(_) => false,
            },
        }
    }
}

/// Whether `pod`'s agent answers ready on `/readyz` through the API server's pod proxy.
async fn proxy_ready(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    deadline: Duration,
) -> bool {
    let path = format!(
        "/api/v1/namespaces/{namespace}/pods/{pod}:{}/proxy{}",
        pgset_spec::contract::HEALTH_PORT,
        pgset_spec::contract::HEALTH_READY_PATH
    );
    let Ok(request) = http::Request::get(path).body(Vec::new()) else {
        return false;
    };
    // A refusal (503 and the like) is an error of request_text: not ready.
    matches!(
        tokio::time::timeout(deadline, client.request_text(request)).await,
        Ok(Ok(_))
    )
}

/// Samples the master's readiness every `period` until `stop`.
pub async fn watch_ready(
    probe: ReadyProbe,
    period: Duration,
    t0: Instant,
    stop: Stop,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.stopped() {
        let ok = probe.ready().await;
        // Stamped when the answer came: a slow answer never dates a recovery earlier.
        samples.push(Sample {
            at: t0.elapsed(),
            ok,
        });
        tokio::time::sleep(period).await;
    }
    samples
}

/// Samples whether the master's `pg_stat_replication` lists every one of `replicas` as streaming,
/// every `period` until `stop` (a master that does not answer: not streaming). A master on a
/// [`Route::LocalLeader`] is the member the record names at each look, and is not expected to
/// stream from itself.
pub async fn watch_streaming(
    master: Endpoint,
    replicas: Vec<String>,
    period: Duration,
    t0: Instant,
    stop: Stop,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut client: Option<Client> = None;
    let mut connected_to = master.leads_to().await;
    while !stop.stopped() {
        let now = master.leads_to().await;
        if now != connected_to {
            client = None;
            connected_to = now.clone();
        }
        if client.is_none() {
            client = master.connect().await.ok();
        }
        let streaming = match &client {
            Some(c) => match streaming_members(c, master.deadline()).await {
                Ok(s) => s,
                Err(_) => {
                    client = None;
                    BTreeSet::new()
                }
            },
            None => BTreeSet::new(),
        };
        samples.push(Sample {
            at: t0.elapsed(),
            ok: client.is_some()
                && replicas
                    .iter()
                    .filter(|r| now.as_ref() != Some(*r))
                    .all(|r| streaming.contains(r)),
        });
        tokio::time::sleep(period).await;
    }
    samples
}

/// The `application_name`s the master lists as streaming.
pub async fn streaming_members(c: &Client, deadline: Duration) -> Result<BTreeSet<String>, String> {
    let rows = within_for(
        deadline,
        c.query(
            "SELECT application_name::text FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        ),
    )
    .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
