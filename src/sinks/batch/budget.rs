//! A vendor's request budget as the sink sees it: what the documented limits allow, corrected by
//! what the vendor's answers say is left (other apps of the same account spend it too).
//!
//! Two shapes cover the CRMs we write to:
//! - [`RollingWindow`]: N requests per rolling interval (HubSpot's 100 per 10 s). We pace so
//!   that our own calls in the last interval stay under `limit - headroom`, and when the
//!   vendor's `Remaining` header says the account is nearly out, we slow to the rate at which
//!   the window refills;
//! - [`DailyBudget`]: N requests per day or rolling 24 h (HubSpot's daily cap, Salesforce's
//!   `api-usage`). Once it is down to its headroom, calls stop until the reset, with one probe
//!   call every [`PROBE_EVERY`] because the reset time is the account's, not ours.
//!
//! Both keep `headroom` unused on purpose: the account's other integrations share the budget,
//! and a router that spends it to the last request makes them fail instead.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::sinks::SinkBuildError;

/// While a daily budget is spent: how often one call is let through to see whether the vendor
/// has reset it (HubSpot resets at midnight in the account's time zone, Salesforce's window
/// rolls), so the router does not sit idle for hours after the budget came back.
pub const PROBE_EVERY: Duration = Duration::from_secs(15 * 60);

/// Checks a paced sink's `daily_limit` and `headroom` keys; returns them.
pub(crate) fn daily_keys(
    index: usize,
    daily_limit: u64,
    headroom: f64,
) -> Result<(u64, f64), SinkBuildError> {
    if daily_limit == 0 {
        return Err(SinkBuildError::new(
            index,
            "daily_limit",
            "must be at least 1",
        ));
    }
    if !(0.0..=0.5).contains(&headroom) {
        return Err(SinkBuildError::new(
            index,
            "headroom",
            "must be 0.0-0.5 (the share of the budget left for the account's other apps)",
        ));
    }
    Ok((daily_limit, headroom))
}

/// When a call may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Now; the call is counted.
    Go,
    /// Not before this instant (a short wait: the rolling window refills).
    At(Instant),
    /// The budget is spent for a long time: hand the leads back for this long.
    Spent(Duration),
}

/// `limit` requests per rolling `interval`.
#[derive(Debug)]
pub struct RollingWindow {
    limit: u32,
    interval: Duration,
    headroom: u32,
    /// Our own calls within the last `interval`, oldest first.
    sent: VecDeque<Instant>,
    /// The vendor's last `Remaining` figure and when we read it.
    remote: Option<(u32, Instant)>,
    /// After a throttle answer: nothing before this.
    blocked_until: Option<Instant>,
}

impl RollingWindow {
    /// `headroom` is the share of `limit` left unused (rounded up, at least one request when
    /// the share is not zero).
    pub fn new(limit: u32, interval: Duration, headroom: f64) -> RollingWindow {
        RollingWindow {
            limit,
            interval,
            headroom: headroom_of(limit as u64, headroom) as u32,
            sent: VecDeque::new(),
            remote: None,
            blocked_until: None,
        }
    }

    /// The calls this window lets us make: the limit minus the headroom, never zero.
    pub fn usable(&self) -> u32 {
        self.limit.saturating_sub(self.headroom).max(1)
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Requests left in the window as far as we know: the vendor's last figure minus our calls
    /// since, or the limit minus our own calls.
    pub fn remaining(&self, now: Instant) -> u32 {
        let ours = self.calls_in_window(now);
        match self.remote {
            Some((left, at)) => {
                let since = self.sent.iter().filter(|t| **t > at).count() as u32;
                left.saturating_sub(since)
            }
            None => self.limit.saturating_sub(ours),
        }
    }

    fn calls_in_window(&self, now: Instant) -> u32 {
        self.sent
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.interval)
            .count() as u32
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(t) = self.sent.front() {
            if now.saturating_duration_since(*t) >= self.interval {
                self.sent.pop_front();
            } else {
                break;
            }
        }
    }

