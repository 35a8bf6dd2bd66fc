//! `cargo xtask up`: preflight, NFS host, volumes, NFS path checks, agent image, deploy and
//! rollout, verify.
//!
//! Each stage is also a command of its own (`nfs`, `volumes`, `doctor`, `image`, `deploy`,
//! `verify`); `up`
//! runs them in order with the same spec and client flags, one progress line per stage, and
//! stops at the first failure saying which stage failed, what was already done, and what to do.
//! Every stage is idempotent, so re-running `up` after fixing the cause picks up where it
//! stopped, and a re-run on a finished cluster changes nothing.
//!
//! Every line goes to stderr; with `-v` the deploy stage ends with each member's timeline, and
//! `--output json` prints the rollout with its timeline on stdout (as `deploy` does), so any
//! run shows where its time went.

mod preflight;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgset_spec::{ClusterSpec, StorageMode, default_agent_image};

use crate::args::{ClientArgs, DryRun, DryRunArg, Output, ProbeArgs, SpecArgs, WaitArgs};
use crate::context::{Gathered, RunContext};
use crate::progress::Reporter;
use pgset_command::steps::{self, Ended};

/// How often a line says a long stage still runs (on a terminal, the rollout's live lines show
/// the time instead).
const TICK_EVERY: Duration = Duration::from_secs(15);

/// Arguments of `cargo xtask up`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("dry_run", |a| a.help("Change nothing: print every host step and every object (client, the default), or also have the API server check the volumes and objects (server)")))]
pub struct Args {
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Show more: each pod's full state while the rollout waits, the NFS stage's probes
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// json: print the rollout (each member's seconds to Ready, the total) and each member's
    /// timeline as JSON on stdout once `up` finished (every other line goes to stderr)
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Leave the NFS host alone (it is provisioned already, or is another machine): no NFS
    /// stage and no host checks (the per-node mount probe still runs)
    #[arg(long)]
    pub skip_nfs: bool,
    /// Do not build and import the agent image (it comes from a registry: --agent-image)
    #[arg(long)]
    pub skip_image: bool,
    /// Do not run the checks after the rollout
    #[arg(long)]
    pub skip_verify: bool,
    /// Hosts allowed to mount the export (see `cargo xtask nfs --help`)
    #[arg(long, value_name = "CIDR,...")]
    pub clients: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageName {
    Nfs,
    Volumes,
    Doctor,
    Image,
    Deploy,
    Verify,
}

impl StageName {
    fn label(self) -> &'static str {
        match self {
            StageName::Nfs => "NFS host",
            StageName::Volumes => "volumes",
            StageName::Doctor => "NFS path checks",
            StageName::Image => "agent image",
            StageName::Deploy => "deploy and rollout",
            StageName::Verify => "verify",
        }
    }

    /// What to do when the stage failed, beyond the error itself.
    fn advice(self) -> String {
        let program = pgset_spec::contract::program_name();
        match self {
            StageName::Nfs => {
                "fix the host (see the error), or provision NFS yourself and pass --skip-nfs".into()
            }
            StageName::Volumes => {
                "check the NFS server address (--nfs-server) and `kubectl get pv`".into()
            }
            StageName::Doctor => format!(
                "fix what the findings above name (`{program} doctor` runs the checks on their own)"
            ),
            StageName::Image => format!(
                "run `{program} image --import` on its own to see the build, or use a registry image with --agent-image and --skip-image"
            ),
            StageName::Deploy => format!(
                "`{program} status` and `kubectl describe pod` show why a member is not Ready"
            ),
            StageName::Verify => format!("`{program} verify` runs the checks again on their own"),
        }
    }
}

/// Which stages run for this spec and these flags.
fn stages(spec: &ClusterSpec, args: &Args) -> Vec<StageName> {
    let mut out = Vec::new();
    if !args.skip_nfs && spec.storage.storage_class.is_none() {
        out.push(StageName::Nfs);
    }
    if spec.storage.storage_class.is_none() {
        out.push(StageName::Volumes);
        // The host checks need this host to be the NFS host; the mount probe needs neither.
        if !args.skip_nfs || !args.probe.no_mount_probe {
            out.push(StageName::Doctor);
        }
    }
    if builds_image(spec, args) {
        out.push(StageName::Image);
    }
    out.push(StageName::Deploy);
    if !args.skip_verify {
        out.push(StageName::Verify);
    }
    out
}

