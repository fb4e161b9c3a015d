//! `kind = "salesforce"`: records (a `Lead` by default) upserted by an external id field that
//! holds our idempotency key, through sObject Collections:
//! `PATCH {instance}/services/data/{api_version}/composite/sobjects/{object}/{external_id_field}`
//! with `{"allOrNone": false, "records": [...]}`, up to 200 per call, paced to the org's API
//! budget (see [`super::batch`]).
//!
//! Auth is OAuth 2.0 client credentials (`token_url`, `client_id_env`, `client_secret_env`),
//! the token fetched on first use and again when Salesforce answers 401 (expired or revoked):
//! the same batch is then sent once more with the new token, so an expiry loses nothing. Or a
//! static token from `token_env`, with `instance_url`.
//!
//! What Salesforce's answers become:
//! - 200: one `UpsertResult` per record, in order. `created: true` (was 201 for one record) and
//!   `false` (200/204) are both success; `success: false` refuses that lead alone with its
//!   error codes (`DUPLICATE_EXTERNAL_ID` is the collections form of the single upsert's
//!   `300 Multiple Choices`: several records match, which only a person can resolve);
//! - 403 `REQUEST_LIMIT_EXCEEDED` (Salesforce's throttle: no 429, no Retry-After): the org's
//!   24-hour budget is spent, the leads go back to the queue without spending an attempt;
//! - every answer's `Sforce-Limit-Info: api-usage=N/M` keeps the budget current, so the sink
//!   stops at its headroom before Salesforce refuses;
//! - 400 for the whole call: split until the bad record is alone; 5xx, timeouts: retried.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::batch::budget::{daily_keys, DailyBudget};
use super::batch::{BatchApi, BatchSettings, BatchSink, CallOutcome, Encoded, Pace};
use super::properties::PropertyMap;
use super::{
    body_excerpt, class, classify_status, http_client, parse_http_url, read_answer,
    with_trailing_slash, Delivered, LeadRecord, SinkBuildError, SinkContext, SinkError,
    SinkOrdering,
};
use crate::telemetry::metrics::metrics;
use crate::telemetry::traces;

/// sObject Collections takes at most 200 records per call.
pub const MAX_RECORDS: usize = 200;
pub const DEFAULT_API_VERSION: &str = "v63.0";
pub const DEFAULT_OBJECT: &str = "Lead";
/// Without an `Sforce-Limit-Info` yet: a Developer Edition org's 15,000 a day. The first
/// answer replaces it with the org's own figure.
const DEFAULT_DAILY_LIMIT: u64 = 15_000;
const DEFAULT_HEADROOM: f64 = 0.05;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULTS: BatchSettings = BatchSettings {
    max_records: MAX_RECORDS,
    max_bytes: 4 << 20,
    linger: Duration::from_millis(200),
    // Salesforce allows 25 long-running requests per production org (5 in dev orgs), shared
    // with every other integration: stay well below.
    max_in_flight: 2,
};
const DEFAULT_FIELDS: &[(&str, &str)] = &[
    ("Email", "email"),
    ("FirstName", "first_name"),
    ("LastName", "last_name"),
    ("Company", "company"),
    ("Phone", "phone"),
];

/// The keys of a `kind = "salesforce"` sink, besides `name`, `kind` and `ordering`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesforceSinkConfig {
    /// The org's URL, e.g. `https://acme.my.salesforce.com`. Required with `token_env`; with
    /// OAuth the token answer's `instance_url` is used when this is unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_url: Option<String>,
    /// Default `v63.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Default `Lead`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Required: the external id field that holds our idempotency key, e.g. `Leadrouter_Key__c`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id_field: Option<String>,
    /// Salesforce field = our field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
    /// OAuth 2.0 client credentials: the token endpoint, e.g.
    /// `https://acme.my.salesforce.com/services/oauth2/token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// Instead of OAuth: the env var holding a ready access token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_records: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub linger: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// API requests per 24 h until `Sforce-Limit-Info` says the org's own figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_limit: Option<u64>,
    /// Share of the budget left for the org's other integrations; default 0.05.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headroom: Option<f64>,
    /// Deadline of each call; default 30s.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// How the sink authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthSpec {
    ClientCredentials {
        token_url: Url,
        client_id_env: String,
        client_secret_env: String,
    },
    Static {
        token_env: String,
    },
}

