//! A typed builder for the router's TOML config (the keys of `crate::config`).
//!
//! Every key is optional and rendered only when set, so the file says what a test or drill
//! cares about and the router's defaults do the rest. That also keeps keys the parser does not
//! know yet (it rejects unknown keys) out of every file that does not set them. `extra` is raw
//! TOML appended verbatim for anything without a field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

use super::HarnessError;
use crate::config::{Config, ConfigError, EnvSource};
use crate::sinks::{
    FileSinkConfig, HttpSinkConfig, HubspotSinkConfig, SalesforceSinkConfig, SegmentSinkConfig,
    SinkConfig,
};

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The whole config file. Sections left at their default are not rendered.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouterConfig {
    /// Comment lines at the top of the file (who wrote it, why).
    #[serde(skip)]
    pub header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "is_default")]
    pub nats: NatsSection,
    #[serde(skip_serializing_if = "is_default")]
    pub streams: StreamsSection,
    #[serde(skip_serializing_if = "is_default")]
    pub intake: IntakeSection,
    #[serde(skip_serializing_if = "is_default")]
    pub admin: AdminSection,
    #[serde(skip_serializing_if = "is_default")]
    pub handlers: HandlersSection,
    #[serde(skip_serializing_if = "is_default")]
    pub enrich: EnrichSection,
    #[serde(skip_serializing_if = "is_default")]
    pub dlq: DlqSection,
    #[serde(skip_serializing_if = "is_default")]
    pub telemetry: TelemetrySection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeSection>,
    #[serde(skip_serializing_if = "is_default")]
    pub hub: HubSection,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<SenderSpec>,
    /// Raw TOML appended after everything else. It lands inside whatever table was rendered
    /// last, so start it with a table header (`[enrich]`, `[[sinks]]`).
    #[serde(skip)]
    pub extra: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NatsSection {
    /// `embedded` or comma-separated `nats://` URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub publish_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_required: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// nats-server monitoring URL(s): where `streams.durability = "fsync"` checks `/varz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor_url: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub embedded: EmbeddedSection,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmbeddedSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_key_env: Option<String>,
    /// `chachapoly` or `aes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_cipher: Option<String>,
    /// Hub mode: the leaf listener for edges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leafnode_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leafnode_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leafnode_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leafnode_password_env: Option<String>,
}

/// `[edge]`: this router runs intake only and stores leads for the hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EdgeSection {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_password_env: Option<String>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub outage: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_bytes: Option<u64>,
}

impl EdgeSection {
    /// An edge named `name` whose embedded server is a leaf of the hub at `hub`.
    pub fn new(name: impl Into<String>, hub: impl Into<String>) -> EdgeSection {
        EdgeSection {
            name: name.into(),
            hub: Some(hub.into()),
            ..EdgeSection::default()
        }
    }
}

/// `[hub]`: the edges whose leads `LEADS` sources.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HubSection {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<String>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub link_alert_after: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamsSection {
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub duplicate_window: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub dlq_max_age: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub idempotency_ttl: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// `lazy` or `fsync`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub group_commit: GroupCommitSection,
}

/// `[streams.group_commit]`; unset keys keep the router's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupCommitSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub linger: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IntakeSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AdminSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The env var holding the admin token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HandlersSection {
    /// `false`: an edge-only router.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<u32>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub ack_wait: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ack_pending: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<usize>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub backoff_base: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub backoff_cap: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_capacity: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schemas_dir: Option<PathBuf>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub schema_reload: Option<Duration>,
    // Keys of the partitioned handler pool. Rendered only when set: a parser that predates
    // them rejects unknown keys, and every config that leaves them out stays valid for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub ownership_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_redeliveries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EnrichSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geoip_db: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DlqSection {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<DlqKeySpec>,
}

/// One `[dlq] keys` entry: an id and exactly one of `env` or `file`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DlqKeySpec {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TelemetrySection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
}

