//! The cluster's TLS material against a mock API server: the first deploy creates the CA, the
//! two certificate Secrets and the CA ConfigMap; a second only reads them; a due certificate is
//! reissued by one merge patch of its own Secret; a CA near its end is rotated with overlap
//! (the trust bundle first, a wait on the member pods, then the certificates, then the old CA
//! out), a rotation that stopped resumes, and one done leaves nothing for the next run to
//! write; a dry run stores nothing; `provided` Secrets are only read and checked.

#[allow(dead_code)]
mod mock_api;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mock_api::{
    Call, Calls, Reply, echo_with_version, is_watch, mock_client, mock_client_replying, not_found,
    query_pairs,
};
use pgset_deploy::apply::{Applied, ApplyMode};
use pgset_deploy::tls::{ca_rotation, ensure, rotate, server_names};
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
                    if v.is_null() {
                        obj["data"].as_object_mut().unwrap().remove(&k);
                    } else {
                        obj["data"][k] = v;
                    }
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

const PODS: &str = "/api/v1/namespaces/default/pods";
const MEMBERS: [&str; 2] = ["pgset-0", "pgset-1"];

/// What each member's agent published as loaded (`pgset.io/tls-loaded`), by pod.
type Loaded = Arc<Mutex<HashMap<String, String>>>;

/// The annotation of a member that loaded the Secrets as `store` holds them now.
fn loaded_now(store: &Store) -> String {
    let text = |n: &str, k: &str| stored_text(store, &format!("{SECRETS}/{n}"), k);
    json!({
        "caBundle": pgset_tls::digest(text("pgset-tls-server", "ca.crt").as_bytes()),
        "certs": pgset_tls::certs_digest(
            &text("pgset-tls-server", "tls.crt"),
            &text("pgset-tls-replication", "tls.crt"),
        ),
    })
    .to_string()
}

/// Every member has loaded the Secrets as they are.
fn settle(store: &Store, loaded: &Loaded) {
    let now = loaded_now(store);
    let mut l = loaded.lock().unwrap();
    for m in MEMBERS {
        l.insert(m.into(), now.clone());
    }
}

/// The objects of [`handler`], and two member pods: a listing shows what each agent published
/// so far; a watch answers, a moment later, with every member not `stuck` having loaded the
/// Secrets as they are then (the kubelet's swap and the agent's reload), the stuck ones as
/// they were.
fn cluster(
    store: Store,
    loaded: Loaded,
    stuck: Arc<Mutex<Vec<String>>>,
) -> impl FnMut(&Call) -> Reply + Send + 'static {
    let mut objects = handler(store.clone());
    let mut version = 1000u64;
    move |call: &Call| {
        if call.path != PODS {
            let (code, body) = objects(call);
            return Reply::Json(code, body);
        }
        assert_eq!(call.method, "GET", "the pods are only read");
        assert!(
            query_pairs(call)
                .iter()
                .any(|p| p.starts_with("labelSelector=")),
            "the member pods by their labels: {}",
            call.query
        );
        version += 1;
        if is_watch(call) {
            let now = loaded_now(&store);
            let stuck = stuck.lock().unwrap();
            let mut l = loaded.lock().unwrap();
            for m in MEMBERS.iter().filter(|m| !stuck.contains(&m.to_string())) {
                l.insert(m.to_string(), now.clone());
            }
        }
        let l = loaded.lock().unwrap();
        let pod = |m: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": m, "namespace": "default", "resourceVersion": version.to_string(),
                "annotations": l.get(m).map(|v| json!({"pgset.io/tls-loaded": v})).unwrap_or(json!({})),
            }})
        };
        if is_watch(call) {
            let events = MEMBERS
                .iter()
                .map(|m| json!({"type": "MODIFIED", "object": pod(m)}))
                .collect();
            Reply::After(
                std::time::Duration::from_millis(10),
                Box::new(Reply::Events(events)),
            )
        } else {
            Reply::Json(
                200,
                json!({"apiVersion": "v1", "kind": "PodList",
                       "metadata": {"resourceVersion": version.to_string()},
                       "items": MEMBERS.iter().map(|m| pod(m)).collect::<Vec<_>>()}),
            )
        }
    }
}

