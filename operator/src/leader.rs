//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator
//! processes exactly one reconciles.
//!
//! Written here rather than taken from a crate: kube-runtime 5 has no lease helper, and
//! `kube-leader-election` (0.44) depends on kube 4, which would put a second kube client into
//! the build. The protocol is client-go's:
//!
//! - The Lease is created with `create` (the apiserver lets exactly one creator win).
//! - The holder renews `renewTime` every `retry` period; anyone else takes it over only once
//!   `renewTime + leaseDurationSeconds` has passed. Both updates are server-side applies that
//!   carry the `resourceVersion` read just before, so of two racing writers one gets a
//!   409 Conflict and stays a follower.
//! - A leader that could not renew for `renew_deadline` (two thirds of the lease duration)
//!   steps down before anyone else may take over; the operator then exits, and its restart
//!   starts as a follower.
//! - On graceful shutdown the leader releases the Lease (clears the holder), so a standby takes
//!   over at its next try instead of waiting for the lease to expire.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Chain;

/// Where and how to hold the Lease.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This process's identity (holderIdentity).
    pub identity: String,
    /// leaseDurationSeconds.
    pub duration: Duration,
}

impl LeaseSettings {
    /// How often the holder renews and a follower tries.
    pub fn retry(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(200))
    }

    /// How long a leader may fail to renew before it steps down.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// Whether a Lease held by `holder`, last renewed at `renewed`, may be taken over at `now`.
pub fn expired(
    holder: Option<&str>,
    renewed: Option<Timestamp>,
    duration_s: i32,
    now: Timestamp,
) -> bool {
    match (holder.filter(|h| !h.is_empty()), renewed) {
        (None, _) | (_, None) => true,
        (Some(_), Some(t)) => t + SignedDuration::from_secs(i64::from(duration_s.max(1))) < now,
    }
}

/// Runs the election until `cancel` fires; `leading` says whether this process leads.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut last_renewed: Option<Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &settings).await {
            Ok(true) => {
                if !*leading.borrow() {
                    info!(lease = %settings.name, identity = %settings.identity, "became the leader");
                }
                last_renewed = Some(Instant::now());
                leading.send_replace(true);
            }
            Ok(false) => {
                if *leading.borrow() {
                    warn!(lease = %settings.name, "another process holds the lease: stepping down");
                }
                last_renewed = None;
                leading.send_replace(false);
            }
            Err(e) => {
                warn!(lease = %settings.name, error = %Chain(&e), "lease request failed");
                if last_renewed.is_some_and(|t| t.elapsed() > settings.renew_deadline()) {
                    warn!(lease = %settings.name, "could not renew the lease in time: stepping down");
                    last_renewed = None;
                    leading.send_replace(false);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.retry()) => {}
            () = cancel.cancelled() => break,
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(e) = release(&api, &settings).await {
            warn!(lease = %settings.name, error = %Chain(&e), "cannot release the lease");
        } else {
            info!(lease = %settings.name, "released the lease");
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One round: true when this process holds the Lease afterwards.
async fn try_acquire_or_renew(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration_s = i32::try_from(s.duration.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    let Some(lease) = api.get_opt(&s.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(duration_s),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref();
    let mine = holder == Some(s.identity.as_str());
    if !mine
        && !expired(
            holder,
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_duration_seconds.unwrap_or(duration_s),
            now,
        )
    {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
    let update = Lease {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            resource_version: lease.resource_version(),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(s.identity.clone()),
            lease_duration_seconds: Some(duration_s),
            acquire_time: if mine {
                spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    };
    match api
        .patch(
            &s.name,
            &PatchParams::apply(crate::MANAGER).force(),
            &Patch::Apply(&update),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Clears the holder so that a follower takes over at once.
async fn release(api: &Api<Lease>, s: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(lease) = api.get_opt(&s.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return Ok(());
    }
    let update = Lease {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            resource_version: lease.resource_version(),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: spec.acquire_time,
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: spec.lease_transitions,
            ..LeaseSpec::default()
        }),
    };
    api.patch(
        &s.name,
        &PatchParams::apply(crate::MANAGER).force(),
        &Patch::Apply(&update),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_over_only_after_its_duration() {
        let t = Timestamp::from_second(1000).unwrap();
        let later = |s: i64| Timestamp::from_second(1000 + s).unwrap();
        assert!(!expired(Some("a"), Some(t), 15, later(10)));
        assert!(!expired(Some("a"), Some(t), 15, later(15)));
        assert!(expired(Some("a"), Some(t), 15, later(16)));
        assert!(expired(None, Some(t), 15, later(0)));
        assert!(expired(Some(""), Some(t), 15, later(0)));
        assert!(expired(Some("a"), None, 15, later(0)));
    }

    #[test]
    fn a_leader_steps_down_before_a_follower_may_take_over() {
        let s = LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
        };
        assert!(s.renew_deadline() < s.duration);
        assert!(s.retry() < s.renew_deadline());
    }
}
