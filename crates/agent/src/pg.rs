//! The agent's PostgreSQL client: a connection to its own postgres over the local socket (as the
//! superuser, trusted locally) and short-lived ones to the master as the replication role, every
//! call under a deadline; and the state the agent reads from them (role, WAL receiver, LSNs,
//! slots, the master's system identifier and oldest WAL). No process is started for a question.

use std::path::Path;
use std::time::Duration;

use pgset_spec::contract::{self, secret};
use pgset_spec::status::Slot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls, Row};

use crate::bootstrap::read_password;
use crate::settings::Settings;
use crate::{Error, Result};

/// The deadline of one connection attempt or one statement.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// One open connection, with the task that drives it.
pub struct Db {
    client: Client,
    driver: JoinHandle<()>,
    what: String,
}

impl Drop for Db {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("what", &self.what).finish()
    }
}

async fn within<T>(
    what: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Sql {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(Error::SqlTimeout {
            what: what.to_string(),
            timeout,
        }),
    }
}

/// The superuser over a socket directory, every statement and lock wait under `timeout`.
fn superuser_config(
    socket_dir: &Path,
    port: u16,
    application_name: &str,
    timeout: Duration,
) -> Config {
    let mut c = Config::new();
    c.host_path(socket_dir)
        .port(port)
        .user(contract::SUPERUSER)
        .dbname("postgres")
        .application_name(application_name)
        .connect_timeout(timeout)
        .options(format!(
            "-c statement_timeout={} -c lock_timeout={}",
            timeout.as_millis(),
            timeout.as_millis()
        ));
    c
}

impl Db {
    async fn open(config: Config, what: String, timeout: Duration) -> Result<Db> {
        let (client, connection) = within(&what, timeout, config.connect(NoTls)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Db {
            client,
            driver,
            what,
        })
    }

    /// Like [`Db::open`], over TLS verified by `tls` (`verify-full`: chain and host name),
    /// presenting the replication certificate.
    async fn open_tls(
        mut config: Config,
        tls: &crate::tls::TlsFiles,
        what: String,
        timeout: Duration,
    ) -> Result<Db> {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let connector = tls.replication_connector()?;
        let (client, connection) = within(&what, timeout, config.connect(connector)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Db {
            client,
            driver,
            what,
        })
    }

    /// A connection to this member's own postgres over its socket directory.
    pub async fn local(s: &Settings, timeout: Duration) -> Result<Db> {
        let c = superuser_config(&s.env.socket_dir, s.env.port, "pgset-agent", timeout);
        Db::open(c, format!("postgres of {}", s.pod_name), timeout).await
    }

    /// A connection as the superuser to the postgres listening on `port` in `socket_dir`
    /// (trusted locally): a local set's member, asked by local status.
    pub async fn socket(
        socket_dir: &Path,
        port: u16,
        application_name: &str,
        timeout: Duration,
    ) -> Result<Db> {
        let c = superuser_config(socket_dir, port, application_name, timeout);
        let what = format!("postgres on {} port {port}", socket_dir.display());
        Db::open(c, what, timeout).await
    }

    /// A connection to the master as the replication role: over TLS verified against the set's
    /// CA by the replication certificate when the member has TLS files, else by the password
    /// from the Secret's file.
    pub async fn master(s: &Settings, timeout: Duration) -> Result<Db> {
        let password = read_password(s, secret::REPLICATION_PASSWORD_KEY)?;
        let mut c = Config::new();
        c.host(&s.env.master_host)
            .port(s.env.master_port)
            .user(contract::REPLICATION_USER)
            .password(password)
            .dbname("postgres")
            .application_name(format!("{}-agent", s.pod_name))
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .options(format!("-c statement_timeout={}", timeout.as_millis()));
        let what = format!("the master {}:{}", s.env.master_host, s.env.master_port);
        match s.tls() {
            Some(tls) => Db::open_tls(c, &tls, what, timeout).await,
            None => Db::open(c, what, timeout).await,
        }
    }

    /// Whether the connection has been closed (the server went away).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// One row of `sql` (simple parameters), under the deadline.
    pub async fn row(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Row> {
        within(&self.what, DEADLINE, self.client.query_one(sql, params)).await
    }

    /// Every row of `sql`, under the deadline.
    pub async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        within(&self.what, DEADLINE, self.client.query(sql, params)).await
    }

