//! The NFS host plan over tables of host facts (EL7, EL9, Debian; SELinux and firewalld on and
//! off; already configured), apply on a real directory tree under a root prefix (planning again
//! yields nothing), and bad input refused with nothing changed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pgset_command::{HostCommand, Output, Runner};
use pgset_nfs::{
    ExportContents, ExportOptions, FirewalldState, Health, HostAddresses, HostFacts, HostPaths,
    PackageManager, PathState, SelinuxMode, ServiceManager, ServiceState, Step, UnitFileState,
    apply, blockers, diagnose, marker_contents, parse_clients, parse_exportfs_verbose,
    parse_os_release, plan, probe_files, render_block,
};
use pgset_spec::{ClusterSpec, Overrides, StorageMode, ValidSpec};
use pgset_tests::{fixtures, missing_tool};

const CLIENTS: &str = "10.0.2.0/24,127.0.0.1/32";

fn fixture(name: &str) -> String {
    let p = fixtures().join("nfs").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn options() -> ExportOptions {
    ExportOptions {
        clients: parse_clients(CLIENTS).unwrap(),
    }
}

fn running(enabled: UnitFileState) -> ServiceState {
    ServiceState {
        enabled,
        active: true,
    }
}

fn absent_unit() -> ServiceState {
    ServiceState {
        enabled: UnitFileState::NotFound,
        active: false,
    }
}

/// A host of `os` where nothing has been done yet.
fn fresh(os_fixture: &str) -> HostFacts {
    let os = parse_os_release(&fixture(os_fixture));
    let req = os.family().unwrap().requirements();
    HostFacts {
        os,
        is_root: true,
        service_manager: ServiceManager::Systemd,
        programs: [
            req.package_manager.program(),
            "systemctl",
            "setsebool",
            "restorecon",
            "firewall-cmd",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        package_managers: vec![req.package_manager],
        packages: req
            .packages
            .iter()
            .map(|p| (p.to_string(), false))
            .collect(),
        services: req
            .units
            .iter()
            .map(|u| (u.to_string(), absent_unit()))
            .collect(),
        selinux: SelinuxMode::Absent,
        selinux_booleans: BTreeMap::new(),
        has_restorecon: false,
        firewalld: None,
        exports_file: None,
        active_exports: Vec::new(),
        export_dir: PathState::Missing,
        export_real: None,
        export_contents: ExportContents::default(),
        member_dirs: BTreeMap::new(),
        addresses: HostAddresses::default(),
    }
}

/// A host of `os` that `cargo xtask nfs` has already configured for the default spec.
fn configured(os_fixture: &str) -> HostFacts {
    let mut f = fresh(os_fixture);
    for v in f.packages.values_mut() {
        *v = true;
    }
    f.programs.insert("exportfs".into());
    for (unit, state) in f.services.iter_mut() {
        *state = running(if unit == "rpc-statd" || unit == "nfs-idmapd" {
            UnitFileState::Static
        } else {
            UnitFileState::Enabled
        });
    }
    f.exports_file = Some(render_block(&ClusterSpec::default(), &options().clients));
    // Real `exportfs -v` output for exactly this export line.
    f.active_exports = parse_exportfs_verbose(&fixture("exportfs-v.debian-12"));
    f.export_dir = PathState::Directory {
        uid: 999,
        gid: 999,
        mode: 0o700,
    };
    f.export_contents.marker = Some(marker_contents("default", "pgset"));
    f
}

fn selinux(f: &mut HostFacts, mode: SelinuxMode, booleans_on: bool) {
    f.selinux = mode;
    f.has_restorecon = true;
    f.selinux_booleans = ["virt_use_nfs", "nfs_export_all_rw"]
        .into_iter()
        .map(|b| (b.to_string(), Some(booleans_on)))
        .collect();
}

fn firewalld(f: &mut HostFacts, running: bool, services: &[&str]) {
    let s: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    f.firewalld = Some(FirewalldState {
        running,
        runtime_services: s.clone(),
        permanent_services: s,
    });
}

/// The spec validated, as the CLI hands it to the plan.
fn valid(spec: &ClusterSpec) -> ValidSpec {
    spec.clone().validated().expect("test spec is valid")
}

fn described(f: &HostFacts, spec: &ClusterSpec) -> Vec<String> {
    plan(f, &valid(spec), &options())
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

const EXPORT_LINE: &str = "/nfsfileshare 10.0.2.0/24(rw,sync,no_subtree_check,root_squash) 127.0.0.1/32(rw,sync,no_subtree_check,root_squash)";

const MARK: &str = "mark /nfsfileshare as this cluster's export (/nfsfileshare/.pgset-export)";

fn write_step() -> String {
    format!("write pgset's block in /etc/exports (backup kept): {EXPORT_LINE}")
}

#[test]
fn centos_7_from_nothing_with_selinux_enforcing_and_firewalld() {
    let mut f = fresh("os-release.centos-7");
    selinux(&mut f, SelinuxMode::Enforcing, false);
    firewalld(&mut f, true, &["ssh", "dhcpv6-client"]);
    assert_eq!(
        described(&f, &ClusterSpec::default()),
        [
            "install nfs-utils, libnfsidmap, rpcbind with yum".to_string(),
            "turn on the SELinux boolean(s) virt_use_nfs, nfs_export_all_rw (persistent)".into(),
            "create /nfsfileshare owned by 999:999 with mode 0700".into(),
            MARK.into(),
            write_step(),
            "enable and start rpcbind".into(),
            "enable and start nfs-server".into(),
            "enable and start rpc-statd".into(),
            "enable and start nfs-idmapd".into(),
            "allow the firewalld service(s) nfs, rpc-bind, mountd (permanent and runtime)".into(),
            "re-export /etc/exports (exportfs -ra)".into(),
        ]
    );
    let steps = plan(&f, &valid(&ClusterSpec::default()), &options()).unwrap();
    let commands: Vec<String> = steps
        .iter()
        .flat_map(Step::commands)
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        commands,
        [
            "yum install -y nfs-utils libnfsidmap rpcbind",
            "setsebool -P 'virt_use_nfs=1' 'nfs_export_all_rw=1'",
            "restorecon /etc/exports",
            "systemctl enable --now rpcbind",
            "systemctl enable --now nfs-server",
            "systemctl enable --now rpc-statd",
            "systemctl enable --now nfs-idmapd",
            "firewall-cmd --permanent '--add-service=nfs' '--add-service=rpc-bind' '--add-service=mountd'",
            "firewall-cmd --reload",
            "exportfs -ra",
        ]
    );
}

#[test]
fn centos_7_static_units_are_only_started() {
    let mut f = configured("os-release.centos-7");
    f.services.get_mut("rpc-statd").unwrap().active = false;
    assert_eq!(described(&f, &ClusterSpec::default()), ["start rpc-statd"]);
}

#[test]
fn rocky_9_with_selinux_and_firewalld_off() {
    let mut f = fresh("os-release.rocky-9");
    selinux(&mut f, SelinuxMode::Disabled, false);
    firewalld(&mut f, false, &[]);
    assert_eq!(
        described(&f, &ClusterSpec::default()),
        [
            "install nfs-utils, rpcbind with dnf".to_string(),
            "create /nfsfileshare owned by 999:999 with mode 0700".into(),
            MARK.into(),
            write_step(),
            "enable and start rpcbind".into(),
            "enable and start nfs-server".into(),
            "re-export /etc/exports (exportfs -ra)".into(),
        ]
    );
}

#[test]
fn debian_and_ubuntu_from_nothing() {
    for os in ["os-release.debian-12", "os-release.ubuntu-24.04"] {
        let f = fresh(os);
        assert_eq!(
            described(&f, &ClusterSpec::default()),
            [
                "install nfs-kernel-server, nfs-common with apt-get".to_string(),
                "create /nfsfileshare owned by 999:999 with mode 0700".into(),
                MARK.into(),
                write_step(),
                "enable and start nfs-server".into(),
                "re-export /etc/exports (exportfs -ra)".into(),
            ],
            "{os}"
        );
        let steps = plan(&f, &valid(&ClusterSpec::default()), &options()).unwrap();
        assert_eq!(
            steps[0]
                .commands()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "DEBIAN_FRONTEND=… apt-get update -q",
                "DEBIAN_FRONTEND=… apt-get install -y -q --no-install-recommends nfs-kernel-server nfs-common",
            ]
        );
    }
}

#[test]
fn selinux_step_follows_selinux_not_the_os_family() {
    // A Debian host with SELinux permissive (the kernel test's guest) gets the booleans.
    let mut f = configured("os-release.debian-12");
    selinux(&mut f, SelinuxMode::Permissive, false);
    assert_eq!(
        described(&f, &ClusterSpec::default()),
        ["turn on the SELinux boolean(s) virt_use_nfs, nfs_export_all_rw (persistent)"]
    );
    // Booleans already on, or not defined by the loaded policy: nothing to set.
    selinux(&mut f, SelinuxMode::Enforcing, true);
    f.selinux_booleans.insert("nfs_export_all_rw".into(), None);
    assert!(described(&f, &ClusterSpec::default()).is_empty());
}

#[test]
fn firewalld_services_missing_only_permanently_are_added() {
    let mut f = configured("os-release.rocky-9");
    firewalld(&mut f, true, &["ssh", "nfs", "rpc-bind", "mountd"]);
    assert!(described(&f, &ClusterSpec::default()).is_empty());
    if let Some(fw) = f.firewalld.as_mut() {
        fw.permanent_services.retain(|s| s != "mountd");
    }
    assert_eq!(
        described(&f, &ClusterSpec::default()),
        ["allow the firewalld service(s) mountd (permanent and runtime)"]
    );
}

#[test]
fn configured_hosts_plan_nothing() {
    for os in [
        "os-release.centos-7",
        "os-release.rocky-9",
        "os-release.debian-12",
        "os-release.ubuntu-24.04",
    ] {
        let mut f = configured(os);
        assert!(described(&f, &ClusterSpec::default()).is_empty(), "{os}");
        selinux(&mut f, SelinuxMode::Enforcing, true);
        firewalld(&mut f, true, &["nfs", "rpc-bind", "mountd"]);
        assert!(described(&f, &ClusterSpec::default()).is_empty(), "{os}");
        // 0750 is as good as 0700.
        f.export_dir = PathState::Directory {
            uid: 999,
            gid: 999,
            mode: 0o750,
        };
        assert!(described(&f, &ClusterSpec::default()).is_empty(), "{os}");
    }
}

#[test]
fn drift_is_repaired_step_by_step() {
    let spec = ClusterSpec::default();
    let mut f = configured("os-release.debian-12");
    f.export_dir = PathState::Directory {
        uid: 0,
        gid: 0,
        mode: 0o777,
    };
    // Others keep only what another cluster's directory below may need: traversal.
    assert_eq!(
        described(&f, &spec),
        ["set /nfsfileshare to owner 999:999 mode 0711 (now 0:0 0777)"]
    );
    f.export_dir = PathState::Directory {
        uid: 0,
        gid: 0,
        mode: 0o770,
    };
    assert_eq!(
        described(&f, &spec),
        ["set /nfsfileshare to owner 999:999 mode 0700 (now 0:0 0770)"]
    );

    let mut f = configured("os-release.debian-12");
    f.active_exports.clear();
    assert_eq!(
        described(&f, &spec),
        ["re-export /etc/exports (exportfs -ra)"]
    );

    let mut f = configured("os-release.debian-12");
    f.services.get_mut("nfs-server").unwrap().enabled = UnitFileState::Disabled;
    assert_eq!(described(&f, &spec), ["enable nfs-server"]);

    // Another client list rewrites the block and re-exports.
    let f = configured("os-release.debian-12");
    let wider = ExportOptions {
        clients: parse_clients("192.168.56.0/24").unwrap(),
    };
    let steps: Vec<String> = plan(&f, &valid(&spec), &wider)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        steps[0].ends_with("/nfsfileshare 192.168.56.0/24(rw,sync,no_subtree_check,root_squash)")
    );
    assert_eq!(steps[1], "re-export /etc/exports (exportfs -ra)");
}

