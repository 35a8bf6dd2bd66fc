//! A drill's report: its figures, the problems that fail it, and its rendering as a table or
//! JSON. The verdict is a pure function of the figures.

use serde::{Deserialize, Serialize};

use crate::DrillName;

/// Writes accepted again at most this long after the master went away (the target for
/// a single-node cluster).
pub const WRITE_RECOVERY_TARGET_S: f64 = 10.0;
/// Every replica streaming at most this long after the master is ready again.
pub const REJOIN_TARGET_S: f64 = 2.0;
/// Writes accepted again at most this long after a frozen, cut-off or killed master (a replica
/// takes over once the 13 s lease ran out).
pub const FAILOVER_WRITE_TARGET_S: f64 = 15.0;

/// A copy a drill left with writes the cluster does not have (`<member>.diverged-<time>`), and
/// whether the set's status (`local status`, `status`) warned of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptDiverged {
    /// The member.
    pub member: String,
    /// The directory.
    pub path: String,
    /// WAL bytes the member wrote after the fork.
    pub bytes_after_fork: u64,
    /// Whether the set's status named it, with its bytes, among its warnings.
    pub warned: bool,
}

/// Whether a drill passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing committed was lost and the set came back whole.
    Pass,
    /// See the problems.
    Fail,
}

/// One step of a drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Seconds from the drill's start.
    pub at_s: f64,
    /// What was done or seen.
    pub what: String,
}

/// What a drill measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The drill.
    pub drill: DrillName,
    /// Its verdict.
    pub verdict: Verdict,
    /// Why it failed (empty when it passed).
    pub problems: Vec<String>,
    /// Members of the set.
    pub members: usize,
    /// The member the fault hit.
    pub target: String,
    /// What was done, in order.
    pub steps: Vec<Step>,
    /// When the fault was injected (seconds from the start).
    pub fault_at_s: f64,
    /// How long the drill ran (seconds).
    pub duration_s: f64,
    /// Write statements attempted.
    pub writes_attempted: usize,
    /// Rows whose COMMIT returned OK.
    pub rows_committed: usize,
    /// RTO: total time writes were refused (seconds).
    pub writes_refused_s: f64,
    /// The longest single window of refused writes (seconds).
    pub longest_write_refusal_s: f64,
    /// Writes were refused and never accepted again.
    pub writes_unresolved: bool,
    /// Seconds from the fault until writes were accepted again (when they were refused).
    pub writes_accepted_again_after_s: Option<f64>,
    /// RPO: committed rows missing on the master afterwards.
    pub rows_missing: usize,
    /// Committed rows a replica still lacked after it had time to catch up (the largest).
    pub rows_missing_on_replicas: usize,
    /// The replica the reader read through.
    pub read_from: String,
    /// Read statements attempted.
    pub reads_attempted: usize,
    /// Total time reads were refused (seconds).
    pub reads_refused_s: f64,
    /// Reads were refused and never answered again.
    pub reads_unresolved: bool,
    /// Seconds from the fault until the master answered ready again (when it went away).
    pub master_ready_after_s: Option<f64>,
    /// Seconds from the fault until every replica streamed again (when streaming broke).
    pub all_streaming_after_s: Option<f64>,
    /// Seconds from the master ready again until every replica streamed.
    pub streaming_after_master_ready_s: Option<f64>,
    /// Members whose data directory was copied anew (a new inode, or a new `.previous`).
    pub recloned: Vec<String>,
    /// Whether every member was ready and every replica streaming when the drill ended.
    pub healthy_after: bool,
    /// The master before the fault: the member (or server) that acknowledged the last commit
    /// before it.
    #[serde(default)]
    pub master_before: Option<String>,
    /// Its timeline then.
    #[serde(default)]
    pub timeline_before: Option<i32>,
    /// The master at the end: the member (or server) that acknowledged the last commit.
    #[serde(default)]
    pub master_after: Option<String>,
    /// Its timeline then.
    #[serde(default)]
    pub timeline_after: Option<i32>,
    /// Seconds from the fault to the new master's first acknowledged commit (when the master
    /// changed).
    #[serde(default)]
    pub new_master_first_commit_after_s: Option<f64>,
    /// Commits the old master acknowledged after the new master's first (when the master
    /// changed): must be 0, or two masters accepted writes at once.
    #[serde(default)]
    pub late_commits: Option<usize>,
    /// Copies with diverged writes the drill caused and left (kept, never deleted by a drill).
    #[serde(default)]
    pub kept_diverged: Vec<KeptDiverged>,
    /// Figures no promise covers, stated so they are not hidden (they do not fail the drill).
    #[serde(default)]
    pub notes: Vec<String>,
    /// A step of the fault that failed (a failover drill is reported all the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_error: Option<String>,
}

