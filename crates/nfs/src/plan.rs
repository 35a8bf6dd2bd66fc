//! The pure plan: from host facts, the spec and the export options to the steps that make the
//! host an NFS server for the cluster. An already configured host plans no step.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};

use crate::clients::{ExportClient, ExportOptions};
use crate::exports::{ExportsFile, render_block};
use crate::facts::{HostFacts, PackageManager, PathState, Requirements, UnitFileState};
use crate::judge::{
    EXPORT_MARKER, ExportRefusal, judge_export_contents, judge_export_path, marker_contents,
    marker_identity,
};
use crate::parse::ActiveExport;
use crate::{Error, Result};
use pgset_command::HostCommand;

/// SELinux booleans the export needs: `virt_use_nfs` (the seed's; lets containers use NFS
/// volumes) and `nfs_export_all_rw` (lets nfsd serve any file type read-write).
pub(crate) const SELINUX_BOOLEANS: [&str; 2] = ["virt_use_nfs", "nfs_export_all_rw"];

/// firewalld services an NFS server needs (v4 needs `nfs`; v3 clients also `rpc-bind` and
/// `mountd`).
pub(crate) const FIREWALLD_SERVICES: [&str; 3] = ["nfs", "rpc-bind", "mountd"];

/// Mode of the member directories, and of a cluster's data root in `shared` mode: the postgres
/// user only.
pub(crate) const DATA_DIR_MODE: u32 = 0o700;

/// Mode of a directory when nodes mount directories below it (the export root in `templates`
/// mode or above another cluster's directory, a cluster's directory in `templates` mode): others
/// may traverse it but not list or write it, because a node mounts the directory below as root,
/// which the export squashes to an unprivileged user.
pub(crate) const TRAVERSABLE_ROOT_MODE: u32 = 0o711;

/// One change to the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Install packages.
    InstallPackages {
        /// The package manager.
        manager: PackageManager,
        /// Packages, in order.
        packages: Vec<String>,
    },
    /// Set SELinux booleans on, persistently.
    SetSelinuxBooleans {
        /// The booleans.
        booleans: Vec<String>,
    },
    /// Make a directory exist with an owner and mode.
    EnsureDirectory {
        /// Host path.
        path: PathBuf,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
        /// Permission bits.
        mode: u32,
        /// What is there now.
        current: PathState,
    },
    /// Write pgset's marker into the export directory: from now on it is this cluster's.
    MarkExport {
        /// Host path of the export directory.
        path: PathBuf,
        /// The marker's contents.
        contents: String,
    },
    /// Write `/etc/exports` with pgset's block (atomically, keeping a backup). The new contents
    /// are computed from the file as it is when the step runs, so lines an earlier step wrote
    /// (the package's own commented file) are kept.
    WriteExports {
        /// Host path of the exports file (`/etc/exports`).
        path: PathBuf,
        /// The cluster whose block it is.
        cluster: Box<ClusterSpec>,
        /// The exported path.
        export: PathBuf,
        /// pgset's block.
        block: String,
        /// The export line of pgset's block, for the description.
        export_line: String,
        /// Run `restorecon` on the new file (SELinux is on).
        restore_label: bool,
    },
    /// Enable and/or start a unit.
    StartUnit {
        /// The unit.
        unit: String,
        /// Enable it at boot.
        enable: bool,
        /// Start it now.
        start: bool,
    },
    /// Allow firewalld services, permanently and at runtime.
    OpenFirewall {
        /// The services.
        services: Vec<String>,
    },
    /// Re-export everything in `/etc/exports` (`exportfs -ra`).
    ReloadExports,
}