/// One `[[senders]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SenderSpec {
    pub id: String,
    /// `standard-webhooks`, `stripe`, `hmac-sha256`, `token`, ...
    pub scheme: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_file: Vec<PathBuf>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventIdSpec>,
    /// `[senders.signature]` scheme options (`header`, `prefix`, `encoding`, `location`,
    /// `name`, `url`).
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub signature: IndexMap<String, String>,
    #[serde(skip_serializing_if = "is_default")]
    pub mapping: MappingSpec,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RateSpec {
    pub per_second: u32,
    pub burst: u32,
}

/// Where the vendor's event id comes from: the router's own type, which renders the TOML it
/// reads (`{ header = "webhook-id" }`).
pub use crate::config::EventIdSource as EventIdSpec;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MappingSpec {
    /// `json` (default) or `form`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub json_fields: Vec<String>,
    /// Canonical field name -> JSONPath string (or a table of field options).
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub fields: IndexMap<String, toml::Value>,
}

impl SenderSpec {
    pub fn new(id: impl Into<String>, scheme: impl Into<String>) -> SenderSpec {
        SenderSpec {
            id: id.into(),
            scheme: scheme.into(),
            ..SenderSpec::default()
        }
    }

    /// A Standard Webhooks sender with its secret in `secret_env` and the event id in the
    /// `webhook-id` header: the shape of the shipped `demo` sender.
    pub fn standard_webhooks(id: impl Into<String>, secret_env: impl Into<String>) -> SenderSpec {
        let mut s = SenderSpec::new(id, "standard-webhooks");
        s.secret_env.push(secret_env.into());
        s.event_id = Some(EventIdSpec::Header("webhook-id".into()));
        s
    }

    pub fn rate(mut self, per_second: u32, burst: u32) -> Self {
        self.rate = Some(RateSpec { per_second, burst });
        self
    }

    /// One more env var holding a live secret (several while rotating).
    pub fn secret_env(mut self, name: impl Into<String>) -> Self {
        self.secret_env.push(name.into());
        self
    }

    /// The vendor's event id from the request header `name`.
    pub fn event_id_header(mut self, name: impl Into<String>) -> Self {
        self.event_id = Some(EventIdSpec::Header(name.into()));
        self
    }

    /// The vendor's event id at the JSON pointer `pointer` of the body (`/event_id`).
    pub fn event_id_pointer(mut self, pointer: impl Into<String>) -> Self {
        self.event_id = Some(EventIdSpec::Pointer(pointer.into()));
        self
    }

    /// A `[senders.signature]` option of the scheme (`url`, `name`, `header`, ...).
    pub fn signature(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.signature.insert(key.into(), value.into());
        self
    }

    /// The body format: `json` (the default) or `form`.
    pub fn format(mut self, format: impl Into<String>) -> Self {
        self.mapping.format = Some(format.into());
        self
    }

    /// Keeps `name`, read from the JSONPath `path`.
    pub fn field(mut self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.mapping
            .fields
            .insert(name.into(), toml::Value::String(path.into()));
        self
    }

    /// Keeps each `name`, read from `$.name`.
    pub fn fields(mut self, names: &[&str]) -> Self {
        for n in names {
            self = self.field(*n, format!("$.{n}"));
        }
        self
    }
}

/// An `http` sink (a CRM endpoint); `timeout` unset is the sink's default (5 s).
pub fn http_sink(
    name: impl Into<String>,
    url: impl Into<String>,
    timeout: Option<Duration>,
) -> SinkConfig {
    SinkConfig::new(
        name,
        HttpSinkConfig {
            url: Some(url.into()),
            timeout,
            ..HttpSinkConfig::default()
        },
    )
}

/// A `segment` sink posting to `endpoint` (a stand-in's URL) with the write key in the env var
/// `write_key_env`; `timeout` unset is the sink's default.
pub fn segment_sink(
    name: impl Into<String>,
    write_key_env: impl Into<String>,
    endpoint: impl Into<String>,
    timeout: Option<Duration>,
) -> SinkConfig {
    SinkConfig::new(
        name,
        SegmentSinkConfig {
            endpoint: Some(endpoint.into()),
            write_key_env: Some(write_key_env.into()),
            timeout,
            ..SegmentSinkConfig::default()
        },
    )
}

