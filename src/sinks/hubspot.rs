//! `kind = "hubspot"`: contacts upserted by email through HubSpot's batch upsert,
//! `POST {endpoint}/crm/v3/objects/contacts/batch/upsert`, up to 100 per call, paced to the
//! account's rate budget (see [`super::batch`]).
//!
//! Each lead is one input `{idProperty: "email", id: <normalized email>, properties,
//! objectWriteTraceId: <lead key>}`; the trace id is how HubSpot's per-input errors are matched
//! back to their lead. A lead without an email is, as configured, refused (`missing_email =
//! "dlq"`, the DLQ with reason `sink_rejected`) or created keyed by our idempotency key
//! (`"create"`: an upsert by the unique custom property mapped to `key`, so a retry finds the
//! contact it created instead of making a second one).
//!
//! What HubSpot's answers become:
//! - 200/201/207: each input's result (contact id, `new`) or its error, by trace id;
//! - 400 naming inputs ("Partial upserts are not supported when using email as the
//!   idProperty": one bad input fails the call): those leads are refused, the rest sent again;
//!   a 400 naming none is split until the bad input is alone;
//! - 429 `TEN_SECONDLY_ROLLING`: the batch waits for the window and goes again; `DAILY`: the
//!   leads go back to the queue until the budget returns, without spending an attempt;
//! - 401/403: the token or its scopes are wrong, a permanent `config` error;
//! - 5xx, timeouts, resets: the whole call is retried with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::batch::budget::{daily_keys, DailyBudget, RollingWindow};
use super::batch::{BatchApi, BatchSettings, BatchSink, CallOutcome, Encoded, Pace};
use super::properties::PropertyMap;
use super::{
    body_excerpt, class, classify_status, http_client, parse_http_url, read_answer,
    with_trailing_slash, Delivered, LeadRecord, SinkBuildError, SinkContext, SinkError,
    SinkOrdering,
};
use crate::telemetry::metrics::metrics;
use crate::telemetry::traces;

pub const DEFAULT_ENDPOINT: &str = "https://api.hubapi.com";
/// HubSpot's batch limit: "Batch operations are limited to 100 records at a time."
pub const MAX_RECORDS: usize = 100;
const UPSERT_PATH: &str = "crm/v3/objects/contacts/batch/upsert";

/// The defaults: a Free/Starter account (100 requests per rolling 10 s, 250,000 a day).
const DEFAULT_RATE_LIMIT: u32 = 100;
const DEFAULT_RATE_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_DAILY_LIMIT: u64 = 250_000;
const DEFAULT_HEADROOM: f64 = 0.05;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULTS: BatchSettings = BatchSettings {
    max_records: MAX_RECORDS,
    max_bytes: 1 << 20,
    linger: Duration::from_millis(200),
    max_in_flight: 2,
};
/// `[sinks.properties]` when unset: HubSpot's default contact properties.
const DEFAULT_PROPERTIES: &[(&str, &str)] = &[
    ("email", "email"),
    ("firstname", "first_name"),
    ("lastname", "last_name"),
    ("phone", "phone"),
    ("company", "company"),
];

/// The keys of a `kind = "hubspot"` sink, besides `name`, `kind` and `ordering`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubspotSinkConfig {
    /// Default `https://api.hubapi.com`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Required: the env var holding the private app's access token (sent as Bearer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// HubSpot property = our field (`key`, `source_event_id`, ... or a lead field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
    /// The lead field holding the email the contact is upserted by; default `email`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_field: Option<String>,
    /// A lead without an email: `dlq` (default) or `create`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_email: Option<MissingEmail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_records: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub linger: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Requests per `rate_interval` of the account's tier (100 Starter, 190 Professional and
    /// Enterprise, 250 with the API add-on). The `X-HubSpot-RateLimit-Max` header overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub rate_interval: Option<Duration>,
    /// Requests per day (250,000 Starter). The `-Daily` header overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_limit: Option<u64>,
    /// Share of each budget left for the account's other apps; default 0.05.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headroom: Option<f64>,
    /// Deadline of each call; default 10s.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// `missing_email` of the `hubspot` sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MissingEmail {
    /// The DLQ, reason `sink_rejected`, with a message that says why.
    #[default]
    Dlq,
    /// Upsert by the unique custom property mapped to `key`: creates the contact once.
    Create,
}

