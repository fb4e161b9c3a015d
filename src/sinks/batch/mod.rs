//! Batching for sinks whose vendor takes many records per call (HubSpot's batch upsert takes
//! 100 contacts, Salesforce's sObject Collections 200 records), under the vendor's rate budget.
//!
//! The handler pool stays one lead per handler: each handler calls [`BatchSink::deliver`] as it
//! would any sink, and waits. Behind it one task per sink (the *batcher*) owns the queue of
//! waiting leads, cuts batches, paces the calls and hands each lead its own verdict from the
//! vendor's per-record results. So per-lead bookkeeping (claims, per-sink completion, retries,
//! the DLQ) is the handler's, exactly as for a one-lead sink; batching only changes how many
//! leads share an HTTP request.
//!
//! A batch goes when `max_records` leads (or `max_bytes` of them) wait, or the oldest has waited
//! `linger`, and the vendor's budget allows a call. While the budget says wait, leads keep
//! arriving, so a backlog drains in full batches at the vendor's pace.
//!
//! What the batcher promises:
//! - **One version of a record in flight.** Two leads with the same conflict key (the email a
//!   CRM upserts by) are never in one batch or in two concurrent calls: the later one waits in
//!   the queue, in order, until the earlier call answered. (The dispatcher already runs one
//!   event of a lead at a time; this also covers two leads that share an email.)
//! - **Throttles cost no attempt.** A short throttle (the 10-second window) is waited out here
//!   and the same batch is sent again: the handlers are still waiting, their attempt not over.
//!   A long one (a spent daily budget) hands the leads back with [`class::THROTTLED`], which the
//!   handler NAKs without counting an attempt.
//! - **One bad record fails alone.** An all-or-none refusal that names the bad records
//!   settles those and sends the rest again at once; one that names none is split in halves
//!   until the bad record is alone.

pub mod budget;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{class, Delivered, LeadRecord, Sink, SinkBuildError, SinkError, SinkOrdering};
use crate::telemetry::metrics::metrics;
use crate::telemetry::traces::{self, trace_span};
pub use budget::Pace;

/// How a sink cuts its batches (`max_records`, `max_bytes`, `linger` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    /// Calls of this sink at once.
    pub max_in_flight: usize,
}

impl BatchSettings {
    /// The settings from a sink's `max_records`, `max_bytes`, `linger` and `max_in_flight`,
    /// `defaults` for unset ones; `vendor` and `vendor_max` (the most records the vendor takes
    /// per call) name the limit in the error.
    #[allow(clippy::too_many_arguments)]
    pub fn from_config(
        index: usize,
        vendor: &str,
        vendor_max: usize,
        defaults: BatchSettings,
        max_records: Option<usize>,
        max_bytes: Option<usize>,
        linger: Option<Duration>,
        max_in_flight: Option<usize>,
    ) -> Result<BatchSettings, SinkBuildError> {
        let s = BatchSettings {
            max_records: max_records.unwrap_or(defaults.max_records),
            max_bytes: max_bytes.unwrap_or(defaults.max_bytes),
            linger: linger.unwrap_or(defaults.linger),
            max_in_flight: max_in_flight.unwrap_or(defaults.max_in_flight),
        };
        if s.max_records == 0 || s.max_records > vendor_max {
            return Err(SinkBuildError::new(
                index,
                "max_records",
                format!(
                    "must be 1-{vendor_max}: {vendor} takes at most {vendor_max} records per call"
                ),
            ));
        }
        if s.max_bytes < 1024 {
            return Err(SinkBuildError::new(
                index,
                "max_bytes",
                "must be at least 1024",
            ));
        }
        if s.linger > Duration::from_secs(10) {
            return Err(SinkBuildError::new(
                index,
                "linger",
                "must be at most 10s (every lead may wait this long for its batch)",
            ));
        }
        if s.max_in_flight == 0 || s.max_in_flight > 16 {
            return Err(SinkBuildError::new(index, "max_in_flight", "must be 1-16"));
        }
        Ok(s)
    }

    /// Leads the handler pool must hold at once to keep this sink's calls full: one batch in
    /// each call slot and one filling behind them.
    pub fn leads_in_flight(&self) -> usize {
        self.max_records * (self.max_in_flight + 1)
    }
}

