//! The reconcile both kinds share, generic over [`Pipeline`]:
//!
//! 1. build the worker plan from the spec (pure; an invalid spec stops here, Degraded/InvalidSpec);
//! 2. read the referenced Secrets (missing: Degraded/SecretNotFound, nothing applied);
//! 3. unless paused: apply the desired children with server-side apply (one field manager,
//!    [`crate::MANAGER`]) at the replicas they run (a new resource: its minimum) — before any
//!    measurement, so a new resource gets its Deployment at once; the children the pods refer
//!    to concurrently, then the Deployment;
//! 4. measure (Kafka lag or outbox backlog; unreachable: Degraded with the cause) and, when
//!    the autoscaler decides other replicas on it, apply the Deployment again;
//! 5. read the worker pods' reports (counters, delivery health; [`crate::report`]), at most
//!    once per status period like the figures;
//! 6. compute the status and write it only when it differs from the stored one.
//!
//! Triggers: the resource itself, filtered to generation and annotation changes (so the
//! operator's own status writes do not come back as reconciles), its children (metadata
//! watches, by owner reference), the Secrets it references (metadata watch, mapped through the
//! reflector's store), and a requeue after `--status-period` to refresh the measured figures:
//! the one thing no watch can tell.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::context::{Context, Settings};
use crate::error::{Chain, Error, Result};
use crate::measure::Clients;
use crate::metrics::{ErrorLabels, KindLabels};
use crate::report::{self, Reports};
use crate::status::{self, Problem, Rollout, Workers, reasons};
use crate::workload::{
    self, Component, LAST_SCALE_ANNOTATION, PAUSED_ANNOTATION, WorkerPlan, child_name,
    component_selector, selector_string,
};
use pipewright_crds::conditions;
use pipewright_crds::termination::RecordRef;

/// A Secret (and, optionally, one key in it) that a resource references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse {
    pub name: String,
    pub key: Option<String>,
}

/// The referenced Secrets, read for one reconcile. `Debug` shows names only.
pub struct Secrets {
    by_name: BTreeMap<String, Secret>,
}

impl Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl Secrets {
    /// From Secrets already read (for tests).
    pub fn from_secrets(secrets: impl IntoIterator<Item = Secret>) -> Secrets {
        Secrets {
            by_name: secrets.into_iter().map(|s| (s.name_any(), s)).collect(),
        }
    }

    /// The value of `key` in Secret `name`, as UTF-8.
    pub fn value(&self, name: &str, key: &str) -> Option<String> {
        let data = self.by_name.get(name)?.data.as_ref()?;
        String::from_utf8(data.get(key)?.0.clone()).ok()
    }

