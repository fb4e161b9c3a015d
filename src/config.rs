//! Typed configuration: `config/leadrouter.toml`, `LEADROUTER_*` overrides, validation that names
//! the offending key. Secrets never live in the file: the file names the env vars (or files) that
//! hold them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::intake::mapping::MappingConfig;
use crate::intake::schemes::{SchemeName, SignatureOptions};
use crate::pipeline::enrich::EnrichConfig;
use crate::sinks::SinkConfig;

pub const DEFAULT_CONFIG_PATH: &str = "config/leadrouter.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub streams: StreamsConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub senders: Vec<SenderConfig>,
    #[serde(default)]
    pub handlers: HandlersConfig,
    #[serde(default)]
    pub enrich: EnrichConfig,
    #[serde(default, deserialize_with = "crate::sinks::deserialize_list")]
    pub sinks: Vec<SinkConfig>,
    /// DLQ payload encryption keys.
    #[serde(default)]
    pub dlq: crate::dlq::crypto::DlqCryptoConfig,
    /// OTLP trace export (off unless an endpoint is set here or in `OTEL_EXPORTER_OTLP_*`).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// The handler pool and its consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlersConfig {
    /// Run the handler pool in this process. `false` makes an edge-only node (scale the edge
    /// and the handlers separately against one NATS cluster).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Handler actors; each works on one lead at a time.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Deliveries of one message before it is dead-lettered.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Redelivery after this long without an ack or progress; also the claim lease.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacked messages the server hands this consumer at most (in flight + waiting behind a
    /// busy lead).
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: usize,
    /// Messages asked for per pull.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(default = "default_backoff_cap", with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Keys remembered as done in memory, in front of the KV bucket.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
    #[serde(default = "default_schemas_dir")]
    pub schemas_dir: PathBuf,
    /// How often schema files are re-checked for changes ("fix the schema, replay").
    #[serde(default = "default_schema_reload", with = "humantime_serde")]
    pub schema_reload: Duration,
    /// Partitions of `LEADS`: a lead's partition is its group key's hash modulo this, and each
    /// partition has one owning router at a time. Fixed once the stream exists (it decides where
    /// every stored lead lives).
    #[serde(default = "default_partitions")]
    pub partitions: u16,
    /// How long a router that stopped answering (kill -9, a hung host) keeps its partitions
    /// before the others take them over: its membership record's age limit and the consumers'
    /// `priority_timeout`.
    #[serde(default = "default_ownership_timeout", with = "humantime_serde")]
    pub ownership_timeout: Duration,
    /// Deliveries of one message, whatever their cause, before the crash net dead-letters it.
    /// Only real attempts (a sink tried, or a handler that died holding the lead) count toward
    /// `max_deliver`; this bound is for what never gets that far (a NATS election redelivering
    /// everything, a lead that crashes every process that touches it).
    #[serde(default = "default_max_redeliveries")]
    pub max_redeliveries: u32,
    /// Env var holding the secret every router shares for the keyed group hash (HMAC-SHA256 of
    /// the normalized email). Unset: `group_key_file`, else a generated `{data_dir}/group.key`.
    #[serde(default = "default_group_key_env")]
    pub group_key_env: String,
    /// File holding that secret (used when the env var is unset).
    #[serde(default)]
    pub group_key_file: Option<PathBuf>,
}

fn default_partitions() -> u16 {
    16
}
fn default_ownership_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_redeliveries() -> u32 {
    100
}
fn default_group_key_env() -> String {
    "LEADROUTER_GROUP_KEY".into()
}

