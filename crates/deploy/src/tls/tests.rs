//! Tests of the TLS objects and the judgement of what a deploy does about them.

use super::*;
use crate::testutil::named_spec;
use time::Duration;

fn spec() -> ClusterSpec {
    (*named_spec("db", "prod")).clone()
}

#[test]
fn the_server_certificate_names_services_and_every_possible_member_short_and_qualified() {
    let names = server_names(&spec());
    for want in [
        "db-master",
        "db-master.prod",
        "db-master.prod.svc",
        "db-master.prod.svc.cluster.local",
        "db-replica",
        "db-replica.prod.svc.cluster.local",
        "db-0.db",
        "db-0.db.prod.svc.cluster.local",
        "db-31.db.prod.svc",
    ] {
        assert!(names.contains(&want.to_string()), "{want} missing");
    }
    assert!(!names.iter().any(|n| n.starts_with("db-32.")));
    assert_eq!(names.len(), 4 * (2 + MAX_REPLICAS as usize));
    // A scaled cluster has the same names: scaling never reissues the certificate.
    let mut bigger = spec();
    bigger.replicas = 5;
    assert_eq!(server_names(&bigger), names);
    let ca = pgset_tls::make_ca("db", pgset_tls::now()).unwrap();
    pgset_tls::issue_server(&ca, &names, pgset_tls::now()).unwrap();
}

#[test]
fn the_volume_projects_both_certificate_secrets_under_the_agents_file_names_and_never_the_ca_key() {
    let s = spec();
    let v = volume(&s).unwrap();
    let p = v.projected.unwrap();
    assert_eq!(p.default_mode, Some(0o440));
    let sources = p.sources.unwrap();
    let listed: Vec<(String, String, String)> = sources
        .iter()
        .flat_map(|src| {
            let sec = src.secret.as_ref().unwrap();
            sec.items
                .as_ref()
                .unwrap()
                .iter()
                .map(move |i| (sec.name.clone(), i.key.clone(), i.path.clone()))
        })
        .collect();
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        listed,
        [
            t("db-tls-server", "tls.crt", "server.crt"),
            t("db-tls-server", "tls.key", "server.key"),
            t("db-tls-server", "ca.crt", "ca.crt"),
            t("db-tls-replication", "tls.crt", "replication.crt"),
            t("db-tls-replication", "tls.key", "replication.key"),
        ]
    );
    assert!(!listed.iter().any(|(name, ..)| name == "db-ca"));
    let mut off = spec();
    off.tls.mode = TlsMode::Off;
    assert!(volume(&off).is_none());
}

#[test]
fn secrets_are_in_cert_managers_shape_and_the_configmap_holds_only_the_ca_certificate() {
    let s = spec();
    let t = pgset_tls::now();
    let ca = pgset_tls::make_ca("db", t).unwrap();
    let leaf = pgset_tls::issue_client(&ca, contract::REPLICATION_USER, t).unwrap();
    let secret = leaf_secret(&s, "db-tls-replication", &leaf, &ca.cert_pem);
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret_text(&secret, "tls.crt").unwrap(), leaf.cert_pem);
    assert_eq!(secret_text(&secret, "tls.key").unwrap(), leaf.key_pem);
    assert_eq!(secret_text(&secret, "ca.crt").unwrap(), ca.cert_pem);
    let ca_s = ca_secret(&s, &ca);
    assert_eq!(ca_s.metadata.name.as_deref(), Some("db-ca"));
    assert_eq!(ca_s.metadata.namespace.as_deref(), Some("prod"));
    let cm = ca_configmap(&s, &ca.cert_pem);
    assert_eq!(cm.metadata.name.as_deref(), Some("db-ca-cert"));
    let data = cm.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt"]);
    assert!(!data["ca.crt"].contains("PRIVATE KEY"));
}

