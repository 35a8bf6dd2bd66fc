//! The measuring half of a drill, whatever the target: the drill's own table, the load (writers
//! through the master's route, a reader through a replica's), the monitors (master readiness,
//! every replica streaming), the fault and the wait for health the target supplies, and the
//! figures computed from what the clients saw.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::load::{self, Endpoint, ReadyProbe, Stop, WriterShape};
use crate::measure;
use crate::report::{DrillReport, Step, Verdict};
use crate::{DrillName, Result, step_err};

/// The `writer` number of the pinned writer ([`Setup::pinned`]).
pub const PINNED_WRITER: i32 = 9;

/// The steps of a drill, stamped from the start of the load (shared with the target's fault).
#[derive(Debug)]
pub struct Log {
    t0: Mutex<Instant>,
    steps: Mutex<Vec<Step>>,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            t0: Mutex::new(Instant::now()),
            steps: Mutex::new(Vec::new()),
        }
    }
}

impl Log {
    /// Records a step.
    pub fn step(&self, what: impl Into<String>) {
        let at_s = self.t0().elapsed().as_secs_f64();
        if let Ok(mut steps) = self.steps.lock() {
            steps.push(Step {
                at_s,
                what: what.into(),
            });
        }
    }

    /// What the steps so far say, in order (without their times).
    pub fn lines(&self) -> Vec<String> {
        self.steps
            .lock()
            .map(|s| s.iter().map(|s| s.what.clone()).collect())
            .unwrap_or_default()
    }

    fn t0(&self) -> Instant {
        self.t0
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| Instant::now())
    }

    fn restart_clock(&self) -> Instant {
        let now = Instant::now();
        if let Ok(mut t) = self.t0.lock() {
            *t = now;
        }
        now
    }

    fn take(&self) -> Vec<Step> {
        self.steps
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// Where the load and the monitors go.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The writers' route to the master (local: its port; live: the master Service).
    pub writer: Endpoint,
    /// The reader's route to a replica (local: its port; live: the replica Service).
    pub reader: Endpoint,
    /// The master itself (the streaming monitor and the row count).
    pub master: Endpoint,
    /// Each replica itself, by name (the rows every replica must have); a member the master
    /// route leads to at the end (a [`crate::load::Route::LocalLeader`]) is left out.
    pub replicas: Vec<(String, Endpoint)>,
    /// A writer that keeps its connection to the master the drill started with (a pooled
    /// client the old master keeps serving), beside the writer that follows the master: what
    /// the old master acknowledges after the new master's first commit is seen.
    pub pinned: Option<Endpoint>,
    /// The member each server is (`address:port` as a server names itself, member), to report
    /// masters by name.
    pub names: Vec<(String, String)>,
    /// The master's readiness.
    pub ready: ReadyProbe,
    /// Load before the fault.
    pub warmup: Duration,
    /// Load after the set is healthy again.
    pub cooldown: Duration,
    /// Members in the set.
    pub members: usize,
    /// The member the fault hits.
    pub target: String,
    /// The member reads are meant to reach.
    pub read_from: String,
    /// What to do when the fault's steps fail (how to make the set whole again).
    pub repair_hint: String,
}

