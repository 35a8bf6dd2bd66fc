//! Local mode over TLS on real PostgreSQL (`local up --tls`): a 3-member set forms with the
//! files a pod uses; a client verifying the server (`sslmode=verify-full` against the set's CA)
//! gets TLS 1.3; a connection without TLS is refused (SQLSTATE 28000, no pg_hba entry); every
//! replica's WAL sender runs over TLS, authenticated by the replication role's certificate (a
//! replication connection with the password alone is refused); a second `up` rewrites no
//! certificate; a restarted replica streams over TLS again; a CA rotation with overlap keeps
//! every write and the replica's stream while the CA changes under them. Skipped, with the
//! reason, where the server binaries were built without SSL (their `pg_config --configure`).

#[path = "support/local.rs"]
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pgset_agent::leader::LeaderTimings;
use pgset_agent::pgbin::PgBin;
use pgset_agent::settings::DEFAULT_LEADER_LEASE;
use pgset_local::{self as local, status as local_status};
use pgset_spec::contract::{self, tls as files};
use support::{TestSet, no_ssl_reason, pg_or_skip};

const SECOND: Duration = Duration::from_secs(1);

/// A libpq passfile in the test's temp dir (0600) holding `user`'s password from the set.
fn passfile(t: &TestSet, user: &str, key: &str) -> PathBuf {
    let pw = std::fs::read_to_string(t.dir().join("secret").join(key)).unwrap();
    let path = t.tmp.path().join(format!("{user}.pgpass"));
    std::fs::write(&path, format!("*:*:*:{user}:{}\n", pw.trim_end())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// psql over TCP with `conninfo` (no password in it: PGPASSFILE names the file): stdout, or
/// stderr on failure.
fn psql_tcp(conninfo: &str, passfile: &Path, sql: &str) -> Result<String, String> {
    let out = PgBin::find(None)
        .unwrap()
        .command("psql")
        .env("PGPASSFILE", passfile)
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .quiet()
        .output()
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(out.stdout.trim().to_string())
    } else {
        Err(out.stderr.trim().to_string())
    }
}

/// Every file of the set's TLS directory: its bytes and modification time.
fn tls_files(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    std::fs::read_dir(local::tls_dir(dir))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (std::fs::read(e.path()).unwrap(), meta.modified().unwrap()),
            )
        })
        .collect()
}

