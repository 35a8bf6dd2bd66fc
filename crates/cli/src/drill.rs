//! `cargo xtask drill NAME…`: fault drills against the cluster (or, with `--dir`, a local set),
//! measured and judged (`pgset_drill`); the exit code is non-zero when a drill fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pgset_drill::live::LiveOptions;
use pgset_drill::report::DrillRun;
use pgset_drill::{DrillName, Patience, Target, local::LocalOptions};

use crate::args::{ClientArgs, Output, SpecArgs};
use crate::cli::build_agent;
use crate::context::RunContext;
use crate::progress::Reporter;

/// Arguments of `cargo xtask drill`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Drills to run, in order. Against the cluster: master-pod-delete, master-freeze,
    /// master-isolated, rejoin, replica-pod-delete, postgres-kill,
    /// agent-restart-during-basebackup, scale-down-up, master-restart-under-load, nfs-restart
    /// (on the NFS host). Against a local set (--dir): master-restart, replica-restart,
    /// postgres-kill, master-restart-under-load, scale-down-up, agent-restart-during-basebackup,
    /// and the failover drills master-freeze, master-agent-freeze, master-agent-kill,
    /// master-isolated, rejoin. `all`: every drill of the target (nfs-restart only on the NFS
    /// host)
    #[arg(required = true, value_name = "NAME")]
    drills: Vec<String>,
    /// Drill a local set in this directory (`cargo xtask local up --dir`) instead of the cluster
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Seconds the set may take to be healthy again after each fault (default: 120 for a
    /// local set, 300 for a cluster)
    #[arg(long)]
    timeout: Option<u64>,
    /// Multiply every wait before giving up (connections, statements, readiness, health) by
    /// FACTOR, above 0; the drill also scales them with the round trip of its first connection.
    /// Measured figures are not scaled
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0, value_parser = patience_factor)]
    patience: f64,
    /// The agent binary the launcher restarts members with (default: built with cargo)
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Also write the report as Markdown to FILE (figures, steps, problems)
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    client: ClientArgs,
}

/// `--patience`: a factor above 0.
fn patience_factor(text: &str) -> std::result::Result<f64, String> {
    let factor: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number: give a factor above 0, such as 1 or 5"))?;
    Patience::new(factor).map(|p| p.factor())
}

/// Parses the drill names for `target` (`all` is every drill of the target; `nfs_host` says
/// whether `nfs-restart` can run); an unknown name, or one of the other target, is an error
/// before anything runs.
pub fn parse_names(names: &[String], target: Target, nfs_host: bool) -> Result<Vec<DrillName>> {
    let mut out = Vec::new();
    for n in names {
        if n == "all" {
            let every: &[DrillName] = match target {
                Target::Local => &DrillName::LOCAL,
                Target::Live => &DrillName::LIVE,
            };
            out.extend(
                every
                    .iter()
                    .filter(|d| **d != DrillName::NfsRestart || nfs_host),
            );
            continue;
        }
        let d = n.parse::<DrillName>().map_err(anyhow::Error::msg)?;
        if !d.runs_on(target) {
            anyhow::bail!(
                "drill {d} runs {}",
                match target {
                    Target::Local => "against a cluster: leave out --dir",
                    Target::Live => "against a local set: add --dir DIR",
                }
            );
        }
        out.push(d);
    }
    Ok(out)
}

