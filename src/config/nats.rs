//! `[nats]`, `[nats.embedded]` and `[streams]`: where JetStream is and what it keeps.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::env::EnvSource;
use super::error::ConfigError;

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
    /// nats-server monitoring URLs (`http://host:8222`, comma-separated for a cluster): where
    /// `streams.durability = "fsync"` checks that every server really fsyncs before it acks.
    #[serde(default)]
    pub monitor_url: Option<String>,
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
            monitor_url: None,
        }
    }
}

impl NatsConfig {
    pub fn is_embedded(&self) -> bool {
        self.url.trim() == "embedded"
    }

    /// `monitor_url` split into its URLs, trimmed (empty when unset).
    pub fn monitor_urls(&self) -> Vec<String> {
        self.monitor_url
            .iter()
            .flat_map(|m| m.split(','))
            .map(|u| u.trim().to_string())
            .collect()
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
    /// Hub mode: the port the embedded server accepts edges' leaf connections on (`[hub]`).
    #[serde(default)]
    pub leafnode_port: Option<u16>,
    /// The address that port listens on: loopback unless you open it (`0.0.0.0`); then a
    /// password is required.
    #[serde(default = "default_leafnode_host")]
    pub leafnode_host: String,
    /// The user edges connect as, with its password in the env var `leafnode_password_env`.
    #[serde(default = "default_leafnode_user")]
    pub leafnode_user: String,
    #[serde(default)]
    pub leafnode_password_env: Option<String>,
    /// TLS for the leaf listener (certificate and key files).
    #[serde(default)]
    pub leafnode_tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub leafnode_tls_key_file: Option<PathBuf>,
}

fn default_leafnode_host() -> String {
    "127.0.0.1".into()
}
fn default_leafnode_user() -> String {
    "leadrouter-edge".into()
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
    /// The leaf listener's checks: a listener beyond loopback never runs without a password.
    pub(super) fn validate_leafnodes(&self) -> Result<(), ConfigError> {
        let Some(port) = self.leafnode_port else {
            return Ok(());
        };
        if port == 0 {
            return Err(ConfigError::invalid(
                "nats.embedded.leafnode_port",
                "must be a port number above 0",
            ));
        }
        let host = self.leafnode_host.trim();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if host.parse::<std::net::IpAddr>().is_err() && host != "localhost" {
            return Err(ConfigError::invalid(
                "nats.embedded.leafnode_host",
                format!("`{host}` is not an IP address to listen on (e.g. 0.0.0.0)"),
            ));
        }
        if !loopback && self.leafnode_password_env.is_none() {
            return Err(ConfigError::invalid(
                "nats.embedded.leafnode_password_env",
                format!("the leaf listener on {host} is reachable beyond this machine, so edges must authenticate: name the env var holding the password of user `{}`", self.leafnode_user),
            ));
        }
        if self.leafnode_tls_cert_file.is_some() != self.leafnode_tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "nats.embedded.leafnode_tls_cert_file",
                "leafnode_tls_cert_file and leafnode_tls_key_file go together",
            ));
        }
        Ok(())
    }

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
            leafnode_port: None,
            leafnode_host: default_leafnode_host(),
            leafnode_user: default_leafnode_user(),
            leafnode_password_env: None,
            leafnode_tls_cert_file: None,
            leafnode_tls_key_file: None,
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
    /// What a 202 survives; unset: `lazy` (see [`StreamsConfig::durability`]).
    #[serde(default, rename = "durability")]
    pub durability_setting: Option<Durability>,
    /// How the edge coalesces publishes into atomic batches under `fsync`.
    #[serde(default)]
    pub group_commit: GroupCommitConfig,
}

/// What a PubAck (and so a 202) means on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// nats-server's default: acked from memory and the page cache, fsynced every 2 minutes.
    /// Survives a process crash, not an OS crash or power loss.
    Lazy,
    /// `sync_interval: always`: fsynced before the ack. Group commit keeps the throughput.
    Fsync,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Lazy => "lazy",
            Durability::Fsync => "fsync",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCommitConfig {
    /// Off: every lead is its own publish (and, under `fsync`, its own fsync).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most leads in one atomic batch (the server takes at most 1000).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Fewer leads than this waiting are published one by one: a batch has a fixed cost of a
    /// few milliseconds that only pays off for a group.
    #[serde(default = "default_min_batch")]
    pub min_batch: usize,
    /// Atomic batches in flight at once (the server stores one stream's batches one after
    /// another, so more than 1 rarely helps).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Longest a small group waits, held back by single publishes in flight, before it is
    /// published one by one anyway.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
}

fn default_true() -> bool {
    true
}
fn default_max_batch() -> usize {
    500
}
fn default_min_batch() -> usize {
    16
}
fn default_max_in_flight() -> usize {
    1
}
fn default_linger() -> Duration {
    Duration::from_millis(1)
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            enabled: true,
            max_batch: default_max_batch(),
            min_batch: default_min_batch(),
            max_in_flight: default_max_in_flight(),
            linger: default_linger(),
        }
    }
}

impl GroupCommitConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=crate::queue::batch::MAX_BATCH).contains(&self.max_batch) {
            return Err(ConfigError::invalid(
                "streams.group_commit.max_batch",
                format!(
                    "must be between 2 and {} (the server's limit per atomic batch)",
                    crate::queue::batch::MAX_BATCH
                ),
            ));
        }
        if self.min_batch < 2 || self.min_batch > self.max_batch {
            return Err(ConfigError::invalid(
                "streams.group_commit.min_batch",
                format!("must be between 2 and max_batch ({})", self.max_batch),
            ));
        }
        // The server allows 50 batches in flight per stream, shared by every router.
        if !(1..=16).contains(&self.max_in_flight) {
            return Err(ConfigError::invalid(
                "streams.group_commit.max_in_flight",
                "must be between 1 and 16 (the server allows 50 batches in flight per stream, shared by every router)",
            ));
        }
        if self.linger > Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "streams.group_commit.linger",
                "must be at most 100ms: every lead in a group waits for it before its 202",
            ));
        }
        Ok(())
    }
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
            durability_setting: None,
            group_commit: GroupCommitConfig::default(),
        }
    }
}

impl StreamsConfig {
    /// The durability in force: the configured one, else `lazy`. `fsync` is not the default
    /// even for the embedded server, because group commit does not reach its throughput
    /// targets on every disk (docs/durability.md, benches/durability.rs).
    pub fn durability(&self) -> Durability {
        self.durability_setting.unwrap_or(Durability::Lazy)
    }
}