/// One lead, encoded for the vendor once, on the handler's task.
pub struct Encoded<T> {
    pub item: T,
    /// Its share of the request body.
    pub bytes: usize,
    /// What the vendor keys the record by (a normalized email): two leads with the same key
    /// never travel at once.
    pub conflict_key: String,
}

/// What one call came back with.
pub enum CallOutcome {
    /// One verdict per item, in the call's order.
    Answered(Vec<Result<Delivered, SinkError>>),
    /// The call as a whole failed (timeout, 5xx, a bad token): every item gets it.
    Failed(SinkError),
    /// The vendor's short window is full: send the same batch again after `wait`.
    Throttled {
        wait: Duration,
        policy: &'static str,
    },
    /// The vendor's long budget is spent: hand the leads back for `wait`.
    Spent {
        wait: Duration,
        policy: &'static str,
    },
    /// Nothing was written (all or none) because of these items; send the rest again.
    Refused(Vec<(usize, SinkError)>),
    /// Refused as a whole without saying which item: split the batch and try the halves.
    Split(SinkError),
}

/// A vendor API that writes many records per call.
#[async_trait::async_trait]
pub trait BatchApi: Send + Sync + 'static {
    type Item: Send + Sync + 'static;

    /// The lead as one record of a call, or why the vendor cannot take it.
    fn encode(&self, lead: &LeadRecord) -> Result<Encoded<Self::Item>, SinkError>;

    /// Whether a call may go now; [`Pace::Go`] counts it against the budget.
    fn acquire(&self, now: Instant) -> Pace;

    /// One call with these items. `span` is the batch's span (its context goes in the
    /// request's `traceparent`).
    async fn call(&self, items: Vec<&Self::Item>, span: &tracing::Span) -> CallOutcome;
}

struct Pending<T> {
    enc: Encoded<T>,
    /// The lead's sink span, linked from the batch's span.
    span: tracing::Span,
    queued: Instant,
    reply: oneshot::Sender<Result<Delivered, SinkError>>,
}

/// A sink built on a [`BatchApi`]: `deliver` queues the lead with the sink's batcher task and
/// waits for the lead's own verdict.
pub struct BatchSink<A: BatchApi> {
    name: String,
    ordering: SinkOrdering,
    settings: BatchSettings,
    api: Arc<A>,
    queue: mpsc::UnboundedSender<Pending<A::Item>>,
}

impl<A: BatchApi> BatchSink<A> {
    /// Starts the batcher task for `api`; it ends once the sink is dropped and its queue and
    /// calls are done.
    pub fn start(name: &str, ordering: SinkOrdering, settings: BatchSettings, api: A) -> Self {
        let api = Arc::new(api);
        let (tx, rx) = mpsc::unbounded_channel();
        let batcher = Batcher {
            sink: name.to_string(),
            settings,
            api: api.clone(),
            queue: VecDeque::new(),
            ready: VecDeque::new(),
            busy_keys: HashSet::new(),
            paced_since: None,
        };
        tokio::spawn(
            batcher
                .run(rx)
                .instrument(tracing::info_span!("batcher", sink = %name)),
        );
        BatchSink {
            name: name.to_string(),
            ordering,
            settings,
            api,
            queue: tx,
        }
    }
}

#[async_trait::async_trait]
impl<A: BatchApi> Sink for BatchSink<A> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError> {
        lead.require_key()?;
        let enc = self.api.encode(lead)?;
        let (reply, verdict) = oneshot::channel();
        let pending = Pending {
            enc,
            span: tracing::Span::current(),
            queued: Instant::now(),
            reply,
        };
        if self.queue.send(pending).is_err() {
            return Err(stopped());
        }
        verdict.await.unwrap_or_else(|_| Err(stopped()))
    }

    fn ordering(&self) -> SinkOrdering {
        self.ordering
    }

    fn leads_in_flight(&self) -> usize {
        self.settings.leads_in_flight()
    }
}

fn stopped() -> SinkError {
    SinkError::transient(class::CONNECT, "the sink's batcher has stopped")
}

