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

pub mod file;
pub mod http;
pub mod nats;
pub mod segment;

pub use file::FileSinkConfig;
pub use http::{HttpMode, HttpSinkConfig};
pub use nats::NatsSinkConfig;
pub use segment::SegmentSinkConfig;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize};
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
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("{class}: {message}")]
    Transient {
        class: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{class}: {message}")]
    Permanent {
        class: &'static str,
        message: String,
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
    pub fn transient(class: &'static str, message: impl Into<String>) -> SinkError {
        SinkError::Transient {
            class,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn permanent(class: &'static str, message: impl Into<String>) -> SinkError {
        SinkError::Permanent {
            class,
            message: message.into(),
        }
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

/// One `[[sinks]]` entry: the keys every kind takes, and the kind with its own keys. The TOML
/// stays one flat table per sink (`name`, `kind`, then that kind's keys); each kind's keys are
/// the fields of its struct in its own file, so a key of another kind (or a typo) is refused
/// while parsing, with the key named. `docs/sinks.md` lists every key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkConfig {
    /// Unique; used in metrics labels and per-sink completion records.
    pub name: String,
    /// Rendered flat into the entry (`kind = "http"`, `url = ...`), as it is read.
    #[serde(flatten)]
    pub kind: SinkKind,
    /// `latest-wins` for a CRM that keeps one record per email (HubSpot-style upsert): a lead's
    /// older event arriving after a newer one was written is skipped (and recorded), never
    /// written over it. `append` (the default) writes every event: right for logs, event
    /// streams and CRMs that keep one record per idempotency key, where skipping would lose a
    /// record (two people sharing an inbox are two leads with one email).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering: Option<SinkOrdering>,
}

/// `kind = "..."` and the keys only that kind takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkKind {
    Http(http::HttpSinkConfig),
    Segment(segment::SegmentSinkConfig),
    File(file::FileSinkConfig),
    Nats(nats::NatsSinkConfig),
}

impl SinkKind {
    /// The `kind` values, for messages.
    const NAMES: &'static str = "http, segment, file, nats";

    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Http(_) => "http",
            SinkKind::Segment(_) => "segment",
            SinkKind::File(_) => "file",
            SinkKind::Nats(_) => "nats",
        }
    }

    /// The kind called `kind`, its keys read from `keys` (the entry without the common keys).
    fn from_keys(kind: &str, keys: toml::Table) -> Result<SinkKind, EntryError> {
        Ok(match kind {
            "http" => SinkKind::Http(kind_keys(kind, keys)?),
            "segment" => SinkKind::Segment(kind_keys(kind, keys)?),
            "file" => SinkKind::File(kind_keys(kind, keys)?),
            "nats" => SinkKind::Nats(kind_keys(kind, keys)?),
            other => {
                return Err(EntryError::new(
                    "kind",
                    format!(
                        "unknown sink kind `{other}`, expected one of {}",
                        SinkKind::NAMES
                    ),
                ))
            }
        })
    }
}

impl std::fmt::Display for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<http::HttpSinkConfig> for SinkKind {
    fn from(c: http::HttpSinkConfig) -> SinkKind {
        SinkKind::Http(c)
    }
}
impl From<segment::SegmentSinkConfig> for SinkKind {
    fn from(c: segment::SegmentSinkConfig) -> SinkKind {
        SinkKind::Segment(c)
    }
}
impl From<file::FileSinkConfig> for SinkKind {
    fn from(c: file::FileSinkConfig) -> SinkKind {
        SinkKind::File(c)
    }
}
impl From<nats::NatsSinkConfig> for SinkKind {
    fn from(c: nats::NatsSinkConfig) -> SinkKind {
        SinkKind::Nats(c)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading an entry. serde cannot refuse unknown keys through `#[serde(flatten)]`, and which
// struct the rest of the table is depends on `kind`, which may come after the kind's keys. So
// the entry is read as a table, the common keys are taken out, and what is left must be
// exactly the kind's keys (its struct has `deny_unknown_fields`).

/// Why an entry does not parse; `key` is relative to the entry, empty for the entry itself.
#[derive(Debug)]
struct EntryError {
    key: String,
    message: String,
}

impl EntryError {
    fn new(key: &str, message: impl Into<String>) -> EntryError {
        EntryError {
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn at(self, index: usize) -> SinkBuildError {
        SinkBuildError::new(index, &self.key, self.message)
    }
}

impl SinkConfig {
    fn from_table(mut table: toml::Table) -> Result<SinkConfig, EntryError> {
        let name: String =
            take(&mut table, "name")?.ok_or_else(|| EntryError::new("name", "required"))?;
        let kind: String = take(&mut table, "kind")?.ok_or_else(|| {
            EntryError::new("kind", format!("required, one of {}", SinkKind::NAMES))
        })?;
        let ordering = take(&mut table, "ordering")?;
        let kind = SinkKind::from_keys(&kind, table)?;
        Ok(SinkConfig {
            name,
            kind,
            ordering,
        })
    }
}

fn take<T: serde::de::DeserializeOwned>(
    table: &mut toml::Table,
    key: &str,
) -> Result<Option<T>, EntryError> {
    table
        .remove(key)
        .map(|v| T::deserialize(v).map_err(|e| EntryError::new(key, e.message())))
        .transpose()
}

/// A sink entry on its own (no index known): errors name the sink.
impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SinkConfig, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let name = table
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_string);
        SinkConfig::from_table(table).map_err(|e| {
            let sink = name.map_or_else(|| "sink".to_string(), |n| format!("sink `{n}`"));
            let key = if e.key.is_empty() {
                String::new()
            } else {
                format!(", key `{}`", e.key)
            };
            serde::de::Error::custom(format!("{sink}{key}: {}", e.message))
        })
    }
}

/// The `[[sinks]]` array of the config file: errors name the entry's key by index
/// (`sinks[1].write_key_env`), as validation does.
pub fn deserialize_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SinkConfig>, D::Error> {
    Vec::<toml::Table>::deserialize(d)?
        .into_iter()
        .enumerate()
        .map(|(i, t)| SinkConfig::from_table(t).map_err(|e| serde::de::Error::custom(e.at(i))))
        .collect()
}

/// Reads one kind's struct from the keys left in the entry. The values go through a
/// deserializer that remembers their key: serde's messages for a bad field value do not name
/// the field, and an unknown one is reported through [`KeyError::Unknown`] with the keys the
/// kind does take (serde passes the struct's field list), so no list of keys is kept by hand.
fn kind_keys<T: serde::de::DeserializeOwned>(
    kind: &str,
    keys: toml::Table,
) -> Result<T, EntryError> {
    let entries = keys
        .into_iter()
        .map(|(key, value)| (key.clone(), KeyedValue { key, value }));
    T::deserialize(serde::de::value::MapDeserializer::new(entries)).map_err(|e| match e {
        KeyError::Unknown { key, expected } => EntryError::new(
            &key,
            format!(
                "not a key of kind `{kind}` (it takes: {})",
                expected.join(", ")
            ),
        ),
        KeyError::Value { key, message } => EntryError::new(&key, message),
        KeyError::Other(message) => EntryError::new("", message),
    })
}

#[derive(Debug, thiserror::Error)]
enum KeyError {
    #[error("unknown key `{key}`")]
    Unknown {
        key: String,
        expected: &'static [&'static str],
    },
    #[error("`{key}`: {message}")]
    Value { key: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl serde::de::Error for KeyError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        KeyError::Other(msg.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        KeyError::Unknown {
            key: field.to_string(),
            expected,
        }
    }
}

/// One value of a kind's keys; failures carry its key.
struct KeyedValue {
    key: String,
    value: toml::Value,
}

impl KeyedValue {
    fn fail(key: String) -> impl FnOnce(toml::de::Error) -> KeyError {
        move |e| KeyError::Value {
            key,
            message: e.message().to_string(),
        }
    }
}

impl<'de> serde::de::IntoDeserializer<'de, KeyError> for KeyedValue {
    type Deserializer = KeyedValue;
    fn into_deserializer(self) -> KeyedValue {
        self
    }
}

impl<'de> Deserializer<'de> for KeyedValue {
    type Error = KeyError;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, KeyError> {
        self.value.deserialize_any(v).map_err(Self::fail(self.key))
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, KeyError> {
        self.value
            .deserialize_option(v)
            .map_err(Self::fail(self.key))
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, KeyError> {
        self.value
            .deserialize_enum(name, variants, v)
            .map_err(Self::fail(self.key))
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, KeyError> {
        self.value
            .deserialize_newtype_struct(name, v)
            .map_err(Self::fail(self.key))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, KeyError> {
        self.value
            .deserialize_struct(name, fields, v)
            .map_err(Self::fail(self.key))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
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
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SEGMENT_ENDPOINT: &str = "https://api.segment.io";
pub const DEFAULT_TRACK_EVENT: &str = "Lead Received";
pub const DEFAULT_FILE_PATH: &str = "sinks/leads.jsonl";

/// A validated sink configuration with defaults applied; secrets are still env var names.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkSpec {
    Http(http::HttpSpec),
    Segment(segment::SegmentSpec),
    File(file::FileSpec),
    Nats(nats::NatsSpec),
}

impl SinkConfig {
    /// A sink of `kind` with the default `ordering` of that kind.
    pub fn new(name: impl Into<String>, kind: impl Into<SinkKind>) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            kind: kind.into(),
            ordering: None,
        }
    }

    /// A `file` sink with defaults (what the shipped config uses).
    pub fn file(name: impl Into<String>) -> SinkConfig {
        SinkConfig::new(name, file::FileSinkConfig::default())
    }

    /// Validates everything that does not need the environment or a connection.
    pub fn spec(&self, index: usize) -> Result<SinkSpec, SinkBuildError> {
        if !valid_sink_name(&self.name) {
            return Err(SinkBuildError::new(
                index,
                "name",
                format!(
                    "`{}` must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_' (it is a metrics label and a record key)",
                    self.name
                ),
            ));
        }
        Ok(match &self.kind {
            SinkKind::Http(c) => SinkSpec::Http(http::HttpSpec::from_config(index, c)?),
            SinkKind::Segment(c) => SinkSpec::Segment(segment::SegmentSpec::from_config(index, c)?),
            SinkKind::File(c) => SinkSpec::File(file::FileSpec::from_config(index, c)?),
            SinkKind::Nats(c) => SinkSpec::Nats(nats::NatsSpec::from_config(index, c)?),
        })
    }
}

/// `timeout` of the kinds that have one: [`DEFAULT_TIMEOUT`] when unset, never zero.
pub(crate) fn timeout_or_default(
    index: usize,
    timeout: Option<Duration>,
) -> Result<Duration, SinkBuildError> {
    match timeout {
        Some(t) if t.is_zero() => Err(SinkBuildError::new(
            index,
            "timeout",
            "must be greater than zero",
        )),
        t => Ok(t.unwrap_or(DEFAULT_TIMEOUT)),
    }
}

pub fn valid_sink_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Validates the whole `[[sinks]]` array without env or connections: each entry, and that
/// names are unique. Meant for config loading, so a bad sink fails at start with the key named.
pub fn validate_configs(sinks: &[SinkConfig]) -> Result<(), SinkBuildError> {
    let mut seen = HashSet::new();
    for (i, s) in sinks.iter().enumerate() {
        s.spec(i)?;
        if !seen.insert(s.name.as_str()) {
            return Err(SinkBuildError::new(
                i,
                "name",
                format!("duplicate sink name `{}`", s.name),
            ));
        }
    }
    Ok(())
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

#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct SinkBuildError {
    pub key: String,
    pub message: String,
}

impl SinkBuildError {
    /// `key` is the sub-key, e.g. `url` becomes `sinks[1].url`; empty names the entry itself.
    pub fn new(index: usize, key: &str, message: impl Into<String>) -> SinkBuildError {
        let key = if key.is_empty() {
            format!("sinks[{index}]")
        } else {
            format!("sinks[{index}].{key}")
        };
        SinkBuildError {
            key,
            message: message.into(),
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

// ---------------------------------------------------------------------------------------------
// HTTP classification, shared by the `http` and `segment` sinks.

/// Longest `Retry-After` we pass on: a misbehaving server must not park a lead for months.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses `Retry-After` as delay-seconds or an HTTP-date (IMF-fixdate, plus the obsolete
/// RFC 850 and asctime forms RFC 9110 still asks recipients to accept). A date in the past is
/// zero. Capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: huge values saturate instead of failing.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = parse_http_date(v)?;
    let at = SystemTime::from(at);
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn parse_http_date(v: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDateTime, TimeZone, Utc};
    // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 2822 parsing accepts the GMT zone).
    if let Ok(d) = chrono::DateTime::parse_from_rfc2822(v) {
        return Some(d.with_timezone(&Utc));
    }
    // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"; asctime: "Sun Nov  6 08:49:37 1994".
    for fmt in ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(v, fmt) {
            return Some(Utc.from_utc_datetime(&n));
        }
    }
    None
}

/// Formats an HTTP-date (IMF-fixdate), e.g. for a `Retry-After` header.
pub fn format_http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

fn status_text(what: &str, status: reqwest::StatusCode) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    if what.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
            .trim_end()
            .to_string()
    } else {
        format!("{what}: HTTP {} {reason}", status.as_u16())
            .trim_end()
            .to_string()
    }
}

/// What the remote said with a refusal, for the operator: the first bytes of the answer body on
/// one line, masked here at the source because the message is stored (idempotency record, DLQ)
/// and CRMs like to echo the record they refused.
pub(crate) fn body_excerpt(body: &[u8]) -> Option<String> {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX * 4)]);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if one_line.is_empty() {
        return None;
    }
    let masked = crate::pii::mask_text(&one_line);
    let mut out: String = masked.chars().take(MAX).collect();
    if masked.chars().count() > MAX {
        out.push('…');
    }
    Some(out)
}

impl SinkError {
    /// Appends the remote's own words (see [`body_excerpt`]) to the message.
    pub(crate) fn with_detail(mut self, detail: Option<String>) -> SinkError {
        if let Some(d) = detail {
            match &mut self {
                SinkError::Transient { message, .. } | SinkError::Permanent { message, .. } => {
                    message.push_str(": ");
                    message.push_str(&d);
                }
            }
        }
        self
    }
}

/// Classifies a non-success answer. `what` names the call in the message (`""` for the only
/// one). 2xx is not an error and is not passed here; 409-on-create is decided by the caller.
pub(crate) fn classify_status(
    what: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> SinkError {
    let retry_after = || {
        headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    };
    let message = status_text(what, status);
    let code = status.as_u16();
    match code {
        429 => SinkError::Transient {
            class: class::RATE_LIMITED,
            message,
            retry_after: retry_after(),
        },
        408 => SinkError::Transient {
            class: class::TIMEOUT,
            message,
            retry_after: retry_after(),
        },
        500..=599 => SinkError::Transient {
            class: class::HTTP_5XX,
            message,
            // 503 often carries Retry-After too; honour it when present.
            retry_after: retry_after(),
        },
        400..=499 => SinkError::permanent(class::HTTP_4XX, message),
        300..=399 => SinkError::permanent(
            class::HTTP_3XX,
            format!("{message} (redirects are not followed; fix the url)"),
        ),
        _ => SinkError::permanent(class::HTTP_OTHER, message),
    }
}

/// Classifies a request that got no HTTP answer. The message is the innermost cause (e.g.
/// "Connection refused (os error 111)"): reqwest's own text would include the URL, which may
/// carry the lead key or a token.
pub(crate) fn classify_reqwest(what: &str, err: &reqwest::Error, timeout: Duration) -> SinkError {
    let prefix = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    if err.is_timeout() {
        return SinkError::transient(
            class::TIMEOUT,
            format!(
                "{prefix}no answer within {}",
                humantime::format_duration(timeout)
            ),
        );
    }
    if err.is_builder() {
        return SinkError::permanent(class::CONFIG, format!("{prefix}cannot build the request"));
    }
    SinkError::transient(class::CONNECT, format!("{prefix}{}", root_cause(err)))
}

fn root_cause(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    // reqwest's own text has the URL; its sources (hyper, io) do not.
    let Some(mut cur) = err.source() else {
        return "request failed".into();
    };
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `persisted_at` in the form every record uses: RFC 3339, UTC, milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Builds a reqwest client for one sink: pooled connections, no redirects (a 301/302 would turn
/// the POST into a body-less GET that "succeeds"), the sink's deadline on the whole request.
pub(crate) fn http_client(
    index: usize,
    timeout: Duration,
) -> Result<reqwest::Client, SinkBuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("leadrouter/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| SinkBuildError::new(index, "", format!("cannot build HTTP client: {e}")))
}

/// Checks that `url` is an absolute http(s) URL; `key` names it in the error.
pub(crate) fn parse_http_url(
    index: usize,
    key: &str,
    url: &str,
) -> Result<reqwest::Url, SinkBuildError> {
    let u = reqwest::Url::parse(url.trim())
        .map_err(|e| SinkBuildError::new(index, key, format!("`{url}` is not a URL: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(SinkBuildError::new(
            index,
            key,
            format!("`{url}` must be an http:// or https:// URL"),
        ));
    }
    if u.cannot_be_a_base() || u.host_str().is_none() {
        return Err(SinkBuildError::new(
            index,
            key,
            format!("`{url}` has no host"),
        ));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The `sinks` part of the config file, read as [`crate::config::Config`] reads it.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(deserialize_with = "deserialize_list")]
        sinks: Vec<SinkConfig>,
    }

    fn parse(text: &str) -> Result<Vec<SinkConfig>, String> {
        toml::from_str::<File>(text)
            .map(|f| f.sinks)
            .map_err(|e| e.to_string())
    }

    const ALL_KINDS: &str = r#"
[[sinks]]
name = "crm"
kind = "http"
url = "https://crm.example.com/api/leads"
mode = "upsert"
timeout = "3s"
auth_env = "CRM_TOKEN"
auth_prefix = "Bearer "
[sinks.headers]
X-Source = "leadrouter"

[[sinks]]
name = "analytics"
kind = "segment"
write_key_env = "SEGMENT_WRITE_KEY"
event = "Lead Captured"

[[sinks]]
name = "archive"
kind = "file"
path = "archive/leads.jsonl"
fsync = true

[[sinks]]
name = "bus"
kind = "nats"
subject = "crm.leads.{sender}"
jetstream = true
"#;

    #[tokio::test]
    async fn ordering_is_append_unless_the_config_says_latest_wins() {
        let ctx = SinkContext {
            data_dir: std::env::temp_dir(),
            nats: None,
            env: Default::default(),
        };
        let sinks = parse(
            "[[sinks]]\nname = \"a\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\n\
             [[sinks]]\nname = \"b\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/x\"\nordering = \"latest-wins\"\n",
        )
        .unwrap();
        let a = build(0, &sinks[0], &ctx).await.unwrap();
        let b = build(1, &sinks[1], &ctx).await.unwrap();
        assert_eq!(a.ordering(), SinkOrdering::Append);
        assert_eq!(b.ordering(), SinkOrdering::LatestWins);
        assert_eq!(b.name(), "b");
        let bad = parse("[[sinks]]\nname = \"c\"\nkind = \"file\"\nordering = \"newest\"\n");
        assert!(bad.unwrap_err().contains("latest-wins"));
    }

    #[test]
    fn every_kind_parses_and_validates() {
        let sinks = parse(ALL_KINDS).unwrap();
        validate_configs(&sinks).unwrap();
        match sinks[0].spec(0).unwrap() {
            SinkSpec::Http(h) => {
                assert_eq!(h.mode, HttpMode::Upsert);
                assert_eq!(h.timeout, Duration::from_secs(3));
                assert_eq!(h.auth_header, "Authorization");
                assert_eq!(h.url.as_str(), "https://crm.example.com/api/leads");
            }
            other => panic!("{other:?}"),
        }
        match sinks[1].spec(1).unwrap() {
            SinkSpec::Segment(s) => {
                assert_eq!(s.endpoint.as_str(), "https://api.segment.io/");
                assert_eq!(s.event, "Lead Captured");
                assert_eq!(s.track_exclude, vec!["email", "phone"]);
                assert_eq!(s.timeout, DEFAULT_TIMEOUT);
            }
            other => panic!("{other:?}"),
        }
        match sinks[2].spec(2).unwrap() {
            SinkSpec::File(f) => {
                assert_eq!(f.path, Some(PathBuf::from("archive/leads.jsonl")));
                assert!(f.fsync);
            }
            other => panic!("{other:?}"),
        }
        match sinks[3].spec(3).unwrap() {
            SinkSpec::Nats(n) => {
                assert_eq!(n.subject, "crm.leads.{sender}");
                assert!(n.jetstream);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse("[[sinks]]\nname = \"a\"\nkind = \"htp\"\n").unwrap_err();
        assert!(err.contains("unknown sink kind `htp`"), "{err}");

        let err = parse("[[sinks]]\nname = \"a\"\nkind = \"http\"\nurll = \"x\"\n").unwrap_err();
        assert!(err.contains("urll"), "{err}");

        let sinks = parse(
            "[[sinks]]\nname = \"f\"\nkind = \"file\"\n[[sinks]]\nname = \"crm\"\nkind = \"http\"\n",
        )
        .unwrap();
        let err = validate_configs(&sinks).unwrap_err();
        assert_eq!(err.key, "sinks[1].url");
        assert!(
            err.to_string().starts_with("config key `sinks[1].url`"),
            "{err}"
        );

        let sinks =
            parse("[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"ftp://x/y\"\n").unwrap();
        assert_eq!(validate_configs(&sinks).unwrap_err().key, "sinks[0].url");

        // A key of another kind is refused while parsing (each kind's struct denies unknown
        // keys), with the same key and message validation used to give.
        let err = parse(
            "[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"http://x/\"\nwrite_key_env = \"K\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("config key `sinks[0].write_key_env`: not a key of kind `http`"),
            "{err}"
        );

        let sinks = parse(
            "[[sinks]]\nname = \"a\"\nkind = \"file\"\n[[sinks]]\nname = \"a\"\nkind = \"file\"\n",
        )
        .unwrap();
        let err = validate_configs(&sinks).unwrap_err();
        assert_eq!(err.key, "sinks[1].name");
        assert!(err.message.contains("duplicate"), "{err}");

        let sinks = parse("[[sinks]]\nname = \"bad name\"\nkind = \"file\"\n").unwrap();
        assert_eq!(validate_configs(&sinks).unwrap_err().key, "sinks[0].name");

        let sinks = parse("[[sinks]]\nname = \"n\"\nkind = \"nats\"\nsubject = \"a.*\"\n").unwrap();
        assert_eq!(
            validate_configs(&sinks).unwrap_err().key,
            "sinks[0].subject"
        );

        let sinks = parse("[[sinks]]\nname = \"s\"\nkind = \"segment\"\n").unwrap();
        assert_eq!(
            validate_configs(&sinks).unwrap_err().key,
            "sinks[0].write_key_env"
        );

        let sinks = parse(
            "[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"http://x/\"\ntimeout = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(
            validate_configs(&sinks).unwrap_err().key,
            "sinks[0].timeout"
        );

        let sinks = parse(
            "[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"http://x/\"\n[sinks.headers]\n\"bad header\" = \"v\"\n",
        )
        .unwrap();
        assert_eq!(
            validate_configs(&sinks).unwrap_err().key,
            "sinks[0].headers.bad header"
        );
    }

    #[test]
    fn missing_secret_names_the_key() {
        let sinks = parse(ALL_KINDS).unwrap();
        let ctx = SinkContext {
            data_dir: PathBuf::from("/nonexistent"),
            nats: None,
            env: HashMap::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(build(0, &sinks[0], &ctx)).err().unwrap();
        assert_eq!(err.key, "sinks[0].auth_env");
        assert!(err.message.contains("CRM_TOKEN"), "{err}");
        let err = rt.block_on(build(1, &sinks[1], &ctx)).err().unwrap();
        assert_eq!(err.key, "sinks[1].write_key_env");
        let err = rt.block_on(build(3, &sinks[3], &ctx)).err().unwrap();
        assert_eq!(err.key, "sinks[3]");
        assert!(err.message.contains("NATS"), "{err}");
    }

    #[test]
    fn a_key_of_another_kind_is_refused_naming_the_key_and_the_sink() {
        for (kind, foreign, kind_key) in [
            ("http", "write_key_env = \"K\"", "url = \"http://x/\""),
            ("segment", "url = \"http://x/\"", "write_key_env = \"K\""),
            ("file", "timeout = \"1s\"", "fsync = true"),
            ("nats", "path = \"x.jsonl\"", "subject = \"a.b\""),
        ] {
            let foreign_key = foreign.split(' ').next().unwrap();
            // Before and after the kind's own keys, and before `kind` itself.
            for text in [
                format!("[[sinks]]\nname = \"s\"\nkind = \"{kind}\"\n{kind_key}\n{foreign}\n"),
                format!("[[sinks]]\nname = \"s\"\n{foreign}\nkind = \"{kind}\"\n{kind_key}\n"),
            ] {
                let err = parse(&text).unwrap_err();
                assert!(
                    err.contains(&format!(
                        "config key `sinks[0].{foreign_key}`: not a key of kind `{kind}` (it takes: "
                    )),
                    "{kind}: {err}"
                );
                // On its own (no index known) the entry is named by its sink name.
                let entry = text.trim_start_matches("[[sinks]]\n");
                let err = toml::from_str::<SinkConfig>(entry).unwrap_err().to_string();
                assert!(
                    err.contains(&format!(
                        "sink `s`, key `{foreign_key}`: not a key of kind `{kind}`"
                    )),
                    "{kind}: {err}"
                );
            }
        }
        // The list of keys a kind takes comes from its struct.
        let err = parse("[[sinks]]\nname = \"a\"\nkind = \"file\"\nurl = \"x\"\n").unwrap_err();
        assert!(err.contains("(it takes: path, fsync)"), "{err}");
        // A bad value names its key too (serde alone would not).
        let err = parse("[[sinks]]\nname = \"a\"\nkind = \"file\"\nfsync = \"yes\"\n").unwrap_err();
        assert!(
            err.contains("config key `sinks[0].fsync`: invalid type"),
            "{err}"
        );
        let err = parse("[[sinks]]\nname = \"a\"\nkind = \"http\"\nmode = \"put\"\n").unwrap_err();
        assert!(
            err.contains("config key `sinks[0].mode`: unknown variant `put`"),
            "{err}"
        );
        let err = parse(
            "[[sinks]]\nname = \"a\"\nkind = \"file\"\n[[sinks]]\nname = \"b\"\nkind = \"nats\"\ntimeout = 5\n",
        )
        .unwrap_err();
        assert!(
            err.contains("config key `sinks[1].timeout`: invalid type"),
            "{err}"
        );
        let err = parse("[[sinks]]\nkind = \"file\"\n").unwrap_err();
        assert!(
            err.contains("config key `sinks[0].name`: required"),
            "{err}"
        );
        let err = parse("[[sinks]]\nname = \"a\"\n").unwrap_err();
        assert!(
            err.contains("config key `sinks[0].kind`: required"),
            "{err}"
        );
    }

    #[test]
    fn each_kind_parses_to_its_struct_and_takes_its_defaults() {
        let sinks = parse(
            "[[sinks]]\nname = \"h\"\nkind = \"http\"\nurl = \"http://crm/x\"\n\
             [[sinks]]\nname = \"s\"\nkind = \"segment\"\nwrite_key_env = \"K\"\n\
             [[sinks]]\nname = \"f\"\nkind = \"file\"\n\
             [[sinks]]\nname = \"n\"\nkind = \"nats\"\nsubject = \"a.{sender}\"\n",
        )
        .unwrap();
        assert_eq!(
            sinks[0].kind,
            SinkKind::Http(HttpSinkConfig {
                url: Some("http://crm/x".into()),
                ..Default::default()
            })
        );
        assert!(sinks.iter().all(|s| s.ordering.is_none()));
        let specs: Vec<SinkSpec> = sinks
            .iter()
            .enumerate()
            .map(|(i, s)| s.spec(i).unwrap())
            .collect();
        assert_eq!(
            specs,
            vec![
                SinkSpec::Http(http::HttpSpec {
                    url: reqwest::Url::parse("http://crm/x").unwrap(),
                    mode: HttpMode::Create,
                    timeout: Duration::from_secs(5),
                    auth_header: "Authorization".into(),
                    auth_env: None,
                    auth_prefix: String::new(),
                    headers: vec![],
                }),
                SinkSpec::Segment(segment::SegmentSpec {
                    endpoint: reqwest::Url::parse("https://api.segment.io/").unwrap(),
                    write_key_env: "K".into(),
                    event: "Lead Received".into(),
                    track_exclude: vec!["email".into(), "phone".into()],
                    timeout: Duration::from_secs(5),
                }),
                SinkSpec::File(file::FileSpec {
                    path: None,
                    fsync: false,
                }),
                SinkSpec::Nats(nats::NatsSpec {
                    subject: "a.{sender}".into(),
                    jetstream: false,
                    timeout: Duration::from_secs(5),
                }),
            ]
        );
        match &specs[2] {
            SinkSpec::File(f) => assert_eq!(
                f.resolve(Path::new("/d")),
                PathBuf::from("/d/sinks/leads.jsonl")
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(SinkConfig::file("f"), sinks[2]);
    }

    #[test]
    fn a_config_renders_back_to_the_toml_it_was_read_from() {
        let sinks = parse(ALL_KINDS).unwrap();
        #[derive(Serialize)]
        struct Out<'a> {
            sinks: &'a [SinkConfig],
        }
        let text = toml::to_string(&Out { sinks: &sinks }).unwrap();
        assert_eq!(parse(&text).unwrap(), sinks, "{text}");
        // Flat, as written by hand: the kind and its keys in the entry's own table.
        assert!(
            text.starts_with(
                "[[sinks]]\nname = \"crm\"\nkind = \"http\"\nurl = \"https://crm.example.com/api/leads\"\n"
            ),
            "{text}"
        );
        let one = SinkConfig {
            ordering: Some(SinkOrdering::LatestWins),
            ..SinkConfig::new(
                "crm",
                HttpSinkConfig {
                    url: Some("http://x/".into()),
                    timeout: Some(Duration::from_secs(2)),
                    ..Default::default()
                },
            )
        };
        assert_eq!(
            toml::to_string(&one).unwrap(),
            "name = \"crm\"\nkind = \"http\"\nurl = \"http://x/\"\ntimeout = \"2s\"\nordering = \"latest-wins\"\n"
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:57 1994", now),
            Some(Duration::from_secs(20))
        );
        // In the past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_837);
        assert_eq!(format_http_date(t), "Sun, 06 Nov 1994 08:50:37 GMT");
    }

    #[test]
    fn statuses_are_classified() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        use reqwest::StatusCode;
        let none = HeaderMap::new();
        let mut ra = HeaderMap::new();
        ra.insert(RETRY_AFTER, HeaderValue::from_static("7"));

        let e = classify_status("", StatusCode::TOO_MANY_REQUESTS, &ra);
        assert_eq!(e.class(), class::RATE_LIMITED);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(!e.is_permanent());
        assert_eq!(e.to_string(), "rate_limited: HTTP 429 Too Many Requests");

        let e = classify_status("track", StatusCode::SERVICE_UNAVAILABLE, &ra);
        assert_eq!(e.class(), class::HTTP_5XX);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.message(), "track: HTTP 503 Service Unavailable");

        let e = classify_status("", StatusCode::INTERNAL_SERVER_ERROR, &none);
        assert_eq!((e.class(), e.retry_after()), (class::HTTP_5XX, None));
        let e = classify_status("", StatusCode::REQUEST_TIMEOUT, &none);
        assert_eq!((e.class(), e.is_permanent()), (class::TIMEOUT, false));
        let e = classify_status("", StatusCode::BAD_REQUEST, &none);
        assert_eq!((e.class(), e.is_permanent()), (class::HTTP_4XX, true));
        let e = classify_status("", StatusCode::UNAUTHORIZED, &none);
        assert_eq!((e.class(), e.is_permanent()), (class::HTTP_4XX, true));
        let e = classify_status("", StatusCode::FOUND, &none);
        let detail = body_excerpt(
            b"{\"error\":\"invalid\",\n \"email\":\"Grace.Hopper@Example.COM\",\"phone\":\"+44 20 7946 0958\"}",
        );
        let with = classify_status("", StatusCode::UNPROCESSABLE_ENTITY, &none).with_detail(detail);
        assert_eq!(
            with.to_string(),
            "http_4xx: HTTP 422 Unprocessable Entity: {\"error\":\"invalid\", \"email\":\"g***@e***.com\",\"phone\":\"+44 *** *** 0958\"}"
        );
        assert_eq!(body_excerpt(b" \n "), None);
        assert_eq!(
            body_excerpt("x".repeat(500).as_bytes()).map(|s| s.chars().count()),
            Some(201)
        );
        assert_eq!((e.class(), e.is_permanent()), (class::HTTP_3XX, true));
    }
}
