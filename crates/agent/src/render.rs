//! Pure rendering of the files and statements the agent writes: the managed configuration include,
//! pg_hba.conf, the libpq passfile, `primary_conninfo`, and the replication-role SQL. With TLS
//! ([`Settings::tls`]) the include also turns TLS 1.3 on and names the managed pg_hba
//! ([`MANAGED_HBA`]: TCP over TLS only, replication by client certificate), and
//! `primary_conninfo` verifies the master (`verify-full`) and presents the certificate.
//! Every setting written here is understood by each supported major (`contract::SUPPORTED_MAJORS`).

use pgset_spec::{Cidr, contract};

use crate::settings::{Role, Settings};

/// The configuration file the agent owns inside PGDATA, rewritten on every start.
pub const MANAGED_CONF: &str = "pgset.conf";
/// The pg_hba file the agent owns inside PGDATA with TLS (named by `hba_file` in the managed
/// include, rewritten on every start); without TLS, `pg_hba.conf` written at initdb serves.
pub const MANAGED_HBA: &str = "pgset_hba.conf";
/// The line appended once to `postgresql.conf` so the managed file wins over earlier settings.
pub const INCLUDE_LINE: &str = "include_if_exists = 'pgset.conf'";
/// The WAL a slot may hold back before PostgreSQL invalidates it: bounds the disk a replica that
/// went away can pin.
pub const MAX_SLOT_WAL_KEEP_SIZE: &str = "1GB";
/// WAL kept regardless of slots, so a replica that restarts quickly catches up by streaming.
pub const WAL_KEEP_SIZE: &str = "128MB";
/// Sender and slot capacity: every member of the largest set, plus room for base backups.
pub const MAX_WAL_SENDERS: i32 = pgset_spec::MAX_REPLICAS + 8;

/// A `postgresql.conf` string literal.
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A libpq connection-string value.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
}

/// A SQL string literal (standard_conforming_strings is on by default since 9.1).
pub fn sql_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// An entry of a libpq passfile (`host:port:db:user:password`) matching any host, port and database.
pub fn passfile_entry(user: &str, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', r"\\").replace(':', r"\:");
    format!("*:*:*:{}:{}\n", esc(user), esc(password))
}

