//! A real Prometheus (the server from the pinned Prometheus module, `$PROMETHEUS`) scraping the
//! operator and worker pods on the node the way the chart's ServiceMonitor and PodMonitor tell
//! the Prometheus Operator to: the two monitors, rendered by `helm template`, are translated
//! here into the scrape configuration the Prometheus Operator generates for them (Kubernetes
//! service discovery, a keep rule per selector label and for the named port, the monitor's own
//! relabelings, `namespace`/`pod` target labels), so a selector or port name that matches no
//! pod fails here. Then: the operator's lag metric, read back through PromQL, equals the lag in
//! the EventConsumer's status, and the worker's counters arrive with the PodMonitor's labels.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{NODE, Stack, WAIT, bootstrap, event_consumer, produce_steadily, repo, run, var};
use kube::Api;
use pipewright_crds::EventConsumer;
use pipewright_testenv::{create_topic, eventually, unique_name};
use serde_json::{Value, json};

/// A monitor rendered by the chart for `release` (`--show-only template`), as JSON.
fn rendered(template: &str, release: &str) -> Value {
    let chart = repo().join("charts/pipewright");
    let yaml = run(
        &var("HELM"),
        &[
            "template",
            release,
            chart.to_str().unwrap(),
            "--set",
            "podMonitor.enabled=true",
            "--set",
            "podMonitor.interval=2s",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.interval=2s",
            "--show-only",
            template,
        ],
    );
    serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{template}: {e}\n{yaml}"))
}

/// A Kubernetes label name as service discovery's meta labels spell it.
fn sanitized(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The scrape job the Prometheus Operator generates for one endpoint of a ServiceMonitor (role
/// `endpointslice`) or a PodMonitor (role `pod`), limited to `namespace`.
fn scrape_job(monitor: &Value, role: &str, namespace: &str, kubeconfig: &str) -> Value {
    let kind = monitor["kind"].as_str().unwrap();
    let name = monitor["metadata"]["name"].as_str().unwrap();
    let (endpoints, meta) = match role {
        "endpointslice" => ("endpoints", "service"),
        _ => ("podMetricsEndpoints", "pod"),
    };
    let endpoint = &monitor["spec"][endpoints][0];
    let mut relabel = Vec::new();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        relabel.push(json!({
            "action": "keep",
            "source_labels": [format!("__meta_kubernetes_{meta}_label_{}", sanitized(k))],
            "regex": v,
        }));
    }
    let port_label = match role {
        "endpointslice" => "__meta_kubernetes_endpointslice_port_name",
        _ => "__meta_kubernetes_pod_container_port_name",
    };
    relabel.push(json!({"action": "keep", "source_labels": [port_label],
        "regex": endpoint["port"]}));
    relabel.push(json!({"source_labels": ["__meta_kubernetes_namespace"],
        "target_label": "namespace"}));
    relabel.push(json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}));
    for r in endpoint["relabelings"].as_array().into_iter().flatten() {
        relabel.push(json!({
            "source_labels": r["sourceLabels"],
            "target_label": r["targetLabel"],
        }));
    }
    json!({
        "job_name": format!("{}/{namespace}/{name}/0", kind.to_lowercase()),
        "scrape_interval": endpoint["interval"],
        "metrics_path": endpoint["path"],
        "kubernetes_sd_configs": [{
            "role": role,
            "kubeconfig_file": kubeconfig,
            "namespaces": {"names": [namespace]},
        }],
        "relabel_configs": relabel,
    })
}

