//! The agent's own cost on a local 3-member set: CPU, memory and processes started per minute
//! of each member's agent process, idle and with the master down, beside the previous design's
//! figures and the targets.
//!
//! Only process-level facts are read, so the benchmark does not depend on how the agent monitors
//! its postgres: CPU is `utime + stime` of `/proc/<agent>/stat` over the window (the agent's own
//! threads; the CPU of the children it waited for, `cutime + cstime`, is printed beside it, which
//! leaves out the postgres backends that serve the agent's queries: they are the postmaster's), RSS
//! is the largest `VmRSS` of `/proc/<agent>/status` sampled every second, and processes started
//! are counted exactly from the kernel's fork events (see [`super::forks`]): every process whose
//! parent is the agent, however short-lived.
//!
//! Situations: **idle** (all members ready and streaming, each agent measured) and **master
//! down** (member 0's agent stopped with SIGTERM, so its postgres is gone; the replicas' agents
//! measured). Readiness (`/readyz`) is sampled during each window and printed, so a figure is
//! read against the state the member was in.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgset_agent::health;
use pgset_local::{self as local, LocalSet, UpOptions};
use pgset_spec::contract;

use super::forks::ForkCounter;

/// Base port of the set (members 27432..27434, health ports 1000 above): away from the tests'
/// and the other benchmarks' ports.
const PORT: u16 = 27432;
/// Members of the set.
const MEMBERS: i32 = 3;
/// How often RSS and readiness are sampled during a window.
const SAMPLE: Duration = Duration::from_secs(1);
/// Pause after the set is formed (or the master stopped) before a window starts.
const SETTLE: Duration = Duration::from_secs(5);

/// Targets.
const TARGET_IDLE_CPU: f64 = 0.01;
const TARGET_RSS_MIB: f64 = 20.0;
const TARGET_IDLE_FORKS_PER_MIN: f64 = 1.0;
const TARGET_UNREADY_FORKS_PER_MIN: f64 = 6.0;

/// Where a member was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Situation {
    /// Every member ready and streaming.
    Idle,
    /// Member 0's agent (and so its postgres) stopped.
    MasterDown,
}

impl Situation {
    fn label(self) -> &'static str {
        match self {
            Situation::Idle => "idle",
            Situation::MasterDown => "master down",
        }
    }
}

/// The previous design's figures for one role in one situation.
struct Previous {
    situation: Situation,
    master: bool,
    /// Agent CPU, as a fraction of one core.
    cpu: f64,
    /// CPU of its reaped children, as a fraction of one core.
    children_cpu: f64,
    /// Largest VmRSS, MiB.
    rss_mib: f64,
    /// Processes started per minute.
    forks_per_min: f64,
}

/// Measured with the design that started a `psql` per poll (every 25 ms while unready, every 1 s
/// when ready, plus the master's slot check every 2 s), on 2026-11-29, with this benchmark:
/// medians of 3 runs of 60 s windows (per role and situation: the master's 3 values, the
/// replicas' 6), debug build of the agent, on a 2-core machine shared with other work.
/// Per run (master; replicas):
/// - idle CPU 0.27, 0.25, 0.25%; 0.18 0.18, 0.18 0.22, 0.17 0.20%; children's 1.40, 1.58,
///   1.40%; 0.97 0.98, 1.05 1.08, 0.95 1.00%; RSS 13.0, 13.5, 13.3 MiB; 12.6 12.9, 12.8 12.6,
///   13.1 12.6 MiB; processes/min 84, 84, 86; 58 58, 57 57, 58 58;
/// - master down (replicas): CPU 2.10 2.10, 2.05 2.05, 2.35 2.33%; children's 14.47 14.33,
///   14.17 14.14, 16.19 16.26%; RSS 12.6 12.9, 12.8 12.6, 13.1 12.7 MiB; processes/min
///   921.9 910.9, 869.4 866.4, 934.6 933.6.
const PREVIOUS: &[Previous] = &[
    Previous {
        situation: Situation::Idle,
        master: true,
        cpu: 0.0025,
        children_cpu: 0.0140,
        rss_mib: 13.3,
        forks_per_min: 84.0,
    },
    Previous {
        situation: Situation::Idle,
        master: false,
        cpu: 0.0018,
        children_cpu: 0.0099,
        rss_mib: 12.7,
        forks_per_min: 58.0,
    },
    Previous {
        situation: Situation::MasterDown,
        master: false,
        cpu: 0.0210,
        children_cpu: 0.1440,
        rss_mib: 12.75,
        forks_per_min: 916.4,
    },
];

fn previous(situation: Situation, master: bool) -> Option<&'static Previous> {
    PREVIOUS
        .iter()
        .find(|p| p.situation == situation && p.master == master)
}