/// The calls as lines, the pods' as `LIST pods` and `WATCH pods`, repeats of one folded.
fn sequence(calls: &Calls) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in calls.lock().unwrap().iter() {
        let line = match (c.path == PODS, is_watch(c)) {
            (true, true) => "WATCH pods".to_string(),
            (true, false) => "LIST pods".to_string(),
            _ => c.line(),
        };
        if out.last() != Some(&line) {
            out.push(line);
        }
    }
    out
}

fn ca_rotation_sequence() -> Vec<String> {
    let s = |n: &str| format!("PATCH {SECRETS}/{n}");
    vec![
        // 1: the new CA kept, then the bundle where members and clients read it.
        s("pgset-ca"),
        s("pgset-tls-server"),
        s("pgset-tls-replication"),
        format!("PATCH {CONFIGMAPS}/pgset-ca-cert"),
        "LIST pods".into(),
        "WATCH pods".into(),
        // 2: the certificates by the new CA, which then signs.
        s("pgset-tls-server"),
        s("pgset-tls-replication"),
        s("pgset-ca"),
        "LIST pods".into(),
        "WATCH pods".into(),
        // 3: the old CA out of the bundle.
        s("pgset-tls-server"),
        s("pgset-tls-replication"),
        format!("PATCH {CONFIGMAPS}/pgset-ca-cert"),
        "LIST pods".into(),
        "WATCH pods".into(),
    ]
}

fn reads() -> Vec<String> {
    vec![
        format!("GET {SECRETS}/pgset-ca"),
        format!("GET {SECRETS}/pgset-tls-server"),
        format!("GET {SECRETS}/pgset-tls-replication"),
        format!("GET {CONFIGMAPS}/pgset-ca-cert"),
    ]
}

