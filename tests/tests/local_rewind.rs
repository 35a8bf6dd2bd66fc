//! Local mode on real PostgreSQL, rejoining without losing anything: a replica promoted by hand
//! while the master runs, then written to, is rewound at its next start (its data directory kept,
//! not copied anew), streams from the master again, and what it wrote after the fork is kept in
//! `<member>.diverged-*` and warned of by status until the user removes it; when the rewind cannot
//! run, a kept copy that already holds diverged writes is never replaced: the member refuses.

#[path = "support/local.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgset_agent::rewind::{self, DIVERGED_FILE, DIVERGED_MARK};
use pgset_local as local;
use support::{TestSet, inode, pg_or_skip};

const SECOND: Duration = Duration::from_secs(1);

/// Promotes member 1 by hand while member 0 runs, writes `rows` rows on it that the cluster will
/// not have, writes on member 0 too, and stops member 1's agent (a clean shutdown on its own
/// timeline). Returns where member 1's timeline 2 forked off timeline 1, from its history file.
async fn diverge_member_1(t: &TestSet, rows: i32) -> u64 {
    t.sql(
        0,
        "CREATE TABLE t (id int, note text); INSERT INTO t VALUES (1, 'shared')",
    )
    .unwrap();
    t.wait_for(1, "SELECT note FROM t WHERE id = 1", "shared", 60 * SECOND);
    t.sql(1, "SELECT pg_promote()").unwrap();
    t.wait_for(1, "SELECT pg_is_in_recovery()", "f", 60 * SECOND);
    // The history a member reads of a master on a later timeline, here member 1's own.
    let password = std::fs::read_to_string(t.dir().join("secret/replication-password")).unwrap();
    let (timeline, text) =
        rewind::timeline_history("127.0.0.1", t.port(1), password.trim_end(), "test")
            .await
            .unwrap();
    assert_eq!(timeline, 2, "{text}");
    let path = rewind::parse_history(2, &text).unwrap();
    assert_eq!(path.len(), 2, "{text}");
    assert_eq!((path[0].0, path[1]), (1, (2, u64::MAX)), "{text}");
    t.sql(
        1,
        &format!(
            "INSERT INTO t SELECT g, 'diverged' FROM generate_series(100, {}) g",
            99 + rows
        ),
    )
    .unwrap();
    t.sql(0, "INSERT INTO t VALUES (2, 'after')").unwrap();
    assert!(
        local::stop_member(t.dir(), "pgset-1", 60 * SECOND)
            .await
            .unwrap()
    );
    path[0].1
}