#[test]
fn templates_mode_creates_a_directory_per_member() {
    let mut spec = ClusterSpec::default();
    spec.storage.mode = StorageMode::Templates;
    spec.replicas = 3;
    let f = configured("os-release.debian-12");
    assert_eq!(
        described(&f, &spec),
        [
            "set /nfsfileshare to owner 999:999 mode 0711 (now 999:999 0700)",
            "create /nfsfileshare/pgset-0 owned by 999:999 with mode 0700",
            "create /nfsfileshare/pgset-1 owned by 999:999 with mode 0700",
            "create /nfsfileshare/pgset-2 owned by 999:999 with mode 0700",
        ]
    );
    // With a StorageClass named, pgset makes no member directories.
    spec.storage.storage_class = Some("fast".into());
    assert!(described(&f, &spec).is_empty());
}

#[test]
fn problems_no_step_can_fix_are_errors() {
    let spec = ClusterSpec::default();
    let err = |f: &HostFacts, o: &ExportOptions| plan(f, &valid(&spec), o).unwrap_err().to_string();

    let mut f = configured("os-release.debian-12");
    f.os = parse_os_release("ID=arch\nPRETTY_NAME=\"Arch Linux\"\n");
    assert!(err(&f, &options()).contains("unsupported operating system \"Arch Linux\""));

    let mut f = configured("os-release.debian-12");
    f.export_dir = PathState::NotDirectory {
        what: "a regular file",
    };
    let e = err(&f, &options());
    assert!(
        e.contains("/nfsfileshare exists and is a regular file") && e.contains("--nfs-export"),
        "{e}"
    );

    let mut f = configured("os-release.rocky-9");
    f.services.get_mut("nfs-server").unwrap().enabled = UnitFileState::Masked;
    assert!(err(&f, &options()).contains("systemctl unmask nfs-server"));

    let mut f = fresh("os-release.rocky-9");
    f.package_managers.clear();
    assert!(err(&f, &options()).contains("no dnf found"));

    let f = configured("os-release.debian-12");
    let none = ExportOptions { clients: vec![] };
    assert!(err(&f, &none).contains("--clients"));

    let mut f = configured("os-release.debian-12");
    f.exports_file = Some(format!(
        "/srv/x 10.0.0.1(ro)\n/nfsfileshare *(rw,no_root_squash)\n{}",
        f.exports_file.clone().unwrap()
    ));
    let e = err(&f, &options());
    assert!(
        e.contains("line 2 already exports /nfsfileshare outside pgset's block"),
        "{e}"
    );
}

