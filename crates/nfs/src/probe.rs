//! Probing: read the host into [`HostFacts`]. Nothing here changes the host.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pgset_spec::ClusterSpec;

use crate::facts::{
    FirewalldState, HostAddresses, HostFacts, HostPaths, OsRelease, PackageManager, PathState,
    SelinuxMode, ServiceManager, ServiceState,
};
use crate::judge::{EXPORT_MARKER, ExportContents, IGNORED_ENTRIES};
use crate::parse::{
    parse_dpkg_query, parse_exportfs_verbose, parse_firewall_services, parse_getenforce,
    parse_getsebool, parse_ip_addr_show, parse_ip_route_get, parse_os_release, parse_rpm_query,
    parse_unit_file_state,
};
use crate::plan::{SELINUX_BOOLEANS, dirs_below_export};
use crate::{Error, Result};
use pgset_command::{HostCommand, Runner};

/// An address outside any lab network, used only to ask the kernel which source address its
/// default route would use (`ip route get` sends nothing).
const ROUTE_PROBE_ADDRESS: &str = "1.1.1.1";

/// Programs the steps may run; probing records which are on PATH.
const STEP_PROGRAMS: [&str; 8] = [
    "apt-get",
    "dnf",
    "yum",
    "systemctl",
    "setsebool",
    "restorecon",
    "firewall-cmd",
    "exportfs",
];

fn on_path(program: &str) -> bool {
    which::which(program).is_ok()
}

/// Probes the host: OS, root, packages, units, SELinux, firewalld, `/etc/exports`,
/// `exportfs -v`, the export directory and the host's addresses.
pub fn probe(runner: &dyn Runner, paths: &HostPaths, spec: &ClusterSpec) -> Result<HostFacts> {
    let os = read_os_release(paths)?;
    let package_managers: Vec<PackageManager> = [
        PackageManager::Dnf,
        PackageManager::Yum,
        PackageManager::Apt,
    ]
    .into_iter()
    .filter(|m| on_path(m.program()))
    .collect();

    let mut packages = BTreeMap::new();
    let mut services = BTreeMap::new();
    if let Ok(family) = os.family() {
        let req = family.requirements();
        packages = probe_packages(runner, req.package_manager, req.packages)?;
        if on_path("systemctl") {
            for unit in req.units {
                let enabled =
                    runner.probe(&HostCommand::new("systemctl").args(["is-enabled", unit]))?;
                let active =
                    runner.probe(&HostCommand::new("systemctl").args(["is-active", unit]))?;
                services.insert(
                    unit.to_string(),
                    ServiceState {
                        enabled: parse_unit_file_state(&enabled.stdout),
                        active: active.stdout.trim() == "active",
                    },
                );
            }
        }
    }

    let selinux = if on_path("getenforce") {
        let out = runner.probe(&HostCommand::new("getenforce"))?;
        parse_getenforce(&out.stdout).unwrap_or(SelinuxMode::Absent)
    } else {
        SelinuxMode::Absent
    };
    let mut selinux_booleans = BTreeMap::new();
    if selinux.enabled() {
        for b in SELINUX_BOOLEANS {
            let out = runner.probe(&HostCommand::new("getsebool").args([b]))?;
            let value = if out.success() {
                parse_getsebool(&out.stdout).map(|(_, v)| v)
            } else {
                None
            };
            selinux_booleans.insert(b.to_string(), value);
        }
    }

    let firewalld = if on_path("firewall-cmd") {
        let state = runner.probe(&HostCommand::new("firewall-cmd").args(["--state"]))?;
        let running = state.stdout.trim() == "running";
        let mut fw = FirewalldState {
            running,
            ..FirewalldState::default()
        };
        if running {
            let rt = HostCommand::new("firewall-cmd").args(["--list-services"]);
            let rt = runner.probe(&rt)?.checked(&rt)?;
            let perm = HostCommand::new("firewall-cmd").args(["--permanent", "--list-services"]);
            let perm = runner.probe(&perm)?.checked(&perm)?;
            fw.runtime_services = parse_firewall_services(&rt.stdout);
            fw.permanent_services = parse_firewall_services(&perm.stdout);
        }
        Some(fw)
    } else {
        None
    };

    let active_exports = if on_path("exportfs") {
        let out = runner.probe(&HostCommand::new("exportfs").args(["-v"]))?;
        parse_exportfs_verbose(&out.stdout)
    } else {
        Vec::new()
    };

    let addresses = probe_addresses(runner)?;

    let service_manager = if !on_path("systemctl") {
        ServiceManager::Missing
    } else if paths.host(Path::new("/run/systemd/system")).is_dir() {
        ServiceManager::Systemd
    } else {
        ServiceManager::NotBooted
    };
    let programs = STEP_PROGRAMS
        .iter()
        .filter(|p| on_path(p))
        .map(|p| p.to_string())
        .collect();

    let mut facts = HostFacts {
        os,
        is_root: nix::unistd::geteuid().is_root(),
        service_manager,
        programs,
        package_managers,
        packages,
        services,
        selinux,
        selinux_booleans,
        has_restorecon: on_path("restorecon"),
        firewalld,
        exports_file: None,
        active_exports,
        export_dir: PathState::Missing,
        export_real: None,
        export_contents: ExportContents::default(),
        member_dirs: BTreeMap::new(),
        addresses,
    };
    probe_files(paths, spec, &mut facts)?;
    Ok(facts)
}

