//! The cluster's TLS material against a mock API server: the first deploy creates the CA, the
//! two certificate Secrets and the CA ConfigMap; a second only reads them; a due certificate is
//! reissued by one merge patch of its own Secret; a CA that is due is never replaced; a dry run
//! stores nothing; `provided` Secrets are only read and checked.

#[allow(dead_code)]
mod mock_api;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mock_api::{Call, Calls, echo_with_version, mock_client, not_found, query_pairs};
use pgset_deploy::apply::{Applied, ApplyMode};
use pgset_deploy::tls::{ensure, rotate, server_names};
use pgset_spec::{ClusterSpec, TlsMode, ValidSpec};
use serde_json::{Value, json};
use time::Duration;

const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

fn spec() -> ValidSpec {
    ClusterSpec::default().validated().unwrap()
}

type Store = Arc<Mutex<HashMap<String, Value>>>;

/// A small API server: objects live in `store`; a create stores the object under its name, a
/// merge patch merges `data`; dry runs store nothing.
fn handler(store: Store) -> impl FnMut(&Call) -> (u16, Value) + Send + 'static {
    let mut version = 10u64;
    move |call: &Call| {
        let dry_run = call.query.contains("dryRun");
        let mut store = store.lock().unwrap();
        match call.method.as_str() {
            "GET" => match store.get(&call.path) {
                Some(o) => (200, o.clone()),
                None => not_found(&call.path),
            },
            "POST" => {
                version += 1;
                let (code, obj) = echo_with_version(call, &version.to_string());
                let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                if !dry_run {
                    store.insert(format!("{}/{name}", call.path), obj.clone());
                }
                (code, obj)
            }
            "PATCH" => {
                assert_eq!(call.content_type, "application/merge-patch+json");
                version += 1;
                let mut obj = store
                    .get(&call.path)
                    .cloned()
                    .expect("patch of a stored object");
                for (k, v) in call.body["data"].as_object().cloned().unwrap_or_default() {
                    obj["data"][k] = v;
                }
                obj["metadata"]["resourceVersion"] = json!(version.to_string());
                if !dry_run {
                    store.insert(call.path.clone(), obj.clone());
                }
                (200, obj)
            }
            m => panic!("unexpected request {m} {}", call.path),
        }
    }
}

fn lines(calls: &Calls) -> Vec<String> {
    calls.lock().unwrap().iter().map(Call::line).collect()
}

fn decoded(v: &Value) -> String {
    let bytes: k8s_openapi::ByteString = serde_json::from_value(v.clone()).expect("base64");
    String::from_utf8(bytes.0).unwrap()
}

fn stored_text(store: &Store, path: &str, key: &str) -> String {
    decoded(&store.lock().unwrap()[path]["data"][key])
}

#[tokio::test]
async fn the_first_deploy_creates_the_ca_the_certificates_and_the_configmap_and_the_second_only_reads()
 {
    let store = Store::default();
    let (client, calls) = mock_client(handler(store.clone()));
    let mut said = Vec::new();
    let now = pgset_tls::now();
    let first = ensure(&client, &spec(), ApplyMode::Apply, now, &mut |l: &str| {
        said.push(l.to_string())
    })
    .await
    .unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("GET {SECRETS}/pgset-ca"),
            format!("GET {SECRETS}/pgset-tls-server"),
            format!("GET {SECRETS}/pgset-tls-replication"),
            format!("GET {CONFIGMAPS}/pgset-ca-cert"),
            format!("POST {SECRETS}"),
            format!("POST {SECRETS}"),
            format!("POST {SECRETS}"),
            format!("POST {CONFIGMAPS}"),
        ]
    );
    assert_eq!(
        first,
        [
            Applied::Created("Secret/pgset-ca".into()),
            Applied::Created("Secret/pgset-tls-server".into()),
            Applied::Created("Secret/pgset-tls-replication".into()),
            Applied::Created("ConfigMap/pgset-ca-cert".into()),
        ]
    );
    for call in calls.lock().unwrap().iter().filter(|c| c.is_write()) {
        assert!(query_pairs(call).contains(&"fieldManager=pgset".to_string()));
        assert!(!call.query.contains("dryRun"));
    }
    // What was stored: a CA, a server certificate it signed for every name, the replication
    // role's certificate, and the CA certificate (no key) in the ConfigMap.
    let ca_pem = stored_text(&store, &format!("{SECRETS}/pgset-ca"), "tls.crt");
    let ca = pgset_tls::read_cert(&ca_pem).unwrap();
    assert!(ca.is_ca);
    let server = pgset_tls::read_cert(&stored_text(
        &store,
        &format!("{SECRETS}/pgset-tls-server"),
        "tls.crt",
    ))
    .unwrap();
    assert_eq!(server.names, server_names(&spec()));
    assert_eq!(server.issuer_common_name, ca.common_name);
    assert_eq!(
        stored_text(&store, &format!("{SECRETS}/pgset-tls-server"), "ca.crt"),
        ca_pem
    );
    let repl = pgset_tls::read_cert(&stored_text(
        &store,
        &format!("{SECRETS}/pgset-tls-replication"),
        "tls.crt",
    ))
    .unwrap();
    assert_eq!(repl.common_name.as_deref(), Some("replicator"));
    let cm = store.lock().unwrap()[&format!("{CONFIGMAPS}/pgset-ca-cert")].clone();
    assert_eq!(cm["data"], json!({"ca.crt": ca_pem}));
    assert_eq!(
        store.lock().unwrap()[&format!("{SECRETS}/pgset-ca")]["type"],
        "kubernetes.io/tls"
    );
    // No key in what the user sees.
    let shown = said.join("\n");
    assert!(
        !shown.contains("PRIVATE KEY") && !shown.contains("BEGIN"),
        "{shown}"
    );
    assert!(shown.contains("created CA Secret pgset-ca"), "{shown}");

    // Again, a day later: only reads, nothing written, the same CA.
    calls.lock().unwrap().clear();
    let second = ensure(
        &client,
        &spec(),
        ApplyMode::Apply,
        now + Duration::days(1),
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    assert_eq!(second, vec![Applied::Unchanged; 4]);
    assert!(
        lines(&calls).iter().all(|l| l.starts_with("GET ")),
        "{:?}",
        lines(&calls)
    );
    assert_eq!(lines(&calls).len(), 4);
    assert_eq!(
        stored_text(&store, &format!("{SECRETS}/pgset-ca"), "tls.crt"),
        ca_pem
    );
}