/// Validated `hubspot` sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HubspotSpec {
    pub endpoint: Url,
    pub token_env: String,
    pub properties: PropertyMap,
    pub email_field: String,
    /// `Some(property)` for `missing_email = "create"`: the property holding our key.
    pub create_by: Option<String>,
    pub batch: BatchSettings,
    pub rate_limit: u32,
    pub rate_interval: Duration,
    pub daily_limit: u64,
    pub headroom: f64,
    pub timeout: Duration,
}

impl HubspotSpec {
    pub(crate) fn from_config(
        index: usize,
        cfg: &HubspotSinkConfig,
    ) -> Result<HubspotSpec, SinkBuildError> {
        let endpoint = with_trailing_slash(parse_http_url(
            index,
            "endpoint",
            cfg.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT),
        )?);
        let token_env = cfg.token_env.clone().ok_or_else(|| {
            SinkBuildError::new(
                index,
                "token_env",
                "required for kind `hubspot` (the env var holding the private app token)",
            )
        })?;
        let properties = PropertyMap::from_config(
            index,
            "properties",
            cfg.properties.as_ref(),
            DEFAULT_PROPERTIES,
        )?;
        let create_by = match cfg.missing_email.unwrap_or_default() {
            MissingEmail::Dlq => None,
            MissingEmail::Create => Some(
                properties
                    .vendor_name_of("key")
                    .ok_or_else(|| {
                        SinkBuildError::new(
                            index,
                            "missing_email",
                            "`create` needs a unique custom property mapped to `key` in [sinks.properties] (e.g. leadrouter_key = \"key\"), so a retry finds the contact instead of creating a second one",
                        )
                    })?
                    .to_string(),
            ),
        };
        let batch = BatchSettings::from_config(
            index,
            "HubSpot",
            MAX_RECORDS,
            DEFAULTS,
            cfg.max_records,
            cfg.max_bytes,
            cfg.linger,
            cfg.max_in_flight,
        )?;
        let rate_limit = cfg.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT);
        if rate_limit == 0 {
            return Err(SinkBuildError::new(
                index,
                "rate_limit",
                "must be at least 1",
            ));
        }
        let rate_interval = cfg.rate_interval.unwrap_or(DEFAULT_RATE_INTERVAL);
        if rate_interval.is_zero() {
            return Err(SinkBuildError::new(
                index,
                "rate_interval",
                "must be greater than zero",
            ));
        }
        let (daily_limit, headroom) = daily_keys(
            index,
            cfg.daily_limit.unwrap_or(DEFAULT_DAILY_LIMIT),
            cfg.headroom.unwrap_or(DEFAULT_HEADROOM),
        )?;
        let timeout = super::timeout_or_default(index, cfg.timeout.or(Some(DEFAULT_TIMEOUT)))?;
        Ok(HubspotSpec {
            endpoint,
            token_env,
            properties,
            email_field: cfg.email_field.clone().unwrap_or_else(|| "email".into()),
            create_by,
            batch,
            rate_limit,
            rate_interval,
            daily_limit,
            headroom,
            timeout,
        })
    }
}

/// The running sink.
pub type HubspotSink = BatchSink<HubspotApi>;

pub(crate) fn build(
    index: usize,
    name: &str,
    spec: HubspotSpec,
    ordering: SinkOrdering,
    ctx: &SinkContext,
) -> Result<HubspotSink, SinkBuildError> {
    let token = ctx.secret(index, "token_env", &spec.token_env)?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        SinkBuildError::new(index, "token_env", "the token is not a valid header value")
    })?;
    auth.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, auth);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let url = spec.endpoint.join(UPSERT_PATH).map_err(|e| {
        SinkBuildError::new(
            index,
            "endpoint",
            "cannot make the batch upsert URL from it",
        )
        .with_source(e)
    })?;
    let api = HubspotApi {
        sink: name.to_string(),
        url,
        client: http_client(index, spec.timeout)?,
        timeout: spec.timeout,
        headers,
        properties: spec.properties,
        email_field: spec.email_field,
        create_by: spec.create_by,
        budget: Mutex::new(Budget {
            window: RollingWindow::new(spec.rate_limit, spec.rate_interval, spec.headroom),
            daily: DailyBudget::new(spec.daily_limit, spec.headroom),
        }),
    };
    // The budget gauges exist from the start, at the configured limits.
    api.publish(&api.budget(), Instant::now());
    Ok(BatchSink::start(name, ordering, spec.batch, api))
}