/// Probes the host's addresses: the source address of the default route (`ip -o route get`,
/// which sends nothing) and every global address with its network. Without a default route
/// (an isolated lab network) the first global IPv4 address stands in for the primary one.
pub fn probe_addresses(runner: &dyn Runner) -> Result<HostAddresses> {
    if !on_path("ip") {
        return Ok(HostAddresses::default());
    }
    let route =
        runner.probe(&HostCommand::new("ip").args(["-o", "route", "get", ROUTE_PROBE_ADDRESS]))?;
    let addrs = runner.probe(&HostCommand::new("ip").args(["-o", "addr", "show"]))?;
    let networks = parse_ip_addr_show(&addrs.stdout);
    let primary = parse_ip_route_get(&route.stdout).or_else(|| {
        networks
            .iter()
            .map(|(a, _)| *a)
            .find(|a| a.is_ipv4())
            .or_else(|| networks.first().map(|(a, _)| *a))
    });
    Ok(HostAddresses { primary, networks })
}

fn read_os_release(paths: &HostPaths) -> Result<OsRelease> {
    for p in [
        paths.os_release(),
        paths.host(Path::new("/usr/lib/os-release")),
    ] {
        match std::fs::read_to_string(&p) {
            Ok(text) => return Ok(parse_os_release(&text)),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::File {
                    action: "read",
                    path: p,
                    source,
                });
            }
        }
    }
    Ok(OsRelease::default())
}

fn probe_packages(
    runner: &dyn Runner,
    manager: PackageManager,
    wanted: &[&str],
) -> Result<BTreeMap<String, bool>> {
    let mut installed: BTreeMap<String, bool> =
        wanted.iter().map(|p| (p.to_string(), false)).collect();
    match manager {
        PackageManager::Apt if on_path("dpkg-query") => {
            let out = runner.probe(
                &HostCommand::new("dpkg-query").args(
                    [
                        "-W".to_string(),
                        "--showformat=${Package} ${db:Status-Abbrev}\\n".to_string(),
                    ]
                    .into_iter()
                    .chain(wanted.iter().map(|p| p.to_string())),
                ),
            )?;
            for (name, ok) in parse_dpkg_query(&out.stdout) {
                if let Some(v) = installed.get_mut(&name) {
                    *v = ok;
                }
            }
        }
        PackageManager::Yum | PackageManager::Dnf if on_path("rpm") => {
            let out = runner.probe(
                &HostCommand::new("rpm").args(
                    ["-q", "--qf", "%{NAME}\\n"]
                        .into_iter()
                        .map(String::from)
                        .chain(wanted.iter().map(|p| p.to_string())),
                ),
            )?;
            installed = parse_rpm_query(&out.stdout, wanted);
        }
        _ => {}
    }
    Ok(installed)
}

