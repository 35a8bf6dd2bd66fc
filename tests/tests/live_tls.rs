//! Against a live cluster (KUBECONFIG): a 2-member cluster of its own deployed with the default
//! `tls.mode: auto`. A client in the cluster connecting to the master Service with
//! `sslmode=verify-full` against the CA (from ConfigMap `<name>-ca-cert`, as `connect-info`
//! says) gets TLS 1.3 (here as the replication role by its certificate, the one role besides
//! password roles pg_hba admits from the pods); the superuser from a pod is refused by pg_hba,
//! password or not; a connection without TLS is refused by pg_hba; every WAL sender on the
//! master runs over TLS, authenticated by the replication certificate (`/CN=replicator`). A CA
//! rotation with overlap (`rotate-certs --ca`) ends with every member's pod naming the new CA's
//! files loaded, the mounted bundle and the ConfigMap the new CA alone, verify-full connections
//! and TLS streaming by certificate going on. The namespace, the cluster and its TLS material
//! are removed at the end.
//!
//! Deadlines: `PGSET_LIVE_PATIENCE=FACTOR` (default 1) multiplies the waits.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use pgset_spec::contract::{self, POSTGRES_CONTAINER};
use pgset_verify::exec::PodExec;

#[path = "support/live.rs"]
mod support;

/// psql in `pod` with the libpq connection string `conninfo`; the superuser's password is read
/// from the mounted Secret file by the shell in the pod (in no argument, in no log).
fn psql_conninfo(conninfo: &str, sql: &str) -> Vec<String> {
    let script = format!(
        "PGPASSWORD=\"$(cat {}/{})\" PGCONNECT_TIMEOUT=5 exec psql -X -A -t -q -v ON_ERROR_STOP=1 \"$@\"",
        contract::SECRET_MOUNT,
        contract::secret::SUPERUSER_PASSWORD_KEY
    );
    ["sh", "-c", &script, "psql", "-d", conninfo, "-c", sql]
        .map(String::from)
        .to_vec()
}

/// `conninfo` (the superuser's, as `connect-info` prints it) as the replication role by the
/// certificate mounted in a member's pod: the one role besides password roles pg_hba admits
/// from the pods.
fn as_replication_role(conninfo: &str) -> String {
    format!(
        "{} sslcert={tls}/{} sslkey={tls}/{}",
        conninfo.replace(
            &format!("user={}", contract::SUPERUSER),
            &format!("user={}", contract::REPLICATION_USER)
        ),
        contract::tls::REPLICATION_CERT,
        contract::tls::REPLICATION_KEY,
        tls = contract::TLS_MOUNT
    )
}

#[tokio::test]
async fn verify_full_reaches_the_master_plain_tcp_is_refused_and_replication_uses_the_certificate()
{
    let test =
        "verify_full_reaches_the_master_plain_tcp_is_refused_and_replication_uses_the_certificate";
    support::on_a_cluster_of_its_own(test, "pgset-tls", 2, |client, spec| async move {
        assert_eq!(spec.tls.mode, pgset_spec::TlsMode::Auto);
        let (_dir, _file) = support::deploy_own_cluster(&client, &spec).await;
        let patience = support::patience();
        let exec = PodExec::new(
            Api::<Pod>::namespaced(client.clone(), &spec.namespace),
            Duration::from_secs_f64(60.0 * patience),
        );
        // The CA a client fetches without reading a Secret is the one the members trust.
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &spec.namespace)
            .get(&spec.ca_configmap_name())
            .await
            .expect("the CA ConfigMap exists");
        let ca = cm.data.unwrap_or_default()[contract::tls::CONFIGMAP_CA_KEY].clone();
        let facts = pgset_tls::read_cert(&ca).expect("a CA certificate");
        assert!(facts.is_ca);

        let info = pgset_deploy::tls::connect_info(&spec);
        // From a replica's pod, with the CA it has mounted (the same as the ConfigMap's).
        let client_pod = spec.pod_name(1);
        let mounted_ca = format!("{}/{}", contract::TLS_MOUNT, contract::tls::CA_CERT);
        let conninfo = info.conninfo.replace(
            &format!("sslrootcert={}", info.ca_file.clone().unwrap()),
            &format!("sslrootcert={mounted_ca}"),
        );
        // The superuser from a pod: refused by pg_hba whatever its password.
        let out = exec
            .run(
                &client_pod,
                POSTGRES_CONTAINER,
                &psql_conninfo(&conninfo, "SELECT 1"),
            )
            .await
            .expect("exec psql");
        assert!(
            !out.success() && out.stderr.contains("rejects connection"),
            "the superuser from {client_pod}: {} {}",
            out.stdout,
            out.stderr
        );
        let conninfo = as_replication_role(&conninfo);
        assert!(conninfo.contains("sslmode=verify-full"), "{conninfo}");
        let cat = exec
            .run(
                &client_pod,
                POSTGRES_CONTAINER,
                &["cat".to_string(), mounted_ca.clone()],
            )
            .await
            .expect("exec cat");
        assert_eq!(cat.stdout, ca, "the mounted CA is the ConfigMap's");
        let out = exec
            .run(
                &client_pod,
                POSTGRES_CONTAINER,
                &psql_conninfo(
                    &conninfo,
                    "SELECT ssl || '|' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                ),
            )
            .await
            .expect("exec psql");
        assert!(out.success(), "verify-full: {}", out.failure_summary());
        assert_eq!(out.stdout.trim(), "true|TLSv1.3");

        // Without TLS the master Service refuses the connection (pg_hba has hostssl only).
        let plain = format!(
            "host={} port={} user={} dbname=postgres sslmode=disable",
            info.host,
            info.port,
            contract::SUPERUSER
        );
        let out = exec
            .run(
                &client_pod,
                POSTGRES_CONTAINER,
                &psql_conninfo(&plain, "SELECT 1"),
            )
            .await
            .expect("exec psql");
        assert!(
            !out.success(),
            "a plain connection was let in: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("no encryption"),
            "refused by pg_hba: {}",
            out.stderr
        );

        // Every WAL sender runs over TLS 1.3 as the replication certificate's subject.
        let want = format!(
            "{}|streaming|true|TLSv1.3|/CN={}",
            spec.pod_name(1),
            contract::REPLICATION_USER
        );
        wait_for_senders(&client, &spec, &exec, &want, patience).await;
    })
    .await;
}

