//! Applying a plan: host commands through the runner, directories and `/etc/exports` by file
//! operations (atomic write with a backup); then `exportfs -v` must show the export.

use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, chown};

use crate::clients::ExportClient;
use crate::facts::{HostFacts, HostPaths, PathState};
use crate::judge::{EXPORT_MARKER, blockers};
use crate::parse::parse_exportfs_verbose;
use crate::plan::{DATA_DIR_MODE, Step, exports_with_block, member_dirs, missing_live_clients};
use crate::probe::read_exports;
use crate::{Error, Result};
use pgset_command::{HostCommand, Runner};
use pgset_spec::ClusterSpec;

/// Performs `steps` in order, saying each step and each file written to `progress` (the
/// commands' own lines go through pgset-command's log). Needs root unless there is nothing to
/// do, and a host that can run every step ([`blockers`]); refuses before any change otherwise.
pub fn apply(
    steps: &[Step],
    facts: &HostFacts,
    paths: &HostPaths,
    runner: &dyn Runner,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    if !facts.is_root {
        return Err(Error::NotRoot { steps: steps.len() });
    }
    let blockers = blockers(facts, steps);
    if !blockers.is_empty() {
        return Err(Error::Blocked { blockers });
    }
    for step in steps {
        progress(&format!("==> {step}"));
        match step {
            Step::EnsureDirectory {
                path,
                uid,
                gid,
                mode,
                current,
            } => ensure_directory(&paths.host(path), *uid, *gid, *mode, *current)?,
            Step::MarkExport { path, contents } => write_marker(&paths.host(path), contents)?,
            Step::WriteExports {
                cluster,
                export,
                block,
                ..
            } => {
                // From the file as it is now: an earlier step (the package's install) may have
                // written it since the probe.
                let current = read_exports(paths)?;
                let contents = exports_with_block(current.as_deref(), cluster, export, block)?;
                if current.as_deref() == Some(contents.as_str()) {
                    progress(&format!(
                        "    {} already holds pgset's block",
                        paths.exports().display()
                    ));
                } else {
                    write_exports(paths, &contents, progress)?;
                }
            }
            _ => {}
        }
        for cmd in step.commands() {
            runner.change(&cmd)?;
        }
    }
    Ok(())
}

fn file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::File {
        action,
        path,
        source,
    }
}

fn ensure_directory(path: &Path, uid: u32, gid: u32, mode: u32, current: PathState) -> Result<()> {
    if let PathState::NotDirectory { what } = current {
        return Err(Error::ExportNotDirectory {
            path: path.to_path_buf(),
            what,
        });
    }
    if current == PathState::Missing {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(file_error("create", parent))?;
        }
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(file_error("create", path)(e)),
        }
    }
    chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| file_error("change the owner of", path)(std::io::Error::from(e)))?;
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(file_error("change the mode of", path))?;
    Ok(())
}

/// Templates mode, once the `nfs` stage has made the cluster's directory: makes the member
/// directories of `spec`'s members that do not exist yet, as the plan makes them (owned by the
/// postgres uid and gid, mode 0700), so that a member added by scaling can start. Anything
/// already at a member's path is left as it is (the `nfs` stage and `doctor` judge it).
/// Returns the directories made (host paths as the spec names them).
pub fn make_member_dirs(paths: &HostPaths, spec: &ClusterSpec) -> Result<Vec<PathBuf>> {
    let uid = u32::try_from(spec.postgres.uid).unwrap_or(u32::MAX);
    let gid = u32::try_from(spec.postgres.gid).unwrap_or(u32::MAX);
    let mut made = Vec::new();
    for dir in member_dirs(spec) {
        let host = paths.host(&dir);
        if host.symlink_metadata().is_ok() {
            continue;
        }
        ensure_directory(&host, uid, gid, DATA_DIR_MODE, PathState::Missing)?;
        made.push(dir);
    }
    Ok(made)
}

