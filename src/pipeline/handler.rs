//! What a handler does with one delivery: dedupe, claim, validate, enrich, pass the lead's write
//! fence, fan out to every sink not yet done, then ack, retry later (NAK with backoff), or
//! dead-letter and terminate.
//!
//! Only real attempts count toward `handlers.max_deliver`: a sink was tried, or a handler died
//! holding the lead. The delivery count does not, because NATS itself redelivers without any
//! attempt (a consumer leader election, a partition changing owner, a busy fence), and a cluster
//! election is an outage to wait out, not a reason to dead-letter good leads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use serde_json::Value;
use tracing::Instrument;

use super::fence::Gate;
use super::PoolDeps;
use crate::dlq::{dlq_id, DeadLetter, Reason};
use crate::intake::envelope::LeadEnvelope;
use crate::ledger::idempotency::{Claim, Held};
use crate::queue::message::{DecodeError, LeadHeaders, LeadMessage};
use crate::sinks::{LeadRecord, SinkError, SinkOrdering};
use crate::telemetry::metrics::{metrics, retry};
use crate::telemetry::traces::{self, trace_span};

/// How one delivery ended, for the dispatcher's per-group ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every sink confirmed; acked.
    Delivered,
    /// Already done earlier; acked without touching a sink.
    Duplicate,
    /// NAKed with this delay; the group waits for the redelivery.
    Retrying { after: Duration },
    /// A newer event of the lead was already written: upsert sinks skipped this one (recorded),
    /// append sinks got it; acked.
    Superseded,
    /// In the DLQ and terminated.
    Dead,
}

pub struct Delivery<'a> {
    pub msg: &'a jetstream::Message,
    pub seq: u64,
    pub delivered: u32,
    /// The lead's keyed group key (the fence's key).
    pub group: &'a str,
}

/// NAK delays while NATS itself is away (an election, a restart): short, because the outage
/// ends on its own and costs the lead no attempt.
const OUTAGE_RETRY_CAP: Duration = Duration::from_secs(5);

/// One WARN per this long for a store outage, however many leads hit it (a three-second
/// election would otherwise print thousands of identical lines).
const OUTAGE_LOG_EVERY_MS: u64 = 10_000;
static LAST_OUTAGE_WARN_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn warn_outage(what: &'static str, error: &dyn std::fmt::Display) {
    let now = crate::ledger::idempotency::now_ms();
    let last = LAST_OUTAGE_WARN_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= OUTAGE_LOG_EVERY_MS
        && LAST_OUTAGE_WARN_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(error = %error, store = what, "NATS store unavailable; leads wait for it without spending attempts (next such warning in 10 s at the earliest)");
    } else {
        tracing::debug!(error = %error, store = what, "NATS store unavailable");
    }
}

pub async fn process(deps: &Arc<PoolDeps>, owner: &str, d: Delivery<'_>) -> Outcome {
    let started = Instant::now();
    let msg = d.msg;
    let lead = match LeadMessage::from_delivery(msg) {
        Ok(lead) => lead,
        Err(e) => {
            let sender = crate::queue::partition::sender_of(&msg.subject).to_string();
            let why = match e {
                DecodeError::Body { source } => {
                    format!("the stored message is not a lead envelope: {source}")
                }
                other => format!("the stored message is not a lead: {other}"),
            };
            return dead_letter(
                deps,
                &d,
                None,
                &sender,
                &dlq_id(d.seq),
                Reason::MalformedEnvelope,
                &why,
            )
            .await;
        }
    };
    let replay = lead.headers.replay.is_some();
    let envelope = lead.envelope;
    if d.delivered == 1 {
        // The console's lookup index: fire-and-forget, never waited for.
        crate::ledger::lead_index::record(
            &deps.parts.client,
            &envelope,
            d.seq,
            replay,
            &deps.parts.grouping.key,
        );
    }
    let span = tracing::info_span!("handle", key = %envelope.key, sender = %envelope.sender, seq = d.seq as i64, attempt = i64::from(d.delivered), replay);
    // (seq and attempt as i64: the trace layer would export unsigned integers as strings.)
    trace_handle(&span, msg, &lead.headers);
    // A span entered across awaits would leak into other tasks: instrument the future instead.
    let outcome = handle_lead(deps, owner, d, envelope, replay, started)
        .instrument(span.clone())
        .await;
    if traces::enabled() {
        traces::set_attribute(&span, "leadrouter.outcome", outcome_name(outcome));
        if outcome == Outcome::Dead {
            traces::set_error(&span, "dead_lettered");
        }
    }
    outcome
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Duplicate => "duplicate",
        Outcome::Retrying { .. } => "retrying",
        Outcome::Superseded => "superseded",
        Outcome::Dead => "dead",
    }
}