#[tokio::test]
async fn a_ca_rotation_ends_with_every_member_on_the_new_ca_and_streaming_over_tls() {
    let test = "a_ca_rotation_ends_with_every_member_on_the_new_ca_and_streaming_over_tls";
    support::on_a_cluster_of_its_own(test, "pgset-tls-ca", 2, |client, spec| async move {
        let (_dir, _file) = support::deploy_own_cluster(&client, &spec).await;
        let patience = support::patience();
        let configmap = || async {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &spec.namespace)
                .get(&spec.ca_configmap_name())
                .await
                .expect("the CA ConfigMap exists");
            cm.data.unwrap_or_default()[contract::tls::CONFIGMAP_CA_KEY].clone()
        };
        let old_ca = configmap().await;
        let started = Instant::now();
        pgset_deploy::tls::ca_rotation::rotate_ca(
            &client,
            &spec,
            pgset_tls::now(),
            Duration::from_secs_f64(300.0 * patience),
            &mut |line: &str| eprintln!("    {line}"),
        )
        .await
        .expect("the CA rotation");
        eprintln!(
            "CA rotation on a live cluster: {:?} until every member trusted the new CA alone",
            started.elapsed()
        );
        let new_ca = configmap().await;
        assert_ne!(new_ca, old_ca);
        assert_eq!(pgset_tls::split_bundle(&new_ca).len(), 1);
        // Every member's pod names the bundle it mounts, which is the ConfigMap's.
        let exec = PodExec::new(
            Api::<Pod>::namespaced(client.clone(), &spec.namespace),
            Duration::from_secs_f64(60.0 * patience),
        );
        let mounted_ca = format!("{}/{}", contract::TLS_MOUNT, contract::tls::CA_CERT);
        for k in 0..2 {
            let pod = Api::<Pod>::namespaced(client.clone(), &spec.namespace)
                .get(&spec.pod_name(k))
                .await
                .expect("the member pod");
            let loaded: serde_json::Value = serde_json::from_str(
                &pod.metadata.annotations.unwrap_or_default()[contract::tls::LOADED_ANNOTATION],
            )
            .expect("the loaded annotation is JSON");
            assert_eq!(
                loaded[contract::tls::LOADED_CA_BUNDLE],
                pgset_tls::digest(new_ca.as_bytes()),
                "{}",
                spec.pod_name(k)
            );
            let cat = exec
                .run(
                    &spec.pod_name(k),
                    POSTGRES_CONTAINER,
                    &["cat".to_string(), mounted_ca.clone()],
                )
                .await
                .expect("exec cat");
            assert_eq!(cat.stdout, new_ca);
        }
        // A verify-full client with the new bundle gets in; WAL senders run over TLS by the
        // new CA's replication certificate.
        let info = pgset_deploy::tls::connect_info(&spec);
        let conninfo = info.conninfo.replace(
            &format!("sslrootcert={}", info.ca_file.clone().unwrap()),
            &format!("sslrootcert={mounted_ca}"),
        );
        let out = exec
            .run(
                &spec.pod_name(1),
                POSTGRES_CONTAINER,
                &psql_conninfo(&as_replication_role(&conninfo), "SELECT 1"),
            )
            .await
            .expect("exec psql");
        assert!(out.success(), "verify-full: {}", out.failure_summary());
        let want = format!(
            "{}|streaming|true|TLSv1.3|/CN={}",
            spec.pod_name(1),
            contract::REPLICATION_USER
        );
        wait_for_senders(&client, &spec, &exec, &want, patience).await;
    })
    .await;
}

/// Waits (120 s × patience) until the master's WAL senders read `want`:
/// `member|state|ssl|version|client DN` rows, one a line.
async fn wait_for_senders(
    client: &kube::Client,
    spec: &pgset_spec::ValidSpec,
    exec: &PodExec,
    want: &str,
    patience: f64,
) {
    let master = pgset_deploy::master::read_master(client, spec)
        .await
        .expect("read the master")
        .master
        .expect("a master");
    let senders = "SELECT r.application_name || '|' || r.state || '|' || s.ssl || '|' \
         || s.version || '|' || coalesce(s.client_dn, '') FROM pg_stat_replication r \
         JOIN pg_stat_ssl s USING (pid) ORDER BY 1";
    let deadline = Instant::now() + Duration::from_secs_f64(120.0 * patience);
    loop {
        let out = exec
            .run(
                &master,
                POSTGRES_CONTAINER,
                &pgset_verify::sql::psql_local(&[senders]),
            )
            .await
            .expect("exec psql on the master");
        if out.success() && out.stdout.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "WAL senders on {master}: {:?}, wanted {want:?}: {}",
            out.stdout,
            out.stderr
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