#[test]
fn a_host_that_cannot_run_a_step_is_blocked_once_per_cause() {
    let spec = ClusterSpec::default();
    let blocked = |f: &HostFacts| -> Vec<String> {
        let steps = plan(f, &valid(&spec), &options()).unwrap();
        blockers(f, &steps)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    // Systemd present and booted: a fresh host can run everything (exportfs comes with the
    // package the plan installs).
    let f = fresh("os-release.debian-12");
    assert!(!f.programs.contains("exportfs"));
    assert!(blocked(&f).is_empty(), "{:?}", blocked(&f));

    // systemctl installed, systemd not PID 1: one blocker for the service steps, whatever
    // their number (EL7 starts four units).
    let mut f = fresh("os-release.centos-7");
    f.service_manager = ServiceManager::NotBooted;
    let b = blocked(&f);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(
        b[0].starts_with("enable and start rpcbind: `systemctl` cannot start services: this host was not booted with systemd as PID 1"),
        "{b:?}"
    );
    assert!(b[0].contains("--nfs-server ADDR"), "{b:?}");
    f.service_manager = ServiceManager::Missing;
    assert!(blocked(&f)[0].contains("`systemctl` is not installed"));

    // A configured host whose units run needs no service manager at all.
    let mut f = configured("os-release.debian-12");
    f.service_manager = ServiceManager::NotBooted;
    f.active_exports.clear();
    assert_eq!(
        described(&f, &spec),
        ["re-export /etc/exports (exportfs -ra)"]
    );
    assert!(blocked(&f).is_empty());
    // ... but exportfs, when no install step brings it.
    f.programs.remove("exportfs");
    let b = blocked(&f);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(
        b[0].contains("`exportfs` is not installed") && b[0].contains("reinstall"),
        "{b:?}"
    );

    // SELinux on without its tools.
    let mut f = configured("os-release.rocky-9");
    selinux(&mut f, SelinuxMode::Enforcing, false);
    f.programs.remove("setsebool");
    let b = blocked(&f);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].contains("`setsebool` is not installed") && b[0].contains("policycoreutils"));

    // The package tool itself is judged by the plan (no step can install it).
    let mut f = fresh("os-release.rocky-9");
    f.programs.remove("dnf");
    f.package_managers.clear();
    assert!(
        plan(&f, &valid(&spec), &options())
            .unwrap_err()
            .to_string()
            .contains("no dnf found")
    );
}