    /// When the next call may go, without counting it.
    pub fn next_at(&mut self, now: Instant) -> Option<Instant> {
        self.forget_old(now);
        let mut at: Option<Instant> = self.blocked_until.filter(|b| *b > now);
        // Our own pace: the oldest of our calls must leave the window first.
        if self.sent.len() as u32 >= self.usable() {
            let idx = self.sent.len() - self.usable() as usize;
            let free = self.sent[idx] + self.interval;
            at = Some(at.map_or(free, |a| a.max(free)));
        }
        // The account's pace: nearly out (other apps spend it too), so go no faster than the
        // window refills: one request per interval/limit after the last one.
        if let Some((left, seen)) = self.remote {
            let since = self.sent.iter().filter(|t| **t > seen).count() as u32;
            if left.saturating_sub(since) <= self.headroom {
                let step = self.interval / self.limit.max(1);
                let last = self.sent.back().copied().unwrap_or(seen).max(seen);
                let free = last + step;
                if free > now {
                    at = Some(at.map_or(free, |a| a.max(free)));
                }
            }
        }
        at.filter(|a| *a > now)
    }

    /// Counts a call made now.
    pub fn record(&mut self, now: Instant) {
        self.sent.push_back(now);
    }

    /// The vendor's own figures from an answer (`Remaining`, and `Max`/`Interval` when sent:
    /// they tell the tier, which the config may have guessed wrong).
    pub fn observe(
        &mut self,
        remaining: u32,
        max: Option<u32>,
        interval: Option<Duration>,
        now: Instant,
    ) {
        self.remote = Some((remaining, now));
        if let Some(max) = max.filter(|m| *m > 0 && *m != self.limit) {
            let share = self.headroom as f64 / self.limit.max(1) as f64;
            self.limit = max;
            self.headroom = headroom_of(max as u64, share) as u32;
        }
        if let Some(iv) = interval.filter(|i| !i.is_zero()) {
            self.interval = iv;
        }
    }

