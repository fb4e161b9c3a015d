//! What a handler does with one delivery: dedupe, claim, validate, enrich, pass the lead's write
//! fence, fan out to every sink not yet done, then ack, retry later (NAK with backoff), or
//! dead-letter and terminate.
//!
//! Only real attempts count toward `handlers.max_deliver`: a sink was tried, or a handler died
//! holding the lead. The delivery count does not, because NATS itself redelivers without any
//! attempt (a consumer leader election, a partition changing owner, a busy fence), and a cluster
//! election is an outage to wait out, not a reason to dead-letter good leads.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use serde_json::Value;
use tracing::Instrument;

use super::events::{
    DlqUnavailable, Emit, Holder, LeadBusy, LeadClaimed, LeadDeadLettered, LeadDelivered,
    LeadDuplicate, LeadEnriched, LeadInvalid, LeadRetried, LeadSuperseded, LeadValidated,
    SinkWriteFailed, SinkWritten, StoreUnavailable,
};
use super::fence::Gate;
use super::PoolDeps;
use crate::dlq::{dlq_id, DeadLetter, Reason};
use crate::error_chain::chain;
use crate::intake::envelope::LeadEnvelope;
use crate::ledger::idempotency::{Claim, Held, SinkRef};
use crate::queue::message::{DecodeError, LeadHeaders, LeadMessage};
use crate::sinks::{LeadRecord, SinkError, SinkOrdering};
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

pub async fn process(deps: &Arc<PoolDeps>, owner: &str, d: Delivery<'_>) -> Outcome {
    let started = Instant::now();
    let msg = d.msg;
    let lead = match LeadMessage::from_delivery(msg) {
        Ok(lead) => lead,
        Err(e) => {
            let sender = crate::queue::partition::sender_of(&msg.subject).to_string();
            let why = match e {
                DecodeError::Body { source } => {
                    format!(
                        "the stored message is not a lead envelope: {}",
                        chain(&source)
                    )
                }
                other => format!("the stored message is not a lead: {}", chain(&other)),
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
            LeadBusy {
                holder: Holder::Claim,
                wait,
            }
            .emit(&deps.stats);
            return nak(msg, wait.max(Duration::from_millis(50))).await;
        }
        Err(e) => {
            StoreUnavailable {
                store: "idempotency",
                error: &e,
            }
            .emit(&deps.stats);
            return nak(msg, outage_delay(deps, d.delivered)).await;
        }
    };
    // This delivery's attempt number: earlier failed attempts, plus this one.
    let attempt = held.entry.attempts + 1;
    LeadClaimed { took: t.elapsed() }.emit(&deps.stats);

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
        LeadInvalid {
            error: &e,
            took: t.elapsed(),
        }
        .emit(&deps.stats);
        return dead_letter(
            deps,
            &d,
            Some(&mut held),
            &envelope.sender,
            key,
            reason,
            &chain(&e),
        )
        .await;
    }
    LeadValidated { took: t.elapsed() }.emit(&deps.stats);

    let t = Instant::now();
    let Value::Object(mut fields) = fields else {
        unreachable!("built as an object above")
    };
    let report = trace_span!("enrich").in_scope(|| deps.parts.enricher.enrich(&mut fields));
    LeadEnriched {
        flags: &report.flags,
        took: t.elapsed(),
    }
    .emit(&deps.stats);

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
            LeadBusy {
                holder: Holder::Fence,
                wait,
            }
            .emit(&deps.stats);
            let _ = deps.parts.idem.yield_claim(&mut held).await;
            return nak(msg, wait).await;
        }
        Err(e) => {
            StoreUnavailable {
                store: "fence",
                error: &e,
            }
            .emit(&deps.stats);
            let _ = deps.parts.idem.yield_claim(&mut held).await;
            return nak(msg, outage_delay(deps, d.delivered)).await;
        }
    };
    let superseded = fenced.is_none();
    if superseded {
        LeadSuperseded {
            by: held.entry.superseded_by,
        }
        .emit(&deps.stats);
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
                    tracing::warn!(error = %chain(&e), "lease renewal failed");
                }
                if let Some(f) = fenced.as_mut() {
                    if let Err(e) = deps.parts.fence.renew(f).await {
                        tracing::warn!(error = %chain(&e), "fence lease renewal failed");
                    }
                }
            }
        }
    };
    // Out of the fence whatever the sinks said: a retry re-enters at the same sequence, and the
    // next event must not wait for a lease.
    if let Some(f) = fenced.take() {
        if let Err(e) = deps.parts.fence.leave(f).await {
            tracing::debug!(error = %chain(&e), "fence not released; its lease expires");
        }
    }

    let mut transient: Option<(String, SinkError)> = None;
    // Whether every transient failure was a vendor's spent budget, which costs no attempt.
    let mut throttled_only = true;
    let mut permanent: Option<(String, SinkError)> = None;
    let mut latest_persist: Option<SystemTime> = None;
    for (name, result, took) in results {
        match result {
            Ok(done) => {
                let at = crate::timestamp::format_system(done.persisted_at);
                held.entry.sinks.insert(name.clone(), at);
                if let Some(id) = done.remote_id {
                    let created = done.created;
                    held.entry
                        .refs
                        .insert(name.clone(), SinkRef { id, created });
                }
                latest_persist =
                    Some(latest_persist.map_or(done.persisted_at, |l| l.max(done.persisted_at)));
                SinkWritten {
                    sink: &name,
                    replay,
                    took,
                }
                .emit(&deps.stats);
            }
            Err(e) => {
                SinkWriteFailed {
                    sink: &name,
                    error: &e,
                    replay,
                    took,
                }
                .emit(&deps.stats);
                if e.is_permanent() {
                    permanent.get_or_insert((name, e));
                } else {
                    throttled_only &= e.is_throttled();
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
            &format!("{name}: {}", chain(&e)),
        )
        .await;
    }
    if let Some((name, e)) = transient {
        let last_error = format!("{name}: {}", chain(&e));
        if throttled_only {
            // The vendor's budget, not the lead: back to the queue until it returns, the
            // sinks that did confirm recorded, and no attempt spent (a spent daily cap must
            // never walk a backlog into the DLQ).
            held.entry.last_error = Some(last_error);
            if let Err(err) = deps.parts.idem.yield_claim(&mut held).await {
                tracing::warn!(error = %chain(&err), "could not release the claim; the lease will expire");
            }
            let delay = crate::backoff::spread(e.retry_after().unwrap_or(OUTAGE_RETRY_CAP));
            LeadRetried {
                delay,
                took: started.elapsed(),
                throttled: true,
            }
            .emit(&deps.stats);
            return nak(msg, delay).await;
        }
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
            tracing::warn!(error = %chain(&err), "could not release the claim; the lease will expire");
        }
        let delay = deps.backoff.delay(d.delivered, e.retry_after());
        LeadRetried {
            delay,
            took: started.elapsed(),
            throttled: false,
        }
        .emit(&deps.stats);
        return nak(msg, delay).await;
    }

    if let Err(e) = deps.parts.idem.mark_done(&mut held).await {
        // Every sink confirmed; a redelivery will find the sinks' own idempotency. Ack anyway.
        tracing::warn!(error = %chain(&e), "could not mark the lead done");
    }
    if let Err(e) = msg.double_ack().await {
        tracing::warn!(error = %chain(&*e), "ack not confirmed; a redelivery will be a duplicate");
    }
    let mut e2e = None;
    if let (Some(persisted), Ok(received)) = (
        latest_persist,
        chrono::DateTime::parse_from_rfc3339(&envelope.received_at),
    ) {
        let received: SystemTime = received.with_timezone(&chrono::Utc).into();
        e2e = persisted.duration_since(received).ok();
    }
    LeadDelivered {
        replay,
        superseded,
        e2e,
        took: started.elapsed(),
    }
    .emit(&deps.stats);
    if superseded {
        Outcome::Superseded
    } else {
        Outcome::Delivered
    }
}