/// One member's figures over one window.
#[derive(Debug, Clone)]
struct MemberCost {
    situation: Situation,
    member: String,
    master: bool,
    /// Agent CPU (utime + stime), fraction of one core.
    cpu: f64,
    /// CPU of the agent's reaped children (cutime + cstime), fraction of one core.
    children_cpu: f64,
    /// Largest VmRSS seen, MiB.
    rss_mib: f64,
    /// Processes the agent started, per minute, and whether the count is exact.
    forks_per_min: Option<(f64, bool)>,
    /// Share of the readiness samples that answered 200.
    ready_share: f64,
}

/// `utime + stime` and `cutime + cstime` of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("parse /proc/{pid}/stat"))
}

/// The fields after the command name (which may hold spaces and parentheses): utime, stime,
/// cutime, cstime are fields 14..=17 of proc(5).
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| -> Option<u64> { f.get(i - 3)?.parse().ok() };
    Some((n(14)? + n(15)?, n(16)? + n(17)?))
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> Result<f64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(CLK_TCK)")?
        .context("no CLK_TCK")?;
    Ok(hz as f64)
}

/// Runs the benchmark and prints its table.
pub async fn run(window: Duration) -> Result<()> {
    let agent = crate::local::build_agent()?;
    let forks = match ForkCounter::start() {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("    processes started: not counted: {e:#}");
            None
        }
    };
    let tmp = tempfile::Builder::new()
        .prefix("pgset-bench-agent-")
        .tempdir_in("/tmp")
        .context("temp dir")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let dir = tmp.path().join("set");
    let result = measure(&agent, &dir, window, forks.as_ref()).await;
    if dir.join(local::STATE_FILE).exists() {
        let _ = local::down(&dir, false).await;
    }
    for pid in pgset_agent::datadir::processes_using(tmp.path()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let rows = result?;
    print_table(&rows, window, &agent);
    Ok(())
}

async fn measure(
    agent: &Path,
    dir: &Path,
    window: Duration,
    forks: Option<&ForkCounter>,
) -> Result<Vec<MemberCost>> {
    let mut opts = UpOptions::new(dir, MEMBERS, PORT, agent);
    opts.ready_timeout = Duration::from_secs(300);
    eprintln!(
        "==> agent cost: {MEMBERS} members on 127.0.0.1:{PORT}.. in {}",
        dir.display()
    );
    local::up(&opts).await.context("form the benchmark set")?;
    let set = local::read_set(dir)?;
    tokio::time::sleep(SETTLE).await;
    eprintln!("    idle: {} s window", window.as_secs());
    let mut rows = window_costs(dir, &set, &[0, 1, 2], Situation::Idle, window, forks).await?;

    let master = set.member(0);
    eprintln!("    stopping {master}'s agent (SIGTERM)");
    if !local::stop_member(dir, &master, Duration::from_secs(120)).await? {
        bail!("{master}'s agent was not running");
    }
    tokio::time::sleep(SETTLE).await;
    eprintln!("    master down: {} s window", window.as_secs());
    rows.extend(window_costs(dir, &set, &[1, 2], Situation::MasterDown, window, forks).await?);
    Ok(rows)
}

/// Measures the agents of `members` over the same window.
async fn window_costs(
    dir: &Path,
    set: &LocalSet,
    members: &[i32],
    situation: Situation,
    window: Duration,
    forks: Option<&ForkCounter>,
) -> Result<Vec<MemberCost>> {
    struct Watch {
        k: i32,
        pid: i32,
        cpu0: (u64, u64),
        forks0: Option<(u64, bool)>,
        rss_max: u64,
        ready: u32,
        samples: u32,
    }
    let mut watches = Vec::new();
    for &k in members {
        let member = set.member(k);
        let pid = local::agent_pid(dir, &member)
            .with_context(|| format!("{member}'s agent is not running"))?;
        watches.push(Watch {
            k,
            pid,
            cpu0: cpu_ticks(pid)?,
            forks0: forks.map(|f| f.count_of(pid)),
            rss_max: 0,
            ready: 0,
            samples: 0,
        });
    }
    let started = Instant::now();
    loop {
        for w in &mut watches {
            w.rss_max = w.rss_max.max(rss_kib(w.pid)?);
            w.samples += 1;
            if health::probe(set.health_addr(w.k), contract::HEALTH_READY_PATH).await == Some(200) {
                w.ready += 1;
            }
        }
        let left = window.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(SAMPLE)).await;
    }
    let hz = clock_ticks_per_second()?;
    let mut rows = Vec::new();
    for w in watches {
        let elapsed = started.elapsed().as_secs_f64();
        let cpu1 = cpu_ticks(w.pid)?;
        let forks_per_min = match (forks, w.forks0) {
            (Some(f), Some((n0, _))) => {
                let (n1, exact) = f.count_of(w.pid);
                Some(((n1 - n0) as f64 * 60.0 / elapsed, exact))
            }
            _ => None,
        };
        rows.push(MemberCost {
            situation,
            member: set.member(w.k),
            master: w.k == 0,
            cpu: (cpu1.0 - w.cpu0.0) as f64 / hz / elapsed,
            children_cpu: (cpu1.1 - w.cpu0.1) as f64 / hz / elapsed,
            rss_mib: w.rss_max as f64 / 1024.0,
            forks_per_min,
            ready_share: f64::from(w.ready) / f64::from(w.samples.max(1)),
        });
    }
    Ok(rows)
}

