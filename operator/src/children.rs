//! The children of one kind's resources as the operator sees them, and what it last wrote to
//! each: the reflector stores fed by the controller's child and pod watches, and the applies
//! that skip a child nobody changed.
//!
//! - **Reads from the stores.** A reconcile reads its Deployment and its worker pods from the
//!   stores of the watches that trigger it, not with a GET and a LIST per reconcile: the store
//!   is updated before the watch event that triggers the reconcile is passed on, so what a
//!   reconcile reads is at least as new as what woke it. The stores keep what the reconcile
//!   reads and drops the rest ([`keep_identity`]; a Deployment's template, a pod's spec).
//!   A store can lag this process's own apply (a reconcile woken by a pod or a requeue right
//!   after a scale-up): the Deployment as last applied wins until the store shows it
//!   ([`newest`]), so a lagging store never scales back down.
//! - **Applies only what changed.** Each server-side apply records the hash of the object sent
//!   and the version the apiserver returned (`uid` plus `generation` for the kinds that version
//!   their spec apart from their status, Deployment and PodDisruptionBudget; plus
//!   `resourceVersion` for the others). A later apply of the same object is skipped while the
//!   store shows the child at that version: anyone else's change to it (a spec edit, a delete, a
//!   re-create) changes the version and the next reconcile applies again. What this does not
//!   see: labels or annotations someone else changes on a Deployment or PodDisruptionBudget
//!   (no generation bump); they are restored at the next change of the resource, or when the
//!   operator restarts (the records live in memory: a new process, or a new leader, applies
//!   everything once).
//! - **Creates what is absent.** A child the store does not have is created, not applied; its
//!   fields are handed to the operator's server-side apply at its first apply
//!   ([`crate::handover`]).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::controller::{Child, apply, create};
use crate::error::{Error, Result};
use crate::handover::hand_over;
use crate::metrics::{ApplyLabels, Metrics};
use crate::workload::{
    Component, Desired, LAST_SCALE_ANNOTATION, component_selector, selector_labels,
};

/// A watch stream of children, as the controller's `owns_stream`/`watches_stream` take it.
pub type Watch<T> = BoxStream<'static, Result<T, watcher::Error>>;

/// The watches whose stores [`Children`] reads: the controller consumes them as triggers.
pub struct Watches {
    pub deployments: Watch<Deployment>,
    pub config_maps: Watch<PartialObjectMeta<ConfigMap>>,
    pub services: Watch<PartialObjectMeta<Service>>,
    pub pod_disruption_budgets: Watch<PartialObjectMeta<PodDisruptionBudget>>,
    pub service_accounts: Watch<PartialObjectMeta<ServiceAccount>>,
    pub pods: Watch<Pod>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

/// One kind's children: their stores and the record of what was applied.
pub struct Children {
    component: Component,
    deployments: Store<Deployment>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    services: Store<PartialObjectMeta<Service>>,
    pod_disruption_budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pods: Store<Pod>,
    written: Mutex<HashMap<String, Written>>,
    /// Deployments this process applied, by `namespace/name`, until the store shows them.
    recent: Mutex<HashMap<String, Arc<Deployment>>>,
    /// Services (`namespace/name`) made with a cluster IP by an earlier release, applied
    /// without `clusterIP` ([`Children::apply_service`]).
    with_cluster_ip: Mutex<HashSet<String>>,
}

/// What the operator last applied to one child.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    /// Hash of the object sent.
    hash: u64,
    /// The version the apiserver returned ([`version`]).
    version: String,
}

/// How a kind's objects are versioned for [`Children`]: by `generation` (a spec change bumps
/// it, the status writes of its controller do not) or by `resourceVersion` (any write).
#[derive(Clone, Copy, Debug)]
enum By {
    Generation,
    ResourceVersion,
}

fn version(meta: &ObjectMeta, by: By) -> Option<String> {
    let v = match by {
        By::Generation => meta.generation?.to_string(),
        By::ResourceVersion => meta.resource_version.clone()?,
    };
    Some(format!("{}/{v}", meta.uid.as_deref()?))
}

