//! A status screen, printed once (exit code 2 when not healthy) or, with `--watch`, redrawn
//! when it changes: `status` and `local status` show theirs with [`show`].

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::args::StatusOutput;
use crate::cli::Exit;

/// One reading of a status, as the loop needs it.
pub struct Screen<T> {
    /// The report.
    pub report: T,
    /// The same report with what changes every second (uptimes) taken out: a redraw happens
    /// only when this changes.
    pub still: T,
    /// Whether it is healthy.
    pub healthy: bool,
    /// The error line when it is not.
    pub unhealthy: String,
}

/// Renders `report` in `output`; `table` is its table.
pub fn render<T: Serialize>(
    report: &T,
    table: impl Fn(&T) -> String,
    output: StatusOutput,
) -> Result<String> {
    Ok(match output {
        StatusOutput::Table => table(report),
        StatusOutput::Json => serde_json::to_string_pretty(report)? + "\n",
        StatusOutput::Yaml => serde_saphyr::to_string(report).context("render YAML")?,
    })
}

/// Prints one screen and exits 0 when healthy, 2 when not; with `watch`, redraws on change every
/// second until Ctrl-C.
pub async fn show<T, F, Fut>(
    output: StatusOutput,
    watch: bool,
    table: impl Fn(&T) -> String + Copy,
    mut read: F,
) -> Result<()>
where
    T: Serialize,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Screen<T>>>,
{
    let mut shown = String::new();
    loop {
        let screen = read().await?;
        let text = render(&screen.report, table, output)?;
        if !watch {
            print!("{text}");
            if screen.healthy {
                return Ok(());
            }
            return Err(Exit {
                code: 2,
                message: screen.unhealthy,
            }
            .into());
        }
        let key = render(&screen.still, table, output)?;
        if key != shown {
            print!("\x1b[2J\x1b[H{text}");
            shown = key;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