    /// Every key of Secret `name` whose value is UTF-8.
    pub fn entries(&self, name: &str) -> Vec<(String, String)> {
        self.by_name
            .get(name)
            .and_then(|s| s.data.as_ref())
            .map(|d| {
                d.iter()
                    .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A hash of every referenced Secret's data: the pod-template annotation that rolls the
    /// workers when a Secret changes.
    pub fn hash(&self) -> String {
        let entries: Vec<(String, Vec<u8>)> = self
            .by_name
            .iter()
            .flat_map(|(name, s)| {
                s.data
                    .iter()
                    .flatten()
                    .map(move |(k, v)| (format!("{name}/{k}"), v.0.clone()))
            })
            .collect();
        workload::data_hash(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }
}

/// The status fields both kinds share.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommonStatus {
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub selector: Option<String>,
}

/// A kind of resource that runs as a worker Deployment.
pub trait Pipeline:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The worker mode.
    const COMPONENT: Component;
    /// The `kind` label of metrics.
    const KIND: &'static str;
    /// The resource's status type.
    type Status: Serialize + Clone + PartialEq + Default + Debug + Send + Sync;
    /// What is measured for it.
    type Figures: Clone + Debug + Send + Sync + 'static;

    /// The Secrets the spec references.
    fn secret_uses(&self) -> Vec<SecretUse>;
    /// The worker plan (pure). `replicas`, `secrets_hash` and `last_scale_time` are filled in
    /// by the reconcile.
    fn plan(&self, settings: &Settings) -> Result<WorkerPlan>;
    /// Measures the figures of the status, with the pooled `clients`.
    fn measure(
        &self,
        secrets: &Secrets,
        settings: &Settings,
        clients: &Clients,
    ) -> impl Future<Output = Result<Self::Figures>> + Send;
    /// The replicas to run, given those running, the figures and the autoscaler's cooldown.
    fn replicas(&self, scale: Scale<'_, Self::Figures>) -> i32;
    /// The stored status.
    fn stored_status(&self) -> Option<&Self::Status>;
    /// The conditions of a status.
    fn conditions_of(status: &Self::Status) -> &[Condition];
    /// The observed generation of a status.
    fn observed_generation_of(status: &Self::Status) -> Option<i64>;
    /// The figures show the workers moved past `record` (a record a worker stopped on):
    /// the report of it is history. Kinds without records never do.
    fn moved_past(_figures: &Self::Figures, _record: &RecordRef) -> bool {
        false
    }
    /// The new status: the common part, plus the figures (absent: keep the previous ones;
    /// measuredTime moves only when the figures change) and the workers' reports (absent:
    /// not read, keep the previous ones; reportTime moves only when what they say changes).
    fn status(
        &self,
        common: CommonStatus,
        figures: Option<&Self::Figures>,
        reports: Option<&Reports>,
        now: Timestamp,
    ) -> Self::Status;
}

/// Inputs of a replica decision.
#[derive(Debug)]
pub struct Scale<'a, F> {
    /// Replicas of the existing Deployment.
    pub current: Option<i32>,
    pub figures: Option<&'a F>,
    pub last_scale: Option<Timestamp>,
    pub now: Timestamp,
    pub settings: &'a Settings,
    /// What the worker pods say (absent: not read yet).
    pub workers: Option<&'a Workers>,
}

/// The worker pods of `name`.
async fn list_worker_pods<K: Pipeline>(client: &Client, ns: &str, name: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = selector_string(name, K::COMPONENT);
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// True when the resource carries `pipewright.io/paused: "true"`.
pub fn is_paused(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(PAUSED_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// The condition a failure shows as.
pub fn problem_of(e: &Error) -> Problem {
    let reason = match e {
        Error::SecretNotFound { .. } => conditions::SECRET_NOT_FOUND,
        Error::InvalidSpec { .. } => reasons::INVALID_SPEC,
        Error::KafkaUnreachable(_) => conditions::KAFKA_UNREACHABLE,
        Error::TopicNotFound(_) => reasons::TOPIC_NOT_FOUND,
        Error::DatabaseUnreachable(_) => conditions::DATABASE_UNREACHABLE,
        Error::Kube(_)
        | Error::Serialize { .. }
        | Error::Join(_)
        | Error::NotLeading
        | Error::Listen { .. } => "ReconcileError",
    };
    Problem::new(reason, Chain(e).to_string())
}

/// Applies `obj` with server-side apply, forced: the operator owns the fields it sets.
pub async fn apply<T>(client: &Client, ns: &str, obj: &T) -> Result<T>
where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<T> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(crate::MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Applies a resource's children: the ones the pods refer to at once, then the Deployment.
async fn apply_children(
    client: &Client,
    ns: &str,
    desired: &workload::Desired,
) -> Result<Deployment> {
    futures::try_join!(
        apply(client, ns, &desired.service_account),
        apply(client, ns, &desired.config_map),
        apply(client, ns, &desired.service),
        apply(client, ns, &desired.pod_disruption_budget),
    )?;
    apply(client, ns, &desired.deployment).await
}

/// Reads the referenced Secrets; the first that (or whose key) is missing is an error.
pub async fn fetch_secrets(client: &Client, ns: &str, uses: &[SecretUse]) -> Result<Secrets> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut by_name = BTreeMap::new();
    for u in uses {
        let missing = || Error::SecretNotFound {
            name: u.name.clone(),
            key: u.key.clone(),
        };
        if !by_name.contains_key(&u.name) {
            let secret = api.get_opt(&u.name).await?.ok_or_else(missing)?;
            by_name.insert(u.name.clone(), secret);
        }
        if let Some(key) = &u.key {
            let has = by_name[&u.name]
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key(key));
            if !has {
                return Err(missing());
            }
        }
    }
    Ok(Secrets { by_name })
}

/// The status subresource apply body: typed status, nothing else.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a, S> {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    status: &'a S,
}

fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Reconciles one resource (metrics around [`reconcile_inner`]), only while this process
/// leads: when [`Context::leadership`] is cancelled the reconcile is dropped at its next
/// await, before it sends another request, and ends with [`Error::NotLeading`]. Each
/// reconcile ends with a debug line `reconcile ended` carrying the wall-clock `started` and
/// `ended`: every request it sent lies between the two (the record the leader-election test
/// checks for overlaps). Everything logged during a reconcile is inside a `reconcile` span
/// with the resource's kind, namespace, name and generation.
pub async fn reconcile<K: Pipeline>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let started_at = Timestamp::now();
    let started = Instant::now();
    let labels = KindLabels { kind: K::KIND };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    // Every line logged while reconciling carries the resource (the span's fields).
    let span = info_span!(
        "reconcile",
        kind = K::KIND,
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = %obj.name_any(),
        generation = obj.meta().generation,
    );
    let result = async {
        tokio::select! {
            biased;
            () = ctx.leadership.cancelled() => Err(Error::NotLeading),
            r = reconcile_inner(obj.as_ref(), &ctx) => r,
        }
    }
    .instrument(span)
    .await;
    debug!(
        kind = K::KIND,
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = %obj.name_any(),
        started = %started_at,
        ended = %Timestamp::now(),
        outcome = result.as_ref().map_or_else(Error::metric_label, |_| "Ok"),
        "reconcile ended"
    );
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.succeeded(&key_of(obj.as_ref())),
        Err(e) => {
            ctx.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    kind: K::KIND,
                    reason: e.metric_label(),
                })
                .inc();
        }
    }
    result
}

