//! The certificate renewal job against a scripted API server (tower-test): a certificate within
//! 30 days of its end is reissued by the signing CA with the same names and the bundle kept, by
//! one update carrying the resourceVersion read; one that serves longer is only read; a CA
//! rotation under way, or a certificate of another CA, is left alone; the CA Secret is never
//! written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use kube::{Api, Client};
use pgset_agent::renew::{RenewTargets, renew};
use serde_json::{Value, json};

const SECRETS: &str = "/api/v1/namespaces/db/secrets";

#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    body: Value,
}

type Store = Arc<Mutex<HashMap<String, Value>>>;
type Calls = Arc<Mutex<Vec<Call>>>;

/// Secrets in `store`: GET answers the stored object, PUT replaces it when its resourceVersion
/// is the stored one (409 otherwise) and bumps the version.
fn serve(store: Store) -> (Client, Calls) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::default();
    let record = calls.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let mut store = store.lock().unwrap();
            let (status, value) = match (call.method.as_str(), store.get(&call.path).cloned()) {
                ("GET", Some(o)) => (200, o),
                ("PUT", Some(o)) => {
                    if o["metadata"]["resourceVersion"] == call.body["metadata"]["resourceVersion"]
                    {
                        let mut new = call.body.clone();
                        let v: u64 = o["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        new["metadata"]["resourceVersion"] = json!((v + 1).to_string());
                        store.insert(call.path.clone(), new.clone());
                        (200, new)
                    } else {
                        (
                            409,
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                     "status": "Failure", "reason": "Conflict", "code": 409}),
                        )
                    }
                }
                _ => (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Failure", "reason": "NotFound", "code": 404}),
                ),
            };
            record.lock().unwrap().push(call);
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "db"), calls)
}

fn b64(text: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap()
}

fn text(v: &Value) -> String {
    let b: k8s_openapi::ByteString = serde_json::from_value(v.clone()).unwrap();
    String::from_utf8(b.0).unwrap()
}

fn secret(name: &str, data: Value) -> (String, Value) {
    (
        format!("{SECRETS}/{name}"),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": name, "namespace": "db", "resourceVersion": "7"},
               "data": data}),
    )
}

fn targets() -> RenewTargets {
    RenewTargets {
        ca_secret: "db-ca".into(),
        server_secret: "db-tls-server".into(),
        replication_secret: "db-tls-replication".into(),
    }
}

/// A cluster's three Secrets, the leaves issued at `issued`, the bundle `bundle` (the CA's
/// certificate when `None`).
fn cluster(
    ca: &pgset_tls::Issued,
    issued: pgset_tls::Now,
    bundle: Option<&str>,
    ca_extra: Value,
) -> Store {
    let names = vec!["db-master".to_string(), "db-0.db".to_string()];
    let server = pgset_tls::issue_server(ca, &names, issued).unwrap();
    let repl = pgset_tls::issue_client(ca, "replicator", issued).unwrap();
    let bundle = bundle.unwrap_or(&ca.cert_pem);
    let mut ca_data = json!({"tls.crt": b64(&ca.cert_pem), "tls.key": b64(&ca.key_pem)});
    for (k, v) in ca_extra.as_object().cloned().unwrap_or_default() {
        ca_data[k] = v;
    }
    Arc::new(Mutex::new(HashMap::from([
        secret("db-ca", ca_data),
        secret(
            "db-tls-server",
            json!({"tls.crt": b64(&server.cert_pem), "tls.key": b64(&server.key_pem), "ca.crt": b64(bundle)}),
        ),
        secret(
            "db-tls-replication",
            json!({"tls.crt": b64(&repl.cert_pem), "tls.key": b64(&repl.key_pem), "ca.crt": b64(bundle)}),
        ),
    ])))
}

