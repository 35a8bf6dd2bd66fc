//! Against a live cluster (KUBECONFIG, Kubernetes 1.30 or newer): member isolation seen by the
//! API server. With a token of the cluster's ServiceAccount bound to pod `<name>-1`, labelling
//! pod `<name>-0` `role=master`, taking the fence Lease `<name>-0-member` and creating a Lease of
//! another name are refused by the member isolation policy, while the same writes to
//! `<name>-1`'s own pod and fence are admitted; a token bound to no pod is refused. Every write is
//! a server dry run (`dryRun=All`): admission runs in full, nothing is stored, so the cluster is
//! never changed even where the policy would fail to refuse.
//!
//! The test deploys a 2-member cluster of its own in a namespace of its own (storage as for
//! `live_fence`) and removes both at the end whether it passed or not.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::AuthInfo;
use kube::{Api, Client, Config};
use pgset_deploy::isolation;
use pgset_spec::ValidSpec;
use pgset_spec::contract::{self, labels};
use pgset_verify::{Options, Verdict, Verifier};
use serde_json::json;

#[path = "support/live.rs"]
mod support;

/// A token of the cluster's ServiceAccount, bound to `pod` (when given) as a kubelet-projected
/// token is, valid ten minutes.
async fn service_account_token(client: &Client, spec: &ValidSpec, pod: Option<&Pod>) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &spec.namespace);
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(600),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
        },
        status: None,
    };
    let answered: TokenRequest = accounts
        .create_subresource(
            "token",
            &spec.service_account_name(),
            &PostParams::default(),
            &request,
        )
        .await
        .expect("request a token for the cluster's ServiceAccount");
    answered.status.expect("the token request's status").token
}

/// A client of the same API server that authenticates with `token` alone.
async fn client_with_token(token: &str) -> Client {
    let mut config = Config::infer().await.expect("config from KUBECONFIG");
    config.auth_info =
        serde_json::from_value::<AuthInfo>(json!({ "token": token })).expect("auth info");
    Client::try_from(config).expect("client with the ServiceAccount's token")
}

fn dry_run() -> PatchParams {
    PatchParams::default().dry_run()
}

fn dry_post() -> PostParams {
    PostParams {
        dry_run: true,
        field_manager: None,
    }
}

/// The API server's refusal of `what`: a 403 whose message is the policy's.
fn assert_refused<T: std::fmt::Debug>(what: &str, answer: kube::Result<T>, message: &str) {
    match answer {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{what}: {status:?}");
            assert!(
                status.message.contains(message),
                "{what}: refused, but not by the member isolation policy ({message}): {}",
                status.message
            );
        }
        other => panic!("{what} must be refused by member isolation, got {other:?}"),
    }
}

/// Labels `pod` `role=master` (server dry run) through `api`.
async fn label_master(api: &Api<Pod>, pod: &str) -> kube::Result<Pod> {
    let patch = json!({"metadata": {"labels": {labels::ROLE: "master"}}});
    api.patch(pod, &dry_run(), &Patch::Merge(&patch)).await
}

/// Writes the fence Lease `name` back as read, its holder changed (server dry run).
async fn take_fence(api: &Api<Lease>, name: &str, holder: &str) -> kube::Result<Lease> {
    let mut lease = api.get(name).await?;
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some(holder.to_string());
    }
    api.replace(name, &dry_post(), &lease).await
}

#[tokio::test]
async fn a_members_token_acts_only_as_its_own_pod() {
    let test = "a_members_token_acts_only_as_its_own_pod";
    support::on_a_cluster_of_its_own(test, "iso", 2, |client, spec| async move {
        let _spec_file = support::deploy_own_cluster(&client, &spec).await;
        assert!(
            isolation::served(&client).await.expect("discovery"),
            "this test needs Kubernetes 1.30 or newer (admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy)"
        );
        let verifier = Verifier::new(client.clone(), spec.clone(), Options::new(&spec));
        let (finding, warning) = verifier.check_member_isolation().await;
        assert_eq!(finding.verdict, Verdict::Pass, "{}", finding.message);
        assert_eq!(warning, None);

        let ns = spec.namespace.as_str();
        let (pod0, pod1) = (spec.pod_name(0), spec.pod_name(1));
        let (fence0, fence1) = (
            contract::member_lease_name(&pod0),
            contract::member_lease_name(&pod1),
        );
        let member1: Pod = Api::<Pod>::namespaced(client.clone(), ns)
            .get(&pod1)
            .await
            .expect("read pod 1");
        let as_member1 = client_with_token(
            &service_account_token(&client, &spec, Some(&member1)).await,
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(as_member1.clone(), ns);
        let leases: Api<Lease> = Api::namespaced(as_member1.clone(), ns);

        // What RBAC alone allowed: refused now.
        assert_refused(
            &format!("{pod1}'s token labelling {pod0} role=master"),
            label_master(&pods, &pod0).await,
            "a member may change only its own pod",
        );
        assert_refused(
            &format!("{pod1}'s token taking {fence0}"),
            take_fence(&leases, &fence0, &pod1).await,
            "fence Lease <pod>-member may be created or updated only by that member pod",
        );
        let stray = Lease {
            metadata: ObjectMeta {
                name: Some(format!("{}-stray", spec.name)),
                ..ObjectMeta::default()
            },
            spec: None,
        };
        assert_refused(
            &format!("{pod1}'s token creating Lease {}-stray", spec.name),
            leases.create(&dry_post(), &stray).await,
            "no other Lease",
        );

        // What the member does to itself: admitted.
        label_master(&pods, &pod1)
            .await
            .expect("a member may label its own pod");
        take_fence(&leases, &fence1, &pod1)
            .await
            .expect("a member may write its own fence");

        // A token of the same ServiceAccount bound to no pod: refused, saying why.
        let unbound = client_with_token(&service_account_token(&client, &spec, None).await).await;
        assert_refused(
            "a token bound to no pod labelling its pod",
            label_master(&Api::namespaced(unbound, ns), &pod1).await,
            "names no pod",
        );

        // Nothing was stored: fence 0 is not held by member 1.
        let fence0_now = Api::<Lease>::namespaced(client.clone(), ns)
            .get(&fence0)
            .await
            .expect("read fence 0");
        assert_ne!(
            fence0_now.spec.and_then(|s| s.holder_identity).as_deref(),
            Some(pod1.as_str())
        );
    })
    .await;
}
