//! Part 4 of `make bench`: the operator against the control plane's own controllers, on the
//! same apiserver in the same run; and part 5, memory.
//!
//! - **Reaction**: one object at a time, an EventConsumer is created and the time until its
//!   Deployment is seen is taken; then a Deployment is created and the time until the
//!   built-in deployment controller's ReplicaSet is seen. Both are seen through the same kind of
//!   watch, opened before the first create, so the watch's own delay is in both figures. Every
//!   object has `replicas: 0`, so no pod is started and only the controllers are timed.
//! - **Scale**: EventConsumers and Outboxes are created while no operator runs; then the
//!   operator starts (cold) and the harness waits until every one has its Deployment and a
//!   status with `observedGeneration` = its generation. Then, at steady state, its CPU and the
//!   Kafka and PostgreSQL connections it opens are watched for a window.
//!
//! The operator is the release binary the image ships (`tests/env/images` builds it), run as a
//! process on the host with the test environment's admin kubeconfig, watching one namespace.

pub mod report;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use pipewright_crds::{EventConsumer, Outbox};
use serde_json::json;
use tokio::sync::Notify;

use crate::process::Proc;
use crate::profile::Profile;
use crate::progress;
use report::{Memory, OperatorResults, Reaction, Round, Scale};

/// What the operator benchmark needs: the binaries and the test environment's services.
#[derive(Debug, Clone)]
pub struct OperatorSetup {
    pub operator: PathBuf,
    pub worker: PathBuf,
    pub bootstrap: String,
    pub database_url: String,
    /// The image archives `tests/env/images` wrote (for their sizes), if any.
    pub images: Vec<PathBuf>,
    pub work_dir: PathBuf,
}

/// The sizes of each part, by profile.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub rounds: usize,
    pub applies_per_round: usize,
    pub event_consumers: usize,
    pub outboxes: usize,
    pub steady_window: Duration,
    /// How long the cold start may take before the figure is "not converged".
    pub converge_limit: Duration,
}

impl Sizes {
    pub fn of(profile: Profile) -> Sizes {
        match profile {
            Profile::Full => Sizes {
                rounds: 3,
                applies_per_round: 70,
                event_consumers: 1000,
                outboxes: 200,
                steady_window: Duration::from_secs(60),
                converge_limit: Duration::from_secs(180),
            },
            Profile::Quick => Sizes {
                rounds: 3,
                applies_per_round: 20,
                event_consumers: 200,
                outboxes: 40,
                steady_window: Duration::from_secs(35),
                converge_limit: Duration::from_secs(120),
            },
            Profile::Smoke => Sizes {
                rounds: 1,
                applies_per_round: 3,
                event_consumers: 5,
                outboxes: 2,
                steady_window: Duration::from_secs(2),
                converge_limit: Duration::from_secs(120),
            },
        }
    }
}

/// The pause after each timed create, so that the next one starts on an idle control plane.
const SETTLE: Duration = Duration::from_millis(300);

/// The operator's status period in these runs: its default (the chart's too).
pub const STATUS_PERIOD: Duration = Duration::from_secs(30);

/// Runs parts 4 and 5.
pub fn run(profile: Profile, setup: &OperatorSetup) -> Result<OperatorResults> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run_async(profile, setup))
}

async fn run_async(profile: Profile, setup: &OperatorSetup) -> Result<OperatorResults> {
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let sizes = Sizes::of(profile);
    let client = Client::try_default()
        .await
        .context("a Kubernetes client from KUBECONFIG (the test environment's)")?;
    install_crds(&client).await?;
    wait_for_earlier_runs(&client).await?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let topic = format!("bench-op-{id}");
    crate::workload::create_topic(&setup.bootstrap, &topic, 6).await?;

    // 4a. Reaction.
    let ns = create_namespace(&client, &format!("bench-op-react-{id}")).await?;
    let operator = start_operator(setup, &ns, "react")?;
    let reaction = reaction(&client, &ns, &topic, setup, sizes, &operator).await;
    let idle_rss = operator.lock().unwrap().peak_rss_bytes();
    drop(operator);
    delete_namespace(&client, &ns).await;
    let reaction = reaction?;

    // 4b. Scale, and the operator's memory at it.
    let ns = create_namespace(&client, &format!("bench-op-scale-{id}")).await?;
    let scale = scale(&client, &ns, &topic, setup, sizes).await;
    delete_namespace(&client, &ns).await;
    let (scale, operator_peak) = scale?;

    // 5. Memory.
    let worker_idle = worker_idle_rss(setup, &topic).await?;
    crate::workload::delete_topics(&setup.bootstrap, &[&topic]).await;
    let mut images = Vec::new();
    for path in &setup.images {
        let bytes = std::fs::metadata(path)
            .with_context(|| format!("image archive {}", path.display()))?
            .len();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        images.push((name, bytes));
    }
    Ok(OperatorResults {
        profile,
        started_at,
        duration_s: clock.elapsed().as_secs_f64(),
        operator_git: crate::git_describe(),
        status_period_s: STATUS_PERIOD.as_secs_f64(),
        reaction,
        scale,
        memory: Memory {
            operator_idle_rss_bytes: idle_rss,
            operator_scale_peak_rss_bytes: operator_peak,
            worker_idle_rss_bytes: worker_idle,
            image_archive_bytes: images,
        },
    })
}