/// The account's budget as this sink knows it.
struct Budget {
    window: RollingWindow,
    daily: DailyBudget,
}

pub struct HubspotApi {
    sink: String,
    url: Url,
    client: reqwest::Client,
    timeout: Duration,
    headers: HeaderMap,
    properties: PropertyMap,
    email_field: String,
    create_by: Option<String>,
    budget: Mutex<Budget>,
}

/// One input of a batch upsert, and the trace id HubSpot echoes in its errors.
pub struct Input {
    body: Value,
    trace_id: String,
}

impl HubspotApi {
    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        // Plain numbers: a panic mid-update leaves nothing worth refusing to read.
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the rate headers of an answer into the budget, and publishes it.
    fn observe(&self, headers: &HeaderMap) {
        let num =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        let now = Instant::now();
        let mut b = self.budget();
        if let Some(left) = num("x-hubspot-ratelimit-remaining") {
            b.window.observe(
                left.min(u32::MAX as u64) as u32,
                num("x-hubspot-ratelimit-max").map(|m| m.min(u32::MAX as u64) as u32),
                num("x-hubspot-ratelimit-interval-milliseconds").map(Duration::from_millis),
                now,
            );
        }
        if let Some(left) = num("x-hubspot-ratelimit-daily-remaining") {
            b.daily
                .observe_remaining(left, num("x-hubspot-ratelimit-daily"));
        }
        self.publish(&b, now);
    }

    fn publish(&self, b: &Budget, now: Instant) {
        let m = metrics();
        m.sink_budget(
            &self.sink,
            "interval",
            b.window.remaining(now) as u64,
            b.window.limit() as u64,
        );
        m.sink_budget(&self.sink, "daily", b.daily.remaining(), b.daily.limit());
    }

    async fn send(
        &self,
        items: &[&Input],
        span: &tracing::Span,
    ) -> Result<(StatusCode, HeaderMap, bytes::Bytes), SinkError> {
        let inputs: Vec<&Value> = items.iter().map(|i| &i.body).collect();
        let body = serde_json::to_vec(&json!({ "inputs": inputs })).map_err(|_| {
            SinkError::permanent(class::UNSERIALIZABLE, "cannot encode the batch as JSON")
        })?;
        let mut headers = self.headers.clone();
        traces::inject_http(span, &mut headers);
        let req = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body);
        read_answer(req, "HubSpot batch upsert", self.timeout).await
    }
}

#[async_trait::async_trait]
impl BatchApi for HubspotApi {
    type Item = Input;

