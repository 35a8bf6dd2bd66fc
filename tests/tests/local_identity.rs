//! Local mode on real PostgreSQL, the data-identity rules: a second set pointed at a first set's
//! directories never starts postgres there and leaves them byte-identical (while the first runs:
//! the write fence; after it stopped: the identity); ordinal 0 without its directory refuses
//! initdb while siblings remain; a data root that is itself a data directory is refused; a
//! replica whose master was initialised anew reports the mismatch and keeps its data, and copies
//! the new master only on the explicit opt-in.

#[path = "support/local.rs"]
mod support;

use std::time::Duration;

use pgset_local as local;
use pgset_spec::contract::env;
use support::{TestSet, foreign_secret_dir, inode, pg_or_skip, run_agent, tree_digest};

const SECOND: Duration = Duration::from_secs(1);
const STREAMING_COUNT: &str = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";

/// Member k's environment as another set would give it: the same data root (the first set's
/// directory), but its own Secret (another cluster id) and its own ports.
fn foreign_env(t: &TestSet, k: i32, port: u16) -> Vec<(&'static str, String)> {
    let set = t.set();
    let secret = foreign_secret_dir(t.tmp.path());
    local::member_env(&t.opts, &set, k)
        .expect("a local member's contract is all values")
        .into_iter()
        .map(|(key, value)| match key {
            env::SECRET_DIR => (key, secret.display().to_string()),
            env::PORT => (key, port.to_string()),
            env::MASTER_PORT => (key, port.to_string()),
            env::HEALTH_ADDR => (key, format!("127.0.0.1:{}", port + 1000)),
            // A file the agent (running as postgres) may write.
            env::TERMINATION_LOG => (key, secret.join("termination-log").display().to_string()),
            _ => (key, value),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_set_on_the_first_sets_directories_never_starts_there() {
    if pg_or_skip("local_identity_second_set").is_none() {
        return;
    }
    let t = TestSet::new(2, 26710);
    local::up(&t.opts).await.expect("first set up");
    t.sql(
        0,
        "CREATE TABLE mine (v text); INSERT INTO mine VALUES ('first set')",
    )
    .unwrap();
    t.wait_for(1, "SELECT v FROM mine", "first set", 30 * SECOND);

    // While the first set runs: the write fence refuses at once; nothing starts.
    for k in [0, 1] {
        let (code, err) = run_agent(&foreign_env(&t, k, 26790 + k as u16), 60 * SECOND);
        assert_eq!(code, Some(2), "member {k} must be refused, not run: {err}");
        assert!(
            err.contains("lock") && err.contains(&format!("pgset-{k}")),
            "the refusal names the lock and the member: {err}"
        );
    }
    t.wait_for(0, STREAMING_COUNT, "1", 30 * SECOND);

    // After the first set stopped: its identity refuses the other cluster; not a byte changes.
    local::down(t.dir(), false).await.unwrap();
    let before: Vec<_> = [0, 1]
        .iter()
        .map(|k| tree_digest(&t.dir().join(format!("pgset-{k}"))))
        .collect();
    for k in [0, 1] {
        let (code, err) = run_agent(&foreign_env(&t, k, 26790 + k as u16), 60 * SECOND);
        assert_eq!(code, Some(2), "member {k} must be refused: {err}");
        assert!(
            err.contains("belongs to cluster local/pgset")
                && err.contains(&t.dir().join(format!("pgset-{k}")).display().to_string()),
            "the refusal names the directory and whose it is: {err}"
        );
        let message = std::fs::read_to_string(t.tmp.path().join("foreign-secret/termination-log"))
            .expect("the refusal is written to the termination log");
        assert!(message.contains("belongs to cluster"), "{message}");
    }
    let after: Vec<_> = [0, 1]
        .iter()
        .map(|k| tree_digest(&t.dir().join(format!("pgset-{k}"))))
        .collect();
    assert_eq!(
        before, after,
        "the first set's directories are byte-identical"
    );

    // The first set itself starts again on its data.
    local::up(&t.opts).await.expect("first set up again");
    t.wait_for(1, "SELECT v FROM mine", "first set", 30 * SECOND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinal_0_without_its_directory_refuses_initdb_and_a_data_root_with_pg_version_is_refused()
{
    if pg_or_skip("local_identity_missing_master").is_none() {
        return;
    }
    let t = TestSet::new(2, 26720);
    local::up(&t.opts).await.expect("up");
    t.wait_for(0, STREAMING_COUNT, "1", 30 * SECOND);
    local::down(t.dir(), false).await.unwrap();

    // A data root that is itself a data directory (a volume mounted at a member's directory).
    let member0 = t.dir().join("pgset-0");
    let before = tree_digest(&member0);
    let mut env = foreign_env(&t, 0, 26795);
    for (key, value) in env.iter_mut() {
        if *key == env::DATA_ROOT {
            *value = member0.display().to_string();
        }
    }
    let (code, err) = run_agent(&env, 60 * SECOND);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is itself a PostgreSQL data directory"),
        "{err}"
    );
    assert_eq!(
        tree_digest(&member0),
        before,
        "nothing was created inside it"
    );

    // The master's directory is gone (moved away), its sibling remains: no empty master.
    let moved = t.tmp.path().join("pgset-0-moved-away");
    std::fs::rename(&member0, &moved).unwrap();
    let sibling = tree_digest(&t.dir().join("pgset-1"));
    let err = local::up(&t.opts)
        .await
        .expect_err("an empty master over a cluster that had data is refused")
        .to_string();
    assert!(
        err.contains("the master's data directory is missing but this cluster had data")
            && err.contains("pgset-1")
            && err.contains(env::ALLOW_REINIT),
        "{err}"
    );
    assert!(!member0.exists(), "no new data directory was made");
    assert_eq!(tree_digest(&t.dir().join("pgset-1")), sibling);

    // Put back, the set starts on its own data again.
    std::fs::rename(&moved, &member0).unwrap();
    local::up(&t.opts)
        .await
        .expect("up with the master's data back");
    t.wait_for(0, STREAMING_COUNT, "1", 30 * SECOND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_a_reinitialised_master_reports_the_mismatch_and_copies_only_on_opt_in() {
    if pg_or_skip("local_identity_reinit").is_none() {
        return;
    }
    let t = TestSet::new(2, 26730);
    local::up(&t.opts).await.expect("up");
    t.sql(
        0,
        "CREATE TABLE old (v text); INSERT INTO old VALUES ('old database')",
    )
    .unwrap();
    t.wait_for(1, "SELECT v FROM old", "old database", 30 * SECOND);
    local::down(t.dir(), false).await.unwrap();
    let replica = t.dir().join("pgset-1");
    let replica_inode = inode(&replica);

    // The master is initialised anew on purpose (its directory moved away, opt-in given).
    std::fs::rename(t.dir().join("pgset-0"), t.tmp.path().join("old-master")).unwrap();
    let mut master_only = t.opts.clone();
    master_only.replicas = 1;
    master_only.allow_reinit = true;
    local::up(&master_only).await.expect("new master");
    let new_sysid = t
        .sql(0, "SELECT system_identifier FROM pg_control_system()")
        .unwrap();

    // Without the opt-in the replica refuses to follow it, once, and keeps its data.
    let err = local::up(&t.opts)
        .await
        .expect_err("the replica must refuse another database system")
        .to_string();
    assert!(
        err.contains(&format!("is database system {new_sysid}"))
            && err.contains("initialised anew")
            && err.contains(env::ALLOW_REINIT),
        "{err}"
    );
    assert_eq!(
        inode(&replica),
        replica_inode,
        "the replica's data stays in place"
    );
    let status = local::status(t.dir()).await.unwrap();
    let stopped = status[1].stopped_with.as_deref().unwrap_or_default();
    assert!(
        stopped.contains("initialised anew"),
        "status shows why: {status:?}"
    );

    // With the opt-in it keeps its old data aside and copies the new master.
    let mut reinit = t.opts.clone();
    reinit.allow_reinit = true;
    local::up(&reinit)
        .await
        .expect("replica copies the new master");
    t.wait_for(0, STREAMING_COUNT, "1", 30 * SECOND);
    assert_eq!(
        t.sql(1, "SELECT system_identifier FROM pg_control_system()")
            .unwrap(),
        new_sysid
    );
    assert!(t.dir().join("pgset-1.previous/PG_VERSION").is_file());
    assert_eq!(inode(&t.dir().join("pgset-1.previous")), replica_inode);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reinit_opt_in_is_used_once_and_another_needs_its_record_key_removed() {
    if pg_or_skip("local_identity_reinit_once").is_none() {
        return;
    }
    let t = TestSet::new(2, 26740);
    local::up(&t.opts).await.expect("up");
    t.wait_for(0, STREAMING_COUNT, "1", 30 * SECOND);
    let old_sysid = t
        .sql(0, "SELECT system_identifier FROM pg_control_system()")
        .unwrap();
    local::down(t.dir(), false).await.unwrap();
    let record = t.dir().join(pgset_spec::contract::record::LOCAL_FILE);

    // The master's directory is lost; the opt-in initialises anew, once, and says so.
    let mut master_only = t.opts.clone();
    master_only.replicas = 1;
    master_only.allow_reinit = true;
    std::fs::rename(t.dir().join("pgset-0"), t.tmp.path().join("lost-once")).unwrap();
    local::up(&master_only)
        .await
        .expect("the opt-in initialises anew");
    let new_sysid = t
        .sql(0, "SELECT system_identifier FROM pg_control_system()")
        .unwrap();
    assert_ne!(new_sysid, old_sysid);
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("the use is recorded"))
            .unwrap();
    assert_eq!(kept["reinitReplaced"], old_sysid.as_str(), "{kept}");
    assert_eq!(kept["reinitSystemIdentifier"], new_sysid.as_str(), "{kept}");
    local::down(t.dir(), false).await.unwrap();

    // Lost again with the opt-in still set: refused, nothing made.
    std::fs::rename(t.dir().join("pgset-0"), t.tmp.path().join("lost-twice")).unwrap();
    let err = local::up(&master_only)
        .await
        .expect_err("the opt-in was used")
        .to_string();
    assert!(
        err.contains("was already used")
            && err.contains(&format!("initialised database system {new_sysid}"))
            && err.contains("reinitReplaced")
            && err.contains(&record.display().to_string()),
        "{err}"
    );
    assert!(!t.dir().join("pgset-0").exists(), "no new data directory");

    // Allowed once more on purpose: the key removed from the record.
    std::fs::remove_file(&record).unwrap();
    local::up(&master_only)
        .await
        .expect("a second initialisation on purpose");
    assert_ne!(
        t.sql(0, "SELECT system_identifier FROM pg_control_system()")
            .unwrap(),
        new_sysid
    );
}
