//! The Kubernetes edge against a mock API server: apply order, field manager, the Secret's
//! get-or-create, scale, rollout waits and teardown.

mod mock_api;

use std::collections::HashMap;
use std::time::Duration;

use kube::runtime::watcher;
use mock_api::{
    Call, Calls, Collection, Reply, Timeline, echo_with_version, is_watch, mock_client,
    mock_client_replying, not_found, query_pairs,
};
use pgset_deploy::apply::{ApplyMode, PauseAfterDeploy, deploy, lift_failover_pause};
use pgset_deploy::rollout::{MemberStep, RolloutEvent, RolloutReport, wait_for_rollout};
use pgset_deploy::scale::scale;
use pgset_deploy::storage::{StorageError, apply_storage, storage_objects};
use pgset_deploy::teardown::{Purge, down};
use pgset_deploy::wait::{Listing, until_listing, until_object};
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};
use serde_json::{Value, json};

const NS: &str = "default";

fn spec() -> ValidSpec {
    let s = ClusterSpec::default();
    s.validated().unwrap()
}

fn existing_secret() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pgset-secret", "namespace": NS, "resourceVersion": "7"},
        "type": "Opaque",
        "data": {"superuser-password": "b2xkLXN1cGVy", "replication-password": "b2xkLXJlcGw=", "cluster-id": "YzE="}
    })
}

/// A handler for deploy that behaves like a small API server: objects live in a store, an
/// apply that changes an object gives it a new resourceVersion and an apply that changes
/// nothing keeps it (as server-side apply does); dry runs store nothing. The Secret is `secret`
/// at the start (absent when `None`).
fn deploy_handler(secret: Option<Value>) -> impl FnMut(&Call) -> (u16, Value) + Send + 'static {
    let secret_path = format!("/api/v1/namespaces/{NS}/secrets/pgset-secret");
    deploy_handler_over(secret.map(|s| vec![(secret_path, s)]).unwrap_or_default())
}

/// [`deploy_handler`] over a store holding `objects` (path, object) at the start; a GET of a
/// collection lists the stored objects under it, a POST stores the object under its name.
fn deploy_handler_over(
    objects: Vec<(String, Value)>,
) -> impl FnMut(&Call) -> (u16, Value) + Send + 'static {
    let mut store: HashMap<String, Value> = objects.into_iter().collect();
    let mut version = 100u64;
    move |call: &Call| {
        let dry_run = call.query.contains("dryRun");
        match (call.method.as_str(), call.path.as_str()) {
            ("GET", ADMISSION_V1) => (200, admission_v1_resources(true)),
            ("GET", p) if p.ends_with("/pods") || p.ends_with("/persistentvolumeclaims") => {
                let prefix = format!("{p}/");
                let mut items: Vec<Value> = store
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .map(|(_, v)| v.clone())
                    .collect();
                items.sort_by_key(|v| v["metadata"]["name"].as_str().map(str::to_string));
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", p) => match store.get(p) {
                Some(o) => (200, o.clone()),
                None => not_found(p),
            },
            ("POST", p) => {
                version += 1;
                let (code, obj) = echo_with_version(call, &version.to_string());
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                if !dry_run {
                    store.insert(format!("{p}/{name}"), obj.clone());
                }
                (code, obj)
            }
            ("PATCH", p) => match store.get(p) {
                Some(old) if same_content(old, &call.body) => (200, old.clone()),
                old => {
                    version += 1;
                    let (code, mut obj) = echo_with_version(call, &version.to_string());
                    if call.content_type == "application/merge-patch+json"
                        && let Some(old) = old
                    {
                        obj = old.clone();
                        for (k, v) in call.body["data"].as_object().cloned().unwrap_or_default() {
                            obj["data"][k] = v;
                        }
                        obj["metadata"]["resourceVersion"] = json!(version.to_string());
                    }
                    if !dry_run {
                        store.insert(p.to_string(), obj.clone());
                    }
                    (code, obj)
                }
            },
            ("DELETE", p) => match store.remove(p) {
                Some(o) => (200, o),
                None => not_found(p),
            },
            (_, p) => panic!("unexpected request {} {p}", call.method),
        }
    }
}

/// Discovery of the API group and version that serves ValidatingAdmissionPolicy.
const ADMISSION_V1: &str = "/apis/admissionregistration.k8s.io/v1";

/// The resources [`ADMISSION_V1`] lists: with the policies (Kubernetes 1.30+), or only the
/// webhook configurations (older releases).
fn admission_v1_resources(policies: bool) -> Value {
    let resource = |name: &str, kind: &str| {
        json!({"name": name, "singularName": "", "namespaced": false, "kind": kind,
               "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
    };
    let mut resources = vec![
        resource(
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
        ),
        resource(
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
        ),
    ];
    if policies {
        resources.push(resource(
            "validatingadmissionpolicies",
            "ValidatingAdmissionPolicy",
        ));
        resources.push(resource(
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
        ));
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1",
           "groupVersion": "admissionregistration.k8s.io/v1", "resources": resources})
}

/// Equal but for the resourceVersion.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// The StatefulSet's env var `name` as the last PATCH of it sent it.
fn statefulset_env(calls: &[Call], name: &str) -> Option<String> {
    let patch = calls
        .iter()
        .rev()
        .find(|c| c.method == "PATCH" && c.path.ends_with("/statefulsets/pgset"))?;
    patch.body["spec"]["template"]["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

#[tokio::test]
async fn replication_is_admitted_from_kubeadms_pod_subnet_else_the_nodes_pod_cidrs_else_anywhere_said()
 {
    let kubeadm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n"}
    });
    let (client, calls) = mock_client(deploy_handler_over(vec![(
        "/api/v1/namespaces/kube-system/configmaps/kubeadm-config".into(),
        kubeadm,
    )]));
    let mut lines = Vec::new();
    deploy(&client, &spec(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(
        !calls.iter().any(|c| c.path == "/api/v1/nodes"),
        "kubeadm's answer suffices"
    );
    assert_eq!(
        statefulset_env(&calls, "PGSET_REPLICATION_FROM").as_deref(),
        Some("10.244.0.0/16")
    );
    assert_eq!(
        statefulset_env(&calls, "PGSET_SUPERUSER_FROM").as_deref(),
        Some("127.0.0.1/32,::1/128")
    );
    assert!(
        lines.iter().any(|l| l.contains(
            "replication admitted from the pod network 10.244.0.0/16 (kubeadm's podSubnet)"
        )),
        "{lines:?}"
    );

    // No kubeadm configuration: the nodes' pod CIDRs.
    let nodes = json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": [
        {"metadata": {"name": "a"}, "spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24"]}},
        {"metadata": {"name": "b"}, "spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}}
    ]});
    let (client, calls) = mock_client(deploy_handler_over(vec![("/api/v1/nodes".into(), nodes)]));
    let mut lines = Vec::new();
    deploy(&client, &spec(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        statefulset_env(&calls, "PGSET_REPLICATION_FROM").as_deref(),
        Some("10.42.0.0/24,10.42.1.0/24")
    );
    assert!(
        lines.iter().any(|l| l.contains("the nodes' pod CIDRs")),
        "{lines:?}"
    );

    // Neither: from any address by the certificate, and the user is told how to restrict it.
    let (client, calls) = mock_client(deploy_handler(None));
    let mut lines = Vec::new();
    deploy(&client, &spec(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(statefulset_env(&calls, "PGSET_REPLICATION_FROM"), None);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("replication admitted from any address")
                && l.contains("access.replicationFrom")),
        "{lines:?}"
    );

    // The spec decides when it names networks: nothing is looked up.
    let mut named = ClusterSpec::default();
    named.access.replication_from = vec!["192.168.0.0/16".parse().unwrap()];
    let (client, calls) = mock_client(deploy_handler(None));
    deploy(
        &client,
        &named.validated().unwrap(),
        ApplyMode::Apply,
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("kube-system") || c.path == "/api/v1/nodes")
    );
    assert_eq!(
        statefulset_env(&calls, "PGSET_REPLICATION_FROM").as_deref(),
        Some("192.168.0.0/16")
    );
}

