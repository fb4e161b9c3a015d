//! The Salesforce personality, as the REST API documents it:
//! - `POST /services/oauth2/token` (client credentials);
//! - `PATCH /services/data/vX.Y/composite/sobjects/{Object}/{ExternalIdField}` (the sObject
//!   Collections upsert, at most `max_records` records, `allOrNone`);
//! - `PATCH /services/data/vX.Y/sobjects/{Object}/{ExternalIdField}/{value}` (single upsert).
//!
//! Salesforce differs from HubSpot in ways a client must handle. Tokens expire; the limit is
//! API usage over a rolling 24 h, reported on every answer in `Sforce-Limit-Info`; and going over
//! it is a **403** `REQUEST_LIMIT_EXCEEDED` with no `Retry-After`, not a 429. Control and
//! inspection live under `/_sandbox/salesforce` (see `docs/sandbox-crm-personalities.md`).
//!
//! A request goes through these steps in order:
//! - Routing: an unknown path gets 404 and a wrong method 405. These are not faulted or counted.
//! - The `crm` fault scope. The token endpoint is faulted too: an auth server that fails is
//!   part of what a client must survive. A faulted request counts toward no usage.
//! - Auth (data paths). A 401 does not count toward usage.
//! - Usage. Every data request that gets this far counts, 403s included.
//! - The body.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use warp::http::header::HOST;
use warp::http::{HeaderName, HeaderValue, Method};
use warp::reply::Response;

use super::hubspot::{bearer, plausible_email};
use super::records::now;
use super::routes::{crm_fault, Req};
use super::state::Shared;
use super::wire::{bad_request, json_response, not_found, percent_decode, to_json};
use super::SandboxCrm;

/// How the Salesforce personality behaves. JSON (`POST /_sandbox/salesforce`): every field
/// optional, left-out fields take their defaults, `token_lifetime` is humantime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesforceConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Also accepted as a bearer token, and never expires.
    pub static_token: Option<String>,
    /// An issued token stops working this long after it was issued.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// API requests allowed per rolling 24 h.
    pub daily_limit: u64,
    /// Records allowed in one collection upsert.
    pub max_records: usize,
    /// Fields a record needs when it is created (not when it is updated), e.g. `["LastName"]`.
    pub required_on_create: Vec<String>,
    /// Emails refused beyond the format check (compared lowercased).
    pub reject_emails: Vec<String>,
    /// External id values that "match several records": the upsert cannot tell which one.
    pub multi_match: Vec<String>,
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        SalesforceConfig {
            client_id: "sandbox-client".into(),
            client_secret: "sandbox-secret".into(),
            static_token: None,
            token_lifetime: Duration::from_secs(2 * 3600),
            daily_limit: 15_000,
            max_records: 200,
            required_on_create: Vec::new(),
            reject_emails: Vec::new(),
            multi_match: Vec::new(),
        }
    }
}

/// One Salesforce record, found by (object, external id field, external id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SalesforceRecord {
    /// `00Q` (Lead), `003` (Contact), `001` (Account), `006` (Opportunity), else `a00`, then
    /// 15 characters.
    pub id: String,
    pub object: String,
    pub external_id_field: String,
    pub external_id: String,
    /// Every field written so far, merged (later write wins per field); no `attributes`.
    pub fields: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
    /// Upserts applied to this record: 1 means exactly once.
    pub writes: u64,
    /// The fields of each applied upsert, in order.
    pub history: Vec<Map<String, Value>>,
}

/// What the Salesforce personality saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesforceStats {
    /// Requests to a Salesforce route: token requests, faulted ones and 401s included.
    pub requests: u64,
    /// Collection upserts that passed auth and the usage limit (whatever their answer).
    pub collection_calls: u64,
    /// Records in those calls (over-cap calls included).
    pub records: u64,
    /// The largest call seen, over-cap ones included.
    pub max_records_in_a_call: usize,
    /// Records answered with their own error: collection records with `success: false` and
    /// single upserts answered 4xx. Rolled-back records are not counted.
    pub rejected_records: u64,
    /// 403 `REQUEST_LIMIT_EXCEEDED`.
    pub limit_exceeded: u64,
    /// 401 `INVALID_SESSION_ID`.
    pub unauthorized: u64,
    pub tokens_issued: u64,
    /// API usage in the rolling 24 h now.
    pub api_used: u64,
}

// ---------------------------------------------------------------------------------------------
// API usage.

const USAGE_WINDOW: Duration = Duration::from_secs(24 * 3600);
const BUCKET: Duration = Duration::from_secs(1);

/// The rolling 24 h count, in one-second buckets so a long bench keeps at most 86,400 of them.
#[derive(Default)]
struct Usage {
    buckets: VecDeque<(Instant, u64)>,
    total: u64,
}

impl Usage {
    fn used(&mut self, now: Instant) -> u64 {
        while let Some(&(t, n)) = self.buckets.front() {
            if now.saturating_duration_since(t) < USAGE_WINDOW {
                break;
            }
            self.buckets.pop_front();
            self.total -= n;
        }
        self.total
    }