/// The doctor's verdicts, by name, with the failures' messages.
fn diagnosed(
    f: &HostFacts,
    members: &[(PathBuf, PathState)],
    volumes: &pgset_nfs::VolumesRead,
) -> Vec<(String, String)> {
    diagnose(&ClusterSpec::default(), f, members, volumes)
        .into_iter()
        .map(|d| {
            (
                d.name.to_string(),
                match d.health {
                    Health::Fail => format!("fail: {} / {}", d.message, d.fix.unwrap_or_default()),
                    h => h.to_string(),
                },
            )
        })
        .collect()
}

#[test]
fn the_doctor_passes_a_configured_host_and_names_each_problem() {
    let mut f = configured("os-release.rocky-9");
    selinux(&mut f, SelinuxMode::Enforcing, true);
    firewalld(&mut f, true, &["ssh", "nfs", "rpc-bind", "mountd"]);
    let dir = |uid, mode| PathState::Directory {
        uid,
        gid: 999,
        mode,
    };
    let members = vec![(PathBuf::from("/nfsfileshare/pgset-0"), dir(999, 0o700))];
    let volumes: pgset_nfs::VolumesRead =
        Some(Ok(persistent_volumes_named(&["pv1", "pv2", "pv3"])));
    let healthy = diagnosed(&f, &members, &volumes);
    assert!(healthy.iter().all(|(_, v)| v == "pass"), "{healthy:#?}");
    assert_eq!(healthy.len(), 6);
    let failed = |d: &[(String, String)]| -> Vec<String> {
        d.iter()
            .filter(|(_, v)| v.starts_with("fail"))
            .map(|(n, v)| format!("{n} {v}"))
            .collect()
    };

    // Async export (real `exportfs -v` options with async in place of sync).
    let mut broken = f.clone();
    for a in &mut broken.active_exports {
        for o in &mut a.options {
            if o == "sync" {
                *o = "async".into();
            }
        }
    }
    let d = failed(&diagnosed(&broken, &members, &volumes));
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with("export-options fail: 10.0.2.0/24 is exported async"),
        "{d:?}"
    );

    // Wrong owner, world-writable directories.
    let mut broken = f.clone();
    broken.export_dir = dir(0, 0o700);
    let world = vec![(PathBuf::from("/nfsfileshare/pgset-0"), dir(999, 0o777))];
    let d = failed(&diagnosed(&broken, &world, &volumes));
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[0].contains("owned by uid 0, not the postgres uid 999"),
        "{d:?}"
    );
    assert!(
        d[1].contains("/nfsfileshare/pgset-0: world-writable (mode 0777)"),
        "{d:?}"
    );

    // The SELinux boolean off, firewalld without mountd.
    let mut broken = f.clone();
    selinux(&mut broken, SelinuxMode::Enforcing, false);
    firewalld(&mut broken, true, &["nfs", "rpc-bind"]);
    let d = failed(&diagnosed(&broken, &members, &volumes));
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[0].contains("setsebool -P virt_use_nfs 1"), "{d:?}");
    assert!(d[1].contains("--add-service=mountd"), "{d:?}");

    // Volumes without hard or nfsvers, a missing one; no cluster: skipped.
    let mut soft = persistent_volumes_named(&["pv1", "pv2"]);
    soft[0]
        .1
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .mount_options = Some(vec!["soft".into()]);
    soft.push(("pv3".into(), None));
    let d = failed(&diagnosed(&f, &members, &Some(Ok(soft))));
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].contains("pv1 does not mount `hard`; pv1 names no NFS version (nfsvers=); PersistentVolume pv3 does not exist"),
        "{d:?}"
    );
    let none = diagnosed(&f, &members, &None);
    assert!(
        none.iter()
            .any(|(n, v)| n == "volume-mount-options" && v == "skipped")
    );
}

/// pgset's volumes for the default spec, as read back from the API.
fn persistent_volumes_named(
    names: &[&str],
) -> Vec<(String, Option<k8s_openapi::api::core::v1::PersistentVolume>)> {
    let all = pgset_nfs::persistent_volumes(&valid(&ClusterSpec::default()), "10.0.2.15");
    names
        .iter()
        .map(|n| {
            let pv = all
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(*n))
                .cloned();
            (n.to_string(), pv)
        })
        .collect()
}

