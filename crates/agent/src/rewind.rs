//! Rejoining a member whose data diverged from the master it must follow (a former master, a
//! replica promoted by hand): the fork point from the timelines' history files, the member's end
//! of WAL from its `pg_control`, the WAL written after the fork kept in
//! `<member>.diverged-<UTC time>/` with a `diverged.json`, then `pg_rewind` from the master.
//! Decided from PostgreSQL's own state, never from log text.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgset_spec::contract::{self, secret};
use serde::{Deserialize, Serialize};

use crate::bootstrap::read_password;
use crate::datadir;
use crate::identity;
use crate::pgbin::PgBin;
use crate::render;
use crate::settings::Settings;
use crate::{Error, Result, io_err};

/// The file that describes a kept diverged copy, in its directory.
pub const DIVERGED_FILE: &str = "diverged.json";
/// The same description inside a data directory that is set aside as `<member>.previous` after
/// a rewind could not run: the kept copy then holds writes the cluster does not have.
pub const DIVERGED_MARK: &str = "pgset-diverged.json";

/// What a member wrote that the master's history does not have, as `diverged.json` says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diverged {
    /// The member.
    pub member: String,
    /// Where the member's history and the master's part (an LSN, `X/Y`).
    pub fork_lsn: String,
    /// The member's end of WAL (its last checkpoint or minimum recovery point, `X/Y`).
    pub end_lsn: String,
    /// WAL bytes the member wrote after the fork: what following the master discards.
    pub bytes_after_fork: u64,
    /// The member's timeline.
    pub timeline: u32,
    /// The master's timeline.
    pub master_timeline: u32,
    /// When it was kept (UTC).
    pub when: String,
    /// Why, in words.
    pub why: String,
}

/// A kept copy with writes the cluster does not have, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptCopy {
    /// The directory.
    pub path: PathBuf,
    /// WAL bytes after the fork.
    pub bytes_after_fork: u64,
    /// The fork point.
    pub fork_lsn: String,
}

/// The member's copies that hold writes the cluster does not have: `<member>.diverged-*` and a
/// `<member>.previous` marked with writes after the fork, in `data_root`.
pub fn kept_copies(data_root: &Path, member: &str) -> Vec<KeptCopy> {
    let Ok(entries) = fs::read_dir(data_root) else {
        return Vec::new();
    };
    let diverged_prefix = format!("{member}.diverged-");
    let previous = format!("{member}.previous");
    let mut out: Vec<KeptCopy> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let file = if name.starts_with(&diverged_prefix) {
                DIVERGED_FILE
            } else if name == previous {
                DIVERGED_MARK
            } else {
                return None;
            };
            let path = e.path();
            let d = read_diverged(&path.join(file));
            match d {
                Some(d) if d.bytes_after_fork > 0 => Some(KeptCopy {
                    path,
                    bytes_after_fork: d.bytes_after_fork,
                    fork_lsn: d.fork_lsn,
                }),
                // A diverged copy whose description is unreadable is still kept data.
                None if file == DIVERGED_FILE => Some(KeptCopy {
                    path,
                    bytes_after_fork: 0,
                    fork_lsn: "unknown".into(),
                }),
                _ => None,
            }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Reads a `diverged.json`.
pub fn read_diverged(path: &Path) -> Option<Diverged> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// The fields of `pg_controldata` a rejoin needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlData {
    /// "Latest checkpoint's TimeLineID".
    pub timeline: u32,
    /// "Latest checkpoint location".
    pub checkpoint: u64,
    /// "Minimum recovery ending location".
    pub min_recovery_end: u64,
    /// "Min recovery ending loc's timeline" (0 when none).
    pub min_recovery_timeline: u32,
    /// "Bytes per WAL segment".
    pub segment_size: u64,
    /// "Database cluster state" (`shut down`, `in production`, ...).
    pub state: String,
}

impl ControlData {
    /// Whether pg_control says the server stopped without a clean shutdown while it ran as a
    /// primary (`in production`, `shutting down`): its WAL may go on past the last checkpoint,
    /// so the checkpoint is not its end of WAL.
    pub fn crashed_primary(&self) -> bool {
        matches!(self.state.as_str(), "in production" | "shutting down")
    }

    /// The member's end of WAL as pg_control knows it.
    pub fn end_lsn(&self) -> u64 {
        self.checkpoint.max(self.min_recovery_end)
    }

