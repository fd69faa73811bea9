//! The operator against the real control plane (apiserver + controller-manager), Kafka and
//! PostgreSQL of the test environment. Each test runs its own operator process scoped to a
//! namespace of its own.
//!
//! The operator runs as a host process here, with a worker image that exists nowhere
//! (`pipewright-worker:test`): the node's kubelet cannot pull it, so Deployments never become
//! Available and these tests observe Ready=False/DeploymentUnavailable with Progressing=True
//! deterministically. Ready=True with real worker pods is proven end to end by
//! `tests/tests/e2e.rs` (the operator as a pod, the chart's images).

mod common;

use std::time::Duration;

use common::{Operator, WAIT, condition, deployment, install_crds, template_annotation, uid};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use pipewright_crds::conditions::{
    DEGRADED, DEPLOYMENT_UNAVAILABLE, PAUSED, POISON_MESSAGE, PROGRESSING, READY, SECRET_NOT_FOUND,
    SINK_UNRESOLVABLE,
};
use pipewright_crds::event_consumer::PartitionStatus;
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{
    TestEnv, TestNamespace, TestSchema, create_topic, eventually, kafka_config, kube_client,
    unique_name,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

const CONFIG_HASH: &str = "pipewright.io/config-hash";
/// The kinds of an EventConsumer's children, as `pipewright_operator_child_applies_total`
/// labels them.
const CHILD_KINDS: [&str; 5] = [
    "Deployment",
    "ConfigMap",
    "Service",
    "ServiceAccount",
    "PodDisruptionBudget",
];

async fn setup(prefix: &str) -> (Client, TestNamespace, Operator) {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, prefix).await;
    let operator = Operator::start(&ns.name, &[]);
    (client, ns, operator)
}

fn event_consumer(name: &str, topic: &str, extra: Value) -> EventConsumer {
    let mut spec = json!({
        "kafka": {"bootstrapServers": [TestEnv::get().kafka_bootstrap_servers]},
        "topics": [topic],
        "processing": {"deadLetterTopic": format!("{topic}.dlq")},
        "sink": {"log": {}},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "EventConsumer",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

async fn create<K>(client: &Client, ns: &str, obj: &K) -> K
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), obj)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", obj.name_any()))
}

/// Produces `count` records to one partition.
/// The worker configuration file the operator rendered into the ConfigMap `name`.
async fn consume_config(
    client: &Client,
    ns: &str,
    name: &str,
) -> pipewright_crds::worker_config::Consume {
    parse_consume_config(
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .unwrap(),
    )
}

fn parse_consume_config(cm: ConfigMap) -> pipewright_crds::worker_config::Consume {
    pipewright_crds::worker_config::from_json(
        &cm.data.unwrap()[pipewright_crds::worker_config::CONFIG_FILE],
    )
    .unwrap()
}

async fn produce(topic: &str, partition: i32, count: usize) {
    produce_aged(topic, partition, count, Duration::ZERO).await;
}

/// Produces `count` records to one partition, timestamped `age` ago.
async fn produce_aged(topic: &str, partition: i32, count: usize, age: Duration) {
    let producer: FutureProducer = kafka_config().create().unwrap();
    let stamp = std::time::SystemTime::now() - age;
    let stamp = stamp
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..count {
        let payload = format!("{{\"event_type\":\"test\",\"i\":{i}}}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .timestamp(stamp)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}/{partition}: {e}"));
    }
}

/// Commits `offset` for `group` on `topic/partition`, as a consumer of that group would.
fn commit(group: &str, topic: &str, partition: i32, offset: i64) {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

#[tokio::test]
async fn an_event_consumer_gets_owned_children_rolls_out_spec_changes_and_they_are_collected_on_delete()
 {
    let (client, ns, _operator) = setup("op-children").await;
    let topic = create_topic("op-children", 2).await;
    let ec = create(
        &client,
        &ns.name,
        &event_consumer("orders", &topic, json!({})),
    )
    .await;
    let child = "orders-consumer";

    let d = deployment(&client, &ns.name, child).await;
    let owned_by_ec =
        |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
            refs.iter().any(|r| {
                r.uid == uid(&ec) && r.kind == "EventConsumer" && r.controller == Some(true)
            })
        };
    assert!(owned_by_ec(d.owner_references()));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .get(child)
        .await
        .unwrap();
    assert!(owned_by_ec(cm.owner_references()));
    let file = parse_consume_config(cm);
    assert_eq!(file.topics, std::slice::from_ref(&topic));
    let svc = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get(child)
        .await
        .unwrap();
    assert!(owned_by_ec(svc.owner_references()));
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None"),
        "the workers' Service is headless"
    );
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
        .get(child)
        .await
        .unwrap();
    assert!(owned_by_ec(pdb.owner_references()));
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .get(child)
        .await
        .unwrap();
    assert!(owned_by_ec(sa.owner_references()));

    // Status: observed, not ready (the worker image cannot be pulled), rolling out.
    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    let status = eventually("status of the first generation", WAIT, || async {
        let ec = ecs.get("orders").await.ok()?;
        let s = ec.status?;
        (s.observed_generation == ec.metadata.generation
            && condition(&s.conditions, READY)?.reason == DEPLOYMENT_UNAVAILABLE)
            .then_some(s)
    })
    .await;
    assert_eq!(
        condition(&status.conditions, PROGRESSING).unwrap().status,
        "True"
    );
    assert_eq!(
        condition(&status.conditions, DEGRADED).unwrap().status,
        "False"
    );
    assert_eq!(
        status.group_id.as_deref(),
        Some(format!("{}.orders", ns.name).as_str())
    );
    assert!(status.selector.is_some());

    // A spec change rolls out: new pod template, and the Deployment controller makes a second
    // ReplicaSet for it.
    let before = template_annotation(&d, CONFIG_HASH).unwrap();
    ecs.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"processing": {"concurrency": 64}}})),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually("the pod template to change", WAIT, || async {
        let d = deployments.get(child).await.ok()?;
        (template_annotation(&d, CONFIG_HASH)? != before).then_some(())
    })
    .await;
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    eventually("a second ReplicaSet (the rollout)", WAIT, || async {
        let list = rss
            .list(&ListParams::default().labels("app.kubernetes.io/instance=orders"))
            .await
            .ok()?;
        (list.items.len() >= 2).then_some(())
    })
    .await;

    // Delete: the garbage collector removes every child.
    ecs.delete("orders", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the children to be garbage-collected", WAIT, || async {
        let gone = deployments.get_opt(child).await.ok()?.is_none()
            && Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
                .get_opt(child)
                .await
                .ok()?
                .is_none()
            && Api::<Service>::namespaced(client.clone(), &ns.name)
                .get_opt(child)
                .await
                .ok()?
                .is_none()
            && Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
                .get_opt(child)
                .await
                .ok()?
                .is_none()
            && Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
                .get_opt(child)
                .await
                .ok()?
                .is_none();
        gone.then_some(())
    })
    .await;
    ns.delete().await;
}

