//! `[[senders]]` (and `senders_file`): one entry per webhook source, and the resolution of
//! its secrets from env vars and files.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::env::EnvSource;
use crate::intake::mapping::MappingConfig;
use crate::intake::schemes::{SchemeName, SignatureOptions};

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
