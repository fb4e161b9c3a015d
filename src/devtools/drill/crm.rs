//! `--crm`: which of the sandbox's CRMs the drill's router writes to, how that CRM is set up,
//! and how its books are read back lead by lead.
//!
//! - `http` (the default): the sandbox's `/leads` CRM through an `http` sink, one POST per lead
//!   with an `Idempotency-Key` it honours; one record per key.
//! - `hubspot`: the HubSpot personality at a Starter account's limits (100 requests per rolling
//!   10 s, 250,000 a day) through a `hubspot` sink at its defaults, which are that tier's. It
//!   keeps ONE contact per email, so two leads of a shared inbox land on one contact: the books
//!   are kept per lead from each contact's write history. The sink maps the lead's key to the
//!   `leadrouter_key` property, so each history entry names the lead written; a lead is written
//!   once when exactly one entry carries its key, bar repeats the upsert absorbed
//!   ([`count_writes`]).
//! - `salesforce`: the Salesforce personality at a developer org's 15,000 API calls per rolling
//!   24 h through a `salesforce` sink with OAuth client credentials. Each lead is a `Lead`
//!   upserted by its key (`Leadrouter_Key__c`); the record's history holds the lead's writes.
//!   The storm also expires every token once mid-run ([`super::storm::token_expiry_at`]).
//!
//! The personalities are in the sandbox's `crm` fault scope, so the storm flaps them exactly as
//! it flaps `/leads`. Neither default run comes near a daily limit (about 1,000 calls to
//! HubSpot, 550 to Salesforce for 100,000 leads), so the limits stay the tiers' own.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value};

use super::options::CrmKind;
use super::report::{CrmApiReport, CrmKey, TokenExpiry};
use super::secrets::random_hex;
use super::vendor::LeadSpec;
use crate::devtools::harness::{http_sink, hubspot_sink, salesforce_sink};
use crate::devtools::sandbox_crm::{HubspotConfig, IdempotencyMode, SalesforceConfig, SandboxCrm};
use crate::sinks::{class, SinkConfig};

/// The env vars of the drill's CRM credentials: the drill's own names, so that an operator's
/// real `HUBSPOT_TOKEN` or Salesforce secrets in the environment are never sent to the sandbox.
const HUBSPOT_TOKEN_ENV: &str = "LEADROUTER_DRILL_HUBSPOT_TOKEN";
const SF_CLIENT_ID_ENV: &str = "LEADROUTER_DRILL_SF_CLIENT_ID";
const SF_CLIENT_SECRET_ENV: &str = "LEADROUTER_DRILL_SF_CLIENT_SECRET";
const SF_CLIENT_ID: &str = "leadrouter-drill";

/// The HubSpot property the sink writes the lead's key to (the harness's mapping).
const KEY_PROPERTY: &str = "leadrouter_key";

/// The sink's read timeout for the http CRM: the storm's slow phase (6 s) runs past it.
const HTTP_SINK_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets the sandbox's CRM up for `kind` and puts the credentials the router's sink needs in
/// `env` (fresh ones per run: the HubSpot personality then checks the token it is sent).
pub(super) fn prepare(kind: CrmKind, crm: &SandboxCrm, env: &mut HashMap<String, String>) {
    match kind {
        CrmKind::Http => crm.set_idempotency(IdempotencyMode::Honor),
        CrmKind::Hubspot => {
            let token = format!("pat-drill-{}", random_hex(16));
            // The personality's defaults are HubSpot's Free/Starter tier.
            crm.set_hubspot(HubspotConfig {
                token: Some(token.clone()),
                ..HubspotConfig::default()
            });
            env.insert(HUBSPOT_TOKEN_ENV.into(), token);
        }
        CrmKind::Salesforce => {
            let secret = random_hex(16);
            // The personality's defaults are a Developer Edition org's (15,000 calls a day).
            crm.set_salesforce(SalesforceConfig {
                client_id: SF_CLIENT_ID.into(),
                client_secret: secret.clone(),
                ..SalesforceConfig::default()
            });
            env.insert(SF_CLIENT_ID_ENV.into(), SF_CLIENT_ID.into());
            env.insert(SF_CLIENT_SECRET_ENV.into(), secret);
        }
    }
}

/// The router's CRM sink, named `crm`. The batching sinks keep their defaults (a Starter
/// account's pace, 200 ms linger, two calls in flight): the drill runs what an operator gets.
pub(super) fn sink(kind: CrmKind, crm_url: &str) -> SinkConfig {
    match kind {
        CrmKind::Http => http_sink("crm", format!("{crm_url}/leads"), Some(HTTP_SINK_TIMEOUT)),
        CrmKind::Hubspot => SinkConfig::new("crm", hubspot_sink(crm_url, HUBSPOT_TOKEN_ENV)),
        CrmKind::Salesforce => SinkConfig::new(
            "crm",
            crate::sinks::SalesforceSinkConfig {
                client_id_env: Some(SF_CLIENT_ID_ENV.into()),
                client_secret_env: Some(SF_CLIENT_SECRET_ENV.into()),
                ..salesforce_sink(crm_url)
            },
        ),
    }
}