/// The image is built and imported unless skipped or the spec names another image.
fn builds_image(spec: &ClusterSpec, args: &Args) -> bool {
    !args.skip_image && spec.agent.image == default_agent_image()
}

/// Runs the whole flow.
pub async fn run(args: Args) -> Result<()> {
    let reporter = Reporter::for_stages(args.verbose).install();
    execute(&args, reporter).await
}

/// The whole flow on one [`RunContext`]: the spec is loaded once and the client built once
/// (by preflight); what preflight read (the nodes, this NFS host's plan, whether `ctr` is here)
/// is handed to the stages, and every line goes through `reporter`.
async fn execute(args: &Args, reporter: Reporter) -> Result<()> {
    let started = Instant::now();
    let spec = args.spec.load(&args.client)?;
    if let Some(c) = &args.clients {
        pgset_nfs::parse_clients(c).context("--clients")?;
    }
    let plan = stages(&spec, args);
    let host_steps = plan.contains(&StageName::Nfs) || plan.contains(&StageName::Image);
    let mut ctx = RunContext::new(
        spec,
        args.client.clone(),
        args.dry_run.mode,
        reporter.clone(),
    );

    // Preflight: read-only, before anything changes.
    let t = Instant::now();
    reporter.line(&steps::header(
        &format!("[preflight] {}", describe(ctx.spec())),
        None,
        "",
    ));
    let ticker = reporter.ticker("preflight", TICK_EVERY);
    let cluster = match ctx.client().await {
        Ok(_) => true,
        Err(e) if args.dry_run.mode == Some(DryRun::Client) => {
            reporter.line(&format!(
                "    note: no cluster checks in this dry run: {e:#}"
            ));
            false
        }
        Err(e) => return Err(e.context("preflight: connect to the cluster")),
    };
    let mut facts =
        preflight::gather(&ctx, cluster, host_steps, plan.contains(&StageName::Image)).await?;
    *ctx.gathered_mut() = Gathered {
        nfs_host: None,
        ctr_here: Some(facts.ctr_here),
    };
    if plan.contains(&StageName::Nfs) {
        let probes = pgset_command::Executor {
            dry_run: args.dry_run.is_set(),
            log_probes: args.verbose,
        };
        let host = ctx
            .plan_nfs_host(args.clients.as_deref(), &probes)
            .await
            .map_err(|e| format!("{e:#}"));
        facts.nfs_host = Some(match &host {
            Ok(h) => Ok(h.blockers().iter().map(ToString::to_string).collect()),
            Err(e) => Err(e.clone()),
        });
        ctx.gathered_mut().nfs_host = Some(host);
    }
    drop(ticker);
    let findings = preflight::worded(ctx.spec(), &facts);
    for f in &findings {
        reporter.line(&format!("    {f}"));
    }
    let blockers = findings.iter().filter(|f| f.blocker).count();
    if blockers > 0 && !args.dry_run.is_set() {
        bail!(
            "preflight found {blockers} blocker(s) (listed above); nothing was changed. Fix them and run `{} up` again",
            pgset_spec::contract::program_name()
        );
    }
    if let Some(Ok(v)) = &facts.cluster_version {
        let ready = facts.nodes.iter().filter(|n| n.ready).count();
        reporter.line(&format!(
            "    Kubernetes {v}, {ready}/{} node(s) Ready",
            facts.nodes.len()
        ));
    }
    reporter.line(&steps::done("preflight", t.elapsed(), ""));

    let mut runner = Runner::new(reporter.clone(), args.dry_run.mode, plan.len());
    let rollout = std::sync::Mutex::new(None);
    for stage in plan.iter().copied() {
        runner
            .run(stage, run_stage(stage, &ctx, args, &rollout))
            .await?;
    }
    runner.summary(started.elapsed());
    let rollout = rollout.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(json) = json_output(args, rollout.as_ref()) {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if args.dry_run.is_set() {
        reporter.line("dry run: nothing was changed");
        if blockers > 0 {
            bail!(
                "preflight found {blockers} blocker(s) (listed at the top) that would stop a real run"
            );
        }
    } else {
        reporter.line("");
        // The master the cluster names (its leader Lease, else ordinal 0), never assumed.
        let master = match ctx.client().await {
            Ok(client) => pgset_deploy::master::read_master(client, ctx.spec())
                .await
                .ok()
                .and_then(|v| v.master),
            Err(_) => None,
        };
        for line in connect_help(ctx.spec(), master.as_deref()).lines() {
            reporter.line(line);
        }
    }
    Ok(())
}

/// Runs the stages in order and owns what is said about them: the numbered header, a line now
/// and then while one runs, its time, the failure report (what failed, what was done before
/// it, what to do) and the summary.
struct Runner {
    reporter: Reporter,
    dry_run: Option<DryRun>,
    total: usize,
    done: Vec<(StageName, Duration)>,
}

impl Runner {
    fn new(reporter: Reporter, dry_run: Option<DryRun>, total: usize) -> Runner {
        Runner {
            reporter,
            dry_run,
            total,
            done: Vec::new(),
        }
    }

    /// Runs one stage; its error comes back with the failure report as context.
    async fn run(
        &mut self,
        stage: StageName,
        work: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        self.reporter.line(&steps::header(
            stage.label(),
            Some((self.done.len() + 1, self.total)),
            match self.dry_run {
                Some(DryRun::Client) => "dry run",
                Some(DryRun::Server) => "server dry run",
                None => "",
            },
        ));
        let t = Instant::now();
        let ticker = self.reporter.ticker(stage.label(), TICK_EVERY);
        let result = work.await;
        drop(ticker);
        match result {
            Ok(()) => {
                let took = t.elapsed();
                self.reporter.line(&steps::done(stage.label(), took, ""));
                self.done.push((stage, took));
                Ok(())
            }
            Err(e) => {
                let finished: Vec<&str> = self.done.iter().map(|(s, _)| s.label()).collect();
                Err(e.context(format!(
                    "stage {} failed after {:.1}s; done before it: {}; {}; then run `{} up` again (finished stages change nothing)",
                    stage.label(),
                    t.elapsed().as_secs_f64(),
                    if finished.is_empty() {
                        "nothing".to_string()
                    } else {
                        finished.join(", ")
                    },
                    stage.advice(),
                    pgset_spec::contract::program_name()
                )))
            }
        }
    }

    /// Each stage's time, and the whole run's.
    fn summary(&self, total: Duration) {
        let rows: Vec<_> = self
            .done
            .iter()
            .map(|(stage, took)| (stage.label(), Ended::Ok, *took))
            .collect();
        for line in steps::summary(Some(total), &rows) {
            self.reporter.line(&line);
        }
    }
}

fn describe(spec: &ClusterSpec) -> String {
    format!(
        "cluster {} in namespace {}: {} member(s), {} storage on {}",
        spec.name,
        spec.namespace,
        spec.replicas,
        spec.storage.mode,
        match (&spec.storage.storage_class, spec.storage.mode) {
            (Some(class), _) => format!("StorageClass {class}"),
            (None, StorageMode::Shared) => format!("NFS {}", spec.cluster_export_dir().display()),
            (None, StorageMode::Templates) => {
                format!("NFS {}/<pod>", spec.cluster_export_dir().display())
            }
        }
    )
}

/// What `--output json` prints after a finished run: the deploy stage's rollout with its
/// timeline (`rollout` null when nothing was awaited); nothing for a table or a client dry run.
fn json_output(
    args: &Args,
    rollout: Option<&pgset_deploy::rollout::RolloutReport>,
) -> Option<serde_json::Value> {
    (args.output == Output::Json && args.dry_run.mode != Some(DryRun::Client))
        .then(|| crate::deploy::report_json(rollout))
}

/// Runs one stage on the invocation's context; the deploy stage leaves its rollout's report
/// in `rollout`.
async fn run_stage(
    stage: StageName,
    ctx: &RunContext,
    args: &Args,
    rollout: &std::sync::Mutex<Option<pgset_deploy::rollout::RolloutReport>>,
) -> Result<()> {
    match stage {
        StageName::Nfs => {
            crate::nfs::stage(
                ctx,
                &crate::nfs::StageOptions {
                    clients: args.clients.as_deref(),
                    verbose: args.verbose,
                    in_up: true,
                },
            )
            .await
        }
        StageName::Volumes => crate::volumes::stage(ctx).await,
        StageName::Doctor => {
            crate::doctor::stage(
                ctx,
                &crate::doctor::StageOptions {
                    probe: &args.probe,
                    // The host checks need this host to be the NFS host.
                    host_checks: !args.skip_nfs,
                    output: Output::Table,
                    in_up: true,
                },
            )
            .await
        }
        StageName::Image => {
            crate::image::stage(
                ctx,
                &crate::image::StageOptions {
                    out: None,
                    // A dry run shows the import only where it could happen; preflight has
                    // already named the missing `ctr` as a blocker.
                    import: !args.dry_run.is_set() || ctx.gathered().ctr_here == Some(true),
                },
            )
            .await
        }
        StageName::Deploy => {
            let report = crate::deploy::stage(ctx, &args.wait).await?;
            *rollout.lock().unwrap_or_else(|p| p.into_inner()) = report;
            Ok(())
        }
        StageName::Verify => {
            crate::verify::stage(
                ctx,
                &crate::verify::StageOptions {
                    output: Output::Table,
                    scale_test: false,
                    disruptive: false,
                    timeout: Duration::from_secs(args.wait.timeout.as_secs().max(60)),
                    max_rejoin: pgset_verify::live::DEFAULT_MAX_REJOIN,
                    report: None,
                },
            )
            .await
        }
    }
}

/// How to reach the database once it is up; `master` is the member the cluster names as its
/// master, when it could be read.
fn connect_help(spec: &ClusterSpec, master: Option<&str>) -> String {
    let ns = &spec.namespace;
    let program = pgset_spec::contract::program_name();
    let (named, exec) = match master {
        Some(m) => (
            format!("master {m}"),
            format!("\x20 kubectl -n {ns} exec -it {m} -c postgres -- psql -U postgres\n"),
        ),
        None => (
            format!("master unknown (`{program} status` names it)"),
            String::new(),
        ),
    };
    // Through a port-forward, verified against the cluster's CA when it serves TLS: never a
    // string that silently falls back to an unverified or plain connection.
    let info = pgset_deploy::tls::connect_info(spec);
    let fetch_ca = info
        .fetch_ca
        .as_ref()
        .map(|f| format!("\x20 {f}\n"))
        .unwrap_or_default();
    format!(
        "PostgreSQL is up: {n} member(s), {named}, Services {m} (read-write) and {r} (read-only).\n\
         Connect:\n\
         {exec}\
         {fetch_ca}\
         \x20 {forward} &\n\
         \x20 PGPASSWORD=\"$(kubectl -n {ns} get secret {secret} -o jsonpath='{{.data.superuser-password}}' | base64 -d)\" psql \"{conninfo}\"\n\
         Applications in the cluster, the CA and roles: {program} connect-info\n\
         Check it: {program} status; {program} verify\n",
        n = spec.replicas,
        m = spec.master_service_name(),
        r = spec.replica_service_name(),
        secret = spec.secret_name(),
        forward = info.port_forward,
        conninfo = info.forwarded_conninfo,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            dry_run: DryRunArg::default(),
            verbose: false,
            output: Output::Table,
            skip_nfs: false,
            skip_image: false,
            skip_verify: false,
            clients: None,
            wait: WaitArgs {
                no_wait: false,
                timeout: Duration::from_secs(300),
            },
            probe: ProbeArgs::default(),
            spec: SpecArgs::default(),
            client: ClientArgs::default(),
        }
    }

    #[test]
    fn default_flow_runs_every_stage_in_order() {
        assert_eq!(
            stages(&ClusterSpec::default(), &args()),
            [
                StageName::Nfs,
                StageName::Volumes,
                StageName::Doctor,
                StageName::Image,
                StageName::Deploy,
                StageName::Verify
            ]
        );
    }

    #[test]
    fn skips_and_a_storage_class_or_registry_image_drop_stages() {
        let a = Args {
            skip_nfs: true,
            skip_verify: true,
            ..args()
        };
        assert_eq!(
            stages(&ClusterSpec::default(), &a),
            [
                StageName::Volumes,
                StageName::Doctor,
                StageName::Image,
                StageName::Deploy
            ],
            "--skip-nfs keeps the checks: the mount probe still runs"
        );
        let neither = Args {
            skip_nfs: true,
            probe: ProbeArgs {
                no_mount_probe: true,
                ..ProbeArgs::default()
            },
            ..args()
        };
        assert_eq!(
            stages(&ClusterSpec::default(), &neither),
            [
                StageName::Volumes,
                StageName::Image,
                StageName::Deploy,
                StageName::Verify
            ],
            "without the host checks and the probe there is nothing to check"
        );
        let mut spec = ClusterSpec::default();
        spec.storage.mode = StorageMode::Templates;
        spec.storage.storage_class = Some("fast".into());
        spec.agent.image = "registry.example.com/pgset-agent:0.1.0".into();
        assert_eq!(
            stages(&spec, &args()),
            [StageName::Deploy, StageName::Verify],
            "a StorageClass needs no NFS host or volumes; a registry image is not built"
        );
    }

    #[tokio::test]
    async fn the_runner_times_each_stage_and_a_failure_says_what_was_done_and_what_to_do() {
        let mut runner = Runner::new(Reporter::with_terminal(false, false), None, 3);
        runner.run(StageName::Nfs, async { Ok(()) }).await.unwrap();
        runner
            .run(StageName::Volumes, async { Ok(()) })
            .await
            .unwrap();
        let err = runner
            .run(StageName::Deploy, async {
                bail!("pod pgset-1 never became Ready")
            })
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("stage deploy and rollout failed after "),
            "{text}"
        );
        assert!(
            text.contains("done before it: NFS host, volumes;"),
            "{text}"
        );
        assert!(text.contains(&StageName::Deploy.advice()), "{text}");
        assert!(text.ends_with("pod pgset-1 never became Ready"), "{text}");
        let done: Vec<StageName> = runner.done.iter().map(|(s, _)| *s).collect();
        assert_eq!(done, [StageName::Nfs, StageName::Volumes]);
    }

    #[test]
    fn connect_help_names_the_services_and_never_a_password() {
        let help = connect_help(&ClusterSpec::default(), Some("pgset-1"));
        assert!(help.contains("master pgset-1,"), "{help}");
        assert!(help.contains("exec -it pgset-1 -c postgres"), "{help}");
        assert!(help.contains("svc/pgset-master"));
        assert!(help.contains("pgset-replica"));
        assert!(help.contains("get secret pgset-secret"));
        assert!(help.contains("{.data.superuser-password}"));
        // Verified TLS through the port-forward, the CA fetched first.
        assert!(
            help.contains("get configmap pgset-ca-cert")
                && help.contains("psql \"host=pgset-master.default.svc.cluster.local port=5432 user=postgres dbname=postgres sslmode=verify-full sslrootcert=pgset-ca.crt hostaddr=127.0.0.1\""),
            "{help}"
        );
        let unknown = connect_help(&ClusterSpec::default(), None);
        assert!(unknown.contains("master unknown ("), "{unknown}");
        assert!(!unknown.contains("exec -it"), "{unknown}");
    }

    #[tokio::test]
    async fn invalid_spec_fails_before_anything_else() {
        let a = Args {
            spec: SpecArgs {
                replicas: Some(0),
                ..SpecArgs::default()
            },
            client: ClientArgs {
                kubeconfig: Some("/nonexistent/kubeconfig".into()),
                ..ClientArgs::default()
            },
            ..args()
        };
        let err = format!("{:#}", run(a).await.unwrap_err());
        assert!(err.contains("--replicas"), "{err}");
        assert!(!err.contains("kubeconfig"), "{err}");
    }

    #[tokio::test]
    async fn a_named_kubeconfig_that_is_missing_stops_a_real_run_in_preflight() {
        let a = Args {
            client: ClientArgs {
                kubeconfig: Some("/nonexistent/kubeconfig".into()),
                ..ClientArgs::default()
            },
            ..args()
        };
        let err = format!("{:#}", run(a).await.unwrap_err());
        assert!(err.contains("preflight"), "{err}");
        assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    }

    /// `up --dry-run` with no cluster to reach: every stage runs on the one context, the spec
    /// is loaded once, the client is tried once (by preflight; no stage builds another), and
    /// every stage says what it would do through the invocation's reporter.
    #[tokio::test]
    async fn a_client_dry_run_runs_every_stage_on_one_context_through_its_reporter() {
        crate::args::test_counts::reset();
        let program = pgset_spec::contract::program_name();
        let a = Args {
            dry_run: DryRunArg {
                mode: Some(DryRun::Client),
            },
            clients: Some("10.0.0.0/24".into()),
            spec: SpecArgs {
                nfs_server: Some("10.0.0.1".into()),
                ..SpecArgs::default()
            },
            client: ClientArgs {
                kubeconfig: Some("/nonexistent/kubeconfig".into()),
                ..ClientArgs::default()
            },
            ..args()
        };
        let reporter = Reporter::recording(false);
        let result = execute(&a, reporter.clone()).await;
        let seen = reporter.recorded();
        let all = seen.join("\n");
        // Blockers of this host (not root, no `ctr`...) end a dry run with an error, after
        // every stage ran.
        if let Err(e) = &result {
            let e = format!("{e:#}");
            assert!(
                e.starts_with("preflight found") && e.ends_with("that would stop a real run"),
                "{e}\n{all}"
            );
        }
        assert_eq!(crate::args::test_counts::spec_loads(), 1, "{all}");
        assert_eq!(crate::args::test_counts::clients_built(), 1, "{all}");

        assert!(
            seen[0].starts_with("==> [preflight] cluster pgset"),
            "{all}"
        );
        assert!(
            seen.iter().any(
                |l| l.starts_with("    note: no cluster checks in this dry run: ")
                    && l.contains("/nonexistent/kubeconfig")
            ),
            "{all}"
        );
        assert!(
            seen.iter().any(|l| l.starts_with("    preflight done in ")),
            "{all}"
        );
        let plan = stages(&ClusterSpec::default(), &a);
        assert_eq!(plan.len(), 6);
        for (i, stage) in plan.iter().enumerate() {
            let header = format!("==> [{}/6] {} (dry run)", i + 1, stage.label());
            let at = seen
                .iter()
                .position(|l| *l == header)
                .unwrap_or_else(|| panic!("no {header:?} in\n{all}"));
            let done = format!("    {} done in ", stage.label());
            assert!(
                seen[at..].iter().any(|l| l.starts_with(&done)),
                "{header}: not done\n{all}"
            );
        }
        // What each stage would do came through the reporter, not stdout or stderr directly.
        assert!(
            seen.iter()
                .any(|l| l == "NFS server address for the volumes: 10.0.0.1")
                || seen
                    .iter()
                    .any(|l| l.starts_with("    a real run would refuse: ")),
            "the NFS stage's plan or its refusal\n{all}"
        );
        assert!(
            seen.iter().any(|l| l.starts_with(&format!(
                "    would run `{program} doctor`'s checks: this NFS host's"
            ))),
            "{all}"
        );
        assert!(
            seen.iter().any(|l| l.starts_with("would build:   "))
                && seen.iter().any(|l| l.starts_with("would write:   ")),
            "{all}"
        );
        assert!(
            seen.iter().any(|l| *l
                == format!("    would run the checks of `{program} verify` against the cluster")),
            "{all}"
        );
        assert_eq!(
            seen.last().map(String::as_str),
            Some("dry run: nothing was changed"),
            "{all}"
        );
    }

    #[tokio::test]
    async fn bad_clients_are_rejected_before_preflight() {
        let a = Args {
            clients: Some("10.0.0.0/33".into()),
            ..args()
        };
        let err = format!("{:#}", run(a).await.unwrap_err());
        assert!(err.contains("--clients"), "{err}");
    }

    #[test]
    fn output_json_prints_the_rollout_with_each_members_timeline_and_nothing_in_a_client_dry_run() {
        use clap::Parser;
        let crate::Cli {
            task: crate::Task::Up(parsed),
        } = crate::Cli::try_parse_from(["pgset", "up", "-v", "-o", "json"]).unwrap()
        else {
            panic!("not up");
        };
        assert_eq!(parsed.output, Output::Json);
        assert!(parsed.verbose);
        let report = pgset_deploy::rollout::RolloutReport {
            members: vec![("pgset-0".into(), Some(Duration::from_millis(7_250)))],
            total: Duration::from_millis(7_300),
            timeline: pgset_deploy::rollout::Timeline {
                members: vec![pgset_deploy::rollout::MemberTimeline {
                    name: "pgset-0".into(),
                    ordinal: 0,
                    steps: vec![
                        pgset_deploy::rollout::TimelineStep {
                            step: "scheduled".into(),
                            seconds: 0.4,
                        },
                        pgset_deploy::rollout::TimelineStep {
                            step: "Ready".into(),
                            seconds: 7.25,
                        },
                    ],
                }],
            },
        };
        let json = json_output(&parsed, Some(&report)).unwrap();
        assert_eq!(json["rollout"]["totalSeconds"], 7.3);
        assert_eq!(
            json["rollout"]["timeline"]["members"][0]["steps"][1],
            serde_json::json!({"step": "Ready", "seconds": 7.25})
        );
        assert_eq!(
            json_output(&parsed, None),
            Some(serde_json::json!({"rollout": null}))
        );
        assert_eq!(json_output(&args(), Some(&report)), None, "a table run");
        let dry = Args {
            dry_run: DryRunArg {
                mode: Some(DryRun::Client),
            },
            ..parsed
        };
        assert_eq!(json_output(&dry, Some(&report)), None, "a client dry run");
    }
}
