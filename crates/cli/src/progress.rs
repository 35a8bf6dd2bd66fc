//! What a person sees while a command runs, owned by one [`Reporter`]: stages with their time,
//! and a rollout's members with their step. On a terminal the members are live lines (indicatif)
//! that say where each one is and for how long (a base backup with its bytes and rate, from the
//! agent's readings); elsewhere (CI, logs, pipes) short plain lines, one per member per step
//! (the line after a copy says its size and mean rate). The pod's full state is shown only with
//! `-v`; a failed wait reports it in its error.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{DecimalBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgset_command::steps;
use pgset_deploy::rollout::{MemberState, MemberStep, RolloutEvent};
use pgset_spec::contract::{BaseBackupReading, MemberPhase};

/// The longest line the reporter writes without `-v` (the pod's detail is longer and shown
/// only with `-v`).
pub const MAX_LINE: usize = 120;

/// How often the live lines are redrawn.
const TICK: Duration = Duration::from_millis(200);

/// Where progress goes and how much of it: one per invocation, cloned into the stages.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Live lines on stderr: it is a terminal.
    terminal: bool,
    verbose: bool,
    /// A command's result lines ([`Reporter::result`]) are progress lines too: `up`, whose
    /// stages' results are part of what it says while it runs.
    results_as_progress: bool,
    /// Lines are kept here instead of written (tests).
    recorded: Option<Mutex<Vec<String>>>,
    /// The live lines drawn now (one rollout view at a time): lines printed meanwhile go
    /// above them.
    drawing: Mutex<Option<MultiProgress>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("terminal", &self.is_live())
            .field("verbose", &self.inner.verbose)
            .finish()
    }
}

static CURRENT: OnceLock<Reporter> = OnceLock::new();

impl Reporter {
    /// Live lines when stderr is a terminal, plain lines otherwise.
    pub fn new(verbose: bool) -> Reporter {
        Reporter::with_terminal(std::io::stderr().is_terminal(), verbose)
    }

    /// A reporter that draws live lines on stderr (`terminal`) or writes plain lines.
    pub fn with_terminal(terminal: bool, verbose: bool) -> Reporter {
        Reporter::build(terminal, verbose, false, None)
    }

    /// Like [`Reporter::new`], with every line on stderr, a command's result lines too: for
    /// `up`, whose stages' results (a plan, a table) are part of its progress.
    pub fn for_stages(verbose: bool) -> Reporter {
        Reporter::build(std::io::stderr().is_terminal(), verbose, true, None)
    }

    /// A reporter that writes nothing and keeps every line, result lines included, in order
    /// ([`Reporter::recorded`]): for tests of what a command says.
    pub fn recording(verbose: bool) -> Reporter {
        Reporter::build(false, verbose, true, Some(Mutex::new(Vec::new())))
    }

    fn build(
        terminal: bool,
        verbose: bool,
        results_as_progress: bool,
        recorded: Option<Mutex<Vec<String>>>,
    ) -> Reporter {
        Reporter {
            inner: Arc::new(Inner {
                terminal,
                verbose,
                results_as_progress,
                recorded,
                drawing: Mutex::new(None),
            }),
        }
    }

    /// The lines a [`Reporter::recording`] kept (empty for the others).
    pub fn recorded(&self) -> Vec<String> {
        self.inner.recorded.as_ref().map_or_else(Vec::new, |r| {
            r.lock().unwrap_or_else(|p| p.into_inner()).clone()
        })
    }

    /// The invocation's reporter: the first one [`Reporter::install`]ed, else a plain-or-live
    /// one without `-v`.
    pub fn current() -> Reporter {
        CURRENT.get_or_init(|| Reporter::new(false)).clone()
    }

    /// Makes `self` the invocation's reporter (the first call wins) and returns the one in use.
    pub fn install(self) -> Reporter {
        CURRENT.get_or_init(|| self).clone()
    }

