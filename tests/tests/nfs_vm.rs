//! `cargo xtask nfs` end to end. Bad input is refused by the binary on this host with nothing
//! changed; then a throw-away Debian 12 guest (debootstrap, booted by qemu with TCG, SELinux
//! permissive, networking restricted to the host's forwarded ssh port) gets provisioned, mounts
//! its own export over NFS and proves ownership, root squashing, idempotence, that
//! pre-existing `/etc/exports` lines stay byte for byte, that firewalld gets the NFS services
//! when it runs, and that the lines the package writes into a new `/etc/exports` while it is
//! installed are kept; `doctor` passes the configured guest and names each problem made on
//! purpose (async export, wrong owner, world-writable directory, the SELinux boolean off).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgset_command::HostCommand;
use pgset_nfs::{ExportClient, parse_clients, parse_exportfs_verbose};
use pgset_tests::{missing_tool, tool, workspace_root};

const TEST: &str = "nfs_vm::provision_a_real_nfs_server";
/// How long the guest may take from power-on to an ssh answer (TCG on a busy host).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const CLIENTS: &str = "127.0.0.1/32,10.0.2.0/24";
/// `/etc/exports` before pgset: a continued entry, comments, no trailing newline.
const PRE_EXISTING_EXPORTS: &str = "# /etc/exports: entries that were here before pgset\n\
/srv/legacy 10.0.2.2(ro,sync,no_subtree_check) \\\n\
\t127.0.0.1(ro,sync,no_subtree_check)\n\
# the last line has no newline";

/// The cargo target directory this test binary was built into.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/<profile>/deps/<test binary>
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The provisioner: the pgset binary (`cargo xtask nfs` runs it), built once per test run (it is linked against the same
/// Debian 12 glibc as the guest). PGSET_NFS_VM_PROVISIONER names a prebuilt one instead.
fn provisioner() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("PGSET_NFS_VM_PROVISIONER") {
                return PathBuf::from(p);
            }
            let target = target_dir();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
            HostCommand::new(cargo)
                .args(["build", "--quiet", "--manifest-path"])
                .arg(workspace_root().join("Cargo.toml"))
                .args(["-p", "pgset-cli", "--bin", "pgset"])
                .env("CARGO_TARGET_DIR", &target)
                .run_attached()
                .expect("build the pgset binary (what `cargo xtask nfs` runs)");
            let xtask = target.join("debug").join("pgset");
            assert!(xtask.exists(), "{} was not built", xtask.display());
            xtask
        })
        .clone()
}

/// Runs the provisioner on this host (as `uid` when given); returns (exit code, stderr).
fn run_here(args: &[&str], uid: Option<u32>) -> (i32, String) {
    let xtask = provisioner().display().to_string();
    let mut argv: Vec<String> = Vec::new();
    let program = match uid {
        Some(u) => {
            argv.extend([
                format!("--reuid={u}"),
                format!("--regid={u}"),
                "--clear-groups".to_string(),
                xtask,
            ]);
            "setpriv".to_string()
        }
        None => xtask,
    };
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = HostCommand::new(program)
        .args(&argv)
        .dir(std::env::temp_dir())
        .env_remove("KUBECONFIG")
        .quiet()
        .output()
        .expect("run the provisioner");
    (out.status.code().unwrap_or(-1), out.stderr)
}

/// An export path no host has: planning it always creates it, so the plan is never empty.
const UNUSED_EXPORT: &str = "/srv/pgset-cli-test-export";

/// What the bad-input runs could have touched on this host.
fn host_state() -> Vec<(String, Option<Vec<u8>>)> {
    [
        "/etc/exports",
        "/etc/exports.pgset.bak",
        "/nfsfileshare",
        "/tmp/nfsfileshare",
        UNUSED_EXPORT,
    ]
    .iter()
    .map(|p| {
        let content = match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Some(b"<dir>".to_vec()),
            Ok(_) => std::fs::read(p).ok(),
            Err(_) => None,
        };
        (p.to_string(), content)
    })
    .collect()
}

