//! What `leadrouter stats` and `leadrouter latency` report, shared by the admin API and the NATS
//! operator service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use serde_json::{json, Value};

use crate::dlq::store::{DlqFilter, DlqStore};
use crate::intake::IntakeState;
use crate::pipeline::PipelineStats;
use crate::telemetry::windows::{CounterWindows, Counters};

/// The end-to-end latency objective the figures are compared with.
pub const E2E_SLO: Duration = Duration::from_secs(2);
/// How often the counters are sampled for windows.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Everything the figures come from; one per service.
pub struct Observed {
    pub pipeline: Option<Arc<PipelineStats>>,
    pub intake: Arc<IntakeState>,
    pub windows: CounterWindows,
    pub js: jetstream::Context,
    pub dlq: DlqStore,
    /// Partitions of `LEADS` (whose consumers hold the queue figures).
    pub partitions: u16,
    /// The edges `LEADS` sources (hub mode), as last polled; empty otherwise.
    pub edges: crate::queue::edges::EdgeBoard,
}

impl Observed {
    pub fn current(&self) -> Counters {
        let mut c = Counters {
            accepted: self.intake.accepted(),
            ..Counters::default()
        };
        if let Some(p) = &self.pipeline {
            c.delivered = p.delivered();
            c.duplicates = p.duplicates();
            (c.sink_ok, c.sink_err) = p.sink_writes();
            c.retries = p.retries();
            c.dead = p.dead().values().sum();
        }
        c
    }

    /// Takes one sample for the windows (the service's sampler task calls this).
    pub fn sample(&self) {
        self.windows.sample_at(SystemTime::now(), self.current());
    }

    async fn queue(&self) -> Value {
        let read = crate::queue::backlog::read(&self.js, self.partitions);
        match tokio::time::timeout(Duration::from_secs(2), read).await {
            Ok(Ok(b)) => json!({
                "pending": b.pending,
                "ack_pending": b.ack_pending,
                "max_ack_pending": b.max_ack_pending,
                "oldest_unacked_s": b.oldest_unacked.map(|d| d.as_secs_f64()),
                "partitions": b.partitions,
            }),
            _ => Value::Null,
        }
    }

    /// The handler consumers' queue figures now (`null` when they cannot be read within 2 s),
    /// for the console's queue chart.
    pub async fn queue_info(&self) -> Value {
        self.queue().await
    }

    /// The `stats` figures over `window`.
    pub async fn stats(&self, window: Duration) -> Value {
        let now = SystemTime::now();
        let w = self.windows.over(now, window, self.current());
        let c = w.counts;
        let secs = w.covered_s.max(1) as f64;
        let ratio = |num: u64, den: u64| {
            if den == 0 {
                Value::Null
            } else {
                json!(num as f64 / den as f64)
            }
        };
        let since = chrono::DateTime::<chrono::Utc>::from(now - window);
        let dlq = match self
            .dlq
            .list(&DlqFilter {
                since: Some(since),
                ..DlqFilter::default()
            })
            .await
        {
            Ok(entries) => {
                let mut by: BTreeMap<String, u64> = BTreeMap::new();
                for e in entries {
                    *by.entry(e.reason).or_default() += 1;
                }
                json!(by)
            }
            Err(_) => Value::Null,
        };
        let mut out = json!({
            "window_s": window.as_secs(),
            "covered_s": w.covered_s,
            "intake": {
                "accepted": c.accepted,
                "rate_per_s": c.accepted as f64 / secs,
            },
            "queue": self.queue().await,
            "deliveries": {
                "delivered": c.delivered,
                "duplicates": c.duplicates,
                "retries": c.retries,
                "dead": c.dead,
            },
            "success_rate": ratio(c.sink_ok, c.sink_ok + c.sink_err),
            "duplicate_rate": ratio(c.duplicates, c.delivered + c.duplicates),
            "dlq_by_reason": dlq,
        });
        let edges = self.edges.snapshot();
        if !edges.is_empty() {
            out["edges"] = json!(edges);
        }
        match &self.pipeline {
            None => out["handlers"] = json!("disabled"),
            Some(p) => {
                let lat = p.latency.percentile(window, 0.95);
                out["e2e_p95_ms"] = json!(lat.latency_ms);
                out["since_start"] = json!({
                    "received": p.received(),
                    "delivered": p.delivered(),
                    "duplicates": p.duplicates(),
                    "retries": p.retries(),
                    "replayed": p.replayed(),
                });
                out["dead_by_reason"] = json!(p.dead());
            }
        }
        out
    }

    /// The `latency` figure: the `percentile` (0-100) of end-to-end latency over `window`.
    pub fn latency(&self, window: Duration, percentile: f64) -> Value {
        let slo_ms = E2E_SLO.as_secs_f64() * 1e3;
        match &self.pipeline {
            None => json!({"handlers": "disabled", "latency_ms": null, "samples": 0}),
            Some(p) => {
                let r = p.latency.percentile(window, percentile / 100.0);
                json!({
                    "window_s": window.as_secs(),
                    "percentile": percentile,
                    "latency_ms": r.latency_ms,
                    "samples": r.samples,
                    "slo_ms": slo_ms,
                    "within_slo": r.latency_ms.map(|v| v <= slo_ms),
                })
            }
        }
    }
}

/// Parses `15m`, `1h`, `30s`; the windows hold 24 hours.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|_| format!("`{s}` is not a duration like 15m, 1h or 30s"))?;
    if d.is_zero() || d > crate::telemetry::windows::HORIZON {
        return Err(format!("`{s}`: the window must be between 1s and 24h"));
    }
    Ok(d)
}

/// Parses a percentile given as 95, 99.9 or p95.
pub fn parse_percentile(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_start_matches(['p', 'P']);
    match t.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a percentile between 0 and 100 (e.g. 95)"
        )),
    }
}
