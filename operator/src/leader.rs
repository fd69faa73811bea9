//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator
//! processes one at a time reconciles.
//!
//! Written here rather than taken from a crate. `kube-leader-election` (0.44) depends on kube 4,
//! a second kube client in the build. `kube-lease-manager` (0.13) works with kube 5 but
//! expires a lease by comparing the holder's `renewTime` with the local wall clock (skew
//! between machines decides a takeover) and sends its requests without a deadline, so a hung
//! apiserver connection keeps a leader believing it leads: the two faults this module exists
//! to avoid. kube-runtime 5 has no lease helper. The protocol is client-go's:
//!
//! - The Lease is created with `create` (the apiserver lets exactly one creator win). Every
//!   other write is a server-side apply carrying the `resourceVersion` read just before, so of
//!   two racing writers one gets a 409 Conflict and stays a follower.
//! - **A follower expires a lease by its own clock** ([`Observer`]): it notes the monotonic
//!   instant at which it first saw the current record (holder, `renewTime`,
//!   `leaseDurationSeconds`, `resourceVersion`) and may take over only once that record has
//!   not changed for `leaseDurationSeconds` of that clock. The holder's `renewTime` is never
//!   compared with a local clock, so clock skew between machines cannot cause a takeover.
//! - **A leader leads only until `renew_deadline` after its last successful write was sent**
//!   ([`Term`]), measured on its monotonic clock from the instant the request left, not from
//!   the response. Every round of requests is bounded by that deadline (and by
//!   `renew_deadline` for a follower), so a hung connection to a frozen apiserver ends in a
//!   timeout, not in a leader that never hears back. At the deadline the process stops
//!   leading: the controllers are stopped and reconciles in flight are dropped before their
//!   next request (`Context::leadership`, `Error::NotLeading`); the process then exits and
//!   its restart starts as a follower (a process leads at most once). A leader that reads
//!   the Lease held by another steps down at once.
//! - Why that is one leader at a time: a follower first sees a record no earlier than it was
//!   written, which is no earlier than the holder sent it; so it takes over no earlier than
//!   `leaseDurationSeconds` after the holder's last successful write was sent, while the holder
//!   stopped `renew_deadline` (two thirds of the duration) after it. The last third absorbs
//!   the scheduling of the step-down and the rate difference of the two monotonic clocks.
//!   Not covered, as in client-go: a write request a leader sent before its deadline that the
//!   apiserver holds (say, frozen) and applies after a takeover. Kubernetes has no fencing
//!   token for that; every write of a reconcile is an idempotent apply of the desired state,
//!   and the new leader's next reconcile applies it again. A late renew of the Lease itself
//!   is harmless: it changes the record, so every follower's clock restarts.
//! - On graceful shutdown the leader releases the Lease (clears the holder), so a standby takes
//!   over at its next try instead of waiting for the lease to expire.
//!
//! Proven by the unit tests below (expiry by observed time, the deadline from the send) and by
//! `operator/tests/operator_leader_freeze.rs` (a frozen apiserver: the leader steps down, no
//! reconciles overlap, the follower takes over only after the lease duration).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::Chain;

/// Where and how to hold the Lease.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This process's identity (holderIdentity).
    pub identity: String,
    /// leaseDurationSeconds (whole seconds, at least one).
    pub duration: Duration,
}

impl LeaseSettings {
    /// How often the holder renews and a follower tries.
    pub fn retry(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(200))
    }

    /// How long after its last successful renew was sent a leader stops leading; also the
    /// bound of a follower's round of requests. Two thirds of the lease duration.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// The duration as written in the Lease.
    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }
}

/// One state of the Lease as a follower sees it; a follower's clock restarts whenever it
/// changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// holderIdentity; an empty one is none.
    pub holder: Option<String>,
    /// renewTime, as the holder's clock wrote it: compared for change, never with a clock.
    pub renew_time: Option<Timestamp>,
    /// leaseDurationSeconds, at least one second.
    pub duration: Duration,
    pub resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(1).max(1)).unwrap_or(1),
            ),
            resource_version: lease.resource_version(),
        }
    }
}

