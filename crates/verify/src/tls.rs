//! The `tls` check: TLS offered and required (a connection without it refused by pg_hba), the
//! server certificate naming every host clients use and not near its end, and the master's
//! pg_hba as pgset writes it (TCP only as `hostssl`, replication only by certificate). The
//! verdict is pure ([`verdict`]) over what [`crate::live`] read: the server certificate Secret,
//! two psql runs in the master's pod and its `pg_hba_file_rules`.

use pgset_deploy::tls::{CLUSTER_DOMAIN, read_pair};
use pgset_spec::{ClusterSpec, contract};

use crate::exec::ExecOutput;
use crate::report::Finding;

/// The query whose rows [`parse_hba`] reads: `type|database|user|auth_method`, file order.
pub const HBA_SQL: &str = "SELECT type || '|' || array_to_string(database, ',') || '|' || \
     array_to_string(user_name, ',') || '|' || auth_method FROM pg_hba_file_rules \
     WHERE error IS NULL ORDER BY line_number";

/// The query run over TLS: `ssl|version` of the session itself.
pub const SSL_SQL: &str =
    "SELECT ssl || '|' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// One pg_hba line as `pg_hba_file_rules` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    /// `local`, `host`, `hostssl`, `hostnossl`, ...
    pub kind: String,
    /// Databases, comma-separated (`replication` for replication connections).
    pub database: String,
    /// Users, comma-separated.
    pub user: String,
    /// The method (`cert`, `scram-sha-256`, `trust`, ...).
    pub method: String,
}

/// Parses [`HBA_SQL`]'s output; a line that does not fit is an error naming it.
pub fn parse_hba(out: &str) -> Result<Vec<HbaRule>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            match f.as_slice() {
                [kind, database, user, method] => Ok(HbaRule {
                    kind: kind.to_string(),
                    database: database.to_string(),
                    user: user.to_string(),
                    method: method.to_string(),
                }),
                _ => Err(format!("not a pg_hba rule: {l:?}")),
            }
        })
        .collect()
}

/// What is wrong with the rules for a TLS cluster: TCP admitted without TLS, or replication
/// over TCP by anything but the certificate. Empty when they are as pgset writes them.
pub fn hba_problems(rules: &[HbaRule]) -> Vec<String> {
    let mut problems = Vec::new();
    for r in rules {
        if r.kind == "local" {
            continue;
        }
        if r.kind != "hostssl" {
            problems.push(format!(
                "`{} {} {} {}` admits TCP without TLS",
                r.kind, r.database, r.user, r.method
            ));
        } else if r.database.split(',').any(|d| d == "replication") && r.method != "cert" {
            problems.push(format!(
                "replication by {} (`{} {} {}`), not by the replication certificate",
                r.method, r.kind, r.database, r.user
            ));
        }
    }
    if !rules
        .iter()
        .any(|r| r.kind == "hostssl" && r.database == "replication" && r.method == "cert")
    {
        problems.push("no `hostssl replication ... cert` line: replicas cannot connect".into());
    }
    problems
}

/// The names the server certificate must carry for the members that exist: the master and
/// replica Services and each member's headless name, short and fully qualified.
pub fn required_names(spec: &ClusterSpec) -> Vec<String> {
    let pods: Vec<String> = (0..spec.replicas).map(|o| spec.pod_name(o)).collect();
    pgset_tls::cluster_names(
        &spec.master_service_name(),
        &spec.replica_service_name(),
        spec.headless_service_name(),
        &pods,
        &spec.namespace,
        CLUSTER_DOMAIN,
    )
}

/// psql in a pod over TCP to `host` with `sslmode` and the superuser's password read from the
/// mounted Secret file by the shell in the pod (in no argument, in no log), running `sql`.
pub fn psql_ssl(host: &str, sslmode: &str, sql: &str) -> Vec<String> {
    let script = format!(
        "PGPASSWORD=\"$(cat {}/{})\" PGCONNECT_TIMEOUT=5 exec psql -X -q -A -t -v ON_ERROR_STOP=1 \"$@\"",
        contract::SECRET_MOUNT,
        contract::secret::SUPERUSER_PASSWORD_KEY
    );
    let conninfo = format!(
        "host={host} port={} user={} dbname=postgres sslmode={sslmode}",
        contract::POSTGRES_PORT,
        contract::SUPERUSER
    );
    ["sh", "-c", &script, "psql", "-d", &conninfo, "-c", sql]
        .map(String::from)
        .to_vec()
}

