//! A Secret made before cluster ids, against a mock API server: `ensure_secret` adds the
//! cluster id with one merge patch of that key alone (the passwords are never sent), a dry run
//! says so without storing it, and a Secret that has one is only read.

#[allow(dead_code)]
mod mock_api;

use mock_api::{Call, mock_client, query_pairs};
use pgset_deploy::apply::{ApplyMode, SecretOutcome, ensure_secret};
use pgset_spec::contract::secret::{
    CLUSTER_ID_KEY, REPLICATION_PASSWORD_KEY, SUPERUSER_PASSWORD_KEY,
};
use pgset_spec::{ClusterSpec, ValidSpec};
use serde_json::{Value, json};

const PATH: &str = "/api/v1/namespaces/default/secrets/pgset-secret";

fn spec() -> ValidSpec {
    let s = ClusterSpec::default();
    s.validated().unwrap()
}

/// A Secret with the two passwords (base64 of `old-super` and `old-repl`) and, optionally, a
/// cluster id.
fn old_secret(cluster_id: Option<&str>) -> Value {
    let mut data = json!({
        SUPERUSER_PASSWORD_KEY: "b2xkLXN1cGVy",
        REPLICATION_PASSWORD_KEY: "b2xkLXJlcGw=",
    });
    if let Some(id) = cluster_id {
        data[CLUSTER_ID_KEY] = json!(id);
    }
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pgset-secret", "namespace": "default", "resourceVersion": "7"},
        "type": "Opaque",
        "data": data
    })
}

/// Serves `secret` on GET; a merge patch is answered with the Secret it would make.
fn handler(secret: Value) -> impl FnMut(&Call) -> (u16, Value) + Send + 'static {
    move |call: &Call| match (call.method.as_str(), call.path.as_str()) {
        ("GET", PATH) => (200, secret.clone()),
        ("PATCH", PATH) => {
            let mut merged = secret.clone();
            for (k, v) in call.body["data"].as_object().cloned().unwrap_or_default() {
                merged["data"][k] = v;
            }
            merged["metadata"]["resourceVersion"] = json!("8");
            (200, merged)
        }
        (m, p) => panic!("unexpected request {m} {p}"),
    }
}

fn decoded(value: &Value) -> String {
    let b64 = value.as_str().expect("a base64 string");
    let bytes: k8s_openapi::ByteString = serde_json::from_value(json!(b64)).expect("valid base64");
    String::from_utf8(bytes.0).expect("text")
}

#[tokio::test]
async fn an_old_secret_gains_a_cluster_id_by_a_merge_patch_of_that_key_alone() {
    let (client, calls) = mock_client(handler(old_secret(None)));
    let outcome = ensure_secret(&client, &spec(), ApplyMode::Apply)
        .await
        .unwrap();
    assert_eq!(outcome, SecretOutcome::ClusterIdAdded);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(Call::line).collect::<Vec<_>>(),
        [format!("GET {PATH}"), format!("PATCH {PATH}")]
    );
    let patch = &calls[1];
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let q = query_pairs(patch);
    assert!(q.contains(&"fieldManager=pgset".to_string()), "{q:?}");
    assert!(!patch.query.contains("dryRun"), "{q:?}");
    assert!(
        !patch.query.contains("force"),
        "a merge patch takes over no fields: {q:?}"
    );
    // Exactly one key, the cluster id: nothing that could overwrite a password.
    let data = patch.body["data"].as_object().expect("data");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        [CLUSTER_ID_KEY],
        "{}",
        patch.body
    );
    assert_eq!(
        patch.body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["data"]
    );
    let id = decoded(&data[CLUSTER_ID_KEY]);
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?}"
    );
}

#[tokio::test]
async fn a_dry_run_on_an_old_secret_sends_the_patch_as_a_dry_run() {
    let (client, calls) = mock_client(handler(old_secret(None)));
    let outcome = ensure_secret(&client, &spec(), ApplyMode::ServerDryRun)
        .await
        .unwrap();
    assert_eq!(outcome, SecretOutcome::ClusterIdAdded);
    let calls = calls.lock().unwrap().clone();
    let writes: Vec<&Call> = calls.iter().filter(|c| c.is_write()).collect();
    assert_eq!(writes.len(), 1);
    assert!(
        query_pairs(writes[0]).contains(&"dryRun=All".to_string()),
        "{}",
        writes[0].query
    );
}

#[tokio::test]
async fn a_secret_with_a_cluster_id_is_only_read() {
    let (client, calls) = mock_client(handler(old_secret(Some("YzE="))));
    let outcome = ensure_secret(&client, &spec(), ApplyMode::Apply)
        .await
        .unwrap();
    assert_eq!(outcome, SecretOutcome::Kept);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(Call::line).collect::<Vec<_>>(),
        [format!("GET {PATH}")]
    );
}
