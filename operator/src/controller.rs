//! The reconcile both kinds share, generic over [`Pipeline`], in five steps, one function each:
//!
//! 1. **plan**: the worker plan from the spec (pure; an invalid spec stops here,
//!    Degraded/InvalidSpec) and the referenced Secrets (missing: Degraded/SecretNotFound), at
//!    the replicas running now brought within the bounds: complete before anything is sent;
//! 2. **apply** (unless paused), before any measurement so a new resource gets its Deployment
//!    at once: server-side apply under one field manager ([`crate::MANAGER`]), the children
//!    the pods refer to concurrently, then the Deployment; a child that is as this process
//!    last applied it is skipped ([`crate::children`]);
//! 3. **observe**: measure (Kafka lag or outbox backlog; unreachable: Degraded with the
//!    cause), the worker pods from the pod watch's store (a poison record, a crash loop), their
//!    reports (counters, delivery health; [`crate::report`]); figures and reports at most once
//!    per status period;
//! 4. **scale**: the autoscaler on what was observed; the Deployment applied again when it
//!    decides other replicas;
//! 5. **report**: the status, written only when it differs from the stored one, and an Event
//!    per changed condition.
//!
//! Triggers: the resource itself, filtered to generation and annotation changes (so the
//! operator's own status writes do not come back as reconciles), its children and worker pods
//! (by owner reference and label; their stores are what the reconcile reads), the Secrets it
//! references (metadata watch, mapped through the reflector's store), and a requeue after
//! `--status-period` to refresh the measured figures: the one thing no watch can tell.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::children::Children;
use crate::context::{Context, Settings};
use crate::error::{Chain, Error, Result};
use crate::measure::Clients;
use crate::metrics::{ErrorLabels, KindLabels, Metrics};
use crate::report::{self, Reports};
use crate::sink::{self, Destinations, SinkAddress};
use crate::status::{self, Problem, Rollout, Workers, reasons};
use crate::workload::{
    self, Component, LAST_SCALE_ANNOTATION, PAUSED_ANNOTATION, WorkerPlan, child_name,
    selector_string,
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
    /// Where the sink and the dead-letter sink deliver (an HTTP sink's URL, or its Service
    /// reference resolved).
    pub destinations: Destinations<String>,
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
    /// The addresses of the spec's HTTP destinations, resolved by the reconcile.
    fn destinations(&self) -> Destinations<SinkAddress<'_>> {
        Destinations::default()
    }
    /// The worker plan (pure), with `resolved` the addresses [`Pipeline::destinations`]
    /// resolved to. `replicas`, `secrets_hash` and `last_scale_time` are filled in by the
    /// reconcile.
    fn plan(&self, settings: &Settings, resolved: &Destinations<String>) -> Result<WorkerPlan>;
    /// Measures the figures of the status, with the pooled `clients`.
    fn measure(
        &self,
        secrets: &Secrets,
        settings: &Settings,
        clients: &Clients,
    ) -> impl Future<Output = Result<Self::Figures>> + Send;
    /// Sets the metrics of freshly measured figures (`pipewright_operator_consumergroup_lag`,
    /// `…_outbox_pending`, ...).
    fn export(&self, figures: &Self::Figures, metrics: &Metrics);
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

