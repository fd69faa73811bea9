//! Test support for pipewright's integration tests.
//!
//! Every integration test runs against the real services that `tests/env/up` starts on
//! loopback: a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler), an Apache Kafka broker and a PostgreSQL server. Their addresses reach the
//! tests through the environment variables that `eval "$(tests/env/up)"` exports. When one is
//! missing or the service does not answer, the test fails with a message saying how to start
//! the environment: there are no silent skips.
//!
//! Fixtures isolate each test: a unique namespace, topic or schema per test, so tests run in
//! parallel and a failed run leaves nothing that confuses the next one.

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// What to do when the environment is missing; part of every failure message.
pub const HOW_TO_START: &str = "start the test environment first: `eval \"$(tests/env/up)\"` \
     from the repository root (or run `make test`, which does it for you)";

/// Connection details of the local test environment, read from the variables that
/// `tests/env/up` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEnv {
    /// `KUBECONFIG`: a kubeconfig with cluster-admin client-certificate credentials.
    pub kubeconfig: PathBuf,
    /// `KAFKA_BOOTSTRAP_SERVERS`: the broker's plaintext listener (`host:port`).
    pub kafka_bootstrap_servers: String,
    /// `DATABASE_URL`: a superuser URL of the throwaway PostgreSQL cluster.
    pub database_url: String,
}

impl TestEnv {
    /// The environment of this process; panics with [`HOW_TO_START`] when it is incomplete.
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            TestEnv::from_lookup(|name| std::env::var(name).ok()).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    /// Builds the environment from a variable lookup; an error names every missing variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<TestEnv, String> {
        let names = ["KUBECONFIG", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"];
        let values: Vec<Option<String>> = names
            .iter()
            .map(|n| lookup(n).filter(|v| !v.is_empty()))
            .collect();
        let missing: Vec<&str> = names
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the test environment is not set up ({} not set): {HOW_TO_START}",
                missing.join(", ")
            ));
        }
        let mut values = values.into_iter().flatten();
        let mut next = || values.next().unwrap_or_default();
        Ok(TestEnv {
            kubeconfig: PathBuf::from(next()),
            kafka_bootstrap_servers: next(),
            database_url: next(),
        })
    }
}

/// One of the test environment's nodes (`PIPEWRIGHT_NODES`: `name=address` pairs, the first
/// the node whose address the control plane, Kafka and PostgreSQL listen on) and its
/// containerd socket (`PIPEWRIGHT_CONTAINERD_ADDRESSES`, in the same order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The node's address; its pods' addresses share its first three octets (a /24 each).
    pub ip: String,
    pub containerd: String,
}

/// Every node of the test environment, in `tests/env/up`'s order.
pub fn nodes() -> Vec<Node> {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {HOW_TO_START}"))
    };
    let pairs = var("PIPEWRIGHT_NODES");
    let sockets = var("PIPEWRIGHT_CONTAINERD_ADDRESSES");
    let nodes: Vec<Node> = pairs
        .split_whitespace()
        .zip(sockets.split_whitespace())
        .map(|(pair, socket)| {
            let (name, ip) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("PIPEWRIGHT_NODES: {pair:?} is not name=address"));
            Node {
                name: name.to_owned(),
                ip: ip.to_owned(),
                containerd: socket.to_owned(),
            }
        })
        .collect();
    assert!(
        !nodes.is_empty() && nodes.len() == sockets.split_whitespace().count(),
        "PIPEWRIGHT_NODES ({pairs}) and PIPEWRIGHT_CONTAINERD_ADDRESSES ({sockets}) do not \
         name the same nodes: {HOW_TO_START}"
    );
    nodes
}

/// The pid of a service of the test environment (`etcd`, `kube-apiserver`, `kafka`,
/// `postgres`, ...), for fault tests that stop and resume it (SIGSTOP/SIGCONT). Tests that do
/// so belong in a test binary of their own: cargo runs test binaries one after another, the
/// tests inside one binary in parallel.
pub fn service_pid(service: &str) -> i32 {
    let state = std::env::var("PIPEWRIGHT_STATE")
        .unwrap_or_else(|_| panic!("PIPEWRIGHT_STATE is not set: {HOW_TO_START}"));
    let path = PathBuf::from(state).join("pids").join(service);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "no pid for {service} at {}: {e}; {HOW_TO_START}",
                path.display()
            )
        })
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A process of the test environment frozen until this value is dropped: SIGSTOP now,
/// SIGCONT on drop — also when the test panics, so no later test finds a frozen service.
/// Connections to it stay open and nothing answers, as in a network partition.
#[derive(Debug)]
pub struct Frozen {
    pid: i32,
}

