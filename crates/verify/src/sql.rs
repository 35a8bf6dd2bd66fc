//! The commands verify runs inside the pods (psql, getent, stat) and the parsers of their output.
//!
//! psql runs unaligned, tuples only, `|`-separated, quiet, with `ON_ERROR_STOP` and verbose errors
//! (so an error line carries its SQLSTATE): `psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1
//! -v VERBOSITY=verbose`. Outputs captured from a real PostgreSQL are under
//! `tests/fixtures/verify/`.

use pgset_spec::contract;

/// The table verify writes its marker rows into, and drops when it is done.
pub const MARKER_TABLE: &str = "pgset_verify_marker";

/// Database verify connects to.
pub const DATABASE: &str = "postgres";

/// SQLSTATE of "cannot execute ... in a read-only transaction".
pub const SQLSTATE_READ_ONLY: &str = "25006";

/// `pg_stat_replication` on the master: one row per walsender, by `application_name` (the pod
/// name): state, sync state, bytes not yet replayed, replay lag in seconds (empty when idle).
pub const REPLICATION_QUERY: &str = "select application_name, state, sync_state, \
     pg_wal_lsn_diff(sent_lsn, replay_lsn), extract(epoch from replay_lag) \
     from pg_stat_replication order by application_name";

/// `t` on a standby, `f` on a primary.
pub const IN_RECOVERY_QUERY: &str = "select pg_is_in_recovery()";

/// The running server's data directory.
pub const DATA_DIRECTORY_QUERY: &str = "show data_directory";

/// A write a read-only server must refuse with [`SQLSTATE_READ_ONLY`].
pub const READ_ONLY_PROBE: &str = "create table pgset_verify_read_only_probe (id integer)";

/// Creates the marker table (idempotent) and lets the replication role insert into it and read
/// it (the insert returns the token): with TLS the marker is written through the master Service
/// as that role (the superuser is not admitted from the pods).
pub fn create_marker_table() -> String {
    format!(
        "create table if not exists {MARKER_TABLE} (token text primary key, \
         written_at timestamptz not null default clock_timestamp()); \
         grant select, insert on {MARKER_TABLE} to {}",
        contract::REPLICATION_USER
    )
}

/// Drops the marker table (idempotent).
pub fn drop_marker_table() -> String {
    format!("drop table if exists {MARKER_TABLE}")
}

/// Creates the marker table and prints the master's WAL position after it.
pub fn create_marker_table_at_lsn() -> [String; 2] {
    [
        create_marker_table(),
        "select pg_current_wal_lsn()".to_string(),
    ]
}

/// On a replica: waits (up to `timeout_s`) until it has replayed WAL up to `lsn`. A statement of
/// its own, so the next one (a new transaction) sees the tables created before `lsn`.
pub fn wait_for_replay(lsn: &Lsn, timeout_s: u64) -> String {
    format!(
        "do $$
declare
  deadline timestamptz := clock_timestamp() + interval '{timeout_s} seconds';
begin
  while coalesce(pg_last_wal_replay_lsn() < '{lsn}'::pg_lsn, true) loop
    if clock_timestamp() > deadline then
      raise exception using errcode = 'P0001', message = 'WAL up to {lsn} not replayed within {timeout_s} seconds';
    end if;
    perform pg_sleep(0.005);
  end loop;
end
$$"
    )
}

/// A WAL position as PostgreSQL prints it (`0/5000060`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lsn(String);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses the last line of `pg_current_wal_lsn()` output.
pub fn parse_lsn(out: &str) -> Result<Lsn, ParseError> {
    let line = out
        .lines()
        .rev()
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .trim();
    let hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match line.split_once('/') {
        Some((hi, lo)) if hex(hi) && hex(lo) => Ok(Lsn(line.to_string())),
        _ => Err(ParseError {
            what: "WAL position",
            line: line.to_string(),
        }),
    }
}

/// Writes a marker row; prints the token.
pub fn insert_marker(token: &str) -> String {
    check_token(token);
    format!("insert into {MARKER_TABLE} (token) values ('{token}') returning token")
}

/// Prints the token when the marker row is present.
pub fn select_marker(token: &str) -> String {
    check_token(token);
    format!("select token from {MARKER_TABLE} where token = '{token}'")
}

/// On a replica where the marker table exists (see [`wait_for_replay`]): waits (polling every
/// millisecond, up to `timeout_s`) until the marker row is visible and remembers when it was first seen and after how many polls. Run before the insert,
/// followed by [`report_marker_sighting`] in the same session.
pub fn wait_for_marker(token: &str, timeout_s: u64) -> String {
    check_token(token);
    format!(
        "do $$
declare
  polls integer := 0;
  deadline timestamptz := clock_timestamp() + interval '{timeout_s} seconds';
begin
  loop
    polls := polls + 1;
    exit when exists (select 1 from {MARKER_TABLE} where token = '{token}');
    if clock_timestamp() > deadline then
      raise exception using errcode = 'P0001', message = 'marker not replicated within {timeout_s} seconds';
    end if;
    perform pg_sleep(0.001);
  end loop;
  perform set_config('pgset_verify.seen_at', clock_timestamp()::text, false);
  perform set_config('pgset_verify.polls', polls::text, false);
end
$$"
    )
}

