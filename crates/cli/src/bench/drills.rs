//! The local drills' recovery figures beside their targets: on a 3-member local set (ports
//! 28390-28392), every drill runs `ROUNDS` times; for the drills that take the master away, the
//! median time until writes are accepted again (target ≤ 10 s) and until every replica streams
//! after the master is ready (target ≤ 2 s); for the others, the median time until every replica
//! streams again.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result};
use pgset_drill::report::{REJOIN_TARGET_S, WRITE_RECOVERY_TARGET_S};
use pgset_drill::{DrillName, DrillReport, Verdict, local::LocalOptions};
use pgset_local::{self as local, UpOptions};

/// Port of the set's master (members on the next ports, health ports 1000 above).
const PORT: u16 = 28390;
/// Rounds per drill.
const ROUNDS: usize = 3;

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

/// Forms the set, runs the drills, prints the medians, and stops the set.
pub async fn run() -> Result<()> {
    let agent = crate::local::build_agent()?;
    let tmp = tempfile::Builder::new()
        .prefix("pgset-bench-drills-")
        .tempdir_in("/tmp")
        .context("temp dir")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let dir = tmp.path().join("set");
    let mut up = UpOptions::new(&dir, 3, PORT, &agent);
    up.ready_timeout = Duration::from_secs(300);
    let result = async {
        eprintln!("==> drills: a 3-member local set on ports {PORT}..");
        local::up(&up).await.context("form the drills' set")?;
        let opts = LocalOptions::new(&dir, &agent);
        let mut reports = Vec::new();
        for round in 1..=ROUNDS {
            for d in DrillName::LOCAL {
                // A member copies only once: its copy stays (data is never deleted), so the
                // restart-during-base-backup drill runs in the first round only.
                if round > 1 && d == DrillName::AgentRestartDuringBasebackup {
                    continue;
                }
                eprintln!("    round {round}: {d}");
                reports.push(
                    pgset_drill::local::run(&opts, d)
                        .await
                        .with_context(|| format!("drill {d}"))?,
                );
            }
        }
        Ok::<_, anyhow::Error>(reports)
    }
    .await;
    let _ = local::down(&dir, false).await;
    let reports = result?;
    println!(
        "{:<31} {:<24} {:<24} {:>8}",
        "local drill (median of 3)", "writes accepted again", "streaming after ready", "re-join"
    );
    for l in lines(&reports, &DrillName::LOCAL) {
        println!("{l}");
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
    }
}