impl Step {
    /// The host commands of this step, in order; empty for steps done by file operations.
    pub fn commands(&self) -> Vec<HostCommand> {
        match self {
            Step::InstallPackages { manager, packages } => match manager {
                PackageManager::Apt => vec![
                    HostCommand::new("apt-get")
                        .args(["update", "-q"])
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                    HostCommand::new("apt-get")
                        .args(
                            ["install", "-y", "-q", "--no-install-recommends"]
                                .into_iter()
                                .map(String::from)
                                .chain(packages.iter().cloned()),
                        )
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                ],
                PackageManager::Yum | PackageManager::Dnf => vec![
                    HostCommand::new(manager.program()).args(
                        ["install", "-y"]
                            .into_iter()
                            .map(String::from)
                            .chain(packages.iter().cloned()),
                    ),
                ],
            },
            Step::SetSelinuxBooleans { booleans } => {
                vec![
                    HostCommand::new("setsebool").args(
                        std::iter::once("-P".to_string())
                            .chain(booleans.iter().map(|b| format!("{b}=1"))),
                    ),
                ]
            }
            Step::EnsureDirectory { .. } | Step::MarkExport { .. } => Vec::new(),
            Step::WriteExports {
                path,
                restore_label,
                ..
            } => {
                if *restore_label {
                    vec![HostCommand::new("restorecon").args([path.display().to_string()])]
                } else {
                    Vec::new()
                }
            }
            Step::StartUnit {
                unit,
                enable,
                start,
            } => match (enable, start) {
                (true, true) => vec![HostCommand::new("systemctl").args(["enable", "--now", unit])],
                (true, false) => vec![HostCommand::new("systemctl").args(["enable", unit])],
                (false, _) => vec![HostCommand::new("systemctl").args(["start", unit])],
            },
            Step::OpenFirewall { services } => vec![
                HostCommand::new("firewall-cmd").args(
                    std::iter::once("--permanent".to_string())
                        .chain(services.iter().map(|s| format!("--add-service={s}"))),
                ),
                HostCommand::new("firewall-cmd").args(["--reload"]),
            ],
            Step::ReloadExports => vec![HostCommand::new("exportfs").args(["-ra"])],
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::InstallPackages { manager, packages } => write!(
                f,
                "install {} with {}",
                packages.join(", "),
                manager.program()
            ),
            Step::SetSelinuxBooleans { booleans } => {
                write!(
                    f,
                    "turn on the SELinux boolean(s) {} (persistent)",
                    booleans.join(", ")
                )
            }
            Step::EnsureDirectory {
                path,
                uid,
                gid,
                mode,
                current,
            } => match current {
                PathState::Missing => write!(
                    f,
                    "create {} owned by {uid}:{gid} with mode {mode:04o}",
                    path.display()
                ),
                PathState::Directory {
                    uid: u0,
                    gid: g0,
                    mode: m0,
                } => write!(
                    f,
                    "set {} to owner {uid}:{gid} mode {mode:04o} (now {u0}:{g0} {m0:04o})",
                    path.display()
                ),
                PathState::NotDirectory { what } => {
                    write!(f, "replace {} ({what}) by a directory", path.display())
                }
            },
            Step::MarkExport { path, .. } => write!(
                f,
                "mark {} as this cluster's export ({})",
                path.display(),
                path.join(EXPORT_MARKER).display()
            ),
            Step::WriteExports {
                path, export_line, ..
            } => write!(
                f,
                "write pgset's block in {} (backup kept): {export_line}",
                path.display()
            ),
            Step::StartUnit {
                unit,
                enable,
                start,
            } => match (enable, start) {
                (true, true) => write!(f, "enable and start {unit}"),
                (true, false) => write!(f, "enable {unit}"),
                (false, _) => write!(f, "start {unit}"),
            },
            Step::OpenFirewall { services } => write!(
                f,
                "allow the firewalld service(s) {} (permanent and runtime)",
                services.join(", ")
            ),
            Step::ReloadExports => f.write_str("re-export /etc/exports (exportfs -ra)"),
        }
    }
}

/// The host path of `/etc/exports` as shown to the user.
fn exports_path() -> PathBuf {
    PathBuf::from("/etc/exports")
}

/// What planning reads: the arguments of [`plan`] and what follows from them alone.
struct Planning<'a> {
    facts: &'a HostFacts,
    spec: &'a ValidSpec,
    options: &'a ExportOptions,
    /// The directory pgset's block exports: the cluster's own.
    exported: PathBuf,
    /// The member directories pgset creates.
    member_dirs: Vec<PathBuf>,
    /// `/etc/exports` as it is now, parsed once; judged by the `exports-file` judgement.
    file: std::result::Result<ExportsFile, String>,
    /// The postgres uid and gid the data directories belong to.
    uid: u32,
    gid: u32,
}

