//! The `tls` check: TLS offered and required (a connection without it refused by pg_hba), the
//! server certificate naming every host clients use and not near its end, and the master's
//! pg_hba as pgset writes it (TCP only as `hostssl`, replication only by certificate, the
//! superuser over TCP only from the loopback and `access.superuserFrom`). The verdict is pure
//! ([`verdict`]) over what [`crate::live`] read: the server certificate Secret, two psql runs
//! in a member's pod and the master's `pg_hba_file_rules`.

use pgset_deploy::tls::{CLUSTER_DOMAIN, read_pair};
use std::net::IpAddr;

use pgset_spec::{Cidr, ClusterSpec, contract};

use crate::exec::ExecOutput;
use crate::report::Finding;

/// The query whose rows [`parse_hba`] reads:
/// `type|database|user|address|netmask|auth_method`, file order (address and netmask empty on
/// `local` lines).
pub const HBA_SQL: &str = "SELECT type || '|' || array_to_string(database, ',') || '|' || \
     array_to_string(user_name, ',') || '|' || coalesce(address, '') || '|' || \
     coalesce(netmask, '') || '|' || auth_method FROM pg_hba_file_rules \
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
    /// Where from: a network (`10.244.0.0/16`), a keyword (`all`, `samehost`, ...), or empty on
    /// `local` lines.
    pub address: String,
    /// The method (`cert`, `scram-sha-256`, `trust`, `reject`, ...).
    pub method: String,
}

impl HbaRule {
    fn users(&self) -> impl Iterator<Item = &str> {
        self.user.split(',')
    }

    /// The network the rule names, when it names one.
    fn network(&self) -> Option<Cidr> {
        self.address.parse().ok()
    }

    fn text(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.kind, self.database, self.user, self.address, self.method
        )
    }
}

/// The prefix length of a netmask (`255.255.0.0` is 16); `None` unless its ones come first.
fn prefix_of(netmask: &str) -> Option<u8> {
    let bits: u128 = match netmask.parse::<IpAddr>().ok()? {
        IpAddr::V4(m) => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) => u128::from(m),
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// Parses [`HBA_SQL`]'s output; a line that does not fit is an error naming it.
pub fn parse_hba(out: &str) -> Result<Vec<HbaRule>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            let [kind, database, user, address, netmask, method] = f.as_slice() else {
                return Err(format!("not a pg_hba rule: {l:?}"));
            };
            let address = match (*address, *netmask) {
                (a, "") => a.to_string(),
                (a, mask) => {
                    let prefix = prefix_of(mask)
                        .ok_or_else(|| format!("not a netmask in pg_hba rule {l:?}"))?;
                    format!("{a}/{prefix}")
                }
            };
            Ok(HbaRule {
                kind: kind.to_string(),
                database: database.to_string(),
                user: user.to_string(),
                address,
                method: method.to_string(),
            })
        })
        .collect()
}