#[tokio::test]
async fn deploy_applies_in_order_with_pgsets_field_manager_and_creates_the_secret() {
    let (client, calls) = mock_client(deploy_handler(None));
    let mut lines = Vec::new();
    deploy(&client, &spec(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    let order: Vec<String> = calls.iter().map(Call::line).collect();
    assert_eq!(
        order,
        [
            // The pod network replication is admitted from (this cluster tells neither).
            "GET /api/v1/namespaces/kube-system/configmaps/kubeadm-config",
            "GET /api/v1/nodes",
            // Whether running members would switch between TLS and plain: read first.
            "GET /apis/apps/v1/namespaces/default/statefulsets/pgset",
            "GET /api/v1/namespaces/default/serviceaccounts/pgset-sa",
            "PATCH /api/v1/namespaces/default/serviceaccounts/pgset-sa",
            "GET /apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/pgset-agent",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/pgset-agent",
            "GET /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/pgset-agent",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/pgset-agent",
            "GET /apis/admissionregistration.k8s.io/v1",
            "GET /apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/pgset-default-pgset-members",
            "PATCH /apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/pgset-default-pgset-members",
            "GET /apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/pgset-default-pgset-members",
            "PATCH /apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/pgset-default-pgset-members",
            "GET /api/v1/namespaces/default/configmaps/pgset-record",
            "GET /api/v1/namespaces/default/pods",
            "GET /api/v1/namespaces/default/secrets/pgset-secret",
            "GET /api/v1/namespaces/default/persistentvolumeclaims",
            "GET /api/v1/namespaces/default/persistentvolumeclaims/pgset-pvc",
            "POST /api/v1/namespaces/default/configmaps",
            "POST /api/v1/namespaces/default/secrets",
            // The TLS material (auto), all read before the first write, before any member.
            "GET /api/v1/namespaces/default/secrets/pgset-ca",
            "GET /api/v1/namespaces/default/secrets/pgset-tls-server",
            "GET /api/v1/namespaces/default/secrets/pgset-tls-replication",
            "GET /api/v1/namespaces/default/configmaps/pgset-ca-cert",
            "POST /api/v1/namespaces/default/secrets",
            "POST /api/v1/namespaces/default/secrets",
            "POST /api/v1/namespaces/default/secrets",
            "POST /api/v1/namespaces/default/configmaps",
            "GET /api/v1/namespaces/default/services/pgset",
            "PATCH /api/v1/namespaces/default/services/pgset",
            "GET /api/v1/namespaces/default/services/pgset-master",
            "PATCH /api/v1/namespaces/default/services/pgset-master",
            "GET /api/v1/namespaces/default/services/pgset-replica",
            "PATCH /api/v1/namespaces/default/services/pgset-replica",
            "GET /api/v1/namespaces/default/persistentvolumeclaims/pgset-pvc",
            "PATCH /api/v1/namespaces/default/persistentvolumeclaims/pgset-pvc",
            "GET /apis/apps/v1/namespaces/default/statefulsets/pgset",
            "PATCH /apis/apps/v1/namespaces/default/statefulsets/pgset",
            // The certificates' daily renewal, with its own identity.
            "GET /api/v1/namespaces/default/serviceaccounts/pgset-cert-renewal",
            "PATCH /api/v1/namespaces/default/serviceaccounts/pgset-cert-renewal",
            "GET /apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/pgset-cert-renewal",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/pgset-cert-renewal",
            "GET /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/pgset-cert-renewal",
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/pgset-cert-renewal",
            "GET /apis/batch/v1/namespaces/default/cronjobs/pgset-cert-renewal",
            "PATCH /apis/batch/v1/namespaces/default/cronjobs/pgset-cert-renewal",
        ]
    );
    for call in calls.iter().filter(|c| c.method == "PATCH") {
        let q = query_pairs(call);
        assert!(q.contains(&"fieldManager=pgset".to_string()), "{q:?}");
        assert!(q.contains(&"force=true".to_string()), "{q:?}");
        assert!(!call.query.contains("dryRun"), "{q:?}");
        assert_eq!(call.content_type, "application/apply-patch+yaml");
        if call.path.starts_with("/apis/admissionregistration.k8s.io/") {
            assert_eq!(
                call.body["metadata"]["namespace"],
                Value::Null,
                "cluster-scoped"
            );
        } else {
            assert_eq!(call.body["metadata"]["namespace"], NS);
        }
    }
    // A first deploy over nothing: the record says "new cluster, no data yet", with the
    // Secret's cluster id, and carries its finalizer.
    let record = calls
        .iter()
        .find(|c| c.method == "POST" && c.path.ends_with("/configmaps"))
        .unwrap();
    let create = calls
        .iter()
        .find(|c| {
            c.method == "POST"
                && c.path.ends_with("/secrets")
                && c.body["metadata"]["name"] == "pgset-secret"
        })
        .unwrap();
    assert_eq!(record.body["data"]["state"], "new");
    assert_eq!(
        record.body["data"]["clusterId"].as_str().map(str::as_bytes),
        create.body["data"]["cluster-id"]
            .as_str()
            .map(
                |b64| serde_json::from_value::<k8s_openapi::ByteString>(json!(b64))
                    .unwrap()
                    .0
            )
            .as_deref()
    );
    assert_eq!(
        record.body["metadata"]["finalizers"],
        json!(["pgset.io/record"])
    );
    assert!(query_pairs(create).contains(&"fieldManager=pgset".to_string()));
    let data = &create.body["data"];
    for key in ["superuser-password", "replication-password"] {
        let encoded = data[key].as_str().unwrap();
        assert!(
            encoded.len() >= 40,
            "32 random characters, base64: {encoded}"
        );
    }
    assert_ne!(data["superuser-password"], data["replication-password"]);
    // No password in what the user sees.
    let shown = lines.join("\n");
    assert!(shown.contains("created Secret pgset-secret"));
    assert!(!shown.contains(data["superuser-password"].as_str().unwrap()));
}

#[tokio::test]
async fn second_deploy_keeps_the_existing_secret_untouched() {
    let (client, calls) = mock_client(deploy_handler(Some(existing_secret())));
    let mut lines = Vec::new();
    deploy(&client, &spec(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    let secret_calls: Vec<String> = calls
        .iter()
        .filter(|c| {
            c.path.contains("/secrets/pgset-secret")
                || (c.is_write() && c.body["metadata"]["name"] == "pgset-secret")
        })
        .map(Call::line)
        .collect();
    assert_eq!(
        secret_calls,
        ["GET /api/v1/namespaces/default/secrets/pgset-secret"]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("kept Secret pgset-secret"))
    );
    // Everything else is still applied (the certificate renewal's four objects included);
    // the missing record is created.
    assert_eq!(calls.iter().filter(|c| c.method == "PATCH").count(), 14);
}

#[tokio::test]
async fn a_second_deploy_over_the_same_spec_changes_nothing_and_says_so() {
    let (client, calls) = mock_client(deploy_handler(None));
    let first = deploy(&client, &spec(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    assert_eq!(
        first.changed.len(),
        20,
        "12 objects, the TLS material (the CA, two certificates, the CA ConfigMap) and the certificate renewal (ServiceAccount, Role, RoleBinding, CronJob): {first:?}"
    );
    assert_eq!(first.unchanged, 0);
    let mut lines = Vec::new();
    let second = deploy(&client, &spec(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    assert!(second.changed.is_empty(), "{second:?}");
    assert_eq!(
        second.unchanged, 20,
        "the policy and its binding are not rewritten, nor the TLS material, nor the certificate renewal"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("unchanged StatefulSet pgset")),
        "{lines:?}"
    );
    // A changed spec changes exactly the object it touches.
    let bigger = spec().with_replicas(3).unwrap();
    let third = deploy(&client, &bigger, ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    assert_eq!(third.changed, ["StatefulSet/pgset"]);
    let posts = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.method == "POST")
        .count();
    assert_eq!(
        posts, 6,
        "the Secret, the record, the CA, the two certificates and the CA ConfigMap are created once"
    );
}

#[tokio::test]
async fn a_cluster_without_admission_policies_gets_everything_else_and_is_told_once_isolation_is_not_enforced()
 {
    // Older than 1.30: the group version is not served at all, or serves only webhooks.
    for discovery in [None, Some(admission_v1_resources(false))] {
        let mut inner = deploy_handler(None);
        let (client, calls) = mock_client(move |call: &Call| match call.path.as_str() {
            ADMISSION_V1 => match &discovery {
                None => not_found(ADMISSION_V1),
                Some(list) => (200, list.clone()),
            },
            _ => inner(call),
        });
        let mut lines = Vec::new();
        let outcome = deploy(&client, &spec(), ApplyMode::Apply, &mut |l: &str| {
            lines.push(l.to_string())
        })
        .await
        .unwrap();
        let calls = calls.lock().unwrap().clone();
        let admission: Vec<String> = calls
            .iter()
            .filter(|c| c.path.starts_with("/apis/admissionregistration.k8s.io"))
            .map(Call::line)
            .collect();
        assert_eq!(
            admission,
            ["GET /apis/admissionregistration.k8s.io/v1"],
            "one discovery request, no policy written"
        );
        let told: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("member isolation is not enforced"))
            .collect();
        assert_eq!(told.len(), 1, "{lines:?}");
        assert!(
            told[0].contains("Kubernetes 1.30 or newer") && told[0].contains("default/pgset-sa"),
            "{}",
            told[0]
        );
        assert_eq!(outcome.changed.len(), 18, "{outcome:?}");
        assert!(outcome.changed.contains(&"StatefulSet/pgset".to_string()));
    }
}

#[tokio::test]
async fn an_incomplete_secret_stops_the_deploy_before_anything_that_uses_it() {
    let mut broken = existing_secret();
    broken["data"]
        .as_object_mut()
        .unwrap()
        .remove("replication-password");
    let (client, calls) = mock_client(deploy_handler(Some(broken)));
    let err = deploy(&client, &spec(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("replication-password"), "{msg}");
    assert!(msg.contains("never overwrites"), "{msg}");
    let calls = calls.lock().unwrap().clone();
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("/secrets") && c.is_write())
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("/configmaps") && c.is_write()),
        "the record is not made for a Secret that stops the deploy"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("statefulsets") && c.is_write()),
        "the StatefulSet is only read"
    );
}

#[tokio::test]
async fn server_dry_run_sends_dry_run_on_every_write() {
    let (client, calls) = mock_client(deploy_handler(None));
    deploy(&client, &spec(), ApplyMode::ServerDryRun, &mut |_: &str| {})
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    let writes: Vec<&Call> = calls.iter().filter(|c| c.is_write()).collect();
    assert_eq!(
        writes.len(),
        20,
        "the policy and its binding too, the TLS material and the certificate renewal"
    );
    for call in writes {
        assert!(
            query_pairs(call).contains(&"dryRun=All".to_string()),
            "{} without dryRun: {}",
            call.line(),
            call.query
        );
    }
}

const RECORD: &str = "/api/v1/namespaces/default/configmaps/pgset-record";
const SECRET: &str = "/api/v1/namespaces/default/secrets/pgset-secret";

fn templates() -> ValidSpec {
    let mut s = spec().into_inner();
    s.storage.mode = StorageMode::Templates;
    s.validated().unwrap()
}

/// Member `ordinal`'s claim in templates mode, labelled as the StatefulSet labels it.
fn member_claim(ordinal: i32) -> (String, Value) {
    let name = format!("data-pgset-{ordinal}");
    (
        format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": name, "namespace": NS, "resourceVersion": "3",
                            "labels": {"app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset"}}}),
    )
}

/// A member pod that published its data identity.
fn published(ordinal: i32, cluster_id: &str, sysid: &str) -> (String, Value) {
    let mut p = pod(ordinal, true, "r1");
    p["metadata"]["annotations"] = json!({
        "pgset.io/data-identity": json!({"clusterId": cluster_id, "systemIdentifier": sysid}).to_string()
    });
    (format!("/api/v1/namespaces/{NS}/pods/pgset-{ordinal}"), p)
}

