//! The dead-letter queue: where leads that cannot succeed wait, with the reason and the last
//! error, for an operator to fix the cause and replay them.

pub mod crypto;

pub mod store;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::queue::message::header::{self, dlq as hdr};
use crate::queue::SUBJECT_DLQ_PREFIX;

/// Why a lead was dead-lettered: a small, stable set, so `dlq tail | jq .reason | uniq -c`
/// groups well. Details go in the last error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MalformedEnvelope,
    UnknownSchema,
    SchemaMismatch,
    SinkRejected,
    RetriesExhausted,
    /// The crash/timeout net: the server gave up redelivering without a verdict from a handler.
    MaxDeliveries,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedEnvelope => "malformed_envelope",
            Reason::UnknownSchema => "unknown_schema",
            Reason::SchemaMismatch => "schema_mismatch",
            Reason::SinkRejected => "sink_rejected",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::MaxDeliveries => "max_deliveries",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("DLQ write failed")]
    Write(#[source] jetstream::context::PublishError),
}

/// One dead-lettered lead, as written.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub sender: &'a str,
    pub key: &'a str,
    pub reason: Reason,
    pub last_error: &'a str,
    pub attempts: u32,
    pub original_seq: u64,
    pub received_at: Option<&'a str>,
    pub schema: Option<&'a str>,
    pub group: Option<&'a str>,
    pub first_attempt_at: Option<&'a str>,
    /// The lead's W3C `traceparent`, kept so a replay can link its new trace to this one.
    pub traceparent: Option<&'a str>,
    pub payload: Bytes,
}

/// The id of the DLQ entry for LEADS message `seq`; also its `Nats-Msg-Id`, which is what keeps
/// the handler and the crash net from writing one lead twice.
pub fn dlq_id(original_seq: u64) -> String {
    format!("LEADS:{original_seq}")
}

#[derive(Clone)]
pub struct DlqWriter {
    js: jetstream::Context,
    keys: crypto::KeyRing,
}

impl DlqWriter {
    pub fn new(js: jetstream::Context, keys: crypto::KeyRing) -> Self {
        DlqWriter { js, keys }
    }

    /// Stores the entry; `Ok(true)` if it was new, `Ok(false)` if it was already there.
    pub async fn put(&self, d: &DeadLetter<'_>) -> Result<bool, DlqError> {
        let id = dlq_id(d.original_seq);
        // Operators read these without the key: masked here, once, whatever wrote the error.
        let envelope = crate::queue::message::decode_envelope(&d.payload).ok();
        // Field lines first (they are what an operator needs), topped up with context to the
        // 5-line minimum; the reason and sender have their own fields in every listing.
        let lines = match &envelope {
            Some(e) => crate::pii::with_context(
                crate::pii::preview(&e.fields),
                &[
                    ("sender", d.sender),
                    ("schema", e.schema.as_str()),
                    ("reason", d.reason.as_str()),
                ],
            ),
            None => crate::pii::with_context(
                vec!["payload: not a lead envelope".into()],
                &[("sender", d.sender), ("reason", d.reason.as_str())],
            ),
        };
        let sealed = self.keys.seal(&d.payload, id.as_bytes());
        let mut h = HeaderMap::new();
        h.insert(header::MSG_ID, id.as_str());
        h.insert(hdr::KEY_ID, sealed.key_id.as_str());
        h.insert(hdr::REASON, d.reason.as_str());
        h.insert(
            hdr::LAST_ERROR,
            one_line(&crate::pii::mask_text(d.last_error)).as_str(),
        );
        h.insert(
            hdr::PREVIEW,
            serde_json::to_string(&lines).unwrap_or_default().as_str(),
        );
        h.insert(hdr::ATTEMPTS, d.attempts.to_string().as_str());
        h.insert(hdr::ORIGINAL_SEQ, d.original_seq.to_string().as_str());
        h.insert(hdr::SENDER, d.sender);
        h.insert(hdr::KEY, d.key);
        let now = crate::timestamp::now();
        h.insert(hdr::FIRST_ATTEMPT, d.first_attempt_at.unwrap_or(&now));
        h.insert(hdr::LAST_ATTEMPT, now.as_str());
        if let Some(v) = d.received_at {
            h.insert(header::RECEIVED_AT, v);
        }
        if let Some(v) = d.schema {
            h.insert(header::SCHEMA, v);
        }
        if let Some(v) = d.group {
            h.insert(header::GROUP, v);
        }
        if let Some(v) = d.traceparent {
            h.insert(header::TRACEPARENT, v);
        }
        let subject = format!("{SUBJECT_DLQ_PREFIX}{}", subject_token(d.sender));
        let ack = self
            .js
            .publish_with_headers(subject, h, Bytes::from(sealed.bytes))
            .await
            .map_err(DlqError::Write)?
            .await
            .map_err(DlqError::Write)?;
        Ok(!ack.duplicate)
    }
}

