//! Reading the DLQ and replaying from it: what the CLI, the admin API and the NATS operator
//! service all call.
//!
//! An entry's public id is its sequence in `LEADS_DLQ`. Entries are never removed by a replay:
//! the replay is recorded next to the entry (KV bucket `leads_dlq_audit`) and the entry stays
//! for audit; listings can hide replayed entries.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer, kv};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::crypto::{CryptoError, KeyRing};
use super::dlq_id;
use crate::error_chain::chain;
use crate::ledger::idempotency::{Idempotency, LeadState};
use crate::queue::message::header::{self, dlq as hdr};
use crate::queue::message::{self, LeadHeaders, Replay};
use crate::queue::{NatsError, KV_DLQ_AUDIT, STREAM_DLQ, SUBJECT_DLQ_PREFIX};

/// What the DLQ's readers get wrong. The text is short; the cause is the
/// [`source`](std::error::Error::source): show [`chain`] to an operator.
#[derive(Debug, thiserror::Error)]
pub enum DlqStoreError {
    #[error("no DLQ entry with id {0}")]
    NotFound(u64),
    #[error("a replay needs a reason (what was fixed)")]
    NoReason,
    /// The payload does not open with the configured keys.
    #[error("DLQ entry {id} cannot be opened")]
    Unreadable {
        id: u64,
        #[source]
        source: CryptoError,
    },
    /// A NATS call failed (what was being done, the client's error as the source).
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// One replay of an entry, kept for audit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplayMark {
    pub at: String,
    pub reason: String,
    pub by: String,
    /// Sequence of the republished message in `LEADS`.
    pub new_seq: u64,
}

/// What operators see of an entry: everything but the (encrypted) payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DlqEntry {
    pub id: u64,
    pub sender: String,
    pub key: String,
    pub reason: String,
    pub last_error: String,
    pub attempts: u32,
    pub original_seq: u64,
    pub received_at: Option<String>,
    pub first_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    /// When the entry was written.
    pub dead_at: String,
    pub preview: Vec<String>,
    #[serde(default)]
    pub replays: Vec<ReplayMark>,
    /// The DLQ key that sealed the payload (rotation: old ids must stay configured).
    #[serde(default)]
    pub key_id: String,
    /// Set by `get` when the payload cannot be opened with the configured keys: the entry is
    /// still shown, and a replay of it fails with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl DlqEntry {
    pub fn replayed(&self) -> bool {
        !self.replays.is_empty()
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct DlqFilter {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub sender: Option<String>,
    /// Entries written at or after this time.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub hide_replayed: bool,
    /// Entries after this id (for `--follow`).
    #[serde(default)]
    pub after_id: Option<u64>,
}

impl DlqFilter {
    fn matches(&self, e: &DlqEntry) -> bool {
        self.reason.as_ref().is_none_or(|r| r == &e.reason)
            && self.sender.as_ref().is_none_or(|s| s == &e.sender)
            && !(self.hide_replayed && e.replayed())
    }
}

fn stream_time(m: &jetstream::message::StreamMessage) -> DateTime<Utc> {
    DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond()).unwrap_or_default()
}

/// The outcome of replaying one entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplayResult {
    Replayed { id: u64, key: String, new_seq: u64 },
    Skipped { id: u64, key: String, why: String },
    Failed { id: u64, error: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplaySummary {
    pub replayed: usize,
    pub skipped: usize,
    pub failed: usize,
    pub results: Vec<ReplayResult>,
}

impl ReplaySummary {
    fn push(&mut self, r: ReplayResult) {
        match &r {
            ReplayResult::Replayed { .. } => self.replayed += 1,
            ReplayResult::Skipped { .. } => self.skipped += 1,
            ReplayResult::Failed { .. } => self.failed += 1,
        }
        self.results.push(r);
    }
}

#[derive(Clone)]
pub struct DlqStore {
    js: jetstream::Context,
    audit: kv::Store,
    keys: Arc<KeyRing>,
    idem: Idempotency,
    /// The `source` label of `leadrouter_replays_total` for replays through this handle.
    replay_source: &'static str,
    /// The routers' grouping: a replay goes straight to its lead's partition. Without it (a
    /// store opened by a tool) it goes to `leads.in.{sender}` and the routers re-partition it.
    grouping: Option<crate::intake::Grouping>,
}

/// What a failed `get_stream(LEADS_DLQ)` was doing.
const OPEN_STREAM: &str = "opening stream LEADS_DLQ";

fn value(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| v.as_str().to_string())
}

