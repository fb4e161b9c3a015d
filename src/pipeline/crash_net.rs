//! The crash net. Advisories are core NATS, sent once, only to current listeners, so they are
//! captured in the `LEADS_ADVISORIES` stream (created before the consumer) and worked off from
//! there: any MAX_DELIVERIES advisory whose lead is neither done nor already dead-lettered
//! becomes a DLQ entry. This is the path for handlers that died or stalled past `ack_wait` on
//! the last attempt; the ordinary path is the handler's own dead-lettering.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

use super::events::{CrashNetDeadLettered, Emit};
use super::PipelineStats;
use crate::dlq::{dlq_id, DeadLetter, DlqWriter, Reason};
use crate::error_chain::chain;
use crate::ledger::idempotency::{Idempotency, LeadState};
use crate::queue::message::{self, LeadHeaders};
use crate::queue::pull::{pull_forever, Pull};
use crate::queue::{STREAM_ADVISORIES, STREAM_LEADS};

pub const CONSUMER_NET: &str = "dlq-net";

#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// Runs until `shutdown` turns true.
pub async fn run(
    js: jetstream::Context,
    idem: Idempotency,
    dlq: DlqWriter,
    stats: Arc<PipelineStats>,
    shutdown: watch::Receiver<bool>,
) {
    let config = consumer::pull::Config {
        durable_name: Some(CONSUMER_NET.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let pull = Pull {
        batch: 200,
        heartbeat: Duration::from_secs(15),
        expires: Duration::from_secs(30),
        group: None,
        what: CONSUMER_NET.to_string(),
    };
    let (js2, idem, dlq, stats) = (&js, &idem, &dlq, &stats);
    pull_forever(
        &js,
        STREAM_ADVISORIES,
        config,
        pull,
        shutdown,
        |m| async move {
            if handle(js2, idem, dlq, stats, &m.payload).await {
                let _ = m.ack().await;
            } else {
                let _ = m
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
            true
        },
    )
    .await;
}

/// True when the advisory is dealt with (written, or nothing to do).
async fn handle(
    js: &jetstream::Context,
    idem: &Idempotency,
    dlq: &DlqWriter,
    stats: &PipelineStats,
    payload: &Bytes,
) -> bool {
    let Ok(adv) = serde_json::from_slice::<MaxDeliveries>(payload) else {
        return true;
    };
    if adv.stream != STREAM_LEADS {
        return true;
    }
    let stream = match js.get_stream(STREAM_LEADS).await {
        Ok(s) => s,
        Err(_) => return false,
    };
    let Ok(msg) = stream.get_raw_message(adv.stream_seq).await else {
        tracing::warn!(
            seq = adv.stream_seq,
            "max-deliveries advisory for a message no longer in LEADS"
        );
        return true;
    };
    // Body and headers each as far as they go: whatever the message is, it gets its entry.
    let envelope = message::decode_envelope(&msg.payload).ok();
    let headers = LeadHeaders::read(Some(&msg.headers));
    let key = envelope
        .as_ref()
        .map(|e| e.key.clone())
        .unwrap_or_else(|| dlq_id(adv.stream_seq));
    let entry = match idem.get(&key).await {
        Ok(e) => e,
        Err(_) => return false,
    };
    let id = dlq_id(adv.stream_seq);
    if let Some((entry, _)) = &entry {
        if entry.state == LeadState::Done {
            return true;
        }
        if entry.state == LeadState::Dead && entry.dlq.as_deref() == Some(id.as_str()) {
            return true;
        }
    }
    let last_error = entry
        .as_ref()
        .and_then(|(e, _)| e.last_error.clone())
        .unwrap_or_else(|| "no verdict from a handler: it crashed or stalled past ack_wait".into());
    let sender = envelope
        .as_ref()
        .map(|e| e.sender.clone())
        .or_else(|| {
            crate::queue::partition::parse_subject(&msg.subject).map(|s| s.sender.to_string())
        })
        .unwrap_or_default();
    let dead = DeadLetter {
        sender: &sender,
        key: &key,
        reason: Reason::MaxDeliveries,
        last_error: &last_error,
        attempts: u32::try_from(adv.deliveries).unwrap_or(u32::MAX),
        original_seq: adv.stream_seq,
        received_at: headers.received_at.as_deref(),
        schema: headers.schema.as_deref(),
        group: headers.group.as_deref(),
        first_attempt_at: None,
        traceparent: headers.traceparent.as_deref(),
        payload: msg.payload.clone(),
    };
    match dlq.put(&dead).await {
        Ok(new) => {
            if new {
                CrashNetDeadLettered {
                    key: &key,
                    seq: adv.stream_seq,
                }
                .emit(stats);
            }
            let _ = idem.force_dead(&key, id).await;
            true
        }
        Err(e) => {
            tracing::error!(error = %chain(&e), "crash net could not write the DLQ; will retry");
            false
        }
    }
}