    /// The timeline of that end: a standby's minimum recovery point may be on a newer timeline
    /// than its last restartpoint (it followed a promotion), as `pg_rewind` judges it too.
    pub fn end_timeline(&self) -> u32 {
        if self.min_recovery_end > self.checkpoint && self.min_recovery_timeline > 0 {
            self.min_recovery_timeline
        } else {
            self.timeline
        }
    }
}

/// Parses an LSN `X/Y`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// An LSN as PostgreSQL writes it.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `pg_controldata`'s output (run with `LC_ALL=C`).
pub fn parse_controldata(text: &str) -> Option<ControlData> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    Some(ControlData {
        timeline: field("Latest checkpoint's TimeLineID")?.parse().ok()?,
        checkpoint: parse_lsn(field("Latest checkpoint location")?)?,
        min_recovery_end: field("Minimum recovery ending location")
            .and_then(parse_lsn)
            .unwrap_or(0),
        min_recovery_timeline: field("Min recovery ending loc's timeline")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        segment_size: field("Bytes per WAL segment")?.parse().ok()?,
        state: field("Database cluster state")
            .unwrap_or_default()
            .to_string(),
    })
}

/// pg_control once the data ended cleanly: a primary that stopped without a clean shutdown (a
/// crash, a SIGKILL) wrote WAL past its last checkpoint, which pg_control does not show; its
/// crash recovery runs first in single-user mode (as `pg_rewind` does before it judges), which
/// replays that WAL and ends with a checkpoint at its true end. Nothing is lost or thrown away.
pub fn ended_cleanly(bin: &PgBin, pgdata: &Path) -> Result<ControlData> {
    let own = control_data(bin, pgdata)?;
    if !own.crashed_primary() {
        return Ok(own);
    }
    crate::info!(
        "{} stopped without a clean shutdown while it was a primary (pg_control: {}): running its \
         crash recovery in single-user mode to find where its WAL ends",
        pgdata.display(),
        own.state
    );
    // A standby.signal left by an earlier start would make it a standby, which single-user
    // mode refuses; the managed files write it again before postgres starts.
    let signal = pgdata.join("standby.signal");
    let had_signal = signal.exists();
    if had_signal {
        fs::remove_file(&signal).map_err(io_err(format!("remove {}", signal.display())))?;
    }
    let result = bin
        .command("postgres")
        .args(["--single", "-F", "-c", "archive_mode=off", "-D"])
        .arg(pgdata)
        .arg("template1")
        .stdin(Vec::new())
        .env("LC_ALL", "C")
        .quiet()
        .output();
    if had_signal {
        datadir::write_atomic(&signal, b"", 0o600)?;
    }
    let out = result?;
    if !out.success() {
        return Err(Error::DataDir {
            path: pgdata.to_path_buf(),
            problem: format!(
                "its crash recovery in single-user mode failed: {}",
                out.stderr.trim()
            ),
        });
    }
    let after = control_data(bin, pgdata)?;
    crate::info!(
        "crash recovery done: its WAL ends at {} on timeline {} (pg_control: {})",
        lsn_text(after.end_lsn()),
        after.timeline,
        after.state
    );
    Ok(after)
}

/// Reads `pg_control` through `pg_controldata`.
pub fn control_data(bin: &PgBin, pgdata: &Path) -> Result<ControlData> {
    let cmd = bin
        .command("pg_controldata")
        .arg("-D")
        .arg(pgdata)
        .env("LC_ALL", "C")
        .quiet();
    let out = cmd.read()?;
    parse_controldata(&out).ok_or_else(|| Error::DataDir {
        path: pgdata.to_path_buf(),
        problem: "pg_controldata's output has no checkpoint timeline, location or segment size"
            .into(),
    })
}

/// A timeline's path from the first: `(timeline, where it ended)`, the last one open-ended.
pub type TimelinePath = Vec<(u32, u64)>;

/// The path of `timeline` from its history file's text (empty for timeline 1).
pub fn parse_history(timeline: u32, text: &str) -> Option<TimelinePath> {
    let mut path = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let tli = parts.next()?.parse().ok()?;
        let end = parse_lsn(parts.next()?)?;
        path.push((tli, end));
    }
    path.push((timeline, u64::MAX));
    Some(path)
}

