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

/// The volumes as read from the API: `None` when no cluster was asked, `Err` when it did not
/// answer; each volume pgset names, `None` when absent.
pub type VolumesRead = Option<Result<Vec<(String, Option<PersistentVolume>)>, String>>;

/// Judges the NFS path of `spec` from the host's facts, the member directories that exist
/// (`<export>/<pod>`, with their state) and the volumes read from the API.
pub fn diagnose(
    spec: &ClusterSpec,
    facts: &HostFacts,
    members: &[(PathBuf, PathState)],
    volumes: &VolumesRead,
) -> Vec<Diagnosis> {
    let export = &spec.nfs.export;
    let uid = u32::try_from(spec.postgres.uid).unwrap_or(u32::MAX);
    let mut out = Vec::new();

    // The export's options, as the server serves them.
    let name = "export-options";
    let live: Vec<_> = facts
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
        out.push(fail(
            name,
            format!("`exportfs -v` does not show {}", export.display()),
            fix_export.clone(),
            None,
        ));
    } else {
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
            out.push(pass(
                name,
                format!(
                    "{} is exported sync with root_squash to {}",
                    export.display(),
                    live.iter()
                        .map(|a| a.client.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        } else {
            out.push(fail(
                name,
                problems.join("; "),
                fix_export.clone(),
                Some(DOCS_NFS),
            ));
        }
    }

    // The export directory.
    let name = "export-directory";
    let root_mode = if member_dirs(spec).is_empty() {
        DATA_DIR_MODE
    } else {
        TRAVERSABLE_ROOT_MODE
    };
    let program = program_name();
    let fix_dirs =
        format!("run `{program} nfs`, which sets the owner and mode (or chown/chmod by hand)");
    match facts.export_dir {
        PathState::Missing => out.push(fail(
            name,
            format!("{} does not exist", export.display()),
            format!("run `{program} nfs`"),
            None,
        )),
        PathState::NotDirectory { what } => out.push(fail(
            name,
            format!("{} is {what}", export.display()),
            "choose another export with --nfs-export".into(),
            None,
        )),
        PathState::Directory { uid: u, mode, .. } => {
            let problems = dir_problems(u, mode, uid, &[root_mode, root_mode | 0o050]);
            if problems.is_empty() {
                out.push(pass(
                    name,
                    format!(
                        "{} is owned by uid {u} with mode {mode:04o}",
                        export.display()
                    ),
                ));
            } else {
                out.push(fail(
                    name,
                    format!("{}: {}", export.display(), problems.join(", ")),
                    fix_dirs.clone(),
                    Some(DOCS_DATA_DIRECTORY),
                ));
            }
        }
    }

    // The member directories that exist.
    let name = "member-directories";
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for (path, state) in members {
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
        out.push(fail(
            name,
            problems.join("; "),
            format!(
                "chown {uid} and chmod 0700 each member directory (templates mode: `{} nfs` does it)",
                program_name()
            ),
            Some(DOCS_DATA_DIRECTORY),
        ));
    } else if seen.is_empty() {
        out.push(pass(name, "no member directory yet".into()));
    } else {
        out.push(pass(
            name,
            format!("{} owned by uid {uid}, mode 0700 or 0750", seen.join(", ")),
        ));
    }

    // The volumes' mount options.
    let name = "volume-mount-options";
    if spec.storage.mode == StorageMode::Templates && spec.storage.storage_class.is_some() {
        out.push(Diagnosis {
            name,
            health: Health::Skipped,
            message: "the claims come from a StorageClass, not pgset's NFS volumes".into(),
            fix: None,
            docs: None,
        });
    } else {
        match volumes {
            None => out.push(Diagnosis {
                name,
                health: Health::Skipped,
                message: "no cluster to read the PersistentVolumes from (pass --kubeconfig)".into(),
                fix: None,
                docs: None,
            }),
            Some(Err(e)) => out.push(Diagnosis {
                name,
                health: Health::Skipped,
                message: format!("the cluster did not answer: {e}"),
                fix: None,
                docs: None,
            }),
            Some(Ok(list)) => {
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
                if problems.is_empty() {
                    out.push(pass(
                        name,
                        format!(
                            "{} volume(s) mount hard with an explicit nfsvers",
                            list.len()
                        ),
                    ));
                } else {
                    out.push(fail(
                        name,
                        problems.join("; "),
                        format!("run `{} volumes` (a volume's mount options cannot change once bound: delete and re-create an unbound one)", program_name()),
                        Some(DOCS_NFS),
                    ));
                }
            }
        }
    }

    // SELinux.
    let name = "selinux-virt-use-nfs";
    if !facts.selinux.enabled() {
        out.push(pass(name, "SELinux is off".into()));
    } else {
        match facts.selinux_booleans.get("virt_use_nfs") {
            Some(Some(false)) => out.push(fail(
                name,
                "SELinux is on and virt_use_nfs is off: containers cannot use the NFS volumes"
                    .into(),
                format!(
                    "setsebool -P virt_use_nfs 1 (or run `{} nfs`)",
                    program_name()
                ),
                None,
            )),
            Some(Some(true)) => out.push(pass(name, "virt_use_nfs is on".into())),
            _ => out.push(pass(
                name,
                "the loaded policy does not define virt_use_nfs".into(),
            )),
        }
    }

    // firewalld.
    let name = "firewalld-services";
    match facts.firewalld.as_ref().filter(|f| f.running) {
        None => out.push(pass(name, "firewalld does not run".into())),
        Some(fw) => {
            let missing: Vec<&str> = FIREWALLD_SERVICES
                .iter()
                .copied()
                .filter(|s| {
                    !fw.runtime_services.iter().any(|x| x == s)
                        || !fw.permanent_services.iter().any(|x| x == s)
                })
                .collect();
            if missing.is_empty() {
                out.push(pass(name, "nfs, rpc-bind and mountd are allowed".into()));
            } else {
                out.push(fail(
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
                ));
            }
        }
    }
    out
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