/// The master's WAL senders as `pg_stat_ssl` sees them: `member|ssl|version|client_dn` rows.
const SENDERS_SQL: &str = "SELECT r.application_name || '|' || s.ssl || '|' || s.version || '|' \
     || coalesce(s.client_dn, '') FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
     WHERE r.state = 'streaming' ORDER BY 1";

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_set_serves_verified_tls_13_refuses_plain_tcp_and_replicates_by_certificate() {
    const TEST: &str =
        "a_tls_set_serves_verified_tls_13_refuses_plain_tcp_and_replicates_by_certificate";
    let Some(bin) = pg_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = no_ssl_reason(&bin) {
        pgset_tests::skip(TEST, &reason);
        return;
    }
    let mut t = TestSet::new(3, 29800);
    t.opts.tls = true;
    local::up(&t.opts).await.expect("a --tls set forms");
    let dir = t.dir().to_path_buf();
    let tls = local::tls_dir(&dir);
    let ca = tls.join(files::CA_CERT);

    // The files a pod would be given, keys private.
    for key in [files::CA_KEY, files::SERVER_KEY, files::REPLICATION_KEY] {
        let mode = std::fs::metadata(tls.join(key)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }

    // A client told what status says connects over verified TLS 1.3.
    let report = local_status::report(&dir).await.unwrap();
    let connect = report
        .connect
        .clone()
        .expect("status names the TLS connection");
    let superuser_pw = std::fs::read_to_string(
        dir.join("secret")
            .join(contract::secret::SUPERUSER_PASSWORD_KEY),
    )
    .unwrap();
    assert!(
        connect.contains("sslmode=verify-full")
            && connect.contains(&format!("sslrootcert={}", ca.display()))
            && !connect.contains(superuser_pw.trim_end()),
        "{connect}"
    );
    assert!(
        report.to_table().contains(&connect),
        "{}",
        report.to_table()
    );
    let su = passfile(
        &t,
        contract::SUPERUSER,
        contract::secret::SUPERUSER_PASSWORD_KEY,
    );
    let ssl_sql = "SELECT ssl || '|' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    assert_eq!(
        psql_tcp(&connect, &su, ssl_sql).as_deref(),
        Ok("true|TLSv1.3")
    );
    // verify-full checks the name: `localhost` is in the certificate too.
    let by_name = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        t.port(0),
        ca.display()
    );
    assert_eq!(
        psql_tcp(&by_name, &su, ssl_sql).as_deref(),
        Ok("true|TLSv1.3")
    );
    // A server certificate from another CA is not trusted.
    let other = t.tmp.path().join("other-ca");
    pgset_tls::ensure_dir(&other, "other", &pgset_tls::local_names(), pgset_tls::now()).unwrap();
    let foreign = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        t.port(0),
        other.join(files::CA_CERT).display()
    );
    let e = psql_tcp(&foreign, &su, "SELECT 1").unwrap_err();
    assert!(e.contains("certificate verify failed"), "{e}");

    // Without TLS, TCP is refused by pg_hba (28000), with the password right.
    let password = superuser_pw.trim_end().to_string();
    for k in 0..3 {
        let mut plain = tokio_postgres::Config::new();
        plain
            .host("127.0.0.1")
            .port(t.port(k))
            .user(contract::SUPERUSER)
            .password(&password)
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(5 * SECOND);
        let e = plain
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("a plain TCP connection is refused");
        let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
        assert_eq!(
            db.code(),
            &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "{db}"
        );
        assert!(db.message().contains("no encryption"), "{db}");
    }

    // Each replica streams over TLS as the certificate's subject.
    let want = "pgset-1|true|TLSv1.3|/CN=replicator\npgset-2|true|TLSv1.3|/CN=replicator";
    t.wait_for(0, SENDERS_SQL, want, 60 * SECOND);
    // Replication takes the certificate, not the password.
    let rep_pw = passfile(
        &t,
        contract::REPLICATION_USER,
        contract::secret::REPLICATION_PASSWORD_KEY,
    );
    let replication = format!(
        "host=127.0.0.1 port={} user={} replication=true sslmode=verify-full sslrootcert={}",
        t.port(0),
        contract::REPLICATION_USER,
        ca.display()
    );
    let e = psql_tcp(&replication, &rep_pw, "IDENTIFY_SYSTEM").unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    let with_cert = format!(
        "{replication} sslcert={} sslkey={}",
        tls.join(files::REPLICATION_CERT).display(),
        tls.join(files::REPLICATION_KEY).display()
    );
    let id = psql_tcp(&with_cert, &rep_pw, "IDENTIFY_SYSTEM").unwrap();
    assert!(id.contains('|'), "{id}");

    // A second up makes nothing new; up without --tls on this set is refused, nothing changed.
    let before = tls_files(&dir);
    let report = local::up(&t.opts).await.unwrap();
    assert_eq!(report.started, Vec::<String>::new());
    assert_eq!(tls_files(&dir), before);
    let mut plain_opts = t.opts.clone();
    plain_opts.tls = false;
    let e = local::up(&plain_opts).await.unwrap_err().to_string();
    assert!(e.contains("add --tls"), "{e}");
    assert_eq!(tls_files(&dir), before);

    // A restarted replica streams over TLS again.
    assert!(
        local::stop_member(&dir, "pgset-2", 60 * SECOND)
            .await
            .unwrap()
    );
    t.wait_for(
        0,
        SENDERS_SQL,
        "pgset-1|true|TLSv1.3|/CN=replicator",
        60 * SECOND,
    );
    let report = local::up(&t.opts).await.unwrap();
    assert_eq!(report.started, vec!["pgset-2".to_string()]);
    t.wait_for(0, SENDERS_SQL, want, 60 * SECOND);
    assert_eq!(tls_files(&dir), before);
}