/// Writes pgset's marker into the export directory (root-owned, mode 0644); an identical
/// marker is left as it is.
fn write_marker(dir: &Path, contents: &str) -> Result<()> {
    let path = dir.join(EXPORT_MARKER);
    if fs::read(&path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&path)
        .map_err(file_error("create", &path))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(file_error("write", &path))
}

/// Writes the exports file atomically: the old file is copied to the backup, the new contents
/// go to a temporary file in the same directory (same owner and mode as the old file), which is
/// then renamed over it.
fn write_exports(paths: &HostPaths, contents: &str, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let target = paths.exports();
    let temp = paths.exports_temp();
    let backup = paths.exports_backup();
    let old = fs::metadata(&target).ok();
    if old.is_some() {
        fs::copy(&target, &backup).map_err(file_error("back up", &target))?;
    }
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let _ = fs::remove_file(&temp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(file_error("create", &temp))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(file_error("write", &temp))?;
    drop(f);
    fs::set_permissions(&temp, Permissions::from_mode(mode))
        .map_err(file_error("set the mode of", &temp))?;
    if let Some(m) = &old {
        chown(
            &temp,
            Some(Uid::from_raw(m.uid())),
            Some(Gid::from_raw(m.gid())),
        )
        .map_err(|e| file_error("change the owner of", &temp)(std::io::Error::from(e)))?;
    }
    fs::rename(&temp, &target).map_err(file_error("replace", &target))?;
    if let Some(dir) = target.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(file_error("sync", dir))?;
    }
    progress(&format!(
        "    wrote {} (previous version in {})",
        target.display(),
        if old.is_some() {
            backup.display().to_string()
        } else {
            "none: the file was new".to_string()
        }
    ));
    Ok(())
}

/// Checks with `exportfs -v` that `export` is exported to every client with pgset's options.
/// A read-only check: logged like a probe.
pub fn verify_export(runner: &dyn Runner, export: &Path, clients: &[ExportClient]) -> Result<()> {
    let cmd = HostCommand::new("exportfs").args(["-v"]);
    let out = runner.probe(&cmd)?.checked(&cmd)?;
    let active = parse_exportfs_verbose(&out.stdout);
    let missing = missing_live_clients(&active, export, clients);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::ExportNotLive {
            export: PathBuf::from(export),
            missing: missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::StorageMode;

    #[test]
    fn missing_member_dirs_are_made_and_present_ones_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let paths = HostPaths::under(root.path());
        let mut spec = ClusterSpec::default();
        spec.storage.mode = StorageMode::Templates;
        spec.replicas = 3;
        // Member 1's directory is already there with data and a mode of its own.
        let present = paths.host(&spec.member_export_dir(1));
        fs::create_dir_all(&present).unwrap();
        fs::write(present.join("PG_VERSION"), "15\n").unwrap();
        fs::set_permissions(&present, Permissions::from_mode(0o750)).unwrap();

        let made = make_member_dirs(&paths, &spec).unwrap();
        assert_eq!(
            made,
            vec![spec.member_export_dir(0), spec.member_export_dir(2)]
        );
        let me_root = nix::unistd::geteuid().is_root();
        for dir in &made {
            let meta = fs::metadata(paths.host(dir)).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
            if me_root {
                assert_eq!(i64::from(meta.uid()), spec.postgres.uid);
                assert_eq!(i64::from(meta.gid()), spec.postgres.gid);
            }
        }
        let meta = fs::metadata(&present).unwrap();
        assert_eq!(
            meta.mode() & 0o7777,
            0o750,
            "a present directory is not changed"
        );
        assert!(present.join("PG_VERSION").exists());

        // Again: nothing left to make.
        assert!(make_member_dirs(&paths, &spec).unwrap().is_empty());
        // Shared mode has no member directories of its own to make.
        spec.storage.mode = StorageMode::Shared;
        assert!(make_member_dirs(&paths, &spec).unwrap().is_empty());
    }
}
