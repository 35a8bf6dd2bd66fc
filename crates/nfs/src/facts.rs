//! What probing learns about the host: plain data, built by `probe` and read by `plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::clients::Cidr;
use crate::judge::ExportContents;
use crate::parse::ActiveExport;
use crate::{Error, Result};

/// Where the host's files are. Everything lives under `root` (`/` on a real host; a temporary
/// directory in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// The root prefix.
    pub root: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            root: PathBuf::from("/"),
        }
    }
}

impl HostPaths {
    /// Paths under a root prefix.
    pub fn under(root: impl Into<PathBuf>) -> HostPaths {
        HostPaths { root: root.into() }
    }

    /// The host path `p` (absolute) under the root prefix.
    pub fn host(&self, p: &Path) -> PathBuf {
        match p.strip_prefix("/") {
            Ok(rel) => self.root.join(rel),
            Err(_) => self.root.join(p),
        }
    }

    /// `/etc/os-release`.
    pub fn os_release(&self) -> PathBuf {
        self.host(Path::new("/etc/os-release"))
    }

    /// `/etc/exports`.
    pub fn exports(&self) -> PathBuf {
        self.host(Path::new("/etc/exports"))
    }

    /// The copy of `/etc/exports` kept before pgset rewrites it.
    pub fn exports_backup(&self) -> PathBuf {
        self.host(Path::new("/etc/exports.pgset.bak"))
    }

    /// The temporary file renamed over `/etc/exports`.
    pub fn exports_temp(&self) -> PathBuf {
        self.host(Path::new("/etc/.exports.pgset.tmp"))
    }
}

/// The fields of `/etc/os-release` pgset reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OsRelease {
    /// `ID`, e.g. `centos`, `rocky`, `debian`, `ubuntu`.
    pub id: String,
    /// `ID_LIKE`, split on spaces.
    pub id_like: Vec<String>,
    /// `VERSION_ID`, e.g. `7`, `9.4`, `12`, `24.04`.
    pub version_id: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
}

impl OsRelease {
    /// The major version (`9.4` → 9).
    pub fn major_version(&self) -> Option<u32> {
        self.version_id.split('.').next()?.parse().ok()
    }

    /// The OS family, or an error naming the OS when pgset does not support it.
    pub fn family(&self) -> Result<OsFamily> {
        let ids: Vec<&str> = std::iter::once(self.id.as_str())
            .chain(self.id_like.iter().map(String::as_str))
            .collect();
        let named = if self.pretty_name.is_empty() {
            format!("{:?} {:?}", self.id, self.version_id)
        } else {
            format!("{:?}", self.pretty_name)
        };
        if ids
            .iter()
            .any(|i| matches!(*i, "rhel" | "centos" | "fedora" | "rocky" | "almalinux"))
        {
            match self.major_version() {
                Some(7) => Ok(OsFamily::El7),
                Some(v) if v >= 8 && self.id != "fedora" => Ok(OsFamily::El8Plus),
                _ => Err(Error::UnsupportedOs(named)),
            }
        } else if ids.iter().any(|i| matches!(*i, "debian" | "ubuntu")) {
            Ok(OsFamily::Debian)
        } else {
            Err(Error::UnsupportedOs(named))
        }
    }
}

/// The families pgset provisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OsFamily {
    /// CentOS / RHEL 7 (yum).
    El7,
    /// RHEL, Rocky, Alma 8 and later (dnf).
    El8Plus,
    /// Debian and Ubuntu (apt).
    Debian,
}

/// What a family needs: the package manager, packages, units, and whether firewalld and
/// SELinux are part of its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// The package manager used to install.
    pub package_manager: PackageManager,
    /// Packages that must be installed.
    pub packages: &'static [&'static str],
    /// Units that must be enabled (unless static) and running, in start order.
    pub units: &'static [&'static str],
}

impl OsFamily {
    /// What this family needs installed and running.
    pub fn requirements(self) -> Requirements {
        match self {
            OsFamily::El7 => Requirements {
                package_manager: PackageManager::Yum,
                packages: &["nfs-utils", "libnfsidmap", "rpcbind"],
                units: &["rpcbind", "nfs-server", "rpc-statd", "nfs-idmapd"],
            },
            OsFamily::El8Plus => Requirements {
                package_manager: PackageManager::Dnf,
                packages: &["nfs-utils", "rpcbind"],
                units: &["rpcbind", "nfs-server"],
            },
            OsFamily::Debian => Requirements {
                package_manager: PackageManager::Apt,
                packages: &["nfs-kernel-server", "nfs-common"],
                units: &["nfs-server"],
            },
        }
    }
}

/// Package managers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackageManager {
    /// `yum` (EL7).
    Yum,
    /// `dnf` (EL8+).
    Dnf,
    /// `apt-get` (Debian, Ubuntu).
    Apt,
}

