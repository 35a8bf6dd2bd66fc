//! The local drills' recovery figures beside their targets: on a 3-member local set (ports
//! 28390-28392), every drill runs `ROUNDS` times; for the drills that take the master away, the
//! median time until writes are accepted again (target ≤ 10 s) and until every replica streams
//! after the master is ready (target ≤ 2 s); for the others, the median time until every replica
//! streams again. The failover drills get a table of their own: writes accepted again after the
//! fault (target ≤ 15 s), commits the old master acknowledged after the new master's first
//! (target 0, the worst round), RPO as measured (asynchronous replication), and the master
//! before and after. Last, a series of consecutive failover drills on a set with synchronous
//! replication (`required`, one standby), alternating `master-freeze` and `master-isolated`:
//! acknowledged rows lost over the whole series beside its target, 0.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result};
use pgset_drill::report::{FAILOVER_WRITE_TARGET_S, REJOIN_TARGET_S, WRITE_RECOVERY_TARGET_S};
use pgset_drill::{DrillName, DrillReport, Verdict, local::LocalOptions};
use pgset_local::{self as local, UpOptions};
use pgset_spec::{Durability, Synchronous};

/// Port of the set's master (members on the next ports, health ports 1000 above).
const PORT: u16 = 28390;
/// Rounds per drill.
const ROUNDS: usize = 3;
/// The failover drills of the synchronous series, taken in turn.
pub const SYNC_SERIES: [DrillName; 2] = [DrillName::MasterFreeze, DrillName::MasterIsolated];

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn verdict(value: Option<f64>, target: f64) -> String {
    match value {
        None => "-".into(),
        Some(v) if v <= target => format!("{v:>6.2}s ≤{target:.0}s ok"),
        Some(v) => format!("{v:>6.2}s ≤{target:.0}s MISSED"),
    }
}

/// One line per drill of `drills`: medians over the rounds beside the targets.
pub fn lines(reports: &[DrillReport], drills: &[DrillName]) -> Vec<String> {
    drills
        .iter()
        .map(|d| {
            let of = |f: fn(&DrillReport) -> Option<f64>| {
                median(
                    reports
                        .iter()
                        .filter(|r| r.drill == *d)
                        .filter_map(f)
                        .collect(),
                )
            };
            let failed = reports
                .iter()
                .filter(|r| r.drill == *d && r.verdict == Verdict::Fail)
                .count();
            format!(
                "{:<31} {:<24} {:<24} {:>8} {}",
                d.as_str(),
                if d.touches_master() {
                    verdict(
                        of(|r| r.writes_accepted_again_after_s),
                        WRITE_RECOVERY_TARGET_S,
                    )
                } else {
                    "-".into()
                },
                if d.touches_master() {
                    verdict(of(|r| r.streaming_after_master_ready_s), REJOIN_TARGET_S)
                } else {
                    "-".into()
                },
                of(|r| r.all_streaming_after_s).map_or("-".into(), |s| format!("{s:.2}s")),
                if failed > 0 {
                    format!("{failed} round(s) FAILED")
                } else {
                    String::new()
                }
            )
        })
        .collect()
}

/// `worst ≤0 ok` / `worst ≤0 MISSED` for a count whose target is 0 (`-` when none measured).
fn zero_target(worst: Option<usize>) -> String {
    match worst {
        None => "-".into(),
        Some(0) => format!("{:>6} ≤0 ok", 0),
        Some(n) => format!("{n:>6} ≤0 MISSED"),
    }
}