impl DrillReport {
    /// Sets the verdict and the problems from the figures.
    pub fn judge(&mut self) {
        let mut p = Vec::new();
        if let Some(e) = &self.fault_error {
            p.push(format!("a step of the fault failed: {e}"));
        }
        if self.rows_committed == 0 {
            p.push("no write was committed during the drill: the load did not run".to_string());
        }
        let mut notes = Vec::new();
        if let Some(late) = self.late_commits.filter(|l| *l > 0) {
            p.push(format!(
                "{late} commits were acknowledged by the old master {} after the new master {} \
                 acknowledged its first: two masters accepted writes at once (must be 0)",
                self.master_before.as_deref().unwrap_or("?"),
                self.master_after.as_deref().unwrap_or("?"),
            ));
        }
        if self.drill.fails_over() && self.master_before == self.master_after {
            p.push(format!(
                "no replica took over: {} acknowledged the last commit before the fault and the \
                 last one after it",
                self.master_before.as_deref().unwrap_or("nobody")
            ));
        }
        if self.rows_missing > 0
            && self.drill.may_move_master()
            && self.master_before != self.master_after
        {
            notes.push(format!(
                "{} acknowledged rows are missing on the new master {} (RPO; replication is \
                 asynchronous, so a failover promises no RPO of 0)",
                self.rows_missing,
                self.master_after.as_deref().unwrap_or("?")
            ));
        } else if self.rows_missing > 0 {
            p.push(format!(
                "{} committed rows are missing on the master (RPO must be 0)",
                self.rows_missing
            ));
        }
        if self.drill == DrillName::Rejoin {
            if self.kept_diverged.is_empty() {
                p.push(
                    "the rows written on the replica promoted by hand are not kept in a \
                     .diverged-* copy: they disappeared"
                        .to_string(),
                );
            }
            for k in self.kept_diverged.iter().filter(|k| !k.warned) {
                p.push(format!(
                    "{} holds {} bytes of diverged WAL but the set's status does not warn of it",
                    k.path, k.bytes_after_fork
                ));
            }
        }
        if self.rows_missing_on_replicas > 0 {
            p.push(format!(
                "a replica lacks {} committed rows after it had time to catch up",
                self.rows_missing_on_replicas
            ));
        }
        if self.writes_unresolved {
            p.push("writes were refused and never accepted again".to_string());
        }
        if self.reads_unresolved {
            p.push(format!(
                "reads through {} were refused and never answered again",
                self.read_from
            ));
        }
        if !self.recloned.is_empty() && !self.drill.may_reclone() {
            p.push(format!(
                "copied anew, which this drill must never cause: {}",
                self.recloned.join(", ")
            ));
        }
        if !self.healthy_after {
            p.push("the set was not healthy again at the end of the drill".to_string());
        }
        self.verdict = if p.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        self.problems = p;
        self.notes = notes;
    }

    /// Whether writes came back within [`WRITE_RECOVERY_TARGET_S`] (drills that take the
    /// master away; `None` for the others); for the drills of a frozen, cut-off or killed master,
    /// within [`FAILOVER_WRITE_TARGET_S`] of the fault.
    pub fn write_target_met(&self) -> Option<bool> {
        if self.drill.may_move_master() {
            return Some(
                self.writes_accepted_again_after_s
                    .is_some_and(|s| s <= FAILOVER_WRITE_TARGET_S),
            );
        }
        self.drill
            .touches_master()
            .then_some(self.longest_write_refusal_s <= WRITE_RECOVERY_TARGET_S)
    }

    /// Whether replicas streamed within [`REJOIN_TARGET_S`] of the master being ready.
    pub fn rejoin_target_met(&self) -> Option<bool> {
        self.streaming_after_master_ready_s
            .map(|s| s <= REJOIN_TARGET_S)
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |s| format!("{s:.2}"))
}

