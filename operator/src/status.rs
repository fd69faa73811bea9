//! Condition helpers: Ready / Progressing / Degraded computed from what the reconcile saw,
//! keeping `lastTransitionTime` when a condition's status did not change, so that a status
//! with nothing new compares equal to the one stored and is not written.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use pipewright_crds::conditions::{
    DEGRADED, DEPLOYMENT_UNAVAILABLE, PAUSED, POISON_MESSAGE, PROGRESSING, READY,
    WORKER_CONFIG_REJECTED,
};

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

/// The prefix of the termination message a worker writes when it stops for a poison message
/// (`pipewright_worker::app::POISON_MESSAGE_PREFIX`).
pub const POISON_MESSAGE_PREFIX: &str = "PoisonMessage: ";

/// The prefix of the termination message a worker writes when it refuses its configuration
/// (`pipewright_worker::app::CONFIG_REJECTED_PREFIX`).
pub const CONFIG_REJECTED_PREFIX: &str = "WorkerConfigRejected: ";

/// Why a worker pod stopped, as it reported it: the kubelet copies the worker's termination
/// message into the container status (current state, or the last one once the container
/// restarted). A poison message names the record and the error, never its payload; a refused
/// configuration names what the worker refused.
pub fn poison_of(pods: &[Pod]) -> Option<Problem> {
    let messages: Vec<&str> = pods
        .iter()
        .filter_map(|pod| pod.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .flat_map(|c| {
            [c.state.as_ref(), c.last_state.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|s| s.terminated.as_ref()?.message.as_deref())
        })
        .collect();
    let poison = messages
        .iter()
        .find_map(|m| m.strip_prefix(POISON_MESSAGE_PREFIX));
    if let Some(report) = poison {
        return Some(Problem::new(
            POISON_MESSAGE,
            format!("a worker stopped on a poison message: {}", report.trim()),
        ));
    }
    messages
        .iter()
        .find_map(|m| m.strip_prefix(CONFIG_REJECTED_PREFIX))
        .map(|report| {
            Problem::new(
                WORKER_CONFIG_REJECTED,
                format!("a worker refused its configuration: {}", report.trim()),
            )
        })
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

    #[test]
    fn a_poison_message_in_a_workers_termination_message_is_a_problem() {
        let pod = |message: &str, last: bool| -> Pod {
            let terminated = serde_json::json!({"terminated": {"exitCode": 1, "message": message}});
            let status = if last {
                serde_json::json!({"name": "worker", "ready": false, "restartCount": 1, "image": "i", "imageID": "",
                                   "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": terminated})
            } else {
                serde_json::json!({"name": "worker", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                                   "state": terminated})
            };
            serde_json::from_value(serde_json::json!({"status": {"containerStatuses": [status]}}))
                .unwrap()
        };
        let p = poison_of(&[pod("PoisonMessage: orders/2/17 (invalid): not JSON", true)]).unwrap();
        assert_eq!(p.reason, POISON_MESSAGE);
        assert!(p.message.contains("orders/2/17"), "{}", p.message);
        assert!(poison_of(&[pod("PoisonMessage: t/0/1 (sink): 500", false)]).is_some());
        assert_eq!(poison_of(&[pod("OOMKilled", true)]), None);
        let rejected = poison_of(&[pod(
            "WorkerConfigRejected: invalid configuration: events.types[0].schema: not a JSON Schema",
            true,
        )])
        .unwrap();
        assert_eq!(rejected.reason, WORKER_CONFIG_REJECTED);
        assert!(
            rejected.message.contains("not a JSON Schema"),
            "{}",
            rejected.message
        );
        assert_eq!(poison_of(&[Pod::default()]), None);
    }
}