/// What the check read.
#[derive(Debug, Clone)]
pub struct TlsInputs {
    /// The server certificate Secret as read (`None`: absent).
    pub server_secret: Option<k8s_openapi::api::core::v1::Secret>,
    /// psql over TCP with `sslmode=disable` in the master's pod.
    pub plain: ExecOutput,
    /// psql over TCP with `sslmode=require` running [`SSL_SQL`] in the master's pod.
    pub tls: ExecOutput,
    /// [`HBA_SQL`] on the master.
    pub hba: ExecOutput,
}

/// The verdict: pass only when TLS 1.3 is served, a connection without TLS is refused by
/// pg_hba (SQLSTATE 28000, "no encryption"), the certificate names every required host and is
/// valid for more than [`pgset_tls::RENEW_BEFORE`] (less: a failure that says to renew), and
/// the rules are as pgset writes them. `now` is the verifier's clock.
pub fn verdict(spec: &ClusterSpec, inputs: &TlsInputs, now: pgset_tls::Now) -> Finding {
    if !spec.tls.enabled() {
        return Finding::skipped("tls.mode off: the cluster serves without TLS");
    }
    let mut problems = Vec::new();
    let name = spec.tls_server_secret_name();
    let mut expiry = String::new();
    match &inputs.server_secret {
        None => problems.push(format!("Secret {name} does not exist")),
        Some(secret) => match read_pair(secret, &name, "") {
            Err(e) => problems.push(e.to_string()),
            Ok(pair) => {
                let missing: Vec<String> = required_names(spec)
                    .into_iter()
                    .filter(|n| !pair.facts.names.contains(n))
                    .collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "the server certificate does not name {}",
                        missing.join(", ")
                    ));
                }
                let left = pair.facts.not_after - now;
                expiry = format!(", certificate valid {} more days", left.whole_days());
                if pair.facts.not_after <= now {
                    problems.push(format!(
                        "the server certificate ended at {}",
                        pair.facts.not_after
                    ));
                } else if left < pgset_tls::RENEW_BEFORE {
                    problems.push(format!(
                        "the server certificate ends in {} days: run `{} rotate-certs` (or renew the provided Secret)",
                        left.whole_days(),
                        contract::program_name()
                    ));
                }
            }
        },
    }
    if !inputs.tls.success() {
        problems.push(format!(
            "no TLS connection: {}",
            inputs.tls.failure_summary()
        ));
    } else if inputs.tls.stdout.trim() != "true|TLSv1.3" {
        problems.push(format!(
            "the session is not TLS 1.3: {}",
            inputs.tls.stdout.trim()
        ));
    }
    if inputs.plain.success() {
        problems.push("a connection without TLS was let in".into());
    } else if !inputs.plain.stderr.contains("no encryption") {
        problems.push(format!(
            "a connection without TLS failed, but not by pg_hba: {}",
            inputs.plain.failure_summary()
        ));
    }
    if !inputs.hba.success() {
        problems.push(format!(
            "cannot read pg_hba_file_rules: {}",
            inputs.hba.failure_summary()
        ));
    } else {
        match parse_hba(&inputs.hba.stdout) {
            Ok(rules) => problems.extend(hba_problems(&rules)),
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Finding::pass(format!(
            "TLS 1.3 served and required, pg_hba hostssl only with replication by certificate{expiry}"
        ))
    } else {
        Finding::fail(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Verdict;

    fn spec() -> ClusterSpec {
        ClusterSpec {
            name: "db".into(),
            namespace: "prod".into(),
            ..ClusterSpec::default()
        }
    }

    fn out(code: i32, stdout: &str, stderr: &str) -> ExecOutput {
        ExecOutput {
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit_code: code,
        }
    }

    const HBA: &str = "local|all|all|trust\nlocal|replication|all|trust\n\
                       hostssl|replication|replicator|cert\nhostssl|all|all|scram-sha-256\n";

    fn good(now: pgset_tls::Now) -> TlsInputs {
        let s = spec();
        let ca = pgset_tls::make_ca("db", now).unwrap();
        let leaf = pgset_tls::issue_server(&ca, &pgset_deploy::tls::server_names(&s), now).unwrap();
        TlsInputs {
            server_secret: Some(pgset_deploy::tls::leaf_secret(
                &s,
                "db-tls-server",
                &leaf,
                &ca.cert_pem,
            )),
            plain: out(
                2,
                "",
                "psql: error: FATAL:  no pg_hba.conf entry for host \"10.0.0.5\", user \"postgres\", database \"postgres\", no encryption",
            ),
            tls: out(0, "true|TLSv1.3\n", ""),
            hba: out(0, HBA, ""),
        }
    }

    #[test]
    fn a_cluster_as_pgset_makes_it_passes() {
        let now = pgset_tls::now();
        let f = verdict(&spec(), &good(now), now);
        assert_eq!(f.verdict, Verdict::Pass, "{}", f.message);
        assert!(f.message.contains("valid 89 more days"), "{}", f.message);
    }

    #[test]
    fn plain_tcp_let_in_or_refused_for_another_reason_fails() {
        let now = pgset_tls::now();
        let mut i = good(now);
        i.plain = out(0, "1", "");
        let f = verdict(&spec(), &i, now);
        assert_eq!(f.verdict, Verdict::Fail);
        assert!(f.message.contains("let in"), "{}", f.message);
        i.plain = out(2, "", "connection refused");
        let f = verdict(&spec(), &i, now);
        assert!(f.message.contains("not by pg_hba"), "{}", f.message);
    }

    #[test]
    fn a_certificate_missing_a_name_or_near_its_end_fails_and_says_what_to_run() {
        let now = pgset_tls::now();
        let s = spec();
        let ca = pgset_tls::make_ca("db", now).unwrap();
        let leaf = pgset_tls::issue_server(&ca, &["db-master".to_string()], now).unwrap();
        let mut i = good(now);
        i.server_secret = Some(pgset_deploy::tls::leaf_secret(
            &s,
            "db-tls-server",
            &leaf,
            &ca.cert_pem,
        ));
        let f = verdict(&s, &i, now);
        assert_eq!(f.verdict, Verdict::Fail);
        assert!(
            f.message.contains("does not name db-master.prod")
                && f.message.contains("db-1.db.prod.svc.cluster.local"),
            "{}",
            f.message
        );
        let late = now + pgset_tls::LEAF_VALIDITY - pgset_tls::RENEW_BEFORE / 2;
        let f = verdict(&s, &good(now), late);
        assert!(f.message.contains("rotate-certs"), "{}", f.message);
        let f = verdict(&s, &good(now), now + pgset_tls::LEAF_VALIDITY);
        assert!(f.message.contains("ended at"), "{}", f.message);
        let mut i = good(now);
        i.server_secret = None;
        let f = verdict(&s, &i, now);
        assert!(f.message.contains("Secret db-tls-server does not exist"));
    }

    #[test]
    fn pg_hba_with_plain_host_lines_or_replication_by_password_fails() {
        let now = pgset_tls::now();
        let mut i = good(now);
        i.hba = out(
            0,
            "local|all|all|trust\nhost|replication|replicator|scram-sha-256\nhost|all|all|scram-sha-256\n",
            "",
        );
        let f = verdict(&spec(), &i, now);
        assert_eq!(f.verdict, Verdict::Fail);
        assert!(
            f.message.contains("admits TCP without TLS")
                && f.message.contains("no `hostssl replication"),
            "{}",
            f.message
        );
        let rules = parse_hba(
            "hostssl|replication|replicator|scram-sha-256\nhostssl|replication|replicator|cert",
        )
        .unwrap();
        assert_eq!(hba_problems(&rules).len(), 1, "{:?}", hba_problems(&rules));
        assert!(parse_hba("garbage").is_err());
        i.tls = out(0, "true|TLSv1.2\n", "");
        i.hba = out(0, HBA, "");
        assert!(verdict(&spec(), &i, now).message.contains("not TLS 1.3"));
    }

    #[test]
    fn the_psql_runs_name_no_password() {
        let argv = psql_ssl("db-master", "require", SSL_SQL);
        assert!(argv.iter().any(|a| a.contains("sslmode=require")));
        assert!(argv[2].contains("$(cat /etc/pgset/secret/superuser-password)"));
    }

    #[test]
    fn with_tls_off_the_check_is_skipped() {
        let now = pgset_tls::now();
        let mut s = spec();
        s.tls.mode = pgset_spec::TlsMode::Off;
        assert_eq!(verdict(&s, &good(now), now).verdict, Verdict::Skipped);
    }
}
