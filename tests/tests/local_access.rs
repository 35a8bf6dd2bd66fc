//! pg_hba's least access on real PostgreSQL, with the files and env a pod's agent gets: over
//! TLS the superuser only from its networks, the replication role only by its certificate and
//! only from the replication networks, any other role by password from anywhere. Connections
//! come from a second loopback address (127.0.0.2, a socket bound to it) to tell "another host"
//! from the members' own 127.0.0.1. Port 30340 (health 31340).

#[path = "support/local.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};

use pgset_agent::tls::{Connector, TlsFiles, connector_for_ca};
use pgset_local as local;
use pgset_spec::contract::{self, tls as files};
use pgset_verify::exec::ExecOutput;
use pgset_verify::report::Verdict;
use pgset_verify::{checks, sql};
use support::{TestSet, no_ssl_reason, pg_or_skip};
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;

/// A verified TLS connection from `source` to 127.0.0.1:`port`, database `postgres`, as `user`
/// (with `password` when given), presenting a client certificate when `connector` does. The
/// error is PostgreSQL's answer.
async fn connect_from(
    source: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    mut connector: Connector,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let mut c = tokio_postgres::Config::new();
    c.user(user)
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    if let Some(p) = password {
        c.password(p);
    }
    let tls =
        MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut connector, "localhost")
            .unwrap();
    let (client, conn) = c.connect_raw(stream, tls).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn refused_by_hba(what: &str, r: Result<tokio_postgres::Client, tokio_postgres::Error>) {
    match r {
        Ok(_) => panic!("{what}: admitted"),
        Err(e) => assert_eq!(
            e.code(),
            Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
            "{what}: {e:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_superuser_and_replication_are_admitted_only_from_their_networks_other_roles_by_password()
 {
    const TEST: &str = "the_superuser_and_replication_are_admitted_only_from_their_networks_other_roles_by_password";
    let Some(bin) = pg_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = no_ssl_reason(&bin) {
        pgset_tests::skip(TEST, &reason);
        return;
    }
    let mut t = TestSet::new(2, 30340);
    t.opts.tls = true;
    // What deploy writes for a pod: the superuser from the loopback (a port-forward), the
    // replication from the pods' network (here 127.0.0.1, the members' own address).
    t.opts.superuser_from = pgset_spec::Cidr::loopback();
    t.opts.replication_from = vec!["127.0.0.1/32".parse().unwrap()];
    local::up(&t.opts).await.expect("a --tls set forms");
    let dir = t.dir().to_path_buf();
    let tls = TlsFiles::new(local::tls_dir(&dir));
    let ca = std::fs::read(local::tls_dir(&dir).join(files::CA_CERT)).unwrap();
    let plain = || connector_for_ca(&ca, &tls.ca_cert()).unwrap();
    let with_cert = || tls.replication_connector().unwrap();
    let superuser_pw = std::fs::read_to_string(
        dir.join("secret")
            .join(contract::secret::SUPERUSER_PASSWORD_KEY),
    )
    .unwrap();
    let superuser_pw = superuser_pw.trim_end();
    let port = t.port(0);

    // The superuser: from the loopback yes (a port-forward arrives there), from another host no,
    // whatever its password.
    let c = connect_from("127.0.0.1", port, "postgres", Some(superuser_pw), plain())
        .await
        .expect("the superuser from the loopback");
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    refused_by_hba(
        "the superuser from 127.0.0.2",
        connect_from("127.0.0.2", port, "postgres", Some(superuser_pw), plain()).await,
    );

    // The replication role: by its certificate from the replication network, which lets it read
    // what a rewind needs; not from another host, and never by password alone.
    let c = connect_from(
        "127.0.0.1",
        port,
        contract::REPLICATION_USER,
        None,
        with_cert(),
    )
    .await
    .expect("the replication role by certificate from its network");
    let row = c
        .query_one(
            "SELECT current_user::text, length(pg_read_binary_file('global/pg_control')) > 0, \
             (SELECT count(*) FROM pg_ls_dir('pg_wal', true, false)) > 0",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), contract::REPLICATION_USER);
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2));
    refused_by_hba(
        "the replication role from 127.0.0.2",
        connect_from(
            "127.0.0.2",
            port,
            contract::REPLICATION_USER,
            None,
            with_cert(),
        )
        .await,
    );
    let replication_pw = std::fs::read_to_string(
        dir.join("secret")
            .join(contract::secret::REPLICATION_PASSWORD_KEY),
    )
    .unwrap();
    refused_by_hba(
        "the replication role by password, without its certificate",
        connect_from(
            "127.0.0.1",
            port,
            contract::REPLICATION_USER,
            Some(replication_pw.trim_end()),
            plain(),
        )
        .await,
    );

    // An application's role: by password over TLS from any host.
    t.sql(0, "CREATE ROLE app LOGIN PASSWORD 'app-secret-1'")
        .unwrap();
    let c = connect_from("127.0.0.2", port, "app", Some("app-secret-1"), plain())
        .await
        .expect("an application role from another host");
    let row = c
        .query_one("SELECT inet_client_addr()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "127.0.0.2/32");

    // The replica streams: replication from 127.0.0.1 by certificate.
    t.wait_for(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
        std::time::Duration::from_secs(60),
    );

    // verify's checks through the Services as a pod runs them with TLS: the replication role by
    // its mounted certificate. A replica refuses the write as read-only (before any privilege
    // is looked at) and answers the read; the master takes the marker row.
    let write = run_remote(
        &t,
        1,
        &sql::psql_remote("127.0.0.1", &[sql::READ_ONLY_PROBE], true),
    );
    let read = run_remote(
        &t,
        1,
        &sql::psql_remote("127.0.0.1", &[sql::IN_RECOVERY_QUERY], true),
    );
    let finding = checks::replica_read_only(&write, &read);
    assert_eq!(finding.verdict, Verdict::Pass, "{}", finding.message);
    t.sql(0, &sql::create_marker_table()).unwrap();
    let token = sql::new_token();
    let insert = run_remote(
        &t,
        0,
        &sql::psql_remote("127.0.0.1", &[&sql::insert_marker(&token)], true),
    );
    assert!(insert.success(), "{}", insert.failure_summary());
    assert_eq!(insert.stdout.trim(), token);
}

/// Runs a [`sql::psql_remote`] argv here as a pod would: the mounted TLS directory is the set's,
/// the port member `k`'s.
fn run_remote(t: &TestSet, k: i32, argv: &[String]) -> ExecOutput {
    let mut args: Vec<String> = argv[1..].to_vec();
    args[1] = args[1].replace(
        contract::TLS_MOUNT,
        &local::tls_dir(t.dir()).display().to_string(),
    );
    let p = args.iter().position(|a| a == "-p").expect("psql -p");
    args[p + 1] = t.port(k).to_string();
    // The server certificate names 127.0.0.1 and localhost, as a pod's names the Services.
    let out = pgset_command::HostCommand::new(&argv[0])
        .args(args)
        .quiet()
        .output()
        .expect("run sh");
    ExecOutput {
        exit_code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}