fn record_object(data: Value, deleting: bool) -> (String, Value) {
    let mut r = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "pgset-record", "namespace": NS, "resourceVersion": "5",
                     "finalizers": ["pgset.io/record"],
                     "labels": {"app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset",
                                "app.kubernetes.io/managed-by": "pgset"}},
        "data": data});
    if deleting {
        r["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    (RECORD.to_string(), r)
}

fn b64(text: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// The writes of the object whose path ends with `path_end` (a create is sent to its
/// collection: the object's path is the collection's and its name).
fn written(calls: &Calls, path_end: &str) -> Vec<Call> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| {
            let object_path = match (c.method.as_str(), c.body["metadata"]["name"].as_str()) {
                ("POST", Some(name)) => format!("{}/{name}", c.path),
                _ => c.path.clone(),
            };
            c.is_write() && object_path.ends_with(path_end)
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_lost_record_of_a_cluster_with_data_is_rebuilt_as_data_expected_never_as_new() {
    // Templates mode: the record was deleted, pgset-0's claim too; the Secret (with its cluster
    // id) and pgset-1's claim remain.
    let (client, calls) = mock_client(deploy_handler_over(vec![
        (SECRET.to_string(), existing_secret()),
        member_claim(1),
    ]));
    let mut lines = Vec::new();
    deploy(&client, &templates(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    let made = written(&calls, "/configmaps/pgset-record");
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].method, "POST");
    assert_eq!(
        made[0].body["data"],
        json!({"state": "data-expected", "clusterId": "c1"})
    );
    assert!(
        written(&calls, "/secrets/pgset-secret").is_empty(),
        "the Secret is only read"
    );
    let said = lines.join("\n");
    assert!(
        said.contains("state data-expected")
            && said.contains("the Secret already held a cluster id")
            && said.contains("data-pgset-1"),
        "{said}"
    );
    // A second deploy changes nothing, the record above all.
    calls.lock().unwrap().clear();
    let again = deploy(&client, &templates(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    assert!(again.changed.is_empty(), "{again:?}");
    assert!(written(&calls, "pgset-record").is_empty());
}

#[tokio::test]
async fn a_rebuilt_record_takes_the_system_the_members_published() {
    let (client, calls) = mock_client(deploy_handler_over(vec![
        (SECRET.to_string(), existing_secret()),
        published(1, "c1", "7300000000000000001"),
        published(2, "c1", "7300000000000000001"),
    ]));
    deploy(&client, &templates(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    let made = written(&calls, "/configmaps/pgset-record");
    assert_eq!(
        made[0].body["data"],
        json!({"state": "data", "systemIdentifier": "7300000000000000001", "clusterId": "c1"})
    );
}

#[tokio::test]
async fn a_secret_made_anew_takes_the_cluster_id_the_record_names() {
    let (client, calls) = mock_client(deploy_handler_over(vec![record_object(
        json!({"state": "data", "systemIdentifier": "73", "clusterId": "8d775e27ac9e0f7f18b2705aeab85d67"}),
        false,
    )]));
    let mut lines = Vec::new();
    deploy(&client, &templates(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    let secret = written(&calls, "/secrets/pgset-secret");
    assert_eq!(secret.len(), 1);
    assert_eq!(secret[0].method, "POST");
    assert_eq!(
        secret[0].body["data"]["cluster-id"],
        json!(b64("8d775e27ac9e0f7f18b2705aeab85d67"))
    );
    assert!(
        secret[0].body["data"]["superuser-password"].is_string(),
        "new passwords"
    );
    assert!(
        written(&calls, "pgset-record").is_empty(),
        "the record is left as it is"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the cluster id 8d775e27ac9e0f7f18b2705aeab85d67")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_secret_made_anew_takes_the_cluster_id_the_members_published() {
    let (client, calls) = mock_client(deploy_handler_over(vec![published(1, "c9", "73")]));
    deploy(&client, &templates(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    let secret = written(&calls, "/secrets/pgset-secret");
    assert_eq!(secret[0].body["data"]["cluster-id"], json!(b64("c9")));
    let made = written(&calls, "/configmaps/pgset-record");
    assert_eq!(
        made[0].body["data"],
        json!({"state": "data", "systemIdentifier": "73", "clusterId": "c9"})
    );
}

#[tokio::test]
async fn a_record_without_a_state_is_filled_and_a_deleted_one_is_kept_as_it_is() {
    // Made empty by an older deploy, the cluster's Secret in place: data expected.
    let mut old = record_object(json!(null), false);
    old.1.as_object_mut().unwrap().remove("data");
    old.1["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    let (client, calls) = mock_client(deploy_handler_over(vec![
        (SECRET.to_string(), existing_secret()),
        old,
    ]));
    deploy(&client, &templates(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    let writes = written(&calls, "pgset-record");
    assert_eq!(writes[0].content_type, "application/merge-patch+json");
    assert_eq!(
        writes[0].body,
        json!({"data": {"state": "data-expected", "clusterId": "c1"}})
    );
    assert_eq!(writes[1].content_type, "application/apply-patch+yaml");
    assert_eq!(
        writes[1].body["metadata"]["finalizers"],
        json!(["pgset.io/record"])
    );
    assert!(writes[1].body.get("data").is_none());

    // A record deleted by hand stays (its finalizer): deploy says so and writes nothing to it.
    let (client, calls) = mock_client(deploy_handler_over(vec![
        (SECRET.to_string(), existing_secret()),
        record_object(
            json!({"state": "data", "systemIdentifier": "73", "clusterId": "c1"}),
            true,
        ),
    ]));
    let mut lines = Vec::new();
    deploy(&client, &templates(), ApplyMode::Apply, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    assert!(written(&calls, "pgset-record").is_empty());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("was deleted but its finalizer pgset.io/record keeps it")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_deploy_stopped_after_the_record_leaves_the_id_the_next_secret_takes() {
    let mut inner = deploy_handler(None);
    let mut refused_once = false;
    let (client, calls) = mock_client(move |call: &Call| {
        if call.method == "POST" && call.path.ends_with("/secrets") && !refused_once {
            refused_once = true;
            return (
                500,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "etcd timeout", "reason": "InternalError", "code": 500}),
            );
        }
        inner(call)
    });
    deploy(&client, &templates(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .expect_err("the Secret could not be made");
    let record = written(&calls, "/configmaps/pgset-record");
    assert_eq!(record[0].body["data"]["state"], "new");
    let id = record[0].body["data"]["clusterId"]
        .as_str()
        .unwrap()
        .to_string();
    calls.lock().unwrap().clear();
    deploy(&client, &templates(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    let secret = written(&calls, "/secrets/pgset-secret");
    assert_eq!(secret[0].body["data"]["cluster-id"], json!(b64(&id)));
    assert!(
        written(&calls, "pgset-record").is_empty(),
        "still new, left as it is"
    );
}

#[tokio::test]
async fn templates_mode_applies_no_shared_claim() {
    let mut s = spec().into_inner();
    s.storage.mode = StorageMode::Templates;
    let s = s.validated().unwrap();
    let (client, calls) = mock_client(deploy_handler(None));
    deploy(&client, &s, ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("persistentvolumeclaims") && c.is_write()),
        "claims are only read (the record's evidence)"
    );
    let sts = calls
        .iter()
        .find(|c| c.method == "PATCH" && c.path.ends_with("/statefulsets/pgset"))
        .unwrap();
    assert_eq!(
        sts.body["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
}

#[tokio::test]
async fn a_refused_statefulset_change_says_how_to_recover() {
    let mut apply = deploy_handler(Some(existing_secret()));
    let (client, _calls) = mock_client(move |call: &Call| {
        if call.method == "PATCH" && call.path.ends_with("/statefulsets/pgset") {
            return (
                422,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "reason": "Invalid", "code": 422,
                       "message": "StatefulSet.apps \"pgset\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"}),
            );
        }
        apply(call)
    });
    let err = deploy(&client, &spec(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("take the cluster down (scale to 0 and delete the StatefulSet; claims and data stay), then deploy again"),
        "{msg}"
    );
    let source = std::error::Error::source(&err)
        .expect("the API answer is kept")
        .to_string();
    assert!(source.contains("Forbidden"), "{source}");
}

// ---- rollout, scale and teardown ----

fn pod(ordinal: i32, ready: bool, revision: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("pgset-{ordinal}"), "namespace": NS,
            "labels": {"app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset",
                       "controller-revision-hash": revision}
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "reason": if ready { Value::Null } else { json!("ContainersNotReady") },
                            "message": if ready { Value::Null } else { json!("containers with unready status: [postgres]") }}],
            "containerStatuses": [{
                "name": "postgres", "ready": ready, "restartCount": 0, "image": "postgres:18",
                "imageID": "", "state": {"running": {}}
            }]
        }
    })
}

fn statefulset(desired: i32, created: i32, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "pgset", "namespace": NS, "generation": 1},
        "spec": {"replicas": desired, "serviceName": "pgset",
                 "selector": {"matchLabels": {"app.kubernetes.io/name": "pgset"}},
                 "template": {}},
        "status": {"observedGeneration": 1, "replicas": created, "readyReplicas": ready,
                   "updatedReplicas": created, "currentRevision": "r1", "updateRevision": "r1"}
    })
}

fn pod_list(pods: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": pods})
}

const STATEFULSETS: &str = "/apis/apps/v1/namespaces/default/statefulsets";
const PODS: &str = "/api/v1/namespaces/default/pods";

/// The StatefulSet and its pods at each step, a quarter second apart.
fn rollout_timeline(steps: Vec<(Value, Vec<Value>)>) -> Timeline {
    let (statefulsets, pods): (Vec<Vec<Value>>, Vec<Vec<Value>>) = steps
        .into_iter()
        .map(|(sts, pods)| (vec![sts], pods))
        .unzip();
    Timeline {
        collections: vec![
            Collection::new(STATEFULSETS, "StatefulSet", "apps/v1", statefulsets),
            Collection::new(PODS, "Pod", "v1", pods),
        ],
        step: Duration::from_millis(250),
    }
}

/// A StatefulSet growing to `target` members: one more created, then Ready, at each step.
fn growing_cluster(target: i32) -> Timeline {
    rollout_timeline(
        (0..=target)
            .map(|ready| {
                let created = (ready + 1).min(target);
                let pods = (0..created).map(|o| pod(o, o < ready, "r1")).collect();
                (statefulset(target, created, ready), pods)
            })
            .collect(),
    )
}

/// Answers the timeline's lists and watches; any other request fails the test.
fn only(timeline: Timeline) -> impl FnMut(&Call) -> Reply + Send + 'static {
    move |call: &Call| {
        timeline
            .answer(call)
            .unwrap_or_else(|| panic!("unexpected {} {}", call.method, call.path))
    }
}

/// Waits (60 s at most) for `replicas` members, collecting the progress events.
async fn rollout_with_events(
    client: &kube::Client,
    replicas: i32,
) -> (pgset_deploy::Result<RolloutReport>, Vec<RolloutEvent>) {
    let mut events = Vec::new();
    let report = wait_for_rollout(
        client,
        &spec(),
        replicas,
        Duration::from_secs(60),
        &mut |e: &RolloutEvent| events.push(e.clone()),
    )
    .await;
    (report, events)
}

/// `(member, step)` of each member event, in order.
fn steps(events: &[RolloutEvent]) -> Vec<(String, MemberStep)> {
    events
        .iter()
        .filter_map(|e| match e {
            RolloutEvent::Member(m) => Some((m.name.clone(), m.step.clone())),
            RolloutEvent::Waiting(_) => None,
        })
        .collect()
}

/// The members that became Ready, in order, with how long each took.
fn ready(events: &[RolloutEvent]) -> Vec<(String, Option<Duration>)> {
    events
        .iter()
        .filter_map(|e| match e {
            RolloutEvent::Member(m) if m.step == MemberStep::Ready => {
                Some((m.name.clone(), m.took))
            }
            _ => None,
        })
        .collect()
}

/// `path?query` of each call.
fn requests(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}?{}", c.method, c.path, c.query))
        .collect()
}

const POD_SELECTOR: &str =
    "labelSelector=app.kubernetes.io%2Fname%3Dpgset%2Capp.kubernetes.io%2Finstance%3Dpgset";
const STS_FIELDS: &str = "fieldSelector=metadata.name%3Dpgset";

#[tokio::test(start_paused = true)]
async fn rollout_reports_each_member_once_in_order() {
    let (client, calls) = mock_client_replying(only(growing_cluster(3)));
    let (report, events) = rollout_with_events(&client, 3).await;
    let report = report.unwrap();
    let names: Vec<&str> = report.members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["pgset-0", "pgset-1", "pgset-2"]);
    let ready = ready(&events);
    let ready_names: Vec<&str> = ready.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(ready_names, ["pgset-0", "pgset-1", "pgset-2"], "{events:?}");
    assert!(ready.iter().all(|(_, took)| took.is_some()), "{events:?}");
    // Before its turn a member is "not created yet", then running but not Ready; each step
    // is told once.
    let steps = steps(&events);
    assert!(
        steps.contains(&("pgset-2".into(), MemberStep::NotCreated)),
        "{steps:?}"
    );
    for (i, s) in steps.iter().enumerate() {
        assert!(!steps[..i].contains(s), "{s:?} told twice: {steps:?}");
    }
    let line = events
        .iter()
        .find(|e| matches!(e, RolloutEvent::Member(m) if m.step == MemberStep::Ready))
        .unwrap()
        .to_string();
    assert!(line.starts_with("pgset-0: Ready after "), "{line}");
    let calls = calls.lock().unwrap().clone();
    assert!(calls.iter().all(|c| !c.is_write()), "waiting never writes");
    // One list of each, then watches resuming from the last version seen (no polling).
    let sent = requests(&calls);
    let expect = |r: &str| assert!(sent.iter().any(|s| s == r), "{r} not in {sent:#?}");
    expect(&format!("GET {STATEFULSETS}?&{STS_FIELDS}&limit=500"));
    expect(&format!("GET {PODS}?&{POD_SELECTOR}&limit=500"));
    for version in 1..=3 {
        expect(&format!(
            "GET {STATEFULSETS}?&watch=true&timeoutSeconds=290&{STS_FIELDS}&allowWatchBookmarks=true&resourceVersion={version}"
        ));
        expect(&format!(
            "GET {PODS}?&watch=true&timeoutSeconds=290&{POD_SELECTOR}&allowWatchBookmarks=true&resourceVersion={version}"
        ));
    }
    assert_eq!(
        calls.iter().filter(|c| !is_watch(c)).count(),
        2,
        "two lists, the rest watches: {sent:#?}"
    );
}

/// `pod` with the agent's annotations.
fn annotated(mut pod: Value, annotations: Value) -> Value {
    pod["metadata"]["annotations"] = annotations;
    pod
}

#[tokio::test(start_paused = true)]
async fn a_copys_new_reading_is_told_under_the_same_step_and_a_malformed_one_is_dropped() {
    use pgset_spec::contract::{BaseBackupReading, MemberPhase};
    let reading = |bytes: u64, at_ms: u64| BaseBackupReading {
        bytes,
        total: Some(400_000_000),
        at_ms,
    };
    let copying = |value: &str| {
        annotated(
            pod(1, false, "r1"),
            json!({"pgset.io/phase": "base-backup", "pgset.io/base-backup": value}),
        )
    };
    let timeline = rollout_timeline(
        [
            copying(&reading(10_000_000, 1_000).to_annotation()),
            copying(&reading(70_000_000, 6_000).to_annotation()),
            // A poll that finds the same reading tells nothing new.
            copying(&reading(70_000_000, 6_000).to_annotation()),
            copying("{\"bytes\":\"lots\"}"),
            pod(1, true, "r1"),
        ]
        .into_iter()
        .map(|p| {
            let ready = if p["status"]["conditions"][0]["status"] == "True" {
                2
            } else {
                1
            };
            (statefulset(2, 2, ready), vec![pod(0, true, "r1"), p])
        })
        .collect(),
    );
    let (client, _) = mock_client_replying(only(timeline));
    let (report, events) = rollout_with_events(&client, 2).await;
    report.unwrap();
    let told: Vec<(MemberStep, Option<BaseBackupReading>)> = events
        .iter()
        .filter_map(|e| match e {
            RolloutEvent::Member(m) if m.name == "pgset-1" => Some((m.step.clone(), m.base_backup)),
            _ => None,
        })
        .collect();
    let copy = MemberStep::Agent(MemberPhase::BaseBackup);
    assert_eq!(
        told,
        [
            (copy.clone(), Some(reading(10_000_000, 1_000))),
            (copy.clone(), Some(reading(70_000_000, 6_000))),
            (copy, None),
            (MemberStep::Ready, None),
        ]
    );
}

/// A template change: the controller sees generation 2 only at step 2, then replaces the pods
/// (highest ordinal first) with revision r2.
#[tokio::test(start_paused = true)]
async fn rollout_after_a_template_change_waits_for_the_new_revision() {
    let timeline = (0..=6)
        .map(|stage| {
            let mut sts = statefulset(2, 2, 2);
            sts["metadata"]["generation"] = json!(2);
            if stage >= 2 {
                let updated = if stage >= 6 {
                    2
                } else if stage >= 4 {
                    1
                } else {
                    0
                };
                sts["status"]["observedGeneration"] = json!(2);
                sts["status"]["updateRevision"] = json!("r2");
                sts["status"]["updatedReplicas"] = json!(updated);
                sts["status"]["readyReplicas"] =
                    json!(if stage == 3 || stage == 5 { 1 } else { 2 });
            }
            let pods = match stage {
                0..=2 => vec![pod(0, true, "r1"), pod(1, true, "r1")],
                3 => vec![pod(0, true, "r1"), pod(1, false, "r2")],
                4 => vec![pod(0, true, "r1"), pod(1, true, "r2")],
                5 => vec![pod(0, false, "r2"), pod(1, true, "r2")],
                _ => vec![pod(0, true, "r2"), pod(1, true, "r2")],
            };
            (sts, pods)
        })
        .collect();
    let (client, _calls) = mock_client_replying(only(rollout_timeline(timeline)));
    let (report, events) = rollout_with_events(&client, 2).await;
    report.unwrap();
    let ready: Vec<String> = ready(&events).into_iter().map(|(n, _)| n).collect();
    assert_eq!(ready, ["pgset-1", "pgset-0"], "{events:?}");
    assert!(
        events.contains(&RolloutEvent::Waiting(
            "the StatefulSet controller has not seen the new spec yet".into()
        )),
        "{events:?}"
    );
    assert!(
        steps(&events).contains(&("pgset-1".into(), MemberStep::Outdated)),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn rollout_of_members_ready_already_says_so_and_returns_at_once() {
    let steps = vec![(
        statefulset(2, 2, 2),
        vec![pod(0, true, "r1"), pod(1, true, "r1")],
    )];
    let (client, _calls) = mock_client_replying(only(rollout_timeline(steps)));
    let started = tokio::time::Instant::now();
    let (report, events) = rollout_with_events(&client, 2).await;
    assert_eq!(report.unwrap().members.len(), 2);
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        ["pgset-0: Ready (already)", "pgset-1: Ready (already)"]
    );
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait at all");
}

#[tokio::test(start_paused = true)]
async fn rollout_timeout_names_the_pod_its_state_and_last_event() {
    let mut stuck = pod(1, false, "r1");
    stuck["status"]["containerStatuses"][0]["state"] = json!({
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
    });
    stuck["status"]["containerStatuses"][0]["restartCount"] = json!(4);
    let timeline = rollout_timeline(vec![(
        statefulset(2, 2, 1),
        vec![pod(0, true, "r1"), stuck],
    )]);
    let (client, calls) = mock_client_replying(move |call: &Call| {
        if let Some(reply) = timeline.answer(call) {
            return reply;
        }
        match call.path.as_str() {
            "/api/v1/namespaces/default/events" => {
                assert!(call.query.contains("fieldSelector="), "{}", call.query);
                Reply::Json(
                    200,
                    json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
                        {"metadata": {"name": "e1", "namespace": NS}, "involvedObject": {"name": "pgset-1"},
                         "type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container",
                         "lastTimestamp": "2026-01-01T00:00:02Z"},
                        {"metadata": {"name": "e0", "namespace": NS}, "involvedObject": {"name": "pgset-1"},
                         "type": "Normal", "reason": "Pulled", "message": "Container image already present",
                         "lastTimestamp": "2026-01-01T00:00:01Z"}
                    ]}),
                )
            }
            p => panic!("unexpected {} {p}", call.method),
        }
    });
    let err = wait_for_rollout(
        &client,
        &spec(),
        2,
        Duration::from_secs(30),
        &mut |_: &RolloutEvent| {},
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("timed out after 30s"), "{msg}");
    assert!(msg.contains("pod pgset-1"), "{msg}");
    assert!(msg.contains("CrashLoopBackOff"), "{msg}");
    assert!(msg.contains("4 restarts"), "{msg}");
    assert!(msg.contains("last event: Warning BackOff"), "{msg}");
    // The watches stay open for the whole 30 s: no request is repeated while nothing changes.
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 5, "{:#?}", requests(&calls));
}

#[tokio::test(start_paused = true)]
async fn scale_patches_only_replicas_through_the_scale_subresource_then_waits() {
    let timeline = growing_cluster(3);
    let mut scaled = false;
    let (client, calls) = mock_client_replying(move |call: &Call| {
        if call.path.ends_with("/statefulsets/pgset/scale") {
            scaled = true;
            return Reply::Json(
                200,
                json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                                 "metadata": {"name": "pgset", "namespace": NS},
                                 "spec": {"replicas": 3}}),
            );
        }
        if !scaled && call.path.ends_with("/statefulsets/pgset") {
            return Reply::Json(200, statefulset(2, 2, 2));
        }
        if call.path == LEADER {
            let (status, body) = not_found(&call.path);
            return Reply::Json(status, body);
        }
        timeline
            .answer(call)
            .unwrap_or_else(|| panic!("unexpected {} {}", call.method, call.path))
    });
    let outcome = scale(
        &client,
        &spec(),
        3,
        Some(Duration::from_secs(60)),
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    assert_eq!((outcome.from, outcome.to), (2, 3));
    assert_eq!(outcome.rollout.unwrap().members.len(), 3);
    let calls = calls.lock().unwrap().clone();
    let writes: Vec<&Call> = calls.iter().filter(|c| c.is_write()).collect();
    assert_eq!(writes.len(), 1, "only the scale patch writes");
    assert_eq!(
        writes[0].line(),
        "PATCH /apis/apps/v1/namespaces/default/statefulsets/pgset/scale"
    );
    assert_eq!(writes[0].body, json!({"spec": {"replicas": 3}}));
    assert_eq!(writes[0].content_type, "application/merge-patch+json");
    assert!(query_pairs(writes[0]).contains(&"fieldManager=pgset".to_string()));
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("persistentvolumeclaims"))
    );
}