/// The connection string replicas use to reach the master (no password: it is in the passfile).
pub fn primary_conninfo(s: &Settings) -> String {
    let mut params = vec![
        ("host", s.env.master_host.clone()),
        ("port", s.env.master_port.to_string()),
        ("user", contract::REPLICATION_USER.to_string()),
        ("passfile", s.replication_passfile().display().to_string()),
        ("application_name", s.pod_name.clone()),
        // A master that went away must be noticed in seconds, not after the kernel's TCP
        // timeouts (minutes): bounded connects, keepalives and unacknowledged-data timeout.
        ("connect_timeout", "2".to_string()),
        ("keepalives", "1".to_string()),
        ("keepalives_idle", "5".to_string()),
        ("keepalives_interval", "2".to_string()),
        ("keepalives_count", "3".to_string()),
        ("tcp_user_timeout", "10000".to_string()),
    ];
    if let Some(tls) = s.tls() {
        params.extend(tls.libpq_params());
    }
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", conninfo_quote(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The managed configuration include for this member's role.
pub fn managed_conf(s: &Settings) -> String {
    let mut lines = vec![
        "# Written by pgset-agent on every start; edits here are replaced.".to_string(),
        format!("listen_addresses = {}", conf_quote(&s.env.listen_addresses)),
        format!("port = {}", s.env.port),
        format!(
            "unix_socket_directories = {}",
            conf_quote(&s.env.socket_dir.display().to_string())
        ),
        "password_encryption = 'scram-sha-256'".to_string(),
        "wal_level = replica".to_string(),
        // pg_rewind needs hint-bit changes in the WAL (or data checksums) to rewind a member
        // whose history parted from the master's instead of copying it anew.
        "wal_log_hints = on".to_string(),
        format!("max_wal_senders = {MAX_WAL_SENDERS}"),
        format!("max_replication_slots = {MAX_WAL_SENDERS}"),
        format!(
            "max_slot_wal_keep_size = {}",
            conf_quote(MAX_SLOT_WAL_KEEP_SIZE)
        ),
        format!("wal_keep_size = {}", conf_quote(WAL_KEEP_SIZE)),
        "hot_standby = on".to_string(),
        "hot_standby_feedback = on".to_string(),
        "lc_messages = 'C'".to_string(),
        "log_line_prefix = '%m [%p] '".to_string(),
        format!("cluster_name = {}", conf_quote(&s.pod_name)),
    ];
    if let Some(tls) = s.tls() {
        let path = |p: std::path::PathBuf| conf_quote(&p.display().to_string());
        lines.extend([
            "ssl = on".to_string(),
            format!("ssl_cert_file = {}", path(tls.server_cert())),
            format!("ssl_key_file = {}", path(tls.server_key())),
            // Client certificates are verified against it (replication authenticates by one).
            format!("ssl_ca_file = {}", path(tls.ca_cert())),
            "ssl_min_protocol_version = 'TLSv1.3'".to_string(),
            format!("hba_file = {}", path(s.pgdata().join(MANAGED_HBA))),
        ]);
    }
    if s.role == Role::Replica {
        lines.push(format!(
            "primary_conninfo = {}",
            conf_quote(&primary_conninfo(s))
        ));
        lines.push(format!("primary_slot_name = {}", conf_quote(&s.slot())));
        lines.push("wal_receiver_timeout = '30s'".to_string());
        lines.push("wal_retrieve_retry_interval = '1s'".to_string());
    }
    lines.join("\n") + "\n"
}

/// pg_hba.conf of a new master: the local socket as the official image does, scram over TCP for
/// replication (the replication role only) and for clients.
pub fn pg_hba() -> String {
    format!(
        "# Written by pgset-agent at initdb.\n\
         # TYPE  DATABASE     USER        ADDRESS  METHOD\n\
         local   all          all                  trust\n\
         local   replication  all                  trust\n\
         host    replication  {user}  all      scram-sha-256\n\
         host    all          all         all      scram-sha-256\n",
        user = contract::REPLICATION_USER
    )
}

/// Who the managed pg_hba admits over TCP besides password clients: the networks of
/// [`contract::env::SUPERUSER_FROM`] and [`contract::env::REPLICATION_FROM`] as the agent reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaAccess {
    /// Networks the superuser may log in from (by password, over TLS). Empty: the local socket
    /// only.
    pub superuser_from: Vec<Cidr>,
    /// Networks replication and the replication role's questions may come from; `None`: any.
    pub replication_from: Option<Vec<Cidr>>,
}

impl HbaAccess {
    /// What the member's env says: the superuser from the loopback unless told otherwise,
    /// replication from anywhere unless told otherwise.
    pub fn of(s: &Settings) -> HbaAccess {
        HbaAccess {
            superuser_from: s.env.superuser_from.clone().unwrap_or_else(Cidr::loopback),
            replication_from: s.env.replication_from.clone(),
        }
    }
}

/// The managed pg_hba with TLS: the local socket as without it; over TCP only TLS connections
/// (`hostssl`), first match wins:
/// - replication, and the replication role's own questions to the master before a rewind
///   (database `postgres`: its timeline, `pg_rewind`'s file reads, a `CHECKPOINT`), only by the
///   replication certificate (`cert`: its CN is the role) and only from `replication_from`;
///   the replication role nothing else over TCP;
/// - the superuser only from `superuser_from` (by password), refused from anywhere else;
/// - every other role by scram.
///
/// A connection without TLS matches no line and is refused ("no pg_hba.conf entry ... no
/// encryption", SQLSTATE 28000); a refused superuser is told "pg_hba.conf rejects connection".
pub fn pg_hba_tls(access: &HbaAccess) -> String {
    let user = contract::REPLICATION_USER;
    let superuser = contract::SUPERUSER;
    let any = ["all".to_string()];
    let replication_from: Vec<String> = match &access.replication_from {
        None => any.to_vec(),
        Some(nets) => nets.iter().map(|n| n.to_string()).collect(),
    };
    let mut text = String::from(
        "# Written by pgset-agent on every start; edits here are replaced.\n\
         # TYPE   DATABASE     USER        ADDRESS  METHOD\n\
         local    all          all                  trust\n\
         local    replication  all                  trust\n",
    );
    let mut line = |kind: &str, db: &str, who: &str, addr: &str, method: &str| {
        text.push_str(&format!(
            "{kind:<8} {db:<12} {who:<11} {addr:<8} {method}\n"
        ));
    };
    for net in &replication_from {
        line("hostssl", "replication", user, net, "cert");
        line("hostssl", "postgres", user, net, "cert");
    }
    line("hostssl", "all", user, "all", "reject");
    for net in &access.superuser_from {
        line(
            "hostssl",
            "all",
            superuser,
            &net.to_string(),
            "scram-sha-256",
        );
    }
    line("hostssl", "all", superuser, "all", "reject");
    line("hostssl", "all", "all", "all", "scram-sha-256");
    text
}

