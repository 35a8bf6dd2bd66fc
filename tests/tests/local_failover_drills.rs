//! Local mode on real PostgreSQL, the failover drills: on a 3-member set (ports 29300-29302,
//! health ports 30300-30302) each drill runs under a writer that follows the leader record and
//! one that keeps its connection to the first master, and reports who acknowledged each commit:
//! a frozen or cut-off master is replaced by a replica and acknowledges nothing after the new
//! master's first commit; a killed agent takes its postgres with it and comes back; a replica
//! promoted by hand rejoins with its diverged writes kept and warned of; the set is healthy after
//! each. A frozen agent whose postgres would run on is measured last: its watchdog ends that
//! postgres before the lease can expire, and a late commit would fail the drill.

#[path = "support/local.rs"]
mod support;

use pgset_drill::local::LocalOptions;
use pgset_drill::report::{self, FAILOVER_WRITE_TARGET_S};
use pgset_drill::{DrillName, DrillReport, Verdict};
use pgset_local as local;
use support::{TestSet, pg_or_skip};

const PORT: u16 = 29300;

/// What every failover drill must report, whatever it measured.
fn figures_present(r: &DrillReport) {
    assert!(r.rows_committed > 10, "the writers ran: {r:#?}");
    assert!(r.healthy_after, "the set is healthy again: {r:#?}");
    assert!(
        r.master_before.is_some() && r.master_after.is_some(),
        "{r:#?}"
    );
    assert!(
        r.timeline_before.is_some() && r.timeline_after.is_some(),
        "{r:#?}"
    );
    assert!(r.recloned.is_empty(), "nothing copied anew: {r:#?}");
}

/// The drill's verdict: a pass, or a failure only because a rejoined member had not caught up
/// with the new master yet (the agent's rejoin; the member is named in the steps, and the
/// failure is printed here, not hidden).
fn passed_or_lagging_rejoin(r: &DrillReport) {
    if r.verdict == Verdict::Pass {
        return;
    }
    println!("{} FAILED: {:?}; steps {:#?}", r.drill, r.problems, r.steps);
    assert!(
        r.rows_missing_on_replicas > 0
            && r.problems
                .iter()
                .all(|p| p.contains("after it had time to catch up")),
        "{r:#?}"
    );
}

/// A drill in which a replica must take over: writes come back on it, on a later timeline, and
/// the old master acknowledged nothing after the new master's first commit.
fn failed_over_safely(r: &DrillReport) {
    figures_present(r);
    assert_ne!(
        r.master_before, r.master_after,
        "a replica took over: {r:#?}"
    );
    assert!(
        r.timeline_after > r.timeline_before,
        "the new master writes on a new timeline: {r:#?}"
    );
    assert_eq!(r.late_commits, Some(0), "no late commit: {r:#?}");
    let back = r
        .writes_accepted_again_after_s
        .expect("writes were refused and accepted again");
    assert!(back > 0.0 && back < 120.0, "{r:#?}");
    assert!(r.new_master_first_commit_after_s.is_some(), "{r:#?}");
    assert_eq!(r.write_target_met(), Some(back <= FAILOVER_WRITE_TARGET_S));
    assert_eq!(r.rows_missing, 0, "no acknowledged row lost: {r:#?}");
    passed_or_lagging_rejoin(r);
}

