//! The contract between the operator and the worker: the worker binary, started with exactly
//! the environment the operator renders for an EventConsumer and an Outbox (the ConfigMap's
//! variables; Secret files at temporary paths instead of their mount points), accepts it,
//! joins its group or takes its table, and does its job against the real Kafka and PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::consume::produce;
use common::{OutboxFixture, Recorder, http_get};
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_operator::context::Settings;
use pipewright_testenv::{TestEnv, create_topic, eventually, unique_name};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

struct Worker {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Worker {
    /// Runs `pipewright-worker <mode>` with only the rendered variables (plus PATH), the
    /// listener moved to a free port and Secret mount paths mapped to `files`.
    fn start(mode: &str, env: &BTreeMap<String, String>, files: &[(&str, PathBuf)]) -> Worker {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("pw-contract")));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_pipewright-worker"));
        command.env_clear().envs(env).arg(mode);
        command.env("PIPEWRIGHT_LISTEN", addr.to_string());
        command.env("PIPEWRIGHT_CONSUMER_GROUP_INSTANCE_ID", unique_name("pod"));
        for (var, path) in files {
            assert!(env.contains_key(*var), "the operator renders {var}");
            command.env(var, path);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start pipewright-worker");
        Worker { child, addr, log }
    }

    async fn wait_ready(&mut self) {
        let addr = self.addr;
        let ready = eventually("the worker's /readyz", WAIT, || {
            let exited = self.child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                let code = http_get(addr, "/readyz").await.map(|r| r.0);
                (code == Some(200)).then_some(Ok(()))
            }
        })
        .await;
        if let Err(status) = ready {
            panic!(
                "the worker refused the operator's configuration ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    async fn counter(&self, name: &str) -> f64 {
        let body = http_get(self.addr, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test]
async fn the_worker_runs_an_event_consumer_from_the_operators_rendered_config() {
    let topic = create_topic("contract-ec", 2).await;
    let dlq = create_topic("contract-ec-dlq", 1).await;
    let ec: EventConsumer = serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1", "kind": "EventConsumer",
        "metadata": {"name": "audit", "namespace": "contract", "uid": "00000000-0000-0000-0000-00000000ec01"},
        "spec": {
            "kafka": {
                "bootstrapServers": [TestEnv::get().kafka_bootstrap_servers],
                "config": {"client.rack": "r1", "fetch.wait.max.ms": "50"},
            },
            "topics": [topic],
            "groupId": unique_name("contract"),
            "initialOffset": "earliest",
            "events": {
                "types": [
                    {"name": "order.created", "schema": {"inline": {
                        "type": "object", "required": ["order_id"]}}},
                    {"name": "order.cancelled"},
                ],
                "onUnknownType": "deadLetter",
            },
            "processing": {
                "concurrency": 8, "ordering": "key", "deadLetterTopic": dlq,
                "retry": {"maxAttempts": 3, "backoff": {"initial": "100ms", "max": "1s"}},
                "drainTimeout": "10s",
            },
            "sink": {"log": {}},
        },
    }))
    .unwrap();
    let plan = pipewright_operator::event_consumer::plan(&ec, &Settings::default())
        .expect("the operator renders the EventConsumer");
    let mut worker = Worker::start("consume", &plan.env, &[]);
    worker.wait_ready().await;

    produce(
        &topic,
        vec![
            (
                Some("o1".into()),
                Some(br#"{"event_type":"order.created","order_id":"o1"}"#.to_vec()),
            ),
            (
                Some("o1".into()),
                Some(br#"{"event_type":"order.cancelled"}"#.to_vec()),
            ),
            (
                Some("o2".into()),
                Some(br#"{"event_type":"order.created"}"#.to_vec()),
            ),
        ],
    )
    .await;
    eventually("two events delivered, one dead-lettered", WAIT, || async {
        let processed = worker.counter("pipewright_consumer_processed_total").await;
        let dead = worker
            .counter("pipewright_consumer_dead_lettered_total")
            .await;
        (processed >= 2.0 && dead >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_worker_runs_an_outbox_from_the_operators_rendered_config() {
    let fx = OutboxFixture::new("contract_obx", 1).await;
    let recorder = Recorder::start(&fx.topic);
    let obx: Outbox = serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1", "kind": "Outbox",
        "metadata": {"name": "orders", "namespace": "contract", "uid": "00000000-0000-0000-0000-0000000000b1"},
        "spec": {
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}},
            "table": fx.table(),
            "kafka": {"bootstrapServers": [TestEnv::get().kafka_bootstrap_servers]},
            "topic": fx.topic,
            "poll": {"interval": "200ms", "batchSize": 50, "maxInFlight": 100, "notify": true},
            "cleanup": {"policy": "markPublished", "retention": "1h"},
        },
    }))
    .unwrap();
    let plan = pipewright_operator::outbox::plan(&obx, &Settings::default())
        .expect("the operator renders the Outbox");
    // The DSN Secret key, as the operator mounts it.
    let dsn = std::env::temp_dir().join(unique_name("pw-dsn"));
    std::fs::write(&dsn, &TestEnv::get().database_url).unwrap();
    let mut worker = Worker::start(
        "outbox",
        &plan.env,
        &[("PIPEWRIGHT_DATABASE_URL_FILE", dsn.clone())],
    );
    worker.wait_ready().await;

    let ids = fx.enqueue_many(20, 4).await;
    // markPublished: the rows stay, stamped with published_at.
    let unpublished = format!(
        "SELECT count(*) FROM {} WHERE published_at IS NULL",
        fx.table()
    );
    eventually("every row published and marked", WAIT, || async {
        let got = recorder.ids();
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(unpublished.clone()))
            .fetch_one(&fx.schema.pool)
            .await
            .unwrap();
        (ids.iter().all(|id| got.contains(id)) && left == 0).then_some(())
    })
    .await;
    assert_eq!(fx.pending().await, 20, "markPublished keeps the rows");
    drop(worker);
    std::fs::remove_file(dsn).unwrap();
    fx.schema.drop().await;
}
