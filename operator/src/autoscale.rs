//! The lag autoscaler: a pure decision from the measured lag, the bounds and the time of the
//! last change. Scaling up happens at once; scaling down only once `cooldown` has passed since
//! the last change, so that a lag that drains as soon as a replica joins does not flap.
//! Replicas never exceed the partitions the consumer group reads (more would sit idle).
//!
//! Lag that more replicas cannot drain does not count: the caller leaves out the partitions
//! whose worker stopped on a poison record, and while the workers are stalled (one
//! crash-loops, is stuck on a record, or stopped on a refused configuration) the autoscaler
//! never adds replicas: a crash-looping
//! group would otherwise grow to the partition count (KEDA issue 3904) and drain nothing.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// The inputs of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// The replicas the Deployment runs now.
    pub current: i32,
    /// Measured total lag (records not yet committed); `None`: not measured, keep `current`.
    pub lag: Option<i64>,
    /// Lag per replica.
    pub threshold: i64,
    pub min: i32,
    pub max: i32,
    /// Partitions of the consumed topics; `None`: unknown (then only `max` bounds).
    pub partitions: Option<i32>,
    /// When replicas last changed.
    pub last_scale: Option<Timestamp>,
    /// The workers are stalled ([`crate::status::Workers::stalled`]): no scale-up.
    pub stalled: bool,
    pub now: Timestamp,
    pub cooldown: Duration,
}

/// The replicas to run.
pub fn decide(i: &Inputs) -> i32 {
    let upper = match i.partitions {
        Some(p) => i.max.min(p.max(1)),
        None => i.max,
    };
    let lower = i.min.min(upper);
    let Some(lag) = i.lag else {
        return i.current.clamp(lower, upper);
    };
    let threshold = i.threshold.max(1);
    let wanted = (lag.max(0) + threshold - 1) / threshold;
    let mut target = i32::try_from(wanted)
        .unwrap_or(i32::MAX)
        .clamp(lower, upper);
    if i.stalled && target > i.current {
        target = i.current.clamp(lower, upper);
    }
    if target < i.current {
        let cooled = match i.last_scale {
            None => true,
            Some(t) => {
                let since = i.now.duration_since(t);
                since.as_secs() >= 0 && since.unsigned_abs() >= i.cooldown
            }
        };
        // Out of bounds (min/max or partitions changed) corrects at once.
        if !cooled && i.current <= upper {
            return i.current;
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(current: i32, lag: i64) -> Inputs {
        Inputs {
            current,
            lag: Some(lag),
            threshold: 100,
            min: 1,
            max: 10,
            partitions: Some(4),
            last_scale: Some(Timestamp::from_second(1000).unwrap()),
            stalled: false,
            now: Timestamp::from_second(1010).unwrap(),
            cooldown: Duration::from_secs(60),
        }
    }

    #[test]
    fn lag_above_the_threshold_adds_replicas_at_once() {
        assert_eq!(decide(&inputs(1, 250)), 3);
        assert_eq!(decide(&inputs(1, 100)), 1);
        assert_eq!(decide(&inputs(1, 101)), 2);
    }

    #[test]
    fn replicas_never_exceed_the_partition_count() {
        assert_eq!(decide(&inputs(1, 1_000_000)), 4);
        let mut i = inputs(1, 1_000_000);
        i.partitions = None;
        assert_eq!(decide(&i), 10);
        // Shrunk bounds correct at once, cooldown or not.
        assert_eq!(decide(&inputs(8, 1_000_000)), 4);
    }

    #[test]
    fn scaling_down_waits_for_the_cooldown() {
        assert_eq!(decide(&inputs(3, 0)), 3);
        let mut i = inputs(3, 0);
        i.now = Timestamp::from_second(1060).unwrap();
        assert_eq!(decide(&i), 1);
    }

    #[test]
    fn unmeasured_lag_keeps_the_current_replicas_within_bounds() {
        let mut i = inputs(3, 0);
        i.lag = None;
        assert_eq!(decide(&i), 3);
        i.current = 0;
        assert_eq!(decide(&i), 1);
    }

    #[test]
    fn stalled_workers_are_never_scaled_up_but_still_down() {
        let mut i = inputs(1, 1_000_000);
        i.stalled = true;
        assert_eq!(decide(&i), 1);
        // Below the minimum is still corrected.
        i.current = 0;
        assert_eq!(decide(&i), 1);
        // Scaling down on a drained lag goes on after the cooldown.
        let mut i = inputs(3, 0);
        i.stalled = true;
        i.now = Timestamp::from_second(1060).unwrap();
        assert_eq!(decide(&i), 1);
    }

    #[test]
    fn no_committed_lag_runs_the_minimum() {
        let mut i = inputs(1, 0);
        i.min = 2;
        assert_eq!(decide(&i), 2);
    }
}
