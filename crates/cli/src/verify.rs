//! `cargo xtask verify`: runs the checks against the live cluster and prints the report; exits
//! non-zero when a check fails.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use pgset_spec::{StorageMode, ValidSpec};
use pgset_verify::live::DEFAULT_MAX_REJOIN;
use pgset_verify::{Options, Report, Verifier};

use crate::args::{ClientArgs, Output, SpecArgs};
use crate::context::RunContext;

/// Arguments of `cargo xtask verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Report format
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Also scale to N+1 and back: the new member starts after the others, joins streaming, and
    /// its data is retained after scale-down
    #[arg(long)]
    pub scale_test: bool,
    /// Also delete the master pod and measure its recovery (the cluster is briefly read-only)
    #[arg(long)]
    pub disruptive: bool,
    /// Limit of each wait (a pod Ready, a member streaming, a row replicated), in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 180)]
    pub timeout: u64,
    /// With --disruptive: fail when the replicas stream again later than this after the master
    /// pod is Ready again, in seconds (the time is reported either way)
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_MAX_REJOIN.as_secs_f64(),
          value_parser = positive_seconds)]
    pub max_rejoin_seconds: f64,
    /// Also write the report as Markdown to FILE (the checks, their evidence and timings)
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A bound in seconds: a finite number above 0 and at most a day.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "`{text}` is not a number of seconds above 0 (at most 86400), e.g. 10 or 2.5"
        )),
    }
}

/// Runs the checks (after the preflight: the API server answers, the StatefulSet exists) and
/// returns the report; for `up` as well as `verify`.
pub async fn checks(client: kube::Client, spec: ValidSpec, options: Options) -> Result<Report> {
    let verifier = Verifier::new(client, spec, options);
    verifier.preflight().await.context("verify preflight")?;
    Ok(verifier.run().await)
}

/// What the verify stage takes beyond the context.
#[derive(Debug, Clone, Copy)]
pub struct StageOptions<'a> {
    /// How to print the report.
    pub output: Output,
    /// Also scale to N+1 and back.
    pub scale_test: bool,
    /// Also delete the master pod and measure its recovery.
    pub disruptive: bool,
    /// Limit of each wait.
    pub timeout: Duration,
    /// With `disruptive`: the longest the replicas may take to stream again.
    pub max_rejoin: Duration,
    /// Also write the report as Markdown here (checked by the caller before anything ran).
    pub report: Option<&'a std::path::Path>,
}

/// Runs the checks and prints the report; the error says how many failed.
pub async fn run(args: Args) -> Result<()> {
    if let Some(path) = &args.report {
        crate::cli::check_report_path(path)?;
    }
    let ctx =
        RunContext::for_command(&args.spec, &args.client, None).context("load the cluster spec")?;
    stage(
        &ctx,
        &StageOptions {
            output: args.output,
            scale_test: args.scale_test,
            disruptive: args.disruptive,
            timeout: Duration::from_secs(args.timeout.max(1)),
            max_rejoin: Duration::from_secs_f64(args.max_rejoin_seconds),
            report: args.report.as_deref(),
        },
    )
    .await
}

/// Runs the checks against the invocation's cluster and prints the report (a dry run says
/// they would run): `verify`, and `up`'s verify stage.
pub async fn stage(ctx: &RunContext, opts: &StageOptions<'_>) -> Result<()> {
    let reporter = ctx.reporter();
    if ctx.dry_run().is_some() {
        reporter.line(&format!(
            "    would run the checks of `{} verify` against the cluster",
            pgset_spec::contract::program_name()
        ));
        return Ok(());
    }
    let spec = ctx.spec();
    let client = ctx.client().await.context("connect to the cluster")?;
    let mut options = Options::new(spec);
    options.scale_test = opts.scale_test;
    options.disruptive = opts.disruptive;
    options.timeout = opts.timeout;
    options.max_rejoin = opts.max_rejoin;
    if options.local_data_root.is_none() {
        reporter.line(&format!("==> verify {}/{}", spec.namespace, spec.name));
    } else {
        reporter.line(&format!(
            "==> verify {}/{} (member directories checked on this host in {})",
            spec.namespace,
            spec.name,
            spec.cluster_export_dir().display()
        ));
    }
    if opts.scale_test
        && spec.storage.mode == StorageMode::Templates
        && spec.storage.storage_class.is_none()
    {
        let bigger = spec
            .clone()
            .with_replicas(spec.replicas + 1)
            .context("the scale test adds one member to the spec's")?;
        ctx.prepare_member_volumes(&bigger)
            .await
            .context("prepare the volume of the scale test's extra member")?;
    }
    let report = checks(client.clone(), spec.clone(), options).await?;
    match opts.output {
        Output::Table => {
            for line in report.to_table().lines() {
                reporter.result(line);
            }
        }
        Output::Json => println!("{}", report.to_json()),
    }
    if let Some(path) = opts.report {
        crate::cli::write_report(path, &report.to_markdown())?;
    }
    let failed: Vec<&str> = report.failed().map(|c| c.name.as_str()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} check(s) failed: {}", failed.len(), failed.join(", "))
    }
}