/// The CRDs, applied as the chart would (server-side apply), and Established.
async fn install_crds(client: &Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in pipewright_crds::crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("pipewright-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("apply CRD {name}"))?;
    }
    for crd in pipewright_crds::crds() {
        let name = crd.name_any();
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(60),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await?;
    }
    Ok(())
}

async fn create_namespace(client: &Client, name: &str) -> Result<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(name.to_string())
}

/// Deletes a namespace and waits (at most 5 min) until it is gone: its garbage collection
/// keeps the control plane busy, which would slow the next measurement.
async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    let _ = wait_for(
        &format!("namespace {name} deleted"),
        Duration::from_secs(300),
        || async { matches!(api.get_opt(name).await, Ok(None)).then_some(()) },
    )
    .await;
}

/// Waits until no namespace of an earlier run (`bench-op-*`) is still being deleted.
async fn wait_for_earlier_runs(client: &Client) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in api.list(&ListParams::default()).await?.items {
        let name = ns.name_any();
        if name.starts_with("bench-op-") {
            progress(&format!(
                "waiting for the namespace {name} of an earlier run to go"
            ));
            delete_namespace(client, &name).await;
        }
    }
    Ok(())
}

/// The release operator watching `ns` only, without leader election, status period
/// [`STATUS_PERIOD`]; sampled for CPU and RSS by a background thread.
fn start_operator(setup: &OperatorSetup, ns: &str, tag: &str) -> Result<Arc<Mutex<Proc>>> {
    ensure!(
        setup.operator.is_file(),
        "the operator binary {} does not exist (tests/env/images builds it: cargo build \
         --release --locked -p pipewright-operator)",
        setup.operator.display()
    );
    let mut command = Command::new(&setup.operator);
    command
        .args(["--namespace", ns, "--leader-election", "false"])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
        ])
        .args(["--status-period", &format!("{}s", STATUS_PERIOD.as_secs())])
        .args(["--worker-image", "pipewright-worker:bench"])
        // PIPEWRIGHT_BENCH_OPERATOR_LOG: the operator's filter, to look into a run (e.g.
        // `info,kube_client=debug` times every request); its log is in the work dir.
        .env(
            "RUST_LOG",
            std::env::var("PIPEWRIGHT_BENCH_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
        );
    // Its log lines go to stdout; stderr holds what it prints when it cannot start.
    let log = setup.work_dir.join(format!("operator-{tag}.log"));
    let stderr = setup.work_dir.join(format!("operator-{tag}.stderr"));
    let proc = Arc::new(Mutex::new(Proc::spawn(
        &format!("operator ({tag})"),
        command,
        Some(&log),
        &stderr,
    )?));
    let sampled = Arc::downgrade(&proc);
    std::thread::spawn(move || {
        while let Some(proc) = sampled.upgrade() {
            if proc.lock().unwrap().sample().is_err() {
                break;
            }
            drop(proc);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Ok(proc)
}

fn event_consumer(name: &str, topic: &str, bootstrap: &str) -> Result<EventConsumer> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "EventConsumer",
        "metadata": {"name": name, "labels": {"bench": "operator"}},
        "spec": {
            "kafka": {"bootstrapServers": [bootstrap]},
            "topics": [topic],
            "replicas": 0,
            "processing": {"deadLetterTopic": format!("{topic}.dlq")},
            "sink": {"log": {}},
        },
    }))?)
}

fn outbox(name: &str, bootstrap: &str) -> Result<Outbox> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "Outbox",
        "metadata": {"name": name, "labels": {"bench": "operator"}},
        "spec": {
            "database": {"dsnSecretRef": {"name": "bench-dsn", "key": "dsn"}},
            "table": "bench_outbox",
            "kafka": {"bootstrapServers": [bootstrap]},
            "topic": format!("{name}-events"),
            "replicas": 0,
        },
    }))?)
}

