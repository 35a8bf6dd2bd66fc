//! The NFS path of a database judged read-only, for `cargo xtask doctor`: the export's options,
//! the owners and modes of the export and member directories, the volumes' mount options,
//! SELinux's boolean and firewalld's services. Pure: it reads only its arguments.

use std::fmt;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::PersistentVolume;
use pgset_spec::contract::program_name;
use pgset_spec::{ClusterSpec, StorageMode};

use crate::facts::{HostFacts, PathState};
use crate::plan::{DATA_DIR_MODE, FIREWALLD_SERVICES, TRAVERSABLE_ROOT_MODE, member_dirs};

/// PostgreSQL's documentation on NFS: synchronous writes, hard mounts.
pub const DOCS_NFS: &str =
    "https://www.postgresql.org/docs/current/creating-cluster.html#CREATING-CLUSTER-NFS";
/// PostgreSQL's documentation on the data directory (its owner and its mode, 0700 or 0750).
pub const DOCS_DATA_DIRECTORY: &str =
    "https://www.postgresql.org/docs/current/creating-cluster.html";

/// A diagnosis' verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// As it should be.
    Pass,
    /// A problem, with its fix.
    Fail,
    /// Could not be judged here (said why).
    Skipped,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Pass => "pass",
            Health::Fail => "fail",
            Health::Skipped => "skipped",
        })
    }
}

/// One diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// A stable name (`export-options`, `export-directory`, ...).
    pub name: &'static str,
    /// The verdict.
    pub health: Health,
    /// What was seen.
    pub message: String,
    /// What to do (failures only).
    pub fix: Option<String>,
    /// The PostgreSQL documentation behind it, where there is one.
    pub docs: Option<&'static str>,
}

fn pass(name: &'static str, message: String) -> Diagnosis {
    Diagnosis {
        name,
        health: Health::Pass,
        message,
        fix: None,
        docs: None,
    }
}

fn fail(name: &'static str, message: String, fix: String, docs: Option<&'static str>) -> Diagnosis {
    Diagnosis {
        name,
        health: Health::Fail,
        message,
        fix: Some(fix),
        docs,
    }
}

fn skipped(name: &'static str, message: String) -> Diagnosis {
    Diagnosis {
        name,
        health: Health::Skipped,
        message,
        fix: None,
        docs: None,
    }
}

/// The volumes as read from the API: `None` when no cluster was asked, `Err` when it did not
/// answer; each volume pgset names, `None` when absent.
pub type VolumesRead = Option<Result<Vec<(String, Option<PersistentVolume>)>, String>>;

/// What the checks read: the arguments of [`diagnose`].
struct Inputs<'a> {
    spec: &'a ClusterSpec,
    facts: &'a HostFacts,
    members: &'a [(PathBuf, PathState)],
    volumes: &'a VolumesRead,
}

impl Inputs<'_> {
    /// The postgres uid the directories must belong to.
    fn uid(&self) -> u32 {
        u32::try_from(self.spec.postgres.uid).unwrap_or(u32::MAX)
    }
}

/// One check: its diagnosis, under the name it is listed with.
type Check = fn(&'static str, &Inputs<'_>) -> Diagnosis;

/// Every check, named, in the order they run: one diagnosis each.
const CHECKS: &[(&str, Check)] = &[
    ("export-options", export_options),
    ("export-directory", export_directory),
    ("member-directories", member_directories),
    ("volume-mount-options", volume_mount_options),
    ("selinux-virt-use-nfs", selinux_virt_use_nfs),
    ("firewalld-services", firewalld_services),
];

/// Judges the NFS path of `spec` from the host's facts, the member directories that exist
/// (`<export>/<pod>`, with their state) and the volumes read from the API.
pub fn diagnose(
    spec: &ClusterSpec,
    facts: &HostFacts,
    members: &[(PathBuf, PathState)],
    volumes: &VolumesRead,
) -> Vec<Diagnosis> {
    let inputs = Inputs {
        spec,
        facts,
        members,
        volumes,
    };
    CHECKS
        .iter()
        .map(|(name, check)| check(name, &inputs))
        .collect()
}