/// A candidate's memory of the Lease: the last record read and the instant of its own
/// monotonic clock at which it first read it (client-go's `observedTime`).
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(Record, Instant)>,
}

impl Observer {
    /// Notes `record`, read at `now`; the instant is kept while the record stays the same.
    pub fn observe(&mut self, record: Record, now: Instant) {
        if self.seen.as_ref().is_none_or(|(r, _)| *r != record) {
            self.seen = Some((record, now));
        }
    }

    /// Whether `identity` may write itself in as the holder at `now`: the Lease is free, is
    /// its own, or its record has not changed for its lease duration since first observed.
    pub fn may_take(&self, identity: &str, now: Instant) -> bool {
        match &self.seen {
            None => true,
            Some((record, first_seen)) => match record.holder.as_deref() {
                None => true,
                Some(holder) if holder == identity => true,
                Some(_) => now.saturating_duration_since(*first_seen) >= record.duration,
            },
        }
    }

    /// The holder of the last record read.
    pub fn holder(&self) -> Option<&str> {
        self.seen.as_ref()?.0.holder.as_deref()
    }
}

/// The leader's side: it leads until `renew_deadline` after its last successful write was
/// sent.
#[derive(Debug)]
pub struct Term {
    renew_deadline: Duration,
    /// When the last successful acquire or renew was sent; None until the first.
    renewed: Option<Instant>,
}

impl Term {
    pub fn new(renew_deadline: Duration) -> Term {
        Term {
            renew_deadline,
            renewed: None,
        }
    }

    /// A write sent at `sent` succeeded. A response that arrives late does not move the
    /// deadline past `sent + renew_deadline`.
    pub fn renewed(&mut self, sent: Instant) {
        self.renewed = Some(self.renewed.map_or(sent, |r| r.max(sent)));
    }

    /// The instant this process stops leading, while it leads.
    pub fn deadline(&self) -> Option<Instant> {
        Some(self.renewed? + self.renew_deadline)
    }

    /// Whether this process leads at `now`.
    pub fn leads(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now < d)
    }
}

/// What one round of requests found.
enum Round {
    /// This process holds the Lease: its write was sent at this instant (wall clock too).
    Holds(Instant, Timestamp),
    /// Another process holds it.
    Follows,
}