#[test]
fn a_valid_ca_is_kept_a_due_one_is_rotated_and_an_ended_or_foreign_one_is_refused_with_the_fix() {
    let s = spec();
    let t = pgset_tls::now();
    assert!(judge_ca(&s, None, t).unwrap().is_none());
    let ca = pgset_tls::make_ca("db", t).unwrap();
    let kept = judge_ca(&s, Some(&ca_secret(&s, &ca)), t).unwrap().unwrap();
    assert_eq!(kept.cert_pem, ca.cert_pem);
    let facts = pgset_tls::read_cert(&ca.cert_pem).unwrap();
    assert!(!ca_due(&facts, t));
    // Within its renewal window: kept (to sign until the rotation's new CA takes over).
    let due = t + pgset_tls::CA_VALIDITY - Duration::days(1);
    assert!(ca_due(&facts, due));
    assert!(ca_due(
        &facts,
        t + pgset_tls::CA_VALIDITY - pgset_tls::CA_RENEW_BEFORE + Duration::days(1)
    ));
    assert!(!ca_due(
        &facts,
        t + pgset_tls::CA_VALIDITY - pgset_tls::CA_RENEW_BEFORE - Duration::days(1)
    ));
    assert!(
        judge_ca(&s, Some(&ca_secret(&s, &ca)), due)
            .unwrap()
            .is_some()
    );
    let ended = t + pgset_tls::CA_VALIDITY + Duration::days(1);
    let e = judge_ca(&s, Some(&ca_secret(&s, &ca)), ended)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("never rewrites") && e.contains("delete it"),
        "{e}"
    );
    // A leaf where the CA should be: not a CA.
    let leaf = pgset_tls::issue_client(&ca, "x", t).unwrap();
    let e = judge_ca(&s, Some(&ca_secret(&s, &leaf)), t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a CA"), "{e}");
    let mut empty = ca_secret(&s, &ca);
    empty.data = None;
    let e = judge_ca(&s, Some(&empty), t).unwrap_err().to_string();
    assert!(e.contains("has no key \"tls.crt\""), "{e}");
}

#[test]
fn a_leaf_is_kept_while_it_serves_and_renewed_when_due_for_other_names_or_another_ca() {
    let s = spec();
    let t = pgset_tls::now();
    let ca = pgset_tls::make_ca("db", t).unwrap();
    let names = server_names(&s);
    let leaf = pgset_tls::issue_server(&ca, &names, t).unwrap();
    let secret = leaf_secret(&s, "db-tls-server", &leaf, &ca.cert_pem);
    let judge = |sec: Option<&Secret>, names: &[String], ca_pem: &str, at| {
        judge_leaf(&s, sec, "db-tls-server", Some(names), ca_pem, at)
    };
    assert_eq!(judge(None, &names, &ca.cert_pem, t), Action::Create);
    assert_eq!(judge(Some(&secret), &names, &ca.cert_pem, t), Action::Keep);
    let late = t + pgset_tls::LEAF_VALIDITY - Duration::days(3);
    assert!(matches!(
        judge(Some(&secret), &names, &ca.cert_pem, late),
        Action::Renew(_)
    ));
    assert!(matches!(
        judge(Some(&secret), &names[..4], &ca.cert_pem, t),
        Action::Renew(_)
    ));
    let other = pgset_tls::make_ca("db", t).unwrap();
    assert!(matches!(
        judge(Some(&secret), &names, &other.cert_pem, t),
        Action::Renew(_)
    ));
    let mut junk = secret.clone();
    junk.data
        .as_mut()
        .unwrap()
        .insert("tls.crt".into(), ByteString(b"junk".to_vec()));
    assert!(matches!(
        judge(Some(&junk), &names, &ca.cert_pem, t),
        Action::Renew(_)
    ));
}

