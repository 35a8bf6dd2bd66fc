//! `cargo xtask drill NAME…`: fault drills against a local set, measured and judged
//! (`pgset_drill`); the exit code is non-zero when a drill fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pgset_drill::{DrillName, Verdict, local::LocalOptions, report};

use crate::verify::Output;

/// Arguments of `cargo xtask drill`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Drills to run, in order: master-restart, replica-restart, postgres-kill,
    /// master-restart-under-load, scale-down-up, or `all`
    #[arg(required = true, value_name = "NAME")]
    drills: Vec<String>,
    /// The local set's directory (`cargo xtask local up --dir`)
    #[arg(long)]
    dir: PathBuf,
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Seconds the set may take to be healthy again after each fault
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The agent binary the launcher restarts members with (default: built with cargo)
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Also write the report as Markdown to FILE (figures, steps, problems)
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// Parses the drill names (`all` is every drill); an unknown name is an error before anything runs.
pub fn parse_names(names: &[String]) -> Result<Vec<DrillName>> {
    let mut out = Vec::new();
    for n in names {
        if n == "all" {
            out.extend(DrillName::ALL);
        } else {
            out.push(n.parse::<DrillName>().map_err(anyhow::Error::msg)?);
        }
    }
    Ok(out)
}

/// Runs the drills and prints their report.
pub async fn run(args: Args) -> Result<()> {
    let drills = parse_names(&args.drills)?;
    if let Some(path) = &args.report {
        crate::cli::check_report_path(path)?;
    }
    pgset_agent::local::read_set(&args.dir).context("read the local set")?;
    let agent_bin = match args.agent_bin {
        Some(b) => b,
        None => crate::local::build_agent()?,
    };
    let mut opts = LocalOptions::new(&args.dir, agent_bin);
    opts.recovery_timeout = Duration::from_secs(args.timeout);
    let mut reports = Vec::new();
    for d in drills {
        eprintln!("==> drill {d}");
        let r = pgset_drill::local::run(&opts, d)
            .await
            .with_context(|| format!("drill {d}"))?;
        eprintln!("    {d}: {:?}", r.verdict);
        reports.push(r);
    }
    match args.output {
        Output::Table => print!("{}", report::table(&reports)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    if let Some(path) = &args.report {
        crate::cli::write_report(path, &report::markdown(&reports))?;
    }
    let failed = reports
        .iter()
        .filter(|r| r.verdict == Verdict::Fail)
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} drills failed", reports.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_and_unknown_names_are_refused() {
        assert_eq!(parse_names(&["all".into()]).unwrap(), DrillName::ALL);
        assert_eq!(
            parse_names(&["postgres-kill".into(), "master-restart".into()]).unwrap(),
            [DrillName::PostgresKill, DrillName::MasterRestart]
        );
        let e = parse_names(&["master-pod-delete".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown drill"), "{e}");
    }
}