/// Runs the election until `cancel` fires or this process stops leading (it leads at most
/// once: a process that stepped down exits); `leading` says whether it leads.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observer = Observer::default();
    let mut term = Term::new(settings.renew_deadline());
    let mut last_holder: Option<String> = None;
    loop {
        let started = Instant::now();
        // A round ends by the renew deadline: a leader's, or a follower's own bound.
        let bound = term
            .deadline()
            .unwrap_or(started + settings.renew_deadline())
            .min(started + settings.renew_deadline());
        let round = tokio::select! {
            r = tokio::time::timeout_at(bound.into(), round(&api, &settings, &mut observer)) => r,
            () = cancel.cancelled() => break,
        };
        match round {
            Ok(Ok(Round::Holds(sent, sent_at))) => {
                term.renewed(sent);
                if *leading.borrow() {
                    debug!(lease = %settings.name, sent = %sent_at, "renewed the lease");
                } else {
                    info!(lease = %settings.name, identity = %settings.identity, sent = %sent_at, "became the leader");
                    leading.send_replace(true);
                }
            }
            Ok(Ok(Round::Follows)) => {
                if *leading.borrow() {
                    warn!(lease = %settings.name, holder = ?observer.holder(), "another process holds the lease: stepping down");
                    leading.send_replace(false);
                    return;
                }
                let holder = observer.holder().map(str::to_string);
                if holder.is_some() && holder != last_holder {
                    info!(lease = %settings.name, holder = ?holder, "the lease is held by another process");
                }
                last_holder = holder;
            }
            Ok(Err(e)) => warn!(lease = %settings.name, error = %Chain(&e), "lease request failed"),
            Err(_) => {
                warn!(lease = %settings.name, bound = ?bound.saturating_duration_since(started), "lease request timed out")
            }
        }
        // Wait for the next round, waking at the deadline to stop leading on time.
        let next = started + settings.retry();
        loop {
            if step_down_when_due(&settings, &term, &leading) {
                return;
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            let wake = term.deadline().map_or(next, |d| d.min(next));
            tokio::select! {
                () = tokio::time::sleep_until(wake.max(now).into()) => {}
                () = cancel.cancelled() => break,
            }
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        match tokio::time::timeout(settings.renew_deadline(), release(&api, &settings)).await {
            Ok(Ok(())) => info!(lease = %settings.name, "released the lease"),
            Ok(Err(e)) => {
                warn!(lease = %settings.name, error = %Chain(&e), "cannot release the lease")
            }
            Err(_) => warn!(lease = %settings.name, "releasing the lease timed out"),
        }
    }
}

/// Stops leading once the renew deadline has passed; true when it did.
fn step_down_when_due(
    settings: &LeaseSettings,
    term: &Term,
    leading: &watch::Sender<bool>,
) -> bool {
    if *leading.borrow() && !term.leads(Instant::now()) {
        warn!(
            lease = %settings.name,
            renew_deadline = ?settings.renew_deadline(),
            "could not renew the lease within the renew deadline: stepping down"
        );
        leading.send_replace(false);
        return true;
    }
    false
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One round: read the Lease, then create, renew or take it over when allowed.
async fn round(
    api: &Api<Lease>,
    s: &LeaseSettings,
    observer: &mut Observer,
) -> Result<Round, kube::Error> {
    let Some(lease) = api.get_opt(&s.name).await? else {
        let (sent, now) = (Instant::now(), Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(s.duration_seconds()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Round::Holds(sent, now)),
            Err(e) if is_conflict(&e) => Ok(Round::Follows),
            Err(e) => Err(e),
        };
    };
    observer.observe(Record::of(&lease), Instant::now());
    if !observer.may_take(&s.identity, Instant::now()) {
        return Ok(Round::Follows);
    }
    let spec = lease.spec.clone().unwrap_or_default();
    let mine = spec.holder_identity.as_deref() == Some(s.identity.as_str());
    let (sent, now) = (Instant::now(), Timestamp::now());
    let update = Lease {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            resource_version: lease.resource_version(),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(s.identity.clone()),
            lease_duration_seconds: Some(s.duration_seconds()),
            acquire_time: if mine {
                spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
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
        Ok(_) => Ok(Round::Holds(sent, now)),
        Err(e) if is_conflict(&e) => Ok(Round::Follows),
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
    use k8s_openapi::jiff::SignedDuration;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn record(holder: &str, renew_time: Timestamp, version: &str) -> Record {
        Record {
            holder: Some(holder.to_string()).filter(|h| !h.is_empty()),
            renew_time: Some(renew_time),
            duration: 15 * SECOND,
            resource_version: Some(version.into()),
        }
    }

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            duration: 15 * SECOND,
        }
    }

    #[test]
    fn a_follower_expires_a_lease_by_its_own_clock_not_by_the_holders_renew_time() {
        let t0 = Instant::now();
        // The holder's clock is an hour behind the follower's, then an hour ahead: neither
        // changes when the follower may take over.
        let behind = Timestamp::now() - SignedDuration::from_hours(1);
        let ahead = Timestamp::now() + SignedDuration::from_hours(1);
        for renew_time in [behind, ahead] {
            let mut o = Observer::default();
            o.observe(record("other", renew_time, "7"), t0);
            assert!(!o.may_take("me", t0));
            o.observe(record("other", renew_time, "7"), t0 + 14 * SECOND);
            assert!(!o.may_take("me", t0 + 14 * SECOND));
            assert!(o.may_take("me", t0 + 15 * SECOND));
        }
    }

    #[test]
    fn a_renewed_record_restarts_the_followers_clock() {
        let t0 = Instant::now();
        let renewed = Timestamp::now();
        let mut o = Observer::default();
        o.observe(record("other", renewed, "7"), t0);
        o.observe(
            record("other", renewed + SignedDuration::from_secs(3), "8"),
            t0 + 10 * SECOND,
        );
        assert!(!o.may_take("me", t0 + 15 * SECOND));
        assert!(!o.may_take("me", t0 + 24 * SECOND));
        assert!(o.may_take("me", t0 + 25 * SECOND));
        // Any change restarts it, even one that keeps renewTime (another writer's apply).
        o.observe(
            record("other", renewed + SignedDuration::from_secs(3), "9"),
            t0 + 25 * SECOND,
        );
        assert!(!o.may_take("me", t0 + 39 * SECOND));
    }

    #[test]
    fn an_unchanged_record_read_after_an_outage_is_expired_at_once() {
        let t0 = Instant::now();
        let renewed = Timestamp::now();
        let mut o = Observer::default();
        o.observe(record("other", renewed, "7"), t0);
        // The reads in between failed; the first one after the outage finds the same record.
        o.observe(record("other", renewed, "7"), t0 + 40 * SECOND);
        assert!(o.may_take("me", t0 + 40 * SECOND));
    }

    #[test]
    fn a_free_or_own_lease_may_be_taken_at_once() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        assert!(o.may_take("me", t0), "no lease read yet: create it");
        o.observe(record("", Timestamp::now(), "7"), t0);
        assert!(o.may_take("me", t0), "released");
        o.observe(record("me", Timestamp::now(), "8"), t0);
        assert!(o.may_take("me", t0), "its own: renew");
    }

    #[test]
    fn a_leaders_deadline_runs_from_when_its_last_successful_renew_was_sent() {
        let s = settings();
        let mut term = Term::new(s.renew_deadline());
        let t0 = Instant::now();
        assert!(!term.leads(t0));
        // Sent at t0, answered 8 s later: the deadline is t0 + 10 s, not 8 s + 10 s.
        term.renewed(t0);
        assert_eq!(term.deadline(), Some(t0 + 10 * SECOND));
        assert!(term.leads(t0 + 9 * SECOND));
        assert!(!term.leads(t0 + 10 * SECOND));
        // Renews that fail do not move it; one sent later does, one answered late and
        // older than the last does not.
        term.renewed(t0 + 3 * SECOND);
        term.renewed(t0 + SECOND);
        assert_eq!(term.deadline(), Some(t0 + 13 * SECOND));
    }

    #[test]
    fn a_leader_stops_before_any_follower_may_take_over() {
        let s = settings();
        assert!(s.retry() < s.renew_deadline());
        assert!(s.renew_deadline() < s.duration);
        let t0 = Instant::now();
        // The leader's last successful renew was sent at t0; a follower reads that record
        // no earlier than it was written, so at t0 + d for some d ≥ 0.
        for d in [0, 1, 5, 20].map(|s| s * SECOND) {
            let mut term = Term::new(s.renew_deadline());
            term.renewed(t0);
            let mut follower = Observer::default();
            follower.observe(record("leader", Timestamp::now(), "7"), t0 + d);
            let earliest_takeover = (0..=600)
                .map(|ms| t0 + Duration::from_millis(100 * ms))
                .find(|t| follower.may_take("me", *t))
                .unwrap();
            let stopped = term.deadline().unwrap();
            assert!(stopped < earliest_takeover, "d = {d:?}");
            assert!(!term.leads(earliest_takeover));
        }
    }
}