/// A plain Deployment for the built-in controller (the pause image; never started).
fn reference_deployment(name: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "reference"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }))?)
}

/// When each owner (by name) was first seen owning an object of kind `K` of owner kind
/// `owner_kind`, through a watch.
#[derive(Clone)]
struct FirstSeen {
    /// owner name → (first seen, the owned object's name)
    seen: Arc<Mutex<HashMap<String, (Instant, String)>>>,
    changed: Arc<Notify>,
}

impl FirstSeen {
    fn watch<K>(api: Api<K>, owner_kind: &'static str) -> FirstSeen
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    {
        let first = FirstSeen {
            seen: Arc::default(),
            changed: Arc::default(),
        };
        let (seen, changed) = (first.seen.clone(), first.changed.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(event) = events.next().await {
                let now = Instant::now();
                let obj = match event {
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => obj,
                    _ => continue,
                };
                let owners = obj.meta().owner_references.clone().unwrap_or_default();
                let name = obj.meta().name.clone().unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                for owner in owners.iter().filter(|o| o.kind == owner_kind) {
                    seen.entry(owner.name.clone())
                        .or_insert_with(|| (now, name.clone()));
                }
                drop(seen);
                changed.notify_waiters();
            }
        });
        first
    }

    /// When `owner`'s object was first seen; waits at most `timeout`, failing at once when
    /// the operator has exited.
    async fn wait(
        &self,
        owner: &str,
        timeout: Duration,
        operator: &Mutex<Proc>,
    ) -> Result<(Instant, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(seen) = self.seen.lock().unwrap().get(owner) {
                return Ok(seen.clone());
            }
            operator.lock().unwrap().ensure_running()?;
            let tick = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
            if tokio::time::timeout_at(tick, notified).await.is_err() && tick == deadline {
                bail!("no object owned by {owner} within {timeout:?}");
            }
        }
    }
}

async fn reaction(
    client: &Client,
    ns: &str,
    topic: &str,
    setup: &OperatorSetup,
    sizes: Sizes,
    operator: &Mutex<Proc>,
) -> Result<Reaction> {
    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let ours = FirstSeen::watch(deployments.clone(), "EventConsumer");
    let builtin = FirstSeen::watch(replicasets, "Deployment");
    // The operator is up and the watches are open: one warm-up object of each, not counted.
    let warm = "warm-up";
    ecs.create(
        &PostParams::default(),
        &event_consumer(warm, topic, &setup.bootstrap)?,
    )
    .await?;
    ours.wait(warm, Duration::from_secs(120), operator)
        .await
        .context(
            "the operator never created the warm-up Deployment (its log is in the work dir)",
        )?;
    deployments
        .create(&PostParams::default(), &reference_deployment(warm)?)
        .await?;
    builtin
        .wait(warm, Duration::from_secs(60), operator)
        .await?;

    let mut rounds = Vec::new();
    for round in 0..sizes.rounds {
        let (mut pipewright, mut reference) = (Vec::new(), Vec::new());
        let (mut pipewright_create, mut reference_create) = (Vec::new(), Vec::new());
        for i in 0..sizes.applies_per_round {
            let name = format!("r{round}-{i}");
            let sent = Instant::now();
            ecs.create(
                &PostParams::default(),
                &event_consumer(&name, topic, &setup.bootstrap)?,
            )
            .await
            .with_context(|| format!("create EventConsumer {name}"))?;
            pipewright_create.push(sent.elapsed().as_secs_f64() * 1e3);
            let (seen, child) = ours.wait(&name, Duration::from_secs(60), operator).await?;
            pipewright.push(seen.saturating_duration_since(sent).as_secs_f64() * 1e3);
            // Let the control plane's controllers finish with what the operator created (its
            // Deployment's ReplicaSet, then a pause): the built-in measurement must not wait
            // behind the controller-manager's work for the operator's objects (its client is
            // rate-limited), nor the operator's behind the built-in's.
            builtin
                .wait(&child, Duration::from_secs(60), operator)
                .await?;
            tokio::time::sleep(SETTLE).await;

            let sent = Instant::now();
            deployments
                .create(&PostParams::default(), &reference_deployment(&name)?)
                .await
                .with_context(|| format!("create Deployment {name}"))?;
            reference_create.push(sent.elapsed().as_secs_f64() * 1e3);
            let (seen, _) = builtin
                .wait(&name, Duration::from_secs(60), operator)
                .await?;
            reference.push(seen.saturating_duration_since(sent).as_secs_f64() * 1e3);
            tokio::time::sleep(SETTLE).await;
        }
        progress(&format!(
            "operator reaction, round {}/{}: EventConsumer → Deployment p50 {:.0} ms, \
             Deployment → ReplicaSet p50 {:.0} ms",
            round + 1,
            sizes.rounds,
            report::percentile(&pipewright, 50.0),
            report::percentile(&reference, 50.0)
        ));
        rounds.push(Round {
            pipewright,
            builtin: reference,
            pipewright_create,
            builtin_create: reference_create,
        });
    }
    Ok(Reaction::from_rounds(rounds))
}

