//! `cargo xtask vagrant`: the Vagrant lab in `vagrant/` driven from the host — bring it up, run
//! the end-to-end verification inside it, open a shell on a node, destroy it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use pgset_command::HostCommand;
use pgset_verify::{Report, Verdict};
use serde::Deserialize;

use crate::cli::{Stage, require_checkout, workspace_root};

/// `cargo xtask up` inside the control plane, through the lab's wrapper.
const UP_IN_LAB: &str = "sudo pgset-lab up";
/// The command the end-to-end run executes inside the control plane (`pgset-lab` is the lab's
/// wrapper around `cargo xtask` with the cluster's kubeconfig and the lab's spec).
const VERIFY_IN_LAB: &str = "sudo pgset-lab verify --scale-test --disruptive --output json";

/// Arguments of `cargo xtask vagrant`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Create and provision the VMs: kubeadm, Flannel, NFS, then `cargo xtask up` inside
    Up(UpArgs),
    /// Up, then `up` and `verify --scale-test --disruptive --output json` inside; prints the
    /// report and exits non-zero when a check failed; destroys the VMs it created unless --keep
    E2e(E2eArgs),
    /// A shell on a node (default: the control plane), or one command there with -c
    Ssh(SshArgs),
    /// Destroy the lab's VMs (Vagrant asks for each unless --yes)
    Destroy(DestroyArgs),
}

/// Where the lab runs: worker count and provider.
#[derive(Debug, Clone, clap::Args)]
struct LabArgs {
    /// Worker nodes besides the control plane [default: `workers` in vagrant/settings.yaml]
    #[arg(long, env = "WORKERS", value_name = "N")]
    workers: Option<u32>,
    /// Vagrant provider [default: $VAGRANT_DEFAULT_PROVIDER, else the first usable of
    /// virtualbox, libvirt]
    #[arg(long, value_enum)]
    provider: Option<Provider>,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    lab: LabArgs,
}

#[derive(Debug, clap::Args)]
struct E2eArgs {
    #[command(flatten)]
    lab: LabArgs,
    /// Keep the VMs after the run (they are destroyed otherwise, when this run created them)
    #[arg(long)]
    keep: bool,
    /// Where to write the JSON report [default: target/vagrant-e2e-report.json]
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SshArgs {
    /// Node to log into (`<prefix>-cp`, `<prefix>-w1`, ...) [default: the control plane]
    node: Option<String>,
    /// Run this command instead of a login shell
    #[arg(short = 'c', long, value_name = "COMMAND")]
    command: Option<String>,
    #[command(flatten)]
    lab: LabArgs,
}

#[derive(Debug, clap::Args)]
struct DestroyArgs {
    /// Destroy without asking
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    lab: LabArgs,
}

/// The Vagrant providers the lab's Vagrantfile configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Provider {
    Virtualbox,
    Libvirt,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Virtualbox => "virtualbox",
            Provider::Libvirt => "libvirt",
        }
    }

    fn parse(name: &str) -> Option<Provider> {
        match name {
            "virtualbox" => Some(Provider::Virtualbox),
            "libvirt" => Some(Provider::Libvirt),
            _ => None,
        }
    }
}

/// The values of `vagrant/settings.yaml` the host side needs (the Vagrantfile reads the rest).
#[derive(Debug, Deserialize)]
struct LabSettings {
    name_prefix: String,
    workers: u32,
}

/// The lab directory, its settings and the environment every `vagrant` call gets.
struct Lab {
    /// The `vagrant` executable.
    program: PathBuf,
    dir: PathBuf,
    settings: LabSettings,
    /// Passed as WORKERS; when `None` the Vagrantfile takes settings.yaml's value and keeps
    /// workers that already exist in view (for ssh and destroy).
    workers: Option<u32>,
}

impl Lab {
    /// The lab as `up` and `e2e` make it: the worker count is always explicit.
    fn for_up(args: &LabArgs) -> Result<Lab> {
        let mut lab = Lab::load(args)?;
        lab.workers = Some(lab.worker_count());
        Ok(lab)
    }

    fn load(args: &LabArgs) -> Result<Lab> {
        let dir = require_checkout("the Vagrant lab")?.join("vagrant");
        let path = dir.join("settings.yaml");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let settings: LabSettings =
            serde_saphyr::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        Ok(Lab {
            program: vagrant_program()?,
            dir,
            settings,
            workers: args.workers,
        })
    }

    fn control_plane(&self) -> String {
        format!("{}-cp", self.settings.name_prefix)
    }