#[test]
fn a_set_without_tls_cannot_be_switched_on_in_place() {
    let Some(_bin) = pg_or_skip("a_set_without_tls_cannot_be_switched_on_in_place") else {
        return;
    };
    // Only the directory check runs: no member is started.
    let t = TestSet::new(1, 29810);
    std::fs::create_dir_all(t.dir()).unwrap();
    let state = serde_json::json!({"name": "pgset", "port": 29810});
    std::fs::write(t.dir().join(local::STATE_FILE), state.to_string()).unwrap();
    let mut opts = t.opts.clone();
    opts.tls = true;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(local::up(&opts)).unwrap_err().to_string();
    assert!(e.contains("without TLS") && e.contains("--dir"), "{e}");
    assert!(!local::tls_dir(t.dir()).exists());
    // Nor is there a CA to rotate: refused, nothing made.
    let e = rt
        .block_on(local::ca_rotation::rotate_ca(t.dir(), SECOND))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("there is no CA to rotate") && e.contains("local up --tls"),
        "{e}"
    );
    assert!(!local::tls_dir(t.dir()).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failover_the_set_streams_over_tls_from_the_new_master() {
    const TEST: &str = "after_a_failover_the_set_streams_over_tls_from_the_new_master";
    let Some(bin) = pg_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = no_ssl_reason(&bin) {
        pgset_tests::skip(TEST, &reason);
        return;
    }
    let mut t = TestSet::new(3, 29820);
    t.opts.tls = true;
    local::up(&t.opts).await.expect("a --tls set forms");
    let dir = t.dir().to_path_buf();
    t.sql(0, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .unwrap();
    t.wait_for(
        0,
        SENDERS_SQL,
        "pgset-1|true|TLSv1.3|/CN=replicator\npgset-2|true|TLSv1.3|/CN=replicator",
        60 * SECOND,
    );

    // The replicas' agents note that they stream from the holder once per renewal: only a
    // replica seen streaming may take the role.
    let timings = LeaderTimings::for_lease(DEFAULT_LEADER_LEASE).unwrap();
    tokio::time::sleep(3 * timings.renew_every()).await;

    // The master goes away; a replica takes the role and the other follows it over TLS.
    assert!(
        local::stop_member(&dir, "pgset-0", 60 * SECOND)
            .await
            .unwrap()
    );
    let deadline = std::time::Instant::now() + 120 * SECOND;
    let new_master = loop {
        if let Some(k) = [1, 2]
            .into_iter()
            .find(|k| t.sql(*k, "SELECT pg_is_in_recovery()").as_deref() == Ok("f"))
        {
            break k;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replica took the master role:\n{}\n{}",
            t.log(1),
            t.log(2)
        );
        std::thread::sleep(SECOND / 4);
    };
    let other = 3 - new_master;
    t.sql(new_master, "INSERT INTO t VALUES (2)").unwrap();
    t.wait_for(
        new_master,
        SENDERS_SQL,
        &format!("pgset-{other}|true|TLSv1.3|/CN=replicator"),
        120 * SECOND,
    );
    t.wait_for(other, "SELECT max(n) FROM t", "2", 60 * SECOND);

    // The old master rejoins as a replica: its agent reads the new master's history and
    // streams from it, both over TLS.
    local::up(&t.opts).await.expect("the set is whole again");
    assert_eq!(t.sql(0, "SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
    t.wait_for(0, "SELECT max(n) FROM t", "2", 60 * SECOND);
    t.wait_for(
        new_master,
        SENDERS_SQL,
        &format!("pgset-0|true|TLSv1.3|/CN=replicator\npgset-{other}|true|TLSv1.3|/CN=replicator"),
        60 * SECOND,
    );
    let log = t.log(0);
    assert!(
        !log.contains("is not readable") && !log.contains("is not known"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diverged_replica_is_rewound_from_the_master_over_tls() {
    const TEST: &str = "a_diverged_replica_is_rewound_from_the_master_over_tls";
    let Some(bin) = pg_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = no_ssl_reason(&bin) {
        pgset_tests::skip(TEST, &reason);
        return;
    }
    let mut t = TestSet::new(2, 29830);
    t.opts.tls = true;
    // No superuser over TCP at all: what a member asks of the master before a rewind, and
    // pg_rewind itself, go as the replication role by its certificate.
    t.opts.superuser_from = Vec::new();
    local::up(&t.opts).await.expect("a --tls set forms");
    let dir = t.dir().to_path_buf();
    let pw = passfile(&t, "postgres", contract::secret::SUPERUSER_PASSWORD_KEY);
    let refused = psql_tcp(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
            t.port(0),
            local::tls_dir(&dir).join(files::CA_CERT).display()
        ),
        &pw,
        "SELECT 1",
    )
    .unwrap_err();
    assert!(refused.contains("rejects connection"), "{refused}");
    t.sql(0, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
        .unwrap();
    t.wait_for(1, "SELECT max(n) FROM t", "1", 60 * SECOND);
    // Member 1 forks off: promoted by hand, written to, stopped.
    t.sql(1, "SELECT pg_promote()").unwrap();
    t.wait_for(1, "SELECT pg_is_in_recovery()", "f", 60 * SECOND);
    t.sql(1, "INSERT INTO t SELECT generate_series(100, 200)")
        .unwrap();
    t.sql(0, "INSERT INTO t VALUES (2)").unwrap();
    assert!(
        local::stop_member(&dir, "pgset-1", 60 * SECOND)
            .await
            .unwrap()
    );

    // Its next start rewinds it with pg_rewind, which reaches the master only over TLS.
    local::up(&t.opts).await.expect("the member rejoins");
    let log = t.log(1);
    assert!(
        log.contains("rewound from the master with pg_rewind"),
        "{log}"
    );
    t.wait_for(
        1,
        "SELECT count(*) || '|' || max(n) FROM t",
        "2|2",
        60 * SECOND,
    );
    t.wait_for(
        0,
        SENDERS_SQL,
        "pgset-1|true|TLSv1.3|/CN=replicator",
        60 * SECOND,
    );
}

/// The certificate the server on `port` presents to a client, read by `openssl s_client`
/// (`-starttls postgres`), as `pgset_tls` reads it; `Err` with why when none was seen.
fn served_certificate(port: u16) -> Result<pgset_tls::CertFacts, String> {
    let out = pgset_command::HostCommand::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Vec::new())
        .quiet()
        .output()
        .map_err(|e| e.to_string())?;
    let start = out
        .stdout
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| format!("no certificate in the answer: {}", out.stderr.trim()))?;
    let end = out.stdout[start..]
        .find("-----END CERTIFICATE-----")
        .ok_or("an incomplete certificate")?
        + start
        + "-----END CERTIFICATE-----".len();
    pgset_tls::read_cert(&out.stdout[start..end])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_is_served_without_a_restart_while_streaming_and_writes_go_on() {
    const TEST: &str = "a_rotation_is_served_without_a_restart_while_streaming_and_writes_go_on";
    let Some(bin) = pg_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = no_ssl_reason(&bin) {
        pgset_tests::skip(TEST, &reason);
        return;
    }
    if pgset_tests::tool("openssl").is_none() {
        pgset_tests::missing_tool(TEST, "openssl not found: apt-get install openssl");
        return;
    }
    let mut t = TestSet::new(2, 29840);
    t.opts.tls = true;
    local::up(&t.opts).await.expect("a --tls set forms");
    let dir = t.dir().to_path_buf();
    let tls = local::tls_dir(&dir);
    let file = |f: &str| pgset_tls::read_cert(&std::fs::read_to_string(tls.join(f)).unwrap());
    let streaming = "pgset-1|true|TLSv1.3|/CN=replicator";
    t.wait_for(0, SENDERS_SQL, streaming, 60 * SECOND);
    let sender_pid = t
        .sql(
            0,
            "SELECT pid FROM pg_stat_replication WHERE application_name = 'pgset-1'",
        )
        .unwrap();
    let connect = local::tls_connection_string(&dir, &t.set(), 0).unwrap();
    let su = passfile(
        &t,
        contract::SUPERUSER,
        contract::secret::SUPERUSER_PASSWORD_KEY,
    );
    psql_tcp(&connect, &su, "CREATE TABLE rotated (i int)").unwrap();
    let started = t.sql(0, "SELECT pg_postmaster_start_time()").unwrap();
    let old = served_certificate(t.port(0)).unwrap();
    assert_eq!(old.serial, file(files::SERVER_CERT).unwrap().serial);
    let old_ca = std::fs::read(tls.join(files::CA_CERT)).unwrap();
    let old_repl = file(files::REPLICATION_CERT).unwrap();

    let rotated_at = std::time::Instant::now();
    let made = local::rotate_certs(&dir).expect("a rotation");
    assert_eq!(made.len(), 2, "{made:?}");
    let new = file(files::SERVER_CERT).unwrap();
    assert_ne!(new.serial, old.serial);
    assert_ne!(
        file(files::REPLICATION_CERT).unwrap().serial,
        old_repl.serial
    );
    assert_eq!(std::fs::read(tls.join(files::CA_CERT)).unwrap(), old_ca);

    // Writes over new verified connections go on, each acknowledged, until the server
    // presents the new certificate.
    let deadline = std::time::Instant::now() + 60 * SECOND;
    let mut rows = 0;
    let served = loop {
        rows += 1;
        psql_tcp(
            &connect,
            &su,
            &format!("INSERT INTO rotated VALUES ({rows})"),
        )
        .unwrap_or_else(|e| panic!("write {rows} during the rotation: {e}"));
        let served = served_certificate(t.port(0)).unwrap();
        if served.serial == new.serial {
            break served;
        }
        assert_eq!(
            served.serial, old.serial,
            "the old certificate until the reload"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the server still presents serial {} a minute after the rotation; log tail:\n{}",
            served.serial,
            local::log_tail(&dir, "pgset-0", 30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(served.not_after, new.not_after);
    eprintln!(
        "rotation: the new certificate was served {:?} after the files were written; {rows} writes over new TLS connections meanwhile, none refused",
        rotated_at.elapsed()
    );
    for _ in 0..5 {
        rows += 1;
        psql_tcp(
            &connect,
            &su,
            &format!("INSERT INTO rotated VALUES ({rows})"),
        )
        .unwrap();
    }
    // Served without a restart; the replica streams on the same WAL sender and has every row.
    assert_eq!(
        t.sql(0, "SELECT pg_postmaster_start_time()").unwrap(),
        started
    );
    t.wait_for(
        1,
        "SELECT count(*) FROM rotated",
        &rows.to_string(),
        60 * SECOND,
    );
    t.wait_for(0, SENDERS_SQL, streaming, 10 * SECOND);
    assert_eq!(
        t.sql(
            0,
            "SELECT pid FROM pg_stat_replication WHERE application_name = 'pgset-1'"
        )
        .unwrap(),
        sender_pid
    );
    // A new replication connection presents the new certificate and is let in by it.
    let rep_pw = passfile(
        &t,
        contract::REPLICATION_USER,
        contract::secret::REPLICATION_PASSWORD_KEY,
    );
    let with_cert = format!(
        "host=127.0.0.1 port={} user={} replication=true sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        t.port(0),
        contract::REPLICATION_USER,
        tls.join(files::CA_CERT).display(),
        tls.join(files::REPLICATION_CERT).display(),
        tls.join(files::REPLICATION_KEY).display()
    );
    let id = psql_tcp(&with_cert, &rep_pw, "IDENTIFY_SYSTEM").unwrap();
    assert!(id.contains('|'), "{id}");
    assert!(
        t.log(0).contains("postgres reloaded them"),
        "the agent says it reloaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_rotation_keeps_every_write_and_the_stream_while_the_ca_changes_under_them() {
    const TEST: &str =
        "a_ca_rotation_keeps_every_write_and_the_stream_while_the_ca_changes_under_them";
    let Some(bin) = pg_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = no_ssl_reason(&bin) {
        pgset_tests::skip(TEST, &reason);
        return;
    }
    if pgset_tests::tool("openssl").is_none() {
        pgset_tests::missing_tool(TEST, "openssl not found: apt-get install openssl");
        return;
    }
    let mut t = TestSet::new(2, 30100);
    t.opts.tls = true;
    local::up(&t.opts).await.expect("a --tls set forms");
    let dir = t.dir().to_path_buf();
    let tls = local::tls_dir(&dir);
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).unwrap();
    let streaming = "pgset-1|true|TLSv1.3|/CN=replicator";
    t.wait_for(0, SENDERS_SQL, streaming, 60 * SECOND);
    let connect = local::tls_connection_string(&dir, &t.set(), 0).unwrap();
    let su = passfile(
        &t,
        contract::SUPERUSER,
        contract::secret::SUPERUSER_PASSWORD_KEY,
    );
    psql_tcp(&connect, &su, "CREATE TABLE ca_rotated (i int)").unwrap();
    let started = t.sql(0, "SELECT pg_postmaster_start_time()").unwrap();
    let old_ca = read(files::CA_CERT);
    assert_eq!(pgset_tls::split_bundle(&old_ca).len(), 1);
    let old_server = read(files::SERVER_CERT);
    // A client that keeps the CA it fetched before the rotation, to show when it stops
    // being enough.
    let old_ca_file = t.tmp.path().join("old-ca.crt");
    std::fs::write(&old_ca_file, &old_ca).unwrap();

    // A writer throughout: every write a new verify-full connection against the bundle as
    // it is at that moment (libpq reads sslrootcert at each connection).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, connect, su) = (stop.clone(), connect.clone(), su.clone());
        std::thread::spawn(move || {
            let (mut done, mut refused) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match psql_tcp(
                    &connect,
                    &su,
                    &format!("INSERT INTO ca_rotated VALUES ({})", done + 1),
                ) {
                    Ok(_) => done += 1,
                    Err(e) => refused.push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (done, refused)
        })
    };
    std::thread::sleep(SECOND);

    let rotated_at = std::time::Instant::now();
    let lines = local::ca_rotation::rotate_ca(&dir, 120 * SECOND)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the CA rotation: {e}\nmaster log:\n{}\nreplica log:\n{}",
                local::log_tail(&dir, "pgset-0", 30),
                local::log_tail(&dir, "pgset-1", 30)
            )
        });
    let took = rotated_at.elapsed();
    let text = lines.join("\n");
    for want in [
        "added a new CA to the trust bundle",
        "every running member trusts the new CA",
        "by the new CA",
        "every running member serves the new CA's certificates",
        "took the old CA out of the trust bundle",
        "every running member trusts the new CA alone",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    std::thread::sleep(SECOND);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (written, refused) = writer.join().unwrap();
    assert!(
        refused.is_empty(),
        "{} of {} writes refused during the CA rotation: {:?}",
        refused.len(),
        written as usize + refused.len(),
        refused
    );
    assert!(written > 10, "the writer ran throughout ({written} writes)");
    eprintln!(
        "CA rotation: {took:?} from the first file written to every member trusting the new CA alone; {written} writes over new verify-full connections meanwhile, none refused"
    );

    // The bundle is the new CA alone; both certificates are its and not the old CA's.
    let new_ca = read(files::CA_CERT);
    assert_eq!(pgset_tls::split_bundle(&new_ca).len(), 1);
    assert_ne!(new_ca, old_ca);
    for f in [files::SERVER_CERT, files::REPLICATION_CERT] {
        assert!(
            pgset_tls::signed_by(&read(f), &new_ca),
            "{f} is the new CA's"
        );
        assert!(
            !pgset_tls::signed_by(&read(f), &old_ca),
            "{f} is not the old CA's"
        );
    }
    assert!(!tls.join(pgset_tls::CA_NEXT_KEY).exists());
    assert_ne!(read(files::SERVER_CERT), old_server);
    // The server presents the new certificate, which chains to the new CA: a client that kept
    // the old CA alone is refused, one with the new bundle is let in.
    let served = served_certificate(t.port(0)).unwrap();
    assert_eq!(
        served.serial,
        pgset_tls::read_cert(&read(files::SERVER_CERT))
            .unwrap()
            .serial
    );
    let with_old_ca = connect.replace(
        &tls.join(files::CA_CERT).display().to_string(),
        &old_ca_file.display().to_string(),
    );
    assert_ne!(with_old_ca, connect);
    let e = psql_tcp(&with_old_ca, &su, "SELECT 1").unwrap_err();
    assert!(e.contains("certificate verify failed"), "{e}");
    psql_tcp(&connect, &su, "SELECT 1").unwrap();

    // No restart; the replica streams over TLS by certificate and has every write.
    assert_eq!(
        t.sql(0, "SELECT pg_postmaster_start_time()").unwrap(),
        started
    );
    t.wait_for(0, SENDERS_SQL, streaming, 60 * SECOND);
    t.wait_for(
        1,
        "SELECT count(*) FROM ca_rotated",
        &written.to_string(),
        60 * SECOND,
    );
    // A new replication connection presents the new CA's certificate and is let in by it.
    let rep_pw = passfile(
        &t,
        contract::REPLICATION_USER,
        contract::secret::REPLICATION_PASSWORD_KEY,
    );
    let with_cert = format!(
        "host=127.0.0.1 port={} user={} replication=true sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        t.port(0),
        contract::REPLICATION_USER,
        tls.join(files::CA_CERT).display(),
        tls.join(files::REPLICATION_CERT).display(),
        tls.join(files::REPLICATION_KEY).display()
    );
    let id = psql_tcp(&with_cert, &rep_pw, "IDENTIFY_SYSTEM").unwrap();
    assert!(id.contains('|'), "{id}");
    // Each member says which files it loaded: the final ones.
    for k in 0..2 {
        let status = local::status(&dir).await.unwrap();
        let loaded = &status[k as usize].detail.as_ref().unwrap()[contract::tls::LOADED_DETAIL];
        assert_eq!(
            loaded[contract::tls::LOADED_CA_BUNDLE],
            pgset_tls::digest(new_ca.as_bytes()),
            "member {k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn up_rotates_a_ca_near_its_end_with_overlap_and_a_second_up_keeps_the_new_one() {
    const TEST: &str =
        "up_rotates_a_ca_near_its_end_with_overlap_and_a_second_up_keeps_the_new_one";
    let Some(bin) = pg_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = no_ssl_reason(&bin) {
        pgset_tests::skip(TEST, &reason);
        return;
    }
    let mut t = TestSet::new(2, 30110);
    t.opts.tls = true;
    let dir = t.dir().to_path_buf();
    let tls = local::tls_dir(&dir);
    local::up(&t.opts).await.expect("a --tls set forms");
    local::down(&dir, false).await.unwrap();
    // The set's CA as if made almost ten years ago: 90 days left, within its renewal window.
    std::fs::remove_dir_all(&tls).unwrap();
    let made = pgset_tls::now() - pgset_tls::CA_VALIDITY + pgset_tls::CA_RENEW_BEFORE / 2;
    pgset_tls::ensure_dir(&tls, &t.opts.name, &pgset_tls::local_names(), made).unwrap();
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).unwrap();
    let old_ca = read(files::CA_CERT);
    assert!(pgset_tls::ca_due(&tls, pgset_tls::now()).unwrap());

    local::up(&t.opts)
        .await
        .expect("a --tls set forms and rotates its CA");
    let new_ca = read(files::CA_CERT);
    assert_ne!(new_ca, old_ca);
    assert_eq!(
        pgset_tls::split_bundle(&new_ca).len(),
        1,
        "the old CA retired"
    );
    let facts = pgset_tls::read_cert(&new_ca).unwrap();
    assert!(
        facts.not_after - pgset_tls::now() > pgset_tls::CA_VALIDITY - pgset_tls::CA_RENEW_BEFORE
    );
    for f in [files::SERVER_CERT, files::REPLICATION_CERT] {
        assert!(pgset_tls::signed_by(&read(f), &new_ca), "{f}");
    }
    assert!(!pgset_tls::ca_due(&tls, pgset_tls::now()).unwrap());
    t.wait_for(
        0,
        SENDERS_SQL,
        "pgset-1|true|TLSv1.3|/CN=replicator",
        60 * SECOND,
    );
    // The server presents a certificate of the new CA.
    if pgset_tests::tool("openssl").is_some() {
        let served = served_certificate(t.port(0)).unwrap();
        assert_eq!(
            served.serial,
            pgset_tls::read_cert(&read(files::SERVER_CERT))
                .unwrap()
                .serial
        );
    }
    // A second up rewrites nothing.
    let before = tls_files(&dir);
    local::up(&t.opts).await.unwrap();
    assert_eq!(tls_files(&dir), before);
}

#[test]
fn what_an_agent_publishes_as_loaded_is_what_a_cluster_ca_rotation_waits_for() {
    // The agent's digests of a member's files, as its pod annotation carries them, judged by
    // the rotation's wait against the Secrets' texts it wrote: caught up on the same files,
    // behind once the bundle changes.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    pgset_tls::ensure_dir(&dir, "db", &pgset_tls::local_names(), pgset_tls::now()).unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let pod_with = |files: &pgset_agent::tls::TlsFiles| {
        let patch = pgset_agent::kube_api::tls_loaded_patch(&files.digests().unwrap().to_json());
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(patch).unwrap();
        BTreeMap::from([("db-0".to_string(), pod)])
    };
    let files = pgset_agent::tls::TlsFiles::new(&dir);
    let want = |bundle: &str| pgset_deploy::tls::ca_rotation::Want {
        ca_bundle: pgset_tls::digest(bundle.as_bytes()),
        certs: Some(pgset_tls::certs_digest(
            &read(files::SERVER_CERT),
            &read(files::REPLICATION_CERT),
        )),
    };
    let pods = pod_with(&files);
    let behind = pgset_deploy::tls::ca_rotation::behind;
    assert!(behind(&pods, &want(&read(files::CA_CERT))).is_empty());
    pgset_tls::begin_ca_rotation(&dir, "db", pgset_tls::now()).unwrap();
    let bundle = read(files::CA_CERT);
    assert_eq!(behind(&pods, &want(&bundle)), ["db-0"]);
    assert!(behind(&pod_with(&files), &want(&bundle)).is_empty());
}

#[test]
fn the_renewal_jobs_command_is_one_the_agent_takes() {
    // The CronJob's command, run by the agent built from this tree outside a cluster: its
    // arguments parse, and it stops at the in-cluster client with the fix, changing nothing.
    let spec = pgset_spec::ClusterSpec::default();
    let job = pgset_deploy::tls::renewal::objects(&spec).unwrap().cron_job;
    let command = job
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .command
        .clone()
        .unwrap();
    assert_eq!(command[0], contract::AGENT_IMAGE_BINARY);
    let out = pgset_command::HostCommand::new(support::agent_bin())
        .args(&command[1..])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .quiet()
        .output()
        .unwrap();
    assert!(!out.success());
    assert!(
        out.stderr.contains("in-cluster configuration"),
        "{}",
        out.stderr
    );
    // A command it does not take is refused by its parser instead.
    let bad = pgset_command::HostCommand::new(support::agent_bin())
        .args(["renew-certs", "--namespace", "x"])
        .quiet()
        .output()
        .unwrap();
    assert!(!bad.success());
    assert!(bad.stderr.contains("--ca-secret"), "{}", bad.stderr);
}

/// Runs a `sh -c … psql -d CONNINFO` argv of `pgset_verify::tls::psql_ssl` against member `k`
/// of `t` over TCP: the pod's secret directory becomes the set's, the Service the member's
/// address and port.
fn run_psql_ssl(t: &TestSet, k: i32, argv: &[String]) -> pgset_verify::exec::ExecOutput {
    let mut args: Vec<String> = argv[1..].to_vec();
    args[1] = args[1]
        .replace(
            contract::SECRET_MOUNT,
            &t.dir().join("secret").display().to_string(),
        )
        .replace(
            contract::TLS_MOUNT,
            &local::tls_dir(t.dir()).display().to_string(),
        );
    let d = args.iter().position(|a| a == "-d").expect("psql -d") + 1;
    args[d] = args[d].replace("host=db-master", "host=127.0.0.1").replace(
        &format!("port={}", contract::POSTGRES_PORT),
        &format!("port={}", t.port(k)),
    );
    let out = pgset_command::HostCommand::new(&argv[0])
        .args(args)
        .quiet()
        .output()
        .expect("run sh");
    pgset_verify::exec::ExecOutput {
        exit_code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verifys_tls_check_passes_on_what_a_tls_member_answers_and_reads_its_pg_hba() {
    const TEST: &str = "verifys_tls_check_passes_on_what_a_tls_member_answers_and_reads_its_pg_hba";
    let Some(bin) = pg_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = no_ssl_reason(&bin) {
        pgset_tests::skip(TEST, &reason);
        return;
    }
    use pgset_verify::tls;
    let mut t = TestSet::new(1, 29850);
    t.opts.tls = true;
    local::up(&t.opts).await.expect("a --tls set forms");
    // The same statements verify runs in the master's pod, here on the member.
    let plain = run_psql_ssl(&t, 0, &tls::psql_ssl("db-master", "disable", "SELECT 1"));
    let with_tls = run_psql_ssl(&t, 0, &tls::psql_ssl("db-master", "require", tls::SSL_SQL));
    let hba = t.sql(0, tls::HBA_SQL).expect("pg_hba_file_rules");
    let rules = tls::parse_hba(&hba).expect("rules parse");
    assert_eq!(
        tls::hba_problems(
            &rules,
            &tls::superuser_networks(&pgset_spec::ClusterSpec::default())
        ),
        Vec::<String>::new(),
        "the managed pg_hba: {rules:?}"
    );
    assert!(
        rules
            .iter()
            .all(|r| r.kind == "local" || r.kind == "hostssl"),
        "{rules:?}"
    );
    // The server certificate part is the cluster's (its names are not local mode's).
    let spec = pgset_spec::ClusterSpec {
        name: "db".into(),
        ..pgset_spec::ClusterSpec::default()
    };
    let now = pgset_tls::now();
    let ca = pgset_tls::make_ca("db", now).unwrap();
    let leaf = pgset_tls::issue_server(&ca, &pgset_deploy::tls::server_names(&spec), now).unwrap();
    let inputs = tls::TlsInputs {
        server_secret: Some(pgset_deploy::tls::leaf_secret(
            &spec,
            "db-tls-server",
            &leaf,
            &ca.cert_pem,
        )),
        plain: plain.clone(),
        tls: with_tls.clone(),
        hba: pgset_verify::exec::ExecOutput {
            stdout: hba,
            stderr: String::new(),
            exit_code: 0,
        },
    };
    let finding = tls::verdict(&spec, &inputs, now);
    assert_eq!(
        finding.verdict,
        pgset_verify::Verdict::Pass,
        "{} (plain: {plain:?}, tls: {with_tls:?})",
        finding.message
    );
}