/// The index of the first step that says `text`.
fn step(r: &DrillReport, text: &str) -> usize {
    r.steps
        .iter()
        .position(|s| s.what.contains(text))
        .unwrap_or_else(|| panic!("no step saying `{text}`: {:#?}", r.steps))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_drills_measure_who_acknowledged_what_and_leave_the_set_healthy() {
    if pg_or_skip("local_failover_drills").is_none() {
        return;
    }
    let t = TestSet::new(3, PORT);
    local::up(&t.opts).await.expect("set up");
    let opts = LocalOptions::new(t.dir(), support::agent_bin());
    let mut reports = Vec::new();
    let mut run = async |drill: DrillName| {
        let r = match pgset_drill::local::run(&opts, drill).await {
            Ok(r) => r,
            Err(e) => {
                for k in 0..3 {
                    eprintln!(
                        "--- pgset-{k}.log (end)\n{}",
                        local::log_tail(t.dir(), &format!("pgset-{k}"), 60)
                    );
                }
                panic!("{drill}: {e}")
            }
        };
        println!("{}", serde_json::to_string(&r).unwrap());
        reports.push(r.clone());
        r
    };

    // A frozen postmaster: its agent gives the role up, a replica takes over.
    let r = run(DrillName::MasterFreeze).await;
    failed_over_safely(&r);
    assert_eq!(r.target, "pgset-0");
    assert!(step(&r, "SIGSTOP to pgset-0's postmaster") < step(&r, "the leader record names"));
    assert!(step(&r, "the leader record names") < step(&r, "pgset-0's agent exited"));

    // A master cut off from the record stops accepting writes before the lease lets another
    // take it; it rejoins once reconnected.
    let r = run(DrillName::MasterIsolated).await;
    failed_over_safely(&r);
    assert!(step(&r, "cut off from the leader record") < step(&r, "the leader record names"));
    assert!(step(&r, "accepts writes") < step(&r, "the isolation switch removed"));
    let moved_from = r.master_before.clone().unwrap();
    assert_eq!(r.target, moved_from);

    // A killed agent takes its postgres with it, as a container's teardown does; the launcher
    // starts it again. The figures say whether the master came back or moved.
    let r = run(DrillName::MasterAgentKill).await;
    figures_present(&r);
    assert!(
        r.steps
            .iter()
            .any(|s| s.what.contains("as its container's teardown")),
        "{:#?}",
        r.steps
    );
    if r.master_before != r.master_after {
        assert_eq!(r.late_commits, Some(0), "{r:#?}");
    } else {
        assert_eq!(r.late_commits, None, "{r:#?}");
    }
    assert!(r.writes_accepted_again_after_s.is_some(), "{r:#?}");
    assert_eq!(r.rows_missing, 0, "no acknowledged row lost: {r:#?}");
    passed_or_lagging_rejoin(&r);

    // A replica promoted by hand keeps what it wrote aside when it rejoins, and status says so.
    let r = run(DrillName::Rejoin).await;
    figures_present(&r);
    assert_eq!(r.master_before, r.master_after, "the master stayed: {r:#?}");
    assert_eq!(r.rows_missing, 0, "{r:#?}");
    assert_eq!(r.kept_diverged.len(), 1, "{r:#?}");
    let kept = &r.kept_diverged[0];
    assert_eq!(kept.member, r.target);
    assert!(kept.bytes_after_fork > 0, "{r:#?}");
    assert!(kept.warned, "{r:#?}");
    assert!(
        std::path::Path::new(&kept.path)
            .join(pgset_agent::rewind::DIVERGED_FILE)
            .is_file(),
        "{r:#?}"
    );
    let status = pgset_local::status::report(t.dir()).await.unwrap();
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains(&kept.path) && w.contains(&kept.bytes_after_fork.to_string())),
        "{:#?}",
        status.warnings
    );
    assert_eq!(r.verdict, Verdict::Pass, "{r:#?}");

    // Healthy before the last drill, the master wherever the drills moved it.
    let members = local::status(t.dir()).await.unwrap();
    assert!(
        pgset_drill::local::unhealthy(&members).is_empty(),
        "{members:#?}"
    );

    // A frozen agent cannot stop its postgres, its watchdog does: the figures say whether the old
    // postmaster acknowledged commits while the new master ran, and a late commit fails the drill.
    let r = run(DrillName::MasterAgentFreeze).await;
    assert!(r.rows_committed > 10, "the writers ran: {r:#?}");
    assert!(
        r.master_before.is_some() && r.timeline_after.is_some(),
        "{r:#?}"
    );
    assert_ne!(
        r.master_before, r.master_after,
        "a replica took over: {r:#?}"
    );
    let late = r.late_commits.expect("the late commits are measured");
    println!("master-agent-freeze: {late} late commits");
    if late > 0 {
        assert_eq!(r.verdict, Verdict::Fail, "{r:#?}");
        assert!(
            r.problems.iter().any(|p| p.contains(&format!(
                "{late} commits were acknowledged by the old master"
            ))),
            "{r:#?}"
        );
        assert!(
            r.rows_missing >= late,
            "the late rows are not on the new master: {r:#?}"
        );
    } else {
        assert_eq!(r.verdict, Verdict::Pass, "{r:#?}");
    }

    print!("{}", report::table(&reports));
    println!(
        "{}",
        pgset_local::status::report(t.dir())
            .await
            .unwrap()
            .to_table()
    );
}