    fn worker_count(&self) -> u32 {
        self.workers.unwrap_or(self.settings.workers)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("VAGRANT_CWD", self.dir.display().to_string())];
        if let Some(n) = self.workers {
            env.push(("WORKERS", n.to_string()));
        }
        env
    }

    fn command<I, S>(&self, args: I) -> HostCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.env()
            .iter()
            .fold(HostCommand::new(&self.program).args(args), |cmd, (k, v)| {
                cmd.env(k, v)
            })
    }

    /// Runs `vagrant ARGS` with the terminal attached (provisioning output, prompts, shells).
    fn attached(&self, args: &[&str]) -> Result<()> {
        self.command(args.iter().copied()).run_attached()?;
        Ok(())
    }

    /// The lab's machines and their states, from `vagrant status --machine-readable`.
    fn machine_states(&self) -> Result<Vec<(String, String)>> {
        let out = self
            .command(["status", "--machine-readable"])
            .read()
            .context("read the lab's machine states")?;
        Ok(parse_machine_states(&out))
    }
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    match args.command {
        LabCommand::Up(a) => {
            let lab = Lab::for_up(&a.lab)?;
            let provider = usable_provider(a.lab.provider)?;
            up(&lab, provider)
        }
        LabCommand::E2e(a) => e2e(a),
        LabCommand::Ssh(a) => {
            let lab = Lab::load(&a.lab)?;
            let node = a.node.unwrap_or_else(|| lab.control_plane());
            match &a.command {
                Some(c) => lab.attached(&["ssh", &node, "-c", c]),
                None => lab.attached(&["ssh", &node]),
            }
        }
        LabCommand::Destroy(a) => {
            let lab = Lab::load(&a.lab)?;
            if a.yes {
                lab.attached(&["destroy", "--force"])
            } else {
                lab.attached(&["destroy"])
            }
        }
    }
}

/// The `vagrant` executable on PATH, or an error saying what to install.
fn vagrant_program() -> Result<PathBuf> {
    which::which("vagrant").map_err(|_| {
        anyhow::anyhow!(
            "`vagrant` not found: install Vagrant (2.3 or newer) and a provider — VirtualBox, or \
             libvirt with the vagrant-libvirt plugin"
        )
    })
}

/// The provider to bring the lab up with: the one asked for (checked), else
/// $VAGRANT_DEFAULT_PROVIDER (checked), else the first usable one.
fn usable_provider(asked: Option<Provider>) -> Result<Provider> {
    let from_env = std::env::var("VAGRANT_DEFAULT_PROVIDER")
        .ok()
        .filter(|v| !v.is_empty());
    let wanted = match (asked, from_env) {
        (Some(p), _) => Some(p),
        (None, Some(name)) => Some(Provider::parse(&name).with_context(|| {
            format!(
                "VAGRANT_DEFAULT_PROVIDER={name} is not a provider the lab configures: use \
                 virtualbox or libvirt"
            )
        })?),
        (None, None) => None,
    };
    match wanted {
        Some(p) => provider_problem(p).map_or(Ok(p), |why| {
            Err(anyhow::anyhow!("provider {}: {why}", p.name()))
        }),
        None => [Provider::Virtualbox, Provider::Libvirt]
            .into_iter()
            .find(|p| provider_problem(*p).is_none())
            .context(
                "no usable Vagrant provider: install VirtualBox (VBoxManage on PATH), or libvirt \
                 (virsh on PATH) with `vagrant plugin install vagrant-libvirt`",
            ),
    }
}

/// Why a provider cannot be used on this host, or `None` when it can.
fn provider_problem(p: Provider) -> Option<String> {
    match p {
        Provider::Virtualbox => which::which("VBoxManage")
            .is_err()
            .then(|| "VBoxManage not found: install VirtualBox".to_string()),
        Provider::Libvirt => {
            if which::which("virsh").is_err() {
                return Some(
                    "virsh not found: install libvirt (libvirt-daemon-system, libvirt-clients)"
                        .into(),
                );
            }
            let plugins = HostCommand::new("vagrant")
                .args(["plugin", "list"])
                .quiet()
                .output();
            match plugins {
                Ok(out) if out.stdout.contains("vagrant-libvirt") => None,
                Ok(_) => Some(
                    "the vagrant-libvirt plugin is missing: vagrant plugin install vagrant-libvirt"
                        .into(),
                ),
                Err(e) => Some(format!("cannot list Vagrant plugins: {e}")),
            }
        }
    }
}