#[tokio::test]
async fn scale_of_an_absent_statefulset_says_to_deploy_first_and_writes_nothing() {
    let (client, calls) = mock_client(|call: &Call| not_found(&call.path));
    let err = scale(&client, &spec(), 3, None, &mut |_: &str| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("deploy the cluster first"),
        "{err}"
    );
    assert!(calls.lock().unwrap().iter().all(|c| !c.is_write()));
}

/// A cluster with 2 running members that stop once scaled to 0, one claim per member and the
/// shared claim, pgset's PVs and one PV of another namespace.
/// The pods' watch reports the last pod gone a second after the scale to 0; the other watches
/// have nothing to report (what they watch is gone when they list).
fn running_cluster() -> impl FnMut(&Call) -> Reply + Send + 'static {
    running_cluster_led_by(None)
}

/// [`running_cluster`] with a leader Lease held by `master` (`None`: no leader Lease, a
/// cluster made before it existed); the pod named there carries `role=master`.
fn running_cluster_led_by(master: Option<i32>) -> impl FnMut(&Call) -> Reply + Send + 'static {
    let mut lease = master.map(|k| leader_lease(k, false));
    let mut scaled_to_zero = false;
    let mut pod_deletion_sent = false;
    let mut claims_deleted = false;
    let mut pvs_deleted = false;
    move |call: &Call| {
        let p = call.path.as_str();
        if is_watch(call) {
            if p.ends_with("/pods") && scaled_to_zero && !pod_deletion_sent {
                pod_deletion_sent = true;
                let mut gone = pod(0, true, "r1");
                gone["metadata"]["resourceVersion"] = json!("2");
                return Reply::After(
                    Duration::from_secs(1),
                    Box::new(Reply::Events(vec![
                        json!({"type": "DELETED", "object": gone}),
                        json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"resourceVersion": "2"}}}),
                    ])),
                );
            }
            return Reply::Hang;
        }
        let (status, body) = match (call.method.as_str(), p) {
            ("GET", LEADER) => match &lease {
                Some(l) => (200, l.clone()),
                None => not_found(p),
            },
            ("PATCH", LEADER) => match lease.as_mut() {
                Some(l) => {
                    patch_lease(l, &call.body);
                    (200, l.clone())
                }
                None => not_found(p),
            },
            ("GET", "/apis/apps/v1/namespaces/default/statefulsets/pgset") => {
                (200, statefulset(if scaled_to_zero { 0 } else { 2 }, 2, 2))
            }
            ("PATCH", "/apis/apps/v1/namespaces/default/statefulsets/pgset/scale") => {
                scaled_to_zero = true;
                (
                    200,
                    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                             "metadata": {"name": "pgset"}, "spec": {"replicas": 0}}),
                )
            }
            ("GET", "/api/v1/namespaces/default/pods") => {
                let pods = if scaled_to_zero {
                    vec![pod(0, true, "r1")]
                } else {
                    vec![labelled(0, master), labelled(1, master)]
                };
                (200, pod_list(pods))
            }
            ("GET", "/api/v1/namespaces/default/persistentvolumeclaims") => {
                let items = if claims_deleted {
                    vec![]
                } else {
                    vec![json!({"metadata": {"name": "pgset-pvc", "namespace": NS}})]
                };
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", "/api/v1/namespaces/default/persistentvolumeclaims/pgset-pvc") => {
                if claims_deleted {
                    not_found(p)
                } else {
                    (
                        200,
                        json!({"metadata": {"name": "pgset-pvc", "namespace": NS}}),
                    )
                }
            }
            ("DELETE", "/api/v1/namespaces/default/persistentvolumeclaims/pgset-pvc") => {
                claims_deleted = true;
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                )
            }
            ("GET", "/api/v1/persistentvolumes") => {
                assert!(call.query.contains("labelSelector="), "{}", call.query);
                let labels = json!({"app.kubernetes.io/managed-by": "pgset", "app.kubernetes.io/instance": "pgset"});
                let mut items = vec![
                    json!({"metadata": {"name": "pgset-other-0", "labels": labels},
                     "spec": {"claimRef": {"namespace": "other", "name": "data-pgset-0"}}}),
                ];
                if !pvs_deleted {
                    items.push(json!({"metadata": {"name": "pv1", "labels": labels},
                        "spec": {"claimRef": {"namespace": NS, "name": "pgset-pvc"}}}));
                }
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeList", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", "/api/v1/namespaces/default/configmaps/pgset-record") => (
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "pgset-record", "namespace": NS, "resourceVersion": "9",
                                    "finalizers": ["example.com/theirs", "pgset.io/record"]},
                       "data": {"state": "data", "systemIdentifier": "73", "clusterId": "c1"}}),
            ),
            ("PATCH", "/api/v1/namespaces/default/configmaps/pgset-record") => {
                (200, call.body.clone())
            }
            ("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases") => {
                assert!(call.query.contains("labelSelector="), "{}", call.query);
                let labels = json!({"app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset"});
                let items: Vec<Value> = [
                    "pgset-leader",
                    "pgset-0-member",
                    "pgset-1-member",
                    "pgset-backup-lock",
                ]
                .iter()
                .map(|n| json!({"metadata": {"name": n, "namespace": NS, "labels": labels}}))
                .collect();
                (
                    200,
                    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", "/api/v1/namespaces/default/configmaps/pgset-mount-probe") => (
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "pgset-mount-probe", "namespace": NS,
                                    "labels": {"app.kubernetes.io/component": "mount-probe",
                                               "app.kubernetes.io/managed-by": "pgset"}},
                       "data": {}}),
            ),
            ("DELETE", "/api/v1/persistentvolumes/pv1") => {
                pvs_deleted = true;
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                )
            }
            ("DELETE", _) => (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ),
            (m, p) => panic!("unexpected {m} {p}"),
        };
        Reply::Json(status, body)
    }
}

