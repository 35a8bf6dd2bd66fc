//! `cargo xtask deploy`: apply the cluster's objects (server-side, fixed order), create the
//! Secret when absent, and wait for the ordered rollout, then lift a failover pause `down` or
//! `scale` left (kept, and said, with `--no-wait`); `--dry-run=client` prints the YAML.
//! With `-v` each member's timeline (when it reached each step) ends the output; `--output json`
//! prints the rollout and its timeline on stdout.

use anyhow::{Context, Result, bail};
use pgset_deploy::apply::{ApplyMode, deploy, lift_failover_pause};
use pgset_deploy::render::multi_document;
use pgset_deploy::rollout::{RolloutReport, wait_for_rollout};
use serde_json::json;

use crate::args::{ClientArgs, DryRun, DryRunArg, Output, SpecArgs, WaitArgs};
use crate::context::RunContext;
use crate::progress::Reporter;

/// Arguments of `cargo xtask deploy`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("dry_run", |a| a.help("Change nothing: print the objects (client, the default) or have the API server check them (server)")))]
pub struct Args {
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Show each pod's full state (phase, conditions, containers) whenever it changes
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// How to print the result: the rollout's lines (table), or the rollout and each member's
    /// timeline as JSON on stdout
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the task.
pub async fn run(args: Args) -> Result<()> {
    let ctx = RunContext::with_reporter(
        &args.spec,
        &args.client,
        args.dry_run.mode,
        Reporter::new(args.verbose).install(),
    )?;
    let report = stage(&ctx, &args.wait).await?;
    if args.output == Output::Json && args.dry_run.mode != Some(DryRun::Client) {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(report.as_ref()))?
        );
    }
    Ok(())
}

/// The rollout as `--output json` prints it: each member's seconds to Ready, the total, and
/// the timeline; `rollout` is null when nothing was awaited.
pub fn report_json(report: Option<&RolloutReport>) -> serde_json::Value {
    json!({
        "rollout": report.map(|r| json!({
            "members": r.members.iter().map(|(name, took)| json!({
                "name": name,
                "readyAfterSeconds": took.map(|t| (t.as_secs_f64() * 1000.0).round() / 1000.0),
            })).collect::<Vec<_>>(),
            "totalSeconds": (r.total.as_secs_f64() * 1000.0).round() / 1000.0,
            "timeline": r.timeline,
        })),
    })
}

/// The timeline's lines after a rollout (`-v`): where each member's time went.
pub fn print_timeline(reporter: &Reporter, report: &RolloutReport) {
    reporter.line("    timeline (seconds since the apply; each step's length in brackets):");
    for line in report.timeline.lines() {
        reporter.line(&format!("      {line}"));
    }
}