/// Traces: the handle span continues the trace in the message's `traceparent` (the edge's
/// publish span, or a replay's root span), and a replay also links to the original lead's trace.
fn trace_handle(span: &tracing::Span, msg: &jetstream::Message, headers: &LeadHeaders) {
    if !traces::enabled() || span.is_none() {
        return;
    }
    // The whole map: the propagator also reads `tracestate`.
    traces::set_parent(span, traces::from_nats(msg.headers.as_ref()));
    traces::set_attribute(span, "leadrouter.replay", headers.replay.is_some());
    traces::set_attribute(span, "messaging.system", "nats");
    traces::set_attribute(span, "messaging.destination.name", msg.subject.to_string());
    if let Some(replay) = &headers.replay {
        traces::set_attribute(span, "leadrouter.replay_of", replay.of.clone());
        traces::link(span, replay.traceparent.as_deref());
    }
}

/// A sink span's outcome: the error class only (a sink's message may quote lead data).
fn trace_sink<T>(span: &tracing::Span, r: &Result<T, SinkError>) {
    if let (false, Err(e)) = (span.is_none(), r) {
        span.record("error.type", e.class());
        let status = if e.is_permanent() {
            "rejected"
        } else {
            "failed"
        };
        traces::set_error(span, status);
    }
}

