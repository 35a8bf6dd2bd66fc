//! The Vagrant lab's files, checked without booting a VM: shellcheck on the provisioning scripts,
//! `vagrant validate` for one and several nodes, the settings the scripts rely on, the
//! Kubernetes API pin against the lab's Kubernetes, and the scripts run twice against a temporary
//! root with recording stand-ins for the system commands, to show a second run changes nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use pgset_spec::{ClusterSpec, MAX_REPLICAS};
use pgset_tests::{missing_tool, tool, workspace_root};
use serde::Deserialize;

fn lab_dir() -> PathBuf {
    workspace_root().join("vagrant")
}

fn scripts_dir() -> PathBuf {
    lab_dir().join("scripts")
}

fn stub_script() -> PathBuf {
    pgset_tests::fixtures().join("lab-stubs").join("stub.sh")
}

/// The provisioning scripts, sorted.
fn lab_scripts() -> Vec<PathBuf> {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(scripts_dir())
        .expect("vagrant/scripts exists")
        .map(|e| e.expect("read vagrant/scripts").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    scripts.sort();
    scripts
}

// ---------------------------------------------------------------------------------------------
// settings.yaml

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabSettings {
    #[serde(rename = "box")]
    base_box: String,
    name_prefix: String,
    cpus: u32,
    memory: u32,
    workers: usize,
    network: LabNetwork,
    kubernetes: LabKubernetes,
    flannel_version: String,
    synced_folder_type: String,
    pgset: LabPgset,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabNetwork {
    control_plane_ip: Ipv4Addr,
    worker_ips: Vec<Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabKubernetes {
    version: String,
    pod_network_cidr: String,
    service_cidr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabPgset {
    replicas: i32,
    storage: String,
}

fn settings() -> LabSettings {
    let path = lab_dir().join("settings.yaml");
    let text = std::fs::read_to_string(&path).expect("read vagrant/settings.yaml");
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `major.minor.patch` as numbers, or `None` when the text is not exactly that.
fn release(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(|p| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    });
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

/// An IPv4 network `a.b.c.d/len`.
fn cidr(text: &str) -> Option<(Ipv4Addr, u32)> {
    let (addr, len) = text.split_once('/')?;
    let len: u32 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((addr.parse().ok()?, len))
}

fn cidr_contains((net, len): (Ipv4Addr, u32), ip: Ipv4Addr) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(net) & mask == u32::from(ip) & mask
}

fn cidrs_overlap(a: (Ipv4Addr, u32), b: (Ipv4Addr, u32)) -> bool {
    cidr_contains(a, b.0) || cidr_contains(b, a.0)
}

#[test]
fn settings_hold_what_the_scripts_rely_on() {
    let s = settings();
    assert!(
        s.base_box.contains("rockylinux-9"),
        "box {:?}: the scripts are written for Rocky Linux 9 (dnf, crb, container-selinux)",
        s.base_box
    );
    assert!(
        s.cpus >= 2,
        "cpus {}: kubeadm's preflight needs at least 2",
        s.cpus
    );
    assert!(
        s.memory >= 4096,
        "memory {} MiB: kubeadm, the Rust build and the members need at least 4096",
        s.memory
    );
    assert!(
        !s.name_prefix.is_empty()
            && s.name_prefix.len() <= 50
            && s.name_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.name_prefix.starts_with('-'),
        "name_prefix {:?} must make DNS-1123 node names",
        s.name_prefix
    );

    // Addresses: private, distinct, one /24 (node.sh trusts <ip>.0/24 in firewalld), never the
    // network, gateway (.1, the host on a host-only network) or broadcast address.
    let net = s.network.control_plane_ip.octets();
    let mut all = vec![s.network.control_plane_ip];
    all.extend(&s.network.worker_ips);
    for ip in &all {
        assert!(ip.is_private(), "{ip} is not in a private range");
        assert_eq!(
            ip.octets()[..3],
            net[..3],
            "{ip} is not in the control plane's /24 ({}.{}.{}.0/24)",
            net[0],
            net[1],
            net[2]
        );
        assert!(
            !matches!(ip.octets()[3], 0 | 1 | 255),
            "{ip}: .0, .1 and .255 are the network, the host and broadcast"
        );
    }
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "node addresses repeat: {all:?}");
    assert!(
        s.workers <= s.network.worker_ips.len(),
        "workers {} but only {} worker addresses",
        s.workers,
        s.network.worker_ips.len()
    );

    // Kubernetes: an exact release for the pinned packages, networks that do not overlap.
    assert!(
        release(&s.kubernetes.version).is_some(),
        "kubernetes.version {:?} must be an exact release like 1.35.0 (packages are pinned to it)",
        s.kubernetes.version
    );
    let pods = cidr(&s.kubernetes.pod_network_cidr).expect("pod_network_cidr is a CIDR");
    let services = cidr(&s.kubernetes.service_cidr).expect("service_cidr is a CIDR");
    let private = (s.network.control_plane_ip, 24);
    assert!(
        !cidrs_overlap(pods, services),
        "pod and Service networks overlap"
    );
    assert!(
        !cidrs_overlap(pods, private),
        "pod network overlaps the private network"
    );
    assert!(
        !cidrs_overlap(services, private),
        "Service network overlaps the private network"
    );
    let flannel = s.flannel_version.strip_prefix('v').and_then(release);
    assert!(
        flannel.is_some(),
        "flannel_version {:?} must look like v0.27.4",
        s.flannel_version
    );
    assert!(
        ["", "virtualbox", "nfs", "rsync", "virtiofs", "9p"]
            .contains(&s.synced_folder_type.as_str()),
        "synced_folder_type {:?} is not a synced folder type",
        s.synced_folder_type
    );
    assert!(
        (1..=MAX_REPLICAS).contains(&s.pgset.replicas),
        "pgset.replicas {}",
        s.pgset.replicas
    );
}

/// The spec toolchain.sh writes into the VM, filled in from settings.yaml, is a valid pgset spec.
#[test]
fn the_spec_written_into_the_lab_is_valid() {
    let s = settings();
    let script = std::fs::read_to_string(scripts_dir().join("toolchain.sh")).unwrap();
    let start = script
        .find("<<SPEC")
        .expect("toolchain.sh writes the spec with <<SPEC");
    let body_start = script[start..].find('\n').unwrap() + start + 1;
    let body_len = script[body_start..]
        .find("\nSPEC\n")
        .expect("the spec heredoc ends with SPEC");
    let template = &script[body_start..body_start + body_len];
    let text = template
        .replace("${LAB_REPLICAS}", &s.pgset.replicas.to_string())
        .replace("${LAB_STORAGE}", &s.pgset.storage)
        .replace(
            "${LAB_CONTROL_PLANE_IP}",
            &s.network.control_plane_ip.to_string(),
        );
    assert!(
        !text.contains("${"),
        "unfilled variable in the spec:\n{text}"
    );
    let spec = ClusterSpec::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    spec.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(spec.replicas, s.pgset.replicas);
    assert_eq!(
        spec.nfs.server.as_deref(),
        Some(s.network.control_plane_ip.to_string().as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// The API pin against the lab's Kubernetes

/// The `v1_NN` feature of `k8s-openapi` in the root Cargo.toml, as (1, NN).
fn pinned_api_level(cargo_toml: &str) -> Option<(u32, u32)> {
    let line = cargo_toml
        .lines()
        .find(|l| l.trim_start().starts_with("k8s-openapi"))?;
    let at = line.find("\"v1_")?;
    let minor: String = line[at + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((1, minor.parse().ok()?))
}

/// Fails when the workspace compiles against a newer Kubernetes API than the lab installs.
fn api_pin_fits(pinned: (u32, u32), lab: (u32, u32)) -> Result<(), String> {
    if pinned <= lab {
        Ok(())
    } else {
        Err(format!(
            "k8s-openapi is pinned to v{}_{} but the lab installs Kubernetes {}.{}: raise \
             kubernetes.version in vagrant/settings.yaml or lower the feature in Cargo.toml",
            pinned.0, pinned.1, lab.0, lab.1
        ))
    }
}

#[test]
fn the_api_pin_is_not_newer_than_the_lab_kubernetes() {
    let cargo_toml = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let pinned = pinned_api_level(&cargo_toml)
        .expect("the root Cargo.toml pins k8s-openapi with a v1_NN feature");
    let s = settings();
    let (major, minor, _) = release(&s.kubernetes.version).expect("an exact release");
    api_pin_fits(pinned, (major, minor)).unwrap();
}

#[test]
fn the_api_pin_check_catches_drift() {
    let toml = r#"k8s-openapi = { version = "0.29", default-features = false, features = ["std", "v1_36"] }"#;
    assert_eq!(pinned_api_level(toml), Some((1, 36)));
    assert!(api_pin_fits((1, 36), (1, 35)).is_err());
    assert!(api_pin_fits((1, 35), (1, 35)).is_ok());
    assert!(api_pin_fits((1, 33), (1, 35)).is_ok());
    assert_eq!(release("1.35"), None);
    assert_eq!(release("1.35.0-150500.1.1"), None);
    assert_eq!(release("1.35.0"), Some((1, 35, 0)));
}

// ---------------------------------------------------------------------------------------------
// shellcheck and vagrant validate

#[test]
fn shellcheck_passes_on_every_lab_script() {
    let Some(shellcheck) = tool("shellcheck") else {
        return missing_tool(
            "shellcheck_passes_on_every_lab_script",
            "shellcheck is not installed",
        );
    };
    let mut files = lab_scripts();
    assert!(
        files.len() >= 6,
        "expected the lab's scripts, found {files:?}"
    );
    files.push(stub_script());
    let mut args: Vec<String> = vec!["--external-sources".into(), "--severity=style".into()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let out = pgset_command::HostCommand::new(shellcheck)
        .args(&args)
        .dir(scripts_dir())
        .output()
        .unwrap();
    assert!(
        out.success(),
        "shellcheck found problems:\n{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn every_script_is_strict_bash_and_every_step_the_vagrantfile_names_exists() {
    let vagrantfile = std::fs::read_to_string(lab_dir().join("Vagrantfile")).unwrap();
    for script in lab_scripts() {
        let name = script.file_stem().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(&script).unwrap();
        if name == "lib" {
            assert!(
                text.starts_with("# shellcheck shell=bash"),
                "lib.sh declares its shell"
            );
            continue;
        }
        assert!(
            text.starts_with("#!/usr/bin/env bash\n"),
            "{name}.sh: bash shebang"
        );
        assert!(
            text.contains("\nset -euo pipefail\n"),
            "{name}.sh: set -euo pipefail"
        );
        assert!(
            vagrantfile.contains(&format!("provision_script(machine, \"{name}\"")),
            "{name}.sh is not run by the Vagrantfile"
        );
        // Every LAB_ variable a script requires is one the Vagrantfile sets.
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("require_env"))
        {
            for var in line.split_whitespace().filter(|w| w.starts_with("LAB_")) {
                assert!(
                    vagrantfile.contains(&format!("\"{var}\" =>")),
                    "{name}.sh requires {var}, which the Vagrantfile does not set"
                );
            }
        }
    }
}

/// `vagrant validate --ignore-provider` with the given WORKERS (none: the settings' default),
/// isolated from the user's Vagrant home and the lab's machine state.
fn vagrant_validate(vagrant: &Path, workers: Option<&str>, dotfile: &Path) -> (bool, String) {
    let home = tempfile::tempdir().unwrap();
    let cmd = pgset_command::HostCommand::new(vagrant)
        .args(["validate", "--ignore-provider"])
        .env("VAGRANT_CWD", lab_dir())
        .env("VAGRANT_HOME", home.path())
        .env("VAGRANT_DOTFILE_PATH", dotfile)
        .env("VAGRANT_CHECKPOINT_DISABLE", "1");
    let cmd = match workers {
        Some(w) => cmd.env("WORKERS", w),
        None => cmd.env_remove("WORKERS"),
    };
    let out = cmd.output().unwrap();
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn vagrant_validates_one_node_and_several() {
    let Some(vagrant) = tool("vagrant") else {
        return missing_tool(
            "vagrant_validates_one_node_and_several",
            "vagrant is not installed",
        );
    };
    let dotfile = tempfile::tempdir().unwrap();
    let s = settings();
    let cp = format!("{}-cp", s.name_prefix);
    let w = |n: u32| format!("{}-w{n}", s.name_prefix);

    let (ok, out) = vagrant_validate(&vagrant, None, dotfile.path());
    assert!(ok, "default lab:\n{out}");
    assert!(out.contains(&format!("==> {cp}:")), "{out}");
    if s.workers == 0 {
        assert!(!out.contains(&w(1)), "a single node by default:\n{out}");
    }

    let (ok, out) = vagrant_validate(&vagrant, Some("2"), dotfile.path());
    assert!(ok, "WORKERS=2:\n{out}");
    for name in [cp.clone(), w(1), w(2)] {
        assert!(
            out.contains(&format!("==> {name}:")),
            "{name} missing:\n{out}"
        );
    }
    assert!(!out.contains(&w(3)), "{out}");

    let too_many = (s.network.worker_ips.len() + 1).to_string();
    let (ok, out) = vagrant_validate(&vagrant, Some(&too_many), dotfile.path());
    assert!(
        !ok && out.contains("network.worker_ips"),
        "WORKERS={too_many}:\n{out}"
    );
    let (ok, out) = vagrant_validate(&vagrant, Some("two"), dotfile.path());
    assert!(
        !ok && out.contains("not a whole number"),
        "WORKERS=two:\n{out}"
    );

    // A worker created earlier stays in view when WORKERS is not repeated (ssh, destroy).
    let id = dotfile.path().join("machines").join(w(2)).join("libvirt");
    std::fs::create_dir_all(&id).unwrap();
    std::fs::write(id.join("id"), "0f1e2d").unwrap();
    let (ok, out) = vagrant_validate(&vagrant, None, dotfile.path());
    assert!(
        ok && out.contains(&format!("==> {}:", w(2))),
        "existing worker:\n{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// Running the scripts twice against a temporary root

/// Names the stand-in answers to (tests/fixtures/lab-stubs/stub.sh).
const STUBBED: &[&str] = &[
    "rpm",
    "dnf",
    "systemctl",
    "swapon",
    "swapoff",
    "modprobe",
    "sysctl",
    "getenforce",
    "containerd",
    "firewall-cmd",
    "kubeadm",
    "kubectl",
    "ip",
    "curl",
    "chown",
    "ctr",
    "sudo",
    "cargo",
    "pgset-lab",
];

/// Calls that only read: anything else changes the node.
fn reads_only(call: &str) -> bool {
    const READS: &[&str] = &[
        "rpm -q ",
        "systemctl is-enabled ",
        "systemctl is-active ",
        "swapon --show",
        "getenforce",
        "containerd config default",
        "dnf repolist",
        "kubeadm token list",
        "kubeadm config images list",
        "kubectl get ",
        "kubectl wait ",
        "ip -o -4 addr show",
    ];
    READS.iter().any(|r| call.starts_with(r))
        || (call.starts_with("firewall-cmd ") && call.contains("--query-source="))
        || (call.starts_with("sudo -u vagrant ") && call.ends_with("/rustc --version"))
}

/// A temporary node: a root tree the scripts edit, a state dir the stand-ins keep, and a bin dir
/// that puts the stand-ins first on PATH.
struct StubNode {
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    bin: tempfile::TempDir,
}

impl StubNode {
    fn new() -> StubNode {
        let node = StubNode {
            root: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            bin: tempfile::tempdir().unwrap(),
        };
        for name in STUBBED {
            std::os::unix::fs::symlink(stub_script(), node.bin.path().join(name)).unwrap();
        }
        node
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.root.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.path().join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Marks state the stand-ins report (e.g. `("swap", "on")`, `("rpm", "zram-generator")`).
    fn mark(&self, dir: &str, name: &str) {
        let d = self.state.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), "").unwrap();
    }

    /// Runs a lab script with the given settings; returns the calls it made to the stand-ins.
    fn run(&self, script: &str, env: &[(&str, String)]) -> Vec<String> {
        let script = scripts_dir().join(script).display().to_string();
        self.run_program("bash", &[script.as_str()], env);
        self.calls()
    }

    /// Runs a program with the stand-ins first on PATH; fails the test when it fails.
    fn run_program(&self, program: &str, args: &[&str], env: &[(&str, String)]) {
        let _ = std::fs::remove_file(self.state.path().join("calls.log"));
        let path = format!(
            "{}:{}",
            self.bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = pgset_command::HostCommand::new(program)
            .args(args)
            .env("PATH", path)
            .env("LAB_ROOT", self.root.path())
            .env("STUB_STATE", self.state.path())
            .quiet();
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.success(),
            "{program} {args:?} failed ({:?}):\n{}{}",
            out.status.code(),
            out.stdout,
            out.stderr
        );
    }

    /// The calls made to the stand-ins by the last run.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every file under the root and the stand-ins' state (but the call log), with contents.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    out.insert(p.strip_prefix(base).unwrap().to_path_buf(), Vec::new());
                    walk(base, &p, out);
                } else if p.file_name().is_none_or(|n| n != "calls.log") {
                    out.insert(
                        p.strip_prefix(base).unwrap().to_path_buf(),
                        std::fs::read(&p).unwrap(),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.root.path(), self.root.path(), &mut out);
        let mut state = BTreeMap::new();
        walk(self.state.path(), self.state.path(), &mut state);
        out.extend(
            state
                .into_iter()
                .map(|(p, c)| (Path::new("<state>").join(p), c)),
        );
        out
    }

    /// Runs the script a second time and checks it only read and left every file as it was.
    fn assert_second_run_changes_nothing(&self, script: &str, env: &[(&str, String)]) {
        let before = self.snapshot();
        let calls = self.run(script, env);
        let changes: Vec<&String> = calls.iter().filter(|c| !reads_only(c)).collect();
        assert!(
            changes.is_empty(),
            "{script}, second run changed: {changes:#?}"
        );
        let after = self.snapshot();
        let differ: Vec<&PathBuf> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        assert!(
            differ.is_empty(),
            "{script}, second run changed files: {differ:?}"
        );
    }
}

/// What the Vagrantfile passes a node's scripts: `worker` 0 is the control plane, 1.. workers.
fn node_env(s: &LabSettings, worker: usize) -> Vec<(&'static str, String)> {
    let cp = s.network.control_plane_ip;
    let (name, ip) = match worker {
        0 => (format!("{}-cp", s.name_prefix), cp),
        n => (
            format!("{}-w{n}", s.name_prefix),
            s.network.worker_ips[n - 1],
        ),
    };
    vec![
        ("LAB_NODE_NAME", name),
        ("LAB_NODE_IP", ip.to_string()),
        ("LAB_CONTROL_PLANE_IP", cp.to_string()),
        (
            "LAB_HOSTS",
            format!(
                "{cp}={}-cp {}={}-w1",
                s.name_prefix, s.network.worker_ips[0], s.name_prefix
            ),
        ),
        ("LAB_WORKERS", "1".to_string()),
        ("LAB_K8S_VERSION", s.kubernetes.version.clone()),
        ("LAB_POD_CIDR", s.kubernetes.pod_network_cidr.clone()),
        ("LAB_SERVICE_CIDR", s.kubernetes.service_cidr.clone()),
        ("LAB_FLANNEL_VERSION", s.flannel_version.clone()),
        ("LAB_SHARE", "/vagrant/vagrant/.lab".to_string()),
        ("LAB_REPLICAS", s.pgset.replicas.to_string()),
        ("LAB_STORAGE", s.pgset.storage.clone()),
    ]
}

fn assert_called(calls: &[String], expected: &str) {
    assert!(
        calls.iter().any(|c| c.starts_with(expected)),
        "expected a call starting with {expected:?} in {calls:#?}"
    );
}

#[test]
fn node_script_prepares_the_node_then_a_second_run_changes_nothing() {
    let s = settings();
    let node = StubNode::new();
    node.write(
        "etc/fstab",
        "UUID=1 / xfs defaults 0 0\n/dev/mapper/rl-swap none swap defaults 0 0\n",
    );
    node.write("etc/hosts", "127.0.0.1 localhost\n");
    node.mark("swap", "on");
    node.mark("rpm", "zram-generator");
    node.mark("active", "firewalld");
    let env = node_env(&s, 0);

    let calls = node.run("node.sh", &env);
    let v = &s.kubernetes.version;
    for expected in [
        "swapoff -a",
        "systemctl mask dev-zram0.swap",
        "modprobe overlay",
        "modprobe br_netfilter",
        "sysctl --system",
        "dnf install -y --disableexcludes=all containerd.io container-selinux",
        &format!("dnf install -y --disableexcludes=all kubelet-{v} kubeadm-{v} kubectl-{v}"),
        "dnf install -y --disableexcludes=all nfs-utils",
        "systemctl enable containerd",
        "systemctl start containerd",
        "systemctl enable kubelet",
        "firewall-cmd --permanent --zone=trusted --add-source=192.168.56.0/24",
        "firewall-cmd --reload",
    ] {
        assert_called(&calls, expected);
    }
    assert!(
        node.read("etc/fstab")
            .contains("# /dev/mapper/rl-swap none swap")
    );
    assert!(node.read("etc/hosts").contains(&format!(
        "{} {}-cp\n",
        s.network.control_plane_ip, s.name_prefix
    )));
    assert_eq!(node.read("etc/systemd/zram-generator.conf"), "");
    let containerd = node.read("etc/containerd/config.toml");
    assert!(containerd.contains("SystemdCgroup = true"), "{containerd}");
    assert!(
        containerd.contains("sandbox_image = \"registry.k8s.io/pause:3.10.1\""),
        "{containerd}"
    );
    assert_eq!(
        node.read("etc/sysconfig/kubelet"),
        format!(
            "KUBELET_EXTRA_ARGS=--node-ip={}\n",
            s.network.control_plane_ip
        )
    );
    let repo = node.read("etc/yum.repos.d/kubernetes.repo");
    let (major, minor, _) = release(v).unwrap();
    assert!(repo.contains(&format!("/core:/stable:/v{major}.{minor}/rpm/")));
    assert!(repo.contains("exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni"));
    assert_eq!(node.read("proc/sys/net/ipv4/ip_forward"), "1\n");

    node.assert_second_run_changes_nothing("node.sh", &env);
}

#[test]
fn control_plane_script_inits_once_then_a_second_run_changes_nothing() {
    let s = settings();
    let node = StubNode::new();
    let env = node_env(&s, 0);

    let calls = node.run("control-plane.sh", &env);
    assert_called(
        &calls,
        &format!(
            "kubeadm init --kubernetes-version v{} --apiserver-advertise-address {}",
            s.kubernetes.version, s.network.control_plane_ip
        ),
    );
    assert_called(&calls, "kubectl taint node");
    assert_called(&calls, "kubectl apply -f");
    assert_called(&calls, "kubeadm token create");
    let flannel = node.read("var/lib/pgset-lab/kube-flannel.yml");
    assert!(
        flannel.contains("- --kube-subnet-mgr\n        - --iface=eth1\n"),
        "Flannel is bound to the private interface:\n{flannel}"
    );
    assert!(flannel.contains(&format!(
        "\"Network\": \"{}\"",
        s.kubernetes.pod_network_cidr
    )));
    let join = node.read("vagrant/vagrant/.lab/join-command");
    assert!(join.starts_with("kubeadm join "), "{join}");
    assert!(
        node.read("home/vagrant/.kube/config")
            .contains("admin kubeconfig")
    );

    node.assert_second_run_changes_nothing("control-plane.sh", &env);
}

#[test]
fn worker_script_joins_and_imports_once_then_a_second_run_changes_nothing() {
    let s = settings();
    let node = StubNode::new();
    node.write(
        "vagrant/vagrant/.lab/join-command",
        "kubeadm join 192.168.56.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:0123\n",
    );
    node.write("vagrant/vagrant/.lab/pgset-agent.oci.tar", "archive v1");
    let env = node_env(&s, 1);

    let calls = node.run("worker.sh", &env);
    assert_called(
        &calls,
        &format!(
            "kubeadm join 192.168.56.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:0123 --node-name {}-w1",
            s.name_prefix
        ),
    );
    assert_called(&calls, "ctr -n k8s.io images import");
    node.assert_second_run_changes_nothing("worker.sh", &env);

    // A rebuilt archive is imported again, and only it.
    node.write("vagrant/vagrant/.lab/pgset-agent.oci.tar", "archive v2");
    let calls = node.run("worker.sh", &env);
    let changes: Vec<&String> = calls.iter().filter(|c| !reads_only(c)).collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].starts_with("ctr -n k8s.io images import"));
}

#[test]
fn toolchain_script_installs_once_and_its_wrapper_passes_the_lab_spec() {
    let s = settings();
    let node = StubNode::new();
    let repo = tempfile::tempdir().unwrap();
    let mut env = node_env(&s, 0);
    env.push(("LAB_REPO", repo.path().display().to_string()));

    let calls = node.run("toolchain.sh", &env);
    assert_called(&calls, "dnf config-manager --set-enabled crb");
    assert_called(
        &calls,
        "dnf install -y --disableexcludes=all dnf-plugins-core",
    );
    assert_called(
        &calls,
        "dnf install -y --disableexcludes=all gcc glibc-static",
    );
    assert_called(
        &calls,
        "sudo -u vagrant -H sh -s -- -y --profile minimal --default-toolchain stable",
    );
    assert!(
        node.read("etc/pgset-lab/pgset.yaml")
            .contains(&format!("server: {}", s.network.control_plane_ip))
    );
    node.assert_second_run_changes_nothing("toolchain.sh", &env);

    // The wrapper adds the lab's spec to the tasks that read one, and runs in the repository.
    let wrapper = node.root.path().join("usr/local/bin/pgset-lab");
    let wrapper = wrapper.to_str().expect("a UTF-8 temporary path");
    let run_wrapper = |args: &[&str]| {
        node.run_program(wrapper, args, &[]);
        node.calls()
    };
    assert_eq!(
        run_wrapper(&["verify", "--output", "json"]),
        vec!["cargo xtask verify --config /etc/pgset-lab/pgset.yaml --output json"]
    );
    assert_eq!(
        run_wrapper(&["image", "--out", "/x.tar"]),
        vec!["cargo xtask image --config /etc/pgset-lab/pgset.yaml --out /x.tar"]
    );
    assert_eq!(run_wrapper(&["render"]), vec!["cargo xtask render"]);
    let cwd = std::fs::read_to_string(node.state.path().join("cargo-cwd")).unwrap();
    assert!(cwd.lines().all(|l| Path::new(l) == repo.path()), "{cwd}");
}

#[test]
fn pgset_script_runs_up_once_every_node_is_ready() {
    let s = settings();
    let node = StubNode::new();
    let mut env = node_env(&s, 0);
    for (key, value) in &mut env {
        if *key == "LAB_WORKERS" {
            *value = "0".to_string();
        }
    }
    let calls = node.run("pgset.sh", &env);
    assert_eq!(
        calls,
        vec![
            "kubectl get nodes --no-headers",
            "kubectl wait --for=condition=Ready nodes --all --timeout=300s",
            "pgset-lab up",
        ]
    );
}

#[test]
fn image_script_leaves_the_archive_where_workers_import_it() {
    let s = settings();
    let node = StubNode::new();
    let env = node_env(&s, 0);
    let share = &env.iter().find(|(k, _)| *k == "LAB_SHARE").unwrap().1;
    let calls = node.run("image.sh", &env);
    let archive = format!("{share}/pgset-agent.oci.tar");
    assert_eq!(
        calls,
        vec![format!("pgset-lab image --out {archive} --import")]
    );
    let worker = std::fs::read_to_string(scripts_dir().join("worker.sh")).unwrap();
    assert!(
        worker.contains("archive=\"$ROOT$LAB_SHARE/pgset-agent.oci.tar\""),
        "worker.sh imports another file than image.sh writes"
    );
}
