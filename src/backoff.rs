//! Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
//! Jitter"): spreading retries over the whole window is what lets a recovering partner breathe.
//! The one backoff of the crate: sink retries ([`Backoff::delay`] per delivery attempt) and
//! every reconnect loop ([`Retries`]: a consumer that cannot pull yet, the membership bucket,
//! the embedded nats-server's restarts, an import's unacknowledged publishes).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling for `attempt` (1-based): min(cap, base * 2^(attempt-1)).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// A uniformly random delay in [0, ceiling], never shorter than the sink's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            let ms = rand::rng().random_range(0..=ceiling.as_millis() as u64);
            Duration::from_millis(ms)
        };
        match retry_after {
            Some(ra) if ra > jittered => ra,
            _ => jittered,
        }
    }
}

/// `wait` plus up to a tenth more: a wait that many callers got at once (a vendor's budget
/// returning at one instant) does not end for all of them at once.
pub fn spread(wait: Duration) -> Duration {
    let extra = wait.as_millis() as u64 / 10;
    if extra == 0 {
        return wait;
    }
    wait + Duration::from_millis(rand::rng().random_range(0..=extra))
}

/// One retry loop's state: failures in a row, and the delay before the next attempt. Several
/// routers that lost the same NATS at once come back spread out, not in lockstep.
#[derive(Debug, Clone)]
pub struct Retries {
    backoff: Backoff,
    failures: u32,
}

impl Retries {
    pub fn new(base: Duration, cap: Duration) -> Retries {
        Retries {
            backoff: Backoff { base, cap },
            failures: 0,
        }
    }

    /// Books one more failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures, None)
    }

    /// The next failure starts from the base again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(60), Duration::from_secs(1));
    }

    #[test]
    fn delay_is_jittered_within_ceiling_and_respects_retry_after() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        };
        let delays: Vec<_> = (0..200).map(|_| b.delay(3, None)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 20, "jitter spreads the delays");
        for _ in 0..50 {
            assert!(b.delay(1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        }
    }

    #[test]
    fn retries_grow_with_failures_and_start_over_after_a_success() {
        let mut r = Retries::new(Duration::from_millis(100), Duration::from_secs(1));
        for n in 1..=6u32 {
            let d = r.failed();
            let ceiling = Duration::from_millis(100 * 2u64.pow(n - 1)).min(Duration::from_secs(1));
            assert!(d <= ceiling, "failure {n}: {d:?} > {ceiling:?}");
        }
        assert_eq!(r.failures(), 6);
        r.succeeded();
        assert_eq!(r.failures(), 0);
        assert!(r.failed() <= Duration::from_millis(100));
    }
}