/// Switches statement and error-statement logging off for the session; sent on its own before
/// any statement that carries a password (a multi-statement string is logged whole when it is
/// parsed, before a `SET` inside it could take effect).
pub const QUIET_SESSION_SQL: &str = "SET log_statement = 'none'; \
     SET log_min_error_statement = 'panic'; \
     SET log_min_duration_statement = -1";

/// SQL that creates the replication role when missing, lets it read the WAL directory and slot
/// state (`pg_monitor`, so a replica can ask whether the master still has the WAL it needs) and
/// do what a member asks of the master before a rewind without the superuser (the functions
/// `pg_rewind` documents for a non-superuser source role, and `pg_checkpoint` where the server
/// has it, 15 and later), and sets its password and the superuser's from the Secret, which stays
/// the source of truth (a Secret made anew after `down --purge` takes effect on the next start).
/// Run after [`QUIET_SESSION_SQL`] on the same session.
pub fn role_passwords_sql(replication_password: &str, superuser_password: &str) -> String {
    let user = contract::REPLICATION_USER;
    format!(
        "DO $pgset$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {name}) THEN \
             CREATE ROLE {user}; \
           END IF; \
         END $pgset$;\n\
         ALTER ROLE {user} WITH REPLICATION LOGIN PASSWORD {pw};\n\
         GRANT pg_monitor TO {user};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {user};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {user};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {user};\n\
         GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) \
           TO {user};\n\
         DO $pgset$ BEGIN \
           IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_checkpoint') THEN \
             GRANT pg_checkpoint TO {user}; \
           END IF; \
         END $pgset$;\n\
         ALTER ROLE {superuser} WITH PASSWORD {super_pw};\n",
        name = sql_quote(user),
        pw = sql_quote(replication_password),
        superuser = contract::SUPERUSER,
        super_pw = sql_quote(superuser_password),
    )
}

