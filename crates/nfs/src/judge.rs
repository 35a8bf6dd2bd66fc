//! Judging before changing: whether the export path may become pgset's, and whether this host
//! can run every planned step. Pure: both read only their arguments.

use std::fmt;
use std::path::Path;

use pgset_spec::contract::program_name;

use crate::facts::{HostFacts, PathState, ServiceManager};
use crate::plan::Step;

/// The file pgset writes into an export directory it created or claimed; its `cluster:` line
/// names the cluster the directory belongs to.
pub const EXPORT_MARKER: &str = ".pgset-export";

/// Entries of a new file system's root that do not make a directory someone else's.
pub(crate) const IGNORED_ENTRIES: [&str; 1] = ["lost+found"];

/// What the export directory holds, as probed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportContents {
    /// Entries other than pgset's marker and `lost+found`, sorted (at most a few are kept).
    pub foreign: Vec<String>,
    /// How many such entries there are.
    pub foreign_count: usize,
    /// The contents of pgset's marker file, when there is one.
    pub marker: Option<String>,
}

/// Why the export path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRefusal {
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// The cluster identity written into (and read back from) the marker file.
pub fn marker_identity(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The contents of the marker file for a cluster.
pub fn marker_contents(namespace: &str, name: &str) -> String {
    format!(
        "# This directory is an NFS export made by pgset; keep this file.\ncluster: {}\n",
        marker_identity(namespace, name)
    )
}

/// The cluster a marker file names, if it names one.
pub fn marker_cluster(contents: &str) -> Option<&str> {
    contents
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster:"))
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

/// Refuses an export path that is a system directory or lies inside one of the operating
/// system's own trees: the rule of the spec's validation
/// ([`pgset_spec::system_export_path_problem`]), applied here again to the path the export
/// resolves to on the host.
pub fn judge_export_path(path: &Path) -> Result<(), ExportRefusal> {
    match pgset_spec::system_export_path_problem(path) {
        Some(problem) => Err(ExportRefusal {
            problem,
            fix: pgset_spec::SYSTEM_EXPORT_PATH_FIX.into(),
        }),
        None => Ok(()),
    }
}

/// Refuses an existing export directory that is not pgset's: it is pgset's when it is missing
/// (pgset creates it), empty (but for `lost+found`), marked for this cluster, or already
/// exported by this cluster's block in `/etc/exports` (made before the marker existed).
pub fn judge_export_contents(
    path: &Path,
    state: PathState,
    contents: &ExportContents,
    identity: &str,
    in_pgset_block: bool,
) -> Result<(), ExportRefusal> {
    if !matches!(state, PathState::Directory { .. }) {
        return Ok(());
    }
    if let Some(marker) = &contents.marker {
        // Marked by any pgset cluster, the export is pgset's: clusters share an export root by
        // design, each keeping its data in a directory of its own (`<namespace>.<name>` for
        // every cluster but the default), proven by the agents' data identities.
        return match marker_cluster(marker) {
            Some(_) => Ok(()),
            None => Err(ExportRefusal {
                problem: format!(
                    "{} has no `cluster:` line",
                    path.join(EXPORT_MARKER).display()
                ),
                fix: format!(
                    "write `cluster: {identity}` into it if the directory is this cluster's export, or choose another directory with --nfs-export"
                ),
            }),
        };
    }
    if contents.foreign_count == 0 || in_pgset_block {
        return Ok(());
    }
    let mut shown = contents.foreign.join(", ");
    if contents.foreign_count > contents.foreign.len() {
        shown.push_str(", …");
    }
    Err(ExportRefusal {
        problem: format!(
            "{} already exists and holds {} entr{} pgset did not create ({shown}); pgset never takes over a directory with other content",
            path.display(),
            contents.foreign_count,
            if contents.foreign_count == 1 {
                "y"
            } else {
                "ies"
            }
        ),
        fix: format!(
            "choose a new or empty directory with --nfs-export; if {} really is to be this cluster's export, write the marker by hand: printf 'cluster: {identity}\\n' > {}",
            path.display(),
            path.join(EXPORT_MARKER).display()
        ),
    })
}

/// One reason this host cannot run a planned step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// The step, in words.
    pub step: String,
    /// What is missing.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.step, self.problem, self.fix)
    }
}

/// Programs the NFS server packages install (so a step after the install may run them).
const INSTALLED_BY_PACKAGES: [&str; 1] = ["exportfs"];