fn outage_delay(deps: &PoolDeps, delivered: u32) -> Duration {
    deps.backoff.delay(delivered, None).min(OUTAGE_RETRY_CAP)
}

async fn duplicate(deps: &PoolDeps, msg: &jetstream::Message, key: &str) -> Outcome {
    LeadDuplicate { key }.emit(&deps.stats);
    let _ = msg.double_ack().await;
    Outcome::Duplicate
}

async fn nak(msg: &jetstream::Message, delay: Duration) -> Outcome {
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::debug!(error = %chain(&*e), "NAK failed; ack_wait will redeliver");
    }
    Outcome::Retrying { after: delay }
}

/// `+TERM <reason>` (server >= 2.10.4) carries the reason into the server's advisory; the
/// client's `AckKind::Term` cannot, so the ack is published by hand.
async fn term(deps: &PoolDeps, msg: &jetstream::Message, reason: &str) {
    if let Some(reply) = &msg.reply {
        let body = Bytes::from(format!("+TERM {reason}"));
        if let Err(e) = deps.parts.client.publish(reply.clone(), body).await {
            tracing::warn!(error = %chain(&e), "TERM failed; the message will be redelivered and recognised as dead");
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
        .map(crate::timestamp::format);
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
        Ok(new) => {
            if let Some(h) = held {
                if let Err(e) = deps
                    .parts
                    .idem
                    .mark_dead(h, Some(last_error.to_string()), dlq_id(d.seq))
                    .await
                {
                    tracing::warn!(error = %chain(&e), "could not record the dead letter in the idempotency store");
                }
            }
            term(deps, d.msg, reason.as_str()).await;
            // After the TERM, so whoever awaits the figure finds the message settled.
            LeadDeadLettered {
                reason,
                attempts,
                new,
            }
            .emit(&deps.stats);
            Outcome::Dead
        }
        Err(e) => {
            DlqUnavailable { error: &e }.emit(&deps.stats);
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