fn audit_key(id: u64) -> String {
    format!("dlq-{id}")
}

impl DlqStore {
    pub async fn open(
        js: jetstream::Context,
        keys: Arc<KeyRing>,
        idem: Idempotency,
    ) -> Result<DlqStore, DlqStoreError> {
        let audit = js
            .get_key_value(KV_DLQ_AUDIT)
            .await
            .map_err(NatsError::during("opening bucket leads_dlq_audit"))?;
        Ok(DlqStore {
            js,
            audit,
            keys,
            idem,
            replay_source: crate::telemetry::metrics::replay_source::ADMIN,
            grouping: None,
        })
    }

    /// The same store, counting its replays under `source` in `leadrouter_replays_total`
    /// (`admin` by default; replays whose `by` is `cli:<user>` count as `cli`).
    pub fn with_replay_source(mut self, source: &'static str) -> Self {
        self.replay_source = source;
        self
    }

    pub fn with_grouping(mut self, grouping: crate::intake::Grouping) -> Self {
        self.grouping = Some(grouping);
        self
    }

    fn entry_from(&self, id: u64, headers: &HeaderMap, time: DateTime<Utc>) -> DlqEntry {
        let num = |name: &str| value(headers, name).and_then(|v| v.parse::<u64>().ok());
        DlqEntry {
            id,
            sender: value(headers, hdr::SENDER).unwrap_or_default(),
            key: value(headers, hdr::KEY).unwrap_or_default(),
            reason: value(headers, hdr::REASON).unwrap_or_default(),
            last_error: value(headers, hdr::LAST_ERROR).unwrap_or_default(),
            attempts: num(hdr::ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            original_seq: num(hdr::ORIGINAL_SEQ).unwrap_or(0),
            received_at: value(headers, header::RECEIVED_AT),
            first_attempt_at: value(headers, hdr::FIRST_ATTEMPT),
            last_attempt_at: value(headers, hdr::LAST_ATTEMPT),
            dead_at: crate::timestamp::format(time),
            preview: value(headers, hdr::PREVIEW)
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or_default(),
            replays: Vec::new(),
            key_id: value(headers, hdr::KEY_ID).unwrap_or_default(),
            unreadable: None,
        }
    }

    async fn replays(&self, id: u64) -> Result<(Vec<ReplayMark>, u64), DlqStoreError> {
        match self
            .audit
            .entry(audit_key(id))
            .await
            .map_err(|e| NatsError::new(format!("reading the replays of DLQ entry {id}"), e))?
        {
            Some(e) if e.operation == kv::Operation::Put => Ok((
                serde_json::from_slice(&e.value).unwrap_or_default(),
                e.revision,
            )),
            _ => Ok((Vec::new(), 0)),
        }
    }

    /// Entries matching `filter`, oldest first.
    pub async fn list(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, DlqStoreError> {
        let stream = self
            .js
            .get_stream(STREAM_DLQ)
            .await
            .map_err(NatsError::during(OPEN_STREAM))?;
        let deliver_policy = match (filter.after_id, filter.since) {
            (Some(after), _) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            (None, Some(since)) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    since.timestamp_nanos_opt().unwrap_or(0) as i128,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            },
            (None, None) => consumer::DeliverPolicy::All,
        };
        let filter_subject = filter
            .sender
            .as_ref()
            .map(|s| format!("{SUBJECT_DLQ_PREFIX}{s}"))
            .unwrap_or_default();
        let info = stream
            .get_info()
            .await
            .map_err(NatsError::during("reading the info of stream LEADS_DLQ"))?;
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return Ok(out);
        }
        // An ordered consumer streams the range without one request per entry.
        let c = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                filter_subject,
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(NatsError::during("creating a consumer to list the DLQ"))?;
        let mut msgs = c
            .messages()
            .await
            .map_err(NatsError::during("listing the DLQ"))?;
        loop {
            let next = tokio::time::timeout(std::time::Duration::from_secs(2), msgs.next()).await;
            let Ok(Some(Ok(m))) = next else { break };
            let Ok(meta) = m.info() else { break };
            let (seq, pending) = (meta.stream_sequence, meta.pending);
            let time: DateTime<Utc> = DateTime::from_timestamp(
                meta.published.unix_timestamp(),
                meta.published.nanosecond(),
            )
            .unwrap_or_default();
            if let Some(h) = &m.headers {
                let mut e = self.entry_from(seq, h, time);
                e.replays = self.replays(seq).await?.0;
                if filter.matches(&e) {
                    out.push(e);
                }
            }
            if pending == 0 || seq >= info.state.last_sequence {
                break;
            }
        }
        Ok(out)
    }

