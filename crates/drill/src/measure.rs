//! The figures of a drill, computed from what the load and the monitor recorded (pure): windows
//! in which writes or reads were refused, when the master was ready and every replica streaming
//! again after the fault, and from the writers' acknowledgements (who acknowledged each commit,
//! on which timeline, when): which server was the master before and after, the commits the old
//! master acknowledged after the new master's first, and the acknowledged rows a master lacks.

use std::collections::BTreeSet;
use std::time::Duration;

/// One statement the writer or the reader tried, timed from the drill's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// When it was sent.
    pub start: Duration,
    /// When its answer (or its failure) came.
    pub end: Duration,
    /// Whether it succeeded (for a write: COMMIT returned OK).
    pub ok: bool,
}

/// The windows in which attempts were refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Number of windows (a window opens at a failed attempt and closes at the next success).
    pub windows: usize,
    /// Their total length.
    pub total: Duration,
    /// The longest of them.
    pub longest: Duration,
    /// When the first window opened.
    pub first_at: Option<Duration>,
    /// When the last window closed (the success that ended it).
    pub last_closed_at: Option<Duration>,
    /// True when the last window never closed: no attempt succeeded after it.
    pub unresolved: bool,
}

/// Refusal windows of `attempts` (in the order they were made). A window runs from the start of
/// the first failed attempt to the end of the next successful one: the time a client that kept
/// trying could not get its statement through.
pub fn refusals(attempts: &[Attempt]) -> Refusals {
    let mut r = Refusals::default();
    let mut open: Option<Duration> = None;
    for a in attempts {
        match (a.ok, open) {
            (false, None) => {
                open = Some(a.start);
                r.first_at.get_or_insert(a.start);
            }
            (true, Some(since)) => {
                let len = a.end.saturating_sub(since);
                r.windows += 1;
                r.total += len;
                r.longest = r.longest.max(len);
                r.last_closed_at = Some(a.end);
                open = None;
            }
            _ => {}
        }
    }
    if let Some(since) = open {
        let end = attempts.last().map_or(since, |a| a.end);
        let len = end.saturating_sub(since);
        r.windows += 1;
        r.total += len;
        r.longest = r.longest.max(len);
        r.unresolved = true;
    }
    r
}

/// One look of a monitor: whether what it watches held at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When, from the drill's start.
    pub at: Duration,
    /// Whether it held (the master's agent answered ready; the master's `pg_stat_replication`
    /// listed every replica of the set as streaming).
    pub ok: bool,
}

/// When the set came back after the fault, from the monitors' samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejoin {
    /// The master was seen not ready after the fault.
    pub master_went_away: bool,
    /// When it was seen ready again (after it went away).
    pub master_ready_at: Option<Duration>,
    /// Streaming was seen incomplete after the fault.
    pub streaming_broke: bool,
    /// When every replica was seen streaming again (after it broke).
    pub all_streaming_at: Option<Duration>,
}

impl Rejoin {
    /// Time from the master ready again to every replica streaming, when the master went away
    /// (zero when the replicas streamed before its agent called it ready).
    pub fn streaming_after_master_ready(&self) -> Option<Duration> {
        Some(self.all_streaming_at?.saturating_sub(self.master_ready_at?))
    }
}

/// The first time at or after `fault_at` that `samples` failed, and the first time after the
/// last failure that they held again.
fn recovery(samples: &[Sample], fault_at: Duration) -> (bool, Option<Duration>) {
    let mut broke = false;
    let mut back = None;
    for s in samples.iter().filter(|s| s.at >= fault_at) {
        if !s.ok {
            broke = true;
            // Broken again after it was whole: only the last recovery counts.
            back = None;
        } else if broke && back.is_none() {
            back = Some(s.at);
        }
    }
    (broke, back)
}

/// Reads the samples from `fault_at` on: when the master went away and came back (`ready`), when
/// streaming broke and was complete again (`streaming`).
pub fn rejoin(ready: &[Sample], streaming: &[Sample], fault_at: Duration) -> Rejoin {
    let (master_went_away, master_ready_at) = recovery(ready, fault_at);
    let (streaming_broke, all_streaming_at) = recovery(streaming, fault_at);
    Rejoin {
        master_went_away,
        master_ready_at,
        streaming_broke,
        all_streaming_at,
    }
}

/// One commit a writer saw acknowledged: its rows, the server that acknowledged it (as that
/// server named itself in the same transaction), its timeline then, and when the COMMIT's answer
/// reached the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The writer (the `writer` column).
    pub writer: i32,
    /// The first row number of the commit.
    pub first: i64,
    /// The last row number of the commit.
    pub last: i64,
    /// The acknowledging server, `address:port` as it reported itself in the transaction.
    pub server: String,
    /// Its timeline in the transaction (the first part of its current WAL file's name).
    pub timeline: i32,
    /// When the answer came, from the drill's start (one clock for every writer).
    pub at: Duration,
    /// When the answer came, on the client's wall clock (milliseconds since the Unix epoch).
    pub wall_ms: u64,
}