/// Upgrading from a release whose workers' Service had a cluster IP: the apiserver refuses to
/// make that one headless, and the operator may not delete Services, so it keeps it (same
/// object, same address) and applies it from then on without `clusterIP`.
#[tokio::test]
async fn a_workers_service_with_a_cluster_ip_from_an_earlier_release_is_kept_and_adopted() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "op-svc").await;
    let topic = create_topic("op-svc", 1).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let child = "orders-consumer";
    // As an earlier release made it: same name, selector and port, with a cluster IP.
    let old: Service = serde_json::from_value(json!({
        "metadata": {"name": child},
        "spec": {
            "selector": {"app.kubernetes.io/instance": "orders"},
            "ports": [{"name": "metrics", "port": 8080, "targetPort": "metrics"}],
        },
    }))
    .unwrap();
    let old = create(&client, &ns.name, &old).await;
    let old_ip = old
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap();
    assert_ne!(old_ip, "None");

    let _operator = Operator::start(&ns.name, &[]);
    let ec = create(
        &client,
        &ns.name,
        &event_consumer("orders", &topic, json!({})),
    )
    .await;
    let adopted = eventually("the Service owned by the EventConsumer", WAIT, || async {
        let svc = services.get_opt(child).await.ok()??;
        svc.owner_references()
            .iter()
            .any(|r| r.uid == uid(&ec))
            .then_some(svc)
    })
    .await;
    assert_eq!(adopted.uid(), old.uid(), "the same Service");
    assert_eq!(
        adopted.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
        Some(old_ip)
    );
    // The rest of the children are made, and the EventConsumer is not Degraded over it.
    deployment(&client, &ns.name, child).await;
    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    eventually("status written, not Degraded", WAIT, || async {
        let s = ecs.get("orders").await.ok()?.status?;
        (condition(&s.conditions, DEGRADED)?.status == "False").then_some(())
    })
    .await;
    ns.delete().await;
}

/// The operator applies a child only when it differs from what it last applied: the reconciles
/// its own applies trigger, and the status period's requeues, send nothing (counted by
/// `pipewright_operator_child_applies_total`, over reconciles counted by
/// `pipewright_operator_reconciles_total`); anyone else's change to a child — a deleted
/// ConfigMap, a Deployment's replicas changed by hand — is undone by the reconcile its watch
/// event triggers.
#[tokio::test]
async fn children_are_applied_again_only_when_the_spec_or_someone_else_changed_them() {
    let (client, ns, operator) = setup("op-applies").await;
    let topic = create_topic("op-applies", 1).await;
    create(
        &client,
        &ns.name,
        &event_consumer("orders", &topic, json!({})),
    )
    .await;
    let child = "orders-consumer";
    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    eventually("the first generation's status", WAIT, || async {
        let ec = ecs.get("orders").await.ok()?;
        (ec.status?.observed_generation == ec.metadata.generation).then_some(())
    })
    .await;
    let sent_of = |kind: &str, outcome: &str| {
        operator.metric(&format!(
            r#"pipewright_operator_child_applies_total{{kind="{kind}",outcome="{outcome}"}}"#
        ))
    };
    let reconciles = || operator.metric("pipewright_operator_reconciles_total");
    // Quiet: the applies stop growing while the requeues (every 2 s) go on.
    let quiet = |what: &'static str| async move {
        let mut last: Option<(f64, f64)> = None;
        eventually(what, WAIT, || {
            let sent_now: f64 = CHILD_KINDS
                .into_iter()
                .flat_map(|kind| [sent_of(kind, "sent"), sent_of(kind, "created")])
                .flatten()
                .sum();
            let r = reconciles().unwrap_or(0.0);
            let done = matches!(last, Some((s, r0)) if s == sent_now && r >= r0 + 3.0);
            if !matches!(last, Some((s, _)) if s == sent_now) {
                last = Some((sent_now, r));
            }
            async move { done.then_some(sent_now) }
        })
        .await
    };
    let settled = quiet("three reconciles in a row that apply nothing").await;
    assert!(
        sent_of("ConfigMap", "unchanged").unwrap_or(0.0) >= 3.0
            && sent_of("Deployment", "unchanged").unwrap_or(0.0) >= 3.0,
        "the requeues skipped the unchanged children"
    );

    // Someone deletes the ConfigMap: it comes back, a new object.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let old_uid = uid(&config_maps.get(child).await.unwrap());
    config_maps
        .delete(child, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted ConfigMap to be applied again",
        WAIT,
        || async {
            let cm = config_maps.get_opt(child).await.ok()??;
            (uid(&cm) != old_uid).then_some(())
        },
    )
    .await;

    // Someone scales the Deployment by hand: the operator's replicas come back.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let replicas = deployments.get(child).await.unwrap().spec.replicas;
    deployments
        .patch(
            child,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    eventually("the Deployment's replicas to be restored", WAIT, || async {
        let d = deployments.get(child).await.ok()?;
        (d.metadata.generation >= Some(3) && d.spec.replicas == replicas).then_some(())
    })
    .await;
    let after = quiet("quiet again after the repairs").await;
    assert!(
        after >= settled + 2.0,
        "the ConfigMap and the Deployment were applied again ({settled} → {after} applies sent)"
    );
    ns.delete().await;
}

