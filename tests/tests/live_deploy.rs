//! Against a live cluster (KUBECONFIG): deploy, deploy again without changing any object's
//! resourceVersion, `down` keeps claims and Secret, `down --purge --yes` removes them. Runs in
//! a namespace of its own that enforces the `restricted` Pod Security Standard, deleted at the
//! end.
//!
//! Storage: with `PGSET_LIVE_STORAGE_CLASS` set, templates mode on that StorageClass and the
//! ordered rollout is awaited (needs the agent image on the nodes); without it, shared mode
//! whose claim stays Pending (no PersistentVolumes are made for the test namespace), which is
//! enough for what this test checks.

#[path = "support/live.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Resource};
use pgset_deploy::apply::{ApplyMode, deploy};
use pgset_deploy::rollout::{step_lines, wait_for_rollout};
use pgset_deploy::selector_string;
use pgset_deploy::teardown::{Purge, down};
use pgset_spec::{ClusterSpec, StorageMode, ValidSpec};
use pgset_tests::live_kubeconfig;

const TIMEOUT: Duration = Duration::from_secs(300);

async fn client_for(path: &std::path::Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("read KUBECONFIG");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("load KUBECONFIG");
    Client::try_from(config).expect("client")
}

fn unique_namespace() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("pgset-live-{}-{nanos}", std::process::id())
}

fn live_spec(namespace: &str) -> ValidSpec {
    let mut spec = ClusterSpec {
        namespace: namespace.to_string(),
        ..ClusterSpec::default()
    };
    if let Ok(class) = std::env::var("PGSET_LIVE_STORAGE_CLASS") {
        spec.storage.mode = StorageMode::Templates;
        spec.storage.storage_class = Some(class);
    }
    support::live_images(&mut spec);
    spec.validated().expect("live spec is valid")
}

fn print_line(line: &str) {
    eprintln!("    {line}");
}

async fn version_of<K>(client: &Client, ns: &str, name: &str) -> Option<String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get {name}: {e}"))
        .and_then(|o| o.meta().resource_version.clone())
}

/// resourceVersion of every object pgset writes, keyed by `Kind/name`.
async fn versions(client: &Client, spec: &ClusterSpec) -> BTreeMap<String, Option<String>> {
    let ns = spec.namespace.as_str();
    let mut v = BTreeMap::new();
    let sa = spec.service_account_name();
    v.insert(
        format!("ServiceAccount/{sa}"),
        version_of::<ServiceAccount>(client, ns, &sa).await,
    );
    let role = spec.role_name();
    v.insert(
        format!("Role/{role}"),
        version_of::<Role>(client, ns, &role).await,
    );
    v.insert(
        format!("RoleBinding/{role}"),
        version_of::<RoleBinding>(client, ns, &role).await,
    );
    let secret = spec.secret_name();
    v.insert(
        format!("Secret/{secret}"),
        version_of::<Secret>(client, ns, &secret).await,
    );
    for svc in [
        spec.headless_service_name().to_string(),
        spec.master_service_name(),
        spec.replica_service_name(),
    ] {
        v.insert(
            format!("Service/{svc}"),
            version_of::<Service>(client, ns, &svc).await,
        );
    }
    if spec.storage.mode == StorageMode::Shared {
        let claim = spec.shared_claim_name();
        v.insert(
            format!("PersistentVolumeClaim/{claim}"),
            version_of::<PersistentVolumeClaim>(client, ns, &claim).await,
        );
    }
    let sts = spec.statefulset_name();
    v.insert(
        format!("StatefulSet/{sts}"),
        version_of::<StatefulSet>(client, ns, sts).await,
    );
    v
}

/// Waits until controllers stop updating the objects (two equal readings 3 s apart).
async fn settled_versions(client: &Client, spec: &ClusterSpec) -> BTreeMap<String, Option<String>> {
    let settle = async {
        let mut before = versions(client, spec).await;
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = versions(client, spec).await;
            if now == before {
                return now;
            }
            before = now;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), settle)
        .await
        .expect("objects settle within 120s after deploy")
}

async fn claim_names(client: &Client, spec: &ClusterSpec) -> Vec<String> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &spec.namespace);
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list claims")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    names.sort();
    names
}