/// Runs the drills and prints their report: every drill's figures or why it did not run; the
/// exit code is 1 when one failed or did not run.
pub async fn run(args: Args) -> Result<()> {
    if let Some(path) = &args.report {
        crate::cli::check_report_path(path)?;
    }
    let patience = Patience::new(args.patience).map_err(anyhow::Error::msg)?;
    let reporter = Reporter::current();
    let mut say = |line: &str| reporter.line(line);
    let run = if let Some(dir) = &args.dir {
        let drills = parse_names(&args.drills, Target::Local, false)?;
        pgset_local::read_set(dir).context("read the local set")?;
        let agent_bin = match &args.agent_bin {
            Some(b) => b.clone(),
            None => build_agent()?,
        };
        let mut opts = LocalOptions::new(dir, agent_bin);
        opts.recovery_timeout = Duration::from_secs(args.timeout.unwrap_or(120));
        opts.patience = patience;
        let opts = &opts;
        DrillRun::each(&drills, |d| pgset_drill::local::run(opts, d), &mut say).await
    } else {
        let ctx = RunContext::for_command(&args.spec, &args.client, None)
            .context("load the cluster spec")?;
        let client = ctx
            .client()
            .await
            .context("connect to the cluster")?
            .clone();
        let spec = ctx.spec().clone();
        let nfs_host = pgset_drill::live::on_nfs_host(&spec);
        let drills = parse_names(&args.drills, Target::Live, nfs_host)?;
        let mut opts = LiveOptions::new(spec);
        if let Some(t) = args.timeout {
            opts.recovery_timeout = Duration::from_secs(t);
        }
        opts.patience = patience;
        let opts = &opts;
        DrillRun::each(
            &drills,
            |d| pgset_drill::live::run(client.clone(), opts, d),
            &mut say,
        )
        .await
    };
    // Every drill asked for is in the output, whether it ran, failed or did not run.
    match args.output {
        Output::Table => print!("{}", run.table()),
        Output::Json => println!("{}", run.to_json()),
    }
    if let Some(path) = &args.report {
        crate::cli::write_report(path, &run.markdown())?;
    }
    if let Some(what) = &run.interrupted {
        return Err(crate::cli::Exit {
            code: 130,
            message: format!("interrupted: {what}"),
        }
        .into());
    }
    run.verdict().map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_is_a_factor_above_zero() {
        assert_eq!(patience_factor("1"), Ok(1.0));
        assert_eq!(patience_factor("5"), Ok(5.0));
        assert_eq!(patience_factor("0.5"), Ok(0.5));
        for bad in ["0", "-2", "NaN", "inf"] {
            let e = patience_factor(bad).unwrap_err();
            assert!(e.contains("give a factor above 0"), "{bad}: {e}");
        }
        let e = patience_factor("slow").unwrap_err();
        assert_eq!(
            e,
            "`slow` is not a number: give a factor above 0, such as 1 or 5"
        );
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let e = Cli::try_parse_from(["drill", "all", "--patience", "0"])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("give a factor above 0"), "{e}");
        let ok = Cli::try_parse_from(["drill", "all", "--patience", "5"]).unwrap();
        assert_eq!(ok.args.patience, 5.0);
        assert_eq!(
            Cli::try_parse_from(["drill", "all"]).unwrap().args.patience,
            1.0
        );
    }

    #[test]
    fn all_expands_per_target_and_unknown_or_foreign_names_are_refused() {
        let all = ["all".to_string()];
        assert_eq!(
            parse_names(&all, Target::Local, false).unwrap(),
            DrillName::LOCAL
        );
        assert_eq!(
            parse_names(&all, Target::Live, true).unwrap(),
            DrillName::LIVE
        );
        let live = parse_names(&all, Target::Live, false).unwrap();
        assert!(!live.contains(&DrillName::NfsRestart), "{live:?}");
        assert_eq!(live.len(), DrillName::LIVE.len() - 1);
        assert_eq!(
            parse_names(
                &["postgres-kill".into(), "master-restart".into()],
                Target::Local,
                false
            )
            .unwrap(),
            [DrillName::PostgresKill, DrillName::MasterRestart]
        );
        let e = parse_names(&["master-pod-restart".into()], Target::Live, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown drill"), "{e}");
        let e = parse_names(&["master-pod-delete".into()], Target::Local, false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "drill master-pod-delete runs against a cluster: leave out --dir"
        );
        let e = parse_names(&["master-restart".into()], Target::Live, false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "drill master-restart runs against a local set: add --dir DIR"
        );
        // The failover drills are asked for on both targets (a cluster refuses the two agent
        // drills when it runs them, saying why).
        for d in DrillName::FAILOVER {
            for target in [Target::Local, Target::Live] {
                assert_eq!(
                    parse_names(&[d.as_str().to_string()], target, false).unwrap(),
                    [d]
                );
            }
        }
    }
}
