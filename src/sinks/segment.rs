//! `kind = "segment"`: the Segment HTTP Tracking API (or anything speaking it, e.g. RudderStack,
//! Jitsu, the sandbox).
//!
//! One delivery is two calls, in order:
//! - `POST {endpoint}/v1/identify`: `userId` = lead key, `traits` = all lead fields,
//!   `messageId` = lead key;
//! - `POST {endpoint}/v1/track`: `event` (default "Lead Received"), `properties` = the lead
//!   fields minus `track_exclude` (default `email`, `phone`: contact data belongs on the
//!   profile, not copied into every event) plus `sender` and `schema` unless a field already
//!   has that name, `messageId` = `{key}:track` (distinct from identify's, so Segment's dedupe
//!   by messageId does not swallow one of them).
//!
//! Both carry `timestamp` = `received_at` (when the lead happened, not when we got round to
//! it) and authenticate with HTTP basic auth, the write key as user name. Both must succeed;
//! a retry repeats both, which Segment dedupes by `messageId`.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{
    class, classify_reqwest, classify_status, http_client, parse_http_url, timeout_or_default,
    Delivered, LeadRecord, Sink, SinkBuildError, SinkContext, SinkError, DEFAULT_SEGMENT_ENDPOINT,
    DEFAULT_TRACK_EVENT,
};

/// The keys of a `kind = "segment"` sink, besides `name`, `kind` and `ordering`. Unset keys
/// take their defaults in [`SegmentSpec::from_config`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentSinkConfig {
    /// Default `https://api.segment.io`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Required: the env var holding the write key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_key_env: Option<String>,
    /// Track event name; default `Lead Received`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Fields left out of the track event's properties (they stay in identify traits);
    /// default `["email", "phone"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_exclude: Option<Vec<String>>,
    /// Deadline of each of the two requests. Default 5s.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Validated `segment` sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSpec {
    /// Always ends with `/`, so `v1/...` joins below it.
    pub endpoint: Url,
    pub write_key_env: String,
    pub event: String,
    pub track_exclude: Vec<String>,
    pub timeout: Duration,
}

impl SegmentSpec {
    pub(crate) fn from_config(
        index: usize,
        cfg: &SegmentSinkConfig,
    ) -> Result<SegmentSpec, SinkBuildError> {
        let timeout = timeout_or_default(index, cfg.timeout)?;
        let endpoint = super::with_trailing_slash(parse_http_url(
            index,
            "endpoint",
            cfg.endpoint.as_deref().unwrap_or(DEFAULT_SEGMENT_ENDPOINT),
        )?);
        let write_key_env = cfg.write_key_env.clone().ok_or_else(|| {
            SinkBuildError::new(
                index,
                "write_key_env",
                "required for kind `segment` (the env var holding the write key)",
            )
        })?;
        let event = cfg
            .event
            .clone()
            .unwrap_or_else(|| DEFAULT_TRACK_EVENT.into());
        if event.trim().is_empty() {
            return Err(SinkBuildError::new(index, "event", "must not be empty"));
        }
        Ok(SegmentSpec {
            endpoint,
            write_key_env,
            event,
            track_exclude: cfg
                .track_exclude
                .clone()
                .unwrap_or_else(|| vec!["email".into(), "phone".into()]),
            timeout,
        })
    }
}

pub struct SegmentSink {
    name: String,
    identify_url: Url,
    track_url: Url,
    event: String,
    track_exclude: Vec<String>,
    timeout: Duration,
    client: reqwest::Client,
    headers: HeaderMap,
}

impl SegmentSink {
    pub(crate) fn new(
        index: usize,
        name: &str,
        spec: SegmentSpec,
        ctx: &SinkContext,
    ) -> Result<SegmentSink, SinkBuildError> {
        let write_key = ctx.secret(index, "write_key_env", &spec.write_key_env)?;
        let join = |p: &str| {
            spec.endpoint.join(p).map_err(|e| {
                SinkBuildError::new(
                    index,
                    "endpoint",
                    format!("cannot make the `{p}` URL from it"),
                )
                .with_source(e)
            })
        };
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"));
        let mut auth = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| {
            SinkBuildError::new(index, "write_key_env", "write key is not header-safe")
        })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(SegmentSink {
            name: name.to_string(),
            identify_url: join("v1/identify")?,
            track_url: join("v1/track")?,
            event: spec.event,
            track_exclude: spec.track_exclude,
            timeout: spec.timeout,
            client: http_client(index, spec.timeout)?,
            headers,
        })
    }

    fn identify_body(&self, lead: &LeadRecord) -> Value {
        json!({
            "userId": lead.key,
            "traits": lead.fields,
            "messageId": lead.key,
            "timestamp": lead.received_at,
            "context": context(),
        })
    }

    fn track_body(&self, lead: &LeadRecord) -> Value {
        let mut props: Map<String, Value> = lead
            .fields
            .iter()
            .filter(|(k, _)| !self.track_exclude.iter().any(|x| x == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        props
            .entry("sender")
            .or_insert_with(|| Value::String(lead.sender.clone()));
        props
            .entry("schema")
            .or_insert_with(|| Value::String(lead.schema.clone()));
        json!({
            "userId": lead.key,
            "event": self.event,
            "properties": props,
            "messageId": track_message_id(&lead.key),
            "timestamp": lead.received_at,
            "context": context(),
        })
    }

    async fn call(&self, what: &str, url: &Url, body: &Value) -> Result<(), SinkError> {
        let bytes = serde_json::to_vec(body).map_err(|_| {
            SinkError::permanent(class::UNSERIALIZABLE, format!("{what}: cannot encode"))
        })?;
        let mut headers = self.headers.clone();
        crate::telemetry::traces::inject_http(&tracing::Span::current(), &mut headers);
        let resp = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(bytes)
            .send()
            .await
            .map_err(|e| classify_reqwest(what, &e, self.timeout))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(classify_status(what, status, resp.headers()));
        }
        // Drain the small answer so the connection goes back to the pool.
        let _ = resp.bytes().await;
        Ok(())
    }
}

/// The track call's `messageId` for a lead key.
pub fn track_message_id(key: &str) -> String {
    format!("{key}:track")
}

fn context() -> Value {
    json!({"library": {"name": "leadrouter", "version": env!("CARGO_PKG_VERSION")}})
}

#[async_trait::async_trait]
impl Sink for SegmentSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError> {
        lead.require_key()?;
        self.call("identify", &self.identify_url, &self.identify_body(lead))
            .await?;
        self.call("track", &self.track_url, &self.track_body(lead))
            .await?;
        Ok(Delivered {
            persisted_at: SystemTime::now(),
            remote_id: None,
            created: None,
        })
    }
}