/// One line per failover drill of `drills`: the median time until writes were accepted again
/// after the fault beside its target (0 when the writer that follows the master was never
/// refused), the median time until a new master acknowledged its first commit, the worst round's
/// late commits beside 0, RPO (median and worst round) as measured, the masters of the last
/// round and the bytes of diverged WAL kept.
pub fn failover_lines(reports: &[DrillReport], drills: &[DrillName]) -> Vec<String> {
    drills
        .iter()
        .filter(|d| DrillName::FAILOVER.contains(d))
        .map(|d| {
            let of: Vec<&DrillReport> = reports.iter().filter(|r| r.drill == *d).collect();
            // A writer that was never refused had writes accepted all along: 0 s.
            let back = median(
                of.iter()
                    .filter_map(|r| {
                        r.writes_accepted_again_after_s
                            .or((!r.writes_unresolved).then_some(0.0))
                    })
                    .collect(),
            );
            let takeover = median(
                of.iter()
                    .filter_map(|r| r.new_master_first_commit_after_s)
                    .collect(),
            );
            let late = of.iter().filter_map(|r| r.late_commits).max();
            let rpo = median(of.iter().map(|r| r.rows_missing as f64).collect());
            let rpo_worst = of.iter().map(|r| r.rows_missing).max();
            let last = of.last();
            let master = last
                .map(|r| {
                    format!(
                        "{} -> {}",
                        r.master_before.as_deref().unwrap_or("-"),
                        r.master_after.as_deref().unwrap_or("-")
                    )
                })
                .unwrap_or_else(|| "-".into());
            let kept: u64 = of
                .iter()
                .flat_map(|r| r.kept_diverged.iter().map(|k| k.bytes_after_fork))
                .sum();
            let failed = of.iter().filter(|r| r.verdict == Verdict::Fail).count();
            format!(
                "{:<31} {:<24} {:>10} {:<16} {:>12} {:<22} {:>10} {}",
                d.as_str(),
                if d.touches_master() {
                    verdict(back, FAILOVER_WRITE_TARGET_S)
                } else {
                    back.map_or("-".into(), |s| format!("{s:>6.2}s"))
                },
                takeover.map_or("-".into(), |s| format!("{s:.2}s")),
                zero_target(late),
                match (rpo, rpo_worst) {
                    (Some(m), Some(w)) => format!("{m:.0} (max {w})"),
                    _ => "-".into(),
                },
                master,
                kept,
                if failed > 0 {
                    format!("{failed} round(s) FAILED")
                } else {
                    String::new()
                }
            )
        })
        .collect()
}

/// Drills that leave the set broken today (an agent-side defect they find), run once each on a
/// set of their own after the others, so the other drills' rounds are not cut short.
pub const ON_A_SET_OF_THEIR_OWN: [DrillName; 1] = [DrillName::MasterAgentFreeze];