fn default_schema_reload() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
}
fn default_pool_size() -> usize {
    8
}
fn default_max_deliver() -> u32 {
    5
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ack_pending() -> usize {
    1024
}
fn default_prefetch() -> usize {
    64
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_cap() -> Duration {
    Duration::from_secs(60)
}
fn default_cache_capacity() -> u64 {
    100_000
}
fn default_schemas_dir() -> PathBuf {
    PathBuf::from("config/schemas")
}

impl Default for HandlersConfig {
    fn default() -> Self {
        HandlersConfig {
            enabled: true,
            pool_size: default_pool_size(),
            max_deliver: default_max_deliver(),
            ack_wait: default_ack_wait(),
            max_ack_pending: default_max_ack_pending(),
            prefetch: default_prefetch(),
            backoff_base: default_backoff_base(),
            backoff_cap: default_backoff_cap(),
            cache_capacity: default_cache_capacity(),
            schemas_dir: default_schemas_dir(),
            schema_reload: default_schema_reload(),
            partitions: default_partitions(),
            ownership_timeout: default_ownership_timeout(),
            max_redeliveries: default_max_redeliveries(),
            group_key_env: default_group_key_env(),
            group_key_file: None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `"embedded"` or one or more `nats://` URLs separated by commas.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// How long the edge waits for a PubAck before answering 503.
    #[serde(default = "default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// Credentials for an external server; every secret is named by env var or file.
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    #[serde(default)]
    pub nkey_seed_env: Option<String>,
    #[serde(default)]
    pub tls_required: bool,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

fn default_nats_url() -> String {
    "embedded".into()
}
fn default_publish_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_nats_url(),
            publish_timeout: default_publish_timeout(),
            embedded: EmbeddedConfig::default(),
            token_env: None,
            user: None,
            password_env: None,
            creds_file: None,
            nkey_seed_env: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl NatsConfig {
    pub fn is_embedded(&self) -> bool {
        self.url.trim() == "embedded"
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Client port of the embedded server (loopback only).
    #[serde(default = "default_embedded_port")]
    pub port: u16,
    /// Path to a nats-server binary; empty means the pinned one under `.tools/`, installed on
    /// first use.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Directory holding the `nats-server.conf.tmpl` template.
    #[serde(default = "default_template_dir")]
    pub template_dir: PathBuf,
    /// Env var holding the key for nats-server's own encryption at rest. Unset in the config:
    /// `LEADROUTER_NATS_STORE_KEY`, and encryption is on when that variable is set. Named in the
    /// config: the variable must be set (someone asked for an encrypted store).
    #[serde(default)]
    pub store_key_env: Option<String>,
    /// nats-server's `jetstream.cipher`.
    #[serde(default)]
    pub store_cipher: StoreCipher,
}

/// The store key's variable when the config names none.
pub const DEFAULT_STORE_KEY_ENV: &str = "LEADROUTER_NATS_STORE_KEY";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreCipher {
    #[default]
    Chachapoly,
    Aes,
}

impl StoreCipher {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreCipher::Chachapoly => "chachapoly",
            StoreCipher::Aes => "aes",
        }
    }
}

/// The store encryption `serve` should turn on, resolved against the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKey {
    /// The variable the child reads the key from (its value never goes into a file).
    pub env: String,
    pub value: String,
    pub cipher: StoreCipher,
}

impl EmbeddedConfig {
    /// `Ok(None)`: no store encryption. An explicitly named variable that is unset is an error,
    /// not a silent plaintext store.
    pub fn store_key(&self, env: &dyn EnvSource) -> Result<Option<StoreKey>, ConfigError> {
        let (name, explicit) = match &self.store_key_env {
            Some(n) => (n.as_str(), true),
            None => (DEFAULT_STORE_KEY_ENV, false),
        };
        match env.var(name).filter(|v| !v.trim().is_empty()) {
            Some(value) => {
                if value.trim().len() < 16 {
                    return Err(ConfigError::Invalid {
                        key: "nats.embedded.store_key_env".into(),
                        message: format!("{name} holds fewer than 16 characters; use a long random key (head -c 32 /dev/urandom | base64)"),
                    });
                }
                Ok(Some(StoreKey {
                    env: name.to_string(),
                    value: value.trim().to_string(),
                    cipher: self.store_cipher,
                }))
            }
            None if explicit => Err(ConfigError::Invalid {
                key: "nats.embedded.store_key_env".into(),
                message: format!("env var {name} is not set (it holds the store encryption key; unset store_key_env to run without store encryption)"),
            }),
            None => Ok(None),
        }
    }
}

fn default_embedded_port() -> u16 {
    4222
}
fn default_template_dir() -> PathBuf {
    PathBuf::from("nats")
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            port: default_embedded_port(),
            binary: None,
            template_dir: default_template_dir(),
            store_key_env: None,
            store_cipher: StoreCipher::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default = "default_dlq_max_age", with = "humantime_serde")]
    pub dlq_max_age: Duration,
    #[serde(default = "default_idempotency_ttl", with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_dlq_max_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_idempotency_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_replicas() -> usize {
    1
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            duplicate_window: default_duplicate_window(),
            max_age: default_max_age(),
            dlq_max_age: default_dlq_max_age(),
            idempotency_ttl: default_idempotency_ttl(),
            replicas: default_replicas(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    #[serde(default = "default_intake_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_intake_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body_bytes() -> u64 {
    64 * 1024
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            listen: default_intake_listen(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Env var that holds the admin token.
    #[serde(default = "default_admin_token_env")]
    pub token_env: String,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
fn default_admin_token_env() -> String {
    "LEADROUTER_ADMIN_TOKEN".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token_env: default_admin_token_env(),
        }
    }
}

/// `[telemetry]`: OTLP traces. The standard `OTEL_EXPORTER_OTLP_*` / `OTEL_SERVICE_NAME`
/// variables override the file (see `Config::apply_env`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Collector base URL, like `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:4317` for
    /// gRPC, `http://127.0.0.1:4318` for HTTP, where `/v1/traces` is appended). Unset: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The full traces URL, used as is (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); env only.
    #[serde(skip)]
    pub otlp_traces_endpoint: Option<String>,
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded (0.0 to 1.0); a sampled or unsampled incoming
    /// `traceparent` decides for its own trace.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn parse(s: &str) -> Option<OtlpProtocol> {
        match s.trim() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

fn default_service_name() -> String {
    "leadrouter".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
        }
    }
}