/// Validated `salesforce` sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SalesforceSpec {
    pub instance_url: Option<Url>,
    pub api_version: String,
    pub object: String,
    pub external_id_field: String,
    pub fields: PropertyMap,
    pub auth: AuthSpec,
    pub batch: BatchSettings,
    pub daily_limit: u64,
    pub headroom: f64,
    pub timeout: Duration,
}

fn api_name(index: usize, key: &str, v: &str) -> Result<String, SinkBuildError> {
    let ok = !v.is_empty()
        && v.len() <= 80
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && v.as_bytes()[0].is_ascii_alphabetic();
    if !ok {
        return Err(SinkBuildError::new(
            index,
            key,
            format!("`{v}` is not a Salesforce API name (letters, digits and _, starting with a letter)"),
        ));
    }
    Ok(v.to_string())
}

impl SalesforceSpec {
    pub(crate) fn from_config(
        index: usize,
        cfg: &SalesforceSinkConfig,
    ) -> Result<SalesforceSpec, SinkBuildError> {
        let auth = match (&cfg.token_env, &cfg.token_url) {
            (Some(_), Some(_)) => {
                return Err(SinkBuildError::new(
                    index,
                    "token_env",
                    "set either token_env (a static token) or token_url with client_id_env and client_secret_env (OAuth), not both",
                ))
            }
            (Some(env), None) => AuthSpec::Static { token_env: env.clone() },
            (None, Some(url)) => {
                let need = |key: &str, v: &Option<String>| {
                    v.clone().ok_or_else(|| {
                        SinkBuildError::new(index, key, "required with token_url (OAuth client credentials)")
                    })
                };
                AuthSpec::ClientCredentials {
                    token_url: parse_http_url(index, "token_url", url)?,
                    client_id_env: need("client_id_env", &cfg.client_id_env)?,
                    client_secret_env: need("client_secret_env", &cfg.client_secret_env)?,
                }
            }
            (None, None) => {
                return Err(SinkBuildError::new(
                    index,
                    "token_url",
                    "kind `salesforce` needs token_url with client_id_env and client_secret_env (OAuth client credentials), or token_env",
                ))
            }
        };
        let instance_url = cfg
            .instance_url
            .as_deref()
            .map(|u| parse_http_url(index, "instance_url", u))
            .transpose()?;
        if instance_url.is_none() && matches!(auth, AuthSpec::Static { .. }) {
            return Err(SinkBuildError::new(
                index,
                "instance_url",
                "required with token_env (with OAuth the token answer names it)",
            ));
        }
        let api_version = cfg
            .api_version
            .clone()
            .unwrap_or_else(|| DEFAULT_API_VERSION.into());
        let valid_version = api_version
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && (a.to_string() + b).bytes().all(|c| c.is_ascii_digit())
            });
        if !valid_version {
            return Err(SinkBuildError::new(
                index,
                "api_version",
                format!("`{api_version}` is not an API version like v63.0 (collections upsert needs v46.0 or later)"),
            ));
        }
        let object = api_name(
            index,
            "object",
            cfg.object.as_deref().unwrap_or(DEFAULT_OBJECT),
        )?;
        let external_id_field = api_name(
            index,
            "external_id_field",
            cfg.external_id_field.as_deref().ok_or_else(|| {
                SinkBuildError::new(
                    index,
                    "external_id_field",
                    "required for kind `salesforce`: the external id field that holds the lead's idempotency key (e.g. Leadrouter_Key__c)",
                )
            })?,
        )?;
        let fields =
            PropertyMap::from_config(index, "fields", cfg.fields.as_ref(), DEFAULT_FIELDS)?;
        if cfg
            .fields
            .as_ref()
            .is_some_and(|f| f.contains_key(&external_id_field))
        {
            return Err(SinkBuildError::new(
                index,
                &format!("fields.{external_id_field}"),
                "the external id field always holds the lead's key; remove it from [sinks.fields]",
            ));
        }
        let batch = BatchSettings::from_config(
            index,
            "Salesforce",
            MAX_RECORDS,
            DEFAULTS,
            cfg.max_records,
            cfg.max_bytes,
            cfg.linger,
            cfg.max_in_flight,
        )?;
        let (daily_limit, headroom) = daily_keys(
            index,
            cfg.daily_limit.unwrap_or(DEFAULT_DAILY_LIMIT),
            cfg.headroom.unwrap_or(DEFAULT_HEADROOM),
        )?;
        let timeout = super::timeout_or_default(index, cfg.timeout.or(Some(DEFAULT_TIMEOUT)))?;
        Ok(SalesforceSpec {
            instance_url,
            api_version,
            object,
            external_id_field,
            fields,
            auth,
            batch,
            daily_limit,
            headroom,
            timeout,
        })
    }
}