    fn add(&mut self, now: Instant, n: u64) {
        match self.buckets.back_mut() {
            Some((t, count)) if now.saturating_duration_since(*t) < BUCKET => *count += n,
            _ => self.buckets.push_back((now, n)),
        }
        self.total += n;
    }

    /// Usage is `used` now, as if that many requests had just happened.
    fn set(&mut self, now: Instant, used: u64) {
        self.buckets.clear();
        self.total = 0;
        self.add(now, used);
    }
}

// ---------------------------------------------------------------------------------------------
// State.

#[derive(Default)]
pub(super) struct SalesforceState {
    config: SalesforceConfig,
    /// Issued token -> when.
    tokens: HashMap<String, Instant>,
    usage: Usage,
    /// Creation order.
    records: Vec<SalesforceRecord>,
    /// (object, external id field, external id) -> index into `records`.
    index: HashMap<(String, String, String), usize>,
    next_id: u64,
    stats: SalesforceStats,
}

/// A record that passed its checks: its external id and the fields to merge.
struct Planned {
    external_id: String,
    fields: Map<String, Value>,
}

impl SalesforceState {
    fn stats(&mut self) -> SalesforceStats {
        SalesforceStats {
            api_used: self.usage.used(Instant::now()),
            ..self.stats.clone()
        }
    }

    fn authorized(&self, req: &Req, now: Instant) -> bool {
        let Some(t) = bearer(&req.headers) else {
            return false;
        };
        if self.config.static_token.as_deref() == Some(t) {
            return true;
        }
        self.tokens
            .get(t)
            .is_some_and(|&at| now.saturating_duration_since(at) < self.config.token_lifetime)
    }

    fn token(&mut self, req: &Req, instance_url: &str) -> Response {
        let form: HashMap<String, String> = form_urlencoded::parse(&req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return json_response(
                400,
                &json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"}),
            );
        }
        if form.get("client_id") != Some(&self.config.client_id)
            || form.get("client_secret") != Some(&self.config.client_secret)
        {
            return json_response(
                400,
                &json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
            );
        }
        let issued = Instant::now();
        let lifetime = self.config.token_lifetime;
        // Dead tokens are dropped here so a long run does not keep them all.
        self.tokens
            .retain(|_, at| issued.saturating_duration_since(*at) < lifetime);
        let token = format!("00Dsandbox!{:032x}", rand::random::<u128>());
        self.tokens.insert(token.clone(), issued);
        self.stats.tokens_issued += 1;
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        json_response(
            200,
            &json!({
                "access_token": token,
                "instance_url": instance_url,
                "id": format!("{instance_url}/id/00D000000000001AAA/005000000000001AAA"),
                "token_type": "Bearer",
                "issued_at": ms.to_string(),
                "signature": signature,
            }),
        )
    }

    fn email_refused(&self, email: &str) -> bool {
        let lower = email.to_lowercase();
        !plausible_email(email)
            || self
                .config
                .reject_emails
                .iter()
                .any(|r| r.to_lowercase() == lower)
    }

