//! The bad-input catalogue of resources at run time (issue 15): resources the schema accepts
//! but that cannot run as they are — a Secret missing, without its key, with a key the worker
//! does not allow, deleted while the workers run; bootstrap servers nobody answers at; a DSN
//! that is no URL, whose login the database refuses, or where no database listens; an outbox
//! table that does not exist, has columns of the wrong type or no stamping trigger. All at
//! once in one namespace with the chart's operator and real worker pods. Each must show as
//! `Degraded=True` with its own reason and a message that says what to fix, and nothing is
//! lost: the records stay in Kafka uncommitted (or, where a Secret arrives late or goes away
//! under running workers, every record is committed once delivered), the outbox rows stay
//! pending and nothing is published. `make chaos` writes the table into docs/reliability.md.

mod common;

use std::time::Duration;

use common::{NODE, Stack, WAIT, bootstrap, event_consumer, outbox, var};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, PostParams};
use pipewright_crds::conditions;
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{TestEnv, create_topic, eventually, kafka_config};
use pipewright_worker::outbox::{self as obx, OutboxEvent, Table};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::json;

/// Records on each consumed topic before the resources exist.
const RECORDS: i64 = 20;
/// Outbox rows waiting before the resources exist.
const ROWS: i64 = 10;

#[derive(Serialize)]
#[serde(tag = "event_type")]
enum Event {
    Step { n: i64 },
}

impl OutboxEvent for Event {
    fn aggregate_type(&self) -> &str {
        "step"
    }
    fn aggregate_id(&self) -> String {
        "a".into()
    }
}

async fn produce(topic: &str, from: i64, count: i64) {
    let producer: FutureProducer = kafka_config().create().unwrap();
    for n in from..from + count {
        let value = format!(r#"{{"event_type":"Step","n":{n}}}"#);
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(&value),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
}

/// The group's committed offset of partition 0 (`None`: nothing committed).
fn committed(group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = kafka_config().set("group.id", group).create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, 0);
    let offsets = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    match offsets.find_partition(topic, 0)?.offset() {
        rdkafka::Offset::Offset(n) => Some(n),
        _ => None,
    }
}

/// Records in partition 0 of `topic` (its high watermark).
fn records_in(topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka_config().create().unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .1
}

/// The Degraded condition of a resource once it is True with `reason` and a message that
/// contains `cause`, as "reason: message".
async fn degraded<K>(stack: &Stack, name: &str, reason: &str, cause: &str) -> String
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + HasConditions,
{
    let api = stack.api::<K>();
    let mut last = String::new();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(obj) = api.get(name).await
                && let Some(d) = obj.conditions().iter().find(|c| c.type_ == "Degraded")
            {
                last = format!("{}/{}: {}", d.status, d.reason, d.message);
                if d.status == "True" && d.reason == reason && d.message.contains(cause) {
                    return format!("{}: {}", d.reason, d.message);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!("{name}: Degraded=True/{reason} naming {cause:?} not seen; last: {last}")
    })
}

/// What the Degraded message of a consumer must name besides its reason: the Kafka cases say
/// what failed, not only librdkafka's "Broker transport failure" (the cause may come with the
/// measurement after the first, once librdkafka has tried the address).
fn cause_of(name: &str) -> &'static str {
    match name {
        "bootstrap-refused" => "Connection refused",
        "bootstrap-unresolvable" => "Failed to resolve",
        _ => "",
    }
}

trait HasConditions {
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>;
}