async fn handle_lead(
    deps: &Arc<PoolDeps>,
    owner: &str,
    d: Delivery<'_>,
    envelope: LeadEnvelope,
    replay: bool,
    started: Instant,
) -> Outcome {
    let msg = d.msg;
    let key = envelope.key.as_str();

    let t = Instant::now();
    if deps.parts.idem.cached_done(key).await {
        return duplicate(deps, msg, key).await;
    }
    let mut held = match deps.parts.idem.claim(key, owner, &dlq_id(d.seq)).await {
        Ok(Claim::Owned(h)) => h,
        Ok(Claim::Done) => return duplicate(deps, msg, key).await,
        Ok(Claim::AlreadyDead) => {
            // Our earlier TERM was lost; the DLQ already has this very message.
            term(deps, msg, Reason::MaxDeliveries.as_str()).await;
            return Outcome::Dead;
        }
        Ok(Claim::Busy(wait)) => {
            tracing::debug!(?wait, "another delivery holds the lead");
            metrics().retry(retry::CLAIM_BUSY);
            return nak(msg, wait.max(Duration::from_millis(50))).await;
        }
        Err(e) => {
            warn_outage("idempotency", &e);
            metrics().retry(retry::KV_UNAVAILABLE);
            return nak(msg, outage_delay(deps, d.delivered)).await;
        }
    };
    // This delivery's attempt number: earlier failed attempts, plus this one.
    let attempt = held.entry.attempts + 1;
    metrics().stage("claim", "", t.elapsed());

    // Validation errors are permanent: the same bytes fail the same way every time.
    let t = Instant::now();
    let fields = Value::Object(envelope.fields.clone());
    let validate_span = trace_span!("validate", leadrouter.schema = %envelope.schema);
    let validated =
        validate_span.in_scope(|| deps.parts.schemas.validate(&envelope.schema, &fields));
    if validated.is_err() {
        traces::set_error(&validate_span, "invalid");
    }
    drop(validate_span);
    if let Err(e) = validated {
        let reason = match e {
            super::schema::SchemaError::Unknown(_) => Reason::UnknownSchema,
            _ => Reason::SchemaMismatch,
        };
        metrics().stage("validate", "", t.elapsed());
        tracing::info!(stage = "validate", outcome = "invalid", error = %e, duration_ms = ms(t));
        return dead_letter(
            deps,
            &d,
            Some(&mut held),
            &envelope.sender,
            key,
            reason,
            &e.to_string(),
        )
        .await;
    }
    metrics().stage("validate", "", t.elapsed());
    tracing::info!(stage = "validate", outcome = "ok", duration_ms = ms(t));

    let t = Instant::now();
    let Value::Object(mut fields) = fields else {
        unreachable!("built as an object above")
    };
    let report = trace_span!("enrich").in_scope(|| deps.parts.enricher.enrich(&mut fields));
    if !report.flags.is_empty() {
        deps.stats
            .enrich_flags
            .fetch_add(report.flags.len() as u64, Ordering::Relaxed);
    }
    metrics().stage("enrich", "", t.elapsed());
    tracing::info!(stage = "enrich", outcome = "ok", flags = ?report.flags, duration_ms = ms(t));

    let record = LeadRecord {
        key: envelope.key.clone(),
        sender: envelope.sender.clone(),
        source_event_id: envelope.source_event_id.clone(),
        schema: envelope.schema.clone(),
        received_at: envelope.received_at.clone(),
        fields,
        flags: report.flags.iter().map(|f| f.to_string()).collect(),
        replay,
    };

    // The fence: is a newer event of this lead already written, or being written elsewhere?
    let mut fenced = match deps.parts.fence.enter(d.group, d.seq, owner).await {
        Ok(Gate::Open(f)) => Some(f),
        Ok(Gate::Superseded { by }) => {
            held.entry.superseded_by = Some(by);
            None
        }
        Ok(Gate::Busy(wait)) => {
            tracing::debug!(?wait, "another router is writing this lead");
            metrics().retry(retry::CLAIM_BUSY);
            let _ = deps.parts.idem.yield_claim(&mut held).await;
            return nak(msg, wait).await;
        }
        Err(e) => {
            warn_outage("fence", &e);
            metrics().retry(retry::KV_UNAVAILABLE);
            let _ = deps.parts.idem.yield_claim(&mut held).await;
            return nak(msg, outage_delay(deps, d.delivered)).await;
        }
    };
    let superseded = fenced.is_none();
    if superseded {
        tracing::info!(
            stage = "fence",
            outcome = "superseded",
            superseded_by = held.entry.superseded_by,
            "a newer event of this lead was already written; upsert sinks skip this one"
        );
    }

    // Fan out to the sinks this lead still needs, all at once, keeping the message and the lease
    // alive while slow sinks work. A superseded event goes to append sinks only.
    let pending: Vec<_> = deps
        .parts
        .sinks
        .iter()
        .filter(|s| !held.entry.sinks.contains_key(s.name()))
        .filter(|s| !superseded || s.ordering() == SinkOrdering::Append)
        .cloned()
        .collect();
    let deliveries = futures::future::join_all(pending.iter().map(|s| {
        let record = &record;
        let span = trace_span!("sink", sink = s.name(), otel.kind = "client", error.type = tracing::field::Empty);
        async move {
            let t = Instant::now();
            let r = s.deliver(record).instrument(span.clone()).await;
            trace_sink(&span, &r);
            (s.name().to_string(), r, t.elapsed())
        }
    }));
    tokio::pin!(deliveries);
    let mut tick = tokio::time::interval(deps.heartbeat);
    tick.tick().await;
    let results = loop {
        tokio::select! {
            r = &mut deliveries => break r,
            _ = tick.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
                if let Err(e) = deps.parts.idem.renew(&mut held).await {
                    tracing::warn!(error = %e, "lease renewal failed");
                }
                if let Some(f) = fenced.as_mut() {
                    if let Err(e) = deps.parts.fence.renew(f).await {
                        tracing::warn!(error = %e, "fence lease renewal failed");
                    }
                }
            }
        }
    };
    // Out of the fence whatever the sinks said: a retry re-enters at the same sequence, and the
    // next event must not wait for a lease.
    if let Some(f) = fenced.take() {
        if let Err(e) = deps.parts.fence.leave(f).await {
            tracing::debug!(error = %e, "fence not released; its lease expires");
        }
    }

    let mut transient: Option<(String, SinkError)> = None;
    let mut permanent: Option<(String, SinkError)> = None;
    let mut latest_persist: Option<SystemTime> = None;
    for (name, result, took) in results {
        match result {
            Ok(done) => {
                let at = chrono::DateTime::<chrono::Utc>::from(done.persisted_at)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                held.entry.sinks.insert(name.clone(), at);
                latest_persist =
                    Some(latest_persist.map_or(done.persisted_at, |l| l.max(done.persisted_at)));
                deps.stats.sink_ok.fetch_add(1, Ordering::Relaxed);
                metrics().sink_outcome(&name, "ok", None, replay, took);
                tracing::info!(stage = "sink", sink = %name, outcome = "ok", duration_ms = took.as_secs_f64() * 1e3);
            }
            Err(e) => {
                deps.stats.sink_err.fetch_add(1, Ordering::Relaxed);
                let outcome = if e.is_permanent() {
                    "rejected"
                } else {
                    "failed"
                };
                metrics().sink_outcome(&name, outcome, Some(e.class()), replay, took);
                // The sink's words (often echoing the record) go to the log: the log writer
                // masks any personal data in them.
                tracing::info!(stage = "sink", sink = %name, outcome, class = e.class(), error = %e, duration_ms = took.as_secs_f64() * 1e3);
                if e.is_permanent() {
                    permanent.get_or_insert((name, e));
                } else {
                    // Keep the longest Retry-After: the retry must satisfy every sink.
                    let replace = match &transient {
                        None => true,
                        Some((_, old)) => e.retry_after() > old.retry_after(),
                    };
                    if replace {
                        transient = Some((name, e));
                    }
                }
            }
        }
    }

    if let Some((name, e)) = permanent {
        return dead_letter(
            deps,
            &d,
            Some(&mut held),
            &envelope.sender,
            key,
            Reason::SinkRejected,
            &format!("{name}: {e}"),
        )
        .await;
    }
    if let Some((name, e)) = transient {
        let last_error = format!("{name}: {e}");
        if attempt >= deps.max_deliver {
            return dead_letter(
                deps,
                &d,
                Some(&mut held),
                &envelope.sender,
                key,
                Reason::RetriesExhausted,
                &last_error,
            )
            .await;
        }
        // Record the sinks that did confirm, so the retry goes to the failed ones only.
        if let Err(err) = deps.parts.idem.release(&mut held, Some(last_error)).await {
            tracing::warn!(error = %err, "could not release the claim; the lease will expire");
        }
        let delay = deps.backoff.delay(d.delivered, e.retry_after());
        deps.stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics().retry(retry::SINK);
        tracing::info!(
            stage = "handle",
            outcome = "retry",
            delay_ms = delay.as_millis() as u64,
            duration_ms = ms(started)
        );
        return nak(msg, delay).await;
    }

    if let Err(e) = deps.parts.idem.mark_done(&mut held).await {
        // Every sink confirmed; a redelivery will find the sinks' own idempotency. Ack anyway.
        tracing::warn!(error = %e, "could not mark the lead done");
    }
    if let Err(e) = msg.double_ack().await {
        tracing::warn!(error = %e, "ack not confirmed; a redelivery will be a duplicate");
    }
    let mut e2e_seen = None;
    if let (Some(persisted), Ok(received)) = (
        latest_persist,
        chrono::DateTime::parse_from_rfc3339(&envelope.received_at),
    ) {
        let received: SystemTime = received.with_timezone(&chrono::Utc).into();
        if let Ok(e2e) = persisted.duration_since(received) {
            deps.stats.record_e2e(e2e);
            e2e_seen = Some(e2e);
        }
    }
    metrics().delivered(replay, e2e_seen);
    deps.stats.delivered.fetch_add(1, Ordering::Relaxed);
    if replay {
        deps.stats.replayed.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        stage = "handle",
        outcome = if superseded {
            "superseded"
        } else {
            "delivered"
        },
        duration_ms = ms(started)
    );
    if superseded {
        Outcome::Superseded
    } else {
        Outcome::Delivered
    }
}