/// Waits until the master has dropped `slot` (a member left the set), asking every `every`, for
/// at most `timeout`; records either outcome as a step (the drill goes on: the figures say the
/// rest).
pub async fn wait_slot_dropped(
    master: &Endpoint,
    slot: &str,
    every: Duration,
    timeout: Duration,
    log: &Log,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let gone = match master.connect().await {
            Ok(c) => master
                .within(c.query(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                ))
                .await
                .map(|rows| rows.is_empty())
                .unwrap_or(false),
            Err(_) => false,
        };
        if gone {
            log.step(format!("the master dropped slot {slot}"));
            return;
        }
        if Instant::now() > deadline {
            log.step(format!(
                "slot {slot} still there after {} s",
                timeout.as_secs()
            ));
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Fills a table of the drill's own with 200 MB on the master, so a new member's copy lasts long
/// enough to be interrupted; returns its name (drop it with [`drop_pad`]).
pub async fn fill_pad(master: &Endpoint, log: &Log) -> Result<String> {
    let pad = format!("public.pgset_drill_pad_{}", std::process::id());
    let c = master
        .connect_within(Duration::from_secs(10))
        .await
        .map_err(|e| step_err("connect to the master", e))?;
    let fill = master.patience().deadline(Duration::from_secs(600));
    tokio::time::timeout(
        fill,
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS {pad}; CREATE TABLE {pad} AS \
             SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 200000) g"
        )),
    )
    .await
    .map_err(|_| {
        step_err(
            format!("fill {pad}"),
            format!("not done within {}", load::secs(fill)),
        )
    })?
    .map_err(|e| step_err(format!("fill {pad}"), e))?;
    log.step(format!("{pad} holds 200 MB for the copy"));
    Ok(pad)
}

/// Drops the table [`fill_pad`] made.
pub async fn drop_pad(master: &Endpoint, pad: &str) {
    if let Ok(c) = master.connect_within(Duration::from_secs(30)).await {
        let _ = c
            .batch_execute(&format!("DROP TABLE IF EXISTS {pad}"))
            .await;
    }
}

/// Whether the master sends a base backup now (`pg_stat_progress_basebackup` has a row): what
/// PostgreSQL itself says, asked on `client` (dropped when it fails, to be opened again).
pub async fn copying(master: &Endpoint, client: &mut Option<tokio_postgres::Client>) -> bool {
    if client.is_none() {
        *client = master.connect().await.ok();
    }
    let Some(c) = client.as_ref() else {
        return false;
    };
    match master
        .within(c.query_one("SELECT count(*) FROM pg_stat_progress_basebackup", &[]))
        .await
    {
        Ok(r) => r.get::<_, i64>(0) > 0,
        Err(_) => {
            *client = None;
            false
        }
    }
}

/// Creates the drill's own table on the master and waits until the reader sees it; returns
/// its name.
pub async fn create_table(setup: &Setup) -> Result<String> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let table = format!("public.pgset_drill_{}_{stamp}", std::process::id());
    let c = setup
        .master
        .connect_within(Duration::from_secs(10))
        .await
        .map_err(|e| step_err("connect to the master", e))?;
    setup.master.within(c.batch_execute(&format!(
        "CREATE TABLE {table} (writer int NOT NULL, n bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(), tli int, server text, PRIMARY KEY (writer, n))"
    )))
    .await
    .map_err(|e| step_err(format!("create {table}"), e))?;
    let c = setup
        .reader
        .connect_within(Duration::from_secs(10))
        .await
        .map_err(|e| step_err("connect to the replica", e))?;
    let seen = Instant::now() + setup.reader.patience().deadline(Duration::from_secs(30));
    while setup
        .reader
        .within(c.query(&format!("SELECT 1 FROM {table} LIMIT 0"), &[]))
        .await
        .is_err_and(|_| Instant::now() < seen)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(table)
}

/// Drops the drill's table (whatever happened: the set is left as it was found).
pub async fn drop_table(setup: &Setup, table: &str) {
    if let Ok(c) = setup.master.connect_within(Duration::from_secs(30)).await {
        let _ = setup
            .master
            .within(c.batch_execute(&format!("DROP TABLE IF EXISTS {table}")))
            .await;
    }
}