/// Header values are single lines; error texts from HTTP bodies may not be.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 512 {
        let mut cut = 512;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Sender ids are validated at config load, but envelopes can come from imports and replays.
fn subject_token(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        s.to_string()
    } else {
        "unknown".to_string()
    }
}

/// What the key-check records prove: sealing a known text once per key id and opening it at
/// every start catches a key whose id stayed but whose material changed (a typo'd env var, a
/// wrong file), before it seals entries that the right key could never open.
const KEYCHECK_TEXT: &[u8] = b"leadrouter dlq key check v1";

fn keycheck_key(id: &str) -> String {
    format!("keycheck.{id}")
}

/// Why the DLQ keys could not be verified against their key-check records.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error("bucket {}", crate::queue::KV_DLQ_KEYS)]
    Bucket(#[source] jetstream::context::KeyValueError),
    #[error("reading {key}")]
    Read {
        key: String,
        #[source]
        source: jetstream::kv::EntryError,
    },
    #[error("writing {key}")]
    Write {
        key: String,
        #[source]
        source: jetstream::kv::CreateError,
    },
    #[error("key `{id}` does not open the key-check record written when `{id}` was first used: its material changed (wrong env var or file?). Refusing to start, so no entry gets sealed with a key that is not `{id}`; restore the original key, or give the new one a new id")]
    MaterialChanged { id: String },
    #[error("key `{id}` vanished from the ring")]
    Vanished { id: String },
    #[error("key `{id}`: another node wrote its key-check record with different material")]
    OtherMaterial { id: String },
}

/// Verifies every key of the ring against its key-check record in `leads_dlq_keys`, writing
/// records for keys seen for the first time. Returns the ids that got a new record.
pub async fn verify_keys(
    js: &async_nats::jetstream::Context,
    ring: &crypto::KeyRing,
) -> Result<Vec<String>, KeyCheckError> {
    let kv = js
        .get_key_value(crate::queue::KV_DLQ_KEYS)
        .await
        .map_err(KeyCheckError::Bucket)?;
    let mut created = Vec::new();
    for id in ring.key_ids() {
        let k = keycheck_key(id);
        let aad = k.as_bytes();
        let read = |source| KeyCheckError::Read {
            key: k.clone(),
            source,
        };
        match kv.get(&k).await.map_err(read)? {
            Some(sealed) => {
                let ok = ring
                    .open(id, &sealed, aad)
                    .map(|p| p == KEYCHECK_TEXT)
                    .unwrap_or(false);
                if !ok {
                    return Err(KeyCheckError::MaterialChanged { id: id.to_string() });
                }
            }
            None => {
                let sealed = ring
                    .seal_with(id, KEYCHECK_TEXT, aad)
                    .ok_or_else(|| KeyCheckError::Vanished { id: id.to_string() })?;
                // `create` so two nodes starting together with different material for the
                // same id cannot both believe they wrote the record.
                match kv.create(&k, sealed.bytes.into()).await {
                    Ok(_) => created.push(id.to_string()),
                    Err(e)
                        if e.kind()
                            == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists =>
                    {
                        let sealed = kv.get(&k).await.map_err(read)?.unwrap_or_default();
                        if ring.open(id, &sealed, aad).ok().as_deref() != Some(KEYCHECK_TEXT) {
                            return Err(KeyCheckError::OtherMaterial { id: id.to_string() });
                        }
                    }
                    Err(source) => {
                        return Err(KeyCheckError::Write {
                            key: k.clone(),
                            source,
                        })
                    }
                }
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_single_bounded_lines() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
        let long = "é".repeat(600);
        let out = one_line(&long);
        assert!(out.len() <= 512 + '…'.len_utf8());
        assert!(out.ends_with('…'));
    }

    #[test]
    fn subject_tokens_are_safe() {
        assert_eq!(subject_token("demo"), "demo");
        assert_eq!(subject_token("a.b"), "unknown");
        assert_eq!(subject_token("*"), "unknown");
    }
}