/// Where two timeline paths part: the LSN up to which they share history (`u64::MAX` when one
/// is the other's prefix at its open end: nothing diverged).
pub fn fork_point(a: &TimelinePath, b: &TimelinePath) -> u64 {
    let mut shared_end = 0;
    for (x, y) in a.iter().zip(b.iter()) {
        if x.0 != y.0 {
            return shared_end;
        }
        if x.1 != y.1 {
            return x.1.min(y.1);
        }
        shared_end = x.1;
    }
    shared_end
}

/// The history file name of a timeline.
pub fn history_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// The master's timeline and its history file's text, asked as the replication role (the
/// role `pg_rewind` connects as: pg_hba admits no superuser from the pods).
async fn master_history(s: &Settings) -> Result<(u32, String)> {
    let password = read_password(s, secret::REPLICATION_PASSWORD_KEY)?;
    timeline_history_over(
        &s.env.master_host,
        s.env.master_port,
        &password,
        &format!("{}-agent", s.pod_name),
        s.tls().as_ref(),
    )
    .await
}

/// A connection as the replication role to database `postgres` on `host:port` over TCP: with
/// `tls`, by the replication certificate over TLS verified against the set's CA; without, by
/// `password` (given with TLS too: a master whose pg_hba predates the certificate line for
/// this database asks for it). And the task driving it (abort it when done).
async fn peer_client(
    host: &str,
    port: u16,
    password: &str,
    application_name: &str,
    tls: Option<&crate::tls::TlsFiles>,
    timeout: Duration,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let mut c = tokio_postgres::Config::new();
    c.host(host)
        .port(port)
        .user(contract::REPLICATION_USER)
        .password(password)
        .dbname("postgres")
        .application_name(application_name)
        .connect_timeout(timeout);
    let what = format!("the master {host}:{port}");
    let sql = |source| Error::Sql {
        what: what.clone(),
        source,
    };
    let connected = match tls {
        None => tokio::time::timeout(timeout, c.connect(tokio_postgres::NoTls))
            .await
            .map(|r| {
                r.map(|(client, conn)| {
                    let driver = tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    (client, driver)
                })
            }),
        Some(tls) => {
            c.ssl_mode(tokio_postgres::config::SslMode::Require);
            let connector = tls.replication_connector()?;
            tokio::time::timeout(timeout, c.connect(connector))
                .await
                .map(|r| {
                    r.map(|(client, conn)| {
                        let driver = tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        (client, driver)
                    })
                })
        }
    };
    let (client, driver) = connected
        .map_err(|_| Error::SqlTimeout {
            what: what.clone(),
            timeout,
        })?
        .map_err(sql)?;
    Ok((client, driver))
}

/// A server's timeline and its history file's text (empty on timeline 1), asked as the
/// replication role by `password` over TCP.
pub async fn timeline_history(
    host: &str,
    port: u16,
    password: &str,
    application_name: &str,
) -> Result<(u32, String)> {
    timeline_history_over(host, port, password, application_name, None).await
}

/// [`timeline_history`], over TLS verified against the set's CA when `tls` is given.
async fn timeline_history_over(
    host: &str,
    port: u16,
    password: &str,
    application_name: &str,
    tls: Option<&crate::tls::TlsFiles>,
) -> Result<(u32, String)> {
    let what = format!("the master {host}:{port}");
    let sql = |source| Error::Sql {
        what: what.clone(),
        source,
    };
    let (client, driver) = peer_client(
        host,
        port,
        password,
        application_name,
        tls,
        Duration::from_secs(10),
    )
    .await?;
    let result = async {
        // The timeline WAL is written on now (a checkpoint's lags a promotion until the next
        // checkpoint completes).
        let r = client
            .query_one(
                "SELECT CASE WHEN pg_is_in_recovery()
                        THEN (SELECT timeline_id FROM pg_control_checkpoint())::bigint
                        ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))
                             ::bit(32)::bigint END",
                &[],
            )
            .await
            .map_err(sql)?;
        let timeline = r.get::<_, i64>(0) as u32;
        if timeline <= 1 {
            return Ok((timeline, String::new()));
        }
        let r = client
            .query_one(
                "SELECT convert_from(pg_read_binary_file($1), 'UTF8')",
                &[&format!("pg_wal/{}", history_name(timeline))],
            )
            .await
            .map_err(sql)?;
        Ok((timeline, r.get::<_, String>(0)))
    }
    .await;
    driver.abort();
    result
}