    /// The entry's metadata, which needs no key; whether the payload opens is reported in
    /// `unreadable` rather than hiding the entry.
    pub async fn get(&self, id: u64) -> Result<DlqEntry, DlqStoreError> {
        match self.get_with_payload(id).await {
            Ok((entry, _, _)) => Ok(entry),
            Err(DlqStoreError::Unreadable { source, .. }) => {
                let m = self.raw(id).await?;
                let mut e = self.entry_from(id, &m.headers, stream_time(&m));
                e.replays = self.replays(id).await?.0;
                e.unreadable = Some(chain(&source));
                Ok(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn raw(&self, id: u64) -> Result<jetstream::message::StreamMessage, DlqStoreError> {
        let stream = self
            .js
            .get_stream(STREAM_DLQ)
            .await
            .map_err(NatsError::during(OPEN_STREAM))?;
        stream
            .get_raw_message(id)
            .await
            .map_err(|_| DlqStoreError::NotFound(id))
    }

    /// The entry, its opened payload and the lead's `traceparent` (for a replay's trace link).
    async fn get_with_payload(
        &self,
        id: u64,
    ) -> Result<(DlqEntry, Bytes, Option<String>), DlqStoreError> {
        let m = self.raw(id).await?;
        let mut e = self.entry_from(id, &m.headers, stream_time(&m));
        e.replays = self.replays(id).await?.0;
        let key_id = value(&m.headers, hdr::KEY_ID).unwrap_or_default();
        let plain = self
            .keys
            .open(&key_id, &m.payload, dlq_id(e.original_seq).as_bytes())
            .map_err(|source| DlqStoreError::Unreadable { id, source })?;
        let traceparent = value(&m.headers, header::TRACEPARENT);
        Ok((e, Bytes::from(plain), traceparent))
    }

    /// Republishes one entry with a fresh `Nats-Msg-Id` (so the dedupe window does not swallow
    /// it) and the same lead key (so a lead that did reach a sink is not written twice).
    pub async fn replay(
        &self,
        id: u64,
        reason: &str,
        by: &str,
    ) -> Result<ReplayResult, DlqStoreError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(DlqStoreError::NoReason);
        }
        let (entry, payload, traceparent) = match self.get_with_payload(id).await {
            Ok(v) => v,
            Err(DlqStoreError::NotFound(id)) => return Err(DlqStoreError::NotFound(id)),
            Err(e) => {
                return Ok(ReplayResult::Failed {
                    id,
                    error: chain(&e),
                })
            }
        };
        if let Ok(Some((state, _))) = self
            .idem
            .get(&entry.key)
            .await
            .map(|o| o.map(|(e, r)| (e.state, r)))
        {
            if state == LeadState::Done {
                return Ok(ReplayResult::Skipped {
                    id,
                    key: entry.key,
                    why: "already delivered to every sink".into(),
                });
            }
        }
        let envelope = message::decode_envelope(&payload).ok();
        let sender = envelope
            .as_ref()
            .map(|e| e.sender.clone())
            .unwrap_or_else(|| entry.sender.clone());
        let mut headers = LeadHeaders {
            msg_id: Some(format!(
                "replay:{id}:{}",
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            )),
            received_at: entry.received_at.clone(),
            replay: Some(Replay {
                of: id.to_string(),
                reason: Some(one_line(reason)),
                traceparent: None,
            }),
            ..LeadHeaders::default()
        };
        // Straight to the lead's partition when we know the routers' grouping; otherwise the
        // un-partitioned form, which the `router` consumer re-partitions (one at a time).
        let mut partition = None;
        if let Some(env) = &envelope {
            headers.schema = Some(env.schema.clone());
            headers.group = Some(match &self.grouping {
                Some(g) => {
                    let (group, p) = g.locate(&env.fields);
                    partition = Some(p);
                    group
                }
                None => crate::intake::envelope::email_hash(&env.fields),
            });
        }
        // Traces: a replay starts a new trace (a root span) linked to the original lead's trace;
        // the republished lead carries the new `traceparent`, and the original one for the
        // handler's own link.
        let span = crate::telemetry::traces::trace_span!(parent: None, "replay", otel.kind = "producer", leadrouter.dlq_id = id as i64, leadrouter.key = %entry.key, leadrouter.replay = true);
        if !span.is_none() {
            crate::telemetry::traces::link(&span, traceparent.as_deref());
            if let Some(r) = headers.replay.as_mut() {
                r.traceparent = traceparent;
            }
        }
        // The bytes as dead-lettered: the handler sees exactly the lead that failed.
        let (subject, mut h, payload) =
            message::encode_stored(&sender, partition, &headers, payload);
        crate::telemetry::traces::inject(&span, &mut h);
        let ack = self
            .js
            .publish_with_headers(subject, h, payload)
            .await
            .map_err(|e| NatsError::new(format!("republishing DLQ entry {id}"), e))?
            .await
            .map_err(|e| NatsError::new(format!("republishing DLQ entry {id}"), e))?;
        let mark = ReplayMark {
            at: crate::timestamp::now(),
            reason: reason.to_string(),
            by: by.to_string(),
            new_seq: ack.sequence,
        };
        let source = crate::telemetry::metrics::replay_source_of(self.replay_source, by);
        crate::telemetry::metrics::metrics().replayed(source);
        self.record(id, mark).await?;
        tracing::info!(dlq_id = id, key = %entry.key, new_seq = ack.sequence, replay = true, stage = "replay", outcome = "replayed", "DLQ entry replayed");
        Ok(ReplayResult::Replayed {
            id,
            key: entry.key,
            new_seq: ack.sequence,
        })
    }

    async fn record(&self, id: u64, mark: ReplayMark) -> Result<(), DlqStoreError> {
        const TRIES: u32 = 8;
        let mut tries = 0;
        loop {
            tries += 1;
            let (mut marks, revision) = self.replays(id).await?;
            marks.push(mark.clone());
            let value = Bytes::from(serde_json::to_vec(&marks).unwrap_or_default());
            let res: Result<u64, async_nats::Error> = if revision == 0 {
                self.audit
                    .create(audit_key(id), value)
                    .await
                    .map_err(Into::into)
            } else {
                self.audit
                    .update(audit_key(id), value, revision)
                    .await
                    .map_err(Into::into)
            };
            match res {
                Ok(_) => return Ok(()),
                // Lost a race with another replay of the entry (or NATS is away): read again.
                Err(_) if tries < TRIES => {}
                Err(source) => {
                    return Err(NatsError::new(
                        format!("could not record the replay of {id}"),
                        source,
                    )
                    .into())
                }
            }
        }
    }

    /// Replays every entry matching `filter` (replayed ones are skipped unless the filter asks
    /// to include them), calling `progress(done, total)` after each.
    pub async fn replay_matching(
        &self,
        filter: &DlqFilter,
        reason: &str,
        by: &str,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<ReplaySummary, DlqStoreError> {
        if reason.trim().is_empty() {
            return Err(DlqStoreError::NoReason);
        }
        let entries = self.list(filter).await?;
        let total = entries.len();
        let mut summary = ReplaySummary::default();
        for (i, e) in entries.into_iter().enumerate() {
            // A sweep by filter leaves entries that were replayed before alone (replay one by id
            // to repeat it): a batch run twice, or while new failures arrive, stays safe.
            let r = if e.replayed() {
                ReplayResult::Skipped {
                    id: e.id,
                    key: e.key,
                    why: "replayed before".into(),
                }
            } else {
                match self.replay(e.id, reason, by).await {
                    Ok(r) => r,
                    Err(err) => ReplayResult::Failed {
                        id: e.id,
                        error: chain(&err),
                    },
                }
            };
            summary.push(r);
            progress(i + 1, total);
        }
        Ok(summary)
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}