/// The member's `<member>.diverged-*` directories.
fn diverged_dirs(dir: &Path, member: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{member}.diverged-"))
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// The agent's `/status` body.
fn agent_status(t: &TestSet, k: i32) -> String {
    let mut s = std::net::TcpStream::connect(t.set().health_addr(k)).unwrap();
    s.set_read_timeout(Some(10 * SECOND)).unwrap();
    s.write_all(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_by_hand_is_rewound_and_its_diverged_writes_kept_until_removed() {
    if pg_or_skip("local_rewind_promoted_by_hand").is_none() {
        return;
    }
    let t = TestSet::new(2, 26810);
    local::up(&t.opts).await.expect("up");
    let fork = diverge_member_1(&t, 500).await;
    let data = t.dir().join("pgset-1");
    let before = inode(&data);

    // Its next start: rewound in place, following the master again.
    local::up(&t.opts).await.expect("member 1 back");
    t.wait_for(1, "SELECT note FROM t WHERE id = 2", "after", 60 * SECOND);
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgset-1' \
         AND state = 'streaming'",
        "1",
        60 * SECOND,
    );
    assert_eq!(inode(&data), before, "rewound, not copied anew");
    assert!(
        !t.dir().join("pgset-1.previous").exists(),
        "no new copy was made"
    );
    assert_eq!(
        t.sql(1, "SELECT count(*) FROM t WHERE note = 'diverged'")
            .unwrap(),
        "0",
        "what member 1 wrote after the fork is not in the cluster"
    );
    let log = t.log(1);
    assert!(
        log.contains("rewound from the master with pg_rewind"),
        "{log}"
    );
    assert!(!log.contains("copied again"), "{log}");

    // What it wrote after the fork is kept, with what it is.
    let kept = diverged_dirs(t.dir(), "pgset-1");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let d = rewind::read_diverged(&kept[0].join(DIVERGED_FILE)).expect("diverged.json");
    assert!(d.bytes_after_fork > 0, "{d:?}");
    assert_eq!((d.timeline, d.master_timeline), (2, 1), "{d:?}");
    assert_eq!(rewind::parse_lsn(&d.fork_lsn), Some(fork), "{d:?}");
    assert!(kept[0].join("global/pg_control").is_file());
    assert!(kept[0].join("pg_wal/00000002.history").is_file());
    let tl2_segments = std::fs::read_dir(kept[0].join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("00000002") && n.len() == 24
        })
        .count();
    assert!(tl2_segments > 0, "the timeline-2 WAL is kept");
    assert!(
        !data.join(DIVERGED_MARK).exists(),
        "a rewound member is not marked as holding diverged writes"
    );
    let status = agent_status(&t, 1);
    assert!(
        status.contains("\"diverged\"") && status.contains(&*kept[0].to_string_lossy()),
        "{status}"
    );

    // Status warns of it, with the command that removes it, until it is removed.
    let report = local::status::report(t.dir()).await.unwrap();
    assert!(!report.healthy, "{}", report.to_table());
    let warning = format!("`rm -r {}`", kept[0].display());
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains(&warning) && w.contains(&format!("{} bytes", d.bytes_after_fork))),
        "{:?}",
        report.warnings
    );
    std::fs::remove_dir_all(&kept[0]).unwrap();
    let deadline = std::time::Instant::now() + 60 * SECOND;
    loop {
        let r = local::status::report(t.dir()).await.unwrap();
        if r.healthy {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not healthy once the copy is removed:\n{}",
            r.to_table()
        );
        tokio::time::sleep(SECOND / 2).await;
    }
    assert!(!agent_status(&t, 1).contains("\"diverged\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_rewind_cannot_run_a_kept_copy_with_diverged_writes_is_never_replaced() {
    let Some(bin) = pg_or_skip("local_rewind_cannot_run") else {
        return;
    };
    let t = TestSet::new(2, 26820);
    local::up(&t.opts).await.expect("up");
    let data = t.dir().join("pgset-1");

    // Member 1 without hint bits in its WAL nor data checksums: pg_rewind refuses it.
    assert!(
        local::stop_member(t.dir(), "pgset-1", 60 * SECOND)
            .await
            .unwrap()
    );
    let _ = bin
        .command("pg_checksums")
        .arg("--disable")
        .arg("-D")
        .arg(&data)
        .output();
    let auto = data.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).unwrap();
    std::fs::write(&auto, text + "wal_log_hints = off\n").unwrap();
    local::up(&t.opts).await.expect("member 1 back");
    diverge_member_1(&t, 50).await;

    // A kept copy of member 1 that already holds writes the cluster does not have.
    let previous = t.dir().join("pgset-1.previous");
    std::fs::create_dir(&previous).unwrap();
    std::fs::copy(
        data.join("pgset-identity.json"),
        previous.join("pgset-identity.json"),
    )
    .unwrap();
    std::fs::write(
        previous.join(DIVERGED_MARK),
        r#"{"member":"pgset-1","forkLsn":"0/3000060","endLsn":"0/30004D2","bytesAfterFork":1138,
            "timeline":2,"masterTimeline":1,"when":"earlier","why":"an earlier divergence"}"#,
    )
    .unwrap();
    support::give_to_postgres(&previous);
    let kept_before = support::tree_digest(&previous);
    let before = inode(&data);

    let err = local::up(&t.opts)
        .await
        .expect_err("member 1 refuses to replace the kept copy");
    let err = err.to_string();
    assert!(
        err.contains("pgset-1 stopped")
            && err.contains("holds 1138 bytes of WAL written after the fork")
            && err.contains(&format!("rm -r {}", previous.display())),
        "{err}"
    );
    let log = t.log(1);
    assert!(log.contains("pg_rewind failed"), "{log}");
    assert!(
        log.contains("holds 1138 bytes of WAL written after the fork")
            && log.contains(&format!("rm -r {}", previous.display())),
        "{log}"
    );
    assert_eq!(
        support::tree_digest(&previous),
        kept_before,
        "the kept copy is untouched"
    );
    assert_eq!(inode(&data), before, "member 1's data stays in place");
    assert!(data.join("PG_VERSION").is_file());
    assert!(
        rewind::read_diverged(&data.join(DIVERGED_MARK)).is_some_and(|d| d.bytes_after_fork > 0),
        "the member's data says what it holds"
    );
    // Its WAL after the fork was kept before the attempt, once however often it is started.
    assert_eq!(diverged_dirs(t.dir(), "pgset-1").len(), 1);
    local::up(&t.opts)
        .await
        .expect_err("member 1 refuses again");
    assert_eq!(diverged_dirs(t.dir(), "pgset-1").len(), 1, "kept once");
    assert!(t.log(1).contains("is already kept at"), "{}", t.log(1));
    assert_eq!(support::tree_digest(&previous), kept_before);
    // Status warns of both copies.
    let report = local::status::report(t.dir()).await.unwrap();
    assert!(!report.healthy);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains(&format!("`rm -r {}`", previous.display()))),
        "{:?}",
        report.warnings
    );
}
