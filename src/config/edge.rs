//! `[edge]` and `[hub]`: intake near the form vendors, handlers and sinks at a central hub.
//!
//! An edge is a router with intake only. Its nats-server is a leaf node of the hub with a
//! JetStream domain of its own (`edge-{name}`), so its 202 comes from its own store whether the
//! link to the hub is up or not. The hub's `LEADS` sources every listed edge's stream across its
//! domain; see `queue::topology` and docs/edge-deployments.md.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// This site's name (`eu1`): its JetStream domain is `edge-{name}`, and the hub lists it in
    /// `[hub] edges`.
    pub name: String,
    /// The hub's leaf node URL(s), `nats-leaf://hub.example:7422`, comma-separated for several
    /// hub servers. Required with the embedded nats-server; with `nats.url` pointing at a leaf
    /// server of your own, that server's config holds the remote instead.
    #[serde(default)]
    pub hub: Option<String>,
    /// The leaf connection's user at the hub, with its password in the env var
    /// `hub_password_env` (never in a file).
    #[serde(default)]
    pub hub_user: Option<String>,
    #[serde(default)]
    pub hub_password_env: Option<String>,
    /// A `.creds` file (JWT + nkey seed) for hubs run in operator mode.
    #[serde(default)]
    pub hub_creds_file: Option<PathBuf>,
    /// TLS for the leaf connection: the CA that signed the hub's certificate, and a client
    /// certificate with its key when the hub verifies clients.
    #[serde(default)]
    pub hub_tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub hub_tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub hub_tls_key_file: Option<PathBuf>,
    /// How long the edge must keep taking leads while the hub is away: the store is sized for
    /// `outage` x `rate`.
    #[serde(default = "default_outage", with = "humantime_serde")]
    pub outage: Duration,
    /// Leads per second this edge takes at its busiest.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Bytes one stored lead takes (envelope and headers), for the store's byte limit.
    #[serde(default = "default_lead_bytes")]
    pub lead_bytes: u64,
}

fn default_outage() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_rate() -> f64 {
    10.0
}
fn default_lead_bytes() -> u64 {
    4096
}

impl EdgeConfig {
    /// The edge's JetStream domain.
    pub fn domain(&self) -> String {
        domain_of(&self.name)
    }

    /// Leads the edge store holds before intake answers 503.
    pub fn max_msgs(&self) -> i64 {
        let n = (self.outage.as_secs_f64() * self.rate).ceil();
        (n as i64).max(1)
    }

    /// Bytes the edge store holds before intake answers 503.
    pub fn max_bytes(&self) -> i64 {
        self.max_msgs()
            .saturating_mul(i64::try_from(self.lead_bytes).unwrap_or(i64::MAX))
    }

    pub(super) fn validate(&self, embedded: bool) -> Result<(), ConfigError> {
        if !valid_edge_name(&self.name) {
            return Err(ConfigError::invalid(
                "edge.name",
                format!(
                    "`{}` must be 1-32 characters of a-z, 0-9, '-' or '_', starting with a letter or digit (it becomes a JetStream domain and a subject token)",
                    self.name
                ),
            ));
        }
        match (&self.hub, embedded) {
            (None, true) => {
                return Err(ConfigError::invalid(
                    "edge.hub",
                    "name the hub's leaf node URL, e.g. hub = \"nats-leaf://hub.example:7422\": the embedded nats-server connects there as a leaf node",
                ))
            }
            (Some(_), false) => {
                return Err(ConfigError::invalid(
                    "edge.hub",
                    format!(
                        "applies to the embedded nats-server only; with nats.url pointing at your own server, put the leaf remote in that server's config, with jetstream domain {}",
                        self.domain()
                    ),
                ))
            }
            _ => {}
        }
        if let Some(hub) = &self.hub {
            for u in hub.split(',').map(str::trim) {
                let scheme_ok = ["nats-leaf://", "tls://", "ws://", "wss://"]
                    .iter()
                    .any(|s| u.starts_with(s));
                if !scheme_ok {
                    return Err(ConfigError::invalid(
                        "edge.hub",
                        format!("`{u}` is not a leaf node URL (nats-leaf://host:7422, or tls://, ws://, wss://)"),
                    ));
                }
                if u.contains('@') {
                    return Err(ConfigError::invalid(
                        "edge.hub",
                        "keep credentials out of the URL: set edge.hub_user and name the env var holding the password in edge.hub_password_env",
                    ));
                }
            }
        }
        match (&self.hub_user, &self.hub_password_env) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "edge.hub_password_env",
                    "edge.hub_user is set, so name the env var holding its password",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "edge.hub_user",
                    "edge.hub_password_env is set, so name the user it belongs to",
                ))
            }
            _ => {}
        }
        if self.hub_user.is_some() && self.hub_creds_file.is_some() {
            return Err(ConfigError::invalid(
                "edge.hub_creds_file",
                "use either a creds file or hub_user/hub_password_env, not both",
            ));
        }
        if self.hub_tls_cert_file.is_some() != self.hub_tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "edge.hub_tls_cert_file",
                "hub_tls_cert_file and hub_tls_key_file go together",
            ));
        }
        if self.outage.is_zero() {
            return Err(ConfigError::invalid(
                "edge.outage",
                "must be greater than zero",
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(ConfigError::invalid(
                "edge.rate",
                "must be a number of leads per second above zero",
            ));
        }
        if self.lead_bytes < 256 {
            return Err(ConfigError::invalid(
                "edge.lead_bytes",
                "must be at least 256 (a stored lead's envelope and headers)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Names of the edges whose leads `LEADS` sources (each edge's `[edge] name`).
    #[serde(default)]
    pub edges: Vec<String>,
    /// How long an edge's link may be down before the alert fires (exported as
    /// `leadrouter_edge_link_alert_after_seconds` for the alert rule).
    #[serde(default = "default_link_alert_after", with = "humantime_serde")]
    pub link_alert_after: Duration,
}

fn default_link_alert_after() -> Duration {
    Duration::from_secs(300)
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            edges: Vec::new(),
            link_alert_after: default_link_alert_after(),
        }
    }
}

impl HubConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.edges.iter().enumerate() {
            if !valid_edge_name(e) {
                return Err(ConfigError::invalid(
                    format!("hub.edges[{i}]"),
                    format!("`{e}` is not an edge name (1-32 characters of a-z, 0-9, '-' or '_')"),
                ));
            }
            if !seen.insert(e.as_str()) {
                return Err(ConfigError::invalid(
                    format!("hub.edges[{i}]"),
                    format!("edge `{e}` is listed twice"),
                ));
            }
        }
        if self.link_alert_after < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "hub.link_alert_after",
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}

/// The JetStream domain of the edge named `name`.
pub fn domain_of(name: &str) -> String {
    format!("edge-{name}")
}

pub fn valid_edge_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}