impl Frozen {
    /// Freezes the process `pid`.
    pub fn new(pid: i32) -> Frozen {
        let status = signal("-STOP", pid);
        assert!(status.is_ok_and(|s| s.success()), "kill -STOP {pid}");
        Frozen { pid }
    }

    /// Freezes a service of the test environment ([`service_pid`]).
    pub fn service(service: &str) -> Frozen {
        Frozen::new(service_pid(service))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // No panic here: a panicking test is unwinding through it.
        if !signal("-CONT", self.pid).is_ok_and(|s| s.success()) {
            eprintln!("kill -CONT {} failed: the process stays frozen", self.pid);
        }
    }
}

fn signal(sig: &str, pid: i32) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
}

/// A name no other test uses: `prefix-` and ten random hex digits (valid as a Kubernetes
/// name, a Kafka topic and, quoted or not, a PostgreSQL identifier).
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// Polls `check` every 200 ms until it yields a value; panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client for the test control plane, authenticated as cluster-admin. Fails with
/// [`HOW_TO_START`] when the apiserver does not answer.
pub async fn kube_client() -> Client {
    let env = TestEnv::get();
    let kubeconfig = Kubeconfig::read_from(&env.kubeconfig).unwrap_or_else(|e| {
        panic!(
            "cannot read KUBECONFIG {}: {e}; {HOW_TO_START}",
            env.kubeconfig.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", env.kubeconfig.display()));
    let client = Client::try_from(config).expect("kube client from kubeconfig");
    if let Err(e) = client.apiserver_version().await {
        panic!("the kube-apiserver of the test environment does not answer ({e}); {HOW_TO_START}");
    }
    client
}

/// A namespace of its own for one test. Delete it at the end with [`TestNamespace::delete`];
/// a panicking test leaves it behind for inspection (`tests/env/down` removes everything).
/// One a test that did not panic forgot to delete is deleted when dropped: the nodes are
/// shared, and a worker left running with its disruption budget blocks a later test's
/// `kubectl drain` (e2e_drain).
pub struct TestNamespace {
    pub name: String,
    client: Client,
    deleted: bool,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("pipewright.io/test".to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace {
            name,
            client: client.clone(),
            deleted: false,
        }
    }

    /// Deletes the namespace (and, through the namespace controller, all it holds).
    pub async fn delete(mut self) {
        self.deleted = true;
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
            .unwrap_or_else(|e| panic!("delete namespace {}: {e}", self.name));
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted || std::thread::panicking() {
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down: a thread with a
        // runtime and a client of its own.
        let name = self.name.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to delete a namespace");
            runtime.block_on(async {
                Api::<Namespace>::all(kube_client().await)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map(drop)
                    .map_err(|e| format!("delete namespace {name}: {e}"))
            })
        })
        .join();
        if let Ok(Err(e)) = deleted {
            eprintln!("{e}");
        }
    }
}

/// Applies pipewright's CRDs (server-side, forced: the tests own them; idempotent, so
/// parallel tests may all call it) and waits until the apiserver serves them.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in pipewright_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("pipewright-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
    }
    for crd in pipewright_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        eventually(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(120),
            || async {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

/// librdkafka settings pointing at the test broker; add the role-specific ones.
pub fn kafka_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set(
        "bootstrap.servers",
        TestEnv::get().kafka_bootstrap_servers.as_str(),
    );
    config
}

/// Creates a topic of its own for one test (auto-creation is off on the test broker) and
/// returns its name once the broker's metadata shows every partition with a leader (a
/// consumer subscribing earlier may be told the topic is unknown). Fails with
/// [`HOW_TO_START`] when the broker does not answer.
pub async fn create_topic(prefix: &str, partitions: i32) -> String {
    let name = unique_name(prefix);
    create_topic_named(&name, partitions).await;
    name
}

/// Creates the topic `name` (for a test that first needs it to be missing), and waits until
/// the broker's metadata shows it.
pub async fn create_topic_named(name: &str, partitions: i32) {
    create_topic_as(name, partitions, false).await
}

/// The topic `name` with `partitions`, created unless it exists already (a fixed name that
/// earlier runs share, e.g. what the files in examples/ name).
pub async fn ensure_topic(name: &str, partitions: i32) {
    create_topic_as(name, partitions, true).await
}

async fn create_topic_as(name: &str, partitions: i32, may_exist: bool) {
    let admin: AdminClient<DefaultClientContext> =
        kafka_config().create().expect("rdkafka admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap_or_else(|e| {
            panic!("the Kafka broker of the test environment does not answer ({e}); {HOW_TO_START}")
        });
    for result in results {
        match result {
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) if may_exist => {}
            Err((topic, code)) => panic!("create topic {topic}: {code}"),
            Ok(_) => {}
        }
    }
    let consumer: BaseConsumer = kafka_config().create().expect("rdkafka consumer");
    let consumer = std::sync::Arc::new(consumer);
    eventually(
        &format!("topic {name} in the metadata"),
        Duration::from_secs(60),
        || {
            let consumer = consumer.clone();
            let topic = name.to_string();
            async move {
                tokio::task::spawn_blocking(move || {
                    let metadata = consumer
                        .fetch_metadata(Some(&topic), Duration::from_secs(5))
                        .ok()?;
                    let t = metadata.topics().iter().find(|t| t.name() == topic)?;
                    (t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0))
                    .then_some(())
                })
                .await
                .ok()
                .flatten()
            }
        },
    )
    .await;
}