    /// The vendor throttled us anyway: nothing more until `wait` has passed.
    pub fn throttled(&mut self, wait: Duration, now: Instant) {
        self.blocked_until = Some(now + wait);
        self.remote = Some((0, now));
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// `limit` requests per day (or rolling 24 h); `used` as the vendor last reported it plus our
/// calls since.
#[derive(Debug)]
pub struct DailyBudget {
    limit: u64,
    headroom: u64,
    share: f64,
    used: u64,
    /// Spent: no call before this (then one probe).
    spent_until: Option<Instant>,
}

impl DailyBudget {
    pub fn new(limit: u64, headroom: f64) -> DailyBudget {
        DailyBudget {
            limit,
            headroom: headroom_of(limit, headroom),
            share: headroom,
            used: 0,
            spent_until: None,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// Whether a call may go now; when not, how long the leads should wait.
    pub fn check(&mut self, now: Instant, wall: SystemTime) -> Option<Duration> {
        if let Some(until) = self.spent_until {
            if until > now {
                return Some(until - now);
            }
            // The probe: one call goes; its answer tells whether the budget is back.
            self.spent_until = None;
            return None;
        }
        if self.remaining() <= self.headroom {
            let wait = PROBE_EVERY.min(until_utc_midnight(wall));
            self.spent_until = Some(now + wait);
            return Some(wait);
        }
        None
    }

    pub fn record(&mut self) {
        self.used = self.used.saturating_add(1);
    }

    /// The vendor's figures: `used` of `limit` (Salesforce's `api-usage=N/M`).
    pub fn observe_used(&mut self, used: u64, limit: u64) {
        if limit > 0 && limit != self.limit {
            self.limit = limit;
            self.headroom = headroom_of(limit, self.share);
        }
        self.used = used;
        if self.remaining() > self.headroom {
            self.spent_until = None;
        }
    }

    /// The vendor's figures: `remaining` of `limit` (HubSpot's `-Daily-Remaining`).
    pub fn observe_remaining(&mut self, remaining: u64, limit: Option<u64>) {
        let limit = limit.filter(|l| *l > 0).unwrap_or(self.limit);
        self.observe_used(limit.saturating_sub(remaining), limit);
    }

    /// The vendor says the budget is spent (a daily 429, a 403 `REQUEST_LIMIT_EXCEEDED`).
    pub fn exhausted(&mut self, now: Instant, wall: SystemTime) -> Duration {
        self.used = self.limit;
        let wait = PROBE_EVERY.min(until_utc_midnight(wall));
        self.spent_until = Some(now + wait);
        wait
    }
}

fn headroom_of(limit: u64, share: f64) -> u64 {
    if share <= 0.0 || limit == 0 {
        return 0;
    }
    ((limit as f64 * share).ceil() as u64).clamp(1, limit.saturating_sub(1).max(1))
}

/// Time to the next midnight UTC (at least a second): the earliest a "daily" budget resets
/// when the vendor does not say.
fn until_utc_midnight(wall: SystemTime) -> Duration {
    let secs = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Duration::from_secs((86_400 - secs % 86_400).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_paces_below_the_limit_minus_headroom() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(10, Duration::from_secs(10), 0.2);
        assert_eq!(w.usable(), 8);
        for i in 0..8 {
            assert_eq!(w.next_at(t0), None, "call {i} may go");
            w.record(t0);
        }
        // The ninth waits for the first call to leave the window.
        assert_eq!(w.next_at(t0), Some(t0 + Duration::from_secs(10)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(w.next_at(later), None);
    }

    #[test]
    fn a_nearly_spent_account_is_paced_at_the_refill_rate() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(100, Duration::from_secs(10), 0.05);
        // Other apps used most of it: 3 left, which is within our headroom of 5.
        w.observe(3, Some(100), Some(Duration::from_secs(10)), t0);
        let at = w.next_at(t0 + Duration::from_millis(1));
        assert_eq!(at, Some(t0 + Duration::from_millis(100)));
        // With plenty left, no wait.
        w.observe(80, None, None, t0);
        assert_eq!(w.next_at(t0), None);
        assert_eq!(w.remaining(t0), 80);
    }

    #[test]
    fn the_vendor_tier_replaces_the_configured_one() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(100, Duration::from_secs(10), 0.05);
        w.observe(150, Some(190), Some(Duration::from_secs(10)), t0);
        assert_eq!(w.limit(), 190);
        assert_eq!(w.usable(), 180);
    }

    #[test]
    fn a_throttle_blocks_for_its_wait() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(100, Duration::from_secs(10), 0.05);
        w.throttled(Duration::from_secs(10), t0);
        assert_eq!(w.next_at(t0), Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_spent_daily_budget_waits_then_probes_once() {
        let t0 = Instant::now();
        let noon = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 20_000 + 43_200);
        let mut d = DailyBudget::new(1000, 0.05);
        assert_eq!(d.check(t0, noon), None);
        d.observe_used(960, 1000);
        let wait = d.check(t0, noon).expect("within the headroom: spent");
        assert_eq!(wait, PROBE_EVERY);
        assert_eq!(
            d.check(t0 + Duration::from_secs(1), noon),
            Some(wait - Duration::from_secs(1))
        );
        // After the wait one probe goes, even though our figure says spent.
        assert_eq!(d.check(t0 + wait, noon), None);
        // The probe's answer says the budget was reset.
        d.observe_remaining(1000, Some(1000));
        assert_eq!(d.check(t0 + wait, noon), None);
    }

    #[test]
    fn midnight_bounds_the_daily_wait() {
        let t0 = Instant::now();
        let late = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400 * 20_000 + 86_400 - 60);
        let mut d = DailyBudget::new(1000, 0.0);
        assert_eq!(d.exhausted(t0, late), Duration::from_secs(60));
    }
}