/// Drops from `meta` what no reconcile reads (the stores hold thousands of objects): keeps the
/// name, namespace, uid, versions and owner references (the watches map a child to its
/// resource by them).
pub fn keep_identity(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        generation: meta.generation.take(),
        owner_references: meta.owner_references.take(),
        ..ObjectMeta::default()
    };
}

/// Drops from a Deployment what no reconcile reads: it keeps the replicas, the last-scale
/// annotation and the rollout figures.
fn strip_deployment(d: &mut Deployment) {
    let last_scale = d.annotations_mut().remove(LAST_SCALE_ANNOTATION);
    keep_identity(&mut d.metadata);
    if let Some(t) = last_scale {
        d.annotations_mut().insert(LAST_SCALE_ANNOTATION.into(), t);
    }
    d.spec.template = Default::default();
    d.spec.selector = Default::default();
    d.spec.strategy = None;
    if let Some(status) = d.status.as_mut() {
        status.conditions = None;
    }
}

/// The newer of a Deployment as the store shows it and as this process last applied it, and
/// whether the store has caught up with that apply. A store lags the apiserver: read alone
/// right after an apply (a reconcile triggered by a pod, a requeue), it could show the
/// replicas before a scale-up, and the plan would then scale back down. The apply's own
/// answer wins while the store shows the same object (uid) at an older generation, or not at
/// all; anyone else's later change bumps the generation past it.
fn newest(
    stored: Option<Arc<Deployment>>,
    applied: Option<&Arc<Deployment>>,
) -> (Option<Arc<Deployment>>, bool) {
    let Some(applied) = applied else {
        return (stored, false);
    };
    match stored {
        Some(d)
            if d.metadata.uid != applied.metadata.uid
                || d.metadata.generation >= applied.metadata.generation =>
        {
            (Some(d), true)
        }
        _ => (Some(applied.clone()), false),
    }
}

/// A metadata-only watch of one kind of child, feeding `writer`.
fn watch_meta<T>(
    client: &Client,
    namespace: &Option<String>,
    config: &watcher::Config,
    writer: reflector::store::Writer<PartialObjectMeta<T>>,
) -> Watch<PartialObjectMeta<T>>
where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    // `Api<PartialObjectMeta<_>>` makes metadata-only requests: no object's data or spec
    // reaches the operator through these watches.
    watcher(
        api::<PartialObjectMeta<T>>(client, namespace),
        config.clone(),
    )
    .default_backoff()
    .modify(|o| keep_identity(&mut o.metadata))
    .reflect(writer)
    .touched_objects()
    .boxed()
}

fn api<T>(client: &Client, namespace: &Option<String>) -> Api<T>
where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

