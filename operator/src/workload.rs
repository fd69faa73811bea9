//! The worker workload both kinds share: from a [`WorkerPlan`] (what a kind's spec asks of its
//! worker) to the desired ServiceAccount, ConfigMap, Deployment, Service and
//! PodDisruptionBudget. Pure functions, no client: the reconcile applies what they return
//! with server-side apply.
//!
//! The worker's configuration is one JSON file ([`pipewright_crds::worker_config`]) in the
//! ConfigMap, mounted read-only and named by `--config`; credentials are mounted from the
//! referenced Secrets as files whose paths the configuration holds (never copied into the
//! ConfigMap). The pod template carries a hash of the ConfigMap's data and of the referenced
//! Secrets' data, so that a change to either rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pipewright_crds::WorkerPod;
use pipewright_crds::common::{Tracing, otel_env};
use pipewright_crds::worker_config::{self, CONFIG_DIR, CONFIG_FILE};
use sha2::{Digest, Sha256};

/// The annotation holding the hash of the rendered worker configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "pipewright.io/config-hash";
/// The annotation holding the hash of the referenced Secrets' data.
pub const SECRETS_HASH_ANNOTATION: &str = "pipewright.io/secrets-hash";
/// The Deployment annotation recording when the autoscaler last changed replicas (RFC 3339).
pub const LAST_SCALE_ANNOTATION: &str = "pipewright.io/last-scale-time";
/// The annotation that pauses a resource: the operator changes nothing while it is `"true"`.
pub const PAUSED_ANNOTATION: &str = "pipewright.io/paused";
/// The port of the worker's /metrics, /healthz and /readyz.
pub const WORKER_PORT: i32 = 8080;
/// Seconds a worker gets beyond its drain deadline before the kubelet kills it.
pub const TERMINATION_MARGIN_SECONDS: i64 = 10;
/// The user and group the worker runs as (the distroless `nonroot` user).
pub const WORKER_UID: i64 = 65532;

/// The worker mode and the labels it gives its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    EventConsumer,
    Outbox,
}

impl Component {
    /// The `app.kubernetes.io/component` label value.
    pub fn label(self) -> &'static str {
        match self {
            Component::EventConsumer => "event-consumer",
            Component::Outbox => "outbox",
        }
    }

    /// The suffix of the children's names (`<resource>-<suffix>`).
    pub fn suffix(self) -> &'static str {
        match self {
            Component::EventConsumer => "consumer",
            Component::Outbox => "outbox",
        }
    }

    /// The worker subcommand.
    pub fn mode(self) -> &'static str {
        match self {
            Component::EventConsumer => "consume",
            Component::Outbox => "outbox",
        }
    }
}

/// The worker's configuration file, of either mode.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerConfig {
    /// `pipewright-worker consume`.
    Consume(Box<worker_config::Consume>),
    /// `pipewright-worker outbox`.
    Outbox(Box<worker_config::Outbox>),
}

impl WorkerConfig {
    /// The file's content.
    pub fn to_json(&self) -> String {
        match self {
            WorkerConfig::Consume(c) => worker_config::to_json(c),
            WorkerConfig::Outbox(o) => worker_config::to_json(o),
        }
    }
}

/// The arguments of the worker container: the process flags, the mode, the configuration
/// file.
pub fn worker_args(component: Component) -> Vec<String> {
    vec![
        "--listen".into(),
        format!("0.0.0.0:{WORKER_PORT}"),
        "--log-format".into(),
        "json".into(),
        component.mode().into(),
        "--config".into(),
        format!("{CONFIG_DIR}/{CONFIG_FILE}"),
    ]
}

/// A Secret mounted into the worker as files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMount {
    /// Volume name.
    pub volume: String,
    /// The Secret, in the resource's namespace.
    pub secret: String,
    /// Only these keys, as `(key, file name)`; empty: every key under its own name.
    pub items: Vec<(String, String)>,
    /// Directory in the container.
    pub path: String,
}

/// A ConfigMap mounted into the worker as files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapMount {
    pub volume: String,
    pub config_map: String,
    pub path: String,
}