/// True when the resource carries `pipewright.io/paused: "true"`.
pub fn is_paused(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(PAUSED_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Whether the apiserver refused an object as invalid (422).
fn refused_as_invalid(e: &Error) -> bool {
    matches!(e, Error::Kube(kube::Error::Api(status)) if status.code == 422)
}

/// The condition a failure shows as.
pub fn problem_of(e: &Error) -> Problem {
    let reason = match e {
        Error::SecretNotFound { .. } => conditions::SECRET_NOT_FOUND,
        Error::SinkUnresolvable { .. } => conditions::SINK_UNRESOLVABLE,
        Error::InvalidSpec { .. } => reasons::INVALID_SPEC,
        Error::KafkaUnreachable { .. } => conditions::KAFKA_UNREACHABLE,
        Error::TopicNotFound(_) => reasons::TOPIC_NOT_FOUND,
        Error::DatabaseUnreachable(_) => conditions::DATABASE_UNREACHABLE,
        Error::DatabaseLoginRefused(_) => conditions::DATABASE_LOGIN_REFUSED,
        Error::OutboxTableInvalid(_) => conditions::OUTBOX_TABLE_INVALID,
        // The apiserver refused a child the spec asked for (422: a toleration, an affinity
        // or an environment variable that passed the resource's schema but not the pod's
        // validation): the spec must change, and the message names the field.
        e if refused_as_invalid(e) => reasons::INVALID_SPEC,
        Error::Kube(_)
        | Error::Serialize { .. }
        | Error::Join(_)
        | Error::NotLeading
        | Error::Listen { .. } => "ReconcileError",
    };
    Problem::new(reason, Chain(e).to_string())
}

/// A namespaced object the operator writes as a whole (a child of its resources).
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
{
}

impl<T> Child for T where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
{
}

/// Applies `obj` with server-side apply, forced: the operator owns the fields it sets.
pub async fn apply<T: Child>(client: &Client, ns: &str, obj: &T) -> Result<T> {
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

/// Creates `obj` (POST) with the operator's field manager; see [`crate::handover`] for why a
/// new child is created rather than applied.
pub async fn create<T: Child>(client: &Client, ns: &str, obj: &T) -> Result<T> {
    let api: Api<T> = Api::namespaced(client.clone(), ns);
    let params = PostParams {
        field_manager: Some(crate::MANAGER.into()),
        ..PostParams::default()
    };
    Ok(api.create(&params, obj).await?)
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
pub async fn reconcile<K: Pipeline>(obj: Arc<K>, kc: Arc<KindContext>) -> Result<Action> {
    let ctx = &kc.ctx;
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
            r = reconcile_inner(obj.as_ref(), &kc) => r,
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

/// What the reconciles of one kind share: the operator's context and that kind's children.
#[derive(Debug)]
pub struct KindContext {
    pub ctx: Arc<Context>,
    pub children: Children,
}

impl KindContext {
    /// Drops what is kept in memory for `obj` (deleted).
    fn forget<K: Pipeline>(&self, obj: &K) {
        let ns = obj.meta().namespace.as_deref().unwrap_or_default();
        self.ctx.forget(&key_of(obj));
        self.ctx
            .metrics
            .forget_figures(K::KIND, ns, &obj.name_any());
        self.children
            .forget(ns, &child_name(&obj.name_any(), K::COMPONENT));
    }
}

/// A complete plan: everything the reconcile applies, decided before it applies anything.
struct Plan {
    /// The worker plan, with the Secrets' hash, the replicas and the last scale time.
    worker: WorkerPlan,
    /// The referenced Secrets (the measurement's credentials).
    secrets: Secrets,
    /// The replica change the plan makes by itself, (from, to): replicas brought within the
    /// bounds.
    scaled: Option<(i32, i32)>,
    /// The HTTP destinations' addresses, resolved.
    destinations: Destinations<String>,
}

/// What a reconcile found, for the status.
struct Seen<F> {
    /// The Deployment as last applied or seen.
    deployment: Option<Arc<Deployment>>,
    /// The first failure: the reconcile ends with it, and the status shows it.
    failure: Option<Error>,
    /// The measured figures (absent: not measured; the status keeps the previous ones).
    figures: Option<F>,
    /// What the worker pods say (absent: no Deployment).
    workers: Option<Workers>,
    /// The workers' reports (absent: no Deployment).
    reports: Option<Arc<Reports>>,
    /// The destinations' addresses as this reconcile resolved them (absent: it did not, or
    /// there is none).
    destinations: Destinations<String>,
}

impl<F> Seen<F> {
    fn fail(&mut self, e: Error) {
        self.failure.get_or_insert(e);
    }

    /// The problem the status shows: the failure's, else what a worker stopped on.
    fn problem(&self) -> Option<Problem> {
        match &self.failure {
            Some(e) => Some(problem_of(e)),
            None => self.workers.as_ref().and_then(|w| w.problem.clone()),
        }
    }
}

async fn reconcile_inner<K: Pipeline>(obj: &K, kc: &KindContext) -> Result<Action> {
    if obj.meta().deletion_timestamp.is_some() {
        // Being deleted (foreground): the garbage collector removes the children; applying
        // them again would fight it.
        return Ok(Action::await_change());
    }
    kc.children.ready().await;
    let ctx = &*kc.ctx;
    let now = Timestamp::now();
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let paused = is_paused(obj.meta());
    let running = kc
        .children
        .deployment(&ns, &child_name(&obj.name_any(), K::COMPONENT));
    let mut seen = Seen {
        deployment: running.clone(),
        failure: None,
        figures: None,
        workers: None,
        reports: None,
        destinations: Destinations::default(),
    };

    // 1. Plan.
    let planned = match plan(obj, ctx, running.as_deref(), now).await? {
        Ok(planned) => {
            seen.destinations = planned.destinations.clone();
            Some(planned)
        }
        Err(refused) => {
            seen.fail(refused);
            None
        }
    };
    // 2. Apply, before any measurement: a new or changed resource gets its children at once.
    if let Some(planned) = planned.as_ref().filter(|_| !paused) {
        let desired = workload::desired(&planned.worker);
        match kc
            .children
            .apply(&ctx.client, &ctx.metrics, &ns, &desired)
            .await
        {
            Ok(deployment) => seen.deployment = Some(deployment),
            // Refused as invalid: the spec must change; the status says why (InvalidSpec).
            Err(e @ Error::Kube(kube::Error::Api(_))) if refused_as_invalid(&e) => seen.fail(e),
            Err(e) => return Err(e),
        }
    }
    // 3. Observe.
    observe(obj, kc, planned.as_ref(), &mut seen).await;
    // 4. Scale on what was observed.
    let scaled = match planned {
        Some(planned) if !paused => scale(obj, kc, planned, &mut seen, now).await?,
        _ => None,
    };
    // 5. Report.
    if !write_status(obj, ctx, &seen, paused, now).await? {
        // Deleted meanwhile: its children go with it; nothing left to report on.
        return Ok(Action::await_change());
    }
    if let Some((from, to)) = scaled {
        info!(from, to, "scaled");
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
    match seen.failure {
        Some(e) => Err(e),
        None => Ok(Action::requeue(ctx.settings.status_period)),
    }
}

/// Step 1, plan: the worker plan from the spec, the sink's resolved address and the referenced
/// Secrets (their hash rolls the pods when they change), at the replicas running now brought
/// within the bounds (a new resource: its minimum; the autoscaler decides on the measurement
/// in step 4). `Ok(Err(e))`: the resource cannot run as specified (an invalid spec, a missing
/// Secret, a sink reference that does not resolve): its status says so and nothing is applied.
async fn plan<K: Pipeline>(
    obj: &K,
    ctx: &Context,
    running: Option<&Deployment>,
    now: Timestamp,
) -> Result<Result<Plan, Error>> {
    let ns = obj.meta().namespace.as_deref().unwrap_or_default();
    let destinations = match sink::resolve_all(
        &ctx.client,
        ns,
        &ctx.settings.cluster_domain,
        obj.destinations(),
    )
    .await
    {
        Ok(resolved) => resolved,
        Err(e @ Error::SinkUnresolvable { .. }) => return Ok(Err(e)),
        Err(e) => return Err(e),
    };
    let mut worker = match obj.plan(&ctx.settings, &destinations) {
        Ok(worker) => worker,
        Err(e) => return Ok(Err(e)),
    };
    let secrets = match fetch_secrets(&ctx.client, ns, &obj.secret_uses()).await {
        Ok(secrets) => secrets,
        Err(e @ Error::SecretNotFound { .. }) => return Ok(Err(e)),
        Err(e) => return Err(e),
    };
    worker.secrets_hash = secrets.hash();
    let current = running.and_then(|d| d.spec.replicas);
    let previous_scale = running.and_then(|d| d.annotations().get(LAST_SCALE_ANNOTATION).cloned());
    worker.replicas = obj.replicas(Scale {
        current,
        figures: None,
        last_scale: previous_scale.as_ref().and_then(|t| t.parse().ok()),
        now,
        settings: &ctx.settings,
        workers: None,
    });
    let scaled = current
        .filter(|c| *c != worker.replicas)
        .map(|c| (c, worker.replicas));
    worker.last_scale_time = match scaled {
        Some(_) => Some(now.to_string()),
        None => previous_scale,
    };
    Ok(Ok(Plan {
        worker,
        secrets,
        scaled,
        destinations,
    }))
}

/// Step 3, observe: the figures (Kafka lag or outbox backlog), the worker pods as the pod watch
/// last saw them (a poison record, a crash loop: the autoscaler needs both) and the workers'
/// reports. Figures and reports are read at most once per status period: the reconciles a
/// reconcile's own applies trigger reuse them.
async fn observe<K: Pipeline>(
    obj: &K,
    kc: &KindContext,
    planned: Option<&Plan>,
    seen: &mut Seen<K::Figures>,
) {
    let ctx = &*kc.ctx;
    if let Some(planned) = planned {
        match measure(obj, ctx, planned).await {
            Ok(figures) => seen.figures = Some(figures),
            Err(e) => seen.fail(e),
        }
    }
    if seen.deployment.is_none() {
        return;
    }
    let ns = obj.meta().namespace.as_deref().unwrap_or_default();
    let pods = kc.children.pods(ns, &obj.name_any());
    let figures = seen.figures.as_ref();
    seen.workers = Some(status::workers_of(&pods, |record| {
        figures.is_some_and(|f| K::moved_past(f, record))
    }));
    seen.reports = Some(read_reports(obj, ctx, &pods).await);
}

/// The figures of `obj`: the ones measured less than half a status period ago for the same
/// uid, generation and Secrets, else measured now.
async fn measure<K: Pipeline>(obj: &K, ctx: &Context, planned: &Plan) -> Result<K::Figures> {
    let key = key_of(obj);
    let of = format!(
        "{}/{}/{}",
        obj.meta().uid.as_deref().unwrap_or_default(),
        obj.meta().generation.unwrap_or_default(),
        planned.worker.secrets_hash
    );
    if let Some(figures) = ctx.recent_figures::<K::Figures>(&key, &of) {
        return Ok(figures);
    }
    let figures = obj
        .measure(&planned.secrets, &ctx.settings, &ctx.clients)
        .await?;
    obj.export(&figures, &ctx.metrics);
    ctx.measured(&key, of, figures.clone());
    Ok(figures)
}

/// The reports of `pods`: the reading of less than a status period ago, else read now.
async fn read_reports<K: Pipeline>(obj: &K, ctx: &Context, pods: &[Arc<Pod>]) -> Arc<Reports> {
    let key = format!("{}/reports", key_of(obj));
    let of = obj.meta().uid.clone().unwrap_or_default();
    if let Some(reports) = ctx.recent_figures::<Arc<Reports>>(&key, &of) {
        return reports;
    }
    let mut read = report::read(&ctx.reports_client, pods).await;
    ctx.record_reports(&key, &mut read);
    if read.unanswered > 0 {
        debug!(unanswered = read.unanswered, "worker pods did not report");
    }
    ctx.metrics
        .reports_unanswered
        .get_or_create(&KindLabels { kind: K::KIND })
        .inc_by(read.unanswered as u64);
    let read = Arc::new(read);
    ctx.measured(&key, of, read.clone());
    read
}

/// Step 4, scale: the replicas the autoscaler decides on the figures and the workers' health; the
/// Deployment is applied again when they differ from the plan's. Returns the replica change
/// of this reconcile, (from, to).
async fn scale<K: Pipeline>(
    obj: &K,
    kc: &KindContext,
    mut planned: Plan,
    seen: &mut Seen<K::Figures>,
    now: Timestamp,
) -> Result<Option<(i32, i32)>> {
    let Some(figures) = seen.figures.as_ref() else {
        return Ok(planned.scaled);
    };
    let ctx = &*kc.ctx;
    let planned_replicas = planned.worker.replicas;
    let replicas = obj.replicas(Scale {
        current: Some(planned_replicas),
        figures: Some(figures),
        last_scale: planned
            .worker
            .last_scale_time
            .as_ref()
            .and_then(|t| t.parse().ok()),
        now,
        settings: &ctx.settings,
        workers: seen.workers.as_ref(),
    });
    if replicas == planned_replicas {
        return Ok(planned.scaled);
    }
    planned.worker.replicas = replicas;
    planned.worker.last_scale_time = Some(now.to_string());
    let ns = obj.meta().namespace.as_deref().unwrap_or_default();
    let desired = workload::desired(&planned.worker);
    seen.deployment = Some(
        kc.children
            .apply_deployment(&ctx.client, &ctx.metrics, ns, &desired.deployment)
            .await?,
    );
    let from = planned.scaled.map_or(planned_replicas, |(from, _)| from);
    Ok(Some((from, replicas)))
}

/// Step 5, report: the status from what was seen, written (server-side apply of the status
/// subresource) only when it differs from the stored one, and an Event per condition that
/// changed. `false`: the resource is gone.
async fn write_status<K: Pipeline>(
    obj: &K,
    ctx: &Context,
    seen: &Seen<K::Figures>,
    paused: bool,
    now: Timestamp,
) -> Result<bool> {
    let name = obj.name_any();
    let generation = obj.meta().generation;
    let previous = obj.stored_status();
    let previous_conditions = previous.map(K::conditions_of).unwrap_or_default();
    let rollout = Rollout::of(seen.deployment.as_deref());
    let mut conditions = status::conditions(
        generation,
        seen.problem().as_ref(),
        paused,
        &rollout,
        previous_conditions,
        now,
    );
    conditions.push(report::delivering(
        seen.reports.as_deref(),
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
        destinations: seen.destinations.clone(),
    };
    let ns = obj.meta().namespace.as_deref().unwrap_or_default();
    ctx.metrics.export_conditions(
        K::KIND,
        ns,
        &name,
        &common
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect::<Vec<_>>(),
    );
    let new_status = obj.status(common, seen.figures.as_ref(), seen.reports.as_deref(), now);
    if previous == Some(&new_status) {
        return Ok(true);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
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
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    ctx.metrics
        .status_writes
        .get_or_create(&KindLabels { kind: K::KIND })
        .inc();
    debug!("status written");
    publish_transitions(obj, ctx, previous_conditions, K::conditions_of(&new_status)).await;
    Ok(true)
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
pub fn error_policy<K: Pipeline>(obj: Arc<K>, error: &Error, kc: Arc<KindContext>) -> Action {
    let ctx = &kc.ctx;
    let backoff = ctx.failed(&key_of(obj.as_ref()));
    let backoff = match error {
        Error::KafkaUnreachable { .. }
        | Error::TopicNotFound(_)
        | Error::DatabaseUnreachable(_)
        | Error::DatabaseLoginRefused(_)
        | Error::OutboxTableInvalid(_) => backoff.min(ctx.settings.status_period),
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
    let client = ctx.client.clone();
    let api = |ns: &Option<String>| match ns {
        Some(ns) => Api::<K>::namespaced(client.clone(), ns),
        None => Api::<K>::all(client.clone()),
    };
    let (reader, writer) = reflector::store::<K>();
    // The children and worker pods: triggers, and the stores the reconcile reads.
    let (children, watches) = Children::watch(&client, &namespace, K::COMPONENT);
    // Secrets, metadata only (`Api<PartialObjectMeta<_>>` asks for nothing else): no Secret
    // data reaches the operator through a watch; a reconcile reads the ones it references.
    let secrets_api: Api<PartialObjectMeta<Secret>> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let secrets = watcher(secrets_api, crate::client::watch_config())
        .default_backoff()
        .touched_objects();
    let store = reader.clone();
    let kc = Arc::new(KindContext {
        ctx: ctx.clone(),
        children,
    });
    let forget = kc.clone();
    let main = watcher(api(&namespace), crate::client::watch_config())
        .default_backoff()
        // Not read by any reconcile: the field managers' records (the status apply's lists
        // every partition) and kubectl's copy of the last applied object.
        .modify(|o| {
            o.managed_fields_mut().clear();
            o.annotations_mut()
                .remove("kubectl.kubernetes.io/last-applied-configuration");
        })
        .reflect(writer)
        // A deleted resource's figures, report readings, backoff and apply records go with it.
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(obj) = event {
                forget.forget(obj);
            }
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        );
    Controller::for_stream(main, reader)
        .owns_stream(watches.deployments)
        .owns_stream(watches.config_maps)
        .owns_stream(watches.services)
        .owns_stream(watches.pod_disruption_budgets)
        .owns_stream(watches.service_accounts)
        // Worker pods: a container stopping, e.g. on a poison message, brings its resource
        // back to read the pods' termination messages.
        .watches_stream(watches.pods, |pod| {
            let name = pod.labels().get("app.kubernetes.io/instance")?;
            Some(ObjectRef::<K>::new(name).within(&pod.namespace()?))
        })
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
        .run(reconcile::<K>, error_policy::<K>, kc)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(kind = K::KIND, error = %e, "controller event");
            }
        })
        .await;
}