    /// Checks one record of `object` keyed by `field`. `will_exist` holds the external ids
    /// created by earlier records of the same call, which make this one an update.
    fn check(
        &self,
        object: &str,
        field: &str,
        rec: &Value,
        will_exist: &HashSet<String>,
    ) -> Result<Planned, Vec<Value>> {
        let Some(obj) = rec.as_object() else {
            return Err(vec![sf_error(
                "INVALID_TYPE",
                "A record must be a JSON object",
                &[],
            )]);
        };
        match obj
            .get("attributes")
            .and_then(|a| a.get("type"))
            .and_then(Value::as_str)
        {
            Some(t) if t == object => {}
            Some(t) => {
                return Err(vec![sf_error(
                    "INVALID_TYPE",
                    &format!("Record type {t} does not match the collection's object {object}"),
                    &[],
                )]);
            }
            None => {
                return Err(vec![sf_error(
                    "INVALID_TYPE",
                    &format!("attributes.type is required; this collection is {object}"),
                    &[],
                )]);
            }
        }
        let Some(external_id) = obj.get(field).and_then(text) else {
            return Err(vec![sf_error(
                "MISSING_ARGUMENT",
                &format!("{field} not specified"),
                &[],
            )]);
        };
        if self.config.multi_match.contains(&external_id) {
            return Err(vec![sf_error(
                "DUPLICATE_EXTERNAL_ID",
                &format!(
                    "more than one record found for external id field: [{}]",
                    multi_match_ids(object).join(", ")
                ),
                &[],
            )]);
        }
        let mut errors = Vec::new();
        if let Some(e) = obj
            .get("Email")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty() && self.email_refused(e))
        {
            errors.push(sf_error(
                "INVALID_EMAIL_ADDRESS",
                &format!("Email: invalid email address: {e}"),
                &["Email"],
            ));
        }
        let exists = will_exist.contains(&external_id)
            || self.index.contains_key(&(
                object.to_string(),
                field.to_string(),
                external_id.clone(),
            ));
        if !exists {
            let missing: Vec<&str> = self
                .config
                .required_on_create
                .iter()
                .filter(|f| obj.get(f.as_str()).and_then(text).is_none())
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                errors.push(sf_error(
                    "REQUIRED_FIELD_MISSING",
                    &format!("Required fields are missing: [{}]", missing.join(", ")),
                    &missing,
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut fields = obj.clone();
        fields.remove("attributes");
        // The key as the record holds it: text, even when the client sent a number.
        fields.insert(field.to_string(), Value::String(external_id.clone()));
        Ok(Planned {
            external_id,
            fields,
        })
    }

    /// Merges `p` into the record it names, creating it if needed: (id, created).
    fn upsert(&mut self, object: &str, field: &str, p: Planned) -> (String, bool) {
        let key = (object.to_string(), field.to_string(), p.external_id.clone());
        let t = now();
        if let Some(&i) = self.index.get(&key) {
            let r = &mut self.records[i];
            for (k, v) in &p.fields {
                r.fields.insert(k.clone(), v.clone());
            }
            r.updated_at = t;
            r.writes += 1;
            r.history.push(p.fields);
            return (r.id.clone(), false);
        }
        self.next_id += 1;
        let id = format!("{}{:012}AAA", key_prefix(object), self.next_id);
        self.records.push(SalesforceRecord {
            id: id.clone(),
            object: key.0.clone(),
            external_id_field: key.1.clone(),
            external_id: key.2.clone(),
            fields: p.fields.clone(),
            created_at: t.clone(),
            updated_at: t,
            writes: 1,
            history: vec![p.fields],
        });
        self.index.insert(key, self.records.len() - 1);
        (id, true)
    }

    fn collection(&mut self, object: &str, field: &str, body: Result<Value, String>) -> Response {
        self.stats.collection_calls += 1;
        let mut body = match body {
            Ok(Value::Object(o)) => o,
            Ok(_) => return parser_error("The request body must be a JSON object"),
            Err(e) => return parser_error(&e),
        };
        let all_or_none = match body.get("allOrNone") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return parser_error("allOrNone must be a boolean"),
        };
        let Some(Value::Array(records)) = body.remove("records") else {
            return parser_error("records must be an array");
        };
        self.stats.records += records.len() as u64;
        self.stats.max_records_in_a_call = self.stats.max_records_in_a_call.max(records.len());
        if records.len() > self.config.max_records {
            return json_response(
                400,
                &json!([{
                    "message": format!("Exceeded max limit of {} records", self.config.max_records),
                    "errorCode": "EXCEEDED_ID_LIMIT",
                }]),
            );
        }

        // Check everything before writing anything, so allOrNone can write nothing.
        let mut will_exist = HashSet::new();
        let mut plans = Vec::with_capacity(records.len());
        for rec in &records {
            let plan = self.check(object, field, rec, &will_exist);
            if let Ok(p) = &plan {
                will_exist.insert(p.external_id.clone());
            }
            plans.push(plan);
        }
        let failed = plans.iter().filter(|p| p.is_err()).count();
        self.stats.rejected_records += failed as u64;
        let failure = |errors: Vec<Value>| json!({"success": false, "errors": errors});

        let results: Vec<Value> = if all_or_none && failed > 0 {
            plans
                .into_iter()
                .map(|p| match p {
                    Err(errors) => failure(errors),
                    Ok(_) => failure(vec![sf_error(
                        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                        "Record rolled back because not all records were valid and the request \
                         was using AllOrNone header",
                        &[],
                    )]),
                })
                .collect()
        } else {
            plans
                .into_iter()
                .map(|p| match p {
                    Err(errors) => failure(errors),
                    Ok(p) => {
                        let (id, created) = self.upsert(object, field, p);
                        json!({"id": id, "success": true, "errors": [], "created": created})
                    }
                })
                .collect()
        };
        json_response(200, &Value::Array(results))
    }

    fn single(
        &mut self,
        version: &str,
        object: &str,
        field: &str,
        value: &str,
        body: Result<Value, String>,
    ) -> Response {
        let mut rec = match body {
            Ok(Value::Object(o)) => o,
            Ok(_) => return parser_error("The request body must be a JSON object"),
            Err(e) => return parser_error(&e),
        };
        if self.config.multi_match.iter().any(|m| m == value) {
            let urls: Vec<String> = multi_match_ids(object)
                .iter()
                .map(|id| format!("/services/data/{version}/sobjects/{object}/{id}"))
                .collect();
            return to_json(300, &urls);
        }
        // The key and the type come from the path; the same checks as a collection record.
        rec.insert("attributes".into(), json!({"type": object}));
        rec.insert(field.to_string(), Value::String(value.to_string()));
        match self.check(object, field, &Value::Object(rec), &HashSet::new()) {
            Ok(p) => {
                let (id, created) = self.upsert(object, field, p);
                json_response(
                    if created { 201 } else { 200 },
                    &json!({"id": id, "success": true, "errors": [], "created": created}),
                )
            }
            Err(errors) => {
                self.stats.rejected_records += 1;
                // A single resource answers errors as `errorCode`, a collection as `statusCode`.
                let errors: Vec<Value> = errors
                    .into_iter()
                    .map(|e| {
                        json!({"message": e["message"], "errorCode": e["statusCode"], "fields": e["fields"]})
                    })
                    .collect();
                json_response(400, &Value::Array(errors))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes.

enum Op {
    Token,
    Collection {
        object: String,
        field: String,
    },
    Single {
        version: String,
        object: String,
        field: String,
        value: String,
    },
}

/// `/services/...`; `rest` is the path after `services`.
pub(super) async fn handle(
    shared: &Shared,
    reset: &AtomicBool,
    req: &Req,
    rest: &[&str],
) -> Response {
    let patch = req.method == Method::PATCH;
    let op = match rest {
        ["oauth2", "token"] if req.method == Method::POST => Op::Token,
        ["oauth2", "token"] => return method_not_allowed(&req.method, "POST"),
        ["data", v, "composite", "sobjects", object, field] if is_version(v) => {
            if !patch {
                return method_not_allowed(&req.method, "PATCH");
            }
            Op::Collection {
                object: percent_decode(object),
                field: percent_decode(field),
            }
        }
        ["data", v, "sobjects", object, field, value] if is_version(v) => {
            if !patch {
                return method_not_allowed(&req.method, "PATCH");
            }
            Op::Single {
                version: v.to_string(),
                object: percent_decode(object),
                field: percent_decode(field),
                value: percent_decode(value),
            }
        }
        _ => {
            return json_response(
                404,
                &json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]),
            );
        }
    };
    if let Some(resp) = crm_fault(shared, reset, |st| st.salesforce.stats.requests += 1).await {
        return resp;
    }
    let (object, field, single) = match op {
        Op::Token => {
            let url = instance_url(shared, req);
            return shared.lock().salesforce.token(req, &url);
        }
        Op::Collection { object, field } => (object, field, None),
        Op::Single {
            version,
            object,
            field,
            value,
        } => (object, field, Some((version, value))),
    };
    let body: Result<Value, String> = serde_json::from_slice(&req.body).map_err(|e| e.to_string());

    let now = Instant::now();
    let mut st = shared.lock();
    let sf = &mut st.salesforce;
    if !sf.authorized(req, now) {
        sf.stats.unauthorized += 1;
        return json_response(
            401,
            &json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
        );
    }
    let over = sf.usage.used(now) >= sf.config.daily_limit;
    sf.usage.add(now, 1);
    let mut resp = if over {
        sf.stats.limit_exceeded += 1;
        json_response(
            403,
            &json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
        )
    } else {
        match single {
            None => sf.collection(&object, &field, body),
            Some((version, value)) => sf.single(&version, &object, &field, &value, body),
        }
    };
    let info = format!("api-usage={}/{}", sf.usage.used(now), sf.config.daily_limit);
    if let Ok(v) = HeaderValue::from_str(&info) {
        resp.headers_mut()
            .insert(HeaderName::from_static("sforce-limit-info"), v);
    }
    resp
}

/// `/_sandbox/salesforce...`; `rest` is the path after `salesforce`.
pub(super) fn control(shared: &Shared, req: &Req, rest: &[&str]) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct UsageBody {
        used: u64,
    }
    let get = req.method == Method::GET;
    let post = req.method == Method::POST;
    match rest {
        [] if get => config_and_stats(&mut shared.lock().salesforce),
        [] if post => {
            let cfg: SalesforceConfig = if req.body.iter().all(u8::is_ascii_whitespace) {
                SalesforceConfig::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(c) => c,
                    Err(e) => return bad_request(&format!("salesforce: {e}")),
                }
            };
            tracing::info!(?cfg, "sandbox salesforce config set");
            let mut st = shared.lock();
            st.salesforce.config = cfg;
            config_and_stats(&mut st.salesforce)
        }
        ["records"] if get => to_json(200, &shared.lock().salesforce.records),
        ["records", ext] if get => {
            let ext = percent_decode(ext);
            let st = shared.lock();
            match st.salesforce.records.iter().find(|r| r.external_id == ext) {
                Some(r) => to_json(200, r),
                None => not_found(),
            }
        }
        ["expire_tokens"] if post => {
            let mut st = shared.lock();
            let expired = st.salesforce.tokens.len();
            st.salesforce.tokens.clear();
            json_response(200, &json!({"expired": expired}))
        }
        ["usage"] if post => match serde_json::from_slice::<UsageBody>(&req.body) {
            Ok(b) => {
                let mut st = shared.lock();
                st.salesforce.usage.set(Instant::now(), b.used);
                json_response(
                    200,
                    &json!({"api_used": b.used, "daily_limit": st.salesforce.config.daily_limit}),
                )
            }
            Err(e) => bad_request(&format!("usage: {e}")),
        },
        _ => not_found(),
    }
}

fn config_and_stats(sf: &mut SalesforceState) -> Response {
    let stats = sf.stats();
    json_response(200, &json!({"config": sf.config, "stats": stats}))
}

// ---------------------------------------------------------------------------------------------
// The handle.

impl SandboxCrm {
    /// Sets the Salesforce personality's config; issued tokens and usage stay.
    pub fn set_salesforce(&self, cfg: SalesforceConfig) {
        self.shared.lock().salesforce.config = cfg;
    }

