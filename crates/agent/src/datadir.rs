//! The data directory on disk: checking the data root, telling a complete PGDATA from an
//! interrupted first copy, guarding against a live postmaster, and atomic file writes.
//! Nothing here deletes or moves a complete data directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result, io_err};

/// What is at PGDATA.
#[derive(Debug, PartialEq, Eq)]
pub enum DataState {
    /// Nothing (or an empty directory): a first start.
    Absent,
    /// A complete data directory (it has PG_VERSION; it only ever appears by rename).
    Existing,
}

/// Checks the data root exists, is a directory, and is writable by this user; a failure explains
/// the NFS ownership trap.
pub fn check_root(root: &Path) -> Result<()> {
    let meta = fs::metadata(root).map_err(|e| Error::DataDir {
        path: root.to_path_buf(),
        problem: format!("the data root is not accessible ({e}); mount the data volume there or fix PGSET_DATA_ROOT"),
    })?;
    if !meta.is_dir() {
        return Err(Error::DataDir {
            path: root.to_path_buf(),
            problem:
                "the data root is a file, not a directory; point PGSET_DATA_ROOT at a directory"
                    .into(),
        });
    }
    let probe = root.join(format!(".pgset-write-test-{}", std::process::id()));
    match fs::write(&probe, b"") {
        Ok(()) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Error::DataDir {
            path: root.to_path_buf(),
            problem: format!(
                "the data root is not writable by uid {} ({e}); on NFS with root_squash the export \
                 directory must be owned by the postgres uid (999 in the official image): \
                 `chown 999:999 <export>` on the NFS server",
                nix::unistd::Uid::effective()
            ),
        }),
    }
}

/// Classifies PGDATA; a non-empty directory without PG_VERSION is refused, never touched.
pub fn state(pgdata: &Path) -> Result<DataState> {
    match fs::symlink_metadata(pgdata) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataState::Absent),
        Err(e) => return Err(io_err(format!("inspect {}", pgdata.display()))(e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::DataDir {
                path: pgdata.to_path_buf(),
                problem: "PGDATA exists and is not a directory; move it away".into(),
            });
        }
        Ok(_) => {}
    }
    if pgdata.join("PG_VERSION").is_file() {
        return Ok(DataState::Existing);
    }
    let empty = fs::read_dir(pgdata)
        .map_err(io_err(format!("read {}", pgdata.display())))?
        .next()
        .is_none();
    if empty {
        fs::remove_dir(pgdata).map_err(io_err(format!("remove the empty {}", pgdata.display())))?;
        return Ok(DataState::Absent);
    }
    Err(Error::DataDir {
        path: pgdata.to_path_buf(),
        problem: "not empty but has no PG_VERSION, so it is not a PostgreSQL data directory; \
                  move it away (the agent never deletes it)"
            .into(),
    })
}

/// Live processes (other than this one) whose command line mentions `path`.
pub fn processes_using(path: &Path) -> Vec<i32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
            })
        })
        .collect()
}

/// Removes an interrupted first copy: stops any process still writing it (a base backup left by
/// a killed agent), then deletes it. Only ever called on `<pod>.bootstrap`, never on PGDATA.
pub fn discard_interrupted_bootstrap(dir: &Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let writers = processes_using(dir);
    if !writers.is_empty() {
        crate::warn!(
            "stopping processes still writing the interrupted copy {}: {writers:?}",
            dir.display()
        );
        for pid in &writers {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        for _ in 0..100 {
            if processes_using(dir).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for pid in processes_using(dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    crate::info!(
        "an interrupted first copy was found at {}; removing it and starting over",
        dir.display()
    );
    fs::remove_dir_all(dir).map_err(io_err(format!(
        "remove the interrupted copy {}",
        dir.display()
    )))
}

/// The pid of a live postmaster that owns `pgdata`, if any. A stale `postmaster.pid` (its
/// process gone) is left for postgres itself to replace.
pub fn live_postmaster(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 || pid == std::process::id() as i32 {
        return None;
    }
    if kill(Pid::from_raw(pid), None).is_err() {
        return None;
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let exe = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (!zombie && (exe.ends_with(b"postgres") || exe.ends_with(b"postmaster"))).then_some(pid)
}

/// The bytes under `path` (files of every depth; links not followed).
pub fn tree_size(path: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(path) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Bytes available to this user on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| Error::Io {
        action: format!("read the free space of {}", path.display()),
        source: std::io::Error::from(e),
    })?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Creates a directory (and parents) with `mode` when missing.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io_err(format!("create {}", dir.display())))
}

/// Writes `content` to `path` through a temp file and a rename, with `mode`; unchanged files are
/// not rewritten. Returns whether the file changed.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<bool> {
    if fs::read(path).is_ok_and(|old| old == content) {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode));
        return Ok(false);
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(format!("write {}", path.display()))(e)
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("pgset-1");
        assert_eq!(state(&d).unwrap(), DataState::Absent);
        fs::create_dir(&d).unwrap();
        assert_eq!(state(&d).unwrap(), DataState::Absent);
        assert!(
            !d.exists(),
            "an empty PGDATA is removed so the copy can be renamed into place"
        );
        fs::create_dir(&d).unwrap();
        fs::write(d.join("notes.txt"), "mine").unwrap();
        let e = state(&d).unwrap_err().to_string();
        assert!(e.contains("no PG_VERSION"), "{e}");
        assert!(
            d.join("notes.txt").exists(),
            "a foreign directory is never touched"
        );
        fs::write(d.join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(state(&d).unwrap(), DataState::Existing);
    }

    #[test]
    fn root_that_is_a_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("root");
        fs::write(&f, "x").unwrap();
        let e = check_root(&f).unwrap_err().to_string();
        assert!(e.contains("is a file"), "{e}");
        assert!(f.is_file());
        check_root(t.path()).unwrap();
    }

    #[test]
    fn sizes() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/a"), [0u8; 100]).unwrap();
        fs::write(t.path().join("b"), [0u8; 20]).unwrap();
        assert_eq!(tree_size(t.path()), 120);
        assert!(free_bytes(t.path()).unwrap() > 0);
    }

    #[test]
    fn atomic_write_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("x.conf");
        assert!(write_atomic(&f, b"a\n", 0o600).unwrap());
        assert!(!write_atomic(&f, b"a\n", 0o600).unwrap());
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn no_live_postmaster_for_a_stale_pid_file() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("postmaster.pid"), "999999999\n").unwrap();
        assert_eq!(live_postmaster(t.path()), None);
    }
}