impl PackageManager {
    /// The program.
    pub fn program(self) -> &'static str {
        match self {
            PackageManager::Yum => "yum",
            PackageManager::Dnf => "dnf",
            PackageManager::Apt => "apt-get",
        }
    }
}

/// `systemctl is-enabled` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitFileState {
    /// Enabled (also `enabled-runtime`, `alias`, `indirect`, `generated`, `linked`).
    Enabled,
    /// `static`: cannot be enabled, started as a dependency or by hand.
    Static,
    /// `disabled`.
    Disabled,
    /// `masked` or `masked-runtime`.
    Masked,
    /// The unit file does not exist (yet).
    NotFound,
    /// Something else, kept verbatim.
    Other(String),
}

/// A unit's enablement and activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// `systemctl is-enabled`.
    pub enabled: UnitFileState,
    /// `systemctl is-active` said `active`.
    pub active: bool,
}

/// Whether a service manager answers `systemctl start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceManager {
    /// systemd is PID 1 (`/run/systemd/system` exists, as `sd_booted()` checks).
    Systemd,
    /// `systemctl` is installed but the host was not booted with systemd (a container, WSL,
    /// a CI runner): it cannot start units.
    NotBooted,
    /// No `systemctl`.
    Missing,
}

/// SELinux mode (`getenforce`); `Absent` when the tools are not installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelinuxMode {
    /// No SELinux tools on the host.
    Absent,
    /// `Disabled`.
    Disabled,
    /// `Permissive`.
    Permissive,
    /// `Enforcing`.
    Enforcing,
}

impl SelinuxMode {
    /// SELinux is on (enforcing or permissive): booleans and labels matter.
    pub fn enabled(self) -> bool {
        matches!(self, SelinuxMode::Permissive | SelinuxMode::Enforcing)
    }
}

/// firewalld.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirewalldState {
    /// `firewall-cmd --state` said `running`.
    pub running: bool,
    /// Services allowed now (`--list-services`).
    pub runtime_services: Vec<String>,
    /// Services allowed permanently (`--permanent --list-services`).
    pub permanent_services: Vec<String>,
}

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Nothing.
    Missing,
    /// A directory with its owner and permission bits.
    Directory {
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
        /// Permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// Something else: a file, a symbolic link, a device...
    NotDirectory {
        /// What it is, in words.
        what: &'static str,
    },
}

/// The host's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostAddresses {
    /// Source address of the default route (`ip -o route get`).
    pub primary: Option<IpAddr>,
    /// Every global address with its network (`ip -o addr show`).
    pub networks: Vec<(IpAddr, Cidr)>,
}

impl HostAddresses {
    /// The network of the primary address.
    pub fn primary_network(&self) -> Option<Cidr> {
        let p = self.primary?;
        self.networks
            .iter()
            .find(|(a, _)| *a == p)
            .map(|(_, net)| *net)
    }
}

/// Everything the plan needs to know about the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// `/etc/os-release`.
    pub os: OsRelease,
    /// Whether the process runs as root.
    pub is_root: bool,
    /// Whether `systemctl` can start units.
    pub service_manager: ServiceManager,
    /// Programs a step may run that are on PATH now.
    pub programs: BTreeSet<String>,
    /// Package managers found on PATH.
    pub package_managers: Vec<PackageManager>,
    /// Installed state of each required package.
    pub packages: BTreeMap<String, bool>,
    /// State of each required unit.
    pub services: BTreeMap<String, ServiceState>,
    /// SELinux mode.
    pub selinux: SelinuxMode,
    /// SELinux booleans pgset sets, with their current value; `None` when the loaded policy
    /// does not define the boolean.
    pub selinux_booleans: BTreeMap<String, Option<bool>>,
    /// `restorecon` is on PATH.
    pub has_restorecon: bool,
    /// firewalld; `None` when `firewall-cmd` is not installed.
    pub firewalld: Option<FirewalldState>,
    /// The current `/etc/exports`; `None` when it does not exist.
    pub exports_file: Option<String>,
    /// What `exportfs -v` shows now (empty when exportfs is missing).
    pub active_exports: Vec<ActiveExport>,
    /// The export directory.
    pub export_dir: PathState,
    /// Where the export path resolves to when a directory on the way is a symbolic link
    /// (`None` when it resolves to itself).
    pub export_real: Option<PathBuf>,
    /// What the export directory holds (empty when it is missing).
    pub export_contents: ExportContents,
    /// Directories below the export pgset manages (the cluster's own directory for every
    /// cluster but the default, member directories in templates mode), by path.
    pub member_dirs: BTreeMap<PathBuf, PathState>,
    /// The host's addresses.
    pub addresses: HostAddresses,
}
