//! The local control plane is real: kube-apiserver on etcd, with kube-controller-manager's
//! controllers and service-account token signing working, reached from Rust with kube-rs.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, Pod, PodSpec, PodTemplateSpec, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, Config, Resource, ResourceExt};
use pipewright_testenv::{HOW_TO_START, TestNamespace, eventually, kube_client, nodes};

const WAIT: Duration = Duration::from_secs(60);

/// The Kubernetes release pinned in tests/env/k8s/go.mod, e.g. `1.37.2`.
fn pinned_release() -> &'static str {
    include_str!("../env/k8s/go.mod")
        .lines()
        .map(|l| l.trim().trim_start_matches("require").trim_start())
        .find_map(|l| l.strip_prefix("k8s.io/kubernetes v"))
        .map(|v| v.split_whitespace().next().unwrap_or(v))
        .expect("tests/env/k8s/go.mod requires k8s.io/kubernetes")
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "main".into(),
                        image: Some("registry.invalid/pause:1".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn owned_by<K: Resource<DynamicType = ()>>(obj: &impl ResourceExt, owner: &K) -> bool {
    let uid = owner.meta().uid.as_deref();
    obj.owner_references()
        .iter()
        .any(|r| Some(r.uid.as_str()) == uid && r.kind == K::kind(&()))
}

#[tokio::test]
async fn apiserver_reports_the_pinned_kubernetes_release() {
    let client = kube_client().await;
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.git_version, format!("v{}", pinned_release()));
    let minor = pinned_release().split('.').nth(1).unwrap();
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", minor));
}

#[tokio::test]
async fn deployment_gets_replicaset_and_pods_from_controller_manager() {
    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "cp-deploy").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    let created = deployments
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();

    let rs = eventually(
        "the deployment controller to create a ReplicaSet",
        WAIT,
        || async {
            let list = replicasets.list(&ListParams::default()).await.unwrap();
            list.items.into_iter().find(|rs| owned_by(rs, &created))
        },
    )
    .await;
    assert_eq!(rs.spec.replicas, Some(2));

    let owned_pods = eventually(
        "the replicaset controller to create 2 Pods",
        WAIT,
        || async {
            let list = pods.list(&ListParams::default()).await.unwrap();
            let owned: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| owned_by(p, &rs))
                .collect();
            (owned.len() == 2).then_some(owned)
        },
    )
    .await;
    // The scheduler binds both to the environment's nodes (their image does not exist, so
    // they never run; that is not what this test is about).
    let node_names: Vec<String> = nodes().into_iter().map(|n| n.name).collect();
    let names: Vec<String> = owned_pods.iter().map(|p| p.name_any()).collect();
    eventually(
        "the scheduler to bind both Pods to a node",
        WAIT,
        || async {
            let mut bound = 0;
            for name in &names {
                let pod = pods.get(name).await.ok()?;
                let on = pod.spec.and_then(|s| s.node_name);
                assert!(
                    on.as_ref().is_none_or(|n| node_names.contains(n)),
                    "{name} on {on:?}, not one of {node_names:?}"
                );
                bound += usize::from(on.is_some());
            }
            (bound == names.len()).then_some(())
        },
    )
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn deleting_a_deployment_garbage_collects_its_replicaset_and_pods() {
    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "cp-gc").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    deployments
        .create(&PostParams::default(), &deployment("gc", 1))
        .await
        .unwrap();
    eventually("a ReplicaSet and its Pod", WAIT, || async {
        let rs = replicasets.list(&ListParams::default()).await.unwrap();
        let p = pods.list(&ListParams::default()).await.unwrap();
        (!rs.items.is_empty() && !p.items.is_empty()).then_some(())
    })
    .await;

    // Background propagation: the object goes at once, the garbage collector removes its
    // dependents afterwards by following their ownerReferences.
    deployments
        .delete("gc", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        "the garbage collector to delete the ReplicaSet and Pod",
        WAIT,
        || async {
            let rs = replicasets.list(&ListParams::default()).await.unwrap();
            let p = pods.list(&ListParams::default()).await.unwrap();
            (rs.items.is_empty() && p.items.is_empty()).then_some(())
        },
    )
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn service_account_tokens_are_signed_and_accepted_by_the_apiserver() {
    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "cp-sa").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);

    // The serviceaccount and root-ca-cert-publisher controllers fill every new namespace.
    eventually("the default ServiceAccount", WAIT, || async {
        accounts.get_opt("default").await.unwrap()
    })
    .await;
    let root_ca = eventually("the kube-root-ca.crt ConfigMap", WAIT, || async {
        configmaps.get_opt("kube-root-ca.crt").await.unwrap()
    })
    .await;
    assert!(root_ca.data.unwrap()["ca.crt"].contains("BEGIN CERTIFICATE"));

    // A bound token signed with the environment's service-account key authenticates.
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request("default", &PostParams::default(), &request)
        .await
        .unwrap();
    let token = issued.status.unwrap().token.expect("a signed token");

    let mut config = Config::infer().await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..kube::config::AuthInfo::default()
    };
    let as_service_account = Client::try_from(config).unwrap();
    let review: SelfSubjectReview = Api::all(as_service_account)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{}:default", ns.name).as_str())
    );
    ns.delete().await;
}

/// Every node is a real kubelet with containerd and runc: a Pod under the restricted Pod
/// Security settings runs on each, in its own network namespace (an address from that node's
/// pod CIDR, not the node's), and becomes Ready.
#[tokio::test]
async fn every_node_is_ready_and_runs_a_restricted_pod_in_its_own_network_namespace() {
    let client = kube_client().await;
    let pause = std::env::var("PIPEWRIGHT_PAUSE_IMAGE")
        .unwrap_or_else(|_| panic!("PIPEWRIGHT_PAUSE_IMAGE is not set (no node): {HOW_TO_START}"));
    let env_nodes = nodes();
    assert!(env_nodes.len() >= 2, "a cluster of one node: {env_nodes:?}");
    let node_api: Api<Node> = Api::all(client.clone());
    for node in &env_nodes {
        let registered = node_api
            .get(&node.name)
            .await
            .unwrap_or_else(|e| panic!("node {} is not registered: {e}", node.name));
        let ready = registered
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "node {} is not Ready", node.name);
    }

    let ns = TestNamespace::create(&client, "cp-node").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for (i, node) in env_nodes.iter().enumerate() {
        let name = format!("sandbox-{i}");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node.name,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65535,
                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "pause", "image": pause, "imagePullPolicy": "Never",
                    "securityContext": {"allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                }],
            },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    for (i, node) in env_nodes.iter().enumerate() {
        let name = format!("sandbox-{i}");
        let pod_ip = eventually(
            &format!("{name} on {} to be Running and Ready", node.name),
            WAIT,
            || async {
                let status = pods.get(&name).await.ok()?.status?;
                let ready = status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (status.phase.as_deref() == Some("Running") && ready).then_some(status.pod_ip?)
            },
        )
        .await;
        let prefix = node.ip.rsplit_once('.').unwrap().0;
        assert!(
            pod_ip.starts_with(&format!("{prefix}.")),
            "pod IP {pod_ip} outside {}'s CIDR ({prefix}.0/24)",
            node.name
        );
        assert_ne!(
            pod_ip, node.ip,
            "the pod shares {}'s network namespace",
            node.name
        );
    }
    ns.delete().await;
}