/// Adds the include line to a `postgresql.conf` text unless it is there.
pub fn with_include(postgresql_conf: &str) -> Option<String> {
    if postgresql_conf.lines().any(|l| l.trim() == INCLUDE_LINE) {
        return None;
    }
    let mut text = postgresql_conf.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("\n# pgset: the managed settings come last so they win.\n");
    text.push_str(INCLUDE_LINE);
    text.push('\n');
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pod: &str) -> Settings {
        let m = crate::settings::tests::sample_env(pod);
        Settings::from_lookup(|k| m.get(k).cloned()).unwrap()
    }

    #[test]
    fn replica_conf_streams_from_the_master_with_its_slot() {
        let c = managed_conf(&settings("pgset-2"));
        assert!(c.contains("port = 5433\n"));
        assert!(c.contains("unix_socket_directories = '/run/pg'\n"));
        assert!(c.contains(
            "primary_conninfo = 'host=''pgset-master'' port=''5432'' user=''replicator'' \
             passfile=''/run/pg/pgset-2.pgpass'' application_name=''pgset-2'' connect_timeout=''2'' \
             keepalives=''1'' keepalives_idle=''5'' keepalives_interval=''2'' keepalives_count=''3'' \
             tcp_user_timeout=''10000'''\n"
        ));
        assert!(c.contains("primary_slot_name = 'pgset_2'\n"));
        assert!(c.contains("max_slot_wal_keep_size = '1GB'\n"));
    }

    #[test]
    fn master_conf_has_no_standby_settings() {
        let c = managed_conf(&settings("pgset-0"));
        assert!(c.contains("wal_level = replica\n"));
        assert!(c.contains("wal_log_hints = on\n"));
        assert!(c.contains("password_encryption = 'scram-sha-256'\n"));
        assert!(!c.contains("primary_conninfo"));
    }

    #[test]
    fn quoting() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conninfo_quote(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(
            passfile_entry("replicator", r"p:w\d"),
            "*:*:*:replicator:p\\:w\\\\d\n"
        );
        let sql = role_passwords_sql("x'y", "s'u");
        assert!(sql.contains("ALTER ROLE replicator WITH REPLICATION LOGIN PASSWORD 'x''y';"));
        assert!(sql.contains("ALTER ROLE postgres WITH PASSWORD 's''u';"));
        assert!(sql.contains("GRANT pg_monitor TO replicator;"));
        assert!(QUIET_SESSION_SQL.starts_with("SET log_statement = 'none';"));
    }

    #[test]
    fn include_is_added_once() {
        let once = with_include("port = 5432").unwrap();
        assert!(once.ends_with("include_if_exists = 'pgset.conf'\n"));
        assert_eq!(with_include(&once), None);
    }

    fn tls_settings(pod: &str) -> Settings {
        let mut m = crate::settings::tests::sample_env(pod);
        m.insert(contract::env::TLS_DIR, "/tls".into());
        Settings::from_lookup(|k| m.get(k).cloned()).unwrap()
    }

    #[test]
    fn with_tls_postgres_serves_tls_13_and_names_the_managed_hba() {
        for pod in ["pgset-0", "pgset-2"] {
            let c = managed_conf(&tls_settings(pod));
            for line in [
                "ssl = on\n",
                "ssl_cert_file = '/tls/server.crt'\n",
                "ssl_key_file = '/tls/server.key'\n",
                "ssl_ca_file = '/tls/ca.crt'\n",
                "ssl_min_protocol_version = 'TLSv1.3'\n",
                &format!("hba_file = '/data/{pod}/pgset_hba.conf'\n"),
            ] {
                assert!(c.contains(line), "{line} in {c}");
            }
        }
        let plain = managed_conf(&settings("pgset-2"));
        assert!(
            !plain.contains("ssl") && !plain.contains("hba_file"),
            "{plain}"
        );
    }

    #[test]
    fn with_tls_a_replica_verifies_the_master_and_presents_its_certificate() {
        let c = managed_conf(&tls_settings("pgset-2"));
        assert!(
            c.contains(
                "tcp_user_timeout=''10000'' sslmode=''verify-full'' sslrootcert=''/tls/ca.crt'' \
             sslcert=''/tls/replication.crt'' sslkey=''/tls/replication.key'''\n"
            ),
            "{c}"
        );
    }

    fn hba_lines(h: &str) -> Vec<Vec<&str>> {
        h.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect()
    }

    #[test]
    fn with_tls_hba_admits_tcp_only_over_tls_replication_by_certificate_from_its_networks_and_the_superuser_only_from_its_own()
     {
        let access = HbaAccess {
            superuser_from: Cidr::loopback(),
            replication_from: Some(vec!["10.244.0.0/16".parse().unwrap()]),
        };
        assert_eq!(
            hba_lines(&pg_hba_tls(&access)),
            vec![
                vec!["local", "all", "all", "trust"],
                vec!["local", "replication", "all", "trust"],
                vec![
                    "hostssl",
                    "replication",
                    "replicator",
                    "10.244.0.0/16",
                    "cert"
                ],
                vec!["hostssl", "postgres", "replicator", "10.244.0.0/16", "cert"],
                vec!["hostssl", "all", "replicator", "all", "reject"],
                vec![
                    "hostssl",
                    "all",
                    "postgres",
                    "127.0.0.1/32",
                    "scram-sha-256"
                ],
                vec!["hostssl", "all", "postgres", "::1/128", "scram-sha-256"],
                vec!["hostssl", "all", "postgres", "all", "reject"],
                vec!["hostssl", "all", "all", "all", "scram-sha-256"],
            ]
        );
        // Unset networks: replication from anywhere by certificate; no superuser over TCP.
        let open = HbaAccess {
            superuser_from: Vec::new(),
            replication_from: None,
        };
        assert_eq!(
            hba_lines(&pg_hba_tls(&open)),
            vec![
                vec!["local", "all", "all", "trust"],
                vec!["local", "replication", "all", "trust"],
                vec!["hostssl", "replication", "replicator", "all", "cert"],
                vec!["hostssl", "postgres", "replicator", "all", "cert"],
                vec!["hostssl", "all", "replicator", "all", "reject"],
                vec!["hostssl", "all", "postgres", "all", "reject"],
                vec!["hostssl", "all", "all", "all", "scram-sha-256"],
            ]
        );
    }

    #[test]
    fn hba_uses_scram_for_tcp() {
        let h = pg_hba();
        assert!(h.contains("host    replication  replicator  all      scram-sha-256"));
        assert!(!h.contains("md5"));
    }
}