/// One printed figure: the measurement, the previous design's, the target and the verdict.
struct Figure {
    name: &'static str,
    now: String,
    previous: String,
    target: Option<String>,
    met: Option<bool>,
}

fn figures(r: &MemberCost) -> Vec<Figure> {
    let prev = previous(r.situation, r.master);
    let pct = |v: f64| format!("{:.2}%", v * 100.0);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let forks_target = match r.situation {
        Situation::Idle => TARGET_IDLE_FORKS_PER_MIN,
        Situation::MasterDown => TARGET_UNREADY_FORKS_PER_MIN,
    };
    vec![
        Figure {
            name: "agent CPU (of 1 core)",
            now: pct(r.cpu),
            previous: or_dash(prev.map(|p| pct(p.cpu))),
            target: (r.situation == Situation::Idle).then(|| format!("≤{}", pct(TARGET_IDLE_CPU))),
            met: (r.situation == Situation::Idle).then_some(r.cpu <= TARGET_IDLE_CPU),
        },
        Figure {
            name: "children's CPU",
            now: pct(r.children_cpu),
            previous: or_dash(prev.map(|p| pct(p.children_cpu))),
            target: None,
            met: None,
        },
        Figure {
            name: "RSS (largest)",
            now: format!("{:.1} MiB", r.rss_mib),
            previous: or_dash(prev.map(|p| format!("{:.1} MiB", p.rss_mib))),
            target: Some(format!("≤{TARGET_RSS_MIB:.0} MiB")),
            met: Some(r.rss_mib <= TARGET_RSS_MIB),
        },
        Figure {
            name: "processes started/min",
            now: match r.forks_per_min {
                Some((v, true)) => format!("{v:.1}"),
                Some((v, false)) => format!("≥{v:.1}"),
                None => "not counted".to_string(),
            },
            previous: or_dash(prev.map(|p| format!("{:.1}", p.forks_per_min))),
            target: Some(format!("≤{forks_target:.0}")),
            // A lower bound (events lost) can only show a miss.
            met: match r.forks_per_min {
                Some((v, true)) => Some(v <= forks_target),
                Some((v, false)) if v > forks_target => Some(false),
                _ => None,
            },
        },
    ]
}

fn print_table(rows: &[MemberCost], window: Duration, agent: &Path) {
    println!(
        "agent cost ({} s windows, agent {})",
        window.as_secs(),
        agent.display()
    );
    println!(
        "{:<12} {:<8} {:>6}  {:<22} {:>11} {:>11} {:>9}",
        "situation", "member", "ready", "figure", "measured", "previous", "target"
    );
    for r in rows {
        for (i, f) in figures(r).into_iter().enumerate() {
            let (situation, member, ready) = if i == 0 {
                (
                    r.situation.label().to_string(),
                    r.member.clone(),
                    format!("{:.0}%", r.ready_share * 100.0),
                )
            } else {
                Default::default()
            };
            println!(
                "{situation:<12} {member:<8} {ready:>6}  {:<22} {:>11} {:>11} {:>9} {}",
                f.name,
                f.now,
                f.previous,
                f.target.unwrap_or_default(),
                match f.met {
                    Some(true) => "ok",
                    Some(false) => "MISSED",
                    None => "",
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_a_command_with_spaces_and_parentheses() {
        let stat = "4242 (pgset agent) (x)) S 1 4242 4242 0 -1 4194560 1510 0 0 0 \
                    37 12 5 3 20 0 9 0 123456 123456789 1234 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some((49, 8)));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tpgset-agent\nVmPeak:\t  30000 kB\nVmRSS:\t    7312 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss(status), Some(7312));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn figures_are_judged_against_their_targets() {
        let row = MemberCost {
            situation: Situation::MasterDown,
            member: "pgset-1".into(),
            master: false,
            cpu: 0.25,
            children_cpu: 0.1,
            rss_mib: 8.0,
            forks_per_min: Some((1500.0, true)),
            ready_share: 0.0,
        };
        let f = figures(&row);
        assert_eq!(f[0].met, None, "no CPU target while the master is down");
        assert_eq!(f[2].met, Some(true));
        assert_eq!(f[3].now, "1500.0");
        assert_eq!(f[3].target.as_deref(), Some("≤6"));
        assert_eq!(f[3].met, Some(false));
        let idle = MemberCost {
            situation: Situation::Idle,
            cpu: 0.02,
            forks_per_min: Some((0.0, false)),
            ..row
        };
        let f = figures(&idle);
        assert_eq!(f[0].met, Some(false));
        assert_eq!(f[3].now, "≥0.0");
        assert_eq!(f[3].met, None, "a lower bound cannot show the target met");
    }
}
