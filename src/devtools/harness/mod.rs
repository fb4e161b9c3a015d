//! The one process harness: real processes on loopback for tests, benches and the drill.
//!
//! Before this module each of them started routers and nats-servers its own way; the copies
//! drifted (one scrubbed `OTEL_*`, one forgot to reap, one read the pid file, one did not). This
//! is where that lives now:
//!
//! - [`free_port`] / [`free_ports`]: loopback ports for servers that must be told their port.
//! - [`NatsServer`]: one nats-server with JetStream, its own store, kill -9 / SIGTERM / restart
//!   on the same port and store.
//! - [`NatsCluster`]: N nodes (default 3) forming one JetStream cluster for R3 streams, with the
//!   leader look-ups a failover test needs.
//! - [`RouterProcess`]: `leadrouter serve --config PATH` as a child process, so kill -9 is a
//!   real SIGKILL (no destructor, no drain), with `/readyz` readiness and a graceful stop.
//! - [`RouterConfig`]: a typed builder for the router's TOML config.
//! - [`sender_signer`], [`sign_request`], [`signed_headers`], [`post_signed`]: a request as a
//!   configured sender's vendor signs it.
//! - [`probe`] and [`report`]: the benches' `/proc` readings and table cells.
//! - [`signal`], [`wait_gone`], [`process_alive`]: pids this harness does not own as a
//!   [`std::process::Child`] (the router's embedded nats-server, found by its pid file).
//!
//! Library code with typed errors ([`HarnessError`]) and `tracing` events; callers decide
//! whether a failure panics (a test) or is reported (the drill). Product modules never import
//! it: the dependency points from tooling to the product only.

mod cluster;
mod config;
mod nats;
mod ports;
pub mod probe;
mod process;
mod proxy;
pub mod report;
mod router;
mod vendor;

use std::path::PathBuf;
use std::time::Duration;

pub use cluster::{NatsCluster, RaftGroup};
pub use config::{
    file_sink, http_sink, hubspot_sink, salesforce_sink, segment_sink, AdminSection, DlqKeySpec,
    DlqSection, EdgeSection, EmbeddedSection, EnrichSection, EventIdSpec, GroupCommitSection,
    HandlersSection, HubSection, IntakeSection, MappingSpec, NatsSection, ParseError, RateSpec,
    RouterConfig, SenderSpec, StreamsSection, TelemetrySection,
};
pub use nats::{NatsOptions, NatsServer};
pub use ports::{free_port, free_ports};
pub use process::{process_alive, signal, wait_gone, Signal, TempDir};
pub use proxy::{ProxyStats, TcpProxy};
pub use router::{RouterProcess, Stopped, StoppedWithNats};
pub use vendor::{
    post_signed, sender_signer, sign_request, signed_headers, standard_webhooks_signer,
    SignedRequest,
};

use crate::queue::provision::{self, ProvisionError};

/// Everything the harness can fail at. Sources are kept so a caller's report shows the cause
/// (`connection refused`, `No such file`), not only what the harness was doing.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("no free loopback port: {0}")]
    NoPort(#[source] std::io::Error),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited during start-up ({status}); its log: {log}")]
    Exited {
        what: String,
        status: String,
        log: PathBuf,
    },
    #[error("{what} was not ready after {waited:?}; its log: {log}")]
    NotReady {
        what: String,
        waited: Duration,
        log: PathBuf,
    },
    #[error("{what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("building an HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error("no node {index} in a cluster of {size}")]
    NoSuchNode { index: usize, size: usize },
    #[error("{what}: not within {waited:?} ({last})")]
    Timeout {
        what: String,
        waited: Duration,
        /// The last thing seen while waiting, so a timeout says how far it got.
        last: String,
    },
    #[error("rendering the router config: {0}")]
    Render(#[source] toml::ser::Error),
    #[error("signing set-up: {0}")]
    Sign(String),
}

impl HarnessError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> HarnessError {
        HarnessError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Where the pinned nats-server is installed: `LEADROUTER_TOOLS_DIR`, else `.tools` in the
/// checkout this crate was built from.
///
/// Not [`provision::tools_dir`]'s working-directory default: a test binary or bench run from
/// another directory would install a second copy. The harness is development tooling, always
/// built from a checkout, so the checkout's `.tools` is the one place (it is what the tests
/// used before the harness existed).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("LEADROUTER_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"))
}

/// The pinned nats-server binary, installed into [`tools_dir`] on first use.
pub fn nats_server_bin() -> Result<PathBuf, HarnessError> {
    Ok(provision::ensure_nats_server(None, &tools_dir())?)
}