#[tokio::test]
async fn a_certificate_near_its_end_is_reissued_by_one_merge_patch_and_the_ca_is_kept() {
    let store = Store::default();
    let (client, calls) = mock_client(handler(store.clone()));
    let now = pgset_tls::now();
    ensure(&client, &spec(), ApplyMode::Apply, now, &mut |_: &str| {})
        .await
        .unwrap();
    let ca_before = stored_text(&store, &format!("{SECRETS}/pgset-ca"), "tls.key");
    let server_before = stored_text(&store, &format!("{SECRETS}/pgset-tls-server"), "tls.crt");
    calls.lock().unwrap().clear();
    let late = now + pgset_tls::LEAF_VALIDITY - Duration::days(3);
    let mut said = Vec::new();
    let applied = ensure(&client, &spec(), ApplyMode::Apply, late, &mut |l: &str| {
        said.push(l.to_string())
    })
    .await
    .unwrap();
    let writes: Vec<Call> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.is_write())
        .cloned()
        .collect();
    assert_eq!(
        writes.iter().map(Call::line).collect::<Vec<_>>(),
        [
            format!("PATCH {SECRETS}/pgset-tls-server"),
            format!("PATCH {SECRETS}/pgset-tls-replication"),
        ]
    );
    assert!(applied.contains(&Applied::Changed("Secret/pgset-tls-server".into())));
    assert_eq!(
        stored_text(&store, &format!("{SECRETS}/pgset-ca"), "tls.key"),
        ca_before,
        "the CA is never rewritten while valid"
    );
    let server_after = stored_text(&store, &format!("{SECRETS}/pgset-tls-server"), "tls.crt");
    assert_ne!(server_after, server_before);
    let facts = pgset_tls::read_cert(&server_after).unwrap();
    assert!(facts.not_after > late + Duration::days(80));
    assert!(
        said.iter()
            .any(|l| l.starts_with("reissued certificate Secret pgset-tls-server"))
    );
}

