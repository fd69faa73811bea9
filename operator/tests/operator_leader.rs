//! Leader election between two operator processes on the real apiserver: only the Lease
//! holder reconciles, and killing it hands over to the other.

mod common;

use common::{Operator, WAIT, install_crds};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use pipewright_crds::EventConsumer;
use pipewright_testenv::{TestEnv, TestNamespace, create_topic, eventually, kube_client};
use serde_json::json;

fn consumer(name: &str, topic: &str) -> EventConsumer {
    serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "EventConsumer",
        "metadata": {"name": name},
        "spec": {
            "kafka": {"bootstrapServers": [TestEnv::get().kafka_bootstrap_servers]},
            "topics": [topic],
            "processing": {"deadLetterTopic": format!("{topic}.dlq")},
            "sink": {"log": {}},
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_killing_it_hands_over() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "op-leader").await;
    let topic = create_topic("op-leader", 1).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = || async {
        leases
            .get_opt("pipewright-operator")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    };

    let mut first = Operator::candidate(&ns.name);
    eventually("the first operator to hold the lease", WAIT, || async {
        (holder().await? == first.identity).then_some(())
    })
    .await;
    let second = Operator::candidate(&ns.name);
    eventually("the second operator to serve metrics", WAIT, || async {
        second.metrics().map(|_| ())
    })
    .await;

    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    ecs.create(&PostParams::default(), &consumer("a", &topic))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually("the leader to reconcile", WAIT, || async {
        deployments.get_opt("a-consumer").await.ok().flatten()
    })
    .await;
    assert!(
        first
            .metric("pipewright_operator_reconciles_total")
            .unwrap()
            > 0.0
    );
    assert_eq!(second.metric("pipewright_operator_leader ").unwrap(), 0.0);
    assert_eq!(
        second
            .metric("pipewright_operator_reconciles_total")
            .unwrap(),
        0.0,
        "the follower reconciles nothing"
    );

    // SIGKILL: no release; the follower waits for the lease to expire, then takes over.
    first.kill();
    eventually("the second operator to take the lease", WAIT, || async {
        (holder().await? == second.identity).then_some(())
    })
    .await;
    ecs.create(&PostParams::default(), &consumer("b", &topic))
        .await
        .unwrap();
    eventually("the new leader to reconcile", WAIT, || async {
        deployments.get_opt("b-consumer").await.ok().flatten()
    })
    .await;
    assert_eq!(second.metric("pipewright_operator_leader ").unwrap(), 1.0);
    ns.delete().await;
}