/// The reports as a table: one row per drill, then each failed drill's problems.
pub fn table(reports: &[DrillReport]) -> String {
    let mut out = format!(
        "{:<31} {:<7} {:>8} {:>9} {:>4} {:>8} {:>8} {:>10} {:>9} {:<9} {:>5} {}\n",
        "DRILL",
        "VERDICT",
        "COMMITS",
        "W-REFUSED",
        "RPO",
        "R-REFUSED",
        "MASTER-UP",
        "STREAMING",
        "AFTER-UP",
        "RECLONED",
        "LATE",
        "MASTER"
    );
    for r in reports {
        out += &format!(
            "{:<31} {:<7} {:>8} {:>9} {:>4} {:>8} {:>8} {:>10} {:>9} {:<9} {:>5} {}\n",
            r.drill.as_str(),
            match r.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
            },
            r.rows_committed,
            format!("{:.2}s", r.writes_refused_s),
            r.rows_missing,
            format!("{:.2}s", r.reads_refused_s),
            secs(r.master_ready_after_s),
            secs(r.all_streaming_after_s),
            secs(r.streaming_after_master_ready_s),
            if r.recloned.is_empty() {
                "none".to_string()
            } else {
                r.recloned.join(",")
            },
            r.late_commits.map_or("-".to_string(), |l| l.to_string()),
            masters(r)
        );
    }
    for r in reports.iter().filter(|r| r.verdict == Verdict::Fail) {
        for p in &r.problems {
            out += &format!("{}: {p}\n", r.drill);
        }
    }
    for r in reports {
        for n in &r.notes {
            out += &format!("{}: note: {n}\n", r.drill);
        }
        for k in &r.kept_diverged {
            out += &format!(
                "{}: kept {} ({} bytes after the fork){}\n",
                r.drill,
                k.path,
                k.bytes_after_fork,
                if k.warned {
                    ", warned of by the set's status"
                } else {
                    ", NOT warned of"
                }
            );
        }
    }
    out
}

/// `before (tl N) -> after (tl M)`, or `-` when no commit named a master.
fn masters(r: &DrillReport) -> String {
    let one = |m: &Option<String>, tl: Option<i32>| match (m, tl) {
        (Some(m), Some(tl)) => format!("{m} (tl {tl})"),
        (Some(m), None) => m.clone(),
        (None, _) => "-".to_string(),
    };
    if r.master_before.is_none() && r.master_after.is_none() {
        return "-".into();
    }
    format!(
        "{} -> {}",
        one(&r.master_before, r.timeline_before),
        one(&r.master_after, r.timeline_after)
    )
}

fn md(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The reports as Markdown: the table of figures, then each drill's steps and problems.
pub fn markdown(reports: &[DrillReport]) -> String {
    markdown_with(reports, &[])
}

/// [`markdown`], counting the drills that did not run among those that did not pass, and a
/// section naming them with why.
fn markdown_with(reports: &[DrillReport], not_run: &[NotRun]) -> String {
    let passed = reports
        .iter()
        .filter(|r| r.verdict == Verdict::Pass)
        .count();
    let total = reports.len() + not_run.len();
    let mut out = format!(
        "# pgset drills\n\n**{}**: {} of {} drills passed.\n\n",
        if passed == total { "OK" } else { "FAILED" },
        passed,
        total
    );
    out += "| drill | verdict | commits | writes refused | writes accepted again | RPO (rows missing) | reads refused | master ready | every replica streaming | after master ready | re-cloned | late commits | master (timeline) |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    let s = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} s"));
    for r in reports {
        out += &format!(
            "| `{}` | {} | {} | {:.2} s | {} | {} | {:.2} s | {} | {} | {} | {} | {} | {} |\n",
            r.drill,
            match r.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "**FAIL**",
            },
            r.rows_committed,
            r.writes_refused_s,
            s(r.writes_accepted_again_after_s),
            r.rows_missing,
            r.reads_refused_s,
            s(r.master_ready_after_s),
            s(r.all_streaming_after_s),
            s(r.streaming_after_master_ready_s),
            if r.recloned.is_empty() {
                "none".to_string()
            } else {
                md(&r.recloned.join(", "))
            },
            r.late_commits.map_or("-".to_string(), |l| l.to_string()),
            md(&masters(r))
        );
    }
    for r in reports {
        out += &format!(
            "\n## `{}` on {} ({} members, reads through {})\n\n",
            r.drill, r.target, r.members, r.read_from
        );
        for st in &r.steps {
            out += &format!("- {:.2} s: {}\n", st.at_s, md(&st.what));
        }
        for p in &r.problems {
            out += &format!("- **problem**: {}\n", md(p));
        }
        for n in &r.notes {
            out += &format!("- note: {}\n", md(n));
        }
        for k in &r.kept_diverged {
            out += &format!(
                "- kept `{}`: {} bytes of WAL after the fork ({})\n",
                md(&k.path),
                k.bytes_after_fork,
                if k.warned {
                    "the set's status warns of it"
                } else {
                    "**the set's status does not warn of it**"
                }
            );
        }
    }
    out
}

