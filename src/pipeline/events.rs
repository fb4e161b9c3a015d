//! The pipeline's internal events, after Vector's `internal_events`: one struct per thing that
//! happens to a lead, and one [`Emit::emit`] that counts it (the pool's counters, which
//! `/metrics` exports), times it, logs it and wakes whoever awaits the figures. A handler
//! records an outcome with one `emit` call, so the metric, the log line and the console's
//! figure cannot drift apart.
//!
//! The log lines keep the targets they had when they were written inline (log filters and
//! dashboards select on `target`), hence the explicit `target:` on each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::schema::SchemaError;
use super::PipelineStats;
use crate::dlq::{DlqError, Reason};
use crate::error_chain::chain;
use crate::sinks::SinkError;
use crate::telemetry::metrics::{metrics, replay_label, retry};

const HANDLER: &str = "leadrouter::pipeline::handler";
const DISPATCH: &str = "leadrouter::pipeline::dispatch";
const CRASH_NET: &str = "leadrouter::pipeline::crash_net";

/// Records one event: its counter, its stage timing, its log line, its progress bump.
pub trait Emit {
    fn emit(self, stats: &PipelineStats);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn count_retry(stats: &PipelineStats, reason: &'static str) {
    stats.counters().retries.with_label_values(&[reason]).inc();
}

/// A message handed to a handler (first delivery or redelivery).
pub struct LeadReceived;

impl Emit for LeadReceived {
    fn emit(self, stats: &PipelineStats) {
        stats.count_received();
        stats.bump();
    }
}

/// The dedupe check and the claim are done; this delivery holds the lead.
pub struct LeadClaimed {
    pub took: Duration,
}

impl Emit for LeadClaimed {
    fn emit(self, _: &PipelineStats) {
        metrics().stage("claim", "", self.took);
    }
}

/// The lead matches its schema.
pub struct LeadValidated {
    pub took: Duration,
}

impl Emit for LeadValidated {
    fn emit(self, _: &PipelineStats) {
        metrics().stage("validate", "", self.took);
        tracing::info!(target: HANDLER, stage = "validate", outcome = "ok", duration_ms = ms(self.took));
    }
}

/// The lead does not match its schema (or names none we know); it goes to the DLQ next.
pub struct LeadInvalid<'a> {
    pub error: &'a SchemaError,
    pub took: Duration,
}

impl Emit for LeadInvalid<'_> {
    fn emit(self, _: &PipelineStats) {
        metrics().stage("validate", "", self.took);
        // The error names the failing field and rule, never its value.
        tracing::info!(target: HANDLER, stage = "validate", outcome = "invalid", error = %chain(self.error), duration_ms = ms(self.took));
    }
}

/// Enrichment ran; `flags` are what it could not normalise.
pub struct LeadEnriched<'a> {
    pub flags: &'a [&'static str],
    pub took: Duration,
}

impl Emit for LeadEnriched<'_> {
    fn emit(self, _: &PipelineStats) {
        metrics().stage("enrich", "", self.took);
        tracing::info!(target: HANDLER, stage = "enrich", outcome = "ok", flags = ?self.flags, duration_ms = ms(self.took));
    }
}

/// A newer event of the lead was already written: upsert sinks skip this one.
pub struct LeadSuperseded {
    pub by: Option<u64>,
}

impl Emit for LeadSuperseded {
    fn emit(self, _: &PipelineStats) {
        tracing::info!(
            target: HANDLER,
            stage = "fence",
            outcome = "superseded",
            superseded_by = self.by,
            "a newer event of this lead was already written; upsert sinks skip this one"
        );
    }
}

/// One sink confirmed the lead.
pub struct SinkWritten<'a> {
    pub sink: &'a str,
    pub replay: bool,
    pub took: Duration,
}