/// The keys of a `hubspot` sink upserting into `endpoint` (the sandbox's URL) with the token in the env var
/// `token_env`, mapping `email`, `first_name` and the lead's key (`leadrouter_key`); the rest of
/// its keys at their defaults, to be changed on the returned config.
pub fn hubspot_sink(
    endpoint: impl Into<String>,
    token_env: impl Into<String>,
) -> HubspotSinkConfig {
    HubspotSinkConfig {
        endpoint: Some(endpoint.into()),
        token_env: Some(token_env.into()),
        properties: Some(
            [
                ("email", "email"),
                ("firstname", "first_name"),
                ("leadrouter_key", "key"),
                ("leadrouter_event", "source_event_id"),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        ),
        ..HubspotSinkConfig::default()
    }
}

/// The keys of a `salesforce` sink on `instance_url` (the sandbox's URL) with OAuth client credentials
/// from the env vars `SF_CLIENT_ID` and `SF_CLIENT_SECRET`, upserting `Lead` by
/// `Leadrouter_Key__c`.
pub fn salesforce_sink(instance_url: impl Into<String>) -> SalesforceSinkConfig {
    let instance_url = instance_url.into();
    SalesforceSinkConfig {
        token_url: Some(format!("{instance_url}/services/oauth2/token")),
        instance_url: Some(instance_url),
        client_id_env: Some("SF_CLIENT_ID".into()),
        client_secret_env: Some("SF_CLIENT_SECRET".into()),
        external_id_field: Some("Leadrouter_Key__c".into()),
        fields: Some(
            [
                ("Email", "email"),
                ("FirstName", "first_name"),
                ("LastName", "last_name"),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        ),
        ..SalesforceSinkConfig::default()
    }
}

/// A `file` sink; `path` unset is `{data_dir}/sinks/leads.jsonl`.
pub fn file_sink(name: impl Into<String>, path: Option<PathBuf>) -> SinkConfig {
    SinkConfig::new(
        name,
        FileSinkConfig {
            path,
            ..FileSinkConfig::default()
        },
    )
}

impl RouterConfig {
    pub fn new() -> RouterConfig {
        RouterConfig::default()
    }

    pub fn header(mut self, text: impl Into<String>) -> Self {
        self.header = Some(text.into());
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// `embedded`, one URL, or comma-separated URLs (a cluster's [`urls`]).
    ///
    /// [`urls`]: super::NatsCluster::urls
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.nats.url = Some(url.into());
        self
    }

    /// The embedded nats-server on `port`, its config template from `template_dir`.
    pub fn embedded_nats(mut self, port: u16, template_dir: impl Into<PathBuf>) -> Self {
        self.nats.url = Some("embedded".into());
        self.nats.embedded.port = Some(port);
        self.nats.embedded.template_dir = Some(template_dir.into());
        self
    }

    /// The nats-server binary the embedded server runs (default: the one the router provisions).
    pub fn embedded_nats_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.nats.embedded.binary = Some(path.into());
        self
    }

    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.nats.publish_timeout = Some(d);
        self
    }

    pub fn intake_listen(mut self, addr: SocketAddr) -> Self {
        self.intake.listen = Some(addr);
        self
    }

    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.admin.listen = Some(addr);
        self
    }

    pub fn admin_token_env(mut self, name: impl Into<String>) -> Self {
        self.admin.token_env = Some(name.into());
        self
    }

    pub fn replicas(mut self, n: usize) -> Self {
        self.streams.replicas = Some(n);
        self
    }

    /// `streams.durability`: `lazy` or `fsync`.
    pub fn durability(mut self, mode: impl Into<String>) -> Self {
        self.streams.durability = Some(mode.into());
        self
    }

    pub fn group_commit(mut self, g: GroupCommitSection) -> Self {
        self.streams.group_commit = g;
        self
    }

    /// `nats.monitor_url`: the external server's monitoring URL(s).
    pub fn monitor_url(mut self, url: impl Into<String>) -> Self {
        self.nats.monitor_url = Some(url.into());
        self
    }

    pub fn handlers(mut self, h: HandlersSection) -> Self {
        self.handlers = h;
        self
    }

    pub fn telemetry(mut self, t: TelemetrySection) -> Self {
        self.telemetry = t;
        self
    }

    pub fn sink(mut self, sink: SinkConfig) -> Self {
        self.sinks.push(sink);
        self
    }

    pub fn sender(mut self, sender: SenderSpec) -> Self {
        self.senders.push(sender);
        self
    }

    /// A DLQ key read from the env var `env`.
    pub fn dlq_key(mut self, id: impl Into<String>, env: impl Into<String>) -> Self {
        self.dlq.keys.push(DlqKeySpec {
            id: id.into(),
            env: Some(env.into()),
            file: None,
        });
        self
    }

    /// Edge mode (intake only, leads stored for the hub).
    pub fn edge(mut self, edge: EdgeSection) -> Self {
        self.edge = Some(edge);
        self
    }

    /// Hub mode: `LEADS` sources these edges.
    pub fn hub_edges(mut self, edges: &[&str]) -> Self {
        self.hub.edges = edges.iter().map(|e| e.to_string()).collect();
        self
    }

    /// The embedded server's leaf listener (hub mode), on loopback.
    pub fn leafnode_port(mut self, port: u16) -> Self {
        self.nats.embedded.leafnode_port = Some(port);
        self
    }

    pub fn extra(mut self, toml: impl Into<String>) -> Self {
        self.extra = toml.into();
        self
    }

    /// Where the router listens for intake: the configured address or the router's default.
    pub fn intake_addr(&self) -> SocketAddr {
        self.intake
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9091)))
    }

    /// The configured `data_dir`, or the router's default `data`.
    pub fn data_dir_path(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"))
    }

    pub fn to_toml(&self) -> Result<String, HarnessError> {
        let mut out = String::new();
        if let Some(h) = &self.header {
            for line in h.lines() {
                out.push_str("# ");
                out.push_str(line);
                out.push('\n');
            }
            out.push('\n');
        }
        out.push_str(&toml::to_string(self).map_err(HarnessError::Render)?);
        if !self.extra.is_empty() {
            out.push('\n');
            out.push_str(&self.extra);
            out.push('\n');
        }
        Ok(out)
    }

    /// Writes the file and returns its text (to parse with [`Config::from_toml`] as well).
    pub fn write(&self, path: &Path) -> Result<String, HarnessError> {
        let text = self.to_toml()?;
        std::fs::write(path, &text).map_err(|e| HarnessError::io(path, e))?;
        Ok(text)
    }

    /// Parses the rendered text as the router would (env overrides and validation included).
    pub fn parse(&self, path: &Path, env: &dyn EnvSource) -> Result<Config, ParseError> {
        let text = self.to_toml()?;
        Ok(Config::from_toml(&text, path, env)?)
    }
}

/// [`RouterConfig::parse`]: the rendering or the router's parser failed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Render(#[from] HarnessError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn an_empty_config_renders_nothing_and_parses() {
        let cfg = RouterConfig::new();
        assert_eq!(cfg.to_toml().unwrap().trim(), "");
        cfg.parse(Path::new("t.toml"), &HashMap::new()).unwrap();
    }

    #[test]
    fn unset_new_handler_keys_are_not_rendered_and_set_ones_are() {
        let mut cfg = RouterConfig::new().handlers(HandlersSection {
            pool_size: Some(4),
            ..Default::default()
        });
        let text = cfg.to_toml().unwrap();
        assert!(text.contains("pool_size = 4"), "{text}");
        assert!(!text.contains("partitions"), "{text}");
        cfg.handlers.partitions = Some(8);
        cfg.handlers.ownership_timeout = Some(Duration::from_secs(5));
        let text = cfg.to_toml().unwrap();
        assert!(text.contains("partitions = 8"), "{text}");
        assert!(text.contains("ownership_timeout = \"5s\""), "{text}");
    }
}