#[tokio::test]
async fn rotate_certs_on_a_cluster_never_deployed_with_tls_makes_nothing() {
    let store = Store::default();
    let (client, calls) = mock_client(handler(store.clone()));
    let e = rotate(
        &client,
        &spec(),
        ApplyMode::Apply,
        pgset_tls::now(),
        &mut |_: &str| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no CA Secret pgset-ca") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(
        lines(&calls),
        [format!("GET {SECRETS}/pgset-ca")],
        "one read, no write"
    );
    assert!(store.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_ca_near_its_end_stops_the_deploy_before_any_write_and_says_what_to_do() {
    let store = Store::default();
    let (client, calls) = mock_client(handler(store.clone()));
    let now = pgset_tls::now();
    ensure(&client, &spec(), ApplyMode::Apply, now, &mut |_: &str| {})
        .await
        .unwrap();
    calls.lock().unwrap().clear();
    let late = now + pgset_tls::CA_VALIDITY - Duration::days(2);
    let e = ensure(&client, &spec(), ApplyMode::Apply, late, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Secret pgset-ca") && e.contains("delete it"),
        "{e}"
    );
    assert!(!calls.lock().unwrap().iter().any(Call::is_write));
}

#[tokio::test]
async fn a_dry_run_sends_every_write_as_a_dry_run_and_stores_nothing() {
    let store = Store::default();
    let (client, calls) = mock_client(handler(store.clone()));
    let applied = ensure(
        &client,
        &spec(),
        ApplyMode::ServerDryRun,
        pgset_tls::now(),
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    assert_eq!(applied, vec![Applied::Unchanged; 4]);
    let calls = calls.lock().unwrap().clone();
    let writes: Vec<&Call> = calls.iter().filter(|c| c.is_write()).collect();
    assert_eq!(writes.len(), 4);
    for w in writes {
        assert!(
            query_pairs(w).contains(&"dryRun=All".to_string()),
            "{}",
            w.query
        );
    }
    assert!(store.lock().unwrap().is_empty());
}

fn provided() -> ValidSpec {
    let mut s = ClusterSpec::default();
    s.tls.mode = TlsMode::Provided;
    s.tls.server_secret = Some("my-server".into());
    s.tls.replication_secret = Some("my-repl".into());
    s.validated().unwrap()
}

#[tokio::test]
async fn provided_secrets_are_only_read_and_a_missing_one_is_named() {
    let store = Store::default();
    let (client, calls) = mock_client(handler(store.clone()));
    let e = ensure(
        &client,
        &provided(),
        ApplyMode::Apply,
        pgset_tls::now(),
        &mut |_: &str| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("TLS Secret my-server does not exist") && e.contains("cert-manager"),
        "{e}"
    );
    assert!(!calls.lock().unwrap().iter().any(Call::is_write));

    // As cert-manager writes them.
    let t = pgset_tls::now();
    let ca = pgset_tls::make_ca("theirs", t).unwrap();
    let server = pgset_tls::issue_server(&ca, &server_names(&provided()), t).unwrap();
    let repl = pgset_tls::issue_client(&ca, "replicator", t).unwrap();
    let b64 =
        |s: &str| serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).unwrap();
    for (name, leaf) in [("my-server", &server), ("my-repl", &repl)] {
        store.lock().unwrap().insert(
            format!("{SECRETS}/{name}"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": "default", "resourceVersion": "3"},
                   "type": "kubernetes.io/tls",
                   "data": {"tls.crt": b64(&leaf.cert_pem), "tls.key": b64(&leaf.key_pem),
                            "ca.crt": b64(&ca.cert_pem)}}),
        );
    }
    calls.lock().unwrap().clear();
    let applied = ensure(&client, &provided(), ApplyMode::Apply, t, &mut |_: &str| {})
        .await
        .unwrap();
    assert!(applied.is_empty());
    assert_eq!(
        lines(&calls),
        [
            format!("GET {SECRETS}/my-server"),
            format!("GET {SECRETS}/my-repl")
        ]
    );
}

#[tokio::test]
async fn with_tls_off_nothing_is_read_or_written() {
    let (client, calls) = mock_client(|c: &Call| panic!("unexpected {}", c.line()));
    let mut s = ClusterSpec::default();
    s.tls.mode = TlsMode::Off;
    let applied = ensure(
        &client,
        &s.validated().unwrap(),
        ApplyMode::Apply,
        pgset_tls::now(),
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    assert!(applied.is_empty());
    assert!(calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn rotate_certs_reissues_both_certificates_by_merge_patches_and_keeps_the_ca() {
    let store = Store::default();
    let (client, calls) = mock_client(handler(store.clone()));
    let now = pgset_tls::now();
    ensure(&client, &spec(), ApplyMode::Apply, now, &mut |_: &str| {})
        .await
        .unwrap();
    let path = |n: &str| format!("{SECRETS}/{n}");
    let before: Vec<String> = ["pgset-ca", "pgset-tls-server", "pgset-tls-replication"]
        .iter()
        .map(|n| stored_text(&store, &path(n), "tls.crt"))
        .collect();
    calls.lock().unwrap().clear();
    let applied = rotate(&client, &spec(), ApplyMode::Apply, now, &mut |_: &str| {})
        .await
        .unwrap();
    assert_eq!(
        applied,
        [
            Applied::Unchanged,
            Applied::Changed("Secret/pgset-tls-server".into()),
            Applied::Changed("Secret/pgset-tls-replication".into()),
            Applied::Unchanged,
        ]
    );
    let writes: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.is_write())
        .map(Call::line)
        .collect();
    assert_eq!(
        writes,
        [
            format!("PATCH {SECRETS}/pgset-tls-server"),
            format!("PATCH {SECRETS}/pgset-tls-replication"),
        ]
    );
    assert_eq!(stored_text(&store, &path("pgset-ca"), "tls.crt"), before[0]);
    assert_ne!(
        stored_text(&store, &path("pgset-tls-server"), "tls.crt"),
        before[1]
    );
    assert_ne!(
        stored_text(&store, &path("pgset-tls-replication"), "tls.crt"),
        before[2]
    );
    // Still the same CA's: a deploy right after only reads.
    calls.lock().unwrap().clear();
    ensure(&client, &spec(), ApplyMode::Apply, now, &mut |_: &str| {})
        .await
        .unwrap();
    assert!(!calls.lock().unwrap().iter().any(Call::is_write));
    // Provided or off: refused, nothing sent.
    calls.lock().unwrap().clear();
    let e = rotate(
        &client,
        &provided(),
        ApplyMode::Apply,
        now,
        &mut |_: &str| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("yours") && e.contains("nothing was changed"),
        "{e}"
    );
    assert!(calls.lock().unwrap().is_empty());
}
