//! The outcome of a verify run: named checks with verdicts, durations and measurements, rendered
//! as a table for people and as stable JSON for scripts.
//!
//! JSON fields (stable): `cluster`, `namespace`, `passed` (no check failed), `duration_ms`, and
//! `checks[]` with `name`, `verdict` (`pass` | `fail` | `skipped`), `duration_ms`, `message`
//! (the skip reason for a skipped check) and `measurements` (only the measured ones: `lag_ms`,
//! `replay_lag_ms`, `recovery_s`, `rejoin_s`, `streaming_resumed_s`, `join_s`); `warnings[]` when cleanup
//! failed or member isolation is not enforced on the cluster.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The property holds.
    Pass,
    /// The property does not hold (or could not be established).
    Fail,
    /// Not run; the message says why.
    Skipped,
}

impl Verdict {
    /// The table's mark.
    pub fn mark(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "SKIP",
        }
    }
}

/// Numbers a check measured. Absent ones are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    /// Replication lag of the marker write: from its commit on the master to its first sight on
    /// the slowest replica (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<f64>,
    /// Largest `pg_stat_replication.replay_lag` the master reported (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lag_ms: Option<f64>,
    /// Time from deleting the master pod to the same-named pod Ready again (s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_s: Option<f64>,
    /// Time from the master pod seen Ready again until every replica is seen streaming (s); the
    /// whole wait when they never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin_s: Option<f64>,
    /// Time from deleting the master pod until every replica streams again (s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_resumed_s: Option<f64>,
    /// Time from the scale-out request to the new member streaming (s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_s: Option<f64>,
}

impl Measurements {
    /// True when nothing was measured.
    pub fn is_empty(&self) -> bool {
        *self == Measurements::default()
    }

    /// `lag 4.8 ms, recovery 12.0 s`, for the table.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.lag_ms {
            parts.push(format!("lag {v:.1} ms"));
        }
        if let Some(v) = self.replay_lag_ms {
            parts.push(format!("replay_lag {v:.1} ms"));
        }
        if let Some(v) = self.recovery_s {
            parts.push(format!("recovery {v:.1} s"));
        }
        if let Some(v) = self.rejoin_s {
            parts.push(format!("rejoin {v:.1} s"));
        }
        if let Some(v) = self.streaming_resumed_s {
            parts.push(format!("streaming {v:.1} s"));
        }
        if let Some(v) = self.join_s {
            parts.push(format!("join {v:.1} s"));
        }
        parts.join(", ")
    }
}

/// What a check found, before it is named and timed.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The verdict.
    pub verdict: Verdict,
    /// One line saying what was seen.
    pub message: String,
    /// What was measured.
    pub measurements: Measurements,
}

impl Finding {
    /// A passing finding.
    pub fn pass(message: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::Pass,
            message: message.into(),
            measurements: Measurements::default(),
        }
    }

    /// A failing finding.
    pub fn fail(message: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::Fail,
            message: message.into(),
            measurements: Measurements::default(),
        }
    }

    /// A skipped check, with the reason.
    pub fn skipped(reason: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::Skipped,
            message: reason.into(),
            measurements: Measurements::default(),
        }
    }

    /// Pass when `problems` is empty (with `ok`), else fail listing them.
    pub fn from_problems(problems: Vec<String>, ok: impl Into<String>) -> Finding {
        if problems.is_empty() {
            Finding::pass(ok)
        } else {
            Finding::fail(problems.join("; "))
        }
    }

    /// The same finding with measurements.
    pub fn with(mut self, measurements: Measurements) -> Finding {
        self.measurements = measurements;
        self
    }
}

/// One named, timed check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable name (see [`crate::checks::names`]).
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// How long the check took.
    pub duration_ms: u64,
    /// One line: what was seen, or why it was skipped.
    pub message: String,
    /// What was measured.
    #[serde(default, skip_serializing_if = "Measurements::is_empty")]
    pub measurements: Measurements,
}

impl Check {
    /// Names and times a finding.
    pub fn new(name: &str, finding: Finding, duration: Duration) -> Check {
        Check {
            name: name.to_string(),
            verdict: finding.verdict,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            message: one_line(&finding.message),
            measurements: finding.measurements,
        }
    }
}

/// Every check of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Cluster name.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// True when no check failed.
    pub passed: bool,
    /// Duration of the whole run.
    pub duration_ms: u64,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
    /// Things that went wrong outside the checks (cleanup); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Report {
    /// A report over `checks`; `passed` is derived from them.
    pub fn new(cluster: &str, namespace: &str, checks: Vec<Check>, duration: Duration) -> Report {
        Report {
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
            passed: checks.iter().all(|c| c.verdict != Verdict::Fail),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            checks,
            warnings: Vec::new(),
        }
    }

    /// Checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.verdict == Verdict::Fail)
    }

    /// What the check named `name` measured (nothing when it did not run).
    pub fn measurements(&self, name: &str) -> Measurements {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.measurements.clone())
            .unwrap_or_default()
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Column-aligned table: verdict, check, time, message (with measurements), then a summary.
    pub fn to_table(&self) -> String {
        let name_width = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .chain(["CHECK".len()])
            .max()
            .unwrap_or(5);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<6}{:<name_width$}  {:>7}  MESSAGE",
            "", "CHECK", "TIME"
        );
        for c in &self.checks {
            let mut message = c.message.clone();
            let measured = c.measurements.summary();
            if !measured.is_empty() {
                let _ = write!(message, " [{measured}]");
            }
            let _ = writeln!(
                out,
                "{:<6}{:<name_width$}  {:>7}  {message}",
                c.verdict.mark(),
                c.name,
                seconds(c.duration_ms)
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let count = |v| self.checks.iter().filter(|c| c.verdict == v).count();
        let _ = writeln!(
            out,
            "\n{}/{} {}: {} passed, {} failed, {} skipped in {}",
            self.namespace,
            self.cluster,
            if self.passed { "OK" } else { "FAILED" },
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::Skipped),
            seconds(self.duration_ms)
        );
        out
    }
}