impl TelemetryConfig {
    /// Where spans go, or `None` when traces are off. A base URL gets `/v1/traces` for HTTP
    /// (as the OTLP spec does with `OTEL_EXPORTER_OTLP_ENDPOINT`); gRPC needs no path.
    pub fn traces_endpoint(&self) -> Option<String> {
        if let Some(e) = self.otlp_traces_endpoint.as_deref().map(str::trim) {
            return Some(e.to_string());
        }
        let base = self.otlp_endpoint.as_deref()?.trim();
        Some(match self.otlp_protocol {
            OtlpProtocol::Grpc => base.to_string(),
            OtlpProtocol::HttpProtobuf if base.trim_end_matches('/').ends_with("/v1/traces") => {
                base.to_string()
            }
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        })
    }

    fn apply_env(&mut self, env: &dyn EnvSource) -> Result<(), ConfigError> {
        if let Some(v) = env.var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.otlp_endpoint = Some(v);
        }
        if let Some(v) = env.var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.otlp_traces_endpoint = Some(v);
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(v) = env.var(name) {
                self.otlp_protocol = OtlpProtocol::parse(&v).ok_or_else(|| {
                    ConfigError::invalid(name, format!("`{v}`: use grpc or http/protobuf"))
                })?;
                break;
            }
        }
        if let Some(v) = env.var("OTEL_SERVICE_NAME") {
            self.service_name = v;
        }
        let off = |name: &str, value: &str| {
            env.var(name)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
        };
        if off("OTEL_SDK_DISABLED", "true") || off("OTEL_TRACES_EXPORTER", "none") {
            self.otlp_endpoint = None;
            self.otlp_traces_endpoint = None;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("telemetry.otlp_endpoint", &self.otlp_endpoint),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &self.otlp_traces_endpoint,
            ),
        ] {
            if let Some(u) = url.as_deref().map(str::trim) {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{u}` is not an http:// or https:// URL"),
                    ));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// One webhook source. `docs/senders-and-schemes.md` lists every key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    pub id: String,
    pub scheme: SchemeName,
    /// Scheme-specific options (header, prefix, encoding, token location, public url).
    #[serde(default)]
    pub signature: SignatureOptions,
    /// Env vars holding live secrets; more than one while rotating.
    #[serde(default)]
    pub secret_env: Vec<String>,
    /// Files holding live secrets (trailing newline trimmed).
    #[serde(default)]
    pub secret_file: Vec<PathBuf>,
    /// Allowed clock skew for signed timestamps, both directions.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    #[serde(default)]
    pub rate: RateConfig,
    /// Where the vendor's event id comes from; absent means a hash of the raw body.
    #[serde(default)]
    pub event_id: Option<EventIdSource>,
    #[serde(default = "default_schema")]
    pub schema: String,
    #[serde(default)]
    pub mapping: MappingConfig,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_schema() -> String {
    "lead.v1".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    #[serde(default = "default_per_second")]
    pub per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_per_second() -> u32 {
    100
}
fn default_burst() -> u32 {
    200
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            per_second: default_per_second(),
            burst: default_burst(),
        }
    }
}

/// Where a sender's event id is read from. In TOML a table with exactly one key:
/// `{ header = "webhook-id" }`, `{ pointer = "/lead_id" }` or `{ path = "$.payload.id" }`
/// (which is also how it serializes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "EventIdTable", rename_all = "lowercase")]
pub enum EventIdSource {
    /// Request header, e.g. `webhook-id`.
    Header(String),
    /// RFC 6901 JSON pointer into the parsed body, e.g. `/event_id`.
    Pointer(String),
    /// RFC 9535 JSONPath into the parsed body, e.g. `$.payload.id`.
    Path(String),
}

/// The table as written; an enum read directly would refuse two keys with serde's generic
/// "wrong number of keys" and no hint of which ones are meant.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIdTable {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    pointer: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("`event_id`: set exactly one of header, pointer, path (found {found})")]
pub struct EventIdError {
    found: String,
}

impl TryFrom<EventIdTable> for EventIdSource {
    type Error = EventIdError;

    fn try_from(t: EventIdTable) -> Result<EventIdSource, EventIdError> {
        match (t.header, t.pointer, t.path) {
            (Some(h), None, None) => Ok(EventIdSource::Header(h)),
            (None, Some(p), None) => Ok(EventIdSource::Pointer(p)),
            (None, None, Some(p)) => Ok(EventIdSource::Path(p)),
            (h, p, q) => {
                let set: Vec<&str> = [("header", h), ("pointer", p), ("path", q)]
                    .into_iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| k)
                    .collect();
                Err(EventIdError {
                    found: if set.is_empty() {
                        "none".into()
                    } else {
                        set.join(" and ")
                    },
                })
            }
        }
    }
}

/// Only the `[[senders]]` array; the shape of the example files in `config/examples/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendersFile {
    #[serde(default)]
    pub senders: Vec<SenderConfig>,
}

/// Overrides read from the environment (`LEADROUTER_*`); a seam so tests need not mutate the
/// process environment.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable, for components that resolve secrets by name later.
    fn snapshot(&self) -> std::collections::HashMap<String, String>;
}

pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
    fn snapshot(&self) -> std::collections::HashMap<String, String> {
        std::env::vars().collect()
    }
}