/// The one owner of a sink's queue, its conflict keys and its calls.
struct Batcher<A: BatchApi> {
    sink: String,
    settings: BatchSettings,
    api: Arc<A>,
    /// Leads waiting to be cut into a batch, in arrival order.
    queue: VecDeque<Pending<A::Item>>,
    /// Batches already cut that go first: the rest of a refused batch, a throttled batch, the
    /// halves of a split one.
    ready: VecDeque<Vec<Pending<A::Item>>>,
    /// Conflict keys of the leads in calls right now.
    busy_keys: HashSet<String>,
    /// Since when a due call has been held back by the vendor's budget.
    paced_since: Option<Instant>,
}

/// A finished call: the batch and what the vendor said.
type Done<T> = (Vec<Pending<T>>, CallOutcome);

/// The calls in flight.
type Calls<T> =
    FuturesUnordered<std::pin::Pin<Box<dyn std::future::Future<Output = Done<T>> + Send>>>;

impl<A: BatchApi> Batcher<A> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending<A::Item>>) {
        let mut calls: Calls<A::Item> = FuturesUnordered::new();
        let mut open = true;
        loop {
            let wake = self.start_calls(&mut calls, !open);
            if !open && calls.is_empty() && self.queue.is_empty() && self.ready.is_empty() {
                break;
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(p) => {
                        self.queue.push_back(p);
                        // Take whatever else is already there before cutting a batch.
                        while let Ok(p) = rx.try_recv() {
                            self.queue.push_back(p);
                        }
                    }
                    None => open = false,
                },
                Some(done) = calls.next(), if !calls.is_empty() => self.settle(done),
                _ = sleep => {}
            }
        }
    }

    /// Starts every call the budget and the slots allow; returns when to look again.
    fn start_calls(&mut self, calls: &mut Calls<A::Item>, closing: bool) -> Option<Instant> {
        loop {
            if calls.len() >= self.settings.max_in_flight {
                return None;
            }
            let now = Instant::now();
            let wants = !self.ready.is_empty() || self.due(now, closing).is_none_or(|d| d <= now);
            if !wants {
                return self.due(now, closing);
            }
            // Nothing to send while every waiting lead's record is in a call: wait for it.
            if self.ready.is_empty() && !self.sendable() {
                return None;
            }
            // The budget before the cut: while the vendor's pace holds the call back, leads keep
            // joining the queue, and the batch is cut from all of them when it may go.
            match self.api.acquire(now) {
                Pace::Go => {}
                Pace::At(at) => {
                    self.paced_since.get_or_insert(now);
                    return Some(at);
                }
                Pace::Spent(wait) => {
                    if let Some(batch) = self.next_batch() {
                        metrics().sink_throttled(&self.sink, "budget_spent");
                        self.hand_back(batch, wait, "the daily budget is spent");
                    }
                    continue;
                }
            }
            // Non-empty: `sendable` said so, and this task alone changes the queue.
            let batch = self.next_batch()?;
            let oldest = batch.iter().map(|p| p.queued).min().unwrap_or(now);
            let paced = self
                .paced_since
                .take()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            metrics().sink_batch(
                &self.sink,
                batch.len(),
                now.saturating_duration_since(oldest),
                paced,
            );
            for p in &batch {
                self.busy_keys.insert(p.enc.conflict_key.clone());
            }
            let api = self.api.clone();
            let span = batch_span(&self.sink, &batch);
            calls.push(Box::pin(async move {
                let items: Vec<&A::Item> = batch.iter().map(|p| &p.enc.item).collect();
                let outcome = api.call(items, &span).instrument(span.clone()).await;
                (batch, outcome)
            }));
        }
    }

    /// Whether some waiting lead's record is not in a call right now.
    fn sendable(&self) -> bool {
        self.queue
            .iter()
            .any(|p| !self.busy_keys.contains(&p.enc.conflict_key))
    }

    /// When the queue's next batch is due: now when full, else the oldest lead's linger.
    /// `None` when nothing waits (or, while closing, now).
    fn due(&self, now: Instant, closing: bool) -> Option<Instant> {
        let first = self.queue.front()?;
        let bytes: usize = self.queue.iter().map(|p| p.enc.bytes).sum();
        if closing
            || self.queue.len() >= self.settings.max_records
            || bytes >= self.settings.max_bytes
        {
            return Some(now);
        }
        Some(first.queued + self.settings.linger)
    }

    /// The next batch: a ready one, else leads from the queue in order, skipping (and keeping
    /// in place) those whose conflict key is in a call or already in this batch.
    fn next_batch(&mut self) -> Option<Vec<Pending<A::Item>>> {
        if let Some(b) = self.ready.pop_front() {
            return Some(b);
        }
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut bytes = 0usize;
        let mut kept = VecDeque::with_capacity(self.queue.len());
        while let Some(p) = self.queue.pop_front() {
            let full = batch.len() >= self.settings.max_records
                || (!batch.is_empty() && bytes + p.enc.bytes > self.settings.max_bytes);
            if full
                || self.busy_keys.contains(&p.enc.conflict_key)
                || keys.contains(&p.enc.conflict_key)
            {
                kept.push_back(p);
                continue;
            }
            bytes += p.enc.bytes;
            keys.insert(p.enc.conflict_key.clone());
            batch.push(p);
        }
        self.queue = kept;
        (!batch.is_empty()).then_some(batch)
    }

    /// Gives every lead of `batch` its verdict, or puts it back for another call.
    fn settle(&mut self, (batch, outcome): Done<A::Item>) {
        for p in &batch {
            self.busy_keys.remove(&p.enc.conflict_key);
        }
        match outcome {
            CallOutcome::Answered(verdicts) => {
                let mut verdicts = verdicts.into_iter();
                for p in batch {
                    let v = verdicts.next().unwrap_or_else(|| {
                        Err(SinkError::transient(
                            class::HTTP_OTHER,
                            "the vendor's answer has fewer results than the call had records",
                        ))
                    });
                    let _ = p.reply.send(v);
                }
            }
            CallOutcome::Failed(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
            CallOutcome::Throttled { wait, policy } => {
                // The leads' attempts are not over: the same batch goes again, first.
                metrics().sink_throttled(&self.sink, policy);
                tracing::info!(
                    policy,
                    wait_ms = wait.as_millis() as u64,
                    leads = batch.len(),
                    "throttled by the vendor; the batch waits for the window"
                );
                self.ready.push_front(batch);
            }
            CallOutcome::Spent { wait, policy } => {
                metrics().sink_throttled(&self.sink, policy);
                self.hand_back(batch, wait, "the vendor's budget is spent");
            }
            CallOutcome::Refused(refused) => {
                let mut refused: Vec<Option<SinkError>> = {
                    let mut v = vec![None; batch.len()];
                    for (i, e) in refused {
                        if let Some(slot) = v.get_mut(i) {
                            *slot = Some(e);
                        }
                    }
                    v
                };
                let mut rest = Vec::new();
                for (p, e) in batch.into_iter().zip(refused.iter_mut()) {
                    match e.take() {
                        Some(e) => {
                            let _ = p.reply.send(Err(e));
                        }
                        None => rest.push(p),
                    }
                }
                if !rest.is_empty() {
                    self.ready.push_front(rest);
                }
            }
            CallOutcome::Split(e) => {
                if batch.len() <= 1 {
                    for p in batch {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                    return;
                }
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                self.ready.push_front(second);
                self.ready.push_front(first);
            }
        }
    }

    fn hand_back(&self, batch: Vec<Pending<A::Item>>, wait: Duration, why: &str) {
        tracing::warn!(
            leads = batch.len(),
            wait_s = wait.as_secs(),
            "{why}; the leads go back to the queue without spending an attempt"
        );
        let e = SinkError::Transient {
            class: class::THROTTLED,
            message: format!(
                "{why}; retrying in {}",
                humantime::format_duration(round_secs(wait))
            ),
            retry_after: Some(wait),
            source: None,
        };
        for p in batch {
            let _ = p.reply.send(Err(e.clone()));
        }
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

/// The batch's span: a child of the first lead's sink span (so that lead's trace shows the
/// request), linked to every lead's sink span.
fn batch_span<T>(sink: &str, batch: &[Pending<T>]) -> tracing::Span {
    let span = trace_span!(parent: batch.first().map(|p| p.span.id()).unwrap_or(None), "sink_batch", sink = sink, leadrouter.batch_leads = batch.len() as i64, otel.kind = "client");
    if traces::enabled() && !span.is_none() {
        for p in batch {
            traces::link_span(&span, &p.span);
        }
    }
    span
}

#[cfg(test)]
mod tests;