fn up(lab: &Lab, provider: Provider) -> Result<()> {
    let stage = Stage::start(format!(
        "lab up: {} + {} worker(s) on {}",
        lab.control_plane(),
        lab.worker_count(),
        provider.name()
    ));
    lab.attached(&["up", "--provider", provider.name()])
        .context("bring the lab's VMs up and provision them")?;
    if lab.worker_count() > 0 {
        // With workers, the control plane's `pgset` step waits for them: it runs last.
        lab.attached(&[
            "provision",
            &lab.control_plane(),
            "--provision-with",
            "pgset",
        ])
        .context("run `cargo xtask up` on the control plane once the workers joined")?;
    }
    stage.done("");
    eprintln!(
        "    connect: cargo xtask vagrant ssh, then `sudo pgset-lab status` (see vagrant/README.md)"
    );
    Ok(())
}

fn e2e(args: E2eArgs) -> Result<()> {
    let lab = Lab::for_up(&args.lab)?;
    let provider = usable_provider(args.lab.provider)?;
    e2e_lab(&lab, provider, args.keep, args.report.as_deref())
}

/// The end-to-end run on `lab`; destroys the VMs afterwards when it created them, unless `keep`.
fn e2e_lab(lab: &Lab, provider: Provider, keep: bool, report: Option<&Path>) -> Result<()> {
    let existed = lab
        .machine_states()?
        .iter()
        .any(|(_, state)| state != "not_created");
    let result = e2e_on(lab, provider, report);
    if keep {
        eprintln!("    kept the lab (--keep): cargo xtask vagrant destroy removes it");
        return result;
    }
    if existed {
        eprintln!("    the lab existed before this run: kept (cargo xtask vagrant destroy)");
        return result;
    }
    let stage = Stage::start("lab destroy");
    let destroyed = lab
        .attached(&["destroy", "--force"])
        .context("destroy the VMs this run created");
    match (result, destroyed) {
        (result, Ok(())) => {
            stage.done("");
            result
        }
        (Ok(()), Err(e)) => Err(e),
        // The run's own failure comes first; the failed clean-up is said beside it.
        (Err(run), Err(e)) => Err(anyhow::anyhow!("{run:#}; then, clean-up failed too: {e:#}")),
    }
}

fn e2e_on(lab: &Lab, provider: Provider, report_path: Option<&Path>) -> Result<()> {
    up(lab, provider)?;
    let cp = lab.control_plane();
    // Provisioning ran `cargo xtask up` on a new lab (this run then shows it changes nothing);
    // a lab that was already up gets it here.
    let stage = Stage::start("cargo xtask up inside the lab");
    lab.attached(&["ssh", &cp, "--no-tty", "-c", UP_IN_LAB])
        .context("run `cargo xtask up` on the control plane")?;
    stage.done("");
    let stage = Stage::start("verify inside the lab");
    let cmd = lab.command(["ssh", cp.as_str(), "--no-tty", "-c", VERIFY_IN_LAB]);
    let out = cmd.output()?;
    // The lab's progress (stderr), then the report (stdout) judged below.
    eprint!("{}", out.stderr);
    let stdout = &out.stdout;
    let report = extract_report(stdout).with_context(|| {
        format!(
            "`{cmd}` ({}) printed no JSON report; its stdout was:\n{}",
            pgset_command::status_words(out.status),
            stdout.trim()
        )
    })?;
    let pretty = serde_json::to_string_pretty(&report).context("format the report")?;
    let path = report_path.map(Path::to_path_buf).unwrap_or_else(|| {
        workspace_root()
            .join("target")
            .join("vagrant-e2e-report.json")
    });
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(&path, format!("{pretty}\n"))
        .with_context(|| format!("write the report to {}", path.display()))?;
    println!("{pretty}");
    let report: Report = serde_json::from_value(report).context(
        "the lab's verify printed JSON that is not a verify report (pgset_verify::Report)",
    )?;
    let counts = report_outcome(&report)?;
    stage.done(&format!("{counts} (report: {})", path.display()));
    if !out.status.success() {
        bail!(
            "verify exited with {} although its report shows no failed check",
            pgset_command::status_words(out.status)
        );
    }
    Ok(())
}

/// A verify report's outcome: its counts when it passed, else which checks failed. A report
/// whose `passed` is false, or that holds no checks, fails too.
fn report_outcome(report: &Report) -> Result<String> {
    let count = |v: Verdict| report.checks.iter().filter(|c| c.verdict == v).count();
    let counts = format!(
        "{} passed, {} failed, {} skipped",
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Skipped)
    );
    let failed: Vec<&str> = report.failed().map(|c| c.name.as_str()).collect();
    if !failed.is_empty() {
        bail!("checks failed in the lab ({counts}): {}", failed.join(", "));
    }
    if !report.passed {
        bail!("the lab's verify report says it did not pass ({counts})");
    }
    if report.checks.is_empty() {
        bail!("the lab's verify report holds no checks");
    }
    Ok(counts)
}

