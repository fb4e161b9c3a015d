//! The overview page's figures: current values and time series over a window, in one JSON
//! answer (`GET /api/overview?window=1h`).
//!
//! Where each series comes from:
//! - intake, deliveries, duplicate short-circuits, sink success: the service's counter windows
//!   (`Observed::windows`, sampled every 10 s), differenced per step;
//! - end-to-end p95: the per-minute latency histograms (`PipelineStats::latency`);
//! - queue depth and ack pending: this listener's own sampler (the `router` consumer's info
//!   every 10 s, kept 24 h), since the counters do not hold them;
//! - success per sink: this service's handler pool's sink counters (the ones
//!   `leadrouter_sink_requests_total` exports), sampled with the queue;
//! - DLQ placements by reason per hour, last 24 h: read from `LEADS_DLQ` itself (survives
//!   restarts), cached for a few seconds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Timelike, Utc};
use serde_json::{json, Value};

use super::stats::{E2E_SLO, SAMPLE_EVERY};
use super::Ctx;
use crate::dlq::store::DlqFilter;
use crate::telemetry::windows::HORIZON;

/// Points per series (fewer when the window is short: a step is at least a minute).
const POINTS: u64 = 60;
const MIN_STEP: u64 = 60;
/// DLQ bars: one per hour, this many hours.
const DLQ_HOURS: i64 = 24;
const DLQ_CACHE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
struct Sample {
    t: u64,
    pending: Option<u64>,
    ack_pending: Option<u64>,
    max_ack_pending: Option<u64>,
    /// Sink -> (ok, not ok), cumulative.
    sinks: BTreeMap<String, (u64, u64)>,
}

#[derive(Default)]
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
    dlq: Mutex<Option<(Instant, Value)>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn take_sample(ctx: &Ctx) -> Sample {
    let q = ctx.state.observed.queue_info().await;
    let n = |k: &str| q.get(k).and_then(Value::as_u64);
    Sample {
        t: unix_now(),
        pending: n("pending"),
        ack_pending: n("ack_pending"),
        max_ack_pending: n("max_ack_pending"),
        sinks: ctx
            .state
            .observed
            .pipeline
            .as_ref()
            .map(|p| p.sinks())
            .unwrap_or_default(),
    }
}

/// Samples the queue and the sink counters every [`SAMPLE_EVERY`] while the listener runs.
pub async fn run_sampler(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = take_sample(&ctx).await;
        let mut ring = ctx.samples.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.push_back(s);
        let horizon = HORIZON.as_secs() + 60;
        while ring
            .front()
            .is_some_and(|f| f.t + horizon < ring.back().map_or(0, |b| b.t))
        {
            ring.pop_front();
        }
    }
}

fn ratio(num: u64, den: u64) -> Value {
    if den == 0 {
        Value::Null
    } else {
        json!(num as f64 / den as f64)
    }
}

/// The newest sample at or before `t`.
fn at_or_before(ring: &VecDeque<Sample>, t: u64) -> Option<&Sample> {
    ring.iter().rev().find(|s| s.t <= t)
}

pub async fn overview(ctx: &Ctx, window: Duration) -> Value {
    let latest = take_sample(ctx).await;
    let mut out = {
        let ring = ctx.samples.ring.lock().unwrap_or_else(|p| p.into_inner());
        figures(ctx, window, &ring, &latest)
    };
    out["dlq_by_hour"] = dlq_by_hour(ctx).await;
    // Hub mode: each edge's link and what waits there (empty otherwise).
    out["edges"] = json!(ctx.state.observed.edges.snapshot());
    out
}