impl<'a> Planning<'a> {
    fn new(facts: &'a HostFacts, spec: &'a ValidSpec, options: &'a ExportOptions) -> Self {
        Planning {
            facts,
            spec,
            options,
            exported: spec.cluster_export_dir(),
            member_dirs: member_dirs(spec),
            file: ExportsFile::parse(facts.exports_file.as_deref().unwrap_or(""), spec),
            uid: u32::try_from(spec.postgres.uid).unwrap_or(u32::MAX),
            gid: u32::try_from(spec.postgres.gid).unwrap_or(u32::MAX),
        }
    }

    /// The export as the spec names it.
    fn export(&self) -> &PathBuf {
        &self.spec.nfs.export
    }

    /// The export refused for `r`.
    fn refused(&self, r: ExportRefusal) -> Error {
        Error::ExportRefused {
            path: self.export().clone(),
            problem: r.problem,
            fix: r.fix,
        }
    }

    /// What the host's OS family needs (packages, package manager, units).
    fn requirements(&self) -> Result<Requirements> {
        Ok(self.facts.os.family()?.requirements())
    }

    /// `/etc/exports` as it is now, or why it cannot be planned on.
    fn file(&self) -> Result<&ExportsFile> {
        self.file
            .as_ref()
            .map_err(|problem| exports_error(problem.clone()))
    }

    /// The mode of the cluster's data root: traversable when nodes mount directories below it.
    fn data_root_mode(&self) -> u32 {
        if self.member_dirs.is_empty() {
            DATA_DIR_MODE
        } else {
            TRAVERSABLE_ROOT_MODE
        }
    }

    /// What is at `dir` below the export now.
    fn below(&self, dir: &PathBuf) -> PathState {
        self.facts
            .member_dirs
            .get(dir)
            .copied()
            .unwrap_or(PathState::Missing)
    }
}