/// Runs the load, injects `fault` after the warmup, waits with `healthy` until the set is
/// healthy again, lets the load run for the cooldown, and measures.
pub async fn drive<F, H, HF>(
    setup: &Setup,
    drill: DrillName,
    table: &str,
    log: Arc<Log>,
    fault: F,
    healthy: H,
) -> Result<DrillReport>
where
    F: Future<Output = Result<()>>,
    H: FnOnce() -> HF,
    HF: Future<Output = Result<()>>,
{
    let stop = Stop::default();
    let shapes: Vec<WriterShape> = if drill.under_load() {
        let mut v = vec![
            WriterShape {
                rows_per_commit: 1,
                pause: Duration::ZERO
            };
            3
        ];
        v.push(WriterShape {
            rows_per_commit: 500,
            pause: Duration::ZERO,
        });
        v
    } else {
        vec![WriterShape {
            rows_per_commit: 1,
            pause: Duration::from_millis(20),
        }]
    };
    let mut clients = Vec::new();
    for _ in &shapes {
        clients.push(
            setup
                .writer
                .connect_within(Duration::from_secs(10))
                .await
                .map_err(|e| step_err("connect a writer to the master", e))?,
        );
    }
    let pinned = match &setup.pinned {
        Some(ep) => Some((
            ep.clone(),
            ep.connect_within(Duration::from_secs(10))
                .await
                .map_err(|e| step_err("connect the pinned writer to the master", e))?,
        )),
        None => None,
    };
    let t0 = log.restart_clock();
    let mut writers: Vec<_> = shapes
        .iter()
        .zip(clients)
        .zip(1..)
        .map(|((shape, client), w)| {
            tokio::spawn(load::writer(
                setup.writer.clone(),
                client,
                table.to_string(),
                w,
                *shape,
                t0,
                stop.clone(),
            ))
        })
        .collect();
    if let Some((ep, client)) = pinned {
        writers.push(tokio::spawn(load::writer(
            ep,
            client,
            table.to_string(),
            PINNED_WRITER,
            WriterShape {
                rows_per_commit: 1,
                pause: Duration::from_millis(20),
            },
            t0,
            stop.clone(),
        )));
    }
    let reader = tokio::spawn(load::reader(
        setup.reader.clone(),
        table.to_string(),
        Duration::from_millis(20),
        t0,
        stop.clone(),
    ));
    let ready_watch = tokio::spawn(load::watch_ready(
        setup.ready.clone(),
        Duration::from_millis(20),
        t0,
        stop.clone(),
    ));
    let replica_names: Vec<String> = setup.replicas.iter().map(|(n, _)| n.clone()).collect();
    let streaming_watch = tokio::spawn(load::watch_streaming(
        setup.master.clone(),
        replica_names,
        Duration::from_millis(20),
        t0,
        stop.clone(),
    ));

    tokio::time::sleep(setup.warmup).await;
    let fault_at = t0.elapsed();
    let fault = fault.await;
    let healthy = match &fault {
        Ok(()) => healthy().await,
        Err(_) => Err(crate::Error::NotHealthy("the fault's steps failed".into())),
    };
    if healthy.is_ok() {
        log.step("every member ready, every replica streaming");
        tokio::time::sleep(setup.cooldown).await;
    }
    stop.stop();
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await.map_err(|e| step_err("join a writer", e))?);
    }
    let reads = reader.await.map_err(|e| step_err("join the reader", e))?;
    let ready = ready_watch
        .await
        .map_err(|e| step_err("join the readiness monitor", e))?;
    let streaming = streaming_watch
        .await
        .map_err(|e| step_err("join the streaming monitor", e))?;
    let duration = t0.elapsed();
    // A failover drill's figures (late commits above all) are reported even when a step of
    // its fault failed; the failure is one of its problems.
    let fault_error = match fault {
        Ok(()) => None,
        Err(e) if DrillName::FAILOVER.contains(&drill) => {
            log.step(format!("the fault's steps failed: {e}"));
            Some(format!("{e} ({})", setup.repair_hint))
        }
        Err(e) => return Err(step_err(format!("{drill} ({})", setup.repair_hint), e)),
    };

    // Who acknowledged what: the masters before and after, and late commits.
    let acks: Vec<measure::Ack> = logs.iter().flat_map(|l| l.acks.iter().cloned()).collect();
    // The first writer follows the master (the pinned one, when there is one, does not).
    let masters = measure::masters(&acks, fault_at, 1);
    let name = |server: &str| {
        setup
            .names
            .iter()
            .find(|(s, _)| s == server)
            .map_or_else(|| server.to_string(), |(_, m)| m.clone())
    };
    let master_before = masters.before.as_ref().map(|(s, _)| name(s));
    let master_after = masters.after.as_ref().map(|(s, _)| name(s));

    // RPO: every row whose COMMIT returned OK must be on the master (the one at the end).
    let committed: BTreeSet<(i32, i64)> = logs
        .iter()
        .flat_map(|l| l.committed.iter().map(|n| (l.writer, *n)))
        .collect();
    let master = setup
        .master
        .connect_within(Duration::from_secs(30))
        .await
        .map_err(|e| step_err("connect to the master to count the rows", e))?;
    let present = rows_of(&setup.master, &master, table).await?;
    let rows_missing = measure::missing(&acks, &present);
    // Every replica must have what the master has, once it caught up.
    let kept: BTreeSet<(i32, i64)> = committed.intersection(&present).copied().collect();
    let final_master = setup.master.leads_to().await;
    let mut rows_missing_on_replicas = 0;
    for (name, replica) in setup
        .replicas
        .iter()
        .filter(|(n, _)| Some(n) != final_master.as_ref())
    {
        let deadline = Instant::now() + replica.patience().deadline(Duration::from_secs(30));
        let missing = loop {
            let missing = match replica.connect().await {
                Ok(c) => rows_of(replica, &c, table)
                    .await
                    .map(|have| kept.difference(&have).count())
                    .unwrap_or(kept.len()),
                Err(_) => kept.len(),
            };
            if missing == 0 || Instant::now() > deadline {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if missing > 0 {
            log.step(format!(
                "{name} lacks {missing} committed rows the master has, after it had time to catch up"
            ));
        }
        rows_missing_on_replicas = rows_missing_on_replicas.max(missing);
    }

    // RTO from the first writer (single-row commits in every drill), so the figure means the
    // same in each; the other writers of the loaded drill add load and rows to count.
    let w = measure::refusals(&logs[0].attempts);
    let r = measure::refusals(&reads.attempts);
    let rejoin = measure::rejoin(&ready, &streaming, fault_at);
    let secs = |d: Duration| d.as_secs_f64();
    let since_fault = |d: Option<Duration>| d.map(|d| secs(d.saturating_sub(fault_at)));
    Ok(DrillReport {
        drill,
        verdict: Verdict::Fail,
        problems: Vec::new(),
        members: setup.members,
        target: setup.target.clone(),
        steps: log.take(),
        fault_at_s: secs(fault_at),
        duration_s: secs(duration),
        writes_attempted: logs.iter().map(|l| l.attempts.len()).sum(),
        rows_committed: committed.len(),
        writes_refused_s: secs(w.total),
        longest_write_refusal_s: secs(w.longest),
        writes_unresolved: w.unresolved,
        writes_accepted_again_after_s: since_fault(w.last_closed_at),
        rows_missing,
        rows_missing_on_replicas,
        read_from: setup.read_from.clone(),
        reads_attempted: reads.attempts.len(),
        reads_refused_s: secs(r.total),
        reads_unresolved: r.unresolved,
        master_ready_after_s: since_fault(rejoin.master_ready_at),
        all_streaming_after_s: since_fault(rejoin.all_streaming_at),
        streaming_after_master_ready_s: rejoin.streaming_after_master_ready().map(secs),
        recloned: Vec::new(),
        healthy_after: healthy.is_ok(),
        master_before,
        timeline_before: masters.before.as_ref().map(|(_, tl)| *tl),
        master_after,
        timeline_after: masters.after.as_ref().map(|(_, tl)| *tl),
        new_master_first_commit_after_s: since_fault(masters.first_new_commit_at),
        late_commits: masters.late_commits,
        kept_diverged: Vec::new(),
        notes: Vec::new(),
        fault_error,
    })
}

async fn rows_of(
    ep: &Endpoint,
    c: &tokio_postgres::Client,
    table: &str,
) -> Result<BTreeSet<(i32, i64)>> {
    let rows = ep
        .within(c.query(&format!("SELECT writer, n FROM {table}"), &[]))
        .await
        .map_err(|e| step_err(format!("read {table}"), e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
        .collect())
}