/// Who was the master before the fault and after it, from the acknowledgements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masters {
    /// The server of the last commit acknowledged before the fault, and its timeline.
    pub before: Option<(String, i32)>,
    /// The server of the last commit acknowledged at all, and its timeline.
    pub after: Option<(String, i32)>,
    /// When the master after first acknowledged a commit after the fault (when it is another).
    pub first_new_commit_at: Option<Duration>,
    /// When the master before last acknowledged a commit.
    pub last_old_commit_at: Option<Duration>,
    /// Commits the master before acknowledged after the new master's first commit (`None` when
    /// the master did not change): two masters accepted writes.
    pub late_commits: Option<usize>,
}

/// Reads `acks` (of every writer): the master before the fault at `fault_at` and after it (the
/// server of the last commit of writer `follower`, the one that follows the master, so an old
/// master a pinned client still reaches is never taken for the new one), and, when they differ,
/// the commits the old master acknowledged after the new master's first (counted on
/// acknowledgement times, so a commit whose answer came late counts too).
pub fn masters(acks: &[Ack], fault_at: Duration, follower: i32) -> Masters {
    let before = acks
        .iter()
        .filter(|a| a.at <= fault_at)
        .max_by_key(|a| a.at)
        .map(|a| (a.server.clone(), a.timeline));
    let followed = acks.iter().filter(|a| a.writer == follower);
    let after = if acks.iter().any(|a| a.writer == follower) {
        followed.max_by_key(|a| a.at)
    } else {
        acks.iter().max_by_key(|a| a.at)
    }
    .map(|a| (a.server.clone(), a.timeline));
    let last_old_commit_at = before
        .as_ref()
        .and_then(|(old, _)| acks.iter().filter(|a| &a.server == old).map(|a| a.at).max());
    let mut m = Masters {
        before,
        after,
        last_old_commit_at,
        ..Masters::default()
    };
    if let (Some((old, _)), Some((new, _))) = (&m.before, &m.after)
        && old != new
    {
        let first_new = acks
            .iter()
            .filter(|a| &a.server == new && a.at > fault_at)
            .map(|a| a.at)
            .min();
        m.first_new_commit_at = first_new;
        m.late_commits = first_new.map(|first| {
            acks.iter()
                .filter(|a| &a.server == old && a.at > first)
                .count()
        });
    }
    m
}