    /// Runs statements without results (simple protocol; nothing is logged by the agent).
    pub async fn execute_batch(&self, sql: &str) -> Result<()> {
        within(&self.what, DEADLINE, self.client.batch_execute(sql)).await
    }
}

/// Whether postgres answered a connection with SQLSTATE 57P03 (`cannot_connect_now`): it runs
/// but refuses connections for now (starting up, in crash recovery, not yet consistent, or
/// shutting down). PostgreSQL's own code, never its message text.
pub fn cannot_connect_now(e: &Error) -> bool {
    matches!(e, Error::Sql { source, .. }
        if source.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW))
}

/// An LSN as the byte position PostgreSQL counts from `0/0`.
pub type Lsn = i64;

/// `X/Y` of an LSN, as PostgreSQL prints it.
pub fn lsn_text(lsn: Lsn) -> String {
    let v = lsn as u64;
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// What the member's own postgres says of itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnState {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The timeline of the last checkpoint (`pg_control_checkpoint()`).
    pub timeline: i64,
    /// Master: `pg_current_wal_lsn()`.
    pub current_lsn: Option<Lsn>,
    /// Replica: the WAL receiver's status (`streaming`, `starting`, …), when one runs.
    pub receiver_status: Option<String>,
    /// Replica: the WAL receiver's pid (from `pg_stat_activity`, which lists it while it is
    /// still connecting; `pg_stat_wal_receiver` shows it only once connected).
    pub receiver_pid: Option<i32>,
    /// Replica: `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<Lsn>,
    /// Replica: `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// Replica: `pg_is_wal_replay_paused()` (on 14+ also true while a pause is requested);
    /// `None` when not in recovery.
    pub replay_paused: Option<bool>,
    /// `server_version` (for example `15.14 (Debian 15.14-0+deb12u1)`).
    pub server_version: String,
    /// Seconds since the postmaster started (`now() - pg_postmaster_start_time()`), measured by
    /// the server itself so no clock of another machine enters it.
    pub uptime_s: f64,
    /// `pg_postmaster_start_time()`, as PostgreSQL prints it.
    pub started_at: String,
}

/// Reads [`OwnState`] in one statement (one round trip per check, replay's pause included).
pub async fn own_state(db: &Db) -> Result<OwnState> {
    let r = db
        .row(
            "SELECT pg_is_in_recovery(),
                    (SELECT timeline_id FROM pg_control_checkpoint())::bigint,
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END,
                    (SELECT status FROM pg_stat_wal_receiver),
                    (SELECT pid FROM pg_stat_activity WHERE backend_type = 'walreceiver'
                      LIMIT 1),
                    pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint,
                    pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
                    current_setting('server_version'),
                    extract(epoch FROM now() - pg_postmaster_start_time())::float8,
                    pg_postmaster_start_time()::text,
                    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END",
            &[],
        )
        .await?;
    Ok(OwnState {
        in_recovery: r.get(0),
        timeline: r.get::<_, Option<i64>>(1).unwrap_or_default(),
        current_lsn: r.get(2),
        receiver_status: r.get(3),
        receiver_pid: r.get(4),
        receive_lsn: r.get(5),
        replay_lsn: r.get(6),
        server_version: r.get(7),
        uptime_s: r.get(8),
        started_at: r.get(9),
        replay_paused: r.get(10),
    })
}

/// What the master says, as a replica needs it to judge whether it can follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MasterView {
    /// The master's database system identifier.
    pub system_identifier: u64,
    /// The master's timeline: the one it writes WAL on now (its last checkpoint's lags a
    /// promotion until the next checkpoint, and a replica that followed the promotion would
    /// look ahead of it), or in recovery its last restartpoint's.
    pub timeline: i64,
    /// `wal_status` of this replica's slot (`reserved`, `extended`, `unreserved`, `lost`), or
    /// `None` when the slot does not exist.
    pub slot_wal_status: Option<String>,
    /// The oldest WAL segment in the master's `pg_wal` (segment part of the name, 16 hex digits).
    pub oldest_segment: Option<String>,
    /// The segment the replica needs next (segment part), when it told its position.
    pub needed_segment: Option<String>,
    /// Total size of the master's databases, in bytes (what a new copy needs).
    pub database_bytes: i64,
}