/// The operator's entries in a child's `metadata.managedFields`: (operation, subresource).
fn operator_entries<K: Resource>(child: &K) -> Vec<(String, String)> {
    child
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() == Some(pipewright_operator::MANAGER))
        .map(|e| {
            (
                e.operation.clone().unwrap_or_default(),
                e.subresource.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// A child the operator's store does not have but the apiserver does (here a ServiceAccount of
/// the same name someone made without the operator's labels, so the operator's watch does not
/// list it) is refused as existing when created; the operator applies it instead, taking over
/// the fields it sets, and the other children are created.
#[tokio::test]
async fn a_child_that_exists_unseen_is_refused_as_existing_when_created_and_applied_instead() {
    let (client, ns, operator) = setup("op-exists").await;
    let topic = create_topic("op-exists", 1).await;
    let child = "orders-consumer";
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": child}})).unwrap(),
        )
        .await
        .unwrap();
    create(
        &client,
        &ns.name,
        &event_consumer("orders", &topic, json!({})),
    )
    .await;
    let applies = |kind: &str, outcome: &str| {
        operator.metric(&format!(
            r#"pipewright_operator_child_applies_total{{kind="{kind}",outcome="{outcome}"}}"#
        ))
    };
    eventually(
        "the ServiceAccount applied, with the operator's labels",
        WAIT,
        || async {
            let account = accounts.get(child).await.ok()?;
            let managed = account.labels().get("app.kubernetes.io/managed-by")
                == Some(&pipewright_operator::MANAGER.to_string());
            (managed
                && operator_entries(&account) == [("Apply".to_string(), String::new())]
                && applies("ServiceAccount", "sent").is_some_and(|n| n >= 1.0)
                && applies("Deployment", "created").is_some_and(|n| n >= 1.0))
            .then_some(())
        },
    )
    .await;
    // (A counter never incremented reads as 0: `Operator::metric` sums the matching lines.)
    assert_eq!(
        applies("ServiceAccount", "created"),
        Some(0.0),
        "the existing ServiceAccount was not created"
    );
    ns.delete().await;
}

/// A new resource's children are created (POST, not a server-side apply that creates): the
/// create records the operator's fields under an `Update` entry of `metadata.managedFields`,
/// which its server-side applies would leave in place. At a child's first apply the operator
/// hands them to its `Apply` entry and applies again: a setting removed from the spec (a pod
/// annotation, a toleration, a ServiceAccount annotation) is removed from the children, and
/// the children it changed hold one entry of the operator, `Apply`.
#[tokio::test]
async fn created_children_are_handed_to_server_side_apply_so_a_setting_removed_from_the_spec_leaves_them()
 {
    let (client, ns, operator) = setup("op-handover").await;
    let topic = create_topic("op-handover", 1).await;
    let pod = json!({"pod": {
        "annotations": {"example.com/trace": "on"},
        "serviceAccountAnnotations": {"example.com/role": "reader"},
        "tolerations": [{"key": "example.com/batch", "operator": "Exists", "effect": "NoSchedule"}],
    }});
    create(&client, &ns.name, &event_consumer("orders", &topic, pod)).await;
    let child = "orders-consumer";
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    eventually("every child", WAIT, || async {
        services.get_opt(child).await.ok()??;
        budgets.get_opt(child).await.ok()??;
        Some(())
    })
    .await;
    // The first reconcile found no child: each was created (counted once its create answered).
    let created = || {
        CHILD_KINDS.map(|kind| {
            operator.metric(&format!(
                r#"pipewright_operator_child_applies_total{{kind="{kind}",outcome="created"}}"#
            ))
        })
    };
    eventually("a create counted for each kind of child", WAIT, || async {
        created()
            .iter()
            .all(|n| n.is_some_and(|n| n >= 1.0))
            .then_some(())
    })
    .await;
    let tolerated = |d: &Deployment| {
        d.spec
            .template
            .spec
            .iter()
            .flat_map(|s| s.tolerations.iter().flatten())
            .any(|t| t.key.as_deref() == Some("example.com/batch"))
    };
    let deployment = deployments.get(child).await.unwrap();
    assert!(tolerated(&deployment), "the toleration is rolled out");
    assert_eq!(
        template_annotation(&deployment, "example.com/trace").as_deref(),
        Some("on")
    );

    Api::<EventConsumer>::namespaced(client.clone(), &ns.name)
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pod": null}})),
        )
        .await
        .unwrap();
    let applied_only = [("Apply".to_string(), String::new())];
    eventually(
        "the removed settings gone from the children, their fields held by the operator's Apply entry alone",
        WAIT,
        || async {
            let deployment = deployments.get(child).await.ok()?;
            let account = accounts.get(child).await.ok()?;
            (!tolerated(&deployment)
                && template_annotation(&deployment, "example.com/trace").is_none()
                && !account.annotations().contains_key("example.com/role")
                && operator_entries(&deployment) == applied_only
                && operator_entries(&account) == applied_only)
                .then_some(())
        },
    )
    .await;
    // Changed children are applied, not created again.
    assert_eq!(created(), [Some(1.0); 5], "each child created once");
    ns.delete().await;
}

/// Creates an outbox table shaped like the worker's migration (columns only) in `schema`.
/// Pod settings the resource's schema takes as they are but the pod's own validation refuses
/// (an unknown toleration operator): the Deployment is refused by the apiserver and the
/// resource shows Degraded/InvalidSpec with the apiserver's answer naming the field; fixed,
/// the Deployment carries the settings.
#[tokio::test]
async fn pod_settings_the_apiserver_refuses_show_as_invalid_spec_naming_the_field_then_apply_once_fixed()
 {
    let (client, ns, operator) = setup("op-pod").await;
    let topic = create_topic("op-pod", 1).await;
    let bad = json!({"pod": {
        "nodeSelector": {"disktype": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Maybe"}],
    }});
    create(&client, &ns.name, &event_consumer("placed", &topic, bad)).await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    let degraded = eventually("Degraded/InvalidSpec", WAIT, || async {
        let s = consumers.get("placed").await.ok()?.status?;
        let d = condition(&s.conditions, DEGRADED)?;
        (d.status == "True" && d.reason == "InvalidSpec").then_some(d.clone())
    })
    .await;
    assert!(
        degraded.message.contains("tolerations[0].operator"),
        "the condition names the field: {}",
        degraded.message
    );
    // The same condition on /metrics, for alerts.
    let series = format!(
        "pipewright_operator_resource_condition{{kind=\"EventConsumer\",namespace=\"{}\",name=\"placed\",condition=\"Degraded\",status=\"True\",reason=\"InvalidSpec\"}} 1",
        ns.name
    );
    let text = operator.metrics().expect("the operator's metrics");
    assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
    consumers
        .patch(
            "placed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pod": {"tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "events", "effect": "NoSchedule"}
            ]}}})),
        )
        .await
        .unwrap();
    let d = eventually("the Deployment with the pod settings", WAIT, || async {
        let d = Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .get_opt("placed-consumer")
            .await
            .ok()??;
        let spec = d.spec.template.spec.clone()?;
        (spec.tolerations.as_ref()?.len() == 1).then_some(spec)
    })
    .await;
    assert_eq!(d.node_selector.unwrap()["disktype"], "ssd");
    eventually("Degraded=False", WAIT, || async {
        let s = consumers.get("placed").await.ok()?.status?;
        (condition(&s.conditions, DEGRADED)?.status == "False").then_some(())
    })
    .await;
    eventually("the Degraded=True series removed", WAIT, || async {
        let text = operator.metrics()?;
        (!text.lines().any(|l| l == series)).then_some(())
    })
    .await;
    ns.delete().await;
}