/// Forms a 3-member set in `dir`, runs `rounds` rounds of `drills` on it, and stops it; a drill
/// that does not run is said and left out of the figures (the next one judges the set itself).
async fn rounds_on_a_set(
    dir: &std::path::Path,
    agent: &std::path::Path,
    drills: &[DrillName],
    rounds: usize,
    synchronous: Option<Synchronous>,
    reports: &mut Vec<DrillReport>,
) -> Result<()> {
    let mut up = UpOptions::new(dir, 3, PORT, agent);
    up.ready_timeout = Duration::from_secs(300);
    up.synchronous = synchronous;
    let result = async {
        eprintln!(
            "==> drills: a 3-member local set on ports {PORT}..{} ({})",
            if synchronous.is_some() {
                ", synchronous replication (required, 1 standby)"
            } else {
                ""
            },
            dir.display()
        );
        local::up(&up).await.context("form the drills' set")?;
        let mut opts = LocalOptions::new(dir, agent);
        if drills.iter().all(|d| ON_A_SET_OF_THEIR_OWN.contains(d)) {
            // It is known not to end healthy: do not wait the whole recovery timeout for it.
            opts.recovery_timeout = Duration::from_secs(60);
        }
        for round in 1..=rounds {
            for &d in drills {
                // A member copies only once: its copy stays (data is never deleted), so the
                // restart-during-base-backup drill runs in the first round only.
                if round > 1 && d == DrillName::AgentRestartDuringBasebackup {
                    continue;
                }
                eprintln!("    round {round}: {d}");
                match pgset_drill::local::run(&opts, d).await {
                    Ok(r) => {
                        for p in &r.problems {
                            eprintln!("    {d}: {p}");
                        }
                        reports.push(r);
                    }
                    Err(e) => eprintln!("    {d}: did not run: {e}"),
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = local::down(dir, false).await;
    result
}

/// What the synchronous series measured: rounds run, acknowledged rows lost in all and in the
/// worst round, late commits in the worst round, the median time until writes were accepted
/// again, and the rounds that failed or did not run.
pub fn sync_series_line(reports: &[DrillReport], asked: usize) -> String {
    let lost: usize = reports.iter().map(|r| r.rows_missing).sum();
    let worst = reports.iter().map(|r| r.rows_missing).max();
    let late = reports.iter().filter_map(|r| r.late_commits).max();
    let back = median(
        reports
            .iter()
            .filter_map(|r| {
                r.writes_accepted_again_after_s
                    .or((!r.writes_unresolved).then_some(0.0))
            })
            .collect(),
    );
    let failed = reports
        .iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .count();
    let missing = asked.saturating_sub(reports.len());
    let lost_verdict = match worst {
        None => "-".to_string(),
        Some(_) if lost == 0 => format!("{:>6} ≤0 ok", 0),
        Some(w) => format!("{lost:>6} ≤0 MISSED (worst round {w})"),
    };
    format!(
        "{:<31} {:>6} {:<34} {:<16} {:<24}{}{}",
        "synchronous failover series",
        reports.len(),
        lost_verdict,
        zero_target(late),
        verdict(back, FAILOVER_WRITE_TARGET_S),
        if failed > 0 {
            format!(" {failed} round(s) FAILED")
        } else {
            String::new()
        },
        if missing > 0 {
            format!(" {missing} round(s) DID NOT RUN")
        } else {
            String::new()
        }
    )
}

/// `rounds` consecutive failover drills ([`SYNC_SERIES`] in turn) on a set of their own with
/// synchronous replication (`required`, one standby); their reports.
async fn sync_series(
    dir: &std::path::Path,
    agent: &std::path::Path,
    rounds: usize,
) -> Result<Vec<DrillReport>> {
    let mut reports = Vec::new();
    let rounds_each = rounds.div_ceil(SYNC_SERIES.len());
    let synchronous = Synchronous {
        number: 1,
        durability: Durability::Required,
    };
    rounds_on_a_set(
        dir,
        agent,
        &SYNC_SERIES,
        rounds_each,
        Some(synchronous),
        &mut reports,
    )
    .await?;
    reports.truncate(rounds);
    Ok(reports)
}

/// The synchronous failover series alone: `rounds` consecutive failover drills on a set of
/// their own with synchronous replication (`required`, one standby), and its line.
pub async fn run_sync_only(rounds: usize) -> Result<()> {
    let agent = crate::local::build_agent()?;
    let tmp = tempfile::Builder::new()
        .prefix("pgset-bench-sync-")
        .tempdir_in("/tmp")
        .context("temp dir")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let sync = sync_series(&tmp.path().join("synchronous"), &agent, rounds).await?;
    print_sync(&sync, rounds);
    Ok(())
}

fn print_sync(sync: &[DrillReport], rounds: usize) {
    println!(
        "{:<31} {:>6} {:<34} {:<16} {:<24}",
        "required, 1 standby; alternating",
        "rounds",
        "acknowledged rows lost (all rounds)",
        "late commits",
        "writes accepted again"
    );
    println!("{}", sync_series_line(sync, rounds));
}

/// Forms the set, runs the drills, prints the medians, and stops the set; then the drills that
/// leave a set broken, once each on a set of their own; then `sync_rounds` consecutive failover
/// drills under synchronous replication (none when 0).
pub async fn run(sync_rounds: usize) -> Result<()> {
    let agent = crate::local::build_agent()?;
    let tmp = tempfile::Builder::new()
        .prefix("pgset-bench-drills-")
        .tempdir_in("/tmp")
        .context("temp dir")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut reports = Vec::new();
    let shared: Vec<DrillName> = DrillName::LOCAL
        .into_iter()
        .filter(|d| !ON_A_SET_OF_THEIR_OWN.contains(d))
        .collect();
    rounds_on_a_set(
        &tmp.path().join("set"),
        &agent,
        &shared,
        ROUNDS,
        None,
        &mut reports,
    )
    .await?;
    for (i, d) in ON_A_SET_OF_THEIR_OWN.into_iter().enumerate() {
        let dir = tmp.path().join(format!("own-{i}"));
        rounds_on_a_set(&dir, &agent, &[d], 1, None, &mut reports).await?;
    }
    let sync = if sync_rounds > 0 {
        Some(sync_series(&tmp.path().join("synchronous"), &agent, sync_rounds).await?)
    } else {
        None
    };
    println!(
        "{:<31} {:<24} {:<24} {:>8}",
        "local drill (median of 3)", "writes accepted again", "streaming after ready", "re-join"
    );
    let plain: Vec<DrillName> = DrillName::LOCAL
        .into_iter()
        .filter(|d| !DrillName::FAILOVER.contains(d))
        .collect();
    for l in lines(&reports, &plain) {
        println!("{l}");
    }
    println!();
    println!(
        "{:<31} {:<24} {:>10} {:<16} {:>12} {:<22} {:>10}",
        "failover drill (3 rounds; master-agent-freeze 1)",
        "writes accepted again",
        "new master",
        "late commits",
        "RPO (rows)",
        "master (last round)",
        "kept bytes"
    );
    for l in failover_lines(&reports, &DrillName::LOCAL) {
        println!("{l}");
    }
    if let Some(sync) = sync {
        println!();
        print_sync(&sync, sync_rounds);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_targets() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
        assert_eq!(verdict(Some(1.5), 10.0), "  1.50s ≤10s ok");
        assert_eq!(verdict(Some(2.5), 2.0), "  2.50s ≤2s MISSED");
        assert_eq!(verdict(None, 2.0), "-");
        assert_eq!(zero_target(Some(0)), "     0 ≤0 ok");
        assert_eq!(zero_target(Some(37)), "    37 ≤0 MISSED");
        assert_eq!(zero_target(None), "-");
    }

    fn round(drill: DrillName, back: f64, late: Option<usize>, rpo: usize) -> DrillReport {
        let json = serde_json::json!({
            "drill": drill, "verdict": "pass", "problems": [], "members": 3, "target": "pgset-0",
            "steps": [], "fault_at_s": 1.0, "duration_s": 30.0, "writes_attempted": 100,
            "rows_committed": 100, "writes_refused_s": back, "longest_write_refusal_s": back,
            "writes_unresolved": false, "writes_accepted_again_after_s": back,
            "rows_missing": rpo, "rows_missing_on_replicas": 0, "read_from": "pgset-2",
            "reads_attempted": 100, "reads_refused_s": 0.0, "reads_unresolved": false,
            "master_ready_after_s": null, "all_streaming_after_s": null,
            "streaming_after_master_ready_s": null, "recloned": [], "healthy_after": true,
            "master_before": "pgset-0", "timeline_before": 1, "master_after": "pgset-1",
            "timeline_after": 2, "late_commits": late
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn failover_lines_judge_the_median_recovery_and_the_worst_late_commits() {
        let reports = [
            round(DrillName::MasterFreeze, 16.0, Some(0), 0),
            round(DrillName::MasterFreeze, 14.0, Some(0), 2),
            round(DrillName::MasterFreeze, 13.0, Some(0), 0),
            round(DrillName::MasterAgentFreeze, 17.0, Some(0), 0),
            round(DrillName::MasterAgentFreeze, 17.5, Some(120), 120),
        ];
        let l = failover_lines(&reports, &DrillName::LOCAL);
        assert_eq!(l.len(), DrillName::FAILOVER.len(), "{l:#?}");
        assert!(l[0].starts_with("master-freeze"), "{l:#?}");
        assert!(l[0].contains(" 14.00s ≤15s ok"), "{l:#?}");
        assert!(l[0].contains("     0 ≤0 ok"), "{l:#?}");
        assert!(l[0].contains("0 (max 2)"), "{l:#?}");
        assert!(l[0].contains("pgset-0 -> pgset-1"), "{l:#?}");
        // Never refused: writes were accepted all along.
        let mut all_along = round(DrillName::MasterIsolated, 0.0, Some(3), 3);
        all_along.writes_accepted_again_after_s = None;
        all_along.new_master_first_commit_after_s = Some(15.7);
        let l2 = failover_lines(&[all_along], &[DrillName::MasterIsolated]);
        assert!(l2[0].contains("  0.00s ≤15s ok"), "{l2:#?}");
        assert!(l2[0].contains("15.70s"), "{l2:#?}");
        assert!(l2[0].contains("     3 ≤0 MISSED"), "{l2:#?}");
        assert!(l[1].starts_with("master-agent-freeze"), "{l:#?}");
        assert!(l[1].contains(" 17.50s ≤15s MISSED"), "{l:#?}");
        assert!(l[1].contains("   120 ≤0 MISSED"), "{l:#?}");
        // A drill with no round has no figures.
        assert!(l[2].starts_with("master-agent-kill"), "{l:#?}");
        assert!(l[2].contains(" - "), "{l:#?}");
    }

    #[test]
    fn the_synchronous_series_counts_every_lost_row_and_the_rounds_that_did_not_run() {
        let clean = [
            round(DrillName::MasterFreeze, 13.0, Some(0), 0),
            round(DrillName::MasterIsolated, 12.0, Some(0), 0),
            round(DrillName::MasterFreeze, 14.0, Some(0), 0),
        ];
        let l = sync_series_line(&clean, 3);
        assert!(l.starts_with("synchronous failover series"), "{l}");
        assert!(l.contains("      3      0 ≤0 ok"), "{l}");
        assert!(l.contains(" 13.00s ≤15s ok"), "{l}");
        assert!(!l.contains("FAILED") && !l.contains("DID NOT RUN"), "{l}");
        // One row lost in one round misses the target, whatever the others did.
        let mut lossy = clean.to_vec();
        lossy[1].rows_missing = 1;
        lossy[1].verdict = Verdict::Fail;
        let l = sync_series_line(&lossy, 4);
        assert!(l.contains("     1 ≤0 MISSED (worst round 1)"), "{l}");
        assert!(l.contains("1 round(s) FAILED"), "{l}");
        assert!(l.contains("1 round(s) DID NOT RUN"), "{l}");
        assert!(sync_series_line(&[], 50).contains("50 round(s) DID NOT RUN"));
    }
}