/// `(machine, state)` pairs from `vagrant status --machine-readable` lines
/// (`timestamp,target,type,data...`).
fn parse_machine_states(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(4, ',');
            let (_ts, target, kind, data) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            (kind == "state" && !target.is_empty()).then(|| (target.to_string(), data.to_string()))
        })
        .collect()
}

/// The JSON report in verify's stdout: the whole output, or failing that the first line that
/// starts a JSON document up to the end (anything printed before it is ignored).
fn extract_report(stdout: &str) -> Option<serde_json::Value> {
    let trimmed = stdout.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    let mut offset = 0;
    for line in stdout.split_inclusive('\n') {
        let t = line.trim_start();
        if (t.starts_with('{') || t.starts_with('['))
            && let Ok(v) = serde_json::from_str(stdout[offset..].trim())
        {
            return Some(v);
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn machine_states_come_from_state_lines_only() {
        let text = "1700000000,pgset-cp,metadata,provider,virtualbox\n\
                    1700000000,pgset-cp,state,not_created\n\
                    1700000000,pgset-w1,state,running\n\
                    1700000000,,ui,info,Current machine states:\n";
        assert_eq!(
            parse_machine_states(text),
            vec![
                ("pgset-cp".to_string(), "not_created".to_string()),
                ("pgset-w1".to_string(), "running".to_string())
            ]
        );
    }

    /// A report in verify's JSON shape (see pgset_verify::report).
    fn report(passed: bool, verdicts: &[(&str, &str)]) -> Report {
        let checks: Vec<serde_json::Value> = verdicts
            .iter()
            .map(|(name, verdict)| {
                json!({"name": name, "verdict": verdict, "duration_ms": 12, "message": "seen"})
            })
            .collect();
        serde_json::from_value(json!({
            "cluster": "pgset", "namespace": "default", "passed": passed,
            "duration_ms": 345, "checks": checks,
        }))
        .expect("verify's report shape")
    }

    #[test]
    fn a_report_with_a_failed_check_fails_and_names_it() {
        let r = report(
            false,
            &[
                ("pods-ready", "pass"),
                ("streaming", "fail"),
                ("scale", "skipped"),
            ],
        );
        let err = report_outcome(&r).unwrap_err().to_string();
        assert!(
            err.contains("streaming") && !err.contains("pods-ready"),
            "{err}"
        );
        assert!(err.contains("1 passed, 1 failed, 1 skipped"), "{err}");
    }

    #[test]
    fn a_report_that_did_not_pass_or_holds_no_checks_fails() {
        assert!(report_outcome(&report(false, &[("a", "pass")])).is_err());
        assert!(report_outcome(&report(true, &[])).is_err());
    }

    #[test]
    fn a_passing_report_passes_with_its_counts() {
        let r = report(true, &[("a", "pass"), ("b", "skipped")]);
        assert_eq!(report_outcome(&r).unwrap(), "1 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn json_that_is_not_a_verify_report_is_refused() {
        let not_a_report = json!({"checks": [{"name": "a", "verdict": "maybe"}]});
        assert!(serde_json::from_value::<Report>(not_a_report).is_err());
    }

    #[test]
    fn the_report_is_found_after_stray_lines() {
        let out = "Warning: Permanently added '192.168.56.10'\n{\n  \"checks\": []\n}\n";
        assert_eq!(extract_report(out), Some(json!({"checks": []})));
        assert_eq!(extract_report("[1]"), Some(json!([1])));
        assert_eq!(extract_report("no json here\n"), None);
    }

    /// A `vagrant` stand-in: records each call (with WORKERS) in `calls.log`, answers `status`
    /// with `state`, and answers the verify command with `report` and exit status `verify_exit`.
    struct FakeVagrant {
        dir: tempfile::TempDir,
    }

    impl FakeVagrant {
        fn new(state: &str, report: &str, verify_exit: i32) -> FakeVagrant {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().display();
            std::fs::write(dir.path().join("report.json"), report).unwrap();
            let script = format!(
                "#!/bin/sh\n\
                 printf '%s|%s\\n' \"${{WORKERS:-}}\" \"$*\" >>{d}/calls.log\n\
                 case \"$1\" in\n\
                 status) echo '1700000000,pgset-cp,metadata,provider,virtualbox'; \
                         echo '1700000000,pgset-cp,state,{state}' ;;\n\
                 ssh) case \"$*\" in *verify*) cat {d}/report.json; exit {verify_exit} ;; esac ;;\n\
                 esac\n"
            );
            let program = dir.path().join("vagrant");
            std::fs::write(&program, script).unwrap();
            let mut perms = std::fs::metadata(&program).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&program, perms).unwrap();
            FakeVagrant { dir }
        }

        fn lab(&self, workers: u32) -> Lab {
            Lab {
                program: self.dir.path().join("vagrant"),
                dir: self.dir.path().to_path_buf(),
                settings: LabSettings {
                    name_prefix: "pgset".into(),
                    workers: 0,
                },
                workers: Some(workers),
            }
        }

        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("calls.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        }

        fn report_path(&self) -> PathBuf {
            self.dir.path().join("out").join("e2e.json")
        }

        /// `cargo xtask vagrant e2e` on a single-node lab, with `--keep` when `keep`.
        fn e2e(&self, provider: Provider, keep: bool) -> Result<()> {
            e2e_lab(&self.lab(0), provider, keep, Some(&self.report_path()))
        }
    }

    fn report_json(passed: bool, verdict: &str) -> String {
        json!({"cluster": "pgset", "namespace": "default", "passed": passed, "duration_ms": 9,
               "checks": [{"name": "streaming", "verdict": verdict, "duration_ms": 3,
                           "message": "2 replicas streaming"}]})
        .to_string()
    }

    const VERIFY_CALL: &str =
        "0|ssh pgset-cp --no-tty -c sudo pgset-lab verify --scale-test --disruptive --output json";

    #[test]
    fn e2e_on_a_new_lab_runs_up_and_verify_inside_then_destroys_it() {
        let fake = FakeVagrant::new("not_created", &report_json(true, "pass"), 0);
        let report = fake.report_path();
        e2e_lab(&fake.lab(0), Provider::Virtualbox, false, Some(&report)).unwrap();
        assert_eq!(
            fake.calls(),
            vec![
                "0|status --machine-readable",
                "0|up --provider virtualbox",
                "0|ssh pgset-cp --no-tty -c sudo pgset-lab up",
                VERIFY_CALL,
                "0|destroy --force",
            ]
        );
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(written["checks"][0]["name"], "streaming");
    }

    #[test]
    fn e2e_fails_on_a_failed_check_and_still_destroys_what_it_created() {
        let fake = FakeVagrant::new("not_created", &report_json(false, "fail"), 1);
        let err = fake.e2e(Provider::Libvirt, false).unwrap_err();
        assert!(format!("{err:#}").contains("streaming"), "{err:#}");
        assert_eq!(fake.calls().last().unwrap(), "0|destroy --force");
        assert!(fake.report_path().exists(), "the failing report is kept");
    }

    #[test]
    fn e2e_fails_when_verify_fails_without_a_failed_check_or_prints_no_report() {
        let fake = FakeVagrant::new("not_created", &report_json(true, "pass"), 3);
        let err = fake.e2e(Provider::Virtualbox, false).unwrap_err();
        assert!(format!("{err:#}").contains("exit status 3"), "{err:#}");

        let fake = FakeVagrant::new("not_created", "error: no kubeconfig\n", 1);
        let err = fake.e2e(Provider::Virtualbox, false).unwrap_err();
        assert!(
            format!("{err:#}").contains("printed no JSON report"),
            "{err:#}"
        );
        assert_eq!(fake.calls().last().unwrap(), "0|destroy --force");
    }

    #[test]
    fn e2e_never_destroys_a_lab_that_existed_or_one_it_was_told_to_keep() {
        let fake = FakeVagrant::new("running", &report_json(false, "fail"), 1);
        assert!(fake.e2e(Provider::Virtualbox, false).is_err());
        assert!(
            !fake.calls().iter().any(|c| c.contains("destroy")),
            "{:?}",
            fake.calls()
        );

        let fake = FakeVagrant::new("not_created", &report_json(true, "pass"), 0);
        fake.e2e(Provider::Virtualbox, true).unwrap();
        assert!(
            !fake.calls().iter().any(|c| c.contains("destroy")),
            "{:?}",
            fake.calls()
        );
    }

    #[test]
    fn with_workers_up_runs_the_pgset_step_after_they_joined() {
        let fake = FakeVagrant::new("not_created", &report_json(true, "pass"), 0);
        up(&fake.lab(2), Provider::Virtualbox).unwrap();
        assert_eq!(
            fake.calls(),
            vec![
                "2|up --provider virtualbox",
                "2|provision pgset-cp --provision-with pgset",
            ]
        );
    }
}