/// A drill that was asked for but did not run to a report, and why (it refused to start on an
/// unhealthy set, did not apply, or a step of it failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotRun {
    /// The drill.
    pub drill: DrillName,
    /// Why it has no report.
    pub why: String,
}

/// What a `drill` command did: the report of every drill that ran, in order, and why each other
/// did not. Always printed whole, whatever failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillRun {
    /// The drills that ran.
    pub reports: Vec<DrillReport>,
    /// The drills that did not, with why.
    #[serde(default)]
    pub not_run: Vec<NotRun>,
    /// Ctrl-C stopped the run (what was undone): the drills after it were not started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
}

impl DrillRun {
    /// Runs each drill with `run`, in order, whatever the ones before did: a drill that ends in
    /// an error is recorded with why, and the next one still judges the set for itself (it
    /// refuses on an unhealthy set without changing anything). `progress` hears a line per
    /// drill.
    pub async fn each<F, Fut>(
        drills: &[DrillName],
        mut run: F,
        progress: &mut dyn FnMut(&str),
    ) -> DrillRun
    where
        F: FnMut(DrillName) -> Fut,
        Fut: std::future::Future<Output = crate::Result<DrillReport>>,
    {
        let mut out = DrillRun::default();
        for &d in drills {
            progress(&format!("==> drill {d}"));
            match run(d).await {
                Ok(r) => {
                    progress(&format!(
                        "    {d}: {}",
                        match r.verdict {
                            Verdict::Pass => "pass",
                            Verdict::Fail => "FAIL",
                        }
                    ));
                    out.reports.push(r);
                }
                Err(crate::Error::Interrupted(what)) => {
                    progress(&format!("    {d}: interrupted: {what}"));
                    out.interrupted = Some(what);
                    break;
                }
                Err(e) => {
                    let why = e.to_string();
                    progress(&format!("    {d}: did not run: {why}"));
                    out.not_run.push(NotRun { drill: d, why });
                }
            }
        }
        out
    }

    /// Drills that failed or did not run.
    pub fn failed(&self) -> usize {
        self.reports
            .iter()
            .filter(|r| r.verdict == Verdict::Fail)
            .count()
            + self.not_run.len()
    }

    /// Drills asked for.
    pub fn total(&self) -> usize {
        self.reports.len() + self.not_run.len()
    }

    /// The figures' table, then a line per drill that did not run.
    pub fn table(&self) -> String {
        let mut out = table(&self.reports);
        for n in &self.not_run {
            out += &format!("{}: did not run: {}\n", n.drill, n.why);
        }
        out
    }

    /// The Markdown report, then a section on the drills that did not run.
    pub fn markdown(&self) -> String {
        let mut out = markdown_with(&self.reports, &self.not_run);
        if !self.not_run.is_empty() {
            out += "\n## Not run\n\n";
            for n in &self.not_run {
                out += &format!("- `{}`: {}\n", n.drill, md(&n.why));
            }
        }
        out
    }