fn configmap_text(store: &Store) -> String {
    store.lock().unwrap()[&format!("{CONFIGMAPS}/pgset-ca-cert")]["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_ca_rotation_writes_the_bundle_first_waits_for_every_member_then_the_certificates_then_retires_the_old_ca()
 {
    let store = Store::default();
    let loaded = Loaded::default();
    let stuck = Arc::new(Mutex::new(Vec::new()));
    let (client, calls) =
        mock_client_replying(cluster(store.clone(), loaded.clone(), stuck.clone()));
    let now = pgset_tls::now();
    ensure(&client, &spec(), ApplyMode::Apply, now, &mut |_: &str| {})
        .await
        .unwrap();
    settle(&store, &loaded);
    let path = |n: &str| format!("{SECRETS}/{n}");
    let old_ca = stored_text(&store, &path("pgset-ca"), "tls.crt");
    calls.lock().unwrap().clear();
    let mut said = Vec::new();
    let applied = ca_rotation::rotate_ca(
        &client,
        &spec(),
        now,
        std::time::Duration::from_secs(10),
        &mut |l: &str| said.push(l.to_string()),
    )
    .await
    .unwrap();
    let mut want = reads();
    want.extend(ca_rotation_sequence());
    assert_eq!(sequence(&calls), want);
    let changed = |n: &str| Applied::Changed(n.to_string());
    assert_eq!(
        applied,
        [
            changed("Secret/pgset-ca"),
            changed("Secret/pgset-tls-server"),
            changed("Secret/pgset-tls-replication"),
            changed("ConfigMap/pgset-ca-cert"),
            changed("Secret/pgset-tls-server"),
            changed("Secret/pgset-tls-replication"),
            changed("Secret/pgset-ca"),
            changed("Secret/pgset-tls-server"),
            changed("Secret/pgset-tls-replication"),
            changed("ConfigMap/pgset-ca-cert"),
        ]
    );

    // While the old CA's certificates were served, members and clients were given both CAs.
    let calls_now = calls.lock().unwrap().clone();
    let first_bundle = decoded(&calls_now[5].body["data"]["ca.crt"]);
    assert_eq!(calls_now[5].path, path("pgset-tls-server"));
    assert_eq!(pgset_tls::split_bundle(&first_bundle).len(), 2);
    assert!(pgset_tls::bundle_has(&first_bundle, &old_ca));
    assert!(
        calls_now[5].body["data"].get("tls.crt").is_none(),
        "the bundle alone, the certificate kept"
    );
    assert_eq!(
        pgset_tls::split_bundle(calls_now[7].body["data"]["ca.crt"].as_str().unwrap()).len(),
        2,
        "the ConfigMap holds both CAs during the overlap"
    );

    // After: a new signing CA, alone in every bundle; the certificates are its.
    let new_ca = stored_text(&store, &path("pgset-ca"), "tls.crt");
    assert_ne!(new_ca, old_ca);
    assert!(pgset_tls::bundle_has(&first_bundle, &new_ca));
    let ca_data = store.lock().unwrap()[&path("pgset-ca")]["data"].clone();
    assert!(ca_data.get("next.crt").is_none() && ca_data.get("next.key").is_none());
    for n in ["pgset-tls-server", "pgset-tls-replication"] {
        assert_eq!(stored_text(&store, &path(n), "ca.crt"), new_ca, "{n}");
        let leaf = stored_text(&store, &path(n), "tls.crt");
        assert!(pgset_tls::signed_by(&leaf, &new_ca), "{n}");
        assert!(!pgset_tls::signed_by(&leaf, &old_ca), "{n}");
    }
    assert_eq!(configmap_text(&store), new_ca);
    for want in [
        "every member trusts the new CA",
        "every member serves the new CA's certificates",
        "every member trusts the new CA alone",
    ] {
        assert!(said.iter().any(|l| l == want), "{want:?} in {said:?}");
    }
    assert!(!said.iter().any(|l| l.contains("PRIVATE KEY")));

    // Done: a deploy right after only reads.
    calls.lock().unwrap().clear();
    ensure(&client, &spec(), ApplyMode::Apply, now, &mut |_: &str| {})
        .await
        .unwrap();
    assert_eq!(lines(&calls), reads());
}

#[tokio::test]
async fn a_member_that_does_not_load_the_bundle_stops_the_rotation_before_any_certificate_and_the_next_run_resumes()
 {
    let store = Store::default();
    let loaded = Loaded::default();
    let stuck = Arc::new(Mutex::new(vec!["pgset-1".to_string()]));
    let (client, calls) =
        mock_client_replying(cluster(store.clone(), loaded.clone(), stuck.clone()));
    let now = pgset_tls::now();
    ensure(&client, &spec(), ApplyMode::Apply, now, &mut |_: &str| {})
        .await
        .unwrap();
    settle(&store, &loaded);
    let path = |n: &str| format!("{SECRETS}/{n}");
    let old_ca = stored_text(&store, &path("pgset-ca"), "tls.crt");
    let old_leaf = stored_text(&store, &path("pgset-tls-server"), "tls.crt");
    calls.lock().unwrap().clear();
    let e = ca_rotation::rotate_ca(
        &client,
        &spec(),
        now,
        std::time::Duration::from_millis(400),
        &mut |_: &str| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("pgset-1 did not load the trust bundle with the new CA")
            && e.contains("run the same command again"),
        "{e}"
    );
    let mut want = reads();
    want.extend(ca_rotation_sequence()[..6].iter().cloned());
    assert_eq!(sequence(&calls), want, "nothing after the wait");
    // Left where every member is served and trusted: the old certificates, both CAs trusted.
    assert_eq!(stored_text(&store, &path("pgset-ca"), "tls.crt"), old_ca);
    assert_eq!(
        stored_text(&store, &path("pgset-tls-server"), "tls.crt"),
        old_leaf
    );
    let next = stored_text(&store, &path("pgset-ca"), "next.crt");
    let bundle = stored_text(&store, &path("pgset-tls-server"), "ca.crt");
    assert!(pgset_tls::bundle_has(&bundle, &old_ca) && pgset_tls::bundle_has(&bundle, &next));

    // The member catches up; the same command resumes with the same new CA, writing the
    // bundle no more.
    stuck.lock().unwrap().clear();
    calls.lock().unwrap().clear();
    ca_rotation::rotate_ca(
        &client,
        &spec(),
        now,
        std::time::Duration::from_secs(10),
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    let mut want = reads();
    want.extend(ca_rotation_sequence()[4..].iter().cloned());
    assert_eq!(sequence(&calls), want);
    assert_eq!(stored_text(&store, &path("pgset-ca"), "tls.crt"), next);
    assert_eq!(configmap_text(&store), next);
}

#[tokio::test]
async fn a_ca_near_its_end_is_rotated_by_deploy_with_overlap() {
    let store = Store::default();
    let loaded = Loaded::default();
    let stuck = Arc::new(Mutex::new(Vec::new()));
    let (client, calls) =
        mock_client_replying(cluster(store.clone(), loaded.clone(), stuck.clone()));
    let made = pgset_tls::now();
    ensure(&client, &spec(), ApplyMode::Apply, made, &mut |_: &str| {})
        .await
        .unwrap();
    let old_ca = stored_text(&store, &format!("{SECRETS}/pgset-ca"), "tls.crt");
    // Years later, the certificates renewed on time, the CA within its renewal window.
    let late = made + pgset_tls::CA_VALIDITY - Duration::days(100);
    rotate(&client, &spec(), ApplyMode::Apply, late, &mut |_: &str| {})
        .await
        .unwrap();
    // Members whose agent never said what it loaded (it predates CA rotation): a deploy would
    // wait for them in vain before updating them, so it leaves the CA for the next deploy.
    calls.lock().unwrap().clear();
    let mut said = Vec::new();
    ensure(&client, &spec(), ApplyMode::Apply, late, &mut |l: &str| {
        said.push(l.to_string())
    })
    .await
    .unwrap();
    let mut want = reads();
    want.push("LIST pods".into());
    assert_eq!(sequence(&calls), want);
    assert!(
        said.iter()
            .any(|l| l.contains("not rotated by this deploy: pgset-0, pgset-1")),
        "{said:?}"
    );
    settle(&store, &loaded);
    calls.lock().unwrap().clear();
    let mut said = Vec::new();
    ensure(&client, &spec(), ApplyMode::Apply, late, &mut |l: &str| {
        said.push(l.to_string())
    })
    .await
    .unwrap();
    // What deploy reads and keeps, whether every member reports, then the rotation's own
    // reads and writes.
    let mut want = reads();
    want.push("LIST pods".into());
    want.extend(reads());
    want.extend(ca_rotation_sequence());
    assert_eq!(sequence(&calls), want);
    assert!(
        said.iter()
            .any(|l| l.contains("the CA in Secret pgset-ca ends at")
                && l.ends_with("rotating it with overlap")),
        "{said:?}"
    );
    let new_ca = stored_text(&store, &format!("{SECRETS}/pgset-ca"), "tls.crt");
    assert_ne!(new_ca, old_ca);
    let facts = pgset_tls::read_cert(&new_ca).unwrap();
    assert!(facts.not_after > late + Duration::days(3000));
    // The next deploy only reads.
    calls.lock().unwrap().clear();
    ensure(&client, &spec(), ApplyMode::Apply, late, &mut |_: &str| {})
        .await
        .unwrap();
    assert_eq!(lines(&calls), reads());
    // A CA past its end is never replaced: one error, nothing written.
    calls.lock().unwrap().clear();
    let past = late + pgset_tls::CA_VALIDITY;
    let e = ensure(&client, &spec(), ApplyMode::Apply, past, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Secret pgset-ca") && e.contains("not valid now"),
        "{e}"
    );
    assert!(!calls.lock().unwrap().iter().any(Call::is_write));
}

#[tokio::test]
async fn a_ca_rotation_is_refused_without_a_request_for_provided_or_off_and_after_one_read_for_a_cluster_without_tls()
 {
    let store = Store::default();
    let loaded = Loaded::default();
    let stuck = Arc::new(Mutex::new(Vec::new()));
    let (client, calls) = mock_client_replying(cluster(store.clone(), loaded, stuck));
    let timeout = std::time::Duration::from_secs(1);
    let now = pgset_tls::now();
    let e = ca_rotation::rotate_ca(&client, &provided(), now, timeout, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("yours") && e.contains("nothing was changed"),
        "{e}"
    );
    let mut off = ClusterSpec::default();
    off.tls.mode = TlsMode::Off;
    let off = off.validated().unwrap();
    let e = ca_rotation::rotate_ca(&client, &off, now, timeout, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no CA to rotate") && e.contains("nothing was changed"),
        "{e}"
    );
    assert!(calls.lock().unwrap().is_empty());
    let e = ca_rotation::rotate_ca(&client, &spec(), now, timeout, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no CA Secret pgset-ca") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(lines(&calls), [format!("GET {SECRETS}/pgset-ca")]);
    assert!(store.lock().unwrap().is_empty());
}