/// Escapes text for a Markdown table cell (one line, no column breaks).
pub fn md_cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

impl Report {
    /// The report as Markdown, the artifact a workshop hands out and a pipeline archives: the
    /// verdict, one table row per check with its evidence (the message) and measurements, and
    /// the warnings.
    pub fn to_markdown(&self) -> String {
        let count = |v| self.checks.iter().filter(|c| c.verdict == v).count();
        let mut out = format!(
            "# pgset verify: {}/{}\n\n**{}**: {} passed, {} failed, {} skipped in {}.\n\n",
            self.namespace,
            self.cluster,
            if self.passed { "OK" } else { "FAILED" },
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::Skipped),
            seconds(self.duration_ms)
        );
        out += "| verdict | check | time | evidence | measured |\n|---|---|---|---|---|\n";
        for c in &self.checks {
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} | {} |",
                c.verdict.mark(),
                c.name,
                seconds(c.duration_ms),
                md_cell(&c.message),
                md_cell(&c.measurements.summary())
            );
        }
        if !self.warnings.is_empty() {
            out += "\n## Warnings\n\n";
            for w in &self.warnings {
                let _ = writeln!(out, "- {}", one_line(w));
            }
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_table())
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// Collapses a multi-line message (stderr of a command) into one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let lag = Measurements {
            lag_ms: Some(4.79),
            ..Measurements::default()
        };
        Report::new(
            "pgset",
            "default",
            vec![
                Check::new(
                    "pods-ready-in-order",
                    Finding::pass("3 pods Running and Ready"),
                    Duration::from_millis(120),
                ),
                Check::new(
                    "replicated-write",
                    Finding::pass("marker read on 2 replicas").with(lag),
                    Duration::from_millis(1830),
                ),
                Check::new(
                    "scale-out",
                    Finding::skipped("needs --scale-test"),
                    Duration::ZERO,
                ),
            ],
            Duration::from_millis(2000),
        )
    }

    #[test]
    fn markdown_has_the_verdict_a_row_per_check_and_escaped_evidence() {
        let mut r = sample();
        r.checks[0].message = "3 pods | all\nReady".into();
        r.warnings.push("could not delete the marker table".into());
        let md = r.to_markdown();
        assert!(
            md.starts_with(
                "# pgset verify: default/pgset\n\n**OK**: 2 passed, 0 failed, 1 skipped in 2.0s."
            ),
            "{md}"
        );
        assert!(
            md.contains("| PASS | `pods-ready-in-order` | 0.1s | 3 pods \\| all Ready |  |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| PASS | `replicated-write` | 1.8s | marker read on 2 replicas | lag 4.8 ms |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| SKIP | `scale-out` | 0.0s | needs --scale-test |  |"),
            "{md}"
        );
        assert!(
            md.ends_with("## Warnings\n\n- could not delete the marker table\n"),
            "{md}"
        );
    }

    #[test]
    fn table_is_aligned_and_summarised() {
        let table = sample().to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0], "      CHECK                   TIME  MESSAGE",
            "{table}"
        );
        assert_eq!(
            lines[1],
            "PASS  pods-ready-in-order     0.1s  3 pods Running and Ready"
        );
        assert_eq!(
            lines[2],
            "PASS  replicated-write        1.8s  marker read on 2 replicas [lag 4.8 ms]"
        );
        assert_eq!(
            lines[3],
            "SKIP  scale-out               0.0s  needs --scale-test"
        );
        assert_eq!(
            lines[5],
            "default/pgset OK: 2 passed, 0 failed, 1 skipped in 2.0s"
        );
    }

    #[test]
    fn json_field_names_are_stable() {
        let json: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(json["passed"], true);
        assert_eq!(json["checks"][1]["name"], "replicated-write");
        assert_eq!(json["checks"][1]["verdict"], "pass");
        assert_eq!(json["checks"][1]["duration_ms"], 1830);
        assert_eq!(json["checks"][1]["measurements"]["lag_ms"], 4.79);
        assert_eq!(json["checks"][2]["verdict"], "skipped");
        assert_eq!(json["checks"][2]["message"], "needs --scale-test");
        assert!(json["checks"][0].get("measurements").is_none());
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn one_failure_fails_the_report() {
        let mut r = sample();
        r.checks.push(Check::new(
            "streaming",
            Finding::fail("pgset-2 missing\nfrom pg_stat_replication"),
            Duration::from_millis(10),
        ));
        let r = Report::new(&r.cluster, &r.namespace, r.checks, Duration::ZERO);
        assert!(!r.passed);
        assert_eq!(r.failed().count(), 1);
        assert_eq!(
            r.checks[3].message,
            "pgset-2 missing from pg_stat_replication"
        );
        assert!(
            r.to_table()
                .contains("FAILED: 2 passed, 1 failed, 1 skipped")
        );
    }
}