    fn encode(&self, lead: &LeadRecord) -> Result<Encoded<Input>, SinkError> {
        let mut properties = self.properties.render(lead, true);
        let email = lead
            .fields
            .get(&self.email_field)
            .and_then(Value::as_str)
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty());
        let (id_property, id, conflict_key) = match (email, &self.create_by) {
            (Some(email), _) => {
                properties.insert("email".into(), Value::String(email.clone()));
                ("email".to_string(), email.clone(), format!("email:{email}"))
            }
            (None, Some(prop)) => (prop.clone(), lead.key.clone(), format!("key:{}", lead.key)),
            (None, None) => {
                return Err(SinkError::permanent(
                    class::HTTP_4XX,
                    format!(
                        "the lead has no `{}`, and HubSpot upserts contacts by email (set missing_email = \"create\" to create it by its key instead)",
                        self.email_field
                    ),
                ))
            }
        };
        let body = json!({
            "idProperty": id_property,
            "id": id,
            "properties": properties,
            "objectWriteTraceId": lead.key,
        });
        let bytes = serde_json::to_vec(&body).map(|b| b.len()).unwrap_or(0);
        Ok(Encoded {
            item: Input {
                body,
                trace_id: lead.key.clone(),
            },
            bytes,
            conflict_key,
        })
    }

    fn acquire(&self, now: Instant) -> Pace {
        let mut b = self.budget();
        // The window first: asking the daily budget may let its one probe call through.
        if let Some(at) = b.window.next_at(now) {
            return Pace::At(at);
        }
        if let Some(wait) = b.daily.check(now, SystemTime::now()) {
            return Pace::Spent(wait);
        }
        b.window.record(now);
        b.daily.record();
        self.publish(&b, now);
        Pace::Go
    }

    async fn call(&self, items: Vec<&Input>, span: &tracing::Span) -> CallOutcome {
        let (status, headers, body) = match self.send(&items, span).await {
            Ok(r) => r,
            Err(e) => return CallOutcome::Failed(e),
        };
        self.observe(&headers);
        let parsed: Option<Answer> = serde_json::from_slice(&body).ok();
        match status.as_u16() {
            200 | 201 | 207 => match parsed {
                Some(a) => CallOutcome::Answered(verdicts(&items, a)),
                None => CallOutcome::Failed(SinkError::transient(
                    class::HTTP_OTHER,
                    format!("HubSpot answered {} with a body that is not a batch result", status.as_u16()),
                )),
            },
            429 => {
                let policy = parsed.as_ref().and_then(|a| a.policy_name.as_deref());
                let now = Instant::now();
                let mut b = self.budget();
                if policy == Some("DAILY") {
                    let wait = b.daily.exhausted(now, SystemTime::now());
                    self.publish(&b, now);
                    CallOutcome::Spent { wait, policy: "DAILY" }
                } else {
                    // HubSpot documents no Retry-After; when one comes (a proxy, a gateway in
                    // front), it knows better than a whole window.
                    let wait = headers
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| super::parse_retry_after(v, SystemTime::now()))
                        .map_or(b.window.interval(), |ra| ra.min(b.window.interval()));
                    b.window.throttled(wait, now);
                    self.publish(&b, now);
                    CallOutcome::Throttled { wait, policy: "TEN_SECONDLY_ROLLING" }
                }
            }
            400 => {
                let refused = parsed.as_ref().map(|a| refused(&items, a)).unwrap_or_default();
                if refused.is_empty() {
                    CallOutcome::Split(
                        SinkError::permanent(class::HTTP_4XX, "HubSpot refused the input: HTTP 400")
                            .with_detail(body_excerpt(&body)),
                    )
                } else {
                    CallOutcome::Refused(refused)
                }
            }
            401 | 403 => CallOutcome::Failed(
                SinkError::permanent(
                    class::CONFIG,
                    format!(
                        "HubSpot refused the token (HTTP {}): check token_env and that the private app has the crm.objects.contacts.write scope",
                        status.as_u16()
                    ),
                )
                .with_detail(body_excerpt(&body)),
            ),
            _ => CallOutcome::Failed(
                classify_status("HubSpot batch upsert", status, &headers)
                    .with_detail(body_excerpt(&body)),
            ),
        }
    }
}

