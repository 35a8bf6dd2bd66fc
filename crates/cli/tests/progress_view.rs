//! What a person sees while `deploy` waits for its rollout, through a pseudo-terminal and
//! through a pipe. The reporter is fed a recorded rollout (the `RolloutEvent`s
//! `wait_for_rollout` produces for three members, with the pod detail changing under one step,
//! as it does between polls, and the replicas' base-backup readings arriving under theirs) by
//! this same executable started again with `--replay`: once under
//! `script` (a pty: live lines), once with stdout and stderr piped (plain lines), and once
//! piped with `-v`.
//!
//! Run as `cargo test -p pgset-cli --test progress_view` (no cluster needed).

use std::collections::BTreeMap;
use std::time::Duration;

use pgset_cli::progress::{MAX_LINE, Reporter};
use pgset_command::HostCommand;
use pgset_deploy::rollout::{MemberState, MemberStep, RolloutEvent};
use pgset_spec::contract::{BaseBackupReading, MemberPhase};

/// The pod's condition dump while the init container copies the agent (430 characters: what
/// every poll printed before).
const INIT_DETAIL: &str = "Pending; Initialized=False (ContainersNotInitialized: containers with incomplete status: [install-agent]); Ready=False (ContainersNotReady: containers with unready status: [postgres]); ContainersReady=False (ContainersNotReady: containers with unready status: [postgres]); init container install-agent running, not ready; container postgres waiting: PodInitializing; the kubelet pulls nothing: image present on node lab-1 already";

fn member(
    ordinal: i32,
    step: MemberStep,
    at_ms: u64,
    detail: &str,
    base_backup: Option<BaseBackupReading>,
) -> RolloutEvent {
    RolloutEvent::Member(MemberState {
        base_backup,
        name: format!("pgset-{ordinal}"),
        ordinal,
        took: (step == MemberStep::Ready).then(|| Duration::from_millis(at_ms / 2)),
        step,
        node: Some("lab-1".into()),
        at: Duration::from_millis(at_ms),
        already: false,
        detail: detail.into(),
    })
}

/// A three-member rollout as `wait_for_rollout` reports it: every change of step or detail.
fn recorded() -> Vec<RolloutEvent> {
    use MemberPhase::{BaseBackup, Fencing, Initdb, Starting, WaitingForMaster};
    use MemberStep::{AgentCopied, NotCreated, Ready, Scheduled, Unscheduled};
    let agent = MemberStep::Agent;
    let mut events = vec![RolloutEvent::Waiting(
        "the StatefulSet controller has not seen the new spec yet".into(),
    )];
    for o in 0..3 {
        events.push(member(o, NotCreated, 0, "", None));
    }
    let mut at = 100;
    for o in 0..3 {
        let mut steps = vec![
            (Unscheduled(None), "Pending; PodScheduled=False", None),
            (Scheduled, INIT_DETAIL, None),
            // The same step with the detail changed (a poll later): not a new line.
            (Scheduled, &INIT_DETAIL[..300], None),
            (
                AgentCopied,
                "Running; Ready=False (ContainersNotReady)",
                None,
            ),
            (
                agent(Fencing),
                "Running; Ready=False (ContainersNotReady)",
                None,
            ),
        ];
        if o == 0 {
            steps.push((agent(Initdb), "Running; Ready=False", None));
        } else {
            steps.push((agent(WaitingForMaster), "Running; Ready=False", None));
            steps.push((agent(BaseBackup), "Running; Ready=False", None));
            // The agent's readings, one per write interval: the same step, new bytes.
            for reading in copy_readings() {
                steps.push((agent(BaseBackup), "Running; Ready=False", Some(reading)));
            }
        }
        steps.push((agent(Starting), "Running; Ready=False", None));
        steps.push((
            agent(Starting),
            "Running; Ready=False; container postgres running, not ready",
            None,
        ));
        steps.push((Ready, "", None));
        for (step, detail, reading) in steps {
            events.push(member(o, step, at, detail, reading));
            at += 150;
        }
    }
    events
}

/// A replica's base backup as its agent reads it every 2 s: 60, 182, 300 and 410 MB of the
/// master's estimated 410 MB (61 MB/s between the first two readings, 58.33 MB/s on average).
fn copy_readings() -> Vec<BaseBackupReading> {
    [60, 182, 300, 410]
        .into_iter()
        .zip(0u64..)
        .map(|(mb, i)| BaseBackupReading {
            bytes: mb * 1_000_000,
            total: Some(410_000_000),
            at_ms: 1_796_000_000_000 + i * 2000,
        })
        .collect()
}