async fn down_quietly(client: &kube::Client, purge: Purge) -> pgset_deploy::Result<()> {
    down(
        client,
        &spec(),
        purge,
        Duration::from_secs(60),
        &mut |_: &str| {},
    )
    .await
}

fn deletes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| {
            c.path
                .rsplit_once("/namespaces/default/")
                .map_or(c.path.clone(), |(_, r)| r.to_string())
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn down_scales_to_zero_waits_then_deletes_in_reverse_and_keeps_data() {
    let (client, calls) = mock_client_replying(running_cluster());
    let mut lines = Vec::new();
    down(
        &client,
        &spec(),
        Purge::Keep,
        Duration::from_secs(60),
        &mut |l: &str| lines.push(l.to_string()),
    )
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    let scale_at = calls
        .iter()
        .position(|c| c.path.ends_with("/scale"))
        .unwrap();
    let first_delete = calls.iter().position(|c| c.method == "DELETE").unwrap();
    let last_pod_list = calls
        .iter()
        .rposition(|c| c.path.ends_with("/pods"))
        .unwrap();
    assert!(
        scale_at < last_pod_list && last_pod_list < first_delete,
        "scale, wait, then delete"
    );
    // The wait is a watch of the cluster's pods, resumed from the listing's version.
    let sent = requests(&calls);
    let pod_watch = format!(
        "GET {PODS}?&watch=true&timeoutSeconds=290&{POD_SELECTOR}&allowWatchBookmarks=true&resourceVersion=1"
    );
    let watched_at = sent
        .iter()
        .position(|r| *r == pod_watch)
        .unwrap_or_else(|| panic!("{pod_watch} not in {sent:#?}"));
    assert!(scale_at < watched_at && watched_at < first_delete);
    assert!(
        lines.contains(&"all pods stopped after 1.0s".to_string()),
        "{lines:?}"
    );
    assert_eq!(
        deletes(&calls),
        [
            "statefulsets/pgset",
            "services/pgset-replica",
            "services/pgset-master",
            "services/pgset",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/pgset-default-pgset-members",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/pgset-default-pgset-members",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/pgset-drill-default-pgset-isolated",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/pgset-drill-default-pgset-isolated",
            "cronjobs/pgset-cert-renewal",
            "rolebindings/pgset-cert-renewal",
            "roles/pgset-cert-renewal",
            "serviceaccounts/pgset-cert-renewal",
            "rolebindings/pgset-agent",
            "roles/pgset-agent",
            "serviceaccounts/pgset-sa",
        ]
    );
    assert!(
        lines
            .contains(&"deleted ValidatingAdmissionPolicy pgset-default-pgset-members".to_string()),
        "member isolation holds no data: down deletes it without --purge: {lines:?}"
    );
    assert!(!calls.iter().any(|c| c.method == "DELETE"
        && (c.path.contains("persistentvolume")
            || c.path.contains("secrets")
            || c.path.contains("configmaps"))));
    assert!(
        !calls
            .iter()
            .any(|c| c.path.contains("configmaps") && c.is_write()),
        "down keeps the record and its finalizer"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("kept PersistentVolumeClaim pgset-pvc")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("kept Secret pgset-secret")),
        "{lines:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn down_purge_deletes_claims_this_clusters_volumes_the_secret_its_leases_and_the_probes_proof()
 {
    let (client, calls) = mock_client_replying(running_cluster());
    down_quietly(&client, Purge::Everything).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    let d = deletes(&calls);
    assert_eq!(
        d,
        [
            "statefulsets/pgset",
            "persistentvolumeclaims/pgset-pvc",
            "/api/v1/persistentvolumes/pv1",
            "services/pgset-replica",
            "services/pgset-master",
            "services/pgset",
            "secrets/pgset-secret",
            "secrets/pgset-tls-replication",
            "secrets/pgset-tls-server",
            "secrets/pgset-ca",
            "configmaps/pgset-ca-cert",
            "configmaps/pgset-record",
            "leases/pgset-0-member",
            "leases/pgset-1-member",
            "leases/pgset-leader",
            "configmaps/pgset-mount-probe",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/pgset-default-pgset-members",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/pgset-default-pgset-members",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/pgset-drill-default-pgset-isolated",
            "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/pgset-drill-default-pgset-isolated",
            "cronjobs/pgset-cert-renewal",
            "rolebindings/pgset-cert-renewal",
            "roles/pgset-cert-renewal",
            "serviceaccounts/pgset-cert-renewal",
            "rolebindings/pgset-agent",
            "roles/pgset-agent",
            "serviceaccounts/pgset-sa",
        ]
    );
    assert!(
        !d.iter().any(|p| p.contains("pgset-other-0")),
        "another namespace's volume"
    );
    // The record's finalizer is removed (pgset's only, on the version read) before its delete.
    let record = "/api/v1/namespaces/default/configmaps/pgset-record";
    let release = calls
        .iter()
        .position(|c| c.method == "PATCH" && c.path == record)
        .expect("the finalizer is removed");
    let delete = calls
        .iter()
        .position(|c| c.method == "DELETE" && c.path == record)
        .unwrap();
    assert!(release < delete);
    assert_eq!(calls[release].content_type, "application/merge-patch+json");
    assert_eq!(
        calls[release].body,
        json!({"metadata": {"finalizers": ["example.com/theirs"], "resourceVersion": "9"}})
    );
}

#[tokio::test(start_paused = true)]
async fn down_of_an_absent_cluster_changes_nothing_and_succeeds() {
    let (client, calls) = mock_client_replying(|call: &Call| match call.method.as_str() {
        _ if is_watch(call) => Reply::Hang,
        "GET" if call.path.ends_with("/pods") => Reply::Json(200, pod_list(vec![])),
        "GET" if call.path.ends_with("/persistentvolumeclaims") => Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {"resourceVersion": "1"}, "items": []}),
        ),
        _ => {
            let (status, body) = not_found(&call.path);
            Reply::Json(status, body)
        }
    });
    down_quietly(&client, Purge::Keep).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(
        !calls
            .iter()
            .any(|c| c.method == "PATCH" || c.method == "POST")
    );
}