impl HasConditions for EventConsumer {
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

impl HasConditions for Outbox {
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

/// The worker pods of `instance` as a person would sum them up.
async fn workers(stack: &Stack, instance: &str) -> String {
    let pods = stack.worker_pods(instance).await;
    if pods.is_empty() {
        return "no worker pod".into();
    }
    pods.iter()
        .map(|p: &Pod| {
            let Some(c) = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
            else {
                return "pending".to_string();
            };
            let exit = [&c.state, &c.last_state]
                .into_iter()
                .flatten()
                .find_map(|s| Some(s.terminated.as_ref()?.exit_code));
            let waiting = c
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref()?.reason.clone());
            match (c.ready, waiting, exit) {
                (true, _, _) => "running, ready".to_string(),
                (false, Some(w), Some(code)) => format!("{w}, exit {code}"),
                (false, _, Some(code)) => format!("restarting, exit {code}"),
                (false, Some(w), None) => w,
                (false, None, None) => "running, not ready".to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn cell(text: &str) -> String {
    let text: String = text.chars().take(220).collect();
    text.replace('|', "\\|").replace('\n', " ")
}

#[tokio::test]
async fn e2e_bad_resources_catalogue_each_is_degraded_with_its_own_reason_and_nothing_is_lost() {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-badres").await;
    let schema = stack.schema.name.clone();
    let node = var("PIPEWRIGHT_NODE_IP");
    let url = TestEnv::get().database_url.clone();
    let topic = create_topic("e2e-badres", 1).await;
    let deleted_topic = create_topic("e2e-badres-deleted", 1).await;
    let out = create_topic("e2e-badres-out", 1).await;
    produce(&topic, 0, RECORDS).await;
    produce(&deleted_topic, 0, RECORDS).await;

    // Outbox tables: the migration's, with rows waiting; one with columns of the wrong type
    // (a bytea payload, a bigint txid), one without the stamping trigger.
    obx::MIGRATOR.run(&stack.schema.pool).await.unwrap();
    let table = Table::parse(&format!("{schema}.outbox")).unwrap();
    let mut tx = stack.schema.pool.begin().await.unwrap();
    for n in 0..ROWS {
        obx::enqueue_into(&mut tx, &table, &Event::Step { n })
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE mistyped (id uuid PRIMARY KEY, aggregatetype text, aggregateid text, \
         type text, payload bytea, created_at timestamptz DEFAULT now(), seq bigint, \
         txid bigint);
         CREATE TRIGGER mistyped_stamp BEFORE INSERT ON mistyped \
         FOR EACH ROW EXECUTE FUNCTION pipewright_outbox_stamp('outbox_seq');
         CREATE TABLE unstamped (id uuid PRIMARY KEY, aggregatetype text, aggregateid text, \
         type text, payload jsonb, created_at timestamptz DEFAULT now(), seq bigint, \
         txid xid8);",
    )
    .execute(&stack.schema.pool)
    .await
    .unwrap();

    let secrets = [
        json!({"metadata": {"name": "kafka-bad-key"}, "stringData": {"sasl.passwd": "x"}}),
        json!({"metadata": {"name": "kafka-plain"},
               "stringData": {"security.protocol": "plaintext"}}),
        json!({"metadata": {"name": "db-other-key"}, "stringData": {"url": url}}),
        json!({"metadata": {"name": "db-not-a-url"},
               "stringData": {"dsn": "host=db user=app dbname=app"}}),
        json!({"metadata": {"name": "db-no-such-role"},
               "stringData": {"dsn": url.replacen("://postgres@", "://nobody_here:wrong@", 1)}}),
        json!({"metadata": {"name": "db-nobody-listens"},
               "stringData": {"dsn": format!("postgres://postgres@{node}:1/postgres")}}),
    ];
    for s in secrets {
        let s: Secret = serde_json::from_value(s).unwrap();
        stack
            .api::<Secret>()
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }

    // (name, kafka, topic, what it is)
    let consumers = [
        (
            "kafka-secret-missing",
            json!({"bootstrapServers": bootstrap(), "secretRef": {"name": "kafka-late"}}),
            &topic,
            "`kafka.secretRef` names a Secret that does not exist (created later)",
            conditions::SECRET_NOT_FOUND,
        ),
        (
            "kafka-secret-bad-key",
            json!({"bootstrapServers": bootstrap(), "secretRef": {"name": "kafka-bad-key"}}),
            &topic,
            "`kafka.secretRef`'s Secret has a key the worker does not allow (`sasl.passwd`)",
            conditions::WORKER_CONFIG_REJECTED,
        ),
        (
            "kafka-secret-deleted",
            json!({"bootstrapServers": bootstrap(), "secretRef": {"name": "kafka-plain"}}),
            &deleted_topic,
            "`kafka.secretRef`'s Secret deleted while the workers run",
            conditions::SECRET_NOT_FOUND,
        ),
        (
            "bootstrap-refused",
            json!({"bootstrapServers": [format!("{node}:1")]}),
            &topic,
            "`bootstrapServers` where nothing listens",
            conditions::KAFKA_UNREACHABLE,
        ),
        (
            "bootstrap-unresolvable",
            json!({"bootstrapServers": ["kafka.invalid:9092"]}),
            &topic,
            "`bootstrapServers` with a name that does not resolve",
            conditions::KAFKA_UNREACHABLE,
        ),
    ];
    for (name, kafka, topic, _, _) in &consumers {
        let _: EventConsumer = stack
            .apply(event_consumer(
                name,
                json!({"kafka": kafka, "topics": [topic], "groupId": format!("{name}-{schema}"),
                       "events": {"onUnknownType": "skip"}, "sink": {"log": {}}}),
            ))
            .await;
    }
    // (name, Secret, key, table, what it is)
    let outboxes = [
        (
            "dsn-secret-missing",
            "db-none",
            "dsn",
            "outbox",
            "`database.dsnSecretRef` names a Secret that does not exist",
            conditions::SECRET_NOT_FOUND,
        ),
        (
            "dsn-key-missing",
            "db-other-key",
            "dsn",
            "outbox",
            "`database.dsnSecretRef`'s Secret lacks the key",
            conditions::SECRET_NOT_FOUND,
        ),
        (
            "dsn-not-a-url",
            "db-not-a-url",
            "dsn",
            "outbox",
            "the DSN is not a PostgreSQL URL (keyword form)",
            "InvalidSpec",
        ),
        (
            "dsn-login-refused",
            "db-no-such-role",
            "dsn",
            "outbox",
            "the database refuses the DSN's login (no such role)",
            conditions::DATABASE_LOGIN_REFUSED,
        ),
        (
            "dsn-nobody-listens",
            "db-nobody-listens",
            "dsn",
            "outbox",
            "no database listens at the DSN's address",
            conditions::DATABASE_UNREACHABLE,
        ),
        (
            "table-missing",
            "db",
            "dsn",
            "no_such_table",
            "`table` does not exist",
            conditions::OUTBOX_TABLE_INVALID,
        ),
        (
            "table-mistyped",
            "db",
            "dsn",
            "mistyped",
            "`table` has a bytea payload and a bigint txid",
            conditions::OUTBOX_TABLE_INVALID,
        ),
        (
            "table-unstamped",
            "db",
            "dsn",
            "unstamped",
            "`table` has no stamping trigger",
            conditions::OUTBOX_TABLE_INVALID,
        ),
    ];
    for (name, secret, key, table, _, _) in &outboxes {
        let mut o = outbox(name, &format!("{schema}.{table}"), &out);
        o["spec"]["database"]["dsnSecretRef"] = json!({"name": secret, "key": key});
        let _: Outbox = stack.apply(o).await;
    }

    // The Secret deleted under running workers: first they run and deliver.
    let deleted_group = format!("kafka-secret-deleted-{schema}");
    eventually("kafka-secret-deleted delivers", WAIT, || async {
        (committed(&deleted_group, &deleted_topic) == Some(RECORDS)).then_some(())
    })
    .await;
    stack
        .api::<Secret>()
        .delete("kafka-plain", &DeleteParams::default())
        .await
        .unwrap();

    // Every resource's answer, waited for together.
    let ec_answers = join_all(consumers.iter().map(|(name, _, _, _, reason)| {
        degraded::<EventConsumer>(&stack, name, reason, cause_of(name))
    }))
    .await;
    let ob_answers = join_all(
        outboxes
            .iter()
            .map(|(name, _, _, _, _, reason)| degraded::<Outbox>(&stack, name, reason, "")),
    )
    .await;
    let mut ec_workers = Vec::new();
    for (name, ..) in &consumers {
        ec_workers.push(workers(&stack, name).await);
    }
    let mut ob_workers = Vec::new();
    for (name, ..) in &outboxes {
        ob_workers.push(workers(&stack, name).await);
    }

    // Nothing lost. Workers that run on after their Secret went keep delivering (their
    // environment was set when they started): 20 more records, committed.
    produce(&deleted_topic, RECORDS, RECORDS).await;
    eventually(
        "kafka-secret-deleted delivers after the delete",
        WAIT,
        || async { (committed(&deleted_group, &deleted_topic) == Some(2 * RECORDS)).then_some(()) },
    )
    .await;
    // The late Secret: once it exists the consumer runs and commits every record.
    let late: Secret = serde_json::from_value(json!({"metadata": {"name": "kafka-late"},
        "stringData": {"security.protocol": "plaintext"}}))
    .unwrap();
    stack
        .api::<Secret>()
        .create(&PostParams::default(), &late)
        .await
        .unwrap();
    let late_group = format!("kafka-secret-missing-{schema}");
    eventually(
        "kafka-secret-missing delivers once its Secret exists",
        WAIT,
        || async { (committed(&late_group, &topic) == Some(RECORDS)).then_some(()) },
    )
    .await;
    // The others committed nothing: the records wait in Kafka for a fixed resource.
    for (name, ..) in &consumers[1..] {
        if *name == "kafka-secret-deleted" {
            continue;
        }
        assert_eq!(
            committed(&format!("{name}-{schema}"), &topic),
            None,
            "{name} committed offsets"
        );
    }
    // The outbox rows are all still pending, and nothing was published.
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&stack.schema.pool)
        .await
        .unwrap();
    assert_eq!(pending, ROWS, "outbox rows still pending");
    assert_eq!(records_in(&out), 0, "nothing published");

    let mut table = String::from(
        "| # | resource | case | Degraded (reason: message, cut to 220 characters) | worker pods | nothing lost |\n\
         |---:|---|---|---|---|---|\n",
    );
    let mut n = 0;
    for (((name, _, _, what, _), answer), pods) in
        consumers.iter().zip(&ec_answers).zip(&ec_workers)
    {
        n += 1;
        let lost = match *name {
            "kafka-secret-missing" => {
                format!("the Secret created: all {RECORDS} records delivered and committed")
            }
            "kafka-secret-deleted" => format!(
                "{} records delivered before and {RECORDS} after the delete, all committed",
                RECORDS
            ),
            _ => format!("no offset committed: the {RECORDS} records wait in Kafka"),
        };
        table.push_str(&format!(
            "| {n} | EventConsumer `{name}` | {what} | {} | {pods} | {lost} |\n",
            cell(answer)
        ));
    }
    for (((name, _, _, _, what, _), answer), pods) in
        outboxes.iter().zip(&ob_answers).zip(&ob_workers)
    {
        n += 1;
        table.push_str(&format!(
            "| {n} | Outbox `{name}` | {what} | {} | {pods} | {ROWS} rows still pending, nothing published |\n",
            cell(answer)
        ));
    }
    println!("{table}");
    pipewright_testenv::catalogue(
        "bad-input-runtime",
        &format!(
            "{n} resources at once in one namespace, each Degraded=True with the reason \
             shown.\n\n{table}"
        ),
    );
    stack.down().await;
}