/// Every reason this host cannot run one of `steps`: a service manager that does not answer,
/// a program that is missing and not installed by an earlier step. One blocker per cause.
pub fn blockers(facts: &HostFacts, steps: &[Step]) -> Vec<Blocker> {
    let mut out: Vec<Blocker> = Vec::new();
    let mut installs = false;
    for step in steps {
        if matches!(step, Step::InstallPackages { .. }) {
            installs = true;
        }
        for cmd in step.commands() {
            let program = cmd.program().to_str().unwrap_or_default();
            if out
                .iter()
                .any(|b| b.problem.contains(&format!("`{program}`")))
            {
                continue;
            }
            if program == "systemctl" {
                let problem = match &facts.service_manager {
                    ServiceManager::Systemd => continue,
                    ServiceManager::NotBooted => {
                        "`systemctl` cannot start services: this host was not booted with systemd as PID 1 (a container, WSL or a CI runner)"
                    }
                    ServiceManager::Missing => {
                        "`systemctl` is not installed: pgset starts the NFS server with systemd"
                    }
                };
                out.push(Blocker {
                    step: step.to_string(),
                    problem: problem.into(),
                    fix: format!("run `{} nfs` on a host booted with systemd (a VM or a bare-metal host), or serve the export from such a host yourself and pass --nfs-server ADDR (with `up`: --skip-nfs)", program_name()),
                });
                continue;
            }
            let later = installs && INSTALLED_BY_PACKAGES.contains(&program);
            if later || facts.programs.contains(program) {
                continue;
            }
            let fix = match program {
                "setsebool" | "restorecon" => {
                    "install policycoreutils (SELinux is on, so its tools are needed), then rerun"
                }
                "exportfs" => {
                    "the NFS server packages are recorded as installed but exportfs is missing: reinstall nfs-utils (RHEL family) or nfs-kernel-server (Debian family), then rerun"
                }
                "firewall-cmd" => "install firewalld's client (firewalld), then rerun",
                _ => "install it, then rerun",
            };
            out.push(Blocker {
                step: step.to_string(),
                problem: format!("`{program}` is not installed"),
                fix: fix.into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &str) -> Option<String> {
        judge_export_path(Path::new(p)).err().map(|r| r.problem)
    }

    #[test]
    fn system_directories_and_trees_are_refused() {
        for p in [
            "/", "/var", "/home", "/root", "/opt", "/srv", "/mnt", "/tmp", "/media",
        ] {
            let why = refused(p).unwrap_or_else(|| panic!("{p} accepted"));
            assert!(why.contains("system directory"), "{p}: {why}");
        }
        for p in [
            "/etc",
            "/usr",
            "/boot",
            "/etc/nfs",
            "/usr/local/share/export",
            "/boot/x",
            "/proc/1",
            "/sys/fs",
            "/dev/shm/x",
            "/run/nfs",
            "/bin/x",
            "/sbin/x",
            "/lib/x",
            "/lib64/x",
            "/var/lib/nfs",
            "/var/lib",
            "/var/log/pg",
            "/var/spool/x",
        ] {
            let why = refused(p).unwrap_or_else(|| panic!("{p} accepted"));
            assert!(
                why.contains("belongs to the operating system"),
                "{p}: {why}"
            );
        }
    }

    #[test]
    fn ordinary_export_paths_are_fine() {
        for p in [
            "/nfsfileshare",
            "/srv/nfs",
            "/srv/nfs/pgset",
            "/mnt/data",
            "/home/nfs",
            "/tmp/pgset-test/export",
            "/var/nfs",
            "/data/pg",
            "/etcetera",
            "/usrdata",
        ] {
            assert_eq!(refused(p), None, "{p}");
        }
    }

    const DIR: PathState = PathState::Directory {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };

    fn contents(foreign: &[&str], marker: Option<&str>) -> ExportContents {
        ExportContents {
            foreign: foreign.iter().map(|s| s.to_string()).collect(),
            foreign_count: foreign.len(),
            marker: marker.map(String::from),
        }
    }

    #[test]
    fn only_new_empty_marked_or_already_exported_directories_are_taken() {
        let p = Path::new("/srv/nfs");
        let me = "default/pgset";
        let judge =
            |state, c: &ExportContents, block| judge_export_contents(p, state, c, me, block);
        assert!(judge(PathState::Missing, &contents(&[], None), false).is_ok());
        assert!(judge(DIR, &contents(&[], None), false).is_ok());
        let mine = marker_contents("default", "pgset");
        assert!(judge(DIR, &contents(&["pgset-0"], Some(&mine)), false).is_ok());
        // Made by pgset before the marker: its block exports the path.
        assert!(judge(DIR, &contents(&["pgset-0"], None), true).is_ok());

        let e = judge(DIR, &contents(&["a.txt", "photos"], None), false).unwrap_err();
        assert!(
            e.problem
                .contains("holds 2 entries pgset did not create (a.txt, photos)"),
            "{e:?}"
        );
        assert!(
            e.fix.contains("--nfs-export") && e.fix.contains(EXPORT_MARKER),
            "{e:?}"
        );

        // Marked by another pgset cluster, the export root is still pgset's: each cluster keeps
        // its data in a directory of its own below it.
        let theirs = marker_contents("prod", "pgset");
        assert!(judge(DIR, &contents(&["prod.pgset"], Some(&theirs)), false).is_ok());
        let e = judge(DIR, &contents(&[], Some("hello\n")), false).unwrap_err();
        assert!(e.problem.contains("no `cluster:` line"), "{e:?}");
    }

    #[test]
    fn the_marker_names_its_cluster() {
        let m = marker_contents("ns", "db");
        assert_eq!(marker_cluster(&m), Some("ns/db"));
        assert_eq!(marker_cluster("cluster:   \n"), None);
    }
}