/// What is wrong with the rules for a TLS cluster: TCP admitted without TLS, replication over
/// TCP by anything but the certificate, the superuser admitted over TCP from anywhere but
/// `superuser_from` (pg_hba's first matching line decides). Empty when they are as pgset
/// writes them.
pub fn hba_problems(rules: &[HbaRule], superuser_from: &[Cidr]) -> Vec<String> {
    let mut problems = Vec::new();
    // Once a line refuses the superuser from everywhere, no later line reaches it.
    let mut superuser_refused = false;
    for r in rules {
        if r.kind == "local" {
            continue;
        }
        if r.kind != "hostssl" {
            problems.push(format!("`{}` admits TCP without TLS", r.text()));
            continue;
        }
        if r.database.split(',').any(|d| d == "replication") && r.method != "cert" {
            if r.method != "reject" {
                problems.push(format!(
                    "replication by {} (`{}`), not by the replication certificate",
                    r.method,
                    r.text()
                ));
            }
            continue;
        }
        let names_superuser = r.users().any(|u| u == contract::SUPERUSER);
        let reaches_superuser =
            names_superuser || (r.users().any(|u| u == "all") && !superuser_refused);
        if !reaches_superuser {
            continue;
        }
        if r.method == "reject" {
            superuser_refused |= names_superuser && r.address == "all";
            continue;
        }
        let allowed = r.network().is_some_and(|n| {
            superuser_from
                .iter()
                .any(|a| a.contains(n.addr()) && a.prefix() <= n.prefix())
        });
        if !allowed {
            problems.push(format!(
                "`{}` admits the superuser over TCP from {} (allowed: {}; set access.superuserFrom to admit more)",
                r.text(),
                r.address,
                list(superuser_from)
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

/// Where the rules admit replication from, for the report (`all` when from anywhere).
pub fn replication_sources(rules: &[HbaRule]) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.kind == "hostssl" && r.database == "replication" && r.method == "cert")
        .map(|r| r.address.clone())
        .collect()
}

fn list(nets: &[Cidr]) -> String {
    if nets.is_empty() {
        return "nowhere".into();
    }
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The networks the members admit the superuser from: the loopback (a port-forward's) and the
/// spec's `access.superuserFrom`.
pub fn superuser_networks(spec: &ClusterSpec) -> Vec<Cidr> {
    let mut nets = Cidr::loopback();
    nets.extend(spec.access.superuser_from.iter().copied());
    nets
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

/// psql in a member's pod over TCP to `host` with `sslmode`, as the replication role by its
/// mounted certificate (the superuser is not admitted from the pods; a connection without TLS
/// is refused before any role is looked at), running `sql`.
pub fn psql_ssl(host: &str, sslmode: &str, sql: &str) -> Vec<String> {
    let script = format!(
        "{} -X -q -A -t -v ON_ERROR_STOP=1 \"$@\"",
        crate::sql::remote_script(true).trim_end_matches(" \"$@\"")
    );
    let conninfo = format!(
        "host={host} port={} user={} dbname=postgres sslmode={sslmode}",
        contract::POSTGRES_PORT,
        contract::REPLICATION_USER
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
    let mut replication = String::new();
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
            Ok(rules) => {
                problems.extend(hba_problems(&rules, &superuser_networks(spec)));
                replication = replication_sources(&rules).join(", ");
            }
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Finding::pass(format!(
            "TLS 1.3 served and required; pg_hba: hostssl only, replication by certificate from \
             {replication}, the superuser over TCP from {} only{expiry}",
            list(&superuser_networks(spec))
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

    /// The rules as `pg_hba_file_rules` shows what the agent writes for a pod.
    const HBA: &str = "local|all|all|||trust\nlocal|replication|all|||trust\n\
                       hostssl|replication|replicator|10.244.0.0|255.255.0.0|cert\n\
                       hostssl|postgres|replicator|10.244.0.0|255.255.0.0|cert\n\
                       hostssl|all|replicator|all||reject\n\
                       hostssl|all|postgres|127.0.0.1|255.255.255.255|scram-sha-256\n\
                       hostssl|all|postgres|::1|ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff|scram-sha-256\n\
                       hostssl|all|postgres|all||reject\n\
                       hostssl|all|all|all||scram-sha-256\n";

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
        assert!(
            f.message
                .contains("replication by certificate from 10.244.0.0/16")
                && f.message
                    .contains("superuser over TCP from 127.0.0.1/32, ::1/128 only"),
            "{}",
            f.message
        );
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
            "local|all|all|||trust\nhost|replication|replicator|all||scram-sha-256\nhost|all|all|all||scram-sha-256\n",
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
            "hostssl|replication|replicator|all||scram-sha-256\nhostssl|replication|replicator|all||cert",
        )
        .unwrap();
        let found = hba_problems(&rules, &Cidr::loopback());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(parse_hba("garbage").is_err());
        i.tls = out(0, "true|TLSv1.2\n", "");
        i.hba = out(0, HBA, "");
        assert!(verdict(&spec(), &i, now).message.contains("not TLS 1.3"));
    }

    #[test]
    fn pg_hba_admitting_the_superuser_from_the_network_fails_unless_the_spec_says_so() {
        let now = pgset_tls::now();
        let mut i = good(now);
        // Round 2's rules: the superuser by password from anywhere.
        i.hba = out(
            0,
            "local|all|all|||trust\nhostssl|replication|replicator|all||cert\nhostssl|all|all|all||scram-sha-256\n",
            "",
        );
        let f = verdict(&spec(), &i, now);
        assert_eq!(f.verdict, Verdict::Fail);
        assert!(
            f.message.contains("admits the superuser over TCP from all"),
            "{}",
            f.message
        );
        // A network of the spec's is admitted; a wider one is not.
        let rules = parse_hba(
            "hostssl|all|postgres|10.0.0.0|255.0.0.0|scram-sha-256\nhostssl|all|postgres|all||reject\n\
             hostssl|replication|replicator|all||cert\nhostssl|all|all|all||scram-sha-256",
        )
        .unwrap();
        assert_eq!(rules[0].address, "10.0.0.0/8");
        let mut s = spec();
        assert_eq!(hba_problems(&rules, &superuser_networks(&s)).len(), 1);
        s.access.superuser_from = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            hba_problems(&rules, &superuser_networks(&s)),
            Vec::<String>::new()
        );
        s.access.superuser_from = vec!["10.1.0.0/16".parse().unwrap()];
        assert_eq!(hba_problems(&rules, &superuser_networks(&s)).len(), 1);
        assert_eq!(prefix_of("255.255.255.0"), Some(24));
        assert_eq!(prefix_of("ffff:ffff::"), Some(32));
        assert_eq!(prefix_of("255.0.255.0"), None);
    }

    #[test]
    fn the_psql_runs_name_no_password() {
        let argv = psql_ssl("db-master", "require", SSL_SQL);
        assert!(
            argv.iter()
                .any(|a| a.contains("user=replicator dbname=postgres sslmode=require"))
        );
        assert_eq!(
            argv[2],
            "PGSSLMODE=verify-full PGSSLROOTCERT=/etc/pgset/tls/ca.crt \
             PGSSLCERT=/etc/pgset/tls/replication.crt PGSSLKEY=/etc/pgset/tls/replication.key \
             PGCONNECT_TIMEOUT=5 exec psql -X -q -A -t -v ON_ERROR_STOP=1 \"$@\""
        );
        assert!(!argv.concat().contains("password"));
    }

    #[test]
    fn with_tls_off_the_check_is_skipped() {
        let now = pgset_tls::now();
        let mut s = spec();
        s.tls.mode = pgset_spec::TlsMode::Off;
        assert_eq!(verdict(&s, &good(now), now).verdict, Verdict::Skipped);
    }
}