async fn scale(
    client: &Client,
    ns: &str,
    topic: &str,
    setup: &OperatorSetup,
    sizes: Sizes,
) -> Result<(Scale, u64)> {
    let pg = sqlx::PgPool::connect(&setup.database_url)
        .await
        .context("connect to PostgreSQL")?;
    let schema = pipewright_worker::outbox::schema_sql(&pipewright_worker::outbox::Table::parse(
        "bench_outbox",
    )?)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS bench_outbox CASCADE; {schema}"
    )))
    .execute(&pg)
    .await
    .context("create the outbox table")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bench-dsn"},
        "stringData": {"dsn": setup.database_url},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;

    // Everything exists before the operator starts.
    let ecs: Api<EventConsumer> = Api::namespaced(client.clone(), ns);
    let outboxes: Api<Outbox> = Api::namespaced(client.clone(), ns);
    let created = Instant::now();
    futures::stream::iter(0..sizes.event_consumers)
        .map(|i| {
            let ecs = ecs.clone();
            async move {
                let ec = event_consumer(&format!("ec-{i}"), topic, &setup.bootstrap)?;
                ecs.create(&PostParams::default(), &ec).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    futures::stream::iter(0..sizes.outboxes)
        .map(|i| {
            let outboxes = outboxes.clone();
            async move {
                let o = outbox(&format!("ob-{i}"), &setup.bootstrap)?;
                outboxes.create(&PostParams::default(), &o).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    progress(&format!(
        "operator scale: {} EventConsumers and {} Outboxes created in {:.1} s; starting the operator",
        sizes.event_consumers,
        sizes.outboxes,
        created.elapsed().as_secs_f64()
    ));

    let operator = start_operator(setup, ns, "scale")?;
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let total = sizes.event_consumers + sizes.outboxes;
    let limit = sizes.converge_limit;
    let mut all_applied: Option<f64> = None;
    let (mut applied, mut written);
    let all_status = loop {
        operator.lock().unwrap().ensure_running()?;
        applied = deployments
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
        if all_applied.is_none() && applied >= total {
            all_applied = Some(started.elapsed().as_secs_f64());
        }
        let current = |g: Option<i64>, generation: Option<i64>| g.is_some() && g == generation;
        written = ecs
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|o| {
                current(
                    o.status.as_ref().and_then(|s| s.observed_generation),
                    o.metadata.generation,
                )
            })
            .count()
            + outboxes
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|o| {
                    current(
                        o.status.as_ref().and_then(|s| s.observed_generation),
                        o.metadata.generation,
                    )
                })
                .count();
        if all_applied.is_some() && written == total {
            break Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > limit {
            progress(&format!(
                "operator scale: NOT converged after {limit:?}: {applied}/{total} Deployments, \
                 {written}/{total} statuses written; measuring the steady state anyway"
            ));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let (Some(a), Some(s)) = (all_applied, all_status) {
        progress(&format!(
            "operator scale: all Deployments applied after {a:.1} s, every status written after \
             {s:.1} s"
        ));
    }

    // Steady state: a window with nothing new, at least one status period long (full run);
    // when the cold start did not converge, the same window measures the operator still at it.
    let pid = operator.lock().unwrap().pid();
    let kafka_port = port_of(&setup.bootstrap).context("the Kafka port")?;
    let pg_port = url_port(&setup.database_url).unwrap_or(5432);
    let sessions_before = pg_sessions(&pg).await?;
    let cpu_before = operator.lock().unwrap().cpu_s();
    let window_start = Instant::now();
    let counts = tokio::task::spawn_blocking({
        let window = sizes.steady_window;
        move || count_new_connections(pid, &[kafka_port, pg_port], window)
    })
    .await??;
    let window = window_start.elapsed().as_secs_f64();
    let cpu = operator.lock().unwrap().cpu_s() - cpu_before;
    // The harness's own pool holds one session open; it opened none in the window.
    let sessions = pg_sessions(&pg).await? - sessions_before;
    operator.lock().unwrap().ensure_running()?;
    let peak = operator.lock().unwrap().peak_rss_bytes();
    drop(operator);
    let per_minute = |n: f64| n * 60.0 / window;
    progress(&format!(
        "operator steady state over {window:.0} s: {:.1} % of a core, {:.1} Kafka and {:.1} \
         PostgreSQL connections opened per minute",
        cpu / window * 100.0,
        per_minute(counts[0] as f64),
        per_minute(sessions as f64)
    ));
    Ok((
        Scale {
            event_consumers: sizes.event_consumers,
            outboxes: sizes.outboxes,
            limit_s: limit.as_secs_f64(),
            all_applied_s: all_applied,
            all_status_s: all_status,
            applied_at_end: applied,
            written_at_end: written,
            peak_rss_bytes: peak,
            steady_window_s: window,
            steady_cpu_percent: cpu / window * 100.0,
            kafka_connections_per_minute: per_minute(counts[0] as f64),
            postgres_connections_per_minute: per_minute(sessions as f64),
            postgres_sockets_seen_per_minute: per_minute(counts[1] as f64),
        },
        peak,
    ))
}

/// Sessions the database has accepted so far (`pg_stat_database.sessions`, PostgreSQL 14+).
async fn pg_sessions(pg: &sqlx::PgPool) -> Result<i64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pg)
    .await
    .context("pg_stat_database.sessions")?;
    Ok(n)
}

/// Counts the TCP connections process `pid` opens to each of `ports` during `window`: its
/// socket inodes (`/proc/<pid>/fd`) joined with the TCP table of its network namespace, every
/// 20 ms; a socket seen for the first time is a new connection. A connection opened and
/// closed between two samples is missed, so the counts are lower bounds.
fn count_new_connections(pid: u32, ports: &[u16], window: Duration) -> Result<Vec<u64>> {
    let mut known: HashSet<u64> = tcp_sockets(pid, ports)?.into_keys().collect();
    let mut counts = vec![0u64; ports.len()];
    let end = Instant::now() + window;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        for (inode, port) in tcp_sockets(pid, ports)? {
            if known.insert(inode)
                && let Some(i) = ports.iter().position(|p| *p == port)
            {
                counts[i] += 1;
            }
        }
    }
    Ok(counts)
}

/// The process's TCP sockets whose remote port is one of `ports`: inode → remote port.
fn tcp_sockets(pid: u32, ports: &[u16]) -> Result<HashMap<u64, u16>> {
    let mut inodes = HashSet::new();
    let dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let Ok(entry) = entry else { continue };
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
        {
            inodes.insert(inode);
        }
    }
    let mut out = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(inode)) = (fields.get(2), fields.get(9)) else {
                continue;
            };
            let Some(port) = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            let Ok(inode) = inode.parse::<u64>() else {
                continue;
            };
            if ports.contains(&port) && inodes.contains(&inode) {
                out.insert(inode, port);
            }
        }
    }
    Ok(out)
}