fn figures(ctx: &Ctx, window: Duration, ring: &VecDeque<Sample>, latest: &Sample) -> Value {
    let observed = &ctx.state.observed;
    let now = SystemTime::now();
    let now_s = unix_now();
    let window_s = window.as_secs().max(MIN_STEP);
    let step = (window_s / POINTS).max(MIN_STEP);
    let points = window_s.div_ceil(step);
    let current = observed.current();

    // Bucket k (1 = newest) covers [now - k*step, now - (k-1)*step].
    let mut t = Vec::new();
    let mut intake = Vec::new();
    let mut delivered = Vec::new();
    let mut dup_rate = Vec::new();
    let mut success = Vec::new();
    let mut p95 = Vec::new();
    let mut pending = Vec::new();
    let mut ack_pending = Vec::new();
    let mut sink_series: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    // The sink counters as of `t`: the newest sample at or before it, else (for the bucket
    // the listener started in) the first sample, if it falls before `limit`.
    let sinks_at = |t: u64, limit: u64| -> Option<&BTreeMap<String, (u64, u64)>> {
        if t >= now_s {
            Some(&latest.sinks)
        } else {
            at_or_before(ring, t)
                .or_else(|| ring.front().filter(|f| f.t < limit))
                .map(|s| &s.sinks)
        }
    };
    for k in (1..=points).rev() {
        let end_ago = Duration::from_secs((k - 1) * step);
        let start_ago = Duration::from_secs(k * step);
        let t_end = now - end_ago;
        t.push(json!(t_end
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)));
        // Counters: what the window reaching back to the bucket's start counted, minus what
        // the window reaching back to its end counted. The newest bucket runs to now.
        let a = observed.windows.over(now, start_ago, current);
        let (cb, covered, valid) = if end_ago.is_zero() {
            // Right after start the oldest snapshot may be this very second.
            (Default::default(), a.covered_s.max(1), true)
        } else {
            let b = observed.windows.over(now, end_ago, current);
            let covered = a.covered_s.saturating_sub(b.covered_s);
            (
                b.counts,
                covered,
                covered > 0 && b.covered_s >= end_ago.as_secs(),
            )
        };
        if valid {
            let ca = a.counts;
            let d = |x: u64, y: u64| x.saturating_sub(y);
            let accepted = d(ca.accepted, cb.accepted);
            let deliv = d(ca.delivered, cb.delivered);
            let dups = d(ca.duplicates, cb.duplicates);
            let ok = d(ca.sink_ok, cb.sink_ok);
            let err = d(ca.sink_err, cb.sink_err);
            intake.push(json!(accepted as f64 / covered as f64));
            delivered.push(json!(deliv as f64 / covered as f64));
            dup_rate.push(ratio(dups, deliv + dups));
            success.push(ratio(ok, ok + err));
        } else {
            for v in [&mut intake, &mut delivered, &mut dup_rate, &mut success] {
                v.push(Value::Null);
            }
        }
        p95.push(match &observed.pipeline {
            Some(p) => json!(
                p.latency
                    .percentile_at(t_end, Duration::from_secs(step), 0.95)
                    .latency_ms
            ),
            None => Value::Null,
        });
        // Queue: the newest sample inside the bucket.
        let (from, to) = (
            now_s.saturating_sub(k * step),
            now_s.saturating_sub((k - 1) * step),
        );
        let q = if k == 1 && latest.pending.is_some() {
            Some(latest)
        } else {
            at_or_before(ring, to).filter(|s| s.t > from)
        };
        pending.push(json!(q.and_then(|s| s.pending)));
        ack_pending.push(json!(q.and_then(|s| s.ack_pending)));
        // Sinks: the success ratio between the samples at the bucket's two ends.
        let (s0, s1) = (sinks_at(from, to), sinks_at(to, to + 1));
        for name in latest.sinks.keys() {
            let v = match (s0, s1) {
                (Some(a), Some(b)) => {
                    let (ao, ae) = a.get(name).copied().unwrap_or_default();
                    let (bo, be) = b.get(name).copied().unwrap_or_default();
                    let (ok, err) = (bo.saturating_sub(ao), be.saturating_sub(ae));
                    ratio(ok, ok + err)
                }
                _ => Value::Null,
            };
            sink_series.entry(name.clone()).or_default().push(v);
        }
    }

    // The window's totals.
    let w = observed.windows.over(now, window, current);
    let c = w.counts;
    let secs = w.covered_s.max(1) as f64;
    let base = at_or_before(ring, now_s.saturating_sub(window.as_secs())).or(ring.front());
    let sinks: Vec<Value> = latest
        .sinks
        .iter()
        .map(|(name, (ok, err))| {
            let (bo, be) = base
                .and_then(|s| s.sinks.get(name).copied())
                .unwrap_or_default();
            let (ok, err) = (ok.saturating_sub(bo), err.saturating_sub(be));
            json!({
                "name": name,
                "ok": ok,
                "failed": err,
                "success_rate": ratio(ok, ok + err),
                "series": sink_series.remove(name).unwrap_or_default(),
            })
        })
        .collect();
    let slo_ms = E2E_SLO.as_secs_f64() * 1e3;
    let latency = observed.latency(window, 95.0);

    json!({
        "window_s": window.as_secs(),
        "step_s": step,
        "covered_s": w.covered_s,
        "generated_at": crate::timestamp::format_system(now),
        "handlers": if observed.pipeline.is_some() { "on" } else { "disabled" },
        "slo_ms": slo_ms,
        "now": {
            "intake_per_s": c.accepted as f64 / secs,
            "accepted": c.accepted,
            "delivered": c.delivered,
            "duplicates": c.duplicates,
            "retries": c.retries,
            "dead": c.dead,
            "duplicate_rate": ratio(c.duplicates, c.delivered + c.duplicates),
            "success_rate": ratio(c.sink_ok, c.sink_ok + c.sink_err),
            "e2e_p95_ms": latency.get("latency_ms").cloned().unwrap_or(Value::Null),
            "e2e_samples": latency.get("samples").cloned().unwrap_or(json!(0)),
            "within_slo": latency.get("within_slo").cloned().unwrap_or(Value::Null),
            "queue": {
                "pending": latest.pending,
                "ack_pending": latest.ack_pending,
                "max_ack_pending": latest.max_ack_pending,
            },
        },
        "series": {
            "t": t,
            "intake_per_s": intake,
            "delivered_per_s": delivered,
            "duplicate_rate": dup_rate,
            "success_rate": success,
            "e2e_p95_ms": p95,
            "queue_pending": pending,
            "ack_pending": ack_pending,
        },
        "sinks": sinks,
    })
}