#[test]
fn bad_input_through_the_cli_changes_nothing() {
    let before = host_state();
    let cases: [(&[&str], &str); 4] = [
        (
            &["nfs", "--nfs-export", "nfsfileshare"],
            "invalid nfs.export (--nfs-export) \"nfsfileshare\": not an absolute path",
        ),
        (
            &["nfs", "--nfs-export", "/nfs file share"],
            "contains whitespace",
        ),
        (
            &["nfs", "--nfs-export", "/nfs\nshare"],
            "contains whitespace or a control character",
        ),
        (
            &["nfs", "--clients", "10.0.0.0/24;10.1.0.0/24"],
            "invalid --clients entry \"10.0.0.0/24;10.1.0.0/24\"",
        ),
    ];
    for (args, expected) in cases {
        let (code, err) = run_here(args, None);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{args:?}: {err}"
        );
    }
    // Not root: the probes run, the plan is not empty (the export does not exist), and the
    // run stops before the first change.
    if nix::unistd::geteuid().is_root() && tool("setpriv").is_some() {
        let args = [
            "nfs",
            "--clients",
            "10.0.0.0/24",
            "--nfs-export",
            UNUSED_EXPORT,
        ];
        let (code, err) = run_here(&args, Some(65534));
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("changing the host needs root") && err.contains("--dry-run"),
            "{err}"
        );
        assert!(!err.contains("==> configure"), "{err}");
    }
    assert_eq!(host_state(), before, "a refused run changed the host");
}

/// The installed package set as `dpkg-query -W` prints it.
fn package_set() -> String {
    HostCommand::new("dpkg-query")
        .arg("-W")
        .quiet()
        .read()
        .expect("dpkg-query -W")
}

/// Owner, group, mode and (for files) contents of a path.
type PathSnapshot = (u32, u32, u32, Option<Vec<u8>>);

/// Owner, mode and (for files) contents of a path; `None` when it does not exist.
fn path_snapshot(p: &Path) -> Option<PathSnapshot> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).ok()?;
    let content = m.is_file().then(|| std::fs::read(p).expect("read a file"));
    Some((m.uid(), m.gid(), m.mode(), content))
}

