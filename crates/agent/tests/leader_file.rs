//! The leader record's file backend (local mode) on a real directory: two contenders racing
//! for it, a renewed record refused and an unrenewed one granted after its duration on the
//! contender's own clock, release, hand over, the isolation switch and a corrupt file.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use pgset_agent::leader::{
    Claim, FileStore, Holder, HolderWrite, IfAbsent, LeaderError, LeaderRecord, LeaderStore,
    LeaderTimings, Observer, Written,
};
use tokio::time::Instant;

const CLUSTER: &str = "pgset";

fn member(i: u32) -> Holder {
    Holder::new(format!("pgset-{i}"), format!("local-{i}"))
}

fn store(dir: &Path, i: u32, lease: Duration) -> FileStore {
    FileStore::new(
        dir,
        CLUSTER,
        member(i),
        LeaderTimings::for_lease(lease).unwrap(),
    )
}

fn long(dir: &Path, i: u32) -> FileStore {
    store(dir, i, Duration::from_secs(13))
}

fn taken(claim: Claim) -> Written {
    match claim {
        Claim::Taken(w) => w,
        other => panic!("expected Taken, got {other:?}"),
    }
}

fn done(write: HolderWrite) -> Written {
    match write {
        HolderWrite::Done(w) => w,
        other => panic!("expected Done, got {other:?}"),
    }
}

async fn on_disk(dir: &Path) -> LeaderRecord {
    long(dir, 9).read().await.unwrap().expect("a record")
}

/// A released record that `i` created and gave up.
async fn released(dir: &Path) -> LeaderRecord {
    let s = long(dir, 0);
    let w = taken(
        s.acquire(3, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap(),
    );
    done(s.release(&w.record).await.unwrap()).record
}

#[test]
fn of_two_racing_contenders_exactly_one_wins() {
    for round in 0..40 {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        // Half the rounds race for a released record, half for an absent one (both as the
        // bootstrap candidate, which the CAS must still settle).
        let start = if round % 2 == 0 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            Some(rt.block_on(released(&dir)))
        } else {
            None
        };
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = [1, 2]
            .into_iter()
            .map(|i| {
                let dir = dir.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let s = long(&dir, i);
                    barrier.wait();
                    rt.block_on(s.acquire(7, IfAbsent::Create, &mut Observer::new()))
                        .unwrap()
                })
            })
            .collect();
        let claims: Vec<Claim> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<&Written> = claims
            .iter()
            .filter_map(|c| match c {
                Claim::Taken(w) => Some(w),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {claims:?}");
        let winner = winners[0].record.holder.clone().unwrap();
        let loser = claims
            .iter()
            .find(|c| !matches!(c, Claim::Taken(_)))
            .unwrap();
        // The loser learns who holds it: after a lost write, or from a read after the win.
        let named = match loser {
            Claim::LostRace(Some(r)) | Claim::HeldBy { record: r, .. } => r.holder.clone(),
            other => panic!("round {round}: the loser got {other:?}"),
        };
        assert_eq!(named.as_ref(), Some(&winner), "round {round}");
        let now = rt_read(&dir);
        assert_eq!(now.holder.as_ref(), Some(&winner));
        assert_eq!(now.timeline, 7);
        // One write only: the record's version moved by exactly one.
        let before: u64 = start
            .as_ref()
            .map_or(0, |r| r.version.as_str().parse().unwrap());
        assert_eq!(
            now.version.as_str(),
            (before + 1).to_string(),
            "round {round}"
        );
        assert_eq!(now.transitions, u32::from(start.is_some()));
    }
}

fn rt_read(dir: &Path) -> LeaderRecord {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(on_disk(dir))
}