impl Children {
    /// The stores of `component`'s children in `namespace` (all namespaces: `None`), and the
    /// watches that fill them. Only objects labelled as the operator's children of this
    /// component are watched.
    pub fn watch(
        client: &Client,
        namespace: &Option<String>,
        component: Component,
    ) -> (Children, Watches) {
        let config = crate::client::watch_config().labels(&component_selector(component));
        let (deployments, deployments_writer) = reflector::store();
        let (config_maps, config_maps_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (pdbs, pdbs_writer) = reflector::store();
        let (service_accounts, service_accounts_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let watches = Watches {
            deployments: watcher(api::<Deployment>(client, namespace), config.clone())
                .default_backoff()
                .modify(strip_deployment)
                .reflect(deployments_writer)
                .touched_objects()
                .boxed(),
            config_maps: watch_meta(client, namespace, &config, config_maps_writer),
            services: watch_meta(client, namespace, &config, services_writer),
            pod_disruption_budgets: watch_meta(client, namespace, &config, pdbs_writer),
            service_accounts: watch_meta(client, namespace, &config, service_accounts_writer),
            // Worker pods: their phase, IP and container states (poison messages, crash loops,
            // the reports' addresses); their spec is the template's.
            pods: watcher(api::<Pod>(client, namespace), config)
                .default_backoff()
                .modify(|p| {
                    // Read: the labels (whose pod), the phase, the IP and the container states.
                    let labels = std::mem::take(p.labels_mut());
                    keep_identity(&mut p.metadata);
                    p.metadata.labels = Some(labels);
                    p.spec = None;
                    if let Some(status) = p.status.as_mut() {
                        status.conditions = None;
                    }
                })
                .reflect(pods_writer)
                .touched_objects()
                .boxed(),
        };
        let children = Children {
            component,
            deployments,
            config_maps,
            services,
            pod_disruption_budgets: pdbs,
            service_accounts,
            pods,
            written: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            with_cluster_ip: Mutex::new(HashSet::new()),
        };
        (children, watches)
    }

    /// Waits until every store holds its watch's first complete list: before that, a missing
    /// child could mean "not listed yet" as well as "absent".
    pub async fn ready(&self) {
        let all = async {
            // An error here means the writer is gone: the controller is shutting down, and the
            // reconcile's reads then see the last state.
            let _ = futures::join!(
                self.deployments.wait_until_ready(),
                self.config_maps.wait_until_ready(),
                self.services.wait_until_ready(),
                self.pod_disruption_budgets.wait_until_ready(),
                self.service_accounts.wait_until_ready(),
                self.pods.wait_until_ready(),
            );
        };
        tokio::pin!(all);
        let started = std::time::Instant::now();
        while tokio::time::timeout(std::time::Duration::from_secs(5), &mut all)
            .await
            .is_err()
        {
            warn!(waited = ?started.elapsed(), "the children's watches have not listed yet");
        }
    }

    /// The Deployment `name` in `ns`: as the store shows it, or as this process last applied
    /// it while the store has not caught up with that apply (see [`newest`]).
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        let stored = self.deployments.get(&ObjectRef::new(name).within(ns));
        let key = format!("{ns}/{name}");
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let (newest, caught_up) = newest(stored, recent.get(&key));
        if caught_up {
            recent.remove(&key);
        }
        newest
    }

    /// Drops the records of the children named `child` in `ns` (their resource was deleted).
    pub fn forget(&self, ns: &str, child: &str) {
        let suffix = format!("/{ns}/{child}");
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !k.ends_with(&suffix));
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{ns}/{child}"));
        self.with_cluster_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{ns}/{child}"));
    }