/// The child: feeds the recorded rollout to the reporter the way `deploy` does.
fn replay(verbose: bool) {
    // `up`'s runner keeps a ticker beside each stage: on a terminal its live line, elsewhere a
    // line now and then (a task on the runtime).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime for the ticker");
    let _in_runtime = runtime.enter();
    let reporter = Reporter::new(verbose).install();
    let ticker = reporter.ticker(STAGE_TICKER, Duration::from_secs(15));
    let stage =
        reporter.stage("wait for 3 members of StatefulSet pgset to be Ready (timeout 300s)");
    // On a terminal each step stays longer than a redraw (20 a second at most) takes, so
    // every step is drawn even on a busy machine; a pipe needs no pause.
    let pause = if reporter.is_live() {
        Duration::from_millis(80)
    } else {
        Duration::ZERO
    };
    let mut view = reporter.rollout();
    for event in recorded() {
        view.event(&event);
        std::thread::sleep(pause);
    }
    drop(view);
    stage.done("3 members Ready in 4.2s");
    drop(ticker);
}

/// The label of the stage the replay runs in, as `up`'s runner would show it.
const STAGE_TICKER: &str = "deploy and rollout";

/// Removes ANSI escape sequences (CSI and OSC), turning cursor moves, erases and carriage
/// returns into line ends, so a pty's bytes read as the lines a person saw drawn.
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            // Cursor moves and erases start another line of the drawing.
                            if "ABEFGHJK".contains(c) {
                                out.push('\n');
                            }
                            break;
                        }
                    }
                }
                Some(']') => {
                    for c in chars.by_ref() {
                        if c == '\u{7}' {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}

/// The pseudo-terminal's width.
const COLUMNS: usize = 200;

fn me() -> std::path::PathBuf {
    std::env::current_exe().expect("the test executable's path")
}

fn member_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pgset-"))
        .collect()
}

fn check_no_long_line(what: &str, text: &str) {
    for line in text.lines() {
        let width = line.trim_end().chars().count();
        assert!(
            width <= MAX_LINE,
            "{what}: a line of {width} characters: {line:?}"
        );
    }
}

fn through_a_pipe() {
    let out = HostCommand::new(me())
        .arg("--replay")
        .quiet()
        .output()
        .expect("start the replay");
    assert!(out.success(), "{out:?}");
    let seen = out.stderr;
    assert!(
        !seen.contains('\u{1b}'),
        "no escape sequences in a pipe: {seen:?}"
    );
    check_no_long_line("pipe", &seen);
    assert!(
        !seen.contains("ContainersNotInitialized"),
        "no condition dump without -v: {seen}"
    );
    // At most one line per member per step, and every step of the recording is told.
    let lines = member_lines(&seen);
    let mut per_member_step: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in &lines {
        let (name, rest) = line.split_once(": ").expect("`member: step`");
        let step = rest.split(" (").next().unwrap_or(rest);
        *per_member_step
            .entry((name.into(), step.into()))
            .or_default() += 1;
    }
    for ((name, step), n) in &per_member_step {
        assert_eq!(*n, 1, "{name} `{step}` told {n} times:\n{seen}");
    }
    let expected_lines: usize = {
        let mut distinct = std::collections::BTreeSet::new();
        for e in recorded() {
            if let RolloutEvent::Member(m) = e {
                distinct.insert((m.name, m.step.to_string()));
            }
        }
        distinct.len()
    };
    assert_eq!(lines.len(), expected_lines, "{seen}");
    for words in [
        "pgset-0: not created yet",
        "pgset-0: scheduled, copying the agent on lab-1",
        "pgset-0: agent copied, starting",
        "pgset-0: initdb",
        "pgset-1: waiting for the master",
        "pgset-1: base backup",
        "pgset-2: postgres starting",
        "pgset-2: Ready after 2.",
        // The line after a copy sums it up: its size and mean rate.
        "pgset-1: postgres starting (copied 410.00 MB at 58.33 MB/s)",
        "pgset-2: postgres starting (copied 410.00 MB at 58.33 MB/s)",
    ] {
        assert!(seen.contains(words), "{words:?} missing:\n{seen}");
    }
    // While it copies, a pipe gets no line per reading.
    assert_eq!(
        seen.matches("MB").count(),
        2 * 2,
        "bytes only on the two summary lines:\n{seen}"
    );
    assert!(seen.contains("==> wait for 3 members"), "{seen}");
    assert!(seen.contains("done in "), "{seen}");
    println!("through a pipe:\n{seen}");

    let verbose = HostCommand::new(me())
        .args(["--replay", "-v"])
        .quiet()
        .output()
        .expect("start the replay with -v");
    assert!(verbose.success(), "{verbose:?}");
    assert!(
        verbose
            .stderr
            .contains("pgset-1: Pending; Initialized=False (ContainersNotInitialized"),
        "-v shows the pod's full state:\n{}",
        verbose.stderr
    );
    // The same step lines, and the pod's state (indented further) each time it changed.
    let step_lines: Vec<&str> = verbose
        .stderr
        .lines()
        .filter(|l| l.starts_with("    pgset-"))
        .map(str::trim)
        .collect();
    assert_eq!(step_lines, lines, "{}", verbose.stderr);
    let detail_lines = verbose
        .stderr
        .lines()
        .filter(|l| l.starts_with("      pgset-"))
        .count();
    assert!(detail_lines >= 3 * 4, "{}", verbose.stderr);
}

fn through_a_terminal() {
    // `script` gives the replay a pseudo-terminal as stdout and stderr and copies what it draws.
    // A wide terminal, so a long line shows as long instead of being cut at the edge.
    let inner = format!(
        "stty cols {COLUMNS} rows 40 && {}",
        HostCommand::new(me()).arg("--replay")
    );
    let out = HostCommand::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .quiet()
        .output()
        .expect("start `script` (util-linux)");
    assert!(out.success(), "{out:?}");
    let raw = out.stdout;
    assert!(
        raw.contains("\u{1b}["),
        "live lines are drawn with escape sequences: {raw:?}"
    );
    // Each drawn line fills the terminal's width (the terminal wraps, no newline between
    // them): cut the stream into rows of that width.
    let seen: String = strip_ansi(&raw)
        .lines()
        .flat_map(|segment| {
            let chars: Vec<char> = segment.chars().collect();
            chars
                .chunks(COLUMNS)
                .map(|row| row.iter().collect::<String>().trim_end().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|row| !row.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    check_no_long_line("terminal", &seen);
    assert!(
        !seen.contains("ContainersNotInitialized"),
        "no condition dump without -v: {seen}"
    );
    for words in [
        "base backup",
        "initdb",
        "waiting for the master",
        "Ready after",
        // A copy's live line: bytes of the master's estimate and the rate between readings.
        "base backup 60.00 MB of 410.00 MB",
        "base backup 182.00 MB of 410.00 MB, 61.00 MB/s",
        "base backup 410.00 MB, 55.00 MB/s",
    ] {
        assert!(seen.contains(words), "{words:?} never drawn:\n{seen}");
    }
    // The stage's own live line: a spinner, its label and the time so far.
    assert!(
        seen.lines()
            .any(|l| l.trim_start().contains(&format!("{STAGE_TICKER} "))
                && l.trim_end().ends_with('s')),
        "the stage's live line is drawn:\n{seen}"
    );
    let copying: Vec<&str> = seen
        .lines()
        .filter(|l| l.contains("MB/s") && l.contains("pgset-"))
        .collect();
    assert!(
        copying.iter().any(|l| l.contains("pgset-1"))
            && copying.iter().any(|l| l.contains("pgset-2")),
        "each replica's copy is drawn with its rate:\n{seen}"
    );
    // The last frame: every member's line says Ready with its time.
    let last_frame: Vec<&str> = seen
        .lines()
        .rev()
        .filter(|l| l.contains("pgset-"))
        .take(3)
        .collect();
    assert_eq!(last_frame.len(), 3, "{seen}");
    for line in &last_frame {
        assert!(line.contains("Ready after"), "{line:?} in\n{seen}");
    }
    println!("through a terminal (escape sequences removed):\n{seen}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--replay") {
        replay(args.iter().any(|a| a == "-v"));
        return;
    }
    // `cargo test` passes its own flags (e.g. a filter); this file is one test.
    through_a_pipe();
    through_a_terminal();
    println!("progress_view: ok");
}