async fn outbox_table(schema: &TestSchema) {
    sqlx::query(
        "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL, \
         aggregateid text NOT NULL, type text NOT NULL, payload jsonb, headers jsonb, \
         created_at timestamptz NOT NULL DEFAULT now(), seq bigserial UNIQUE, \
         txid xid8 NOT NULL DEFAULT pg_current_xact_id(), published_at timestamptz)",
    )
    .execute(&schema.pool)
    .await
    .unwrap();
}

async fn insert_rows(schema: &TestSchema, count: usize, published: bool) {
    for i in 0..count {
        sqlx::query(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, published_at) \
             VALUES (gen_random_uuid(), 'order', $1, 'created', '{}', \
             CASE WHEN $2 THEN now() ELSE NULL END)",
        )
        .bind(format!("o-{i}"))
        .bind(published)
        .execute(&schema.pool)
        .await
        .unwrap();
    }
}

fn outbox(name: &str, table: &str, secret: &str) -> Outbox {
    serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "Outbox",
        "metadata": {"name": name},
        "spec": {
            "database": {"dsnSecretRef": {"name": secret, "key": "dsn"}},
            "table": table,
            "kafka": {"bootstrapServers": [TestEnv::get().kafka_bootstrap_servers]},
            "topic": "orders",
            "cleanup": {"policy": "markPublished"},
        },
    }))
    .unwrap()
}

fn dsn_secret(name: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some([("dsn".to_string(), TestEnv::get().database_url.clone())].into()),
        ..Secret::default()
    }
}

#[tokio::test]
async fn a_missing_secret_is_reported_as_secret_not_found_until_it_exists_then_the_outbox_recovers()
{
    let (client, ns, _operator) = setup("op-secret").await;
    let schema = TestSchema::create("op_secret").await;
    outbox_table(&schema).await;
    let table = format!("{}.outbox", schema.name);
    create(&client, &ns.name, &outbox("orders", &table, "db")).await;

    let outboxes: Api<Outbox> = Api::namespaced(client.clone(), &ns.name);
    eventually("Degraded/SecretNotFound", WAIT, || async {
        let s = outboxes.get("orders").await.ok()?.status?;
        let d = condition(&s.conditions, DEGRADED)?;
        (d.status == "True" && d.reason == SECRET_NOT_FOUND).then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments
            .get_opt("orders-outbox")
            .await
            .unwrap()
            .is_none(),
        "nothing is rolled out without the Secret"
    );

    // The Secret watch brings the resource back; no spec change needed.
    create(&client, &ns.name, &dsn_secret("db")).await;
    let status = eventually(
        "recovery: Degraded=False, Progressing=True",
        WAIT,
        || async {
            let s = outboxes.get("orders").await.ok()?.status?;
            let degraded = condition(&s.conditions, DEGRADED)?;
            let progressing = condition(&s.conditions, PROGRESSING)?;
            (degraded.status == "False" && progressing.status == "True").then_some(s)
        },
    )
    .await;
    assert_eq!(
        condition(&status.conditions, READY).unwrap().reason,
        DEPLOYMENT_UNAVAILABLE
    );
    let d = deployment(&client, &ns.name, "orders-outbox").await;
    let secrets_hash = template_annotation(&d, "pipewright.io/secrets-hash").unwrap();

    // A change of the Secret rolls the pods (new secrets hash in the template).
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"other": "x"}})),
        )
        .await
        .unwrap();
    eventually("the secrets hash to change", WAIT, || async {
        let d = deployments.get("orders-outbox").await.ok()?;
        (template_annotation(&d, "pipewright.io/secrets-hash")? != secrets_hash).then_some(())
    })
    .await;
    schema.drop().await;
    ns.delete().await;
}