fn outage_delay(deps: &PoolDeps, delivered: u32) -> Duration {
    deps.backoff.delay(delivered, None).min(OUTAGE_RETRY_CAP)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

async fn duplicate(deps: &PoolDeps, msg: &jetstream::Message, key: &str) -> Outcome {
    deps.stats.duplicates.fetch_add(1, Ordering::Relaxed);
    metrics().handler_duplicates.inc();
    tracing::info!(key = %key, stage = "dedupe", outcome = "duplicate");
    let _ = msg.double_ack().await;
    Outcome::Duplicate
}

async fn nak(msg: &jetstream::Message, delay: Duration) -> Outcome {
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::debug!(error = %e, "NAK failed; ack_wait will redeliver");
    }
    Outcome::Retrying { after: delay }
}

/// `+TERM <reason>` (server >= 2.10.4) carries the reason into the server's advisory; the
/// client's `AckKind::Term` cannot, so the ack is published by hand.
async fn term(deps: &PoolDeps, msg: &jetstream::Message, reason: &str) {
    if let Some(reply) = &msg.reply {
        let body = Bytes::from(format!("+TERM {reason}"));
        if let Err(e) = deps.parts.client.publish(reply.clone(), body).await {
            tracing::warn!(error = %e, "TERM failed; the message will be redelivered and recognised as dead");
        }
    }
}

