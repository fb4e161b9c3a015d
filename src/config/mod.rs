//! Typed configuration: `config/leadrouter.toml`, `LEADROUTER_*` overrides, validation that names
//! the offending key. Secrets never live in the file: the file names the env vars (or files) that
//! hold them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pipeline::enrich::EnrichConfig;
use crate::sinks::SinkConfig;

mod edge;
mod env;
mod error;
mod handlers;
mod listeners;
mod nats;
mod senders;
mod telemetry;
#[cfg(test)]
mod tests;

pub use edge::{domain_of as edge_domain, valid_edge_name, EdgeConfig, HubConfig};
pub use env::{EnvSource, ProcessEnv};
pub use error::ConfigError;
pub use handlers::HandlersConfig;
pub use listeners::{AdminConfig, IntakeConfig};
pub use nats::{
    Durability, EmbeddedConfig, GroupCommitConfig, NatsConfig, StoreCipher, StoreKey,
    StreamsConfig, DEFAULT_STORE_KEY_ENV,
};
pub use senders::{
    resolve_secrets, valid_sender_id, EventIdError, EventIdSource, RateConfig, ResolvedSecrets,
    SenderConfig, SendersFile,
};
pub use telemetry::{OtlpProtocol, TelemetryConfig};

pub const DEFAULT_CONFIG_PATH: &str = "config/leadrouter.toml";

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
    /// Edge mode: intake only, stored at this site, carried to the hub over a leaf node.
    #[serde(default)]
    pub edge: Option<EdgeConfig>,
    /// Hub mode: the edges whose leads `LEADS` sources.
    #[serde(default)]
    pub hub: HubConfig,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
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
        let mut cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
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
        s.group_commit.validate()?;
        for u in self.nats.monitor_urls() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "nats.monitor_url",
                    format!(
                        "`{u}` is not an http:// or https:// URL of a nats-server monitoring port"
                    ),
                ));
            }
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
        self.validate_topology()?;
        crate::sinks::validate_configs(&self.sinks)
            .map_err(|e| ConfigError::invalid(e.key.clone(), e.detail()))?;
        self.dlq.validate().map_err(ConfigError::DlqKeys)?;
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

    /// `[edge]`, `[hub]` and the leaf listener fit together.
    fn validate_topology(&self) -> Result<(), ConfigError> {
        self.nats.embedded.validate_leafnodes()?;
        self.hub.validate()?;
        let Some(edge) = &self.edge else {
            if !self.hub.edges.is_empty()
                && self.nats.is_embedded()
                && self.nats.embedded.leafnode_port.is_none()
            {
                return Err(ConfigError::invalid(
                    "nats.embedded.leafnode_port",
                    "[hub] edges lists edges, so the embedded nats-server must accept their leaf connections: set leafnode_port (7422 is NATS's usual one)",
                ));
            }
            return Ok(());
        };
        edge.validate(self.nats.is_embedded())?;
        if !self.hub.edges.is_empty() {
            return Err(ConfigError::invalid(
                "hub.edges",
                "this router is an edge ([edge] is set); a router is an edge or a hub, not both",
            ));
        }
        if self.nats.embedded.leafnode_port.is_some() {
            return Err(ConfigError::invalid(
                "nats.embedded.leafnode_port",
                "an edge connects to its hub and accepts no leaf connections itself",
            ));
        }
        if !self.sinks.is_empty() {
            return Err(ConfigError::invalid(
                "sinks",
                "an edge runs intake only: its leads are written by the hub's sinks, and CRM credentials stay at the hub. Remove [[sinks]] from this edge's config",
            ));
        }
        if self.streams.replicas != 1 && self.nats.is_embedded() {
            return Err(ConfigError::invalid(
                "streams.replicas",
                "the embedded edge server is one node: replicas must be 1",
            ));
        }
        Ok(())
    }

    /// True when this router runs intake only at an edge site.
    pub fn is_edge(&self) -> bool {
        self.edge.is_some()
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
