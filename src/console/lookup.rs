//! Lead lookup: where is the lead with this event id, idempotency key or email, and what
//! happened to it.
//!
//! The index itself (its entries, its writer and its query) is `ledger::lead_index`.
//!
//! **The answer** comes from the lead's idempotency record (`leads_idempotency`: state, sinks
//! with their confirmation times, attempts, last error), its DLQ entries (reason, replays) and
//! the index entry (sender, `LEADS` sequence, when the edge accepted it). What it cannot know,
//! it says: a lead still waiting in `LEADS` for its first delivery is not indexed yet (JetStream
//! cannot find a message by its `Nats-Msg-Id`), and after `streams.idempotency_ttl` (24h) the
//! idempotency record, and with it the delivery state, is gone.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::AdminState;
use crate::dlq::store::{DlqEntry, DlqFilter, DlqStoreError};
use crate::ledger::idempotency::{now_ms, Idempotency, IdempotencyError, LeadEntry, LeadState};
pub use crate::ledger::lead_index::By;
use crate::ledger::lead_index::{self, IndexValue, MAX_LEADS};
use crate::queue::KV_IDEMPOTENCY;

use crate::timestamp::{format as rfc3339, parse as parse_time};

/// One line, masked like DLQ errors (a sink's words can quote the lead).
fn masked(s: &str) -> String {
    crate::pii::mask_text(s)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

/// Why a lookup could not be answered (NATS trouble: the API answers 503 with [`chain`] of it).
///
/// [`chain`]: crate::error_chain::chain
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Reading the lead index.
    #[error(transparent)]
    Index(#[from] crate::queue::NatsError),
    #[error("idempotency bucket")]
    Bucket(#[source] async_nats::jetstream::context::KeyValueError),
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    #[error(transparent)]
    Dlq(#[from] DlqStoreError),
}

/// Looks the lead(s) up; `None` when nothing is known.
pub async fn lookup(state: &AdminState, by: &By) -> Result<Option<Value>, LookupError> {
    let js = &state.observed.js;
    let index = lead_index::query(js, &by.filter()).await?;
    let kv = js
        .get_key_value(KV_IDEMPOTENCY)
        .await
        .map_err(LookupError::Bucket)?;
    // Used for its key mapping and reads only.
    let idem = Idempotency::new(kv, 1, Duration::from_secs(1), Duration::from_secs(1));
    let mut leads = Vec::new();
    match by {
        By::Key(key) => {
            let ix = index.into_iter().find(|v| &v.key == key);
            if let Some(v) = lead(state, &idem, key, ix.as_ref()).await? {
                leads.push(v);
            }
        }
        _ => {
            for ix in &index {
                if let Some(v) = lead(state, &idem, &ix.key, Some(ix)).await? {
                    leads.push(v);
                }
            }
        }
    }
    if leads.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({
        "lookup": by.describe(),
        "leads": leads,
        "truncated": leads.len() >= MAX_LEADS,
    })))
}

async fn lead(
    state: &AdminState,
    idem: &Idempotency,
    key: &str,
    ix: Option<&IndexValue>,
) -> Result<Option<Value>, LookupError> {
    let entry: Option<LeadEntry> = idem.get(key).await?.map(|(e, _)| e);
    if entry.is_none() && ix.is_none() {
        // Unknown key: no reason to scan the DLQ for it.
        return Ok(None);
    }
    let first_attempt = entry
        .as_ref()
        .and_then(|e| e.first_attempt_ms)
        .and_then(|ms| DateTime::from_timestamp_millis(ms as i64));
    let received = ix.and_then(|v| parse_time(&v.received_at));
    // The DLQ is read only when the lead may be in it, from shortly before it arrived.
    let may_be_dead = entry
        .as_ref()
        .is_none_or(|e| e.dlq.is_some() || e.state == LeadState::Dead);
    let dlq: Vec<DlqEntry> = if may_be_dead {
        let since = received
            .or(first_attempt)
            .map(|t| t - chrono::Duration::minutes(5));
        let filter = DlqFilter {
            sender: ix.map(|v| v.sender.clone()),
            since,
            ..DlqFilter::default()
        };
        state
            .dlq
            .list(&filter)
            .await?
            .into_iter()
            .filter(|d| d.key == key)
            .collect()
    } else {
        Vec::new()
    };
    let sender = ix
        .map(|v| v.sender.clone())
        .or_else(|| dlq.first().map(|d| d.sender.clone()));
    let received_at = ix
        .map(|v| v.received_at.clone())
        .or_else(|| dlq.iter().find_map(|d| d.received_at.clone()));

    let (status, summary) = status(entry.as_ref(), dlq.last());

    let mut timeline: Vec<(DateTime<Utc>, Value)> = Vec::new();
    let mut at = |t: Option<DateTime<Utc>>, what: &str, detail: String| {
        if let Some(t) = t {
            timeline.push((t, json!({"at": rfc3339(t), "what": what, "detail": detail})));
        }
    };
    at(
        received_at.as_deref().and_then(parse_time),
        "received",
        format!(
            "accepted at the edge from sender {}",
            sender.as_deref().unwrap_or("?")
        ),
    );
    at(
        first_attempt,
        "first_attempt",
        "first handler attempt".into(),
    );
    for d in &dlq {
        at(
            parse_time(&d.dead_at),
            "dead_lettered",
            format!(
                "DLQ entry #{}: {} after {} attempt(s): {}",
                d.id, d.reason, d.attempts, d.last_error
            ),
        );
        for r in &d.replays {
            at(
                parse_time(&r.at),
                "replayed",
                format!("entry #{} replayed by {}: {}", d.id, r.by, r.reason),
            );
        }
    }
    if let Some(e) = &entry {
        for (sink, t) in &e.sinks {
            at(
                parse_time(t),
                "delivered",
                format!("confirmed by sink {sink}"),
            );
        }
    }
    timeline.sort_by_key(|e| e.0);

    Ok(Some(json!({
        "key": key,
        "sender": sender,
        "status": status,
        "summary": summary,
        "received_at": received_at,
        "seq": ix.map(|v| v.seq),
        "superseded_by": entry.as_ref().and_then(|e| e.superseded_by),
        "attempts": entry.as_ref().map(|e| e.attempts),
        "last_error": entry.as_ref().and_then(|e| e.last_error.as_deref()).map(masked),
        "sinks": entry.as_ref().map(|e| e.sinks.iter().map(|(name, at)| {
            let r = e.refs.get(name);
            json!({"name": name, "at": at, "remote_id": r.map(|r| &r.id), "created": r.and_then(|r| r.created)})
        }).collect::<Vec<_>>()).unwrap_or_default(),
        "dlq": dlq.iter().map(|d| json!({
            "id": d.id,
            "reason": d.reason,
            "last_error": d.last_error,
            "attempts": d.attempts,
            "dead_at": d.dead_at,
            "replays": d.replays,
        })).collect::<Vec<_>>(),
        "timeline": timeline.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    })))
}

/// The lead's status and its one-line summary, from its idempotency record and its latest DLQ
/// entry.
fn status(entry: Option<&LeadEntry>, latest_dlq: Option<&DlqEntry>) -> (&'static str, String) {
    let Some(e) = entry else {
        return match latest_dlq {
            Some(d) if !d.replayed() => (
                "dead_lettered",
                format!("in the DLQ as entry #{} ({})", d.id, d.reason),
            ),
            _ => (
                "unknown",
                "a handler picked it up, but there is no idempotency record (yet, or any more: it is kept streams.idempotency_ttl, 24h by default)".to_string(),
            ),
        };
    };
    let sinks = || e.sinks.keys().cloned().collect::<Vec<_>>().join(", ");
    match e.state {
        // Done, but the upsert sinks skipped it: say so, or a lead whose data is not in the CRM
        // reads as delivered.
        LeadState::Done => match e.superseded_by {
            Some(by) => (
                "superseded",
                format!(
                    "a newer event of this lead (LEADS #{by}) was already written, so upsert sinks skipped this one rather than write older data over newer; done ({})",
                    sinks()
                ),
            ),
            None => ("delivered", format!("delivered to every sink ({})", sinks())),
        },
        LeadState::Dead => match latest_dlq {
            Some(d) if d.replayed() => (
                "replayed",
                format!(
                    "DLQ entry #{} was replayed; waiting for a handler to pick it up",
                    d.id
                ),
            ),
            Some(d) => (
                "dead_lettered",
                format!("in the DLQ as entry #{} ({})", d.id, d.reason),
            ),
            None => (
                "dead_lettered",
                "dead-lettered (the DLQ entry is no longer listed)".to_string(),
            ),
        },
        LeadState::Claimed if e.lease_until_ms > now_ms() => (
            "processing",
            format!("a handler is working on it (attempt {})", e.attempts + 1),
        ),
        LeadState::Claimed | LeadState::Pending => (
            "retrying",
            format!("waiting for attempt {} after a failure", e.attempts + 1),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(superseded_by: Option<u64>) -> LeadEntry {
        let mut e: LeadEntry = serde_json::from_value(json!({
            "state": "done",
            "sinks": {"crm": "2026-12-02T10:00:00Z"},
        }))
        .expect("entry");
        e.superseded_by = superseded_by;
        e
    }

    #[test]
    fn a_lead_the_upsert_sinks_skipped_reads_superseded_not_delivered() {
        let (st, summary) = status(Some(&done(Some(42))), None);
        assert_eq!(st, "superseded");
        assert!(summary.contains("LEADS #42"), "{summary}");
        assert!(summary.contains("(crm)"), "{summary}");
        let (st, summary) = status(Some(&done(None)), None);
        assert_eq!(
            (st, summary.as_str()),
            ("delivered", "delivered to every sink (crm)")
        );
        assert_eq!(status(None, None).0, "unknown");
    }
}