/// After [`wait_for_marker`]: `token|ms from the commit-time clock reading to first sight|polls`.
pub fn report_marker_sighting(token: &str) -> String {
    check_token(token);
    format!(
        "select token, extract(epoch from current_setting('pgset_verify.seen_at')::timestamptz - written_at) * 1000, \
         current_setting('pgset_verify.polls') from {MARKER_TABLE} where token = '{token}'"
    )
}

fn check_token(token: &str) {
    assert!(
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric()),
        "marker tokens are generated alphanumeric strings"
    );
}

/// A fresh marker token: time and process, hex.
pub fn new_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("v{:x}{:x}", nanos, std::process::id())
}

/// The psql flags every invocation shares.
fn psql_flags() -> Vec<String> {
    [
        "-X",
        "-q",
        "-A",
        "-t",
        "-F",
        "|",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
    ]
    .map(String::from)
    .to_vec()
}

/// psql over the pod's local socket as the superuser (the image trusts the socket), running each
/// statement of `sql` in one session.
pub fn psql_local(sql: &[&str]) -> Vec<String> {
    psql_argv(
        vec!["psql".to_string()],
        contract::SOCKET_DIR,
        None,
        contract::SUPERUSER,
        sql,
    )
}

/// psql to `host` over TCP from a member's pod. With TLS (`tls`) as the replication role by
/// its mounted certificate (`verify-full` against the mounted CA): pg_hba admits no superuser
/// from the pods, and the certificate is what a member itself connects with. Without TLS as the
/// superuser, whose password the shell in the pod reads from the mounted Secret file. Either
/// way no secret appears in an argument sent or in a log.
pub fn psql_remote(host: &str, sql: &[&str], tls: bool) -> Vec<String> {
    let prefix = vec![
        "sh".to_string(),
        "-c".into(),
        remote_script(tls),
        "psql".into(),
    ];
    let user = if tls {
        contract::REPLICATION_USER
    } else {
        contract::SUPERUSER
    };
    psql_argv(prefix, host, Some(contract::POSTGRES_PORT), user, sql)
}

/// The shell line that runs psql with the credentials of [`psql_remote`].
pub fn remote_script(tls: bool) -> String {
    if tls {
        let file = |name: &str| format!("{}/{name}", contract::TLS_MOUNT);
        format!(
            "PGSSLMODE=verify-full PGSSLROOTCERT={} PGSSLCERT={} PGSSLKEY={} PGCONNECT_TIMEOUT=5 exec psql \"$@\"",
            file(contract::tls::CA_CERT),
            file(contract::tls::REPLICATION_CERT),
            file(contract::tls::REPLICATION_KEY),
        )
    } else {
        format!(
            "PGPASSWORD=\"$(cat {}/{})\" PGCONNECT_TIMEOUT=5 exec psql \"$@\"",
            contract::SECRET_MOUNT,
            contract::secret::SUPERUSER_PASSWORD_KEY
        )
    }
}

fn psql_argv(
    mut argv: Vec<String>,
    host: &str,
    port: Option<u16>,
    user: &str,
    sql: &[&str],
) -> Vec<String> {
    argv.extend(psql_flags());
    argv.extend(["-h".to_string(), host.to_string()]);
    if let Some(port) = port {
        argv.extend(["-p".to_string(), port.to_string()]);
    }
    argv.extend(["-U", user, "-d", DATABASE].map(String::from));
    for s in sql {
        argv.push("-c".into());
        argv.push((*s).to_string());
    }
    argv
}

/// `getent hosts <name>`.
pub fn getent_hosts(name: &str) -> Vec<String> {
    vec!["getent".into(), "hosts".into(), name.into()]
}

/// `stat` of each path: `path|uid|gid|octal mode|type`.
pub fn stat(paths: &[String]) -> Vec<String> {
    let mut argv = vec!["stat".to_string(), "-c".into(), "%n|%u|%g|%a|%F".into()];
    argv.extend(paths.iter().cloned());
    argv
}

/// Rows of unaligned, tuples-only output: one per non-empty line, fields split on `|`.
pub fn rows(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').collect())
        .collect()
}

/// A parse failure: what was expected, and the line that did not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected {what} output: {line:?}")]
pub struct ParseError {
    /// Which output.
    pub what: &'static str,
    /// The offending line.
    pub line: String,
}

