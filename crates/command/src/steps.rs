//! The words of a run of named, timed steps — `up`'s stages and the test suite's steps print
//! the same lines: a header, the time when done or the error when failed, and a summary.

use std::time::Duration;

/// How a finished step ended, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It did its work.
    Ok,
    /// It failed (its error was printed when it ended).
    Failed,
}

/// `==> [2/6] label (dry run)`: a step starting; `position` is its number and the count of
/// steps when known, `note` what kind of run it is (empty for a plain one).
pub fn header(label: &str, position: Option<(usize, usize)>, note: &str) -> String {
    let mut line = String::from("==> ");
    if let Some((n, of)) = position {
        line.push_str(&format!("[{n}/{of}] "));
    }
    line.push_str(label);
    if !note.is_empty() {
        line.push_str(&format!(" ({note})"));
    }
    line
}

/// `    label done in 1.2s`, with `: detail` when there is one.
pub fn done(label: &str, took: Duration, detail: &str) -> String {
    let secs = took.as_secs_f64();
    if detail.is_empty() {
        format!("    {label} done in {secs:.1}s")
    } else {
        format!("    {label} done in {secs:.1}s: {detail}")
    }
}

/// `    label FAILED after 1.2s: why`.
pub fn failed(label: &str, took: Duration, why: &str) -> String {
    format!("    {label} FAILED after {:.1}s: {why}", took.as_secs_f64())
}

/// The summary: a blank line, `summary (total):` (or `summary:` when the whole run's time is
/// not the sum's point), then one row per step with how it ended and its time.
pub fn summary(total: Option<Duration>, steps: &[(&str, Ended, Duration)]) -> Vec<String> {
    let width = steps
        .iter()
        .map(|(l, _, _)| l.len())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut lines = vec![
        String::new(),
        match total {
            Some(t) => format!("summary ({:.1}s):", t.as_secs_f64()),
            None => "summary:".to_string(),
        },
    ];
    for (label, ended, took) in steps {
        lines.push(format!(
            "  {label:<width$} {:<4} {:>7.1}s",
            match ended {
                Ended::Ok => "ok",
                Ended::Failed => "FAIL",
            },
            took.as_secs_f64()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_a_person_reads() {
        assert_eq!(
            header("volumes", Some((2, 6)), "dry run"),
            "==> [2/6] volumes (dry run)"
        );
        assert_eq!(header("fmt", None, ""), "==> fmt");
        let t = Duration::from_millis(1234);
        assert_eq!(done("fmt", t, ""), "    fmt done in 1.2s");
        assert_eq!(done("wait", t, "3 ready"), "    wait done in 1.2s: 3 ready");
        assert_eq!(
            failed("clippy", t, "exit status 101"),
            "    clippy FAILED after 1.2s: exit status 101"
        );
        assert_eq!(
            summary(
                Some(Duration::from_secs(75)),
                &[
                    ("NFS host", Ended::Ok, t),
                    ("deploy and rollout", Ended::Failed, Duration::from_secs(60))
                ]
            ),
            vec![
                "".to_string(),
                "summary (75.0s):".into(),
                "  NFS host           ok       1.2s".into(),
                "  deploy and rollout FAIL    60.0s".into(),
            ]
        );
        assert_eq!(summary(None, &[])[1], "summary:");
    }
}