async fn scenario(client: Client, spec: ValidSpec) {
    // First deploy creates everything, including the Secret.
    deploy(&client, &spec, ApplyMode::Apply, &mut print_line)
        .await
        .expect("first deploy");
    let wait_rollout = spec.storage.storage_class.is_some();
    if wait_rollout {
        wait_for_rollout(
            &client,
            &spec,
            spec.replicas,
            TIMEOUT,
            &mut step_lines(&mut print_line),
        )
        .await
        .expect("rollout");
    } else {
        // The first member's claim stays Pending, but its pod must be admitted (restricted
        // Pod Security) and created.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &spec.namespace);
        let first = spec.pod_name(0);
        let created = async {
            while pods.get_opt(&first).await.expect("get pod").is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), created)
            .await
            .unwrap_or_else(|_| panic!("pod {first} was not created within 60s (admission?)"));
    }
    let before = settled_versions(&client, &spec).await;
    assert!(
        before.values().all(Option::is_some),
        "every object exists: {before:?}"
    );

    // Second deploy: server-side apply of identical objects and a kept Secret change nothing.
    let second = deploy(&client, &spec, ApplyMode::Apply, &mut print_line)
        .await
        .expect("second deploy");
    assert!(
        second.changed.is_empty(),
        "a second deploy reported changes: {:?}",
        second.changed
    );
    let after = versions(&client, &spec).await;
    assert_eq!(
        before, after,
        "a second deploy changed an object's resourceVersion"
    );

    // The claims that exist now must survive `down`.
    let claims = if wait_rollout {
        (0..spec.replicas)
            .map(|o| spec.member_claim_name(o))
            .collect::<Vec<_>>()
    } else {
        vec![spec.shared_claim_name()]
    };
    let present = claim_names(&client, &spec).await;
    for claim in &claims {
        assert!(
            present.contains(claim),
            "claim {claim} exists before down: {present:?}"
        );
    }

    down(&client, &spec, Purge::Keep, TIMEOUT, &mut print_line)
        .await
        .expect("down");
    let ns = spec.namespace.as_str();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let left = pods
        .list(&ListParams::default().labels(&selector_string(&spec)))
        .await
        .expect("list pods");
    assert!(left.items.is_empty(), "pods left after down");
    let gone = versions(&client, &spec).await;
    for (key, version) in &gone {
        if key.starts_with("Secret/") || key.starts_with("PersistentVolumeClaim/") {
            assert!(version.is_some(), "down deleted {key}");
        } else {
            assert!(version.is_none(), "down left {key}");
        }
    }
    let kept = claim_names(&client, &spec).await;
    for claim in &claims {
        assert!(kept.contains(claim), "down deleted claim {claim}: {kept:?}");
    }

    // down again: nothing left to do, no error.
    down(&client, &spec, Purge::Keep, TIMEOUT, &mut print_line)
        .await
        .expect("second down");

    down(&client, &spec, Purge::Everything, TIMEOUT, &mut print_line)
        .await
        .expect("down --purge --yes");
    let remaining = claim_names(&client, &spec).await;
    for claim in &claims {
        assert!(!remaining.contains(claim), "purge left claim {claim}");
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    assert!(
        secrets
            .get_opt(&spec.secret_name())
            .await
            .expect("get secret")
            .is_none(),
        "purge left the Secret"
    );
}

#[tokio::test]
async fn deploy_twice_changes_nothing_and_down_keeps_claims_until_purged() {
    let test = "deploy_twice_changes_nothing_and_down_keeps_claims_until_purged";
    let Some(kubeconfig) = live_kubeconfig(test) else {
        return;
    };
    let client = client_for(&kubeconfig).await;
    let ns = unique_namespace();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(ns.clone()),
            // The pods must pass the strictest Pod Security Standard.
            labels: Some(BTreeMap::from([(
                "pod-security.kubernetes.io/enforce".to_string(),
                "restricted".to_string(),
            )])),
            ..Default::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("create namespace {ns}: {e}"));
    eprintln!("{test}: namespace {ns}");

    let outcome = tokio::spawn(scenario(client.clone(), live_spec(&ns))).await;

    support::finish(test, &namespaces, &ns, outcome).await;
}