/// HubSpot's answer to a batch call, and the error shape of its 4xx.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default)]
    results: Vec<ResultItem>,
    #[serde(default)]
    errors: Vec<ErrorItem>,
    #[serde(default)]
    policy_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResultItem {
    id: String,
    #[serde(default)]
    new: Option<bool>,
    #[serde(default)]
    object_write_trace_id: Option<String>,
    #[serde(default)]
    properties: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorItem {
    #[serde(default)]
    message: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    context: HashMap<String, Vec<String>>,
}

/// Which inputs an error names: by trace id, else by the id (email) it quotes.
fn named(items: &[&Input], e: &ErrorItem) -> Vec<usize> {
    let mut out = Vec::new();
    for (ctx_key, by_trace) in [("objectWriteTraceId", true), ("ids", false)] {
        for v in e.context.get(ctx_key).into_iter().flatten() {
            let found = items.iter().position(|i| {
                if by_trace {
                    i.trace_id == *v
                } else {
                    i.body
                        .get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|id| id.eq_ignore_ascii_case(v))
                }
            });
            if let Some(idx) = found.filter(|i| !out.contains(i)) {
                out.push(idx);
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

fn rejection(e: &ErrorItem) -> SinkError {
    let category = e.category.as_deref().unwrap_or("error");
    SinkError::permanent(
        class::HTTP_4XX,
        format!("HubSpot refused the record ({category})"),
    )
    .with_detail(body_excerpt(e.message.as_bytes()))
}

/// The inputs a 400 names, each with HubSpot's message.
fn refused(items: &[&Input], a: &Answer) -> Vec<(usize, SinkError)> {
    let mut out: Vec<(usize, SinkError)> = Vec::new();
    for e in &a.errors {
        for idx in named(items, e) {
            if !out.iter().any(|(i, _)| *i == idx) {
                out.push((idx, rejection(e)));
            }
        }
    }
    out
}

/// One verdict per input from a 200/207: its result, its error, or (named by neither) a
/// transient error so it is sent again.
fn verdicts(items: &[&Input], a: Answer) -> Vec<Result<Delivered, SinkError>> {
    let now = SystemTime::now();
    let mut out: Vec<Option<Result<Delivered, SinkError>>> =
        (0..items.len()).map(|_| None).collect();
    for r in a.results {
        let idx = r
            .object_write_trace_id
            .as_deref()
            .and_then(|t| items.iter().position(|i| i.trace_id == t))
            .or_else(|| {
                // Without a trace id, by the id the input was upserted by.
                items.iter().position(|i| {
                    let id_prop = i
                        .body
                        .get("idProperty")
                        .and_then(Value::as_str)
                        .unwrap_or("email");
                    let id = i.body.get("id").and_then(Value::as_str).unwrap_or_default();
                    r.properties
                        .get(id_prop)
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.eq_ignore_ascii_case(id))
                })
            });
        if let Some(slot) = idx.and_then(|i| out.get_mut(i)) {
            *slot = Some(Ok(Delivered {
                persisted_at: now,
                remote_id: Some(r.id),
                created: r.new,
            }));
        }
    }
    for e in &a.errors {
        for idx in named(items, e) {
            if let Some(slot) = out.get_mut(idx) {
                if slot.is_none() {
                    *slot = Some(Err(rejection(e)));
                }
            }
        }
    }
    out.into_iter()
        .map(|v| {
            v.unwrap_or_else(|| {
                Err(SinkError::transient(
                    class::HTTP_OTHER,
                    "HubSpot's answer has no result for the record; sending it again",
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(email: &str, key: &str) -> Input {
        Input {
            body: json!({"idProperty": "email", "id": email, "properties": {"email": email}, "objectWriteTraceId": key}),
            trace_id: key.into(),
        }
    }

    #[test]
    fn results_and_errors_are_matched_to_their_inputs() {
        let a = input("a@example.com", "k1");
        let b = input("b@example.com", "k2");
        let c = input("c@example.com", "k3");
        let answer: Answer = serde_json::from_value(json!({
            "status": "COMPLETE",
            "results": [
                {"id": "102", "new": false, "objectWriteTraceId": "k3", "properties": {}},
                {"id": "101", "new": true, "properties": {"email": "a@example.com"}}
            ],
            "numErrors": 1,
            "errors": [{"status": "error", "category": "VALIDATION_ERROR", "message": "Email address b@example.com is invalid", "context": {"objectWriteTraceId": ["k2"]}}]
        }))
        .expect("shape");
        let v = verdicts(&[&a, &b, &c], answer);
        let first = v[0].as_ref().expect("a written");
        assert_eq!(first.remote_id.as_deref(), Some("101"));
        assert_eq!(first.created, Some(true));
        let e = v[1].as_ref().expect_err("b refused");
        assert!(e.is_permanent());
        assert!(e.message().contains("VALIDATION_ERROR"), "{e}");
        assert!(
            !e.message().contains("b@example.com"),
            "the email is masked: {e}"
        );
        assert_eq!(v[2].as_ref().expect("c written").created, Some(false));
    }

    #[test]
    fn an_input_the_answer_does_not_mention_is_sent_again() {
        let a = input("a@example.com", "k1");
        let v = verdicts(&[&a], Answer::default());
        assert!(!v[0].as_ref().expect_err("missing").is_permanent());
    }

    #[test]
    fn a_400_names_its_inputs_by_trace_id_or_by_email() {
        let a = input("a@example.com", "k1");
        let b = input("b@example.com", "k2");
        let answer: Answer = serde_json::from_value(json!({
            "status": "error",
            "errors": [{"message": "bad", "context": {"ids": ["B@example.com"]}}]
        }))
        .expect("shape");
        let r = refused(&[&a, &b], &answer);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 1);
    }

    fn api(cfg: HubspotSinkConfig) -> HubspotApi {
        let spec = HubspotSpec::from_config(0, &cfg).expect("valid");
        HubspotApi {
            sink: "hubspot".into(),
            url: spec.endpoint.clone(),
            client: reqwest::Client::new(),
            timeout: spec.timeout,
            headers: HeaderMap::new(),
            properties: spec.properties,
            email_field: spec.email_field,
            create_by: spec.create_by,
            budget: Mutex::new(Budget {
                window: RollingWindow::new(100, Duration::from_secs(10), 0.05),
                daily: DailyBudget::new(1000, 0.05),
            }),
        }
    }

    fn lead(fields: Value) -> LeadRecord {
        LeadRecord {
            key: "lr_k1".into(),
            sender: "s".into(),
            source_event_id: "e1".into(),
            schema: "lead.v1".into(),
            received_at: "2026-12-02T10:00:00.000Z".into(),
            fields: fields.as_object().cloned().unwrap_or_default(),
            flags: vec![],
            replay: false,
        }
    }

    #[test]
    fn a_lead_is_one_input_keyed_by_its_normalized_email() {
        let a = api(HubspotSinkConfig {
            token_env: Some("T".into()),
            ..Default::default()
        });
        let enc = a
            .encode(&lead(
                json!({"email": " Ada@Example.COM ", "first_name": "Ada"}),
            ))
            .expect("encoded");
        assert_eq!(enc.item.body["idProperty"], "email");
        assert_eq!(enc.item.body["id"], "ada@example.com");
        assert_eq!(enc.item.body["properties"]["firstname"], "Ada");
        assert_eq!(enc.item.body["objectWriteTraceId"], "lr_k1");
        assert_eq!(enc.conflict_key, "email:ada@example.com");
    }

    #[test]
    fn a_lead_without_an_email_is_refused_or_created_by_its_key() {
        let refuse = api(HubspotSinkConfig {
            token_env: Some("T".into()),
            ..Default::default()
        });
        let e = refuse
            .encode(&lead(json!({"phone": "+14155550100"})))
            .err()
            .expect("refused");
        assert!(e.is_permanent());
        assert!(e.message().contains("missing_email"), "{e}");

        let create = api(HubspotSinkConfig {
            token_env: Some("T".into()),
            missing_email: Some(MissingEmail::Create),
            properties: Some(
                [("leadrouter_key", "key"), ("phone", "phone")]
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            ),
            ..Default::default()
        });
        let enc = create
            .encode(&lead(json!({"phone": "+14155550100"})))
            .expect("created by key");
        assert_eq!(enc.item.body["idProperty"], "leadrouter_key");
        assert_eq!(enc.item.body["id"], "lr_k1");
        assert_eq!(enc.item.body["properties"]["leadrouter_key"], "lr_k1");
        assert_eq!(enc.conflict_key, "key:lr_k1");
    }

    #[test]
    fn config_defaults_and_limits() {
        let cfg = HubspotSinkConfig {
            token_env: Some("HUBSPOT_TOKEN".into()),
            ..Default::default()
        };
        let spec = HubspotSpec::from_config(0, &cfg).expect("valid");
        assert_eq!(spec.batch.max_records, 100);
        assert_eq!(spec.rate_limit, 100);
        assert_eq!(spec.endpoint.as_str(), "https://api.hubapi.com/");
        let too_big = HubspotSinkConfig {
            max_records: Some(101),
            ..cfg.clone()
        };
        let e = HubspotSpec::from_config(1, &too_big).expect_err("over 100");
        assert_eq!(e.key, "sinks[1].max_records");
        let create = HubspotSinkConfig {
            missing_email: Some(MissingEmail::Create),
            ..cfg.clone()
        };
        let e = HubspotSpec::from_config(0, &create).expect_err("create needs a key property");
        assert_eq!(e.key, "sinks[0].missing_email");
        let no_token = HubspotSinkConfig::default();
        assert_eq!(
            HubspotSpec::from_config(0, &no_token)
                .expect_err("token")
                .key,
            "sinks[0].token_env"
        );
    }
}
