//! Sinks: where a validated lead is written (CRM over HTTP, Segment, a JSON-lines file, NATS).
//!
//! Every sink is idempotent by the lead's key, so the handler pool may redeliver freely: the
//! `http` sink sends `Idempotency-Key` (or upserts under the key), `segment` uses the key as
//! `messageId`, `file` keeps the set of written keys, `nats` sets `Nats-Msg-Id`.
//!
//! Errors are classified here, once, so the pipeline only decides *when* to retry:
//! [`SinkError::Transient`] (timeouts, connection failures, 5xx, 429 with its `Retry-After`, 408)
//! or [`SinkError::Permanent`] (other 4xx, bad configuration, unserializable records). Error
//! messages carry a status and a short reason, never lead data.

pub mod batch;
mod classify;
mod config;
pub mod file;
pub mod http;
pub mod hubspot;
pub mod nats;
mod properties;
pub mod salesforce;
pub mod segment;

pub(crate) use classify::{
    body_excerpt, classify_reqwest, classify_status, http_client, parse_http_url, read_answer,
    with_trailing_slash,
};
pub use classify::{parse_retry_after, MAX_RETRY_AFTER};
pub(crate) use config::timeout_or_default;
pub use config::{
    deserialize_list, valid_sink_name, validate_configs, SinkBuildError, SinkConfig, SinkKind,
    SinkSpec, DEFAULT_FILE_PATH, DEFAULT_SEGMENT_ENDPOINT, DEFAULT_TIMEOUT, DEFAULT_TRACK_EVENT,
};
pub use file::FileSinkConfig;
pub use http::{HttpMode, HttpSinkConfig};
pub use hubspot::{HubspotSinkConfig, MissingEmail};
pub use nats::NatsSinkConfig;
pub use salesforce::SalesforceSinkConfig;
pub use segment::SegmentSinkConfig;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What every sink receives: the validated, enriched lead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeadRecord {
    pub key: String,
    pub sender: String,
    pub source_event_id: String,
    pub schema: String,
    pub received_at: String,
    pub fields: Map<String, Value>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub replay: bool,
}

impl LeadRecord {
    /// Every sink's idempotency rests on the key: a lead without one is refused, not sent.
    pub(crate) fn require_key(&self) -> Result<(), SinkError> {
        if self.key.is_empty() {
            return Err(SinkError::permanent(
                class::UNSERIALIZABLE,
                "lead has an empty key",
            ));
        }
        Ok(())
    }

    /// The record as the JSON body the `http` and `nats` sinks send.
    pub(crate) fn to_json(&self) -> Result<Vec<u8>, SinkError> {
        serde_json::to_vec(self).map_err(|_| {
            SinkError::permanent(class::UNSERIALIZABLE, "cannot encode the lead as JSON")
        })
    }
}

/// A sink confirmed the write.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// When the sink confirmed; for a lead the sink already held (a redelivery), the time of
    /// this confirmation, except for the `file` sink, which remembers the original time.
    pub persisted_at: SystemTime,
    /// The sink's own id for the record, when it tells us (CRM `id`, `STREAM:seq` for JetStream).
    pub remote_id: Option<String>,
    /// Whether this write created the record (`true`) or updated one the sink already held,
    /// when the sink tells us (HubSpot's `new`, Salesforce's `created`).
    pub created: Option<bool>,
}

/// Error classes, stable strings for metrics labels, DLQ reasons and logs.
pub mod class {
    /// No answer within the sink's timeout (also HTTP 408 and a missing PubAck).
    pub const TIMEOUT: &str = "timeout";
    /// Connection refused, reset or closed before an answer.
    pub const CONNECT: &str = "connect";
    /// HTTP 5xx.
    pub const HTTP_5XX: &str = "http_5xx";
    /// HTTP 429; `retry_after` carries the server's `Retry-After`.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// HTTP 4xx other than 408, 409-on-create and 429: the request itself is wrong.
    pub const HTTP_4XX: &str = "http_4xx";
    /// HTTP 3xx: redirects are not followed (a redirected POST may silently become a GET).
    pub const HTTP_3XX: &str = "http_3xx";
    /// Any other unexpected HTTP status (1xx).
    pub const HTTP_OTHER: &str = "http_other";
    /// The sink cannot be used as configured (bad subject for this lead, client build failure).
    pub const CONFIG: &str = "config";
    /// The record could not be encoded.
    pub const UNSERIALIZABLE: &str = "unserializable";
    /// Local I/O failed (file sink): disk full, permissions. Retried, it may heal.
    pub const IO: &str = "io";
    /// JetStream: no stream captures the subject (no responders). Retried: the stream may be
    /// being created; if it never appears the lead ends in the DLQ after the last attempt.
    pub const NO_STREAM: &str = "no_stream";
    /// The message is over the server's `max_payload`.
    pub const TOO_LARGE: &str = "too_large";
    /// The vendor's budget is spent (a daily cap, Salesforce's `REQUEST_LIMIT_EXCEEDED`): the
    /// lead goes back to the queue until the budget returns, without spending an attempt.
    pub const THROTTLED: &str = "throttled";
}

