//! The lead index: where is the lead with this event id, idempotency key or email. The handler
//! writes it; the console's lookup reads it.
//!
//! **The index** is the KV bucket `leads_index` (kept `streams.max_age`, like `LEADS`). When a
//! handler first gets a message (delivery 1 of an original or of a replay), it publishes two
//! entries, fire-and-forget in a task of their own (a core NATS publish into the bucket's
//! subjects, no ack awaited), so indexing can never delay or fail a delivery:
//!
//! - `event.<first 32 hex of SHA-256(source event id)>.<key>`
//! - `email.<keyed group hash of the normalized email (HMAC-SHA256, the edge's group key)>.<key>`
//!   (when the lead has an email; a plain hash would let anyone who reads the bucket test
//!   guesses)
//!
//! each holding `{"key", "sender", "seq", "received_at", "replay"}`. The key sits in the entry
//! name, so a lookup is one stream-info request listing the subjects under a prefix
//! (`info_with_subjects`), then one read per lead found; nothing is read-modify-written, so
//! concurrent handlers never race. An email given to a lookup is normalized and hashed here
//! with the edge's function and then dropped: it is not stored, logged or echoed back.
//!

use async_nats::jetstream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::intake::envelope::LeadEnvelope;
use crate::intake::group_key::GroupKey;
use crate::queue::KV_LEAD_INDEX;

/// Leads one lookup shows at most (an email can have many).
pub const MAX_LEADS: usize = 20;

/// The index entry's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexValue {
    pub key: String,
    pub sender: String,
    /// Sequence of the message in `LEADS` (the latest one indexed: a replay re-indexes).
    pub seq: u64,
    pub received_at: String,
    #[serde(default)]
    pub replay: bool,
}

/// A KV-safe token for a lead key: the idempotency bucket's own mapping (`lr_...` stays itself).
fn key_token(key: &str) -> String {
    super::idempotency::kv_key(key)
}

fn event_token(event_id: &str) -> String {
    hex::encode(&Sha256::digest(event_id.as_bytes())[..16])
}

fn subject(kind: &str, hash: &str, key_tok: &str) -> String {
    format!("$KV.{KV_LEAD_INDEX}.{kind}.{hash}.{key_tok}")
}

/// The index entries for one lead: (subject, value).
pub fn index_entries(
    envelope: &LeadEnvelope,
    seq: u64,
    replay: bool,
    key: &GroupKey,
) -> Vec<(String, Bytes)> {
    let tok = key_token(&envelope.key);
    if tok.len() > 160 {
        return Vec::new();
    }
    let value = IndexValue {
        key: envelope.key.clone(),
        sender: envelope.sender.clone(),
        seq,
        received_at: envelope.received_at.clone(),
        replay,
    };
    let value = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    let mut out = vec![(
        subject("event", &event_token(&envelope.source_event_id), &tok),
        value.clone(),
    )];
    let has_email = envelope
        .fields
        .get("email")
        .and_then(Value::as_str)
        .is_some_and(|e| !e.trim().is_empty());
    if has_email {
        out.push((
            subject("email", &key.group_of(&envelope.fields), &tok),
            value,
        ));
    }
    out
}

/// Indexes a lead the handler just got, without waiting: a task of its own publishes the
/// entries; a failure is logged at debug and changes nothing else.
pub fn record(
    client: &async_nats::Client,
    envelope: &LeadEnvelope,
    seq: u64,
    replay: bool,
    key: &GroupKey,
) {
    let entries = index_entries(envelope, seq, replay, key);
    if entries.is_empty() {
        return;
    }
    let client = client.clone();
    tokio::spawn(async move {
        for (subject, value) in entries {
            if let Err(e) = client.publish(subject, value).await {
                tracing::debug!(error = %crate::error_chain::chain(&e), "lead index entry not written");
                return;
            }
        }
    });
}

/// What to look up.
#[derive(Debug, Clone, PartialEq)]
pub enum By {
    Key(String),
    EventId(String),
    /// The hash only: the email itself is dropped as soon as it is hashed.
    Email(String),
}

impl By {
    /// `by` (`key`, `event_id`, `email`) says what `raw` is; without it, `lr_...` is a key,
    /// anything with an `@` an email, and everything else an event id.
    pub fn parse(raw: &str, by: Option<&str>, key: &GroupKey) -> Result<By, String> {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > 512 {
            return Err("give an event id, an idempotency key (lr_...) or an email".into());
        }
        let hashed = |email: &str| By::Email(key.hash_email(email));
        match by.map(str::trim).filter(|b| !b.is_empty()) {
            Some("key") => Ok(By::Key(raw.to_string())),
            Some("event_id" | "event") => Ok(By::EventId(raw.to_string())),
            Some("email") => Ok(hashed(raw)),
            Some(other) => Err(format!(
                "`by`: `{other}` is not one of key, event_id, email"
            )),
            None if raw.starts_with("lr_") => Ok(By::Key(raw.to_string())),
            None if raw.contains('@') => Ok(hashed(raw)),
            None => Ok(By::EventId(raw.to_string())),
        }
    }

    pub fn describe(&self) -> Value {
        match self {
            By::Key(k) => json!({"by": "key", "value": k}),
            By::EventId(e) => json!({"by": "event_id", "value": e}),
            By::Email(_) => json!({"by": "email", "value": null}),
        }
    }