/// On a Debian host booted without systemd as PID 1 (this machine: a container), the real
/// `nfs` command refuses with one error naming the service manager, and leaves `/etc/exports`,
/// the package set and the export path as they were. Its dry run shows the same blocker.
#[test]
fn a_host_without_systemd_is_refused_before_any_change() {
    const TEST: &str = "nfs_vm::a_host_without_systemd_is_refused_before_any_change";
    if Path::new("/run/systemd/system").is_dir() {
        missing_tool(
            TEST,
            "this host runs systemd as PID 1: the run would really provision it",
        );
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        missing_tool(
            TEST,
            "needs root: a non-root run stops earlier, at the root check",
        );
        return;
    }
    if tool("dpkg-query").is_none() || tool("systemctl").is_none() {
        missing_tool(TEST, "needs a Debian-family host with systemctl installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let export = dir.path().join("export");
    let export_str = export.display().to_string();
    let args = [
        "nfs",
        "--clients",
        "10.0.0.0/24",
        "--nfs-export",
        &export_str,
    ];
    let watched = [
        PathBuf::from("/etc/exports"),
        PathBuf::from("/etc/exports.pgset.bak"),
        PathBuf::from("/etc/.exports.pgset.tmp"),
        export.clone(),
    ];
    let snapshot = || {
        (
            package_set(),
            watched.iter().map(|p| path_snapshot(p)).collect::<Vec<_>>(),
        )
    };
    let before = snapshot();

    let (code, err) = run_here(&args, None);
    eprintln!("--- real run ---\n{err}");
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("this host cannot run the plan, so nothing was changed")
            && err.contains("not booted with systemd as PID 1")
            && err.contains("--nfs-server ADDR"),
        "{err}"
    );
    assert!(!err.contains("==> configure"), "{err}");
    assert!(!err.contains("    $ "), "a command ran:\n{err}");

    let (code, dry) = run_here(&[&["nfs", "--dry-run"][..], &args[1..]].concat(), None);
    eprintln!("--- dry run ---\n{dry}");
    assert_eq!(code, 1, "{dry}");
    assert!(
        dry.contains("a real run would refuse") && dry.contains("not booted with systemd"),
        "{dry}"
    );
    assert_eq!(snapshot(), before, "a refused run changed the host");
}

/// A directory and its direct entries: owner, mode and (for files) contents of each.
fn dir_snapshot(p: &Path) -> Vec<(PathBuf, Option<PathSnapshot>)> {
    let mut out = vec![(p.to_path_buf(), path_snapshot(p))];
    if let Ok(entries) = std::fs::read_dir(p) {
        let mut names: Vec<PathBuf> = entries.map(|e| e.expect("an entry").path()).collect();
        names.sort();
        for n in names {
            let snap = path_snapshot(&n);
            out.push((n, snap));
        }
    }
    out
}

/// System directories and a directory with someone else's files are refused as the export by
/// the real command, dry run or not, and stay byte-identical (owner, mode, contents).
#[test]
fn system_and_foreign_directories_are_refused_for_real() {
    let foreign = tempfile::tempdir().expect("temp dir");
    std::fs::write(foreign.path().join("thesis.tex"), "someone's work").expect("write");
    std::fs::create_dir(foreign.path().join("figures")).expect("mkdir");
    let foreign_path = foreign.path().display().to_string();
    let cases: [(&str, &str); 6] = [
        ("/etc", "/etc belongs to the operating system"),
        ("/usr", "/usr belongs to the operating system"),
        ("/home", "/home is a system directory"),
        ("/var", "/var is a system directory"),
        (
            "/var/lib/nfs",
            "inside /var/lib, which belongs to the operating system",
        ),
        (
            &foreign_path,
            "holds 2 entries pgset did not create (figures, thesis.tex)",
        ),
    ];
    let watched: Vec<PathBuf> = cases
        .iter()
        .map(|(p, _)| PathBuf::from(p))
        .chain([PathBuf::from("/etc/exports"), PathBuf::from("/")])
        .collect();
    let snapshot = || watched.iter().map(|p| dir_snapshot(p)).collect::<Vec<_>>();
    let before = snapshot();
    for (path, expected) in cases {
        for dry in [true, false] {
            let mut args = vec!["nfs", "--clients", "10.0.0.0/24", "--nfs-export", path];
            if dry {
                args.push("--dry-run");
            }
            let (code, err) = run_here(&args, None);
            assert_eq!(code, 1, "{args:?}: {err}");
            assert!(err.contains(expected), "{args:?}: {err}");
            assert!(err.contains("--nfs-export"), "{args:?}: {err}");
            assert_eq!(
                err.lines().filter(|l| l.starts_with("error:")).count(),
                1,
                "{args:?}: {err}"
            );
        }
    }
    assert_eq!(snapshot(), before, "a refused export path changed");
}

fn elapsed(t: Instant) -> String {
    format!("{:.1}s", t.elapsed().as_secs_f64())
}

/// A running guest; qemu is killed when it is dropped (its disk overlay goes with it).
struct Guest {
    qemu: pgset_command::Handle,
    port: u16,
    key: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
    }
}