/// A judgement before any step: `Err` is a problem no step can fix.
type Judgement = fn(&Planning<'_>) -> Result<()>;

/// Every judgement, named, in the order they run; the first problem wins.
const JUDGEMENTS: &[(&str, Judgement)] = &[
    ("export-path", export_path),
    ("export-real-path", export_real_path),
    ("os-family", os_family),
    ("clients", clients),
    ("export-is-directory", export_is_directory),
    (
        "dirs-below-export-are-directories",
        dirs_below_export_are_directories,
    ),
    ("exports-file", exports_file),
    ("export-contents", export_contents),
    ("no-export-outside-block", no_export_outside_block),
    ("units-not-masked", units_not_masked),
];

/// One part of the plan: the steps it adds, in order.
type Planner = fn(&Planning<'_>, &mut Vec<Step>) -> Result<()>;

/// Every part of the plan, named, in the order its steps run.
const PLANNERS: &[(&str, Planner)] = &[
    ("install-packages", install_packages),
    ("selinux-booleans", selinux_booleans),
    ("export-directory", export_directory),
    ("mark-export", mark_export),
    ("data-directories", data_directories),
    ("write-exports", write_exports),
    ("start-units", start_units),
    ("open-firewall", open_firewall),
    ("reload-exports", reload_exports),
];

/// Plans the steps that make the host serve the export. Pure: it reads only its arguments.
/// Errors are problems no step can fix (an unknown OS, an export path that is not pgset's to
/// take, a broken pgset block, the export already exported outside pgset's block, a masked
/// unit).
pub fn plan(facts: &HostFacts, spec: &ValidSpec, options: &ExportOptions) -> Result<Vec<Step>> {
    let p = Planning::new(facts, spec, options);
    for (_, judge) in JUDGEMENTS {
        judge(&p)?;
    }
    let mut steps = Vec::new();
    for (_, planner) in PLANNERS {
        planner(&p, &mut steps)?;
    }
    Ok(steps)
}

fn export_path(p: &Planning<'_>) -> Result<()> {
    judge_export_path(p.export()).map_err(|r| p.refused(r))
}

fn export_real_path(p: &Planning<'_>) -> Result<()> {
    if let Some(real) = &p.facts.export_real {
        judge_export_path(real)
            .map_err(|r| ExportRefusal {
                problem: format!("it resolves to {}: {}", real.display(), r.problem),
                fix: r.fix,
            })
            .map_err(|r| p.refused(r))?;
    }
    Ok(())
}

fn os_family(p: &Planning<'_>) -> Result<()> {
    p.facts.os.family().map(drop)
}

fn clients(p: &Planning<'_>) -> Result<()> {
    if p.options.clients.is_empty() {
        return Err(Error::NoClients);
    }
    Ok(())
}

fn export_is_directory(p: &Planning<'_>) -> Result<()> {
    if let PathState::NotDirectory { what } = p.facts.export_dir {
        return Err(Error::ExportNotDirectory {
            path: p.export().clone(),
            what,
        });
    }
    Ok(())
}

fn dirs_below_export_are_directories(p: &Planning<'_>) -> Result<()> {
    for dir in &dirs_below_export(p.spec) {
        if let Some(PathState::NotDirectory { what }) = p.facts.member_dirs.get(dir) {
            return Err(Error::MemberDirNotDirectory {
                path: dir.clone(),
                what,
            });
        }
    }
    Ok(())
}

fn exports_file(p: &Planning<'_>) -> Result<()> {
    p.file().map(drop)
}

fn export_contents(p: &Planning<'_>) -> Result<()> {
    let export = p.export();
    let identity = marker_identity(&p.spec.namespace, &p.spec.name);
    let in_block = !p
        .file()?
        .block_clients(&export.display().to_string())
        .is_empty();
    judge_export_contents(
        export,
        p.facts.export_dir,
        &p.facts.export_contents,
        &identity,
        in_block,
    )
    .map_err(|r| p.refused(r))
}

fn no_export_outside_block(p: &Planning<'_>) -> Result<()> {
    check_no_export_outside_block(p.file()?, &p.exported)
}

fn units_not_masked(p: &Planning<'_>) -> Result<()> {
    for unit in p.requirements()?.units {
        if p.facts
            .services
            .get(*unit)
            .is_some_and(|s| s.enabled == UnitFileState::Masked)
        {
            return Err(Error::UnitMasked {
                unit: unit.to_string(),
            });
        }
    }
    Ok(())
}

fn install_packages(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    let req = p.requirements()?;
    let missing: Vec<String> = req
        .packages
        .iter()
        .filter(|pkg| p.facts.packages.get(**pkg) != Some(&true))
        .map(|pkg| pkg.to_string())
        .collect();
    if !missing.is_empty() {
        if !p.facts.package_managers.contains(&req.package_manager) {
            return Err(Error::NoPackageManager {
                expected: req.package_manager.program(),
                os: p.facts.os.pretty_name.clone(),
            });
        }
        steps.push(Step::InstallPackages {
            manager: req.package_manager,
            packages: missing,
        });
    }
    Ok(())
}

fn selinux_booleans(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    if p.facts.selinux.enabled() {
        let off: Vec<String> = SELINUX_BOOLEANS
            .iter()
            .filter(|b| p.facts.selinux_booleans.get(**b) == Some(&Some(false)))
            .map(|b| b.to_string())
            .collect();
        if !off.is_empty() {
            steps.push(Step::SetSelinuxBooleans { booleans: off });
        }
    }
    Ok(())
}

fn export_directory(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    let (export, uid, gid) = (p.export(), p.uid, p.gid);
    if p.spec.is_default_cluster() {
        // The export is the data root. Traversable is right in shared mode too: another
        // cluster's directory below it needs that, and it still cannot be listed. A root
        // others can traverse now keeps that when it is repaired.
        let root = p.facts.export_dir;
        let mode = match root {
            PathState::Directory { mode, .. } if mode & 0o001 != 0 => TRAVERSABLE_ROOT_MODE,
            _ => p.data_root_mode(),
        };
        if !dir_is_right(root, uid, gid, mode)
            && !dir_is_right(root, uid, gid, TRAVERSABLE_ROOT_MODE)
        {
            steps.push(Step::EnsureDirectory {
                path: export.clone(),
                uid,
                gid,
                mode,
                current: root,
            });
        }
    } else {
        // The export only has to let nodes through to the cluster's own directory: created
        // traversable, or made so keeping its owner (it may be another cluster's data root).
        match p.facts.export_dir {
            PathState::Missing => steps.push(Step::EnsureDirectory {
                path: export.clone(),
                uid,
                gid,
                mode: TRAVERSABLE_ROOT_MODE,
                current: PathState::Missing,
            }),
            current @ PathState::Directory {
                uid: u0,
                gid: g0,
                mode: m0,
            } if m0 & 0o001 == 0 => steps.push(Step::EnsureDirectory {
                path: export.clone(),
                uid: u0,
                gid: g0,
                mode: m0 | 0o011,
                current,
            }),
            _ => {}
        }
    }
    Ok(())
}

fn mark_export(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    // The export is pgset's from now on (whichever cluster marked it first: clusters share it,
    // each in a directory of its own).
    if p.facts.export_contents.marker.is_none() {
        steps.push(Step::MarkExport {
            path: p.export().clone(),
            contents: marker_contents(&p.spec.namespace, &p.spec.name),
        });
    }
    Ok(())
}

fn data_directories(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    let mut wanted_dirs: Vec<(PathBuf, PathState, u32)> = Vec::new();
    if !p.spec.is_default_cluster() {
        wanted_dirs.push((p.exported.clone(), p.below(&p.exported), p.data_root_mode()));
    }
    wanted_dirs.extend(
        p.member_dirs
            .iter()
            .map(|d| (d.clone(), p.below(d), DATA_DIR_MODE)),
    );
    for (path, current, mode) in wanted_dirs {
        if !dir_is_right(current, p.uid, p.gid, mode) {
            steps.push(Step::EnsureDirectory {
                path,
                uid: p.uid,
                gid: p.gid,
                mode,
                current,
            });
        }
    }
    Ok(())
}

fn write_exports(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    let block = render_block(p.spec, &p.options.clients);
    let new_text = p.file()?.with_block(&block);
    if p.facts.exports_file.as_deref() != Some(new_text.as_str()) {
        let export_line = block.lines().nth(1).unwrap_or_default().to_string();
        steps.push(Step::WriteExports {
            path: exports_path(),
            cluster: Box::new(ClusterSpec::clone(p.spec)),
            export: p.exported.clone(),
            block,
            export_line,
            restore_label: p.facts.selinux.enabled() && p.facts.has_restorecon,
        });
    }
    Ok(())
}

fn start_units(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    for unit in p.requirements()?.units {
        let state = p.facts.services.get(*unit);
        let enable = match state.map(|s| &s.enabled) {
            None | Some(UnitFileState::NotFound) | Some(UnitFileState::Disabled) => true,
            Some(UnitFileState::Other(_)) => true,
            Some(_) => false,
        };
        let start = !state.is_some_and(|s| s.active);
        if enable || start {
            steps.push(Step::StartUnit {
                unit: unit.to_string(),
                enable,
                start,
            });
        }
    }
    Ok(())
}

fn open_firewall(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    if let Some(fw) = p.facts.firewalld.as_ref().filter(|f| f.running) {
        let missing: Vec<String> = FIREWALLD_SERVICES
            .iter()
            .filter(|s| {
                !fw.permanent_services.iter().any(|x| x == *s)
                    || !fw.runtime_services.iter().any(|x| x == *s)
            })
            .map(|s| s.to_string())
            .collect();
        if !missing.is_empty() {
            steps.push(Step::OpenFirewall { services: missing });
        }
    }
    Ok(())
}

fn reload_exports(p: &Planning<'_>, steps: &mut Vec<Step>) -> Result<()> {
    let wrote = steps.iter().any(|s| matches!(s, Step::WriteExports { .. }));
    if wrote || !export_is_live(p.facts, &p.exported, &p.options.clients) {
        steps.push(Step::ReloadExports);
    }
    Ok(())
}

/// The error of an `/etc/exports` pgset cannot plan on.
fn exports_error(problem: String) -> Error {
    Error::Exports {
        path: exports_path(),
        problem,
        fix: "repair or remove pgset's marker lines by hand (the last version pgset replaced is in /etc/exports.pgset.bak), then rerun".into(),
    }
}

fn parse_exports(text: &str, spec: &ClusterSpec) -> Result<ExportsFile> {
    ExportsFile::parse(text, spec).map_err(exports_error)
}

fn check_no_export_outside_block(file: &ExportsFile, export: &Path) -> Result<()> {
    let export_str = export.display().to_string();
    match file.entries_outside_block_for(&export_str).first() {
        None => Ok(()),
        Some(e) => Err(Error::Exports {
            path: exports_path(),
            problem: format!(
                "line {} already exports {export_str} outside pgset's block",
                e.line
            ),
            fix: "remove or comment out that entry (pgset writes the export with restricted clients itself), then rerun".into(),
        }),
    }
}

/// The exports file with pgset's block for the cluster `spec` put in, from its text as it is now
/// (`None`: no file). The same judgement as the plan's: a broken block or the export
/// already exported outside the block is an error.
pub(crate) fn exports_with_block(
    current: Option<&str>,
    spec: &ClusterSpec,
    export: &Path,
    block: &str,
) -> Result<String> {
    let file = parse_exports(current.unwrap_or(""), spec)?;
    check_no_export_outside_block(&file, export)?;
    Ok(file.with_block(block))
}

/// The directories below the export that pgset creates and probes: the cluster's own directory
/// (every cluster but the default), then the member directories.
pub(crate) fn dirs_below_export(spec: &ClusterSpec) -> Vec<PathBuf> {
    let own = (!spec.is_default_cluster()).then(|| spec.cluster_export_dir());
    own.into_iter().chain(member_dirs(spec)).collect()
}

/// Member directories pgset creates under the cluster's directory: one per ordinal in
/// `templates` mode with pgset's own volumes; none in `shared` mode (the agent creates its
/// directory).
pub(crate) fn member_dirs(spec: &ClusterSpec) -> Vec<PathBuf> {
    if spec.storage.mode == StorageMode::Templates && spec.storage.storage_class.is_none() {
        (0..spec.replicas)
            .map(|i| spec.member_export_dir(i))
            .collect()
    } else {
        Vec::new()
    }
}

/// Whether a directory has the owner and the mode wanted; the group may also read and
/// traverse it (`0750` for `0700`, `0751` for `0711`).
fn dir_is_right(state: PathState, uid: u32, gid: u32, wanted: u32) -> bool {
    matches!(state, PathState::Directory { uid: u, gid: g, mode }
        if u == uid && g == gid && (mode == wanted || mode == wanted | 0o050))
}

/// Whether `exportfs -v` shows `export` to exactly `clients`, each with pgset's options.
pub(crate) fn export_is_live(facts: &HostFacts, export: &Path, clients: &[ExportClient]) -> bool {
    missing_live_clients(&facts.active_exports, export, clients).is_empty()
        && facts
            .active_exports
            .iter()
            .filter(|a| a.path == export)
            .count()
            == clients.len()
}

/// The clients `exportfs -v` does not show for `export` with pgset's options.
pub(crate) fn missing_live_clients(
    active: &[ActiveExport],
    export: &Path,
    clients: &[ExportClient],
) -> Vec<ExportClient> {
    let live: BTreeSet<ExportClient> = active
        .iter()
        .filter(|a| a.path == export && a.has_pgset_options())
        .filter_map(|a| a.parsed_client())
        .collect();
    clients
        .iter()
        .filter(|c| !live.contains(c))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judgements_then_the_steps_run_in_this_order() {
        let judgements: Vec<&str> = JUDGEMENTS.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            judgements,
            [
                "export-path",
                "export-real-path",
                "os-family",
                "clients",
                "export-is-directory",
                "dirs-below-export-are-directories",
                "exports-file",
                "export-contents",
                "no-export-outside-block",
                "units-not-masked",
            ]
        );
        let planners: Vec<&str> = PLANNERS.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            planners,
            [
                "install-packages",
                "selinux-booleans",
                "export-directory",
                "mark-export",
                "data-directories",
                "write-exports",
                "start-units",
                "open-firewall",
                "reload-exports",
            ]
        );
    }
}