impl EnvSource for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
    fn snapshot(&self) -> std::collections::HashMap<String, String> {
        self.clone()
    }
}

impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
    fn snapshot(&self) -> std::collections::HashMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Config {
    /// Load from `path`, apply env overrides, validate.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path, env)
    }

    pub fn from_toml(text: &str, path: &Path, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: &dyn EnvSource) -> Result<(), ConfigError> {
        if let Some(url) = env.var("LEADROUTER_NATS_URL") {
            self.nats.url = url;
        }
        if let Some(v) = env.var("LEADROUTER_INTAKE_LISTEN") {
            self.intake.listen = parse_addr("LEADROUTER_INTAKE_LISTEN", &v)?;
        }
        if let Some(v) = env.var("LEADROUTER_ADMIN_LISTEN") {
            self.admin.listen = parse_addr("LEADROUTER_ADMIN_LISTEN", &v)?;
        }
        if let Some(v) = env.var("LEADROUTER_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env.var("LEADROUTER_EMBEDDED_NATS_PORT") {
            self.nats.embedded.port = v.parse().map_err(|_| {
                ConfigError::invalid("LEADROUTER_EMBEDDED_NATS_PORT", "not a port number")
            })?;
        }
        if let Some(v) = env.var("LEADROUTER_NATS_SERVER_BIN") {
            self.nats.embedded.binary = Some(PathBuf::from(v));
        }
        self.telemetry.apply_env(env)?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.nats.url.trim();
        if url.is_empty() {
            return Err(ConfigError::invalid(
                "nats.url",
                "empty; use \"embedded\" or nats:// URLs",
            ));
        }
        if !self.nats.is_embedded() {
            for u in url.split(',') {
                let u = u.trim();
                if !(u.starts_with("nats://")
                    || u.starts_with("tls://")
                    || u.starts_with("ws://")
                    || u.starts_with("wss://"))
                {
                    return Err(ConfigError::invalid(
                        "nats.url",
                        format!("`{u}` is neither \"embedded\" nor a nats:// URL"),
                    ));
                }
            }
        }
        if self.nats.publish_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "nats.publish_timeout",
                "must be greater than zero",
            ));
        }
        let s = &self.streams;
        if s.duplicate_window.is_zero() {
            return Err(ConfigError::invalid(
                "streams.duplicate_window",
                "must be greater than zero",
            ));
        }
        if s.duplicate_window > s.max_age {
            return Err(ConfigError::invalid(
                "streams.duplicate_window",
                format!(
                    "{} is longer than streams.max_age ({}); JetStream requires duplicate_window <= max_age",
                    humantime::format_duration(s.duplicate_window),
                    humantime::format_duration(s.max_age)
                ),
            ));
        }
        if s.replicas == 0 || s.replicas > 5 {
            return Err(ConfigError::invalid(
                "streams.replicas",
                "must be between 1 and 5",
            ));
        }
        if self.intake.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "intake.max_body_bytes",
                "must be greater than zero",
            ));
        }
        let h = &self.handlers;
        if h.pool_size == 0 || h.pool_size > 1024 {
            return Err(ConfigError::invalid(
                "handlers.pool_size",
                "must be between 1 and 1024",
            ));
        }
        if h.max_deliver < 1 {
            return Err(ConfigError::invalid(
                "handlers.max_deliver",
                "must be at least 1",
            ));
        }
        if h.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "handlers.ack_wait",
                "must be at least 1s",
            ));
        }
        if h.prefetch == 0 {
            return Err(ConfigError::invalid(
                "handlers.prefetch",
                "must be at least 1",
            ));
        }
        // A pull larger than what the server will ever have unacked stalls silently; so does a
        // pending limit below the pool size (handlers starve while waiting for acks).
        if h.max_ack_pending < h.prefetch.max(h.pool_size) {
            return Err(ConfigError::invalid(
                "handlers.max_ack_pending",
                format!(
                    "{} is below handlers.prefetch ({}) or handlers.pool_size ({}); the consumer would stall",
                    h.max_ack_pending, h.prefetch, h.pool_size
                ),
            ));
        }
        if h.partitions == 0 || h.partitions > 1024 {
            return Err(ConfigError::invalid(
                "handlers.partitions",
                "must be between 1 and 1024",
            ));
        }
        if h.ownership_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "handlers.ownership_timeout",
                "must be at least 1s (the membership record's age limit is whole seconds)",
            ));
        }
        if h.max_redeliveries <= h.max_deliver {
            return Err(ConfigError::invalid(
                "handlers.max_redeliveries",
                format!(
                    "{} must be above handlers.max_deliver ({}): the handler dead-letters a lead after its last attempt itself, the crash net only catches what never gets that far",
                    h.max_redeliveries, h.max_deliver
                ),
            ));
        }
        if h.backoff_base.is_zero() || h.backoff_cap < h.backoff_base {
            return Err(ConfigError::invalid(
                "handlers.backoff_cap",
                "backoff_base must be > 0 and backoff_cap >= backoff_base",
            ));
        }
        crate::sinks::validate_configs(&self.sinks)
            .map_err(|e| ConfigError::invalid(e.key, e.message))?;
        self.dlq
            .validate()
            .map_err(|e| ConfigError::invalid("dlq.keys", e.to_string()))?;
        self.telemetry.validate()?;
        let mut seen = HashSet::new();
        for (i, sender) in self.senders.iter().enumerate() {
            let key = |k: &str| format!("senders[{i}].{k}");
            if !valid_sender_id(&sender.id) {
                return Err(ConfigError::invalid(
                    key("id"),
                    format!(
                        "`{}` must be 1-64 characters of a-z, 0-9, '-' or '_' (it becomes a NATS subject token)",
                        sender.id
                    ),
                ));
            }
            if !seen.insert(sender.id.as_str()) {
                return Err(ConfigError::invalid(
                    key("id"),
                    format!("duplicate sender id `{}`", sender.id),
                ));
            }
            if sender.secret_env.is_empty() && sender.secret_file.is_empty() {
                return Err(ConfigError::invalid(
                    key("secret_env"),
                    "name at least one env var (or secret_file) holding the sender's secret",
                ));
            }
            if sender.rate.per_second == 0 {
                return Err(ConfigError::invalid(
                    key("rate.per_second"),
                    "must be at least 1",
                ));
            }
            if sender.rate.burst == 0 {
                return Err(ConfigError::invalid(
                    key("rate.burst"),
                    "must be at least 1",
                ));
            }
            if let Some(EventIdSource::Pointer(p)) = &sender.event_id {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(ConfigError::invalid(
                        key("event_id.pointer"),
                        "a JSON pointer starts with '/'",
                    ));
                }
            }
            if sender.schema.trim().is_empty() {
                return Err(ConfigError::invalid(key("schema"), "must not be empty"));
            }
            if sender.mapping.fields.is_empty() {
                return Err(ConfigError::invalid(
                    key("mapping.fields"),
                    "map at least one field; unmapped fields are dropped at the edge",
                ));
            }
        }
        Ok(())
    }

    pub fn sender(&self, id: &str) -> Option<&SenderConfig> {
        self.senders.iter().find(|s| s.id == id)
    }

    /// The embedded server's store, under the data dir.
    pub fn nats_store_dir(&self) -> PathBuf {
        self.data_dir.join("nats")
    }
}

fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{v}` is not a host:port address")))
}

pub fn valid_sender_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Resolves a sender's live secrets from env vars and files. Missing ones are reported by name
/// so the operator knows exactly what to set.
pub struct ResolvedSecrets {
    pub secrets: Vec<String>,
    pub missing: Vec<String>,
}

pub fn resolve_secrets(sender: &SenderConfig, env: &dyn EnvSource) -> ResolvedSecrets {
    let mut secrets = Vec::new();
    let mut missing = Vec::new();
    for name in &sender.secret_env {
        match env.var(name) {
            Some(v) => secrets.push(v),
            None => missing.push(format!("env var {name}")),
        }
    }
    for path in &sender.secret_file {
        match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => secrets.push(v.trim_end_matches(['\r', '\n']).into()),
            _ => missing.push(format!("file {}", path.display())),
        }
    }
    ResolvedSecrets { secrets, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    fn minimal_sender() -> &'static str {
        r#"
[[senders]]
id = "demo"
scheme = "standard-webhooks"
secret_env = ["LEADROUTER_DEMO_SECRET"]
[senders.mapping.fields]
email = "$.email"
"#
    }

    #[test]
    fn defaults_apply() {
        let cfg = Config::from_toml(minimal_sender(), Path::new("t.toml"), &NO_ENV).unwrap();
        assert!(cfg.nats.is_embedded());
        assert_eq!(cfg.streams.duplicate_window, Duration::from_secs(120));
        assert_eq!(cfg.streams.max_age, Duration::from_secs(7 * 86400));
        assert_eq!(cfg.intake.max_body_bytes, 65536);
        assert_eq!(cfg.senders[0].tolerance, Duration::from_secs(300));
        assert_eq!(cfg.intake.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.admin.listen.to_string(), "127.0.0.1:9091");
    }

    #[test]
    fn env_overrides_win() {
        let env = [
            ("LEADROUTER_NATS_URL", "nats://10.0.0.1:4222"),
            ("LEADROUTER_INTAKE_LISTEN", "127.0.0.1:18080"),
            ("LEADROUTER_DATA_DIR", "/tmp/x"),
        ];
        let cfg = Config::from_toml(minimal_sender(), Path::new("t.toml"), &env).unwrap();
        assert_eq!(cfg.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(cfg.intake.listen.port(), 18080);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn errors_name_the_key() {
        let text = format!("[streams]\nduplicate_window = \"8d\"\n{}", minimal_sender());
        let err = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err();
        assert!(
            err.to_string().contains("streams.duplicate_window"),
            "{err}"
        );

        let text = minimal_sender().replace("\"demo\"", "\"Demo Sender\"");
        let err = Config::from_toml(&text, Path::new("t.toml"), &NO_ENV).unwrap_err();
        assert!(err.to_string().contains("senders[0].id"), "{err}");

        let err =
            Config::from_toml("[intake]\nlisten = 5\n", Path::new("t.toml"), &NO_ENV).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");

        let err = Config::from_toml("[nats]\nurl = \"http://x\"\n", Path::new("t.toml"), &NO_ENV)
            .unwrap_err();
        assert!(err.to_string().contains("nats.url"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[intake]\nlisen = \"x\"\n", Path::new("t.toml"), &NO_ENV)
            .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn every_event_id_form_parses_to_its_variant() {
        let load = |event_id: &str| {
            let text = minimal_sender().replace(
                "[senders.mapping.fields]",
                &format!("{event_id}\n[senders.mapping.fields]"),
            );
            Config::from_toml(&text, Path::new("t.toml"), &NO_ENV)
                .map(|c| c.senders[0].event_id.clone())
        };
        assert_eq!(load("").unwrap(), None);
        for (toml, want) in [
            (
                "event_id = { header = \"webhook-id\" }",
                EventIdSource::Header("webhook-id".into()),
            ),
            (
                "event_id = { pointer = \"/lead_id\" }",
                EventIdSource::Pointer("/lead_id".into()),
            ),
            (
                "event_id = { path = \"$.payload.id\" }",
                EventIdSource::Path("$.payload.id".into()),
            ),
            (
                "[senders.event_id]\nheader = \"X-Event\"",
                EventIdSource::Header("X-Event".into()),
            ),
            (
                "[senders.event_id]\npath = \"$.event_id\"",
                EventIdSource::Path("$.event_id".into()),
            ),
            // The whole document is a pointer too.
            (
                "event_id = { pointer = \"\" }",
                EventIdSource::Pointer(String::new()),
            ),
        ] {
            assert_eq!(load(toml).unwrap(), Some(want), "{toml}");
        }
    }

    #[test]
    fn a_bad_event_id_names_the_key_and_the_keys_it_takes() {
        let err = |event_id: &str| {
            let text = minimal_sender().replace(
                "[senders.mapping.fields]",
                &format!("{event_id}\n[senders.mapping.fields]"),
            );
            Config::from_toml(&text, Path::new("t.toml"), &NO_ENV)
                .unwrap_err()
                .to_string()
        };
        let e = err("event_id = { header = \"webhook-id\", path = \"$.id\" }");
        assert!(
            e.contains(
                "`event_id`: set exactly one of header, pointer, path (found header and path)"
            ),
            "{e}"
        );
        // toml points at the line, so the sender is the one written there.
        assert!(e.contains("event_id = { header"), "{e}");
        let e = err("event_id = {}");
        assert!(e.contains("(found none)"), "{e}");
        let e = err("event_id = { heder = \"webhook-id\" }");
        assert!(e.contains("unknown field `heder`"), "{e}");
        assert!(e.contains("`header`, `pointer`, `path`"), "{e}");
        let e = err("event_id = { pointer = \"lead_id\" }");
        assert!(
            e.contains("config key `senders[0].event_id.pointer`"),
            "{e}"
        );
    }

    #[test]
    fn event_id_renders_as_the_table_it_is_read_from() {
        #[derive(Serialize, Deserialize)]
        struct T {
            event_id: EventIdSource,
        }
        for ev in [
            EventIdSource::Header("webhook-id".into()),
            EventIdSource::Pointer("/id".into()),
            EventIdSource::Path("$.id".into()),
        ] {
            let text = toml::to_string(&T {
                event_id: ev.clone(),
            })
            .unwrap();
            assert_eq!(toml::from_str::<T>(&text).unwrap().event_id, ev, "{text}");
        }
        let text = toml::to_string(&T {
            event_id: EventIdSource::Header("webhook-id".into()),
        })
        .unwrap();
        assert_eq!(text, "[event_id]\nheader = \"webhook-id\"\n");
    }

    #[test]
    fn missing_secrets_are_named() {
        let cfg = Config::from_toml(minimal_sender(), Path::new("t.toml"), &NO_ENV).unwrap();
        let r = resolve_secrets(&cfg.senders[0], &NO_ENV);
        assert!(r.secrets.is_empty());
        assert_eq!(
            r.missing,
            vec!["env var LEADROUTER_DEMO_SECRET".to_string()]
        );
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let cfg = Config::load(&path, &NO_ENV).unwrap();
        let demo = cfg.sender("demo").expect("demo sender");
        assert_eq!(demo.scheme, SchemeName::StandardWebhooks);
        assert_eq!(demo.secret_env, vec!["LEADROUTER_DEMO_SECRET".to_string()]);
    }

    #[test]
    fn telemetry_is_off_by_default_and_follows_the_otel_env() {
        let load = |toml: &str, env: &[(&str, &str)]| {
            let env: std::collections::HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let text = format!("{toml}\n{}", minimal_sender());
            Config::from_toml(&text, Path::new("t.toml"), &env)
        };
        let cfg = load("", &[]).unwrap();
        assert_eq!(cfg.telemetry.traces_endpoint(), None);
        assert_eq!(cfg.telemetry.service_name, "leadrouter");
        assert_eq!(cfg.telemetry.otlp_protocol, OtlpProtocol::Grpc);

        let file = "[telemetry]\notlp_endpoint = \"http://c:4317\"\nsample_ratio = 0.5";
        let cfg = load(file, &[]).unwrap();
        assert_eq!(
            cfg.telemetry.traces_endpoint().as_deref(),
            Some("http://c:4317")
        );
        let cfg = load(file, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap();
        assert_eq!(
            cfg.telemetry.traces_endpoint().as_deref(),
            Some("http://c:4317/v1/traces")
        );
        let cfg = load(
            file,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "lr-edge"),
            ],
        )
        .unwrap();
        assert_eq!(
            cfg.telemetry.traces_endpoint().as_deref(),
            Some("http://env:4318/v1/traces")
        );
        assert_eq!(cfg.telemetry.service_name, "lr-edge");
        let cfg = load(
            "",
            &[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://x/custom/path",
            )],
        )
        .unwrap();
        assert_eq!(
            cfg.telemetry.traces_endpoint().as_deref(),
            Some("https://x/custom/path")
        );
        let cfg = load(file, &[("OTEL_SDK_DISABLED", "true")]).unwrap();
        assert_eq!(cfg.telemetry.traces_endpoint(), None);

        let err = load(file, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{err}"
        );
        let err = load("[telemetry]\nsample_ratio = 2.0", &[]).unwrap_err();
        assert!(err.to_string().contains("telemetry.sample_ratio"), "{err}");
        let err = load("[telemetry]\notlp_endpoint = \"c:4317\"", &[]).unwrap_err();
        assert!(err.to_string().contains("telemetry.otlp_endpoint"), "{err}");
    }
}