impl Guest {
    fn ssh_args(&self) -> Vec<String> {
        [
            "-i",
            &self.key.display().to_string(),
            "-p",
            &self.port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs a shell script in the guest; returns (exit code, stdout, stderr).
    fn sh(&self, script: &str) -> (i32, String, String) {
        let mut args = self.ssh_args();
        args.push("root@127.0.0.1".into());
        args.push(script.into());
        let out = HostCommand::new("ssh")
            .args(&args)
            .quiet()
            .output()
            .expect("run ssh");
        (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
    }

    /// Runs a script that must succeed; returns its stdout.
    fn ok(&self, script: &str) -> String {
        let (code, out, err) = self.sh(script);
        assert_eq!(
            code, 0,
            "guest script failed ({code}): {script}\nstdout:\n{out}\nstderr:\n{err}"
        );
        out
    }

    fn copy_in(&self, local: &Path, remote: &str) {
        let mut args = self.ssh_args();
        // scp spells the port option -P.
        let p = args.iter().position(|a| a == "-p").expect("port option");
        args[p] = "-P".into();
        args.push(local.display().to_string());
        args.push(format!("root@127.0.0.1:{remote}"));
        HostCommand::new("scp")
            .args(&args)
            .run()
            .expect("copy a file into the guest");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

fn boot(guest_dir: &Path, run_dir: &Path) -> Guest {
    // snapshot=on: the guest's writes go to a temporary overlay; the cached image stays pristine.
    let disk = guest_dir.join("disk.img");
    let port = free_port();
    let serial = run_dir.join("serial.log");
    let qemu_log = std::fs::File::create(run_dir.join("qemu.log")).expect("create qemu.log");
    let qemu = HostCommand::new("qemu-system-x86_64")
        .args([
            "-machine".to_string(),
            "accel=tcg".into(),
            "-m".into(),
            "1024".into(),
            "-smp".into(),
            "1".into(),
            "-kernel".into(),
            guest_dir.join("vmlinuz").display().to_string(),
            "-initrd".into(),
            guest_dir.join("initrd.img").display().to_string(),
            "-append".into(),
            "root=/dev/vda rw console=ttyS0 security=selinux selinux=1 enforcing=0".into(),
            "-drive".into(),
            format!("file={},if=virtio,format=raw,snapshot=on", disk.display()),
            "-netdev".into(),
            format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"),
            "-device".into(),
            "virtio-net-pci,netdev=n0".into(),
            "-nographic".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", serial.display()),
        ])
        .start_logging_to(qemu_log)
        .expect("start qemu");
    let guest = Guest {
        qemu,
        port,
        key: guest_dir.join("id_ed25519"),
    };
    let t = Instant::now();
    loop {
        if let Ok(Some(out)) = guest.qemu.try_wait() {
            panic!(
                "qemu exited early ({:?}); see {}",
                out.status,
                run_dir.display()
            );
        }
        if guest.sh("true").0 == 0 {
            break;
        }
        assert!(
            t.elapsed() < BOOT_TIMEOUT,
            "no ssh answer from the guest after {BOOT_TIMEOUT:?}; serial console in {}",
            serial.display()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    eprintln!("guest booted to ssh in {}", elapsed(t));
    guest
}

/// The pgset clients `exportfs -v` shows for `/nfsfileshare` with pgset's options.
fn live_clients(exportfs_v: &str) -> BTreeSet<ExportClient> {
    live_clients_of(exportfs_v, "/nfsfileshare")
}

/// The pgset clients `exportfs -v` shows for `path` with pgset's options.
fn live_clients_of(exportfs_v: &str, path: &str) -> BTreeSet<ExportClient> {
    let active = parse_exportfs_verbose(exportfs_v);
    let mut out = BTreeSet::new();
    for a in active.iter().filter(|a| a.path == Path::new(path)) {
        assert!(
            a.has_pgset_options(),
            "{} exported with {:?}",
            a.client,
            a.options
        );
        for o in ["rw", "sync", "root_squash", "no_subtree_check"] {
            assert!(a.options.iter().any(|x| x == o), "{o} missing in {a:?}");
        }
        out.insert(a.parsed_client().expect("an address client"));
    }
    out
}

#[test]
fn provision_a_real_nfs_server() {
    for (t, why) in [
        (
            "qemu-system-x86_64",
            "boots the guest (apt: qemu-system-x86)",
        ),
        ("debootstrap", "builds the guest (apt: debootstrap)"),
        ("mkfs.ext4", "makes the guest's disk (apt: e2fsprogs)"),
        ("ssh", "talks to the guest (apt: openssh-client)"),
        ("scp", "copies the provisioner in (apt: openssh-client)"),
        ("ssh-keygen", "makes the guest's key (apt: openssh-client)"),
    ] {
        if tool(t).is_none() {
            missing_tool(TEST, &format!("{t} not found: it {why}"));
            return;
        }
    }
    if !nix::unistd::geteuid().is_root() {
        missing_tool(
            TEST,
            "needs root: debootstrap and an image keeping file owners",
        );
        return;
    }
    let total = Instant::now();
    let root = workspace_root();
    let target = target_dir();

    let t = Instant::now();
    let xtask = provisioner();
    eprintln!("xtask built in {}", elapsed(t));

    // The guest, cached under target/nfs-vm by a hash of its package list and build steps.
    let t = Instant::now();
    let cache = target.join("nfs-vm");
    std::fs::create_dir_all(&cache).expect("create the guest cache dir");
    let stdout = HostCommand::new("bash")
        .arg(root.join("tests/vm/build-guest.sh"))
        .arg(&cache)
        .read()
        .expect("build the Debian 12 guest (tests/vm/build-guest.sh)");
    let guest_dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    eprintln!("guest ready in {} ({})", elapsed(t), guest_dir.display());

    let run_dir = cache.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).expect("create the run dir");
    let guest = boot(&guest_dir, &run_dir);

    // Exports that were there before pgset, with a directory to export.
    let pre = run_dir.join("exports.before");
    std::fs::write(&pre, PRE_EXISTING_EXPORTS).expect("write the exports file");
    guest.copy_in(&pre, "/etc/exports");
    guest.ok("mkdir -p /srv/legacy && exportfs -ra");
    let t = Instant::now();
    guest.copy_in(&xtask, "/usr/local/bin/pgset-xtask");
    eprintln!("provisioner copied in {}", elapsed(t));

    // Dry run: the plan, and no change.
    let dry = guest.ok(&format!(
        "cd /root && pgset-xtask nfs --dry-run --clients {CLIENTS}"
    ));
    eprintln!("--- dry run ---\n{dry}");
    for expected in [
        "turn on the SELinux boolean(s) virt_use_nfs",
        "create /nfsfileshare owned by 999:999 with mode 0700",
        "write pgset's block in /etc/exports",
        "exportfs -ra",
    ] {
        assert!(dry.contains(expected), "dry run lacks {expected:?}:\n{dry}");
    }
    assert_eq!(
        guest.ok("test -e /nfsfileshare && echo exists || echo absent; cat /etc/exports"),
        format!("absent\n{PRE_EXISTING_EXPORTS}"),
        "the dry run changed the guest"
    );

    // First run.
    let t = Instant::now();
    let first = guest.ok(&format!(
        "cd /root && pgset-xtask nfs --clients {CLIENTS} 2>&1"
    ));
    eprintln!("--- first run ({}) ---\n{first}", elapsed(t));

    let exportfs = guest.ok("exportfs -v");
    eprintln!("--- exportfs -v ---\n{exportfs}");
    let wanted: BTreeSet<ExportClient> = parse_clients(CLIENTS).unwrap().into_iter().collect();
    assert_eq!(live_clients(&exportfs), wanted);
    assert!(
        parse_exportfs_verbose(&exportfs)
            .iter()
            .any(|a| a.path == Path::new("/srv/legacy")),
        "the pre-existing export is gone:\n{exportfs}"
    );
    assert_eq!(
        guest.ok("stat -c '%u %g %a' /nfsfileshare"),
        "999 999 700\n"
    );

    // The exports file: old bytes, then pgset's block; the old file kept as the backup.
    let after_first = guest.ok("cat /etc/exports");
    assert!(
        after_first.starts_with(&format!(
            "{PRE_EXISTING_EXPORTS}\n# BEGIN pgset cluster default/pgset:"
        )),
        "lines before pgset's block changed:\n{after_first}"
    );
    assert_eq!(guest.ok("cat /etc/exports.pgset.bak"), PRE_EXISTING_EXPORTS);
    let label = guest.ok("ls -Z /etc/exports");
    assert!(
        label.contains("exports_t"),
        "/etc/exports is labelled {label}"
    );

    // SELinux: the boolean the seed sets.
    assert_eq!(
        guest.ok("getsebool virt_use_nfs").trim(),
        "virt_use_nfs --> on"
    );

    // Mount the export over NFS and use it the way the pods do.
    guest.ok("mkdir -p /mnt/pgset && mount -t nfs -o hard,nfsvers=4.1 localhost:/nfsfileshare /mnt/pgset");
    guest.ok(
        "setpriv --reuid=999 --regid=999 --clear-groups sh -c 'umask 077; mkdir /mnt/pgset/pgset-0 && echo data > /mnt/pgset/pgset-0/file && sync'",
    );
    assert_eq!(
        guest.ok("stat -c '%u %g %a' /nfsfileshare/pgset-0; cat /nfsfileshare/pgset-0/file"),
        "999 999 700\ndata\n"
    );
    for target in ["/mnt/pgset", "/mnt/pgset/pgset-0"] {
        let (code, _, err) = guest.sh(&format!("chown root:root {target}"));
        assert_ne!(code, 0, "root was not squashed: chown {target} worked");
        eprintln!("squashed root's chown {target}: {}", err.trim());
    }
    let (touch_code, _, _) = guest.sh("touch /mnt/pgset/root-file");
    assert_ne!(touch_code, 0, "squashed root could write into the export");
    assert_eq!(guest.ok("stat -c '%u' /nfsfileshare/pgset-0"), "999\n");
    guest.ok("umount /mnt/pgset");

    // Second run: nothing to change, nothing changed.
    let t = Instant::now();
    let second = guest.ok(&format!(
        "cd /root && pgset-xtask nfs --clients {CLIENTS} 2>&1"
    ));
    eprintln!("--- second run ({}) ---\n{second}", elapsed(t));
    assert!(second.contains("nothing to change"), "{second}");
    assert!(
        !second.contains("$ "),
        "the second run ran a command:\n{second}"
    );
    assert_eq!(guest.ok("cat /etc/exports"), after_first);
    assert_eq!(live_clients(&guest.ok("exportfs -v")), wanted);

    // The doctor passes on the configured guest, and names each problem made on purpose.
    let doctor = "cd /root && pgset-xtask doctor -o json";
    let report = |out: &str| -> Vec<(String, String, String)> {
        let v: serde_json::Value =
            serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["verdict"].as_str().unwrap_or_default().to_string(),
                    c["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let healthy = report(&guest.ok(doctor));
    eprintln!("--- doctor on the configured guest ---\n{healthy:#?}");
    assert!(
        healthy
            .iter()
            .all(|(_, v, _)| v == "pass" || v == "skipped"),
        "{healthy:#?}"
    );
    // Broken on purpose, inside the throw-away guest only: an async export, a root-owned export
    // root, a world-writable member directory and the SELinux boolean off, each of which
    // `doctor` must name.
    guest.ok(
        "sed -i 's/(rw,sync,/(rw,async,/g' /etc/exports && exportfs -ra \
         && chown 0:0 /nfsfileshare && chmod 0777 /nfsfileshare/pgset-0 \
         && setsebool virt_use_nfs 0",
    );
    let (code, out, _) = guest.sh(doctor);
    assert_ne!(code, 0, "the doctor passed a broken setup: {out}");
    let broken = report(&out);
    eprintln!("--- doctor on the broken guest ---\n{broken:#?}");
    let failed = |name: &str| -> String {
        broken
            .iter()
            .find(|(n, v, _)| n == name && v == "fail")
            .map(|(_, _, m)| m.clone())
            .unwrap_or_else(|| panic!("{name} did not fail: {broken:#?}"))
    };
    assert!(failed("export-options").contains("is exported async"));
    assert!(failed("export-directory").contains("owned by uid 0, not the postgres uid 999"));
    assert!(
        failed("member-directories").contains("/nfsfileshare/pgset-0: world-writable (mode 0777)")
    );
    assert!(failed("selinux-virt-use-nfs").contains("virt_use_nfs is off"));
    // `nfs` repairs what is its own (the block, the export's owner, the boolean); the member
    // directory is the agent's, put back by hand.
    let repaired = guest.ok(&format!(
        "cd /root && pgset-xtask nfs --clients {CLIENTS} 2>&1"
    ));
    eprintln!("--- repair ---\n{repaired}");
    guest.ok("chmod 0700 /nfsfileshare/pgset-0");
    let again = report(&guest.ok(doctor));
    assert!(
        again.iter().all(|(_, v, _)| v == "pass" || v == "skipped"),
        "{again:#?}"
    );
    assert_eq!(guest.ok("cat /etc/exports"), after_first);

    // Templates mode: a directory per member, and a node mounts one member's directory as
    // root (squashed), so the export root must be traversable, still not listable.
    let t = Instant::now();
    let templates_run = format!(
        "cd /root && pgset-xtask nfs --storage templates --replicas 2 --clients {CLIENTS} 2>&1"
    );
    let templates = guest.ok(&templates_run);
    eprintln!("--- templates run ({}) ---\n{templates}", elapsed(t));
    assert_eq!(
        guest.ok("stat -c '%u %g %a' /nfsfileshare /nfsfileshare/pgset-0 /nfsfileshare/pgset-1"),
        "999 999 711\n999 999 700\n999 999 700\n"
    );
    guest.ok("mount -t nfs -o hard,nfsvers=4.1 localhost:/nfsfileshare/pgset-1 /mnt/pgset");
    guest.ok(
        "setpriv --reuid=999 --regid=999 --clear-groups sh -c 'umask 077; mkdir /mnt/pgset/pgset-1 && sync'",
    );
    assert_eq!(
        guest.ok("stat -c '%u %a' /nfsfileshare/pgset-1/pgset-1"),
        "999 700\n"
    );
    assert_ne!(
        guest.sh("ls /mnt/pgset").0,
        0,
        "squashed root could list a member's directory"
    );
    guest.ok("umount /mnt/pgset");
    let templates_again = guest.ok(&templates_run);
    assert!(
        templates_again.contains("nothing to change"),
        "{templates_again}"
    );
    assert_eq!(guest.ok("cat /etc/exports"), after_first);
    // Why 0711: below a 0700 root the squashed mount is refused; a rerun repairs the mode.
    let member_mount =
        "mount -t nfs -o hard,nfsvers=4.1 localhost:/nfsfileshare/pgset-1 /mnt/pgset";
    guest.ok("chmod 0700 /nfsfileshare");
    let (code, _, err) = guest.sh(member_mount);
    assert_ne!(
        code, 0,
        "a member directory mounted below a 0700 export root"
    );
    eprintln!("mount below a 0700 root: {}", err.trim());
    let repaired = guest.ok(&templates_run);
    assert!(
        repaired.contains("set /nfsfileshare to owner 999:999 mode 0711 (now 999:999 0700)"),
        "{repaired}"
    );
    guest.ok(&format!("{member_mount} && umount /mnt/pgset"));
    // A rerun without --clients (as `up` and `scale` do) keeps the block's clients.
    let rerun = guest.ok("cd /root && pgset-xtask nfs --storage templates --replicas 2 2>&1");
    assert!(
        rerun.contains("keeping the clients") && rerun.contains("nothing to change"),
        "{rerun}"
    );
    assert_eq!(guest.ok("cat /etc/exports"), after_first);

    // A second and a third cluster on the same export: their own directories and blocks, the
    // default cluster's untouched, and every rerun changes nothing.
    let t = Instant::now();
    let staging_run = format!("cd /root && pgset-xtask nfs -n staging --clients {CLIENTS} 2>&1");
    let staging = guest.ok(&staging_run);
    eprintln!("--- staging/pgset run ({}) ---\n{staging}", elapsed(t));
    let lab_run = format!(
        "cd /root && pgset-xtask nfs -n lab --name db --storage templates --replicas 2 --clients {CLIENTS} 2>&1"
    );
    let lab = guest.ok(&lab_run);
    eprintln!("--- lab/db run ---\n{lab}");
    let three = guest.ok("cat /etc/exports");
    assert!(
        three.starts_with(&after_first),
        "the default cluster's lines changed:\n{three}"
    );
    let added = &three[after_first.len()..];
    assert!(
        added.starts_with("# BEGIN pgset cluster staging/pgset:")
            && added.contains("\n/nfsfileshare/staging.pgset 10.0.2.0/24(rw,sync,no_subtree_check,root_squash) 127.0.0.1/32(rw,sync,no_subtree_check,root_squash)\n")
            && added.contains("# BEGIN pgset cluster lab/db:")
            && added.contains("\n/nfsfileshare/lab.db 10.0.2.0/24(rw,sync,no_subtree_check,root_squash) 127.0.0.1/32(rw,sync,no_subtree_check,root_squash)\n"),
        "{added}"
    );
    let exportfs = guest.ok("exportfs -v");
    eprintln!("--- exportfs -v, three clusters ---\n{exportfs}");
    assert_eq!(live_clients(&exportfs), wanted);
    assert_eq!(
        live_clients_of(&exportfs, "/nfsfileshare/staging.pgset"),
        wanted
    );
    assert_eq!(live_clients_of(&exportfs, "/nfsfileshare/lab.db"), wanted);
    assert_eq!(
        guest.ok(
            "stat -c '%n %u %g %a' /nfsfileshare /nfsfileshare/staging.pgset /nfsfileshare/lab.db /nfsfileshare/lab.db/db-0 /nfsfileshare/lab.db/db-1"
        ),
        "/nfsfileshare 999 999 711\n/nfsfileshare/staging.pgset 999 999 700\n/nfsfileshare/lab.db 999 999 711\n/nfsfileshare/lab.db/db-0 999 999 700\n/nfsfileshare/lab.db/db-1 999 999 700\n"
    );
    // Each cluster's directory mounts on its own, as a node mounts its volume; the pods' writes
    // land in that cluster's directory, never in the default cluster's.
    guest.ok("mount -t nfs -o hard,nfsvers=4.1 localhost:/nfsfileshare/staging.pgset /mnt/pgset");
    guest.ok(
        "setpriv --reuid=999 --regid=999 --clear-groups sh -c 'umask 077; mkdir /mnt/pgset/pgset-0 && echo staging > /mnt/pgset/pgset-0/file && sync'",
    );
    guest.ok("umount /mnt/pgset");
    assert_eq!(
        guest.ok("cat /nfsfileshare/staging.pgset/pgset-0/file /nfsfileshare/pgset-0/file"),
        "staging\ndata\n"
    );
    guest.ok("mount -t nfs -o hard,nfsvers=4.1 localhost:/nfsfileshare/lab.db/db-1 /mnt/pgset && umount /mnt/pgset");
    for (run, what) in [
        (&staging_run, "staging/pgset"),
        (&lab_run, "lab/db"),
        (&templates_run, "default/pgset, templates"),
    ] {
        let again = guest.ok(run);
        assert!(again.contains("nothing to change"), "{what}: {again}");
    }
    // The default cluster in shared mode leaves the traversable export as it is.
    let shared_again = guest.ok(&format!(
        "cd /root && pgset-xtask nfs --clients {CLIENTS} 2>&1"
    ));
    assert!(shared_again.contains("nothing to change"), "{shared_again}");
    assert_eq!(guest.ok("cat /etc/exports"), three);

    // The default block as earlier versions marked it is replaced in place, not doubled.
    guest.ok("sed -i 's#cluster default/pgset#cluster pgset#' /etc/exports");
    let upgraded = guest.ok(&templates_run);
    assert!(upgraded.contains("write pgset's block"), "{upgraded}");
    assert_eq!(guest.ok("cat /etc/exports"), three);

    // firewalld running: the run opens the NFS services, permanently and now; a second run
    // changes nothing.
    let plain_run = format!("cd /root && pgset-xtask nfs --clients {CLIENTS} 2>&1");
    guest.ok("systemctl start firewalld && firewall-cmd --state");
    let t = Instant::now();
    let with_firewall = guest.ok(&plain_run);
    eprintln!("--- firewalld run ({}) ---\n{with_firewall}", elapsed(t));
    assert!(
        with_firewall.contains("allow the firewalld service(s) nfs, rpc-bind, mountd"),
        "{with_firewall}"
    );
    for list in [
        "firewall-cmd --list-services",
        "firewall-cmd --permanent --list-services",
    ] {
        let services = guest.ok(list);
        for s in ["nfs", "rpc-bind", "mountd"] {
            assert!(
                services.split_whitespace().any(|x| x == s),
                "{list}: {services}"
            );
        }
    }
    let again = guest.ok(&plain_run);
    assert!(again.contains("nothing to change"), "{again}");
    guest.ok("systemctl stop firewalld");

    // A host without /etc/exports, whose package writes its own when installed: the package
    // goes (with its file), and the run installs it again (offline, from the .deb the guest
    // keeps) and puts pgset's block after the package's lines.
    let block = after_first
        .strip_prefix(&format!("{PRE_EXISTING_EXPORTS}\n"))
        .expect("pgset's block follows the old lines")
        .to_string();
    guest.ok(
        "exportfs -ua && systemctl stop nfs-server && dpkg --purge nfs-kernel-server >/dev/null \
         && rm -f /etc/exports /etc/exports.pgset.bak \
         && cp /root/debs/nfs-kernel-server_*.deb /var/cache/apt/archives/",
    );
    assert_eq!(
        guest.ok("test -e /etc/exports && echo present || echo absent"),
        "absent\n"
    );
    let t = Instant::now();
    let reinstall = guest.ok(&plain_run);
    eprintln!(
        "--- run that installs the package ({}) ---\n{reinstall}",
        elapsed(t)
    );
    assert!(
        reinstall.contains("install nfs-kernel-server with apt-get"),
        "{reinstall}"
    );
    let package_file = guest.ok("cat /usr/share/nfs-kernel-server/conffiles/etc.exports");
    assert!(package_file.starts_with("# /etc/exports"), "{package_file}");
    assert_eq!(
        guest.ok("cat /etc/exports"),
        format!("{package_file}{block}"),
        "the package's lines are not kept before pgset's block"
    );
    assert_eq!(live_clients(&guest.ok("exportfs -v")), wanted);
    let again = guest.ok(&plain_run);
    assert!(again.contains("nothing to change"), "{again}");

    drop(guest);
    let _ = std::fs::remove_dir_all(&run_dir);
    eprintln!("nfs_vm done in {}", elapsed(total));
}