#[tokio::test]
async fn outbox_pending_equals_the_rows_really_pending_in_the_table() {
    let (client, ns, operator) = setup("op-backlog").await;
    let schema = TestSchema::create("op_backlog").await;
    outbox_table(&schema).await;
    insert_rows(&schema, 4, false).await;
    insert_rows(&schema, 3, true).await;
    create(&client, &ns.name, &dsn_secret("db")).await;
    let table = format!("{}.outbox", schema.name);
    create(&client, &ns.name, &outbox("orders", &table, "db")).await;

    let outboxes: Api<Outbox> = Api::namespaced(client.clone(), &ns.name);
    let status = eventually("pending = 4", WAIT, || async {
        let s = outboxes.get("orders").await.ok()?.status?;
        (s.pending == Some(4)).then_some(s)
    })
    .await;
    assert!(status.oldest_pending_age_seconds.is_some_and(|a| a >= 0));
    assert!(status.measured_time.is_some());
    let text = operator.metrics().expect("the operator's metrics");
    assert!(
        text.lines().any(|l| l
            == format!(
                "pipewright_operator_outbox_pending{{namespace=\"{}\",outbox=\"orders\"}} 4",
                ns.name
            )),
        "{text}"
    );

    insert_rows(&schema, 2, false).await;
    eventually("pending = 6 after two more rows", WAIT, || async {
        let s = outboxes.get("orders").await.ok()?.status?;
        (s.pending == Some(6)).then_some(())
    })
    .await;
    schema.drop().await;
    ns.delete().await;
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn status_lag_equals_what_the_consumer_group_committed_on_the_broker() {
    let (client, ns, operator) = setup("op-lag").await;
    let topic = create_topic("op-lag", 3).await;
    let group = unique_name("group");
    // Partition 0's records are an hour old (their timestamps say so): its lag in seconds.
    produce_aged(&topic, 0, 10, HOUR).await;
    produce(&topic, 1, 5).await;
    commit(&group, &topic, 0, 4);
    create(
        &client,
        &ns.name,
        &event_consumer("orders", &topic, json!({"groupId": group})),
    )
    .await;

    let expected = vec![
        PartitionStatus {
            topic: topic.clone(),
            partition: 0,
            committed: Some(4),
            end: 10,
            lag: 6,
            lag_seconds: None,
        },
        // Nothing committed: lag from the start (initialOffset earliest).
        PartitionStatus {
            topic: topic.clone(),
            partition: 1,
            committed: None,
            end: 5,
            lag: 5,
            lag_seconds: None,
        },
        PartitionStatus {
            topic: topic.clone(),
            partition: 2,
            committed: None,
            end: 0,
            lag: 0,
            lag_seconds: None,
        },
    ];
    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    // Lag in seconds aside (it grows while the test runs), the figures as committed.
    let without_seconds = |partitions: &[PartitionStatus]| -> Vec<PartitionStatus> {
        partitions
            .iter()
            .map(|p| PartitionStatus {
                lag_seconds: None,
                ..p.clone()
            })
            .collect()
    };
    let status = eventually("the measured lag", WAIT, || async {
        let s = ecs.get("orders").await.ok()?.status?;
        (without_seconds(&s.partitions) == expected).then_some(s)
    })
    .await;
    assert_eq!(status.total_lag, Some(11));
    // The age of the record where each partition's lag starts: offset 4 of partition 0, an
    // hour old; partition 1's first record, just produced; no lag, 0.
    let seconds: Vec<Option<i64>> = status.partitions.iter().map(|p| p.lag_seconds).collect();
    let hour = HOUR.as_secs() as i64;
    let limit = WAIT.as_secs() as i64 * 3;
    assert!(
        matches!(seconds[..], [Some(a), Some(b), Some(0)] if (hour..hour + limit).contains(&a) && (0..limit).contains(&b)),
        "lagSeconds {seconds:?}"
    );
    assert_eq!(status.max_lag_seconds, seconds[0]);
    assert_eq!(status.group_id.as_deref(), Some(group.as_str()));
    // The same figures on the operator's /metrics, under kafka_exporter's names.
    let series = |text: &str, name: &str, topic_partition: Option<i32>| -> Option<f64> {
        let labels = format!(
            "{{namespace=\"{}\",eventconsumer=\"orders\",consumergroup=\"{group}\",topic=\"{topic}\"{}}} ",
            ns.name,
            topic_partition.map_or(String::new(), |p| format!(",partition=\"{p}\""))
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{labels}")))
            .and_then(|v| v.trim().parse().ok())
    };
    let text = operator.metrics().expect("the operator's metrics");
    for p in &expected {
        assert_eq!(
            series(
                &text,
                "pipewright_operator_consumergroup_lag",
                Some(p.partition)
            ),
            Some(p.lag as f64),
            "partition {}:\n{text}",
            p.partition
        );
    }
    assert_eq!(
        series(&text, "pipewright_operator_consumergroup_lag_sum", None),
        Some(11.0)
    );
    let metric_seconds = series(
        &text,
        "pipewright_operator_consumergroup_lag_seconds",
        Some(0),
    )
    .expect("lag seconds of partition 0");
    assert!(
        metric_seconds >= seconds[0].unwrap() as f64
            && metric_seconds < (seconds[0].unwrap() + limit) as f64,
        "the metric ({metric_seconds}) is the status' figure or a later one"
    );

    // The group catches up on partition 0: the next refresh shows it.
    commit(&group, &topic, 0, 10);
    eventually("lag 5 after the commit", WAIT, || async {
        let s = ecs.get("orders").await.ok()?.status?;
        (s.total_lag == Some(5)).then_some(())
    })
    .await;
    let text = operator.metrics().expect("the operator's metrics");
    assert_eq!(
        series(&text, "pipewright_operator_consumergroup_lag_sum", None),
        Some(5.0),
        "the metric follows the status"
    );
    // Deleted: its series go with it.
    ecs.delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the lag series removed", WAIT, || async {
        let text = operator.metrics()?;
        (!text.contains(&format!(
            "eventconsumer=\"orders\",consumergroup=\"{group}\""
        )))
        .then_some(())
    })
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn autoscaling_adds_replicas_when_lag_crosses_the_threshold_and_caps_at_the_partition_count()
{
    let (client, ns, _operator) = setup("op-scale").await;
    let topic = create_topic("op-scale", 3).await;
    create(
        &client,
        &ns.name,
        &event_consumer(
            "orders",
            &topic,
            json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 10, "lagThreshold": 5}}),
        ),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let replicas = |want: i32| {
        let deployments = deployments.clone();
        async move {
            eventually(&format!("{want} replicas"), WAIT, || async {
                let d = deployments.get_opt("orders-consumer").await.ok()??;
                (d.spec.replicas == Some(want)).then_some(())
            })
            .await
        }
    };
    replicas(1).await;
    // Lag 7 > threshold 5: two replicas.
    produce(&topic, 0, 7).await;
    replicas(2).await;
    // Lag 107 would ask for 22; three partitions cap it at 3.
    produce(&topic, 1, 100).await;
    replicas(3).await;
    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    eventually("the status to show lag 107", WAIT, || async {
        let s = ecs.get("orders").await.ok()?.status?;
        (s.total_lag == Some(107)).then_some(())
    })
    .await;
    let d = deployments.get("orders-consumer").await.unwrap();
    assert_eq!(d.spec.replicas, Some(3), "capped at the partition count");
    ns.delete().await;
}