fn port_of(host_port: &str) -> Option<u16> {
    host_port
        .split(',')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

fn url_port(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1)?;
    let host = rest.split(['/', '?']).next()?;
    let host = host.rsplit('@').next()?;
    host.rsplit(':').next()?.parse().ok()
}

/// RSS of an idle worker: consuming an empty topic with the log sink, read after it joined
/// its group and has been idle for a few seconds.
async fn worker_idle_rss(setup: &OperatorSetup, topic: &str) -> Result<u64> {
    let log = setup.work_dir.join("worker-idle.log");
    let mut command = Command::new(&setup.worker);
    command
        .args(["--listen", "127.0.0.1:0", "consume"])
        .args(["--topics", topic, "--group-id", &format!("{topic}-idle")])
        .args(["--kafka-bootstrap-servers", &setup.bootstrap])
        .args(["--sink", "log", "--on-unknown-type", "skip"])
        .env("RUST_LOG", "warn");
    let mut proc = Proc::spawn("worker (idle)", command, None, &log)?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    proc.ensure_running()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.pid()))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .context("VmRSS")?;
    Ok(rss * 1024)
}

/// Polls `check` every 200 ms until it yields a value, failing naming `what` after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The archives `tests/env/images` printed (`<ref> <archive>` lines) or wrote under
/// `$PIPEWRIGHT_STATE/images`.
pub fn image_archives(state: &Path) -> Vec<PathBuf> {
    let dir = state.join("images");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "tar"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_bootstrap_servers_and_urls() {
        assert_eq!(port_of("10.244.0.1:54351"), Some(54351));
        assert_eq!(port_of("a:1,b:2"), Some(1));
        assert_eq!(
            url_port("postgres://postgres@10.244.0.1:36125/postgres"),
            Some(36125)
        );
        assert_eq!(url_port("postgres://u:p@h:5433/db?x=1"), Some(5433));
    }
}