fn parse_err(what: &'static str, line: &[&str]) -> ParseError {
    ParseError {
        what,
        line: line.join("|"),
    }
}

/// One row of [`REPLICATION_QUERY`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationRow {
    /// The replica's `application_name` (its pod name).
    pub application_name: String,
    /// `streaming`, `catchup`, `startup`, `backup`, `stopping`.
    pub state: String,
    /// `async`, `sync`, `potential`, `quorum`.
    pub sync_state: String,
    /// Bytes sent but not yet replayed, when known.
    pub unreplayed_bytes: Option<f64>,
    /// `replay_lag` in ms; `None` when the master has no recent measurement (idle).
    pub replay_lag_ms: Option<f64>,
}

impl ReplicationRow {
    /// True in state `streaming`.
    pub fn is_streaming(&self) -> bool {
        self.state == "streaming"
    }
}

/// Parses the output of [`REPLICATION_QUERY`].
pub fn parse_replication(out: &str) -> Result<Vec<ReplicationRow>, ParseError> {
    rows(out)
        .into_iter()
        .map(|r| {
            let [name, state, sync, bytes, lag] = r.as_slice() else {
                return Err(parse_err("pg_stat_replication", &r));
            };
            let number = |s: &str| -> Result<Option<f64>, ParseError> {
                if s.is_empty() {
                    Ok(None)
                } else {
                    s.parse::<f64>()
                        .map(Some)
                        .map_err(|_| parse_err("pg_stat_replication", &r))
                }
            };
            Ok(ReplicationRow {
                application_name: name.to_string(),
                state: state.to_string(),
                sync_state: sync.to_string(),
                unreplayed_bytes: number(bytes)?,
                replay_lag_ms: number(lag)?.map(|s| s * 1000.0),
            })
        })
        .collect()
}

/// Parses a single boolean (`t` / `f`).
pub fn parse_bool(out: &str) -> Result<bool, ParseError> {
    match out.trim() {
        "t" => Ok(true),
        "f" => Ok(false),
        other => Err(ParseError {
            what: "boolean",
            line: other.to_string(),
        }),
    }
}

/// The SQLSTATE of the first error psql printed with `VERBOSITY=verbose`
/// (`ERROR:  25006: cannot execute ...`).
pub fn sqlstate(stderr: &str) -> Option<&str> {
    stderr.lines().find_map(|l| {
        let rest = l
            .strip_prefix("ERROR:  ")
            .or_else(|| l.strip_prefix("FATAL:  "))?;
        let (code, _) = rest.split_once(": ")?;
        (code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(code)
    })
}

/// A replica's sighting of the marker row ([`report_marker_sighting`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MarkerSighting {
    /// The token.
    pub token: String,
    /// ms from the master's clock at the insert to the replica's clock at first sight.
    pub after_ms: f64,
    /// Polls until seen; 1 means it was already there, so `after_ms` is only an upper bound.
    pub polls: u64,
}

/// Parses the output of [`report_marker_sighting`].
pub fn parse_marker_sighting(out: &str) -> Result<MarkerSighting, ParseError> {
    let rows = rows(out);
    let [row] = rows.as_slice() else {
        return Err(ParseError {
            what: "marker sighting",
            line: out.trim().to_string(),
        });
    };
    let [token, after, polls] = row.as_slice() else {
        return Err(parse_err("marker sighting", row));
    };
    Ok(MarkerSighting {
        token: token.to_string(),
        after_ms: after
            .parse()
            .map_err(|_| parse_err("marker sighting", row))?,
        polls: polls
            .parse()
            .map_err(|_| parse_err("marker sighting", row))?,
    })
}

/// Addresses printed by `getent hosts` (first field of each line).
pub fn parse_getent_hosts(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// One line of [`stat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStat {
    /// The path.
    pub path: String,
    /// Owner uid.
    pub uid: i64,
    /// Owner gid.
    pub gid: i64,
    /// Permission bits.
    pub mode: u32,
    /// `directory`, `regular file`, ...
    pub kind: String,
}

/// Parses the output of [`stat`].
pub fn parse_stat(out: &str) -> Result<Vec<PathStat>, ParseError> {
    rows(out)
        .into_iter()
        .map(|r| {
            let [path, uid, gid, mode, kind] = r.as_slice() else {
                return Err(parse_err("stat", &r));
            };
            let bad = || parse_err("stat", &r);
            Ok(PathStat {
                path: path.to_string(),
                uid: uid.parse().map_err(|_| bad())?,
                gid: gid.parse().map_err(|_| bad())?,
                mode: u32::from_str_radix(mode, 8).map_err(|_| bad())?,
                kind: kind.to_string(),
            })
        })
        .collect()
}