#[tokio::test]
async fn a_paused_resource_is_left_alone_and_unpausing_applies_the_pending_change() {
    let (client, ns, _operator) = setup("op-pause").await;
    let topic = create_topic("op-pause", 1).await;
    create(
        &client,
        &ns.name,
        &event_consumer("orders", &topic, json!({})),
    )
    .await;
    let d = deployment(&client, &ns.name, "orders-consumer").await;
    let hash = template_annotation(&d, CONFIG_HASH).unwrap();

    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    ecs.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"pipewright.io/paused": "true"}}})),
    )
    .await
    .unwrap();
    let ec = ecs
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"processing": {"concurrency": 3}}})),
        )
        .await
        .unwrap();
    let generation = ec.metadata.generation;
    // The operator saw the new generation while paused...
    eventually(
        "Progressing=False/Paused for the new generation",
        WAIT,
        || async {
            let s = ecs.get("orders").await.ok()?.status?;
            let p = condition(&s.conditions, PROGRESSING)?;
            (p.reason == PAUSED && p.observed_generation == generation).then_some(())
        },
    )
    .await;
    // ...and changed nothing.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = deployments.get("orders-consumer").await.unwrap();
    assert_eq!(template_annotation(&d, CONFIG_HASH).unwrap(), hash);
    let s = ecs.get("orders").await.unwrap().status.unwrap();
    assert_ne!(
        s.observed_generation, generation,
        "a paused spec is not observed"
    );

    ecs.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"pipewright.io/paused": null}}})),
    )
    .await
    .unwrap();
    eventually("the pending change to roll out", WAIT, || async {
        let d = deployments.get("orders-consumer").await.ok()?;
        (template_annotation(&d, CONFIG_HASH)? != hash).then_some(())
    })
    .await;
    eventually("Progressing no longer Paused", WAIT, || async {
        let s = ecs.get("orders").await.ok()?.status?;
        (condition(&s.conditions, PROGRESSING)?.reason != PAUSED
            && s.observed_generation == generation)
            .then_some(())
    })
    .await;
    ns.delete().await;
}

/// The kubelet reports a worker's termination message in the pod status; here the test writes
/// that status itself (pods/status, as the kubelet does) on a pod carrying the worker's labels,
/// gated so that the node's kubelet never takes it over.
#[tokio::test]
async fn a_worker_stopped_by_a_poison_message_makes_the_resource_degraded_with_reason_poison_message()
 {
    let (client, ns, _operator) = setup("op-poison").await;
    let topic = create_topic("op-poison", 1).await;
    let ec = create(
        &client,
        &ns.name,
        &event_consumer("audit", &topic, json!({})),
    )
    .await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    eventually("the worker Deployment", WAIT, || async {
        Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .get_opt("audit-consumer")
            .await
            .unwrap()
    })
    .await;

    // Owned by the resource (a controller reference), so no ReplicaSet adopts it.
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "audit-consumer-poisoned",
            "labels": pipewright_operator::workload::labels(
                "audit", pipewright_operator::workload::Component::EventConsumer),
            "ownerReferences": [{
                "apiVersion": "pipewright.io/v1alpha1", "kind": "EventConsumer",
                "name": "audit", "uid": uid(&ec), "controller": true,
            }],
        },
        // Gated: never scheduled, so no kubelet of the test environment's node touches it and
        // the status below stays what this test writes.
        "spec": {
            "schedulingGates": [{"name": "pipewright.io/test-no-kubelet"}],
            "containers": [{"name": "worker", "image": "pipewright-worker:test"}],
        },
    }))
    .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let report = format!("PoisonMessage: {topic}/0/41 (invalid event): expected value at line 1");
    pods.patch_status(
        "audit-consumer-poisoned",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"containerStatuses": [{
            "name": "worker", "ready": false, "restartCount": 1, "image": "pipewright-worker:test",
            "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": report}},
        }]}})),
    )
    .await
    .unwrap();

    let degraded = eventually("Degraded/PoisonMessage", WAIT, || async {
        let s = consumers.get("audit").await.ok()?.status?;
        let d = condition(&s.conditions, DEGRADED)?.clone();
        (d.status == "True" && d.reason == POISON_MESSAGE).then_some(d)
    })
    .await;
    assert!(
        degraded.message.contains(&format!("{topic}/0/41")),
        "{}",
        degraded.message
    );
    ns.delete().await;
}

/// Apply first: a new EventConsumer gets its Deployment while its Kafka measurement is still
/// pending — against a "broker" that accepts connections and never answers, with a 120 s
/// measurement deadline — and its status (written at the end of the reconcile, after the
/// measurement) is still unwritten when the Deployment is there.
#[tokio::test]
async fn a_new_event_consumer_gets_its_deployment_before_its_kafka_measurement_finishes() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "op-apply-first").await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let _operator = Operator::start(&ns.name, &["--measure-timeout", "120s"]);
    let ec = event_consumer(
        "silent",
        "never-measured",
        json!({"kafka": {"bootstrapServers": [addr]}}),
    );
    create(&client, &ns.name, &ec).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually("the EventConsumer's Deployment", WAIT, || async {
        let list = deployments.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|d| {
                d.owner_references()
                    .iter()
                    .any(|o| o.kind == "EventConsumer" && o.name == "silent")
            })
            .then_some(())
    })
    .await;
    let ec = Api::<EventConsumer>::namespaced(client.clone(), &ns.name)
        .get("silent")
        .await
        .unwrap();
    assert!(
        ec.status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .is_none(),
        "the status is written only after the measurement, which cannot have finished: {:?}",
        ec.status
    );
    holding.abort();
    ns.delete().await;
}