/// A PostgreSQL schema of its own for one test, and a pool whose connections use it as
/// their `search_path`.
#[derive(Debug)]
pub struct TestSchema {
    pub name: String,
    pub pool: PgPool,
}

impl TestSchema {
    pub async fn create(prefix: &str) -> TestSchema {
        let name = unique_name(prefix).replace('-', "_");
        let url = &TestEnv::get().database_url;
        let options: PgConnectOptions = url
            .parse()
            .unwrap_or_else(|e| panic!("DATABASE_URL is not a PostgreSQL URL: {e}"));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("the PostgreSQL server of the test environment does not answer ({e}); {HOW_TO_START}")
            });
        // The name is ours (prefix + hex), quoted: safe to splice.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("create schema {name}: {e}"));
        admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.options([("search_path", name.as_str())]))
            .await
            .expect("connect to the test schema");
        TestSchema { name, pool }
    }

    /// Drops the schema and everything in it, then closes the pool.
    pub async fn drop(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{}\" CASCADE",
            self.name
        )))
        .execute(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("drop schema {}: {e}", self.name));
        self.pool.close().await;
    }
}

/// The metric families in an OpenMetrics text exposition (`prometheus_client`'s encoder) as
/// the names users query with their type: a counter `x` is `x_total`.
pub fn exposed_metrics(exposition: &str) -> std::collections::BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| {
            let mut parts = l.strip_prefix("# TYPE ")?.split_whitespace();
            let (name, kind) = (parts.next()?, parts.next()?);
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            Some((name, kind.to_string()))
        })
        .collect()
}

