//! `kind = "http"`: a CRM (or any JSON API) over HTTP.
//!
//! `mode = "create"` POSTs the record to `url` with `Idempotency-Key: {key}`; a 409 Conflict
//! answer means the CRM already holds that key, which is success. `mode = "upsert"` PUTs it to
//! `{url}/{key}`, for CRMs without idempotency keys: writing the same key twice is harmless.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::{
    class, classify_reqwest, classify_status, http_client, parse_http_url, timeout_or_default,
    Delivered, LeadRecord, Sink, SinkBuildError, SinkContext, SinkError,
};

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The keys of a `kind = "http"` sink, besides `name`, `kind` and `ordering`. Unset keys take
/// their defaults in [`HttpSpec::from_config`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Default `create`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<HttpMode>,
    /// Deadline of the whole request. Default 5s.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Header carrying the credential; default `Authorization`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_header: Option<String>,
    /// Env var holding the credential (the header value, after `auth_prefix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_env: Option<String>,
    /// Prepended to the env var's value, e.g. `"Bearer "`; default empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_prefix: Option<String>,
    /// Static extra headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// `mode` of the `http` sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// `POST {url}` with `Idempotency-Key: {key}`; 409 Conflict counts as already written.
    #[default]
    Create,
    /// `PUT {url}/{key}`: for CRMs without native idempotency the key itself makes it safe.
    Upsert,
}

/// Validated `http` sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    pub url: Url,
    pub mode: HttpMode,
    pub timeout: Duration,
    pub auth_header: String,
    pub auth_env: Option<String>,
    pub auth_prefix: String,
    pub headers: Vec<(String, String)>,
}

impl HttpSpec {
    pub(crate) fn from_config(
        index: usize,
        cfg: &HttpSinkConfig,
    ) -> Result<HttpSpec, SinkBuildError> {
        let timeout = timeout_or_default(index, cfg.timeout)?;
        let url = cfg
            .url
            .as_deref()
            .ok_or_else(|| SinkBuildError::new(index, "url", "required for kind `http`"))?;
        let url = parse_http_url(index, "url", url)?;
        let auth_header = cfg
            .auth_header
            .clone()
            .unwrap_or_else(|| "Authorization".into());
        HeaderName::from_bytes(auth_header.as_bytes()).map_err(|_| {
            SinkBuildError::new(
                index,
                "auth_header",
                format!("`{auth_header}` is not a valid header name"),
            )
        })?;
        if cfg.auth_prefix.is_some() && cfg.auth_env.is_none() {
            return Err(SinkBuildError::new(
                index,
                "auth_prefix",
                "set auth_env too (the env var holding the credential)",
            ));
        }
        let mut headers = Vec::new();
        for (k, v) in cfg.headers.iter().flatten() {
            let key = format!("headers.{k}");
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| SinkBuildError::new(index, &key, "not a valid header name"))?;
            if name == reqwest::header::CONTENT_TYPE
                || name.as_str().eq_ignore_ascii_case(IDEMPOTENCY_KEY)
            {
                return Err(SinkBuildError::new(
                    index,
                    &key,
                    "set by the sink itself; remove it",
                ));
            }
            HeaderValue::from_str(v)
                .map_err(|_| SinkBuildError::new(index, &key, "not a valid header value"))?;
            headers.push((k.clone(), v.clone()));
        }
        Ok(HttpSpec {
            url,
            mode: cfg.mode.unwrap_or_default(),
            timeout,
            auth_header,
            auth_env: cfg.auth_env.clone(),
            auth_prefix: cfg.auth_prefix.clone().unwrap_or_default(),
            headers,
        })
    }
}

pub struct HttpSink {
    name: String,
    url: Url,
    mode: HttpMode,
    timeout: Duration,
    /// One client per sink: its pool keeps connections to the CRM warm.
    client: reqwest::Client,
    /// Static headers, the credential included (marked sensitive so it never shows in Debug).
    headers: HeaderMap,
}