#[test]
fn a_provided_replication_certificate_must_name_the_replication_user_and_carry_the_ca() {
    let s = spec();
    let t = pgset_tls::now();
    let ca = pgset_tls::make_ca("db", t).unwrap();
    let good = pgset_tls::issue_client(&ca, contract::REPLICATION_USER, t).unwrap();
    let ok = leaf_secret(&s, "mine", &good, &ca.cert_pem);
    check_provided_secret(&ok, "mine", true, t, "fix").unwrap();
    let wrong = pgset_tls::issue_client(&ca, "app", t).unwrap();
    let e = check_provided_secret(
        &leaf_secret(&s, "mine", &wrong, &ca.cert_pem),
        "mine",
        true,
        t,
        "fix",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("commonName replicator"), "{e}");
    let mut no_ca = ok.clone();
    no_ca.data.as_mut().unwrap().remove("ca.crt");
    let e = check_provided_secret(&no_ca, "mine", true, t, "fix")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"ca.crt\""), "{e}");
    let e = check_provided_secret(
        &ok,
        "mine",
        true,
        t + pgset_tls::LEAF_VALIDITY + Duration::days(1),
        "fix",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("renew it"), "{e}");
}

#[test]
fn connect_info_verifies_the_master_service_against_the_ca_from_the_configmap() {
    let s = spec();
    let info = connect_info(&s);
    assert_eq!(info.host, "db-master.prod.svc.cluster.local");
    assert_eq!(
        info.conninfo,
        "host=db-master.prod.svc.cluster.local port=5432 user=postgres dbname=postgres sslmode=verify-full sslrootcert=db-ca.crt"
    );
    assert!(
        server_names(&s).contains(&info.host),
        "verify-full needs the host in the certificate"
    );
    assert_eq!(
        info.fetch_ca.as_deref(),
        Some("kubectl -n prod get configmap db-ca-cert -o jsonpath='{.data.ca\\.crt}' > db-ca.crt")
    );
    assert!(info.fetch_password.contains("get secret db-secret"));
    assert!(info.fetch_password.contains("umask 077"));
    let text = info.text();
    assert!(text.contains("ConfigMap db-ca-cert key ca.crt"), "{text}");
    assert!(!text.contains("password="), "{text}");
    // The superuser through a port-forward, the Service's name kept for verify-full.
    assert_eq!(
        info.port_forward,
        "kubectl -n prod port-forward svc/db-master 5432:5432"
    );
    assert_eq!(
        info.forwarded_conninfo,
        format!("{} hostaddr=127.0.0.1", info.conninfo)
    );
    assert!(
        text.contains("only from the loopback: through a")
            && text.contains(&info.port_forward)
            && text.contains(&info.forwarded_conninfo),
        "{text}"
    );
    // An application by a role of its own, made over the master's socket.
    assert_eq!(
        info.create_role,
        "kubectl -n prod exec -it $(kubectl -n prod get pods -l app.kubernetes.io/instance=db,role=master -o name) -c postgres -- psql -c 'CREATE ROLE app LOGIN' -c '\\password app'"
    );
    assert!(
        text.contains("host=db-master.prod.svc.cluster.local port=5432 user=app dbname=postgres sslmode=verify-full"),
        "{text}"
    );
    let mut wider = s.clone();
    wider.access.superuser_from = vec!["10.0.0.0/8".parse().unwrap()];
    let text = connect_info(&wider).text();
    assert!(
        text.contains("loopback and 10.0.0.0/8 (access.superuserFrom)"),
        "{text}"
    );

    let mut provided = s.clone();
    provided.tls.mode = TlsMode::Provided;
    provided.tls.server_secret = Some("mine".into());
    provided.tls.replication_secret = Some("theirs".into());
    let info = connect_info(&provided);
    assert!(info.fetch_ca.unwrap().contains("get secret mine"));
    assert!(info.conninfo.contains("sslmode=verify-full"));

    let mut off = s.clone();
    off.tls.mode = TlsMode::Off;
    let info = connect_info(&off);
    assert!(!info.conninfo.contains("sslmode"));
    assert!(info.fetch_ca.is_none() && info.ca_file.is_none());
    assert!(info.text().contains("TLS is off"));
}

