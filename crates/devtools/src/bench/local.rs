//! Local PostgreSQL benchmarks: agent replica bootstrap and set formation against raw tools.
//!
//! 1. Replica bootstrap from the same ~1 GB primary: `pgset-agent` (wait, base backup, config,
//!    start, streaming) against raw `pg_basebackup -R` + `pg_ctl start -w`. Target ≤ 1.10×.
//! 2. Formation of a 3-member set from nothing: `local up --replicas 3`, ordered (each member
//!    after the previous is ready) and parallel (all at once, the replicas waiting for the
//!    master), against raw initdb + start + replication role + 2 × (pg_basebackup + pg_ctl
//!    start). Target ≤ 1.10×.
//!
//! The sides alternate, their order rotating each round, and the median counts (the host is
//! shared); every run is printed. Beside the formation's figures, a table of when each member
//! reached each step (the agent's own record of its steps, [`pgset_local::MemberSteps`]; the raw
//! tools' steps as they ended), medians per step and member, so the overhead shows per step.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::unistd::{Uid, chown};
use pgset_agent::pgbin::PgBin;
use pgset_agent::privilege::postgres_user;
use pgset_agent::render;
use pgset_command::HostCommand;
use pgset_local::{self as local, MemberSteps, UpOptions};

/// Base port of the benchmark sets (away from the tests' ports).
const BENCH_PORT: u16 = 28700;
/// Rows of ~1 KB in the primary of the bootstrap benchmark (≈ 1 GB on disk).
const BIG_ROWS: u32 = 900_000;
/// Rounds per side.
const ROUNDS: usize = 3;
/// Rounds per side of the formation benchmark (short runs: more of them for a steady median).
const FORMATION_ROUNDS: usize = 5;

/// The median of some durations (the mean of the middle two for an even count).
fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort_unstable();
    let n = runs.len();
    if n == 0 {
        return Duration::ZERO;
    }
    if n % 2 == 1 {
        runs[n / 2]
    } else {
        (runs[n / 2 - 1] + runs[n / 2]) / 2
    }
}

