//! Condition helpers: Ready / Progressing / Degraded computed from what the reconcile saw,
//! keeping `lastTransitionTime` when a condition's status did not change, so that a status
//! with nothing new compares equal to the one stored and is not written.

use std::borrow::Borrow;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use pipewright_crds::conditions::{
    DEGRADED, DEPLOYMENT_UNAVAILABLE, OUTBOX_TABLE_INVALID, PAUSED, POISON_MESSAGE, PROGRESSING,
    READY, WORKER_CONFIG_REJECTED,
};
use pipewright_crds::termination::{RecordRef, Termination};

/// Reasons the operator gives besides the API's own (`pipewright_crds::conditions`).
pub mod reasons {
    /// The spec cannot be turned into a worker.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A consumed topic does not exist.
    pub const TOPIC_NOT_FOUND: &str = "TopicNotFound";
    /// Every desired replica is available.
    pub const DEPLOYMENT_AVAILABLE: &str = "DeploymentAvailable";
    /// spec.replicas (or the autoscaler) asks for no replica.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// The Deployment is rolling out a new pod template or scaling.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The Deployment runs the current pod template with every replica.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// Nothing needs a person.
    pub const AS_EXPECTED: &str = "AsExpected";
}

/// Something that needs a person, as a condition reason and a message (never a secret value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// Why a worker pod stopped, as it reported it ([`Termination`]): the kubelet copies the
/// worker's termination message into the container status (current state, or the last one
/// once the container restarted). A poison message names the record and the error, never its
/// payload; a refused configuration names what the worker refused.
///
/// A report in the *last* state outlives the cause, so it counts only while the cause holds:
/// a poison message until the group's committed offset is past the record (`moved_past`: the
/// restarted worker delivered it, or someone moved the group on); a refused configuration
/// until the restarted container is ready (the worker checks its configuration before it
/// reports ready). A report in the *current* state (the container is down now) counts unless
/// the group moved past its record.
///
/// Also what the autoscaler must know: the records workers are stuck on (their partitions'
/// lag cannot drain) and whether a container crash-loops (more replicas of it drain nothing).
pub fn workers_of<P: Borrow<Pod>>(pods: &[P], moved_past: impl Fn(&RecordRef) -> bool) -> Workers {
    let mut poison = None;
    let mut rejected = None;
    let mut stuck = Vec::new();
    let mut crash_looping = false;
    let statuses = pods
        .iter()
        .filter_map(|pod| pod.borrow().status.as_ref()?.container_statuses.as_ref())
        .flatten();
    for c in statuses {
        let running_ready = c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some());
        crash_looping |= c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref()?.reason.as_deref())
            == Some(CRASH_LOOP_BACK_OFF);
        let reports = [(c.state.as_ref(), false), (c.last_state.as_ref(), true)]
            .into_iter()
            .filter_map(|(s, last)| {
                let message = s?.terminated.as_ref()?.message.as_deref()?;
                Some((Termination::parse(message)?, last))
            });
        for (report, last) in reports {
            match report {
                Termination::Poison { record, detail } => {
                    if record.as_ref().is_some_and(&moved_past) {
                        continue;
                    }
                    let at = record.as_ref().map(|r| format!("{r} ")).unwrap_or_default();
                    poison.get_or_insert(format!("{at}{detail}"));
                    stuck.extend(record);
                }
                Termination::ConfigRejected(error) if !(last && running_ready) => {
                    rejected.get_or_insert((WORKER_CONFIG_REJECTED, error));
                }
                Termination::TableRefused(error) if !(last && running_ready) => {
                    rejected.get_or_insert((OUTBOX_TABLE_INVALID, error));
                }
                Termination::ConfigRejected(_) | Termination::TableRefused(_) => {}
            }
        }
    }
    let problem = match (poison, rejected) {
        (Some(report), _) => Some(Problem::new(
            POISON_MESSAGE,
            format!("a worker stopped on a poison message: {}", report.trim()),
        )),
        (None, Some((WORKER_CONFIG_REJECTED, report))) => Some(Problem::new(
            WORKER_CONFIG_REJECTED,
            format!("a worker refused its configuration: {}", report.trim()),
        )),
        (None, Some((reason, report))) => Some(Problem::new(
            reason,
            format!("a worker refused the outbox table: {}", report.trim()),
        )),
        (None, None) => None,
    };
    stuck.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    stuck.dedup();
    Workers {
        problem,
        stuck,
        crash_looping,
    }
}

/// The kubelet's waiting reason of a container that keeps exiting.
const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";