#[test]
fn running_members_are_never_switched_between_tls_and_plain_in_place() {
    let s = spec();
    let with_tls = crate::statefulset::statefulset(&s);
    assert!(runs_tls(&with_tls));
    let mut off = s.clone();
    off.tls.mode = TlsMode::Off;
    let plain = crate::statefulset::statefulset(&off);
    assert!(!runs_tls(&plain));
    // A new cluster, or one already as the spec says: nothing to refuse.
    assert_eq!(switch_problem(&s, None), None);
    assert_eq!(switch_problem(&s, Some(&with_tls)), None);
    assert_eq!(switch_problem(&off, Some(&plain)), None);
    // A plain cluster meeting the new default: refused, with both ways out.
    let e = switch_problem(&s, Some(&plain)).unwrap();
    assert!(
        e.contains("runs without TLS") && e.contains("tls: {mode: off}") && e.contains("down"),
        "{e}"
    );
    let e = switch_problem(&off, Some(&with_tls)).unwrap();
    assert!(e.contains("runs with TLS") && e.contains("keep TLS"), "{e}");
}

#[test]
fn during_a_ca_rotation_a_leaf_with_the_bundle_is_kept_and_one_of_the_other_ca_is_renewed() {
    let s = spec();
    let t = pgset_tls::now();
    let (old, new) = (
        pgset_tls::make_ca("db", t).unwrap(),
        pgset_tls::make_ca("db", t).unwrap(),
    );
    let names = server_names(&s);
    let bundle = pgset_tls::make_bundle(&[&old.cert_pem, &new.cert_pem]);
    let leaf = pgset_tls::issue_server(&old, &names, t).unwrap();
    let secret = leaf_secret(&s, "db-tls-server", &leaf, &bundle);
    let judge = |ca: &str| judge_leaf(&s, Some(&secret), "db-tls-server", Some(&names), ca, t);
    // The old CA still signs: its leaf serves, the bundle holds it.
    assert_eq!(judge(&old.cert_pem), Action::Keep);
    // The new CA signs: same name, but the old CA's leaf is renewed.
    assert_eq!(
        judge(&new.cert_pem),
        Action::Renew("another CA signed it".into())
    );
    // A CA the bundle does not hold.
    let third = pgset_tls::make_ca("db", t).unwrap();
    assert_eq!(
        judge(&third.cert_pem),
        Action::Renew("it carries another CA".into())
    );
    // What members and clients are given: the bundle while it holds the signing CA.
    assert_eq!(trust_bundle(Some(&secret), &new.cert_pem), bundle);
    assert_eq!(trust_bundle(Some(&secret), &third.cert_pem), third.cert_pem);
    assert_eq!(trust_bundle(None, &old.cert_pem), old.cert_pem);
}

#[test]
fn a_member_is_behind_until_its_annotation_names_the_bundle_and_the_certificates() {
    use ca_rotation::{Want, behind};
    use k8s_openapi::api::core::v1::Pod;
    let pod = |annotation: Option<&str>| Pod {
        metadata: kube::api::ObjectMeta {
            annotations: annotation
                .map(|a| BTreeMap::from([(files::LOADED_ANNOTATION.to_string(), a.to_string())])),
            ..Default::default()
        },
        ..Pod::default()
    };
    let want = Want {
        ca_bundle: "b1".into(),
        certs: None,
    };
    let pods = BTreeMap::from([
        (
            "db-0".to_string(),
            pod(Some(r#"{"caBundle":"b1","certs":"c0"}"#)),
        ),
        (
            "db-1".to_string(),
            pod(Some(r#"{"caBundle":"b0","certs":"c0"}"#)),
        ),
        ("db-2".to_string(), pod(None)),
        ("db-3".to_string(), pod(Some("not json"))),
    ]);
    assert_eq!(behind(&pods, &want), ["db-1", "db-2", "db-3"]);
    let with_certs = Want {
        ca_bundle: "b1".into(),
        certs: Some("c1".into()),
    };
    assert_eq!(behind(&pods, &with_certs), ["db-0", "db-1", "db-2", "db-3"]);
    assert!(behind(&BTreeMap::new(), &with_certs).is_empty());
}
