//! How a transaction is retried after a conflict: full-jitter exponential back-off within a
//! budget of attempts and time, the way FoundationDB's `on_error` backs off.

use std::time::Duration;

use rand::Rng;

/// The retry budget of [`crate::Client::transact`].
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// No new attempt starts after this much time.
    pub max_elapsed: Duration,
    /// Back-off before the second attempt; doubles each time, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 20,
            max_elapsed: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt` (2 for the first retry): uniformly random up to
    /// the exponential ceiling, so contenders spread out instead of colliding again.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(2).min(30);
        let ceiling = self.initial_backoff.saturating_mul(1u32 << exp).min(self.max_backoff);
        let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_its_ceiling() {
        let p = RetryPolicy::default();
        for attempt in 2..40 {
            let ceiling = p.initial_backoff.saturating_mul(1 << (attempt - 2).min(30)).min(p.max_backoff);
            assert!(p.backoff(attempt) <= ceiling);
        }
        assert!(p.backoff(40) <= p.max_backoff);
    }
}