/// Makes the master's pg_control name the timeline it writes on before `pg_rewind` reads it: a
/// promoted server updates pg_control only at its first checkpoint after the promotion, and
/// `pg_rewind` judges the source's timeline from pg_control — before that checkpoint it finds
/// both on the same timeline and rewinds nothing. Asks for a CHECKPOINT when pg_control lags
/// `timeline` (as the replication role, a member of `pg_checkpoint`), then checks it again. A
/// server older than 15 has no `pg_checkpoint` and refuses the role (SQLSTATE 42501): then the
/// checkpoint the promotion itself requested is waited for, at most
/// [`PROMOTION_CHECKPOINT_WAIT`].
async fn checkpoint_source(s: &Settings, timeline: u32) -> Result<()> {
    let password = read_password(s, secret::REPLICATION_PASSWORD_KEY)?;
    let what = format!("the master {}:{}", s.env.master_host, s.env.master_port);
    let sql = |source| Error::Sql {
        what: what.clone(),
        source,
    };
    let (client, driver) = peer_client(
        &s.env.master_host,
        s.env.master_port,
        &password,
        &format!("{}-rewind", s.pod_name),
        s.tls().as_ref(),
        Duration::from_secs(30),
    )
    .await?;
    let control_timeline = async || -> Result<u32> {
        let r = client
            .query_one(
                "SELECT timeline_id::bigint FROM pg_control_checkpoint()",
                &[],
            )
            .await
            .map_err(sql)?;
        Ok(r.get::<_, i64>(0) as u32)
    };
    let result = async {
        if control_timeline().await? >= timeline {
            return Ok(());
        }
        crate::info!(
            "the master's pg_control still names an older timeline than {timeline} (its first \
             checkpoint after the promotion has not completed): asking it for a CHECKPOINT \
             before pg_rewind reads it"
        );
        match client.batch_execute("CHECKPOINT").await {
            Ok(()) => {}
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                crate::info!(
                    "the master does not let the replication role ask for a CHECKPOINT (no \
                     pg_checkpoint before PostgreSQL 15): waiting for the checkpoint its \
                     promotion requested, at most {}s",
                    PROMOTION_CHECKPOINT_WAIT.as_secs()
                );
                let until = std::time::Instant::now() + PROMOTION_CHECKPOINT_WAIT;
                while control_timeline().await? < timeline && std::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Err(e) => return Err(sql(e)),
        }
        let now = control_timeline().await?;
        if now < timeline {
            return Err(Error::Failed(format!(
                "the master's pg_control names timeline {now} after a CHECKPOINT, not {timeline}"
            )));
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}

/// How long a member waits for a master older than PostgreSQL 15 to complete the checkpoint its
/// promotion requested (spread over `checkpoint_completion_target` of `checkpoint_timeout`,
/// 4.5 minutes at the defaults) before it gives the rewind up for now.
pub const PROMOTION_CHECKPOINT_WAIT: Duration = Duration::from_secs(300);

/// How a rejoin ended.
#[derive(Debug)]
pub enum Rejoin {
    /// The member's history is the master's (or a prefix of it): it follows as it is.
    NotDiverged,
    /// The master's history could not be read (as the superuser): nothing is judged.
    Unknown(String),
    /// Rewound; what it wrote after the fork is kept at the path.
    Rewound(KeptCopy),
    /// Diverged, but the rewind could not run: the member's data must be copied anew. Its WAL
    /// after the fork is kept (when `kept` is some), and the data directory is marked.
    Failed {
        /// Why.
        reason: String,
        /// The diverged WAL kept before the attempt, if it could be.
        kept: Option<KeptCopy>,
    },
}

/// A running replica whose WAL runs past where the master's history parted from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parted {
    /// The timeline of the replica's newest WAL.
    pub timeline: u32,
    /// Why, in words: the timelines, the fork point and how far the replica's WAL runs.
    pub why: String,
}

/// The newest timeline among WAL segment file names (`TTTTTTTTXXXXXXXXYYYYYYYY`, `.partial`
/// too); `None` when there is no segment.
pub fn newest_wal_timeline<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<u32> {
    names
        .into_iter()
        .filter_map(|name| {
            let stem = name.strip_suffix(".partial").unwrap_or(name);
            (stem.len() == 24 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(&stem[..8], 16).ok())
                .flatten()
        })
        .max()
}

/// For a running replica that does not stream from a master on a newer timeline: whether the
/// WAL it holds (up to `end`, on the newest timeline of its `pg_wal`) runs past the point where
/// the master's history parted from its own. Such a replica can never follow (PostgreSQL stops
/// at "forked off ... before current recovery point"); `None` when it did not part, or already
/// holds WAL of the master's timeline.
pub async fn replica_parted(s: &Settings, end: u64) -> Result<Option<Parted>> {
    let wal = s.pgdata().join("pg_wal");
    let names: Vec<String> = fs::read_dir(&wal)
        .map_err(io_err(format!("read {}", wal.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let (master_timeline, master_text) = master_history(s).await?;
    let Some(own_timeline) = newest_wal_timeline(names.iter().map(String::as_str)) else {
        return Ok(None);
    };
    if own_timeline >= master_timeline {
        return Ok(None);
    }
    let own_history = if own_timeline > 1 {
        let file = wal.join(history_name(own_timeline));
        fs::read_to_string(&file).map_err(io_err(format!("read {}", file.display())))?
    } else {
        String::new()
    };
    let bad = |what: &str| Error::DataDir {
        path: s.pgdata(),
        problem: format!("{what} history file is not a PostgreSQL timeline history"),
    };
    let own_path = parse_history(own_timeline, &own_history).ok_or_else(|| bad("its"))?;
    let master_path =
        parse_history(master_timeline, &master_text).ok_or_else(|| bad("the master's"))?;
    let fork = fork_point(&own_path, &master_path);
    Ok((end > fork).then(|| Parted {
        timeline: own_timeline,
        why: format!(
            "the master's timeline {master_timeline} parted from this replica's timeline \
             {own_timeline} at {}, but this replica holds WAL of timeline {own_timeline} up to {} \
             ({} bytes the master does not have): it can never follow as it is",
            lsn_text(fork),
            lsn_text(end),
            end - fork
        ),
    }))
}

/// Judges whether this member's data (postgres stopped) diverged from the master's history and,
/// if it did, keeps what would be thrown away and rewinds it with `pg_rewind`.
pub async fn rejoin(s: &Settings, bin: &PgBin) -> Result<Rejoin> {
    rejoin_from(s, bin, None).await
}

/// [`rejoin`], with the end of WAL the running replica was seen to hold (`received`: its WAL
/// timeline and LSN, [`replica_parted`]) when it runs past what `pg_control` shows: WAL received
/// but not yet replayed into pages is judged, and kept, too.
pub async fn rejoin_from(
    s: &Settings,
    bin: &PgBin,
    received: Option<(u32, u64)>,
) -> Result<Rejoin> {
    let pgdata = s.pgdata();
    let (s2, b2) = (s.clone(), bin.clone());
    let own = tokio::task::spawn_blocking(move || ended_cleanly(&b2, &s2.pgdata()))
        .await
        .map_err(|e| Error::Failed(format!("reading pg_control: {e}")))?;
    let own = match own {
        Ok(own) => own,
        Err(e) => return Ok(Rejoin::Unknown(e.to_string())),
    };
    let (own_timeline, end) = match received {
        Some((timeline, lsn)) if lsn > own.end_lsn() && timeline >= own.end_timeline() => {
            (timeline, lsn)
        }
        _ => (own.end_timeline(), own.end_lsn()),
    };
    let own_history = if own_timeline > 1 {
        let file = pgdata.join("pg_wal").join(history_name(own_timeline));
        fs::read_to_string(&file).map_err(io_err(format!("read {}", file.display())))?
    } else {
        String::new()
    };
    let (master_timeline, master_text) = match master_history(s).await {
        Ok(found) => found,
        Err(e) => return Ok(Rejoin::Unknown(e.to_string())),
    };
    let bad = |what: &str| Error::DataDir {
        path: pgdata.clone(),
        problem: format!("{what} history file is not a PostgreSQL timeline history"),
    };
    let own_path = parse_history(own_timeline, &own_history).ok_or_else(|| bad("its"))?;
    let master_path =
        parse_history(master_timeline, &master_text).ok_or_else(|| bad("the master's"))?;
    let fork = fork_point(&own_path, &master_path);
    if end <= fork {
        return Ok(Rejoin::NotDiverged);
    }
    let why = format!(
        "this member's history (timeline {}) parts from the master's (timeline {master_timeline}) \
         at {} and it wrote WAL up to {}",
        own_timeline,
        lsn_text(fork),
        lsn_text(end)
    );
    let diverged = Diverged {
        member: s.pod_name.clone(),
        fork_lsn: lsn_text(fork),
        end_lsn: lsn_text(end),
        bytes_after_fork: end - fork,
        timeline: own_timeline,
        master_timeline,
        when: now_utc(),
        why: why.clone(),
    };
    // Nothing is started on a history known to have parted: the agent stops and tries again.
    if let Err(e) = checkpoint_source(s, master_timeline).await {
        return Err(Error::Failed(format!(
            "{why}, but the master's pg_control cannot be brought to its timeline for pg_rewind \
             ({e}); nothing was changed, the member tries again at its next start"
        )));
    }
    let (s2, b2) = (s.clone(), bin.clone());
    tokio::task::spawn_blocking(move || keep_and_rewind(&s2, &b2, &own, fork, &diverged))
        .await
        .map_err(|e| Error::Failed(format!("rewinding: {e}")))?
}

fn keep_and_rewind(
    s: &Settings,
    bin: &PgBin,
    own: &ControlData,
    fork: u64,
    diverged: &Diverged,
) -> Result<Rejoin> {
    let pgdata = s.pgdata();
    // The mark goes in first: whatever happens next, this data directory says what it holds.
    datadir::write_atomic(
        &pgdata.join(DIVERGED_MARK),
        (serde_json::to_string_pretty(diverged).unwrap_or_default() + "\n").as_bytes(),
        0o600,
    )?;
    let kept = match keep_wal(s, own, fork, diverged) {
        Ok(k) => k,
        Err(e) => {
            return Ok(Rejoin::Failed {
                reason: format!(
                    "{}; keeping its WAL after the fork failed: {e}",
                    diverged.why
                ),
                kept: None,
            });
        }
    };
    match run_pg_rewind(s, bin) {
        Ok(()) => {
            let _ = fs::remove_file(pgdata.join(DIVERGED_MARK));
            crate::warn!(
                "{}: rewound from the master with pg_rewind; the {} bytes of WAL written after the \
                 fork are kept at {} (remove it once looked at)",
                diverged.why,
                diverged.bytes_after_fork,
                kept.path.display()
            );
            Ok(Rejoin::Rewound(kept))
        }
        Err(e) => Ok(Rejoin::Failed {
            reason: format!("{}; pg_rewind failed: {e}", diverged.why),
            kept: Some(kept),
        }),
    }
}

/// Copies the member's WAL segments from the fork's on, its history files and `pg_control` into
/// `<member>.diverged-<UTC time>/` with `diverged.json`.
fn keep_wal(s: &Settings, own: &ControlData, fork: u64, d: &Diverged) -> Result<KeptCopy> {
    let pgdata = s.pgdata();
    // A start that failed after keeping this same divergence (a refusal, a restart) keeps it once.
    let same = |k: &KeptCopy| {
        read_diverged(&k.path.join(DIVERGED_FILE)).is_some_and(|o| {
            (&o.fork_lsn, &o.end_lsn, o.timeline) == (&d.fork_lsn, &d.end_lsn, d.timeline)
        })
    };
    if let Some(k) = kept_copies(&s.env.data_root, &s.pod_name)
        .into_iter()
        .find(same)
    {
        crate::info!(
            "the WAL this member wrote after the fork is already kept at {}",
            k.path.display()
        );
        return Ok(k);
    }
    let stamp: String = d.when.chars().filter(char::is_ascii_digit).collect();
    let base = format!("{}.diverged-{}T{}Z", s.pod_name, &stamp[..8], &stamp[8..14]);
    let mut dir = s.env.data_root.join(&base);
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = s.env.data_root.join(format!("{base}-{n}"));
    }
    let building = s.env.data_root.join(format!(
        ".{}.partial",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    if building.exists() {
        fs::remove_dir_all(&building).map_err(io_err(format!("remove {}", building.display())))?;
    }
    datadir::ensure_dir(&building.join("pg_wal"), 0o700)?;
    datadir::ensure_dir(&building.join("global"), 0o700)?;
    let seg_size = own.segment_size.max(1);
    let fork_segment = fork / seg_size;
    let wal = pgdata.join("pg_wal");
    for e in fs::read_dir(&wal).map_err(io_err(format!("read {}", wal.display())))? {
        let e = e.map_err(io_err(format!("read {}", wal.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = name.ends_with(".history")
            || segment_number(&name, seg_size).is_some_and(|n| n >= fork_segment);
        if keep {
            fs::copy(e.path(), building.join("pg_wal").join(&name))
                .map_err(io_err(format!("copy {}", e.path().display())))?;
        }
    }
    let control = pgdata.join("global").join("pg_control");
    fs::copy(&control, building.join("global").join("pg_control"))
        .map_err(io_err(format!("copy {}", control.display())))?;
    datadir::write_atomic(
        &building.join(DIVERGED_FILE),
        (serde_json::to_string_pretty(d).unwrap_or_default() + "\n").as_bytes(),
        0o600,
    )?;
    fs::rename(&building, &dir).map_err(io_err(format!("rename to {}", dir.display())))?;
    Ok(KeptCopy {
        path: dir,
        bytes_after_fork: d.bytes_after_fork,
        fork_lsn: d.fork_lsn.clone(),
    })
}

/// The segment number of a WAL file name (`TTTTTTTTXXXXXXXXYYYYYYYY`, or with `.partial`).
pub fn segment_number(name: &str, segment_size: u64) -> Option<u64> {
    let stem = name.strip_suffix(".partial").unwrap_or(name);
    if stem.len() != 24 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&stem[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&stem[16..24], 16).ok()?;
    Some(log * (0x1_0000_0000 / segment_size.max(1)) + seg)
}

/// `pg_rewind` from the master as the replication role (pg_hba admits no superuser from the
/// pods): with TLS by the replication certificate, without by its password in a passfile (mode
/// 0600) named by the connection string, never in an argument. Keeps the member's identity
/// file (the master's would be copied over it).
fn run_pg_rewind(s: &Settings, bin: &PgBin) -> Result<()> {
    let pgdata = s.pgdata();
    let password = read_password(s, secret::REPLICATION_PASSWORD_KEY)?;
    let passfile = s
        .env
        .socket_dir
        .join(format!("{}.rewind.pgpass", s.pod_name));
    datadir::ensure_dir(&s.env.socket_dir, 0o700)?;
    datadir::write_atomic(
        &passfile,
        render::passfile_entry(contract::REPLICATION_USER, &password).as_bytes(),
        0o600,
    )?;
    let identity_file = identity::path(&pgdata);
    let own_identity = fs::read(&identity_file).ok();
    let conninfo = format!(
        "host={} port={} user={} dbname=postgres passfile={} application_name={} connect_timeout=5",
        render::conninfo_quote(&s.env.master_host),
        s.env.master_port,
        render::conninfo_quote(contract::REPLICATION_USER),
        render::conninfo_quote(&passfile.display().to_string()),
        render::conninfo_quote(&format!("{}-rewind", s.pod_name)),
    );
    // Over TLS verified against the CA, the role authenticates by the replication certificate
    // (pg_hba's `cert`; the passfile is then not read).
    let conninfo = match s.tls() {
        None => conninfo,
        Some(tls) => tls.libpq_params().into_iter().fold(conninfo, |c, (k, v)| {
            format!("{c} {k}={}", render::conninfo_quote(&v))
        }),
    };
    let result = bin
        .command("pg_rewind")
        .arg(format!("--target-pgdata={}", pgdata.display()))
        .arg(format!("--source-server={conninfo}"))
        .env("LC_ALL", "C")
        .run();
    let _ = fs::remove_file(&passfile);
    if let Some(bytes) = own_identity {
        datadir::write_atomic(&identity_file, &bytes, 0o600)?;
    }
    result.map_err(Error::from)
}

fn now_utc() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    crate::log::format_utc(since.as_secs() as i64, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_wal_timeline_is_read_from_segment_names_only() {
        assert_eq!(newest_wal_timeline([]), None);
        assert_eq!(
            newest_wal_timeline([
                "000000010000000000000003",
                "00000002.history",
                "000000010000000000000004.partial",
                "archive_status",
            ]),
            Some(1),
            "a history file alone is no WAL of its timeline"
        );
        assert_eq!(
            newest_wal_timeline([
                "000000010000000000000004",
                "0000000A0000000000000004.partial"
            ]),
            Some(10)
        );
    }

    #[test]
    fn lsns_and_segments() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(parse_lsn("1A/FF"), Some((0x1a << 32) | 0xff));
        assert_eq!(lsn_text(0x300_0060), "0/3000060");
        let seg = 16 << 20;
        assert_eq!(segment_number("000000020000000000000003", seg), Some(3));
        assert_eq!(
            segment_number("000000010000000100000002.partial", seg),
            Some(258)
        );
        assert_eq!(segment_number("00000002.history", seg), None);
    }

    #[test]
    fn controldata_fields() {
        let text = "pg_control version number:            1300\n\
                    Database cluster state:               shut down\n\
                    Latest checkpoint location:           0/5000028\n\
                    Latest checkpoint's REDO location:    0/5000028\n\
                    Latest checkpoint's TimeLineID:       2\n\
                    Minimum recovery ending location:     0/0\n\
                    Bytes per WAL segment:                16777216\n";
        let c = parse_controldata(text).unwrap();
        assert_eq!(c.timeline, 2);
        assert_eq!(c.end_lsn(), 0x500_0028);
        assert_eq!(c.end_timeline(), 2);
        // A standby that replayed into a new timeline after its last restartpoint.
        let standby = text
            .replace("0/0\n", "0/6000000\n")
            .replace("Bytes", "Min recovery ending loc's timeline:   3\nBytes");
        let c = parse_controldata(&standby).unwrap();
        assert_eq!((c.end_lsn(), c.end_timeline()), (0x600_0000, 3));
        assert_eq!(c.segment_size, 16 << 20);
        assert!(!c.crashed_primary(), "shut down");
        for (state, crashed) in [
            ("in production", true),
            ("shutting down", true),
            ("shut down in recovery", false),
            ("in archive recovery", false),
            ("in crash recovery", false),
        ] {
            let c = parse_controldata(&text.replace("shut down\n", &format!("{state}\n"))).unwrap();
            assert_eq!(c.crashed_primary(), crashed, "{state}");
        }
        assert_eq!(parse_controldata("nothing"), None);
    }

    #[test]
    fn fork_points_of_a_promoted_replica_and_a_former_master() {
        let tl1 = parse_history(1, "").unwrap();
        let promoted = parse_history(2, "1\t0/3000060\tno recovery target specified\n").unwrap();
        // A replica promoted by hand against a master still on timeline 1.
        assert_eq!(fork_point(&promoted, &tl1), 0x300_0060);
        // A former master on timeline 1 against the promoted replica, master now.
        assert_eq!(fork_point(&tl1, &promoted), 0x300_0060);
        // Same timeline: nothing parts.
        assert_eq!(fork_point(&tl1, &tl1), u64::MAX);
        // A member on timeline 2 following a master that moved on to 3 from it.
        let three = parse_history(3, "1\t0/3000060\tx\n2\t0/7000000\ty\n").unwrap();
        assert_eq!(fork_point(&promoted, &three), 0x700_0000);
        // Siblings: both forked off timeline 1 at different points.
        let sibling = parse_history(3, "1\t0/4000000\tz\n").unwrap();
        assert_eq!(fork_point(&promoted, &sibling), 0x300_0060);
        assert_eq!(parse_history(2, "garbage line"), None);
    }

    #[test]
    fn kept_copies_are_diverged_dirs_and_marked_previous_copies() {
        let t = tempfile::tempdir().unwrap();
        let d = Diverged {
            member: "pgset-1".into(),
            fork_lsn: "0/3000060".into(),
            end_lsn: "0/3001000".into(),
            bytes_after_fork: 4000,
            timeline: 2,
            master_timeline: 1,
            when: "now".into(),
            why: "test".into(),
        };
        let write = |dir: &str, file: &str, d: &Diverged| {
            fs::create_dir_all(t.path().join(dir)).unwrap();
            fs::write(
                t.path().join(dir).join(file),
                serde_json::to_string(d).unwrap(),
            )
            .unwrap();
        };
        assert!(kept_copies(t.path(), "pgset-1").is_empty());
        write("pgset-1.diverged-20261207T120000Z", DIVERGED_FILE, &d);
        write("pgset-1.previous", DIVERGED_MARK, &d);
        write("pgset-2.diverged-20261207T120000Z", DIVERGED_FILE, &d);
        let k = kept_copies(t.path(), "pgset-1");
        assert_eq!(k.len(), 2, "{k:?}");
        assert!(k.iter().all(|c| c.bytes_after_fork == 4000));
        // A `.previous` without writes after the fork is the ordinary kept copy.
        let mut none = d.clone();
        none.bytes_after_fork = 0;
        write("pgset-1.previous", DIVERGED_MARK, &none);
        assert_eq!(kept_copies(t.path(), "pgset-1").len(), 1);
    }
}
