//! Retry policy: up to `max_attempts` attempts per record (the first included), waiting an
//! exponentially growing, jittered delay between them (backon's exponential backoff: the wait
//! doubles from `initial` up to `max`, plus a random jitter of up to the wait itself).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How often and how patiently a failed delivery is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per record, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial: Duration,
    /// Longest wait between two attempts (before jitter).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The waits between attempts: `max_attempts - 1` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build()
    }

    /// The wait before the next attempt: the backoff's, or longer when the other side asked
    /// for more (`retry_after`, e.g. an HTTP `Retry-After`), but never longer than `max`.
    pub fn wait(&self, backoff: Duration, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(asked) => backoff.max(asked.min(self.max)),
            None => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_with_bounded_jitter_and_stop_after_max_attempts() {
        let policy = RetryPolicy {
            max_attempts: 6,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let delays: Vec<Duration> = policy.delays().collect();
        assert_eq!(delays.len(), 5, "max_attempts - 1 waits");
        let floors = [100u64, 200, 400, 800, 800];
        for (d, floor) in delays.iter().zip(floors) {
            let ms = d.as_millis() as u64;
            assert!(
                ms >= floor && ms <= 2 * floor,
                "{ms} ms not in [{floor}, {}]",
                2 * floor
            );
        }
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy
        };
        assert_eq!(once.delays().count(), 0);
    }

    #[test]
    fn a_retry_after_lengthens_the_wait_up_to_the_longest_backoff() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        };
        let ms = Duration::from_millis;
        assert_eq!(policy.wait(ms(150), None), ms(150));
        assert_eq!(policy.wait(ms(150), Some(ms(2_000))), ms(2_000));
        assert_eq!(policy.wait(ms(150), Some(ms(10))), ms(150), "never shorter");
        assert_eq!(
            policy.wait(ms(150), Some(Duration::from_secs(3_600))),
            Duration::from_secs(30),
            "capped at the longest backoff"
        );
    }
}