/// Copies the message to the DLQ, records it, then terminates it. If the DLQ write fails the
/// message is retried instead: it is never terminated without a DLQ copy.
async fn dead_letter(
    deps: &PoolDeps,
    d: &Delivery<'_>,
    held: Option<&mut Held>,
    sender: &str,
    key: &str,
    reason: Reason,
    last_error: &str,
) -> Outcome {
    // As found, also when the body is not a lead: the entry keeps what the message said.
    let headers = LeadHeaders::read(d.msg.headers.as_ref());
    let attempts = held.as_ref().map(|h| h.entry.attempts + 1).unwrap_or(1);
    let first_attempt_at = held
        .as_ref()
        .and_then(|h| h.entry.first_attempt_ms)
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let entry = DeadLetter {
        sender,
        key,
        reason,
        last_error,
        attempts,
        original_seq: d.seq,
        received_at: headers.received_at.as_deref(),
        schema: headers.schema.as_deref(),
        group: headers.group.as_deref(),
        first_attempt_at: first_attempt_at.as_deref(),
        traceparent: headers.traceparent.as_deref(),
        payload: d.msg.payload.clone(),
    };
    let dlq_span = trace_span!("dead_letter", leadrouter.reason = reason.as_str());
    match deps.parts.dlq.put(&entry).instrument(dlq_span).await {
        Ok(_) => {
            if let Some(h) = held {
                if let Err(e) = deps
                    .parts
                    .idem
                    .mark_dead(h, Some(last_error.to_string()), dlq_id(d.seq))
                    .await
                {
                    tracing::warn!(error = %e, "could not record the dead letter in the idempotency store");
                }
            }
            deps.stats.count_dead(reason);
            tracing::warn!(
                stage = "dlq",
                outcome = "dead",
                reason = reason.as_str(),
                attempts,
                "lead dead-lettered"
            );
            term(deps, d.msg, reason.as_str()).await;
            Outcome::Dead
        }
        Err(e) => {
            tracing::error!(error = %e, stage = "dlq", outcome = "retry", "DLQ unavailable; retrying instead of dropping");
            metrics().retry(retry::DLQ_UNAVAILABLE);
            if let Some(h) = held {
                let _ = deps
                    .parts
                    .idem
                    .release(h, Some(last_error.to_string()))
                    .await;
            }
            nak(d.msg, outage_delay(deps, d.delivered)).await
        }
    }
}