/// Prometheus on a free port of 127.0.0.1, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Prometheus {
    fn start(config: &Value) -> Prometheus {
        let dir = std::env::temp_dir().join(unique_name("pw-prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        // JSON is YAML: the configuration as written.
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, serde_json::to_string_pretty(config).unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(var("PROMETHEUS"))
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start $PROMETHEUS");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: tempdir::Dir(dir),
        }
    }

    /// An instant query's result vector (empty while there is none).
    async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query", self.url);
        let query = format!("query={promql}");
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-fsS", "--get", &url, "--data-urlencode", &query])
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The one sample of `promql` as a number.
    async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        let [one] = result.as_slice() else {
            return None;
        };
        one["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn e2e_prometheus_scrapes_the_operator_and_worker_pods_through_the_charts_monitors_and_the_lag_metric_equals_the_status()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-prom").await;
    let ns = stack.ns.name.clone();
    let kubeconfig = var("KUBECONFIG");
    let config = json!({
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [
            scrape_job(&rendered("templates/servicemonitor.yaml", stack.release()), "endpointslice", &ns, &kubeconfig),
            scrape_job(&rendered("templates/podmonitor.yaml", stack.release()), "pod", &ns, &kubeconfig),
        ],
    });
    let prometheus = Prometheus::start(&config);

    // A consumer with no workers keeps a fixed lag; one with a worker drains its topic.
    let idle_topic = create_topic("e2e-prom-idle", 2).await;
    let busy_topic = create_topic("e2e-prom-busy", 2).await;
    produce_steadily(&idle_topic, 500, 20, 0).await;
    produce_steadily(&busy_topic, 300, 20, 0).await;
    for (name, topic, replicas) in [("idle", &idle_topic, 0), ("busy", &busy_topic, 1)] {
        let _: EventConsumer = stack
            .apply(event_consumer(
                name,
                json!({
                    "kafka": {"bootstrapServers": bootstrap()},
                    "topics": [topic],
                    "groupId": unique_name(&format!("e2e-prom-{name}")),
                    "initialOffset": "earliest",
                    "processing": {"deadLetterTopic": format!("{topic}.dlq")},
                    "sink": {"log": {}},
                    "replicas": replicas,
                }),
            ))
            .await;
    }
    stack.wait_workers_ready("busy", 1).await;

    let consumers: Api<EventConsumer> = stack.api();
    let status_lag = eventually("idle's status lag 500", WAIT, || async {
        let lag = consumers.get("idle").await.ok()?.status?.total_lag?;
        (lag == 500).then_some(lag)
    })
    .await;
    let scraped = eventually(
        "the operator's lag metric for idle in Prometheus",
        WAIT,
        || async {
            prometheus
                .value(&format!(
                    "sum(pipewright_operator_consumergroup_lag_sum{{eventconsumer=\"idle\", job=~\"servicemonitor/{ns}/.*\"}})"
                ))
                .await
        },
    )
    .await;
    assert_eq!(scraped, status_lag as f64, "PromQL lag = status.totalLag");

    // The worker's counters, labelled by the PodMonitor's relabelings.
    let processed = eventually("busy's 300 records in the worker's counter", WAIT, || async {
        let v = prometheus
            .value(&format!(
                "sum(pipewright_consumer_processed_total{{resource=\"busy\", component=\"event-consumer\", namespace=\"{ns}\", job=~\"podmonitor/{ns}/.*\"}})"
            ))
            .await?;
        (v >= 300.0).then_some(v)
    })
    .await;
    assert_eq!(processed, 300.0);
    let busy_lag = eventually(
        "busy's lag 0 in Prometheus and the status",
        WAIT,
        || async {
            let v = prometheus
                .value("sum(pipewright_operator_consumergroup_lag_sum{eventconsumer=\"busy\"})")
                .await?;
            let status = consumers.get("busy").await.ok()?.status?.total_lag?;
            (v == 0.0 && status == 0).then_some(v)
        },
    )
    .await;
    assert_eq!(busy_lag, 0.0);
    let targets = prometheus.query("up == 1").await;
    let jobs: std::collections::BTreeSet<String> = targets
        .iter()
        .filter_map(|t| t["metric"]["job"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(jobs.len(), 2, "both monitors' targets are up: {targets:#?}");
    println!(
        "Prometheus: lag {scraped} = status {status_lag}; worker processed {processed}; up: {jobs:?}"
    );
    drop(prometheus);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stack.down().await;
}
