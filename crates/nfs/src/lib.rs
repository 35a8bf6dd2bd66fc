//! NFS host provisioning: probe the host, plan the steps, run them; the NFS PersistentVolumes.
//!
//! The flow is probe → plan → apply. [`probe()`] only reads the host into [`HostFacts`];
//! [`plan()`] is pure and turns facts, spec and [`ExportOptions`] into [`Step`]s whose `Display`
//! says the change in words; [`apply()`] performs them through pgset-command's
//! [`Runner`](pgset_command::Runner) and direct file operations, then checks with `exportfs -v` that the export
//! is live. Planning again after applying yields no step.

mod apply;
mod clients;
mod doctor;
mod exports;
mod facts;
mod judge;
mod parse;
mod plan;
mod probe;
mod volumes;

use std::path::PathBuf;

pub use apply::{apply, make_member_dirs, verify_export};
pub use clients::{
    Cidr, DefaultClients, ExportClient, ExportOptions, clients_from_node_addresses,
    default_clients, kept_clients, parse_clients,
};
pub use doctor::{DOCS_DATA_DIRECTORY, DOCS_NFS, Diagnosis, Health, VolumesRead, diagnose};
pub use exports::{EXPORT_OPTIONS, ExportEntry, ExportsFile, render_block};
pub use facts::{
    FirewalldState, HostAddresses, HostFacts, HostPaths, OsFamily, OsRelease, PackageManager,
    PathState, Requirements, SelinuxMode, ServiceManager, ServiceState, UnitFileState,
};
pub use judge::{
    Blocker, EXPORT_MARKER, ExportContents, ExportRefusal, blockers, judge_export_contents,
    judge_export_path, marker_cluster, marker_contents, marker_identity,
};
pub use parse::{
    ActiveExport, parse_dpkg_query, parse_exportfs_verbose, parse_firewall_services,
    parse_getenforce, parse_getsebool, parse_ip_addr_show, parse_ip_route_get, parse_os_release,
    parse_rpm_query, parse_unit_file_state,
};
pub use plan::{Step, plan};
pub use probe::{probe, probe_addresses, probe_files, probe_member_states};
pub use volumes::{
    PROBE_SIZE, nfs_server_address, persistent_volumes, probe_volume, volume_server_address,
};

/// Errors of the NFS provisioner. Each says what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host command exited unsuccessfully (or could not start).
    #[error(transparent)]
    Command(#[from] pgset_command::Error),
    /// A file operation on the host failed.
    #[error("{action} {}: {source}", .path.display())]
    File {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The operating system is not one pgset knows how to provision.
    #[error(
        "unsupported operating system {0}: pgset provisions the RHEL family (CentOS 7, Rocky/Alma/RHEL 8 and 9) and the Debian family (Debian, Ubuntu); set up the NFS server by hand and pass --nfs-server"
    )]
    UnsupportedOs(String),
    /// The export path exists but is not a directory.
    #[error("the export {} exists and is {what}: remove it or choose another path with --nfs-export", .path.display())]
    ExportNotDirectory {
        /// The export path.
        path: PathBuf,
        /// What it is instead ("a regular file", "a symbolic link", ...).
        what: &'static str,
    },
    /// The export path is not pgset's to take.
    #[error("refusing the export {}: {problem}; {fix}", .path.display())]
    ExportRefused {
        /// The export path.
        path: PathBuf,
        /// Why.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// This host cannot run one or more planned steps.
    #[error(
        "this host cannot run the plan, so nothing was changed:{}", blocker_list(.blockers)
    )]
    Blocked {
        /// Each reason, with its step and fix.
        blockers: Vec<Blocker>,
    },
    /// A path below the export (the cluster's or a member's directory) exists but is not a
    /// directory.
    #[error("{} exists and is {what}: remove it so pgset can create the cluster's data directory there", .path.display())]
    MemberDirNotDirectory {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// `--clients` (or a detected address) did not parse.
    #[error(
        "invalid --clients entry {value:?}: {problem}; give a comma-separated list of IP addresses or CIDR networks (e.g. 10.0.0.0/24,192.168.56.11), or `*` to allow every host"
    )]
    InvalidClients {
        /// The offending entry.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// /etc/exports cannot be edited safely.
    #[error("{}: {problem}; {fix}", .path.display())]
    Exports {
        /// The exports file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// Applying needs root.
    #[error(
        "changing the host needs root ({steps} step(s) planned): run as root, or see the plan with --dry-run"
    )]
    NotRoot {
        /// Number of planned steps.
        steps: usize,
    },
    /// A service unit is masked and cannot be started.
    #[error("the unit {unit} is masked: run `systemctl unmask {unit}`, then rerun")]
    UnitMasked {
        /// The unit.
        unit: String,
    },
    /// No package manager for the OS family was found.
    #[error(
        "no {expected} found on this {os} host: install the NFS server packages by hand, then rerun"
    )]
    NoPackageManager {
        /// The package manager looked for.
        expected: &'static str,
        /// The OS.
        os: String,
    },
    /// After applying, `exportfs -v` does not show the export as planned.
    #[error(
        "after `exportfs -ra`, `exportfs -v` does not show {} to {missing} with rw,sync,root_squash,no_subtree_check; check /etc/exports and `journalctl -u nfs-server`", .export.display()
    )]
    ExportNotLive {
        /// The export.
        export: PathBuf,
        /// The clients that are missing or have other options.
        missing: String,
    },
    /// No client list could be derived.
    #[error(
        "cannot tell which hosts may mount the export: no cluster nodes and no primary network found; pass --clients CIDR[,CIDR...]"
    )]
    NoClients,
}

fn blocker_list(blockers: &[Blocker]) -> String {
    blockers.iter().map(|b| format!("\n  - {b}")).collect()
}

/// Result with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
