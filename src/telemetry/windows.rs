//! Rolling windows behind `leadrouter latency` and `leadrouter stats`: what happened over the
//! last N minutes, without a Prometheus server.
//!
//! Latency: one log-bucketed histogram per minute for the last 24 hours (buckets 10% wide, so a
//! percentile is exact to within 10%), allocated only for minutes that saw deliveries. Counters:
//! snapshots of the process's cumulative counters, one per sampling tick, kept for 24 hours; a
//! window's figure is the difference between now and the snapshot at its start.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How far back windows reach.
pub const HORIZON: Duration = Duration::from_secs(24 * 3600);
const MINUTES: usize = 24 * 60;
/// Smallest bucket bound (ms) and growth per bucket.
const BASE_MS: f64 = 0.05;
const GROWTH: f64 = 1.1;
/// 0.05 ms * 1.1^192 is about 4.5 hours: everything a lead could plausibly take.
const BUCKETS: usize = 192;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bucket_of(ms: f64) -> usize {
    if ms <= BASE_MS {
        return 0;
    }
    let i = ((ms / BASE_MS).ln() / GROWTH.ln()).ceil() as usize;
    i.min(BUCKETS - 1)
}

/// The upper bound (ms) of bucket `i`: what a percentile in it is reported as.
fn bucket_upper(i: usize) -> f64 {
    BASE_MS * GROWTH.powi(i as i32)
}

struct Minute {
    minute: u64,
    counts: Box<[u32; BUCKETS]>,
    total: u64,
}

/// End-to-end latency per minute.
#[derive(Default)]
pub struct LatencyWindows {
    minutes: Mutex<VecDeque<Minute>>,
}

impl std::fmt::Debug for LatencyWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LatencyWindows")
    }
}

/// A percentile over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentile {
    /// Milliseconds; `None` when the window saw no deliveries.
    pub latency_ms: Option<f64>,
    pub samples: u64,
}

impl LatencyWindows {
    pub fn record(&self, latency: Duration) {
        self.record_at(SystemTime::now(), latency);
    }

    pub fn record_at(&self, at: SystemTime, latency: Duration) {
        let minute = unix_secs(at) / 60;
        let b = bucket_of(latency.as_secs_f64() * 1e3);
        let mut m = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        match m.back_mut() {
            Some(last) if last.minute == minute => {
                last.counts[b] += 1;
                last.total += 1;
            }
            // A late sample (clock step, slow thread) goes into its own minute if still held.
            Some(last) if last.minute > minute => {
                if let Some(slot) = m.iter_mut().rev().find(|s| s.minute == minute) {
                    slot.counts[b] += 1;
                    slot.total += 1;
                }
            }
            _ => {
                let mut counts = Box::new([0u32; BUCKETS]);
                counts[b] = 1;
                m.push_back(Minute {
                    minute,
                    counts,
                    total: 1,
                });
                while m.len() > MINUTES
                    || m.front()
                        .is_some_and(|f| f.minute + (MINUTES as u64) < minute)
                {
                    m.pop_front();
                }
            }
        }
    }

    /// The `p` (0..=1) percentile over the last `window` (whole minutes, the current one
    /// included).
    pub fn percentile(&self, window: Duration, p: f64) -> Percentile {
        self.percentile_at(SystemTime::now(), window, p)
    }

    pub fn percentile_at(&self, now: SystemTime, window: Duration, p: f64) -> Percentile {
        let now_min = unix_secs(now) / 60;
        let span = window.as_secs().div_ceil(60).max(1);
        let from = now_min.saturating_sub(span - 1);
        let m = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        let mut sum = [0u64; BUCKETS];
        let mut total = 0u64;
        for slot in m.iter().filter(|s| s.minute >= from && s.minute <= now_min) {
            for (acc, c) in sum.iter_mut().zip(slot.counts.iter()) {
                *acc += u64::from(*c);
            }
            total += slot.total;
        }
        if total == 0 {
            return Percentile {
                latency_ms: None,
                samples: 0,
            };
        }
        let rank = ((total as f64) * p.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in sum.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Percentile {
                    latency_ms: Some(bucket_upper(i)),
                    samples: total,
                };
            }
        }
        Percentile {
            latency_ms: Some(bucket_upper(BUCKETS - 1)),
            samples: total,
        }
    }
}

/// The cumulative counters a window is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counters {
    pub accepted: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub sink_ok: u64,
    pub sink_err: u64,
    pub dead: u64,
    pub retries: u64,
}