impl Emit for SinkWritten<'_> {
    fn emit(self, stats: &PipelineStats) {
        stats
            .counters()
            .sink_requests
            .with_label_values(&[self.sink, "ok", "none", replay_label(self.replay)])
            .inc();
        metrics().stage("sink", self.sink, self.took);
        tracing::info!(target: HANDLER, stage = "sink", sink = %self.sink, outcome = "ok", duration_ms = ms(self.took));
        stats.bump();
    }
}

/// One sink turned the lead away: `failed` (transient, retried) or `rejected` (permanent).
pub struct SinkWriteFailed<'a> {
    pub sink: &'a str,
    pub error: &'a SinkError,
    pub replay: bool,
    pub took: Duration,
}

impl Emit for SinkWriteFailed<'_> {
    fn emit(self, stats: &PipelineStats) {
        let outcome = if self.error.is_permanent() {
            "rejected"
        } else {
            "failed"
        };
        let class = self.error.class();
        stats
            .counters()
            .sink_requests
            .with_label_values(&[self.sink, outcome, class, replay_label(self.replay)])
            .inc();
        metrics().stage("sink", self.sink, self.took);
        // The sink's words (often echoing the record) go to the log: the log writer masks any
        // personal data in them.
        tracing::info!(target: HANDLER, stage = "sink", sink = %self.sink, outcome, class, error = %chain(self.error), duration_ms = ms(self.took));
        stats.bump();
    }
}

/// A sink failed transiently: the lead is NAKed with `delay` for another attempt.
pub struct LeadRetried {
    pub delay: Duration,
    /// Since the delivery started.
    pub took: Duration,
    /// Only a vendor's spent budget stood in the way: no attempt was spent.
    pub throttled: bool,
}

impl Emit for LeadRetried {
    fn emit(self, stats: &PipelineStats) {
        let reason = if self.throttled {
            retry::THROTTLED
        } else {
            retry::SINK
        };
        count_retry(stats, reason);
        tracing::info!(
            target: HANDLER,
            stage = "handle",
            outcome = "retry",
            reason,
            delay_ms = self.delay.as_millis() as u64,
            duration_ms = ms(self.took)
        );
        stats.bump();
    }
}

/// Who holds a lead this delivery has to wait for.
#[derive(Debug, Clone, Copy)]
pub enum Holder {
    /// Another delivery of the same lead holds the idempotency claim.
    Claim,
    /// Another router is inside the lead's write fence.
    Fence,
}

/// The lead is busy elsewhere: NAKed for `wait`, no attempt spent.
pub struct LeadBusy {
    pub holder: Holder,
    pub wait: Duration,
}

impl Emit for LeadBusy {
    fn emit(self, stats: &PipelineStats) {
        count_retry(stats, retry::CLAIM_BUSY);
        let wait = self.wait;
        match self.holder {
            Holder::Claim => {
                tracing::debug!(target: HANDLER, ?wait, "another delivery holds the lead")
            }
            Holder::Fence => {
                tracing::debug!(target: HANDLER, ?wait, "another router is writing this lead")
            }
        }
        stats.bump();
    }
}

/// One WARN per this long for a store outage, however many leads hit it (a three-second
/// election would otherwise print thousands of identical lines).
const OUTAGE_LOG_EVERY_MS: u64 = 10_000;
static LAST_OUTAGE_WARN_MS: AtomicU64 = AtomicU64::new(0);

/// A NATS KV store (`store`) could not be read or written: NAKed, no attempt spent.
pub struct StoreUnavailable<'a> {
    pub store: &'static str,
    pub error: &'a dyn std::error::Error,
}

impl Emit for StoreUnavailable<'_> {
    fn emit(self, stats: &PipelineStats) {
        count_retry(stats, retry::KV_UNAVAILABLE);
        let (error, store) = (self.error, self.store);
        let now = crate::ledger::idempotency::now_ms();
        let last = LAST_OUTAGE_WARN_MS.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= OUTAGE_LOG_EVERY_MS
            && LAST_OUTAGE_WARN_MS
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(target: HANDLER, error = %chain(error), store, "NATS store unavailable; leads wait for it without spending attempts (next such warning in 10 s at the earliest)");
        } else {
            tracing::debug!(target: HANDLER, error = %chain(error), store, "NATS store unavailable");
        }
        stats.bump();
    }
}