async fn reconcile_inner<K: Pipeline>(obj: &K, ctx: &Context) -> Result<Action> {
    if obj.meta().deletion_timestamp.is_some() {
        // Being deleted (foreground): the garbage collector removes the children; applying
        // them again would fight it.
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.name_any();
    let generation = obj.meta().generation;
    let now = Timestamp::now();
    let paused = is_paused(obj.meta());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let child = child_name(&name, K::COMPONENT);
    let mut deployment = deployments.get_opt(&child).await?;

    let mut problem: Option<Problem> = None;
    let mut failure: Option<Error> = None;
    let mut figures = None;
    let mut scaled: Option<(i32, i32)> = None;
    let mut workers: Option<Workers> = None;
    let mut pods: Option<Vec<Pod>> = None;

    match obj.plan(&ctx.settings) {
        Err(e) => {
            problem = Some(problem_of(&e));
            failure = Some(e);
        }
        Ok(mut plan) => match fetch_secrets(client, &ns, &obj.secret_uses()).await {
            Err(e @ Error::SecretNotFound { .. }) => {
                problem = Some(problem_of(&e));
                failure = Some(e);
            }
            Err(e) => return Err(e),
            Ok(secrets) => {
                plan.secrets_hash = secrets.hash();
                // Apply first: a new or changed resource gets its children without waiting for
                // a measurement. Replicas stay as they are (a new resource: its minimum), only
                // brought within the bounds; the measurement below may then scale.
                let mut applied = None;
                if !paused {
                    let current = deployment.as_ref().and_then(|d| d.spec.replicas);
                    let previous_scale = deployment
                        .as_ref()
                        .and_then(|d| d.annotations().get(LAST_SCALE_ANNOTATION).cloned());
                    let kept = obj.replicas(Scale {
                        current,
                        figures: None,
                        last_scale: previous_scale.as_ref().and_then(|t| t.parse().ok()),
                        now,
                        settings: &ctx.settings,
                        workers: None,
                    });
                    plan.replicas = kept;
                    plan.last_scale_time = match current {
                        Some(c) if c != kept => {
                            scaled = Some((c, kept));
                            Some(now.to_string())
                        }
                        _ => previous_scale,
                    };
                    deployment =
                        Some(apply_children(client, &ns, &workload::desired(&plan)).await?);
                    applied = Some(kept);
                }
                // The reconciles this one's applies trigger reuse its figures; the status
                // period's requeue (or a changed spec or Secret) measures again.
                let key = key_of(obj);
                let of = format!(
                    "{}/{}/{}",
                    obj.meta().uid.as_deref().unwrap_or_default(),
                    generation.unwrap_or_default(),
                    plan.secrets_hash
                );
                match ctx.recent_figures::<K::Figures>(&key, &of) {
                    Some(f) => figures = Some(f),
                    None => match obj.measure(&secrets, &ctx.settings, &ctx.clients).await {
                        Ok(f) => {
                            ctx.measured(&key, of, f.clone());
                            figures = Some(f);
                        }
                        Err(e) => {
                            problem = Some(problem_of(&e));
                            failure = Some(e);
                        }
                    },
                }
                // What the pods say: a poison message, a crash loop (the autoscaler needs it).
                if deployment.is_some() {
                    let list = list_worker_pods::<K>(client, &ns, &name).await?;
                    workers = Some(status::workers_of(&list, |record| {
                        figures.as_ref().is_some_and(|f| K::moved_past(f, record))
                    }));
                    pods = Some(list);
                }
                // Then scale on what was measured.
                if let (Some(applied), Some(f)) = (applied, figures.as_ref()) {
                    let replicas = obj.replicas(Scale {
                        current: Some(applied),
                        figures: Some(f),
                        last_scale: plan.last_scale_time.as_ref().and_then(|t| t.parse().ok()),
                        now,
                        settings: &ctx.settings,
                        workers: workers.as_ref(),
                    });
                    if replicas != applied {
                        scaled = Some((scaled.map_or(applied, |(from, _)| from), replicas));
                        plan.replicas = replicas;
                        plan.last_scale_time = Some(now.to_string());
                        let desired = workload::desired(&plan);
                        deployment = Some(apply(client, &ns, &desired.deployment).await?);
                    }
                }
            }
        },
    }

    // A worker that stopped on a poison message says so in its termination message.
    if problem.is_none() {
        problem = workers.and_then(|w| w.problem);
    }
    if pods.is_none() && deployment.is_some() {
        pods = Some(list_worker_pods::<K>(client, &ns, &name).await?);
    }
    let mut reports = None;
    if let Some(pods) = &pods {
        // What the workers report, read once per status period like the figures.
        let key = format!("{}/reports", key_of(obj));
        let of = obj.meta().uid.clone().unwrap_or_default();
        reports = match ctx.recent_figures::<Arc<Reports>>(&key, &of) {
            Some(r) => Some(r),
            None => {
                let mut read = report::read(&ctx.reports_client, pods).await;
                ctx.record_reports(&key, &mut read);
                if read.unanswered > 0 {
                    debug!(kind = K::KIND, namespace = %ns, name = %name,
                        unanswered = read.unanswered, "worker pods did not report");
                }
                ctx.metrics
                    .reports_unanswered
                    .get_or_create(&KindLabels { kind: K::KIND })
                    .inc_by(read.unanswered as u64);
                let read = Arc::new(read);
                ctx.measured(&key, of, read.clone());
                Some(read)
            }
        };
    }

    let previous = obj.stored_status();
    let previous_conditions = previous.map(K::conditions_of).unwrap_or_default();
    let rollout = Rollout::of(deployment.as_ref());
    let mut conditions = status::conditions(
        generation,
        problem.as_ref(),
        paused,
        &rollout,
        previous_conditions,
        now,
    );
    conditions.push(report::delivering(
        reports.as_deref(),
        generation,
        previous_conditions,
        now,
    ));
    let common = CommonStatus {
        observed_generation: if paused {
            previous.and_then(K::observed_generation_of)
        } else {
            generation
        },
        conditions,
        replicas: rollout.replicas,
        ready_replicas: rollout.ready,
        selector: Some(selector_string(&name, K::COMPONENT)),
    };
    let new_status = obj.status(common, figures.as_ref(), reports.as_deref(), now);
    if previous != Some(&new_status) {
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        let body = StatusApply {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            status: &new_status,
        };
        match api
            .patch_status(
                &name,
                &PatchParams::apply(crate::MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {}
            // Deleted meanwhile: its children go with it; nothing left to report on.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
        ctx.metrics
            .status_writes
            .get_or_create(&KindLabels { kind: K::KIND })
            .inc();
        debug!(kind = K::KIND, namespace = %ns, name = %name, "status written");
        publish_transitions(obj, ctx, previous_conditions, K::conditions_of(&new_status)).await;
    }
    if let Some((from, to)) = scaled {
        info!(kind = K::KIND, namespace = %ns, name = %name, from, to, "scaled");
        publish(
            obj,
            ctx,
            Event {
                type_: EventType::Normal,
                reason: "Scaled".into(),
                note: Some(format!("replicas {from} → {to}")),
                action: "Scale".into(),
                secondary: None,
            },
        )
        .await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Action::requeue(ctx.settings.status_period)),
    }
}

/// One Kubernetes Event per condition whose status or reason changed.
async fn publish_transitions<K: Pipeline>(
    obj: &K,
    ctx: &Context,
    before: &[Condition],
    after: &[Condition],
) {
    for c in after {
        let old = status::find(before, &c.type_);
        if old.is_some_and(|o| o.status == c.status && o.reason == c.reason) {
            continue;
        }
        // A person should look: Degraded, or a sink that takes nothing.
        let warning = (c.type_ == conditions::DEGRADED && c.status == "True")
            || (c.type_ == conditions::DELIVERING && c.status == "False");
        let note = if c.message.is_empty() {
            format!("{} is {}", c.type_, c.status)
        } else {
            format!("{} is {}: {}", c.type_, c.status, c.message)
        };
        publish(
            obj,
            ctx,
            Event {
                type_: if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: Some(note.chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            },
        )
        .await;
    }
}

async fn publish<K: Pipeline>(obj: &K, ctx: &Context, event: Event) {
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(kind = K::KIND, name = %obj.name_any(), error = %Chain(&e), "cannot publish event");
    }
}

/// Transient causes back off (measurement failures at most one status period, so the
/// figures come back soon); a missing Secret or an invalid spec waits for a change.
pub fn error_policy<K: Pipeline>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let backoff = ctx.failed(&key_of(obj.as_ref()));
    let backoff = match error {
        Error::KafkaUnreachable(_) | Error::TopicNotFound(_) | Error::DatabaseUnreachable(_) => {
            backoff.min(ctx.settings.status_period)
        }
        _ => backoff,
    };
    warn!(
        kind = K::KIND,
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = %obj.name_any(),
        reason = error.metric_label(),
        error = %Chain(error),
        "reconcile failed"
    );
    error.action(backoff)
}

/// Runs the controller of `K` until `shutdown` resolves (then drains: running reconciles
/// finish). `namespace`: watch only that namespace.
pub async fn run<K: Pipeline>(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<T>(client: &Client, ns: &Option<String>) -> Api<T>
    where
        T: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        // `Api<PartialObjectMeta<_>>` watches metadata only: no Secret data reaches the
        // operator through its watches, and the children's specs are not cached.
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let client = ctx.client.clone();
    let (reader, writer) = reflector::store::<K>();
    let main = watcher(api::<K>(&client, &namespace), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        );
    let children = watcher::Config::default().labels(&component_selector(K::COMPONENT));
    let pods = children.clone();
    let store = reader.clone();
    let secrets = watcher(
        api::<PartialObjectMeta<Secret>>(&client, &namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    Controller::for_stream(main, reader)
        .owns_stream(
            watcher(
                api::<PartialObjectMeta<Deployment>>(&client, &namespace),
                children.clone(),
            )
            .default_backoff()
            .touched_objects(),
        )
        .owns_stream(
            watcher(
                api::<PartialObjectMeta<ConfigMap>>(&client, &namespace),
                children.clone(),
            )
            .default_backoff()
            .touched_objects(),
        )
        .owns_stream(
            watcher(
                api::<PartialObjectMeta<Service>>(&client, &namespace),
                children.clone(),
            )
            .default_backoff()
            .touched_objects(),
        )
        .owns_stream(
            watcher(
                api::<PartialObjectMeta<PodDisruptionBudget>>(&client, &namespace),
                children.clone(),
            )
            .default_backoff()
            .touched_objects(),
        )
        .owns_stream(
            watcher(
                api::<PartialObjectMeta<ServiceAccount>>(&client, &namespace),
                children,
            )
            .default_backoff()
            .touched_objects(),
        )
        // Worker pods (metadata only): a container stopping, e.g. on a poison message, brings
        // its resource back to read the pods' termination messages.
        .watches_stream(
            watcher(api::<PartialObjectMeta<Pod>>(&client, &namespace), pods)
                .default_backoff()
                .touched_objects(),
            |pod| {
                let name = pod.labels().get("app.kubernetes.io/instance")?;
                Some(ObjectRef::<K>::new(name).within(&pod.namespace()?))
            },
        )
        .watches_stream(secrets, move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|o| o.namespace() == ns && o.secret_uses().iter().any(|u| u.name == name))
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(ctx.settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(kind = K::KIND, error = %e, "controller event");
            }
        })
        .await;
}
