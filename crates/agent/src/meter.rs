//! How far a replica's base backup has come, measured from state rather than from
//! `pg_basebackup`'s output: the bytes of the files under the directory being written (the
//! agent's own), and the master's estimate of the total (`pg_stat_progress_basebackup
//! .backup_total` of the walsender serving this member), read every [`SAMPLE_INTERVAL`] into
//! the member's [`Health`], from which the phase writer publishes it.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgset_spec::contract::BaseBackupReading;

use crate::health::Health;
use crate::pg::Db;

/// How often the copy is measured (the annotation is written less often: see
/// [`READING_INTERVAL`](crate::phase::READING_INTERVAL)).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// The bytes of the regular files under `dir`, symlinks not followed; a file that vanishes
/// while it is counted (a WAL segment renamed into place) is skipped, a missing `dir` is 0.
pub fn tree_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The master's estimate of what the base backup of `application_name` streams, from the
/// walsender serving it; `None` when the master gives none (not estimated yet, estimation off,
/// or the question failed: the copy goes on either way).
pub(crate) async fn master_total(master: &Db, application_name: &str) -> Option<u64> {
    let row = master
        .row(
            "SELECT max(p.backup_total)::bigint
               FROM pg_stat_progress_basebackup p
               JOIN pg_stat_activity a ON a.pid = p.pid
              WHERE a.application_name = $1",
            &[&application_name],
        )
        .await
        .ok()?;
    row.get::<_, Option<i64>>(0)
        .and_then(|t| u64::try_from(t).ok())
}

/// Milliseconds since the Unix epoch now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Measures the copy into `dir` every [`SAMPLE_INTERVAL`] until dropped (the copy ended),
/// asking `master` for the total when a connection is at hand.
pub(crate) async fn measure(
    dir: PathBuf,
    health: Arc<Health>,
    master: Option<&Db>,
    application_name: &str,
) -> Infallible {
    let mut total = None;
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: nothing is written yet.
    tick.tick().await;
    loop {
        tick.tick().await;
        let walked = dir.clone();
        let Ok(bytes) = tokio::task::spawn_blocking(move || tree_bytes(&walked)).await else {
            continue;
        };
        if let Some(db) = master
            && let Some(t) = master_total(db, application_name).await
        {
            total = Some(t);
        }
        health.set_base_backup(Some(BaseBackupReading {
            bytes,
            total,
            at_ms: now_ms(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_are_the_files_under_the_directory_and_nothing_it_links_to() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pgset-1.bootstrap");
        assert_eq!(tree_bytes(&dir), 0, "not begun");
        std::fs::create_dir_all(dir.join("base/1")).unwrap();
        std::fs::create_dir_all(dir.join("pg_wal")).unwrap();
        assert_eq!(tree_bytes(&dir), 0, "directories count nothing");
        std::fs::write(dir.join("PG_VERSION"), b"18\n").unwrap();
        std::fs::write(dir.join("base/1/1259"), vec![0u8; 8192 * 3]).unwrap();
        let wal = std::fs::File::create(dir.join("pg_wal/000000010000000000000001")).unwrap();
        // A sparse file counts by its length: what the copy has written out.
        wal.set_len(16 << 20).unwrap();
        let outside = root.path().join("elsewhere");
        std::fs::write(&outside, vec![1u8; 1_000_000]).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("pg_tblspc_link")).unwrap();
        assert_eq!(tree_bytes(&dir), 3 + 8192 * 3 + (16 << 20));
        // More files, more bytes: successive readings grow as the copy does.
        std::fs::write(dir.join("base/1/1249"), vec![0u8; 8192]).unwrap();
        assert_eq!(tree_bytes(&dir), 3 + 8192 * 4 + (16 << 20));
    }

    #[tokio::test(start_paused = true)]
    async fn the_meter_records_a_reading_every_interval_into_the_health_state() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pgset-1.bootstrap");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), vec![0u8; 1000]).unwrap();
        let health = Health::new("pgset-1", Duration::from_secs(30));
        let mut readings = health.base_backup_readings();
        let meter = measure(dir.clone(), health.clone(), None, "pgset-1");
        let first = tokio::select! {
            never = meter => match never {},
            r = async {
                readings.changed().await.unwrap();
                *readings.borrow_and_update()
            } => r,
        };
        let first = first.expect("a reading");
        assert_eq!((first.bytes, first.total), (1000, None));
        assert!(first.at_ms > 1_700_000_000_000, "{first:?}");
    }
}
