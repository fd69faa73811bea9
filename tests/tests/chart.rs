//! The Helm chart (charts/pipewright) against the real apiserver: it lints, renders objects
//! the apiserver accepts (restricted Pod Security included), installs, upgrades and
//! uninstalls, and its RBAC grants the operator what it needs and nothing more.

use std::path::PathBuf;
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use std::time::Duration;

use pipewright_testenv::{HOW_TO_START, TestNamespace, eventually, kube_client, unique_name};

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/pipewright")
}

fn tool(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: {HOW_TO_START}"))
}

/// Runs helm or kubectl; panics with its output when it fails.
fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn helm(args: &[&str]) -> Output {
    run(&tool("HELM"), args, None)
}

fn kubectl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    run(&tool("KUBECTL"), args, stdin)
}

async fn restricted_namespace(client: &kube::Client, prefix: &str) -> TestNamespace {
    let ns = TestNamespace::create(client, prefix).await;
    let labels = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(labels),
        )
        .await
        .unwrap();
    ns
}

#[test]
fn chart_passes_helm_lint_strict() {
    let chart = chart();
    helm(&["lint", "--strict", chart.to_str().unwrap()]);
}

#[tokio::test]
async fn rendered_chart_is_accepted_by_the_apiserver_under_restricted_pod_security() {
    let client = kube_client().await;
    let ns = restricted_namespace(&client, "chart-render").await;
    let chart = chart();
    for extra in [
        &[][..],
        &["--set", &format!("watchNamespace={}", ns.name)][..],
    ] {
        let mut args = vec!["template", "pw", chart.to_str().unwrap(), "-n", &ns.name];
        args.extend_from_slice(extra);
        let rendered = helm(&args).stdout;
        let out = kubectl(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"],
            Some(&rendered),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains("deployment.apps/pw-pipewright created (server dry run)"),
            "{stdout}"
        );
        assert!(!stderr.contains("PodSecurity"), "{extra:?}: {stderr}");
    }
    ns.delete().await;
}

#[tokio::test]
async fn chart_installs_upgrades_and_uninstalls() {
    let client = kube_client().await;
    let ns = restricted_namespace(&client, "chart-install").await;
    let release = unique_name("pw");
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let name = format!("{release}-pipewright");

    helm(&["install", &release, chart, "-n", &ns.name]);
    let deployment = deployments.get(&name).await.unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
    let image = pod.containers[0].image.clone().unwrap();
    assert!(image.ends_with("pipewright-operator:0.1.0"), "{image}");
    assert_eq!(deployment.spec.replicas, Some(2));
    assert!(cluster_roles.get_opt(&name).await.unwrap().is_some());

    helm(&[
        "upgrade",
        &release,
        chart,
        "-n",
        &ns.name,
        "--set",
        "replicaCount=3",
        "--set",
        "image.tag=0.1.1",
    ]);
    let deployment = deployments.get(&name).await.unwrap();
    assert_eq!(deployment.spec.replicas, Some(3));
    let image = deployment.spec.template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert!(image.ends_with("pipewright-operator:0.1.1"), "{image}");

    helm(&["uninstall", &release, "-n", &ns.name, "--wait"]);
    assert!(deployments.get_opt(&name).await.unwrap().is_none());
    assert!(cluster_roles.get_opt(&name).await.unwrap().is_none());
    // The CRDs stay (helm never deletes what it installed from crds/): resources survive.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("eventconsumers.pipewright.io")
            .await
            .unwrap()
            .is_some()
    );
    ns.delete().await;
}

/// `kubectl auth can-i` as the chart's ServiceAccount: what the operator needs is allowed,
/// what it does not need is denied.
#[tokio::test]
async fn chart_rbac_grants_the_operator_only_what_it_needs() {
    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "chart-rbac").await;
    let other = TestNamespace::create(&client, "chart-rbac-other").await;
    let release = unique_name("pw");
    let chart = chart();
    helm(&[
        "install",
        &release,
        chart.to_str().unwrap(),
        "-n",
        &ns.name,
        "--set",
        &format!("watchNamespace={}", ns.name),
    ]);
    let sa = format!("system:serviceaccount:{}:{release}-pipewright", ns.name);
    // `resource` is TYPE, TYPE/NAME, or TYPE#SUBRESOURCE.
    let can = |verb: &str, resource: &str, namespace: &str| -> bool {
        let mut args = vec!["auth", "can-i", verb];
        match resource.split_once('#') {
            Some((kind, sub)) => args.extend([kind, "--subresource", sub]),
            None => args.push(resource),
        }
        let out = Command::new(tool("KUBECTL"))
            .args(args)
            .args(["-n", namespace, "--as", &sa])
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            answer == "yes" || answer == "no",
            "kubectl auth can-i {verb} {resource}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        answer == "yes"
    };
    let here = ns.name.as_str();
    let lease = format!("leases/{release}-pipewright");
    let allowed = [
        ("watch", "eventconsumers.pipewright.io"),
        ("patch", "eventconsumers.pipewright.io#status"),
        ("patch", "outboxes.pipewright.io#status"),
        ("create", "deployments.apps"),
        ("patch", "configmaps"),
        ("patch", "poddisruptionbudgets.policy"),
        ("get", "secrets"),
        ("watch", "pods"),
        ("create", "events.events.k8s.io"),
        ("update", lease.as_str()),
    ];
    // The apiserver's RBAC authorizer learns new bindings from a watch: wait until it has.
    eventually(
        "the chart's RBAC to take effect",
        Duration::from_secs(30),
        || async {
            let missing: Vec<_> = allowed
                .iter()
                .filter(|(verb, resource)| !can(verb, resource, here))
                .collect();
            missing.is_empty().then_some(())
        },
    )
    .await;
    for (verb, resource, namespace) in [
        ("get", "secrets", other.name.as_str()),
        ("list", "secrets", other.name.as_str()),
        ("create", "deployments.apps", other.name.as_str()),
        ("create", "pods#exec", here),
        ("get", "pods#log", here),
        ("delete", "deployments.apps", here),
        ("update", "eventconsumers.pipewright.io", here),
        ("create", "secrets", here),
        ("update", "leases/some-other-lease", here),
        ("create", "clusterroles.rbac.authorization.k8s.io", here),
    ] {
        assert!(
            !can(verb, resource, namespace),
            "{sa} must NOT be allowed to {verb} {resource} in {namespace}"
        );
    }
    helm(&["uninstall", &release, "-n", &ns.name]);
    other.delete().await;
    ns.delete().await;
}

#[test]
fn chart_values_schema_rejects_unknown_and_invalid_values() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for bad in [
        "replicaCount=0",
        "statusPeriod=soon",
        "unknownKey=1",
        "metrics.port=80",
    ] {
        let out = Command::new(tool("HELM"))
            .args(["template", "pw", chart, "--set", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "helm accepted --set {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("values don't meet the specifications of the schema"),
            "{bad}: {stderr}"
        );
    }
}

/// What `make kind-e2e` deploys for the examples (Kafka, PostgreSQL, their Secrets) is valid
/// for the apiserver; the e2e script itself needs a container engine and does not run here.
#[tokio::test]
async fn kind_e2e_dependencies_are_accepted_by_the_apiserver() {
    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "kind-deps").await;
    let deps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/kind");
    let out = kubectl(
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-f",
            deps.to_str().unwrap(),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for object in [
        "statefulset.apps/kafka",
        "statefulset.apps/postgres",
        "secret/orders-db",
    ] {
        assert!(
            stdout.contains(&format!("{object} created (server dry run)")),
            "{stdout}"
        );
    }
    ns.delete().await;
}