    /// The worker pods of resource `resource` in `ns`, as last seen.
    pub fn pods(&self, ns: &str, resource: &str) -> Vec<Arc<Pod>> {
        let selector = selector_labels(resource, self.component);
        self.pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && selector.iter().all(|(k, v)| p.labels().get(k) == Some(v))
            })
            .collect()
    }

    /// Applies the children of `desired` that differ from what was last applied or that
    /// someone changed since, and returns the Deployment as it now is.
    ///
    /// The Deployment waits only for what its pods need, and only when they could otherwise
    /// start wrong: a ConfigMap that exists is applied before the Deployment, so that no pod
    /// starts on its old data. A resource whose Deployment and ConfigMap do not exist yet
    /// (new, or both deleted) gets its ServiceAccount, ConfigMap and Deployment in one step:
    /// no pod exists that could start on anything old, the kubelet waits for a ConfigMap
    /// volume until the ConfigMap exists, and the ServiceAccount, sent first, is written well
    /// before the first pod is admitted two controller hops later (the deployment controller
    /// makes a ReplicaSet, the ReplicaSet controller a pod; the apiserver's ServiceAccount
    /// admission asks etcd when its cache does not have the account yet). That is a race the
    /// account wins in practice (no `FailedCreate` in 900 new resources created in bursts,
    /// docs/benchmarks.md part 4a), not an order the apiserver promises: were a pod admitted
    /// before the account is written, it would be refused and the ReplicaSet controller would
    /// create it again moments later, with a `FailedCreate` warning on the ReplicaSet.
    /// The Service and PodDisruptionBudget come last: they select the pods by label whenever
    /// they come. The apiserver does the applies of one step side by side on the same cores,
    /// so every child sent before the Deployment delays it (docs/benchmarks.md, part 4a).
    pub async fn apply(
        &self,
        client: &Client,
        metrics: &Metrics,
        ns: &str,
        desired: &Desired,
    ) -> Result<Arc<Deployment>> {
        let service_account = self.apply_one(
            client,
            metrics,
            ns,
            &desired.service_account,
            lookup(&self.service_accounts, ns, &desired.service_account),
            By::ResourceVersion,
        );
        let config_map = lookup(&self.config_maps, ns, &desired.config_map);
        let first = config_map.is_none()
            && self
                .deployment(ns, &desired.deployment.name_any())
                .is_none();
        let config_map = self.apply_one(
            client,
            metrics,
            ns,
            &desired.config_map,
            config_map,
            By::ResourceVersion,
        );
        let deployment = self.apply_deployment(client, metrics, ns, &desired.deployment);
        let deployment = if first {
            futures::try_join!(service_account, config_map, deployment)?.2
        } else {
            futures::try_join!(service_account, config_map)?;
            deployment.await?
        };
        futures::try_join!(
            self.apply_service(client, metrics, ns, &desired.service),
            self.apply_one(
                client,
                metrics,
                ns,
                &desired.pod_disruption_budget,
                lookup(
                    &self.pod_disruption_budgets,
                    ns,
                    &desired.pod_disruption_budget
                ),
                By::Generation,
            ),
        )?;
        Ok(deployment)
    }

    /// Applies the Deployment alone (a replica change), unless unchanged.
    pub async fn apply_deployment(
        &self,
        client: &Client,
        metrics: &Metrics,
        ns: &str,
        deployment: &Deployment,
    ) -> Result<Arc<Deployment>> {
        let current = self
            .deployments
            .get(&ObjectRef::from_obj(deployment).within(ns));
        let meta = current.as_ref().map(|d| d.metadata.clone());
        match self
            .apply_one(client, metrics, ns, deployment, meta, By::Generation)
            .await?
        {
            Some(mut applied) => {
                strip_deployment(&mut applied);
                let applied = Arc::new(applied);
                self.recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(format!("{ns}/{}", applied.name_any()), applied.clone());
                Ok(applied)
            }
            // Unchanged: the store holds it (apply_one checked).
            None => Ok(current.expect("an unchanged Deployment is in the store")),
        }
    }

    /// Applies the workers' Service, headless. One made by an earlier release has a cluster
    /// IP, which the apiserver does not let change ("spec.clusterIPs[0]: may not change once
    /// set"): it is kept, and applied from then on without `clusterIP` (the operator may not
    /// delete Services; its scrapers see the same endpoints either way).
    async fn apply_service(
        &self,
        client: &Client,
        metrics: &Metrics,
        ns: &str,
        desired: &Service,
    ) -> Result<Option<Service>> {
        let key = format!("{ns}/{}", desired.name_any());
        let current = || lookup(&self.services, ns, desired);
        let keeps = self
            .with_cluster_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key);
        if !keeps {
            match self
                .apply_one(client, metrics, ns, desired, current(), By::ResourceVersion)
                .await
            {
                Err(Error::Kube(kube::Error::Api(s)))
                    if s.code == 422 && s.message.contains("clusterIP") =>
                {
                    info!(
                        service = %key,
                        "the workers' Service has a cluster IP (made by an earlier release): kept, applied without clusterIP"
                    );
                    self.with_cluster_ip
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key);
                }
                other => return other,
            }
        }
        let mut service = desired.clone();
        if let Some(spec) = service.spec.as_mut() {
            spec.cluster_ip = None;
        }
        self.apply_one(
            client,
            metrics,
            ns,
            &service,
            current(),
            By::ResourceVersion,
        )
        .await
    }

    /// Applies `desired` unless the child (`current`: its metadata in the store) is at the
    /// version this process last applied the same object at; creates it when the store does
    /// not have it ([`send`]). `None`: skipped.
    async fn apply_one<T: Child>(
        &self,
        client: &Client,
        metrics: &Metrics,
        ns: &str,
        desired: &T,
        current: Option<ObjectMeta>,
        by: By,
    ) -> Result<Option<T>> {
        let kind = T::kind(&());
        let key = format!("{kind}/{ns}/{}", desired.name_any());
        let body = serde_json::to_vec(desired).map_err(|source| Error::Serialize {
            what: "a child object",
            source,
        })?;
        let mut hasher = std::hash::DefaultHasher::new();
        body.hash(&mut hasher);
        let hash = hasher.finish();
        let labels = |outcome| ApplyLabels {
            kind: kind.to_string(),
            outcome,
        };
        if let Some(v) = current.as_ref().and_then(|m| version(m, by)) {
            let unchanged = self
                .written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .is_some_and(|w| w.hash == hash && w.version == v);
            if unchanged {
                metrics.applies.get_or_create(&labels("unchanged")).inc();
                return Ok(None);
            }
        }
        let (applied, outcome) = send(client, ns, desired, current.is_none()).await?;
        metrics.applies.get_or_create(&labels(outcome)).inc();
        if let Some(version) = version(applied.meta(), by) {
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, Written { hash, version });
        }
        Ok(Some(applied))
    }
}