/// What a resource asks of its worker; [`desired`] turns it into objects.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerPlan {
    pub component: Component,
    /// The resource's name and namespace.
    pub name: String,
    pub namespace: String,
    /// The controller owner reference to the resource.
    pub owner: OwnerReference,
    pub image: String,
    /// The worker's configuration (rendered into the ConfigMap as [`CONFIG_FILE`]).
    pub config: WorkerConfig,
    pub secret_mounts: Vec<SecretMount>,
    pub config_map_mounts: Vec<ConfigMapMount>,
    pub replicas: i32,
    pub resources: Option<ResourceRequirements>,
    /// The spec's pod settings (scheduling, pull Secrets, metadata, extra environment).
    pub pod: Option<WorkerPod>,
    /// The spec's traces (`observability.tracing`): rendered as `OTEL_*` environment.
    pub tracing: Option<Tracing>,
    /// The worker's drain deadline; the pod's grace period adds a margin to it.
    pub drain_seconds: i64,
    /// Hash of the referenced Secrets' data.
    pub secrets_hash: String,
    /// When the autoscaler last changed replicas (kept on the Deployment).
    pub last_scale_time: Option<String>,
}

/// The objects a resource's worker consists of.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub pod_disruption_budget: PodDisruptionBudget,
}

/// `Some(list)` unless it is empty: an unset field stays out of the pod template.
fn nonempty<T: Clone>(list: &[T]) -> Option<Vec<T>> {
    (!list.is_empty()).then(|| list.to_vec())
}

/// The name of a resource's children: `<name>-<suffix>`, shortened with a hash when that would
/// exceed 63 characters (a Service name must be a DNS label).
pub fn child_name(name: &str, component: Component) -> String {
    let suffix = component.suffix();
    let full = format!("{name}-{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let hash = &hex_sha256(name.as_bytes())[..8];
    let keep = 63 - suffix.len() - hash.len() - 2;
    let head = name[..keep].trim_end_matches('-');
    format!("{head}-{hash}-{suffix}")
}

/// The labels that select a resource's worker pods.
pub fn selector_labels(name: &str, component: Component) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "pipewright-worker"),
        ("app.kubernetes.io/instance", name),
        ("app.kubernetes.io/component", component.label()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The selector labels plus `app.kubernetes.io/managed-by`.
pub fn labels(name: &str, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name, component);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        crate::MANAGER.to_string(),
    );
    labels
}

/// The label selector of the worker pods in string form (status.selector, for the scale
/// subresource).
pub fn selector_string(name: &str, component: Component) -> String {
    selector_labels(name, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The label selector that finds every child of one component (the operator's watches).
pub fn component_selector(component: Component) -> String {
    format!(
        "app.kubernetes.io/managed-by={},app.kubernetes.io/component={}",
        crate::MANAGER,
        component.label()
    )
}

/// Hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A content hash of string data (sorted: a BTreeMap), 16 hex digits.
pub fn data_hash<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in entries {
        hasher.update((k.len() as u64).to_be_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.len() as u64).to_be_bytes());
        hasher.update(v);
    }
    format!("{:x}", hasher.finalize())[..16].to_string()
}

/// The worker container's environment: the traces' `OTEL_*` variables, then the spec's
/// `pod.env` (later entries win, so `pod.env` may override or add `OTEL_*` settings).
fn worker_env(plan: &WorkerPlan) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if let Some(t) = &plan.tracing {
        let var = |name: &str, value: String| EnvVar {
            name: name.into(),
            value: Some(value),
            ..EnvVar::default()
        };
        let service = t
            .service_name
            .clone()
            .unwrap_or_else(|| child_name(&plan.name, plan.component));
        let ratio = f64::from(t.sampling_percent.unwrap_or(100)) / 100.0;
        env.extend([
            var(otel_env::ENDPOINT, t.endpoint.clone()),
            var(otel_env::PROTOCOL, otel_env::PROTOCOL_HTTP_PROTOBUF.into()),
            var(otel_env::SERVICE_NAME, service),
            var(
                otel_env::RESOURCE_ATTRIBUTES,
                format!(
                    "k8s.namespace.name={},k8s.deployment.name={}",
                    plan.namespace,
                    child_name(&plan.name, plan.component)
                ),
            ),
            var(
                otel_env::SAMPLER,
                otel_env::SAMPLER_PARENT_BASED_RATIO.into(),
            ),
            var(otel_env::SAMPLER_ARG, ratio.to_string()),
        ]);
    }
    if let Some(pod) = &plan.pod {
        env.extend(pod.env.iter().cloned());
    }
    env
}