fn lines(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

fn stored(store: &Store, name: &str, key: &str) -> String {
    text(&store.lock().unwrap()[&format!("{SECRETS}/{name}")]["data"][key])
}

#[tokio::test]
async fn certificates_within_30_days_of_their_end_are_renewed_by_the_signing_ca_and_the_next_run_only_reads()
 {
    let t = pgset_tls::now();
    let ca = pgset_tls::make_ca("db", t - pgset_tls::LEAF_VALIDITY).unwrap();
    // Issued 70 days ago: 20 days left.
    let store = cluster(&ca, t - time::Duration::days(70), None, json!({}));
    let old_server = stored(&store, "db-tls-server", "tls.crt");
    let (client, calls) = serve(store.clone());
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, "db");
    let said = renew(&api, &targets(), t).await.unwrap();
    assert_eq!(
        lines(&calls),
        [
            format!("GET {SECRETS}/db-ca"),
            format!("GET {SECRETS}/db-tls-server"),
            format!("PUT {SECRETS}/db-tls-server"),
            format!("GET {SECRETS}/db-tls-replication"),
            format!("PUT {SECRETS}/db-tls-replication"),
        ]
    );
    assert!(
        said[0].starts_with("renewed Secret db-tls-server"),
        "{said:?}"
    );
    for call in calls.lock().unwrap().iter().filter(|c| c.method == "PUT") {
        assert_eq!(
            call.body["metadata"]["resourceVersion"], "7",
            "the version read"
        );
    }
    let server = stored(&store, "db-tls-server", "tls.crt");
    assert_ne!(server, old_server);
    let facts = pgset_tls::read_cert(&server).unwrap();
    assert_eq!(facts.names, ["db-master", "db-0.db"], "the same names");
    assert!(facts.not_after - t > time::Duration::days(80));
    assert!(pgset_tls::signed_by(&server, &ca.cert_pem));
    assert_eq!(stored(&store, "db-tls-server", "ca.crt"), ca.cert_pem);
    let repl = pgset_tls::read_cert(&stored(&store, "db-tls-replication", "tls.crt")).unwrap();
    assert_eq!(repl.common_name.as_deref(), Some("replicator"));
    assert!(
        !said.iter().any(|l| l.contains("PRIVATE KEY")),
        "no key in what it says"
    );

    // The next run: nothing due, only reads.
    calls.lock().unwrap().clear();
    let said = renew(&api, &targets(), t).await.unwrap();
    assert!(calls.lock().unwrap().iter().all(|c| c.method == "GET"));
    assert!(
        said.iter().all(|l| l.starts_with("kept Secret")),
        "{said:?}"
    );
}

#[tokio::test]
async fn a_ca_rotation_under_way_or_a_certificate_of_another_ca_is_left_alone() {
    let t = pgset_tls::now();
    let ca = pgset_tls::make_ca("db", t - pgset_tls::LEAF_VALIDITY).unwrap();
    let due = t - time::Duration::days(70);
    // A rotation under way: the CA Secret holds the next CA; one read, nothing written.
    let next = pgset_tls::make_ca("db", t).unwrap();
    let store = cluster(&ca, due, None, json!({"next.crt": b64(&next.cert_pem)}));
    let (client, calls) = serve(store);
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, "db");
    let said = renew(&api, &targets(), t).await.unwrap();
    assert_eq!(lines(&calls), [format!("GET {SECRETS}/db-ca")]);
    assert!(said[0].contains("CA rotation is under way"), "{said:?}");

    // Leaves of another CA (same name): left to deploy, nothing written.
    let other = pgset_tls::make_ca("db", t).unwrap();
    let store = cluster(&other, due, Some(&other.cert_pem), json!({}));
    let mut s = store.lock().unwrap().clone();
    s.insert(
        secret(
            "db-ca",
            json!({"tls.crt": b64(&ca.cert_pem), "tls.key": b64(&ca.key_pem)}),
        )
        .0,
        secret(
            "db-ca",
            json!({"tls.crt": b64(&ca.cert_pem), "tls.key": b64(&ca.key_pem)}),
        )
        .1,
    );
    let store: Store = Arc::new(Mutex::new(s));
    let (client, calls) = serve(store);
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, "db");
    let said = renew(&api, &targets(), t).await.unwrap();
    assert!(calls.lock().unwrap().iter().all(|c| c.method == "GET"));
    assert!(
        said.iter().all(|l| l.starts_with("left Secret")),
        "{said:?}"
    );

    // No CA Secret: one error naming it.
    let (client, _) = serve(Store::default());
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, "db");
    let e = renew(&api, &targets(), t).await.unwrap_err().to_string();
    assert!(e.contains("Secret db-ca does not exist"), "{e}");
}