/// Reads the [`MasterView`] for `slot`; `needed` is the replica's restart position.
pub async fn master_view(db: &Db, slot: &str, needed: Option<Lsn>) -> Result<MasterView> {
    let needed_text = needed.map(lsn_text);
    let r = db
        .row(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text,
                    CASE WHEN pg_is_in_recovery()
                      THEN (SELECT timeline_id FROM pg_control_checkpoint())::bigint
                      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))
                           ::bit(32)::bigint END,
                    (SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1),
                    (SELECT min(substr(name, 9)) FROM pg_ls_waldir()
                      WHERE name ~ '^[0-9A-F]{24}$'),
                    substr(pg_walfile_name($2::text::pg_lsn), 9),
                    (SELECT sum(pg_database_size(oid)) FROM pg_database
                      WHERE datallowconn)::bigint",
            &[&slot, &needed_text],
        )
        .await?;
    let sysid: String = r.get(0);
    Ok(MasterView {
        system_identifier: sysid.parse().unwrap_or_default(),
        timeline: r.get::<_, Option<i64>>(1).unwrap_or_default(),
        slot_wal_status: r.get(2),
        oldest_segment: r.get(3),
        needed_segment: r.get(4),
        database_bytes: r.get::<_, Option<i64>>(5).unwrap_or_default(),
    })
}

/// Creates this replica's slot on the master when it is missing, reserving WAL at once (a slot
/// made by `pg_receivewal --create-slot` reserves nothing until a standby connects).
/// Returns whether it was created.
pub async fn ensure_slot(db: &Db, slot: &str) -> Result<bool> {
    let r = db
        .row(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if r.get::<_, i64>(0) > 0 {
        return Ok(false);
    }
    db.row(
        "SELECT 1 FROM pg_create_physical_replication_slot($1, true)",
        &[&slot],
    )
    .await?;
    Ok(true)
}

/// Drops this replica's slot on the master when it exists and no one uses it.
pub async fn drop_idle_slot(db: &Db, slot: &str) -> Result<bool> {
    let rows = db
        .rows(
            "SELECT pg_drop_replication_slot(slot_name)::text FROM pg_replication_slots
              WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// One standby as the master's `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StandbyRow {
    /// Its `application_name` (the member's name).
    pub name: String,
    /// `streaming`, `catchup`, `startup`, `backup`, `stopping`.
    pub state: Option<String>,
    /// `async`, `sync`, `potential`, `quorum`.
    pub sync_state: Option<String>,
    /// WAL sent but not yet replayed, in bytes.
    pub unreplayed_bytes: Option<i64>,
    /// `replay_lag` in ms; `None` when the master has no recent measurement (idle).
    pub replay_lag_ms: Option<f64>,
}

/// The master's `pg_stat_replication`, one row per standby.
pub async fn standbys(db: &Db) -> Result<Vec<StandbyRow>> {
    let rows = db
        .rows(
            "SELECT application_name::text, state, sync_state,
                    pg_wal_lsn_diff(sent_lsn, replay_lsn)::bigint,
                    (extract(epoch FROM replay_lag) * 1000)::float8
               FROM pg_stat_replication ORDER BY application_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StandbyRow {
            name: r.get(0),
            state: r.get(1),
            sync_state: r.get(2),
            unreplayed_bytes: r.get(3),
            replay_lag_ms: r.get(4),
        })
        .collect())
}

/// The master's physical slots (the same [`Slot`] local status reads with one query).
pub async fn slots(db: &Db) -> Result<Vec<Slot>> {
    let rows = db
        .rows(
            "SELECT slot_name::text, active, wal_status,
                    CASE WHEN restart_lsn IS NULL THEN NULL
                         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END
               FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Slot {
            slot: r.get(0),
            active: r.get(1),
            wal_status: r.get(2),
            retained_bytes: r.get(3),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_matches_postgres() {
        assert_eq!(lsn_text(0), "0/0");
        assert_eq!(lsn_text(0x1_0300_0028), "1/3000028");
    }
}