/// The desired objects of a worker plan.
pub fn desired(plan: &WorkerPlan) -> Desired {
    let name = child_name(&plan.name, plan.component);
    let labels = labels(&plan.name, plan.component);
    let selector = selector_labels(&plan.name, plan.component);
    let meta = |annotations: Option<BTreeMap<String, String>>| ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels.clone()),
        annotations,
        owner_references: Some(vec![plan.owner.clone()]),
        ..ObjectMeta::default()
    };

    let service_account_annotations = plan
        .pod
        .as_ref()
        .map(|p| p.service_account_annotations.clone())
        .filter(|a| !a.is_empty());
    let service_account = ServiceAccount {
        metadata: meta(service_account_annotations),
        // The worker never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };

    let data: BTreeMap<String, String> = [(CONFIG_FILE.to_string(), plan.config.to_json())].into();
    let config_hash = data_hash(data.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    let config_map = ConfigMap {
        metadata: meta(None),
        data: Some(data),
        ..ConfigMap::default()
    };

    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "64Mi".into(),
            )),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    let config_mount = ConfigMapMount {
        volume: "config".into(),
        config_map: name.clone(),
        path: CONFIG_DIR.into(),
    };
    for m in &plan.secret_mounts {
        volumes.push(Volume {
            name: m.volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(m.secret.clone()),
                items: (!m.items.is_empty()).then(|| {
                    m.items
                        .iter()
                        .map(|(key, path)| KeyToPath {
                            key: key.clone(),
                            path: path.clone(),
                            ..KeyToPath::default()
                        })
                        .collect()
                }),
                default_mode: Some(0o440),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: m.volume.clone(),
            mount_path: m.path.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    for m in std::iter::once(&config_mount).chain(&plan.config_map_mounts) {
        volumes.push(Volume {
            name: m.volume.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: m.config_map.clone(),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: m.volume.clone(),
            mount_path: m.path.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let pod = plan.pod.as_ref();
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "worker".into(),
        image: Some(plan.image.clone()),
        args: Some(worker_args(plan.component)),
        // No static group membership (`group.instance.id`): a Deployment's pods never come
        // back under their name (a rollout, a scale-down, an eviction or a deleted pod each
        // end a name for good), and a static member does not leave the group when it stops,
        // so its partitions would wait for its session to time out (librdkafka: 45 s)
        // before anyone consumed them again. A dynamic member leaves on SIGTERM, after its
        // drain and final commit, and the group hands its partitions on at once.
        env: nonempty(&worker_env(plan)),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: WORKER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        resources: plan.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            run_as_group: Some(WORKER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    // The spec's labels and annotations first: the operator's own keys (the schema refuses
    // them there) always win.
    let mut pod_annotations = pod.map(|p| p.annotations.clone()).unwrap_or_default();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), config_hash);
    pod_annotations.insert(
        SECRETS_HASH_ANNOTATION.to_string(),
        plan.secrets_hash.clone(),
    );
    let mut pod_labels = pod.map(|p| p.labels.clone()).unwrap_or_default();
    pod_labels.extend(labels.clone());
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name.clone()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(plan.drain_seconds + TERMINATION_MARGIN_SECONDS),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            node_selector: pod
                .filter(|p| !p.node_selector.is_empty())
                .map(|p| p.node_selector.clone()),
            tolerations: pod.and_then(|p| nonempty(&p.tolerations)),
            affinity: pod.and_then(|p| p.affinity.clone()),
            topology_spread_constraints: pod.and_then(|p| nonempty(&p.topology_spread_constraints)),
            priority_class_name: pod.and_then(|p| p.priority_class_name.clone()),
            image_pull_secrets: pod.and_then(|p| nonempty(&p.image_pull_secrets)),
            ..PodSpec::default()
        }),
    };
    let deployment = Deployment {
        metadata: meta(
            plan.last_scale_time
                .as_ref()
                .map(|t| [(LAST_SCALE_ANNOTATION.to_string(), t.clone())].into()),
        ),
        spec: DeploymentSpec {
            replicas: Some(plan.replicas),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            template,
            ..DeploymentSpec::default()
        },
        status: None,
    };

    // Headless: it names the workers' metrics endpoints for scrapers that discover pods
    // through it (a ServiceMonitor), which never use a virtual IP. Without one, no address of
    // the Service CIDR is taken per resource, and it is made faster (no IPAddress object:
    // 114 ms against 9-19 ms for the other children, mean apply at a cold start here).
    let service = Service {
        metadata: meta(None),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: WORKER_PORT,
                target_port: Some(IntOrString::String("metrics".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };

    let pod_disruption_budget = PodDisruptionBudget {
        metadata: meta(None),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    };

    Desired {
        service_account,
        config_map,
        deployment,
        service,
        pod_disruption_budget,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "pipewright.io/v1alpha1".into(),
            kind: "Outbox".into(),
            name: "orders".into(),
            uid: "0000-1111".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn plan() -> WorkerPlan {
        WorkerPlan {
            component: Component::Outbox,
            name: "orders".into(),
            namespace: "shop".into(),
            owner: owner(),
            image: "pipewright-worker:dev".into(),
            config: WorkerConfig::Outbox(Box::new(
                worker_config::fixtures::every_field_outbox().remove(0),
            )),
            secret_mounts: vec![SecretMount {
                volume: "database".into(),
                secret: "db".into(),
                items: vec![("dsn".into(), "url".into())],
                path: "/var/run/secrets/pipewright/database".into(),
            }],
            config_map_mounts: vec![],
            replicas: 2,
            resources: None,
            pod: None,
            tracing: None,
            drain_seconds: 30,
            secrets_hash: "abc".into(),
            last_scale_time: None,
        }
    }

    #[test]
    fn every_child_is_owned_by_the_resource_and_labelled() {
        let d = desired(&plan());
        let metas = [
            &d.service_account.metadata,
            &d.config_map.metadata,
            &d.deployment.metadata,
            &d.service.metadata,
            &d.pod_disruption_budget.metadata,
        ];
        for m in metas {
            assert_eq!(m.name.as_deref(), Some("orders-outbox"));
            assert_eq!(m.namespace.as_deref(), Some("shop"));
            assert_eq!(m.owner_references.as_ref().unwrap(), &vec![owner()]);
            let labels = m.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "orders");
            assert_eq!(labels["app.kubernetes.io/managed-by"], crate::MANAGER);
        }
    }

    #[test]
    fn the_worker_reads_its_configuration_file_from_the_mounted_config_map() {
        let p = plan();
        let d = desired(&p);
        let data = d.config_map.data.unwrap();
        assert_eq!(data.len(), 1);
        let file: worker_config::Outbox = worker_config::from_json(&data[CONFIG_FILE]).unwrap();
        assert_eq!(WorkerConfig::Outbox(Box::new(file)), p.config);
        let pod = d.deployment.spec.template.spec.unwrap();
        let container = &pod.containers[0];
        // No per-pod environment: every pod of the Deployment gets the same configuration.
        assert_eq!(container.env, None);
        assert_eq!(container.env_from, None);
        let args = container.args.clone().unwrap();
        assert_eq!(
            args[args.len() - 3..],
            ["outbox", "--config", "/etc/pipewright/config/worker.json"]
        );
        let mount = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == CONFIG_DIR)
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(volume.config_map.unwrap().name, "orders-outbox");
    }

    #[test]
    fn the_pod_template_meets_the_restricted_pod_security_profile() {
        let d = desired(&plan());
        let pod = d.deployment.spec.template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
        // Only non-privileged volume types (restricted profile): emptyDir, secret, configMap.
        for v in pod.volumes.unwrap() {
            assert!(v.empty_dir.is_some() || v.secret.is_some() || v.config_map.is_some());
        }
    }

    #[test]
    fn secrets_are_mounted_not_copied_into_the_config_map() {
        let d = desired(&plan());
        let data = d.config_map.data.unwrap();
        assert!(data.values().all(|v| !v.contains("postgres://")));
        let pod = d.deployment.spec.template.spec.unwrap();
        let secret = pod
            .volumes
            .unwrap()
            .into_iter()
            .find_map(|v| v.secret)
            .unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("db"));
        assert_eq!(secret.items.unwrap()[0].path, "url");
    }

    #[test]
    fn a_config_or_secret_change_changes_the_pod_template() {
        let base = desired(&plan()).deployment.spec.template;
        let mut p = plan();
        let WorkerConfig::Outbox(config) = &mut p.config else {
            unreachable!("an outbox plan")
        };
        config.poll.batch_size = 7;
        assert_ne!(desired(&p).deployment.spec.template, base);
        let mut p = plan();
        p.secrets_hash = "def".into();
        assert_ne!(desired(&p).deployment.spec.template, base);
        // Replicas are not part of the template: scaling does not roll pods.
        let mut p = plan();
        p.replicas = 5;
        assert_eq!(desired(&p).deployment.spec.template, base);
    }

    #[test]
    fn long_names_are_shortened_to_a_dns_label_without_colliding() {
        let long = "a".repeat(63);
        let other = format!("{}b", "a".repeat(62));
        let a = child_name(&long, Component::EventConsumer);
        let b = child_name(&other, Component::EventConsumer);
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.ends_with("-consumer"));
        assert_eq!(child_name("x", Component::Outbox), "x-outbox");
    }

    #[test]
    fn the_selector_string_matches_the_pod_labels() {
        let d = desired(&plan());
        let labels = d.deployment.spec.template.metadata.unwrap().labels.unwrap();
        for pair in selector_string("orders", Component::Outbox).split(',') {
            let (k, v) = pair.split_once('=').unwrap();
            assert_eq!(labels[k], v);
        }
    }

    fn base_service_account_annotations() -> Option<BTreeMap<String, String>> {
        desired(&plan()).service_account.metadata.annotations
    }

    #[test]
    fn pod_settings_reach_the_pod_template_and_the_operators_keys_win() {
        let base = desired(&plan()).deployment.spec.template;
        let mut p = plan();
        p.pod = Some(WorkerPod::default());
        assert_eq!(
            desired(&p).deployment.spec.template,
            base,
            "an empty pod block renders the same pods (nothing rolls)"
        );
        let pod: WorkerPod = serde_json::from_value(serde_json::json!({
            "labels": {"team": "payments"},
            "annotations": {"sidecar.istio.io/inject": "false"},
            "nodeSelector": {"disktype": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "events",
                             "effect": "NoSchedule"}],
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                 "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "orders"}}}}]}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                           "whenUnsatisfiable": "ScheduleAnyway"}],
            "priorityClassName": "events-high",
            "imagePullSecrets": [{"name": "registry"}],
            "env": [{"name": "RUST_LOG", "value": "debug"}],
            "serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/msk"},
        }))
        .unwrap();
        p.pod = Some(pod.clone());
        assert_eq!(
            desired(&p).service_account.metadata.annotations,
            Some(pod.service_account_annotations.clone()),
            "the workload identity's annotations are on the workers' ServiceAccount"
        );
        assert_eq!(base_service_account_annotations(), None);
        let t = desired(&p).deployment.spec.template;
        let meta = t.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels["app.kubernetes.io/instance"], "orders");
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["sidecar.istio.io/inject"], "false");
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        let spec = t.spec.unwrap();
        assert_eq!(spec.node_selector, Some(pod.node_selector.clone()));
        assert_eq!(spec.tolerations, Some(pod.tolerations.clone()));
        assert_eq!(spec.affinity, pod.affinity.clone());
        assert_eq!(
            spec.topology_spread_constraints,
            Some(pod.topology_spread_constraints.clone())
        );
        assert_eq!(spec.priority_class_name.as_deref(), Some("events-high"));
        assert_eq!(
            spec.image_pull_secrets,
            Some(pod.image_pull_secrets.clone())
        );
        assert_eq!(spec.containers[0].env, Some(pod.env.clone()));
        // The security settings stay the operator's.
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    fn env_of(p: &WorkerPlan) -> Vec<(String, String)> {
        let spec = desired(p).deployment.spec.template.spec.unwrap();
        spec.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn tracing_renders_the_standard_otel_variables_and_pod_env_comes_after_them() {
        assert!(env_of(&plan()).is_empty(), "no tracing, no pod env: no env");
        let mut p = plan();
        p.tracing = Some(Tracing {
            endpoint: "http://collector.observability:4318".into(),
            sampling_percent: Some(25),
            service_name: None,
        });
        p.pod = Some(WorkerPod {
            env: vec![EnvVar {
                name: "OTEL_SERVICE_NAME".into(),
                value: Some("mine".into()),
                ..EnvVar::default()
            }],
            ..WorkerPod::default()
        });
        let env = env_of(&p);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                (otel_env::ENDPOINT, "http://collector.observability:4318"),
                (otel_env::PROTOCOL, "http/protobuf"),
                (otel_env::SERVICE_NAME, "orders-outbox"),
                (
                    otel_env::RESOURCE_ATTRIBUTES,
                    "k8s.namespace.name=shop,k8s.deployment.name=orders-outbox"
                ),
                (otel_env::SAMPLER, "parentbased_traceidratio"),
                (otel_env::SAMPLER_ARG, "0.25"),
                // Later entries win: the spec's own setting overrides the default name.
                ("OTEL_SERVICE_NAME", "mine"),
            ]
        );
    }
}