/// Records commands instead of running them (the file work is real).
#[derive(Default)]
struct RecordingRunner {
    commands: RefCell<Vec<String>>,
}

impl Runner for RecordingRunner {
    fn probe(&self, cmd: &HostCommand) -> pgset_command::Result<Output> {
        self.change(cmd)
    }

    fn change(&self, cmd: &HostCommand) -> pgset_command::Result<Output> {
        self.commands.borrow_mut().push(cmd.to_string());
        Ok(Output::default())
    }
}

/// Runs nothing, like [`RecordingRunner`], but `apt-get install` writes the package's own
/// `/etc/exports` into the root, as nfs-kernel-server's postinst does on a host without one.
struct InstallingRunner {
    root: PathBuf,
    commands: RefCell<Vec<String>>,
}

impl Runner for InstallingRunner {
    fn probe(&self, cmd: &HostCommand) -> pgset_command::Result<Output> {
        self.change(cmd)
    }

    fn change(&self, cmd: &HostCommand) -> pgset_command::Result<Output> {
        self.commands.borrow_mut().push(cmd.to_string());
        if cmd.program() == "apt-get"
            && cmd.get_args().first().and_then(|a| a.to_str()) == Some("install")
        {
            std::fs::write(
                self.root.join("etc/exports"),
                fixture("etc-exports.nfs-kernel-server-2.6.2"),
            )
            .unwrap();
        }
        Ok(Output::default())
    }
}

#[test]
fn lines_the_package_writes_during_the_install_are_kept() {
    if !nix::unistd::geteuid().is_root() {
        missing_tool(
            "nfs_host::lines_the_package_writes_during_the_install_are_kept",
            "needs root to give the export directory to uid 999",
        );
        return;
    }
    let spec = ClusterSpec::default();
    let (dir, paths) = host_root(None);
    let mut facts = fresh("os-release.debian-12");
    probe_files(&paths, &spec, &mut facts).unwrap();
    assert_eq!(facts.exports_file, None);
    let steps = plan(&facts, &valid(&spec), &options()).unwrap();
    assert!(
        steps.iter().any(|s| s.to_string() == write_step()),
        "{steps:?}"
    );
    let runner = InstallingRunner {
        root: dir.path().to_path_buf(),
        commands: RefCell::default(),
    };
    let mut said = Vec::new();
    apply(&steps, &facts, &paths, &runner, &mut |l| {
        said.push(l.to_string())
    })
    .unwrap();
    // Each step is said before it runs, and the file written with where its old version went.
    for step in &steps {
        assert!(said.contains(&format!("==> {step}")), "{said:?}");
    }
    assert!(
        said.iter()
            .any(|l| l.starts_with("    wrote ") && l.contains("etc/exports.pgset.bak")),
        "{said:?}"
    );
    let package_file = fixture("etc-exports.nfs-kernel-server-2.6.2");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("etc/exports")).unwrap(),
        format!("{package_file}{}", render_block(&spec, &options().clients)),
        "the package's lines are gone"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("etc/exports.pgset.bak")).unwrap(),
        package_file
    );
    // Planned again on what is there now: nothing left to write.
    probe_files(&paths, &spec, &mut facts).unwrap();
    let again = plan(&facts, &valid(&spec), &options()).unwrap();
    assert!(
        !again.iter().any(|s| s.to_string().starts_with("write")),
        "{again:?}"
    );
}

/// What the tree comparison looks at for one path.
#[derive(Debug, PartialEq)]
struct TreeEntry {
    uid: u32,
    gid: u32,
    mode: u32,
    content: Option<Vec<u8>>,
}

/// Every path under `root` with its owner, type and mode, and (for files) contents.
fn tree(root: &Path) -> BTreeMap<PathBuf, TreeEntry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = m.is_file().then(|| std::fs::read(&p).unwrap());
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                TreeEntry {
                    uid: m.uid(),
                    gid: m.gid(),
                    mode: m.mode(),
                    content,
                },
            );
        }
    }
    out
}

const PRE_EXISTING: &str =
    "# kept\n/srv/homes host1(rw,sync,no_subtree_check) \\\n\thost2(ro)\n# no newline at the end";

fn host_root(exports: Option<&str>) -> (tempfile::TempDir, HostPaths) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    if let Some(text) = exports {
        std::fs::write(dir.path().join("etc/exports"), text).unwrap();
    }
    let paths = HostPaths::under(dir.path());
    (dir, paths)
}

