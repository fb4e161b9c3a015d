//! `[handlers]`: the handler pool, its consumers and its partitions.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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
