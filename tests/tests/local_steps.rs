//! Local mode on real PostgreSQL: an ordered `up` reports when each member's agent reached each
//! step of its start (from the agent's own record on `/status`, relative to the start of `up`),
//! in the order the agent takes them: the fence and the record before the data, the data before
//! postgres, the master's record before its postgres, a replica's copy after its master answered
//! and its readiness only once it streams; each member starts after the previous one is ready.

#[path = "support/local.rs"]
mod support;

use std::time::{Duration, Instant};

use pgset_local::{self as local, MemberSteps};
use support::{TestSet, pg_or_skip};

const SECOND: Duration = Duration::from_secs(1);

/// The time of `step`, or a failure naming the member and what it reported.
fn at(m: &MemberSteps, step: &str) -> i64 {
    m.at(step)
        .unwrap_or_else(|| panic!("{} has no step {step}: {:?}", m.member, m.steps))
}

/// Asserts that `steps` were reached in this order (equal times allowed).
fn in_order(m: &MemberSteps, steps: &[&str]) {
    let times: Vec<i64> = steps.iter().map(|s| at(m, s)).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "{}: {steps:?} at {times:?}; all: {:?}",
        m.member,
        m.steps
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_up_reports_each_members_steps_in_the_order_the_agent_takes_them() {
    if pg_or_skip("local_steps").is_none() {
        return;
    }
    let t = TestSet::new(3, 30200);
    let began = Instant::now();
    let report = local::up(&t.opts).await.expect("up");
    let took_ms = began.elapsed().as_millis() as i64;
    assert_eq!(report.started, ["pgset-0", "pgset-1", "pgset-2"]);
    let members: Vec<&str> = report.steps.iter().map(|m| m.member.as_str()).collect();
    assert_eq!(members, ["pgset-0", "pgset-1", "pgset-2"], "{report:?}");

    let master = &report.steps[0];
    in_order(
        master,
        &[
            "agent-started",
            "fence-held",
            "record-read",
            "identity-checked",
            "initdb",
            "data-made",
            "record-held",
            "starting",
            "postgres-accepting",
            "first-ready",
        ],
    );
    assert_eq!(master.at("base-backup"), None, "{master:?}");
    assert_eq!(master.at("streaming"), None, "{master:?}");
    for replica in &report.steps[1..] {
        in_order(
            replica,
            &[
                "agent-started",
                "fence-held",
                "record-read",
                "identity-checked",
                "master-answered",
                "base-backup",
                "data-made",
                "starting",
                "postgres-accepting",
                "streaming",
                "first-ready",
            ],
        );
        assert_eq!(replica.at("initdb"), None, "{replica:?}");
        assert_eq!(replica.at("record-held"), None, "{replica:?}");
    }
    // Ordered: a member's agent starts only after the previous member was ready; every step
    // falls within `up`.
    for w in report.steps.windows(2) {
        assert!(
            at(&w[1], "agent-started") >= at(&w[0], "first-ready"),
            "{} started before {} was ready: {report:?}",
            w[1].member,
            w[0].member
        );
    }
    for m in &report.steps {
        assert!(
            m.steps.iter().all(|(_, ms)| (0..=took_ms).contains(ms)),
            "{} has a step outside up's {took_ms} ms: {:?}",
            m.member,
            m.steps
        );
    }
    // What the steps say is what PostgreSQL shows: both replicas stream from the master.
    t.wait_for(
        0,
        "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) \
         FROM pg_stat_replication",
        "pgset-1:streaming,pgset-2:streaming",
        30 * SECOND,
    );

    // A second `up` starts nothing and so reports no steps.
    let again = local::up(&t.opts).await.expect("second up");
    assert!(
        again.started.is_empty() && again.steps.is_empty(),
        "{again:?}"
    );
}