/// A PersistentVolume as the API server returns it.
fn stored_pv(name: &str, claim: Option<(&str, &str, &str)>, phase: &str) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "resourceVersion": "5"},
        "spec": {"nfs": {"server": "10.0.0.5", "path": "/nfsfileshare"}},
        "status": {"phase": phase}
    });
    if let Some((ns, claim, uid)) = claim {
        v["spec"]["claimRef"] = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": ns, "name": claim, "uid": uid, "resourceVersion": "9"
        });
    }
    v
}

/// The volume pgset wants: reserved for `default/pgset-pvc`.
fn wanted_pv(name: &str) -> k8s_openapi::api::core::v1::PersistentVolume {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "nfs": {"server": "10.0.0.5", "path": "/nfsfileshare"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": "default", "name": "pgset-pvc"}
        }
    }))
    .unwrap()
}

/// A handler serving `store` for GETs of volumes and echoing applies.
fn volume_handler(store: HashMap<String, Value>) -> impl FnMut(&Call) -> (u16, Value) + Send {
    move |call: &Call| match call.method.as_str() {
        "GET" => store
            .get(call.path.trim_start_matches("/api/v1/persistentvolumes/"))
            .map_or_else(|| not_found(&call.path), |v| (200, v.clone())),
        "PATCH" => echo_with_version(call, "77"),
        m => panic!("unexpected {m} {}", call.path),
    }
}

#[tokio::test]
async fn volumes_another_claim_holds_stop_every_volume_before_any_write() {
    let store = HashMap::from([
        ("pv1".to_string(), stored_pv("pv1", None, "Available")),
        (
            "pv2".to_string(),
            stored_pv("pv2", Some(("staging", "pgset-pvc", "u-2")), "Bound"),
        ),
    ]);
    let (client, calls) = mock_client(volume_handler(store));
    let wanted = [wanted_pv("pv1"), wanted_pv("pv2"), wanted_pv("pv3")];
    let err = pgset_deploy::storage::apply_volumes(&client, &wanted, ApplyMode::Apply, &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pv2") && err.contains("staging/pgset-pvc") && err.contains("changed nothing"),
        "{err}"
    );
    let lines: Vec<String> = calls.lock().unwrap().iter().map(Call::line).collect();
    assert_eq!(
        lines,
        [
            "GET /api/v1/persistentvolumes/pv1",
            "GET /api/v1/persistentvolumes/pv2",
            "GET /api/v1/persistentvolumes/pv3",
        ],
        "a refusal must write nothing"
    );
}

#[tokio::test]
async fn a_bound_volume_keeps_its_binding_a_free_one_gets_the_claim_ref() {
    let store = HashMap::from([
        (
            "pv1".to_string(),
            stored_pv("pv1", Some(("default", "pgset-pvc", "u-1")), "Bound"),
        ),
        ("pv2".to_string(), stored_pv("pv2", None, "Available")),
    ]);
    let (client, calls) = mock_client(volume_handler(store));
    let wanted = [wanted_pv("pv1"), wanted_pv("pv2"), wanted_pv("pv3")];
    let mut lines = Vec::new();
    let outcome =
        pgset_deploy::storage::apply_volumes(&client, &wanted, ApplyMode::Apply, &mut |l: &str| {
            lines.push(l.to_string())
        })
        .await
        .unwrap();
    assert_eq!(outcome.unchanged, 1);
    assert_eq!(
        outcome.changed,
        ["PersistentVolume/pv2", "PersistentVolume/pv3"]
    );
    assert!(
        lines[0].starts_with("kept PersistentVolume pv1 (Bound, claim default/pgset-pvc)"),
        "{lines:?}"
    );
    let calls = calls.lock().unwrap();
    let writes: Vec<&Call> = calls.iter().filter(|c| c.is_write()).collect();
    let paths: Vec<&str> = writes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/persistentvolumes/pv2",
            "/api/v1/persistentvolumes/pv3"
        ]
    );
    for w in writes {
        assert_eq!(w.content_type, "application/apply-patch+yaml");
        assert!(
            query_pairs(w).contains(&"fieldManager=pgset".to_string()),
            "{}",
            w.query
        );
        assert_eq!(
            w.body["spec"]["claimRef"],
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "namespace": "default", "name": "pgset-pvc"})
        );
    }
}

/// A handler for a cluster's storage: `volumes` as stored, no claim yet; the claim's apply
/// answered with `claim_status` (200 echoes it).
fn storage_handler(
    volumes: HashMap<String, Value>,
    claim_status: u16,
) -> impl FnMut(&Call) -> (u16, Value) + Send {
    let mut pvs = volume_handler(volumes);
    move |call: &Call| {
        if !call.path.contains("/persistentvolumeclaims/") {
            return pvs(call);
        }
        match (call.method.as_str(), claim_status) {
            ("GET", _) => not_found(&call.path),
            ("PATCH", 200) => echo_with_version(call, "80"),
            ("PATCH", code) => (
                code,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "spec is immutable", "reason": "Invalid", "code": code}),
            ),
            (m, _) => panic!("unexpected {m} {}", call.path),
        }
    }
}

#[tokio::test]
async fn storage_applies_every_volume_then_the_shared_claim_in_its_namespace() {
    let (client, calls) = mock_client(storage_handler(HashMap::new(), 200));
    let spec = spec();
    let objects = storage_objects(&spec, "10.0.0.5");
    let mut lines = Vec::new();
    let outcome = apply_storage(
        &client,
        &spec,
        &objects,
        ApplyMode::Apply,
        &mut |l: &str| lines.push(l.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(
        outcome.changed,
        [
            "PersistentVolume/pv1",
            "PersistentVolume/pv2",
            "PersistentVolume/pv3",
            "PersistentVolumeClaim/pgset-pvc"
        ]
    );
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[3].starts_with("created PersistentVolumeClaim pgset-pvc"),
        "{lines:?}"
    );
    let lines: Vec<String> = calls.lock().unwrap().iter().map(Call::line).collect();
    assert_eq!(
        lines,
        [
            "GET /api/v1/persistentvolumes/pv1",
            "GET /api/v1/persistentvolumes/pv2",
            "GET /api/v1/persistentvolumes/pv3",
            // Judged, then each applied (read for its version, then patched).
            "GET /api/v1/persistentvolumes/pv1",
            "PATCH /api/v1/persistentvolumes/pv1",
            "GET /api/v1/persistentvolumes/pv2",
            "PATCH /api/v1/persistentvolumes/pv2",
            "GET /api/v1/persistentvolumes/pv3",
            "PATCH /api/v1/persistentvolumes/pv3",
            "GET /api/v1/namespaces/default/persistentvolumeclaims/pgset-pvc",
            "PATCH /api/v1/namespaces/default/persistentvolumeclaims/pgset-pvc",
        ]
    );
}

#[tokio::test]
async fn storage_refused_volumes_write_nothing_and_a_refused_claim_is_named() {
    let spec = spec();
    let objects = storage_objects(&spec, "10.0.0.5");
    let held = HashMap::from([(
        "pv2".to_string(),
        stored_pv("pv2", Some(("staging", "pgset-pvc", "u-2")), "Bound"),
    )]);
    let (client, calls) = mock_client(storage_handler(held, 200));
    let err = apply_storage(&client, &spec, &objects, ApplyMode::Apply, &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "apply the PersistentVolumes of cluster default/pgset"
    );
    assert!(
        matches!(
            &err,
            StorageError::Volumes {
                source: pgset_deploy::Error::VolumesHeldElsewhere { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !calls.lock().unwrap().iter().any(Call::is_write),
        "a refusal must write nothing"
    );

    let (client, _) = mock_client(storage_handler(HashMap::new(), 422));
    let err = apply_storage(&client, &spec, &objects, ApplyMode::Apply, &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "apply PersistentVolumeClaim pgset-pvc");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("spec is immutable"), "{cause}");
}

/// A mock API whose first watch of the pods ends in 410 Gone (its version expired): the first
/// LIST answers `first` at version 1, every later one no pod at version 5; later watches hang.
fn pods_gone_after_a_410(first: Vec<Value>) -> (kube::Client, Calls) {
    let mut lists = 0;
    let mut watches = 0;
    mock_client_replying(move |call: &Call| {
        assert_eq!(call.path, PODS);
        if is_watch(call) {
            watches += 1;
            if watches > 1 {
                return Reply::Hang;
            }
            return Reply::Events(vec![json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1 (5)", "reason": "Expired", "code": 410}})]);
        }
        lists += 1;
        let (pods, version) = if lists == 1 {
            (first.clone(), "1")
        } else {
            (vec![], "5")
        };
        Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": version}, "items": pods}),
        )
    })
}

/// A watch whose version the API server no longer has (410 Gone, after a long wait) is listed
/// again by the watcher: the wait goes on instead of failing.
#[tokio::test(start_paused = true)]
async fn an_expired_watch_lists_again_and_the_wait_goes_on() {
    let (client, calls) = pods_gone_after_a_410(vec![pod(0, true, "r1")]);
    let mut listing = Listing::default();
    let waiting = until_listing(
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, NS),
        watcher::Config::default(),
        &mut listing,
        |pods| pods.is_empty(),
    );
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("done before the timeout")
        .expect("a 410 is not an error of the wait");
    let sent = requests(&calls.lock().unwrap());
    assert_eq!(
        sent,
        [
            format!("GET {PODS}?&limit=500"),
            format!(
                "GET {PODS}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1"
            ),
            format!("GET {PODS}?&limit=500"),
        ]
    );
}

/// One object awaited by name (a pod's removal) lists again after a 410 Gone, like a set does.
#[tokio::test]
async fn an_expired_watch_of_one_object_lists_again_and_its_removal_is_seen() {
    let (client, calls) = pods_gone_after_a_410(vec![pod(3, false, "r1")]);
    let waiting = until_object(
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, NS),
        "pgset-3",
        |pod: Option<&k8s_openapi::api::core::v1::Pod>| pod.is_none(),
    );
    let found = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("done before the timeout")
        .expect("a 410 is not an error of the wait");
    assert!(found.is_none(), "{found:?}");
    let by_name = "fieldSelector=metadata.name%3Dpgset-3";
    assert_eq!(
        requests(&calls.lock().unwrap()),
        [
            format!("GET {PODS}?&{by_name}&limit=500"),
            format!(
                "GET {PODS}?&watch=true&timeoutSeconds=290&{by_name}&allowWatchBookmarks=true&resourceVersion=1"
            ),
            format!("GET {PODS}?&{by_name}&limit=500"),
        ]
    );
}

const LEADER: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/pgset-leader";

/// The leader Lease held by `pgset-<master>`, at resourceVersion 5.
fn leader_lease(master: i32, paused: bool) -> Value {
    let mut notes = json!({"pgset.io/leader-member": format!("pgset-{master}"),
                           "pgset.io/leader-timeline": "2"});
    if paused {
        notes["pgset.io/failover"] = json!("paused");
    }
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "pgset-leader", "namespace": NS, "resourceVersion": "5",
                        "annotations": notes},
           "spec": {"holderIdentity": format!("uid-{master}"), "leaseDurationSeconds": 15}})
}