pub type SalesforceSink = BatchSink<SalesforceApi>;

pub(crate) fn build(
    index: usize,
    name: &str,
    spec: SalesforceSpec,
    ordering: SinkOrdering,
    ctx: &SinkContext,
) -> Result<SalesforceSink, SinkBuildError> {
    let tokens = match &spec.auth {
        AuthSpec::Static { token_env } => {
            Tokens::Static(ctx.secret(index, "token_env", token_env)?)
        }
        AuthSpec::ClientCredentials {
            token_url,
            client_id_env,
            client_secret_env,
        } => Tokens::ClientCredentials(Box::new(ClientCredentials {
            token_url: token_url.clone(),
            client_id: ctx.secret(index, "client_id_env", client_id_env)?,
            client_secret: ctx.secret(index, "client_secret_env", client_secret_env)?,
            current: tokio::sync::Mutex::new(None),
        })),
    };
    let api = SalesforceApi {
        sink: name.to_string(),
        instance_url: spec.instance_url,
        path: format!(
            "services/data/{}/composite/sobjects/{}/{}",
            spec.api_version, spec.object, spec.external_id_field
        ),
        object: spec.object,
        external_id_field: spec.external_id_field,
        fields: spec.fields,
        client: http_client(index, spec.timeout)?,
        timeout: spec.timeout,
        tokens,
        budget: Mutex::new(DailyBudget::new(spec.daily_limit, spec.headroom)),
    };
    // The budget gauge exists from the start, at the configured limit.
    api.publish(&api.budget());
    Ok(BatchSink::start(name, ordering, spec.batch, api))
}

/// Where the access token comes from.
enum Tokens {
    Static(String),
    ClientCredentials(Box<ClientCredentials>),
}

struct ClientCredentials {
    token_url: Url,
    client_id: String,
    client_secret: String,
    /// The token in use; replaced on 401. Behind an async lock so that concurrent calls that
    /// all see the expiry fetch one new token, not one each.
    current: tokio::sync::Mutex<Option<Session>>,
}

#[derive(Clone)]
struct Session {
    token: String,
    instance_url: Option<String>,
    /// Bumped on each fetch: a call that failed with an old token does not throw away a new
    /// one another call already fetched.
    generation: u64,
}

pub struct SalesforceApi {
    sink: String,
    instance_url: Option<Url>,
    path: String,
    object: String,
    external_id_field: String,
    fields: PropertyMap,
    client: reqwest::Client,
    timeout: Duration,
    tokens: Tokens,
    budget: Mutex<DailyBudget>,
}

pub struct Record {
    body: Value,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    instance_url: Option<String>,
}

#[derive(Deserialize)]
struct UpsertResult {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    success: bool,
    #[serde(default)]
    created: Option<bool>,
    #[serde(default)]
    errors: Vec<RecordError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordError {
    #[serde(default, alias = "errorCode")]
    status_code: String,
    #[serde(default)]
    message: String,
}

impl SalesforceApi {
    fn budget(&self) -> std::sync::MutexGuard<'_, DailyBudget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, b: &DailyBudget) {
        metrics().sink_budget(&self.sink, "daily", b.remaining(), b.limit());
    }

