//! What the sandbox keeps: CRM records, per-key and per-message bookkeeping, the totals, and
//! the writes that update them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How `POST /leads` treats a repeated `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdempotencyMode {
    /// 200 with the existing record's id, `"created": false`.
    #[default]
    Honor,
    /// Like a legacy CRM: every POST creates a record, so duplicates become visible.
    Ignore,
    /// 409 Conflict with the existing record's id (some CRMs answer so).
    Conflict,
}

/// One CRM record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmRecord {
    /// `crm_<n>`.
    pub id: String,
    /// The idempotency key (POST), the path key (PUT) or the body's `key`.
    pub key: Option<String>,
    pub body: Value,
    pub created_at: String,
    pub updated_at: String,
    /// 2xx answers for this record (creates, honoured repeats, upserts).
    pub writes: u64,
}

/// Everything the sandbox saw for one lead key on the CRM paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyStats {
    pub key: String,
    /// Write requests (POST/PUT) for the key that reached the server, faulted ones included.
    pub requests: u64,
    /// Of those, answered 2xx.
    pub writes: u64,
    /// Records created for the key: 1 means exactly once.
    pub created: u64,
    pub record_ids: Vec<String>,
    /// Body of the key's current record.
    pub latest_body: Option<Value>,
    pub first_write: Option<String>,
    pub last_write: Option<String>,
    /// Headers of the latest request for the key (lower-case names), e.g. to check auth.
    pub last_headers: BTreeMap<String, String>,
}

/// One analytics message, by `messageId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsMessage {
    pub message_id: String,
    /// `identify`, `track`, ...
    pub kind: String,
    /// Requests carrying this messageId (faulted ones included).
    pub requests: u64,
    /// Answered 2xx; more than 1 means the client sent it again (deduped by messageId).
    pub calls: u64,
    pub user_id: Option<String>,
    pub event: Option<String>,
    /// The latest body.
    pub body: Value,
    pub last_headers: BTreeMap<String, String>,
}

/// Totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request except the control routes.
    pub requests: u64,
    pub crm_requests: u64,
    pub analytics_requests: u64,
    /// Requests answered with an injected fault (status, hold or reset).
    pub faults_injected: u64,
    /// CRM 2xx writes.
    pub writes: u64,
    /// CRM records created.
    pub records: u64,
    /// Distinct CRM keys seen.
    pub keys: u64,
    /// Keys with more than one record: exactly-once violations.
    pub duplicate_keys: u64,
    pub identify_calls: u64,
    pub track_calls: u64,
    pub batch_calls: u64,
    /// Distinct analytics messageIds.
    pub analytics_messages: u64,
    /// messageIds accepted more than once.
    pub duplicate_messages: u64,
    pub idempotency: IdempotencyMode,
}

#[derive(Default)]
pub(super) struct Data {
    pub(super) next_id: u64,
    pub(super) records: Vec<CrmRecord>,
    /// Key -> index of its latest record.
    pub(super) by_key: HashMap<String, usize>,
    pub(super) keys: HashMap<String, KeyStats>,
    pub(super) messages: HashMap<String, AnalyticsMessage>,
    /// First-seen order, for listing.
    pub(super) message_order: Vec<String>,
    pub(super) stats: Stats,
}

pub(super) fn messages_in_order(d: &Data) -> Vec<AnalyticsMessage> {
    d.message_order
        .iter()
        .filter_map(|id| d.messages.get(id).cloned())
        .collect()
}

pub(super) fn now() -> String {
    crate::timestamp::now()
}

pub(super) fn key_stats<'a>(d: &'a mut Data, key: &str) -> &'a mut KeyStats {
    let stats = &mut d.stats;
    d.keys.entry(key.to_string()).or_insert_with(|| {
        stats.keys += 1;
        KeyStats {
            key: key.to_string(),
            requests: 0,
            writes: 0,
            created: 0,
            record_ids: Vec::new(),
            latest_body: None,
            first_write: None,
            last_write: None,
            last_headers: BTreeMap::new(),
        }
    })
}

/// Counts a 2xx write for `key`.
pub(super) fn note_write(d: &mut Data, key: Option<&str>) {
    d.stats.writes += 1;
    if let Some(k) = key {
        let t = now();
        let ks = key_stats(d, k);
        ks.writes += 1;
        if ks.first_write.is_none() {
            ks.first_write = Some(t.clone());
        }
        ks.last_write = Some(t);
    }
}

pub(super) fn create(d: &mut Data, key: Option<String>, body: Value) -> String {
    d.next_id += 1;
    let id = format!("crm_{}", d.next_id);
    let t = now();
    d.records.push(CrmRecord {
        id: id.clone(),
        key: key.clone(),
        body: body.clone(),
        created_at: t.clone(),
        updated_at: t,
        writes: 1,
    });
    d.stats.records += 1;
    if let Some(k) = &key {
        d.by_key.insert(k.clone(), d.records.len() - 1);
        let ks = key_stats(d, k);
        ks.created += 1;
        ks.record_ids.push(id.clone());
        ks.latest_body = Some(body);
        if ks.created == 2 {
            d.stats.duplicate_keys += 1;
        }
    }
    note_write(d, key.as_deref());
    id
}