    /// Whether lines are drawn live (stderr is a terminal).
    pub fn is_live(&self) -> bool {
        self.inner.terminal
    }

    /// Whether `-v` asked for the pods' full state.
    pub fn verbose(&self) -> bool {
        self.inner.verbose
    }

    fn drawing(&self) -> std::sync::MutexGuard<'_, Option<MultiProgress>> {
        self.inner.drawing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one line on stderr (above the live lines while they draw).
    pub fn line(&self, text: &str) {
        if let Some(recorded) = &self.inner.recorded {
            recorded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(text.to_string());
            return;
        }
        let drawing = self.drawing().clone();
        match drawing {
            Some(multi) => {
                // Printing above the bars keeps them intact; a failed draw loses one line.
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Writes one line of a command's result (a plan, a table, what was done): on stdout for a
    /// command run on its own, as scripts and people read it there; a progress line
    /// ([`Reporter::line`]) within `up` or while live lines draw.
    pub fn result(&self, text: &str) {
        if self.inner.results_as_progress || self.drawing().is_some() {
            self.line(text);
        } else {
            println!("{text}");
        }
    }

    /// Announces a stage; [`Stage::done`] reports it with its time.
    pub fn stage(&self, label: impl Into<String>) -> Stage {
        let label = label.into();
        self.line(&steps::header(&label, None, ""));
        Stage {
            reporter: self.clone(),
            label,
            started: Instant::now(),
        }
    }

    /// While a long step runs, something that shows it is alive: on a terminal a live line
    /// with a spinner and the time so far, which the lines printed meanwhile (and a rollout's
    /// member lines) go above and below; elsewhere a line every `every` (`... label: 45s so
    /// far`), quiet while live lines show the time themselves. Stops when dropped.
    pub fn ticker(&self, label: impl Into<String>, every: Duration) -> Ticker {
        let label = label.into();
        let reporter = self.clone();
        let started = Instant::now();
        if self.inner.terminal && self.inner.recorded.is_none() {
            let mut drawing = self.drawing();
            if drawing.is_none() {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let bar = multi.add(ProgressBar::new_spinner());
                if let Ok(style) = ProgressStyle::with_template("    {spinner} {msg} {elapsed}") {
                    bar.set_style(style);
                }
                bar.set_message(label);
                bar.enable_steady_tick(TICK);
                *drawing = Some(multi);
                return Ticker {
                    task: None,
                    spinner: Some((bar, reporter)),
                };
            }
        }
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                interval.tick().await;
                if reporter.drawing().is_none() {
                    reporter.line(&format!(
                        "    ... {label}: {:.0}s so far",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
        });
        Ticker {
            task: Some(task),
            spinner: None,
        }
    }

    /// A view of a rollout's members: feed it the [`RolloutEvent`]s of `wait_for_rollout`. On
    /// a terminal its lines join the live lines already drawn (the stage's), if any.
    pub fn rollout(&self) -> RolloutView {
        let previous = self.drawing().clone();
        let live = self.inner.terminal.then(|| {
            previous
                .clone()
                .unwrap_or_else(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        });
        *self.drawing() = live.clone();
        RolloutView {
            reporter: self.clone(),
            previous,
            live,
            members: BTreeMap::new(),
            waiting: None,
        }
    }
}

/// A stage being run: announced when made, reported with its time by [`Stage::done`].
#[derive(Debug)]
pub struct Stage {
    reporter: Reporter,
    label: String,
    started: Instant,
}

impl Stage {
    /// Announces a stage on the invocation's reporter.
    pub fn start(label: impl Into<String>) -> Stage {
        Reporter::current().stage(label)
    }

    /// How long the stage has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reports the stage done, with the elapsed time.
    pub fn done(self, detail: &str) {
        self.reporter
            .line(&steps::done(&self.label, self.started.elapsed(), detail));
    }
}

/// Shows that a step is alive until dropped: a live spinner line, or a line now and then.
#[derive(Debug)]
pub struct Ticker {
    task: Option<tokio::task::JoinHandle<()>>,
    /// The live line and the reporter whose drawing it started.
    spinner: Option<(ProgressBar, Reporter)>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some((bar, reporter)) = self.spinner.take() {
            bar.finish_and_clear();
            // Lines the step's rollout drew stay on the screen; later lines go below them.
            *reporter.drawing() = None;
        }
    }
}

/// One member as the view shows it.
struct Member {
    step: MemberStep,
    detail: String,
    /// When the view saw the member enter its step.
    since: Instant,
    bar: Option<ProgressBar>,
    /// The readings of the member's base backup in this step.
    copy: CopyReadings,
}

/// What the view has seen of one base backup: its first, previous and latest readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CopyReadings {
    first: Option<BaseBackupReading>,
    previous: Option<BaseBackupReading>,
    latest: Option<BaseBackupReading>,
}

impl CopyReadings {
    /// Takes a reading; false when it is the one seen last (nothing new to show).
    pub fn read(&mut self, reading: BaseBackupReading) -> bool {
        if self.latest == Some(reading) {
            return false;
        }
        // A copy begun again (fewer bytes, or an earlier clock) starts its count again.
        if self
            .latest
            .is_some_and(|l| reading.bytes < l.bytes || reading.at_ms <= l.at_ms)
        {
            *self = CopyReadings::default();
        }
        self.first.get_or_insert(reading);
        self.previous = self.latest;
        self.latest = Some(reading);
        true
    }

    /// Bytes a second between two readings, on the agent's clock.
    fn rate(from: BaseBackupReading, to: BaseBackupReading) -> Option<f64> {
        let ms = to.at_ms.checked_sub(from.at_ms).filter(|ms| *ms > 0)?;
        let bytes = to.bytes.checked_sub(from.bytes)?;
        Some(bytes as f64 * 1000.0 / ms as f64)
    }

    /// The live words: `182.00 MB of 410.00 MB, 61.00 MB/s` (the total when the master
    /// estimated one and the copy is still below it, the rate from the last two readings).
    pub fn live_words(&self) -> Option<String> {
        let latest = self.latest?;
        let mut words = DecimalBytes(latest.bytes).to_string();
        if let Some(total) = latest.total.filter(|t| *t > latest.bytes) {
            words.push_str(&format!(" of {}", DecimalBytes(total)));
        }
        if let Some(rate) = self.previous.and_then(|p| CopyReadings::rate(p, latest)) {
            words.push_str(&format!(", {}/s", DecimalBytes(rate as u64)));
        }
        Some(words)
    }

    /// The words after the copy: `copied 410.00 MB at 61.00 MB/s` (the mean rate over the
    /// readings seen).
    pub fn summary(&self) -> Option<String> {
        let latest = self.latest?;
        let mut words = format!("copied {}", DecimalBytes(latest.bytes));
        if let Some(rate) = self.first.and_then(|f| CopyReadings::rate(f, latest)) {
            words.push_str(&format!(" at {}/s", DecimalBytes(rate as u64)));
        }
        Some(words)
    }
}

/// The members of one rollout, as live lines or one plain line per member per step.
pub struct RolloutView {
    reporter: Reporter,
    /// The live lines drawn before the view (the stage's), given back when it ends.
    previous: Option<MultiProgress>,
    /// This view's live lines (on a terminal).
    live: Option<MultiProgress>,
    members: BTreeMap<String, Member>,
    waiting: Option<String>,
}

impl RolloutView {
    /// Shows one event: a member's new step (a plain line, or its live line updated), its
    /// pod's full state with `-v`, or what the StatefulSet waits for.
    pub fn event(&mut self, event: &RolloutEvent) {
        let m = match event {
            RolloutEvent::Waiting(w) => {
                if self.waiting.as_deref() != Some(w) {
                    self.reporter.line(&clip(&format!("    waiting: {w}")));
                    self.waiting = Some(w.clone());
                }
                return;
            }
            RolloutEvent::Member(m) => m,
        };
        let verbose = self.reporter.verbose();
        let live = self.live.clone();
        let known = self
            .members
            .get(&m.name)
            .map(|k| (k.step.clone(), k.detail.clone()));
        let new_step = known.as_ref().is_none_or(|(step, _)| *step != m.step);
        let new_detail = known.as_ref().is_none_or(|(_, d)| *d != m.detail);
        if verbose && new_detail && !m.detail.is_empty() {
            self.reporter
                .line(&format!("      {}: {}", m.name, m.detail));
        }
        if !new_step {
            // The same step: only a copy's new reading changes what is shown, and only live.
            if let (Some(reading), Some(entry)) = (m.base_backup, self.members.get_mut(&m.name))
                && entry.copy.read(reading)
                && let Some(bar) = &entry.bar
            {
                bar.set_message(clip_to(&live_words(m, &entry.copy), MAX_LINE - LIVE_FRAME));
            }
            if let Some(entry) = self.members.get_mut(&m.name) {
                entry.detail = m.detail.clone();
            }
            return;
        }
        // A copy that just ended is summed up on the next step's plain line.
        let copied = self
            .members
            .get(&m.name)
            .filter(|k| k.step == MemberStep::Agent(MemberPhase::BaseBackup))
            .and_then(|k| k.copy.summary());
        let mut copy = CopyReadings::default();
        if let Some(reading) = m.base_backup {
            copy.read(reading);
        }
        if live.is_none() {
            // A plain line says the step alone (a copy's bytes change too often for a line
            // each), and after a copy its size and mean rate.
            let mut words = step_words(m);
            if let Some(copied) = copied {
                words.push_str(&format!(" ({copied})"));
            }
            self.reporter
                .line(&clip(&format!("    {}: {words}", m.name)));
        }
        let entry = self
            .members
            .entry(m.name.clone())
            .or_insert_with(|| Member {
                step: m.step.clone(),
                detail: String::new(),
                since: Instant::now(),
                copy: CopyReadings::default(),
                bar: live.as_ref().map(|multi| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(running_style());
                    bar.set_prefix(m.name.clone());
                    bar.enable_steady_tick(TICK);
                    bar
                }),
            });
        entry.step = m.step.clone();
        entry.since = Instant::now();
        if let Some(bar) = &entry.bar {
            let words = clip_to(&live_words(m, &copy), MAX_LINE - LIVE_FRAME);
            bar.reset_elapsed();
            if done(&m.step) {
                bar.set_style(done_style());
                bar.finish_with_message(words);
            } else {
                bar.set_message(words);
            }
        }
        entry.copy = copy;
        if let Some(entry) = self.members.get_mut(&m.name) {
            entry.detail = m.detail.clone();
        }
    }

    /// How long each member has been in its current step.
    pub fn in_step(&self) -> Vec<(String, Duration)> {
        self.members
            .iter()
            .map(|(n, m)| (n.clone(), m.since.elapsed()))
            .collect()
    }
}

impl Drop for RolloutView {
    fn drop(&mut self) {
        for m in self.members.values() {
            if let Some(bar) = &m.bar
                && !bar.is_finished()
            {
                // A wait that failed or was cut short: the line stays as it was last seen.
                bar.abandon();
            }
        }
        // Its lines stay on the screen as last drawn; later lines go below them, or above the
        // live lines that were drawn before it (the stage's).
        *self.reporter.drawing() = self.previous.take();
    }
}

/// A member's step in words for its live line: with a copy's bytes and rate while it copies.
fn live_words(m: &MemberState, copy: &CopyReadings) -> String {
    match copy.live_words() {
        Some(copied) if m.step == MemberStep::Agent(MemberPhase::BaseBackup) => {
            format!("{} {copied}", step_words(m))
        }
        _ => step_words(m),
    }
}

/// A member's step in words, with the time it took once Ready.
fn step_words(m: &MemberState) -> String {
    let node = m
        .node
        .as_deref()
        .filter(|_| matches!(m.step, MemberStep::Scheduled))
        .map(|n| format!(" on {n}"))
        .unwrap_or_default();
    match (&m.step, m.took, m.already) {
        (MemberStep::Ready, Some(took), _) => format!("Ready after {:.1}s", took.as_secs_f64()),
        (MemberStep::Ready, None, true) => "Ready (already)".into(),
        (step, _, _) => format!("{step}{node}"),
    }
}

/// Steps after which a member's line no longer changes in this rollout.
fn done(step: &MemberStep) -> bool {
    matches!(step, MemberStep::Ready | MemberStep::Removed)
}

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template("    {spinner} {prefix:<10} {msg:<40} {elapsed:>4}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("    ✓ {prefix:<10} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// The characters of a live line around its message: indent, spinner, member, time.
const LIVE_FRAME: usize = 24;

/// Cuts a line to [`MAX_LINE`] characters (the pod's words are short; a long reason from the
/// cluster is not allowed to make them long).
fn clip(line: &str) -> String {
    clip_to(line, MAX_LINE)
}

fn clip_to(line: &str, max: usize) -> String {
    if line.chars().count() <= max {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(bytes: u64, total: Option<u64>, at_ms: u64) -> BaseBackupReading {
        BaseBackupReading {
            bytes,
            total,
            at_ms,
        }
    }

    #[test]
    fn a_copy_shows_its_bytes_total_and_rate_from_successive_readings() {
        let mut copy = CopyReadings::default();
        assert_eq!(copy.live_words(), None);
        assert!(copy.read(reading(60_000_000, Some(410_000_000), 1_000)));
        assert_eq!(
            copy.live_words().as_deref(),
            Some("60.00 MB of 410.00 MB"),
            "one reading: no rate yet"
        );
        assert!(!copy.read(reading(60_000_000, Some(410_000_000), 1_000)));
        assert!(copy.read(reading(182_000_000, Some(410_000_000), 3_000)));
        assert_eq!(
            copy.live_words().as_deref(),
            Some("182.00 MB of 410.00 MB, 61.00 MB/s")
        );
        // Past the master's estimate (streamed WAL is not in it): no total.
        assert!(copy.read(reading(420_000_000, Some(410_000_000), 5_000)));
        assert_eq!(copy.live_words().as_deref(), Some("420.00 MB, 119.00 MB/s"));
        assert_eq!(
            copy.summary().as_deref(),
            Some("copied 420.00 MB at 90.00 MB/s"),
            "the mean rate over the first and the last reading"
        );
        // A copy begun again counts from its own first reading.
        assert!(copy.read(reading(10_000_000, None, 9_000)));
        assert_eq!(copy.live_words().as_deref(), Some("10.00 MB"));
        assert_eq!(copy.summary().as_deref(), Some("copied 10.00 MB"));
    }

    #[test]
    fn a_recording_reporter_keeps_progress_and_result_lines_in_order() {
        let reporter = Reporter::recording(false);
        let stage = reporter.stage("probe the host");
        reporter.result("plan (1 step(s)):");
        stage.done("Debian");
        let seen = reporter.recorded();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0], "==> probe the host");
        assert_eq!(seen[1], "plan (1 step(s)):");
        assert!(
            seen[2].starts_with("    probe the host done in ") && seen[2].ends_with("s: Debian"),
            "{seen:?}"
        );
        assert!(Reporter::with_terminal(false, false).recorded().is_empty());
    }

    #[test]
    fn a_long_line_is_cut_to_the_limit() {
        let long = "x".repeat(300);
        assert_eq!(clip(&long).chars().count(), MAX_LINE);
        assert_eq!(clip("short"), "short");
    }
}