#[tokio::test]
async fn a_renewed_record_is_refused_and_an_unrenewed_one_granted_after_its_duration() {
    let t = tempfile::tempdir().unwrap();
    let lease = Duration::from_millis(300);
    let a = store(t.path(), 0, lease);
    let b = store(t.path(), 1, lease);
    let mut held = taken(
        a.acquire(1, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap(),
    );
    assert_eq!(held.record.lease_duration, lease);

    // The holder renews every 100 ms for 900 ms (three durations): always refused.
    let mut seen = Observer::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(900) {
        match b.acquire(1, IfAbsent::Wait, &mut seen).await.unwrap() {
            Claim::HeldBy { record, expires_in } => {
                assert_eq!(record.holder, Some(member(0)));
                assert!(expires_in <= lease);
            }
            other => panic!("a renewed record was granted: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = done(a.renew(&held.record, 2).await.unwrap());
    }
    assert_eq!(
        held.record.timeline, 2,
        "a renewal records the timeline served"
    );

    // The holder stops renewing. The contender's count starts at its first sight of the last
    // version, never earlier, and it is granted once that version is 300 ms old on its clock.
    let mut first_sight = None;
    let granted = loop {
        let asked = Instant::now();
        match b.acquire(5, IfAbsent::Wait, &mut seen).await.unwrap() {
            Claim::HeldBy { record, expires_in } => {
                assert_eq!(record.version, held.record.version);
                first_sight.get_or_insert(asked);
                assert!(expires_in > Duration::ZERO && expires_in <= lease);
            }
            Claim::Taken(w) => break (w, first_sight.expect("refused at least once")),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (w, first) = granted;
    let waited = w.sent - first;
    assert!(waited >= lease, "taken after {waited:?}");
    // Polled every 20 ms: granted soon after (a loose bound for a loaded machine).
    assert!(waited < lease + Duration::from_secs(1), "{waited:?}");
    assert_eq!(w.record.holder, Some(member(1)));
    assert_eq!(w.record.timeline, 5);
    assert_eq!(w.record.transitions, 1);

    // The old holder's renewal is now refused, naming the new one; nothing is written.
    let before = on_disk(t.path()).await;
    match a.renew(&held.record, 2).await.unwrap() {
        HolderWrite::NotHolder(Some(r)) => assert_eq!(r.holder, Some(member(1))),
        other => panic!("{other:?}"),
    }
    assert_eq!(on_disk(t.path()).await, before);
}

#[tokio::test]
async fn a_released_record_is_free_at_once_and_an_absent_one_only_for_the_bootstrap_candidate() {
    let t = tempfile::tempdir().unwrap();
    let a = long(t.path(), 0);
    let b = long(t.path(), 1);
    assert_eq!(
        b.acquire(1, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
        Claim::NoRecord
    );
    assert!(!a.path().exists(), "waiting creates nothing");

    let held = taken(
        a.acquire(4, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap(),
    );
    assert_eq!(held.record.transitions, 0);
    assert!(matches!(
        b.acquire(4, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
        Claim::HeldBy { .. }
    ));
    let gone = done(a.release(&held.record).await.unwrap()).record;
    assert_eq!(gone.holder, None);
    assert_eq!(
        gone.timeline, 4,
        "the released record keeps the last timeline"
    );
    assert_eq!(on_disk(t.path()).await, gone);

    // Free at once, with a 13 s lease: no waiting.
    let asked = Instant::now();
    let w = taken(
        b.acquire(4, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
    );
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(w.record.holder, Some(member(1)));
    assert_eq!(w.record.transitions, 1);
    // Releasing a record one no longer holds writes nothing.
    match a.release(&held.record).await.unwrap() {
        HolderWrite::NotHolder(Some(r)) => assert_eq!(r.holder, Some(member(1))),
        other => panic!("{other:?}"),
    }
    assert_eq!(on_disk(t.path()).await, w.record);
}

#[tokio::test]
async fn hand_over_names_the_new_holder_in_one_write() {
    let t = tempfile::tempdir().unwrap();
    let a = long(t.path(), 0);
    let b = long(t.path(), 1);
    let c = long(t.path(), 2);
    let held = taken(
        a.acquire(3, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap(),
    );
    let handed = done(a.hand_over(&held.record, &member(1)).await.unwrap()).record;
    assert_eq!(handed.holder, Some(member(1)));
    assert_eq!(handed.transitions, 1);
    assert_eq!(handed.timeline, 3);
    assert_eq!(
        handed.version.as_str().parse::<u64>().unwrap(),
        held.record.version.as_str().parse::<u64>().unwrap() + 1
    );
    // The old holder holds nothing now.
    match a.renew(&held.record, 3).await.unwrap() {
        HolderWrite::NotHolder(Some(r)) => assert_eq!(r.holder, Some(member(1))),
        other => panic!("{other:?}"),
    }
    match a.hand_over(&handed, &member(2)).await.unwrap() {
        HolderWrite::NotHolder(Some(r)) => assert_eq!(r, handed),
        other => panic!("{other:?}"),
    }
    // A third member sees it held; the named member takes it at once by its own write.
    assert!(matches!(
        c.acquire(3, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
        Claim::HeldBy { .. }
    ));
    let w = taken(
        b.acquire(4, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
    );
    assert_eq!(w.record.holder, Some(member(1)));
    assert_eq!(w.record.timeline, 4);
    assert_eq!(w.record.transitions, 1, "its own record: no new transition");
}

#[tokio::test]
async fn the_isolation_switch_fails_only_that_members_calls() {
    let t = tempfile::tempdir().unwrap();
    let a = long(t.path(), 0);
    let b = long(t.path(), 1);
    let held = taken(
        a.acquire(1, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap(),
    );
    let switch = a.isolate_switch("pgset-0");
    assert_eq!(switch, t.path().join("pgset.leader.isolate-pgset-0"));
    std::fs::write(&switch, "").unwrap();
    let isolated = |e: LeaderError| match e {
        LeaderError::Isolated { member, .. } => assert_eq!(member, "pgset-0"),
        other => panic!("{other:?}"),
    };
    isolated(a.read().await.unwrap_err());
    isolated(a.renew(&held.record, 1).await.unwrap_err());
    isolated(a.release(&held.record).await.unwrap_err());
    isolated(
        a.acquire(1, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap_err(),
    );
    // The other member still reads and is still refused: the record is held.
    assert_eq!(b.read().await.unwrap(), Some(held.record.clone()));
    assert!(matches!(
        b.acquire(1, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
        Claim::HeldBy { .. }
    ));
    std::fs::remove_file(&switch).unwrap();
    done(a.renew(&held.record, 1).await.unwrap());
}

#[tokio::test]
async fn a_corrupt_record_is_an_error_never_free() {
    let t = tempfile::tempdir().unwrap();
    let b = long(t.path(), 1);
    for garbage in [
        "",
        "{",
        "not json",
        r#"{"version": 3, "holder": null, "timeline": 1, "acquired_unix_ms": null,
            "renewed_unix_ms": null, "lease_duration_ms": 0, "transitions": 0}"#,
        r#"{"version": 3, "holder": {"member": "", "id": "x"}, "timeline": 1,
            "acquired_unix_ms": null, "renewed_unix_ms": null, "lease_duration_ms": 100,
            "transitions": 0}"#,
    ] {
        std::fs::write(b.path(), garbage).unwrap();
        assert!(
            matches!(b.read().await, Err(LeaderError::Corrupt { .. })),
            "{garbage:?}"
        );
        for if_absent in [IfAbsent::Create, IfAbsent::Wait] {
            let e = b
                .acquire(1, if_absent, &mut Observer::new())
                .await
                .unwrap_err();
            assert!(
                matches!(e, LeaderError::Corrupt { .. }),
                "{garbage:?}: {e:?}"
            );
            assert!(e.to_string().contains("not taken as free"), "{e}");
        }
        assert_eq!(
            std::fs::read_to_string(b.path()).unwrap(),
            garbage,
            "a corrupt record is left as it was"
        );
    }
}

#[tokio::test]
async fn a_renewal_on_a_stale_version_still_held_by_this_member_renews_the_current_one() {
    let t = tempfile::tempdir().unwrap();
    let a = long(t.path(), 0);
    let held = taken(
        a.acquire(1, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap(),
    );
    // The record changed since (a write that kept the holder): the CAS on the held version
    // fails, the re-read shows this member still holds it, and the renewal is made on it.
    let changed = done(long(t.path(), 0).renew(&held.record, 1).await.unwrap()).record;
    let w = done(a.renew(&held.record, 2).await.unwrap());
    assert_eq!(
        w.record.version.as_str().parse::<u64>().unwrap(),
        changed.version.as_str().parse::<u64>().unwrap() + 1
    );
    assert_eq!(w.record.timeline, 2);
    assert_eq!(on_disk(t.path()).await, w.record);
}

#[tokio::test]
async fn a_new_incarnation_of_the_holder_takes_the_record_at_once_and_no_other_member_does() {
    let dir = tempfile::tempdir().unwrap();
    let first = long(dir.path(), 0);
    taken(
        first
            .acquire(1, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap(),
    );
    // The same member restarted (its member fence proves the old incarnation gone).
    let again = FileStore::new(
        dir.path(),
        CLUSTER,
        Holder::new("pgset-0", "local-0-restarted"),
        LeaderTimings::for_lease(Duration::from_secs(13)).unwrap(),
    );
    let w = taken(
        again
            .acquire(1, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
    );
    assert_eq!(w.record.holder.as_ref().unwrap().id, "local-0-restarted");
    // Another member still waits for the lease to expire on its own clock.
    match long(dir.path(), 1)
        .acquire(1, IfAbsent::Wait, &mut Observer::new())
        .await
        .unwrap()
    {
        Claim::HeldBy { record, .. } => assert!(record.held_by(again.me())),
        other => panic!("expected HeldBy, got {other:?}"),
    }
}