#[tokio::test]
async fn an_http_sink_naming_a_service_is_unresolvable_until_the_service_and_its_port_exist_then_delivers_to_its_address()
 {
    let (client, ns, _operator) = setup("op-sinkref").await;
    let topic = create_topic("op-sinkref", 1).await;
    let sink = json!({"http": {"ref": {"kind": "Service", "name": "hooks"}, "path": "/orders"}});
    create(
        &client,
        &ns.name,
        &event_consumer("orders", &topic, json!({"sink": sink})),
    )
    .await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    let degraded = |message: &'static str| {
        let consumers = consumers.clone();
        async move {
            eventually(
                &format!("Degraded/SinkUnresolvable: {message}"),
                WAIT,
                || async {
                    let s = consumers.get("orders").await.ok()?.status?;
                    let d = condition(&s.conditions, DEGRADED)?;
                    (d.status == "True"
                        && d.reason == SINK_UNRESOLVABLE
                        && d.message.contains(message)
                        && s.sink_uri.is_none())
                    .then_some(())
                },
            )
            .await
        }
    };
    degraded("does not exist").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments
            .get_opt("orders-consumer")
            .await
            .unwrap()
            .is_none(),
        "nothing is rolled out while the sink does not resolve"
    );

    // A Service with two ports: which one is meant must be said.
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "hooks"},
        "spec": {"ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]},
    }))
    .unwrap();
    create(&client, &ns.name, &service).await;
    degraded("has 2 TCP ports (9090, 8080): set ref.port").await;

    consumers
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sink": {"http": {"ref": {"port": 8080}}}}})),
        )
        .await
        .unwrap();
    let expected = format!("http://hooks.{}.svc.cluster.local:8080/orders", ns.name);
    let status = eventually("status.sinkUri", WAIT, || async {
        let s = consumers.get("orders").await.ok()?.status?;
        let d = condition(&s.conditions, DEGRADED)?;
        (d.status == "False" && s.sink_uri.is_some()).then_some(s)
    })
    .await;
    assert_eq!(status.sink_uri.as_deref(), Some(expected.as_str()));
    let file = consume_config(&client, &ns.name, "orders-consumer").await;
    let pipewright_crds::worker_config::Sink::Http(http) = &file.sink else {
        panic!("an HTTP sink: {:?}", file.sink);
    };
    assert_eq!(
        http.url, expected,
        "the workers deliver to the resolved address"
    );

    // The Service goes: Degraded again, the workers keep what they run.
    Api::<Service>::namespaced(client.clone(), &ns.name)
        .delete("hooks", &DeleteParams::default())
        .await
        .unwrap();
    degraded("does not exist").await;
    assert!(
        deployments
            .get_opt("orders-consumer")
            .await
            .unwrap()
            .is_some()
    );
    ns.delete().await;
}

#[tokio::test]
async fn a_dead_letter_sink_naming_a_service_is_unresolvable_until_it_exists_then_the_workers_post_dead_letters_to_its_address()
 {
    let (client, ns, _operator) = setup("op-dlsink").await;
    let topic = create_topic("op-dlsink", 1).await;
    let processing = json!({"deadLetterSink": {"http": {
        "ref": {"kind": "Service", "name": "dead-letters"}, "path": "/parked",
        "timeout": "3s", "headersSecretRef": {"name": "dead-letter-auth"},
    }}});
    create(
        &client,
        &ns.name,
        &event_consumer("orders", &topic, json!({"processing": processing})),
    )
    .await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    let d = eventually(
        "Degraded/SinkUnresolvable naming the dead-letter reference",
        WAIT,
        || async {
            let s = consumers.get("orders").await.ok()?.status?;
            let d = condition(&s.conditions, DEGRADED)?.clone();
            (d.status == "True" && d.reason == SINK_UNRESOLVABLE).then_some((d, s))
        },
    )
    .await;
    assert_eq!(
        d.0.message,
        format!(
            "processing.deadLetterSink.http.ref: Service {}/dead-letters does not exist",
            ns.name
        )
    );
    assert!(d.1.dead_letter_sink_uri.is_none());

    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "dead-letters"},
        "spec": {"ports": [{"name": "http", "port": 8081}]},
    }))
    .unwrap();
    create(&client, &ns.name, &service).await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "dead-letter-auth"},
        "stringData": {"Authorization": "Bearer planted-dead-letter-token"},
    }))
    .unwrap();
    create(&client, &ns.name, &secret).await;
    let expected = format!(
        "http://dead-letters.{}.svc.cluster.local:8081/parked",
        ns.name
    );
    let status = eventually("status.deadLetterSinkUri", WAIT, || async {
        let s = consumers.get("orders").await.ok()?.status?;
        let d = condition(&s.conditions, DEGRADED)?;
        (d.status == "False" && s.dead_letter_sink_uri.is_some()).then_some(s)
    })
    .await;
    assert_eq!(
        status.dead_letter_sink_uri.as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(status.sink_uri, None, "a log sink has no address");
    let file = consume_config(&client, &ns.name, "orders-consumer").await;
    let http = file
        .processing
        .dead_letter_http
        .expect("the workers' dead letters go over HTTP");
    assert_eq!(http.url, expected, "to the resolved address");
    assert_eq!(http.timeout, Duration::from_secs(3));
    assert_eq!(file.processing.dead_letter_topic, None);
    // The token is mounted from its Secret, never copied into the configuration.
    let dir = http.headers_secret_dir.expect("the headers Secret mounted");
    let pod = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("orders-consumer")
        .await
        .unwrap()
        .spec
        .template
        .spec
        .unwrap();
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| std::path::Path::new(&m.mount_path) == dir)
        .expect("a mount at the headers directory");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("dead-letter-auth")
    );
    ns.delete().await;
}

/// The resourceVersion of the first write to `name` since `since` that `matches` (the object
/// as that write left it), read from a watch that starts at `since`. In one etcd a
/// resourceVersion is the revision of the write (opaque to clients in general), so these order
/// writes across kinds.
async fn written_at<K>(
    client: &Client,
    ns: &str,
    name: &str,
    since: &str,
    matches: impl Fn(&K) -> bool,
) -> u64
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    use futures::StreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let api = Api::<K>::namespaced(client.clone(), ns);
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(60);
    let mut events = api.watch(&params, since).await.unwrap().boxed();
    while let Some(event) = events.next().await {
        if let WatchEvent::Added(obj) | WatchEvent::Modified(obj) = event.unwrap()
            && matches(&obj)
        {
            return obj.resource_version().unwrap().parse().unwrap();
        }
    }
    panic!("no matching write to {} {name} within 60 s", K::kind(&()));
}