/// What the CRM holds, by lead key. A write that names no lead gets a key of its own, which no
/// lead has: the reconciliation counts it as a stranger.
pub(super) fn books(kind: CrmKind, crm: &SandboxCrm) -> HashMap<String, CrmKey> {
    let mut out: HashMap<String, CrmKey> = HashMap::new();
    match kind {
        CrmKind::Http => {
            for k in crm.keys() {
                out.insert(k.key.clone(), CrmKey::from(&k));
            }
        }
        CrmKind::Hubspot => {
            for c in crm.hubspot_contacts() {
                let writes = c.history.iter().enumerate().map(|(i, w)| {
                    let key = match w.get(KEY_PROPERTY).and_then(Value::as_str) {
                        Some(k) => k.to_string(),
                        None => {
                            format!("hubspot-contact-{}-write-{i}-without-{KEY_PROPERTY}", c.id)
                        }
                    };
                    (key, w)
                });
                count_writes(&mut out, writes, &c.created_at, &c.updated_at);
            }
        }
        CrmKind::Salesforce => {
            for r in crm.salesforce_records() {
                let writes = r.history.iter().map(|w| (r.external_id.clone(), w));
                count_writes(&mut out, writes, &r.created_at, &r.updated_at);
            }
        }
    }
    out
}

/// Counts one record's write history (contact or Lead, oldest first) into the books: each
/// write as the `(lead key, fields)` it carried.
///
/// A write that repeats the one just before it on the same record, the same lead with the same
/// fields, is *absorbed*: the vendor's upsert (by email, by the external id) found the record
/// and changed nothing, as the http CRM's `Idempotency-Key` absorbs a repeated POST. A batch
/// the vendor applied just before a kill -9, or before its leads were recorded done, is sent
/// again that way. Any other further write of a lead is a duplicate: its key on a second
/// record, or written again after another lead's write to its contact, which put the older
/// data back over the newer.
///
/// The record keeps only when it was created and last updated, so a lead's own write time is
/// known when it wrote first (`created_at`) or last (`updated_at`).
fn count_writes<'a>(
    books: &mut HashMap<String, CrmKey>,
    writes: impl Iterator<Item = (String, &'a Map<String, Value>)>,
    created_at: &str,
    updated_at: &str,
) {
    let writes: Vec<_> = writes.collect();
    let last = writes.len().saturating_sub(1);
    for (i, (key, fields)) in writes.iter().enumerate() {
        let repeat = i > 0 && writes[i - 1].0 == *key && writes[i - 1].1 == *fields;
        let e = books.entry(key.clone()).or_default();
        if repeat {
            e.absorbed += 1;
            continue;
        }
        if e.written == 0 {
            e.first_write = match i {
                0 => Some(created_at.to_string()),
                i if i == last => Some(updated_at.to_string()),
                _ => None,
            };
        }
        e.written += 1;
    }
}

/// The sandbox's Salesforce token figures when the storm expired its tokens.
#[derive(Debug, Clone, Copy)]
pub(super) struct ExpiryMark {
    pub at_s: f64,
    pub tokens_issued_before: u64,
    pub unauthorized_before: u64,
}

/// Expires every token the Salesforce personality issued, and notes its figures first.
pub(super) fn expire_tokens(crm: &SandboxCrm, at_s: f64) -> ExpiryMark {
    let before = crm.salesforce_stats();
    crm.expire_salesforce_tokens();
    ExpiryMark {
        at_s,
        tokens_issued_before: before.tokens_issued,
        unauthorized_before: before.unauthorized,
    }
}

/// One DLQ entry as the drill keeps it.
#[derive(Debug, Clone)]
pub(super) struct Dead {
    pub reason: String,
    pub last_error: String,
}

/// Whether a lead died of a throttle: its last error is a vendor's spent budget or a 429
/// (`"crm: throttled: ..."`, `"crm: rate_limited: ..."`), or names Salesforce's limit.
pub(super) fn died_throttled(d: &Dead) -> bool {
    let class = d.last_error.split(": ").nth(1).unwrap_or_default();
    class == class::THROTTLED
        || class == class::RATE_LIMITED
        || d.last_error.contains("REQUEST_LIMIT_EXCEEDED")
}