/// What the worker pods say about themselves ([`workers_of`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workers {
    /// A poison message or a refused configuration that still holds.
    pub problem: Option<Problem>,
    /// Records workers stopped on and the group has not moved past: their partitions cannot
    /// drain until someone acts.
    pub stuck: Vec<RecordRef>,
    /// Some worker container is in `CrashLoopBackOff`.
    pub crash_looping: bool,
}

impl Workers {
    /// The workers cannot drain lag faster with more replicas: one crash-loops, is stuck on
    /// a record, or stopped on a report that still holds (a refused configuration: between
    /// two back-offs the restarted container runs for a moment, not `CrashLoopBackOff`).
    pub fn stalled(&self) -> bool {
        self.crash_looping || !self.stuck.is_empty() || self.problem.is_some()
    }
}

/// The figures of a worker Deployment that the conditions are computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// The Deployment exists.
    pub exists: bool,
    /// spec.replicas of the Deployment.
    pub desired: i32,
    /// status.replicas.
    pub replicas: i32,
    /// status.updatedReplicas.
    pub updated: i32,
    /// status.readyReplicas.
    pub ready: i32,
    /// status.availableReplicas.
    pub available: i32,
    /// The Deployment controller has seen the Deployment's current generation.
    pub observed: bool,
}

impl Rollout {
    /// The figures of `deployment` (absent: nothing exists yet).
    pub fn of(deployment: Option<&Deployment>) -> Rollout {
        let Some(d) = deployment else {
            return Rollout::default();
        };
        let status = d.status.clone().unwrap_or_default();
        Rollout {
            exists: true,
            desired: d.spec.replicas.unwrap_or(1),
            replicas: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            observed: status.observed_generation.is_some()
                && status.observed_generation >= d.metadata.generation,
        }
    }

    /// Every desired replica runs the current template and is available.
    pub fn complete(&self) -> bool {
        self.exists
            && self.observed
            && self.updated >= self.desired
            && self.available >= self.desired
            && self.replicas <= self.desired
    }
}

/// Ready, Progressing and Degraded for a resource of `generation`, given the first problem
/// found (if any), whether it is paused, and its Deployment's rollout. `previous` supplies
/// lastTransitionTime for conditions whose status did not change.
pub fn conditions(
    generation: Option<i64>,
    problem: Option<&Problem>,
    paused: bool,
    rollout: &Rollout,
    previous: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    let (ready, ready_reason, ready_message) = match problem {
        Some(p) => (false, p.reason, p.message.clone()),
        None if !rollout.exists => (
            false,
            DEPLOYMENT_UNAVAILABLE,
            "the worker Deployment does not exist yet".to_string(),
        ),
        None if rollout.desired == 0 => (
            false,
            reasons::SCALED_TO_ZERO,
            "no replica is desired".to_string(),
        ),
        None if rollout.available < rollout.desired => (
            false,
            DEPLOYMENT_UNAVAILABLE,
            format!(
                "{} of {} replicas available",
                rollout.available, rollout.desired
            ),
        ),
        None => (
            true,
            reasons::DEPLOYMENT_AVAILABLE,
            format!(
                "{} of {} replicas available",
                rollout.available, rollout.desired
            ),
        ),
    };
    let (progressing, progressing_reason, progressing_message) = if paused {
        (
            false,
            PAUSED,
            "annotation pipewright.io/paused is \"true\": the operator changes nothing".to_string(),
        )
    } else if let Some(p) = problem.filter(|p| {
        p.reason == reasons::INVALID_SPEC
            || p.reason == pipewright_crds::conditions::SECRET_NOT_FOUND
            || p.reason == pipewright_crds::conditions::SINK_UNRESOLVABLE
    }) {
        (false, p.reason, p.message.clone())
    } else if rollout.exists && !rollout.complete() {
        (
            true,
            reasons::ROLLING_OUT,
            format!(
                "{} of {} replicas updated, {} available",
                rollout.updated, rollout.desired, rollout.available
            ),
        )
    } else if rollout.exists {
        (
            false,
            reasons::ROLLOUT_COMPLETE,
            "the workers run the current spec".to_string(),
        )
    } else {
        (
            true,
            reasons::ROLLING_OUT,
            "creating the worker Deployment".to_string(),
        )
    };
    let (degraded, degraded_reason, degraded_message) = match problem {
        Some(p) => (true, p.reason, p.message.clone()),
        None => (false, reasons::AS_EXPECTED, String::new()),
    };
    vec![
        condition(
            READY,
            ready,
            ready_reason,
            ready_message,
            generation,
            previous,
            now,
        ),
        condition(
            PROGRESSING,
            progressing,
            progressing_reason,
            progressing_message,
            generation,
            previous,
            now,
        ),
        condition(
            DEGRADED,
            degraded,
            degraded_reason,
            degraded_message,
            generation,
            previous,
            now,
        ),
    ]
}

