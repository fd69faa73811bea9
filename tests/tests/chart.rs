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

/// A row of the RBAC table in docs/reliability.md: what `kubectl auth can-i` answers for the
/// chart's ServiceAccount, with the default ClusterRole and with `watchNamespace`.
#[derive(Debug)]
struct RbacRow {
    verb: String,
    /// TYPE, TYPE/NAME, or TYPE#SUBRESOURCE; `leases/LEASE` is the release's own Lease.
    resource: String,
    /// In another namespace than the release's (and the resources').
    other: bool,
    cluster: bool,
    scoped: bool,
}

fn rbac_table() -> Vec<RbacRow> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reliability.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (_, rest) = doc
        .split_once("<!-- rbac-table: begin -->")
        .expect("table start");
    let (table, _) = rest
        .split_once("<!-- rbac-table: end -->")
        .expect("table end");
    let answer = |cell: &str| match cell {
        "yes" => true,
        "no" => false,
        other => panic!("{}: answer {other:?} is neither yes nor no", path.display()),
    };
    let rows: Vec<RbacRow> = table
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert!(cells.len() >= 5, "{}: row {line:?}", path.display());
            RbacRow {
                verb: cells[0].to_string(),
                resource: cells[1].to_string(),
                other: match cells[2] {
                    "here" => false,
                    "other" => true,
                    w => panic!("{}: where {w:?} is neither here nor other", path.display()),
                },
                cluster: answer(cells[3]),
                scoped: answer(cells[4]),
            }
        })
        .collect();
    assert!(rows.len() >= 20, "{} rows in the RBAC table", rows.len());
    rows
}

/// `kubectl auth can-i` as the chart's ServiceAccount answers every row of the table in
/// docs/reliability.md, for a release with the default ClusterRole (its RBAC objects applied
/// from `helm template`, so that no second operator watches the whole cluster) and for one
/// installed with `watchNamespace` (a Role).
#[tokio::test]
async fn chart_rbac_answers_kubectl_auth_can_i_as_docs_reliability_md_states() {
    let rows = rbac_table();
    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "chart-rbac").await;
    let other = TestNamespace::create(&client, "chart-rbac-other").await;
    let chart = chart();
    let chart = chart.to_str().unwrap();
    // `resource` is TYPE, TYPE/NAME, or TYPE#SUBRESOURCE.
    let can = |sa: &str, verb: &str, resource: &str, namespace: &str| -> bool {
        let mut args = vec!["auth", "can-i", verb];
        match resource.split_once('#') {
            Some((kind, sub)) => args.extend([kind, "--subresource", sub]),
            None => args.push(resource),
        }
        let out = Command::new(tool("KUBECTL"))
            .args(args)
            .args(["-n", namespace, "--as", sa])
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

    let scoped = unique_name("pw");
    helm(&[
        "install",
        &scoped,
        chart,
        "-n",
        &ns.name,
        "--set",
        &format!("watchNamespace={}", ns.name),
    ]);
    let cluster = unique_name("pw");
    let manifest = helm(&[
        "template",
        &cluster,
        chart,
        "-n",
        &ns.name,
        "--show-only",
        "templates/rbac.yaml",
    ])
    .stdout;
    kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest));
    // Cluster-scoped objects outlive the namespaces: deleted also when an assertion fails.
    struct Applied(String, Vec<u8>);
    impl Drop for Applied {
        fn drop(&mut self) {
            let _ = Command::new(tool("KUBECTL"))
                .args(["delete", "--ignore-not-found", "-n", &self.0, "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(&self.1)?;
                    c.wait()
                });
        }
    }
    let applied = Applied(ns.name.clone(), manifest);

    for (release, expect) in [
        (&scoped, (|r: &RbacRow| r.scoped) as fn(&RbacRow) -> bool),
        (&cluster, |r: &RbacRow| r.cluster),
    ] {
        let sa = format!("system:serviceaccount:{}:{release}-pipewright", ns.name);
        let lease = format!("leases/{release}-pipewright");
        let ask = |row: &RbacRow| {
            let resource = row.resource.replace("leases/LEASE", &lease);
            let namespace = if row.other { &other.name } else { &ns.name };
            can(&sa, &row.verb, &resource, namespace)
        };
        // The apiserver's RBAC authorizer learns new bindings from a watch: wait until it has.
        eventually(
            "the chart's RBAC to take effect",
            Duration::from_secs(30),
            || async { rows.iter().filter(|r| expect(r)).all(ask).then_some(()) },
        )
        .await;
        let wrong: Vec<String> = rows
            .iter()
            .filter(|r| ask(r) != expect(r))
            .map(|r| {
                format!(
                    "{r:?}: kubectl answers {}",
                    if ask(r) { "yes" } else { "no" }
                )
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{sa} (release {release}) differs from docs/reliability.md:\n{}",
            wrong.join("\n")
        );
    }
    drop(applied);
    helm(&["uninstall", &scoped, "-n", &ns.name]);
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
