//! Fixtures of the end-to-end tests on the test environment's node: a namespace with its own
//! operator release (the Helm chart), the wait for worker pods, the resources' manifests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use pipewright_crds::EventConsumer;
use pipewright_testenv::{
    HOW_TO_START, TestEnv, TestNamespace, TestSchema, eventually, install_crds, kafka_config,
    kube_client, unique_name,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::json;

pub const WAIT: Duration = Duration::from_secs(180);

/// One test on the node at a time, within a test binary (cargo runs the binaries one after
/// another).
pub static NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads `topic` from the start in a group of its own for the rest of the test: each record's
/// JSON value (and the record itself) mapped by `map`, with repeats, in each partition's order.
pub fn collect_json<T: Send + 'static>(
    topic: &str,
    map: impl Fn(&serde_json::Value, &BorrowedMessage<'_>) -> T + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<T>>> {
    use futures::StreamExt;
    use rdkafka::Message;
    let consumer: StreamConsumer = kafka_config()
        .set("group.id", unique_name("e2e-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let collected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = collected.clone();
    tokio::spawn(async move {
        let mut stream = consumer.stream();
        while let Some(Ok(m)) = stream.next().await {
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("a JSON record");
            sink.lock().unwrap().push(map(&v, &m));
        }
    });
    collected
}

pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {HOW_TO_START}"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node is there and the operator and worker images on it are the current binaries.
pub fn require_node_and_images() {
    var("PIPEWRIGHT_NODE_NAME");
    let out = Command::new(repo().join("tests/env/images"))
        .arg("--check")
        .current_dir(repo())
        .output()
        .expect("run tests/env/images --check");
    assert!(
        out.status.success(),
        "the operator/worker images on the node are missing or older than the binaries: run \
         `tests/env/images` (make test does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A restricted namespace with its own operator release (the chart, watching only this
/// namespace), a schema, and a Secret with the database DSN.
pub struct Stack {
    pub client: Client,
    pub ns: TestNamespace,
    release: String,
    pub schema: TestSchema,
    /// Uninstalls the release and deletes the namespace if the test panics before `down`, so
    /// a failed test leaves no operator or workers running on the node for the next one.
    cleanup: Cleanup,
}

pub struct Cleanup {
    release: String,
    namespace: String,
    /// Namespaces deleted with the release's own.
    others: Vec<String>,
    armed: bool,
}

impl Cleanup {
    /// Uninstalls `release` from `namespace` and deletes it and `others` when dropped armed.
    pub fn new(release: &str, namespace: &str, others: &[&str]) -> Cleanup {
        Cleanup {
            release: release.to_owned(),
            namespace: namespace.to_owned(),
            others: others.iter().map(|n| n.to_string()).collect(),
            armed: true,
        }
    }

    /// The test cleaned up itself.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (Ok(helm), Ok(kubectl)) = (std::env::var("HELM"), std::env::var("KUBECTL")) else {
            return;
        };
        let quiet = |program: &str, args: &[&str]| {
            let _ = Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet(
            &helm,
            &["uninstall", &self.release, "--namespace", &self.namespace],
        );
        for namespace in std::iter::once(&self.namespace).chain(&self.others) {
            quiet(
                &kubectl,
                &["delete", "namespace", namespace, "--wait=false"],
            );
        }
    }
}

impl Stack {
    pub async fn up(prefix: &str) -> Stack {
        require_node_and_images();
        let client = kube_client().await;
        install_crds(&client).await;
        let ns = TestNamespace::create(&client, prefix).await;
        enforce_restricted(&client, &ns.name).await;
        let release = unique_name("pw");
        let cleanup = Cleanup::new(&release, &ns.name, &[]);
        install_operator(&release, &ns.name, &ns.name);
        let schema = TestSchema::create(&format!("{prefix}_db")).await;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "db"},
            "stringData": {"dsn": TestEnv::get().database_url},
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        Stack {
            client,
            ns,
            release,
            schema,
            cleanup,
        }
    }

    /// The operator's Helm release name.
    pub fn release(&self) -> &str {
        &self.release
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    pub async fn apply<K>(&self, object: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_json::from_value(object).unwrap();
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create {}: {e}", object.name_any()))
    }

    /// Objects of kind `K` labelled as belonging to a worker (children of the resources).
    pub async fn count_workers<K>(&self) -> usize
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let selector = ListParams::default().labels("app.kubernetes.io/name=pipewright-worker");
        self.api::<K>().list(&selector).await.unwrap().items.len()
    }

    /// Waits until the EventConsumer `name` is Degraded=True with `reason`; returns the
    /// condition.
    pub async fn wait_degraded(&self, name: &str, reason: &str) -> Condition {
        let consumers: Api<EventConsumer> = self.api();
        eventually(&format!("Degraded=True/{reason}"), WAIT, || async {
            let status = consumers.get(name).await.ok()?.status?;
            let d = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded")?
                .clone();
            (d.status == "True" && d.reason == reason).then_some(d)
        })
        .await
    }

    /// The exit code of the last terminated worker container of `instance`, as the kubelet
    /// reported it: the current state when it is terminated, else the last one. (`lastState`
    /// is an empty object, not absent, until the container restarted once.)
    pub async fn worker_exit_code(&self, instance: &str) -> Option<i32> {
        self.worker_pods(instance)
            .await
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .find_map(|c| {
                [&c.state, &c.last_state]
                    .into_iter()
                    .flatten()
                    .find_map(|state| Some(state.terminated.as_ref()?.exit_code))
            })
    }

    /// Worker pods of one resource (the operator's own pod excluded).
    pub async fn worker_pods(&self, instance: &str) -> Vec<Pod> {
        self.api::<Pod>()
            .list(&ListParams::default().labels(&format!(
                "app.kubernetes.io/name=pipewright-worker,app.kubernetes.io/instance={instance}"
            )))
            .await
            .unwrap()
            .items
    }

    /// Waits until `instance` runs `count` worker pods, every one Running and Ready.
    pub async fn wait_workers_ready(&self, instance: &str, count: usize) -> Vec<Pod> {
        eventually(
            &format!("{count} worker pod(s) of {instance} Running and Ready"),
            WAIT,
            || async {
                let pods = self.worker_pods(instance).await;
                let live: Vec<Pod> = pods
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                (live.len() == count && live.iter().all(running_and_ready)).then_some(live)
            },
        )
        .await
    }

    pub async fn down(mut self) {
        self.cleanup.armed = false;
        run(
            &var("HELM"),
            &[
                "uninstall",
                &self.release,
                "--namespace",
                &self.ns.name,
                "--wait",
            ],
        );
        self.ns.delete().await;
        self.schema.drop().await;
    }
}

/// Labels `namespace` to enforce the restricted Pod Security profile.
pub async fn enforce_restricted(client: &Client, namespace: &str) {
    let labels = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
}

/// Installs the chart as `release` in `namespace`, watching `watch` only, with the tests'
/// short status period and cooldown; waits until the operator is ready.
pub fn install_operator(release: &str, namespace: &str, watch: &str) {
    let chart = repo().join("charts/pipewright");
    run(
        &var("HELM"),
        &[
            "install",
            release,
            chart.to_str().unwrap(),
            "--namespace",
            namespace,
            "--set",
            &format!("watchNamespace={watch}"),
            "--set",
            "replicaCount=1",
            "--set",
            "statusPeriod=2s",
            "--set",
            "scaleCooldown=10s",
            // The CRDs are the chart's files (make generate-check); install_crds applied
            // them already, with the field manager every test shares.
            "--skip-crds",
            "--wait",
            "--timeout",
            "180s",
        ],
    );
}

pub fn running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub fn event_consumer(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "pipewright.io/v1alpha1", "kind": "EventConsumer",
        "metadata": {"name": name}, "spec": spec,
    })
}

/// An Outbox `name` over `table` publishing to `topic`: the DSN from the Stack's `db` Secret,
/// the test broker, polling every 200 ms. A test changes what it needs in the object.
pub fn outbox(name: &str, table: &str, topic: &str) -> serde_json::Value {
    json!({
        "apiVersion": "pipewright.io/v1alpha1", "kind": "Outbox",
        "metadata": {"name": name},
        "spec": {
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}},
            "table": table,
            "kafka": {"bootstrapServers": bootstrap()},
            "topic": topic,
            "poll": {"interval": "200ms"},
        },
    })
}

/// Serves `app` for the rest of the test on the node's bridge address (reachable from the
/// pods), on a free port; returns that address.
pub async fn serve_on_node(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind((var("PIPEWRIGHT_NODE_IP").as_str(), 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

pub fn bootstrap() -> Vec<String> {
    vec![TestEnv::get().kafka_bootstrap_servers.clone()]
}

/// Produces `count` JSON records `{"event_type":"Tick","id":i,"key":..}` with `keys` keys, at
/// about `per_second`.
pub async fn produce_steadily(topic: &str, count: u64, keys: u64, per_second: u64) {
    let producer: FutureProducer = kafka_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    let start = tokio::time::Instant::now();
    for i in 0..count {
        let key = format!("k{}", i % keys);
        let value = json!({"event_type": "Tick", "id": i, "key": key, "seq": i / keys}).to_string();
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(value.as_str());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break pending.push(delivery),
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        if let Some(ms) = (i * 1000).checked_div(per_second) {
            tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
        }
    }
    for delivery in futures::future::join_all(pending).await {
        delivery
            .expect("delivery")
            .expect("acknowledged by the broker");
    }
}