#[test]
fn applying_then_planning_again_yields_nothing() {
    if !nix::unistd::geteuid().is_root() {
        missing_tool(
            "nfs_host::applying_then_planning_again_yields_nothing",
            "needs root to give the export directory to uid 999",
        );
        return;
    }
    let mut spec = ClusterSpec::default();
    spec.storage.mode = StorageMode::Templates;
    let (dir, paths) = host_root(Some(PRE_EXISTING));
    let mut facts = configured("os-release.debian-12");
    facts.active_exports.clear();
    probe_files(&paths, &spec, &mut facts).unwrap();
    let steps = plan(&facts, &valid(&spec), &options()).unwrap();
    let described: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert_eq!(
        described,
        [
            "create /nfsfileshare owned by 999:999 with mode 0711".to_string(),
            MARK.into(),
            "create /nfsfileshare/pgset-0 owned by 999:999 with mode 0700".into(),
            "create /nfsfileshare/pgset-1 owned by 999:999 with mode 0700".into(),
            write_step(),
            "re-export /etc/exports (exportfs -ra)".into(),
        ]
    );
    let runner = RecordingRunner::default();
    apply(&steps, &facts, &paths, &runner, &mut |_| {}).unwrap();
    assert_eq!(*runner.commands.borrow(), ["exportfs -ra"]);

    let exports = std::fs::read_to_string(dir.path().join("etc/exports")).unwrap();
    assert_eq!(
        exports,
        format!(
            "{PRE_EXISTING}\n{}",
            render_block(&spec, &options().clients)
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("etc/exports.pgset.bak")).unwrap(),
        PRE_EXISTING
    );
    assert!(!dir.path().join("etc/.exports.pgset.tmp").exists());
    for (d, mode) in [
        ("nfsfileshare", 0o711),
        ("nfsfileshare/pgset-0", 0o700),
        ("nfsfileshare/pgset-1", 0o700),
    ] {
        let m = std::fs::metadata(dir.path().join(d)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (999, 999, mode),
            "{d}"
        );
    }

    // Probe the files again; `exportfs -ra` has loaded the export (real exportfs -v output of
    // this export line).
    probe_files(&paths, &spec, &mut facts).unwrap();
    facts.active_exports = parse_exportfs_verbose(&fixture("exportfs-v.debian-12"));
    let again = plan(&facts, &valid(&spec), &options()).unwrap();
    assert!(again.is_empty(), "{again:?}");
    let before = tree(dir.path());
    apply(&again, &facts, &paths, &runner, &mut |_| {}).unwrap();
    assert_eq!(tree(dir.path()), before);
    assert_eq!(runner.commands.borrow().len(), 1);
}

/// Plans and applies on `paths`; the error message when it fails.
fn provision(
    facts: &mut HostFacts,
    spec: &ClusterSpec,
    clients: &str,
    paths: &HostPaths,
    runner: &RecordingRunner,
) -> Result<(), String> {
    let clients = parse_clients(clients).map_err(|e| e.to_string())?;
    probe_files(paths, spec, facts).map_err(|e| e.to_string())?;
    let steps = plan(facts, &valid(spec), &ExportOptions { clients }).map_err(|e| e.to_string())?;
    apply(&steps, facts, paths, runner, &mut |_| {}).map_err(|e| e.to_string())
}

#[test]
fn bad_input_is_refused_and_nothing_changes() {
    let spec = ClusterSpec::default();
    struct Case {
        name: &'static str,
        exports: Option<&'static str>,
        export_is_file: bool,
        facts: fn(&mut HostFacts),
        clients: &'static str,
        expected: &'static str,
    }
    fn same(_: &mut HostFacts) {}
    let cases = [
        Case {
            name: "export is a file",
            exports: Some(PRE_EXISTING),
            export_is_file: true,
            facts: same,
            clients: CLIENTS,
            expected: "exists and is a regular file: remove it or choose another path with --nfs-export",
        },
        Case {
            name: "clients do not parse",
            exports: Some(PRE_EXISTING),
            export_is_file: false,
            facts: same,
            clients: "10.0.0.0/24;10.0.1.0/24",
            expected: "invalid --clients entry",
        },
        Case {
            name: "not root",
            exports: Some(PRE_EXISTING),
            export_is_file: false,
            facts: |f| f.is_root = false,
            clients: CLIENTS,
            expected: "needs root",
        },
        Case {
            name: "unknown OS",
            exports: None,
            export_is_file: false,
            facts: |f| f.os = parse_os_release("ID=plan9\nPRETTY_NAME=\"Plan 9\"\n"),
            clients: CLIENTS,
            expected: "unsupported operating system \"Plan 9\"",
        },
        Case {
            name: "export already exported by hand",
            exports: Some("/nfsfileshare *(rw,no_root_squash)\n"),
            export_is_file: false,
            facts: same,
            clients: CLIENTS,
            expected: "line 1 already exports /nfsfileshare outside pgset's block",
        },
        Case {
            name: "no systemd as PID 1",
            exports: Some(PRE_EXISTING),
            export_is_file: false,
            facts: |f| {
                f.service_manager = ServiceManager::NotBooted;
                f.services.get_mut("nfs-server").unwrap().active = false;
            },
            clients: CLIENTS,
            expected: "this host cannot run the plan, so nothing was changed:\n  - start nfs-server: `systemctl` cannot start services",
        },
        Case {
            name: "pgset block without its end",
            exports: Some(
                "/a *(ro)\n# BEGIN pgset cluster pgset: managed by pgset\n/nfsfileshare *(rw)\n",
            ),
            export_is_file: false,
            facts: same,
            clients: CLIENTS,
            expected: "has no end marker",
        },
    ];
    for case in cases {
        let (dir, paths) = host_root(case.exports);
        if case.export_is_file {
            std::fs::write(dir.path().join("nfsfileshare"), "not a directory").unwrap();
        }
        let mut facts = configured("os-release.debian-12");
        facts.active_exports.clear();
        (case.facts)(&mut facts);
        let before = tree(dir.path());
        let runner = RecordingRunner::default();
        let err = provision(&mut facts, &spec, case.clients, &paths, &runner).expect_err(case.name);
        assert!(err.contains(case.expected), "{}: {err}", case.name);
        assert_eq!(tree(dir.path()), before, "{} changed the host", case.name);
        assert!(
            runner.commands.borrow().is_empty(),
            "{}: ran commands",
            case.name
        );
    }
}