/// A sink's verdict on one lead. `message` is written for the operator (it is stored as the
/// lead's last error): a status and a short reason, never lead data or a URL. `source`, when
/// set, is the client error underneath (safe to show: never a reqwest error, whose text carries
/// the URL); render [`chain`](crate::error_chain::chain) wherever the verdict is stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("{class}: {message}")]
    Transient {
        class: &'static str,
        message: String,
        retry_after: Option<Duration>,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{class}: {message}")]
    Permanent {
        class: &'static str,
        message: String,
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl SinkError {
    pub fn class(&self) -> &'static str {
        match self {
            SinkError::Transient { class, .. } | SinkError::Permanent { class, .. } => class,
        }
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Transient { retry_after, .. } => *retry_after,
            SinkError::Permanent { .. } => None,
        }
    }
    pub fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Permanent { .. })
    }
    /// The vendor's budget, not the lead, is the problem: retried without counting an attempt.
    pub fn is_throttled(&self) -> bool {
        matches!(self, SinkError::Transient { class, .. } if *class == class::THROTTLED)
    }
    pub fn transient(class: &'static str, message: impl Into<String>) -> SinkError {
        SinkError::Transient {
            class,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }
    pub fn permanent(class: &'static str, message: impl Into<String>) -> SinkError {
        SinkError::Permanent {
            class,
            message: message.into(),
            source: None,
        }
    }
    /// The same verdict, keeping `cause` as its source.
    pub fn with_source(
        mut self,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> SinkError {
        match &mut self {
            SinkError::Transient { source, .. } | SinkError::Permanent { source, .. } => {
                *source = Some(Arc::new(cause));
            }
        }
        self
    }
    /// The short text without the class prefix.
    pub fn message(&self) -> &str {
        match self {
            SinkError::Transient { message, .. } | SinkError::Permanent { message, .. } => message,
        }
    }
}

#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;
    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError>;
    /// What this sink does with a lead's events: keep them all (a log, an event stream, a CRM
    /// that makes one record per key) or keep only the newest (a CRM that upserts by email).
    /// Decides what a late, older event gets (`pipeline::fence`). `ordering` in the config
    /// overrides it.
    fn ordering(&self) -> SinkOrdering {
        SinkOrdering::Append
    }
    /// Leads this sink wants the handler pool to hold at once, to fill its batches (0 for a
    /// sink that writes one lead per call). The pool grows to the largest of these.
    fn leads_in_flight(&self) -> usize {
        0
    }
}

/// How a sink holds a lead's successive events (the lead being its keyed email group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkOrdering {
    /// One record per lead, overwritten by each write (upsert by email): an older event that
    /// arrives after a newer one was written is skipped, or it would overwrite newer data.
    LatestWins,
    /// Every event is its own record: a late event is still written (order is not promised).
    Append,
}

/// A sink whose config says how it holds a lead's events.
struct Ordered {
    inner: Arc<dyn Sink>,
    ordering: SinkOrdering,
}

#[async_trait::async_trait]
impl Sink for Ordered {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn deliver(&self, lead: &LeadRecord) -> Result<Delivered, SinkError> {
        self.inner.deliver(lead).await
    }
    fn ordering(&self) -> SinkOrdering {
        self.ordering
    }
    fn leads_in_flight(&self) -> usize {
        self.inner.leads_in_flight()
    }
}

pub struct SinkContext {
    /// Base for the `file` sink's default and relative paths.
    pub data_dir: PathBuf,
    /// Required by the `nats` sink.
    pub nats: Option<async_nats::Client>,
    /// Snapshot of the process environment; secrets are looked up here by name.
    pub env: HashMap<String, String>,
}

impl SinkContext {
    /// The value of a secret env var named in `sinks[index].{key}`; empty counts as unset.
    fn secret(&self, index: usize, key: &str, var: &str) -> Result<String, SinkBuildError> {
        match self.env.get(var) {
            Some(v) if !v.is_empty() => Ok(v.clone()),
            _ => Err(SinkBuildError::new(
                index,
                key,
                format!("env var `{var}` is not set"),
            )),
        }
    }
}

/// Validates `cfg` (as `sinks[index]`), resolves its secrets from `ctx.env` and returns the
/// ready sink. Builds are cheap except `file`, which reads its file to load the written keys.
pub async fn build(
    index: usize,
    cfg: &SinkConfig,
    ctx: &SinkContext,
) -> Result<Arc<dyn Sink>, SinkBuildError> {
    let sink: Arc<dyn Sink> = match cfg.spec(index)? {
        SinkSpec::Http(spec) => Arc::new(http::HttpSink::new(index, &cfg.name, spec, ctx)?),
        SinkSpec::Segment(spec) => {
            Arc::new(segment::SegmentSink::new(index, &cfg.name, spec, ctx)?)
        }
        SinkSpec::File(spec) => Arc::new(file::FileSink::open(index, &cfg.name, spec, ctx).await?),
        SinkSpec::Nats(spec) => Arc::new(nats::NatsSink::new(index, &cfg.name, spec, ctx)?),
        // One record per email: a late, older event must not overwrite a newer one.
        SinkSpec::Hubspot(spec) => Arc::new(hubspot::build(
            index,
            &cfg.name,
            spec,
            cfg.ordering.unwrap_or(SinkOrdering::LatestWins),
            ctx,
        )?),
        // One record per idempotency key: every event is its own record.
        SinkSpec::Salesforce(spec) => Arc::new(salesforce::build(
            index,
            &cfg.name,
            spec,
            cfg.ordering.unwrap_or(SinkOrdering::Append),
            ctx,
        )?),
    };
    let sink = match cfg.ordering {
        Some(ordering) if ordering != sink.ordering() => Arc::new(Ordered {
            inner: sink,
            ordering,
        }) as Arc<dyn Sink>,
        _ => sink,
    };
    tracing::info!(sink = %cfg.name, kind = %cfg.kind, ordering = ?sink.ordering(), "sink ready");
    Ok(sink)
}

#[cfg(test)]
mod tests;