/// The resourceVersion a namespace's list is at now: a watch from it sees only later writes.
async fn now_at<K>(client: &Client, ns: &str) -> String
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

/// A new resource's ServiceAccount, ConfigMap and Deployment are sent in one step and its
/// first pod is admitted at the first try: no `FailedCreate` on its ReplicaSet (the Events
/// of the ReplicaSet controller are written in order, so once its `SuccessfulCreate` for the
/// pod is there, a `FailedCreate` before it would be too). The Service and
/// PodDisruptionBudget come after the Deployment. A changed ConfigMap is written before the
/// Deployment's new pod template, so no new pod starts on the old configuration.
#[tokio::test]
async fn a_new_resources_first_pod_is_admitted_at_once_and_a_changed_config_map_is_written_before_the_rollout()
 {
    let (client, ns, _operator) = setup("op-apply-order").await;
    let since = now_at::<ServiceAccount>(&client, &ns.name).await;
    let topic = unique_name("apply-order");
    create(
        &client,
        &ns.name,
        &event_consumer("ordered", &topic, json!({})),
    )
    .await;
    let child = "ordered-consumer";
    let (nsn, since) = (ns.name.as_str(), since.as_str());
    fn any<K>(_: &K) -> bool {
        true
    }
    written_at::<ServiceAccount>(&client, nsn, child, since, any).await;
    written_at::<ConfigMap>(&client, nsn, child, since, any).await;
    let created = written_at::<Deployment>(&client, nsn, child, since, any).await;
    let service = written_at::<Service>(&client, nsn, child, since, any).await;
    let budget = written_at::<PodDisruptionBudget>(&client, nsn, child, since, any).await;
    assert!(
        created < service && created < budget,
        "the Service ({service}) and PodDisruptionBudget ({budget}) do not delay the \
         Deployment ({created})"
    );

    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), nsn);
    let of_replica_sets = |reason: &str| {
        ListParams::default().fields(&format!("involvedObject.kind=ReplicaSet,reason={reason}"))
    };
    eventually(
        "the ReplicaSet controller's SuccessfulCreate",
        WAIT,
        || async {
            let list = events
                .list(&of_replica_sets("SuccessfulCreate"))
                .await
                .ok()?;
            (!list.items.is_empty()).then_some(())
        },
    )
    .await;
    let refused = events
        .list(&of_replica_sets("FailedCreate"))
        .await
        .unwrap()
        .items;
    assert!(
        refused.is_empty(),
        "the first pod is admitted at once; refused: {:?}",
        refused.iter().map(|e| &e.message).collect::<Vec<_>>()
    );

    // A change to the configuration: the ConfigMap's new data before the new pod template.
    let since = now_at::<ConfigMap>(&client, nsn).await;
    let before = template_annotation(&deployment(&client, nsn, child).await, CONFIG_HASH);
    Api::<EventConsumer>::namespaced(client.clone(), nsn)
        .patch(
            "ordered",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"processing": {"concurrency": 64}}})),
        )
        .await
        .unwrap();
    let config_map = written_at::<ConfigMap>(&client, nsn, child, &since, any).await;
    let rollout = written_at::<Deployment>(&client, nsn, child, &since, |d| {
        template_annotation(d, CONFIG_HASH) != before
    })
    .await;
    assert!(
        config_map < rollout,
        "the changed ConfigMap ({config_map}) is written before the Deployment's new pod \
         template ({rollout})"
    );
    ns.delete().await;
}

/// The operator's Event recorder ([`pipewright_operator::events`]) against the real apiserver:
/// the same event three times is one Event whose series counts 3 (a merge patch the
/// apiserver's Event validation accepts), another reason is an Event of its own, and a repeat
/// of an Event that is gone makes a new one.
#[tokio::test]
async fn a_repeated_event_is_counted_on_its_first_events_series_and_a_gone_one_is_made_again() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Reporter};
    use pipewright_operator::events::Recorder;

    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "op-events").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let about: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "about"}})).unwrap();
    let about = config_maps
        .create(&PostParams::default(), &about)
        .await
        .unwrap();
    let regarding = about.object_ref(&());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "pipewright-test".into(),
            instance: Some("events-test".into()),
        },
    );
    let event = |reason: &str| Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(format!("{reason} is True")),
        action: "Reconcile".into(),
        secondary: None,
    };
    for reason in ["Ready", "Ready", "Ready", "Degraded"] {
        recorder.publish(&event(reason), &regarding).await.unwrap();
    }
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns.name);
    let listed = |reason: &'static str| {
        let events = events.clone();
        async move {
            let mut found: Vec<K8sEvent> = events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .collect();
            found.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
            found
        }
    };
    let ready = listed("Ready").await;
    assert_eq!(ready.len(), 1, "{ready:?}");
    let series = ready[0]
        .series
        .as_ref()
        .expect("a series on the first Event");
    assert_eq!(series.count, 3);
    assert!(series.last_observed_time.0 >= ready[0].event_time.as_ref().unwrap().0);
    assert_eq!(ready[0].note.as_deref(), Some("Ready is True"));
    assert_eq!(
        ready[0].regarding.as_ref().and_then(|r| r.uid.clone()),
        about.uid()
    );
    assert_eq!(ready[0].reporting_instance.as_deref(), Some("events-test"));
    let degraded = listed("Degraded").await;
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert!(degraded[0].series.is_none());

    events
        .delete(&ready[0].name_any(), &DeleteParams::default())
        .await
        .unwrap();
    recorder.publish(&event("Ready"), &regarding).await.unwrap();
    let again = listed("Ready").await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0].name_any(), ready[0].name_any());
    assert!(again[0].series.is_none(), "a new Event: {again:?}");
    ns.delete().await;
}