/// The spec with its export at `path`.
fn exporting(path: &str) -> ClusterSpec {
    let mut spec = ClusterSpec::default();
    spec.apply(&Overrides {
        nfs_export: Some(PathBuf::from(path)),
        ..Overrides::default()
    });
    spec.validate().expect("a valid export path");
    spec
}

#[test]
fn system_directories_are_refused_by_the_spec_with_the_plans_words() {
    // One rule: the spec refuses what the plan refused, before any host is probed.
    for (path, expected) in [
        ("/etc", "/etc belongs to the operating system"),
        ("/usr", "/usr belongs to the operating system"),
        (
            "/var/lib/pgset",
            "inside /var/lib, which belongs to the operating system",
        ),
        ("/home", "/home is a system directory"),
        ("/srv", "/srv is a system directory"),
        ("/var", "/var is a system directory"),
    ] {
        let mut spec = ClusterSpec::default();
        spec.apply(&Overrides {
            nfs_export: Some(PathBuf::from(path)),
            ..Overrides::default()
        });
        let err = spec.validate().unwrap_err().to_string();
        assert!(
            err.contains("nfs.export (--nfs-export)") && err.contains(expected),
            "{path}: {err}"
        );
        assert!(err.contains("--nfs-export"), "{path}: {err}");
    }
}