/// Reads `/etc/exports`; `None` when it does not exist.
pub(crate) fn read_exports(paths: &HostPaths) -> Result<Option<String>> {
    let exports = paths.exports();
    match std::fs::read(&exports) {
        Ok(bytes) => Ok(Some(String::from_utf8(bytes).map_err(|_| Error::Exports {
            path: exports.clone(),
            problem: "is not valid UTF-8".into(),
            fix: "convert it to UTF-8 (pgset keeps every line outside its block byte for byte and needs text it can read)".into(),
        })?)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::File {
            action: "read",
            path: exports,
            source,
        }),
    }
}

/// Reads the file-system facts: `/etc/exports`, the export directory and the directories
/// below it (the cluster's own, the members') (all under the root prefix of `paths`).
pub fn probe_files(paths: &HostPaths, spec: &ClusterSpec, facts: &mut HostFacts) -> Result<()> {
    facts.exports_file = read_exports(paths)?;
    let export = paths.host(&spec.nfs.export);
    facts.export_dir = path_state(&export)?;
    facts.export_contents = match facts.export_dir {
        PathState::Directory { .. } => export_contents(&export)?,
        _ => ExportContents::default(),
    };
    facts.export_real = real_path(paths, &spec.nfs.export).filter(|r| *r != spec.nfs.export);
    facts.member_dirs = dirs_below_export(spec)
        .into_iter()
        .map(|d| Ok((d.clone(), path_state(&paths.host(&d))?)))
        .collect::<Result<_>>()?;
    Ok(())
}

/// The state of each member's directory on the export (`<export>/<pod>` for every ordinal of
/// the spec), whatever the storage mode: in shared mode the agent makes them.
pub fn probe_member_states(
    paths: &HostPaths,
    spec: &ClusterSpec,
) -> Result<Vec<(PathBuf, PathState)>> {
    (0..spec.replicas)
        .map(|i| {
            let d = spec.member_export_dir(i);
            Ok((d.clone(), path_state(&paths.host(&d))?))
        })
        .collect()
}

/// How many entries a foreign export directory's refusal names.
const SHOWN_ENTRIES: usize = 5;

/// What an existing export directory holds: pgset's marker, and every other entry but
/// `lost+found`.
fn export_contents(dir: &Path) -> Result<ExportContents> {
    let read_error = |source| Error::File {
        action: "list",
        path: dir.to_path_buf(),
        source,
    };
    let mut foreign = Vec::new();
    let mut marker = None;
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let name = entry.map_err(read_error)?.file_name();
        let name = name.to_string_lossy().into_owned();
        if name == EXPORT_MARKER {
            let path = dir.join(EXPORT_MARKER);
            marker = Some(
                std::fs::read(&path)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .map_err(|source| Error::File {
                        action: "read",
                        path,
                        source,
                    })?,
            );
        } else if !IGNORED_ENTRIES.contains(&name.as_str()) {
            foreign.push(name);
        }
    }
    foreign.sort();
    let foreign_count = foreign.len();
    foreign.truncate(SHOWN_ENTRIES);
    Ok(ExportContents {
        foreign,
        foreign_count,
        marker,
    })
}

/// Where `path` resolves on the host (as a host path, without the root prefix): the longest
/// existing ancestor canonicalized, the rest appended. `None` when it cannot be told.
fn real_path(paths: &HostPaths, path: &Path) -> Option<PathBuf> {
    let root = std::fs::canonicalize(&paths.root).ok()?;
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(paths.host(&existing)) {
            let mut out = Path::new("/").join(real.strip_prefix(&root).ok()?);
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Some(out);
        }
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?.to_path_buf();
    }
}

fn path_state(p: &Path) -> Result<PathState> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => {
            let ft = m.file_type();
            Ok(if ft.is_dir() {
                PathState::Directory {
                    uid: m.uid(),
                    gid: m.gid(),
                    mode: m.mode() & 0o7777,
                }
            } else if ft.is_file() {
                PathState::NotDirectory {
                    what: "a regular file",
                }
            } else if ft.is_symlink() {
                PathState::NotDirectory {
                    what: "a symbolic link (export the directory it points to)",
                }
            } else {
                PathState::NotDirectory {
                    what: "a special file",
                }
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(PathState::Missing),
        Err(e) if e.kind() == ErrorKind::NotADirectory => Ok(PathState::NotDirectory {
            what: "below a regular file",
        }),
        Err(source) => Err(Error::File {
            action: "inspect",
            path: p.to_path_buf(),
            source,
        }),
    }
}