/// The vendor's side of the run, for the batching CRMs; `None` for the http CRM.
pub(super) fn api_report(
    kind: CrmKind,
    crm: &SandboxCrm,
    leads: &[LeadSpec],
    books: &HashMap<String, CrmKey>,
    dlq: &HashMap<String, Dead>,
    expiry: Option<ExpiryMark>,
) -> Option<CrmApiReport> {
    let throttle_dlq = dlq.values().filter(|d| died_throttled(d)).count();
    let mean = |leads: u64, calls: u64| match calls {
        0 => 0.0,
        n => leads as f64 / n as f64,
    };
    match kind {
        CrmKind::Http => None,
        CrmKind::Hubspot => {
            let s = crm.hubspot_stats();
            let cfg = crm.hubspot_config();
            let contacts = crm.hubspot_contacts();
            let emails: HashSet<String> = leads
                .iter()
                .filter(|l| books.get(&l.key).is_some_and(|k| k.written > 0))
                .map(|l| l.email.trim().to_lowercase())
                .collect();
            let shared = contacts
                .iter()
                .filter(|c| {
                    let keys: HashSet<&str> = c
                        .history
                        .iter()
                        .filter_map(|w| w.get(KEY_PROPERTY).and_then(Value::as_str))
                        .collect();
                    keys.len() > 1
                })
                .count();
            Some(CrmApiReport {
                limits: format!(
                    "{} requests per rolling {}, {} a day",
                    cfg.burst_limit,
                    humantime::format_duration(cfg.interval),
                    cfg.daily_limit
                ),
                requests: s.requests,
                calls: s.batch_calls,
                leads_in_calls: s.inputs,
                max_leads_per_call: s.max_inputs_in_a_call,
                mean_leads_per_call: mean(s.inputs, s.batch_calls),
                throttled: s.rate_limited + s.rate_limited_daily,
                throttle_answer: "429".into(),
                daily_used: s.daily_used,
                daily_limit: cfg.daily_limit,
                unauthorized: s.unauthorized,
                throttle_dlq,
                contacts: Some(contacts.len()),
                distinct_emails: Some(emails.len()),
                shared_contacts: Some(shared),
                tokens_issued: None,
                token_expiry: None,
            })
        }
        CrmKind::Salesforce => {
            let s = crm.salesforce_stats();
            let cfg = crm.salesforce_config();
            Some(CrmApiReport {
                limits: format!("{} API calls per rolling 24 h", cfg.daily_limit),
                requests: s.requests,
                calls: s.collection_calls,
                leads_in_calls: s.records,
                max_leads_per_call: s.max_records_in_a_call,
                mean_leads_per_call: mean(s.records, s.collection_calls),
                throttled: s.limit_exceeded,
                throttle_answer: "403 REQUEST_LIMIT_EXCEEDED".into(),
                daily_used: s.api_used,
                daily_limit: cfg.daily_limit,
                unauthorized: s.unauthorized,
                throttle_dlq,
                contacts: None,
                distinct_emails: None,
                shared_contacts: None,
                tokens_issued: Some(s.tokens_issued),
                token_expiry: expiry.map(|m| TokenExpiry {
                    at_s: m.at_s,
                    unauthorized_after: s.unauthorized.saturating_sub(m.unauthorized_before),
                    tokens_issued_after: s.tokens_issued.saturating_sub(m.tokens_issued_before),
                }),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_repeat_of_the_same_write_is_absorbed_and_anything_else_is_a_duplicate() {
        let a1 = fields(json!({"email": "a@x.com", "firstname": "Ann", "leadrouter_key": "a"}));
        let b1 = fields(json!({"email": "a@x.com", "firstname": "Bo", "leadrouter_key": "b"}));
        let c1 = fields(json!({"email": "c@x.com", "leadrouter_key": "c"}));
        let mut books = HashMap::new();
        // A shared inbox: a, a again (a re-sent batch), then b; then a on top of b.
        let contact = [("a", &a1), ("a", &a1), ("b", &b1), ("a", &a1)];
        count_writes(
            &mut books,
            contact.iter().map(|(k, f)| (k.to_string(), *f)),
            "t-created",
            "t-updated",
        );
        // c on its own contact, then on a second one.
        for _ in 0..2 {
            count_writes(
                &mut books,
                [("c".to_string(), &c1)].into_iter(),
                "t-c",
                "t-c",
            );
        }
        let a = &books["a"];
        assert_eq!(
            (a.written, a.absorbed),
            (2, 1),
            "older data back over b's: {a:?}"
        );
        assert_eq!(a.first_write.as_deref(), Some("t-created"));
        let b = &books["b"];
        assert_eq!((b.written, b.absorbed), (1, 0));
        assert_eq!(
            b.first_write, None,
            "neither the contact's first nor last write"
        );
        assert_eq!((books["c"].written, books["c"].absorbed), (2, 0));
    }

    fn dead(last_error: &str) -> Dead {
        Dead {
            reason: "retries_exhausted".into(),
            last_error: last_error.into(),
        }
    }

    #[test]
    fn a_throttle_death_is_told_by_its_class() {
        assert!(died_throttled(&dead(
            "crm: throttled: the vendor's budget is spent; retrying in 15m"
        )));
        assert!(died_throttled(&dead("crm: rate_limited: HTTP 429")));
        assert!(died_throttled(&dead(
            "crm: http_4xx: HTTP 403: [{\"errorCode\":\"REQUEST_LIMIT_EXCEEDED\"}]"
        )));
        assert!(!died_throttled(&dead("crm: http_5xx: HTTP 500")));
        assert!(!died_throttled(&dead("lead.v1: /email: not an email")));
    }
}