    /// `Sforce-Limit-Info: api-usage=10018/100000[; api-bursts=1/750]`.
    fn observe(&self, headers: &HeaderMap) {
        let Some(info) = headers
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        if let Some((used, limit)) = parse_limit_info(info) {
            let mut b = self.budget();
            b.observe_used(used, limit);
            self.publish(&b);
        }
    }

    /// The session to use: the current one, or a new one when there is none or `stale` (the
    /// generation a call was refused with) is still current.
    async fn session(&self, stale: Option<u64>) -> Result<Session, SinkError> {
        let c = match &self.tokens {
            Tokens::Static(t) => {
                return Ok(Session {
                    token: t.clone(),
                    instance_url: None,
                    generation: 0,
                })
            }
            Tokens::ClientCredentials(c) => c,
        };
        let mut guard = c.current.lock().await;
        if let Some(s) = guard.as_ref() {
            if stale != Some(s.generation) {
                return Ok(s.clone());
            }
        }
        let generation = guard.as_ref().map_or(1, |s| s.generation + 1);
        let req = self.client.post(c.token_url.clone()).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
        ]);
        let (status, headers, body) = read_answer(req, "Salesforce token", self.timeout).await?;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(classify_status("Salesforce token", status, &headers));
        }
        if !status.is_success() {
            return Err(SinkError::permanent(
                class::CONFIG,
                format!(
                    "Salesforce refused the client credentials (HTTP {}): check client_id_env and client_secret_env and the connected app's client credentials flow",
                    status.as_u16()
                ),
            )
            .with_detail(body_excerpt(&body)));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            SinkError::transient(
                class::HTTP_OTHER,
                "Salesforce's token answer has no access_token",
            )
        })?;
        let session = Session {
            token: answer.access_token,
            instance_url: answer.instance_url,
            generation,
        };
        tracing::info!(sink = %self.sink, generation, "Salesforce access token fetched");
        *guard = Some(session.clone());
        Ok(session)
    }

    fn url(&self, session: &Session) -> Result<Url, SinkError> {
        let base = match (&self.instance_url, &session.instance_url) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => Url::parse(u).map_err(|_| {
                SinkError::permanent(
                    class::CONFIG,
                    "the token answer's instance_url is not a URL; set instance_url",
                )
            })?,
            (None, None) => {
                return Err(SinkError::permanent(
                    class::CONFIG,
                    "the token answer names no instance_url; set instance_url",
                ))
            }
        };
        with_trailing_slash(base).join(&self.path).map_err(|_| {
            SinkError::permanent(
                class::CONFIG,
                "cannot make the collections URL from instance_url",
            )
        })
    }

    async fn send(
        &self,
        session: &Session,
        body: &[u8],
        span: &tracing::Span,
    ) -> Result<(StatusCode, HeaderMap, bytes::Bytes), SinkError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", session.token)).map_err(|_| {
                SinkError::permanent(
                    class::CONFIG,
                    "the access token is not a valid header value",
                )
            })?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        traces::inject_http(span, &mut headers);
        let req = self
            .client
            .patch(self.url(session)?)
            .headers(headers)
            .body(body.to_vec());
        read_answer(req, "Salesforce collections upsert", self.timeout).await
    }
}

/// `api-usage=N/M` out of a `Sforce-Limit-Info` value.
fn parse_limit_info(v: &str) -> Option<(u64, u64)> {
    v.split(';').find_map(|part| {
        let (k, val) = part.trim().split_once('=')?;
        if k.trim() != "api-usage" {
            return None;
        }
        let (used, limit) = val.trim().split_once('/')?;
        Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
    })
}

/// Whether a 403 body is Salesforce's throttle.
fn limit_exceeded(body: &[u8]) -> bool {
    serde_json::from_slice::<Vec<RecordError>>(body)
        .map(|errs| {
            errs.iter()
                .any(|e| e.status_code == "REQUEST_LIMIT_EXCEEDED")
        })
        .unwrap_or(false)
}