/// Applies a merge patch of the Lease's annotations as the API server does: only on the
/// resourceVersion it carries, a null removes the key, and the version moves on.
fn patch_lease(lease: &mut Value, patch: &Value) {
    assert_eq!(
        patch["metadata"]["resourceVersion"], lease["metadata"]["resourceVersion"],
        "a write of the leader Lease carries the version read"
    );
    let notes = lease["metadata"]["annotations"].as_object_mut().unwrap();
    for (k, v) in patch["metadata"]["annotations"].as_object().unwrap() {
        match v {
            Value::Null => {
                notes.remove(k);
            }
            v => {
                notes.insert(k.clone(), v.clone());
            }
        }
    }
    let next: u64 = lease["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    lease["metadata"]["resourceVersion"] = json!((next + 1).to_string());
}

/// A Ready pod with its UID and the role label the leader Lease (or, with none, ordinal 0) gives.
fn labelled(ordinal: i32, master: Option<i32>) -> Value {
    let mut p = pod(ordinal, true, "r1");
    let role = if master.unwrap_or(0) == ordinal {
        "master"
    } else {
        "replica"
    };
    p["metadata"]["labels"]["role"] = json!(role);
    p["metadata"]["uid"] = json!(format!("uid-{ordinal}"));
    p
}

fn lease_writes(calls: &[Call]) -> Vec<Value> {
    calls
        .iter()
        .filter(|c| c.path == LEADER && c.is_write())
        .map(|c| c.body["metadata"]["annotations"].clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn down_pauses_failover_on_the_leader_lease_before_the_members_stop_and_leaves_it_paused() {
    let (client, calls) = mock_client_replying(running_cluster_led_by(Some(1)));
    let mut lines = Vec::new();
    down(
        &client,
        &spec(),
        Purge::Keep,
        Duration::from_secs(60),
        &mut |l: &str| lines.push(l.to_string()),
    )
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    let paused_at = calls
        .iter()
        .position(|c| c.path == LEADER && c.is_write())
        .expect("the pause is written");
    let scale_at = calls
        .iter()
        .position(|c| c.path.ends_with("/scale"))
        .unwrap();
    assert!(paused_at < scale_at, "paused before the members stop");
    assert_eq!(
        calls[paused_at].content_type,
        "application/merge-patch+json"
    );
    assert_eq!(
        lease_writes(&calls),
        [json!({"pgset.io/failover": "paused"})],
        "paused once, never removed: the cluster is left at 0 members"
    );
    assert!(
        lines.contains(&"the master is pgset-1, not ordinal 0: the StatefulSet stops the highest ordinals first, so the members above it stop before it and those below it after it".to_string()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("paused failover on Lease pgset-leader")
                && l.contains("stays paused")),
        "{lines:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn down_of_a_cluster_without_a_leader_lease_writes_no_lease_and_names_no_other_master() {
    let (client, calls) = mock_client_replying(running_cluster());
    let mut lines = Vec::new();
    down(
        &client,
        &spec(),
        Purge::Keep,
        Duration::from_secs(60),
        &mut |l: &str| lines.push(l.to_string()),
    )
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(lease_writes(&calls).is_empty());
    assert!(calls.iter().any(|c| c.path == LEADER), "the Lease was read");
    assert!(
        !lines.iter().any(|l| l.contains("the master is")),
        "{lines:?}"
    );
}

/// Three members shrinking to two, led by `pgset-<master>` when `master` is given.
fn shrinking_cluster(master: Option<i32>) -> impl FnMut(&Call) -> Reply + Send + 'static {
    shrinking_cluster_renewed(master, 0)
}

/// [`shrinking_cluster`] whose holder renews the leader Lease under the first `renewals`
/// writes of it, so those writes, made on the version read before, get 409 Conflict.
fn shrinking_cluster_renewed(
    master: Option<i32>,
    mut renewals: usize,
) -> impl FnMut(&Call) -> Reply + Send + 'static {
    let steps = vec![
        (
            statefulset(3, 3, 3),
            (0..3).map(|o| labelled(o, master)).collect(),
        ),
        (
            statefulset(2, 2, 2),
            (0..2).map(|o| labelled(o, master)).collect(),
        ),
    ];
    let timeline = rollout_timeline(steps);
    let mut lease = master.map(|k| leader_lease(k, false));
    let mut scaled = false;
    move |call: &Call| {
        let p = call.path.as_str();
        match (call.method.as_str(), p) {
            ("GET", LEADER) => {
                let (status, body) = lease.clone().map_or_else(|| not_found(p), |l| (200, l));
                Reply::Json(status, body)
            }
            ("PATCH", LEADER) if renewals > 0 => {
                renewals -= 1;
                let l = lease.as_mut().expect("no Lease to patch");
                let next: u64 = l["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                l["metadata"]["resourceVersion"] = json!((next + 1).to_string());
                Reply::Json(
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "the object has been modified", "reason": "Conflict", "code": 409}),
                )
            }
            ("PATCH", LEADER) => {
                let l = lease.as_mut().expect("no Lease to patch");
                patch_lease(l, &call.body);
                Reply::Json(200, l.clone())
            }
            ("PATCH", _) if p.ends_with("/statefulsets/pgset/scale") => {
                scaled = true;
                Reply::Json(
                    200,
                    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                           "metadata": {"name": "pgset", "namespace": NS},
                           "spec": {"replicas": 2}}),
                )
            }
            ("GET", _) if !is_watch(call) && p.ends_with("/statefulsets/pgset") => {
                Reply::Json(200, statefulset(if scaled { 2 } else { 3 }, 3, 3))
            }
            _ => timeline
                .answer(call)
                .unwrap_or_else(|| panic!("unexpected {} {}", call.method, call.path)),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn scale_that_would_remove_the_master_is_refused_before_any_change() {
    let (client, calls) = mock_client_replying(shrinking_cluster(Some(2)));
    let err = scale(&client, &spec(), 2, None, &mut |_: &str| {})
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "scaling to 2 member(s) would remove the master pgset-2 (ordinal 2): move the master to a member below 2 first; nothing was changed"
    );
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls.iter().all(|c| !c.is_write()),
        "{:#?}",
        requests(&calls)
    );
}

#[tokio::test(start_paused = true)]
async fn scale_down_not_past_the_master_pauses_failover_then_removes_the_pause_once_waited() {
    let (client, calls) = mock_client_replying(shrinking_cluster(Some(1)));
    let mut lines = Vec::new();
    let outcome = scale(
        &client,
        &spec(),
        2,
        Some(Duration::from_secs(60)),
        &mut |l: &str| lines.push(l.to_string()),
    )
    .await
    .unwrap();
    assert_eq!((outcome.from, outcome.to), (3, 2));
    let calls = calls.lock().unwrap().clone();
    let writes: Vec<String> = calls
        .iter()
        .filter(|c| c.is_write())
        .map(Call::line)
        .collect();
    assert_eq!(
        writes,
        [
            format!("PATCH {LEADER}"),
            "PATCH /apis/apps/v1/namespaces/default/statefulsets/pgset/scale".to_string(),
            format!("PATCH {LEADER}"),
        ],
        "pause, scale, resume"
    );
    assert_eq!(
        lease_writes(&calls),
        [
            json!({"pgset.io/failover": "paused"}),
            json!({"pgset.io/failover": null})
        ]
    );
    assert!(
        lines.contains(&"removed the failover pause on Lease pgset-leader".to_string()),
        "{lines:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn scale_down_without_waiting_leaves_the_pause_and_says_how_to_resume() {
    let (client, calls) = mock_client_replying(shrinking_cluster(Some(0)));
    let mut lines = Vec::new();
    scale(&client, &spec(), 2, None, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        lease_writes(&calls),
        [json!({"pgset.io/failover": "paused"})]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("failover stays paused on Lease pgset-leader")),
        "{lines:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pause_that_races_the_holders_renewal_is_written_again_on_the_new_version() {
    let (client, calls) = mock_client_replying(shrinking_cluster_renewed(Some(0), 1));
    scale(&client, &spec(), 2, None, &mut |_: &str| {})
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    let versions: Vec<Value> = calls
        .iter()
        .filter(|c| c.path == LEADER && c.is_write())
        .map(|c| c.body["metadata"]["resourceVersion"].clone())
        .collect();
    assert_eq!(
        versions,
        [json!("5"), json!("6")],
        "refused on the version read, written on the renewed one"
    );
}

/// The leader Lease an API server stand-in holds (`None`: no Lease).
type SharedLease = std::sync::Arc<std::sync::Mutex<Option<Value>>>;

/// An API server holding only the leader Lease (`None`: no Lease), shared so a test reads it
/// after; a merge patch applies as [`patch_lease`] does.
fn lease_only(
    lease: Option<Value>,
) -> (
    impl FnMut(&Call) -> (u16, Value) + Send + 'static,
    SharedLease,
) {
    lease_renewed_under(lease, 0)
}

/// [`lease_only`] whose holder renews the Lease under the first `renewals` writes of it, so
/// those writes, made on the version read before, get 409 Conflict.
fn lease_renewed_under(
    lease: Option<Value>,
    mut renewals: usize,
) -> (
    impl FnMut(&Call) -> (u16, Value) + Send + 'static,
    SharedLease,
) {
    let stored = std::sync::Arc::new(std::sync::Mutex::new(lease));
    let held = stored.clone();
    let handler = move |call: &Call| {
        let mut lease = held.lock().unwrap();
        match (call.method.as_str(), call.path.as_str(), lease.as_mut()) {
            ("GET", LEADER, Some(l)) => (200, l.clone()),
            ("PATCH", LEADER, Some(l)) if renewals > 0 => {
                renewals -= 1;
                let next: u64 = l["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                l["metadata"]["resourceVersion"] = json!((next + 1).to_string());
                (
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "the object has been modified", "reason": "Conflict", "code": 409}),
                )
            }
            ("PATCH", LEADER, Some(l)) => {
                patch_lease(l, &call.body);
                (200, l.clone())
            }
            (_, p, None) if p == LEADER => not_found(p),
            (m, p, _) => panic!("unexpected {m} {p}"),
        }
    };
    (handler, stored)
}

