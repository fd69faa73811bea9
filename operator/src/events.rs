//! Kubernetes Events (`events.k8s.io/v1`) about the resources: one per condition transition
//! ([`crate::controller`]). The same event again within [`SERIES_WINDOW`] (same resource,
//! type, action and reason) is counted on the first one's `series` instead of making a new
//! object, as client-go's recorder and kube's `Recorder` do.
//!
//! Why not `kube::runtime::events::Recorder`: it keeps each event of the last six minutes
//! whole (the object with its note, and a key of owned strings) in a map that never shrinks.
//! At a cold start of 1,200 resources that map was the operator's largest allocation
//! (11.8 MB of a 46 MB heap peak, heaptrack, 2026-12-04), and it stayed after the events
//! aged out. This one keeps per event only what a repeat needs (the Event's name, the count,
//! when it was last seen), and drops what has aged out, shrinking the map, at most once a
//! [`PRUNE_PERIOD`]. The objects it sends are the ones kube's `Recorder` sends, which stays
//! the type the call sites use ([`Event`], [`EventType`], [`Reporter`]).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Client, ResourceExt};

/// A repeat this long after the last one starts a new Event (client-go and kube: 6 minutes).
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// How often aged-out entries are dropped.
const PRUNE_PERIOD: SignedDuration = SignedDuration::from_secs(60);

/// What makes two events the same (the reporter is the recorder's own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The resource's uid (its name when it has none).
    regarding: String,
    type_: EventType,
    action: String,
    reason: String,
}

/// The last Event sent for a [`Key`] (in its resource's namespace).
#[derive(Debug)]
struct Sent {
    name: String,
    /// 1 for the Event itself, then its series count.
    count: i32,
    last: Timestamp,
}

#[derive(Debug, Default)]
struct Recent {
    by_key: HashMap<Key, Sent>,
    pruned: Option<Timestamp>,
}

impl Recent {
    /// Drops what has aged out of the series window, at most once a [`PRUNE_PERIOD`], and gives
    /// back the map's room when most of it is empty.
    fn prune(&mut self, now: Timestamp) {
        if self.pruned.is_some_and(|p| p + PRUNE_PERIOD > now) {
            return;
        }
        self.pruned = Some(now);
        self.by_key.retain(|_, s| s.last + SERIES_WINDOW > now);
        if self.by_key.len() < self.by_key.capacity() / 4 {
            self.by_key.shrink_to_fit();
        }
    }

    /// The Event a repeat of `key` at `now` continues, and its series count.
    fn repeat_of(&self, key: &Key, now: Timestamp) -> Option<(&Sent, i32)> {
        let sent = self.by_key.get(key)?;
        (sent.last + SERIES_WINDOW > now).then_some((sent, sent.count + 1))
    }
}

/// Publishes Events as `reporter`.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    recent: Mutex<Recent>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Recorder {
        Recorder {
            client,
            reporter,
            recent: Mutex::new(Recent::default()),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `event` about `regarding`, in its namespace: a new Event, or the series of
    /// the same one sent within [`SERIES_WINDOW`] counted up (a new Event when that one is
    /// gone).
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace(regarding));
        let key = Key {
            regarding: regarding
                .uid
                .clone()
                .or_else(|| regarding.name.clone())
                .unwrap_or_default(),
            type_: event.type_,
            action: event.action.clone(),
            reason: event.reason.clone(),
        };
        let repeat = {
            let mut recent = self.recent();
            recent.prune(now);
            recent
                .repeat_of(&key, now)
                .map(|(sent, count)| (sent.name.clone(), count))
        };
        let sent = match repeat {
            Some((name, count)) => {
                let series = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: MicroTime(now) }
                });
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                    .await
                {
                    Ok(_) => Sent {
                        name,
                        count,
                        last: now,
                    },
                    // Gone (the apiserver's event TTL, or deleted): a new one.
                    Err(kube::Error::Api(s)) if s.is_not_found() => {
                        self.create(&api, event, regarding, now).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => self.create(&api, event, regarding, now).await?,
        };
        self.recent().by_key.insert(key, sent);
        Ok(())
    }

    async fn create(
        &self,
        api: &Api<K8sEvent>,
        event: &Event,
        regarding: &ObjectReference,
        now: Timestamp,
    ) -> Result<Sent, kube::Error> {
        let object = self.object(event, regarding, now);
        let created = api.create(&PostParams::default(), &object).await?;
        Ok(Sent {
            name: created.name_any(),
            count: 1,
            last: now,
        })
    }

    /// The Event object (as kube's `Recorder` builds it).
    fn object(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(namespace(regarding).into()),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_ref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..K8sEvent::default()
        }
    }
}

/// Where an Event about `regarding` goes: its namespace (`default` for a cluster-scoped
/// object, as kube's `Recorder` does).
fn namespace(regarding: &ObjectReference) -> &str {
    regarding.namespace.as_deref().unwrap_or("default")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reason: &str) -> Key {
        Key {
            regarding: "uid-1".into(),
            type_: EventType::Normal,
            action: "Reconcile".into(),
            reason: reason.into(),
        }
    }

    fn sent(last: Timestamp, count: i32) -> Sent {
        Sent {
            name: "a.1".into(),
            count,
            last,
        }
    }

    #[test]
    fn a_repeat_within_the_window_counts_up_the_series_and_one_after_it_starts_anew() {
        let t0: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let mut recent = Recent::default();
        recent.by_key.insert(key("Ready"), sent(t0, 1));
        let (s, count) = recent
            .repeat_of(
                &key("Ready"),
                t0 + SERIES_WINDOW - SignedDuration::from_secs(1),
            )
            .unwrap();
        assert_eq!((s.name.as_str(), count), ("a.1", 2));
        recent.by_key.insert(key("Ready"), sent(t0, 2));
        assert_eq!(recent.repeat_of(&key("Ready"), t0).unwrap().1, 3);
        assert!(
            recent
                .repeat_of(&key("Ready"), t0 + SERIES_WINDOW)
                .is_none()
        );
        assert!(recent.repeat_of(&key("Degraded"), t0).is_none());
    }

    #[test]
    fn aged_out_entries_are_dropped_and_their_room_given_back_at_most_once_a_period() {
        let t0: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let half = SignedDuration::from_secs(30);
        let mut recent = Recent::default();
        // Out of the window 30 s after t0.
        for i in 0..1000 {
            recent
                .by_key
                .insert(key(&format!("r{i}")), sent(t0 - SERIES_WINDOW + half, 1));
        }
        recent.by_key.insert(key("late"), sent(t0, 1));
        let room = recent.by_key.capacity();
        recent.prune(t0);
        assert_eq!(recent.by_key.len(), 1001, "nothing aged out yet");
        // Aged out, but within a period of the last prune: not looked at.
        recent.prune(t0 + half + half / 2);
        assert_eq!(recent.by_key.len(), 1001);
        recent.prune(t0 + PRUNE_PERIOD);
        assert_eq!(recent.by_key.len(), 1);
        assert!(recent.by_key.contains_key(&key("late")));
        assert!(
            recent.by_key.capacity() < room / 4,
            "{} of {room}",
            recent.by_key.capacity()
        );
    }
}