fn seconds(runs: &[Duration]) -> String {
    runs.iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a host command and prints how long it took (the raw side's steps).
trait TimedRun {
    fn timed_run(&self) -> Result<()>;
}

impl TimedRun for HostCommand {
    fn timed_run(&self) -> Result<()> {
        let started = Instant::now();
        self.run()?;
        eprintln!("      {:.2}s", started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Flushes dirty pages so a timed run does not pay for the writeback of the previous one.
fn settle() -> Result<()> {
    HostCommand::new("sync").run()?;
    Ok(())
}

/// One line of the result table.
struct Comparison {
    name: String,
    pgset: Duration,
    raw: Duration,
    target: f64,
}

impl Comparison {
    fn ratio(&self) -> f64 {
        self.pgset.as_secs_f64() / self.raw.as_secs_f64()
    }
}

/// Runs the local benchmarks and prints them (`formation_only`: the formation benchmark alone).
pub async fn run(formation_only: bool) -> Result<()> {
    let bin = PgBin::find(None).context("local benchmarks need the PostgreSQL server binaries")?;
    let agent = crate::local::build_agent()?;
    let tmp = tempfile::Builder::new()
        .prefix("pgset-bench-")
        .tempdir_in("/tmp")
        .context("temp dir")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let bench = Bench {
        bin,
        agent,
        root: tmp.path().to_path_buf(),
    };
    let result = async {
        let mut rows = Vec::new();
        if !formation_only {
            rows.push(bench.replica_bootstrap().await?);
        }
        let (formation, table) = bench.formation().await?;
        rows.extend(formation);
        Ok::<_, anyhow::Error>((rows, Some(table)))
    }
    .await;
    bench.cleanup().await;
    let (rows, table) = result?;
    if let Some(table) = table {
        println!("{table}");
    }
    println!(
        "{:<44} {:>9} {:>9} {:>7} {:>8}",
        "local benchmark", "pgset", "raw", "ratio", "target"
    );
    for r in &rows {
        println!(
            "{:<44} {:>8.1}s {:>8.1}s {:>6.2}x {:>7} {}",
            r.name,
            r.pgset.as_secs_f64(),
            r.raw.as_secs_f64(),
            r.ratio(),
            format!("≤{:.2}x", r.target),
            if r.ratio() <= r.target {
                "ok"
            } else {
                "MISSED"
            }
        );
    }
    Ok(())
}

struct Bench {
    bin: PgBin,
    agent: PathBuf,
    root: PathBuf,
}

impl Bench {
    /// A PostgreSQL tool run as the postgres user (through `runuser` when root).
    fn pg(&self, tool: &str) -> HostCommand {
        if Uid::effective().is_root() {
            HostCommand::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.tool(tool))
        } else {
            self.bin.command(tool)
        }
    }

    fn own_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if Uid::effective().is_root() {
            let u = postgres_user()?;
            chown(dir, Some(u.uid), Some(u.gid))?;
        }
        Ok(())
    }

    fn psql(&self, socket: &Path, port: u16) -> HostCommand {
        self.bin
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(socket)
            .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
    }

    fn options(&self, dir: &Path, replicas: i32, port: u16) -> UpOptions {
        let mut o = UpOptions::new(dir, replicas, port, &self.agent);
        o.ready_timeout = Duration::from_secs(1800);
        o
    }

    async fn replica_bootstrap(&self) -> Result<Comparison> {
        let dir = self.root.join("bootstrap");
        let primary = self.options(&dir, 1, BENCH_PORT);
        local::up(&primary)
            .await
            .context("start the benchmark primary")?;
        let socket = dir.join("run");
        eprintln!("==> filling the primary with ~1 GB");
        self.psql(&socket, BENCH_PORT)
            .arg("-c")
            .arg(format!(
                "CREATE TABLE IF NOT EXISTS big AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, {BIG_ROWS}) g; CHECKPOINT"
            ))
            .run()?;
        let size = self
            .psql(&socket, BENCH_PORT)
            .arg("-c")
            .arg("SELECT pg_size_pretty(pg_database_size('postgres'))")
            .read()?;

        let raw_area = self.root.join("raw");
        self.own_dir(&raw_area)?;
        let raw_dir = raw_area.join("replica");
        let passfile = raw_area.join("pgpass");
        let pw = std::fs::read_to_string(dir.join("secret/replication-password"))?;
        std::fs::write(&passfile, render::passfile_entry("replicator", pw.trim()))?;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600))?;
        if Uid::effective().is_root() {
            let u = postgres_user()?;
            chown(&passfile, Some(u.uid), Some(u.gid))?;
        }
        let raw_socket = raw_area.join("run");
        self.own_dir(&raw_socket)?;

        let mut agent_runs = Vec::new();
        let mut raw_runs = Vec::new();
        for round in 1..=ROUNDS {
            // Raw: pg_basebackup -R, then pg_ctl start -w.
            settle()?;
            let started = Instant::now();
            self.pg("pg_basebackup")
                .arg("-D")
                .arg(&raw_dir)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &BENCH_PORT.to_string(),
                    "-U",
                    "replicator",
                    "-X",
                    "stream",
                    "-R",
                ])
                .args(["--checkpoint=fast", "--no-password"])
                .env("PGPASSFILE", &passfile)
                .timed_run()?;
            self.pg("pg_ctl")
                .arg("-D")
                .arg(&raw_dir)
                .arg("-o")
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1",
                    BENCH_PORT + 9,
                    raw_socket.display()
                ))
                .arg("-l")
                .arg(raw_area.join("replica.log"))
                .args(["-w", "start"])
                .timed_run()?;
            let raw = started.elapsed();
            self.pg("pg_ctl")
                .arg("-D")
                .arg(&raw_dir)
                .args(["-m", "fast", "-w", "stop"])
                .run()?;
            std::fs::remove_dir_all(&raw_dir)?;
            raw_runs.push(raw);

            // pgset: the agent's replica bootstrap, until it streams.
            settle()?;
            let started = Instant::now();
            local::up(&self.options(&dir, 2, BENCH_PORT))
                .await
                .context("agent replica bootstrap")?;
            let agent = started.elapsed();
            local::up(&primary).await?;
            std::fs::remove_dir_all(dir.join("pgset-1"))?;
            agent_runs.push(agent);
            eprintln!(
                "    round {round}: pgset {:.1}s, raw {:.1}s",
                agent.as_secs_f64(),
                raw.as_secs_f64()
            );
        }
        local::down(&dir, true).await?;
        eprintln!(
            "    replica bootstrap runs: pgset {} s, raw {} s",
            seconds(&agent_runs),
            seconds(&raw_runs)
        );
        Ok(Comparison {
            name: format!("replica bootstrap ({} primary)", size.trim()),
            pgset: median(agent_runs),
            raw: median(raw_runs),
            target: 1.10,
        })
    }

    async fn formation(&self) -> Result<(Vec<Comparison>, String)> {
        let mut ordered_runs = Vec::new();
        let mut parallel_runs = Vec::new();
        let mut raw_runs = Vec::new();
        let mut steps = StepRuns::default();
        for round in 1..=FORMATION_ROUNDS {
            // Rotate which side goes first, so none always runs on a cooler (or hotter) host.
            for side in (0..3).map(|i| (i + round) % 3) {
                match side {
                    0 => {
                        let (took, marks) = self.raw_formation(round).await?;
                        raw_runs.push(took);
                        steps.raw.push(marks);
                    }
                    1 => {
                        let (took, marks) = self.agent_formation(round, false).await?;
                        ordered_runs.push(took);
                        steps.ordered.push(marks);
                    }
                    _ => {
                        let (took, marks) = self.agent_formation(round, true).await?;
                        parallel_runs.push(took);
                        steps.parallel.push(marks);
                    }
                }
            }
            eprintln!(
                "    round {round}: ordered {:.2}s, parallel {:.2}s, raw {:.2}s",
                ordered_runs[round - 1].as_secs_f64(),
                parallel_runs[round - 1].as_secs_f64(),
                raw_runs[round - 1].as_secs_f64()
            );
        }
        eprintln!(
            "    formation runs: ordered {} s; parallel {} s; raw {} s",
            seconds(&ordered_runs),
            seconds(&parallel_runs),
            seconds(&raw_runs)
        );
        let raw = median(raw_runs);
        let table = steps.table();
        Ok((
            vec![
                Comparison {
                    name: "3-member formation, ordered (median)".to_string(),
                    pgset: median(ordered_runs),
                    raw,
                    target: 1.10,
                },
                Comparison {
                    name: "3-member formation, parallel (median)".to_string(),
                    pgset: median(parallel_runs),
                    raw,
                    target: 1.10,
                },
            ],
            table,
        ))
    }

    /// `local up --replicas 3` from nothing until every member is ready, ordered or parallel.
    async fn agent_formation(
        &self,
        round: usize,
        parallel: bool,
    ) -> Result<(Duration, Vec<MemberSteps>)> {
        let kind = if parallel { "parallel" } else { "ordered" };
        let dir = self.root.join(format!("formation-{kind}-{round}"));
        let mut opts = self.options(&dir, 3, BENCH_PORT + 20);
        opts.parallel = parallel;
        settle()?;
        let started = Instant::now();
        let report = local::up(&opts)
            .await
            .with_context(|| format!("agent formation ({kind})"))?;
        let took = started.elapsed();
        local::down(&dir, true).await?;
        eprintln!("      {kind}: {}", compact(&report.steps));
        Ok((took, report.steps))
    }

    /// initdb + start + replication role + 2 × (pg_basebackup -R + pg_ctl start -w, until the
    /// master shows the replica streaming on its slot), each replica after the previous
    /// streams; the steps' ends named as the agent's steps they match.
    async fn raw_formation(&self, round: usize) -> Result<(Duration, Vec<MemberSteps>)> {
        let base = self.root.join(format!("raw-formation-{round}"));
        self.own_dir(&base)?;
        let socket = base.join("run");
        self.own_dir(&socket)?;
        let pwfile = base.join("pw");
        std::fs::write(&pwfile, "bench-superuser-password\n")?;
        let passfile = base.join("pgpass");
        std::fs::write(
            &passfile,
            render::passfile_entry("replicator", "bench-replication-password"),
        )?;
        for f in [&pwfile, &passfile] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))?;
            if Uid::effective().is_root() {
                let u = postgres_user()?;
                chown(f.as_path(), Some(u.uid), Some(u.gid))?;
            }
        }
        let port = BENCH_PORT + 40;
        settle()?;
        let start = |data: &Path, port: u16| {
            self.pg("pg_ctl")
                .arg("-D")
                .arg(data)
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1",
                    socket.display()
                ))
                .arg("-l")
                .arg(data.with_extension("log"))
                .args(["-w", "start"])
        };
        let started = Instant::now();
        let at = || started.elapsed().as_millis() as i64;
        let mut marks = vec![MemberSteps {
            member: "pgset-0".into(),
            steps: vec![("initdb".into(), 0)],
        }];
        let primary = base.join("p0");
        self.pg("initdb")
            .arg("-D")
            .arg(&primary)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .timed_run()?;
        marks[0].steps.push(("data-made".into(), at()));
        start(&primary, port).timed_run()?;
        marks[0].steps.push(("postgres-accepting".into(), at()));
        self.psql(&socket, port)
            .stdin(render::role_passwords_sql(
                "bench-replication-password",
                "bench-superuser-password",
            ))
            .timed_run()?;
        marks[0].steps.push(("first-ready".into(), at()));
        for k in 1..=2u16 {
            let mut member = MemberSteps {
                member: format!("pgset-{k}"),
                steps: vec![("base-backup".into(), at())],
            };
            let data = base.join(format!("p{k}"));
            self.pg("pg_basebackup")
                .arg("-D")
                .arg(&data)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "replicator",
                    "-X",
                    "stream",
                    "-R",
                ])
                .args([
                    "-C",
                    "-S",
                    &format!("raw_{k}"),
                    "--checkpoint=fast",
                    "--no-password",
                ])
                .env("PGPASSFILE", &passfile)
                .timed_run()?;
            member.steps.push(("data-made".into(), at()));
            start(&data, port + k).timed_run()?;
            member.steps.push(("postgres-accepting".into(), at()));
            // Streaming: the master's WAL sender on the replica's slot (read live, not from a
            // snapshot, so one statement can wait).
            self.psql(&socket, port)
                .arg("-c")
                .arg(format!(
                    "DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM pg_replication_slots s \
                     JOIN pg_stat_replication r ON r.pid = s.active_pid \
                     WHERE s.slot_name = 'raw_{k}' AND r.state = 'streaming') LOOP \
                     PERFORM pg_sleep(0.01); END LOOP; END $$"
                ))
                .timed_run()?;
            member.steps.push(("streaming".into(), at()));
            member.steps.push(("first-ready".into(), at()));
            marks.push(member);
        }
        let took = started.elapsed();
        for k in (0..=2).rev() {
            self.pg("pg_ctl")
                .arg("-D")
                .arg(base.join(format!("p{k}")))
                .args(["-m", "fast", "-w", "stop"])
                .run()?;
        }
        std::fs::remove_dir_all(&base)?;
        eprintln!("      raw: {}", compact(&marks));
        Ok((took, marks))
    }

    /// Stops whatever a failed run left behind.
    async fn cleanup(&self) {
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = entry.path();
            if p.join(local::STATE_FILE).exists() {
                let _ = local::down(&p, false).await;
            }
        }
        for pid in pgset_agent::datadir::processes_using(&self.root) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// The steps in the order a member usually reaches them (the agent's step words and