/// The metadata of `desired`'s counterpart in `store`.
fn lookup<T, D>(store: &Store<PartialObjectMeta<T>>, ns: &str, desired: &D) -> Option<ObjectMeta>
where
    T: Resource<DynamicType = ()> + Clone + 'static,
    D: Resource,
{
    store
        .get(&ObjectRef::new(&desired.name_any()).within(ns))
        .map(|o| o.metadata.clone())
}

/// Sends `desired`: created when the store does not have it (`absent`; a create the apiserver
/// refuses as existing — the store lagged — is applied instead), else server-side applied.
/// An apply whose answer shows fields still held by the operator's create (its `Update`
/// entry) hands them to its `Apply` entry and is sent again, so that what this apply dropped
/// is removed ([`crate::handover`]). Returns the object and the outcome label.
async fn send<T: Child>(
    client: &Client,
    ns: &str,
    desired: &T,
    absent: bool,
) -> Result<(T, &'static str)> {
    if absent {
        match create(client, ns, desired).await {
            Ok(created) => return Ok((created, "created")),
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let applied = apply(client, ns, desired).await?;
    if !hand_over(client, ns, &applied).await? {
        return Ok((applied, "sent"));
    }
    Ok((apply(client, ns, desired).await?, "sent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(uid: &str, generation: i64, replicas: i32) -> Arc<Deployment> {
        let mut d = Deployment::default();
        d.metadata.uid = Some(uid.into());
        d.metadata.generation = Some(generation);
        d.spec.replicas = Some(replicas);
        Arc::new(d)
    }

    fn replicas(d: &Option<Arc<Deployment>>) -> Option<i32> {
        d.as_ref()?.spec.replicas
    }

    #[test]
    fn a_store_behind_the_operators_own_apply_does_not_undo_it() {
        // Scaled 1 → 3 (generation 2); the store still shows generation 1.
        let applied = deployment("u", 2, 3);
        let (d, caught_up) = newest(Some(deployment("u", 1, 1)), Some(&applied));
        assert_eq!((replicas(&d), caught_up), (Some(3), false));
        // Created by this process, not in the store yet.
        let (d, caught_up) = newest(None, Some(&applied));
        assert_eq!((replicas(&d), caught_up), (Some(3), false));
    }

    #[test]
    fn the_store_wins_once_it_shows_the_apply_or_a_later_change() {
        let applied = deployment("u", 2, 3);
        let (d, caught_up) = newest(Some(deployment("u", 2, 3)), Some(&applied));
        assert_eq!((replicas(&d), caught_up), (Some(3), true));
        // Someone scaled it by hand after the apply.
        let (d, caught_up) = newest(Some(deployment("u", 3, 7)), Some(&applied));
        assert_eq!((replicas(&d), caught_up), (Some(7), true));
        // Deleted and re-created by someone else.
        let (d, caught_up) = newest(Some(deployment("v", 1, 1)), Some(&applied));
        assert_eq!((replicas(&d), caught_up), (Some(1), true));
        // Nothing applied: the store.
        let (d, caught_up) = newest(Some(deployment("u", 1, 1)), None);
        assert_eq!((replicas(&d), caught_up), (Some(1), false));
    }
}