/// Checks docs/metrics.md against the metrics a registry exposes, for the names starting with
/// one of `prefixes`: every exposed metric has a row `` | `name` | type | ``, and every such row
/// names an exposed metric of that type (the doc cannot go stale). Panics with the differences.
pub fn check_metrics_doc(exposition: &str, prefixes: &[&str]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ours = |name: &str| prefixes.iter().any(|p| name.starts_with(p));
    let documented: std::collections::BTreeMap<String, String> = doc
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.strip_prefix('|')?.split('|').map(str::trim).collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_string(), cells.get(1)?.to_string()))
        })
        .filter(|(name, _)| ours(name))
        .collect();
    let exposed: std::collections::BTreeMap<String, String> = exposed_metrics(exposition)
        .into_iter()
        .filter(|(name, _)| ours(name))
        .collect();
    assert!(!exposed.is_empty(), "no metric exposed under {prefixes:?}");
    let mut wrong = Vec::new();
    for (name, kind) in &exposed {
        match documented.get(name) {
            None => wrong.push(format!("{name} ({kind}) is exposed but has no row")),
            Some(k) if k != kind => {
                wrong.push(format!("{name}: documented as {k}, exposed as {kind}"))
            }
            Some(_) => {}
        }
    }
    for name in documented.keys() {
        if !exposed.contains_key(name) {
            wrong.push(format!("{name} has a row but is not exposed"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} is stale:\n{}",
        path.display(),
        wrong.join("\n")
    );
}

/// When the environment variable `var` names a file (a doc), replaces what is between its
/// `<!-- {marker}: begin -->` and `<!-- {marker}: end -->` markers with a line saying when,
/// then `body`: how `make chaos` writes the figures of its run into docs/reliability.md.
/// Panics when the markers are missing.
pub fn write_report(var: &str, marker: &str, body: &str) {
    let Ok(path) = std::env::var(var) else {
        return;
    };
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let (begin, end) = (
        format!("<!-- {marker}: begin -->"),
        format!("<!-- {marker}: end -->"),
    );
    let (head, rest) = doc
        .split_once(&begin)
        .unwrap_or_else(|| panic!("{path}: no {begin}"));
    let (_, tail) = rest
        .split_once(&end)
        .unwrap_or_else(|| panic!("{path}: no {end}"));
    let when = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    std::fs::write(
        &path,
        format!("{head}{begin}\nLast run: {when}.\n\n{body}{end}{tail}"),
    )
    .unwrap_or_else(|e| panic!("write {path}: {e}"));
}

/// The environment variable that names the doc the bad-input catalogue is written into
/// (`make chaos`: docs/reliability.md).
pub const BAD_INPUT_REPORT: &str = "PIPEWRIGHT_BAD_INPUT_REPORT";

/// One table of the bad-input catalogue in docs/reliability.md, between the `marker`'s
/// markers. With [`BAD_INPUT_REPORT`] set, writes `body` there ([`write_report`]); without it
/// (`make test`), checks that the doc lists the cases `body` does, so that a case added to a
/// test cannot be missing from the catalogue. A row's case is its first cell, with the second
/// when the first is a number (the row's `#`); the other cells are what was observed, which
/// may differ from run to run.
pub fn catalogue(marker: &str, body: &str) {
    if std::env::var_os(BAD_INPUT_REPORT).is_some() {
        return write_report(BAD_INPUT_REPORT, marker, body);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reliability.md");
    let doc =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let section = doc
        .split_once(&format!("<!-- {marker}: begin -->"))
        .and_then(|(_, rest)| rest.split_once(&format!("<!-- {marker}: end -->")))
        .map(|(section, _)| section)
        .unwrap_or_else(|| panic!("{}: no {marker} markers", path.display()));
    let (documented, observed) = (cases_of(section), cases_of(body));
    let missing: Vec<_> = observed.difference(&documented).collect();
    let gone: Vec<_> = documented.difference(&observed).collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "{} is stale in its {marker} table: cases the test has and the doc lacks: {missing:?}; \
         cases the doc has and the test no longer: {gone:?}. Write it again: \
         {BAD_INPUT_REPORT}=$PWD/docs/reliability.md with this test (or `make chaos`).",
        path.display()
    );
}

/// The cases of the markdown table rows in `text` (see [`catalogue`]).
fn cases_of(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix('|'))
        .map(|row| row.split(" | ").map(str::trim).collect::<Vec<_>>())
        .filter(|cells| !cells[0].starts_with("---") && !cells[0].starts_with(":--"))
        .map(|cells| match cells.as_slice() {
            [n, case, ..] if n.parse::<u64>().is_ok() => format!("{n} {case}"),
            [case, ..] => case.to_string(),
            [] => String::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_environment_names_every_variable_and_how_to_start_it() {
        let err = TestEnv::from_lookup(|name| {
            (name == "KUBECONFIG").then(|| "/tmp/kubeconfig".to_string())
        })
        .unwrap_err();
        assert!(
            err.contains("KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL"),
            "{err}"
        );
        assert!(!err.contains("KUBECONFIG"), "{err}");
        assert!(err.contains("tests/env/up"), "{err}");
    }

    #[test]
    fn complete_environment_is_read_in_order() {
        let env = TestEnv::from_lookup(|name| Some(format!("<{name}>"))).unwrap();
        assert_eq!(env.kubeconfig, PathBuf::from("<KUBECONFIG>"));
        assert_eq!(env.kafka_bootstrap_servers, "<KAFKA_BOOTSTRAP_SERVERS>");
        assert_eq!(env.database_url, "<DATABASE_URL>");
    }

    #[test]
    fn a_catalogue_rows_case_is_its_first_cell_or_its_number_and_second() {
        let table = "intro\n\n| # | record | answer |\n|---:|---|---|\n| 0 | a valid event | delivered |\n\
                     | 1 | no value | dead-lettered |\n";
        let cases: Vec<_> = cases_of(table).into_iter().collect();
        assert_eq!(cases, ["#", "0 a valid event", "1 no value"]);
        let table = "| endpoint | requests |\n|---|---:|\n| answers 200 | 1 |\n";
        let cases: Vec<_> = cases_of(table).into_iter().collect();
        assert_eq!(cases, ["answers 200", "endpoint"]);
    }

    #[test]
    fn unique_names_are_valid_kubernetes_names_and_differ() {
        let a = unique_name("ns");
        let b = unique_name("ns");
        assert_ne!(a, b);
        assert_eq!(a.len(), "ns-".len() + 10);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