impl Counters {
    fn minus(&self, o: &Counters) -> Counters {
        Counters {
            accepted: self.accepted.saturating_sub(o.accepted),
            delivered: self.delivered.saturating_sub(o.delivered),
            duplicates: self.duplicates.saturating_sub(o.duplicates),
            sink_ok: self.sink_ok.saturating_sub(o.sink_ok),
            sink_err: self.sink_err.saturating_sub(o.sink_err),
            dead: self.dead.saturating_sub(o.dead),
            retries: self.retries.saturating_sub(o.retries),
        }
    }
}

/// What happened over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowCounts {
    /// Seconds the figures actually cover (less than asked for right after start).
    pub covered_s: u64,
    pub counts: Counters,
}

/// Snapshots of cumulative counters.
#[derive(Default)]
pub struct CounterWindows {
    snaps: Mutex<VecDeque<(u64, Counters)>>,
}

impl CounterWindows {
    /// Records the counters as of `at` (the sampler calls this every few seconds).
    pub fn sample_at(&self, at: SystemTime, c: Counters) {
        let t = unix_secs(at);
        let mut s = self.snaps.lock().unwrap_or_else(|p| p.into_inner());
        s.push_back((t, c));
        while s
            .front()
            .is_some_and(|(ft, _)| ft + HORIZON.as_secs() + 60 < t)
        {
            s.pop_front();
        }
    }

    /// Counts over `window`, ending at `current` (the live counters, read now).
    pub fn over(&self, now: SystemTime, window: Duration, current: Counters) -> WindowCounts {
        let t = unix_secs(now);
        let start = t.saturating_sub(window.as_secs());
        let s = self.snaps.lock().unwrap_or_else(|p| p.into_inner());
        // The newest snapshot at or before the window's start, else the oldest we have.
        let base = s
            .iter()
            .rev()
            .find(|(st, _)| *st <= start)
            .or_else(|| s.front())
            .copied();
        match base {
            Some((bt, bc)) => WindowCounts {
                covered_s: t.saturating_sub(bt),
                counts: current.minus(&bc),
            },
            None => WindowCounts {
                covered_s: 0,
                counts: Counters::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        let w = LatencyWindows::default();
        let t0 = 1_800_000_000;
        for i in 1..=100u64 {
            w.record_at(at(t0), Duration::from_millis(i));
        }
        let p95 = w.percentile_at(at(t0), Duration::from_secs(900), 0.95);
        assert_eq!(p95.samples, 100);
        let v = p95.latency_ms.unwrap();
        assert!((95.0..=95.0 * GROWTH).contains(&v), "{v}");
        let p50 = w
            .percentile_at(at(t0), Duration::from_secs(900), 0.5)
            .latency_ms
            .unwrap();
        assert!((50.0..=50.0 * GROWTH).contains(&p50), "{p50}");
    }

    #[test]
    fn old_minutes_fall_out_of_short_windows() {
        let w = LatencyWindows::default();
        // A whole minute (1_800_000_000 is one), so +3600 s lands in a fresh one.
        let t0 = 1_800_000_000;
        w.record_at(at(t0), Duration::from_secs(10));
        w.record_at(at(t0 + 3600), Duration::from_millis(5));
        let now = at(t0 + 3600);
        let last15 = w.percentile_at(now, Duration::from_secs(900), 0.99);
        assert_eq!(last15.samples, 1);
        assert!(last15.latency_ms.unwrap() < 6.0);
        let last2h = w.percentile_at(now, Duration::from_secs(7200), 0.99);
        assert_eq!(last2h.samples, 2);
        assert!(last2h.latency_ms.unwrap() >= 10_000.0);
        let empty = w.percentile_at(at(t0 + 90_000), Duration::from_secs(900), 0.95);
        assert_eq!(
            empty,
            Percentile {
                latency_ms: None,
                samples: 0
            }
        );
    }

    #[test]
    fn counter_windows_difference_against_the_window_start() {
        let c = CounterWindows::default();
        let t0 = 1_800_000_000;
        let snap = |n| Counters {
            accepted: n,
            delivered: n,
            ..Counters::default()
        };
        for i in 0..=60u64 {
            c.sample_at(at(t0 + i * 10), snap(i * 100));
        }
        let now = at(t0 + 600);
        let w = c.over(now, Duration::from_secs(300), snap(6000));
        assert_eq!(w.covered_s, 300);
        assert_eq!(w.counts.accepted, 3000);
        // Asked for more than we have: what we have, and how long it covers.
        let w = c.over(now, Duration::from_secs(3600), snap(6000));
        assert_eq!((w.covered_s, w.counts.accepted), (600, 6000));
    }
}