    pub fn salesforce_config(&self) -> SalesforceConfig {
        self.shared.lock().salesforce.config.clone()
    }

    /// Every Salesforce record, in creation order.
    pub fn salesforce_records(&self) -> Vec<SalesforceRecord> {
        self.shared.lock().salesforce.records.clone()
    }

    /// The first record (in creation order) with this external id, whatever its object.
    pub fn salesforce_record(&self, external_id: &str) -> Option<SalesforceRecord> {
        let st = self.shared.lock();
        st.salesforce
            .records
            .iter()
            .find(|r| r.external_id == external_id)
            .cloned()
    }

    pub fn salesforce_stats(&self) -> SalesforceStats {
        self.shared.lock().salesforce.stats()
    }

    /// Every issued token stops working now (the static token keeps working).
    pub fn expire_salesforce_tokens(&self) {
        self.shared.lock().salesforce.tokens.clear();
    }

    /// API usage is `used` now, as if that many requests had just happened.
    pub fn set_salesforce_usage(&self, used: u64) {
        self.shared
            .lock()
            .salesforce
            .usage
            .set(Instant::now(), used);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// `http://` + what the client connected to (the `Host` header), else the bound address.
fn instance_url(shared: &Shared, req: &Req) -> String {
    match req.headers.get(HOST).and_then(|h| h.to_str().ok()) {
        Some(h) if !h.is_empty() => format!("http://{h}"),
        _ => format!("http://{}", shared.addr),
    }
}

/// `v` + digits `.` digits, e.g. `v60.0`.
fn is_version(s: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match s.strip_prefix('v').and_then(|r| r.split_once('.')) {
        Some((major, minor)) => digits(major) && digits(minor),
        None => false,
    }
}

/// The key prefix Salesforce gives the object's ids.
fn key_prefix(object: &str) -> &'static str {
    match object {
        "Lead" => "00Q",
        "Contact" => "003",
        "Account" => "001",
        "Opportunity" => "006",
        _ => "a00",
    }
}

/// The records a `multi_match` value "matches". They do not exist; the ids only give the
/// answer its real shape.
fn multi_match_ids(object: &str) -> Vec<String> {
    (1..=2)
        .map(|i| format!("{}SANDBOXMULTI{i:03}", key_prefix(object)))
        .collect()
}

/// Text of a field value: non-empty text, or a number as written.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One error of a collection `UpsertResult`.
fn sf_error(code: &str, message: &str, fields: &[&str]) -> Value {
    json!({"statusCode": code, "message": message, "fields": fields})
}

fn parser_error(message: &str) -> Response {
    json_response(
        400,
        &json!([{"message": message, "errorCode": "JSON_PARSER_ERROR"}]),
    )
}

fn method_not_allowed(method: &Method, allowed: &str) -> Response {
    json_response(
        405,
        &json!([{
            "message": format!("HTTP Method '{method}' not allowed. Allowed are {allowed}"),
            "errorCode": "METHOD_NOT_ALLOWED",
        }]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devtools::sandbox_crm::{Faults, Scope};

    const LEADS: &str = "/services/data/v60.0/composite/sobjects/Lead/Leadrouter_Key__c";

    async fn sandbox() -> (SandboxCrm, reqwest::Client) {
        let sb = SandboxCrm::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        (sb, reqwest::Client::new())
    }

    async fn token(c: &reqwest::Client, sb: &SandboxCrm) -> String {
        let r = c
            .post(format!("{}/services/oauth2/token", sb.url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sandbox-client"),
                ("client_secret", "sandbox-secret"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// (status, Sforce-Limit-Info, body)
    async fn patch(
        c: &reqwest::Client,
        sb: &SandboxCrm,
        path: &str,
        token: &str,
        body: &Value,
    ) -> (u16, Option<String>, Value) {
        let r = c
            .patch(format!("{}{path}", sb.url()))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let info = r
            .headers()
            .get("sforce-limit-info")
            .map(|v| v.to_str().unwrap().to_string());
        (status, info, r.json().await.unwrap())
    }

    fn lead(key: &str, extra: Value) -> Value {
        let mut v = json!({"attributes": {"type": "Lead"}, "Leadrouter_Key__c": key});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    }

    #[test]
    fn versions_and_usage_window() {
        assert!(is_version("v60.0") && is_version("v46.12"));
        for bad in ["60.0", "v60", "v.0", "v60.", "vx.0", "v60.0.1"] {
            assert!(!is_version(bad), "{bad}");
        }
        let mut u = Usage::default();
        let t0 = Instant::now();
        u.add(t0, 1);
        u.add(t0 + Duration::from_millis(500), 1);
        u.add(t0 + Duration::from_secs(2), 1);
        assert_eq!(u.buckets.len(), 2, "one bucket per second");
        assert_eq!(u.used(t0 + USAGE_WINDOW), 1, "the first second aged out");
        assert_eq!(u.used(t0 + USAGE_WINDOW + Duration::from_secs(2)), 0);
        u.set(t0, 15_000);
        assert_eq!(u.used(t0), 15_000);
    }

    #[tokio::test]
    async fn token_endpoint() {
        let (sb, c) = sandbox().await;
        let url = format!("{}/services/oauth2/token", sb.url());
        let r = c
            .post(&url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sandbox-client"),
                ("client_secret", "sandbox-secret"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["instance_url"], sb.url());
        assert_eq!(v["token_type"], "Bearer");
        assert!(v["issued_at"].as_str().unwrap().parse::<u64>().unwrap() > 1_600_000_000_000);
        assert!(v["signature"].is_string() && v["id"].is_string());
        assert!(!v["access_token"].as_str().unwrap().is_empty());

        let r = c
            .post(&url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sandbox-client"),
                ("client_secret", "wrong"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_client");
        assert_eq!(v["error_description"], "invalid client credentials");

        let r = c
            .post(&url)
            .form(&[("grant_type", "password")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "unsupported_grant_type"
        );
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 405);

        let s = sb.salesforce_stats();
        assert_eq!(
            (s.tokens_issued, s.requests, s.api_used),
            (1, 3, 0),
            "tokens are no API usage"
        );
    }

    #[tokio::test]
    async fn collection_upsert_creates_then_updates() {
        let (sb, c) = sandbox().await;
        let t = token(&c, &sb).await;
        let body = json!({"allOrNone": false, "records": [
            lead("k1", json!({"Email": "ann@example.com", "LastName": "Lee"})),
            lead("k2", json!({"LastName": "Bo"})),
        ]});
        let (status, info, v) = patch(&c, &sb, LEADS, &t, &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(info.as_deref(), Some("api-usage=1/15000"));
        let r = v.as_array().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (&r[0]["success"], &r[0]["created"]),
            (&json!(true), &json!(true))
        );
        assert_eq!(r[0]["errors"], json!([]));
        let id = r[0]["id"].as_str().unwrap();
        assert!(id.starts_with("00Q") && id.len() == 18, "{id}");

        let again = json!({"records": [lead("k1", json!({"Company": "Acme"}))]});
        let (status, info, v) = patch(&c, &sb, LEADS, &t, &again).await;
        assert_eq!(status, 200);
        assert_eq!(info.as_deref(), Some("api-usage=2/15000"));
        assert_eq!((&v[0]["id"], &v[0]["created"]), (&json!(id), &json!(false)));

        let rec = sb.salesforce_record("k1").unwrap();
        assert_eq!(
            (rec.object.as_str(), rec.external_id_field.as_str()),
            ("Lead", "Leadrouter_Key__c")
        );
        assert_eq!(rec.writes, 2);
        assert_eq!(rec.fields["LastName"], "Lee");
        assert_eq!(rec.fields["Company"], "Acme");
        assert!(rec.fields.get("attributes").is_none());
        assert_eq!(rec.history.len(), 2);
        assert_eq!(sb.salesforce_records().len(), 2);
        let s = sb.salesforce_stats();
        assert_eq!(
            (
                s.collection_calls,
                s.records,
                s.max_records_in_a_call,
                s.api_used
            ),
            (2, 3, 2, 2)
        );
    }

    #[tokio::test]
    async fn record_cap_and_parser_errors() {
        let (sb, c) = sandbox().await;
        let t = token(&c, &sb).await;
        let many: Vec<Value> = (0..201)
            .map(|i| lead(&format!("k{i}"), json!({})))
            .collect();
        let (status, info, v) = patch(&c, &sb, LEADS, &t, &json!({"records": many})).await;
        assert_eq!(status, 400);
        assert_eq!(v[0]["errorCode"], "EXCEEDED_ID_LIMIT");
        assert_eq!(v[0]["message"], "Exceeded max limit of 200 records");
        assert!(info.is_some(), "every answer after auth has the usage");
        sb.set_salesforce(SalesforceConfig {
            max_records: 1,
            ..SalesforceConfig::default()
        });
        let two = json!({"records": [lead("a", json!({})), lead("b", json!({}))]});
        let (_, _, v) = patch(&c, &sb, LEADS, &t, &two).await;
        assert_eq!(v[0]["message"], "Exceeded max limit of 1 records");
        assert_eq!(sb.salesforce_stats().max_records_in_a_call, 201);

        for body in [json!({}), json!({"records": {}}), json!([1])] {
            let (status, _, v) = patch(&c, &sb, LEADS, &t, &body).await;
            assert_eq!(
                (status, &v[0]["errorCode"]),
                (400, &json!("JSON_PARSER_ERROR")),
                "{body}"
            );
        }
        let r = c
            .patch(format!("{}{LEADS}", sb.url()))
            .bearer_auth(&t)
            .body("{nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.unwrap()[0]["errorCode"],
            "JSON_PARSER_ERROR"
        );
        assert!(sb.salesforce_records().is_empty());
    }

    fn codes(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["statusCode"].as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect()
    }

    #[tokio::test]
    async fn per_record_errors_partial_and_all_or_none() {
        let (sb, c) = sandbox().await;
        sb.set_salesforce(SalesforceConfig {
            required_on_create: vec!["LastName".into()],
            reject_emails: vec!["Blocked@x.com".into()],
            multi_match: vec!["many".into()],
            ..SalesforceConfig::default()
        });
        let t = token(&c, &sb).await;
        let records = json!([
            lead("ok", json!({"LastName": "Lee", "Email": "ok@x.com"})),
            {"attributes": {"type": "Contact"}, "Leadrouter_Key__c": "c1", "LastName": "X"},
            lead("", json!({"LastName": "X"})),
            lead("bad", json!({"LastName": "X", "Email": "not-an-email"})),
            lead("blocked", json!({"LastName": "X", "Email": "blocked@x.com"})),
            lead("nolast", json!({})),
            lead("many", json!({"LastName": "X"})),
        ]);
        let (status, _, v) = patch(
            &c,
            &sb,
            LEADS,
            &t,
            &json!({"allOrNone": true, "records": records}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            codes(&v),
            [
                "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "INVALID_TYPE",
                "MISSING_ARGUMENT",
                "INVALID_EMAIL_ADDRESS",
                "INVALID_EMAIL_ADDRESS",
                "REQUIRED_FIELD_MISSING",
                "DUPLICATE_EXTERNAL_ID",
            ]
        );
        assert_eq!(v[0]["success"], false);
        assert_eq!(v[3]["errors"][0]["fields"], json!(["Email"]));
        assert_eq!(v[5]["errors"][0]["fields"], json!(["LastName"]));
        assert_eq!(
            v[6]["errors"][0]["message"],
            "more than one record found for external id field: [00QSANDBOXMULTI001, 00QSANDBOXMULTI002]"
        );
        assert!(
            sb.salesforce_records().is_empty(),
            "allOrNone wrote nothing"
        );

        let (_, _, v) = patch(
            &c,
            &sb,
            LEADS,
            &t,
            &json!({"allOrNone": false, "records": records}),
        )
        .await;
        assert_eq!(codes(&v)[0], "");
        assert_eq!(
            (&v[0]["success"], &v[0]["created"]),
            (&json!(true), &json!(true))
        );
        assert!(v.as_array().unwrap()[1..]
            .iter()
            .all(|r| r["success"] == false));
        assert_eq!(sb.salesforce_records().len(), 1);
        // An update needs no required field; a record made earlier in the call is an update.
        let (_, _, v) = patch(
            &c,
            &sb,
            LEADS,
            &t,
            &json!({"records": [lead("nolast", json!({"LastName": "N"})), lead("nolast", json!({})), lead("ok", json!({}))]}),
        )
        .await;
        assert_eq!(codes(&v), ["", "", ""]);
        assert_eq!(sb.salesforce_record("nolast").unwrap().writes, 2);
        assert_eq!(sb.salesforce_stats().rejected_records, 12);
    }

    #[tokio::test]
    async fn tokens_expire_and_a_new_one_works() {
        let (sb, c) = sandbox().await;
        let body = json!({"records": [lead("k1", json!({}))]});
        let (status, info, v) = patch(&c, &sb, LEADS, "no-such-token", &body).await;
        assert_eq!(status, 401);
        assert_eq!(
            v,
            json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
        );
        assert!(info.is_none());

        let t = token(&c, &sb).await;
        assert_eq!(patch(&c, &sb, LEADS, &t, &body).await.0, 200);
        sb.expire_salesforce_tokens();
        assert_eq!(patch(&c, &sb, LEADS, &t, &body).await.0, 401);
        let t2 = token(&c, &sb).await;
        assert_eq!(patch(&c, &sb, LEADS, &t2, &body).await.0, 200);
        // A zero lifetime: every issued token is dead on arrival (no clock waits).
        sb.set_salesforce(SalesforceConfig {
            token_lifetime: Duration::ZERO,
            static_token: Some("static".into()),
            ..SalesforceConfig::default()
        });
        assert_eq!(patch(&c, &sb, LEADS, &t2, &body).await.0, 401);
        assert_eq!(patch(&c, &sb, LEADS, "static", &body).await.0, 200);
        let r = c
            .post(format!("{}/_sandbox/salesforce/expire_tokens", sb.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            patch(&c, &sb, LEADS, "static", &body).await.0,
            200,
            "static never expires"
        );
        let s = sb.salesforce_stats();
        assert_eq!((s.unauthorized, s.api_used, s.tokens_issued), (3, 4, 2));
    }

    #[tokio::test]
    async fn usage_limit_is_a_403_with_the_usage_header() {
        let (sb, c) = sandbox().await;
        let t = token(&c, &sb).await;
        let body = json!({"records": [lead("k1", json!({}))]});
        sb.set_salesforce_usage(14_999);
        let (status, info, _) = patch(&c, &sb, LEADS, &t, &body).await;
        assert_eq!(
            (status, info.as_deref()),
            (200, Some("api-usage=15000/15000"))
        );
        let (status, info, v) = patch(&c, &sb, LEADS, &t, &body).await;
        assert_eq!(status, 403);
        assert_eq!(info.as_deref(), Some("api-usage=15001/15000"));
        assert_eq!(
            v,
            json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
        );
        assert_eq!(sb.salesforce_stats().limit_exceeded, 1);
        assert_eq!(sb.salesforce_record("k1").unwrap().writes, 1);

        let r = c
            .post(format!("{}/_sandbox/salesforce/usage", sb.url()))
            .body(r#"{"used": 10}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let (status, info, _) = patch(&c, &sb, LEADS, &t, &body).await;
        assert_eq!((status, info.as_deref()), (200, Some("api-usage=11/15000")));
    }

    #[tokio::test]
    async fn crm_faults_apply_and_count_toward_no_usage() {
        let (sb, c) = sandbox().await;
        let t = token(&c, &sb).await;
        sb.set_faults_for(Scope::Crm, Faults::fail_next(1, 500));
        let body = json!({"records": [lead("k1", json!({}))]});
        let (status, info, v) = patch(&c, &sb, LEADS, &t, &body).await;
        assert_eq!((status, &v["error"]), (500, &json!("sandbox_fault")));
        assert!(info.is_none());
        assert_eq!(sb.salesforce_stats().api_used, 0);
        let (status, info, _) = patch(&c, &sb, LEADS, &t, &body).await;
        assert_eq!((status, info.as_deref()), (200, Some("api-usage=1/15000")));
        // The token endpoint is in the scope too.
        sb.set_faults_for(Scope::Crm, Faults::fail_next(1, 503));
        let r = c
            .post(format!("{}/services/oauth2/token", sb.url()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(sb.stats().faults_injected, 2);
    }

    #[tokio::test]
    async fn single_upsert_and_other_routes() {
        let (sb, c) = sandbox().await;
        sb.set_salesforce(SalesforceConfig {
            multi_match: vec!["many".into()],
            required_on_create: vec!["LastName".into()],
            ..SalesforceConfig::default()
        });
        let t = token(&c, &sb).await;
        let one = "/services/data/v60.0/sobjects/Lead/Leadrouter_Key__c/k%201";
        let (status, info, v) = patch(&c, &sb, one, &t, &json!({"LastName": "Lee"})).await;
        assert_eq!(status, 201);
        assert_eq!((&v["success"], &v["created"]), (&json!(true), &json!(true)));
        assert_eq!(info.as_deref(), Some("api-usage=1/15000"));
        let (status, _, v) = patch(&c, &sb, one, &t, &json!({"Company": "Acme"})).await;
        assert_eq!((status, &v["created"]), (200, &json!(false)));
        assert_eq!(
            sb.salesforce_record("k 1").unwrap().fields["Company"],
            "Acme"
        );

        let (status, _, v) = patch(
            &c,
            &sb,
            "/services/data/v60.0/sobjects/Lead/Leadrouter_Key__c/new",
            &t,
            &json!({"Email": "nope"}),
        )
        .await;
        assert_eq!(status, 400);
        let got: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["errorCode"].as_str().unwrap())
            .collect();
        assert_eq!(got, ["INVALID_EMAIL_ADDRESS", "REQUIRED_FIELD_MISSING"]);
        let (status, _, v) = patch(
            &c,
            &sb,
            "/services/data/v60.0/sobjects/Lead/Leadrouter_Key__c/many",
            &t,
            &json!({}),
        )
        .await;
        assert_eq!(status, 300);
        assert_eq!(
            v[0],
            "/services/data/v60.0/sobjects/Lead/00QSANDBOXMULTI001"
        );

        let r = c
            .get(format!("{}{LEADS}", sb.url()))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(
            r.json::<Value>().await.unwrap()[0]["errorCode"],
            "METHOD_NOT_ALLOWED"
        );
        let (status, _, v) = patch(
            &c,
            &sb,
            "/services/data/latest/sobjects/Lead/X/1",
            &t,
            &json!({}),
        )
        .await;
        assert_eq!((status, &v[0]["errorCode"]), (404, &json!("NOT_FOUND")));
    }

    #[tokio::test]
    async fn control_routes_and_reset() {
        let (sb, c) = sandbox().await;
        let url = format!("{}/_sandbox/salesforce", sb.url());
        let r = c
            .post(&url)
            .body(r#"{"daily_limit": 5, "token_lifetime": "10m", "static_token": "s"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (&v["config"]["daily_limit"], &v["config"]["token_lifetime"]),
            (&json!(5), &json!("10m"))
        );
        assert_eq!(v["config"]["client_id"], "sandbox-client");
        assert_eq!(
            sb.salesforce_config().token_lifetime,
            Duration::from_secs(600)
        );
        assert_eq!(
            c.post(&url)
                .body(r#"{"limit":1}"#)
                .send()
                .await
                .unwrap()
                .status(),
            400
        );

        let (status, info, _) = patch(
            &c,
            &sb,
            LEADS,
            "s",
            &json!({"records": [lead("k1", json!({}))]}),
        )
        .await;
        assert_eq!((status, info.as_deref()), (200, Some("api-usage=1/5")));
        let v: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            (&v["stats"]["api_used"], &v["stats"]["collection_calls"]),
            (&json!(1), &json!(1))
        );
        let v: Value = c
            .get(format!("{url}/records"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v[0]["external_id"], "k1");
        let r = c.get(format!("{url}/records/k1")).send().await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["writes"], 1);
        assert_eq!(
            c.get(format!("{url}/records/k2"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        assert_eq!(
            c.post(format!("{url}/usage"))
                .body("{}")
                .send()
                .await
                .unwrap()
                .status(),
            400
        );

        sb.reset();
        assert_eq!(sb.salesforce_config(), SalesforceConfig::default());
        assert_eq!(sb.salesforce_stats(), SalesforceStats::default());
        assert!(sb.salesforce_records().is_empty());
    }
}
