//! The operator does its whole job with nothing but the Helm chart's RBAC: it runs with a
//! token of the chart's ServiceAccount (a real identity, not impersonation), takes the
//! chart's Lease, renders and applies both kinds' children, reads their Secrets and writes
//! measured status, and is never refused by the apiserver.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Operator, WAIT, condition, install_crds};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{AuthInfo, Kubeconfig};
use pipewright_crds::conditions::{DEGRADED, PROGRESSING};
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{
    HOW_TO_START, TestEnv, TestNamespace, TestSchema, create_topic, eventually, kube_client,
    unique_name,
};
use serde_json::json;

fn helm(args: &[&str]) {
    let helm = std::env::var("HELM").unwrap_or_else(|_| panic!("HELM is not set: {HOW_TO_START}"));
    let out = Command::new(helm).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A kubeconfig for the same cluster whose only credential is `token`.
fn token_kubeconfig(token: String, name: &str) -> PathBuf {
    let mut config = Kubeconfig::read_from(&TestEnv::get().kubeconfig).unwrap();
    for user in &mut config.auth_infos {
        user.auth_info = Some(AuthInfo {
            token: Some(token.clone().into()),
            ..AuthInfo::default()
        });
    }
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn the_operator_does_its_whole_job_with_only_the_charts_rbac() {
    let admin = kube_client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "op-rbac").await;
    let release = unique_name("pw");
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/pipewright");
    helm(&[
        "install",
        &release,
        chart.to_str().unwrap(),
        "-n",
        &ns.name,
        "--set",
        &format!("watchNamespace={}", ns.name),
    ]);
    let account = format!("{release}-pipewright");

    // What the operator will work on, created by the "user" (cluster-admin).
    let schema = TestSchema::create("op_rbac").await;
    sqlx::query(
        "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL, \
         aggregateid text NOT NULL, type text NOT NULL, payload jsonb, headers jsonb, \
         created_at timestamptz NOT NULL DEFAULT now(), seq bigserial UNIQUE, \
         txid xid8 NOT NULL DEFAULT pg_current_xact_id(), published_at timestamptz)",
    )
    .execute(&schema.pool)
    .await
    .unwrap();
    let topic = create_topic("op-rbac", 2).await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "stringData": {"dsn": TestEnv::get().database_url},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let outbox: Outbox = serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1", "kind": "Outbox",
        "metadata": {"name": "orders"},
        "spec": {
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}},
            "table": format!("{}.outbox", schema.name),
            "kafka": {"bootstrapServers": [TestEnv::get().kafka_bootstrap_servers]},
            "topic": topic,
        },
    }))
    .unwrap();
    let consumer: EventConsumer = serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1", "kind": "EventConsumer",
        "metadata": {"name": "audit"},
        "spec": {
            "kafka": {"bootstrapServers": [TestEnv::get().kafka_bootstrap_servers]},
            "topics": [topic],
            "processing": {"deadLetterTopic": format!("{topic}.dlq")},
            "sink": {"log": {}},
        },
    }))
    .unwrap();
    let outboxes: Api<Outbox> = Api::namespaced(admin.clone(), &ns.name);
    let consumers: Api<EventConsumer> = Api::namespaced(admin.clone(), &ns.name);
    outboxes
        .create(&PostParams::default(), &outbox)
        .await
        .unwrap();
    consumers
        .create(&PostParams::default(), &consumer)
        .await
        .unwrap();

    // The operator, as the chart's ServiceAccount, with the chart's Lease.
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create_token_request(
            &account,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            },
        )
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token for the chart's ServiceAccount");
    let kubeconfig = token_kubeconfig(token, &release);
    let operator = Operator::start_as(&ns.name, &account, Some(&kubeconfig), &[]);

    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns.name);
    for name in ["orders-outbox", "audit-consumer"] {
        eventually(&format!("Deployment {name}"), WAIT, || async {
            deployments.get_opt(name).await.unwrap()
        })
        .await;
    }
    let outbox_status = eventually("the Outbox's measured status", WAIT, || async {
        let s = outboxes.get("orders").await.ok()?.status?;
        let progressing = condition(&s.conditions, PROGRESSING)?;
        (progressing.status == "True" && s.pending == Some(0)).then_some(s)
    })
    .await;
    assert_eq!(
        condition(&outbox_status.conditions, DEGRADED).map(|c| c.status.as_str()),
        Some("False")
    );
    eventually("the EventConsumer's measured lag", WAIT, || async {
        let s = consumers.get("audit").await.ok()?.status?;
        (s.total_lag == Some(0) && !s.partitions.is_empty()).then_some(())
    })
    .await;
    let lease = Api::<Lease>::namespaced(admin.clone(), &ns.name)
        .get(&account)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        Some(operator.identity.clone())
    );

    let log = std::fs::read_to_string(&operator.log).unwrap();
    // kube's errors for a 403 carry the apiserver's reason and message: "Forbidden", "... is
    // forbidden: User ... cannot ...".
    for refusal in ["forbidden", "Forbidden"] {
        assert!(
            !log.contains(refusal),
            "the apiserver refused the operator something:\n{log}"
        );
    }
    drop(operator);
    helm(&["uninstall", &release, "-n", &ns.name]);
    schema.drop().await;
    ns.delete().await;
}