/// The export's options, as the server serves them.
fn export_options(name: &'static str, i: &Inputs<'_>) -> Diagnosis {
    let export = &i.spec.nfs.export;
    let live: Vec<_> = i
        .facts
        .active_exports
        .iter()
        .filter(|a| a.path == *export)
        .collect();
    let has = |a: &crate::parse::ActiveExport, o: &str| a.options.iter().any(|x| x == o);
    let program = program_name();
    let fix_export = format!(
        "run `{program} nfs` (pgset's block exports rw,sync,no_subtree_check,root_squash), or correct the line in /etc/exports, then `exportfs -ra`"
    );
    if live.is_empty() {
        return fail(
            name,
            format!("`exportfs -v` does not show {}", export.display()),
            fix_export,
            None,
        );
    }
    let mut problems = Vec::new();
    for a in &live {
        if has(a, "async") || !has(a, "sync") {
            problems.push(format!(
                "{} is exported async: a write PostgreSQL fsyncs may be lost when the server crashes",
                a.client
            ));
        }
        if has(a, "no_root_squash") || !has(a, "root_squash") {
            problems.push(format!(
                "{} is exported without root_squash: root on a node owns the data",
                a.client
            ));
        }
    }
    if problems.is_empty() {
        pass(
            name,
            format!(
                "{} is exported sync with root_squash to {}",
                export.display(),
                live.iter()
                    .map(|a| a.client.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else {
        fail(name, problems.join("; "), fix_export, Some(DOCS_NFS))
    }
}

/// The export directory's owner and mode.
fn export_directory(name: &'static str, i: &Inputs<'_>) -> Diagnosis {
    let export = &i.spec.nfs.export;
    let root_mode = if member_dirs(i.spec).is_empty() {
        DATA_DIR_MODE
    } else {
        TRAVERSABLE_ROOT_MODE
    };
    let program = program_name();
    match i.facts.export_dir {
        PathState::Missing => fail(
            name,
            format!("{} does not exist", export.display()),
            format!("run `{program} nfs`"),
            None,
        ),
        PathState::NotDirectory { what } => fail(
            name,
            format!("{} is {what}", export.display()),
            "choose another export with --nfs-export".into(),
            None,
        ),
        PathState::Directory { uid: u, mode, .. } => {
            let problems = dir_problems(u, mode, i.uid(), &[root_mode, root_mode | 0o050]);
            if problems.is_empty() {
                pass(
                    name,
                    format!(
                        "{} is owned by uid {u} with mode {mode:04o}",
                        export.display()
                    ),
                )
            } else {
                fail(
                    name,
                    format!("{}: {}", export.display(), problems.join(", ")),
                    format!(
                        "run `{program} nfs`, which sets the owner and mode (or chown/chmod by hand)"
                    ),
                    Some(DOCS_DATA_DIRECTORY),
                )
            }
        }
    }
}

/// The owners and modes of the member directories that exist.
fn member_directories(name: &'static str, i: &Inputs<'_>) -> Diagnosis {
    let uid = i.uid();
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for (path, state) in i.members {
        match *state {
            PathState::Missing => {}
            PathState::NotDirectory { what } => {
                problems.push(format!("{} is {what}", path.display()));
            }
            PathState::Directory { uid: u, mode, .. } => {
                seen.push(path.display().to_string());
                let p = dir_problems(u, mode, uid, &[DATA_DIR_MODE, DATA_DIR_MODE | 0o050]);
                if !p.is_empty() {
                    problems.push(format!("{}: {}", path.display(), p.join(", ")));
                }
            }
        }
    }
    if !problems.is_empty() {
        fail(
            name,
            problems.join("; "),
            format!(
                "chown {uid} and chmod 0700 each member directory (templates mode: `{} nfs` does it)",
                program_name()
            ),
            Some(DOCS_DATA_DIRECTORY),
        )
    } else if seen.is_empty() {
        pass(name, "no member directory yet".into())
    } else {
        pass(
            name,
            format!("{} owned by uid {uid}, mode 0700 or 0750", seen.join(", ")),
        )
    }
}

/// The volumes' mount options: `hard` and an explicit NFS version.
fn volume_mount_options(name: &'static str, i: &Inputs<'_>) -> Diagnosis {
    let spec = i.spec;
    if spec.storage.mode == StorageMode::Templates && spec.storage.storage_class.is_some() {
        return skipped(
            name,
            "the claims come from a StorageClass, not pgset's NFS volumes".into(),
        );
    }
    let list = match i.volumes {
        None => {
            return skipped(
                name,
                "no cluster to read the PersistentVolumes from (pass --kubeconfig)".into(),
            );
        }
        Some(Err(e)) => return skipped(name, format!("the cluster did not answer: {e}")),
        Some(Ok(list)) => list,
    };
    let problems = volume_problems(list);
    if problems.is_empty() {
        pass(
            name,
            format!(
                "{} volume(s) mount hard with an explicit nfsvers",
                list.len()
            ),
        )
    } else {
        fail(
            name,
            problems.join("; "),
            format!(
                "run `{} volumes` (a volume's mount options cannot change once bound: delete and re-create an unbound one)",
                program_name()
            ),
            Some(DOCS_NFS),
        )
    }
}

/// What is wrong with the volumes' mount options, in words.
fn volume_problems(list: &[(String, Option<PersistentVolume>)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (pv, found) in list {
        let Some(found) = found else {
            problems.push(format!("PersistentVolume {pv} does not exist"));
            continue;
        };
        let opts = found
            .spec
            .as_ref()
            .and_then(|s| s.mount_options.clone())
            .unwrap_or_default();
        if !opts.iter().any(|o| o == "hard") {
            problems.push(format!("{pv} does not mount `hard`"));
        }
        if !opts
            .iter()
            .any(|o| o.starts_with("nfsvers=") || o.starts_with("vers="))
        {
            problems.push(format!("{pv} names no NFS version (nfsvers=)"));
        }
    }
    problems
}

/// SELinux's `virt_use_nfs` boolean.
fn selinux_virt_use_nfs(name: &'static str, i: &Inputs<'_>) -> Diagnosis {
    if !i.facts.selinux.enabled() {
        return pass(name, "SELinux is off".into());
    }
    match i.facts.selinux_booleans.get("virt_use_nfs") {
        Some(Some(false)) => fail(
            name,
            "SELinux is on and virt_use_nfs is off: containers cannot use the NFS volumes".into(),
            format!(
                "setsebool -P virt_use_nfs 1 (or run `{} nfs`)",
                program_name()
            ),
            None,
        ),
        Some(Some(true)) => pass(name, "virt_use_nfs is on".into()),
        _ => pass(
            name,
            "the loaded policy does not define virt_use_nfs".into(),
        ),
    }
}

/// firewalld's services, when it runs.
fn firewalld_services(name: &'static str, i: &Inputs<'_>) -> Diagnosis {
    let Some(fw) = i.facts.firewalld.as_ref().filter(|f| f.running) else {
        return pass(name, "firewalld does not run".into());
    };
    let missing: Vec<&str> = FIREWALLD_SERVICES
        .iter()
        .copied()
        .filter(|s| {
            !fw.runtime_services.iter().any(|x| x == s)
                || !fw.permanent_services.iter().any(|x| x == s)
        })
        .collect();
    if missing.is_empty() {
        return pass(name, "nfs, rpc-bind and mountd are allowed".into());
    }
    fail(
        name,
        format!("firewalld runs and does not allow {}", missing.join(", ")),
        format!(
            "firewall-cmd --permanent {} && firewall-cmd --reload (or run `{} nfs`)",
            missing
                .iter()
                .map(|s| format!("--add-service={s}"))
                .collect::<Vec<_>>()
                .join(" "),
            program_name()
        ),
        None,
    )
}

/// What is wrong with a directory's owner and mode, in words.
fn dir_problems(owner: u32, mode: u32, uid: u32, modes: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    if owner != uid {
        out.push(format!("owned by uid {owner}, not the postgres uid {uid}"));
    }
    if mode & 0o002 != 0 {
        out.push(format!("world-writable (mode {mode:04o})"));
    } else if !modes.contains(&mode) {
        out.push(format!(
            "mode {mode:04o}, not {}",
            modes
                .iter()
                .map(|m| format!("{m:04o}"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_run_in_this_order() {
        let names: Vec<&str> = CHECKS.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "export-options",
                "export-directory",
                "member-directories",
                "volume-mount-options",
                "selinux-virt-use-nfs",
                "firewalld-services",
            ]
        );
    }
}