/// One condition; its lastTransitionTime is the previous one's when the status is the same.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    condition_of(type_, status, reason, message, generation, previous, now)
}

/// One condition of status `True`, `False` or `Unknown`; its lastTransitionTime is the
/// previous one's when the status is the same.
pub fn condition_of(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = status.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The condition of `type_` in `conditions`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `(type, status, reason)` of each condition: what changed between two statuses, for Events.
pub fn summary(conditions: &[Condition]) -> Vec<(String, String, String)> {
    conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipewright_crds::conditions::SECRET_NOT_FOUND;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    /// The string constants of `pub mod <name> { ... }` in `source`.
    fn constants_of(source: &str, module: &str) -> Vec<String> {
        let start = source
            .find(&format!("pub mod {module} {{"))
            .unwrap_or_else(|| panic!("module {module}"));
        let body = &source[start..];
        let body = &body[..body.find("\n}").unwrap()];
        body.lines()
            .filter_map(|l| {
                let (_, rest) = l
                    .trim()
                    .strip_prefix("pub const ")?
                    .split_once(": &str = \"")?;
                Some(rest.split_once('"')?.0.to_string())
            })
            .collect()
    }

    #[test]
    fn every_condition_and_reason_is_explained_in_docs_troubleshooting_md() {
        let doc = include_str!("../../docs/troubleshooting.md");
        let api = constants_of(include_str!("../../crds/src/common.rs"), "conditions");
        let own = constants_of(include_str!("status.rs"), "reasons");
        assert!(api.len() >= 14 && own.len() >= 7, "{api:?} {own:?}");
        let missing: Vec<&String> = api
            .iter()
            .chain(&own)
            .filter(|r| !doc.contains(&format!("| `{r}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/troubleshooting.md has no row for {missing:?}"
        );
    }

    fn rollout(desired: i32, available: i32) -> Rollout {
        Rollout {
            exists: true,
            desired,
            replicas: desired,
            updated: desired,
            ready: available,
            available,
            observed: true,
        }
    }

    fn get<'a>(cs: &'a [Condition], t: &str) -> (&'a str, &'a str) {
        let c = find(cs, t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_missing_secret_is_degraded_not_ready_and_not_progressing() {
        let p = Problem::new(SECRET_NOT_FOUND, "secret \"db\" not found");
        let cs = conditions(Some(3), Some(&p), false, &Rollout::default(), &[], at(10));
        assert_eq!(get(&cs, DEGRADED), ("True", SECRET_NOT_FOUND));
        assert_eq!(get(&cs, READY), ("False", SECRET_NOT_FOUND));
        assert_eq!(get(&cs, PROGRESSING), ("False", SECRET_NOT_FOUND));
        assert!(cs.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn unavailable_replicas_are_progressing_and_available_ones_are_ready() {
        let cs = conditions(Some(1), None, false, &rollout(2, 0), &[], at(10));
        assert_eq!(get(&cs, READY), ("False", DEPLOYMENT_UNAVAILABLE));
        assert_eq!(get(&cs, PROGRESSING), ("True", reasons::ROLLING_OUT));
        assert_eq!(get(&cs, DEGRADED), ("False", reasons::AS_EXPECTED));
        let cs = conditions(Some(1), None, false, &rollout(2, 2), &cs, at(20));
        assert_eq!(get(&cs, READY), ("True", reasons::DEPLOYMENT_AVAILABLE));
        assert_eq!(get(&cs, PROGRESSING), ("False", reasons::ROLLOUT_COMPLETE));
    }

    #[test]
    fn paused_resources_report_paused_in_progressing() {
        let cs = conditions(Some(1), None, true, &rollout(1, 1), &[], at(10));
        assert_eq!(get(&cs, PROGRESSING), ("False", PAUSED));
        assert_eq!(get(&cs, READY), ("True", reasons::DEPLOYMENT_AVAILABLE));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = conditions(Some(1), None, false, &rollout(1, 0), &[], at(10));
        let same = conditions(Some(1), None, false, &rollout(1, 0), &first, at(20));
        assert_eq!(first, same, "nothing changed, so nothing to write");
        let ready = conditions(Some(1), None, false, &rollout(1, 1), &first, at(30));
        let t = &find(&ready, READY).unwrap().last_transition_time;
        assert_eq!(t.0, at(30));
        let degraded = &find(&ready, DEGRADED).unwrap().last_transition_time;
        assert_eq!(degraded.0, at(10));
    }

    /// A pod whose worker container stopped with `message`: now (`last` false) or before a
    /// restart (`last` true), the restarted container `running_ready` or crash-looping.
    fn stopped_pod(message: &str, last: bool, running_ready: bool) -> Pod {
        let terminated = serde_json::json!({"terminated": {"exitCode": 1, "message": message}});
        let now = if running_ready {
            serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
        } else {
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}})
        };
        let status = if last {
            serde_json::json!({"name": "worker", "ready": running_ready, "restartCount": 1, "image": "i",
                               "imageID": "", "state": now, "lastState": terminated})
        } else {
            serde_json::json!({"name": "worker", "ready": false, "restartCount": 0, "image": "i",
                               "imageID": "", "state": terminated})
        };
        serde_json::from_value(serde_json::json!({"status": {"containerStatuses": [status]}}))
            .unwrap()
    }

    fn problem(pods: &[Pod], moved_past: impl Fn(&RecordRef) -> bool) -> Option<Problem> {
        workers_of(pods, moved_past).problem
    }

    #[test]
    fn a_poison_message_in_a_workers_termination_message_is_a_problem() {
        let never = |_: &RecordRef| false;
        let pod = |m: &str, last: bool| stopped_pod(m, last, false);
        let p = problem(
            &[pod("PoisonMessage: orders/2/17 (invalid): not JSON", true)],
            never,
        )
        .unwrap();
        assert_eq!(p.reason, POISON_MESSAGE);
        assert!(p.message.contains("orders/2/17 (invalid)"), "{}", p.message);
        assert!(problem(&[pod("PoisonMessage: t/0/1 (sink): 500", false)], never).is_some());
        assert_eq!(problem(&[pod("OOMKilled", true)], never), None);
        let rejected = problem(
            &[pod(
                "WorkerConfigRejected: invalid configuration: events.types[0].schema: not a JSON Schema",
                true,
            )],
            never,
        )
        .unwrap();
        assert_eq!(rejected.reason, WORKER_CONFIG_REJECTED);
        assert!(
            rejected.message.contains("not a JSON Schema"),
            "{}",
            rejected.message
        );
        assert_eq!(problem(&[Pod::default()], never), None);
    }

    #[test]
    fn a_poison_message_clears_once_the_group_committed_past_its_record() {
        let message = "PoisonMessage: orders/2/17 (sink): HTTP 500";
        let past = |r: &RecordRef| r.topic == "orders" && r.partition == 2 && r.offset < 20;
        let stuck = |_: &RecordRef| false;
        // Restarted and ready, but the group is still at the record: still stuck on it.
        assert!(problem(&[stopped_pod(message, true, true)], stuck).is_some());
        // The group committed past the record: the restarted worker delivered it.
        assert_eq!(problem(&[stopped_pod(message, true, true)], past), None);
        assert_eq!(problem(&[stopped_pod(message, false, false)], past), None);
    }

    #[test]
    fn stuck_records_and_crash_loops_stall_the_workers() {
        let message = "PoisonMessage: orders/2/17 (sink): HTTP 500";
        let w = workers_of(&[stopped_pod(message, true, false)], |_| false);
        assert!(w.crash_looping && w.stalled());
        assert_eq!(w.stuck, vec!["orders/2/17".parse().unwrap()]);
        let w = workers_of(&[stopped_pod(message, true, true)], |_| true);
        assert!(!w.crash_looping && w.stuck.is_empty() && !w.stalled());
        // Crash-looping for another reason (no report) still stalls.
        let w = workers_of(&[stopped_pod("OOMKilled", true, false)], |_| false);
        assert!(w.stalled() && w.problem.is_none());
    }

    #[test]
    fn a_refused_configuration_clears_once_the_restarted_worker_is_ready() {
        let message = "WorkerConfigRejected: sink.http.url: relative URL";
        let never = |_: &RecordRef| false;
        assert!(problem(&[stopped_pod(message, true, false)], never).is_some());
        assert!(problem(&[stopped_pod(message, false, false)], never).is_some());
        assert_eq!(problem(&[stopped_pod(message, true, true)], never), None);
        // Stalled also while the restarted container runs for a moment between back-offs.
        let w = workers_of(&[stopped_pod(message, false, false)], never);
        assert!(!w.crash_looping && w.stalled());
        assert!(!workers_of(&[stopped_pod(message, true, true)], never).stalled());
    }
}