/// milestones); the table lists them in this order.
const STEP_ORDER: [&str; 18] = [
    "agent-started",
    "fencing",
    "fence-held",
    "record-read",
    "checking",
    "identity-checked",
    "waiting-for-master",
    "master-answered",
    "initdb",
    "base-backup",
    "configuring",
    "data-made",
    "record-held",
    "starting",
    "postgres-accepting",
    "ready",
    "streaming",
    "first-ready",
];

/// One run's steps on one line: each member's steps as `step@seconds`.
fn compact(members: &[MemberSteps]) -> String {
    members
        .iter()
        .map(|m| {
            let steps: Vec<String> = m
                .steps
                .iter()
                .map(|(s, at)| format!("{s}@{:.2}", *at as f64 / 1000.0))
                .collect();
            format!("{}: {}", m.member, steps.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Every round's steps of each side of the formation benchmark.
#[derive(Debug, Default)]
struct StepRuns {
    ordered: Vec<Vec<MemberSteps>>,
    parallel: Vec<Vec<MemberSteps>>,
    raw: Vec<Vec<MemberSteps>>,
}

/// The median of the times `member` reached `step` over `runs` (rounds where it did not are
/// left out), in seconds.
fn median_step(runs: &[Vec<MemberSteps>], member: &str, step: &str) -> Option<f64> {
    let mut at: Vec<i64> = runs
        .iter()
        .flat_map(|round| round.iter().filter(|m| m.member == member))
        .filter_map(|m| m.at(step))
        .collect();
    if at.is_empty() {
        return None;
    }
    at.sort_unstable();
    let n = at.len();
    let ms = if n % 2 == 1 {
        at[n / 2] as f64
    } else {
        (at[n / 2 - 1] + at[n / 2]) as f64 / 2.0
    };
    Some(ms / 1000.0)
}

impl StepRuns {
    /// The per-step table: for each member and step, the median seconds since the formation
    /// began, ordered, parallel and raw, and ordered minus raw where both have the step.
    fn table(&self) -> String {
        let mut members: Vec<String> = [&self.ordered, &self.parallel, &self.raw]
            .into_iter()
            .flatten()
            .flatten()
            .map(|m| m.member.clone())
            .collect();
        members.sort();
        members.dedup();
        let cell = |v: Option<f64>| v.map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into());
        let mut out = format!(
            "per step: median seconds since the formation began ({} rounds; raw: when its tool's \
             step ended)\n{:<8} {:<20} {:>8} {:>8} {:>8} {:>9}\n",
            self.ordered.len(),
            "member",
            "step",
            "ordered",
            "parallel",
            "raw",
            "ord-raw"
        );
        for member in &members {
            for step in STEP_ORDER {
                let ordered = median_step(&self.ordered, member, step);
                let parallel = median_step(&self.parallel, member, step);
                let raw = median_step(&self.raw, member, step);
                if ordered.is_none() && parallel.is_none() && raw.is_none() {
                    continue;
                }
                let over = match (ordered, raw) {
                    (Some(o), Some(r)) => format!("{:+.2}", o - r),
                    _ => String::new(),
                };
                out.push_str(&format!(
                    "{member:<8} {step:<20} {:>8} {:>8} {:>8} {over:>9}\n",
                    cell(ordered),
                    cell(parallel),
                    cell(raw)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, steps: &[(&str, i64)]) -> MemberSteps {
        MemberSteps {
            member: name.into(),
            steps: steps.iter().map(|(s, at)| (s.to_string(), *at)).collect(),
        }
    }

    #[test]
    fn the_step_table_has_the_median_of_each_step_per_member_and_the_overhead_over_raw() {
        let runs = StepRuns {
            ordered: vec![
                vec![member("pgset-0", &[("initdb", 100), ("first-ready", 1000)])],
                vec![member("pgset-0", &[("initdb", 300), ("first-ready", 3000)])],
                vec![member("pgset-0", &[("initdb", 200), ("first-ready", 1200)])],
            ],
            parallel: vec![vec![member("pgset-0", &[("first-ready", 900)])]],
            raw: vec![
                vec![member("pgset-0", &[("initdb", 0), ("first-ready", 800)])],
                vec![member("pgset-0", &[("initdb", 0), ("first-ready", 1000)])],
            ],
        };
        assert_eq!(
            median_step(&runs.ordered, "pgset-0", "first-ready"),
            Some(1.2)
        );
        assert_eq!(median_step(&runs.raw, "pgset-0", "first-ready"), Some(0.9));
        assert_eq!(median_step(&runs.raw, "pgset-1", "first-ready"), None);
        let table = runs.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        // Rows in the order a member reaches its steps; a step no side reached is left out.
        assert!(lines[2].starts_with("pgset-0  initdb"), "{table}");
        assert!(lines[2].ends_with("+0.20"), "{table}");
        assert!(lines[3].starts_with("pgset-0  first-ready"), "{table}");
        assert!(lines[3].contains("0.90"), "{table}");
        assert!(lines[3].ends_with("+0.30"), "{table}");
    }
}