fn record_rejection(errors: &[RecordError]) -> SinkError {
    let codes: Vec<&str> = errors
        .iter()
        .map(|e| e.status_code.as_str())
        .filter(|c| !c.is_empty())
        .collect();
    let codes = if codes.is_empty() {
        "no error code".to_string()
    } else {
        codes.join(", ")
    };
    let hint = if errors
        .iter()
        .any(|e| e.status_code == "DUPLICATE_EXTERNAL_ID")
    {
        " (several records match the external id: merge them in Salesforce, then replay)"
    } else {
        ""
    };
    let detail = errors
        .iter()
        .map(|e| e.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    SinkError::permanent(
        class::HTTP_4XX,
        format!("Salesforce refused the record: {codes}{hint}"),
    )
    .with_detail(body_excerpt(detail.as_bytes()))
}

#[async_trait::async_trait]
impl BatchApi for SalesforceApi {
    type Item = Record;

    fn encode(&self, lead: &LeadRecord) -> Result<Encoded<Record>, SinkError> {
        let mut body: Map<String, Value> = Map::new();
        body.insert("attributes".into(), json!({ "type": self.object }));
        body.extend(self.fields.render(lead, false));
        body.insert(
            self.external_id_field.clone(),
            Value::String(lead.key.clone()),
        );
        let body = Value::Object(body);
        let bytes = serde_json::to_vec(&body).map(|b| b.len()).unwrap_or(0);
        Ok(Encoded {
            item: Record { body },
            bytes,
            conflict_key: lead.key.clone(),
        })
    }

    fn acquire(&self, now: Instant) -> Pace {
        let mut b = self.budget();
        if let Some(wait) = b.check(now, SystemTime::now()) {
            return Pace::Spent(wait);
        }
        b.record();
        self.publish(&b);
        Pace::Go
    }

    async fn call(&self, items: Vec<&Record>, span: &tracing::Span) -> CallOutcome {
        let records: Vec<&Value> = items.iter().map(|r| &r.body).collect();
        let body = match serde_json::to_vec(&json!({"allOrNone": false, "records": records})) {
            Ok(b) => b,
            Err(_) => {
                return CallOutcome::Failed(SinkError::permanent(
                    class::UNSERIALIZABLE,
                    "cannot encode the batch as JSON",
                ))
            }
        };
        let mut session = match self.session(None).await {
            Ok(s) => s,
            Err(e) => return CallOutcome::Failed(e),
        };
        let mut refreshed = false;
        let (status, headers, answer) = loop {
            let (status, headers, answer) = match self.send(&session, &body, span).await {
                Ok(r) => r,
                Err(e) => return CallOutcome::Failed(e),
            };
            if status == StatusCode::UNAUTHORIZED
                && !refreshed
                && !matches!(self.tokens, Tokens::Static(_))
            {
                // Expired or revoked: one new token, the same batch again.
                tracing::info!(sink = %self.sink, "Salesforce session expired; fetching a new token");
                refreshed = true;
                session = match self.session(Some(session.generation)).await {
                    Ok(s) => s,
                    Err(e) => return CallOutcome::Failed(e),
                };
                continue;
            }
            break (status, headers, answer);
        };
        self.observe(&headers);
        match status.as_u16() {
            200 | 201 => {
                let Ok(results) = serde_json::from_slice::<Vec<UpsertResult>>(&answer) else {
                    return CallOutcome::Failed(SinkError::transient(
                        class::HTTP_OTHER,
                        "Salesforce answered 200 with a body that is not a list of results",
                    ));
                };
                let now = SystemTime::now();
                let mut results = results.into_iter();
                let verdicts = items
                    .iter()
                    .map(|_| match results.next() {
                        Some(r) if r.success => Ok(Delivered {
                            persisted_at: now,
                            remote_id: r.id,
                            created: r.created,
                        }),
                        Some(r) => Err(record_rejection(&r.errors)),
                        None => Err(SinkError::transient(
                            class::HTTP_OTHER,
                            "Salesforce's answer has no result for the record; sending it again",
                        )),
                    })
                    .collect();
                CallOutcome::Answered(verdicts)
            }
            403 if limit_exceeded(&answer) => {
                let now = Instant::now();
                let mut b = self.budget();
                let wait = b.exhausted(now, SystemTime::now());
                self.publish(&b);
                CallOutcome::Spent {
                    wait,
                    policy: "REQUEST_LIMIT_EXCEEDED",
                }
            }
            401 | 403 => CallOutcome::Failed(
                SinkError::permanent(
                    class::CONFIG,
                    format!(
                        "Salesforce refused the session (HTTP {}): check the credentials and the integration user's access to {}",
                        status.as_u16(),
                        self.object
                    ),
                )
                .with_detail(body_excerpt(&answer)),
            ),
            300 => CallOutcome::Failed(SinkError::permanent(
                class::HTTP_3XX,
                format!(
                    "Salesforce answered 300: several {} records match the external id field {}; merge them, then replay",
                    self.object, self.external_id_field
                ),
            )),
            400 => CallOutcome::Split(
                SinkError::permanent(class::HTTP_4XX, "Salesforce refused the request: HTTP 400")
                    .with_detail(body_excerpt(&answer)),
            ),
            _ => CallOutcome::Failed(
                classify_status("Salesforce collections upsert", status, &headers)
                    .with_detail(body_excerpt(&answer)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_is_read() {
        assert_eq!(
            parse_limit_info("api-usage=10018/100000"),
            Some((10018, 100000))
        );
        assert_eq!(
            parse_limit_info("api-bursts=1/750; api-usage=18/15000"),
            Some((18, 15000))
        );
        assert_eq!(parse_limit_info("api-usage=x/100"), None);
    }

    #[test]
    fn the_throttle_is_told_from_other_403s() {
        assert!(limit_exceeded(br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#));
        assert!(!limit_exceeded(
            br#"[{"message":"no access","errorCode":"INSUFFICIENT_ACCESS"}]"#
        ));
    }

    #[test]
    fn a_duplicate_external_id_says_what_to_do() {
        let e = record_rejection(&[RecordError {
            status_code: "DUPLICATE_EXTERNAL_ID".into(),
            message: "more than one record found for external id field: [00Q1, 00Q2]".into(),
        }]);
        assert!(e.is_permanent());
        assert!(e.message().contains("merge them"), "{e}");
    }

    #[test]
    fn config_needs_one_way_to_authenticate_and_an_external_id() {
        let base = SalesforceSinkConfig {
            external_id_field: Some("Leadrouter_Key__c".into()),
            token_url: Some("https://login.example/services/oauth2/token".into()),
            client_id_env: Some("SF_ID".into()),
            client_secret_env: Some("SF_SECRET".into()),
            ..Default::default()
        };
        let spec = SalesforceSpec::from_config(0, &base).expect("valid");
        assert_eq!(spec.batch.max_records, 200);
        assert_eq!(spec.object, "Lead");
        let both = SalesforceSinkConfig {
            token_env: Some("SF_TOKEN".into()),
            ..base.clone()
        };
        assert_eq!(
            SalesforceSpec::from_config(0, &both).expect_err("both").key,
            "sinks[0].token_env"
        );
        let static_no_instance = SalesforceSinkConfig {
            token_url: None,
            token_env: Some("SF_TOKEN".into()),
            ..base.clone()
        };
        assert_eq!(
            SalesforceSpec::from_config(0, &static_no_instance)
                .expect_err("instance")
                .key,
            "sinks[0].instance_url"
        );
        let no_ext = SalesforceSinkConfig {
            external_id_field: None,
            ..base.clone()
        };
        assert_eq!(
            SalesforceSpec::from_config(3, &no_ext)
                .expect_err("ext id")
                .key,
            "sinks[3].external_id_field"
        );
        let bad_version = SalesforceSinkConfig {
            api_version: Some("63".into()),
            ..base
        };
        assert_eq!(
            SalesforceSpec::from_config(0, &bad_version)
                .expect_err("version")
                .key,
            "sinks[0].api_version"
        );
    }
}