/// The acknowledged rows of `acks` that `present` (the `(writer, n)` pairs a master has) lacks.
pub fn missing(acks: &[Ack], present: &BTreeSet<(i32, i64)>) -> usize {
    acks.iter()
        .flat_map(|a| (a.first..=a.last).map(move |n| (a.writer, n)))
        .collect::<BTreeSet<_>>()
        .difference(present)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn att(start: u64, end: u64, ok: bool) -> Attempt {
        Attempt {
            start: ms(start),
            end: ms(end),
            ok,
        }
    }

    #[test]
    fn a_window_runs_from_the_first_refusal_to_the_next_commit() {
        let a = [
            att(0, 5, true),
            att(20, 25, true),
            att(40, 41, false),
            att(60, 61, false),
            att(80, 300, true),
            att(320, 325, true),
            att(340, 342, false),
            att(360, 370, true),
        ];
        let r = refusals(&a);
        assert_eq!(r.windows, 2);
        assert_eq!(r.total, ms(300 - 40 + 370 - 340));
        assert_eq!(r.longest, ms(260));
        assert_eq!(r.first_at, Some(ms(40)));
        assert_eq!(r.last_closed_at, Some(ms(370)));
        assert!(!r.unresolved);
    }

    #[test]
    fn a_window_without_a_later_commit_is_unresolved() {
        let r = refusals(&[att(0, 5, true), att(20, 21, false), att(40, 90, false)]);
        assert_eq!(r.windows, 1);
        assert_eq!(r.total, ms(70));
        assert!(r.unresolved);
        assert_eq!(refusals(&[att(0, 5, true)]), Refusals::default());
    }

    fn series(v: &[(u64, bool)]) -> Vec<Sample> {
        v.iter()
            .map(|(at, ok)| Sample {
                at: ms(*at),
                ok: *ok,
            })
            .collect()
    }

    #[test]
    fn rejoin_is_measured_from_the_samples_after_the_fault() {
        // Before the fault (at 1000) a not-ready sample is ignored.
        let ready = series(&[
            (0, true),
            (100, false),
            (1000, true),
            (1100, false),
            (1300, true),
        ]);
        let streaming = series(&[
            (0, true),
            (1000, true),
            (1150, false),
            (1400, false),
            (1500, true),
            (1600, true),
        ]);
        let r = rejoin(&ready, &streaming, ms(1000));
        assert!(r.master_went_away && r.streaming_broke);
        assert_eq!(r.master_ready_at, Some(ms(1300)));
        assert_eq!(r.all_streaming_at, Some(ms(1500)));
        assert_eq!(r.streaming_after_master_ready(), Some(ms(200)));
    }

    #[test]
    fn streaming_that_breaks_again_counts_from_its_last_recovery() {
        let ready = series(&[(0, true), (300, true)]);
        let streaming = series(&[(0, false), (100, true), (200, false), (300, true)]);
        let r = rejoin(&ready, &streaming, ms(0));
        assert!(!r.master_went_away);
        assert_eq!(r.master_ready_at, None);
        assert_eq!(r.all_streaming_at, Some(ms(300)));
        assert_eq!(r.streaming_after_master_ready(), None);
    }

    #[test]
    fn a_set_that_never_came_back_has_no_times() {
        let down = series(&[(0, false), (100, false)]);
        let r = rejoin(&down, &down, ms(0));
        assert!(r.master_went_away && r.streaming_broke);
        assert_eq!(r.master_ready_at, None);
        assert_eq!(r.all_streaming_at, None);
    }

    #[test]
    fn replicas_streaming_before_the_master_is_called_ready_count_as_zero() {
        let ready = series(&[(0, false), (500, true)]);
        let streaming = series(&[(0, false), (400, true)]);
        let r = rejoin(&ready, &streaming, ms(0));
        assert_eq!(r.streaming_after_master_ready(), Some(Duration::ZERO));
    }

    fn ack(writer: i32, n: i64, server: &str, timeline: i32, at: u64) -> Ack {
        Ack {
            writer,
            first: n,
            last: n,
            server: server.into(),
            timeline,
            at: ms(at),
            wall_ms: 1_765_000_000_000 + at,
        }
    }

    #[test]
    fn a_clean_failover_has_no_late_commit_and_names_both_masters() {
        // Writer 1 follows the record, writer 2 keeps its connection to the old master.
        let acks = [
            ack(1, 1, "127.0.0.1:29300", 1, 100),
            ack(2, 1, "127.0.0.1:29300", 1, 150),
            ack(1, 2, "127.0.0.1:29300", 1, 900),
            // fault at 1000; the old master's last answer comes late but before the new one's
            ack(2, 2, "127.0.0.1:29300", 1, 1200),
            ack(1, 3, "127.0.0.1:29301", 2, 16_000),
            ack(1, 4, "127.0.0.1:29301", 2, 16_100),
        ];
        let m = masters(&acks, ms(1000), 1);
        assert_eq!(m.before, Some(("127.0.0.1:29300".into(), 1)));
        assert_eq!(m.after, Some(("127.0.0.1:29301".into(), 2)));
        assert_eq!(m.first_new_commit_at, Some(ms(16_000)));
        assert_eq!(m.last_old_commit_at, Some(ms(1200)));
        assert_eq!(m.late_commits, Some(0));
    }

    #[test]
    fn commits_the_old_master_acknowledged_after_the_new_masters_first_are_late() {
        let acks = [
            ack(1, 1, "127.0.0.1:29300", 1, 100),
            ack(2, 1, "127.0.0.1:29300", 1, 100),
            ack(1, 2, "127.0.0.1:29301", 2, 16_000),
            // The pinned writer's old master kept answering: two masters at once.
            ack(2, 2, "127.0.0.1:29300", 1, 15_999),
            ack(2, 3, "127.0.0.1:29300", 1, 16_000),
            ack(2, 4, "127.0.0.1:29300", 1, 16_001),
            ack(2, 5, "127.0.0.1:29300", 1, 17_000),
            ack(1, 3, "127.0.0.1:29301", 2, 17_100),
        ];
        let m = masters(&acks, ms(1000), 1);
        assert_eq!(m.late_commits, Some(2), "after 16 000 ms, not at it: {m:?}");
        // The pinned writer's old master answering last does not make it the master after.
        let mut later = acks.to_vec();
        later.push(ack(2, 6, "127.0.0.1:29300", 1, 18_000));
        let m2 = masters(&later, ms(1000), 1);
        assert_eq!(m2.after, Some(("127.0.0.1:29301".into(), 2)));
        assert_eq!(m2.late_commits, Some(3));
        assert_eq!(m.last_old_commit_at, Some(ms(17_000)));
        // RPO: the old master's late rows are not on the new master.
        let on_new: BTreeSet<(i32, i64)> = [(1, 1), (2, 1), (1, 2), (1, 3)].into();
        assert_eq!(missing(&acks, &on_new), 4);
        let all: BTreeSet<(i32, i64)> = acks.iter().map(|a| (a.writer, a.first)).collect();
        assert_eq!(missing(&acks, &all), 0);
    }

    #[test]
    fn a_master_that_came_back_has_no_late_commit_figure() {
        let acks = [
            ack(1, 1, "127.0.0.1:29300", 1, 100),
            ack(1, 2, "127.0.0.1:29300", 1, 5000),
        ];
        let m = masters(&acks, ms(1000), 1);
        assert_eq!(m.before, m.after);
        assert_eq!(m.late_commits, None);
        assert_eq!(m.first_new_commit_at, None);
        assert_eq!(masters(&[], ms(0), 1), Masters::default());
    }

    #[test]
    fn a_multi_row_commit_counts_each_row_it_acknowledged() {
        let mut a = ack(4, 1, "s", 1, 10);
        a.last = 500;
        let present: BTreeSet<(i32, i64)> = (1..=498).map(|n| (4, n)).collect();
        assert_eq!(missing(&[a], &present), 2);
    }
}