/// The leader Lease paused by `down`, with another annotation someone else wrote.
fn paused_lease_with_other_notes() -> Value {
    let mut l = leader_lease(1, true);
    l["metadata"]["annotations"]["example.com/theirs"] = json!("kept");
    l
}

/// A waited rollout in which every member of `spec` became Ready.
fn all_ready(spec: &ValidSpec) -> RolloutReport {
    RolloutReport {
        members: (0..spec.replicas)
            .map(|k| (spec.pod_name(k), Some(Duration::from_secs(3))))
            .collect(),
        total: Duration::from_secs(9),
        timeline: Default::default(),
    }
}

#[tokio::test]
async fn a_waited_deploy_whose_members_all_became_ready_lifts_the_failover_pause_and_keeps_the_other_annotations()
 {
    let (handler, stored) = lease_only(Some(paused_lease_with_other_notes()));
    let (client, calls) = mock_client(handler);
    let spec = spec();
    let mut lines = Vec::new();
    let done = lift_failover_pause(&client, &spec, Some(&all_ready(&spec)), &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    assert_eq!(done, PauseAfterDeploy::Lifted);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(Call::line).collect::<Vec<_>>(),
        [format!("GET {LEADER}"), format!("PATCH {LEADER}")]
    );
    assert_eq!(calls[1].content_type, "application/merge-patch+json");
    assert_eq!(
        calls[1].body,
        json!({"metadata": {"resourceVersion": "5", "annotations": {"pgset.io/failover": null}}}),
        "one annotation removed, on the version read"
    );
    let lease = stored.lock().unwrap().clone().unwrap();
    assert_eq!(
        lease["metadata"]["annotations"],
        json!({"pgset.io/leader-member": "pgset-1", "pgset.io/leader-timeline": "2",
               "example.com/theirs": "kept"})
    );
    assert_eq!(
        lines,
        [format!(
            "removed the failover pause on Lease pgset-leader: all {} members are Ready",
            spec.replicas
        )]
    );
}

#[tokio::test]
async fn a_deploy_that_did_not_wait_leaves_the_failover_pause_and_says_how_to_lift_it() {
    let (handler, stored) = lease_only(Some(paused_lease_with_other_notes()));
    let (client, calls) = mock_client(handler);
    let mut lines = Vec::new();
    let done = lift_failover_pause(&client, &spec(), None, &mut |l: &str| {
        lines.push(l.to_string())
    })
    .await
    .unwrap();
    assert_eq!(done, PauseAfterDeploy::Kept);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(Call::line).collect::<Vec<_>>(),
        [format!("GET {LEADER}")],
        "nothing written"
    );
    assert_eq!(
        stored.lock().unwrap().clone().unwrap(),
        paused_lease_with_other_notes()
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("failover stays paused on Lease pgset-leader: run `")
            && lines[0].ends_with(" deploy` without --no-wait to wait for the members and lift it"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_rollout_that_did_not_see_every_member_ready_keeps_the_failover_pause() {
    let (handler, _) = lease_only(Some(leader_lease(0, true)));
    let (client, calls) = mock_client(handler);
    let spec = spec();
    let mut partial = all_ready(&spec);
    partial.members.pop();
    let done = lift_failover_pause(&client, &spec, Some(&partial), &mut |_: &str| {})
        .await
        .unwrap();
    assert_eq!(done, PauseAfterDeploy::Kept);
    assert!(lease_writes(&calls.lock().unwrap()).is_empty());
}

#[tokio::test]
async fn a_deploy_over_a_lease_without_the_pause_or_without_a_lease_writes_nothing() {
    let spec = spec();
    for lease in [Some(leader_lease(0, false)), None] {
        for rollout in [Some(all_ready(&spec)), None] {
            let (handler, _) = lease_only(lease.clone());
            let (client, calls) = mock_client(handler);
            let mut lines = Vec::new();
            let done = lift_failover_pause(&client, &spec, rollout.as_ref(), &mut |l: &str| {
                lines.push(l.to_string())
            })
            .await
            .unwrap();
            assert_eq!(done, PauseAfterDeploy::NotPaused);
            let calls = calls.lock().unwrap().clone();
            assert_eq!(
                calls.iter().map(Call::line).collect::<Vec<_>>(),
                [format!("GET {LEADER}")]
            );
            assert!(lines.is_empty(), "{lines:?}");
        }
    }
}

#[tokio::test]
async fn lifting_a_pause_that_races_the_holders_renewal_is_written_again_on_the_new_version() {
    let (handler, stored) = lease_renewed_under(Some(leader_lease(2, true)), 1);
    let (client, calls) = mock_client(handler);
    let spec = spec();
    let done = lift_failover_pause(&client, &spec, Some(&all_ready(&spec)), &mut |_: &str| {})
        .await
        .unwrap();
    assert_eq!(done, PauseAfterDeploy::Lifted);
    let versions: Vec<Value> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.path == LEADER && c.is_write())
        .map(|c| c.body["metadata"]["resourceVersion"].clone())
        .collect();
    assert_eq!(
        versions,
        [json!("5"), json!("6")],
        "refused on the version read, written on the renewed one"
    );
    let lease = stored.lock().unwrap().clone().unwrap();
    assert_eq!(
        lease["metadata"]["annotations"].get("pgset.io/failover"),
        None
    );
}

#[tokio::test]
async fn a_plain_cluster_is_not_switched_to_tls_in_place_and_nothing_is_written() {
    // A StatefulSet deployed without TLS meets a spec with the default tls.mode auto.
    let mut plain = spec().into_inner();
    plain.tls.mode = pgset_spec::TlsMode::Off;
    let running = serde_json::to_value(pgset_deploy::statefulset::statefulset(&plain)).unwrap();
    let (client, calls) = mock_client(deploy_handler_over(vec![(
        format!("/apis/apps/v1/namespaces/{NS}/statefulsets/pgset"),
        running,
    )]));
    let err = deploy(&client, &spec(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("runs without TLS") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!calls.lock().unwrap().iter().any(Call::is_write));
    // Kept plain on purpose: the deploy goes on.
    deploy(
        &client,
        &plain.validated().unwrap(),
        ApplyMode::Apply,
        &mut |_: &str| {},
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_renewal_job_an_auto_deploy_left_is_removed_by_a_deploy_without_auto() {
    let (client, calls) = mock_client(deploy_handler(None));
    deploy(&client, &spec(), ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    calls.lock().unwrap().clear();
    let mut provided = spec().into_inner();
    provided.tls.mode = pgset_spec::TlsMode::Off;
    let mut lines = Vec::new();
    // Refused (members run with TLS), but only after judging: nothing is written.
    let _ = deploy(
        &client,
        &provided.clone().validated().unwrap(),
        ApplyMode::Apply,
        &mut |l: &str| lines.push(l.to_string()),
    )
    .await;
    assert!(!calls.lock().unwrap().iter().any(Call::is_write));
    // With the StatefulSet gone (taken down, data kept), a plain deploy removes the job.
    let sts = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/pgset");
    let (client, calls) = mock_client(deploy_handler_over(vec![
        (
            format!("/apis/batch/v1/namespaces/{NS}/cronjobs/pgset-cert-renewal"),
            json!({"metadata": {"name": "pgset-cert-renewal"}}),
        ),
        (
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/pgset-cert-renewal"),
            json!({"metadata": {"name": "pgset-cert-renewal"}}),
        ),
    ]));
    deploy(
        &client,
        &provided.validated().unwrap(),
        ApplyMode::Apply,
        &mut |l: &str| lines.push(l.to_string()),
    )
    .await
    .unwrap();
    let deletes: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(Call::line)
        .collect();
    assert_eq!(
        deletes,
        [
            format!("DELETE /apis/batch/v1/namespaces/{NS}/cronjobs/pgset-cert-renewal"),
            format!(
                "DELETE /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/pgset-cert-renewal"
            ),
            format!(
                "DELETE /apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/pgset-cert-renewal"
            ),
            format!("DELETE /api/v1/namespaces/{NS}/serviceaccounts/pgset-cert-renewal"),
        ]
    );
    assert!(
        lines.iter().any(|l| l
            .starts_with("deleted CronJob pgset-cert-renewal (left by a tls.mode auto deploy)")),
        "{lines:?}"
    );
    assert!(
        !calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.path == sts && c.method == "DELETE")
    );
}

/// A Ready, schedulable node whose kubelet reports `runtime`.
fn node_with_runtime(name: &str, runtime: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {
                "architecture": "amd64", "bootID": "b", "containerRuntimeVersion": runtime,
                "kernelVersion": "6.1", "kubeProxyVersion": "v1.36.0", "kubeletVersion": "v1.36.0",
                "machineID": "m", "operatingSystem": "linux", "osImage": "Debian", "systemUUID": "u"
            }
        }
    })
}

#[tokio::test]
async fn image_delivery_is_refused_before_any_write_when_a_node_cannot_run_the_agent_from_an_image_volume()
 {
    let mut spec = ClusterSpec::default();
    spec.agent.delivery = pgset_spec::AgentDelivery::Image;
    let spec = spec.validated().unwrap();
    let nodes = |runtimes: &[(&str, &str)]| {
        json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"},
               "items": runtimes.iter().map(|(n, r)| node_with_runtime(n, r)).collect::<Vec<_>>()})
    };
    let (client, calls) = mock_client(deploy_handler_over(vec![(
        "/api/v1/nodes".into(),
        nodes(&[("cp", "containerd://2.1.4"), ("w1", "cri-o://1.34.1")]),
    )]));
    let e = deploy(&client, &spec, ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node(s) w1 (cri-o://1.34.1)") && e.contains("agent.delivery: copy"),
        "{e}"
    );
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls.iter().all(|c| c.method == "GET"),
        "nothing written: {:?}",
        calls.iter().map(Call::line).collect::<Vec<_>>()
    );

    // Every node on containerd 2.1+: the StatefulSet runs the agent from the image volume.
    let (client, calls) = mock_client(deploy_handler_over(vec![(
        "/api/v1/nodes".into(),
        nodes(&[("cp", "containerd://2.1.4")]),
    )]));
    deploy(&client, &spec, ApplyMode::Apply, &mut |_: &str| {})
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    let sts = calls
        .iter()
        .rev()
        .find(|c| c.method == "PATCH" && c.path.ends_with("/statefulsets/pgset"))
        .expect("the StatefulSet applied");
    let pod = &sts.body["spec"]["template"]["spec"];
    assert!(pod["initContainers"].is_null(), "{pod}");
    assert_eq!(
        pod["volumes"][0]["image"]["reference"],
        spec.agent.image.as_str()
    );
}