/// DLQ placements per reason per hour over the last [`DLQ_HOURS`] hours, oldest hour first.
async fn dlq_by_hour(ctx: &Ctx) -> Value {
    if let Some((at, v)) = &*ctx.samples.dlq.lock().unwrap_or_else(|p| p.into_inner()) {
        if at.elapsed() < DLQ_CACHE {
            return v.clone();
        }
    }
    let now = Utc::now();
    let this_hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now);
    let first = this_hour - chrono::Duration::hours(DLQ_HOURS - 1);
    let hours: Vec<i64> = (0..DLQ_HOURS)
        .map(|i| (first + chrono::Duration::hours(i)).timestamp_millis())
        .collect();
    let entries = ctx
        .state
        .dlq
        .list(&DlqFilter {
            since: Some(first),
            ..DlqFilter::default()
        })
        .await;
    let v = match entries {
        Ok(entries) => {
            let mut reasons: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for e in &entries {
                let Some(t) = DateTime::parse_from_rfc3339(&e.dead_at).ok() else {
                    continue;
                };
                let i = (t.with_timezone(&Utc) - first).num_hours();
                if (0..DLQ_HOURS).contains(&i) {
                    reasons
                        .entry(e.reason.clone())
                        .or_insert_with(|| vec![0; DLQ_HOURS as usize])[i as usize] += 1;
                }
            }
            json!({"hours": hours, "reasons": reasons, "total": entries.len()})
        }
        Err(e) => {
            json!({"hours": hours, "reasons": {}, "total": null, "error": crate::error_chain::chain(&e)})
        }
    };
    *ctx.samples.dlq.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), v.clone()));
    v
}