/// Applies the objects and waits for the rollout (or prints them, in a client dry run) with
/// the invocation's spec, client and reporter: `deploy`, and `up`'s deploy stage. Returns the
/// rollout's report when it was awaited; with `-v` its timeline is printed.
pub async fn stage(ctx: &RunContext, wait: &WaitArgs) -> Result<Option<RolloutReport>> {
    let spec = ctx.spec();
    let reporter = ctx.reporter();
    let mode = match ctx.dry_run() {
        Some(DryRun::Client) => {
            let yaml = multi_document(spec).context("render the objects")?;
            print!("{yaml}");
            reporter.line(&format!(
                "note: Secret {} is not printed (it holds the passwords); `{} deploy` creates it, manifests/README.md shows how to create it with kubectl",
                spec.secret_name(),
                pgset_spec::contract::program_name()
            ));
            return Ok(None);
        }
        Some(DryRun::Server) => ApplyMode::ServerDryRun,
        None => ApplyMode::Apply,
    };
    if wait.no_wait && mode == ApplyMode::ServerDryRun {
        bail!("--no-wait has no effect with --dry-run=server (a dry run never waits): drop one");
    }
    let client = ctx.client().await?;
    let stage = reporter.stage(format!(
        "apply cluster {} to namespace {} (server-side apply, field manager {}){}",
        spec.name,
        spec.namespace,
        pgset_spec::contract::FIELD_MANAGER,
        if mode == ApplyMode::ServerDryRun {
            ", server dry run"
        } else {
            ""
        }
    ));
    let outcome = deploy(client, spec, mode, &mut |line: &str| {
        reporter.line(&format!("    {line}"))
    })
    .await
    .context("apply the objects")?;
    stage.done(&outcome.summary());
    let say = &mut |line: &str| reporter.line(&format!("    {line}"));
    let timeout = match wait.timeout() {
        Some(t) if mode == ApplyMode::Apply => t,
        _ => {
            // A deploy that does not wait leaves a failover pause and says how to lift it.
            if mode == ApplyMode::Apply {
                lift_failover_pause(client, spec, None, say)
                    .await
                    .context("read the leader Lease's failover pause")?;
            }
            return Ok(None);
        }
    };
    let stage = reporter.stage(format!(
        "wait for {} members of StatefulSet {} to be Ready (timeout {}s)",
        spec.replicas,
        spec.statefulset_name(),
        timeout.as_secs()
    ));
    let mut view = reporter.rollout();
    let report = wait_for_rollout(client, spec, spec.replicas, timeout, &mut |e| view.event(e))
        .await
        .context("wait for the rollout")?;
    drop(view);
    stage.done(&format!(
        "{} members Ready in {:.1}s",
        report.members.len(),
        report.total.as_secs_f64()
    ));
    if reporter.verbose() {
        print_timeline(reporter, &report);
    }
    // Every member is Ready: a failover pause `down` or `scale` left is lifted.
    lift_failover_pause(client, spec, Some(&report), say)
        .await
        .context("lift the failover pause on the leader Lease")?;
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn client_dry_run_needs_no_cluster() {
        let args = Args {
            dry_run: DryRunArg {
                mode: Some(DryRun::Client),
            },
            verbose: false,
            output: Output::Table,
            wait: WaitArgs {
                no_wait: false,
                timeout: Duration::from_secs(5),
            },
            spec: SpecArgs::default(),
            client: ClientArgs {
                kubeconfig: Some("/nonexistent/kubeconfig".into()),
                ..ClientArgs::default()
            },
        };
        run(args)
            .await
            .expect("a client dry run reads no kubeconfig");
    }

    #[tokio::test]
    async fn invalid_replicas_fail_before_the_kubeconfig_is_read() {
        let args = Args {
            dry_run: DryRunArg::default(),
            verbose: false,
            output: Output::Table,
            wait: WaitArgs {
                no_wait: true,
                timeout: Duration::from_secs(5),
            },
            spec: SpecArgs {
                replicas: Some(0),
                ..SpecArgs::default()
            },
            client: ClientArgs {
                kubeconfig: Some("/nonexistent/kubeconfig".into()),
                ..ClientArgs::default()
            },
        };
        let err = format!("{:#}", run(args).await.unwrap_err());
        assert!(err.contains("replicas"), "{err}");
        assert!(!err.contains("kubeconfig"), "{err}");
    }

    #[test]
    fn the_json_and_the_verbose_lines_carry_each_members_timeline() {
        use pgset_deploy::rollout::{MemberTimeline, Timeline, TimelineStep};
        let step = |step: &str, seconds: f64| TimelineStep {
            step: step.into(),
            seconds,
        };
        let report = RolloutReport {
            members: vec![("pgset-0".into(), Some(Duration::from_millis(4200)))],
            total: Duration::from_millis(4500),
            timeline: Timeline {
                members: vec![MemberTimeline {
                    name: "pgset-0".into(),
                    ordinal: 0,
                    steps: vec![
                        step("scheduled, copying the agent", 0.3),
                        step("agent copied, starting", 1.5),
                        step("Ready", 4.5),
                    ],
                }],
            },
        };
        let j = report_json(Some(&report));
        assert_eq!(j["rollout"]["totalSeconds"], 4.5);
        assert_eq!(j["rollout"]["members"][0]["readyAfterSeconds"], 4.2);
        assert_eq!(
            j["rollout"]["timeline"]["members"][0]["steps"][1],
            json!({"step": "agent copied, starting", "seconds": 1.5})
        );
        assert_eq!(report_json(None), json!({"rollout": null}));

        let reporter = Reporter::recording(true);
        print_timeline(&reporter, &report);
        assert_eq!(
            reporter.recorded()[1],
            "      pgset-0: +0.3s scheduled, copying the agent (1.2s) → +1.5s agent copied, starting (3.0s) → +4.5s Ready"
        );
    }
}