    pub fn not_found(&self) -> String {
        let what = match self {
            By::Key(_) => "this idempotency key",
            By::EventId(_) => "this event id",
            By::Email(_) => "this email",
        };
        format!(
            "no lead known for {what}. Leads are indexed when a handler first picks them up, so a lead still waiting in LEADS is not found yet; leads older than streams.max_age are gone"
        )
    }

    pub fn filter(&self) -> String {
        match self {
            By::Key(k) => format!("$KV.{KV_LEAD_INDEX}.event.*.{}", key_token(k)),
            By::EventId(e) => format!("$KV.{KV_LEAD_INDEX}.event.{}.*", event_token(e)),
            By::Email(h) => format!("$KV.{KV_LEAD_INDEX}.email.{h}.*"),
        }
    }
}

/// The index entries matching `filter` (see [`By::filter`]), newest lead first, at most
/// [`MAX_LEADS`].
pub async fn query(
    js: &jetstream::Context,
    filter: &str,
) -> Result<Vec<IndexValue>, crate::queue::NatsError> {
    use crate::queue::NatsError;
    use futures::TryStreamExt;
    let stream = match js.get_stream(format!("KV_{KV_LEAD_INDEX}")).await {
        Ok(s) => s,
        // No bucket (an older topology): nothing indexed.
        Err(_) => return Ok(Vec::new()),
    };
    let mut subjects = Vec::new();
    let mut info = stream
        .info_with_subjects(filter)
        .await
        .map_err(NatsError::during("lead index: listing its subjects"))?;
    while let Some((subject, _)) = info
        .try_next()
        .await
        .map_err(NatsError::during("lead index: listing its subjects"))?
    {
        subjects.push(subject);
        if subjects.len() >= 4 * MAX_LEADS {
            break;
        }
    }
    let mut out = Vec::new();
    for s in subjects {
        let Ok(m) = stream.get_last_raw_message_by_subject(&s).await else {
            continue;
        };
        let deleted = m
            .headers
            .get("KV-Operation")
            .is_some_and(|v| v.as_str() != "PUT");
        if deleted {
            continue;
        }
        if let Ok(v) = serde_json::from_slice::<IndexValue>(&m.payload) {
            out.push(v);
        }
    }
    out.sort_by_key(|v| std::cmp::Reverse(v.seq));
    out.dedup_by(|a, b| a.key == b.key);
    out.truncate(MAX_LEADS);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn envelope(email: Option<&str>) -> LeadEnvelope {
        let mut fields = Map::new();
        if let Some(e) = email {
            fields.insert("email".into(), json!(e));
        }
        LeadEnvelope {
            schema: "lead.v1".into(),
            sender: "demo".into(),
            source_event_id: "evt 1/ü".into(),
            received_at: "2026-11-24T21:00:00.000Z".into(),
            key: "lr_0123456789abcdef0123456789abcdef".into(),
            fields,
        }
    }

    fn gk() -> GroupKey {
        GroupKey::from_secret(
            b"test-group-key-0123456789",
            crate::intake::group_key::KeySource::Env("T".into()),
        )
    }

    #[test]
    fn index_entries_name_the_key_and_never_the_email() {
        let e = envelope(Some(" Ada@Example.com "));
        let entries = index_entries(&e, 7, false, &gk());
        assert_eq!(entries.len(), 2);
        for (s, v) in &entries {
            assert!(s.starts_with("$KV.leads_index."), "{s}");
            assert!(s.ends_with(".lr_0123456789abcdef0123456789abcdef"), "{s}");
            assert!(!s.to_lowercase().contains("ada"), "{s}");
            let v: IndexValue = serde_json::from_slice(v).unwrap();
            assert_eq!((v.seq, v.sender.as_str()), (7, "demo"));
            assert!(!String::from_utf8_lossy(&serde_json::to_vec(&v).unwrap()).contains("ada"));
        }
        // The lookup of the same email, typed differently, finds the same entry.
        let by = By::parse("ada@example.COM", None, &gk()).unwrap();
        let prefix = by.filter().trim_end_matches('*').to_string();
        assert!(entries[1].0.starts_with(&prefix), "{prefix}");
        let by = By::parse("evt 1/ü", Some("event_id"), &gk()).unwrap();
        assert!(entries[0].0.starts_with(by.filter().trim_end_matches('*')));
        // No email, no email entry.
        assert_eq!(index_entries(&envelope(None), 1, false, &gk()).len(), 1);
    }

    #[test]
    fn lookups_are_classified() {
        assert!(matches!(By::parse("lr_abc", None, &gk()), Ok(By::Key(_))));
        assert!(matches!(By::parse("a@b.co", None, &gk()), Ok(By::Email(_))));
        assert!(matches!(
            By::parse("evt_1", None, &gk()),
            Ok(By::EventId(_))
        ));
        assert!(matches!(
            By::parse("lr_abc", Some("event_id"), &gk()),
            Ok(By::EventId(_))
        ));
        assert!(By::parse("", None, &gk()).is_err());
        assert!(By::parse("x", Some("phone"), &gk()).is_err());
        // The answer never carries the email back.
        let by = By::parse("a@b.co", None, &gk()).unwrap();
        assert!(!by.describe().to_string().contains("a@b.co"));
    }

    #[test]
    fn odd_keys_get_safe_tokens() {
        assert_eq!(key_token("lr_ab-c"), "lr_ab-c");
        assert_eq!(key_token("a.b"), format!("x-{}", hex::encode("a.b")));
    }
}
