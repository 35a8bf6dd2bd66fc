//! Local mode on real PostgreSQL, the fault drills: each drill that applies to local mode runs on
//! a 3-member set (ports 28100-28103: the base-backup drill adds a fourth member for a while) under
//! its writer and reader, loses no committed row (RPO 0), reports figures that match what it did,
//! and leaves the set as it found it; a drill refuses to start on a set that is not healthy, and
//! the base-backup drill refuses a member that was copied before.

#[path = "support/local.rs"]
mod support;

use std::time::Duration;

use pgset_drill::local::LocalOptions;
use pgset_drill::{DrillName, DrillReport, Error, Verdict, report};
use pgset_local as local;
use support::{TestSet, pg_or_skip};

const PORT: u16 = 28100;

fn check(r: &DrillReport) {
    assert_eq!(r.verdict, Verdict::Pass, "{r:#?}");
    assert_eq!(r.rows_missing, 0, "RPO must be 0: {r:#?}");
    assert_eq!(r.rows_missing_on_replicas, 0, "{r:#?}");
    assert!(r.healthy_after, "{r:#?}");
    assert!(r.rows_committed > 10, "the writer ran: {r:#?}");
    assert!(r.reads_attempted > 10, "the reader ran: {r:#?}");
    if r.drill == DrillName::AgentRestartDuringBasebackup {
        // Nothing that serves goes away: the new member is stopped mid-copy and comes up whole.
        assert_eq!(r.writes_refused_s, 0.0, "{r:#?}");
        assert_eq!(r.reads_refused_s, 0.0, "{r:#?}");
        let steps: Vec<&str> = r.steps.iter().map(|s| s.what.as_str()).collect();
        let at = |what: &str| {
            steps
                .iter()
                .position(|s| *s == what)
                .unwrap_or_else(|| panic!("no step `{what}`: {steps:#?}"))
        };
        assert!(at("base backup for pgset-3 running") < at("SIGTERM to pgset-3's agent"));
        assert!(at("SIGTERM to pgset-3's agent") < at("pgset-3 ready"));
        assert!(at("pgset-3 ready") < at("membership 4 -> 3"));
        return;
    }
    assert!(
        r.all_streaming_after_s.is_some(),
        "every drill breaks streaming for a while and sees it whole again: {r:#?}"
    );
    if r.drill.touches_master() {
        assert!(
            r.writes_refused_s > 0.0,
            "a master that went away refused writes: {r:#?}"
        );
        let back = r.writes_accepted_again_after_s.expect("writes came back");
        assert!(back > 0.0 && back < 60.0, "{r:#?}");
        assert!(
            r.master_ready_after_s.is_some_and(|s| s > 0.0 && s < 60.0),
            "the master's agent was seen not ready and ready again: {r:#?}"
        );
        assert!(r.streaming_after_master_ready_s.is_some(), "{r:#?}");
        assert_eq!(r.reads_refused_s, 0.0, "the replica kept serving: {r:#?}");
    } else {
        assert_eq!(
            r.writes_refused_s, 0.0,
            "the master kept accepting writes while a replica went away: {r:#?}"
        );
        assert!(
            r.reads_refused_s > 0.0,
            "reads through the replica that went away were refused: {r:#?}"
        );
        assert_eq!(r.master_ready_after_s, None, "the master stayed: {r:#?}");
    }
}

fn err_kind(e: &Error) -> &'static str {
    match e {
        Error::NotApplicable { .. } => "not-applicable",
        Error::NotHealthy(_) => "not-healthy",
        _ => "other",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_local_drill_loses_nothing_and_leaves_the_set_as_it_was() {
    if pg_or_skip("local_drills").is_none() {
        return;
    }
    let t = TestSet::new(3, PORT);
    local::up(&t.opts).await.expect("set up");
    let members_before = std::fs::read_to_string(t.dir().join(local::MEMBERS_FILE)).unwrap();
    let opts = LocalOptions::new(t.dir(), support::agent_bin());

    let mut reports = Vec::new();
    // The failover drills move the master: local_failover_drills.rs runs them on a set of their
    // own.
    for drill in DrillName::LOCAL
        .into_iter()
        .filter(|d| !DrillName::FAILOVER.contains(d))
    {
        let r = pgset_drill::local::run(&opts, drill)
            .await
            .unwrap_or_else(|e| panic!("{drill}: {e}"));
        println!("{}", serde_json::to_string(&r).unwrap());
        check(&r);
        if drill == DrillName::AgentRestartDuringBasebackup {
            assert_eq!(r.target, "pgset-3");
            assert!(
                t.dir().join("pgset-3").join("PG_VERSION").is_file(),
                "the new member's copy is whole and kept"
            );
        } else if drill.touches_master() {
            assert_eq!(r.target, "pgset-0");
        } else {
            assert_eq!(r.target, "pgset-2");
            assert_eq!(r.read_from, "pgset-2");
        }
        reports.push(r);
    }
    print!("{}", report::table(&reports));
    let loaded = &reports[3];
    assert_eq!(loaded.drill, DrillName::MasterRestartUnderLoad);
    assert!(
        loaded.rows_committed > reports[0].rows_committed,
        "the loaded drill committed more than the plain one"
    );

    // Left as found: the same membership, every member ready and streaming, no drill table.
    assert_eq!(
        std::fs::read_to_string(t.dir().join(local::MEMBERS_FILE)).unwrap(),
        members_before
    );
    let status = local::status(t.dir()).await.unwrap();
    assert!(
        pgset_drill::local::unhealthy(&status).is_empty(),
        "{status:#?}"
    );
    assert_eq!(
        t.sql(
            0,
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgset_drill_%'"
        )
        .unwrap(),
        "0"
    );

    // The member copied once is never copied again: the drill refuses before any change.
    let again = pgset_drill::local::run(&opts, DrillName::AgentRestartDuringBasebackup)
        .await
        .expect_err("a second base-backup drill on the same set");
    assert!(matches!(err_kind(&again), "not-applicable"), "{again}");
    assert!(
        again.to_string().contains("pgset-3 has a data directory"),
        "{again}"
    );

    // Not healthy: a stopped replica makes every drill refuse, and nothing is changed.
    assert!(
        local::stop_member(t.dir(), "pgset-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let master_agent = local::agent_pid(t.dir(), "pgset-0").unwrap();
    let err = pgset_drill::local::run(&opts, DrillName::MasterRestart)
        .await
        .expect_err("a drill on an unhealthy set");
    assert!(matches!(err, Error::NotHealthy(_)), "{err}");
    assert!(err.to_string().contains("pgset-1"), "{err}");
    assert_eq!(local::agent_pid(t.dir(), "pgset-0"), Some(master_agent));
    assert_eq!(
        t.sql(
            0,
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgset_drill_%'"
        )
        .unwrap(),
        "0"
    );
}