    /// Pretty JSON: `{"reports": [...], "not_run": [{"drill", "why"}]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The command's error when a drill failed or did not run: how many, and why not.
    pub fn verdict(&self) -> Result<(), String> {
        let failed = self.failed();
        if failed == 0 {
            return Ok(());
        }
        let mut msg = format!("{failed} of {} drills failed or did not run", self.total());
        for n in &self.not_run {
            msg += &format!("; {} did not run: {}", n.drill, n.why);
        }
        Err(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn passing(drill: DrillName) -> DrillReport {
        DrillReport {
            drill,
            verdict: Verdict::Fail,
            problems: vec!["not judged".into()],
            members: 3,
            target: "pgset-0".into(),
            steps: vec![Step {
                at_s: 1.0,
                what: "stop pgset-0".into(),
            }],
            fault_at_s: 1.0,
            duration_s: 5.0,
            writes_attempted: 100,
            rows_committed: 90,
            writes_refused_s: 1.2,
            longest_write_refusal_s: 1.2,
            writes_unresolved: false,
            writes_accepted_again_after_s: Some(1.3),
            rows_missing: 0,
            rows_missing_on_replicas: 0,
            read_from: "pgset-2".into(),
            reads_attempted: 100,
            reads_refused_s: 0.0,
            reads_unresolved: false,
            master_ready_after_s: Some(1.1),
            all_streaming_after_s: Some(1.6),
            streaming_after_master_ready_s: Some(0.5),
            recloned: vec![],
            healthy_after: true,
            master_before: Some("pgset-0".into()),
            timeline_before: Some(1),
            master_after: Some("pgset-0".into()),
            timeline_after: Some(1),
            new_master_first_commit_after_s: None,
            late_commits: None,
            kept_diverged: vec![],
            notes: vec![],
            fault_error: None,
        }
    }

    #[test]
    fn a_clean_drill_passes() {
        let mut r = passing(DrillName::MasterRestart);
        r.judge();
        assert_eq!(r.verdict, Verdict::Pass);
        assert!(r.problems.is_empty());
        assert_eq!(r.write_target_met(), Some(true));
        assert_eq!(r.rejoin_target_met(), Some(true));
    }

    #[test]
    fn lost_rows_unresolved_refusals_and_an_unhealthy_end_fail_it() {
        let mut r = passing(DrillName::PostgresKill);
        r.rows_missing = 3;
        r.writes_unresolved = true;
        r.healthy_after = false;
        r.judge();
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        assert!(r.problems[0].contains("3 committed rows are missing"));
        let t = table(&[r]);
        assert!(t.contains("postgres-kill                   FAIL"), "{t}");
        assert!(t.contains("postgres-kill: writes were refused and never accepted again"));
    }

    #[test]
    fn a_reclone_fails_a_restart_but_not_a_scale_down_up() {
        let mut r = passing(DrillName::ReplicaRestart);
        r.recloned = vec!["pgset-2".into()];
        r.judge();
        assert_eq!(r.verdict, Verdict::Fail);
        let mut s = passing(DrillName::ScaleDownUp);
        s.recloned = vec!["pgset-2".into()];
        s.judge();
        assert_eq!(s.verdict, Verdict::Pass);
        assert_eq!(s.write_target_met(), None, "the master stayed");
    }

    #[test]
    fn targets_are_judged_on_the_longest_refusal_and_the_rejoin() {
        let mut r = passing(DrillName::MasterRestart);
        r.longest_write_refusal_s = 10.5;
        r.streaming_after_master_ready_s = Some(2.5);
        assert_eq!(r.write_target_met(), Some(false));
        assert_eq!(r.rejoin_target_met(), Some(false));
        r.streaming_after_master_ready_s = None;
        assert_eq!(r.rejoin_target_met(), None);
    }

    #[test]
    fn markdown_has_a_row_per_drill_and_its_steps_and_problems() {
        let mut ok = passing(DrillName::MasterRestart);
        ok.judge();
        let mut bad = passing(DrillName::ReplicaRestart);
        bad.recloned = vec!["pgset-2".into()];
        bad.judge();
        let md = markdown(&[ok, bad]);
        assert!(md.contains("**FAILED**: 1 of 2 drills passed."), "{md}");
        assert!(
            md.contains("| `master-restart` | pass | 90 | 1.20 s | 1.30 s | 0 | 0.00 s | 1.10 s | 1.60 s | 0.50 s | none |"),
            "{md}"
        );
        assert!(md.contains("| `replica-restart` | **FAIL** |"), "{md}");
        assert!(
            md.contains("## `master-restart` on pgset-0 (3 members, reads through pgset-2)"),
            "{md}"
        );
        assert!(md.contains("- 1.00 s: stop pgset-0"), "{md}");
        assert!(
            md.contains("- **problem**: copied anew, which this drill must never cause: pgset-2"),
            "{md}"
        );
    }

    #[tokio::test]
    async fn every_drill_is_reported_whether_it_ran_failed_or_did_not_run() {
        let drills = [
            DrillName::MasterPodDelete,
            DrillName::PostgresKill,
            DrillName::ScaleDownUp,
        ];
        let mut heard = Vec::new();
        let run = DrillRun::each(
            &drills,
            |d| async move {
                match d {
                    DrillName::MasterPodDelete => {
                        let mut r = passing(d);
                        r.judge();
                        Ok(r)
                    }
                    DrillName::PostgresKill => Err(crate::step_err(
                        "connect a writer to the master",
                        "no connection through pgset-master within 2 s",
                    )),
                    _ => Err(crate::Error::NotHealthy("pgset-0 is not Ready".into())),
                }
            },
            &mut |l| heard.push(l.to_string()),
        )
        .await;
        assert_eq!(run.reports.len(), 1);
        assert_eq!(run.failed(), 2);
        assert_eq!(run.total(), 3);
        assert!(
            heard.contains(&"    scale-down-up: did not run: the set is not healthy, so no drill was started: pgset-0 is not Ready".to_string()),
            "{heard:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&run.to_json()).unwrap();
        assert_eq!(v["reports"][0]["drill"], "master-pod-delete");
        assert_eq!(v["reports"][0]["verdict"], "pass");
        assert_eq!(
            v["not_run"],
            serde_json::json!([
                {"drill": "postgres-kill", "why": "connect a writer to the master: no connection through pgset-master within 2 s"},
                {"drill": "scale-down-up", "why": "the set is not healthy, so no drill was started: pgset-0 is not Ready"}
            ])
        );
        let back: DrillRun = serde_json::from_str(&run.to_json()).unwrap();
        assert_eq!(back, run);
        let t = run.table();
        assert!(t.contains("master-pod-delete               pass"), "{t}");
        assert!(
            t.contains("postgres-kill: did not run: connect a writer to the master"),
            "{t}"
        );
        assert!(
            t.contains("scale-down-up: did not run: the set is not healthy"),
            "{t}"
        );
        let m = run.markdown();
        assert!(m.contains("**FAILED**: 1 of 3 drills passed."), "{m}");
        assert!(m.contains("| `master-pod-delete` | pass |"), "{m}");
        assert!(m.contains("## Not run"), "{m}");
        assert!(
            m.contains("- `scale-down-up`: the set is not healthy, so no drill was started"),
            "{m}"
        );
        let e = run.verdict().unwrap_err();
        assert!(
            e.starts_with("2 of 3 drills failed or did not run; postgres-kill did not run: "),
            "{e}"
        );
        let all_ok = DrillRun {
            reports: run.reports.clone(),
            not_run: Vec::new(),
            interrupted: None,
        };
        assert_eq!(all_ok.verdict(), Ok(()));
    }

    #[tokio::test]
    async fn ctrl_c_in_a_drill_stops_the_run_and_the_drills_after_it_never_start() {
        let mut started = Vec::new();
        let mut lines = Vec::new();
        let run = DrillRun::each(
            &[
                DrillName::MasterPodDelete,
                DrillName::MasterIsolated,
                DrillName::Rejoin,
            ],
            |d| {
                started.push(d);
                async move {
                    match d {
                        DrillName::MasterIsolated => Err(crate::Error::Interrupted(
                            "pgset-0 was given the leader Lease back".into(),
                        )),
                        _ => Ok(passing(d)),
                    }
                }
            },
            &mut |l: &str| lines.push(l.to_string()),
        )
        .await;
        assert_eq!(
            started,
            [DrillName::MasterPodDelete, DrillName::MasterIsolated]
        );
        assert_eq!(run.reports.len(), 1);
        assert!(run.not_run.is_empty());
        assert_eq!(
            run.interrupted.as_deref(),
            Some("pgset-0 was given the leader Lease back")
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("master-isolated: interrupted")),
            "{lines:?}"
        );
    }

    fn failed_over(drill: DrillName) -> DrillReport {
        let mut r = passing(drill);
        r.target = "pgset-0".into();
        r.master_after = Some("pgset-1".into());
        r.timeline_after = Some(2);
        r.late_commits = Some(0);
        r.writes_accepted_again_after_s = Some(14.2);
        r.new_master_first_commit_after_s = Some(14.2);
        r
    }

    #[test]
    fn a_failover_without_late_commits_passes_and_reports_both_masters() {
        let mut r = failed_over(DrillName::MasterFreeze);
        r.judge();
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.problems);
        assert_eq!(r.write_target_met(), Some(true));
        let t = table(std::slice::from_ref(&r));
        assert!(
            t.contains("    0 pgset-0 (tl 1) -> pgset-1 (tl 2)"),
            "late commits and masters: {t}"
        );
        let m = markdown(&[r]);
        assert!(
            m.contains("| 0 | pgset-0 (tl 1) -> pgset-1 (tl 2) |"),
            "{m}"
        );
        let mut slow = failed_over(DrillName::MasterIsolated);
        slow.writes_accepted_again_after_s = Some(15.5);
        assert_eq!(slow.write_target_met(), Some(false));
    }

    #[test]
    fn late_commits_fail_a_drill_and_say_which_masters_accepted_writes() {
        let mut r = failed_over(DrillName::MasterAgentFreeze);
        r.late_commits = Some(37);
        r.rows_missing = 37;
        r.judge();
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(
            r.problems,
            [
                "37 commits were acknowledged by the old master pgset-0 after the new master \
              pgset-1 acknowledged its first: two masters accepted writes at once (must be 0)"
            ]
        );
        // The rows lost with them are reported, as asynchronous replication's RPO.
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
        assert!(
            r.notes[0].starts_with("37 acknowledged rows are missing on the new master pgset-1"),
            "{:?}",
            r.notes
        );
        r.fault_error = Some("member pgset-0 stopped: postgres ended on its own".into());
        r.judge();
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert_eq!(
            r.problems[0],
            "a step of the fault failed: member pgset-0 stopped: postgres ended on its own"
        );
        let t = table(&[r]);
        assert!(
            t.contains("master-agent-freeze: 37 commits were acknowledged"),
            "{t}"
        );
        assert!(
            t.contains("master-agent-freeze: note: 37 acknowledged rows"),
            "{t}"
        );
    }

    #[test]
    fn rows_lost_without_a_failover_still_fail_and_a_failover_drill_must_fail_over() {
        // The master stayed: RPO must be 0 as in every other drill.
        let mut kill = passing(DrillName::MasterAgentKill);
        kill.rows_missing = 2;
        kill.judge();
        assert_eq!(kill.verdict, Verdict::Fail);
        assert!(
            kill.problems[0].contains("RPO must be 0"),
            "{:?}",
            kill.problems
        );
        // A frozen master that was never replaced.
        let mut stuck = passing(DrillName::MasterFreeze);
        stuck.judge();
        assert_eq!(stuck.verdict, Verdict::Fail);
        assert_eq!(
            stuck.problems,
            [
                "no replica took over: pgset-0 acknowledged the last commit before the fault and \
              the last one after it"
            ]
        );
    }

    #[test]
    fn a_rejoin_must_keep_the_diverged_writes_and_status_must_warn_of_them() {
        let mut lost = passing(DrillName::Rejoin);
        lost.judge();
        assert_eq!(lost.verdict, Verdict::Fail);
        assert!(
            lost.problems[0].contains("they disappeared"),
            "{:?}",
            lost.problems
        );
        let kept = KeptDiverged {
            member: "pgset-2".into(),
            path: "/set/pgset-2.diverged-20261207T150000Z".into(),
            bytes_after_fork: 81_920,
            warned: false,
        };
        let mut silent = passing(DrillName::Rejoin);
        silent.kept_diverged = vec![kept.clone()];
        silent.judge();
        assert_eq!(
            silent.problems,
            [
                "/set/pgset-2.diverged-20261207T150000Z holds 81920 bytes of diverged WAL but \
              the set's status does not warn of it"
            ]
        );
        let mut ok = passing(DrillName::Rejoin);
        ok.kept_diverged = vec![KeptDiverged {
            warned: true,
            ..kept
        }];
        ok.judge();
        assert_eq!(ok.verdict, Verdict::Pass, "{:?}", ok.problems);
        let t = table(std::slice::from_ref(&ok));
        assert!(
            t.contains("rejoin: kept /set/pgset-2.diverged-20261207T150000Z (81920 bytes after the fork), warned of by the set's status"),
            "{t}"
        );
        let v = serde_json::to_value(&ok).unwrap();
        assert_eq!(v["kept_diverged"][0]["bytes_after_fork"], 81_920);
    }

    #[test]
    fn the_json_names_every_figure() {
        let mut r = passing(DrillName::MasterRestart);
        r.judge();
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "drill",
            "verdict",
            "writes_refused_s",
            "rows_missing",
            "reads_refused_s",
            "all_streaming_after_s",
            "streaming_after_master_ready_s",
            "recloned",
            "master_before",
            "timeline_before",
            "master_after",
            "timeline_after",
            "late_commits",
            "writes_accepted_again_after_s",
            "kept_diverged",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["verdict"], "pass");
        assert_eq!(v["drill"], "master-restart");
    }
}
