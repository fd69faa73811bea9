//! Harness of the operator's integration tests: CRD installation, the operator binary run as
//! a child process scoped to the test's namespace, and small helpers.

#![allow(dead_code)] // Each test binary uses part of the harness.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::{Client, ResourceExt};
use pipewright_testenv::{eventually, unique_name};

/// Generous: a loaded 2-core machine runs the control plane, Kafka, PostgreSQL and the build.
pub const WAIT: Duration = Duration::from_secs(120);

/// The Lease duration of the leader-election tests' operators (renew deadline 4 s, a round
/// every 1.2 s). The other tests run one operator with the default (15 s), so that a slow
/// apiserver on a loaded machine does not make it step down.
pub const LEASE_DURATION: Duration = Duration::from_secs(6);

pub use pipewright_testenv::install_crds;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `pipewright-operator` process watching one namespace (its Lease lives there too). Killed
/// when dropped.
#[derive(Debug)]
pub struct Operator {
    pub identity: String,
    pub metrics_port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Operator {
    /// Starts the operator for `namespace` with a short status period; `extra` adds flags.
    pub fn start(namespace: &str, extra: &[&str]) -> Operator {
        Operator::start_as(namespace, "pipewright-operator", None, extra)
    }

    /// One of several operators competing for the Lease: [`LEASE_DURATION`], JSON logs (read
    /// with [`Operator::log_events`]).
    pub fn candidate(namespace: &str) -> Operator {
        let duration = format!("{}s", LEASE_DURATION.as_secs());
        Operator::start(
            namespace,
            &["--lease-duration", &duration, "--log-json", "true"],
        )
    }

    /// As [`Operator::start`], with the Lease named `lease` and, when given, the identity of
    /// `kubeconfig` instead of the test environment's cluster-admin.
    pub fn start_as(
        namespace: &str,
        lease: &str,
        kubeconfig: Option<&std::path::Path>,
        extra: &[&str],
    ) -> Operator {
        let identity = unique_name("operator");
        let metrics_port = free_port();
        let health_port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pipewright-operator"))
            .args([
                "--namespace",
                namespace,
                "--leader-election-namespace",
                namespace,
                "--lease-name",
                lease,
                "--identity",
                &identity,
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
                "--health-listen",
                &format!("127.0.0.1:{health_port}"),
                "--status-period",
                "2s",
                "--worker-image",
                "pipewright-worker:test",
            ])
            .args(extra)
            .envs(kubeconfig.map(|k| ("KUBECONFIG", k.as_os_str())))
            .env("RUST_LOG", "info,pipewright_operator=debug")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start pipewright-operator");
        Operator {
            identity,
            metrics_port,
            log,
            child,
        }
    }

    /// Kills the process at once (SIGKILL): no lease release, no drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its exit status once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The lines of its log written as JSON (`--log-json true`), in order.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The text of its /metrics, or None while it does not answer.
    pub fn metrics(&self) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        Some(body)
    }

    /// The value of a metric line starting with `prefix` (summed over matching lines).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.metrics()?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        Some(values.iter().sum())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The condition of `type_`.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The Deployment `name` once it exists.
pub async fn deployment(client: &Client, ns: &str, name: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually(&format!("Deployment {name}"), WAIT, || async {
        api.get_opt(name).await.ok().flatten()
    })
    .await
}

/// A pod-template annotation of a Deployment.
pub fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// The uid of a resource.
pub fn uid<K: ResourceExt>(obj: &K) -> String {
    obj.uid().expect("a stored object has a uid")
}