impl HttpSink {
    pub(crate) fn new(
        index: usize,
        name: &str,
        spec: HttpSpec,
        ctx: &SinkContext,
    ) -> Result<HttpSink, SinkBuildError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in &spec.headers {
            // Checked in `from_config`; a failure here would be a bug, reported as config.
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) else {
                return Err(SinkBuildError::new(
                    index,
                    &format!("headers.{k}"),
                    "invalid",
                ));
            };
            headers.insert(n, v);
        }
        if let Some(var) = &spec.auth_env {
            let secret = ctx.secret(index, "auth_env", var)?;
            let name = HeaderName::from_bytes(spec.auth_header.as_bytes())
                .map_err(|_| SinkBuildError::new(index, "auth_header", "not a header name"))?;
            let mut value = HeaderValue::from_str(&format!("{}{secret}", spec.auth_prefix))
                .map_err(|_| {
                    SinkBuildError::new(
                        index,
                        "auth_env",
                        format!("the value of `{var}` is not a valid header value"),
                    )
                })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(HttpSink {
            name: name.to_string(),
            url: spec.url,
            mode: spec.mode,
            timeout: spec.timeout,
            client: http_client(index, spec.timeout)?,
            headers,
        })
    }

    /// `{url}/{key}`, the key percent-encoded as one path segment.
    fn upsert_url(&self, key: &str) -> Result<Url, SinkError> {
        let mut u = self.url.clone();
        u.path_segments_mut()
            .map_err(|_| SinkError::permanent(class::CONFIG, "url cannot take a path"))?
            .pop_if_empty()
            .push(key);
        Ok(u)
    }
}

/// The CRM's id for the record: a JSON `id` (string or number) in the answer, if any.
pub(crate) fn remote_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.get("id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait::async_trait]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError> {
        lead.require_key()?;
        let body = lead.to_json()?;
        let req = match self.mode {
            HttpMode::Create => {
                let key = HeaderValue::from_str(&lead.key).map_err(|_| {
                    SinkError::permanent(
                        class::UNSERIALIZABLE,
                        "lead key is not a valid header value",
                    )
                })?;
                self.client
                    .post(self.url.clone())
                    .header(IDEMPOTENCY_KEY, key)
            }
            HttpMode::Upsert => self.client.put(self.upsert_url(&lead.key)?),
        };
        let mut headers = self.headers.clone();
        // The lead's sink span: a CRM (or a proxy) that traces continues the lead's trace.
        crate::telemetry::traces::inject_http(&tracing::Span::current(), &mut headers);
        let resp = req
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| classify_reqwest("", &e, self.timeout))?;
        let status = resp.status();
        let already = status == StatusCode::CONFLICT && self.mode == HttpMode::Create;
        if !status.is_success() && !already {
            let err = classify_status("", status, resp.headers());
            // The CRM's reason ("email invalid", "rate limit for org") is what an operator needs
            // in the DLQ; an unreadable body just leaves it out.
            let detail = resp
                .bytes()
                .await
                .ok()
                .and_then(|b| super::body_excerpt(&b));
            let err = err.with_detail(detail);
            tracing::debug!(sink = %self.name, key = %lead.key, status = status.as_u16(), "sink refused");
            return Err(err);
        }
        // The CRM answered 2xx (or 409 = it already has the key): the write is done. A broken
        // body only costs the remote id, so it is not an error (a retry would change nothing).
        let remote_id = match resp.bytes().await {
            Ok(b) => remote_id(&b),
            Err(e) => {
                tracing::warn!(sink = %self.name, key = %lead.key, error = %crate::error_chain::chain(&e.without_url()), "answer body unreadable");
                None
            }
        };
        if already {
            tracing::debug!(sink = %self.name, key = %lead.key, "409: the CRM already holds this key");
        }
        Ok(Delivered {
            persisted_at: SystemTime::now(),
            remote_id,
            created: None,
        })
    }
}
