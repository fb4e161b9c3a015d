//! NATS: connection, the embedded server, JetStream topology and the edge publisher.

pub mod backlog;
pub mod batch;
pub mod durability;
pub mod edges;
pub mod embedded;
pub mod gauges;
pub mod group_commit;
pub mod message;
pub mod partition;
pub mod provision;
mod publisher;
pub mod pull;
pub mod topology;

pub use publisher::{PublishFailure, Publisher, Stored};

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{EnvSource, NatsConfig};

pub const STREAM_LEADS: &str = "LEADS";
pub const SUBJECT_IN_PREFIX: &str = "leads.in.";
pub const STREAM_DLQ: &str = "LEADS_DLQ";
/// An edge's local stream (work-queue retention): leads wait here until the hub has stored them.
pub const STREAM_EDGE: &str = "LEADS_EDGE";
pub const SUBJECT_DLQ_PREFIX: &str = "leads.dlq.";
pub const KV_IDEMPOTENCY: &str = "leads_idempotency";
/// Replays recorded per DLQ entry (the entries themselves are never changed).
pub const KV_DLQ_AUDIT: &str = "leads_dlq_audit";
/// One key-check record per DLQ key id; kept forever, unlike the audit records, because an
/// entry sealed on a key's last day outlives any age we could give the record.
pub const KV_DLQ_KEYS: &str = "leads_dlq_keys";
/// Lookup index for the console and `GET /api/leads/{lookup}`: `event.<event id hash>.<key>` and
/// `email.<email hash>.<key>`, written by the handler when it first sees a lead; kept as long as
/// `LEADS` keeps leads.
pub const KV_LEAD_INDEX: &str = "leads_index";
/// Per-lead write fences: the stream sequence of the lead's newest event written to the sinks,
/// revision-checked, so an owner change never lets an older event overwrite a newer one.
pub const KV_FENCE: &str = "leads_fence";
/// One record per live router (aged out after `handlers.ownership_timeout`): who shares the
/// partitions.
pub const KV_ROUTERS: &str = "leads_routers";
/// Captured MAX_DELIVERIES advisories of the router consumer (the DLQ crash net's input).
pub const STREAM_ADVISORIES: &str = "LEADS_ADVISORIES";
/// The consumer of un-partitioned `leads.in.{sender}` subjects (older replays, hand publishes),
/// which re-publishes them to their partition; partition consumers are `router-p{N}`.
pub const CONSUMER_ROUTER: &str = "router";
/// Stream metadata key recording the partition count the stream was set up with.
pub const META_PARTITIONS: &str = "leadrouter.partitions";

/// A NATS or JetStream call that failed: what leadrouter was doing (the text), and the
/// client's own error (the [`source`](std::error::Error::source)). For errors that gather calls
/// of many kinds (a DLQ listing reads a stream, its info, a consumer and its messages); where one
/// call kind maps to one variant, that variant holds the concrete async-nats error instead.
#[derive(Debug, thiserror::Error)]
#[error("NATS: {what}")]
pub struct NatsError {
    what: Cow<'static, str>,
    #[source]
    source: async_nats::Error,
}

impl NatsError {
    pub fn new(
        what: impl Into<Cow<'static, str>>,
        source: impl Into<async_nats::Error>,
    ) -> NatsError {
        NatsError {
            what: what.into(),
            source: source.into(),
        }
    }

    /// For `map_err`: `.map_err(NatsError::during("reading stream LEADS_DLQ"))`.
    pub fn during<E: Into<async_nats::Error>>(
        what: impl Into<Cow<'static, str>>,
    ) -> impl FnOnce(E) -> NatsError {
        let what = what.into();
        move |source| NatsError::new(what, source)
    }

    /// What was being done, without the cause.
    pub fn what(&self) -> &str {
        &self.what
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("nats config key `{key}`: {message}")]
    Credentials { key: &'static str, message: String },
    #[error("nats config key `nats.creds_file`: cannot load {}", path.display())]
    CredsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats config key `nats.url`: `{url}` is not a NATS server address")]
    Url {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The streams or buckets are not as leadrouter needs them, and JetStream cannot be made to
    /// agree (the message says which setting and what to do).
    #[error("JetStream topology: {0}")]
    Topology(String),
    /// A JetStream call made while creating or reconciling the topology failed.
    #[error("JetStream topology: {what}")]
    Jetstream {
        what: String,
        #[source]
        source: async_nats::Error,
    },
}

/// Connects to `url` (one URL or a comma-separated list) with the credentials the config names.
pub async fn connect(
    url: &str,
    cfg: &NatsConfig,
    env: &dyn EnvSource,
) -> Result<async_nats::Client, QueueError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("leadrouter")
        .connection_timeout(Duration::from_secs(5))
        // Never give up: the edge answers 503 while NATS is away and recovers on its own.
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(6)).min(2_000))
        })
        .event_callback(|event| async move {
            tracing::info!(target: "leadrouter::queue", event = %event, "nats connection event");
        });
    if let Some(name) = &cfg.token_env {
        let token = env.var(name).ok_or_else(|| QueueError::Credentials {
            key: "nats.token_env",
            message: format!("env var {name} is not set"),
        })?;
        opts = opts.token(token);
    }
    if let Some(user) = &cfg.user {
        let pass = match &cfg.password_env {
            Some(name) => env.var(name).ok_or_else(|| QueueError::Credentials {
                key: "nats.password_env",
                message: format!("env var {name} is not set"),
            })?,
            None => {
                return Err(QueueError::Credentials {
                    key: "nats.password_env",
                    message: "nats.user is set, so name the env var holding its password".into(),
                })
            }
        };
        opts = opts.user_and_password(user.clone(), pass);
    }
    if let Some(name) = &cfg.nkey_seed_env {
        let seed = env.var(name).ok_or_else(|| QueueError::Credentials {
            key: "nats.nkey_seed_env",
            message: format!("env var {name} is not set"),
        })?;
        opts = opts.nkey(seed);
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| QueueError::CredsFile {
                path: path.clone(),
                source,
            })?;
    }
    if cfg.tls_required {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => opts = opts.add_client_certificate(cert.clone(), key.clone()),
        (None, None) => {}
        _ => {
            return Err(QueueError::Credentials {
                key: "nats.tls_cert_file",
                message: "tls_cert_file and tls_key_file go together".into(),
            })
        }
    }
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| {
            u.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|source| QueueError::Url {
                    url: u.trim().to_string(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    opts.connect(addrs)
        .await
        .map_err(|source| QueueError::Connect {
            url: url.to_string(),
            source,
        })
}
