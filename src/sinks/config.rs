//! `[[sinks]]`: one entry per sink, read as a flat table whose keys are checked against its
//! kind's own struct (in that kind's file), then validated into a [`SinkSpec`] without touching
//! the environment or the network.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{file, http, hubspot, nats, salesforce, segment, SinkOrdering};

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
    Hubspot(hubspot::HubspotSinkConfig),
    Salesforce(salesforce::SalesforceSinkConfig),
}

impl SinkKind {
    /// The `kind` values, for messages.
    const NAMES: &'static str = "http, segment, file, nats, hubspot, salesforce";

    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Http(_) => "http",
            SinkKind::Segment(_) => "segment",
            SinkKind::File(_) => "file",
            SinkKind::Nats(_) => "nats",
            SinkKind::Hubspot(_) => "hubspot",
            SinkKind::Salesforce(_) => "salesforce",
        }
    }

    /// The kind called `kind`, its keys read from `keys` (the entry without the common keys).
    fn from_keys(kind: &str, keys: toml::Table) -> Result<SinkKind, EntryError> {
        Ok(match kind {
            "http" => SinkKind::Http(kind_keys(kind, keys)?),
            "segment" => SinkKind::Segment(kind_keys(kind, keys)?),
            "file" => SinkKind::File(kind_keys(kind, keys)?),
            "nats" => SinkKind::Nats(kind_keys(kind, keys)?),
            "hubspot" => SinkKind::Hubspot(kind_keys(kind, keys)?),
            "salesforce" => SinkKind::Salesforce(kind_keys(kind, keys)?),
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
impl From<hubspot::HubspotSinkConfig> for SinkKind {
    fn from(c: hubspot::HubspotSinkConfig) -> SinkKind {
        SinkKind::Hubspot(c)
    }
}
impl From<salesforce::SalesforceSinkConfig> for SinkKind {
    fn from(c: salesforce::SalesforceSinkConfig) -> SinkKind {
        SinkKind::Salesforce(c)
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
    Hubspot(hubspot::HubspotSpec),
    Salesforce(salesforce::SalesforceSpec),
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
            SinkKind::Hubspot(c) => SinkSpec::Hubspot(hubspot::HubspotSpec::from_config(index, c)?),
            SinkKind::Salesforce(c) => {
                SinkSpec::Salesforce(salesforce::SalesforceSpec::from_config(index, c)?)
            }
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

#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct SinkBuildError {
    pub key: String,
    pub message: String,
    /// What failed underneath (a file that cannot be opened, a URL that does not parse).
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
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
            source: None,
        }
    }

    /// `message` followed by the cause, for callers that keep only the text next to `key`
    /// (config validation reports `key` and this).
    pub fn detail(&self) -> String {
        match &self.source {
            Some(cause) => format!(
                "{}: {}",
                self.message,
                crate::error_chain::chain(cause.as_ref())
            ),
            None => self.message.clone(),
        }
    }

    /// The same error, keeping `cause` as its source.
    pub fn with_source(
        mut self,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.source = Some(cause.into());
        self
    }
}