#[test]
fn only_a_new_empty_or_marked_directory_becomes_the_export() {
    let spec = exporting("/srv/nfs");
    let plan_here = |paths: &HostPaths| {
        let mut facts = configured("os-release.debian-12");
        probe_files(paths, &spec, &mut facts).unwrap();
        plan(&facts, &valid(&spec), &options())
            .map(|steps| steps.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    let mark = "mark /srv/nfs as this cluster's export (/srv/nfs/.pgset-export)";

    // Empty, or holding only a fresh file system's lost+found: taken and marked.
    let (dir, paths) = host_root(None);
    std::fs::create_dir_all(dir.path().join("srv/nfs/lost+found")).unwrap();
    let steps = plan_here(&paths).unwrap();
    assert!(steps.iter().any(|s| s == mark), "{steps:?}");

    // Someone else's files: refused, naming what is there and the fix.
    std::fs::write(dir.path().join("srv/nfs/notes.txt"), "mine").unwrap();
    std::fs::create_dir(dir.path().join("srv/nfs/photos")).unwrap();
    let err = plan_here(&paths).unwrap_err().to_string();
    assert!(
        err.contains("holds 2 entries pgset did not create (notes.txt, photos)")
            && err.contains("printf 'cluster: default/pgset\\n' > /srv/nfs/.pgset-export"),
        "{err}"
    );

    // Marked for this cluster: its content is pgset's, nothing to mark again.
    std::fs::write(
        dir.path().join("srv/nfs/.pgset-export"),
        marker_contents("default", "pgset"),
    )
    .unwrap();
    let steps = plan_here(&paths).unwrap();
    assert!(!steps.iter().any(|s| s.starts_with("mark")), "{steps:?}");

    // Marked by another pgset cluster: still pgset's export (clusters share it, each in a
    // directory of its own), and the marker is left as it is.
    std::fs::write(
        dir.path().join("srv/nfs/.pgset-export"),
        marker_contents("prod", "pgset"),
    )
    .unwrap();
    let steps = plan_here(&paths).unwrap();
    assert!(!steps.iter().any(|s| s.starts_with("mark")), "{steps:?}");

    // A directory on the way that is a link into the system's trees is judged where it leads.
    let (dir, paths) = host_root(None);
    std::os::unix::fs::symlink("etc", dir.path().join("srv")).unwrap();
    let err = plan_here(&paths).unwrap_err().to_string();
    assert!(
        err.contains("it resolves to /etc/nfs: /etc/nfs is inside /etc"),
        "{err}"
    );
}

#[test]
fn a_foreign_directory_stays_byte_identical_when_refused() {
    let spec = exporting("/srv/nfs");
    let (dir, paths) = host_root(Some(PRE_EXISTING));
    let export = dir.path().join("srv/nfs");
    std::fs::create_dir_all(export.join("sub")).unwrap();
    std::fs::write(export.join("sub/data"), "someone's data").unwrap();
    std::fs::set_permissions(&export, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = tree(dir.path());
    let mut facts = configured("os-release.debian-12");
    let runner = RecordingRunner::default();
    let err = provision(&mut facts, &spec, CLIENTS, &paths, &runner).unwrap_err();
    assert!(err.contains("pgset never takes over a directory"), "{err}");
    assert_eq!(tree(dir.path()), before);
    assert!(runner.commands.borrow().is_empty());
}

#[test]
fn bad_export_paths_are_refused_by_the_spec() {
    for (path, expected) in [
        ("nfsfileshare", "not an absolute path"),
        ("/nfs file share", "whitespace"),
        ("/nfs\nshare", "whitespace or a control character"),
        ("/", "/ is a system directory"),
        ("/etc", "/etc belongs to the operating system"),
    ] {
        let overrides = Overrides {
            nfs_export: Some(PathBuf::from(path)),
            ..Overrides::default()
        };
        let mut spec = ClusterSpec::default();
        spec.apply(&overrides);
        let err = spec.validate().unwrap_err().to_string();
        assert!(
            err.contains("nfs.export (--nfs-export)") && err.contains(expected),
            "{path:?}: {err}"
        );
    }
    // A package manager is only needed when something must be installed.
    let mut f = configured("os-release.debian-12");
    f.package_managers = vec![PackageManager::Yum];
    assert!(
        plan(&f, &valid(&ClusterSpec::default()), &options())
            .unwrap()
            .is_empty()
    );
}

fn cluster(namespace: &str, name: &str, mode: StorageMode, replicas: i32) -> ClusterSpec {
    let mut spec = ClusterSpec {
        namespace: namespace.into(),
        name: name.into(),
        replicas,
        ..ClusterSpec::default()
    };
    spec.storage.mode = mode;
    spec.validate().unwrap();
    spec
}

/// What `exportfs -v` shows once every cluster's block is loaded: the real output of the
/// default export line, repeated for each cluster's directory.
fn live_exports(specs: &[&ClusterSpec]) -> Vec<pgset_nfs::ActiveExport> {
    let default_export = parse_exportfs_verbose(&fixture("exportfs-v.debian-12"));
    let mut out = Vec::new();
    for spec in specs {
        for a in default_export
            .iter()
            .filter(|a| a.path == Path::new("/nfsfileshare"))
        {
            let mut a = a.clone();
            a.path = spec.cluster_export_dir();
            out.push(a);
        }
    }
    out
}

#[test]
fn another_cluster_on_a_configured_host_gets_its_own_directory_and_block() {
    let staging = cluster("staging", "pgset", StorageMode::Shared, 2);
    let f = configured("os-release.debian-12");
    assert_eq!(
        described(&f, &staging),
        [
            "set /nfsfileshare to owner 999:999 mode 0711 (now 999:999 0700)".to_string(),
            "create /nfsfileshare/staging.pgset owned by 999:999 with mode 0700".into(),
            "write pgset's block in /etc/exports (backup kept): /nfsfileshare/staging.pgset 10.0.2.0/24(rw,sync,no_subtree_check,root_squash) 127.0.0.1/32(rw,sync,no_subtree_check,root_squash)".into(),
            "re-export /etc/exports (exportfs -ra)".into(),
        ]
    );
    // The export root of someone else (root-owned, listable) is only made traversable when it
    // is not, and keeps its owner.
    let mut f = configured("os-release.debian-12");
    f.export_dir = PathState::Directory {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };
    assert!(!described(&f, &staging)[0].contains("set /nfsfileshare "));
    f.export_dir = PathState::Directory {
        uid: 0,
        gid: 10,
        mode: 0o750,
    };
    assert_eq!(
        described(&f, &staging)[0],
        "set /nfsfileshare to owner 0:10 mode 0751 (now 0:10 0750)"
    );
    // A file where the cluster's directory belongs is refused.
    let mut f = configured("os-release.debian-12");
    f.member_dirs.insert(
        PathBuf::from("/nfsfileshare/staging.pgset"),
        PathState::NotDirectory {
            what: "a regular file",
        },
    );
    let e = plan(&f, &valid(&staging), &options())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nfsfileshare/staging.pgset exists and is a regular file"),
        "{e}"
    );
}

#[test]
fn two_clusters_on_one_host_tree_each_rerun_changes_nothing() {
    if !nix::unistd::geteuid().is_root() {
        missing_tool(
            "nfs_host::two_clusters_on_one_host_tree_each_rerun_changes_nothing",
            "needs root to give the directories to uid 999",
        );
        return;
    }
    let default = ClusterSpec::default();
    let staging = cluster("staging", "pgset", StorageMode::Shared, 2);
    let db = cluster("lab", "db", StorageMode::Templates, 2);
    let (dir, paths) = host_root(Some(PRE_EXISTING));
    let runner = RecordingRunner::default();
    let mut facts = configured("os-release.debian-12");
    facts.exports_file = None;
    facts.active_exports.clear();
    for spec in [&default, &staging, &db] {
        provision(&mut facts, spec, CLIENTS, &paths, &runner)
            .unwrap_or_else(|e| panic!("{}: {e}", spec.exports_block_id()));
        facts.exports_file = Some(std::fs::read_to_string(dir.path().join("etc/exports")).unwrap());
    }
    for (d, mode) in [
        ("nfsfileshare", 0o711),
        ("nfsfileshare/staging.pgset", 0o700),
        ("nfsfileshare/lab.db", 0o711),
        ("nfsfileshare/lab.db/db-0", 0o700),
        ("nfsfileshare/lab.db/db-1", 0o700),
    ] {
        let m = std::fs::metadata(dir.path().join(d)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (999, 999, mode),
            "{d}"
        );
    }
    let exports = std::fs::read_to_string(dir.path().join("etc/exports")).unwrap();
    let clients = options().clients;
    assert_eq!(
        exports,
        format!(
            "{PRE_EXISTING}\n{}{}{}",
            render_block(&default, &clients),
            render_block(&staging, &clients),
            render_block(&db, &clients)
        )
    );
    // Every cluster's rerun, once the exports are live, plans nothing and changes nothing.
    facts.active_exports = live_exports(&[&default, &staging, &db]);
    let before = tree(dir.path());
    for spec in [&default, &staging, &db] {
        probe_files(&paths, spec, &mut facts).unwrap();
        let again = plan(&facts, &valid(spec), &options()).unwrap();
        assert!(again.is_empty(), "{}: {again:?}", spec.exports_block_id());
    }
    assert_eq!(tree(dir.path()), before);
}