/// The DLQ write failed: the lead is retried instead of dropped.
pub struct DlqUnavailable<'a> {
    pub error: &'a DlqError,
}

impl Emit for DlqUnavailable<'_> {
    fn emit(self, stats: &PipelineStats) {
        count_retry(stats, retry::DLQ_UNAVAILABLE);
        tracing::error!(target: HANDLER, error = %chain(self.error), stage = "dlq", outcome = "retry", "DLQ unavailable; retrying instead of dropping");
        stats.bump();
    }
}

/// Every sink the lead needed confirmed it; acked. `superseded`: upsert sinks skipped it.
pub struct LeadDelivered {
    pub replay: bool,
    pub superseded: bool,
    /// received_at -> the last sink's confirmation, when both are known.
    pub e2e: Option<Duration>,
    /// Since the delivery started.
    pub took: Duration,
}

impl Emit for LeadDelivered {
    fn emit(self, stats: &PipelineStats) {
        stats
            .counters()
            .delivered
            .with_label_values(&[replay_label(self.replay)])
            .inc();
        if let Some(e2e) = self.e2e {
            metrics().e2e(self.replay, e2e);
            stats.latency.record(e2e);
        }
        tracing::info!(
            target: HANDLER,
            stage = "handle",
            outcome = if self.superseded {
                "superseded"
            } else {
                "delivered"
            },
            duration_ms = ms(self.took)
        );
        stats.bump();
    }
}

/// The lead was done before: acked without touching a sink.
pub struct LeadDuplicate<'a> {
    pub key: &'a str,
}

impl Emit for LeadDuplicate<'_> {
    fn emit(self, stats: &PipelineStats) {
        stats.counters().handler_duplicates.inc();
        tracing::info!(target: HANDLER, key = %self.key, stage = "dedupe", outcome = "duplicate");
        stats.bump();
    }
}

/// A handler put the lead in the DLQ; it is terminated next. `new` is false when the DLQ
/// already held this very message (an earlier delivery wrote it and its verdict was lost):
/// logged as this delivery's verdict, not counted as another placement.
pub struct LeadDeadLettered {
    pub reason: Reason,
    pub attempts: u32,
    pub new: bool,
}

impl Emit for LeadDeadLettered {
    fn emit(self, stats: &PipelineStats) {
        let reason = self.reason.as_str();
        if self.new {
            stats
                .counters()
                .dlq_placements
                .with_label_values(&[reason])
                .inc();
        }
        tracing::warn!(
            target: HANDLER,
            stage = "dlq",
            outcome = "dead",
            reason,
            attempts = self.attempts,
            "lead dead-lettered"
        );
        stats.bump();
    }
}

/// The crash net put a lead the server gave up on in the DLQ (emitted for new entries only).
pub struct CrashNetDeadLettered<'a> {
    pub key: &'a str,
    pub seq: u64,
}

impl Emit for CrashNetDeadLettered<'_> {
    fn emit(self, stats: &PipelineStats) {
        let reason = Reason::MaxDeliveries.as_str();
        stats
            .counters()
            .dlq_placements
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(target: CRASH_NET, key = %self.key, seq = self.seq, reason, stage = "dlq", "dead-lettered by the crash net");
        stats.bump();
    }
}

/// A handler actor panicked; it is restarted and its message redelivered.
pub struct HandlerRestarted<'a> {
    pub handler: usize,
    pub error: &'a (dyn std::error::Error + Send + Sync),
}

impl Emit for HandlerRestarted<'_> {
    fn emit(self, stats: &PipelineStats) {
        stats.counters().handler_restarts.inc();
        tracing::error!(target: DISPATCH, handler = self.handler, error = %chain(self.error), "handler crashed; restarting it and redelivering its message");
        stats.bump();
    }
}
